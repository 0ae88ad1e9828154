//! `drover-heartbeat-monitor`: finds workers that stopped pulsing.

use std::process::ExitCode;

use clap::Parser;
use drover_service_kit::{run_service, CommonArgs};

/// Drover's heartbeat-monitor: probes silent workers and declares them lost.
#[derive(Debug, Parser)]
#[command(name = "drover-heartbeat-monitor", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    run_service(
        "drover-heartbeat-monitor",
        "127.0.0.1:9711",
        drover_heartbeat_monitor::metrics::METRICS,
        args.common,
        |ctx| drover_heartbeat_monitor::run(ctx.settings, ctx.client, ctx.shutdown, ctx.readiness),
    )
    .await
}
