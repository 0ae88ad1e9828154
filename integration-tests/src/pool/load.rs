//! Runs for a pool's workers: a steady stream from several submitters, batches, and
//! waiting for every one of them to end.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use drover_protocol::{ErrorPayload, RunId, RunRecord, RunSpec, RunStatus};
use drover_testkit::patient;
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::runs::{get, try_submit};

/// A steady stream of runs from several concurrent submitters.
pub struct Load {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<(Vec<RunId>, Vec<ErrorPayload>)>>,
}

impl Load {
    /// Starts `submitters` tasks that each submit `spec`, one run every `pace` at most.
    pub fn start(client: &Client, spec: &RunSpec, submitters: usize, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let tasks = (0..submitters)
            .map(|_| {
                let client = client.clone();
                let spec = spec.clone();
                let stop = Arc::clone(&stop);
                let accepted = Arc::clone(&accepted);
                tokio::spawn(async move {
                    let (mut ids, mut refusals) = (Vec::new(), Vec::new());
                    let mut tick = tokio::time::interval(pace);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Acquire) {
                        tick.tick().await;
                        match try_submit(&client, &spec).await {
                            Ok(id) => {
                                ids.push(id);
                                accepted.fetch_add(1, Ordering::AcqRel);
                            }
                            Err(error) => refusals.push(error),
                        }
                    }
                    (ids, refusals)
                })
            })
            .collect();
        Self {
            stop,
            accepted,
            tasks,
        }
    }

    /// Runs accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    /// Waits until `more` runs have been accepted since this call.
    pub async fn wait_more(&self, more: usize, timeout: Duration) {
        let target = self.accepted() + more;
        drover_testkit::wait_until(&format!("{more} more runs accepted"), timeout, || async {
            self.accepted() >= target
        })
        .await
        .unwrap();
    }

    /// Stops submitting; returns the runs accepted and the refusals.
    pub async fn stop(self) -> (Vec<RunId>, Vec<ErrorPayload>) {
        self.stop.store(true, Ordering::Release);
        let mut ids = Vec::new();
        let mut refusals = Vec::new();
        for task in self.tasks {
            let (mut i, mut r) = task.await.unwrap();
            ids.append(&mut i);
            refusals.append(&mut r);
        }
        (ids, refusals)
    }
}

/// Submits `count` copies of `spec`, `concurrency` at a time; panics on a refusal.
pub async fn submit_many(
    client: &Client,
    spec: &RunSpec,
    count: usize,
    concurrency: usize,
) -> Vec<RunId> {
    futures::stream::iter(0..count)
        .map(|_| async move {
            try_submit(client, spec)
                .await
                .unwrap_or_else(|error| panic!("submission refused: {error}"))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Waits until every run has ended and returns their records.
///
/// # Panics
///
/// When some have not ended within `timeout` (scaled), naming a few of them.
pub async fn wait_all_ended(client: &Client, runs: &[RunId], timeout: Duration) -> Vec<RunRecord> {
    let deadline = tokio::time::Instant::now() + patient(timeout);
    let mut open: Vec<RunId> = runs.to_vec();
    let mut ended = Vec::with_capacity(runs.len());
    loop {
        let looked: Vec<(RunId, Option<RunRecord>)> = futures::stream::iter(open)
            .map(|run| async move {
                let record = get(client, &run).await;
                (run, record)
            })
            .buffer_unordered(32)
            .collect()
            .await;
        open = Vec::new();
        for (run, record) in looked {
            match record {
                Some(record) if record.status.is_terminal() => ended.push(record),
                Some(_) | None => open.push(run),
            }
        }
        if open.is_empty() {
            return ended;
        }
        if tokio::time::Instant::now() >= deadline {
            let mut sample = Vec::new();
            for run in open.iter().take(5) {
                sample.push(get(client, run).await.map(|record| {
                    (
                        record.run_id,
                        record.status,
                        record.worker_id,
                        record.attempt,
                    )
                }));
            }
            panic!(
                "{} of {} runs not ended within {:?}; some: {sample:#?}",
                open.len(),
                runs.len(),
                patient(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every run has ended and asserts that each SUCCEEDED.
pub async fn assert_all_succeeded(client: &Client, runs: &[RunId], timeout: Duration) {
    let records = wait_all_ended(client, runs, timeout).await;
    let failed: Vec<&RunRecord> = records
        .iter()
        .filter(|record| record.status != RunStatus::Succeeded)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} runs did not succeed; the first: {:?}",
        failed.len(),
        records.len(),
        failed.first()
    );
}
