//! Test certificates, generated when a test runs (never committed): a CA, a server
//! certificate for 127.0.0.1 and localhost, and a client certificate, both signed by the CA.
//! The same generator serves `drover credentials init --tls` and `drover dev --secure`.

/// The PEM files of a test PKI: `TestPki::generate(dir)` writes them into `dir`.
pub use drover_nats_connect::pki::Pki as TestPki;
