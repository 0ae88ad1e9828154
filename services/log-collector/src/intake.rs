//! The intake loop: while this replica leads, read `DROVER_LOG_INTAKE` through the durable
//! consumer `log-collector` and store every line in `DROVER_LOGS`, exactly once and in the
//! order the lines arrived.
//!
//! Order holds because one process reads at a time (the leader), a batch is published in
//! order on one connection, and any break in the consumer's deliveries is repaired by
//! resetting the consumer to its ack floor, which delivers the unacknowledged messages again
//! in stream order before anything newer. Exactly once holds because a message is
//! acknowledged only after its record's PubAck, each record carries the intake sequence in
//! its `Nats-Msg-Id` (a repeat within the stream's dedup window is dropped), and a new
//! leader skips the messages whose records the stream already holds, which covers a
//! restart after the dedup window too.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::{ConsumerResetErrorKind, Stream};
use async_nats::jetstream::{self, Message};
use async_nats::Client;
use drover_protocol::subject::resources;
use drover_protocol::{Timestamp, WorkerRecord};
use drover_service_kit::kv_cache::KvCache;
use drover_service_kit::{connected, connection_lost, Backoff};
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::batch::Received;
use crate::enrich::RunCache;
use crate::metrics;

/// Most intake messages asked for in one pull, and handled in one batch.
pub const PULL_BATCH: usize = 512;
/// How long one pull request lives on the server. A new leader waits this long for the
/// pulls of the one before it to end.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Why the intake stopped reading and must take the consumer over again.
#[derive(Debug)]
pub(crate) enum Interrupted {
    /// Deliveries were missed (a dropped connection): they wait unacknowledged.
    Gap,
    /// A record could not be stored.
    Publish(String),
    /// Whether a line's worker is registered could not be read.
    Lookup(String),
}

/// What a takeover of the intake consumer found.
pub(crate) struct Session {
    consumer: PullConsumer,
    /// Delivery sequence of the next message, known when the consumer could be reset.
    next_delivery: Option<u64>,
    /// The intake stream's creation time, part of every record's message ID.
    pub epoch: String,
    /// Intake messages up to this sequence were stored by an earlier leader.
    pub skip_through: u64,
}

/// Everything the intake works with.
pub(crate) struct Intake {
    pub nats: Client,
    pub js: jetstream::Context,
    pub intake: Stream,
    pub logs: Stream,
    pub runs: Arc<RunCache>,
    pub max_payload_bytes: usize,
    /// The worker records: whether a line's worker is registered, and which attempt of a
    /// run it holds.
    pub workers: Arc<KvCache<WorkerRecord>>,
    /// True when spans are exported: lines are recorded on their runs' traces.
    pub traced: bool,
}

impl Intake {
    /// Stores intake until `term` is cancelled (leadership ended or shutdown).
    pub(crate) async fn lead(self: Arc<Self>, term: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut reason = "takeover";
        // What an earlier leader stored is read once per term: after a break of its own,
        // this leader relies on dedup, so that nothing it failed to store is skipped.
        let mut earlier: Option<(String, u64)> = None;
        while !term.is_cancelled() {
            let mut session = match self.take_over(&term, reason).await {
                Ok(session) => session,
                Err(error) => {
                    warn!(error, "could not take over the intake consumer, retrying");
                    backoff.wait(&term).await;
                    continue;
                }
            };
            match &earlier {
                Some((epoch, seq)) if *epoch == session.epoch => session.skip_through = *seq,
                _ => {
                    session.skip_through = self.stored_through(&session.epoch).await;
                    earlier = Some((session.epoch.clone(), session.skip_through));
                }
            }
            info!(skip_through = session.skip_through, "reading log intake");
            match self.drain(&session, &term).await {
                Ok(()) => return,
                Err(Interrupted::Gap) => {
                    info!("intake deliveries were missed, reading them again");
                    reason = "gap";
                }
                Err(Interrupted::Publish(error)) => {
                    warn!(error, "records could not be stored, reading them again");
                    reason = "publish";
                    backoff.wait(&term).await;
                }
                Err(Interrupted::Lookup(error)) => {
                    warn!(
                        error,
                        "worker registrations could not be read, reading the lines again"
                    );
                    reason = "lookup";
                    backoff.wait(&term).await;
                }
            }
        }
    }

    /// Waits until no earlier pull request is open, then resets the consumer to its ack
    /// floor so that every unacknowledged message comes again, in order.
    async fn take_over(
        &self,
        term: &CancellationToken,
        reason: &'static str,
    ) -> Result<Session, String> {
        let created = self
            .intake
            .get_info()
            .await
            .map_err(|error| format!("reading the intake stream: {error}"))?
            .created;
        let consumer: PullConsumer = self
            .intake
            .get_consumer(resources::LOG_COLLECTOR_CONSUMER)
            .await
            .map_err(|error| format!("opening the intake consumer: {error}"))?;
        let deadline = Instant::now() + PULL_EXPIRES + Duration::from_millis(500);
        loop {
            let info = consumer
                .get_info()
                .await
                .map_err(|error| format!("reading the intake consumer: {error}"))?;
            if info.num_waiting == 0 || Instant::now() >= deadline {
                break;
            }
            term.run_until_cancelled(tokio::time::sleep(Duration::from_millis(100)))
                .await;
        }
        let next_delivery = match self
            .intake
            .reset_consumer(resources::LOG_COLLECTOR_CONSUMER, None)
            .await
        {
            Ok(reset) => {
                ::metrics::counter!(metrics::CONSUMER_RESETS, "reason" => reason).increment(1);
                debug!(ack_floor = reset.reset_seq, reason, "intake consumer reset");
                Some(reset.info.delivered.consumer_sequence + 1)
            }
            Err(error)
                if matches!(
                    error.kind(),
                    ConsumerResetErrorKind::TimedOut | ConsumerResetErrorKind::Request
                ) =>
            {
                return Err(format!("resetting the intake consumer: {error}"));
            }
            Err(error) => {
                warn!(%error, "the intake consumer cannot be reset (nats-server 2.14 or later is needed); lines redelivered after a crash may be stored out of order");
                None
            }
        };
        Ok(Session {
            consumer,
            next_delivery,
            epoch: created.unix_timestamp_nanos().to_string(),
            skip_through: 0,
        })
    }

    /// The intake sequence of the newest stored record, if it came from this `epoch` of
    /// the intake stream (0 when unknown).
    async fn stored_through(&self, epoch: &str) -> u64 {
        let last = match self.logs.get_info().await {
            Ok(info) => info.state.last_sequence,
            Err(error) => {
                warn!(%error, "could not read the logs stream; relying on dedup alone");
                return 0;
            }
        };
        if last == 0 {
            return 0;
        }
        match self.logs.direct_get(last).await {
            Ok(message) => message
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .and_then(|id| parse_record_id(id.as_str()))
                .filter(|(_, stored_epoch)| *stored_epoch == epoch)
                .map_or(0, |(seq, _)| seq),
            Err(error) => {
                debug!(%error, last, "newest log record not readable; relying on dedup alone");
                0
            }
        }
    }

    /// Pulls batches and stores them until `term`, or until deliveries were missed.
    async fn drain(&self, session: &Session, term: &CancellationToken) -> Result<(), Interrupted> {
        let mut expected = session.next_delivery;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if term
                .run_until_cancelled(connected(&self.nats))
                .await
                .is_none()
            {
                return Ok(());
            }
            let pulled = session
                .consumer
                .batch()
                .max_messages(PULL_BATCH)
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let messages = match pulled {
                Ok(messages) => messages,
                Err(error) => {
                    warn!(%error, "intake pull request failed, retrying");
                    backoff.wait(term).await;
                    continue;
                }
            };
            backoff.reset();
            let mut chunks = messages.ready_chunks(PULL_BATCH);
            loop {
                let chunk = tokio::select! {
                    () = term.cancelled() => return Ok(()),
                    () = connection_lost(&self.nats) => break,
                    chunk = chunks.next() => chunk,
                };
                let Some(chunk) = chunk else { break };
                let mut batch = Vec::with_capacity(chunk.len());
                let mut gap = false;
                let mut ended = false;
                for item in chunk {
                    let message = match item {
                        Ok(message) => message,
                        Err(error) => {
                            debug!(%error, "intake pull ended early");
                            ended = true;
                            break;
                        }
                    };
                    let Some(received) = received(message) else {
                        gap = true;
                        break;
                    };
                    if let Some(next) = expected.filter(|&next| received.delivery != next) {
                        debug!(
                            expected = next,
                            delivered = received.delivery,
                            "intake delivery out of sequence"
                        );
                        gap = true;
                        break;
                    }
                    expected = Some(received.delivery + 1);
                    batch.push(received);
                }
                self.store_batch(batch, session, term).await?;
                if gap {
                    return Err(Interrupted::Gap);
                }
                if ended {
                    break;
                }
            }
        }
    }
}

/// The `Nats-Msg-Id` of the record for intake message `seq`: the sequence, and the epoch
/// of the intake stream, so that a re-created intake stream never collides with old records.
pub(crate) fn record_id(seq: u64, epoch: &str) -> String {
    format!("{seq}@{epoch}")
}

/// Reads a [`record_id`] back into the intake sequence and epoch.
fn parse_record_id(id: &str) -> Option<(u64, &str)> {
    let (seq, epoch) = id.split_once('@')?;
    Some((seq.parse().ok()?, epoch))
}

/// Reads the delivery metadata of an intake message; `None` when it has none.
fn received(message: Message) -> Option<Received> {
    let (stream_seq, delivery, published) = {
        let info = message.info().ok()?;
        (info.stream_sequence, info.consumer_sequence, info.published)
    };
    let millis = published.unix_timestamp_nanos() / 1_000_000;
    Some(Received {
        message,
        stream_seq,
        delivery,
        arrived: Timestamp::from_millis(i64::try_from(millis).unwrap_or(i64::MAX)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_round_trip() {
        let id = record_id(42, "1763817420123456789");
        assert_eq!(parse_record_id(&id), Some((42, "1763817420123456789")));
        assert_eq!(parse_record_id("42"), None);
        assert_eq!(parse_record_id("x@1"), None);
    }
}
