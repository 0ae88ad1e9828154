//! Attempts waiting for the forwarded completion of a child run they requested.
//!
//! A waiter is registered before the request is sent, because a memoized child that has
//! already ended has its completion forwarded at once, possibly before the reply to the
//! request. Forwarded completions name the child's runID and the request's localRunID but
//! not the parent, so they are matched by runID once the reply has told it; a completion
//! that arrives before the reply is kept until then, but only while some request with that
//! localRunID is still waiting for its reply.

use std::collections::HashMap;
use std::sync::Mutex;

use drover_protocol::{ChildCompleted, LocalRunId, RunId};
use tokio::sync::oneshot;

use crate::state::lock;

struct Waiter {
    local: LocalRunId,
    run: Option<RunId>,
    sender: Option<oneshot::Sender<ChildCompleted>>,
}

#[derive(Default)]
struct Table {
    next: u64,
    waiters: HashMap<u64, Waiter>,
    /// Completions that arrived before the reply that names their run.
    early: Vec<ChildCompleted>,
}

/// Every child waiter of one worker.
#[derive(Default)]
pub(crate) struct Waiters {
    table: Mutex<Table>,
}

impl Waiters {
    /// Registers a waiter for a child requested with `local`; returns its key and the
    /// receiver of the child's completion.
    pub(crate) fn register(&self, local: LocalRunId) -> (u64, oneshot::Receiver<ChildCompleted>) {
        let (sender, receiver) = oneshot::channel();
        let mut table = lock(&self.table);
        table.next += 1;
        let key = table.next;
        table.waiters.insert(
            key,
            Waiter {
                local,
                run: None,
                sender: Some(sender),
            },
        );
        (key, receiver)
    }

    /// The reply named the child run: deliver a completion that came first, if any.
    pub(crate) fn accepted(&self, key: u64, run: RunId) {
        let mut table = lock(&self.table);
        let early = table
            .early
            .iter()
            .position(|completed| completed.run_id == run)
            .map(|index| table.early.remove(index));
        let Some(waiter) = table.waiters.get_mut(&key) else {
            return;
        };
        waiter.run = Some(run);
        if let Some(completed) = early {
            if let Some(sender) = waiter.sender.take() {
                let _ = sender.send(completed);
            }
        }
    }

    /// A child completion was forwarded into the inbox.
    pub(crate) fn deliver(&self, completed: ChildCompleted) {
        let mut table = lock(&self.table);
        let waiter = table
            .waiters
            .values_mut()
            .find(|waiter| waiter.run.as_ref() == Some(&completed.run_id));
        if let Some(waiter) = waiter {
            if let Some(sender) = waiter.sender.take() {
                let _ = sender.send(completed);
            }
            return;
        }
        let pending_request = table
            .waiters
            .values()
            .any(|waiter| waiter.run.is_none() && waiter.local == completed.local_run_id);
        if pending_request {
            table.early.push(completed);
        } else {
            tracing::debug!(run_id = %completed.run_id, "completion of a child nobody waits for");
        }
    }

    /// The waiter is gone; forget early completions nobody can claim any more.
    pub(crate) fn remove(&self, key: u64) {
        let mut table = lock(&self.table);
        table.waiters.remove(&key);
        let Table { waiters, early, .. } = &mut *table;
        early.retain(|completed| {
            waiters
                .values()
                .any(|waiter| waiter.run.is_none() && waiter.local == completed.local_run_id)
        });
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::Outcome;

    use super::*;

    fn completion(run: &RunId, local: &str) -> ChildCompleted {
        ChildCompleted {
            run_id: run.clone(),
            local_run_id: LocalRunId::parse(local).unwrap(),
            outcome: Outcome::Succeeded,
            result: None,
            error: None,
            status: None,
            failure_reason: None,
        }
    }

    #[test]
    fn a_completion_before_the_reply_is_kept_until_the_reply() {
        let waiters = Waiters::default();
        let run = RunId::generate();
        let (key, mut receiver) = waiters.register(LocalRunId::parse("a").unwrap());
        waiters.deliver(completion(&run, "a"));
        assert!(receiver.try_recv().is_err());
        waiters.accepted(key, run.clone());
        assert_eq!(receiver.try_recv().unwrap().run_id, run);
        waiters.remove(key);
        assert!(lock(&waiters.table).early.is_empty());
    }

    #[test]
    fn same_local_ids_of_two_parents_are_told_apart_by_run() {
        let waiters = Waiters::default();
        let (first, mut first_rx) = waiters.register(LocalRunId::parse("x").unwrap());
        let (second, mut second_rx) = waiters.register(LocalRunId::parse("x").unwrap());
        let (run_one, run_two) = (RunId::generate(), RunId::generate());
        waiters.accepted(first, run_one.clone());
        waiters.accepted(second, run_two.clone());
        waiters.deliver(completion(&run_two, "x"));
        assert!(first_rx.try_recv().is_err());
        assert_eq!(second_rx.try_recv().unwrap().run_id, run_two);
    }

    #[test]
    fn completions_nobody_waits_for_are_dropped() {
        let waiters = Waiters::default();
        waiters.deliver(completion(&RunId::generate(), "lost"));
        assert!(lock(&waiters.table).early.is_empty());
    }
}
