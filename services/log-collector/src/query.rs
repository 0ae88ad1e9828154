//! `v1.logs.query`: a page of stored records, oldest first, read with one batched direct
//! get (ADR-31) on `DROVER_LOGS` filtered by subject.
//!
//! Direct gets are answered by any replica of the stream, so reads spread over the cluster
//! and never touch a consumer. The batch is bounded by `limit` and by a byte budget that keeps
//! the reply under the server's `max_payload`.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::{Client, Message, StatusCode};
use bytes::Bytes;
use drover_protocol::envelope::decode_query;
use drover_protocol::subject::{self, resources};
use drover_protocol::{encode, LogPage, LogsQuery};
use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use crate::cursor::{assemble, Cursor, Scanned};
use crate::error::LogError;
use crate::metrics;

/// How long a query waits for the stream to answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The status of the message that ends a batched direct get.
const END_OF_BATCH: u16 = 204;
/// Room left in a reply for the envelope and headers.
const REPLY_MARGIN: usize = 8 * 1024;

/// The body of a batched direct get.
#[derive(Debug, Serialize)]
struct BatchGet<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<String>,
    next_by_subj: &'a str,
    batch: u32,
    max_bytes: usize,
}

/// Answers log queries.
pub(crate) struct Queries {
    pub nats: Client,
    pub max_payload_bytes: usize,
}

impl Queries {
    /// Answers one request with an encoded `v1.logs.records`, or the error to reply with.
    pub(crate) async fn answer(&self, message: &Message) -> Result<Bytes, LogError> {
        let started = Instant::now();
        let query: LogsQuery = decode_query(&message.payload, self.max_payload_bytes)?;
        let cursor = match query.cursor.as_deref() {
            Some(text) => {
                Some(Cursor::parse(text).ok_or_else(|| LogError::InvalidCursor(truncate(text)))?)
            }
            None => None,
        };
        let limit = query
            .limit
            .unwrap_or(LogsQuery::DEFAULT_LIMIT)
            .clamp(1, LogsQuery::MAX_LIMIT);
        let start = Cursor::start(cursor, query.since);
        let filter = subject::logs_filter(query.run_id.as_ref(), query.worker_id.as_ref());
        let budget = self.budget();
        let scanned = self
            .scan(&filter, start, limit, budget)
            .await
            .map_err(LogError::StoreUnavailable)?;
        let page = assemble(scanned, start, query.since, budget);
        if page.unreadable > 0 {
            ::metrics::counter!(metrics::UNREADABLE_RECORDS).increment(page.unreadable);
        }
        ::metrics::histogram!(metrics::QUERY_RECORDS).record(page.records.len() as f64);
        ::metrics::histogram!(metrics::QUERY_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(encode(&LogPage {
            logs: page.records,
            next_cursor: Some(page.next.encode()),
        }))
    }

    /// Bytes of records a reply may carry.
    fn budget(&self) -> usize {
        let max_payload = self.nats.server_info().max_payload;
        if max_payload > 2 * REPLY_MARGIN {
            max_payload - REPLY_MARGIN
        } else {
            max_payload / 2
        }
    }

    /// Reads up to `limit` stored messages matching `filter` from `start`, oldest first.
    async fn scan(
        &self,
        filter: &str,
        start: Cursor,
        limit: u32,
        budget: usize,
    ) -> Result<Vec<Scanned>, String> {
        let (seq, start_time) = match start {
            Cursor::Seq(seq) => (Some(seq), None),
            Cursor::Time(time) => (None, Some(time.to_string())),
        };
        let request = BatchGet {
            seq,
            start_time,
            next_by_subj: filter,
            batch: limit,
            max_bytes: budget,
        };
        let body = serde_json::to_vec(&request).map_err(|error| error.to_string())?;
        let inbox = self.nats.new_inbox();
        let mut replies = self
            .nats
            .subscribe(inbox.clone())
            .await
            .map_err(|error| error.to_string())?;
        self.nats
            .publish_with_reply(
                subject::direct_get(resources::LOGS_STREAM),
                inbox,
                body.into(),
            )
            .await
            .map_err(|error| error.to_string())?;
        let deadline = Instant::now() + READ_TIMEOUT;
        let mut scanned = Vec::new();
        loop {
            let reply = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => return Err("the reply subscription closed".to_owned()),
                Err(_) => return Err("timed out".to_owned()),
            };
            match reply.status {
                None => {
                    let message =
                        StreamMessage::try_from(reply).map_err(|error| error.to_string())?;
                    scanned.push(Scanned {
                        seq: message.sequence,
                        time_nanos: message.time.unix_timestamp_nanos(),
                        payload: message.payload,
                    });
                    if scanned.len() >= limit as usize {
                        // The end-of-batch marker follows; nothing more is needed.
                        return Ok(scanned);
                    }
                }
                // 204 ends a batch; 404 means nothing matched at all.
                Some(status)
                    if status.as_u16() == END_OF_BATCH || status == StatusCode::NOT_FOUND =>
                {
                    return Ok(scanned)
                }
                Some(StatusCode::NO_RESPONDERS) => {
                    return Err("the logs stream is not reachable".to_owned())
                }
                Some(status) => {
                    let description = reply.description.unwrap_or_default();
                    return Err(format!("direct get answered {status} {description}"));
                }
            }
        }
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}
