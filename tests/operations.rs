//! The operator endpoints: `/healthz`, `/readyz` and `/metrics`, scraped
//! after deliveries of every outcome.

mod common;

use common::{DatabaseLock, TestServer, inference_body, session_body};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sleep_dashboard::metrics::CONTENT_TYPE;

#[tokio::test]
async fn healthz_returns_ok_without_token() {
    let server = TestServer::start().await;

    let response = server.get("/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.expect("/healthz is not JSON");
    assert_eq!(body, json!({ "status": "ok" }));

    server.stop().await;
}

#[tokio::test]
async fn readyz_returns_ready_when_writable() {
    let server = TestServer::start().await;

    let response = server.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = response.json().await.expect("/readyz is not JSON");
    assert_eq!(body, json!({ "status": "ready" }));

    server.stop().await;
}

/// Returns the value of the sample `series` (a metric name with its labels
/// as they are encoded) in an OpenMetrics text, or `None` when it is absent.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(
            value
                .parse()
                .unwrap_or_else(|error| panic!("{series} has a value that is not a number ({error}): {line}")),
        )
    })
}

fn webhooks(event: &str, outcome: &str) -> String {
    format!("sleep_dashboard_webhooks_total{{event=\"{event}\",outcome=\"{outcome}\"}}")
}

#[tokio::test]
async fn metrics_count_every_outcome() {
    let server = TestServer::start().await;
    let user_id = "metrics-user";
    let session_id = "metrics-session";

    // Accepted: two results and the final report.
    for seq_num in 0..2 {
        let body = inference_body(user_id, session_id, seq_num, &[1], &[0]).to_string();
        let answer = server.deliver(user_id, &body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let report = session_body(user_id, session_id, &[0, 1], &[0, 0]).to_string();
    assert_eq!(server.deliver(user_id, &report).await.body["status"], "accepted");

    // Duplicate: one of each event.
    let repeated = inference_body(user_id, session_id, 1, &[1], &[0]).to_string();
    assert_eq!(server.deliver(user_id, &repeated).await.body["status"], "duplicate");
    assert_eq!(server.deliver(user_id, &report).await.body["status"], "duplicate");

    // Ignored: an event this server does not know.
    let unknown = json!({ "event": "SESSION_STARTED", "version": "V3", "data": { "session_id": session_id } });
    let answer = server.deliver(user_id, &unknown.to_string()).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);

    // Rejected: a wrong key and malformed JSON, which name no event, and an
    // invalid result, which does.
    let response = server
        .client
        .post(server.url("/asleep-webhook"))
        .header("x-api-key", "wrong-key")
        .header("x-user-id", user_id)
        .body(repeated.clone())
        .send()
        .await
        .expect("sending the webhook request failed");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        server.deliver(user_id, "{\"event\":").await.status,
        StatusCode::BAD_REQUEST
    );
    let negative = inference_body(user_id, session_id, -1, &[1], &[0]).to_string();
    assert_eq!(server.deliver(user_id, &negative).await.status, StatusCode::BAD_REQUEST);

    // Unavailable: a result while another process holds the write lock.
    let lock = DatabaseLock::take(&server.database).await;
    let blocked = inference_body(user_id, session_id, 2, &[1], &[0]).to_string();
    assert_eq!(
        server.deliver(user_id, &blocked).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    lock.release().await;

    // A viewer makes one room.
    let viewer = server.viewer(user_id).await;

    let response = server.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], CONTENT_TYPE);
    let text = response.text().await.expect("reading /metrics failed");

    let expected = [
        ("INFERENCE_COMPLETE", "accepted", 2.0),
        ("SESSION_COMPLETE", "accepted", 1.0),
        ("INFERENCE_COMPLETE", "duplicate", 1.0),
        ("SESSION_COMPLETE", "duplicate", 1.0),
        ("other", "ignored", 1.0),
        ("other", "rejected", 2.0),
        ("INFERENCE_COMPLETE", "rejected", 1.0),
        ("INFERENCE_COMPLETE", "unavailable", 1.0),
    ];
    for (event, outcome, count) in expected {
        assert_eq!(
            sample(&text, &webhooks(event, outcome)),
            Some(count),
            "{event} {outcome}\n{text}"
        );
    }
    assert_eq!(sample(&text, &webhooks("SESSION_COMPLETE", "rejected")), None, "{text}");

    // Every response is timed; every delivery that reached the database is
    // timed there, the one that got 503 included.
    assert_eq!(
        sample(&text, "sleep_dashboard_webhook_seconds_count"),
        Some(10.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sleep_dashboard_database_commit_seconds_count"),
        Some(7.0),
        "{text}"
    );
    let commit_seconds = sample(&text, "sleep_dashboard_database_commit_seconds_sum").expect("commit sum missing");
    assert!(
        commit_seconds >= sleep_dashboard::storage::WRITE_BUSY_TIMEOUT.as_secs_f64(),
        "the failed commit waited for the busy timeout, so the sum is at least that: {commit_seconds}"
    );

    assert_eq!(sample(&text, "sleep_dashboard_rooms"), Some(1.0), "{text}");
    assert!(!text.contains(user_id), "the metrics name a user: {text}");
    assert!(!text.contains(session_id), "the metrics name a session: {text}");

    viewer.close().await;
    server.stop().await;
}

#[tokio::test]
async fn metrics_rooms_gauge_follows_viewers() {
    let server = TestServer::start().await;

    let text = server.get_ok("/metrics").await;
    assert_eq!(sample(&text, "sleep_dashboard_rooms"), Some(0.0), "{text}");

    let first = server.viewer("rooms-user-a").await;
    let second = server.viewer("rooms-user-b").await;
    let text = server.get_ok("/metrics").await;
    assert_eq!(sample(&text, "sleep_dashboard_rooms"), Some(2.0), "{text}");

    first.close().await;
    second.close().await;
    server.wait_for_rooms(0).await;
    let text = server.get_ok("/metrics").await;
    assert_eq!(sample(&text, "sleep_dashboard_rooms"), Some(0.0), "{text}");

    server.stop().await;
}
