//! Credentials and TLS for every Drover connection to NATS.
//!
//! Every Drover program takes the same settings, the way the NATS tools do: a flag wins over
//! `DROVER_NATS_*`, which wins over the conventional `NATS_*` variable; an empty value counts
//! as unset.
//!
//! | what                  | Drover variable                              | NATS fallback           | flag                  |
//! |-----------------------|----------------------------------------------|-------------------------|-----------------------|
//! | creds file (JWT+seed) | `DROVER_NATS_CREDS`                          | `NATS_CREDS`            | `--creds FILE`        |
//! | nkey seed             | `DROVER_NATS_NKEY`                           | `NATS_NKEY`             | `--nkey FILE`         |
//! | token                 | `DROVER_NATS_TOKEN`                          | `NATS_TOKEN`            | `--token T`           |
//! | user / password       | `DROVER_NATS_USER` / `DROVER_NATS_PASSWORD`  | `NATS_USER` / `NATS_PASSWORD` | `--user`, `--password` |
//! | CA certificate (PEM)  | `DROVER_NATS_TLS_CA`                         | `NATS_CA`               | `--tlsca FILE`        |
//! | client cert / key     | `DROVER_NATS_TLS_CERT` / `DROVER_NATS_TLS_KEY` | `NATS_CERT` / `NATS_KEY` | `--tlscert`, `--tlskey` |
//!
//! [`NatsAuth::apply`] reads every file and checks every seed before a connection is tried,
//! so that a bad setting is one clear error rather than a connection that keeps failing.

mod apply;
mod args;
mod error;
pub mod pki;
pub mod refusals;
mod vars;

use std::fmt;
use std::path::{Path, PathBuf};

pub use args::NatsAuthArgs;
pub use error::AuthError;
pub use vars::ENV_VARS;

use vars::Var;

/// Where an nkey seed comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum NkeySource {
    /// The seed itself (`SU...`).
    Seed(String),
    /// A file that holds the seed; surrounding whitespace is ignored.
    File(PathBuf),
}

impl NkeySource {
    /// A value of `--nkey` or `DROVER_NATS_NKEY`: the seed itself when it starts with `SU`
    /// and has no `/`, otherwise a path to a file holding it.
    pub fn parse(value: &str) -> Result<Self, AuthError> {
        let trimmed = value.trim();
        if trimmed.starts_with("SU") && !trimmed.contains('/') {
            apply::check_seed(trimmed, "given directly")?;
            Ok(NkeySource::Seed(trimmed.to_owned()))
        } else {
            Ok(NkeySource::File(PathBuf::from(value)))
        }
    }
}

impl fmt::Debug for NkeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NkeySource::Seed(_) => f.write_str("Seed(<redacted>)"),
            NkeySource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// Credentials and TLS for one connection.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// A creds file: a user JWT and its seed.
    pub creds: Option<PathBuf>,
    /// An nkey seed, or the file that holds it.
    pub nkey: Option<NkeySource>,
    /// A token.
    pub token: Option<String>,
    /// A user name (with [`NatsAuth::password`]).
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<String>,
    /// CA certificates (PEM) the server's certificate must chain to; requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), for mutual TLS; needs [`NatsAuth::tls_key`].
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs [`NatsAuth::tls_cert`].
    pub tls_key: Option<PathBuf>,
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsAuth")
            .field("creds", &self.creds)
            .field("nkey", &self.nkey)
            .field("token", &redacted(&self.token))
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// `Some("<redacted>")` for a secret that is set, so Debug output shows only that it is.
pub(crate) fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

impl NatsAuth {
    /// Reads `DROVER_NATS_*`, then `NATS_*`, from the process environment.
    pub fn from_env() -> Result<Self, AuthError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `get` (`DROVER_NATS_*` over `NATS_*`; empty is unset).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, AuthError> {
        let auth = Self::read_lookup(get)?;
        auth.check()?;
        Ok(auth)
    }

    /// [`NatsAuth::from_lookup`] without the checks that span fields, so that flags can
    /// complete what the environment gives before they run.
    pub(crate) fn read_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, AuthError> {
        let value = |var: &Var| {
            [var.drover, var.nats]
                .into_iter()
                .find_map(|name| get(name).filter(|value| !value.trim().is_empty()))
        };
        Ok(NatsAuth {
            creds: value(&vars::CREDS).map(PathBuf::from),
            nkey: value(&vars::NKEY)
                .map(|value| NkeySource::parse(&value))
                .transpose()?,
            token: value(&vars::TOKEN),
            user: value(&vars::USER),
            password: value(&vars::PASSWORD),
            tls_ca: value(&vars::TLS_CA).map(PathBuf::from),
            tls_cert: value(&vars::TLS_CERT).map(PathBuf::from),
            tls_key: value(&vars::TLS_KEY).map(PathBuf::from),
        })
    }

    /// Field by field: `self`'s value where it has one, otherwise `fallback`'s.
    pub fn or(self, fallback: NatsAuth) -> NatsAuth {
        NatsAuth {
            creds: self.creds.or(fallback.creds),
            nkey: self.nkey.or(fallback.nkey),
            token: self.token.or(fallback.token),
            user: self.user.or(fallback.user),
            password: self.password.or(fallback.password),
            tls_ca: self.tls_ca.or(fallback.tls_ca),
            tls_cert: self.tls_cert.or(fallback.tls_cert),
            tls_key: self.tls_key.or(fallback.tls_key),
        }
    }

    /// Whether nothing is set: a plain connection.
    pub fn is_empty(&self) -> bool {
        *self == NatsAuth::default()
    }

    /// Whether the connection must use TLS: a `tls://` URL or a CA certificate.
    pub fn requires_tls(&self, url: &str) -> bool {
        self.tls_ca.is_some()
            || url
                .split(',')
                .any(|one| one.trim().to_ascii_lowercase().starts_with("tls://"))
    }

    /// Sets these credentials and TLS settings on `options`, for a connection to `url`.
    ///
    /// Reads the creds and seed files and checks that the certificate files are readable
    /// PEM, so that a bad setting fails here, before any connection attempt.
    pub fn apply(
        &self,
        url: &str,
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, AuthError> {
        apply::apply(self, url, options)
    }

    /// The `DROVER_NATS_*` variables that hand these settings to a child process, with
    /// paths made absolute (the child may run elsewhere). A seed given directly is passed
    /// as the seed.
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        let path = |path: &Path| {
            std::path::absolute(path)
                .unwrap_or_else(|_| path.to_owned())
                .display()
                .to_string()
        };
        let mut vars = Vec::new();
        let mut push = |name: &'static str, value: Option<String>| {
            if let Some(value) = value {
                vars.push((name, value));
            }
        };
        push(vars::CREDS.drover, self.creds.as_deref().map(path));
        push(
            vars::NKEY.drover,
            self.nkey.as_ref().map(|nkey| match nkey {
                NkeySource::Seed(seed) => seed.clone(),
                NkeySource::File(file) => path(file),
            }),
        );
        push(vars::TOKEN.drover, self.token.clone());
        push(vars::USER.drover, self.user.clone());
        push(vars::PASSWORD.drover, self.password.clone());
        push(vars::TLS_CA.drover, self.tls_ca.as_deref().map(path));
        push(vars::TLS_CERT.drover, self.tls_cert.as_deref().map(path));
        push(vars::TLS_KEY.drover, self.tls_key.as_deref().map(path));
        vars
    }

    /// The checks that span fields: a client certificate and its key go together, and a
    /// password needs a user.
    pub(crate) fn check(&self) -> Result<(), AuthError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(AuthError::HalfClientCertificate {
                    given: vars::TLS_CERT.names(),
                    missing: vars::TLS_KEY.names(),
                })
            }
            (None, Some(_)) => {
                return Err(AuthError::HalfClientCertificate {
                    given: vars::TLS_KEY.names(),
                    missing: vars::TLS_CERT.names(),
                })
            }
            _ => {}
        }
        if self.password.is_some() && self.user.is_none() {
            return Err(AuthError::PasswordWithoutUser {
                given: vars::PASSWORD.names(),
                missing: vars::USER.names(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
