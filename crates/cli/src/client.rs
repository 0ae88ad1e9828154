//! The CLI's connection to Drover: requests with timeouts, and errors worded for people.

use std::future::Future;
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, HeaderMap};
use drover_nats_connect::refusals::{self, Refusals};
use drover_nats_connect::NatsAuth;
use drover_protocol::envelope::decode_reply;
use drover_protocol::{encode, Payload};

use crate::error::CliError;

/// A connected client with the command's timeout.
#[derive(Debug, Clone)]
pub struct Drover {
    client: Client,
    url: String,
    timeout: Duration,
    /// What the server refuses the credential in use.
    refusals: Refusals,
}

impl Drover {
    /// Connects to NATS with `auth`, failing fast with a clear message when it is not there
    /// or refuses the credentials; unusable credentials are a configuration error.
    pub async fn connect(url: &str, timeout: Duration, auth: &NatsAuth) -> Result<Self, CliError> {
        let options = async_nats::ConnectOptions::new()
            .name("drover-cli")
            .connection_timeout(timeout)
            .max_reconnects(Some(3));
        let (options, refusals) = refusals::watch(options);
        let options = auth
            .apply(url, options)
            .map_err(|error| CliError::Config(error.to_string()))?;
        let client = tokio::time::timeout(timeout, options.connect(url))
            .await
            .map_err(|_| unreachable_nats(url, "no answer"))?
            .map_err(|source| match source.kind() {
                ConnectErrorKind::AuthorizationViolation => CliError::Unreachable(format!(
                    "NATS at {url} refused the credentials ({source}); check --creds, --nkey, \
                     --token or --user, or their DROVER_NATS_* variables"
                )),
                _ => CliError::Connect {
                    url: url.to_owned(),
                    source,
                },
            })?;
        Ok(Self {
            client,
            url: url.to_owned(),
            timeout,
            refusals,
        })
    }

    /// Runs `command`, unless NATS refuses one of its publishes or subscriptions to the
    /// credential in use first: then it fails at once with [`CliError::Forbidden`]. Without
    /// this, a refused request would only time out, as NATS tells the refusal to the
    /// connection, not to the request.
    pub async fn unless_refused<T>(
        &self,
        command: impl Future<Output = Result<T, CliError>>,
    ) -> Result<T, CliError> {
        let mut refusals = self.refusals.clone();
        tokio::select! {
            result = command => result,
            error = refusals.next() => Err(CliError::Forbidden(error)),
        }
    }

    /// The underlying NATS client.
    pub fn nats(&self) -> &Client {
        &self.client
    }

    /// The NATS URL it is connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a request and decodes the reply, or the `v1.error` it carries.
    ///
    /// The request carries the trace context of the current span, if there is one: only a
    /// command that starts something traces itself (`drover.submit`). Queries run outside
    /// any span, so they carry none and make no trace of their own.
    pub async fn call<T: Payload, R: Payload>(
        &self,
        subject: &str,
        payload: &T,
    ) -> Result<R, CliError> {
        let mut headers = HeaderMap::new();
        drover_telemetry::inject_current(&mut headers);
        let request =
            self.client
                .request_with_headers(subject.to_owned(), headers, encode(payload));
        let reply = tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| {
                CliError::Unreachable(format!(
                    "no answer on {subject} within {:?}: is the Drover stack running?",
                    self.timeout
                ))
            })?
            .map_err(|error| match error.kind() {
                async_nats::RequestErrorKind::NoResponders => CliError::Unreachable(format!(
                    "no Drover service answers on {subject}: is the stack running?"
                )),
                _ => CliError::Request {
                    subject: subject.to_owned(),
                    source: error,
                },
            })?;
        let decoded = decode_reply::<R>(&reply.payload).map_err(|source| CliError::Reply {
            subject: subject.to_owned(),
            source,
        })?;
        decoded.map_err(CliError::from)
    }
}

fn unreachable_nats(url: &str, why: &str) -> CliError {
    CliError::Unreachable(format!(
        "cannot reach NATS at {url}: {why} (set --nats-url or DROVER_NATS_URL, or start Drover with `drover dev`)"
    ))
}
