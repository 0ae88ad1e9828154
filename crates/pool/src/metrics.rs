//! The pool's Prometheus metrics.

use drover_service_kit::ServiceMetrics;

/// Processes of a group by state (`group`, `state`).
pub const PROCESSES: &str = "drover_pool_processes";
/// The size each group is kept at (`group`).
pub const TARGET: &str = "drover_pool_target";
/// Processes that ended, by class (`group`, `class`).
pub const EXITS_TOTAL: &str = "drover_pool_exits_total";
/// Restarts after an unexpected end (`group`).
pub const RESTARTS_TOTAL: &str = "drover_pool_restarts_total";
/// Requests on the pool's subjects, by endpoint and outcome (`endpoint`, `outcome`).
pub const REQUESTS_TOTAL: &str = "drover_pool_requests_total";

/// The pool's metrics, described for `/metrics`.
pub const POOL_METRICS: ServiceMetrics = ServiceMetrics {
    describe,
    histograms: &[],
};

fn describe() {
    metrics::describe_gauge!(PROCESSES, "Processes of a pool group by state.");
    metrics::describe_gauge!(TARGET, "The size a pool group is kept at.");
    metrics::describe_counter!(EXITS_TOTAL, "Pool processes that ended, by exit class.");
    metrics::describe_counter!(
        RESTARTS_TOTAL,
        "Pool processes restarted after an unexpected end."
    );
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Requests on v1.pool.<poolID>.*, by endpoint and outcome."
    );
}
