//! Replacing a `drover pool` group's processes: a soft restart under steady load (rolling,
//! never fewer RUNNING than target - max_unavailable, never more alive than target +
//! max_surge, no run lost or failed), a hard restart with runs held where the worker has a
//! slow routine and a stream of runs going on (those held finish, then every process starts
//! again; none fails), and the quotas (max_runs, max_memory) that replace a process on the
//! soft path. Each scenario runs with each kind of worker (Rust SDK, Python SDK, no SDK).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use drover_integration_tests::cli::drover;
use drover_integration_tests::pool::{
    alive, assert_all_succeeded, describe, group, in_group, metric, pids, pool_stack,
    registry_record, running, settled_at, submit_many, wait_all_ended, Load, PoolConfig, PoolRun,
    WorkerKind, REPLACED, RUNS_END, STARTED,
};
use drover_integration_tests::runs::wait_status;
use drover_protocol::{ProcessPhase, RestartMode, RunStatus};
use drover_testkit::{free_port, http_get, patient, wait_until};

/// How long a steady stream may take to get a few more runs accepted.
const FLOWING: Duration = Duration::from_secs(20);
/// How long a metric may take to count what the status shows.
const SEEN: Duration = Duration::from_secs(10);
/// How long a held run may take to be RUNNING.
const HELD: Duration = Duration::from_secs(15);

/// The steady stream of quick runs under the soft restart: `submitters`, each submitting one
/// run every `pace`, until `flowing` more runs have been accepted, before and after.
struct Steady {
    submitters: usize,
    pace: Duration,
    flowing: usize,
}

impl Steady {
    /// Rust: 10 submitters every 20 ms (at most 500 runs a second; the machine allows fewer).
    /// Python, SDK or not: 4 submitters every 40 ms (at most 100 runs a second), which three
    /// Python processes take without a backlog growing on two cores.
    fn of(kind: WorkerKind) -> Self {
        if kind.is_python() {
            Self {
                submitters: 4,
                pace: Duration::from_millis(40),
                flowing: 100,
            }
        } else {
            Self {
                submitters: 10,
                pace: Duration::from_millis(20),
                flowing: 200,
            }
        }
    }
}

async fn restarts_softly_and_hard(kind: WorkerKind) {
    let stack = pool_stack().await;
    let client = stack.client().await;
    let config = PoolConfig::new("roll").group(
        kind.group("w")
            .set("size", 3)
            .set("max_unavailable", 0)
            .set("max_surge", 1),
    );
    let id = config.id().clone();
    let pool = PoolRun::start(&stack, &config).await;
    let state = pool.status().await.unwrap();
    let old_pids = pids(alive(group(&state, "w")));
    let mut old_incarnations = BTreeMap::new();
    for process in alive(group(&state, "w")) {
        let worker = process.worker_id.to_string();
        let record = registry_record(&client, &worker).await.unwrap();
        old_incarnations.insert(worker, record.incarnation);
    }

    // Soft: under a steady stream of quick runs from several submitters (see `Steady`), with
    // slower ones among them where the kind has a slow routine, so that a process told to
    // stop has runs to finish first. The Python examples have none: what a stopping Python
    // process finishes are the quick runs it holds.
    let steady = Steady::of(kind);
    let load = Load::start(&client, &kind.quick_run(), steady.submitters, steady.pace);
    let slow_load = kind
        .slow_run(800)
        .map(|spec| Load::start(&client, &spec, 1, Duration::from_millis(100)));
    let loaded_at = Instant::now();
    load.wait_more(steady.flowing, FLOWING).await;
    let sampler = pool.sample();
    let begun = pool.restart(RestartMode::Soft, Some("w")).await.unwrap();
    assert!(begun.accepted);
    assert_eq!(begun.mode, RestartMode::Soft);
    assert_eq!(
        begun.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        ["w"]
    );
    let state = pool
        .wait_for_state("every process replaced", REPLACED, |state| {
            let workers = group(state, "w");
            settled_at(workers, 3) && pids(alive(workers)).is_disjoint(&old_pids)
        })
        .await;
    let soft_samples = sampler.stop().await;
    load.wait_more(steady.flowing, FLOWING).await;
    let (mut runs, mut refusals) = load.stop().await;
    // The rate the machine allowed (see it with --nocapture); the stream is what matters.
    let seconds = loaded_at.elapsed().as_secs_f64();
    println!(
        "{kind:?}: soft restart under {} quick runs in {seconds:.1} s ({:.0} per second)",
        runs.len(),
        runs.len() as f64 / seconds
    );
    if let Some(slow_load) = slow_load {
        let (slow_runs, slow_refusals) = slow_load.stop().await;
        runs.extend(slow_runs);
        refusals.extend(slow_refusals);
    }
    assert!(refusals.is_empty(), "{refusals:?}");
    assert_all_succeeded(&client, &runs, RUNS_END).await;
    // Each new process registered anew: a workerID used before has a higher incarnation.
    for process in alive(group(&state, "w")) {
        let worker = process.worker_id.to_string();
        let record = registry_record(&client, &worker).await.unwrap();
        assert_eq!(record.pid, process.pid.map(u64::from), "{record:?}");
        if let Some(before) = old_incarnations.get(&worker) {
            assert!(record.incarnation > *before, "{record:?}");
        }
    }
    assert_eq!(state.restarts, 0);

    // Hard, through the CLI, while slow runs are held where the kind has a slow routine: they
    // finish, then all start again. With every kind, a light stream of quick runs (two
    // submitters every 50 ms: about 40 a second) goes on throughout: runs accepted while no
    // process is up wait for the new ones, and every one succeeds.
    let old_pids = pids(alive(group(&state, "w")));
    let held = match kind.slow_run(2000) {
        Some(spec) => submit_many(&client, &spec, 6, 6).await,
        None => Vec::new(),
    };
    for run in &held {
        wait_status(&client, run, RunStatus::Running, HELD).await;
    }
    let load = Load::start(&client, &kind.quick_run(), 2, Duration::from_millis(50));
    load.wait_more(10, FLOWING).await;
    let sampler = pool.sample();
    let output = drover(
        pool.url(),
        &["pool", "restart", id.as_str(), "--hard", "--group", "w"],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    pool.wait_for_state("every process started again", REPLACED, |state| {
        let workers = group(state, "w");
        settled_at(workers, 3) && pids(alive(workers)).is_disjoint(&old_pids)
    })
    .await;
    let hard_samples = sampler.stop().await;
    load.wait_more(10, FLOWING).await;
    let (mut runs, refusals) = load.stop().await;
    assert!(refusals.is_empty(), "{refusals:?}");
    runs.extend(held);
    assert_all_succeeded(&client, &runs, RUNS_END).await;

    // What the samples saw, checked last so that a breach does not hide what came after.
    for sample in &hard_samples {
        let workers = group(sample, "w");
        let now = pids(alive(workers));
        let (old, new): (BTreeSet<u32>, BTreeSet<u32>) =
            now.iter().partition(|pid| old_pids.contains(pid));
        assert!(
            old.is_empty() || new.is_empty(),
            "hard: a new process started before every old one had exited: {}",
            describe(workers)
        );
    }
    assert!(!soft_samples.is_empty());
    for sample in &soft_samples {
        let workers = group(sample, "w");
        assert!(
            running(workers).len() >= 3,
            "soft: fewer than target - max_unavailable RUNNING: {}",
            describe(workers)
        );
        assert!(
            alive(workers).len() <= 4,
            "soft: more than target + max_surge alive: {}",
            describe(workers)
        );
    }
}

drover_integration_tests::for_each_kind!(restarts_softly_and_hard: pool_restarts_softly_and_hard_under_load_rust_sdk, pool_restarts_softly_and_hard_under_load_python_sdk, pool_restarts_softly_and_hard_under_load_no_sdk);

async fn replaces_past_quotas(kind: WorkerKind) {
    let stack = pool_stack().await;
    let client = stack.client().await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = PoolConfig::new("quota")
        .set_str("admin_addr", &admin.to_string())
        .group(kind.group("counted").set("size", 2).set("max_runs", 50))
        .group(
            kind.group("fat")
                .set("size", 0)
                .set("min", 0)
                .set("max", 1)
                .set_str("max_memory", "1MiB"),
        );
    let id = config.id().clone();
    let pool = PoolRun::start(&stack, &config).await;
    let metrics = || async {
        http_get(admin, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    };

    // max_runs: each process is replaced once about 50 runs have ended on it.
    let state = pool.status().await.unwrap();
    let old_pids = pids(alive(group(&state, "counted")));
    let spec = in_group(kind.quick_run(), &id, "counted");
    let sampler = pool.sample();
    let deadline = tokio::time::Instant::now() + patient(REPLACED);
    let mut runs = Vec::new();
    loop {
        let batch = submit_many(&client, &spec, 20, 10).await;
        wait_all_ended(&client, &batch, RUNS_END).await;
        runs.extend(batch);
        let state = pool.status().await.unwrap();
        let counted = group(&state, "counted");
        if settled_at(counted, 2) && pids(alive(counted)).is_disjoint(&old_pids) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not replaced after {} runs: {counted:#?}\n{}",
            runs.len(),
            pool.output_tail()
        );
    }
    let samples = sampler.stop().await;
    assert_all_succeeded(&client, &runs, RUNS_END).await;
    // Neither was replaced before 50 runs had ended on it.
    assert!(runs.len() >= 100, "replaced after {} runs", runs.len());
    for sample in &samples {
        for process in &group(sample, "counted").processes {
            if process.state == ProcessPhase::Stopping {
                assert!(
                    process.runs.is_some_and(|runs| runs >= 50),
                    "stopped before its quota: {process:?}"
                );
            }
        }
    }
    wait_until("both exits counted as requested", SEEN, || async {
        let requested = metric(
            &metrics().await,
            "drover_pool_exits_total",
            &[("group", "counted"), ("class", "requested")],
        );
        requested >= 2.0
    })
    .await
    .unwrap();

    // max_memory below any worker's RSS: the process is replaced as soon as it is seen.
    let scaled = pool.scale("fat", Some(1), None).await.unwrap();
    assert_eq!(scaled.target, 1);
    let state = pool
        .wait_for_state("a fat process RUNNING", STARTED, |state| {
            !running(group(state, "fat")).is_empty()
        })
        .await;
    let first = pids(running(group(&state, "fat")));
    pool.wait_for_state("the fat process replaced", REPLACED, |state| {
        let fat = group(state, "fat");
        !running(fat).is_empty() && pids(alive(fat)).is_disjoint(&first)
    })
    .await;
    wait_until(
        "the fat process's exit counted as requested",
        SEEN,
        || async {
            let requested = metric(
                &metrics().await,
                "drover_pool_exits_total",
                &[("group", "fat"), ("class", "requested")],
            );
            requested >= 1.0
        },
    )
    .await
    .unwrap();
    pool.scale("fat", Some(0), None).await.unwrap();
    let state = pool.wait_settled("fat", 0, STARTED).await;
    // Replacements are not restarts: none counted, the pool still serving.
    assert_eq!(state.restarts, 0);
    assert!(settled_at(group(&state, "counted"), 2));
}

drover_integration_tests::for_each_kind!(replaces_past_quotas: pool_replaces_processes_past_their_quotas_rust_sdk, pool_replaces_processes_past_their_quotas_python_sdk, pool_replaces_processes_past_their_quotas_no_sdk);
