//! The supervising loop: carries out the pool's decisions on real processes and feeds it what
//! happens (exits, the registry's view of each worker, runs ending, requests, signals).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_nats::Client;
use drover_protocol::{
    subject, ExitClass, PoolRestart, PoolScale, ProcessPhase, RestartMode, RoutineId, WorkerId,
    WorkerRecord,
};
use futures::StreamExt;
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use drover_service_kit::NatsAuth;

use crate::autoscale::{Autoscaler, Sample};
use crate::config::PoolConfig;
use crate::control::{self, Control};
use crate::group::{Action, ExitOutcome};
use crate::lookups;
use crate::metrics as names;
use crate::output::Gate;
use crate::pool::{Pool, PoolEnd, Stopping};
use crate::process::{self, Exit, Launch};

/// How often the pool reconsiders what to start and stop.
const TICK: Duration = Duration::from_millis(100);
/// How often it asks the registry about its processes and reads their memory.
const LOOK: Duration = Duration::from_secs(1);

/// What a look at the registry and the queue found.
#[derive(Debug)]
enum Finding {
    /// The registry's record of one of the pool's workers.
    Worker(Box<WorkerRecord>),
    /// Unfinished runs of an autoscaled group's routines.
    Backlog { group: usize, unfinished: u64 },
}

/// Runs the pool until it ends: every process ended for good, a critical shutdown, or a
/// shutdown asked by `shutdown`, SIGTERM or SIGINT (a second one kills the processes).
///
/// It connects to `nats_url` first, waiting for NATS as long as it takes (or until
/// `shutdown`), and hands the same URL to its processes. No credentials: see
/// [`run_with_auth`].
pub async fn run(
    config: PoolConfig,
    nats_url: String,
    shutdown: CancellationToken,
) -> anyhow::Result<PoolEnd> {
    run_with_auth(config, nats_url, NatsAuth::default(), shutdown).await
}

/// [`run`], connecting with `auth` and handing it to every process as `DROVER_NATS_*`
/// variables (over any of the group's `env`): the processes connect with the pool's
/// credential and TLS settings.
pub async fn run_with_auth(
    config: PoolConfig,
    nats_url: String,
    auth: NatsAuth,
    shutdown: CancellationToken,
) -> anyhow::Result<PoolEnd> {
    let admin_stop = CancellationToken::new();
    let _admin_guard = admin_stop.clone().drop_guard();
    let readiness = drover_service_kit::Readiness::new();
    if let Some(addr) = &config.admin_addr {
        let metrics = drover_service_kit::metrics::install_for(&names::POOL_METRICS);
        drover_service_kit::admin::serve(addr, readiness.clone(), metrics, admin_stop.clone())
            .await
            .map_err(|error| anyhow::anyhow!("cannot serve the admin port on {addr}: {error}"))?;
    }
    let name = format!("drover-pool-{}", config.pool);
    let auth_env = auth.env_vars();
    let nats = match drover_service_kit::connect_with_auth(&nats_url, &name, &auth, &shutdown).await
    {
        Ok(nats) => nats,
        Err(drover_service_kit::ConnectError::Cancelled) => return Ok(PoolEnd::Clean),
        Err(error) => return Err(error.into()),
    };
    readiness.set_client(nats.clone());
    readiness.set_resources_ok(true);
    if let Some(state) = lookups::already_running(&nats, &config.pool).await {
        anyhow::bail!(
            "a pool {} is already running (up {} ms): two pools with one poolID would start the same workerIDs",
            state.pool_id,
            state.uptime_ms
        );
    }
    let max_grace = config
        .groups
        .iter()
        .map(|group| group.stop_grace)
        .max()
        .unwrap_or_default();
    process::stop_orphans(&config.pool, &nats_url, max_grace).await;
    let mut pool = Pool::new(&config, Instant::now());
    let service_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let requests =
        drover_service_kit::Requests::new(&nats, names::REQUESTS_TOTAL, &service_stop, &tasks);
    let (controls, mut control_rx) = mpsc::channel::<Control>(64);
    let service = control::serve(&nats, &pool.id, &requests, controls).await?;
    let mut worker_events = nats.subscribe(subject::all_registry_events()).await?;
    // Every run's events, only where a quota needs the count: parsing them is most of what
    // the pool would otherwise cost per run.
    let counts_runs = config.groups.iter().any(|group| group.max_runs.is_some());
    let mut run_events = if counts_runs {
        Some(nats.subscribe(subject::all_run_events()).await?)
    } else {
        None
    };
    let (exits, mut exit_rx) = mpsc::unbounded_channel::<Exit>();
    let (findings, mut finding_rx) = mpsc::unbounded_channel::<Finding>();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut add_one = signal(SignalKind::from_raw(Signal::SIGTTIN as i32))?;
    let mut remove_one = signal(SignalKind::from_raw(Signal::SIGTTOU as i32))?;
    let signal_group = config.signal_group.clone();
    let host = drover_service_kit::hostname();
    let mut autoscalers: Vec<Autoscaler> = vec![Autoscaler::default(); pool.groups.len()];
    let mut learned: Vec<BTreeSet<RoutineId>> = vec![BTreeSet::new(); pool.groups.len()];
    let mut next_sample: Vec<Instant> = vec![Instant::now(); pool.groups.len()];
    let mut tick = tokio::time::interval(TICK);
    let mut look = tokio::time::interval(LOOK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut looking: Option<tokio::task::JoinHandle<()>> = None;
    // The output gates of processes the pool has not decided about yet, by pid.
    let mut gates: HashMap<u32, watch::Sender<Gate>> = HashMap::new();
    let mut asked_once = false;
    register_counters(&pool);
    info!(pool = %pool.id, groups = pool.groups.len(), "pool starting");
    let end = loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(exit) = exit_rx.recv() => on_exit(&mut pool, exit),
            Some(message) = worker_events.next() => {
                if let Some(record) = lookups::worker_event(&message.payload) {
                    observe(&mut pool, &mut learned, &host, &record);
                }
            }
            Some(message) = next_message(&mut run_events) => {
                if let Some(worker) = lookups::ended_run_worker(&message.payload) {
                    for group in &mut pool.groups {
                        group.run_ended(&worker);
                    }
                }
            }
            Some(finding) = finding_rx.recv() => match finding {
                Finding::Worker(record) => observe(&mut pool, &mut learned, &host, &record),
                Finding::Backlog { group, unfinished } => {
                    autoscale(&mut pool, &mut autoscalers, group, unfinished);
                }
            },
            Some(control) = control_rx.recv() => answer(&mut pool, control),
            _ = look.tick() => {
                if looking.as_ref().is_none_or(|task| task.is_finished()) {
                    looking = Some(tokio::spawn(look_around(
                        nats.clone(),
                        &mut pool,
                        &learned,
                        &mut next_sample,
                        findings.clone(),
                    )));
                }
            }
            _ = terminate.recv() => stop(&mut pool, &mut asked_once, "SIGTERM"),
            _ = interrupt.recv() => stop(&mut pool, &mut asked_once, "SIGINT"),
            _ = shutdown.cancelled(), if !asked_once => stop(&mut pool, &mut asked_once, "shutdown"),
            _ = hangup.recv() => {
                info!("SIGHUP: soft restart of every group");
                if let Err(error) = pool.restart(&PoolRestart { mode: RestartMode::Soft, group: None }) {
                    warn!(error = %error.message, "soft restart refused");
                }
            }
            _ = add_one.recv() => by_signal(&mut pool, &signal_group, 1),
            _ = remove_one.recv() => by_signal(&mut pool, &signal_group, -1),
        }
        // Before any start: a new process may get the pid of one that just ended.
        settle_gates(&pool, &mut gates);
        let now = Instant::now();
        for (group, action) in pool.reconcile(now) {
            // A start that failed earlier in this batch stops the pool: start nothing more.
            if pool.stopping().is_some() && matches!(action, Action::Start { .. }) {
                continue;
            }
            let to_nats = ToNats {
                url: &nats_url,
                auth_env: &auth_env,
            };
            let spawned = carry_out(&mut pool, group, action, &to_nats, &nats, &exits, now).await;
            if let Some((pid, gate)) = spawned {
                gates.insert(pid, gate);
            }
        }
        if let Some(end) = pool.end() {
            break end;
        }
        record_gauges(&pool);
    };
    record_gauges(&pool);
    if let Some(task) = looking {
        task.abort();
    }
    service_stop.cancel();
    let _ = service.stop().await;
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        debug!("pool requests still running at exit");
    }
    match &end {
        PoolEnd::Clean => info!(pool = %pool.id, "pool ended"),
        PoolEnd::AllTerminated => warn!(pool = %pool.id, "pool ended: every process terminated"),
        PoolEnd::Critical(reason) => error!(pool = %pool.id, %reason, "critical shutdown"),
    }
    Ok(end)
}

/// The next message of a subscription that may not exist (then it never comes).
async fn next_message(
    subscription: &mut Option<async_nats::Subscriber>,
) -> Option<async_nats::Message> {
    match subscription {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
    }
}

/// Classifies an exit, counts it and says so.
fn on_exit(pool: &mut Pool, exit: Exit) {
    let Exit { group, pid, status } = exit;
    let Some(exited) = pool.exited(group, pid, status, Instant::now()) else {
        return;
    };
    let name = pool.groups[group].config.name.to_string();
    let class = exited.exit.class.as_str();
    metrics::counter!(names::EXITS_TOTAL, "group" => name.clone(), "class" => class).increment(1);
    if exited.outcome == ExitOutcome::Restart {
        metrics::counter!(names::RESTARTS_TOTAL, "group" => name).increment(1);
    }
    let worker = exited.worker_id;
    let reason = exited.exit.reason.unwrap_or_default();
    match exited.exit.class {
        ExitClass::Requested | ExitClass::Final => {
            info!(%worker, pid, class, %reason, "process ended");
        }
        ExitClass::Unexpected | ExitClass::Critical => {
            warn!(%worker, pid, class, %reason, "process ended");
        }
    }
}

/// The first SIGTERM or SIGINT stops gracefully; the second kills every process.
fn stop(pool: &mut Pool, asked_once: &mut bool, what: &str) {
    if *asked_once {
        warn!("{what} again: killing every process");
        for group in &pool.groups {
            for slot in &group.slots {
                if let Some(pid) = slot.pid {
                    process::signal_group(pid, Signal::SIGKILL);
                }
            }
        }
        return;
    }
    *asked_once = true;
    info!("{what}: stopping every process gracefully");
    pool.shut_down(Stopping::Asked);
}

/// SIGTTIN and SIGTTOU: one process more or fewer in the signal group.
fn by_signal(pool: &mut Pool, group: &drover_protocol::GroupName, delta: i64) {
    let request = PoolScale {
        group: group.clone(),
        target: None,
        delta: Some(delta),
    };
    match pool.scale(&request) {
        Ok(scaled) => info!(group = %scaled.group, target = scaled.target, "scaled by signal"),
        Err(error) => warn!(error = %error.message, "scaling by signal refused"),
    }
}

fn answer(pool: &mut Pool, control: Control) {
    match control {
        Control::Scale(request, reply) => {
            let result = pool.scale(&request);
            if let Ok(scaled) = &result {
                info!(group = %scaled.group, target = scaled.target, "scaled");
            }
            let _ = reply.send(result);
        }
        Control::Restart(request, reply) => {
            let result = pool.restart(&request);
            if let Ok(restarting) = &result {
                info!(mode = restarting.mode.as_str(), groups = ?restarting.groups, "restart begun");
            }
            let _ = reply.send(result);
        }
        Control::Status(_, reply) => {
            let _ = reply.send(Ok(pool.state(Instant::now())));
        }
    }
}

/// What a started process gets to reach NATS: the pool's URL and credentials.
struct ToNats<'a> {
    url: &'a str,
    auth_env: &'a [(&'static str, String)],
}

/// Carries out one action; a process started comes back with its output gate.
async fn carry_out(
    pool: &mut Pool,
    group: usize,
    action: Action,
    to_nats: &ToNats<'_>,
    nats: &Client,
    exits: &mpsc::UnboundedSender<Exit>,
    now: Instant,
) -> Option<(u32, watch::Sender<Gate>)> {
    match action {
        Action::Start { index, worker_id } => {
            let floor = lookups::current_incarnation(nats, &worker_id).await;
            let launch = Launch {
                pool: &pool.id,
                nats_url: to_nats.url,
                auth_env: to_nats.auth_env,
                nats,
                exits,
            };
            match process::spawn(&launch, group, &pool.groups[group].config, &worker_id) {
                Ok(spawned) => {
                    let pid = spawned.pid;
                    info!(worker = %worker_id, pid, "process started");
                    pool.groups[group].started(index, pid, floor, now);
                    Some((pid, spawned.gate))
                }
                Err(error) => {
                    error!(worker = %worker_id, %error, "process could not be started");
                    pool.start_failed(group, index, &error.to_string(), now);
                    None
                }
            }
        }
        Action::Stop { pid, worker_id } => {
            info!(worker = %worker_id, pid, "stopping process");
            process::signal_group(pid, Signal::SIGTERM);
            None
        }
        Action::Kill { pid, worker_id } => {
            warn!(worker = %worker_id, pid, "process did not stop within its grace period; killing it");
            process::signal_group(pid, Signal::SIGKILL);
            None
        }
    }
}

/// Tells each undecided process's output whether to ship (its registration was seen) or to
/// drop what it held (it ended without one), and forgets it.
fn settle_gates(pool: &Pool, gates: &mut HashMap<u32, watch::Sender<Gate>>) {
    gates.retain(|pid, gate| match pool.output_gate(*pid) {
        Gate::Hold => true,
        decided => {
            gate.send_replace(decided);
            false
        }
    });
}

/// What the registry says about a worker: the pool's own (tracked), or another workerID
/// registered from one of the pool's processes (a critical error).
fn observe(
    pool: &mut Pool,
    learned: &mut [BTreeSet<RoutineId>],
    host: &str,
    record: &WorkerRecord,
) {
    let held = record.runs.len() as u32;
    for (index, group) in pool.groups.iter_mut().enumerate() {
        if group.slot(&record.worker_id).is_some() {
            group.observed(
                &record.worker_id,
                record.incarnation,
                record.status,
                held,
                record.capacity,
            );
            learned[index].extend(record.routines.iter().cloned());
            return;
        }
    }
    let (Some(pid), Some(their_host)) = (record.pid, record.host.as_deref()) else {
        return;
    };
    if their_host != host || !record.is_live() {
        return;
    }
    let Ok(pid) = u32::try_from(pid) else {
        return;
    };
    let impostor = pool
        .groups
        .iter()
        .find_map(|group| group.slot_with_pid(pid))
        .map(|slot| slot.worker_id.clone());
    if let Some(expected) = impostor {
        let reason = format!(
            "process {pid} started as {expected} registered as {}",
            record.worker_id
        );
        pool.shut_down(Stopping::Critical(reason));
    }
}

fn autoscale(pool: &mut Pool, autoscalers: &mut [Autoscaler], group: usize, unfinished: u64) {
    if pool.stopping().is_some() {
        return;
    }
    let Some(state) = pool.groups.get_mut(group) else {
        return;
    };
    let Some(auto) = state.config.autoscale.clone() else {
        return;
    };
    let capacities: Vec<u32> = state
        .slots
        .iter()
        .filter_map(|slot| slot.capacity)
        .collect();
    let per_process = if capacities.is_empty() {
        1
    } else {
        capacities.iter().sum::<u32>() / capacities.len() as u32
    };
    let sample = Sample {
        unfinished,
        per_process,
    };
    let bounds = (state.config.min, state.config.max);
    if let Some(target) =
        autoscalers[group].decide(Instant::now(), sample, bounds, state.target, auto.cooldown)
    {
        info!(group = %state.config.name, from = state.target, to = target, unfinished, "autoscaling");
        state.set_target(target);
    }
}

/// Asks the registry about every live process (events can be missed), reads their memory,
/// and counts the backlog of autoscaled groups whose turn it is.
fn look_around(
    nats: Client,
    pool: &mut Pool,
    learned: &[BTreeSet<RoutineId>],
    next_sample: &mut [Instant],
    findings: mpsc::UnboundedSender<Finding>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let now = Instant::now();
    let mut workers = Vec::new();
    let mut backlogs = Vec::new();
    for (index, group) in pool.groups.iter_mut().enumerate() {
        let live: Vec<(WorkerId, u32)> = group
            .slots
            .iter()
            .filter_map(|slot| Some((slot.worker_id.clone(), slot.pid?)))
            .collect();
        for (worker, pid) in live {
            if let Some(bytes) = process::resident_bytes(pid) {
                group.memory(&worker, bytes);
            }
            workers.push(worker);
        }
        if let Some(auto) = &group.config.autoscale {
            if next_sample[index] <= now {
                next_sample[index] = now + auto.interval;
                let routines: Vec<RoutineId> = if auto.routines.is_empty() {
                    learned[index].iter().cloned().collect()
                } else {
                    auto.routines.clone()
                };
                backlogs.push((index, routines));
            }
        }
    }
    let pool_id = pool.id.clone();
    async move {
        // One list for the processes that carry the pool's label; one get for each that
        // does not (a worker that ignores DROVER_POOL_ID is still followed).
        let listed = lookups::registry_list(&nats, &pool_id).await;
        let missing: Vec<&WorkerId> = workers
            .iter()
            .filter(|worker| !listed.iter().any(|record| &record.worker_id == *worker))
            .collect();
        let lookups = missing
            .into_iter()
            .map(|worker| lookups::registry_get(&nats, worker));
        let looked_up = futures::future::join_all(lookups)
            .await
            .into_iter()
            .flatten();
        for record in listed.into_iter().chain(looked_up) {
            let _ = findings.send(Finding::Worker(Box::new(record)));
        }
        if backlogs.is_empty() {
            return;
        }
        let js = async_nats::jetstream::new(nats.clone());
        for (group, routines) in backlogs {
            match lookups::unfinished_runs(&js, &routines).await {
                Ok(unfinished) => {
                    let _ = findings.send(Finding::Backlog { group, unfinished });
                }
                Err(error) => debug!(%error, "counting the queue failed"),
            }
        }
    }
}

/// Every group's counters exist from the start, at zero, so that rates work from the first
/// scrape.
fn register_counters(pool: &Pool) {
    for group in &pool.groups {
        let name = group.config.name.to_string();
        metrics::counter!(names::RESTARTS_TOTAL, "group" => name.clone()).absolute(0);
        for class in [
            ExitClass::Requested,
            ExitClass::Final,
            ExitClass::Unexpected,
            ExitClass::Critical,
        ] {
            metrics::counter!(names::EXITS_TOTAL, "group" => name.clone(), "class" => class.as_str())
                .absolute(0);
        }
    }
}

fn record_gauges(pool: &Pool) {
    const STATES: [ProcessPhase; 5] = [
        ProcessPhase::Starting,
        ProcessPhase::Running,
        ProcessPhase::Stopping,
        ProcessPhase::Restarting,
        ProcessPhase::Terminated,
    ];
    for group in &pool.groups {
        let name = group.config.name.to_string();
        metrics::gauge!(names::TARGET, "group" => name.clone()).set(f64::from(group.target));
        for state in STATES {
            let count = group
                .slots
                .iter()
                .filter(|slot| slot.phase == state)
                .count();
            metrics::gauge!(names::PROCESSES, "group" => name.clone(), "state" => state.as_str())
                .set(count as f64);
        }
    }
}
