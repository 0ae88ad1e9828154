//! The JetStream streams, consumers and buckets every service relies on (DESIGN §7).
//!
//! Every service ensures all of them at start-up, so whichever starts first creates them and
//! no directive is ever published with nobody to keep it.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{CreateKeyValueError, CreateStreamError};
use async_nats::jetstream::stream::{
    Config as StreamConfig, ConsumerError, DiscardPolicy, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{kv, Context};
use drover_protocol::subject::{self, keys, resources, timers};
use tracing::{debug, warn};

use crate::settings::Settings;

/// Deduplication window of the streams that take publishes with a message ID.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Age limit of unconsumed worker directives and log intake.
pub const DIRECTIVES_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Ack wait of the directive, timer and log intake consumers.
///
/// Handling one of these messages takes milliseconds; the ack wait matters when the
/// process that pulled a message dies before acknowledging it, and then bounds how long
/// the message (a worker's completion, say) waits before another replica gets it.
pub const CONSUMER_ACK_WAIT: Duration = Duration::from_secs(5);
/// How long the delete marker left by an expired per-message TTL lives.
pub const TTL_MARKER_LIFETIME: Duration = Duration::from_secs(60);

/// A stream, bucket or consumer that could not be created or updated.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// A stream.
    #[error("stream {name}: {source}")]
    Stream {
        /// The stream.
        name: String,
        /// The server's answer.
        #[source]
        source: CreateStreamError,
    },
    /// A key-value bucket.
    #[error("key-value bucket {name}: {source}")]
    KeyValue {
        /// The bucket.
        name: String,
        /// The server's answer.
        #[source]
        source: CreateKeyValueError,
    },
    /// A durable consumer.
    #[error("consumer {name} on stream {stream}: {source}")]
    Consumer {
        /// The stream it reads.
        stream: String,
        /// The consumer.
        name: String,
        /// The server's answer.
        #[source]
        source: ConsumerError,
    },
}

/// The configuration of every Drover stream, with the settings applied.
pub fn stream_configs(settings: &Settings) -> Vec<StreamConfig> {
    let replicas = settings.js_replicas;
    let work_queue = |name: &str, subjects: Vec<String>| StreamConfig {
        name: name.to_owned(),
        subjects,
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    vec![
        work_queue(
            resources::QUEUE_STREAM,
            vec![subject::all_queues().to_owned()],
        ),
        StreamConfig {
            max_age: DIRECTIVES_MAX_AGE,
            ..work_queue(
                resources::DIRECTIVES_STREAM,
                [
                    keys::READY,
                    keys::STARTING,
                    keys::COMPLETED,
                    keys::TERMINATING,
                ]
                .into_iter()
                .map(subject::from_any_worker)
                .collect(),
            )
        },
        StreamConfig {
            allow_message_schedules: true,
            ..work_queue(resources::TIMERS_STREAM, vec![timers::all().to_owned()])
        },
        StreamConfig {
            max_age: DIRECTIVES_MAX_AGE,
            ..work_queue(
                resources::LOG_INTAKE_STREAM,
                vec![subject::all_worker_logs()],
            )
        },
        StreamConfig {
            name: resources::LOGS_STREAM.to_owned(),
            subjects: vec![subject::all_logs().to_owned()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: replicas,
            max_age: Duration::from_millis(settings.logs_max_age_ms),
            max_bytes: settings.logs_max_bytes,
            discard: DiscardPolicy::Old,
            duplicate_window: DUPLICATE_WINDOW.min(Duration::from_millis(settings.logs_max_age_ms)),
            allow_direct: true,
            ..Default::default()
        },
    ]
}

/// The configuration of every Drover key-value bucket, with the settings applied.
pub fn bucket_configs(settings: &Settings) -> Vec<kv::Config> {
    let bucket = |name: &str| kv::Config {
        bucket: name.to_owned(),
        history: 1,
        storage: StorageType::File,
        num_replicas: settings.js_replicas,
        ..Default::default()
    };
    vec![
        bucket(resources::WORKERS_BUCKET),
        // No age limit: a live run must never expire. Terminal records get a per-message TTL.
        kv::Config {
            limit_markers: Some(TTL_MARKER_LIFETIME),
            ..bucket(resources::RUNS_BUCKET)
        },
        kv::Config {
            limit_markers: Some(TTL_MARKER_LIFETIME),
            ..bucket(resources::RUN_KEYS_BUCKET)
        },
        // Every write renews a lease; one that is not renewed ages out.
        kv::Config {
            max_age: Duration::from_millis(settings.leader_lease_ms),
            ..bucket(resources::LEADERS_BUCKET)
        },
    ]
}

fn durable(name: &str, filters: Vec<String>, max_ack_pending: i64) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subjects: filters,
        ack_policy: AckPolicy::Explicit,
        ack_wait: CONSUMER_ACK_WAIT,
        max_deliver: -1,
        max_ack_pending,
        deliver_policy: DeliverPolicy::All,
        ..Default::default()
    }
}

/// The durable consumers the kit owns, as `(stream, config)`.
pub fn consumer_configs() -> Vec<(&'static str, pull::Config)> {
    vec![
        (
            resources::DIRECTIVES_STREAM,
            durable(
                resources::REGISTRY_CONSUMER,
                vec![
                    subject::from_any_worker(keys::READY),
                    subject::from_any_worker(keys::TERMINATING),
                ],
                10_000,
            ),
        ),
        (
            resources::DIRECTIVES_STREAM,
            durable(
                resources::SCHEDULER_CONSUMER,
                vec![
                    subject::from_any_worker(keys::STARTING),
                    subject::from_any_worker(keys::COMPLETED),
                ],
                10_000,
            ),
        ),
        (
            resources::TIMERS_STREAM,
            durable(
                resources::TIMERS_CONSUMER,
                vec![timers::all_fired().to_owned()],
                10_000,
            ),
        ),
        (
            resources::LOG_INTAKE_STREAM,
            durable(
                resources::LOG_COLLECTOR_CONSUMER,
                vec![subject::all_worker_logs()],
                20_000,
            ),
        ),
    ]
}

/// Idempotently creates or updates every stream, consumer and bucket Drover uses.
///
/// Where the server refuses to change an existing resource (an immutable field differs),
/// the existing one is kept and a warning logged, so that an older deployment still starts.
pub async fn ensure_resources(js: &Context, settings: &Settings) -> Result<(), ResourceError> {
    for config in stream_configs(settings) {
        ensure_stream(js, config).await?;
    }
    for (stream, config) in consumer_configs() {
        ensure_consumer(js, stream, config).await?;
    }
    for config in bucket_configs(settings) {
        ensure_bucket(js, config).await?;
    }
    debug!("jetstream resources ensured");
    Ok(())
}

async fn ensure_stream(js: &Context, config: StreamConfig) -> Result<(), ResourceError> {
    let name = config.name.clone();
    match js.create_or_update_stream(config).await {
        Ok(_) => Ok(()),
        Err(source) => {
            let refused = matches!(
                source.kind(),
                async_nats::jetstream::context::CreateStreamErrorKind::JetStream(_)
            );
            if refused && js.get_stream_no_info(&name).await.is_ok() {
                warn!(stream = %name, error = %source, "stream update refused; keeping the existing configuration");
                return Ok(());
            }
            Err(ResourceError::Stream { name, source })
        }
    }
}

async fn ensure_consumer(
    js: &Context,
    stream: &'static str,
    config: pull::Config,
) -> Result<(), ResourceError> {
    let name = config.durable_name.clone().unwrap_or_default();
    match js
        .create_consumer_on_stream(config, stream)
        .await
        .map(|_: async_nats::jetstream::consumer::PullConsumer| ())
    {
        Ok(()) => Ok(()),
        Err(source) => {
            let refused = matches!(
                source.kind(),
                async_nats::jetstream::stream::ConsumerErrorKind::JetStream(_)
            );
            if refused {
                if let Ok(existing) = js.get_stream_no_info(stream).await {
                    if existing.consumer_info(&name).await.is_ok() {
                        warn!(stream, consumer = %name, error = %source, "consumer update refused; keeping the existing configuration");
                        return Ok(());
                    }
                }
            }
            Err(ResourceError::Consumer {
                stream: stream.to_owned(),
                name,
                source,
            })
        }
    }
}

async fn ensure_bucket(js: &Context, config: kv::Config) -> Result<(), ResourceError> {
    let name = config.bucket.clone();
    match js.create_or_update_key_value(config).await {
        Ok(_) => Ok(()),
        Err(source) => {
            let refused = matches!(
                source.kind(),
                async_nats::jetstream::context::CreateKeyValueErrorKind::JetStream
            );
            if refused && js.get_key_value(&name).await.is_ok() {
                warn!(bucket = %name, error = %source, "bucket update refused; keeping the existing configuration");
                return Ok(());
            }
            Err(ResourceError::KeyValue { name, source })
        }
    }
}
