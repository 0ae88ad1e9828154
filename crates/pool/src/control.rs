//! The pool's micro service: `v1.pool.<poolID>.{scale,restart,status}`, each request handed
//! to the supervising loop and answered with what it decided.

use std::collections::HashMap;

use async_nats::service::{Service, ServiceExt};
use async_nats::{Client, Message};
use drover_protocol::envelope::decode_query;
use drover_protocol::{
    encode, subject, ErrorCode, ErrorPayload, Payload, PoolId, PoolRestart, PoolRestarting,
    PoolScale, PoolScaled, PoolState, PoolStatus, DEFAULT_MAX_PAYLOAD_BYTES,
};
use drover_service_kit::Requests;
use tokio::sync::{mpsc, oneshot};

/// The micro service's name in `$SRV` discovery.
pub const SERVICE_NAME: &str = "drover-pool";

/// Where the supervising loop sends its answer to a request.
pub type Reply<T> = oneshot::Sender<Result<T, ErrorPayload>>;

/// A request for the supervising loop, with where its answer goes.
#[derive(Debug)]
pub enum Control {
    /// Scale a group.
    Scale(PoolScale, Reply<PoolScaled>),
    /// Restart one group or all.
    Restart(PoolRestart, Reply<PoolRestarting>),
    /// Report the state.
    Status(PoolStatus, Reply<PoolState>),
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
    let scale = subject::pool::scale(pool);
    endpoint(
        requests,
        &service,
        "scale",
        scale,
        &controls,
        Control::Scale,
    )
    .await?;
    let restart = subject::pool::restart(pool);
    endpoint(
        requests,
        &service,
        "restart",
        restart,
        &controls,
        Control::Restart,
    )
    .await?;
    let status = subject::pool::status(pool);
    endpoint(
        requests,
        &service,
        "status",
        status,
        &controls,
        Control::Status,
    )
    .await?;
    Ok(service)
}

/// Adds endpoint `name` on `subject`: each request is decoded (an empty body reads as `{}`),
/// handed to the loop as `control`, and answered with the loop's answer or its `v1.error`.
async fn endpoint<Q, A>(
    requests: &Requests,
    service: &Service,
    name: &'static str,
    subject: String,
    to: &mpsc::Sender<Control>,
    control: fn(Q, Reply<A>) -> Control,
) -> anyhow::Result<()>
where
    Q: Payload + Send + 'static,
    A: Payload + Send + 'static,
{
    let to = to.clone();
    requests
        .add(service, name, subject, move |message: Message| {
            let to = to.clone();
            async move {
                let in_reply_to = message.subject.as_str();
                let request: Q = decode_query(&message.payload, DEFAULT_MAX_PAYLOAD_BYTES)
                    .map_err(|error| error.to_error(in_reply_to))?;
                let gone = || {
                    ErrorPayload::new(
                        ErrorCode::Unavailable,
                        "the pool is shutting down",
                        in_reply_to,
                    )
                };
                let (reply, answer) = oneshot::channel();
                to.send(control(request, reply)).await.map_err(|_| gone())?;
                let answer: Result<A, ErrorPayload> = answer.await.map_err(|_| gone())?;
                answer.map(|answer| encode(&answer))
            }
        })
        .await
}
