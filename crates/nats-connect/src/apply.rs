//! Turning [`NatsAuth`] into async-nats connect options, reading and checking files first.

use std::path::Path;

use async_nats::ConnectOptions;

use crate::vars::{self, Var};
use crate::{AuthError, NatsAuth, NkeySource};

pub(crate) fn apply(
    auth: &NatsAuth,
    url: &str,
    mut options: ConnectOptions,
) -> Result<ConnectOptions, AuthError> {
    auth.check()?;
    if let Some(path) = &auth.creds {
        let text = read(path, "creds file", &vars::CREDS)?;
        options = options
            .credentials(&text)
            .map_err(|error| AuthError::Malformed {
                what: "creds file",
                path: path.clone(),
                names: vars::CREDS.names(),
                reason: format!("is not a NATS creds file: {error}"),
            })?;
    }
    if let Some(nkey) = &auth.nkey {
        let seed = match nkey {
            NkeySource::Seed(seed) => seed.clone(),
            NkeySource::File(path) => {
                let text = read(path, "nkey seed file", &vars::NKEY)?;
                let seed = text.trim().to_owned();
                check_seed(&seed, &format!("in {}", path.display()))?;
                seed
            }
        };
        options = options.nkey(seed);
    }
    if let Some(token) = &auth.token {
        options = options.token(token.clone());
    }
    if let Some(user) = &auth.user {
        let password = auth.password.clone().unwrap_or_default();
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(ca) = &auth.tls_ca {
        check_pem(ca, "TLS CA certificate", &vars::TLS_CA)?;
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&auth.tls_cert, &auth.tls_key) {
        check_pem(cert, "TLS client certificate", &vars::TLS_CERT)?;
        check_pem(key, "TLS client key", &vars::TLS_KEY)?;
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if auth.requires_tls(url) {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// Checks that `seed` is an nkey user seed; `origin` says where it came from, never the seed.
pub(crate) fn check_seed(seed: &str, origin: &str) -> Result<(), AuthError> {
    let bad = |reason: String| AuthError::BadSeed {
        origin: origin.to_owned(),
        names: vars::NKEY.names(),
        reason,
    };
    if !seed.starts_with("SU") {
        return Err(bad("a user seed starts with SU".to_owned()));
    }
    nkeys::KeyPair::from_seed(seed)
        .map(|_| ())
        .map_err(|error| bad(error.to_string()))
}

fn read(path: &Path, what: &'static str, var: &Var) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|error| AuthError::Unreadable {
        what,
        path: path.to_owned(),
        names: var.names(),
        reason: error.to_string(),
    })
}

/// async-nats reads certificate files only when it connects: read them now, so that a
/// wrong path is a setting error rather than a connection that keeps failing.
fn check_pem(path: &Path, what: &'static str, var: &Var) -> Result<(), AuthError> {
    let text = read(path, what, var)?;
    if text.contains("-----BEGIN ") {
        Ok(())
    } else {
        Err(AuthError::Malformed {
            what,
            path: path.to_owned(),
            names: var.names(),
            reason: "is not a PEM file".to_owned(),
        })
    }
}
