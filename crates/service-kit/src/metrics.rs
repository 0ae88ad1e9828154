//! The Prometheus recorder and the names of the kit's own metrics.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Counter of NATS connection events, labelled `event`.
pub const NATS_EVENTS_TOTAL: &str = "drover_nats_events_total";
/// Counter of failed attempts to make the first NATS connection.
pub const NATS_CONNECT_FAILURES_TOTAL: &str = "drover_nats_connect_failures_total";
/// Gauge: 1 while connected to NATS.
pub const NATS_CONNECTED: &str = "drover_nats_connected";
/// Gauge: 1 once the JetStream resources are ensured.
pub const RESOURCES_READY: &str = "drover_jetstream_resources_ready";
/// Counter of failed attempts to ensure the JetStream resources.
pub const RESOURCES_FAILURES_TOTAL: &str = "drover_jetstream_resources_failures_total";
/// Counter of replies sent, labelled `outcome` (`ok` or the error code).
pub const REPLIES_TOTAL: &str = "drover_replies_total";
/// Counter of replies that could not be published.
pub const REPLY_PUBLISH_FAILURES_TOTAL: &str = "drover_reply_publish_failures_total";
/// Gauge set to 1, labelled `service`, `instance` and `version`.
pub const SERVICE_INFO: &str = "drover_service_info";
/// Counter of shutdowns whose tasks outlived the drain grace period.
pub const DRAIN_TIMEOUTS_TOTAL: &str = "drover_drain_timeouts_total";
/// Counter of leadership changes, labelled `lease` and `change` (`elected`,
/// `stepped_down` or `resigned`).
pub const LEADERSHIP_CHANGES_TOTAL: &str = "drover_leadership_changes_total";

/// Installs the global Prometheus recorder once and returns its handle.
///
/// Later calls return the same handle. If another recorder was installed first, the
/// handle renders only this recorder's (empty) registry and a warning is logged.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(NATS_EVENTS_TOTAL, "NATS connection events, by event");
    describe_counter!(
        NATS_CONNECT_FAILURES_TOTAL,
        "failed initial NATS connection attempts"
    );
    describe_gauge!(NATS_CONNECTED, "1 while connected to NATS");
    describe_gauge!(
        RESOURCES_READY,
        "1 once the JetStream resources are ensured"
    );
    describe_counter!(
        RESOURCES_FAILURES_TOTAL,
        "failed attempts to ensure JetStream resources"
    );
    describe_counter!(REPLIES_TOTAL, "replies sent, by outcome");
    describe_counter!(
        REPLY_PUBLISH_FAILURES_TOTAL,
        "replies that could not be published"
    );
    describe_gauge!(SERVICE_INFO, "service name, instance and version");
    describe_counter!(
        DRAIN_TIMEOUTS_TOTAL,
        "shutdowns whose tasks outlived the drain grace"
    );
    describe_counter!(
        LEADERSHIP_CHANGES_TOTAL,
        "leadership changes, by lease and change"
    );
}
