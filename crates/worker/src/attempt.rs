//! One attempt, from assignment to stored completion (protocol §5).
//!
//! `starting` and `completed` go out as requests retried until JetStream has stored them.
//! The handler runs on a task of its own, under the execution span (`drover.execute`, whose
//! parent is the assignment's `traceparent`), so that pulses go on while it works and a
//! panic is caught. What the SDK itself has to say about the attempt (a panic, a
//! cancellation, a directive not stored yet) is an event on that span too.

use std::any::Any;
use std::sync::Arc;

use async_nats::HeaderMap;
use drover_protocol::subject::keys;
use drover_protocol::{
    encode, Assignment, Completed, Outcome, Starting, DEFAULT_MAX_PAYLOAD_BYTES,
};
use serde_json::Value;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::context::{Backend, Context};
use crate::deliver::send_acked;
use crate::error::RoutineError;
use crate::execution::Execution;
use crate::handler::Handler;
use crate::state::{lock, Shared, Slot};

/// The error type of an attempt whose handler panicked.
pub const PANIC_TYPE: &str = "panic";

/// The error type of an attempt for a routine this worker does not have.
pub const UNKNOWN_ROUTINE_TYPE: &str = "UnknownRoutine";

/// The error type of an attempt whose result is over the payload limit.
pub const RESULT_TOO_LARGE_TYPE: &str = "ResultTooLarge";

/// Takes on an assignment and runs it on a task of its own.
pub(crate) fn start(shared: &Arc<Shared>, assignment: Assignment, headers: Option<HeaderMap>) {
    let run_id = assignment.run_id.clone();
    let attempt = assignment.attempt;
    let started = shared.start_attempt(&run_id, attempt, |slot| {
        tokio::spawn(run(Arc::clone(shared), assignment, headers, slot))
    });
    if !started {
        tracing::debug!(%run_id, attempt, "assignment already held; ignored");
    }
}

async fn run(shared: Arc<Shared>, assignment: Assignment, headers: Option<HeaderMap>, slot: Slot) {
    let serial = slot.serial;
    let (span, execution) =
        Execution::start(&shared.id, &assignment, &shared.logs, headers.as_ref());
    let execution = Arc::new(execution);
    execute(&shared, assignment, slot, Arc::clone(&execution))
        .instrument(span)
        .await;
    execution.end();
    shared.task_ended(serial);
}

async fn execute(
    shared: &Arc<Shared>,
    assignment: Assignment,
    slot: Slot,
    execution: Arc<Execution>,
) {
    let run_id = assignment.run_id.clone();
    let attempt = assignment.attempt;
    let mut headers = HeaderMap::new();
    drover_telemetry::inject_current(&mut headers);
    let starting = Starting {
        run_id: run_id.clone(),
        attempt,
    };
    let stored = send_acked(
        &shared.client,
        shared.subject(keys::STARTING),
        &starting,
        message_id(shared, "starting", &assignment),
        headers.clone(),
        &slot.token,
    )
    .await;
    if !stored {
        cancelled(&slot, "attempt cancelled before it started");
        return;
    }
    let handler = call_handler(shared, &assignment, &slot, execution);
    tokio::pin!(handler);
    let result = tokio::select! {
        biased;
        () = slot.token.cancelled() => {
            // Noted when it happens: the handler may take a while to notice.
            cancelled(&slot, "attempt cancelled");
            let _ = handler.await;
            tracing::debug!("the cancelled attempt's handler returned");
            return;
        }
        result = &mut handler => result,
    };
    if slot.token.is_cancelled() {
        cancelled(&slot, "attempt cancelled");
        return;
    }
    let completed = completion(&assignment, result);
    let stored = send_acked(
        &shared.client,
        shared.subject(keys::COMPLETED),
        &completed,
        message_id(shared, "completed", &assignment),
        headers,
        &slot.token,
    )
    .await;
    if stored {
        tracing::debug!(outcome = %completed.outcome, "attempt completed");
        shared.release(&run_id, attempt, slot.serial);
    } else {
        cancelled(&slot, "attempt cancelled before its completion was stored");
    }
}

/// Notes, as an event on the execution span, that the attempt was stopped and why.
fn cancelled(slot: &Slot, what: &str) {
    let reason = lock(&slot.reason).clone().unwrap_or_default();
    tracing::info!(%reason, "{what}; its outcome is not reported");
}

/// Looks the routine's handler up and runs it.
async fn call_handler(
    shared: &Arc<Shared>,
    assignment: &Assignment,
    slot: &Slot,
    execution: Arc<Execution>,
) -> Result<Value, RoutineError> {
    let Some(handler) = shared.handlers.get(&assignment.routine_id).cloned() else {
        return Err(RoutineError::new(format!(
            "worker {} has no routine {}",
            shared.id, assignment.routine_id
        ))
        .with_type(UNKNOWN_ROUTINE_TYPE));
    };
    let ctx = Context::new(
        Backend::Worker(Arc::clone(shared)),
        assignment.clone(),
        slot.clone(),
        execution,
    );
    run_handler(&handler, ctx, assignment.params.clone()).await
}

/// Runs the handler on its own task; a panic becomes a failed attempt.
pub(crate) async fn run_handler(
    handler: &Handler,
    ctx: Context,
    params: Value,
) -> Result<Value, RoutineError> {
    let future = handler(ctx, params);
    let mut task = AbortOnDrop(tokio::spawn(future.in_current_span()));
    match (&mut task.0).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => {
            let message = panic_message(error.into_panic());
            tracing::warn!(panic = %message, "routine handler panicked");
            Err(RoutineError::new(format!("handler panicked: {message}")).with_type(PANIC_TYPE))
        }
        Err(error) => Err(RoutineError::new(error.to_string())),
    }
}

/// Aborts the handler's task when the attempt's task is aborted.
struct AbortOnDrop(JoinHandle<Result<Value, RoutineError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload
            .downcast::<&'static str>()
            .map(|text| (*text).to_owned())
            .unwrap_or_else(|_| "unknown panic payload".to_owned()),
    }
}

/// The `completed` for a handler's result; a result over the payload limit becomes a failure
/// that says so, since Drover would refuse the message.
pub(crate) fn completion(
    assignment: &Assignment,
    result: Result<Value, RoutineError>,
) -> Completed {
    let failed = |error: &RoutineError| Completed {
        run_id: assignment.run_id.clone(),
        attempt: assignment.attempt,
        outcome: Outcome::Failed,
        result: None,
        error: Some(error.to_wire()),
    };
    let completed = match &result {
        Ok(value) => Completed {
            run_id: assignment.run_id.clone(),
            attempt: assignment.attempt,
            outcome: Outcome::Succeeded,
            result: Some(value.clone()),
            error: None,
        },
        Err(error) => failed(error),
    };
    let size = encode(&completed).len();
    if size > DEFAULT_MAX_PAYLOAD_BYTES {
        return failed(
            &RoutineError::fatal(format!(
                "the completion is {size} bytes, over the limit of {DEFAULT_MAX_PAYLOAD_BYTES}"
            ))
            .with_type(RESULT_TOO_LARGE_TYPE),
        );
    }
    completed
}

fn message_id(shared: &Shared, kind: &str, assignment: &Assignment) -> String {
    format!(
        "{kind}.{}.{}.{}",
        shared.id, assignment.run_id, assignment.attempt
    )
}

#[cfg(test)]
mod tests {
    use drover_protocol::{RoutineId, RunId};
    use serde_json::json;

    use super::*;

    fn assignment() -> Assignment {
        Assignment {
            run_id: RunId::generate(),
            attempt: 2,
            routine_id: RoutineId::parse("r").unwrap(),
            params: Value::Null,
            env: Default::default(),
            max_exec_time_ms: None,
            parent_run_id: None,
        }
    }

    #[test]
    fn completions_carry_the_result_or_the_error() {
        let ok = completion(&assignment(), Ok(json!({"x": 1})));
        assert_eq!(ok.outcome, Outcome::Succeeded);
        assert_eq!(ok.attempt, 2);
        let failed = completion(&assignment(), Err(RoutineError::fatal("no")));
        assert_eq!(failed.outcome, Outcome::Failed);
        for completed in [&ok, &failed] {
            drover_protocol::decode::<Completed>(&encode(completed), DEFAULT_MAX_PAYLOAD_BYTES)
                .unwrap();
        }
        let starting = Starting {
            run_id: RunId::generate(),
            attempt: 1,
        };
        drover_protocol::decode::<Starting>(&encode(&starting), 1024).unwrap();
        assert_eq!(failed.error.unwrap().retryable, Some(false));
    }

    #[test]
    fn an_oversized_result_fails_the_attempt() {
        let huge = Value::String("x".repeat(DEFAULT_MAX_PAYLOAD_BYTES));
        let completed = completion(&assignment(), Ok(huge));
        assert_eq!(completed.outcome, Outcome::Failed);
        let error = completed.error.unwrap();
        assert_eq!(error.kind.as_deref(), Some(RESULT_TOO_LARGE_TYPE));
    }

    #[test]
    fn panic_payloads_become_messages() {
        assert_eq!(panic_message(Box::new("static")), "static");
        assert_eq!(panic_message(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_message(Box::new(7)), "unknown panic payload");
    }
}
