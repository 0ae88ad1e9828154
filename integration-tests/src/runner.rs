//! A worker that runs its assignments: the [`SimWorker`] plus a loop that answers each
//! `request_start` with `starting` and `completed` as a routine decides.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    encode, Assignment, Cancel, Completed, Outcome, Payload, RunError, RunId, Starting, WorkerId,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::worker::{Inbound, SimWorker};

/// What the routine does with an assignment.
#[derive(Debug, Clone)]
pub enum Act {
    /// Starts, then succeeds with this result.
    Succeed(Value),
    /// Starts, then fails with this error.
    Fail(RunError),
    /// Starts, waits, then does the rest.
    After(Duration, Box<Act>),
    /// Starts and never finishes (until cancelled).
    Hang,
    /// Does not even acknowledge the assignment.
    Ignore,
}

/// One assignment the worker received.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The worker that ran it.
    pub worker: WorkerId,
    /// The assignment.
    pub assignment: Assignment,
    /// The trace context it came with.
    pub traceparent: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

/// Shared record of what a runner saw.
#[derive(Debug, Default)]
pub struct Log {
    /// Assignments received.
    pub executions: Vec<Execution>,
    /// Cancels received.
    pub cancels: Vec<(Cancel, Instant)>,
    /// Completions sent: run, attempt, outcome.
    pub completed: Vec<(RunId, u64, Outcome)>,
}

/// A running worker.
pub struct Runner {
    /// Its workerID.
    pub id: WorkerId,
    /// What it saw.
    pub log: Arc<Mutex<Log>>,
    others: mpsc::UnboundedReceiver<Inbound>,
    worker: Arc<SimWorker>,
    task: JoinHandle<()>,
}

/// Sends a directive as a request, retried until JetStream acknowledges it.
pub async fn publish_acked<T: Payload>(client: &Client, subject: String, payload: &T) {
    let body = encode(payload);
    for _ in 0..50 {
        if let Ok(Ok(reply)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.request(subject.clone(), body.clone()),
        )
        .await
        {
            let ack: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
            if ack.get("seq").is_some() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{subject} was never acknowledged");
}

impl Runner {
    /// Runs `worker`'s assignments as `decide` says.
    pub fn start(
        worker: SimWorker,
        decide: impl Fn(&Assignment) -> Act + Send + Sync + 'static,
    ) -> Self {
        Self::start_with_inbox(worker, decide)
    }

    fn start_with_inbox(
        mut worker: SimWorker,
        decide: impl Fn(&Assignment) -> Act + Send + Sync + 'static,
    ) -> Self {
        let id = worker.id.clone();
        let log = Arc::new(Mutex::new(Log::default()));
        let (others_tx, others) = mpsc::unbounded_channel();
        let mut inbox = worker.take_inbox();
        let worker = Arc::new(worker);
        let decide = Arc::new(decide);
        let task = {
            let log = Arc::clone(&log);
            let worker = Arc::clone(&worker);
            tokio::spawn(async move {
                let mut running: std::collections::HashMap<(RunId, u64), JoinHandle<()>> =
                    std::collections::HashMap::new();
                while let Some(message) = inbox.recv().await {
                    match message.key {
                        keys::REQUEST_START => {
                            let assignment: Assignment =
                                serde_json::from_value(message.payload.clone()).unwrap();
                            let traceparent = message
                                .headers
                                .as_ref()
                                .and_then(|headers| headers.get("traceparent"))
                                .map(|value| value.as_str().to_owned());
                            log.lock().unwrap().executions.push(Execution {
                                worker: worker.id.clone(),
                                assignment: assignment.clone(),
                                traceparent,
                                at: Instant::now(),
                            });
                            let act = decide(&assignment);
                            let key = (assignment.run_id.clone(), assignment.attempt);
                            let handle = tokio::spawn(perform(
                                Arc::clone(&worker),
                                Arc::clone(&log),
                                assignment,
                                act,
                            ));
                            running.insert(key, handle);
                        }
                        keys::CANCEL => {
                            let cancel: Cancel =
                                serde_json::from_value(message.payload.clone()).unwrap();
                            if let Some(handle) =
                                running.remove(&(cancel.run_id.clone(), cancel.attempt))
                            {
                                handle.abort();
                            }
                            log.lock().unwrap().cancels.push((cancel, Instant::now()));
                        }
                        _ => {
                            let _ = others_tx.send(message);
                        }
                    }
                }
            })
        };
        Self {
            id,
            log,
            others,
            worker,
            task,
        }
    }

    /// The next inbox message that is not an assignment or a cancel, with key `key`.
    pub async fn recv(&mut self, key: &str, timeout: Duration) -> Inbound {
        let deadline = tokio::time::Instant::now() + drover_testkit::patient(timeout);
        loop {
            let message = tokio::time::timeout_at(deadline, self.others.recv())
                .await
                .unwrap_or_else(|_| panic!("{} got no {key} in time", self.id))
                .expect("inbox open");
            if message.key == key {
                return message;
            }
        }
    }

    /// The underlying worker (to go silent, terminate, publish by hand).
    pub fn worker(&self) -> &SimWorker {
        &self.worker
    }

    /// How many assignments arrived.
    pub fn executions(&self) -> Vec<Execution> {
        self.log.lock().unwrap().executions.clone()
    }

    /// Cancels received.
    pub fn cancels(&self) -> Vec<Cancel> {
        self.log
            .lock()
            .unwrap()
            .cancels
            .iter()
            .map(|(cancel, _)| cancel.clone())
            .collect()
    }

    /// Stops everything, as a killed process would: no pulses, no more directives.
    pub fn kill(&self) {
        self.worker.go_silent();
        self.task.abort();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn perform(worker: Arc<SimWorker>, log: Arc<Mutex<Log>>, assignment: Assignment, act: Act) {
    let client = worker.client().clone();
    if matches!(act, Act::Ignore) {
        return;
    }
    publish_acked(
        &client,
        subject::from_worker(keys::STARTING, &worker.id),
        &Starting {
            run_id: assignment.run_id.clone(),
            attempt: assignment.attempt,
        },
    )
    .await;
    let mut act = act;
    loop {
        match act {
            Act::After(delay, next) => {
                tokio::time::sleep(delay).await;
                act = *next;
            }
            Act::Hang | Act::Ignore => return,
            Act::Succeed(result) => {
                complete(
                    &client,
                    &worker.id,
                    &log,
                    &assignment,
                    Outcome::Succeeded,
                    Some(result),
                    None,
                )
                .await;
                return;
            }
            Act::Fail(error) => {
                complete(
                    &client,
                    &worker.id,
                    &log,
                    &assignment,
                    Outcome::Failed,
                    None,
                    Some(error),
                )
                .await;
                return;
            }
        }
    }
}

async fn complete(
    client: &Client,
    worker: &WorkerId,
    log: &Mutex<Log>,
    assignment: &Assignment,
    outcome: Outcome,
    result: Option<Value>,
    error: Option<RunError>,
) {
    publish_acked(
        client,
        subject::from_worker(keys::COMPLETED, worker),
        &Completed {
            run_id: assignment.run_id.clone(),
            attempt: assignment.attempt,
            outcome,
            result,
            error,
        },
    )
    .await;
    log.lock()
        .unwrap()
        .completed
        .push((assignment.run_id.clone(), assignment.attempt, outcome));
}
