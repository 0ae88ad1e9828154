//! Placing the run: asking the dispatcher for a slot, recording the assignment, and sending
//! it (docs/architecture.md, "Placement"). The registry learns that the worker holds the run
//! later, in a batch (see [`holdings`](crate::engine::holdings)).

use drover_protocol::{Claim, Release, RunRecord, RunStatus, Timestamp, WorkerId};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, trace, warn};

use super::outbox::Letter;
use super::Actor;
use crate::engine::dispatcher::Placement;
use crate::metrics;
use crate::store::{Decision, MutateError, RunStore, StoreError, Stored};
use crate::transitions;

/// Pause before placing again after the assignment could not be recorded.
const PLACE_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

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
        // The record first, then the worker: a leader that dies in between leaves an
        // ASSIGNED record that its successor adopts and, unacknowledged, takes back.
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
                self.deadlines.replace = Some(Instant::now() + PLACE_RETRY);
                return;
            }
        };
        if assigned.attempt == 1 && assigned.max_wait_time_ms.is_some() {
            let intake = self.engine.intake.clone();
            let run = self.run.clone();
            self.engine
                .tasks
                .spawn(async move { intake.cancel_max_wait(&run).await });
        }
        self.dispatch(&assigned, placement.was_idle).await;
    }

    /// The intake queued the run and reserved a slot on `assigned`'s worker: the record is
    /// created as ASSIGNED (the run's first write) as the assignment goes out, and the
    /// intake is answered. No `maxWaitTimeMs` timer was set for it: it never waited.
    pub(super) async fn on_place_at_intake(
        &mut self,
        pending: RunRecord,
        assigned: RunRecord,
        was_idle: bool,
        done: oneshot::Sender<Result<u64, StoreError>>,
    ) {
        let Some(worker) = assigned.worker_id.clone() else {
            self.engine.placed_at_intake(&self.run);
            let _ = done.send(Err(StoreError::unavailable(
                "an assignment without a worker",
            )));
            return;
        };
        self.reserved = Some(worker.clone());
        // The record's creation and the assignment go out together: the worker starts
        // while JetStream stores the record, and a `starting` that comes back first waits
        // in this actor's mailbox. Only the intake's reply waits for the record. Not for a
        // run with a run key (an idempotency key, or a child): a repeated request can
        // reuse its runID, and the record may exist already, on another worker.
        let keyed = assigned.idempotency_key.is_some() || assigned.parent_run_id.is_some();
        let sent_early = !keyed;
        let created = match self.engine.store.send_create(&assigned).await {
            Ok(ack) if sent_early => {
                self.send(Letter::assignment(&assigned)).await;
                RunStore::created(ack).await
            }
            Ok(ack) => {
                let created = RunStore::created(ack).await;
                if created.is_ok() {
                    self.send(Letter::assignment(&assigned)).await;
                }
                created
            }
            Err(error) => Err(error),
        };
        match created {
            Ok(revision) => {
                self.current = Some(Stored {
                    record: assigned.clone(),
                    revision,
                });
                self.deadlines.reload = None;
                if self.lease.is_some() {
                    self.engine.placed_at_intake(&self.run);
                } else {
                    self.set_unleased(true);
                }
                let _ = done.send(Ok(revision));
                self.engine.store.announce(None, &pending).await;
                self.engine
                    .store
                    .announce(Some(RunStatus::Pending), &assigned)
                    .await;
                self.assignment_sent(&assigned, was_idle);
            }
            Err(error) => {
                if sent_early {
                    // Not stored, so not accepted: the worker must not run it.
                    self.send(Letter::cancel(&assigned, "the run could not be stored"))
                        .await;
                }
                self.engine.placed_at_intake(&self.run);
                self.give_back_slot(&worker);
                let _ = done.send(Err(error));
            }
        }
    }

    /// The assignment is recorded: tell the worker, then [`Self::assignment_sent`].
    ///
    /// A run placed again (a retry, a reassignment) is first recorded at the registry and
    /// only then sent: the log-collector files an untraced worker's lines under the
    /// attempt its worker record names, and must not find the previous one there.
    async fn dispatch(&mut self, assigned: &RunRecord, was_idle: bool) {
        let again = assigned.attempt > 1;
        if again {
            if let Some(claim) = self.claim_of(assigned) {
                self.engine.holdings.hold_now(claim).await;
            }
        }
        self.send(Letter::assignment(assigned)).await;
        if !again {
            self.report_held(assigned, was_idle);
        }
        metrics::assigned(&self.engine.queue_depth, assigned);
        self.arm_attempt(assigned);
        debug!(worker = ?assigned.worker_id, attempt = assigned.attempt, "run assigned");
    }

    /// The assignment is recorded and sent: tell the registry (in a batch, or at once for
    /// an idle worker) and time the attempt.
    fn assignment_sent(&mut self, assigned: &RunRecord, was_idle: bool) {
        self.report_held(assigned, was_idle);
        metrics::assigned(&self.engine.queue_depth, assigned);
        self.arm_attempt(assigned);
        debug!(worker = ?assigned.worker_id, attempt = assigned.attempt, "run assigned");
    }

    /// Tells the registry that the worker `record` names holds the attempt: with the next
    /// batch, or at once when the worker `was_idle` (so that it shows WORKING).
    pub(super) fn report_held(&self, record: &RunRecord, was_idle: bool) {
        if let Some(claim) = self.claim_of(record) {
            self.engine.holdings.hold(claim, was_idle);
        }
    }

    /// That the worker `record` names holds its attempt, as the registry is told.
    fn claim_of(&self, record: &RunRecord) -> Option<Claim> {
        let (Some(worker), Some(incarnation)) = (&record.worker_id, record.incarnation) else {
            return None;
        };
        Some(Claim {
            worker_id: worker.clone(),
            incarnation,
            run_id: self.run.clone(),
            attempt: record.attempt,
            traceparent: record
                .attempt_span(record.attempt)
                .map(|span| span.to_string()),
        })
    }

    pub(super) fn give_back_slot(&mut self, worker: &WorkerId) {
        self.engine.dispatcher.release(worker, &self.run);
        if self.reserved.as_ref() == Some(worker) {
            self.reserved = None;
        }
    }

    /// The attempt `record` names is over (a write through [`Actor::mutate`] ended it): tell
    /// the registry its worker no longer holds it.
    pub(super) fn free_slot(&mut self, record: &RunRecord) {
        let Some(worker) = &record.worker_id else {
            return;
        };
        self.engine.holdings.release(Release {
            worker_id: worker.clone(),
            run_id: self.run.clone(),
            attempt: record.attempt,
        });
        // The dispatcher's slot was freed when the write that ended the attempt was
        // stored (`Actor::mutate`); only this actor's note of it is left.
        if self.reserved.as_ref() == Some(worker) {
            self.reserved = None;
        }
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
            was_idle: true,
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
}
