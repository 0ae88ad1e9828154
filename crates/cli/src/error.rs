//! What can go wrong, and the exit code each kind of failure gives.

use drover_protocol::{DecodeError, ErrorCode, ErrorPayload, InvalidId, RunId};

/// A failure of a `drover` command, printed as one line on stderr.
///
/// Failures caused by another error keep it as their source; their message is the one
/// line a person reads, which is why most also repeat the source's text.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or its input is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// NATS or a Drover service cannot be reached (exit 4).
    #[error("{0}")]
    Unreachable(String),
    /// A run that was waited for ended FAILED or CANCELLED (exit 1).
    #[error("{0}")]
    RunFailed(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
    /// Drover answered with a `v1.error`: no such run or worker (exit 3), unavailable
    /// (exit 4), bad input (exit 2), or refused (exit 5).
    #[error("{}", drover_message(.0))]
    Drover(#[from] ErrorPayload),
    /// The connection to NATS failed (exit 4).
    #[error(
        "cannot reach NATS at {url}: {source} (set --nats-url or DROVER_NATS_URL, or start \
         Drover with `drover dev`)"
    )]
    Connect {
        /// The URL tried.
        url: String,
        /// Why it failed.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A request could not be sent or answered (exit 4).
    #[error("request on {subject} failed: {source}")]
    Request {
        /// Where it went.
        subject: String,
        /// Why it failed.
        #[source]
        source: async_nats::RequestError,
    },
    /// Some other NATS operation failed (exit 4).
    #[error("{0}")]
    Nats(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The run's events could not be subscribed to (exit 4).
    #[error("cannot follow run {run}: {source}")]
    Follow {
        /// The run.
        run: RunId,
        /// Why not.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// A reply is not what the protocol says (exit 1).
    #[error("unexpected reply on {subject}: {source}")]
    Reply {
        /// Where the request went.
        subject: String,
        /// What is wrong with the reply.
        #[source]
        source: DecodeError,
    },
    /// An identifier on the command line breaks the rules (exit 2).
    #[error("invalid {what}: {}", .source.reason)]
    InvalidId {
        /// What was given, e.g. `run ID "x.y"` or `--local-run-id`.
        what: String,
        /// The rule it broke.
        #[source]
        source: InvalidId,
    },
    /// `--params` is not JSON (exit 2).
    #[error("invalid --params: not JSON ({0})")]
    InvalidParams(#[source] serde_json::Error),
    /// `--since` is neither a time nor an age (exit 2).
    #[error(
        "invalid --since {text:?}: expected a time like 2026-11-22T13:00:00Z or an age like 10m"
    )]
    InvalidSince {
        /// What was given.
        text: String,
        /// Why it is not an age, when it looked like one.
        #[source]
        source: Option<humantime::DurationError>,
    },
    /// A record could not be printed as JSON (exit 1).
    #[error("cannot print JSON: {0}")]
    Print(#[source] serde_json::Error),
    /// A value did not convert to or from JSON (exit 1).
    #[error("{0}")]
    Json(#[source] serde_json::Error),
    /// A program could not be started (exit 1).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program, as a path.
        program: String,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed (exit 1).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A configuration file that cannot be used; nothing was started (exit 64).
    #[error("{0}")]
    Config(String),
    /// NATS refused a publish or subscription the credential in use has no right to
    /// (exit 5).
    #[error(
        "NATS refused it: {0}; the credential in use may not do this (see docs/security.md, \"Roles\")"
    )]
    Forbidden(String),
    /// No such credential (exit 3); unknown runs and workers come as `v1.error`s.
    #[error("{0}")]
    NotFound(String),
}

impl CliError {
    /// A failed NATS operation, with its error as the source.
    pub fn nats(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        CliError::Nats(Box::new(error))
    }

    /// An identifier that breaks the rules: `what` names it, e.g. `run ID "x.y"`.
    pub fn invalid_id(what: impl Into<String>) -> impl FnOnce(InvalidId) -> Self {
        let what = what.into();
        move |source| CliError::InvalidId { what, source }
    }
}

/// Exit codes, as documented in `drover --help`.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A waited-for run ended FAILED or CANCELLED, or another failure.
    pub const FAILED: u8 = 1;
    /// Bad command line or input.
    pub const USAGE: u8 = 2;
    /// No such run, worker or credential.
    pub const NOT_FOUND: u8 = 3;
    /// NATS or a Drover service is unreachable.
    pub const UNREACHABLE: u8 = 4;
    /// Drover refused the request, or NATS refused it to the credential in use.
    pub const REFUSED: u8 = 5;
    /// A configuration file that cannot be used (as the services: EX_CONFIG).
    pub const CONFIG: u8 = 64;
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_)
            | CliError::InvalidId { .. }
            | CliError::InvalidParams(_)
            | CliError::InvalidSince { .. } => exit::USAGE,
            CliError::Unreachable(_)
            | CliError::Connect { .. }
            | CliError::Request { .. }
            | CliError::Nats(_)
            | CliError::Follow { .. } => exit::UNREACHABLE,
            CliError::NotFound(_) => exit::NOT_FOUND,
            CliError::Forbidden(_) => exit::REFUSED,
            CliError::Drover(error) => match drover_kind(error.code) {
                DroverKind::NotFound => exit::NOT_FOUND,
                DroverKind::Unavailable => exit::UNREACHABLE,
                DroverKind::Usage => exit::USAGE,
                DroverKind::Refused => exit::REFUSED,
            },
            CliError::RunFailed(_)
            | CliError::Other(_)
            | CliError::Reply { .. }
            | CliError::Print(_)
            | CliError::Json(_)
            | CliError::Spawn { .. }
            | CliError::Io(_) => exit::FAILED,
            CliError::Config(_) => exit::CONFIG,
        }
    }
}

/// How the CLI treats a `v1.error` code.
enum DroverKind {
    NotFound,
    Unavailable,
    Usage,
    Refused,
}

fn drover_kind(code: ErrorCode) -> DroverKind {
    match code {
        ErrorCode::UnknownRun
        | ErrorCode::UnknownWorker
        | ErrorCode::UnknownParentRun
        | ErrorCode::UnknownGroup => DroverKind::NotFound,
        ErrorCode::Unavailable => DroverKind::Unavailable,
        ErrorCode::InvalidJson
        | ErrorCode::SchemaViolation
        | ErrorCode::InvalidRoutineId
        | ErrorCode::InvalidBackoff
        | ErrorCode::PayloadTooLarge
        | ErrorCode::InvalidCursor
        | ErrorCode::InvalidPayload => DroverKind::Usage,
        _ => DroverKind::Refused,
    }
}

/// A `v1.error` for people: its message, and its code when it is a refusal.
fn drover_message(error: &ErrorPayload) -> String {
    match drover_kind(error.code) {
        DroverKind::Refused => format!("{} ({})", error.message, error.code),
        _ => error.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn drover_errors_keep_their_payload_and_map_to_exit_codes() {
        let missing = CliError::from(ErrorPayload::new(ErrorCode::UnknownRun, "no run x", "s"));
        assert_eq!(missing.to_string(), "no run x");
        assert_eq!(missing.exit_code(), exit::NOT_FOUND);
        assert!(missing.source().is_some());
        let refused = CliError::from(ErrorPayload::new(
            ErrorCode::ParentNotRunning,
            "parent ended",
            "s",
        ));
        assert_eq!(
            refused.to_string(),
            format!("parent ended ({})", ErrorCode::ParentNotRunning)
        );
        assert_eq!(refused.exit_code(), exit::REFUSED);
        let busy = CliError::from(ErrorPayload::new(ErrorCode::Unavailable, "later", "s"));
        assert_eq!(busy.exit_code(), exit::UNREACHABLE);
        let bad = CliError::from(ErrorPayload::new(ErrorCode::InvalidCursor, "cursor?", "s"));
        assert_eq!(bad.exit_code(), exit::USAGE);
    }

    #[test]
    fn wrapped_errors_keep_their_source_and_message() {
        let io = CliError::from(std::io::Error::other("disk full"));
        assert_eq!(io.to_string(), "disk full");
        assert_eq!(io.exit_code(), exit::FAILED);
        assert_eq!(
            io.source().map(ToString::to_string).as_deref(),
            Some("disk full")
        );

        let id = RunId::parse("a.b").map_err(CliError::invalid_id("run ID \"a.b\""));
        let id = id.expect_err("dots are not allowed");
        let reason = id.source().map(ToString::to_string).unwrap_or_default();
        assert!(
            id.to_string().starts_with("invalid run ID \"a.b\": "),
            "{id}"
        );
        assert!(reason.contains("a.b"), "{reason}");
        assert_eq!(id.exit_code(), exit::USAGE);

        let params =
            serde_json::from_str::<serde_json::Value>("{").map_err(CliError::InvalidParams);
        let params = params.expect_err("not JSON");
        assert!(params
            .to_string()
            .starts_with("invalid --params: not JSON ("));
        assert!(params.source().is_some());
    }
}
