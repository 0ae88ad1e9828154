//! What the workers hold, told to the registry in batches, off the runs' critical path.
//!
//! The leader decides placement from its own view of each worker's slots (see
//! [`placement`](super::placement)); the registry only derives IDLE, WORKING and HANGING
//! from the runs a worker holds. So a placement, a release or a waiting report is queued
//! here and sent a little later, together with everything else that happened meanwhile: one
//! request, and one write per worker at the registry, instead of two writes per run. A run
//! placed and released within one batch never reaches the registry at all, unless it went
//! to an idle worker: that hold is sent at once, on its own, so that the worker shows
//! WORKING (and a `v1.registry.events` of it) however short the run. Waiting reports, rare,
//! go at once too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::Client;
use drover_protocol::envelope::{decode_internal_reply, encode_internal};
use drover_protocol::subject::internal;
use drover_protocol::{Claim, Holding, Holdings, Release, RunId, Waiting};
use drover_service_kit::Backoff;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How long changes gather before they are sent: the registry's view of a worker trails
/// the leader's by about this much (plus one round trip), and a run shorter than this
/// shows its worker WORKING only when others overlap it.
pub(crate) const LINGER: Duration = Duration::from_millis(20);
/// How long the registry has to answer a batch.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The queue of changes, and the task that sends them.
#[derive(Debug)]
pub struct HoldingsReporter {
    nats: Client,
    queued: Mutex<Queued>,
    /// Something was queued.
    wake: Notify,
    /// A hold that must go at once was queued.
    hurry: Notify,
}

/// Changes not sent yet, and the last one that must go at once.
#[derive(Debug, Default)]
struct Queued {
    changes: Vec<Holding>,
    urgent_upto: Option<usize>,
}

impl HoldingsReporter {
    /// A reporter sending with `nats`; it sends nothing until [`Self::run`].
    pub fn new(nats: Client) -> Self {
        Self {
            nats,
            queued: Mutex::new(Queued::default()),
            wake: Notify::new(),
            hurry: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, change: Holding, urgent: bool) {
        {
            let mut queued = self.lock();
            queued.changes.push(change);
            if urgent {
                queued.urgent_upto = Some(queued.changes.len() - 1);
            }
        }
        self.wake.notify_one();
        if urgent {
            self.hurry.notify_one();
        }
    }

    /// The worker now holds the run; `at_once` when it held nothing before.
    pub fn hold(&self, claim: Claim, at_once: bool) {
        self.push(Holding::Hold(claim), at_once);
    }

    /// The worker now holds the run, recorded before this returns (or given up on after
    /// the registry's timeout): for a run placed again, whose worker record must name the
    /// new attempt before the worker hears of it. It may overtake a queued release of the
    /// earlier attempt, which then removes only that attempt.
    pub async fn hold_now(&self, claim: Claim) {
        if let Err(error) = self.send(&[Holding::Hold(claim)]).await {
            debug!(%error, "hold not delivered");
        }
    }

    /// The worker no longer holds the run.
    pub fn release(&self, release: Release) {
        self.push(Holding::Release(release), false);
    }

    /// A held run starts or stops waiting on its children: sent at once (these are rare,
    /// and HANGING should show while the children run).
    pub fn waiting(&self, report: Waiting) {
        self.push(Holding::Waiting(report), true);
    }

    /// The queued changes, and the index of the last that must go at once.
    fn take(&self) -> (Vec<Holding>, Option<usize>) {
        let mut queued = self.lock();
        let urgent_upto = queued.urgent_upto.take();
        (std::mem::take(&mut queued.changes), urgent_upto)
    }

    fn urgent(&self) -> bool {
        self.lock().urgent_upto.is_some()
    }

    /// Sends batches until `shutdown`, then what is left, once.
    ///
    /// A batch waits [`LINGER`] for more changes, unless it holds an urgent hold: then
    /// everything up to that hold goes at once, uncompressed, in a request (and so a
    /// worker-record write) of its own, and the rest waits for the next batch, so that a
    /// release of the same run cannot share its write.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut unsent: Vec<Holding> = Vec::new();
        loop {
            if unsent.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.wake.notified() => {}
                }
            }
            if !self.urgent() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(LINGER) => {}
                    () = self.hurry.notified() => {}
                }
            }
            let (changes, urgent_upto) = self.take();
            let base = unsent.len();
            unsent.extend(changes);
            let batch = match urgent_upto {
                Some(last) => {
                    let rest = unsent.split_off(base + last + 1);
                    std::mem::replace(&mut unsent, rest)
                }
                None => compress(std::mem::take(&mut unsent)),
            };
            if batch.is_empty() {
                continue;
            }
            if let Err(error) = self.send(&batch).await {
                debug!(%error, changes = batch.len(), "holdings not delivered, will retry");
                let rest = std::mem::replace(&mut unsent, batch);
                unsent.extend(rest);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            } else {
                backoff.reset();
            }
        }
        unsent.extend(self.take().0);
        let batch = compress(unsent);
        if !batch.is_empty() {
            if let Err(error) = self.send(&batch).await {
                debug!(%error, changes = batch.len(), "holdings not delivered at the end of leadership");
            }
        }
    }

    async fn send(&self, changes: &[Holding]) -> Result<(), String> {
        let body = Holdings {
            changes: changes.to_vec(),
        };
        let request = self
            .nats
            .request(internal::REGISTRY_HOLDINGS, encode_internal(&body));
        let response = tokio::time::timeout(TIMEOUT, request)
            .await
            .map_err(|_| "no answer in time".to_owned())?
            .map_err(|error| error.to_string())?;
        let reply = decode_internal_reply(&response.payload).map_err(|error| error.to_string())?;
        if !reply.ok {
            // Refused as a whole (it could not be read): sending it again would not help.
            debug!(code = ?reply.code, message = ?reply.message, "holdings refused");
        }
        Ok(())
    }
}

/// `changes` without the runs that were placed and released again within them: a hold, the
/// first release after it of that attempt or a later one, and that run's changes in between
/// cancel out. Everything else keeps its order.
pub(crate) fn compress(changes: Vec<Holding>) -> Vec<Holding> {
    let mut dropped = vec![false; changes.len()];
    // Per run: the index of a hold in this batch not yet released, its attempt, and the
    // changes to that run since.
    let mut open: HashMap<&RunId, (u64, Vec<usize>)> = HashMap::new();
    for (index, change) in changes.iter().enumerate() {
        match change {
            Holding::Hold(claim) => {
                open.insert(&claim.run_id, (claim.attempt, vec![index]));
            }
            Holding::Waiting(report) => {
                if let Some((_, indices)) = open.get_mut(&report.run_id) {
                    indices.push(index);
                }
            }
            Holding::Release(release) => {
                let cancels = open
                    .get(&release.run_id)
                    .is_some_and(|(attempt, _)| release.attempt >= *attempt);
                if cancels {
                    if let Some((_, indices)) = open.remove(&release.run_id) {
                        for earlier in indices {
                            dropped[earlier] = true;
                        }
                        dropped[index] = true;
                    }
                }
            }
        }
    }
    changes
        .into_iter()
        .zip(dropped)
        .filter_map(|(change, dropped)| (!dropped).then_some(change))
        .collect()
}

#[cfg(test)]
mod tests {
    use drover_protocol::WorkerId;

    use super::*;

    fn w() -> WorkerId {
        WorkerId::parse("w1").expect("valid")
    }

    fn hold(run: &RunId, attempt: u64) -> Holding {
        Holding::Hold(Claim {
            worker_id: w(),
            incarnation: 1,
            run_id: run.clone(),
            attempt,
            traceparent: None,
        })
    }

    fn release(run: &RunId, attempt: u64) -> Holding {
        Holding::Release(Release {
            worker_id: w(),
            run_id: run.clone(),
            attempt,
        })
    }

    fn waiting(run: &RunId, attempt: u64) -> Holding {
        Holding::Waiting(Waiting {
            worker_id: w(),
            run_id: run.clone(),
            attempt,
            waiting: true,
            version: 1,
        })
    }

    #[test]
    fn a_run_placed_and_released_in_one_batch_is_not_sent() {
        let (a, b) = (RunId::generate(), RunId::generate());
        let changes = vec![hold(&a, 1), hold(&b, 1), waiting(&a, 1), release(&a, 1)];
        assert_eq!(compress(changes), vec![hold(&b, 1)]);
    }

    #[test]
    fn releases_of_runs_held_before_the_batch_are_kept() {
        let a = RunId::generate();
        // Attempt 1 was held before this batch; attempt 2 came and went within it.
        let changes = vec![release(&a, 1), hold(&a, 2), release(&a, 2)];
        assert_eq!(compress(changes), vec![release(&a, 1)]);
    }

    #[test]
    fn a_release_of_an_earlier_attempt_does_not_cancel_a_later_hold() {
        let a = RunId::generate();
        let changes = vec![hold(&a, 2), release(&a, 1)];
        assert_eq!(compress(changes.clone()), changes);
    }
}
