//! The group's decisions at exact instants: starts, classification, backoff, scaling,
//! rolling and hard restarts, quotas and shutdown.

use std::path::Path;

use super::*;
use crate::config::{Overrides, PoolConfig};

const SEC: Duration = Duration::from_secs(1);

/// A group driven by hand: started processes get pids 100, 101, ...; the registry and
/// exits are reported by the test.
struct Harness {
    group: Group,
    now: Instant,
    next_pid: u32,
    incarnation: u64,
}

fn config(extra: &str) -> GroupConfig {
    let text = format!("pool = \"p\"\n[groups.g]\ncommand = \"w\"\n{extra}");
    PoolConfig::parse(&text, Path::new("."), &Overrides::default())
        .expect("test configuration is valid")
        .groups
        .remove(0)
}

impl Harness {
    fn new(extra: &str) -> Self {
        Self {
            group: Group::new(PoolId::parse("p").unwrap(), config(extra)),
            now: Instant::now(),
            next_pid: 100,
            incarnation: 0,
        }
    }

    /// Reconciles at the current instant and starts what it asks to start.
    fn tick(&mut self) -> (Vec<Action>, Option<String>) {
        let (actions, critical) = self.group.reconcile(self.now);
        for action in &actions {
            if let Action::Start { index, .. } = action {
                let pid = self.next_pid;
                self.next_pid += 1;
                self.group.started(*index, pid, 0, self.now);
            }
        }
        (actions, critical)
    }

    fn actions(&mut self) -> Vec<Action> {
        let (actions, critical) = self.tick();
        assert_eq!(critical, None);
        actions
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    fn pid(&self, worker: &str) -> u32 {
        self.group
            .slot(&WorkerId::parse(worker).unwrap())
            .and_then(|slot| slot.pid)
            .unwrap_or_else(|| panic!("{worker} has no process"))
    }

    /// The registry reports `worker` with `status` (a new incarnation when `fresh`).
    fn report(&mut self, worker: &str, status: WorkerStatus, held: u32) {
        self.incarnation += 1;
        self.group.observed(
            &WorkerId::parse(worker).unwrap(),
            self.incarnation,
            status,
            held,
            4,
        );
    }

    fn ready_all(&mut self) {
        let starting: Vec<String> = self
            .group
            .slots
            .iter()
            .filter(|slot| slot.alive() && slot.phase == ProcessPhase::Starting)
            .map(|slot| slot.worker_id.to_string())
            .collect();
        for worker in starting {
            self.report(&worker, WorkerStatus::Idle, 0);
        }
    }

    fn exit(&mut self, pid: u32, code: Option<i32>, signal: Option<i32>) -> Exited {
        self.group
            .exited(pid, ExitStatus { code, signal }, self.now)
            .expect("the pid is the group's")
    }

    /// Every process that was asked to stop exits.
    fn stopped_exit(&mut self, actions: &[Action]) {
        for action in actions {
            if let Action::Stop { pid, .. } = action {
                let exited = self.exit(*pid, Some(0), None);
                assert_eq!(exited.exit.class, ExitClass::Requested);
            }
        }
    }

    fn phases(&self) -> Vec<(String, ProcessPhase)> {
        self.group
            .slots
            .iter()
            .map(|slot| (slot.worker_id.to_string(), slot.phase))
            .collect()
    }
}

fn starts(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Start { worker_id, .. } => Some(worker_id.to_string()),
            _ => None,
        })
        .collect()
}

fn stops(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Stop { worker_id, .. } => Some(worker_id.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn it_starts_the_target_with_numbered_worker_ids_and_follows_the_registry() {
    let mut h = Harness::new("size = 2\nmax = 4");
    assert_eq!(starts(&h.actions()), ["p-g-1", "p-g-2"]);
    assert!(
        h.actions().is_empty(),
        "nothing more to do while they start"
    );
    assert_eq!(h.group.running(), 0);
    // A registration no newer than what the registry had before the start is ignored.
    h.group.observed(
        &WorkerId::parse("p-g-1").unwrap(),
        0,
        WorkerStatus::Idle,
        0,
        1,
    );
    assert_eq!(h.group.running(), 0);
    h.report("p-g-1", WorkerStatus::Initializing, 0);
    assert_eq!(h.group.running(), 0);
    h.report("p-g-1", WorkerStatus::Idle, 0);
    h.report("p-g-2", WorkerStatus::Working, 1);
    assert_eq!(h.group.running(), 2);
}

#[test]
fn an_unexpected_end_restarts_the_same_worker_id_after_a_doubling_capped_delay() {
    let mut h = Harness::new("restart_delay = \"1s\"\nrestart_delay_max = \"3s\"");
    h.actions();
    h.ready_all();
    for (round, delay) in [(1, SEC), (2, 2 * SEC), (3, 3 * SEC), (4, 3 * SEC)] {
        let pid = h.pid("p-g-1");
        let exited = h.exit(pid, None, Some(9));
        assert_eq!(exited.exit.class, ExitClass::Unexpected);
        assert_eq!(exited.exit.signal, Some(9));
        assert_eq!(exited.outcome, ExitOutcome::Restart);
        assert_eq!(h.phases(), [("p-g-1".to_owned(), ProcessPhase::Restarting)]);
        h.advance(delay - Duration::from_millis(1));
        assert!(
            h.actions().is_empty(),
            "round {round}: not before the delay"
        );
        h.advance(Duration::from_millis(1));
        assert_eq!(starts(&h.actions()), ["p-g-1"], "round {round}");
        assert_eq!(h.group.slots[0].restarts, round);
        h.ready_all();
    }
    // A process that stayed up a minute starts the delays over.
    h.advance(BACKOFF_RESET_AFTER);
    let pid = h.pid("p-g-1");
    h.exit(pid, Some(1), None);
    h.advance(SEC);
    assert_eq!(starts(&h.actions()), ["p-g-1"]);
}

#[test]
fn a_final_code_terminates_for_good_and_holds_its_place() {
    let mut h = Harness::new("size = 2\nmax = 3");
    h.actions();
    h.ready_all();
    let pid = h.pid("p-g-1");
    let exited = h.exit(pid, Some(0), None);
    assert_eq!(exited.exit.class, ExitClass::Final);
    assert_eq!(exited.outcome, ExitOutcome::Settled);
    h.advance(60 * SEC);
    assert!(
        h.actions().is_empty(),
        "a final process is not restarted or replaced"
    );
    assert!(!h.group.all_terminated());
    let pid = h.pid("p-g-2");
    h.exit(pid, Some(0), None);
    assert!(h.group.all_terminated() && h.group.all_final());
}

#[test]
fn with_never_an_unexpected_end_also_terminates() {
    let mut h = Harness::new("restart = \"never\"");
    h.actions();
    h.ready_all();
    let pid = h.pid("p-g-1");
    let exited = h.exit(pid, None, Some(11));
    assert_eq!(
        (exited.exit.class, exited.outcome),
        (ExitClass::Unexpected, ExitOutcome::Settled)
    );
    assert!(h.group.all_terminated() && !h.group.all_final());
    // With `always`, code 0 is not final unless listed.
    let mut h = Harness::new("restart = \"always\"");
    h.actions();
    h.ready_all();
    let pid = h.pid("p-g-1");
    assert_eq!(h.exit(pid, Some(0), None).outcome, ExitOutcome::Restart);
}

#[test]
fn breaking_the_start_up_order_is_critical_but_a_kill_before_registering_is_not() {
    let mut h = Harness::new("");
    h.actions();
    let pid = h.pid("p-g-1");
    let exited = h.exit(pid, Some(3), None);
    assert_eq!(exited.exit.class, ExitClass::Critical);
    match exited.outcome {
        ExitOutcome::Critical(reason) => {
            assert!(
                reason.contains("p-g-1 exited with code 3 before registering"),
                "{reason}"
            )
        }
        other => panic!("expected critical, got {other:?}"),
    }
    let mut h = Harness::new("");
    h.actions();
    let pid = h.pid("p-g-1");
    assert_eq!(h.exit(pid, None, Some(11)).outcome, ExitOutcome::Restart);
}

#[test]
fn a_process_not_ready_within_the_start_timeout_is_critical_exactly_then() {
    let mut h = Harness::new("start_timeout = \"10s\"");
    h.actions();
    h.advance(10 * SEC - Duration::from_millis(1));
    assert_eq!(h.tick().1, None);
    h.report("p-g-1", WorkerStatus::Initializing, 0);
    h.advance(Duration::from_millis(1));
    let critical = h.tick().1.expect("late");
    assert!(
        critical.contains("registered but was not ready within 10s"),
        "{critical}"
    );
}

#[test]
fn scaling_down_takes_not_ready_then_idle_then_least_busy_and_stops_gracefully() {
    let mut h = Harness::new("size = 4\nmax = 6\nstop_grace = \"5s\"");
    h.actions();
    h.report("p-g-1", WorkerStatus::Working, 3);
    h.report("p-g-2", WorkerStatus::Working, 1);
    h.report("p-g-3", WorkerStatus::Idle, 0);
    // p-g-4 never became ready.
    h.group.set_target(1);
    let actions = h.actions();
    assert_eq!(stops(&actions), ["p-g-4", "p-g-3", "p-g-2"]);
    assert_eq!(h.group.running(), 1);
    // Nothing is killed before the grace period, and all of it after.
    h.advance(5 * SEC - Duration::from_millis(1));
    assert!(h.actions().is_empty());
    h.advance(Duration::from_millis(1));
    let kills = h.actions();
    assert_eq!(kills.len(), 3);
    assert!(kills
        .iter()
        .all(|action| matches!(action, Action::Kill { .. })));
    h.stopped_exit(&actions);
    assert_eq!(h.phases(), [("p-g-1".to_owned(), ProcessPhase::Running)]);
    // Up again: the lowest free indices.
    h.group.set_target(3);
    assert_eq!(starts(&h.actions()), ["p-g-2", "p-g-3"]);
}

/// Runs a rolling replacement to its end, checking at every step that at most
/// `target + surge` processes are alive and at least `target - unavailable` are ready.
/// A stopped process takes one step to exit, as a graceful stop takes a while.
fn roll_through(h: &mut Harness, target: usize, surge: usize, unavailable: usize) -> Vec<String> {
    let mut started = Vec::new();
    let mut stopping: Vec<Action> = Vec::new();
    for _ in 0..50 {
        let actions = h.actions();
        started.extend(starts(&actions));
        let alive = h.group.slots.iter().filter(|slot| slot.alive()).count();
        assert!(alive <= target + surge, "{alive} alive: {:?}", h.phases());
        assert!(
            h.group.running() as usize >= target - unavailable,
            "too few ready: {:?}",
            h.phases()
        );
        h.stopped_exit(&stopping);
        stopping = actions.clone();
        h.ready_all();
        let settled = h.group.slots.len() == target
            && h.group
                .slots
                .iter()
                .all(|slot| !slot.outdated && slot.alive());
        if settled && actions.is_empty() {
            return started;
        }
    }
    panic!("the roll did not finish: {:?}", h.phases());
}

#[test]
fn a_soft_restart_with_surge_starts_each_new_process_before_stopping_an_old_one() {
    let mut h = Harness::new("size = 3\nmax = 3\nmax_surge = 1\nmax_unavailable = 0");
    h.actions();
    h.ready_all();
    let old: Vec<u32> = ["p-g-1", "p-g-2", "p-g-3"]
        .iter()
        .map(|w| h.pid(w))
        .collect();
    h.group.soft_restart();
    let first = h.actions();
    assert_eq!(starts(&first), ["p-g-4"], "surge first");
    assert!(
        stops(&first).is_empty(),
        "no stop before the new one is ready"
    );
    let started = roll_through(&mut h, 3, 1, 0);
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(h
        .group
        .slots
        .iter()
        .all(|slot| !old.contains(&slot.pid.unwrap_or(0))));
    assert_eq!(h.group.running(), 3);
}

#[test]
fn a_soft_restart_without_surge_stops_one_then_starts_its_replacement() {
    let mut h = Harness::new("size = 2\nmax = 2\nmax_surge = 0\nmax_unavailable = 1");
    h.actions();
    h.ready_all();
    h.group.soft_restart();
    let first = h.actions();
    assert_eq!(stops(&first).len(), 1);
    assert!(starts(&first).is_empty());
    h.stopped_exit(&first);
    let started = roll_through(&mut h, 2, 0, 1);
    assert_eq!(started.len(), 2, "{started:?}");
    let ids: Vec<String> = h
        .group
        .slots
        .iter()
        .map(|slot| slot.worker_id.to_string())
        .collect();
    assert_eq!(
        ids,
        ["p-g-1", "p-g-2"],
        "without surge the indices are reused"
    );
}

#[test]
fn a_hard_restart_stops_everything_before_starting_anything() {
    let mut h = Harness::new("size = 2\nmax = 2");
    h.actions();
    h.ready_all();
    let pid = h.pid("p-g-2");
    h.exit(pid, Some(0), None); // final: a hard restart starts it again too
    h.group.hard_restart();
    let actions = h.actions();
    assert_eq!(stops(&actions), ["p-g-1"]);
    assert!(
        h.actions().is_empty(),
        "nothing starts while one still runs"
    );
    h.stopped_exit(&actions);
    assert_eq!(starts(&h.actions()), ["p-g-1", "p-g-2"]);
}

#[test]
fn quotas_replace_through_the_soft_path() {
    let mut h =
        Harness::new("size = 1\nmax = 1\nmax_runs = 2\nmax_memory = \"10MiB\"\nmax_age = \"1h\"");
    h.actions();
    h.ready_all();
    let worker = WorkerId::parse("p-g-1").unwrap();
    h.group.run_ended(&worker);
    assert!(h.actions().is_empty());
    h.group.run_ended(&worker);
    assert_eq!(
        starts(&h.actions()),
        ["p-g-2"],
        "replaced after max_runs, new one first"
    );
    h.ready_all();
    assert_eq!(stops(&h.actions()), ["p-g-1"]);
    // Memory: over the limit, replaced.
    let mut h = Harness::new("size = 1\nmax = 1\nmax_memory = \"10MiB\"");
    h.actions();
    h.ready_all();
    h.group.memory(&worker, 10 * 1024 * 1024);
    assert!(h.actions().is_empty(), "at the limit is not past it");
    h.group.memory(&worker, 10 * 1024 * 1024 + 1);
    assert_eq!(starts(&h.actions()), ["p-g-2"]);
    // Age.
    let mut h = Harness::new("size = 1\nmax = 1\nmax_age = \"1h\"");
    h.actions();
    h.ready_all();
    h.advance(Duration::from_secs(3600) - Duration::from_millis(1));
    assert!(h.actions().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(starts(&h.actions()), ["p-g-2"]);
}

#[test]
fn a_shutdown_stops_every_process_and_cancels_pending_restarts() {
    let mut h = Harness::new("size = 2\nmax = 2");
    h.actions();
    h.ready_all();
    let pid = h.pid("p-g-2");
    h.exit(pid, None, Some(9));
    h.group.shut_down();
    let actions = h.actions();
    assert_eq!(stops(&actions), ["p-g-1"]);
    h.advance(60 * SEC);
    assert!(
        starts(&h.actions()).is_empty(),
        "no restart during a shutdown"
    );
    h.stopped_exit(&actions);
    assert!(!h.group.any_alive());
    assert!(h
        .group
        .slots
        .iter()
        .all(|slot| slot.phase == ProcessPhase::Terminated));
}
