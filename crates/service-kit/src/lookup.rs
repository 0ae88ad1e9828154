//! Looking up the streams, consumers and buckets a service works with, at start-up.
//!
//! `run_service` has ensured them, but NATS may drop between that and a service's look-ups:
//! each one is retried with [`Backoff`] until it succeeds or shutdown, so that a service
//! rides out a broker restart during its start-up instead of exiting.

use std::fmt;
use std::future::Future;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::{kv, Context};
use tokio_util::sync::CancellationToken;

use crate::backoff::{retry_until_cancelled, Backoff};

/// Retries `attempt`, a start-up look-up named `what`, with the default [`Backoff`] until
/// it succeeds. `None` when `shutdown` came first.
pub async fn look_up<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    attempt: F,
) -> Option<T>
where
    E: fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_until_cancelled(what, Backoff::default(), shutdown, attempt).await
}

/// The key-value bucket `name`. `None` when `shutdown` came first.
pub async fn open_bucket(
    js: &Context,
    name: &str,
    shutdown: &CancellationToken,
) -> Option<kv::Store> {
    let what = format!("opening bucket {name}");
    look_up(&what, shutdown, || js.get_key_value(name)).await
}

/// The stream `name`. `None` when `shutdown` came first.
pub async fn open_stream(js: &Context, name: &str, shutdown: &CancellationToken) -> Option<Stream> {
    let what = format!("opening stream {name}");
    look_up(&what, shutdown, || js.get_stream(name)).await
}

/// The durable pull consumer `consumer` of `stream`. `None` when `shutdown` came first.
pub async fn open_consumer(
    js: &Context,
    stream: &str,
    consumer: &str,
    shutdown: &CancellationToken,
) -> Option<PullConsumer> {
    let what = format!("opening consumer {consumer} of stream {stream}");
    look_up(&what, shutdown, || async {
        let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
        stream
            .get_consumer(consumer)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}
