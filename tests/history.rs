//! The history page over real HTTP: trend charts with their text
//! alternatives, period averages that skip nights without sleep, clock
//! times averaged across midnight, and the checks on `from` and `to`.

mod common;

use common::{TestServer, final_report_body, path_segment, viewer_token};
use reqwest::StatusCode;
use sleep_dashboard::statistics::StageModel;

const USER: &str = "trend-user";

/// Returns a four-stage hypnogram: `latency` epochs of wake, `cycles` sleep
/// cycles of 84 epochs (30 light, 20 deep, 10 light and 24 REM, so each REM
/// run ends a cycle), then `final_wake` epochs of wake.
fn four_stage(latency: usize, cycles: usize, final_wake: usize) -> Vec<i64> {
    let mut stages = vec![0; latency];
    for _ in 0..cycles {
        stages.extend([1; 30]);
        stages.extend([2; 20]);
        stages.extend([1; 10]);
        stages.extend([3; 24]);
    }
    stages.extend(vec![0; final_wake]);
    stages
}

/// Returns a two-stage hypnogram: wake, `sleep` epochs of sleep, wake.
fn two_stage(latency: usize, sleep: usize, final_wake: usize) -> Vec<i64> {
    let mut stages = vec![0; latency];
    stages.extend(vec![1; sleep]);
    stages.extend(vec![0; final_wake]);
    stages
}

/// One delivered night of the test user.
struct TestNight {
    session_id: &'static str,
    timezone: &'static str,
    start: &'static str,
    stages: Vec<i64>,
    peculiarities: &'static [&'static str],
}

/// Returns the nights of the test user, oldest first:
/// - `night-seoul` on 25 Oct: falls asleep at 23:30 KST, wakes at 03:00;
/// - `night-utc` on 27 Oct: falls asleep at 00:30 UTC, wakes at 04:00;
/// - `night-never` on 28 Oct: marked `NEVER_SLEPT`, all wake;
/// - `night-two-stage` on 29 Oct: wake and sleep only;
/// - `night-dst` on 31 Oct: 22:00 EDT to 06:00 EST, across the end of
///   daylight-saving time in New York.
///
/// 26 and 30 Oct have no night.
fn nights() -> Vec<TestNight> {
    vec![
        TestNight {
            session_id: "night-seoul",
            timezone: "Asia/Seoul",
            start: "2026-10-25T23:20:00+09:00",
            stages: four_stage(20, 5, 0),
            peculiarities: &[],
        },
        TestNight {
            session_id: "night-utc",
            timezone: "UTC",
            start: "2026-10-27T00:20:00+00:00",
            stages: four_stage(20, 5, 0),
            peculiarities: &[],
        },
        TestNight {
            session_id: "night-never",
            timezone: "America/New_York",
            start: "2026-10-28T23:00:00-04:00",
            stages: vec![0; 200],
            peculiarities: &["NEVER_SLEPT"],
        },
        TestNight {
            session_id: "night-two-stage",
            timezone: "America/New_York",
            start: "2026-10-29T22:00:00-04:00",
            stages: two_stage(20, 400, 20),
            peculiarities: &[],
        },
        TestNight {
            session_id: "night-dst",
            timezone: "America/New_York",
            start: "2026-10-31T22:00:00-04:00",
            // 20 + 12 × 84 + 52 = 1080 epochs: 9 hours, which end at 06:00
            // EST because the night gains an hour.
            stages: four_stage(20, 12, 52),
            peculiarities: &[],
        },
    ]
}

async fn deliver(server: &TestServer, night: &TestNight) {
    let snoring = vec![0; night.stages.len()];
    let body = final_report_body(
        USER,
        night.session_id,
        night.timezone,
        night.start,
        &night.stages,
        &snoring,
        night.peculiarities,
    );
    let answer = server.deliver(USER, &body.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}: {}", night.session_id, answer.body);
}

async fn server_with_nights(model: StageModel) -> TestServer {
    let server = TestServer::start_configured(|config| config.stage_model = model).await;
    for night in nights() {
        deliver(&server, &night).await;
    }
    server
}

/// Returns the history page for `query` (without the token), which must
/// succeed.
async fn history(server: &TestServer, query: &str) -> String {
    let path = format!("/users/{}?token={}{query}", path_segment(USER), viewer_token(USER));
    let response = server.get(&path).await;
    let status = response.status();
    let body = response.text().await.expect("reading the history page failed");
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

/// Returns the markup from the element with `id` to the end of the next
/// `closing` tag.
fn element<'a>(html: &'a str, id: &str, closing: &str) -> &'a str {
    let start = html
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("the page has no element {id}"));
    let end = start + html[start..].find(closing).expect("the element is closed");
    &html[start..end]
}

/// Returns the mean and the night count of the averages row `key`.
fn average(html: &str, key: &str) -> (String, String) {
    let row = element(html, "average-figures", "</table>");
    let at = row
        .find(&format!(r#"data-average="{key}""#))
        .unwrap_or_else(|| panic!("the averages have no row {key}"));
    let row = &row[at..row[at..].find("</tr>").unwrap() + at];
    let cells: Vec<&str> = row
        .split("<td")
        .skip(1)
        .map(|cell| {
            let cell = &cell[cell.find('>').unwrap() + 1..];
            cell[..cell.find("</td>").unwrap()].trim()
        })
        .collect();
    (cells[0].to_string(), cells[1].to_string())
}

#[tokio::test]
async fn charts_have_text_alternatives() {
    let server = server_with_nights(StageModel::Automatic).await;
    let html = history(&server, "").await;

    for days in [7, 30] {
        assert!(
            html.contains(&format!(r#"id="trends-{days}""#)),
            "no {days}-day section"
        );
        for (metric, title) in [
            ("total-sleep", "Total sleep time"),
            ("sleep-efficiency", "Sleep efficiency"),
            ("deep-share", "Deep sleep share"),
            ("rem-share", "REM sleep share"),
        ] {
            let id = format!("trend-{days}-{metric}");
            let figure = element(&html, &id, "</figure>");
            assert!(
                figure.contains(&format!(
                    r#"role="img" aria-labelledby="{id}-title" aria-describedby="{id}-desc""#
                )),
                "{id}: the SVG names its title and description"
            );
            assert!(
                figure.contains(&format!(r#"<title id="{id}-title">{title}, last {days} days</title>"#)),
                "{id}: title"
            );
            assert!(figure.contains(&format!(r#"<desc id="{id}-desc">"#)), "{id}: desc");
            assert!(figure.contains("<table"), "{id}: data table");
            assert_eq!(
                figure.matches("<tr data-date=").count(),
                // One row per night, and one per day without a night.
                if days == 7 { 7 } else { 30 },
                "{id}: table rows"
            );
        }
    }

    // Five nights fall in the last 7 days, 25 to 31 Oct.
    let total_sleep = element(&html, "trend-7-total-sleep", "</figure>");
    assert_eq!(total_sleep.matches(r#"<rect class="bar"#).count(), 5);
    assert!(total_sleep.contains(r#"<tr data-date="2026-10-26"><td>2026-10-26</td><td></td><td>no night</td>"#));
    assert!(
        total_sleep.contains("2 days have no night and show as a gap."),
        "{total_sleep}"
    );
    assert!(
        total_sleep.contains(r#"class="rolling-mean""#),
        "the rolling mean is drawn"
    );
    // 20 + 12 cycles of 84 epochs: 1008 epochs of sleep are 8 h 24 min.
    assert!(total_sleep.contains("<td>8 h 24 min</td>"), "{total_sleep}");

    // The two-stage night has no deep share, and the description states
    // it. The night without sleep has no share of a sleep period either.
    let deep = element(&html, "trend-7-deep-share", "</figure>");
    assert_eq!(deep.matches(r#"<rect class="bar"#).count(), 3);
    assert!(
        deep.contains("1 two-stage night is left out because two-stage data has no deep or REM share."),
        "{deep}"
    );
    assert!(deep.contains("two-stage night, no stage share"));

    // Strict CSP: no inline style or script anywhere.
    assert!(!html.contains("style="), "inline style attribute");
    assert!(!html.contains("<style"), "inline style element");
    assert!(!html.contains("<script"), "script element");
    server.stop().await;
}

#[tokio::test]
async fn averages_skip_night_without_sleep() {
    let server = server_with_nights(StageModel::Automatic).await;
    let html = history(&server, "").await;

    // The default period is the 30 days ending at the latest night.
    let summary = element(&html, "period-summary", "</p>");
    assert!(
        summary.contains(r#"data-from="2026-10-02" data-to="2026-10-31" data-included="4" data-skipped="1""#),
        "{summary}"
    );
    let skipped = element(&html, "skipped-nights", "</ul>");
    assert!(skipped.contains(r#"data-session-id="night-never""#), "{skipped}");
    assert!(
        skipped.contains("Asleep reported that the sleeper never slept"),
        "{skipped}"
    );

    // Total sleep: 420, 420, 400 and 1008 epochs of 30 s, a mean of 4 h 41 min.
    assert_eq!(average(&html, "time_in_sleep"), ("4 h 41 min".into(), "4".into()));
    // Efficiency: 0.95, 0.95, 0.91 and 0.93.
    assert_eq!(average(&html, "sleep_efficiency"), ("93.5%".into(), "4".into()));
    // Deep sleep comes from the three four-stage nights only: 100, 100 and
    // 240 epochs, a mean of 4400 s.
    assert_eq!(average(&html, "time_in_deep"), ("1 h 13 min".into(), "3".into()));
    assert_eq!(average(&html, "sleep_cycle_count").1, "3");
    assert!(
        summary.contains("averaged over the 3 four-stage nights only"),
        "{summary}"
    );
    // Falling asleep at 23:30, 00:30, 22:10 and 22:10, each in its own zone:
    // 30 min before, 30 min after, and twice 110 min before midnight.
    assert_eq!(average(&html, "sleep_time").0, "23:05");

    // The form resubmits to this page; the viewer cookie goes with it, so
    // the form carries no token.
    let form = element(&html, "period-form", "</form>");
    assert!(form.contains(&format!(r#"action="/users/{USER}""#)), "{form}");
    assert!(!form.contains(r#"name="token""#), "{form}");
    server.stop().await;
}

#[tokio::test]
async fn clock_average_crosses_midnight() {
    let server = server_with_nights(StageModel::Automatic).await;
    let html = history(&server, "&from=2026-10-25&to=2026-10-27").await;

    let summary = element(&html, "period-summary", "</p>");
    assert!(summary.contains(r#"data-included="2" data-skipped="0""#), "{summary}");
    // 23:30 in Seoul and 00:30 in UTC average to midnight, not noon.
    assert_eq!(average(&html, "sleep_time"), ("00:00".into(), "2".into()));
    // 03:00 and 04:00.
    assert_eq!(average(&html, "wake_time"), ("03:30".into(), "2".into()));

    // Only `to`: the 30 days ending there. Only `from`: the 30 days from it.
    let html = history(&server, "&to=2026-10-27").await;
    assert!(element(&html, "period-summary", "</p>").contains(r#"data-from="2026-09-28" data-to="2026-10-27""#));
    let html = history(&server, "&from=2026-10-28&to=").await;
    let summary = element(&html, "period-summary", "</p>");
    assert!(summary.contains(r#"data-from="2026-10-28" data-to="2026-11-26" data-included="2" data-skipped="1""#));

    // A period with nothing to average says so.
    let html = history(&server, "&from=2026-10-28&to=2026-10-28").await;
    assert!(html.contains(r#"id="no-averages""#));
    server.stop().await;
}

#[tokio::test]
async fn bad_period_is_rejected() {
    let server = TestServer::start().await;
    let token = viewer_token(USER);
    for (query, field, problem) in [
        ("from=2026-13-01", "from", "is not a day of the calendar"),
        ("from=01.11.2026", "from", "is not a date in the form YYYY-MM-DD"),
        ("from=2026-02-30", "from", "is not a day of the calendar"),
        ("to=yesterday", "to", "is not a date in the form YYYY-MM-DD"),
        ("to=2026-1-1", "to", "is not a date in the form YYYY-MM-DD"),
        (
            "from=2026-11-02&to=2026-11-01",
            "from",
            "is after the end of the period",
        ),
        ("from=2025-01-01&to=2026-01-02", "to", "the maximum is 366"),
        ("from=2026-11-01&from=2026-11-02", "from", "given more than once"),
    ] {
        let response = server.get(&format!("/users/{USER}?token={token}&{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body = response.text().await.unwrap();
        assert!(
            body.contains(&format!("{field}: ")),
            "{query}: the error names {field}: {body}"
        );
        assert!(body.contains(problem), "{query}: {body}");
    }

    // The token is checked first.
    let response = server.get(&format!("/users/{USER}?from=2026-13-01")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn period_form_is_allowed_by_csp() {
    let server = TestServer::start().await;
    let response = server.get(&format!("/users/{USER}?token={}", viewer_token(USER))).await;
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(policy.contains("form-action 'self'"), "{policy}");
    let html = response.text().await.unwrap();
    assert!(html.contains(r#"<form id="period-form" method="get""#));
    assert!(!html.contains(r#"id="trends-7""#), "no charts without a complete night");
    server.stop().await;
}

#[tokio::test]
async fn two_stage_model_has_no_stage_shares() {
    let server = server_with_nights(StageModel::TwoStage).await;
    let html = history(&server, "").await;

    assert!(
        !html.contains(r#"id="trend-30-deep-share""#),
        "no empty deep-share chart"
    );
    assert!(!html.contains(r#"id="trend-7-rem-share""#), "no empty REM-share chart");
    assert!(html.contains(r#"id="trend-30-total-sleep""#));
    let window = element(&html, "trends-30", "</section>");
    assert!(window.contains("Deep and REM shares are left out"), "{window}");
    assert_eq!(average(&html, "time_in_deep"), ("no data".into(), "0".into()));
    let summary = element(&html, "period-summary", "</p>");
    assert!(summary.contains("Every night here is two-stage"), "{summary}");

    let empty = history(&server, "&from=2025-01-01&to=2025-01-31").await;
    let notice = element(&empty, "no-averages", "</p>");
    assert!(notice.contains("No night falls in this period."), "{notice}");
    assert_eq!(average(&html, "time_in_sleep").1, "4");
    server.stop().await;
}
