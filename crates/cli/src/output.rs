//! Printing records: readable tables for people, JSON with `--json` for programs.
//! Data goes to stdout; everything else goes to stderr.

use std::io::Write;

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use drover_protocol::{LogRecord, RunRecord, Timestamp, WorkerRecord};
use serde::Serialize;

use crate::error::CliError;

/// Prints a value as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(CliError::Print)?;
    println!("{text}");
    Ok(())
}

/// Prints a value as one JSON line on stdout (for streams of records).
pub fn json_line<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string(value).map_err(CliError::Print)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

/// A table with Drover's look.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    table
}

/// "12s ago", "3m ago", ...: how long ago `at` was.
pub fn ago(at: Timestamp) -> String {
    let seconds = Timestamp::now().since(at).as_secs();
    match seconds {
        0..=59 => format!("{seconds}s ago"),
        60..=3599 => format!("{}m ago", seconds / 60),
        3600..=86_399 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// A run's duration so far, or in total once it ended.
pub fn took(record: &RunRecord) -> String {
    let end = record.ended_at.unwrap_or_else(Timestamp::now);
    let millis = end.since(record.created_at).as_millis();
    if millis < 10_000 {
        format!("{:.2}s", millis as f64 / 1000.0)
    } else {
        format!("{}s", millis / 1000)
    }
}

/// The runID as the runs table shows it: whole, because runIDs are UUIDv7, whose leading
/// characters are a timestamp that runs created together share, and because `drover runs
/// get` and `drover logs --run` take only whole runIDs.
pub fn short(run: &str) -> String {
    run.to_owned()
}

/// The run-list table.
pub fn runs_table(runs: &[RunRecord]) -> Table {
    let mut table = table(&[
        "RUN", "ROUTINE", "STATUS", "ATTEMPT", "WORKER", "CREATED", "TOOK", "REASON",
    ]);
    for run in runs {
        table.add_row(vec![
            short(run.run_id.as_str()),
            run.routine_id.to_string(),
            run.status.to_string(),
            run.attempt.to_string(),
            run.worker_id
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            ago(run.created_at),
            took(run),
            run.failure_reason
                .map_or_else(|| "-".to_owned(), |reason| reason.to_string()),
        ]);
    }
    table
}

/// One run in detail.
pub fn run_details(run: &RunRecord) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<14} {value}\n"));
    line("run", run.run_id.to_string());
    line("routine", run.routine_id.to_string());
    line("status", run.status.to_string());
    if let Some(reason) = run.failure_reason {
        line("reason", reason.to_string());
    }
    line(
        "attempt",
        format!(
            "{} (retries {}, reassignments {})",
            run.attempt, run.retries, run.reassignments
        ),
    );
    if let Some(worker) = &run.worker_id {
        line("worker", worker.to_string());
    }
    if let Some(parent) = &run.parent_run_id {
        line("parent", parent.to_string());
    }
    if let Some(trace) = &run.trace_id {
        line("trace", trace.clone());
    }
    line(
        "created",
        format!("{} ({})", run.created_at, ago(run.created_at)),
    );
    if let Some(ended) = run.ended_at {
        line("ended", format!("{ended} (took {})", took(run)));
    }
    line("params", compact(&run.params));
    if let Some(result) = &run.result {
        line("result", compact(result));
    }
    if let Some(error) = &run.error {
        let kind = error.kind.as_deref().unwrap_or("error");
        line("error", format!("{kind}: {}", error.message));
    }
    if !run.open_children.is_empty() {
        line("children", format!("{} open", run.open_children.len()));
    }
    out.push_str("transitions\n");
    for transition in &run.transitions {
        let worker = transition
            .worker_id
            .as_ref()
            .map_or_else(String::new, |worker| format!(" on {worker}"));
        let reason = transition
            .reason
            .as_ref()
            .map_or_else(String::new, |reason| format!(" ({reason})"));
        out.push_str(&format!(
            "  {}  {:<10} attempt {}{worker}{reason}\n",
            transition.at,
            transition.status.to_string(),
            transition.attempt
        ));
    }
    out
}

/// The worker-list table.
pub fn workers_table(workers: &[WorkerRecord]) -> Table {
    let mut table = table(&[
        "WORKER",
        "STATUS",
        "ROUTINES",
        "LABELS",
        "RUNS",
        "INCARNATION",
        "SINCE",
    ]);
    for worker in workers {
        let routines: Vec<String> = worker.routines.iter().map(ToString::to_string).collect();
        let labels: Vec<String> = worker
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        table.add_row(vec![
            worker.worker_id.to_string(),
            worker.status.to_string(),
            routines.join(", "),
            labels.join(", "),
            format!("{}/{}", worker.runs.len(), worker.capacity),
            worker.incarnation.to_string(),
            ago(worker.status_changed_at),
        ]);
    }
    table
}

/// One worker in detail.
pub fn worker_details(worker: &WorkerRecord) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<14} {value}\n"));
    line("worker", worker.worker_id.to_string());
    line(
        "status",
        format!(
            "{} (since {})",
            worker.status,
            ago(worker.status_changed_at)
        ),
    );
    if let Some(reported) = worker.reported_status {
        line("reported", reported.to_string());
    }
    line("incarnation", worker.incarnation.to_string());
    let routines: Vec<String> = worker.routines.iter().map(ToString::to_string).collect();
    line("routines", routines.join(", "));
    let labels: Vec<String> = worker
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    line("labels", labels.join(", "));
    line(
        "capacity",
        format!("{} ({} held)", worker.capacity, worker.runs.len()),
    );
    for held in &worker.runs {
        let waiting = if held.waiting {
            ", waiting on children"
        } else {
            ""
        };
        line(
            "  run",
            format!("{} attempt {}{waiting}", held.run_id, held.attempt),
        );
    }
    if let Some(name) = &worker.name {
        line("name", name.clone());
    }
    if let Some(sdk) = &worker.sdk {
        line("sdk", format!("{} {}", sdk.language, sdk.version));
    }
    if let (Some(host), Some(pid)) = (&worker.host, worker.pid) {
        line("process", format!("{pid} on {host}"));
    }
    line(
        "heartbeat",
        format!(
            "every {} ms, lost after {} ms",
            worker.heartbeat_interval_ms, worker.lost_after_ms
        ),
    );
    line(
        "registered",
        format!("{} ({})", worker.registered_at, ago(worker.registered_at)),
    );
    out
}

/// One log line, for people.
pub fn log_line(record: &LogRecord) -> String {
    let run = record
        .run_id
        .as_ref()
        .map_or_else(String::new, |run| format!(" run={run}"));
    let mut text = format!(
        "{} {:<5} [{}{run}] {}",
        record.timestamp,
        record.level.as_str().to_uppercase(),
        record.worker_id,
        record.message
    );
    for (key, value) in &record.fields {
        text.push_str(&format!(" {key}={}", compact(value)));
    }
    text
}

/// JSON on one line, strings without quotes.
pub fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
