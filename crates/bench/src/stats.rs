//! Figures of one measurement: throughput and latency percentiles.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
}

impl Latency {
    /// Percentiles of `samples` (sorted here).
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |p: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
            samples[index].as_secs_f64() * 1000.0
        };
        Self {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
        }
    }
}

/// One measurement at one concurrency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Jobs or runs kept in flight.
    pub in_flight: usize,
    /// How many were measured.
    pub count: usize,
    /// Wall time of the measurement, in seconds.
    pub seconds: f64,
    /// Completed per second.
    pub per_second: f64,
    /// Submit to completion (the whole cycle).
    pub latency: Latency,
}

impl Throughput {
    /// Figures from per-item latencies and the wall time they took.
    pub fn of(in_flight: usize, mut latencies: Vec<Duration>, wall: Duration) -> Self {
        let count = latencies.len();
        Self {
            in_flight,
            count,
            seconds: wall.as_secs_f64(),
            per_second: count as f64 / wall.as_secs_f64().max(1e-9),
            latency: Latency::of(&mut latencies),
        }
    }
}

/// A backlog submitted at once and drained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    /// Jobs or runs in the backlog (those that ended).
    pub count: usize,
    /// From the first submission until the last was accepted, in seconds.
    pub submit_seconds: f64,
    /// From the first submission until every one had ended, in seconds.
    pub seconds: f64,
    /// Ended per second over `seconds`.
    pub per_second: f64,
}

impl Drain {
    /// Figures for `count` ended, the submissions taking `submitted` and the whole `wall`.
    pub fn of(count: usize, submitted: Duration, wall: Duration) -> Self {
        Self {
            count,
            submit_seconds: submitted.as_secs_f64(),
            seconds: wall.as_secs_f64(),
            per_second: count as f64 / wall.as_secs_f64().max(1e-9),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut samples: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let latency = Latency::of(&mut samples);
        assert!((latency.p50_ms - 500.0).abs() <= 1.0);
        assert!((latency.p99_ms - 990.0).abs() <= 1.0);
        assert!((latency.p999_ms - 999.0).abs() <= 1.0);
        let figures = Throughput::of(
            4,
            vec![Duration::from_millis(1); 100],
            Duration::from_secs(2),
        );
        assert_eq!(figures.per_second, 50.0);
    }
}
