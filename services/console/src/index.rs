//! The console's index of runs: a compact summary of every record in `DROVER_RUNS`, kept
//! current by a watch of the bucket, ordered by runID (newest last) so that filtering and
//! paging never ask the scheduler to scan its bucket.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{Entry, Operation, Store};
use drover_protocol::{Attempt, FailureReason, RoutineId, RunId, RunStatus, Timestamp, WorkerId};
use drover_service_kit::kv_cache;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// What the console keeps of a run record: enough to list, filter and count it. The full
/// record is read from the scheduler (`v1.run.get`) when a run's page is opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// Its routine.
    #[serde(rename = "routineID")]
    pub routine_id: RoutineId,
    /// Current state.
    pub status: RunStatus,
    /// The current attempt's number.
    pub attempt: Attempt,
    /// The worker holding (or that last held) the run.
    #[serde(rename = "workerID", default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<WorkerId>,
    /// Accepted.
    pub created_at: Timestamp,
    /// Reached a terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Why it FAILED or was CANCELLED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<FailureReason>,
    /// The idempotency key it was submitted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// For a child run: its parent.
    #[serde(
        rename = "parentRunID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_run_id: Option<RunId>,
}

/// Which runs a listing wants. Every field narrows it; none lists every run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    /// Only runs in this state.
    pub status: Option<RunStatus>,
    /// Only runs of this routine.
    pub routine: Option<RoutineId>,
    /// Only runs held (or last held) by this worker.
    pub worker: Option<WorkerId>,
    /// Only runs accepted at or after this time.
    pub since: Option<Timestamp>,
    /// Only runs accepted before this time.
    pub until: Option<Timestamp>,
}

impl RunFilter {
    fn admits(&self, run: &RunSummary) -> bool {
        self.status.is_none_or(|status| run.status == status)
            && self.routine.as_ref().is_none_or(|r| &run.routine_id == r)
            && self
                .worker
                .as_ref()
                .is_none_or(|w| run.worker_id.as_ref() == Some(w))
            && self.since.is_none_or(|since| run.created_at >= since)
            && self.until.is_none_or(|until| run.created_at < until)
    }
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The runs on it.
    pub runs: Vec<RunSummary>,
    /// The runID to continue after, when there may be more.
    pub next_cursor: Option<RunId>,
}

/// Runs ended per minute, for the overview's chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MinuteCounts {
    /// Minutes before now (0 is the current minute).
    pub minutes_ago: u32,
    /// Runs that SUCCEEDED in that minute.
    pub succeeded: u32,
    /// Runs that FAILED in that minute.
    pub failed: u32,
    /// Runs CANCELLED in that minute.
    pub cancelled: u32,
}

/// The runs, and what the pages count of them, kept with every change so that no page has
/// to walk 100,000 runs.
#[derive(Debug, Default)]
struct Runs {
    by_id: BTreeMap<RunId, Indexed>,
    by_key: HashMap<String, RunId>,
    children: HashMap<RunId, BTreeSet<RunId>>,
    by_status: BTreeMap<RunStatus, usize>,
    by_routine: BTreeMap<RoutineId, usize>,
    pending: HashMap<RoutineId, usize>,
    /// Ended runs by when they ended, for the per-minute chart.
    ended: BTreeSet<(Timestamp, RunId)>,
}

#[derive(Debug)]
struct Indexed {
    summary: RunSummary,
    /// When the bucket last stored the record: it ages out of the bucket from then on.
    written: Timestamp,
}

/// Lowers a count; true when it reached zero and its entry should go.
fn decrement(count: Option<&mut usize>) -> bool {
    match count {
        Some(count) => {
            *count -= 1;
            *count == 0
        }
        None => false,
    }
}

impl Runs {
    fn put(&mut self, summary: RunSummary, written: Timestamp) {
        self.remove(&summary.run_id);
        if let Some(key) = &summary.idempotency_key {
            self.by_key.insert(key.clone(), summary.run_id.clone());
        }
        if let Some(parent) = &summary.parent_run_id {
            self.children
                .entry(parent.clone())
                .or_default()
                .insert(summary.run_id.clone());
        }
        *self.by_status.entry(summary.status).or_default() += 1;
        *self
            .by_routine
            .entry(summary.routine_id.clone())
            .or_default() += 1;
        if summary.status == RunStatus::Pending {
            *self.pending.entry(summary.routine_id.clone()).or_default() += 1;
        }
        if let Some(ended) = summary.ended_at {
            self.ended.insert((ended, summary.run_id.clone()));
        }
        self.by_id
            .insert(summary.run_id.clone(), Indexed { summary, written });
    }

    fn remove(&mut self, run: &RunId) {
        let Some(Indexed { summary, .. }) = self.by_id.remove(run) else {
            return;
        };
        if let Some(key) = &summary.idempotency_key {
            if self.by_key.get(key) == Some(run) {
                self.by_key.remove(key);
            }
        }
        if let Some(parent) = &summary.parent_run_id {
            if let Some(children) = self.children.get_mut(parent) {
                children.remove(run);
                if children.is_empty() {
                    self.children.remove(parent);
                }
            }
        }
        if decrement(self.by_status.get_mut(&summary.status)) {
            self.by_status.remove(&summary.status);
        }
        if decrement(self.by_routine.get_mut(&summary.routine_id)) {
            self.by_routine.remove(&summary.routine_id);
        }
        if summary.status == RunStatus::Pending
            && decrement(self.pending.get_mut(&summary.routine_id))
        {
            self.pending.remove(&summary.routine_id);
        }
        if let Some(ended) = summary.ended_at {
            self.ended.remove(&(ended, summary.run_id));
        }
    }
}

/// The index and the watch that fills it.
pub struct RunIndex {
    runs: RwLock<Runs>,
    caught_up: AtomicBool,
    caught_up_notify: Notify,
    /// Bumped on every change, for live pages to notice one.
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for RunIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunIndex")
            .field("runs", &self.len())
            .field("caught_up", &self.is_caught_up())
            .finish()
    }
}

impl Default for RunIndex {
    fn default() -> Self {
        Self {
            runs: RwLock::new(Runs::default()),
            caught_up: AtomicBool::new(false),
            caught_up_notify: Notify::new(),
            changes: watch::channel(0).0,
        }
    }
}

impl RunIndex {
    /// Starts following `bucket`; the index fills in the background.
    pub fn spawn(bucket: Store, shutdown: CancellationToken) -> Arc<Self> {
        let index = Arc::new(Self::default());
        tokio::spawn(Arc::clone(&index).follow(bucket, shutdown));
        index
    }

    /// True once every record that existed at start-up is in.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Waits until every record that existed at start-up is in.
    pub async fn wait_caught_up(&self) {
        loop {
            let notified = self.caught_up_notify.notified();
            if self.is_caught_up() {
                return;
            }
            notified.await;
        }
    }

    /// A receiver that sees a new value after every change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Runs indexed.
    pub fn len(&self) -> usize {
        self.runs.read().by_id.len()
    }

    /// True when no run is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a run (as the watch does); a record read from the scheduler can refresh it.
    pub fn put(&self, summary: RunSummary, written: Timestamp) {
        self.runs.write().put(summary, written);
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Forgets a run.
    pub fn remove(&self, run: &RunId) {
        self.runs.write().remove(run);
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// One run's summary.
    pub fn get(&self, run: &RunId) -> Option<RunSummary> {
        self.runs.read().by_id.get(run).map(|i| i.summary.clone())
    }

    /// The run submitted with this idempotency key.
    pub fn by_idempotency_key(&self, key: &str) -> Option<RunSummary> {
        let runs = self.runs.read();
        let run = runs.by_key.get(key)?;
        runs.by_id.get(run).map(|i| i.summary.clone())
    }

    /// The runs `parent` requested, oldest first.
    pub fn children(&self, parent: &RunId) -> Vec<RunSummary> {
        let runs = self.runs.read();
        runs.children
            .get(parent)
            .into_iter()
            .flatten()
            .filter_map(|child| runs.by_id.get(child).map(|i| i.summary.clone()))
            .collect()
    }

    /// Up to `limit` runs that `filter` admits, newest first, after `cursor`.
    pub fn list(&self, filter: &RunFilter, cursor: Option<&RunId>, limit: usize) -> Page {
        let runs = self.runs.read();
        let upper = cursor.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = runs
            .by_id
            .range((Bound::Unbounded, upper))
            .rev()
            .map(|(_, indexed)| &indexed.summary)
            .filter(|run| filter.admits(run));
        let page: Vec<RunSummary> = matching.by_ref().take(limit).cloned().collect();
        let next_cursor = match matching.next() {
            Some(_) => page.last().map(|run| run.run_id.clone()),
            None => None,
        };
        Page {
            runs: page,
            next_cursor,
        }
    }

    /// How many runs are in each state.
    pub fn count_by_status(&self) -> BTreeMap<RunStatus, usize> {
        let runs = self.runs.read();
        RunStatus::ALL
            .iter()
            .map(|status| (*status, runs.by_status.get(status).copied().unwrap_or(0)))
            .collect()
    }

    /// Runs waiting for placement, by routine, most first.
    pub fn pending_by_routine(&self) -> Vec<(RoutineId, usize)> {
        let mut counts: Vec<(RoutineId, usize)> = self
            .runs
            .read()
            .pending
            .iter()
            .map(|(routine, count)| (routine.clone(), *count))
            .collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }

    /// Routines that have runs, in order.
    pub fn routines(&self) -> Vec<RoutineId> {
        self.runs.read().by_routine.keys().cloned().collect()
    }

    /// Runs that ended in each of the last `minutes` minutes before `now`.
    pub fn ended_per_minute(&self, now: Timestamp, minutes: u32) -> Vec<MinuteCounts> {
        let mut counts: Vec<MinuteCounts> = (0..minutes)
            .map(|minutes_ago| MinuteCounts {
                minutes_ago,
                ..MinuteCounts::default()
            })
            .collect();
        let runs = self.runs.read();
        let oldest = Timestamp::from_millis(now.as_millis() - i64::from(minutes) * 60_000 + 1);
        // "-" sorts before every runID: it is the smallest character a runID may hold.
        let from = Bound::Included((oldest, RunId::parse("-").expect("a valid runID")));
        for (ended, run) in runs.ended.range((from, Bound::Unbounded)) {
            let age = now.as_millis() - ended.as_millis();
            if age < 0 {
                break;
            }
            let (Some(slot), Some(indexed)) =
                (counts.get_mut((age / 60_000) as usize), runs.by_id.get(run))
            else {
                continue;
            };
            match indexed.summary.status {
                RunStatus::Succeeded => slot.succeeded += 1,
                RunStatus::Failed => slot.failed += 1,
                RunStatus::Cancelled => slot.cancelled += 1,
                _ => {}
            }
        }
        counts
    }

    /// Forgets runs last written before `oldest`: the bucket's age limit has removed them,
    /// and a stream's age limit tells no watcher.
    pub fn forget_written_before(&self, oldest: Timestamp) -> usize {
        let mut runs = self.runs.write();
        let expired: Vec<RunId> = runs
            .by_id
            .iter()
            .filter(|(_, indexed)| indexed.written < oldest)
            .map(|(run, _)| run.clone())
            .collect();
        for run in &expired {
            runs.remove(run);
        }
        drop(runs);
        if !expired.is_empty() {
            self.changes.send_modify(|generation| *generation += 1);
        }
        expired.len()
    }

    fn mark_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::AcqRel) {
            debug!(runs = self.len(), "run index caught up");
        }
        self.caught_up_notify.notify_waiters();
    }

    fn apply(&self, entry: &Entry) {
        let Ok(run) = RunId::parse(entry.key.as_str()) else {
            return;
        };
        match entry.operation {
            Operation::Put => match serde_json::from_slice::<RunSummary>(&entry.value) {
                Ok(summary) => {
                    let written = Timestamp::from_millis(
                        (entry.created.unix_timestamp_nanos() / 1_000_000) as i64,
                    );
                    self.put(summary, written);
                }
                Err(error) => warn!(run = %run, %error, "skipping an undecodable run record"),
            },
            Operation::Delete | Operation::Purge => self.remove(&run),
        }
    }

    async fn follow(self: Arc<Self>, bucket: Store, shutdown: CancellationToken) {
        let pruning = tokio::spawn(Arc::clone(&self).prune(bucket.clone(), shutdown.clone()));
        kv_cache::follow(
            &bucket,
            &shutdown,
            |entry| self.apply(&entry),
            || self.mark_caught_up(),
        )
        .await;
        pruning.abort();
    }

    /// Every minute, forgets what the bucket's age limit has removed.
    async fn prune(self: Arc<Self>, bucket: Store, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(PRUNE_INTERVAL);
        loop {
            if shutdown.run_until_cancelled(ticks.tick()).await.is_none() {
                return;
            }
            let max_age = bucket.stream.cached_info().config.max_age;
            if max_age.is_zero() {
                continue;
            }
            let oldest =
                Timestamp::from_millis(Timestamp::now().as_millis() - max_age.as_millis() as i64);
            let forgotten = self.forget_written_before(oldest);
            if forgotten > 0 {
                debug!(forgotten, "runs aged out of the bucket");
            }
        }
    }
}

const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: u64, routine: &str, status: RunStatus) -> RunSummary {
        RunSummary {
            run_id: RunId::parse(format!("0190f000-0000-7000-8000-{n:012}")).unwrap(),
            routine_id: RoutineId::parse(routine).unwrap(),
            status,
            attempt: 1,
            worker_id: None,
            created_at: Timestamp::from_millis(1_000_000 + n as i64),
            ended_at: None,
            failure_reason: None,
            idempotency_key: None,
            parent_run_id: None,
        }
    }

    fn index_of(runs: Vec<RunSummary>) -> RunIndex {
        let index = RunIndex::default();
        for summary in runs {
            index.put(summary, Timestamp::from_millis(0));
        }
        index
    }

    #[test]
    fn pages_run_newest_first_and_end_without_a_cursor() {
        let index = index_of((1..=5).map(|n| run(n, "a", RunStatus::Succeeded)).collect());
        let first = index.list(&RunFilter::default(), None, 2);
        let ids = |page: &Page| {
            page.runs
                .iter()
                .map(|r| r.created_at.as_millis() - 1_000_000)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&first), [5, 4]);
        let second = index.list(&RunFilter::default(), first.next_cursor.as_ref(), 2);
        assert_eq!(ids(&second), [3, 2]);
        let third = index.list(&RunFilter::default(), second.next_cursor.as_ref(), 2);
        assert_eq!(ids(&third), [1]);
        assert_eq!(third.next_cursor, None);
        // A page that ends exactly at the last run says so.
        let exact = index.list(&RunFilter::default(), None, 5);
        assert_eq!(exact.next_cursor, None);
    }

    #[test]
    fn filters_narrow_and_skip_what_they_do_not_admit() {
        let mut runs: Vec<RunSummary> = (1..=6)
            .map(|n| {
                run(
                    n,
                    if n % 2 == 0 { "even" } else { "odd" },
                    RunStatus::Succeeded,
                )
            })
            .collect();
        runs[0].status = RunStatus::Failed;
        let index = index_of(runs);
        let even = RunFilter {
            routine: Some(RoutineId::parse("even").unwrap()),
            ..RunFilter::default()
        };
        let page = index.list(&even, None, 10);
        assert_eq!(page.runs.len(), 3);
        assert!(page.runs.iter().all(|r| r.routine_id.as_str() == "even"));
        let failed = RunFilter {
            status: Some(RunStatus::Failed),
            ..RunFilter::default()
        };
        assert_eq!(index.list(&failed, None, 10).runs.len(), 1);
        let window = RunFilter {
            since: Some(Timestamp::from_millis(1_000_002)),
            until: Some(Timestamp::from_millis(1_000_004)),
            ..RunFilter::default()
        };
        let page = index.list(&window, None, 10);
        assert_eq!(page.runs.len(), 2, "since is inclusive, until exclusive");
    }

    #[test]
    fn children_and_keys_follow_rewrites_and_removals() {
        let parent = run(1, "p", RunStatus::Running);
        let mut child = run(2, "c", RunStatus::Pending);
        child.parent_run_id = Some(parent.run_id.clone());
        child.idempotency_key = Some("k".to_owned());
        let index = index_of(vec![parent.clone(), child.clone()]);
        assert_eq!(index.children(&parent.run_id), vec![child.clone()]);
        assert_eq!(index.by_idempotency_key("k"), Some(child.clone()));
        let mut done = child.clone();
        done.status = RunStatus::Succeeded;
        index.put(done.clone(), Timestamp::from_millis(0));
        assert_eq!(index.children(&parent.run_id), vec![done]);
        index.remove(&child.run_id);
        assert!(index.children(&parent.run_id).is_empty());
        assert_eq!(index.by_idempotency_key("k"), None);
    }

    #[test]
    fn counts_cover_every_state_and_minutes_fall_in_their_slot() {
        let mut runs: Vec<RunSummary> = (1..=4).map(|n| run(n, "a", RunStatus::Pending)).collect();
        runs[0].status = RunStatus::Succeeded;
        runs[0].ended_at = Some(Timestamp::from_millis(600_000 - 1));
        runs[1].status = RunStatus::Failed;
        runs[1].ended_at = Some(Timestamp::from_millis(600_000 - 60_001));
        let index = index_of(runs);
        let counts = index.count_by_status();
        assert_eq!(counts.len(), RunStatus::ALL.len());
        assert_eq!(counts[&RunStatus::Pending], 2);
        assert_eq!(counts[&RunStatus::Running], 0);
        let minutes = index.ended_per_minute(Timestamp::from_millis(600_000), 3);
        assert_eq!(minutes[0].succeeded, 1);
        assert_eq!(minutes[1].failed, 1);
        assert_eq!(
            minutes[2],
            MinuteCounts {
                minutes_ago: 2,
                ..MinuteCounts::default()
            }
        );
        assert_eq!(
            index.pending_by_routine(),
            vec![(RoutineId::parse("a").unwrap(), 2)]
        );
    }

    #[test]
    fn counts_follow_each_rewrite_and_removal() {
        let pending = run(1, "a", RunStatus::Pending);
        let index = index_of(vec![pending.clone(), run(2, "b", RunStatus::Pending)]);
        assert_eq!(index.count_by_status()[&RunStatus::Pending], 2);
        let mut done = pending.clone();
        done.status = RunStatus::Succeeded;
        done.ended_at = Some(Timestamp::from_millis(1_000_500));
        index.put(done, Timestamp::from_millis(0));
        let counts = index.count_by_status();
        assert_eq!(
            (counts[&RunStatus::Pending], counts[&RunStatus::Succeeded]),
            (1, 1)
        );
        assert_eq!(
            index.pending_by_routine(),
            vec![(RoutineId::parse("b").unwrap(), 1)]
        );
        let chart = index.ended_per_minute(Timestamp::from_millis(1_000_600), 1);
        assert_eq!(chart[0].succeeded, 1);
        index.remove(&pending.run_id);
        assert_eq!(index.routines(), vec![RoutineId::parse("b").unwrap()]);
        assert_eq!(index.count_by_status()[&RunStatus::Succeeded], 0);
        assert_eq!(
            index.ended_per_minute(Timestamp::from_millis(1_000_600), 1)[0].succeeded,
            0
        );
    }

    #[test]
    fn runs_written_before_the_bucket_age_are_forgotten() {
        let index = RunIndex::default();
        index.put(
            run(1, "a", RunStatus::Succeeded),
            Timestamp::from_millis(10),
        );
        index.put(
            run(2, "a", RunStatus::Succeeded),
            Timestamp::from_millis(30),
        );
        assert_eq!(index.forget_written_before(Timestamp::from_millis(20)), 1);
        assert_eq!(index.len(), 1);
    }
}
