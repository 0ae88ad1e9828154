//! Purging messages that no worker can have sent from a stream that captures
//! `<directive key>.<workerID>` subjects (`DROVER_DIRECTIVES`, `DROVER_LOG_INTAKE`).
//!
//! A subject whose last token is not a valid workerID is refused by the service that reads
//! it, but some of them are never read at all: nats-server 2.15.1 stores a message whose
//! subject holds a DEL byte (0x7f) yet leaves it out of its subject index, so no filtered
//! pull consumer delivers it, the stream's subject listing omits it, and a purge by subject
//! filter (exact or wildcard) removes none of it. Such a message would sit in the stream
//! until its max age. What does reach it is a read by sequence (`STREAM.MSG.GET` with
//! `next_by_subj: ">"` walks every stored message in order, skipping deleted sequences) and
//! a delete by sequence. So a purge round:
//!
//! 1. lists the stream's subjects and purges, by subject filter, every listed subject whose
//!    last token is not a workerID;
//! 2. when the stream holds more messages than the listing counts (some subjects are not
//!    indexed), walks the stream by sequence and deletes every such message it finds, until
//!    it has found as many as are missing from the listing.
//!
//! Purging and deleting are idempotent, so replicas doing it at once do no harm; the
//! services still run it only on their leader, to spare the server the work.

use std::time::Duration;

use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::Context;
use drover_protocol::WorkerId;
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::lookup::open_stream;
use crate::metrics::HOSTILE_PURGED_TOTAL;

/// True when the last token of `subject` is a valid workerID (`[A-Za-z0-9_-]{1,64}`).
pub fn ends_in_worker_id(subject: &str) -> bool {
    let last = subject.rsplit('.').next().unwrap_or(subject);
    WorkerId::parse(last).is_ok()
}

/// A purge round that could not finish; what it removed before stays removed.
#[derive(Debug, thiserror::Error)]
#[error("purging hostile subjects from {stream}: {message}")]
pub struct PurgeError {
    /// The stream.
    pub stream: String,
    /// What failed.
    pub message: String,
}

/// A subject as it may be written in a purge filter: one with a wildcard token would match
/// other subjects too, so it is removed message by message instead.
fn literal(subject: &str) -> bool {
    subject.split('.').all(|token| token != "*" && token != ">")
}

/// Removes from `stream` every message whose subject does not end in a workerID; returns
/// how many were removed. Each removal is counted in [`HOSTILE_PURGED_TOTAL`] and logged.
pub async fn purge_hostile(stream: &Stream) -> Result<u64, PurgeError> {
    let name = stream.cached_info().config.name.clone();
    let failed = |message: String| PurgeError {
        stream: name.clone(),
        message,
    };
    let mut listing = stream
        .info_with_subjects(">")
        .await
        .map_err(|error| failed(format!("reading the stream: {error}")))?;
    let state = listing.info.state.clone();
    let mut listed: u64 = 0;
    let mut hostile = Vec::new();
    while let Some((subject, count)) = listing
        .try_next()
        .await
        .map_err(|error| failed(format!("listing subjects: {error}")))?
    {
        if ends_in_worker_id(&subject) {
            listed += count as u64;
        } else if literal(&subject) {
            listed += count as u64;
            hostile.push(subject);
        }
        // A wildcard subject is left to the walk below, like an unlisted one.
    }

    let mut removed = 0;
    for subject in hostile {
        let purged = stream
            .purge()
            .filter(&subject)
            .await
            .map_err(|error| failed(format!("purging {subject:?}: {error}")))?
            .purged;
        if purged > 0 {
            removed += purged;
            counted(&name, &subject, purged);
        }
    }

    // Messages the listing does not count, or that no filter can single out: walk the
    // stream for them.
    let unlisted = state.messages.saturating_sub(listed);
    if unlisted > 0 {
        removed += delete_unlisted(stream, &name, state.first_sequence, unlisted)
            .await
            .map_err(failed)?;
    }
    Ok(removed)
}

/// Walks `stream` from `first` and deletes messages whose subject does not end in a
/// workerID, until `wanted` were deleted or the stream ends.
async fn delete_unlisted(
    stream: &Stream,
    name: &str,
    first: u64,
    wanted: u64,
) -> Result<u64, String> {
    let mut next = first.max(1);
    let mut deleted = 0;
    let mut walked = 0u64;
    while deleted < wanted {
        let message = stream
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(">")
            .send()
            .await;
        let message = match message {
            Ok(message) => message,
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(error) => return Err(format!("reading message {next}: {error}")),
        };
        walked += 1;
        next = message.sequence + 1;
        let subject = message.subject.as_str();
        if ends_in_worker_id(subject) {
            continue;
        }
        match stream.delete_message(message.sequence).await {
            Ok(_) => {
                deleted += 1;
                counted(name, subject, 1);
            }
            // Consumed or deleted meanwhile (by another replica, say).
            Err(error) => {
                debug!(stream = name, seq = message.sequence, %error, "message not deleted")
            }
        }
    }
    debug!(
        stream = name,
        walked, deleted, "walked the stream for unlisted subjects"
    );
    Ok(deleted)
}

fn counted(stream: &str, subject: &str, messages: u64) {
    ::metrics::counter!(HOSTILE_PURGED_TOTAL, "stream" => stream.to_owned()).increment(messages);
    warn!(
        stream,
        subject = %subject.escape_debug(),
        messages,
        "purged messages on a subject no worker can have"
    );
}

/// Opens `stream_name` and purges it with [`purge_hostile`] at once and then every
/// `interval`, until `term` is cancelled.
pub async fn purge_hostile_every(
    js: Context,
    stream_name: &'static str,
    interval: Duration,
    term: CancellationToken,
) {
    ::metrics::counter!(HOSTILE_PURGED_TOTAL, "stream" => stream_name).increment(0);
    let Some(stream) = open_stream(&js, stream_name, &term).await else {
        return;
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while term.run_until_cancelled(ticks.tick()).await.is_some() {
        match term.run_until_cancelled(purge_hostile(&stream)).await {
            Some(Ok(removed)) => {
                if removed > 0 {
                    debug!(stream = stream_name, removed, "hostile subjects purged");
                }
            }
            Some(Err(error)) => warn!(%error, "purge of hostile subjects failed, retrying later"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_worker_id_ends_a_well_formed_subject() {
        for good in ["v1.log.w1", "v1.routine.completed.a_B-9", "w", "v1.log.a.b"] {
            assert!(ends_in_worker_id(good), "{good}");
        }
        let long = format!("v1.log.{}", "x".repeat(65));
        for bad in [
            "v1.log.bad\u{7f}",
            "v1.routine.completed.bad\u{7f}",
            "v1.log.",
            "v1.log.a$b",
            "v1.log.*",
            "v1.log.>",
            "v1.log.é",
            long.as_str(),
        ] {
            assert!(!ends_in_worker_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn wildcard_subjects_are_never_purge_filters() {
        assert!(literal("v1.log.bad\u{7f}"));
        assert!(!literal("v1.log.*"));
        assert!(!literal("v1.>.x"));
    }
}
