//! W3C trace context as carried in NATS headers (DESIGN §3, §8). Never in payloads.

/// Header carrying the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// A parsed `traceparent`: `00-<trace-id>-<parent-id>-<flags>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub parent_id: String,
    /// Trace flags, e.g. `01` when sampled.
    pub flags: String,
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TraceParent {
    /// Parses a version-00 `traceparent`; rejects all-zero IDs as the W3C spec requires.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        if !is_hex(trace_id, 32) || !is_hex(parent_id, 16) || !is_hex(flags, 2) {
            return None;
        }
        if trace_id.bytes().all(|b| b == b'0') || parent_id.bytes().all(|b| b == b'0') {
            return None;
        }
        Some(Self {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: flags.to_owned(),
        })
    }

    /// A new sampled root context with random IDs, for runs submitted without one.
    pub fn new_root() -> Self {
        let trace = uuid::Uuid::new_v4().simple().to_string();
        let span = uuid::Uuid::new_v4().simple().to_string();
        Self {
            trace_id: trace,
            parent_id: span[..16].to_owned(),
            flags: "01".to_owned(),
        }
    }
}

impl TraceParent {
    /// The same trace and flags with `span_id` (16 hex digits) in place of the parent.
    pub fn with_span(&self, span_id: String) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            parent_id: span_id,
            flags: self.flags.clone(),
        }
    }

    /// The span of a run as the scheduler reports it (`drover.run`): in the trace of
    /// `submitted_in` (the context the run was accepted in), with a span id that every
    /// process derives alike from the runID, so that whichever scheduler ends the run ends
    /// the same span.
    pub fn run_span(submitted_in: &Self, run_id: &str) -> Self {
        submitted_in.with_span(derived_span_id(&["run", run_id]))
    }

    /// The span of one attempt of a run (`drover.attempt`), derived like [`Self::run_span`]:
    /// the context sent with the attempt's assignment, so that the worker's execution span
    /// is its child, and the parent the log-collector, registry and heartbeat-monitor put
    /// what they record about the attempt under.
    pub fn attempt_span(submitted_in: &Self, run_id: &str, attempt: u64) -> Self {
        submitted_in.with_span(derived_span_id(&["attempt", run_id, &attempt.to_string()]))
    }
}

/// A span id (16 lowercase hex digits, never all zero) derived from `parts` alone: the
/// first 8 bytes of SHA-256 over the parts, each followed by a zero byte.
///
/// Spans that outlive a process (a run's, an attempt's) get their ids this way, so that a
/// scheduler taking over after a leader change, or another service, names the same span.
pub fn derived_span_id(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    if id == [0u8; 8] {
        id[7] = 1;
    }
    id.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{}-{}-{}", self.trace_id, self.parent_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn derived_spans_are_stable_distinct_and_valid() {
        let submitted =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let run = TraceParent::run_span(&submitted, "r-1");
        assert_eq!(run, TraceParent::run_span(&submitted, "r-1"));
        assert_eq!(run.trace_id, submitted.trace_id);
        assert_eq!(run.flags, submitted.flags);
        // Every service derives the same value: pinned (python3: sha256(b"run\\0r-1\\0")).
        assert_eq!(run.parent_id, derived_span_id(&["run", "r-1"]));
        assert_eq!(derived_span_id(&["run", "r-1"]), "01c5d7ad4ca900f7");
        let first = TraceParent::attempt_span(&submitted, "r-1", 1);
        let second = TraceParent::attempt_span(&submitted, "r-1", 2);
        assert_ne!(first.parent_id, second.parent_id);
        assert_ne!(first.parent_id, run.parent_id);
        assert_ne!(
            run.parent_id,
            TraceParent::run_span(&submitted, "r-2").parent_id
        );
        assert_eq!(TraceParent::parse(&first.to_string()), Some(first));
    }

    #[test]
    fn roots_are_valid() {
        let root = TraceParent::new_root();
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }
}
