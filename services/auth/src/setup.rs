//! `drover credentials init`: the keys and the nats-server configuration of the secured
//! setup, written once by an operator.

use std::path::{Path, PathBuf};

use drover_nats_connect::pki::create_new_file;
use hkdf::Hkdf;
use nkeys::{KeyPair, XKey};
use sha2::Sha256;

/// The account admitted users join, and in which the services and the auth service run.
pub const DEFAULT_ACCOUNT: &str = "DROVER";
/// The auth service's signing key (an account nkey seed).
pub const ISSUER_FILE: &str = "issuer.nk";
/// The services' key (a user nkey seed): full rights, no callout.
pub const SERVICES_FILE: &str = "services.nk";
/// The nats-server configuration fragment to `include`.
pub const SERVER_CONFIG_FILE: &str = "auth.conf";

/// What `init` wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The auth service's signing seed.
    pub issuer: PathBuf,
    /// The services' seed.
    pub services: PathBuf,
    /// The server configuration fragment.
    pub server_config: PathBuf,
}

impl Written {
    /// The paths `init(dir, ..)` writes, whether or not they exist yet.
    pub fn at(dir: &Path) -> Self {
        Self {
            issuer: dir.join(ISSUER_FILE),
            services: dir.join(SERVICES_FILE),
            server_config: dir.join(SERVER_CONFIG_FILE),
        }
    }
}

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A file is already there: keys are never overwritten.
    #[error("{0} already exists; keys are never overwritten (choose another directory)")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Generates the issuer and services keys and the server configuration into `dir`.
pub fn init(dir: &Path, account: &str) -> Result<Written, InitError> {
    let issuer = KeyPair::new_account();
    let services = KeyPair::new_user();
    let written = Written::at(dir);
    for path in [&written.issuer, &written.services, &written.server_config] {
        if path.exists() {
            return Err(InitError::Exists(path.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| InitError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write_secret(&written.issuer, &seed(&issuer))?;
    write_secret(&written.services, &seed(&services))?;
    let config = server_config(
        account,
        &issuer.public_key(),
        &callout_xkey(&issuer).public_key(),
        &services.public_key(),
    );
    std::fs::write(&written.server_config, config).map_err(|source| InitError::Io {
        path: written.server_config.clone(),
        source,
    })?;
    Ok(written)
}

/// The curve key nats-server encrypts authorization requests to (the callout's `xkey`),
/// derived from the issuer seed: whoever holds the issuer may already admit anyone, so the
/// two keys travel together and the operator keeps one secret, not two.
pub fn callout_xkey(issuer: &KeyPair) -> XKey {
    let seed = issuer
        .seed()
        .expect("drover-auth signs, so its issuer has its seed");
    let mut raw = [0_u8; 32];
    Hkdf::<Sha256>::new(None, seed.as_bytes())
        .expand(b"drover-auth callout xkey v1", &mut raw)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    XKey::new_from_raw(raw)
}

/// The nats-server configuration: the account with JetStream, the services' key, and the
/// callout to `drover-auth` for everyone else, its requests encrypted to `xkey`.
pub fn server_config(account: &str, issuer: &str, xkey: &str, services: &str) -> String {
    format!(
        r#"# Drover's secured setup (docs/security.md). The services authenticate with the nkey
# in services.nk and bypass the callout; every other connection is decided by drover-auth,
# which signs its answers with the account key whose public half is the issuer below.
# The server encrypts each request to drover-auth with the xkey below (derived from the
# issuer seed), so the credentials it carries are sealed even on a plain connection.
accounts {{
  {account}: {{
    jetstream: enabled
    users: [ {{ nkey: "{services}" }} ]
  }}
}}
authorization {{
  auth_callout {{
    issuer: "{issuer}"
    xkey: "{xkey}"
    account: {account}
    auth_users: [ "{services}" ]
  }}
}}
"#
    )
}

fn seed(key: &KeyPair) -> String {
    key.seed().expect("a generated key has its seed")
}

/// Writes `text` readable by its owner only.
pub fn write_secret(path: &Path, text: &str) -> Result<(), InitError> {
    create_new_file(path, &format!("{text}\n"), 0o600).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => InitError::Exists(path.to_owned()),
        _ => InitError::Io {
            path: path.to_owned(),
            source,
        },
    })
}

/// Reads a seed from a file, or takes the value as the seed itself when it looks like one.
pub fn read_seed(value: &str) -> Result<KeyPair, String> {
    let text = if looks_like_seed(value) {
        value.to_owned()
    } else {
        std::fs::read_to_string(value).map_err(|error| format!("cannot read {value}: {error}"))?
    };
    KeyPair::from_seed(text.trim()).map_err(|error| format!("{value}: not an nkey seed: {error}"))
}

fn looks_like_seed(value: &str) -> bool {
    value.starts_with('S') && !value.contains('/') && value.len() > 50
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_private_keys_and_a_config_naming_their_public_halves() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let written = init(dir.path(), "DROVER").unwrap();
        let issuer = read_seed(written.issuer.to_str().unwrap()).unwrap();
        let services = read_seed(written.services.to_str().unwrap()).unwrap();
        let config = std::fs::read_to_string(&written.server_config).unwrap();
        assert!(config.contains(&issuer.public_key()));
        assert!(config.contains(&callout_xkey(&issuer).public_key()));
        assert!(config.contains(&services.public_key()));
        assert!(!config.contains(&issuer.seed().unwrap()));
        let mode = std::fs::metadata(&written.issuer)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            init(dir.path(), "DROVER"),
            Err(InitError::Exists(_))
        ));
    }

    #[test]
    fn the_callout_xkey_follows_the_issuer_and_only_it() {
        let issuer = KeyPair::new_account();
        let again = KeyPair::from_seed(&issuer.seed().unwrap()).unwrap();
        let xkey = callout_xkey(&issuer);
        assert!(xkey.public_key().starts_with('X'));
        assert_eq!(xkey.public_key(), callout_xkey(&again).public_key());
        assert_ne!(
            xkey.public_key(),
            callout_xkey(&KeyPair::new_account()).public_key()
        );
    }

    #[test]
    fn a_seed_is_read_from_its_file_or_taken_as_given() {
        let key = KeyPair::new_user();
        let seed = key.seed().unwrap();
        assert_eq!(read_seed(&seed).unwrap().public_key(), key.public_key());
        assert!(read_seed("/nonexistent/seed")
            .unwrap_err()
            .contains("cannot read"));
        assert!(read_seed("SUNOTASEEDATALLBUTLONGENOUGHTOLOOKLIKEONEXXXXXXXXXXXXX").is_err());
    }
}
