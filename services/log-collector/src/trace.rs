//! Worker lines on the run's trace (protocol §1, "Trace context").
//!
//! A worker that records its lines as events of its own execution span says so by putting
//! that span's `traceparent` on its `v1.log` messages. Every other line about a run (one
//! with no trace context, or with the attempt's own, passed on by a worker that does not
//! trace) is recorded here: per intake batch, one `drover.logs` span for each run and
//! attempt, under the attempt's span, each line an event on it.
//!
//! Spans are recorded only when this process exports them; the intake checks that once and
//! skips all of this otherwise.

use std::collections::HashMap;
use std::time::SystemTime;

use async_nats::HeaderMap;
use drover_protocol::trace::{derived_span_id, TraceParent, TRACEPARENT};
use drover_protocol::{Attempt, LogRecord, RunId};
use drover_telemetry::{KeyValue, SpanEvent, SpanRecord};

use crate::enrich::RunInfo;

/// The name of the span that holds a batch's lines of one attempt.
pub const LOGS_SPAN: &str = "drover.logs";
/// Characters of a line's message kept as its event's name; the line itself keeps all.
pub const EVENT_NAME_CHARS: usize = 256;

/// Under which attempt's span the log-collector records a line about a run, if at all.
///
/// `carried` is the `traceparent` the line's message carried; `held` is the attempt of the
/// run that the line's worker holds, as its worker record says (fresher than the cached run
/// record: a retry on the same worker moves it at once). The collector records the line
/// when it carried none (or a malformed one), or the context of one of the run's attempts'
/// spans, which a worker that does not trace passes on from its assignment: under that
/// attempt, or, when it carried nothing, under the attempt the worker holds, else the run's
/// current one. A line that carried any other context was recorded by the worker, on that
/// context's span. Nothing is recorded for a run without a valid trace context, not
/// sampled, or not assigned yet.
pub fn recorded_under(
    carried: Option<&str>,
    run: &RunInfo,
    held: Option<Attempt>,
) -> Option<Attempt> {
    let current = run.attempt_span.as_ref()?;
    if !is_sampled(current) {
        return None;
    }
    let latest = held.map_or(run.attempt, |held| held.max(run.attempt));
    let Some(carried) = carried.and_then(TraceParent::parse) else {
        return Some(held.unwrap_or(run.attempt));
    };
    if carried.trace_id != current.trace_id {
        return None;
    }
    if carried.parent_id == current.parent_id {
        return Some(run.attempt);
    }
    // Another attempt's worker: derived only for a line of this trace.
    (1..=latest).rev().find(|&attempt| {
        TraceParent::attempt_span(current, run.run_id.as_str(), attempt).parent_id
            == carried.parent_id
    })
}

fn is_sampled(context: &TraceParent) -> bool {
    u8::from_str_radix(&context.flags, 16).is_ok_and(|flags| flags & 1 == 1)
}

/// The `traceparent` header of a message, whatever the case of its name.
pub fn carried_traceparent(headers: Option<&HeaderMap>) -> Option<&str> {
    let headers = headers?;
    if let Some(value) = headers.get(TRACEPARENT) {
        return Some(value.as_str());
    }
    headers
        .iter()
        .find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(TRACEPARENT))
        .and_then(|(_, values)| values.first())
        .map(|value| value.as_str())
}

/// The lines of one intake batch that the collector records, by run and attempt.
#[derive(Default)]
pub struct LogSpans {
    spans: Vec<Pending>,
    index: HashMap<(RunId, Attempt), usize>,
}

/// One `drover.logs` span being filled.
struct Pending {
    run: RunId,
    attempt: Attempt,
    info: RunInfo,
    /// The intake sequence of its first line: part of its derived span id.
    first_intake_seq: u64,
    start: SystemTime,
    end: SystemTime,
    events: Vec<SpanEvent>,
}

impl LogSpans {
    /// Adds a stored line: `record` as stored (its `seq` is `logs_seq`, the sequence in
    /// `DROVER_LOGS`), about `run`, to be recorded under `attempt`; `intake_seq` is its
    /// sequence in the intake stream.
    pub fn add(
        &mut self,
        run: &RunInfo,
        attempt: Attempt,
        record: &LogRecord,
        logs_seq: u64,
        intake_seq: u64,
    ) {
        let at = record.timestamp.to_system_time();
        let key = (run.run_id.clone(), attempt);
        let index = *self.index.entry(key).or_insert_with(|| {
            self.spans.push(Pending {
                run: run.run_id.clone(),
                attempt,
                info: run.clone(),
                first_intake_seq: intake_seq,
                start: at,
                end: at,
                events: Vec::new(),
            });
            self.spans.len() - 1
        });
        let pending = &mut self.spans[index];
        pending.start = pending.start.min(at);
        pending.end = pending.end.max(at);
        pending.events.push(event(record, logs_seq, at));
    }

    /// Whether no line was added.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The spans, one per run and attempt, in the order their first lines arrived.
    pub fn into_spans(self) -> Vec<SpanRecord> {
        self.spans.into_iter().filter_map(Pending::finish).collect()
    }

    /// Records the spans with the process's tracer provider.
    pub fn record(self) {
        for span in self.into_spans() {
            drover_telemetry::record(span);
        }
    }
}

impl Pending {
    fn finish(self) -> Option<SpanRecord> {
        let submitted = self.info.submitted_in.as_ref()?;
        let attempt_span = TraceParent::attempt_span(submitted, self.run.as_str(), self.attempt);
        let span_id = derived_span_id(&[
            "logs",
            self.run.as_str(),
            &self.attempt.to_string(),
            &self.first_intake_seq.to_string(),
        ]);
        let mut span = SpanRecord::new(
            LOGS_SPAN,
            attempt_span.with_span(span_id),
            Some(attempt_span.parent_id),
            self.start,
            self.end,
        );
        span.tracestate = self.info.tracestate.clone();
        span.attributes = vec![
            KeyValue::new("drover.run_id", self.run.to_string()),
            KeyValue::new("drover.routine_id", self.info.routine_id.to_string()),
            KeyValue::new("drover.attempt", as_i64(self.attempt)),
            KeyValue::new("drover.log.lines", as_i64(self.events.len() as u64)),
        ];
        span.events = self.events;
        Some(span)
    }
}

fn event(record: &LogRecord, logs_seq: u64, at: SystemTime) -> SpanEvent {
    let mut attributes = vec![
        KeyValue::new("drover.log.level", record.level.as_str()),
        KeyValue::new("drover.worker_id", record.worker_id.to_string()),
        KeyValue::new("drover.log.seq", as_i64(logs_seq)),
    ];
    if !record.fields.is_empty() {
        let fields = serde_json::Value::Object(record.fields.clone()).to_string();
        attributes.push(KeyValue::new("drover.log.fields", fields));
    }
    SpanEvent {
        name: event_name(&record.message).into(),
        at,
        attributes,
    }
}

/// A message cut to [`EVENT_NAME_CHARS`] characters, marked with `…` when cut.
fn event_name(message: &str) -> String {
    match message.char_indices().nth(EVENT_NAME_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_owned(),
    }
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use drover_protocol::{LogLevel, RoutineId, Timestamp, WorkerId};
    use serde_json::json;

    use super::*;

    const SUBMITTED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn run(attempt: Attempt, traceparent: Option<&str>) -> RunInfo {
        RunInfo::new(
            RunId::parse("run-1").unwrap(),
            RoutineId::parse("images.resize").unwrap(),
            attempt,
            None,
            traceparent.map(str::to_owned),
            Some("vendor=1".to_owned()),
        )
    }

    fn attempt_span(attempt: Attempt) -> String {
        let submitted = TraceParent::parse(SUBMITTED).unwrap();
        TraceParent::attempt_span(&submitted, "run-1", attempt).to_string()
    }

    #[test]
    fn lines_without_a_trace_or_with_the_attempt_s_own_are_the_collector_s() {
        let run = run(3, Some(SUBMITTED));
        assert_eq!(recorded_under(None, &run, None), Some(3));
        assert_eq!(recorded_under(Some("00-garbage"), &run, None), Some(3));
        assert_eq!(recorded_under(Some(&attempt_span(3)), &run, None), Some(3));
        // A worker of an earlier attempt that passes its assignment's context on.
        assert_eq!(recorded_under(Some(&attempt_span(1)), &run, None), Some(1));
    }

    #[test]
    fn the_attempt_a_worker_holds_wins_over_a_stale_run_record() {
        // The run was retried on the same worker since the collector read its record.
        let stale = run(1, Some(SUBMITTED));
        assert_eq!(recorded_under(None, &stale, Some(2)), Some(2));
        assert_eq!(
            recorded_under(Some(&attempt_span(2)), &stale, Some(2)),
            Some(2)
        );
        assert_eq!(
            recorded_under(Some(&attempt_span(3)), &stale, Some(2)),
            None
        );
    }

    #[test]
    fn lines_a_worker_recorded_itself_are_left_alone() {
        let run = run(2, Some(SUBMITTED));
        let execution = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
        assert_eq!(recorded_under(Some(execution), &run, Some(2)), None);
        let elsewhere = "00-11111111111111111111111111111111-1111111111111111-01";
        assert_eq!(recorded_under(Some(elsewhere), &run, None), None);
        // A later attempt than the records know of is not this collector's to guess.
        assert_eq!(recorded_under(Some(&attempt_span(3)), &run, None), None);
    }

    #[test]
    fn runs_without_a_sampled_trace_or_an_attempt_get_nothing() {
        assert_eq!(recorded_under(None, &run(1, None), None), None);
        assert_eq!(
            recorded_under(None, &run(1, Some("not a traceparent")), None),
            None
        );
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            recorded_under(None, &run(1, Some(unsampled)), Some(1)),
            None
        );
        assert_eq!(recorded_under(None, &run(0, Some(SUBMITTED)), None), None);
    }

    fn line(message: &str, worker: &str, at_ms: i64, fields: serde_json::Value) -> LogRecord {
        LogRecord {
            seq: 0,
            worker_id: WorkerId::parse(worker).unwrap(),
            run_id: Some(RunId::parse("run-1").unwrap()),
            routine_id: None,
            attempt: None,
            trace_id: None,
            level: LogLevel::Warn,
            message: message.to_owned(),
            fields: fields.as_object().cloned().unwrap_or_default(),
            timestamp: Timestamp::from_millis(at_ms),
            received_at: Timestamp::from_millis(at_ms),
        }
    }

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn one_span_per_attempt_under_its_span_from_first_to_last_line() {
        let current = run(2, Some(SUBMITTED));
        let mut spans = LogSpans::default();
        assert!(spans.is_empty());
        spans.add(&current, 2, &line("b", "w2", 2_000, json!({})), 11, 101);
        spans.add(&current, 1, &line("old", "w1", 1_500, json!({})), 12, 102);
        spans.add(
            &current,
            2,
            &line("a", "w2", 1_000, json!({"bytes": 1})),
            13,
            103,
        );
        let spans = spans.into_spans();
        let [second, first] = spans.as_slice() else {
            panic!("two spans, got {spans:?}")
        };
        let parent = TraceParent::parse(&attempt_span(2)).unwrap();
        assert_eq!(second.name, LOGS_SPAN);
        assert_eq!(second.context.trace_id, parent.trace_id);
        assert_eq!(second.context.flags, "01");
        assert_eq!(second.parent.as_deref(), Some(parent.parent_id.as_str()));
        assert_ne!(second.context.parent_id, parent.parent_id);
        assert_eq!(second.tracestate.as_deref(), Some("vendor=1"));
        assert_eq!((second.start, second.end), (at(1_000), at(2_000)));
        assert!(second
            .attributes
            .contains(&KeyValue::new("drover.attempt", 2_i64)));
        let names: Vec<_> = second.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(names, ["b", "a"]);
        let fielded = &second.events[1];
        assert_eq!(fielded.at, at(1_000));
        for expected in [
            KeyValue::new("drover.log.level", "warn"),
            KeyValue::new("drover.worker_id", "w2"),
            KeyValue::new("drover.log.seq", 13_i64),
            KeyValue::new("drover.log.fields", r#"{"bytes":1}"#),
        ] {
            assert!(fielded.attributes.contains(&expected), "{expected:?}");
        }
        assert!(!second.events[0]
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "drover.log.fields"));
        let parent = TraceParent::parse(&attempt_span(1)).unwrap();
        assert_eq!(first.parent.as_deref(), Some(parent.parent_id.as_str()));
        assert_ne!(first.context.parent_id, second.context.parent_id);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(event_name("short"), "short");
        let long = "é".repeat(EVENT_NAME_CHARS + 10);
        let name = event_name(&long);
        assert_eq!(name.chars().count(), EVENT_NAME_CHARS + 1);
        assert!(name.ends_with('…'));
    }

    #[test]
    fn headers_are_found_whatever_their_case() {
        let mut headers = HeaderMap::new();
        headers.insert("Traceparent", SUBMITTED);
        assert_eq!(carried_traceparent(Some(&headers)), Some(SUBMITTED));
        let mut exact = HeaderMap::new();
        exact.insert(TRACEPARENT, SUBMITTED);
        assert_eq!(carried_traceparent(Some(&exact)), Some(SUBMITTED));
        assert_eq!(carried_traceparent(Some(&HeaderMap::new())), None);
        assert_eq!(carried_traceparent(None), None);
    }
}
