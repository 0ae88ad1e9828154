//! The conformance routines on the Rust SDK, run by `integration-tests/python/test_conformance.py`
//! beside the same routines on the Python SDK and on plain NATS.
//!
//! ```text
//! drover-conformance-worker NATS_URL WORKER_ID [CAPACITY] [GRACE_SECONDS]
//! ```
//!
//! (or `DROVER_NATS_URL`, `DROVER_WORKER_ID`, `DROVER_CAPACITY`, `DROVER_GRACE_SECONDS`).
//! `DROVER_WORKER_ID`, when set, wins over the `WORKER_ID` argument: the SDK reads it.
//! Prints `ready <workerID>` once the registry has it ready; SIGTERM or SIGINT stops it
//! gracefully (held runs get the grace period), after which it exits 0.
//!
//! - `conf.echo`: returns its params.
//! - `conf.flaky`: fails (retryable) while `attempt < params.succeed_on_attempt`, then
//!   returns `{"attempt": attempt}`.
//! - `conf.fatal`: fails, not retryable.
//! - `conf.sleep`: sleeps `params.ms`, stopping when cancelled (and printing
//!   `sleep cancelled <runID>`); returns `{"slept": ms}`.
//! - `conf.parent`: runs `conf.echo` with `params.child` as child `child-1`; returns
//!   `{"child": <its result>}`.

use std::process::ExitCode;
use std::time::Duration;

use drover_worker::{CancellationToken, Context, RoutineError, Worker};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};

async fn echo(_ctx: Context, params: Value) -> Result<Value, RoutineError> {
    Ok(params)
}

async fn flaky(ctx: Context, params: Value) -> Result<Value, RoutineError> {
    let succeed_on = params["succeed_on_attempt"].as_u64().unwrap_or(1);
    if ctx.attempt() < succeed_on {
        return Err(RoutineError::new(format!(
            "attempt {} fails; attempt {succeed_on} will succeed",
            ctx.attempt()
        ))
        .with_type("Flaky"));
    }
    Ok(json!({"attempt": ctx.attempt()}))
}

async fn fatal(_ctx: Context, _params: Value) -> Result<Value, RoutineError> {
    Err(RoutineError::fatal("this routine always fails").with_type("Fatal"))
}

async fn sleep(ctx: Context, params: Value) -> Result<Value, RoutineError> {
    let ms = params["ms"].as_u64().unwrap_or(0);
    tracing::info!(run_id = %ctx.run_id(), ms, "sleeping");
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({"slept": ms})),
        () = ctx.cancelled() => {
            // The test reads this line: the routine stopped when told to.
            println!("sleep cancelled {}", ctx.run_id());
            Err(RoutineError::new("cancelled"))
        }
    }
}

async fn parent(ctx: Context, params: Value) -> Result<Value, RoutineError> {
    let child = ctx
        .run_child("conf.echo", params["child"].clone(), "child-1")
        .await?;
    Ok(json!({"child": child}))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let mut arg = |env: &str| args.next().or_else(|| std::env::var(env).ok());
    let url = arg("DROVER_NATS_URL").unwrap_or_else(|| drover_worker::DEFAULT_NATS_URL.into());
    let Some(worker_id) = arg("DROVER_WORKER_ID") else {
        eprintln!("usage: drover-conformance-worker NATS_URL WORKER_ID [CAPACITY] [GRACE_SECONDS]");
        return ExitCode::from(64);
    };
    // The SDK registers under DROVER_WORKER_ID when it is set, whatever the argument says:
    // announce that one.
    let worker_id = std::env::var(drover_worker::WORKER_ID_VAR)
        .ok()
        .filter(|id| !id.is_empty())
        .unwrap_or(worker_id);
    let capacity = arg("DROVER_CAPACITY")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let grace = arg("DROVER_GRACE_SECONDS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);

    let client = match async_nats::connect(&url).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("cannot connect to {url}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signals(shutdown.clone()));
    tokio::spawn(announce_ready(client.clone(), worker_id.clone()));
    let outcome = Worker::builder(worker_id)
        .client(client)
        .capacity(capacity)
        .grace_period(Duration::from_secs_f64(grace))
        .terminating_reason("SIGTERM")
        .routine("conf.echo", echo)
        .routine("conf.flaky", flaky)
        .routine("conf.fatal", fatal)
        .routine("conf.sleep", sleep)
        .routine("conf.parent", parent)
        .run(shutdown)
        .await;
    match outcome {
        Ok(()) => {
            println!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("worker failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `ready <workerID>` once the registry shows this process's registration as ready.
///
/// (The SDK has no readiness callback, so ask the registry, as any client could.)
async fn announce_ready(client: async_nats::Client, worker_id: String) {
    let request = json!({"payloadKey": "v1.registry.get", "payload": {"workerID": worker_id}});
    let pid = u64::from(std::process::id());
    loop {
        let reply = client
            .request("v1.registry.get", request.to_string().into())
            .await;
        if let Ok(reply) = reply {
            let body: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
            let record = &body["payload"];
            let live = matches!(
                record["status"].as_str(),
                Some("IDLE" | "WORKING" | "HANGING")
            );
            if live && record["pid"].as_u64() == Some(pid) {
                println!("ready {worker_id}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cancels `shutdown` at SIGTERM or SIGINT.
async fn stop_on_signals(shutdown: CancellationToken) {
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("cannot listen for signals");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("signal received: shutting down gracefully");
    shutdown.cancel();
}
