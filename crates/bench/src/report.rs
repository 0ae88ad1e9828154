//! Writing results: JSON (everything), Markdown (the tables), SVG (throughput vs latency).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::end_to_end::DroverFigures;
use crate::scale::ScaleFigures;
use crate::stats::Throughput;
use crate::trace_overhead::TracingFigures;

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// nats-server version.
    pub nats_server: String,
    /// Load average when the run started.
    pub load_average: String,
}

/// Drover's figure over the baseline's at one concurrency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    /// Runs kept in flight.
    pub in_flight: usize,
    /// Drover runs/s divided by baseline jobs/s.
    pub throughput: f64,
    /// Drover p50 submit→completion over the baseline cycle's p50.
    pub p50_latency: f64,
    /// Drover p99 over the baseline's p99.
    pub p99_latency: f64,
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// When, RFC 3339.
    pub at: String,
    /// Where.
    pub machine: Machine,
    /// Runs per Drover measurement.
    pub runs: usize,
    /// The raw JetStream job cycle.
    pub baseline: Vec<Throughput>,
    /// Drover end to end.
    pub drover: Vec<DroverFigures>,
    /// Drover over baseline.
    pub ratios: Vec<Ratio>,
    /// Many workers pulsing.
    pub scale: Option<ScaleFigures>,
    /// Celery with Redis, acks_late.
    pub celery: Vec<Throughput>,
    /// Drover runs/s over Celery tasks/s, by concurrency.
    pub drover_over_celery: BTreeMap<usize, f64>,
    /// Span export off against on.
    #[serde(default)]
    pub tracing: Option<TracingFigures>,
}

impl Results {
    /// Computes the ratios from the measurements.
    pub fn derive(&mut self) {
        self.ratios = self
            .drover
            .iter()
            .filter_map(|drover| {
                let base = self
                    .baseline
                    .iter()
                    .find(|b| b.in_flight == drover.completion.in_flight)?;
                Some(Ratio {
                    in_flight: base.in_flight,
                    throughput: drover.completion.per_second / base.per_second,
                    p50_latency: drover.completion.latency.p50_ms / base.latency.p50_ms,
                    p99_latency: drover.completion.latency.p99_ms / base.latency.p99_ms,
                })
            })
            .collect();
        self.drover_over_celery = self
            .drover
            .iter()
            .filter_map(|drover| {
                let celery = self
                    .celery
                    .iter()
                    .find(|c| c.in_flight == drover.completion.in_flight)?;
                Some((
                    celery.in_flight,
                    drover.completion.per_second / celery.per_second,
                ))
            })
            .collect();
    }

    /// Writes `<stem>.json`, `<stem>.md` and `<stem>.svg` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<()> {
        write_json_and_markdown(dir, stem, self, &self.markdown())?;
        self.plot(&dir.join(format!("{stem}.svg")))?;
        Ok(())
    }

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
        let measured =
            !(self.baseline.is_empty() && self.drover.is_empty() && self.celery.is_empty());
        if measured {
            self.throughput_tables(&mut out);
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
        for celery in &self.celery {
            row(out, "Celery + Redis (acks_late)", celery, "-");
        }
        let _ = writeln!(
            out,
            "\nLatencies are submit→completion as the client sees it, except the last column.\n"
        );
        let _ = writeln!(out, "## Drover against the baseline (same run)\n");
        let _ = writeln!(out, "| in flight | throughput ratio | p50 latency ratio | p99 latency ratio | Drover / Celery |");
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
        for ratio in &self.ratios {
            let celery = self
                .drover_over_celery
                .get(&ratio.in_flight)
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}×"));
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.2} | {:.2} | {celery} |",
                ratio.in_flight, ratio.throughput, ratio.p50_latency, ratio.p99_latency
            );
        }
        let _ = writeln!(out, "\n## Cost per service\n");
        let _ = writeln!(
            out,
            "| in flight | service | CPU s per 1,000 runs | peak RSS MiB |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|");
        for drover in &self.drover {
            let mut services: Vec<_> = drover.services.iter().collect();
            services.sort_by(|a, b| a.0.cmp(b.0));
            for (name, cost) in services {
                let _ = writeln!(
                    out,
                    "| {} | {name} | {:.3} | {:.1} |",
                    drover.completion.in_flight, cost.cpu_seconds_per_1000_runs, cost.peak_rss_mib
                );
            }
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

    /// Throughput (x) against p99 latency (y, log scale), one line per system.
    fn plot(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let drover: Vec<&Throughput> = self.drover.iter().map(|d| &d.completion).collect();
        let series: Vec<(&str, Vec<&Throughput>, RGBColor)> = vec![
            (
                "JetStream job cycle (baseline)",
                self.baseline.iter().collect(),
                RGBColor(90, 90, 90),
            ),
            ("Drover end to end", drover, RGBColor(200, 60, 30)),
            (
                "Celery + Redis, acks_late",
                self.celery.iter().collect(),
                RGBColor(40, 90, 180),
            ),
        ];
        let all = series.iter().flat_map(|(_, points, _)| points.iter());
        let max_x = all.clone().map(|t| t.per_second).fold(10.0, f64::max) * 1.15;
        let max_y = all.clone().map(|t| t.latency.p99_ms).fold(1.0, f64::max) * 2.0;
        let min_y = all
            .map(|t| t.latency.p50_ms)
            .fold(max_y, f64::min)
            .max(0.01)
            / 2.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Throughput vs latency (p50 dashed, p99 solid; points at 1, 16, 256 in flight)",
                ("sans-serif", 18),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..max_x, (min_y..max_y).log_scale())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("completed per second")
            .y_desc("submit→completion latency, ms")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (name, points, color) in series {
            if points.is_empty() {
                continue;
            }
            let p99: Vec<(f64, f64)> = points
                .iter()
                .map(|t| (t.per_second, t.latency.p99_ms))
                .collect();
            let p50: Vec<(f64, f64)> = points
                .iter()
                .map(|t| (t.per_second, t.latency.p50_ms))
                .collect();
            chart
                .draw_series(LineSeries::new(p99.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    p99.iter()
                        .map(|&point| Circle::new(point, 4, color.filled())),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart
                .draw_series(DashedLineSeries::new(
                    p50.clone(),
                    6,
                    4,
                    color.stroke_width(1),
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart
                .draw_series(
                    p50.iter()
                        .map(|&point| Circle::new(point, 3, color.stroke_width(1))),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

/// Writes `value` as `<stem>.json` and `markdown` as `<stem>.md` into `dir`, creating it.
pub fn write_json_and_markdown(
    dir: &Path,
    stem: &str,
    value: &impl Serialize,
    markdown: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(value)?,
    )?;
    std::fs::write(dir.join(format!("{stem}.md")), markdown)?;
    Ok(())
}
