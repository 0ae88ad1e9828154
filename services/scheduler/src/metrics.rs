//! Metric names of the scheduler.

/// Requests handled, by `endpoint` and `outcome` (`ok` or an error code).
pub const REQUESTS: &str = "drover_scheduler_requests_total";
/// Run records written over someone else's change (compare-and-set conflicts).
pub const WRITE_CONFLICTS: &str = "drover_scheduler_write_conflicts_total";
/// Run state changes, by the new `status`.
pub const RUN_TRANSITIONS: &str = "drover_scheduler_run_transitions_total";
/// Runs that reached a terminal state, by `status`.
pub const RUNS_ENDED: &str = "drover_scheduler_runs_ended_total";
/// Assignments sent to workers.
pub const ASSIGNMENTS: &str = "drover_scheduler_assignments_total";
/// Runs taken back from a lost, gone or silent worker.
pub const REASSIGNMENTS: &str = "drover_scheduler_reassignments_total";
/// Queue messages fetched.
pub const FETCHED: &str = "drover_scheduler_fetched_total";
/// Directives read, by `kind`.
pub const DIRECTIVES: &str = "drover_scheduler_directives_total";
/// Directives refused, by `code`.
pub const DIRECTIVES_REJECTED: &str = "drover_scheduler_directives_rejected_total";
/// Run actors alive on the leader.
pub const ACTORS: &str = "drover_scheduler_run_actors";
/// 1 while this replica is the leader.
pub const LEADER: &str = "drover_scheduler_leader";
/// `starting` directives stored in one write with the completion right behind them.
pub const DIRECTIVES_COALESCED: &str = "drover_scheduler_directives_coalesced_total";
