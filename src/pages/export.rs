//! Downloads of a user's nights: one night's epochs as CSV, one night as
//! JSON, and every night's statistics as CSV.
//!
//! Each needs the viewer token like the pages, and only a night with a
//! final report can be exported. The CSV downloads report errors as the
//! HTML error page, because people open them from links. The JSON download
//! reports errors as JSON, as the API does.
//!
//! # Spreadsheet formulas
//!
//! Spreadsheet programs run a cell that begins with `=`, `+`, `-` or `@`
//! as a formula, and some also treat a leading tab or carriage return
//! that way. Ids and other text cells come from deliveries, so a text cell
//! that begins with one of these characters gets a `'` in front, as the
//! OWASP page on CSV injection recommends. The quote shows in the cell, and
//! a program that reads the CSV back must strip it. Number and time cells
//! are written by this server and need no guard. The stage code `-1` is a
//! number.

use std::borrow::Cow;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, FixedOffset, NaiveDate, SecondsFormat};
use chrono_tz::Tz;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

use super::{PageError, ViewerToken};
use crate::app::AppState;
use crate::error::AppError;
use crate::payload::{EPOCH_SECONDS, FinalReport, check_id};
use crate::report::{history_path, report_path};
use crate::statistics::{REM, SleepStatistics, Staging, UNKNOWN};
use crate::trends::{Night, nights};

/// The media type of the CSV downloads, with the header row announced as
/// RFC 4180 allows.
const CSV_CONTENT_TYPE: &str = "text/csv; charset=utf-8; header=present";

/// Characters of a file name kept as they are in `filename*`; the rest is
/// percent-encoded as RFC 8187 requires.
const FILENAME_ATTR: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Maximum characters of one id kept in a file name, so two ids and a date
/// stay well below the 255 bytes that common file systems allow.
const FILENAME_ID_CHARS: usize = 64;

/// Returns the path of a night's epoch CSV.
pub fn epochs_csv_path(user_id: &str, session_id: &str) -> String {
    format!("{}/epochs.csv", report_path(user_id, session_id))
}

/// Returns the path of a night's JSON export.
pub fn night_json_path(user_id: &str, session_id: &str) -> String {
    format!("{}/night.json", report_path(user_id, session_id))
}

/// Returns the path of the CSV of all of a user's nights.
pub fn nights_csv_path(user_id: &str) -> String {
    format!("{}/nights.csv", history_path(user_id))
}

/// Serves `GET /users/{user_id}/sessions/{session_id}/epochs.csv`: one row
/// per epoch with its clock time in the session's zone, stage and snoring.
pub async fn epochs_csv(
    State(state): State<AppState>,
    Path((user_id, session_id)): Path<(String, String)>,
    viewer: ViewerToken,
) -> Result<Response, PageError> {
    state.authorize_viewer(&user_id, viewer.token(&user_id)).await?;
    let report = load_report(&state, &user_id, &session_id).await?;
    let night = Night::from_report(&report, state.stage_model);
    let staging = state.stage_model.staging(&report.sleep_stages);
    let body = epochs_csv_body(&report, night.zone, staging).map_err(csv_failed)?;
    let file_name = FileName::new(
        &["sleep", &user_id, &night.date.to_string(), &session_id, "epochs"],
        "csv",
    );
    Ok(download(body, CSV_CONTENT_TYPE, &file_name))
}

/// Serves `GET /users/{user_id}/sessions/{session_id}/night.json`: the
/// night's stages and the statistics computed from them.
pub async fn night_json(
    State(state): State<AppState>,
    Path((user_id, session_id)): Path<(String, String)>,
    viewer: ViewerToken,
) -> Result<Response, AppError> {
    state.authorize_viewer(&user_id, viewer.token(&user_id)).await?;
    let report = load_report(&state, &user_id, &session_id).await?;
    let night = Night::from_report(&report, state.stage_model);
    let export = NightExport::new(&report, &night, state.stage_model.staging(&report.sleep_stages));
    let file_name = FileName::new(
        &["sleep", &user_id, &night.date.to_string(), &session_id, "night"],
        "json",
    );
    let mut response = Json(export).into_response();
    set_attachment(&mut response, &file_name);
    Ok(response)
}

/// Serves `GET /users/{user_id}/nights.csv`: one row per night with its
/// statistics, oldest first.
pub async fn nights_csv(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    viewer: ViewerToken,
) -> Result<Response, PageError> {
    state.authorize_viewer(&user_id, viewer.token(&user_id)).await?;
    let reports = state.store.final_reports(&user_id).await?;
    let nights = nights(&reports, state.stage_model);
    let body = nights_csv_body(&nights).map_err(csv_failed)?;
    let file_name = FileName::new(&["sleep", &user_id, "nights"], "csv");
    Ok(download(body, CSV_CONTENT_TYPE, &file_name))
}

/// Loads a session's final report. The lookup is keyed by the user and the
/// session together, so another user's session id finds nothing.
async fn load_report(state: &AppState, user_id: &str, session_id: &str) -> Result<FinalReport, AppError> {
    check_id(session_id, "session_id")?;
    state
        .store
        .final_report(user_id, session_id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("a final report for session {session_id:?}")))
}

fn csv_failed(error: csv::Error) -> AppError {
    AppError::Internal(format!("writing a CSV export failed: {error}"))
}

/// Formats a time in a zone as ISO 8601 with its offset, with fractions of
/// a second only where the time has them.
fn iso_time(time: DateTime<FixedOffset>, zone: Tz) -> String {
    time.with_timezone(&zone).to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// Returns a text cell with the formula guard the module documentation
/// describes.
fn text_cell(text: &str) -> Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Writes the epoch CSV: `epoch`, `time`, `stage`, `stage_code` and
/// `snoring` (1, 0, or empty where no snoring value exists).
fn epochs_csv_body(report: &FinalReport, zone: Tz, staging: Staging) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(["epoch", "time", "stage", "stage_code", "snoring"])?;
    for (epoch, code) in report.sleep_stages.iter().enumerate() {
        let time = report.start_time + Duration::seconds(epoch as i64 * EPOCH_SECONDS);
        let snoring = match report.snoring_stages.get(epoch) {
            Some(value @ (0 | 1)) => value.to_string(),
            _ => String::new(),
        };
        writer.write_record([
            epoch.to_string(),
            iso_time(time, zone),
            staging.name(*code).unwrap_or("unknown").to_string(),
            code.to_string(),
            snoring,
        ])?;
    }
    writer.into_inner().map_err(|error| error.into_error().into())
}

/// Columns of the nights CSV. The statistics are named as Asleep names
/// them; the columns after `snoring_count` are this server's.
const NIGHT_COLUMNS: [&str; 42] = [
    "date",
    "session_id",
    "start_time",
    "end_time",
    "timezone",
    "sleep_time",
    "wake_time",
    "sleep_latency",
    "wakeup_latency",
    "light_latency",
    "deep_latency",
    "rem_latency",
    "time_in_bed",
    "time_in_sleep_period",
    "time_in_sleep",
    "time_in_wake",
    "time_in_light",
    "time_in_deep",
    "time_in_rem",
    "sleep_efficiency",
    "sleep_ratio",
    "wake_ratio",
    "light_ratio",
    "deep_ratio",
    "rem_ratio",
    "waso_count",
    "longest_waso",
    "sleep_cycle_count",
    "sleep_cycle",
    "sleep_cycle_time",
    "time_in_snoring",
    "time_in_no_snoring",
    "snoring_ratio",
    "no_snoring_ratio",
    "snoring_count",
    "staging",
    "epochs",
    "unknown_epochs",
    "unknown_ratio",
    "reliable",
    "peculiarities",
    "statistics_error",
];

/// Writes the nights CSV, one row per night. Empty cells are figures the
/// night cannot give, such as per-stage figures of a two-stage night. A
/// report without epochs gets only its dates, ids and `statistics_error`.
fn nights_csv_body(nights: &[Night]) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(NIGHT_COLUMNS)?;
    for night in nights {
        let record = night_record(night);
        debug_assert_eq!(record.len(), NIGHT_COLUMNS.len());
        writer.write_record(&record)?;
    }
    writer.into_inner().map_err(|error| error.into_error().into())
}

fn night_record(night: &Night) -> Vec<String> {
    let optional = |value: Option<String>| value.unwrap_or_default();
    let mut record = vec![
        night.date.to_string(),
        text_cell(&night.session_id).into_owned(),
        iso_time(night.start_time, night.zone),
        optional(night.end_time.map(|time| iso_time(time, night.zone))),
        text_cell(night.zone.name()).into_owned(),
    ];
    let statistics = match &night.statistics {
        Ok(statistics) => statistics,
        Err(error) => {
            record.resize(NIGHT_COLUMNS.len() - 2, String::new());
            record.push(text_cell(&night.peculiarities.join(" ")).into_owned());
            record.push(error.to_string());
            return record;
        }
    };
    let s = statistics;
    let number = |value: Option<i64>| optional(value.map(|value| value.to_string()));
    let ratio = |value: Option<f64>| optional(value.map(|value| value.to_string()));
    let count = |value: Option<u32>| optional(value.map(|value| value.to_string()));
    record.extend([
        iso_time(s.sleep_time, night.zone),
        iso_time(s.wake_time, night.zone),
        s.sleep_latency.to_string(),
        s.wakeup_latency.to_string(),
        number(s.light_latency),
        number(s.deep_latency),
        number(s.rem_latency),
        s.time_in_bed.to_string(),
        s.time_in_sleep_period.to_string(),
        s.time_in_sleep.to_string(),
        s.time_in_wake.to_string(),
        number(s.time_in_light),
        number(s.time_in_deep),
        number(s.time_in_rem),
        s.sleep_efficiency.to_string(),
        s.sleep_ratio.to_string(),
        s.wake_ratio.to_string(),
        ratio(s.light_ratio),
        ratio(s.deep_ratio),
        ratio(s.rem_ratio),
        s.waso_count.to_string(),
        s.longest_waso.to_string(),
        count(s.sleep_cycle_count),
        ratio(s.sleep_cycle),
        // Cycle boundaries in one cell, separated by spaces.
        s.sleep_cycle_time
            .iter()
            .map(|time| iso_time(*time, night.zone))
            .collect::<Vec<_>>()
            .join(" "),
        number(s.time_in_snoring),
        number(s.time_in_no_snoring),
        ratio(s.snoring_ratio),
        ratio(s.no_snoring_ratio),
        count(s.snoring_count),
        staging_name(s.staging).to_string(),
        s.epochs.to_string(),
        s.unknown_epochs.to_string(),
        s.unknown_ratio.to_string(),
        s.reliable.to_string(),
        text_cell(&night.peculiarities.join(" ")).into_owned(),
        String::new(),
    ]);
    record
}

/// Returns the staging as its JSON name, `two_stage` or `four_stage`.
fn staging_name(staging: Staging) -> &'static str {
    match staging {
        Staging::TwoStage => "two_stage",
        Staging::FourStage => "four_stage",
    }
}

/// A stage code and its name in this night's staging.
#[derive(Debug, Serialize)]
struct StageName {
    code: i8,
    name: &'static str,
}

/// The JSON export of one night.
#[derive(Debug, Serialize)]
struct NightExport<'a> {
    user_id: &'a str,
    session_id: &'a str,
    /// Date of the start in the session's zone.
    date: NaiveDate,
    timezone: &'a str,
    start_time: DateTime<FixedOffset>,
    end_time: Option<DateTime<FixedOffset>>,
    epoch_seconds: i64,
    staging: Staging,
    /// The codes of `sleep_stages` and their names, `-1` included.
    stage_names: Vec<StageName>,
    sleep_stages: &'a [i8],
    snoring_stages: &'a [i8],
    peculiarities: &'a [String],
    /// Statistics computed from the stages; `null` when the report contains
    /// no epochs, with the reason in `statistics_error`.
    statistics: Option<&'a SleepStatistics>,
    statistics_error: Option<String>,
}

impl<'a> NightExport<'a> {
    fn new(report: &'a FinalReport, night: &'a Night, staging: Staging) -> Self {
        // Every code a delivery may hold, so a two-stage reading of a night
        // with deep or REM codes still names them.
        let stage_names = (UNKNOWN..=REM)
            .map(|code| StageName {
                code,
                name: staging.name(code).unwrap_or("unknown"),
            })
            .collect();
        Self {
            user_id: &report.user_id,
            session_id: &report.session_id,
            date: night.date,
            timezone: &report.timezone,
            start_time: report.start_time,
            end_time: report.end_time,
            epoch_seconds: EPOCH_SECONDS,
            staging,
            stage_names,
            sleep_stages: &report.sleep_stages,
            snoring_stages: &report.snoring_stages,
            peculiarities: &report.peculiarities,
            statistics: night.statistics.as_ref().ok(),
            statistics_error: night.statistics.as_ref().err().map(ToString::to_string),
        }
    }
}

/// A download's file name: an ASCII form for `filename` and, when an id
/// contains other characters, the UTF-8 form for `filename*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileName {
    ascii: String,
    unicode: Option<String>,
}

impl FileName {
    /// Joins the parts with `-` and adds the extension. Each part keeps
    /// letters, digits, `-` and `_`; anything else, `.` and `/` included,
    /// becomes `_`, so no part can reach outside the download folder.
    fn new(parts: &[&str], extension: &str) -> Self {
        let join = |keep: fn(char) -> bool| {
            let parts: Vec<String> = parts
                .iter()
                .map(|part| {
                    part.chars()
                        .take(FILENAME_ID_CHARS)
                        .map(|character| if keep(character) { character } else { '_' })
                        .collect()
                })
                .collect();
            format!("{}.{extension}", parts.join("-"))
        };
        let ascii = join(|character| character.is_ascii_alphanumeric() || matches!(character, '-' | '_'));
        let unicode = join(|character| character.is_alphanumeric() || matches!(character, '-' | '_'));
        Self {
            unicode: (unicode != ascii).then_some(unicode),
            ascii,
        }
    }

    /// Returns the `Content-Disposition` value.
    fn content_disposition(&self) -> String {
        match &self.unicode {
            Some(unicode) => format!(
                "attachment; filename=\"{}\"; filename*=UTF-8''{}",
                self.ascii,
                utf8_percent_encode(unicode, FILENAME_ATTR)
            ),
            None => format!("attachment; filename=\"{}\"", self.ascii),
        }
    }
}

fn download(body: Vec<u8>, content_type: &'static str, file_name: &FileName) -> Response {
    let mut response = ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response();
    set_attachment(&mut response, file_name);
    response
}

fn set_attachment(response: &mut Response, file_name: &FileName) {
    // The value is ASCII by construction: ASCII names and percent-encoding.
    let value = HeaderValue::from_str(&file_name.content_disposition())
        .expect("a Content-Disposition built from ASCII is a valid header value");
    response.headers_mut().insert(header::CONTENT_DISPOSITION, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_ascii_safe() {
        let name = FileName::new(&["sleep", "../etc/passwd", "2026-11-01", "s\"1", "epochs"], "csv");
        assert_eq!(name.ascii, "sleep-___etc_passwd-2026-11-01-s_1-epochs.csv");
        assert_eq!(name.unicode, None);
        assert_eq!(
            name.content_disposition(),
            "attachment; filename=\"sleep-___etc_passwd-2026-11-01-s_1-epochs.csv\""
        );

        let name = FileName::new(&["sleep", "Jürgen", "nights"], "csv");
        assert_eq!(name.ascii, "sleep-J_rgen-nights.csv");
        assert_eq!(
            name.content_disposition(),
            "attachment; filename=\"sleep-J_rgen-nights.csv\"; filename*=UTF-8''sleep-J%C3%BCrgen-nights.csv"
        );

        let long = "x".repeat(300);
        assert_eq!(FileName::new(&[&long], "csv").ascii.len(), FILENAME_ID_CHARS + 4);
    }

    #[test]
    fn formula_cells_are_quoted() {
        for text in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(text_cell(text), format!("'{text}"), "{text:?}");
        }
        assert_eq!(text_cell("session-1"), "session-1");
        assert_eq!(text_cell("Asia/Seoul"), "Asia/Seoul");
    }

    #[test]
    fn paths_extend_report_paths() {
        assert_eq!(epochs_csv_path("u/1", "s"), "/users/u%2F1/sessions/s/epochs.csv");
        assert_eq!(night_json_path("u", "s 1"), "/users/u/sessions/s%201/night.json");
        assert_eq!(nights_csv_path("u"), "/users/u/nights.csv");
    }
}
