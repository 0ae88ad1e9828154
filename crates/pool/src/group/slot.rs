//! One place in a group: its workerID, the process that holds it now, and what the pool
//! knows about that process.

use std::time::{Duration, Instant};

use drover_protocol::{
    Incarnation, LastExit, ProcessPhase, ProcessState, Timestamp, WorkerId, WorkerStatus,
};

use super::StopReason;

/// One place in a group: a workerID and the process that holds it now, if any.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Its number, `n` in `<pool>-<group>-<n>`.
    pub index: u32,
    /// Its workerID.
    pub worker_id: WorkerId,
    /// Where it is.
    pub phase: ProcessPhase,
    /// The process, while one runs.
    pub pid: Option<u32>,
    pub(super) started_at: Option<Instant>,
    pub(super) started_wall: Option<Timestamp>,
    /// The registry has a registration of this process.
    pub registered: bool,
    /// Registrations at or below this incarnation belong to earlier processes.
    pub(super) incarnation_floor: Incarnation,
    /// Its status in the registry.
    pub worker_status: Option<WorkerStatus>,
    /// Runs it holds, by the registry.
    pub held_runs: u32,
    /// Runs it can hold, by its registration.
    pub capacity: Option<u32>,
    /// Runs that ended on this process.
    pub runs: u64,
    /// Resident memory, last read.
    pub rss_bytes: Option<u64>,
    /// Restarts after unexpected ends.
    pub restarts: u32,
    pub(super) backoff_step: u32,
    pub(super) restart_at: Option<Instant>,
    pub(super) stop: Option<StopReason>,
    pub(super) stop_sent_at: Option<Instant>,
    pub(super) killed: bool,
    /// Due for replacement through the soft path.
    pub outdated: bool,
    /// Why it is due for replacement.
    pub outdated_because: Option<String>,
    pub(super) last_exit: Option<LastExit>,
}

impl Slot {
    pub(super) fn new(index: u32, worker_id: WorkerId) -> Self {
        Self {
            index,
            worker_id,
            phase: ProcessPhase::Starting,
            pid: None,
            started_at: None,
            started_wall: None,
            registered: false,
            incarnation_floor: Incarnation::default(),
            worker_status: None,
            held_runs: 0,
            capacity: None,
            runs: 0,
            rss_bytes: None,
            restarts: 0,
            backoff_step: 0,
            restart_at: None,
            stop: None,
            stop_sent_at: None,
            killed: false,
            outdated: false,
            outdated_because: None,
            last_exit: None,
        }
    }

    /// True while a process holds the slot.
    pub fn alive(&self) -> bool {
        self.pid.is_some()
    }

    pub(super) fn ready(&self) -> bool {
        self.phase == ProcessPhase::Running && self.stop.is_none()
    }

    /// How long its process has run.
    pub fn uptime(&self, now: Instant) -> Option<Duration> {
        self.started_at.map(|at| now.saturating_duration_since(at))
    }

    /// The status report of this slot.
    pub fn state(&self, now: Instant, counts_runs: bool) -> ProcessState {
        ProcessState {
            worker_id: self.worker_id.clone(),
            pid: self.pid,
            state: self.phase,
            worker_status: self.worker_status.filter(|_| self.alive()),
            restarts: self.restarts,
            started_at: self.started_wall.filter(|_| self.alive()),
            uptime_ms: self
                .uptime(now)
                .filter(|_| self.alive())
                .map(|up| up.as_millis() as u64),
            runs: counts_runs.then_some(self.runs),
            rss_bytes: self.rss_bytes.filter(|_| self.alive()),
            last_exit: self.last_exit.clone(),
        }
    }
}
