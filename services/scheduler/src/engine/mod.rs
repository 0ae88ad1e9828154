//! The leader's engine: everything that moves a run after intake.
//!
//! Each run in flight has one actor (a task) on the leader; every event about the run goes
//! to that actor, so the run's transitions happen one at a time, and each is written with
//! compare-and-set so that even two leaders could not both apply one. See
//! `docs/architecture.md` for the whole picture.

mod actor;
pub mod dispatcher;
mod fetch;
#[cfg(test)]
pub(crate) mod fixtures;
mod holdings;
mod placement;
mod queue_depth;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use async_nats::jetstream;
use async_nats::Client;
use drover_protocol::{RunId, RunRecord, Timestamp, WorkerRecord};
use drover_service_kit::kv_cache::{Change, KvCache};
use drover_service_kit::Settings;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use actor::outbox::Outbox;
pub use actor::Event;
use dispatcher::{Dispatcher, Placement};

use crate::intake::{Intake, Placer, Reservation};
use crate::metrics::QueueDepth;
use crate::store::{RunStore, StoreError};

/// Shared state of the leader's engine.
pub struct Engine {
    pub(crate) settings: Arc<Settings>,
    pub(crate) nats: Client,
    pub(crate) js: jetstream::Context,
    pub(crate) store: RunStore,
    pub(crate) intake: Intake,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) holdings: holdings::HoldingsReporter,
    pub(crate) outbox: Outbox,
    pub(crate) queue_depth: QueueDepth,
    /// The workers' records as the bucket's watch last delivered them: a worker's current
    /// incarnation here is at least as new as in the dispatcher's view.
    pub(crate) workers: Arc<KvCache<WorkerRecord>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    actors: Mutex<HashMap<RunId, mpsc::UnboundedSender<Event>>>,
    /// Runs placed at intake whose queue message has not reached their actor yet: such a
    /// message is not an older run on its way to ask for a slot, and, arriving before the
    /// record, need not read it back (it comes from the actor's own mailbox).
    placing: Mutex<HashSet<RunId>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine that runs until `shutdown` (the end of leadership) is cancelled.
    pub fn new(
        settings: Arc<Settings>,
        nats: Client,
        store: RunStore,
        intake: Intake,
        workers: Arc<KvCache<WorkerRecord>>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let js = jetstream::new(nats.clone());
        let dispatcher = Dispatcher::with_strategies(
            settings.pickup_strategy,
            settings.pickup_strategies.clone(),
        );
        Arc::new(Self {
            holdings: holdings::HoldingsReporter::new(nats.clone()),
            outbox: Outbox::new(nats.clone()),
            settings,
            nats,
            js,
            store,
            intake,
            dispatcher,
            queue_depth: QueueDepth::default(),
            workers,
            shutdown,
            tasks: TaskTracker::new(),
            actors: Mutex::new(HashMap::new()),
            placing: Mutex::new(HashSet::new()),
        })
    }

    /// Hands an event to the run's actor, starting one if the run has none.
    pub fn deliver(self: &Arc<Self>, run: RunId, event: Event) {
        let mut actors = self
            .actors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let event = match actors.get(&run) {
            Some(sender) => match sender.send(event) {
                Ok(()) => return,
                // The actor ended without deregistering (it panicked): start anew.
                Err(mpsc::error::SendError(event)) => event,
            },
            None => event,
        };
        actors.remove(&run);
        self.start_actor(&mut actors, run, event);
    }

    fn start_actor(
        self: &Arc<Self>,
        actors: &mut HashMap<RunId, mpsc::UnboundedSender<Event>>,
        run: RunId,
        event: Event,
    ) {
        let (sender, receiver) = mpsc::unbounded_channel();
        // The receiver is alive: sending cannot fail.
        let _ = sender.send(event);
        actors.insert(run.clone(), sender);
        ::metrics::gauge!(crate::metrics::ACTORS).set(actors.len() as f64);
        let engine = Arc::clone(self);
        // Boxed: an actor's future is several kilobytes, and tokio would otherwise copy it
        // into the task and again when the task ends (the largest cost in a profile).
        self.tasks.spawn(Box::pin(async move {
            actor::Actor::new(engine, run, receiver).run().await;
        }));
    }

    /// Hands an event to the run's actor if it has one; otherwise drops it.
    fn deliver_if_active(&self, run: &RunId, event: Event) {
        let actors = self
            .actors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = actors.get(run) {
            let _ = sender.send(event);
        }
    }

    /// Removes a finished actor, unless events arrived for it meanwhile.
    fn retire(&self, run: &RunId, receiver: &mut mpsc::UnboundedReceiver<Event>) -> bool {
        let mut actors = self
            .actors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !receiver.is_empty() {
            return false;
        }
        actors.remove(run);
        receiver.close();
        ::metrics::gauge!(crate::metrics::ACTORS).set(actors.len() as f64);
        true
    }

    fn placing(&self) -> std::sync::MutexGuard<'_, HashSet<RunId>> {
        self.placing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True while the intake places `run` (see [`IntakePlacer`]).
    pub(crate) fn is_placing(&self, run: &RunId) -> bool {
        self.placing().contains(run)
    }

    /// `run`, placed at intake, has its queue message, or ended, or was never placed.
    pub(crate) fn placed_at_intake(&self, run: &RunId) {
        self.placing().remove(run);
    }

    /// Runs the engine until leadership ends: follows the workers, fetches runs, and reads
    /// directives and timers.
    pub async fn lead(self: Arc<Self>) -> anyhow::Result<()> {
        let workers = Arc::clone(&self.workers);
        let mut changes = workers.subscribe();
        let mut stored = self.intake.stored();
        for record in workers.values() {
            self.on_worker(record);
        }
        {
            let engine = Arc::clone(&self);
            self.tasks
                .spawn(async move { engine.holdings.run(engine.shutdown.clone()).await });
        }
        self.tasks.spawn(fetch::fetch_queues(Arc::clone(&self)));
        self.tasks.spawn(fetch::read_directives(Arc::clone(&self)));
        self.tasks.spawn(fetch::read_timers(Arc::clone(&self)));
        self.tasks
            .spawn(queue_depth::report(Arc::clone(&self), Arc::clone(&workers)));
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                change = changes.recv() => match change {
                    Ok(Change::Put(_, record)) => self.on_worker(record),
                    Ok(Change::Deleted(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        debug!(missed, "worker changes lagged, resynchronising");
                        for record in workers.values() {
                            self.on_worker(record);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                // A run stored by this process's intake: its actor, if the queue message
                // already reached it, need not read the record back.
                Ok(run) = stored.recv() => {
                    self.deliver_if_active(&run.record.run_id.clone(), Event::Stored(Box::new(run)));
                }
            }
        }
        self.tasks.close();
        self.tasks.wait().await;
        Ok(())
    }

    fn on_worker(self: &Arc<Self>, record: Arc<WorkerRecord>) {
        for gone in self.dispatcher.on_worker(record) {
            self.deliver(gone.run.clone(), Event::WorkerGone(gone));
        }
    }
}

/// Places runs at intake while an engine leads (see [`Placer`]). It holds the engine weakly:
/// the engine holds the intake.
#[derive(Debug)]
pub struct IntakePlacer(Weak<Engine>);

impl IntakePlacer {
    /// A placer for `engine`'s term.
    pub fn new(engine: &Arc<Engine>) -> Self {
        Self(Arc::downgrade(engine))
    }
}

impl Placer for IntakePlacer {
    fn reserve(&self, record: &RunRecord) -> Option<Box<dyn Reservation>> {
        let engine = self.0.upgrade()?;
        if engine.shutdown.is_cancelled() {
            return None;
        }
        let placement =
            engine
                .dispatcher
                .place_now(&record.run_id, &record.routine_id, &record.conditions)?;
        engine.placing().insert(record.run_id.clone());
        Some(Box::new(Reserved {
            engine,
            run: record.run_id.clone(),
            placement: Some(placement),
        }))
    }

    fn queued(&self, record: &RunRecord) {
        if let Some(engine) = self.0.upgrade() {
            engine.dispatcher.queued(&record.routine_id, true);
        }
    }

    fn unqueued(&self, record: &RunRecord) {
        if let Some(engine) = self.0.upgrade() {
            engine.dispatcher.queued(&record.routine_id, false);
        }
    }
}

/// A slot reserved at intake; given back if dropped unassigned.
struct Reserved {
    engine: Arc<Engine>,
    run: RunId,
    placement: Option<Placement>,
}

impl Reservation for Reserved {
    fn assign(
        mut self: Box<Self>,
        record: RunRecord,
    ) -> oneshot::Receiver<Result<u64, StoreError>> {
        let (done, answer) = oneshot::channel();
        if let Some(placement) = self.placement.take() {
            let assigned = crate::transitions::assign(
                &record,
                &placement.worker,
                placement.incarnation,
                Timestamp::now(),
            );
            self.engine.deliver(
                self.run.clone(),
                Event::PlaceAtIntake {
                    pending: Box::new(record),
                    assigned: Box::new(assigned),
                    was_idle: placement.was_idle,
                    done,
                },
            );
        }
        answer
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(placement) = self.placement.take() {
            self.engine.placed_at_intake(&self.run);
            self.engine.dispatcher.release(&placement.worker, &self.run);
        }
    }
}
