//! Reading a pool's state (`v1.pool.state`): its groups, their processes, and what a test
//! compares of it.

use std::collections::BTreeSet;

use drover_protocol::{GroupState, PoolState, ProcessPhase, ProcessState};
use serde_json::Value;

/// A group of a pool's state.
///
/// # Panics
///
/// When the pool has no such group.
pub fn group<'a>(state: &'a PoolState, name: &str) -> &'a GroupState {
    state
        .groups
        .iter()
        .find(|group| group.name.as_str() == name)
        .unwrap_or_else(|| panic!("the pool has no group {name}: {state:#?}"))
}

/// A process of a group, by workerID.
pub fn process<'a>(group: &'a GroupState, worker: &str) -> Option<&'a ProcessState> {
    group
        .processes
        .iter()
        .find(|process| process.worker_id.as_str() == worker)
}

/// The group's processes that are not TERMINATED.
pub fn alive(group: &GroupState) -> Vec<&ProcessState> {
    group
        .processes
        .iter()
        .filter(|process| process.state != ProcessPhase::Terminated)
        .collect()
}

/// The group's processes that are RUNNING (registered and ready).
pub fn running(group: &GroupState) -> Vec<&ProcessState> {
    in_phase(group, ProcessPhase::Running)
}

/// The group's processes in `phase`.
pub fn in_phase(group: &GroupState, phase: ProcessPhase) -> Vec<&ProcessState> {
    group
        .processes
        .iter()
        .filter(|process| process.state == phase)
        .collect()
}

/// The pids of `processes`.
pub fn pids<'a>(processes: impl IntoIterator<Item = &'a ProcessState>) -> BTreeSet<u32> {
    processes
        .into_iter()
        .filter_map(|process| process.pid)
        .collect()
}

/// The workerIDs of `processes`.
pub fn worker_ids<'a>(processes: impl IntoIterator<Item = &'a ProcessState>) -> BTreeSet<String> {
    processes
        .into_iter()
        .map(|process| process.worker_id.to_string())
        .collect()
}

/// A group's processes on one line: `workerID STATE pid`, for failure messages.
pub fn describe(group: &GroupState) -> String {
    let processes: Vec<String> = group
        .processes
        .iter()
        .map(|process| {
            let pid = process
                .pid
                .map_or_else(|| "-".to_owned(), |pid| pid.to_string());
            format!("{} {} {pid}", process.worker_id, process.state.as_str())
        })
        .collect();
    format!(
        "{} (target {}): {}",
        group.name,
        group.target,
        processes.join(", ")
    )
}

/// Whether the group has settled at `n` processes: its target is `n`, `n` are RUNNING and
/// no other is alive.
pub fn settled_at(group: &GroupState, n: u32) -> bool {
    let n = n as usize;
    group.target as usize == n && running(group).len() == n && alive(group).len() == n
}

/// A JSON value with the keys that change from one moment to the next removed (uptimes,
/// memory, run counts, the registry's view), to compare two readings of a pool's state.
pub fn stable_view(state: &Value) -> Value {
    let mut state = state.clone();
    if let Some(object) = state.as_object_mut() {
        object.remove("uptimeMs");
    }
    if let Some(groups) = state["groups"].as_array_mut() {
        for group in groups {
            if let Some(processes) = group["processes"].as_array_mut() {
                for process in processes {
                    if let Some(object) = process.as_object_mut() {
                        for key in ["uptimeMs", "rssBytes", "runs", "workerStatus"] {
                            object.remove(key);
                        }
                    }
                }
            }
        }
    }
    state
}
