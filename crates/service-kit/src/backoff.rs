//! The one backoff every retry loop of the services uses: exponential, capped, with jitter
//! so that replicas and workers that failed together do not retry together.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// First delay of [`Backoff::default`].
const DEFAULT_FIRST: Duration = Duration::from_millis(100);
/// Longest delay of [`Backoff::default`].
const DEFAULT_MAX: Duration = Duration::from_secs(3);

/// Delays that double from `first` up to `max`, each stretched by a random part of itself
/// (at most `max` in all).
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff").field("max", &self.max).finish()
    }
}

impl Backoff {
    /// A backoff whose first delay is between `first` and twice that, and whose delays never
    /// exceed `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// The delay that follows `failures` failures, for a caller that is handed a count
    /// rather than keeping a backoff (the NATS client's reconnection callback).
    pub fn delay_after(mut self, failures: usize) -> Duration {
        // Past this many doublings every delay is `max` anyway.
        let steps = failures.min(32);
        (0..steps).fold(self.next_delay(), |_, _| self.next_delay())
    }

    /// Starts again from the first delay, after a success.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }

    /// Sleeps the next delay. `false` when `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        shutdown
            .run_until_cancelled(tokio::time::sleep(delay))
            .await
            .is_some()
    }
}

impl Default for Backoff {
    /// The backoff of start-up and reconnection: from 100 ms up to 3 s.
    fn default() -> Self {
        Self::new(DEFAULT_FIRST, DEFAULT_MAX)
    }
}

/// Calls `attempt` until it succeeds, waiting out `backoff` between failures, each failure
/// logged with `what`. `None` when `shutdown` came first.
pub async fn retry_until_cancelled<T, E, F, Fut>(
    what: &str,
    mut backoff: Backoff,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    E: fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match shutdown.run_until_cancelled(attempt()).await? {
            Ok(value) => return Some(value),
            Err(error) => warn!(what, %error, "failed, will retry"),
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn delays_grow_from_first_stay_under_max_and_reset() {
        let first = Duration::from_millis(100);
        let max = Duration::from_secs(3);
        let mut backoff = Backoff::new(first, max);
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= first && delays[0] <= 2 * first, "{delays:?}");
        assert!(delays.iter().all(|delay| *delay <= max), "{delays:?}");
        assert!(
            delays[8..].iter().all(|delay| *delay >= max / 2),
            "{delays:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= 2 * first);
    }

    #[test]
    fn delay_after_counts_failures_from_a_fresh_backoff() {
        let first = Duration::from_millis(100);
        let max = Duration::from_secs(3);
        let after_none = Backoff::new(first, max).delay_after(0);
        assert!(
            after_none >= first && after_none <= 2 * first,
            "{after_none:?}"
        );
        let after_two = Backoff::new(first, max).delay_after(2);
        assert!(after_two >= 4 * first, "{after_two:?}");
        assert!(Backoff::new(first, max).delay_after(usize::MAX) <= max);
        assert!(Backoff::new(first, max).delay_after(40) >= max / 2);
    }

    #[test]
    fn jitter_spreads_replicas_apart() {
        let sample = || {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
            (0..6).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        let runs: Vec<_> = (0..5).map(|_| sample()).collect();
        assert!(
            runs.windows(2).any(|pair| pair[0] != pair[1]),
            "five backoffs gave the same delays: {runs:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_the_first_success() {
        let calls = AtomicU32::new(0);
        let shutdown = CancellationToken::new();
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let value = retry_until_cancelled("counting", backoff, &shutdown, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0..=2 => Err("not yet"),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(value, Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_on_shutdown() {
        let shutdown = CancellationToken::new();
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stopper.cancel();
        });
        let value: Option<()> =
            retry_until_cancelled("never", backoff, &shutdown, || async { Err("down") }).await;
        assert_eq!(value, None);
    }
}
