//! Helpers shared by the integration tests: a real server on a loopback port
//! with its own temporary database, an HTTP client, viewer WebSockets that
//! assemble the hypnogram the way a browser does, and the bundled nights.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sleep_dashboard::app::{RunningServer, ServerConfig};
use sleep_dashboard::auth::ViewerKeys;
use sleep_dashboard::storage::Durability;
use sleep_dashboard::ws::Heartbeat;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The Asleep API key the test servers accept.
pub const API_KEY: &str = "test-asleep-api-key";

/// The key the test servers sign viewer tokens with.
pub const SECRET: &str = "test-dashboard-secret";

/// Maximum wait for anything the server does asynchronously. It is generous
/// because CI machines can be slow, and passing tests return long before it.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server started in-process on `127.0.0.1:0` with a database in a
/// temporary folder, which is deleted when the value is dropped.
pub struct TestServer {
    pub server: RunningServer,
    pub client: reqwest::Client,
    pub database: PathBuf,
    folder: TempDir,
}

impl TestServer {
    /// Starts a server on a fresh, empty database.
    pub async fn start() -> Self {
        Self::start_with(Heartbeat::default()).await
    }

    /// Starts a server on a fresh, empty database with the given heartbeat.
    pub async fn start_with(heartbeat: Heartbeat) -> Self {
        Self::start_configured(|config| config.heartbeat = heartbeat).await
    }

    /// Starts a server on a fresh, empty database with the test settings
    /// as changed by `configure`.
    pub async fn start_configured(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let folder = tempfile::tempdir().expect("creating a temporary folder failed");
        let database = folder.path().join("events.sqlite3");
        let mut config = test_config(&database);
        configure(&mut config);
        let server = start_server(config).await;
        Self {
            server,
            client: browser_like_client(),
            database,
            folder,
        }
    }

    /// Shuts the server down and starts a new one on the same database file.
    pub async fn restart(self) -> Self {
        let Self {
            server,
            client,
            database,
            folder,
        } = self;
        server.shutdown().await;
        let server = start_server(test_config(&database)).await;
        Self {
            server,
            client,
            database,
            folder,
        }
    }

    /// Returns the absolute URL of `path_and_query` on this server.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.server.addr)
    }

    /// Returns a webhook request with a valid API key and a JSON content
    /// type but no `x-user-id` and no body, for tests that vary the rest.
    pub fn webhook(&self) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/asleep-webhook"))
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
    }

    /// Delivers `body` for `user_id` the way Asleep does and returns the
    /// status with the JSON body.
    pub async fn deliver(&self, user_id: &str, body: &str) -> JsonResponse {
        let response = self
            .webhook()
            .header("x-user-id", user_id)
            .body(body.to_string())
            .send()
            .await
            .expect("sending the webhook request failed");
        JsonResponse::read(response).await
    }

    /// Sends a GET request for `path_and_query` and returns the response.
    /// A page or download opened with a valid `?token=` answers `303` with
    /// the viewer cookie; this follows that redirect once, presenting the
    /// cookie, as a browser does, and returns the final response.
    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        let response = self
            .client
            .get(self.url(path_and_query))
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {path_and_query} failed: {error}"));
        let Some((location, cookie)) = token_exchange(&response) else {
            return response;
        };
        self.client
            .get(self.url(&location))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {location}, redirected from {path_and_query}, failed: {error}"))
    }

    /// Returns the body of a GET that must succeed with `200 OK`.
    pub async fn get_ok(&self, path_and_query: &str) -> String {
        let response = self.get(path_and_query).await;
        let status = response.status();
        let body = response.text().await.expect("reading the body failed");
        assert_eq!(status, StatusCode::OK, "GET {path_and_query}: {body}");
        body
    }

    /// Returns the report page of a session with a valid viewer token.
    pub async fn report_page(&self, user_id: &str, session_id: &str) -> String {
        let path = format!(
            "{}?token={}",
            sleep_dashboard::report::report_path(user_id, session_id),
            viewer_token(user_id)
        );
        self.get_ok(&path).await
    }

    /// Returns the JSON document of a session from the API with a valid
    /// viewer token.
    pub async fn api_document(&self, user_id: &str, session_id: &str) -> Value {
        let path = format!(
            "{}?token={}",
            sleep_dashboard::report::api_session_path(user_id, session_id),
            viewer_token(user_id)
        );
        let body = self.get_ok(&path).await;
        serde_json::from_str(&body).unwrap_or_else(|error| panic!("GET {path} is not JSON ({error}): {body}"))
    }

    /// Returns the number of rows in the event log.
    pub async fn event_count(&self) -> i64 {
        self.server
            .state
            .store
            .event_count()
            .await
            .expect("counting stored events failed")
    }

    /// Opens a viewer WebSocket for `user_id` with a valid token and reads
    /// the snapshot the server sends first.
    pub async fn viewer(&self, user_id: &str) -> Viewer {
        let url = self.ws_url(user_id, Some(&viewer_token(user_id)));
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|error| panic!("opening the viewer WebSocket for {user_id} failed: {error}"));
        let mut viewer = Viewer {
            socket,
            hypnogram: Hypnogram::default(),
        };
        let first = viewer.next_message().await;
        assert_eq!(
            first["type"], "snapshot",
            "the first message must be a snapshot: {first}"
        );
        viewer.hypnogram.apply(&first);
        viewer
    }

    /// Returns the WebSocket URL for `user_id`, with `token` when given.
    pub fn ws_url(&self, user_id: &str, token: Option<&str>) -> String {
        let mut url = format!("ws://{}/ws?user={}", self.server.addr, query_value(user_id));
        if let Some(token) = token {
            url.push_str(&format!("&token={}", query_value(token)));
        }
        url
    }

    /// Polls the number of live rooms until it equals `expected`.
    pub async fn wait_for_rooms(&self, expected: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let rooms = self.server.state.rooms.len();
            if rooms == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server still has {rooms} rooms after {WAIT:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts the server down and deletes its database.
    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// Returns the settings test servers start with.
fn test_config(database: &Path) -> ServerConfig {
    ServerConfig {
        database: database.to_path_buf(),
        durability: Durability::Normal,
        api_keys: vec![API_KEY.to_string()],
        dashboard_secret: SECRET.to_string(),
        static_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("static"),
        heartbeat: Heartbeat::default(),
        limits: Default::default(),
        stage_model: Default::default(),
        access: Default::default(),
    }
}

async fn start_server(config: ServerConfig) -> RunningServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port failed");
    let database = config.database.clone();
    RunningServer::start(config, listener)
        .await
        .unwrap_or_else(|error| panic!("starting the server on {} failed: {error}", database.display()))
}

/// Returns a viewer token for `user_id` that is valid for an hour.
pub fn viewer_token(user_id: &str) -> String {
    let expires_at = chrono::Utc::now().timestamp() + 3600;
    ViewerKeys::new(SECRET).issue(user_id, expires_at)
}

/// Returns a correctly signed viewer token for `user_id` that expired a
/// minute ago.
pub fn expired_token(user_id: &str) -> String {
    let expires_at = chrono::Utc::now().timestamp() - 60;
    ViewerKeys::new(SECRET).issue(user_id, expires_at)
}

/// Percent-encodes a query parameter value.
pub fn query_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A response with a JSON body, read whole.
#[derive(Debug)]
pub struct JsonResponse {
    pub status: StatusCode,
    pub body: Value,
}

impl JsonResponse {
    /// Reads a response whose body must be JSON.
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let text = response.text().await.expect("reading the response body failed");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("the {status} response is not JSON ({error}): {text:?}"));
        Self { status, body }
    }

    /// Returns the `error` message of an error response.
    pub fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("the {} response has no error message: {}", self.status, self.body))
    }

    /// Returns the `field` of an error response.
    pub fn field(&self) -> &str {
        self.body["field"]
            .as_str()
            .unwrap_or_else(|| panic!("the {} response names no field: {}", self.status, self.body))
    }
}

/// A viewer's WebSocket with the hypnogram assembled from its messages.
pub struct Viewer {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hypnogram: Hypnogram,
}

impl Viewer {
    /// Reads the next text message, skipping control frames, and fails when
    /// none arrives within [`WAIT`].
    pub async fn next_message(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no message from the server within {WAIT:?}"))
                .expect("the server closed the WebSocket")
                .expect("reading from the WebSocket failed");
            match frame {
                Message::Text(text) => {
                    return serde_json::from_str(&text).unwrap_or_else(|error| {
                        panic!("the server sent a message that is not JSON ({error}): {text}")
                    });
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Reads the next message, applies it to the hypnogram and returns it.
    pub async fn receive(&mut self) -> Value {
        let message = self.next_message().await;
        self.hypnogram.apply(&message);
        message
    }

    /// Asserts that no text message arrives within `quiet`.
    pub async fn assert_silent(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected no message, got {other:?}"),
            }
        }
    }

    /// Closes the socket with a normal close frame and waits for the
    /// server's close frame.
    pub async fn close(mut self) {
        self.socket.close(None).await.expect("sending the close frame failed");
        let drained = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = self.socket.next().await {} }).await;
        assert!(
            drained.is_ok(),
            "the server did not return the close frame within {WAIT:?}"
        );
    }

    /// Sends a text message, which the protocol does not allow clients to send.
    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text))
            .await
            .expect("sending a text message failed");
    }
}

/// The night as a browser assembles it from `snapshot`, `update` and
/// `session_complete` messages.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Hypnogram {
    pub session_id: Option<String>,
    pub sleep_stages: Vec<i64>,
    pub snoring_stages: Vec<i64>,
    pub complete: bool,
    pub report_url: Option<String>,
}

impl Hypnogram {
    /// Applies one server message, checking the fields a browser relies on.
    pub fn apply(&mut self, message: &Value) {
        match message["type"].as_str() {
            Some("snapshot") => {
                self.session_id = message["session_id"].as_str().map(str::to_string);
                self.sleep_stages = stages(message, "sleep_stages");
                self.snoring_stages = stages(message, "snoring_stages");
                assert_eq!(
                    self.sleep_stages.len(),
                    self.snoring_stages.len(),
                    "snapshot arrays differ in length: {message}"
                );
                self.complete = message["complete"]
                    .as_bool()
                    .expect("snapshot.complete must be a boolean");
                self.report_url = message["report_url"].as_str().map(str::to_string);
            }
            Some("update") => {
                let session_id = message["session_id"]
                    .as_str()
                    .expect("update.session_id must be a string");
                assert_eq!(
                    self.session_id.as_deref(),
                    Some(session_id),
                    "an update for another session arrived without a snapshot"
                );
                let start = message["start"].as_u64().expect("update.start must be an integer") as usize;
                let epoch_count = message["epoch_count"]
                    .as_u64()
                    .expect("update.epoch_count must be an integer") as usize;
                let sleep = stages(message, "sleep_stages");
                let snoring = stages(message, "snoring_stages");
                assert_eq!(sleep.len(), snoring.len(), "update arrays differ in length: {message}");
                assert!(
                    start + sleep.len() <= epoch_count,
                    "update writes epochs {start}..{} beyond epoch_count {epoch_count}",
                    start + sleep.len()
                );
                assert!(
                    epoch_count >= self.sleep_stages.len(),
                    "epoch_count {epoch_count} shrank the hypnogram of {} epochs",
                    self.sleep_stages.len()
                );
                self.sleep_stages.resize(epoch_count, -1);
                self.snoring_stages.resize(epoch_count, -1);
                self.sleep_stages[start..start + sleep.len()].copy_from_slice(&sleep);
                self.snoring_stages[start..start + snoring.len()].copy_from_slice(&snoring);
            }
            Some("session_complete") => {
                let session_id = message["session_id"]
                    .as_str()
                    .expect("session_complete.session_id must be a string");
                self.session_id = Some(session_id.to_string());
                self.sleep_stages = stages(message, "sleep_stages");
                self.snoring_stages = stages(message, "snoring_stages");
                self.complete = true;
                self.report_url = Some(
                    message["report_url"]
                        .as_str()
                        .expect("session_complete.report_url must be a string")
                        .to_string(),
                );
            }
            _ => panic!("unknown message type: {message}"),
        }
    }
}

/// Reads an array of stage values from a JSON object.
pub fn stages(object: &Value, name: &str) -> Vec<i64> {
    object[name]
        .as_array()
        .unwrap_or_else(|| panic!("{name} must be an array in {object}"))
        .iter()
        .map(|value| {
            value
                .as_i64()
                .unwrap_or_else(|| panic!("{name} contains a non-integer: {value}"))
        })
        .collect()
}

/// One bundled night: the deliveries in the order Asleep sent them and the
/// final hypnogram and statistics they should produce.
pub struct Night {
    pub name: &'static str,
    pub deliveries: Vec<Delivery>,
    pub truth: Value,
}

/// One stored webhook body.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The file name, for assertion messages.
    pub file: String,
    pub body: String,
    pub json: Value,
}

impl Delivery {
    pub fn event(&self) -> &str {
        self.json["event"]
            .as_str()
            .expect("every bundled delivery names its event")
    }

    pub fn is_inference(&self) -> bool {
        self.event() == "INFERENCE_COMPLETE"
    }

    /// Returns the object that contains the fields: `data` when enveloped, the
    /// top level when flat.
    pub fn fields(&self) -> &Value {
        self.json.get("data").unwrap_or(&self.json)
    }

    pub fn seq_num(&self) -> Option<u64> {
        self.fields()["seq_num"].as_u64()
    }
}

/// The bundled nights: one with enveloped bodies, one with flat ones.
pub const NIGHTS: [&str; 2] = ["night-enveloped", "night-flat"];

impl Night {
    /// Loads `tests/fixtures/NAME`: `events/NNN.json` in file-name order and
    /// `night.json`.
    pub fn load(name: &'static str) -> Self {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(folder.join("events"))
            .unwrap_or_else(|error| panic!("reading {}/events failed: {error}", folder.display()))
            .map(|entry| entry.expect("listing fixture files failed").path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name} has no deliveries");

        let deliveries = files
            .iter()
            .map(|path| {
                let body = std::fs::read_to_string(path)
                    .unwrap_or_else(|error| panic!("reading {} failed: {error}", path.display()));
                let json = serde_json::from_str(&body)
                    .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()));
                Delivery {
                    file: path.file_name().unwrap().to_string_lossy().into_owned(),
                    body,
                    json,
                }
            })
            .collect();
        let truth_path = folder.join("night.json");
        let truth = serde_json::from_str(
            &std::fs::read_to_string(&truth_path)
                .unwrap_or_else(|error| panic!("reading {} failed: {error}", truth_path.display())),
        )
        .unwrap_or_else(|error| panic!("{} is not JSON: {error}", truth_path.display()));
        Self {
            name,
            deliveries,
            truth,
        }
    }

    pub fn user_id(&self) -> &str {
        self.truth["user_id"].as_str().expect("night.json names the user")
    }

    pub fn session_id(&self) -> &str {
        self.truth["session_id"].as_str().expect("night.json names the session")
    }

    pub fn sleep_stages(&self) -> Vec<i64> {
        stages(&self.truth, "sleep_stages")
    }

    pub fn snoring_stages(&self) -> Vec<i64> {
        stages(&self.truth, "snoring_stages")
    }

    /// Returns the path of this night's report page, without a token.
    pub fn report_path(&self) -> String {
        format!(
            "/users/{}/sessions/{}",
            path_segment(self.user_id()),
            path_segment(self.session_id())
        )
    }

    /// Delivers every event in order and checks each is accepted.
    pub async fn replay(&self, server: &TestServer) {
        for delivery in &self.deliveries {
            let answer = server.deliver(self.user_id(), &delivery.body).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{} {}: {}",
                self.name,
                delivery.file,
                answer.body
            );
            assert_eq!(answer.body["status"], "accepted", "{} {}", self.name, delivery.file);
        }
    }
}

/// Percent-encodes an id as one URL path segment, leaving the characters
/// RFC 3986 calls unreserved.
pub fn path_segment(id: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(id, SEGMENT).to_string()
}

/// Returns an enveloped `INFERENCE_COMPLETE` body.
pub fn inference_body(user_id: &str, session_id: &str, seq_num: i64, sleep: &[i64], snoring: &[i64]) -> Value {
    json!({
        "event": "INFERENCE_COMPLETE",
        "version": "V3",
        "data": {
            "user_id": user_id,
            "session_id": session_id,
            "seq_num": seq_num,
            "inference_seq_num": seq_num / 10,
            "sleep_stages": sleep,
            "snoring_stages": snoring,
            "breath_stages": null,
        },
    })
}

/// Returns an enveloped `SESSION_COMPLETE` body for a night of
/// `sleep.len()` epochs starting at 2026-11-20T23:00:00Z.
pub fn session_body(user_id: &str, session_id: &str, sleep: &[i64], snoring: &[i64]) -> Value {
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-20T23:00:00+00:00").unwrap();
    let end = start + chrono::Duration::seconds(30 * sleep.len() as i64);
    json!({
        "event": "SESSION_COMPLETE",
        "version": "V3",
        "data": {
            "timezone": "UTC",
            "peculiarities": [],
            "missing_data_ratio": 0.0,
            "user_id": user_id,
            "session": {
                "id": session_id,
                "state": "COMPLETE",
                "start_time": start.to_rfc3339(),
                "end_time": end.to_rfc3339(),
                "sleep_stages": sleep,
                "snoring_stages": snoring,
                "breath_stages": null,
            },
            "stat": null,
        },
    })
}

/// Returns an enveloped `SESSION_COMPLETE` body for a night that starts at
/// `start` (RFC 3339) in the IANA zone `timezone` and lasts as long as its
/// hypnogram, with `stat: null` so every figure is computed by the server.
pub fn final_report_body(
    user_id: &str,
    session_id: &str,
    timezone: &str,
    start: &str,
    sleep: &[i64],
    snoring: &[i64],
    peculiarities: &[&str],
) -> Value {
    let start_time = chrono::DateTime::parse_from_rfc3339(start)
        .unwrap_or_else(|error| panic!("{start} is not an RFC 3339 time: {error}"));
    let end_time = start_time + chrono::Duration::seconds(30 * sleep.len() as i64);
    json!({
        "event": "SESSION_COMPLETE",
        "version": "V3",
        "data": {
            "timezone": timezone,
            "peculiarities": peculiarities,
            "missing_data_ratio": 0.0,
            "user_id": user_id,
            "session": {
                "id": session_id,
                "state": "COMPLETE",
                "start_time": start,
                "end_time": end_time.to_rfc3339(),
                "sleep_stages": sleep,
                "snoring_stages": snoring,
                "breath_stages": null,
            },
            "stat": null,
        },
    })
}

/// A second connection to a server's database file that holds SQLite's
/// write lock, as the `sqlite3` shell or a backup tool can. The server's
/// reads go on in WAL mode; its writes fail once their busy timeout ends.
pub struct DatabaseLock {
    connection: sqlx::SqliteConnection,
}

impl DatabaseLock {
    /// Opens `database` and takes the write lock with `BEGIN EXCLUSIVE`.
    pub async fn take(database: &Path) -> Self {
        use sqlx::Connection;

        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(database)
            .busy_timeout(WAIT);
        let mut connection = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap_or_else(|error| panic!("opening {} failed: {error}", database.display()));
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut connection)
            .await
            .expect("taking the write lock failed");
        Self { connection }
    }

    /// Ends the transaction, which releases the lock, and closes the
    /// connection.
    pub async fn release(mut self) {
        use sqlx::Connection;

        sqlx::query("ROLLBACK")
            .execute(&mut self.connection)
            .await
            .expect("releasing the write lock failed");
        self.connection
            .close()
            .await
            .expect("closing the locking connection failed");
    }
}

impl TestServer {
    /// Starts a server on a fresh, empty database with the test settings
    /// and the webhook `policy`.
    pub async fn start_with_webhook_policy(policy: sleep_dashboard::webhook::WebhookPolicy) -> Self {
        let folder = tempfile::tempdir().expect("creating a temporary folder failed");
        let database = folder.path().join("events.sqlite3");
        let guard = sleep_dashboard::webhook::WebhookGuard::new(policy).expect("the test's webhook policy is valid");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port failed");
        let server = RunningServer::start_with_webhook_guard(test_config(&database), guard, listener)
            .await
            .unwrap_or_else(|error| panic!("starting the server on {} failed: {error}", database.display()));
        Self {
            server,
            client: browser_like_client(),
            database,
            folder,
        }
    }
}

/// Returns an HTTP client that, like a browser, reports redirects to its
/// caller instead of following them without the cookies they set.
pub fn browser_like_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building the HTTP client failed")
}

/// Returns the `Location` and the `name=value` of the `Set-Cookie` of a
/// `303` token exchange, or `None` for any other response.
pub fn token_exchange(response: &reqwest::Response) -> Option<(String, String)> {
    if response.status() != StatusCode::SEE_OTHER {
        return None;
    }
    let location = response.headers().get("location")?.to_str().ok()?.to_string();
    let set_cookie = response.headers().get("set-cookie")?.to_str().ok()?;
    let cookie = set_cookie.split(';').next()?.trim().to_string();
    Some((location, cookie))
}

/// Returns a viewer token for `user_id` at token `version`, valid for an hour.
pub fn viewer_token_at(user_id: &str, version: u64) -> String {
    let expires_at = chrono::Utc::now().timestamp() + 3600;
    ViewerKeys::new(SECRET).issue_at(user_id, version, expires_at)
}

/// Sends `request` as written on a new connection, for requests an HTTP
/// client would normalize or refuse, and returns the status code and the
/// whole response. The request should ask for `Connection: close`.
pub async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = TcpStream::connect(addr).await.expect("connecting to the server failed");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("sending the request failed");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .unwrap_or_else(|_| panic!("the server did not answer and close within {WAIT:?}"))
        .expect("reading the response failed");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    (status, response)
}
