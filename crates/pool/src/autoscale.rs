//! Sizing a group from the work waiting for it, with no I/O: up at once, down after a
//! cooldown.

use std::time::{Duration, Instant};

/// What the autoscaler saw at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Runs of the group's routines not finished: queued or in progress.
    pub unfinished: u64,
    /// Runs one process takes at once.
    pub per_process: u32,
}

/// One group's autoscaler: remembers since when the group has had more processes than work.
#[derive(Debug, Clone, Default)]
pub struct Autoscaler {
    below_since: Option<Instant>,
}

impl Autoscaler {
    /// The new target, if it should change: the processes the unfinished runs need, within
    /// `min` and `max`; raised at once, lowered only after `cooldown` of wanting fewer.
    pub fn decide(
        &mut self,
        now: Instant,
        sample: Sample,
        (min, max): (u32, u32),
        target: u32,
        cooldown: Duration,
    ) -> Option<u32> {
        let per_process = u64::from(sample.per_process.max(1));
        let needed = sample.unfinished.div_ceil(per_process);
        let wanted = needed.clamp(u64::from(min), u64::from(max)) as u32;
        if wanted >= target {
            self.below_since = None;
            return (wanted > target).then_some(wanted);
        }
        let since = *self.below_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= cooldown {
            self.below_since = None;
            return Some(wanted);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(30);

    fn sample(unfinished: u64, per_process: u32) -> Sample {
        Sample {
            unfinished,
            per_process,
        }
    }

    #[test]
    fn a_backlog_raises_the_target_at_once_within_max() {
        let now = Instant::now();
        let mut auto = Autoscaler::default();
        assert_eq!(
            auto.decide(now, sample(1000, 4), (1, 8), 1, COOLDOWN),
            Some(8)
        );
        assert_eq!(auto.decide(now, sample(9, 4), (1, 8), 1, COOLDOWN), Some(3));
        assert_eq!(auto.decide(now, sample(8, 4), (1, 8), 2, COOLDOWN), None);
    }

    #[test]
    fn it_shrinks_only_after_a_whole_cooldown_of_less_work() {
        let start = Instant::now();
        let mut auto = Autoscaler::default();
        assert_eq!(auto.decide(start, sample(0, 4), (1, 8), 8, COOLDOWN), None);
        let almost = start + COOLDOWN - Duration::from_millis(1);
        assert_eq!(auto.decide(almost, sample(0, 4), (1, 8), 8, COOLDOWN), None);
        assert_eq!(
            auto.decide(start + COOLDOWN, sample(0, 4), (1, 8), 8, COOLDOWN),
            Some(1)
        );
    }

    #[test]
    fn work_in_the_cooldown_starts_it_again() {
        let start = Instant::now();
        let mut auto = Autoscaler::default();
        assert_eq!(auto.decide(start, sample(0, 1), (0, 4), 4, COOLDOWN), None);
        let busy = start + Duration::from_secs(20);
        assert_eq!(auto.decide(busy, sample(4, 1), (0, 4), 4, COOLDOWN), None);
        let later = start + COOLDOWN + Duration::from_secs(1);
        assert_eq!(auto.decide(later, sample(0, 1), (0, 4), 4, COOLDOWN), None);
        assert_eq!(
            auto.decide(later + COOLDOWN, sample(0, 1), (0, 4), 4, COOLDOWN),
            Some(0),
            "scale to zero when min is 0"
        );
    }
}
