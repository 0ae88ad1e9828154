//! At their default log level the services write about their own life (start, leader
//! changes, workers coming and going, errors), never a line per run: a day at 200 runs/s
//! must write megabytes, not gigabytes. `drover-bench soak` measures the real figure; this
//! is its short form.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use drover_integration_tests::runs::{spec, submit, wait_status};
use drover_integration_tests::worker::WorkerSpec;
use drover_integration_tests::{Act, Runner};
use drover_protocol::subject::{keys, resources};
use drover_protocol::{LogLevel, LogLine, RunId, RunStatus};
use drover_testkit::{wait_until, Stack};
use futures::StreamExt;
use serde_json::json;

const WARM_UP: usize = 20;
const RUNS: usize = 400;

/// Each service's log so far, by service.
fn logs(stack: &Stack) -> BTreeMap<String, String> {
    stack
        .service_names()
        .into_iter()
        .map(|name| {
            let log = stack.service(&name).log_contents();
            (name, log)
        })
        .collect()
}

/// Runs `count` runs to SUCCEEDED, 16 at a time, each with one log line from its worker.
async fn run_many(stack: &Stack, runners: &[Runner], count: usize) -> Vec<RunId> {
    let client = stack.client().await;
    let runs: Vec<RunId> = futures::stream::iter(0..count)
        .map(|index| {
            let client = client.clone();
            async move {
                let mut request = spec("quiet.noop");
                request.params = json!({"n": index});
                let run = submit(&client, &request).await;
                wait_status(&client, &run, RunStatus::Succeeded, Duration::from_secs(60)).await;
                run
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (index, run) in runs.iter().enumerate() {
        let line = LogLine {
            level: LogLevel::Info,
            message: format!("did run {index}"),
            run_id: Some(run.clone()),
            fields: None,
            timestamp: None,
        };
        runners[index % runners.len()]
            .worker()
            .publish(keys::LOG, &line)
            .await;
    }
    runs
}

async fn stored_lines(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream(resources::LOGS_STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn the_services_write_no_line_per_run_at_the_default_level() {
    let stack = Stack::builder()
        .with_all_services()
        // An empty filter is no filter: each service's own default level.
        .env("RUST_LOG", "")
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let js = stack.jetstream().await;
    let mut runners = Vec::new();
    for index in 0..2 {
        let worker = WorkerSpec::new(&format!("quiet-w{index}"), &["quiet.noop"])
            .capacity(4)
            .start(&client)
            .await;
        runners.push(Runner::start(worker, |_| Act::Succeed(json!(null))));
    }

    run_many(&stack, &runners, WARM_UP).await;
    wait_until(
        "the warm-up's log lines are stored",
        Duration::from_secs(60),
        || async { stored_lines(&js).await >= WARM_UP as u64 },
    )
    .await
    .unwrap();
    let before = logs(&stack);

    let runs = run_many(&stack, &runners, RUNS).await;
    let expected = (WARM_UP + RUNS) as u64;
    wait_until(
        "every run's log line is stored",
        Duration::from_secs(60),
        || async { stored_lines(&js).await >= expected },
    )
    .await
    .unwrap();
    let after = logs(&stack);

    let mut written = String::new();
    for (name, log) in &after {
        let earlier = before.get(name).map_or(0, String::len);
        let new = log.get(earlier..).unwrap_or_default();
        eprintln!(
            "{name}: {} bytes, {} lines over {RUNS} runs",
            new.len(),
            new.lines().count()
        );
        for line in new.lines() {
            written.push_str(name);
            written.push_str(": ");
            written.push_str(line);
            written.push('\n');
        }
    }
    let mentioned: Vec<&RunId> = runs
        .iter()
        .filter(|run| written.contains(run.as_str()))
        .collect();
    assert!(
        mentioned.is_empty(),
        "{} runs are named in the service logs at the default level:\n{written}",
        mentioned.len()
    );
    assert!(
        written.lines().count() < RUNS / 20,
        "the service logs grew with the runs:\n{written}"
    );
}
