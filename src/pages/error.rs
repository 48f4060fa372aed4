//! Errors of the HTML pages: the status and logging of [`AppError`], shown as
//! a page instead of JSON.

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::error::AppError;
use crate::storage::StorageError;

/// An error that a page shows as HTML.
#[derive(Debug)]
pub struct PageError(pub AppError);

impl From<AppError> for PageError {
    fn from(error: AppError) -> Self {
        Self(error)
    }
}

impl From<StorageError> for PageError {
    fn from(error: StorageError) -> Self {
        Self(AppError::Unavailable(error))
    }
}

/// Wraps a template failure, which is a bug, as an internal error.
pub fn render_failed(error: askama::Error) -> AppError {
    AppError::Internal(format!("rendering a template failed: {error}"))
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    heading: &'a str,
    message: String,
}

/// Capitalizes a message and ends it with a full stop.
fn sentence(message: &str) -> String {
    let mut characters = message.chars();
    let mut sentence: String = match characters.next() {
        Some(first) => first.to_uppercase().chain(characters).collect(),
        None => String::new(),
    };
    if !sentence.ends_with('.') {
        sentence.push('.');
    }
    sentence
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let message = sentence(&self.0.to_string());
        // The JSON response decides the status and headers and logs internal
        // causes, so pages and the API agree on both.
        let json = self.0.into_response();
        let status = json.status();
        let heading = match status {
            StatusCode::UNAUTHORIZED => "A valid viewer link is needed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::SERVICE_UNAVAILABLE => "Temporarily unavailable",
            status if status.is_client_error() => "Bad request",
            _ => "Something went wrong",
        };
        let page = ErrorPage {
            status: status.as_u16(),
            heading,
            message,
        };
        let body = match page.render() {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "rendering the error page failed");
                heading.to_string()
            }
        };
        let mut response = (status, Html(body)).into_response();
        if let Some(retry_after) = json.headers().get(header::RETRY_AFTER) {
            response.headers_mut().insert(header::RETRY_AFTER, retry_after.clone());
        }
        response
    }
}
