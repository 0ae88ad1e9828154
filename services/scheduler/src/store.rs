//! Run records in KV `DROVER_RUNS`: reads, creation, compare-and-set updates, and the
//! `v1.run.events.<runID>` event that follows every change.
//!
//! Every change after creation goes through [`RunStore::mutate`]: a pure decision about the
//! record as last read, written with compare-and-set, decided again on a conflict.
//!
//! Terminal records are written with a per-message TTL (`run_retention_ms`), so finished
//! runs age out while runs still in flight never expire.

use std::convert::Infallible;
use std::time::Duration;

use async_nats::header::{self, HeaderMap, HeaderValue};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self};
use async_nats::Client;
use bytes::Bytes;
use drover_protocol::envelope::{encode_as, Payload as _};
use drover_protocol::subject::{self, resources};
use drover_protocol::{RunEvent, RunEventRef, RunId, RunRecord, RunStatus, Timestamp};
use tracing::warn;

use crate::metrics;

/// The header a key-value bucket marks deletes and purges with (`DEL`, `PURGE`).
const KV_OPERATION: &str = "KV-Operation";

/// A record and the revision it was read or written at.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The record.
    pub record: RunRecord,
    /// Its revision in the bucket.
    pub revision: u64,
}

/// Any error, kept as the source of the scheduler's own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote the record since it was read.
    #[error("the run record changed since it was read")]
    Conflict,
    /// A record with this runID already exists.
    #[error("the run record already exists")]
    Exists,
    /// JetStream could not be reached or refused the operation.
    #[error("run store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The stored record is not a run record.
    #[error("run store unavailable: undecodable run record {run}: {source}")]
    Undecodable {
        /// The run.
        run: RunId,
        /// What the decoder said.
        source: serde_json::Error,
    },
    /// The record could not be serialised.
    #[error("run store unavailable: serialising a run record: {0}")]
    Unserializable(#[source] serde_json::Error),
}

impl StoreError {
    /// JetStream failed with `error`.
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }
}

/// What a change makes of the record it is shown.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Leave the record as it is.
    Keep,
    /// Write this record.
    Write(Box<RunRecord>),
    /// Write `next`, announcing `via` first: a state the run passed through unstored, so
    /// that watchers still see every transition.
    WriteThrough {
        /// The state passed through.
        via: Box<RunRecord>,
        /// The state written.
        next: Box<RunRecord>,
    },
}

impl Decision {
    /// Writes `next`.
    pub fn write(next: RunRecord) -> Self {
        Self::Write(Box::new(next))
    }
}

impl From<Option<RunRecord>> for Decision {
    /// A transition that may not apply: `None` keeps the record.
    fn from(next: Option<RunRecord>) -> Self {
        next.map_or(Self::Keep, Self::write)
    }
}

/// A change as applied (or found unneeded).
#[derive(Debug, Clone)]
pub struct Mutated {
    /// The record the change was decided on.
    pub before: RunRecord,
    /// The state announced on the way, for [`Decision::WriteThrough`].
    pub via: Option<RunRecord>,
    /// The record now (the same as `before` when nothing was written).
    pub after: RunRecord,
    /// True when a new record was written.
    pub written: bool,
}

/// Why [`RunStore::mutate`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum MutateError<E> {
    /// The change refused the record, as read fresh from the bucket.
    #[error("{0}")]
    Refused(E),
    /// There is no record of the run.
    #[error("no such run record")]
    Missing,
    /// The bucket could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MutateError<Infallible> {
    /// The error of a change that never refuses: `None` when the run has no record.
    pub fn store_error(self) -> Option<StoreError> {
        match self {
            Self::Refused(never) => match never {},
            Self::Missing => None,
            Self::Store(error) => Some(error),
        }
    }
}

/// The scheduler's access to run records.
#[derive(Clone)]
pub struct RunStore {
    js: jetstream::Context,
    kv: kv::Store,
    client: Client,
    retention: Duration,
}

impl std::fmt::Debug for RunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunStore").finish_non_exhaustive()
    }
}

impl RunStore {
    /// Opens the bucket.
    pub async fn open(
        js: jetstream::Context,
        client: Client,
        retention: Duration,
    ) -> Result<Self, StoreError> {
        let kv = js
            .get_key_value(resources::RUNS_BUCKET)
            .await
            .map_err(StoreError::unavailable)?;
        Ok(Self {
            js,
            kv,
            client,
            retention,
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &kv::Store {
        &self.kv
    }

    /// Reads a run.
    ///
    /// The bucket allows direct reads, which any replica answers; in a cluster one that is
    /// catching up (after a partition, say) may not have a record yet. A record found is
    /// safe to use (every write is a compare-and-set on the leader, so an old revision only
    /// costs a retry), but "no such run" decides things: a queue message dropped as an
    /// orphan, a completion refused. So absence is confirmed by the stream's leader.
    pub async fn get(&self, run: &RunId) -> Result<Option<Stored>, StoreError> {
        let entry = self
            .kv
            .entry(run.as_str())
            .await
            .map_err(StoreError::unavailable)?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                self.decode(run, &entry.value, entry.revision).map(Some)
            }
            Some(_) => Ok(None),
            None if self.kv.stream.cached_info().config.num_replicas > 1 => {
                self.get_from_leader(run).await
            }
            None => Ok(None),
        }
    }

    /// Reads a run from the bucket stream's leader (not a direct read).
    async fn get_from_leader(&self, run: &RunId) -> Result<Option<Stored>, StoreError> {
        let subject = format!("{}{}", self.kv.prefix, run.as_str());
        let message = match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => message,
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok(None)
            }
            Err(error) => return Err(StoreError::unavailable(error)),
        };
        let removed = message
            .headers
            .get(KV_OPERATION)
            .is_some_and(|operation| operation.as_str() != "PUT");
        if removed {
            return Ok(None);
        }
        self.decode(run, &message.payload, message.sequence)
            .map(Some)
    }

    fn decode(&self, run: &RunId, value: &[u8], revision: u64) -> Result<Stored, StoreError> {
        let record = serde_json::from_slice(value).map_err(|source| StoreError::Undecodable {
            run: run.clone(),
            source,
        })?;
        Ok(Stored { record, revision })
    }

    /// Creates a run record; fails with [`StoreError::Exists`] if there is one.
    pub async fn create(&self, record: &RunRecord) -> Result<u64, StoreError> {
        let body = serialize(record)?;
        self.kv
            .create(record.run_id.as_str(), body)
            .await
            .map_err(|error| match error.kind() {
                CreateErrorKind::AlreadyExists => StoreError::Exists,
                _ => StoreError::unavailable(error),
            })
    }

    /// Sends the creation of a run record without waiting for JetStream's answer, so that
    /// something else can go out meanwhile; [`RunStore::created`] awaits the answer, which
    /// is [`StoreError::Exists`] if there is a record already.
    pub async fn send_create(&self, record: &RunRecord) -> Result<PublishAckFuture, StoreError> {
        let body = serialize(record)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(0u64),
        );
        let subject = subject::kv_put_subject(resources::RUNS_BUCKET, record.run_id.as_str());
        self.js
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(StoreError::unavailable)
    }

    /// The answer to [`RunStore::send_create`]: the new record's revision.
    pub async fn created(ack: PublishAckFuture) -> Result<u64, StoreError> {
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                Err(StoreError::Exists)
            }
            Err(error) => Err(StoreError::unavailable(error)),
        }
    }

    /// Replaces the record at `revision` with `record` (compare-and-set).
    pub async fn update(&self, record: &RunRecord, revision: u64) -> Result<u64, StoreError> {
        let body = serialize(record)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(revision),
        );
        if record.status.is_terminal() {
            headers.insert(
                header::NATS_MESSAGE_TTL,
                HeaderValue::from(self.retention.as_secs().max(1)),
            );
        }
        let subject = subject::kv_put_subject(resources::RUNS_BUCKET, record.run_id.as_str());
        let ack = self
            .js
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(StoreError::unavailable)?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                ::metrics::counter!(metrics::WRITE_CONFLICTS).increment(1);
                Err(StoreError::Conflict)
            }
            Err(error) => Err(StoreError::unavailable(error)),
        }
    }

    /// Changes a run record under compare-and-set, as the registry's `WorkerStore::mutate`
    /// does for workers.
    ///
    /// `cached` is the caller's copy of the record (read from the bucket when empty), kept
    /// up to date here. `change` sees the record and decides; a refusal decided on the
    /// cached copy is decided again on a fresh read, and a write that meets someone else's
    /// change reads the record again and decides again. Each write is announced on
    /// `v1.run.events.<runID>`.
    pub async fn mutate<E, F>(
        &self,
        run: &RunId,
        cached: &mut Option<Stored>,
        change: F,
    ) -> Result<Mutated, MutateError<E>>
    where
        F: FnMut(&RunRecord) -> Result<Decision, E>,
    {
        self.mutate_then(run, cached, change, |_, _| {}).await
    }

    /// Like [`RunStore::mutate`], with `written` called on the record before and after a
    /// write once it is stored and before it is announced: what must be true by the time
    /// watchers hear of the change (a slot freed before a client sees its run end and
    /// submits the next) goes there.
    pub async fn mutate_then<E, F, W>(
        &self,
        run: &RunId,
        cached: &mut Option<Stored>,
        mut change: F,
        written: W,
    ) -> Result<Mutated, MutateError<E>>
    where
        F: FnMut(&RunRecord) -> Result<Decision, E>,
        W: FnOnce(&RunRecord, &RunRecord),
    {
        let mut written = Some(written);
        let mut fresh = false;
        if cached.is_none() {
            *cached = self.get(run).await?;
            fresh = true;
        }
        loop {
            let Some(current) = cached.as_ref() else {
                return Err(MutateError::Missing);
            };
            let (via, next) = match change(&current.record) {
                Ok(Decision::Keep) => {
                    return Ok(Mutated {
                        before: current.record.clone(),
                        via: None,
                        after: current.record.clone(),
                        written: false,
                    })
                }
                Ok(Decision::Write(next)) => (None, *next),
                Ok(Decision::WriteThrough { via, next }) => (Some(*via), *next),
                Err(refusal) if fresh => return Err(MutateError::Refused(refusal)),
                Err(_) => {
                    // Decided on a copy that may be behind another writer: read it again.
                    *cached = self.get(run).await?;
                    fresh = true;
                    continue;
                }
            };
            match self.update(&next, current.revision).await {
                Ok(revision) => {
                    if let Some(written) = written.take() {
                        written(&current.record, &next);
                    }
                    let previous = current.record.status;
                    let previous = match &via {
                        Some(via) => {
                            self.announce(Some(previous), via).await;
                            via.status
                        }
                        None => previous,
                    };
                    self.announce(Some(previous), &next).await;
                    let stored = Stored {
                        record: next.clone(),
                        revision,
                    };
                    let before = cached.replace(stored).map(|old| old.record);
                    return Ok(Mutated {
                        before: before.expect("a record was read before it was written"),
                        via,
                        after: next,
                        written: true,
                    });
                }
                Err(StoreError::Conflict) => {
                    *cached = self.get(run).await?;
                    fresh = true;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Publishes `v1.run.events.<runID>` for a change from `previous` to `record`.
    pub async fn announce(&self, previous: Option<RunStatus>, record: &RunRecord) {
        if previous == Some(record.status) {
            return;
        }
        metrics::transition(previous, record);
        let event = RunEventRef {
            run_id: &record.run_id,
            status: record.status,
            previous_status: previous,
            attempt: record.attempt,
            at: record
                .transitions
                .last()
                .map_or_else(Timestamp::now, |transition| transition.at),
            run: record,
        };
        if let Err(error) = self
            .client
            .publish(
                subject::run_events(&record.run_id),
                encode_as(RunEvent::KEY, &event),
            )
            .await
        {
            warn!(run = %record.run_id, %error, "could not publish a run event");
        }
    }
}

fn serialize(record: &RunRecord) -> Result<Bytes, StoreError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(StoreError::Unserializable)
}
