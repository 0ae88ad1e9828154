//! A worker written against the bare protocol: a NATS client and JSON, nothing else.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    encode, CheckPulse, GivePulse, Payload, Ready, Register, Registered, RoutineId, RunRef,
    Terminating, WorkerId, WorkerStatus,
};
use drover_testkit::call;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A message from Drover into the worker's inbox.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Its directive key, e.g. `v1.routine.request_start`.
    pub key: &'static str,
    /// The payload.
    pub payload: Value,
    /// NATS headers (trace context).
    pub headers: Option<HeaderMap>,
}

struct Shared {
    incarnation: u64,
    status: WorkerStatus,
    runs: Vec<RunRef>,
}

/// A worker that registers, sends ready and pulses on its own, and hands everything else
/// in its inbox to the test.
pub struct SimWorker {
    /// Its workerID.
    pub id: WorkerId,
    client: Client,
    shared: Arc<Mutex<Shared>>,
    alive: Arc<AtomicBool>,
    inbox: mpsc::UnboundedReceiver<Inbound>,
    tasks: Vec<JoinHandle<()>>,
    /// Timings from `v1.registered`.
    pub registered: Registered,
}

/// What a [`SimWorker`] registers with.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// workerID.
    pub id: String,
    /// Routines.
    pub routines: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Capacity.
    pub capacity: u32,
    /// Whether it pulses on its own (it always answers probes while alive).
    pub pulses: bool,
}

impl WorkerSpec {
    /// A worker with one slot and no labels.
    pub fn new(id: &str, routines: &[&str]) -> Self {
        Self {
            id: id.to_owned(),
            routines: routines.iter().map(|r| (*r).to_owned()).collect(),
            labels: BTreeMap::new(),
            capacity: 1,
            pulses: true,
        }
    }

    /// Makes the worker pulse only in answer to probes.
    pub fn only_answer_probes(mut self) -> Self {
        self.pulses = false;
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets the capacity.
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// Registers, subscribes to the inbox, sends ready and starts pulsing.
    pub async fn start(self, client: &Client) -> SimWorker {
        SimWorker::start(client, self).await
    }
}

impl SimWorker {
    /// Registers `spec` and brings the worker to ready.
    pub async fn start(client: &Client, spec: WorkerSpec) -> Self {
        let id = WorkerId::parse(spec.id.as_str()).unwrap();
        let register = Register {
            worker_id: id.clone(),
            routines: spec
                .routines
                .iter()
                .map(|routine| RoutineId::parse(routine.as_str()).unwrap())
                .collect(),
            labels: spec.labels.clone(),
            capacity: spec.capacity,
            name: Some(format!("simulated {}", spec.id)),
            sdk: None,
            host: None,
            pid: Some(u64::from(std::process::id())),
        };
        let registered: Registered =
            call(client, subject::from_worker(keys::REGISTER, &id), &register)
                .await
                .unwrap_or_else(|error| panic!("registering {id} failed: {error}"));
        let shared = Arc::new(Mutex::new(Shared {
            incarnation: registered.incarnation,
            status: WorkerStatus::Idle,
            runs: Vec::new(),
        }));
        let alive = Arc::new(AtomicBool::new(true));
        let (sender, inbox) = mpsc::unbounded_channel();
        let mut subscriber = client.subscribe(subject::worker_inbox(&id)).await.unwrap();
        client.flush().await.unwrap();

        let mut tasks = Vec::new();
        {
            let client = client.clone();
            let id = id.clone();
            let shared = Arc::clone(&shared);
            let alive = Arc::clone(&alive);
            tasks.push(tokio::spawn(async move {
                while let Some(message) = subscriber.next().await {
                    let Ok((_, key)) = subject::parse_worker_inbox(message.subject.as_str()) else {
                        continue;
                    };
                    let body: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
                    if key == keys::CHECK_PULSE {
                        if alive.load(Ordering::Acquire) {
                            let probe: CheckPulse =
                                serde_json::from_value(body["payload"].clone()).unwrap();
                            pulse(&client, &id, &shared, Some(probe.id)).await;
                        }
                        continue;
                    }
                    let _ = sender.send(Inbound {
                        key,
                        payload: body["payload"].clone(),
                        headers: message.headers.clone(),
                    });
                }
            }));
        }
        pulse(client, &id, &shared, None).await;
        client
            .publish(
                subject::from_worker(keys::READY, &id),
                encode(&Ready {
                    incarnation: registered.incarnation,
                }),
            )
            .await
            .unwrap();
        if spec.pulses {
            let client = client.clone();
            let id = id.clone();
            let shared = Arc::clone(&shared);
            let alive = Arc::clone(&alive);
            let period = Duration::from_millis(registered.heartbeat_interval_ms);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                loop {
                    tick.tick().await;
                    if alive.load(Ordering::Acquire) {
                        pulse(&client, &id, &shared, None).await;
                    }
                }
            }));
        }
        client.flush().await.unwrap();
        Self {
            id,
            client: client.clone(),
            shared,
            alive,
            inbox,
            tasks,
            registered,
        }
    }

    /// The incarnation from registration.
    pub fn incarnation(&self) -> u64 {
        self.shared.lock().unwrap().incarnation
    }

    /// Stops pulsing and answering probes, as a dead process would.
    pub fn go_silent(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// Sets what the worker reports in its pulses.
    pub fn report(&self, status: WorkerStatus, runs: Vec<RunRef>) {
        let mut shared = self.shared.lock().unwrap();
        shared.status = status;
        shared.runs = runs;
    }

    /// Sends `v1.terminating`.
    pub async fn terminating(&self, reason: &str) {
        self.report(WorkerStatus::Terminating, Vec::new());
        self.publish(
            keys::TERMINATING,
            &Terminating {
                incarnation: self.incarnation(),
                reason: Some(reason.to_owned()),
            },
        )
        .await;
    }

    /// Publishes a directive on `<key>.<workerID>`.
    pub async fn publish<T: Payload>(&self, key: &str, payload: &T) {
        self.client
            .publish(subject::from_worker(key, &self.id), encode(payload))
            .await
            .unwrap();
        self.client.flush().await.unwrap();
    }

    /// Publishes any JSON under `key` on `<key>.<workerID>`.
    pub async fn publish_json<T: Serialize>(&self, key: &str, payload: &T) {
        self.client
            .publish(
                subject::from_worker(key, &self.id),
                drover_protocol::envelope::encode_as(key, payload),
            )
            .await
            .unwrap();
        self.client.flush().await.unwrap();
    }

    /// Waits for the next inbox message with directive key `key`, skipping others.
    pub async fn recv(&mut self, key: &str, timeout: Duration) -> Inbound {
        self.try_recv(key, timeout)
            .await
            .unwrap_or_else(|| panic!("worker {} got no {key} within {timeout:?}", self.id))
    }

    /// Like [`Self::recv`], or `None` on timeout.
    pub async fn try_recv(&mut self, key: &str, timeout: Duration) -> Option<Inbound> {
        let deadline = tokio::time::Instant::now() + drover_testkit::patient(timeout);
        loop {
            let message = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .ok()??;
            if message.key == key {
                return Some(message);
            }
        }
    }

    /// Waits for the next inbox message whose key is one of `keys`, skipping others.
    pub async fn try_recv_any(&mut self, keys: &[&str], timeout: Duration) -> Option<Inbound> {
        let deadline = tokio::time::Instant::now() + drover_testkit::patient(timeout);
        loop {
            let message = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .ok()??;
            if keys.contains(&message.key) {
                return Some(message);
            }
        }
    }

    /// Takes the inbox away, for a loop that serves it (see [`crate::runner::Runner`]).
    pub fn take_inbox(&mut self) -> mpsc::UnboundedReceiver<Inbound> {
        let (_, closed) = mpsc::unbounded_channel();
        std::mem::replace(&mut self.inbox, closed)
    }

    /// Everything in the inbox right now.
    pub fn drain(&mut self) -> Vec<Inbound> {
        let mut messages = Vec::new();
        while let Ok(message) = self.inbox.try_recv() {
            messages.push(message);
        }
        messages
    }

    /// The worker's NATS client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

async fn pulse(client: &Client, id: &WorkerId, shared: &Mutex<Shared>, probe: Option<String>) {
    let payload = {
        let shared = shared.lock().unwrap();
        GivePulse {
            incarnation: shared.incarnation,
            status: shared.status,
            runs: shared.runs.clone(),
            id: probe,
        }
    };
    let _ = client
        .publish(subject::from_worker(keys::GIVE_PULSE, id), encode(&payload))
        .await;
}

impl Drop for SimWorker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
