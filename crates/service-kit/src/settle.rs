//! Settling a message read from a durable consumer (a worker's directive, a log line):
//! acknowledge it, refuse it for good (and tell the worker why), or have it delivered
//! again later.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use async_nats::Client;
use drover_protocol::{ErrorCode, ErrorPayload, WorkerId};
use tracing::{debug, warn};

use crate::reply;

/// How long a directive that could not be applied waits before it is delivered again.
pub const DIRECTIVE_RETRY_DELAY: Duration = Duration::from_millis(500);

/// What became of a directive.
#[derive(Debug)]
pub enum Settlement {
    /// Applied: acknowledge it.
    Applied,
    /// Refused for good: acknowledge it, count it, and send the error to the worker's
    /// error inbox when the worker is known.
    Rejected {
        /// Why, as it goes on the wire.
        error: ErrorPayload,
        /// Who sent it, when the subject names a worker.
        worker: Option<WorkerId>,
    },
    /// Not applied for now (the store did not answer): deliver it again later.
    RetryLater {
        /// What went wrong, for the log.
        reason: String,
    },
}

/// Acknowledges, rejects or redelivers `message` as `settlement` says. Rejections are
/// counted in `rejected_metric` with the error `code` as label.
pub async fn settle(
    nats: &Client,
    message: &Message,
    settlement: Settlement,
    rejected_metric: &'static str,
) {
    settle_counting(nats, message, settlement, |code| {
        ::metrics::counter!(rejected_metric, "code" => code.as_str()).increment(1);
    })
    .await;
}

/// [`settle`], for a service that counts rejections its own way: `count_rejection` is
/// called with the error code of a rejection.
pub async fn settle_counting(
    nats: &Client,
    message: &Message,
    settlement: Settlement,
    count_rejection: impl FnOnce(ErrorCode),
) {
    let subject = message.subject.as_str();
    let acked = match settlement {
        Settlement::Applied => message.ack().await,
        Settlement::Rejected { error, worker } => {
            count_rejection(error.code);
            debug!(subject, code = %error.code, message = %error.message, "message rejected");
            if let Some(worker) = worker {
                reply::to_worker_error(nats, &worker, &error).await;
            }
            message.ack().await
        }
        Settlement::RetryLater { reason } => {
            warn!(subject, reason, "message not applied, will retry");
            message
                .ack_with(AckKind::Nak(Some(DIRECTIVE_RETRY_DELAY)))
                .await
        }
    };
    if let Err(error) = acked {
        warn!(subject, %error, "could not acknowledge a message");
    }
}
