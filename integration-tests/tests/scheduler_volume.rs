//! Volume: many runs, each ending once and executed once; and no head-of-line blocking
//! between routines. Prints throughput and latency (run with `--no-capture`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use drover_integration_tests::runs::{spec, try_submit, wait_status};
use drover_integration_tests::worker::WorkerSpec;
use drover_integration_tests::{Act, Runner};
use drover_protocol::{RunId, RunStatus};
use drover_testkit::{wait_until, Stack};
use futures::StreamExt;
use serde_json::{json, Value};

/// Counts terminal events per run from `v1.run.events.*`.
/// `(previousStatus, status)` of one run event.
type Step = (Option<String>, String);

struct Outcomes {
    ended: Arc<Mutex<HashMap<RunId, Vec<String>>>>,
    steps: Arc<Mutex<HashMap<RunId, Vec<Step>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Outcomes {
    async fn watch(client: &Client) -> Self {
        let mut events = client.subscribe("v1.run.events.*").await.unwrap();
        client.flush().await.unwrap();
        let ended = Arc::new(Mutex::new(HashMap::<RunId, Vec<String>>::new()));
        let steps = Arc::new(Mutex::new(HashMap::<RunId, Vec<Step>>::new()));
        let sink = Arc::clone(&ended);
        let step_sink = Arc::clone(&steps);
        let task = tokio::spawn(async move {
            while let Some(message) = events.next().await {
                let body: Value = serde_json::from_slice(&message.payload).unwrap();
                let status = body["payload"]["status"].as_str().unwrap().to_owned();
                let previous = body["payload"]["previousStatus"]
                    .as_str()
                    .map(str::to_owned);
                let run = RunId::parse(body["payload"]["runID"].as_str().unwrap()).unwrap();
                step_sink
                    .lock()
                    .unwrap()
                    .entry(run.clone())
                    .or_default()
                    .push((previous, status.clone()));
                if matches!(status.as_str(), "SUCCEEDED" | "FAILED" | "CANCELLED") {
                    sink.lock().unwrap().entry(run).or_default().push(status);
                }
            }
        });
        Self { ended, steps, task }
    }

    fn count(&self) -> usize {
        self.ended.lock().unwrap().len()
    }
}

impl Drop for Outcomes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Submits `count` runs of `routine` with `concurrency` requests in flight; returns the
/// runIDs with their submission instants.
async fn submit_many(
    client: &Client,
    routine: &str,
    count: usize,
    concurrency: usize,
) -> Vec<(RunId, Instant)> {
    futures::stream::iter(0..count)
        .map(|index| {
            let client = client.clone();
            let routine = routine.to_owned();
            async move {
                let mut request = spec(&routine);
                request.params = json!({"n": index});
                let at = Instant::now();
                let run = try_submit(&client, &request)
                    .await
                    .unwrap_or_else(|error| panic!("run {index} refused: {error}"));
                (run, at)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

#[tokio::test]
async fn ten_thousand_runs_succeed_exactly_once() {
    const RUNS: usize = 10_000;
    const WORKERS: usize = 8;
    let stack = Stack::builder()
        .with_registry()
        .with_monitor()
        .with_scheduler()
        .env("RUST_LOG", "warn")
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let outcomes = Outcomes::watch(&client).await;
    let mut runners = Vec::new();
    for index in 0..WORKERS {
        let worker = WorkerSpec::new(&format!("w{index}"), &["noop"])
            .capacity(2)
            .start(&client)
            .await;
        runners.push(Runner::start(worker, |_| Act::Succeed(json!(null))));
    }
    let started = Instant::now();
    let submitted = submit_many(&client, "noop", RUNS, 64).await;
    let submit_took = started.elapsed();
    wait_until("every run ended", Duration::from_secs(300), || async {
        outcomes.count() == RUNS
    })
    .await
    .unwrap();
    let took = started.elapsed();

    // Every run ended once, as SUCCEEDED.
    let ended = outcomes.ended.lock().unwrap().clone();
    for (run, _) in &submitted {
        assert_eq!(
            ended.get(run).map(Vec::as_slice),
            Some(&["SUCCEEDED".to_owned()][..]),
            "run {run}"
        );
    }
    // And was executed once, at attempt 1.
    let mut executions: HashMap<RunId, Vec<(String, u64)>> = HashMap::new();
    for runner in &runners {
        for execution in runner.executions() {
            executions
                .entry(execution.assignment.run_id.clone())
                .or_default()
                .push((runner.id.to_string(), execution.assignment.attempt));
        }
    }
    assert_eq!(executions.len(), RUNS);
    let twice: Vec<_> = executions
        .iter()
        .filter(|(_, runs)| runs.len() != 1)
        .collect();
    assert!(twice.is_empty(), "executed more than once: {twice:?}");
    // Every transition was announced once, in order, even where the scheduler stored
    // RUNNING and SUCCEEDED in one write. (PENDING comes from the intake, ASSIGNED on
    // from the run's actor, so only the actor's steps are compared in order.)
    let steps = outcomes.steps.lock().unwrap().clone();
    let step = |previous: &str, status: &str| (Some(previous.to_owned()), status.to_owned());
    for (run, _) in &submitted {
        let seen = &steps[run];
        assert!(
            seen.contains(&(None, "PENDING".to_owned())),
            "run {run}: {seen:?}"
        );
        let actor: Vec<&Step> = seen.iter().filter(|s| s.0.is_some()).collect();
        assert_eq!(
            actor,
            [
                &step("PENDING", "ASSIGNED"),
                &step("ASSIGNED", "RUNNING"),
                &step("RUNNING", "SUCCEEDED")
            ],
            "run {run}"
        );
    }
    // Spot-check records: the store agrees with the events.
    for (run, _) in submitted.iter().step_by(500) {
        wait_status(&client, run, RunStatus::Succeeded, Duration::from_secs(5)).await;
    }

    // Figures, for information.
    let sent: HashMap<RunId, Instant> = submitted.iter().cloned().collect();
    let mut latencies: Vec<Duration> = runners
        .iter()
        .flat_map(|runner| runner.executions())
        .map(|execution| {
            execution
                .at
                .duration_since(sent[&execution.assignment.run_id])
        })
        .collect();
    latencies.sort();
    println!(
        "{RUNS} runs over {WORKERS} workers in {took:.2?} ({:.0} runs/s; submission alone {:.0} runs/s); submit->assignment p50 {:.2?} p99 {:.2?}",
        RUNS as f64 / took.as_secs_f64(),
        RUNS as f64 / submit_took.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );
    let (_, metrics) = stack
        .admin_get(drover_testkit::SCHEDULER, "/metrics")
        .await
        .unwrap();
    let coalesced = metrics
        .lines()
        .find_map(|line| line.strip_prefix("drover_scheduler_directives_coalesced_total"))
        .map_or("0", str::trim);
    println!("RUNNING and SUCCEEDED stored in one write for {coalesced} of {RUNS} runs");
    for runner in &runners {
        assert!(!runner.executions().is_empty(), "{} got no work", runner.id);
    }
}

/// Submit→assignment latency of `count` runs of routine `b`, one at a time.
async fn latency_of_b(client: &Client, runner: &Runner, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for _ in 0..count {
        let before = runner.executions().len();
        let at = Instant::now();
        try_submit(client, &spec("b")).await.unwrap();
        wait_until("b assigned", Duration::from_secs(5), || async {
            runner.executions().len() > before
        })
        .await
        .unwrap();
        let arrived = runner.executions()[before].at;
        latencies.push(arrived.duration_since(at));
    }
    latencies.sort();
    latencies
}

#[tokio::test]
async fn a_backlog_in_one_routine_does_not_slow_another() {
    const BACKLOG: usize = 50_000;
    let stack = Stack::builder()
        .with_registry()
        .with_monitor()
        .with_scheduler()
        .env("RUST_LOG", "warn")
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    // Routine A has a worker, but one that takes only runs labelled for it, which none are:
    // its queue is a pure backlog. Routine B has a free worker.
    let a_worker = WorkerSpec::new("wa", &["a"])
        .label("pool", "none")
        .start(&client)
        .await;
    let a_runner = Runner::start(a_worker, |_| Act::Succeed(json!(null)));
    let b_worker = WorkerSpec::new("wb", &["b"]).start(&client).await;
    let b_runner = Runner::start(b_worker, |_| Act::Succeed(json!(null)));

    let quiet = latency_of_b(&client, &b_runner, 30).await;
    let started = Instant::now();
    let mut backlog = spec("a");
    backlog
        .conditions
        .labels
        .insert("pool".into(), "elsewhere".into());
    futures::stream::iter(0..BACKLOG)
        .map(|_| {
            let client = client.clone();
            let backlog = backlog.clone();
            async move { try_submit(&client, &backlog).await.unwrap() }
        })
        .buffer_unordered(128)
        .collect::<Vec<_>>()
        .await;
    println!(
        "backlog of {BACKLOG} runs submitted in {:.2?}",
        started.elapsed()
    );
    let busy = latency_of_b(&client, &b_runner, 30).await;
    let (quiet_p50, busy_p50) = (percentile(&quiet, 0.5), percentile(&busy, 0.5));
    let (quiet_p90, busy_p90) = (percentile(&quiet, 0.9), percentile(&busy, 0.9));
    println!("routine b submit->assignment: without backlog p50 {quiet_p50:.2?} p90 {quiet_p90:.2?}; with {BACKLOG} pending in a: p50 {busy_p50:.2?} p90 {busy_p90:.2?}");
    // "Stays in the range it has with no backlog": within twice the quiet figure, plus a
    // few milliseconds of allowance for a noisy machine.
    let allowance = Duration::from_millis(5);
    assert!(
        busy_p50 <= quiet_p50 * 2 + allowance,
        "p50 {busy_p50:?} vs {quiet_p50:?}"
    );
    assert!(
        busy_p90 <= quiet_p90 * 2 + allowance * 2,
        "p90 {busy_p90:?} vs {quiet_p90:?}"
    );
    assert!(
        a_runner.executions().is_empty(),
        "a backlog run was placed against its conditions"
    );
}
