//! `drover dev --secure`: the secured setup of docs/security.md on this machine.
//!
//! At the first start it writes, under `<state>/secure`, what `drover credentials init
//! --tls` writes (the issuer and services keys, the callout configuration, a private CA with
//! server and client certificates), and later starts keep them. The services and
//! `drover-auth` connect with the services' key; the demo's pool and its submissions get
//! credentials of their own, as a user's would.

use std::path::{Path, PathBuf};

use drover_auth::credential::{ClientRole, Credential, Proof, Scope, Store};
use drover_auth::setup::{self, DEFAULT_ACCOUNT};
use drover_nats_connect::{pki, NatsAuth, NkeySource};
use drover_protocol::PoolId;
use nkeys::KeyPair;

use crate::error::CliError;

/// The files of the secured setup, and the credentials the processes connect with.
#[derive(Debug, Clone)]
pub(super) struct Secure {
    dir: PathBuf,
    /// The auth service's signing seed.
    pub issuer: PathBuf,
    /// nats-server's configuration (callout and mutual TLS).
    pub nats_config: PathBuf,
    /// The services' key and the client certificate.
    pub services: NatsAuth,
}

impl Secure {
    /// Writes the keys and certificates under `state/secure` unless they are there already.
    pub fn prepare(state: &Path) -> Result<Self, CliError> {
        let dir = state.join("secure");
        let problem = |error: &dyn std::fmt::Display| {
            CliError::Other(format!("cannot prepare {}: {error}", dir.display()))
        };
        let written = setup::Written::at(&dir);
        if !written.server_config.exists() {
            setup::init(&dir, DEFAULT_ACCOUNT).map_err(|error| problem(&error))?;
        }
        let tls = pki::Pki::at(&dir.join("tls"));
        if !tls.ca_cert.exists() {
            pki::Pki::generate(&dir.join("tls")).map_err(|error| problem(&error))?;
        }
        let nats_config = dir.join("nats.conf");
        let text = format!(
            "# Written by `drover dev --secure` at every start (docs/security.md).\n\
             include {}\n{}",
            setup::SERVER_CONFIG_FILE,
            tls.server_block(true)
        );
        std::fs::write(&nats_config, text).map_err(|error| problem(&error))?;
        let services = NatsAuth {
            nkey: Some(NkeySource::File(written.services.clone())),
            tls_ca: Some(tls.ca_cert.clone()),
            tls_cert: Some(tls.client_cert.clone()),
            tls_key: Some(tls.client_key.clone()),
            ..NatsAuth::default()
        };
        Ok(Self {
            dir,
            issuer: written.issuer,
            nats_config,
            services,
        })
    }

    /// The same TLS as the services, with `seed` instead of their key.
    pub fn with_seed(&self, seed: &Path) -> NatsAuth {
        NatsAuth {
            nkey: Some(NkeySource::File(seed.to_owned())),
            ..self.services.clone()
        }
    }

    /// The pool `pool`'s credential and the demo client's (submit), created at the first
    /// start, as `drover credentials create` would; their seed files.
    pub async fn demo_credentials(
        &self,
        url: &str,
        pool: &str,
    ) -> Result<(PathBuf, PathBuf), CliError> {
        let options = self
            .services
            .apply(url, async_nats::ConnectOptions::new().name("drover dev"))
            .map_err(|error| CliError::Config(error.to_string()))?;
        let client = options
            .connect(url)
            .await
            .map_err(|source| CliError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let store = Store::open(&async_nats::jetstream::new(client), 1)
            .await
            .map_err(|error| CliError::Other(error.to_string()))?;
        let pool_id = PoolId::parse(pool).map_err(|error| CliError::Other(error.to_string()))?;
        let pool_seed = self
            .credential(&store, &format!("{pool}-pool"), Scope::Pool { pool_id })
            .await?;
        let client_seed = self
            .credential(
                &store,
                "dev-client",
                Scope::Client {
                    role: ClientRole::Submit,
                },
            )
            .await?;
        Ok((pool_seed, client_seed))
    }

    async fn credential(
        &self,
        store: &Store,
        name: &str,
        scope: Scope,
    ) -> Result<PathBuf, CliError> {
        let seed_file = self.dir.join(format!("{name}.nk"));
        if seed_file.exists() {
            return Ok(seed_file);
        }
        let key = KeyPair::new_user();
        let proof = Proof::Nkey {
            public_key: key.public_key(),
        };
        let credential = Credential::new(name, scope, proof);
        store
            .create(&credential)
            .await
            .map_err(|error| CliError::Other(error.to_string()))?;
        let seed = key.seed().expect("a generated key has its seed");
        setup::write_secret(&seed_file, &seed)
            .map_err(|error| CliError::Other(error.to_string()))?;
        Ok(seed_file)
    }
}
