//! Attacks on the webhook: keys during a rotation, header spellings,
//! key guessing from one address, deliveries for users not on the
//! allow-list, and a search of everything the server writes for its
//! secrets after one of each kind of request at trace level.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::{API_KEY, TestServer, inference_body, raw_exchange};
use reqwest::StatusCode;
use serde_json::Value;
use sleep_dashboard::auth::ViewerKeys;
use sleep_dashboard::webhook::{ClientAddressSource, WebhookPolicy};

/// Returns the `index`th ten-epoch `INFERENCE_COMPLETE` body of a night.
fn delivery(user_id: &str, index: i64) -> String {
    inference_body(user_id, "night-1", 10 * index + 9, &[1; 10], &[0; 10]).to_string()
}

/// Posts `body` for `user_id` with `api_key`, optionally with an
/// `X-Forwarded-For` value, from `client`.
async fn post(
    client: &reqwest::Client,
    server: &TestServer,
    api_key: &str,
    forwarded_for: Option<&str>,
    user_id: &str,
    body: String,
) -> reqwest::Response {
    let mut request = client
        .post(server.url("/asleep-webhook"))
        .header("x-api-key", api_key)
        .header("x-user-id", user_id)
        .header("content-type", "application/json")
        .body(body);
    if let Some(value) = forwarded_for {
        request = request.header("x-forwarded-for", value);
    }
    request.send().await.expect("sending the webhook request failed")
}

/// A client whose connections come from `address`, one of the 127.0.0.0/8
/// addresses Linux routes to the loopback interface.
fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .expect("a 429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is a number of seconds")
}

#[tokio::test]
async fn rotated_keys_are_both_accepted() {
    let server = TestServer::start_configured(|config| {
        config.api_keys = vec!["old-key".to_string(), "new-key".to_string()];
    })
    .await;
    let client = reqwest::Client::new();

    for (seq_num, key) in [(0, "old-key"), (1, "new-key")] {
        let response = post(&client, &server, key, None, "alice", delivery("alice", seq_num)).await;
        assert_eq!(response.status(), StatusCode::OK, "{key}");
    }
    for key in ["third-key", "old-key,new-key", "old-ke", ""] {
        let response = post(&client, &server, key, None, "alice", delivery("alice", 2)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{key:?}");
    }
    assert_eq!(server.event_count().await, 2);
    server.stop().await;
}

#[test]
fn empty_key_in_list_is_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_sleep-dashboard"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ASLEEP_API_KEY", "a,,b")
        .env("DASHBOARD_SECRET", "s")
        .output()
        .expect("running the sleep-dashboard binary failed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a key list with an empty item must be rejected"
    );
    assert!(stderr.contains("ASLEEP_API_KEY"), "{stderr}");
    assert!(stderr.contains("item 2 of 3 is empty"), "{stderr}");
}

#[tokio::test]
async fn header_names_match_any_case() {
    let server = TestServer::start().await;
    let body = delivery("alice", 0);
    let request = |key_name: &str, key: &str, user_name: &str| {
        format!(
            "POST /asleep-webhook HTTP/1.1\r\nHost: localhost\r\n{key_name}: {key}\r\n{user_name}: alice\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };

    let (status, response) = raw_exchange(server.server.addr, &request("X-API-KEY", API_KEY, "X-User-Id")).await;
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("\"accepted\""), "{response}");
    let (status, response) = raw_exchange(server.server.addr, &request("x-Api-kEY", API_KEY, "X-USER-ID")).await;
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("\"duplicate\""), "{response}");
    let (status, response) = raw_exchange(server.server.addr, &request("X-API-KEY", "wrong", "X-User-Id")).await;
    assert_eq!(status, 401, "{response}");
    server.stop().await;
}

/// A policy that allows `limit` failed checks per `window`.
fn limited(limit: u32, window: Duration) -> WebhookPolicy {
    WebhookPolicy {
        auth_failure_limit: limit,
        auth_failure_window: window,
        ..WebhookPolicy::default()
    }
}

#[tokio::test]
async fn failed_keys_are_rate_limited() {
    let server = TestServer::start_with_webhook_policy(limited(3, Duration::from_secs(2))).await;
    let client = client_from("127.0.0.1");

    // Successes are never counted.
    for seq_num in 0..10 {
        let response = post(&client, &server, API_KEY, None, "alice", delivery("alice", seq_num)).await;
        assert_eq!(response.status(), StatusCode::OK, "delivery {seq_num}");
    }

    for attempt in 1..=3 {
        let response = post(&client, &server, "guess", None, "alice", delivery("alice", 10)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "failed check {attempt}");
    }
    let response = post(&client, &server, "guess", None, "alice", delivery("alice", 10)).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&response);
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["field"], "x-api-key");

    // The key is not even compared while the address is blocked.
    let response = post(&client, &server, API_KEY, None, "alice", delivery("alice", 10)).await;
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a correct key waits too"
    );

    // Another address is counted apart.
    let other = client_from("127.0.0.2");
    let response = post(&other, &server, API_KEY, None, "alice", delivery("alice", 11)).await;
    assert_eq!(response.status(), StatusCode::OK, "another address is unaffected");
    let response = post(&other, &server, "guess", None, "alice", delivery("alice", 12)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    tokio::time::sleep(Duration::from_secs(wait)).await;
    let response = post(&client, &server, API_KEY, None, "alice", delivery("alice", 12)).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the correct key works once Retry-After has passed"
    );
    assert_eq!(server.event_count().await, 12);
    server.stop().await;
}

#[tokio::test]
async fn trusted_header_names_client() {
    let policy = WebhookPolicy {
        client_address: ClientAddressSource::from_header_name("X-Forwarded-For").unwrap(),
        ..limited(2, Duration::from_secs(60))
    };
    let server = TestServer::start_with_webhook_policy(policy).await;
    let client = reqwest::Client::new();

    for forwarded in ["192.0.2.1", "6.6.6.6, 192.0.2.1"] {
        let response = post(
            &client,
            &server,
            "guess",
            Some(forwarded),
            "alice",
            delivery("alice", 0),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{forwarded}");
    }
    // The proxy appends the address it saw, so a client that sends its own
    // header cannot pose as another address: the last entry counts.
    for forwarded in ["192.0.2.1", "192.0.2.9, 192.0.2.1"] {
        let response = post(
            &client,
            &server,
            API_KEY,
            Some(forwarded),
            "alice",
            delivery("alice", 0),
        )
        .await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{forwarded}");
    }
    for forwarded in ["192.0.2.2", "192.0.2.1, 192.0.2.2"] {
        let response = post(
            &client,
            &server,
            API_KEY,
            Some(forwarded),
            "alice",
            delivery("alice", 0),
        )
        .await;
        assert!(response.status().is_success(), "{forwarded}: {}", response.status());
    }
    server.stop().await;
}

#[tokio::test]
async fn untrusted_header_is_ignored() {
    let server = TestServer::start_with_webhook_policy(limited(2, Duration::from_secs(60))).await;
    let client = reqwest::Client::new();

    for forwarded in ["192.0.2.1", "192.0.2.2"] {
        let response = post(
            &client,
            &server,
            "guess",
            Some(forwarded),
            "alice",
            delivery("alice", 0),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{forwarded}");
    }
    let response = post(
        &client,
        &server,
        API_KEY,
        Some("192.0.2.3"),
        "alice",
        delivery("alice", 0),
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "without --client-address-header the TCP peer counts"
    );
    server.stop().await;
}

#[tokio::test]
async fn allow_list_rejects_other_users() {
    let policy = WebhookPolicy {
        allowed_users: Some(Arc::new(HashSet::from(["alice".to_string()]))),
        ..WebhookPolicy::default()
    };
    let server = TestServer::start_with_webhook_policy(policy).await;

    let answer = server.deliver("mallory", &delivery("mallory", 0)).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{:?}", answer.body);
    assert_eq!(answer.field(), "x-user-id");
    assert!(answer.error().contains("mallory"), "{}", answer.error());
    assert_eq!(
        server.event_count().await,
        0,
        "nothing is stored for a user not allowed"
    );

    let answer = server.deliver("alice", &delivery("alice", 0)).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(server.event_count().await, 1);
    server.stop().await;
}

// Secrets at trace level.

/// Sentinels: values that appear nowhere else, so finding one anywhere
/// means a secret leaked.
const SENTINEL_KEY: &str = "sentinel-api-key-7f3c9a1e5b";
const SENTINEL_OLD_KEY: &str = "sentinel-old-api-key-2d8e4f6a";
const SENTINEL_WRONG_KEY: &str = "sentinel-wrong-api-key-9b1d3c5e";
const SENTINEL_SECRET: &str = "sentinel-dashboard-secret-4a6c8e0b2d4f6a8c0e2b4d6f";
const SENTINEL_ADMIN_SECRET: &str = "sentinel-admin-secret-1c3e5a7b9d1f3a5c7e9b1d3f5a";

/// The `serve` process with everything it writes to stdout and stderr.
struct Server {
    child: Child,
    addr: SocketAddr,
    output: Arc<Mutex<String>>,
}

impl Server {
    fn start(database: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sleep-dashboard"))
            .args(["serve", "--listen", "127.0.0.1:0", "--durability", "normal"])
            .arg("--database")
            .arg(database)
            .args(["--auth-failure-limit", "3"])
            .env("ASLEEP_API_KEY", format!("{SENTINEL_OLD_KEY}, {SENTINEL_KEY}"))
            .env("DASHBOARD_SECRET", SENTINEL_SECRET)
            .env("SLEEP_DASHBOARD_ADMIN_SECRET", SENTINEL_ADMIN_SECRET)
            .env("RUST_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the sleep-dashboard binary failed");

        let output = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let collected = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stdout).read_to_string(&mut text);
            collected.lock().unwrap().push_str(&text);
        });

        let stderr = child.stderr.take().unwrap();
        let collected = Arc::clone(&output);
        let (address_sender, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(address) = line.split_whitespace().find_map(|field| field.strip_prefix("address=")) {
                    let _ = address_sender.send(address.to_string());
                }
                let mut output = collected.lock().unwrap();
                output.push_str(&line);
                output.push('\n');
            }
        });
        let addr = address
            .recv_timeout(common::WAIT)
            .expect("the server did not log its address in time")
            .parse()
            .expect("the logged address is not an address");
        Self { child, addr, output }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the process with SIGTERM and waits for it to exit.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + common::WAIT;
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Everything the requests sent and the server returned that is secret.
#[derive(Default, Clone)]
struct Secrets {
    /// Values that may never appear in any output.
    values: Vec<(String, String)>,
}

impl Secrets {
    fn add(&mut self, what: &str, value: &str) {
        if !self.values.iter().any(|(_, known)| known == value) {
            self.values.push((what.to_string(), value.to_string()));
        }
    }

    /// Adds a viewer token and its signature alone, which a log that cut
    /// the token short would still show.
    fn add_token(&mut self, what: &str, token: &str) {
        self.add(what, token);
        if let Some(signature) = token.rsplit('.').next().filter(|signature| signature.len() >= 16) {
            self.add(&format!("{what} (signature)"), signature);
        }
    }

    /// Fails with every secret found in `text`, which came from `source`.
    fn assert_absent(&self, source: &str, text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        let found: Vec<&str> = self
            .values
            .iter()
            .filter(|(_, value)| text.contains(value.as_str()))
            .map(|(what, _)| what.as_str())
            .collect();
        assert!(found.is_empty(), "{source} contains {found:?}");
    }
}

/// Sends one request and returns its status, headers and body.
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = request.send().await.expect("sending a request failed");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    (status, headers, body)
}

#[tokio::test]
async fn secrets_stay_out_of_output() {
    let folder = tempfile::tempdir().unwrap();
    let database = folder.path().join("events.sqlite3");
    let mut server = Server::start(&database);
    let keys = ViewerKeys::new(SENTINEL_SECRET);
    let now = chrono::Utc::now().timestamp();
    let user = "sleeper";
    let session = "night-1";

    let mut secrets = Secrets::default();
    for (what, value) in [
        ("the API key", SENTINEL_KEY),
        ("the old API key", SENTINEL_OLD_KEY),
        ("a wrong API key", SENTINEL_WRONG_KEY),
        ("DASHBOARD_SECRET", SENTINEL_SECRET),
        ("the admin secret", SENTINEL_ADMIN_SECRET),
    ] {
        secrets.add(what, value);
    }
    let basic = |secret: &str| base64::engine::general_purpose::STANDARD.encode(format!("operator:{secret}"));
    secrets.add("the admin secret in Basic form", &basic(SENTINEL_ADMIN_SECRET));
    // Pages link to each other with the viewer's own token, and a cookie
    // carries it, so successful responses are searched only for these.
    let keys_and_secrets = secrets.clone();
    let valid = keys.issue(user, now + 3600);
    let expired = keys.issue(user, now - 60);
    let other_user = keys.issue("someone-else", now + 3600);
    let forged = ViewerKeys::new("not-the-secret").issue(user, now + 3600);
    secrets.add_token("a valid token", &valid);
    secrets.add_token("an expired token", &expired);
    secrets.add_token("another user's token", &other_user);
    secrets.add_token("a forged token", &forged);
    let tokens = [
        valid.clone(),
        expired.clone(),
        other_user,
        forged,
        "v2.garbage".to_string(),
    ];

    // No redirects are followed, so every Set-Cookie is seen.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let webhook = |key: &str, user_id: &str, body: String| {
        client
            .post(server.url("/asleep-webhook"))
            .header("x-api-key", key)
            .header("x-user-id", user_id)
            .header("content-type", "application/json")
            .body(body)
    };
    let mut responses = Vec::new();

    // Deliveries with each valid key, a final report, a duplicate, a bad payload.
    for (seq_num, key) in [(0, SENTINEL_OLD_KEY), (1, SENTINEL_KEY)] {
        let answer = send(webhook(key, user, delivery(user, seq_num))).await;
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
        responses.push(answer);
    }
    let report = common::session_body(user, session, &[0, 1, 1, 2, 3, 1], &[0; 6]).to_string();
    for body in [report, delivery(user, 1), "{\"event\": 1}".to_string()] {
        responses.push(send(webhook(SENTINEL_KEY, user, body)).await);
    }

    // Pages, API and exports with every kind of token, in the query and as
    // a cookie when the server hands one out.
    let paths = [
        format!("/users/{user}/live"),
        format!("/users/{user}"),
        format!("/users/{user}/sessions/{session}"),
        format!("/api/users/{user}/sessions/{session}"),
        format!("/users/{user}/sessions/{session}/epochs.csv"),
        format!("/users/{user}/sessions/{session}/night.json"),
        format!("/users/{user}/nights.csv"),
    ];
    let mut cookies = Vec::new();
    for path in &paths {
        responses.push(send(client.get(server.url(path))).await);
        for token in &tokens {
            let answer = send(client.get(server.url(&format!("{path}?token={token}")))).await;
            for cookie in answer.1.get_all("set-cookie") {
                let cookie = cookie.to_str().unwrap().split(';').next().unwrap().to_string();
                cookies.push(cookie);
            }
            responses.push(answer);
        }
    }
    for cookie in &cookies {
        if let Some((_, value)) = cookie.split_once('=') {
            secrets.add_token("a cookie the server set", value);
        }
        for path in &paths {
            responses.push(send(client.get(server.url(path)).header("cookie", cookie.as_str())).await);
        }
    }

    // WebSockets with every kind of token.
    for token in &tokens {
        let url = format!("ws://{}/ws?user={user}&token={token}", server.addr);
        if let Ok(Ok((mut socket, _))) = tokio::time::timeout(common::WAIT, tokio_tungstenite::connect_async(url)).await
        {
            use futures_util::StreamExt;
            let _ = tokio::time::timeout(Duration::from_millis(500), socket.next()).await;
        }
    }

    // Operations, unknown paths, the operator view with right and wrong
    // secrets, static files.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/nowhere",
        "/static/live.js",
        "/static/missing.js",
    ] {
        responses.push(send(client.get(server.url(path))).await);
    }
    for secret in [SENTINEL_ADMIN_SECRET, "wrong-admin-secret"] {
        let authorization = format!("Basic {}", basic(secret));
        responses.push(send(client.get(server.url("/admin")).header("authorization", authorization)).await);
    }

    // Wrong keys, a missing key, swapped headers, and requests after the
    // failure limit of 3, which get 429.
    for _ in 0..2 {
        responses.push(send(webhook(SENTINEL_WRONG_KEY, user, delivery(user, 2))).await);
    }
    let swapped = client
        .post(server.url("/asleep-webhook"))
        .header("x-api-key", user)
        .header("x-user-id", SENTINEL_KEY)
        .body(delivery(user, 2));
    responses.push(send(swapped).await);
    for key in [SENTINEL_WRONG_KEY, SENTINEL_KEY] {
        let answer = send(webhook(key, user, delivery(user, 2))).await;
        assert_eq!(answer.0, StatusCode::TOO_MANY_REQUESTS, "{}", answer.2);
        responses.push(answer);
    }

    let metrics = send(client.get(server.url("/metrics"))).await.2;
    secrets.assert_absent("/metrics", metrics.as_bytes());
    for (index, (status, headers, body)) in responses.iter().enumerate() {
        if status.is_success() || status.is_redirection() {
            keys_and_secrets.assert_absent(&format!("response {index} ({status})"), body.as_bytes());
        } else {
            secrets.assert_absent(&format!("response {index} ({status})"), body.as_bytes());
            for (name, value) in headers {
                secrets.assert_absent(
                    &format!("header {name} of response {index} ({status})"),
                    value.as_bytes(),
                );
            }
        }
    }

    // The database files while the server runs, and after it stopped.
    let search_folder = |secrets: &Secrets, when: &str| {
        for entry in std::fs::read_dir(folder.path()).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            secrets.assert_absent(&format!("{} {when}", path.display()), &bytes);
        }
    };
    search_folder(&secrets, "while the server runs");
    server.stop();
    search_folder(&secrets, "after the server stopped");

    let output = server.output.lock().unwrap().clone();
    assert!(
        output.lines().count() > 50,
        "trace logging was expected to write many lines:\n{output}"
    );
    secrets.assert_absent("the server's stdout and stderr", output.as_bytes());

    // Each address's failures are logged at most once per interval.
    let failures_logged = output
        .lines()
        .filter(|line| line.contains("webhook request rejected: x-api-key") || line.contains("answered 429"))
        .count();
    assert_eq!(
        failures_logged, 1,
        "five failed or blocked requests within seconds are logged once:\n{output}"
    );
}
