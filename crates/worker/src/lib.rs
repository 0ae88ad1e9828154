//! The Rust worker SDK for Drover: register routines, run their attempts, report results.
//!
//! A worker registers its routines with Drover over NATS, pulses while it lives, runs each
//! assignment on a task of its own (up to its capacity, which Drover enforces), reports
//! `starting` and `completed` so that they survive a NATS outage, and shuts down gracefully
//! when its token is cancelled. It follows `docs/protocol.md` to the letter.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use drover_worker::{Context, LogLevel, RoutineError, Worker};
//! use serde_json::{json, Value};
//! use tokio_util::sync::CancellationToken;
//!
//! async fn resize(ctx: Context, params: Value) -> Result<Value, RoutineError> {
//!     let width = params["width"]
//!         .as_u64()
//!         .ok_or_else(|| RoutineError::fatal("width is required").with_type("BadParams"))?;
//!     ctx.log(LogLevel::Info, format!("resizing to {width}px"));
//!     tracing::info!(width, "resizing"); // shipped too, with drover_worker::LogLayer
//!     let thumbnail = ctx
//!         .run_child("images.thumbnail", json!({"width": 64}), "thumb-1")
//!         .await?;
//!     Ok(json!({"width": width, "thumbnail": thumbnail}))
//! }
//!
//! # async fn main_() -> Result<(), drover_worker::WorkerError> {
//! let shutdown = CancellationToken::new();
//! Worker::builder("resizer-1")
//!     .nats_url("nats://127.0.0.1:4222")
//!     .routine("images.resize", resize)
//!     .capacity(4)
//!     .label("gpu", "false")
//!     .grace_period(Duration::from_secs(30))
//!     .run(shutdown)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Under a supervisor such as `drover pool`, the process environment wins over the code:
//! `DROVER_WORKER_ID`, when set, is the workerID whatever `Worker::builder` was given (an
//! invalid one fails `run` with [`WorkerError::InvalidWorkerId`]), and `DROVER_POOL_ID` /
//! `DROVER_POOL_GROUP` become the labels `pool` and `group`. Signals stay the
//! application's: cancel the shutdown token on SIGTERM (the supervisor's way of saying
//! "stop"), and `run` sends `v1.terminating`, finishes the runs it holds and returns
//! `Ok(())`, so the process can exit 0.
//!
//! Logging through `tracing`: add [`LogLayer`] to your subscriber, and every event inside
//! a handler reaches Drover's log-collector with the run's runID:
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer())
//!     .with(drover_worker::Worker::log_layer())
//!     .init();
//! ```
//!
//! Testing a handler without a broker: [`testing::RoutineEnvironment`] runs it with a real
//! [`Context`] and reports the outcome the worker would send, the log lines, and the child
//! runs requested (which the test answers); the test can also cancel the attempt.
//!
//! ```
//! # use drover_worker::{Context, RoutineError};
//! # use serde_json::{json, Value};
//! # async fn resize(ctx: Context, params: Value) -> Result<Value, RoutineError> { Ok(params) }
//! use drover_worker::testing::{AttemptOutcome, RoutineEnvironment};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let report = RoutineEnvironment::new()
//!     .params(json!({"width": 640}))
//!     .answer_child("images.thumbnail", Ok(json!("thumb.png")))
//!     .run(resize)
//!     .await;
//! assert_eq!(report.outcome, AttemptOutcome::Succeeded(json!({"width": 640})));
//! # }
//! ```
//!
//! Tracing: each handler runs in a span `drover.execute` (attributes `drover.run_id`,
//! `drover.routine_id`, `drover.attempt`, `drover.worker_id`) whose parent is the
//! assignment's `traceparent`, the attempt's span; child requests carry that span's
//! context. `ctx.log` lines, `tracing` events inside the handler and the SDK's own notes
//! about the attempt (a panic, a cancellation) are events on it, and when spans are
//! exported the `v1.log` messages of those lines carry its `traceparent`, so that the
//! log-collector does not record them a second time. For spans to have trace IDs, the
//! subscriber needs an OpenTelemetry layer (`drover_telemetry::init` installs one).

mod attempt;
mod builder;
mod child;
mod context;
mod deliver;
mod error;
mod execution;
mod handler;
mod inbox;
mod lifecycle;
mod log;
mod pool_env;
mod runtime;
mod state;
pub mod testing;
mod waiters;

pub use attempt::{PANIC_TYPE, RESULT_TOO_LARGE_TYPE, UNKNOWN_ROUTINE_TYPE};
pub use builder::{Worker, WorkerBuilder, DEFAULT_GRACE_PERIOD, DEFAULT_NATS_URL, NATS_URL_VAR};
pub use child::ChildRequest;
pub use context::Context;
pub use drover_protocol::{FailureReason, LogLevel, RunError, RunStatus};
pub use error::{ChildError, RoutineError, WorkerError, CHILD_FAILED_TYPE, DEFAULT_ERROR_TYPE};
pub use handler::{INVALID_PARAMS_TYPE, INVALID_RESULT_TYPE};
pub use log::LogLayer;
pub use pool_env::{GROUP_LABEL, POOL_GROUP_VAR, POOL_ID_VAR, POOL_LABEL, WORKER_ID_VAR};
pub use tokio_util::sync::CancellationToken;
