//! The viewer WebSocket: `GET /ws?user=U&token=T`.
//!
//! The token is checked before the upgrade. After it, the client receives a
//! snapshot, then the room's messages. Clients send nothing but control
//! frames; the server pings idle sockets and closes those that stop responding.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, interval_at};

use crate::app::AppState;
use crate::error::AppError;

/// Settings that separate live viewers from vanished ones.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// How often an idle socket is pinged.
    pub ping_interval: Duration,
    /// A socket that sent nothing, not even a pong, for this long is dead
    /// and closed. Several ping intervals, so one lost pong is not fatal.
    pub dead_after: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(20),
            dead_after: Duration::from_secs(60),
        }
    }
}

/// Largest frame a client may send. Clients only send pongs and close frames, so
/// a small limit keeps a hostile client from making the server buffer much.
const MAX_CLIENT_FRAME_BYTES: usize = 4 * 1024;

#[derive(Deserialize)]
pub struct WsQuery {
    user: String,
    token: Option<String>,
}

/// Checks the viewer's token for the requested user, then upgrades.
pub async fn upgrade(
    State(state): State<AppState>,
    query: Result<Query<WsQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|rejection| {
        AppError::BadQuery(format!("expected ?user=USER_ID&token=TOKEN: {}", rejection.body_text()))
    })?;
    let expires_at = state.authorize_viewer(&query.user, query.token.as_deref())?;
    let ws = ws.map_err(|rejection| AppError::BadQuery(rejection.body_text()))?;
    Ok(ws
        .max_message_size(MAX_CLIENT_FRAME_BYTES)
        .max_frame_size(MAX_CLIENT_FRAME_BYTES)
        .on_upgrade(move |socket| serve_viewer(state, query.user, expires_at, socket)))
}

async fn serve_viewer(state: AppState, user_id: String, expires_at: i64, mut socket: WebSocket) {
    let subscription = match state.rooms.subscribe(&user_id).await {
        Ok(subscription) => subscription,
        Err(error) => {
            tracing::error!(user_id, %error, "loading the live night failed");
            let _ = socket
                .send(close(
                    close_code::ERROR,
                    "the night could not be loaded; reconnect later",
                ))
                .await;
            return;
        }
    };
    let mut receiver = subscription.receiver;
    let room = subscription.room;
    tracing::debug!(user_id, "viewer connected");

    let outcome = async {
        socket.send(Message::Text(subscription.snapshot)).await?;
        let heartbeat = state.heartbeat;
        let mut pings = interval_at(Instant::now() + heartbeat.ping_interval, heartbeat.ping_interval);
        let mut last_heard = Instant::now();
        // The viewer link's access ends at its expiry, for open sockets too.
        let seconds_left = (expires_at - chrono::Utc::now().timestamp()).max(0) as u64;
        let link_expiry = tokio::time::sleep(Duration::from_secs(seconds_left));
        tokio::pin!(link_expiry);
        loop {
            tokio::select! {
                message = receiver.recv() => match message {
                    Ok(text) => socket.send(Message::Text(text)).await?,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::info!(user_id, missed, "viewer fell behind; sending a fresh snapshot");
                        let (snapshot, fresh) = room.resubscribe();
                        receiver = fresh;
                        socket.send(Message::Text(snapshot)).await?;
                    }
                    Err(RecvError::Closed) => {
                        socket.send(close(close_code::AWAY, "server shutting down")).await?;
                        return Ok(());
                    }
                },
                frame = socket.recv() => match frame {
                    None | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(Message::Pong(_) | Message::Ping(_))) => last_heard = Instant::now(),
                    Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                        socket.send(close(close_code::UNSUPPORTED, "clients send no messages on this socket")).await?;
                        return Ok(());
                    }
                    Some(Err(error)) => return Err(error),
                },
                _ = pings.tick() => {
                    if last_heard.elapsed() > heartbeat.dead_after {
                        tracing::debug!(user_id, "viewer stopped responding to pings; closing");
                        return Ok(());
                    }
                    socket.send(Message::Ping(Default::default())).await?;
                }
                () = &mut link_expiry => {
                    socket.send(close(close_code::POLICY, "viewer link expired; open a new link")).await?;
                    return Ok(());
                }
                () = state.shutdown.cancelled() => {
                    socket.send(close(close_code::AWAY, "server restarting; reconnect")).await?;
                    return Ok(());
                }
            }
        }
    }
    .await;
    if let Err(error) = outcome {
        tracing::debug!(user_id, %error, "viewer socket ended with an error");
    }

    drop(receiver);
    drop(room);
    state.rooms.leave(&user_id);
    tracing::debug!(user_id, "viewer disconnected");
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
