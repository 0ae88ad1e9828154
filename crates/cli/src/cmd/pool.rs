//! `drover pool ...`: run a pool of worker processes, and scale, restart and inspect one.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use drover_pool::{Overrides, PoolConfig, PoolEnd};
use drover_protocol::subject::pool as subjects;
use drover_protocol::{
    GroupName, PoolId, PoolRestart, PoolRestarting, PoolScale, PoolScaled, PoolState, PoolStatus,
    ProcessState, RestartMode,
};
use tokio_util::sync::CancellationToken;

use crate::client::Drover;
use crate::error::CliError;
use crate::output;

/// Supervise worker processes: run a pool, scale it, restart it, show it.
#[derive(Debug, Subcommand)]
pub enum Pool {
    /// Run the pool described by a configuration file until it ends or is stopped.
    Run(PoolRun),
    /// Set a group's size, or change it by a delta.
    Scale(PoolScaleArgs),
    /// Restart the processes of a pool: hard (all stop, then all start) or soft (rolling).
    Restart(PoolRestartArgs),
    /// Show a pool's groups and processes.
    Status(PoolStatusArgs),
}

/// `drover pool run`.
#[derive(Debug, Args)]
#[command(after_help = "\
Signals: SIGTERM or SIGINT stop every process gracefully (a second one kills them); SIGHUP is a
soft restart of every group; SIGTTIN and SIGTTOU add or remove one process of the signal group.
Exit codes: 0 after a requested shutdown or when every process ended with a final code; 1 after
a critical shutdown or when processes ended for good otherwise; 64 for a bad configuration.
See docs/pool.md for the configuration file.")]
pub struct PoolRun {
    /// The pool's configuration file (TOML).
    pub config: PathBuf,
    /// The poolID, instead of the file's `pool`.
    #[arg(long)]
    pub pool_id: Option<String>,
    /// Serve /metrics, /healthz and /readyz here, instead of the file's `admin_addr`.
    #[arg(long)]
    pub admin_addr: Option<String>,
    /// A group's initial size, instead of the file's: GROUP=N (repeatable).
    #[arg(long = "size", value_name = "GROUP=N", value_parser = parse_size)]
    pub sizes: Vec<(String, u32)>,
}

/// `drover pool scale`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("how").required(true).args(["target", "delta"])))]
pub struct PoolScaleArgs {
    /// The pool.
    pub pool: String,
    /// The group.
    pub group: String,
    /// The number of processes wanted.
    #[arg(long)]
    pub target: Option<u32>,
    /// Processes to add (positive) or remove (negative), e.g. `--delta=-1`.
    #[arg(long, allow_hyphen_values = true)]
    pub delta: Option<i64>,
    /// Print the reply as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `drover pool restart`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["hard", "soft"])))]
pub struct PoolRestartArgs {
    /// The pool.
    pub pool: String,
    /// Stop every process gracefully, wait for all, then start all.
    #[arg(long)]
    pub hard: bool,
    /// Replace processes a few at a time, each finishing its runs first.
    #[arg(long)]
    pub soft: bool,
    /// Only this group (default: every group).
    #[arg(long)]
    pub group: Option<String>,
    /// Print the reply as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `drover pool status`.
#[derive(Debug, Args)]
pub struct PoolStatusArgs {
    /// The pool.
    pub pool: String,
    /// Print the state as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(text: &str) -> Result<(String, u32), String> {
    let (group, size) = text
        .split_once('=')
        .ok_or_else(|| format!("expected GROUP=N, got {text:?}"))?;
    let size = size
        .parse()
        .map_err(|_| format!("{size:?} is not a number of processes"))?;
    Ok((group.to_owned(), size))
}

impl PoolRun {
    /// Loads the configuration, or says why it cannot be used.
    pub fn config(&self) -> Result<PoolConfig, CliError> {
        let overrides = Overrides {
            pool: self.pool_id.clone(),
            admin_addr: self.admin_addr.clone(),
            sizes: self.sizes.clone(),
        };
        PoolConfig::load(&self.config, &overrides)
            .map_err(|error| CliError::Config(error.to_string()))
    }

    /// Runs the pool in the foreground until it ends.
    ///
    /// `url` is the command line's NATS URL; `url_given` says whether the user set it (flag
    /// or environment), in which case it wins over the file's `nats_url`. The pool connects
    /// with `auth` and hands it to its processes.
    pub async fn run(
        &self,
        url: String,
        url_given: bool,
        auth: drover_nats_connect::NatsAuth,
    ) -> Result<(), CliError> {
        let config = self.config()?;
        let url = match (&config.nats_url, url_given) {
            (Some(file), false) => file.clone(),
            _ => url,
        };
        if let Err(error) = auth.apply(&url, async_nats::ConnectOptions::new()) {
            return Err(CliError::Config(error.to_string()));
        }
        let end = drover_pool::run_with_auth(config, url, auth, CancellationToken::new())
            .await
            .map_err(|error| CliError::Other(format!("{error:#}")))?;
        match end {
            PoolEnd::Clean => Ok(()),
            PoolEnd::AllTerminated => Err(CliError::Other(
                "every process of the pool has ended for good, not all with a final code"
                    .to_owned(),
            )),
            PoolEnd::Critical(reason) => {
                Err(CliError::Other(format!("critical shutdown: {reason}")))
            }
        }
    }
}

fn pool_id(text: &str) -> Result<PoolId, CliError> {
    PoolId::parse(text).map_err(CliError::invalid_id(format!("pool ID {text:?}")))
}

fn group_name(text: &str) -> Result<GroupName, CliError> {
    GroupName::parse(text).map_err(CliError::invalid_id(format!("group {text:?}")))
}

impl Pool {
    /// Checks the command line before connecting: bad input is reported without NATS.
    pub fn check(&self) -> Result<(), CliError> {
        match self {
            Pool::Run(run) => run.config().map(|_| ()),
            Pool::Scale(scale) => pool_id(&scale.pool)
                .and(group_name(&scale.group))
                .map(|_| ()),
            Pool::Restart(restart) => {
                pool_id(&restart.pool)?;
                restart
                    .group
                    .as_deref()
                    .map(group_name)
                    .transpose()
                    .map(|_| ())
            }
            Pool::Status(status) => pool_id(&status.pool).map(|_| ()),
        }
    }

    /// Runs `scale`, `restart` or `status` against a running pool.
    pub async fn request(&self, drover: &Drover) -> Result<(), CliError> {
        match self {
            Pool::Run(_) => Err(CliError::Usage(
                "drover pool run needs no connection".to_owned(),
            )),
            Pool::Scale(args) => {
                let request = PoolScale {
                    group: group_name(&args.group)?,
                    target: args.target,
                    delta: args.delta,
                };
                let subject = subjects::scale(&pool_id(&args.pool)?);
                let scaled: PoolScaled = call_pool(drover, &subject, &request).await?;
                if args.json {
                    return output::json(&scaled);
                }
                println!(
                    "group {}: target {}, {} running now",
                    scaled.group, scaled.target, scaled.running
                );
                Ok(())
            }
            Pool::Restart(args) => {
                let request = PoolRestart {
                    mode: if args.hard {
                        RestartMode::Hard
                    } else {
                        RestartMode::Soft
                    },
                    group: args.group.as_deref().map(group_name).transpose()?,
                };
                let subject = subjects::restart(&pool_id(&args.pool)?);
                let restarting: PoolRestarting = call_pool(drover, &subject, &request).await?;
                if args.json {
                    return output::json(&restarting);
                }
                let groups: Vec<String> =
                    restarting.groups.iter().map(ToString::to_string).collect();
                println!(
                    "{} restart begun: {}",
                    restarting.mode.as_str(),
                    groups.join(", ")
                );
                Ok(())
            }
            Pool::Status(args) => {
                let subject = subjects::status(&pool_id(&args.pool)?);
                let state: PoolState = call_pool(drover, &subject, &PoolStatus {}).await?;
                if args.json {
                    return output::json(&state);
                }
                print!("{}", describe(&state));
                Ok(())
            }
        }
    }
}

/// A request to a pool, worded for a pool when nobody answers.
async fn call_pool<T: drover_protocol::Payload, R: drover_protocol::Payload>(
    drover: &Drover,
    subject: &str,
    request: &T,
) -> Result<R, CliError> {
    drover
        .call(subject, request)
        .await
        .map_err(|error| match error {
            CliError::Unreachable(_) => CliError::Unreachable(format!(
                "no pool answers on {subject}: is `drover pool run` running with that poolID?"
            )),
            other => other,
        })
}

/// The status as a heading and a table.
fn describe(state: &PoolState) -> String {
    let mut out = format!(
        "pool {}: up {}, {} restarts\n",
        state.pool_id,
        humantime::format_duration(Duration::from_secs(state.uptime_ms / 1000)),
        state.restarts
    );
    let mut table = output::table(&[
        "GROUP",
        "WORKER",
        "PID",
        "STATE",
        "STATUS",
        "RESTARTS",
        "UPTIME",
        "RUNS",
        "RSS",
        "LAST EXIT",
    ]);
    for group in &state.groups {
        out.push_str(&format!(
            "group {}: target {} (min {}, max {})\n",
            group.name, group.target, group.min, group.max
        ));
        for process in &group.processes {
            table.add_row(row(group.name.as_str(), process));
        }
    }
    out.push_str(&format!("{table}\n"));
    out
}

fn row(group: &str, process: &ProcessState) -> Vec<String> {
    let dash = || "-".to_owned();
    let last_exit = process.last_exit.as_ref().map_or_else(dash, |exit| {
        let how = match (exit.code, exit.signal) {
            (_, Some(signal)) => format!("signal {signal}"),
            (Some(code), None) => format!("code {code}"),
            (None, None) => "?".to_owned(),
        };
        format!("{} ({how})", exit.class.as_str())
    });
    vec![
        group.to_owned(),
        process.worker_id.to_string(),
        process.pid.map_or_else(dash, |pid| pid.to_string()),
        process.state.as_str().to_owned(),
        process
            .worker_status
            .map_or_else(dash, |status| status.to_string()),
        process.restarts.to_string(),
        process.uptime_ms.map_or_else(dash, |ms| {
            humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
        }),
        process.runs.map_or_else(dash, |runs| runs.to_string()),
        process
            .rss_bytes
            .map_or_else(dash, |bytes| format!("{:.1} MiB", bytes as f64 / 1048576.0)),
        last_exit,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_group_equals_number() {
        assert_eq!(parse_size("py=3"), Ok(("py".to_owned(), 3)));
        assert!(parse_size("py").is_err());
        assert!(parse_size("py=-1").is_err());
    }

    #[test]
    fn the_status_table_names_every_process() {
        let state: PoolState = serde_json::from_value(serde_json::json!({
            "poolID": "demo", "startedAt": "2026-12-02T10:00:00Z", "uptimeMs": 65000,
            "restarts": 1,
            "groups": [{"name": "py", "min": 1, "max": 4, "target": 2, "processes": [
                {"workerID": "demo-py-1", "pid": 42, "state": "RUNNING", "workerStatus": "IDLE",
                 "restarts": 1, "uptimeMs": 3000, "runs": 7, "rssBytes": 20971520,
                 "lastExit": {"signal": 9, "class": "unexpected", "at": "2026-12-02T10:00:01Z"}},
                {"workerID": "demo-py-2", "state": "RESTARTING", "restarts": 0, "runs": 0}
            ]}]
        }))
        .unwrap();
        let text = describe(&state);
        assert!(text.contains("pool demo: up 1m 5s, 1 restarts"), "{text}");
        assert!(text.contains("group py: target 2 (min 1, max 4)"), "{text}");
        assert!(
            text.contains("demo-py-1") && text.contains("unexpected (signal 9)"),
            "{text}"
        );
        assert!(
            text.contains("20.0 MiB") && text.contains("RESTARTING"),
            "{text}"
        );
    }
}
