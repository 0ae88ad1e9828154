//! One batch of intake: decode every line, enrich it, publish all of the records at once,
//! then await their PubAcks in order and acknowledge each intake message after its record
//! is stored. When spans are exported, the stored lines that no worker recorded on the
//! run's trace are recorded there (see [`crate::trace`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Message;
use bytes::Bytes;
use drover_protocol::envelope::decode;
use drover_protocol::subject;
use drover_protocol::{
    Attempt, DecodeError, LogLine, LogRecord, RunId, Timestamp, WorkerId, WorkerRecord,
};
use drover_service_kit::kv_cache::{FetchError, KvCache};
use drover_service_kit::{settle, Backoff, Settlement, WireError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::enrich::{Lookup, RunInfo};
use crate::error::LogError;
use crate::intake::{record_id, Intake, Interrupted, Session};
use crate::metrics;
use crate::trace::{carried_traceparent, recorded_under, LogSpans};

/// Attempts at storing one record before the batch is given up and read again.
const PUBLISH_ATTEMPTS: u32 = 3;
/// First delay before storing a record again.
const PUBLISH_RETRY_DELAY: Duration = Duration::from_millis(200);

/// An intake message and what its delivery says about it.
pub(crate) struct Received {
    /// The message, to acknowledge.
    pub message: Message,
    /// Its sequence in `DROVER_LOG_INTAKE`, part of the record's `Nats-Msg-Id`.
    pub stream_seq: u64,
    /// The consumer's delivery sequence, to notice missed deliveries.
    pub delivery: u64,
    /// When NATS stored it.
    pub arrived: Timestamp,
}

/// What to do with one intake message.
enum Step {
    /// An earlier leader stored it already.
    Stored,
    /// Refused: tell the worker, if it can be named.
    Rejected(Option<WorkerId>, LogError),
    /// A valid line, to be stored.
    Line(WorkerId, LogLine),
}

/// What was done with one intake message, before its acknowledgement.
enum Plan {
    /// Its record was sent; the line is recorded on its run's trace once stored, if traced.
    Store(Pending, Option<Box<Traced>>),
    /// Refused: tell the worker, if it can be named.
    Reject(Option<WorkerId>, LogError),
    /// Already stored.
    Skip,
}

/// A line the collector records on its run's trace: the record, its run, the attempt.
struct Traced {
    record: LogRecord,
    run: Arc<RunInfo>,
    attempt: Attempt,
}

/// The attempt of `run` that `worker` holds, as its worker record says.
fn held_attempt(
    workers: &KvCache<WorkerRecord>,
    worker: &WorkerId,
    run: &RunId,
) -> Option<Attempt> {
    let record = workers.get(worker.as_str())?;
    let held = record.value.runs.iter().find(|held| &held.run_id == run)?;
    Some(held.attempt)
}

/// A record on its way into `DROVER_LOGS`.
struct Pending {
    subject: String,
    body: Bytes,
    msg_id: String,
    ack: Option<PublishAckFuture>,
}

impl Intake {
    /// Stores one batch; acknowledges every message it is done with, in order.
    pub(crate) async fn store_batch(
        &self,
        batch: Vec<Received>,
        session: &Session,
        term: &CancellationToken,
    ) -> Result<(), Interrupted> {
        if batch.is_empty() {
            return Ok(());
        }
        ::metrics::histogram!(metrics::BATCH_SIZE).record(batch.len() as f64);
        let mut steps: Vec<Step> = batch
            .iter()
            .map(|received| self.decode(received, session.skip_through))
            .collect();
        self.refuse_unregistered(&mut steps).await?;
        let wanted: Vec<(RunId, WorkerId)> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Line(worker, line) => line.run_id.clone().map(|run| (run, worker.clone())),
                _ => None,
            })
            .collect();
        let runs = if wanted.is_empty() {
            HashMap::new()
        } else {
            self.runs.resolve(&wanted).await
        };

        // Publish every record before awaiting any PubAck: one round trip per batch.
        let received_at = Timestamp::now();
        let mut planned = Vec::with_capacity(batch.len());
        for (received, step) in batch.into_iter().zip(steps) {
            let plan = match step {
                Step::Line(worker, line) => {
                    let run = line
                        .run_id
                        .as_ref()
                        .and_then(|run| runs.get(run))
                        .cloned()
                        .flatten();
                    // Checked first, so that nothing more is done when spans are not exported.
                    let traced_under = match &run {
                        Some(info) if self.traced => recorded_under(
                            carried_traceparent(received.message.headers.as_ref()),
                            info,
                            held_attempt(&self.workers, &worker, &info.run_id),
                        ),
                        _ => None,
                    };
                    let record = record(worker, line, run.clone(), &received, received_at);
                    let id = record_id(received.stream_seq, &session.epoch);
                    match self.publish(&record, id).await {
                        Ok(pending) => {
                            let traced = run.zip(traced_under).map(|(run, attempt)| {
                                Box::new(Traced {
                                    record,
                                    run,
                                    attempt,
                                })
                            });
                            Plan::Store(pending, traced)
                        }
                        Err(error) => Plan::Reject(Some(record.worker_id), error),
                    }
                }
                Step::Rejected(worker, error) => Plan::Reject(worker, error),
                Step::Stored => Plan::Skip,
            };
            planned.push((received, plan));
        }

        let mut spans = LogSpans::default();
        let settled = self.settle_all(planned, &mut spans, term).await;
        if !spans.is_empty() {
            spans.record();
        }
        settled
    }

    /// Awaits the PubAcks in order and acknowledges each intake message; adds the traced
    /// lines newly stored to `spans`.
    async fn settle_all(
        &self,
        planned: Vec<(Received, Plan)>,
        spans: &mut LogSpans,
        term: &CancellationToken,
    ) -> Result<(), Interrupted> {
        for (received, plan) in planned {
            let settlement = match plan {
                Plan::Store(pending, traced) => {
                    let stored = self.confirm(pending, term).await?;
                    // A duplicate was stored, and recorded, by an earlier delivery.
                    if let (Some(seq), Some(traced)) = (stored, traced) {
                        spans.add(
                            &traced.run,
                            traced.attempt,
                            &traced.record,
                            seq,
                            received.stream_seq,
                        );
                    }
                    Settlement::Applied
                }
                Plan::Reject(worker, error) => Settlement::Rejected {
                    error: error.to_wire(received.message.subject.as_str()),
                    worker,
                },
                Plan::Skip => {
                    ::metrics::counter!(metrics::LINES_DUPLICATE).increment(1);
                    Settlement::Applied
                }
            };
            settle(
                &self.nats,
                &received.message,
                settlement,
                metrics::LINES_REJECTED,
            )
            .await;
        }
        Ok(())
    }

    /// Turns the lines of workers with no registry record into refusals. A worker the cache
    /// has not seen is looked up in the bucket, since it may have registered just now.
    async fn refuse_unregistered(&self, steps: &mut [Step]) -> Result<(), Interrupted> {
        let mut unseen: Vec<WorkerId> = Vec::new();
        for step in steps.iter() {
            if let Step::Line(worker, _) = step {
                if self.workers.get(worker.as_str()).is_none() && !unseen.contains(worker) {
                    unseen.push(worker.clone());
                }
            }
        }
        let mut unknown = HashSet::new();
        for worker in unseen {
            match self.workers.fetch(worker.as_str()).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    unknown.insert(worker);
                }
                // The record exists, whatever it holds.
                Err(FetchError::Undecodable(error)) => {
                    debug!(%worker, %error, "undecodable worker record; taking its lines");
                }
                Err(error @ FetchError::Read(_)) => {
                    return Err(Interrupted::Lookup(format!("worker {worker}: {error}")));
                }
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        for step in steps.iter_mut() {
            if let Step::Line(worker, _) = step {
                if unknown.contains(worker) {
                    let worker = worker.clone();
                    *step = Step::Rejected(Some(worker.clone()), LogError::UnknownWorker(worker));
                }
            }
        }
        Ok(())
    }

    fn decode(&self, received: &Received, skip_through: u64) -> Step {
        if received.stream_seq <= skip_through {
            return Step::Stored;
        }
        let subject = received.message.subject.as_str();
        let worker = match subject::parse_inbound(subject) {
            Ok(inbound) if inbound.key == subject::keys::LOG => inbound.worker,
            _ => None,
        };
        let Some(worker) = worker else {
            return Step::Rejected(None, LogError::InvalidSubject(subject.to_owned()));
        };
        match decode::<LogLine>(&received.message.payload, self.max_payload_bytes) {
            Ok(line) => Step::Line(worker, line),
            Err(error) => Step::Rejected(Some(worker), error.into()),
        }
    }

    /// Sends a record without waiting for its PubAck; refuses one too large to store.
    async fn publish(&self, record: &LogRecord, msg_id: String) -> Result<Pending, LogError> {
        let subject = subject::logs(record.run_id.as_ref(), &record.worker_id);
        let body = Bytes::from(serde_json::to_vec(record).map_err(LogError::Unserializable)?);
        let message = PublishMessage::build()
            .payload(body.clone())
            .message_id(&msg_id);
        match self.js.send_publish(subject.clone(), message).await {
            Ok(ack) => Ok(Pending {
                subject,
                body,
                msg_id,
                ack: Some(ack),
            }),
            Err(error) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                let size = body.len();
                let limit = self.nats.server_info().max_payload;
                Err(DecodeError::TooLarge { size, limit }.into())
            }
            Err(error) => {
                debug!(%error, %msg_id, "record not sent, will retry");
                Ok(Pending {
                    subject,
                    body,
                    msg_id,
                    ack: None,
                })
            }
        }
    }

    /// Awaits a record's PubAck, publishing it again (same message ID) if it failed.
    /// Returns the record's sequence in `DROVER_LOGS`, or `None` for a duplicate.
    async fn confirm(
        &self,
        pending: Pending,
        term: &CancellationToken,
    ) -> Result<Option<u64>, Interrupted> {
        let mut outcome = match pending.ack {
            Some(ack) => ack.await.map_err(|error| error.to_string()),
            None => Err("not sent".to_owned()),
        };
        let mut backoff = Backoff::new(PUBLISH_RETRY_DELAY, PUBLISH_RETRY_DELAY * 4);
        let mut attempt = 1;
        let ack = loop {
            let error = match outcome {
                Ok(ack) => break ack,
                Err(error) => error,
            };
            if attempt >= PUBLISH_ATTEMPTS || term.is_cancelled() {
                return Err(Interrupted::Publish(error));
            }
            warn!(error, msg_id = %pending.msg_id, attempt, "storing a log record failed, retrying");
            ::metrics::counter!(metrics::PUBLISH_RETRIES).increment(1);
            if !backoff.wait(term).await {
                return Err(Interrupted::Publish(error));
            }
            attempt += 1;
            let message = PublishMessage::build()
                .payload(pending.body.clone())
                .message_id(&pending.msg_id);
            outcome = match self.js.send_publish(pending.subject.clone(), message).await {
                Ok(ack) => ack.await.map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
        };
        if ack.duplicate {
            ::metrics::counter!(metrics::LINES_DUPLICATE).increment(1);
            Ok(None)
        } else {
            ::metrics::counter!(metrics::LINES_STORED).increment(1);
            Ok(Some(ack.sequence))
        }
    }
}

/// The stored form of a line: `seq` is left 0 and filled in from the stream when read.
fn record(
    worker: WorkerId,
    line: LogLine,
    run: Lookup,
    received: &Received,
    received_at: Timestamp,
) -> LogRecord {
    LogRecord {
        seq: 0,
        worker_id: worker,
        run_id: line.run_id,
        routine_id: run.as_ref().map(|run| run.routine_id.clone()),
        attempt: run.as_ref().map(|run| run.attempt),
        trace_id: run.as_ref().and_then(|run| run.trace_id.clone()),
        level: line.level,
        message: line.message,
        fields: line.fields.unwrap_or_default(),
        timestamp: line.timestamp.unwrap_or(received.arrived),
        received_at,
    }
}
