//! The `drover` command against a real stack: output, exit codes, one-line errors, and
//! `drover dev` starting and stopping everything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::time::Duration;

use drover_integration_tests::cli::{collect, drover, processes_mentioning, start_dev, stdout};
use drover_integration_tests::runs::{spec, submit, wait_status};
use drover_integration_tests::worker::WorkerSpec;
use drover_integration_tests::{Act, Runner};
use drover_protocol::RunStatus;
use drover_testkit::{free_port, wait_until, Stack};
use serde_json::{json, Value};
use tokio::io::BufReader;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A failure is one line on stderr, starting with `drover: `, and the given exit code.
fn assert_one_line_error(output: &Output, code: i32, contains: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {text}");
    assert_eq!(text.lines().count(), 1, "more than one line: {text:?}");
    assert!(text.starts_with("drover: "), "{text:?}");
    assert!(text.contains(contains), "{text:?} lacks {contains:?}");
    assert!(
        stdout(output).is_empty(),
        "stdout not empty: {}",
        stdout(output)
    );
}

#[tokio::test]
async fn input_errors_and_an_absent_nats_are_one_line_each() {
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    assert_one_line_error(
        &drover(&nowhere, &["runs", "list"]).await,
        4,
        "cannot reach NATS",
    );
    assert_one_line_error(
        &drover(&nowhere, &["submit", "bad routine!", "--wait"]).await,
        2,
        "invalid routine name",
    );
    assert_one_line_error(
        &drover(&nowhere, &["submit", "ok", "--params", "{oops"]).await,
        2,
        "invalid --params",
    );
    assert_one_line_error(
        &drover(&nowhere, &["submit", "ok", "--env", "NOEQUALS"]).await,
        2,
        "expected KEY=VALUE",
    );
}

#[tokio::test]
async fn runs_workers_and_submit_against_a_stack() {
    let stack = Stack::builder()
        .with_registry()
        .with_monitor()
        .with_scheduler()
        .start()
        .await
        .expect("stack starts");
    let url = stack.nats_url();
    let client = stack.client().await;
    let worker = WorkerSpec::new("cli-worker", &["cli.echo", "cli.fail"])
        .label("team", "cli")
        .start(&client)
        .await;
    let _runner = Runner::start(worker, |assignment| {
        if assignment.routine_id == "cli.fail" {
            Act::Fail(drover_protocol::RunError::new("Nope", "it did not work"))
        } else {
            Act::Succeed(json!({"echo": assignment.params}))
        }
    });

    // An unknown run: exit 3, one line.
    assert_one_line_error(
        &drover(&url, &["runs", "get", "does-not-exist"]).await,
        3,
        "does-not-exist",
    );
    assert_one_line_error(
        &drover(&url, &["runs", "cancel", "does-not-exist"]).await,
        3,
        "does-not-exist",
    );
    assert_one_line_error(
        &drover(&url, &["workers", "get", "nobody"]).await,
        3,
        "nobody",
    );

    // submit prints the runID; --wait waits and exits 0 on success.
    let output = drover(&url, &["submit", "cli.echo", "--params", r#"{"n": 1}"#]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let run = drover_protocol::RunId::parse(stdout(&output).trim()).expect("a runID on stdout");
    wait_status(&client, &run, RunStatus::Succeeded, Duration::from_secs(10)).await;
    let output = drover(
        &url,
        &[
            "submit",
            "cli.echo",
            "--params",
            r#"{"n": 2}"#,
            "--wait",
            "--json",
            "--env",
            "A=b",
            "--label",
            "team=cli",
            "--max-retries",
            "1",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let record: Value = serde_json::from_str(&stdout(&output)).expect("JSON on stdout");
    assert_eq!(record["status"], "SUCCEEDED");
    assert_eq!(record["result"], json!({"echo": {"n": 2}}));
    assert_eq!(record["env"]["A"], "b");
    assert_eq!(record["conditions"]["labels"]["team"], "cli");
    // A failed run: exit 1, and the reason on stderr.
    let output = drover(&url, &["submit", "cli.fail", "--wait"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("FAILED"), "{}", stderr(&output));
    assert!(stdout(&output).contains("it did not work"));

    // runs list, as a table and as JSON; runs get.
    let output = drover(&url, &["runs", "list"]).await;
    assert!(output.status.success());
    assert!(
        stdout(&output).contains("SUCCEEDED") && stdout(&output).contains("cli.echo"),
        "{}",
        stdout(&output)
    );
    let output = drover(&url, &["runs", "list", "--json", "--status", "FAILED"]).await;
    let runs: Vec<Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["routineID"], "cli.fail");
    let output = drover(&url, &["runs", "get", run.as_str()]).await;
    assert!(stdout(&output).contains("SUCCEEDED") && stdout(&output).contains("transitions"));

    // cancel a pending run.
    let pending = submit(&client, &spec("cli.nobody")).await;
    let output = drover(
        &url,
        &["runs", "cancel", pending.as_str(), "--reason", "test"],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("CANCELLED"));

    // workers.
    let output = drover(&url, &["workers", "list", "--json", "--label", "team=cli"]).await;
    let workers: Vec<Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0]["workerID"], "cli-worker");
    let output = drover(&url, &["workers", "get", "cli-worker"]).await;
    assert!(stdout(&output).contains("cli.echo"), "{}", stdout(&output));

    // status: the log-collector is not running here, so the stack is incomplete.
    let output = drover(&url, &["status", "--json"]).await;
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["healthy"], false);
    assert!(report["services"]["drover-registry"].is_array());
    assert!(report["services"]["drover-heartbeat-monitor"].is_array());
    assert!(report["services"]["drover-log-collector"].is_null());
    assert!(report["streams"]["DROVER_QUEUE"]["messages"].is_u64());
}

#[tokio::test]
async fn drover_dev_runs_the_demo_and_ctrl_c_leaves_nothing_behind() {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut dev = start_dev(state.path(), port);
    // What it prints, as a new user would see it.
    let printed = collect(BufReader::new(dev.stdout.take().unwrap()));
    wait_until("the stack is healthy", Duration::from_secs(60), || async {
        drover(&url, &["status"]).await.status.success()
    })
    .await
    .unwrap();
    // The demo workflow runs and visibly succeeds.
    wait_until(
        "the demo workflow succeeds",
        Duration::from_secs(60),
        || async { printed.lock().unwrap().contains("demo workflow SUCCEEDED") },
    )
    .await
    .unwrap();
    let text = printed.lock().unwrap().clone();
    let run = text
        .lines()
        .find_map(|line| line.strip_prefix("demo workflow: run "))
        .expect("the demo prints its runID")
        .trim()
        .to_owned();
    let listed = drover(&url, &["runs", "list"]).await;
    assert!(
        stdout(&listed).contains("demo.workflow") && stdout(&listed).contains(&run),
        "{}",
        stdout(&listed)
    );
    wait_until(
        "the demo run's logs are stored",
        Duration::from_secs(10),
        || async { stdout(&drover(&url, &["logs", "--run", &run]).await).contains("cat.png") },
    )
    .await
    .unwrap();
    // The services log at info (not the CLI's own quiet setting).
    let scheduler_log =
        std::fs::read_to_string(state.path().join("logs/drover-scheduler.log")).unwrap();
    assert!(
        scheduler_log.contains("scheduler serving"),
        "scheduler log: {scheduler_log:?}"
    );
    // The example workers run under the pool `dev`, group `example`.
    let pooled = || async {
        let listed = drover(&url, &["workers", "list", "--json", "--label", "pool=dev"]).await;
        let workers: Vec<Value> = serde_json::from_str(&stdout(&listed)).unwrap_or_default();
        let mut ids: Vec<String> = workers
            .iter()
            .filter(|worker| worker["labels"]["group"] == "example")
            .filter(|worker| matches!(worker["status"].as_str(), Some("IDLE" | "WORKING")))
            .filter_map(|worker| worker["workerID"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    };
    wait_until(
        "the pool's two example workers are up",
        Duration::from_secs(10),
        || async { pooled().await == ["dev-example-1", "dev-example-2"] },
    )
    .await
    .unwrap();
    let marker = state.path().to_string_lossy().into_owned();
    let url_marker = format!("DROVER_NATS_URL={url}");
    // Besides `drover dev` itself (its command line names the state directory too); the pool
    // names both.
    let dev_pid = dev.id().unwrap();
    let mut running = processes_mentioning(&marker, Some(dev_pid));
    running.extend(processes_mentioning(&url_marker, Some(dev_pid)));
    running.sort_unstable();
    running.dedup();
    assert_eq!(
        running.len(),
        9,
        "nats-server, four services, the console, the pool and its two workers should be running"
    );
    // The summary says where the console serves and the token it made; the console's HTTP
    // API answers there.
    let summary = printed.lock().unwrap().clone();
    let console: std::net::SocketAddr = summary
        .lines()
        .find_map(|line| line.trim().strip_prefix("console        http://"))
        .and_then(|rest| rest.split('/').next())
        .expect("the summary gives the console's address")
        .parse()
        .unwrap();
    let token = summary
        .lines()
        .find_map(|line| line.trim().strip_prefix("console token  "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the summary gives the console's token");
    assert_eq!(token.len(), 32, "a UUID v4 in hex: {token}");
    let (code, body) = drover_testkit::http_get(console, "/api/v1/openapi.json")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let openapi: Value = serde_json::from_str(&body).unwrap();
    assert!(openapi.get("openapi").is_some(), "{body}");
    // The summary says how to scale the pool, and that works.
    assert!(
        summary.contains("drover pool scale dev example --target 3"),
        "{summary}"
    );
    let scaled = drover(&url, &["pool", "scale", "dev", "example", "--target", "3"]).await;
    assert!(scaled.status.success(), "{}", stderr(&scaled));
    wait_until(
        "a third example worker is up",
        Duration::from_secs(30),
        || async { pooled().await == ["dev-example-1", "dev-example-2", "dev-example-3"] },
    )
    .await
    .unwrap();
    // Ctrl-C.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev_pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), dev.wait())
        .await
        .expect("drover dev stops")
        .unwrap();
    assert!(status.success(), "exit {status}");
    assert!(
        processes_mentioning(&marker, None).is_empty(),
        "nats-server left behind"
    );
    assert!(
        processes_mentioning(&url_marker, None).is_empty(),
        "services, the pool or its workers left behind"
    );
    assert!(!drover(&url, &["status"]).await.status.success());
    assert!(state.path().join("logs/drover-scheduler.log").is_file());
}
