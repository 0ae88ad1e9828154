//! The WorkerPool's requests and replies (DESIGN §9): `v1.pool.<poolID>.{scale,restart,status}`.

use serde::{Deserialize, Serialize};

use crate::ids::{GroupName, PoolId, WorkerId};
use crate::payload::worker::WorkerStatus;
use crate::timestamp::Timestamp;

/// `v1.pool.<poolID>.scale`: set a group's size, or change it by `delta`.
///
/// Exactly one of `target` and `delta` is given (the schema's `oneOf`; deserialising refuses
/// both or neither, so that the type accepts what the schema accepts); the result must lie
/// within the group's `min` and `max`, or the request is refused with `out_of_bounds` and
/// nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "PoolScaleFields")]
pub struct PoolScale {
    /// The group to scale.
    pub group: GroupName,
    /// The number of processes wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u32>,
    /// Processes to add (positive) or remove (negative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<i64>,
}

/// The fields of [`PoolScale`] as they arrive, before the check that exactly one of
/// `target` and `delta` is there.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolScaleFields {
    group: GroupName,
    #[serde(default)]
    target: Option<u32>,
    #[serde(default)]
    delta: Option<i64>,
}

impl TryFrom<PoolScaleFields> for PoolScale {
    type Error = &'static str;

    fn try_from(fields: PoolScaleFields) -> Result<Self, Self::Error> {
        match (fields.target, fields.delta) {
            (Some(_), Some(_)) => Err("give either target or delta, not both"),
            (None, None) => Err("give target or delta"),
            (target, delta) => Ok(PoolScale {
                group: fields.group,
                target,
                delta,
            }),
        }
    }
}

/// Reply to [`PoolScale`]: the group's new target and the processes running right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolScaled {
    /// The group.
    pub group: GroupName,
    /// Its target size from now on.
    pub target: u32,
    /// Its processes that are registered and ready at the moment of the reply.
    pub running: u32,
}

/// How a restart replaces processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RestartMode {
    /// Stop every process gracefully, wait for all, then start all.
    Hard,
    /// Replace processes a few at a time, each finishing its runs before it exits.
    Soft,
}

impl RestartMode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartMode::Hard => "hard",
            RestartMode::Soft => "soft",
        }
    }
}

/// `v1.pool.<poolID>.restart`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolRestart {
    /// Hard or soft.
    pub mode: RestartMode,
    /// Only this group; every group when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupName>,
}

/// Reply to [`PoolRestart`], sent once the restart has begun.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolRestarting {
    /// Always true: a refused restart is answered with `v1.error`.
    pub accepted: bool,
    /// The mode begun.
    pub mode: RestartMode,
    /// The groups being restarted.
    pub groups: Vec<GroupName>,
}

/// `v1.pool.<poolID>.status`: an empty object. Like every payload it is read tolerantly:
/// unknown fields are ignored, so that a newer client can ask an older pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolStatus {}

/// How a process ended (DESIGN §9, `lastExit.class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ExitClass {
    /// The pool stopped it (scale-down, restart, quota, shutdown).
    Requested,
    /// It exited with a code its group lists as final: never restarted.
    Final,
    /// A signal the pool did not send, a crash or another code: restarted with backoff.
    Unexpected,
    /// It broke the start-up order: exited before registering, registered under another
    /// workerID, or was not ready in time.
    Critical,
}

impl ExitClass {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitClass::Requested => "requested",
            ExitClass::Final => "final",
            ExitClass::Unexpected => "unexpected",
            ExitClass::Critical => "critical",
        }
    }
}

/// Where a pool's process is (DESIGN §9, process `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProcessPhase {
    /// Started, not yet registered and ready.
    Starting,
    /// Registered and ready.
    Running,
    /// Asked to stop; finishing its runs.
    Stopping,
    /// Ended unexpectedly; waiting for its restart backoff.
    Restarting,
    /// Ended for good (until the pool restarts it).
    Terminated,
}

impl ProcessPhase {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessPhase::Starting => "STARTING",
            ProcessPhase::Running => "RUNNING",
            ProcessPhase::Stopping => "STOPPING",
            ProcessPhase::Restarting => "RESTARTING",
            ProcessPhase::Terminated => "TERMINATED",
        }
    }
}

/// How a process last ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LastExit {
    /// Its exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// What the pool made of it.
    pub class: ExitClass,
    /// Why, in words (for example `exited before registering`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it ended.
    pub at: Timestamp,
}

/// One process of a group, in [`PoolState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ProcessState {
    /// The workerID it was given.
    #[serde(rename = "workerID")]
    pub worker_id: WorkerId,
    /// Its process ID while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Where it is.
    pub state: ProcessPhase,
    /// Its status in the registry, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_status: Option<WorkerStatus>,
    /// How many times the pool restarted it after an unexpected end.
    pub restarts: u32,
    /// When its current process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// Milliseconds since `startedAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// Runs that ended on its current process; counted only for a group with `max_runs`
    /// (following every run's events costs the pool more than the rest of its work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<u64>,
    /// Its resident memory, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// How it last ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<LastExit>,
}

/// One group, in [`PoolState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct GroupState {
    /// The group.
    pub name: GroupName,
    /// Its smallest size.
    pub min: u32,
    /// Its largest size.
    pub max: u32,
    /// The size it is kept at.
    pub target: u32,
    /// Its processes, by workerID.
    pub processes: Vec<ProcessState>,
}

/// Reply to [`PoolStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolState {
    /// The pool.
    #[serde(rename = "poolID")]
    pub pool_id: PoolId,
    /// When the pool started.
    pub started_at: Timestamp,
    /// Milliseconds since `startedAt`.
    pub uptime_ms: u64,
    /// Restarts after unexpected ends, over all groups, since the pool started.
    pub restarts: u32,
    /// Its groups.
    pub groups: Vec<GroupState>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scale(payload: serde_json::Value) -> Result<PoolScale, String> {
        serde_json::from_value(payload).map_err(|error| error.to_string())
    }

    #[test]
    fn scale_takes_exactly_one_of_target_and_delta() {
        let by_target = scale(json!({"group": "py", "target": 3, "delta": null})).unwrap();
        assert_eq!((by_target.target, by_target.delta), (Some(3), None));
        let by_delta = scale(json!({"group": "py", "delta": -1})).unwrap();
        assert_eq!((by_delta.target, by_delta.delta), (None, Some(-1)));
        let both = scale(json!({"group": "py", "target": 1, "delta": 1})).unwrap_err();
        assert!(both.contains("not both"), "{both}");
        let neither = scale(json!({"group": "py", "target": null})).unwrap_err();
        assert!(neither.contains("give target or delta"), "{neither}");
    }
}
