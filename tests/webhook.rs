//! Webhook intake over real HTTP: every rejection rule with its status,
//! message and field, unknown events, and repeated deliveries.

mod common;

use common::{JsonResponse, TestServer, inference_body, session_body};
use reqwest::StatusCode;
use serde_json::{Value, json};

const USER: &str = "webhook-user";
const SESSION: &str = "webhook-session";

/// Returns a valid enveloped result of 4 epochs ending at epoch 9.
fn valid_result() -> Value {
    inference_body(USER, SESSION, 9, &[0, 1, 2, 3], &[0, 0, 1, 0])
}

/// Delivers `body` as user [`USER`] and returns the response.
async fn deliver_json(server: &TestServer, body: &Value) -> JsonResponse {
    server.deliver(USER, &body.to_string()).await
}

/// Asserts a 400 response whose `field` is `field` exactly.
fn assert_rejected(answer: &JsonResponse, field: &str, case: &str) {
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{case}: {}", answer.body);
    assert_eq!(answer.field(), field, "{case}: {}", answer.body);
    assert!(
        answer.error().contains(field),
        "{case}: the message should name {field}: {}",
        answer.error()
    );
}

#[tokio::test]
async fn valid_result_is_accepted() {
    let server = TestServer::start().await;

    let answer = deliver_json(&server, &valid_result()).await;

    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "accepted");
    assert_eq!(answer.body["event"], "INFERENCE_COMPLETE");
    assert_eq!(answer.body["session_id"], SESSION);
    assert_eq!(answer.body["seq_num"], 9);
    assert_eq!(server.event_count().await, 1);
    server.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_api_key_is_401() {
    let server = TestServer::start().await;
    let body = valid_result().to_string();

    let wrong = server
        .client
        .post(server.url("/asleep-webhook"))
        .header("x-api-key", "not-the-key")
        .header("x-user-id", USER)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let wrong = JsonResponse::read(wrong).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.error().contains("x-api-key"), "{}", wrong.error());

    let missing = server
        .client
        .post(server.url("/asleep-webhook"))
        .header("x-user-id", USER)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let missing = JsonResponse::read(missing).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(missing.error().contains("x-api-key"), "{}", missing.error());

    // A key that is a prefix of the real one must not pass either.
    let prefix = server
        .client
        .post(server.url("/asleep-webhook"))
        .header("x-api-key", &common::API_KEY[..common::API_KEY.len() - 1])
        .header("x-user-id", USER)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(prefix.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(server.event_count().await, 0, "rejected deliveries must not be stored");
    server.stop().await;
}

#[tokio::test]
async fn missing_user_header_is_400() {
    let server = TestServer::start().await;

    let response = server.webhook().body(valid_result().to_string()).send().await.unwrap();
    let answer = JsonResponse::read(response).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.field(), "x-user-id");
    assert!(answer.error().contains("missing"), "{}", answer.error());
    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn header_and_body_user_must_agree() {
    let server = TestServer::start().await;

    let answer = server.deliver("someone-else", &valid_result().to_string()).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    let field = answer.field();
    assert!(field.contains("x-user-id"), "field {field:?} should name the header");
    assert!(field.contains("user_id"), "field {field:?} should name the body field");
    assert!(answer.error().contains("someone-else"), "{}", answer.error());
    assert!(answer.error().contains(USER), "{}", answer.error());
    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn content_type_must_be_json_when_present() {
    let server = TestServer::start().await;
    let body = valid_result().to_string();

    let plain = server
        .client
        .post(server.url("/asleep-webhook"))
        .header("x-api-key", common::API_KEY)
        .header("x-user-id", USER)
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let plain = JsonResponse::read(plain).await;
    assert_eq!(plain.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(plain.field(), "content-type");
    assert!(plain.error().contains("text/plain"), "{}", plain.error());
    assert_eq!(server.event_count().await, 0);

    let missing = server
        .client
        .post(server.url("/asleep-webhook"))
        .header("x-api-key", common::API_KEY)
        .header("x-user-id", USER)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let missing = JsonResponse::read(missing).await;
    assert_eq!(missing.status, StatusCode::OK, "{}", missing.body);
    assert_eq!(missing.body["status"], "accepted");

    let with_charset = server
        .client
        .post(server.url("/asleep-webhook"))
        .header("x-api-key", common::API_KEY)
        .header("x-user-id", USER)
        .header("content-type", "application/json; charset=utf-8")
        .body(inference_body(USER, SESSION, 19, &[1], &[0]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(with_charset.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn body_over_one_mebibyte_is_413() {
    let server = TestServer::start().await;
    // Valid JSON, so only the size can be the reason.
    let padding = "x".repeat(1024 * 1024);
    let body = json!({"event": "INFERENCE_COMPLETE", "padding": padding}).to_string();
    assert!(body.len() > 1024 * 1024);

    let answer = server.deliver(USER, &body).await;

    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.body);
    assert_eq!(answer.field(), "body");
    assert!(!answer.error().is_empty());
    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_names_line_and_column() {
    let server = TestServer::start().await;

    let answer = server
        .deliver(USER, "{\"event\": \"INFERENCE_COMPLETE\",\n  \"data\": {")
        .await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert_eq!(answer.field(), "body");
    assert!(answer.error().contains("line"), "{}", answer.error());
    assert!(answer.error().contains("column"), "{}", answer.error());
    server.stop().await;
}

#[tokio::test]
async fn out_of_range_stages_name_the_epoch() {
    let server = TestServer::start().await;
    let cases = [
        (
            inference_body(USER, SESSION, 9, &[0, 1, 2, 4], &[0, 0, 0, 0]),
            "data.sleep_stages[3]",
            "sleep stage 4",
        ),
        (
            inference_body(USER, SESSION, 9, &[0, 1, 2, -2], &[0, 0, 0, 0]),
            "data.sleep_stages[3]",
            "sleep stage -2",
        ),
        (
            inference_body(USER, SESSION, 9, &[0, 1, 2, 3], &[0, 2, 0, 0]),
            "data.snoring_stages[1]",
            "snoring value 2",
        ),
    ];
    for (body, field, case) in cases {
        let answer = deliver_json(&server, &body).await;
        assert_rejected(&answer, field, case);
        assert!(
            answer.error().contains("got"),
            "{case}: the message should show the value: {}",
            answer.error()
        );
    }

    // The flat shape names the field without the `data.` prefix.
    let mut flat = inference_body(USER, SESSION, 9, &[0, 1, 2, 3], &[0, 0, 0, 0])["data"].clone();
    flat["event"] = json!("INFERENCE_COMPLETE");
    flat["sleep_stages"] = json!([0, 7, 2, 3]);
    assert_rejected(
        &deliver_json(&server, &flat).await,
        "sleep_stages[1]",
        "flat sleep stage 7",
    );

    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn array_lengths_must_match() {
    let server = TestServer::start().await;

    let body = inference_body(USER, SESSION, 9, &[0, 1, 2, 3], &[0, 0, 0]);
    let answer = deliver_json(&server, &body).await;

    assert_rejected(&answer, "data.snoring_stages", "3 snoring values for 4 epochs");
    assert!(
        answer.error().contains('3') && answer.error().contains('4'),
        "{}",
        answer.error()
    );
    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn result_may_not_start_before_epoch_zero() {
    let server = TestServer::start().await;

    // seq_num 2 with 4 epochs would cover epochs -1..=2.
    let body = inference_body(USER, SESSION, 2, &[0, 1, 2, 3], &[0, 0, 0, 0]);
    let answer = deliver_json(&server, &body).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert!(answer.field().contains("data.seq_num"), "{}", answer.field());
    assert!(answer.field().contains("data.sleep_stages"), "{}", answer.field());
    assert!(answer.error().contains("epoch 0"), "{}", answer.error());

    // The boundary itself is valid: seq_num 3 with 4 epochs covers 0..=3.
    let boundary = inference_body(USER, SESSION, 3, &[0, 1, 2, 3], &[0, 0, 0, 0]);
    assert_eq!(deliver_json(&server, &boundary).await.status, StatusCode::OK);

    let negative = inference_body(USER, SESSION, -1, &[0], &[0]);
    assert_rejected(
        &deliver_json(&server, &negative).await,
        "data.seq_num",
        "negative seq_num",
    );
    server.stop().await;
}

#[tokio::test]
async fn invalid_ids_are_rejected() {
    let server = TestServer::start().await;
    let too_long = "s".repeat(129);
    let longest = "s".repeat(128);
    let cases = [
        ("", "must not be empty"),
        (too_long.as_str(), "129 characters"),
        ("night\u{7}one", "control characters"),
        ("night\none", "control characters"),
    ];
    for (session_id, problem) in cases {
        let body = inference_body(USER, session_id, 0, &[0], &[0]);
        let answer = deliver_json(&server, &body).await;
        assert_rejected(&answer, "data.session_id", &format!("session id {session_id:?}"));
        assert!(answer.error().contains(problem), "{session_id:?}: {}", answer.error());
    }

    // The body's user id is checked the same way.
    let mut empty_user = valid_result();
    empty_user["data"]["user_id"] = json!("");
    assert_rejected(
        &deliver_json(&server, &empty_user).await,
        "data.user_id",
        "empty body user id",
    );

    // So is the header, which has no body path.
    let long_user = "u".repeat(129);
    let answer = server
        .deliver(
            &long_user,
            &inference_body(&long_user, SESSION, 0, &[0], &[0]).to_string(),
        )
        .await;
    assert_rejected(&answer, "x-user-id", "129-character x-user-id");

    assert_eq!(server.event_count().await, 0);

    let body = inference_body(USER, &longest, 0, &[0], &[0]);
    assert_eq!(
        deliver_json(&server, &body).await.status,
        StatusCode::OK,
        "a 128-character id is valid"
    );
    server.stop().await;
}

#[tokio::test]
async fn unparsable_timestamps_are_rejected() {
    let server = TestServer::start().await;

    let mut flat = valid_result()["data"].clone();
    flat["event"] = json!("INFERENCE_COMPLETE");
    flat["timestamp"] = json!("yesterday evening");
    let answer = deliver_json(&server, &flat).await;
    assert_rejected(&answer, "timestamp", "flat timestamp");
    assert!(answer.error().contains("yesterday evening"), "{}", answer.error());

    let mut report = session_body(USER, SESSION, &[0, 1, 1], &[0, 0, 0]);
    report["data"]["session"]["start_time"] = json!("2026-13-45T99:00:00Z");
    assert_rejected(
        &deliver_json(&server, &report).await,
        "data.session.start_time",
        "session start_time",
    );

    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn unknown_event_is_stored_and_ignored() {
    let server = TestServer::start().await;
    let body = json!({"event": "SLEEP_DIARY_UPDATED", "version": "V3", "data": {"user_id": USER, "note": "new"}});

    let answer = deliver_json(&server, &body).await;

    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["status"], "ignored");
    assert_eq!(answer.body["event"], "SLEEP_DIARY_UPDATED");
    assert_eq!(
        server.event_count().await,
        1,
        "unknown events are kept in the event log"
    );

    // It changes no live night.
    let mut viewer = server.viewer(USER).await;
    assert_eq!(viewer.hypnogram.session_id, None);
    assert!(viewer.hypnogram.sleep_stages.is_empty());
    let again = deliver_json(&server, &body).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    viewer.assert_silent(std::time::Duration::from_millis(300)).await;
    viewer.close().await;
    server.stop().await;
}

#[tokio::test]
async fn repeated_result_keeps_first_content() {
    let server = TestServer::start().await;
    let first = inference_body(USER, SESSION, 3, &[0, 1, 2, 3], &[0, 0, 1, 1]);
    let changed = inference_body(USER, SESSION, 3, &[3, 3, 3, 3], &[1, 1, 1, 1]);

    assert_eq!(deliver_json(&server, &first).await.status, StatusCode::OK);
    let mut viewer = server.viewer(USER).await;

    let repeat = deliver_json(&server, &changed).await;
    assert_eq!(repeat.status, StatusCode::OK, "{}", repeat.body);
    assert_eq!(repeat.body["status"], "duplicate");

    let exact = deliver_json(&server, &first).await;
    assert_eq!(exact.status, StatusCode::OK);
    assert_eq!(exact.body["status"], "duplicate");

    viewer.assert_silent(std::time::Duration::from_millis(300)).await;
    assert_eq!(server.event_count().await, 1);
    viewer.close().await;

    // A new viewer loads the night from the database, which kept the first copy.
    server.wait_for_rooms(0).await;
    let fresh = server.viewer(USER).await;
    assert_eq!(fresh.hypnogram.sleep_stages, vec![0, 1, 2, 3]);
    assert_eq!(fresh.hypnogram.snoring_stages, vec![0, 0, 1, 1]);
    fresh.close().await;
    server.stop().await;
}

#[tokio::test]
async fn repeated_final_report_keeps_first_content() {
    let server = TestServer::start().await;
    let first = session_body(USER, SESSION, &[0, 1, 2, 3, 1], &[0, 0, 0, 1, 0]);
    let changed = session_body(USER, SESSION, &[0, 0, 0, 0, 0], &[1, 1, 1, 1, 1]);

    assert_eq!(deliver_json(&server, &first).await.status, StatusCode::OK);
    let mut viewer = server.viewer(USER).await;
    assert!(viewer.hypnogram.complete);

    let repeat = deliver_json(&server, &changed).await;
    assert_eq!(repeat.status, StatusCode::OK, "{}", repeat.body);
    assert_eq!(repeat.body["status"], "duplicate");
    assert_eq!(repeat.body["event"], "SESSION_COMPLETE");
    viewer.assert_silent(std::time::Duration::from_millis(300)).await;
    viewer.close().await;

    server.wait_for_rooms(0).await;
    let fresh = server.viewer(USER).await;
    assert_eq!(fresh.hypnogram.sleep_stages, vec![0, 1, 2, 3, 1]);
    assert_eq!(fresh.hypnogram.snoring_stages, vec![0, 0, 0, 1, 0]);
    fresh.close().await;
    assert_eq!(server.event_count().await, 1);
    server.stop().await;
}

#[tokio::test]
async fn unavailable_database_is_503_with_retry_after() {
    let server = TestServer::start().await;
    server.server.state.store.close().await;

    let response = server
        .webhook()
        .header("x-user-id", USER)
        .body(valid_result().to_string())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after = response
        .headers()
        .get("retry-after")
        .expect("a 503 must carry Retry-After");
    assert!(retry_after.to_str().unwrap().parse::<u64>().unwrap() > 0);
    let answer = JsonResponse::read(response).await;
    assert!(answer.error().contains("database"), "{}", answer.body);
}

#[tokio::test]
async fn duplicate_key_is_rejected() {
    let server = TestServer::start().await;
    let body = r#"{"event": "INFERENCE_COMPLETE", "version": "V3", "data": {"user_id": "webhook-user", "session_id": "s", "seq_num": 9, "seq_num": 19, "sleep_stages": [0]}}"#;

    let answer = server.deliver(USER, body).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert_eq!(answer.field(), "body");
    assert!(
        answer.error().contains(r#"duplicate key "seq_num""#),
        "{}",
        answer.error()
    );
    assert_eq!(server.event_count().await, 0, "a rejected delivery stores nothing");
}
