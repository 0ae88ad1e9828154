//! Spans recorded after the fact, with the ids and times they are given.
//!
//! Some spans outlive the process that begins them: a run's span and its attempts' spans
//! begin on one scheduler and may end on another after a leader change; a worker's loss is
//! decided by the heartbeat-monitor under an attempt the scheduler opened. Such a span is
//! written once, when it ends, with its start taken from a stored record and its span id
//! derived from what it is about (`drover_protocol::trace::TraceParent::run_span`), so that
//! its children, sent out earlier, already name it as their parent.

use std::borrow::Cow;
use std::cell::Cell;
use std::time::SystemTime;

use drover_protocol::trace::TraceParent;
use opentelemetry::trace::{
    Event, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags,
    TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

/// A span to record: everything about it is given.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Its name, e.g. `drover.attempt`.
    pub name: Cow<'static, str>,
    /// Its own trace id and span id, and the trace flags (a span that is not sampled is
    /// not recorded).
    pub context: TraceParent,
    /// Its parent's span id in the same trace; `None` for a root.
    pub parent: Option<String>,
    /// The W3C `tracestate` carried along.
    pub tracestate: Option<String>,
    /// Its kind.
    pub kind: SpanKind,
    /// When it began.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes.
    pub attributes: Vec<KeyValue>,
    /// Its events, in order.
    pub events: Vec<SpanEvent>,
    /// Set for a span that ended in error: the description.
    pub error: Option<String>,
}

/// An event on a [`SpanRecord`].
#[derive(Debug, Clone)]
pub struct SpanEvent {
    /// What happened.
    pub name: Cow<'static, str>,
    /// When.
    pub at: SystemTime,
    /// Its attributes.
    pub attributes: Vec<KeyValue>,
}

impl SpanRecord {
    /// An internal span `name` with the context `context`, under `parent`, from `start` to
    /// `end`, with nothing else yet.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        context: TraceParent,
        parent: Option<String>,
        start: SystemTime,
        end: SystemTime,
    ) -> Self {
        Self {
            name: name.into(),
            context,
            parent,
            tracestate: None,
            kind: SpanKind::Internal,
            start,
            end: end.max(start),
            attributes: Vec::new(),
            events: Vec::new(),
            error: None,
        }
    }
}

/// Records `span` with the process's tracer provider, when spans are exported at all
/// ([`crate::export_enabled`]); otherwise does nothing, at the cost of one check.
pub fn record(span: SpanRecord) {
    if !crate::export_enabled_cached() {
        return;
    }
    record_with(&opentelemetry::global::tracer("drover"), span);
}

/// Records `span` with `tracer`, whose provider must use [`GivenIds`] for the span to keep
/// its ids (the provider [`crate::init`] installs does).
pub fn record_with<T: opentelemetry::trace::Tracer>(tracer: &T, span: SpanRecord) {
    let (Some(trace_id), Some(span_id)) = (
        hex_id::<16>(&span.context.trace_id).map(TraceId::from_bytes),
        hex_id::<8>(&span.context.parent_id).map(SpanId::from_bytes),
    ) else {
        return;
    };
    let flags = u8::from_str_radix(&span.context.flags, 16)
        .map(TraceFlags::new)
        .unwrap_or(TraceFlags::SAMPLED);
    let state = span
        .tracestate
        .as_deref()
        .and_then(|state| state.parse::<TraceState>().ok())
        .unwrap_or_default();
    let parent = match span.parent.as_deref().and_then(hex_id::<8>) {
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            SpanId::from_bytes(parent),
            flags,
            true,
            state,
        )),
        None if flags.is_sampled() => Context::new(),
        // A root the sender asked not to sample: nothing to record.
        None => return,
    };
    let events = span
        .events
        .into_iter()
        .map(|event| Event::new(event.name, event.at, event.attributes, 0))
        .collect();
    let builder = SpanBuilder::from_name(span.name)
        .with_kind(span.kind)
        .with_start_time(span.start)
        .with_attributes(span.attributes)
        .with_events(events);
    GIVEN.with(|given| given.set(Some((trace_id, span_id))));
    let mut built = tracer.build_with_context(builder, &parent);
    GIVEN.with(|given| given.set(None));
    if let Some(description) = span.error {
        opentelemetry::trace::Span::set_status(&mut built, Status::error(description));
    }
    opentelemetry::trace::Span::end_with_timestamp(&mut built, span.end);
}

fn hex_id<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut bytes = [0u8; N];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(bytes).filter(|bytes| bytes.iter().any(|&b| b != 0))
}

thread_local! {
    /// The ids the next span built on this thread takes (see [`record_with`]).
    static GIVEN: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// The provider's id generator: random ids, except for the span [`record_with`] is
/// building on this thread, which gets the ids it was given. (The SDK's span builder
/// does not take a span id of its own.)
#[derive(Debug, Default)]
pub struct GivenIds(RandomIdGenerator);

impl IdGenerator for GivenIds {
    fn new_trace_id(&self) -> TraceId {
        match GIVEN.with(Cell::get) {
            Some((trace_id, _)) => trace_id,
            None => self.0.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match GIVEN.with(Cell::get) {
            Some((_, span_id)) => span_id,
            None => self.0.new_span_id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    use super::*;

    fn provider() -> (SdkTracerProvider, InMemorySpanExporter) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_id_generator(GivenIds::default())
            .with_simple_exporter(exporter.clone())
            .build();
        (provider, exporter)
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn context(span: &str, flags: &str) -> TraceParent {
        TraceParent {
            trace_id: TRACE.to_owned(),
            parent_id: span.to_owned(),
            flags: flags.to_owned(),
        }
    }

    #[test]
    fn a_recorded_span_keeps_its_ids_times_parent_events_and_status() {
        let (provider, exporter) = provider();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut span = SpanRecord::new(
            "drover.attempt",
            context("00f067aa0ba902b7", "01"),
            Some("1111111111111111".to_owned()),
            start,
            start + Duration::from_millis(250),
        );
        span.attributes.push(KeyValue::new("drover.attempt", 2));
        span.events.push(SpanEvent {
            name: "started".into(),
            at: start + Duration::from_millis(10),
            attributes: vec![],
        });
        span.error = Some("worker lost".to_owned());
        record_with(&provider.tracer("test"), span);

        let spans = exporter.get_finished_spans().unwrap();
        let [done] = spans.as_slice() else {
            panic!("one span, got {spans:?}")
        };
        assert_eq!(done.name, "drover.attempt");
        assert_eq!(done.span_context.trace_id().to_string(), TRACE);
        assert_eq!(done.span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(done.parent_span_id.to_string(), "1111111111111111");
        assert_eq!(done.start_time, start);
        assert_eq!(done.end_time, start + Duration::from_millis(250));
        assert_eq!(done.events.events[0].name, "started");
        assert_eq!(done.status, Status::error("worker lost"));
        assert!(done
            .attributes
            .contains(&KeyValue::new("drover.attempt", 2)));

        // Spans built otherwise still get ids of their own.
        let other = opentelemetry::trace::Tracer::start(&provider.tracer("test"), "other");
        assert_ne!(
            opentelemetry::trace::Span::span_context(&other).span_id(),
            SpanId::from_bytes(hex_id::<8>("00f067aa0ba902b7").unwrap())
        );
    }

    #[test]
    fn roots_unsampled_and_malformed_spans() {
        let (provider, exporter) = provider();
        let now = SystemTime::now();
        let tracer = provider.tracer("test");
        record_with(
            &tracer,
            SpanRecord::new("root", context("00f067aa0ba902b7", "01"), None, now, now),
        );
        record_with(
            &tracer,
            SpanRecord::new(
                "unsampled",
                context("00f067aa0ba902b8", "00"),
                None,
                now,
                now,
            ),
        );
        record_with(
            &tracer,
            SpanRecord::new(
                "unsampled child",
                context("00f067aa0ba902b9", "00"),
                Some("1111111111111111".to_owned()),
                now,
                now,
            ),
        );
        record_with(
            &tracer,
            SpanRecord::new("malformed", context("not hex", "01"), None, now, now),
        );
        let names: Vec<_> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .map(|span| {
                assert_eq!(span.span_context.trace_id().to_string(), TRACE);
                span.name.into_owned()
            })
            .collect();
        assert_eq!(names, ["root"]);
    }
}
