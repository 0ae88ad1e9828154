//! Wiring: the `drover-scheduler` micro service, leadership, and forwarding to the leader.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use async_nats::service::ServiceExt;
use async_nats::{Client, Message};
use bytes::Bytes;
use drover_protocol::envelope::decode;
use drover_protocol::subject::{self, internal, keys};
use drover_protocol::{encode, RunCancel, RunSpec, WorkerRecord};
use drover_service_kit::kv_cache::KvCache;
use drover_service_kit::{reply, Readiness, Settings};
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::engine::{Engine, Event};
use crate::error::{Error, RouteError, SpecError};
use crate::intake::{Intake, Origin, TraceContext};
use crate::metrics;
use crate::queries;
use crate::store::RunStore;

/// Header carrying the original subject of a request forwarded to the leader.
const FORWARDED_SUBJECT: &str = "Drover-Subject";
/// How long a follower keeps trying to reach a leader (covers an election).
const FORWARD_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(crate) struct Server {
    settings: Arc<Settings>,
    nats: Client,
    store: RunStore,
    intake: Intake,
    workers: Arc<KvCache<WorkerRecord>>,
    engine: Arc<RwLock<Option<Arc<Engine>>>>,
}

fn count(endpoint: &'static str, outcome: &str) {
    ::metrics::counter!(metrics::REQUESTS, "endpoint" => endpoint, "outcome" => outcome.to_owned())
        .increment(1);
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
        let tasks = TaskTracker::new();
        let service = self
            .nats
            .service_builder()
            .description("Drover scheduler: run intake, queries and cancellation")
            .start("drover-scheduler", env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|error| anyhow::anyhow!("starting the micro service: {error}"))?;
        let endpoints = [
            ("request_start", keys::REQUEST_START.to_owned()),
            (
                "request_start_child",
                subject::from_any_worker(keys::REQUEST_START),
            ),
            ("get", keys::RUN_GET.to_owned()),
            ("list", keys::RUN_LIST.to_owned()),
            ("cancel", keys::RUN_CANCEL.to_owned()),
        ];
        for (name, subject) in endpoints {
            let endpoint = service
                .endpoint_builder()
                .name(name)
                .add(subject)
                .await
                .map_err(|error| anyhow::anyhow!("adding the {name} endpoint: {error}"))?;
            tasks.spawn(
                self.clone()
                    .requests(endpoint, name, shutdown.clone(), tasks.clone()),
            );
        }

        let instance = self.settings.instance_id.clone();
        let election_instance = instance.clone();
        let lease = Duration::from_millis(self.settings.leader_lease_ms);
        let leader_server = self.clone();
        let election_shutdown = shutdown.clone();
        tasks.spawn(async move {
            crate::leader::run_for_leadership(
                leaders,
                "scheduler",
                &election_instance,
                lease,
                election_shutdown,
                move |term| {
                    let server = leader_server.clone();
                    async move { server.lead(term).await }
                },
            )
            .await;
        });
        readiness.set_serving(true);
        info!(instance, "scheduler serving");

        shutdown.cancelled().await;
        readiness.set_serving(false);
        if let Err(error) = service.stop().await {
            debug!(%error, "stopping the micro service");
        }
        tasks.close();
        tasks.wait().await;
        Ok(())
    }

    /// The leader's term: run the engine and take forwarded requests.
    async fn lead(self, term: CancellationToken) {
        ::metrics::gauge!(metrics::LEADER).set(1.0);
        let engine = Engine::new(
            Arc::clone(&self.settings),
            self.nats.clone(),
            self.store.clone(),
            self.intake.clone(),
            term.clone(),
        );
        *self
            .engine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&engine));
        let forwarded = match self.nats.subscribe(internal::SCHEDULER_LEADER).await {
            Ok(subscriber) => Some(subscriber),
            Err(error) => {
                warn!(%error, "could not take forwarded requests");
                None
            }
        };
        let forwarding = forwarded
            .map(|subscriber| tokio::spawn(self.clone().take_forwarded(subscriber, term.clone())));
        if let Err(error) = Arc::clone(&engine).lead(Arc::clone(&self.workers)).await {
            warn!(%error, "the engine stopped");
        }
        term.cancel();
        if let Some(forwarding) = forwarding {
            let _ = forwarding.await;
        }
        *self
            .engine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        ::metrics::gauge!(metrics::LEADER).set(0.0);
    }

    async fn take_forwarded(self, mut subscriber: async_nats::Subscriber, term: CancellationToken) {
        loop {
            let message = tokio::select! {
                () = term.cancelled() => return,
                message = subscriber.next() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let server = self.clone();
            tokio::spawn(async move {
                let Some(reply_to) = message.reply.clone() else {
                    return;
                };
                let original = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(FORWARDED_SUBJECT))
                    .map(|value| value.as_str().to_owned())
                    .unwrap_or_default();
                let result = match server.engine() {
                    Some(engine) => server.on_leader(&engine, &original, &message).await,
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

    async fn requests(
        self,
        mut endpoint: async_nats::service::endpoint::Endpoint,
        name: &'static str,
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
            let server = self.clone();
            let span = tracing::info_span!("scheduler.request", endpoint = name);
            drover_telemetry::set_parent_from_headers(&span, request.message.headers.as_ref());
            // Boxed so that the task holds a pointer, not the whole request future.
            tasks.spawn(Box::pin(
                async move {
                    let message = &request.message;
                    let subject = message.subject.as_str();
                    let result = match name {
                        "request_start" => server.submit(message).await,
                        "get" => queries::get(&server.store, &server.settings, message).await,
                        "list" => queries::list(&server.store, &server.settings, message).await,
                        _ => server.leader_call(subject, message).await,
                    };
                    match result {
                        Ok(body) => {
                            count(name, "ok");
                            reply::ok_bytes_request(&request, body).await;
                        }
                        Err(error) => {
                            let error = error.to_wire(subject);
                            count(name, error.code.as_str());
                            debug!(subject, code = %error.code, message = %error.message, "request rejected");
                            reply::error_request(&server.nats, &request, &error).await;
                        }
                    }
                }
                .instrument(span),
            ));
        }
    }

    async fn submit(&self, message: &Message) -> Result<Bytes, Error> {
        let spec: RunSpec = decode(&message.payload, self.settings.max_payload_bytes)?;
        let trace = TraceContext::from_headers(message.headers.as_ref());
        let submitted = self.intake.submit(spec, Origin::Client, trace).await?;
        Ok(encode(&submitted.accepted))
    }

    /// Cancellation and child requests: done by the leader, forwarded there by followers.
    async fn leader_call(&self, subject: &str, message: &Message) -> Result<Bytes, Error> {
        // Check the request here too, so that a bad one is refused without a round trip.
        self.precheck(subject, message)?;
        if let Some(engine) = self.engine() {
            return self.on_leader(&engine, subject, message).await;
        }
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert(FORWARDED_SUBJECT, subject);
        let deadline = tokio::time::Instant::now() + FORWARD_PATIENCE;
        loop {
            let attempt = self.nats.request_with_headers(
                internal::SCHEDULER_LEADER,
                headers.clone(),
                message.payload.clone(),
            );
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(response)) => return Ok(response.payload),
                Ok(Err(error)) => debug!(%error, "no leader to forward to yet"),
                Err(_) => debug!("the leader did not answer in time"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RouteError::NoLeader.into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn precheck(&self, subject: &str, message: &Message) -> Result<(), Error> {
        let limit = self.settings.max_payload_bytes;
        if subject == keys::RUN_CANCEL {
            decode::<RunCancel>(&message.payload, limit)?;
        } else {
            decode::<RunSpec>(&message.payload, limit)?;
        }
        Ok(())
    }

    async fn on_leader(
        &self,
        engine: &Arc<Engine>,
        subject: &str,
        message: &Message,
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
                trace: TraceContext::from_headers(message.headers.as_ref()),
                reply,
            },
        );
        let accepted = answer.await.map_err(|_| RouteError::LeadershipChanged)??;
        Ok(encode(&accepted))
    }
}
