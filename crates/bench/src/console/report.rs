//! The console benchmark's report: JSON (everything) and Markdown (the table).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::Machine;

const MIB: f64 = (1u64 << 20) as f64;

/// Everything one console benchmark measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsoleReport {
    /// When, RFC 3339.
    pub at: String,
    /// Where.
    pub machine: Machine,
    /// What was asked for.
    pub settings: Settings,
    /// What was stored before the console started.
    pub seeded: SeededFigures,
    /// From starting the console until its `/readyz` answered 200.
    pub catch_up: CatchUp,
    /// The console's memory.
    pub memory: Memory,
    /// Each page, in the order measured.
    pub pages: Vec<PageFigures>,
}

/// The benchmark's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Run records seeded.
    pub runs: usize,
    /// Worker records seeded.
    pub workers: usize,
    /// Timed requests per page.
    pub samples: usize,
    /// Untimed requests per page before them.
    pub warm_up: usize,
    /// The seeded runs' creation times span this many seconds.
    pub span_seconds: f64,
    /// Where the service binaries came from (`target/release` or `target/debug`).
    pub binaries: String,
}

/// What was stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeededFigures {
    /// Run records.
    pub runs: usize,
    /// FAILED runs.
    pub failed: usize,
    /// CANCELLED runs.
    pub cancelled: usize,
    /// Child runs.
    pub children: usize,
    /// Runs with an idempotency key.
    pub keyed: usize,
    /// Worker records.
    pub workers: usize,
    /// WORKING workers (the rest are IDLE).
    pub working: usize,
    /// Seconds storing the runs took.
    pub runs_seconds: f64,
    /// Runs stored per second.
    pub runs_per_second: f64,
    /// Seconds storing the workers took.
    pub workers_seconds: f64,
    /// Messages in `KV_DROVER_RUNS` once seeded.
    pub runs_bucket_messages: u64,
    /// Bytes in `KV_DROVER_RUNS` once seeded.
    pub runs_bucket_bytes: u64,
    /// Messages in `KV_DROVER_WORKERS` once seeded.
    pub workers_bucket_messages: u64,
    /// Bytes in `KV_DROVER_WORKERS` once seeded.
    pub workers_bucket_bytes: u64,
}

/// The console's start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchUp {
    /// Seconds from starting the process until `GET /readyz` answered 200.
    pub seconds: f64,
    /// CPU seconds the console had used by then.
    pub cpu_seconds: f64,
}

/// The console's resident memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memory {
    /// VmRSS once ready.
    pub after_catch_up_bytes: u64,
    /// VmRSS after every page was timed.
    pub after_samples_bytes: u64,
    /// VmHWM (peak RSS) after every page was timed.
    pub peak_bytes: u64,
}

/// The timings of one page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PageFigures {
    /// A short name, e.g. `runs_failed`.
    pub page: String,
    /// The route, with placeholders for IDs and cursors, e.g. `/runs/<runID>`.
    pub route: String,
    /// The path and query requested.
    pub path: String,
    /// 200 when every request was answered 200; otherwise the last other status (0 when a
    /// request got no answer).
    pub status: u16,
    /// Requests answered 200, warm-up included.
    pub ok: usize,
    /// Timed requests.
    pub samples: usize,
    /// Median milliseconds from sending the request until the whole body was read.
    pub p50_ms: f64,
    /// 95th percentile (nearest rank), milliseconds.
    pub p95_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
    /// Mean, milliseconds.
    pub mean_ms: f64,
    /// Size of the last response body.
    pub bytes: usize,
    /// What went wrong, when something did: a transport error or the start of a body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PageFigures {
    /// Figures from the timed requests.
    pub fn of(page: &str, route: &str, path: &str, mut times: Vec<Duration>) -> Self {
        times.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // Nearest rank: the smallest sample with at least `p` of them at or below it.
        let at = |p: f64| {
            let rank = ((p * times.len() as f64).ceil() as usize).clamp(1, times.len().max(1));
            times.get(rank - 1).map_or(0.0, |d| ms(*d))
        };
        let mean = if times.is_empty() {
            0.0
        } else {
            times.iter().map(|d| ms(*d)).sum::<f64>() / times.len() as f64
        };
        Self {
            page: page.to_owned(),
            route: route.to_owned(),
            path: path.to_owned(),
            status: 200,
            ok: 0,
            samples: times.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            max_ms: times.last().map_or(0.0, |d| ms(*d)),
            mean_ms: mean,
            bytes: 0,
            error: None,
        }
    }

    /// True when every request was answered 200.
    pub fn is_ok(&self) -> bool {
        self.status == 200 && self.error.is_none()
    }
}

impl ConsoleReport {
    /// Writes `<stem>.json` and `<stem>.md` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<()> {
        crate::report::write_json_and_markdown(dir, stem, self, &self.markdown())
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let seeded = &self.seeded;
        let _ = writeln!(out, "# Drover console, {}\n", self.at);
        let _ = writeln!(
            out,
            "Machine: {} ({} cores, {:.0} GiB), nats-server {}, load average at start {}. \
             Binaries from `{}`.\n",
            m.cpu, m.cores, m.memory_gib, m.nats_server, m.load_average, s.binaries
        );
        let _ = writeln!(
            out,
            "Stored before the console started: {} runs over {:.1} hours ({} FAILED, {} CANCELLED, \
             {} children, {} with an idempotency key; `KV_DROVER_RUNS` {:.1} MiB, {:.0} runs/s) \
             and {} workers ({} WORKING, the rest IDLE; `KV_DROVER_WORKERS` {:.1} MiB).\n",
            seeded.runs,
            s.span_seconds / 3600.0,
            seeded.failed,
            seeded.cancelled,
            seeded.children,
            seeded.keyed,
            seeded.runs_bucket_bytes as f64 / MIB,
            seeded.runs_per_second,
            seeded.workers,
            seeded.working,
            seeded.workers_bucket_bytes as f64 / MIB,
        );
        let _ = writeln!(
            out,
            "Catch-up (start until `/readyz` answers 200): **{:.2} s**, {:.2} CPU-s. \
             Console RSS after catch-up {:.1} MiB, after the samples {:.1} MiB (peak {:.1} MiB).\n",
            self.catch_up.seconds,
            self.catch_up.cpu_seconds,
            self.memory.after_catch_up_bytes as f64 / MIB,
            self.memory.after_samples_bytes as f64 / MIB,
            self.memory.peak_bytes as f64 / MIB,
        );
        let _ = writeln!(
            out,
            "Each page {} times after {} warm-up requests, one at a time over one connection; \
             from sending the request until the whole body was read.\n",
            s.samples, s.warm_up
        );
        let _ = writeln!(out, "| page | p50 ms | p95 ms | max ms | bytes |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for page in &self.pages {
            let trouble = match (&page.error, page.status) {
                (Some(error), _) => format!(" **{}: {error}**", page.status),
                (None, 200) => String::new(),
                (None, status) => format!(" **{status}**"),
            };
            let _ = writeln!(
                out,
                "| `{}`{trouble} | {:.2} | {:.2} | {:.2} | {} |",
                page.route, page.p50_ms, page.p95_ms, page.max_ms, page.bytes
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let times = (1..=100).map(Duration::from_millis).collect();
        let page = PageFigures::of("runs", "/runs", "/runs", times);
        assert!((page.p50_ms - 50.0).abs() < 1e-9);
        assert!((page.p95_ms - 95.0).abs() < 1e-9);
        assert!((page.max_ms - 100.0).abs() < 1e-9);
        let three = vec![
            Duration::from_millis(3),
            Duration::from_millis(1),
            Duration::from_millis(2),
        ];
        let page = PageFigures::of("runs", "/runs", "/runs", three);
        assert!((page.p50_ms - 2.0).abs() < 1e-9);
        assert!((page.p95_ms - 3.0).abs() < 1e-9);
        let none = PageFigures::of("runs", "/runs", "/runs", Vec::new());
        assert_eq!((none.samples, none.p50_ms), (0, 0.0));
    }
}
