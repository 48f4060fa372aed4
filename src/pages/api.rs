//! `GET /api/users/{user_id}/sessions/{session_id}`: a session as JSON,
//! described field by field in `docs/api.md`.
//!
//! It takes the viewer token from `?token=` without a redirect, for scripts,
//! or from the viewer cookie that the pages set. Errors are JSON too: 400
//! for an invalid id, 401 for a missing or invalid token, 404 for an unknown
//! session, each `{"error": "..."}`.

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
    viewer: ViewerToken,
) -> Result<Json<SessionDocument>, AppError> {
    load(&state, &user_id, &session_id, viewer.token(&user_id))
        .await
        .map(Json)
}
