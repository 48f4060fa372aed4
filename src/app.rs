//! The server: shared state, routes, limits, and a running instance that
//! shuts down in order.

mod connection;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::auth::{AccessConfig, TokenError, ViewerKeys};
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::pages::PageError;
use crate::payload::check_id;
use crate::rooms::Rooms;
use crate::statistics::StageModel;
use crate::storage::{Durability, StorageError, Store};
use crate::webhook::{WebhookGuard, WebhookPolicy};
use crate::ws::{Heartbeat, ViewerSlots};
use crate::{pages, webhook, ws};

pub use connection::{Tracker, TrackerGuard};

/// Settings a server starts with.
#[derive(Clone)]
pub struct ServerConfig {
    pub database: PathBuf,
    pub durability: Durability,
    /// Asleep API keys accepted in `x-api-key`.
    pub api_keys: Vec<String>,
    /// Key for viewer tokens.
    pub dashboard_secret: String,
    /// Folder served under `/static`.
    pub static_dir: PathBuf,
    /// Ping interval and dead-socket timeout of viewer WebSockets.
    pub heartbeat: Heartbeat,
    /// How stage codes are read.
    pub stage_model: StageModel,
    /// Sizes, timeouts and connection counts one client may use.
    pub limits: Limits,
    /// Public origin, further allowed origins, and the admin secret.
    pub access: AccessConfig,
}

/// Bounds on what clients can make the server hold, each set by a `serve`
/// flag. A client that reaches one gets an error response or is
/// disconnected, so a stuck or hostile client cannot exhaust memory, file
/// descriptors or tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body in bytes; a larger one gets 413.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) in bytes; a larger
    /// one gets 431 and the connection is closed.
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers, counted from its first
    /// byte, and then again its body. A stalled head closes the connection,
    /// and a stalled webhook body is rejected with 408.
    pub request_timeout: Duration,
    /// Time an HTTP connection may stay open with no request in progress.
    pub idle_timeout: Duration,
    /// Open viewer WebSockets per user; a further upgrade gets 503.
    pub ws_per_user: usize,
    /// Open viewer WebSockets in total; a further upgrade gets 503.
    pub ws_total: usize,
    /// Time one message to a viewer may take to send. A viewer that does
    /// not read for this long is closed as slow.
    pub ws_send_timeout: Duration,
    /// Time shutdown waits for in-flight requests before cutting them off.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// Largest value accepted for [`Limits::max_header_bytes`]: hyper's read
    /// buffer for a connection holds at most about 400 KiB, and a head
    /// larger than the buffer is rejected whatever this limit says.
    pub const MAX_HEADER_BYTES_CEILING: usize = 256 * 1024;

    /// Smallest value accepted for [`Limits::max_header_bytes`], which
    /// leaves room for a browser's ordinary headers and a viewer token.
    pub const MAX_HEADER_BYTES_FLOOR: usize = 1024;

    /// Checks that the limits can work together, and names the flag of the
    /// first that cannot.
    pub fn validate(&self) -> Result<(), String> {
        let durations = [
            ("--request-timeout", self.request_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--ws-send-timeout", self.ws_send_timeout),
            ("--shutdown-grace", self.shutdown_grace),
        ];
        if let Some((flag, _)) = durations.iter().find(|(_, duration)| duration.is_zero()) {
            return Err(format!("{flag} must be above zero"));
        }
        if self.max_body_bytes == 0 {
            return Err("--max-body-size must be above zero".to_string());
        }
        if !(Self::MAX_HEADER_BYTES_FLOOR..=Self::MAX_HEADER_BYTES_CEILING).contains(&self.max_header_bytes) {
            return Err(format!(
                "--max-header-size {} is out of range: give {} to {} bytes",
                self.max_header_bytes,
                Self::MAX_HEADER_BYTES_FLOOR,
                Self::MAX_HEADER_BYTES_CEILING
            ));
        }
        if self.ws_per_user == 0 || self.ws_total == 0 {
            return Err("--ws-max-per-user and --ws-max-total must be above zero".to_string());
        }
        Ok(())
    }
}

impl Default for Limits {
    /// The defaults of the `serve` flags; `config::tests` checks that the
    /// two agree.
    fn default() -> Self {
        Self {
            max_body_bytes: webhook::MAX_BODY_BYTES,
            // Browsers send a few KiB at most; a viewer token adds about 100 bytes.
            max_header_bytes: 16 * 1024,
            request_timeout: webhook::BODY_READ_TIMEOUT,
            // Longer than the 60 s nginx keeps idle upstream connections by
            // default, so a reverse proxy closes an idle connection before this
            // server does and never sends a request into one being closed.
            idle_timeout: Duration::from_secs(120),
            // A household's browsers and tabs.
            ws_per_user: 16,
            // Below the soft limit of 1024 open files common on Linux, which
            // leaves descriptors for HTTP connections and the database.
            ws_total: 512,
            // A browser reads far faster; a viewer that accepts nothing for
            // this long holds a message and a room slot for nobody.
            ws_send_timeout: Duration::from_secs(10),
            // Below the 10 s after which `docker stop` and many supervisors
            // send SIGKILL, leaving time to close the database.
            shutdown_grace: Duration::from_secs(8),
        }
    }
}

/// State shared by every handler. Handlers clone it for every request, so
/// it is one `Arc`: a clone is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct SharedState {
    pub store: Store,
    pub rooms: Arc<Rooms>,
    pub api_keys: Arc<Vec<String>>,
    pub viewer_keys: ViewerKeys,
    /// Cancelled when the server begins to shut down, so connections drain
    /// and long-lived sockets close with 1001 and browsers reconnect.
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown grace is over: every connection and
    /// socket still open ends at once, without a response.
    pub cut_off: CancellationToken,
    /// Connections and viewer sockets that shutdown waits for.
    pub tracker: Arc<Tracker>,
    /// Open viewer sockets per user and in total, within the limits.
    pub viewer_slots: Arc<ViewerSlots>,
    pub limits: Limits,
    pub heartbeat: Heartbeat,
    pub stage_model: StageModel,
    pub metrics: Arc<Metrics>,
    /// Who may deliver to the webhook: failed-authentication limits per
    /// client address and the allow-list of user ids.
    pub webhook_guard: Arc<WebhookGuard>,
    /// Origins allowed to open the WebSocket, cookie security, admin secret.
    pub access: Arc<AccessConfig>,
    /// Changes whenever a user's viewer links are revoked, by this process
    /// or by `sleep-dashboard revoke`, so open sockets check at once.
    pub revocations: watch::Receiver<i64>,
}

impl AppState {
    /// Checks that `user_id` is a valid id and that `token` grants access to
    /// its nights at the user's current token version, and returns when that
    /// access ends, in Unix seconds. The version is read from the database
    /// on every call, so a revocation applies at once.
    pub async fn authorize_viewer(&self, user_id: &str, token: Option<&str>) -> Result<i64, AppError> {
        check_id(user_id, "user_id")?;
        let token = token.ok_or(TokenError::Missing)?;
        let now = chrono::Utc::now().timestamp();
        let checked = match self.viewer_keys.verify(token, user_id, now) {
            Ok(claims) => claims.check_version(self.store.viewer_version(user_id).await?),
            Err(error) => Err(error),
        };
        checked.map_err(|error| {
            tracing::debug!(user_id, %error, "viewer token rejected");
            AppError::Token(error)
        })
    }
}

/// Connections the kernel may hold complete but not yet accepted. When
/// thousands of viewers reconnect at once, as after a network outage, a
/// short queue drops their handshakes and each browser waits a second or
/// more to try again. Linux caps it at `net.core.somaxconn` (4096 by
/// default); tokio's own default is 1024.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `address` with [`LISTEN_BACKLOG`], reusing the
/// address as tokio's own `TcpListener::bind` does.
pub fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Builds the router with every route and layer.
pub fn router(state: AppState, static_dir: PathBuf) -> Router {
    let max_body_bytes = state.limits.max_body_bytes;
    Router::new()
        .route(
            "/asleep-webhook",
            post(webhook::receive).layer(DefaultBodyLimit::max(max_body_bytes)),
        )
        .route("/ws", get(ws::upgrade))
        .merge(crate::health::routes())
        .merge(pages::routes(&state))
        .merge(crate::admin::routes(&state))
        .nest_service("/static", ServeDir::new(static_dir))
        .fallback(|| async { PageError(AppError::NotFound("page".to_string())) })
        // A panicking handler answers 500 instead of dropping the connection.
        .layer(CatchPanicLayer::custom(panic_response))
        // Spans name the path only: query strings carry viewer tokens.
        // Failures log at debug: the handlers already log each error once,
        // rate-limited, with its ids.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        // Outermost, so every response the router produces carries them:
        // pages, static files, the webhook's answers, errors, 404s, panics,
        // /metrics and health. A handler may set a stricter policy, as the
        // operator view does. Responses hyper sends by itself (400 for an
        // unparsable request, 431 for an oversized head) carry none.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(pages::CONTENT_SECURITY_POLICY),
        ))
        .layer(security_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        // Page addresses can carry a viewer token, so none is passed on.
        .layer(security_header(header::REFERRER_POLICY, "no-referrer"))
        // For browsers without CSP's `frame-ancestors`.
        .layer(security_header(header::X_FRAME_OPTIONS, "DENY"))
        .with_state(state)
}

fn security_header(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

/// How often the database is checked for revocations that `sleep-dashboard
/// revoke` made from another process.
const REVOCATION_POLL: Duration = Duration::from_secs(1);

/// Starts a task that polls the database for revocations until shutdown and
/// returns a receiver that changes with each one.
async fn watch_revocations(store: Store, shutdown: CancellationToken) -> Result<watch::Receiver<i64>, StorageError> {
    let (sender, receiver) = watch::channel(store.revocation_count().await?);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(REVOCATION_POLL) => {}
                () = shutdown.cancelled() => return,
            }
            match store.revocation_count().await {
                Ok(count) => {
                    sender.send_if_modified(|current| std::mem::replace(current, count) != count);
                }
                Err(error) => {
                    if let Some(suppressed) = crate::warnings::admit("revocation check failed", &error.to_string()) {
                        tracing::warn!(%error, suppressed, "checking for revoked viewer links failed; retrying");
                    }
                }
            }
        }
    });
    Ok(receiver)
}

/// Logs a handler's panic and answers it like any internal error.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    AppError::Internal(format!("a request handler panicked: {message}")).into_response()
}

/// A server accepting connections, with a handle to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    task: JoinHandle<std::io::Result<()>>,
    /// Cancelled first on shutdown: the listener closes before anything
    /// else is told, so no client that sees the shutdown can still connect.
    stop_accepting: CancellationToken,
}

impl RunningServer {
    /// Opens the database and starts serving on `listener`, with the
    /// default [`WebhookPolicy`].
    pub async fn start(config: ServerConfig, listener: TcpListener) -> Result<Self, StorageError> {
        let guard = WebhookGuard::new(WebhookPolicy::default()).expect("the default webhook policy is valid");
        Self::start_with_webhook_guard(config, guard, listener).await
    }

    /// Opens the database and starts serving on `listener`, admitting
    /// webhook requests by `webhook_guard`.
    pub async fn start_with_webhook_guard(
        config: ServerConfig,
        webhook_guard: WebhookGuard,
        listener: TcpListener,
    ) -> Result<Self, StorageError> {
        let store = Store::open(&config.database, config.durability).await?;
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let revocations = watch_revocations(store.clone(), shutdown.clone()).await?;
        let state = AppState(Arc::new(SharedState {
            rooms: Arc::new(Rooms::new(store.clone(), config.stage_model)),
            store,
            api_keys: Arc::new(config.api_keys),
            viewer_keys: ViewerKeys::new(&config.dashboard_secret),
            shutdown,
            cut_off: CancellationToken::new(),
            tracker: Arc::new(Tracker::default()),
            viewer_slots: Arc::new(ViewerSlots::new(config.limits)),
            limits: config.limits,
            heartbeat: config.heartbeat,
            stage_model: config.stage_model,
            metrics,
            access: Arc::new(config.access),
            webhook_guard: Arc::new(webhook_guard),
            revocations,
        }));
        let addr = listener.local_addr().map_err(sqlx::Error::Io)?;
        let app = router(state.clone(), config.static_dir);
        let stop_accepting = CancellationToken::new();
        let task = tokio::spawn(connection::accept_loop(
            listener,
            app,
            state.clone(),
            stop_accepting.clone(),
        ));
        Ok(Self {
            addr,
            state,
            task,
            stop_accepting,
        })
    }

    /// Shuts down in order: stops accepting connections, lets in-flight
    /// requests finish and closes viewer sockets with 1001, cuts off whatever
    /// is still open after [`Limits::shutdown_grace`], and closes the
    /// database. Returns within about the grace plus [`CUT_OFF_WAIT`].
    pub async fn shutdown(self) {
        let grace = self.state.limits.shutdown_grace;
        self.stop_accepting.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the accept loop stopped with an error"),
            Err(error) => tracing::error!(%error, "the accept loop failed"),
        }
        self.state.shutdown.cancel();
        let tracker = Arc::clone(&self.state.tracker);
        let drained = tokio::time::timeout(grace, tracker.wait_idle()).await;

        if drained.is_err() {
            tracing::warn!(
                open = tracker.active(),
                grace_seconds = grace.as_secs_f64(),
                "connections still open after the shutdown grace; cutting them off"
            );
            self.state.cut_off.cancel();
            if tokio::time::timeout(CUT_OFF_WAIT, tracker.wait_idle()).await.is_err() {
                tracing::warn!(open = tracker.active(), "connections did not end after being cut off");
            }
        }
        self.state.store.close().await;
        tracing::info!("server stopped");
    }

    /// Waits until the accept loop ends, which happens only after
    /// [`RunningServer::shutdown`] began or when its task fails.
    pub async fn wait(&mut self) -> std::io::Result<()> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(error) => Err(std::io::Error::other(error)),
        }
    }
}

/// Maximum wait for connections and sockets to end after they were cut off
/// at the end of the shutdown grace. Dropping a connection is immediate, so
/// this only covers tasks that are slow to be scheduled.
const CUT_OFF_WAIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_answers_500() {
        let response = panic_response(Box::new("index out of bounds".to_string()));
        assert_eq!(response.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let response = panic_response(Box::new(42));
        assert_eq!(response.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    }
}
