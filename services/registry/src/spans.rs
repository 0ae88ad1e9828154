//! The registry's decisions about a worker that holds runs, in those runs' traces: a
//! status change to UNRESPONSIVE, LOST or OFFLINE, or a new registration over the one that
//! held them, is a `drover.worker.status_changed` span under each held attempt.

use drover_protocol::{Timestamp, WorkerRecord, WorkerStatus};
use drover_service_kit::worker_spans;
use drover_telemetry::{KeyValue, SpanRecord};

/// The span's name.
pub const STATUS_CHANGED: &str = "drover.worker.status_changed";

/// The spans the change from `previous` to `next` makes: none unless the worker held runs
/// and the change says why they may not finish there.
pub fn decided(previous: &WorkerRecord, next: &WorkerRecord, at: Timestamp) -> Vec<SpanRecord> {
    let new_incarnation = previous.incarnation != next.incarnation;
    let worrying = matches!(
        next.status,
        WorkerStatus::Unresponsive | WorkerStatus::Lost | WorkerStatus::Offline
    );
    if previous.runs.is_empty()
        || !(new_incarnation || (worrying && previous.status != next.status))
    {
        return Vec::new();
    }
    let mut attributes = vec![
        KeyValue::new("drover.worker.status", next.status.as_str()),
        KeyValue::new("drover.worker.previous_status", previous.status.as_str()),
    ];
    if new_incarnation {
        attributes.push(KeyValue::new(
            "drover.worker.new_incarnation",
            next.incarnation as i64,
        ));
    }
    if let Some(reason) = &next.terminating_reason {
        attributes.push(KeyValue::new("drover.worker.reason", reason.clone()));
    }
    let decision = format!("{}/{}", next.incarnation, next.status.as_str());
    worker_spans::about_held_runs(STATUS_CHANGED, &decision, previous, at, &attributes)
}

/// Records [`decided`] (nothing when spans are not exported).
pub fn record(previous: &WorkerRecord, next: &WorkerRecord, at: Timestamp) {
    if previous.runs.is_empty() || !drover_telemetry::export_enabled_cached() {
        return;
    }
    for span in decided(previous, next, at) {
        drover_telemetry::record(span);
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::{HeldRun, Register, RoutineId, RunId, WorkerId, WorkerPhase};

    use super::*;
    use crate::transitions::{register, Timings};

    fn registered_worker(phase: WorkerPhase) -> WorkerRecord {
        let request = Register {
            worker_id: WorkerId::parse("w1").unwrap(),
            routines: vec![RoutineId::parse("r").unwrap()],
            labels: Default::default(),
            capacity: 2,
            name: None,
            sdk: None,
            host: None,
            pid: None,
        };
        let timings = Timings {
            heartbeat_interval_ms: 200,
            lost_after_ms: 1000,
        };
        let mut record = register(None, &request, timings, Timestamp::from_millis(0));
        record.phase = phase;
        record.status = record.derive_status();
        record
    }

    fn holding(mut record: WorkerRecord) -> WorkerRecord {
        record.runs.push(HeldRun {
            run_id: RunId::generate(),
            attempt: 1,
            waiting: false,
            waiting_version: 0,
            since: Timestamp::from_millis(1),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        });
        record.status = record.derive_status();
        record
    }

    fn status(spans: &[SpanRecord]) -> Vec<String> {
        spans
            .iter()
            .flat_map(|span| &span.attributes)
            .filter(|kv| kv.key.as_str() == "drover.worker.status")
            .map(|kv| kv.value.as_str().into_owned())
            .collect()
    }

    #[test]
    fn losing_a_worker_that_holds_a_run_is_recorded_under_the_attempt() {
        let working = holding(registered_worker(WorkerPhase::Ready));
        let at = Timestamp::from_millis(9);

        let mut unresponsive = working.clone();
        unresponsive.unresponsive = true;
        unresponsive.status = unresponsive.derive_status();
        let spans = decided(&working, &unresponsive, at);
        assert_eq!(status(&spans), ["UNRESPONSIVE"]);
        assert_eq!(spans[0].parent.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(spans[0].name, STATUS_CHANGED);

        let mut lost = unresponsive.clone();
        lost.phase = WorkerPhase::Lost;
        lost.status = lost.derive_status();
        let later = decided(&unresponsive, &lost, at);
        assert_eq!(status(&later), ["LOST"]);
        assert_ne!(
            later[0].context, spans[0].context,
            "two decisions, two spans"
        );

        let mut again = working.clone();
        again.incarnation += 1;
        again.runs.clear();
        again.status = again.derive_status();
        assert_eq!(decided(&working, &again, at).len(), 1);
    }

    #[test]
    fn ordinary_changes_and_idle_workers_make_no_spans() {
        let idle = registered_worker(WorkerPhase::Ready);
        let mut lost = idle.clone();
        lost.phase = WorkerPhase::Lost;
        lost.status = lost.derive_status();
        assert!(decided(&idle, &lost, Timestamp::from_millis(1)).is_empty());

        let working = holding(idle.clone());
        assert!(decided(&idle, &working, Timestamp::from_millis(1)).is_empty());
        assert!(decided(&working, &working.clone(), Timestamp::from_millis(1)).is_empty());
    }
}
