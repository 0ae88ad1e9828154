//! `drover-log-collector`: worker log intake, storage and queries.

use std::process::ExitCode;

use clap::Parser;
use drover_service_kit::{run_service, CommonArgs};

/// Drover's log-collector: stores worker logs and answers queries about them.
#[derive(Debug, Parser)]
#[command(name = "drover-log-collector", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    run_service(
        "drover-log-collector",
        "127.0.0.1:9713",
        drover_log_collector::metrics::METRICS,
        args.common,
        |ctx| drover_log_collector::run(ctx.settings, ctx.client, ctx.shutdown, ctx.readiness),
    )
    .await
}
