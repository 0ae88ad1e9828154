//! Tracing and OpenTelemetry for every Drover process (DESIGN §8): one `init` that installs
//! the global subscriber, and W3C trace context carried in NATS headers.
//!
//! Export follows the standard `OTEL_*` variables. With no endpoint set nothing is exported
//! and nothing fails, yet spans still get real trace and span IDs so that context keeps
//! flowing between processes.

mod propagation;
mod record;

use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use opentelemetry::trace::SpanKind;
pub use opentelemetry::{KeyValue, Value};
pub use record::{record, record_with, GivenIds, SpanEvent, SpanRecord};

pub use propagation::{
    current_traceparent, extract, extract_valid, inject_context, inject_current,
    set_parent_context, set_parent_from_headers, set_parent_from_traceparent,
};

/// How long `TelemetryGuard::shutdown` waits for spans to be flushed.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Selects the log format: `json` writes one JSON object a line, anything else plain text.
pub const LOG_FORMAT_ENV: &str = "DROVER_LOG_FORMAT";

/// Filter for the spans handed to OpenTelemetry (default `info`), apart from `RUST_LOG`,
/// so that a quiet console does not break trace propagation.
pub const TRACE_FILTER_ENV: &str = "DROVER_TRACE_FILTER";

const QUIET_DEFAULT: &str =
    "info,async_nats=warn,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn";
const OTEL_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const OTEL_TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const OTEL_SDK_DISABLED_ENV: &str = "OTEL_SDK_DISABLED";
const OTEL_TRACES_EXPORTER_ENV: &str = "OTEL_TRACES_EXPORTER";
const OTEL_SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";
const OTEL_PROTOCOL_ENVS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];

/// Keeps the tracer provider alive; flushes and shuts it down on `shutdown` or drop.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("active", &self.provider.is_some())
            .finish()
    }
}

impl TelemetryGuard {
    /// A guard that owns nothing, as returned by a repeated `init`.
    pub fn noop() -> Self {
        Self { provider: None }
    }

    /// Whether this guard owns the process's tracer provider.
    pub fn is_active(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes pending spans and shuts the provider down, waiting at most [`FLUSH_TIMEOUT`].
    ///
    /// Blocks the calling thread; from async code call it through `spawn_blocking`.
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The blocking HTTP client must not be driven or dropped on an async runtime
        // thread, and a dead collector must not hold the process: shut down on a thread
        // of our own and stop waiting after the timeout.
        let (done_tx, done_rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("telemetry-shutdown".to_owned())
            .spawn(move || {
                let result = provider.shutdown_with_timeout(FLUSH_TIMEOUT);
                let _ = done_tx.send(result);
            });
        if spawned.is_err() {
            eprintln!("telemetry: could not spawn the shutdown thread; spans may be lost");
            return;
        }
        match done_rx.recv_timeout(FLUSH_TIMEOUT + Duration::from_millis(500)) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "telemetry shutdown reported an error"),
            Err(_) => eprintln!("telemetry: flushing spans timed out; some may be lost"),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

/// Why the OTLP exporter was not installed, reported once logging works.
enum ExportPlan {
    Off,
    On,
    Failed(String),
}

/// Installs the global `tracing` subscriber and OpenTelemetry tracer provider.
///
/// Logs go to stderr, filtered by `RUST_LOG` (default `info`); `DROVER_LOG_FORMAT=json`
/// switches to JSON lines. Spans are exported over OTLP/HTTP only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and
/// `OTEL_SDK_DISABLED` is not `true`. A second call in the same process changes nothing and
/// returns a guard that does nothing.
pub fn init(service_name: &str) -> TelemetryGuard {
    install(service_name, env_value(EnvFilter::DEFAULT_ENV), None)
}

/// Like [`init`], with the log filter given as `directives` (the `RUST_LOG` syntax)
/// instead of read from `RUST_LOG`: for a program that picks its own default without
/// changing its environment. Empty directives mean the default of [`init`].
pub fn init_with_log_filter(service_name: &str, directives: &str) -> TelemetryGuard {
    install(service_name, trimmed(directives), None)
}

/// Like [`init`], with one more layer on the same subscriber: for example the worker SDK's
/// `drover_worker::LogLayer`, which ships `tracing` events inside routines to Drover. (A
/// layer cannot be added to a global subscriber once it is installed.)
pub fn init_with_layer<L>(service_name: &str, layer: L) -> TelemetryGuard
where
    L: Layer<Registry> + Send + Sync + 'static,
{
    install(
        service_name,
        env_value(EnvFilter::DEFAULT_ENV),
        Some(layer.boxed()),
    )
}

fn install(
    service_name: &str,
    log_directives: Option<String>,
    extra: Option<Box<dyn Layer<Registry> + Send + Sync>>,
) -> TelemetryGuard {
    let (provider, plan) = build_provider(service_name);
    let tracer = provider.tracer("drover");

    let trace_filter = filter_from(env_value(TRACE_FILTER_ENV));
    let log_filter = filter_from(log_directives);
    let ansi = std::io::stderr().is_terminal();
    let json =
        std::env::var(LOG_FORMAT_ENV).is_ok_and(|format| format.eq_ignore_ascii_case("json"));

    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(trace_filter)
        .boxed();
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(log_filter)
            .boxed()
    };
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![otel_layer, fmt_layer];
    layers.extend(extra);

    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_err()
    {
        // Someone installed a subscriber first (an earlier `init`, or a test harness).
        // Dropping this provider is cheap: it may hold an exporter but has seen no span.
        drop(TelemetryGuard {
            provider: Some(provider),
        });
        return TelemetryGuard::noop();
    }

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    match plan {
        ExportPlan::On => tracing::debug!(service = service_name, "otlp span export enabled"),
        ExportPlan::Off => tracing::debug!(service = service_name, "otlp span export disabled"),
        ExportPlan::Failed(error) => {
            tracing::warn!(%error, "otlp exporter could not be built; spans are not exported")
        }
    }
    TelemetryGuard {
        provider: Some(provider),
    }
}

/// The filter of `directives`; without any, `info` with the NATS client's and the SDK's
/// own chatter held to warnings (the kit logs connection events itself).
fn filter_from(directives: Option<String>) -> EnvFilter {
    match directives {
        Some(directives) => EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .parse_lossy(directives),
        None => EnvFilter::new(QUIET_DEFAULT),
    }
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().as_deref().and_then(trimmed)
}

fn trimmed(value: &str) -> Option<String> {
    Some(value.trim().to_owned()).filter(|value| !value.is_empty())
}

/// Whether the environment asks for OTLP export.
pub fn export_enabled() -> bool {
    export_wanted(&env_value)
}

/// [`export_enabled`], read once per process: for hot paths that skip work when nothing
/// is exported.
pub fn export_enabled_cached() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(export_enabled)
}

fn export_wanted(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let is =
        |name: &str, expected: &str| env(name).is_some_and(|v| v.eq_ignore_ascii_case(expected));
    let endpoint = env(OTEL_ENDPOINT_ENV).is_some() || env(OTEL_TRACES_ENDPOINT_ENV).is_some();
    endpoint && !is(OTEL_SDK_DISABLED_ENV, "true") && !is(OTEL_TRACES_EXPORTER_ENV, "none")
}

fn build_provider(service_name: &str) -> (SdkTracerProvider, ExportPlan) {
    let name = env_value(OTEL_SERVICE_NAME_ENV).unwrap_or_else(|| service_name.to_owned());
    // The default builder runs the SDK's detectors (OTEL_RESOURCE_ATTRIBUTES among them);
    // the name set afterwards wins over a `service.name` given there.
    let resource = Resource::builder().with_service_name(name).build();
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_id_generator(GivenIds::default());

    let plan = if export_enabled() {
        let protocol = OTEL_PROTOCOL_ENVS.iter().find_map(|name| env_value(name));
        match protocol.as_deref() {
            Some(other) if other != "http/protobuf" => ExportPlan::Failed(format!(
                "OTLP protocol {other:?} is not supported; use http/protobuf"
            )),
            _ => match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
            {
                Ok(exporter) => {
                    builder = builder.with_batch_exporter(exporter);
                    ExportPlan::On
                }
                Err(error) => ExportPlan::Failed(error.to_string()),
            },
        }
    } else {
        ExportPlan::Off
    };
    (builder.build(), plan)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use async_nats::HeaderMap;
    use drover_protocol::trace::{TraceParent, TRACEPARENT, TRACESTATE};
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::*;

    #[test]
    fn given_directives_replace_the_default_and_blank_ones_keep_it() {
        let quiet = filter_from(trimmed(" error,async_nats=off "));
        assert_eq!(quiet.max_level_hint(), Some(LevelFilter::ERROR));
        let default = filter_from(trimmed("  "));
        assert_eq!(default.max_level_hint(), Some(LevelFilter::INFO));
    }

    fn decide(vars: &[(&str, &str)]) -> bool {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        export_wanted(&|name| vars.get(name).cloned().filter(|v| !v.is_empty()))
    }

    #[test]
    fn export_needs_an_endpoint_and_no_veto() {
        assert!(!decide(&[]));
        assert!(decide(&[(OTEL_ENDPOINT_ENV, "http://collector:4318")]));
        assert!(decide(&[(
            OTEL_TRACES_ENDPOINT_ENV,
            "http://c:4318/v1/traces"
        )]));
        assert!(!decide(&[
            (OTEL_ENDPOINT_ENV, "http://c:4318"),
            (OTEL_SDK_DISABLED_ENV, "TRUE")
        ]));
        assert!(decide(&[
            (OTEL_ENDPOINT_ENV, "http://c:4318"),
            (OTEL_SDK_DISABLED_ENV, "false")
        ]));
        assert!(!decide(&[
            (OTEL_ENDPOINT_ENV, "http://c:4318"),
            (OTEL_TRACES_EXPORTER_ENV, "none")
        ]));
    }

    /// The process-wide subscriber, kept alive for every test of this binary.
    fn setup() {
        static GUARD: std::sync::OnceLock<TelemetryGuard> = std::sync::OnceLock::new();
        GUARD.get_or_init(|| init("telemetry-test"));
    }

    fn trace_id_of(span: &tracing::Span) -> String {
        span.context().span().span_context().trace_id().to_string()
    }

    #[test]
    fn init_twice_returns_a_noop_guard() {
        setup();
        let again = init("telemetry-test");
        assert!(!again.is_active());
        again.shutdown();
    }

    #[test]
    fn inject_then_extract_keeps_the_trace() {
        setup();
        let span = tracing::info_span!("outgoing");
        let _entered = span.enter();
        let mut headers = HeaderMap::new();
        inject_current(&mut headers);
        let traceparent = headers.get(TRACEPARENT).expect("traceparent injected");
        let parsed = TraceParent::parse(traceparent.as_str()).expect("valid traceparent");
        assert_eq!(parsed.trace_id, trace_id_of(&span));

        let cx = extract(Some(&headers));
        assert!(cx.span().span_context().is_remote());
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            parsed.trace_id
        );
    }

    #[test]
    fn span_parented_from_headers_joins_the_trace() {
        setup();
        let root = TraceParent::new_root();
        let mut headers = HeaderMap::new();
        headers.insert("Traceparent", root.to_string().as_str());
        headers.insert(TRACESTATE, "vendor=value");

        let span = tracing::info_span!("incoming");
        set_parent_from_headers(&span, Some(&headers));
        assert_eq!(trace_id_of(&span), root.trace_id);

        let mut out = HeaderMap::new();
        span.in_scope(|| inject_current(&mut out));
        assert_eq!(
            out.get(TRACESTATE).map(|v| v.as_str()),
            Some("vendor=value")
        );
    }

    #[test]
    fn span_parented_from_a_traceparent_has_its_trace_id() {
        setup();
        let root = TraceParent::new_root();
        let span = tracing::info_span!("child");
        set_parent_from_traceparent(&span, &root.to_string(), None);
        let current = span.in_scope(current_traceparent).expect("a valid context");
        let current = TraceParent::parse(&current).expect("valid traceparent");
        assert_eq!(current.trace_id, root.trace_id);
        assert_ne!(
            current.parent_id, root.parent_id,
            "the child has its own span id"
        );
    }

    #[test]
    fn missing_or_bad_context_is_ignored() {
        setup();
        assert!(!extract(None).span().span_context().is_valid());
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, "00-garbage");
        assert!(!extract(Some(&headers)).span().span_context().is_valid());

        let span = tracing::info_span!("fresh_root");
        set_parent_from_traceparent(&span, "not a traceparent", None);
        set_parent_from_headers(&span, None);
        // Still a root of its own, with valid IDs.
        assert!(span.context().span().span_context().is_valid());

        let mut untouched = HeaderMap::new();
        inject_context(&opentelemetry::Context::new(), &mut untouched);
        assert!(untouched.is_empty());
    }
}
