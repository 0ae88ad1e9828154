//! What a service decides about a worker, recorded in the trace of every run the worker
//! holds: a run whose worker was lost shows, under its attempt, who decided what and when
//! (docs/observability.md).
//!
//! Each held run carries its attempt span's `traceparent` (`runs[].traceparent` in the
//! worker record); the spans here are children of it, one per run, lasting no time.

use drover_protocol::trace::{derived_span_id, TraceParent};
use drover_protocol::{Timestamp, WorkerRecord};
use drover_telemetry::{KeyValue, SpanRecord};

/// One span `name` at `at` under the attempt of each run `worker` holds, with the worker's
/// and the run's IDs and `attributes`. Runs held without a valid traceparent get none.
///
/// `decision` tells this decision from others of the same name about the same attempt
/// (the status a worker entered, say): the span's id is derived from it, so that the same
/// decision reported twice is one span, and two decisions are two.
pub fn about_held_runs(
    name: &'static str,
    decision: &str,
    worker: &WorkerRecord,
    at: Timestamp,
    attributes: &[KeyValue],
) -> Vec<SpanRecord> {
    worker
        .runs
        .iter()
        .filter_map(|held| {
            let attempt = TraceParent::parse(held.traceparent.as_deref()?)?;
            let id = derived_span_id(&[
                name,
                decision,
                held.run_id.as_str(),
                &held.attempt.to_string(),
                worker.worker_id.as_str(),
                &worker.incarnation.to_string(),
            ]);
            let instant = at.to_system_time();
            let mut span = SpanRecord::new(
                name,
                attempt.with_span(id),
                Some(attempt.parent_id.clone()),
                instant,
                instant,
            );
            span.attributes = vec![
                KeyValue::new("drover.worker_id", worker.worker_id.to_string()),
                KeyValue::new("drover.worker.incarnation", worker.incarnation as i64),
                KeyValue::new("drover.run_id", held.run_id.to_string()),
                KeyValue::new("drover.attempt", held.attempt as i64),
            ];
            span.attributes.extend_from_slice(attributes);
            Some(span)
        })
        .collect()
}

/// Records [`about_held_runs`] (nothing when spans are not exported).
pub fn record_about_held_runs(
    name: &'static str,
    decision: &str,
    worker: &WorkerRecord,
    at: Timestamp,
    attributes: &[KeyValue],
) {
    if !drover_telemetry::export_enabled_cached() || worker.runs.is_empty() {
        return;
    }
    for span in about_held_runs(name, decision, worker, at, attributes) {
        drover_telemetry::record(span);
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::{HeldRun, Labels, RunId, WorkerId, WorkerPhase, WorkerStatus};

    use super::*;

    const ATTEMPT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn held(traceparent: Option<&str>) -> HeldRun {
        HeldRun {
            run_id: RunId::generate(),
            attempt: 3,
            waiting: false,
            waiting_version: 0,
            since: Timestamp::from_millis(1),
            traceparent: traceparent.map(str::to_owned),
        }
    }

    #[test]
    fn one_span_under_each_traced_attempt() {
        let now = Timestamp::from_millis(1);
        let worker = WorkerRecord {
            worker_id: WorkerId::parse("w").unwrap(),
            incarnation: 2,
            status: WorkerStatus::Working,
            reported_status: None,
            phase: WorkerPhase::Ready,
            unresponsive: false,
            routines: vec![],
            labels: Labels::new(),
            capacity: 4,
            runs: vec![held(Some(ATTEMPT)), held(None), held(Some("garbage"))],
            name: None,
            sdk: None,
            host: None,
            pid: None,
            heartbeat_interval_ms: 5000,
            lost_after_ms: 15000,
            registered_at: now,
            status_changed_at: now,
            ready_at: None,
            terminating_reason: None,
        };
        let at = Timestamp::from_millis(5_000);
        let spans = about_held_runs(
            "drover.worker.lost",
            "lost",
            &worker,
            at,
            &[KeyValue::new("drover.worker.liveness", "lost")],
        );
        let [span] = spans.as_slice() else {
            panic!("one span, got {spans:?}");
        };
        assert_eq!(span.name, "drover.worker.lost");
        assert_eq!(span.parent.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(span.context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(span.context.parent_id, "00f067aa0ba902b7");
        assert_eq!(
            (span.start, span.end),
            (at.to_system_time(), at.to_system_time())
        );
        let keys: Vec<_> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "drover.worker_id",
                "drover.worker.incarnation",
                "drover.run_id",
                "drover.attempt",
                "drover.worker.liveness"
            ]
        );
        // The same decision names the same span (a repeated report is not a second one);
        // another decision, another span.
        assert_eq!(
            about_held_runs("drover.worker.lost", "lost", &worker, at, &[])[0].context,
            span.context
        );
        assert_ne!(
            about_held_runs("drover.worker.lost", "offline", &worker, at, &[])[0].context,
            span.context
        );
    }
}
