//! Soak: a steady rate of runs for minutes through the real services at their default log
//! level, measuring what piles up.
//!
//! nats-server and the four service binaries start through the testkit's `Stack`, with
//! `RUST_LOG` blank (which every service reads as unset: its own default filter) and the
//! services' default heartbeat settings; each service's stdout and stderr go to a file that
//! is counted as it grows. `--workers` Rust SDK workers (`soak-w1`, `soak-w2`, …) of
//! `--capacity` serve `soak.noop` in this process; each run writes `--log-lines` lines
//! through the worker's log API (`v1.log.<workerID>`) and succeeds.
//!
//! Runs are submitted open loop: submission *n* is due `n / rate` after the start and is
//! sent then, whether or not earlier runs have ended; one sent more than [`LATE_AFTER`]
//! after its due time counts as late. After `--duration` it waits until every accepted run
//! has ended (run events on `v1.run.events.*`; after [`STALL_LIMIT`] without an end it asks
//! `v1.run.get` about the rest). Every `--sample-every`, and once at the start and the end,
//! it samples the processes' memory and CPU (`/proc`), every JetStream stream's messages and
//! bytes, the store directory's size, and the service logs, and prints a progress line.

mod summary;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::Client;
use drover_protocol::envelope::{decode_reply, RawEnvelope};
use drover_protocol::subject::{self, keys, resources};
use drover_protocol::{
    encode, Accepted, LogLevel, RoutineId, RunEvent, RunGet, RunId, RunRecord, RunSpec, RunStatus,
    WorkerStatus,
};
use drover_testkit::{patient, ProcStats, Stack};
use drover_worker::Worker;
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use summary::SoakReport;
use summary::{
    per_day, slope, DiskUse, LogCount, Logs, ProcSample, ProcessUse, Runs, Sample, ServiceLog,
    Settings, StoreUse, Stored, WorkerShare, NATS_SERVER,
};

/// The routine the soak's workers serve.
const ROUTINE: &str = "soak.noop";
/// What each run logs.
const LOG_MESSAGE: &str = "soak run";
/// A submission sent later than this after its due time counts as late.
const LATE_AFTER: Duration = Duration::from_millis(100);
/// Waiting for the runs to end stops after this long without one ending (scaled by
/// `DROVER_TEST_PATIENCE`, like the next).
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// How long the workers may take to be IDLE.
const WORKERS_UP_LIMIT: Duration = Duration::from_secs(30);
/// The services' own defaults (`drover_service_kit::settings::Settings`), so that
/// heartbeats cost what they cost in a deployment left at its defaults.
const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
const LOST_AFTER_MS: u64 = 15_000;
/// The start of the line the testkit writes into a service log before each start.
const TESTKIT_MARKER: &[u8] = b"==== testkit: ";
/// What this process is called in the figures: it submits and runs the workers.
const THIS_PROCESS: &str = "drover-bench (client and workers)";

/// `drover-bench soak`: its flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Runs submitted per second (open loop: on schedule, not waiting for runs to end).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// How long to submit (`10m`, `90s`, …); then every run is waited for.
    #[arg(long, default_value = "10m")]
    pub duration: humantime::Duration,
    /// Rust SDK workers (`soak-w1`, `soak-w2`, …).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Capacity of each worker.
    #[arg(long, default_value_t = 8)]
    pub capacity: u32,
    /// Log lines each run writes through the worker's log API.
    #[arg(long, default_value_t = 1)]
    pub log_lines: u32,
    /// Submits each run with an idempotency key of its own (`soak-<n>`), so that the run
    /// keys bucket is measured too.
    #[arg(long)]
    pub idempotency_keys: bool,
    /// Passed to the services as `DROVER_RUN_RETENTION_MS` (their default, one day, when
    /// not given).
    #[arg(long)]
    pub run_retention: Option<humantime::Duration>,
    /// Time between samples (and progress lines).
    #[arg(long, default_value = "30s")]
    pub sample_every: humantime::Duration,
    /// Where results go (`soak-<time>.json` and `.md`).
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

impl SoakArgs {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0,
            "--rate must be above 0"
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be above 0");
        anyhow::ensure!(self.workers > 0, "--workers must be 1 or more");
        anyhow::ensure!(self.capacity > 0, "--capacity must be 1 or more");
        anyhow::ensure!(
            !self.sample_every.is_zero(),
            "--sample-every must be above 0"
        );
        Ok(())
    }

    fn worker_ids(&self) -> Vec<String> {
        (1..=self.workers).map(|n| format!("soak-w{n}")).collect()
    }
}

/// The stream of `resources::RUNS_BUCKET`, whose messages are the runs kept.
fn runs_stream() -> String {
    bucket_stream(resources::RUNS_BUCKET)
}

/// JetStream keeps bucket `name` in the stream `KV_<name>`.
fn bucket_stream(name: &str) -> String {
    format!("KV_{name}")
}

/// Every stream Drover makes, streams first, then buckets.
fn drover_streams() -> Vec<String> {
    [
        resources::QUEUE_STREAM,
        resources::DIRECTIVES_STREAM,
        resources::TIMERS_STREAM,
        resources::LOG_INTAKE_STREAM,
        resources::LOGS_STREAM,
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(
        [
            resources::WORKERS_BUCKET,
            resources::RUNS_BUCKET,
            resources::RUN_KEYS_BUCKET,
            resources::LEADERS_BUCKET,
        ]
        .into_iter()
        .map(bucket_stream),
    )
    .collect()
}

/// Runs the soak and returns its report (not yet written).
pub async fn run(args: &SoakArgs) -> anyhow::Result<SoakReport> {
    args.check()?;
    let at = drover_protocol::Timestamp::now().to_string();
    let machine = crate::machine(&crate::nats_server_version());
    let mut builder = Stack::builder()
        .with_all_services()
        .heartbeat_interval_ms(HEARTBEAT_INTERVAL_MS)
        .lost_after_ms(LOST_AFTER_MS)
        // Blank reads as unset: each service's own default filter.
        .env("RUST_LOG", "");
    if let Some(retention) = args.run_retention {
        builder = builder.env("DROVER_RUN_RETENTION_MS", retention.as_millis().to_string());
    }
    let stack = builder.start().await.context("starting the stack")?;
    let tracker = Arc::new(Tracker::default());
    listen_for_ends(&stack.client().await, Arc::clone(&tracker)).await?;

    let shutdown = CancellationToken::new();
    let _stop_workers = shutdown.clone().drop_guard();
    for worker_id in args.worker_ids() {
        let lines = args.log_lines;
        let worker = Worker::builder(worker_id)
            .capacity(args.capacity)
            .client(stack.client().await)
            .routine(ROUTINE, move |ctx, _params| async move {
                for _ in 0..lines {
                    ctx.log(LogLevel::Info, LOG_MESSAGE);
                }
                Ok(Value::Null)
            });
        tokio::spawn(worker.run(shutdown.clone()));
    }
    let client = stack.client().await;
    wait_for_workers(&client, args.workers).await?;

    let mut probe = Probe::new(&stack, Arc::clone(&tracker)).await;
    let first = probe.sample().await?;
    progress(&first, &tracker);
    let stop_sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample_every(
        probe,
        args.sample_every.into(),
        stop_sampling.clone(),
    ));

    let timing = submit(&client, args, &tracker).await?;
    let unresolved = wait_for_ends(&client, &tracker).await;
    let all_ended_seconds = timing.started.elapsed().as_secs_f64();

    stop_sampling.cancel();
    let (mut probe, mut samples) = sampler.await.context("the sampler stopped")?;
    let last = probe.sample().await?;
    progress(&last, &tracker);
    samples.insert(0, first);
    samples.push(last);

    let runs = tally_runs(&tracker, &unresolved, &timing, all_ended_seconds);
    Ok(SoakReport {
        at,
        machine,
        settings: Settings {
            rate: args.rate,
            duration_seconds: Duration::from(args.duration).as_secs_f64(),
            workers: args.workers,
            capacity: args.capacity,
            log_lines: args.log_lines,
            idempotency_keys: args.idempotency_keys,
            run_retention_ms: args
                .run_retention
                .map(|retention| u64::try_from(retention.as_millis()).unwrap_or(u64::MAX)),
            sample_every_seconds: Duration::from(args.sample_every).as_secs_f64(),
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            lost_after_ms: LOST_AFTER_MS,
            services_rust_log: String::new(),
        },
        workers: shares(&tracker, &args.worker_ids()),
        logs: logs(&samples),
        processes: processes(&samples),
        storage: storage(&samples, runs.accepted),
        disk: disk(&samples, runs.accepted),
        nats_rss_bytes_per_stored_run: slope(
            &samples
                .iter()
                .map(|sample| (sample.stored_runs() as f64, sample.nats_rss() as f64))
                .collect::<Vec<_>>(),
        ),
        runs,
        samples,
    })
}

/// How a run ended, as its last event said.
#[derive(Debug, Clone)]
struct Ended {
    status: RunStatus,
    worker: Option<String>,
}

/// What the submitter and the event listener know, shared with the sampler.
#[derive(Debug, Default)]
struct Tracker {
    submitted: AtomicU64,
    refused: AtomicU64,
    late: AtomicU64,
    max_lag_micros: AtomicU64,
    accepted: Mutex<HashSet<RunId>>,
    ended: Mutex<HashMap<RunId, Ended>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Tracker {
    fn ended_count(&self) -> u64 {
        lock(&self.ended).len() as u64
    }

    /// Accepted runs that have not been seen to end.
    fn pending(&self) -> Vec<RunId> {
        let ended = lock(&self.ended);
        lock(&self.accepted)
            .iter()
            .filter(|run| !ended.contains_key(*run))
            .cloned()
            .collect()
    }

    fn end(&self, record: &RunRecord) {
        lock(&self.ended)
            .entry(record.run_id.clone())
            .or_insert_with(|| Ended {
                status: record.status,
                worker: record.worker_id.as_ref().map(|id| id.as_str().to_owned()),
            });
    }
}

/// Notes every run that ends, from `v1.run.events.*`.
async fn listen_for_ends(client: &Client, tracker: Arc<Tracker>) -> anyhow::Result<()> {
    let mut events = client.subscribe(subject::all_run_events()).await?;
    client.flush().await?;
    tokio::spawn(async move {
        while let Some(message) = events.next().await {
            // The services validated the event; only its record is needed here.
            let Ok(envelope) = serde_json::from_slice::<RawEnvelope>(&message.payload) else {
                continue;
            };
            let Ok(event) = serde_json::from_value::<RunEvent>(envelope.payload) else {
                continue;
            };
            if event.status.is_terminal() {
                tracker.end(&event.run);
            }
        }
    });
    Ok(())
}

async fn wait_for_workers(client: &Client, workers: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let limit = patient(WORKERS_UP_LIMIT);
    while drover_testkit::count_workers(client, WorkerStatus::Idle).await < workers {
        anyhow::ensure!(
            started.elapsed() < limit,
            "the workers were not all IDLE within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// When the submitting began and ended.
struct Timing {
    started: Instant,
    submit_seconds: f64,
}

/// Submits `rate × duration` runs, each at its due time, without waiting for any to end;
/// returns once every submission has been answered.
async fn submit(
    client: &Client,
    args: &SoakArgs,
    tracker: &Arc<Tracker>,
) -> anyhow::Result<Timing> {
    let routine = RoutineId::parse(ROUTINE).map_err(|error| anyhow::anyhow!(error))?;
    let plain = encode(&RunSpec::new(routine.clone()));
    let spec_of = |n: u64| {
        if !args.idempotency_keys {
            return plain.clone();
        }
        let mut spec = RunSpec::new(routine.clone());
        spec.idempotency_key = Some(format!("soak-{n}"));
        encode(&spec)
    };
    let total = (args.rate * Duration::from(args.duration).as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let started = Instant::now();
    let mut answers = JoinSet::new();
    for n in 0..total {
        let due = started + period.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        let lag = due.elapsed();
        if lag > LATE_AFTER {
            tracker.late.fetch_add(1, Ordering::Relaxed);
        }
        tracker.max_lag_micros.fetch_max(
            u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        tracker.submitted.fetch_add(1, Ordering::Relaxed);
        let (client, spec, tracker) = (client.clone(), spec_of(n), Arc::clone(tracker));
        answers.spawn(async move {
            let accepted = match client.request(keys::REQUEST_START, spec).await {
                Ok(reply) => decode_reply::<Accepted>(&reply.payload)
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            match accepted {
                Some(accepted) => {
                    lock(&tracker.accepted).insert(accepted.run_id);
                }
                None => {
                    tracker.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        while answers.try_join_next().is_some() {}
    }
    let submit_seconds = started.elapsed().as_secs_f64();
    while answers.join_next().await.is_some() {}
    Ok(Timing {
        started,
        submit_seconds,
    })
}

/// Waits until every accepted run has ended, or until none has ended for [`STALL_LIMIT`];
/// then asks `v1.run.get` about the rest and returns those that still had not ended.
async fn wait_for_ends(client: &Client, tracker: &Tracker) -> Vec<(RunId, Option<RunStatus>)> {
    let stall_limit = patient(STALL_LIMIT);
    let mut ended = tracker.ended_count();
    let mut since = Instant::now();
    loop {
        if tracker.pending().is_empty() {
            return Vec::new();
        }
        let now = tracker.ended_count();
        if now != ended {
            (ended, since) = (now, Instant::now());
        } else if since.elapsed() > stall_limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let pending = tracker.pending();
    eprintln!(
        "  no run ended for {stall_limit:?}; asking about the {} not seen to end",
        pending.len()
    );
    let mut unresolved = Vec::new();
    for run in pending {
        let answer: Result<RunRecord, _> = drover_testkit::call(
            client,
            keys::RUN_GET,
            &RunGet {
                run_id: run.clone(),
            },
        )
        .await;
        match answer {
            Ok(record) if record.status.is_terminal() => tracker.end(&record),
            Ok(record) => unresolved.push((run, Some(record.status))),
            Err(_) => unresolved.push((run, None)),
        }
    }
    unresolved
}

fn tally_runs(
    tracker: &Tracker,
    unresolved: &[(RunId, Option<RunStatus>)],
    timing: &Timing,
    all_ended_seconds: f64,
) -> Runs {
    let accepted = lock(&tracker.accepted);
    let ended = lock(&tracker.ended);
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for run in accepted.iter() {
        if let Some(end) = ended.get(run) {
            *by_status.entry(end.status.to_string()).or_default() += 1;
        }
    }
    for (_, status) in unresolved {
        let name = status.map_or_else(|| "unknown".to_owned(), |status| status.to_string());
        *by_status.entry(name).or_default() += 1;
    }
    let submitted = tracker.submitted.load(Ordering::Relaxed);
    let succeeded = by_status
        .get(&RunStatus::Succeeded.to_string())
        .copied()
        .unwrap_or(0);
    Runs {
        submitted,
        accepted: accepted.len() as u64,
        refused: tracker.refused.load(Ordering::Relaxed),
        succeeded,
        not_succeeded: submitted - succeeded.min(submitted),
        by_status,
        late: tracker.late.load(Ordering::Relaxed),
        late_after_ms: LATE_AFTER.as_secs_f64() * 1000.0,
        max_lag_ms: tracker.max_lag_micros.load(Ordering::Relaxed) as f64 / 1000.0,
        submit_seconds: timing.submit_seconds,
        all_ended_seconds,
    }
}

/// SUCCEEDED runs by the worker that held them last; every worker of the soak is listed.
fn shares(tracker: &Tracker, worker_ids: &[String]) -> Vec<WorkerShare> {
    let mut runs: BTreeMap<String, u64> = worker_ids.iter().map(|id| (id.clone(), 0)).collect();
    let accepted = lock(&tracker.accepted);
    for (run, end) in lock(&tracker.ended).iter() {
        if end.status == RunStatus::Succeeded && accepted.contains(run) {
            let worker = end.worker.clone().unwrap_or_else(|| "(none)".to_owned());
            *runs.entry(worker).or_default() += 1;
        }
    }
    let all: u64 = runs.values().sum();
    runs.into_iter()
        .map(|(worker_id, runs)| WorkerShare {
            worker_id,
            runs,
            share: runs as f64 / all.max(1) as f64,
        })
        .collect()
}

/// Counts the bytes and lines of a growing log, leaving out the testkit's marker lines.
#[derive(Debug, Default)]
struct LogTally {
    read_to: u64,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
    count: LogCount,
}

impl LogTally {
    /// Reads what was appended to `path` since the last call.
    fn update(&mut self, path: &Path) -> anyhow::Result<LogCount> {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        file.seek(SeekFrom::Start(self.read_to))?;
        let mut appended = Vec::new();
        file.read_to_end(&mut appended)?;
        self.read_to += appended.len() as u64;
        self.take(&appended);
        Ok(self.count)
    }

    /// Counts every whole line in `partial` + `appended`, keeping an unfinished one.
    fn take(&mut self, appended: &[u8]) {
        self.partial.extend_from_slice(appended);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        for line in self.partial[..=last_newline].split_inclusive(|&b| b == b'\n') {
            if !line.starts_with(TESTKIT_MARKER) {
                self.count.bytes += line.len() as u64;
                self.count.lines += 1;
            }
        }
        self.partial.drain(..=last_newline);
    }
}

/// Bytes allocated to the files under `dir`, as `du` counts them.
fn disk_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|metadata| metadata.blocks() * 512)
        .sum()
}

/// What is sampled: the processes, the streams, the store directory and the service logs.
struct Probe {
    started: Instant,
    tracker: Arc<Tracker>,
    js: jetstream::Context,
    processes: Vec<(String, u32)>,
    logs: Vec<(String, PathBuf, LogTally)>,
    store_dir: PathBuf,
}

impl Probe {
    async fn new(stack: &Stack, tracker: Arc<Tracker>) -> Self {
        let names = stack.service_names();
        let processes = std::iter::once((NATS_SERVER.to_owned(), stack.nats.pid()))
            .chain(
                names
                    .iter()
                    .map(|name| (name.clone(), stack.service(name).pid())),
            )
            .chain([(THIS_PROCESS.to_owned(), std::process::id())])
            .collect();
        let logs = names
            .iter()
            .map(|name| {
                let path = stack.service(name).log_path().to_owned();
                (name.clone(), path, LogTally::default())
            })
            .collect();
        Self {
            started: Instant::now(),
            tracker,
            js: stack.jetstream().await,
            processes,
            logs,
            store_dir: stack.nats.store_dir(),
        }
    }

    async fn sample(&mut self) -> anyhow::Result<Sample> {
        let seconds = self.started.elapsed().as_secs_f64();
        let submitted = self.tracker.submitted.load(Ordering::Relaxed);
        let ended = self.tracker.ended_count();
        let processes = self
            .processes
            .iter()
            .filter_map(|(name, pid)| {
                let stats = ProcStats::of(*pid).ok()?;
                Some((
                    name.clone(),
                    ProcSample {
                        rss_bytes: stats.rss_bytes,
                        peak_rss_bytes: stats.peak_rss_bytes,
                        cpu_seconds: stats.cpu.as_secs_f64(),
                    },
                ))
            })
            .collect();
        let mut streams: BTreeMap<String, Stored> = drover_streams()
            .into_iter()
            .map(|name| (name, Stored::default()))
            .collect();
        let mut listed = self.js.streams();
        while let Some(info) = listed.try_next().await.context("listing the streams")? {
            streams.insert(
                info.config.name.clone(),
                Stored {
                    messages: info.state.messages,
                    bytes: info.state.bytes,
                },
            );
        }
        let store_dir = self.store_dir.clone();
        let disk_bytes = tokio::task::spawn_blocking(move || disk_bytes(&store_dir)).await?;
        let mut logs = BTreeMap::new();
        for (name, path, tally) in &mut self.logs {
            logs.insert(name.clone(), tally.update(path)?);
        }
        Ok(Sample {
            seconds,
            submitted,
            ended,
            processes,
            streams,
            disk_bytes,
            logs,
        })
    }
}

/// Samples every `every` until `stop`; returns the probe and the samples.
async fn sample_every(
    mut probe: Probe,
    every: Duration,
    stop: CancellationToken,
) -> (Probe, Vec<Sample>) {
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => match probe.sample().await {
                Ok(sample) => {
                    progress(&sample, &probe.tracker);
                    samples.push(sample);
                }
                Err(error) => eprintln!("  a sample failed: {error:#}"),
            },
        }
    }
    (probe, samples)
}

/// One line on stderr for a sample.
fn progress(sample: &Sample, tracker: &Tracker) {
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "  [{:>5.0} s] submitted {}, ended {}, late {} | nats-server RSS {:.1} MiB, store {:.1} MiB, stored runs {} | service logs {} bytes",
        sample.seconds,
        sample.submitted,
        sample.ended,
        tracker.late.load(Ordering::Relaxed),
        mib(sample.nats_rss()),
        mib(sample.disk_bytes),
        sample.stored_runs(),
        sample.log_bytes(),
    );
}

fn first_and_last(samples: &[Sample]) -> (&Sample, &Sample) {
    let first = samples.first().expect("the soak samples at its start");
    let last = samples.last().expect("the soak samples at its end");
    (first, last)
}

fn logs(samples: &[Sample]) -> Logs {
    let (first, last) = first_and_last(samples);
    let seconds = last.seconds - first.seconds;
    let services: Vec<ServiceLog> = last
        .logs
        .iter()
        .map(|(service, total)| {
            let before = first.logs.get(service).copied().unwrap_or_default();
            let during = LogCount {
                bytes: total.bytes - before.bytes,
                lines: total.lines - before.lines,
            };
            ServiceLog {
                service: service.clone(),
                total: *total,
                during,
                bytes_per_day: per_day(during.bytes, seconds),
            }
        })
        .collect();
    let sum = |pick: fn(&ServiceLog) -> LogCount| {
        services
            .iter()
            .map(pick)
            .fold(LogCount::default(), |a, b| LogCount {
                bytes: a.bytes + b.bytes,
                lines: a.lines + b.lines,
            })
    };
    let (total, during) = (sum(|s| s.total), sum(|s| s.during));
    Logs {
        bytes_per_day: per_day(during.bytes, seconds),
        services,
        total,
        during,
    }
}

fn processes(samples: &[Sample]) -> Vec<ProcessUse> {
    let (first, last) = first_and_last(samples);
    last.processes
        .iter()
        .map(|(process, end)| {
            let start = first.processes.get(process).copied().unwrap_or_default();
            ProcessUse {
                process: process.clone(),
                start_rss_bytes: start.rss_bytes,
                end_rss_bytes: end.rss_bytes,
                rss_growth_bytes: end.rss_bytes as i64 - start.rss_bytes as i64,
                peak_rss_bytes: end.peak_rss_bytes,
                cpu_seconds: end.cpu_seconds - start.cpu_seconds,
            }
        })
        .collect()
}

fn storage(samples: &[Sample], runs: u64) -> Vec<StoreUse> {
    let (first, last) = first_and_last(samples);
    let known = drover_streams();
    let others = last.streams.keys().filter(|name| !known.contains(name));
    known
        .iter()
        .chain(others.cloned().collect::<Vec<_>>().iter())
        .map(|name| {
            let end = last.streams.get(name).copied().unwrap_or_default();
            let start = first.streams.get(name).copied().unwrap_or_default();
            StoreUse {
                name: name.clone(),
                kind: if name.starts_with("KV_") {
                    "bucket"
                } else {
                    "stream"
                }
                .to_owned(),
                messages: end.messages,
                bytes: end.bytes,
                start_bytes: start.bytes,
                bytes_per_run: (end.bytes as f64 - start.bytes as f64) / runs.max(1) as f64,
            }
        })
        .collect()
}

fn disk(samples: &[Sample], runs: u64) -> DiskUse {
    let (first, last) = first_and_last(samples);
    DiskUse {
        start_bytes: first.disk_bytes,
        end_bytes: last.disk_bytes,
        bytes_per_run: (last.disk_bytes as f64 - first.disk_bytes as f64) / runs.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tally_counts_whole_lines_without_the_testkit_markers() {
        let mut tally = LogTally::default();
        tally.take(b"==== testkit: start #1 of drover-registry --admin-addr x ====\n");
        tally.take(b"2026 INFO ready\n2026 INFO con");
        assert_eq!(
            tally.count,
            LogCount {
                bytes: 16,
                lines: 1
            }
        );
        tally.take(b"nected\n");
        assert_eq!(
            tally.count,
            LogCount {
                bytes: 36,
                lines: 2
            }
        );
        assert!(tally.partial.is_empty());
    }

    #[test]
    fn a_log_tally_reads_only_what_was_appended() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("service.log");
        std::fs::write(&path, "one\n").expect("write");
        let mut tally = LogTally::default();
        assert_eq!(tally.update(&path).expect("read").lines, 1);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut file, b"two\n").expect("append");
        assert_eq!(
            tally.update(&path).expect("read"),
            LogCount { bytes: 8, lines: 2 }
        );
    }

    #[test]
    fn every_drover_stream_and_bucket_is_listed() {
        let streams = drover_streams();
        assert_eq!(streams.len(), 9);
        assert!(streams.contains(&"DROVER_LOGS".to_owned()));
        assert!(streams.contains(&"KV_DROVER_RUNS".to_owned()));
        assert_eq!(runs_stream(), "KV_DROVER_RUNS");
    }
}
