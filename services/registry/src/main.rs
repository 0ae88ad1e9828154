//! `drover-registry`: worker records, statuses and discovery.

use std::process::ExitCode;

use clap::Parser;
use drover_service_kit::{run_service, CommonArgs};

/// Drover's registry of workers and their statuses.
#[derive(Debug, Parser)]
#[command(name = "drover-registry", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    run_service(
        "drover-registry",
        "127.0.0.1:9710",
        drover_registry::metrics::METRICS,
        args.common,
        |ctx| drover_registry::run(ctx.settings, ctx.client, ctx.shutdown, ctx.readiness),
    )
    .await
}
