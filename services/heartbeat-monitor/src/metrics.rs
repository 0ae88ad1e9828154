//! Metric names of the heartbeat-monitor and their descriptions. docs/observability.md
//! lists them for operators.

use ::metrics::counter;
use drover_service_kit::metrics::ServiceMetrics;

/// Pulses received.
pub const PULSES: &str = "drover_heartbeat_monitor_pulses_total";
/// Pulses refused, by `code`.
pub const PULSES_REJECTED: &str = "drover_heartbeat_monitor_pulses_rejected_total";
/// Probes (`check_pulse`) sent.
pub const PROBES: &str = "drover_heartbeat_monitor_probes_total";
/// Liveness reports sent, by `liveness`.
pub const REPORTS: &str = "drover_heartbeat_monitor_reports_total";
/// Live workers being watched.
pub const TRACKED: &str = "drover_heartbeat_monitor_tracked_workers";

/// What a liveness report can say, as the `liveness` label spells it (`server.rs`).
const LIVENESS: [&str; 4] = ["alive", "unresponsive", "lost", "offline"];

/// The heartbeat-monitor's metrics, for `run_service`.
pub const METRICS: ServiceMetrics = ServiceMetrics {
    describe,
    histograms: &[],
};

/// Registers the descriptions shown on `/metrics`, and the counters of rare events at 0.
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, gauge};
    describe_counter!(PULSES, "pulses received");
    describe_counter!(PULSES_REJECTED, "pulses refused, by code");
    describe_counter!(PROBES, "probes sent to silent workers");
    describe_counter!(
        REPORTS,
        "liveness reports sent to the registry, by liveness"
    );
    describe_gauge!(TRACKED, "live workers being watched");
    counter!(PULSES).increment(0);
    counter!(PROBES).increment(0);
    for liveness in LIVENESS {
        counter!(REPORTS, "liveness" => liveness).increment(0);
    }
    gauge!(TRACKED).set(0.0);
}
