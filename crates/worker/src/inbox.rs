//! The worker's inbox, `v1.worker.<workerID>.>`: probes, assignments, cancels, forwarded
//! child events and errors. Nothing here waits on a handler.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Message, Subscriber};
use drover_protocol::envelope::RawEnvelope;
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    Assignment, Attempt, Cancel, CheckPulse, ChildCompleted, ChildStarting, ErrorCode,
    ErrorPayload, Payload, RunId,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::attempt;
use crate::state::Shared;

/// Errors that end a registration arrive at most once a second per worker; one that
/// arrives this soon after a registration is about a message of the registration before.
const REGISTRATION_SETTLE: Duration = Duration::from_secs(1);

/// Serves the inbox until `stop` fires or the subscription ends.
pub(crate) async fn serve(shared: Arc<Shared>, mut inbox: Subscriber, stop: CancellationToken) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = inbox.next() => message,
        };
        let Some(message) = message else { return };
        handle(&shared, message).await;
    }
}

async fn handle(shared: &Arc<Shared>, message: Message) {
    let Ok((_, key)) = subject::parse_worker_inbox(message.subject.as_str()) else {
        tracing::debug!(subject = %message.subject, "inbox message on an unknown subject");
        return;
    };
    match key {
        keys::CHECK_PULSE => {
            if let Some(probe) = read::<CheckPulse>(&message) {
                shared.pulse(Some(probe.id)).await;
            }
        }
        keys::REQUEST_START => {
            if let Some(assignment) = read::<Assignment>(&message) {
                assign(shared, assignment, message.headers);
            }
        }
        keys::CANCEL => {
            if let Some(cancel) = read::<Cancel>(&message) {
                let dropped = shared.drop_attempt(&cancel.run_id, cancel.attempt, &cancel.reason);
                // The attempt notes it on its execution span, at info.
                tracing::debug!(
                    run_id = %cancel.run_id,
                    attempt = cancel.attempt,
                    reason = %cancel.reason,
                    held = dropped,
                    "attempt cancelled"
                );
            }
        }
        keys::STARTING => {
            if let Some(child) = read::<ChildStarting>(&message) {
                tracing::debug!(
                    child_run_id = %child.run_id,
                    local_run_id = %child.local_run_id,
                    on = %child.worker_id,
                    "child run started"
                );
            }
        }
        keys::COMPLETED => {
            if let Some(child) = read::<ChildCompleted>(&message) {
                shared.children.deliver(child);
            }
        }
        keys::ERROR => {
            if let Some(error) = read::<ErrorPayload>(&message) {
                refused(shared, error);
            }
        }
        other => tracing::debug!(key = other, "inbox directive ignored"),
    }
}

/// Reads a payload tolerantly: envelope, key, then the type (unknown fields ignored).
///
/// Drover's own messages are not checked against the schemas again, so that a newer
/// Drover that adds a field or an enum value does not stop an older worker.
fn read<T: Payload>(message: &Message) -> Option<T> {
    let parsed = serde_json::from_slice::<RawEnvelope>(&message.payload)
        .map_err(|error| error.to_string())
        .and_then(|envelope| {
            if envelope.payload_key != T::KEY {
                return Err(format!("payloadKey {:?}", envelope.payload_key));
            }
            serde_json::from_value::<T>(envelope.payload).map_err(|error| error.to_string())
        });
    match parsed {
        Ok(payload) => Some(payload),
        Err(error) => {
            tracing::warn!(subject = %message.subject, %error, "unreadable inbox message");
            None
        }
    }
}

fn assign(shared: &Arc<Shared>, assignment: Assignment, headers: Option<async_nats::HeaderMap>) {
    if shared.is_terminating() {
        // Not acknowledged: the scheduler gives it to another worker.
        tracing::info!(run_id = %assignment.run_id, "assignment during shutdown not started");
        return;
    }
    tracing::debug!(
        run_id = %assignment.run_id,
        attempt = assignment.attempt,
        routine_id = %assignment.routine_id,
        "assignment"
    );
    attempt::start(shared, assignment, headers);
}

/// Acts on a `v1.error` about something this worker sent.
fn refused(shared: &Shared, error: ErrorPayload) {
    match error.code {
        ErrorCode::StaleAttempt => {
            let Some((run_id, attempt)) = stale_attempt_of(&error) else {
                tracing::warn!(%error, "stale_attempt without a run");
                return;
            };
            if shared.drop_attempt(&run_id, attempt, "stale_attempt") {
                tracing::info!(%run_id, attempt, "attempt no longer current; dropped");
            }
        }
        ErrorCode::UnknownWorker | ErrorCode::NotRegistered | ErrorCode::StaleIncarnation => {
            if ends_registration(shared, &error) && shared.registration_over() {
                tracing::warn!(code = %error.code, in_reply_to = %error.in_reply_to, "registration is over");
            } else {
                tracing::debug!(%error, "refusal of an earlier registration's message ignored");
            }
        }
        _ => tracing::warn!(
            code = %error.code,
            in_reply_to = %error.in_reply_to,
            message = %error.message,
            "drover refused a message"
        ),
    }
}

/// Whether a refusal is about the current registration, not one that is already replaced.
fn ends_registration(shared: &Shared, error: &ErrorPayload) -> bool {
    if let Some(sent) = error.details.get("incarnation").and_then(|v| v.as_u64()) {
        return sent >= shared.incarnation();
    }
    !shared.registered_within(REGISTRATION_SETTLE.max(shared.heartbeat()))
}

fn stale_attempt_of(error: &ErrorPayload) -> Option<(RunId, Attempt)> {
    let run_id = error.details.get("runID")?.as_str()?;
    let attempt = error.details.get("attempt")?.as_u64()?;
    Some((RunId::parse(run_id).ok()?, attempt))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn stale_attempts_name_their_run() {
        let run = RunId::generate();
        let error = ErrorPayload::new(ErrorCode::StaleAttempt, "stale", "v1.routine.completed.w")
            .with_details(json!({"runID": run, "attempt": 3, "currentAttempt": 4}));
        assert_eq!(stale_attempt_of(&error), Some((run, 3)));
        let bare = ErrorPayload::new(ErrorCode::StaleAttempt, "stale", "x");
        assert_eq!(stale_attempt_of(&bare), None);
    }
}
