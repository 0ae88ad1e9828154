//! The cost of tracing: the end-to-end scenario with span export off, then on.
//!
//! Each phase starts a fresh stack and a worker process (`drover-bench worker`), warms up,
//! and measures no-op runs at one concurrency. With export on, the services and the workers
//! get `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a sink in this process that accepts
//! `POST /v1/traces` and counts requests and bytes without decoding them; their batch
//! settings are the OpenTelemetry defaults. With export off the endpoint is blank, which
//! every Drover process reads as unset. Phases alternate off, on, off, on, … so that drift
//! in the machine's speed falls on both sides alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::end_to_end::{Bench, ServiceCost, Workers};
use crate::stats::Throughput;

/// OTLP/HTTP's path for traces.
const TRACES_PATH: &str = "/v1/traces";

/// Longer than the OpenTelemetry default batch delay (`OTEL_BSP_SCHEDULE_DELAY`, 5 s).
const QUIET_FOR: Duration = Duration::from_millis(5500);
/// The longest wait for the exporters to flush after a phase.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);

/// The variables that decide whether a Drover process exports spans.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// One measured phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    /// Whether spans were exported.
    pub export: bool,
    /// Throughput and submit→completion latency.
    pub completion: Throughput,
    /// Export requests the sink received from the start of the measured runs until the
    /// exporters went quiet.
    pub sink_requests: u64,
    /// Bytes the sink received in the same time.
    pub sink_bytes: u64,
    /// Cost of each process.
    pub services: std::collections::HashMap<String, ServiceCost>,
}

/// The phases and what they add up to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TracingFigures {
    /// Runs kept in flight.
    pub in_flight: usize,
    /// Runs measured per phase.
    pub runs: usize,
    /// In the order measured.
    pub phases: Vec<Phase>,
    /// Mean runs/s with export off.
    pub off_per_second: f64,
    /// Mean runs/s with export on.
    pub on_per_second: f64,
    /// `on_per_second / off_per_second`.
    pub ratio: f64,
}

/// Counts what arrives on `POST /v1/traces`.
#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// An OTLP/HTTP traces sink on 127.0.0.1 that answers 200 and only counts.
pub struct Sink {
    endpoint: String,
    counts: Arc<Counts>,
    shutdown: CancellationToken,
}

impl Sink {
    /// Listens on a free port and serves until dropped.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the trace sink")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let counts = Arc::new(Counts::default());
        let router = Router::new()
            .route(TRACES_PATH, post(take))
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(&counts));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                eprintln!("trace sink stopped: {error}");
            }
        });
        Ok(Self {
            endpoint,
            counts,
            shutdown,
        })
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Waits until nothing has arrived for longer than an exporter's default batch delay
    /// (5 s), so that the spans of the runs just measured are in (at most [`DRAIN_LIMIT`]).
    pub async fn wait_quiet(&self) {
        let started = tokio::time::Instant::now();
        let mut last = self.counts();
        let mut since = started;
        while since.elapsed() < QUIET_FOR && started.elapsed() < DRAIN_LIMIT {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.counts();
            if now != last {
                last = now;
                since = tokio::time::Instant::now();
            }
        }
    }

    /// Requests and bytes received so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.requests.load(Ordering::Relaxed),
            self.counts.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An empty `ExportTraceServiceResponse` is zero bytes of protobuf.
async fn take(
    State(counts): State<Arc<Counts>>,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1]) {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
    )
}

/// The environment of every process for one phase.
fn otel_env(export: bool, sink: &Sink) -> Vec<(String, String)> {
    let endpoint = if export { sink.endpoint() } else { "" };
    let mut env: Vec<(String, String)> = ENDPOINT_VARS
        .iter()
        .map(|name| ((*name).to_owned(), String::new()))
        .collect();
    env[0].1 = endpoint.to_owned();
    env.push((
        "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
        "http/protobuf".to_owned(),
    ));
    env
}

/// Measures `rounds` pairs of phases (off, then on) of `runs` runs at `in_flight`.
pub async fn measure(
    rounds: usize,
    in_flight: usize,
    runs: usize,
    workers: usize,
    capacity: u32,
) -> anyhow::Result<TracingFigures> {
    let sink = Sink::start().await?;
    let mut phases = Vec::with_capacity(rounds * 2);
    for round in 1..=rounds {
        for export in [false, true] {
            let env = otel_env(export, &sink);
            let bench = Arc::new(
                Bench::start_with(workers, capacity, &env, Workers::Process(env.clone())).await?,
            );
            bench.measure(in_flight, runs.min(1000)).await?;
            let (requests, bytes) = sink.counts();
            let figures = bench.measure(in_flight, runs).await?;
            if export {
                sink.wait_quiet().await;
            }
            let (requests_after, bytes_after) = sink.counts();
            bench.stop();
            drop(bench);
            let phase = Phase {
                export,
                completion: figures.completion,
                sink_requests: requests_after - requests,
                sink_bytes: bytes_after - bytes,
                services: figures.services,
            };
            eprintln!(
                "  round {round}, export {}: {:.0} runs/s, completion p50 {:.2} ms p99 {:.2} ms; sink got {} requests, {:.0} KiB",
                if export { "on " } else { "off" },
                phase.completion.per_second,
                phase.completion.latency.p50_ms,
                phase.completion.latency.p99_ms,
                phase.sink_requests,
                phase.sink_bytes as f64 / 1024.0,
            );
            phases.push(phase);
            // Let the killed stack's ports and files go before the next one starts.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mean = |export: bool| {
        let rates: Vec<f64> = phases
            .iter()
            .filter(|phase| phase.export == export)
            .map(|phase| phase.completion.per_second)
            .collect();
        rates.iter().sum::<f64>() / rates.len().max(1) as f64
    };
    let (off, on) = (mean(false), mean(true));
    Ok(TracingFigures {
        in_flight,
        runs,
        phases,
        off_per_second: off,
        on_per_second: on,
        ratio: on / off.max(f64::MIN_POSITIVE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sink_counts_posts_to_v1_traces() {
        let sink = Sink::start().await.expect("sink");
        let client = tokio::net::TcpStream::connect(sink.endpoint().trim_start_matches("http://"))
            .await
            .expect("connect");
        let (mut read, mut write) = client.into_split();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        write
            .write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            .await
            .expect("write");
        let mut answer = String::new();
        read.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(sink.counts(), (1, 5));
    }

    #[test]
    fn export_off_blanks_both_endpoints() {
        let sink = Sink {
            endpoint: "http://127.0.0.1:1".to_owned(),
            counts: Arc::default(),
            shutdown: CancellationToken::new(),
        };
        let off = otel_env(false, &sink);
        assert!(off
            .iter()
            .filter(|(key, _)| ENDPOINT_VARS.contains(&key.as_str()))
            .all(|(_, value)| value.is_empty()));
        let on = otel_env(true, &sink);
        assert!(on.contains(&(
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            "http://127.0.0.1:1".to_owned()
        )));
    }
}
