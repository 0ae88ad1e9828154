//! Answering requests with enveloped payloads, and with `v1.error` plus the NATS service
//! error headers so that plain clients and micro-aware tooling both understand a failure.

use async_nats::service::Request;
use async_nats::{Client, HeaderMap, Message, Subject};
use bytes::Bytes;
use drover_protocol::{ErrorPayload, Payload, WorkerId};
use tracing::{debug, warn};

use crate::metrics;

/// Header carrying the error message of a NATS micro service reply.
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// Header carrying the numeric status of a NATS micro service reply.
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";
/// Longest error message put in a header; the body carries the full one.
const MAX_HEADER_MESSAGE: usize = 512;

/// The service error headers for `err`.
pub fn error_headers(err: &ErrorPayload) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(SERVICE_ERROR_HEADER, header_safe(&err.message).as_str());
    headers.insert(
        SERVICE_ERROR_CODE_HEADER,
        err.code.service_status().to_string().as_str(),
    );
    headers
}

/// A header value cannot hold line breaks; keep it short too.
fn header_safe(text: &str) -> String {
    let mut safe: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if safe.len() > MAX_HEADER_MESSAGE {
        let mut end = MAX_HEADER_MESSAGE;
        while !safe.is_char_boundary(end) {
            end -= 1;
        }
        safe.truncate(end);
    }
    safe
}

/// Sends `payload` in its envelope to `reply`.
pub async fn ok<T: Payload>(client: &Client, reply: &Subject, payload: &T) {
    let body = drover_protocol::encode(payload);
    record(client.publish(reply.clone(), body).await, reply, "ok");
}

/// Sends `err` as an enveloped `v1.error` to `reply`, with the service error headers.
pub async fn error(client: &Client, reply: &Subject, err: &ErrorPayload) {
    let body: Bytes = drover_protocol::encode(err);
    let result = client
        .publish_with_headers(reply.clone(), error_headers(err), body)
        .await;
    record(result, reply, err.code.as_str());
}

/// Answers `message` with `payload`; does nothing if it has no reply subject.
pub async fn ok_message<T: Payload>(client: &Client, message: &Message, payload: &T) {
    match &message.reply {
        Some(reply) => ok(client, reply, payload).await,
        None => debug!(subject = %message.subject, "no reply subject; reply dropped"),
    }
}

/// Answers `message` with `err`; does nothing if it has no reply subject.
pub async fn error_message(client: &Client, message: &Message, err: &ErrorPayload) {
    match &message.reply {
        Some(reply) => error(client, reply, err).await,
        None => {
            debug!(subject = %message.subject, code = %err.code, "no reply subject; error reply dropped")
        }
    }
}

/// Answers a micro service request with `payload`.
///
/// Goes through `Request::respond` so the endpoint's statistics count it.
pub async fn ok_request<T: Payload>(request: &Request, payload: &T) {
    let body = drover_protocol::encode(payload);
    match request.respond(Ok(body)).await {
        Ok(()) => ::metrics::counter!(metrics::REPLIES_TOTAL, "outcome" => "ok").increment(1),
        Err(err) => publish_failed(&request.message.subject, &err),
    }
}

/// Answers a micro service request with `err`: the `v1.error` body and the error headers.
///
/// `Request::respond(Err(..))` would send an empty body, so this publishes directly.
pub async fn error_request(client: &Client, request: &Request, err: &ErrorPayload) {
    error_message(client, &request.message, err).await;
}

/// Sends an already-encoded envelope to `reply`.
pub async fn ok_bytes(client: &Client, reply: &Subject, body: Bytes) {
    record(client.publish(reply.clone(), body).await, reply, "ok");
}

/// Answers a micro service request with an already-encoded envelope.
pub async fn ok_bytes_request(request: &Request, body: Bytes) {
    match request.respond(Ok(body)).await {
        Ok(()) => ::metrics::counter!(metrics::REPLIES_TOTAL, "outcome" => "ok").increment(1),
        Err(err) => publish_failed(&request.message.subject, &err),
    }
}

/// Sends `err` to the worker's error inbox, `v1.worker.<workerID>.error`: where errors go
/// for messages that had no reply subject (DESIGN §3).
pub async fn to_worker_error(client: &Client, worker: &WorkerId, err: &ErrorPayload) {
    let subject =
        drover_protocol::subject::to_worker(worker, drover_protocol::subject::keys::ERROR);
    let body: Bytes = drover_protocol::encode(err);
    if let Err(error) = client.publish(subject, body).await {
        ::metrics::counter!(metrics::REPLY_PUBLISH_FAILURES_TOTAL).increment(1);
        warn!(worker = %worker, %error, "error could not be sent to the worker");
    } else {
        ::metrics::counter!(metrics::REPLIES_TOTAL, "outcome" => err.code.as_str()).increment(1);
    }
}

fn record<E: std::fmt::Display>(result: Result<(), E>, reply: &Subject, outcome: &'static str) {
    match result {
        Ok(()) => ::metrics::counter!(metrics::REPLIES_TOTAL, "outcome" => outcome).increment(1),
        Err(err) => publish_failed(reply, &err),
    }
}

fn publish_failed(subject: &Subject, err: &dyn std::fmt::Display) {
    ::metrics::counter!(metrics::REPLY_PUBLISH_FAILURES_TOTAL).increment(1);
    warn!(%subject, error = %err, "reply could not be published");
}

#[cfg(test)]
mod tests {
    use drover_protocol::ErrorCode;

    use super::*;

    #[test]
    fn headers_carry_message_and_status() {
        let err = ErrorPayload::new(ErrorCode::UnknownRun, "no such run\nat all", "v1.run.get");
        let headers = error_headers(&err);
        assert_eq!(
            headers.get(SERVICE_ERROR_HEADER).map(|v| v.as_str()),
            Some("no such run at all")
        );
        assert_eq!(
            headers.get(SERVICE_ERROR_CODE_HEADER).map(|v| v.as_str()),
            Some(ErrorCode::UnknownRun.service_status().to_string().as_str())
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let text = "é".repeat(400);
        let safe = header_safe(&text);
        assert!(safe.len() <= MAX_HEADER_MESSAGE);
        assert!(safe.chars().all(|c| c == 'é'));
    }
}
