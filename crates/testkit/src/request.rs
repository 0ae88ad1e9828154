//! Requests to Drover's services over NATS, as an outside client makes them.

use std::time::Duration;

use async_nats::Client;
use drover_protocol::envelope::decode_reply;
use drover_protocol::subject::keys;
use drover_protocol::{
    encode, ErrorCode, ErrorPayload, Payload, RegistryList, WorkerList, WorkerRecord, WorkerStatus,
};

use crate::wait::patient;

/// How long a request waits for its reply (scaled by `DROVER_TEST_PATIENCE`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `payload` as a request and decodes the reply as `R` or the `v1.error` it carries.
///
/// A request nobody answers (no responders, timeout) comes back as an `unavailable`
/// error, so that tests can poll across restarts.
///
/// # Panics
/// If the reply is not an envelope.
pub async fn call<T: Payload, R: Payload>(
    client: &Client,
    subject: impl Into<String>,
    payload: &T,
) -> Result<R, ErrorPayload> {
    let subject = subject.into();
    let request = client.request(subject.clone(), encode(payload));
    let reply = match tokio::time::timeout(patient(REQUEST_TIMEOUT), request).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => {
            return Err(ErrorPayload::new(
                ErrorCode::Unavailable,
                error.to_string(),
                subject,
            ))
        }
        Err(_) => {
            return Err(ErrorPayload::new(
                ErrorCode::Unavailable,
                "no reply in time",
                subject,
            ))
        }
    };
    decode_reply::<R>(&reply.payload).expect("the reply is an envelope")
}

/// Every worker that `filter` matches, following `nextCursor` across replies.
pub async fn list_workers(
    client: &Client,
    filter: &RegistryList,
) -> Result<Vec<WorkerRecord>, ErrorPayload> {
    let mut filter = filter.clone();
    let mut workers = Vec::new();
    loop {
        let page: WorkerList = call(client, keys::REGISTRY_LIST, &filter).await?;
        workers.extend(page.workers);
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => return Ok(workers),
        }
    }
}

/// How many workers have `status` (0 when the registry does not answer, so that callers
/// can poll across restarts).
pub async fn count_workers(client: &Client, status: WorkerStatus) -> usize {
    let filter = RegistryList {
        status: Some(status),
        ..Default::default()
    };
    list_workers(client, &filter)
        .await
        .map_or(0, |workers| workers.len())
}
