//! Which worker gets a run, by the routine's pickup strategy, and what a worker's new record
//! means for the runs placed on it (DESIGN §6.3 items 3 and 5): decisions on the leader's
//! view of the workers, free of I/O.
//! The [`Dispatcher`](super::dispatcher::Dispatcher) keeps the views and answers the actors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_protocol::{Conditions, Incarnation, RoutineId, RunId, WorkerId, WorkerRecord};

/// Where a run goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The worker.
    pub worker: WorkerId,
    /// Its incarnation when chosen.
    pub incarnation: Incarnation,
    /// True when the worker held nothing before this run: the registry is told at once,
    /// so that the worker shows WORKING however short the run.
    pub was_idle: bool,
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

/// The pass a run adds to a worker of capacity 1; one of capacity `c` advances by
/// `STRIDE / c`. At 2^64 the quotient is exact to one part in 2^32 for any capacity, and a
/// `u128` pass does not overflow in any lifetime.
const STRIDE: u128 = 1 << 64;

/// How long a run this leader released is remembered while the registry's record of the
/// worker does not show it: long enough for the release, or the hold it cancelled, to have
/// reached the registry (see [`holdings`](super::holdings)).
const REMEMBER_RELEASED: Duration = Duration::from_secs(2);

/// A worker as the leader sees it: its record from the registry, the runs this leader has
/// reserved a slot for on it, and its pass.
///
/// The leader's reservations are the truth about the worker's slots: the registry learns of
/// them in batches, later. The record's runs count only where the leader knows nothing of
/// them: runs a previous leader placed, until this one adopts them. Runs this leader
/// released are remembered for a while, so that a record that still shows them (the release
/// is on its way) does not count them as taken.
#[derive(Debug, Clone)]
pub(super) struct WorkerView {
    pub(super) record: Arc<WorkerRecord>,
    pub(super) reserved: HashSet<RunId>,
    /// Runs released here, and when.
    released: HashMap<RunId, Instant>,
    /// When `released` was last cleared of what the registry has caught up with.
    pruned: Option<Instant>,
    /// Stride scheduling's pass: it grows by `STRIDE / capacity` with each run placed here,
    /// and among equally loaded workers the lowest pass goes first. So equal workers take
    /// turns, and unequal ones get runs in proportion to their capacity even when idle.
    pub(super) pass: u128,
}

impl WorkerView {
    /// A worker with no reservations, starting at `pass`.
    pub(super) fn new(record: Arc<WorkerRecord>, pass: u128) -> Self {
        Self {
            record,
            reserved: HashSet::new(),
            released: HashMap::new(),
            pruned: None,
            pass,
        }
    }

    /// Slots taken: this leader's reservations, and the runs the registry says the worker
    /// holds besides (placed by a previous leader, and neither adopted nor released here).
    pub(super) fn used(&self) -> usize {
        let mut used = self.reserved.len();
        for held in &self.record.runs {
            if !self.reserved.contains(&held.run_id) && !self.released.contains_key(&held.run_id) {
                used += 1;
            }
        }
        used
    }

    /// `run` holds a slot here (placed or adopted by this leader).
    pub(super) fn reserve(&mut self, run: &RunId) {
        self.released.remove(run);
        self.reserved.insert(run.clone());
    }

    /// `run` no longer holds its slot here, as of `now`.
    pub(super) fn release(&mut self, run: &RunId, now: Instant) {
        if self.reserved.remove(run) {
            self.released.insert(run.clone(), now);
        }
    }

    /// Takes in a newer record of the same registration. Released runs it does not show
    /// are forgotten once [`REMEMBER_RELEASED`] has passed (at most once a second, so that
    /// a busy worker's records cost little); those it still shows are kept, since to the
    /// leader they are free.
    fn update(&mut self, record: Arc<WorkerRecord>, now: Instant) {
        self.record = record;
        let due = self
            .pruned
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
        if due && !self.released.is_empty() {
            let shown: HashSet<&RunId> = self.record.runs.iter().map(|run| &run.run_id).collect();
            self.released.retain(|run, at| {
                shown.contains(run) || now.saturating_duration_since(*at) < REMEMBER_RELEASED
            });
            self.pruned = Some(now);
        }
    }

    /// Slots free for new runs: none unless the worker is ready and responsive.
    pub(super) fn free(&self) -> usize {
        self.load().1
    }

    /// Slots taken and free, counted once.
    fn load(&self) -> (usize, usize) {
        let used = self.used();
        if !self.record.accepts_work() {
            return (used, 0);
        }
        (used, (self.record.capacity as usize).saturating_sub(used))
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
            was_idle: self.used() == 0,
        }
    }

    /// A run was placed here: the worker moves back in the line of equally loaded ones.
    pub(super) fn advance(&mut self) {
        let capacity = u128::from(self.record.capacity.max(1));
        self.pass = self.pass.saturating_add(STRIDE / capacity);
    }

    fn id(&self) -> &WorkerId {
        &self.record.worker_id
    }
}

/// How to choose for one routine: its strategy, with what that strategy remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pick<'a> {
    /// The lowest share of capacity in use (`used / capacity`, compared exactly), then the
    /// lowest pass, then the lowest workerID.
    LeastLoaded,
    /// The first worker in workerID order after `last`, the one chosen last for the
    /// routine, wrapping around; load plays no part.
    RoundRobin {
        /// The worker chosen last, if any.
        last: Option<&'a WorkerId>,
    },
    /// The lowest workerID.
    FirstFit,
}

impl Pick<'_> {
    /// True when `view` (with `used` slots taken) goes before `best` (with `best_used`).
    fn before(self, view: &WorkerView, used: usize, best: &WorkerView, best_used: usize) -> bool {
        match self {
            Pick::LeastLoaded => {
                // used / capacity < best_used / best_capacity, without division.
                let share = used as u128 * u128::from(best.record.capacity);
                let best_share = best_used as u128 * u128::from(view.record.capacity);
                (share, view.pass, view.id()) < (best_share, best.pass, best.id())
            }
            Pick::RoundRobin { last } => {
                // Workers after `last` come first, in order; then the rest, from the lowest.
                let wrapped = |view: &WorkerView| last.is_some_and(|last| view.id() <= last);
                (wrapped(view), view.id()) < (wrapped(best), best.id())
            }
            Pick::FirstFit => view.id() < best.id(),
        }
    }
}

/// The worker a run of `routine` goes to: one that matches and has a free slot, as `pick`
/// prefers. One pass over the candidates, allocating nothing.
pub(super) fn choose<'a>(
    candidates: impl IntoIterator<Item = &'a WorkerView>,
    routine: &RoutineId,
    conditions: &Conditions,
    pick: Pick<'_>,
) -> Option<&'a WorkerView> {
    let mut best: Option<(&WorkerView, usize)> = None;
    for view in candidates {
        let (used, free) = view.load();
        if free == 0 || !view.matches(routine, conditions) {
            continue;
        }
        let better = match best {
            None => true,
            Some((current, current_used)) => pick.before(view, used, current, current_used),
        };
        if better {
            best = Some((view, used));
        }
    }
    best.map(|(view, _)| view)
}

/// True when `record` is older than the view already held, and must be ignored.
pub(super) fn outdated(known: Option<&WorkerView>, record: &WorkerRecord) -> bool {
    known.is_some_and(|known| known.record.incarnation > record.incarnation)
}

/// The view after a new record of a worker, and the reserved runs it ends: all of them
/// when the worker is LOST or OFFLINE or registered again, none when it merely changed.
/// A worker new to the leader, or registered again, starts at the pass `start` gives, so
/// that it neither floods nor starves; one that merely changed keeps its pass.
pub(super) fn renew(
    previous: Option<WorkerView>,
    record: Arc<WorkerRecord>,
    start: impl FnOnce(&WorkerRecord) -> u128,
    now: Instant,
) -> (WorkerView, Vec<Gone>) {
    let Some(mut previous) = previous else {
        let pass = start(&record);
        return (WorkerView::new(record, pass), Vec::new());
    };
    if previous.record.incarnation == record.incarnation && record.is_live() {
        previous.update(record, now);
        return (previous, Vec::new());
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
    let pass = start(&record);
    (WorkerView::new(record, pass), gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{changed, routine, w, worker};
    use drover_protocol::{HeldRun, Timestamp, WorkerPhase};

    fn view(record: Arc<WorkerRecord>) -> WorkerView {
        WorkerView::new(record, 0)
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
        renew(Some(before), record, |_| 0, Instant::now())
    }

    fn chosen(views: &[WorkerView], conditions: &Conditions) -> Option<WorkerId> {
        picked(views, conditions, Pick::LeastLoaded)
    }

    fn picked(views: &[WorkerView], conditions: &Conditions, pick: Pick<'_>) -> Option<WorkerId> {
        choose(views, &routine("a"), conditions, pick).map(|view| view.record.worker_id.clone())
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

    fn loaded(id: &str, capacity: u32, used: usize, pass: u128) -> WorkerView {
        let mut view = WorkerView::new(worker(id, &["a"], capacity, &[]), pass);
        view.reserved
            .extend(std::iter::repeat_with(RunId::generate).take(used));
        view
    }

    #[test]
    fn least_loaded_prefers_the_lowest_share_of_capacity_in_use() {
        let views = [
            loaded("w1", 8, 3, 0),
            loaded("w2", 2, 1, 0),
            loaded("w3", 4, 1, 9),
        ];
        assert_eq!(
            chosen(&views, &Conditions::default()),
            Some(w("w3")),
            "1/4 before 3/8 and 1/2, whatever the passes"
        );
        // 1/3 and 2/6 are equal (no rounding): the lower pass wins, then the lower ID.
        let equal = [loaded("w1", 3, 1, 5), loaded("w2", 6, 2, 3)];
        assert_eq!(chosen(&equal, &Conditions::default()), Some(w("w2")));
        let same_pass = [loaded("w2", 6, 2, 3), loaded("w1", 3, 1, 3)];
        assert_eq!(chosen(&same_pass, &Conditions::default()), Some(w("w1")));
        // A bigger worker with more runs can still be the less loaded one.
        let big = [loaded("small", 2, 1, 0), loaded("big", 16, 4, 0)];
        assert_eq!(chosen(&big, &Conditions::default()), Some(w("big")));
    }

    #[test]
    fn a_placed_run_advances_the_pass_by_stride_over_capacity() {
        let mut view = loaded("w1", 4, 0, 7);
        view.advance();
        assert_eq!(view.pass, 7 + STRIDE / 4);
        let mut huge = loaded("w2", u32::MAX, 0, 0);
        huge.advance();
        assert!(huge.pass > 0, "every capacity advances");
    }

    #[test]
    fn round_robin_goes_on_after_the_last_worker_whatever_the_load() {
        let views = [
            loaded("w3", 4, 0, 0),
            loaded("w1", 4, 0, 0),
            loaded("w2", 4, 3, 0),
        ];
        let none = Conditions::default();
        let after = |last: Option<&str>| {
            let last = last.map(w);
            picked(
                &views,
                &none,
                Pick::RoundRobin {
                    last: last.as_ref(),
                },
            )
        };
        assert_eq!(after(None), Some(w("w1")));
        assert_eq!(after(Some("w1")), Some(w("w2")), "busier, but next");
        assert_eq!(after(Some("w2")), Some(w("w3")));
        assert_eq!(after(Some("w3")), Some(w("w1")), "wraps around");
        assert_eq!(after(Some("w15")), Some(w("w2")), "a worker gone since");
        let full = [
            loaded("w1", 1, 0, 0),
            loaded("w2", 1, 1, 0),
            loaded("w3", 1, 0, 0),
        ];
        let last = w("w1");
        assert_eq!(
            picked(&full, &none, Pick::RoundRobin { last: Some(&last) }),
            Some(w("w3")),
            "a full worker is skipped"
        );
    }

    #[test]
    fn first_fit_packs_and_overflows_in_workerid_order() {
        let none = Conditions::default();
        let views = [loaded("w2", 4, 0, 0), loaded("w1", 4, 3, 9)];
        assert_eq!(picked(&views, &none, Pick::FirstFit), Some(w("w1")));
        let full = [
            loaded("w3", 4, 0, 0),
            loaded("w2", 4, 2, 0),
            loaded("w1", 4, 4, 0),
        ];
        assert_eq!(picked(&full, &none, Pick::FirstFit), Some(w("w2")));
    }

    #[test]
    fn every_strategy_keeps_to_the_conditions() {
        let views = [
            view(worker("w1", &["a"], 4, &[("gpu", "false")])),
            view(worker("w2", &["a"], 4, &[("gpu", "true")])),
        ];
        let last = w("w2");
        for pick in [
            Pick::LeastLoaded,
            Pick::FirstFit,
            Pick::RoundRobin { last: None },
            Pick::RoundRobin { last: Some(&last) },
        ] {
            assert_eq!(
                picked(&views, &labels(&[("gpu", "true")]), pick),
                Some(w("w2"))
            );
            assert_eq!(picked(&views, &labels(&[("gpu", "x")]), pick), None);
        }
    }

    #[test]
    fn a_new_or_registered_again_worker_starts_where_it_is_told() {
        let (fresh, _) = renew(None, worker("w1", &["a"], 2, &[]), |_| 42, Instant::now());
        assert_eq!(fresh.pass, 42);
        let mut before = view(worker("w1", &["a"], 2, &[]));
        before.pass = 7;
        let same = changed(&before.record, |record| record.capacity = 4);
        let (kept, _) = renew(Some(before.clone()), same, |_| 42, Instant::now());
        assert_eq!(kept.pass, 7, "the same registration keeps its pass");
        let again = changed(&before.record, |record| record.incarnation = 2);
        let (renewed, _) = renew(Some(before), again, |_| 42, Instant::now());
        assert_eq!(renewed.pass, 42);
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
    fn among_equal_free_slots_the_least_busy_then_the_lowest_pass() {
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
        assert_eq!(
            chosen(&ties, &Conditions::default()),
            Some(w("w1")),
            "equal passes: the lowest workerID"
        );
        let mut behind = view(worker("w1", &["a"], 1, &[]));
        behind.advance();
        let ties = [view(worker("w2", &["a"], 1, &[])), behind];
        assert_eq!(
            chosen(&ties, &Conditions::default()),
            Some(w("w2")),
            "w1 had its turn"
        );
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
        assert!(choose(
            [&full],
            &routine("a"),
            &Conditions::default(),
            Pick::LeastLoaded
        )
        .is_none());
    }

    #[test]
    fn a_released_run_the_record_still_shows_is_free_until_forgotten() {
        let (mine, earlier) = (RunId::generate(), RunId::generate());
        let start = Instant::now();
        let mut view = reserving(worker("w1", &["a"], 2, &[]), &[&mine]);
        // The registry has the hold of `mine` and, from a previous leader, `earlier`.
        let shows_both = changed(&view.record, |record| {
            record.runs = vec![held(&mine), held(&earlier)];
        });
        view.update(shows_both.clone(), start);
        assert_eq!(view.used(), 2);
        view.release(&mine, start);
        assert_eq!(
            view.used(),
            1,
            "released here: free although the record shows it"
        );
        assert_eq!(view.free(), 1);
        // Still shown after the memory: the release never landed; to the leader it is free.
        view.update(shows_both, start + REMEMBER_RELEASED * 2);
        assert_eq!(view.used(), 1);
        // Once the record no longer shows it, it is forgotten after the memory.
        let shows_earlier = changed(&view.record, |record| record.runs = vec![held(&earlier)]);
        view.update(Arc::clone(&shows_earlier), start + REMEMBER_RELEASED * 4);
        assert!(view.released.is_empty());
        assert_eq!(view.used(), 1, "the previous leader's run still counts");
        // A run placed again here is the leader's again.
        view.release(&mine, start);
        view.reserve(&mine);
        assert_eq!(view.used(), 2);
    }

    #[test]
    fn released_runs_are_pruned_at_most_once_a_second() {
        let run = RunId::generate();
        let start = Instant::now();
        let mut view = reserving(worker("w1", &["a"], 2, &[]), &[&run]);
        view.update(Arc::clone(&view.record), start);
        view.release(&run, start);
        let record = Arc::clone(&view.record);
        view.update(Arc::clone(&record), start + REMEMBER_RELEASED / 4);
        assert_eq!(view.released.len(), 1, "not old enough");
        view.update(
            Arc::clone(&record),
            start + REMEMBER_RELEASED + Duration::from_millis(1),
        );
        assert!(view.released.is_empty());
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
