//! Subject builders and parsers (DESIGN §4). No other crate writes a subject by hand.

use crate::ids::{InvalidId, RoutineId, RunId, WorkerId};

/// Directive keys: the `payloadKey` of every message, and the stem of its subject.
pub mod keys {
    /// Worker registration (request).
    pub const REGISTER: &str = "v1.register";
    /// Reply to a registration.
    pub const REGISTERED: &str = "v1.registered";
    /// The worker is subscribed to its inbox and takes work.
    pub const READY: &str = "v1.ready";
    /// A heartbeat from a worker.
    pub const GIVE_PULSE: &str = "v1.heartbeat.give_pulse";
    /// A probe sent to a worker that missed its heartbeats.
    pub const CHECK_PULSE: &str = "v1.heartbeat.check_pulse";
    /// A log line from a worker.
    pub const LOG: &str = "v1.log";
    /// A run request (client or worker), or an assignment (service to worker).
    pub const REQUEST_START: &str = "v1.routine.request_start";
    /// Reply to an accepted run request.
    pub const ACCEPTED: &str = "v1.routine.accepted";
    /// A run has started (worker to service), or a child run has started (service to worker).
    pub const STARTING: &str = "v1.routine.starting";
    /// A run has ended (worker to service), or a child run has ended (service to worker).
    pub const COMPLETED: &str = "v1.routine.completed";
    /// Stop working on a run (service to worker).
    pub const CANCEL: &str = "v1.routine.cancel";
    /// The worker is shutting down.
    pub const TERMINATING: &str = "v1.terminating";
    /// A rejected message.
    pub const ERROR: &str = "v1.error";
    /// Fetch one run record.
    pub const RUN_GET: &str = "v1.run.get";
    /// List run records.
    pub const RUN_LIST: &str = "v1.run.list";
    /// Cancel a run.
    pub const RUN_CANCEL: &str = "v1.run.cancel";
    /// Reply carrying one run record.
    pub const RUN_RECORD: &str = "v1.run.record";
    /// Reply carrying a page of run records.
    pub const RUN_RECORDS: &str = "v1.run.records";
    /// A run changed state.
    pub const RUN_EVENTS: &str = "v1.run.events";
    /// List worker records.
    pub const REGISTRY_LIST: &str = "v1.registry.list";
    /// Fetch one worker record.
    pub const REGISTRY_GET: &str = "v1.registry.get";
    /// Reply carrying one worker record.
    pub const REGISTRY_WORKER: &str = "v1.registry.worker";
    /// Reply carrying worker records.
    pub const REGISTRY_WORKERS: &str = "v1.registry.workers";
    /// A worker changed status.
    pub const REGISTRY_EVENTS: &str = "v1.registry.events";
    /// Query stored worker logs.
    pub const LOGS_QUERY: &str = "v1.logs.query";
    /// Reply carrying a page of log records.
    pub const LOGS_RECORDS: &str = "v1.logs.records";
    /// Scale a pool's group (request on `v1.pool.<poolID>.scale`).
    pub const POOL_SCALE: &str = "v1.pool.scale";
    /// Reply to a scale request.
    pub const POOL_SCALED: &str = "v1.pool.scaled";
    /// Restart a pool's processes (request on `v1.pool.<poolID>.restart`).
    pub const POOL_RESTART: &str = "v1.pool.restart";
    /// Reply to a restart request.
    pub const POOL_RESTARTING: &str = "v1.pool.restarting";
    /// Ask a pool for its state (request on `v1.pool.<poolID>.status`).
    pub const POOL_STATUS: &str = "v1.pool.status";
    /// Reply carrying a pool's state.
    pub const POOL_STATE: &str = "v1.pool.state";
}

/// Names of the JetStream streams and key-value buckets (DESIGN §7; normative for operators).
pub mod resources {
    /// Work-queue stream of pending runs, subjects `drover.queue.<routineID>`.
    pub const QUEUE_STREAM: &str = "DROVER_QUEUE";
    /// Work-queue stream capturing worker directives that must survive a service restart.
    pub const DIRECTIVES_STREAM: &str = "DROVER_DIRECTIVES";
    /// Work-queue stream of durable timers (message schedules).
    pub const TIMERS_STREAM: &str = "DROVER_TIMERS";
    /// Stream capturing `v1.log.>` for the log-collector.
    pub const LOG_INTAKE_STREAM: &str = "DROVER_LOG_INTAKE";
    /// Stream of validated, enriched log records.
    pub const LOGS_STREAM: &str = "DROVER_LOGS";
    /// KV bucket of worker records, keyed by workerID.
    pub const WORKERS_BUCKET: &str = "DROVER_WORKERS";
    /// KV bucket of run records, keyed by runID.
    pub const RUNS_BUCKET: &str = "DROVER_RUNS";
    /// KV bucket mapping idempotency keys and (parent, localRunID) pairs to runIDs.
    pub const RUN_KEYS_BUCKET: &str = "DROVER_RUN_KEYS";
    /// KV bucket holding leader leases.
    pub const LEADERS_BUCKET: &str = "DROVER_LEADERS";
    /// Key in [`LEADERS_BUCKET`] of the scheduler leader's lease.
    pub const SCHEDULER_LEASE: &str = "scheduler";
    /// Key in [`LEADERS_BUCKET`] of the log intake leader's lease.
    pub const LOG_COLLECTOR_LEASE: &str = "log-collector";

    /// Durable consumer through which the registry reads ready and terminating directives.
    pub const REGISTRY_CONSUMER: &str = "registry";
    /// Durable consumer through which the scheduler reads starting and completed directives.
    pub const SCHEDULER_CONSUMER: &str = "scheduler";
    /// Durable consumer through which the scheduler reads fired timers.
    pub const TIMERS_CONSUMER: &str = "scheduler-timers";
    /// Durable consumer through which the log-collector reads intake.
    pub const LOG_COLLECTOR_CONSUMER: &str = "log-collector";
}

/// A subject that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The subject does not name a known directive.
    #[error("subject {0:?} is not a Drover directive subject")]
    Unknown(String),
    /// The subject names a directive but its workerID token is invalid.
    #[error(transparent)]
    InvalidWorker(#[from] InvalidId),
}

/// Directive keys that workers publish on `<key>.<workerID>`.
pub const WORKER_DIRECTIVES: [&str; 8] = [
    keys::REGISTER,
    keys::READY,
    keys::GIVE_PULSE,
    keys::LOG,
    keys::REQUEST_START,
    keys::STARTING,
    keys::COMPLETED,
    keys::TERMINATING,
];

/// Directive keys that clients send as requests on the bare key.
pub const CLIENT_REQUESTS: [&str; 7] = [
    keys::REQUEST_START,
    keys::RUN_GET,
    keys::RUN_LIST,
    keys::RUN_CANCEL,
    keys::REGISTRY_LIST,
    keys::REGISTRY_GET,
    keys::LOGS_QUERY,
];

/// Directive keys that services send into a worker's inbox.
pub const WORKER_INBOX_DIRECTIVES: [&str; 6] = [
    keys::CHECK_PULSE,
    keys::REQUEST_START,
    keys::STARTING,
    keys::COMPLETED,
    keys::CANCEL,
    keys::ERROR,
];

/// Where an inbound message came from, read off its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The directive key the subject names (what `payloadKey` must equal).
    pub key: &'static str,
    /// The worker that sent it, for `<key>.<workerID>` subjects.
    pub worker: Option<WorkerId>,
}

/// Parses a worker-to-service or client-to-service subject.
pub fn parse_inbound(subject: &str) -> Result<Inbound, SubjectError> {
    for key in CLIENT_REQUESTS {
        if subject == key {
            return Ok(Inbound { key, worker: None });
        }
    }
    for key in WORKER_DIRECTIVES {
        if let Some(rest) = subject
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('.'))
        {
            if rest.contains('.') {
                break;
            }
            return Ok(Inbound {
                key,
                worker: Some(WorkerId::parse(rest)?),
            });
        }
    }
    Err(SubjectError::Unknown(subject.chars().take(200).collect()))
}

/// Reads the worker token of a `<key>.<workerID>` subject without validating the key.
///
/// Used to address an error to the sender when the rest of the message is unusable.
pub fn worker_token(subject: &str) -> Option<WorkerId> {
    let token = subject.rsplit('.').next()?;
    WorkerId::parse(token).ok()
}

/// `<key>.<workerID>`: the subject a worker publishes a directive on.
pub fn from_worker(key: &str, worker: &WorkerId) -> String {
    format!("{key}.{worker}")
}

/// `<key>.*`: every worker's directives of one kind.
pub fn from_any_worker(key: &str) -> String {
    format!("{key}.*")
}

/// `v1.worker.<workerID>.<key without "v1.">`: a directive into a worker's inbox.
pub fn to_worker(worker: &WorkerId, key: &str) -> String {
    let stem = key.strip_prefix("v1.").unwrap_or(key);
    format!("v1.worker.{worker}.{stem}")
}

/// `v1.worker.<workerID>.>`: everything addressed to one worker.
pub fn worker_inbox(worker: &WorkerId) -> String {
    format!("v1.worker.{worker}.>")
}

/// Parses a worker inbox subject into the worker and the directive key it carries.
pub fn parse_worker_inbox(subject: &str) -> Result<(WorkerId, &'static str), SubjectError> {
    let unknown = || SubjectError::Unknown(subject.chars().take(200).collect());
    let rest = subject.strip_prefix("v1.worker.").ok_or_else(unknown)?;
    let (worker, stem) = rest.split_once('.').ok_or_else(unknown)?;
    let worker = WorkerId::parse(worker)?;
    let key = WORKER_INBOX_DIRECTIVES
        .into_iter()
        .find(|key| key.strip_prefix("v1.") == Some(stem))
        .ok_or_else(unknown)?;
    Ok((worker, key))
}

/// `v1.run.events.<runID>`.
pub fn run_events(run: &RunId) -> String {
    format!("{}.{run}", keys::RUN_EVENTS)
}

/// `v1.run.events.*`.
pub fn all_run_events() -> String {
    format!("{}.*", keys::RUN_EVENTS)
}

/// `v1.registry.events.<workerID>`.
pub fn registry_events(worker: &WorkerId) -> String {
    format!("{}.{worker}", keys::REGISTRY_EVENTS)
}

/// `v1.registry.events.*`.
pub fn all_registry_events() -> String {
    format!("{}.*", keys::REGISTRY_EVENTS)
}

/// The request subjects of a pool (DESIGN §9): `v1.pool.<poolID>.<verb>`.
pub mod pool {
    use super::keys;
    use crate::ids::PoolId;

    /// `v1.pool.<poolID>.scale`.
    pub fn scale(pool: &PoolId) -> String {
        in_pool(pool, keys::POOL_SCALE)
    }

    /// `v1.pool.<poolID>.restart`.
    pub fn restart(pool: &PoolId) -> String {
        in_pool(pool, keys::POOL_RESTART)
    }

    /// `v1.pool.<poolID>.status`.
    pub fn status(pool: &PoolId) -> String {
        in_pool(pool, keys::POOL_STATUS)
    }

    /// `v1.pool.<poolID>.<verb>` for the key `v1.pool.<verb>`: the directive key is the
    /// subject without the poolID token.
    fn in_pool(pool: &PoolId, key: &str) -> String {
        let verb = key.strip_prefix("v1.pool.").unwrap_or(key);
        format!("v1.pool.{pool}.{verb}")
    }
}

/// `drover.queue.<routineID>`: where pending runs of a routine wait.
pub fn queue(routine: &RoutineId) -> String {
    format!("drover.queue.{routine}")
}

/// `drover.queue.>`: every routine's queue.
pub fn all_queues() -> &'static str {
    "drover.queue.>"
}

/// Reads the routine back out of a queue subject.
pub fn parse_queue(subject: &str) -> Option<RoutineId> {
    RoutineId::parse(subject.strip_prefix("drover.queue.")?).ok()
}

/// `drover.logs.<runID or "none">.<workerID>`: where a stored log record lives.
pub fn logs(run: Option<&RunId>, worker: &WorkerId) -> String {
    match run {
        Some(run) => format!("drover.logs.{run}.{worker}"),
        None => format!("drover.logs.none.{worker}"),
    }
}

/// A filter over stored log records, by run and worker (`*` where not given).
pub fn logs_filter(run: Option<&RunId>, worker: Option<&WorkerId>) -> String {
    let run = run.map_or("*", RunId::as_str);
    let worker = worker.map_or("*", WorkerId::as_str);
    format!("drover.logs.{run}.{worker}")
}

/// `drover.logs.>`.
pub fn all_logs() -> &'static str {
    "drover.logs.>"
}

/// `v1.log.>`: what the log intake stream captures.
pub fn all_worker_logs() -> String {
    format!("{}.>", keys::LOG)
}

/// `$JS.API.DIRECT.GET.<stream>`: JetStream's direct-get API (ADR-31), for the batched
/// reads that the client library does not offer.
pub fn direct_get(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// `$KV.<bucket>.<key>`: the subject a KV write is published on, for writes the KV API
/// does not offer (compare-and-set with a per-message TTL).
pub fn kv_put_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// `$KV.<bucket>.>`: every key of a bucket, as stream subjects.
pub fn kv_all_keys(bucket: &str) -> String {
    format!("$KV.{bucket}.>")
}

/// Durable timers: a schedule message on [`timer_schedule`] fires into [`timer_fire`].
pub mod timers {
    use super::RunId;

    /// What a timer is for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum TimerKind {
        /// A run's `maxWaitTimeMs` deadline.
        MaxWait,
    }

    impl TimerKind {
        fn token(self) -> &'static str {
            match self {
                TimerKind::MaxWait => "wait",
            }
        }
    }

    /// Subject of the schedule message for a run's timer (purge it to cancel the timer).
    pub fn timer_schedule(kind: TimerKind, run: &RunId) -> String {
        format!("drover.timers.schedule.{}.{run}", kind.token())
    }

    /// Subject the timer fires into.
    pub fn timer_fire(kind: TimerKind, run: &RunId) -> String {
        format!("drover.timers.fire.{}.{run}", kind.token())
    }

    /// Every subject of the timers stream.
    pub fn all() -> &'static str {
        "drover.timers.>"
    }

    /// Every fired timer.
    pub fn all_fired() -> &'static str {
        "drover.timers.fire.>"
    }

    /// Reads the timer kind and run back out of a fired-timer subject.
    pub fn parse_fire(subject: &str) -> Option<(TimerKind, RunId)> {
        let rest = subject.strip_prefix("drover.timers.fire.")?;
        let (kind, run) = rest.split_once('.')?;
        let kind = match kind {
            "wait" => TimerKind::MaxWait,
            _ => return None,
        };
        Some((kind, RunId::parse(run).ok()?))
    }
}

/// Service-to-service subjects. They are not part of the worker protocol.
pub mod internal {
    /// Scheduler asks the registry to record that a worker holds a run.
    pub const REGISTRY_CLAIM: &str = "drover.internal.registry.claim";
    /// Scheduler tells the registry that a worker no longer holds a run.
    pub const REGISTRY_RELEASE: &str = "drover.internal.registry.release";
    /// Scheduler tells the registry whether a held run waits on children.
    pub const REGISTRY_WAITING: &str = "drover.internal.registry.waiting";
    /// Scheduler tells the registry, in batches, which runs workers hold.
    pub const REGISTRY_HOLDINGS: &str = "drover.internal.registry.holdings";
    /// Heartbeat-monitor reports what it concluded about a worker's liveness.
    pub const REGISTRY_LIVENESS: &str = "drover.internal.registry.liveness";
    /// Followers forward run mutations to the scheduler leader here.
    pub const SCHEDULER_LEADER: &str = "drover.internal.scheduler.leader";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str) -> WorkerId {
        WorkerId::parse(id).unwrap()
    }

    #[test]
    fn inbound_round_trip() {
        for key in WORKER_DIRECTIVES {
            let subject = from_worker(key, &w("w-1"));
            let parsed = parse_inbound(&subject).unwrap();
            assert_eq!(parsed.key, key);
            assert_eq!(parsed.worker, Some(w("w-1")));
        }
        for key in CLIENT_REQUESTS {
            let parsed = parse_inbound(key).unwrap();
            assert_eq!(parsed.key, key);
            assert_eq!(parsed.worker, None);
        }
    }

    #[test]
    fn inbound_rejects_unknown_and_bad_workers() {
        assert!(matches!(
            parse_inbound("v1.nope.w1"),
            Err(SubjectError::Unknown(_))
        ));
        assert!(matches!(
            parse_inbound("v1.ready.a.b"),
            Err(SubjectError::Unknown(_))
        ));
        assert!(matches!(
            parse_inbound("v1.ready.w$"),
            Err(SubjectError::InvalidWorker(_))
        ));
    }

    #[test]
    fn worker_inbox_round_trip() {
        for key in WORKER_INBOX_DIRECTIVES {
            let subject = to_worker(&w("w1"), key);
            assert!(subject.starts_with("v1.worker.w1."));
            let (worker, parsed) = parse_worker_inbox(&subject).unwrap();
            assert_eq!(worker, w("w1"));
            assert_eq!(parsed, key);
        }
        assert_eq!(
            to_worker(&w("w1"), keys::CHECK_PULSE),
            "v1.worker.w1.heartbeat.check_pulse"
        );
    }

    #[test]
    fn queue_and_logs() {
        let routine = RoutineId::parse("images.resize").unwrap();
        assert_eq!(queue(&routine), "drover.queue.images.resize");
        assert_eq!(parse_queue(&queue(&routine)), Some(routine));
        assert_eq!(logs(None, &w("w1")), "drover.logs.none.w1");
        assert_eq!(logs_filter(None, Some(&w("w1"))), "drover.logs.*.w1");
        assert_eq!(
            direct_get(resources::LOGS_STREAM),
            "$JS.API.DIRECT.GET.DROVER_LOGS"
        );
    }

    #[test]
    fn lease_keys_are_distinct_valid_kv_keys() {
        let keys = [resources::SCHEDULER_LEASE, resources::LOG_COLLECTOR_LEASE];
        for key in keys {
            assert!(
                !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_/=.".contains(c)),
                "{key}"
            );
        }
        assert_ne!(keys[0], keys[1]);
    }

    #[test]
    fn pool_subjects_put_the_pool_between_stem_and_verb() {
        let pool_id = crate::ids::PoolId::parse("demo").unwrap();
        assert_eq!(pool::scale(&pool_id), "v1.pool.demo.scale");
        assert_eq!(pool::restart(&pool_id), "v1.pool.demo.restart");
        assert_eq!(pool::status(&pool_id), "v1.pool.demo.status");
    }

    #[test]
    fn timers_round_trip() {
        let run = RunId::generate();
        let fire = timers::timer_fire(timers::TimerKind::MaxWait, &run);
        assert_eq!(
            timers::parse_fire(&fire),
            Some((timers::TimerKind::MaxWait, run))
        );
    }
}
