//! Settings shared by every service and their validation. They are loaded in layers
//! (STYLE "Start-up"): defaults, then a file, then `DROVER_*` environment variables, then
//! flags (see `load`), then [`Settings::validate`].

mod load;
mod pickup;

use std::path::PathBuf;

use drover_protocol::RoutineId;
use serde::{Deserialize, Serialize};

pub use load::{load_from, load_settings, CommonArgs};
pub use pickup::{PickupStrategies, PickupStrategy};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Prefix of every environment variable that sets a [`Settings`] field.
pub const ENV_PREFIX: &str = "DROVER";
/// Names the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "DROVER_CONFIG";
/// The conventional NATS variable, honoured below `DROVER_NATS_URL`.
pub const NATS_URL_ENV: &str = "NATS_URL";
/// Where services connect when nothing else says.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Every [`Settings`] key as a config file spells it; `DROVER_<KEY>` in upper case sets it
/// from the environment. Deployment checks read this list (a test keeps it equal to the
/// keys the loader accepts).
pub const SETTING_KEYS: [&str; 19] = [
    "nats_url",
    "admin_addr",
    "js_replicas",
    "drain_grace_ms",
    "max_payload_bytes",
    "heartbeat_interval_ms",
    "lost_after_ms",
    "run_retention_ms",
    "logs_max_age_ms",
    "logs_max_bytes",
    "leader_lease_ms",
    "run_lease_ms",
    "assign_ack_timeout_ms",
    "max_reassignments",
    "pickup_strategy",
    "pickup_strategies",
    "hostile_purge_interval_ms",
    "storage_metrics_interval_ms",
    "instance_id",
];

/// The environment variables [`load_settings`] reads besides `DROVER_<KEY>`.
pub const LOADER_ENV_VARS: [&str; 2] = ["DROVER_CONFIG", "NATS_URL"];

/// The credential and TLS variables every service reads (`drover_nats_connect::ENV_VARS`):
/// `DROVER_NATS_*`, then the NATS tools' names.
pub const NATS_AUTH_ENV_VARS: [&str; 16] = [
    "DROVER_NATS_CREDS",
    "NATS_CREDS",
    "DROVER_NATS_NKEY",
    "NATS_NKEY",
    "DROVER_NATS_TOKEN",
    "NATS_TOKEN",
    "DROVER_NATS_USER",
    "NATS_USER",
    "DROVER_NATS_PASSWORD",
    "NATS_PASSWORD",
    "DROVER_NATS_TLS_CA",
    "NATS_CA",
    "DROVER_NATS_TLS_CERT",
    "NATS_CERT",
    "DROVER_NATS_TLS_KEY",
    "NATS_KEY",
];

/// The environment variables `drover_telemetry::init`, which every service calls, reads:
/// the log filter and format, the trace filter, and the OpenTelemetry export settings.
pub const TELEMETRY_ENV_VARS: [&str; 11] = [
    "RUST_LOG",
    "DROVER_LOG_FORMAT",
    "DROVER_TRACE_FILTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
];

/// All DROVER_* settings shared by every service (one namespace so one environment
/// configures the whole stack).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// NATS server URL; several may be given separated by commas.
    pub nats_url: String,
    /// Admin HTTP bind address; `None` means the service's own default.
    pub admin_addr: Option<String>,
    /// JetStream replica count for streams and buckets.
    pub js_replicas: usize,
    /// How long shutdown waits for tasks to finish.
    pub drain_grace_ms: u64,
    /// Largest inbound message body accepted.
    pub max_payload_bytes: usize,
    /// How often workers are told to send a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a worker is declared lost.
    pub lost_after_ms: u64,
    /// TTL of terminal run records and run keys (docs/operations.md sizes it).
    pub run_retention_ms: u64,
    /// Age limit of stored log records.
    pub logs_max_age_ms: u64,
    /// Size limit of stored log records (-1: unlimited).
    pub logs_max_bytes: i64,
    /// Lifetime of an unrenewed leader lease.
    pub leader_lease_ms: u64,
    /// Ack wait on queue messages: the lease a dispatched run holds.
    pub run_lease_ms: u64,
    /// How long a worker has to acknowledge an assignment.
    pub assign_ack_timeout_ms: u64,
    /// Bound on reassignments of one run, apart from its retries.
    pub max_reassignments: u32,
    /// How the scheduler chooses among the workers that could take a run, for every
    /// routine without a strategy of its own in `pickup_strategies`.
    pub pickup_strategy: PickupStrategy,
    /// Pickup strategies of some routines: `routine=strategy` pairs, a routine written
    /// exactly or as `prefix.*`.
    pub pickup_strategies: PickupStrategies,
    /// How often the stream owners purge messages whose subject ends in no workerID.
    pub hostile_purge_interval_ms: u64,
    /// How often the scheduler reads the stored bytes and messages of every stream and
    /// bucket into its metrics.
    pub storage_metrics_interval_ms: u64,
    /// Identifies this replica, e.g. in leases and connection names.
    pub instance_id: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            nats_url: DEFAULT_NATS_URL.to_owned(),
            admin_addr: None,
            js_replicas: 1,
            drain_grace_ms: 10_000,
            max_payload_bytes: drover_protocol::DEFAULT_MAX_PAYLOAD_BYTES,
            heartbeat_interval_ms: 5_000,
            lost_after_ms: 15_000,
            run_retention_ms: DAY_MS,
            logs_max_age_ms: DAY_MS,
            logs_max_bytes: 1 << 30,
            leader_lease_ms: 3_000,
            run_lease_ms: 10_000,
            assign_ack_timeout_ms: 5_000,
            max_reassignments: 5,
            pickup_strategy: PickupStrategy::LeastLoaded,
            pickup_strategies: PickupStrategies::default(),
            hostile_purge_interval_ms: 60_000,
            storage_metrics_interval_ms: 15_000,
            instance_id: default_instance_id(),
        }
    }
}

/// `<hostname>-<pid>-<4 random hex>`, reduced to characters safe in subjects and keys.
pub fn default_instance_id() -> String {
    let host: String = crate::hostname()
        .chars()
        .map(|c| if is_id_char(c) { c } else { '-' })
        .take(64)
        .collect();
    let suffix: u16 = rand::random();
    format!("{host}-{}-{suffix:04x}", std::process::id())
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// A setting that could not be loaded or is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The config file is missing, unreadable, of an unknown kind or malformed.
    #[error("config file {path}: {message}")]
    File {
        /// The file named by `--config` or `DROVER_CONFIG`.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A value has the wrong type, or a key is unknown.
    #[error("invalid configuration: {0}")]
    Load(String),
    /// A NATS credential or TLS setting cannot be used (see [`NATS_AUTH_ENV_VARS`]).
    #[error("invalid nats credentials: {0}")]
    Auth(String),
    /// A value is out of range.
    #[error("invalid setting {key} ({env}): {reason}")]
    Invalid {
        /// The settings key.
        key: &'static str,
        /// The environment variable that sets it.
        env: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            env: format!("{ENV_PREFIX}_{}", key.to_ascii_uppercase()),
            reason: reason.into(),
        }
    }
}

pub(crate) fn one_line(text: impl std::fmt::Display) -> String {
    text.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Settings {
    /// Checks that values are in range and consistent with each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let urls = parse_server_addrs(&self.nats_url)
            .map_err(|reason| ConfigError::invalid("nats_url", reason))?;
        if urls.is_empty() {
            return Err(ConfigError::invalid("nats_url", "must not be empty"));
        }
        if let Some(addr) = &self.admin_addr {
            let port = addr.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                return Err(ConfigError::invalid(
                    "admin_addr",
                    format!("{addr:?} is not a host:port address"),
                ));
            }
        }
        if !(1..=5).contains(&self.js_replicas) {
            return Err(ConfigError::invalid(
                "js_replicas",
                format!("must be between 1 and 5, got {}", self.js_replicas),
            ));
        }
        if self.max_payload_bytes < 1024 {
            return Err(ConfigError::invalid(
                "max_payload_bytes",
                format!("must be at least 1024, got {}", self.max_payload_bytes),
            ));
        }
        let durations = [
            ("drain_grace_ms", self.drain_grace_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("lost_after_ms", self.lost_after_ms),
            ("run_retention_ms", self.run_retention_ms),
            ("logs_max_age_ms", self.logs_max_age_ms),
            ("leader_lease_ms", self.leader_lease_ms),
            ("run_lease_ms", self.run_lease_ms),
            ("assign_ack_timeout_ms", self.assign_ack_timeout_ms),
            ("hostile_purge_interval_ms", self.hostile_purge_interval_ms),
            (
                "storage_metrics_interval_ms",
                self.storage_metrics_interval_ms,
            ),
        ];
        for (key, value) in durations {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if self.lost_after_ms < self.heartbeat_interval_ms.saturating_mul(2) {
            return Err(ConfigError::invalid(
                "lost_after_ms",
                format!(
                    "must be at least twice heartbeat_interval_ms ({}), got {}",
                    self.heartbeat_interval_ms, self.lost_after_ms
                ),
            ));
        }
        // JetStream refuses a max_age under 100 ms, and the leases bucket uses this one.
        if self.leader_lease_ms < 100 {
            return Err(ConfigError::invalid(
                "leader_lease_ms",
                format!("must be at least 100, got {}", self.leader_lease_ms),
            ));
        }
        if self.logs_max_bytes == 0 || self.logs_max_bytes < -1 {
            return Err(ConfigError::invalid(
                "logs_max_bytes",
                format!(
                    "must be positive, or -1 for no limit, got {}",
                    self.logs_max_bytes
                ),
            ));
        }
        if self.instance_id.is_empty()
            || self.instance_id.len() > 128
            || !self.instance_id.chars().all(is_id_char)
        {
            return Err(ConfigError::invalid(
                "instance_id",
                format!(
                    "must be 1 to 128 characters of [A-Za-z0-9_-], got {:?}",
                    self.instance_id
                ),
            ));
        }
        Ok(())
    }

    /// The pickup strategy of `routine`: its own in `pickup_strategies`, else
    /// `pickup_strategy`.
    pub fn pickup_strategy_for(&self, routine: &RoutineId) -> PickupStrategy {
        self.pickup_strategies
            .get(routine)
            .unwrap_or(self.pickup_strategy)
    }

    /// The NATS server addresses named by `nats_url`.
    pub fn server_addrs(&self) -> Result<Vec<async_nats::ServerAddr>, ConfigError> {
        parse_server_addrs(&self.nats_url)
            .map_err(|reason| ConfigError::invalid("nats_url", reason))
    }
}

/// The connection's credentials and TLS settings from [`NATS_AUTH_ENV_VARS`], with their
/// files read and seeds checked, so that a bad one stops the start (exit 64) rather than
/// failing every connection attempt.
pub fn load_nats_auth(
    nats_url: &str,
    get: impl Fn(&str) -> Option<String>,
) -> Result<drover_nats_connect::NatsAuth, ConfigError> {
    let invalid = |error: drover_nats_connect::AuthError| ConfigError::Auth(one_line(error));
    let auth = drover_nats_connect::NatsAuth::from_lookup(get).map_err(invalid)?;
    auth.apply(nats_url, async_nats::ConnectOptions::new())
        .map_err(invalid)?;
    Ok(auth)
}

/// Parses a comma-separated list of NATS URLs.
pub(crate) fn parse_server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>().map_err(|error| {
                format!(
                    "{:?} is not a NATS URL: {}",
                    crate::redact_url(url),
                    one_line(error)
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Environment variables as `load_from` takes them.
    pub(super) fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let settings = load_from(&CommonArgs::default(), env(&[])).unwrap();
        let defaults = Settings::default();
        assert_eq!(settings.nats_url, DEFAULT_NATS_URL);
        assert_eq!(settings.admin_addr, None);
        assert_eq!(settings.js_replicas, 1);
        assert_eq!(settings.heartbeat_interval_ms, 5_000);
        assert_eq!(settings.lost_after_ms, 15_000);
        assert_eq!(settings.run_retention_ms, DAY_MS);
        assert_eq!(settings.logs_max_bytes, 1 << 30);
        assert_eq!(
            settings.max_payload_bytes,
            drover_protocol::DEFAULT_MAX_PAYLOAD_BYTES
        );
        assert_eq!(settings.max_reassignments, defaults.max_reassignments);
        assert_eq!(settings.hostile_purge_interval_ms, 60_000);
        assert!(settings
            .instance_id
            .contains(&format!("-{}-", std::process::id())));
        settings.validate().unwrap();
    }

    #[test]
    fn validation_errors_name_the_key() {
        let cases: [(&[(&str, &str)], &str); 9] = [
            (
                &[("DROVER_HEARTBEAT_INTERVAL_MS", "0")],
                "heartbeat_interval_ms",
            ),
            (&[("DROVER_LOST_AFTER_MS", "9000")], "lost_after_ms"),
            (&[("DROVER_JS_REPLICAS", "7")], "js_replicas"),
            (&[("DROVER_MAX_PAYLOAD_BYTES", "100")], "max_payload_bytes"),
            (&[("DROVER_DRAIN_GRACE_MS", "0")], "drain_grace_ms"),
            (
                &[("DROVER_HOSTILE_PURGE_INTERVAL_MS", "0")],
                "hostile_purge_interval_ms",
            ),
            (&[("DROVER_LOGS_MAX_BYTES", "0")], "logs_max_bytes"),
            (&[("DROVER_INSTANCE_ID", "a.b")], "instance_id"),
            (&[("DROVER_ADMIN_ADDR", "localhost")], "admin_addr"),
        ];
        for (vars, key) in cases {
            let error = load_from(&CommonArgs::default(), env(vars)).unwrap_err();
            assert!(
                matches!(&error, ConfigError::Invalid { key: k, .. } if *k == key),
                "{vars:?}: {error}"
            );
            let text = error.to_string();
            assert!(text.contains(key) && !text.contains('\n'), "{text}");
            assert!(
                text.contains(&format!("DROVER_{}", key.to_ascii_uppercase())),
                "{text}"
            );
        }
    }

    #[test]
    fn pickup_strategies_come_from_the_environment() {
        let routine = |id: &str| RoutineId::parse(id).unwrap();
        let defaults = load_from(&CommonArgs::default(), env(&[])).unwrap();
        assert_eq!(defaults.pickup_strategy, PickupStrategy::LeastLoaded);
        assert!(defaults.pickup_strategies.is_empty());
        assert_eq!(
            defaults.pickup_strategy_for(&routine("any.thing")),
            PickupStrategy::LeastLoaded
        );
        let settings = load_from(
            &CommonArgs::default(),
            env(&[
                ("DROVER_PICKUP_STRATEGY", "round-robin"),
                (
                    "DROVER_PICKUP_STRATEGIES",
                    "reports.nightly=first-fit, images.*=least-loaded",
                ),
            ]),
        )
        .unwrap();
        let of = |id: &str| settings.pickup_strategy_for(&routine(id));
        assert_eq!(of("reports.nightly"), PickupStrategy::FirstFit);
        assert_eq!(of("images.resize"), PickupStrategy::LeastLoaded);
        assert_eq!(
            of("reports.weekly"),
            PickupStrategy::RoundRobin,
            "the default"
        );
    }

    #[test]
    fn a_bad_pickup_strategy_names_the_variable() {
        let cases = [
            (
                "DROVER_PICKUP_STRATEGY",
                "fastest",
                "unknown pickup strategy",
            ),
            (
                "DROVER_PICKUP_STRATEGIES",
                "a=fastest",
                "unknown pickup strategy",
            ),
            (
                "DROVER_PICKUP_STRATEGIES",
                "a.b",
                "not a routine=strategy pair",
            ),
            (
                "DROVER_PICKUP_STRATEGIES",
                "a..b=first-fit",
                "not a routineID",
            ),
            (
                "DROVER_PICKUP_STRATEGIES",
                "a=first-fit,a=round-robin",
                "named twice",
            ),
        ];
        for (name, value, reason) in cases {
            let error = load_from(&CommonArgs::default(), env(&[(name, value)])).unwrap_err();
            let key = name.trim_start_matches("DROVER_").to_ascii_lowercase();
            assert!(
                matches!(&error, ConfigError::Invalid { key: k, env, .. } if *k == key && env == name),
                "{name}={value}: {error:?}"
            );
            let text = error.to_string();
            assert!(
                text.contains(name) && text.contains(reason) && !text.contains('\n'),
                "{text}"
            );
        }
    }

    #[test]
    fn setting_keys_are_the_fields_and_the_environment_sets_each() {
        let known = load::known_keys(&Settings::default()).unwrap();
        let listed: std::collections::BTreeSet<String> =
            SETTING_KEYS.iter().map(|key| (*key).to_owned()).collect();
        assert_eq!(listed.len(), SETTING_KEYS.len(), "a key is listed twice");
        assert_eq!(listed, known);
        // A value no field accepts, given as DROVER_<KEY>, fails naming that key: the
        // variable reaches the field.
        for key in SETTING_KEYS {
            let name = format!("{ENV_PREFIX}_{}", key.to_ascii_uppercase());
            let error = load_from(&CommonArgs::default(), env(&[(&name, "not a value!")]))
                .expect_err(&name);
            assert!(error.to_string().contains(key), "{name}: {error}");
        }
    }

    #[test]
    fn listed_env_vars_are_the_ones_read() {
        assert_eq!(LOADER_ENV_VARS, [CONFIG_ENV, NATS_URL_ENV]);
        for name in [
            drover_telemetry::LOG_FORMAT_ENV,
            drover_telemetry::TRACE_FILTER_ENV,
        ] {
            assert!(TELEMETRY_ENV_VARS.contains(&name), "{name}");
        }
    }

    #[test]
    fn nats_auth_env_vars_are_the_ones_read_and_bad_ones_are_config_errors() {
        assert_eq!(NATS_AUTH_ENV_VARS, drover_nats_connect::ENV_VARS);
        let vars = env(&[("NATS_TOKEN", "t"), ("DROVER_NATS_TLS_CERT", "")]);
        let get = |name: &str| {
            vars.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let auth = load_nats_auth(DEFAULT_NATS_URL, get).unwrap();
        assert_eq!(auth.token.as_deref(), Some("t"));
        let missing =
            |name: &str| (name == "DROVER_NATS_NKEY").then(|| "/nonexistent/seed.nk".to_owned());
        let error = load_nats_auth(DEFAULT_NATS_URL, missing).unwrap_err();
        assert!(matches!(error, ConfigError::Auth(_)), "{error}");
        assert!(
            error.to_string().contains("/nonexistent/seed.nk"),
            "{error}"
        );
        // They are not settings keys: the settings loader leaves them alone.
        let settings = load_from(
            &CommonArgs::default(),
            env(&[
                ("DROVER_NATS_TLS_CA", "/ca.pem"),
                ("DROVER_NATS_TOKEN", "t"),
            ]),
        );
        assert!(settings.is_ok(), "{settings:?}");
    }

    #[test]
    fn nats_urls_are_checked() {
        let ok = load_from(
            &CommonArgs::default(),
            env(&[("NATS_URL", "nats://a:4222, nats://b:4223")]),
        )
        .unwrap();
        assert_eq!(ok.server_addrs().unwrap().len(), 2);
        let error = load_from(
            &CommonArgs {
                nats_url: Some("nats://[::1".to_owned()),
                ..Default::default()
            },
            env(&[]),
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    key: "nats_url",
                    ..
                }
            ),
            "{error}"
        );
    }
}
