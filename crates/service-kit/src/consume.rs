//! Reading a durable pull consumer in explicit batches.
//!
//! A fetch loop rather than the continuous `messages()` stream: the stream was seen to stop
//! asking for messages now and then (nats.rs#1285, see NATS-NOTES), and a loop of bounded
//! pull requests recovers by itself.

use std::future::Future;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::Message;
use async_nats::Client;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::Backoff;

/// How long one pull request waits for messages before it is renewed.
pub const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Resolves once `client` is no longer connected.
///
/// A pull request lives on the server: when the connection drops (or the server restarts)
/// it is gone, but the client would wait for its expiry and then some. Racing a batch
/// against this lets the caller ask again as soon as the connection is back.
pub async fn connection_lost(client: &Client) {
    while client.connection_state() == State::Connected {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resolves once `client` is connected.
pub async fn connected(client: &Client) {
    while client.connection_state() != State::Connected {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hands every message of `consumer` to `handler`, in order, until `shutdown`.
///
/// Each pull asks for up to `batch` messages. The handler acknowledges; a message it does
/// not acknowledge is redelivered after the consumer's ack wait.
pub async fn consume<F, Fut>(
    consumer: PullConsumer,
    client: &Client,
    batch: usize,
    shutdown: CancellationToken,
    mut handler: F,
) where
    F: FnMut(Message) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        if shutdown
            .run_until_cancelled(connected(client))
            .await
            .is_none()
        {
            return;
        }
        let pulled = consumer
            .batch()
            .max_messages(batch)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut messages = match pulled {
            Ok(messages) => messages,
            Err(error) => {
                warn!(%error, "pull request failed, retrying");
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                () = connection_lost(client) => {
                    debug!("connection lost, pulling again once it is back");
                    break;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => handler(message).await,
                Some(Err(error)) => {
                    debug!(%error, "pull ended early");
                    break;
                }
                None => break,
            }
        }
    }
}
