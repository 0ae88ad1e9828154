//! One run's actor on the leader: it holds the run's queue message (the lease), keeps its
//! timers, and applies every transition of the run, one at a time, under compare-and-set.
//!
//! An actor starts when the run's queue message is fetched, or when an event arrives for a
//! run that has none (a directive right after a leader change, say); such a *detached*
//! actor applies its events and ends, and the run is taken in hand again when its queue
//! message comes back.
//!
//! The parts: [`lease`] holds the queue message and takes the run in hand, [`deadlines`]
//! keeps the timers, [`assign`] places the run on a worker, [`directives`] applies the
//! worker's `starting` and `completed`, [`attempt`] ends attempts (retry, reassign, time
//! out, cancel), [`workflow`] handles children, and [`outbox`] sends to workers. Each
//! decides with pure functions over the record, tested with injected time, and writes with
//! [`RunStore::mutate`](crate::store::RunStore::mutate).

mod assign;
mod attempt;
mod deadlines;
mod directives;
mod lease;
pub(crate) mod outbox;
mod workflow;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use drover_protocol::{Accepted, RunId, RunRecord, RunSpec, WorkerId};
use drover_service_kit::Backoff;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

pub use directives::DirectiveBody;

use self::deadlines::Deadlines;
use super::dispatcher::{Gone, Placement};
use super::Engine;
use crate::error::{CancelError, ChildError};
use crate::intake::TraceContext;
use crate::store::{Decision, MutateError, Mutated, StoreError, Stored};

/// Pause before trying again when the run store did not answer.
const STORE_RETRY: Duration = Duration::from_millis(500);

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
    /// This process's intake queued the run and reserved a slot for it: create the record
    /// as ASSIGNED, answer `done`, and send the assignment.
    PlaceAtIntake {
        /// The run as queued.
        pending: Box<RunRecord>,
        /// The run assigned to the reserved slot.
        assigned: Box<RunRecord>,
        /// The worker held nothing before (see [`Placement::was_idle`]).
        was_idle: bool,
        /// Whether the record was created, and its revision.
        done: oneshot::Sender<Result<u64, StoreError>>,
    },
}

pub(super) struct Actor {
    engine: Arc<Engine>,
    run: RunId,
    receiver: mpsc::UnboundedReceiver<Event>,
    lease: Option<jetstream::Message>,
    /// The run was placed at intake and is in this actor's hands before its queue message
    /// (the lease) arrived; the message may arrive later, or never if the run ends first.
    unleased: bool,
    current: Option<Stored>,
    placement: Option<oneshot::Receiver<Placement>>,
    reserved: Option<WorkerId>,
    deadlines: Deadlines,
    /// Pauses while waiting for the record to appear.
    reload_backoff: Backoff,
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
            unleased: false,
            current: None,
            placement: None,
            reserved: None,
            deadlines: Deadlines::default(),
            reload_backoff: lease::reload_backoff(),
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
            self.set_unleased(false);
            self.engine.dispatcher.withdraw(&self.run);
        }
        .instrument(span)
        .await
    }

    /// Nothing left to do: no run in hand, no slot awaited, nothing to load.
    fn idle(&self) -> bool {
        !self.in_hand() && self.placement.is_none() && self.deadlines.reload.is_none()
    }

    /// Marks the run as held without its queue message (placed at intake), or no longer.
    /// The dispatcher counts such runs into their routine's demand, so that their queue
    /// messages are fetched (and join) at once rather than one pull at a time ahead of the
    /// runs that wait behind them in the queue.
    pub(super) fn set_unleased(&mut self, unleased: bool) {
        if self.unleased == unleased {
            return;
        }
        self.unleased = unleased;
        if !unleased {
            self.engine.placed_at_intake(&self.run);
        }
        if let Some(record) = self.current.as_ref().map(|stored| &stored.record) {
            self.engine
                .dispatcher
                .unleased(&record.routine_id, unleased);
        }
    }

    /// True while this actor holds the run: by its queue message, or since it placed it at
    /// intake.
    fn in_hand(&self) -> bool {
        self.lease.is_some() || self.unleased
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
            Event::PlaceAtIntake {
                pending,
                assigned,
                was_idle,
                done,
            } => {
                self.on_place_at_intake(*pending, *assigned, was_idle, done)
                    .await;
            }
        }
    }

    // ---------------------------------------------------------------- record access

    /// The record, read from the bucket unless this actor has it.
    async fn load(&mut self) -> Result<Option<&Stored>, StoreError> {
        if self.current.is_none() {
            self.current = self.engine.store.get(&self.run).await?;
        }
        Ok(self.current.as_ref())
    }

    /// The record, read afresh.
    async fn reload(&mut self) -> Result<Option<&Stored>, StoreError> {
        self.current = self.engine.store.get(&self.run).await?;
        Ok(self.current.as_ref())
    }

    /// Applies `change` to the record under compare-and-set (see
    /// [`RunStore::mutate`](crate::store::RunStore::mutate)), keeping this actor's copy,
    /// and records the spans the write ends (see [`crate::spans`]).
    async fn mutate<E>(
        &mut self,
        change: impl FnMut(&RunRecord) -> Result<Decision, E>,
    ) -> Result<Mutated, MutateError<E>> {
        let dispatcher = &self.engine.dispatcher;
        let run = &self.run;
        let mutated = self
            .engine
            .store
            .mutate_then(run, &mut self.current, change, |before, after| {
                // The worker's slot is free before anyone hears that the attempt ended.
                if let (true, Some(worker)) = (attempt::ended(before, after), &before.worker_id) {
                    dispatcher.release(worker, run);
                }
            })
            .await?;
        if mutated.written {
            crate::spans::record(&mutated.before, &mutated.after);
        }
        Ok(mutated)
    }

    fn record(&self) -> Option<&RunRecord> {
        self.current.as_ref().map(|stored| &stored.record)
    }

    /// Sends letters to workers; the outbox is cheap to clone, so this borrows nothing.
    async fn send(&self, letters: impl IntoIterator<Item = outbox::Letter>) {
        self.engine.outbox.send_all(letters).await;
    }

    /// Tries again after [`STORE_RETRY`], from a fresh read.
    fn retry_later(&mut self) {
        self.deadlines.reload = Some(Instant::now() + STORE_RETRY);
    }
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
