//! Runs from request to result through the real scheduler (DESIGN §6): placement,
//! fencing, retries, timeouts, conditions, idempotency and invalid specs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::{Client, HeaderMap};
use drover_integration_tests::runner::publish_acked;
use drover_integration_tests::runs::{get, spec, submit, try_submit, wait_status, wait_terminal};
use drover_integration_tests::worker::WorkerSpec;
use drover_integration_tests::{envelope, error_of, raw_call, raw_call_with_headers, Act, Runner};
use drover_protocol::subject::{keys, resources};
use drover_protocol::{
    Completed, Conditions, ErrorCode, FailureReason, Outcome, RetryBackoff, RunError, RunStatus,
    WorkerId,
};
use drover_testkit::{hold_for, wait_until, Stack};
use futures::StreamExt;
use serde_json::json;

async fn stack() -> Stack {
    Stack::builder()
        .with_registry()
        .with_monitor()
        .with_scheduler()
        .env("DROVER_ASSIGN_ACK_TIMEOUT_MS", "1000")
        .env("RUST_LOG", "info")
        .start()
        .await
        .expect("stack starts")
}

async fn echo_worker(client: &Client, id: &str, routines: &[&str]) -> Runner {
    let worker = WorkerSpec::new(id, routines).start(client).await;
    Runner::start(worker, |assignment| {
        Act::Succeed(json!({"echo": assignment.params}))
    })
}

#[tokio::test]
async fn a_run_goes_from_request_to_result() {
    let stack = stack().await;
    let client = stack.client().await;
    let worker = echo_worker(&client, "w1", &["echo"]).await;
    let mut request = spec("echo");
    request.params = json!({"text": "hi"});
    request.env.insert("MODE".into(), "test".into());
    let run = submit(&client, &request).await;
    let record = wait_status(&client, &run, RunStatus::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(record.result, Some(json!({"echo": {"text": "hi"}})));
    assert_eq!(record.attempt, 1);
    assert_eq!(record.worker_id, Some(WorkerId::parse("w1").unwrap()));
    let states: Vec<RunStatus> = record.transitions.iter().map(|t| t.status).collect();
    assert_eq!(
        states,
        [
            RunStatus::Pending,
            RunStatus::Assigned,
            RunStatus::Running,
            RunStatus::Succeeded
        ]
    );
    assert!(record.created_at <= record.assigned_at.unwrap());
    assert!(record.started_at.unwrap() <= record.ended_at.unwrap());
    let executions = worker.executions();
    assert_eq!(executions.len(), 1);
    assert_eq!(
        executions[0].assignment.env.get("MODE").map(String::as_str),
        Some("test")
    );
}

#[tokio::test]
async fn the_submitters_trace_is_on_every_directive() {
    let stack = stack().await;
    let client = stack.client().await;
    let worker = echo_worker(&client, "w1", &["echo"]).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent);
    let reply = raw_call_with_headers(
        &client,
        keys::REQUEST_START,
        headers,
        envelope(keys::REQUEST_START, json!({"routineID": "echo"})),
    )
    .await;
    let accepted: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    let run =
        drover_protocol::RunId::parse(accepted["payload"]["runID"].as_str().unwrap()).unwrap();
    let record = wait_status(&client, &run, RunStatus::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(
        record.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    let executions = worker.executions();
    let received = executions[0].traceparent.as_deref().unwrap();
    assert!(
        received.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{received}"
    );

    // Without one, the run still gets a trace of its own.
    let untraced = submit(&client, &spec("echo")).await;
    let record = wait_status(
        &client,
        &untraced,
        RunStatus::Succeeded,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(record.trace_id.as_ref().map(String::len), Some(32));
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_run() {
    let stack = stack().await;
    let client = stack.client().await;
    let mut request = spec("nobody.serves.this");
    request.idempotency_key = Some("order-42".into());
    let first = submit(&client, &request).await;
    let second = submit(&client, &request).await;
    assert_eq!(first, second);
    // Even with other fields changed: the key decides.
    request.params = json!({"different": true});
    assert_eq!(submit(&client, &request).await, first);
    request.idempotency_key = Some("order-43".into());
    assert_ne!(submit(&client, &request).await, first);
    // One record and one queue message for the repeated key.
    let js = stack.jetstream().await;
    let runs = js.get_key_value(resources::RUNS_BUCKET).await.unwrap();
    let keys: Vec<String> = runs
        .keys()
        .await
        .unwrap()
        .map(|k| k.unwrap())
        .collect()
        .await;
    assert_eq!(keys.len(), 2);
    let queue = js
        .get_stream(resources::QUEUE_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(queue, 2);
}

async fn persisted(stack: &Stack) -> (u64, u64) {
    let js = stack.jetstream().await;
    let runs: kv::Store = js.get_key_value(resources::RUNS_BUCKET).await.unwrap();
    let records = runs.status().await.unwrap().values();
    let queued = js
        .get_stream(resources::QUEUE_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    (records, queued)
}

#[tokio::test]
async fn each_kind_of_invalid_spec_has_its_code_and_stores_nothing() {
    let stack = stack().await;
    let client = stack.client().await;
    let cases: Vec<(&str, serde_json::Value, ErrorCode, Option<&str>)> = vec![
        (
            "missing routineID",
            json!({"params": {}}),
            ErrorCode::SchemaViolation,
            Some("/payload/routineID"),
        ),
        (
            "malformed routineID",
            json!({"routineID": "bad routine!"}),
            ErrorCode::InvalidRoutineId,
            Some("/payload/routineID"),
        ),
        (
            "negative retries",
            json!({"routineID": "r", "maxRetries": -1}),
            ErrorCode::SchemaViolation,
            Some("/payload/maxRetries"),
        ),
        (
            "zero wait time",
            json!({"routineID": "r", "maxWaitTimeMs": 0}),
            ErrorCode::SchemaViolation,
            Some("/payload/maxWaitTimeMs"),
        ),
        (
            "env that is not strings",
            json!({"routineID": "r", "env": {"A": 1}}),
            ErrorCode::SchemaViolation,
            Some("/payload/env/A"),
        ),
        (
            "bad workerID condition",
            json!({"routineID": "r", "conditions": {"workerIDs": ["a.b"]}}),
            ErrorCode::SchemaViolation,
            Some("/payload/conditions/workerIDs/0"),
        ),
        (
            "backoff ceiling under its start",
            json!({"routineID": "r", "retryBackoff": {"initialMs": 500, "multiplier": 2, "maxMs": 100}}),
            ErrorCode::InvalidBackoff,
            None,
        ),
        (
            "parent from a client",
            json!({"routineID": "r", "parentRunID": "0193a5b2-7c4e-7d11-9a2b-3c4d5e6f7a8b"}),
            ErrorCode::SchemaViolation,
            Some("/payload/parentRunID"),
        ),
    ];
    for (what, payload, code, path) in cases {
        let reply = raw_call(
            &client,
            keys::REQUEST_START,
            envelope(keys::REQUEST_START, payload),
        )
        .await;
        let error = error_of(&reply).unwrap_or_else(|| panic!("{what} was accepted"));
        assert_eq!(error.code, code, "{what}: {error}");
        if let Some(path) = path {
            let violations = error.details["violations"].as_array().unwrap();
            assert!(
                violations.iter().any(|v| v["path"] == path),
                "{what}: {path} not in {violations:?}"
            );
        }
    }
    let not_json = raw_call(
        &client,
        keys::REQUEST_START,
        bytes::Bytes::from_static(b"run it"),
    )
    .await;
    assert_eq!(error_of(&not_json).unwrap().code, ErrorCode::InvalidJson);
    let wrong_key = raw_call(
        &client,
        keys::REQUEST_START,
        envelope(keys::RUN_GET, json!({"routineID": "r"})),
    )
    .await;
    assert_eq!(
        error_of(&wrong_key).unwrap().code,
        ErrorCode::PayloadKeyMismatch
    );
    let big = raw_call(
        &client,
        keys::REQUEST_START,
        envelope(
            keys::REQUEST_START,
            json!({"routineID": "r", "params": "x".repeat(300 * 1024)}),
        ),
    )
    .await;
    assert_eq!(error_of(&big).unwrap().code, ErrorCode::PayloadTooLarge);
    // A worker's child request has its own rules.
    let orphan = raw_call(
        &client,
        "v1.routine.request_start.w9",
        envelope(
            keys::REQUEST_START,
            json!({"routineID": "r", "localRunID": "x", "parentRunID": "nope"}),
        ),
    )
    .await;
    assert_eq!(error_of(&orphan).unwrap().code, ErrorCode::UnknownParentRun);
    let no_local = raw_call(
        &client,
        "v1.routine.request_start.w9",
        envelope(
            keys::REQUEST_START,
            json!({"routineID": "r", "parentRunID": "nope"}),
        ),
    )
    .await;
    assert_eq!(
        error_of(&no_local).unwrap().code,
        ErrorCode::SchemaViolation
    );
    assert_eq!(persisted(&stack).await, (0, 0), "something was stored");
    // Unknown runs, for the queries.
    let missing = raw_call(
        &client,
        keys::RUN_GET,
        envelope(keys::RUN_GET, json!({"runID": "does-not-exist"})),
    )
    .await;
    assert_eq!(error_of(&missing).unwrap().code, ErrorCode::UnknownRun);
    let cancel = raw_call(
        &client,
        keys::RUN_CANCEL,
        envelope(keys::RUN_CANCEL, json!({"runID": "does-not-exist"})),
    )
    .await;
    assert_eq!(error_of(&cancel).unwrap().code, ErrorCode::UnknownRun);
    // And it still serves.
    assert!(try_submit(&client, &spec("r")).await.is_ok());
}

#[tokio::test]
async fn stale_completions_are_refused_and_change_nothing() {
    let stack = stack().await;
    let client = stack.client().await;
    // The first worker never finishes; the test completes by hand with stale attempts.
    let worker = WorkerSpec::new("w1", &["job"]).start(&client).await;
    let mut hanging = Runner::start(worker, |_| Act::Hang);
    let run = submit(&client, &spec("job")).await;
    wait_status(&client, &run, RunStatus::Running, Duration::from_secs(10)).await;

    let completed = |attempt, outcome| Completed {
        run_id: run.clone(),
        attempt,
        outcome,
        result: Some(json!("forged")),
        error: None,
    };
    // An attempt that never was.
    hanging
        .worker()
        .publish(keys::COMPLETED, &completed(7, Outcome::Succeeded))
        .await;
    let error = hanging.recv(keys::ERROR, Duration::from_secs(5)).await;
    assert_eq!(error.payload["code"], "stale_attempt");
    assert_eq!(get(&client, &run).await.unwrap().status, RunStatus::Running);

    // The current attempt from another worker.
    let mut intruder = WorkerSpec::new("w2", &["other"]).start(&client).await;
    intruder
        .publish(keys::COMPLETED, &completed(1, Outcome::Succeeded))
        .await;
    let error = intruder.recv(keys::ERROR, Duration::from_secs(5)).await;
    assert_eq!(error.payload["code"], "stale_attempt");

    // An old incarnation: w1 registers again, its run is taken back and placed anew.
    let again = WorkerSpec::new("w1", &["job"]).start(&client).await;
    let fresh = Runner::start(again, |_| {
        Act::After(
            Duration::from_millis(300),
            Box::new(Act::Succeed(json!("real"))),
        )
    });
    // The old incarnation's completion for attempt 1 is stale.
    publish_acked(
        hanging.worker().client(),
        "v1.routine.completed.w1".into(),
        &completed(1, Outcome::Succeeded),
    )
    .await;
    let record = wait_status(&client, &run, RunStatus::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(record.result, Some(json!("real")));
    assert_eq!(record.attempt, 2);
    assert_eq!(record.reassignments, 1);
    assert_eq!(fresh.executions().len(), 1);
    // A completion after the end changes nothing either.
    publish_acked(
        hanging.worker().client(),
        "v1.routine.completed.w1".into(),
        &completed(2, Outcome::Failed),
    )
    .await;
    hold_for(Duration::from_millis(300)).await;
    let after = get(&client, &run).await.unwrap();
    assert_eq!(after.status, RunStatus::Succeeded);
    assert_eq!(after.result, Some(json!("real")));
}

#[tokio::test]
async fn exec_timeouts_cancel_retry_with_backoff_then_fail() {
    let stack = stack().await;
    let client = stack.client().await;
    let worker = WorkerSpec::new("w1", &["slow"]).start(&client).await;
    let runner = Runner::start(worker, |_| Act::Hang);
    let mut request = spec("slow");
    request.max_exec_time_ms = Some(300);
    request.max_retries = 2;
    request.retry_backoff = Some(RetryBackoff {
        initial_ms: 200,
        multiplier: 2.0,
        max_ms: 1000,
    });
    let run = submit(&client, &request).await;
    let record = wait_terminal(&client, &run, Duration::from_secs(15)).await;
    assert_eq!(record.status, RunStatus::Failed);
    assert_eq!(record.failure_reason, Some(FailureReason::MaxExecExceeded));
    assert_eq!(record.attempt, 3);
    assert_eq!(record.retries, 2);
    // The worker was told to stop each attempt.
    let log = runner.log.lock().unwrap();
    let cancels: Vec<u64> = log
        .cancels
        .iter()
        .map(|(cancel, _)| cancel.attempt)
        .collect();
    assert_eq!(cancels, [1, 2, 3]);
    assert!(log
        .cancels
        .iter()
        .all(|(cancel, _)| cancel.reason == "max_exec_exceeded"));
    // Each attempt ran about maxExecTimeMs, and the retries waited their backoff.
    let starts: Vec<Instant> = log.executions.iter().map(|e| e.at).collect();
    let ends: Vec<Instant> = log.cancels.iter().map(|(_, at)| *at).collect();
    for (attempt, (start, end)) in starts.iter().zip(&ends).enumerate() {
        let ran = end.duration_since(*start);
        assert!(
            ran >= Duration::from_millis(290) && ran <= Duration::from_millis(700),
            "attempt {}: ran {ran:?}",
            attempt + 1
        );
    }
    for (retry, expected) in [(1usize, 200u64), (2, 400)] {
        let waited = starts[retry].duration_since(ends[retry - 1]);
        assert!(
            waited >= Duration::from_millis(expected - 20)
                && waited <= Duration::from_millis(expected + 400),
            "retry {retry}: waited {waited:?}, backoff {expected} ms"
        );
    }
}

#[tokio::test]
async fn failed_attempts_retry_then_end_with_the_right_reason() {
    let stack = stack().await;
    let client = stack.client().await;
    let worker = WorkerSpec::new("w1", &["flaky", "fatal"])
        .start(&client)
        .await;
    let runner = Runner::start(worker, |assignment| {
        let mut error = RunError::new("Boom", format!("attempt {}", assignment.attempt));
        if assignment.routine_id == "fatal" {
            error.retryable = Some(false);
        }
        Act::Fail(error)
    });
    let mut flaky = spec("flaky");
    flaky.max_retries = 2;
    flaky.retry_backoff = Some(RetryBackoff {
        initial_ms: 50,
        multiplier: 1.0,
        max_ms: 50,
    });
    let flaky = submit(&client, &flaky).await;
    let mut fatal = spec("fatal");
    fatal.max_retries = 5;
    let fatal = submit(&client, &fatal).await;
    let flaky = wait_terminal(&client, &flaky, Duration::from_secs(10)).await;
    assert_eq!(flaky.status, RunStatus::Failed);
    assert_eq!(flaky.failure_reason, Some(FailureReason::RetriesExhausted));
    assert_eq!(flaky.attempt, 3);
    assert_eq!(flaky.error.unwrap().message, "attempt 3");
    let fatal = wait_terminal(&client, &fatal, Duration::from_secs(10)).await;
    assert_eq!(fatal.failure_reason, Some(FailureReason::Error));
    assert_eq!(fatal.attempt, 1);
    assert_eq!(runner.executions().len(), 4);
}

#[tokio::test]
async fn wait_timeout_fails_a_run_nobody_can_take() {
    let stack = stack().await;
    let client = stack.client().await;
    // A worker exists for the routine, but not with the label the run asks for.
    let _worker = echo_worker(&client, "w1", &["picky"]).await;
    let mut request = spec("picky");
    request.max_wait_time_ms = Some(500);
    request
        .conditions
        .labels
        .insert("gpu".into(), "true".into());
    let submitted = Instant::now();
    let run = submit(&client, &request).await;
    let mut orphan = spec("no.such.routine");
    orphan.max_wait_time_ms = Some(500);
    let orphan = submit(&client, &orphan).await;
    for run in [&run, &orphan] {
        let record = wait_terminal(&client, run, Duration::from_secs(10)).await;
        assert_eq!(record.status, RunStatus::Failed);
        assert_eq!(record.failure_reason, Some(FailureReason::MaxWaitExceeded));
        let ended = record.ended_at.unwrap().since(record.created_at);
        assert!(
            ended >= Duration::from_millis(500) && ended <= Duration::from_millis(1500),
            "ended after {ended:?}"
        );
    }
    assert!(submitted.elapsed() < Duration::from_secs(5));
    // A run that is placed in time is not failed by its timer.
    let mut placed = spec("picky");
    placed.max_wait_time_ms = Some(500);
    let placed = submit(&client, &placed).await;
    wait_status(
        &client,
        &placed,
        RunStatus::Succeeded,
        Duration::from_secs(5),
    )
    .await;
    hold_for(Duration::from_millis(800)).await;
    assert_eq!(
        get(&client, &placed).await.unwrap().status,
        RunStatus::Succeeded
    );
}

#[tokio::test]
async fn conditions_hold_for_every_run() {
    let stack = stack().await;
    let client = stack.client().await;
    let mut runners = Vec::new();
    for (id, labels) in [
        ("cpu-eu", [("gpu", "false"), ("region", "eu")]),
        ("gpu-eu", [("gpu", "true"), ("region", "eu")]),
        ("gpu-us", [("gpu", "true"), ("region", "us")]),
    ] {
        let mut worker = WorkerSpec::new(id, &["task"]).capacity(2);
        for (key, value) in labels {
            worker = worker.label(key, value);
        }
        let worker = worker.start(&client).await;
        runners.push(Runner::start(worker, |_| {
            Act::After(
                Duration::from_millis(20),
                Box::new(Act::Succeed(json!(null))),
            )
        }));
    }
    let wanted: Vec<Conditions> = vec![
        Conditions::default(),
        Conditions {
            worker_ids: vec![],
            labels: [("gpu".to_owned(), "true".to_owned())].into(),
        },
        Conditions {
            worker_ids: vec![],
            labels: [
                ("gpu".to_owned(), "true".to_owned()),
                ("region".to_owned(), "us".to_owned()),
            ]
            .into(),
        },
        Conditions {
            worker_ids: vec![WorkerId::parse("cpu-eu").unwrap()],
            labels: Default::default(),
        },
        Conditions {
            worker_ids: vec![
                WorkerId::parse("cpu-eu").unwrap(),
                WorkerId::parse("gpu-us").unwrap(),
            ],
            labels: [("region".to_owned(), "us".to_owned())].into(),
        },
    ];
    let mut submitted = Vec::new();
    for index in 0..100 {
        let mut request = spec("task");
        request.conditions = wanted[index % wanted.len()].clone();
        submitted.push((submit(&client, &request).await, request.conditions));
    }
    for (run, conditions) in &submitted {
        let record = wait_status(&client, run, RunStatus::Succeeded, Duration::from_secs(30)).await;
        let worker = record.worker_id.unwrap();
        let runner = runners.iter().find(|r| r.id == worker).unwrap();
        let labels = runner.worker().registered.clone();
        let _ = labels;
        if !conditions.worker_ids.is_empty() {
            assert!(
                conditions.worker_ids.contains(&worker),
                "{run} ran on {worker}"
            );
        }
        let record_labels: std::collections::BTreeMap<&str, &str> = match worker.as_str() {
            "cpu-eu" => [("gpu", "false"), ("region", "eu")].into(),
            "gpu-eu" => [("gpu", "true"), ("region", "eu")].into(),
            _ => [("gpu", "true"), ("region", "us")].into(),
        };
        for (key, value) in &conditions.labels {
            assert_eq!(
                record_labels.get(key.as_str()),
                Some(&value.as_str()),
                "{run} ran on {worker}"
            );
        }
    }
    // Every execution was of a run whose conditions that worker meets (no stray attempts).
    let total: usize = runners.iter().map(|r| r.executions().len()).sum();
    assert_eq!(total, submitted.len());
}

#[tokio::test]
async fn unacknowledged_assignments_are_reassigned_within_their_own_bound() {
    let stack = Stack::builder()
        .with_registry()
        .with_monitor()
        .with_scheduler()
        .env("DROVER_ASSIGN_ACK_TIMEOUT_MS", "300")
        .env("DROVER_MAX_REASSIGNMENTS", "2")
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    // A worker that takes assignments and never acknowledges them.
    let worker = WorkerSpec::new("deaf", &["job"]).start(&client).await;
    let deaf = Runner::start(worker, |_| Act::Ignore);
    let mut request = spec("job");
    request.max_retries = 5;
    let run = submit(&client, &request).await;
    let record = wait_terminal(&client, &run, Duration::from_secs(10)).await;
    assert_eq!(record.status, RunStatus::Failed);
    assert_eq!(record.failure_reason, Some(FailureReason::WorkerLost));
    // Three assignments: the first and two reassignments; retries were never used.
    assert_eq!(record.attempt, 3);
    assert_eq!(record.reassignments, 3);
    assert_eq!(record.retries, 0);
    assert_eq!(deaf.executions().len(), 3);
    // Each unacknowledged attempt was also cancelled at the worker.
    wait_until("three cancels", Duration::from_secs(5), || async {
        deaf.cancels().len() == 3
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn runs_are_listed_newest_first_with_filters_and_pages() {
    use drover_protocol::{RoutineId, RunList, RunPage};
    let stack = stack().await;
    let client = stack.client().await;
    let _worker = echo_worker(&client, "lister", &["listed.a"]).await;
    let mut done = Vec::new();
    for _ in 0..5 {
        done.push(submit(&client, &spec("listed.a")).await);
    }
    let mut waiting = Vec::new();
    for _ in 0..7 {
        waiting.push(submit(&client, &spec("listed.b")).await);
    }
    for run in &done {
        wait_status(&client, run, RunStatus::Succeeded, Duration::from_secs(10)).await;
    }
    let list = |filter: RunList| {
        let client = client.clone();
        async move {
            drover_testkit::call::<_, RunPage>(&client, keys::RUN_LIST, &filter)
                .await
                .unwrap()
        }
    };
    // Everything, newest first.
    let all = list(RunList::default()).await;
    let ids: Vec<_> = all.runs.iter().map(|run| run.run_id.clone()).collect();
    let mut expected: Vec<_> = done.iter().chain(&waiting).cloned().collect();
    expected.sort();
    expected.reverse();
    assert_eq!(ids, expected);
    assert!(all.next_cursor.is_none());
    // Filters.
    let succeeded = list(RunList {
        status: Some(RunStatus::Succeeded),
        ..Default::default()
    })
    .await;
    assert_eq!(succeeded.runs.len(), 5);
    let pending_b = list(RunList {
        status: Some(RunStatus::Pending),
        routine_id: Some(RoutineId::parse("listed.b").unwrap()),
        ..Default::default()
    })
    .await;
    assert_eq!(pending_b.runs.len(), 7);
    let by_worker = list(RunList {
        worker_id: Some(WorkerId::parse("lister").unwrap()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_worker.runs.len(), 5);
    // Pages of 5 cover everything once, in order.
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = list(RunList {
            limit: Some(5),
            cursor: cursor.clone(),
            ..Default::default()
        })
        .await;
        assert!(page.runs.len() <= 5);
        paged.extend(page.runs.into_iter().map(|run| run.run_id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, expected);
    // A cursor that was never handed out.
    let bad = raw_call(
        &client,
        keys::RUN_LIST,
        envelope(keys::RUN_LIST, json!({"cursor": "not a cursor!"})),
    )
    .await;
    assert_eq!(error_of(&bad).unwrap().code, ErrorCode::InvalidCursor);
    // An empty body lists everything too.
    let empty = raw_call(&client, keys::RUN_LIST, bytes::Bytes::new()).await;
    assert!(error_of(&empty).is_none());
}
