//! Downloads over real HTTP: each export is parsed back and compared with
//! what was delivered, including a night across the end of daylight-saving
//! time, a two-stage night, ids that look like spreadsheet formulas, and
//! the viewer token every download needs.

mod common;

use chrono::{DateTime, Duration, FixedOffset};
use common::{TestServer, final_report_body, inference_body, path_segment, viewer_token};
use reqwest::StatusCode;
use serde_json::Value;
use sleep_dashboard::statistics::StageModel;

const USER: &str = "export-user";

/// The night across the end of daylight-saving time in New York: 22:00 EDT
/// on 31 Oct 2026 to 06:00 EST, nine hours or 1080 epochs.
const DST_SESSION: &str = "night-dst";
const DST_START: &str = "2026-10-31T22:00:00-04:00";
const DST_EPOCHS: usize = 1080;

/// Returns a hypnogram of `epochs` epochs that cycles through every stage
/// code, unknown included, in runs of 10 epochs.
fn varied_stages(epochs: usize) -> Vec<i64> {
    const PATTERN: [i64; 9] = [0, 1, 2, 1, 3, 1, -1, 2, 3];
    (0..epochs).map(|epoch| PATTERN[(epoch / 10) % PATTERN.len()]).collect()
}

/// Returns a snoring array with a snoring epoch every seventh epoch.
fn snoring(epochs: usize) -> Vec<i64> {
    (0..epochs).map(|epoch| i64::from(epoch % 7 == 0)).collect()
}

/// Delivers a final report for [`USER`] and checks it is accepted.
async fn deliver_night(server: &TestServer, session_id: &str, timezone: &str, start: &str, stages: &[i64]) {
    deliver_with(server, session_id, timezone, start, stages, &[]).await;
}

async fn deliver_with(
    server: &TestServer,
    session_id: &str,
    timezone: &str,
    start: &str,
    stages: &[i64],
    peculiarities: &[&str],
) {
    let body = final_report_body(
        USER,
        session_id,
        timezone,
        start,
        stages,
        &snoring(stages.len()),
        peculiarities,
    );
    let answer = server.deliver(USER, &body.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK, "{session_id}: {}", answer.body);
}

/// Returns the path of a night's download `file`, without a token.
fn night_path(session_id: &str, file: &str) -> String {
    format!(
        "/users/{}/sessions/{}/{file}",
        path_segment(USER),
        path_segment(session_id)
    )
}

/// A download read whole.
struct Download {
    content_type: String,
    content_disposition: String,
    body: String,
}

/// GETs `path` with a valid token; the response must be `200 OK`.
async fn download(server: &TestServer, path: &str) -> Download {
    let response = server.get(&format!("{path}?token={}", viewer_token(USER))).await;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let content_type = header("content-type");
    let content_disposition = header("content-disposition");
    let body = response.text().await.expect("reading the download failed");
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    Download {
        content_type,
        content_disposition,
        body,
    }
}

/// Parses a CSV body into its header and its records.
fn parse_csv(body: &str) -> (Vec<String>, Vec<csv::StringRecord>) {
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let header = reader
        .headers()
        .expect("the CSV has a header row")
        .iter()
        .map(str::to_string)
        .collect();
    let records = reader
        .records()
        .collect::<Result<Vec<_>, _>>()
        .expect("every CSV record parses");
    (header, records)
}

fn stage_name(code: i64, two_stage: bool) -> &'static str {
    match (code, two_stage) {
        (0, _) => "wake",
        (1, true) => "sleep",
        (1, false) => "light",
        (2, _) => "deep",
        (3, _) => "rem",
        _ => "unknown",
    }
}

#[tokio::test]
async fn epochs_csv_crosses_dst_change() {
    let server = TestServer::start().await;
    let stages = varied_stages(DST_EPOCHS);
    deliver_night(&server, DST_SESSION, "America/New_York", DST_START, &stages).await;

    let download = download(&server, &night_path(DST_SESSION, "epochs.csv")).await;
    assert_eq!(download.content_type, "text/csv; charset=utf-8; header=present");
    assert_eq!(
        download.content_disposition,
        r#"attachment; filename="sleep-export-user-2026-10-31-night-dst-epochs.csv""#
    );

    let (header, records) = parse_csv(&download.body);
    assert_eq!(header, ["epoch", "time", "stage", "stage_code", "snoring"]);
    assert_eq!(records.len(), DST_EPOCHS);
    let start = DateTime::parse_from_rfc3339(DST_START).unwrap();
    // 06:00 UTC is 02:00 EDT, when clocks go back to 01:00 EST.
    let change = DateTime::parse_from_rfc3339("2026-11-01T06:00:00+00:00").unwrap();
    let snoring = snoring(DST_EPOCHS);
    let mut previous: Option<DateTime<FixedOffset>> = None;
    for (epoch, record) in records.iter().enumerate() {
        assert_eq!(record[0], epoch.to_string(), "epoch index");
        let time = DateTime::parse_from_rfc3339(&record[1])
            .unwrap_or_else(|error| panic!("epoch {epoch}: {} is not ISO 8601: {error}", &record[1]));
        assert_eq!(time, start + Duration::seconds(30 * epoch as i64), "epoch {epoch}");
        let expected_offset = if time < change { -4 * 3600 } else { -5 * 3600 };
        assert_eq!(
            time.offset().local_minus_utc(),
            expected_offset,
            "epoch {epoch}: {}",
            &record[1]
        );
        if let Some(previous) = previous {
            assert_eq!(
                time - previous,
                Duration::seconds(30),
                "epoch {epoch} follows 30 s later"
            );
        }
        previous = Some(time);
        assert_eq!(record[3], stages[epoch].to_string(), "epoch {epoch}: stage code");
        assert_eq!(
            &record[2],
            stage_name(stages[epoch], false),
            "epoch {epoch}: stage name"
        );
        assert_eq!(record[4], snoring[epoch].to_string(), "epoch {epoch}: snoring");
    }

    // The local clock repeats the hour from 01:00 to 02:00.
    let times: Vec<&str> = records.iter().map(|record| record.get(1).unwrap()).collect();
    let last_edt = times
        .iter()
        .position(|time| *time == "2026-11-01T01:59:30-04:00")
        .expect("the last epoch in EDT");
    assert_eq!(times[last_edt + 1], "2026-11-01T01:00:00-05:00");
    assert_eq!(times[DST_EPOCHS - 1], "2026-11-01T05:59:30-05:00");
    server.stop().await;
}

#[tokio::test]
async fn night_json_matches_delivery() {
    let server = TestServer::start().await;
    let stages = varied_stages(DST_EPOCHS);
    deliver_night(&server, DST_SESSION, "America/New_York", DST_START, &stages).await;

    let download = download(&server, &night_path(DST_SESSION, "night.json")).await;
    assert_eq!(download.content_type, "application/json");
    assert_eq!(
        download.content_disposition,
        r#"attachment; filename="sleep-export-user-2026-10-31-night-dst-night.json""#
    );
    let night: Value = serde_json::from_str(&download.body).expect("the export is JSON");
    assert_eq!(night["user_id"], USER);
    assert_eq!(night["session_id"], DST_SESSION);
    assert_eq!(night["date"], "2026-10-31");
    assert_eq!(night["timezone"], "America/New_York");
    assert_eq!(night["epoch_seconds"], 30);
    assert_eq!(night["staging"], "four_stage");
    assert_eq!(common::stages(&night, "sleep_stages"), stages);
    assert_eq!(common::stages(&night, "snoring_stages"), snoring(DST_EPOCHS));
    let names: Vec<(i64, &str)> = night["stage_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| (stage["code"].as_i64().unwrap(), stage["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [(-1, "unknown"), (0, "wake"), (1, "light"), (2, "deep"), (3, "rem")]
    );

    let statistics = &night["statistics"];
    let sleep_epochs = stages.iter().filter(|code| (1..=3).contains(*code)).count() as i64;
    let unknown_epochs = stages.iter().filter(|code| **code == -1).count() as i64;
    assert_eq!(statistics["time_in_sleep"], sleep_epochs * 30);
    assert_eq!(statistics["time_in_bed"], 9 * 3600);
    assert_eq!(statistics["unknown_epochs"], unknown_epochs);
    assert_eq!(statistics["staging"], "four_stage");
    assert_eq!(night["statistics_error"], Value::Null);
    server.stop().await;
}

#[tokio::test]
async fn nights_csv_has_every_night() {
    let server = TestServer::start().await;
    deliver_night(
        &server,
        "night-seoul",
        "Asia/Seoul",
        "2026-11-20T23:47:00+09:00",
        &varied_stages(900),
    )
    .await;
    deliver_with(
        &server,
        "night-never",
        "America/New_York",
        "2026-11-21T23:00:00-05:00",
        &[0; 120],
        &["NEVER_SLEPT"],
    )
    .await;
    // Ids that a spreadsheet would run as formulas.
    deliver_night(&server, "=1+2", "UTC", "2026-11-22T22:00:00+00:00", &varied_stages(600)).await;
    deliver_night(
        &server,
        "@SUM(A1)",
        "UTC",
        "2026-11-23T22:00:00+00:00",
        &varied_stages(600),
    )
    .await;
    // A night still in progress has no row.
    let partial = inference_body(USER, "in-progress", 39, &[0; 40], &[0; 40]);
    assert_eq!(server.deliver(USER, &partial.to_string()).await.status, StatusCode::OK);

    let download = download(&server, &format!("/users/{}/nights.csv", path_segment(USER))).await;
    assert_eq!(download.content_type, "text/csv; charset=utf-8; header=present");
    assert_eq!(
        download.content_disposition,
        r#"attachment; filename="sleep-export-user-nights.csv""#
    );
    let (header, records) = parse_csv(&download.body);
    for column in [
        "date",
        "session_id",
        "start_time",
        "end_time",
        "timezone",
        "sleep_latency",
        "time_in_bed",
        "time_in_sleep",
        "time_in_deep",
        "sleep_efficiency",
        "deep_ratio",
        "rem_ratio",
        "waso_count",
        "sleep_cycle_count",
        "staging",
        "unknown_ratio",
        "reliable",
        "peculiarities",
    ] {
        assert!(header.iter().any(|name| name == column), "no column {column}");
    }
    let column = |record: &csv::StringRecord, name: &str| {
        let index = header.iter().position(|column| column == name).unwrap();
        record[index].to_string()
    };

    assert_eq!(records.len(), 4, "one row per complete night");
    let ids: Vec<String> = records.iter().map(|record| column(record, "session_id")).collect();
    assert_eq!(
        ids,
        ["night-seoul", "night-never", "'=1+2", "'@SUM(A1)"],
        "oldest first, formulas quoted"
    );

    let seoul = &records[0];
    assert_eq!(column(seoul, "date"), "2026-11-20");
    assert_eq!(column(seoul, "start_time"), "2026-11-20T23:47:00+09:00");
    assert_eq!(column(seoul, "end_time"), "2026-11-21T07:17:00+09:00");
    assert_eq!(column(seoul, "timezone"), "Asia/Seoul");
    let stages = varied_stages(900);
    let sleep_epochs = stages.iter().filter(|code| (1..=3).contains(*code)).count();
    assert_eq!(column(seoul, "time_in_sleep"), (sleep_epochs * 30).to_string());
    assert_eq!(column(seoul, "time_in_bed"), "27000");
    let efficiency: f64 = column(seoul, "sleep_efficiency").parse().unwrap();
    assert_eq!(efficiency, ((sleep_epochs as f64 / 900.0) * 100.0).round() / 100.0);
    assert_eq!(column(seoul, "staging"), "four_stage");
    assert_eq!(column(seoul, "reliable"), "false", "a ninth of the epochs are unknown");

    let never = &records[1];
    assert_eq!(column(never, "date"), "2026-11-21");
    assert_eq!(column(never, "time_in_sleep"), "0");
    assert_eq!(column(never, "peculiarities"), "NEVER_SLEPT");
    server.stop().await;
}

#[tokio::test]
async fn two_stage_exports_say_sleep() {
    let server = TestServer::start_configured(|config| config.stage_model = StageModel::TwoStage).await;
    let stages: Vec<i64> = (0..400).map(|epoch| i64::from((20..380).contains(&epoch))).collect();
    deliver_night(
        &server,
        "two-stage",
        "Europe/Berlin",
        "2026-11-20T23:00:00+01:00",
        &stages,
    )
    .await;

    let epochs = download(&server, &night_path("two-stage", "epochs.csv")).await;
    let (_, records) = parse_csv(&epochs.body);
    for (epoch, record) in records.iter().enumerate() {
        assert_eq!(&record[2], stage_name(stages[epoch], true), "epoch {epoch}");
        assert_eq!(record[3], stages[epoch].to_string(), "epoch {epoch}");
    }

    let nights = download(&server, &format!("/users/{}/nights.csv", path_segment(USER))).await;
    let (header, records) = parse_csv(&nights.body);
    let column = |name: &str| {
        let index = header.iter().position(|column| column == name).unwrap();
        records[0][index].to_string()
    };
    assert_eq!(column("staging"), "two_stage");
    assert_eq!(column("time_in_sleep"), (360 * 30).to_string());
    for empty in [
        "light_latency",
        "time_in_light",
        "time_in_deep",
        "time_in_rem",
        "light_ratio",
        "deep_ratio",
        "rem_ratio",
        "sleep_cycle_count",
        "sleep_cycle",
    ] {
        assert_eq!(column(empty), "", "{empty} is empty for a two-stage night");
    }

    let json = download(&server, &night_path("two-stage", "night.json")).await;
    let night: Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(night["staging"], "two_stage");
    assert_eq!(night["statistics"]["deep_ratio"], Value::Null);
    assert_eq!(night["stage_names"][2]["name"], "sleep");
    assert_eq!(night["stage_names"][4]["code"], 3);
    assert_eq!(
        night["stage_names"][4]["name"], "sleep",
        "a two-stage reading names REM codes sleep"
    );
    server.stop().await;
}

#[tokio::test]
async fn unicode_session_gets_filename_star() {
    let server = TestServer::start().await;
    deliver_night(
        &server,
        "nuit-été",
        "Europe/Paris",
        "2026-07-14T23:00:00+02:00",
        &varied_stages(100),
    )
    .await;
    let download = download(&server, &night_path("nuit-été", "epochs.csv")).await;
    assert_eq!(
        download.content_disposition,
        "attachment; filename=\"sleep-export-user-2026-07-14-nuit-_t_-epochs.csv\"; \
         filename*=UTF-8''sleep-export-user-2026-07-14-nuit-%C3%A9t%C3%A9-epochs.csv"
    );
    server.stop().await;
}

#[tokio::test]
async fn exports_need_token() {
    let server = TestServer::start().await;
    deliver_night(&server, DST_SESSION, "America/New_York", DST_START, &varied_stages(40)).await;
    let partial = inference_body(USER, "in-progress", 39, &[0; 40], &[0; 40]);
    assert_eq!(server.deliver(USER, &partial.to_string()).await.status, StatusCode::OK);

    let paths = [
        night_path(DST_SESSION, "epochs.csv"),
        night_path(DST_SESSION, "night.json"),
        format!("/users/{}/nights.csv", path_segment(USER)),
    ];
    for path in &paths {
        let response = server.get(path).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path} without a token");
        assert!(response.headers().get("content-disposition").is_none(), "{path}");
        let other = server
            .get(&format!("{path}?token={}", viewer_token("someone-else")))
            .await;
        assert_eq!(
            other.status(),
            StatusCode::UNAUTHORIZED,
            "{path} with another user's token"
        );
    }

    // A night without a final report has nothing to export.
    for file in ["epochs.csv", "night.json"] {
        let path = format!("{}?token={}", night_path("in-progress", file), viewer_token(USER));
        assert_eq!(server.get(&path).await.status(), StatusCode::NOT_FOUND, "{file}");
    }
    server.stop().await;
}
