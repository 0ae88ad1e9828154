//! Requests to the services over NATS, with a bound on each, and their errors as the
//! console's.

use std::time::Duration;

use async_nats::{Client, HeaderMap, RequestErrorKind};
use drover_protocol::envelope::decode_reply;
use drover_protocol::{encode, ErrorCode, Payload};

use crate::error::ConsoleError;

/// How long a request to a service may take before the console says it is unavailable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The services, as the console reaches them.
#[derive(Debug, Clone)]
pub struct Backend {
    nats: Client,
    timeout: Duration,
}

impl Backend {
    /// Requests go out on `nats`.
    pub fn new(nats: Client) -> Self {
        Self {
            nats,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// The NATS client.
    pub fn nats(&self) -> &Client {
        &self.nats
    }

    /// Sends `payload` to `subject` and decodes the reply, or the `v1.error` it carries.
    pub async fn call<T: Payload, R: Payload>(
        &self,
        subject: &str,
        payload: &T,
    ) -> Result<R, ConsoleError> {
        self.call_or(subject, payload, || {
            ConsoleError::wire(
                ErrorCode::Unavailable,
                format!("no Drover service answers on {subject}"),
            )
        })
        .await
    }

    /// As [`Self::call`], with `absent` for the error when nothing listens on `subject`
    /// (a pool that is not running, say).
    pub async fn call_or<T: Payload, R: Payload>(
        &self,
        subject: &str,
        payload: &T,
        absent: impl FnOnce() -> ConsoleError,
    ) -> Result<R, ConsoleError> {
        let mut headers = HeaderMap::new();
        drover_telemetry::inject_current(&mut headers);
        let request = self
            .nats
            .request_with_headers(subject.to_owned(), headers, encode(payload));
        let reply = tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| {
                ConsoleError::wire(
                    ErrorCode::Unavailable,
                    format!("no answer on {subject} within {:?}", self.timeout),
                )
            })?
            .map_err(|error| match error.kind() {
                RequestErrorKind::NoResponders => absent(),
                _ => ConsoleError::wire(
                    ErrorCode::Unavailable,
                    format!("request on {subject} failed: {error}"),
                ),
            })?;
        let decoded = decode_reply::<R>(&reply.payload).map_err(|error| {
            ConsoleError::wire(
                ErrorCode::Internal,
                format!("the reply on {subject} was not understood: {error}"),
            )
        })?;
        decoded.map_err(ConsoleError::from_service)
    }
}
