//! The whole pool's decisions, with no I/O: restart intensity, critical shutdown, the end
//! of the pool, when a process's output may be shipped, and the answers to scale, restart
//! and status requests.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use drover_protocol::{
    ErrorCode, ErrorPayload, GroupName, PoolId, PoolRestart, PoolRestarting, PoolScale, PoolScaled,
    PoolState, RestartMode, Timestamp,
};

use crate::config::PoolConfig;
use crate::group::{Action, ExitOutcome, ExitStatus, Exited, Group};
use crate::output::Gate;

/// Why the pool is stopping, once it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopping {
    /// Asked to (a signal, or its caller).
    Asked,
    /// A critical error: the reason.
    Critical(String),
}

/// How the pool ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEnd {
    /// Shut down when asked, or every process ended with a final code.
    Clean,
    /// Every process ended for good, some not with a final code.
    AllTerminated,
    /// A critical shutdown, and why.
    Critical(String),
}

/// The pool's groups and the rules over all of them.
#[derive(Debug)]
pub struct Pool {
    /// The poolID.
    pub id: PoolId,
    /// Its groups, in file order.
    pub groups: Vec<Group>,
    max_restarts: u32,
    period: Duration,
    recent_restarts: VecDeque<Instant>,
    restarts: u32,
    started_at: Timestamp,
    started: Instant,
    stopping: Option<Stopping>,
}

impl Pool {
    /// A pool with nothing started yet.
    pub fn new(config: &PoolConfig, now: Instant) -> Self {
        Self {
            id: config.pool.clone(),
            groups: config
                .groups
                .iter()
                .map(|group| Group::new(config.pool.clone(), group.clone()))
                .collect(),
            max_restarts: config.max_restarts,
            period: config.max_restarts_period,
            recent_restarts: VecDeque::new(),
            restarts: 0,
            started_at: Timestamp::now(),
            started: now,
            stopping: None,
        }
    }

    /// Why the pool is stopping, if it is.
    pub fn stopping(&self) -> Option<&Stopping> {
        self.stopping.as_ref()
    }

    /// Stops every process gracefully; the pool ends once all have exited.
    pub fn shut_down(&mut self, why: Stopping) {
        // A critical reason is kept over a later request, and the first critical one wins.
        match (&self.stopping, &why) {
            (Some(Stopping::Critical(_)), _) => {}
            (Some(Stopping::Asked), Stopping::Asked) => {}
            _ => self.stopping = Some(why),
        }
        for group in &mut self.groups {
            group.shut_down();
        }
    }

    /// The group called `name`, by position.
    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.groups
            .iter()
            .position(|group| group.config.name == name)
    }

    /// The process `pid` of group `group` ended: how, classified, if it was the pool's.
    pub fn exited(
        &mut self,
        group: usize,
        pid: u32,
        status: ExitStatus,
        now: Instant,
    ) -> Option<Exited> {
        let exited = self.groups.get_mut(group)?.exited(pid, status, now)?;
        self.follow(exited.outcome.clone(), now);
        Some(exited)
    }

    /// A process of group `group` could not be started.
    pub fn start_failed(&mut self, group: usize, index: u32, error: &str, now: Instant) {
        let outcome = self.groups[group].start_failed(index, error);
        self.follow(outcome, now);
    }

    fn follow(&mut self, outcome: ExitOutcome, now: Instant) {
        match outcome {
            ExitOutcome::Settled => {}
            ExitOutcome::Critical(reason) => self.shut_down(Stopping::Critical(reason)),
            ExitOutcome::Restart => {
                self.restarts += 1;
                self.recent_restarts.push_back(now);
                while self
                    .recent_restarts
                    .front()
                    .is_some_and(|at| now.saturating_duration_since(*at) > self.period)
                {
                    self.recent_restarts.pop_front();
                }
                if self.recent_restarts.len() as u32 > self.max_restarts {
                    let reason = format!(
                        "restart intensity reached: {} restarts within {}",
                        self.recent_restarts.len(),
                        humantime::format_duration(self.period)
                    );
                    self.shut_down(Stopping::Critical(reason));
                }
            }
        }
    }

    /// What to do now, by group; a start timeout found here starts a critical shutdown.
    pub fn reconcile(&mut self, now: Instant) -> Vec<(usize, Action)> {
        let mut actions = Vec::new();
        let mut critical = None;
        for (index, group) in self.groups.iter_mut().enumerate() {
            let (group_actions, late) = group.reconcile(now);
            actions.extend(group_actions.into_iter().map(|action| (index, action)));
            critical = critical.or(late);
        }
        if let Some(reason) = critical {
            self.shut_down(Stopping::Critical(reason));
            // Stop what runs at once rather than on the next tick.
            actions.extend(self.reconcile(now));
        }
        actions
    }

    /// Whether process `pid`'s output may be shipped: once its registration is seen (the
    /// log-collector refuses lines from a workerID with no registry record), and never once
    /// it has ended without one.
    pub fn output_gate(&self, pid: u32) -> Gate {
        match self
            .groups
            .iter()
            .find_map(|group| group.slot_with_pid(pid))
        {
            Some(slot) if slot.registered => Gate::Ship,
            Some(_) => Gate::Hold,
            None => Gate::Discard,
        }
    }

    /// How the pool ended, once it has.
    pub fn end(&self) -> Option<PoolEnd> {
        if self.groups.iter().any(Group::any_alive) {
            return None;
        }
        match &self.stopping {
            Some(Stopping::Critical(reason)) => Some(PoolEnd::Critical(reason.clone())),
            Some(Stopping::Asked) => Some(PoolEnd::Clean),
            None if self.groups.iter().all(Group::all_terminated) => {
                if self.groups.iter().all(Group::all_final) {
                    Some(PoolEnd::Clean)
                } else {
                    Some(PoolEnd::AllTerminated)
                }
            }
            None => None,
        }
    }

    /// Answers a scale request: the new target, or why not (and nothing changes).
    pub fn scale(&mut self, request: &PoolScale) -> Result<PoolScaled, ErrorPayload> {
        let in_reply_to = drover_protocol::subject::pool::scale(&self.id);
        let index = self.group(&request.group, &in_reply_to)?;
        let group = &mut self.groups[index];
        let wanted = match (request.target, request.delta) {
            (Some(target), None) => i64::from(target),
            (None, Some(delta)) => i64::from(group.target).saturating_add(delta),
            _ => {
                return Err(ErrorPayload::new(
                    ErrorCode::InvalidPayload,
                    "give exactly one of target and delta",
                    &in_reply_to,
                ))
            }
        };
        let (min, max) = (group.config.min, group.config.max);
        if wanted < i64::from(min) || wanted > i64::from(max) {
            return Err(ErrorPayload::new(
                ErrorCode::OutOfBounds,
                format!(
                    "group {} can have {min} to {max} processes; {wanted} asked (now {})",
                    group.config.name, group.target
                ),
                &in_reply_to,
            ));
        }
        if self.stopping.is_some() {
            return Err(stopping_error(&in_reply_to));
        }
        group.set_target(wanted as u32);
        Ok(PoolScaled {
            group: group.config.name.clone(),
            target: group.target,
            running: group.running(),
        })
    }

    /// Begins a restart of one group or of all.
    pub fn restart(&mut self, request: &PoolRestart) -> Result<PoolRestarting, ErrorPayload> {
        let in_reply_to = drover_protocol::subject::pool::restart(&self.id);
        let chosen: Vec<usize> = match &request.group {
            Some(name) => vec![self.group(name, &in_reply_to)?],
            None => (0..self.groups.len()).collect(),
        };
        if self.stopping.is_some() {
            return Err(stopping_error(&in_reply_to));
        }
        for index in &chosen {
            let group = &mut self.groups[*index];
            match request.mode {
                RestartMode::Hard => group.hard_restart(),
                RestartMode::Soft => group.soft_restart(),
            }
        }
        Ok(PoolRestarting {
            accepted: true,
            mode: request.mode,
            groups: chosen
                .iter()
                .map(|index| self.groups[*index].config.name.clone())
                .collect(),
        })
    }

    fn group(&self, name: &GroupName, in_reply_to: &str) -> Result<usize, ErrorPayload> {
        self.group_index(name.as_str()).ok_or_else(|| {
            let known: Vec<&str> = self
                .groups
                .iter()
                .map(|group| group.config.name.as_str())
                .collect();
            ErrorPayload::new(
                ErrorCode::UnknownGroup,
                format!(
                    "pool {} has no group {name}; it has {}",
                    self.id,
                    known.join(", ")
                ),
                in_reply_to,
            )
        })
    }

    /// The status report.
    pub fn state(&self, now: Instant) -> PoolState {
        PoolState {
            pool_id: self.id.clone(),
            started_at: self.started_at,
            uptime_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            restarts: self.restarts,
            groups: self.groups.iter().map(|group| group.state(now)).collect(),
        }
    }
}

fn stopping_error(in_reply_to: &str) -> ErrorPayload {
    ErrorPayload::new(
        ErrorCode::Unavailable,
        "the pool is shutting down",
        in_reply_to,
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use drover_protocol::{ProcessPhase, WorkerId, WorkerStatus};

    use super::*;
    use crate::config::Overrides;

    fn pool(text: &str, now: Instant) -> Pool {
        let text = format!("pool = \"p\"\n{text}");
        let config = PoolConfig::parse(&text, Path::new("."), &Overrides::default())
            .expect("test configuration is valid");
        Pool::new(&config, now)
    }

    /// Reconciles and reports every start with a fresh pid; returns the pids started.
    fn start(pool: &mut Pool, now: Instant, next_pid: &mut u32) -> Vec<(usize, u32)> {
        let mut started = Vec::new();
        for (group, action) in pool.reconcile(now) {
            if let Action::Start { index, worker_id } = action {
                pool.groups[group].started(index, *next_pid, 0, now);
                pool.groups[group].observed(&worker_id, 1, WorkerStatus::Idle, 0, 1);
                started.push((group, *next_pid));
                *next_pid += 1;
            }
        }
        started
    }

    const KILLED: ExitStatus = ExitStatus {
        code: None,
        signal: Some(9),
    };

    #[test]
    fn more_restarts_than_the_intensity_allows_within_the_period_is_critical() {
        let mut now = Instant::now();
        let text = "max_restarts = 3\nmax_restarts_period = \"10s\"\n[groups.g]\ncommand = \"w\"\nrestart_delay = \"1ms\"\nrestart_delay_max = \"1ms\"";
        let mut pool = pool(text, now);
        let mut next_pid = 1;
        let mut pids = start(&mut pool, now, &mut next_pid);
        // Three restarts spread wider than the period are fine.
        for _ in 0..4 {
            let (group, pid) = pids.pop().unwrap();
            pool.exited(group, pid, KILLED, now);
            now += Duration::from_secs(4);
            pids = start(&mut pool, now, &mut next_pid);
            assert_eq!(pool.stopping(), None);
        }
        // Four within ten seconds are not.
        now += Duration::from_secs(11);
        for round in 0..4 {
            let (group, pid) = pids.pop().unwrap();
            pool.exited(group, pid, KILLED, now);
            now += Duration::from_millis(10);
            if round < 3 {
                assert_eq!(pool.stopping(), None, "round {round}");
                pids = start(&mut pool, now, &mut next_pid);
            }
        }
        match pool.stopping() {
            Some(Stopping::Critical(reason)) => {
                assert!(reason.contains("restart intensity"), "{reason}")
            }
            other => panic!("expected a critical shutdown, got {other:?}"),
        }
        assert!(pool.reconcile(now).is_empty(), "nothing restarts after it");
        assert!(matches!(pool.end(), Some(PoolEnd::Critical(_))));
        assert_eq!(pool.state(now).restarts, 8);
    }

    #[test]
    fn a_critical_shutdown_stops_the_other_groups_gracefully_and_keeps_its_reason() {
        let now = Instant::now();
        let mut pool = pool(
            "[groups.a]\ncommand = \"w\"\n[groups.b]\ncommand = \"w\"",
            now,
        );
        let mut next_pid = 1;
        let started = start(&mut pool, now, &mut next_pid);
        let (b, b_pid) = started[1];
        pool.groups[b].slots[0].registered = false;
        pool.exited(
            b,
            b_pid,
            ExitStatus {
                code: Some(2),
                signal: None,
            },
            now,
        );
        pool.shut_down(Stopping::Asked);
        let actions = pool.reconcile(now);
        assert!(
            matches!(actions.as_slice(), [(0, Action::Stop { .. })]),
            "{actions:?}"
        );
        assert_eq!(pool.end(), None, "a process still runs");
        let (a, a_pid) = started[0];
        pool.exited(
            a,
            a_pid,
            ExitStatus {
                code: Some(0),
                signal: None,
            },
            now,
        );
        match pool.end() {
            Some(PoolEnd::Critical(reason)) => {
                assert!(
                    reason.contains("p-b-1 exited with code 2 before registering"),
                    "{reason}"
                )
            }
            other => panic!("expected the critical reason, got {other:?}"),
        }
    }

    #[test]
    fn the_pool_ends_when_every_process_ended_for_good() {
        let now = Instant::now();
        let mut pool = pool(
            "[groups.a]\ncommand = \"w\"\nsize = 2\nmax = 2\nrestart = \"never\"",
            now,
        );
        let mut next_pid = 1;
        let started = start(&mut pool, now, &mut next_pid);
        pool.exited(
            0,
            started[0].1,
            ExitStatus {
                code: Some(0),
                signal: None,
            },
            now,
        );
        assert_eq!(pool.end(), None);
        pool.exited(
            0,
            started[1].1,
            ExitStatus {
                code: Some(0),
                signal: None,
            },
            now,
        );
        assert_eq!(pool.end(), Some(PoolEnd::Clean), "all final");
        let mut other = self::pool("[groups.a]\ncommand = \"w\"\nrestart = \"never\"", now);
        let started = start(&mut other, now, &mut next_pid);
        other.exited(0, started[0].1, KILLED, now);
        assert_eq!(other.end(), Some(PoolEnd::AllTerminated));
    }

    #[test]
    fn scale_requests_outside_the_bounds_or_for_unknown_groups_change_nothing() {
        let now = Instant::now();
        let mut pool = pool(
            "[groups.a]\ncommand = \"w\"\nsize = 2\nmin = 1\nmax = 5",
            now,
        );
        let group = GroupName::parse("a").unwrap();
        let scale = |target, delta| PoolScale {
            group: group.clone(),
            target,
            delta,
        };
        assert_eq!(pool.scale(&scale(Some(5), None)).unwrap().target, 5);
        assert_eq!(pool.scale(&scale(None, Some(-4))).unwrap().target, 1);
        for bad in [
            scale(Some(6), None),
            scale(Some(0), None),
            scale(None, Some(-1)),
        ] {
            let error = pool.scale(&bad).unwrap_err();
            assert_eq!(error.code, ErrorCode::OutOfBounds);
            assert!(error.message.contains("1 to 5"), "{}", error.message);
        }
        let both = pool.scale(&scale(Some(2), Some(1))).unwrap_err();
        assert_eq!(both.code, ErrorCode::InvalidPayload);
        let unknown = PoolScale {
            group: GroupName::parse("zz").unwrap(),
            target: Some(1),
            delta: None,
        };
        assert_eq!(
            pool.scale(&unknown).unwrap_err().code,
            ErrorCode::UnknownGroup
        );
        let restart = PoolRestart {
            mode: RestartMode::Soft,
            group: Some(GroupName::parse("zz").unwrap()),
        };
        assert_eq!(
            pool.restart(&restart).unwrap_err().code,
            ErrorCode::UnknownGroup
        );
        assert_eq!(
            pool.groups[0].target, 1,
            "only the accepted requests changed it"
        );
    }

    #[test]
    fn the_state_reports_every_process() {
        let now = Instant::now();
        let mut pool = pool("[groups.a]\ncommand = \"w\"\nsize = 2\nmax = 2", now);
        let mut next_pid = 7;
        start(&mut pool, now, &mut next_pid);
        pool.exited(0, 8, KILLED, now);
        let state = pool.state(now + Duration::from_secs(3));
        assert_eq!(state.pool_id, "p");
        assert_eq!(state.uptime_ms, 3000);
        let processes = &state.groups[0].processes;
        assert_eq!(processes[0].worker_id, WorkerId::parse("p-a-1").unwrap());
        assert_eq!(
            (processes[0].pid, processes[0].state),
            (Some(7), ProcessPhase::Running)
        );
        assert_eq!(processes[0].uptime_ms, Some(3000));
        assert_eq!(processes[1].state, ProcessPhase::Restarting);
        assert_eq!(processes[1].pid, None);
        let last = processes[1].last_exit.as_ref().unwrap();
        assert_eq!(
            (last.signal, last.class),
            (Some(9), drover_protocol::ExitClass::Unexpected)
        );
    }

    #[test]
    fn output_is_shipped_once_the_process_is_seen_registered_and_never_after_an_unregistered_end() {
        let now = Instant::now();
        let mut pool = pool("[groups.a]\ncommand = \"w\"\nsize = 2\nmax = 2", now);
        let worker = |n: u32| WorkerId::parse(format!("p-a-{n}")).unwrap();
        for (group, action) in pool.reconcile(now) {
            if let Action::Start { index, .. } = action {
                // A previous run of the pool left incarnation 4 in the registry.
                pool.groups[group].started(index, 10 + index, 4, now);
            }
        }
        assert_eq!(pool.output_gate(11), Gate::Hold);
        assert_eq!(pool.output_gate(12), Gate::Hold);
        // The earlier process's record is not this one's registration.
        pool.groups[0].observed(&worker(1), 4, WorkerStatus::Idle, 0, 1);
        assert_eq!(pool.output_gate(11), Gate::Hold);
        // Registered: still INITIALIZING, but its record exists, so its lines are taken.
        pool.groups[0].observed(&worker(1), 5, WorkerStatus::Initializing, 0, 1);
        assert_eq!(pool.output_gate(11), Gate::Ship);
        // Ended before registering: its lines are never shipped.
        pool.exited(0, 12, KILLED, now);
        assert_eq!(pool.output_gate(12), Gate::Discard);
        assert_eq!(
            pool.output_gate(99),
            Gate::Discard,
            "not the pool's process"
        );
        // Its replacement holds again.
        let restart_at = now + Duration::from_secs(5);
        for (group, action) in pool.reconcile(restart_at) {
            if let Action::Start { index, .. } = action {
                pool.groups[group].started(index, 13, 0, restart_at);
            }
        }
        assert_eq!(pool.output_gate(13), Gate::Hold);
    }
}
