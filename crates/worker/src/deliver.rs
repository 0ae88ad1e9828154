//! Sending directives that must arrive: as requests, retried with backoff until JetStream
//! answers with a PubAck, so that they survive a NATS outage.

use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::{Client, HeaderMap};
use drover_protocol::{encode, Payload};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// How long one request waits for its reply.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Exponential backoff between retries.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// From 50 ms, doubling, up to 2 s.
    pub(crate) fn new() -> Self {
        Self {
            next: Duration::from_millis(50),
            max: Duration::from_secs(2),
        }
    }

    /// The delay before the next retry.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Sleeps the next delay; false if `stop` fired first.
    pub(crate) async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// True when `body` is a JetStream PubAck (`{"stream": ..., "seq": ...}`), not an error.
pub(crate) fn is_pub_ack(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .is_ok_and(|reply| reply.get("seq").is_some() && reply.get("error").is_none())
}

/// Sends `payload` on `subject` as a request until a PubAck arrives; false if `stop`
/// fired first.
///
/// `message_id` goes in `Nats-Msg-Id`, so that a retry of a message that was stored after
/// all (its ack was lost) is recognised by JetStream as a duplicate and stored once.
/// `headers` carry the trace context.
pub(crate) async fn send_acked<T: Payload>(
    client: &Client,
    subject: String,
    payload: &T,
    message_id: String,
    mut headers: HeaderMap,
    stop: &CancellationToken,
) -> bool {
    let body = encode(payload);
    headers.insert(NATS_MESSAGE_ID, message_id.as_str());
    let mut backoff = Backoff::new();
    let mut noted = false;
    loop {
        if stop.is_cancelled() {
            return false;
        }
        let request = client.request_with_headers(subject.clone(), headers.clone(), body.clone());
        let outcome = tokio::select! {
            _ = stop.cancelled() => return false,
            outcome = tokio::time::timeout(REQUEST_TIMEOUT, request) => outcome,
        };
        let why = match outcome {
            Ok(Ok(reply)) if is_pub_ack(&reply.payload) => return true,
            Ok(Ok(reply)) => format!("answered {}", String::from_utf8_lossy(&reply.payload)),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no PubAck in time".to_owned(),
        };
        // The first failure is worth an event on the span the directive is sent in (the
        // attempt's, for `starting` and `completed`); the retries that follow are not.
        if noted {
            tracing::debug!(subject, why, "directive not stored yet; retrying");
        } else {
            tracing::info!(subject, why, "directive not stored yet; retrying");
            noted = true;
        }
        if !backoff.wait(stop).await {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut backoff = Backoff::new();
        let delays: Vec<u128> = (0..8).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn only_a_stored_message_counts_as_acked() {
        assert!(is_pub_ack(br#"{"stream":"DROVER_DIRECTIVES","seq":7}"#));
        assert!(is_pub_ack(
            br#"{"stream":"DROVER_DIRECTIVES","seq":7,"duplicate":true}"#
        ));
        assert!(!is_pub_ack(
            br#"{"error":{"code":503,"description":"no responders"}}"#
        ));
        assert!(!is_pub_ack(b"nope"));
    }
}
