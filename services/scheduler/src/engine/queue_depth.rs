//! The leader's report of runs waiting for a worker, per routine (`drover_scheduler_runs_pending`).
//!
//! Runs are accepted by every replica, so the leader cannot count them as they come. It
//! samples instead, once every [`PERIOD`] and off the runs' path: the queue stream's message
//! count per routine (one JetStream request) less the runs the workers' records hold (see
//! [`QueueDepth`]). A new leader starts from the same sources, so its first report is
//! whole; a replica that stops leading reports 0 for every routine it reported, and one that
//! never led reports nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use drover_protocol::subject::{self, resources};
use drover_protocol::{RoutineId, RunId, WorkerRecord};
use drover_service_kit::kv_cache::KvCache;
use futures::{StreamExt, TryStreamExt};
use tracing::debug;

use super::Engine;
use crate::metrics::{self, QueueDepth};
use crate::store::BoxError;

/// How often the leader reports the queue depth.
const PERIOD: Duration = Duration::from_secs(1);
/// Run records read at once to learn the routine of runs this leader did not place.
const LOOKUPS_IN_FLIGHT: usize = 16;

/// Reports the queue depth until leadership ends, then reports 0.
pub(super) async fn report(engine: Arc<Engine>, workers: Arc<KvCache<WorkerRecord>>) {
    loop {
        if let Err(error) = sample(&engine, &workers).await {
            debug!(%error, "could not measure the queue depth");
        }
        let pause = tokio::time::sleep(PERIOD);
        if engine.shutdown.run_until_cancelled(pause).await.is_none() {
            break;
        }
    }
    engine.queue_depth.retire();
}

async fn sample(engine: &Engine, workers: &KvCache<WorkerRecord>) -> Result<(), BoxError> {
    let held: HashSet<RunId> = workers
        .values()
        .iter()
        .flat_map(|worker| worker.runs.iter().map(|run| run.run_id.clone()))
        .collect();
    let (mut routines, unknown) = engine.queue_depth.routines_of(&held);
    routines.extend(look_up(engine, &engine.queue_depth, unknown).await);
    let in_flight = in_flight(engine).await?;
    let served = engine.dispatcher.routines().borrow().clone();
    engine
        .queue_depth
        .report(&metrics::pending(&in_flight, &routines, &served));
    Ok(())
}

/// Queue messages per routine: the runs accepted and not ended.
async fn in_flight(engine: &Engine) -> Result<HashMap<RoutineId, u64>, BoxError> {
    let stream = engine.js.get_stream(resources::QUEUE_STREAM).await?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(subject::all_queues())
        .await?
        .try_collect()
        .await?;
    Ok(subjects
        .into_iter()
        .filter_map(|(subject, count)| Some((subject::parse_queue(&subject)?, count as u64)))
        .collect())
}

/// Reads the routine of runs held on workers that this leader did not place, and notes it.
async fn look_up(engine: &Engine, depth: &QueueDepth, runs: Vec<RunId>) -> Vec<RoutineId> {
    futures::stream::iter(runs)
        .map(|run| async move {
            let stored = engine.store.get(&run).await.ok().flatten()?;
            let routine = stored.record.routine_id;
            depth.learn(run, routine.clone());
            Some(routine)
        })
        .buffer_unordered(LOOKUPS_IN_FLIGHT)
        .filter_map(std::future::ready)
        .collect()
        .await
}
