//! The registry's errors, and the one place where each meets its wire code.

use drover_protocol::{DecodeError, ErrorCode, ErrorPayload, RegistryList, WorkerId};
use drover_service_kit::WireError;

use crate::store::MutateError;
use crate::transitions::Rejection;

/// Why the registry refused a request or a directive, or could not apply it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The subject is not one the registry serves, or names no valid worker.
    #[error("subject {subject:?} is not usable: {reason}")]
    InvalidSubject {
        /// The subject.
        subject: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An internal request came on a subject the registry does not serve.
    #[error("unknown internal subject")]
    UnknownInternalSubject,
    /// The body could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A registration names another worker than its subject does.
    #[error(
        "payload workerID {:?} differs from the subject's {:?}",
        .payload.as_str(),
        .subject.as_str()
    )]
    WorkerIdMismatch {
        /// The workerID in the payload.
        payload: WorkerId,
        /// The workerID in the subject.
        subject: WorkerId,
    },
    /// A list `limit` out of range.
    #[error("limit {0} is out of range: 1 to {max}", max = RegistryList::MAX_LIMIT)]
    LimitOutOfRange(u32),
    /// No record of this worker.
    #[error("worker {:?} is not registered", .0.as_str())]
    UnknownWorker(WorkerId),
    /// A transition refused the change.
    #[error("{}", .0.message)]
    Rejected(Rejection),
    /// The workers bucket could not be read or written; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// A registration was applied but left no record.
    #[error("registration wrote no record")]
    NoRecord,
}

impl RegistryError {
    /// The `v1.error` code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidSubject { .. } | Self::UnknownInternalSubject => ErrorCode::InvalidSubject,
            Self::Decode(error) => error.code(),
            Self::WorkerIdMismatch { .. } => ErrorCode::WorkerIdMismatch,
            Self::LimitOutOfRange(_) => ErrorCode::SchemaViolation,
            Self::UnknownWorker(_) => ErrorCode::UnknownWorker,
            Self::Rejected(rejection) => rejection.code,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::NoRecord => ErrorCode::Internal,
        }
    }
}

impl WireError for RegistryError {
    fn to_wire(&self, in_reply_to: &str) -> ErrorPayload {
        match self {
            Self::Decode(error) => error.to_error(in_reply_to),
            Self::Rejected(rejection) => {
                ErrorPayload::new(self.code(), self.to_string(), in_reply_to)
                    .with_details(rejection.details.clone())
            }
            _ => ErrorPayload::new(self.code(), self.to_string(), in_reply_to),
        }
    }
}

impl From<MutateError> for RegistryError {
    fn from(error: MutateError) -> Self {
        match error {
            MutateError::Rejected(rejection) => Self::Rejected(rejection),
            MutateError::Store(reason) => Self::Unavailable(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn worker(id: &str) -> WorkerId {
        WorkerId::parse(id).expect("a valid workerID")
    }

    #[test]
    fn messages_and_codes_are_those_of_the_wire() {
        let cases = [
            (
                RegistryError::WorkerIdMismatch {
                    payload: worker("w2"),
                    subject: worker("w1"),
                },
                ErrorCode::WorkerIdMismatch,
                r#"payload workerID "w2" differs from the subject's "w1""#.to_owned(),
            ),
            (
                RegistryError::LimitOutOfRange(0),
                ErrorCode::SchemaViolation,
                format!("limit 0 is out of range: 1 to {}", RegistryList::MAX_LIMIT),
            ),
            (
                RegistryError::UnknownWorker(worker("w1")),
                ErrorCode::UnknownWorker,
                r#"worker "w1" is not registered"#.to_owned(),
            ),
            (
                RegistryError::InvalidSubject {
                    subject: "v1.x".to_owned(),
                    reason: "no workerID token".to_owned(),
                },
                ErrorCode::InvalidSubject,
                r#"subject "v1.x" is not usable: no workerID token"#.to_owned(),
            ),
            (
                RegistryError::Unavailable("timed out".to_owned()),
                ErrorCode::Unavailable,
                "timed out".to_owned(),
            ),
        ];
        for (error, code, message) in cases {
            let wire = error.to_wire("v1.registry.get");
            assert_eq!(wire.code, code, "{error:?}");
            assert_eq!(wire.message, message);
            assert_eq!(wire.in_reply_to, "v1.registry.get");
        }
    }

    #[test]
    fn rejections_keep_their_code_and_details() {
        let rejection = Rejection {
            code: ErrorCode::StaleIncarnation,
            message: "stale".to_owned(),
            details: json!({"current": 2}),
        };
        let wire = RegistryError::from(MutateError::Rejected(rejection)).to_wire("v1.ready.w1");
        assert_eq!(wire.code, ErrorCode::StaleIncarnation);
        assert_eq!(wire.message, "stale");
        assert_eq!(wire.details, json!({"current": 2}));
    }

    #[test]
    fn decode_errors_keep_their_details() {
        let decode = DecodeError::TooLarge { size: 10, limit: 5 };
        let wire = RegistryError::from(decode.clone()).to_wire("v1.register.w1");
        assert_eq!(wire, decode.to_error("v1.register.w1"));
    }
}
