//! The log-collector: worker log intake, validation, enrichment, storage, query and follow
//! (DESIGN §1, §4, §7).
//!
//! Workers publish `v1.log.<workerID>`; `DROVER_LOG_INTAKE` keeps each line until the
//! collector has stored it. Lines from a workerID the registry has no record of are refused
//! with `unknown_worker`. The replica that holds the intake lease reads the intake
//! through the durable consumer `log-collector`, validates each line, adds the run's
//! routine, attempt and trace from KV `DROVER_RUNS`, and stores the record in
//! `DROVER_LOGS` on `drover.logs.<runID or "none">.<workerID>`, exactly once and in arrival
//! order (see [`intake`]). Every replica answers `v1.logs.query` (see [`cursor`] for paging
//! and following). Lines about a run that no worker recorded on the run's trace are
//! recorded there as events of a `drover.logs` span under their attempt (see [`trace`]).

mod batch;
pub mod cursor;
pub mod enrich;
mod error;
pub mod intake;
pub mod metrics;
mod query;
mod server;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use drover_protocol::subject::resources;
use drover_protocol::WorkerRecord;
use drover_service_kit::kv_cache::KvCache;
use drover_service_kit::{open_bucket, open_stream, Readiness, Settings};
use tokio_util::sync::CancellationToken;

use crate::enrich::RunCache;
pub use crate::error::LogError;
use crate::intake::Intake;
use crate::query::Queries;

/// Runs cached for enrichment at most.
pub const RUN_CACHE_CAPACITY: usize = 10_000;

/// Runs the log-collector until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    nats: Client,
    shutdown: CancellationToken,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(nats.clone());
    // Each look-up is retried until it succeeds; `None` when shutdown came first.
    let opened = async {
        let intake = open_stream(&js, resources::LOG_INTAKE_STREAM, &shutdown).await?;
        let logs = open_stream(&js, resources::LOGS_STREAM, &shutdown).await?;
        let runs = open_bucket(&js, resources::RUNS_BUCKET, &shutdown).await?;
        let leaders = open_bucket(&js, resources::LEADERS_BUCKET, &shutdown).await?;
        // Who may log (lines from unregistered workers are refused), and which attempt of
        // a run a line's worker holds (see `trace::recorded_under`).
        let workers =
            KvCache::<WorkerRecord>::open(&js, resources::WORKERS_BUCKET, &shutdown).await?;
        Some((intake, logs, runs, leaders, workers))
    };
    let Some((intake_stream, logs, runs, leaders, workers)) = opened.await else {
        return Ok(());
    };

    let intake = Intake {
        nats: nats.clone(),
        js,
        intake: intake_stream,
        logs,
        runs: Arc::new(RunCache::new(runs, RUN_CACHE_CAPACITY)),
        max_payload_bytes: settings.max_payload_bytes,
        workers,
        traced: drover_telemetry::export_enabled_cached(),
    };
    let queries = Queries {
        nats: nats.clone(),
        max_payload_bytes: settings.max_payload_bytes,
    };
    let server = server::Server {
        nats,
        queries: Arc::new(queries),
        intake: Arc::new(intake),
        leaders,
        instance_id: settings.instance_id.clone(),
        lease: Duration::from_millis(settings.leader_lease_ms),
        purge_interval: Duration::from_millis(settings.hostile_purge_interval_ms),
    };
    server.serve(shutdown, readiness).await
}
