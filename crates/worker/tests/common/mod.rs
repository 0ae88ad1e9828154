//! What the SDK's end-to-end tests share: a real stack, workers run in the background, and
//! a tracing subscriber with OpenTelemetry and the log layer.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::Client;
use drover_protocol::subject::keys;
use drover_protocol::{RegistryGet, WorkerId, WorkerRecord, WorkerStatus};
use drover_testkit::{call, wait_for, Stack};
use drover_worker::{CancellationToken, WorkerBuilder, WorkerError};
use opentelemetry::trace::TracerProvider as _;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Generous bound for anything that involves placement and a round trip.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Registry, heartbeat-monitor and scheduler, pulses every 200 ms, LOST after 1 s.
pub async fn stack() -> Stack {
    stack_with_lost_after(1000).await
}

/// The same stack with another `lostAfterMs`.
pub async fn stack_with_lost_after(lost_after_ms: u64) -> Stack {
    Stack::builder()
        .lost_after_ms(lost_after_ms)
        .with_registry()
        .with_monitor()
        .with_scheduler()
        .start()
        .await
        .expect("stack starts")
}

/// A worker running in the background.
pub struct Running {
    /// Its workerID.
    pub id: String,
    /// Cancel to shut it down.
    pub shutdown: CancellationToken,
    /// What `run` returned.
    pub handle: JoinHandle<Result<(), WorkerError>>,
}

impl Running {
    /// Cancels the shutdown token and waits for `run` to return.
    pub async fn stop(self) -> Result<(), WorkerError> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Waits for `run` to return (after a shutdown that was started elsewhere).
    pub async fn join(self) -> Result<(), WorkerError> {
        tokio::time::timeout(drover_testkit::patient(PATIENCE), self.handle)
            .await
            .expect("the worker stops in time")
            .expect("the worker task does not panic")
    }
}

/// Runs `builder` (connected to the stack's NATS) and waits until the worker is IDLE.
pub async fn start(stack: &Stack, id: &str, builder: WorkerBuilder) -> Running {
    let client = stack.client().await;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(builder.client(client).run(shutdown.clone()));
    let observer = stack.client().await;
    wait_status(&observer, id, WorkerStatus::Idle).await;
    Running {
        id: id.to_owned(),
        shutdown,
        handle,
    }
}

/// The registry's record of a worker.
pub async fn record(client: &Client, id: &str) -> Option<WorkerRecord> {
    call::<_, WorkerRecord>(
        client,
        keys::REGISTRY_GET,
        &RegistryGet {
            worker_id: WorkerId::parse(id).unwrap(),
        },
    )
    .await
    .ok()
}

/// Waits until the registry shows the worker in `status`, and returns the record.
pub async fn wait_status(client: &Client, id: &str, status: WorkerStatus) -> WorkerRecord {
    wait_for(&format!("worker {id} is {status}"), PATIENCE, || async {
        record(client, id)
            .await
            .filter(|record| record.status == status)
    })
    .await
    .unwrap()
}

/// A gate that handlers wait at until the test opens it.
#[derive(Clone, Default)]
pub struct Gate {
    notify: Arc<Notify>,
}

impl Gate {
    /// Waits until opened (a permit stored before the wait counts).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Lets one waiter through (now or when it arrives).
    pub fn open(&self) {
        self.notify.notify_one();
    }
}

/// Installs, once per process, a subscriber with an OpenTelemetry layer (spans get real
/// trace IDs; nothing is exported) and the SDK's log layer.
pub fn init_tracing() {
    static PROVIDER: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = provider.tracer("drover-worker-tests");
        let console = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()));
        let _ = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(tracer))
            .with(drover_worker::Worker::log_layer())
            .with(console)
            .try_init();
        provider
    });
}
