//! `v1.run.get` and `v1.run.list`: served by every replica, straight from the bucket.

use async_nats::Message;
use bytes::Bytes;
use drover_protocol::envelope::{decode, decode_query};
use drover_protocol::subject::{self, resources};
use drover_protocol::{encode, ErrorCode, ErrorPayload, RunGet, RunId, RunList, RunPage};
use drover_service_kit::Settings;
use futures::StreamExt;

use crate::store::RunStore;

/// How many records one list request reads at most; a page with fewer matches carries a
/// cursor to continue from.
const SCAN_LIMIT: usize = 5_000;

fn unavailable(error: impl std::fmt::Display, subject: &str) -> ErrorPayload {
    ErrorPayload::new(ErrorCode::Unavailable, error.to_string(), subject)
}

/// `v1.run.get`.
pub(crate) async fn get(
    store: &RunStore,
    settings: &Settings,
    message: &Message,
) -> Result<Bytes, ErrorPayload> {
    let subject = message.subject.as_str();
    let request: RunGet = decode(&message.payload, settings.max_payload_bytes)
        .map_err(|error| error.to_error(subject))?;
    match store
        .get(&request.run_id)
        .await
        .map_err(|error| unavailable(error, subject))?
    {
        Some(stored) => Ok(encode(&stored.record)),
        None => Err(ErrorPayload::new(
            ErrorCode::UnknownRun,
            format!("no run {}", request.run_id),
            subject,
        )),
    }
}

/// `v1.run.list`: newest first (runIDs sort by creation time), filtered, paged.
pub(crate) async fn list(
    store: &RunStore,
    settings: &Settings,
    message: &Message,
) -> Result<Bytes, ErrorPayload> {
    let subject = message.subject.as_str();
    let request: RunList = decode_query(&message.payload, settings.max_payload_bytes)
        .map_err(|error| error.to_error(subject))?;
    let limit = request
        .limit
        .unwrap_or(RunList::DEFAULT_LIMIT)
        .clamp(1, RunList::MAX_LIMIT) as usize;
    let cursor = match &request.cursor {
        Some(cursor) => Some(RunId::parse(cursor.as_str()).map_err(|_| {
            ErrorPayload::new(
                ErrorCode::InvalidCursor,
                format!("cursor {cursor:?} was not handed out by v1.run.list"),
                subject,
            )
        })?),
        None => None,
    };
    // The stream's subject list is a server-side snapshot: unlike a KV key watch, it cannot
    // miss a key whose record is rewritten while the list is read.
    let prefix = subject::kv_all_keys(resources::RUNS_BUCKET);
    let mut keys = Vec::new();
    let mut listing = store
        .bucket()
        .stream
        .info_with_subjects(&prefix)
        .await
        .map_err(|error| unavailable(error, subject))?;
    while let Some(entry) = listing.next().await {
        let (key_subject, _) = entry.map_err(|error| unavailable(error, subject))?;
        let key = key_subject.trim_start_matches(prefix.trim_end_matches('>'));
        if let Ok(run) = RunId::parse(key) {
            if cursor.as_ref().is_none_or(|cursor| &run < cursor) {
                keys.push(run);
            }
        }
    }
    keys.sort_unstable_by(|a, b| b.cmp(a));
    let mut runs = Vec::new();
    let mut next_cursor = None;
    for (scanned, run) in keys.iter().enumerate() {
        if runs.len() == limit || scanned == SCAN_LIMIT {
            next_cursor = Some(keys[scanned - 1].to_string());
            break;
        }
        let Some(stored) = store
            .get(run)
            .await
            .map_err(|error| unavailable(error, subject))?
        else {
            continue;
        };
        let record = stored.record;
        let keep = request.status.is_none_or(|status| record.status == status)
            && request
                .routine_id
                .as_ref()
                .is_none_or(|routine| &record.routine_id == routine)
            && request
                .worker_id
                .as_ref()
                .is_none_or(|worker| record.worker_id.as_ref() == Some(worker));
        if keep {
            runs.push(record);
        }
    }
    Ok(encode(&RunPage { runs, next_cursor }))
}
