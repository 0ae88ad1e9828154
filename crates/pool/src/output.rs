//! What becomes of a process's output lines, with no I/O: the log-collector refuses lines
//! from a workerID the registry has no record of, so a process's lines are held until the
//! pool has seen it registered, then shipped in order; the lines of a process that ended
//! before registering are dropped (the pool has printed them already).

use std::collections::VecDeque;

use drover_protocol::{LogLevel, LogLine, Timestamp};

/// At most this many lines are held for one process; beyond it the oldest go.
pub const HELD_LINES: usize = 1000;
/// At most this many bytes of messages are held for one process; beyond it the oldest go.
pub const HELD_BYTES: usize = 256 * 1024;

/// Whether a process's lines may be shipped, as the pool decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Not registered yet: hold its lines.
    Hold,
    /// Registered: ship what was held, then every line as it comes.
    Ship,
    /// Ended without registering: drop what was held and whatever still comes.
    Discard,
}

/// One process's lines on their way to Drover.
#[derive(Debug)]
pub struct Outbox {
    gate: Gate,
    held: VecDeque<LogLine>,
    held_bytes: usize,
    dropped: u64,
    last_dropped_at: Option<Timestamp>,
    max_lines: usize,
    max_bytes: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::with_limits(HELD_LINES, HELD_BYTES)
    }
}

impl Outbox {
    /// An outbox that holds at most `max_lines` lines and `max_bytes` bytes of messages.
    pub fn with_limits(max_lines: usize, max_bytes: usize) -> Self {
        Self {
            gate: Gate::Hold,
            held: VecDeque::new(),
            held_bytes: 0,
            dropped: 0,
            last_dropped_at: None,
            max_lines,
            max_bytes,
        }
    }

    /// True once the pool has decided (shipped or discarded): nothing is held any more.
    pub fn decided(&self) -> bool {
        self.gate != Gate::Hold
    }

    /// Lines held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A line the process wrote: the lines to ship now.
    pub fn line(&mut self, line: LogLine) -> Vec<LogLine> {
        match self.gate {
            Gate::Ship => vec![line],
            Gate::Discard => Vec::new(),
            Gate::Hold => {
                self.hold(line);
                Vec::new()
            }
        }
    }

    /// The pool's decision: the lines to ship now. Only the first decision counts: a process
    /// seen registered stays shipped (its dying words included).
    pub fn gate(&mut self, gate: Gate) -> Vec<LogLine> {
        if self.decided() || gate == Gate::Hold {
            return Vec::new();
        }
        self.gate = gate;
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        if gate == Gate::Discard {
            return Vec::new();
        }
        let notice = (self.dropped > 0).then(|| self.dropped_notice());
        notice.into_iter().chain(held).collect()
    }

    fn hold(&mut self, line: LogLine) {
        self.held_bytes += line.message.len();
        self.held.push_back(line);
        while self.held.len() > self.max_lines || self.held_bytes > self.max_bytes {
            let Some(oldest) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= oldest.message.len();
            self.dropped += 1;
            self.last_dropped_at = oldest.timestamp.or(self.last_dropped_at);
        }
    }

    /// Where the dropped lines were: before the first one kept, at the time of the last one.
    fn dropped_notice(&self) -> LogLine {
        let mut fields = serde_json::Map::new();
        fields.insert("dropped".to_owned(), self.dropped.into());
        LogLine {
            level: LogLevel::Warn,
            message: format!(
                "{} earlier output lines dropped: at most {} lines or {} bytes are held until the process registers",
                self.dropped, self.max_lines, self.max_bytes
            ),
            run_id: None,
            fields: Some(fields),
            timestamp: self.last_dropped_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: &str, at: i64) -> LogLine {
        LogLine {
            level: LogLevel::Info,
            message: message.to_owned(),
            run_id: None,
            fields: None,
            timestamp: Some(Timestamp::from_millis(at)),
        }
    }

    fn messages(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|line| line.message.as_str()).collect()
    }

    #[test]
    fn lines_are_held_until_the_process_registers_then_shipped_in_order() {
        let mut outbox = Outbox::default();
        assert!(outbox.line(line("banner", 1)).is_empty());
        assert!(outbox.line(line("connecting", 2)).is_empty());
        assert!(outbox.gate(Gate::Hold).is_empty());
        assert_eq!(outbox.held(), 2);
        let shipped = outbox.gate(Gate::Ship);
        assert_eq!(messages(&shipped), ["banner", "connecting"]);
        assert_eq!(
            shipped[0],
            line("banner", 1),
            "held lines are shipped unchanged"
        );
        assert_eq!(messages(&outbox.line(line("ready", 3))), ["ready"]);
        assert_eq!(outbox.held(), 0);
    }

    #[test]
    fn a_process_that_ends_unregistered_ships_nothing() {
        let mut outbox = Outbox::default();
        outbox.line(line("banner", 1));
        outbox.line(line("traceback", 2));
        assert!(outbox.gate(Gate::Discard).is_empty());
        assert_eq!(outbox.held(), 0);
        assert!(outbox.line(line("last words", 3)).is_empty());
        // Too late: the decision stands.
        assert!(outbox.gate(Gate::Ship).is_empty());
        assert!(outbox.line(line("more", 4)).is_empty());
    }

    #[test]
    fn a_registered_process_stays_shipped() {
        let mut outbox = Outbox::default();
        assert!(outbox.gate(Gate::Ship).is_empty());
        assert!(outbox.gate(Gate::Discard).is_empty());
        assert_eq!(messages(&outbox.line(line("dying", 1))), ["dying"]);
    }

    #[test]
    fn beyond_the_line_limit_the_oldest_go_and_one_line_says_how_many() {
        let mut outbox = Outbox::with_limits(3, 1024);
        for at in 1..=5 {
            outbox.line(line(&format!("line {at}"), at));
        }
        assert_eq!(outbox.held(), 3);
        let shipped = outbox.gate(Gate::Ship);
        assert_eq!(shipped.len(), 4);
        let notice = &shipped[0];
        assert_eq!(notice.level, LogLevel::Warn);
        assert!(
            notice.message.starts_with("2 earlier output lines dropped"),
            "{}",
            notice.message
        );
        let fields = notice.fields.as_ref().expect("the notice has fields");
        assert_eq!(fields["dropped"], 2);
        assert_eq!(notice.timestamp, Some(Timestamp::from_millis(2)));
        assert_eq!(messages(&shipped[1..]), ["line 3", "line 4", "line 5"]);
    }

    #[test]
    fn beyond_the_byte_limit_the_oldest_go() {
        let mut outbox = Outbox::with_limits(1000, 10);
        outbox.line(line("aaaa", 1));
        outbox.line(line("bbbb", 2));
        assert_eq!(outbox.held(), 2);
        // 12 bytes: the oldest goes, 8 remain.
        outbox.line(line("cccc", 3));
        assert_eq!(outbox.held(), 2);
        // One line alone over the limit leaves nothing held.
        outbox.line(line("dddddddddddd", 4));
        assert_eq!(outbox.held(), 0);
        let shipped = outbox.gate(Gate::Ship);
        assert_eq!(messages(&shipped).len(), 1);
        assert!(shipped[0]
            .message
            .starts_with("4 earlier output lines dropped"));
        assert_eq!(shipped[0].timestamp, Some(Timestamp::from_millis(4)));
    }

    #[test]
    fn nothing_dropped_means_no_notice() {
        let mut outbox = Outbox::with_limits(2, 1024);
        outbox.line(line("one", 1));
        outbox.line(line("two", 2));
        assert_eq!(messages(&outbox.gate(Gate::Ship)), ["one", "two"]);
    }
}
