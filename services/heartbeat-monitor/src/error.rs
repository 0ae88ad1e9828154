//! The monitor's errors, and the one place where each meets its wire code.

use drover_protocol::{DecodeError, ErrorCode, ErrorPayload, Incarnation, WorkerId};
use drover_service_kit::WireError;
use serde_json::json;

use crate::tracker::PulseRejection;

/// Why a pulse was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MonitorError {
    /// The body could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The tracker refused it.
    #[error("{}", .0.message)]
    Rejected(PulseRejection),
    /// No record of this worker, even in the bucket.
    #[error("worker {:?} is not registered", .worker.as_str())]
    UnknownWorker {
        /// The worker.
        worker: WorkerId,
        /// The incarnation the pulse named.
        incarnation: Incarnation,
    },
}

impl MonitorError {
    /// The `v1.error` code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Decode(error) => error.code(),
            Self::Rejected(rejection) => rejection.code,
            Self::UnknownWorker { .. } => ErrorCode::UnknownWorker,
        }
    }
}

impl WireError for MonitorError {
    fn to_wire(&self, in_reply_to: &str) -> ErrorPayload {
        let wire = ErrorPayload::new(self.code(), self.to_string(), in_reply_to);
        match self {
            Self::Decode(error) => error.to_error(in_reply_to),
            Self::Rejected(rejection) => wire.with_details(rejection.details.clone()),
            Self::UnknownWorker {
                worker,
                incarnation,
            } => wire.with_details(json!({"workerID": worker, "incarnation": incarnation})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker;

    #[test]
    fn unknown_workers_are_named_with_their_incarnation() {
        let worker = WorkerId::parse("w1").expect("a valid workerID");
        let error = MonitorError::UnknownWorker {
            worker,
            incarnation: 3,
        };
        let wire = error.to_wire("v1.heartbeat.give_pulse.w1");
        assert_eq!(wire.code, ErrorCode::UnknownWorker);
        assert_eq!(wire.message, r#"worker "w1" is not registered"#);
        assert_eq!(wire.details, json!({"workerID": "w1", "incarnation": 3}));
        assert_eq!(wire.in_reply_to, "v1.heartbeat.give_pulse.w1");
    }

    #[test]
    fn a_stale_pulse_names_the_current_incarnation() {
        let worker = WorkerId::parse("w1").expect("a valid workerID");
        let wire = MonitorError::Rejected(tracker::stale(&worker, 1, 2)).to_wire("s");
        assert_eq!(wire.code, ErrorCode::StaleIncarnation);
        assert!(wire.message.ends_with("(current is 2)"), "{}", wire.message);
        assert_eq!(wire.details["current"], 2);
    }
}
