//! The scheduler's part of a run's trace (DESIGN §8; docs/observability.md): `drover.run`
//! from acceptance to the terminal state, one `drover.attempt` per attempt from its
//! assignment to its end, and `drover.retry_backoff` between a failed attempt and its retry.
//!
//! These spans outlive the process that begins them (a leader change, a worker lost hours
//! later), so none is held open: each is decided from the run record before and after a
//! write, once the write that ends it has been applied, and recorded whole, with its start
//! taken from the record's transitions and its span id derived from the runID and attempt
//! ([`RunRecord::run_span`], [`RunRecord::attempt_span`]). The assignment sent to a worker
//! carries the attempt's context before the span is written, so the worker's execution
//! span, the log-collector's and the heartbeat-monitor's spans sit under it.
//!
//! Deciding is pure ([`ended`]), tested at exact instants; [`record`] hands the spans to
//! the exporter.

use drover_protocol::trace::TraceParent;
use drover_protocol::{Attempt, FailureReason, RunRecord, RunStatus, Timestamp, Transition};
use drover_telemetry::{KeyValue, SpanEvent, SpanRecord};

use crate::transitions::{held, NOT_ACKNOWLEDGED};

/// Span names, as they appear in a tracing UI.
pub mod names {
    /// A submission (from a client, or a worker's child request), served.
    pub const INTAKE: &str = "drover.intake";
    /// Storing and queueing a new run, inside its intake.
    pub const ENQUEUE: &str = "drover.enqueue";
    /// A cancellation request, served.
    pub const CANCEL: &str = "drover.cancel";
    /// A run, from acceptance to its terminal state.
    pub const RUN: &str = "drover.run";
    /// One attempt, from its assignment to its end.
    pub const ATTEMPT: &str = "drover.attempt";
    /// The wait between a failed attempt and the earliest placement of its retry.
    pub const RETRY_BACKOFF: &str = "drover.retry_backoff";
}

/// How an attempt ended: `drover.outcome` on its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The routine succeeded.
    Succeeded,
    /// The routine reported an error.
    Failed,
    /// The attempt ran past `maxExecTimeMs`.
    TimedOut,
    /// The worker was lost, went offline or registered again while holding it.
    WorkerLost,
    /// The worker never said `starting` in time.
    NotAcknowledged,
    /// The run (or its parent) was cancelled.
    Cancelled,
    /// The assignment was undone before it reached the worker (records written by versions
    /// that claimed slots at the registry after recording the assignment).
    NotPlaced,
}

impl AttemptOutcome {
    /// The attribute value, e.g. `timed_out`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::WorkerLost => "worker_lost",
            Self::NotAcknowledged => "not_acknowledged",
            Self::Cancelled => "cancelled",
            Self::NotPlaced => "not_placed",
        }
    }

    /// Whether the attempt's span has error status.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::TimedOut | Self::WorkerLost | Self::NotAcknowledged
        )
    }
}

/// The spans that the write from `before` to `after` ends: the attempts it closes, a retry's
/// backoff it begins, and the run, when it reaches a terminal state. Empty for a record
/// with no valid trace context.
pub fn ended(before: &RunRecord, after: &RunRecord) -> Vec<SpanRecord> {
    let Some(submitted) = after.submitted_in() else {
        return Vec::new();
    };
    let mut spans = Vec::new();
    let mut open = held(before).then_some(before.attempt);
    let added = added_transitions(before, after);
    for (index, transition) in added.iter().enumerate() {
        if let Some(attempt) = open {
            let goes_on = transition.attempt == attempt && transition.status == RunStatus::Running;
            if !goes_on {
                let outcome = outcome(before, after, transition);
                spans.push(attempt_span(
                    &submitted, after, attempt, transition, outcome,
                ));
                open = None;
                let retried = matches!(outcome, AttemptOutcome::Failed | AttemptOutcome::TimedOut)
                    && transition.status == RunStatus::Pending;
                let last = index + 1 == added.len();
                if let (true, true, Some(not_before)) = (retried, last, after.not_before) {
                    spans.push(backoff_span(&submitted, after, transition.at, not_before));
                }
            }
        }
        if transition.status == RunStatus::Assigned {
            open = Some(transition.attempt);
        }
        if transition.status.is_terminal() {
            spans.push(run_span(&submitted, after, transition.at));
        }
    }
    spans
}

/// Records the spans [`ended`] decides (nothing when spans are not exported).
pub fn record(before: &RunRecord, after: &RunRecord) {
    if !drover_telemetry::export_enabled_cached() {
        return;
    }
    for span in ended(before, after) {
        drover_telemetry::record(span);
    }
}

/// The transitions `after` has that `before` had not: those after `before`'s last one
/// (the list is capped, so it is not a matter of length).
fn added_transitions<'a>(before: &RunRecord, after: &'a RunRecord) -> &'a [Transition] {
    let Some(last) = before.transitions.last() else {
        return &after.transitions;
    };
    match after.transitions.iter().rposition(|t| t == last) {
        Some(position) => &after.transitions[position + 1..],
        None => &[],
    }
}

/// How the attempt open in `before` ended, from the transition that ended it.
fn outcome(before: &RunRecord, after: &RunRecord, ending: &Transition) -> AttemptOutcome {
    let lost = || match ending.reason.as_deref() {
        Some(NOT_ACKNOWLEDGED) => AttemptOutcome::NotAcknowledged,
        _ => AttemptOutcome::WorkerLost,
    };
    let failed = || match after.error.as_ref().and_then(|error| error.kind.as_deref()) {
        Some(kind) if kind == FailureReason::MaxExecExceeded.as_str() => AttemptOutcome::TimedOut,
        _ => AttemptOutcome::Failed,
    };
    match ending.status {
        RunStatus::Succeeded => AttemptOutcome::Succeeded,
        RunStatus::Cancelled => AttemptOutcome::Cancelled,
        RunStatus::Failed => match after.failure_reason {
            Some(FailureReason::MaxExecExceeded) => AttemptOutcome::TimedOut,
            Some(FailureReason::WorkerLost) => lost(),
            _ => AttemptOutcome::Failed,
        },
        RunStatus::Pending if after.retries > before.retries => failed(),
        RunStatus::Pending if after.reassignments > before.reassignments => lost(),
        RunStatus::Pending => AttemptOutcome::NotPlaced,
        // A new assignment over an open one: the open one is gone.
        RunStatus::Assigned | RunStatus::Running => lost(),
    }
}

fn common(after: &RunRecord) -> Vec<KeyValue> {
    vec![
        KeyValue::new("drover.run_id", after.run_id.to_string()),
        KeyValue::new("drover.routine_id", after.routine_id.to_string()),
    ]
}

fn attempt_span(
    submitted: &TraceParent,
    after: &RunRecord,
    attempt: Attempt,
    ending: &Transition,
    outcome: AttemptOutcome,
) -> SpanRecord {
    let of_attempt = |status: RunStatus| {
        after
            .transitions
            .iter()
            .find(|t| t.attempt == attempt && t.status == status)
    };
    let assigned = of_attempt(RunStatus::Assigned);
    let start = assigned.map_or(ending.at, |t| t.at);
    let worker = assigned
        .and_then(|t| t.worker_id.as_ref())
        .or(ending.worker_id.as_ref());
    let context = TraceParent::attempt_span(submitted, after.run_id.as_str(), attempt);
    let parent = TraceParent::run_span(submitted, after.run_id.as_str()).parent_id;
    let mut span = SpanRecord::new(
        names::ATTEMPT,
        context,
        Some(parent),
        start.to_system_time(),
        ending.at.to_system_time(),
    );
    span.tracestate = after.tracestate.clone();
    span.attributes = common(after);
    span.attributes.extend([
        KeyValue::new("drover.attempt", attempt as i64),
        KeyValue::new("drover.outcome", outcome.as_str()),
    ]);
    if let Some(worker) = worker {
        span.attributes
            .push(KeyValue::new("drover.worker_id", worker.to_string()));
    }
    let reason = match outcome {
        AttemptOutcome::Failed | AttemptOutcome::TimedOut => after
            .error
            .as_ref()
            .map(|error| error.message.clone())
            .or_else(|| ending.reason.clone()),
        _ => ending.reason.clone(),
    };
    if let Some(reason) = &reason {
        span.attributes
            .push(KeyValue::new("drover.reason", reason.clone()));
    }
    if let Some(assigned) = assigned {
        span.events.push(event("assigned", assigned.at, worker));
    }
    if let Some(started) = of_attempt(RunStatus::Running) {
        span.events.push(event("started", started.at, worker));
    }
    if outcome.is_error() {
        span.error = Some(reason.unwrap_or_else(|| outcome.as_str().to_owned()));
    }
    span
}

fn event(
    name: &'static str,
    at: Timestamp,
    worker: Option<&drover_protocol::WorkerId>,
) -> SpanEvent {
    SpanEvent {
        name: name.into(),
        at: at.to_system_time(),
        attributes: worker
            .map(|worker| vec![KeyValue::new("drover.worker_id", worker.to_string())])
            .unwrap_or_default(),
    }
}

fn backoff_span(
    submitted: &TraceParent,
    after: &RunRecord,
    from: Timestamp,
    until: Timestamp,
) -> SpanRecord {
    // Not derived: nothing else names it, and it is written at once.
    let context = submitted.with_span(drover_protocol::trace::derived_span_id(&[
        "retry_backoff",
        after.run_id.as_str(),
        &after.retries.to_string(),
    ]));
    let parent = TraceParent::run_span(submitted, after.run_id.as_str()).parent_id;
    let mut span = SpanRecord::new(
        names::RETRY_BACKOFF,
        context,
        Some(parent),
        from.to_system_time(),
        until.to_system_time(),
    );
    span.tracestate = after.tracestate.clone();
    span.attributes = common(after);
    span.attributes.extend([
        KeyValue::new("drover.retry", i64::from(after.retries)),
        KeyValue::new(
            "drover.retry.delay_ms",
            until.since(from).as_millis() as i64,
        ),
    ]);
    span
}

fn run_span(submitted: &TraceParent, after: &RunRecord, end: Timestamp) -> SpanRecord {
    let context = TraceParent::run_span(submitted, after.run_id.as_str());
    let mut span = SpanRecord::new(
        names::RUN,
        context,
        Some(submitted.parent_id.clone()),
        after.created_at.to_system_time(),
        end.to_system_time(),
    );
    span.tracestate = after.tracestate.clone();
    span.attributes = common(after);
    span.attributes.extend([
        KeyValue::new("drover.status", after.status.to_string()),
        KeyValue::new("drover.attempts", after.attempt as i64),
        KeyValue::new("drover.retries", i64::from(after.retries)),
        KeyValue::new("drover.reassignments", i64::from(after.reassignments)),
    ]);
    if let Some(parent) = &after.parent_run_id {
        span.attributes
            .push(KeyValue::new("drover.parent_run_id", parent.to_string()));
    }
    if let Some(reason) = after.failure_reason {
        span.attributes
            .push(KeyValue::new("drover.failure_reason", reason.as_str()));
    }
    if after.status == RunStatus::Failed {
        span.error = Some(
            after
                .error
                .as_ref()
                .map(|error| error.message.clone())
                .unwrap_or_else(|| "failed".to_owned()),
        );
    }
    span
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use drover_protocol::RunError;
    use drover_telemetry::Value;

    use super::*;
    use crate::engine::fixtures::{at, pending, w};
    use crate::transitions::{self, AttemptFailure};

    fn attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    fn text(span: &SpanRecord, key: &str) -> String {
        attr(span, key)
            .map(|value| value.as_str().into_owned())
            .unwrap_or_default()
    }

    fn time(ms: i64) -> SystemTime {
        at(ms).to_system_time()
    }

    fn names(spans: &[SpanRecord]) -> Vec<&str> {
        spans.iter().map(|span| span.name.as_ref()).collect()
    }

    fn assigned(record: &RunRecord, worker: &str, ms: i64) -> RunRecord {
        transitions::assign(record, &w(worker), 1, at(ms))
    }

    fn error(message: &str) -> AttemptFailure {
        AttemptFailure::Error(RunError {
            message: message.to_owned(),
            kind: None,
            retryable: None,
        })
    }

    #[test]
    fn a_run_that_succeeds_has_one_attempt_and_its_run_span() {
        let created = pending(0);
        let on_worker = assigned(&created, "w1", 10);
        assert!(ended(&created, &on_worker).is_empty(), "nothing ends yet");
        let running = transitions::start(&on_worker, at(20)).unwrap();
        assert!(ended(&on_worker, &running).is_empty());
        let done = transitions::succeed(&running, None, at(70));
        let spans = ended(&running, &done);
        assert_eq!(names(&spans), ["drover.attempt", "drover.run"]);

        let submitted = created.submitted_in().unwrap();
        let (attempt, run) = (&spans[0], &spans[1]);
        assert_eq!(attempt.context, done.attempt_span(1).unwrap());
        assert_eq!(attempt.parent.as_ref(), Some(&run.context.parent_id));
        assert_eq!((attempt.start, attempt.end), (time(10), time(70)));
        assert_eq!(text(attempt, "drover.outcome"), "succeeded");
        assert_eq!(text(attempt, "drover.worker_id"), "w1");
        assert_eq!(attr(attempt, "drover.attempt"), Some(&Value::I64(1)));
        let events: Vec<_> = attempt
            .events
            .iter()
            .map(|event| (event.name.as_ref(), event.at))
            .collect();
        assert_eq!(events, [("assigned", time(10)), ("started", time(20))]);
        assert_eq!(attempt.error, None);

        assert_eq!(run.context, done.run_span().unwrap());
        assert_eq!(run.parent.as_ref(), Some(&submitted.parent_id));
        assert_eq!(run.context.trace_id, submitted.trace_id);
        assert_eq!((run.start, run.end), (time(0), time(70)));
        assert_eq!(text(run, "drover.status"), "SUCCEEDED");
        assert_eq!(run.error, None);
    }

    #[test]
    fn retries_show_each_failed_attempt_and_its_backoff() {
        let created = pending(2);
        let running = transitions::start(&assigned(&created, "w1", 10), at(12)).unwrap();
        let retry = transitions::fail_attempt(&running, error("boom"), at(30));
        let spans = ended(&running, &retry);
        assert_eq!(names(&spans), ["drover.attempt", "drover.retry_backoff"]);
        assert_eq!(text(&spans[0], "drover.outcome"), "failed");
        assert_eq!(text(&spans[0], "drover.reason"), "boom");
        assert_eq!(spans[0].error.as_deref(), Some("boom"));
        // Backoff 10 ms for the first retry.
        assert_eq!((spans[1].start, spans[1].end), (time(30), time(40)));
        assert_eq!(attr(&spans[1], "drover.retry"), Some(&Value::I64(1)));
        assert_eq!(spans[1].parent, spans[0].parent);

        // The second attempt times out, and retries again after 30 ms.
        let second = assigned(&retry, "w2", 45);
        let timed_out = transitions::fail_attempt(&second, AttemptFailure::MaxExec, at(100));
        let spans = ended(&second, &timed_out);
        assert_eq!(names(&spans), ["drover.attempt", "drover.retry_backoff"]);
        assert_eq!(spans[0].context, timed_out.attempt_span(2).unwrap());
        assert_ne!(spans[0].context, timed_out.attempt_span(1).unwrap());
        assert_eq!(text(&spans[0], "drover.outcome"), "timed_out");
        assert_eq!(text(&spans[0], "drover.worker_id"), "w2");
        assert_eq!((spans[0].start, spans[0].end), (time(45), time(100)));
        assert_eq!((spans[1].start, spans[1].end), (time(100), time(130)));

        // The third fails for good: no backoff, and the run fails.
        let third = assigned(&timed_out, "w1", 140);
        let failed = transitions::fail_attempt(&third, error("again"), at(150));
        let spans = ended(&third, &failed);
        assert_eq!(names(&spans), ["drover.attempt", "drover.run"]);
        assert_eq!(text(&spans[1], "drover.status"), "FAILED");
        assert_eq!(
            text(&spans[1], "drover.failure_reason"),
            "retries_exhausted"
        );
        assert_eq!(attr(&spans[1], "drover.attempts"), Some(&Value::I64(3)));
        assert_eq!(spans[1].error.as_deref(), Some("again"));
    }

    #[test]
    fn taken_back_attempts_say_why() {
        let created = pending(0);
        let first = assigned(&created, "w1", 10);
        let lost = transitions::reassign(&first, "worker w1 is LOST", 3, at(50));
        let spans = ended(&first, &lost);
        assert_eq!(names(&spans), ["drover.attempt"]);
        assert_eq!(text(&spans[0], "drover.outcome"), "worker_lost");
        assert_eq!(text(&spans[0], "drover.reason"), "worker w1 is LOST");
        assert!(spans[0].error.is_some());

        let second = assigned(&lost, "w2", 60);
        let silent = transitions::reassign(&second, NOT_ACKNOWLEDGED, 3, at(90));
        assert_eq!(
            text(&ended(&second, &silent)[0], "drover.outcome"),
            "not_acknowledged"
        );

        // Over the bound: the attempt and the run end together.
        let fourth = assigned(&silent, "w4", 100);
        let gone = transitions::reassign(&fourth, "worker w4 is LOST", 1, at(120));
        let spans = ended(&fourth, &gone);
        assert_eq!(names(&spans), ["drover.attempt", "drover.run"]);
        assert_eq!(text(&spans[0], "drover.outcome"), "worker_lost");
        assert_eq!(text(&spans[1], "drover.failure_reason"), "worker_lost");
    }

    #[test]
    fn cancelling_ends_the_open_attempt_and_the_run() {
        let running = transitions::start(&assigned(&pending(0), "w1", 10), at(11)).unwrap();
        let cancelled = transitions::cancel(&running, "stop", at(40)).unwrap();
        let spans = ended(&running, &cancelled);
        assert_eq!(names(&spans), ["drover.attempt", "drover.run"]);
        assert_eq!(text(&spans[0], "drover.outcome"), "cancelled");
        assert_eq!(text(&spans[0], "drover.reason"), "stop");
        assert_eq!(spans[0].error, None);
        assert_eq!(text(&spans[1], "drover.status"), "CANCELLED");
        assert_eq!(spans[1].error, None);

        // A run cancelled, or expired, before any attempt has only its run span.
        let waiting = pending(0);
        let cancelled = transitions::cancel(&waiting, "stop", at(5)).unwrap();
        assert_eq!(names(&ended(&waiting, &cancelled)), ["drover.run"]);
        let expired = transitions::expire_wait(&waiting, at(100)).unwrap();
        let spans = ended(&waiting, &expired);
        assert_eq!(names(&spans), ["drover.run"]);
        assert_eq!(
            text(&spans[0], "drover.failure_reason"),
            "max_wait_exceeded"
        );
    }

    #[test]
    fn one_write_with_start_and_end_makes_one_attempt_with_both_events() {
        let on_worker = assigned(&pending(0), "w1", 10);
        let running = transitions::start(&on_worker, at(12)).unwrap();
        let done = transitions::succeed(&running, None, at(13));
        let spans = ended(&on_worker, &done);
        assert_eq!(names(&spans), ["drover.attempt", "drover.run"]);
        assert_eq!(spans[0].events.len(), 2);
    }

    #[test]
    fn a_leader_that_takes_over_ends_the_same_spans() {
        // What the first leader sent the worker, and what the next one records.
        let on_worker = assigned(&pending(0), "w1", 10);
        let sent = on_worker.attempt_span(on_worker.attempt).unwrap();
        let reloaded: RunRecord =
            serde_json::from_value(serde_json::to_value(&on_worker).unwrap()).unwrap();
        let done = transitions::succeed(&reloaded, None, at(500));
        let spans = ended(&reloaded, &done);
        assert_eq!(spans[0].context, sent);
        assert_eq!(spans[0].start, time(10), "start taken from the record");
    }

    #[test]
    fn writes_that_end_nothing_make_no_spans_and_nor_does_a_record_without_a_trace() {
        let running = transitions::start(&assigned(&pending(0), "w1", 10), at(11)).unwrap();
        let mut waiting = running.clone();
        waiting
            .open_children
            .push(drover_protocol::RunId::generate());
        assert!(ended(&running, &waiting).is_empty());

        let mut untraced = running.clone();
        untraced.traceparent = None;
        let done = transitions::succeed(&untraced, None, at(20));
        assert!(ended(&untraced, &done).is_empty());
    }

    #[test]
    fn a_capped_history_still_finds_what_was_added() {
        let mut record = pending(1000);
        let mut ms = 0;
        for _ in 0..40 {
            ms += 10;
            record = assigned(&record, "w1", ms);
            ms += 10;
            record = transitions::fail_attempt(&record, error("x"), at(ms));
        }
        assert_eq!(record.transitions.len(), 64);
        let next = assigned(&record, "w1", ms + 100);
        let done = transitions::succeed(&next, None, at(ms + 200));
        let spans = ended(&next, &done);
        assert_eq!(names(&spans), ["drover.attempt", "drover.run"]);
        assert_eq!(attr(&spans[0], "drover.attempt"), Some(&Value::I64(41)));
        assert_eq!(spans[0].start, time(ms + 100));
    }
}
