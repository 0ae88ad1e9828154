//! Metric names of the registry.

/// Requests handled, by `endpoint` and `outcome` (`ok` or an error code).
pub const REQUESTS: &str = "drover_registry_requests_total";
/// Compare-and-set conflicts on worker records (another writer got there first).
pub const WRITE_CONFLICTS: &str = "drover_registry_write_conflicts_total";
/// Slot claims and releases applied by one worker-record write.
pub const BATCH_SIZE: &str = "drover_registry_batch_size";
/// Worker status changes, by the new `status`.
pub const STATUS_CHANGES: &str = "drover_registry_status_changes_total";
/// Known workers, by `status`.
pub const WORKERS: &str = "drover_registry_workers";
