//! `drover pool` in tests: a pool configuration written to a file, the `drover pool run`
//! process with its output in files, its NATS requests (status, scale, restart), the three
//! kinds of worker the examples offer, and a steady stream of runs to put it under load.
//!
//! - [`config`]: a pool configuration (TOML) with groups of the example workers
//!   ([`WorkerKind`]: Rust SDK, Python SDK, no SDK) and the tests' short durations.
//! - [`run`]: `drover pool run` as a child process ([`PoolRun`]), killed on drop with every
//!   process it started; its status, scale and restart requests; waits on its state.
//! - [`state`]: reading a `v1.pool.state`.
//! - [`load`]: streams and batches of runs, and waiting for them to end.

pub mod config;
pub mod load;
pub mod run;
pub mod state;

use std::time::Duration;

use drover_testkit::Stack;

pub use config::*;
pub use load::*;
pub use run::*;
pub use state::*;

pub use crate::registry_record;

/// How long a pool may take to bring its processes up (registered and ready).
pub const STARTED: Duration = Duration::from_secs(40);

/// How long a pool may take to stop, graceful stops included.
pub const STOPPED: Duration = Duration::from_secs(30);

/// How long a restarted or replaced process may take to be running again.
pub const REPLACED: Duration = Duration::from_secs(30);

/// How long the runs of a test may take to end once submitted.
pub const RUNS_END: Duration = Duration::from_secs(60);

/// A stack for pool tests: NATS and the four services, with heartbeats slow enough that a
/// busy machine does not make a live worker look lost.
pub async fn pool_stack() -> Stack {
    Stack::builder()
        .heartbeat_interval_ms(250)
        .lost_after_ms(2500)
        .with_all_services()
        .start()
        .await
        .expect("stack starts")
}

/// The sum of every sample of metric `name` whose labels include all of `labels`, in a
/// Prometheus text exposition (0 when there is none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric_name != name {
                return None;
            }
            let matches = labels
                .iter()
                .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .fold(0.0, |sum, value| sum + value)
}

/// One test for each worker kind, each running `scenario(kind)`:
/// `for_each_kind!(scenario: test_rust_sdk, test_python_sdk, test_no_sdk);`
#[macro_export]
macro_rules! for_each_kind {
    ($scenario:ident: $rust:ident, $python:ident, $plain:ident) => {
        #[tokio::test]
        async fn $rust() {
            $scenario($crate::pool::WorkerKind::RustSdk).await;
        }

        #[tokio::test]
        async fn $python() {
            $scenario($crate::pool::WorkerKind::PythonSdk).await;
        }

        #[tokio::test]
        async fn $plain() {
            $scenario($crate::pool::WorkerKind::NoSdk).await;
        }
    };
}
