//! A private certificate authority for trying mutual TLS locally and in tests: a CA, a
//! server certificate, and a client certificate, as PEM files, generated when needed and
//! never committed. Production uses its own CA.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file is already there: nothing is overwritten.
    #[error("{0} already exists; certificates and keys are never overwritten")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen could not make a key or a certificate.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where `generate` put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    /// The CA certificate every party trusts.
    pub ca_cert: PathBuf,
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
            ca_cert: dir.join("ca.pem"),
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
            self.ca_cert.display()
        )
    }
}

impl Pki {
    /// [`generate`] for `localhost` and `127.0.0.1` only.
    pub fn generate(dir: &Path) -> Result<Pki, PkiError> {
        generate(dir, &[])
    }
}

/// Generates a CA, a server certificate for `localhost`, `127.0.0.1` and `names`, and a
/// client certificate into `dir`. Keys are readable by their owner only; nothing is
/// overwritten.
pub fn generate(dir: &Path, names: &[&str]) -> Result<Pki, PkiError> {
    let pki = Pki::at(dir);
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Drover local CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut server_names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    server_names.extend(names.iter().map(|name| (*name).to_owned()));
    let mut server = CertificateParams::new(server_names)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "nats-server");
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;

    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "drover-client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client_cert = client.signed_by(&client_key, &ca)?;

    write_public(&pki.ca_cert, &ca.pem())?;
    write_public(&pki.server_cert, &server_cert.pem())?;
    write_secret(&pki.server_key, &server_key.serialize_pem())?;
    write_public(&pki.client_cert, &client_cert.pem())?;
    write_secret(&pki.client_key, &client_key.serialize_pem())?;
    Ok(pki)
}

fn write_public(path: &Path, text: &str) -> Result<(), PkiError> {
    write_file(path, text, 0o644)
}

fn write_secret(path: &Path, text: &str) -> Result<(), PkiError> {
    write_file(path, text, 0o600)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    create_new_file(path, text, mode).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => PkiError::Exists(path.to_owned()),
        _ => PkiError::Io {
            path: path.to_owned(),
            source,
        },
    })
}

/// Writes `text` into a new file with `mode` (0o600 for a secret); an existing file is an
/// `AlreadyExists` error, never overwritten.
pub fn create_new_file(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?
        .write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_certificates_it_signed() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), &["nats"]).unwrap();
        for path in [&pki.ca_cert, &pki.server_cert, &pki.client_cert] {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{path:?}");
        }
        let key = std::fs::read_to_string(&pki.server_key).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert!(pki.server_block(true).contains("verify: true"));
        assert!(matches!(
            generate(dir.path(), &[]),
            Err(PkiError::Exists(_))
        ));
    }
}
