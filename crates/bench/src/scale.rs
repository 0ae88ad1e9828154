//! Scale: many workers pulsing every second; what the monitor and the registry cost, and
//! how long it takes to find a killed batch.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use drover_protocol::WorkerStatus;
use drover_testkit::{count_workers, Fleet, ProcStats, Stack, HEARTBEAT_MONITOR, REGISTRY};
use serde::{Deserialize, Serialize};

/// Heartbeat interval of the simulated workers.
const INTERVAL_MS: u64 = 1000;
/// Lost-after delay for the measurement.
const LOST_AFTER_MS: u64 = 3000;

/// Figures of one service at scale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cost {
    /// Cores used while every worker pulses (CPU seconds per second).
    pub cores: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
}

/// The scale measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleFigures {
    /// Simulated workers.
    pub workers: usize,
    /// Seconds to register them all and see them IDLE.
    pub register_seconds: f64,
    /// The heartbeat-monitor's cost.
    pub monitor: Cost,
    /// The registry's cost.
    pub registry: Cost,
    /// Workers killed at once.
    pub killed: usize,
    /// Seconds from the kill until every killed worker was LOST.
    pub detect_seconds: f64,
    /// `lostAfterMs` during the measurement, for comparison.
    pub lost_after_seconds: f64,
    /// Workers wrongly declared LOST (should be 0).
    pub false_losses: usize,
}

fn cost(before: ProcStats, after: ProcStats, over: Duration) -> Cost {
    Cost {
        cores: (after.cpu - before.cpu).as_secs_f64() / over.as_secs_f64(),
        rss_mib: after.rss_bytes as f64 / f64::from(1 << 20),
        peak_rss_mib: after.peak_rss_bytes as f64 / f64::from(1 << 20),
    }
}

/// Runs the measurement with `workers` simulated workers and `killed` of them killed.
pub async fn measure(
    workers: usize,
    killed: usize,
    steady: Duration,
) -> anyhow::Result<ScaleFigures> {
    let stack = Stack::builder()
        .heartbeat_interval_ms(INTERVAL_MS)
        .lost_after_ms(LOST_AFTER_MS)
        .with_registry()
        .with_monitor()
        .env("RUST_LOG", "warn")
        .start()
        .await
        .context("starting the stack")?;
    let client = stack.client().await;
    let mut connections = Vec::new();
    for _ in 0..10 {
        connections.push(stack.client().await);
    }
    let started = Instant::now();
    let fleet = Fleet::start(
        &connections,
        "sim",
        workers,
        "sim.work",
        Duration::from_millis(INTERVAL_MS),
    )
    .await;
    while count_workers(&client, WorkerStatus::Idle).await < workers {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "workers did not all come up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let register_seconds = started.elapsed().as_secs_f64();
    eprintln!("  {workers} workers IDLE after {register_seconds:.1} s; measuring for {steady:?}");

    let monitor_pid = stack.service(HEARTBEAT_MONITOR).pid();
    let registry_pid = stack.service(REGISTRY).pid();
    let (monitor_before, registry_before) =
        (ProcStats::of(monitor_pid)?, ProcStats::of(registry_pid)?);
    tokio::time::sleep(steady).await;
    let (monitor_after, registry_after) =
        (ProcStats::of(monitor_pid)?, ProcStats::of(registry_pid)?);
    let false_losses = count_workers(&client, WorkerStatus::Lost).await
        + count_workers(&client, WorkerStatus::Unresponsive).await;

    let victims: Vec<_> = fleet
        .ids
        .iter()
        .step_by((workers / killed).max(1))
        .take(killed)
        .cloned()
        .collect();
    let killed_at = Instant::now();
    fleet.kill(&victims);
    while count_workers(&client, WorkerStatus::Lost).await < victims.len() {
        anyhow::ensure!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the killed workers were not all found"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let detect_seconds = killed_at.elapsed().as_secs_f64();
    Ok(ScaleFigures {
        workers,
        register_seconds,
        monitor: cost(monitor_before, monitor_after, steady),
        registry: cost(registry_before, registry_after, steady),
        killed: victims.len(),
        detect_seconds,
        lost_after_seconds: LOST_AFTER_MS as f64 / 1000.0,
        false_losses,
    })
}
