//! `drover-console`: the web console and HTTP API.

use std::process::ExitCode;

use clap::Parser;
use drover_console::ConsoleConfig;
use drover_service_kit::{run_service, CommonArgs, EXIT_CONFIG};

/// Drover's web console and HTTP API: runs, workers, pools and logs in a browser.
#[derive(Debug, Parser)]
#[command(name = "drover-console", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Address the console serves on. It binds to loopback unless told otherwise.
    #[arg(long, env = "DROVER_CONSOLE_LISTEN", default_value = drover_console::DEFAULT_LISTEN)]
    listen: String,
    /// Enables actions (cancel, submit, re-submit, scale, restart) for whoever presents this
    /// token: as `Authorization: Bearer <token>`, or by signing in on the console's page. Without
    /// it the console is read-only.
    #[arg(
        long,
        env = "DROVER_CONSOLE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Base URL of the Jaeger UI that run pages link their traces to.
    #[arg(long, env = "DROVER_CONSOLE_JAEGER_URL", default_value = drover_console::DEFAULT_JAEGER_URL)]
    jaeger_url: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match ConsoleConfig::new(&args.listen, args.token, &args.jaeger_url) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("drover-console: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    run_service(
        "drover-console",
        "127.0.0.1:9715",
        drover_console::metrics::METRICS,
        args.common,
        |ctx| {
            drover_console::run(
                ctx.settings,
                ctx.client,
                config,
                ctx.shutdown,
                ctx.readiness,
            )
        },
    )
    .await
}
