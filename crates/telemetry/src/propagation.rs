//! W3C trace context in NATS headers (DESIGN §3): `traceparent` and `tracestate`, never in
//! payloads.
//!
//! These use a W3C propagator directly rather than the global one, so they work the same in
//! a process that never called `init` (an SDK embedded elsewhere, a unit test).

use std::collections::HashMap;

use async_nats::HeaderMap;
use drover_protocol::trace::{TRACEPARENT, TRACESTATE};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if let Some(value) = self.0.get(key) {
            return Some(value.as_str());
        }
        // NATS header names are case-sensitive; accept `Traceparent` from other clients.
        self.0
            .iter()
            .find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(key))
            .and_then(|(_, values)| values.first())
            .map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|(name, _)| AsRef::<str>::as_ref(name))
            .collect()
    }
}

/// Writes the context of the current `tracing` span into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    inject_context(&tracing::Span::current().context(), headers);
}

/// Writes `cx` into `headers` as `traceparent` (and `tracestate` when there is one).
///
/// Leaves `headers` unchanged when `cx` holds no valid span context.
pub fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// Reads the remote context from `headers`; an empty context when there is none or it is
/// malformed.
pub fn extract(headers: Option<&HeaderMap>) -> Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
        None => Context::new(),
    }
}

/// The remote context carried in `headers`, when there is a valid one.
pub fn extract_valid(headers: Option<&HeaderMap>) -> Option<Context> {
    let cx = extract(headers);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes the context carried in `headers` the parent of `span`, when there is one.
///
/// Call it before the span is first entered: a started span keeps its parent.
pub fn set_parent_from_headers(span: &tracing::Span, headers: Option<&HeaderMap>) {
    set_parent(span, extract(headers));
}

/// Makes the context in a `traceparent` (and optional `tracestate`) the parent of `span`.
///
/// Ignores a malformed `traceparent`. Call it before the span is first entered.
pub fn set_parent_from_traceparent(
    span: &tracing::Span,
    traceparent: &str,
    tracestate: Option<&str>,
) {
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    set_parent(span, TraceContextPropagator::new().extract(&carrier));
}

/// Makes `cx` (for example from [`extract`]) the parent of `span`, when it holds a valid
/// span context. Call it before the span is first entered.
pub fn set_parent_context(span: &tracing::Span, cx: Context) {
    set_parent(span, cx);
}

fn set_parent(span: &tracing::Span, cx: Context) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    if let Err(error) = span.set_parent(cx) {
        tracing::debug!(%error, "could not set the remote parent of a span");
    }
}

/// The current span's context as a `traceparent` value, when it has a valid one.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}
