//! Waiting on conditions instead of sleeping, and holding still where a test must see
//! that nothing happens.

use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

/// Timeout that [`assert_eventually!`](crate::assert_eventually) uses when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

const FIRST_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_millis(100);

/// The multiplier from `DROVER_TEST_PATIENCE` (a positive float, default 1.0).
pub fn patience() -> f64 {
    std::env::var("DROVER_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|p| p.is_finite() && *p > 0.0)
        .unwrap_or(1.0)
}

/// Scales a timeout by [`patience`].
pub fn patient(timeout: Duration) -> Duration {
    timeout.mul_f64(patience())
}

/// Polls `f` until it returns `true`, or fails once `timeout` (scaled by [`patience`]) has passed.
///
/// The poll interval starts at 10 ms and grows to 100 ms. A single call of `f` that does
/// not finish before the deadline counts as `false`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `f` until it returns `Some(value)` and returns that value, or fails once `timeout`
/// (scaled by [`patience`]) has passed.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let limit = patient(timeout);
    let start = Instant::now();
    let deadline = start + limit;
    let mut interval = FIRST_INTERVAL;
    let mut polls = 0u32;
    loop {
        polls += 1;
        if let Ok(Some(value)) = tokio::time::timeout_at(deadline, f()).await {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "timed out waiting for {what}: still not true after {:?} ({polls} polls; \
                 timeout {timeout:?} x DROVER_TEST_PATIENCE {})",
                now - start,
                patience()
            );
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 3 / 2).min(MAX_INTERVAL);
    }
}

/// Waits through a window in which nothing may happen, so that the test can then check
/// that nothing did (no live worker declared lost, no late completion applied, a service
/// outage ridden out).
///
/// This is the one fixed wait tests may use: a condition that must become true is awaited
/// with [`wait_until`] instead. The window lasts `duration` scaled by [`patience`], so that
/// on a slow machine the system under test has as long to misbehave as it has to behave.
pub async fn hold_for(duration: Duration) {
    tokio::time::sleep(patient(duration)).await;
}

/// Asserts that an async condition becomes true in time, panicking with the message if not.
///
/// The condition is an expression that may use `.await`; it is re-evaluated until it is
/// true. Forms:
///
/// ```ignore
/// assert_eventually!(counter.load(SeqCst) == 3, "counter reaches 3");
/// assert_eventually!(is_ready(&client).await, timeout = Duration::from_secs(30), "ready {}", name);
/// ```
///
/// Without `timeout = ...` the timeout is [`DEFAULT_TIMEOUT`]; either way it is scaled by
/// `DROVER_TEST_PATIENCE`.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, timeout = $timeout:expr, $($msg:tt)+) => {
        if let Err(error) =
            $crate::wait_until(&format!($($msg)+), $timeout, || async { $cond }).await
        {
            panic!("{error}");
        }
    };
    ($cond:expr, $($msg:tt)+) => {
        $crate::assert_eventually!($cond, timeout = $crate::DEFAULT_TIMEOUT, $($msg)+)
    };
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn wait_until_returns_once_true() {
        let calls = AtomicU32::new(0);
        wait_until("third call", Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await
        .expect("condition becomes true");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_until_times_out_with_a_clear_message() {
        let error = wait_until("the impossible", Duration::from_millis(300), || async {
            false
        })
        .await
        .expect_err("never true");
        let message = error.to_string();
        assert!(message.contains("the impossible"), "{message}");
        assert!(message.contains("timed out"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_predicate_is_bounded_by_the_timeout() {
        let result = wait_until(
            "a predicate that never returns",
            Duration::from_secs(1),
            std::future::pending::<bool>,
        )
        .await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn wait_for_returns_the_value() {
        let calls = AtomicU32::new(0);
        let value = wait_for("a value", Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            (n == 1).then_some(n * 10)
        })
        .await
        .expect("value arrives");
        assert_eq!(value, 10);
    }

    #[tokio::test]
    async fn assert_eventually_accepts_both_forms() {
        let calls = AtomicU32::new(0);
        crate::assert_eventually!(calls.fetch_add(1, Ordering::SeqCst) > 1, "calls > {}", 1);
        crate::assert_eventually!(
            calls.load(Ordering::SeqCst) > 2 || calls.fetch_add(1, Ordering::SeqCst) > 0,
            timeout = Duration::from_secs(1),
            "more calls"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hold_for_lasts_the_whole_scaled_window() {
        let start = Instant::now();
        hold_for(Duration::from_millis(1500)).await;
        assert_eq!(start.elapsed(), patient(Duration::from_millis(1500)));
    }

    #[test]
    fn patient_scales_by_the_multiplier() {
        // The variable is not set in this test process unless the caller set it.
        let expected = Duration::from_secs(2).mul_f64(patience());
        assert_eq!(patient(Duration::from_secs(2)), expected);
    }
}
