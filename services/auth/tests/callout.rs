//! The auth callout against a real nats-server: who connects, and what each may do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::ConnectOptions;
use drover_auth::credential::{self, ClientRole, Credential, Proof, Scope, Store};
use drover_auth::setup::{callout_xkey, server_config};
use drover_auth::AuthConfig;
use drover_protocol::{PoolId, WorkerId};
use drover_service_kit::{Readiness, Settings};
use drover_testkit::{patient, NatsOptions, NatsServer, Observed};
use nkeys::KeyPair;
use tokio_util::sync::CancellationToken;

/// A server whose non-service connections all go through a running auth service.
struct Secured {
    server: NatsServer,
    store: Store,
    _shutdown: tokio_util::sync::DropGuard,
}

impl Secured {
    /// The configuration `drover credentials init` writes: requests sealed to the xkey.
    async fn start() -> Self {
        Self::start_sealed(true).await
    }

    /// With `sealed` false, a configuration without the callout's `xkey`, as written before
    /// requests were sealed: the server sends them in the clear, and they are answered so.
    async fn start_sealed(sealed: bool) -> Self {
        let issuer = KeyPair::new_account();
        let services = KeyPair::new_user();
        let seed = services.seed().unwrap();
        let mut config = server_config(
            "DROVER",
            &issuer.public_key(),
            &callout_xkey(&issuer).public_key(),
            &services.public_key(),
        );
        if !sealed {
            config = config
                .lines()
                .filter(|line| !line.trim_start().starts_with("xkey:"))
                .collect::<Vec<_>>()
                .join("\n");
        }
        let server = NatsServer::start_with(NatsOptions::default().config(config).nkey_seed(&seed))
            .await
            .expect("nats-server starts with the auth configuration");
        let client = server.client().await;
        let store = Store::open(&async_nats::jetstream::new(client.clone()), 1)
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let config = AuthConfig::new(issuer, "DROVER");
        tokio::spawn(drover_auth::run(
            Settings::default(),
            client,
            config,
            shutdown.clone(),
            Readiness::new(),
        ));
        Self {
            server,
            store,
            _shutdown: shutdown.drop_guard(),
        }
    }

    async fn add(&self, name: &str, scope: Scope, proof: Proof) {
        self.store
            .create(&Credential::new(name, scope, proof))
            .await
            .unwrap();
    }

    async fn add_worker(&self, worker: &str) -> KeyPair {
        let key = KeyPair::new_user();
        let scope = Scope::Worker {
            worker_id: WorkerId::parse(worker).unwrap(),
        };
        let proof = Proof::Nkey {
            public_key: key.public_key(),
        };
        self.add(worker, scope, proof).await;
        key
    }
}

fn as_worker(key: &KeyPair, worker: &str) -> ConnectOptions {
    ConnectOptions::new()
        .nkey(key.seed().unwrap())
        .name(worker)
        .custom_inbox_prefix(format!("_INBOX.{worker}"))
}

#[tokio::test]
async fn a_worker_may_act_only_as_itself() {
    let secured = Secured::start().await;
    let key = secured.add_worker("w-a").await;
    let worker = Observed::connect(&secured.server.url(), as_worker(&key, "w-a"))
        .await
        .expect("its own credential admits the worker");

    // Its own subjects: allowed (a watcher with full rights sees them).
    let services = secured.server.client().await;
    let mut seen = services.subscribe("v1.>").await.unwrap();
    // The subscription is live once its own probe comes back.
    services.publish("v1.probe", "{}".into()).await.unwrap();
    use futures::StreamExt;
    let probe = tokio::time::timeout(Duration::from_secs(5), seen.next()).await;
    assert_eq!(probe.unwrap().unwrap().subject.as_str(), "v1.probe");
    worker
        .client
        .publish("v1.heartbeat.give_pulse.w-a", "{}".into())
        .await
        .unwrap();
    worker.client.flush().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), seen.next())
        .await
        .unwrap_or_else(|_| panic!("no pulse seen; server errors: {:?}", worker.errors()))
        .unwrap();
    assert_eq!(first.subject.as_str(), "v1.heartbeat.give_pulse.w-a");
    for forged in ["v1.routine.completed.w-b", "v1.heartbeat.give_pulse.w-b"] {
        worker.client.publish(forged, "{}".into()).await.unwrap();
        worker.client.flush().await.unwrap();
        assert!(worker.refused(&format!("Publish to \"{forged}\"")).await);
    }
    let nothing = tokio::time::timeout(patient(Duration::from_millis(300)), seen.next()).await;
    assert!(
        nothing.is_err(),
        "a forged directive reached NATS: {nothing:?}"
    );

    let _theirs = worker.client.subscribe("v1.worker.w-b.>").await.unwrap();
    assert!(worker.refused("Subscription to \"v1.worker.w-b.>\"").await);
}

#[tokio::test]
async fn a_wrong_key_or_a_revoked_credential_never_connects() {
    let secured = Secured::start().await;
    let key = secured.add_worker("w-a").await;
    let stranger = KeyPair::new_user();
    let refused = Observed::connect(&secured.server.url(), as_worker(&stranger, "w-a")).await;
    assert!(refused.is_err(), "an unknown key is refused");
    let anonymous = Observed::connect(&secured.server.url(), ConnectOptions::new()).await;
    assert!(anonymous.is_err(), "no credential is refused");

    let before = Observed::connect(&secured.server.url(), as_worker(&key, "w-a")).await;
    assert!(before.is_ok(), "admitted before the revocation");
    secured.store.revoke("w-a").await.unwrap();
    let after = Observed::connect(&secured.server.url(), as_worker(&key, "w-a")).await;
    assert!(
        after.is_err(),
        "refused at the next connection after the revocation"
    );
    let listed = secured.store.list().await.unwrap();
    assert!(listed[0].revoked_at.is_some());
}

#[tokio::test]
async fn a_read_only_client_cannot_submit_and_a_submit_client_can() {
    let secured = Secured::start().await;
    let reader = credential::new_token();
    let submitter = credential::new_token();
    for (name, token, role) in [
        ("dashboard", &reader, ClientRole::Read),
        ("ci", &submitter, ClientRole::Submit),
    ] {
        let proof = Proof::Token {
            token_sha256: credential::token_sha256(token),
        };
        secured.add(name, Scope::Client { role }, proof).await;
    }
    let url = secured.server.url();
    let read = Observed::connect(&url, ConnectOptions::with_token(reader))
        .await
        .unwrap();
    let submit = Observed::connect(&url, ConnectOptions::with_token(submitter))
        .await
        .unwrap();
    for client in [&read, &submit] {
        client
            .client
            .publish("v1.run.list", "{}".into())
            .await
            .unwrap();
        client
            .client
            .publish("v1.routine.request_start", "{}".into())
            .await
            .unwrap();
        client
            .client
            .publish("v1.run.cancel", "{}".into())
            .await
            .unwrap();
        client.client.flush().await.unwrap();
    }
    assert!(
        read.refused("Publish to \"v1.routine.request_start\"")
            .await
    );
    assert!(read.refused("Publish to \"v1.run.cancel\"").await);
    assert!(!read.errors().iter().any(|e| e.contains("v1.run.list")));
    assert!(submit.errors().is_empty(), "{:?}", submit.errors());
}

#[tokio::test]
async fn a_pool_credential_admits_its_processes_as_themselves() {
    let secured = Secured::start().await;
    let key = KeyPair::new_user();
    let scope = Scope::Pool {
        pool_id: PoolId::parse("web").unwrap(),
    };
    let proof = Proof::Nkey {
        public_key: key.public_key(),
    };
    secured.add("web", scope, proof).await;
    let process = Observed::connect(&secured.server.url(), as_worker(&key, "web-api-0"))
        .await
        .unwrap();
    process
        .client
        .publish("v1.routine.completed.web-api-1", "{}".into())
        .await
        .unwrap();
    process.client.flush().await.unwrap();
    assert!(
        process
            .refused("Publish to \"v1.routine.completed.web-api-1\"")
            .await
    );
    let pool = Observed::connect(
        &secured.server.url(),
        ConnectOptions::new()
            .nkey(key.seed().unwrap())
            .name("drover-pool web"),
    )
    .await
    .unwrap();
    let _service = pool.client.subscribe("v1.pool.web.status").await.unwrap();
    let _other = pool.client.subscribe("v1.pool.db.status").await.unwrap();
    assert!(pool.refused("Subscription to \"v1.pool.db.status\"").await);
    assert!(!pool.errors().iter().any(|e| e.contains("v1.pool.web")));
}

#[tokio::test]
async fn requests_are_sealed_to_the_callout_xkey_and_an_unsealed_configuration_still_works() {
    use futures::StreamExt;
    let secured = Secured::start().await;
    let token = credential::new_token();
    let proof = Proof::Token {
        token_sha256: credential::token_sha256(&token),
    };
    let scope = Scope::Client {
        role: ClientRole::Read,
    };
    secured.add("dashboard", scope.clone(), proof.clone()).await;
    // The services' key may watch the callout subject: what crosses it is sealed.
    let services = secured.server.client().await;
    let mut requests = services
        .subscribe(drover_auth::callout::SUBJECT)
        .await
        .unwrap();
    services.flush().await.unwrap();
    let url = secured.server.url();
    Observed::connect(&url, ConnectOptions::with_token(token.clone()))
        .await
        .expect("a sealed request is opened and answered");
    let request = tokio::time::timeout(patient(Duration::from_secs(5)), requests.next())
        .await
        .expect("the request is seen")
        .unwrap();
    let server_key = request
        .headers
        .as_ref()
        .and_then(|headers| headers.get(drover_auth::callout::SERVER_XKEY_HEADER))
        .expect("the server names its key");
    assert!(server_key.as_str().starts_with('X'));
    assert!(request.payload.starts_with(b"xkv1"));
    let sealed = String::from_utf8_lossy(&request.payload);
    assert!(!sealed.contains(&token), "the token crosses in the clear");
    assert!(!sealed.contains("eyJ"), "a JWT crosses in the clear");

    let plain = Secured::start_sealed(false).await;
    plain.add("dashboard", scope, proof).await;
    Observed::connect(&plain.server.url(), ConnectOptions::with_token(token))
        .await
        .expect("an unsealed request is answered unsealed");
}
