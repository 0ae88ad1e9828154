//! Metric names of the log-collector.

/// Log lines stored in `DROVER_LOGS`.
pub const LINES_STORED: &str = "drover_logs_lines_stored_total";
/// Log lines stored again after a redelivery and dropped by the stream's dedup window.
pub const LINES_DUPLICATE: &str = "drover_logs_lines_duplicate_total";
/// Log lines refused, by `code`.
pub const LINES_REJECTED: &str = "drover_logs_lines_rejected_total";
/// Intake messages handled together in one batch (one pipelined round of publishes).
pub const BATCH_SIZE: &str = "drover_logs_intake_batch_size";
/// Publishes of a record that had to be retried.
pub const PUBLISH_RETRIES: &str = "drover_logs_publish_retries_total";
/// Resets of the intake consumer to its ack floor, by `reason` (`takeover`, `gap`, `publish`).
pub const CONSUMER_RESETS: &str = "drover_logs_consumer_resets_total";
/// Run record lookups for enrichment, by `outcome` (`cached`, `found`, `missing`, `error`).
pub const RUN_LOOKUPS: &str = "drover_logs_run_lookups_total";
/// 1 while this replica leads the intake.
pub const INTAKE_LEADER: &str = "drover_logs_intake_leader";
/// `v1.logs.query` requests, by `endpoint` (`query`) and `outcome` (`ok` or an error code).
pub const QUERIES: &str = "drover_logs_queries_total";
/// Records returned by one `v1.logs.query`.
pub const QUERY_RECORDS: &str = "drover_logs_query_records";
/// Seconds spent answering one `v1.logs.query`.
pub const QUERY_SECONDS: &str = "drover_logs_query_seconds";
/// Stored records that could not be read back, skipped by queries.
pub const UNREADABLE_RECORDS: &str = "drover_logs_unreadable_records_total";

/// Registers the descriptions shown on `/metrics`.
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
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
    describe_histogram!(QUERY_SECONDS, "seconds per log query");
    describe_counter!(UNREADABLE_RECORDS, "stored records skipped as unreadable");
}
