//! The viewer WebSocket: `GET /ws?user=U`, with the viewer cookie that the
//! pages set, or `GET /ws?user=U&token=T`.
//!
//! Before the upgrade, in this order: the `Origin` header must name this
//! server or an allowed origin, the viewer must hold a valid token for the
//! user, and the connection limits must have room. A browser always sends
//! `Origin` with an upgrade, so a request without one comes from another
//! kind of client and must carry its token in the query: the cookie is
//! accepted only beside an allowed `Origin`, because cookies are what a
//! cross-site page could make a browser send. After the upgrade, the client
//! receives a snapshot, then the room's messages. Clients send nothing but
//! control frames; the server pings idle sockets, closes those that stop
//! responding, and closes as slow those that stop reading.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, interval_at};

use crate::app::{AppState, Limits};
use crate::auth::{TokenError, cookie_name, cookie_value};
use crate::error::{AppError, RETRY_AFTER_SECONDS};
use crate::metrics::CloseReason;

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

/// Largest message a client may send. Clients send only pongs and close
/// frames, so a small limit keeps a hostile client from making the server
/// buffer much; a larger message is closed with 1009 (message too big).
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 4 * 1024;

/// Largest message the WebSocket library buffers before handing it over,
/// above [`MAX_CLIENT_MESSAGE_BYTES`] so that most oversized messages reach
/// [`relay`] and are rejected by a typed check rather than a library error.
const MAX_BUFFERED_MESSAGE_BYTES: usize = 64 * 1024;

/// Initial capacity of each socket's read buffer. Clients send only control
/// frames of at most 131 bytes with their headers, so the library's 128 KiB
/// default would reserve memory that is never used, for every open socket.
/// The buffer grows when a larger frame arrives, up to
/// [`MAX_BUFFERED_MESSAGE_BYTES`].
const READ_BUFFER_BYTES: usize = 512;

/// Maximum wait for a close frame to be written. It is a few bytes, so it
/// fits unless the client stopped reading altogether.
const CLOSE_FRAME_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
pub struct WsQuery {
    user: String,
    token: Option<String>,
}

/// Checks the request's origin, the viewer's token for the requested user
/// and the connection limits, then upgrades.
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let origin = match state.access.check_origin(&headers) {
        Ok(origin) => origin,
        Err(error) => {
            tracing::debug!(%error, "viewer socket rejected for its origin");
            return Ok(forbidden(&error.to_string()));
        }
    };
    let Query(query) = query.map_err(|rejection| {
        AppError::BadQuery(format!("expected ?user=USER_ID&token=TOKEN: {}", rejection.body_text()))
    })?;
    let cookie = cookie_value(&headers, &cookie_name(&query.user));
    let token = match (query.token.as_deref(), origin, cookie) {
        (Some(token), _, _) => Some(token),
        (None, Some(_), cookie) => cookie,
        (None, None, Some(_)) => {
            return Ok(forbidden(
                "a viewer cookie is accepted only with an Origin header of this server; \
                 clients other than browsers pass ?token=",
            ));
        }
        (None, None, None) => None,
    };
    let expires_at = state.authorize_viewer(&query.user, token).await?;
    let access = Access {
        token: token.unwrap_or_default().to_string(),
        expires_at,
    };
    let ws = ws.map_err(|rejection| AppError::BadQuery(rejection.body_text()))?;
    let slot = match state.viewer_slots.acquire(&query.user) {
        Ok(slot) => slot,
        Err(full) => return Ok(full.into_response()),
    };
    let tracked = state.tracker.enter();
    Ok(ws
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(MAX_BUFFERED_MESSAGE_BYTES)
        .max_frame_size(MAX_BUFFERED_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            serve_viewer(state, query.user, access, socket).await;
            drop((slot, tracked));
        }))
}

/// The viewer's token and when its access ends, in Unix seconds.
struct Access {
    token: String,
    expires_at: i64,
}

/// Checks whether the viewer's links were revoked since the socket opened,
/// which open sockets learn within a second of any revocation, and again
/// at every ping. A database that cannot be read keeps the socket open: the
/// check is repeated at the next ping.
async fn revoked(state: &AppState, user_id: &str, access: &Access) -> bool {
    matches!(
        state.authorize_viewer(user_id, Some(&access.token)).await,
        Err(AppError::Token(TokenError::Revoked))
    )
}

/// Returns 403 with a JSON error, sent before the upgrade.
fn forbidden(message: &str) -> Response {
    (StatusCode::FORBIDDEN, Json(json!({ "error": message }))).into_response()
}

/// Serves one viewer until it leaves, a limit or the link's expiry closes
/// it, or the server shuts down.
async fn serve_viewer(state: AppState, user_id: String, access: Access, mut socket: WebSocket) {
    state.metrics.ws_connections.inc();
    tracing::debug!(user_id, "viewer connected");

    let ending = tokio::select! {
        ending = relay(&state, &user_id, &access, &mut socket) => ending,
        () = state.cut_off.cancelled() => Ending::CutOff,
    };
    match ending {
        Ending::Left => tracing::debug!(user_id, "viewer left"),
        Ending::Failed(error) => tracing::debug!(user_id, %error, "viewer socket failed"),
        Ending::CutOff => tracing::debug!(user_id, "viewer socket cut off at the end of the shutdown grace"),
        Ending::Unavailable => {
            let _ = send_close(
                &mut socket,
                close_code::ERROR,
                "the night could not be loaded; reconnect later",
            )
            .await;
        }
        Ending::Slow => {
            // The socket accepts nothing, so no close frame could get through.
            tracing::info!(user_id, "viewer stopped reading; closing it as slow");
            state.metrics.count_closed(CloseReason::Slow);
        }
        Ending::Dead => {
            tracing::debug!(user_id, "viewer stopped responding to pings; closing");
            state.metrics.count_closed(CloseReason::Dead);
        }
        Ending::Close { reason, code, message } => {
            state.metrics.count_closed(reason);
            match send_close(&mut socket, code, message).await {
                Ok(()) => tracing::debug!(user_id, code, message, "closed the viewer socket"),
                Err(SendFailure::Slow) => tracing::debug!(user_id, code, "the close frame did not fit; dropping"),
                Err(SendFailure::Failed(error)) => {
                    tracing::debug!(user_id, code, %error, "sending the close frame failed")
                }
            }
        }
    }

    // The receiver was dropped with `relay`'s future, so leaving can remove the room.
    drop(socket);
    state.rooms.leave(&user_id);
    state.metrics.rooms.set(state.rooms.len() as i64);
    state.metrics.ws_connections.dec();
}

/// The reason a viewer socket ended.
enum Ending {
    /// The client closed the socket or the connection.
    Left,
    /// Reading or writing failed, such as on a reset connection.
    Failed(axum::Error),
    /// The shutdown grace ended while the socket was still open.
    CutOff,
    /// The night could not be loaded from the database.
    Unavailable,
    /// A send did not complete within the send timeout.
    Slow,
    /// Nothing arrived within the dead-socket timeout.
    Dead,
    /// The server closes the socket with a close frame.
    Close {
        reason: CloseReason,
        code: u16,
        message: &'static str,
    },
}

impl From<SendFailure> for Ending {
    fn from(failure: SendFailure) -> Self {
        match failure {
            SendFailure::Slow => Ending::Slow,
            SendFailure::Failed(error) => Ending::Failed(error),
        }
    }
}

/// Sends the snapshot and then the room's messages, pings the client, and
/// watches what it sends, until one of the [`Ending`]s.
async fn relay(state: &AppState, user_id: &str, access: &Access, socket: &mut WebSocket) -> Ending {
    let subscription = match state.rooms.subscribe(user_id).await {
        Ok(subscription) => subscription,
        Err(error) => {
            tracing::error!(user_id, %error, "loading the live night failed");
            return Ending::Unavailable;
        }
    };
    state.metrics.rooms.set(state.rooms.len() as i64);
    let mut receiver = subscription.receiver;
    let room = subscription.room;
    let send_timeout = state.limits.ws_send_timeout;

    if let Err(failure) = send(socket, Message::Text(subscription.snapshot), send_timeout).await {
        return failure.into();
    }
    let heartbeat = state.heartbeat;
    let mut pings = interval_at(Instant::now() + heartbeat.ping_interval, heartbeat.ping_interval);
    let mut last_heard = Instant::now();
    // The viewer link's access ends at its expiry, for open sockets too.
    let seconds_left = (access.expires_at - chrono::Utc::now().timestamp()).max(0) as u64;
    let link_expiry = tokio::time::sleep(Duration::from_secs(seconds_left));
    tokio::pin!(link_expiry);

    let mut revocations = state.revocations.clone();
    revocations.mark_unchanged();
    // These two futures wait on notifiers that every socket of the server
    // shares, and each new one takes that notifier's lock to register. They
    // are created once rather than once per message, so a room of thousands
    // does not queue on those locks at every update.
    let revocation_changes = futures_util::stream::unfold(revocations, |mut revocations| async move {
        revocations.changed().await.ok()?;
        Some(((), revocations))
    })
    .fuse();
    tokio::pin!(revocation_changes);
    let shutting_down = state.shutdown.cancelled();
    tokio::pin!(shutting_down);

    loop {
        let outgoing = tokio::select! {
            Some(()) = revocation_changes.next() => {
                if revoked(state, user_id, access).await {
                    return Ending::Close {
                        reason: CloseReason::Expired,
                        code: close_code::POLICY,
                        message: "viewer link revoked; ask for a new link",
                    };
                }
                continue;
            }
            message = receiver.recv() => match message {
                Ok(text) => Message::Text(text),
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(user_id, missed, "viewer fell behind; sending a fresh snapshot");
                    state.metrics.lag_snapshots.inc();
                    let (snapshot, fresh) = room.resubscribe();
                    receiver = fresh;
                    Message::Text(snapshot)
                }
                Err(RecvError::Closed) => return Ending::Close {
                    reason: CloseReason::Shutdown,
                    code: close_code::AWAY,
                    message: "server shutting down",
                },
            },
            frame = socket.recv() => match frame {
                None | Some(Ok(Message::Close(_))) => return Ending::Left,
                Some(Ok(Message::Pong(_) | Message::Ping(_))) => {
                    last_heard = Instant::now();
                    continue;
                }
                Some(Ok(Message::Text(text))) => return unexpected_message(text.len()),
                Some(Ok(Message::Binary(bytes))) => return unexpected_message(bytes.len()),
                Some(Err(error)) => return read_error(error),
            },
            _ = pings.tick() => {
                if last_heard.elapsed() > heartbeat.dead_after {
                    return Ending::Dead;
                }
                if revoked(state, user_id, access).await {
                    return Ending::Close {
                        reason: CloseReason::Expired,
                        code: close_code::POLICY,
                        message: "viewer link revoked; ask for a new link",
                    };
                }
                Message::Ping(Default::default())
            }
            () = &mut link_expiry => return Ending::Close {
                reason: CloseReason::Expired,
                code: close_code::POLICY,
                message: "viewer link expired; open a new link",
            },
            () = &mut shutting_down => return Ending::Close {
                reason: CloseReason::Shutdown,
                code: close_code::AWAY,
                message: "server restarting; reconnect",
            },
        };
        if let Err(failure) = send(socket, outgoing, send_timeout).await {
            return failure.into();
        }
    }
}

/// Returns the ending for a data message, which clients must not send:
/// 1009 when it is larger than the limit, 1003 otherwise.
fn unexpected_message(length: usize) -> Ending {
    if length > MAX_CLIENT_MESSAGE_BYTES {
        Ending::Close {
            reason: CloseReason::Protocol,
            code: close_code::SIZE,
            message: "message too big; clients send no messages on this socket",
        }
    } else {
        Ending::Close {
            reason: CloseReason::Protocol,
            code: close_code::UNSUPPORTED,
            message: "clients send no messages on this socket",
        }
    }
}

/// Returns the ending for a failed read: a close frame for a client that
/// broke the protocol, or [`Ending::Failed`] for a broken connection.
///
/// NOTE: axum does not expose tungstenite's error type, so the kind of error
/// is read from tungstenite 0.29's messages ("Space limit exceeded: …" for a
/// message above [`MAX_BUFFERED_MESSAGE_BYTES`], "WebSocket protocol error:
/// …", "UTF-8 encoding error: …"). Another wording ends the socket without
/// a close frame; `tests/live.rs` checks the 1009 case.
fn read_error(error: axum::Error) -> Ending {
    let text = error.to_string();
    let (code, message) = if text.starts_with("Space limit exceeded") {
        (
            close_code::SIZE,
            "message too big; clients send no messages on this socket",
        )
    } else if text.contains("Connection reset without closing handshake") {
        // The client vanished, as a closed laptop does; it broke no rule.
        return Ending::Left;
    } else if text.starts_with("WebSocket protocol error") {
        (close_code::PROTOCOL, "invalid WebSocket frame")
    } else if text.starts_with("UTF-8 encoding error") {
        (close_code::INVALID, "text frame is not valid UTF-8")
    } else {
        return Ending::Failed(error);
    };
    tracing::debug!(error = %text, "viewer broke the WebSocket protocol");
    Ending::Close {
        reason: CloseReason::Protocol,
        code,
        message,
    }
}

/// The reason a send failed.
enum SendFailure {
    /// The client did not take the message within the send timeout.
    Slow,
    Failed(axum::Error),
}

/// Sends one message, giving up after `limit`. Each send waits until the
/// message is written to the connection, so a viewer holds at most the
/// message being sent besides what the room's channel keeps for everyone.
async fn send(socket: &mut WebSocket, message: Message, limit: Duration) -> Result<(), SendFailure> {
    match tokio::time::timeout(limit, socket.send(message)).await {
        Err(_) => Err(SendFailure::Slow),
        Ok(Err(error)) => Err(SendFailure::Failed(error)),
        Ok(Ok(())) => Ok(()),
    }
}

/// Sends a close frame and waits, within [`CLOSE_FRAME_TIMEOUT`], for the
/// client's reply. Closing the connection while the client's frames are
/// still unread would make the kernel reset it, and a reset can discard the
/// close frame before the client reads it.
async fn send_close(socket: &mut WebSocket, code: u16, reason: &'static str) -> Result<(), SendFailure> {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    send(socket, frame, CLOSE_FRAME_TIMEOUT).await?;
    let _ = tokio::time::timeout(CLOSE_FRAME_TIMEOUT, async {
        while let Some(Ok(frame)) = socket.recv().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    Ok(())
}

/// Open viewer sockets per user and in total, held within
/// [`Limits::ws_per_user`] and [`Limits::ws_total`].
pub struct ViewerSlots {
    limits: Limits,
    /// A `std` mutex: the critical sections are a map lookup and never await.
    counts: Mutex<SlotCounts>,
}

#[derive(Default)]
struct SlotCounts {
    total: usize,
    /// Users with at least one slot; a user's entry goes with its last slot,
    /// so the map does not grow with every user ever seen.
    per_user: HashMap<String, usize>,
}

impl ViewerSlots {
    /// Creates an empty set of slots within `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            counts: Mutex::new(SlotCounts::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotCounts> {
        // The counts are updated in single statements, so a panic elsewhere
        // cannot leave them half-changed.
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot for one of `user_id`'s viewers, or names the limit that
    /// is reached.
    pub fn acquire(self: &Arc<Self>, user_id: &str) -> Result<ViewerSlot, SlotsFull> {
        let mut counts = self.lock();
        if counts.total >= self.limits.ws_total {
            return Err(SlotsFull::Total(self.limits.ws_total));
        }
        let user_count = counts.per_user.get(user_id).copied().unwrap_or(0);
        if user_count >= self.limits.ws_per_user {
            return Err(SlotsFull::PerUser(self.limits.ws_per_user));
        }
        counts.total += 1;
        counts.per_user.insert(user_id.to_string(), user_count + 1);
        Ok(ViewerSlot {
            slots: Arc::clone(self),
            user_id: user_id.to_string(),
        })
    }

    /// Returns the number of slots taken, in total and by `user_id`.
    pub fn taken(&self, user_id: &str) -> (usize, usize) {
        let counts = self.lock();
        (counts.total, counts.per_user.get(user_id).copied().unwrap_or(0))
    }
}

/// One viewer's slot, given back when dropped.
pub struct ViewerSlot {
    slots: Arc<ViewerSlots>,
    user_id: String,
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.lock();
        counts.total -= 1;
        if let Some(count) = counts.per_user.get_mut(&self.user_id) {
            *count -= 1;
            if *count == 0 {
                counts.per_user.remove(&self.user_id);
            }
        }
    }
}

/// A WebSocket upgrade rejected because a connection limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotsFull {
    /// The user already has this many viewer sockets open.
    PerUser(usize),
    /// The server already has this many viewer sockets open.
    Total(usize),
}

impl SlotsFull {
    /// Returns the flag that sets the limit, which also names it in the response.
    pub fn flag(self) -> &'static str {
        match self {
            SlotsFull::PerUser(_) => "--ws-max-per-user",
            SlotsFull::Total(_) => "--ws-max-total",
        }
    }
}

impl std::fmt::Display for SlotsFull {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotsFull::PerUser(limit) => write!(
                formatter,
                "this user already has {limit} live connections open, the limit; retry later"
            ),
            SlotsFull::Total(limit) => write!(
                formatter,
                "the server already has {limit} live connections open, the limit; retry later"
            ),
        }
    }
}

impl IntoResponse for SlotsFull {
    /// 503 with `Retry-After` and a JSON body naming the limit, sent before
    /// the upgrade so the socket is never opened.
    fn into_response(self) -> Response {
        let body = json!({ "error": self.to_string(), "limit": self.flag() });
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_both_limits() {
        let limits = Limits {
            ws_per_user: 2,
            ws_total: 3,
            ..Limits::default()
        };
        let slots = Arc::new(ViewerSlots::new(limits));
        let first = slots.acquire("a").unwrap();
        let _second = slots.acquire("a").unwrap();
        assert_eq!(slots.acquire("a").err(), Some(SlotsFull::PerUser(2)));
        let _third = slots.acquire("b").unwrap();
        assert_eq!(slots.acquire("c").err(), Some(SlotsFull::Total(3)));

        drop(first);
        assert_eq!(slots.taken("a"), (2, 1));
        let _again = slots.acquire("c").unwrap();
    }

    #[test]
    fn released_user_leaves_the_map() {
        let slots = Arc::new(ViewerSlots::new(Limits::default()));
        let slot = slots.acquire("gone").unwrap();
        drop(slot);
        assert_eq!(slots.taken("gone"), (0, 0));
        assert!(slots.lock().per_user.is_empty());
    }

    #[test]
    fn read_errors_map_to_close_codes() {
        let cases = [
            (
                "Space limit exceeded: Message too long: 70000 > 65536",
                Some(close_code::SIZE),
            ),
            (
                "WebSocket protocol error: Reserved bits are non-zero",
                Some(close_code::PROTOCOL),
            ),
            (
                "UTF-8 encoding error: invalid utf-8 sequence",
                Some(close_code::INVALID),
            ),
            ("IO error: Connection reset by peer (os error 104)", None),
        ];
        let reset = "WebSocket protocol error: Connection reset without closing handshake";
        assert!(
            matches!(read_error(axum::Error::new(std::io::Error::other(reset))), Ending::Left),
            "a vanished client is not counted as breaking the protocol"
        );
        for (text, expected) in cases {
            let code = match read_error(axum::Error::new(std::io::Error::other(text))) {
                Ending::Close { code, reason, .. } => {
                    assert_eq!(reason, CloseReason::Protocol);
                    Some(code)
                }
                _ => None,
            };
            assert_eq!(code, expected, "{text}");
        }
    }
}
