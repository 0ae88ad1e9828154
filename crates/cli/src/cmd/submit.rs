//! `drover submit`: submit a run, optionally wait for it and follow its logs.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    Accepted, Conditions, LocalRunId, RetryBackoff, RoutineId, RunGet, RunId, RunRecord, RunSpec,
    RunStatus, WorkerId,
};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tracing::Instrument;

use crate::client::Drover;
use crate::cmd::logs::LogFollower;
use crate::error::CliError;
use crate::output;

/// Submit a run.
#[derive(Debug, Args)]
pub struct Submit {
    /// The routine to run, e.g. images.resize.
    pub routine: String,
    /// Parameters as JSON, e.g. '{"width": 640}'.
    #[arg(long, short = 'p', default_value = "null")]
    pub params: String,
    /// An environment entry for the routine (repeatable): KEY=VALUE.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Only workers with this label (repeatable): KEY=VALUE.
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Only this worker (repeatable).
    #[arg(long = "worker", short = 'w', value_name = "WORKER_ID")]
    pub workers: Vec<String>,
    /// Fail if not placed within this many milliseconds.
    #[arg(long)]
    pub max_wait_ms: Option<u64>,
    /// Bound on each attempt, in milliseconds.
    #[arg(long)]
    pub max_exec_ms: Option<u64>,
    /// Retries after failed attempts.
    #[arg(long, default_value_t = 0)]
    pub max_retries: u32,
    /// Delay before the first retry, in milliseconds.
    #[arg(long)]
    pub backoff_initial_ms: Option<u64>,
    /// Growth of the delay between retries.
    #[arg(long)]
    pub backoff_multiplier: Option<f64>,
    /// Longest delay between retries, in milliseconds.
    #[arg(long)]
    pub backoff_max_ms: Option<u64>,
    /// Requests with the same key get the same run.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Your own ID for the request, echoed back.
    #[arg(long)]
    pub local_run_id: Option<String>,
    /// Wait until the run ends; exit 0 if it SUCCEEDED, 1 otherwise.
    #[arg(long)]
    pub wait: bool,
    /// Wait, and print the run's logs as they come.
    #[arg(long)]
    pub follow: bool,
    /// Print records as JSON.
    #[arg(long)]
    pub json: bool,
}

fn pairs(flag: &str, entries: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    entries
        .iter()
        .map(|entry| {
            entry
                .split_once('=')
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .ok_or_else(|| {
                    CliError::Usage(format!("invalid --{flag} {entry:?}: expected KEY=VALUE"))
                })
        })
        .collect()
}

impl Submit {
    /// Builds the run spec from the flags, checking what can be checked locally.
    pub fn spec(&self) -> Result<RunSpec, CliError> {
        let routine = RoutineId::parse(self.routine.as_str()).map_err(CliError::invalid_id(
            format!("routine name {:?}", self.routine),
        ))?;
        let params = serde_json::from_str(&self.params).map_err(CliError::InvalidParams)?;
        let worker_ids = self
            .workers
            .iter()
            .map(|worker| {
                WorkerId::parse(worker.as_str())
                    .map_err(CliError::invalid_id(format!("--worker {worker:?}")))
            })
            .collect::<Result<_, _>>()?;
        let backoff = match (
            self.backoff_initial_ms,
            self.backoff_multiplier,
            self.backoff_max_ms,
        ) {
            (None, None, None) => None,
            (initial, multiplier, max) => {
                let default = RetryBackoff::default();
                Some(RetryBackoff {
                    initial_ms: initial.unwrap_or(default.initial_ms),
                    multiplier: multiplier.unwrap_or(default.multiplier),
                    max_ms: max.unwrap_or(default.max_ms),
                })
            }
        };
        let local_run_id = self
            .local_run_id
            .as_deref()
            .map(|local| LocalRunId::parse(local).map_err(CliError::invalid_id("--local-run-id")))
            .transpose()?;
        Ok(RunSpec {
            routine_id: routine,
            params,
            env: pairs("env", &self.env)?,
            conditions: Conditions {
                worker_ids,
                labels: pairs("label", &self.labels)?,
            },
            max_wait_time_ms: self.max_wait_ms,
            max_exec_time_ms: self.max_exec_ms,
            max_retries: self.max_retries,
            retry_backoff: backoff,
            idempotency_key: self.idempotency_key.clone(),
            local_run_id,
            parent_run_id: None,
        })
    }

    /// Runs the command.
    pub async fn run(self, drover: &Drover) -> Result<(), CliError> {
        let spec = self.spec()?;
        let span = tracing::info_span!("drover.submit", routine = %spec.routine_id);
        let accepted: Accepted = drover
            .call(keys::REQUEST_START, &spec)
            .instrument(span)
            .await?;
        if !(self.wait || self.follow) {
            if self.json {
                return output::json(&accepted);
            }
            println!("{}", accepted.run_id);
            return Ok(());
        }
        eprintln!("submitted run {}", accepted.run_id);
        // Outside the submit span: the polls and log queries carry no trace context, so the
        // submission stays one trace.
        let record = wait_for_end(drover, &accepted.run_id, self.follow, self.json).await?;
        if self.json {
            output::json(&record)?;
        } else {
            print!("{}", output::run_details(&record));
        }
        match record.status {
            RunStatus::Succeeded => Ok(()),
            status => Err(CliError::RunFailed(format!(
                "run {} ended {status}{}",
                record.run_id,
                record
                    .failure_reason
                    .map_or_else(String::new, |reason| format!(" ({reason})"))
            ))),
        }
    }
}

/// Reads a run.
pub async fn get_run(drover: &Drover, run: &RunId) -> Result<RunRecord, CliError> {
    drover
        .call(
            keys::RUN_GET,
            &RunGet {
                run_id: run.clone(),
            },
        )
        .await
}

/// Waits until the run ends, showing its progress on stderr, and its logs when `follow`.
///
/// Call it outside any span: its requests are queries, which carry no trace context.
pub async fn wait_for_end(
    drover: &Drover,
    run: &RunId,
    follow: bool,
    json_logs: bool,
) -> Result<RunRecord, CliError> {
    // Subscribe first, then read: no change can slip between the two.
    let mut events = drover
        .nats()
        .subscribe(subject::run_events(run))
        .await
        .map_err(|source| CliError::Follow {
            run: run.clone(),
            source,
        })?;
    let progress = ProgressBar::new_spinner();
    progress.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    progress.enable_steady_tick(Duration::from_millis(120));
    let mut logs = follow.then(|| LogFollower::for_run(run.clone()));
    let mut record = get_run(drover, run).await?;
    loop {
        progress.set_message(describe(&record));
        if let Some(follower) = &mut logs {
            for line in follower.poll(drover).await? {
                progress.suspend(|| {
                    if json_logs {
                        let _ = output::json_line(&line);
                    } else {
                        println!("{}", output::log_line(&line));
                    }
                });
            }
        }
        if record.status.is_terminal() {
            break;
        }
        // Wake on an event, or re-read now and then in case one was missed.
        let period = if logs.is_some() { 250 } else { 1000 };
        let _ = tokio::time::timeout(Duration::from_millis(period), events.next()).await;
        record = get_run(drover, run).await?;
    }
    if let Some(follower) = &mut logs {
        // Lines can reach the collector just after the run ends.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for line in follower.poll(drover).await? {
            progress.suspend(|| {
                if json_logs {
                    let _ = output::json_line(&line);
                } else {
                    println!("{}", output::log_line(&line));
                }
            });
        }
    }
    progress.finish_and_clear();
    Ok(record)
}

fn describe(record: &RunRecord) -> String {
    let worker = record
        .worker_id
        .as_ref()
        .map_or_else(String::new, |worker| format!(" on {worker}"));
    format!(
        "{} {}{worker} (attempt {})",
        record.run_id, record.status, record.attempt
    )
}
