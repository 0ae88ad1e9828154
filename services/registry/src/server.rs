//! Wiring: the `drover-registry` micro service, the directive consumer, internal requests.

use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::{Client, Message, Subject};
use bytes::Bytes;
use drover_protocol::envelope::{decode, decode_internal, decode_query, encode_internal};
use drover_protocol::subject::{self, internal, keys, resources};
use drover_protocol::{
    Claim, Holding, Holdings, InternalReply, LivenessReport, Ready, Register, Registered,
    RegistryGet, RegistryList, Release, Terminating, Timestamp, Waiting, WorkerId, WorkerList,
    WorkerRecord,
};
use drover_service_kit::kv_cache::Change;
use drover_service_kit::{
    consume, drain, open_consumer, settle_counting, start_service, Readiness, Requests, Settings,
    Settlement, WireError,
};
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::error::RegistryError;
use crate::metrics;
use crate::store::{Applied, MutateError, WorkerStore};
use crate::transitions::{self, Outcome, Rejection, Timings};

/// What `$SRV.INFO` says this service does.
const DESCRIPTION: &str = "Drover worker registry: registration, statuses and discovery";

/// Everything the handlers need.
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

impl Server {
    pub(crate) async fn serve(
        self,
        shutdown: CancellationToken,
        readiness: Readiness,
    ) -> anyhow::Result<()> {
        let Some(consumer) = open_consumer(
            &self.js,
            resources::DIRECTIVES_STREAM,
            resources::REGISTRY_CONSUMER,
            &shutdown,
        )
        .await
        else {
            return Ok(());
        };
        let server = Arc::new(self);
        let tasks = TaskTracker::new();
        let service = start_service(&server.nats, "drover-registry", DESCRIPTION).await?;
        let requests = Requests::new(&server.nats, metrics::REQUESTS, &shutdown, &tasks);
        let register = Arc::clone(&server);
        requests
            .add(
                &service,
                "register",
                subject::from_any_worker(keys::REGISTER),
                move |message| Arc::clone(&register).register(message),
            )
            .await?;
        let list = Arc::clone(&server);
        requests
            .add(&service, "list", keys::REGISTRY_LIST, move |message| {
                std::future::ready(list.list(&message))
            })
            .await?;
        let get = Arc::clone(&server);
        requests
            .add(&service, "get", keys::REGISTRY_GET, move |message| {
                std::future::ready(get.get(&message))
            })
            .await?;

        let internal_subjects = [
            internal::REGISTRY_CLAIM,
            internal::REGISTRY_RELEASE,
            internal::REGISTRY_WAITING,
            internal::REGISTRY_HOLDINGS,
            internal::REGISTRY_LIVENESS,
        ];
        let mut internal_subs = Vec::new();
        for name in internal_subjects {
            let sub = server
                .nats
                .queue_subscribe(name, "drover-registry".to_owned())
                .await
                .with_context(|| format!("subscribing to {name}"))?;
            internal_subs.push(sub);
        }
        let internal = futures::stream::select_all(internal_subs);
        tasks.spawn(Arc::clone(&server).internal(internal, shutdown.clone(), tasks.clone()));
        {
            let server = Arc::clone(&server);
            let client = server.nats.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move {
                consume(consumer, &client, 64, stop, move |message| {
                    let server = Arc::clone(&server);
                    async move { server.directive(message).await }
                })
                .await;
            });
        }
        tasks.spawn(Arc::clone(&server).follow_counts(shutdown.clone()));
        readiness.set_serving(true);
        info!("registry serving");

        shutdown.cancelled().await;
        drain(service, &tasks, &readiness).await;
        Ok(())
    }

    async fn register(self: Arc<Self>, message: Message) -> Result<Bytes, RegistryError> {
        let (_, worker) = parse_sender(message.subject.as_str())?;
        let request: Register = decode(&message.payload, self.settings.max_payload_bytes)?;
        if request.worker_id != worker {
            return Err(RegistryError::WorkerIdMismatch {
                payload: request.worker_id,
                subject: worker,
            });
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
            .await?;
        let record = applied.record.ok_or(RegistryError::NoRecord)?;
        info!(worker = %worker, incarnation = record.incarnation, routines = record.routines.len(), "worker registered");
        Ok(drover_protocol::encode(&Registered {
            worker_id: worker,
            incarnation: record.incarnation,
            heartbeat_interval_ms: timings.heartbeat_interval_ms,
            lost_after_ms: timings.lost_after_ms,
        }))
    }

    fn list(&self, message: &Message) -> Result<Bytes, RegistryError> {
        let filter: RegistryList = decode_query(&message.payload, self.settings.max_payload_bytes)?;
        let limit = match filter.limit {
            None => usize::MAX,
            Some(limit @ 1..=RegistryList::MAX_LIMIT) => limit as usize,
            Some(limit) => return Err(RegistryError::LimitOutOfRange(limit)),
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

    fn get(&self, message: &Message) -> Result<Bytes, RegistryError> {
        let request: RegistryGet = decode(&message.payload, self.settings.max_payload_bytes)?;
        match self.store.get(&request.worker_id) {
            Some(record) => Ok(drover_protocol::encode(&record)),
            None => Err(RegistryError::UnknownWorker(request.worker_id)),
        }
    }

    /// `v1.ready.<w>` and `v1.terminating.<w>`, read from `DROVER_DIRECTIVES`.
    async fn directive(&self, message: jetstream::Message) {
        let subject = message.subject.as_str();
        let outcome = match parse_sender(subject) {
            Ok((key, worker)) => self
                .apply_directive(&worker, key, subject, &message.payload)
                .await
                .map_err(|error| (error, Some(worker))),
            Err(error) => Err((error, None)),
        };
        let settlement = match outcome {
            Ok(()) => Settlement::Applied,
            Err((RegistryError::Unavailable(reason), _)) => Settlement::RetryLater { reason },
            Err((error, worker)) => Settlement::Rejected {
                error: error.to_wire(subject),
                worker,
            },
        };
        settle_counting(&self.nats, &message, settlement, |code| {
            count("directive", code.as_str());
            metrics::directive_rejected(code);
        })
        .await;
    }

    async fn apply_directive(
        &self,
        worker: &WorkerId,
        key: &'static str,
        subject: &str,
        body: &[u8],
    ) -> Result<(), RegistryError> {
        let limit = self.settings.max_payload_bytes;
        let applied = match key {
            keys::READY => {
                let ready: Ready = decode(body, limit)?;
                let now = Timestamp::now();
                self.store
                    .mutate(worker, |existing| {
                        transitions::ready(existing, worker.as_str(), ready.incarnation, now)
                    })
                    .await?
            }
            keys::TERMINATING => {
                let terminating: Terminating = decode(body, limit)?;
                let reason = terminating.reason.as_deref();
                self.store
                    .mutate(worker, |existing| {
                        transitions::terminating(
                            existing,
                            worker.as_str(),
                            terminating.incarnation,
                            reason,
                        )
                    })
                    .await?
            }
            _ => return Err(invalid_subject(subject, "not a registry directive")),
        };
        count("directive", "ok");
        if applied.written {
            info!(worker = %worker, directive = key, "worker directive applied");
        }
        Ok(())
    }

    async fn internal(
        self: Arc<Self>,
        mut messages: futures::stream::SelectAll<async_nats::Subscriber>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        while let Some(Some(message)) = shutdown.run_until_cancelled(messages.next()).await {
            let server = Arc::clone(&self);
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
        let endpoint = subject.rsplit('.').next().unwrap_or("internal");
        match self.internal_change(subject, &message.payload).await {
            Ok(_) => {
                count("internal", "ok");
                InternalReply::ok()
            }
            Err(error) => {
                if let RegistryError::Rejected(rejection) = &error {
                    count("internal", rejection.code.as_str());
                    debug!(endpoint, code = %rejection.code, message = %rejection.message, "internal request refused");
                }
                InternalReply::error(error.code(), error.to_string())
            }
        }
    }

    /// Claims, releases, waiting reports and liveness reports from the other services.
    async fn internal_change(&self, subject: &str, body: &[u8]) -> Result<Applied, RegistryError> {
        let applied = match subject {
            internal::REGISTRY_CLAIM => {
                let claim: Claim = decode_internal(body)?;
                self.batched(claim.worker_id.clone(), claim, 1, transitions::claim)
                    .await
            }
            internal::REGISTRY_RELEASE => {
                let release: Release = decode_internal(body)?;
                let change = |existing: Option<&WorkerRecord>, release: &Release, _| {
                    Ok(transitions::release(existing, release))
                };
                self.batched(release.worker_id.clone(), release, 1, change)
                    .await
            }
            internal::REGISTRY_WAITING => {
                let report: Waiting = decode_internal(body)?;
                self.store
                    .mutate(&report.worker_id, |existing| {
                        Ok(transitions::waiting(existing, &report))
                    })
                    .await
            }
            internal::REGISTRY_HOLDINGS => {
                let holdings: Holdings = decode_internal(body)?;
                return self.holdings(holdings).await;
            }
            internal::REGISTRY_LIVENESS => {
                let report: LivenessReport = decode_internal(body)?;
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
            _ => return Err(RegistryError::UnknownInternalSubject),
        };
        Ok(applied?)
    }

    /// Applies a batch of holdings: each worker's changes, in order, in one write (batched
    /// further with whatever else arrives for that worker meanwhile); the workers at once.
    async fn holdings(&self, holdings: Holdings) -> Result<Applied, RegistryError> {
        let mut per_worker: Vec<(WorkerId, Vec<Holding>)> = Vec::new();
        for change in holdings.changes {
            match per_worker
                .iter_mut()
                .find(|(worker, _)| worker == change.worker_id())
            {
                Some((_, changes)) => changes.push(change),
                None => per_worker.push((change.worker_id().clone(), vec![change])),
            }
        }
        let writes = per_worker.into_iter().map(|(worker, changes)| async move {
            let change = |existing: Option<&WorkerRecord>, changes: &Vec<Holding>, now| {
                Ok(transitions::holdings(existing, changes, now))
            };
            let weight = changes.len();
            self.batched(worker, changes, weight, change).await
        });
        let mut last = Applied {
            record: None,
            written: false,
        };
        for applied in futures::future::join_all(writes).await {
            last = applied?;
        }
        Ok(last)
    }

    /// Applies `change` for `request` to the record of `worker`, together with the other
    /// claims and releases that arrive for it meanwhile.
    async fn batched<T: Send + 'static>(
        &self,
        worker: WorkerId,
        request: T,
        weight: usize,
        change: fn(Option<&WorkerRecord>, &T, Timestamp) -> Result<Outcome, Rejection>,
    ) -> Result<Applied, MutateError> {
        let now = Timestamp::now();
        let change =
            Box::new(move |existing: Option<&WorkerRecord>| change(existing, &request, now));
        self.store.mutate_batched(&worker, change, weight).await
    }

    async fn answer_internal(&self, reply_to: Subject, answer: &InternalReply) {
        if let Err(error) = self.nats.publish(reply_to, encode_internal(answer)).await {
            warn!(%error, "could not answer an internal request");
        }
    }

    /// Keeps the workers-by-status gauge with the changes other replicas make (this
    /// replica's own writes count themselves, in `WorkerStore::announce`).
    async fn follow_counts(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.store.cache().subscribe();
        self.store.recount_all();
        while let Some(change) = shutdown.run_until_cancelled(changes.recv()).await {
            match change {
                Ok(Change::Put(key, _) | Change::Deleted(key)) => self.store.recount(&key),
                Err(RecvError::Lagged(missed)) => {
                    debug!(missed, "worker changes lagged, counting afresh");
                    self.store.recount_all();
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

fn invalid_subject(subject: &str, reason: &str) -> RegistryError {
    RegistryError::InvalidSubject {
        subject: subject.to_owned(),
        reason: reason.to_owned(),
    }
}

/// The directive key and the sending worker of a `<key>.<workerID>` subject.
fn parse_sender(subject: &str) -> Result<(&'static str, WorkerId), RegistryError> {
    let inbound = subject::parse_inbound(subject)
        .map_err(|error| invalid_subject(subject, &error.to_string()))?;
    match inbound.worker {
        Some(worker) => Ok((inbound.key, worker)),
        None => Err(invalid_subject(subject, "no workerID token")),
    }
}
