//! `drover runs ...` and `drover workers ...`.

use clap::{Args, Subcommand};
use drover_protocol::subject::keys;
use drover_protocol::{
    RegistryGet, RegistryList, RoutineId, RunCancel, RunId, RunList, RunPage, RunRecord, RunStatus,
    WorkerId, WorkerList, WorkerRecord, WorkerStatus,
};

use crate::client::Drover;
use crate::error::CliError;
use crate::output;

/// Inspect and cancel runs.
#[derive(Debug, Subcommand)]
pub enum Runs {
    /// List runs, newest first.
    List(RunsList),
    /// Show one run.
    Get(RunsGet),
    /// Cancel a run (and its unfinished children).
    Cancel(RunsCancel),
}

/// `drover runs list`.
#[derive(Debug, Args)]
pub struct RunsList {
    /// Only runs in this state (PENDING, ASSIGNED, RUNNING, SUCCEEDED, FAILED, CANCELLED).
    #[arg(long)]
    pub status: Option<RunStatus>,
    /// Only runs of this routine.
    #[arg(long)]
    pub routine: Option<String>,
    /// Only runs held (or last held) by this worker.
    #[arg(long)]
    pub worker: Option<String>,
    /// How many runs to show.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Print records as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `drover runs get`.
#[derive(Debug, Args)]
pub struct RunsGet {
    /// The run.
    pub run: String,
    /// Print the record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `drover runs cancel`.
#[derive(Debug, Args)]
pub struct RunsCancel {
    /// The run.
    pub run: String,
    /// Why, recorded and sent to the worker.
    #[arg(long)]
    pub reason: Option<String>,
    /// Print the record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Inspect workers.
#[derive(Debug, Subcommand)]
pub enum Workers {
    /// List workers.
    List(WorkersList),
    /// Show one worker.
    Get(WorkersGet),
}

/// `drover workers list`.
#[derive(Debug, Args)]
pub struct WorkersList {
    /// Only workers with this status (IDLE, WORKING, HANGING, LOST, ...).
    #[arg(long)]
    pub status: Option<WorkerStatus>,
    /// Only workers that run this routine.
    #[arg(long)]
    pub routine: Option<String>,
    /// Only workers with this label (repeatable): KEY=VALUE.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Print records as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `drover workers get`.
#[derive(Debug, Args)]
pub struct WorkersGet {
    /// The worker.
    pub worker: String,
    /// Print the record as JSON.
    #[arg(long)]
    pub json: bool,
}

fn run_id(text: &str) -> Result<RunId, CliError> {
    RunId::parse(text).map_err(CliError::invalid_id(format!("run ID {text:?}")))
}

fn worker_id(text: &str) -> Result<WorkerId, CliError> {
    WorkerId::parse(text).map_err(CliError::invalid_id(format!("worker ID {text:?}")))
}

fn routine_id(text: &str) -> Result<RoutineId, CliError> {
    RoutineId::parse(text).map_err(CliError::invalid_id(format!("routine name {text:?}")))
}

impl Runs {
    /// Runs the command.
    pub async fn run(self, drover: &Drover) -> Result<(), CliError> {
        match self {
            Runs::List(list) => {
                let mut query = RunList {
                    status: list.status,
                    routine_id: list.routine.as_deref().map(routine_id).transpose()?,
                    worker_id: list.worker.as_deref().map(worker_id).transpose()?,
                    limit: Some(list.limit.clamp(1, RunList::MAX_LIMIT)),
                    cursor: None,
                };
                // A filter can leave a page short of the limit; keep reading until enough.
                let mut runs: Vec<RunRecord> = Vec::new();
                loop {
                    let page: RunPage = drover.call(keys::RUN_LIST, &query).await?;
                    runs.extend(page.runs);
                    match page.next_cursor {
                        Some(cursor) if (runs.len() as u32) < list.limit => {
                            query.cursor = Some(cursor)
                        }
                        _ => break,
                    }
                }
                runs.truncate(list.limit as usize);
                if list.json {
                    return output::json(&runs);
                }
                if runs.is_empty() {
                    eprintln!("no runs");
                    return Ok(());
                }
                println!("{}", output::runs_table(&runs));
                Ok(())
            }
            Runs::Get(get) => {
                let record = crate::cmd::submit::get_run(drover, &run_id(&get.run)?).await?;
                if get.json {
                    return output::json(&record);
                }
                print!("{}", output::run_details(&record));
                Ok(())
            }
            Runs::Cancel(cancel) => {
                let request = RunCancel {
                    run_id: run_id(&cancel.run)?,
                    reason: cancel.reason,
                };
                let record: RunRecord = drover.call(keys::RUN_CANCEL, &request).await?;
                if cancel.json {
                    return output::json(&record);
                }
                if record.status == RunStatus::Cancelled {
                    println!("run {} is CANCELLED", record.run_id);
                } else {
                    eprintln!(
                        "run {} had already ended {}; nothing to cancel",
                        record.run_id, record.status
                    );
                }
                Ok(())
            }
        }
    }
}

impl Workers {
    /// Runs the command.
    pub async fn run(self, drover: &Drover) -> Result<(), CliError> {
        match self {
            Workers::List(list) => {
                let labels = list
                    .labels
                    .iter()
                    .map(|entry| {
                        entry
                            .split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .ok_or_else(|| {
                                CliError::Usage(format!(
                                    "invalid --label {entry:?}: expected KEY=VALUE"
                                ))
                            })
                    })
                    .collect::<Result<_, _>>()?;
                let mut query = RegistryList {
                    status: list.status,
                    routine_id: list.routine.as_deref().map(routine_id).transpose()?,
                    labels: (!list.labels.is_empty()).then_some(labels),
                    ..RegistryList::default()
                };
                // The registry answers in pages when the list would not fit in one message.
                let mut workers = Vec::new();
                loop {
                    let page: WorkerList = drover.call(keys::REGISTRY_LIST, &query).await?;
                    workers.extend(page.workers);
                    match page.next_cursor {
                        Some(cursor) => query.cursor = Some(cursor),
                        None => break,
                    }
                }
                if list.json {
                    return output::json(&workers);
                }
                if workers.is_empty() {
                    eprintln!("no workers");
                    return Ok(());
                }
                println!("{}", output::workers_table(&workers));
                Ok(())
            }
            Workers::Get(get) => {
                let record: WorkerRecord = drover
                    .call(
                        keys::REGISTRY_GET,
                        &RegistryGet {
                            worker_id: worker_id(&get.worker)?,
                        },
                    )
                    .await?;
                if get.json {
                    return output::json(&record);
                }
                print!("{}", output::worker_details(&record));
                Ok(())
            }
        }
    }
}
