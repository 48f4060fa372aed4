//! Malformed deliveries over HTTP, as a table: each gets an exact status and
//! an error naming the field, and none leaves a row in the event log.
//!
//! tests/webhook.rs covers single rules with their messages (stage ranges,
//! id rules, array lengths, timestamps, body size). This file covers the
//! body as a whole: every field of both body shapes and both events with a
//! wrong type, broken JSON, huge numbers, huge arrays and invalid UTF-8.

mod common;

use common::{JsonResponse, TestServer, inference_body};
use reqwest::StatusCode;
use serde_json::{Value, json};

const USER: &str = "malformed-user";

/// Reads `tests/fixtures/single/{name}` as JSON.
fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/single/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Sends raw bytes as a delivery from `user` and returns the answer.
async fn deliver_bytes(server: &TestServer, user: &str, body: Vec<u8>) -> JsonResponse {
    let response = server
        .webhook()
        .header("x-user-id", user)
        .body(body)
        .send()
        .await
        .expect("the server dropped the connection");
    JsonResponse::read(response).await
}

/// Checks a rejection: the status, the `field`, an `error` that names the
/// field, and an event log with no new row.
async fn assert_rejected(server: &TestServer, case: &str, answer: &JsonResponse, status: StatusCode, field: &str) {
    assert_eq!(answer.status, status, "{case}: {}", answer.body);
    assert_eq!(answer.field(), field, "{case}: {}", answer.body);
    assert!(
        answer.error().contains(field),
        "{case}: the error should name {field}: {}",
        answer.error()
    );
    assert_eq!(
        server.event_count().await,
        0,
        "{case}: a rejected delivery stored a row"
    );
}

#[tokio::test]
async fn broken_bodies_are_400_body() {
    let server = TestServer::start().await;
    let valid = fixture("inference-enveloped.json").to_string();
    let truncated = valid[..valid.len() / 2].to_string();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));

    // (case, body, expected field, a word the error must contain)
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("empty body", Vec::new(), "body", "EOF"),
        ("whitespace only", b" \n\t ".to_vec(), "body", "EOF"),
        ("null", b"null".to_vec(), "body", "must be a JSON object, got null"),
        (
            "empty array",
            b"[]".to_vec(),
            "body",
            "must be a JSON object, got an array",
        ),
        ("string", br#""INFERENCE_COMPLETE""#.to_vec(), "body", "got a string"),
        ("number", b"42".to_vec(), "body", "got a number"),
        ("truncated JSON", truncated.into_bytes(), "body", "EOF"),
        (
            "trailing garbage",
            format!("{valid} x").into_bytes(),
            "body",
            "trailing characters",
        ),
        (
            "two documents",
            format!("{valid}{valid}").into_bytes(),
            "body",
            "trailing characters",
        ),
        ("nested 10,000 deep", deep.into_bytes(), "body", "recursion limit"),
        (
            "number beyond f64",
            valid.replace("\"seq_num\":39", "\"seq_num\":1e400").into_bytes(),
            "body",
            "number out of range",
        ),
        (
            "duplicated top-level key",
            format!(r#"{{"event": "SESSION_COMPLETE", {}"#, &valid[1..]).into_bytes(),
            "body",
            r#"duplicate key "event""#,
        ),
        (
            "duplicated key in the session",
            fixture("session-enveloped.json")
                .to_string()
                .replacen(r#""state":"COMPLETE""#, r#""state":"COMPLETE","state":"FAILED""#, 1)
                .into_bytes(),
            "body",
            r#"duplicate key "state""#,
        ),
        (
            "invalid UTF-8 in a string",
            valid.replace("20261120872578_72109", "NOT-UTF-8").into_bytes(),
            "body",
            "invalid unicode",
        ),
        (
            "invalid UTF-8 outside strings",
            [valid.as_bytes(), &[0xFF, 0xFE]].concat(),
            "body",
            "trailing characters",
        ),
        (
            "lone surrogate escape",
            valid
                .replace("\"20261120872578_72109\"", r#""night\ud800x""#)
                .into_bytes(),
            "body",
            "hex escape",
        ),
    ];
    for (case, mut body, field, problem) in cases {
        // Bytes 0xC3 0x28 are not UTF-8: 0xC3 starts a two-byte sequence
        // and 0x28 cannot continue it.
        replace_bytes(&mut body, b"NOT-UTF-8", b"night\xC3\x28");
        let answer = deliver_bytes(&server, "G-20261101-demo-user-0001", body).await;
        assert_rejected(&server, case, &answer, StatusCode::BAD_REQUEST, field).await;
        assert!(answer.error().contains(problem), "{case}: {}", answer.error());
    }
    server.stop().await;
}

/// Replaces the first occurrence of `from` in `bytes` with `to`.
fn replace_bytes(bytes: &mut Vec<u8>, from: &[u8], to: &[u8]) {
    if let Some(start) = bytes.windows(from.len()).position(|window| window == from) {
        bytes.splice(start..start + from.len(), to.iter().copied());
    }
}

#[tokio::test]
async fn empty_object_names_event() {
    let server = TestServer::start().await;
    let answer = deliver_bytes(&server, USER, b"{}".to_vec()).await;
    assert_rejected(&server, "{}", &answer, StatusCode::BAD_REQUEST, "event").await;
    assert!(answer.error().contains("is missing"), "{}", answer.error());
    server.stop().await;
}

/// Returns a value of another JSON type than `value`, which every field the
/// parser reads rejects: a number for a string, a string for a number, an
/// object for an array or null.
fn wrong_type(value: &Value) -> Value {
    match value {
        Value::String(_) => json!(42),
        Value::Number(_) | Value::Bool(_) => json!("42"),
        Value::Array(_) | Value::Null => json!({"wrong": "type"}),
        Value::Object(_) => json!("wrong type"),
    }
}

/// Lists every field of `value` with its path, such as `data.session.id`;
/// of each array only the array itself and its first element.
fn field_paths(value: &Value, prefix: &str, into: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                into.push(path.clone());
                field_paths(child, &path, into);
            }
        }
        Value::Array(items) => {
            if let Some(first) = items.first() {
                let path = format!("{prefix}[0]");
                into.push(path.clone());
                field_paths(first, &path, into);
            }
        }
        _ => {}
    }
}

fn pointer(path: &str) -> String {
    format!("/{}", path.replace(['.', '['], "/").replace(']', ""))
}

#[tokio::test]
async fn wrong_type_in_every_field_is_named() {
    let server = TestServer::start().await;

    // Fields this server does not read, or reads only when a field earlier in
    // its list of spellings is absent; a wrong type there changes nothing.
    let unread = ["version", "data.session.created_timezone"];
    let mut accepted = 0;
    for (name, user) in [
        ("inference-enveloped.json", "G-20261101-demo-user-0001"),
        ("inference-flat-short.json", "user123"),
        ("session-enveloped.json", "G-20261101-demo-user-0001"),
        ("session-flat.json", "user123"),
    ] {
        let original = fixture(name);
        let mut paths = Vec::new();
        field_paths(&original, "", &mut paths);
        for path in paths {
            let mut body = original.clone();
            let slot = body.pointer_mut(&pointer(&path)).unwrap();
            let wrong = wrong_type(slot);
            *slot = wrong.clone();
            let case = format!("{name}: {path} = {wrong}");

            let answer = deliver_bytes(&server, user, body.to_string().into_bytes()).await;
            if unread.contains(&path.as_str()) {
                assert_eq!(answer.status, StatusCode::OK, "{case}: {}", answer.body);
                if answer.body["status"] == "accepted" {
                    accepted += 1;
                }
                continue;
            }
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{case}: {}", answer.body);
            assert_eq!(answer.field(), path, "{case}: {}", answer.body);
            assert!(answer.error().contains(&path), "{case}: {}", answer.error());
            assert!(
                answer.error().contains("must be") || answer.error().contains("is not"),
                "{case}: the error should say what is expected: {}",
                answer.error()
            );
            assert_eq!(
                server.event_count().await,
                accepted,
                "{case}: a rejected delivery stored a row"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn out_of_range_numbers_name_the_field() {
    let server = TestServer::start().await;
    let sixteen = vec![0; 16];

    let mut cases: Vec<(String, Value, &str)> = Vec::new();
    for (label, seq_num) in [
        ("2^64", json!(18446744073709551616.0)),
        ("u64::MAX", json!(u64::MAX)),
        ("i64::MIN", json!(i64::MIN)),
        ("-1", json!(-1)),
        ("5760, one past 48 hours", json!(5760)),
        ("fraction 20.5", json!(20.5)),
        ("1e300", json!(1e300)),
    ] {
        let mut body = inference_body(USER, "night", 20, &sixteen, &sixteen);
        body["data"]["seq_num"] = seq_num;
        cases.push((format!("seq_num {label}"), body, "data.seq_num"));
    }
    let mut fraction_stage = inference_body(USER, "night", 20, &sixteen, &sixteen);
    fraction_stage["data"]["sleep_stages"][5] = json!(1.5);
    cases.push(("stage 1.5".into(), fraction_stage, "data.sleep_stages[5]"));
    let mut huge_stage = inference_body(USER, "night", 20, &sixteen, &sixteen);
    huge_stage["data"]["sleep_stages"][0] = json!(u64::MAX);
    cases.push(("stage u64::MAX".into(), huge_stage, "data.sleep_stages[0]"));
    let mut huge_inference_seq = inference_body(USER, "night", 20, &sixteen, &sixteen);
    huge_inference_seq["data"]["inference_seq_num"] = json!(u64::MAX);
    cases.push((
        "inference_seq_num u64::MAX".into(),
        huge_inference_seq,
        "data.inference_seq_num",
    ));

    let report = fixture("session-enveloped.json");
    for (path, value) in [
        ("data.stat.time_in_bed", json!(1e300)),
        ("data.stat.time_in_bed", json!(-30)),
        ("data.stat.waso_count", json!(u64::MAX)),
        ("data.stat.sleep_index", json!(100.5)),
        ("data.stat.rem_ratio", json!(-0.1)),
        ("data.missing_data_ratio", json!(1.01)),
        ("data.stat.sleep_efficiency", json!(250)),
        ("data.stat.sleep_cycle", json!(-1)),
        ("data.stat.sleep_cycle", json!(1e300)),
        // Once a panic on multiplying the hours, which dropped the connection.
        ("data.stat.sleep_time", json!("9223372036854775807:00:00")),
        ("data.stat.sleep_time", json!("49:00:00")),
        ("data.session.start_time", json!("+262143-12-31T23:59:59")),
        ("data.session.start_time", json!("-262144-01-01T00:00:00")),
        ("data.stat.wake_time", json!("+262143-12-31T23:59:59Z")),
    ] {
        let mut body = report.clone();
        *body.pointer_mut(&pointer(path)).unwrap() = value.clone();
        cases.push((format!("{path} {value}"), body, path));
    }

    for (case, body, field) in cases {
        let answer = deliver_bytes(&server, body_user(&body), body.to_string().into_bytes()).await;
        assert_rejected(&server, &case, &answer, StatusCode::BAD_REQUEST, field).await;
    }
    server.stop().await;
}

/// Returns the user a body names, for its `x-user-id`.
fn body_user(body: &Value) -> &str {
    body["data"]["user_id"].as_str().unwrap_or(USER)
}

#[tokio::test]
async fn arrays_of_100000_epochs_are_rejected() {
    let server = TestServer::start().await;
    let many = vec![0i64; 100_000];

    let mut sleep = inference_body(USER, "night", 5759, &[0], &[0]);
    sleep["data"]["sleep_stages"] = json!(many);
    sleep["data"]["snoring_stages"] = Value::Null;

    let mut snoring = inference_body(USER, "night", 5759, &[0; 10], &[0; 10]);
    snoring["data"]["snoring_stages"] = json!(many);

    let mut breath = inference_body(USER, "night", 5759, &[0; 10], &[0; 10]);
    breath["data"]["breath_stages"] = json!(many);

    let mut report = fixture("session-enveloped.json");
    report["data"]["session"]["sleep_stages"] = json!(many);
    report["data"]["session"]["snoring_stages"] = Value::Null;

    for (case, body, field) in [
        ("100,000 sleep stages", sleep, "data.sleep_stages"),
        ("100,000 snoring values", snoring, "data.snoring_stages"),
        ("100,000 breath values", breath, "data.breath_stages"),
        ("final report of 100,000 epochs", report, "data.session.sleep_stages"),
    ] {
        let answer = deliver_bytes(&server, body_user(&body), body.to_string().into_bytes()).await;
        assert_rejected(&server, case, &answer, StatusCode::BAD_REQUEST, field).await;
        assert!(answer.error().contains("100000"), "{case}: {}", answer.error());
        assert!(answer.error().contains("5760"), "{case}: {}", answer.error());
    }
    server.stop().await;
}

#[tokio::test]
async fn non_ascii_user_header_is_400() {
    let server = TestServer::start().await;
    let body = inference_body(USER, "night", 3, &[0, 1, 2, 3], &[0, 0, 0, 0]).to_string();

    let response = server
        .webhook()
        .header(
            "x-user-id",
            reqwest::header::HeaderValue::from_bytes(b"user-\xff\xfe").unwrap(),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let answer = JsonResponse::read(response).await;

    assert_rejected(
        &server,
        "x-user-id with bytes 0xFF 0xFE",
        &answer,
        StatusCode::BAD_REQUEST,
        "x-user-id",
    )
    .await;
    assert!(answer.error().contains("visible ASCII"), "{}", answer.error());
    server.stop().await;
}

#[tokio::test]
async fn extreme_valid_years_render() {
    let server = TestServer::start().await;
    let user = "G-20261101-demo-user-0001";
    for (session, start) in [
        ("year-0", "0000-01-01T00:00:00Z"),
        ("year-9999", "9999-12-31T23:59:59Z"),
    ] {
        let mut body = fixture("session-enveloped.json");
        body["data"]["session"]["id"] = json!(session);
        body["data"]["session"]["start_time"] = json!(start);
        body["data"]["session"]["end_time"] = Value::Null;
        let answer = deliver_bytes(&server, user, body.to_string().into_bytes()).await;
        assert_eq!(answer.status, StatusCode::OK, "{start}: {}", answer.body);

        // The report's clock times reach past the year's end; every page
        // and export still renders.
        assert_eq!(server.api_document(user, session).await["start_time"], start);
        server.report_page(user, session).await;
        let token = common::viewer_token(user);
        let csv = format!(
            "{}/epochs.csv?token={token}",
            sleep_dashboard::report::report_path(user, session)
        );
        server.get_ok(&csv).await;
    }
    server.stop().await;
}
