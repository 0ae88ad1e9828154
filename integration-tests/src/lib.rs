//! Helpers for Drover's cross-process tests: plain-NATS workers and raw requests. The
//! workers here use nothing but a NATS client and the protocol crate's types, as an outside
//! worker author would. Typed requests (`call`) and the scale `Fleet` are in
//! `drover-testkit`, which the benchmark shares.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cli;
pub mod pool;
pub mod runner;
pub mod runs;
pub mod secure;
pub mod worker;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use drover_protocol::subject::keys;
use drover_protocol::{ErrorPayload, RegistryGet, WorkerId, WorkerRecord, WorkerStatus};
use drover_testkit::{call, REQUEST_TIMEOUT};
use futures::StreamExt;
use serde_json::Value;

pub use drover_testkit::ProcStats;
pub use runner::{Act, Runner};
pub use worker::{Inbound, SimWorker};

/// Stores an IDLE record for `worker` straight into `DROVER_WORKERS`, as if it had registered:
/// for tests that publish a worker's directives (log lines, say) without running a worker.
pub async fn put_idle_worker(
    js: &async_nats::jetstream::Context,
    worker: &str,
) -> anyhow::Result<()> {
    let now = drover_protocol::Timestamp::now();
    let record = serde_json::json!({
        "workerID": worker, "incarnation": 1, "status": "IDLE", "phase": "READY",
        "routines": [], "capacity": 1, "heartbeatIntervalMs": 5000, "lostAfterMs": 15000,
        "registeredAt": now, "statusChangedAt": now,
    });
    js.get_key_value(drover_protocol::subject::resources::WORKERS_BUCKET)
        .await?
        .put(worker, serde_json::to_vec(&record)?.into())
        .await?;
    Ok(())
}

/// A worker's registry record.
pub async fn registry_record(client: &Client, worker: &str) -> Option<WorkerRecord> {
    call::<_, WorkerRecord>(
        client,
        keys::REGISTRY_GET,
        &RegistryGet {
            worker_id: WorkerId::parse(worker).unwrap(),
        },
    )
    .await
    .ok()
}

/// The status the registry has for `worker`, if it knows the worker.
pub async fn worker_status(client: &Client, worker: &str) -> Option<WorkerStatus> {
    registry_record(client, worker)
        .await
        .map(|record| record.status)
}

/// Waits until the registry has `worker` in `status`.
pub async fn wait_registry_status(
    client: &Client,
    worker: &str,
    status: WorkerStatus,
    timeout: std::time::Duration,
) {
    drover_testkit::wait_until(&format!("{worker} {status}"), timeout, || async {
        registry_record(client, worker)
            .await
            .is_some_and(|record| record.status == status)
    })
    .await
    .unwrap();
}

/// Sends raw bytes as a request and returns the raw reply body.
pub async fn raw_call(client: &Client, subject: impl Into<String>, body: Bytes) -> Bytes {
    raw_call_with_headers(client, subject, HeaderMap::new(), body).await
}

/// Sends raw bytes with headers as a request and returns the raw reply body.
pub async fn raw_call_with_headers(
    client: &Client,
    subject: impl Into<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Bytes {
    let subject = subject.into();
    let reply = tokio::time::timeout(
        drover_testkit::patient(REQUEST_TIMEOUT),
        client.request_with_headers(subject.clone(), headers, body),
    )
    .await
    .unwrap_or_else(|_| panic!("no reply on {subject} in time"))
    .unwrap_or_else(|error| panic!("request on {subject} failed: {error}"));
    reply.payload
}

/// The `v1.error` a raw reply carries, if it is one.
pub fn error_of(reply: &[u8]) -> Option<ErrorPayload> {
    let envelope: Value = serde_json::from_slice(reply).ok()?;
    if envelope["payloadKey"] != "v1.error" {
        return None;
    }
    serde_json::from_value(envelope["payload"].clone()).ok()
}

/// Wraps any JSON as an envelope under `key`.
pub fn envelope(key: &str, payload: Value) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"payloadKey": key, "payload": payload}))
            .expect("JSON serialises"),
    )
}

/// Everything published on a subject pattern, collected in the background.
pub struct Recorder {
    messages: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Starts recording `subject` (wildcards allowed). Returns once the subscription is in place.
    pub async fn start(client: &Client, subject: &str) -> Self {
        let mut subscriber = client.subscribe(subject.to_owned()).await.unwrap();
        client.flush().await.unwrap();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&messages);
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
                sink.lock()
                    .unwrap()
                    .push((message.subject.to_string(), value));
            }
        });
        Self { messages, task }
    }

    /// Everything recorded so far: subject and body.
    pub fn all(&self) -> Vec<(String, Value)> {
        self.messages.lock().unwrap().clone()
    }

    /// Payloads recorded on exactly `subject`.
    pub fn payloads_on(&self, subject: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|(on, _)| on == subject)
            .map(|(_, body)| body["payload"].clone())
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
