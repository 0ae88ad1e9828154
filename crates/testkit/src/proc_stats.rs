//! CPU time and memory of a process, read from `/proc`.

use std::time::Duration;

/// A process's resource use at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStats {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    /// Resident set size now, in bytes.
    pub rss_bytes: u64,
    /// Peak resident set size, in bytes.
    pub peak_rss_bytes: u64,
}

impl ProcStats {
    /// Reads the figures of process `pid`.
    pub fn of(pid: u32) -> std::io::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are 14th and 15th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |index: usize| {
            fields
                .get(index)
                .and_then(|field| field.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let clock_ticks = 100; // USER_HZ on Linux
        let cpu_ticks = ticks(11) + ticks(12);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |name: &str| {
            status
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Ok(Self {
            cpu: Duration::from_millis(cpu_ticks * 1000 / clock_ticks),
            rss_bytes: kib("VmRSS:"),
            peak_rss_bytes: kib("VmHWM:"),
        })
    }
}
