//! `--check-health`, the probe container healthchecks run: every service binary asks the
//! running service at its admin address and exits 0 only while `/readyz` answers 200.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use drover_testkit::{bin_dir, Stack, HEARTBEAT_MONITOR, LOG_COLLECTOR, REGISTRY, SCHEDULER};

const SERVICES: [&str; 4] = [REGISTRY, HEARTBEAT_MONITOR, SCHEDULER, LOG_COLLECTOR];

/// Runs `service --check-health` with `args` and `env`, as a healthcheck would.
async fn probe(service: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    let program = bin_dir().expect("binaries built").join(service);
    tokio::process::Command::new(&program)
        .arg("--check-health")
        .args(args)
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .output()
        .await
        .unwrap_or_else(|error| panic!("run {}: {error}", program.display()))
}

fn describe(output: &Output) -> String {
    format!(
        "{}: stdout {:?} stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn each_service_probes_itself_through_flag_and_environment() {
    let mut stack = Stack::builder().with_all_services().start().await.unwrap();
    for service in SERVICES {
        let addr = stack.admin_addr(service).to_string();
        let by_flag = probe(service, &["--admin-addr", &addr], &[]).await;
        assert!(
            by_flag.status.success(),
            "{service} by flag: {}",
            describe(&by_flag)
        );
        assert!(
            String::from_utf8_lossy(&by_flag.stdout).contains("ready"),
            "{}",
            describe(&by_flag)
        );
        // Compose sets DROVER_ADMIN_ADDR once for the service and its healthcheck; an
        // unspecified bind address is probed on the loopback.
        let wildcard = addr.replace("127.0.0.1", "0.0.0.0");
        let by_env = probe(service, &[], &[("DROVER_ADMIN_ADDR", wildcard)]).await;
        assert!(
            by_env.status.success(),
            "{service} by env: {}",
            describe(&by_env)
        );
    }

    // A stopped service fails its probe with a line saying why.
    let addr = stack.admin_addr(SCHEDULER).to_string();
    stack.kill_service(SCHEDULER);
    let down = probe(SCHEDULER, &["--admin-addr", &addr], &[]).await;
    assert_eq!(down.status.code(), Some(1), "{}", describe(&down));
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("not ready"),
        "{}",
        describe(&down)
    );
}

#[tokio::test]
async fn a_bad_admin_address_is_a_configuration_error() {
    let output = probe(REGISTRY, &["--admin-addr", "nowhere"], &[]).await;
    assert_eq!(output.status.code(), Some(64), "{}", describe(&output));
}
