//! The records the console benchmark stores: runs and workers, made from the protocol's
//! own types so that they are what the services write.
//!
//! Runs are spread evenly over a span ending a minute ago, oldest first, each with a UUIDv7
//! runID of its creation time, so runIDs sort as the scheduler's do. Every run has ended
//! (SUCCEEDED mostly, [`FAILED_SHARE`] FAILED, [`CANCELLED_SHARE`] CANCELLED), so the
//! scheduler has nothing to do with any of them. Routines are skewed: the first of
//! [`ROUTINES`] is the most common, the last the rarest. A run becomes a parent with
//! [`PARENT_SHARE`], and the next [`CHILDREN_PER_PARENT`] runs are its children. Workers are
//! IDLE or WORKING; most belong to a pool (`<pool>-<group>-<n>`, labels `pool` and `group`).
//!
//! Everything but the times and the trace IDs comes from a seeded generator, so two runs of
//! the benchmark with the same flags store the same records.

use std::time::Duration;

use drover_protocol::trace::TraceParent;
use drover_protocol::{
    FailureReason, HeldRun, Labels, RoutineId, RunError, RunId, RunRecord, RunStatus, SdkInfo,
    Timestamp, Transition, WorkerId, WorkerPhase, WorkerRecord, WorkerStatus,
};
use serde_json::json;

/// The routines runs call, most common first.
pub const ROUTINES: [&str; 20] = [
    "images.resize",
    "images.thumbnail",
    "email.send",
    "reports.build",
    "webhooks.deliver",
    "search.index",
    "billing.invoice",
    "images.watermark",
    "etl.extract",
    "etl.load",
    "ml.embed",
    "ml.classify",
    "video.transcode",
    "video.poster",
    "email.digest",
    "billing.charge",
    "search.reindex",
    "backups.snapshot",
    "audit.export",
    "reports.archive",
];
/// Runs that FAILED.
const FAILED_SHARE: f64 = 0.05;
/// Runs that were CANCELLED.
const CANCELLED_SHARE: f64 = 0.02;
/// Runs submitted with an idempotency key.
const KEYED_SHARE: f64 = 0.01;
/// Runs (not themselves children) that start a family of children.
const PARENT_SHARE: f64 = 0.01;
/// Children of each parent: the runs created right after it.
const CHILDREN_PER_PARENT: usize = 5;
/// Workers that hold runs (WORKING); the rest are IDLE.
const WORKING_SHARE: f64 = 0.4;
/// Workers that belong to a pool, in tenths.
const POOLED_TENTHS: usize = 7;
/// The longest an attempt runs, in milliseconds.
const LONGEST_RUN_MS: u64 = 3_000;
/// Runs a worker may hold.
pub const CAPACITY: u32 = 4;
const POOLS: [&str; 4] = ["thumbs", "reports", "etl", "ml"];
const GROUPS: [&str; 2] = ["rust", "python"];
const REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-south-1"];
/// The services' default heartbeat settings, as a registry hands them out.
const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
const LOST_AFTER_MS: u64 = 15_000;
/// The newest run was created this long before the seeding.
const NEWEST_AGO_MS: i64 = 60_000;

/// SplitMix64: small, fast and good enough to vary records reproducibly.
#[derive(Debug, Clone)]
struct Mix(u64);

impl Mix {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); 0 when n is 0.
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in [low, high].
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}

/// Parses an ID made here; they are valid by construction.
fn worker_id(text: String) -> WorkerId {
    WorkerId::parse(text).expect("the seeded workerIDs follow the workerID rules")
}

fn routine_id(index: usize) -> RoutineId {
    RoutineId::parse(ROUTINES[index]).expect("the seeded routineIDs follow the routineID rules")
}

/// The seeded workers' IDs and routines: worker `n` serves three routines, so that every
/// routine has workers.
#[derive(Debug, Clone)]
struct Fleet {
    ids: Vec<WorkerId>,
    /// Incarnation of each worker.
    incarnations: Vec<u64>,
    /// For each routine, the workers that serve it.
    serving: Vec<Vec<usize>>,
}

impl Fleet {
    fn new(workers: usize) -> Self {
        let ids = (0..workers)
            .map(|n| {
                if n % 10 < POOLED_TENTHS {
                    let (pool, group) = (POOLS[n % POOLS.len()], GROUPS[(n / POOLS.len()) % 2]);
                    worker_id(format!("{pool}-{group}-{}", n / (POOLS.len() * 2) + 1))
                } else {
                    worker_id(format!("worker-{n:05}"))
                }
            })
            .collect();
        let mut serving = vec![Vec::new(); ROUTINES.len()];
        for n in 0..workers {
            for routine in Self::routines_of(n) {
                serving[routine].push(n);
            }
        }
        Self {
            ids,
            incarnations: (0..workers).map(|n| 1 + (n % 3) as u64).collect(),
            serving,
        }
    }

    fn routines_of(n: usize) -> [usize; 3] {
        let r = ROUTINES.len();
        [n % r, (n + 7) % r, (n + 13) % r]
    }

    /// A worker serving `routine`.
    fn pick(&self, routine: usize, mix: &mut Mix) -> usize {
        let serving = &self.serving[routine];
        if serving.is_empty() {
            mix.below(self.ids.len() as u64) as usize
        } else {
            serving[mix.below(serving.len() as u64) as usize]
        }
    }
}

/// The records to seed, made one at a time.
#[derive(Debug)]
pub struct Plan {
    /// Runs to make.
    pub(super) runs: usize,
    fleet: Fleet,
    /// Creation time of run 0, and the milliseconds between runs (at least one, so that
    /// runIDs sort by creation).
    first_ms: i64,
    spacing_ms: f64,
    now: Timestamp,
    mix: Mix,
    /// The family being made: the parent, its worker, and children still to come.
    family: Option<(RunId, WorkerId, usize)>,
    /// The last parent whose children were all made.
    pub(super) with_children: Option<RunId>,
    /// FAILED, CANCELLED, child and keyed runs made so far.
    pub(super) failed: usize,
    pub(super) cancelled: usize,
    pub(super) children: usize,
    pub(super) keyed: usize,
}

impl Plan {
    /// A plan of `runs` runs spread over `span`, ending a minute ago, and `workers` workers.
    pub fn new(runs: usize, workers: usize, span: Duration) -> Self {
        let now = Timestamp::now();
        let span_ms = (span.as_millis() as f64).max(runs as f64);
        let spacing_ms = span_ms / runs.max(1) as f64;
        Self {
            runs,
            fleet: Fleet::new(workers),
            first_ms: now.as_millis() - NEWEST_AGO_MS - span_ms as i64,
            spacing_ms: spacing_ms.max(1.0),
            now,
            mix: Mix::new(0x00D2_0BE2),
            family: None,
            with_children: None,
            failed: 0,
            cancelled: 0,
            children: 0,
            keyed: 0,
        }
    }

    /// Workers to make.
    pub fn workers(&self) -> usize {
        self.fleet.ids.len()
    }

    /// A routine, the first the most common: about 22% of runs call the first, 2.5% the last.
    fn routine(&mut self) -> usize {
        let u = self.mix.unit();
        ((u * u) * ROUTINES.len() as f64) as usize
    }

    /// The runID of a run created at `ms`: a UUIDv7 of that millisecond.
    fn run_id(&mut self, ms: i64) -> RunId {
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&self.mix.next().to_be_bytes());
        random[8..].copy_from_slice(&self.mix.next().to_be_bytes()[..2]);
        let uuid = uuid::Builder::from_unix_timestamp_millis(ms.max(0) as u64, &random).into_uuid();
        RunId::parse(uuid.hyphenated().to_string()).expect("a UUID is a valid runID")
    }

    /// Run `index`, oldest first.
    pub fn run(&mut self, index: usize) -> RunRecord {
        let created_ms = self.first_ms + (index as f64 * self.spacing_ms) as i64;
        let created = Timestamp::from_millis(created_ms);
        let run_id = self.run_id(created_ms);
        let routine = self.routine();
        let worker_index = self.fleet.pick(routine, &mut self.mix);
        let worker = self.fleet.ids[worker_index].clone();
        let incarnation = self.fleet.incarnations[worker_index];

        let (parent_run_id, requested_by) = match self.family.take() {
            Some((parent, by, left)) => {
                if left > 1 {
                    self.family = Some((parent.clone(), by.clone(), left - 1));
                } else {
                    self.with_children = Some(parent.clone());
                }
                self.children += 1;
                (Some(parent), Some(by))
            }
            None => {
                if self.mix.unit() < PARENT_SHARE {
                    self.family = Some((run_id.clone(), worker.clone(), CHILDREN_PER_PARENT));
                }
                (None, None)
            }
        };
        let is_parent = matches!(&self.family, Some((parent, _, left)) if *parent == run_id && *left == CHILDREN_PER_PARENT);

        let outcome = self.mix.unit();
        let status = if outcome < FAILED_SHARE {
            RunStatus::Failed
        } else if outcome < FAILED_SHARE + CANCELLED_SHARE {
            RunStatus::Cancelled
        } else {
            RunStatus::Succeeded
        };
        let idempotency_key = (self.mix.unit() < KEYED_SHARE).then(|| format!("order-{index}"));
        self.keyed += usize::from(idempotency_key.is_some());

        let trace = TraceParent::new_root();
        let mut record = RunRecord {
            run_id,
            routine_id: routine_id(routine),
            status,
            params: json!({"item": index, "size": 64 << (index % 4), "source": "bench"}),
            env: Default::default(),
            conditions: Default::default(),
            max_wait_time_ms: None,
            max_exec_time_ms: Some(300_000),
            max_retries: 0,
            retry_backoff: None,
            idempotency_key,
            local_run_id: None,
            parent_run_id,
            requested_by,
            attempt: 0,
            retries: 0,
            reassignments: 0,
            worker_id: None,
            incarnation: None,
            created_at: created,
            assigned_at: None,
            started_at: None,
            ended_at: None,
            not_before: None,
            transitions: vec![transition(RunStatus::Pending, created, 0, None, None)],
            result: None,
            error: None,
            failure_reason: None,
            open_children: Vec::new(),
            trace_id: Some(trace.trace_id.clone()),
            traceparent: Some(trace.to_string()),
            tracestate: None,
            queue_seq: Some(index as u64 + 1),
        };

        // A run cancelled before placement never reached a worker (nor asked for children).
        if status == RunStatus::Cancelled && !is_parent && self.mix.unit() < 0.5 {
            let ended = created.plus_millis(self.mix.between(50, 5_000));
            record.ended_at = Some(ended);
            record.failure_reason = Some(FailureReason::Cancelled);
            record.transitions.push(transition(
                RunStatus::Cancelled,
                ended,
                0,
                None,
                Some("cancelled by request"),
            ));
            self.cancelled += 1;
            return record;
        }

        // A failure that was retried once first.
        let retried = status == RunStatus::Failed && self.mix.unit() < 0.3;
        let attempts = if retried { 2 } else { 1 };
        let mut at = created;
        for attempt in 1..=attempts {
            let assigned = at.plus_millis(self.mix.between(1, 20));
            let started = assigned.plus_millis(self.mix.between(1, 10));
            at = started.plus_millis(self.mix.between(5, LONGEST_RUN_MS));
            record.attempt = attempt;
            record.worker_id = Some(worker.clone());
            record.incarnation = Some(incarnation);
            record.assigned_at = Some(assigned);
            record.started_at = Some(started);
            let on = Some(worker.clone());
            record.transitions.extend([
                transition(RunStatus::Assigned, assigned, attempt, on.clone(), None),
                transition(RunStatus::Running, started, attempt, on.clone(), None),
            ]);
            if attempt < attempts {
                record.transitions.push(transition(
                    RunStatus::Pending,
                    at,
                    attempt,
                    on,
                    Some("connection reset by peer"),
                ));
            }
        }
        if is_parent {
            // A parent waits for its children, the runs created next.
            let children_ms = self.spacing_ms * (CHILDREN_PER_PARENT + 1) as f64;
            let children_end = created.plus_millis(children_ms as u64 + LONGEST_RUN_MS);
            at = at.max(children_end).min(self.now);
        }
        record.ended_at = Some(at);
        let on = Some(worker);
        match status {
            RunStatus::Failed => {
                self.failed += 1;
                record.max_retries = attempts as u32 - 1;
                record.retries = attempts as u32 - 1;
                let (reason, message) = if retried {
                    (FailureReason::RetriesExhausted, "connection reset by peer")
                } else {
                    (FailureReason::Error, "upstream answered 503")
                };
                record.failure_reason = Some(reason);
                record.error = Some(RunError {
                    message: message.to_owned(),
                    kind: Some("UpstreamError".to_owned()),
                    retryable: Some(retried),
                });
                record.transitions.push(transition(
                    RunStatus::Failed,
                    at,
                    attempts,
                    on,
                    Some(message),
                ));
            }
            RunStatus::Cancelled => {
                self.cancelled += 1;
                record.failure_reason = Some(FailureReason::Cancelled);
                record.transitions.push(transition(
                    RunStatus::Cancelled,
                    at,
                    attempts,
                    on,
                    Some("cancelled by request"),
                ));
            }
            _ => {
                record.result = Some(json!({"ok": true, "bytes": 1024 + index % 4096}));
                record
                    .transitions
                    .push(transition(RunStatus::Succeeded, at, attempts, on, None));
            }
        }
        record
    }

    /// Worker `n`, holding some of `recent` (runIDs of the newest runs) when WORKING.
    pub fn worker(&mut self, n: usize, recent: &[RunId]) -> WorkerRecord {
        let now = self.now;
        let registered = Timestamp::from_millis(
            now.as_millis() - self.mix.between(3_600_000, 6 * 3_600_000) as i64,
        );
        let pooled = n % 10 < POOLED_TENTHS;
        let mut labels = Labels::new();
        labels.insert("region".to_owned(), REGIONS[n % REGIONS.len()].to_owned());
        if pooled {
            labels.insert("pool".to_owned(), POOLS[n % POOLS.len()].to_owned());
            labels.insert("group".to_owned(), GROUPS[(n / POOLS.len()) % 2].to_owned());
        } else if n % 5 == 0 {
            labels.insert("gpu".to_owned(), "true".to_owned());
        }
        let held = if self.mix.unit() < WORKING_SHARE && !recent.is_empty() {
            self.mix.between(1, u64::from(CAPACITY)) as usize
        } else {
            0
        };
        let runs = (0..held)
            .map(|_| HeldRun {
                run_id: recent[self.mix.below(recent.len() as u64) as usize].clone(),
                attempt: 1,
                waiting: false,
                waiting_version: 0,
                since: Timestamp::from_millis(
                    now.as_millis() - self.mix.between(10, 60_000) as i64,
                ),
                traceparent: None,
            })
            .collect();
        let python = GROUPS[(n / POOLS.len()) % 2] == "python";
        let mut record = WorkerRecord {
            worker_id: self.fleet.ids[n].clone(),
            incarnation: self.fleet.incarnations[n],
            status: WorkerStatus::Idle,
            reported_status: None,
            phase: WorkerPhase::Ready,
            unresponsive: false,
            routines: Fleet::routines_of(n).into_iter().map(routine_id).collect(),
            labels,
            capacity: CAPACITY,
            runs,
            name: None,
            sdk: Some(SdkInfo {
                language: if python { "python" } else { "rust" }.to_owned(),
                version: "0.1.0".to_owned(),
            }),
            host: Some(format!("node-{:02}", n % 40)),
            pid: Some(1000 + n as u64),
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            lost_after_ms: LOST_AFTER_MS,
            registered_at: registered,
            status_changed_at: Timestamp::from_millis(
                now.as_millis() - self.mix.between(10, 600_000) as i64,
            ),
            ready_at: Some(registered.plus_millis(300)),
            terminating_reason: None,
        };
        record.status = record.derive_status();
        record.reported_status = Some(record.status);
        record
    }
}

fn transition(
    status: RunStatus,
    at: Timestamp,
    attempt: u64,
    worker_id: Option<WorkerId>,
    reason: Option<&str>,
) -> Transition {
    Transition {
        status,
        at,
        attempt,
        worker_id,
        reason: reason.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_creation_and_every_run_has_ended() {
        let mut plan = Plan::new(2_000, 20, Duration::from_secs(3_600));
        let runs: Vec<RunRecord> = (0..2_000).map(|index| plan.run(index)).collect();
        for pair in runs.windows(2) {
            assert!(pair[0].run_id < pair[1].run_id, "{:?}", pair);
            assert!(pair[0].created_at <= pair[1].created_at);
        }
        for run in &runs {
            assert!(run.status.is_terminal(), "{run:?}");
            assert_eq!(
                run.transitions.first().map(|t| t.status),
                Some(RunStatus::Pending)
            );
            assert_eq!(run.transitions.last().map(|t| t.status), Some(run.status));
            assert!(run.ended_at.is_some_and(|ended| ended < Timestamp::now()));
            let id = uuid::Uuid::parse_str(run.run_id.as_str()).expect("a UUID");
            assert_eq!(id.get_version_num(), 7);
            let (secs, nanos) = id.get_timestamp().expect("a v7 timestamp").to_unix();
            let ms = secs as i64 * 1000 + i64::from(nanos / 1_000_000);
            assert_eq!(ms, run.created_at.as_millis());
            if run.status == RunStatus::Failed {
                assert!(
                    run.error.is_some() && run.failure_reason.is_some(),
                    "{run:?}"
                );
            }
        }
        let share = |n: usize| n as f64 / runs.len() as f64;
        assert!(
            (0.03..0.08).contains(&share(plan.failed)),
            "{}",
            plan.failed
        );
        assert!(
            (0.005..0.04).contains(&share(plan.cancelled)),
            "{}",
            plan.cancelled
        );
        assert!(
            (0.02..0.09).contains(&share(plan.children)),
            "{}",
            plan.children
        );
        let parent = plan.with_children.clone().expect("a parent with children");
        let children: Vec<&RunRecord> = runs
            .iter()
            .filter(|run| run.parent_run_id.as_ref() == Some(&parent))
            .collect();
        assert_eq!(children.len(), CHILDREN_PER_PARENT);
        // Every child's parent ran on the worker that asked for it and waited for it.
        let by_id: std::collections::HashMap<&RunId, &RunRecord> =
            runs.iter().map(|run| (&run.run_id, run)).collect();
        for child in runs.iter().filter(|run| run.parent_run_id.is_some()) {
            let parent = by_id[child.parent_run_id.as_ref().expect("a parent")];
            assert!(child.created_at > parent.created_at, "{child:?}");
            assert!(child.ended_at <= parent.ended_at, "{child:?} {parent:?}");
            assert_eq!(child.requested_by, parent.worker_id, "{child:?} {parent:?}");
            assert!(parent.started_at.is_some(), "{parent:?}");
        }
        // The JSON is what the services read back.
        let json = serde_json::to_vec(&runs[0]).expect("serialise");
        let back: RunRecord = serde_json::from_slice(&json).expect("deserialise");
        assert_eq!(back, runs[0]);
    }

    #[test]
    fn workers_are_idle_or_working_with_unique_ids() {
        let mut plan = Plan::new(100, 200, Duration::from_secs(3_600));
        let recent: Vec<RunId> = (0..10).map(|index| plan.run(index).run_id).collect();
        let workers: Vec<WorkerRecord> = (0..200).map(|n| plan.worker(n, &recent)).collect();
        let ids: std::collections::HashSet<_> = workers.iter().map(|w| &w.worker_id).collect();
        assert_eq!(ids.len(), workers.len());
        let working = workers
            .iter()
            .filter(|w| w.status == WorkerStatus::Working)
            .count();
        assert!(working > 40 && working < 120, "{working}");
        assert!(workers.iter().all(|w| w.derive_status() == w.status));
        assert!(workers.iter().any(|w| w.labels.contains_key("pool")));
        assert!(workers
            .iter()
            .all(|w| w.runs.len() <= w.capacity as usize && w.routines.len() == 3));
    }
}
