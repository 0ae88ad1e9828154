//! The actor's timers. An attempt's deadlines are rebuilt from the record's timestamps, so
//! that a new leader keeps the deadlines the old one set (DESIGN §6.3 item 4, §6.4): no
//! `starting` within `assign_ack_timeout_ms` of `assignedAt`, no end within `maxExecTimeMs`
//! of `startedAt`. (`maxWaitTimeMs` is a durable NATS schedule, set at intake from
//! `createdAt`; see [`wait_deadline`](crate::intake::wait_deadline).)

use drover_protocol::{RunRecord, RunStatus, Timestamp};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::Actor;
use crate::transitions::{self, AttemptFailure};

/// The time on both clocks: the wall clock of the record's timestamps, and the monotonic
/// clock that timers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Clock {
    pub(super) wall: Timestamp,
    pub(super) instant: Instant,
}

impl Clock {
    /// Now, on both clocks.
    pub(super) fn now() -> Self {
        Self {
            wall: Timestamp::now(),
            instant: Instant::now(),
        }
    }

    /// The instant at which the wall clock reads `at` (now, when that has passed).
    fn instant_at(self, at: Timestamp) -> Instant {
        self.instant + at.since(self.wall)
    }
}

/// One of the actor's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Extend the lease.
    Progress,
    /// Read the record again (it was missing, or the store failed).
    Reload,
    /// Ask for a slot again (the last one was not granted).
    Replace,
    /// The worker did not acknowledge its assignment in time.
    AckTimeout,
    /// The attempt ran past `maxExecTimeMs`.
    ExecTimeout,
}

impl Timer {
    /// The order in which timers due together are handled.
    pub(super) const ORDER: [Timer; 5] = [
        Timer::Progress,
        Timer::Reload,
        Timer::Replace,
        Timer::AckTimeout,
        Timer::ExecTimeout,
    ];
}

/// When each of the actor's timers falls due, if it is set.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Deadlines {
    pub(super) ack: Option<Instant>,
    pub(super) exec: Option<Instant>,
    pub(super) progress: Option<Instant>,
    pub(super) reload: Option<Instant>,
    pub(super) replace: Option<Instant>,
}

impl Deadlines {
    /// The earliest deadline set.
    pub(super) fn next(&self) -> Option<Instant> {
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

    fn slot(&mut self, timer: Timer) -> &mut Option<Instant> {
        match timer {
            Timer::Progress => &mut self.progress,
            Timer::Reload => &mut self.reload,
            Timer::Replace => &mut self.replace,
            Timer::AckTimeout => &mut self.ack,
            Timer::ExecTimeout => &mut self.exec,
        }
    }

    /// Clears `timer` and returns true when it is due at `now`.
    pub(super) fn take_due(&mut self, timer: Timer, now: Instant) -> bool {
        let slot = self.slot(timer);
        if slot.is_some_and(|due| due <= now) {
            *slot = None;
            return true;
        }
        false
    }

    /// Sets the timers of the attempt `record` is in, from its timestamps.
    pub(super) fn arm_attempt(&mut self, record: &RunRecord, ack_timeout_ms: u64, clock: Clock) {
        self.clear_attempt();
        match record.status {
            RunStatus::Assigned => {
                let since = record.assigned_at.unwrap_or(clock.wall);
                self.ack = Some(clock.instant_at(since.plus_millis(ack_timeout_ms)));
            }
            RunStatus::Running => {
                if let Some(limit) = record.max_exec_time_ms {
                    let since = record.started_at.unwrap_or(clock.wall);
                    self.exec = Some(clock.instant_at(since.plus_millis(limit)));
                }
            }
            _ => {}
        }
    }

    /// Clears the timers of an attempt that ended.
    pub(super) fn clear_attempt(&mut self) {
        self.ack = None;
        self.exec = None;
    }
}

impl Actor {
    /// Handles every timer that is due, in [`Timer::ORDER`]. Each handler sees what the
    /// ones before it changed.
    pub(super) async fn on_deadline(&mut self) {
        let now = Instant::now();
        for timer in Timer::ORDER {
            if self.deadlines.take_due(timer, now) {
                self.on_timer(timer, now).await;
            }
        }
    }

    async fn on_timer(&mut self, timer: Timer, now: Instant) {
        let status = self.record().map(|record| record.status);
        match timer {
            Timer::Progress => self.extend_lease(now).await,
            Timer::Reload => match self.reload().await.map(|stored| stored.is_some()) {
                Ok(true) => self.take_in_hand().await,
                Ok(false) if self.lease.is_some() => self.await_record(),
                Ok(false) => {}
                Err(error) => {
                    warn!(%error, "could not read the run, will retry");
                    self.retry_later();
                }
            },
            Timer::Replace if status == Some(RunStatus::Pending) => self.request_placement(),
            Timer::AckTimeout if status == Some(RunStatus::Assigned) => {
                debug!(run = %self.run, "assignment not acknowledged in time, reassigning");
                self.take_back(transitions::NOT_ACKNOWLEDGED, true).await;
            }
            Timer::ExecTimeout if status == Some(RunStatus::Running) => {
                debug!(run = %self.run, "attempt exceeded maxExecTimeMs");
                self.fail_current(AttemptFailure::MaxExec, Some("max_exec_exceeded"))
                    .await;
            }
            Timer::Replace | Timer::AckTimeout | Timer::ExecTimeout => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::fixtures::{at, pending, w};
    use crate::transitions::{assign, start};

    const ACK_TIMEOUT_MS: u64 = 5_000;

    fn clock_at(ms: i64) -> Clock {
        Clock {
            wall: at(ms),
            instant: Instant::now(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn armed(record: &RunRecord, clock: Clock) -> Deadlines {
        let mut deadlines = Deadlines::default();
        deadlines.arm_attempt(record, ACK_TIMEOUT_MS, clock);
        deadlines
    }

    #[test]
    fn the_ack_deadline_counts_from_the_assignment() {
        let assigned = assign(&pending(0), &w("a"), 1, at(1_000));
        let clock = clock_at(1_000);
        let deadlines = armed(&assigned, clock);
        assert_eq!(deadlines.ack, Some(clock.instant + ms(5_000)));
        assert_eq!(deadlines.exec, None);
    }

    #[test]
    fn a_new_leader_keeps_what_is_left_of_the_ack_deadline() {
        let assigned = assign(&pending(0), &w("a"), 1, at(1_000));
        let clock = clock_at(5_000);
        assert_eq!(armed(&assigned, clock).ack, Some(clock.instant + ms(1_000)));
    }

    #[test]
    fn an_overdue_deadline_falls_due_at_once() {
        let assigned = assign(&pending(0), &w("a"), 1, at(1_000));
        let clock = clock_at(60_000);
        let mut deadlines = armed(&assigned, clock);
        assert_eq!(deadlines.ack, Some(clock.instant));
        assert!(deadlines.take_due(Timer::AckTimeout, clock.instant));
    }

    #[test]
    fn max_exec_counts_from_the_start_and_replaces_the_ack_deadline() {
        let running = start(&assign(&pending(0), &w("a"), 1, at(0)), at(20)).expect("assigned");
        let clock = clock_at(30);
        let mut deadlines = Deadlines {
            ack: Some(clock.instant),
            ..Deadlines::default()
        };
        deadlines.arm_attempt(&running, ACK_TIMEOUT_MS, clock);
        assert_eq!(deadlines.ack, None, "the worker acknowledged");
        assert_eq!(
            deadlines.exec,
            Some(clock.instant + ms(40)),
            "maxExecTimeMs 50 from startedAt 20, at 30"
        );
    }

    #[test]
    fn no_exec_deadline_without_max_exec_time() {
        let mut record = pending(0);
        record.max_exec_time_ms = None;
        let running = start(&assign(&record, &w("a"), 1, at(0)), at(20)).expect("assigned");
        assert_eq!(armed(&running, clock_at(30)), Deadlines::default());
    }

    #[test]
    fn a_run_off_its_worker_has_no_attempt_deadlines() {
        let clock = clock_at(0);
        let mut deadlines = Deadlines {
            ack: Some(clock.instant),
            exec: Some(clock.instant),
            progress: Some(clock.instant + ms(7)),
            ..Deadlines::default()
        };
        deadlines.arm_attempt(&pending(0), ACK_TIMEOUT_MS, clock);
        assert_eq!(deadlines.ack, None);
        assert_eq!(deadlines.exec, None);
        assert_eq!(deadlines.progress, Some(clock.instant + ms(7)), "kept");
    }

    #[test]
    fn the_next_deadline_is_the_earliest_set() {
        let base = Instant::now();
        let deadlines = Deadlines {
            ack: Some(base + ms(30)),
            progress: Some(base + ms(10)),
            replace: Some(base + ms(20)),
            ..Deadlines::default()
        };
        assert_eq!(deadlines.next(), Some(base + ms(10)));
        assert_eq!(Deadlines::default().next(), None);
    }

    #[test]
    fn a_timer_is_taken_once_and_only_when_due() {
        let base = Instant::now();
        let mut deadlines = Deadlines {
            exec: Some(base + ms(50)),
            reload: Some(base + ms(10)),
            ..Deadlines::default()
        };
        assert!(!deadlines.take_due(Timer::ExecTimeout, base + ms(49)));
        assert!(deadlines.take_due(Timer::Reload, base + ms(49)));
        assert!(!deadlines.take_due(Timer::Reload, base + ms(49)), "cleared");
        assert!(deadlines.take_due(Timer::ExecTimeout, base + ms(50)));
        assert_eq!(deadlines, Deadlines::default());
        assert!(
            !deadlines.take_due(Timer::Progress, base + ms(1_000)),
            "never set"
        );
    }
}
