//! The log-collector: worker log intake, validation, enrichment, storage, query and follow
//! (DESIGN §1, §4, §7).
//!
//! Workers publish `v1.log.<workerID>`; `DROVER_LOG_INTAKE` keeps each line until the
//! collector has stored it. The replica that holds the intake lease reads the intake
//! through the durable consumer `log-collector`, validates each line, adds the run's
//! routine, attempt and trace from KV `DROVER_RUNS`, and stores the record in
//! `DROVER_LOGS` on `drover.logs.<runID or "none">.<workerID>`, exactly once and in arrival
//! order (see [`intake`]). Every replica answers `v1.logs.query` (see [`cursor`] for paging
//! and following).

mod batch;
pub mod cursor;
pub mod enrich;
pub mod intake;
pub mod leader;
pub mod metrics;
mod query;
mod server;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::Client;
use drover_protocol::subject::resources;
use drover_service_kit::{Readiness, Settings};
use tokio_util::sync::CancellationToken;

use crate::enrich::RunCache;
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
    metrics::describe();
    let js = async_nats::jetstream::new(nats.clone());
    let intake_stream = js
        .get_stream(resources::LOG_INTAKE_STREAM)
        .await
        .context("opening the log intake stream")?;
    let logs = js
        .get_stream(resources::LOGS_STREAM)
        .await
        .context("opening the logs stream")?;
    let runs = js
        .get_key_value(resources::RUNS_BUCKET)
        .await
        .context("opening the runs bucket")?;
    let leaders = js
        .get_key_value(resources::LEADERS_BUCKET)
        .await
        .context("opening the leaders bucket")?;

    let intake = Intake {
        nats: nats.clone(),
        js,
        intake: intake_stream,
        logs,
        runs: Arc::new(RunCache::new(runs, RUN_CACHE_CAPACITY)),
        max_payload_bytes: settings.max_payload_bytes,
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
    };
    server.serve(shutdown, readiness).await
}
