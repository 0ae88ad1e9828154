//! A worker's `starting` and `completed` (DESIGN §6.3 item 2, §6.4): fenced by attempt,
//! worker and incarnation, applied under compare-and-set, then settled: acknowledged,
//! rejected with a `v1.error` to the worker, or delivered again later.

use async_nats::jetstream;
use drover_protocol::{
    Attempt, Completed, Incarnation, Outcome, RunError, RunRecord, Starting, Timestamp, WorkerId,
};
use drover_service_kit::WireError;
use drover_service_kit::{settle, Settlement};
use tracing::{debug, trace};

use super::{Actor, Event};
use crate::error::{DirectiveError, Error};
use crate::metrics;
use crate::store::{Decision, MutateError, StoreError};
use crate::transitions::{self, AttemptFailure, StaleAttempt};

/// How long a `starting` waits for its run's `completed` to arrive before RUNNING is written
/// alone (see [`Actor::await_completion`]).
const COALESCE_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// A `starting` or `completed` from a worker, read from `DROVER_DIRECTIVES`.
pub enum DirectiveBody {
    /// The worker started an attempt.
    Starting(Starting),
    /// An attempt ended.
    Completed(Completed),
}

impl DirectiveBody {
    /// The attempt it is about.
    pub fn attempt(&self) -> Attempt {
        match self {
            Self::Starting(starting) => starting.attempt,
            Self::Completed(completed) => completed.attempt,
        }
    }
}

/// A completion taken from the mailbox: who sent it, what it says, the stored directive.
type QueuedCompletion = (WorkerId, Completed, jetstream::Message);

/// Why a directive was not applied.
enum NotApplied {
    /// Refused for good.
    Rejected(DirectiveError),
    /// The store did not answer: deliver it again later.
    Later(StoreError),
}

/// The record after the attempt's completion.
pub(super) fn outcome(record: &RunRecord, completed: &Completed, now: Timestamp) -> RunRecord {
    match completed.outcome {
        Outcome::Succeeded => transitions::succeed(record, completed.result.clone(), now),
        Outcome::Failed => {
            let error = completed.error.clone().unwrap_or_else(|| RunError {
                message: "the worker reported a failure without an error".to_owned(),
                kind: None,
                retryable: None,
            });
            transitions::fail_attempt(record, AttemptFailure::Error(error), now)
        }
    }
}

/// What a directive from `worker` about `attempt` does to `record`, given the worker's
/// current `incarnation`. `completion` is the same attempt's completion, queued right
/// behind a `starting`: short runs report both back to back, and both are then stored in
/// one write, with RUNNING announced on the way.
pub(super) fn decide(
    record: &RunRecord,
    worker: &WorkerId,
    body: &DirectiveBody,
    incarnation: Option<Incarnation>,
    completion: Option<&Completed>,
    now: Timestamp,
) -> Result<Decision, StaleAttempt> {
    transitions::check_directive(record, worker, body.attempt(), incarnation)?;
    Ok(match body {
        DirectiveBody::Starting(_) => match (transitions::start(record, now), completion) {
            // A repeated `starting`.
            (None, _) => Decision::Keep,
            (Some(started), Some(completed)) => Decision::WriteThrough {
                next: Box::new(outcome(&started, completed, now)),
                via: Box::new(started),
            },
            (Some(started), None) => Decision::write(started),
        },
        DirectiveBody::Completed(completed) => Decision::write(outcome(record, completed, now)),
    })
}

impl Actor {
    pub(super) async fn on_directive(
        &mut self,
        worker: WorkerId,
        body: DirectiveBody,
        message: jetstream::Message,
    ) {
        let settlement = match self.apply_directive(&worker, &body).await {
            Ok(()) => Settlement::Applied,
            Err(NotApplied::Rejected(error)) => {
                let error = Error::from(error).to_wire(message.subject.as_str());
                debug!(run = %self.run, worker = %worker, attempt = body.attempt(), code = %error.code, "directive rejected");
                Settlement::Rejected {
                    error,
                    worker: Some(worker),
                }
            }
            Err(NotApplied::Later(error)) => Settlement::RetryLater {
                reason: error.to_string(),
            },
        };
        settle(
            &self.engine.nats,
            &message,
            settlement,
            metrics::DIRECTIVES_REJECTED,
        )
        .await;
    }

    async fn apply_directive(
        &mut self,
        worker: &WorkerId,
        body: &DirectiveBody,
    ) -> Result<(), NotApplied> {
        // From the watch's cache rather than the dispatcher's view, which follows it a
        // moment later: a completion from an incarnation that has just registered again
        // must be stale.
        let incarnation = self
            .engine
            .workers
            .get(worker.as_str())
            .map(|entry| entry.value.incarnation);
        let completion = match body {
            DirectiveBody::Starting(_) => match self.take_next_completion(worker, body.attempt()) {
                Some(completion) => Some(completion),
                None => self.await_completion(worker, body.attempt()).await,
            },
            DirectiveBody::Completed(_) => None,
        };
        let now = Timestamp::now();
        let queued = completion.as_ref().map(|(_, completed, _)| completed);
        let result = self
            .mutate(|record| decide(record, worker, body, incarnation, queued, now))
            .await;
        let mut mutated = match result {
            Ok(mutated) => mutated,
            Err(error) => {
                self.put_back(completion);
                return Err(match error {
                    MutateError::Refused(stale) => NotApplied::Rejected(stale.into()),
                    MutateError::Missing => {
                        NotApplied::Rejected(DirectiveError::UnknownRun(self.run.clone()))
                    }
                    MutateError::Store(error) => NotApplied::Later(error),
                });
            }
        };
        match (mutated.via.take(), completion) {
            (Some(started), Some((_, _, message))) => {
                trace!("starting and completion stored together");
                ::metrics::counter!(metrics::DIRECTIVES_COALESCED).increment(1);
                self.tell_parent_started(&started);
                settle(
                    &self.engine.nats,
                    &message,
                    Settlement::Applied,
                    metrics::DIRECTIVES_REJECTED,
                )
                .await;
                self.attempt_over(&mutated, None).await;
            }
            (_, completion) => {
                self.put_back(completion);
                if mutated.written {
                    match body {
                        DirectiveBody::Starting(_) => self.after_started(&mutated.after),
                        DirectiveBody::Completed(_) => self.attempt_over(&mutated, None).await,
                    }
                }
            }
        }
        Ok(())
    }

    /// The attempt is RUNNING: time it, and tell the parent.
    fn after_started(&mut self, next: &RunRecord) {
        if self.in_hand() {
            self.arm_attempt(next);
        }
        self.tell_parent_started(next);
    }

    fn tell_parent_started(&self, child: &RunRecord) {
        if let Some(parent) = &child.parent_run_id {
            self.engine
                .deliver(parent.clone(), Event::ChildStarted(Box::new(child.clone())));
        }
    }

    /// The completion of `worker`'s `attempt`, when it is the next event in the mailbox.
    /// Only the very next event counts, so that nothing queued before the completion (a
    /// cancel, a timeout, a lost worker) is overtaken.
    fn take_next_completion(
        &mut self,
        worker: &WorkerId,
        attempt: Attempt,
    ) -> Option<QueuedCompletion> {
        while let Ok(event) = self.receiver.try_recv() {
            self.stash.push_back(event);
        }
        // The queue message of a run placed at intake may come in between: it only joins.
        while let Some(Event::Lease(_)) = self.stash.front() {
            let Some(Event::Lease(message)) = self.stash.pop_front() else {
                break;
            };
            if let Some(message) = self.join_lease(message) {
                self.stash.push_front(Event::Lease(message));
                break;
            }
        }
        let next_is_it = matches!(
            self.stash.front(),
            Some(Event::Directive {
                worker: sender,
                body: DirectiveBody::Completed(completed),
                ..
            }) if sender == worker && completed.attempt == attempt
        );
        if !next_is_it {
            return None;
        }
        match self.stash.pop_front() {
            Some(Event::Directive {
                worker,
                body: DirectiveBody::Completed(completed),
                message,
            }) => Some((worker, completed, message)),
            _ => None,
        }
    }

    /// The completion of `worker`'s `attempt` if it is the next event to arrive within
    /// [`COALESCE_WINDOW`]: a short run's `completed` follows its `starting` closely, and
    /// then RUNNING and the outcome take one write instead of two. A longer run shows
    /// RUNNING that much later; nothing else waits.
    async fn await_completion(
        &mut self,
        worker: &WorkerId,
        attempt: Attempt,
    ) -> Option<QueuedCompletion> {
        if !self.stash.is_empty() {
            // Something else came first: it must not be overtaken.
            return None;
        }
        let deadline = tokio::time::Instant::now() + COALESCE_WINDOW;
        loop {
            let next = tokio::time::timeout_at(deadline, self.receiver.recv()).await;
            let Ok(Some(event)) = next else {
                return None;
            };
            match event {
                // The queue message of a run placed at intake only joins: wait on.
                Event::Lease(message) => match self.join_lease(message) {
                    None => continue,
                    Some(message) => self.stash.push_back(Event::Lease(message)),
                },
                event => self.stash.push_back(event),
            }
            return self.take_next_completion(worker, attempt);
        }
    }

    /// Returns an unused completion to the front of the mailbox, to be handled on its own.
    fn put_back(&mut self, completion: Option<QueuedCompletion>) {
        if let Some((worker, completed, message)) = completion {
            self.stash.push_front(Event::Directive {
                worker,
                body: DirectiveBody::Completed(completed),
                message,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{at, pending, w, written};
    use crate::transitions::Staleness;
    use drover_protocol::{FailureReason, RunId, RunStatus};
    use serde_json::json;

    fn assigned(max_retries: u32) -> RunRecord {
        transitions::assign(&pending(max_retries), &w("a"), 3, at(0))
    }

    fn starting(record: &RunRecord) -> DirectiveBody {
        DirectiveBody::Starting(Starting {
            run_id: record.run_id.clone(),
            attempt: record.attempt,
        })
    }

    fn completed(record: &RunRecord, outcome: Outcome) -> Completed {
        Completed {
            run_id: record.run_id.clone(),
            attempt: record.attempt,
            outcome,
            result: (outcome == Outcome::Succeeded).then(|| json!({"ok": true})),
            error: None,
        }
    }

    #[test]
    fn starting_makes_the_attempt_running() {
        let record = assigned(0);
        let decision = decide(&record, &w("a"), &starting(&record), Some(3), None, at(7));
        let running = written(decision.expect("current"));
        assert_eq!(running.status, RunStatus::Running);
        assert_eq!(running.started_at, Some(at(7)));
    }

    #[test]
    fn a_repeated_starting_changes_nothing() {
        let running = transitions::start(&assigned(0), at(1)).expect("assigned");
        let decision = decide(&running, &w("a"), &starting(&running), Some(3), None, at(2));
        assert_eq!(decision, Ok(Decision::Keep));
    }

    #[test]
    fn starting_and_the_completion_behind_it_are_one_write() {
        let record = assigned(0);
        let done = completed(&record, Outcome::Succeeded);
        let decision = decide(
            &record,
            &w("a"),
            &starting(&record),
            Some(3),
            Some(&done),
            at(4),
        );
        let Ok(Decision::WriteThrough { via, next }) = decision else {
            panic!("expected one write through RUNNING, got {decision:?}");
        };
        assert_eq!(via.status, RunStatus::Running);
        assert_eq!(next.status, RunStatus::Succeeded);
        assert_eq!(next.started_at, Some(at(4)));
        assert_eq!(next.result, Some(json!({"ok": true})));
    }

    #[test]
    fn a_success_ends_the_run_with_its_result() {
        let running = transitions::start(&assigned(2), at(1)).expect("assigned");
        let body = DirectiveBody::Completed(completed(&running, Outcome::Succeeded));
        let done =
            written(decide(&running, &w("a"), &body, Some(3), None, at(9)).expect("current"));
        assert_eq!(done.status, RunStatus::Succeeded);
        assert_eq!(done.ended_at, Some(at(9)));
        assert_eq!(done.result, Some(json!({"ok": true})));
    }

    #[test]
    fn a_failure_with_retries_left_waits_for_its_backoff() {
        let mut running = transitions::start(&assigned(2), at(1)).expect("assigned");
        running.retries = 1;
        let mut failure = completed(&running, Outcome::Failed);
        failure.error = Some(RunError::new("Boom", "boom"));
        let body = DirectiveBody::Completed(failure);
        let retry =
            written(decide(&running, &w("a"), &body, Some(3), None, at(100)).expect("current"));
        assert_eq!(retry.status, RunStatus::Pending);
        assert_eq!(retry.retries, 2);
        assert_eq!(
            retry.not_before,
            Some(at(130)),
            "10 ms × 3 for the second retry"
        );
        assert_eq!(
            retry.error.map(|error| error.message),
            Some("boom".to_owned())
        );
    }

    #[test]
    fn a_failure_without_an_error_is_given_one() {
        let running = transitions::start(&assigned(0), at(1)).expect("assigned");
        let body = DirectiveBody::Completed(completed(&running, Outcome::Failed));
        let failed = written(decide(&running, &w("a"), &body, None, None, at(5)).expect("current"));
        assert_eq!(failed.failure_reason, Some(FailureReason::Error));
        assert_eq!(
            failed.error.map(|error| error.message),
            Some("the worker reported a failure without an error".to_owned())
        );
    }

    #[test]
    fn a_completion_without_starting_still_ends_the_attempt() {
        let record = assigned(0);
        let body = DirectiveBody::Completed(completed(&record, Outcome::Succeeded));
        let done = written(decide(&record, &w("a"), &body, Some(3), None, at(2)).expect("current"));
        assert_eq!(done.status, RunStatus::Succeeded);
    }

    #[test]
    fn stale_directives_are_refused_with_the_reason() {
        let record = assigned(0);
        let why = |worker: &str, body: &DirectiveBody, incarnation| {
            decide(&record, &w(worker), body, Some(incarnation), None, at(1))
                .expect_err("stale")
                .why
        };
        let mut old = starting(&record);
        if let DirectiveBody::Starting(starting) = &mut old {
            starting.attempt = 0;
        }
        assert_eq!(why("a", &old, 3), Staleness::OtherAttempt(1));
        assert_eq!(why("b", &starting(&record), 3), Staleness::OtherWorker);
        assert_eq!(
            why("a", &starting(&record), 4),
            Staleness::EarlierIncarnation
        );
        let done = transitions::succeed(&record, None, at(2));
        let late = decide(&done, &w("a"), &starting(&record), Some(3), None, at(3));
        assert_eq!(
            late.expect_err("ended").why,
            Staleness::NotHeld(RunStatus::Succeeded)
        );
    }

    #[test]
    fn the_attempt_of_a_directive_is_its_payloads() {
        let body = DirectiveBody::Starting(Starting {
            run_id: RunId::generate(),
            attempt: 4,
        });
        assert_eq!(body.attempt(), 4);
    }
}
