//! The peers: the same no-op workload on Celery and on Dramatiq, each with Redis, run by
//! their scripts in `bench/peers/` (which install what they need on first use).
//!
//! A script prints JSON lines (`bench/peers/measure.py`): one per concurrency of client
//! lanes, each waiting for its job's result before sending the next, and one for draining
//! a backlog submitted at once.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::stats::{Drain, Throughput};

/// A peer measured by its script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Celery with Redis, acks_late (`bench/peers/celery`).
    Celery,
    /// Dramatiq with Redis and its Results middleware (`bench/peers/dramatiq`).
    Dramatiq,
}

impl Peer {
    fn script(self) -> &'static str {
        match self {
            Self::Celery => "bench/peers/celery/run.sh",
            Self::Dramatiq => "bench/peers/dramatiq/run.sh",
        }
    }
}

/// What a peer's script measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerFigures {
    /// One per concurrency of lanes.
    pub lanes: Vec<Throughput>,
    /// The drained backlog, when asked for.
    pub drain: Option<Drain>,
}

impl PeerFigures {
    /// One progress line per measurement, to stderr.
    pub fn print(&self) {
        for lanes in &self.lanes {
            eprintln!(
                "  {:>3} in flight: {:.0} jobs/s, p50 {:.2} ms, p99 {:.2} ms",
                lanes.in_flight, lanes.per_second, lanes.latency.p50_ms, lanes.latency.p99_ms
            );
        }
        if let Some(drain) = &self.drain {
            eprintln!(
                "  backlog of {}: all submitted after {:.2} s, all done after {:.2} s: {:.0} jobs/s",
                drain.count, drain.submit_seconds, drain.seconds, drain.per_second
            );
        }
    }
}

/// One line of a peer script's output.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "measure", rename_all = "lowercase")]
enum Line {
    Lanes(Throughput),
    Drain(Drain),
}

/// What to ask of a peer.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Jobs per lanes measurement.
    pub tasks: usize,
    /// Concurrencies of lanes.
    pub in_flight: Vec<usize>,
    /// Jobs in the backlog (0: no drain).
    pub drain: usize,
    /// Threads submitting the backlog.
    pub submitters: usize,
}

/// Runs `peer`'s script with `workload`; its progress goes to this process's stderr.
pub async fn measure(peer: Peer, workload: &Workload) -> anyhow::Result<PeerFigures> {
    let script = drover_testkit::workspace_root().join(peer.script());
    let concurrencies: Vec<String> = workload.in_flight.iter().map(ToString::to_string).collect();
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .args([
            "--tasks",
            &workload.tasks.to_string(),
            "--in-flight",
            &concurrencies.join(","),
            "--drain",
            &workload.drain.to_string(),
            "--submitters",
            &workload.submitters.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed ({})",
        script.display(),
        output.status
    );
    read_lines(&String::from_utf8_lossy(&output.stdout))
}

fn read_lines(stdout: &str) -> anyhow::Result<PeerFigures> {
    let mut figures = PeerFigures::default();
    for line in stdout.lines().filter(|line| line.starts_with('{')) {
        match serde_json::from_str(line).with_context(|| format!("reading {line:?}"))? {
            Line::Lanes(lanes) => figures.lanes.push(lanes),
            Line::Drain(drain) => figures.drain = Some(drain),
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_prints_lanes_then_a_drain() {
        let stdout = r#"installing nothing
{"measure": "lanes", "in_flight": 16, "count": 500, "seconds": 0.35, "per_second": 1412.8, "latency": {"p50_ms": 10.3, "p99_ms": 23.8, "p999_ms": 32.1}}
{"measure": "drain", "count": 1000, "submit_seconds": 0.37, "seconds": 0.59, "per_second": 1695.1}
"#;
        let figures = read_lines(stdout).expect("the lines read");
        assert_eq!(figures.lanes.len(), 1);
        assert_eq!(figures.lanes[0].in_flight, 16);
        assert_eq!(figures.lanes[0].latency.p99_ms, 23.8);
        let drain = figures.drain.expect("a drain");
        assert_eq!(drain.count, 1000);
        assert_eq!(drain.submit_seconds, 0.37);
        assert!(read_lines(r#"{"measure": "soak"}"#).is_err());
    }
}
