//! Sub-routines (DESIGN §6.5). The worker running this run asks for children; the run keeps
//! its open children, so that the registry reads its worker as HANGING, and hears of their
//! starts and ends, which go on to its worker. Children are memoized by (`parentRunID`,
//! `localRunID`) at intake (see [`run_key`](crate::intake::run_key)): a retried parent that
//! asks again gets the same child, and at once what that child already did.

use std::convert::Infallible;

use drover_protocol::{Accepted, RunId, RunRecord, RunSpec, Waiting, WorkerId};
use tracing::warn;

use super::outbox::Letter;
use super::Actor;
use crate::error::ChildError;
use crate::intake::{Origin, TraceContext};
use crate::store::{Decision, MutateError, Stored};
use crate::transitions::held;

/// Checks that `worker` may ask for children of `parent`: it holds the parent's attempt.
pub(super) fn check_parent(parent: &RunRecord, worker: &WorkerId) -> Result<(), ChildError> {
    if held(parent) && parent.worker_id.as_ref() == Some(worker) {
        return Ok(());
    }
    Err(ChildError::ParentNotRunning {
        parent: parent.run_id.clone(),
        status: parent.status,
        worker: worker.clone(),
        holder: parent.worker_id.clone(),
    })
}

/// The parent with `child` among its open children.
pub(super) fn open_child(record: &RunRecord, child: &RunId) -> Decision {
    if record.open_children.contains(child) {
        return Decision::Keep;
    }
    let mut next = record.clone();
    next.open_children.push(child.clone());
    Decision::write(next)
}

/// The parent with `child` no longer among its open children.
pub(super) fn close_child(record: &RunRecord, child: &RunId) -> Decision {
    if !record.open_children.contains(child) {
        return Decision::Keep;
    }
    let mut next = record.clone();
    next.open_children.retain(|open| open != child);
    Decision::write(next)
}

/// What the registry hears about a run on a worker: whether it waits on children. The
/// record's revision orders the reports.
pub(super) fn waiting_report(stored: &Stored) -> Option<Waiting> {
    let record = &stored.record;
    let worker = record.worker_id.as_ref()?;
    if !held(record) {
        return None;
    }
    Some(Waiting {
        worker_id: worker.clone(),
        run_id: record.run_id.clone(),
        attempt: record.attempt,
        waiting: !record.open_children.is_empty(),
        version: stored.revision,
    })
}

impl Actor {
    pub(super) async fn on_child_request(
        &mut self,
        spec: RunSpec,
        worker: WorkerId,
        trace: TraceContext,
    ) -> Result<Accepted, ChildError> {
        let parent = match self.reload().await {
            Ok(Some(stored)) => stored.record.clone(),
            Ok(None) => return Err(ChildError::UnknownParent(self.run.clone())),
            Err(error) => return Err(ChildError::Unavailable(error)),
        };
        check_parent(&parent, &worker)?;
        let origin = Origin::Child {
            worker,
            parent: self.run.clone(),
        };
        let submitted = self.engine.intake.submit(spec, origin, trace).await?;
        let child = submitted.record;
        if !child.status.is_terminal() {
            self.track_child(&child.run_id).await;
        }
        // A retried parent asks again: tell it at once what it would have heard.
        let letters = if submitted.existed {
            Letter::replay(&parent, &child)
        } else {
            Vec::new()
        };
        if !letters.is_empty() {
            let outbox = self.engine.outbox.clone();
            self.engine.tasks.spawn(async move {
                // After the reply, so the worker knows the runID first.
                tokio::task::yield_now().await;
                outbox.send_all(letters).await;
            });
        }
        Ok(submitted.accepted)
    }

    /// Adds a child to this run's open children, and reports the worker HANGING.
    async fn track_child(&mut self, child: &RunId) {
        let opened = self
            .mutate(|record| Ok::<_, Infallible>(open_child(record, child)))
            .await;
        match opened {
            Ok(mutated) if mutated.written => self.report_waiting(),
            Ok(_) | Err(MutateError::Missing) => {}
            Err(error) => warn!(%error, child = %child, "could not record a child"),
        }
    }

    fn report_waiting(&self) {
        if let Some(report) = self.current.as_ref().and_then(waiting_report) {
            self.engine.holdings.waiting(report);
        }
    }

    pub(super) async fn on_child_started(&mut self, child: &RunRecord) {
        let Ok(Some(stored)) = self.load().await else {
            return;
        };
        let letter = Letter::child_started(&stored.record, child);
        self.send(letter).await;
    }

    pub(super) async fn on_child_ended(&mut self, child: &RunRecord) {
        let closed = self
            .mutate(|record| Ok::<_, Infallible>(close_child(record, &child.run_id)))
            .await;
        let parent = match closed {
            Ok(mutated) => {
                if mutated.written {
                    self.report_waiting();
                }
                mutated.after
            }
            Err(MutateError::Missing) => return,
            Err(error) => {
                warn!(%error, "could not record a child's end");
                return;
            }
        };
        self.send(Letter::child_completed(&parent, child)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{at, pending, w, written};
    use crate::transitions::{assign, start, succeed};
    use drover_protocol::RunStatus;

    fn running_on(worker: &str) -> RunRecord {
        start(&assign(&pending(0), &w(worker), 1, at(0)), at(1)).expect("assigned")
    }

    #[test]
    fn the_worker_running_the_parent_may_ask_for_children() {
        assert!(check_parent(&running_on("a"), &w("a")).is_ok());
        let assigned = assign(&pending(0), &w("a"), 1, at(0));
        assert!(check_parent(&assigned, &w("a")).is_ok(), "starting may lag");
    }

    #[test]
    fn another_worker_may_not() {
        let parent = running_on("a");
        let Err(ChildError::ParentNotRunning {
            status,
            worker,
            holder,
            ..
        }) = check_parent(&parent, &w("b"))
        else {
            panic!("expected parent_not_running");
        };
        assert_eq!(status, RunStatus::Running);
        assert_eq!(worker, w("b"));
        assert_eq!(holder, Some(w("a")));
    }

    #[test]
    fn a_parent_off_its_worker_gets_no_children() {
        let waiting = pending(0);
        assert!(matches!(
            check_parent(&waiting, &w("a")),
            Err(ChildError::ParentNotRunning {
                status: RunStatus::Pending,
                holder: None,
                ..
            })
        ));
        let done = succeed(&running_on("a"), None, at(2));
        assert!(matches!(
            check_parent(&done, &w("a")),
            Err(ChildError::ParentNotRunning {
                status: RunStatus::Succeeded,
                ..
            })
        ));
    }

    #[test]
    fn a_child_is_opened_once_and_closed_once() {
        let parent = running_on("a");
        let (first, second) = (RunId::generate(), RunId::generate());
        let one = written(open_child(&parent, &first));
        assert_eq!(open_child(&one, &first), Decision::Keep, "asked again");
        let two = written(open_child(&one, &second));
        assert_eq!(two.open_children, [first.clone(), second.clone()]);
        let closed = written(close_child(&two, &first));
        assert_eq!(closed.open_children, [second]);
        assert_eq!(close_child(&closed, &first), Decision::Keep, "ended twice");
    }

    #[test]
    fn the_registry_hears_whether_the_run_waits_on_children() {
        let mut record = running_on("a");
        record.open_children = vec![RunId::generate()];
        let report = waiting_report(&Stored {
            record: record.clone(),
            revision: 42,
        })
        .expect("on a worker");
        assert!(report.waiting);
        assert_eq!(report.version, 42);
        assert_eq!(report.worker_id, w("a"));
        assert_eq!(report.attempt, 1);
        record.open_children.clear();
        let report = waiting_report(&Stored {
            record: record.clone(),
            revision: 43,
        })
        .expect("on a worker");
        assert!(!report.waiting);
        let done = succeed(&record, None, at(3));
        assert!(waiting_report(&Stored {
            record: done,
            revision: 44
        })
        .is_none());
    }
}
