//! Metric names of the heartbeat-monitor.

/// Pulses received.
pub const PULSES: &str = "drover_monitor_pulses_total";
/// Pulses refused, by `code`.
pub const PULSES_REJECTED: &str = "drover_monitor_pulses_rejected_total";
/// Probes (`check_pulse`) sent.
pub const PROBES: &str = "drover_monitor_probes_total";
/// Liveness reports sent, by `liveness`.
pub const REPORTS: &str = "drover_monitor_reports_total";
/// Live workers being watched.
pub const TRACKED: &str = "drover_monitor_tracked_workers";
