//! Every malformed input gets a `v1.error` with its own code, changes nothing, and leaves
//! the service serving (DESIGN §3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::Client;
use bytes::Bytes;
use drover_integration_tests::worker::WorkerSpec;
use drover_integration_tests::{envelope, error_of, raw_call, Recorder};
use drover_protocol::subject::{keys, resources};
use drover_protocol::{ErrorCode, ErrorPayload};
use drover_testkit::{wait_for, Stack};
use futures::StreamExt;
use serde_json::json;

struct Fixture {
    _stack: Stack,
    client: Client,
    workers: kv::Store,
}

async fn fixture() -> Fixture {
    let stack = Stack::builder()
        .with_registry()
        .with_monitor()
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let workers = stack
        .jetstream()
        .await
        .get_key_value(resources::WORKERS_BUCKET)
        .await
        .unwrap();
    Fixture {
        _stack: stack,
        client,
        workers,
    }
}

/// Every key and revision in the workers bucket: what "changes nothing" is checked against.
async fn snapshot(workers: &kv::Store) -> Vec<(String, u64)> {
    let mut keys: Vec<String> = match workers.keys().await {
        Ok(keys) => keys.map(|key| key.unwrap()).collect().await,
        Err(_) => Vec::new(),
    };
    keys.sort();
    let mut state = Vec::new();
    for key in keys {
        let entry = workers.entry(key.clone()).await.unwrap().unwrap();
        state.push((key, entry.revision));
    }
    state
}

/// Waits until w1's record is IDLE with its reported status recorded: nothing more will
/// change it while the worker keeps pulsing.
async fn settled(workers: &kv::Store) -> Vec<(String, u64)> {
    wait_for("w1 is settled", Duration::from_secs(5), || async {
        let entry = workers.entry("w1").await.ok()??;
        let record: serde_json::Value = serde_json::from_slice(&entry.value).ok()?;
        (record["status"] == "IDLE" && record["reportedStatus"] == "IDLE").then_some(())
    })
    .await
    .unwrap();
    snapshot(workers).await
}

async fn refused(client: &Client, subject: &str, body: Bytes) -> ErrorPayload {
    let reply = raw_call(client, subject, body).await;
    error_of(&reply).unwrap_or_else(|| {
        panic!(
            "expected a v1.error on {subject}, got {}",
            String::from_utf8_lossy(&reply)
        )
    })
}

async fn still_serving(client: &Client) {
    let reply = raw_call(
        client,
        "v1.register.checker",
        envelope(
            keys::REGISTER,
            json!({"workerID": "checker", "routines": ["r"]}),
        ),
    )
    .await;
    assert!(error_of(&reply).is_none(), "a valid registration failed");
}

#[tokio::test]
async fn malformed_requests_get_their_own_codes_and_change_nothing() {
    let fixture = fixture().await;
    let client = &fixture.client;
    let _existing = WorkerSpec::new("w1", &["r"]).start(client).await;
    let before = settled(&fixture.workers).await;

    let cases: Vec<(&str, &str, Bytes, ErrorCode, Option<&str>)> = vec![
        (
            "not JSON",
            "v1.register.w1",
            Bytes::from_static(b"{\"payloadKey\": v1"),
            ErrorCode::InvalidJson,
            None,
        ),
        (
            "not UTF-8",
            "v1.register.w1",
            Bytes::from_static(&[0xff, 0xfe, 0x00]),
            ErrorCode::InvalidJson,
            None,
        ),
        (
            "payloadKey of another directive",
            "v1.register.w1",
            envelope(keys::READY, json!({"incarnation": 1})),
            ErrorCode::PayloadKeyMismatch,
            None,
        ),
        (
            "schema violation",
            "v1.register.w1",
            envelope(keys::REGISTER, json!({"workerID": "w1", "routines": "r"})),
            ErrorCode::SchemaViolation,
            Some("/payload/routines"),
        ),
        (
            "missing payloadKey",
            "v1.register.w1",
            Bytes::from(json!({"payload": {}}).to_string()),
            ErrorCode::SchemaViolation,
            Some("/payloadKey"),
        ),
        (
            "workerID differs from the subject",
            "v1.register.w1",
            envelope(keys::REGISTER, json!({"workerID": "w2", "routines": []})),
            ErrorCode::WorkerIdMismatch,
            None,
        ),
        (
            "over the size limit",
            "v1.register.w1",
            envelope(
                keys::REGISTER,
                json!({"workerID": "w1", "routines": [], "name": "x".repeat(300 * 1024)}),
            ),
            ErrorCode::PayloadTooLarge,
            None,
        ),
        (
            "unknown worker",
            keys::REGISTRY_GET,
            envelope(keys::REGISTRY_GET, json!({"workerID": "ghost"})),
            ErrorCode::UnknownWorker,
            None,
        ),
        (
            "invalid workerID token",
            "v1.register.bad$id",
            envelope(
                keys::REGISTER,
                json!({"workerID": "bad$id", "routines": []}),
            ),
            ErrorCode::InvalidSubject,
            None,
        ),
    ];
    for (what, subject, body, code, path) in cases {
        let error = refused(client, subject, body).await;
        assert_eq!(error.code, code, "{what}: {error}");
        assert_eq!(error.in_reply_to, subject, "{what}");
        if let Some(path) = path {
            let violations = error.details["violations"].as_array().unwrap();
            assert!(
                violations.iter().any(|v| v["path"] == path),
                "{what}: {path} not named in {violations:?}"
            );
        }
    }
    assert_eq!(snapshot(&fixture.workers).await, before, "state changed");
    still_serving(client).await;
}

#[tokio::test]
async fn malformed_directives_are_answered_on_the_worker_inbox() {
    let fixture = fixture().await;
    let client = &fixture.client;
    let mut worker = WorkerSpec::new("w1", &["r"]).start(client).await;
    let before = settled(&fixture.workers).await;
    let ghost_errors = Recorder::start(client, "v1.worker.ghost.error").await;

    let cases: Vec<(&str, String, Bytes, ErrorCode)> = vec![
        (
            "ready that is not JSON",
            "v1.ready.w1".into(),
            Bytes::from_static(b"ready!"),
            ErrorCode::InvalidJson,
        ),
        (
            "ready with another payloadKey",
            "v1.ready.w1".into(),
            envelope(keys::TERMINATING, json!({"incarnation": 1})),
            ErrorCode::PayloadKeyMismatch,
        ),
        (
            "ready breaking its schema",
            "v1.ready.w1".into(),
            envelope(keys::READY, json!({"incarnation": "one"})),
            ErrorCode::SchemaViolation,
        ),
        (
            "ready with a stale incarnation",
            "v1.ready.w1".into(),
            envelope(keys::READY, json!({"incarnation": 7})),
            ErrorCode::StaleIncarnation,
        ),
        (
            "terminating over the size limit",
            "v1.terminating.w1".into(),
            envelope(
                keys::TERMINATING,
                json!({"incarnation": 1, "reason": "x".repeat(300 * 1024)}),
            ),
            ErrorCode::PayloadTooLarge,
        ),
        (
            "pulse breaking its schema",
            "v1.heartbeat.give_pulse.w1".into(),
            envelope(
                keys::GIVE_PULSE,
                json!({"incarnation": 1, "status": "DANCING"}),
            ),
            ErrorCode::SchemaViolation,
        ),
    ];
    for (what, subject, body, code) in cases {
        client.publish(subject.clone(), body).await.unwrap();
        let error = worker.recv(keys::ERROR, Duration::from_secs(5)).await;
        assert_eq!(
            error.payload["code"],
            code.as_str(),
            "{what}: {:?}",
            error.payload
        );
        assert_eq!(error.payload["inReplyTo"], subject.as_str(), "{what}");
        // Pulse errors are rate-limited to one a second per worker.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A directive from a worker that never registered.
    client
        .publish(
            "v1.ready.ghost",
            envelope(keys::READY, json!({"incarnation": 1})),
        )
        .await
        .unwrap();
    let ghost = wait_for("ghost gets an error", Duration::from_secs(5), || async {
        ghost_errors
            .payloads_on("v1.worker.ghost.error")
            .into_iter()
            .next()
    })
    .await
    .unwrap();
    assert_eq!(ghost["code"], ErrorCode::UnknownWorker.as_str());

    assert_eq!(snapshot(&fixture.workers).await, before, "state changed");
    still_serving(client).await;
}
