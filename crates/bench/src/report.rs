//! Writing results: JSON (everything), Markdown (the tables), SVG (throughput vs latency).

mod markdown;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::end_to_end::{DroverDrain, DroverFigures};
use crate::scale::ScaleFigures;
use crate::stats::{Drain, Throughput};
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

/// Each system draining a backlog submitted at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Drains {
    /// Drover, with the same workers as end to end.
    pub drover: Option<DroverDrain>,
    /// Dramatiq with Redis.
    pub dramatiq: Option<Drain>,
    /// Celery with Redis.
    pub celery: Option<Drain>,
    /// The peers' client threads, each submitting its share and then waiting for it.
    #[serde(default)]
    pub peer_threads: usize,
    /// Drover runs/s over Dramatiq's jobs/s.
    pub drover_over_dramatiq: Option<f64>,
    /// Drover runs/s over Celery's tasks/s.
    pub drover_over_celery: Option<f64>,
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
    /// Dramatiq with Redis and its Results middleware, 2 processes × 8 threads.
    #[serde(default)]
    pub dramatiq: Vec<Throughput>,
    /// Drover runs/s over Dramatiq jobs/s, by concurrency.
    #[serde(default)]
    pub drover_over_dramatiq: BTreeMap<usize, f64>,
    /// Backlogs submitted at once and drained.
    #[serde(default)]
    pub drain: Drains,
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
        self.drover_over_celery = over(&self.drover, &self.celery);
        self.drover_over_dramatiq = over(&self.drover, &self.dramatiq);
        let drover = self.drain.drover.as_ref().map(|d| d.drain.per_second);
        let ratio = |peer: Option<Drain>| Some(drover? / peer?.per_second);
        self.drain.drover_over_dramatiq = ratio(self.drain.dramatiq);
        self.drain.drover_over_celery = ratio(self.drain.celery);
    }

    /// Writes `<stem>.json`, `<stem>.md` and `<stem>.svg` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<()> {
        write_json_and_markdown(dir, stem, self, &self.markdown())?;
        self.plot(&dir.join(format!("{stem}.svg")))?;
        Ok(())
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
                "Dramatiq + Redis, 2 × 8 threads",
                self.dramatiq.iter().collect(),
                RGBColor(40, 150, 80),
            ),
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

/// Drover runs/s over `peer`'s jobs/s at each concurrency both measured.
fn over(drover: &[DroverFigures], peer: &[Throughput]) -> BTreeMap<usize, f64> {
    drover
        .iter()
        .filter_map(|drover| {
            let peer = peer
                .iter()
                .find(|p| p.in_flight == drover.completion.in_flight)?;
            Some((
                peer.in_flight,
                drover.completion.per_second / peer.per_second,
            ))
        })
        .collect()
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
