//! Placement: which worker gets which run (DESIGN §6.3 items 3 and 6).
//!
//! The dispatcher keeps the leader's view of the workers: each worker's record from the
//! registry, plus the runs this leader has reserved on it. A run's actor asks for a slot;
//! the request is answered at once when a matching worker is free, chosen by the routine's
//! pickup strategy, or waits in FIFO order until one frees up (the slot that frees up goes
//! to the oldest waiting run it matches, whatever the strategy). For each routine the
//! dispatcher publishes a *demand* (free matching slots minus runs already waiting or on
//! their way), which sizes the pull requests on that routine's queue: no timer is involved
//! anywhere, and one routine's backlog never takes another routine's slots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use drover_protocol::{Conditions, Incarnation, RoutineId, RunId, WorkerId, WorkerRecord};
use drover_service_kit::{PickupStrategies, PickupStrategy};
use tokio::sync::{oneshot, watch};

use super::placement::{self, Pick, WorkerView};
pub use super::placement::{Gone, Placement};

struct Waiter {
    run: RunId,
    routine: RoutineId,
    conditions: Conditions,
    reply: oneshot::Sender<Placement>,
}

/// The live workers that serve a routine, and how to pick among them.
#[derive(Default)]
struct Serving {
    workers: HashSet<WorkerId>,
    /// Resolved from the settings when the routine's first run asks for a slot: kept here
    /// so that placing a run looks the routine up once.
    pickup: Option<Pickup>,
}

/// A routine's pickup strategy, and the worker chosen last for it (where round-robin goes
/// on from).
struct Pickup {
    strategy: PickupStrategy,
    last: Option<WorkerId>,
}

impl Pickup {
    fn pick(&self) -> Pick<'_> {
        match self.strategy {
            PickupStrategy::LeastLoaded => Pick::LeastLoaded,
            PickupStrategy::RoundRobin => Pick::RoundRobin {
                last: self.last.as_ref(),
            },
            PickupStrategy::FirstFit => Pick::FirstFit,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// The strategy of routines without one of their own.
    strategy: PickupStrategy,
    /// The routines with one of their own.
    strategies: PickupStrategies,
    workers: HashMap<WorkerId, WorkerView>,
    serving: HashMap<RoutineId, Serving>,
    /// Free slots per routine, over workers serving it.
    free: HashMap<RoutineId, usize>,
    waiting: BTreeMap<u64, Waiter>,
    waiting_index: HashMap<RunId, u64>,
    waiting_per_routine: HashMap<RoutineId, usize>,
    incoming: HashMap<RoutineId, usize>,
    /// Runs placed at intake whose queue message has not reached them yet.
    unleased: HashMap<RoutineId, usize>,
    /// Runs this leader's intake queued as PENDING and the fetcher has not fetched yet:
    /// older than any new submission, so they go first.
    queued: HashMap<RoutineId, usize>,
    next_seq: u64,
    demand: HashMap<RoutineId, watch::Sender<usize>>,
    routines_tx: Option<watch::Sender<HashSet<RoutineId>>>,
}

/// The leader's placement state.
pub struct Dispatcher {
    inner: Mutex<Inner>,
    routines_rx: watch::Receiver<HashSet<RoutineId>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Dispatcher {
    /// An empty dispatcher that places every routine's runs on the least loaded worker.
    pub fn new() -> Self {
        Self::with_strategies(PickupStrategy::default(), PickupStrategies::default())
    }

    /// An empty dispatcher that places runs by `strategy`, except for the routines that
    /// `strategies` gives one of their own.
    pub fn with_strategies(strategy: PickupStrategy, strategies: PickupStrategies) -> Self {
        let (routines_tx, routines_rx) = watch::channel(HashSet::new());
        Self {
            inner: Mutex::new(Inner {
                strategy,
                strategies,
                routines_tx: Some(routines_tx),
                ..Inner::default()
            }),
            routines_rx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The routines that live workers serve; changes as workers come and go.
    pub fn routines(&self) -> watch::Receiver<HashSet<RoutineId>> {
        self.routines_rx.clone()
    }

    /// How many more runs of `routine` could be placed right now.
    pub fn demand(&self, routine: &RoutineId) -> watch::Receiver<usize> {
        let mut inner = self.lock();
        let value = inner.demand_value(routine);
        inner
            .demand
            .entry(routine.clone())
            .or_insert_with(|| watch::channel(value).0)
            .subscribe()
    }

    /// A run of `routine` was fetched and is on its way to ask for placement.
    pub fn incoming(&self, routine: &RoutineId) {
        let mut inner = self.lock();
        if let Some(queued) = inner.queued.get_mut(routine) {
            *queued = queued.saturating_sub(1);
        }
        *inner.incoming.entry(routine.clone()).or_default() += 1;
        inner.publish_demand(routine);
    }

    /// A run of `routine` placed at intake is held without its queue message (`true`), or
    /// no longer (`false`): its message is fetched as though it were demand.
    pub fn unleased(&self, routine: &RoutineId, unleased: bool) {
        let mut inner = self.lock();
        let count = inner.unleased.entry(routine.clone()).or_default();
        if unleased {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        inner.publish_demand(routine);
    }

    /// A fetched run no longer counts as on its way (it asked, or needs no placement).
    pub fn arrived(&self, routine: &RoutineId) {
        let mut inner = self.lock();
        if let Some(count) = inner.incoming.get_mut(routine) {
            *count = count.saturating_sub(1);
        }
        inner.publish_demand(routine);
    }

    /// Asks for a slot. The answer comes at once when a matching worker is free, else when
    /// one frees up; the run then holds a reservation on that worker until [`Self::release`].
    pub fn request(
        &self,
        run: &RunId,
        routine: &RoutineId,
        conditions: &Conditions,
    ) -> oneshot::Receiver<Placement> {
        let (reply, receiver) = oneshot::channel();
        let mut inner = self.lock();
        inner.remove_waiter(run);
        if let Some(placement) = inner.place(run, routine, conditions) {
            let _ = reply.send(placement);
            return receiver;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.waiting.insert(
            seq,
            Waiter {
                run: run.clone(),
                routine: routine.clone(),
                conditions: conditions.clone(),
                reply,
            },
        );
        inner.waiting_index.insert(run.clone(), seq);
        *inner
            .waiting_per_routine
            .entry(routine.clone())
            .or_default() += 1;
        inner.publish_demand(routine);
        receiver
    }

    /// A slot for a run just submitted, if one is free and no older run of `routine` is
    /// ahead of it: waiting for a slot, fetched and on its way to ask, or queued by this
    /// leader's intake and not fetched yet. The run then holds a reservation, as with
    /// [`Self::request`].
    pub fn place_now(
        &self,
        run: &RunId,
        routine: &RoutineId,
        conditions: &Conditions,
    ) -> Option<Placement> {
        let mut inner = self.lock();
        let ahead = [&inner.waiting_per_routine, &inner.incoming, &inner.queued]
            .iter()
            .map(|counts| counts.get(routine).copied().unwrap_or(0))
            .sum::<usize>();
        if ahead > 0 {
            return None;
        }
        inner.place(run, routine, conditions)
    }

    /// This leader's intake queues a run of `routine` as PENDING (`true`): until it is
    /// fetched, new submissions of the routine are not placed ahead of it. `false`: it
    /// could not be queued after all.
    pub fn queued(&self, routine: &RoutineId, queued: bool) {
        let mut inner = self.lock();
        let count = inner.queued.entry(routine.clone()).or_default();
        if queued {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
    }

    /// Withdraws a waiting request (the run was cancelled or expired).
    pub fn withdraw(&self, run: &RunId) {
        let mut inner = self.lock();
        if let Some(routine) = inner.remove_waiter(run) {
            inner.publish_demand(&routine);
        }
    }

    /// Records a run this leader found already placed on a worker (after a leader change).
    /// Returns false when that placement is no longer valid (the worker is gone or has
    /// registered again), in which case the run must be taken back.
    pub fn adopt(&self, worker: &WorkerId, incarnation: Incarnation, run: &RunId) -> bool {
        let mut inner = self.lock();
        let Some(view) = inner.workers.get(worker) else {
            return false;
        };
        if view.record.incarnation != incarnation || !view.record.is_live() {
            return false;
        }
        inner.change_reservation(worker, |view| view.reserve(run));
        true
    }

    /// The run no longer occupies its slot on `worker`.
    pub fn release(&self, worker: &WorkerId, run: &RunId) {
        let mut inner = self.lock();
        if !inner.workers.contains_key(worker) {
            return;
        }
        let now = std::time::Instant::now();
        inner.change_reservation(worker, |view| view.release(run, now));
        inner.serve_waiters(worker);
    }

    /// Takes in a worker record. Returns the reserved runs whose placement it ends.
    pub fn on_worker(&self, record: Arc<WorkerRecord>) -> Vec<Gone> {
        let mut inner = self.lock();
        let worker = record.worker_id.clone();
        if placement::outdated(inner.workers.get(&worker), &record) {
            return Vec::new();
        }
        let previous = inner.workers.remove(&worker);
        let mut routines = record.routines.clone();
        if let Some(previous) = &previous {
            inner.subtract(previous);
            routines.extend(previous.record.routines.iter().cloned());
        }
        let now = std::time::Instant::now();
        let (view, gone) =
            placement::renew(previous, record, |record| inner.lowest_pass(record), now);
        inner.add(&worker, view);
        inner.publish_for(&routines);
        inner.serve_waiters(&worker);
        gone
    }
}

impl Inner {
    fn demand_value(&self, routine: &RoutineId) -> usize {
        let free = self.free.get(routine).copied().unwrap_or(0);
        let unleased = self.unleased.get(routine).copied().unwrap_or(0);
        let waiting = self.waiting_per_routine.get(routine).copied().unwrap_or(0);
        let incoming = self.incoming.get(routine).copied().unwrap_or(0);
        (free + unleased).saturating_sub(waiting + incoming)
    }

    fn publish_demand(&mut self, routine: &RoutineId) {
        let value = self.demand_value(routine);
        if let Some(sender) = self.demand.get(routine) {
            sender.send_if_modified(|current| {
                let changed = *current != value;
                *current = value;
                changed
            });
        }
    }

    fn publish_routines(&self) {
        let routines: HashSet<RoutineId> = self
            .serving
            .iter()
            .filter(|(_, serving)| !serving.workers.is_empty())
            .map(|(routine, _)| routine.clone())
            .collect();
        if let Some(sender) = &self.routines_tx {
            sender.send_if_modified(|current| {
                let changed = *current != routines;
                *current = routines;
                changed
            });
        }
    }

    fn subtract(&mut self, view: &WorkerView) {
        let free = view.free();
        for routine in &view.record.routines {
            if let Some(total) = self.free.get_mut(routine) {
                *total = total.saturating_sub(free);
            }
            if let Some(serving) = self.serving.get_mut(routine) {
                serving.workers.remove(&view.record.worker_id);
            }
        }
    }

    fn add(&mut self, worker: &WorkerId, view: WorkerView) {
        let free = view.free();
        let live = view.record.is_live();
        for routine in &view.record.routines {
            *self.free.entry(routine.clone()).or_default() += free;
            if live {
                self.serving
                    .entry(routine.clone())
                    .or_default()
                    .workers
                    .insert(worker.clone());
            }
        }
        self.workers.insert(worker.clone(), view);
    }

    /// Publishes what changed for `routines` once a worker's view is settled; never in
    /// between a subtract and an add, so that watchers never see a worker vanish briefly.
    fn publish_for(&mut self, routines: &[RoutineId]) {
        for routine in routines {
            self.publish_demand(routine);
        }
        self.publish_routines();
    }

    fn change_reservation(&mut self, worker: &WorkerId, change: impl FnOnce(&mut WorkerView)) {
        let Some(mut view) = self.workers.remove(worker) else {
            return;
        };
        self.subtract(&view);
        change(&mut view);
        let routines = view.record.routines.clone();
        self.add(worker, view);
        self.publish_for(&routines);
    }

    /// Reserves a slot on `worker` for `run`; the worker moves back in the line.
    fn reserve(&mut self, worker: &WorkerId, run: &RunId) -> Option<Placement> {
        let placement = self.workers.get(worker)?.placement();
        self.change_reservation(worker, |view| {
            view.reserve(run);
            view.advance();
        });
        Some(placement)
    }

    /// Reserves a slot for `run` on the worker the routine's strategy picks, if one is free.
    fn place(
        &mut self,
        run: &RunId,
        routine: &RoutineId,
        conditions: &Conditions,
    ) -> Option<Placement> {
        let (worker, strategy) = self.best_worker(routine, conditions)?;
        let placement = self.reserve(&worker, run)?;
        if strategy == PickupStrategy::RoundRobin {
            self.rotate(routine, &worker);
        }
        Some(placement)
    }

    /// The worker for a run of `routine`, and the routine's strategy.
    fn best_worker(
        &mut self,
        routine: &RoutineId,
        conditions: &Conditions,
    ) -> Option<(WorkerId, PickupStrategy)> {
        let serving = self.serving.get_mut(routine)?;
        let pickup = serving.pickup.get_or_insert_with(|| Pickup {
            strategy: self.strategies.get(routine).unwrap_or(self.strategy),
            last: None,
        });
        let strategy = pickup.strategy;
        let views = serving
            .workers
            .iter()
            .filter_map(|worker| self.workers.get(worker));
        placement::choose(views, routine, conditions, pickup.pick())
            .map(|view| (view.record.worker_id.clone(), strategy))
    }

    /// A run of `routine` went to `worker`: round-robin goes on from there.
    fn rotate(&mut self, routine: &RoutineId, worker: &WorkerId) {
        let pickup = self
            .serving
            .get_mut(routine)
            .and_then(|serving| serving.pickup.as_mut());
        if let Some(pickup) = pickup {
            if pickup.strategy == PickupStrategy::RoundRobin {
                pickup.last = Some(worker.clone());
            }
        }
    }

    /// The lowest pass among the live workers that share a routine with `record`: where a
    /// worker new to this leader starts. 0 when it shares none.
    fn lowest_pass(&self, record: &WorkerRecord) -> u128 {
        record
            .routines
            .iter()
            .filter_map(|routine| self.serving.get(routine))
            .flat_map(|serving| &serving.workers)
            .filter(|worker| **worker != record.worker_id)
            .filter_map(|worker| self.workers.get(worker))
            .map(|view| view.pass)
            .min()
            .unwrap_or(0)
    }

    fn remove_waiter(&mut self, run: &RunId) -> Option<RoutineId> {
        let seq = self.waiting_index.remove(run)?;
        let waiter = self.waiting.remove(&seq)?;
        if let Some(count) = self.waiting_per_routine.get_mut(&waiter.routine) {
            *count = count.saturating_sub(1);
        }
        Some(waiter.routine)
    }

    /// Gives `worker`'s free slots to the oldest waiters that match it.
    fn serve_waiters(&mut self, worker: &WorkerId) {
        loop {
            let Some(view) = self.workers.get(worker) else {
                return;
            };
            if view.free() == 0 || self.waiting.is_empty() {
                return;
            }
            let found = self
                .waiting
                .iter()
                .find(|(_, waiter)| {
                    !waiter.reply.is_closed() && view.matches(&waiter.routine, &waiter.conditions)
                })
                .map(|(seq, _)| *seq);
            // Drop waiters whose actor went away.
            let closed: Vec<RunId> = self
                .waiting
                .values()
                .filter(|waiter| waiter.reply.is_closed())
                .map(|waiter| waiter.run.clone())
                .collect();
            for run in closed {
                if let Some(routine) = self.remove_waiter(&run) {
                    self.publish_demand(&routine);
                }
            }
            let Some(seq) = found else {
                return;
            };
            let Some(waiter) = self.waiting.remove(&seq) else {
                return;
            };
            self.waiting_index.remove(&waiter.run);
            if let Some(count) = self.waiting_per_routine.get_mut(&waiter.routine) {
                *count = count.saturating_sub(1);
            }
            self.rotate(&waiter.routine, worker);
            if let Some(placement) = self.reserve(worker, &waiter.run) {
                if let Err(placement) = waiter.reply.send(placement) {
                    // The actor stopped waiting in the meantime: give the slot back.
                    self.change_reservation(&placement.worker, |view| {
                        view.reserved.remove(&waiter.run);
                    });
                }
            }
            self.publish_demand(&waiter.routine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{routine, worker};
    use drover_protocol::{HeldRun, Timestamp, WorkerPhase};

    fn placed(receiver: &mut oneshot::Receiver<Placement>) -> Option<WorkerId> {
        receiver.try_recv().ok().map(|placement| placement.worker)
    }

    fn wid(id: &str) -> WorkerId {
        WorkerId::parse(id).unwrap()
    }

    fn with(strategy: PickupStrategy) -> Dispatcher {
        Dispatcher::with_strategies(strategy, PickupStrategies::default())
    }

    /// Places a run of `routine` and returns where it went, keeping its slot.
    fn hold(dispatcher: &Dispatcher, routine_id: &str) -> (RunId, WorkerId) {
        let run = RunId::generate();
        let worker =
            placed(&mut dispatcher.request(&run, &routine(routine_id), &Conditions::default()))
                .expect("a free worker");
        (run, worker)
    }

    /// Places a run of `routine`, releases it, and returns where it went.
    fn place_once(dispatcher: &Dispatcher, routine_id: &str) -> WorkerId {
        let (run, worker) = hold(dispatcher, routine_id);
        dispatcher.release(&worker, &run);
        worker
    }

    /// Runs placed one after the other, each released before the next, per worker.
    fn shares(dispatcher: &Dispatcher, routine_id: &str, runs: usize) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..runs {
            *counts
                .entry(place_once(dispatcher, routine_id).to_string())
                .or_default() += 1;
        }
        counts
    }

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect()
    }

    #[test]
    fn least_loaded_shares_evenly_among_equal_idle_workers() {
        let dispatcher = Dispatcher::new();
        for id in ["w1", "w2", "w3", "w4"] {
            dispatcher.on_worker(worker(id, &["a"], 8, &[]));
        }
        assert_eq!(
            shares(&dispatcher, "a", 400),
            counts(&[("w1", 100), ("w2", 100), ("w3", 100), ("w4", 100)])
        );
        let turns: Vec<WorkerId> = (0..4).map(|_| place_once(&dispatcher, "a")).collect();
        assert_eq!(turns, ["w1", "w2", "w3", "w4"].map(wid), "they take turns");
    }

    #[test]
    fn least_loaded_shares_in_proportion_to_capacity_when_idle() {
        let dispatcher = Dispatcher::new();
        for (id, capacity) in [("small", 2), ("medium", 4), ("large", 8)] {
            dispatcher.on_worker(worker(id, &["a"], capacity, &[]));
        }
        assert_eq!(
            shares(&dispatcher, "a", 140),
            counts(&[("small", 20), ("medium", 40), ("large", 80)])
        );
    }

    #[test]
    fn least_loaded_under_load_goes_to_the_lowest_share_in_use() {
        let dispatcher = Dispatcher::new();
        dispatcher.on_worker(worker("big", &["a"], 8, &[]));
        dispatcher.on_worker(worker("small", &["a"], 2, &[]));
        // Held runs, not released: big fills to 1/4 before small takes its first.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(hold(&dispatcher, "a").1);
        }
        assert_eq!(held, ["big", "small", "big"].map(wid));
        // big 2/8, small 1/2: big until it is at 4/8 too.
        assert_eq!(hold(&dispatcher, "a").1, "big");
        assert_eq!(hold(&dispatcher, "a").1, "big");
    }

    #[test]
    fn a_submission_is_placed_at_once_only_with_no_older_run_ahead() {
        let dispatcher = Dispatcher::new();
        dispatcher.on_worker(worker("w1", &["a"], 2, &[]));
        let (a, conditions) = (routine("a"), Conditions::default());
        let now = |dispatcher: &Dispatcher| {
            dispatcher
                .place_now(&RunId::generate(), &a, &conditions)
                .map(|placement| placement.worker)
        };
        // A run queued PENDING by this intake and not fetched yet goes first.
        dispatcher.queued(&a, true);
        assert_eq!(now(&dispatcher), None);
        // Fetched, it is on its way to ask: still ahead.
        dispatcher.incoming(&a);
        assert_eq!(now(&dispatcher), None);
        // It asked and holds a slot: nothing is ahead any more.
        let queued_run = RunId::generate();
        dispatcher.arrived(&a);
        assert!(placed(&mut dispatcher.request(&queued_run, &a, &conditions)).is_some());
        assert_eq!(now(&dispatcher), Some(wid("w1")));
        // Full: a run that has to wait holds the next submission back too.
        let mut waiting = dispatcher.request(&RunId::generate(), &a, &conditions);
        assert!(placed(&mut waiting).is_none());
        dispatcher.release(&wid("w1"), &queued_run);
        assert!(
            placed(&mut waiting).is_some(),
            "the freed slot went to the waiting run"
        );
        // A queued run that ended before it was fetched stops holding others back.
        let fresh = Dispatcher::new();
        fresh.on_worker(worker("w1", &["a"], 2, &[]));
        fresh.queued(&a, true);
        assert_eq!(now(&fresh), None);
        fresh.queued(&a, false);
        assert_eq!(now(&fresh), Some(wid("w1")));
    }

    #[test]
    fn round_robin_rotates_in_workerid_order_whatever_the_load() {
        let dispatcher = with(PickupStrategy::RoundRobin);
        for (id, capacity) in [("w3", 4), ("w1", 4), ("w2", 2)] {
            dispatcher.on_worker(worker(id, &["a"], capacity, &[]));
        }
        let order: Vec<WorkerId> = (0..7).map(|_| hold(&dispatcher, "a").1).collect();
        assert_eq!(
            order,
            ["w1", "w2", "w3", "w1", "w2", "w3", "w1"].map(wid),
            "busier and busier, still in turn"
        );
        // w2 is full: the rotation skips it.
        let order: Vec<WorkerId> = (0..3).map(|_| hold(&dispatcher, "a").1).collect();
        assert_eq!(order, ["w3", "w1", "w3"].map(wid));
    }

    #[test]
    fn first_fit_packs_onto_the_lowest_workerid_and_overflows_to_the_next() {
        let dispatcher = with(PickupStrategy::FirstFit);
        for id in ["w3", "w2", "w1"] {
            dispatcher.on_worker(worker(id, &["a"], 2, &[]));
        }
        assert_eq!(
            shares(&dispatcher, "a", 50),
            counts(&[("w1", 50)]),
            "one run at a time: all on w1"
        );
        let held: Vec<(RunId, WorkerId)> = (0..5).map(|_| hold(&dispatcher, "a")).collect();
        let workers: Vec<&WorkerId> = held.iter().map(|(_, worker)| worker).collect();
        assert_eq!(
            workers,
            [&wid("w1"), &wid("w1"), &wid("w2"), &wid("w2"), &wid("w3")]
        );
        dispatcher.release(&held[0].1, &held[0].0);
        assert_eq!(
            hold(&dispatcher, "a").1,
            "w1",
            "back to the first with room"
        );
    }

    #[test]
    fn each_routine_has_its_strategy_from_the_settings() {
        let strategies = PickupStrategies::parse("rr.*=round-robin,ff=first-fit").unwrap();
        let dispatcher = Dispatcher::with_strategies(PickupStrategy::LeastLoaded, strategies);
        for id in ["w1", "w2"] {
            dispatcher.on_worker(worker(id, &["ff", "rr.x", "ll"], 4, &[]));
        }
        let ff: Vec<WorkerId> = (0..3).map(|_| place_once(&dispatcher, "ff")).collect();
        assert_eq!(ff, ["w1", "w1", "w1"].map(wid));
        let rr: Vec<WorkerId> = (0..3).map(|_| place_once(&dispatcher, "rr.x")).collect();
        assert_eq!(rr, ["w1", "w2", "w1"].map(wid));
        // w1 holds a run: least-loaded goes to w2 though w2's turn has passed.
        let _busy = hold(&dispatcher, "ff");
        assert_eq!(hold(&dispatcher, "ll").1, "w2");
    }

    #[test]
    fn a_newcomer_starts_at_the_current_pass_and_neither_floods_nor_starves() {
        let dispatcher = Dispatcher::new();
        dispatcher.on_worker(worker("w1", &["a"], 1, &[]));
        dispatcher.on_worker(worker("w2", &["a"], 1, &[]));
        assert_eq!(
            shares(&dispatcher, "a", 10),
            counts(&[("w1", 5), ("w2", 5)])
        );
        dispatcher.on_worker(worker("w3", &["a"], 1, &[]));
        let turns: Vec<WorkerId> = (0..3).map(|_| place_once(&dispatcher, "a")).collect();
        assert_eq!(turns, ["w1", "w2", "w3"].map(wid), "w3 waits its turn");
        assert_eq!(
            shares(&dispatcher, "a", 30),
            counts(&[("w1", 10), ("w2", 10), ("w3", 10)])
        );
        // Registered again after its peers moved on: it starts level with them too.
        assert_eq!(
            shares(&dispatcher, "a", 6),
            counts(&[("w1", 2), ("w2", 2), ("w3", 2)])
        );
        let mut again = (*worker("w2", &["a"], 1, &[])).clone();
        again.incarnation = 2;
        dispatcher.on_worker(Arc::new(again));
        assert_eq!(
            shares(&dispatcher, "a", 30),
            counts(&[("w1", 10), ("w2", 10), ("w3", 10)])
        );
    }

    #[test]
    fn a_freed_slot_goes_to_the_oldest_waiting_run_whatever_the_strategy() {
        for strategy in PickupStrategy::ALL {
            let dispatcher = with(strategy);
            dispatcher.on_worker(worker("w1", &["a"], 1, &[]));
            dispatcher.on_worker(worker("w2", &["a"], 1, &[]));
            let (first, on_first) = hold(&dispatcher, "a");
            let (second, on_second) = hold(&dispatcher, "a");
            let none = Conditions::default();
            let mut older = dispatcher.request(&RunId::generate(), &routine("a"), &none);
            let mut newer = dispatcher.request(&RunId::generate(), &routine("a"), &none);
            assert!(placed(&mut older).is_none() && placed(&mut newer).is_none());
            dispatcher.release(&on_second, &second);
            assert_eq!(placed(&mut older), Some(on_second.clone()), "{strategy}");
            assert!(placed(&mut newer).is_none(), "{strategy}");
            dispatcher.release(&on_first, &first);
            assert_eq!(placed(&mut newer), Some(on_first), "{strategy}");
        }
    }

    #[test]
    fn places_immediately_and_respects_capacity() {
        let dispatcher = Dispatcher::new();
        dispatcher.on_worker(worker("w1", &["a"], 2, &[]));
        let demand = dispatcher.demand(&routine("a"));
        assert_eq!(*demand.borrow(), 2);
        let (r1, r2, r3) = (RunId::generate(), RunId::generate(), RunId::generate());
        let none = Conditions::default();
        assert_eq!(
            placed(&mut dispatcher.request(&r1, &routine("a"), &none)).unwrap(),
            "w1"
        );
        assert_eq!(
            placed(&mut dispatcher.request(&r2, &routine("a"), &none)).unwrap(),
            "w1"
        );
        let mut third = dispatcher.request(&r3, &routine("a"), &none);
        assert!(placed(&mut third).is_none(), "over capacity");
        assert_eq!(*demand.borrow(), 0);
        dispatcher.release(&WorkerId::parse("w1").unwrap(), &r1);
        assert_eq!(placed(&mut third).unwrap(), "w1");
    }

    #[test]
    fn conditions_hold() {
        let dispatcher = Dispatcher::new();
        dispatcher.on_worker(worker("cpu", &["a"], 4, &[("gpu", "false")]));
        dispatcher.on_worker(worker("gpu", &["a"], 1, &[("gpu", "true")]));
        let wants_gpu = Conditions {
            worker_ids: vec![],
            labels: [("gpu".to_owned(), "true".to_owned())].into(),
        };
        let run = RunId::generate();
        assert_eq!(
            placed(&mut dispatcher.request(&run, &routine("a"), &wants_gpu)).unwrap(),
            "gpu"
        );
        let mut second = dispatcher.request(&RunId::generate(), &routine("a"), &wants_gpu);
        assert!(
            placed(&mut second).is_none(),
            "only the gpu worker matches, and it is full"
        );
        let only_cpu = Conditions {
            worker_ids: vec![WorkerId::parse("cpu").unwrap()],
            labels: Default::default(),
        };
        assert_eq!(
            placed(&mut dispatcher.request(&RunId::generate(), &routine("a"), &only_cpu)).unwrap(),
            "cpu"
        );
        assert!(placed(&mut dispatcher.request(
            &RunId::generate(),
            &routine("b"),
            &Conditions::default()
        ))
        .is_none());
    }

    #[test]
    fn routines_do_not_block_each_other() {
        let dispatcher = Dispatcher::new();
        dispatcher.on_worker(worker("wa", &["a"], 1, &[]));
        dispatcher.on_worker(worker("wb", &["b"], 1, &[]));
        for _ in 0..100 {
            dispatcher.incoming(&routine("a"));
        }
        let b = dispatcher.demand(&routine("b"));
        assert_eq!(*b.borrow(), 1);
        assert_eq!(
            placed(&mut dispatcher.request(
                &RunId::generate(),
                &routine("b"),
                &Conditions::default()
            ))
            .unwrap(),
            "wb"
        );
    }

    #[test]
    fn registry_holdings_count_against_capacity() {
        let dispatcher = Dispatcher::new();
        let mut record = (*worker("w1", &["a"], 1, &[])).clone();
        record.runs.push(HeldRun {
            run_id: RunId::generate(),
            attempt: 1,
            waiting: false,
            waiting_version: 0,
            since: Timestamp::now(),
            traceparent: None,
        });
        dispatcher.on_worker(Arc::new(record));
        assert!(placed(&mut dispatcher.request(
            &RunId::generate(),
            &routine("a"),
            &Conditions::default()
        ))
        .is_none());
    }

    #[test]
    fn lost_or_reregistered_workers_give_back_their_runs() {
        let dispatcher = Dispatcher::new();
        dispatcher.on_worker(worker("w1", &["a"], 2, &[]));
        let run = RunId::generate();
        placed(&mut dispatcher.request(&run, &routine("a"), &Conditions::default())).unwrap();
        let mut again = (*worker("w1", &["a"], 2, &[])).clone();
        again.incarnation = 2;
        let gone = dispatcher.on_worker(Arc::new(again));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].run, run);
        assert_eq!(gone[0].incarnation, 1);
        let mut lost = (*worker("w1", &["a"], 2, &[])).clone();
        lost.incarnation = 2;
        lost.phase = WorkerPhase::Lost;
        assert!(dispatcher.on_worker(Arc::new(lost)).is_empty());
        assert!(!dispatcher.adopt(&WorkerId::parse("w1").unwrap(), 2, &run));
    }

    #[test]
    fn routine_set_does_not_flap_when_slots_change() {
        let dispatcher = Dispatcher::new();
        dispatcher.on_worker(worker("w1", &["a"], 2, &[]));
        let mut routines = dispatcher.routines();
        routines.borrow_and_update();
        let run = RunId::generate();
        placed(&mut dispatcher.request(&run, &routine("a"), &Conditions::default())).unwrap();
        dispatcher.release(&WorkerId::parse("w1").unwrap(), &run);
        dispatcher.on_worker(worker("w1", &["a"], 2, &[]));
        assert!(
            !routines.has_changed().unwrap(),
            "watchers saw the routine set change"
        );
    }

    #[test]
    fn terminating_workers_get_no_new_work() {
        let dispatcher = Dispatcher::new();
        let mut record = (*worker("w1", &["a"], 2, &[])).clone();
        record.phase = WorkerPhase::Terminating;
        dispatcher.on_worker(Arc::new(record));
        assert!(placed(&mut dispatcher.request(
            &RunId::generate(),
            &routine("a"),
            &Conditions::default()
        ))
        .is_none());
    }
}
