//! Connection and request limits: body size, header size, request and idle
//! timeouts, and WebSocket connections per user and in total. Each test
//! starts a real server with a small limit and reaches it over real sockets.

mod common;

use std::time::Duration;

use common::{TestServer, inference_body, viewer_token};
use reqwest::StatusCode;
use serde_json::Value;
use sleep_dashboard::app::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

/// Extra time allowed after a timeout for the server to act on it. The
/// server checks its deadlines exactly, so this only covers a slow machine.
const SLACK: Duration = Duration::from_secs(3);

/// Starts a server whose limits are the defaults as changed by `configure`.
async fn server_with(configure: impl FnOnce(&mut Limits)) -> TestServer {
    TestServer::start_configured(|config| configure(&mut config.limits)).await
}

/// Reads from `stream` until the server closes it, and returns what it sent
/// and when it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, Instant) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => panic!(
                "the server kept the connection open for {within:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into_owned(), Instant::now()),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

/// Returns the status code on the first line of a raw HTTP response.
fn status_of(response: &str) -> Option<u16> {
    response.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn body_over_limit_is_413() {
    let server = TestServer::start().await;
    let limit = Limits::default().max_body_bytes;
    // Valid JSON, so only the size can be the reason.
    let body = format!(
        r#"{{"event": "INFERENCE_COMPLETE", "padding": "{}"}}"#,
        "x".repeat(limit)
    );
    assert!(body.len() > limit);

    let answer = server.deliver("big", &body).await;

    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.body);
    assert_eq!(answer.field(), "body");
    assert!(answer.error().contains(&limit.to_string()), "{}", answer.body);
    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn configured_body_limit_is_413() {
    let limit = 2048;
    let server = server_with(|limits| limits.max_body_bytes = limit).await;
    let small = inference_body("sized", "night", 3, &[0, 1, 2, 3], &[0, 0, 0, 0]).to_string();
    assert!(small.len() < limit);
    assert_eq!(server.deliver("sized", &small).await.status, StatusCode::OK);

    let padding = "x".repeat(limit);
    let large = format!(r#"{{"event": "INFERENCE_COMPLETE", "padding": "{padding}"}}"#);
    let answer = server.deliver("sized", &large).await;

    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.body);
    assert!(answer.error().contains(&limit.to_string()), "{}", answer.body);
    assert_eq!(server.event_count().await, 1);
    server.stop().await;
}

#[tokio::test]
async fn header_block_over_limit_is_431() {
    let limit = 4096;
    let server = server_with(|limits| limits.max_header_bytes = limit).await;

    let fits = server
        .client
        .get(server.url("/static/live.js"))
        .header("x-padding", "p".repeat(limit / 2))
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), StatusCode::OK, "a head within the limit is served");

    let too_large = server
        .client
        .get(server.url("/static/live.js"))
        .header("x-padding", "p".repeat(limit))
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    server.stop().await;
}

#[tokio::test]
async fn stalled_headers_close_the_connection() {
    let timeout = Duration::from_millis(600);
    let server = server_with(|limits| limits.request_timeout = timeout).await;
    let mut stream = TcpStream::connect(server.server.addr).await.unwrap();

    let started = Instant::now();
    stream
        .write_all(b"GET /static/live.js HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let (received, closed_at) = read_until_closed(&mut stream, timeout + SLACK).await;

    assert!(received.is_empty() || status_of(&received) == Some(408), "{received:?}");
    assert!(
        closed_at - started >= timeout - Duration::from_millis(50),
        "closed after {:?}, before the request timeout of {timeout:?}",
        closed_at - started
    );
    server.stop().await;
}

#[tokio::test]
async fn stalled_webhook_body_is_408() {
    let timeout = Duration::from_millis(600);
    let server = server_with(|limits| limits.request_timeout = timeout).await;
    let mut stream = TcpStream::connect(server.server.addr).await.unwrap();

    let body = inference_body("stalled", "night", 3, &[0, 1, 2, 3], &[0, 0, 0, 0]).to_string();
    let head = format!(
        "POST /asleep-webhook HTTP/1.1\r\nHost: localhost\r\nx-api-key: {}\r\nx-user-id: stalled\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        common::API_KEY,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..body.len() / 2]).await.unwrap();
    let (received, _) = read_until_closed(&mut stream, timeout + SLACK).await;

    assert_eq!(status_of(&received), Some(408), "{received:?}");
    assert!(received.contains(r#""field":"body""#), "{received:?}");
    assert_eq!(server.event_count().await, 0, "a cut-off body stores nothing");
    server.stop().await;
}

#[tokio::test]
async fn idle_connection_is_closed() {
    let idle = Duration::from_millis(800);
    let server = server_with(|limits| limits.idle_timeout = idle).await;
    let mut stream = TcpStream::connect(server.server.addr).await.unwrap();

    // One request on a keep-alive connection, answered in full.
    stream
        .write_all(b"GET /static/favicon.svg HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("</svg>") {
        let read = tokio::time::timeout(SLACK, stream.read(&mut buffer))
            .await
            .expect("no response to the first request")
            .unwrap();
        assert!(read > 0, "the server closed the connection before answering");
        response.extend_from_slice(&buffer[..read]);
    }
    assert_eq!(status_of(&String::from_utf8_lossy(&response)), Some(200));
    let answered = Instant::now();

    let (rest, closed_at) = read_until_closed(&mut stream, idle + SLACK).await;
    assert!(rest.is_empty(), "unexpected bytes after the response: {rest:?}");
    assert!(
        closed_at - answered >= idle - Duration::from_millis(100),
        "closed after {:?}, before the idle timeout of {idle:?}",
        closed_at - answered
    );
    server.stop().await;
}

#[tokio::test]
async fn busy_connection_outlives_idle_timeout() {
    let idle = Duration::from_millis(500);
    let server = server_with(|limits| limits.idle_timeout = idle).await;

    // Requests more often than the idle timeout keep one connection open.
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    for _ in 0..6 {
        let response = client.get(server.url("/static/favicon.svg")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.unwrap();
        tokio::time::sleep(idle / 3).await;
    }
    assert_eq!(
        server.server.state.tracker.active(),
        1,
        "one connection served every request"
    );
    server.stop().await;
}

/// Returns the status, `Retry-After` and JSON body of a rejected upgrade.
async fn rejected_upgrade(url: String) -> (StatusCode, Option<String>, Value) {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("the WebSocket upgrade should have been rejected"),
        Err(tungstenite::Error::Http(response)) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap().to_string());
            let body = response.body().as_deref().unwrap_or_default();
            let json = serde_json::from_slice(body)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", String::from_utf8_lossy(body)));
            (status, retry_after, json)
        }
        Err(other) => panic!("expected an HTTP error status, got {other}"),
    }
}

#[tokio::test]
async fn websocket_limits_reject_with_503() {
    let server = server_with(|limits| {
        limits.ws_per_user = 2;
        limits.ws_total = 3;
    })
    .await;

    let alice_first = server.viewer("alice").await;
    let _alice_second = server.viewer("alice").await;
    let (status, retry_after, body) = rejected_upgrade(server.ws_url("alice", Some(&viewer_token("alice")))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after.is_some_and(|seconds| seconds.parse::<u64>().is_ok()));
    assert_eq!(body["limit"], "--ws-max-per-user", "{body}");
    assert!(body["error"].as_str().unwrap().contains('2'), "{body}");

    let _bob = server.viewer("bob").await;
    let (status, _, body) = rejected_upgrade(server.ws_url("carol", Some(&viewer_token("carol")))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["limit"], "--ws-max-total", "{body}");
    assert_eq!(server.server.state.rooms.len(), 2, "a rejected viewer creates no room");

    // A closed socket gives its slot back.
    alice_first.close().await;
    let deadline = Instant::now() + common::WAIT;
    while server.server.state.viewer_slots.taken("alice") != (2, 1) {
        assert!(Instant::now() < deadline, "the closed socket's slot was not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let carol = server.viewer("carol").await;
    carol.close().await;
    server.stop().await;
}

#[tokio::test]
async fn webhooks_pass_at_websocket_limit() {
    let server = server_with(|limits| {
        limits.ws_per_user = 1;
        limits.ws_total = 1;
    })
    .await;
    let mut viewer = server.viewer("full").await;

    let body = inference_body("full", "night", 1, &[0, 1], &[0, 0]).to_string();
    assert_eq!(server.deliver("full", &body).await.status, StatusCode::OK);
    assert_eq!(viewer.receive().await["type"], "snapshot");
    viewer.close().await;
    server.stop().await;
}
