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
use drover_service_kit::{connected, connection_lost, consume, reply};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::actor::DirectiveBody;
use super::{Engine, Event};
use crate::metrics;

/// The most messages one pull request asks for.
const MAX_BATCH: usize = 256;
/// How long a pull request waits for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

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
        tokio::select! {
            () = engine.shutdown.cancelled() => return,
            changed = routines.changed() => if changed.is_err() { return },
        }
    }
}

async fn routine_consumer(engine: &Engine, routine: &RoutineId) -> Result<PullConsumer, String> {
    let stream = engine
        .js
        .get_stream(resources::QUEUE_STREAM)
        .await
        .map_err(|error| error.to_string())?;
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
    stream
        .get_or_create_consumer(&name, config)
        .await
        .map_err(|error| error.to_string())
}

/// Keeps pull requests open on one routine's queue for as many runs as can be placed.
async fn fetch_routine(engine: Arc<Engine>, routine: RoutineId, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let consumer = loop {
        match routine_consumer(&engine, &routine).await {
            Ok(consumer) => break consumer,
            Err(error) => {
                warn!(routine = %routine, %error, "could not open the routine's queue");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
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
    tokio::select! {
        () = stop.cancelled() => {}
        () = connected(&engine.nats) => {}
    }
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
                    engine.dispatcher.incoming(routine);
                    outstanding.fetch_sub(1, Ordering::AcqRel);
                    ::metrics::counter!(metrics::FETCHED).increment(1);
                    match RunId::parse(String::from_utf8_lossy(&message.payload).into_owned()) {
                        Ok(run) => engine.deliver(run, Event::Lease(message)),
                        Err(error) => {
                            engine.dispatcher.arrived(routine);
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
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
    outstanding.fetch_sub(size - received, Ordering::AcqRel);
}

/// Reads `starting` and `completed` from `DROVER_DIRECTIVES` and hands them to run actors.
pub(super) async fn read_directives(engine: Arc<Engine>) {
    let consumer = loop {
        match open_consumer(
            &engine,
            resources::DIRECTIVES_STREAM,
            resources::SCHEDULER_CONSUMER,
        )
        .await
        {
            Ok(consumer) => break consumer,
            Err(error) => {
                warn!(%error, "could not open the directives consumer");
                tokio::select! {
                    () = engine.shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
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
            let error = error.to_error(&subject);
            ::metrics::counter!(metrics::DIRECTIVES_REJECTED, "code" => error.code.as_str())
                .increment(1);
            debug!(subject, code = %error.code, "directive rejected");
            reply::to_worker_error(&engine.nats, &worker, &error).await;
            if let Err(error) = message.ack().await {
                debug!(%error, "could not acknowledge a rejected directive");
            }
        }
    }
}

/// Reads fired timers from `DROVER_TIMERS`.
pub(super) async fn read_timers(engine: Arc<Engine>) {
    let consumer = loop {
        match open_consumer(
            &engine,
            resources::TIMERS_STREAM,
            resources::TIMERS_CONSUMER,
        )
        .await
        {
            Ok(consumer) => break consumer,
            Err(error) => {
                warn!(%error, "could not open the timers consumer");
                tokio::select! {
                    () = engine.shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
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

async fn open_consumer(
    engine: &Engine,
    stream: &str,
    consumer: &str,
) -> Result<PullConsumer, String> {
    engine
        .js
        .get_stream(stream)
        .await
        .map_err(|error| error.to_string())?
        .get_consumer(consumer)
        .await
        .map_err(|error| error.to_string())
}
