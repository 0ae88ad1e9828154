//! The worker's lifecycle: graceful shutdown, the grace period running out, and a new
//! registration when the old one is taken over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{stack, start, Gate, PATIENCE};
use drover_integration_tests::runs::{get, spec, submit, wait_status};
use drover_integration_tests::Recorder;
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    encode, Assignment, CheckPulse, Register, Registered, RoutineId, RunId, RunStatus, WorkerId,
    WorkerStatus,
};
use drover_testkit::{call, wait_for, wait_until};
use drover_worker::{Context, Worker};
use serde_json::{json, Value};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_held_run_finish_takes_no_new_work_and_goes_offline() {
    let stack = stack().await;
    let client = stack.client().await;
    let id = WorkerId::parse("leaver").unwrap();
    let gate = Gate::default();
    let worker = {
        let gate = gate.clone();
        start(
            &stack,
            "leaver",
            Worker::builder("leaver")
                .capacity(2)
                .grace_period(Duration::from_secs(20))
                .routine("hold", move |_ctx: Context, _params: Value| {
                    let gate = gate.clone();
                    async move {
                        gate.wait().await;
                        Ok(json!("done"))
                    }
                }),
        )
        .await
    };
    let pulses = Recorder::start(&client, &subject::from_worker(keys::GIVE_PULSE, &id)).await;
    let starts = Recorder::start(&client, &subject::from_worker(keys::STARTING, &id)).await;

    let run = submit(&client, &spec("hold")).await;
    wait_status(&client, &run, RunStatus::Running, PATIENCE).await;
    worker.shutdown.cancel();
    common::wait_status(&client, "leaver", WorkerStatus::Terminating).await;

    // An assignment that arrives now is not started (nor acknowledged). The inbox is served
    // in order, so the answer to a probe sent after it shows what the worker made of it.
    let stray = Assignment {
        run_id: RunId::generate(),
        attempt: 1,
        routine_id: RoutineId::parse("hold").unwrap(),
        params: Value::Null,
        env: Default::default(),
        max_exec_time_ms: None,
        parent_run_id: None,
    };
    client
        .publish(subject::to_worker(&id, keys::REQUEST_START), encode(&stray))
        .await
        .unwrap();
    let probe = CheckPulse {
        id: "after-stray".to_owned(),
    };
    client
        .publish(subject::to_worker(&id, keys::CHECK_PULSE), encode(&probe))
        .await
        .unwrap();
    let answer = wait_for("the probe is answered", PATIENCE, || async {
        pulses
            .payloads_on(&subject::from_worker(keys::GIVE_PULSE, &id))
            .into_iter()
            .find(|pulse| pulse["id"] == "after-stray")
    })
    .await
    .unwrap();
    assert_eq!(answer["status"], "TERMINATING");
    assert_eq!(answer["runs"], json!([{"runID": run, "attempt": 1}]));

    // The held run finishes and is completed; then the worker leaves.
    gate.open();
    let record = wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    assert_eq!(record.result, Some(json!("done")));
    worker.join().await.unwrap();
    common::wait_status(&client, "leaver", WorkerStatus::Offline).await;
    let started: Vec<Value> = starts
        .payloads_on(&subject::from_worker(keys::STARTING, &id))
        .into_iter()
        .map(|starting| starting["runID"].clone())
        .collect();
    assert_eq!(started, [json!(run)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_outliving_the_grace_period_is_placed_on_another_worker() {
    let stack = stack().await;
    let client = stack.client().await;
    let (fired_tx, mut fired) = mpsc::unbounded_channel();
    let short = start(
        &stack,
        "short",
        Worker::builder("short")
            .grace_period(Duration::from_millis(300))
            .routine("long", move |ctx: Context, _params: Value| {
                let fired_tx = fired_tx.clone();
                async move {
                    ctx.cancelled().await;
                    let _ = fired_tx.send(ctx.cancel_reason());
                    Ok(json!({"by": "short"}))
                }
            }),
    )
    .await;
    let run = submit(&client, &spec("long")).await;
    let record = wait_status(&client, &run, RunStatus::Running, PATIENCE).await;
    assert_eq!(record.worker_id.unwrap().as_str(), "short");
    let backup = start(
        &stack,
        "backup",
        Worker::builder("backup").routine("long", |_ctx: Context, _params: Value| async move {
            Ok(json!({"by": "backup"}))
        }),
    )
    .await;

    short.shutdown.cancel();
    let reason = tokio::time::timeout(PATIENCE, fired.recv())
        .await
        .unwrap()
        .flatten();
    assert_eq!(reason.as_deref(), Some("the shutdown grace period is over"));
    short.join().await.unwrap();
    let record = wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    assert_eq!(record.result, Some(json!({"by": "backup"})));
    assert_eq!(record.worker_id.unwrap().as_str(), "backup");
    assert!(record.reassignments >= 1);
    common::wait_status(&client, "short", WorkerStatus::Offline).await;
    backup.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_registers_again_when_its_registration_is_taken_over() {
    let stack = stack().await;
    let client = stack.client().await;
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let worker = start(
        &stack,
        "phoenix",
        Worker::builder("phoenix").routine("twice", move |ctx: Context, _params: Value| {
            let dropped_tx = dropped_tx.clone();
            async move {
                if ctx.attempt() == 1 {
                    ctx.cancelled().await;
                    let _ = dropped_tx.send(ctx.cancel_reason());
                }
                Ok(json!({"attempt": ctx.attempt()}))
            }
        }),
    )
    .await;
    let first = common::record(&client, "phoenix")
        .await
        .unwrap()
        .incarnation;
    let run = submit(&client, &spec("twice")).await;
    wait_status(&client, &run, RunStatus::Running, PATIENCE).await;

    // Someone else registers the same workerID: the worker's registration is over, its run
    // is taken back, and its next pulse is refused as stale.
    let register = Register {
        worker_id: WorkerId::parse("phoenix").unwrap(),
        routines: vec![],
        labels: Default::default(),
        capacity: 1,
        name: None,
        sdk: None,
        host: None,
        pid: None,
    };
    let taken: Registered = call(
        &client,
        subject::from_worker(keys::REGISTER, &register.worker_id),
        &register,
    )
    .await
    .unwrap();
    assert_eq!(taken.incarnation, first + 1);

    let reason = tokio::time::timeout(PATIENCE, dropped.recv())
        .await
        .unwrap()
        .flatten();
    assert!(reason.is_some());
    wait_until("the worker registered again", PATIENCE, || async {
        common::record(&client, "phoenix")
            .await
            .is_some_and(|record| record.incarnation > taken.incarnation)
    })
    .await
    .unwrap();
    let record = wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    assert_eq!(record.result, Some(json!({"attempt": 2})));
    let again = get(&client, &run).await.unwrap();
    assert_eq!(again.worker_id.unwrap().as_str(), "phoenix");
    worker.stop().await.unwrap();
}
