//! `drover dev` restarts a process that exits (a service, nats-server), with a growing
//! wait, and Ctrl-C still stops everything during that wait.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use drover_integration_tests::cli::{collect, drover, processes_mentioning, start_dev, stdout};
use drover_testkit::{free_port, http_get, wait_for, wait_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::BufReader;

/// How long `drover dev --demo` may take to start everything and run the demo workflow.
const STARTED: Duration = Duration::from_secs(90);
/// How long a restart may take, its wait included, until the service is ready again.
const RESTARTED: Duration = Duration::from_secs(30);
/// How long `drover dev` may take to stop everything after Ctrl-C.
const STOPPED: Duration = Duration::from_secs(30);

/// The word after `after` on the first line that contains both `key` and `after`.
fn field(text: &str, key: &str, after: &str) -> Option<String> {
    text.lines()
        .filter(|line| line.contains(key))
        .find_map(|line| line.split_once(after))
        .map(|(_, rest)| {
            rest.trim_start()
                .split(|c: char| c.is_whitespace() || c == ')' || c == '/')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
}

/// Submits `demo.greet` and waits for its greeting.
async fn greet(url: &str, name: &str) {
    let params = format!(r#"{{"name":"{name}"}}"#);
    let submitted = drover(
        url,
        &["submit", "demo.greet", "--params", &params, "--wait"],
    )
    .await;
    assert!(
        submitted.status.success() && stdout(&submitted).contains(&format!("hello, {name}")),
        "a run after the restart: {submitted:?}"
    );
}

#[tokio::test]
async fn drover_dev_restarts_what_is_killed_and_ctrl_c_stops_during_the_wait() {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut dev = start_dev(state.path(), port);
    let dev_pid = dev.id().unwrap();
    let printed = collect(BufReader::new(dev.stdout.take().unwrap()));
    let said = collect(BufReader::new(dev.stderr.take().unwrap()));
    let printed_text = || printed.lock().unwrap().clone();
    let said_text = || said.lock().unwrap().clone();

    wait_until("the demo workflow succeeds", STARTED, || async {
        printed_text().contains("demo workflow SUCCEEDED")
    })
    .await
    .unwrap_or_else(|error| {
        panic!(
            "{error}\nstdout:\n{}\nstderr:\n{}",
            printed_text(),
            said_text()
        )
    });
    // The summary says where the scheduler listens and which process it is.
    let summary = printed_text();
    let admin: SocketAddr = field(&summary, "drover-scheduler", "http://")
        .expect("the summary gives the scheduler's admin address")
        .parse()
        .unwrap();
    let first_pid: i32 = field(&summary, "drover-scheduler.log", "(pid")
        .expect("the summary gives the scheduler's pid")
        .parse()
        .unwrap();
    let log = state.path().join("logs/drover-scheduler.log");
    let log = std::fs::canonicalize(log).unwrap();

    // Killed, the scheduler is started again after a second, and serves.
    kill(Pid::from_raw(first_pid), Signal::SIGKILL).unwrap();
    let restarting = format!("restarting in 1s (restart 1); see {}", log.display());
    let second_pid: i32 = wait_for("the scheduler is restarted", RESTARTED, || async {
        let text = said_text();
        let exited = text.lines().any(|line| {
            line.starts_with("drover dev: drover-scheduler exited (signal: 9")
                && line.ends_with(&restarting)
        });
        exited
            .then(|| field(&text, "drover-scheduler restarted", "(pid"))
            .flatten()
            .and_then(|pid| pid.parse().ok())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\nstderr:\n{}", said_text()));
    assert_ne!(second_pid, first_pid);
    wait_until("the scheduler is ready again", RESTARTED, || async {
        matches!(http_get(admin, "/readyz").await, Ok((200, _)))
    })
    .await
    .unwrap();
    greet(&url, "Ada").await;

    // nats-server too comes back, on its port and store, and the stack carries on.
    let nats_pid: i32 = field(&summary, "nats-server.log", "(pid")
        .expect("the summary gives nats-server's pid")
        .parse()
        .unwrap();
    kill(Pid::from_raw(nats_pid), Signal::SIGKILL).unwrap();
    wait_until("nats-server is restarted", RESTARTED, || async {
        let text = said_text();
        text.contains("drover dev: nats-server exited (signal: 9")
            && text.contains("drover dev: nats-server restarted")
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\nstderr:\n{}", said_text()));
    wait_until("the stack is healthy again", RESTARTED, || async {
        drover(&url, &["status"]).await.status.success()
    })
    .await
    .unwrap();
    greet(&url, "Grace").await;

    // Killed again, it would wait two seconds; Ctrl-C in that wait stops everything.
    kill(Pid::from_raw(second_pid), Signal::SIGKILL).unwrap();
    wait_until("the second restart is scheduled", RESTARTED, || async {
        said_text().contains("restarting in 2s (restart 2)")
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\nstderr:\n{}", said_text()));
    kill(Pid::from_raw(dev_pid as i32), Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(drover_testkit::patient(STOPPED), dev.wait())
        .await
        .expect("drover dev stops")
        .unwrap();
    assert!(status.success(), "exit {status}; stderr:\n{}", said_text());
    let text = said_text();
    assert_eq!(
        text.matches("drover-scheduler restarted").count(),
        1,
        "not restarted after Ctrl-C:\n{text}"
    );
    assert_eq!(
        text.matches(" exited (").count(),
        3,
        "only the scheduler (twice) and nats-server exited:\n{text}"
    );
    let marker = state.path().to_string_lossy().into_owned();
    assert!(
        processes_mentioning(&marker, Some(dev_pid)).is_empty(),
        "nats-server left behind"
    );
    assert!(
        processes_mentioning(&format!("DROVER_NATS_URL={url}"), Some(dev_pid)).is_empty(),
        "services left behind"
    );
}
