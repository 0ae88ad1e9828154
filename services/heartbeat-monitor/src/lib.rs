//! The heartbeat-monitor: finds workers that stopped pulsing (DESIGN §5).
//!
//! Pulses are core NATS messages and never touch disk. The monitor follows the registry's
//! bucket to know which workers exist, probes the silent ones with `check_pulse`, and reports
//! UNRESPONSIVE, LOST or OFFLINE to the registry. Any number of monitors may run: each sees
//! every pulse, and the registry applies a report only to the incarnation it names. The
//! decisions are made in [`tracker`], free of I/O; `server` carries them out.

mod error;
pub mod metrics;
mod server;
pub mod tracker;

use std::sync::Arc;

use async_nats::Client;
use drover_protocol::subject::resources;
use drover_protocol::WorkerRecord;
use drover_service_kit::kv_cache::KvCache;
use drover_service_kit::{Readiness, Settings};
use tokio_util::sync::CancellationToken;

pub use crate::error::MonitorError;
use crate::server::Monitor;

/// Runs the monitor until `shutdown` is cancelled.
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
    let monitor = Arc::new(Monitor::new(settings, nats, cache));
    monitor.serve(shutdown, readiness).await
}
