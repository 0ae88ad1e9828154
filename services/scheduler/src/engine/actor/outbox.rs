//! Everything the scheduler sends to workers, on `v1.worker.<w>.routine.*`: assignments,
//! cancels, and the starts and ends of the children a worker asked for (DESIGN §4, §6.5).
//!
//! What to send is decided by pure builders that return a [`Letter`]; the [`Outbox`] sends
//! letters, each with the trace context of the run it is about.

use async_nats::Client;
use bytes::Bytes;
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    encode, Assignment, Cancel, ChildCompleted, ChildStarting, Outcome, RunRecord, RunStatus,
    WorkerId,
};
use tracing::warn;

use crate::intake::TraceContext;
use crate::transitions::held;

/// What a worker is told.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Notice {
    /// Run this attempt.
    Assignment(Assignment),
    /// Stop this attempt.
    Cancel(Cancel),
    /// A child you asked for started.
    ChildStarting(ChildStarting),
    /// A child you asked for ended.
    ChildCompleted(ChildCompleted),
}

impl Notice {
    /// The directive key, the last part of the subject.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            Self::Assignment(_) => keys::REQUEST_START,
            Self::Cancel(_) => keys::CANCEL,
            Self::ChildStarting(_) => keys::STARTING,
            Self::ChildCompleted(_) => keys::COMPLETED,
        }
    }

    fn body(&self) -> Bytes {
        match self {
            Self::Assignment(assignment) => encode(assignment),
            Self::Cancel(cancel) => encode(cancel),
            Self::ChildStarting(starting) => encode(starting),
            Self::ChildCompleted(completed) => encode(completed),
        }
    }
}

/// A notice for a worker, with the trace context of the attempt it is about.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Letter {
    /// Who gets it.
    pub(crate) worker: WorkerId,
    /// What it says.
    pub(crate) notice: Notice,
    /// The context of the attempt's span (`drover.attempt`), sent as headers: the
    /// worker's execution span is its child.
    pub(crate) trace: TraceContext,
}

impl Letter {
    fn about(record: &RunRecord, worker: &WorkerId, notice: Notice) -> Self {
        Self {
            worker: worker.clone(),
            notice,
            trace: TraceContext::of_attempt(record),
        }
    }

    /// The run's current attempt, for the worker it is assigned to.
    pub(crate) fn assignment(record: &RunRecord) -> Option<Self> {
        let worker = record.worker_id.as_ref()?;
        let assignment = Assignment {
            run_id: record.run_id.clone(),
            attempt: record.attempt,
            routine_id: record.routine_id.clone(),
            params: record.params.clone(),
            env: record.env.clone(),
            max_exec_time_ms: record.max_exec_time_ms,
            parent_run_id: record.parent_run_id.clone(),
        };
        Some(Self::about(record, worker, Notice::Assignment(assignment)))
    }

    /// Stop the attempt `record` names, on the worker it names.
    pub(crate) fn cancel(record: &RunRecord, reason: &str) -> Option<Self> {
        let worker = record.worker_id.as_ref()?;
        let cancel = Cancel {
            run_id: record.run_id.clone(),
            attempt: record.attempt,
            reason: reason.to_owned(),
        };
        Some(Self::about(record, worker, Notice::Cancel(cancel)))
    }

    /// A child's start, for the worker running its parent; none while the parent is not
    /// on a worker (nobody waits for it), or before the child is on one.
    pub(crate) fn child_started(parent: &RunRecord, child: &RunRecord) -> Option<Self> {
        let local = child.local_run_id.as_ref()?;
        let (worker, child_worker) = (parent.worker_id.as_ref()?, child.worker_id.as_ref()?);
        if !held(parent) {
            return None;
        }
        let starting = ChildStarting {
            run_id: child.run_id.clone(),
            local_run_id: local.clone(),
            routine_id: child.routine_id.clone(),
            worker_id: child_worker.clone(),
        };
        Some(Self::about(parent, worker, Notice::ChildStarting(starting)))
    }

    /// A child's end, for the worker running its parent.
    pub(crate) fn child_completed(parent: &RunRecord, child: &RunRecord) -> Option<Self> {
        let local = child.local_run_id.as_ref()?;
        let worker = parent.worker_id.as_ref()?;
        if !held(parent) {
            return None;
        }
        let completed = ChildCompleted {
            run_id: child.run_id.clone(),
            local_run_id: local.clone(),
            outcome: if child.status == RunStatus::Succeeded {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            },
            result: child.result.clone(),
            error: child.error.clone(),
            status: Some(child.status),
            failure_reason: child.failure_reason,
        };
        Some(Self::about(
            parent,
            worker,
            Notice::ChildCompleted(completed),
        ))
    }

    /// What a retried parent would have heard about a memoized child: its start once it
    /// started, and its end at once if it ended (DESIGN §6.5).
    pub(crate) fn replay(parent: &RunRecord, child: &RunRecord) -> Vec<Self> {
        let mut letters = Vec::new();
        if child.started_at.is_some() || child.status.is_terminal() {
            letters.extend(Self::child_started(parent, child));
        }
        if child.status.is_terminal() {
            letters.extend(Self::child_completed(parent, child));
        }
        letters
    }
}

/// Sends letters to workers.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    nats: Client,
}

impl Outbox {
    /// An outbox over `nats`.
    pub(crate) fn new(nats: Client) -> Self {
        Self { nats }
    }

    /// Sends a letter; a failure is logged (the worker's side of the protocol copes with a
    /// lost message: an assignment not acknowledged is taken back).
    pub(crate) async fn send(&self, letter: Letter) {
        let subject = subject::to_worker(&letter.worker, letter.notice.key());
        let body = letter.notice.body();
        if let Err(error) = self
            .nats
            .publish_with_headers(subject, letter.trace.headers(), body)
            .await
        {
            warn!(worker = %letter.worker, key = letter.notice.key(), %error, "could not send to the worker");
        }
    }

    /// Sends each letter there is, in order.
    pub(crate) async fn send_all(&self, letters: impl IntoIterator<Item = Letter>) {
        for letter in letters {
            self.send(letter).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{at, pending, w};
    use crate::transitions::{assign, cancel, start, succeed};
    use drover_protocol::{FailureReason, LocalRunId, RunError};
    use serde_json::json;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn running_parent() -> RunRecord {
        let mut parent = pending(0);
        parent.traceparent = Some(TRACEPARENT.to_owned());
        parent.tracestate = Some("vendor=a".to_owned());
        start(&assign(&parent, &w("parent-w"), 4, at(1)), at(2)).expect("assigned")
    }

    fn child_of(parent: &RunRecord) -> RunRecord {
        let mut child = pending(0);
        child.parent_run_id = Some(parent.run_id.clone());
        child.local_run_id = Some(LocalRunId::parse("step-1").expect("valid"));
        child
    }

    #[test]
    fn an_assignment_goes_to_the_assigned_worker_with_the_attempt() {
        let mut record = pending(0);
        record.params = json!({"size": 3});
        record.traceparent = Some(TRACEPARENT.to_owned());
        let record = assign(&assign(&record, &w("a"), 1, at(1)), &w("b"), 2, at(2));
        let letter = Letter::assignment(&record).expect("assigned");
        assert_eq!(letter.worker, w("b"));
        assert_eq!(letter.notice.key(), keys::REQUEST_START);
        let Notice::Assignment(assignment) = &letter.notice else {
            panic!("not an assignment: {letter:?}");
        };
        assert_eq!(assignment.attempt, 2);
        assert_eq!(assignment.params, json!({"size": 3}));
        assert_eq!(assignment.max_exec_time_ms, Some(50));
        // Under the span of attempt 2, in the run's trace.
        let sent = letter.trace.traceparent.as_deref().expect("a traceparent");
        assert_eq!(
            Some(sent.to_owned()),
            record.attempt_span(2).map(|s| s.to_string())
        );
        assert_ne!(
            Some(sent.to_owned()),
            record.attempt_span(1).map(|s| s.to_string())
        );
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(Letter::assignment(&pending(0)).is_none(), "no worker yet");
    }

    #[test]
    fn a_cancel_names_the_attempt_it_stops() {
        let record = assign(&pending(0), &w("a"), 1, at(1));
        let letter = Letter::cancel(&record, "max_exec_exceeded").expect("assigned");
        assert_eq!(letter.worker, w("a"));
        assert_eq!(
            letter.notice,
            Notice::Cancel(Cancel {
                run_id: record.run_id.clone(),
                attempt: 1,
                reason: "max_exec_exceeded".to_owned(),
            })
        );
    }

    #[test]
    fn trace_headers_carry_traceparent_and_tracestate() {
        let parent = running_parent();
        let letter = Letter::child_started(&parent, &{
            start(&assign(&child_of(&parent), &w("c"), 1, at(3)), at(4)).expect("assigned")
        })
        .expect("parent running");
        let headers = letter.trace.headers();
        assert_eq!(
            headers
                .get(drover_protocol::trace::TRACEPARENT)
                .map(|value| value.as_str().to_owned()),
            parent.attempt_span(1).map(|span| span.to_string())
        );
        assert_eq!(
            headers
                .get(drover_protocol::trace::TRACESTATE)
                .map(|value| value.as_str()),
            Some("vendor=a")
        );
        assert!(TraceContext::default().headers().is_empty());
    }

    #[test]
    fn child_news_goes_to_the_parents_worker_under_the_parents_trace() {
        let parent = running_parent();
        let child = start(&assign(&child_of(&parent), &w("c"), 1, at(3)), at(4)).expect("assigned");
        let started = Letter::child_started(&parent, &child).expect("parent running");
        assert_eq!(started.worker, w("parent-w"));
        assert_eq!(started.trace, TraceContext::of_attempt(&parent));
        assert_eq!(
            started.trace.traceparent,
            parent
                .attempt_span(parent.attempt)
                .map(|span| span.to_string())
        );
        let Notice::ChildStarting(starting) = &started.notice else {
            panic!("not a child start: {started:?}");
        };
        assert_eq!(starting.worker_id, w("c"));
        assert_eq!(starting.local_run_id.as_str(), "step-1");
    }

    #[test]
    fn no_child_news_for_a_parent_off_its_worker() {
        let parent = running_parent();
        let child = succeed(
            &start(&assign(&child_of(&parent), &w("c"), 1, at(3)), at(4)).expect("assigned"),
            None,
            at(5),
        );
        let cancelled = cancel(&parent, "stop", at(6)).expect("not ended");
        assert!(Letter::child_completed(&cancelled, &child).is_none());
        assert!(Letter::child_started(&cancelled, &child).is_none());
        let mut anonymous = child.clone();
        anonymous.local_run_id = None;
        assert!(Letter::child_completed(&parent, &anonymous).is_none());
    }

    #[test]
    fn a_failed_or_cancelled_child_reads_as_failed_with_its_reason() {
        let parent = running_parent();
        let mut child = cancel(&child_of(&parent), "parent asked", at(3)).expect("not ended");
        child.error = Some(RunError::new("Cancelled", "parent asked"));
        let letter = Letter::child_completed(&parent, &child).expect("parent running");
        let Notice::ChildCompleted(completed) = letter.notice else {
            panic!("not a child end");
        };
        assert_eq!(completed.outcome, Outcome::Failed);
        assert_eq!(completed.status, Some(RunStatus::Cancelled));
        assert_eq!(completed.failure_reason, Some(FailureReason::Cancelled));
        assert_eq!(completed.error, child.error);
    }

    #[test]
    fn a_retried_parent_hears_at_once_what_its_memoized_child_did() {
        let parent = running_parent();
        let queued = child_of(&parent);
        assert!(
            Letter::replay(&parent, &queued).is_empty(),
            "nothing happened yet"
        );
        let running = start(&assign(&queued, &w("c"), 1, at(3)), at(4)).expect("assigned");
        let keys: Vec<_> = Letter::replay(&parent, &running)
            .iter()
            .map(|letter| letter.notice.key())
            .collect();
        assert_eq!(keys, [keys::STARTING]);
        let done = succeed(&running, Some(json!(7)), at(5));
        let letters = Letter::replay(&parent, &done);
        let keys: Vec<_> = letters.iter().map(|letter| letter.notice.key()).collect();
        assert_eq!(keys, [keys::STARTING, keys::COMPLETED]);
        let Notice::ChildCompleted(completed) = &letters[1].notice else {
            panic!("not a child end");
        };
        assert_eq!(completed.outcome, Outcome::Succeeded);
        assert_eq!(completed.result, Some(json!(7)));
    }

    #[test]
    fn a_child_that_ended_before_starting_is_replayed_without_a_start() {
        let parent = running_parent();
        let expired =
            crate::transitions::expire_wait(&child_of(&parent), at(200)).expect("pending");
        let keys: Vec<_> = Letter::replay(&parent, &expired)
            .iter()
            .map(|letter| letter.notice.key())
            .collect();
        assert_eq!(keys, [keys::COMPLETED], "no worker to name in a start");
    }
}
