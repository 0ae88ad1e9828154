//! A private certificate authority for trying mutual TLS locally and in tests: a CA, a
//! server certificate, and a client certificate, as PEM files. Production uses its own CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::setup::{write_secret, InitError};

/// Where `generate` put the files.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate every party trusts.
    pub ca: PathBuf,
    /// The server certificate (for `localhost`, `127.0.0.1` and the extra names).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate, for mutual TLS.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl Pki {
    /// The paths `generate(dir, ..)` writes, whether or not they exist yet.
    pub fn at(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        }
    }

    /// The `tls` block of a nats-server configuration using these files; `verify` asks every
    /// client for a certificate signed by the CA (mutual TLS).
    pub fn server_block(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n}}\n",
            self.server_cert.display(),
            self.server_key.display(),
            self.ca.display()
        )
    }
}

/// Generates a CA, a server certificate for `localhost`, `127.0.0.1` and `names`, and a
/// client certificate into `dir`. Keys are readable by their owner only; nothing is
/// overwritten.
pub fn generate(dir: &Path, names: &[&str]) -> Result<Pki, InitError> {
    let pki = Pki::at(dir);
    std::fs::create_dir_all(dir).map_err(|source| InitError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let tls = |error: rcgen::Error| InitError::Io {
        path: dir.to_owned(),
        source: std::io::Error::other(error.to_string()),
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Drover local CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(tls)?).map_err(tls)?;

    let mut server_names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    server_names.extend(names.iter().map(|name| (*name).to_owned()));
    let mut server = CertificateParams::new(server_names).map_err(tls)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "nats-server");
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_key = KeyPair::generate().map_err(tls)?;
    let server_cert = server.signed_by(&server_key, &ca).map_err(tls)?;

    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    client
        .distinguished_name
        .push(DnType::CommonName, "drover-client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().map_err(tls)?;
    let client_cert = client.signed_by(&client_key, &ca).map_err(tls)?;

    write_public(&pki.ca, &ca.pem())?;
    write_public(&pki.server_cert, &server_cert.pem())?;
    write_secret(&pki.server_key, server_key.serialize_pem().trim_end())?;
    write_public(&pki.client_cert, &client_cert.pem())?;
    write_secret(&pki.client_key, client_key.serialize_pem().trim_end())?;
    Ok(pki)
}

fn write_public(path: &Path, text: &str) -> Result<(), InitError> {
    if path.exists() {
        return Err(InitError::Exists(path.to_owned()));
    }
    std::fs::write(path, text).map_err(|source| InitError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_certificates_it_signed() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), &["nats"]).unwrap();
        for path in [&pki.ca, &pki.server_cert, &pki.client_cert] {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{path:?}");
        }
        let key = std::fs::read_to_string(&pki.server_key).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert!(pki.server_block(true).contains("verify: true"));
        assert!(matches!(
            generate(dir.path(), &[]),
            Err(InitError::Exists(_))
        ));
    }
}
