//! Webhook intake: `POST /asleep-webhook`.
//!
//! The path reads top to bottom: turn away a client that failed
//! authentication too often, authenticate, check the user against the
//! allow-list, parse, validate, commit, apply to the live room, respond. A
//! 2xx response is sent only after the commit.

mod client_address;
mod guard;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use client_address::ClientAddressSource;
pub use guard::{
    DEFAULT_AUTH_FAILURE_LIMIT, DEFAULT_AUTH_FAILURE_WINDOW, MAX_TRACKED_ADDRESSES, WebhookGuard, WebhookPolicy,
};

use crate::app::{AppState, Limits};
use crate::auth::api_key_matches;
use crate::error::AppError;
use crate::metrics::Outcome;
use crate::payload::{Delivery, INFERENCE_COMPLETE, SESSION_COMPLETE, parse_delivery, parse_json};
use crate::rooms::Applied;
use crate::storage::{NewEvent, Recorded};
use crate::warnings;

/// Default largest accepted body, the default of [`Limits::max_body_bytes`]. A 48-hour final report with all three stage arrays
/// is about 100 KiB, so 1 MiB leaves ample room.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Default time to receive a whole body, the default of [`Limits::request_timeout`]. Asleep posts a few kilobytes at once,
/// so only a stalled or hostile sender takes longer.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Handles one delivery from Asleep: responds to it, counts it by event and
/// outcome, times it, and logs every rejection so an operator notices a
/// wrong key or a change in Asleep's payloads.
///
/// `peer` is the TCP peer, which the accept loop adds to every request.
pub async fn receive(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let guard = &state.webhook_guard;
    let client = guard.policy.client_address.client_address(peer, &headers);

    // Checked before the key is compared, so a client guessing keys learns
    // nothing more until its allowance refills.
    if let Some(wait) = guard.blocked_for(client) {
        log_authentication_failure(client, true);
        state.metrics.count_webhook(None, Outcome::Rejected);
        state.metrics.webhook_seconds.observe(started.elapsed().as_secs_f64());
        return too_many_failures(wait);
    }

    let (event, answer) = match read_request(&state, &headers, body).await {
        Ok(request) => {
            let event = event_name(&request.json).map(str::to_string);
            let answer = if guard.policy.allows_user(&request.header_user_id) {
                store_and_apply(&state, request).await
            } else {
                Ok(reject_user(&request.header_user_id, event.as_deref()))
            };
            (event, answer)
        }
        Err(error) => (None, Err(error)),
    };

    let (outcome, response) = match answer {
        Ok((outcome, response)) => (outcome, response),
        Err(error) => {
            let outcome = match error {
                // A 500 is a server-side failure like a 503: nothing was
                // stored, and the sender is not at fault.
                AppError::Unavailable(_) | AppError::Internal(_) => Outcome::Unavailable,
                AppError::BadApiKey => {
                    guard.record_failure(client);
                    log_authentication_failure(client, false);
                    Outcome::Rejected
                }
                _ => {
                    log_rejection(&headers, event.as_deref(), &error);
                    Outcome::Rejected
                }
            };
            (outcome, error.into_response())
        }
    };

    state.metrics.count_webhook(event.as_deref(), outcome);
    state.metrics.webhook_seconds.observe(started.elapsed().as_secs_f64());
    response
}

/// A request that passed the checks that need no payload rules: key,
/// content type, size, `x-user-id`, and JSON syntax.
struct Request {
    header_user_id: String,
    body: Bytes,
    json: Value,
}

async fn read_request(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Request, AppError> {
    let presented = headers
        .get("x-api-key")
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if !api_key_matches(presented, &state.api_keys) {
        return Err(AppError::BadApiKey);
    }
    check_content_type(headers)?;
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > state.limits.max_body_bytes as u64) {
        return Err(AppError::BodyTooLarge(state.limits.max_body_bytes));
    }
    let body = read_body(body, &state.limits).await?;
    let header_user_id = match headers.get("x-user-id") {
        None => return Err(AppError::BadHeader("x-user-id", "is missing".to_string())),
        Some(value) => value
            .to_str()
            .map_err(|_| AppError::BadHeader("x-user-id", "must be visible ASCII".to_string()))?,
    };

    let json = parse_json(&body).map_err(|error| AppError::MalformedJson(error.to_string()))?;
    Ok(Request {
        header_user_id: header_user_id.to_string(),
        body,
        json,
    })
}

/// Reads the event name the way the payload parser does, for the metrics
/// label, before the rest of the payload is validated.
fn event_name(json: &Value) -> Option<&str> {
    let top = json.as_object()?;
    let key = if top.contains_key("callback_event") {
        "callback_event"
    } else {
        "event"
    };
    top.get(key)?.as_str()
}

async fn store_and_apply(state: &AppState, request: Request) -> Result<(Outcome, Response), AppError> {
    let delivery = parse_delivery(&request.json, &request.header_user_id)?;
    // The body parsed as JSON, so it is valid UTF-8.
    let raw = std::str::from_utf8(&request.body).map_err(|error| AppError::Internal(error.to_string()))?;
    let received_at_ms = chrono::Utc::now().timestamp_millis();

    let (event, session_id, seq_num, normalized) = match &delivery {
        Delivery::Inference(result) => (
            INFERENCE_COMPLETE.to_string(),
            Some(result.session_id.clone()),
            Some(result.seq_num),
            Some(to_json(result)?),
        ),
        Delivery::SessionComplete(report) => (
            SESSION_COMPLETE.to_string(),
            Some(report.session_id.clone()),
            None,
            Some(to_json(report)?),
        ),
        Delivery::Unknown { event, .. } => (event.clone(), None, None, None),
    };
    let user_id = delivery.user_id().to_string();
    let (event, session_id, user_id) = (event.as_str(), session_id.as_deref(), user_id.as_str());

    let commit_started = Instant::now();
    let recorded = state
        .store
        .record(NewEvent {
            received_at_ms,
            event,
            user_id,
            session_id,
            seq_num,
            body: raw,
            normalized: normalized.as_deref(),
        })
        .await;
    // The time includes the wait for the writer thread and the commit of the
    // whole batch. Failed commits are timed too: a lock that makes them wait
    // until the busy timeout shows in this histogram before anywhere else.
    state
        .metrics
        .commit_seconds
        .observe(commit_started.elapsed().as_secs_f64());
    let recorded = match recorded {
        Ok(committed) => {
            if let Some(batch_size) = committed.batch_size {
                state.metrics.batch_size.observe(batch_size as f64);
            }
            committed.recorded
        }
        Err(error) => {
            if let Some(suppressed) = warnings::admit("delivery not stored", &error.kind()) {
                tracing::warn!(
                    user_id,
                    session_id,
                    event,
                    seq_num,
                    error = %error,
                    suppressed,
                    "delivery not stored; answering 503 so the sender delivers it again"
                );
            }
            return Err(AppError::Unavailable(error));
        }
    };

    let session_first_seen_ms = match recorded {
        Recorded::Duplicate { existing } => {
            if !same_content(existing.as_deref(), normalized.as_deref()) {
                if let Some(suppressed) = warnings::admit("repeated delivery differs", event) {
                    tracing::warn!(
                        user_id,
                        session_id,
                        event,
                        seq_num,
                        suppressed,
                        "repeated delivery differs from the stored one; the first is kept"
                    );
                }
            } else {
                tracing::debug!(user_id, session_id, event, seq_num, "duplicate delivery");
            }
            let answer = (StatusCode::OK, Json(json!({ "status": "duplicate", "event": event })));
            return Ok((Outcome::Duplicate, answer.into_response()));
        }
        Recorded::Stored { session_first_seen_ms } => session_first_seen_ms.unwrap_or(received_at_ms),
    };

    let (outcome, answer) = match delivery {
        Delivery::Inference(result) => {
            // Results arrive every few minutes from every user; one line
            // each would dominate the log and cost the intake a write per
            // delivery, so they are counted in /metrics and logged at debug.
            tracing::debug!(
                user_id,
                session_id,
                event,
                seq_num,
                epochs = result.sleep_stages.len(),
                "result stored"
            );
            let answer = json!({
                "status": "accepted",
                "event": event,
                "session_id": result.session_id,
                "seq_num": result.seq_num,
            });
            state.rooms.apply(
                user_id,
                Applied::Result {
                    result,
                    received_at_ms,
                    session_first_seen_ms,
                },
            );
            (Outcome::Accepted, (StatusCode::OK, Json(answer)))
        }
        Delivery::SessionComplete(report) => {
            tracing::info!(
                user_id,
                session_id,
                event,
                epochs = report.sleep_stages.len(),
                "final report stored"
            );
            let answer = json!({
                "status": "accepted",
                "event": event,
                "session_id": report.session_id,
            });
            state.rooms.apply(
                user_id,
                Applied::Final {
                    report,
                    session_first_seen_ms,
                },
            );
            (Outcome::Accepted, (StatusCode::OK, Json(answer)))
        }
        Delivery::Unknown { .. } => {
            if let Some(suppressed) = warnings::admit("unknown event", event) {
                tracing::warn!(
                    user_id,
                    event,
                    suppressed,
                    "unknown event kept in the event log and otherwise ignored"
                );
            }
            (
                Outcome::Ignored,
                (
                    StatusCode::ACCEPTED,
                    Json(json!({
                        "status": "ignored",
                        "event": event,
                        "reason": format!("unknown event {event:?}; expected INFERENCE_COMPLETE or SESSION_COMPLETE"),
                    })),
                ),
            )
        }
    };
    Ok((outcome, answer.into_response()))
}

/// Builds the response to a client that used up its allowance of failed `x-api-key`
/// checks: 429 with `Retry-After` in whole seconds, rounded up.
fn too_many_failures(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let body = json!({
        "error": format!(
            "too many failed x-api-key checks from this client address; retry after {seconds} seconds"
        ),
        "field": "x-api-key",
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Rejects a delivery for a user that is not on the allow-list with 403,
/// and logs it at most once per [`warnings::WARNING_INTERVAL`] per user.
fn reject_user(user_id: &str, event: Option<&str>) -> (Outcome, Response) {
    if let Some(suppressed) = warnings::admit("delivery for a user not allowed", user_id) {
        tracing::warn!(
            user_id,
            event,
            suppressed,
            "delivery rejected: the user is not in --allowed-users"
        );
    }
    let body = json!({
        "error": format!("x-user-id {user_id:?} is not among the users this server accepts deliveries for"),
        "field": "x-user-id",
    });
    (Outcome::Rejected, (StatusCode::FORBIDDEN, Json(body)).into_response())
}

/// Logs a failed `x-api-key` check, or a request turned away after too
/// many, at most once per [`warnings::WARNING_INTERVAL`] per client address.
/// Neither the presented key nor `x-user-id` is logged: an unauthenticated
/// sender's headers are not trusted, and a sender that swapped the two
/// headers would put its key in `x-user-id`.
fn log_authentication_failure(client: IpAddr, blocked: bool) {
    let Some(suppressed) = warnings::admit("webhook authentication failed", &client.to_string()) else {
        return;
    };
    if blocked {
        tracing::warn!(
            client_address = %client,
            suppressed,
            "webhook request answered 429: too many failed x-api-key checks from this address"
        );
    } else {
        tracing::warn!(
            client_address = %client,
            suppressed,
            "webhook request rejected: x-api-key is missing or matches no configured key"
        );
    }
}

/// Logs a rejected delivery with the field and problem, at most once per
/// [`warnings::WARNING_INTERVAL`] for each kind of rejection, so a flood of
/// bad requests cannot flood the log.
fn log_rejection(headers: &HeaderMap, event: Option<&str>, error: &AppError) {
    let reason = rejection_reason(error);
    let Some(suppressed) = warnings::admit("delivery rejected", &reason) else {
        return;
    };
    let user_id = headers.get("x-user-id").and_then(|value| value.to_str().ok());
    tracing::warn!(user_id, event, error = %error, suppressed, "delivery rejected");
}

/// Names what a rejection is about, in a form that is equal for repeats:
/// the header or payload field with array indexes left out, or the check.
fn rejection_reason(error: &AppError) -> String {
    match error {
        AppError::BadApiKey => "x-api-key".to_string(),
        AppError::BadHeader(name, _) => (*name).to_string(),
        AppError::Payload(error) => without_indexes(&error.field),
        AppError::MalformedJson(_) => "invalid JSON".to_string(),
        AppError::BodyTooLarge(_) => "body too large".to_string(),
        AppError::BodyTimeout(_) => "body timed out".to_string(),
        AppError::BadBody(_) => "body unreadable".to_string(),
        AppError::UnsupportedMediaType(_) => "content-type".to_string(),
        other => format!("{other:?}")
            .split(['(', ' '])
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Drops the digits between brackets, so `data.sleep_stages[17]` and
/// `data.sleep_stages[18]` count as one field.
fn without_indexes(field: &str) -> String {
    let mut result = String::with_capacity(field.len());
    let mut in_brackets = false;
    for character in field.chars() {
        match character {
            '[' => in_brackets = true,
            ']' => in_brackets = false,
            digit if in_brackets && digit.is_ascii_digit() => continue,
            _ => {}
        }
        result.push(character);
    }
    result
}

/// Reads the body within the request timeout and the body size limit, so a
/// sender that stalls or sends too much cannot hold a request open.
async fn read_body(body: Body, limits: &Limits) -> Result<Bytes, AppError> {
    let reading = axum::body::to_bytes(body, limits.max_body_bytes);
    match tokio::time::timeout(limits.request_timeout, reading).await {
        Err(_) => Err(AppError::BodyTimeout(limits.request_timeout.as_secs())),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => {
            let too_large =
                std::error::Error::source(&error).is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(AppError::BodyTooLarge(limits.max_body_bytes))
            } else {
                Err(AppError::BadBody(error.to_string()))
            }
        }
    }
}

/// Accepts a missing `Content-Type` and any JSON type (`application/json`,
/// `application/*+json`, with parameters); rejects the rest with 415.
fn check_content_type(headers: &HeaderMap) -> Result<(), AppError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Ok(())
    } else {
        Err(AppError::UnsupportedMediaType(text.to_string()))
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, AppError> {
    serde_json::to_string(value).map_err(|error| AppError::Internal(error.to_string()))
}

/// Compares two stored payloads, ignoring `sent_at`: a redelivery may carry a
/// new send time for the same content.
fn same_content(existing: Option<&str>, new: Option<&str>) -> bool {
    let strip = |text: Option<&str>| {
        text.and_then(|text| serde_json::from_str::<Value>(text).ok())
            .map(|mut value| {
                if let Some(object) = value.as_object_mut() {
                    object.remove("sent_at");
                }
                value
            })
    };
    strip(existing) == strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn oversized_body_is_too_large() {
        let error = read_body(Body::from(vec![b' '; MAX_BODY_BYTES + 1]), &Limits::default())
            .await
            .unwrap_err();
        assert!(matches!(error, AppError::BodyTooLarge(MAX_BODY_BYTES)), "{error:?}");
    }

    #[tokio::test]
    async fn body_at_limit_is_read() {
        let bytes = read_body(Body::from(vec![b' '; MAX_BODY_BYTES]), &Limits::default())
            .await
            .unwrap();
        assert_eq!(bytes.len(), MAX_BODY_BYTES);
    }

    #[test]
    fn rejection_reason_leaves_out_indexes() {
        let error = AppError::Payload(crate::payload::PayloadError::new(
            "data.sleep_stages[17]",
            "must be 0..=3",
        ));
        assert_eq!(rejection_reason(&error), "data.sleep_stages[]");
        assert_eq!(
            without_indexes("data.peculiarities[3].name"),
            "data.peculiarities[].name"
        );
        assert_eq!(without_indexes("data.seq_num"), "data.seq_num");
        assert_eq!(rejection_reason(&AppError::BadApiKey), "x-api-key");
        assert_eq!(
            rejection_reason(&AppError::MalformedJson("EOF at line 1 column 9".to_string())),
            "invalid JSON"
        );
    }

    #[test]
    fn event_name_reads_both_spellings() {
        assert_eq!(
            event_name(&json!({ "event": "SESSION_COMPLETE" })),
            Some("SESSION_COMPLETE")
        );
        assert_eq!(
            event_name(&json!({ "callback_event": "INFERENCE_COMPLETE", "event": "OTHER" })),
            Some("INFERENCE_COMPLETE")
        );
        assert_eq!(event_name(&json!({ "event": 3 })), None);
        assert_eq!(event_name(&json!([])), None);
    }

    #[test]
    fn json_content_types_are_accepted() {
        for (value, accepted) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("application/vnd.asleep+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(check_content_type(&headers).is_ok(), accepted, "{value}");
        }
    }
}
