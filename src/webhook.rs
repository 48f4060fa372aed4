//! Webhook intake: `POST /asleep-webhook`.
//!
//! The path reads top to bottom: authenticate, parse, validate, commit, apply
//! to the live room, respond. A 2xx response is sent only after the commit.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::api_key_matches;
use crate::error::AppError;
use crate::payload::{Delivery, INFERENCE_COMPLETE, SESSION_COMPLETE, parse_delivery, parse_json};
use crate::rooms::Applied;
use crate::storage::{NewEvent, Recorded};

/// Largest accepted body. A 48-hour final report with all three stage arrays
/// is about 100 KiB, so 1 MiB leaves ample room.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Maximum time to receive a whole body. Asleep posts a few kilobytes at once,
/// so only a stalled or hostile sender takes longer.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Handles one delivery from Asleep, logging every rejection so an operator
/// notices a wrong key or a change in Asleep's payloads.
pub async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, AppError> {
    let outcome = intake(state, &headers, body).await;
    if let Err(error) = &outcome {
        let user_id = headers.get("x-user-id").and_then(|value| value.to_str().ok());
        // NOTE: rejections are not rate-limited yet, so a flood of bad
        // requests produces one warning each.
        match error {
            AppError::Unavailable(_) | AppError::Internal(_) => {}
            _ => tracing::warn!(user_id, error = %error, "delivery rejected"),
        }
    }
    outcome
}

async fn intake(state: AppState, headers: &HeaderMap, body: Body) -> Result<Response, AppError> {
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
    if declared_length.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(AppError::BodyTooLarge(MAX_BODY_BYTES));
    }
    let body = read_body(body).await?;
    let header_user_id = match headers.get("x-user-id") {
        None => return Err(AppError::BadHeader("x-user-id", "is missing".to_string())),
        Some(value) => value
            .to_str()
            .map_err(|_| AppError::BadHeader("x-user-id", "must be visible ASCII".to_string()))?,
    };

    let json = parse_json(&body).map_err(|error| AppError::MalformedJson(error.to_string()))?;
    let delivery = parse_delivery(&json, header_user_id)?;
    // The body parsed as JSON, so it is valid UTF-8.
    let raw = std::str::from_utf8(&body).map_err(|error| AppError::Internal(error.to_string()))?;
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
        .await?;

    let session_first_seen_ms = match recorded {
        Recorded::Duplicate { existing } => {
            if !same_content(existing.as_deref(), normalized.as_deref()) {
                tracing::warn!(
                    user_id,
                    session_id,
                    event,
                    seq_num,
                    "repeated delivery differs from the stored one; the first is kept"
                );
            } else {
                tracing::debug!(user_id, session_id, event, seq_num, "duplicate delivery");
            }
            return Ok((StatusCode::OK, Json(json!({ "status": "duplicate", "event": event }))).into_response());
        }
        Recorded::Stored { session_first_seen_ms } => session_first_seen_ms.unwrap_or(received_at_ms),
    };

    let answer = match delivery {
        Delivery::Inference(result) => {
            tracing::info!(
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
            (StatusCode::OK, Json(answer))
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
            (StatusCode::OK, Json(answer))
        }
        Delivery::Unknown { .. } => {
            tracing::warn!(
                user_id,
                event,
                "unknown event kept in the event log and otherwise ignored"
            );
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "status": "ignored",
                    "event": event,
                    "reason": format!("unknown event {event:?}; expected INFERENCE_COMPLETE or SESSION_COMPLETE"),
                })),
            )
        }
    };
    Ok(answer.into_response())
}

/// Reads the body within [`BODY_READ_TIMEOUT`] and [`MAX_BODY_BYTES`], so a
/// sender that stalls or sends too much cannot hold a request open.
async fn read_body(body: Body) -> Result<Bytes, AppError> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => Err(AppError::BodyTimeout(BODY_READ_TIMEOUT.as_secs())),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => {
            let too_large =
                std::error::Error::source(&error).is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(AppError::BodyTooLarge(MAX_BODY_BYTES))
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
        let error = read_body(Body::from(vec![b' '; MAX_BODY_BYTES + 1])).await.unwrap_err();
        assert!(matches!(error, AppError::BodyTooLarge(MAX_BODY_BYTES)), "{error:?}");
    }

    #[tokio::test]
    async fn body_at_limit_is_read() {
        let bytes = read_body(Body::from(vec![b' '; MAX_BODY_BYTES])).await.unwrap();
        assert_eq!(bytes.len(), MAX_BODY_BYTES);
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
