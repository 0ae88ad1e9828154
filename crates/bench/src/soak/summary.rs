//! The soak's report: what it measured, as JSON (everything) and Markdown (the tables).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::report::Machine;

const MIB: f64 = (1u64 << 20) as f64;
const SECONDS_PER_DAY: f64 = 86_400.0;

/// Everything one soak measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakReport {
    /// When, RFC 3339.
    pub at: String,
    /// Where.
    pub machine: Machine,
    /// What was asked for.
    pub settings: Settings,
    /// What became of the runs.
    pub runs: Runs,
    /// SUCCEEDED runs by the worker that did them, in workerID order.
    pub workers: Vec<WorkerShare>,
    /// What the services wrote to stdout and stderr.
    pub logs: Logs,
    /// Memory and CPU of each process, at the first sample and the last.
    pub processes: Vec<ProcessUse>,
    /// What each JetStream stream (a bucket is the stream `KV_<bucket>`) held at the end.
    pub storage: Vec<StoreUse>,
    /// The JetStream store directory.
    pub disk: DiskUse,
    /// The slope of nats-server's RSS against the runs stored in `KV_DROVER_RUNS` over the
    /// samples (least squares), in bytes per stored run; absent with fewer than two
    /// distinct counts.
    pub nats_rss_bytes_per_stored_run: Option<f64>,
    /// Every sample, in order; the first is taken just before the first submission, the
    /// last once every run has ended.
    pub samples: Vec<Sample>,
}

/// The soak's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Runs submitted per second.
    pub rate: f64,
    /// Seconds of submitting.
    pub duration_seconds: f64,
    /// SDK workers.
    pub workers: usize,
    /// Capacity of each.
    pub capacity: u32,
    /// Log lines each run writes.
    pub log_lines: u32,
    /// Whether each run had an idempotency key of its own.
    #[serde(default)]
    pub idempotency_keys: bool,
    /// `DROVER_RUN_RETENTION_MS` given to the services (their default when absent).
    pub run_retention_ms: Option<u64>,
    /// Seconds between samples.
    pub sample_every_seconds: f64,
    /// `DROVER_HEARTBEAT_INTERVAL_MS` of the services.
    pub heartbeat_interval_ms: u64,
    /// `DROVER_LOST_AFTER_MS` of the services.
    pub lost_after_ms: u64,
    /// `RUST_LOG` of the services: blank, so each uses its default filter.
    pub services_rust_log: String,
}

/// What became of the runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Runs {
    /// Submissions sent.
    pub submitted: u64,
    /// Submissions the scheduler accepted.
    pub accepted: u64,
    /// Submissions refused or unanswered.
    pub refused: u64,
    /// Runs that ended SUCCEEDED.
    pub succeeded: u64,
    /// Submitted minus SUCCEEDED: refused, failed, cancelled, or not ended (should be 0).
    pub not_succeeded: u64,
    /// Accepted runs by the status they ended in (or were last seen in).
    pub by_status: BTreeMap<String, u64>,
    /// Submissions sent more than `late_after_ms` after their scheduled instant.
    pub late: u64,
    /// The threshold of `late`.
    pub late_after_ms: f64,
    /// The latest a submission was sent after its scheduled instant.
    pub max_lag_ms: f64,
    /// Seconds from the first submission to the last.
    pub submit_seconds: f64,
    /// Seconds from the first submission until every run had ended.
    pub all_ended_seconds: f64,
}

/// The runs one worker did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerShare {
    /// The workerID.
    pub worker_id: String,
    /// SUCCEEDED runs it held last.
    pub runs: u64,
    /// `runs` over all SUCCEEDED runs.
    pub share: f64,
}

/// Bytes and lines a service wrote, and its share of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCount {
    /// Bytes, newlines included.
    pub bytes: u64,
    /// Lines.
    pub lines: u64,
}

/// The services' logs at their default level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logs {
    /// Each service's log.
    pub services: Vec<ServiceLog>,
    /// All of them, from start-up to the end.
    pub total: LogCount,
    /// All of them, between the first sample and the last.
    pub during: LogCount,
    /// `during` at the same pace for a day.
    pub bytes_per_day: f64,
}

/// One service's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceLog {
    /// The service binary.
    pub service: String,
    /// From start-up to the end.
    pub total: LogCount,
    /// Between the first sample and the last.
    pub during: LogCount,
    /// `during` at the same pace for a day.
    pub bytes_per_day: f64,
}

/// One process's memory and CPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessUse {
    /// The process: nats-server, a service, or this one (client and workers).
    pub process: String,
    /// RSS at the first sample, bytes.
    pub start_rss_bytes: u64,
    /// RSS at the last sample, bytes.
    pub end_rss_bytes: u64,
    /// `end_rss_bytes - start_rss_bytes` (negative when it shrank).
    pub rss_growth_bytes: i64,
    /// Peak RSS at the last sample, bytes.
    pub peak_rss_bytes: u64,
    /// CPU seconds between the first sample and the last.
    pub cpu_seconds: f64,
}

/// What one stream or bucket held.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreUse {
    /// The stream (`KV_<bucket>` for a bucket).
    pub name: String,
    /// `stream` or `bucket`.
    pub kind: String,
    /// Messages at the end.
    pub messages: u64,
    /// Bytes at the end.
    pub bytes: u64,
    /// Bytes at the first sample.
    pub start_bytes: u64,
    /// `(bytes - start_bytes)` over the runs accepted.
    pub bytes_per_run: f64,
}

/// The JetStream store directory (allocated blocks, as `du` counts them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskUse {
    /// At the first sample.
    pub start_bytes: u64,
    /// At the last.
    pub end_bytes: u64,
    /// The growth over the runs accepted.
    pub bytes_per_run: f64,
}

/// Figures at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the first sample.
    pub seconds: f64,
    /// Runs submitted so far.
    pub submitted: u64,
    /// Runs ended so far.
    pub ended: u64,
    /// Memory and CPU of each process.
    pub processes: BTreeMap<String, ProcSample>,
    /// Each stream's messages and bytes.
    pub streams: BTreeMap<String, Stored>,
    /// The JetStream store directory, bytes allocated.
    pub disk_bytes: u64,
    /// Each service's log so far.
    pub logs: BTreeMap<String, LogCount>,
}

/// A process at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcSample {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Peak resident set size, bytes.
    pub peak_rss_bytes: u64,
    /// CPU seconds so far.
    pub cpu_seconds: f64,
}

/// A stream's state at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
}

/// `count` at the pace it had over `seconds`, for a day.
pub fn per_day(count: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    count as f64 / seconds * SECONDS_PER_DAY
}

/// The least-squares slope of `y` against `x`; `None` unless `x` takes two values at least.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / n;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / n;
    let spread: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    if spread == 0.0 {
        return None;
    }
    let covariance: f64 = points
        .iter()
        .map(|(x, y)| (x - mean_x) * (y - mean_y))
        .sum();
    Some(covariance / spread)
}

/// `value` rounded to a whole number, without the sign of a negative zero.
fn whole(value: f64) -> String {
    let rounded = value.round();
    format!("{}", if rounded == 0.0 { 0.0 } else { rounded })
}

fn mib(bytes: f64) -> f64 {
    bytes / MIB
}

impl SoakReport {
    /// Writes `<stem>.json` and `<stem>.md` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<()> {
        crate::report::write_json_and_markdown(dir, stem, self, &self.markdown())
    }

    /// The report as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(out, "# Drover soak, {}\n", self.at);
        let _ = writeln!(
            out,
            "Machine: {} ({} cores, {:.0} GiB), nats-server {}, load average at start {}.\n",
            m.cpu, m.cores, m.memory_gib, m.nats_server, m.load_average
        );
        let retention = s.run_retention_ms.map_or_else(
            || "the services' default".to_owned(),
            |ms| format!("{ms} ms"),
        );
        let keys = if s.idempotency_keys {
            ", each with an idempotency key"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:.0} runs/s for {:.0} s (open loop), {} workers × capacity {}, {} log line(s) per run{keys}; \
             services at their default log level (`RUST_LOG` blank), heartbeat {} ms, run retention {retention}; \
             a sample every {:.0} s.\n",
            s.rate, s.duration_seconds, s.workers, s.capacity, s.log_lines,
            s.heartbeat_interval_ms, s.sample_every_seconds
        );
        self.runs_tables(&mut out);
        self.log_table(&mut out);
        self.memory_table(&mut out);
        self.storage_table(&mut out);
        self.sample_table(&mut out);
        out
    }

    fn runs_tables(&self, out: &mut String) {
        let r = &self.runs;
        let _ = writeln!(out, "## Runs\n");
        let _ = writeln!(
            out,
            "| submitted | SUCCEEDED | not succeeded | refused | late (> {:.0} ms) | max lag ms | submitting s | all ended after s |",
            r.late_after_ms
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| {} | {} | **{}** | {} | {} | {:.1} | {:.1} | {:.1} |",
            r.submitted,
            r.succeeded,
            r.not_succeeded,
            r.refused,
            r.late,
            r.max_lag_ms,
            r.submit_seconds,
            r.all_ended_seconds
        );
        let others: Vec<String> = r
            .by_status
            .iter()
            .filter(|(status, _)| status.as_str() != "SUCCEEDED")
            .map(|(status, count)| format!("{status} {count}"))
            .collect();
        if !others.is_empty() {
            let _ = writeln!(out, "\nNot SUCCEEDED: {}.", others.join(", "));
        }
        let _ = writeln!(out, "\n| worker | runs | share |");
        let _ = writeln!(out, "|---|---:|---:|");
        for worker in &self.workers {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} % |",
                worker.worker_id,
                worker.runs,
                worker.share * 100.0
            );
        }
    }

    fn log_table(&self, out: &mut String) {
        let l = &self.logs;
        let _ = writeln!(out, "\n## Service logs at the default level\n");
        let _ = writeln!(
            out,
            "| service | bytes | lines | bytes during the soak | lines during | bytes per day at this rate |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        let row = |out: &mut String, name: &str, total: LogCount, during: LogCount, day: f64| {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {:.1} MiB |",
                total.bytes,
                total.lines,
                during.bytes,
                during.lines,
                mib(day)
            );
        };
        for service in &l.services {
            row(
                out,
                &service.service,
                service.total,
                service.during,
                service.bytes_per_day,
            );
        }
        row(out, "**all**", l.total, l.during, l.bytes_per_day);
        let _ = writeln!(
            out,
            "\n\"During\" is from the first sample (the services started, the workers IDLE) to the last; \
             the whole log includes start-up."
        );
    }

    fn memory_table(&self, out: &mut String) {
        let _ = writeln!(out, "\n## Memory\n");
        let _ = writeln!(
            out,
            "| process | RSS at start MiB | RSS at end MiB | growth MiB | peak MiB | CPU s |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for p in &self.processes {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {:+.1} | {:.1} | {:.1} |",
                p.process,
                mib(p.start_rss_bytes as f64),
                mib(p.end_rss_bytes as f64),
                mib(p.rss_growth_bytes as f64),
                mib(p.peak_rss_bytes as f64),
                p.cpu_seconds
            );
        }
        if let Some(slope) = self.nats_rss_bytes_per_stored_run {
            let _ = writeln!(
                out,
                "\nnats-server RSS against stored runs (least squares over the samples): {slope:.0} bytes per stored run."
            );
        }
    }

    fn storage_table(&self, out: &mut String) {
        let _ = writeln!(out, "\n## JetStream storage at the end\n");
        let _ = writeln!(out, "| stream | kind | messages | bytes | bytes per run |");
        let _ = writeln!(out, "|---|---|---:|---:|---:|");
        for s in &self.storage {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                s.name,
                s.kind,
                s.messages,
                s.bytes,
                whole(s.bytes_per_run)
            );
        }
        let d = &self.disk;
        let _ = writeln!(
            out,
            "| store directory on disk | | | {} | {} |",
            d.end_bytes,
            whole(d.bytes_per_run)
        );
        let _ = writeln!(
            out,
            "\nBytes per run: growth from the first sample to the last over the runs accepted ({})."
            , self.runs.accepted
        );
    }

    fn sample_table(&self, out: &mut String) {
        let _ = writeln!(out, "\n## Samples\n");
        let _ = writeln!(
            out,
            "| s | submitted | ended | stored runs | nats-server RSS MiB | store on disk MiB | service logs bytes |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
        for sample in &self.samples {
            let _ = writeln!(
                out,
                "| {:.0} | {} | {} | {} | {:.1} | {:.1} | {} |",
                sample.seconds,
                sample.submitted,
                sample.ended,
                sample.stored_runs(),
                mib(sample.nats_rss() as f64),
                mib(sample.disk_bytes as f64),
                sample.log_bytes()
            );
        }
    }
}

/// The name under which nats-server's figures are kept.
pub const NATS_SERVER: &str = "nats-server";

impl Sample {
    /// Messages in `KV_DROVER_RUNS`: one a run while it is kept.
    pub fn stored_runs(&self) -> u64 {
        self.streams
            .get(&super::runs_stream())
            .map_or(0, |stored| stored.messages)
    }

    /// nats-server's RSS, bytes.
    pub fn nats_rss(&self) -> u64 {
        self.processes
            .get(NATS_SERVER)
            .map_or(0, |process| process.rss_bytes)
    }

    /// The services' log bytes so far.
    pub fn log_bytes(&self) -> u64 {
        self.logs.values().map(|count| count.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_have_no_negative_zero() {
        assert_eq!(whole(-0.3), "0");
        assert_eq!(whole(1012.6), "1013");
        assert_eq!(whole(-2.5), "-3");
    }

    #[test]
    fn a_pace_is_projected_to_a_day() {
        assert_eq!(per_day(600, 600.0), SECONDS_PER_DAY);
        assert_eq!(per_day(5, 0.0), 0.0);
    }

    #[test]
    fn the_slope_is_least_squares_and_needs_two_distinct_x() {
        let line: Vec<(f64, f64)> = (0..5)
            .map(|x| (f64::from(x), 3.0 * f64::from(x) + 7.0))
            .collect();
        assert_eq!(slope(&line), Some(3.0));
        assert_eq!(slope(&[(1.0, 2.0)]), None);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 5.0)]), None);
        assert_eq!(slope(&[]), None);
    }
}
