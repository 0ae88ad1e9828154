//! The supervising loop against a real stack and real processes: the start-up order is
//! enforced, and the admin port serves the pool's metrics.
//!
//! The processes are the Rust example worker (built with the workspace), wrapped in `sh`
//! where a test needs to bend what it is told.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use drover_pool::{Overrides, PoolConfig, PoolEnd};
use drover_testkit::{patient, wait_until, Stack};
use tokio_util::sync::CancellationToken;

fn example_worker() -> PathBuf {
    drover_testkit::bin_dir()
        .expect("the test binaries' directory")
        .join("drover-example-worker")
}

fn config(text: &str) -> PoolConfig {
    let dir = std::env::temp_dir();
    PoolConfig::parse(text, &dir, &Overrides::default()).expect("valid test configuration")
}

async fn stack() -> Stack {
    Stack::builder()
        .with_registry()
        .with_monitor()
        .with_scheduler()
        .start()
        .await
        .expect("the stack starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_registers_under_another_worker_id_is_a_critical_error() {
    let stack = stack().await;
    let worker = example_worker();
    let text = format!(
        r#"
        pool = "order"
        [groups.honest]
        command = "{worker}"
        stop_grace = "5s"
        [groups.liar]
        command = "/bin/sh"
        args = ["-c", "DROVER_WORKER_ID=someone-else exec {worker}"]
        stop_grace = "5s"
        "#,
        worker = worker.display()
    );
    let end = tokio::time::timeout(
        patient(Duration::from_secs(60)),
        drover_pool::run(config(&text), stack.nats_url(), CancellationToken::new()),
    )
    .await
    .expect("the pool ends by itself")
    .expect("the pool runs");
    match end {
        PoolEnd::Critical(reason) => {
            assert!(
                reason.contains("started as order-liar-1 registered as someone-else"),
                "{reason}"
            );
        }
        other => panic!("expected a critical shutdown, got {other:?}"),
    }
    // `run` returned, so the honest process has exited too: nothing is left running.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_start_is_a_critical_error() {
    let stack = stack().await;
    let text = r#"
        pool = "missing"
        [groups.g]
        command = "/nonexistent/worker"
        size = 3
        max = 3
    "#;
    let end = drover_pool::run(config(text), stack.nats_url(), CancellationToken::new())
        .await
        .expect("the pool runs");
    match end {
        PoolEnd::Critical(reason) => {
            assert!(reason.contains("cannot start missing-g-1"), "{reason}");
            assert!(reason.contains("/nonexistent/worker"), "{reason}");
        }
        other => panic!("expected a critical shutdown, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_serves_the_pool_metrics_and_a_shutdown_ends_cleanly() {
    let stack = stack().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        r#"
        pool = "metrics"
        admin_addr = "127.0.0.1:{port}"
        [groups.g]
        command = "{}"
        size = 2
        max = 2
        stop_grace = "5s"
        "#,
        example_worker().display()
    );
    let shutdown = CancellationToken::new();
    let pool = tokio::spawn(drover_pool::run(
        config(&text),
        stack.nats_url(),
        shutdown.clone(),
    ));
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_until(
        "both processes running in the metrics",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let Ok(response) = reqwest::get(&url).await else {
                    return false;
                };
                let body = response.text().await.unwrap_or_default();
                body.contains(r#"drover_pool_processes{group="g",state="RUNNING"} 2"#)
                    && body.contains(r#"drover_pool_target{group="g"} 2"#)
                    && body.contains(r#"drover_pool_exits_total{group="g",class="unexpected"} 0"#)
            }
        },
    )
    .await
    .unwrap();
    shutdown.cancel();
    let end = tokio::time::timeout(patient(Duration::from_secs(30)), pool)
        .await
        .expect("the pool stops in time")
        .unwrap()
        .unwrap();
    assert_eq!(end, PoolEnd::Clean);
}

/// `drover pool run` as a child process, stopped gracefully when dropped so that it stops
/// its own processes.
struct PoolProcess(std::process::Child);

impl PoolProcess {
    fn start(config: &std::path::Path, url: &str) -> Self {
        let child = std::process::Command::new(drover_testkit::bin_dir().unwrap().join("drover"))
            .args(["pool", "run"])
            .arg(config)
            .args(["--nats-url", url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("drover runs");
        Self(child)
    }
}

impl Drop for PoolProcess {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = std::time::Instant::now() + patient(Duration::from_secs(20));
        while std::time::Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn running_pids(client: &async_nats::Client, pool: &str, count: usize) -> Vec<u32> {
    let subject =
        drover_protocol::subject::pool::status(&drover_protocol::PoolId::parse(pool).unwrap());
    drover_testkit::wait_for(
        "the pool's processes running",
        Duration::from_secs(30),
        || {
            let (client, subject) = (client.clone(), subject.clone());
            async move {
                let state: drover_protocol::PoolState =
                    drover_testkit::call(&client, subject, &drover_protocol::PoolStatus {})
                        .await
                        .ok()?;
                let pids: Vec<u32> = state.groups[0]
                    .processes
                    .iter()
                    .filter(|process| process.state == drover_protocol::ProcessPhase::Running)
                    .filter_map(|process| process.pid)
                    .collect();
                (pids.len() == count).then_some(pids)
            }
        },
    )
    .await
    .unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pool_with_the_same_id_is_refused_and_a_restarted_pool_stops_only_what_a_killed_one_left(
) {
    let here = stack().await;
    let client = here.client().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pool.toml");
    std::fs::write(
        &config,
        format!(
            "pool = \"again\"\n[groups.g]\ncommand = \"{}\"\nsize = 2\nmax = 2\nstop_grace = \"5s\"\n",
            example_worker().display()
        ),
    )
    .unwrap();
    let mut first = PoolProcess::start(&config, &here.nats_url());
    let old = running_pids(&client, "again", 2).await;

    let second = PoolProcess::start(&config, &here.nats_url());
    let output = tokio::task::spawn_blocking(move || {
        let mut second = second;
        let status = second.0.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(second.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    assert!(!output.0.success(), "{}", output.1);
    assert!(
        output.1.contains("a pool again is already running"),
        "{}",
        output.1
    );
    assert!(
        old.iter().all(|pid| alive(*pid)),
        "the running pool's processes are untouched"
    );

    // A pool of the same name on another NATS system is another pool.
    let elsewhere = stack().await;
    let _neighbour = PoolProcess::start(&config, &elsewhere.nats_url());
    let neighbours = running_pids(&elsewhere.client().await, "again", 2).await;

    // Killed, the pool cannot stop its processes: they outlive it.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(old.iter().all(|pid| alive(*pid)));
    let _third = PoolProcess::start(&config, &here.nats_url());
    let new = running_pids(&client, "again", 2).await;
    assert!(new.iter().all(|pid| !old.contains(pid)));
    wait_until(
        "the left-behind processes are gone",
        Duration::from_secs(10),
        || {
            let old = old.clone();
            async move { old.iter().all(|pid| !alive(*pid)) }
        },
    )
    .await
    .unwrap();
    assert!(
        neighbours.iter().all(|pid| alive(*pid)),
        "the other system's pool keeps its processes"
    );
}
