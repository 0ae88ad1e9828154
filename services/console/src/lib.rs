//! The console: a web page and an HTTP API over what the services know (docs/console.md).
//!
//! It reads runs and workers from watches of `DROVER_RUNS` and `DROVER_WORKERS`, so that a
//! listing of 100,000 runs never asks the scheduler to scan its bucket; a run's full record,
//! logs and every action go through the services' own subjects (`v1.run.get`,
//! `v1.logs.query`, `v1.routine.request_start`, `v1.run.cancel`, `v1.pool.*`), so the
//! services' checks and guarantees hold for the console as for any client.

pub mod access;
mod api;
pub mod backend;
pub mod directory;
pub mod error;
mod http;
pub mod index;
mod live;
pub mod metrics;
pub mod model;
mod openapi;
pub mod pages;
pub mod pulses;

use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::Client;
use drover_protocol::subject::resources;
use drover_protocol::WorkerRecord;
use drover_service_kit::kv_cache::KvCache;
use drover_service_kit::{open_bucket, Readiness, Settings};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::access::Access;
use crate::backend::Backend;
use crate::directory::Directory;
use crate::index::RunIndex;

pub use crate::openapi::openapi_document;

/// Where the console serves unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";
/// The Jaeger UI run pages link their traces to unless told otherwise.
pub const DEFAULT_JAEGER_URL: &str = "http://localhost:16686";

/// The console's own settings.
#[derive(Clone)]
pub struct ConsoleConfig {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Token that allows actions; read-only without one.
    pub token: Option<String>,
    /// Base URL of the Jaeger UI, without a trailing slash.
    pub jaeger_url: String,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("listen", &self.listen)
            .field("actions", &self.token.is_some())
            .field("jaeger_url", &self.jaeger_url)
            .finish()
    }
}

/// A setting the console cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--listen` is not an address.
    #[error("--listen {0:?} is not an address such as 127.0.0.1:7480")]
    Listen(String),
    /// `--jaeger-url` is not an HTTP URL.
    #[error("--jaeger-url {0:?} is not an http:// or https:// URL")]
    JaegerUrl(String),
    /// `--token` is too short to guard anything.
    #[error("--token must be at least {MIN_TOKEN_LEN} characters")]
    Token,
}

/// The shortest token the console accepts.
pub const MIN_TOKEN_LEN: usize = 8;

impl ConsoleConfig {
    /// Checks and builds the settings.
    pub fn new(listen: &str, token: Option<String>, jaeger_url: &str) -> Result<Self, ConfigError> {
        let listen = listen
            .parse()
            .map_err(|_| ConfigError::Listen(listen.to_owned()))?;
        let jaeger_url = jaeger_url.trim_end_matches('/');
        if !(jaeger_url.starts_with("http://") || jaeger_url.starts_with("https://"))
            || jaeger_url.contains(char::is_whitespace)
        {
            return Err(ConfigError::JaegerUrl(jaeger_url.to_owned()));
        }
        let token = token.filter(|token| !token.is_empty());
        if token
            .as_ref()
            .is_some_and(|token| token.len() < MIN_TOKEN_LEN)
        {
            return Err(ConfigError::Token);
        }
        Ok(Self {
            listen,
            token,
            jaeger_url: jaeger_url.to_owned(),
        })
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Console>);

impl std::ops::Deref for AppState {
    type Target = Console;

    fn deref(&self) -> &Console {
        &self.0
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// The console's view of Drover.
pub struct Console {
    /// Settings.
    pub config: ConsoleConfig,
    /// Who may act.
    pub access: Access,
    /// Requests to the services.
    pub backend: Backend,
    /// Every run, in brief.
    pub runs: Arc<RunIndex>,
    /// Every worker record.
    pub workers: Arc<KvCache<WorkerRecord>>,
    /// Services and pools.
    pub directory: Arc<Directory>,
    /// Workers' last pulses.
    pub pulses: Arc<pulses::Pulses>,
    /// Largest request body taken.
    pub max_body_bytes: usize,
    /// Cancelled at shutdown; live pages end with it.
    pub shutdown: CancellationToken,
}

/// Runs the console until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    nats: Client,
    config: ConsoleConfig,
    shutdown: CancellationToken,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(nats.clone());
    let Some(runs_bucket) = open_bucket(&js, resources::RUNS_BUCKET, &shutdown).await else {
        return Ok(());
    };
    let runs = RunIndex::spawn(runs_bucket, shutdown.child_token());
    let Some(workers) =
        KvCache::<WorkerRecord>::open(&js, resources::WORKERS_BUCKET, &shutdown).await
    else {
        return Ok(());
    };
    if shutdown
        .run_until_cancelled(runs.wait_caught_up())
        .await
        .is_none()
    {
        return Ok(());
    }
    info!(
        runs = runs.len(),
        workers = workers.len(),
        "runs and workers loaded"
    );
    let directory = Directory::spawn(nats.clone(), shutdown.child_token());
    let pulses = pulses::Pulses::spawn(&nats, shutdown.child_token()).await;
    let state = AppState(Arc::new(Console {
        access: Access::new(config.token.as_deref()),
        backend: Backend::new(nats),
        runs,
        workers,
        directory,
        pulses,
        max_body_bytes: settings.max_payload_bytes,
        shutdown: shutdown.clone(),
        config,
    }));
    let listener = tokio::net::TcpListener::bind(state.config.listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", state.config.listen))?;
    let address = listener.local_addr()?;
    info!(
        %address,
        actions = state.access.actions_enabled(),
        "console serving"
    );
    readiness.set_serving(true);
    let router = http::router(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}
