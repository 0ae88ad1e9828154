//! `drover dev --secure --demo`: the secured setup on one machine, as a new user runs it.
//! The demo succeeds with credentials of its own, a client without credentials is refused,
//! and the variables `drover dev` prints are enough for the CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use drover_integration_tests::cli::{collect, drover_binary, start_dev_with};
use drover_testkit::{free_port, wait_until};
use tokio::io::BufReader;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drover_dev_secure_runs_the_demo_with_credentials_and_refuses_strangers() {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut dev = start_dev_with(state.path(), port, &["--secure"]);
    let printed = collect(BufReader::new(dev.stdout.take().unwrap()));
    wait_until(
        "the demo workflow succeeds",
        Duration::from_secs(90),
        || async { printed.lock().unwrap().contains("demo workflow SUCCEEDED") },
    )
    .await
    .unwrap();
    let text = printed.lock().unwrap().clone();
    // The shell variables it prints for a client that may submit.
    let exports: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let url = exports
        .iter()
        .find(|(name, _)| name == "DROVER_NATS_URL")
        .map(|(_, value)| value.clone())
        .expect("the URL is printed");
    assert_eq!(url, format!("tls://127.0.0.1:{port}"));
    assert!(
        exports.iter().any(|(name, _)| name == "DROVER_NATS_NKEY"),
        "{text}"
    );

    let cli = |with_exports: bool| {
        let mut command = tokio::process::Command::new(drover_binary());
        command.args(["runs", "list"]).env("DROVER_NATS_URL", &url);
        for var in drover_nats_connect::ENV_VARS {
            command.env_remove(var);
        }
        if with_exports {
            command.envs(exports.iter().cloned());
        }
        command.output()
    };
    let listed = cli(true).await.unwrap();
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(stdout.contains("demo.workflow"), "{stdout}");
    let stranger = cli(false).await.unwrap();
    assert_eq!(stranger.status.code(), Some(4), "{stranger:?}");

    // Each example worker came in with the pool's credential, under its own workerID.
    let auth_log = std::fs::read_to_string(state.path().join("logs/drover-auth.log")).unwrap();
    for worker in ["dev-example-1", "dev-example-2"] {
        assert!(
            auth_log.contains(&format!(
                "credential=dev-pool host=\"127.0.0.1\" connection=\"{worker}\""
            )),
            "{auth_log}"
        );
    }
    // Ctrl-C stops everything it started.
    let pid = nix::unistd::Pid::from_raw(dev.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), dev.wait())
        .await
        .expect("drover dev stops after Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
