//! `run_service` end to end in this process: configuration errors, a failing body, and a
//! SIGTERM-driven drain. One test, because signals and globals are process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{http_get, wait_until, NatsServer};
use drover_service_kit::metrics::ServiceMetrics;
use drover_service_kit::{run_service, CommonArgs, EXIT_CONFIG};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_serves_and_drains_on_sigterm() {
    // A configuration error exits with 64 before touching anything.
    let bad = CommonArgs {
        config: Some("/nonexistent/drover.toml".into()),
        ..Default::default()
    };
    let code = run_service(
        "kit-test",
        "127.0.0.1:0",
        ServiceMetrics::NONE,
        bad,
        |_| async { Ok(()) },
    )
    .await;
    assert_eq!(code, ExitCode::from(EXIT_CONFIG));

    let server = NatsServer::start();
    std::env::set_var("DROVER_NATS_URL", &server.url);
    std::env::set_var("DROVER_DRAIN_GRACE_MS", "3000");

    // A failing body exits with 1.
    let args = CommonArgs {
        admin_addr: Some("127.0.0.1:0".to_owned()),
        ..Default::default()
    };
    let code = run_service(
        "kit-test",
        "127.0.0.1:0",
        ServiceMetrics::NONE,
        args,
        |_| async { anyhow::bail!("cannot start: {}", "no luck") },
    )
    .await;
    assert_eq!(code, ExitCode::FAILURE);

    // A body that spawns its work and returns runs until SIGTERM, then drains.
    let port = free_port();
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let args = CommonArgs {
        admin_addr: Some(admin.to_string()),
        ..Default::default()
    };
    let drained = Arc::new(AtomicBool::new(false));
    let flag = drained.clone();
    let service = tokio::spawn(run_service(
        "kit-test",
        "127.0.0.1:0",
        ServiceMetrics::NONE,
        args,
        move |ctx| async move {
            assert_eq!(ctx.settings.drain_grace_ms, 3000);
            assert_eq!(ctx.instance_id, ctx.settings.instance_id);
            ctx.js.get_stream("DROVER_QUEUE").await?;
            ctx.readiness.set_serving(true);
            let token = ctx.shutdown.clone();
            ctx.tracker.spawn(async move {
                token.cancelled().await;
                // Cleanup that takes a while but fits in the grace period.
                tokio::time::sleep(Duration::from_millis(200)).await;
                flag.store(true, Ordering::SeqCst);
            });
            Ok(())
        },
    ));

    let ready = wait_until(Duration::from_secs(10), || async {
        http_get(admin, "/readyz")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(ready, "the service became ready");
    let metrics = http_get(admin, "/metrics").await.unwrap();
    assert!(
        metrics.body.contains("drover_service_info"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("drover_jetstream_resources_ready 1"),
        "{}",
        metrics.body
    );

    // A server that comes back with an empty store gets the resources again.
    let port = server.port();
    drop(server);
    let server = NatsServer::start_on(Some(port));
    let js = async_nats::jetstream::new(async_nats::connect(&server.url).await.unwrap());
    let restored = wait_until(Duration::from_secs(15), || async {
        js.get_stream("DROVER_QUEUE").await.is_ok()
            && js.get_key_value("DROVER_LEADERS").await.is_ok()
    })
    .await;
    assert!(restored, "resources ensured again after reconnecting");
    let ready = wait_until(Duration::from_secs(5), || async {
        http_get(admin, "/readyz")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(ready, "ready again after the restart");

    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = tokio::time::timeout(Duration::from_secs(10), service)
        .await
        .expect("the service stops within the grace period")
        .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(
        drained.load(Ordering::SeqCst),
        "tracked tasks ran to completion"
    );
    assert!(
        http_get(admin, "/healthz").await.is_err(),
        "the admin server is down"
    );
}
