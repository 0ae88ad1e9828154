//! Every change to a run record, as pure functions (DESIGN §6.2–6.4).
//!
//! The run actor applies them under compare-and-set; these functions decide what the next
//! record is and nothing else, so the rules are tested here without NATS.

use drover_protocol::{
    Attempt, ErrorCode, FailureReason, Incarnation, RunError, RunRecord, RunStatus, Timestamp,
    Transition, WorkerId,
};
use serde_json::{json, Value};

/// A directive refused, with its wire code.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The `v1.error` code.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
    /// Structured context.
    pub details: Value,
}

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

/// ASSIGNED → PENDING when the slot could not be claimed: the attempt never reached a worker.
pub fn unassign(record: &RunRecord, now: Timestamp, reason: &str) -> RunRecord {
    let mut next = record.clone();
    next.worker_id = None;
    next.incarnation = None;
    next.assigned_at = None;
    push(&mut next, RunStatus::Pending, now, Some(reason.to_owned()));
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
) -> Result<(), Rejection> {
    let stale = |why: String| Rejection {
        code: ErrorCode::StaleAttempt,
        message: format!(
            "attempt {attempt} of run {} is not current: {why}",
            record.run_id
        ),
        details: json!({
            "runID": record.run_id,
            "attempt": attempt,
            "currentAttempt": record.attempt,
            "status": record.status,
        }),
    };
    if !matches!(record.status, RunStatus::Assigned | RunStatus::Running) {
        return Err(stale(format!("the run is {}", record.status)));
    }
    if record.attempt != attempt {
        return Err(stale(format!("the current attempt is {}", record.attempt)));
    }
    if record.worker_id.as_ref() != Some(worker) {
        return Err(stale("the run is assigned to another worker".to_owned()));
    }
    if current_incarnation.is_some() && record.incarnation != current_incarnation {
        return Err(stale(
            "it was assigned to an earlier incarnation of this worker".to_owned(),
        ));
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

/// Cancelled by request (or because its parent was).
pub fn cancel(record: &RunRecord, reason: &str, now: Timestamp) -> RunRecord {
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
    next
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
    use drover_protocol::{Conditions, RetryBackoff, RoutineId, RunId};

    fn pending(max_retries: u32) -> RunRecord {
        let now = Timestamp::from_millis(1_000_000);
        RunRecord {
            run_id: RunId::generate(),
            routine_id: RoutineId::parse("r").unwrap(),
            status: RunStatus::Pending,
            params: Value::Null,
            env: Default::default(),
            conditions: Conditions::default(),
            max_wait_time_ms: Some(100),
            max_exec_time_ms: Some(50),
            max_retries,
            retry_backoff: Some(RetryBackoff {
                initial_ms: 10,
                multiplier: 3.0,
                max_ms: 50,
            }),
            idempotency_key: None,
            local_run_id: None,
            parent_run_id: None,
            requested_by: None,
            attempt: 0,
            retries: 0,
            reassignments: 0,
            worker_id: None,
            incarnation: None,
            created_at: now,
            assigned_at: None,
            started_at: None,
            ended_at: None,
            not_before: None,
            transitions: vec![],
            result: None,
            error: None,
            failure_reason: None,
            open_children: vec![],
            trace_id: None,
            traceparent: None,
            tracestate: None,
            queue_seq: None,
        }
    }

    fn w(id: &str) -> WorkerId {
        WorkerId::parse(id).unwrap()
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + ms)
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
        for (worker, attempt, incarnation) in [("a", 2, 3), ("b", 1, 3), ("a", 1, 4)] {
            let error =
                check_directive(&assigned, &w(worker), attempt, Some(incarnation)).unwrap_err();
            assert_eq!(error.code, ErrorCode::StaleAttempt);
        }
        let done = succeed(&start(&assigned, at(2)).unwrap(), None, at(3));
        assert_eq!(
            check_directive(&done, &w("a"), 1, Some(3))
                .unwrap_err()
                .code,
            ErrorCode::StaleAttempt
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
        let error = RunError::new("Boom", "boom");
        let mut delays = vec![];
        for attempt in 1..=3 {
            record = start(&assign(&record, &w("a"), 1, at(0)), at(0)).unwrap();
            record = fail_attempt(&record, AttemptFailure::Error(error.clone()), at(100));
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
    fn final_failure_reasons() {
        let running =
            |retries| start(&assign(&pending(retries), &w("a"), 1, at(0)), at(0)).unwrap();
        let plain = fail_attempt(
            &running(0),
            AttemptFailure::Error(RunError::new("E", "e")),
            at(1),
        );
        assert_eq!(plain.failure_reason, Some(FailureReason::Error));
        let mut fatal = RunError::new("E", "e");
        fatal.retryable = Some(false);
        let fatal = fail_attempt(&running(3), AttemptFailure::Error(fatal), at(1));
        assert_eq!(fatal.status, RunStatus::Failed);
        assert_eq!(fatal.failure_reason, Some(FailureReason::Error));
        let timeout = fail_attempt(&running(0), AttemptFailure::MaxExec, at(1));
        assert_eq!(timeout.failure_reason, Some(FailureReason::MaxExecExceeded));
        let retried = fail_attempt(&running(1), AttemptFailure::MaxExec, at(1));
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
        let assigned = assign(&pending(0), &w("a"), 1, at(1));
        assert!(expire_wait(&assigned, at(100)).is_none());
        let retried = reassign(&assigned, "lost", 5, at(2));
        assert!(expire_wait(&retried, at(100)).is_none());
    }

    #[test]
    fn transitions_are_recorded_and_bounded() {
        let mut record = pending(0);
        for _ in 0..100 {
            record = reassign(&assign(&record, &w("a"), 1, at(0)), "lost", 1000, at(1));
        }
        assert_eq!(record.transitions.len(), MAX_TRANSITIONS);
        let cancelled = cancel(&record, "user asked", at(2));
        assert_eq!(cancelled.status, RunStatus::Cancelled);
        assert_eq!(cancelled.failure_reason, Some(FailureReason::Cancelled));
        assert_eq!(
            cancelled.transitions.last().unwrap().status,
            RunStatus::Cancelled
        );
    }
}
