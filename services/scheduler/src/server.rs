//! Wiring: the `drover-scheduler` micro service, leadership, and forwarding to the leader.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use async_nats::{Client, Message};
use bytes::Bytes;
use drover_protocol::envelope::{decode, decode_reply};
use drover_protocol::subject::{self, internal, keys, resources};
use drover_protocol::{encode, Accepted, RunCancel, RunSpec, WorkerRecord};
use drover_service_kit::hostile::purge_hostile_every;
use drover_service_kit::kv_cache::KvCache;
use drover_service_kit::storage::{report_storage_every, stored_streams};
use drover_service_kit::WireError;
use drover_service_kit::{
    drain, reply, run_for_leadership, start_service, Backoff, Lease, Readiness, Requests, Settings,
};
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::engine::{Engine, Event, IntakePlacer};
use crate::error::{Error, RouteError, SpecError};
use crate::intake::{Intake, Origin, TraceContext};
use crate::metrics;
use crate::queries;
use crate::spans::names as spans;
use crate::store::RunStore;

/// What `$SRV.INFO` says this service does.
const DESCRIPTION: &str = "Drover scheduler: run intake, queries and cancellation";

/// Header carrying the original subject of a request forwarded to the leader.
const FORWARDED_SUBJECT: &str = "Drover-Subject";
/// How long a follower keeps trying to reach a leader (covers an election).
const FORWARD_PATIENCE: Duration = Duration::from_secs(10);
/// First wait before forwarding again when no leader answered.
const FORWARD_FIRST_RETRY: Duration = Duration::from_millis(50);
/// Longest wait between two forwarding tries.
const FORWARD_MAX_RETRY: Duration = Duration::from_secs(1);

/// Who answers a request endpoint.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// Run requests, on every replica.
    Submit,
    /// `v1.run.get`, on every replica.
    Get,
    /// `v1.run.list`, on every replica.
    List,
    /// Cancellations and child requests: the leader, reached through forwarding.
    Leader,
}

#[derive(Clone)]
pub(crate) struct Server {
    settings: Arc<Settings>,
    nats: Client,
    store: RunStore,
    intake: Intake,
    workers: Arc<KvCache<WorkerRecord>>,
    engine: Arc<RwLock<Option<Arc<Engine>>>>,
    /// Every task of the service, so that shutdown waits for them.
    tasks: TaskTracker,
}

impl Server {
    pub(crate) fn new(
        settings: Arc<Settings>,
        nats: Client,
        store: RunStore,
        intake: Intake,
        workers: Arc<KvCache<WorkerRecord>>,
    ) -> Self {
        Self {
            settings,
            nats,
            store,
            intake,
            workers,
            engine: Arc::new(RwLock::new(None)),
            tasks: TaskTracker::new(),
        }
    }

    fn engine(&self) -> Option<Arc<Engine>> {
        self.engine
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) async fn serve(
        self,
        leaders: Store,
        shutdown: CancellationToken,
        readiness: Readiness,
    ) -> anyhow::Result<()> {
        let tasks = self.tasks.clone();
        let service = start_service(&self.nats, "drover-scheduler", DESCRIPTION).await?;
        self.add_endpoints(&service, &shutdown).await?;

        let instance = self.settings.instance_id.clone();
        let lease = Lease::new(
            leaders,
            resources::SCHEDULER_LEASE,
            instance.clone(),
            Duration::from_millis(self.settings.leader_lease_ms),
            metrics::LEADER,
        );
        // Every replica reports the same figures, so none goes stale when the leader moves.
        tasks.spawn(report_storage_every(
            async_nats::jetstream::new(self.nats.clone()),
            stored_streams(&self.settings),
            Duration::from_millis(self.settings.storage_metrics_interval_ms),
            shutdown.clone(),
        ));
        let leader = self.clone();
        tasks.spawn(run_for_leadership(lease, shutdown.clone(), move |term| {
            leader.clone().lead(term)
        }));
        readiness.set_serving(true);
        info!(instance, "scheduler serving");

        shutdown.cancelled().await;
        drain(service, &tasks, &readiness).await;
        Ok(())
    }

    /// Run requests and queries on every replica; cancellations and child requests too,
    /// forwarded to the leader by a follower.
    async fn add_endpoints(
        &self,
        service: &async_nats::service::Service,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let requests = Requests::new(&self.nats, metrics::REQUESTS, shutdown, &self.tasks);
        let server = Arc::new(self.clone());
        // A submission starts (or continues) a run's trace; a cancellation is followed
        // too; queries are traced only inside a trace their client began.
        let intake = requests.starting_traces(spans::INTAKE);
        let cancel = requests.starting_traces(spans::CANCEL);
        let endpoints = [
            (
                &intake,
                "request_start",
                keys::REQUEST_START.to_owned(),
                Route::Submit,
            ),
            (
                &intake,
                "request_start_child",
                subject::from_any_worker(keys::REQUEST_START),
                Route::Leader,
            ),
            (&requests, "get", keys::RUN_GET.to_owned(), Route::Get),
            (&requests, "list", keys::RUN_LIST.to_owned(), Route::List),
            (
                &cancel,
                "cancel",
                keys::RUN_CANCEL.to_owned(),
                Route::Leader,
            ),
        ];
        for (requests, name, subject, route) in endpoints {
            let server = Arc::clone(&server);
            requests
                .add(service, name, subject, move |message| {
                    Arc::clone(&server).answer(route, message)
                })
                .await?;
        }
        Ok(())
    }

    /// Answers a request of an endpoint.
    async fn answer(self: Arc<Self>, route: Route, message: Message) -> Result<Bytes, Error> {
        match route {
            Route::Submit => self.submit(&message).await,
            Route::Get => queries::get(&self.store, &self.settings, &message).await,
            Route::List => queries::list(&self.store, &self.settings, &message).await,
            Route::Leader => self.leader_call(&message).await,
        }
    }

    /// The leader's term: run the engine and take forwarded requests.
    async fn lead(self, term: CancellationToken) {
        let engine = Engine::new(
            Arc::clone(&self.settings),
            self.nats.clone(),
            self.store.clone(),
            self.intake.clone(),
            Arc::clone(&self.workers),
            term.clone(),
        );
        *self
            .engine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&engine));
        self.intake
            .set_placer(Some(Arc::new(IntakePlacer::new(&engine))));
        let forwarded = match self.nats.subscribe(internal::SCHEDULER_LEADER).await {
            Ok(subscriber) => Some(subscriber),
            Err(error) => {
                warn!(%error, "could not take forwarded requests");
                None
            }
        };
        // Directives on subjects no worker can have are purged while this replica leads.
        self.tasks.spawn(purge_hostile_every(
            async_nats::jetstream::new(self.nats.clone()),
            resources::DIRECTIVES_STREAM,
            Duration::from_millis(self.settings.hostile_purge_interval_ms),
            term.clone(),
        ));
        let forwarding = forwarded.map(|subscriber| {
            self.tasks
                .spawn(self.clone().take_forwarded(subscriber, term.clone()))
        });
        if let Err(error) = Arc::clone(&engine).lead().await {
            warn!(%error, "the engine stopped");
        }
        term.cancel();
        self.intake.set_placer(None);
        if let Some(forwarding) = forwarding {
            let _ = forwarding.await;
        }
        *self
            .engine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    async fn take_forwarded(self, mut subscriber: async_nats::Subscriber, term: CancellationToken) {
        while let Some(Some(message)) = term.run_until_cancelled(subscriber.next()).await {
            let server = self.clone();
            self.tasks.spawn(async move {
                let Some(reply_to) = message.reply.clone() else {
                    return;
                };
                let original = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(FORWARDED_SUBJECT))
                    .map(|value| value.as_str().to_owned())
                    .unwrap_or_default();
                // The follower put its request span here.
                let trace = TraceContext::from_headers(message.headers.as_ref());
                let result = match server.engine() {
                    Some(engine) => server.on_leader(&engine, &original, &message, trace).await,
                    None => Err(RouteError::LeadershipChanged.into()),
                };
                match result {
                    Ok(body) => reply::ok_bytes(&server.nats, &reply_to, body).await,
                    Err(error) => {
                        reply::error(&server.nats, &reply_to, &error.to_wire(&original)).await;
                    }
                }
            });
        }
    }

    async fn submit(&self, message: &Message) -> Result<Bytes, Error> {
        let spec: RunSpec = decode(&message.payload, self.settings.max_payload_bytes)?;
        note_in_span("drover.routine_id", &spec.routine_id);
        let trace = TraceContext::current(&TraceContext::from_headers(message.headers.as_ref()));
        let submitted = self.intake.submit(spec, Origin::Client, trace).await?;
        note_in_span("drover.run_id", &submitted.accepted.run_id);
        Ok(encode(&submitted.accepted))
    }

    /// Cancellation and child requests: done by the leader, forwarded there by followers.
    async fn leader_call(&self, message: &Message) -> Result<Bytes, Error> {
        let subject = message.subject.as_str();
        // Check the request here too, so that a bad one is refused without a round trip.
        self.precheck(subject, message)?;
        // This request's span: a child run is accepted under it, wherever the leader is.
        let trace = TraceContext::current(&TraceContext::from_headers(message.headers.as_ref()));
        if let Some(engine) = self.engine() {
            return self.on_leader(&engine, subject, message, trace).await;
        }
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert(FORWARDED_SUBJECT, subject);
        drover_telemetry::inject_current(&mut headers);
        let deadline = tokio::time::Instant::now() + FORWARD_PATIENCE;
        let mut backoff = Backoff::new(FORWARD_FIRST_RETRY, FORWARD_MAX_RETRY);
        loop {
            let attempt = self.nats.request_with_headers(
                internal::SCHEDULER_LEADER,
                headers.clone(),
                message.payload.clone(),
            );
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(response)) => {
                    if let Ok(Ok(accepted)) = decode_reply::<Accepted>(&response.payload) {
                        note_in_span("drover.run_id", &accepted.run_id);
                    }
                    return Ok(response.payload);
                }
                Ok(Err(error)) => debug!(%error, "no leader to forward to yet"),
                Err(_) => debug!("the leader did not answer in time"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RouteError::NoLeader.into());
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    fn precheck(&self, subject: &str, message: &Message) -> Result<(), Error> {
        let limit = self.settings.max_payload_bytes;
        if subject == keys::RUN_CANCEL {
            let cancel = decode::<RunCancel>(&message.payload, limit)?;
            note_in_span("drover.run_id", &cancel.run_id);
        } else {
            let spec = decode::<RunSpec>(&message.payload, limit)?;
            note_in_span("drover.routine_id", &spec.routine_id);
        }
        Ok(())
    }

    async fn on_leader(
        &self,
        engine: &Arc<Engine>,
        subject: &str,
        message: &Message,
        trace: TraceContext,
    ) -> Result<Bytes, Error> {
        let limit = self.settings.max_payload_bytes;
        if subject == keys::RUN_CANCEL {
            let cancel: RunCancel = decode(&message.payload, limit)?;
            let (reply, answer) = oneshot::channel();
            engine.deliver(
                cancel.run_id.clone(),
                Event::Cancel {
                    reason: cancel
                        .reason
                        .unwrap_or_else(|| "cancelled on request".to_owned()),
                    reply: Some(reply),
                },
            );
            let record = answer.await.map_err(|_| RouteError::LeadershipChanged)??;
            return Ok(encode(&record));
        }
        let inbound = subject::parse_inbound(subject).map_err(RouteError::from)?;
        let Some(worker) = inbound.worker else {
            return Err(RouteError::NotFromWorker.into());
        };
        let spec: RunSpec = decode(&message.payload, limit)?;
        crate::intake::validate(&spec, true)?;
        let Some(parent) = spec.parent_run_id.clone() else {
            return Err(SpecError::ParentMissing.into());
        };
        let (reply, answer) = oneshot::channel();
        engine.deliver(
            parent,
            Event::ChildRequest {
                spec,
                worker,
                trace,
                reply,
            },
        );
        let accepted = answer.await.map_err(|_| RouteError::LeadershipChanged)??;
        note_in_span("drover.run_id", &accepted.run_id);
        Ok(encode(&accepted))
    }
}

/// Records `value` as `field` of the span the request is served in (fields its span
/// declares: see `Requests::starting_traces`).
fn note_in_span(field: &'static str, value: &dyn std::fmt::Display) {
    tracing::Span::current().record(field, tracing::field::display(value));
}
