//! Attacks on the viewer side: the token-for-cookie exchange, revocation,
//! the WebSocket's origin check, and ids in paths that try to reach another
//! user's session or escape validation.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{
    SECRET, TestServer, browser_like_client, expired_token, inference_body, path_segment, query_value, session_body,
    token_exchange, viewer_token, viewer_token_at,
};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use sleep_dashboard::auth::{Origin, cookie_name};
use sleep_dashboard::ws::Heartbeat;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

/// Delivers a complete one-hour night for `user_id`.
async fn deliver_night(server: &TestServer, user_id: &str, session_id: &str) {
    let stages = vec![1; 120];
    let snoring = vec![0; 120];
    let body = session_body(user_id, session_id, &stages, &snoring);
    let answer = server.deliver(user_id, &body.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

/// Sends `GET path_and_query` with the extra `headers` and does not follow
/// redirects.
async fn raw_get(server: &TestServer, path_and_query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = browser_like_client().get(server.url(path_and_query));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {path_and_query} failed: {error}"))
}

/// Opens `path_and_query` with a link's token and returns the cookie that
/// the exchange sets, as `name=value`.
async fn exchange(server: &TestServer, path_and_query: &str) -> String {
    let response = raw_get(server, path_and_query, &[]).await;
    let status = response.status();
    let (_, cookie) = token_exchange(&response)
        .unwrap_or_else(|| panic!("GET {path_and_query}: expected a 303 with a cookie, got {status}"));
    cookie
}

/// Returns the status and body of `GET path` with only `cookie`.
async fn with_cookie(server: &TestServer, path: &str, cookie: &str) -> (StatusCode, String) {
    let response = raw_get(server, path, &[("cookie", cookie)]).await;
    let status = response.status();
    (status, response.text().await.unwrap())
}

fn set_cookie_attributes(response: &reqwest::Response) -> Vec<String> {
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .expect("the exchange sets a cookie")
        .to_str()
        .unwrap();
    set_cookie
        .split(';')
        .skip(1)
        .map(|part| part.trim().to_string())
        .collect()
}

#[tokio::test]
async fn link_token_becomes_cookie() {
    let server = TestServer::start().await;
    let user = "alice";
    deliver_night(&server, user, "alice-night").await;
    let token = viewer_token(user);

    // Other query parameters stay, in their order; every `token` goes.
    let response = raw_get(
        &server,
        &format!("/users/{user}?from=2026-11-01&token={token}&to=2026-11-30&token=second"),
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()["location"].to_str().unwrap(),
        "/users/alice?from=2026-11-01&to=2026-11-30"
    );
    let attributes = set_cookie_attributes(&response);
    for expected in ["Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(
            attributes.iter().any(|a| a == expected),
            "{expected} missing: {attributes:?}"
        );
    }
    assert!(
        !attributes.iter().any(|a| a == "Secure"),
        "plain HTTP gets no Secure: {attributes:?}"
    );
    let max_age: i64 = attributes
        .iter()
        .find_map(|a| a.strip_prefix("Max-Age="))
        .expect("the cookie has a Max-Age")
        .parse()
        .unwrap();
    assert!(
        (3500..=3600).contains(&max_age),
        "Max-Age {max_age} must end with the token"
    );
    let (_, cookie) = token_exchange(&response).unwrap();
    assert_eq!(cookie, format!("{}={token}", cookie_name(user)));

    // A path with only the token redirects to the bare path.
    let response = raw_get(&server, &format!("/users/{user}/live?token={token}"), &[]).await;
    assert_eq!(response.headers()["location"].to_str().unwrap(), "/users/alice/live");

    // The cookie alone opens pages, downloads and the API, none of which
    // repeats the token.
    for path in [
        "/users/alice".to_string(),
        "/users/alice/live".to_string(),
        "/users/alice/nights.csv".to_string(),
        "/users/alice/sessions/alice-night".to_string(),
        "/users/alice/sessions/alice-night/epochs.csv".to_string(),
        "/users/alice/sessions/alice-night/night.json".to_string(),
        "/api/users/alice/sessions/alice-night".to_string(),
    ] {
        let (status, body) = with_cookie(&server, &path, &cookie).await;
        assert_eq!(status, StatusCode::OK, "{path} with the cookie: {body}");
        assert!(!body.contains(&token), "{path} repeats the token");
    }

    // The API takes `?token=` without a redirect, for scripts.
    let api = raw_get(
        &server,
        &format!("/api/users/alice/sessions/alice-night?token={token}"),
        &[],
    )
    .await;
    assert_eq!(api.status(), StatusCode::OK);

    // An encoded spelling of `token` is removed too, so it cannot redirect forever.
    let response = raw_get(&server, &format!("/users/{user}?to%6Ben={token}"), &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"].to_str().unwrap(), "/users/alice");
    server.stop().await;
}

#[tokio::test]
async fn invalid_link_token_is_not_exchanged() {
    let server = TestServer::start().await;
    for (token, expected) in [
        (expired_token("alice"), "expired"),
        (viewer_token("bob"), "not valid for this user"),
        ("v2.0.1.Zm9yZ2Vk".to_string(), "not valid for this user"),
        ("v2.0.1.forged!".to_string(), "malformed"),
    ] {
        let response = raw_get(&server, &format!("/users/alice/live?token={token}"), &[]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{expected}");
        assert!(response.headers().get("set-cookie").is_none(), "{expected}: no cookie");
        let body = response.text().await.unwrap();
        assert!(body.contains(expected), "{expected}: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn cookie_is_scoped_to_its_user() {
    let server = TestServer::start().await;
    deliver_night(&server, "alice", "alice-night").await;
    deliver_night(&server, "bob", "bob-night").await;
    let alice_cookie = exchange(&server, &format!("/users/alice?token={}", viewer_token("alice"))).await;
    let bob_cookie = exchange(&server, &format!("/users/bob?token={}", viewer_token("bob"))).await;

    // One browser holds both cookies and sees both users.
    let both = format!("{alice_cookie}; {bob_cookie}");
    assert_eq!(with_cookie(&server, "/users/alice", &both).await.0, StatusCode::OK);
    assert_eq!(with_cookie(&server, "/users/bob", &both).await.0, StatusCode::OK);

    // Alice's cookie opens nothing of bob's, even renamed to bob's cookie.
    assert_eq!(
        with_cookie(&server, "/users/bob", &alice_cookie).await.0,
        StatusCode::UNAUTHORIZED
    );
    let alice_token = alice_cookie.split_once('=').unwrap().1;
    let renamed = format!("{}={alice_token}", cookie_name("bob"));
    let (status, body) = with_cookie(&server, "/api/users/bob/sessions/bob-night", &renamed).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!body.contains("bob-night"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn cookie_is_secure_over_https() {
    // Behind a proxy that terminates TLS and says so.
    let server = TestServer::start().await;
    let token = viewer_token("alice");
    let response = raw_get(
        &server,
        &format!("/users/alice?token={token}"),
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert!(set_cookie_attributes(&response).iter().any(|a| a == "Secure"));
    server.stop().await;

    // With an https public URL, always.
    let server = TestServer::start_configured(|config| {
        config.access.public_origin = Some(Origin::parse("https://sleep.example.org").unwrap());
    })
    .await;
    let response = raw_get(&server, &format!("/users/alice?token={token}"), &[]).await;
    assert!(set_cookie_attributes(&response).iter().any(|a| a == "Secure"));
    server.stop().await;
}

#[tokio::test]
async fn first_format_link_is_rejected() {
    let server = TestServer::start().await;
    let response = server.get("/users/alice/live?token=v1.9999999999.c2lnbmF0dXJl").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.text().await.unwrap();
    assert!(body.contains("old format"), "{body}");
    assert!(body.contains("ask for a new link"), "{body}");
    server.stop().await;
}

/// Runs the sleep-dashboard binary with the test servers' secret.
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sleep-dashboard"))
        .args(args)
        .env("DASHBOARD_SECRET", SECRET)
        .env_remove("SLEEP_DASHBOARD_DATABASE")
        .env_remove("SLEEP_DASHBOARD_PUBLIC_URL")
        .output()
        .expect("running the sleep-dashboard binary failed")
}

/// Prints a link for `user` with the real `link` command against the
/// server's database and returns its path and query.
fn link_from_binary(server: &TestServer, user: &str) -> String {
    let public_url = format!("http://{}", server.server.addr);
    let database = server.database.to_str().unwrap();
    let output = run(&[
        "link",
        "--user",
        user,
        "--public-url",
        &public_url,
        "--database",
        database,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "link failed: {stderr}");
    let url = String::from_utf8(output.stdout).unwrap();
    url.trim()
        .strip_prefix(&public_url)
        .unwrap_or_else(|| panic!("the link {url} is not on {public_url}"))
        .to_string()
}

fn revoke_with_binary(server: &TestServer, user: &str) -> String {
    let database = server.database.to_str().unwrap();
    let output = run(&["revoke", "--user", user, "--database", database]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "revoke failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn revoke_invalidates_links_and_cookies() {
    // Pings far apart, so only the revocation watch can close the open socket
    // within the wait below.
    let heartbeat = Heartbeat {
        ping_interval: Duration::from_secs(60),
        dead_after: Duration::from_secs(120),
    };
    let server = TestServer::start_with(heartbeat).await;
    deliver_night(&server, "alice", "alice-night").await;
    deliver_night(&server, "bob", "bob-night").await;

    let link = link_from_binary(&server, "alice");
    assert!(link.starts_with("/users/alice/live?token=v2."), "{link}");
    let cookie = exchange(&server, &link).await;
    assert_eq!(with_cookie(&server, "/users/alice", &cookie).await.0, StatusCode::OK);
    let bob_cookie = exchange(&server, &format!("/users/bob?token={}", viewer_token("bob"))).await;
    let mut open_socket = cookie_socket(&server, "alice", &cookie).await;

    // The running server sees the revocation at once.
    let output = revoke_with_binary(&server, "alice");
    assert!(output.contains("revoked"), "{output}");

    let response = server.get(&link).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "the link after revoke");
    assert!(response.text().await.unwrap().contains("revoked"));
    let (status, body) = with_cookie(&server, "/users/alice/sessions/alice-night", &cookie).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the cookie after revoke");
    assert!(body.contains("was revoked"), "{body}");
    let (status, body) = with_cookie(&server, "/api/users/alice/sessions/alice-night", &cookie).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(error["error"].as_str().unwrap().contains("revoked"), "{error}");
    let token = link.split_once("token=").unwrap().1;
    let (status, _) = handshake(&server, "alice", Some(token), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the WebSocket after revoke");

    // A socket opened before the revocation closes within about a second,
    // long before its next ping.
    let close = tokio::time::timeout(common::WAIT, async {
        loop {
            match open_socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("the open socket was not closed after the revocation");
    let close = close.expect("the close frame has a code");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("revoked"), "{}", close.reason);

    // Revoking alice leaves bob alone, and a new link for alice works.
    assert_eq!(with_cookie(&server, "/users/bob", &bob_cookie).await.0, StatusCode::OK);
    let new_link = link_from_binary(&server, "alice");
    assert!(new_link.contains("token=v2.1."), "{new_link}");
    let new_cookie = exchange(&server, &new_link).await;
    assert_eq!(
        with_cookie(&server, "/users/alice", &new_cookie).await.0,
        StatusCode::OK
    );
    assert_eq!(
        server
            .get(&format!("/users/alice?token={}", viewer_token_at("alice", 1)))
            .await
            .status(),
        StatusCode::OK
    );

    // A second revocation moves on again.
    revoke_with_binary(&server, "alice");
    assert_eq!(
        with_cookie(&server, "/users/alice", &new_cookie).await.0,
        StatusCode::UNAUTHORIZED
    );
    server.stop().await;
}

#[test]
fn revoke_needs_existing_database() {
    let folder = tempfile::tempdir().unwrap();
    let missing = folder.path().join("missing.db");
    let output = run(&["revoke", "--user", "alice", "--database", missing.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not found") && stderr.contains("--database"),
        "{stderr}"
    );
    assert!(!missing.exists(), "revoke must not create a database");
}

/// Attempts a WebSocket upgrade for `user` with an optional token, cookie
/// and `Origin`, and returns the status and body of the handshake's response
/// (101 and an empty body when it upgraded).
async fn handshake(
    server: &TestServer,
    user: &str,
    token: Option<&str>,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> (StatusCode, String) {
    match connect(server, user, token, cookie, origin).await {
        Ok(mut socket) => {
            let first = socket.next().await.expect("a snapshot").expect("reading the socket");
            assert!(matches!(first, Message::Text(_)), "{first:?}");
            socket.close(None).await.ok();
            (StatusCode::SWITCHING_PROTOCOLS, String::new())
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            (status, body)
        }
        Err(other) => panic!("expected an HTTP response to the upgrade, got {other}"),
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    server: &TestServer,
    user: &str,
    token: Option<&str>,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let mut request = server.ws_url(user, token).into_client_request().unwrap();
    if let Some(cookie) = cookie {
        request
            .headers_mut()
            .insert("cookie", HeaderValue::from_str(cookie).unwrap());
    }
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// Opens a viewer socket the way the live page does: same origin, cookie.
async fn cookie_socket(server: &TestServer, user: &str, cookie: &str) -> Socket {
    let origin = format!("http://{}", server.server.addr);
    connect(server, user, None, Some(cookie), Some(&origin))
        .await
        .expect("the live page's socket opens with the cookie")
}

#[tokio::test]
async fn websocket_checks_origin_first() {
    let server = TestServer::start_configured(|config| {
        config.access.allowed_origins = vec![Origin::parse("https://wall.example.org").unwrap()];
        config.access.public_origin = Some(Origin::parse("https://sleep.example.org").unwrap());
    })
    .await;
    let token = viewer_token("alice");
    let cookie = format!("{}={token}", cookie_name("alice"));
    let own = format!("http://{}", server.server.addr);

    // A foreign page is refused before the token is looked at, with a JSON error.
    let (status, body) = handshake(&server, "alice", Some(&token), None, Some("https://evil.example")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("https://evil.example"),
        "{error}"
    );
    let (status, _) = handshake(&server, "alice", None, Some(&cookie), Some("https://evil.example")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a foreign page riding the cookie");
    let (status, _) = handshake(&server, "alice", None, None, Some("null")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an opaque origin");
    assert_eq!(server.server.state.rooms.len(), 0, "refused sockets create no room");

    // The server's own page, and the configured origins, use the cookie.
    for origin in [own.as_str(), "https://sleep.example.org", "https://wall.example.org"] {
        let (status, body) = handshake(&server, "alice", None, Some(&cookie), Some(origin)).await;
        assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS, "{origin}: {body}");
    }

    // A client without Origin must put the token in the query.
    let (status, _) = handshake(&server, "alice", Some(&token), None, None).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS, "no Origin, token in the query");
    let (status, body) = handshake(&server, "alice", None, Some(&cookie), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no Origin, cookie only: {body}");
    assert!(body.contains("?token="), "{body}");

    // The same origin with a cookie for another user is refused.
    let (status, _) = handshake(&server, "bob", None, Some(&cookie), Some(&own)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

/// Sends a raw HTTP/1.1 GET, so the path reaches the server exactly as
/// written: HTTP clients resolve `..` and `%2E%2E` segments before sending.
async fn raw_status(server: &TestServer, target: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(server.server.addr).await.unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(common::WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the response did not end in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

#[tokio::test]
async fn other_users_session_is_not_found() {
    let server = TestServer::start().await;
    deliver_night(&server, "alice", "alice-night").await;
    deliver_night(&server, "bob", "bob-night").await;
    let bob_partial = inference_body("bob", "bob-tonight", 3, &[0, 1, 2, 3], &[0, 0, 0, 0]);
    assert_eq!(
        server.deliver("bob", &bob_partial.to_string()).await.status,
        StatusCode::OK
    );
    let alice = viewer_token("alice");
    let alice_cookie = exchange(&server, &format!("/users/alice?token={alice}")).await;

    for session in ["bob-night", "bob-tonight"] {
        for suffix in ["", "/epochs.csv", "/night.json"] {
            let path = format!("/users/alice/sessions/{session}{suffix}");
            let (status, body) = with_cookie(&server, &path, &alice_cookie).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
            assert!(!body.contains("\"bob\""), "{path} leaks bob: {body}");
        }
        let api = format!("/api/users/alice/sessions/{session}?token={alice}");
        assert_eq!(server.get(&api).await.status(), StatusCode::NOT_FOUND, "{api}");
    }
    // Bob's own token reaches the same sessions, so they do exist.
    let bob = viewer_token("bob");
    let response = server
        .get(&format!("/api/users/bob/sessions/bob-night?token={bob}"))
        .await;
    let status = response.status();
    assert_eq!(status, StatusCode::OK, "{}", response.text().await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn invalid_ids_in_paths_are_rejected() {
    let server = TestServer::start().await;
    deliver_night(&server, "alice", "alice-night").await;
    let alice = viewer_token("alice");
    let long = "a".repeat(129);

    // Invalid session ids under alice's own valid token.
    for session in ["%2E%2E", "..", ".", "a%01b", "a%00", "%7F", long.as_str()] {
        for prefix in ["/users/alice/sessions", "/api/users/alice/sessions"] {
            for suffix in ["", "/epochs.csv", "/night.json"] {
                if prefix.starts_with("/api") && !suffix.is_empty() {
                    continue;
                }
                let target = format!("{prefix}/{session}{suffix}?token={alice}");
                let (status, text) = raw_status(&server, &target).await;
                assert!(
                    status == 400 || status == 404,
                    "{target}: expected 400 or 404, got {status}: {text}"
                );
                assert!(!text.contains("alice-night"), "{target}: {text}");
            }
        }
    }
    // Validation names the field, so the rejection comes before any lookup.
    let (status, text) = raw_status(&server, &format!("/api/users/alice/sessions/a%01b?token={alice}")).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("session_id") && text.contains("control characters"),
        "{text}"
    );
    let (status, text) = raw_status(&server, &format!("/api/users/alice/sessions/{long}?token={alice}")).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("more than the maximum of 128"), "{text}");

    // Invalid user ids, for every route that names one.
    for user in ["%2E%2E", "a%01b", long.as_str()] {
        for path in [
            format!("/users/{user}"),
            format!("/users/{user}/live"),
            format!("/users/{user}/nights.csv"),
            format!("/users/{user}/sessions/alice-night"),
            format!("/api/users/{user}/sessions/alice-night"),
            format!("/ws?user={user}"),
        ] {
            let (status, text) = raw_status(
                &server,
                &format!("{path}{}token={alice}", if path.contains('?') { "&" } else { "?" }),
            )
            .await;
            assert!(
                status == 400 || status == 404,
                "{path}: expected 400 or 404, got {status}: {text}"
            );
        }
    }

    // The longest valid id passes validation and is simply unknown.
    let longest = "s".repeat(128);
    let (status, _) = raw_status(&server, &format!("/api/users/alice/sessions/{longest}?token={alice}")).await;
    assert_eq!(status, 404);
    // Ids with reserved characters stay one segment and still work.
    let odd = "alice/../x";
    deliver_night(&server, odd, "night?1").await;
    let path = format!(
        "/api/users/{}/sessions/{}?token={}",
        path_segment(odd),
        path_segment("night?1"),
        query_value(&viewer_token(odd))
    );
    assert_eq!(server.get(&path).await.status(), StatusCode::OK, "{path}");
    server.stop().await;
}

#[tokio::test]
async fn cross_site_arrival_reloads_same_site() {
    let server = TestServer::start().await;
    let cross_site = [("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate")];

    // The redirect after the exchange arrives without the new cookie when
    // another site started the navigation; the page reloads itself.
    let response = raw_get(&server, "/users/alice?from=2026-11-01&to=2026-11-30", &cross_site).await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.unwrap();
    assert!(
        html.contains(r#"<meta http-equiv="refresh" content="0; url=/users/alice?from=2026-11-01&#38;to=2026-11-30">"#),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");

    // That reload is same-site: with the cookie it is served, without it refused.
    let token = viewer_token("alice");
    let cookie = format!("{}={token}", cookie_name("alice"));
    let same_site = [("sec-fetch-site", "same-origin"), ("sec-fetch-mode", "navigate")];
    let response = raw_get(
        &server,
        "/users/alice",
        &[same_site[0], same_site[1], ("cookie", &cookie)],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        raw_get(&server, "/users/alice", &same_site).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // A cross-site request that does carry the cookie is served directly.
    let response = raw_get(
        &server,
        "/users/alice",
        &[cross_site[0], cross_site[1], ("cookie", &cookie)],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains(r#"id="history""#));
    server.stop().await;
}
