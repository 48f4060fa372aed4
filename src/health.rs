//! Operator endpoints: `GET /healthz`, `GET /readyz` and `GET /metrics`.
//!
//! None of them needs a viewer token, because none reveals anything about a
//! user: the responses contain a status, a database error message, and counts
//! labelled only by event name, outcome and close reason.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::app::AppState;
use crate::error::RETRY_AFTER_SECONDS;
use crate::metrics::CONTENT_TYPE;
use crate::warnings;

/// Builds the routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Returns 200 while the process serves requests. It checks nothing else, so
/// a supervisor restarts the process only when it no longer responds at all.
async fn healthz() -> Response {
    no_store((StatusCode::OK, Json(json!({ "status": "ok" }))).into_response())
}

/// Returns 200 when a delivery could be committed now, else 503 with
/// `Retry-After` and the database's error, as the webhook would respond.
async fn readyz(State(state): State<AppState>) -> Response {
    let response = match state.store.check_writable().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response(),
        Err(error) => {
            if let Some(suppressed) = warnings::admit("database is not writable", &error.kind()) {
                tracing::warn!(error = %error, suppressed, "database is not writable");
            }
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "unavailable",
                    "error": format!("the database is not writable: {error}"),
                })),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            response
        }
    };
    no_store(response)
}

/// Returns every metric in the OpenMetrics text format.
///
/// The endpoint is open like the health checks: its labels are event names,
/// outcomes and close reasons, never a user or session id, so a scrape shows
/// traffic volume and nothing about whose nights they are. An operator who
/// wants to hide even that blocks `/metrics` at the reverse proxy.
async fn metrics(State(state): State<AppState>) -> Response {
    // The room map changes on every connect and disconnect, so the gauge is
    // read at scrape time rather than kept in step at each change.
    state
        .metrics
        .rooms
        .set(i64::try_from(state.rooms.len()).unwrap_or(i64::MAX));
    let response = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        state.metrics.encode(),
    )
        .into_response();
    no_store(response)
}

/// Marks a response as not cacheable, so a proxy never returns an old state
/// to a probe.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
