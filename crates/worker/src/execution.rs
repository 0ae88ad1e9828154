//! An attempt's execution span, `drover.execute`, and the log lines recorded on it.
//!
//! The span is a child of the context the assignment carries (the attempt's span), so a
//! run's trace shows where each attempt ran. Every line about the run is an event on it:
//! `tracing` events inside the handler through the OpenTelemetry layer, and
//! [`Context::log`](crate::Context::log) lines through [`Execution::record`]. When the
//! span is exported, the `v1.log` messages of those lines carry its `traceparent`, which
//! tells the log-collector that the worker has recorded them already (protocol §1).

use std::sync::Mutex;
use std::time::SystemTime;

use async_nats::HeaderMap;
use drover_protocol::{Assignment, LogLevel, WorkerId};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{KeyValue, Value as OtelValue};
use serde_json::{Map, Value};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::log::{tag_span, LogSink, RunTag};
use crate::state::lock;

/// An attempt's execution span, shared by the attempt's task and its [`Context`](crate::Context).
pub(crate) struct Execution {
    /// The span while the attempt runs; taken out when it ends, so that a context kept
    /// beyond its handler does not hold the span open.
    span: Mutex<Option<Span>>,
    /// The trace context the attempt's `v1.log` messages carry: the span's own, when it is
    /// exported and sampled.
    headers: Option<HeaderMap>,
}

impl Execution {
    /// Opens the span of `assignment` under the context in `parent` (the assignment's
    /// headers), tagged so that `tracing` events inside it reach `logs`.
    pub(crate) fn start(
        worker_id: &WorkerId,
        assignment: &Assignment,
        logs: &LogSink,
        parent: Option<&HeaderMap>,
    ) -> (Span, Self) {
        // As i64: the OpenTelemetry layer would record a u64 as text.
        let attempt = i64::try_from(assignment.attempt).unwrap_or(i64::MAX);
        let span = tracing::info_span!(
            target: "drover_worker",
            "drover.execute",
            drover.run_id = %assignment.run_id,
            drover.routine_id = %assignment.routine_id,
            drover.attempt = attempt,
            drover.worker_id = %worker_id,
        );
        drover_telemetry::set_parent_from_headers(&span, parent);
        let headers = exported_context(&span);
        tag_span(
            &span,
            RunTag {
                run_id: assignment.run_id.clone(),
                sink: logs.clone(),
                headers: headers.clone(),
            },
        );
        let execution = Self {
            span: Mutex::new(Some(span.clone())),
            headers,
        };
        (span, execution)
    }

    /// Records a line as an event on the span, if it is still open, and returns the trace
    /// context its `v1.log` message carries (none once the attempt has ended).
    pub(crate) fn record(
        &self,
        level: LogLevel,
        message: &str,
        fields: Option<&Map<String, Value>>,
    ) -> Option<HeaderMap> {
        let span = lock(&self.span);
        let span = span.as_ref()?;
        let mut attributes = Vec::with_capacity(1 + fields.map_or(0, Map::len));
        attributes.push(KeyValue::new("level", level_name(level)));
        for (name, value) in fields.into_iter().flatten() {
            attributes.push(KeyValue::new(name.clone(), attribute(value)));
        }
        span.add_event_with_timestamp(message.to_owned(), SystemTime::now(), attributes);
        self.headers.clone()
    }

    /// The attempt has ended: later lines are neither events nor marked as recorded.
    pub(crate) fn end(&self) {
        lock(&self.span).take();
    }
}

/// The span's context as `v1.log` headers, when this process exports spans and the span
/// is sampled: only then are events recorded on it seen by anyone.
fn exported_context(span: &Span) -> Option<HeaderMap> {
    if !drover_telemetry::export_enabled_cached() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() || !span_context.is_sampled() {
        return None;
    }
    let mut headers = HeaderMap::new();
    drover_telemetry::inject_context(&context, &mut headers);
    Some(headers)
}

/// Levels as `tracing` names them on the events of the OpenTelemetry layer.
fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "TRACE",
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}

/// A field as an attribute: scalars as themselves, anything else as JSON text.
fn attribute(value: &Value) -> OtelValue {
    match value {
        Value::Bool(flag) => OtelValue::Bool(*flag),
        Value::Number(number) => match (number.as_i64(), number.as_f64()) {
            (Some(int), _) => OtelValue::I64(int),
            (None, Some(float)) => OtelValue::F64(float),
            _ => OtelValue::String(number.to_string().into()),
        },
        Value::String(text) => OtelValue::String(text.clone().into()),
        other => OtelValue::String(other.to_string().into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_become_attributes_of_their_own_type() {
        assert_eq!(attribute(&json!(true)), OtelValue::Bool(true));
        assert_eq!(attribute(&json!(48213)), OtelValue::I64(48213));
        assert_eq!(attribute(&json!(0.5)), OtelValue::F64(0.5));
        assert_eq!(attribute(&json!("png")), OtelValue::from("png"));
        assert_eq!(
            attribute(&json!({"w": [1, 2]})),
            OtelValue::from(r#"{"w":[1,2]}"#)
        );
        assert_eq!(level_name(LogLevel::Warn), "WARN");
    }
}
