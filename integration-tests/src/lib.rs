//! Helpers for Drover's cross-process tests: plain-NATS workers, requests, and process
//! figures. The workers here use nothing but a NATS client and the protocol crate's types,
//! as an outside worker author would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod fleet;
pub mod runner;
pub mod runs;
pub mod worker;

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use drover_protocol::envelope::decode_reply;
use drover_protocol::subject::keys;
use drover_protocol::{
    encode, ErrorCode, ErrorPayload, Payload, RegistryList, WorkerList, WorkerRecord,
};
use futures::StreamExt;
use serde_json::Value;

pub use drover_testkit::ProcStats;
pub use fleet::Fleet;
pub use runner::{Act, Runner};
pub use worker::{Inbound, SimWorker};

/// How long a request waits for its reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `payload` as a request and decodes the reply as `R` or the `v1.error` it carries.
///
/// A request nobody answers (no responders, timeout) comes back as an `unavailable`
/// error, so that tests can poll across restarts.
pub async fn call<T: Payload, R: Payload>(
    client: &Client,
    subject: impl Into<String>,
    payload: &T,
) -> Result<R, ErrorPayload> {
    let subject = subject.into();
    let request = client.request(subject.clone(), encode(payload));
    let reply = match tokio::time::timeout(drover_testkit::patient(REQUEST_TIMEOUT), request).await
    {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => {
            return Err(ErrorPayload::new(
                ErrorCode::Unavailable,
                error.to_string(),
                subject,
            ))
        }
        Err(_) => {
            return Err(ErrorPayload::new(
                ErrorCode::Unavailable,
                "no reply in time",
                subject,
            ))
        }
    };
    decode_reply::<R>(&reply.payload).expect("the reply is an envelope")
}

/// Every worker that `filter` matches, following `nextCursor` across replies.
pub async fn list_workers(
    client: &Client,
    filter: &RegistryList,
) -> Result<Vec<WorkerRecord>, ErrorPayload> {
    let mut filter = filter.clone();
    let mut workers = Vec::new();
    loop {
        let page: WorkerList = call(client, keys::REGISTRY_LIST, &filter).await?;
        workers.extend(page.workers);
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => return Ok(workers),
        }
    }
}

/// How many workers have `status` (0 when the registry does not answer, so that callers
/// can poll across restarts).
pub async fn count_workers(client: &Client, status: drover_protocol::WorkerStatus) -> usize {
    let filter = RegistryList {
        status: Some(status),
        ..Default::default()
    };
    list_workers(client, &filter)
        .await
        .map_or(0, |workers| workers.len())
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
