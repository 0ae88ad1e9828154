//! The results as Markdown tables.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::Results;
use crate::end_to_end::ServiceCost;
use crate::scale::ScaleFigures;
use crate::stats::{Drain, Throughput};
use crate::trace_overhead::TracingFigures;
use crate::traffic::ClassCount;

const DRAMATIQ: &str = "Dramatiq + Redis (2 processes × 8 threads)";
const CELERY: &str = "Celery + Redis (acks_late)";

impl Results {
    /// The results as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "# Drover benchmark, {}\n", self.at);
        let _ = writeln!(
            out,
            "Machine: {} ({} cores, {:.0} GiB), nats-server {}, load average at start {}. {} runs per Drover measurement.\n",
            m.cpu, m.cores, m.memory_gib, m.nats_server, m.load_average, self.runs
        );
        let measured = !(self.baseline.is_empty()
            && self.drover.is_empty()
            && self.celery.is_empty()
            && self.dramatiq.is_empty());
        if measured {
            self.throughput_tables(&mut out);
        }
        if self.drain.drover.is_some()
            || self.drain.dramatiq.is_some()
            || self.drain.celery.is_some()
        {
            self.drain_table(&mut out);
        }
        if !self.drover.is_empty() || self.drain.drover.is_some() {
            self.traffic_tables(&mut out);
        }
        if let Some(scale) = &self.scale {
            Self::scale_table(&mut out, scale);
        }
        if let Some(tracing) = &self.tracing {
            Self::tracing_table(&mut out, tracing);
        }
        out
    }

    fn throughput_tables(&self, out: &mut String) {
        let _ = writeln!(out, "## Throughput and latency\n");
        let _ = writeln!(out, "| system | in flight | per second | p50 ms | p99 ms | p99.9 ms | submit→starting p50 / p99 / p99.9 ms |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
        let row = |out: &mut String, name: &str, t: &Throughput, starting: &str| {
            let _ = writeln!(
                out,
                "| {name} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {starting} |",
                t.in_flight, t.per_second, t.latency.p50_ms, t.latency.p99_ms, t.latency.p999_ms
            );
        };
        for base in &self.baseline {
            row(out, "JetStream job cycle (baseline)", base, "-");
        }
        for drover in &self.drover {
            let s = drover.starting;
            row(
                out,
                "Drover end to end",
                &drover.completion,
                &format!("{:.2} / {:.2} / {:.2}", s.p50_ms, s.p99_ms, s.p999_ms),
            );
        }
        for dramatiq in &self.dramatiq {
            row(out, DRAMATIQ, dramatiq, "-");
        }
        for celery in &self.celery {
            row(out, CELERY, celery, "-");
        }
        let _ = writeln!(
            out,
            "\nLatencies are submit→completion as the client sees it, except the last column.\n"
        );
        let _ = writeln!(
            out,
            "## Drover against the baseline and the peers (same run)\n"
        );
        let _ = writeln!(out, "| in flight | throughput ratio to baseline | p50 latency ratio | p99 latency ratio | Drover / Dramatiq | Drover / Celery |");
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
        for drover in &self.drover {
            let in_flight = drover.completion.in_flight;
            let ratio = self.ratios.iter().find(|r| r.in_flight == in_flight);
            let _ = writeln!(
                out,
                "| {in_flight} | {} | {} | {} | {} | {} |",
                number(ratio.map(|r| r.throughput), 2),
                number(ratio.map(|r| r.p50_latency), 2),
                number(ratio.map(|r| r.p99_latency), 2),
                times(self.drover_over_dramatiq.get(&in_flight).copied()),
                times(self.drover_over_celery.get(&in_flight).copied()),
            );
        }
        let _ = writeln!(out, "\n## Cost per service\n");
        let _ = writeln!(
            out,
            "| in flight | service | CPU s per 1,000 runs | peak RSS MiB |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|");
        for drover in &self.drover {
            cost_rows(
                out,
                &drover.completion.in_flight.to_string(),
                &drover.services,
            );
        }
        if let Some(drain) = &self.drain.drover {
            cost_rows(out, "drain", &drain.services);
        }
    }

    fn drain_table(&self, out: &mut String) {
        let _ = writeln!(out, "\n## Draining a backlog\n");
        let _ = writeln!(
            out,
            "| system | backlog | all submitted after s | all done after s | per second | Drover / it |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        let row = |out: &mut String, name: &str, drain: &Drain, ratio: Option<f64>| {
            let _ = writeln!(
                out,
                "| {name} | {} | {:.2} | {:.2} | {:.0} | {} |",
                drain.count,
                drain.submit_seconds,
                drain.seconds,
                drain.per_second,
                times(ratio)
            );
        };
        let d = &self.drain;
        if let Some(drover) = &d.drover {
            row(out, "Drover", &drover.drain, None);
        }
        if let Some(dramatiq) = &d.dramatiq {
            row(out, DRAMATIQ, dramatiq, d.drover_over_dramatiq);
        }
        if let Some(celery) = &d.celery {
            row(out, CELERY, celery, d.drover_over_celery);
        }
        let _ = write!(
            out,
            "\nThe whole backlog is submitted at once and the clock runs from the first submission until every job has ended. "
        );
        if let Some(drover) = &d.drover {
            let _ = write!(
                out,
                "Drover's client keeps {} submissions awaiting their replies. ",
                drover.submitters
            );
        }
        if d.dramatiq.is_some() || d.celery.is_some() {
            let _ = write!(
                out,
                "Each peer's client has {} threads, each submitting its share, then waiting for those results.",
                d.peer_threads
            );
        }
        let _ = writeln!(out);
    }

    fn traffic_tables(&self, out: &mut String) {
        let _ = writeln!(out, "\n## Writes and messages per run (Drover)\n");
        let _ = writeln!(
            out,
            "| in flight | JetStream writes per run | NATS messages per run | runs counted | runs/s while counting |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for drover in &self.drover {
            let messages = drover.messages.as_ref();
            let _ = writeln!(
                out,
                "| {} | {:.2} | {} | {} | {} |",
                drover.completion.in_flight,
                drover.writes.per_run,
                number(messages.map(|m| m.per_run), 1),
                messages.map_or_else(|| "-".to_owned(), |m| m.runs.to_string()),
                number(messages.map(|m| m.per_second), 0),
            );
        }
        if let Some(drain) = &self.drain.drover {
            let _ = writeln!(out, "| drain | {:.2} | - | - | - |", drain.writes.per_run);
        }
        let _ = writeln!(
            out,
            "\nWrites are stream sequence numbers' advance over the measured runs, all streams together (background writes such as heartbeats included). Messages are counted on a `>` subscription in a phase of their own at the same concurrency, since the counting slows the runs.\n"
        );

        let mut columns: Vec<(String, &BTreeMap<String, f64>)> = self
            .drover
            .iter()
            .map(|d| (d.completion.in_flight.to_string(), &d.writes.by_stream))
            .collect();
        if let Some(drain) = &self.drain.drover {
            columns.push(("drain".to_owned(), &drain.writes.by_stream));
        }
        let per_run = |by: &BTreeMap<String, f64>, key: &str| by.get(key).copied();
        table(out, "stream", &columns, |by, key| {
            number(per_run(by, key), 2)
        });

        let columns: Vec<(String, &BTreeMap<_, _>)> = self
            .drover
            .iter()
            .filter_map(|d| {
                let messages = d.messages.as_ref()?;
                Some((d.completion.in_flight.to_string(), &messages.by_class))
            })
            .collect();
        if !columns.is_empty() {
            let _ = writeln!(
                out,
                "\nMessages per run by subject class, with their mean size (classes under 0.005 per run everywhere left out; the JSON has them):\n"
            );
            let seen = |by: &BTreeMap<String, ClassCount>, key: &str| {
                by.get(key).is_some_and(|count| count.per_run >= 0.005)
            };
            let columns: Vec<(String, BTreeMap<String, ClassCount>)> = columns
                .iter()
                .map(|(name, by)| {
                    let kept = by
                        .iter()
                        .filter(|(key, _)| columns.iter().any(|(_, other)| seen(other, key)))
                        .map(|(key, count)| (key.clone(), *count))
                        .collect();
                    (name.clone(), kept)
                })
                .collect();
            let columns: Vec<(String, &BTreeMap<String, ClassCount>)> = columns
                .iter()
                .map(|(name, by)| (name.clone(), by))
                .collect();
            table(out, "subject class", &columns, |by, key| {
                by.get(key).map_or_else(
                    || "-".to_owned(),
                    |count| format!("{:.2} ({:.0} B)", count.per_run, count.mean_bytes),
                )
            });
        }
    }

    fn scale_table(out: &mut String, scale: &ScaleFigures) {
        let _ = writeln!(
            out,
            "\n## Scale: {} workers pulsing every second\n",
            scale.workers
        );
        let _ = writeln!(out, "| service | cores | RSS MiB | peak RSS MiB |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (name, cost) in [
            ("heartbeat-monitor", &scale.monitor),
            ("registry", &scale.registry),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {:.3} | {:.1} | {:.1} |",
                cost.cores, cost.rss_mib, cost.peak_rss_mib
            );
        }
        let _ = writeln!(
            out,
            "\nRegistered and IDLE in {:.1} s. {} killed at once were all LOST after {:.2} s (lostAfterMs {:.0} s, heartbeat 1 s). Wrongly lost: {}.",
            scale.register_seconds, scale.killed, scale.detect_seconds, scale.lost_after_seconds, scale.false_losses
        );
    }

    fn tracing_table(out: &mut String, tracing: &TracingFigures) {
        let _ = writeln!(
            out,
            "\n## Tracing: span export off against on, {} in flight\n",
            tracing.in_flight
        );
        let _ = writeln!(
            out,
            "| phase | export | runs/s | p50 ms | p99 ms | export requests | KiB exported | bytes per run |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|");
        for (index, phase) in tracing.phases.iter().enumerate() {
            let c = &phase.completion;
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.0} |",
                index + 1,
                if phase.export { "on" } else { "off" },
                c.per_second,
                c.latency.p50_ms,
                c.latency.p99_ms,
                phase.sink_requests,
                phase.sink_bytes as f64 / 1024.0,
                phase.sink_bytes as f64 / c.count.max(1) as f64
            );
        }
        let _ = writeln!(
            out,
            "\nMean of each: off {:.0} runs/s, on {:.0} runs/s; **on / off {:.3}** ({} runs per phase).",
            tracing.off_per_second, tracing.on_per_second, tracing.ratio, tracing.runs
        );
    }
}

fn cost_rows(
    out: &mut String,
    label: &str,
    services: &std::collections::HashMap<String, ServiceCost>,
) {
    let mut services: Vec<_> = services.iter().collect();
    services.sort_by(|a, b| a.0.cmp(b.0));
    for (name, cost) in services {
        let _ = writeln!(
            out,
            "| {label} | {name} | {:.3} | {:.1} |",
            cost.cpu_seconds_per_1000_runs, cost.peak_rss_mib
        );
    }
}

/// A table with one row per key found in any column and one column per measurement.
fn table<V>(
    out: &mut String,
    what: &str,
    columns: &[(String, &BTreeMap<String, V>)],
    cell: impl Fn(&BTreeMap<String, V>, &str) -> String,
) {
    let keys: BTreeSet<&String> = columns.iter().flat_map(|(_, by)| by.keys()).collect();
    let header: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
    let _ = writeln!(out, "| {what} | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(columns.len()));
    for key in keys {
        let cells: Vec<String> = columns.iter().map(|(_, by)| cell(by, key)).collect();
        let _ = writeln!(out, "| `{key}` | {} |", cells.join(" | "));
    }
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}×"))
}
