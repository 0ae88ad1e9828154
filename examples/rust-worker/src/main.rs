//! The Drover demo worker, on the Rust SDK (`drover-worker`).
//!
//! Routines:
//!
//! - `demo.workflow` `{"images": [...], "width": N}`: one child `demo.thumbnail` per image,
//!   all at once, gathered into `{"thumbnails": [{image, width, url}, ...]}`.
//! - `demo.thumbnail` `{"image": s, "width": N, "ms"?: N}`: "renders" for `ms` (300 by
//!   default), stopping early when cancelled, and returns `{image, width, url}`.
//! - `demo.greet` `{"name": s}`: returns `{"greeting": "hello, <name>"}`.
//!
//! Environment: `DROVER_NATS_URL` (default `nats://127.0.0.1:4222`), `DROVER_WORKER_ID`
//! (default `example-<hostname>-<pid>`; the SDK reads it, as it reads `DROVER_POOL_ID` and
//! `DROVER_POOL_GROUP`, which `drover pool` sets, for the labels `pool` and `group`),
//! `RUST_LOG`, and the `OTEL_*` variables of `drover_telemetry`. SIGTERM or Ctrl-C stops it
//! gracefully, and it exits 0; a second one stops it at once.

use std::process::ExitCode;
use std::time::Duration;

use drover_worker::{CancellationToken, Context, RoutineError, Worker, DEFAULT_NATS_URL};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::Layer;

/// How many runs the worker runs at once: a workflow and its children fit together.
const CAPACITY: u32 = 8;

/// How long `demo.thumbnail` works when `ms` is not given.
const DEFAULT_THUMBNAIL_MS: u64 = 300;

#[derive(Debug, Deserialize)]
struct WorkflowParams {
    images: Vec<String>,
    width: u32,
}

#[derive(Debug, Deserialize)]
struct ThumbnailParams {
    image: String,
    width: u32,
    ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Thumbnail {
    image: String,
    width: u32,
    url: String,
}

#[derive(Debug, Serialize)]
struct WorkflowResult {
    thumbnails: Vec<Thumbnail>,
}

/// `demo.workflow`: a child `demo.thumbnail` per image, concurrently, then the results.
async fn workflow(ctx: Context, params: WorkflowParams) -> Result<WorkflowResult, RoutineError> {
    let WorkflowParams { images, width } = params;
    tracing::info!(images = images.len(), width, "making thumbnails");
    let children = images.iter().enumerate().map(|(index, image)| {
        let ctx = ctx.clone();
        async move {
            tracing::info!(image = %image, "requesting a thumbnail of {image}");
            // A deterministic localRunID: a retried workflow gets the same children back,
            // and the ones that already finished are not run again.
            let local_id = format!("thumb-{index}");
            let result = ctx
                .run_child(
                    "demo.thumbnail",
                    json!({"image": image, "width": width}),
                    &local_id,
                )
                .await?;
            let thumbnail: Thumbnail = serde_json::from_value(result)?;
            tracing::info!(image = %image, url = %thumbnail.url, "thumbnail of {image} ready");
            Ok::<_, RoutineError>(thumbnail)
        }
    });
    let thumbnails = join_all(children)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    tracing::info!(count = thumbnails.len(), "all thumbnails ready");
    Ok(WorkflowResult { thumbnails })
}

/// `demo.thumbnail`: pretends to render for a while, as long as it is not cancelled.
async fn thumbnail(ctx: Context, params: ThumbnailParams) -> Result<Thumbnail, RoutineError> {
    let ThumbnailParams { image, width, ms } = params;
    let ms = ms.unwrap_or(DEFAULT_THUMBNAIL_MS);
    tracing::info!(image = %image, width, ms, "rendering a thumbnail of {image}");
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => {}
        () = ctx.cancelled() => {
            tracing::info!(image = %image, reason = ?ctx.cancel_reason(), "thumbnail cancelled");
            return Err(RoutineError::new("cancelled").with_type("Cancelled"));
        }
    }
    let url = format!("thumbs/{width}/{image}");
    Ok(Thumbnail { image, width, url })
}

/// `demo.greet`: `{"name": "ada"}` → `{"greeting": "hello, ada"}`.
async fn greet(_ctx: Context, params: Value) -> Result<Value, RoutineError> {
    let name = params["name"].as_str().ok_or_else(|| {
        RoutineError::fatal("params.name must be a string").with_type("BadParams")
    })?;
    tracing::info!(name, "greeting {name}");
    Ok(json!({"greeting": format!("hello, {name}")}))
}

#[tokio::main]
async fn main() -> ExitCode {
    // Console logs and trace export from drover_telemetry, plus the SDK's LogLayer: every
    // `tracing` event inside a routine also goes to Drover as a log line of its run.
    let telemetry = drover_telemetry::init_with_layer(
        "drover-example-worker",
        Worker::log_layer().with_filter(LevelFilter::INFO),
    );
    let url = env("DROVER_NATS_URL").unwrap_or_else(|| DEFAULT_NATS_URL.to_owned());

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signals(shutdown.clone()));
    tracing::info!(%url, "starting the example worker");
    // DROVER_WORKER_ID, when set, takes the place of this default: the SDK reads it.
    let outcome = Worker::builder(default_worker_id())
        .nats_url(url)
        .name("drover example worker")
        .capacity(CAPACITY)
        .routine_typed("demo.workflow", workflow)
        .routine_typed("demo.thumbnail", thumbnail)
        .routine("demo.greet", greet)
        .run(shutdown)
        .await;
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the worker could not run");
            ExitCode::FAILURE
        }
    };
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .ok();
    code
}

/// Cancels `shutdown` at the first SIGTERM or SIGINT; exits at once on a second one.
async fn stop_on_signals(shutdown: CancellationToken) {
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop the worker with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("signal received: finishing held runs, then stopping (again to stop now)");
    shutdown.cancel();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::warn!("second signal: stopping now");
    std::process::exit(130);
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// `example-<hostname>-<pid>`, reduced to the characters a workerID may hold.
fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| env("HOSTNAME"))
        .unwrap_or_else(|| "host".to_owned());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("example-{host}-{}", std::process::id())
}
