//! With an OTLP endpoint set, spans reach the collector once the guard shuts down.
#![allow(clippy::unwrap_used)]

mod common;

use common::{clear_otel_env, Sink};

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn spans_are_exported_after_shutdown() {
    let sink = Sink::start();
    clear_otel_env();
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://{}", sink.addr),
    );
    std::env::set_var("OTEL_SERVICE_NAME", "renamed-by-env");
    std::env::set_var(
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment=drover-test",
    );

    let guard = drover_telemetry::init("drover-test");
    assert!(guard.is_active());
    let traceparent = {
        let span = tracing::info_span!("exported_span");
        let _entered = span.enter();
        tracing::info!("inside the exported span");
        drover_telemetry::current_traceparent().expect("a valid context")
    };
    guard.shutdown();

    let requests = sink.requests();
    let exports: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/traces")
        .collect();
    assert!(!exports.is_empty(), "no export received: {requests:?}");
    let body: Vec<u8> = exports.iter().flat_map(|r| r.body.clone()).collect();
    assert!(contains(&body, "exported_span"));
    assert!(
        contains(&body, "renamed-by-env"),
        "OTEL_SERVICE_NAME not honoured"
    );
    assert!(
        contains(&body, "drover-test"),
        "OTEL_RESOURCE_ATTRIBUTES not honoured"
    );

    // The exported trace ID (raw bytes in the protobuf) is the one we propagated.
    let trace_id_hex = &traceparent[3..35];
    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id_hex[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    assert!(body.windows(16).any(|w| w == trace_id.as_slice()));
}
