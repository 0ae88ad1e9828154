//! One group's processes and the decisions about them, with no I/O: what to start, stop or
//! kill at a given instant, and what an exit means. The driver carries the decisions out and
//! reports back what happened.

use std::time::{Duration, Instant};

use drover_protocol::{
    ExitClass, GroupState, Incarnation, LastExit, PoolId, ProcessPhase, Timestamp, WorkerId,
    WorkerStatus,
};

use crate::config::{GroupConfig, RestartPolicy};

mod slot;

pub use slot::Slot;

/// A process that stayed up this long starts its next restart delay from the beginning.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

/// Why the pool stops a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Scale-down: the slot goes away.
    Retire,
    /// A soft restart or a quota: a new process takes over.
    Replace,
    /// A hard restart: everything stops, then everything starts.
    Hard,
    /// The pool is shutting down.
    Shutdown,
}

impl StopReason {
    fn words(self) -> &'static str {
        match self {
            StopReason::Retire => "scaled down",
            StopReason::Replace => "replaced",
            StopReason::Hard => "hard restart",
            StopReason::Shutdown => "pool shutting down",
        }
    }
}

/// Something for the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a process for slot `index` with this workerID.
    Start {
        /// The slot.
        index: u32,
        /// Its workerID.
        worker_id: WorkerId,
    },
    /// Ask a process to stop (SIGTERM to its process group).
    Stop {
        /// Its pid.
        pid: u32,
        /// Its workerID, for the log.
        worker_id: WorkerId,
    },
    /// Stop a process now (SIGKILL to its process group).
    Kill {
        /// Its pid.
        pid: u32,
        /// Its workerID, for the log.
        worker_id: WorkerId,
    },
}

/// How a process ended, as the operating system said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
}

/// What an exit leads to, beyond the group's own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    /// Nothing more.
    Settled,
    /// The process will be started again: it counts towards the restart intensity.
    Restart,
    /// The start-up order was broken: the pool must shut down.
    Critical(String),
}

/// A process that ended: whose, how, and what follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// Its workerID.
    pub worker_id: WorkerId,
    /// How it ended, classified.
    pub exit: LastExit,
    /// What follows for the pool.
    pub outcome: ExitOutcome,
}

/// A group: its configuration, its target size and its slots.
#[derive(Debug)]
pub struct Group {
    /// What the file says.
    pub config: GroupConfig,
    pool: PoolId,
    /// The size it is kept at.
    pub target: u32,
    /// Its slots, by index.
    pub slots: Vec<Slot>,
    hard_restart: bool,
    shutting_down: bool,
}

impl Group {
    /// A group at its configured size, with nothing started yet.
    pub fn new(pool: PoolId, config: GroupConfig) -> Self {
        Self {
            target: config.size,
            config,
            pool,
            slots: Vec::new(),
            hard_restart: false,
            shutting_down: false,
        }
    }

    fn slot_mut(&mut self, worker_id: &WorkerId) -> Option<&mut Slot> {
        self.slots
            .iter_mut()
            .find(|slot| &slot.worker_id == worker_id)
    }

    /// The slot whose process has this pid.
    pub fn slot_with_pid(&self, pid: u32) -> Option<&Slot> {
        self.slots.iter().find(|slot| slot.pid == Some(pid))
    }

    /// The slot with this workerID.
    pub fn slot(&self, worker_id: &WorkerId) -> Option<&Slot> {
        self.slots.iter().find(|slot| &slot.worker_id == worker_id)
    }

    /// Processes registered and ready, not being stopped.
    pub fn running(&self) -> u32 {
        self.slots.iter().filter(|slot| slot.ready()).count() as u32
    }

    /// True while any process of the group runs.
    pub fn any_alive(&self) -> bool {
        self.slots.iter().any(Slot::alive)
    }

    /// True when the group holds nothing but processes ended for good (and at least one).
    pub fn all_terminated(&self) -> bool {
        !self.slots.is_empty()
            && self.config.autoscale.is_none()
            && self
                .slots
                .iter()
                .all(|slot| slot.phase == ProcessPhase::Terminated && !slot.alive())
    }

    /// True when every slot ended with class `final`.
    pub fn all_final(&self) -> bool {
        self.slots.iter().all(|slot| {
            slot.last_exit
                .as_ref()
                .is_some_and(|exit| exit.class == ExitClass::Final)
        })
    }

    /// Sets the target size; the caller checked the bounds.
    pub fn set_target(&mut self, target: u32) {
        self.target = target;
    }

    /// Begins a hard restart: stop everything, then start the target afresh.
    pub fn hard_restart(&mut self) {
        self.hard_restart = true;
    }

    /// Begins a soft restart: every process is replaced through the rolling path.
    pub fn soft_restart(&mut self) {
        for slot in &mut self.slots {
            if slot.stop.is_none() && slot.phase != ProcessPhase::Terminated {
                slot.outdated = true;
                slot.outdated_because = Some("soft restart".to_owned());
            }
        }
    }

    /// Stops everything for good.
    pub fn shut_down(&mut self) {
        self.shutting_down = true;
    }

    /// The driver started slot `index` as `pid`; `floor` is the incarnation the registry
    /// had for its workerID just before.
    pub fn started(&mut self, index: u32, pid: u32, floor: Incarnation, now: Instant) {
        if let Some(slot) = self.slots.iter_mut().find(|slot| slot.index == index) {
            slot.pid = Some(pid);
            slot.phase = ProcessPhase::Starting;
            slot.started_at = Some(now);
            slot.started_wall = Some(Timestamp::now());
            slot.registered = false;
            slot.incarnation_floor = floor;
            slot.worker_status = None;
            slot.held_runs = 0;
            slot.runs = 0;
            slot.rss_bytes = None;
            slot.restart_at = None;
            slot.stop = None;
            slot.stop_sent_at = None;
            slot.killed = false;
        }
    }

    /// What the registry says about one of this group's workerIDs.
    pub fn observed(
        &mut self,
        worker_id: &WorkerId,
        incarnation: Incarnation,
        status: WorkerStatus,
        held_runs: u32,
        capacity: u32,
    ) {
        let Some(slot) = self.slot_mut(worker_id) else {
            return;
        };
        if !slot.alive() || incarnation <= slot.incarnation_floor {
            return;
        }
        slot.registered = true;
        slot.worker_status = Some(status);
        slot.held_runs = held_runs;
        slot.capacity = Some(capacity);
        let ready = matches!(
            status,
            WorkerStatus::Idle | WorkerStatus::Working | WorkerStatus::Hanging
        );
        if ready && slot.phase == ProcessPhase::Starting {
            slot.phase = ProcessPhase::Running;
        }
    }

    /// A run ended on one of this group's workers.
    pub fn run_ended(&mut self, worker_id: &WorkerId) {
        let max_runs = self.config.max_runs;
        if let Some(slot) = self.slot_mut(worker_id).filter(|slot| slot.alive()) {
            slot.runs += 1;
            if max_runs.is_some_and(|max| slot.runs >= max) && !slot.outdated {
                slot.outdated = true;
                slot.outdated_because = Some(format!("ran {} runs", slot.runs));
            }
        }
    }

    /// The resident memory of a process was read.
    pub fn memory(&mut self, worker_id: &WorkerId, rss_bytes: u64) {
        let max_memory = self.config.max_memory;
        if let Some(slot) = self.slot_mut(worker_id).filter(|slot| slot.alive()) {
            slot.rss_bytes = Some(rss_bytes);
            if max_memory.is_some_and(|max| rss_bytes > max) && !slot.outdated {
                slot.outdated = true;
                slot.outdated_because = Some(format!("resident memory {rss_bytes} bytes"));
            }
        }
    }

    /// The process of slot `worker_id` could not be started at all.
    pub fn start_failed(&mut self, index: u32, error: &str) -> ExitOutcome {
        let worker_id = self
            .slots
            .iter()
            .find(|slot| slot.index == index)
            .map(|slot| slot.worker_id.to_string())
            .unwrap_or_default();
        ExitOutcome::Critical(format!(
            "cannot start {worker_id} ({}): {error}",
            self.config.command.display()
        ))
    }

    /// The process with `pid` ended: classify it and decide what follows (DESIGN §9).
    pub fn exited(&mut self, pid: u32, status: ExitStatus, now: Instant) -> Option<Exited> {
        let position = self.slots.iter().position(|slot| slot.pid == Some(pid))?;
        let (exit, outcome) = self.classify(position, status, now);
        let worker_id = self.slots[position].worker_id.clone();
        self.slots[position].last_exit = Some(exit.clone());
        if exit.class == ExitClass::Requested
            && self.slots[position].phase != ProcessPhase::Terminated
        {
            // Scaled down, replaced, or stopped for a hard restart: the slot goes.
            self.slots.remove(position);
        }
        Some(Exited {
            worker_id,
            exit,
            outcome,
        })
    }

    fn classify(
        &mut self,
        position: usize,
        status: ExitStatus,
        now: Instant,
    ) -> (LastExit, ExitOutcome) {
        let config = &self.config;
        let slot = &mut self.slots[position];
        let up_for = slot.uptime(now).unwrap_or_default();
        let was_running = slot.phase == ProcessPhase::Running;
        slot.pid = None;
        slot.worker_status = None;
        let exit = |class, reason: String| LastExit {
            code: status.code,
            signal: status.signal,
            class,
            reason: Some(reason),
            at: Timestamp::now(),
        };
        if let Some(reason) = slot.stop {
            if reason == StopReason::Shutdown {
                slot.phase = ProcessPhase::Terminated;
            }
            return (
                exit(ExitClass::Requested, reason.words().to_owned()),
                ExitOutcome::Settled,
            );
        }
        if status
            .code
            .is_some_and(|code| config.final_exit_codes.contains(&code))
        {
            slot.phase = ProcessPhase::Terminated;
            let reason = "exited with a final code".to_owned();
            return (exit(ExitClass::Final, reason), ExitOutcome::Settled);
        }
        if let (Some(code), false) = (status.code, slot.registered) {
            slot.phase = ProcessPhase::Terminated;
            let why = format!(
                "{} exited with code {code} before registering",
                slot.worker_id
            );
            let last = exit(ExitClass::Critical, "exited before registering".to_owned());
            return (last, ExitOutcome::Critical(why));
        }
        let reason = match (status.signal, status.code) {
            (Some(signal), _) => format!("killed by signal {signal}"),
            (None, Some(code)) => format!("exited with code {code}"),
            (None, None) => "ended".to_owned(),
        };
        let last = exit(ExitClass::Unexpected, reason);
        if self.shutting_down || config.restart == RestartPolicy::Never {
            slot.phase = ProcessPhase::Terminated;
            return (last, ExitOutcome::Settled);
        }
        if was_running && up_for >= BACKOFF_RESET_AFTER {
            slot.backoff_step = 0;
        }
        let delay = config
            .restart_delay
            .saturating_mul(2u32.saturating_pow(slot.backoff_step.min(16)))
            .min(config.restart_delay_max);
        slot.backoff_step += 1;
        slot.restarts += 1;
        slot.phase = ProcessPhase::Restarting;
        slot.restart_at = Some(now + delay);
        (last, ExitOutcome::Restart)
    }

    /// What to do now: starts, stops and kills that bring the group towards its target and
    /// carry out restarts, replacements and shutdown. Also returns a critical reason when a
    /// process missed its start timeout.
    pub fn reconcile(&mut self, now: Instant) -> (Vec<Action>, Option<String>) {
        let mut actions = Vec::new();
        let grace = self.config.stop_grace;
        for slot in &mut self.slots {
            if let (Some(pid), Some(sent), false) = (slot.pid, slot.stop_sent_at, slot.killed) {
                if now.saturating_duration_since(sent) >= grace {
                    slot.killed = true;
                    actions.push(Action::Kill {
                        pid,
                        worker_id: slot.worker_id.clone(),
                    });
                }
            }
        }
        if self.shutting_down {
            for index in self.indices(|slot| slot.stop.is_none() || !slot.alive()) {
                self.stop(index, StopReason::Shutdown, now, &mut actions);
            }
            return (actions, None);
        }
        let timeout = self.config.start_timeout;
        let late = self.slots.iter().find(|slot| {
            slot.alive()
                && slot.stop.is_none()
                && slot.phase == ProcessPhase::Starting
                && slot.uptime(now).is_some_and(|up| up >= timeout)
        });
        if let Some(slot) = late {
            let reason = if slot.registered {
                format!(
                    "{} registered but was not ready within {timeout:?}",
                    slot.worker_id
                )
            } else {
                format!("{} did not register within {timeout:?}", slot.worker_id)
            };
            return (actions, Some(reason));
        }
        if self.hard_restart {
            for index in self.indices(|slot| slot.stop.is_none()) {
                self.stop(index, StopReason::Hard, now, &mut actions);
            }
            if self.any_alive() {
                return (actions, None);
            }
            self.slots.clear();
            self.hard_restart = false;
        }
        if let Some(max_age) = self.config.max_age {
            for slot in &mut self.slots {
                if !slot.outdated && slot.uptime(now).is_some_and(|up| up >= max_age) {
                    slot.outdated = true;
                    slot.outdated_because = Some(format!("older than {max_age:?}"));
                }
            }
        }
        for index in self.indices(|slot| {
            slot.phase == ProcessPhase::Restarting && slot.restart_at.is_some_and(|at| at <= now)
        }) {
            if let Some(slot) = self.slots.iter_mut().find(|slot| slot.index == index) {
                slot.restart_at = None;
                slot.phase = ProcessPhase::Starting;
                actions.push(Action::Start {
                    index,
                    worker_id: slot.worker_id.clone(),
                });
            }
        }
        self.roll(now, &mut actions);
        (actions, None)
    }

    /// Brings the group to its target, replacing outdated processes as a rolling update
    /// (at most `target + max_surge` slots, at least `target - max_unavailable` ready).
    fn roll(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let target = self.target as usize;
        let kept = |slot: &Slot| slot.stop.is_none();
        // Too many current processes (a scale-down): retire the least useful.
        let current: Vec<u32> = self.indices(|slot| kept(slot) && !slot.outdated);
        if current.len() > target {
            let victims = self.victims(&current, current.len() - target);
            for index in victims {
                self.retire(index, StopReason::Retire, now, actions);
            }
        }
        // Outdated processes that are not ready cost no availability: they go at once.
        let outdated = self.indices(|slot| kept(slot) && slot.outdated);
        let unready: Vec<u32> = outdated
            .iter()
            .copied()
            .filter(|index| !self.by_index(*index).is_some_and(Slot::ready))
            .collect();
        for index in unready {
            self.retire(index, StopReason::Replace, now, actions);
        }
        // Start new processes within the surge.
        // Replaced processes still finishing their runs count against the surge: at most
        // `target + max_surge` processes are alive during a roll.
        let current = self.indices(|slot| kept(slot) && !slot.outdated).len();
        let outdated = self.indices(|slot| kept(slot) && slot.outdated);
        let replacing = self
            .slots
            .iter()
            .filter(|slot| slot.alive() && slot.stop == Some(StopReason::Replace))
            .count();
        let room = (target + self.config.max_surge as usize)
            .saturating_sub(current + outdated.len() + replacing)
            .min(target.saturating_sub(current));
        for _ in 0..room {
            let index = self.free_index();
            let worker_id = self.config.worker_id(&self.pool, index);
            self.slots.push(Slot::new(index, worker_id.clone()));
            self.slots.sort_by_key(|slot| slot.index);
            actions.push(Action::Start { index, worker_id });
        }
        // Retire ready outdated processes while enough stay ready.
        let floor = target.saturating_sub(self.config.max_unavailable as usize);
        let ready = self.slots.iter().filter(|slot| slot.ready()).count();
        let outdated = self.indices(|slot| kept(slot) && slot.outdated);
        let allowed = ready.saturating_sub(floor).min(outdated.len());
        for index in self.victims(&outdated, allowed) {
            self.retire(index, StopReason::Replace, now, actions);
        }
    }

    fn by_index(&self, index: u32) -> Option<&Slot> {
        self.slots.iter().find(|slot| slot.index == index)
    }

    /// Indices of the slots matching `filter`.
    fn indices(&self, filter: impl Fn(&Slot) -> bool) -> Vec<u32> {
        self.slots
            .iter()
            .filter(|slot| filter(slot))
            .map(|slot| slot.index)
            .collect()
    }

    /// `count` of `among`, least useful first: ended or waiting slots, then processes not
    /// yet ready, then idle ones, then those holding fewest runs; the highest index first.
    fn victims(&self, among: &[u32], count: usize) -> Vec<u32> {
        let mut ranked: Vec<&Slot> = among
            .iter()
            .filter_map(|index| self.by_index(*index))
            .collect();
        ranked.sort_by_key(|slot| {
            let rank = match (slot.alive(), slot.phase) {
                (false, _) => 0,
                (true, ProcessPhase::Starting) => 1,
                (true, _) if slot.worker_status == Some(WorkerStatus::Idle) => 2,
                (true, _) => 3,
            };
            (rank, slot.held_runs, std::cmp::Reverse(slot.index))
        });
        ranked
            .into_iter()
            .take(count)
            .map(|slot| slot.index)
            .collect()
    }

    /// Takes a slot out: a slot with no process goes at once, one with a process is stopped.
    fn retire(&mut self, index: u32, reason: StopReason, now: Instant, actions: &mut Vec<Action>) {
        let Some(position) = self.slots.iter().position(|slot| slot.index == index) else {
            return;
        };
        if self.slots[position].alive() {
            self.stop(index, reason, now, actions);
        } else {
            self.slots.remove(position);
        }
    }

    fn stop(&mut self, index: u32, reason: StopReason, now: Instant, actions: &mut Vec<Action>) {
        let Some(slot) = self.slots.iter_mut().find(|slot| slot.index == index) else {
            return;
        };
        match slot.pid {
            Some(pid) => {
                if slot.stop.is_some() {
                    // Already stopping; a shutdown only widens the reason.
                    if reason == StopReason::Shutdown {
                        slot.stop = Some(reason);
                    }
                    return;
                }
                slot.stop = Some(reason);
                slot.stop_sent_at = Some(now);
                slot.phase = ProcessPhase::Stopping;
                actions.push(Action::Stop {
                    pid,
                    worker_id: slot.worker_id.clone(),
                });
            }
            None => {
                slot.restart_at = None;
                if slot.phase != ProcessPhase::Terminated {
                    slot.phase = ProcessPhase::Terminated;
                }
            }
        }
    }

    /// The lowest index no slot holds.
    fn free_index(&self) -> u32 {
        (1..)
            .find(|index| self.slots.iter().all(|slot| slot.index != *index))
            .expect("an unbounded range has a free index")
    }

    /// The status report of this group.
    pub fn state(&self, now: Instant) -> GroupState {
        GroupState {
            name: self.config.name.clone(),
            min: self.config.min,
            max: self.config.max,
            target: self.target,
            processes: self
                .slots
                .iter()
                .map(|slot| slot.state(now, self.config.max_runs.is_some()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
