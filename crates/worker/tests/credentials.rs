//! The SDK connects with credentials and over TLS: a routine end to end over mutual TLS,
//! a worker authenticating with an nkey seed, and a wrong seed refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{wait_status, PATIENCE};
use drover_integration_tests::runs::{self, spec, submit};
use drover_nats_connect::{NatsAuth, NkeySource};
use drover_protocol::{RunStatus, WorkerStatus};
use drover_testkit::{patient, NatsOptions, Stack, TestPki};
use drover_worker::{CancellationToken, Context, RoutineError, Worker, WorkerError};
use futures::StreamExt;
use serde_json::{json, Value};

async fn echo(_ctx: Context, params: Value) -> Result<Value, RoutineError> {
    Ok(json!({ "echo": params }))
}

async fn stack_with(options: NatsOptions) -> Stack {
    Stack::builder()
        .nats_options(options)
        .with_registry()
        .with_monitor()
        .with_scheduler()
        .start()
        .await
        .expect("stack starts")
}

/// Runs `id` with the echo routine, connecting by itself with `auth`.
fn spawn_worker(
    stack: &Stack,
    id: &str,
    auth: NatsAuth,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), WorkerError>>,
) {
    let shutdown = CancellationToken::new();
    let worker = Worker::builder(id)
        .routine("echo", echo)
        .nats_url(stack.nats_url())
        .nats_auth(auth)
        .grace_period(std::time::Duration::from_secs(2));
    (shutdown.clone(), tokio::spawn(worker.run(shutdown)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routine_runs_end_to_end_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    // Every client must present a certificate signed by the CA; the services get the CA and
    // the client certificate as DROVER_NATS_TLS_* from the stack.
    let stack = stack_with(NatsOptions::default().tls(&pki, true)).await;
    let client = stack.client().await;

    let auth = NatsAuth {
        tls_ca: Some(pki.ca_cert.clone()),
        tls_cert: Some(pki.client_cert.clone()),
        tls_key: Some(pki.client_key.clone()),
        ..Default::default()
    };
    let (shutdown, handle) = spawn_worker(&stack, "tls-worker", auth);
    wait_status(&client, "tls-worker", WorkerStatus::Idle).await;
    let mut request = spec("echo");
    request.params = json!({"over": "tls"});
    let run = submit(&client, &request).await;
    let record = runs::wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    assert_eq!(record.result, Some(json!({"echo": {"over": "tls"}})));

    // Without its certificate the same worker never gets in.
    let no_cert = NatsAuth {
        tls_ca: Some(pki.ca_cert.clone()),
        ..Default::default()
    };
    let (_, refused) = spawn_worker(&stack, "tls-no-cert", no_cert);
    let outcome = tokio::time::timeout(patient(PATIENCE), refused)
        .await
        .expect("the worker gives up in time")
        .unwrap();
    assert!(
        matches!(outcome, Err(WorkerError::Connect { .. })),
        "{outcome:?}"
    );

    shutdown.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_authenticates_with_an_nkey_seed_and_a_wrong_one_is_refused() {
    let services = nkeys::KeyPair::new_user();
    let worker = nkeys::KeyPair::new_user();
    let config = format!(
        "authorization {{\n  users = [\n    {{ nkey: {} }}\n    {{ nkey: {} }}\n  ]\n}}\n",
        services.public_key(),
        worker.public_key()
    );
    let options = NatsOptions::default()
        .config(config)
        .nkey_seed(services.seed().unwrap());
    let stack = stack_with(options).await;
    let client = stack.client().await;
    // The worker's replies come to its own inbox prefix.
    let mut replies = client.subscribe("_INBOX.nk-worker.>").await.unwrap();
    client.flush().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("nk-worker.nk");
    std::fs::write(&seed_file, format!("{}\n", worker.seed().unwrap())).unwrap();
    let auth = NatsAuth {
        nkey: Some(NkeySource::File(seed_file)),
        ..Default::default()
    };
    let (shutdown, handle) = spawn_worker(&stack, "nk-worker", auth);
    wait_status(&client, "nk-worker", WorkerStatus::Idle).await;
    let reply = tokio::time::timeout(patient(PATIENCE), replies.next())
        .await
        .expect("a reply to the worker arrives on _INBOX.nk-worker")
        .unwrap();
    assert!(
        reply.subject.starts_with("_INBOX.nk-worker."),
        "{}",
        reply.subject
    );
    let run = submit(&client, &spec("echo")).await;
    runs::wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;

    // A well-formed seed the server does not know never connects.
    let stranger = NatsAuth {
        nkey: Some(NkeySource::Seed(nkeys::KeyPair::new_user().seed().unwrap())),
        ..Default::default()
    };
    let (_, refused) = spawn_worker(&stack, "stranger", stranger);
    let outcome = tokio::time::timeout(patient(PATIENCE), refused)
        .await
        .expect("the worker gives up in time")
        .unwrap();
    match outcome {
        Err(WorkerError::Connect { source, .. }) => assert_eq!(
            source.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{source}"
        ),
        other => panic!("a stranger's seed was not refused: {other:?}"),
    }
    // And nothing anonymous gets in either.
    assert!(async_nats::connect(stack.nats_url()).await.is_err());

    shutdown.cancel();
    handle.await.unwrap().unwrap();
}
