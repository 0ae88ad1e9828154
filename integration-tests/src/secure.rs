//! The secured setup for tests (docs/security.md): the keys and the callout configuration of
//! `drover credentials init`, a private CA, nats-server demanding mutual TLS, the four
//! services and `drover-auth` with the services' key, and credentials stored as
//! `drover credentials create` stores them.

use async_nats::ConnectOptions;
use drover_auth::credential::{self, ClientRole, Credential, Proof, Scope, Store};
use drover_auth::setup;
use drover_nats_connect::{NatsAuth, NkeySource};
use drover_protocol::{grants, WorkerId};
use drover_testkit::{NatsOptions, Observed, Stack, TestPki};
use nkeys::KeyPair;
use tempfile::TempDir;

/// The auth service's binary, started beside the four services.
pub const AUTH: &str = "drover-auth";

/// A secured stack and its credentials bucket.
pub struct SecureStack {
    /// The stack: its own connections (`client()`) use the services' key.
    pub stack: Stack,
    /// The credentials bucket.
    pub store: Store,
    pki: TestPki,
    _dir: TempDir,
}

impl SecureStack {
    /// Starts nats-server with the callout and mutual TLS, then the services and drover-auth.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("drover-secure-")
            .tempdir()?;
        let keys = setup::init(&dir.path().join("keys"), setup::DEFAULT_ACCOUNT)?;
        let pki = TestPki::generate(&dir.path().join("tls"))?;
        let services_seed = std::fs::read_to_string(&keys.services)?.trim().to_owned();
        let config = std::fs::read_to_string(&keys.server_config)?;
        let options = NatsOptions::default()
            .config(config)
            .tls(&pki, true)
            .nkey_seed(services_seed);
        let stack = Stack::builder()
            .nats_options(options)
            .with_all_services()
            .with_service(AUTH)
            .service_env(
                AUTH,
                "DROVER_AUTH_ISSUER_SEED",
                keys.issuer.display().to_string(),
            )
            .start()
            .await?;
        let store = Store::open(&stack.jetstream().await, 1).await?;
        Ok(Self {
            stack,
            store,
            pki,
            _dir: dir,
        })
    }

    /// The TLS part every connection needs: the CA and the client certificate.
    pub fn tls(&self) -> NatsAuth {
        NatsAuth {
            tls_ca: Some(self.pki.ca_cert.clone()),
            tls_cert: Some(self.pki.client_cert.clone()),
            tls_key: Some(self.pki.client_key.clone()),
            ..NatsAuth::default()
        }
    }

    /// A new nkey credential named `name`; what a program connects with.
    pub async fn nkey_credential(&self, name: &str, scope: Scope) -> anyhow::Result<NatsAuth> {
        let key = KeyPair::new_user();
        let proof = Proof::Nkey {
            public_key: key.public_key(),
        };
        self.store(name, scope, proof).await?;
        Ok(NatsAuth {
            nkey: Some(NkeySource::Seed(key.seed()?)),
            ..self.tls()
        })
    }

    /// A worker's credential for its own workerID.
    pub async fn worker_credential(&self, worker: &str) -> anyhow::Result<NatsAuth> {
        let scope = Scope::Worker {
            worker_id: WorkerId::parse(worker)?,
        };
        self.nkey_credential(worker, scope).await
    }

    /// A client's token credential.
    pub async fn token_credential(&self, name: &str, role: ClientRole) -> anyhow::Result<NatsAuth> {
        let token = credential::new_token();
        let proof = Proof::Token {
            token_sha256: credential::token_sha256(&token),
        };
        self.store(name, Scope::Client { role }, proof).await?;
        Ok(NatsAuth {
            token: Some(token),
            ..self.tls()
        })
    }

    async fn store(&self, name: &str, scope: Scope, proof: Proof) -> anyhow::Result<()> {
        self.store
            .create(&Credential::new(name, scope, proof))
            .await?;
        Ok(())
    }

    /// Connects with `auth` as a worker would (named `worker`, replies on its own inbox), or
    /// as a client when `worker` is `None`, recording what the server refuses.
    pub async fn connect(
        &self,
        auth: &NatsAuth,
        worker: Option<&str>,
    ) -> anyhow::Result<Result<Observed, async_nats::ConnectError>> {
        let url = self.stack.nats_url();
        let mut options = ConnectOptions::new();
        if let Some(worker) = worker {
            let id = WorkerId::parse(worker)?;
            options = options
                .name(worker)
                .custom_inbox_prefix(grants::worker_inbox_prefix(&id));
        }
        let options = auth.apply(&url, options)?;
        Ok(Observed::connect(&url, options).await)
    }
}
