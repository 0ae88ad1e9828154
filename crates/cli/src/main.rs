//! `drover`: submit and inspect runs, follow logs, and run the whole stack locally.

mod client;
mod cmd;
mod error;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use drover_nats_connect::NatsAuthArgs;

use crate::client::Drover;
use crate::error::{exit, CliError};

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 a waited-for run ended FAILED or CANCELLED, or another failure;
2 bad command line or input; 3 no such run, worker or credential; 4 NATS or a Drover
service is unreachable; 5 Drover refused the request, or NATS refused it to the credential
in use.

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
    #[command(flatten)]
    auth: NatsAuthArgs,
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
    /// Supervise worker processes: run a pool, scale it, restart it, show it.
    #[command(subcommand)]
    Pool(cmd::pool::Pool),
    /// Manage the secured setup's keys and the credentials of workers, pools and clients.
    #[command(subcommand)]
    Credentials(cmd::credentials::Credentials),
}

/// `NATS_URL` is honoured when neither `--nats-url` nor `DROVER_NATS_URL` is given.
///
/// Also says whether the user gave a URL at all (flag or either variable).
fn nats_url(cli: &Cli, matches: &ArgMatches, nats_url_env: Option<String>) -> (String, bool) {
    let given = matches
        .value_source("nats_url")
        .is_some_and(|source| source != ValueSource::DefaultValue);
    match nats_url_env {
        Some(url) if !given => (url, true),
        _ => (cli.nats_url.clone(), given),
    }
}

async fn run(cli: Cli, (url, url_given): (String, bool)) -> Result<(), CliError> {
    let timeout = Duration::from_secs(cli.timeout.max(1));
    if let Command::Dev(dev) = cli.command {
        return dev.run().await;
    }
    // Unusable credentials are a configuration error (exit 64), found before connecting.
    let auth = cli
        .auth
        .resolve()
        .map_err(|error| CliError::Config(error.to_string()))?;
    // Input errors are reported before, and without, any connection.
    if let Command::Submit(submit) = &cli.command {
        submit.spec()?;
    }
    if let Command::Pool(pool) = &cli.command {
        pool.check()?;
        if let cmd::pool::Pool::Run(run) = pool {
            return run.run(url, url_given, auth).await;
        }
    }
    if let Command::Credentials(credentials) = &cli.command {
        if credentials.run_offline()? {
            return Ok(());
        }
    }
    let drover = Drover::connect(&url, timeout, &auth).await?;
    // Whatever the command does, a publish or subscription its credential may not make ends
    // it at once with what NATS said, instead of a time-out.
    drover
        .unless_refused(async {
            match cli.command {
                Command::Dev(_) => Ok(()),
                Command::Submit(submit) => submit.run(&drover).await,
                Command::Runs(runs) => runs.run(&drover).await,
                Command::Workers(workers) => workers.run(&drover).await,
                Command::Logs(logs) => logs.run(&drover).await,
                Command::Status(status) => status.run(&drover).await,
                Command::Pool(pool) => pool.request(&drover).await,
                Command::Credentials(credentials) => credentials.run(&drover).await,
            }
        })
        .await
}

/// The CLI's own log filter unless `RUST_LOG` says otherwise: it reports its errors itself,
/// one line each.
const QUIET_LOG: &str = "error,async_nats=off";

/// `drover pool run` supervises for as long as it runs: it says what it does, on stderr.
const POOL_LOG: &str = "info,async_nats=warn,opentelemetry=warn";

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)
        .unwrap_or_else(|error| error.format(&mut Cli::command()).exit());
    let url = nats_url(&cli, &matches, std::env::var("NATS_URL").ok());
    // The processes `drover dev` starts get the user's setting (or `info`), not the CLI's.
    let user_log = std::env::var("RUST_LOG").ok();
    let _ = cmd::dev::CHILD_RUST_LOG.set(user_log.clone().unwrap_or_else(|| "info".to_owned()));
    let (service, quiet) = match &cli.command {
        Command::Pool(cmd::pool::Pool::Run(_)) => ("drover-pool", POOL_LOG),
        _ => ("drover-cli", QUIET_LOG),
    };
    let telemetry =
        drover_telemetry::init_with_log_filter(service, user_log.as_deref().unwrap_or(quiet));
    let outcome = run(cli, url).await;
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match outcome {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error) => {
            eprintln!("drover: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_line_is_well_formed() {
        // Clap checks its definitions only for the commands a run parses; this checks all.
        Cli::command().debug_assert();
    }

    /// The URL for this command line, with `DROVER_NATS_URL` read from `drover_env` instead
    /// and `NATS_URL` given as `nats_env`.
    fn resolve(args: &[&str], drover_env: &'static str, nats_env: Option<&str>) -> String {
        let command = Cli::command().mut_arg("nats_url", |arg| arg.env(drover_env));
        let matches = command.try_get_matches_from(args).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        nats_url(&cli, &matches, nats_env.map(str::to_owned)).0
    }

    #[test]
    fn the_flag_wins_then_drover_nats_url_then_nats_url() {
        const UNSET: &str = "DROVER_CLI_TEST_NATS_URL_UNSET";
        const SET: &str = "DROVER_CLI_TEST_NATS_URL_SET";
        let fallback = Some("nats://fallback:4222");
        let status = ["drover", "status"];
        assert_eq!(resolve(&status, UNSET, fallback), "nats://fallback:4222");
        assert_eq!(resolve(&status, UNSET, None), "nats://127.0.0.1:4222");
        // Before or after the subcommand, and even when it repeats the default.
        let before = ["drover", "--nats-url", "nats://a:1", "status"];
        assert_eq!(resolve(&before, UNSET, fallback), "nats://a:1");
        let after = ["drover", "runs", "list", "--nats-url=nats://b:2"];
        assert_eq!(resolve(&after, UNSET, fallback), "nats://b:2");
        let default = ["drover", "status", "--nats-url", "nats://127.0.0.1:4222"];
        assert_eq!(resolve(&default, UNSET, fallback), "nats://127.0.0.1:4222");
        // A variable of this test's own, so that nothing else reads it.
        std::env::set_var(SET, "nats://c:3");
        assert_eq!(resolve(&status, SET, fallback), "nats://c:3");
    }

    #[test]
    fn credential_flags_go_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from(["drover", "--nkey", "w.nk", "runs", "list"]).unwrap();
        assert_eq!(cli.auth.nkey.as_deref(), Some("w.nk"));
        let cli = Cli::try_parse_from([
            "drover",
            "runs",
            "list",
            "--tlsca",
            "ca.pem",
            "--tlscert",
            "c.pem",
            "--tlskey",
            "k.pem",
        ])
        .unwrap();
        assert_eq!(
            cli.auth.tlsca.as_deref(),
            Some(std::path::Path::new("ca.pem"))
        );
        assert_eq!(
            cli.auth.tlskey.as_deref(),
            Some(std::path::Path::new("k.pem"))
        );
        let cli =
            Cli::try_parse_from(["drover", "pool", "run", "p.toml", "--creds", "x.creds"]).unwrap();
        assert_eq!(
            cli.auth.creds.as_deref(),
            Some(std::path::Path::new("x.creds"))
        );
    }
}
