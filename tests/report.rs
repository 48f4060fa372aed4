//! Report pages and session documents over real HTTP: clock times across
//! midnight and a daylight-saving change, unknown epochs, two-stage nights,
//! disagreements with Asleep's statistics, the charts' text alternatives,
//! and Asleep's units in the JSON.

mod common;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sleep_dashboard::statistics::StageModel;

/// Returns an enveloped `SESSION_COMPLETE` body for a night that starts at
/// `start` (RFC 3339) in `timezone`, ends when its hypnogram ends, and
/// carries `stat` as Asleep's statistics.
fn final_body(session_id: &str, timezone: &str, start: &str, sleep: &[i64], stat: Value) -> Value {
    let start_time = chrono::DateTime::parse_from_rfc3339(start).unwrap();
    let end_time = start_time + chrono::Duration::seconds(30 * sleep.len() as i64);
    json!({
        "event": "SESSION_COMPLETE",
        "version": "V3",
        "data": {
            "timezone": timezone,
            "peculiarities": [],
            "missing_data_ratio": 0.0,
            "session": {
                "id": session_id,
                "state": "COMPLETE",
                "start_time": start,
                "end_time": end_time.to_rfc3339(),
                "sleep_stages": sleep,
                "snoring_stages": vec![0; sleep.len()],
                "breath_stages": null,
            },
            "stat": stat,
        },
    })
}

/// Returns a realistic four-stage night of `epochs` epochs: 20 epochs
/// awake, then 90-minute cycles of light, deep, light and REM sleep, and
/// 10 epochs awake at the end. Each `(epoch, length)` in `awakenings` is
/// overwritten with wake.
fn four_stage_night(epochs: usize, awakenings: &[(usize, usize)]) -> Vec<i64> {
    let cycle = [vec![1; 50], vec![2; 60], vec![1; 40], vec![3; 30]].concat();
    let mut stages = vec![0; 20];
    while stages.len() < epochs - 10 {
        stages.push(cycle[(stages.len() - 20) % cycle.len()]);
    }
    stages.extend([0; 10]);
    for (start, length) in awakenings {
        stages[*start..start + length].fill(0);
    }
    stages
}

/// Delivers a body and checks it is accepted.
async fn deliver(server: &TestServer, user_id: &str, body: &Value) {
    let answer = server.deliver(user_id, &body.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "accepted");
}

/// Returns the labels of the hypnogram's time axis, left to right.
fn tick_labels(html: &str) -> Vec<&str> {
    html.split(r#"<g class="tick""#)
        .skip(1)
        .map(|tick| {
            let text = &tick[tick.find("<text").unwrap()..];
            let text = &text[text.find('>').unwrap() + 1..];
            &text[..text.find('<').unwrap()]
        })
        .collect()
}

/// Returns the `<time>` elements of one table as `(datetime, text)` pairs.
fn table_times<'a>(html: &'a str, table_id: &str) -> Vec<(&'a str, &'a str)> {
    let table = &html[html
        .find(&format!(r#"<table id="{table_id}""#))
        .unwrap_or_else(|| panic!("no table {table_id}"))..];
    let table = &table[..table.find("</table>").unwrap()];
    table
        .split(r#"<time datetime=""#)
        .skip(1)
        .map(|time| {
            let datetime = &time[..time.find('"').unwrap()];
            let text = &time[time.find('>').unwrap() + 1..time.find("</time>").unwrap()];
            (datetime, text)
        })
        .collect()
}

/// Returns the text of the `<dd>` of the report figure named `key`.
fn figure_value<'a>(html: &'a str, key: &str) -> &'a str {
    let figure = &html[html
        .find(&format!(r#"data-figure="{key}""#))
        .unwrap_or_else(|| panic!("no figure {key}"))..];
    let value = &figure[figure.find("<dd>").unwrap() + 4..];
    &value[..value.find("</dd>").unwrap()]
}

/// Returns the `<tr>` of the statistic named `name`.
fn statistic_row<'a>(html: &'a str, name: &str) -> &'a str {
    let row = &html[html
        .find(&format!(r#"<tr data-statistic="{name}""#))
        .unwrap_or_else(|| panic!("no statistic {name}"))..];
    &row[..row.find("</tr>").unwrap()]
}

/// Reads a bundled single delivery from `tests/fixtures/single`.
fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/single/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn dst_night_in_new_york() {
    let server = TestServer::start().await;
    let user = "new-york-user";
    // 22:00 EDT to 06:00 EST is nine hours: clocks fall back from 02:00 EDT
    // to 01:00 EST at epoch 720. One awakening before the change, at 00:30
    // EDT, and one after it, at 02:00 EST.
    let stages = four_stage_night(1080, &[(300, 4), (600, 6)]);
    assert_eq!(stages.len(), 1080);
    let body = final_body(
        "dst-night",
        "America/New_York",
        "2026-10-31T22:00:00-04:00",
        &stages,
        Value::Null,
    );
    deliver(&server, user, &body).await;

    let html = server.report_page(user, "dst-night").await;
    assert_eq!(
        tick_labels(&html),
        [
            "22:00 EDT",
            "23:00 EDT",
            "00:00 EDT",
            "01:00 EDT",
            "01:00 EST",
            "02:00 EST",
            "03:00 EST",
            "04:00 EST",
            "05:00 EST",
            "06:00 EST",
        ]
    );
    assert!(
        html.contains("Sat 31 Oct 2026, 22:00 EDT"),
        "start in the session's zone"
    );
    assert!(html.contains("Sun 1 Nov 2026, 06:00 EST"), "end in the session's zone");
    assert_eq!(
        table_times(&html, "waso"),
        [
            ("2026-11-01T00:30:00-04:00", "00:30 EDT"),
            ("2026-11-01T02:00:00-05:00", "02:00 EST"),
        ]
    );
    let periods = table_times(&html, "stage-periods");
    assert_eq!(periods.first(), Some(&("2026-10-31T22:00:00-04:00", "22:00 EDT")));
    assert_eq!(periods.last(), Some(&("2026-11-01T06:00:00-05:00", "06:00 EST")));

    let document = server.api_document(user, "dst-night").await;
    let statistics = &document["statistics"];
    assert_eq!(statistics["time_in_bed"], 32400);
    assert!(statistics["time_in_bed"].is_i64());
    assert_eq!(statistics["epochs"], 1080);
    assert_eq!(statistics["start_time"], "2026-10-31T22:00:00-04:00");
    assert_eq!(statistics["end_time"], "2026-11-01T06:00:00-05:00");
    assert_eq!(statistics["wake_time"], "2026-11-01T05:55:00-05:00", "after the change");
    assert_eq!(
        statistics["sleep_time"], "2026-10-31T22:10:00-04:00",
        "before the change"
    );
    assert_eq!(statistics["waso_count"], 2);
    let boundaries = statistics["sleep_cycle_time"].as_array().unwrap();
    assert!(
        boundaries.last().unwrap().as_str().unwrap().ends_with("-05:00"),
        "{boundaries:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn seoul_night_crosses_midnight() {
    let server = TestServer::start().await;
    let user = "seoul-user";
    // 23:30 to 07:30 KST: eight hours, 960 epochs, one awakening at 00:40.
    let stages = four_stage_night(960, &[(140, 3)]);
    let body = final_body(
        "seoul-night",
        "Asia/Seoul",
        "2026-11-20T23:30:00+09:00",
        &stages,
        Value::Null,
    );
    deliver(&server, user, &body).await;

    let html = server.report_page(user, "seoul-night").await;
    assert_eq!(
        tick_labels(&html),
        ["00:00", "01:00", "02:00", "03:00", "04:00", "05:00", "06:00", "07:00"]
    );
    assert!(html.contains("Fri 20 Nov 2026, 23:30 KST"));
    assert!(html.contains("Sat 21 Nov 2026, 07:30 KST"));
    assert_eq!(figure_value(&html, "fell_asleep_at"), "23:40");
    assert_eq!(figure_value(&html, "woke_up_at"), "07:25");
    assert_eq!(table_times(&html, "waso"), [("2026-11-21T00:40:00+09:00", "00:40")]);
    let cycles = table_times(&html, "sleep-cycles");
    assert_eq!(
        cycles[0],
        ("2026-11-20T23:40:00+09:00", "23:40"),
        "the first cycle starts at onset"
    );
    assert!(cycles[1].0.starts_with("2026-11-21T01:"), "{cycles:?}");

    let document = server.api_document(user, "seoul-night").await;
    assert_eq!(document["statistics"]["time_in_bed"], 8 * 3600);
    assert_eq!(document["statistics"]["sleep_time"], "2026-11-20T23:40:00+09:00");
    server.stop().await;
}

#[tokio::test]
async fn unknown_epochs_mark_unreliable_night() {
    let server = TestServer::start().await;
    let user = "gappy-user";
    let mut stages = four_stage_night(400, &[]);
    stages[100..160].fill(-1);
    let body = final_body("gappy-night", "UTC", "2026-03-01T22:00:00Z", &stages, Value::Null);
    deliver(&server, user, &body).await;
    let mut few_gaps = four_stage_night(400, &[]);
    few_gaps[100..120].fill(-1);
    let body = final_body("few-gaps", "UTC", "2026-03-02T22:00:00Z", &few_gaps, Value::Null);
    deliver(&server, user, &body).await;

    let html = server.report_page(user, "gappy-night").await;
    assert_eq!(figure_value(&html, "unknown_epochs"), "15% (60 of 400)");
    let notice = &html[html.find(r#"<p id="unreliable""#).expect("an unreliable notice")..];
    let notice = &notice[..notice.find("</p>").unwrap()];
    assert!(notice.contains("These numbers are unreliable."), "{notice}");
    assert!(
        notice.contains("15% of this night's epochs (60 of 400) have no data"),
        "{notice}"
    );
    assert!(notice.contains("more than the 10%"), "{notice}");
    assert!(html.contains("Epochs without data count as neither sleep nor wake"));
    assert!(html.contains(r#"class="gap" data-start="100" data-epochs="60""#));
    assert!(html.contains("<td>No data</td>"), "the periods table lists the gap");

    let document = server.api_document(user, "gappy-night").await;
    assert_eq!(document["statistics"]["unknown_epochs"], 60);
    assert_eq!(document["statistics"]["reliable"], false);
    assert_eq!(document["statistics"]["unknown_ratio"], 0.15);

    let html = server.report_page(user, "few-gaps").await;
    assert_eq!(figure_value(&html, "unknown_epochs"), "5% (20 of 400)");
    assert!(!html.contains(r#"id="unreliable""#), "5% without data is reliable");
    server.stop().await;
}

/// Checks that a two-stage night's page and document leave out every
/// figure of light, deep and REM sleep.
async fn assert_two_stage(server: &TestServer, user: &str, session: &str) {
    let html = server.report_page(user, session).await;
    for word in ["Light", "Deep", "REM", "light_ratio", "sleep_cycle_count"] {
        assert!(!html.contains(word), "{session}: a two-stage page contains {word}");
    }
    assert!(html.contains(r#"data-staging="two_stage""#), "{session}");
    assert!(
        html.contains(r#"<rect class="lane lane-sleep" data-stage="sleep""#),
        "{session}: the sleep lane"
    );
    assert!(
        html.contains(r#"dominant-baseline="middle">Sleep</text>"#),
        "{session}: the lane label"
    );
    assert!(
        html.contains(r#"<tr data-stage="sleep">"#),
        "{session}: the stage table says Sleep"
    );
    assert!(
        html.contains(r#"<span class="key key-sleep">Sleep</span>"#),
        "{session}: the legend says Sleep"
    );
    assert!(!html.contains(r#"id="cycles-section""#), "{session}: no sleep cycles");
    assert!(html.contains("Sleep 9"), "{session}: the share bar names sleep");

    let document = server.api_document(user, session).await;
    assert_eq!(document["staging"], "two_stage", "{session}");
    let statistics = &document["statistics"];
    assert_eq!(statistics["staging"], "two_stage", "{session}");
    for field in [
        "time_in_light",
        "time_in_deep",
        "time_in_rem",
        "light_ratio",
        "deep_ratio",
        "rem_ratio",
        "light_latency",
        "deep_latency",
        "rem_latency",
        "sleep_cycle_count",
        "sleep_cycle",
    ] {
        assert!(
            statistics[field].is_null(),
            "{session}: {field} is {}",
            statistics[field]
        );
    }
    assert!(statistics["time_in_sleep"].as_i64().unwrap() > 0, "{session}");
    assert!(statistics["sleep_ratio"].as_f64().unwrap() > 0.9, "{session}");
}

#[tokio::test]
async fn two_stage_deployment_says_sleep() {
    let server = TestServer::start_configured(|config| config.stage_model = StageModel::TwoStage).await;
    let user = "basic-plan-user";
    // Even codes 2 and 3 read as sleep when the deployment is two-stage.
    let stages = four_stage_night(600, &[(200, 4)]);
    let body = final_body("forced-two-stage", "UTC", "2026-03-01T22:00:00Z", &stages, Value::Null);
    deliver(&server, user, &body).await;
    assert_two_stage(&server, user, "forced-two-stage").await;
    server.stop().await;
}

#[tokio::test]
async fn automatic_model_reads_wake_sleep_night() {
    let server = TestServer::start().await;
    let user = "wake-sleep-user";
    let mut stages = vec![0; 20];
    stages.extend([1; 300]);
    stages.extend([0; 4]);
    stages.extend([1; 266]);
    stages.extend([0; 10]);
    let body = final_body("auto-two-stage", "UTC", "2026-03-01T22:00:00Z", &stages, Value::Null);
    deliver(&server, user, &body).await;
    assert_two_stage(&server, user, "auto-two-stage").await;

    // A four-stage night of the same deployment still gets every figure.
    let body = final_body(
        "auto-four-stage",
        "UTC",
        "2026-03-02T22:00:00Z",
        &four_stage_night(600, &[]),
        Value::Null,
    );
    deliver(&server, user, &body).await;
    let document = server.api_document(user, "auto-four-stage").await;
    assert_eq!(document["staging"], "four_stage");
    assert!(document["statistics"]["time_in_rem"].is_i64());
    server.stop().await;
}

#[tokio::test]
async fn altered_stat_is_marked() {
    let server = TestServer::start().await;
    let user = "G-20261101-demo-user-0001";
    let mut body = fixture("session-enveloped.json");
    let stat = &mut body["data"]["stat"];
    stat["waso_count"] = json!(10);
    stat["sleep_efficiency"] = json!(0.8);
    stat["time_in_rem"] = json!(4380 + 600);
    stat["light_ratio"] = json!(0.72);
    deliver(&server, user, &body).await;
    let session = body["data"]["session"]["id"].as_str().unwrap();

    let html = server.report_page(user, session).await;
    let notice = &html[html.find(r#"<p id="disagreements""#).expect("a disagreement notice")..];
    let notice = &notice[..notice.find("</p>").unwrap()];
    for label in ["Awakenings after sleep onset (WASO)", "Sleep efficiency", "REM sleep"] {
        assert!(notice.contains(label), "{label} in {notice}");
    }
    let waso = statistic_row(&html, "waso_count");
    assert!(waso.contains(r#"class="disagree""#), "{waso}");
    assert!(
        waso.contains(r#"<td class="computed-value">7</td><td class="asleep-value">10</td>"#),
        "{waso}"
    );
    assert!(waso.contains("≠"), "{waso}");
    assert!(waso.contains("Disagrees: differs by 3"), "{waso}");
    let efficiency = statistic_row(&html, "sleep_efficiency");
    assert!(
        efficiency.contains(r#"<td class="asleep-value">80%</td>"#),
        "{efficiency}"
    );
    assert!(efficiency.contains("differs by 12 percentage points"), "{efficiency}");
    assert!(statistic_row(&html, "time_in_rem").contains("differs by 10 min"));
    let light = statistic_row(&html, "light_ratio");
    assert!(!light.contains("disagree"), "0.01 is within rounding: {light}");
    assert!(light.contains(">agrees<"), "{light}");

    let document = server.api_document(user, session).await;
    assert_eq!(document["stat"]["waso_count"], 10);
    assert_eq!(document["statistics"]["waso_count"], 7);
    server.stop().await;
}

#[tokio::test]
async fn json_uses_asleep_units() {
    let server = TestServer::start().await;
    deliver(&server, "user123", &fixture("session-flat.json")).await;
    let user = "G-20261101-demo-user-0001";
    deliver(&server, user, &fixture("session-enveloped.json")).await;

    // The guides' style: efficiency as a percentage, sleep_time a duration.
    let guide = server.api_document("user123", "session123").await;
    let stat = &guide["stat"];
    assert_eq!(stat["sleep_efficiency"], 0.9025);
    assert!(stat["waso_count"].is_u64(), "{}", stat["waso_count"]);
    assert_eq!(stat["waso_count"], 1);
    assert!(stat["sleep_time"].is_null());
    assert_eq!(stat["sleep_time_duration"], 4 * 3600 + 10 * 60);
    assert_eq!(stat["time_in_bed"], 16620);
    assert!(stat["time_in_bed"].is_i64());
    assert_eq!(stat["sleep_cycles"].as_array().unwrap().len(), 2);
    assert_eq!(guide["staging"], "four_stage");
    assert_eq!(guide["statistics"]["sleep_efficiency"], 0.9);

    // Asleep's documented style: a fraction and a clock time.
    let documented = server.api_document(user, "20261120872578_72109").await;
    let stat = &documented["stat"];
    assert_eq!(stat["sleep_efficiency"], 0.92);
    assert_eq!(stat["sleep_time"], "2026-11-21T00:05:07+09:00");
    assert!(stat["sleep_time_duration"].is_null());
    for count in ["waso_count", "sleep_cycle_count", "snoring_count"] {
        assert!(stat[count].is_u64(), "stat.{count} is {}", stat[count]);
    }
    assert_eq!(stat["sleep_cycle"], 5497);
    let statistics = &documented["statistics"];
    assert_eq!(statistics["sleep_efficiency"], 0.92);
    for count in [
        "waso_count",
        "sleep_cycle_count",
        "snoring_count",
        "unknown_epochs",
        "epochs",
    ] {
        assert!(
            statistics[count].is_u64(),
            "statistics.{count} is {}",
            statistics[count]
        );
    }
    assert_eq!(statistics["sleep_cycle"], 5497.5);
    assert_eq!(documented["headline"]["sleep_efficiency_percent"], 92.0);
    server.stop().await;
}

#[tokio::test]
async fn charts_have_text_alternatives() {
    let server = TestServer::start().await;
    let user = "G-20261101-demo-user-0001";
    let body = fixture("session-enveloped.json");
    deliver(&server, user, &body).await;
    let html = server
        .report_page(user, body["data"]["session"]["id"].as_str().unwrap())
        .await;

    for chart in ["hypnogram", "stage-share"] {
        let svg = &html[html
            .find(&format!(r#"<svg id="{chart}""#))
            .unwrap_or_else(|| panic!("no {chart} chart"))..];
        let svg = &svg[..svg.find("</svg>").unwrap()];
        assert!(
            svg.contains(&format!(r#"role="img" aria-labelledby="{chart}-title {chart}-desc""#)),
            "{chart}"
        );
        assert!(svg.contains(&format!(r#"<title id="{chart}-title">"#)), "{chart}");
        let description = &svg[svg.find(&format!(r#"<desc id="{chart}-desc">"#)).unwrap()..];
        assert!(description.len() > 40, "{chart}: the description says something");
    }
    assert!(
        html.contains("Wake 2%, REM 17%, Light 71%, Deep 10%"),
        "the share bar's description"
    );
    assert!(html.contains("Shaded bands mark 7 awakenings after sleep onset (WASO)."));

    // The data tables behind the charts.
    assert!(html.contains(r#"<details id="hypnogram-data">"#));
    assert!(html.contains(r#"<thead><tr><th scope="col">Start</th><th scope="col">End</th><th scope="col">Stage</th><th scope="col">Length</th></tr></thead>"#));
    assert!(table_times(&html, "stage-periods").len() > 20);
    for stage in ["wake", "rem", "light", "deep"] {
        assert!(html.contains(&format!(r#"<tr data-stage="{stage}">"#)), "{stage} row");
    }

    // The hypnogram's marks and the lists beside it.
    assert_eq!(html.matches(r#"data-boundary="cycle-end""#).count(), 4);
    assert_eq!(html.matches(r#"data-boundary="onset""#).count(), 1);
    assert_eq!(html.matches(r#"<rect class="waso""#).count(), 7);
    assert_eq!(html.matches(r#"<tr class="waso-episode">"#).count(), 7);
    assert!(html.contains(r#"<g class="snoring"><rect class="snore""#));
    assert!(html.contains(r#"data-code="NO_BREATHING_STABILITY""#));

    // The page keeps its CSP: no inline styles or scripts.
    assert!(!html.contains("style=\""));
    assert!(!html.contains("<script"));
    let css = server.get("/static/style.css").await.text().await.unwrap();
    assert!(css.contains("@page"), "the stylesheet sets the printed page");
    assert!(css.contains("size: A4"));
    server.stop().await;
}
