//! Wiring: the `drover-log-collector` micro service and the intake leadership.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::service::ServiceExt;
use async_nats::Client;
use drover_protocol::subject::keys;
use drover_service_kit::{reply, Readiness};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, Instrument};

use crate::intake::Intake;
use crate::leader::run_for_leadership;
use crate::metrics;
use crate::query::Queries;

/// Everything the tasks share.
pub(crate) struct Server {
    pub nats: Client,
    pub queries: Arc<Queries>,
    pub intake: Arc<Intake>,
    pub leaders: kv::Store,
    pub instance_id: String,
    pub lease: Duration,
}

impl Server {
    /// Serves queries on every replica and competes for the intake until `shutdown`.
    pub(crate) async fn serve(
        self,
        shutdown: CancellationToken,
        readiness: Readiness,
    ) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let service = self
            .nats
            .service_builder()
            .description("Drover log-collector: worker log intake, storage and queries")
            .start("drover-log-collector", env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|error| anyhow::anyhow!("starting the micro service: {error}"))?;
        let query = service
            .endpoint_builder()
            .name("query")
            .add(keys::LOGS_QUERY)
            .await
            .map_err(|error| anyhow::anyhow!("adding the query endpoint: {error}"))?;
        tasks.spawn(requests(
            Arc::clone(&self.queries),
            self.nats.clone(),
            query,
            shutdown.clone(),
            tasks.clone(),
        ));

        let intake = Arc::clone(&self.intake);
        let leaders = self.leaders.clone();
        let instance = self.instance_id.clone();
        let lease = self.lease;
        let election = shutdown.clone();
        tasks.spawn(async move {
            run_for_leadership(leaders, &instance, lease, election, move |term| {
                Arc::clone(&intake).lead(term)
            })
            .await;
        });

        readiness.set_serving(true);
        info!(instance = %self.instance_id, "log-collector serving");
        shutdown.cancelled().await;
        readiness.set_serving(false);
        if let Err(error) = service.stop().await {
            debug!(%error, "stopping the micro service");
        }
        tasks.close();
        tasks.wait().await;
        Ok(())
    }
}

/// Answers `v1.logs.query` requests, each in its own task.
async fn requests(
    queries: Arc<Queries>,
    nats: Client,
    mut endpoint: async_nats::service::endpoint::Endpoint,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let request = tokio::select! {
            () = shutdown.cancelled() => return,
            request = endpoint.next() => match request {
                Some(request) => request,
                None => return,
            },
        };
        let queries = Arc::clone(&queries);
        let nats = nats.clone();
        let span = tracing::info_span!("logs.query");
        drover_telemetry::set_parent_from_headers(&span, request.message.headers.as_ref());
        tasks.spawn(
            async move {
                match queries.answer(&request.message).await {
                    Ok(body) => {
                        ::metrics::counter!(metrics::QUERIES, "outcome" => "ok").increment(1);
                        reply::ok_bytes_request(&request, body).await;
                    }
                    Err(error) => {
                        ::metrics::counter!(metrics::QUERIES, "outcome" => error.code.as_str())
                            .increment(1);
                        debug!(code = %error.code, message = %error.message, "log query rejected");
                        reply::error_request(&nats, &request, &error).await;
                    }
                }
            }
            .instrument(span),
        );
    }
}
