//! Child runs (DESIGN §6.5) and cancellation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::Client;
use drover_integration_tests::runner::publish_acked;
use drover_integration_tests::runs::{get, spec, submit, wait_status};
use drover_integration_tests::worker::{SimWorker, WorkerSpec};
use drover_integration_tests::{Act, Runner};
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    Accepted, Assignment, Completed, ErrorCode, FailureReason, LocalRunId, Outcome, RegistryGet,
    RunCancel, RunId, RunRecord, RunSpec, RunStatus, Starting, WorkerId, WorkerRecord,
    WorkerStatus,
};
use drover_testkit::{call, hold_for, patient, wait_until, Stack};
use serde_json::{json, Value};

const LOST_AFTER_MS: u64 = 1000;

async fn stack() -> Stack {
    Stack::builder()
        .lost_after_ms(LOST_AFTER_MS)
        .with_registry()
        .with_monitor()
        .with_scheduler()
        .start()
        .await
        .expect("stack starts")
}

/// Children sleep `params.ms` then return their params.
async fn child_worker(client: &Client, id: &str) -> Runner {
    let worker = WorkerSpec::new(id, &["wf.child"])
        .capacity(3)
        .start(client)
        .await;
    Runner::start(worker, |assignment| {
        let ms = assignment.params["ms"].as_u64().unwrap_or(0);
        Act::After(
            Duration::from_millis(ms),
            Box::new(Act::Succeed(json!({"child": assignment.params}))),
        )
    })
}

async fn worker_status(client: &Client, id: &str) -> Option<WorkerStatus> {
    call::<_, WorkerRecord>(
        client,
        keys::REGISTRY_GET,
        &RegistryGet {
            worker_id: WorkerId::parse(id).unwrap(),
        },
    )
    .await
    .ok()
    .map(|record| record.status)
}

/// Takes the parent's assignment and acknowledges it.
async fn take_parent(parent: &mut SimWorker) -> Assignment {
    let message = parent
        .recv(keys::REQUEST_START, Duration::from_secs(10))
        .await;
    let assignment: Assignment = serde_json::from_value(message.payload).unwrap();
    publish_acked(
        parent.client(),
        subject::from_worker(keys::STARTING, &parent.id),
        &Starting {
            run_id: assignment.run_id.clone(),
            attempt: assignment.attempt,
        },
    )
    .await;
    assignment
}

async fn request_child(parent: &SimWorker, parent_run: &RunId, local: &str, ms: u64) -> Accepted {
    let mut child: RunSpec = spec("wf.child");
    child.params = json!({"ms": ms, "local": local});
    child.parent_run_id = Some(parent_run.clone());
    child.local_run_id = Some(LocalRunId::parse(local).unwrap());
    call(
        parent.client(),
        subject::from_worker(keys::REQUEST_START, &parent.id),
        &child,
    )
    .await
    .unwrap_or_else(|error| panic!("child {local} refused: {error}"))
}

/// Collects forwarded child events until `done` completions have arrived.
async fn child_events(
    parent: &mut SimWorker,
    done: usize,
) -> (Vec<Value>, BTreeMap<String, Value>) {
    let mut starting = Vec::new();
    let mut completed = BTreeMap::new();
    while completed.len() < done {
        let message = parent
            .try_recv_any(
                &[keys::STARTING, keys::COMPLETED],
                patient(Duration::from_secs(15)),
            )
            .await
            .expect("child events arrive");
        let local = message.payload["localRunID"].as_str().unwrap().to_owned();
        if message.key == keys::STARTING {
            starting.push(message.payload);
        } else {
            completed.insert(local, message.payload);
        }
    }
    (starting, completed)
}

#[tokio::test]
async fn a_parent_waits_on_its_children_and_gets_their_results() {
    let stack = stack().await;
    let client = stack.client().await;
    let children = child_worker(&client, "kids").await;
    let mut parent = WorkerSpec::new("parent", &["wf.parent"])
        .start(&client)
        .await;
    let run = submit(&client, &spec("wf.parent")).await;
    let assignment = take_parent(&mut parent).await;
    assert_eq!(assignment.run_id, run);
    wait_until("parent worker WORKING", Duration::from_secs(5), || async {
        worker_status(&client, "parent").await == Some(WorkerStatus::Working)
    })
    .await
    .unwrap();

    let mut child_runs = BTreeMap::new();
    for (index, ms) in [300u64, 400, 500].into_iter().enumerate() {
        let local = format!("c-{index}");
        let accepted = request_child(&parent, &run, &local, ms).await;
        assert_eq!(
            accepted.local_run_id.as_ref().map(LocalRunId::as_str),
            Some(local.as_str())
        );
        child_runs.insert(local, accepted.run_id);
    }
    // While it waits on children, the worker is HANGING.
    wait_until("parent worker HANGING", Duration::from_secs(5), || async {
        worker_status(&client, "parent").await == Some(WorkerStatus::Hanging)
    })
    .await
    .unwrap();
    let record = get(&client, &run).await.unwrap();
    assert_eq!(record.open_children.len(), 3);

    let (starting, completed) = child_events(&mut parent, 3).await;
    assert_eq!(starting.len(), 3);
    for event in &starting {
        let local = event["localRunID"].as_str().unwrap();
        assert_eq!(event["runID"], json!(child_runs[local]));
        assert_eq!(event["workerID"], "kids");
        assert_eq!(event["routineID"], "wf.child");
    }
    for (local, event) in &completed {
        assert_eq!(event["runID"], json!(child_runs[local]));
        assert_eq!(event["outcome"], "succeeded");
        assert_eq!(event["result"]["child"]["local"], json!(local));
    }
    // Children know their parent.
    for child in child_runs.values() {
        let record = get(&client, child).await.unwrap();
        assert_eq!(record.parent_run_id.as_ref(), Some(&run));
    }
    // No child left open: the worker is WORKING again, then finishes.
    wait_until(
        "parent worker WORKING again",
        Duration::from_secs(5),
        || async { worker_status(&client, "parent").await == Some(WorkerStatus::Working) },
    )
    .await
    .unwrap();
    publish_acked(
        parent.client(),
        subject::from_worker(keys::COMPLETED, &parent.id),
        &Completed {
            run_id: run.clone(),
            attempt: 1,
            outcome: Outcome::Succeeded,
            result: Some(json!(completed.len())),
            error: None,
        },
    )
    .await;
    let record = wait_status(&client, &run, RunStatus::Succeeded, Duration::from_secs(5)).await;
    assert!(record.open_children.is_empty());
    assert_eq!(children.executions().len(), 3);
}

#[tokio::test]
async fn a_retried_parent_gets_finished_children_at_once_and_runs_only_the_rest() {
    let stack = stack().await;
    let client = stack.client().await;
    let children = child_worker(&client, "kids").await;
    let mut first = WorkerSpec::new("parent-1", &["wf.parent"])
        .start(&client)
        .await;
    let run = submit(&client, &spec("wf.parent")).await;
    take_parent(&mut first).await;
    let mut child_runs = Vec::new();
    for (index, ms) in [100u64, 200, 4000].into_iter().enumerate() {
        child_runs.push(
            request_child(&first, &run, &format!("c-{index}"), ms)
                .await
                .run_id,
        );
    }
    // Two children have completed; then the parent's worker dies.
    let (_, completed) = child_events(&mut first, 2).await;
    assert_eq!(
        completed.keys().cloned().collect::<Vec<_>>(),
        ["c-0", "c-1"]
    );
    first.go_silent();
    drop(first);

    // The parent is retried on another worker, which asks for the same children again.
    let mut second = WorkerSpec::new("parent-2", &["wf.parent"])
        .start(&client)
        .await;
    let assignment = take_parent(&mut second).await;
    assert_eq!(assignment.run_id, run);
    assert_eq!(assignment.attempt, 2);
    for (index, ms) in [100u64, 200, 4000].into_iter().enumerate() {
        let accepted = request_child(&second, &run, &format!("c-{index}"), ms).await;
        assert_eq!(
            accepted.run_id, child_runs[index],
            "child c-{index} was not memoized"
        );
    }
    // The two finished children are reported at once; the third when it ends.
    let (_, completed) = child_events(&mut second, 3).await;
    for (index, local) in ["c-0", "c-1", "c-2"].iter().enumerate() {
        assert_eq!(completed[*local]["runID"], json!(child_runs[index]));
        assert_eq!(completed[*local]["outcome"], "succeeded");
    }
    // Each child ran once.
    let executed: Vec<RunId> = children
        .executions()
        .into_iter()
        .map(|e| e.assignment.run_id)
        .collect();
    assert_eq!(executed.len(), 3, "children re-ran: {executed:?}");
    publish_acked(
        second.client(),
        subject::from_worker(keys::COMPLETED, &second.id),
        &Completed {
            run_id: run.clone(),
            attempt: 2,
            outcome: Outcome::Succeeded,
            result: None,
            error: None,
        },
    )
    .await;
    let record = wait_status(&client, &run, RunStatus::Succeeded, Duration::from_secs(5)).await;
    assert_eq!(record.reassignments, 1);
}

#[tokio::test]
async fn cancelling_a_running_parent_cancels_it_and_its_children() {
    let stack = stack().await;
    let client = stack.client().await;
    let child_worker = WorkerSpec::new("kids", &["wf.child"])
        .capacity(3)
        .start(&client)
        .await;
    let children = Runner::start(child_worker, |_| Act::Hang);
    let mut parent = WorkerSpec::new("parent", &["wf.parent"])
        .start(&client)
        .await;
    let run = submit(&client, &spec("wf.parent")).await;
    take_parent(&mut parent).await;
    let kids: Vec<RunId> = vec![
        request_child(&parent, &run, "a", 0).await.run_id,
        request_child(&parent, &run, "b", 0).await.run_id,
    ];
    for kid in &kids {
        wait_status(&client, kid, RunStatus::Running, Duration::from_secs(5)).await;
    }
    let cancelled: RunRecord = call(
        &client,
        keys::RUN_CANCEL,
        &RunCancel {
            run_id: run.clone(),
            reason: Some("changed my mind".into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert_eq!(cancelled.failure_reason, Some(FailureReason::Cancelled));
    // The parent's worker is told to stop.
    let cancel = parent.recv(keys::CANCEL, Duration::from_secs(5)).await;
    assert_eq!(cancel.payload["runID"], json!(run));
    assert_eq!(cancel.payload["reason"], "changed my mind");
    // The children are cancelled too, and their worker told.
    for kid in &kids {
        let record = wait_status(&client, kid, RunStatus::Cancelled, Duration::from_secs(5)).await;
        assert_eq!(record.failure_reason, Some(FailureReason::Cancelled));
    }
    wait_until(
        "child worker got both cancels",
        Duration::from_secs(5),
        || async { children.cancels().len() == 2 },
    )
    .await
    .unwrap();
    // A late completion from the parent's worker changes nothing.
    parent
        .publish(
            keys::COMPLETED,
            &Completed {
                run_id: run.clone(),
                attempt: 1,
                outcome: Outcome::Succeeded,
                result: None,
                error: None,
            },
        )
        .await;
    let error = parent.recv(keys::ERROR, Duration::from_secs(5)).await;
    assert_eq!(error.payload["code"], ErrorCode::StaleAttempt.as_str());
    assert_eq!(
        get(&client, &run).await.unwrap().status,
        RunStatus::Cancelled
    );
    // Cancelling again returns the record as it is.
    let again: RunRecord = call(
        &client,
        keys::RUN_CANCEL,
        &RunCancel {
            run_id: run.clone(),
            reason: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(again.transitions.len(), cancelled.transitions.len());
    // The workers are free again.
    wait_until("parent worker IDLE", Duration::from_secs(5), || async {
        worker_status(&client, "parent").await == Some(WorkerStatus::Idle)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn cancelling_a_pending_run_removes_it_from_the_queue() {
    let stack = stack().await;
    let client = stack.client().await;
    let run = submit(&client, &spec("nobody.here")).await;
    let cancelled: RunRecord = call(
        &client,
        keys::RUN_CANCEL,
        &RunCancel {
            run_id: run.clone(),
            reason: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    let js = stack.jetstream().await;
    wait_until("queue empty", Duration::from_secs(5), || async {
        js.get_stream(drover_protocol::subject::resources::QUEUE_STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages
            == 0
    })
    .await
    .unwrap();
    // A worker for the routine appearing later does not get it.
    let worker = WorkerSpec::new("late", &["nobody.here"])
        .start(&client)
        .await;
    let runner = Runner::start(worker, |_| Act::Succeed(json!(null)));
    hold_for(Duration::from_millis(500)).await;
    assert!(runner.executions().is_empty());
}
