//! Export from inside a tokio runtime, shut down the way services do (`spawn_blocking`):
//! the blocking OTLP client must neither panic nor hang there.
#![allow(clippy::unwrap_used)]

mod common;

use common::{clear_otel_env, Sink};
use tracing::Instrument;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_from_an_async_service() {
    let sink = Sink::start();
    clear_otel_env();
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        format!("http://{}/custom/traces", sink.addr),
    );

    let guard = drover_telemetry::init("drover-async-test");
    assert!(guard.is_active());
    async {
        tracing::info!("work inside the span");
    }
    .instrument(tracing::info_span!("async_span"))
    .await;
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap();

    let requests = sink.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "POST" && r.path == "/custom/traces" && !r.body.is_empty()),
        "{requests:?}"
    );
}
