//! `drover`: submit and inspect runs, follow logs, and run the whole stack locally.

mod client;
mod cmd;
mod error;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::Drover;
use crate::error::{exit, CliError};

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 a waited-for run ended FAILED or CANCELLED, or another failure;
2 bad command line or input; 3 no such run or worker; 4 NATS or a Drover service is
unreachable; 5 Drover refused the request.

Data goes to stdout, everything else to stderr. Commands that print records take --json.";

/// Drover: run routines on workers written in any language.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// NATS server to talk to.
    #[arg(
        long,
        global = true,
        env = "DROVER_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// How long to wait for an answer, in seconds.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run NATS and the Drover services locally until Ctrl-C (with --demo, a demo workflow too).
    Dev(cmd::dev::Dev),
    /// Submit a run.
    Submit(cmd::submit::Submit),
    /// List, show and cancel runs.
    #[command(subcommand)]
    Runs(cmd::records::Runs),
    /// List and show workers.
    #[command(subcommand)]
    Workers(cmd::records::Workers),
    /// Print the logs of a run or a worker.
    Logs(cmd::logs::Logs),
    /// Show which services answer and the health of the streams and buckets.
    Status(cmd::status::Status),
}

/// `NATS_URL` is honoured when neither `--nats-url` nor `DROVER_NATS_URL` is given.
fn nats_url(cli: &Cli) -> String {
    let from_flag_or_drover_env = std::env::args().any(|arg| arg.starts_with("--nats-url"))
        || std::env::var_os("DROVER_NATS_URL").is_some();
    if from_flag_or_drover_env {
        return cli.nats_url.clone();
    }
    std::env::var("NATS_URL").unwrap_or_else(|_| cli.nats_url.clone())
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let url = nats_url(&cli);
    let timeout = Duration::from_secs(cli.timeout.max(1));
    if let Command::Dev(dev) = cli.command {
        return dev.run().await;
    }
    // Input errors are reported before, and without, any connection.
    if let Command::Submit(submit) = &cli.command {
        submit.spec()?;
    }
    let drover = Drover::connect(&url, timeout).await?;
    match cli.command {
        Command::Dev(_) => Ok(()),
        Command::Submit(submit) => submit.run(&drover).await,
        Command::Runs(runs) => runs.run(&drover).await,
        Command::Workers(workers) => workers.run(&drover).await,
        Command::Logs(logs) => logs.run(&drover).await,
        Command::Status(status) => status.run(&drover).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Quiet unless asked: the CLI reports its own errors, one line each. The processes
    // `drover dev` starts get the user's setting (or `info`), not this one.
    let user_log = std::env::var("RUST_LOG").ok();
    let _ = cmd::dev::CHILD_RUST_LOG.set(user_log.clone().unwrap_or_else(|| "info".to_owned()));
    if user_log.is_none() {
        std::env::set_var("RUST_LOG", "error,async_nats=off");
    }
    let telemetry = drover_telemetry::init("drover-cli");
    let outcome = run(cli).await;
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match outcome {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error) => {
            eprintln!("drover: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
