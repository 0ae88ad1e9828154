//! Records to test the engine's decisions with: runs and workers as the leader sees them.

use std::sync::Arc;

use drover_protocol::{
    RetryBackoff, RoutineId, RunId, RunRecord, RunSpec, Timestamp, WorkerId, WorkerPhase,
    WorkerRecord, WorkerStatus,
};

use crate::intake::{new_record, Origin, TraceContext};
use crate::store::Decision;

/// The instant `ms` milliseconds after the fixtures' epoch, when every run is created.
pub(crate) fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(1_000_000 + ms)
}

/// A workerID.
pub(crate) fn w(id: &str) -> WorkerId {
    WorkerId::parse(id).expect("a valid workerID")
}

/// A routineID.
pub(crate) fn routine(id: &str) -> RoutineId {
    RoutineId::parse(id).expect("a valid routineID")
}

/// A new run of routine `r`, created at `at(0)`: `maxWaitTimeMs` 100, `maxExecTimeMs` 50,
/// backoff 10 ms × 3 up to 50 ms, and `max_retries` retries.
pub(crate) fn pending(max_retries: u32) -> RunRecord {
    let mut spec = RunSpec::new(routine("r"));
    spec.max_wait_time_ms = Some(100);
    spec.max_exec_time_ms = Some(50);
    spec.max_retries = max_retries;
    spec.retry_backoff = Some(RetryBackoff {
        initial_ms: 10,
        multiplier: 3.0,
        max_ms: 50,
    });
    new_record(
        RunId::generate(),
        spec,
        &Origin::Client,
        TraceContext::default(),
        at(0),
    )
}

/// The record a decision writes; panics on any other decision.
pub(crate) fn written(decision: Decision) -> RunRecord {
    match decision {
        Decision::Write(next) => *next,
        other => panic!("expected a write, got {other:?}"),
    }
}

/// A ready worker (incarnation 1) serving `routines`.
pub(crate) fn worker(
    id: &str,
    routines: &[&str],
    capacity: u32,
    labels: &[(&str, &str)],
) -> Arc<WorkerRecord> {
    let now = Timestamp::now();
    let mut record = WorkerRecord {
        worker_id: w(id),
        incarnation: 1,
        status: WorkerStatus::Idle,
        reported_status: None,
        phase: WorkerPhase::Ready,
        unresponsive: false,
        routines: routines.iter().map(|id| routine(id)).collect(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        capacity,
        runs: vec![],
        name: None,
        sdk: None,
        host: None,
        pid: None,
        heartbeat_interval_ms: 200,
        lost_after_ms: 1000,
        registered_at: now,
        status_changed_at: now,
        ready_at: Some(now),
        terminating_reason: None,
    };
    record.status = record.derive_status();
    Arc::new(record)
}

/// `record` changed by `change`, with its status derived again.
pub(crate) fn changed(
    record: &Arc<WorkerRecord>,
    change: impl FnOnce(&mut WorkerRecord),
) -> Arc<WorkerRecord> {
    let mut record = (**record).clone();
    change(&mut record);
    record.status = record.derive_status();
    Arc::new(record)
}
