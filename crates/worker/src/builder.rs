//! How a worker is described: [`Worker::builder`], then [`WorkerBuilder::run`].

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_nats::Client;
use drover_nats_connect::NatsAuth;
use drover_protocol::{Labels, RoutineId, WorkerId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::error::{RoutineError, WorkerError};
use crate::handler::{self, Handler};
use crate::lifecycle::Profile;
use crate::log::LogLayer;
use crate::pool_env::PoolEnvironment;
use crate::runtime;

/// The NATS URL used when neither [`WorkerBuilder::nats_url`] nor [`WorkerBuilder::client`]
/// is given and [`NATS_URL_VAR`] is not set.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// The variable a supervisor such as `drover pool` sets to the NATS URL; it is the default
/// when the code gives no URL or client.
pub const NATS_URL_VAR: &str = "DROVER_NATS_URL";

fn default_nats_url() -> String {
    std::env::var(NATS_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_NATS_URL.to_owned())
}

/// How long a shutdown waits for held runs by default.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// The entry point of the SDK: `Worker::builder(id)...run(shutdown).await`.
#[derive(Debug)]
pub struct Worker {
    _private: (),
}

impl Worker {
    /// Starts describing a worker with this workerID (`[A-Za-z0-9_-]{1,64}`).
    ///
    /// Under a supervisor such as `drover pool`, the environment wins: `DROVER_WORKER_ID`,
    /// when set, is the workerID, and `DROVER_POOL_ID` / `DROVER_POOL_GROUP` become the
    /// labels `pool` and `group` (see [`WORKER_ID_VAR`](crate::WORKER_ID_VAR)).
    pub fn builder(worker_id: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            worker_id: worker_id.into(),
            connection: Connection::Url(default_nats_url()),
            auth: None,
            routines: Vec::new(),
            capacity: 1,
            labels: Labels::new(),
            name: None,
            host: detect_host(),
            grace_period: DEFAULT_GRACE_PERIOD,
            terminating_reason: "shutting down".to_owned(),
        }
    }

    /// A `tracing` layer that ships events inside routine handlers to Drover as `v1.log`.
    pub fn log_layer() -> LogLayer {
        LogLayer::new()
    }
}

/// How the worker reaches NATS.
pub(crate) enum Connection {
    /// Connect to this URL.
    Url(String),
    /// Use this connection.
    Client(Client),
}

/// Describes a worker: its routines, capacity, labels and connection. See the crate docs.
#[must_use = "a worker does nothing until `run` is awaited"]
pub struct WorkerBuilder {
    worker_id: String,
    connection: Connection,
    auth: Option<NatsAuth>,
    routines: Vec<(String, Handler)>,
    capacity: u32,
    labels: Labels,
    name: Option<String>,
    host: Option<String>,
    grace_period: Duration,
    terminating_reason: String,
}

impl WorkerBuilder {
    /// Connects to this NATS URL (reconnecting forever once connected).
    pub fn nats_url(mut self, url: impl Into<String>) -> Self {
        self.connection = Connection::Url(url.into());
        self
    }

    /// Connects with these credentials and TLS settings instead of those of the environment
    /// (`DROVER_NATS_*`, then `NATS_*`; see `drover_nats_connect`). Not used with
    /// [`WorkerBuilder::client`].
    pub fn nats_auth(mut self, auth: NatsAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Uses an existing NATS connection.
    ///
    /// A worker's connection should be named after its workerID and use the inbox prefix
    /// `_INBOX.<workerID>`, as the one the SDK makes does: under the secured setup a worker
    /// may receive replies there only. The connection's events stay yours: a permissions
    /// violation reaches your event callback, and the worker does not stop for it as it does
    /// on a connection of its own ([`WorkerError::Refused`](crate::WorkerError::Refused)).
    pub fn client(mut self, client: Client) -> Self {
        self.connection = Connection::Client(client);
        self
    }

    /// Adds a routine whose handler takes and returns JSON.
    pub fn routine<F, Fut>(mut self, routine_id: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Context, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, RoutineError>> + Send + 'static,
    {
        self.routines
            .push((routine_id.into(), handler::plain(handler)));
        self
    }

    /// Adds a routine with typed parameters and result, converted through serde.
    ///
    /// Parameters that do not deserialise into `P` fail the attempt without retry
    /// (type `InvalidParams`).
    pub fn routine_typed<P, O, F, Fut>(mut self, routine_id: impl Into<String>, handler: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(Context, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, RoutineError>> + Send + 'static,
    {
        self.routines
            .push((routine_id.into(), handler::typed(handler)));
        self
    }

    /// How many runs the worker runs at once (default 1).
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// Adds a label that run conditions can select on.
    ///
    /// The labels `pool` and `group` are replaced by `DROVER_POOL_ID` and
    /// `DROVER_POOL_GROUP` when those are set.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// A display name for people reading the registry.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The host name to report (default: the machine's).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// How long a shutdown waits for held runs before it cancels them (default 30 s).
    pub fn grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// The reason sent with `v1.terminating` (default `shutting down`).
    pub fn terminating_reason(mut self, reason: impl Into<String>) -> Self {
        self.terminating_reason = reason.into();
        self
    }

    /// Runs the worker until `shutdown` is cancelled, then shuts down gracefully.
    ///
    /// Returns `Ok(())` after a shutdown; an error only when the worker cannot start (bad
    /// configuration, an invalid `DROVER_WORKER_ID` among them, no NATS, registration
    /// refused).
    ///
    /// Signals are the application's: cancel `shutdown` on SIGTERM, as the examples do, so
    /// that a supervisor's SIGTERM ends in `v1.terminating`, held runs finished, and exit 0.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        if self.auth.is_none() && matches!(self.connection, Connection::Url(_)) {
            self.auth = Some(NatsAuth::from_env()?);
        }
        let config = self.into_config(PoolEnvironment::from_process())?;
        runtime::run(config, shutdown).await
    }

    fn into_config(mut self, env: PoolEnvironment) -> Result<runtime::Config, WorkerError> {
        let (worker_id, from_env) = env.apply(self.worker_id, &mut self.labels);
        let id = WorkerId::parse(worker_id).map_err(|source| WorkerError::InvalidWorkerId {
            source,
            variable: from_env.then_some(crate::WORKER_ID_VAR),
        })?;
        if self.capacity == 0 {
            return Err(WorkerError::ZeroCapacity);
        }
        let mut handlers = HashMap::new();
        let mut routines = Vec::new();
        for (routine, handler) in self.routines {
            let routine_id =
                RoutineId::parse(routine.as_str()).map_err(WorkerError::InvalidRoutineId)?;
            if handlers.insert(routine_id.clone(), handler).is_some() {
                return Err(WorkerError::DuplicateRoutine(routine));
            }
            routines.push(routine_id);
        }
        Ok(runtime::Config {
            id,
            connection: self.connection,
            auth: self.auth.unwrap_or_default(),
            handlers,
            profile: Profile {
                routines,
                labels: self.labels,
                capacity: self.capacity,
                name: self.name,
                host: self.host,
            },
            grace_period: self.grace_period,
            terminating_reason: self.terminating_reason,
        })
    }
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routines: Vec<&str> = self.routines.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("WorkerBuilder")
            .field("worker_id", &self.worker_id)
            .field("routines", &routines)
            .field("capacity", &self.capacity)
            .field("labels", &self.labels)
            .field("grace_period", &self.grace_period)
            .finish_non_exhaustive()
    }
}

fn detect_host() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool_env::{POOL_GROUP_VAR, POOL_ID_VAR, WORKER_ID_VAR};

    async fn echo(_ctx: Context, params: Value) -> Result<Value, RoutineError> {
        Ok(params)
    }

    /// No supervisor: what the code says holds.
    fn config(builder: WorkerBuilder) -> Result<runtime::Config, WorkerError> {
        builder.into_config(PoolEnvironment::default())
    }

    /// A supervisor's environment with these variables.
    fn pool_env(vars: &[(&str, &str)]) -> PoolEnvironment {
        PoolEnvironment::read(|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn configuration_errors_are_reported_before_connecting() {
        let bad_id = config(Worker::builder("a.b"));
        assert!(matches!(
            bad_id,
            Err(WorkerError::InvalidWorkerId { variable: None, .. })
        ));
        let bad_routine = config(Worker::builder("w").routine("bad routine", echo));
        assert!(matches!(bad_routine, Err(WorkerError::InvalidRoutineId(_))));
        let twice = config(Worker::builder("w").routine("r", echo).routine("r", echo));
        assert!(matches!(twice, Err(WorkerError::DuplicateRoutine(_))));
        let zero = config(Worker::builder("w").capacity(0));
        assert!(matches!(zero, Err(WorkerError::ZeroCapacity)));
    }

    #[test]
    fn registration_carries_the_profile() {
        let config = config(
            Worker::builder("w1")
                .routine("images.resize", echo)
                .capacity(4)
                .label("gpu", "false")
                .name("resizer"),
        )
        .unwrap();
        assert_eq!(config.id.as_str(), "w1");
        assert_eq!(config.profile.capacity, 4);
        assert_eq!(config.profile.routines[0].as_str(), "images.resize");
        assert_eq!(config.profile.labels["gpu"], "false");
        assert_eq!(config.profile.name.as_deref(), Some("resizer"));
    }

    #[test]
    fn a_supervisor_names_the_worker_and_labels_its_pool_and_group() {
        let env = pool_env(&[
            (WORKER_ID_VAR, "demo-rs-3"),
            (POOL_ID_VAR, "demo"),
            (POOL_GROUP_VAR, "rs"),
        ]);
        let config = Worker::builder("in-code")
            .label("group", "set-in-code")
            .label("gpu", "false")
            .into_config(env)
            .unwrap();
        assert_eq!(config.id.as_str(), "demo-rs-3");
        let labels: Vec<(&str, &str)> = config
            .profile
            .labels
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            labels,
            [("gpu", "false"), ("group", "rs"), ("pool", "demo")]
        );
    }

    #[test]
    fn an_invalid_worker_id_from_the_environment_stops_the_start() {
        // The id in code is fine; the supervisor's is not, and it is the one that counts.
        let error = Worker::builder("in-code")
            .into_config(pool_env(&[(WORKER_ID_VAR, "demo.rs.1")]))
            .err()
            .expect("an invalid DROVER_WORKER_ID is an error");
        assert!(
            matches!(
                error,
                WorkerError::InvalidWorkerId {
                    variable: Some(WORKER_ID_VAR),
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("DROVER_WORKER_ID") && message.contains("demo.rs.1"),
            "{message}"
        );
    }
}
