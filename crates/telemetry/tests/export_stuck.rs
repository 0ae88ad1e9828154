//! A collector that accepts connections but never answers must not hold shutdown for longer
//! than the flush bound.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::clear_otel_env;

#[test]
fn shutdown_is_bounded_when_the_collector_hangs() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    clear_otel_env();
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
    std::env::set_var("OTEL_EXPORTER_OTLP_TIMEOUT", "60000");

    let guard = drover_telemetry::init("drover-stuck-test");
    tracing::info_span!("never_delivered").in_scope(|| tracing::info!("lost"));
    let started = Instant::now();
    guard.shutdown();
    let waited = started.elapsed();
    assert!(
        waited < drover_telemetry::FLUSH_TIMEOUT + Duration::from_secs(2),
        "{waited:?}"
    );
}
