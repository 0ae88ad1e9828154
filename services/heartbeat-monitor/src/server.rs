//! Wiring and I/O: the `drover-heartbeat-monitor` micro service, the pulse subscription,
//! the sweep that turns silence into probes and reports, and the worker records it follows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::connection::State;
use async_nats::{Client, Message, Subscriber};
use drover_protocol::envelope::{decode, decode_internal_reply, encode_internal};
use drover_protocol::subject::{self, internal, keys};
use drover_protocol::{
    encode, CheckPulse, GivePulse, Liveness, LivenessReport, Timestamp, WorkerId, WorkerRecord,
};
use drover_service_kit::kv_cache::{Change, KvCache};
use drover_service_kit::worker_spans;
use drover_service_kit::{drain, reply, start_service, Readiness, Settings, WireError};
use drover_telemetry::KeyValue;
use futures::StreamExt;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::error::MonitorError;
use crate::metrics;
use crate::tracker::{self, Action, PulseVerdict, Tracker};

/// What `$SRV.INFO` says this service does.
const DESCRIPTION: &str = "Drover heartbeat-monitor: pulses, probes, lost and offline workers";

/// How long to wait for the registry to take a report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one error per worker per this period, so a misbehaving worker cannot flood.
const ERROR_PERIOD: Duration = Duration::from_secs(1);

/// The monitor: the tracker and everything its decisions are carried out with.
pub(crate) struct Monitor {
    nats: Client,
    settings: Settings,
    tracker: Mutex<Tracker>,
    cache: Arc<KvCache<WorkerRecord>>,
    last_error: Mutex<HashMap<WorkerId, Instant>>,
    tasks: TaskTracker,
}

impl Monitor {
    /// A monitor of the workers in `cache`, which has caught up.
    pub(crate) fn new(settings: Settings, nats: Client, cache: Arc<KvCache<WorkerRecord>>) -> Self {
        Self {
            nats,
            settings,
            tracker: Mutex::new(Tracker::new()),
            cache,
            last_error: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        }
    }

    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes pulses, sweeps and follows the worker records until `shutdown`.
    pub(crate) async fn serve(
        self: Arc<Self>,
        shutdown: CancellationToken,
        readiness: Readiness,
    ) -> anyhow::Result<()> {
        // Subscribed before the resync, so that no change falls between the two.
        let changes = self.cache.subscribe();
        self.resync();
        info!(workers = self.tracker().tracked(), "tracking live workers");

        let pulses = self
            .nats
            .subscribe(subject::from_any_worker(keys::GIVE_PULSE))
            .await
            .context("subscribing to pulses")?;
        // No request endpoints, but discoverable like the other services ($SRV.PING, INFO, STATS).
        let service = start_service(&self.nats, "drover-heartbeat-monitor", DESCRIPTION).await?;
        self.tasks
            .spawn(Arc::clone(&self).receive_pulses(pulses, shutdown.clone()));
        self.tasks.spawn(Arc::clone(&self).sweep(shutdown.clone()));
        readiness.set_serving(true);

        self.follow_records(changes, &shutdown).await;
        drain(service, &self.tasks, &readiness).await;
        Ok(())
    }

    /// Hands every change of a worker record to the tracker until `shutdown`.
    async fn follow_records(
        &self,
        mut changes: broadcast::Receiver<Change<WorkerRecord>>,
        shutdown: &CancellationToken,
    ) {
        while let Some(change) = shutdown.run_until_cancelled(changes.recv()).await {
            match change {
                Ok(Change::Put(_, record)) => self.tracker().on_record(&record, Instant::now()),
                Ok(Change::Deleted(_)) => {}
                Err(RecvError::Lagged(missed)) => {
                    debug!(missed, "record changes lagged, resynchronising");
                    self.resync();
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn resync(&self) {
        let now = Instant::now();
        let records = self.cache.values();
        let mut tracker = self.tracker();
        for record in records {
            tracker.on_record(&record, now);
        }
        ::metrics::gauge!(metrics::TRACKED).set(tracker.tracked() as f64);
    }

    async fn receive_pulses(self: Arc<Self>, mut pulses: Subscriber, shutdown: CancellationToken) {
        while let Some(Some(message)) = shutdown.run_until_cancelled(pulses.next()).await {
            self.on_pulse(&message);
        }
    }

    fn on_pulse(self: &Arc<Self>, message: &Message) {
        ::metrics::counter!(metrics::PULSES).increment(1);
        let arrived = Instant::now();
        let subject = message.subject.as_str();
        let Some(worker) = subject::parse_inbound(subject)
            .ok()
            .and_then(|inbound| inbound.worker)
        else {
            ::metrics::counter!(metrics::PULSES_REJECTED, "code" => "invalid_subject").increment(1);
            return;
        };
        let pulse: GivePulse = match decode(&message.payload, self.settings.max_payload_bytes) {
            Ok(pulse) => pulse,
            Err(error) => return self.reject(&worker, subject, error.into()),
        };
        let verdict = self.tracker().on_pulse(&worker, &pulse, arrived);
        match verdict {
            PulseVerdict::Accepted(actions) => self.perform(actions),
            PulseVerdict::Rejected(rejection) => {
                self.reject(&worker, subject, MonitorError::Rejected(rejection));
            }
            PulseVerdict::Unknown => {
                // The record may be newer than this monitor's view: read it, then retry.
                let monitor = Arc::clone(self);
                let subject = subject.to_owned();
                self.tasks.spawn(async move {
                    match monitor.recheck(&worker, &pulse, arrived).await {
                        Ok(actions) => monitor.perform(actions),
                        Err(error) => monitor.reject(&worker, &subject, error),
                    }
                });
            }
        }
    }

    /// Offers a pulse from an untracked worker again, after reading its record.
    async fn recheck(
        &self,
        worker: &WorkerId,
        pulse: &GivePulse,
        arrived: Instant,
    ) -> Result<Vec<Action>, MonitorError> {
        let record = match self.cache.fetch(worker.as_str()).await {
            Ok(record) => record,
            Err(error) => {
                warn!(worker = %worker, %error, "could not read a worker record");
                return Ok(Vec::new());
            }
        };
        let Some(record) = record else {
            return Err(MonitorError::UnknownWorker {
                worker: worker.clone(),
                incarnation: pulse.incarnation,
            });
        };
        let verdict = {
            let mut tracker = self.tracker();
            tracker.on_record(&record.value, Instant::now());
            tracker.on_pulse(worker, pulse, arrived)
        };
        match verdict {
            PulseVerdict::Accepted(actions) => Ok(actions),
            PulseVerdict::Rejected(rejection) => Err(MonitorError::Rejected(rejection)),
            PulseVerdict::Unknown => Err(MonitorError::Rejected(tracker::stale(
                worker,
                pulse.incarnation,
                record.value.incarnation,
            ))),
        }
    }

    /// Counts a refused pulse and tells the worker, at most once per [`ERROR_PERIOD`].
    fn reject(&self, worker: &WorkerId, in_reply_to: &str, error: MonitorError) {
        let code = error.code();
        ::metrics::counter!(metrics::PULSES_REJECTED, "code" => code.as_str()).increment(1);
        let now = Instant::now();
        {
            let mut last = self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(previous) = last.get(worker) {
                if now.saturating_duration_since(*previous) < ERROR_PERIOD {
                    return;
                }
            }
            last.insert(worker.clone(), now);
        }
        debug!(worker = %worker, %code, "pulse rejected");
        let error = error.to_wire(in_reply_to);
        let nats = self.nats.clone();
        let worker = worker.clone();
        self.tasks.spawn(async move {
            reply::to_worker_error(&nats, &worker, &error).await;
        });
    }

    fn perform(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Probe { worker, id } => {
                    ::metrics::counter!(metrics::PROBES).increment(1);
                    let nats = self.nats.clone();
                    self.tasks.spawn(async move {
                        let subject = subject::to_worker(&worker, keys::CHECK_PULSE);
                        if let Err(error) = nats.publish(subject, encode(&CheckPulse { id })).await
                        {
                            warn!(worker = %worker, %error, "could not send a probe");
                        }
                    });
                }
                Action::Report {
                    worker,
                    incarnation,
                    liveness,
                    reported_status,
                } => {
                    if let Some(liveness) = liveness {
                        let label = match liveness {
                            Liveness::Alive => "alive",
                            Liveness::Unresponsive => "unresponsive",
                            Liveness::Lost => "lost",
                            Liveness::Offline => "offline",
                        };
                        ::metrics::counter!(metrics::REPORTS, "liveness" => label).increment(1);
                        info!(worker = %worker, incarnation, ?liveness, "reporting liveness");
                    }
                    let report = LivenessReport {
                        worker_id: worker.clone(),
                        incarnation,
                        liveness,
                        reported_status,
                    };
                    let monitor = Arc::clone(self);
                    let decided_at = Timestamp::now();
                    self.tasks.spawn(async move {
                        match send_report(&monitor.nats, &report).await {
                            Ok(()) => monitor.record_decision(&report, decided_at),
                            Err(reason) => {
                                warn!(worker = %worker, reason, "liveness report not taken, will retry");
                                monitor.tracker().report_failed(&worker, liveness);
                            }
                        }
                    });
                }
            }
        }
    }

    /// Records a conclusion the registry took about a worker holding runs in each run's
    /// trace, under its attempt (docs/observability.md): once, after the report is taken.
    fn record_decision(&self, report: &LivenessReport, at: Timestamp) {
        let Some((name, decision)) = report.liveness.and_then(decision_span) else {
            return;
        };
        let Some(record) = self.cache.get(report.worker_id.as_str()) else {
            return;
        };
        let record = &record.value;
        if record.incarnation != report.incarnation {
            return;
        }
        let attributes = [
            KeyValue::new(
                "drover.worker.heartbeat_interval_ms",
                record.heartbeat_interval_ms as i64,
            ),
            KeyValue::new("drover.worker.lost_after_ms", record.lost_after_ms as i64),
        ];
        worker_spans::record_about_held_runs(name, decision, record, at, &attributes);
    }

    /// Looks for silent workers a few times per heartbeat interval until `shutdown`.
    async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let mut cut_off = false;
        loop {
            let period = self
                .tracker()
                .shortest_interval()
                .map_or(Duration::from_millis(125), |interval| interval / 8)
                .clamp(Duration::from_millis(5), Duration::from_millis(125));
            if shutdown
                .run_until_cancelled(tokio::time::sleep(period))
                .await
                .is_none()
            {
                return;
            }
            // While disconnected the monitor hears no pulses: it concludes nothing, and when
            // it is back every worker gets a fresh lostAfterMs, as after a restart.
            if self.nats.connection_state() != State::Connected {
                if !cut_off {
                    warn!("disconnected from nats, suspending liveness decisions");
                }
                cut_off = true;
                continue;
            }
            let actions = {
                let mut tracker = self.tracker();
                if cut_off {
                    info!("reconnected, granting every worker a fresh grace period");
                    tracker.grace_all(Instant::now());
                    cut_off = false;
                }
                ::metrics::gauge!(metrics::TRACKED).set(tracker.tracked() as f64);
                tracker.sweep(Instant::now())
            };
            self.perform(actions);
        }
    }
}

/// The span recording a liveness conclusion about a worker holding runs, and the
/// conclusion's name, if any.
fn decision_span(liveness: Liveness) -> Option<(&'static str, &'static str)> {
    match liveness {
        Liveness::Unresponsive => Some(("drover.worker.unresponsive", "unresponsive")),
        Liveness::Lost => Some(("drover.worker.lost", "lost")),
        Liveness::Offline => Some(("drover.worker.offline", "offline")),
        Liveness::Alive => None,
    }
}

async fn send_report(nats: &Client, report: &LivenessReport) -> Result<(), String> {
    let request = nats.request(internal::REGISTRY_LIVENESS, encode_internal(report));
    let response = tokio::time::timeout(REPORT_TIMEOUT, request)
        .await
        .map_err(|_| "registry did not answer".to_owned())?
        .map_err(|error| error.to_string())?;
    let answer = decode_internal_reply(&response.payload).map_err(|error| error.to_string())?;
    if answer.ok {
        Ok(())
    } else {
        Err(answer.message.unwrap_or_else(|| "refused".to_owned()))
    }
}
