//! The pool's micro service: `v1.pool.<poolID>.{scale,restart,status}`, each request handed
//! to the supervising loop and answered with what it decided.

use std::collections::HashMap;

use async_nats::service::{Service, ServiceExt};
use async_nats::{Client, Message};
use bytes::Bytes;
use drover_protocol::envelope::decode_query;
use drover_protocol::{
    decode, encode, subject, ErrorCode, ErrorPayload, PoolId, PoolRestart, PoolRestarting,
    PoolScale, PoolScaled, PoolState, PoolStatus, DEFAULT_MAX_PAYLOAD_BYTES,
};
use drover_service_kit::Requests;
use tokio::sync::{mpsc, oneshot};

/// The micro service's name in `$SRV` discovery.
pub const SERVICE_NAME: &str = "drover-pool";

/// A request for the supervising loop, with where its answer goes.
#[derive(Debug)]
pub enum Control {
    /// Scale a group.
    Scale(PoolScale, oneshot::Sender<Result<PoolScaled, ErrorPayload>>),
    /// Restart one group or all.
    Restart(
        PoolRestart,
        oneshot::Sender<Result<PoolRestarting, ErrorPayload>>,
    ),
    /// Report the state.
    Status(oneshot::Sender<PoolState>),
}

/// Starts the micro service and its three endpoints.
pub async fn serve(
    nats: &Client,
    pool: &PoolId,
    requests: &Requests,
    controls: mpsc::Sender<Control>,
) -> anyhow::Result<Service> {
    let service = nats
        .service_builder()
        .description(format!("Drover pool {pool}: scale, restart and status"))
        .metadata(HashMap::from([("poolID".to_owned(), pool.to_string())]))
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|error| anyhow::anyhow!("starting the micro service: {error}"))?;
    let to = controls.clone();
    requests
        .add(
            &service,
            "scale",
            subject::pool::scale(pool),
            move |message| {
                let to = to.clone();
                async move {
                    let request: PoolScale = decode(&message.payload, DEFAULT_MAX_PAYLOAD_BYTES)
                        .map_err(|error| error.to_error(message.subject.as_str()))?;
                    let answer = ask(&to, &message, |reply| Control::Scale(request, reply)).await?;
                    answer.map(|scaled| encode(&scaled))
                }
            },
        )
        .await?;
    let to = controls.clone();
    requests
        .add(
            &service,
            "restart",
            subject::pool::restart(pool),
            move |message| {
                let to = to.clone();
                async move {
                    let request: PoolRestart = decode(&message.payload, DEFAULT_MAX_PAYLOAD_BYTES)
                        .map_err(|error| error.to_error(message.subject.as_str()))?;
                    let answer =
                        ask(&to, &message, |reply| Control::Restart(request, reply)).await?;
                    answer.map(|restarting| encode(&restarting))
                }
            },
        )
        .await?;
    let to = controls;
    requests
        .add(
            &service,
            "status",
            subject::pool::status(pool),
            move |message| {
                let to = to.clone();
                async move {
                    let _: PoolStatus =
                        decode_query(&message.payload, DEFAULT_MAX_PAYLOAD_BYTES)
                            .map_err(|error| error.to_error(message.subject.as_str()))?;
                    let state = ask(&to, &message, Control::Status).await?;
                    Ok::<Bytes, ErrorPayload>(encode(&state))
                }
            },
        )
        .await?;
    Ok(service)
}

/// Hands a request to the loop and waits for its answer.
async fn ask<T>(
    to: &mpsc::Sender<Control>,
    message: &Message,
    control: impl FnOnce(oneshot::Sender<T>) -> Control,
) -> Result<T, ErrorPayload> {
    let gone = || {
        ErrorPayload::new(
            ErrorCode::Unavailable,
            "the pool is shutting down",
            message.subject.as_str(),
        )
    };
    let (reply, answer) = oneshot::channel();
    to.send(control(reply)).await.map_err(|_| gone())?;
    answer.await.map_err(|_| gone())
}
