//! `drover-auth`: answers nats-server's auth callout with Drover credentials.

use std::process::ExitCode;

use clap::Parser;
use drover_auth::setup::{read_seed, DEFAULT_ACCOUNT};
use drover_auth::AuthConfig;
use drover_service_kit::{run_service, CommonArgs, EXIT_CONFIG};

/// Drover's auth service: admits workers, pools and clients with their own permissions.
#[derive(Debug, Parser)]
#[command(name = "drover-auth", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The issuer's account seed (a file, or the seed itself), from `drover credentials init`.
    #[arg(long, env = "DROVER_AUTH_ISSUER_SEED", value_name = "SEED")]
    issuer_seed: Option<String>,
    /// The server-config account admitted users join.
    #[arg(long, env = "DROVER_AUTH_ACCOUNT", default_value = DEFAULT_ACCOUNT)]
    account: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let issuer = match args.issuer_seed.as_deref().map(read_seed) {
        Some(Ok(issuer)) => Some(issuer),
        Some(Err(error)) => {
            eprintln!("drover-auth: DROVER_AUTH_ISSUER_SEED: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
        // --check-health needs no key.
        None if args.common.check_health => None,
        None => {
            eprintln!(
                "drover-auth: DROVER_AUTH_ISSUER_SEED is required (see `drover credentials init`)"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let account = args.account;
    run_service(
        "drover-auth",
        "127.0.0.1:9714",
        drover_auth::metrics::METRICS,
        args.common,
        |ctx| async move {
            let issuer = issuer.expect("checked before start-up");
            let config = AuthConfig::new(issuer, account);
            drover_auth::run(
                ctx.settings,
                ctx.client,
                config,
                ctx.shutdown,
                ctx.readiness,
            )
            .await
        },
    )
    .await
}
