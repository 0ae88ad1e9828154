//! Which worker gets a run, through the real scheduler and Rust SDK workers: the pickup
//! strategies (least-loaded by default, round-robin and first-fit by configuration), and a
//! bad strategy stopping the scheduler's start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_integration_tests::runs::{spec, submit, wait_status};
use drover_integration_tests::wait_registry_status;
use drover_protocol::envelope::decode;
use drover_protocol::subject::all_run_events;
use drover_protocol::{Conditions, RunEvent, RunId, RunStatus, WorkerId, WorkerStatus};
use drover_testkit::{bin_dir, free_port, patient, wait_until, Stack, SCHEDULER};
use drover_worker::{CancellationToken, Context, RoutineError, Worker};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

/// Generous bound for anything that involves placement and a round trip.
const PATIENCE: Duration = Duration::from_secs(20);

async fn stack(env: &[(&str, &str)]) -> Stack {
    let mut builder = Stack::builder()
        .with_registry()
        .with_monitor()
        .with_scheduler();
    for (name, value) in env {
        builder = builder.env(*name, *value);
    }
    builder.start().await.expect("stack starts")
}

/// Which worker ran each run, as the handlers saw it; and a signal per finished handler.
#[derive(Clone)]
struct Tally {
    ran: Arc<Mutex<HashMap<RunId, WorkerId>>>,
    done: mpsc::UnboundedSender<RunId>,
}

impl Tally {
    fn new() -> (Self, mpsc::UnboundedReceiver<RunId>) {
        let (done, finished) = mpsc::unbounded_channel();
        let tally = Self {
            ran: Arc::default(),
            done,
        };
        (tally, finished)
    }

    fn record(&self, ctx: &Context) {
        self.ran
            .lock()
            .unwrap()
            .insert(ctx.run_id().clone(), ctx.worker_id().clone());
        let _ = self.done.send(ctx.run_id().clone());
    }

    /// Runs per worker.
    fn per_worker(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for worker in self.ran.lock().unwrap().values() {
            *counts.entry(worker.to_string()).or_default() += 1;
        }
        counts
    }
}

/// Workers of the SDK, running in this process until dropped.
struct Fleet {
    shutdown: CancellationToken,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts one worker per `(workerID, capacity)`, each serving `routines` with a handler
/// that waits `work`, and for a permit of `gate` if the routine is `gate`'s, then records
/// the run in `tally`.
async fn fleet(
    stack: &Stack,
    workers: &[(&str, u32)],
    routines: &[&str],
    tally: &Tally,
    work: Duration,
    gate: Option<(&str, Arc<Semaphore>)>,
) -> Fleet {
    let shutdown = CancellationToken::new();
    for (id, capacity) in workers {
        let mut builder = Worker::builder(*id)
            .capacity(*capacity)
            .client(stack.client().await);
        for routine in routines {
            let tally = tally.clone();
            let gate = gate
                .as_ref()
                .filter(|(gated, _)| gated == routine)
                .map(|(_, gate)| Arc::clone(gate));
            builder = builder.routine(*routine, move |ctx: Context, _params: Value| {
                let tally = tally.clone();
                let gate = gate.clone();
                async move {
                    if let Some(gate) = gate {
                        gate.acquire().await.expect("the gate stays").forget();
                    }
                    tokio::time::sleep(work).await;
                    tally.record(&ctx);
                    Ok::<_, RoutineError>(json!({"worker": ctx.worker_id()}))
                }
            });
        }
        tokio::spawn(builder.run(shutdown.clone()));
    }
    let client = stack.client().await;
    for (id, _) in workers {
        wait_registry_status(&client, id, WorkerStatus::Idle, PATIENCE).await;
    }
    Fleet { shutdown }
}

/// Runs one run of `routine` on each worker in turn (by `conditions.workerIDs`), so that
/// the scheduler has seen every one of them before the test counts.
async fn visit_each(stack: &Stack, routine: &str, workers: &[(&str, u32)]) {
    let client = stack.client().await;
    for (id, _) in workers {
        let mut request = spec(routine);
        request.conditions = Conditions {
            worker_ids: vec![WorkerId::parse(*id).unwrap()],
            labels: Default::default(),
        };
        let run = submit(&client, &request).await;
        wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    }
}

/// Submits `total` runs of `routine`, keeping `in_flight` of them unfinished: a new one as
/// soon as one has ended as the scheduler sees it (its terminal event). Waiting for the
/// event, not for the handler to return, keeps the load the scheduler places under steady:
/// a run submitted the instant a handler returns could be placed before the scheduler has
/// heard of that end, and find its worker still busy. Returns when every run has ended.
async fn steady_load(stack: &Stack, routine: &str, total: usize, in_flight: usize) {
    let client = stack.client().await;
    let mut events = client
        .subscribe(all_run_events())
        .await
        .expect("subscribes to run events");
    let mut mine = HashSet::new();
    while mine.len() < in_flight.min(total) {
        mine.insert(submit(&client, &spec(routine)).await);
    }
    for _ in 0..total {
        loop {
            let message = tokio::time::timeout(patient(PATIENCE), events.next())
                .await
                .expect("runs keep ending")
                .expect("the subscription lasts");
            let event: RunEvent = decode(&message.payload, usize::MAX).expect("a run event");
            if event.status.is_terminal() && mine.contains(&event.run_id) {
                assert_eq!(event.status, RunStatus::Succeeded, "{event:?}");
                break;
            }
        }
        if mine.len() < total {
            mine.insert(submit(&client, &spec(routine)).await);
        }
    }
}

/// The value of an unlabelled gauge on the service's `/metrics`.
async fn gauge(stack: &Stack, service: &str, metric: &str) -> Option<f64> {
    let (_, body) = stack.admin_get(service, "/metrics").await.ok()?;
    body.lines()
        .find_map(|line| line.strip_prefix(metric)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Each worker's share of the runs counted.
fn shares(counts: &BTreeMap<String, usize>) -> BTreeMap<String, f64> {
    let total: usize = counts.values().sum();
    counts
        .iter()
        .map(|(worker, count)| (worker.clone(), *count as f64 / total as f64))
        .collect()
}

/// Where sequential runs of `routine` went, each awaited before the next is submitted.
async fn one_at_a_time(stack: &Stack, routine: &str, runs: usize) -> Vec<String> {
    let client = stack.client().await;
    let mut workers = Vec::new();
    for _ in 0..runs {
        let run = submit(&client, &spec(routine)).await;
        let record = wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
        workers.push(record.worker_id.expect("a worker ran it").to_string());
    }
    workers
}

/// Runs `total` runs that take `work` each on `workers` with `in_flight` of them running
/// at any time, after one run on each worker by name; returns the runs each worker ran of
/// the `total`.
async fn steady_shares(
    stack: &Stack,
    workers: &[(&str, u32)],
    work: Duration,
    total: usize,
    in_flight: usize,
) -> BTreeMap<String, usize> {
    let (tally, mut finished) = Tally::new();
    let _fleet = fleet(stack, workers, &["work"], &tally, work, None).await;
    visit_each(stack, "work", workers).await;
    for _ in workers {
        finished.recv().await.unwrap();
    }
    tally.ran.lock().unwrap().clear();

    steady_load(stack, "work", total, in_flight).await;
    let counts = tally.per_worker();
    eprintln!("runs per worker: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), total, "{counts:?}");
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_spreads_a_steady_load_evenly_over_equal_workers() {
    let stack = stack(&[]).await;
    let workers = [("w1", 8), ("w2", 8), ("w3", 8), ("w4", 8)];
    let counts = steady_shares(&stack, &workers, Duration::from_millis(3), 400, 8).await;
    let shares = shares(&counts);
    assert_eq!(shares.len(), 4, "every worker got runs: {counts:?}");
    for (worker, share) in &shares {
        assert!(
            (0.20..=0.30).contains(share),
            "{worker} ran {share:.3} of the runs: {counts:?}"
        );
    }
}

/// Asserts that each worker's share is within 0.07 of its capacity's share, and that the
/// shares are in the order of the capacities.
fn assert_shares_follow_capacity(workers: &[(&str, u32)], counts: &BTreeMap<String, usize>) {
    let shares = shares(counts);
    let share = |worker: &str| shares.get(worker).copied().unwrap_or(0.0);
    let total: u32 = workers.iter().map(|(_, capacity)| capacity).sum();
    for (worker, capacity) in workers {
        let expected = f64::from(*capacity) / f64::from(total);
        assert!(
            (share(worker) - expected).abs() <= 0.07,
            "{worker} ran {:.3} of the runs, not about {expected:.3}: {counts:?}",
            share(worker)
        );
    }
    for pair in workers.windows(2) {
        assert!(share(pair[0].0) < share(pair[1].0), "{counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_shares_follow_capacity_among_idle_workers() {
    let stack = stack(&[]).await;
    let (tally, _finished) = Tally::new();
    let workers = [("small", 2), ("medium", 4), ("large", 8)];
    let _fleet = fleet(
        &stack,
        &workers,
        &["work"],
        &tally,
        Duration::from_millis(3),
        None,
    )
    .await;
    visit_each(&stack, "work", &workers).await;

    // One run at a time: every worker is idle when a run comes, and the stride decides.
    let mut counts = BTreeMap::new();
    for worker in one_at_a_time(&stack, "work", 140).await {
        *counts.entry(worker).or_default() += 1;
    }
    eprintln!("runs per worker: {counts:?}");
    assert_shares_follow_capacity(&workers, &counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_shares_follow_capacity_under_steady_load() {
    let stack = stack(&[]).await;
    let workers = [("small", 2), ("medium", 4), ("large", 8)];
    // Runs long enough that the slots they hold, not the round trips, set each worker's
    // pace, and that the moment between a run's end and the next submission, which grows
    // when the machine is busy, leaves about 7 in flight; half the 14 slots busy, so that
    // the choice, not a full fleet, decides.
    let counts = steady_shares(&stack, &workers, Duration::from_millis(120), 280, 7).await;
    assert_shares_follow_capacity(&workers, &counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_set_for_a_routine_visits_the_workers_in_turn() {
    let stack = stack(&[("DROVER_PICKUP_STRATEGIES", "rotate.*=round-robin")]).await;
    let (tally, _finished) = Tally::new();
    let workers = [("w1", 4), ("w2", 4), ("w3", 4), ("w4", 4)];
    let _fleet = fleet(
        &stack,
        &workers,
        &["rotate.work"],
        &tally,
        Duration::ZERO,
        None,
    )
    .await;
    // w1 to w4, each by name: the rotation goes on after w4.
    visit_each(&stack, "rotate.work", &workers).await;
    let visited = one_at_a_time(&stack, "rotate.work", 12).await;
    assert_eq!(
        visited,
        ["w1", "w2", "w3", "w4", "w1", "w2", "w3", "w4", "w1", "w2", "w3", "w4"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_fit_packs_onto_the_lowest_workerid_and_overflows_to_the_next() {
    let stack = stack(&[("DROVER_PICKUP_STRATEGY", "first-fit")]).await;
    let (tally, _finished) = Tally::new();
    let workers = [("w1", 2), ("w2", 2), ("w3", 2)];
    let gate = Arc::new(Semaphore::new(0));
    let _fleet = fleet(
        &stack,
        &workers,
        &["held", "quick"],
        &tally,
        Duration::ZERO,
        Some(("held", Arc::clone(&gate))),
    )
    .await;
    visit_each(&stack, "quick", &workers).await;

    // One at a time, every run goes to w1.
    let visited = one_at_a_time(&stack, "quick", 10).await;
    assert_eq!(visited, ["w1"; 10]);

    // Three runs held at the gate, each placed before the next is submitted: w1 takes two,
    // its capacity, and the third overflows to w2, not w3. Every slot freed before must be
    // back first: a run's actor ends after it gave its slot back.
    wait_until("every run actor has ended", PATIENCE, || async {
        gauge(&stack, SCHEDULER, "drover_scheduler_run_actors").await == Some(0.0)
    })
    .await
    .unwrap();
    let client = stack.client().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let run = submit(&client, &spec("held")).await;
        let record = wait_status(&client, &run, RunStatus::Running, PATIENCE).await;
        held.push((run, record.worker_id.unwrap().to_string()));
    }
    let placed: Vec<&str> = held.iter().map(|(_, worker)| worker.as_str()).collect();
    assert_eq!(placed, ["w1", "w1", "w2"]);
    gate.add_permits(held.len());
    for (run, _) in &held {
        wait_status(&client, run, RunStatus::Succeeded, PATIENCE).await;
    }
}

#[tokio::test]
async fn a_bad_pickup_strategy_stops_the_scheduler_at_start() {
    let run = tokio::process::Command::new(bin_dir().unwrap().join(SCHEDULER))
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .env(
            "DROVER_NATS_URL",
            format!("nats://127.0.0.1:{}", free_port()),
        )
        .env("DROVER_PICKUP_STRATEGIES", "images.*=fastest")
        .env_remove("RUST_LOG")
        .output();
    let output = tokio::time::timeout(patient(Duration::from_secs(10)), run)
        .await
        .expect("the scheduler exits at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("DROVER_PICKUP_STRATEGIES") && stderr.contains("\"fastest\""),
        "{stderr}"
    );
}
