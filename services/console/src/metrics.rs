//! Metric names of the console and their descriptions. docs/observability.md lists them.

use ::metrics::{counter, histogram};
use drover_service_kit::metrics::{Histogram, ServiceMetrics};

/// HTTP requests answered, by `route` (the matched pattern) and `status`.
pub const REQUESTS: &str = "drover_console_requests_total";
/// Seconds from a request to its response (for a live page: to the start of its stream).
pub const REQUEST_SECONDS: &str = "drover_console_request_seconds";
/// Errors answered, by `code`.
pub const ERRORS: &str = "drover_console_errors_total";
/// Actions taken (cancel, submit, resubmit, scale, restart), by `action`.
pub const ACTIONS: &str = "drover_console_actions_total";

const SECONDS_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
const HISTOGRAMS: &[Histogram] = &[(REQUEST_SECONDS, SECONDS_BUCKETS)];

/// The console's metrics, for `run_service`.
pub const METRICS: ServiceMetrics = ServiceMetrics {
    describe,
    histograms: HISTOGRAMS,
};

fn describe() {
    use ::metrics::{describe_counter, describe_histogram};
    describe_counter!(REQUESTS, "HTTP requests answered, by route and status");
    describe_histogram!(REQUEST_SECONDS, "seconds from a request to its response");
    describe_counter!(ERRORS, "errors answered, by code");
    describe_counter!(ACTIONS, "actions taken, by action");
    counter!(ACTIONS).increment(0);
}

/// An error with `code` was answered.
pub fn count_error(code: &'static str) {
    counter!(ERRORS, "code" => code).increment(1);
}

/// A request to `route` was answered with `status` after `seconds`.
pub fn count_request(route: String, status: u16, seconds: f64) {
    histogram!(REQUEST_SECONDS, "route" => route.clone()).record(seconds);
    counter!(REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
}

/// An action was taken.
pub fn count_action(action: &'static str) {
    counter!(ACTIONS, "action" => action).increment(1);
}
