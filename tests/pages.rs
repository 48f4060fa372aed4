//! Pages and the JSON API over real HTTP: reports, history, the live page's
//! frame, viewer authentication, and what survives a restart.

mod common;

use common::{
    JsonResponse, NIGHTS, Night, TestServer, expired_token, inference_body, path_segment, session_body, stages,
    viewer_token,
};
use reqwest::StatusCode;
use serde_json::Value;

/// Returns the text of the `<dd>` of the report figure named `key`.
fn figure_value<'a>(html: &'a str, key: &str) -> &'a str {
    let marker = format!(r#"data-figure="{key}""#);
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("the report has no figure {key}"));
    let figure = &html[at..];
    let value = &figure[figure.find("<dd").expect("a figure has a <dd>")..];
    let value = &value[value.find('>').unwrap() + 1..];
    value[..value.find('<').unwrap()].trim()
}

/// Formats seconds as the report does: whole hours and rounded minutes.
fn hours_minutes(seconds: f64) -> String {
    let minutes = (seconds / 60.0).round() as i64;
    match (minutes / 60, minutes % 60) {
        (0, minutes) => format!("{minutes} min"),
        (hours, 0) => format!("{hours} h"),
        (hours, minutes) => format!("{hours} h {minutes} min"),
    }
}

/// Checks a complete night's report page against its `night.json`.
fn assert_report_shows_night(html: &str, night: &Night) {
    let name = night.name;
    let stat = &night.truth["stat"];
    assert!(html.contains(r#"<svg id="hypnogram""#), "{name}: no SVG hypnogram");
    assert!(
        html.contains(&format!(r#"data-session-id="{}""#, night.session_id())),
        "{name}"
    );
    assert!(html.contains(r#"data-complete="true""#), "{name}");
    assert!(
        !html.contains(r#"id="in-progress""#),
        "{name}: a complete night is not in progress"
    );

    let efficiency = stat["sleep_efficiency"].as_f64().unwrap() * 100.0;
    assert_eq!(
        figure_value(html, "sleep_efficiency"),
        format!("{efficiency:.0}%"),
        "{name}"
    );
    let total_sleep = stat["time_in_sleep"].as_f64().unwrap();
    assert_eq!(figure_value(html, "total_sleep"), hours_minutes(total_sleep), "{name}");
    let time_in_bed = stat["time_in_bed"].as_f64().unwrap();
    assert_eq!(figure_value(html, "time_in_bed"), hours_minutes(time_in_bed), "{name}");
    let latency = stat["sleep_latency"].as_f64().unwrap();
    assert_eq!(figure_value(html, "sleep_latency"), hours_minutes(latency), "{name}");
    assert_eq!(
        figure_value(html, "waso_count"),
        stat["waso_count"].to_string(),
        "{name}"
    );

    // Start and end in the session's own zone.
    let zone: chrono_tz::Tz = night.truth["timezone"].as_str().unwrap().parse().unwrap();
    for (field, element) in [("start_time", "start-time"), ("end_time", "end-time")] {
        let time = chrono::DateTime::parse_from_rfc3339(night.truth[field].as_str().unwrap()).unwrap();
        let displayed = time.with_timezone(&zone).format("%a %-d %b %Y, %H:%M %Z").to_string();
        assert!(
            html.contains(&format!(r#"<dd id="{element}">{displayed}</dd>"#)),
            "{name}: {field} should read {displayed}"
        );
    }
}

#[tokio::test]
async fn report_page_shows_each_night() {
    for name in NIGHTS {
        let night = Night::load(name);
        let server = TestServer::start().await;
        night.replay(&server).await;
        let token = viewer_token(night.user_id());

        let html = server.get_ok(&format!("{}?token={token}", night.report_path())).await;
        assert_report_shows_night(&html, &night);
        server.stop().await;
    }
}

#[tokio::test]
async fn api_serves_night_stages() {
    for name in NIGHTS {
        let night = Night::load(name);
        let server = TestServer::start().await;
        night.replay(&server).await;

        let document = server.api_document(night.user_id(), night.session_id()).await;
        assert_eq!(document["user_id"], night.user_id(), "{name}");
        assert_eq!(document["session_id"], night.session_id(), "{name}");
        assert_eq!(document["complete"], true, "{name}");
        assert_eq!(document["timezone"], night.truth["timezone"], "{name}");
        assert_eq!(document["start_time_estimated"], false, "{name}");
        assert_eq!(stages(&document, "sleep_stages"), night.sleep_stages(), "{name}");
        assert_eq!(stages(&document, "snoring_stages"), night.snoring_stages(), "{name}");
        assert_eq!(document["epoch_seconds"], 30, "{name}");
        assert_eq!(
            document["stat"]["sleep_efficiency"].as_f64(),
            night.truth["stat"]["sleep_efficiency"].as_f64(),
            "{name}: efficiency is a fraction in the API, as Asleep sends it"
        );
        assert_eq!(
            document["statistics"]["time_in_sleep"].as_f64(),
            night.truth["stat"]["time_in_sleep"].as_f64(),
            "{name}: the computed total sleep equals Asleep's"
        );
        assert_statistics_match_asleep(name, &document["statistics"], &night.truth["stat"]);
        assert_eq!(
            document["stat"]["time_in_sleep"].as_f64(),
            night.truth["stat"]["time_in_sleep"].as_f64(),
            "{name}: durations stay in seconds"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn history_links_each_session() {
    let night = Night::load("night-flat");
    let server = TestServer::start().await;
    let token = viewer_token(night.user_id());

    let empty = server
        .get_ok(&format!("/users/{}?token={token}", path_segment(night.user_id())))
        .await;
    assert!(
        empty.contains(r#"id="no-nights""#),
        "a user without nights gets a friendly page"
    );

    night.replay(&server).await;
    // A second night of the same user, still in progress.
    let later = inference_body(night.user_id(), "later-night", 9, &[0, 0, 1, 1], &[0, 0, 0, 0]);
    assert_eq!(
        server.deliver(night.user_id(), &later.to_string()).await.status,
        StatusCode::OK
    );

    let html = server
        .get_ok(&format!("/users/{}?token={token}", path_segment(night.user_id())))
        .await;
    // Links are plain paths: the viewer cookie carries the token.
    let report_link = format!(r#"href="{}""#, night.report_path());
    assert!(html.contains(&report_link), "history should link {report_link}");
    assert!(!html.contains(&token), "the history page repeats the token");
    assert!(html.contains(&format!(
        r#"data-session-id="{}" data-complete="true""#,
        night.session_id()
    )));
    assert!(html.contains(r#"data-session-id="later-night" data-complete="false""#));
    assert!(
        html.find("later-night").unwrap() < html.find(night.session_id()).unwrap(),
        "the newer night is listed first"
    );

    // The linked report opens with the same token.
    let report = server.get_ok(&format!("{}?token={token}", night.report_path())).await;
    assert_report_shows_night(&report, &night);
    server.stop().await;
}

#[tokio::test]
async fn partial_night_report_is_in_progress() {
    let night = Night::load("night-enveloped");
    let server = TestServer::start().await;
    let partials: Vec<_> = night
        .deliveries
        .iter()
        .filter(|delivery| delivery.is_inference())
        .take(12)
        .collect();
    for delivery in &partials {
        assert_eq!(
            server.deliver(night.user_id(), &delivery.body).await.status,
            StatusCode::OK
        );
    }
    let epochs = partials.last().unwrap().seq_num().unwrap() as usize + 1;

    let document = server.api_document(night.user_id(), night.session_id()).await;
    assert_eq!(document["complete"], false);
    assert_eq!(document["start_time_estimated"], true);
    assert_eq!(stages(&document, "sleep_stages"), night.sleep_stages()[..epochs]);
    assert_eq!(stages(&document, "snoring_stages"), night.snoring_stages()[..epochs]);

    let token = viewer_token(night.user_id());
    let html = server.get_ok(&format!("{}?token={token}", night.report_path())).await;
    assert!(html.contains(r#"id="in-progress""#));
    assert!(html.contains(r#"data-complete="false""#));
    assert!(html.contains(r#"<svg id="hypnogram""#));

    // 150 epochs of 30 s: the history shows the night's length so far.
    assert_eq!(epochs, 150);
    let history = server
        .get_ok(&format!("/users/{}?token={token}", night.user_id()))
        .await;
    assert!(history.contains("1 h 15 min so far"), "{history}");
    server.stop().await;
}

#[tokio::test]
async fn live_page_frame_and_script() {
    let server = TestServer::start().await;
    let user = "live-user";
    let token = viewer_token(user);

    let response = server.get(&format!("/users/{user}/live?token={token}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let html = response.text().await.unwrap();
    assert!(html.contains(r#"id="live-config""#));
    assert!(html.contains(r#"id="connection""#));
    assert!(html.contains(r#"<svg id="hypnogram""#));
    assert!(html.contains(r#"src="/static/live.js""#));

    // The token travels in the address, so it must not leak further.
    assert_eq!(
        headers.get("referrer-policy").map(|value| value.to_str().unwrap()),
        Some("no-referrer")
    );
    assert_eq!(
        headers.get("cache-control").map(|value| value.to_str().unwrap()),
        Some("no-store")
    );
    assert!(headers.contains_key("content-security-policy"));

    let script = server.get("/static/live.js").await;
    assert_eq!(script.status(), StatusCode::OK, "the live script is served");
    assert!(script.text().await.unwrap().contains("data-epochs"));
    server.stop().await;
}

#[tokio::test]
async fn pages_require_valid_token() {
    let server = TestServer::start().await;
    let alice = "alice";
    let bob = "bob";
    let bob_session = "bob-secret-night";
    let bob_night = session_body(bob, bob_session, &[0, 1, 2, 3], &[0, 0, 1, 0]);
    assert_eq!(server.deliver(bob, &bob_night.to_string()).await.status, StatusCode::OK);

    let paths = [
        format!("/users/{bob}/live"),
        format!("/users/{bob}"),
        format!("/users/{bob}/sessions/{bob_session}"),
        format!("/api/users/{bob}/sessions/{bob_session}"),
    ];
    for path in &paths {
        let cases = [
            (path.clone(), "no token"),
            (format!("{path}?token="), "empty token"),
            (format!("{path}?token={}", expired_token(bob)), "expired token"),
            (format!("{path}?token={}", viewer_token(alice)), "alice's token"),
            (format!("{path}?token=v1.9999999999.forged"), "forged token"),
        ];
        for (url, case) in cases {
            let response = server.get(&url).await;
            let status = response.status();
            let body = response.text().await.unwrap();
            assert!(
                status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
                "{path} with {case}: {status}"
            );
            assert!(
                !body.contains(bob_session),
                "{path} with {case} leaks bob's session: {body}"
            );
            assert!(!body.contains("sleep_stages"), "{path} with {case} leaks data: {body}");
        }
    }

    // The API rejects with a JSON error that names the expired token.
    let response = server
        .get(&format!(
            "/api/users/{bob}/sessions/{bob_session}?token={}",
            expired_token(bob)
        ))
        .await;
    let rejection = JsonResponse::read(response).await;
    assert_eq!(rejection.status, StatusCode::UNAUTHORIZED);
    assert!(rejection.error().contains("expired"), "{}", rejection.error());

    // A valid token for the right user works, and an unknown session is 404.
    let document = server.api_document(bob, bob_session).await;
    assert_eq!(stages(&document, "sleep_stages"), vec![0, 1, 2, 3]);
    let missing = server
        .get(&format!(
            "/api/users/{bob}/sessions/no-such-night?token={}",
            viewer_token(bob)
        ))
        .await;
    let missing = JsonResponse::read(missing).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.error().contains("not found"), "{}", missing.error());
    server.stop().await;
}

#[tokio::test]
async fn ids_with_reserved_characters_round_trip() {
    let server = TestServer::start().await;
    let user = "night owl/1";
    let session = "s?1&x=#2";
    let body = session_body(user, session, &[0, 1, 1, 2], &[0, 0, 1, 1]);
    assert_eq!(server.deliver(user, &body.to_string()).await.status, StatusCode::OK);

    let document = server.api_document(user, session).await;
    assert_eq!(document["user_id"], user);
    assert_eq!(document["session_id"], session);
    assert_eq!(stages(&document, "sleep_stages"), vec![0, 1, 1, 2]);

    let token = viewer_token(user);
    let history = server
        .get_ok(&format!("/users/{}?token={token}", path_segment(user)))
        .await;
    let link = format!("/users/{}/sessions/{}", path_segment(user), path_segment(session));
    assert!(history.contains(&format!(r#"href="{link}""#)), "{link} in {history}");
    server.stop().await;
}

#[tokio::test]
async fn repeated_delivery_keeps_first_in_api() {
    let server = TestServer::start().await;
    let user = "repeat-user";
    let session = "repeat-night";
    let first = inference_body(user, session, 3, &[0, 1, 2, 3], &[0, 0, 1, 1]);
    let changed = inference_body(user, session, 3, &[2, 2, 2, 2], &[1, 1, 1, 1]);

    assert_eq!(server.deliver(user, &first.to_string()).await.status, StatusCode::OK);
    let repeat = server.deliver(user, &changed.to_string()).await;
    assert_eq!(repeat.status, StatusCode::OK);
    assert_eq!(repeat.body["status"], "duplicate");
    let document = server.api_document(user, session).await;
    assert_eq!(stages(&document, "sleep_stages"), vec![0, 1, 2, 3]);
    assert_eq!(stages(&document, "snoring_stages"), vec![0, 0, 1, 1]);

    let report = session_body(user, session, &[0, 1, 1, 1, 2], &[0, 0, 0, 0, 0]);
    let changed_report = session_body(user, session, &[3, 3, 3, 3, 3], &[1, 1, 1, 1, 1]);
    assert_eq!(server.deliver(user, &report.to_string()).await.status, StatusCode::OK);
    let repeat = server.deliver(user, &changed_report.to_string()).await;
    assert_eq!(repeat.status, StatusCode::OK);
    assert_eq!(repeat.body["status"], "duplicate");
    let document = server.api_document(user, session).await;
    assert_eq!(document["complete"], true);
    assert_eq!(stages(&document, "sleep_stages"), vec![0, 1, 1, 1, 2]);
    assert_eq!(stages(&document, "snoring_stages"), vec![0, 0, 0, 0, 0]);
    server.stop().await;
}

#[tokio::test]
async fn restart_serves_stored_night() {
    let night = Night::load("night-enveloped");
    let server = TestServer::start().await;
    night.replay(&server).await;
    let token = viewer_token(night.user_id());
    let report_before = server.get_ok(&format!("{}?token={token}", night.report_path())).await;
    let document_before = server.api_document(night.user_id(), night.session_id()).await;

    let server = server.restart().await;

    let report_after = server.get_ok(&format!("{}?token={token}", night.report_path())).await;
    assert_report_shows_night(&report_after, &night);
    assert_eq!(
        report_after, report_before,
        "the report page is the same after the restart"
    );
    let document_after = server.api_document(night.user_id(), night.session_id()).await;
    assert_eq!(document_after, document_before);
    assert_eq!(stages(&document_after, "sleep_stages"), night.sleep_stages());

    let history = server
        .get_ok(&format!("/users/{}?token={token}", path_segment(night.user_id())))
        .await;
    assert!(history.contains(&format!(r#"href="{}""#, night.report_path())));
    server.stop().await;
}

/// Checks every figure Asleep sent for a recorded night against the figure
/// this server computed from the same hypnogram.
fn assert_statistics_match_asleep(name: &str, computed: &Value, asleep: &Value) {
    let asleep = asleep.as_object().expect("the recorded night has a stat object");
    let mut compared = 0;
    for (field, expected) in asleep {
        let actual = &computed[field];
        match (expected, field.as_str()) {
            (Value::Null, _) => continue,
            // Asleep sends the mean cycle length in whole seconds, truncated.
            (Value::Number(expected), "sleep_cycle") => {
                assert_eq!(actual.as_f64().map(f64::trunc), expected.as_f64(), "{name}: {field}");
            }
            (Value::Number(expected), _) => assert_eq!(actual.as_f64(), expected.as_f64(), "{name}: {field}"),
            (Value::String(expected), _) => assert_eq!(
                instant(actual),
                instant(&Value::from(expected.as_str())),
                "{name}: {field}"
            ),
            (Value::Array(expected), _) => {
                let expected: Vec<_> = expected.iter().map(instant).collect();
                let actual: Vec<_> = actual.as_array().expect(field).iter().map(instant).collect();
                assert_eq!(actual, expected, "{name}: {field}");
            }
            _ => panic!("{name}: unexpected stat value {field}: {expected}"),
        }
        compared += 1;
    }
    assert!(compared >= 30, "{name}: only {compared} figures compared");
}

fn instant(value: &Value) -> chrono::DateTime<chrono::Utc> {
    let text = value.as_str().unwrap_or_else(|| panic!("not a time: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|error| panic!("not a time: {text}: {error}"))
        .to_utc()
}
