//! Every change to a worker record, as pure functions of the current record.
//!
//! The store applies them under compare-and-set, so each function may run more than once
//! for one request (after a conflict) and must depend only on its inputs.

use drover_protocol::{
    Claim, ErrorCode, HeldRun, Holding, Incarnation, Liveness, LivenessReport, Register, Release,
    Timestamp, Waiting, WorkerPhase, WorkerRecord,
};
use serde_json::{json, Value};

/// Why a request was refused: a wire error code, a message, and details.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The `v1.error` code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Structured context.
    pub details: Value,
}

impl Rejection {
    fn new(code: ErrorCode, message: impl Into<String>, details: Value) -> Self {
        Self {
            code,
            message: message.into(),
            details,
        }
    }
}

/// What to do with the record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing changes (the request was already in effect).
    Unchanged,
    /// Write this record.
    Write(Box<WorkerRecord>),
}

/// Timings handed to workers at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a worker is LOST.
    pub lost_after_ms: u64,
}

/// A new incarnation of the worker, replacing whatever was there.
///
/// The previous incarnation's runs are dropped: the scheduler sees the new incarnation and
/// reassigns them, and directives from the old incarnation become stale.
pub fn register(
    existing: Option<&WorkerRecord>,
    request: &Register,
    timings: Timings,
    now: Timestamp,
) -> WorkerRecord {
    let incarnation = existing.map_or(1, |record| record.incarnation + 1);
    let mut record = WorkerRecord {
        worker_id: request.worker_id.clone(),
        incarnation,
        status: drover_protocol::WorkerStatus::Initializing,
        reported_status: None,
        phase: WorkerPhase::Initializing,
        unresponsive: false,
        routines: request.routines.clone(),
        labels: request.labels.clone(),
        capacity: request.capacity,
        runs: Vec::new(),
        name: request.name.clone(),
        sdk: request.sdk.clone(),
        host: request.host.clone(),
        pid: request.pid,
        heartbeat_interval_ms: timings.heartbeat_interval_ms,
        lost_after_ms: timings.lost_after_ms,
        registered_at: now,
        status_changed_at: now,
        ready_at: None,
        terminating_reason: None,
    };
    record.status = record.derive_status();
    record
}

fn current<'a>(
    existing: Option<&'a WorkerRecord>,
    worker: &str,
    incarnation: Incarnation,
) -> Result<&'a WorkerRecord, Rejection> {
    let record = existing.ok_or_else(|| {
        Rejection::new(
            ErrorCode::UnknownWorker,
            format!("worker {worker:?} is not registered"),
            json!({"workerID": worker, "incarnation": incarnation}),
        )
    })?;
    if record.incarnation != incarnation {
        return Err(Rejection::new(
            ErrorCode::StaleIncarnation,
            format!(
                "incarnation {incarnation} of worker {worker:?} is not current (current is {})",
                record.incarnation
            ),
            json!({"workerID": worker, "incarnation": incarnation, "current": record.incarnation}),
        ));
    }
    if !record.is_live() {
        return Err(Rejection::new(
            ErrorCode::NotRegistered,
            format!(
                "worker {worker:?} is {} and must register again",
                record.status
            ),
            json!({"workerID": worker, "status": record.status, "incarnation": incarnation}),
        ));
    }
    Ok(record)
}

/// `v1.ready`: INITIALIZING becomes READY.
pub fn ready(
    existing: Option<&WorkerRecord>,
    worker: &str,
    incarnation: Incarnation,
    now: Timestamp,
) -> Result<Outcome, Rejection> {
    let record = current(existing, worker, incarnation)?;
    if record.phase != WorkerPhase::Initializing {
        return Ok(Outcome::Unchanged);
    }
    let mut next = record.clone();
    next.phase = WorkerPhase::Ready;
    next.ready_at = Some(now);
    Ok(Outcome::Write(Box::new(next)))
}

/// `v1.terminating`: the worker gets no new work.
pub fn terminating(
    existing: Option<&WorkerRecord>,
    worker: &str,
    incarnation: Incarnation,
    reason: Option<&str>,
) -> Result<Outcome, Rejection> {
    let record = current(existing, worker, incarnation)?;
    if record.phase == WorkerPhase::Terminating {
        return Ok(Outcome::Unchanged);
    }
    let mut next = record.clone();
    next.phase = WorkerPhase::Terminating;
    next.terminating_reason = reason.map(str::to_owned);
    Ok(Outcome::Write(Box::new(next)))
}

/// The scheduler gives the worker a run: checks phase, incarnation and capacity.
pub fn claim(
    existing: Option<&WorkerRecord>,
    claim: &Claim,
    now: Timestamp,
) -> Result<Outcome, Rejection> {
    let worker = claim.worker_id.as_str();
    let record = current(existing, worker, claim.incarnation)?;
    if let Some(held) = record.runs.iter().find(|run| run.run_id == claim.run_id) {
        if held.attempt == claim.attempt {
            return Ok(Outcome::Unchanged);
        }
        if held.attempt > claim.attempt {
            return Err(Rejection::new(
                ErrorCode::StaleAttempt,
                format!(
                    "worker {worker:?} already holds attempt {} of run {}",
                    held.attempt, claim.run_id
                ),
                json!({"attempt": claim.attempt, "current": held.attempt}),
            ));
        }
    }
    if !record.accepts_work() {
        return Err(Rejection::new(
            ErrorCode::Unavailable,
            format!("worker {worker:?} is {} and takes no work", record.status),
            json!({"status": record.status}),
        ));
    }
    let others = record
        .runs
        .iter()
        .filter(|run| run.run_id != claim.run_id)
        .count();
    if others >= record.capacity as usize {
        return Err(Rejection::new(
            ErrorCode::Unavailable,
            format!(
                "worker {worker:?} is at capacity ({} of {})",
                others, record.capacity
            ),
            json!({"capacity": record.capacity, "held": others}),
        ));
    }
    Ok(Outcome::Write(Box::new(holding(record, claim, now))))
}

/// The worker no longer holds a run (any attempt up to the one named).
pub fn release(existing: Option<&WorkerRecord>, release: &Release) -> Outcome {
    let Some(record) = existing else {
        return Outcome::Unchanged;
    };
    let held = record
        .runs
        .iter()
        .any(|run| run.run_id == release.run_id && run.attempt <= release.attempt);
    if !held {
        return Outcome::Unchanged;
    }
    let mut next = record.clone();
    next.runs
        .retain(|run| !(run.run_id == release.run_id && run.attempt <= release.attempt));
    Outcome::Write(Box::new(next))
}

/// The scheduler leader's changes to the runs one worker holds, applied in order.
///
/// The leader decided each placement from its own view of the worker's slots, so a hold is
/// recorded whatever the capacity and the phase say now (a worker that turned TERMINATING
/// still finishes what it was given). A hold for another incarnation, or for a worker that
/// is no longer live, changes nothing: the scheduler takes such runs back when it sees the
/// record.
pub fn holdings(existing: Option<&WorkerRecord>, changes: &[Holding], now: Timestamp) -> Outcome {
    let Some(mut working) = existing.cloned() else {
        return Outcome::Unchanged;
    };
    let mut changed = false;
    for change in changes {
        let outcome = match change {
            Holding::Hold(claim) => hold(&working, claim, now),
            Holding::Release(release) => self::release(Some(&working), release),
            Holding::Waiting(report) => waiting(Some(&working), report),
        };
        if let Outcome::Write(next) = outcome {
            working = *next;
            changed = true;
        }
    }
    if changed {
        Outcome::Write(Box::new(working))
    } else {
        Outcome::Unchanged
    }
}

/// Records that the live incarnation `claim` names holds its run, unless it holds a later
/// attempt already.
fn hold(record: &WorkerRecord, claim: &Claim, now: Timestamp) -> Outcome {
    if record.incarnation != claim.incarnation || !record.is_live() {
        return Outcome::Unchanged;
    }
    if let Some(held) = record.runs.iter().find(|run| run.run_id == claim.run_id) {
        if held.attempt >= claim.attempt {
            return Outcome::Unchanged;
        }
    }
    Outcome::Write(Box::new(holding(record, claim, now)))
}

/// `record` with the run `claim` names held at its attempt (in place of an earlier one).
fn holding(record: &WorkerRecord, claim: &Claim, now: Timestamp) -> WorkerRecord {
    let mut next = record.clone();
    next.runs.retain(|run| run.run_id != claim.run_id);
    next.runs.push(HeldRun {
        run_id: claim.run_id.clone(),
        attempt: claim.attempt,
        waiting: false,
        waiting_version: 0,
        since: now,
        traceparent: claim.traceparent.clone(),
    });
    next
}

/// A held run starts or stops waiting on its children.
pub fn waiting(existing: Option<&WorkerRecord>, report: &Waiting) -> Outcome {
    let Some(record) = existing else {
        return Outcome::Unchanged;
    };
    let Some(index) = record.runs.iter().position(|run| {
        run.run_id == report.run_id
            && run.attempt == report.attempt
            && run.waiting_version <= report.version
    }) else {
        return Outcome::Unchanged;
    };
    let held = &record.runs[index];
    if held.waiting == report.waiting && held.waiting_version == report.version {
        return Outcome::Unchanged;
    }
    let mut next = record.clone();
    next.runs[index].waiting = report.waiting;
    next.runs[index].waiting_version = report.version;
    Outcome::Write(Box::new(next))
}

/// What the heartbeat-monitor concluded. Reports about another incarnation are ignored.
///
/// A worker that said `terminating` and went quiet is OFFLINE, not LOST (DESIGN §5), also
/// when the monitor concluded LOST from a view that had not yet caught up with the
/// `terminating`: the worker stops pulsing once its `terminating` is stored, which can be
/// before the monitor sees the record it leads to.
pub fn liveness(existing: Option<&WorkerRecord>, report: &LivenessReport) -> Outcome {
    let Some(record) = existing else {
        return Outcome::Unchanged;
    };
    if record.incarnation != report.incarnation || !record.is_live() {
        return Outcome::Unchanged;
    }
    let mut next = record.clone();
    if let Some(status) = report.reported_status {
        next.reported_status = Some(status);
    }
    match report.liveness {
        None => {}
        Some(Liveness::Alive) => next.unresponsive = false,
        Some(Liveness::Unresponsive) => next.unresponsive = true,
        Some(Liveness::Lost) if record.phase != WorkerPhase::Terminating => {
            next.phase = WorkerPhase::Lost;
            next.runs.clear();
        }
        Some(Liveness::Lost | Liveness::Offline) => {
            next.phase = WorkerPhase::Offline;
            next.runs.clear();
        }
    }
    if &next == record {
        Outcome::Unchanged
    } else {
        Outcome::Write(Box::new(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::{RoutineId, RunId, WorkerId, WorkerStatus};

    const TIMINGS: Timings = Timings {
        heartbeat_interval_ms: 200,
        lost_after_ms: 1000,
    };

    fn registered(capacity: u32) -> WorkerRecord {
        let request = Register {
            worker_id: WorkerId::parse("w1").unwrap(),
            routines: vec![RoutineId::parse("r").unwrap()],
            labels: Default::default(),
            capacity,
            name: None,
            sdk: None,
            host: None,
            pid: None,
        };
        register(None, &request, TIMINGS, Timestamp::now())
    }

    fn written(outcome: Outcome) -> WorkerRecord {
        match outcome {
            Outcome::Write(record) => {
                let mut record = *record;
                record.status = record.derive_status();
                record
            }
            Outcome::Unchanged => panic!("expected a write"),
        }
    }

    fn ready_record(capacity: u32) -> WorkerRecord {
        let record = registered(capacity);
        written(ready(Some(&record), "w1", 1, Timestamp::now()).unwrap())
    }

    fn claim_of(run: &RunId, attempt: u64) -> Claim {
        Claim {
            worker_id: WorkerId::parse("w1").unwrap(),
            incarnation: 1,
            run_id: run.clone(),
            attempt,
            traceparent: None,
        }
    }

    #[test]
    fn registration_increments_incarnation_and_drops_runs() {
        let mut record = ready_record(2);
        record = written(
            claim(
                Some(&record),
                &claim_of(&RunId::generate(), 1),
                Timestamp::now(),
            )
            .unwrap(),
        );
        let request = Register {
            worker_id: record.worker_id.clone(),
            routines: vec![],
            labels: Default::default(),
            capacity: 1,
            name: None,
            sdk: None,
            host: None,
            pid: None,
        };
        let again = register(Some(&record), &request, TIMINGS, Timestamp::now());
        assert_eq!(again.incarnation, 2);
        assert!(again.runs.is_empty());
        assert_eq!(again.status, WorkerStatus::Initializing);
    }

    #[test]
    fn ready_checks_incarnation_and_registration() {
        let record = registered(1);
        let stale = ready(Some(&record), "w1", 7, Timestamp::now()).unwrap_err();
        assert_eq!(stale.code, ErrorCode::StaleIncarnation);
        let unknown = ready(None, "w1", 1, Timestamp::now()).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::UnknownWorker);
        let ready_one = ready_record(1);
        assert_eq!(ready_one.status, WorkerStatus::Idle);
        assert_eq!(
            ready(Some(&ready_one), "w1", 1, Timestamp::now()).unwrap(),
            Outcome::Unchanged
        );
        let lost = written(liveness(
            Some(&ready_one),
            &LivenessReport {
                worker_id: ready_one.worker_id.clone(),
                incarnation: 1,
                liveness: Some(Liveness::Lost),
                reported_status: None,
            },
        ));
        assert_eq!(lost.status, WorkerStatus::Lost);
        let gone = ready(Some(&lost), "w1", 1, Timestamp::now()).unwrap_err();
        assert_eq!(gone.code, ErrorCode::NotRegistered);
    }

    #[test]
    fn claims_respect_capacity_and_are_idempotent() {
        let record = ready_record(1);
        let run = RunId::generate();
        let held = written(claim(Some(&record), &claim_of(&run, 1), Timestamp::now()).unwrap());
        assert_eq!(held.status, WorkerStatus::Working);
        assert_eq!(
            claim(Some(&held), &claim_of(&run, 1), Timestamp::now()).unwrap(),
            Outcome::Unchanged
        );
        let full = claim(
            Some(&held),
            &claim_of(&RunId::generate(), 1),
            Timestamp::now(),
        )
        .unwrap_err();
        assert_eq!(full.code, ErrorCode::Unavailable);
        // A newer attempt of the same run replaces the old one.
        let newer = written(claim(Some(&held), &claim_of(&run, 2), Timestamp::now()).unwrap());
        assert_eq!(newer.runs.len(), 1);
        assert_eq!(newer.runs[0].attempt, 2);
        let older = claim(Some(&newer), &claim_of(&run, 1), Timestamp::now()).unwrap_err();
        assert_eq!(older.code, ErrorCode::StaleAttempt);
    }

    #[test]
    fn terminating_workers_take_no_work() {
        let record = ready_record(2);
        let record = written(terminating(Some(&record), "w1", 1, Some("deploy")).unwrap());
        assert_eq!(record.status, WorkerStatus::Terminating);
        let refused = claim(
            Some(&record),
            &claim_of(&RunId::generate(), 1),
            Timestamp::now(),
        )
        .unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unavailable);
    }

    #[test]
    fn holdings_apply_in_order_without_a_capacity_check() {
        let record = ready_record(1);
        let (first, second) = (RunId::generate(), RunId::generate());
        let release = |run: &RunId, attempt| {
            Holding::Release(Release {
                worker_id: WorkerId::parse("w1").unwrap(),
                run_id: run.clone(),
                attempt,
            })
        };
        let changes = [
            Holding::Hold(claim_of(&first, 1)),
            Holding::Hold(claim_of(&second, 1)),
            release(&first, 1),
        ];
        let after = written(holdings(Some(&record), &changes, Timestamp::now()));
        let held: Vec<_> = after.runs.iter().map(|run| run.run_id.clone()).collect();
        assert_eq!(held, vec![second.clone()], "the leader placed it: kept");
        assert_eq!(after.derive_status(), WorkerStatus::Working);
        let again = holdings(
            Some(&after),
            &[Holding::Hold(claim_of(&second, 1))],
            Timestamp::now(),
        );
        assert_eq!(again, Outcome::Unchanged, "a repeated hold changes nothing");
        let emptied = written(holdings(
            Some(&after),
            &[release(&second, 1)],
            Timestamp::now(),
        ));
        assert_eq!(emptied.derive_status(), WorkerStatus::Idle);
    }

    #[test]
    fn holdings_for_another_incarnation_or_a_gone_worker_change_nothing() {
        let record = ready_record(2);
        let mut stale = claim_of(&RunId::generate(), 1);
        stale.incarnation = 2;
        let change = [Holding::Hold(stale)];
        assert_eq!(
            holdings(Some(&record), &change, Timestamp::now()),
            Outcome::Unchanged
        );
        let mut lost = record.clone();
        lost.phase = WorkerPhase::Lost;
        let change = [Holding::Hold(claim_of(&RunId::generate(), 1))];
        assert_eq!(
            holdings(Some(&lost), &change, Timestamp::now()),
            Outcome::Unchanged
        );
        assert_eq!(
            holdings(None, &change, Timestamp::now()),
            Outcome::Unchanged
        );
    }

    #[test]
    fn release_only_removes_that_attempt_or_older() {
        let record = ready_record(2);
        let run = RunId::generate();
        let held = written(claim(Some(&record), &claim_of(&run, 2), Timestamp::now()).unwrap());
        let older = Release {
            worker_id: held.worker_id.clone(),
            run_id: run.clone(),
            attempt: 1,
        };
        assert_eq!(release(Some(&held), &older), Outcome::Unchanged);
        let current = Release {
            attempt: 2,
            ..older
        };
        let released = written(release(Some(&held), &current));
        assert_eq!(released.status, WorkerStatus::Idle);
        assert_eq!(release(Some(&released), &current), Outcome::Unchanged);
    }

    #[test]
    fn waiting_derives_hanging_and_ignores_old_reports() {
        let record = ready_record(1);
        let run = RunId::generate();
        let held = written(claim(Some(&record), &claim_of(&run, 1), Timestamp::now()).unwrap());
        let report = |waiting, version| Waiting {
            worker_id: held.worker_id.clone(),
            run_id: run.clone(),
            attempt: 1,
            waiting,
            version,
        };
        let hanging = written(waiting(Some(&held), &report(true, 5)));
        assert_eq!(hanging.status, WorkerStatus::Hanging);
        assert_eq!(
            waiting(Some(&hanging), &report(false, 4)),
            Outcome::Unchanged
        );
        let working = written(waiting(Some(&hanging), &report(false, 6)));
        assert_eq!(working.status, WorkerStatus::Working);
    }

    #[test]
    fn liveness_applies_only_to_the_current_incarnation() {
        let record = ready_record(1);
        let report = |incarnation, liveness| LivenessReport {
            worker_id: record.worker_id.clone(),
            incarnation,
            liveness: Some(liveness),
            reported_status: None,
        };
        assert_eq!(
            liveness(Some(&record), &report(9, Liveness::Lost)),
            Outcome::Unchanged
        );
        let unresponsive = written(liveness(Some(&record), &report(1, Liveness::Unresponsive)));
        assert_eq!(unresponsive.status, WorkerStatus::Unresponsive);
        let alive = written(liveness(Some(&unresponsive), &report(1, Liveness::Alive)));
        assert_eq!(alive.status, WorkerStatus::Idle);
        let offline = written(liveness(Some(&alive), &report(1, Liveness::Offline)));
        assert_eq!(offline.status, WorkerStatus::Offline);
        assert_eq!(
            liveness(Some(&offline), &report(1, Liveness::Alive)),
            Outcome::Unchanged
        );
    }

    #[test]
    fn a_terminating_worker_reported_lost_goes_offline() {
        let record = written(terminating(Some(&ready_record(1)), "w1", 1, Some("deploy")).unwrap());
        let report = LivenessReport {
            worker_id: record.worker_id.clone(),
            incarnation: 1,
            liveness: Some(Liveness::Lost),
            reported_status: None,
        };
        let ended = written(liveness(Some(&record), &report));
        assert_eq!(ended.status, WorkerStatus::Offline);
        assert_eq!(ended.terminating_reason.as_deref(), Some("deploy"));
        assert!(ended.runs.is_empty());
    }
}
