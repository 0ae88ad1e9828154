//! Child runs from a handler: on a second worker, concurrently, and failing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{stack, start, Gate, PATIENCE};
use drover_integration_tests::runs::{get, spec, submit, wait_status};
use drover_protocol::{FailureReason, RunId, RunStatus, WorkerStatus};
use drover_worker::{ChildError, Context, RoutineError, Worker};
use futures::future::join_all;
use serde_json::{json, Value};

/// Children that double `params.n` once the gate opens (when `params.gated`), or fail
/// fatally when `params.fail`.
fn child_worker(gate: Gate) -> drover_worker::WorkerBuilder {
    Worker::builder("kids")
        .capacity(4)
        .routine("wf.child", move |ctx: Context, params: Value| {
            let gate = gate.clone();
            async move {
                if params["gated"] == true {
                    gate.wait().await;
                }
                if params["fail"] == true {
                    return Err(RoutineError::fatal("child says no").with_type("ChildSaysNo"));
                }
                let n = params["n"].as_u64().unwrap_or(0);
                Ok(json!({"doubled": n * 2, "parent": ctx.parent_run_id()}))
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_runs_on_another_worker_while_the_parent_hangs() {
    let stack = stack().await;
    let client = stack.client().await;
    let gate = Gate::default();
    let kids = start(&stack, "kids", child_worker(gate.clone())).await;
    let parent = start(
        &stack,
        "parent",
        Worker::builder("parent").routine("wf.parent", |ctx: Context, params: Value| async move {
            let n = params["n"].clone();
            let child = ctx
                .run_child("wf.child", json!({"n": n, "gated": true}), "double-1")
                .await?;
            Ok(json!({"child": child}))
        }),
    )
    .await;

    let mut request = spec("wf.parent");
    request.params = json!({"n": 21});
    let run = submit(&client, &request).await;
    // Every run the parent worker holds waits on a child: Drover derives HANGING, and the
    // worker reports it in its pulses.
    drover_testkit::wait_until(
        "parent worker HANGING, as reported too",
        PATIENCE,
        || async {
            common::record(&client, "parent")
                .await
                .is_some_and(|record| {
                    record.status == WorkerStatus::Hanging
                        && record.reported_status == Some(WorkerStatus::Hanging)
                })
        },
    )
    .await
    .unwrap();
    let open = get(&client, &run).await.unwrap().open_children;
    assert_eq!(open.len(), 1);
    gate.open();

    let record = wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    let result = record.result.unwrap();
    assert_eq!(result["child"]["doubled"], 42);
    assert_eq!(result["child"]["parent"], json!(run));
    let child = get(&client, &open[0]).await.unwrap();
    assert_eq!(child.parent_run_id, Some(run));
    assert_eq!(child.local_run_id.unwrap().as_str(), "double-1");
    assert_eq!(child.worker_id.unwrap().as_str(), "kids");
    parent.stop().await.unwrap();
    kids.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_children_return_results_and_failures() {
    let stack = stack().await;
    let client = stack.client().await;
    let kids = start(&stack, "kids", child_worker(Gate::default())).await;
    let parent = start(
        &stack,
        "parent",
        Worker::builder("parent").routine("wf.fanout", |ctx: Context, _params: Value| async move {
            let outcomes = join_all((0..3).map(|index| {
                ctx.child("wf.child")
                    .params(json!({"n": index, "fail": index == 2}))
                    .local_id(format!("part-{index}"))
                    .worker("kids")
                    .env("MODE", "fanout")
                    .max_retries(1)
                    .retry_backoff(Duration::from_millis(10), 1.0, Duration::from_millis(10))
                    .max_exec_time(Duration::from_secs(30))
                    .run()
            }))
            .await;
            let mut results = Vec::new();
            for outcome in outcomes {
                match outcome {
                    Ok(value) => results.push(value["doubled"].clone()),
                    Err(ChildError::Failed {
                        run_id,
                        status,
                        failure_reason,
                        error,
                    }) => results.push(json!({
                        "run": run_id,
                        "status": status,
                        "reason": failure_reason,
                        "type": error.and_then(|error| error.kind),
                    })),
                    Err(other) => return Err(other.into()),
                }
            }
            Ok(json!(results))
        }),
    )
    .await;

    let run = submit(&client, &spec("wf.fanout")).await;
    let record = wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    let results = record.result.unwrap();
    assert_eq!(results[0], 0);
    assert_eq!(results[1], 2);
    let failure = &results[2];
    assert_eq!(failure["status"], json!(RunStatus::Failed));
    assert_eq!(failure["reason"], json!(FailureReason::Error));
    assert_eq!(failure["type"], "ChildSaysNo");
    let failed_child: RunId = serde_json::from_value(failure["run"].clone()).unwrap();
    let child = get(&client, &failed_child).await.unwrap();
    assert_eq!(child.attempt, 1, "a fatal error is not retried");
    parent.stop().await.unwrap();
    kids.stop().await.unwrap();
}
