//! The service loop: answer every authorization request nats-server sends.

use std::sync::Arc;

use async_nats::{Client, Message};
use drover_service_kit::{Readiness, Settings};
use futures::StreamExt;
use nkeys::{KeyPair, XKey};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::callout::{self, Decision, Presented};
use crate::credential::Store;
use crate::metrics::DECISIONS;
use crate::setup;

/// Replicas answer in one queue group: each request is decided once.
const QUEUE_GROUP: &str = "drover-auth";

/// What the auth service signs with and where it places the users it admits.
pub struct AuthConfig {
    /// The account key whose public half is the callout `issuer` in the server config.
    issuer: KeyPair,
    /// The curve key encrypted requests are sealed to: the callout `xkey`, derived from the
    /// issuer ([`setup::callout_xkey`]).
    xkey: XKey,
    /// The server-config account the admitted users join.
    account: String,
}

impl AuthConfig {
    /// Signs with `issuer` and places users in `account`.
    pub fn new(issuer: KeyPair, account: impl Into<String>) -> Self {
        Self {
            xkey: setup::callout_xkey(&issuer),
            issuer,
            account: account.into(),
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("issuer", &self.issuer.public_key())
            .field("xkey", &self.xkey.public_key())
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
    info!(
        issuer = %config.issuer.public_key(),
        xkey = %config.xkey.public_key(),
        account = %config.account,
        "answering auth callouts"
    );
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
    // A server configured with the callout's xkey seals each request and names its own key.
    let server_xkey = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(callout::SERVER_XKEY_HEADER))
        .map(|key| key.as_str().to_owned());
    let opened = match &server_xkey {
        Some(server) => callout::open_request(&message.payload, server, &config.xkey)
            .map_err(anyhow::Error::from),
        None => Ok(message.payload.to_vec()),
    };
    let request = match opened.and_then(|token| Ok(callout::read_request(&token)?)) {
        Ok(request) => request,
        Err(error) => {
            // Without the request's keys no answer can be addressed; the server times out.
            warn!(error = %format!("{error:#}"), "unreadable authorization request");
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
    let answer = callout::answer(&request, &decision, &config.account, &config.issuer)
        .map_err(anyhow::Error::from)
        .and_then(|token| match &server_xkey {
            Some(server) => Ok(callout::seal_answer(&token, server, &config.xkey)?),
            None => Ok(token.into_bytes()),
        });
    match answer {
        Ok(body) => {
            if let Err(error) = nats.publish(reply, body.into()).await {
                warn!(%error, "authorization answer not sent");
            }
        }
        Err(error) => warn!(error = %format!("{error:#}"), "authorization answer not made"),
    }
}
