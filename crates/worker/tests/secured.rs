//! The SDK on the whole secured setup (docs/security.md): a worker with a credential of its
//! own, over mutual TLS, runs a routine that a client with a submit credential asked for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::PATIENCE;
use drover_auth::credential::ClientRole;
use drover_integration_tests::runs::{self, spec};
use drover_integration_tests::secure::SecureStack;
use drover_integration_tests::wait_registry_status;
use drover_protocol::{RunStatus, WorkerStatus};
use drover_worker::{CancellationToken, Context, RoutineError, Worker};
use serde_json::{json, Value};

async fn echo(ctx: Context, params: Value) -> Result<Value, RoutineError> {
    Ok(json!({ "echo": params, "by": ctx.worker_id().to_string() }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_its_credential_runs_a_routine_over_mutual_tls() {
    let secure = SecureStack::start().await.unwrap();
    let auth = secure.worker_credential("rs-secured").await.unwrap();
    let shutdown = CancellationToken::new();
    let worker = Worker::builder("rs-secured")
        .routine("secured.echo", echo)
        .nats_url(secure.stack.nats_url())
        .nats_auth(auth)
        .grace_period(std::time::Duration::from_secs(2));
    let handle = tokio::spawn(worker.run(shutdown.clone()));

    let services = secure.stack.client().await;
    wait_registry_status(&services, "rs-secured", WorkerStatus::Idle, PATIENCE).await;
    let submitter = secure
        .token_credential("rs-client", ClientRole::Submit)
        .await
        .unwrap();
    let client = secure.connect(&submitter, None).await.unwrap().unwrap();
    let mut request = spec("secured.echo");
    request.params = json!({"over": "mutual tls"});
    let run = runs::submit(&client.client, &request).await;
    let record = runs::wait_status(&client.client, &run, RunStatus::Succeeded, PATIENCE).await;
    assert_eq!(
        record.result,
        Some(json!({"echo": {"over": "mutual tls"}, "by": "rs-secured"}))
    );
    assert!(client.errors().is_empty(), "{:?}", client.errors());

    shutdown.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_run_with_another_workers_credential_stops_with_what_nats_refused() {
    let secure = SecureStack::start().await.unwrap();
    let theirs = secure.worker_credential("rs-owner").await.unwrap();
    let worker = Worker::builder("rs-impostor")
        .routine("secured.echo", echo)
        .nats_url(secure.stack.nats_url())
        .nats_auth(theirs);
    // No shutdown is asked for: the worker ends on its own, with the refusal.
    let ended = tokio::time::timeout(PATIENCE, worker.run(CancellationToken::new()))
        .await
        .expect("the worker stops instead of retrying its registration");
    let error = ended.expect_err("the worker cannot run as rs-impostor");
    let text = error.to_string();
    assert!(
        matches!(error, drover_worker::WorkerError::Refused { .. }),
        "{text}"
    );
    assert!(text.contains("Permissions Violation"), "{text}");
    assert!(text.contains("rs-impostor"), "{text}");

    // Nothing of the impostor reached Drover.
    let services = secure.stack.client().await;
    assert!(
        drover_integration_tests::registry_record(&services, "rs-impostor")
            .await
            .is_none()
    );
}
