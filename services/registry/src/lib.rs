//! The registry: worker records and statuses, and worker discovery (DESIGN §1, §5).
//!
//! It is the only writer of KV `DROVER_WORKERS`. Workers register over `v1.register.<w>`;
//! `v1.ready` and `v1.terminating` arrive through the durable `registry` consumer of
//! `DROVER_DIRECTIVES`; the scheduler reports held runs and the heartbeat-monitor reports
//! liveness on `drover.internal.registry.*`. Every status is derived in one place,
//! [`drover_protocol::WorkerRecord::derive_status`].

mod error;
pub mod metrics;
mod server;
pub mod spans;
pub mod store;
pub mod transitions;

use std::sync::Arc;

use async_nats::Client;
use drover_protocol::{subject::resources, WorkerRecord};
use drover_service_kit::kv_cache::KvCache;
use drover_service_kit::{Readiness, Settings};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use crate::error::RegistryError;
use crate::store::WorkerStore;
use crate::transitions::Timings;

/// Runs the registry until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    nats: Client,
    shutdown: CancellationToken,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(nats.clone());
    let Some(cache) =
        KvCache::<WorkerRecord>::open(&js, resources::WORKERS_BUCKET, &shutdown).await
    else {
        return Ok(());
    };
    info!(workers = cache.len(), "worker records loaded");

    let store = Arc::new(WorkerStore::new(cache, nats.clone()));
    let timings = Timings {
        heartbeat_interval_ms: settings.heartbeat_interval_ms,
        lost_after_ms: settings.lost_after_ms,
    };
    let server = server::Server {
        settings: Arc::new(settings),
        nats,
        js,
        store,
        timings,
    };
    server.serve(shutdown, readiness).await
}
