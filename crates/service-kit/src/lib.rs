//! The bootstrap every Drover service binary uses, in the fixed order of STYLE.md: settings,
//! telemetry, metrics and admin HTTP, signals, NATS, JetStream resources, the service body,
//! then a bounded drain.

pub mod admin;
mod backoff;
mod consume;
mod health_probe;
pub mod hostile;
pub mod kv_cache;
mod leader;
mod lookup;
pub mod metrics;
mod nats;
mod readiness;
pub mod reply;
mod resources;
mod run;
mod serve;
mod settings;
mod settle;
pub mod storage;
pub mod worker_spans;

pub use backoff::{retry_until_cancelled, Backoff};
pub use consume::{connected, connection_lost, consume, PULL_EXPIRES};
pub use drover_nats_connect::{AuthError, NatsAuth};
pub use leader::{run_for_leadership, Lease};
pub use lookup::{look_up, open_bucket, open_consumer, open_stream};
pub use metrics::ServiceMetrics;
pub use nats::{connect, connect_with_auth, ConnectError};
pub use readiness::{Check, Readiness};
pub use resources::{
    bucket_configs, consumer_configs, ensure_resources, stream_configs, ResourceError,
    CONSUMER_ACK_WAIT, DIRECTIVES_MAX_AGE, DUPLICATE_WINDOW, TTL_MARKER_LIFETIME,
};
pub use run::{run_service, ServiceContext, EXIT_CONFIG, EXIT_SECOND_SIGNAL};
pub use serve::{drain, start_service, Requests, WireError};
pub use settings::{
    default_instance_id, load_from, load_nats_auth, load_settings, CommonArgs, ConfigError,
    PickupStrategies, PickupStrategy, Settings, CONFIG_ENV, DEFAULT_NATS_URL, ENV_PREFIX,
    LOADER_ENV_VARS, NATS_AUTH_ENV_VARS, NATS_URL_ENV, SETTING_KEYS, TELEMETRY_ENV_VARS,
};
pub use settle::{settle, settle_counting, Settlement, DIRECTIVE_RETRY_DELAY};

/// This machine's host name, or `localhost` when it cannot be found.
pub fn hostname() -> String {
    let from_env = std::env::var("HOSTNAME").ok();
    let from_files = || {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
    };
    from_env
        .or_else(from_files)
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `url` with any user name, password or token replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let (scheme, rest) = match one.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, one),
            };
            let rest = match rest.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => rest.to_owned(),
            };
            match scheme {
                Some(scheme) => format!("{scheme}://{rest}"),
                None => rest,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redact_url("nats://u:p@host:4222"), "nats://***@host:4222");
        assert_eq!(
            redact_url("nats://a:4222,tls://tok@b:4222"),
            "nats://a:4222,tls://***@b:4222"
        );
        assert_eq!(redact_url("localhost:4222"), "localhost:4222");
    }

    #[test]
    fn hostname_is_never_empty() {
        assert!(!hostname().is_empty());
    }
}
