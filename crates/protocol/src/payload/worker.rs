//! Payloads of the worker lifecycle (DESIGN §4–5).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{Attempt, Incarnation, RoutineId, RunId, WorkerId};
use crate::timestamp::Timestamp;

/// Labels a worker advertises and run conditions ask for.
pub type Labels = BTreeMap<String, String>;

/// A worker's status (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkerStatus {
    /// Registered, not yet ready.
    Initializing,
    /// Ready and holding no run.
    Idle,
    /// Holding at least one run that is not waiting on children.
    Working,
    /// Every run it holds waits on child runs.
    Hanging,
    /// Shutting down: gets no new work, finishes what it holds.
    Terminating,
    /// Missed its heartbeats and did not answer a probe.
    Unresponsive,
    /// Silent for longer than `lostAfterMs`; must register again.
    Lost,
    /// Left after terminating.
    Offline,
}

impl WorkerStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [WorkerStatus; 8] = [
        WorkerStatus::Initializing,
        WorkerStatus::Idle,
        WorkerStatus::Working,
        WorkerStatus::Hanging,
        WorkerStatus::Terminating,
        WorkerStatus::Unresponsive,
        WorkerStatus::Lost,
        WorkerStatus::Offline,
    ];

    /// The wire spelling, e.g. `IDLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Initializing => "INITIALIZING",
            WorkerStatus::Idle => "IDLE",
            WorkerStatus::Working => "WORKING",
            WorkerStatus::Hanging => "HANGING",
            WorkerStatus::Terminating => "TERMINATING",
            WorkerStatus::Unresponsive => "UNRESPONSIVE",
            WorkerStatus::Lost => "LOST",
            WorkerStatus::Offline => "OFFLINE",
        }
    }

    /// True for LOST and OFFLINE: the registration is over.
    pub fn is_gone(self) -> bool {
        matches!(self, WorkerStatus::Lost | WorkerStatus::Offline)
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WorkerStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown worker status {s:?}"))
    }
}

/// Which SDK a worker was built with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SdkInfo {
    /// Programming language, e.g. `python`.
    pub language: String,
    /// SDK version.
    pub version: String,
}

/// `v1.register`: a worker announces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Register {
    /// Must equal the workerID token of the subject.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
    /// Routines this worker can run.
    pub routines: Vec<RoutineId>,
    /// Labels that run conditions can select on.
    #[serde(default)]
    pub labels: Labels,
    /// How many runs it runs at once.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// A display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The SDK it was built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<SdkInfo>,
    /// Host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Operating-system process ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u64>,
}

fn default_capacity() -> u32 {
    1
}

/// `v1.registered`: the reply to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    /// The worker that registered.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
    /// This registration's incarnation; later directives must carry it.
    pub incarnation: Incarnation,
    /// How often to publish `give_pulse`.
    pub heartbeat_interval_ms: u64,
    /// How long without a pulse before the worker is declared LOST.
    pub lost_after_ms: u64,
}

/// `v1.ready`: the worker is subscribed to its inbox and takes work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    /// The incarnation from `v1.registered`.
    pub incarnation: Incarnation,
}

/// A run a worker holds, as it reports it in a pulse.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunRef {
    /// The run.
    #[serde(rename = "runID")]
    pub run_id: RunId,
    /// The attempt the worker is running.
    pub attempt: Attempt,
}

/// `v1.heartbeat.give_pulse`: the worker is alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct GivePulse {
    /// The incarnation from `v1.registered`.
    pub incarnation: Incarnation,
    /// The status as the worker sees it; recorded beside the derived one.
    pub status: WorkerStatus,
    /// The runs the worker holds.
    #[serde(default)]
    pub runs: Vec<RunRef>,
    /// Echoes the `id` of a `check_pulse` this pulse answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `v1.heartbeat.check_pulse`: a probe; answer with a `give_pulse` carrying this `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CheckPulse {
    /// Probe identifier to echo.
    pub id: String,
}

/// `v1.terminating`: the worker is shutting down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Terminating {
    /// The incarnation from `v1.registered`.
    pub incarnation: Incarnation,
    /// Why, for people reading the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// A failure.
    Error,
}

impl LogLevel {
    /// The wire spelling, e.g. `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `v1.log`: a log line from a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// The text.
    pub message: String,
    /// The run it is about, if any.
    #[serde(rename = "runID", default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// Structured fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, Value>>,
    /// When the worker wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}
