//! Runs through the real stack: success, retries, fatal errors, panics, typed routines,
//! cancellation and `maxExecTimeMs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{stack, start, Gate, PATIENCE};
use drover_integration_tests::runs::{spec, submit, wait_status};
use drover_integration_tests::Recorder;
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    encode, CheckPulse, ErrorCode, ErrorPayload, FailureReason, RetryBackoff, RunCancel, RunRecord,
    RunStatus, WorkerId, WorkerStatus,
};
use drover_testkit::{call, wait_for};
use drover_worker::{Context, RoutineError, Worker, PANIC_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

async fn echo(ctx: Context, params: Value) -> Result<Value, RoutineError> {
    Ok(json!({
        "echo": params,
        "runID": ctx.run_id(),
        "attempt": ctx.attempt(),
        "env": ctx.env(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_run_succeeds_and_the_worker_registers_its_profile() {
    let stack = stack().await;
    let client = stack.client().await;
    let worker = start(
        &stack,
        "echoer",
        Worker::builder("echoer")
            .routine("echo", echo)
            .capacity(3)
            .label("gpu", "false")
            .name("echo worker"),
    )
    .await;

    let record = common::record(&client, "echoer").await.unwrap();
    assert_eq!(record.capacity, 3);
    assert_eq!(record.labels["gpu"], "false");
    assert_eq!(record.name.as_deref(), Some("echo worker"));
    assert_eq!(record.sdk.as_ref().unwrap().language, "rust");
    assert_eq!(record.pid, Some(u64::from(std::process::id())));
    assert_eq!(record.routines[0].as_str(), "echo");

    let mut request = spec("echo");
    request.params = json!({"text": "hi"});
    request.env.insert("MODE".into(), "test".into());
    let run = submit(&client, &request).await;
    let record = wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    let result = record.result.unwrap();
    assert_eq!(result["echo"], json!({"text": "hi"}));
    assert_eq!(result["runID"], json!(run));
    assert_eq!(result["attempt"], 1);
    assert_eq!(result["env"]["MODE"], "test");
    assert_eq!(record.worker_id, Some(WorkerId::parse("echoer").unwrap()));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_is_retried_and_a_fatal_one_is_not() {
    let stack = stack().await;
    let client = stack.client().await;
    let worker = start(
        &stack,
        "flaky",
        Worker::builder("flaky")
            .routine("flaky", |ctx: Context, _params: Value| async move {
                if ctx.attempt() < 3 {
                    return Err(RoutineError::new("not yet").with_type("Transient"));
                }
                Ok(json!({"attempt": ctx.attempt()}))
            })
            .routine("corrupt", |_ctx: Context, _params: Value| async move {
                Err::<Value, _>(RoutineError::fatal("image is corrupt").with_type("CorruptImage"))
            }),
    )
    .await;
    let backoff = RetryBackoff {
        initial_ms: 10,
        multiplier: 1.0,
        max_ms: 10,
    };

    let mut flaky = spec("flaky");
    flaky.max_retries = 3;
    flaky.retry_backoff = Some(backoff);
    let run = submit(&client, &flaky).await;
    let record = wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    assert_eq!(record.attempt, 3);
    assert_eq!(record.retries, 2);
    assert_eq!(record.result, Some(json!({"attempt": 3})));

    let mut corrupt = spec("corrupt");
    corrupt.max_retries = 3;
    corrupt.retry_backoff = Some(backoff);
    let run = submit(&client, &corrupt).await;
    let record = wait_status(&client, &run, RunStatus::Failed, PATIENCE).await;
    assert_eq!(record.attempt, 1);
    assert_eq!(record.failure_reason, Some(FailureReason::Error));
    let error = record.error.unwrap();
    assert_eq!(error.kind.as_deref(), Some("CorruptImage"));
    assert_eq!(error.retryable, Some(false));
    assert_eq!(error.message, "image is corrupt");
    worker.stop().await.unwrap();
}

#[derive(Debug, Deserialize)]
struct Resize {
    width: u32,
}

#[derive(Debug, Serialize)]
struct Resized {
    pixels: u64,
}

async fn resize(_ctx: Context, params: Resize) -> Result<Resized, RoutineError> {
    Ok(Resized {
        pixels: u64::from(params.width) * 2,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_the_attempt_and_typed_routines_convert() {
    let stack = stack().await;
    let client = stack.client().await;
    let worker = start(
        &stack,
        "mixed",
        Worker::builder("mixed")
            .capacity(2)
            .routine("explode", |_ctx: Context, _params: Value| async move {
                if std::env::var("NEVER_SET_IN_TESTS").is_err() {
                    panic!("boom");
                }
                Ok(Value::Null)
            })
            .routine_typed("resize", resize),
    )
    .await;

    let run = submit(&client, &spec("explode")).await;
    let record = wait_status(&client, &run, RunStatus::Failed, PATIENCE).await;
    let error = record.error.unwrap();
    assert_eq!(error.kind.as_deref(), Some(PANIC_TYPE));
    assert!(error.message.contains("boom"), "{}", error.message);

    // The worker survives the panic and goes on working.
    let mut typed = spec("resize");
    typed.params = json!({"width": 320});
    let run = submit(&client, &typed).await;
    let record = wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    assert_eq!(record.result, Some(json!({"pixels": 640})));

    let mut wrong = spec("resize");
    wrong.params = json!({"height": 1});
    wrong.max_retries = 2;
    let run = submit(&client, &wrong).await;
    let record = wait_status(&client, &run, RunStatus::Failed, PATIENCE).await;
    let error = record.error.unwrap();
    assert_eq!(
        error.kind.as_deref(),
        Some(drover_worker::INVALID_PARAMS_TYPE)
    );
    assert_eq!(record.attempt, 1, "invalid params are not retried");
    worker.stop().await.unwrap();
}

/// A routine that waits to be cancelled and reports the reason it saw.
fn waits_for_cancel(seen: mpsc::UnboundedSender<Option<String>>) -> drover_worker::WorkerBuilder {
    Worker::builder("patient")
        .routine("wait", move |ctx: Context, _params: Value| {
            let seen = seen.clone();
            async move {
                ctx.cancelled().await;
                let _ = seen.send(ctx.cancel_reason());
                // Returning after a cancel must not complete the run.
                Ok(json!("finished after cancel"))
            }
        })
        .routine("echo", echo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_fires_the_token_and_is_not_completed() {
    let stack = stack().await;
    let client = stack.client().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let worker = start(&stack, "patient", waits_for_cancel(seen_tx)).await;
    let completions = Recorder::start(
        &client,
        &subject::from_worker(keys::COMPLETED, &WorkerId::parse("patient").unwrap()),
    )
    .await;

    let run = submit(&client, &spec("wait")).await;
    wait_status(&client, &run, RunStatus::Running, PATIENCE).await;
    let cancelled: RunRecord = call(
        &client,
        keys::RUN_CANCEL,
        &RunCancel {
            run_id: run.clone(),
            reason: Some("no longer needed".to_owned()),
        },
    )
    .await
    .unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    let reason = tokio::time::timeout(PATIENCE, seen.recv()).await.unwrap();
    assert_eq!(reason.flatten().as_deref(), Some("no longer needed"));

    // A later run completes; completions from one connection arrive in order, so had the
    // cancelled attempt sent one, it would be recorded before this one.
    let next = submit(&client, &spec("echo")).await;
    wait_status(&client, &next, RunStatus::Succeeded, PATIENCE).await;
    let recorded = wait_for("the second completion is recorded", PATIENCE, || async {
        let payloads = completions.all();
        (!payloads.is_empty()).then_some(payloads)
    })
    .await
    .unwrap();
    let runs: Vec<&Value> = recorded
        .iter()
        .map(|(_, body)| &body["payload"]["runID"])
        .collect();
    assert_eq!(runs, [&json!(next)], "only the second run was completed");
    let record = drover_integration_tests::runs::get(&client, &run)
        .await
        .unwrap();
    assert_eq!(record.status, RunStatus::Cancelled);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_exec_time_fires_the_token() {
    let stack = stack().await;
    let client = stack.client().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let worker = start(&stack, "patient", waits_for_cancel(seen_tx)).await;

    let mut request = spec("wait");
    request.max_exec_time_ms = Some(300);
    let run = submit(&client, &request).await;
    let reason = tokio::time::timeout(PATIENCE, seen.recv()).await.unwrap();
    assert_eq!(reason.flatten().as_deref(), Some("max_exec_exceeded"));
    let record = wait_status(&client, &run, RunStatus::Failed, PATIENCE).await;
    assert_eq!(record.failure_reason, Some(FailureReason::MaxExecExceeded));
    // The slot is free again.
    common::wait_status(&client, "patient", WorkerStatus::Idle).await;
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_run_concurrently_up_to_capacity() {
    let stack = stack().await;
    let client = stack.client().await;
    let gate = Gate::default();
    let running = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let worker = {
        let (gate, running, peak) = (gate.clone(), Arc::clone(&running), Arc::clone(&peak));
        start(
            &stack,
            "wide",
            Worker::builder("wide").capacity(3).routine(
                "hold",
                move |_ctx: Context, _params: Value| {
                    let (gate, running, peak) =
                        (gate.clone(), Arc::clone(&running), Arc::clone(&peak));
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        gate.wait().await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(Value::Null)
                    }
                },
            ),
        )
        .await
    };
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(submit(&client, &spec("hold")).await);
    }
    drover_testkit::wait_until("three runs held at once", PATIENCE, || async {
        running.load(Ordering::SeqCst) == 3
    })
    .await
    .unwrap();
    common::wait_status(&client, "wide", WorkerStatus::Working).await;
    // The registry hears of the runs a worker holds in batches, a little after the worker.
    drover_testkit::wait_until("the registry lists the three runs", PATIENCE, || async {
        common::record(&client, "wide")
            .await
            .is_some_and(|record| record.runs.len() == 3)
    })
    .await
    .unwrap();
    for _ in 0..4 {
        gate.open();
    }
    for run in &runs {
        wait_status(&client, run, RunStatus::Succeeded, PATIENCE).await;
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_attempt_error_drops_the_attempt() {
    let stack = stack().await;
    let client = stack.client().await;
    let id = WorkerId::parse("patient").unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let worker = start(&stack, "patient", waits_for_cancel(seen_tx)).await;
    let pulses = Recorder::start(&client, &subject::from_worker(keys::GIVE_PULSE, &id)).await;
    let run = submit(&client, &spec("wait")).await;
    wait_status(&client, &run, RunStatus::Running, PATIENCE).await;

    // What the scheduler answers to a `starting` or `completed` that is no longer current.
    let stale = ErrorPayload::new(
        ErrorCode::StaleAttempt,
        "attempt 1 is not current",
        subject::from_worker(keys::STARTING, &id),
    )
    .with_details(json!({"runID": run, "attempt": 1, "currentAttempt": 2}));
    client
        .publish(subject::to_worker(&id, keys::ERROR), encode(&stale))
        .await
        .unwrap();
    let reason = tokio::time::timeout(PATIENCE, seen.recv()).await.unwrap();
    assert_eq!(reason.flatten().as_deref(), Some("stale_attempt"));
    // The worker no longer reports it.
    client
        .publish(
            subject::to_worker(&id, keys::CHECK_PULSE),
            encode(&CheckPulse {
                id: "after-stale".to_owned(),
            }),
        )
        .await
        .unwrap();
    let answer = wait_for("the probe is answered", PATIENCE, || async {
        pulses
            .payloads_on(&subject::from_worker(keys::GIVE_PULSE, &id))
            .into_iter()
            .find(|pulse| pulse["id"] == "after-stale")
    })
    .await
    .unwrap();
    assert_eq!(answer["runs"], json!([]));
    worker.stop().await.unwrap();
}
