//! The service loop: answer every authorization request nats-server sends.

use std::sync::Arc;

use async_nats::{Client, Message};
use drover_service_kit::{Readiness, Settings};
use futures::StreamExt;
use nkeys::KeyPair;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::callout::{self, Decision, Presented};
use crate::credential::Store;
use crate::metrics::DECISIONS;

/// Replicas answer in one queue group: each request is decided once.
const QUEUE_GROUP: &str = "drover-auth";

/// What the auth service signs with and where it places the users it admits.
pub struct AuthConfig {
    /// The account key whose public half is the callout `issuer` in the server config.
    pub issuer: KeyPair,
    /// The server-config account the admitted users join.
    pub account: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("issuer", &self.issuer.public_key())
            .field("account", &self.account)
            .finish()
    }
}

/// Answers authorization requests until `shutdown`.
pub async fn run(
    settings: Settings,
    nats: Client,
    config: AuthConfig,
    shutdown: CancellationToken,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(nats.clone());
    let store = Store::open(&js, settings.js_replicas).await?;
    let mut requests = nats
        .queue_subscribe(callout::SUBJECT, QUEUE_GROUP.to_owned())
        .await?;
    info!(issuer = %config.issuer.public_key(), account = %config.account, "answering auth callouts");
    readiness.set_serving(true);
    let config = Arc::new(config);
    let tasks = TaskTracker::new();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = requests.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let (nats, store, config) = (nats.clone(), store.clone(), Arc::clone(&config));
        tasks.spawn(async move { answer(&nats, &store, &config, message).await });
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn answer(nats: &Client, store: &Store, config: &AuthConfig, message: Message) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let request = match callout::read_request(&message.payload) {
        Ok(request) => request,
        Err(error) => {
            // Without the request's keys no answer can be addressed; the server times out.
            warn!(%error, "unreadable authorization request");
            ::metrics::counter!(DECISIONS, "outcome" => "error").increment(1);
            return;
        }
    };
    let found = match callout::presented(&request) {
        Presented::Proof(proof) => match store.find(&proof).await {
            Ok(found) => found,
            Err(error) => {
                warn!(%error, "credential lookup failed; refusing");
                ::metrics::counter!(DECISIONS, "outcome" => "error").increment(1);
                None
            }
        },
        Presented::Nothing(_) => None,
    };
    let decision = callout::decide(&request, found.as_ref());
    let host = request.client_info.host.as_str();
    let connection = request.connect_opts.name.as_deref().unwrap_or_default();
    match &decision {
        Decision::Admit { name, .. } => {
            info!(credential = %name, host, connection, "connection admitted");
            ::metrics::counter!(DECISIONS, "outcome" => "admitted").increment(1);
        }
        Decision::Refuse(reason) => {
            warn!(reason = %reason, host, connection, "connection refused");
            ::metrics::counter!(DECISIONS, "outcome" => "refused").increment(1);
        }
    }
    match callout::answer(&request, &decision, &config.account, &config.issuer) {
        Ok(token) => {
            if let Err(error) = nats.publish(reply, token.into()).await {
                warn!(%error, "authorization answer not sent");
            }
        }
        Err(error) => warn!(%error, "authorization answer not signed"),
    }
}
