//! The Prometheus recorder and the names of the kit's own metrics.
//!
//! Every metric is described when the recorder is installed, so that `/metrics` carries its
//! `# HELP` and `# TYPE`; counters that count rare events are registered at zero, so that
//! they show from the start and `increase()` sees their first event. Each histogram gets
//! buckets of its own: without them the exporter renders a summary, whose quantiles cannot
//! be aggregated across replicas. docs/observability.md lists every metric.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
/// Counter of messages removed from a stream because their subject's last token is not a
/// workerID, labelled `stream`.
pub const HOSTILE_PURGED_TOTAL: &str = "drover_hostile_messages_purged_total";

/// Gauge of the bytes a stream or key-value bucket stores, labelled `stream` (a bucket is
/// `KV_<bucket>`).
pub const STORED_BYTES: &str = "drover_jetstream_stored_bytes";
/// Gauge of the messages a stream or key-value bucket stores, labelled `stream`.
pub const STORED_MESSAGES: &str = "drover_jetstream_stored_messages";

/// A histogram's full name and the upper bounds of its buckets, in increasing order.
pub type Histogram = (&'static str, &'static [f64]);

/// A service's own metrics, set up with the recorder.
#[derive(Debug, Clone, Copy)]
pub struct ServiceMetrics {
    /// Describes each metric (`# HELP`, `# TYPE`) and registers those that must show
    /// before their first event.
    pub describe: fn(),
    /// The buckets of each of the service's histograms.
    pub histograms: &'static [Histogram],
}

impl ServiceMetrics {
    /// No metrics of its own: only the kit's.
    pub const NONE: ServiceMetrics = ServiceMetrics {
        describe: || {},
        histograms: &[],
    };
}

/// Installs the global Prometheus recorder once, with only the kit's metrics, and returns
/// its handle. See [`install_for`].
pub fn install() -> PrometheusHandle {
    install_for(&ServiceMetrics::NONE)
}

/// Installs the global Prometheus recorder once, with the buckets of `service`'s
/// histograms, describes the kit's and `service`'s metrics, and returns the handle.
///
/// Later calls return the same handle (a later call's buckets are not applied, its
/// descriptions are). If another recorder was installed first, the handle renders only
/// this recorder's (empty) registry and a warning is logged.
pub fn install_for(service: &ServiceMetrics) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    let handle = HANDLE
        .get_or_init(|| {
            let recorder = builder(service.histograms).build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone();
    (service.describe)();
    handle
}

/// A builder that renders each of `histograms` as a Prometheus histogram.
fn builder(histograms: &[Histogram]) -> PrometheusBuilder {
    histograms
        .iter()
        .fold(PrometheusBuilder::new(), |builder, (name, buckets)| {
            let matcher = Matcher::Full((*name).to_owned());
            match builder.set_buckets_for_metric(matcher, buckets) {
                Ok(builder) => builder,
                // Only an empty bucket list is refused, and no caller gives one.
                Err(error) => panic!("histogram {name}: {error}"),
            }
        })
}

fn describe() {
    use metrics::{counter, describe_counter, describe_gauge, Unit};
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
    describe_counter!(
        HOSTILE_PURGED_TOTAL,
        "messages purged whose subject ends in no workerID, by stream"
    );
    describe_gauge!(
        STORED_BYTES,
        Unit::Bytes,
        "bytes stored in a stream or key-value bucket (KV_<bucket>), by stream"
    );
    describe_gauge!(
        STORED_MESSAGES,
        "messages stored in a stream or key-value bucket (KV_<bucket>), by stream"
    );
    for event in ["connected", "disconnected"] {
        counter!(NATS_EVENTS_TOTAL, "event" => event).increment(0);
    }
    counter!(REPLIES_TOTAL, "outcome" => "ok").increment(0);
    for rare in [
        NATS_CONNECT_FAILURES_TOTAL,
        RESOURCES_FAILURES_TOTAL,
        REPLY_PUBLISH_FAILURES_TOTAL,
        DRAIN_TIMEOUTS_TOTAL,
    ] {
        counter!(rare).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_with_buckets_render_as_histograms() {
        const HISTOGRAMS: &[Histogram] = &[("kit_test_seconds", &[0.1, 1.0])];
        let recorder = builder(HISTOGRAMS).build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("kit_test_seconds").record(0.5);
            metrics::histogram!("kit_test_other").record(0.5);
        });
        let text = handle.render();
        assert!(text.contains("# TYPE kit_test_seconds histogram"), "{text}");
        assert!(
            text.contains("kit_test_seconds_bucket{le=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE kit_test_other summary"),
            "a histogram without buckets is a summary: {text}"
        );
    }
}
