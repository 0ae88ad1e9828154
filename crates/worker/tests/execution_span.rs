//! The execution span as exported: `drover.execute` under the assignment's context, every
//! line about the run an event on it (the routine's and the SDK's own), and the `v1.log`
//! messages of those lines carrying its `traceparent`.
//!
//! This binary exports: it sets `OTEL_EXPORTER_OTLP_ENDPOINT` before anything reads it
//! and collects the spans with an in-memory exporter (nothing is sent anywhere).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use async_nats::{Client, HeaderMap};
use common::{stack, start, PATIENCE};
use drover_integration_tests::runs::{spec, wait_status};
use drover_integration_tests::{envelope, raw_call, raw_call_with_headers};
use drover_protocol::subject::keys;
use drover_protocol::trace::{TraceParent, TRACEPARENT};
use drover_protocol::{decode_reply, encode, Accepted, RunId, RunStatus};
use drover_testkit::wait_for;
use drover_worker::{Context, LogLevel, RoutineError, Worker};
use futures::StreamExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value as OtelValue};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{json, Value};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The spans this process has ended.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    &EXPORTER
        .get_or_init(|| {
            std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let _ = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("worker-tests")))
                .with(Worker::log_layer())
                .try_init();
            (exporter, provider)
        })
        .0
}

/// `v1.log` messages with their `traceparent`, as they went over NATS.
type Lines = Arc<Mutex<Vec<(Value, Option<String>)>>>;

async fn record_lines(client: &Client, worker: &str) -> Lines {
    let mut subscriber = client.subscribe(format!("v1.log.{worker}")).await.unwrap();
    client.flush().await.unwrap();
    let lines = Lines::default();
    let sink = Arc::clone(&lines);
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            let body: Value = serde_json::from_slice(&message.payload).unwrap();
            let traceparent = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(TRACEPARENT))
                .map(|value| value.as_str().to_owned());
            sink.lock()
                .unwrap()
                .push((body["payload"].clone(), traceparent));
        }
    });
    lines
}

/// Submits `routine` under a trace of the test's own.
async fn submit_traced(client: &Client, routine: &str) -> RunId {
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, TraceParent::new_root().to_string().as_str());
    let reply =
        raw_call_with_headers(client, keys::REQUEST_START, headers, encode(&spec(routine))).await;
    decode_reply::<Accepted>(&reply).unwrap().unwrap().run_id
}

/// Waits for the ended execution span of `run`.
async fn execution_span(run: &RunId) -> SpanData {
    wait_for(
        &format!("the execution span of {run}"),
        PATIENCE,
        || async {
            exporter()
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .find(|span| {
                    span.name == "drover.execute"
                        && span
                            .attributes
                            .contains(&KeyValue::new("drover.run_id", run.to_string()))
                })
        },
    )
    .await
    .unwrap()
}

fn event_names(span: &SpanData) -> Vec<String> {
    span.events
        .iter()
        .map(|event| event.name.to_string())
        .collect()
}

fn own_traceparent(span: &SpanData) -> TraceParent {
    TraceParent {
        trace_id: span.span_context.trace_id().to_string(),
        parent_id: span.span_context.span_id().to_string(),
        flags: "01".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routine_s_lines_are_events_on_its_execution_span_and_say_so_on_v1_log() {
    exporter();
    let stack = stack().await;
    let client = stack.client().await;
    let lines = record_lines(&client, "span-logger").await;
    let mut assignments = client
        .subscribe("v1.worker.span-logger.routine.request_start")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let worker = start(
        &stack,
        "span-logger",
        Worker::builder("span-logger").routine(
            "spans.chatty",
            |ctx: Context, _params: Value| async move {
                ctx.log(LogLevel::Info, "plain line");
                ctx.log_with(LogLevel::Warn, "line with fields", json!({"bytes": 48213}));
                tracing::info!(width = 640, "from tracing");
                Ok(Value::Null)
            },
        ),
    )
    .await;

    let run = submit_traced(&client, "spans.chatty").await;
    wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    let assignment = tokio::time::timeout(PATIENCE, assignments.next())
        .await
        .unwrap()
        .unwrap();
    let assigned = assignment.headers.unwrap();
    let assigned = TraceParent::parse(assigned.get(TRACEPARENT).unwrap().as_str()).unwrap();

    let span = execution_span(&run).await;
    // A child of the context its assignment carried, in the run's trace.
    assert_eq!(span.span_context.trace_id().to_string(), assigned.trace_id);
    assert_eq!(span.parent_span_id.to_string(), assigned.parent_id);
    for expected in [
        KeyValue::new("drover.routine_id", "spans.chatty"),
        KeyValue::new("drover.attempt", 1_i64),
        KeyValue::new("drover.worker_id", "span-logger"),
    ] {
        assert!(span.attributes.contains(&expected), "{:?}", span.attributes);
    }
    let names = event_names(&span);
    for line in ["plain line", "line with fields", "from tracing"] {
        assert!(names.iter().any(|name| name == line), "{line}: {names:?}");
    }
    let fielded = span
        .events
        .iter()
        .find(|event| event.name == "line with fields")
        .unwrap();
    assert!(fielded
        .attributes
        .contains(&KeyValue::new("bytes", OtelValue::I64(48213))));
    assert!(fielded.attributes.contains(&KeyValue::new("level", "WARN")));

    // Each line's message names the span it is recorded on, so the collector leaves it.
    let own = own_traceparent(&span).to_string();
    let lines = wait_for("three log lines", PATIENCE, || async {
        let lines = lines.lock().unwrap().clone();
        (lines.len() >= 3).then_some(lines)
    })
    .await
    .unwrap();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for (line, traceparent) in &lines {
        assert_eq!(line["runID"], json!(run));
        assert_eq!(traceparent.as_deref(), Some(own.as_str()), "{line}");
    }
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_and_a_cancellation_are_events_on_the_execution_span() {
    exporter();
    let stack = stack().await;
    let client = stack.client().await;
    let worker = start(
        &stack,
        "span-notes",
        Worker::builder("span-notes")
            .capacity(2)
            .routine("spans.panics", |_ctx: Context, _params: Value| async move {
                if true {
                    panic!("the routine gave up");
                }
                Ok::<_, RoutineError>(Value::Null)
            })
            .routine("spans.waits", |ctx: Context, _params: Value| async move {
                ctx.cancelled().await;
                ctx.log(LogLevel::Info, "stopping as asked");
                Ok(Value::Null)
            }),
    )
    .await;

    let panicked = submit_traced(&client, "spans.panics").await;
    wait_status(&client, &panicked, RunStatus::Failed, PATIENCE).await;
    let span = execution_span(&panicked).await;
    let names = event_names(&span);
    assert!(
        names.contains(&"routine handler panicked".to_owned()),
        "{names:?}"
    );

    let waiting = submit_traced(&client, "spans.waits").await;
    wait_status(&client, &waiting, RunStatus::Running, PATIENCE).await;
    raw_call(
        &client,
        keys::RUN_CANCEL,
        envelope(
            keys::RUN_CANCEL,
            json!({"runID": waiting, "reason": "the test is done"}),
        ),
    )
    .await;
    wait_status(&client, &waiting, RunStatus::Cancelled, PATIENCE).await;
    let span = execution_span(&waiting).await;
    let cancelled = span
        .events
        .iter()
        .find(|event| event.name.starts_with("attempt cancelled"))
        .unwrap_or_else(|| panic!("no cancellation in {:?}", event_names(&span)));
    assert!(
        cancelled
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "reason"
                && kv.value.as_str().contains("the test is done")),
        "{:?}",
        cancelled.attributes
    );
    // What the routine logs once cancelled is on the span too.
    let names = event_names(&span);
    assert!(names.contains(&"stopping as asked".to_owned()), "{names:?}");
    worker.stop().await.unwrap();
}
