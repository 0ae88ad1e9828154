//! Logs and traces: `ctx.log`, `tracing` events through the log layer, and the handler's
//! span under the assignment's trace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use common::{init_tracing, stack, start, PATIENCE};
use drover_integration_tests::runs::{spec, wait_status};
use drover_integration_tests::{raw_call_with_headers, Recorder};
use drover_protocol::subject::{self, keys};
use drover_protocol::trace::{TraceParent, TRACEPARENT};
use drover_protocol::{decode_reply, encode, Accepted, RunId, RunStatus, WorkerId};
use drover_testkit::wait_for;
use drover_worker::{Context, LogLevel, RoutineError, Worker};
use futures::StreamExt;
use serde_json::{json, Value};

/// This binary's spans are not exported, whatever the environment says.
fn not_exporting() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
        std::env::remove_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctx_log_and_tracing_events_reach_v1_log_with_the_run_id() {
    not_exporting();
    init_tracing();
    let stack = stack().await;
    let client = stack.client().await;
    let log_subject = subject::from_worker(keys::LOG, &WorkerId::parse("logger").unwrap());
    let logs = Recorder::start(&client, &log_subject).await;
    let mut raw_logs = client.subscribe(log_subject).await.unwrap();
    client.flush().await.unwrap();
    let worker = start(
        &stack,
        "logger",
        Worker::builder("logger").routine("chatty", |ctx: Context, _params: Value| async move {
            ctx.log(LogLevel::Info, "plain line");
            ctx.log_with(LogLevel::Warn, "line with fields", json!({"bytes": 48213}));
            tracing::info!(width = 640, format = "png", "from tracing");
            tracing::debug!("a debug event");
            Ok(Value::Null)
        }),
    )
    .await;
    tracing::info!("outside any handler: not shipped");

    let run = drover_integration_tests::runs::submit(&client, &spec("chatty")).await;
    wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    let lines = wait_for("four log lines", PATIENCE, || async {
        let lines = logs.payloads_on("v1.log.logger");
        (lines.len() >= 4).then_some(lines)
    })
    .await
    .unwrap();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["runID"], json!(run), "{line}");
        assert!(line["timestamp"].is_string());
    }
    let by_message = |text: &str| {
        lines
            .iter()
            .find(|line| line["message"] == text)
            .unwrap_or_else(|| panic!("no line {text:?} in {lines:#?}"))
    };
    assert_eq!(by_message("plain line")["level"], "info");
    let fielded = by_message("line with fields");
    assert_eq!(fielded["level"], "warn");
    assert_eq!(fielded["fields"]["bytes"], 48213);
    let traced = by_message("from tracing");
    assert_eq!(traced["level"], "info");
    assert_eq!(traced["fields"]["width"], 640);
    assert_eq!(traced["fields"]["format"], "png");
    assert_eq!(by_message("a debug event")["level"], "debug");
    // A worker whose spans are not exported leaves its lines to the log-collector.
    for _ in 0..4 {
        let message = tokio::time::timeout(PATIENCE, raw_logs.next())
            .await
            .unwrap()
            .unwrap();
        let traceparent = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(TRACEPARENT));
        assert!(traceparent.is_none(), "{:?}", message.headers);
    }
    worker.stop().await.unwrap();
}

/// The routine and the `traceparent` of its handler's span, for each handler run.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_span_continues_the_assignment_trace_and_children_follow() {
    not_exporting();
    init_tracing();
    let stack = stack().await;
    let client = stack.client().await;
    let seen: Seen = Arc::default();
    let record = |seen: &Seen, ctx: &Context| {
        let traceparent = drover_telemetry::current_traceparent();
        seen.lock()
            .unwrap()
            .push((ctx.routine_id().to_string(), traceparent));
    };
    let worker = {
        let (parent_seen, child_seen) = (Arc::clone(&seen), Arc::clone(&seen));
        start(
            &stack,
            "tracer",
            Worker::builder("tracer")
                .capacity(2)
                .routine("traced.parent", move |ctx: Context, _params: Value| {
                    let seen = Arc::clone(&parent_seen);
                    async move {
                        record(&seen, &ctx);
                        ctx.run_child("traced.child", Value::Null, "only").await?;
                        Ok::<_, RoutineError>(Value::Null)
                    }
                })
                .routine("traced.child", move |ctx: Context, _params: Value| {
                    let seen = Arc::clone(&child_seen);
                    async move {
                        record(&seen, &ctx);
                        Ok(Value::Null)
                    }
                }),
        )
        .await
    };
    let mut headers_seen = client
        .subscribe("v1.worker.tracer.routine.request_start")
        .await
        .unwrap();
    client.flush().await.unwrap();

    // Submitted under a trace of our own.
    let submitted = TraceParent::new_root();
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, submitted.to_string().as_str());
    let reply = raw_call_with_headers(
        &client,
        keys::REQUEST_START,
        headers,
        encode(&spec("traced.parent")),
    )
    .await;
    let run: RunId = decode_reply::<Accepted>(&reply).unwrap().unwrap().run_id;
    wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;

    // The assignment carried the run's trace...
    let assignment = tokio::time::timeout(PATIENCE, headers_seen.next())
        .await
        .unwrap()
        .unwrap();
    let header = assignment.headers.unwrap();
    let assigned = TraceParent::parse(header.get(TRACEPARENT).unwrap().as_str()).unwrap();
    assert_eq!(assigned.trace_id, submitted.trace_id);

    // ...and both handlers ran in spans of that trace: the child because its request
    // carried the parent's span.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (routine, traceparent) in &seen {
        let traceparent = traceparent
            .as_deref()
            .unwrap_or_else(|| panic!("{routine} ran without a span context"));
        let span = TraceParent::parse(traceparent).unwrap();
        assert_eq!(span.trace_id, submitted.trace_id, "{routine}");
        assert_ne!(
            span.parent_id, assigned.parent_id,
            "{routine} runs in a span of its own"
        );
    }
    worker.stop().await.unwrap();
}
