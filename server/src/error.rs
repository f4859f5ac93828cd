//! The relay's error, and how each kind answers over HTTP: a status and a
//! JSON body `{"code": ..., "message": ...}`. Messages never carry patient
//! data or secrets.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use handoff_core::sync::wire::{codes, ErrorBody};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{1}")]
    BadRequest(&'static str, String),
    #[error("missing or unknown device token")]
    InvalidToken,
    #[error("this device was revoked")]
    DeviceRevoked,
    #[error("this device's user is no longer an active member of the team")]
    NotAMember,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("this invite was already used")]
    InviteUsed,
    #[error("this invite has expired")]
    InviteExpired,
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("too many failed attempts from this address; try again in a minute")]
    TooManyAttempts,
    #[error("this app derives tasks by rules {0}, the relay by rules {1}: update the app")]
    UpgradeRequired(String, &'static str),
    #[error("storage: {0}")]
    Storage(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<handoff_core::Error> for Error {
    fn from(e: handoff_core::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<automerge::AutomergeError> for Error {
    fn from(e: automerge::AutomergeError) -> Self {
        Error::Storage(e.to_string())
    }
}

impl Error {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(code, _) => (StatusCode::BAD_REQUEST, code),
            Error::InvalidToken => (StatusCode::UNAUTHORIZED, codes::INVALID_TOKEN),
            Error::DeviceRevoked => (StatusCode::UNAUTHORIZED, codes::DEVICE_REVOKED),
            Error::NotAMember => (StatusCode::FORBIDDEN, codes::NOT_A_MEMBER),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::InviteUsed => (StatusCode::GONE, "invite_used"),
            Error::InviteExpired => (StatusCode::GONE, "invite_expired"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Error::TooManyAttempts => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            Error::UpgradeRequired(..) => (StatusCode::UPGRADE_REQUIRED, codes::UPGRADE_REQUIRED),
            Error::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            // Details of storage failures go to the log, not to the client.
            Error::Storage(detail) => {
                tracing::error!(%detail, "storage error");
                "the relay could not complete the request".to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            code: code.to_owned(),
            message,
        };
        (status, axum::Json(body)).into_response()
    }
}
