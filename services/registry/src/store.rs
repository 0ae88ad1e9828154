//! Worker records: cached reads, compare-and-set writes, and a status event per change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use async_nats::Client;
use drover_protocol::{encode, subject, Timestamp, WorkerEvent, WorkerId, WorkerRecord};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::metrics::{self, WorkerCounts};
use crate::transitions::{Outcome, Rejection};
use drover_service_kit::kv_cache::KvCache;

/// Why a mutation did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MutateError {
    /// The request was refused.
    #[error("{}", .0.message)]
    Rejected(Rejection),
    /// The bucket could not be read or written.
    #[error("worker store unavailable: {0}")]
    Store(String),
}

/// The result of a mutation.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The record after the mutation (or as it was, when nothing changed).
    pub record: Option<WorkerRecord>,
    /// True when a new record was written.
    pub written: bool,
}

/// A change to a worker record: sees the current record and decides.
pub type Change = Box<dyn FnMut(Option<&WorkerRecord>) -> Result<Outcome, Rejection> + Send>;

/// A batched change waiting for the worker's next write, and where its answer goes.
struct Pending {
    change: Change,
    /// How many changes to the worker's runs it carries (for the batch-size histogram).
    weight: usize,
    reply: oneshot::Sender<Result<Applied, MutateError>>,
}

/// Per worker: the lock that serialises writes, and the batched changes queued for it.
#[derive(Default)]
struct Slot {
    lock: tokio::sync::Mutex<()>,
    queued: Mutex<Vec<Pending>>,
}

/// The registry's worker records.
pub struct WorkerStore {
    cache: Arc<KvCache<WorkerRecord>>,
    client: Client,
    slots: Mutex<HashMap<WorkerId, Arc<Slot>>>,
    counts: WorkerCounts,
}

impl std::fmt::Debug for WorkerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerStore").finish_non_exhaustive()
    }
}

impl WorkerStore {
    /// A store over the cache, publishing events with `client`.
    pub fn new(cache: Arc<KvCache<WorkerRecord>>, client: Client) -> Self {
        Self {
            cache,
            client,
            slots: Mutex::new(HashMap::new()),
            counts: WorkerCounts::default(),
        }
    }

    /// The cache behind the store.
    pub fn cache(&self) -> &Arc<KvCache<WorkerRecord>> {
        &self.cache
    }

    /// Counts every cached record by status afresh.
    pub fn recount_all(&self) {
        self.counts.reset(|| self.cache.values());
    }

    /// Counts the worker under key `key` by its cached status.
    pub fn recount(&self, key: &str) {
        self.counts
            .refresh(key, || self.cache.get(key).map(|entry| entry.value.status));
    }

    /// The cached record of a worker.
    pub fn get(&self, worker: &WorkerId) -> Option<WorkerRecord> {
        self.cache
            .get(worker.as_str())
            .map(|entry| (*entry.value).clone())
    }

    /// Every cached record, ordered by workerID.
    pub fn list(&self) -> Vec<WorkerRecord> {
        let mut records: Vec<WorkerRecord> = self
            .cache
            .values()
            .iter()
            .map(|record| (**record).clone())
            .collect();
        records.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        records
    }

    fn slot_for(&self, worker: &WorkerId) -> Arc<Slot> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(slots.entry(worker.clone()).or_default())
    }

    /// Like [`WorkerStore::mutate`], but changes to one worker that arrive while its
    /// record is being written are applied together, in arrival order, in one write.
    ///
    /// Slot claims and releases come in bursts under load; writing each on its own costs a
    /// JetStream write and a delivery to every watcher of the bucket. Each change still
    /// gets its own answer: the record after the batch, or its own refusal.
    pub async fn mutate_batched(
        &self,
        worker: &WorkerId,
        change: Change,
        weight: usize,
    ) -> Result<Applied, MutateError> {
        let slot = self.slot_for(worker);
        let (reply, answer) = oneshot::channel();
        slot.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Pending {
                change,
                weight,
                reply,
            });
        {
            let _guard = slot.lock.lock().await;
            let batch = std::mem::take(
                &mut *slot
                    .queued
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            // Empty when the previous holder of the lock took this change along.
            if !batch.is_empty() {
                let weight: usize = batch.iter().map(|pending| pending.weight).sum();
                ::metrics::histogram!(metrics::BATCH_SIZE).record(weight as f64);
                self.apply_batch(worker, batch).await;
            }
        }
        answer
            .await
            .unwrap_or_else(|_| Err(MutateError::Store("the batch was dropped".to_owned())))
    }

    /// Applies a batch under the worker's lock and answers each change.
    async fn apply_batch(&self, worker: &WorkerId, mut batch: Vec<Pending>) {
        let key = worker.as_str();
        let mut current = self.cache.get(key);
        let mut fresh = false;
        loop {
            let record = current.as_ref().map(|entry| entry.value.as_ref());
            let mut working = record.cloned();
            let mut decisions = Vec::with_capacity(batch.len());
            for pending in &mut batch {
                let decision = (pending.change)(working.as_ref());
                if let Ok(Outcome::Write(next)) = &decision {
                    let mut next = (**next).clone();
                    next.status = next.derive_status();
                    working = Some(next);
                }
                decisions.push(decision.map(|outcome| matches!(outcome, Outcome::Write(_))));
            }
            let undecided = decisions.iter().any(|d| !matches!(d, Ok(true)));
            if undecided && !fresh {
                // A refusal or a no-op decided on cached data: decide again on the bucket.
                match self.refetch(key).await {
                    Ok(entry) => {
                        current = entry;
                        fresh = true;
                        continue;
                    }
                    Err(error) => return answer_all(batch, |_| Err(error.clone())),
                }
            }
            let written = decisions.iter().any(|d| matches!(d, Ok(true)));
            let (Some(mut next), true) = (working, written) else {
                let as_is = record.cloned();
                return answer_batch(batch, decisions, as_is, false);
            };
            let now = Timestamp::now();
            let previous = record.cloned();
            if previous.as_ref().map(|p| p.status) != Some(next.status) {
                next.status_changed_at = now;
            }
            match self
                .write(key, current.as_ref().map(|c| c.revision), &next)
                .await
            {
                Ok(revision) => {
                    self.cache.note_written(key, next.clone(), revision);
                    self.announce(previous.as_ref(), &next, now).await;
                    return answer_batch(batch, decisions, Some(next), true);
                }
                Err(None) => {
                    ::metrics::counter!(metrics::WRITE_CONFLICTS).increment(1);
                    match self.refetch(key).await {
                        Ok(entry) => {
                            current = entry;
                            fresh = true;
                        }
                        Err(error) => return answer_all(batch, |_| Err(error.clone())),
                    }
                }
                Err(Some(error)) => {
                    return answer_all(batch, |_| Err(MutateError::Store(error.clone())))
                }
            }
        }
    }

    /// Creates (no revision) or compare-and-sets a record. `Err(None)` is a conflict.
    async fn write(
        &self,
        key: &str,
        revision: Option<u64>,
        next: &WorkerRecord,
    ) -> Result<u64, Option<String>> {
        let body = serde_json::to_vec(next).map_err(|error| Some(error.to_string()))?;
        match revision {
            None => self
                .cache
                .bucket()
                .create(key, body.into())
                .await
                .map_err(|error| match error.kind() {
                    CreateErrorKind::AlreadyExists => None,
                    _ => Some(error.to_string()),
                }),
            Some(revision) => self
                .cache
                .bucket()
                .update(key, body.into(), revision)
                .await
                .map_err(|error| match error.kind() {
                    UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(error.to_string()),
                }),
        }
    }

    /// Applies `change` to the worker's record under compare-and-set.
    ///
    /// `change` sees the current record and decides; it runs again after a conflict. A
    /// refusal or a no-op decided on cached data is checked once more against the bucket,
    /// so that a cache lagging behind another replica never causes a wrong answer.
    pub async fn mutate<F>(&self, worker: &WorkerId, mut change: F) -> Result<Applied, MutateError>
    where
        F: FnMut(Option<&WorkerRecord>) -> Result<Outcome, Rejection>,
    {
        let slot = self.slot_for(worker);
        let _guard = slot.lock.lock().await;
        let key = worker.as_str();
        let mut current = self.cache.get(key);
        let mut fresh = false;
        loop {
            let record = current.as_ref().map(|entry| entry.value.as_ref());
            let outcome = match change(record) {
                Ok(outcome) => outcome,
                Err(rejection) if fresh => return Err(MutateError::Rejected(rejection)),
                Err(_) => {
                    current = self.refetch(key).await?;
                    fresh = true;
                    continue;
                }
            };
            let mut next = match outcome {
                Outcome::Unchanged if fresh => {
                    return Ok(Applied {
                        record: record.cloned(),
                        written: false,
                    })
                }
                Outcome::Unchanged => {
                    current = self.refetch(key).await?;
                    fresh = true;
                    continue;
                }
                Outcome::Write(next) => *next,
            };
            let now = Timestamp::now();
            let previous = record.cloned();
            next.status = next.derive_status();
            if previous.as_ref().map(|p| p.status) != Some(next.status) {
                next.status_changed_at = now;
            }
            let written = self
                .write(key, current.as_ref().map(|entry| entry.revision), &next)
                .await;
            match written {
                Ok(revision) => {
                    self.cache.note_written(key, next.clone(), revision);
                    self.announce(previous.as_ref(), &next, now).await;
                    return Ok(Applied {
                        record: Some(next),
                        written: true,
                    });
                }
                Err(None) => {
                    ::metrics::counter!(metrics::WRITE_CONFLICTS).increment(1);
                    debug!(worker = %worker, "worker record changed underneath, retrying");
                    current = self.refetch(key).await?;
                    fresh = true;
                }
                Err(Some(error)) => return Err(MutateError::Store(error)),
            }
        }
    }

    async fn refetch(
        &self,
        key: &str,
    ) -> Result<Option<drover_service_kit::kv_cache::Versioned<Arc<WorkerRecord>>>, MutateError>
    {
        self.cache
            .fetch(key)
            .await
            .map_err(|error| MutateError::Store(error.to_string()))
    }

    /// Publishes `v1.registry.events.<w>` when the status or the incarnation changed; the
    /// worker counts have the change before the event is out.
    async fn announce(&self, previous: Option<&WorkerRecord>, next: &WorkerRecord, now: Timestamp) {
        self.recount(next.worker_id.as_str());
        metrics::count_lost(previous.map(|record| record.status), next.status);
        let previous_status = previous.map(|record| record.status);
        let new_incarnation = previous.map(|record| record.incarnation) != Some(next.incarnation);
        if previous_status == Some(next.status) && !new_incarnation {
            return;
        }
        if let Some(previous) = previous {
            crate::spans::record(previous, next, now);
        }
        ::metrics::counter!(metrics::STATUS_CHANGES, "status" => next.status.as_str()).increment(1);
        let event = WorkerEvent {
            worker_id: next.worker_id.clone(),
            incarnation: next.incarnation,
            status: next.status,
            previous_status,
            at: now,
            worker: next.clone(),
        };
        debug!(worker = %next.worker_id, status = %next.status, "worker status changed");
        if let Err(error) = self
            .client
            .publish(subject::registry_events(&next.worker_id), encode(&event))
            .await
        {
            warn!(worker = %next.worker_id, %error, "could not publish worker event");
        }
    }
}

/// Answers every change of a batch with `answer`.
fn answer_all(batch: Vec<Pending>, answer: impl Fn(usize) -> Result<Applied, MutateError>) {
    for (index, pending) in batch.into_iter().enumerate() {
        let _ = pending.reply.send(answer(index));
    }
}

/// Answers each change of a batch with its own decision and the record it led to.
fn answer_batch(
    batch: Vec<Pending>,
    decisions: Vec<Result<bool, Rejection>>,
    record: Option<WorkerRecord>,
    written: bool,
) {
    for (pending, decision) in batch.into_iter().zip(decisions) {
        let answer = match decision {
            Ok(wrote) => Ok(Applied {
                record: record.clone(),
                written: written && wrote,
            }),
            Err(rejection) => Err(MutateError::Rejected(rejection)),
        };
        let _ = pending.reply.send(answer);
    }
}
