//! What each Drover stream and key-value bucket holds, as gauges: the figures an operator
//! sizes disk and retention by (docs/operations.md).
//!
//! A bucket is the stream `KV_<bucket>`, and is reported under that name, as `nats stream
//! ls` shows it. The figures are JetStream's own (`STREAM.INFO`): the bytes stored count
//! each message's subject, headers and body, not the file store's block overhead.

use std::time::Duration;

use async_nats::jetstream::Context;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::{STORED_BYTES, STORED_MESSAGES};
use crate::resources::{bucket_configs, stream_configs};
use crate::settings::Settings;

/// The stream name of every Drover stream and bucket, as `STREAM.INFO` takes it.
pub fn stored_streams(settings: &Settings) -> Vec<String> {
    let streams = stream_configs(settings)
        .into_iter()
        .map(|config| config.name);
    let buckets = bucket_configs(settings)
        .into_iter()
        .map(|config| format!("KV_{}", config.bucket));
    streams.chain(buckets).collect()
}

/// Sets [`STORED_BYTES`] and [`STORED_MESSAGES`] of each of `streams` now, then every
/// `interval`, until `shutdown`. A stream that cannot be read keeps its last figures until
/// it can be read again.
pub async fn report_storage_every(
    js: Context,
    streams: Vec<String>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
        for name in &streams {
            // Looking a stream up reads its info (`STREAM.INFO`), state included.
            let info = js.get_stream(name);
            match shutdown.run_until_cancelled(info).await {
                Some(Ok(stream)) => {
                    let state = &stream.cached_info().state;
                    let stream = name.clone();
                    ::metrics::gauge!(STORED_BYTES, "stream" => stream.clone())
                        .set(state.bytes as f64);
                    ::metrics::gauge!(STORED_MESSAGES, "stream" => stream)
                        .set(state.messages as f64);
                }
                Some(Err(error)) => debug!(stream = %name, %error, "stream info unavailable"),
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::subject::resources;

    #[test]
    fn every_stream_and_bucket_is_reported_under_its_stream_name() {
        let streams = stored_streams(&Settings::default());
        for name in [
            resources::QUEUE_STREAM.to_owned(),
            resources::DIRECTIVES_STREAM.to_owned(),
            resources::LOGS_STREAM.to_owned(),
            format!("KV_{}", resources::RUNS_BUCKET),
            format!("KV_{}", resources::WORKERS_BUCKET),
        ] {
            assert!(streams.contains(&name), "{name} in {streams:?}");
        }
        assert_eq!(
            streams.len(),
            stream_configs(&Settings::default()).len() + bucket_configs(&Settings::default()).len()
        );
    }
}
