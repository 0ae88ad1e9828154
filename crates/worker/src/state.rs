//! What the worker's tasks share: its registration, the attempts it holds, and how those
//! attempts are stopped.
//!
//! Invariant: an attempt is *held* from its assignment until its completion is stored, or
//! until it is dropped (cancelled, stale, taken back by a new registration, or abandoned at
//! the end of the grace period). Dropping fires the attempt's cancellation token, and a
//! `completed` is only ever sent for an attempt whose token has not fired.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::Client;
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    encode, Attempt, GivePulse, Incarnation, Registered, RoutineId, RunId, RunRef, WorkerId,
    WorkerStatus,
};
use tokio::sync::{watch, Notify};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::handler::Handler;
use crate::log::LogSink;
use crate::waiters::Waiters;

/// Where the worker is in its registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not registered (yet, or any more): no pulses.
    Unregistered,
    /// Registered, `v1.ready` not sent yet.
    Initializing,
    /// Taking work.
    Ready,
    /// Shutting down: takes no new work.
    Terminating,
}

/// An attempt the worker holds.
struct Held {
    serial: u64,
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    /// How many child runs the attempt is waiting on right now.
    waiting: u32,
}

/// What an attempt's task gets when the worker takes the attempt on.
#[derive(Clone)]
pub(crate) struct Slot {
    /// Tells this attempt apart from any other, even of the same run and attempt number.
    pub(crate) serial: u64,
    /// Fires when the attempt is dropped.
    pub(crate) token: CancellationToken,
    /// Why the attempt was dropped, once it was.
    pub(crate) reason: Arc<Mutex<Option<String>>>,
}

impl Slot {
    /// A slot that no worker holds: a test's attempt, numbered 0.
    pub(crate) fn detached() -> Self {
        Self {
            serial: 0,
            token: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
        }
    }

    /// Stops the attempt: records why (the first reason stays) and fires its token.
    pub(crate) fn cancel(&self, reason: &str) {
        stop_attempt(&self.token, &self.reason, reason);
    }
}

struct State {
    phase: Phase,
    incarnation: Incarnation,
    heartbeat: Duration,
    registered_at: Option<Instant>,
    runs: BTreeMap<(RunId, Attempt), Held>,
    /// Attempt tasks still running, dropped or not, so that they can be aborted at exit.
    tasks: HashMap<u64, AbortHandle>,
    next_serial: u64,
    /// The incarnation that Drover said is over, until the renewal takes it up.
    renewal: Option<Incarnation>,
}

/// State shared by every task of one running worker.
pub(crate) struct Shared {
    /// The workerID.
    pub(crate) id: WorkerId,
    /// The NATS connection.
    pub(crate) client: Client,
    /// Where log lines go.
    pub(crate) logs: LogSink,
    /// Routine handlers by routineID.
    pub(crate) handlers: HashMap<RoutineId, Handler>,
    /// Attempts waiting for forwarded child completions.
    pub(crate) children: Waiters,
    /// Woken when Drover says the registration is over.
    pub(crate) reregister: Notify,
    /// Woken when a registration is taken on, so that pulses follow its interval.
    pub(crate) renewed: Notify,
    state: Mutex<State>,
    held_count: watch::Sender<usize>,
    task_count: watch::Sender<usize>,
}

/// Locks a mutex, carrying on after a panic elsewhere: the state stays consistent because
/// no critical section here can panic half-way.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// State for a worker that has not registered yet.
    pub(crate) fn new(
        id: WorkerId,
        client: Client,
        logs: LogSink,
        handlers: HashMap<RoutineId, Handler>,
    ) -> Self {
        Self {
            id,
            client,
            logs,
            handlers,
            children: Waiters::default(),
            reregister: Notify::new(),
            renewed: Notify::new(),
            state: Mutex::new(State {
                phase: Phase::Unregistered,
                incarnation: 0,
                heartbeat: Duration::from_secs(5),
                registered_at: None,
                runs: BTreeMap::new(),
                tasks: HashMap::new(),
                next_serial: 0,
                renewal: None,
            }),
            held_count: watch::Sender::new(0),
            task_count: watch::Sender::new(0),
        }
    }

    /// The subject this worker publishes directive `key` on.
    pub(crate) fn subject(&self, key: &str) -> String {
        subject::from_worker(key, &self.id)
    }

    /// The current incarnation (0 before the first registration).
    pub(crate) fn incarnation(&self) -> Incarnation {
        lock(&self.state).incarnation
    }

    /// The pulse period handed out at registration.
    pub(crate) fn heartbeat(&self) -> Duration {
        lock(&self.state).heartbeat
    }

    /// True once shutdown has begun.
    pub(crate) fn is_terminating(&self) -> bool {
        lock(&self.state).phase == Phase::Terminating
    }

    /// True when the last registration is younger than `window`.
    pub(crate) fn registered_within(&self, window: Duration) -> bool {
        lock(&self.state)
            .registered_at
            .is_some_and(|at| at.elapsed() < window)
    }

    /// The pulse to send now, or `None` while unregistered.
    pub(crate) fn pulse_payload(&self, probe: Option<String>) -> Option<GivePulse> {
        let state = lock(&self.state);
        let status = match state.phase {
            Phase::Unregistered => return None,
            Phase::Initializing => WorkerStatus::Initializing,
            Phase::Terminating => WorkerStatus::Terminating,
            Phase::Ready if state.runs.is_empty() => WorkerStatus::Idle,
            Phase::Ready if state.runs.values().all(|held| held.waiting > 0) => {
                WorkerStatus::Hanging
            }
            Phase::Ready => WorkerStatus::Working,
        };
        Some(GivePulse {
            incarnation: state.incarnation,
            status,
            runs: state
                .runs
                .keys()
                .map(|(run_id, attempt)| RunRef {
                    run_id: run_id.clone(),
                    attempt: *attempt,
                })
                .collect(),
            id: probe,
        })
    }

    /// Publishes a pulse (core NATS; a lost one is replaced by the next).
    pub(crate) async fn pulse(&self, probe: Option<String>) {
        let Some(payload) = self.pulse_payload(probe) else {
            return;
        };
        if let Err(error) = self
            .client
            .publish(self.subject(keys::GIVE_PULSE), encode(&payload))
            .await
        {
            tracing::debug!(%error, "pulse not sent");
        }
    }

    /// Takes a new registration: everything the old one held is dropped, since Drover has
    /// taken it back. Returns false when the worker is shutting down meanwhile.
    pub(crate) fn registered(&self, registered: &Registered) -> bool {
        let mut state = lock(&self.state);
        self.drop_all_locked(&mut state, "the worker registered again");
        state.incarnation = registered.incarnation;
        state.heartbeat = Duration::from_millis(registered.heartbeat_interval_ms.max(1));
        state.registered_at = Some(Instant::now());
        if state.phase == Phase::Terminating {
            return false;
        }
        state.phase = Phase::Initializing;
        true
    }

    /// The registration is over: stop pulsing and drop every attempt.
    pub(crate) fn unregistered(&self, reason: &str) {
        let mut state = lock(&self.state);
        self.drop_all_locked(&mut state, reason);
        if state.phase != Phase::Terminating {
            state.phase = Phase::Unregistered;
        }
    }

    /// About to send `v1.ready`: pulses say IDLE, WORKING or HANGING from now on.
    pub(crate) fn ready(&self) {
        let mut state = lock(&self.state);
        if state.phase == Phase::Initializing {
            state.phase = Phase::Ready;
        }
    }

    /// Shutdown begins: no new work, pulses say TERMINATING. Returns the incarnation.
    pub(crate) fn terminating(&self) -> Incarnation {
        let mut state = lock(&self.state);
        state.phase = Phase::Terminating;
        state.incarnation
    }

    /// Takes on an attempt and spawns its task with `spawn`; false if already held.
    pub(crate) fn start_attempt(
        &self,
        run_id: &RunId,
        attempt: Attempt,
        spawn: impl FnOnce(Slot) -> JoinHandle<()>,
    ) -> bool {
        let mut state = lock(&self.state);
        let key = (run_id.clone(), attempt);
        if state.runs.contains_key(&key) {
            return false;
        }
        state.next_serial += 1;
        let slot = Slot {
            serial: state.next_serial,
            token: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
        };
        state.runs.insert(
            key,
            Held {
                serial: slot.serial,
                token: slot.token.clone(),
                reason: Arc::clone(&slot.reason),
                waiting: 0,
            },
        );
        let serial = slot.serial;
        // Spawned under the lock so that the task cannot finish before it is tracked.
        let task = spawn(slot);
        state.tasks.insert(serial, task.abort_handle());
        self.held_count.send_replace(state.runs.len());
        self.task_count.send_replace(state.tasks.len());
        true
    }

    /// The attempt's task has ended.
    pub(crate) fn task_ended(&self, serial: u64) {
        let mut state = lock(&self.state);
        state.tasks.remove(&serial);
        self.task_count.send_replace(state.tasks.len());
    }

    /// The attempt's completion is stored: it no longer occupies a slot.
    pub(crate) fn release(&self, run_id: &RunId, attempt: Attempt, serial: u64) {
        let mut state = lock(&self.state);
        let key = (run_id.clone(), attempt);
        if state
            .runs
            .get(&key)
            .is_some_and(|held| held.serial == serial)
        {
            state.runs.remove(&key);
            self.held_count.send_replace(state.runs.len());
        }
    }

    /// Drops one attempt (cancelled or stale); false if it was not held.
    pub(crate) fn drop_attempt(&self, run_id: &RunId, attempt: Attempt, reason: &str) -> bool {
        let mut state = lock(&self.state);
        let Some(held) = state.runs.remove(&(run_id.clone(), attempt)) else {
            return false;
        };
        self.held_count.send_replace(state.runs.len());
        stop(held, reason);
        true
    }

    /// Drops every attempt and returns how many there were.
    pub(crate) fn drop_all(&self, reason: &str) -> usize {
        let mut state = lock(&self.state);
        self.drop_all_locked(&mut state, reason)
    }

    fn drop_all_locked(&self, state: &mut State, reason: &str) -> usize {
        let runs = std::mem::take(&mut state.runs);
        self.held_count.send_replace(0);
        let count = runs.len();
        for held in runs.into_values() {
            stop(held, reason);
        }
        count
    }

    /// Aborts every attempt task still running, dropped ones included.
    pub(crate) fn abort_tasks(&self) {
        let tasks = std::mem::take(&mut lock(&self.state).tasks);
        self.task_count.send_replace(0);
        for task in tasks.into_values() {
            task.abort();
        }
    }

    /// Resolves once no attempt task is running any more.
    pub(crate) async fn all_tasks_ended(&self) {
        let mut count = self.task_count.subscribe();
        let _ = count.wait_for(|tasks| *tasks == 0).await;
    }

    /// Drover said the current registration is over: wake the renewal. False while a
    /// renewal is already under way (the refusal is about the registration it replaces).
    pub(crate) fn registration_over(&self) -> bool {
        let mut state = lock(&self.state);
        if state.phase == Phase::Unregistered {
            return false;
        }
        state.renewal = Some(state.incarnation);
        self.reregister.notify_one();
        true
    }

    /// Takes up a renewal request; false when it is about a registration already replaced.
    pub(crate) fn take_renewal(&self) -> bool {
        let mut state = lock(&self.state);
        let incarnation = state.incarnation;
        state.renewal.take() == Some(incarnation)
    }

    /// Counts the attempt as waiting on one more child until the guard is dropped.
    pub(crate) fn waiting_on_child(
        self: &Arc<Self>,
        run_id: &RunId,
        attempt: Attempt,
    ) -> WaitingGuard {
        self.adjust_waiting(run_id, attempt, true);
        WaitingGuard {
            shared: Arc::clone(self),
            run_id: run_id.clone(),
            attempt,
        }
    }

    fn adjust_waiting(&self, run_id: &RunId, attempt: Attempt, more: bool) {
        let mut state = lock(&self.state);
        if let Some(held) = state.runs.get_mut(&(run_id.clone(), attempt)) {
            held.waiting = if more {
                held.waiting.saturating_add(1)
            } else {
                held.waiting.saturating_sub(1)
            };
        }
    }

    /// Resolves once the worker holds no attempt.
    pub(crate) async fn all_released(&self) {
        let mut count = self.held_count.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = count.wait_for(|held| *held == 0).await;
    }
}

fn stop(held: Held, reason: &str) {
    stop_attempt(&held.token, &held.reason, reason);
}

fn stop_attempt(token: &CancellationToken, why: &Mutex<Option<String>>, reason: &str) {
    lock(why).get_or_insert_with(|| reason.to_owned());
    token.cancel();
}

/// Keeps an attempt counted as waiting on a child while it lives.
pub(crate) struct WaitingGuard {
    shared: Arc<Shared>,
    run_id: RunId,
    attempt: Attempt,
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.shared
            .adjust_waiting(&self.run_id, self.attempt, false);
    }
}
