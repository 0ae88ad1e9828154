//! What can go wrong, and the exit code each kind of failure gives.

use drover_protocol::{ErrorCode, ErrorPayload};

/// A failure of a `drover` command, printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or its input is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The run or worker does not exist (exit 3).
    #[error("{0}")]
    NotFound(String),
    /// NATS or a Drover service cannot be reached (exit 4).
    #[error("{0}")]
    Unreachable(String),
    /// Drover refused the request (exit 5).
    #[error("{0}")]
    Refused(String),
    /// A run that was waited for ended FAILED or CANCELLED (exit 1).
    #[error("{0}")]
    RunFailed(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

/// Exit codes, as documented in `drover --help`.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A waited-for run ended FAILED or CANCELLED, or another failure.
    pub const FAILED: u8 = 1;
    /// Bad command line or input.
    pub const USAGE: u8 = 2;
    /// No such run or worker.
    pub const NOT_FOUND: u8 = 3;
    /// NATS or a Drover service is unreachable.
    pub const UNREACHABLE: u8 = 4;
    /// Drover refused the request.
    pub const REFUSED: u8 = 5;
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::NotFound(_) => exit::NOT_FOUND,
            CliError::Unreachable(_) => exit::UNREACHABLE,
            CliError::Refused(_) => exit::REFUSED,
            CliError::RunFailed(_) | CliError::Other(_) => exit::FAILED,
        }
    }
}

impl From<ErrorPayload> for CliError {
    fn from(error: ErrorPayload) -> Self {
        let text = error.message.clone();
        match error.code {
            ErrorCode::UnknownRun | ErrorCode::UnknownWorker | ErrorCode::UnknownParentRun => {
                CliError::NotFound(text)
            }
            ErrorCode::Unavailable => CliError::Unreachable(text),
            ErrorCode::InvalidJson
            | ErrorCode::SchemaViolation
            | ErrorCode::InvalidRoutineId
            | ErrorCode::InvalidBackoff
            | ErrorCode::PayloadTooLarge
            | ErrorCode::InvalidCursor => CliError::Usage(text),
            _ => CliError::Refused(format!("{} ({})", text, error.code)),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> Self {
        CliError::Other(error.to_string())
    }
}
