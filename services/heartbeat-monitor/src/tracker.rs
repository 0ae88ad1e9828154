//! The liveness state machine, free of I/O: records and pulses go in, probes and reports
//! come out. Time is passed in, so the timing rules are unit-tested with exact instants.

use std::collections::HashMap;
use std::time::Duration;

use drover_protocol::{
    ErrorCode, GivePulse, Incarnation, Liveness, WorkerId, WorkerPhase, WorkerRecord, WorkerStatus,
};
use serde_json::json;
use tokio::time::Instant;

/// Something the monitor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `check_pulse` with this probe id.
    Probe {
        /// The worker.
        worker: WorkerId,
        /// Probe id to echo.
        id: String,
    },
    /// Tell the registry what was concluded, or what the worker reports.
    Report {
        /// The worker.
        worker: WorkerId,
        /// The incarnation the report is about.
        incarnation: Incarnation,
        /// The conclusion, if any.
        liveness: Option<Liveness>,
        /// The status the worker reports, when it changed.
        reported_status: Option<WorkerStatus>,
    },
}

/// Why a pulse was refused: an error code for the worker's error inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct PulseRejection {
    /// The `v1.error` code.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
    /// Structured context.
    pub details: serde_json::Value,
}

/// What to make of a pulse.
#[derive(Debug, Clone, PartialEq)]
pub enum PulseVerdict {
    /// Accepted; these actions follow.
    Accepted(Vec<Action>),
    /// The worker is not tracked: look its record up, then offer the pulse again.
    Unknown,
    /// Refused.
    Rejected(PulseRejection),
}

#[derive(Debug, Clone)]
struct Tracked {
    incarnation: Incarnation,
    phase: WorkerPhase,
    holds_runs: bool,
    interval: Duration,
    lost_after: Duration,
    last_seen: Instant,
    /// False until the first pulse of this incarnation is taken in.
    pulsed: bool,
    probe_sent: Option<Instant>,
    probe_seq: u64,
    /// What the registry's record says about unresponsiveness.
    recorded_unresponsive: bool,
    /// The reported status the registry's record holds.
    recorded_status: Option<WorkerStatus>,
    /// The liveness conclusion sent and not yet reflected in the record.
    in_flight: Option<Liveness>,
    /// Set once LOST or OFFLINE was concluded.
    ended: bool,
}

/// Per-worker liveness.
#[derive(Debug, Default)]
pub struct Tracker {
    workers: HashMap<WorkerId, Tracked>,
    gone: HashMap<WorkerId, (Incarnation, WorkerStatus)>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of workers being watched.
    pub fn tracked(&self) -> usize {
        self.workers.len()
    }

    /// Takes in a worker record from the registry's bucket.
    ///
    /// A new incarnation starts with a full `lostAfterMs` of grace from `now`, as does every
    /// worker seen for the first time, which is how a restarted monitor avoids declaring
    /// live workers lost.
    pub fn on_record(&mut self, record: &WorkerRecord, now: Instant) {
        let worker = &record.worker_id;
        if !record.is_live() {
            self.workers.remove(worker);
            self.gone
                .insert(worker.clone(), (record.incarnation, record.status));
            return;
        }
        self.gone.remove(worker);
        let interval = Duration::from_millis(record.heartbeat_interval_ms.max(1));
        let lost_after = Duration::from_millis(record.lost_after_ms.max(1));
        match self.workers.get_mut(worker) {
            Some(tracked) if tracked.incarnation == record.incarnation => {
                tracked.phase = record.phase;
                tracked.holds_runs = !record.runs.is_empty();
                tracked.recorded_unresponsive = record.unresponsive;
                tracked.recorded_status = record.reported_status;
                tracked.interval = interval;
                tracked.lost_after = lost_after;
                if tracked.in_flight == Some(Liveness::Unresponsive) && record.unresponsive
                    || tracked.in_flight == Some(Liveness::Alive) && !record.unresponsive
                {
                    tracked.in_flight = None;
                }
            }
            Some(tracked) if tracked.incarnation > record.incarnation => {}
            _ => {
                self.workers.insert(
                    worker.clone(),
                    Tracked {
                        incarnation: record.incarnation,
                        phase: record.phase,
                        holds_runs: !record.runs.is_empty(),
                        interval,
                        lost_after,
                        last_seen: now,
                        pulsed: false,
                        probe_sent: None,
                        probe_seq: 0,
                        recorded_unresponsive: record.unresponsive,
                        recorded_status: record.reported_status,
                        in_flight: None,
                        ended: false,
                    },
                );
            }
        }
    }

    /// Takes in a pulse that arrived at `arrived`.
    ///
    /// A pulse can be taken in after the fact (it came before this monitor knew the worker,
    /// and waited for the record): it counts from when it arrived, not from when it was
    /// looked at.
    pub fn on_pulse(
        &mut self,
        worker: &WorkerId,
        pulse: &GivePulse,
        arrived: Instant,
    ) -> PulseVerdict {
        let Some(tracked) = self.workers.get_mut(worker) else {
            return match self.gone.get(worker) {
                Some(&(incarnation, status)) if incarnation >= pulse.incarnation => {
                    if incarnation > pulse.incarnation {
                        PulseVerdict::Rejected(stale(worker, pulse.incarnation, incarnation))
                    } else {
                        PulseVerdict::Rejected(PulseRejection {
                            code: ErrorCode::NotRegistered,
                            message: format!(
                                "worker {:?} is {status} and must register again",
                                worker.as_str()
                            ),
                            details: json!({"workerID": worker, "status": status, "incarnation": pulse.incarnation}),
                        })
                    }
                }
                _ => PulseVerdict::Unknown,
            };
        };
        if pulse.incarnation < tracked.incarnation {
            return PulseVerdict::Rejected(stale(worker, pulse.incarnation, tracked.incarnation));
        }
        if pulse.incarnation > tracked.incarnation {
            // The registry has a newer incarnation than this view; catch up first.
            return PulseVerdict::Unknown;
        }
        if !tracked.pulsed || arrived > tracked.last_seen {
            tracked.last_seen = arrived;
        }
        tracked.pulsed = true;
        tracked.probe_sent = None;
        let mut actions = Vec::new();
        let unresponsive_on_record =
            tracked.recorded_unresponsive || tracked.in_flight == Some(Liveness::Unresponsive);
        let liveness = (unresponsive_on_record && tracked.in_flight != Some(Liveness::Alive))
            .then_some(Liveness::Alive);
        let reported_status =
            (tracked.recorded_status != Some(pulse.status)).then_some(pulse.status);
        if liveness.is_some() || reported_status.is_some() {
            if liveness.is_some() {
                tracked.in_flight = liveness;
            }
            tracked.recorded_status = Some(pulse.status);
            actions.push(Action::Report {
                worker: worker.clone(),
                incarnation: tracked.incarnation,
                liveness,
                reported_status,
            });
        }
        PulseVerdict::Accepted(actions)
    }

    /// A report could not be delivered: try again on a later sweep.
    pub fn report_failed(&mut self, worker: &WorkerId, liveness: Option<Liveness>) {
        if let Some(tracked) = self.workers.get_mut(worker) {
            if liveness.is_some() && tracked.in_flight == liveness {
                tracked.in_flight = None;
                tracked.ended = false;
            }
            tracked.recorded_status = None;
        }
    }

    /// Applies the timing rules at `now`.
    pub fn sweep(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for (worker, tracked) in &mut self.workers {
            if tracked.ended {
                continue;
            }
            let silent = now.saturating_duration_since(tracked.last_seen);
            let report = |liveness| Action::Report {
                worker: worker.clone(),
                incarnation: tracked.incarnation,
                liveness: Some(liveness),
                reported_status: None,
            };
            let terminating = tracked.phase == WorkerPhase::Terminating;
            if silent >= tracked.lost_after {
                let liveness = if terminating {
                    Liveness::Offline
                } else {
                    Liveness::Lost
                };
                tracked.ended = true;
                tracked.in_flight = Some(liveness);
                actions.push(report(liveness));
                continue;
            }
            match tracked.probe_sent {
                None if silent >= tracked.interval + tracked.interval / 2 => {
                    tracked.probe_seq += 1;
                    tracked.probe_sent = Some(now);
                    actions.push(Action::Probe {
                        worker: worker.clone(),
                        id: format!("{}-{}", tracked.incarnation, tracked.probe_seq),
                    });
                }
                Some(sent) if now.saturating_duration_since(sent) >= tracked.interval => {
                    if terminating && !tracked.holds_runs {
                        tracked.ended = true;
                        tracked.in_flight = Some(Liveness::Offline);
                        actions.push(report(Liveness::Offline));
                    } else if !tracked.recorded_unresponsive && tracked.in_flight.is_none() {
                        tracked.in_flight = Some(Liveness::Unresponsive);
                        actions.push(report(Liveness::Unresponsive));
                    }
                }
                _ => {}
            }
        }
        actions
    }

    /// Starts every worker's silence afresh at `now`: the monitor itself could not hear
    /// pulses (it was disconnected), so silence so far says nothing about the workers.
    pub fn grace_all(&mut self, now: Instant) {
        for tracked in self.workers.values_mut() {
            if !tracked.ended {
                tracked.last_seen = tracked.last_seen.max(now);
                tracked.probe_sent = None;
            }
        }
    }

    /// The shortest heartbeat interval among tracked workers.
    pub fn shortest_interval(&self) -> Option<Duration> {
        self.workers.values().map(|tracked| tracked.interval).min()
    }
}

/// The refusal of a pulse from incarnation `got` when `current` is the worker's.
pub(crate) fn stale(worker: &WorkerId, got: Incarnation, current: Incarnation) -> PulseRejection {
    PulseRejection {
        code: ErrorCode::StaleIncarnation,
        message: format!(
            "incarnation {got} of worker {:?} is not current (current is {current})",
            worker.as_str()
        ),
        details: json!({"workerID": worker, "incarnation": got, "current": current}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::{HeldRun, RunId, Timestamp};

    const INTERVAL: u64 = 200;
    const LOST_AFTER: u64 = 1000;

    fn record(incarnation: u64, phase: WorkerPhase) -> WorkerRecord {
        let now = Timestamp::now();
        let mut record = WorkerRecord {
            worker_id: WorkerId::parse("w1").unwrap(),
            incarnation,
            status: WorkerStatus::Idle,
            reported_status: None,
            phase,
            unresponsive: false,
            routines: vec![],
            labels: Default::default(),
            capacity: 1,
            runs: vec![],
            name: None,
            sdk: None,
            host: None,
            pid: None,
            heartbeat_interval_ms: INTERVAL,
            lost_after_ms: LOST_AFTER,
            registered_at: now,
            status_changed_at: now,
            ready_at: None,
            terminating_reason: None,
        };
        record.status = record.derive_status();
        record
    }

    fn pulse(incarnation: u64) -> GivePulse {
        GivePulse {
            incarnation,
            status: WorkerStatus::Idle,
            runs: vec![],
            id: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn w1() -> WorkerId {
        WorkerId::parse("w1").unwrap()
    }

    fn liveness_of(actions: &[Action]) -> Vec<Liveness> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Report { liveness, .. } => *liveness,
                Action::Probe { .. } => None,
            })
            .collect()
    }

    #[test]
    fn silent_worker_is_probed_then_unresponsive_then_lost() {
        let start = Instant::now();
        let mut tracker = Tracker::new();
        tracker.on_record(&record(1, WorkerPhase::Ready), start);
        assert!(tracker.sweep(start + ms(299)).is_empty());
        let probe = tracker.sweep(start + ms(300));
        assert!(matches!(probe.as_slice(), [Action::Probe { .. }]));
        assert!(tracker.sweep(start + ms(499)).is_empty());
        assert_eq!(
            liveness_of(&tracker.sweep(start + ms(500))),
            [Liveness::Unresponsive]
        );
        // Nothing repeats while the report is in flight.
        assert!(tracker.sweep(start + ms(600)).is_empty());
        assert_eq!(
            liveness_of(&tracker.sweep(start + ms(1000))),
            [Liveness::Lost]
        );
        assert!(tracker.sweep(start + ms(2000)).is_empty());
    }

    #[test]
    fn pulses_keep_a_worker_alive_and_end_unresponsiveness() {
        let start = Instant::now();
        let mut tracker = Tracker::new();
        tracker.on_record(&record(1, WorkerPhase::Ready), start);
        let first = tracker.on_pulse(&w1(), &pulse(1), start + ms(100));
        // The first pulse records the reported status.
        assert!(matches!(first, PulseVerdict::Accepted(ref actions) if actions.len() == 1));
        for step in 1..20 {
            let now = start + ms(100 + step * INTERVAL);
            assert_eq!(
                tracker.on_pulse(&w1(), &pulse(1), now),
                PulseVerdict::Accepted(vec![])
            );
            assert!(tracker.sweep(now).is_empty());
        }
        // The registry recorded it as unresponsive (e.g. another monitor did); a pulse revives it.
        let mut unresponsive = record(1, WorkerPhase::Ready);
        unresponsive.unresponsive = true;
        tracker.on_record(&unresponsive, start + ms(5000));
        let verdict = tracker.on_pulse(&w1(), &pulse(1), start + ms(5001));
        let PulseVerdict::Accepted(actions) = verdict else {
            panic!("pulse refused")
        };
        assert_eq!(liveness_of(&actions), [Liveness::Alive]);
    }

    #[test]
    fn terminating_worker_goes_offline_not_lost() {
        let start = Instant::now();
        let mut tracker = Tracker::new();
        tracker.on_record(&record(1, WorkerPhase::Terminating), start);
        assert!(matches!(
            tracker.sweep(start + ms(300)).as_slice(),
            [Action::Probe { .. }]
        ));
        // Holding nothing, it is offline once the probe goes unanswered.
        assert_eq!(
            liveness_of(&tracker.sweep(start + ms(500))),
            [Liveness::Offline]
        );
    }

    #[test]
    fn terminating_worker_holding_runs_gets_the_full_delay() {
        let start = Instant::now();
        let mut tracker = Tracker::new();
        let mut holding = record(1, WorkerPhase::Terminating);
        holding.runs.push(HeldRun {
            run_id: RunId::generate(),
            attempt: 1,
            waiting: false,
            waiting_version: 0,
            since: Timestamp::now(),
            traceparent: None,
        });
        tracker.on_record(&holding, start);
        tracker.sweep(start + ms(300));
        assert_eq!(
            liveness_of(&tracker.sweep(start + ms(500))),
            [Liveness::Unresponsive]
        );
        assert_eq!(
            liveness_of(&tracker.sweep(start + ms(1000))),
            [Liveness::Offline]
        );
    }

    #[test]
    fn restart_grants_grace_to_every_live_worker() {
        let start = Instant::now();
        let mut tracker = Tracker::new();
        // A worker whose record is old: the monitor sees it for the first time now.
        tracker.on_record(&record(3, WorkerPhase::Ready), start);
        assert!(liveness_of(&tracker.sweep(start + ms(999))).is_empty());
    }

    #[test]
    fn pulses_from_old_or_gone_incarnations_are_refused() {
        let start = Instant::now();
        let mut tracker = Tracker::new();
        tracker.on_record(&record(2, WorkerPhase::Ready), start);
        let PulseVerdict::Rejected(stale) = tracker.on_pulse(&w1(), &pulse(1), start) else {
            panic!("stale pulse accepted")
        };
        assert_eq!(stale.code, ErrorCode::StaleIncarnation);
        assert_eq!(
            tracker.on_pulse(&w1(), &pulse(3), start),
            PulseVerdict::Unknown
        );

        let mut lost = record(2, WorkerPhase::Lost);
        lost.status = lost.derive_status();
        tracker.on_record(&lost, start);
        let PulseVerdict::Rejected(gone) = tracker.on_pulse(&w1(), &pulse(2), start) else {
            panic!("pulse from a lost worker accepted")
        };
        assert_eq!(gone.code, ErrorCode::NotRegistered);
        let unknown = WorkerId::parse("nobody").unwrap();
        assert_eq!(
            tracker.on_pulse(&unknown, &pulse(1), start),
            PulseVerdict::Unknown
        );
    }

    #[test]
    fn a_pulse_counts_from_its_arrival() {
        let start = Instant::now();
        let mut tracker = Tracker::new();
        // The record is seen late; the pulse that arrived before it still counts from then.
        tracker.on_record(&record(1, WorkerPhase::Ready), start + ms(300));
        tracker.on_pulse(&w1(), &pulse(1), start);
        assert_eq!(
            liveness_of(&tracker.sweep(start + ms(1000))),
            [Liveness::Lost]
        );
    }

    #[test]
    fn grace_after_a_disconnection() {
        let start = Instant::now();
        let mut tracker = Tracker::new();
        tracker.on_record(&record(1, WorkerPhase::Ready), start);
        tracker.grace_all(start + ms(900));
        assert!(liveness_of(&tracker.sweep(start + ms(1800))).is_empty());
        assert_eq!(
            liveness_of(&tracker.sweep(start + ms(1900))),
            [Liveness::Lost]
        );
    }

    #[test]
    fn a_failed_report_is_retried() {
        let start = Instant::now();
        let mut tracker = Tracker::new();
        tracker.on_record(&record(1, WorkerPhase::Ready), start);
        assert_eq!(
            liveness_of(&tracker.sweep(start + ms(1000))),
            [Liveness::Lost]
        );
        tracker.report_failed(&w1(), Some(Liveness::Lost));
        assert_eq!(
            liveness_of(&tracker.sweep(start + ms(1100))),
            [Liveness::Lost]
        );
    }

    #[test]
    fn a_new_incarnation_starts_fresh() {
        let start = Instant::now();
        let mut tracker = Tracker::new();
        tracker.on_record(&record(1, WorkerPhase::Ready), start);
        tracker.sweep(start + ms(1000));
        tracker.on_record(&record(2, WorkerPhase::Initializing), start + ms(1100));
        assert!(liveness_of(&tracker.sweep(start + ms(1500))).is_empty());
        assert_eq!(
            liveness_of(&tracker.sweep(start + ms(2100))),
            [Liveness::Lost]
        );
    }
}
