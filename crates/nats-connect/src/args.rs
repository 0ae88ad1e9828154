//! The command-line flags, for programs that take them (`#[command(flatten)]`).

use std::fmt;
use std::path::PathBuf;

use crate::{redacted, AuthError, NatsAuth, NkeySource};

/// NATS credential and TLS flags; each falls back on its `DROVER_NATS_*`, then `NATS_*`
/// variable.
#[derive(Clone, Default, clap::Args)]
pub struct NatsAuthArgs {
    /// NATS creds file (user JWT and seed) [env: DROVER_NATS_CREDS, NATS_CREDS].
    #[arg(long, global = true, value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// File holding an nkey seed (SU...) [env: DROVER_NATS_NKEY, NATS_NKEY].
    #[arg(long, global = true, value_name = "FILE")]
    pub nkey: Option<String>,
    /// NATS token [env: DROVER_NATS_TOKEN, NATS_TOKEN].
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// NATS user name [env: DROVER_NATS_USER, NATS_USER].
    #[arg(long, global = true, value_name = "USER")]
    pub user: Option<String>,
    /// NATS password, with --user [env: DROVER_NATS_PASSWORD, NATS_PASSWORD].
    #[arg(long, global = true, value_name = "PASSWORD")]
    pub password: Option<String>,
    /// CA certificate (PEM) for the server's; turns TLS on [env: DROVER_NATS_TLS_CA, NATS_CA].
    #[arg(long, global = true, value_name = "FILE")]
    pub tlsca: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS [env: DROVER_NATS_TLS_CERT, NATS_CERT].
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// The client certificate's key (PEM) [env: DROVER_NATS_TLS_KEY, NATS_KEY].
    #[arg(long, global = true, value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
}

impl fmt::Debug for NatsAuthArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsAuthArgs")
            .field("creds", &self.creds)
            .field("nkey", &self.nkey.as_ref().map(|_| "<given>"))
            .field("token", &redacted(&self.token))
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("tlsca", &self.tlsca)
            .field("tlscert", &self.tlscert)
            .field("tlskey", &self.tlskey)
            .finish()
    }
}

impl NatsAuthArgs {
    /// The flags, completed from `DROVER_NATS_*`, then `NATS_*`.
    pub fn resolve(&self) -> Result<NatsAuth, AuthError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// [`NatsAuthArgs::resolve`] reading the variables through `get`.
    pub fn resolve_with(
        &self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<NatsAuth, AuthError> {
        let given = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let flags = NatsAuth {
            creds: self.creds.clone(),
            nkey: given(&self.nkey)
                .map(|value| NkeySource::parse(&value))
                .transpose()?,
            token: given(&self.token),
            user: given(&self.user),
            password: given(&self.password),
            tls_ca: self.tlsca.clone(),
            tls_cert: self.tlscert.clone(),
            tls_key: self.tlskey.clone(),
        };
        let auth = flags.or(NatsAuth::read_lookup(get)?);
        auth.check()?;
        Ok(auth)
    }
}
