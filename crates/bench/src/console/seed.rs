//! Storing the records: straight into the buckets, as puts on `$KV.<bucket>.<key>` with
//! [`BATCH`] in flight at once, and a progress line every [`PROGRESS_EVERY`] runs.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::header::{self, HeaderMap, HeaderValue};
use async_nats::jetstream;
use drover_protocol::subject::{self, resources};
use drover_protocol::{RunId, WorkerId, WorkerStatus};

use super::records::{Plan, CAPACITY, ROUTINES};

/// The scheduler's default run retention (`run_retention_ms`): the TTL of terminal records.
const RUN_RETENTION: Duration = Duration::from_secs(86_400);
/// Puts in flight at once.
const BATCH: usize = 1000;
/// A progress line every this many runs.
const PROGRESS_EVERY: usize = 10_000;

/// What was seeded, for the report and for choosing pages.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// Run records stored.
    pub runs: usize,
    /// FAILED runs among them.
    pub failed: usize,
    /// CANCELLED runs among them.
    pub cancelled: usize,
    /// Child runs among them.
    pub children: usize,
    /// Runs with an idempotency key among them.
    pub keyed: usize,
    /// Worker records stored.
    pub workers: usize,
    /// WORKING workers among them.
    pub working: usize,
    /// A run with children.
    pub parent: RunId,
    /// A WORKING worker (an IDLE one if none is).
    pub worker: WorkerId,
    /// The rarest routine.
    pub rare_routine: String,
    /// Seconds the runs took to store.
    pub runs_seconds: f64,
    /// Seconds the workers took to store.
    pub workers_seconds: f64,
}

/// Publishes `body` on `subject` (a key's put subject) without waiting for JetStream's
/// answer; `batch` collects the answers, awaited together once [`BATCH`] are in flight.
async fn put(
    js: &jetstream::Context,
    batch: &mut Vec<jetstream::context::PublishAckFuture>,
    subject: String,
    headers: HeaderMap,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    let ack = js
        .publish_with_headers(subject, headers, body.into())
        .await
        .context("publishing a record")?;
    batch.push(ack);
    if batch.len() >= BATCH {
        settle(batch).await?;
    }
    Ok(())
}

/// Awaits every answer in `batch`.
async fn settle(batch: &mut Vec<jetstream::context::PublishAckFuture>) -> anyhow::Result<()> {
    futures::future::try_join_all(batch.drain(..).map(IntoFuture::into_future))
        .await
        .context("JetStream refused a record")?;
    Ok(())
}

/// Stores the plan's runs in `DROVER_RUNS` and its workers in `DROVER_WORKERS`.
pub async fn seed(js: &jetstream::Context, mut plan: Plan) -> anyhow::Result<Seeded> {
    let started = Instant::now();
    let workers = plan.workers();
    // The newest runs, for the WORKING workers to hold.
    let keep_recent = (workers * CAPACITY as usize).max(1);
    let mut recent = Vec::with_capacity(keep_recent);
    let ttl = HeaderValue::from(RUN_RETENTION.as_secs());
    let mut batch = Vec::with_capacity(BATCH);
    for index in 0..plan.runs {
        let record = plan.run(index);
        if index + keep_recent >= plan.runs {
            recent.push(record.run_id.clone());
        }
        // Terminal records carry the run retention as their TTL, as the scheduler writes them.
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_MESSAGE_TTL, ttl.clone());
        let subject = subject::kv_put_subject(resources::RUNS_BUCKET, record.run_id.as_str());
        put(
            js,
            &mut batch,
            subject,
            headers,
            serde_json::to_vec(&record)?,
        )
        .await?;
        if (index + 1) % PROGRESS_EVERY == 0 {
            eprintln!(
                "  {} runs stored ({:.0}/s)",
                index + 1,
                (index + 1) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    settle(&mut batch).await?;
    let runs_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut working = Vec::new();
    let mut first = None;
    for n in 0..workers {
        let record = plan.worker(n, &recent);
        first.get_or_insert_with(|| record.worker_id.clone());
        if record.status == WorkerStatus::Working {
            working.push(record.worker_id.clone());
        }
        let subject = subject::kv_put_subject(resources::WORKERS_BUCKET, record.worker_id.as_str());
        put(
            js,
            &mut batch,
            subject,
            HeaderMap::new(),
            serde_json::to_vec(&record)?,
        )
        .await?;
    }
    settle(&mut batch).await?;
    let workers_seconds = started.elapsed().as_secs_f64();

    Ok(Seeded {
        runs: plan.runs,
        failed: plan.failed,
        cancelled: plan.cancelled,
        children: plan.children,
        keyed: plan.keyed,
        workers,
        working: working.len(),
        parent: plan
            .with_children
            .context("no run got children: seed more runs (--runs)")?,
        worker: working
            .first()
            .cloned()
            .or(first)
            .context("no worker was seeded")?,
        rare_routine: ROUTINES[ROUTINES.len() - 1].to_owned(),
        runs_seconds,
        workers_seconds,
    })
}
