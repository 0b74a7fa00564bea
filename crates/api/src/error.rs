//! The one error type of the control-plane API, in Google's JSON shape.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runnel_model::Invalid;
use runnel_store::StoreError;

/// An API failure: HTTP status, Google's canonical status name, and a message for people.
/// Internal failures are logged with their detail and answered without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: StatusCode,
    pub status: &'static str,
    pub message: String,
    /// The decision's reason code, for refusals that come from one; sent as Google's
    /// `ErrorInfo` detail (`{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason",
    /// "domain"}`), so clients can tell refusals apart without reading the message.
    pub reason: Option<runnel_policy::Reason>,
}

impl ApiError {
    fn new(code: StatusCode, status: &'static str, message: impl Into<String>) -> Self {
        Self { code, status, message: message.into(), reason: None }
    }

    /// The same error, tagged with the reason of the decision that caused it.
    pub fn because(mut self, reason: runnel_policy::Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// An error for a status that came from outside the control plane's own methods.
    pub fn from_status(code: StatusCode, message: String) -> Self {
        let status = match code.as_u16() {
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            405 => "UNIMPLEMENTED",
            409 => "ABORTED",
            429 => "RESOURCE_EXHAUSTED",
            400..=499 => "INVALID_ARGUMENT",
            _ => "INTERNAL",
        };
        Self::new(code, status, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "FAILED_PRECONDITION", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "PERMISSION_DENIED", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "ALREADY_EXISTS", message)
    }

    pub fn aborted(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "ABORTED", message)
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error in the control plane");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "runnel hit an internal error; the daemon's log has the detail. Retry, and report it if it persists",
        )
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::invalid(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error =
            serde_json::json!({ "code": self.code.as_u16(), "message": self.message, "status": self.status });
        if let Some(reason) = self.reason {
            error["details"] = serde_json::json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason.code(),
                "domain": "runnel",
            }]);
        }
        let body = serde_json::json!({ "error": error });
        (self.code, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
