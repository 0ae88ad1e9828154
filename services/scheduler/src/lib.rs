//! The scheduler: runs from request to result (DESIGN §6–7).
//!
//! Every replica takes run requests and answers queries. One replica, elected through
//! JetStream, is the leader: it places runs on workers, reads their directives, keeps the
//! timers, and applies cancellations and child requests, which followers forward to it.
//! See `docs/architecture.md`.

pub mod engine;
pub mod error;
pub mod intake;
pub mod leader;
pub mod metrics;
mod queries;
mod server;
pub mod store;
pub mod transitions;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::Client;
use drover_protocol::subject::resources;
use drover_protocol::WorkerRecord;
use drover_service_kit::kv_cache::KvCache;
use drover_service_kit::{Readiness, Settings};
use tokio_util::sync::CancellationToken;

use crate::intake::Intake;
use crate::store::RunStore;

/// Runs the scheduler until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    nats: Client,
    shutdown: CancellationToken,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(nats.clone());
    let retention = Duration::from_millis(settings.run_retention_ms);
    let store = RunStore::open(js.clone(), nats.clone(), retention)
        .await
        .context("opening the runs bucket")?;
    let intake = Intake::open(js.clone(), store.clone(), retention)
        .await
        .context("opening the run keys bucket")?;
    let workers_bucket = js
        .get_key_value(resources::WORKERS_BUCKET)
        .await
        .context("opening the workers bucket")?;
    let workers: Arc<KvCache<WorkerRecord>> =
        KvCache::spawn(workers_bucket, shutdown.child_token());
    tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        () = workers.wait_caught_up() => {}
    }
    let leaders = js
        .get_key_value(resources::LEADERS_BUCKET)
        .await
        .context("opening the leaders bucket")?;
    let server = server::Server::new(Arc::new(settings), nats, store, intake, workers);
    server.serve(leaders, shutdown, readiness).await
}
