//! A process's output against a real stack: what it writes before it registers is held and
//! shipped once the pool has seen its registration, in order with what follows, so the
//! log-collector stores it and never answers it with `unknown_worker`; the output of a
//! process that ends without registering is not shipped at all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_pool::{Overrides, PoolConfig, PoolEnd};
use drover_protocol::subject::{self, keys, resources};
use drover_protocol::{LogPage, LogsQuery, RegistryGet, WorkerId, WorkerRecord};
use drover_testkit::{call, patient, wait_for, wait_until, Stack};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

const EARLY: &str = "written before registering";
const LATE: &str = "written after registering";
const NEVER: &str = "written by a process that never registers";

/// Every message sent into `worker`'s error inbox from now on.
async fn errors_of(client: &async_nats::Client, worker: &WorkerId) -> Arc<Mutex<Vec<String>>> {
    let mut inbox = client
        .subscribe(subject::to_worker(worker, keys::ERROR))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(message) = inbox.next().await {
            let text = String::from_utf8_lossy(&message.payload).into_owned();
            sink.lock().unwrap().push(text);
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_written_before_registering_is_stored_in_order_and_never_refused() {
    let stack = Stack::builder()
        .with_all_services()
        .start()
        .await
        .expect("the stack starts");
    let client = stack.client().await;
    let talker = WorkerId::parse("out-talker-1").unwrap();
    let quiet = WorkerId::parse("out-quiet-1").unwrap();
    let talker_errors = errors_of(&client, &talker).await;
    let quiet_errors = errors_of(&client, &quiet).await;

    // The talker prints a line, starts the worker once the test has let the collector read
    // what was shipped, and prints another once the test has seen the worker registered.
    // The quiet one prints and ends for good, unregistered.
    let dir = tempfile::tempdir().unwrap();
    let printed = dir.path().join("printed");
    let start = dir.path().join("start");
    let go = dir.path().join("go");
    let worker = drover_testkit::bin_dir()
        .expect("the test binaries' directory")
        .join("drover-example-worker");
    let script = format!(
        "echo '{EARLY}'; touch '{printed}'; \
         while [ ! -e '{start}' ]; do sleep 0.05; done; '{worker}' & \
         while [ ! -e '{go}' ]; do sleep 0.05; done; echo '{LATE}'; wait",
        printed = printed.display(),
        start = start.display(),
        worker = worker.display(),
        go = go.display(),
    );
    let text = format!(
        r#"
        pool = "out"
        [groups.talker]
        command = "/bin/sh"
        args = ["-c", "{script}"]
        stop_grace = "5s"
        [groups.quiet]
        command = "/bin/sh"
        args = ["-c", "echo '{NEVER}'"]
        restart = "never"
        "#,
        script = script.replace('\\', "\\\\").replace('"', "\\\""),
    );
    let config = PoolConfig::parse(&text, dir.path(), &Overrides::default()).unwrap();
    let shutdown = CancellationToken::new();
    let pool = tokio::spawn(drover_pool::run(config, stack.nats_url(), shutdown.clone()));

    // Whatever the pool shipped of the early line has been read by the collector (the
    // intake is a work queue) before the worker can register.
    let patience = patient(Duration::from_secs(30));
    wait_until("the early line is printed", patience, || async {
        printed.exists()
    })
    .await
    .unwrap();
    let js = stack.jetstream().await;
    wait_until("the collector has read the intake", patience, || {
        let js = js.clone();
        async move {
            match js.get_stream(resources::LOG_INTAKE_STREAM).await {
                Ok(mut intake) => intake
                    .info()
                    .await
                    .is_ok_and(|info| info.state.messages == 0),
                Err(_) => false,
            }
        }
    })
    .await
    .unwrap();
    std::fs::write(&start, b"").unwrap();

    let get = RegistryGet {
        worker_id: talker.clone(),
    };
    wait_for("the talker registers", patience, || {
        let get = get.clone();
        let client = client.clone();
        async move {
            call::<_, WorkerRecord>(&client, keys::REGISTRY_GET, &get)
                .await
                .ok()
        }
    })
    .await
    .unwrap();
    std::fs::write(&go, b"").unwrap();

    let query = LogsQuery {
        worker_id: Some(talker.clone()),
        limit: Some(LogsQuery::MAX_LIMIT),
        ..LogsQuery::default()
    };
    let stored = wait_for("both lines are stored", patience, || {
        let query = query.clone();
        let client = client.clone();
        async move {
            let page = call::<_, LogPage>(&client, keys::LOGS_QUERY, &query)
                .await
                .ok()?;
            let ours: Vec<String> = page
                .logs
                .into_iter()
                .map(|record| record.message)
                .filter(|message| message == EARLY || message == LATE)
                .collect();
            ours.iter().any(|message| message == LATE).then_some(ours)
        }
    })
    .await
    .unwrap();
    assert_eq!(stored, [EARLY, LATE], "stored once each, in order");

    // A refusal of the early line would have come before the late line was stored.
    client.flush().await.unwrap();
    for (worker, errors) in [(&talker, &talker_errors), (&quiet, &quiet_errors)] {
        let errors = errors.lock().unwrap().clone();
        assert!(
            errors.iter().all(|error| !error.contains("unknown_worker")),
            "{worker} was told: {errors:?}"
        );
    }
    let quiet_query = LogsQuery {
        worker_id: Some(quiet.clone()),
        ..LogsQuery::default()
    };
    let page: LogPage = call(&client, keys::LOGS_QUERY, &quiet_query).await.unwrap();
    assert!(page.logs.is_empty(), "{:?}", page.logs);

    shutdown.cancel();
    let end = tokio::time::timeout(patient(Duration::from_secs(30)), pool)
        .await
        .expect("the pool stops")
        .unwrap()
        .unwrap();
    assert_eq!(end, PoolEnd::Clean);
}
