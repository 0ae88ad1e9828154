use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use drover_testkit::{wait_until, ServiceProcess};

use crate::process_exists;

const SLEEPER: &str = "testkit-sleeper";

fn sleeper(env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<ServiceProcess> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    ServiceProcess::start(SLEEPER, &env, &args)
}

async fn wait_for_log(process: &ServiceProcess, text: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("{text:?} in the log of {}", process.name()),
        Duration::from_secs(10),
        || async { process.log_contents().contains(text) },
    )
    .await
}

#[tokio::test]
async fn captures_stdout_stderr_and_passes_env() -> anyhow::Result<()> {
    let mut process = sleeper(
        &[("TESTKIT_GREETING", "hello there")],
        &["--echo-env", "TESTKIT_GREETING"],
    )?;
    assert!(process.is_running());
    wait_for_log(&process, "env TESTKIT_GREETING=hello there").await?;
    wait_for_log(&process, "sleeper stderr line").await?;
    let log = process.log_contents();
    assert!(
        log.contains(&format!("sleeper started pid={}", process.pid())),
        "{log}"
    );
    assert!(log.contains("start #1 of testkit-sleeper"), "{log}");
    assert!(process.log_path().exists());
    Ok(())
}

#[tokio::test]
async fn terminate_then_wait_exit() -> anyhow::Result<()> {
    let mut process = sleeper(&[], &[])?;
    wait_for_log(&process, "sleeper started").await?;
    process.terminate()?;
    let status = process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!process.is_running());
    assert!(process.log_contents().contains("sleeper got sigterm"));
    Ok(())
}

#[tokio::test]
async fn kill_ends_a_process_that_ignores_sigterm() -> anyhow::Result<()> {
    let mut process = sleeper(&[], &["--ignore-sigterm"])?;
    wait_for_log(&process, "sleeper started").await?;
    process.terminate()?;
    wait_for_log(&process, "sleeper got sigterm").await?;
    assert!(process.is_running(), "SIGTERM was ignored");
    let pid = process.pid();
    process.kill();
    assert!(!process.is_running());
    assert_eq!(process.exit_status().and_then(|s| s.signal()), Some(9));
    assert!(!process_exists(pid));
    Ok(())
}

#[tokio::test]
async fn exit_status_of_a_process_that_ends_by_itself() -> anyhow::Result<()> {
    let mut process = sleeper(&[], &["--exit-after-ms", "0", "--exit-code", "3"])?;
    let status = process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits by itself");
    assert_eq!(status.code(), Some(3));
    assert!(!process.is_running());
    Ok(())
}

#[tokio::test]
async fn restart_starts_a_new_process_and_keeps_the_log() -> anyhow::Result<()> {
    let mut process = sleeper(&[("TESTKIT_X", "kept")], &["--echo-env", "TESTKIT_X"])?;
    // The sleeper prints its environment after its start line: wait for the last line.
    wait_for_log(&process, "env TESTKIT_X=kept").await?;
    let first = process.pid();

    process.restart()?;

    let second = process.pid();
    assert_ne!(first, second);
    assert!(!process_exists(first));
    assert!(process.is_running());
    assert_eq!(process.starts(), 2);
    wait_until(
        "the second start's environment in the log",
        Duration::from_secs(10),
        || async { process.log_contents().matches("env TESTKIT_X=kept").count() == 2 },
    )
    .await?;
    let log = process.log_contents();
    assert!(
        log.contains(&format!("sleeper started pid={first}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("sleeper started pid={second}")),
        "{log}"
    );
    assert!(log.contains("start #2 of testkit-sleeper"), "{log}");
    Ok(())
}

#[tokio::test]
async fn restart_after_exit_works() -> anyhow::Result<()> {
    let mut process = sleeper(&[], &[])?;
    process.terminate()?;
    process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    process.restart()?;
    assert!(process.is_running());
    Ok(())
}

#[tokio::test]
async fn drop_kills_the_process() -> anyhow::Result<()> {
    let process = sleeper(&[], &["--ignore-sigterm"])?;
    let pid = process.pid();
    let log = process.log_path().to_path_buf();
    assert!(process_exists(pid));
    drop(process);
    assert!(
        !process_exists(pid),
        "testkit-sleeper {pid} outlived its handle"
    );
    assert!(!log.exists(), "{} outlived its handle", log.display());
    Ok(())
}

#[test]
fn a_missing_binary_is_reported_clearly() {
    let error = ServiceProcess::start("drover-no-such-binary", &[], &[]).expect_err("no binary");
    let message = error.to_string();
    assert!(
        message.contains("binary drover-no-such-binary not found in"),
        "{message}"
    );
    assert!(
        message.contains("cargo build --workspace --bins"),
        "{message}"
    );
}
