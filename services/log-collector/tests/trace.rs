//! Lines on the run's trace: the collector, run in-process with spans exported to memory,
//! records the lines no worker recorded itself as events of a `drover.logs` span under the
//! attempt's span, and leaves those a worker recorded.
//!
//! This binary sets `OTEL_EXPORTER_OTLP_ENDPOINT` before anything reads it, so that export
//! counts as on; the spans go to an in-memory exporter (nothing is sent anywhere).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::HeaderMap;
use drover_log_collector::trace::LOGS_SPAN;
use drover_protocol::subject::{self, keys, resources};
use drover_protocol::trace::{TRACEPARENT, TRACESTATE};
use drover_protocol::{encode, LogLevel, LogLine, RunId, RunRecord, Timestamp, WorkerId};
use drover_service_kit::{ensure_resources, Readiness, Settings};
use drover_telemetry::{GivenIds, KeyValue};
use drover_testkit::{wait_for, NatsServer};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SUBMITTED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn exporting() -> InMemorySpanExporter {
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_id_generator(GivenIds::default())
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider);
    exporter
}

fn line(message: &str, run: Option<&RunId>, ms: i64) -> LogLine {
    LogLine {
        level: LogLevel::Info,
        message: message.to_owned(),
        run_id: run.cloned(),
        fields: json!({"n": ms}).as_object().cloned(),
        timestamp: Some(Timestamp::from_millis(ms)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_no_worker_recorded_become_events_under_their_attempt() {
    let exporter = exporting();
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let settings = Settings {
        nats_url: nats.url(),
        ..Settings::default()
    };
    ensure_resources(&js, &settings).await.unwrap();

    // A run on its second attempt, accepted in a trace with a tracestate.
    let run = RunId::generate();
    let record: RunRecord = serde_json::from_value(json!({
        "runID": run, "routineID": "images.resize", "status": "RUNNING", "maxRetries": 1,
        "attempt": 2, "retries": 1, "reassignments": 0, "workerID": "w1",
        "createdAt": Timestamp::now(), "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
        "traceparent": SUBMITTED, "tracestate": "vendor=1",
    }))
    .unwrap();
    let runs = js.get_key_value(resources::RUNS_BUCKET).await.unwrap();
    runs.put(run.as_str(), serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();
    let attempt_span = record.attempt_span(2).unwrap();
    // The worker is registered: the collector takes lines of registered workers only.
    let now = Timestamp::now();
    let worker_record = json!({
        "workerID": "w1", "incarnation": 1, "status": "IDLE", "phase": "READY",
        "routines": [], "capacity": 1, "heartbeatIntervalMs": 5000, "lostAfterMs": 15000,
        "registeredAt": now, "statusChangedAt": now,
    });
    js.get_key_value(resources::WORKERS_BUCKET)
        .await
        .unwrap()
        .put("w1", serde_json::to_vec(&worker_record).unwrap().into())
        .await
        .unwrap();

    // In the intake before the collector starts, so that they are one batch.
    let worker = WorkerId::parse("w1").unwrap();
    let log_subject = subject::from_worker(keys::LOG, &worker);
    let with_traceparent = |traceparent: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, traceparent);
        headers.insert(TRACESTATE, "vendor=1");
        headers
    };
    let recorded_by_worker = attempt_span.with_span("1111111111111111".to_owned());
    let lines = [
        (
            line("no trace context", Some(&run), 1_000),
            HeaderMap::new(),
        ),
        (
            line("the attempt's own context", Some(&run), 2_000),
            with_traceparent(&attempt_span.to_string()),
        ),
        (
            line("on the worker's own span", Some(&run), 3_000),
            with_traceparent(&recorded_by_worker.to_string()),
        ),
        (line("about no run", None, 4_000), HeaderMap::new()),
    ];
    for (line, headers) in lines {
        js.publish_with_headers(log_subject.clone(), headers, encode(&line))
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let shutdown = CancellationToken::new();
    let collector = tokio::spawn(drover_log_collector::run(
        settings,
        client.clone(),
        shutdown.clone(),
        Readiness::new(),
    ));

    let spans: Vec<SpanData> =
        wait_for("the drover.logs span", Duration::from_secs(15), || async {
            let spans: Vec<SpanData> = exporter
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .filter(|span| span.name == LOGS_SPAN)
                .collect();
            (!spans.is_empty()).then_some(spans)
        })
        .await
        .unwrap();
    let [span] = spans.as_slice() else {
        panic!("one span for the batch, got {spans:#?}")
    };
    assert_eq!(
        span.span_context.trace_id().to_string(),
        attempt_span.trace_id
    );
    assert_eq!(span.parent_span_id.to_string(), attempt_span.parent_id);
    assert_eq!(span.span_context.trace_state().header(), "vendor=1");
    let at = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
    assert_eq!((span.start_time, span.end_time), (at(1_000), at(2_000)));
    for expected in [
        KeyValue::new("drover.run_id", run.to_string()),
        KeyValue::new("drover.routine_id", "images.resize"),
        KeyValue::new("drover.attempt", 2_i64),
    ] {
        assert!(span.attributes.contains(&expected), "{:?}", span.attributes);
    }
    let names: Vec<_> = span.events.iter().map(|e| e.name.to_string()).collect();
    assert_eq!(names, ["no trace context", "the attempt's own context"]);
    let first = &span.events.events[0];
    for expected in [
        KeyValue::new("drover.log.level", "info"),
        KeyValue::new("drover.worker_id", "w1"),
        KeyValue::new("drover.log.seq", 1_i64),
        KeyValue::new("drover.log.fields", r#"{"n":1000}"#),
    ] {
        assert!(
            first.attributes.contains(&expected),
            "{:?}",
            first.attributes
        );
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), collector)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
