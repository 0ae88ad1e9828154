//! Metric names of the log-collector and their descriptions. docs/observability.md lists
//! them for operators.

use drover_service_kit::metrics::{Histogram, ServiceMetrics};

/// Log lines stored in `DROVER_LOGS`.
pub const LINES_STORED: &str = "drover_log_collector_lines_stored_total";
/// Log lines stored again after a redelivery and dropped by the stream's dedup window.
pub const LINES_DUPLICATE: &str = "drover_log_collector_lines_duplicate_total";
/// Log lines refused, by `code`.
pub const LINES_REJECTED: &str = "drover_log_collector_lines_rejected_total";
/// Intake messages handled together in one batch (one pipelined round of publishes).
pub const BATCH_SIZE: &str = "drover_log_collector_intake_batch_size";
/// Publishes of a record that had to be retried.
pub const PUBLISH_RETRIES: &str = "drover_log_collector_publish_retries_total";
/// Resets of the intake consumer to its ack floor, by `reason` (`takeover`, `gap`, `publish`,
/// `lookup`).
pub const CONSUMER_RESETS: &str = "drover_log_collector_consumer_resets_total";
/// Run record lookups for enrichment, by `outcome` (`cached`, `found`, `missing`, `error`).
pub const RUN_LOOKUPS: &str = "drover_log_collector_run_lookups_total";
/// 1 while this replica leads the intake.
pub const INTAKE_LEADER: &str = "drover_log_collector_intake_leader";
/// `v1.logs.query` requests, by `endpoint` (`query`) and `outcome` (`ok` or an error code).
pub const QUERIES: &str = "drover_log_collector_queries_total";
/// Records returned by one `v1.logs.query`.
pub const QUERY_RECORDS: &str = "drover_log_collector_query_records";
/// Seconds spent answering one `v1.logs.query`.
pub const QUERY_SECONDS: &str = "drover_log_collector_query_seconds";
/// Stored records that could not be read back, skipped by queries.
pub const UNREADABLE_RECORDS: &str = "drover_log_collector_unreadable_records_total";

/// Intake messages per batch: up to one pull.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Records per query page: up to the largest page.
const RECORDS_BUCKETS: &[f64] = &[0.0, 1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
/// Seconds per query: a direct read of the stream, to a long scan.
const QUERY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const HISTOGRAMS: &[Histogram] = &[
    (BATCH_SIZE, BATCH_BUCKETS),
    (QUERY_RECORDS, RECORDS_BUCKETS),
    (QUERY_SECONDS, QUERY_BUCKETS),
];

/// The log-collector's metrics, for `run_service`.
pub const METRICS: ServiceMetrics = ServiceMetrics {
    describe,
    histograms: HISTOGRAMS,
};

/// Registers the descriptions shown on `/metrics`, and the counters of rare events at 0.
fn describe() {
    use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(LINES_STORED, "log lines stored");
    describe_counter!(
        LINES_DUPLICATE,
        "redelivered log lines dropped as duplicates"
    );
    describe_counter!(LINES_REJECTED, "log lines refused, by code");
    describe_histogram!(BATCH_SIZE, "intake messages per pipelined batch");
    describe_counter!(PUBLISH_RETRIES, "record publishes retried");
    describe_counter!(CONSUMER_RESETS, "intake consumer resets, by reason");
    describe_counter!(RUN_LOOKUPS, "run record lookups, by outcome");
    describe_gauge!(INTAKE_LEADER, "1 while this replica leads the intake");
    describe_counter!(QUERIES, "log queries, by outcome");
    describe_histogram!(QUERY_RECORDS, "records returned per log query");
    describe_histogram!(QUERY_SECONDS, Unit::Seconds, "seconds per log query");
    describe_counter!(UNREADABLE_RECORDS, "stored records skipped as unreadable");
    for rare in [
        LINES_STORED,
        LINES_DUPLICATE,
        PUBLISH_RETRIES,
        UNREADABLE_RECORDS,
    ] {
        counter!(rare).increment(0);
    }
    for reason in ["takeover", "gap", "publish", "lookup"] {
        counter!(CONSUMER_RESETS, "reason" => reason).increment(0);
    }
    for outcome in ["cached", "found", "missing", "error"] {
        counter!(RUN_LOOKUPS, "outcome" => outcome).increment(0);
    }
}
