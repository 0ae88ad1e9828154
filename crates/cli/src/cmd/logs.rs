//! `drover logs`: a run's or a worker's logs, once or following.

use std::time::Duration;

use clap::Args;
use drover_protocol::subject::keys;
use drover_protocol::{LogPage, LogRecord, LogsQuery, RunId, Timestamp, WorkerId};

use crate::client::Drover;
use crate::error::CliError;
use crate::output;

/// Print stored logs of a run or a worker.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["run", "worker"])))]
pub struct Logs {
    /// The run whose logs to print.
    #[arg(long)]
    pub run: Option<String>,
    /// The worker whose logs to print.
    #[arg(long)]
    pub worker: Option<String>,
    /// Only lines from this time on: RFC 3339 (2026-11-22T13:00:00Z) or an age (30s, 10m, 2h).
    #[arg(long)]
    pub since: Option<String>,
    /// Keep printing new lines until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print each record as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Reads a log query page after page, remembering where it stopped.
#[derive(Debug, Clone)]
pub struct LogFollower {
    query: LogsQuery,
}

impl LogFollower {
    /// Follows one run's logs from the beginning.
    pub fn for_run(run: RunId) -> Self {
        Self {
            query: LogsQuery {
                run_id: Some(run),
                ..Default::default()
            },
        }
    }

    /// Everything stored since the last poll (all pages).
    pub async fn poll(&mut self, drover: &Drover) -> Result<Vec<LogRecord>, CliError> {
        let mut lines = Vec::new();
        loop {
            let page: LogPage = drover.call(keys::LOGS_QUERY, &self.query).await?;
            let full =
                page.logs.len() as u32 >= self.query.limit.unwrap_or(LogsQuery::DEFAULT_LIMIT);
            lines.extend(page.logs);
            if let Some(cursor) = page.next_cursor {
                self.query.cursor = Some(cursor);
            }
            if !full {
                return Ok(lines);
            }
        }
    }
}

/// Parses `--since`: an RFC 3339 time, or an age such as `30s`, `10m`, `2h`, `1d`, `1h30m`.
pub fn parse_since(text: &str) -> Result<Timestamp, CliError> {
    if let Ok(at) = Timestamp::parse(text) {
        return Ok(at);
    }
    let invalid = |source| CliError::InvalidSince {
        text: text.to_owned(),
        source,
    };
    // One word, as the help shows ages: humantime alone would also take `10 minutes`.
    if text.contains(char::is_whitespace) {
        return Err(invalid(None));
    }
    let age = humantime::parse_duration(text).map_err(|error| invalid(Some(error)))?;
    i64::try_from(age.as_millis())
        .ok()
        .and_then(|age| Timestamp::now().as_millis().checked_sub(age))
        .map(Timestamp::from_millis)
        .ok_or_else(|| invalid(None))
}

impl Logs {
    /// Runs the command.
    pub async fn run(self, drover: &Drover) -> Result<(), CliError> {
        let run_id = self
            .run
            .as_deref()
            .map(|run| RunId::parse(run).map_err(CliError::invalid_id(format!("run ID {run:?}"))))
            .transpose()?;
        let worker_id = self
            .worker
            .as_deref()
            .map(|worker| {
                WorkerId::parse(worker)
                    .map_err(CliError::invalid_id(format!("worker ID {worker:?}")))
            })
            .transpose()?;
        let since = self.since.as_deref().map(parse_since).transpose()?;
        if let Some(run) = &run_id {
            // An unknown run is an error, not an empty log.
            crate::cmd::submit::get_run(drover, run).await?;
        }
        let mut follower = LogFollower {
            query: LogsQuery {
                run_id,
                worker_id,
                since,
                limit: Some(LogsQuery::MAX_LIMIT),
                cursor: None,
            },
        };
        loop {
            for line in follower.poll(drover).await? {
                if self.json {
                    output::json_line(&line)?;
                } else {
                    println!("{}", output::log_line(&line));
                }
            }
            if !self.follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_ages() {
        assert!(parse_since("2026-11-22T13:00:00Z").is_ok());
        let ten_minutes = parse_since("10m").unwrap();
        let age = Timestamp::now().since(ten_minutes).as_secs();
        assert!((599..=601).contains(&age));
        assert!(parse_since("10 minutes").is_err());
        assert!(parse_since("m").is_err());
    }

    #[test]
    fn ages_take_every_unit_and_combinations() {
        for (text, seconds) in [
            ("30s", 30),
            ("2h", 7200),
            ("1d", 86_400),
            ("1h30m", 5400),
            ("0s", 0),
        ] {
            let seconds: u64 = seconds;
            let age = Timestamp::now().since(parse_since(text).unwrap()).as_secs();
            assert!(
                (seconds.saturating_sub(1)..=seconds + 1).contains(&age),
                "{text}: {age}"
            );
        }
    }

    #[test]
    fn a_bad_age_says_what_is_expected() {
        for text in [
            "",
            "10",
            "-5m",
            "10x",
            "ten minutes",
            "99999999999999999999d",
        ] {
            let error = parse_since(text).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "invalid --since {text:?}: expected a time like 2026-11-22T13:00:00Z or an \
                     age like 10m"
                )
            );
            assert_eq!(error.exit_code(), crate::error::exit::USAGE);
        }
    }
}
