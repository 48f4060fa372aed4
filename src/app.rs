//! The server: shared state, routes, and a running instance that shuts down
//! in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::auth::{TokenError, ViewerKeys};
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::pages::PageError;
use crate::rooms::Rooms;
use crate::statistics::StageModel;
use crate::storage::{Durability, StorageError, Store};
use crate::ws::Heartbeat;
use crate::{pages, webhook, ws};

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
}

/// State shared by every handler: cheap to clone, all `Arc`s inside.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub rooms: Arc<Rooms>,
    pub api_keys: Arc<Vec<String>>,
    pub viewer_keys: ViewerKeys,
    /// Cancelled when the server begins to shut down, so long-lived sockets
    /// close with 1001 and browsers reconnect.
    pub shutdown: CancellationToken,
    pub heartbeat: Heartbeat,
    pub stage_model: StageModel,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Checks that `token` grants access to `user_id`'s nights and returns
    /// when that access ends, in Unix seconds.
    pub fn authorize_viewer(&self, user_id: &str, token: Option<&str>) -> Result<i64, AppError> {
        let token = token.ok_or(TokenError::Missing)?;
        let now = chrono::Utc::now().timestamp();
        self.viewer_keys.verify(token, user_id, now).map_err(|error| {
            tracing::debug!(user_id, %error, "viewer token rejected");
            AppError::Token(error)
        })
    }
}

/// Builds the router with every route and layer.
pub fn router(state: AppState, static_dir: PathBuf) -> Router {
    Router::new()
        .route(
            "/asleep-webhook",
            post(webhook::receive).layer(DefaultBodyLimit::max(webhook::MAX_BODY_BYTES)),
        )
        .route("/ws", get(ws::upgrade))
        .merge(pages::routes())
        .nest_service("/static", ServeDir::new(static_dir))
        .fallback(|| async { PageError(AppError::NotFound("page".to_string())) })
        // Spans name the path only: query strings carry viewer tokens.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
        }))
        .with_state(state)
}

/// A server accepting connections, with a handle to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    task: JoinHandle<std::io::Result<()>>,
}

/// Maximum wait for in-flight requests when shutting down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl RunningServer {
    /// Opens the database and starts serving on `listener`.
    pub async fn start(config: ServerConfig, listener: TcpListener) -> Result<Self, StorageError> {
        let store = Store::open(&config.database, config.durability).await?;
        let state = AppState {
            rooms: Arc::new(Rooms::new(store.clone(), config.stage_model)),
            store,
            api_keys: Arc::new(config.api_keys),
            viewer_keys: ViewerKeys::new(&config.dashboard_secret),
            shutdown: CancellationToken::new(),
            heartbeat: config.heartbeat,
            stage_model: config.stage_model,
            metrics: Arc::new(Metrics::new()),
        };
        let addr = listener.local_addr().map_err(sqlx::Error::Io)?;
        let app = router(state.clone(), config.static_dir);
        let shutdown = state.shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
        Ok(Self { addr, state, task })
    }

    /// Stops accepting connections, closes viewer sockets with 1001, waits
    /// for in-flight requests, and closes the database.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        match tokio::time::timeout(SHUTDOWN_GRACE, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::error!(%error, "server stopped with an error"),
            Ok(Err(error)) => tracing::error!(%error, "server task failed"),
            Err(_) => tracing::warn!(
                seconds = SHUTDOWN_GRACE.as_secs(),
                "in-flight requests did not finish in time"
            ),
        }
        self.state.store.close().await;
    }

    /// Waits until the server stops by itself, which happens only on error.
    pub async fn wait(&mut self) -> std::io::Result<()> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(error) => Err(std::io::Error::other(error)),
        }
    }
}
