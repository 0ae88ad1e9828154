//! Leadership of the intake, through a lease in KV `DROVER_LEADERS` (DESIGN §1).
//!
//! Only the leader reads `DROVER_LOG_INTAKE`, so that records are stored in the order the
//! lines arrived. The bucket's `max_age` is the lease: the leader renews its key with
//! compare-and-set every third of it, and steps down when a renewal fails or takes longer
//! than a third, so that it has stopped asking for intake before the key can expire and a
//! follower's `create` can succeed.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Store};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics;

/// The key this service's leader holds in `DROVER_LEADERS`.
pub const LEADER_KEY: &str = "log-collector";

/// Competes for the lease until `shutdown`; while this process holds it, runs `lead` with a
/// token that is cancelled when leadership ends, and waits for it to return.
pub async fn run_for_leadership<F, Fut>(
    bucket: Store,
    instance: &str,
    lease: Duration,
    shutdown: CancellationToken,
    mut lead: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let period = (lease / 3).max(Duration::from_millis(50));
    let value = Bytes::from(instance.to_owned());
    ::metrics::gauge!(metrics::INTAKE_LEADER).set(0.0);
    while !shutdown.is_cancelled() {
        match bucket.create(LEADER_KEY, value.clone()).await {
            Ok(revision) => {
                info!(instance, "elected intake leader");
                ::metrics::gauge!(metrics::INTAKE_LEADER).set(1.0);
                let term = shutdown.child_token();
                let task = tokio::spawn(lead(term.clone()));
                let revision = hold(&bucket, &value, revision, period, &shutdown).await;
                term.cancel();
                if let Err(error) = task.await {
                    warn!(%error, "the intake ended abnormally");
                }
                ::metrics::gauge!(metrics::INTAKE_LEADER).set(0.0);
                if shutdown.is_cancelled() {
                    // Hand over at once instead of letting the lease run out.
                    if let Err(error) = bucket
                        .delete_expect_revision(LEADER_KEY, Some(revision))
                        .await
                    {
                        debug!(%error, "could not release the leader lease");
                    }
                    info!("resigned intake leadership");
                    return;
                }
                info!("no longer intake leader");
            }
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {}
            Err(error) => debug!(%error, "leader election attempt failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// Renews the lease every `period` until a renewal fails or `shutdown`; returns the last
/// revision written.
async fn hold(
    bucket: &Store,
    value: &Bytes,
    mut revision: u64,
    period: Duration,
    shutdown: &CancellationToken,
) -> u64 {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return revision,
            () = tokio::time::sleep(period) => {}
        }
        let renewed =
            tokio::time::timeout(period, bucket.update(LEADER_KEY, value.clone(), revision)).await;
        match renewed {
            Ok(Ok(next)) => revision = next,
            Ok(Err(error)) => {
                warn!(%error, "could not renew the intake lease, stepping down");
                return revision;
            }
            Err(_) => {
                warn!("renewing the intake lease timed out, stepping down");
                return revision;
            }
        }
    }
}
