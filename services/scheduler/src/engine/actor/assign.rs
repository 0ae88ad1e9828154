//! Placing the run: asking the dispatcher for a slot, recording the assignment, claiming the
//! slot at the registry, and sending the assignment (docs/architecture.md, "Placement").

use drover_protocol::{Attempt, Claim, Release, RunRecord, RunStatus, Timestamp, WorkerId};
use tokio::time::Instant;
use tracing::{debug, trace, warn};

use super::outbox::Letter;
use super::Actor;
use crate::engine::dispatcher::Placement;
use crate::engine::registry::RegistryError;
use crate::metrics;
use crate::store::{Decision, MutateError};
use crate::transitions;

/// Pause before asking again after the registry refused a slot.
const CLAIM_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// The run is no longer waiting for a worker (it ended, or is on one already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NotPending(pub(super) RunStatus);

/// The assignment to `placement`: a new attempt, for a run that waits for a worker.
pub(super) fn assign(
    record: &RunRecord,
    placement: &Placement,
    now: Timestamp,
) -> Result<Decision, NotPending> {
    if record.status != RunStatus::Pending {
        return Err(NotPending(record.status));
    }
    Ok(Decision::write(transitions::assign(
        record,
        &placement.worker,
        placement.incarnation,
        now,
    )))
}

/// Undoes assignment `attempt` that never reached its worker (the slot was refused), unless
/// the run has moved on since.
pub(super) fn unassign(record: &RunRecord, attempt: Attempt, now: Timestamp) -> Decision {
    if record.status != RunStatus::Assigned || record.attempt != attempt {
        return Decision::Keep;
    }
    Decision::write(transitions::unassign(record, now, "slot not granted"))
}

impl Actor {
    pub(super) fn request_placement(&mut self) {
        let Some(record) = self.record() else {
            return;
        };
        let receiver =
            self.engine
                .dispatcher
                .request(&self.run, &record.routine_id, &record.conditions);
        self.placement = Some(receiver);
    }

    pub(super) async fn placed(&mut self, placement: Placement) {
        trace!(worker = %placement.worker, "placement granted");
        self.reserved = Some(placement.worker.clone());
        // The record first, then the slot: a leader that dies in between leaves an
        // ASSIGNED record that its successor adopts and, unacknowledged, takes back. The
        // other order could leave a claimed slot that no record points to.
        let now = Timestamp::now();
        let assigned = match self.mutate(|record| assign(record, &placement, now)).await {
            Ok(mutated) => mutated.after,
            Err(MutateError::Refused(NotPending(status))) => {
                // Another writer moved the run: decide again from what it is now.
                debug!(%status, "placed run is no longer pending");
                self.give_back_slot(&placement.worker);
                self.take_in_hand().await;
                return;
            }
            Err(MutateError::Missing) => {
                self.give_back_slot(&placement.worker);
                return;
            }
            Err(MutateError::Store(error)) => {
                warn!(%error, "could not record the assignment");
                self.give_back_slot(&placement.worker);
                self.deadlines.replace = Some(Instant::now() + CLAIM_RETRY);
                return;
            }
        };
        let claim = Claim {
            worker_id: placement.worker.clone(),
            incarnation: placement.incarnation,
            run_id: self.run.clone(),
            attempt: assigned.attempt,
            traceparent: assigned
                .attempt_span(assigned.attempt)
                .map(|span| span.to_string()),
        };
        if let Err(error) = self.engine.registry.claim(&claim).await {
            debug!(worker = %placement.worker, %error, "slot not granted");
            if matches!(error, RegistryError::Unreachable(_)) {
                // The claim may have landed: undo it, harmlessly if it did not.
                self.release_at_registry(&placement.worker, assigned.attempt);
            }
            self.give_back_slot(&placement.worker);
            let now = Timestamp::now();
            match self
                .mutate(|record| {
                    Ok::<_, std::convert::Infallible>(unassign(record, assigned.attempt, now))
                })
                .await
            {
                Ok(mutated) if mutated.written => {
                    self.deadlines.replace = Some(Instant::now() + CLAIM_RETRY);
                }
                _ => self.take_in_hand().await,
            }
            return;
        }
        metrics::assigned(&self.engine.queue_depth, &assigned);
        self.send(Letter::assignment(&assigned)).await;
        self.arm_attempt(&assigned);
        if assigned.attempt == 1 && assigned.max_wait_time_ms.is_some() {
            let intake = self.engine.intake.clone();
            let run = self.run.clone();
            self.engine
                .tasks
                .spawn(async move { intake.cancel_max_wait(&run).await });
        }
        debug!(worker = %placement.worker, attempt = assigned.attempt, "run assigned");
    }

    pub(super) fn give_back_slot(&mut self, worker: &WorkerId) {
        self.engine.dispatcher.release(worker, &self.run);
        if self.reserved.as_ref() == Some(worker) {
            self.reserved = None;
        }
    }

    fn release_at_registry(&self, worker: &WorkerId, attempt: Attempt) {
        let release = self.release(worker, attempt);
        let registry = self.engine.registry.clone();
        self.engine
            .tasks
            .spawn(async move { registry.release(&release).await });
    }

    fn release(&self, worker: &WorkerId, attempt: Attempt) -> Release {
        Release {
            worker_id: worker.clone(),
            run_id: self.run.clone(),
            attempt,
        }
    }

    /// The attempt `record` names is over: free its worker's slot everywhere.
    pub(super) async fn free_slot(&mut self, record: &RunRecord) {
        let Some(worker) = &record.worker_id else {
            return;
        };
        let release = self.release(worker, record.attempt);
        self.engine.registry.release(&release).await;
        self.give_back_slot(worker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{at, pending, w, written};

    fn on(worker: &str, incarnation: u64) -> Placement {
        Placement {
            worker: w(worker),
            incarnation,
        }
    }

    #[test]
    fn a_pending_run_is_assigned_as_a_new_attempt() {
        let next = written(assign(&pending(0), &on("w1", 7), at(5)).expect("pending"));
        assert_eq!(next.status, RunStatus::Assigned);
        assert_eq!(next.attempt, 1);
        assert_eq!(next.worker_id, Some(w("w1")));
        assert_eq!(next.incarnation, Some(7));
        assert_eq!(next.assigned_at, Some(at(5)));
    }

    #[test]
    fn only_a_pending_run_is_assigned() {
        let assigned = transitions::assign(&pending(0), &w("w1"), 1, at(1));
        assert_eq!(
            assign(&assigned, &on("w2", 1), at(2)),
            Err(NotPending(RunStatus::Assigned))
        );
    }

    #[test]
    fn a_refused_slot_undoes_the_assignment_without_spending_a_reassignment() {
        let assigned = transitions::assign(&pending(0), &w("w1"), 1, at(1));
        let back = written(unassign(&assigned, 1, at(2)));
        assert_eq!(back.status, RunStatus::Pending);
        assert_eq!(back.worker_id, None);
        assert_eq!(back.reassignments, 0);
        assert_eq!(back.retries, 0);
    }

    #[test]
    fn a_run_that_moved_on_is_not_undone() {
        let assigned = transitions::assign(&pending(0), &w("w1"), 1, at(1));
        assert_eq!(
            unassign(&assigned, 2, at(2)),
            Decision::Keep,
            "other attempt"
        );
        let running = transitions::start(&assigned, at(2)).expect("assigned");
        assert_eq!(unassign(&running, 1, at(3)), Decision::Keep, "it started");
    }
}
