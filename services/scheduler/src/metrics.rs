//! Metric names of the scheduler, their descriptions, and what a run's changes add to them.
//! docs/observability.md lists them for operators.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::metrics::{counter, gauge, histogram};
use drover_protocol::{RoutineId, RunId, RunRecord, RunStatus};
use drover_service_kit::metrics::{Histogram, ServiceMetrics};

/// Requests handled, by `endpoint` and `outcome` (`ok` or an error code).
pub const REQUESTS: &str = "drover_scheduler_requests_total";
/// Run records written over someone else's change (compare-and-set conflicts).
pub const WRITE_CONFLICTS: &str = "drover_scheduler_write_conflicts_total";
/// Run state changes, by the new `status`.
pub const RUN_TRANSITIONS: &str = "drover_scheduler_run_transitions_total";
/// Runs accepted, by `routine`.
pub const RUNS_SUBMITTED: &str = "drover_scheduler_runs_submitted_total";
/// Runs that reached a terminal state, by `routine`, `status` and `reason`.
pub const RUNS_ENDED: &str = "drover_scheduler_runs_ended_total";
/// Runs waiting for a worker, by `routine` (set by the leader).
pub const RUNS_PENDING: &str = "drover_scheduler_runs_pending";
/// Seconds from a run's acceptance to its first assignment, by `routine`.
pub const PLACEMENT_LATENCY: &str = "drover_scheduler_placement_latency_seconds";
/// Seconds from a run's acceptance to its terminal state, by `routine` and `status`.
pub const RUN_DURATION: &str = "drover_scheduler_run_duration_seconds";
/// Assignments sent to workers.
pub const ASSIGNMENTS: &str = "drover_scheduler_assignments_total";
/// Runs taken back from a lost, gone or silent worker.
pub const REASSIGNMENTS: &str = "drover_scheduler_reassignments_total";
/// Queue messages fetched.
pub const FETCHED: &str = "drover_scheduler_fetched_total";
/// Directives read, by `kind`.
pub const DIRECTIVES: &str = "drover_scheduler_directives_total";
/// Directives refused, by `code`.
pub const DIRECTIVES_REJECTED: &str = "drover_scheduler_directives_rejected_total";
/// Run actors alive on the leader.
pub const ACTORS: &str = "drover_scheduler_run_actors";
/// 1 while this replica is the leader.
pub const LEADER: &str = "drover_scheduler_leader";
/// `starting` directives stored in one write with the completion right behind them.
pub const DIRECTIVES_COALESCED: &str = "drover_scheduler_directives_coalesced_total";

/// Waits for a worker: from a millisecond to minutes of backlog.
const PLACEMENT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];
/// Whole runs: from a few milliseconds to hours.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0, 10800.0,
];
const HISTOGRAMS: &[Histogram] = &[
    (PLACEMENT_LATENCY, PLACEMENT_BUCKETS),
    (RUN_DURATION, DURATION_BUCKETS),
];

/// The scheduler's metrics, for `run_service`.
pub const METRICS: ServiceMetrics = ServiceMetrics {
    describe,
    histograms: HISTOGRAMS,
};

/// Registers the descriptions shown on `/metrics`, and the counters of rare events at 0.
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS, "requests handled, by endpoint and outcome");
    describe_counter!(WRITE_CONFLICTS, "run record compare-and-set conflicts");
    describe_counter!(RUN_TRANSITIONS, "run state changes, by new status");
    describe_counter!(RUNS_SUBMITTED, "runs accepted, by routine");
    describe_counter!(
        RUNS_ENDED,
        "runs that reached a terminal state, by routine, status and failure reason"
    );
    describe_gauge!(
        RUNS_PENDING,
        "runs waiting for a worker, by routine (reported by the leader)"
    );
    describe_histogram!(
        PLACEMENT_LATENCY,
        Unit::Seconds,
        "time from a run's acceptance to its first assignment, by routine"
    );
    describe_histogram!(
        RUN_DURATION,
        Unit::Seconds,
        "time from a run's acceptance to its terminal state, by routine and status"
    );
    describe_counter!(ASSIGNMENTS, "assignments sent to workers");
    describe_counter!(REASSIGNMENTS, "runs taken back from lost or silent workers");
    describe_counter!(FETCHED, "queue messages fetched");
    describe_counter!(DIRECTIVES, "worker directives read, by kind");
    describe_counter!(DIRECTIVES_REJECTED, "worker directives refused, by code");
    describe_gauge!(ACTORS, "run actors alive on the leader");
    describe_gauge!(LEADER, "1 while this replica is the leader");
    describe_counter!(
        DIRECTIVES_COALESCED,
        "starting directives stored together with their completion"
    );
    for rare in [
        WRITE_CONFLICTS,
        ASSIGNMENTS,
        REASSIGNMENTS,
        FETCHED,
        DIRECTIVES_COALESCED,
    ] {
        counter!(rare).increment(0);
    }
    gauge!(ACTORS).set(0.0);
}

/// A run was accepted (a new one, not a repeated request).
pub fn submitted(record: &RunRecord) {
    counter!(RUNS_SUBMITTED, "routine" => record.routine_id.to_string()).increment(1);
}

/// A run changed from `previous` to `record`; counted once, by the process that wrote it.
pub fn transition(previous: Option<RunStatus>, record: &RunRecord) {
    counter!(RUN_TRANSITIONS, "status" => record.status.as_str()).increment(1);
    if let Some(wait) = first_placement(previous, record) {
        histogram!(PLACEMENT_LATENCY, "routine" => record.routine_id.to_string())
            .record(wait.as_secs_f64());
    }
    if let Some(took) = ended(previous, record) {
        let routine = record.routine_id.to_string();
        let status = record.status.as_str();
        let reason = record
            .failure_reason
            .map_or("none", |reason| reason.as_str());
        counter!(RUNS_ENDED, "routine" => routine.clone(), "status" => status, "reason" => reason)
            .increment(1);
        histogram!(RUN_DURATION, "routine" => routine, "status" => status)
            .record(took.as_secs_f64());
    }
}

/// An assignment was sent to a worker: counted, and its routine noted for the queue depth.
pub fn assigned(depth: &QueueDepth, record: &RunRecord) {
    counter!(ASSIGNMENTS).increment(1);
    depth.learn(record.run_id.clone(), record.routine_id.clone());
}

/// How long the run waited for its first worker, when `record` is its first assignment.
fn first_placement(previous: Option<RunStatus>, record: &RunRecord) -> Option<Duration> {
    let first = previous == Some(RunStatus::Pending)
        && record.status == RunStatus::Assigned
        && record.attempt == 1;
    first
        .then(|| record.assigned_at.unwrap_or(record.created_at))
        .map(|assigned| assigned.since(record.created_at))
}

/// How long the run took, when `record` is its end.
fn ended(previous: Option<RunStatus>, record: &RunRecord) -> Option<Duration> {
    let ends = record.status.is_terminal() && !previous.is_some_and(RunStatus::is_terminal);
    ends.then(|| record.ended_at.unwrap_or(record.created_at))
        .map(|ended| ended.since(record.created_at))
}

/// The leader's count of runs waiting for a worker, per routine.
///
/// A run in flight has one message in its routine's queue stream from acceptance to its end,
/// whichever replica accepted it; those on a worker are listed in the workers' records. So
/// waiting runs are queue messages less runs on workers, counted per routine. The routine of
/// a run on a worker is noted when this leader assigns it, and read from the run record for
/// runs it did not assign (after a leader change).
#[derive(Debug, Default)]
pub struct QueueDepth {
    routines: Mutex<HashMap<RunId, RoutineId>>,
    reported: Mutex<HashSet<RoutineId>>,
}

impl QueueDepth {
    /// Notes the routine of a run on a worker.
    pub fn learn(&self, run: RunId, routine: RoutineId) {
        lock(&self.routines).insert(run, routine);
    }

    /// The routine of each run in `held`, and the runs whose routine is not known. Forgets
    /// the runs no longer held.
    pub fn routines_of(&self, held: &HashSet<RunId>) -> (Vec<RoutineId>, Vec<RunId>) {
        let mut routines = lock(&self.routines);
        routines.retain(|run, _| held.contains(run));
        let mut known = Vec::with_capacity(held.len());
        let mut unknown = Vec::new();
        for run in held {
            match routines.get(run) {
                Some(routine) => known.push(routine.clone()),
                None => unknown.push(run.clone()),
            }
        }
        (known, unknown)
    }

    /// Sets the gauge of each routine of `depths`, and 0 for those reported before and
    /// missing now.
    pub fn report(&self, depths: &BTreeMap<RoutineId, u64>) {
        let mut reported = lock(&self.reported);
        for routine in reported.iter().filter(|r| !depths.contains_key(*r)) {
            gauge!(RUNS_PENDING, "routine" => routine.to_string()).set(0.0);
        }
        for (routine, depth) in depths {
            gauge!(RUNS_PENDING, "routine" => routine.to_string()).set(*depth as f64);
        }
        reported.extend(depths.keys().cloned());
    }

    /// Leadership ended: every routine reported so far reads 0 from this replica.
    pub fn retire(&self) {
        self.report(&BTreeMap::new());
        lock(&self.routines).clear();
    }
}

/// Runs waiting per routine: `in_flight` (queue messages per routine) less one for each
/// entry of `held` (the routine of each run on a worker), for every routine in flight or
/// in `served`.
pub fn pending(
    in_flight: &HashMap<RoutineId, u64>,
    held: &[RoutineId],
    served: &HashSet<RoutineId>,
) -> BTreeMap<RoutineId, u64> {
    let mut depths: BTreeMap<RoutineId, u64> = served
        .iter()
        .chain(in_flight.keys())
        .map(|routine| {
            (
                routine.clone(),
                in_flight.get(routine).copied().unwrap_or(0),
            )
        })
        .collect();
    for routine in held {
        if let Some(depth) = depths.get_mut(routine) {
            *depth = depth.saturating_sub(1);
        }
    }
    depths
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{at, pending as pending_run, routine, w};
    use crate::transitions;
    use drover_protocol::RunError;

    #[test]
    fn the_first_assignment_measures_the_wait_from_acceptance() {
        let created = pending_run(0);
        let assigned = transitions::assign(&created, &w("a"), 1, at(250));
        assert_eq!(
            first_placement(Some(RunStatus::Pending), &assigned),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            first_placement(None, &created),
            None,
            "accepted, not placed"
        );
        let back = transitions::reassign(&assigned, "lost", 3, at(300));
        let again = transitions::assign(&back, &w("b"), 1, at(400));
        assert_eq!(
            first_placement(Some(RunStatus::Pending), &again),
            None,
            "a second placement is not the wait from acceptance"
        );
    }

    #[test]
    fn a_run_ends_once_and_took_from_acceptance_to_its_end() {
        let running = transitions::start(
            &transitions::assign(&pending_run(0), &w("a"), 1, at(10)),
            at(20),
        )
        .expect("assigned");
        let failed = transitions::fail_attempt(
            &running,
            transitions::AttemptFailure::Error(RunError::new("E", "e")),
            at(1_500),
        );
        assert_eq!(failed.status, RunStatus::Failed);
        assert_eq!(
            ended(Some(RunStatus::Running), &failed),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(
            ended(Some(RunStatus::Failed), &failed),
            None,
            "already over"
        );
        assert_eq!(ended(Some(RunStatus::Assigned), &running), None, "not over");
    }

    #[test]
    fn waiting_runs_are_queue_messages_less_runs_on_workers() {
        let (a, b, c) = (routine("a"), routine("b"), routine("c"));
        let in_flight = HashMap::from([(a.clone(), 5), (b.clone(), 1)]);
        let held = [a.clone(), a.clone(), b.clone(), b.clone()];
        let served = HashSet::from([a.clone(), c.clone()]);
        let depths = pending(&in_flight, &held, &served);
        assert_eq!(
            depths,
            BTreeMap::from([(a, 3), (b, 0), (c, 0)]),
            "c is served and idle; b's extra held run (a stale record) does not go below 0"
        );
    }

    #[test]
    fn routines_are_remembered_while_their_runs_are_held() {
        let depth = QueueDepth::default();
        let (r1, r2) = (RunId::generate(), RunId::generate());
        depth.learn(r1.clone(), routine("a"));
        let held = HashSet::from([r1.clone(), r2.clone()]);
        assert_eq!(depth.routines_of(&held), (vec![routine("a")], vec![r2]));
        let (known, unknown) = depth.routines_of(&HashSet::new());
        assert!(known.is_empty() && unknown.is_empty());
        let (known, _) = depth.routines_of(&HashSet::from([r1]));
        assert!(known.is_empty(), "forgotten once no longer held");
    }
}
