//! `drover-bench`: where Drover stands, in one run on one machine.
//!
//! 1. The raw JetStream job cycle (the baseline) at 1, 16 and 256 in flight.
//! 2. Drover end to end: no-op runs through the real services with Rust SDK workers, at the
//!    same concurrencies, with each service's CPU and memory.
//! 3. Every Drover figure as a ratio to the baseline measured in the same run.
//! 4. Scale: many simulated workers pulsing every second.
//! 5. Drover draining a backlog submitted at once, and what a run costs the broker
//!    (JetStream writes and NATS messages per run).
//! 6. Peers: the same workload on Dramatiq and on Celery, each with Redis
//!    (bench/peers/*/run.sh), with client lanes and draining a backlog.
//! 7. The cost of tracing: the end-to-end scenario with span export off and on, alternating.
//!
//! `drover-bench soak` is apart: a steady rate of runs for minutes (10 by default), and what
//! piles up meanwhile: service logs, memory, JetStream storage per run (see `soak.rs`).
//! So is `drover-bench console`: how long `drover-console` takes to catch up with 100,000
//! stored runs and 1,000 workers, and how fast its pages render then (see `console.rs`).
//!
//! Results go to `bench/results/` as JSON, Markdown and an SVG plot. Build in release
//! (`cargo build --release --bins`) so that the services measured are the optimised ones.

mod baseline;
mod console;
mod end_to_end;
mod peers;
mod report;
mod scale;
mod soak;
mod stats;
mod trace_overhead;
mod traffic;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use drover_testkit::NatsServer;

use crate::peers::{Peer, Workload};
use crate::report::{Drains, Machine, Results};

/// Drover's benchmark.
#[derive(Debug, Parser)]
#[command(name = "drover-bench", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Only these parts (all when not given).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Stage>,
    /// Runs per Drover measurement (and jobs per baseline measurement).
    #[arg(long, default_value_t = 5000)]
    runs: usize,
    /// Concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    in_flight: Vec<usize>,
    /// Rust SDK workers for the Drover measurement.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Capacity of each worker.
    #[arg(long, default_value_t = 64)]
    capacity: u32,
    /// Simulated workers for the scale measurement (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    scale_workers: usize,
    /// How many of them to kill at once.
    #[arg(long, default_value_t = 500)]
    scale_killed: usize,
    /// Runs (jobs for the peers) in the backlog each system drains (0 skips the drains).
    #[arg(long, default_value_t = 5000)]
    drain: usize,
    /// Drover's submissions of the backlog awaiting their replies at a time.
    #[arg(long, default_value_t = 256)]
    drain_submitters: usize,
    /// The peers' threads submitting the backlog (Python clients; more only contend).
    #[arg(long, default_value_t = 16)]
    peer_drain_threads: usize,
    /// Runs of each phase that counts NATS messages, one per concurrency (0 skips them).
    #[arg(long, default_value_t = 1000)]
    count_runs: usize,
    /// Skip the Celery peer.
    #[arg(long)]
    skip_celery: bool,
    /// Skip the Dramatiq peer.
    #[arg(long)]
    skip_dramatiq: bool,
    /// Pairs of tracing phases (export off, then on) to measure (0 skips them).
    #[arg(long, default_value_t = 2)]
    tracing_rounds: usize,
    /// Concurrency of the tracing phases.
    #[arg(long, default_value_t = 16)]
    tracing_in_flight: usize,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stage {
    /// The raw JetStream job cycle.
    Baseline,
    /// Drover end to end, with writes and messages per run.
    Drover,
    /// Drover draining a backlog.
    DroverDrain,
    /// Many simulated workers pulsing.
    Scale,
    /// The Dramatiq peer.
    Dramatiq,
    /// The Celery peer.
    Celery,
    /// Span export off against on.
    Tracing,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs no-op workers for the tracing phases (started by drover-bench itself).
    #[command(hide = true)]
    Worker {
        /// How many workers.
        #[arg(long)]
        workers: usize,
        /// Capacity of each.
        #[arg(long)]
        capacity: u32,
    },
    /// A soak: runs at a steady rate for minutes; logs, memory and storage per run.
    Soak(soak::SoakArgs),
    /// The console: catch-up with many stored runs and workers, then each page's render time.
    Console(console::ConsoleArgs),
}

fn machine(nats_server: &str) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or_else(
            || "unknown".to_owned(),
            |(_, model)| model.trim().to_owned(),
        );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        memory_gib: memory_kib / 1024.0 / 1024.0,
        nats_server: nats_server.to_owned(),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn nats_server_version() -> String {
    drover_testkit::nats_server_binary()
        .ok()
        .and_then(|binary| {
            std::process::Command::new(binary)
                .arg("--version")
                .output()
                .ok()
        })
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::Worker { workers, capacity }) => {
            return end_to_end::serve_workers(workers, capacity).await;
        }
        Some(Command::Soak(soak)) => {
            eprintln!(
                "== soak: {} runs/s for {}, {} workers × capacity {}",
                soak.rate, soak.duration, soak.workers, soak.capacity
            );
            let report = soak::run(&soak).await?;
            let stem = format!("soak-{}", report.at.replace(':', "-"));
            report.write(&soak.out, &stem)?;
            println!("{}", report.markdown());
            eprintln!(
                "results written to {}",
                soak.out.join(format!("{stem}.{{json,md}}")).display()
            );
            return Ok(());
        }
        Some(Command::Console(console)) => {
            eprintln!(
                "== console: {} runs and {} workers stored, {} samples a page",
                console.runs, console.workers, console.samples
            );
            let report = console::run(&console).await?;
            report.write(&console.out, "console")?;
            println!("{}", report.markdown());
            eprintln!(
                "results written to {}",
                console.out.join("console.{json,md}").display()
            );
            let failed: Vec<&str> = report
                .pages
                .iter()
                .filter(|page| !page.is_ok())
                .map(|page| page.route.as_str())
                .collect();
            anyhow::ensure!(
                failed.is_empty(),
                "not every request was answered 200: {}",
                failed.join(", ")
            );
            return Ok(());
        }
        None => {}
    }
    let wanted = |stage: Stage| args.only.is_empty() || args.only.contains(&stage);
    let mut results = Results {
        at: drover_protocol::Timestamp::now().to_string(),
        machine: machine(&nats_server_version()),
        runs: args.runs,
        baseline: Vec::new(),
        drover: Vec::new(),
        ratios: Vec::new(),
        scale: None,
        celery: Vec::new(),
        drover_over_celery: Default::default(),
        dramatiq: Vec::new(),
        drover_over_dramatiq: Default::default(),
        drain: Drains::default(),
        tracing: None,
    };
    eprintln!("machine: {:?}", results.machine);

    if wanted(Stage::Baseline) {
        eprintln!("== baseline: the raw JetStream job cycle");
        let nats = NatsServer::start().await?;
        // Warm up the server and the connections first.
        baseline::job_cycle(&nats.url(), 16, 2000).await?;
        for &in_flight in &args.in_flight {
            let figures = baseline::job_cycle(&nats.url(), in_flight, args.runs).await?;
            eprintln!(
                "  {in_flight:>3} in flight: {:.0} jobs/s, p50 {:.2} ms, p99 {:.2} ms",
                figures.per_second, figures.latency.p50_ms, figures.latency.p99_ms
            );
            results.baseline.push(figures);
        }
    }

    if wanted(Stage::Drover) {
        eprintln!(
            "== Drover end to end ({} workers × capacity {})",
            args.workers, args.capacity
        );
        let bench = Arc::new(end_to_end::Bench::start(args.workers, args.capacity).await?);
        bench.measure(16, 1000).await?;
        for &in_flight in &args.in_flight {
            let mut figures = bench.measure(in_flight, args.runs).await?;
            let c = &figures.completion;
            eprintln!(
                "  {in_flight:>3} in flight: {:.0} runs/s, completion p50 {:.2} ms p99 {:.2} ms, starting p50 {:.2} ms, {:.2} writes per run",
                c.per_second, c.latency.p50_ms, c.latency.p99_ms, figures.starting.p50_ms, figures.writes.per_run
            );
            if args.count_runs > 0 {
                let messages = bench.count_messages(in_flight, args.count_runs).await?;
                eprintln!(
                    "      counting messages: {:.1} per run over {} runs ({:.0} runs/s while counting)",
                    messages.per_run, messages.runs, messages.per_second
                );
                figures.messages = Some(messages);
            }
            results.drover.push(figures);
        }
        bench.stop();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    if wanted(Stage::DroverDrain) && args.drain > 0 {
        eprintln!(
            "== Drover draining a backlog of {} ({} workers × capacity {})",
            args.drain, args.workers, args.capacity
        );
        let bench = Arc::new(end_to_end::Bench::start(args.workers, args.capacity).await?);
        bench.measure(16, 1000).await?;
        let figures = bench.drain(args.drain, args.drain_submitters).await?;
        let d = &figures.drain;
        eprintln!(
            "  all submitted after {:.2} s, all SUCCEEDED after {:.2} s: {:.0} runs/s, {:.2} writes per run",
            d.submit_seconds, d.seconds, d.per_second, figures.writes.per_run
        );
        results.drain.drover = Some(figures);
        bench.stop();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    if wanted(Stage::Scale) && args.scale_workers > 0 {
        eprintln!(
            "== scale: {} workers pulsing every second",
            args.scale_workers
        );
        let figures = scale::measure(
            args.scale_workers,
            args.scale_killed,
            Duration::from_secs(20),
        )
        .await?;
        eprintln!(
            "  monitor {:.3} cores, registry {:.3} cores; {} killed found in {:.2} s",
            figures.monitor.cores, figures.registry.cores, figures.killed, figures.detect_seconds
        );
        results.scale = Some(figures);
    }

    let workload = Workload {
        tasks: args.runs.min(5000),
        in_flight: args.in_flight.clone(),
        drain: args.drain,
        submitters: args.peer_drain_threads,
    };
    if wanted(Stage::Dramatiq) && !args.skip_dramatiq {
        eprintln!("== peer: Dramatiq + Redis, 2 processes × 8 threads, Results middleware");
        match peers::measure(Peer::Dramatiq, &workload).await {
            Ok(figures) => {
                figures.print();
                results.dramatiq = figures.lanes;
                results.drain.dramatiq = figures.drain;
                results.drain.peer_threads = workload.submitters;
            }
            Err(error) => eprintln!("  skipped: {error:#}"),
        }
    }

    if wanted(Stage::Celery) && !args.skip_celery {
        eprintln!("== peer: Celery + Redis, acks_late");
        match peers::measure(Peer::Celery, &workload).await {
            Ok(figures) => {
                figures.print();
                results.celery = figures.lanes;
                results.drain.celery = figures.drain;
                results.drain.peer_threads = workload.submitters;
            }
            Err(error) => eprintln!("  skipped: {error:#}"),
        }
    }

    if wanted(Stage::Tracing) && args.tracing_rounds > 0 {
        eprintln!(
            "== tracing: export off against on, {} in flight, {} rounds",
            args.tracing_in_flight, args.tracing_rounds
        );
        let figures = trace_overhead::measure(
            args.tracing_rounds,
            args.tracing_in_flight,
            args.runs,
            args.workers,
            args.capacity,
        )
        .await?;
        eprintln!(
            "  export off {:.0} runs/s, on {:.0} runs/s: on/off {:.3}",
            figures.off_per_second, figures.on_per_second, figures.ratio
        );
        results.tracing = Some(figures);
    }

    results.derive();
    let stem = results.at.replace(':', "-");
    results.write(&args.out, &stem)?;
    // A run of some parts only does not replace the latest full results.
    if args.only.is_empty() {
        results.write(&args.out, "latest")?;
    }
    println!("{}", results.markdown());
    eprintln!("results written to {}", args.out.display());
    Ok(())
}
