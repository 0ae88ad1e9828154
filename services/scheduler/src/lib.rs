//! The scheduler: runs from request to result (DESIGN §6–7).
//!
//! Every replica takes run requests and answers queries. One replica, elected through
//! JetStream, is the leader: it places runs on workers, reads their directives, keeps the
//! timers, and applies cancellations and child requests, which followers forward to it.
//! See `docs/architecture.md`.

pub mod engine;
pub mod error;
pub mod intake;
pub mod metrics;
mod queries;
mod server;
pub mod spans;
pub mod store;
pub mod transitions;

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use drover_protocol::subject::resources;
use drover_protocol::WorkerRecord;
use drover_service_kit::kv_cache::KvCache;
use drover_service_kit::{look_up, open_bucket, Readiness, Settings};
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
    // Each look-up is retried until it succeeds; `None` when shutdown came first.
    let opened = async {
        let store = look_up("opening the runs bucket", &shutdown, || {
            RunStore::open(js.clone(), nats.clone(), retention)
        })
        .await?;
        let intake = look_up("opening the run keys bucket", &shutdown, || {
            Intake::open(js.clone(), store.clone(), retention)
        })
        .await?;
        let workers =
            KvCache::<WorkerRecord>::open(&js, resources::WORKERS_BUCKET, &shutdown).await?;
        let leaders = open_bucket(&js, resources::LEADERS_BUCKET, &shutdown).await?;
        Some((store, intake, workers, leaders))
    };
    let Some((store, intake, workers, leaders)) = opened.await else {
        return Ok(());
    };
    let server = server::Server::new(Arc::new(settings), nats, store, intake, workers);
    server.serve(leaders, shutdown, readiness).await
}
