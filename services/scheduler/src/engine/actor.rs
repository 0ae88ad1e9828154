//! One run's actor on the leader: it holds the run's queue message (the lease), keeps its
//! timers, and applies every transition of the run, one at a time, under compare-and-set.
//!
//! An actor starts when the run's queue message is fetched, or when an event arrives for a
//! run that has none (a directive right after a leader change, say); such a *detached*
//! actor applies its events and ends, and the run is taken in hand again when its queue
//! message comes back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    encode, Accepted, Assignment, Cancel, ChildCompleted, ChildStarting, Claim, Completed, Outcome,
    RunError, RunId, RunRecord, RunSpec, RunStatus, Starting, Timestamp, Waiting, WorkerId,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, trace, warn, Instrument};

use super::dispatcher::{Gone, Placement};
use super::registry::RegistryError;
use super::Engine;
use crate::error::{CancelError, ChildError, DirectiveError, Error};
use crate::intake::{Origin, TraceContext};
use crate::metrics;
use crate::store::{StoreError, Stored};
use crate::transitions::{self, AttemptFailure};

/// How long a fetched run waits for its record to appear (intake publishes the queue
/// message just before it creates the record) before its message counts as an orphan.
const ORPHAN_AFTER: Duration = Duration::from_secs(30);
/// First pause before reading a record that is not there yet; doubles up to 100 ms.
/// Intake publishes the queue message just before it creates the record, so an idle leader
/// can see the message first, by about a millisecond.
const FIRST_RELOAD: Duration = Duration::from_millis(1);
/// Pause before asking again after the registry refused a slot.
const CLAIM_RETRY: Duration = Duration::from_millis(100);

/// A `starting` or `completed` from a worker, read from `DROVER_DIRECTIVES`.
pub enum DirectiveBody {
    /// The worker started an attempt.
    Starting(Starting),
    /// An attempt ended.
    Completed(Completed),
}

/// A completion taken from the mailbox: who sent it, what it says, the stored directive.
type QueuedCompletion = (WorkerId, Completed, jetstream::Message);

/// Everything that can happen to a run.
pub enum Event {
    /// The run's queue message was delivered (or delivered again).
    Lease(jetstream::Message),
    /// A worker directive about the run.
    Directive {
        /// The worker that sent it.
        worker: WorkerId,
        /// What it says.
        body: DirectiveBody,
        /// The stored directive, acknowledged once applied.
        message: jetstream::Message,
    },
    /// The run's `maxWaitTimeMs` timer fired.
    MaxWait(jetstream::Message),
    /// `v1.run.cancel`.
    Cancel {
        /// Why.
        reason: String,
        /// Where the answer goes (none for a cascade from the parent).
        reply: Option<oneshot::Sender<Result<RunRecord, CancelError>>>,
    },
    /// The worker running this run asks for a child.
    ChildRequest {
        /// The child's spec.
        spec: RunSpec,
        /// The requesting worker.
        worker: WorkerId,
        /// Trace context of the request.
        trace: TraceContext,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Accepted, ChildError>>,
    },
    /// A child of this run started.
    ChildStarted(Box<RunRecord>),
    /// A child of this run ended.
    ChildEnded(Box<RunRecord>),
    /// The worker holding the run is gone or registered again.
    WorkerGone(Gone),
    /// This process's intake has just stored the run.
    Stored(Box<Stored>),
}

/// Deadlines the actor keeps for its run.
#[derive(Default)]
struct Deadlines {
    ack: Option<Instant>,
    exec: Option<Instant>,
    progress: Option<Instant>,
    reload: Option<Instant>,
    replace: Option<Instant>,
}

impl Deadlines {
    fn next(&self) -> Option<Instant> {
        [
            self.ack,
            self.exec,
            self.progress,
            self.reload,
            self.replace,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

pub(super) struct Actor {
    engine: Arc<Engine>,
    run: RunId,
    receiver: mpsc::UnboundedReceiver<Event>,
    lease: Option<jetstream::Message>,
    current: Option<Stored>,
    placement: Option<oneshot::Receiver<Placement>>,
    reserved: Option<WorkerId>,
    deadlines: Deadlines,
    /// Next pause while waiting for the record to appear.
    reload_backoff: Duration,
    /// Events taken from the mailbox early (to look for a completion behind a
    /// `starting`), handled before anything new.
    stash: VecDeque<Event>,
}

impl Actor {
    pub(super) fn new(
        engine: Arc<Engine>,
        run: RunId,
        receiver: mpsc::UnboundedReceiver<Event>,
    ) -> Self {
        Self {
            engine,
            run,
            receiver,
            lease: None,
            current: None,
            placement: None,
            reserved: None,
            deadlines: Deadlines::default(),
            reload_backoff: FIRST_RELOAD,
            stash: VecDeque::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let span = tracing::debug_span!("run", run = %self.run);
        async move {
            loop {
                if let Some(event) = self.stash.pop_front() {
                    self.handle(event).await;
                    continue;
                }
                if self.idle() && self.engine.retire(&self.run, &mut self.receiver) {
                    break;
                }
                let deadline = self.deadlines.next();
                tokio::select! {
                    () = self.engine.shutdown.cancelled() => {
                        // Leadership ended: leave the lease to expire; the next leader resumes.
                        break;
                    }
                    event = self.receiver.recv() => match event {
                        Some(event) => self.handle(event).await,
                        None => break,
                    },
                    placement = wait_placement(&mut self.placement) => {
                        self.placement = None;
                        match placement {
                            Some(placement) => self.placed(placement).await,
                            None => self.request_placement(),
                        }
                    }
                    () = sleep_until(deadline) => self.on_deadline().await,
                }
            }
            if let Some(worker) = self.reserved.take() {
                self.engine.dispatcher.release(&worker, &self.run);
            }
            self.engine.dispatcher.withdraw(&self.run);
        }
        .instrument(span)
        .await
    }

    /// Nothing left to do: no lease to keep, no slot awaited, nothing to load.
    fn idle(&self) -> bool {
        self.lease.is_none() && self.placement.is_none() && self.deadlines.reload.is_none()
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Lease(message) => self.on_lease(message).await,
            Event::Directive {
                worker,
                body,
                message,
            } => self.on_directive(worker, body, message).await,
            Event::MaxWait(message) => self.on_max_wait(message).await,
            Event::Cancel { reason, reply } => {
                let result = self.on_cancel(&reason).await;
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Event::ChildRequest {
                spec,
                worker,
                trace,
                reply,
            } => {
                let result = self.on_child_request(spec, worker, trace).await;
                let _ = reply.send(result);
            }
            Event::ChildStarted(child) => self.on_child_started(&child).await,
            Event::ChildEnded(child) => self.on_child_ended(&child).await,
            Event::WorkerGone(gone) => self.on_worker_gone(gone).await,
            Event::Stored(stored) => self.on_stored(*stored).await,
        }
    }

    // ---------------------------------------------------------------- record access

    async fn load(&mut self) -> Result<Option<&Stored>, StoreError> {
        if self.current.is_none() {
            self.current = self.engine.store.get(&self.run).await?;
        }
        Ok(self.current.as_ref())
    }

    async fn reload(&mut self) -> Result<Option<&Stored>, StoreError> {
        self.current = self.engine.store.get(&self.run).await?;
        Ok(self.current.as_ref())
    }

    /// Writes `next` over the current record. On a conflict the record is reloaded and
    /// the caller must decide again.
    async fn write(&mut self, next: RunRecord) -> Result<(), StoreError> {
        self.write_through(None, next).await
    }

    /// Like [`Actor::write`]; with `via`, a state the run passed through without being
    /// stored is announced first, so that watchers see every transition.
    async fn write_through(
        &mut self,
        via: Option<&RunRecord>,
        next: RunRecord,
    ) -> Result<(), StoreError> {
        let Some(current) = &self.current else {
            return Err(StoreError::unavailable("no record loaded"));
        };
        let previous = current.record.status;
        match self.engine.store.update(&next, current.revision).await {
            Ok(revision) => {
                let previous = match via {
                    Some(via) => {
                        self.engine.store.announce(Some(previous), via).await;
                        via.status
                    }
                    None => previous,
                };
                self.engine.store.announce(Some(previous), &next).await;
                self.current = Some(Stored {
                    record: next,
                    revision,
                });
                Ok(())
            }
            Err(StoreError::Conflict) => {
                self.reload().await?;
                Err(StoreError::Conflict)
            }
            Err(error) => Err(error),
        }
    }

    fn record(&self) -> Option<&RunRecord> {
        self.current.as_ref().map(|stored| &stored.record)
    }

    // ---------------------------------------------------------------- lease

    async fn on_lease(&mut self, message: jetstream::Message) {
        // The fetcher counted this message as on its way; it has arrived once this handler
        // has asked for a slot (or decided it needs none).
        let routine = routine_of(&message);
        self.take_lease(message).await;
        if let Some(routine) = routine {
            self.engine.dispatcher.arrived(&routine);
        }
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
        // Always read afresh: the record may have moved while nobody held the run.
        match self.reload().await {
            Ok(Some(_)) => {
                self.deadlines.reload = None;
                self.take_in_hand().await;
            }
            Ok(None) => self.await_record(),
            Err(error) => {
                warn!(%error, "could not read the run, will retry");
                self.deadlines.reload = Some(Instant::now() + Duration::from_millis(500));
            }
        }
    }

    /// The intake stored the record this actor may be waiting for.
    async fn on_stored(&mut self, stored: Stored) {
        if self.current.is_none() && self.lease.is_some() {
            trace!("record handed over by the intake");
            self.current = Some(stored);
            self.deadlines.reload = None;
            self.take_in_hand().await;
        }
    }

    fn await_record(&mut self) {
        let age = self
            .lease
            .as_ref()
            .and_then(|message| message.info().ok())
            .map(|info| {
                let published = info.published.unix_timestamp_nanos() / 1_000_000;
                Timestamp::now().since(Timestamp::from_millis(published as i64))
            })
            .unwrap_or_default();
        if age > ORPHAN_AFTER {
            warn!("queue message without a run record, dropping it");
            if let Some(message) = self.lease.take() {
                self.engine
                    .tasks
                    .spawn(async move { message.ack_with(AckKind::Term).await });
            }
            self.deadlines = Deadlines::default();
        } else {
            self.deadlines.reload = Some(Instant::now() + self.reload_backoff);
            self.reload_backoff = (self.reload_backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Decides what to do with a run whose lease this actor just got.
    async fn take_in_hand(&mut self) {
        let Some(record) = self.record().cloned() else {
            return;
        };
        match record.status {
            status if status.is_terminal() => self.finish_lease().await,
            RunStatus::Pending => {
                if let Some(not_before) = record.not_before {
                    let wait = not_before.remaining();
                    if !wait.is_zero() {
                        self.defer(wait).await;
                        return;
                    }
                }
                self.request_placement();
            }
            RunStatus::Assigned | RunStatus::Running => self.adopt(&record).await,
            _ => {}
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
        self.arm_timers(record);
        debug!(worker = %worker, attempt = record.attempt, status = %record.status, "run adopted");
    }

    fn arm_timers(&mut self, record: &RunRecord) {
        let now_wall = Timestamp::now();
        let now = Instant::now();
        self.deadlines.ack = None;
        self.deadlines.exec = None;
        match record.status {
            RunStatus::Assigned => {
                let since = record.assigned_at.unwrap_or(now_wall);
                let due = since.plus_millis(self.engine.settings.assign_ack_timeout_ms);
                self.deadlines.ack = Some(now + due.remaining());
            }
            RunStatus::Running => {
                if let Some(limit) = record.max_exec_time_ms {
                    let since = record.started_at.unwrap_or(now_wall);
                    self.deadlines.exec = Some(now + since.plus_millis(limit).remaining());
                }
            }
            _ => {}
        }
    }

    fn progress_period(&self) -> Duration {
        Duration::from_millis((self.engine.settings.run_lease_ms / 3).max(100))
    }

    /// Gives the queue message back until `delay` has passed (a retry's backoff).
    async fn defer(&mut self, delay: Duration) {
        self.deadlines = Deadlines::default();
        if let Some(message) = self.lease.take() {
            if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
                warn!(%error, "could not defer the run's queue message");
            }
        }
    }

    /// The run is over: remove its queue message for good.
    async fn finish_lease(&mut self) {
        self.deadlines = Deadlines::default();
        if let Some(message) = self.lease.take() {
            if let Err(error) = message.double_ack().await {
                debug!(%error, "could not acknowledge the run's queue message");
            }
        } else if let Some(seq) = self.record().and_then(|record| record.queue_seq) {
            // Nobody holds the message (a run that ended before it was ever fetched).
            self.engine.intake.drop_queue_message(seq).await;
        }
    }

    // ---------------------------------------------------------------- placement

    fn request_placement(&mut self) {
        let Some(record) = self.record() else {
            return;
        };
        let receiver =
            self.engine
                .dispatcher
                .request(&self.run, &record.routine_id, &record.conditions);
        self.placement = Some(receiver);
    }

    async fn placed(&mut self, placement: Placement) {
        trace!(worker = %placement.worker, "placement granted");
        self.reserved = Some(placement.worker.clone());
        let Some(record) = self.record().cloned() else {
            return;
        };
        if record.status != RunStatus::Pending {
            self.give_back_slot(&placement.worker);
            return;
        }
        let assigned = transitions::assign(
            &record,
            &placement.worker,
            placement.incarnation,
            Timestamp::now(),
        );
        // The record first, then the slot: a leader that dies in between leaves an
        // ASSIGNED record that its successor adopts and, unacknowledged, takes back. The
        // other order could leave a claimed slot that no record points to.
        match self.write(assigned.clone()).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                self.give_back_slot(&placement.worker);
                self.take_in_hand().await;
                return;
            }
            Err(error) => {
                warn!(%error, "could not record the assignment");
                self.give_back_slot(&placement.worker);
                self.deadlines.replace = Some(Instant::now() + CLAIM_RETRY);
                return;
            }
        }
        let claim = Claim {
            worker_id: placement.worker.clone(),
            incarnation: placement.incarnation,
            run_id: self.run.clone(),
            attempt: assigned.attempt,
        };
        if let Err(error) = self.engine.registry.claim(&claim).await {
            debug!(worker = %placement.worker, %error, "slot not granted");
            if matches!(error, RegistryError::Unreachable(_)) {
                // The claim may have landed: undo it, harmlessly if it did not.
                self.release_at_registry(&placement.worker, assigned.attempt);
            }
            self.give_back_slot(&placement.worker);
            let back = transitions::unassign(&assigned, Timestamp::now(), "slot not granted");
            if self.write(back).await.is_ok() {
                self.deadlines.replace = Some(Instant::now() + CLAIM_RETRY);
            } else {
                self.take_in_hand().await;
            }
            return;
        }
        ::metrics::counter!(metrics::ASSIGNMENTS).increment(1);
        self.send_to_worker(&assigned).await;
        self.arm_timers(&assigned);
        if assigned.attempt == 1 && assigned.max_wait_time_ms.is_some() {
            let intake = self.engine.intake.clone();
            let run = self.run.clone();
            self.engine
                .tasks
                .spawn(async move { intake.cancel_max_wait(&run).await });
        }
        debug!(worker = %placement.worker, attempt = assigned.attempt, "run assigned");
    }

    fn give_back_slot(&mut self, worker: &WorkerId) {
        self.engine.dispatcher.release(worker, &self.run);
        if self.reserved.as_ref() == Some(worker) {
            self.reserved = None;
        }
    }

    fn release_at_registry(&self, worker: &WorkerId, attempt: u64) {
        let release = drover_protocol::Release {
            worker_id: worker.clone(),
            run_id: self.run.clone(),
            attempt,
        };
        let registry = self.engine.registry.clone();
        self.engine
            .tasks
            .spawn(async move { registry.release(&release).await });
    }

    /// The worker no longer holds the run: free its slot everywhere.
    async fn free_slot(&mut self, worker: &WorkerId, attempt: u64) {
        let release = drover_protocol::Release {
            worker_id: worker.clone(),
            run_id: self.run.clone(),
            attempt,
        };
        self.engine.registry.release(&release).await;
        self.give_back_slot(worker);
    }

    fn trace_headers(&self, record: &RunRecord) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(traceparent) = &record.traceparent {
            headers.insert(drover_protocol::trace::TRACEPARENT, traceparent.as_str());
        }
        if let Some(tracestate) = &record.tracestate {
            headers.insert(drover_protocol::trace::TRACESTATE, tracestate.as_str());
        }
        headers
    }

    async fn publish_to_worker(
        &self,
        worker: &WorkerId,
        key: &str,
        body: Bytes,
        record: &RunRecord,
    ) {
        let subject = subject::to_worker(worker, key);
        if let Err(error) = self
            .engine
            .nats
            .publish_with_headers(subject, self.trace_headers(record), body)
            .await
        {
            warn!(worker = %worker, %error, "could not send a directive to the worker");
        }
    }

    async fn send_to_worker(&self, record: &RunRecord) {
        let Some(worker) = &record.worker_id else {
            return;
        };
        let assignment = Assignment {
            run_id: record.run_id.clone(),
            attempt: record.attempt,
            routine_id: record.routine_id.clone(),
            params: record.params.clone(),
            env: record.env.clone(),
            max_exec_time_ms: record.max_exec_time_ms,
            parent_run_id: record.parent_run_id.clone(),
        };
        self.publish_to_worker(worker, keys::REQUEST_START, encode(&assignment), record)
            .await;
    }

    async fn send_cancel(&self, record: &RunRecord, reason: &str) {
        let Some(worker) = &record.worker_id else {
            return;
        };
        let cancel = Cancel {
            run_id: record.run_id.clone(),
            attempt: record.attempt,
            reason: reason.to_owned(),
        };
        self.publish_to_worker(worker, keys::CANCEL, encode(&cancel), record)
            .await;
    }

    // ---------------------------------------------------------------- deadlines

    async fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.deadlines.progress.is_some_and(|due| due <= now) {
            if let Some(message) = &self.lease {
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    debug!(%error, "could not extend the lease");
                }
            }
            self.deadlines.progress = self.lease.as_ref().map(|_| now + self.progress_period());
        }
        if self.deadlines.reload.is_some_and(|due| due <= now) {
            self.deadlines.reload = None;
            let reloaded = self.reload().await.map(|stored| stored.is_some());
            match reloaded {
                Ok(true) => self.take_in_hand().await,
                Ok(false) if self.lease.is_some() => self.await_record(),
                Ok(false) => {}
                Err(error) => {
                    warn!(%error, "could not read the run, will retry");
                    self.deadlines.reload = Some(now + Duration::from_millis(500));
                }
            }
        }
        if self.deadlines.replace.is_some_and(|due| due <= now) {
            self.deadlines.replace = None;
            if self
                .record()
                .is_some_and(|r| r.status == RunStatus::Pending)
            {
                self.request_placement();
            }
        }
        if self.deadlines.ack.is_some_and(|due| due <= now) {
            self.deadlines.ack = None;
            if self
                .record()
                .is_some_and(|r| r.status == RunStatus::Assigned)
            {
                info!(run = %self.run, "assignment not acknowledged in time, reassigning");
                self.take_back("assignment not acknowledged", true).await;
            }
        }
        if self.deadlines.exec.is_some_and(|due| due <= now) {
            self.deadlines.exec = None;
            if self
                .record()
                .is_some_and(|r| r.status == RunStatus::Running)
            {
                info!(run = %self.run, "attempt exceeded maxExecTimeMs");
                self.fail_current(AttemptFailure::MaxExec, Some("max_exec_exceeded"))
                    .await;
            }
        }
    }

    // ---------------------------------------------------------------- ending attempts

    /// Takes the run away from its worker (lost, gone, or never acknowledged) and places it
    /// again, within the reassignment bound.
    async fn take_back(&mut self, why: &str, cancel_worker: bool) {
        loop {
            let Some(record) = self.record().cloned() else {
                return;
            };
            if !matches!(record.status, RunStatus::Assigned | RunStatus::Running) {
                return;
            }
            if cancel_worker {
                self.send_cancel(&record, why).await;
            }
            let next = transitions::reassign(
                &record,
                why,
                self.engine.settings.max_reassignments,
                Timestamp::now(),
            );
            match self.write(next.clone()).await {
                Ok(()) => {
                    ::metrics::counter!(metrics::REASSIGNMENTS).increment(1);
                    if let Some(worker) = &record.worker_id {
                        self.free_slot(worker, record.attempt).await;
                    }
                    self.after_attempt(&next).await;
                    return;
                }
                Err(StoreError::Conflict) => continue,
                Err(error) => {
                    warn!(%error, "could not take the run back, will retry");
                    self.deadlines.reload = Some(Instant::now() + Duration::from_millis(500));
                    return;
                }
            }
        }
    }

    /// Fails the current attempt (worker error or timeout): retry or end.
    async fn fail_current(&mut self, failure: AttemptFailure, cancel_reason: Option<&str>) {
        loop {
            let Some(record) = self.record().cloned() else {
                return;
            };
            if !matches!(record.status, RunStatus::Assigned | RunStatus::Running) {
                return;
            }
            if let Some(reason) = cancel_reason {
                self.send_cancel(&record, reason).await;
            }
            let next = transitions::fail_attempt(&record, failure.clone(), Timestamp::now());
            match self.write(next.clone()).await {
                Ok(()) => {
                    if let Some(worker) = &record.worker_id {
                        self.free_slot(worker, record.attempt).await;
                    }
                    self.after_attempt(&next).await;
                    return;
                }
                Err(StoreError::Conflict) => continue,
                Err(error) => {
                    warn!(%error, "could not record a failed attempt, will retry");
                    self.deadlines.reload = Some(Instant::now() + Duration::from_millis(500));
                    return;
                }
            }
        }
    }

    /// After an attempt ended: place again, wait out a backoff, or finish.
    async fn after_attempt(&mut self, record: &RunRecord) {
        self.deadlines.ack = None;
        self.deadlines.exec = None;
        match record.status {
            RunStatus::Pending => match record.not_before.map(Timestamp::remaining) {
                Some(wait) if !wait.is_zero() => {
                    if self.lease.is_some() {
                        self.defer(wait).await;
                    }
                }
                _ => {
                    if self.lease.is_some() {
                        self.request_placement();
                    }
                }
            },
            status if status.is_terminal() => self.ended(record).await,
            _ => {}
        }
    }

    /// The run reached a terminal state: clean up and tell whoever waits on it.
    async fn ended(&mut self, record: &RunRecord) {
        info!(run = %self.run, status = %record.status, attempt = record.attempt, reason = ?record.failure_reason, "run ended");
        ::metrics::counter!(metrics::RUNS_ENDED, "status" => record.status.as_str()).increment(1);
        self.engine.dispatcher.withdraw(&self.run);
        self.placement = None;
        self.finish_lease().await;
        if let Some(parent) = &record.parent_run_id {
            self.engine
                .deliver(parent.clone(), Event::ChildEnded(Box::new(record.clone())));
        }
        if record.status == RunStatus::Cancelled {
            for child in &record.open_children {
                self.engine.deliver(
                    child.clone(),
                    Event::Cancel {
                        reason: format!("parent run {} was cancelled", self.run),
                        reply: None,
                    },
                );
            }
        }
    }

    // ---------------------------------------------------------------- directives

    async fn on_directive(
        &mut self,
        worker: WorkerId,
        body: DirectiveBody,
        message: jetstream::Message,
    ) {
        let attempt = match &body {
            DirectiveBody::Starting(starting) => starting.attempt,
            DirectiveBody::Completed(completed) => completed.attempt,
        };
        let subject = message.subject.to_string();
        let outcome = self.apply_directive(&worker, attempt, body).await;
        let ack = match outcome {
            Ok(()) => message.ack().await,
            Err(Some(error)) => {
                let error = Error::from(error).to_wire(&subject);
                ::metrics::counter!(metrics::DIRECTIVES_REJECTED, "code" => error.code.as_str())
                    .increment(1);
                info!(run = %self.run, worker = %worker, attempt, code = %error.code, "directive rejected");
                drover_service_kit::reply::to_worker_error(&self.engine.nats, &worker, &error)
                    .await;
                message.ack().await
            }
            Err(None) => {
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                    .await
            }
        };
        if let Err(error) = ack {
            debug!(%error, "could not acknowledge a directive");
        }
    }

    /// `Err(Some(error))` rejects the directive; `Err(None)` retries it later.
    async fn apply_directive(
        &mut self,
        worker: &WorkerId,
        attempt: u64,
        body: DirectiveBody,
    ) -> Result<(), Option<DirectiveError>> {
        loop {
            let record = match self.load().await {
                Ok(Some(stored)) => stored.record.clone(),
                Ok(None) => return Err(Some(DirectiveError::UnknownRun(self.run.clone()))),
                Err(error) => {
                    warn!(%error, "could not read the run for a directive");
                    return Err(None);
                }
            };
            let incarnation = self
                .engine
                .dispatcher
                .worker(worker)
                .map(|record| record.incarnation);
            if let Err(stale) = transitions::check_directive(&record, worker, attempt, incarnation)
            {
                // Re-read once: the cached record may be behind another writer.
                if self.reload().await.is_ok()
                    && self.record().is_some_and(|fresh| fresh != &record)
                {
                    continue;
                }
                return Err(Some(stale.into()));
            }
            let result = match &body {
                DirectiveBody::Starting(_) => self.started(&record).await,
                DirectiveBody::Completed(completed) => self.completed(&record, completed).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict) => continue,
                Err(error) => {
                    warn!(%error, "could not apply a directive");
                    return Err(None);
                }
            }
        }
    }

    async fn started(&mut self, record: &RunRecord) -> Result<(), StoreError> {
        let Some(next) = transitions::start(record, Timestamp::now()) else {
            return Ok(());
        };
        if let Some(completion) = self.take_next_completion(&next) {
            return self.started_and_completed(next, completion).await;
        }
        self.write(next.clone()).await?;
        self.after_started(&next);
        Ok(())
    }

    /// The attempt is RUNNING: time it, and tell the parent.
    fn after_started(&mut self, next: &RunRecord) {
        if self.lease.is_some() {
            self.arm_timers(next);
        }
        if let Some(parent) = &next.parent_run_id {
            self.engine
                .deliver(parent.clone(), Event::ChildStarted(Box::new(next.clone())));
        }
    }

    /// This attempt's completion, when it is the next event in the mailbox: short runs
    /// report `starting` and `completed` back to back, and both can then be stored in one
    /// write. Only the very next event counts, so that nothing queued before the completion
    /// (a cancel, a timeout, a lost worker) is overtaken.
    fn take_next_completion(&mut self, started: &RunRecord) -> Option<QueuedCompletion> {
        while let Ok(event) = self.receiver.try_recv() {
            self.stash.push_back(event);
        }
        let Some(Event::Directive {
            worker,
            body: DirectiveBody::Completed(completed),
            ..
        }) = self.stash.front()
        else {
            return None;
        };
        let incarnation = self
            .engine
            .dispatcher
            .worker(worker)
            .map(|record| record.incarnation);
        if started.worker_id.as_ref() != Some(worker)
            || transitions::check_directive(started, worker, completed.attempt, incarnation)
                .is_err()
        {
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

    /// `starting` and the completion right behind it, stored as one write (RUNNING is
    /// still announced). On failure the completion goes back to be handled on its own.
    async fn started_and_completed(
        &mut self,
        started: RunRecord,
        (worker, completed, message): QueuedCompletion,
    ) -> Result<(), StoreError> {
        let next = self.outcome(&started, &completed);
        if let Err(error) = self.write_through(Some(&started), next.clone()).await {
            self.stash.push_front(Event::Directive {
                worker,
                body: DirectiveBody::Completed(completed),
                message,
            });
            return Err(error);
        }
        trace!("starting and completion stored together");
        ::metrics::counter!(metrics::DIRECTIVES_COALESCED).increment(1);
        if let Some(parent) = &started.parent_run_id {
            self.engine.deliver(
                parent.clone(),
                Event::ChildStarted(Box::new(started.clone())),
            );
        }
        if let Err(error) = message.ack().await {
            debug!(%error, "could not acknowledge a directive");
        }
        if let Some(worker) = &started.worker_id {
            self.free_slot(worker, started.attempt).await;
        }
        self.after_attempt(&next).await;
        Ok(())
    }

    /// The record after an attempt's completion.
    fn outcome(&self, record: &RunRecord, completed: &Completed) -> RunRecord {
        let now = Timestamp::now();
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

    async fn completed(
        &mut self,
        record: &RunRecord,
        completed: &Completed,
    ) -> Result<(), StoreError> {
        let next = self.outcome(record, completed);
        self.write(next.clone()).await?;
        if let Some(worker) = &record.worker_id {
            self.free_slot(worker, record.attempt).await;
        }
        self.after_attempt(&next).await;
        Ok(())
    }

    // ---------------------------------------------------------------- other events

    async fn on_max_wait(&mut self, message: jetstream::Message) {
        loop {
            let record = match self.load().await {
                Ok(Some(stored)) => stored.record.clone(),
                Ok(None) => break,
                Err(error) => {
                    warn!(%error, "could not read the run for its wait timer");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                        .await;
                    return;
                }
            };
            let Some(next) = transitions::expire_wait(&record, Timestamp::now()) else {
                break;
            };
            match self.write(next.clone()).await {
                Ok(()) => {
                    info!(run = %self.run, "not placed within maxWaitTimeMs");
                    self.ended(&next).await;
                    break;
                }
                Err(StoreError::Conflict) => continue,
                Err(error) => {
                    warn!(%error, "could not expire the run");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                        .await;
                    return;
                }
            }
        }
        if let Err(error) = message.ack().await {
            debug!(%error, "could not acknowledge a timer");
        }
    }

    async fn on_cancel(&mut self, reason: &str) -> Result<RunRecord, CancelError> {
        loop {
            let record = match self.load().await {
                Ok(Some(stored)) => stored.record.clone(),
                Ok(None) => return Err(CancelError::UnknownRun(self.run.clone())),
                Err(error) => return Err(error.into()),
            };
            let Some(next) = transitions::cancel(&record, reason, Timestamp::now()) else {
                return Ok(record);
            };
            match self.write(next.clone()).await {
                Ok(()) => {
                    info!(run = %self.run, reason, "run cancelled");
                    if matches!(record.status, RunStatus::Assigned | RunStatus::Running) {
                        self.send_cancel(&record, reason).await;
                        if let Some(worker) = &record.worker_id {
                            self.free_slot(worker, record.attempt).await;
                        }
                    }
                    self.ended(&next).await;
                    return Ok(next);
                }
                Err(StoreError::Conflict) => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }

    async fn on_worker_gone(&mut self, gone: Gone) {
        if self.reserved.as_ref() == Some(&gone.worker) {
            self.reserved = None;
        }
        let Ok(Some(stored)) = self.load().await else {
            return;
        };
        let record = &stored.record;
        let held_there = matches!(record.status, RunStatus::Assigned | RunStatus::Running)
            && record.worker_id.as_ref() == Some(&gone.worker)
            && record.incarnation == Some(gone.incarnation);
        if held_there {
            info!(run = %self.run, worker = %gone.worker, reason = %gone.reason, "worker gone, taking the run back");
            self.take_back(&gone.reason, false).await;
        }
    }

    // ---------------------------------------------------------------- workflows

    async fn on_child_request(
        &mut self,
        spec: RunSpec,
        worker: WorkerId,
        trace: TraceContext,
    ) -> Result<Accepted, ChildError> {
        let parent = match self.reload().await {
            Ok(Some(stored)) => stored.record.clone(),
            Ok(None) => return Err(ChildError::UnknownParent(self.run.clone())),
            Err(error) => return Err(ChildError::Unavailable(error)),
        };
        let running_here = matches!(parent.status, RunStatus::Assigned | RunStatus::Running)
            && parent.worker_id.as_ref() == Some(&worker);
        if !running_here {
            return Err(ChildError::ParentNotRunning {
                parent: self.run.clone(),
                status: parent.status,
                worker,
                holder: parent.worker_id,
            });
        }
        let local = spec.local_run_id.clone();
        let submitted = self
            .engine
            .intake
            .submit(
                spec,
                Origin::Child {
                    worker: worker.clone(),
                    parent: self.run.clone(),
                },
                trace,
            )
            .await?;
        let child = submitted.record;
        if !child.status.is_terminal() {
            self.track_child(&child.run_id).await;
        }
        if submitted.existed {
            // A retried parent asks again: tell it at once what it would have heard.
            let Some(local) = local else {
                return Ok(submitted.accepted);
            };
            let engine = Arc::clone(&self.engine);
            let parent = parent.clone();
            let accepted = submitted.accepted.clone();
            self.engine.tasks.spawn(async move {
                // After the reply, so the worker knows the runID first.
                tokio::task::yield_now().await;
                replay_child(&engine, &parent, &child, &local).await;
                let _ = accepted;
            });
        }
        Ok(submitted.accepted)
    }

    /// Adds a child to this run's open children, and reports the worker HANGING.
    async fn track_child(&mut self, child: &RunId) {
        loop {
            let Some(record) = self.record().cloned() else {
                return;
            };
            if record.open_children.contains(child) {
                return;
            }
            let mut next = record.clone();
            next.open_children.push(child.clone());
            match self.write(next).await {
                Ok(()) => {
                    self.report_waiting().await;
                    return;
                }
                Err(StoreError::Conflict) => continue,
                Err(error) => {
                    warn!(%error, child = %child, "could not record a child");
                    return;
                }
            }
        }
    }

    async fn report_waiting(&self) {
        let Some(stored) = &self.current else {
            return;
        };
        let record = &stored.record;
        let Some(worker) = &record.worker_id else {
            return;
        };
        if !matches!(record.status, RunStatus::Assigned | RunStatus::Running) {
            return;
        }
        let report = Waiting {
            worker_id: worker.clone(),
            run_id: record.run_id.clone(),
            attempt: record.attempt,
            waiting: !record.open_children.is_empty(),
            version: stored.revision,
        };
        self.engine.registry.waiting(&report).await;
    }

    async fn on_child_started(&mut self, child: &RunRecord) {
        let Ok(Some(stored)) = self.load().await else {
            return;
        };
        let parent = stored.record.clone();
        if let Some(local) = &child.local_run_id {
            notify_child_started(&self.engine, &parent, child, local).await;
        }
    }

    async fn on_child_ended(&mut self, child: &RunRecord) {
        loop {
            let parent = match self.load().await {
                Ok(Some(stored)) => stored.record.clone(),
                _ => return,
            };
            if parent.open_children.contains(&child.run_id) {
                let mut next = parent.clone();
                next.open_children.retain(|open| open != &child.run_id);
                match self.write(next).await {
                    Ok(()) => self.report_waiting().await,
                    Err(StoreError::Conflict) => continue,
                    Err(error) => {
                        warn!(%error, "could not record a child's end");
                        return;
                    }
                }
            }
            break;
        }
        let Some(parent) = self.record().cloned() else {
            return;
        };
        if let Some(local) = &child.local_run_id {
            notify_child_completed(&self.engine, &parent, child, local).await;
        }
    }
}

/// Forwards a child's start to the worker running its parent.
async fn notify_child_started(
    engine: &Engine,
    parent: &RunRecord,
    child: &RunRecord,
    local: &drover_protocol::LocalRunId,
) {
    let (Some(worker), Some(child_worker)) = (&parent.worker_id, &child.worker_id) else {
        return;
    };
    if !matches!(parent.status, RunStatus::Assigned | RunStatus::Running) {
        return;
    }
    let starting = ChildStarting {
        run_id: child.run_id.clone(),
        local_run_id: local.clone(),
        routine_id: child.routine_id.clone(),
        worker_id: child_worker.clone(),
    };
    publish(engine, worker, keys::STARTING, encode(&starting), parent).await;
}

/// Forwards a child's end to the worker running its parent.
async fn notify_child_completed(
    engine: &Engine,
    parent: &RunRecord,
    child: &RunRecord,
    local: &drover_protocol::LocalRunId,
) {
    let Some(worker) = &parent.worker_id else {
        return;
    };
    if !matches!(parent.status, RunStatus::Assigned | RunStatus::Running) {
        return;
    }
    let completed = ChildCompleted {
        run_id: child.run_id.clone(),
        local_run_id: local.clone(),
        outcome: if child.status == RunStatus::Succeeded {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        },
        result: child.result.clone(),
        error: child.error.clone(),
        status: Some(child.status),
        failure_reason: child.failure_reason,
    };
    publish(engine, worker, keys::COMPLETED, encode(&completed), parent).await;
}

/// Tells a retried parent about a memoized child: its start, and its end if it ended.
async fn replay_child(
    engine: &Engine,
    parent: &RunRecord,
    child: &RunRecord,
    local: &drover_protocol::LocalRunId,
) {
    if child.started_at.is_some() || child.status.is_terminal() {
        notify_child_started(engine, parent, child, local).await;
    }
    if child.status.is_terminal() {
        notify_child_completed(engine, parent, child, local).await;
    }
}

async fn publish(engine: &Engine, worker: &WorkerId, key: &str, body: Bytes, parent: &RunRecord) {
    let mut headers = HeaderMap::new();
    if let Some(traceparent) = &parent.traceparent {
        headers.insert(drover_protocol::trace::TRACEPARENT, traceparent.as_str());
    }
    let subject = subject::to_worker(worker, key);
    if let Err(error) = engine
        .nats
        .publish_with_headers(subject, headers, body)
        .await
    {
        warn!(worker = %worker, %error, "could not forward a child event");
    }
}

fn routine_of(message: &jetstream::Message) -> Option<drover_protocol::RoutineId> {
    subject::parse_queue(message.subject.as_str())
}

async fn wait_placement(placement: &mut Option<oneshot::Receiver<Placement>>) -> Option<Placement> {
    match placement {
        Some(receiver) => receiver.await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
