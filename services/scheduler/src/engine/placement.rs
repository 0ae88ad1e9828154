//! Which worker gets a run, and what a worker's new record means for the runs placed on it
//! (DESIGN §6.3 items 3 and 5): decisions on the leader's view of one worker, free of I/O.
//! The [`Dispatcher`](super::dispatcher::Dispatcher) keeps the views and answers the actors.

use std::collections::HashSet;
use std::sync::Arc;

use drover_protocol::{Conditions, Incarnation, RoutineId, RunId, WorkerId, WorkerRecord};

/// Where a run goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The worker.
    pub worker: WorkerId,
    /// Its incarnation when chosen.
    pub incarnation: Incarnation,
}

/// A worker's registration ended or was replaced: its reserved runs must move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    /// The run to take back.
    pub run: RunId,
    /// The worker it was on.
    pub worker: WorkerId,
    /// The incarnation it was placed on.
    pub incarnation: Incarnation,
    /// Why, for the record.
    pub reason: String,
}

/// A worker as the leader sees it: its record from the registry, and the runs this leader
/// has reserved a slot for on it.
#[derive(Debug, Clone)]
pub(super) struct WorkerView {
    pub(super) record: Arc<WorkerRecord>,
    pub(super) reserved: HashSet<RunId>,
}

impl WorkerView {
    /// A worker with no reservations.
    pub(super) fn new(record: Arc<WorkerRecord>) -> Self {
        Self {
            record,
            reserved: HashSet::new(),
        }
    }

    /// Slots taken: this leader's reservations, and the runs the registry says the worker
    /// holds besides.
    pub(super) fn used(&self) -> usize {
        let mut used = self.reserved.len();
        for held in &self.record.runs {
            if !self.reserved.contains(&held.run_id) {
                used += 1;
            }
        }
        used
    }

    /// Slots free for new runs: none unless the worker is ready and responsive.
    pub(super) fn free(&self) -> usize {
        if !self.record.accepts_work() {
            return 0;
        }
        (self.record.capacity as usize).saturating_sub(self.used())
    }

    /// True when the worker serves `routine` and meets `conditions`.
    pub(super) fn matches(&self, routine: &RoutineId, conditions: &Conditions) -> bool {
        self.record.routines.contains(routine)
            && (conditions.worker_ids.is_empty()
                || conditions.worker_ids.contains(&self.record.worker_id))
            && conditions
                .labels
                .iter()
                .all(|(key, value)| self.record.labels.get(key) == Some(value))
    }

    /// The placement of a run on this worker as it is now.
    pub(super) fn placement(&self) -> Placement {
        Placement {
            worker: self.record.worker_id.clone(),
            incarnation: self.record.incarnation,
        }
    }
}

/// The worker a run of `routine` goes to: one that matches and has a free slot. The most
/// free slots first; among equals the least busy, then the lowest workerID, so that the
/// choice is stable.
pub(super) fn choose<'a>(
    candidates: impl IntoIterator<Item = &'a WorkerView>,
    routine: &RoutineId,
    conditions: &Conditions,
) -> Option<&'a WorkerView> {
    let mut best: Option<(&WorkerView, usize, usize)> = None;
    for view in candidates {
        let free = view.free();
        if free == 0 || !view.matches(routine, conditions) {
            continue;
        }
        let used = view.used();
        let better = match best {
            None => true,
            Some((current, best_free, best_used)) => {
                free > best_free
                    || (free == best_free && used < best_used)
                    || (free == best_free
                        && used == best_used
                        && view.record.worker_id < current.record.worker_id)
            }
        };
        if better {
            best = Some((view, free, used));
        }
    }
    best.map(|(view, _, _)| view)
}

/// True when `record` is older than the view already held, and must be ignored.
pub(super) fn outdated(known: Option<&WorkerView>, record: &WorkerRecord) -> bool {
    known.is_some_and(|known| known.record.incarnation > record.incarnation)
}

/// The view after a new record of a worker, and the reserved runs it ends: all of them
/// when the worker is LOST or OFFLINE or registered again, none when it merely changed.
pub(super) fn renew(
    previous: Option<WorkerView>,
    record: Arc<WorkerRecord>,
) -> (WorkerView, Vec<Gone>) {
    let Some(previous) = previous else {
        return (WorkerView::new(record), Vec::new());
    };
    if previous.record.incarnation == record.incarnation && record.is_live() {
        let view = WorkerView {
            record,
            reserved: previous.reserved,
        };
        return (view, Vec::new());
    }
    let worker = &record.worker_id;
    let reason = if record.is_live() {
        format!("worker {worker} registered again")
    } else {
        format!("worker {worker} is {}", record.status)
    };
    let gone = previous
        .reserved
        .into_iter()
        .map(|run| Gone {
            run,
            worker: worker.clone(),
            incarnation: previous.record.incarnation,
            reason: reason.clone(),
        })
        .collect();
    (WorkerView::new(record), gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{changed, routine, w, worker};
    use drover_protocol::{HeldRun, Timestamp, WorkerPhase};

    fn view(record: Arc<WorkerRecord>) -> WorkerView {
        WorkerView::new(record)
    }

    fn reserving(record: Arc<WorkerRecord>, runs: &[&RunId]) -> WorkerView {
        let mut view = view(record);
        view.reserved.extend(runs.iter().map(|run| (*run).clone()));
        view
    }

    /// A worker w1 holding `runs`, renewed with its record changed by `change`.
    fn renewed(runs: &[&RunId], change: impl FnOnce(&mut WorkerRecord)) -> (WorkerView, Vec<Gone>) {
        let before = reserving(worker("w1", &["a"], 2, &[]), runs);
        let record = changed(&before.record, change);
        renew(Some(before), record)
    }

    fn chosen(views: &[WorkerView], conditions: &Conditions) -> Option<WorkerId> {
        choose(views, &routine("a"), conditions).map(|view| view.record.worker_id.clone())
    }

    fn labels(pairs: &[(&str, &str)]) -> Conditions {
        Conditions {
            worker_ids: vec![],
            labels: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn held(run: &RunId) -> HeldRun {
        HeldRun {
            run_id: run.clone(),
            attempt: 1,
            waiting: false,
            waiting_version: 0,
            since: Timestamp::now(),
            traceparent: None,
        }
    }

    #[test]
    fn the_worker_with_most_free_slots_wins() {
        let run = RunId::generate();
        let views = [
            reserving(worker("small", &["a"], 2, &[]), &[&run]),
            view(worker("big", &["a"], 4, &[])),
        ];
        assert_eq!(chosen(&views, &Conditions::default()), Some(w("big")));
    }

    #[test]
    fn among_equal_free_slots_the_least_busy_then_the_lowest_id() {
        let run = RunId::generate();
        let busy = reserving(worker("a1", &["a"], 3, &[]), &[&run]);
        let idle = view(worker("z9", &["a"], 2, &[]));
        assert_eq!(
            chosen(&[busy, idle], &Conditions::default()),
            Some(w("z9")),
            "both have 2 free, z9 runs nothing"
        );
        let ties = [
            view(worker("w2", &["a"], 1, &[])),
            view(worker("w1", &["a"], 1, &[])),
        ];
        assert_eq!(chosen(&ties, &Conditions::default()), Some(w("w1")));
    }

    #[test]
    fn every_label_asked_for_must_match() {
        let views = [
            view(worker(
                "cpu",
                &["a"],
                4,
                &[("gpu", "false"), ("zone", "eu")],
            )),
            view(worker("gpu", &["a"], 1, &[("gpu", "true")])),
        ];
        assert_eq!(chosen(&views, &labels(&[("gpu", "true")])), Some(w("gpu")));
        assert_eq!(
            chosen(&views, &labels(&[("gpu", "false"), ("zone", "eu")])),
            Some(w("cpu"))
        );
        assert_eq!(
            chosen(&views, &labels(&[("gpu", "true"), ("zone", "eu")])),
            None
        );
    }

    #[test]
    fn a_workerid_list_limits_the_choice() {
        let views = [
            view(worker("w1", &["a"], 8, &[])),
            view(worker("w2", &["a"], 1, &[])),
        ];
        let only_w2 = Conditions {
            worker_ids: vec![w("w2")],
            labels: Default::default(),
        };
        assert_eq!(chosen(&views, &only_w2), Some(w("w2")));
        let unknown = Conditions {
            worker_ids: vec![w("w3")],
            labels: Default::default(),
        };
        assert_eq!(chosen(&views, &unknown), None);
    }

    #[test]
    fn only_workers_serving_the_routine() {
        let views = [view(worker("b-only", &["b"], 4, &[]))];
        assert_eq!(chosen(&views, &Conditions::default()), None);
    }

    #[test]
    fn capacity_counts_reservations_and_registry_holdings_once() {
        let (mine, other) = (RunId::generate(), RunId::generate());
        let record = changed(&worker("w1", &["a"], 3, &[]), |record| {
            record.runs = vec![held(&mine), held(&other)];
        });
        let view = reserving(record, &[&mine]);
        assert_eq!(view.used(), 2, "the reserved run is also in the record");
        assert_eq!(view.free(), 1);
        let full = reserving(worker("w2", &["a"], 1, &[]), &[&RunId::generate()]);
        assert_eq!(full.free(), 0);
        assert!(choose([&full], &routine("a"), &Conditions::default()).is_none());
    }

    #[test]
    fn workers_not_ready_get_no_new_work() {
        for phase in [
            WorkerPhase::Initializing,
            WorkerPhase::Terminating,
            WorkerPhase::Lost,
            WorkerPhase::Offline,
        ] {
            let record = changed(&worker("w1", &["a"], 2, &[]), |record| {
                record.phase = phase;
            });
            assert_eq!(view(record).free(), 0, "{phase:?}");
        }
        let silent = changed(&worker("w1", &["a"], 2, &[]), |record| {
            record.unresponsive = true;
        });
        assert_eq!(view(silent).free(), 0);
    }

    #[test]
    fn a_changed_record_of_the_same_registration_keeps_the_runs() {
        let run = RunId::generate();
        let (after, gone) = renewed(&[&run], |record| record.capacity = 4);
        assert!(gone.is_empty());
        assert!(after.reserved.contains(&run));
        assert_eq!(after.record.capacity, 4);
    }

    #[test]
    fn a_lost_or_offline_worker_gives_back_every_run() {
        for (phase, status) in [
            (WorkerPhase::Lost, "LOST"),
            (WorkerPhase::Offline, "OFFLINE"),
        ] {
            let runs = [RunId::generate(), RunId::generate()];
            let (after, mut gone) = renewed(&[&runs[0], &runs[1]], |record| record.phase = phase);
            assert!(after.reserved.is_empty());
            gone.sort_by(|a, b| a.run.cmp(&b.run));
            let mut expected = runs.to_vec();
            expected.sort();
            assert_eq!(
                gone.iter().map(|gone| gone.run.clone()).collect::<Vec<_>>(),
                expected
            );
            for gone in &gone {
                assert_eq!(gone.worker, w("w1"));
                assert_eq!(gone.incarnation, 1);
                assert_eq!(gone.reason, format!("worker w1 is {status}"));
            }
        }
    }

    #[test]
    fn a_new_registration_takes_back_the_runs_of_the_old_one() {
        let run = RunId::generate();
        let (after, gone) = renewed(&[&run], |record| record.incarnation = 2);
        assert_eq!(
            gone,
            [Gone {
                run,
                worker: w("w1"),
                incarnation: 1,
                reason: "worker w1 registered again".to_owned(),
            }]
        );
        assert_eq!(after.placement().incarnation, 2);
        assert!(after.reserved.is_empty());
    }

    #[test]
    fn an_older_record_is_ignored() {
        let current = view(changed(&worker("w1", &["a"], 2, &[]), |record| {
            record.incarnation = 3;
        }));
        assert!(outdated(Some(&current), &worker("w1", &["a"], 2, &[])));
        assert!(!outdated(Some(&current), &current.record));
        assert!(!outdated(None, &current.record));
    }
}
