//! `GET /api/users/{user_id}/sessions/{session_id}`: a session as JSON,
//! described field by field in `docs/api.md`.
//!
//! Errors are JSON too: 401 for a missing or invalid token, 404 for an
//! unknown session, each `{"error": "..."}`.

use axum::Json;
use axum::extract::{Path, State};

use super::ViewerToken;
use super::session::{SessionDocument, load};
use crate::app::AppState;
use crate::error::AppError;

/// Serves one session's [`SessionDocument`].
pub async fn session(
    State(state): State<AppState>,
    Path((user_id, session_id)): Path<(String, String)>,
    ViewerToken(token): ViewerToken,
) -> Result<Json<SessionDocument>, AppError> {
    load(&state, &user_id, &session_id, token.as_deref()).await.map(Json)
}
