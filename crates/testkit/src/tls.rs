//! Test certificates, generated when a test runs (never committed): a CA, a server
//! certificate for 127.0.0.1 and localhost, and a client certificate, both signed by the CA.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The PEM files of a test PKI, in the directory given to [`TestPki::generate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPki {
    /// The CA certificate that signed the other two.
    pub ca_cert: PathBuf,
    /// The server's certificate (SANs 127.0.0.1 and localhost).
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// A client certificate, for mutual TLS.
    pub client_cert: PathBuf,
    /// The client's private key.
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generates a fresh CA, server and client certificate and writes them as PEM files
    /// (`ca.pem`, `server-cert.pem`, `server-key.pem`, `client-cert.pem`, `client-key.pem`)
    /// into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<TestPki> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "drover test ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let leaf = |name: &str,
                    sans: Vec<String>,
                    usage: ExtendedKeyUsagePurpose|
         -> anyhow::Result<(String, String)> {
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            "drover test server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = leaf(
            "drover test client",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
            Ok(path)
        };
        Ok(TestPki {
            ca_cert: write("ca.pem", &ca.pem())?,
            server_cert: write("server-cert.pem", &server_cert)?,
            server_key: write("server-key.pem", &server_key)?,
            client_cert: write("client-cert.pem", &client_cert)?,
            client_key: write("client-key.pem", &client_key)?,
        })
    }
}
