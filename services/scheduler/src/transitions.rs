//! Every change to a run record, as pure functions (DESIGN §6.2–6.4).
//!
//! The run actor applies them under compare-and-set; these functions decide what the next
//! record is and nothing else, so the rules are tested here without NATS.

use std::fmt;

use drover_protocol::{
    Attempt, FailureReason, Incarnation, RunError, RunId, RunRecord, RunStatus, Timestamp,
    Transition, WorkerId,
};
use serde_json::Value;

/// A `starting` or `completed` about an attempt that is not the run's current one
/// (DESIGN §6.3 item 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attempt {attempt} of run {run} is not current: {why}")]
pub struct StaleAttempt {
    /// The run.
    pub run: RunId,
    /// The attempt the directive names.
    pub attempt: Attempt,
    /// The run's current attempt.
    pub current_attempt: Attempt,
    /// The run's status.
    pub status: RunStatus,
    /// Why the attempt is not current.
    pub why: Staleness,
}

/// Why a directive's attempt is not current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staleness {
    /// The run is not on a worker.
    NotHeld(RunStatus),
    /// A later attempt has begun.
    OtherAttempt(Attempt),
    /// The attempt belongs to another worker.
    OtherWorker,
    /// The attempt was given to an earlier registration of the worker.
    EarlierIncarnation,
}

impl fmt::Display for Staleness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotHeld(status) => write!(f, "the run is {status}"),
            Self::OtherAttempt(current) => write!(f, "the current attempt is {current}"),
            Self::OtherWorker => f.write_str("the run is assigned to another worker"),
            Self::EarlierIncarnation => {
                f.write_str("it was assigned to an earlier incarnation of this worker")
            }
        }
    }
}

/// True while the run is on a worker: ASSIGNED or RUNNING.
pub fn held(record: &RunRecord) -> bool {
    matches!(record.status, RunStatus::Assigned | RunStatus::Running)
}

/// Why an attempt is taken back when its worker never said `starting` in time.
pub const NOT_ACKNOWLEDGED: &str = "assignment not acknowledged";

/// The most transitions a record keeps; older ones are dropped, the first is kept.
const MAX_TRANSITIONS: usize = 64;

fn push(record: &mut RunRecord, status: RunStatus, now: Timestamp, reason: Option<String>) {
    record.status = status;
    if record.transitions.len() >= MAX_TRANSITIONS {
        record.transitions.remove(1);
    }
    record.transitions.push(Transition {
        status,
        at: now,
        attempt: record.attempt,
        worker_id: record.worker_id.clone(),
        reason,
    });
}

/// PENDING → ASSIGNED on `worker`: a new attempt.
pub fn assign(
    record: &RunRecord,
    worker: &WorkerId,
    incarnation: Incarnation,
    now: Timestamp,
) -> RunRecord {
    let mut next = record.clone();
    next.attempt += 1;
    next.worker_id = Some(worker.clone());
    next.incarnation = Some(incarnation);
    next.assigned_at = Some(now);
    next.started_at = None;
    next.not_before = None;
    push(&mut next, RunStatus::Assigned, now, None);
    next
}

/// Checks that a `starting` or `completed` from `worker` is about the current attempt.
///
/// `current_incarnation` is the worker's incarnation as the registry has it now.
pub fn check_directive(
    record: &RunRecord,
    worker: &WorkerId,
    attempt: Attempt,
    current_incarnation: Option<Incarnation>,
) -> Result<(), StaleAttempt> {
    let stale = |why| StaleAttempt {
        run: record.run_id.clone(),
        attempt,
        current_attempt: record.attempt,
        status: record.status,
        why,
    };
    if !held(record) {
        return Err(stale(Staleness::NotHeld(record.status)));
    }
    if record.attempt != attempt {
        return Err(stale(Staleness::OtherAttempt(record.attempt)));
    }
    if record.worker_id.as_ref() != Some(worker) {
        return Err(stale(Staleness::OtherWorker));
    }
    if current_incarnation.is_some() && record.incarnation != current_incarnation {
        return Err(stale(Staleness::EarlierIncarnation));
    }
    Ok(())
}

/// ASSIGNED → RUNNING. A repeated `starting` leaves the record as it is.
pub fn start(record: &RunRecord, now: Timestamp) -> Option<RunRecord> {
    if record.status != RunStatus::Assigned {
        return None;
    }
    let mut next = record.clone();
    next.started_at = Some(now);
    push(&mut next, RunStatus::Running, now, None);
    Some(next)
}

/// The attempt succeeded.
pub fn succeed(record: &RunRecord, result: Option<Value>, now: Timestamp) -> RunRecord {
    let mut next = record.clone();
    next.result = result;
    next.error = None;
    next.failure_reason = None;
    next.ended_at = Some(now);
    push(&mut next, RunStatus::Succeeded, now, None);
    next
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptFailure {
    /// The routine reported an error.
    Error(RunError),
    /// It ran past `maxExecTimeMs`.
    MaxExec,
}

/// The attempt failed: retry after the backoff if retries remain, else FAILED.
///
/// The final `failureReason`: `max_exec_exceeded` when the last attempt timed out;
/// `error` when the error was not retryable or no retries were allowed; otherwise
/// `retries_exhausted`.
pub fn fail_attempt(record: &RunRecord, failure: AttemptFailure, now: Timestamp) -> RunRecord {
    let mut next = record.clone();
    let (error, retryable, reason) = match failure {
        AttemptFailure::Error(error) => {
            let retryable = error.retryable != Some(false);
            (error, retryable, FailureReason::Error)
        }
        AttemptFailure::MaxExec => (
            RunError {
                message: format!(
                    "attempt {} ran longer than maxExecTimeMs ({} ms)",
                    record.attempt,
                    record.max_exec_time_ms.unwrap_or_default()
                ),
                kind: Some("max_exec_exceeded".to_owned()),
                retryable: Some(true),
            },
            true,
            FailureReason::MaxExecExceeded,
        ),
    };
    next.error = Some(error);
    if retryable && record.retries < record.max_retries {
        next.retries += 1;
        let backoff = record.retry_backoff.unwrap_or_default();
        next.not_before = Some(now.plus_millis(backoff.delay_ms(next.retries)));
        let why = format!("retry {} after {}", next.retries, reason);
        push(&mut next, RunStatus::Pending, now, Some(why));
        return next;
    }
    let final_reason = match reason {
        FailureReason::MaxExecExceeded => FailureReason::MaxExecExceeded,
        _ if !retryable || record.max_retries == 0 => FailureReason::Error,
        _ => FailureReason::RetriesExhausted,
    };
    next.failure_reason = Some(final_reason);
    next.ended_at = Some(now);
    push(
        &mut next,
        RunStatus::Failed,
        now,
        Some(final_reason.to_string()),
    );
    next
}

/// The attempt was taken back (worker lost, gone, or never acknowledged): place it again,
/// unless the reassignment bound is reached.
pub fn reassign(
    record: &RunRecord,
    why: &str,
    max_reassignments: u32,
    now: Timestamp,
) -> RunRecord {
    let mut next = record.clone();
    next.reassignments += 1;
    if next.reassignments > max_reassignments {
        next.failure_reason = Some(FailureReason::WorkerLost);
        next.error = Some(RunError {
            message: format!(
                "reassigned {} times, over the bound of {max_reassignments}; last: {why}",
                next.reassignments - 1
            ),
            kind: Some("worker_lost".to_owned()),
            retryable: None,
        });
        next.ended_at = Some(now);
        push(&mut next, RunStatus::Failed, now, Some(why.to_owned()));
        return next;
    }
    next.not_before = None;
    push(&mut next, RunStatus::Pending, now, Some(why.to_owned()));
    next
}

/// Cancelled by request (or because its parent was). A run that has ended stays as it is.
pub fn cancel(record: &RunRecord, reason: &str, now: Timestamp) -> Option<RunRecord> {
    if record.status.is_terminal() {
        return None;
    }
    let mut next = record.clone();
    next.failure_reason = Some(FailureReason::Cancelled);
    next.error = Some(RunError {
        message: reason.to_owned(),
        kind: Some("cancelled".to_owned()),
        retryable: Some(false),
    });
    next.ended_at = Some(now);
    push(
        &mut next,
        RunStatus::Cancelled,
        now,
        Some(reason.to_owned()),
    );
    Some(next)
}

/// Not placed within `maxWaitTimeMs`. Applies only to a run never assigned.
pub fn expire_wait(record: &RunRecord, now: Timestamp) -> Option<RunRecord> {
    if record.status != RunStatus::Pending || record.attempt != 0 {
        return None;
    }
    let mut next = record.clone();
    next.failure_reason = Some(FailureReason::MaxWaitExceeded);
    next.error = Some(RunError {
        message: format!(
            "not placed within maxWaitTimeMs ({} ms)",
            record.max_wait_time_ms.unwrap_or_default()
        ),
        kind: Some("max_wait_exceeded".to_owned()),
        retryable: None,
    });
    next.ended_at = Some(now);
    push(
        &mut next,
        RunStatus::Failed,
        now,
        Some(FailureReason::MaxWaitExceeded.to_string()),
    );
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{at, pending, w};
    use drover_protocol::RetryBackoff;

    fn running(record: &RunRecord, now: Timestamp) -> RunRecord {
        start(&assign(record, &w("a"), 1, now), now).expect("assigned")
    }

    fn boom() -> AttemptFailure {
        AttemptFailure::Error(RunError::new("Boom", "boom"))
    }

    #[test]
    fn assignment_raises_the_attempt() {
        let assigned = assign(&pending(0), &w("a"), 3, at(1));
        assert_eq!(assigned.status, RunStatus::Assigned);
        assert_eq!(assigned.attempt, 1);
        assert_eq!(assigned.incarnation, Some(3));
        let again = assign(&reassign(&assigned, "lost", 5, at(2)), &w("b"), 1, at(3));
        assert_eq!(again.attempt, 2);
        assert_eq!(again.worker_id, Some(w("b")));
    }

    #[test]
    fn directives_are_fenced_by_attempt_worker_and_incarnation() {
        let assigned = assign(&pending(0), &w("a"), 3, at(1));
        assert!(check_directive(&assigned, &w("a"), 1, Some(3)).is_ok());
        assert!(
            check_directive(&assigned, &w("a"), 1, None).is_ok(),
            "a worker the leader has not seen yet"
        );
        for (worker, attempt, incarnation, why) in [
            ("a", 2, 3, Staleness::OtherAttempt(1)),
            ("b", 1, 3, Staleness::OtherWorker),
            ("a", 1, 4, Staleness::EarlierIncarnation),
        ] {
            let error =
                check_directive(&assigned, &w(worker), attempt, Some(incarnation)).unwrap_err();
            assert_eq!(error.why, why);
            assert_eq!(error.attempt, attempt);
            assert_eq!(error.current_attempt, 1);
        }
        let done = succeed(&start(&assigned, at(2)).unwrap(), None, at(3));
        let error = check_directive(&done, &w("a"), 1, Some(3)).unwrap_err();
        assert_eq!(error.why, Staleness::NotHeld(RunStatus::Succeeded));
        assert_eq!(
            error.to_string(),
            format!(
                "attempt 1 of run {} is not current: the run is SUCCEEDED",
                done.run_id
            )
        );
    }

    #[test]
    fn start_is_idempotent() {
        let running = start(&assign(&pending(0), &w("a"), 1, at(1)), at(2)).unwrap();
        assert_eq!(running.status, RunStatus::Running);
        assert!(start(&running, at(3)).is_none());
    }

    #[test]
    fn failures_retry_with_backoff_then_fail() {
        let mut record = pending(2);
        let mut delays = vec![];
        for attempt in 1..=3 {
            record = running(&record, at(0));
            record = fail_attempt(&record, boom(), at(100));
            assert_eq!(record.attempt, attempt);
            if let Some(not_before) = record.not_before {
                delays.push(not_before.as_millis() - at(100).as_millis());
            }
        }
        assert_eq!(delays, [10, 30]);
        assert_eq!(record.status, RunStatus::Failed);
        assert_eq!(record.failure_reason, Some(FailureReason::RetriesExhausted));
        assert_eq!(record.retries, 2);
    }

    #[test]
    fn backoff_delays_are_capped_at_max_ms() {
        let mut record = pending(5);
        let mut delays = vec![];
        for _ in 0..5 {
            record = fail_attempt(&running(&record, at(0)), boom(), at(0));
            delays.push(record.not_before.expect("retrying").since(at(0)));
        }
        let millis: Vec<u128> = delays.iter().map(|delay| delay.as_millis()).collect();
        assert_eq!(millis, [10, 30, 50, 50, 50], "10 × 3ⁿ, at most 50");
    }

    #[test]
    fn without_a_backoff_the_default_applies() {
        let mut record = pending(2);
        record.retry_backoff = None;
        let first = fail_attempt(&running(&record, at(0)), boom(), at(0));
        let second = fail_attempt(&running(&first, at(0)), boom(), at(0));
        let defaults = RetryBackoff::default();
        assert_eq!(
            first.not_before,
            Some(at(0).plus_millis(defaults.initial_ms))
        );
        assert_eq!(
            second.not_before,
            Some(at(0).plus_millis(defaults.delay_ms(2)))
        );
    }

    #[test]
    fn a_retry_keeps_the_error_and_says_why_in_the_transition() {
        let retried = fail_attempt(&running(&pending(1), at(0)), boom(), at(5));
        assert_eq!(retried.status, RunStatus::Pending);
        assert_eq!(retried.error, Some(RunError::new("Boom", "boom")));
        assert_eq!(retried.failure_reason, None);
        assert_eq!(retried.ended_at, None);
        assert_eq!(
            retried.transitions.last().and_then(|t| t.reason.clone()),
            Some("retry 1 after error".to_owned())
        );
    }

    #[test]
    fn final_failure_reasons() {
        let plain = fail_attempt(&running(&pending(0), at(0)), boom(), at(1));
        assert_eq!(plain.failure_reason, Some(FailureReason::Error));
        assert_eq!(plain.ended_at, Some(at(1)));
        let mut fatal = RunError::new("E", "e");
        fatal.retryable = Some(false);
        let fatal = fail_attempt(
            &running(&pending(3), at(0)),
            AttemptFailure::Error(fatal),
            at(1),
        );
        assert_eq!(fatal.status, RunStatus::Failed);
        assert_eq!(fatal.failure_reason, Some(FailureReason::Error));
        let timeout = fail_attempt(&running(&pending(0), at(0)), AttemptFailure::MaxExec, at(1));
        assert_eq!(timeout.failure_reason, Some(FailureReason::MaxExecExceeded));
        assert_eq!(
            timeout.error.map(|error| error.message),
            Some("attempt 1 ran longer than maxExecTimeMs (50 ms)".to_owned())
        );
        let retried = fail_attempt(&running(&pending(1), at(0)), AttemptFailure::MaxExec, at(1));
        assert_eq!(retried.status, RunStatus::Pending);
    }

    #[test]
    fn reassignments_are_bounded_apart_from_retries() {
        let mut record = pending(0);
        for _ in 0..2 {
            record = reassign(&assign(&record, &w("a"), 1, at(0)), "worker lost", 2, at(1));
            assert_eq!(record.status, RunStatus::Pending);
            assert_eq!(record.retries, 0);
        }
        record = reassign(&assign(&record, &w("a"), 1, at(0)), "worker lost", 2, at(1));
        assert_eq!(record.status, RunStatus::Failed);
        assert_eq!(record.failure_reason, Some(FailureReason::WorkerLost));
    }

    #[test]
    fn wait_expiry_only_before_the_first_assignment() {
        let expired = expire_wait(&pending(0), at(100)).unwrap();
        assert_eq!(expired.failure_reason, Some(FailureReason::MaxWaitExceeded));
        assert_eq!(
            expired.error.map(|error| error.message),
            Some("not placed within maxWaitTimeMs (100 ms)".to_owned())
        );
        let assigned = assign(&pending(0), &w("a"), 1, at(1));
        assert!(expire_wait(&assigned, at(100)).is_none());
        let retried = reassign(&assigned, "lost", 5, at(2));
        assert!(expire_wait(&retried, at(100)).is_none());
    }

    #[test]
    fn cancelling_ends_a_run_once() {
        let cancelled = cancel(&running(&pending(0), at(0)), "user asked", at(2)).unwrap();
        assert_eq!(cancelled.status, RunStatus::Cancelled);
        assert_eq!(cancelled.failure_reason, Some(FailureReason::Cancelled));
        assert_eq!(cancelled.ended_at, Some(at(2)));
        assert!(cancel(&cancelled, "again", at(3)).is_none());
        let done = succeed(&running(&pending(0), at(0)), None, at(1));
        assert!(cancel(&done, "too late", at(2)).is_none());
    }

    #[test]
    fn transitions_are_recorded_and_bounded() {
        let mut record = pending(0);
        for _ in 0..100 {
            record = reassign(&assign(&record, &w("a"), 1, at(0)), "lost", 1000, at(1));
        }
        assert_eq!(record.transitions.len(), MAX_TRANSITIONS);
        let cancelled = cancel(&record, "user asked", at(2)).unwrap();
        assert_eq!(
            cancelled.transitions.last().unwrap().status,
            RunStatus::Cancelled
        );
    }
}
