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
