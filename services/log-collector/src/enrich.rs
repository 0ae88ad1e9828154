//! What a log line is enriched with: its run's routine, attempt and trace, read from KV
//! `DROVER_RUNS` through a small bounded cache, since many lines share a run. The trace
//! context is kept too, to record lines on the run's trace (see [`crate::trace`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Operation, Store};
use drover_protocol::trace::TraceParent;
use drover_protocol::{Attempt, RoutineId, RunId, RunRecord, WorkerId};
use futures::StreamExt;
use tracing::debug;

use crate::metrics;

/// How long a looked-up run stays fresh. Short, because `attempt` moves on a retry.
pub const FRESH_FOR: Duration = Duration::from_secs(2);
/// A line from another worker than the one the run was cached with refreshes the entry
/// (the run was probably reassigned), but not more often than this.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_millis(100);
/// Run records fetched at once for one batch.
const CONCURRENT_LOOKUPS: usize = 16;

/// The parts of a run record a log record carries, and the run's trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// The run.
    pub run_id: RunId,
    /// The run's routine.
    pub routine_id: RoutineId,
    /// The run's current attempt.
    pub attempt: Attempt,
    /// The run's W3C trace-id.
    pub trace_id: Option<String>,
    /// The worker holding the run.
    pub worker_id: Option<WorkerId>,
    /// The trace context the run was accepted in (the record's `traceparent`), when valid.
    pub submitted_in: Option<TraceParent>,
    /// The W3C `tracestate` received at submission.
    pub tracestate: Option<String>,
    /// The context of the current attempt's span, derived once per lookup.
    pub attempt_span: Option<TraceParent>,
}

impl RunInfo {
    /// The info of `run`, at `attempt` (0 before its first assignment), accepted in the
    /// context `traceparent` (its trace-id is the run's).
    pub fn new(
        run_id: RunId,
        routine_id: RoutineId,
        attempt: Attempt,
        worker_id: Option<WorkerId>,
        traceparent: Option<String>,
        tracestate: Option<String>,
    ) -> Self {
        let submitted_in = traceparent.as_deref().and_then(TraceParent::parse);
        let attempt_span = submitted_in
            .as_ref()
            .filter(|_| attempt > 0)
            .map(|submitted| TraceParent::attempt_span(submitted, run_id.as_str(), attempt));
        Self {
            trace_id: submitted_in.as_ref().map(|s| s.trace_id.clone()),
            run_id,
            routine_id,
            attempt,
            worker_id,
            submitted_in,
            tracestate,
            attempt_span,
        }
    }
}

impl From<&RunRecord> for RunInfo {
    fn from(record: &RunRecord) -> Self {
        let mut info = Self::new(
            record.run_id.clone(),
            record.routine_id.clone(),
            record.attempt,
            record.worker_id.clone(),
            record.traceparent.clone(),
            record.tracestate.clone(),
        );
        info.trace_id = record.trace_id.clone();
        info
    }
}

/// A looked-up run: `None` when no record exists.
pub type Lookup = Option<Arc<RunInfo>>;

struct Entry {
    info: Lookup,
    fetched: Instant,
    generation: u64,
}

/// A map bounded to `capacity` entries that forgets the least recently fetched first.
pub struct Bounded {
    capacity: usize,
    entries: HashMap<RunId, Entry>,
    order: VecDeque<(RunId, u64)>,
    generation: u64,
}

impl Bounded {
    /// An empty map holding at most `capacity` runs.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
        }
    }

    /// The cached lookup of `run`, if it is fresh enough for a line from `worker`.
    pub fn fresh(&self, run: &RunId, worker: &WorkerId, now: Instant) -> Option<Lookup> {
        let entry = self.entries.get(run)?;
        let age = now.saturating_duration_since(entry.fetched);
        let moved = entry
            .info
            .as_ref()
            .and_then(|info| info.worker_id.as_ref())
            .is_some_and(|holder| holder != worker);
        if age >= FRESH_FOR || (moved && age >= REFRESH_AT_MOST_EVERY) {
            return None;
        }
        Some(entry.info.clone())
    }

    /// Records a lookup made at `now`, evicting the oldest entries beyond the capacity.
    pub fn insert(&mut self, run: RunId, info: Lookup, now: Instant) {
        self.generation += 1;
        let generation = self.generation;
        self.order.push_back((run.clone(), generation));
        self.entries.insert(
            run,
            Entry {
                info,
                fetched: now,
                generation,
            },
        );
        while self.entries.len() > self.capacity {
            let Some((oldest, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .entries
                .get(&oldest)
                .is_some_and(|entry| entry.generation == generation)
            {
                self.entries.remove(&oldest);
            }
        }
        // Superseded positions pile up when the same runs are refreshed over and over.
        if self.order.len() > self.capacity * 2 {
            let entries = &self.entries;
            self.order.retain(|(run, generation)| {
                entries
                    .get(run)
                    .is_some_and(|e| e.generation == *generation)
            });
        }
    }

    /// Number of cached runs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Run lookups for enrichment, cached.
pub struct RunCache {
    bucket: Store,
    cache: Mutex<Bounded>,
}

impl RunCache {
    /// A cache over the runs bucket holding at most `capacity` runs.
    pub fn new(bucket: Store, capacity: usize) -> Self {
        Self {
            bucket,
            cache: Mutex::new(Bounded::new(capacity)),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Bounded> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Looks up every run named in `wanted` (run and the worker whose line names it),
    /// fetching the stale or unknown ones concurrently.
    pub async fn resolve(&self, wanted: &[(RunId, WorkerId)]) -> HashMap<RunId, Lookup> {
        let now = Instant::now();
        let mut found = HashMap::new();
        let mut missing = HashSet::new();
        {
            let cache = self.cache();
            for (run, worker) in wanted {
                if found.contains_key(run) || missing.contains(run) {
                    continue;
                }
                match cache.fresh(run, worker, now) {
                    Some(lookup) => {
                        ::metrics::counter!(metrics::RUN_LOOKUPS, "outcome" => "cached")
                            .increment(1);
                        found.insert(run.clone(), lookup);
                    }
                    None => {
                        missing.insert(run.clone());
                    }
                }
            }
        }
        let fetched: Vec<(RunId, Result<Lookup, String>)> = futures::stream::iter(missing)
            .map(|run| async move {
                let result = self.fetch(&run).await;
                (run, result)
            })
            .buffer_unordered(CONCURRENT_LOOKUPS)
            .collect()
            .await;
        let mut cache = self.cache();
        for (run, result) in fetched {
            match result {
                Ok(lookup) => {
                    let outcome = if lookup.is_some() { "found" } else { "missing" };
                    ::metrics::counter!(metrics::RUN_LOOKUPS, "outcome" => outcome).increment(1);
                    cache.insert(run.clone(), lookup.clone(), now);
                    found.insert(run, lookup);
                }
                Err(error) => {
                    // Not cached: the next line about this run tries again.
                    ::metrics::counter!(metrics::RUN_LOOKUPS, "outcome" => "error").increment(1);
                    debug!(run = %run, error, "run record lookup failed");
                    found.insert(run, None);
                }
            }
        }
        found
    }

    async fn fetch(&self, run: &RunId) -> Result<Lookup, String> {
        let entry = self
            .bucket
            .entry(run.as_str())
            .await
            .map_err(|error| error.to_string())?;
        match entry {
            Some(entry) if entry.operation == Operation::Put => {
                let record: RunRecord = serde_json::from_slice(&entry.value)
                    .map_err(|error| format!("undecodable run record: {error}"))?;
                Ok(Some(Arc::new(RunInfo::from(&record))))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: u32) -> RunId {
        RunId::parse(format!("run-{n}")).expect("valid run id")
    }

    fn worker(id: &str) -> WorkerId {
        WorkerId::parse(id).expect("valid worker id")
    }

    fn info(holder: &str) -> Lookup {
        Some(Arc::new(RunInfo::new(
            run(0),
            RoutineId::parse("r").expect("valid routine id"),
            1,
            Some(worker(holder)),
            None,
            None,
        )))
    }

    #[test]
    fn entries_go_stale() {
        let mut cache = Bounded::new(8);
        let start = Instant::now();
        cache.insert(run(1), info("w1"), start);
        assert_eq!(cache.fresh(&run(1), &worker("w1"), start), Some(info("w1")));
        assert_eq!(cache.fresh(&run(1), &worker("w1"), start + FRESH_FOR), None);
        assert_eq!(cache.fresh(&run(2), &worker("w1"), start), None);
    }

    #[test]
    fn a_line_from_another_worker_refreshes_soon() {
        let mut cache = Bounded::new(8);
        let start = Instant::now();
        cache.insert(run(1), info("w1"), start);
        assert!(cache.fresh(&run(1), &worker("w2"), start).is_some());
        let later = start + REFRESH_AT_MOST_EVERY;
        assert!(cache.fresh(&run(1), &worker("w2"), later).is_none());
        assert!(cache.fresh(&run(1), &worker("w1"), later).is_some());
    }

    #[test]
    fn missing_runs_are_cached_too() {
        let mut cache = Bounded::new(8);
        let start = Instant::now();
        cache.insert(run(1), None, start);
        assert_eq!(cache.fresh(&run(1), &worker("w1"), start), Some(None));
    }

    #[test]
    fn the_oldest_are_evicted_first() {
        let mut cache = Bounded::new(3);
        let now = Instant::now();
        for n in 0..3 {
            cache.insert(run(n), info("w"), now);
        }
        // Refreshing run 0 makes run 1 the oldest.
        cache.insert(run(0), info("w"), now);
        cache.insert(run(3), info("w"), now);
        assert_eq!(cache.len(), 3);
        assert!(cache.fresh(&run(1), &worker("w"), now).is_none());
        for n in [0, 2, 3] {
            assert!(cache.fresh(&run(n), &worker("w"), now).is_some(), "run {n}");
        }
    }

    #[test]
    fn refreshing_one_run_forever_stays_bounded() {
        let mut cache = Bounded::new(2);
        let now = Instant::now();
        for _ in 0..100 {
            cache.insert(run(0), info("w"), now);
        }
        assert_eq!(cache.len(), 1);
        assert!(cache.order.len() <= 4);
    }
}
