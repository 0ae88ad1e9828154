//! Drover end to end: no-op runs through the real service binaries, done by Rust SDK workers.
//!
//! Each of `in_flight` lanes submits a run, waits for its SUCCEEDED event, and submits the
//! next. Submit→starting is measured to the moment the worker's handler starts (when the
//! workers run in this process); submit→completion to the moment the client sees the run end.
//! Each measurement also takes the JetStream writes per run from stream sequence numbers; a
//! phase of its own at the same concurrency counts the NATS messages per run
//! (`traffic.rs`). A drain submits a whole backlog at once and times it until every run
//! has SUCCEEDED.
//!
//! The workers run in this process, or in a child process of their own
//! (`drover-bench worker`), which has its own telemetry set from its environment.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::Client;
use drover_protocol::envelope::decode_reply;
use drover_protocol::subject::keys;
use drover_protocol::{encode, Accepted, RoutineId, RunId, RunSpec};
use drover_testkit::{ProcStats, Stack};
use drover_worker::{Worker, WorkerBuilder};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::stats::{Drain, Latency, Throughput};
use crate::traffic::{self, Messages, Spy, Writes};

/// The routine every benchmark run calls.
const ROUTINE: &str = "bench.noop";
/// What every benchmark worker's ID starts with.
const WORKER_PREFIX: &str = "bench-";

/// A run of the no-op routine.
fn noop_spec() -> anyhow::Result<RunSpec> {
    Ok(RunSpec::new(
        RoutineId::parse(ROUTINE).map_err(|e| anyhow::anyhow!(e))?,
    ))
}

/// What one service cost during a measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceCost {
    /// CPU seconds spent per 1,000 runs.
    pub cpu_seconds_per_1000_runs: f64,
    /// Peak resident memory so far, in MiB.
    pub peak_rss_mib: f64,
}

/// Drover at one concurrency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DroverFigures {
    /// Throughput and submit→completion latency.
    pub completion: Throughput,
    /// Submit→starting latency (the worker's handler begins).
    pub starting: Latency,
    /// Cost of each service.
    pub services: HashMap<String, ServiceCost>,
    /// JetStream writes per run.
    #[serde(default)]
    pub writes: Writes,
    /// NATS messages per run, counted in a phase of their own at the same concurrency.
    #[serde(default)]
    pub messages: Option<Messages>,
}

/// A backlog of runs submitted at once and drained.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DroverDrain {
    /// How long submitting and draining took.
    pub drain: Drain,
    /// Submissions awaiting their replies at a time.
    pub submitters: usize,
    /// JetStream writes per run.
    pub writes: Writes,
    /// Cost of each service.
    pub services: HashMap<String, ServiceCost>,
}

/// How a submitter learns when its run ended.
enum Ending {
    /// The SUCCEEDED event came before the reply to the submission.
    Ended(Instant),
    /// Not yet.
    Waiting(oneshot::Receiver<Instant>),
}

impl Ending {
    async fn wait(self) -> anyhow::Result<Instant> {
        match self {
            Self::Ended(at) => Ok(at),
            Self::Waiting(finished) => tokio::time::timeout(Duration::from_secs(60), finished)
                .await
                .context("a run did not end within a minute")?
                .context("the event listener stopped"),
        }
    }
}

/// Runs that started (handler entered), with when.
pub type Started = Arc<Mutex<HashMap<RunId, Instant>>>;
/// Lanes waiting for their run to end.
type Waiters = Arc<Mutex<HashMap<RunId, oneshot::Sender<Instant>>>>;

/// Where the SDK workers run.
#[derive(Debug, Clone)]
pub enum Workers {
    /// In this process, sharing the client's runtime (submit→starting is measured).
    InProcess,
    /// In one child process (`drover-bench worker`) with these environment variables.
    Process(Vec<(String, String)>),
}

/// A Drover stack with `workers` SDK workers of `capacity` each, ready to measure.
pub struct Bench {
    stack: Stack,
    client: Client,
    js: async_nats::jetstream::Context,
    started: Started,
    waiters: Waiters,
    early: Arc<Mutex<HashMap<RunId, Instant>>>,
    shutdown: CancellationToken,
    worker_process: Option<tokio::process::Child>,
}

impl Bench {
    /// Starts NATS, the four services and the workers, in this process.
    pub async fn start(workers: usize, capacity: u32) -> anyhow::Result<Self> {
        Self::start_with(workers, capacity, &[], Workers::InProcess).await
    }

    /// Starts NATS, the four services with `env` added to theirs, and the workers where
    /// `placement` says.
    pub async fn start_with(
        workers: usize,
        capacity: u32,
        env: &[(String, String)],
        placement: Workers,
    ) -> anyhow::Result<Self> {
        let mut builder = Stack::builder()
            .with_registry()
            .with_monitor()
            .with_scheduler()
            .with_log_collector()
            .heartbeat_interval_ms(1000)
            .lost_after_ms(5000)
            .env("RUST_LOG", "warn");
        for (key, value) in env {
            builder = builder.env(key, value);
        }
        let stack = builder.start().await.context("starting the stack")?;
        let client = stack.client().await;
        let started: Started = Arc::new(Mutex::new(HashMap::new()));
        let shutdown = CancellationToken::new();
        let worker_process = match placement {
            Workers::InProcess => {
                for index in 0..workers {
                    let worker_client = stack.client().await;
                    let builder =
                        noop_worker(index, capacity, Arc::clone(&started)).client(worker_client);
                    tokio::spawn(builder.run(shutdown.clone()));
                }
                None
            }
            Workers::Process(env) => Some(spawn_workers(&stack, workers, capacity, &env)?),
        };
        // Completions, as the client sees them.
        let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
        let early = Arc::new(Mutex::new(HashMap::new()));
        let mut events = client.subscribe("v1.run.events.*").await?;
        client.flush().await?;
        {
            let waiters = Arc::clone(&waiters);
            let early = Arc::clone(&early);
            tokio::spawn(async move {
                while let Some(message) = events.next().await {
                    let at = Instant::now();
                    let Ok(body) = serde_json::from_slice::<Value>(&message.payload) else {
                        continue;
                    };
                    if body["payload"]["status"] != "SUCCEEDED" {
                        continue;
                    }
                    let Ok(run) =
                        RunId::parse(body["payload"]["runID"].as_str().unwrap_or_default())
                    else {
                        continue;
                    };
                    let waiter = waiters
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&run);
                    match waiter {
                        Some(waiter) => {
                            let _ = waiter.send(at);
                        }
                        // The event beat the submitter's reply.
                        None => {
                            early
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(run, at);
                        }
                    }
                }
            });
        }
        let bench = Self {
            js: stack.jetstream().await,
            stack,
            client,
            started,
            waiters,
            early,
            shutdown,
            worker_process,
        };
        bench.wait_for_workers(workers).await?;
        Ok(bench)
    }

    async fn wait_for_workers(&self, workers: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = self
                .client
                .request(
                    keys::REGISTRY_LIST,
                    encode(&drover_protocol::RegistryList::default()),
                )
                .await?;
            if let Ok(Ok(list)) = decode_reply::<drover_protocol::WorkerList>(&reply.payload) {
                let idle = list
                    .workers
                    .iter()
                    .filter(|worker| worker.status == drover_protocol::WorkerStatus::Idle)
                    .count();
                if idle >= workers {
                    return Ok(());
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "workers did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The measured processes, by name: the services, nats-server, and this one.
    pub fn service_pids(&self) -> Vec<(String, u32)> {
        self.stack
            .service_names()
            .into_iter()
            .map(|name| {
                let pid = self.stack.service(&name).pid();
                (name, pid)
            })
            .chain([("nats-server".to_owned(), self.stack.nats.pid())])
            .chain(
                match self
                    .worker_process
                    .as_ref()
                    .and_then(tokio::process::Child::id)
                {
                    Some(pid) => vec![
                        ("client".to_owned(), std::process::id()),
                        ("workers".to_owned(), pid),
                    ],
                    // The submitting client and the SDK workers live in this process.
                    None => vec![("client and workers".to_owned(), std::process::id())],
                },
            )
            .collect()
    }

    /// Submits one run and returns when, its ID, and how to learn when it ended.
    async fn submit(&self, spec: &RunSpec) -> anyhow::Result<(Instant, RunId, Ending)> {
        let at = Instant::now();
        let reply = self
            .client
            .request(keys::REQUEST_START, encode(spec))
            .await?;
        let accepted: Accepted = decode_reply(&reply.payload)?
            .map_err(|error| anyhow::anyhow!("submission refused: {error}"))?;
        let (done, finished) = oneshot::channel();
        let mut waiters = self
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let early = self
            .early
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&accepted.run_id);
        let ending = match early {
            Some(ended) => Ending::Ended(ended),
            None => {
                waiters.insert(accepted.run_id.clone(), done);
                Ending::Waiting(finished)
            }
        };
        Ok((at, accepted.run_id, ending))
    }

    async fn submit_and_wait(&self, spec: &RunSpec) -> anyhow::Result<(Instant, RunId, Instant)> {
        let (at, run, ending) = self.submit(spec).await?;
        Ok((at, run, ending.wait().await?))
    }

    /// CPU and memory of each measured process now, to be compared after `count` runs.
    fn costs_before(&self) -> Vec<(String, ProcStats)> {
        self.service_pids()
            .into_iter()
            .filter_map(|(name, pid)| ProcStats::of(pid).ok().map(|stats| (name, stats)))
            .collect()
    }

    /// What each process spent since `before`, per 1,000 of `count` runs.
    fn costs_since(
        &self,
        before: &[(String, ProcStats)],
        count: usize,
    ) -> HashMap<String, ServiceCost> {
        let mut services = HashMap::new();
        for (name, pid) in self.service_pids() {
            let Some((_, old)) = before.iter().find(|(known, _)| *known == name) else {
                continue;
            };
            let Ok(now) = ProcStats::of(pid) else {
                continue;
            };
            services.insert(
                name,
                ServiceCost {
                    cpu_seconds_per_1000_runs: (now.cpu - old.cpu).as_secs_f64() * 1000.0
                        / count as f64,
                    peak_rss_mib: now.peak_rss_bytes as f64 / f64::from(1 << 20),
                },
            );
        }
        services
    }

    /// Runs `count` no-op runs with `in_flight` lanes: throughput, latency, each process's
    /// cost, and the JetStream writes per run.
    pub async fn measure(
        self: &Arc<Self>,
        in_flight: usize,
        count: usize,
    ) -> anyhow::Result<DroverFigures> {
        let before = self.costs_before();
        let sequences = traffic::sequences(&self.js).await?;
        let (results, wall) = self.lanes(in_flight, count).await?;
        let writes = Writes::between(&sequences, &traffic::sequences(&self.js).await?, count);
        let services = self.costs_since(&before, count);
        let started = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut completion = Vec::with_capacity(results.len());
        let mut starting = Vec::with_capacity(results.len());
        for (submitted, run, ended) in &results {
            completion.push(ended.saturating_duration_since(*submitted));
            if let Some(began) = started.get(run) {
                starting.push(began.saturating_duration_since(*submitted));
            }
        }
        Ok(DroverFigures {
            completion: Throughput::of(in_flight, completion, wall),
            starting: Latency::of(&mut starting),
            services,
            writes,
            messages: None,
        })
    }

    /// Runs `count` no-op runs with `in_flight` lanes while a `>` subscription counts every
    /// NATS message, apart from [`Bench::measure`] because the counting slows the runs.
    pub async fn count_messages(
        self: &Arc<Self>,
        in_flight: usize,
        count: usize,
    ) -> anyhow::Result<Messages> {
        let spy = Spy::start(&self.stack.nats_url(), WORKER_PREFIX).await?;
        let (_, wall) = self.lanes(in_flight, count).await?;
        let mut messages = spy.finish(count).await?;
        messages.per_second = count as f64 / wall.as_secs_f64().max(1e-9);
        Ok(messages)
    }

    /// Keeps `in_flight` runs going until `count` have ended; each run's submission, ID
    /// and end, and the wall time.
    async fn lanes(
        self: &Arc<Self>,
        in_flight: usize,
        count: usize,
    ) -> anyhow::Result<(Vec<(Instant, RunId, Instant)>, Duration)> {
        let spec = noop_spec()?;
        let next = Arc::new(AtomicUsize::new(0));
        let wall = Instant::now();
        let lanes: Vec<_> = (0..in_flight)
            .map(|_| {
                let bench = Arc::clone(self);
                let spec = spec.clone();
                let next = Arc::clone(&next);
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        done.push(bench.submit_and_wait(&spec).await?);
                    }
                    anyhow::Ok(done)
                })
            })
            .collect();
        let mut results = Vec::with_capacity(count);
        for lane in lanes {
            results.extend(lane.await??);
        }
        Ok((results, wall.elapsed()))
    }

    /// Submits `count` runs at once, `submitters` submissions awaiting their replies at a
    /// time, and times from the first submission until every run has SUCCEEDED.
    pub async fn drain(
        self: &Arc<Self>,
        count: usize,
        submitters: usize,
    ) -> anyhow::Result<DroverDrain> {
        let spec = noop_spec()?;
        let before = self.costs_before();
        let sequences = traffic::sequences(&self.js).await?;
        let first = Instant::now();
        let endings: Vec<(Instant, RunId, Ending)> = futures::stream::iter(0..count)
            .map(|_| self.submit(&spec))
            .buffer_unordered(submitters.max(1))
            .try_collect()
            .await?;
        let submitted = first.elapsed();
        let mut last = first;
        for (_, _, ending) in endings {
            last = last.max(ending.wait().await?);
        }
        let writes = Writes::between(&sequences, &traffic::sequences(&self.js).await?, count);
        Ok(DroverDrain {
            drain: Drain::of(count, submitted, last.saturating_duration_since(first)),
            submitters,
            writes,
            services: self.costs_since(&before, count),
        })
    }

    /// Stops the workers; the stack stops when dropped.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

/// A worker of `capacity` whose routine does nothing but note when it started.
pub fn noop_worker(index: usize, capacity: u32, started: Started) -> WorkerBuilder {
    Worker::builder(format!("{WORKER_PREFIX}{index}"))
        .capacity(capacity)
        .routine(ROUTINE, move |ctx, _params| {
            let started = Arc::clone(&started);
            async move {
                started
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(ctx.run_id().clone(), Instant::now());
                Ok(Value::Null)
            }
        })
}

/// Runs `drover-bench worker` with `env`; it is killed when dropped, and exits by itself
/// when this process goes away (its standard input closes).
fn spawn_workers(
    stack: &Stack,
    workers: usize,
    capacity: u32,
    env: &[(String, String)],
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("finding drover-bench itself")?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args([
            "worker",
            "--workers",
            &workers.to_string(),
            "--capacity",
            &capacity.to_string(),
        ])
        .env("DROVER_NATS_URL", stack.nats_url())
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::piped())
        .kill_on_drop(true);
    command.spawn().context("starting the worker process")
}

/// `drover-bench worker`: runs `workers` no-op workers against `DROVER_NATS_URL` until
/// SIGINT or the end of standard input, exporting spans as its `OTEL_*` environment says.
pub async fn serve_workers(workers: usize, capacity: u32) -> anyhow::Result<()> {
    let telemetry = drover_telemetry::init("drover-bench-worker");
    let url = std::env::var("DROVER_NATS_URL").context("DROVER_NATS_URL is not set")?;
    let shutdown = CancellationToken::new();
    let started: Started = Arc::new(Mutex::new(HashMap::new()));
    let mut running = Vec::with_capacity(workers);
    for index in 0..workers {
        let builder = noop_worker(index, capacity, Arc::clone(&started)).nats_url(url.clone());
        running.push(tokio::spawn(builder.run(shutdown.clone())));
    }
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut stdin, &mut sink).await;
            shutdown.cancel();
        });
    }
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = tokio::signal::ctrl_c() => shutdown.cancel(),
    }
    for worker in running {
        worker.await??;
    }
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    Ok(())
}
