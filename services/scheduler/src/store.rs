//! Run records in KV `DROVER_RUNS`: reads, creation, compare-and-set updates, and the
//! `v1.run.events.<runID>` event that follows every change.
//!
//! Terminal records are written with a per-message TTL (`run_retention_ms`), so finished
//! runs age out while runs still in flight never expire.

use std::time::Duration;

use async_nats::header::{self, HeaderMap, HeaderValue};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::{self};
use async_nats::Client;
use bytes::Bytes;
use drover_protocol::subject::{self, resources};
use drover_protocol::{encode, RunEvent, RunId, RunRecord, RunStatus, Timestamp};
use tracing::warn;

use crate::metrics;

/// A record and the revision it was read or written at.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The record.
    pub record: RunRecord,
    /// Its revision in the bucket.
    pub revision: u64,
}

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
    Unavailable(String),
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
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
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
    pub async fn get(&self, run: &RunId) -> Result<Option<Stored>, StoreError> {
        let entry = self
            .kv
            .entry(run.as_str())
            .await
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record = serde_json::from_slice(&entry.value).map_err(|error| {
            StoreError::Unavailable(format!("undecodable run record {run}: {error}"))
        })?;
        Ok(Some(Stored {
            record,
            revision: entry.revision,
        }))
    }

    /// Creates a run record; fails with [`StoreError::Exists`] if there is one.
    pub async fn create(&self, record: &RunRecord) -> Result<u64, StoreError> {
        let body = serialize(record)?;
        self.kv
            .create(record.run_id.as_str(), body)
            .await
            .map_err(|error| match error.kind() {
                CreateErrorKind::AlreadyExists => StoreError::Exists,
                _ => StoreError::Unavailable(error.to_string()),
            })
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
            .map_err(|error| StoreError::Unavailable(error.to_string()))?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                ::metrics::counter!(metrics::WRITE_CONFLICTS).increment(1);
                Err(StoreError::Conflict)
            }
            Err(error) => Err(StoreError::Unavailable(error.to_string())),
        }
    }

    /// Publishes `v1.run.events.<runID>` for a change from `previous` to `record`.
    pub async fn announce(&self, previous: Option<RunStatus>, record: &RunRecord) {
        if previous == Some(record.status) {
            return;
        }
        ::metrics::counter!(metrics::RUN_TRANSITIONS, "status" => record.status.as_str())
            .increment(1);
        let event = RunEvent {
            run_id: record.run_id.clone(),
            status: record.status,
            previous_status: previous,
            attempt: record.attempt,
            at: record
                .transitions
                .last()
                .map_or_else(Timestamp::now, |transition| transition.at),
            run: record.clone(),
        };
        if let Err(error) = self
            .client
            .publish(subject::run_events(&record.run_id), encode(&event))
            .await
        {
            warn!(run = %record.run_id, %error, "could not publish a run event");
        }
    }
}

fn serialize(record: &RunRecord) -> Result<Bytes, StoreError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|error| StoreError::Unavailable(format!("serialising a run record: {error}")))
}
