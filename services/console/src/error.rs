//! The console's errors, as JSON for the API and as a page for people: the same codes as
//! `v1.error`, plus the few that only HTTP needs (docs/console.md lists them).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_protocol::{ErrorCode, ErrorPayload};
use serde::Serialize;
use serde_json::Value;

/// What went wrong, with the code a program can match on.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A `v1.error` code, or `not_permitted`, `not_found` or `method_not_allowed`.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// Structured context, such as schema violations.
    pub details: Value,
}

/// An action needs the console's token, and none (or another) was presented.
pub const NOT_PERMITTED: &str = "not_permitted";
/// No such page, endpoint or pool.
pub const NOT_FOUND: &str = "not_found";
/// The path exists, the method does not.
pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";

impl ConsoleError {
    /// An error with one of the `v1.error` codes, at the status the services use for it.
    pub fn wire(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(code.service_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.as_str(),
            message: message.into(),
            details: Value::Null,
        }
    }

    /// The `v1.error` a service answered with, passed on as it is.
    pub fn from_service(error: ErrorPayload) -> Self {
        Self {
            details: error.details,
            ..Self::wire(error.code, error.message)
        }
    }

    /// An action without the console's token.
    pub fn not_permitted(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: NOT_PERMITTED,
            message: message.into(),
            details: Value::Null,
        }
    }

    /// Nothing here by that name.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: NOT_FOUND,
            message: message.into(),
            details: Value::Null,
        }
    }

    /// A bad request: `invalid_payload` unless a closer code is given.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::wire(ErrorCode::InvalidPayload, message)
    }

    /// A form the page could not read: too large, or not a form.
    pub fn from_form(rejection: axum::extract::rejection::FormRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::wire(
                ErrorCode::PayloadTooLarge,
                "the form is larger than this console takes",
            )
        } else {
            Self::invalid(rejection.body_text())
        }
    }

    /// The body a program reads.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
            details: (!self.details.is_null()).then(|| self.details.clone()),
        }
    }
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The JSON of an API error.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A `v1.error` code (`unknown_run`, `invalid_cursor`, `schema_violation`, ...) or one of
    /// the console's own: `not_permitted`, `not_found`, `method_not_allowed`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Structured context, such as the schema violations.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        ApiError(self).into_response()
    }
}

/// An error answered as JSON (the API).
#[derive(Debug)]
pub struct ApiError(pub ConsoleError);

impl From<ConsoleError> for ApiError {
    fn from(error: ConsoleError) -> Self {
        Self(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::metrics::count_error(self.0.code);
        (self.0.status, Json(self.0.body())).into_response()
    }
}

/// An error answered as a page (the console).
#[derive(Debug)]
pub struct PageError(pub ConsoleError);

impl From<ConsoleError> for PageError {
    fn from(error: ConsoleError) -> Self {
        Self(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        crate::metrics::count_error(self.0.code);
        let page = crate::pages::layout::error_page(&self.0);
        (self.0.status, page).into_response()
    }
}
