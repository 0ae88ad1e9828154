//! Scaling a `drover pool` group: through the NATS request, `drover pool scale` and the
//! signals SIGTTIN/SIGTTOU (and SIGHUP, a soft restart), always within [min, max] (a request
//! outside is refused and changes nothing), with no run failing while processes are stopped;
//! and autoscaling with the backlog of the group's routines, up at once and back down after
//! the cooldown. Each scenario runs with each kind of worker (Rust SDK, Python SDK, no SDK).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use drover_integration_tests::cli::{drover, stdout};
use drover_integration_tests::pool::{
    alive, assert_all_succeeded, describe, group, pids, pool_stack, settled_at, submit_many,
    worker_id, worker_ids, Load, PoolConfig, PoolRun, WorkerKind, RUNS_END, STARTED, STOPPED,
};
use drover_protocol::{ErrorCode, ExitClass, PoolScaled, ProcessPhase};
use nix::sys::signal::Signal;

/// How long a steady stream may take to get a few more runs accepted.
const FLOWING: Duration = Duration::from_secs(20);

async fn scales_within_bounds(kind: WorkerKind) {
    let stack = pool_stack().await;
    let client = stack.client().await;
    // A second group, after `w` in the file but before it in the alphabet: the signals
    // scale the first group in the file.
    let config = PoolConfig::new("scale")
        .group(kind.group("w").set("size", 2).set("min", 1).set("max", 5))
        .group(kind.group("a").set("size", 1).set("max", 3));
    let id = config.id().clone();
    let mut pool = PoolRun::start(&stack, &config).await;
    let url = pool.url().to_owned();
    let ids = |indices: &[u32]| -> BTreeSet<String> {
        indices.iter().map(|n| worker_id(&id, "w", *n)).collect()
    };

    // Up through the NATS request: the new processes take the next indices.
    let scaled = pool.scale("w", Some(5), None).await.unwrap();
    assert_eq!((scaled.group.as_str(), scaled.target), ("w", 5));
    let state = pool.wait_settled("w", 5, STARTED).await;
    let five = alive(group(&state, "w"));
    assert_eq!(worker_ids(five.iter().copied()), ids(&[1, 2, 3, 4, 5]));
    let five_pids = pids(five.iter().copied());

    // Outside [min, max], by target or by delta, through NATS or the CLI: refused.
    let refused = pool.scale("w", Some(6), None).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::OutOfBounds, "{refused:?}");
    let refused = pool.scale("w", None, Some(1)).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::OutOfBounds, "{refused:?}");
    let output = drover(&url, &["pool", "scale", id.as_str(), "w", "--target", "0"]).await;
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains('1') && said.contains('5'),
        "the bounds: {said}"
    );
    // An unknown group, and a request with both target and delta.
    let refused = pool.scale("nope", Some(1), None).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::UnknownGroup, "{refused:?}");
    let output = drover(
        &url,
        &["pool", "scale", id.as_str(), "nope", "--target", "1"],
    )
    .await;
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let refused = pool.scale("w", Some(3), Some(-2)).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::SchemaViolation, "{refused:?}");
    // Nothing changed.
    let state = pool.status().await.unwrap();
    let unchanged = group(&state, "w");
    assert_eq!(unchanged.target, 5);
    assert_eq!(pids(alive(unchanged)), five_pids);

    // Down through the CLI while runs keep coming (two submitters, one run every 60 ms each:
    // about 33 a second, which a Python process takes easily): every accepted run succeeds.
    // Runs of 200 ms where the kind has a slow routine, so that a stopping process has runs to
    // finish; the Python examples' runs are quick, and a stopping process holds them briefly.
    let load = Load::start(
        &client,
        &kind.slow_or_quick_run(200),
        2,
        Duration::from_millis(60),
    );
    load.wait_more(30, FLOWING).await;
    let output = drover(
        &url,
        &["pool", "scale", id.as_str(), "w", "--target", "1", "--json"],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let scaled: PoolScaled = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(scaled.target, 1);
    let state = pool.wait_settled("w", 1, STOPPED).await;
    load.wait_more(30, FLOWING).await;
    let (runs, refusals) = load.stop().await;
    assert!(refusals.is_empty(), "{refusals:?}");
    assert_all_succeeded(&client, &runs, RUNS_END).await;
    // The stopped processes ended as the pool asked, not restarted.
    for stopped in &group(&state, "w").processes {
        if stopped.state == ProcessPhase::Terminated {
            let class = stopped.last_exit.as_ref().map(|last| last.class);
            assert_eq!(class, Some(ExitClass::Requested), "{stopped:?}");
        }
    }
    assert_eq!(state.restarts, 0);
    let left = alive(group(&state, "w"))[0].worker_id.to_string();
    let left: u32 = left.rsplit('-').next().unwrap().parse().unwrap();

    // By delta: up 2 through the CLI (the lowest free indices), down 1 through NATS.
    let output = drover(&url, &["pool", "scale", id.as_str(), "w", "--delta", "2"]).await;
    assert!(output.status.success(), "{output:?}");
    let state = pool.wait_settled("w", 3, STARTED).await;
    let mut expected: Vec<u32> = (1..=5).filter(|n| *n != left).take(2).collect();
    expected.push(left);
    assert_eq!(
        worker_ids(alive(group(&state, "w"))),
        ids(&expected),
        "{left} stayed"
    );
    let scaled = pool.scale("w", None, Some(-1)).await.unwrap();
    assert_eq!(scaled.target, 2);
    pool.wait_settled("w", 2, STOPPED).await;
    let output = drover(&url, &["pool", "scale", id.as_str(), "w", "--delta", "-2"]).await;
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    assert_eq!(group(&pool.status().await.unwrap(), "w").target, 2);

    // SIGTTIN: one more; SIGTTOU: one fewer.
    pool.signal(Signal::SIGTTIN);
    pool.wait_settled("w", 3, STARTED).await;
    pool.signal(Signal::SIGTTOU);
    let state = pool.wait_settled("w", 2, STOPPED).await;
    assert!(
        settled_at(group(&state, "a"), 1),
        "{}",
        describe(group(&state, "a"))
    );

    // SIGHUP: a soft restart, every process replaced.
    let before = pids(alive(group(&state, "w")));
    pool.signal(Signal::SIGHUP);
    pool.wait_for_state("every process replaced after SIGHUP", STARTED, |state| {
        let workers = group(state, "w");
        settled_at(workers, 2) && pids(alive(workers)).is_disjoint(&before)
    })
    .await;

    // SIGTERM: every process is stopped gracefully and the pool exits 0.
    pool.signal(Signal::SIGTERM);
    pool.wait_ended(0, STOPPED).await;
    // And with no pool answering, the CLI says so.
    let output = drover(&url, &["--timeout", "2", "pool", "status", id.as_str()]).await;
    assert_eq!(output.status.code(), Some(4), "{output:?}");
}

drover_integration_tests::for_each_kind!(scales_within_bounds: pool_scales_a_group_within_its_bounds_rust_sdk, pool_scales_a_group_within_its_bounds_python_sdk, pool_scales_a_group_within_its_bounds_no_sdk);

/// Runs waiting for the autoscaled group: far beyond what one process holds at once (8 for
/// the Rust worker, 4 for the Python ones), so that the wanted size is the group's max.
const BACKLOG: usize = 600;

async fn autoscales(kind: WorkerKind) {
    let stack = pool_stack().await;
    let client = stack.client().await;
    let config = PoolConfig::new("auto").group(
        kind.group("a")
            .set("size", 1)
            .set("min", 1)
            .set("max", 4)
            .autoscale("cooldown", "\"2s\"")
            .autoscale("interval", "\"200ms\""),
    );

    // A backlog far beyond what one process holds: the target goes to max. It is submitted
    // before the pool starts, so that it is there when the autoscaler first looks whatever
    // the kind's pace: the Python examples have no slow routine, and one process could drain
    // a stream of quick runs about as fast as it arrives. Runs of 100 ms where there is a
    // slow routine.
    let runs = submit_many(&client, &kind.slow_or_quick_run(100), BACKLOG, 16).await;
    let pool = PoolRun::spawn(&stack, &config, &[]).await;
    pool.wait_for_state("the target at max", STARTED, |state| {
        group(state, "a").target == 4
    })
    .await;
    assert_all_succeeded(&client, &runs, RUNS_END).await;

    // Idle past the cooldown: back to min.
    let state = pool.wait_settled("a", 1, STOPPED).await;
    assert_eq!(state.restarts, 0);
}

drover_integration_tests::for_each_kind!(autoscales: pool_autoscales_with_the_backlog_rust_sdk, pool_autoscales_with_the_backlog_python_sdk, pool_autoscales_with_the_backlog_no_sdk);
