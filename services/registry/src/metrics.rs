//! Metric names of the registry, their descriptions, and the count of workers by status.
//! docs/observability.md lists them for operators.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use ::metrics::{counter, gauge};
use drover_protocol::{ErrorCode, WorkerRecord, WorkerStatus};
use drover_service_kit::metrics::{Histogram, ServiceMetrics};

/// Requests handled, by `endpoint` and `outcome` (`ok` or an error code).
pub const REQUESTS: &str = "drover_registry_requests_total";
/// Compare-and-set conflicts on worker records (another writer got there first).
pub const WRITE_CONFLICTS: &str = "drover_registry_write_conflicts_total";
/// Changes to the runs a worker holds (from the scheduler's holdings) applied by one
/// worker-record write.
pub const BATCH_SIZE: &str = "drover_registry_batch_size";
/// Worker status changes, by the new `status`.
pub const STATUS_CHANGES: &str = "drover_registry_status_changes_total";
/// Known workers, by `status`.
pub const WORKERS: &str = "drover_registry_workers";
/// Workers declared LOST.
pub const WORKERS_LOST: &str = "drover_registry_workers_lost_total";
/// `v1.ready` and `v1.terminating` directives refused, by `code`.
pub const DIRECTIVES_REJECTED: &str = "drover_registry_directives_rejected_total";

/// Changes per write: one, up to a worker's whole capacity.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0, 128.0];
const HISTOGRAMS: &[Histogram] = &[(BATCH_SIZE, BATCH_BUCKETS)];

/// The registry's metrics, for `run_service`.
pub const METRICS: ServiceMetrics = ServiceMetrics {
    describe,
    histograms: HISTOGRAMS,
};

/// Registers the descriptions shown on `/metrics`, and the counters of rare events at 0.
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "requests handled, by endpoint and outcome");
    describe_counter!(WRITE_CONFLICTS, "worker record compare-and-set conflicts");
    describe_histogram!(
        BATCH_SIZE,
        "changes to the runs a worker holds applied per write"
    );
    describe_counter!(STATUS_CHANGES, "worker status changes, by new status");
    describe_gauge!(WORKERS, "known workers, by status");
    describe_counter!(WORKERS_LOST, "workers declared LOST");
    describe_counter!(
        DIRECTIVES_REJECTED,
        "ready and terminating directives refused, by code"
    );
    for rare in [WRITE_CONFLICTS, WORKERS_LOST] {
        counter!(rare).increment(0);
    }
}

/// This replica wrote a worker record that went from `previous` to `next`: counts the
/// worker as lost when it has just become LOST.
pub fn count_lost(previous: Option<WorkerStatus>, next: WorkerStatus) {
    if lost(previous, next) {
        counter!(WORKERS_LOST).increment(1);
    }
}

/// A `v1.ready` or `v1.terminating` was refused with `code`.
pub fn directive_rejected(code: ErrorCode) {
    counter!(DIRECTIVES_REJECTED, "code" => code.as_str()).increment(1);
}

/// True when a worker has just been declared LOST.
fn lost(previous: Option<WorkerStatus>, next: WorkerStatus) -> bool {
    next == WorkerStatus::Lost && previous != Some(WorkerStatus::Lost)
}

/// Workers by status (`drover_registry_workers`), kept with every change to the registry's
/// copy of the bucket: its own writes and those of other replicas, seen through the watch.
#[derive(Debug, Default)]
pub struct WorkerCounts {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    status: HashMap<String, WorkerStatus>,
    by_status: HashMap<WorkerStatus, u64>,
}

impl Counts {
    /// Moves `worker` to `status` (`None`: it has no record); returns the statuses whose
    /// count changed.
    fn set(&mut self, worker: &str, status: Option<WorkerStatus>) -> Vec<WorkerStatus> {
        let previous = match status {
            Some(status) => self.status.insert(worker.to_owned(), status),
            None => self.status.remove(worker),
        };
        if previous == status {
            return Vec::new();
        }
        if let Some(previous) = previous {
            let count = self.by_status.entry(previous).or_default();
            *count = count.saturating_sub(1);
        }
        if let Some(status) = status {
            *self.by_status.entry(status).or_default() += 1;
        }
        previous.into_iter().chain(status).collect()
    }

    fn count(&self, status: WorkerStatus) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
}

impl WorkerCounts {
    /// Counts worker `key` under the status `read` gives (`None`: it has no record).
    ///
    /// `read` runs under this count's lock, so that two refreshes of one worker cannot
    /// leave the older status counted.
    pub fn refresh(&self, key: &str, read: impl FnOnce() -> Option<WorkerStatus>) {
        let mut counts = self.lock();
        for changed in counts.set(key, read()) {
            gauge!(WORKERS, "status" => changed.as_str()).set(counts.count(changed) as f64);
        }
    }

    /// Counts the records `read` gives afresh (at start-up, or after changes were missed).
    pub fn reset(&self, read: impl FnOnce() -> Vec<Arc<WorkerRecord>>) {
        let mut counts = self.lock();
        *counts = Counts::default();
        for record in read() {
            counts.set(record.worker_id.as_str(), Some(record.status));
        }
        for status in WorkerStatus::ALL {
            gauge!(WORKERS, "status" => status.as_str()).set(counts.count(status) as f64);
        }
    }

    /// How many workers have `status`.
    pub fn count(&self, status: WorkerStatus) -> u64 {
        self.lock().count(status)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_counts_under_its_latest_status_only() {
        let counts = WorkerCounts::default();
        let set = |key: &str, status| counts.refresh(key, || status);
        set("a", Some(WorkerStatus::Initializing));
        set("b", Some(WorkerStatus::Idle));
        set("a", Some(WorkerStatus::Idle));
        assert_eq!(counts.count(WorkerStatus::Initializing), 0);
        assert_eq!(counts.count(WorkerStatus::Idle), 2);
        set("a", Some(WorkerStatus::Idle));
        assert_eq!(counts.count(WorkerStatus::Idle), 2, "no change, no count");
        set("b", Some(WorkerStatus::Working));
        set("a", None);
        assert_eq!(counts.count(WorkerStatus::Idle), 0);
        assert_eq!(counts.count(WorkerStatus::Working), 1);
        set("gone", None);
        assert_eq!(counts.count(WorkerStatus::Working), 1);
    }

    #[test]
    fn only_the_change_to_lost_counts_as_a_lost_worker() {
        assert!(lost(Some(WorkerStatus::Unresponsive), WorkerStatus::Lost));
        assert!(lost(None, WorkerStatus::Lost));
        assert!(!lost(Some(WorkerStatus::Lost), WorkerStatus::Lost));
        assert!(!lost(Some(WorkerStatus::Working), WorkerStatus::Offline));
    }
}
