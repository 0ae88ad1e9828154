//! The heartbeat-monitor: finds workers that stopped pulsing (DESIGN §5).
//!
//! Pulses are core NATS messages and never touch disk. The monitor follows the registry's
//! bucket to know which workers exist, probes the silent ones with `check_pulse`, and reports
//! UNRESPONSIVE, LOST or OFFLINE to the registry. Any number of monitors may run: each sees
//! every pulse, and the registry applies a report only to the incarnation it names.

pub mod metrics;
pub mod tracker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::service::ServiceExt;
use async_nats::Client;
use drover_protocol::envelope::{decode, decode_internal_reply, encode_internal};
use drover_protocol::subject::{self, internal, keys, resources};
use drover_protocol::{
    encode, CheckPulse, ErrorCode, ErrorPayload, GivePulse, Liveness, LivenessReport, WorkerId,
    WorkerRecord,
};
use drover_service_kit::kv_cache::{Change, KvCache};
use drover_service_kit::{reply, Readiness, Settings};
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::tracker::{Action, PulseVerdict, Tracker};

/// How long to wait for the registry to take a report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one error per worker per this period, so a misbehaving worker cannot flood.
const ERROR_PERIOD: Duration = Duration::from_secs(1);

struct Monitor {
    nats: Client,
    settings: Settings,
    tracker: Mutex<Tracker>,
    cache: Arc<KvCache<WorkerRecord>>,
    last_error: Mutex<HashMap<WorkerId, Instant>>,
    tasks: TaskTracker,
}

impl Monitor {
    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs the monitor until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    nats: Client,
    shutdown: CancellationToken,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(nats.clone());
    let bucket = js
        .get_key_value(resources::WORKERS_BUCKET)
        .await
        .context("opening the workers bucket")?;
    let cache = KvCache::<WorkerRecord>::spawn(bucket, shutdown.child_token());
    let mut changes = cache.subscribe();
    tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        () = cache.wait_caught_up() => {}
    }
    let monitor = Arc::new(Monitor {
        nats: nats.clone(),
        settings,
        tracker: Mutex::new(Tracker::new()),
        cache: Arc::clone(&cache),
        last_error: Mutex::new(HashMap::new()),
        tasks: TaskTracker::new(),
    });
    resync(&monitor);
    info!(
        workers = monitor.tracker().tracked(),
        "tracking live workers"
    );

    let pulses = nats
        .subscribe(subject::from_any_worker(keys::GIVE_PULSE))
        .await
        .context("subscribing to pulses")?;
    // No request endpoints, but discoverable like the other services ($SRV.PING, INFO, STATS).
    let service = nats
        .service_builder()
        .description("Drover heartbeat-monitor: pulses, probes, lost and offline workers")
        .start("drover-heartbeat-monitor", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|error| anyhow::anyhow!("starting the micro service: {error}"))?;
    readiness.set_serving(true);

    let pulse_task = tokio::spawn(receive_pulses(
        Arc::clone(&monitor),
        pulses,
        shutdown.clone(),
    ));
    let sweep_task = tokio::spawn(sweep(Arc::clone(&monitor), shutdown.clone()));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            change = changes.recv() => match change {
                Ok(Change::Put(_, record)) => monitor.tracker().on_record(&record, Instant::now()),
                Ok(Change::Deleted(_)) => {}
                Err(RecvError::Lagged(missed)) => {
                    debug!(missed, "record changes lagged, resynchronising");
                    resync(&monitor);
                }
                Err(RecvError::Closed) => break,
            },
        }
    }
    readiness.set_serving(false);
    if let Err(error) = service.stop().await {
        debug!(%error, "stopping the micro service");
    }
    let _ = tokio::join!(pulse_task, sweep_task);
    monitor.tasks.close();
    monitor.tasks.wait().await;
    Ok(())
}

fn resync(monitor: &Monitor) {
    let now = Instant::now();
    let records = monitor.cache.values();
    let mut tracker = monitor.tracker();
    for record in records {
        tracker.on_record(&record, now);
    }
    ::metrics::gauge!(metrics::TRACKED).set(tracker.tracked() as f64);
}

async fn receive_pulses(
    monitor: Arc<Monitor>,
    mut pulses: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            message = pulses.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        ::metrics::counter!(metrics::PULSES).increment(1);
        let arrived = Instant::now();
        let subject = message.subject.as_str();
        let Some(worker) = subject::parse_inbound(subject)
            .ok()
            .and_then(|inbound| inbound.worker)
        else {
            ::metrics::counter!(metrics::PULSES_REJECTED, "code" => "invalid_subject").increment(1);
            continue;
        };
        let pulse: GivePulse = match decode(&message.payload, monitor.settings.max_payload_bytes) {
            Ok(pulse) => pulse,
            Err(error) => {
                reject(&monitor, &worker, error.to_error(subject));
                continue;
            }
        };
        let verdict = monitor.tracker().on_pulse(&worker, &pulse, Instant::now());
        match verdict {
            PulseVerdict::Accepted(actions) => perform(&monitor, actions),
            PulseVerdict::Rejected(rejection) => reject(
                &monitor,
                &worker,
                ErrorPayload::new(rejection.code, rejection.message, subject)
                    .with_details(rejection.details),
            ),
            PulseVerdict::Unknown => {
                // The record may be newer than this monitor's view: read it, then retry.
                let monitor = Arc::clone(&monitor);
                let subject = subject.to_owned();
                let tasks = monitor.tasks.clone();
                tasks.spawn(async move { recheck(monitor, worker, pulse, arrived, subject).await });
            }
        }
    }
}

async fn recheck(
    monitor: Arc<Monitor>,
    worker: WorkerId,
    pulse: GivePulse,
    arrived: Instant,
    subject: String,
) {
    let record = match monitor.cache.fetch(worker.as_str()).await {
        Ok(record) => record,
        Err(error) => {
            warn!(worker = %worker, %error, "could not read a worker record");
            return;
        }
    };
    let Some(record) = record else {
        reject(
            &monitor,
            &worker,
            ErrorPayload::new(
                ErrorCode::UnknownWorker,
                format!("worker {:?} is not registered", worker.as_str()),
                subject,
            )
            .with_details(
                serde_json::json!({"workerID": worker, "incarnation": pulse.incarnation}),
            ),
        );
        return;
    };
    let verdict = {
        let mut tracker = monitor.tracker();
        tracker.on_record(&record.value, Instant::now());
        tracker.on_pulse(&worker, &pulse, arrived)
    };
    match verdict {
        PulseVerdict::Accepted(actions) => perform(&monitor, actions),
        PulseVerdict::Rejected(rejection) => reject(
            &monitor,
            &worker,
            ErrorPayload::new(rejection.code, rejection.message, subject)
                .with_details(rejection.details),
        ),
        PulseVerdict::Unknown => reject(
            &monitor,
            &worker,
            ErrorPayload::new(
                ErrorCode::StaleIncarnation,
                format!(
                    "incarnation {} of worker {:?} is not current (current is {})",
                    pulse.incarnation,
                    worker.as_str(),
                    record.value.incarnation
                ),
                subject,
            )
            .with_details(serde_json::json!({
                "workerID": worker,
                "incarnation": pulse.incarnation,
                "current": record.value.incarnation,
            })),
        ),
    }
}

fn reject(monitor: &Arc<Monitor>, worker: &WorkerId, error: ErrorPayload) {
    ::metrics::counter!(metrics::PULSES_REJECTED, "code" => error.code.as_str()).increment(1);
    let now = Instant::now();
    {
        let mut last = monitor
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(previous) = last.get(worker) {
            if now.saturating_duration_since(*previous) < ERROR_PERIOD {
                return;
            }
        }
        last.insert(worker.clone(), now);
    }
    debug!(worker = %worker, code = %error.code, "pulse rejected");
    let nats = monitor.nats.clone();
    let worker = worker.clone();
    monitor.tasks.spawn(async move {
        reply::to_worker_error(&nats, &worker, &error).await;
    });
}

fn perform(monitor: &Arc<Monitor>, actions: Vec<Action>) {
    for action in actions {
        match action {
            Action::Probe { worker, id } => {
                ::metrics::counter!(metrics::PROBES).increment(1);
                let nats = monitor.nats.clone();
                monitor.tasks.spawn(async move {
                    let subject = subject::to_worker(&worker, keys::CHECK_PULSE);
                    if let Err(error) = nats.publish(subject, encode(&CheckPulse { id })).await {
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
                let monitor = Arc::clone(monitor);
                let tasks = monitor.tasks.clone();
                tasks.spawn(async move {
                    if let Err(reason) = send_report(&monitor.nats, &report).await {
                        warn!(worker = %worker, reason, "liveness report not taken, will retry");
                        monitor.tracker().report_failed(&worker, liveness);
                    }
                });
            }
        }
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

async fn sweep(monitor: Arc<Monitor>, shutdown: CancellationToken) {
    let mut cut_off = false;
    loop {
        let period = monitor
            .tracker()
            .shortest_interval()
            .map_or(Duration::from_millis(125), |interval| interval / 8)
            .clamp(Duration::from_millis(5), Duration::from_millis(125));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        // While disconnected the monitor hears no pulses: it concludes nothing, and when it is
        // back every worker gets a fresh lostAfterMs, as after a restart.
        if monitor.nats.connection_state() != async_nats::connection::State::Connected {
            if !cut_off {
                warn!("disconnected from nats, suspending liveness decisions");
            }
            cut_off = true;
            continue;
        }
        let actions = {
            let mut tracker = monitor.tracker();
            if cut_off {
                info!("reconnected, granting every worker a fresh grace period");
                tracker.grace_all(Instant::now());
                cut_off = false;
            }
            ::metrics::gauge!(metrics::TRACKED).set(tracker.tracked() as f64);
            tracker.sweep(Instant::now())
        };
        perform(&monitor, actions);
    }
}
