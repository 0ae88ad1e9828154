//! Where a `v1.logs.query` page starts, and the `nextCursor` that continues after it.
//!
//! A cursor is opaque to callers. It is either the next `DROVER_LOGS` sequence to read, as
//! decimal (`"1734"`), or, while a `since` query has found nothing yet, that time in Unix
//! milliseconds after a `t` (`"t1763817420123"`). Stream sequences only grow and every
//! replica holds a prefix of the stream, so resuming right after the last record examined
//! never skips a record and never returns one twice.

use drover_protocol::{LogRecord, Timestamp};

/// A decoded `cursor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Continue at this stream sequence.
    Seq(u64),
    /// Continue with the first record stored at or after this time.
    Time(Timestamp),
}

impl Cursor {
    /// Reads a cursor this service handed out; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let digits = |text: &str| {
            !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit())
        };
        if let Some(millis) = text.strip_prefix('t') {
            if !digits(millis) {
                return None;
            }
            return millis
                .parse()
                .ok()
                .map(Timestamp::from_millis)
                .map(Cursor::Time);
        }
        if !digits(text) {
            return None;
        }
        text.parse().ok().filter(|&seq| seq > 0).map(Cursor::Seq)
    }

    /// The wire form, as [`Cursor::parse`] reads it.
    pub fn encode(self) -> String {
        match self {
            Cursor::Seq(seq) => seq.to_string(),
            Cursor::Time(time) => format!("t{}", time.as_millis()),
        }
    }

    /// Where a query starts: after its cursor, and never before `since`.
    pub fn start(cursor: Option<Cursor>, since: Option<Timestamp>) -> Cursor {
        match (cursor, since) {
            (Some(Cursor::Seq(seq)), _) => Cursor::Seq(seq),
            (Some(Cursor::Time(time)), since) => Cursor::Time(since.map_or(time, |s| s.max(time))),
            (None, Some(since)) => Cursor::Time(since),
            (None, None) => Cursor::Seq(1),
        }
    }
}

/// A stored message as read back: its sequence, stream time and body.
#[derive(Debug, Clone)]
pub struct Scanned {
    /// Sequence in `DROVER_LOGS`.
    pub seq: u64,
    /// When the stream stored it, in Unix nanoseconds.
    pub time_nanos: i128,
    /// The stored record.
    pub payload: bytes::Bytes,
}

/// A page of records and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The records, oldest first, with `seq` filled in.
    pub records: Vec<LogRecord>,
    /// Where the next page starts.
    pub next: Cursor,
    /// Stored messages that were not log records, skipped.
    pub unreadable: u64,
}

/// Bytes a record adds to a reply beyond its stored size (its `seq` and a comma).
const RECORD_OVERHEAD: usize = 24;

/// Builds the page from what was read from `start`: drops records older than `since` and
/// stops before the records would exceed `budget` bytes (always keeping at least one).
pub fn assemble(
    scanned: Vec<Scanned>,
    start: Cursor,
    since: Option<Timestamp>,
    budget: usize,
) -> Page {
    let since_nanos = since.map(|since| i128::from(since.as_millis()) * 1_000_000);
    let mut page = Page {
        records: Vec::with_capacity(scanned.len()),
        next: start,
        unreadable: 0,
    };
    let mut used = 0;
    for message in scanned {
        if since_nanos.is_some_and(|since| message.time_nanos < since) {
            page.next = Cursor::Seq(message.seq + 1);
            continue;
        }
        let size = message.payload.len() + RECORD_OVERHEAD;
        if !page.records.is_empty() && used + size > budget {
            break;
        }
        match serde_json::from_slice::<LogRecord>(&message.payload) {
            Ok(mut record) => {
                record.seq = message.seq;
                used += size;
                page.records.push(record);
            }
            Err(_) => page.unreadable += 1,
        }
        page.next = Cursor::Seq(message.seq + 1);
    }
    page
}

#[cfg(test)]
mod tests {
    use drover_protocol::{LogLevel, WorkerId};

    use super::*;

    fn stored(seq: u64, time_ms: i64) -> Scanned {
        let record = LogRecord {
            seq: 0,
            worker_id: WorkerId::parse("w1").expect("valid worker id"),
            run_id: None,
            routine_id: None,
            attempt: None,
            trace_id: None,
            level: LogLevel::Info,
            message: format!("line {seq}"),
            fields: Default::default(),
            timestamp: Timestamp::from_millis(time_ms),
            received_at: Timestamp::from_millis(time_ms),
        };
        Scanned {
            seq,
            time_nanos: i128::from(time_ms) * 1_000_000,
            payload: serde_json::to_vec(&record).expect("serialises").into(),
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_strangers() {
        for cursor in [
            Cursor::Seq(1),
            Cursor::Seq(u64::MAX),
            Cursor::Time(Timestamp::from_millis(0)),
        ] {
            assert_eq!(Cursor::parse(&cursor.encode()), Some(cursor));
        }
        for text in [
            "",
            "0",
            "-1",
            "+3",
            " 3",
            "3 ",
            "abc",
            "t",
            "t-5",
            "1.5",
            "99999999999999999999",
        ] {
            assert_eq!(Cursor::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn start_prefers_the_cursor_and_never_goes_before_since() {
        let since = Timestamp::from_millis(5_000);
        assert_eq!(Cursor::start(None, None), Cursor::Seq(1));
        assert_eq!(Cursor::start(None, Some(since)), Cursor::Time(since));
        assert_eq!(
            Cursor::start(Some(Cursor::Seq(7)), Some(since)),
            Cursor::Seq(7)
        );
        let earlier = Cursor::Time(Timestamp::from_millis(1_000));
        assert_eq!(
            Cursor::start(Some(earlier), Some(since)),
            Cursor::Time(since)
        );
    }

    #[test]
    fn the_next_page_starts_after_the_last_record_examined() {
        let page = assemble(
            vec![stored(3, 1), stored(8, 2)],
            Cursor::Seq(1),
            None,
            1 << 20,
        );
        assert_eq!(
            page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [3, 8]
        );
        assert_eq!(page.next, Cursor::Seq(9));
    }

    #[test]
    fn an_empty_page_keeps_the_cursor() {
        let start = Cursor::Time(Timestamp::from_millis(9));
        let page = assemble(Vec::new(), start, None, 1 << 20);
        assert!(page.records.is_empty());
        assert_eq!(page.next, start);
    }

    #[test]
    fn records_before_since_are_dropped_but_passed() {
        let since = Timestamp::from_millis(10);
        let page = assemble(
            vec![stored(4, 9), stored(5, 10)],
            Cursor::Seq(4),
            Some(since),
            1 << 20,
        );
        assert_eq!(page.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [5]);
        assert_eq!(page.next, Cursor::Seq(6));
        let none = assemble(vec![stored(4, 9)], Cursor::Seq(4), Some(since), 1 << 20);
        assert!(none.records.is_empty());
        assert_eq!(none.next, Cursor::Seq(5));
    }

    #[test]
    fn the_byte_budget_cuts_the_page_before_a_record() {
        let one = stored(1, 1).payload.len() + RECORD_OVERHEAD;
        let page = assemble(
            vec![stored(1, 1), stored(2, 1), stored(3, 1)],
            Cursor::Seq(1),
            None,
            one * 2,
        );
        assert_eq!(page.records.len(), 2);
        assert_eq!(page.next, Cursor::Seq(3));
        let tiny = assemble(vec![stored(1, 1), stored(2, 1)], Cursor::Seq(1), None, 1);
        assert_eq!(tiny.records.len(), 1, "one record always fits");
        assert_eq!(tiny.next, Cursor::Seq(2));
    }

    #[test]
    fn unreadable_messages_are_skipped() {
        let junk = Scanned {
            seq: 2,
            time_nanos: 0,
            payload: bytes::Bytes::from_static(b"nope"),
        };
        let page = assemble(
            vec![stored(1, 1), junk, stored(3, 1)],
            Cursor::Seq(1),
            None,
            1 << 20,
        );
        assert_eq!(
            page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(page.unreadable, 1);
        assert_eq!(page.next, Cursor::Seq(4));
    }
}
