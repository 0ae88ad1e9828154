//! `drover pool run` supervising each kind of worker (Rust SDK, Python SDK, no SDK): the
//! processes register under the workerIDs and labels the pool gives them; a process killed
//! by a signal is restarted under the same workerID and its runs still succeed; a process
//! that exits 0 after SIGTERM is final and not restarted (until a hard restart), and once
//! every process is, the pool exits 0. Along the way: the status reply and `drover pool status --json` agree,
//! `drover workers list` shows the labels, and a line a process prints reaches
//! `drover logs --worker`. Also: a bad configuration is refused before anything starts, and
//! the two ways to a critical shutdown (a process that exits before it registers, a crash
//! loop past the restart intensity) stop everything gracefully and exit 1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use drover_integration_tests::cli::{drover, stdout};
use drover_integration_tests::pool::{
    alive, assert_all_succeeded, group, in_group, pids, pool_stack, process, registry_record,
    settled_at, signal_pid, stable_view, submit_many, worker_id, worker_ids, Group, PoolConfig,
    PoolRun, WorkerKind, REPLACED, RUNS_END, STOPPED,
};
use drover_integration_tests::runs::{submit, wait_status};
use drover_integration_tests::{wait_registry_status, Recorder};
use drover_protocol::{ExitClass, PoolState, ProcessPhase, RestartMode, RunStatus, WorkerStatus};
use drover_testkit::{hold_for, wait_for, wait_until};
use nix::sys::signal::Signal;
use serde_json::Value;

/// How long a registry record or a log line may take to show what happened.
const SEEN: Duration = Duration::from_secs(15);
/// A window, well past the restart delay, in which a final process must stay down.
const NOT_RESTARTED: Duration = Duration::from_secs(1);

async fn lifecycle(kind: WorkerKind) {
    let stack = pool_stack().await;
    let client = stack.client().await;
    let config = PoolConfig::new("life").group(kind.group("w").set("size", 2).set("max", 3));
    let id = config.id().clone();
    let mut pool = PoolRun::start(&stack, &config).await;
    let url = pool.url().to_owned();
    let (w1, w2) = (worker_id(&id, "w", 1), worker_id(&id, "w", 2));

    let state = pool.status().await.unwrap();
    assert_eq!(state.pool_id, id);
    let workers = group(&state, "w");
    assert_eq!((workers.min, workers.max, workers.target), (1, 3, 2));
    assert_eq!(
        worker_ids(&workers.processes),
        BTreeSet::from([w1.clone(), w2.clone()])
    );

    // Each process registered under the workerID the pool gave it, with labels pool and
    // group, from its own pid.
    for started in &workers.processes {
        let worker = started.worker_id.as_str();
        let record = wait_for(&format!("{worker} IDLE in the registry"), SEEN, || async {
            registry_record(&client, worker)
                .await
                .filter(|record| record.status == WorkerStatus::Idle)
        })
        .await
        .unwrap();
        assert_eq!(
            record.labels.get("pool"),
            Some(&id.to_string()),
            "{record:?}"
        );
        assert_eq!(
            record.labels.get("group"),
            Some(&"w".to_owned()),
            "{record:?}"
        );
        assert_eq!(record.pid, started.pid.map(u64::from), "{record:?}");
    }

    // The status reply and `drover pool status --json` agree; the table lists every process.
    let printed = drover(&url, &["pool", "status", id.as_str(), "--json"]).await;
    assert!(printed.status.success(), "{printed:?}");
    let from_cli: Value = serde_json::from_str(&stdout(&printed)).unwrap();
    serde_json::from_value::<PoolState>(from_cli.clone()).expect("--json prints v1.pool.state");
    let from_nats = serde_json::to_value(pool.status().await.unwrap()).unwrap();
    assert_eq!(stable_view(&from_cli), stable_view(&from_nats));
    let table = drover(&url, &["pool", "status", id.as_str()]).await;
    assert!(table.status.success(), "{table:?}");
    let table = stdout(&table);
    for started in &workers.processes {
        assert!(table.contains(started.worker_id.as_str()), "{table}");
        assert!(table.contains(&started.pid.unwrap().to_string()), "{table}");
    }
    assert!(table.contains("RUNNING"), "{table}");

    // `drover workers list` shows the pool's workers with their labels.
    let label = format!("pool={id}");
    let listed = drover(&url, &["workers", "list", "--label", &label]).await;
    assert!(listed.status.success(), "{listed:?}");
    let listed = stdout(&listed);
    for worker in [&w1, &w2] {
        assert!(listed.contains(worker.as_str()), "{listed}");
    }
    assert!(
        listed.contains(&label) && listed.contains("group=w"),
        "{listed}"
    );

    // What a process prints is in the pool's output under its workerID, and in its logs.
    let line = kind.printed_line(&w1);
    let prefix = format!("[{w1}] ");
    let output = format!("{}{}", pool.stdout(), pool.stderr());
    assert!(
        output
            .lines()
            .any(|printed| printed.starts_with(&prefix) && printed.contains(&line)),
        "no {prefix:?} line with {line:?}\n{}",
        pool.output_tail()
    );
    wait_until(
        &format!("`drover logs --worker {w1}` shows {line:?}"),
        SEEN,
        || async { stdout(&drover(&url, &["logs", "--worker", &w1]).await).contains(&line) },
    )
    .await
    .unwrap();

    // SIGKILL a process (the one holding a slow run, where the worker has a slow routine).
    let held = match kind.slow_run(3000) {
        Some(spec) => {
            let run = submit(&client, &in_group(spec, &id, "w")).await;
            let record = wait_status(&client, &run, RunStatus::Running, SEEN).await;
            Some((run, record.worker_id.unwrap().to_string()))
        }
        None => None,
    };
    let victim = held
        .as_ref()
        .map_or_else(|| w1.clone(), |(_, worker)| worker.clone());
    let other = if victim == w1 { w2.clone() } else { w1.clone() };
    let state = pool.status().await.unwrap();
    let old_pid = process(group(&state, "w"), &victim).unwrap().pid.unwrap();
    let other_pid = process(group(&state, "w"), &other).unwrap().pid.unwrap();
    let incarnation = registry_record(&client, &victim).await.unwrap().incarnation;
    signal_pid(old_pid, Signal::SIGKILL);
    let mut runs = submit_many(&client, &in_group(kind.quick_run(), &id, "w"), 6, 3).await;
    runs.extend(held.map(|(run, _)| run));

    // Restarted after its backoff under the same workerID, counted, its exit explained.
    let state = pool
        .wait_for_state(&format!("{victim} restarted"), REPLACED, |state| {
            process(group(state, "w"), &victim).is_some_and(|restarted| {
                restarted.state == ProcessPhase::Running
                    && restarted.restarts == 1
                    && restarted.pid.is_some_and(|pid| pid != old_pid)
            })
        })
        .await;
    let restarted = process(group(&state, "w"), &victim).unwrap().clone();
    let last = restarted
        .last_exit
        .clone()
        .expect("lastExit after a restart");
    assert_eq!(last.class, ExitClass::Unexpected, "{last:?}");
    assert_eq!((last.signal, last.code), (Some(9), None), "{last:?}");
    assert_eq!(state.restarts, 1);
    let untouched = process(group(&state, "w"), &other).unwrap();
    assert_eq!((untouched.pid, untouched.restarts), (Some(other_pid), 0));
    // It registered again: same workerID, a higher incarnation, the new pid.
    let new_pid = u64::from(restarted.pid.unwrap());
    wait_until(&format!("{victim} registered again"), SEEN, || async {
        registry_record(&client, &victim)
            .await
            .is_some_and(|record| {
                record.incarnation > incarnation
                    && record.pid == Some(new_pid)
                    && matches!(record.status, WorkerStatus::Idle | WorkerStatus::Working)
            })
    })
    .await
    .unwrap();
    // The run it held, and the runs submitted around the kill, all succeed.
    assert_all_succeeded(&client, &runs, RUNS_END).await;

    // SIGTERM, sent by someone else than the pool: the worker exits 0, which is final.
    let state = pool.status().await.unwrap();
    let first_pid = process(group(&state, "w"), &w1).unwrap().pid.unwrap();
    let second_pid = process(group(&state, "w"), &w2).unwrap().pid.unwrap();
    signal_pid(first_pid, Signal::SIGTERM);
    let state = pool
        .wait_for_state(&format!("{w1} TERMINATED"), STOPPED, |state| {
            process(group(state, "w"), &w1)
                .is_some_and(|ended| ended.state == ProcessPhase::Terminated)
        })
        .await;
    let ended = process(group(&state, "w"), &w1).unwrap();
    let last = ended.last_exit.clone().expect("lastExit once terminated");
    assert_eq!(
        (last.class, last.code, last.signal),
        (ExitClass::Final, Some(0), None),
        "{last:?}"
    );
    hold_for(NOT_RESTARTED).await;
    let state = pool.status().await.unwrap();
    let ended = process(group(&state, "w"), &w1).unwrap();
    assert_eq!(ended.state, ProcessPhase::Terminated, "{ended:?}");
    assert_eq!(ended.pid, None, "{ended:?}");
    assert!(
        pool.exit_status().is_none(),
        "the pool ended with a process still running"
    );

    // A hard restart stops the other one gracefully and starts both, the final one included.
    let begun = pool.restart(RestartMode::Hard, None).await.unwrap();
    assert!(begun.accepted);
    let state = pool
        .wait_for_state("both started again", REPLACED, |state| {
            let workers = group(state, "w");
            settled_at(workers, 2) && !pids(alive(workers)).contains(&second_pid)
        })
        .await;
    assert_eq!(state.restarts, 1, "a requested stop is not a restart");

    // Once every process has ended final, the pool ends by itself, with status 0.
    for started in alive(group(&state, "w")) {
        signal_pid(started.pid.unwrap(), Signal::SIGTERM);
    }
    pool.wait_ended(0, STOPPED).await;
    // They said they were terminating, so the registry has them OFFLINE, not LOST.
    for worker in [&w1, &w2] {
        wait_registry_status(&client, worker, WorkerStatus::Offline, SEEN).await;
    }
}

drover_integration_tests::for_each_kind!(lifecycle: pool_lifecycle_rust_sdk, pool_lifecycle_python_sdk, pool_lifecycle_no_sdk);

/// A configuration that breaks a rule: exit 64 with one line on stderr, nothing started.
#[tokio::test]
async fn pool_refuses_a_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let command = format!("touch {}", marker.display());
    let cases = [
        ("an unknown key", "surprise = 1\n", "size = 1\n"),
        ("min above size", "", "size = 1\nmin = 2\nmax = 3\n"),
        ("size above max", "", "size = 4\nmax = 3\n"),
        ("max 0", "", "size = 0\nmin = 0\nmax = 0\n"),
        (
            "neither unavailability nor surge",
            "",
            "size = 1\nmax_unavailable = 0\nmax_surge = 0\n",
        ),
        ("a bad duration", "", "size = 1\nstop_grace = \"soon\"\n"),
    ];
    for (what, top, group) in cases {
        let path = dir.path().join("pool.toml");
        let text = format!(
            "pool = \"bad\"\n{top}\n[groups.g]\ncommand = \"/bin/sh\"\nargs = [\"-c\", {command:?}]\n{group}"
        );
        std::fs::write(&path, &text).unwrap();
        let output = drover(
            "nats://127.0.0.1:1",
            &["pool", "run", path.to_str().unwrap()],
        )
        .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{what}: {output:?}\n{text}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: {stderr}");
        assert!(stderr.starts_with("drover: "), "{what}: {stderr}");
        assert!(!marker.exists(), "{what}: a process was started");
    }
    let no_groups = dir.path().join("empty.toml");
    std::fs::write(&no_groups, "pool = \"bad\"\n").unwrap();
    let output = drover(
        "nats://127.0.0.1:1",
        &["pool", "run", no_groups.to_str().unwrap()],
    )
    .await;
    assert_eq!(output.status.code(), Some(64), "no group: {output:?}");
}

/// The one line of a critical shutdown on the pool's stderr.
fn critical_line(pool: &PoolRun) -> String {
    let stderr = pool.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("critical shutdown: "))
        .collect();
    assert_eq!(lines.len(), 1, "{}", pool.output_tail());
    lines[0].to_owned()
}

/// A process that exits with a code before it registers is a configuration error: critical
/// at once. One that dies by a signal at start is restarted with backoff until the restart
/// intensity is passed; then every other process is stopped gracefully (TERMINATING, then
/// OFFLINE in the registry, never LOST) and the pool exits 1.
#[tokio::test]
async fn pool_critical_shutdowns() {
    let stack = pool_stack().await;
    let client = stack.client().await;

    let config = PoolConfig::new("early").group(Group::shell("early", "exit 3").set("size", 1));
    let mut pool = PoolRun::spawn(&stack, &config, &[]).await;
    let status = pool.wait_exit(STOPPED).await;
    assert_eq!(status.code(), Some(1), "{status}\n{}", pool.output_tail());
    let line = critical_line(&pool);
    assert!(line.to_lowercase().contains("regist"), "{line}");
    drop(pool);

    // The crashing group starts empty, so that the healthy one is registered before the
    // loop begins.
    let config = PoolConfig::new("loop")
        .set("max_restarts", 3)
        .set_str("max_restarts_period", "60s")
        .group(WorkerKind::RustSdk.group("healthy").set("size", 2))
        .group(
            Group::shell("crash", "kill -SEGV $$")
                .set("size", 0)
                .set("min", 0)
                .set("max", 1)
                .set_str("restart_delay", "500ms"),
        );
    let id = config.id().clone();
    let mut pool = PoolRun::start(&stack, &config).await;
    let healthy = [worker_id(&id, "healthy", 1), worker_id(&id, "healthy", 2)];
    for worker in &healthy {
        wait_registry_status(&client, worker, WorkerStatus::Idle, SEEN).await;
    }
    let events = Recorder::start(&client, "v1.registry.events.*").await;
    let crashing = worker_id(&id, "crash", 1);
    let scaled = pool.scale("crash", Some(1), None).await.unwrap();
    assert_eq!(scaled.target, 1);

    // Restarted after a signal it sent itself: unexpected, with the signal.
    let state = pool
        .wait_for_state("the crashing process restarted", REPLACED, |state| {
            process(group(state, "crash"), &crashing).is_some_and(|crashed| crashed.restarts >= 1)
        })
        .await;
    let last = process(group(&state, "crash"), &crashing)
        .unwrap()
        .last_exit
        .clone()
        .expect("lastExit after a restart");
    assert_eq!(
        (last.class, last.signal, last.code),
        (ExitClass::Unexpected, Some(11), None),
        "{last:?}"
    );

    pool.wait_ended(1, STOPPED).await;
    let line = critical_line(&pool);
    assert!(line.to_lowercase().contains("restart"), "{line}");
    for worker in &healthy {
        wait_registry_status(&client, worker, WorkerStatus::Offline, SEEN).await;
        let statuses: Vec<String> = events
            .payloads_on(&format!("v1.registry.events.{worker}"))
            .iter()
            .filter_map(|event| event["status"].as_str().map(str::to_owned))
            .collect();
        let terminating = statuses.iter().position(|status| status == "TERMINATING");
        let offline = statuses.iter().position(|status| status == "OFFLINE");
        assert!(
            terminating.is_some() && terminating < offline,
            "{worker}: {statuses:?}"
        );
        assert!(
            !statuses
                .iter()
                .any(|status| status == "LOST" || status == "UNRESPONSIVE"),
            "{worker}: {statuses:?}"
        );
    }
}
