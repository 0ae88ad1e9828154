//! The raw JetStream "job cycle" (NATS-NOTES.md): the least any durable dispatch can do.
//!
//! One cycle is a JetStream publish that awaits its PubAck, a pull-consumer fetch, a core
//! request/reply to a worker, and an ack. Drover's figures are reported as ratios to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::stats::Throughput;

const STREAM: &str = "BENCH_JOB_CYCLE";
const SUBJECT: &str = "bench.cycle.jobs";
const WORKER: &str = "bench.cycle.worker";

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

/// Runs `jobs` cycles with `in_flight` outstanding at any time.
pub async fn job_cycle(url: &str, in_flight: usize, jobs: usize) -> anyhow::Result<Throughput> {
    let producer = async_nats::connect(url)
        .await
        .context("connecting the producer")?;
    let dispatcher = async_nats::connect(url)
        .await
        .context("connecting the dispatcher")?;
    let worker = async_nats::connect(url)
        .await
        .context("connecting the worker")?;
    let js = jetstream::new(dispatcher.clone());
    let _ = js.delete_stream(STREAM).await;
    let stream = js
        .create_stream(StreamConfig {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECT.to_owned()],
            retention: RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("dispatcher".to_owned()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
        .context("creating the consumer")?;

    // The worker answers every request at once.
    let mut requests = worker.subscribe(WORKER).await?;
    let worker_task = tokio::spawn({
        let worker = worker.clone();
        async move {
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    let _ = worker.publish(reply, request.payload).await;
                }
            }
        }
    });

    // The dispatcher fetches, asks the worker, acks, and reports the job done.
    let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
    let dispatch_task = tokio::spawn({
        let waiters = Arc::clone(&waiters);
        let dispatcher = dispatcher.clone();
        async move {
            loop {
                let Ok(mut batch) = consumer
                    .batch()
                    .max_messages(in_flight.max(1))
                    .expires(Duration::from_secs(1))
                    .messages()
                    .await
                else {
                    continue;
                };
                while let Some(Ok(message)) = batch.next().await {
                    let dispatcher = dispatcher.clone();
                    let waiters = Arc::clone(&waiters);
                    tokio::spawn(async move {
                        if dispatcher
                            .request(WORKER, message.payload.clone())
                            .await
                            .is_ok()
                            && message.ack_with(AckKind::Ack).await.is_ok()
                        {
                            let id = u64::from_le_bytes(
                                message.payload[..8].try_into().unwrap_or_default(),
                            );
                            if let Some(waiter) = waiters
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .remove(&id)
                            {
                                let _ = waiter.send(());
                            }
                        }
                    });
                }
            }
        }
    });

    let producer_js = jetstream::new(producer);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let lanes: Vec<_> = (0..in_flight)
        .map(|_| {
            let js = producer_js.clone();
            let waiters = Arc::clone(&waiters);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if id >= jobs as u64 {
                        return latencies;
                    }
                    let (done, finished) = oneshot::channel();
                    waiters
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(id, done);
                    let at = Instant::now();
                    let mut body = id.to_le_bytes().to_vec();
                    body.resize(256, 0);
                    let acked = match js.publish(SUBJECT, Bytes::from(body)).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if acked && finished.await.is_ok() {
                        latencies.push(at.elapsed());
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(jobs);
    for lane in lanes {
        latencies.extend(lane.await?);
    }
    let wall = started.elapsed();
    dispatch_task.abort();
    worker_task.abort();
    let _ = js.delete_stream(STREAM).await;
    Ok(Throughput::of(in_flight, latencies, wall))
}
