//! The log-collector's errors, and the one place where each meets its wire code.

use drover_protocol::{DecodeError, ErrorCode, ErrorPayload, WorkerId};
use drover_service_kit::WireError;

/// Why a log line or a query was refused, or could not be served.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The body could not be decoded, or the record is too large to store.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A line came on a subject that is not `v1.log.<workerID>`.
    #[error("subject {0:?} is not v1.log.<workerID>")]
    InvalidSubject(String),
    /// A line came from a workerID the registry has no record of.
    #[error("worker {:?} is not registered", .0.as_str())]
    UnknownWorker(WorkerId),
    /// A query cursor that `v1.logs.query` did not hand out (its first characters).
    #[error("cursor {0:?} was not handed out by v1.logs.query")]
    InvalidCursor(String),
    /// `DROVER_LOGS` did not answer a query.
    #[error("the log store did not answer: {0}")]
    StoreUnavailable(String),
    /// A record could not be serialised.
    #[error("{0}")]
    Unserializable(#[source] serde_json::Error),
}

impl LogError {
    /// The `v1.error` code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Decode(error) => error.code(),
            Self::InvalidSubject(_) => ErrorCode::InvalidSubject,
            Self::UnknownWorker(_) => ErrorCode::UnknownWorker,
            Self::InvalidCursor(_) => ErrorCode::InvalidCursor,
            Self::StoreUnavailable(_) => ErrorCode::Unavailable,
            Self::Unserializable(_) => ErrorCode::Internal,
        }
    }
}

impl WireError for LogError {
    fn to_wire(&self, in_reply_to: &str) -> ErrorPayload {
        match self {
            Self::Decode(error) => error.to_error(in_reply_to),
            Self::UnknownWorker(worker) => {
                ErrorPayload::new(self.code(), self.to_string(), in_reply_to)
                    .with_details(serde_json::json!({ "workerID": worker }))
            }
            _ => ErrorPayload::new(self.code(), self.to_string(), in_reply_to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_codes_are_those_of_the_wire() {
        let cases = [
            (
                LogError::InvalidSubject("v1.log".to_owned()),
                ErrorCode::InvalidSubject,
                r#"subject "v1.log" is not v1.log.<workerID>"#,
            ),
            (
                LogError::UnknownWorker(WorkerId::parse("ghost").unwrap()),
                ErrorCode::UnknownWorker,
                r#"worker "ghost" is not registered"#,
            ),
            (
                LogError::InvalidCursor("zz".to_owned()),
                ErrorCode::InvalidCursor,
                r#"cursor "zz" was not handed out by v1.logs.query"#,
            ),
            (
                LogError::StoreUnavailable("timed out".to_owned()),
                ErrorCode::Unavailable,
                "the log store did not answer: timed out",
            ),
        ];
        for (error, code, message) in cases {
            let wire = error.to_wire("v1.logs.query");
            assert_eq!(wire.code, code);
            assert_eq!(wire.message, message);
            assert_eq!(wire.in_reply_to, "v1.logs.query");
        }
    }

    #[test]
    fn too_large_records_are_decode_errors() {
        let decode = DecodeError::TooLarge { size: 10, limit: 5 };
        let wire = LogError::from(decode.clone()).to_wire("v1.log.w1");
        assert_eq!(wire, decode.to_error("v1.log.w1"));
    }
}
