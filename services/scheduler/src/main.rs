//! `drover-scheduler`: queues, places, retries and times out runs.

use std::process::ExitCode;

use clap::Parser;
use drover_service_kit::{run_service, CommonArgs};

/// Drover's scheduler: runs from request to result.
#[derive(Debug, Parser)]
#[command(name = "drover-scheduler", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    run_service(
        "drover-scheduler",
        "127.0.0.1:9712",
        drover_scheduler::metrics::METRICS,
        args.common,
        |ctx| drover_scheduler::run(ctx.settings, ctx.client, ctx.shutdown, ctx.readiness),
    )
    .await
}
