//! A thousand workers pulsing every second, multiplexed over a few connections: none is
//! declared lost, and exactly the hundred that die are. Prints the monitor's and the
//! registry's CPU and memory at this load (run with `--nocapture` to see them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use drover_integration_tests::{ProcStats, Recorder};
use drover_protocol::WorkerStatus;
use drover_testkit::{
    count_workers, hold_for, wait_until, Fleet, Stack, HEARTBEAT_MONITOR, REGISTRY,
};

const WORKERS: usize = 1000;
const KILLED: usize = 100;
const INTERVAL_MS: u64 = 1000;
const LOST_AFTER_MS: u64 = 3000;
const MEASURE: Duration = Duration::from_secs(10);

fn report(name: &str, before: ProcStats, after: ProcStats, over: Duration) {
    let cores = (after.cpu - before.cpu).as_secs_f64() / over.as_secs_f64();
    println!(
        "{name}: {cores:.3} cores ({:.1} ms CPU per second), RSS {:.1} MiB, peak {:.1} MiB",
        cores * 1000.0,
        after.rss_bytes as f64 / (1 << 20) as f64,
        after.peak_rss_bytes as f64 / (1 << 20) as f64,
    );
}

#[tokio::test]
async fn thousand_workers_none_lost_and_exactly_the_dead_are() {
    let stack = Stack::builder()
        .heartbeat_interval_ms(INTERVAL_MS)
        .lost_after_ms(LOST_AFTER_MS)
        .with_registry()
        .with_monitor()
        .env("RUST_LOG", "warn")
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let events = Recorder::start(&client, "v1.registry.events.*").await;
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(stack.client().await);
    }
    let started = Instant::now();
    let fleet = Fleet::start(
        &connections,
        "sim",
        WORKERS,
        "sim.work",
        Duration::from_millis(INTERVAL_MS),
    )
    .await;
    wait_until("every worker is IDLE", Duration::from_secs(60), || async {
        count_workers(&client, WorkerStatus::Idle).await == WORKERS
    })
    .await
    .unwrap();
    println!(
        "{WORKERS} workers registered and IDLE in {:?}",
        started.elapsed()
    );

    // Steady state: measure, and check nobody is lost over several lost-after windows.
    let monitor_pid = stack.service(HEARTBEAT_MONITOR).pid();
    let registry_pid = stack.service(REGISTRY).pid();
    let (monitor_before, registry_before) = (
        ProcStats::of(monitor_pid).unwrap(),
        ProcStats::of(registry_pid).unwrap(),
    );
    let measuring = Instant::now();
    hold_for(MEASURE).await;
    let (monitor_after, registry_after) = (
        ProcStats::of(monitor_pid).unwrap(),
        ProcStats::of(registry_pid).unwrap(),
    );
    // The window is longer than MEASURE under DROVER_TEST_PATIENCE.
    let measured = measuring.elapsed();
    report("heartbeat-monitor", monitor_before, monitor_after, measured);
    report("registry", registry_before, registry_after, measured);
    let lost_so_far: Vec<String> = events
        .all()
        .into_iter()
        .filter(|(_, body)| {
            matches!(
                body["payload"]["status"].as_str(),
                Some("LOST" | "UNRESPONSIVE")
            )
        })
        .map(|(subject, _)| subject)
        .collect();
    assert!(
        lost_so_far.is_empty(),
        "live workers flagged: {lost_so_far:?}"
    );
    assert_eq!(count_workers(&client, WorkerStatus::Idle).await, WORKERS);

    // Kill every tenth worker.
    let victims: Vec<_> = fleet
        .ids
        .iter()
        .step_by(WORKERS / KILLED)
        .cloned()
        .collect();
    assert_eq!(victims.len(), KILLED);
    let killed_at = Instant::now();
    fleet.kill(&victims);
    wait_until(
        "the killed workers are LOST",
        Duration::from_secs(15),
        || async { count_workers(&client, WorkerStatus::Lost).await == KILLED },
    )
    .await
    .unwrap();
    let took = killed_at.elapsed();
    println!("{KILLED} killed workers LOST after {took:?}");
    assert!(
        took <= Duration::from_millis(LOST_AFTER_MS + INTERVAL_MS + 1000),
        "detection took {took:?}"
    );
    // Exactly those, and nobody else, even a while later.
    hold_for(Duration::from_millis(LOST_AFTER_MS)).await;
    let lost: BTreeSet<String> = events
        .all()
        .into_iter()
        .filter(|(_, body)| body["payload"]["status"] == "LOST")
        .map(|(subject, _)| subject.trim_start_matches("v1.registry.events.").to_owned())
        .collect();
    let expected: BTreeSet<String> = victims.iter().map(|id| id.to_string()).collect();
    assert_eq!(lost, expected);
    assert_eq!(
        count_workers(&client, WorkerStatus::Idle).await,
        WORKERS - KILLED
    );
}
