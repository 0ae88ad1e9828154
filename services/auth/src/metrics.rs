//! Metric names of the auth service. docs/observability.md lists them for operators.

use drover_service_kit::metrics::ServiceMetrics;

/// Connection attempts decided, by `outcome` (`admitted`, `refused`, `error`).
pub const DECISIONS: &str = "drover_auth_decisions_total";

/// The auth service's metrics, for `run_service`.
pub const METRICS: ServiceMetrics = ServiceMetrics {
    describe,
    histograms: &[],
};

fn describe() {
    use ::metrics::{counter, describe_counter};
    describe_counter!(DECISIONS, "connection attempts decided, by outcome");
    for outcome in ["admitted", "refused", "error"] {
        counter!(DECISIONS, "outcome" => outcome).absolute(0);
    }
}
