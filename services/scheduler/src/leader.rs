//! Leader election through a lease in KV `DROVER_LEADERS` (DESIGN §1).
//!
//! The bucket's `max_age` is the lease: the leader renews its key with compare-and-set
//! every third of it, and a key that is not renewed expires, so a follower's `create`
//! succeeds. A leader that cannot renew steps down before its lease runs out.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Store};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Competes for `key` until `shutdown`; while this process holds it, runs `lead` with a
/// token that is cancelled when leadership ends.
pub async fn run_for_leadership<F, Fut>(
    bucket: Store,
    key: &str,
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
    while !shutdown.is_cancelled() {
        match bucket.create(key, value.clone()).await {
            Ok(revision) => {
                info!(key, instance, "elected leader");
                let term = shutdown.child_token();
                let task = tokio::spawn(lead(term.clone()));
                let mut revision = revision;
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(period) => {}
                    }
                    let renewed =
                        tokio::time::timeout(period, bucket.update(key, value.clone(), revision))
                            .await;
                    match renewed {
                        Ok(Ok(next)) => revision = next,
                        Ok(Err(error)) => {
                            warn!(key, %error, "could not renew the leader lease, stepping down");
                            break;
                        }
                        Err(_) => {
                            warn!(key, "renewing the leader lease timed out, stepping down");
                            break;
                        }
                    }
                }
                term.cancel();
                if let Err(error) = task.await {
                    warn!(%error, "the leader's work ended abnormally");
                }
                if shutdown.is_cancelled() {
                    // Hand over at once instead of letting the lease run out.
                    if let Err(error) = bucket.delete_expect_revision(key, Some(revision)).await {
                        debug!(%error, "could not release the leader lease");
                    }
                    info!(key, "resigned leadership");
                    return;
                }
                info!(key, "no longer leader");
            }
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {}
            Err(error) => debug!(key, %error, "leader election attempt failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}
