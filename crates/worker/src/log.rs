//! Log lines to Drover (`v1.log.<workerID>`): from [`Context::log`](crate::Context::log),
//! and from `tracing` events inside a handler's span through [`LogLayer`].
//!
//! Both feed one bounded queue per worker that a task drains onto NATS, so logging never
//! blocks a handler; when the queue is full (NATS has been away for long), lines are
//! dropped and counted. A line recorded on an exported execution span carries that span's
//! `traceparent` (see [`crate::execution`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::{Client, HeaderMap};
use drover_protocol::subject::keys;
use drover_protocol::{encode, LogLevel, LogLine, RunId, Timestamp, WorkerId};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// How many lines may wait for NATS before new ones are dropped.
const QUEUE_LINES: usize = 10_000;

/// A line waiting for NATS, with the trace context its message carries.
pub(crate) struct Queued {
    pub(crate) line: LogLine,
    /// `traceparent`/`tracestate` of the span the line is recorded on, when it is exported.
    pub(crate) headers: Option<HeaderMap>,
}

/// Where log lines of one worker go.
#[derive(Clone)]
pub(crate) struct LogSink {
    sender: mpsc::Sender<Queued>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// A sink and the receiver its shipper drains.
    pub(crate) fn channel() -> (Self, mpsc::Receiver<Queued>) {
        let (sender, receiver) = mpsc::channel(QUEUE_LINES);
        let sink = Self {
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (sink, receiver)
    }

    /// Queues a line about `run_id`, its message to carry `headers`; never blocks.
    pub(crate) fn send(
        &self,
        run_id: &RunId,
        level: LogLevel,
        message: String,
        fields: Option<Map<String, Value>>,
        headers: Option<HeaderMap>,
    ) {
        let line = LogLine {
            level,
            message,
            run_id: Some(run_id.clone()),
            fields: fields.filter(|fields| !fields.is_empty()),
            timestamp: Some(Timestamp::now()),
        };
        if self.sender.try_send(Queued { line, headers }).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Publishes queued lines on `v1.log.<worker>` until `stop` fires, then what is left.
pub(crate) async fn ship(
    client: Client,
    worker: WorkerId,
    sink: LogSink,
    mut lines: mpsc::Receiver<Queued>,
    stop: CancellationToken,
) {
    let subject = drover_protocol::subject::from_worker(keys::LOG, &worker);
    let mut reported = 0;
    loop {
        let queued = tokio::select! {
            queued = lines.recv() => queued,
            _ = stop.cancelled() => break,
        };
        let Some(queued) = queued else { return };
        if let Err(error) = publish(&client, &subject, queued).await {
            tracing::debug!(%error, "log line not sent");
        }
        let dropped = sink.dropped.load(Ordering::Relaxed);
        if dropped > reported {
            tracing::warn!(
                dropped,
                "log lines dropped because the queue to NATS was full"
            );
            reported = dropped;
        }
    }
    while let Ok(queued) = lines.try_recv() {
        let _ = publish(&client, &subject, queued).await;
    }
}

async fn publish(
    client: &Client,
    subject: &str,
    queued: Queued,
) -> Result<(), async_nats::PublishError> {
    let body = encode(&queued.line);
    match queued.headers {
        Some(headers) => {
            client
                .publish_with_headers(subject.to_owned(), headers, body)
                .await
        }
        None => client.publish(subject.to_owned(), body).await,
    }
}

/// Marks a handler's span: events inside it are shipped with this run's runID.
pub(crate) struct RunTag {
    pub(crate) run_id: RunId,
    pub(crate) sink: LogSink,
    /// The trace context of the span, when the events on it are exported.
    pub(crate) headers: Option<HeaderMap>,
}

/// Attaches `tag` to `span` in the `tracing-subscriber` registry, when the subscriber has one.
pub(crate) fn tag_span(span: &tracing::Span, tag: RunTag) {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let span = registry.span(id)?;
        span.extensions_mut().insert(tag);
        Some(())
    });
}

/// A `tracing` layer that ships events emitted inside a routine handler's span to Drover
/// as `v1.log` lines with that run's runID, with the event's fields.
///
/// Add it to a `tracing_subscriber::registry()`; events outside any handler are ignored.
/// The handler's span is an INFO span with target `drover_worker`: filter per layer
/// (`Layer::with_filter`) rather than globally, or at least let that span through, or
/// there is no span to find the run by.
///
/// When spans are exported, each line's message carries the handler span's `traceparent`,
/// telling the log-collector that the line is an event on that span already. An event the
/// OpenTelemetry layer filters out (`DROVER_TRACE_FILTER`, `info` by default) is then in
/// `drover logs` only, not in the trace: keep that filter as wide as the levels you ship.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogLayer {
    _private: (),
}

impl LogLayer {
    /// A layer that ships every event inside a handler's span.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        let target = event.metadata().target();
        // The SDK's own and the NATS client's events are not the routine's logs.
        if target.starts_with("drover_worker") || target.starts_with("async_nats") {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            let extensions = span.extensions();
            let Some(tag) = extensions.get::<RunTag>() else {
                continue;
            };
            let mut visitor = FieldVisitor::default();
            event.record(&mut visitor);
            let message = visitor.message.unwrap_or_default();
            tag.sink.send(
                &tag.run_id,
                level_of(event.metadata().level()),
                message,
                Some(visitor.fields),
                tag.headers.clone(),
            );
            return;
        }
    }
}

fn level_of(level: &Level) -> LogLevel {
    match *level {
        Level::TRACE => LogLevel::Trace,
        Level::DEBUG => LogLevel::Debug,
        Level::INFO => LogLevel::Info,
        Level::WARN => LogLevel::Warn,
        _ => LogLevel::Error,
    }
}

#[derive(Default)]
struct FieldVisitor {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(match value {
                Value::String(text) => text,
                other => other.to_string(),
            });
        } else if !name.starts_with("log.") {
            self.fields.insert(name.to_owned(), value);
        }
    }
}

impl Visit for FieldVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::DEFAULT_MAX_PAYLOAD_BYTES;
    use serde_json::json;

    use super::*;

    #[test]
    fn lines_carry_the_run_and_satisfy_the_schema() {
        let (sink, mut lines) = LogSink::channel();
        let run = RunId::generate();
        let fields = json!({"bytes": 48213}).as_object().cloned();
        sink.send(&run, LogLevel::Info, "resized".to_owned(), fields, None);
        sink.send(
            &run,
            LogLevel::Warn,
            "bare".to_owned(),
            Some(Map::new()),
            None,
        );
        let line = lines.try_recv().unwrap().line;
        assert_eq!(line.run_id.as_ref(), Some(&run));
        let decoded: LogLine =
            drover_protocol::decode(&encode(&line), DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
        assert_eq!(decoded.fields.unwrap()["bytes"], 48213);
        assert!(lines.try_recv().unwrap().line.fields.is_none());
    }

    #[test]
    fn a_full_queue_drops_lines_instead_of_blocking() {
        let (sink, _lines) = LogSink::channel();
        let run = RunId::generate();
        for _ in 0..QUEUE_LINES + 5 {
            sink.send(&run, LogLevel::Debug, "x".to_owned(), None, None);
        }
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 5);
    }
}
