//! Wiring: the `drover-registry` micro service, the directive consumer, internal requests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind};
use async_nats::service::ServiceExt;
use async_nats::{Client, Message, Subject};
use bytes::Bytes;
use drover_protocol::envelope::{decode, decode_internal, decode_query, encode_internal};
use drover_protocol::subject::{self, internal, keys, resources};
use drover_protocol::{
    Claim, ErrorCode, ErrorPayload, InternalReply, LivenessReport, Ready, Register, Registered,
    RegistryGet, RegistryList, Release, Terminating, Timestamp, Waiting, WorkerId, WorkerList,
    WorkerRecord,
};
use drover_service_kit::{consume, reply, Readiness, Settings};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::metrics;
use crate::store::{MutateError, WorkerStore};
use crate::transitions::{self, Outcome, Rejection, Timings};

/// Everything the handlers need.
#[derive(Clone)]
pub(crate) struct Server {
    pub settings: Arc<Settings>,
    pub nats: Client,
    pub js: jetstream::Context,
    pub store: Arc<WorkerStore>,
    pub timings: Timings,
}

fn count(endpoint: &'static str, outcome: &str) {
    ::metrics::counter!(metrics::REQUESTS, "endpoint" => endpoint, "outcome" => outcome.to_owned())
        .increment(1);
}

fn rejection_error(rejection: Rejection, in_reply_to: &str) -> ErrorPayload {
    ErrorPayload::new(rejection.code, rejection.message, in_reply_to)
        .with_details(rejection.details)
}

fn store_error(error: MutateError, in_reply_to: &str) -> ErrorPayload {
    match error {
        MutateError::Rejected(rejection) => rejection_error(rejection, in_reply_to),
        MutateError::Store(message) => {
            ErrorPayload::new(ErrorCode::Unavailable, message, in_reply_to)
        }
    }
}

impl Server {
    pub(crate) async fn serve(
        self,
        shutdown: CancellationToken,
        readiness: Readiness,
    ) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let service = self
            .nats
            .service_builder()
            .description("Drover worker registry: registration, statuses and discovery")
            .start("drover-registry", env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|error| anyhow::anyhow!("starting the micro service: {error}"))?;
        let register = service
            .endpoint_builder()
            .name("register")
            .add(subject::from_any_worker(keys::REGISTER))
            .await
            .map_err(|error| anyhow::anyhow!("adding the register endpoint: {error}"))?;
        let list = service
            .endpoint_builder()
            .name("list")
            .add(keys::REGISTRY_LIST)
            .await
            .map_err(|error| anyhow::anyhow!("adding the list endpoint: {error}"))?;
        let get = service
            .endpoint_builder()
            .name("get")
            .add(keys::REGISTRY_GET)
            .await
            .map_err(|error| anyhow::anyhow!("adding the get endpoint: {error}"))?;

        let internal_subjects = [
            internal::REGISTRY_CLAIM,
            internal::REGISTRY_RELEASE,
            internal::REGISTRY_WAITING,
            internal::REGISTRY_LIVENESS,
        ];
        let mut internal_subs = Vec::new();
        for name in internal_subjects {
            let sub = self
                .nats
                .queue_subscribe(name, "drover-registry".to_owned())
                .await
                .with_context(|| format!("subscribing to {name}"))?;
            internal_subs.push(sub);
        }
        let internal = futures::stream::select_all(internal_subs);

        let consumer: jetstream::consumer::PullConsumer = self
            .js
            .get_stream(resources::DIRECTIVES_STREAM)
            .await
            .context("opening the directives stream")?
            .get_consumer(resources::REGISTRY_CONSUMER)
            .await
            .map_err(|error| anyhow::anyhow!("opening the registry consumer: {error}"))?;

        tasks.spawn(
            self.clone()
                .requests(register, "register", shutdown.clone(), tasks.clone()),
        );
        tasks.spawn(
            self.clone()
                .requests(list, "list", shutdown.clone(), tasks.clone()),
        );
        tasks.spawn(
            self.clone()
                .requests(get, "get", shutdown.clone(), tasks.clone()),
        );
        tasks.spawn(
            self.clone()
                .internal(internal, shutdown.clone(), tasks.clone()),
        );
        {
            let server = self.clone();
            let client = self.nats.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move {
                consume(consumer, &client, 64, stop, move |message| {
                    let server = server.clone();
                    async move { server.directive(message).await }
                })
                .await;
            });
        }
        tasks.spawn(self.clone().report_gauges(shutdown.clone()));
        readiness.set_serving(true);
        info!("registry serving");

        shutdown.cancelled().await;
        readiness.set_serving(false);
        if let Err(error) = service.stop().await {
            debug!(%error, "stopping the micro service");
        }
        tasks.close();
        tasks.wait().await;
        Ok(())
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
            let span = tracing::info_span!("registry.request", endpoint = name);
            drover_telemetry::set_parent_from_headers(&span, request.message.headers.as_ref());
            tasks.spawn(
                async move {
                    let subject = request.message.subject.to_string();
                    let result = match name {
                        "register" => server.register(&request.message).await,
                        "list" => server.list(&request.message),
                        _ => server.get(&request.message),
                    };
                    match result {
                        Ok(body) => {
                            count(name, "ok");
                            reply::ok_bytes_request(&request, body).await;
                        }
                        Err(error) => {
                            count(name, error.code.as_str());
                            debug!(subject, code = %error.code, message = %error.message, "request rejected");
                            reply::error_request(&server.nats, &request, &error).await;
                        }
                    }
                }
                .instrument(span),
            );
        }
    }

    async fn register(&self, message: &Message) -> Result<Bytes, ErrorPayload> {
        let subject = message.subject.as_str();
        let worker = parse_worker(subject)?;
        let request: Register = decode(&message.payload, self.settings.max_payload_bytes)
            .map_err(|error| error.to_error(subject))?;
        if request.worker_id != worker {
            return Err(ErrorPayload::new(
                ErrorCode::WorkerIdMismatch,
                format!(
                    "payload workerID {:?} differs from the subject's {:?}",
                    request.worker_id.as_str(),
                    worker.as_str()
                ),
                subject,
            ));
        }
        let timings = self.timings;
        let now = Timestamp::now();
        let applied = self
            .store
            .mutate(&worker, |existing| {
                Ok(Outcome::Write(Box::new(transitions::register(
                    existing, &request, timings, now,
                ))))
            })
            .await
            .map_err(|error| store_error(error, subject))?;
        let record = applied.record.ok_or_else(|| {
            ErrorPayload::new(ErrorCode::Internal, "registration wrote no record", subject)
        })?;
        info!(worker = %worker, incarnation = record.incarnation, routines = record.routines.len(), "worker registered");
        Ok(drover_protocol::encode(&Registered {
            worker_id: worker,
            incarnation: record.incarnation,
            heartbeat_interval_ms: timings.heartbeat_interval_ms,
            lost_after_ms: timings.lost_after_ms,
        }))
    }

    fn list(&self, message: &Message) -> Result<Bytes, ErrorPayload> {
        let subject = message.subject.as_str();
        let filter: RegistryList = decode_query(&message.payload, self.settings.max_payload_bytes)
            .map_err(|error| error.to_error(subject))?;
        let limit = match filter.limit {
            None => usize::MAX,
            Some(limit @ 1..=RegistryList::MAX_LIMIT) => limit as usize,
            Some(limit) => {
                return Err(ErrorPayload::new(
                    ErrorCode::SchemaViolation,
                    format!(
                        "limit {limit} is out of range: 1 to {}",
                        RegistryList::MAX_LIMIT
                    ),
                    subject,
                ))
            }
        };
        // A reply must fit in one NATS message: keep room for the envelope and the cursor.
        let max_payload = match self.nats.server_info().max_payload {
            0 => 1 << 20,
            announced => announced,
        };
        let room = max_payload.saturating_sub(1024);
        let mut matching = self
            .store
            .list()
            .into_iter()
            .filter(|worker| {
                filter
                    .cursor
                    .as_deref()
                    .is_none_or(|after| worker.worker_id.as_str() > after)
            })
            .filter(|worker| filter.status.is_none_or(|status| worker.status == status))
            .filter(|worker| {
                filter
                    .routine_id
                    .as_ref()
                    .is_none_or(|routine| worker.routines.contains(routine))
            })
            .filter(|worker| {
                filter.labels.as_ref().is_none_or(|labels| {
                    labels
                        .iter()
                        .all(|(key, value)| worker.labels.get(key) == Some(value))
                })
            })
            .peekable();
        let mut workers = Vec::new();
        let mut size = 0;
        while let Some(worker) = matching.peek() {
            let record_size = serde_json::to_vec(worker).map_or(0, |bytes| bytes.len() + 1);
            if workers.len() == limit || (!workers.is_empty() && size + record_size > room) {
                break;
            }
            size += record_size;
            workers.extend(matching.next());
        }
        let next_cursor = matching
            .peek()
            .is_some()
            .then(|| {
                workers
                    .last()
                    .map(|last: &WorkerRecord| last.worker_id.to_string())
            })
            .flatten();
        Ok(drover_protocol::encode(&WorkerList {
            workers,
            next_cursor,
        }))
    }

    fn get(&self, message: &Message) -> Result<Bytes, ErrorPayload> {
        let subject = message.subject.as_str();
        let request: RegistryGet = decode(&message.payload, self.settings.max_payload_bytes)
            .map_err(|error| error.to_error(subject))?;
        match self.store.get(&request.worker_id) {
            Some(record) => Ok(drover_protocol::encode(&record)),
            None => Err(ErrorPayload::new(
                ErrorCode::UnknownWorker,
                format!("worker {:?} is not registered", request.worker_id.as_str()),
                subject,
            )),
        }
    }

    /// `v1.ready.<w>` and `v1.terminating.<w>`, read from `DROVER_DIRECTIVES`.
    async fn directive(&self, message: jetstream::Message) {
        let subject = message.subject.to_string();
        let outcome = self.apply_directive(&subject, &message.payload).await;
        let ack = match outcome {
            Ok(()) => message.ack().await,
            Err(Failure::Rejected(error, worker)) => {
                count("directive", error.code.as_str());
                debug!(subject, code = %error.code, message = %error.message, "directive rejected");
                if let Some(worker) = worker {
                    reply::to_worker_error(&self.nats, &worker, &error).await;
                }
                message.ack().await
            }
            Err(Failure::Retry(reason)) => {
                warn!(subject, reason, "directive not applied, will retry");
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                    .await
            }
        };
        if let Err(error) = ack {
            warn!(subject, %error, "could not acknowledge a directive");
        }
    }

    async fn apply_directive(&self, subject: &str, body: &[u8]) -> Result<(), Failure> {
        let worker = match parse_worker(subject) {
            Ok(worker) => worker,
            Err(error) => return Err(Failure::Rejected(error, None)),
        };
        let inbound = subject::parse_inbound(subject).map_err(|error| {
            Failure::Rejected(invalid_subject(subject, &error.to_string()), None)
        })?;
        let limit = self.settings.max_payload_bytes;
        let reject = |error: ErrorPayload| Failure::Rejected(error, Some(worker.clone()));
        let result = match inbound.key {
            keys::READY => {
                let ready: Ready = decode(body, limit).map_err(|e| reject(e.to_error(subject)))?;
                let now = Timestamp::now();
                self.store
                    .mutate(&worker, |existing| {
                        transitions::ready(existing, worker.as_str(), ready.incarnation, now)
                    })
                    .await
            }
            keys::TERMINATING => {
                let terminating: Terminating =
                    decode(body, limit).map_err(|e| reject(e.to_error(subject)))?;
                let reason = terminating.reason.as_deref();
                self.store
                    .mutate(&worker, |existing| {
                        transitions::terminating(
                            existing,
                            worker.as_str(),
                            terminating.incarnation,
                            reason,
                        )
                    })
                    .await
            }
            _ => {
                return Err(Failure::Rejected(
                    invalid_subject(subject, "not a registry directive"),
                    Some(worker),
                ))
            }
        };
        match result {
            Ok(applied) => {
                count("directive", "ok");
                if applied.written {
                    info!(worker = %worker, directive = inbound.key, "worker directive applied");
                }
                Ok(())
            }
            Err(MutateError::Rejected(rejection)) => {
                Err(reject(rejection_error(rejection, subject)))
            }
            Err(MutateError::Store(reason)) => Err(Failure::Retry(reason)),
        }
    }

    async fn internal(
        self,
        mut messages: futures::stream::SelectAll<async_nats::Subscriber>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                message = messages.next() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let server = self.clone();
            tasks.spawn(async move {
                let reply_to = message.reply.clone();
                let answer = server.apply_internal(&message).await;
                if let Some(reply_to) = reply_to {
                    server.answer_internal(reply_to, &answer).await;
                }
            });
        }
    }

    async fn apply_internal(&self, message: &Message) -> InternalReply {
        let subject = message.subject.as_str();
        let now = Timestamp::now();
        let result = match subject {
            internal::REGISTRY_CLAIM => match decode_internal::<Claim>(&message.payload) {
                Ok(claim) => {
                    let worker = claim.worker_id.clone();
                    self.store
                        .mutate_batched(
                            &worker,
                            Box::new(move |existing| transitions::claim(existing, &claim, now)),
                        )
                        .await
                }
                Err(error) => {
                    return InternalReply::error(ErrorCode::InvalidJson, error.to_string())
                }
            },
            internal::REGISTRY_RELEASE => match decode_internal::<Release>(&message.payload) {
                Ok(release) => {
                    let worker = release.worker_id.clone();
                    self.store
                        .mutate_batched(
                            &worker,
                            Box::new(move |existing| Ok(transitions::release(existing, &release))),
                        )
                        .await
                }
                Err(error) => {
                    return InternalReply::error(ErrorCode::InvalidJson, error.to_string())
                }
            },
            internal::REGISTRY_WAITING => match decode_internal::<Waiting>(&message.payload) {
                Ok(report) => {
                    self.store
                        .mutate(&report.worker_id, |existing| {
                            Ok(transitions::waiting(existing, &report))
                        })
                        .await
                }
                Err(error) => {
                    return InternalReply::error(ErrorCode::InvalidJson, error.to_string())
                }
            },
            internal::REGISTRY_LIVENESS => {
                match decode_internal::<LivenessReport>(&message.payload) {
                    Ok(report) => {
                        let applied = self
                            .store
                            .mutate(&report.worker_id, |existing| {
                                Ok(transitions::liveness(existing, &report))
                            })
                            .await;
                        if let (Ok(applied), Some(liveness)) = (&applied, report.liveness) {
                            if applied.written {
                                info!(worker = %report.worker_id, incarnation = report.incarnation, ?liveness, "liveness applied");
                            }
                        }
                        applied
                    }
                    Err(error) => {
                        return InternalReply::error(ErrorCode::InvalidJson, error.to_string())
                    }
                }
            }
            _ => {
                return InternalReply::error(ErrorCode::InvalidSubject, "unknown internal subject")
            }
        };
        let endpoint = subject.rsplit('.').next().unwrap_or("internal");
        match result {
            Ok(_) => {
                count("internal", "ok");
                InternalReply::ok()
            }
            Err(MutateError::Rejected(rejection)) => {
                count("internal", rejection.code.as_str());
                debug!(endpoint, code = %rejection.code, message = %rejection.message, "internal request refused");
                InternalReply::error(rejection.code, rejection.message)
            }
            Err(MutateError::Store(reason)) => InternalReply::error(ErrorCode::Unavailable, reason),
        }
    }

    async fn answer_internal(&self, reply_to: Subject, answer: &InternalReply) {
        if let Err(error) = self.nats.publish(reply_to, encode_internal(answer)).await {
            warn!(%error, "could not answer an internal request");
        }
    }

    async fn report_gauges(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut counts = std::collections::HashMap::new();
            for record in self.store.list() {
                *counts.entry(record.status).or_insert(0u64) += 1;
            }
            for status in drover_protocol::WorkerStatus::ALL {
                let value = counts.get(&status).copied().unwrap_or(0);
                ::metrics::gauge!(metrics::WORKERS, "status" => status.as_str()).set(value as f64);
            }
        }
    }
}

enum Failure {
    Rejected(ErrorPayload, Option<WorkerId>),
    Retry(String),
}

fn invalid_subject(subject: &str, reason: &str) -> ErrorPayload {
    ErrorPayload::new(
        ErrorCode::InvalidSubject,
        format!("subject {subject:?} is not usable: {reason}"),
        subject,
    )
}

fn parse_worker(subject: &str) -> Result<WorkerId, ErrorPayload> {
    match subject::parse_inbound(subject) {
        Ok(inbound) => inbound
            .worker
            .ok_or_else(|| invalid_subject(subject, "no workerID token")),
        Err(error) => Err(invalid_subject(subject, &error.to_string())),
    }
}
