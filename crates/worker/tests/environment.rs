//! Handlers run through `testing::RoutineEnvironment`: no NATS, no Drover.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use drover_protocol::RunId;
use drover_worker::testing::{failed_child, AttemptOutcome, ChildCall, RoutineEnvironment};
use drover_worker::{
    ChildError, Context, LogLevel, RoutineError, CHILD_FAILED_TYPE, INVALID_PARAMS_TYPE, PANIC_TYPE,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tracing_subscriber::layer::SubscriberExt;

/// Resizes `params.width`, with a thumbnail from a child run, logging as it goes.
async fn resize(ctx: Context, params: Value) -> Result<Value, RoutineError> {
    let width = params["width"]
        .as_u64()
        .ok_or_else(|| RoutineError::fatal("width is required").with_type("BadParams"))?;
    ctx.log(LogLevel::Info, format!("resizing to {width}px"));
    ctx.log_with(LogLevel::Debug, "sizes", json!({"from": 1280, "to": width}));
    let thumbnail = ctx
        .run_child("images.thumbnail", json!({"width": 64}), "thumb-1")
        .await?;
    Ok(json!({"width": width, "thumbnail": thumbnail}))
}

#[tokio::test]
async fn a_handler_sees_its_attempt_and_succeeds() {
    let run = RunId::generate();
    let parent = RunId::generate();
    let env = RoutineEnvironment::new()
        .routine_id("images.identity")
        .worker_id("unit-1")
        .run_id(run.to_string())
        .parent_run_id(parent.to_string())
        .attempt(3)
        .env("REGION", "eu")
        .max_exec_time(std::time::Duration::from_secs(2))
        .params(json!({"x": 1}));
    assert_eq!(env.current_run_id(), &run);
    let report = env
        .run(|ctx: Context, params: Value| async move {
            Ok(json!({
                "params": params,
                "run": ctx.run_id(),
                "parent": ctx.parent_run_id(),
                "attempt": ctx.attempt(),
                "routine": ctx.routine_id(),
                "worker": ctx.worker_id(),
                "region": ctx.env()["REGION"],
                "maxExec": ctx.max_exec_time_ms(),
                "cancelled": ctx.is_cancelled(),
            }))
        })
        .await;
    assert_eq!(
        report.outcome,
        AttemptOutcome::Succeeded(json!({
            "params": {"x": 1},
            "run": run,
            "parent": parent,
            "attempt": 3,
            "routine": "images.identity",
            "worker": "unit-1",
            "region": "eu",
            "maxExec": 2000,
            "cancelled": false,
        }))
    );
    assert!(report.logs.is_empty());
    assert!(report.children.is_empty());
}

#[tokio::test]
async fn failures_are_reported_as_the_worker_reports_them() {
    let report = RoutineEnvironment::new()
        .params(json!({}))
        .run(resize)
        .await;
    let error = report.outcome.error().expect("the attempt failed");
    assert_eq!(error.message, "width is required");
    assert_eq!(error.kind.as_deref(), Some("BadParams"));
    assert_eq!(error.retryable, Some(false));
    assert!(report.outcome.result().is_none());

    let panicked = RoutineEnvironment::new()
        .run(|_ctx: Context, _params: Value| async move {
            if true {
                panic!("lost my marbles");
            }
            Ok(Value::Null)
        })
        .await;
    let error = panicked.outcome.error().expect("a panic fails the attempt");
    assert_eq!(error.kind.as_deref(), Some(PANIC_TYPE));
    assert!(
        error.message.contains("lost my marbles"),
        "{}",
        error.message
    );
}

#[derive(Debug, Deserialize)]
struct Sum {
    a: i64,
    b: i64,
}

#[derive(Debug, Serialize)]
struct Total {
    total: i64,
}

#[tokio::test]
async fn typed_handlers_convert_as_on_a_worker() {
    async fn add(_ctx: Context, sum: Sum) -> Result<Total, RoutineError> {
        Ok(Total {
            total: sum.a + sum.b,
        })
    }
    let report = RoutineEnvironment::new()
        .params(json!({"a": 2, "b": 40}))
        .run_typed(add)
        .await;
    assert_eq!(
        report.outcome,
        AttemptOutcome::Succeeded(json!({"total": 42}))
    );

    let bad = RoutineEnvironment::new()
        .params(json!({"a": "two"}))
        .run_typed(add)
        .await;
    let error = bad.outcome.error().expect("bad params fail the attempt");
    assert_eq!(error.kind.as_deref(), Some(INVALID_PARAMS_TYPE));
    assert_eq!(error.retryable, Some(false));
}

#[tokio::test]
async fn log_lines_are_captured_in_order() {
    let report = RoutineEnvironment::new()
        .params(json!({"width": 320}))
        .answer_child("images.thumbnail", Ok(json!("t.png")))
        .run(resize)
        .await;
    let lines: Vec<(LogLevel, &str)> = report
        .logs
        .iter()
        .map(|line| (line.level, line.message.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (LogLevel::Info, "resizing to 320px"),
            (LogLevel::Debug, "sizes")
        ]
    );
    assert!(report.logs[0].fields.is_empty());
    assert_eq!(report.logs[1].fields["to"], 320);
}

#[tokio::test(flavor = "current_thread")]
async fn tracing_events_are_captured_with_the_log_layer() {
    let subscriber = tracing_subscriber::registry().with(drover_worker::LogLayer::new());
    let _default = tracing::subscriber::set_default(subscriber);
    let report = RoutineEnvironment::new()
        .run(|_ctx: Context, _params: Value| async move {
            tracing::warn!(bytes = 7, "through tracing");
            Ok(Value::Null)
        })
        .await;
    assert_eq!(report.logs.len(), 1, "{:?}", report.logs);
    assert_eq!(report.logs[0].level, LogLevel::Warn);
    assert_eq!(report.logs[0].message, "through tracing");
    assert_eq!(report.logs[0].fields["bytes"], 7);
}

#[tokio::test]
async fn child_requests_are_answered_and_recorded() {
    let env = RoutineEnvironment::new()
        .params(json!({"width": 640}))
        .answer_child("images.thumbnail", Ok(json!("thumb.png")));
    let run = env.current_run_id().clone();
    let report = env.run(resize).await;
    assert_eq!(
        report.outcome,
        AttemptOutcome::Succeeded(json!({"width": 640, "thumbnail": "thumb.png"}))
    );
    let call = &report.children[0];
    assert_eq!(call.routine, "images.thumbnail");
    assert_eq!(call.local_id, "thumb-1");
    assert_eq!(call.params, json!({"width": 64}));
    assert_eq!(call.spec.parent_run_id, Some(run));
}

#[tokio::test]
async fn a_closure_answers_children_and_failures_pass_through() {
    let asked = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&asked);
    let report = RoutineEnvironment::new()
        .on_child(move |call: ChildCall| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match call.params["n"].as_i64() {
                    Some(n) if n >= 0 => Ok(json!(n * 2)),
                    _ => Err(failed_child("Negative", "no negatives")),
                }
            }
        })
        .run(|ctx: Context, _params: Value| async move {
            let doubled = ctx.child("math.double").params(json!({"n": 21})).await?;
            let refused = ctx.child("math.double").params(json!({"n": -1})).await;
            assert!(
                matches!(refused, Err(ChildError::Failed { .. })),
                "{refused:?}"
            );
            refused?;
            Ok(doubled)
        })
        .await;
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    let locals: Vec<&str> = report
        .children
        .iter()
        .map(|call| call.local_id.as_str())
        .collect();
    assert_eq!(locals, ["math.double#1", "math.double#2"]);
    let error = report
        .outcome
        .error()
        .expect("the failed child fails the parent");
    assert_eq!(error.kind.as_deref(), Some(CHILD_FAILED_TYPE));
    assert_eq!(error.retryable, Some(false));
    assert!(error.message.contains("no negatives"), "{}", error.message);
}

#[tokio::test]
async fn an_unanswered_child_fails_the_attempt_loudly() {
    let report = RoutineEnvironment::new()
        .params(json!({"width": 640}))
        .run(resize)
        .await;
    let error = report.outcome.error().expect("no answer, no success");
    assert_eq!(error.kind.as_deref(), Some(PANIC_TYPE));
    assert!(
        error.message.contains("images.thumbnail"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_cancelled_attempt_reports_nothing() {
    let env = RoutineEnvironment::new();
    let canceller = env.canceller();
    let waiting = Arc::new(Notify::new());
    let signal = Arc::clone(&waiting);
    let (report, ()) = tokio::join!(
        env.run(move |ctx: Context, _params: Value| {
            let signal = Arc::clone(&signal);
            async move {
                ctx.log(LogLevel::Info, "waiting");
                signal.notify_one();
                ctx.cancelled().await;
                Ok(json!({"reason": ctx.cancel_reason()}))
            }
        }),
        async {
            waiting.notified().await;
            canceller.cancel("max_exec_exceeded");
            canceller.cancel("a later reason is ignored");
        }
    );
    assert_eq!(
        report.outcome,
        AttemptOutcome::Cancelled {
            reason: "max_exec_exceeded".to_owned()
        }
    );
    assert_eq!(report.logs[0].message, "waiting");
}

#[tokio::test]
async fn cancelling_ends_a_pending_child_request() {
    let requested = Arc::new(Notify::new());
    let signal = Arc::clone(&requested);
    let env = RoutineEnvironment::new().on_child(move |_call| {
        signal.notify_one();
        std::future::pending()
    });
    let canceller = env.canceller();
    let token = canceller.token();
    let (report, ()) = tokio::join!(
        env.run(|ctx: Context, _params: Value| async move {
            let child = ctx.run_child("slow.thing", Value::Null, "slow-1").await;
            assert_eq!(child, Err(ChildError::Cancelled));
            Ok(Value::Null)
        }),
        async {
            requested.notified().await;
            canceller.cancel("requested");
        }
    );
    assert!(token.is_cancelled());
    assert_eq!(
        report.outcome,
        AttemptOutcome::Cancelled {
            reason: "requested".to_owned()
        }
    );
    assert_eq!(report.children.len(), 1);
}
