//! Serving the request endpoints of a micro service: every request in its own tracked task,
//! traced from its headers, counted, and answered with its payload or its `v1.error`.

use std::future::Future;

use async_nats::service::endpoint::Endpoint;
use async_nats::service::{Request, Service, ServiceExt};
use async_nats::{Client, Message};
use bytes::Bytes;
use drover_protocol::{DecodeError, ErrorPayload};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument};

use crate::{reply, Readiness};

/// An error that a handler returns, put on the wire at the edge, where the subject it
/// answers is known.
pub trait WireError {
    /// The `v1.error` payload answering the message received on `in_reply_to`.
    fn to_wire(&self, in_reply_to: &str) -> ErrorPayload;
}

impl WireError for ErrorPayload {
    fn to_wire(&self, _in_reply_to: &str) -> ErrorPayload {
        self.clone()
    }
}

impl WireError for DecodeError {
    fn to_wire(&self, in_reply_to: &str) -> ErrorPayload {
        self.to_error(in_reply_to)
    }
}

/// Starts the micro service `name`, discoverable through `$SRV.PING`, `INFO` and `STATS`.
///
/// Its version is the workspace's, which every Drover crate shares.
pub async fn start_service(
    nats: &Client,
    name: &str,
    description: &str,
) -> anyhow::Result<Service> {
    nats.service_builder()
        .description(description)
        .start(name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|error| anyhow::anyhow!("starting the micro service: {error}"))
}

/// Ends serving: `/readyz` says not ready, the micro service stops taking requests, and
/// the requests and loops tracked by `tasks` are waited for.
pub async fn drain(service: Service, tasks: &TaskTracker, readiness: &Readiness) {
    readiness.set_serving(false);
    if let Err(error) = service.stop().await {
        debug!(%error, "stopping the micro service");
    }
    tasks.close();
    tasks.wait().await;
}

/// What the request endpoints of one service share: the client that answers, the counter
/// `<service>_requests_total{endpoint,outcome}`, shutdown, and the tracker that requests
/// run on (so that the drain waits for them).
///
/// A request that carries trace context (`traceparent`) is served in a span under it, of
/// kind server, named after its endpoint. One that carries none is traced only on an
/// endpoint added through [`Self::starting_traces`] (a submission starts a run's trace;
/// its span has the fields `drover.run_id` and `drover.routine_id` for the handler to
/// record);
/// elsewhere its span is at DEBUG, so that queries and pulses make no root traces at the
/// default trace filter.
#[derive(Debug, Clone)]
pub struct Requests {
    nats: Client,
    metric: &'static str,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    roots: Option<&'static str>,
}

impl Requests {
    /// Endpoints answered with `nats`, counted in `metric`, stopped by `shutdown`, with
    /// their loops and requests spawned on `tasks`.
    pub fn new(
        nats: &Client,
        metric: &'static str,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        Self {
            nats: nats.clone(),
            metric,
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            roots: None,
        }
    }

    /// The same endpoints, whose requests are always traced, in a span named `span_name`,
    /// a new root when the request carries no trace context: for requests that begin
    /// something worth following (a run's submission).
    pub fn starting_traces(&self, span_name: &'static str) -> Self {
        Self {
            roots: Some(span_name),
            ..self.clone()
        }
    }

    /// Adds the endpoint `name` on `subject` to `service` and serves it (see [`Self::serve`]).
    pub async fn add<H, Fut, E>(
        &self,
        service: &Service,
        name: &'static str,
        subject: impl ToString,
        handler: H,
    ) -> anyhow::Result<()>
    where
        H: Fn(Message) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
        E: WireError + Send + 'static,
    {
        let endpoint = service
            .endpoint_builder()
            .name(name)
            .add(subject.to_string())
            .await
            .map_err(|error| anyhow::anyhow!("adding the {name} endpoint: {error}"))?;
        self.serve(endpoint, name, handler);
        Ok(())
    }

    /// Serves `endpoint`, named `name` in metrics and traces, until shutdown or until it
    /// closes: `handler` answers each request with an encoded envelope or an error.
    pub fn serve<H, Fut, E>(&self, endpoint: Endpoint, name: &'static str, handler: H)
    where
        H: Fn(Message) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
        E: WireError + Send + 'static,
    {
        self.tasks
            .spawn(self.clone().receive(endpoint, name, handler));
    }

    async fn receive<H, Fut, E>(self, mut endpoint: Endpoint, name: &'static str, handler: H)
    where
        H: Fn(Message) -> Fut,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
        E: WireError + Send + 'static,
    {
        while let Some(Some(request)) = self.shutdown.run_until_cancelled(endpoint.next()).await {
            let span = self.span_for(&request.message, name);
            let answer = handler(request.message.clone());
            let requests = self.clone();
            // Boxed so that the task holds a pointer, not the whole request future.
            self.tasks.spawn(Box::pin(
                async move { requests.answer(&request, name, answer.await).await }.instrument(span),
            ));
        }
    }

    /// The span a request is served in (see [`Requests`]).
    fn span_for(&self, message: &Message, endpoint: &'static str) -> tracing::Span {
        let received = drover_telemetry::extract_valid(message.headers.as_ref());
        let span = match (self.roots, received.is_some()) {
            (Some(name), _) => tracing::info_span!(
                "request",
                otel.name = name,
                otel.kind = "server",
                endpoint,
                drover.run_id = tracing::field::Empty,
                drover.routine_id = tracing::field::Empty,
            ),
            (None, true) => {
                tracing::info_span!(
                    "request",
                    otel.name = endpoint,
                    otel.kind = "server",
                    endpoint
                )
            }
            (None, false) => return tracing::debug_span!("request", endpoint),
        };
        if let Some(received) = received {
            drover_telemetry::set_parent_context(&span, received);
        }
        span
    }

    async fn answer<E: WireError>(
        &self,
        request: &Request,
        name: &'static str,
        result: Result<Bytes, E>,
    ) {
        match result {
            Ok(body) => {
                self.count(name, "ok");
                reply::ok_bytes_request(request, body).await;
            }
            Err(error) => {
                let subject = request.message.subject.as_str();
                let error = error.to_wire(subject);
                self.count(name, error.code.as_str());
                debug!(subject, code = %error.code, message = %error.message, "request rejected");
                reply::error_request(&self.nats, request, &error).await;
            }
        }
    }

    fn count(&self, endpoint: &'static str, outcome: &'static str) {
        ::metrics::counter!(self.metric, "endpoint" => endpoint, "outcome" => outcome).increment(1);
    }
}
