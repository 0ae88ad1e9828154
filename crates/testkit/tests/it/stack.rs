use std::time::Duration;

use drover_testkit::Stack;
use futures::StreamExt;

use crate::process_exists;

/// The sleeper stands in for a Drover service: it takes `--admin-addr` and serves `/readyz`.
const FAKE: &str = "testkit-sleeper";

#[tokio::test]
async fn nats_only_stack_starts_and_restarts_nats() -> anyhow::Result<()> {
    let mut stack = Stack::builder().start().await?;
    assert!(stack.service_names().is_empty());
    let client = stack.client().await;
    let sub = tokio::sync::Mutex::new(client.subscribe("testkit.stack").await?);
    client.flush().await?;
    let port = stack.nats.port();

    stack.restart_nats().await?;

    assert_eq!(stack.nats.port(), port);
    assert_eq!(stack.nats_url(), format!("nats://127.0.0.1:{port}"));
    // The old client resubscribes on reconnect; publish until the message comes back.
    let publisher = stack.client().await;
    let message = drover_testkit::wait_for(
        "a message after the restart",
        Duration::from_secs(10),
        || async {
            publisher
                .publish("testkit.stack", "again".into())
                .await
                .ok()?;
            tokio::time::timeout(Duration::from_millis(200), sub.lock().await.next())
                .await
                .ok()
                .flatten()
        },
    )
    .await?;
    assert_eq!(message.payload.as_ref(), b"again");
    Ok(())
}

#[tokio::test]
async fn services_get_the_stack_settings_and_are_awaited() -> anyhow::Result<()> {
    let mut stack = Stack::builder()
        .heartbeat_interval_ms(150)
        .lost_after_ms(900)
        .with_service(FAKE)
        .env("RUST_LOG", "debug")
        .service_env(FAKE, "TESTKIT_ONLY_FAKE", "yes")
        .service_arg(FAKE, "--ready-after-ms")
        .service_arg(FAKE, "300")
        .service_arg(FAKE, "--echo-env")
        .service_arg(FAKE, "DROVER_NATS_URL")
        .service_arg(FAKE, "--echo-env")
        .service_arg(FAKE, "DROVER_HEARTBEAT_INTERVAL_MS")
        .service_arg(FAKE, "--echo-env")
        .service_arg(FAKE, "DROVER_LOST_AFTER_MS")
        .service_arg(FAKE, "--echo-env")
        .service_arg(FAKE, "RUST_LOG")
        .service_arg(FAKE, "--echo-env")
        .service_arg(FAKE, "TESTKIT_ONLY_FAKE")
        .start()
        .await?;

    // start() returned, so /readyz already answered 200 (after the 300 ms warm-up).
    assert_eq!(stack.admin_get(FAKE, "/readyz").await?.0, 200);
    let log = stack.service(FAKE).log_contents();
    for expected in [
        format!("env DROVER_NATS_URL={}", stack.nats_url()),
        "env DROVER_HEARTBEAT_INTERVAL_MS=150".to_string(),
        "env DROVER_LOST_AFTER_MS=900".to_string(),
        "env RUST_LOG=debug".to_string(),
        "env TESTKIT_ONLY_FAKE=yes".to_string(),
        format!("sleeper admin on {}", stack.admin_addr(FAKE)),
    ] {
        assert!(log.contains(&expected), "missing {expected:?} in:\n{log}");
    }

    let old_pid = stack.service(FAKE).pid();
    stack.restart_service(FAKE).await?;
    let new_pid = stack.service(FAKE).pid();
    assert_ne!(old_pid, new_pid);
    assert!(!process_exists(old_pid));
    assert_eq!(stack.admin_get(FAKE, "/readyz").await?.0, 200);

    let status = stack
        .terminate_service(FAKE, Duration::from_secs(10))
        .await?
        .expect("exits on SIGTERM");
    assert!(status.success());
    Ok(())
}

#[tokio::test]
async fn a_service_that_dies_at_start_fails_the_stack_with_its_log() -> anyhow::Result<()> {
    let error = Stack::builder()
        .with_service(FAKE)
        .service_arg(FAKE, "--exit-after-ms")
        .service_arg(FAKE, "0")
        .service_arg(FAKE, "--exit-code")
        .service_arg(FAKE, "2")
        .start()
        .await
        .expect_err("the service exits before it is ready");
    let message = format!("{error:#}");
    assert!(message.contains("testkit-sleeper exited"), "{message}");
    assert!(message.contains("sleeper exiting with 2"), "{message}");
    Ok(())
}

#[tokio::test]
async fn dropping_the_stack_kills_everything() -> anyhow::Result<()> {
    let stack = Stack::builder().with_service(FAKE).start().await?;
    let pids = [stack.nats.pid(), stack.service(FAKE).pid()];
    drop(stack);
    for pid in pids {
        assert!(!process_exists(pid), "{pid} outlived the stack");
    }
    Ok(())
}
