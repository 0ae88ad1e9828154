//! `v1.run.get` and `v1.run.list`: served by every replica, straight from the bucket.

use async_nats::Message;
use bytes::Bytes;
use drover_protocol::envelope::{decode, decode_query};
use drover_protocol::subject::{self, resources};
use drover_protocol::{encode, RunGet, RunId, RunList, RunPage};
use drover_service_kit::Settings;
use futures::StreamExt;

use crate::error::{Error, QueryError};
use crate::store::RunStore;

/// How many records one list request reads at most; a page with fewer matches carries a
/// cursor to continue from.
const SCAN_LIMIT: usize = 5_000;

fn unavailable(error: impl Into<crate::store::BoxError>) -> QueryError {
    QueryError::Unavailable(error.into())
}

/// `v1.run.get`.
pub(crate) async fn get(
    store: &RunStore,
    settings: &Settings,
    message: &Message,
) -> Result<Bytes, Error> {
    let request: RunGet = decode(&message.payload, settings.max_payload_bytes)?;
    match store.get(&request.run_id).await.map_err(unavailable)? {
        Some(stored) => Ok(encode(&stored.record)),
        None => Err(QueryError::UnknownRun(request.run_id).into()),
    }
}

/// `v1.run.list`: newest first (runIDs sort by creation time), filtered, paged.
pub(crate) async fn list(
    store: &RunStore,
    settings: &Settings,
    message: &Message,
) -> Result<Bytes, Error> {
    let request: RunList = decode_query(&message.payload, settings.max_payload_bytes)?;
    let limit = request
        .limit
        .unwrap_or(RunList::DEFAULT_LIMIT)
        .clamp(1, RunList::MAX_LIMIT) as usize;
    let cursor = match &request.cursor {
        Some(cursor) => Some(
            RunId::parse(cursor.as_str()).map_err(|_| QueryError::InvalidCursor(cursor.clone()))?,
        ),
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
        .map_err(unavailable)?;
    while let Some(entry) = listing.next().await {
        let (key_subject, _) = entry.map_err(unavailable)?;
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
        let Some(stored) = store.get(run).await.map_err(unavailable)? else {
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
