//! A completion made while NATS is down is delivered once the server is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{start, Gate, PATIENCE};
use drover_integration_tests::runs::{spec, submit, wait_status};
use drover_protocol::{RunStatus, WorkerStatus};
use drover_testkit::wait_until;
use drover_worker::{Context, Worker};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_a_nats_restart_mid_run() {
    common::init_tracing();
    // Long enough that nobody is declared LOST while the server is away.
    let mut stack = common::stack_with_lost_after(5000).await;
    let client = stack.client().await;
    let gate = Gate::default();
    let returned = Arc::new(AtomicBool::new(false));
    let worker = {
        let (gate, returned) = (gate.clone(), Arc::clone(&returned));
        start(
            &stack,
            "survivor",
            Worker::builder("survivor").routine("outlast", move |_ctx: Context, _params: Value| {
                let (gate, returned) = (gate.clone(), Arc::clone(&returned));
                async move {
                    gate.wait().await;
                    returned.store(true, Ordering::SeqCst);
                    Ok(json!("survived"))
                }
            }),
        )
        .await
    };
    let run = submit(&client, &spec("outlast")).await;
    wait_status(&client, &run, RunStatus::Running, PATIENCE).await;

    stack.nats.stop().await.unwrap();
    // The routine ends while NATS is away: its completion cannot be stored yet.
    gate.open();
    wait_until("the handler returned", PATIENCE, || async {
        returned.load(Ordering::SeqCst)
    })
    .await
    .unwrap();
    stack.restart_nats().await.unwrap();

    let record = wait_status(&client, &run, RunStatus::Succeeded, Duration::from_secs(30)).await;
    assert_eq!(record.result, Some(json!("survived")));
    assert_eq!(record.attempt, 1);
    common::wait_status(&client, "survivor", WorkerStatus::Idle).await;
    worker.stop().await.unwrap();
}
