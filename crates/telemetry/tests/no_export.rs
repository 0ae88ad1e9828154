//! Without OTLP variables nothing is exported, nothing fails, and context still propagates.
#![allow(clippy::unwrap_used)]

mod common;

use common::{clear_otel_env, Sink};

#[test]
fn nothing_is_sent_without_an_endpoint() {
    let sink = Sink::start();
    clear_otel_env();
    // A collector is listening, but nothing tells the SDK about it.
    std::env::set_var("DROVER_TEST_SINK", sink.addr.to_string());

    let guard = drover_telemetry::init("drover-test");
    assert!(guard.is_active());
    let traceparent = {
        let span = tracing::info_span!("local_span");
        let _entered = span.enter();
        drover_telemetry::current_traceparent()
    };
    assert!(
        traceparent.is_some(),
        "spans need valid IDs even without export"
    );
    guard.shutdown();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(sink.requests().is_empty());
}
