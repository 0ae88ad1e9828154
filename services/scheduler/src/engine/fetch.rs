//! The leader's inputs from JetStream: each routine's queue, sized by demand, and the
//! durable consumers of directives and timers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use drover_protocol::envelope::decode;
use drover_protocol::subject::{self, keys, resources, timers};
use drover_protocol::{Completed, RoutineId, RunId, Starting};
use drover_service_kit::WireError;
use drover_service_kit::{
    connected, connection_lost, consume, retry_until_cancelled, settle, Backoff, Settlement,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::actor::DirectiveBody;
use super::{Engine, Event};
use crate::error::Error;
use crate::metrics;
use crate::store::BoxError;

/// The most messages one pull request asks for.
const MAX_BATCH: usize = 256;
/// How long a pull request waits for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Pause after a pull request failed.
const PULL_RETRY: Duration = Duration::from_millis(250);

/// Pauses between attempts to open a consumer.
fn open_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// Keeps one fetcher per routine that live workers serve.
pub(super) async fn fetch_queues(engine: Arc<Engine>) {
    let mut routines = engine.dispatcher.routines();
    let mut running: HashMap<RoutineId, CancellationToken> = HashMap::new();
    loop {
        let wanted = routines.borrow_and_update().clone();
        running.retain(|routine, stop| {
            let keep = wanted.contains(routine);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for routine in wanted {
            if !running.contains_key(&routine) {
                let stop = engine.shutdown.child_token();
                running.insert(routine.clone(), stop.clone());
                engine
                    .tasks
                    .spawn(fetch_routine(Arc::clone(&engine), routine, stop));
            }
        }
        match engine
            .shutdown
            .run_until_cancelled(routines.changed())
            .await
        {
            Some(Ok(())) => {}
            Some(Err(_)) | None => return,
        }
    }
}

async fn routine_consumer(engine: &Engine, routine: &RoutineId) -> Result<PullConsumer, BoxError> {
    let stream = engine.js.get_stream(resources::QUEUE_STREAM).await?;
    let name = routine.consumer_name();
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("Drover queue of routine {routine}")),
        filter_subject: subject::queue(routine),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_millis(engine.settings.run_lease_ms),
        max_deliver: -1,
        max_ack_pending: 1_000_000,
        deliver_policy: DeliverPolicy::All,
        inactive_threshold: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    };
    Ok(stream.get_or_create_consumer(&name, config).await?)
}

/// Keeps pull requests open on one routine's queue for as many runs as can be placed.
async fn fetch_routine(engine: Arc<Engine>, routine: RoutineId, stop: CancellationToken) {
    let what = format!("opening the queue of routine {routine}");
    let Some(consumer) = retry_until_cancelled(&what, open_backoff(), &stop, || {
        routine_consumer(&engine, &routine)
    })
    .await
    else {
        return;
    };
    debug!(routine = %routine, "fetching");
    let mut demand = engine.dispatcher.demand(&routine);
    let outstanding = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    loop {
        let want = *demand.borrow_and_update();
        let have = outstanding.load(Ordering::Acquire);
        trace!(routine = %routine, want, have, "demand");
        if want > have {
            let size = (want - have).min(MAX_BATCH);
            outstanding.fetch_add(size, Ordering::AcqRel);
            let engine = Arc::clone(&engine);
            let consumer = consumer.clone();
            let routine = routine.clone();
            let outstanding = Arc::clone(&outstanding);
            let done = done_tx.clone();
            let stop = stop.clone();
            engine.tasks.clone().spawn(async move {
                pull(&engine, &consumer, &routine, size, &outstanding, &stop).await;
                let _ = done.send(());
            });
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = demand.changed() => if changed.is_err() { return },
            _ = done_rx.recv() => {}
        }
    }
}

async fn pull(
    engine: &Arc<Engine>,
    consumer: &PullConsumer,
    routine: &RoutineId,
    size: usize,
    outstanding: &AtomicUsize,
    stop: &CancellationToken,
) {
    let mut received = 0;
    stop.run_until_cancelled(connected(&engine.nats)).await;
    match consumer
        .batch()
        .max_messages(size)
        .expires(PULL_EXPIRES)
        .messages()
        .await
    {
        Ok(mut batch) => loop {
            let next = tokio::select! {
                () = stop.cancelled() => break,
                // The pull request died with the connection; ask again once it is back.
                () = connection_lost(&engine.nats) => break,
                next = batch.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    trace!(routine = %routine, "queue message received");
                    received += 1;
                    outstanding.fetch_sub(1, Ordering::AcqRel);
                    ::metrics::counter!(metrics::FETCHED).increment(1);
                    match RunId::parse(String::from_utf8_lossy(&message.payload).into_owned()) {
                        Ok(run) => {
                            // A run placed at intake is not one on its way to ask.
                            if !engine.is_placing(&run) {
                                engine.dispatcher.incoming(routine);
                            }
                            engine.deliver(run, Event::Lease(message));
                        }
                        Err(error) => {
                            warn!(routine = %routine, %error, "dropping an unreadable queue message");
                            let _ = message.ack_with(AckKind::Term).await;
                        }
                    }
                }
                Some(Err(error)) => {
                    debug!(routine = %routine, %error, "pull interrupted");
                    break;
                }
                None => break,
            }
        },
        Err(error) => {
            warn!(routine = %routine, %error, "pull request failed");
            stop.run_until_cancelled(tokio::time::sleep(PULL_RETRY))
                .await;
        }
    }
    outstanding.fetch_sub(size - received, Ordering::AcqRel);
}

/// Reads `starting` and `completed` from `DROVER_DIRECTIVES` and hands them to run actors.
pub(super) async fn read_directives(engine: Arc<Engine>) {
    let (stream, durable) = (resources::DIRECTIVES_STREAM, resources::SCHEDULER_CONSUMER);
    let Some(consumer) = open_consumer(&engine, stream, durable).await else {
        return;
    };
    info!("reading directives");
    let handler_engine = Arc::clone(&engine);
    consume(
        consumer,
        &engine.nats,
        MAX_BATCH,
        engine.shutdown.clone(),
        move |message| {
            let engine = Arc::clone(&handler_engine);
            async move { directive(&engine, message).await }
        },
    )
    .await;
}

async fn directive(engine: &Arc<Engine>, message: jetstream::Message) {
    let subject = message.subject.to_string();
    let Ok(inbound) = subject::parse_inbound(&subject) else {
        warn!(subject, "dropping a directive on an unknown subject");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let Some(worker) = inbound.worker else {
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let limit = engine.settings.max_payload_bytes;
    let decoded = match inbound.key {
        keys::STARTING => decode::<Starting>(&message.payload, limit)
            .map(|starting| (starting.run_id.clone(), DirectiveBody::Starting(starting))),
        keys::COMPLETED => decode::<Completed>(&message.payload, limit).map(|completed| {
            (
                completed.run_id.clone(),
                DirectiveBody::Completed(completed),
            )
        }),
        _ => {
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    match decoded {
        Ok((run, body)) => {
            ::metrics::counter!(metrics::DIRECTIVES, "kind" => inbound.key).increment(1);
            engine.deliver(
                run,
                Event::Directive {
                    worker,
                    body,
                    message,
                },
            );
        }
        Err(error) => {
            let rejected = Settlement::Rejected {
                error: Error::from(error).to_wire(&subject),
                worker: Some(worker),
            };
            settle(
                &engine.nats,
                &message,
                rejected,
                metrics::DIRECTIVES_REJECTED,
            )
            .await;
        }
    }
}

/// Reads fired timers from `DROVER_TIMERS`.
pub(super) async fn read_timers(engine: Arc<Engine>) {
    let (stream, durable) = (resources::TIMERS_STREAM, resources::TIMERS_CONSUMER);
    let Some(consumer) = open_consumer(&engine, stream, durable).await else {
        return;
    };
    let handler_engine = Arc::clone(&engine);
    consume(
        consumer,
        &engine.nats,
        MAX_BATCH,
        engine.shutdown.clone(),
        move |message| {
            let engine = Arc::clone(&handler_engine);
            async move {
                match timers::parse_fire(message.subject.as_str()) {
                    Some((timers::TimerKind::MaxWait, run)) => {
                        engine.deliver(run, Event::MaxWait(message));
                    }
                    None => {
                        let _ = message.ack_with(AckKind::Term).await;
                    }
                }
            }
        },
    )
    .await;
}

/// Opens a durable consumer the stream setup created, retrying until leadership ends.
async fn open_consumer(engine: &Engine, stream: &str, consumer: &str) -> Option<PullConsumer> {
    let what = format!("opening the consumer {consumer} of {stream}");
    retry_until_cancelled(&what, open_backoff(), &engine.shutdown, || async {
        let stream = engine.js.get_stream(stream).await?;
        stream.get_consumer(consumer).await
    })
    .await
}
