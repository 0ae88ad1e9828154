//! Which requests of the `drover` command carry trace context: a submission carries its
//! `drover.submit` span, so that the run's trace starts there, and nothing else does. Polls
//! while waiting, log queries (once or following) and the other queries carry none, so that
//! they make no traces of their own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use drover_integration_tests::cli::{drover, drover_binary, stdout};
use drover_integration_tests::worker::WorkerSpec;
use drover_integration_tests::{Act, Runner};
use drover_protocol::subject::keys;
use drover_protocol::trace::{TraceParent, TRACEPARENT};
use drover_testkit::{wait_until, Stack};
use futures::StreamExt;
use serde_json::{json, Value};

/// A request seen: its subject and the `traceparent` it carried.
type Seen = (String, Option<String>);

/// The requests seen on some subjects.
#[derive(Clone, Default)]
struct Requests(Arc<Mutex<Vec<Seen>>>);

impl Requests {
    /// Listens on `subjects` next to the services (a plain subscriber gets a copy).
    async fn watch(client: &Client, subjects: &[&str]) -> Self {
        let seen = Self::default();
        for subject in subjects {
            let mut subscriber = client.subscribe(subject.to_string()).await.unwrap();
            let sink = seen.clone();
            tokio::spawn(async move {
                while let Some(message) = subscriber.next().await {
                    let traceparent = message
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get(TRACEPARENT))
                        .map(|value| value.as_str().to_owned());
                    sink.0
                        .lock()
                        .unwrap()
                        .push((message.subject.to_string(), traceparent));
                }
            });
        }
        client.flush().await.unwrap();
        seen
    }

    /// Takes what was seen so far.
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn count(&self, subject: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(seen, _)| seen == subject)
            .count()
    }
}

/// The requests on `subject` among `seen`, and the traceparents they carried.
fn on<'a>(seen: &'a [Seen], subject: &str) -> Vec<&'a Option<String>> {
    seen.iter()
        .filter(|(seen, _)| seen == subject)
        .map(|(_, traceparent)| traceparent)
        .collect()
}

fn only_the_submission_traced(seen: &[Seen]) {
    let traced: Vec<_> = seen.iter().filter(|(_, tp)| tp.is_some()).collect();
    assert_eq!(traced.len(), 1, "{seen:?}");
    assert_eq!(traced[0].0, keys::REQUEST_START, "{seen:?}");
}

fn none_traced(seen: &[Seen]) {
    let traced: Vec<_> = seen.iter().filter(|(_, tp)| tp.is_some()).collect();
    assert!(
        traced.is_empty(),
        "queries carried trace context: {traced:?}"
    );
}

#[tokio::test]
async fn only_the_submission_carries_trace_context() {
    let stack = Stack::builder()
        .with_registry()
        .with_monitor()
        .with_scheduler()
        .with_log_collector()
        .start()
        .await
        .expect("stack starts");
    let url = stack.nats_url();
    let client = stack.client().await;
    let worker = WorkerSpec::new("cli-trace-worker", &["cli.slow"])
        .start(&client)
        .await;
    // Slow enough that the waiting CLI polls the run a few times.
    let _runner = Runner::start(worker, |_| {
        Act::After(
            Duration::from_millis(1500),
            Box::new(Act::Succeed(json!("done"))),
        )
    });
    let requests = Requests::watch(
        &client,
        &[
            keys::REQUEST_START,
            keys::RUN_GET,
            keys::RUN_LIST,
            keys::LOGS_QUERY,
            keys::REGISTRY_LIST,
        ],
    )
    .await;

    // submit --wait: the submission carries the submit span; the polls nothing.
    let output = drover(&url, &["submit", "cli.slow", "--wait", "--json"]).await;
    assert!(output.status.success(), "{output:?}");
    let record: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let seen = requests.take();
    let submitted = on(&seen, keys::REQUEST_START);
    let [Some(submitted)] = submitted.as_slice() else {
        panic!("one traced submission, got {seen:?}")
    };
    let submitted = TraceParent::parse(submitted).unwrap();
    assert_eq!(record["traceID"], submitted.trace_id, "the run's trace");
    assert!(on(&seen, keys::RUN_GET).len() >= 2, "{seen:?}");
    only_the_submission_traced(&seen);

    // submit --follow: log queries too, and nothing traced but the submission.
    let output = drover(&url, &["submit", "cli.slow", "--follow"]).await;
    assert!(output.status.success(), "{output:?}");
    let seen = requests.take();
    assert!(!on(&seen, keys::LOGS_QUERY).is_empty(), "{seen:?}");
    only_the_submission_traced(&seen);

    // Pure queries carry nothing: logs, runs, workers.
    let run = record["runID"].as_str().unwrap();
    for args in [
        &["logs", "--run", run][..],
        &["runs", "get", run],
        &["runs", "list"],
        &["workers", "list"],
    ] {
        let output = drover(&url, args).await;
        assert!(output.status.success(), "{args:?}: {output:?}");
    }
    let seen = requests.take();
    for subject in [
        keys::RUN_GET,
        keys::RUN_LIST,
        keys::LOGS_QUERY,
        keys::REGISTRY_LIST,
    ] {
        assert!(!on(&seen, subject).is_empty(), "{subject}: {seen:?}");
    }
    none_traced(&seen);

    // logs --follow: every poll untraced, until interrupted.
    let mut follow = tokio::process::Command::new(drover_binary())
        .args(["logs", "--run", run, "--follow"])
        .env("DROVER_NATS_URL", &url)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("drover runs");
    wait_until("three log polls", Duration::from_secs(15), || async {
        requests.count(keys::LOGS_QUERY) >= 3
    })
    .await
    .unwrap();
    follow.kill().await.unwrap();
    none_traced(&requests.take());
}
