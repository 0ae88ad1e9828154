//! Ending attempts and runs (DESIGN §6.3 items 4 and 5). An attempt is taken back when its
//! worker is lost, gone or silent, and fails on the worker's error or at `maxExecTimeMs`;
//! a run is cancelled, or expires at `maxWaitTimeMs`. Then the run is placed again, waits
//! out its backoff, or ends, and the runs that wait on it hear of it.

use std::convert::Infallible;

use async_nats::jetstream::{self, AckKind};
use drover_protocol::{RunId, RunRecord, Timestamp};
use tracing::{debug, warn};

use super::lease::{next_step, Step};
use super::outbox::Letter;
use super::{Actor, Event, STORE_RETRY};
use crate::engine::dispatcher::Gone;
use crate::error::CancelError;
use crate::metrics;
use crate::store::{Decision, MutateError, Mutated, StoreError};
use crate::transitions::{self, held, AttemptFailure};

/// A message for another run's actor, owed when a run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Relay {
    /// Tell the parent that this child ended.
    ChildEnded {
        /// The parent run.
        parent: RunId,
    },
    /// Cancel an unfinished child of a cancelled run.
    Cancel {
        /// The child run.
        child: RunId,
        /// Why, for the child's record.
        reason: String,
    },
}

/// Whom a run that ended as `record` says tells (DESIGN §6.5): its parent, and, when it was
/// cancelled, its unfinished children.
pub(super) fn relays_on_end(record: &RunRecord) -> Vec<Relay> {
    let mut relays: Vec<Relay> = record
        .parent_run_id
        .iter()
        .map(|parent| Relay::ChildEnded {
            parent: parent.clone(),
        })
        .collect();
    if record.status == drover_protocol::RunStatus::Cancelled {
        relays.extend(record.open_children.iter().map(|child| Relay::Cancel {
            child: child.clone(),
            reason: format!("parent run {} was cancelled", record.run_id),
        }));
    }
    relays
}

/// True when the attempt in `record` is the one placed on the registration that is gone.
/// True when the write from `before` to `after` ends the attempt `before` holds on a worker.
pub(super) fn ended(before: &RunRecord, after: &RunRecord) -> bool {
    held(before) && !(held(after) && after.attempt == before.attempt)
}

pub(super) fn held_by(record: &RunRecord, gone: &Gone) -> bool {
    held(record)
        && record.worker_id.as_ref() == Some(&gone.worker)
        && record.incarnation == Some(gone.incarnation)
}

/// Takes the attempt back from its worker, to be placed again within the reassignment
/// bound (then FAILED with `worker_lost`).
pub(super) fn reclaim(
    record: &RunRecord,
    why: &str,
    max_reassignments: u32,
    now: Timestamp,
) -> Decision {
    if !held(record) {
        return Decision::Keep;
    }
    Decision::write(transitions::reassign(record, why, max_reassignments, now))
}

/// Fails the attempt on its worker: retried after its backoff while retries remain.
pub(super) fn fail(record: &RunRecord, failure: &AttemptFailure, now: Timestamp) -> Decision {
    if !held(record) {
        return Decision::Keep;
    }
    Decision::write(transitions::fail_attempt(record, failure.clone(), now))
}

impl Actor {
    /// Takes the run away from its worker (lost, gone, or never acknowledged) and places it
    /// again, within the reassignment bound.
    pub(super) async fn take_back(&mut self, why: &str, cancel_worker: bool) {
        let now = Timestamp::now();
        let bound = self.engine.settings.max_reassignments;
        let cancel = cancel_worker.then_some(why);
        match self
            .end_attempt(|record| reclaim(record, why, bound, now), cancel)
            .await
        {
            Ok(true) => ::metrics::counter!(metrics::REASSIGNMENTS).increment(1),
            Ok(false) => {}
            Err(error) => {
                warn!(%error, "could not take the run back, will retry");
                self.retry_later();
            }
        }
    }

    /// Fails the current attempt (a timeout): retry or end.
    pub(super) async fn fail_current(&mut self, failure: AttemptFailure, cancel: Option<&str>) {
        let now = Timestamp::now();
        if let Err(error) = self
            .end_attempt(|record| fail(record, &failure, now), cancel)
            .await
        {
            warn!(%error, "could not record a failed attempt, will retry");
            self.retry_later();
        }
    }

    /// Writes what `decide` makes of the attempt and goes on from there. True when it
    /// wrote.
    async fn end_attempt(
        &mut self,
        mut decide: impl FnMut(&RunRecord) -> Decision,
        cancel: Option<&str>,
    ) -> Result<bool, StoreError> {
        let result = self
            .mutate(|record| Ok::<_, Infallible>(decide(record)))
            .await;
        match result {
            Ok(mutated) if mutated.written => {
                self.attempt_over(&mutated, cancel).await;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(error) => error.store_error().map_or(Ok(false), Err),
        }
    }

    /// The attempt of `mutated.before` is over: tell its worker to stop (with `cancel`),
    /// free its slot, and go on from `mutated.after`.
    pub(super) async fn attempt_over(&mut self, mutated: &Mutated, cancel: Option<&str>) {
        if held(&mutated.before) {
            if let Some(reason) = cancel {
                self.send(Letter::cancel(&mutated.before, reason)).await;
            }
            self.free_slot(&mutated.before);
        }
        self.after_attempt(&mutated.after).await;
    }

    /// After an attempt ended: place again, wait out a backoff, or finish.
    pub(super) async fn after_attempt(&mut self, record: &RunRecord) {
        self.deadlines.clear_attempt();
        match next_step(record, Timestamp::now()) {
            Step::Ended => self.ended(record).await,
            Step::Defer(wait) if self.in_hand() => self.defer(wait).await,
            Step::Place if self.in_hand() => self.request_placement(),
            Step::Defer(_) | Step::Place | Step::Held => {}
        }
    }

    /// The run reached a terminal state: clean up and tell whoever waits on it.
    pub(super) async fn ended(&mut self, record: &RunRecord) {
        debug!(run = %self.run, status = %record.status, attempt = record.attempt, reason = ?record.failure_reason, "run ended");
        self.engine.dispatcher.withdraw(&self.run);
        self.placement = None;
        self.finish_lease().await;
        for relay in relays_on_end(record) {
            match relay {
                Relay::ChildEnded { parent } => self
                    .engine
                    .deliver(parent, Event::ChildEnded(Box::new(record.clone()))),
                Relay::Cancel { child, reason } => self.engine.deliver(
                    child,
                    Event::Cancel {
                        reason,
                        reply: None,
                    },
                ),
            }
        }
    }

    pub(super) async fn on_max_wait(&mut self, message: jetstream::Message) {
        let now = Timestamp::now();
        let expired = self
            .mutate(|record| {
                Ok::<_, Infallible>(Decision::from(transitions::expire_wait(record, now)))
            })
            .await;
        match expired.map_err(MutateError::store_error) {
            Ok(mutated) if mutated.written => {
                debug!(run = %self.run, "not placed within maxWaitTimeMs");
                self.ended(&mutated.after).await;
            }
            Ok(_) | Err(None) => {}
            Err(Some(error)) => {
                warn!(%error, "could not expire the run");
                let _ = message.ack_with(AckKind::Nak(Some(STORE_RETRY))).await;
                return;
            }
        }
        if let Err(error) = message.ack().await {
            debug!(%error, "could not acknowledge a timer");
        }
    }

    pub(super) async fn on_cancel(&mut self, reason: &str) -> Result<RunRecord, CancelError> {
        let now = Timestamp::now();
        let cancelled = self
            .mutate(|record| {
                Ok::<_, Infallible>(Decision::from(transitions::cancel(record, reason, now)))
            })
            .await;
        let mutated = match cancelled.map_err(MutateError::store_error) {
            Ok(mutated) => mutated,
            Err(None) => return Err(CancelError::UnknownRun(self.run.clone())),
            Err(Some(error)) => return Err(error.into()),
        };
        if mutated.written {
            debug!(run = %self.run, reason, "run cancelled");
            self.attempt_over(&mutated, Some(reason)).await;
        }
        Ok(mutated.after)
    }

    pub(super) async fn on_worker_gone(&mut self, gone: Gone) {
        if self.reserved.as_ref() == Some(&gone.worker) {
            self.reserved = None;
        }
        let Ok(Some(stored)) = self.load().await else {
            return;
        };
        if held_by(&stored.record, &gone) {
            debug!(run = %self.run, worker = %gone.worker, reason = %gone.reason, "worker gone, taking the run back");
            self.take_back(&gone.reason, false).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{at, pending, w, written};
    use drover_protocol::{FailureReason, RunError, RunStatus};

    fn running(max_retries: u32) -> RunRecord {
        transitions::start(
            &transitions::assign(&pending(max_retries), &w("a"), 3, at(0)),
            at(1),
        )
        .expect("assigned")
    }

    fn gone(worker: &str, incarnation: u64) -> Gone {
        Gone {
            run: RunId::generate(),
            worker: w(worker),
            incarnation,
            reason: format!("worker {worker} is LOST"),
        }
    }

    #[test]
    fn an_attempt_ends_when_the_write_leaves_it_no_longer_held() {
        let assigned = transitions::assign(&pending(1), &w("a"), 3, at(0));
        let started = running(1);
        assert!(!ended(&assigned, &started), "starting keeps the attempt");
        assert!(!ended(&pending(1), &assigned), "placing starts one");
        let retry = transitions::fail_attempt(
            &started,
            AttemptFailure::Error(drover_protocol::RunError::new("E", "e")),
            at(5),
        );
        assert!(ended(&started, &retry), "a failed attempt back to PENDING");
        let reassigned = transitions::assign(&retry, &w("b"), 1, at(20));
        assert!(!ended(&retry, &reassigned));
        let lost = transitions::reassign(&reassigned, "worker b is LOST", 3, at(30));
        assert!(ended(&reassigned, &lost), "taken back from a lost worker");
    }

    #[test]
    fn a_lost_registration_takes_back_only_its_own_attempt() {
        let record = running(0);
        assert!(held_by(&record, &gone("a", 3)));
        assert!(!held_by(&record, &gone("a", 2)), "an older registration");
        assert!(!held_by(&record, &gone("b", 3)), "another worker");
        assert!(!held_by(&pending(0), &gone("a", 3)), "not on a worker");
    }

    #[test]
    fn a_reclaimed_attempt_is_placed_again_without_spending_a_retry() {
        let back = written(reclaim(&running(2), "worker a is LOST", 3, at(5)));
        assert_eq!(back.status, RunStatus::Pending);
        assert_eq!(back.reassignments, 1);
        assert_eq!(back.retries, 0);
        assert_eq!(back.not_before, None, "no backoff for a reassignment");
        assert_eq!(
            back.transitions.last().and_then(|t| t.reason.as_deref()),
            Some("worker a is LOST")
        );
    }

    #[test]
    fn reassignments_past_the_bound_fail_the_run_as_worker_lost() {
        let mut record = running(5);
        record.reassignments = 2;
        let failed = written(reclaim(&record, "assignment not acknowledged", 2, at(9)));
        assert_eq!(failed.status, RunStatus::Failed);
        assert_eq!(failed.failure_reason, Some(FailureReason::WorkerLost));
        assert_eq!(failed.ended_at, Some(at(9)));
        assert_eq!(
            failed.error.map(|error| error.message),
            Some(
                "reassigned 2 times, over the bound of 2; last: assignment not acknowledged"
                    .to_owned()
            )
        );
    }

    #[test]
    fn nothing_to_end_once_the_attempt_is_off_its_worker() {
        let done = transitions::succeed(&running(0), None, at(3));
        assert_eq!(reclaim(&done, "lost", 3, at(4)), Decision::Keep);
        assert_eq!(
            fail(&pending(0), &AttemptFailure::MaxExec, at(4)),
            Decision::Keep
        );
    }

    #[test]
    fn a_timed_out_attempt_is_retried_after_its_backoff() {
        let retried = written(fail(&running(1), &AttemptFailure::MaxExec, at(60)));
        assert_eq!(retried.status, RunStatus::Pending);
        assert_eq!(retried.retries, 1);
        assert_eq!(
            retried.not_before,
            Some(at(70)),
            "initialMs 10 after the failure"
        );
        let last = written(fail(&running(0), &AttemptFailure::MaxExec, at(60)));
        assert_eq!(last.failure_reason, Some(FailureReason::MaxExecExceeded));
    }

    #[test]
    fn a_non_retryable_error_ends_the_run_at_once() {
        let mut error = RunError::new("Fatal", "no");
        error.retryable = Some(false);
        let failed = written(fail(&running(3), &AttemptFailure::Error(error), at(2)));
        assert_eq!(failed.status, RunStatus::Failed);
        assert_eq!(failed.failure_reason, Some(FailureReason::Error));
        assert_eq!(failed.retries, 0);
    }

    #[test]
    fn a_child_that_ends_tells_its_parent() {
        let parent = RunId::generate();
        let mut child = running(0);
        child.parent_run_id = Some(parent.clone());
        let done = transitions::succeed(&child, None, at(3));
        assert_eq!(relays_on_end(&done), [Relay::ChildEnded { parent }]);
        assert!(relays_on_end(&transitions::succeed(&running(0), None, at(3))).is_empty());
    }

    #[test]
    fn a_cancelled_run_cancels_its_unfinished_children() {
        let mut record = running(0);
        let children = [RunId::generate(), RunId::generate()];
        record.open_children = children.to_vec();
        let cancelled = transitions::cancel(&record, "stop", at(3)).expect("running");
        let reason = format!("parent run {} was cancelled", record.run_id);
        assert_eq!(
            relays_on_end(&cancelled),
            children
                .iter()
                .map(|child| Relay::Cancel {
                    child: child.clone(),
                    reason: reason.clone(),
                })
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_failed_run_leaves_its_children_running() {
        let mut record = running(0);
        record.open_children = vec![RunId::generate()];
        let failed = written(fail(
            &record,
            &AttemptFailure::Error(RunError::new("E", "e")),
            at(3),
        ));
        assert_eq!(failed.status, RunStatus::Failed);
        assert!(relays_on_end(&failed).is_empty());
    }
}
