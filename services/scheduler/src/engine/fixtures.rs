//! Records to test the engine's decisions with: workers as the leader sees them.

use std::sync::Arc;

use drover_protocol::{RoutineId, Timestamp, WorkerId, WorkerPhase, WorkerRecord, WorkerStatus};

/// A workerID.
pub(crate) fn w(id: &str) -> WorkerId {
    WorkerId::parse(id).expect("a valid workerID")
}

/// A routineID.
pub(crate) fn routine(id: &str) -> RoutineId {
    RoutineId::parse(id).expect("a valid routineID")
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
