//! Leader election through a lease in KV `DROVER_LEADERS` (DESIGN §1).
//!
//! The bucket's `max_age` is the lease: the leader renews its key with compare-and-set every
//! third of it, and steps down when a renewal fails or takes longer than a third, so that
//! it has stopped leading before the key can expire and a follower's `create` can succeed.
//! A leader that stops on shutdown deletes its key, so that a follower takes over at once
//! instead of waiting for the lease to run out.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Store};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics;

/// The shortest renewal period, whatever the lease.
const MIN_PERIOD: Duration = Duration::from_millis(50);

/// A lease on one key of the leaders bucket, held in the name of one replica.
pub struct Lease {
    bucket: Store,
    key: &'static str,
    holder: String,
    period: Duration,
    gauge: &'static str,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// A lease on `key` of `bucket` (whose `max_age` is `lifetime`), held by `holder`. The
    /// gauge `gauge` reads 1 while this replica leads and 0 otherwise.
    pub fn new(
        bucket: Store,
        key: &'static str,
        holder: impl Into<String>,
        lifetime: Duration,
        gauge: &'static str,
    ) -> Self {
        Self {
            bucket,
            key,
            holder: holder.into(),
            period: renewal_period(lifetime),
            gauge,
        }
    }

    /// What the key holds while this replica leads: its name.
    fn value(&self) -> Bytes {
        Bytes::from(self.holder.clone())
    }
}

/// How often a lease of `lifetime` is renewed (and a follower tries to take it).
fn renewal_period(lifetime: Duration) -> Duration {
    (lifetime / 3).max(MIN_PERIOD)
}

/// Counts and logs a change of leadership, and sets the leader gauge.
fn changed(lease: &Lease, change: &'static str, leading: bool) {
    ::metrics::gauge!(lease.gauge).set(if leading { 1.0 } else { 0.0 });
    ::metrics::counter!(metrics::LEADERSHIP_CHANGES_TOTAL, "lease" => lease.key, "change" => change)
        .increment(1);
    info!(lease = lease.key, holder = %lease.holder, change, "leadership changed");
}

/// Competes for `lease` until `shutdown`; while this replica holds it, runs `lead` with a
/// token that is cancelled when leadership ends, and waits for `lead` to return before
/// competing again.
pub async fn run_for_leadership<F, Fut>(lease: Lease, shutdown: CancellationToken, mut lead: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let key = lease.key;
    ::metrics::gauge!(lease.gauge).set(0.0);
    // Shown from the start, so that the first election counts as an increase.
    ::metrics::counter!(metrics::LEADERSHIP_CHANGES_TOTAL, "lease" => key, "change" => "elected")
        .increment(0);
    while !shutdown.is_cancelled() {
        match lease.bucket.create(key, lease.value()).await {
            Ok(revision) => {
                changed(&lease, "elected", true);
                let term = shutdown.child_token();
                let task = tokio::spawn(lead(term.clone()));
                let revision = hold(&lease, revision, &shutdown).await;
                term.cancel();
                if let Err(error) = task.await {
                    warn!(lease = key, %error, "the leader's work ended abnormally");
                }
                if shutdown.is_cancelled() {
                    if let Err(error) = lease
                        .bucket
                        .delete_expect_revision(key, Some(revision))
                        .await
                    {
                        debug!(lease = key, %error, "could not release the lease");
                    }
                    changed(&lease, "resigned", false);
                    return;
                }
                changed(&lease, "stepped_down", false);
            }
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {}
            Err(error) => debug!(lease = key, %error, "leader election attempt failed"),
        }
        if shutdown
            .run_until_cancelled(tokio::time::sleep(lease.period))
            .await
            .is_none()
        {
            return;
        }
    }
}

/// Renews the lease every period until a renewal fails or takes longer than a period, or
/// `shutdown`; returns the last revision written.
async fn hold(lease: &Lease, mut revision: u64, shutdown: &CancellationToken) -> u64 {
    let key = lease.key;
    loop {
        if shutdown
            .run_until_cancelled(tokio::time::sleep(lease.period))
            .await
            .is_none()
        {
            return revision;
        }
        let renewal = lease.bucket.update(key, lease.value(), revision);
        match tokio::time::timeout(lease.period, renewal).await {
            Ok(Ok(next)) => revision = next,
            Ok(Err(error)) => {
                warn!(lease = key, %error, "could not renew the lease, stepping down");
                return revision;
            }
            Err(_) => {
                warn!(lease = key, "renewing the lease timed out, stepping down");
                return revision;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_three_times_a_lease_but_not_too_often() {
        assert_eq!(
            renewal_period(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(renewal_period(Duration::from_millis(90)), MIN_PERIOD);
        assert_eq!(renewal_period(Duration::ZERO), MIN_PERIOD);
    }
}
