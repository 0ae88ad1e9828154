//! A second SIGTERM during the drain ends the process at once with status 130. The test
//! re-runs this test binary as the service process, so the exit does not take the harness down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, wait_until, NatsServer};
use drover_service_kit::metrics::ServiceMetrics;
use drover_service_kit::{run_service, CommonArgs};

const CHILD_ENV: &str = "DROVER_KIT_SIGNAL_CHILD";

/// The service process: a tracked task that ignores shutdown keeps the drain going.
#[tokio::test]
#[ignore = "run by second_signal_exits_at_once as a child process"]
async fn child_service() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let code = run_service(
        "kit-signal-test",
        "127.0.0.1:0",
        ServiceMetrics::NONE,
        CommonArgs::default(),
        |ctx| async move {
            ctx.readiness.set_serving(true);
            ctx.tracker
                .spawn(tokio::time::sleep(Duration::from_secs(120)));
            Ok(())
        },
    )
    .await;
    panic!("run_service returned {code:?}; the second signal should have ended the process");
}

fn signal(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn second_signal_exits_at_once() {
    let server = NatsServer::start();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_service", "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .env("DROVER_NATS_URL", &server.url)
        .env("DROVER_ADMIN_ADDR", admin.to_string())
        .env("DROVER_DRAIN_GRACE_MS", "60000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let ready = wait_until(Duration::from_secs(20), || async {
        http_get(admin, "/readyz")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(ready, "the child service became ready");

    signal(child.id());
    let draining = wait_until(Duration::from_secs(5), || async {
        http_get(admin, "/readyz")
            .await
            .is_ok_and(|r| r.status == 503 && r.body.contains("draining"))
    })
    .await;
    assert!(
        draining,
        "the first signal starts the drain and readiness drops"
    );
    assert!(child.try_wait().unwrap().is_none(), "still draining");

    let sent = Instant::now();
    signal(child.id());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "the second signal did not end it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(130));
}
