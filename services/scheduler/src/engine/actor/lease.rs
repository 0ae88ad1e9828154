//! The run's queue message: the lease by which this leader holds the run. It is kept alive
//! with progress acks, given back with a delay to wait out a retry's backoff, and removed
//! when the run ends. When it arrives the run is taken in hand: what to do is decided from
//! the record by [`next_step`].

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use drover_protocol::{RunRecord, RunStatus, Timestamp};
use drover_service_kit::Backoff;
use tokio::time::Instant;
use tracing::{debug, trace, warn};

use super::deadlines::{Clock, Deadlines};
use super::Actor;
use crate::store::Stored;

/// How long a fetched run waits for its record to appear (intake publishes the queue
/// message just before it creates the record) before its message counts as an orphan.
const ORPHAN_AFTER: Duration = Duration::from_secs(30);
/// First pause before reading a record that is not there yet; it grows up to
/// [`MAX_RELOAD`]. Intake publishes the queue message just before it creates the record,
/// so an idle leader can see the message first, by about a millisecond.
const FIRST_RELOAD: Duration = Duration::from_millis(1);
/// How long a queue message that arrived while the intake was placing its run waits for
/// the run's record from the intake before reading it back.
const PLACING_PATIENCE: Duration = Duration::from_secs(1);
/// Longest pause between reads of a record that is not there yet.
const MAX_RELOAD: Duration = Duration::from_millis(100);

/// The pauses while a fetched run's record is not there yet.
pub(super) fn reload_backoff() -> Backoff {
    Backoff::new(FIRST_RELOAD, MAX_RELOAD)
}

/// What a run in hand needs next, decided from its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// It has ended: nothing to hold on to.
    Ended,
    /// It waits out a retry's backoff for this long.
    Defer(Duration),
    /// It needs a worker.
    Place,
    /// It is on a worker.
    Held,
}

/// What the run needs next at `now`.
pub(super) fn next_step(record: &RunRecord, now: Timestamp) -> Step {
    match record.status {
        status if status.is_terminal() => Step::Ended,
        RunStatus::Pending => match record.not_before.map(|at| at.since(now)) {
            Some(wait) if !wait.is_zero() => Step::Defer(wait),
            _ => Step::Place,
        },
        _ => Step::Held,
    }
}

/// True when a queue message published at `published` has waited too long for its record:
/// the intake that published it died before it created the record.
pub(super) fn orphaned(published: Timestamp, now: Timestamp) -> bool {
    now.since(published) > ORPHAN_AFTER
}

fn published(message: &jetstream::Message) -> Option<Timestamp> {
    let info = message.info().ok()?;
    let millis = info.published.unix_timestamp_nanos() / 1_000_000;
    Some(Timestamp::from_millis(millis as i64))
}

impl Actor {
    pub(super) async fn on_lease(&mut self, message: jetstream::Message) {
        let Some(message) = self.join_lease(message) else {
            return;
        };
        // The fetcher counted this message as on its way (unless its run was being placed
        // at intake); it has arrived once this handler has asked for a slot (or decided it
        // needs none).
        let counted = !self.engine.is_placing(&self.run);
        let routine = drover_protocol::subject::parse_queue(message.subject.as_str());
        self.take_lease(message).await;
        if let (true, Some(routine)) = (counted, routine) {
            self.engine.dispatcher.arrived(&routine);
        }
    }

    /// Attaches the queue message of a run this actor placed at intake and holds without
    /// it, at once: the actor has moved the run on its own since, and the record it holds
    /// is current. Hands the message back when the actor is in any other state.
    pub(super) fn join_lease(&mut self, message: jetstream::Message) -> Option<jetstream::Message> {
        if !self.unleased || self.lease.is_some() {
            return Some(message);
        }
        trace!("lease joins a run placed at intake");
        self.lease = Some(message);
        self.set_unleased(false);
        self.deadlines.progress = Some(Instant::now() + self.progress_period());
        None
    }

    async fn take_lease(&mut self, message: jetstream::Message) {
        trace!("lease taken");
        let seq = message.info().map(|info| info.stream_sequence).ok();
        if let Some(existing) = &self.lease {
            let existing_seq = existing.info().map(|info| info.stream_sequence).ok();
            if existing_seq != seq {
                // A second queue message for the same run: only one may hold it.
                debug!(?seq, "dropping a duplicate queue message");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        }
        self.lease = Some(message);
        self.deadlines.progress = Some(Instant::now() + self.progress_period());
        if self.current.is_none() && self.engine.is_placing(&self.run) {
            // The intake is placing the run: its record comes from this actor's own
            // mailbox. Read it back only if that takes long (the intake failed).
            trace!("lease arrived before the run placed at intake");
            self.deadlines.reload = Some(Instant::now() + PLACING_PATIENCE);
            return;
        }
        // Always read afresh: the record may have moved while nobody held the run.
        match self.reload().await {
            Ok(Some(_)) => {
                self.deadlines.reload = None;
                self.take_in_hand().await;
            }
            Ok(None) => self.await_record(),
            Err(error) => {
                warn!(%error, "could not read the run, will retry");
                self.retry_later();
            }
        }
    }

    /// The intake stored the record this actor may be waiting for.
    pub(super) async fn on_stored(&mut self, stored: Stored) {
        if self.current.is_none() && self.lease.is_some() {
            trace!("record handed over by the intake");
            self.current = Some(stored);
            self.deadlines.reload = None;
            self.take_in_hand().await;
        }
    }

    /// The record is not there yet: read again soon, or drop an orphaned message.
    pub(super) fn await_record(&mut self) {
        let published = self.lease.as_ref().and_then(published);
        if published.is_some_and(|published| orphaned(published, Timestamp::now())) {
            warn!("queue message without a run record, dropping it");
            if let Some(message) = self.lease.take() {
                self.engine
                    .tasks
                    .spawn(async move { message.ack_with(AckKind::Term).await });
            }
            self.deadlines = Deadlines::default();
        } else {
            self.deadlines.reload = Some(Instant::now() + self.reload_backoff.next_delay());
        }
    }

    /// Decides what to do with a run whose lease this actor just got.
    pub(super) async fn take_in_hand(&mut self) {
        let Some(record) = self.record().cloned() else {
            return;
        };
        match next_step(&record, Timestamp::now()) {
            Step::Ended => self.finish_lease().await,
            Step::Defer(wait) => self.defer(wait).await,
            Step::Place => self.request_placement(),
            Step::Held => self.adopt(&record).await,
        }
    }

    /// Takes over a run that a previous leader placed.
    async fn adopt(&mut self, record: &RunRecord) {
        let (Some(worker), Some(incarnation)) = (&record.worker_id, record.incarnation) else {
            return;
        };
        if !self.engine.dispatcher.adopt(worker, incarnation, &self.run) {
            let reason = format!("worker {worker} is gone");
            self.take_back(&reason, false).await;
            return;
        }
        self.reserved = Some(worker.clone());
        // The previous leader may have stopped before the registry heard of it.
        self.report_held(record, false);
        self.arm_attempt(record);
        debug!(worker = %worker, attempt = record.attempt, status = %record.status, "run adopted");
    }

    /// Sets the current attempt's timers from the record.
    pub(super) fn arm_attempt(&mut self, record: &RunRecord) {
        let ack_timeout = self.engine.settings.assign_ack_timeout_ms;
        self.deadlines
            .arm_attempt(record, ack_timeout, Clock::now());
    }

    pub(super) fn progress_period(&self) -> Duration {
        Duration::from_millis((self.engine.settings.run_lease_ms / 3).max(100))
    }

    /// Extends the lease, and plans the next extension while the lease is held.
    pub(super) async fn extend_lease(&mut self, now: Instant) {
        if let Some(message) = &self.lease {
            if let Err(error) = message.ack_with(AckKind::Progress).await {
                debug!(%error, "could not extend the lease");
            }
        }
        self.deadlines.progress = self.lease.as_ref().map(|_| now + self.progress_period());
    }

    /// Gives the queue message back until `delay` has passed (a retry's backoff).
    /// A run placed at intake that was never leased lets go: its queue message brings it
    /// back once fetched, and is deferred then.
    pub(super) async fn defer(&mut self, delay: Duration) {
        self.deadlines = Deadlines::default();
        self.set_unleased(false);
        if let Some(message) = self.lease.take() {
            if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
                warn!(%error, "could not defer the run's queue message");
            }
        }
    }

    /// The run is over: remove its queue message for good.
    pub(super) async fn finish_lease(&mut self) {
        self.deadlines = Deadlines::default();
        let placed_at_intake = self.unleased;
        self.set_unleased(false);
        if let Some(message) = self.lease.take() {
            // Not waiting for the server to confirm: an acknowledgement lost on the way
            // only brings the message back after the lease, to a leader that reads the
            // record, finds the run ended, and acknowledges it again.
            if let Err(error) = message.ack().await {
                debug!(%error, "could not acknowledge the run's queue message");
            }
        } else if let Some(record) = self.record() {
            // Nobody holds the message (a run that ended before it was ever fetched). If it
            // was queued PENDING (cancelled, or out of time), it no longer holds later
            // submissions back from placement at intake.
            let (routine, seq) = (record.routine_id.clone(), record.queue_seq);
            if !placed_at_intake {
                self.engine.dispatcher.queued(&routine, false);
            }
            if let Some(seq) = seq {
                self.engine.intake.drop_queue_message(seq).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{at, pending, w};
    use crate::transitions::{assign, cancel, fail_attempt, reassign, start, AttemptFailure};
    use drover_protocol::RunError;

    fn failed_once(max_retries: u32) -> RunRecord {
        let running =
            start(&assign(&pending(max_retries), &w("a"), 1, at(0)), at(0)).expect("assigned");
        fail_attempt(
            &running,
            AttemptFailure::Error(RunError::new("E", "e")),
            at(100),
        )
    }

    #[test]
    fn a_new_run_needs_a_worker() {
        assert_eq!(next_step(&pending(0), at(0)), Step::Place);
    }

    #[test]
    fn a_retry_waits_out_exactly_what_is_left_of_its_backoff() {
        let retrying = failed_once(2);
        assert_eq!(
            retrying.not_before,
            Some(at(110)),
            "10 ms after the failure"
        );
        assert_eq!(
            next_step(&retrying, at(100)),
            Step::Defer(Duration::from_millis(10))
        );
        assert_eq!(
            next_step(&retrying, at(107)),
            Step::Defer(Duration::from_millis(3)),
            "a new leader waits only for what is left"
        );
        assert_eq!(next_step(&retrying, at(110)), Step::Place);
        assert_eq!(next_step(&retrying, at(5_000)), Step::Place);
    }

    #[test]
    fn a_reassigned_run_is_placed_at_once() {
        let back = reassign(&assign(&pending(0), &w("a"), 1, at(0)), "lost", 3, at(1));
        assert_eq!(next_step(&back, at(1)), Step::Place);
    }

    #[test]
    fn a_run_on_a_worker_is_held() {
        let assigned = assign(&pending(0), &w("a"), 1, at(0));
        assert_eq!(next_step(&assigned, at(1)), Step::Held);
        let running = start(&assigned, at(2)).expect("assigned");
        assert_eq!(next_step(&running, at(3)), Step::Held);
    }

    #[test]
    fn an_ended_run_needs_nothing() {
        assert_eq!(next_step(&failed_once(0), at(200)), Step::Ended);
        let cancelled = cancel(&pending(0), "stop", at(1)).expect("pending");
        assert_eq!(next_step(&cancelled, at(1)), Step::Ended);
    }

    #[test]
    fn a_queue_message_is_an_orphan_after_thirty_seconds_without_a_record() {
        assert!(!orphaned(at(0), at(0)));
        assert!(!orphaned(at(0), at(30_000)));
        assert!(orphaned(at(0), at(30_001)));
    }
}
