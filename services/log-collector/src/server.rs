//! Wiring: the `drover-log-collector` micro service and the intake leadership.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::Client;
use drover_protocol::subject::{keys, resources};
use drover_service_kit::hostile::purge_hostile_every;
use drover_service_kit::{drain, run_for_leadership, start_service, Lease, Readiness, Requests};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::intake::Intake;
use crate::metrics;
use crate::query::Queries;

/// What `$SRV.INFO` says this service does.
const DESCRIPTION: &str = "Drover log-collector: worker log intake, storage and queries";

/// Everything the tasks share.
pub(crate) struct Server {
    pub nats: Client,
    pub queries: Arc<Queries>,
    pub intake: Arc<Intake>,
    pub leaders: kv::Store,
    pub instance_id: String,
    pub lease: Duration,
    /// How often the intake leader purges lines on subjects that end in no workerID.
    pub purge_interval: Duration,
}

impl Server {
    /// Serves queries on every replica and competes for the intake until `shutdown`.
    pub(crate) async fn serve(
        self,
        shutdown: CancellationToken,
        readiness: Readiness,
    ) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let service = start_service(&self.nats, "drover-log-collector", DESCRIPTION).await?;
        let requests = Requests::new(&self.nats, metrics::QUERIES, &shutdown, &tasks);
        let queries = Arc::clone(&self.queries);
        requests
            .add(&service, "query", keys::LOGS_QUERY, move |message| {
                let queries = Arc::clone(&queries);
                async move { queries.answer(&message).await }
            })
            .await?;

        let lease = Lease::new(
            self.leaders.clone(),
            resources::LOG_COLLECTOR_LEASE,
            self.instance_id.clone(),
            self.lease,
            metrics::INTAKE_LEADER,
        );
        let intake = Arc::clone(&self.intake);
        let purge_interval = self.purge_interval;
        tasks.spawn(run_for_leadership(lease, shutdown.clone(), move |term| {
            let purge = purge_hostile_every(
                intake.js.clone(),
                resources::LOG_INTAKE_STREAM,
                purge_interval,
                term.clone(),
            );
            let lead = Arc::clone(&intake).lead(term);
            async move {
                futures::join!(lead, purge);
            }
        }));

        readiness.set_serving(true);
        info!(instance = %self.instance_id, "log-collector serving");
        shutdown.cancelled().await;
        drain(service, &tasks, &readiness).await;
        Ok(())
    }
}
