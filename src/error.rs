//! The HTTP layer's error type: the one place where failures become
//! responses. Internal causes are logged here and never shown to clients.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::TokenError;
use crate::payload::PayloadError;
use crate::storage::StorageError;

/// Seconds a sender should wait before delivering again after a 503.
pub const RETRY_AFTER_SECONDS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 401: the webhook's `x-api-key` is missing or wrong.
    #[error("the x-api-key header is missing or does not match a configured Asleep API key")]
    BadApiKey,
    /// 401: a viewer token is missing, malformed, forged or expired.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// 400: a request header is missing or invalid; the header's name and the problem.
    #[error("{0}: {1}")]
    BadHeader(&'static str, String),
    /// 400: the query string or the upgrade request is invalid.
    #[error("invalid request: {0}")]
    BadQuery(String),
    /// 400: the body is not valid JSON; the parser's message with line and column.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// 400: the payload is valid JSON but breaks a rule; names the field.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// 413: the body is larger than the limit, in bytes.
    #[error("the body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// 408: the body did not arrive in time; the limit in seconds.
    #[error("the body did not arrive within {0} seconds")]
    BodyTimeout(u64),
    /// 400: the body could not be read.
    #[error("the body could not be read: {0}")]
    BadBody(String),
    /// 415: the `Content-Type` is not JSON.
    #[error("Content-Type {0:?} is not supported; send application/json")]
    UnsupportedMediaType(String),
    /// 404: the user or session does not exist, or is not visible.
    #[error("{0} not found")]
    NotFound(String),
    /// 503: the database cannot take the write; the sender should retry.
    #[error("the database is unavailable")]
    Unavailable(#[from] StorageError),
    /// 500: a bug or a failure that retrying will not fix.
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, field) = match &self {
            AppError::BadApiKey | AppError::Token(_) => (StatusCode::UNAUTHORIZED, None),
            AppError::BadHeader(name, _) => (StatusCode::BAD_REQUEST, Some(name.to_string())),
            AppError::MalformedJson(_) | AppError::BadBody(_) => (StatusCode::BAD_REQUEST, Some("body".to_string())),
            AppError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, Some("body".to_string())),
            AppError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, Some("body".to_string())),
            AppError::Payload(error) => (StatusCode::BAD_REQUEST, Some(error.field.clone())),
            AppError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("content-type".to_string())),
            AppError::BadQuery(_) => (StatusCode::BAD_REQUEST, None),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            AppError::Unavailable(cause) => {
                // Rate-limited: a database outage fails every request at once.
                if let Some(suppressed) = crate::warnings::admit("database unavailable", &cause.to_string()) {
                    tracing::error!(error = %cause, suppressed, "database unavailable");
                }
                (StatusCode::SERVICE_UNAVAILABLE, None)
            }
            AppError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        };

        let body = match field {
            Some(field) => json!({ "error": self.to_string(), "field": field }),
            None => json!({ "error": self.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}
