//! Connecting to NATS: retry until the first connection, then reconnect forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use drover_nats_connect::{AuthError, NatsAuth};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::metrics;
use crate::settings::parse_server_addrs;

/// Why `connect` gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Shutdown was requested before a connection was made.
    #[error("shutdown requested before nats was reached")]
    Cancelled,
    /// The URL can never work, so retrying is pointless.
    #[error("invalid nats url: {0}")]
    InvalidUrl(String),
    /// A credential or TLS setting cannot be used (a file unreadable, a seed malformed).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Connects to NATS, retrying with backoff until connected or `shutdown` is cancelled.
///
/// `url` may list several servers separated by commas. Once connected the client
/// reconnects on its own, forever; connection events are logged and counted. No
/// credentials and no TLS unless the URL says `tls://`: see [`connect_with_auth`].
pub async fn connect(
    url: &str,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<Client, ConnectError> {
    connect_observed(url, name, &NatsAuth::default(), shutdown, None).await
}

/// [`connect`] with these credentials and TLS settings (see `drover_nats_connect`).
pub async fn connect_with_auth(
    url: &str,
    name: &str,
    auth: &NatsAuth,
    shutdown: &CancellationToken,
) -> Result<Client, ConnectError> {
    connect_observed(url, name, auth, shutdown, None).await
}

/// Counts the connections a client makes and wakes a waiter on each.
#[derive(Default)]
pub(crate) struct Connections {
    count: AtomicU64,
    notify: Notify,
}

impl Connections {
    /// How many times the client has connected so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits for the next connection (or returns at once if one came since the last wait).
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }

    fn connected(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_one();
    }
}

/// [`connect`], also reporting every (re)connection to `connections`.
pub(crate) async fn connect_observed(
    url: &str,
    name: &str,
    auth: &NatsAuth,
    shutdown: &CancellationToken,
    connections: Option<Arc<Connections>>,
) -> Result<Client, ConnectError> {
    let addrs = parse_server_addrs(url).map_err(ConnectError::InvalidUrl)?;
    if addrs.is_empty() {
        return Err(ConnectError::InvalidUrl("no server given".to_owned()));
    }
    let shown_url = crate::redact_url(url);
    let mut backoff = Backoff::default();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        // Applied at every attempt: a rotated creds or seed file is read again.
        let options = auth.apply(url, options(name, connections.clone()))?;
        let attempt_result = shutdown
            .run_until_cancelled(options.connect(addrs.clone()))
            .await
            .ok_or(ConnectError::Cancelled)?;
        match attempt_result {
            Ok(client) => {
                info!(url = %shown_url, name, attempt, "connected to nats");
                return Ok(client);
            }
            Err(err) if err.kind() == ConnectErrorKind::ServerParse => {
                return Err(ConnectError::InvalidUrl(err.to_string()));
            }
            Err(err) => {
                let delay = backoff.next_delay();
                ::metrics::counter!(metrics::NATS_CONNECT_FAILURES_TOTAL).increment(1);
                warn!(
                    url = %shown_url,
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %err,
                    "nats connection failed"
                );
                shutdown
                    .run_until_cancelled(tokio::time::sleep(delay))
                    .await
                    .ok_or(ConnectError::Cancelled)?;
            }
        }
    }
}

fn options(name: &str, connections: Option<Arc<Connections>>) -> ConnectOptions {
    ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| Backoff::default().delay_after(attempts))
        .event_callback(move |event| {
            if let (Event::Connected, Some(connections)) = (&event, &connections) {
                connections.connected();
            }
            async move { log_event(&event) }
        })
}

fn log_event(event: &Event) {
    let kind = match event {
        Event::Connected => "connected",
        Event::Disconnected => "disconnected",
        Event::LameDuckMode => "lame_duck",
        Event::Draining => "draining",
        Event::Closed => "closed",
        Event::SlowConsumer(_) => "slow_consumer",
        Event::ServerError(_) => "server_error",
        Event::ClientError(_) => "client_error",
    };
    ::metrics::counter!(metrics::NATS_EVENTS_TOTAL, "event" => kind).increment(1);
    match event {
        Event::Connected => {
            ::metrics::gauge!(metrics::NATS_CONNECTED).set(1.0);
            info!(event = kind, "nats connected");
        }
        Event::Disconnected => {
            ::metrics::gauge!(metrics::NATS_CONNECTED).set(0.0);
            warn!(event = kind, "nats disconnected; reconnecting");
        }
        Event::LameDuckMode => warn!(event = kind, "nats server entered lame duck mode"),
        Event::SlowConsumer(sid) => {
            warn!(event = kind, sid, "nats slow consumer; messages dropped")
        }
        Event::ServerError(err) => error!(event = kind, error = %err, "nats server error"),
        Event::ClientError(err) => warn!(event = kind, error = %err, "nats client error"),
        Event::Draining | Event::Closed => info!(event = kind, "nats connection {kind}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn gives_up_only_when_cancelled() {
        // Nothing listens on port 1: every attempt fails until we cancel.
        let shutdown = CancellationToken::new();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            cancel.cancel();
        });
        let result = connect("nats://127.0.0.1:1", "test", &shutdown).await;
        assert_eq!(result.err(), Some(ConnectError::Cancelled));
    }

    #[tokio::test]
    async fn rejects_a_malformed_url_at_once() {
        let shutdown = CancellationToken::new();
        let result = connect("nats://[::1", "test", &shutdown).await;
        assert!(
            matches!(result, Err(ConnectError::InvalidUrl(_))),
            "{result:?}"
        );
    }
}
