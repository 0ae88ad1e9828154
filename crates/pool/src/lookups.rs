//! What the pool asks NATS and reads off it: the registry's records of its workers, another
//! pool with its poolID, the backlog of a routine, and the events it follows.

use std::time::Duration;

use async_nats::Client;
use drover_protocol::subject::{keys, resources};
use drover_protocol::{
    decode_reply, encode, subject, Labels, Payload, PoolId, PoolState, PoolStatus, RegistryGet,
    RegistryList, RoutineId, RunStatus, WorkerId, WorkerList, WorkerRecord,
};
use futures::StreamExt;
use serde::Deserialize;

/// How long a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `payload` on `subject` and decodes the answer; `None` when nobody answers in time,
/// or the answer is a `v1.error` or unreadable: every caller treats these alike.
async fn request<T: Payload, R: Payload>(nats: &Client, subject: String, payload: &T) -> Option<R> {
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, nats.request(subject, encode(payload)))
        .await
        .ok()?
        .ok()?;
    decode_reply::<R>(&reply.payload).ok()?.ok()
}

/// The state of a pool with this poolID that answers already, if one does.
pub async fn already_running(nats: &Client, pool: &PoolId) -> Option<PoolState> {
    request(nats, subject::pool::status(pool), &PoolStatus {}).await
}

/// The incarnation the registry has for `worker` now (0 when it has none): registrations
/// above it belong to the process about to start.
pub async fn current_incarnation(nats: &Client, worker: &WorkerId) -> u64 {
    registry_get(nats, worker)
        .await
        .map_or(0, |record| record.incarnation)
}

/// The registry's record of `worker`, if it has one and answers in time.
pub async fn registry_get(nats: &Client, worker: &WorkerId) -> Option<WorkerRecord> {
    let get = RegistryGet {
        worker_id: worker.clone(),
    };
    request(nats, keys::REGISTRY_GET.to_owned(), &get).await
}

/// The registry's records of the workers labelled with this pool.
pub async fn registry_list(nats: &Client, pool: &PoolId) -> Vec<WorkerRecord> {
    let list = RegistryList {
        labels: Some(Labels::from([("pool".to_owned(), pool.to_string())])),
        ..RegistryList::default()
    };
    request::<_, WorkerList>(nats, keys::REGISTRY_LIST.to_owned(), &list)
        .await
        .map_or_else(Vec::new, |list| list.workers)
}

/// Runs of `routines` stored in the queue: waiting or in progress (a run leaves the
/// work-queue stream when it ends).
pub async fn unfinished_runs(
    js: &async_nats::jetstream::Context,
    routines: &[RoutineId],
) -> anyhow::Result<u64> {
    if routines.is_empty() {
        return Ok(0);
    }
    let stream = js.get_stream(resources::QUEUE_STREAM).await?;
    let mut total = 0;
    for routine in routines {
        let filter = subject::queue(routine);
        let mut subjects = stream.info_with_subjects(filter).await?;
        while let Some(entry) = subjects.next().await {
            let (_, count) = entry?;
            total += count as u64;
        }
    }
    Ok(total)
}

/// The worker record carried by a `v1.registry.events` message.
pub fn worker_event(body: &[u8]) -> Option<WorkerRecord> {
    #[derive(Deserialize)]
    struct Envelope {
        payload: Payload,
    }
    #[derive(Deserialize)]
    struct Payload {
        worker: WorkerRecord,
    }
    serde_json::from_slice::<Envelope>(body)
        .ok()
        .map(|envelope| envelope.payload.worker)
}

/// The worker an attempt ended on, from a `v1.run.events` message: a terminal state, or
/// back to PENDING from RUNNING (a failed attempt to be retried).
pub fn ended_run_worker(body: &[u8]) -> Option<WorkerId> {
    #[derive(Deserialize)]
    struct Envelope {
        payload: Payload,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Payload {
        status: RunStatus,
        previous_status: Option<RunStatus>,
        run: Run,
    }
    #[derive(Deserialize)]
    struct Run {
        #[serde(rename = "workerID")]
        worker_id: Option<WorkerId>,
    }
    let payload = serde_json::from_slice::<Envelope>(body).ok()?.payload;
    let ended = payload.previous_status == Some(RunStatus::Running)
        && (payload.status.is_terminal() || payload.status == RunStatus::Pending);
    if ended {
        payload.run.worker_id
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_attempts_that_ran_count_as_ended() {
        let event = |status: &str, previous: &str| {
            format!(
                r#"{{"payloadKey":"v1.run.events","payload":{{"status":"{status}","previousStatus":"{previous}","run":{{"workerID":"p-g-1"}}}}}}"#
            )
        };
        let worker = WorkerId::parse("p-g-1").unwrap();
        assert_eq!(
            ended_run_worker(event("SUCCEEDED", "RUNNING").as_bytes()),
            Some(worker.clone())
        );
        assert_eq!(
            ended_run_worker(event("PENDING", "RUNNING").as_bytes()),
            Some(worker)
        );
        assert_eq!(
            ended_run_worker(event("RUNNING", "ASSIGNED").as_bytes()),
            None
        );
        assert_eq!(
            ended_run_worker(event("CANCELLED", "PENDING").as_bytes()),
            None
        );
        assert_eq!(ended_run_worker(b"not json"), None);
    }
}
