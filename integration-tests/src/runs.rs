//! Submitting runs and reading them back, as a client does.

use std::time::Duration;

use async_nats::Client;
use drover_protocol::subject::keys;
use drover_protocol::{
    Accepted, ErrorPayload, RoutineId, RunGet, RunId, RunRecord, RunSpec, RunStatus,
};
use drover_testkit::{call, wait_for};

/// A spec for `routine` with everything else at its default.
pub fn spec(routine: &str) -> RunSpec {
    RunSpec::new(RoutineId::parse(routine).unwrap())
}

/// Submits a run; panics if it is refused.
pub async fn submit(client: &Client, spec: &RunSpec) -> RunId {
    try_submit(client, spec)
        .await
        .unwrap_or_else(|error| panic!("submission refused: {error}"))
}

/// Submits a run.
pub async fn try_submit(client: &Client, spec: &RunSpec) -> Result<RunId, ErrorPayload> {
    call::<_, Accepted>(client, keys::REQUEST_START, spec)
        .await
        .map(|accepted| accepted.run_id)
}

/// Reads a run.
pub async fn get(client: &Client, run: &RunId) -> Option<RunRecord> {
    call::<_, RunRecord>(
        client,
        keys::RUN_GET,
        &RunGet {
            run_id: run.clone(),
        },
    )
    .await
    .ok()
}

/// Waits until the run is in `status`.
pub async fn wait_status(
    client: &Client,
    run: &RunId,
    status: RunStatus,
    timeout: Duration,
) -> RunRecord {
    wait_for(&format!("run {run} is {status}"), timeout, || async {
        get(client, run)
            .await
            .filter(|record| record.status == status)
    })
    .await
    .unwrap()
}

/// Waits until the run has ended.
pub async fn wait_terminal(client: &Client, run: &RunId, timeout: Duration) -> RunRecord {
    wait_for(&format!("run {run} ends"), timeout, || async {
        get(client, run)
            .await
            .filter(|record| record.status.is_terminal())
    })
    .await
    .unwrap()
}
