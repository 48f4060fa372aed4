//! `GET /users/{user_id}`: a user's nights, newest first, with trend
//! charts of the last 7 and 30 days and the averages over a period chosen
//! with `?from=YYYY-MM-DD&to=YYYY-MM-DD`.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::response::Html;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use super::export::{epochs_csv_path, night_json_path, nights_csv_path};
use super::{PageError, ViewerToken, error::render_failed};
use crate::app::AppState;
use crate::error::AppError;
use crate::payload::EPOCH_SECONDS;
use crate::report::{
    Headline, Source, format_clock, format_date, format_duration, format_percent, history_path, live_path, parse_zone,
    report_path,
};
use crate::statistics::StageModel;
use crate::storage::SessionEntry;
use crate::trends::{self, Metric, Night, Period, PeriodAverages, ROLLING_NIGHTS, TrendChart};

/// Lengths of the trend charts' windows, in days.
const CHART_WINDOWS: [u32; 2] = [7, 30];

/// One night in the list.
#[derive(Debug, Clone, PartialEq)]
struct NightRow {
    session_id: String,
    report_href: String,
    /// Downloads of a complete night: its epochs as CSV and the night as JSON.
    epochs_csv_href: Option<String>,
    night_json_href: Option<String>,
    complete: bool,
    /// The date the night began, in the session's zone when known.
    date: String,
    /// Start clock time with the zone's abbreviation, or for a night in
    /// progress when its first results arrived.
    start: String,
    duration: Option<String>,
    efficiency: Option<String>,
    efficiency_source: Option<Source>,
    /// Start of the night in Unix milliseconds, which orders the list.
    sort_key: i64,
}

impl NightRow {
    fn new(user_id: &str, entry: &SessionEntry) -> Self {
        let report_href = report_path(user_id, &entry.session_id);
        let Some(report) = &entry.report else {
            // Before the final report neither the start nor the zone is
            // known, so the row shows when the first results arrived, in UTC.
            let first_seen = DateTime::<Utc>::from_timestamp_millis(entry.first_seen_ms).unwrap_or_default();
            return Self {
                session_id: entry.session_id.clone(),
                report_href,
                epochs_csv_href: None,
                night_json_href: None,
                complete: false,
                date: format_date(&first_seen, Tz::UTC),
                start: format!("first results at {} UTC", format_clock(&first_seen, Tz::UTC)),
                duration: entry
                    .epochs_so_far
                    .map(|epochs| format!("{} so far", format_duration(epochs * EPOCH_SECONDS))),
                efficiency: None,
                efficiency_source: None,
                sort_key: entry.first_seen_ms,
            };
        };

        let zone = parse_zone(&report.timezone);
        let headline = Headline::from_report(report);
        let stat = report.stat.as_ref();
        let time_in_bed = stat
            .and_then(|stat| stat.time_in_bed)
            .map(|seconds| seconds.round() as i64)
            .or(headline.time_in_bed_seconds);
        let efficiency = match stat.and_then(|stat| stat.sleep_efficiency) {
            Some(percent) => Some((percent, Source::Asleep)),
            None => headline
                .sleep_efficiency_percent
                .map(|percent| (percent, Source::Hypnogram)),
        };
        Self {
            session_id: entry.session_id.clone(),
            report_href,
            epochs_csv_href: Some(epochs_csv_path(user_id, &entry.session_id)),
            night_json_href: Some(night_json_path(user_id, &entry.session_id)),
            complete: true,
            date: format_date(&report.start_time, zone),
            start: report.start_time.with_timezone(&zone).format("%H:%M %Z").to_string(),
            duration: time_in_bed.map(format_duration),
            efficiency: efficiency.map(|(percent, _)| format_percent(percent)),
            efficiency_source: efficiency.map(|(_, source)| source),
            sort_key: report.start_time.timestamp_millis(),
        }
    }

    fn efficiency_from_hypnogram(&self) -> bool {
        self.efficiency_source == Some(Source::Hypnogram)
    }
}

/// Orders nights by their start, newest first. The storage lists sessions
/// by the arrival of their first event. A final report names the real
/// start, which orders a night differently when its first results were lost.
fn rows(user_id: &str, entries: &[SessionEntry]) -> Vec<NightRow> {
    let mut rows: Vec<NightRow> = entries.iter().map(|entry| NightRow::new(user_id, entry)).collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.sort_key));
    rows
}

/// The charts of one window: every metric over the same days.
struct ChartWindow {
    days: u32,
    charts: Vec<TrendChart>,
    /// Whether the stage-share charts are left out because every night in
    /// the window is two-stage.
    two_stage_only: bool,
}

#[derive(Template)]
#[template(path = "history.html")]
struct HistoryPage {
    user_id: String,
    nights: Vec<NightRow>,
    live_href: String,
    nights_csv_href: String,
    /// Empty when the user has no complete night.
    chart_windows: Vec<ChartWindow>,
    rolling_nights: usize,
    averages: PeriodAverages,
    /// Target of the period form. The form carries no token, because the
    /// viewer cookie goes with it.
    form_action: String,
}

impl HistoryPage {
    fn any_from_hypnogram(&self) -> bool {
        self.nights.iter().any(NightRow::efficiency_from_hypnogram)
    }
}

/// The `from` and `to` query values, as given.
#[derive(Debug, Default, PartialEq)]
struct PeriodQuery {
    from: Option<String>,
    to: Option<String>,
}

impl PeriodQuery {
    /// Reads `from` and `to` from the query; other names, such as
    /// `token`, are left to their own extractors.
    fn from_uri(uri: &Uri) -> Result<Self, AppError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|error| AppError::BadQuery(format!("the query string cannot be read: {error}")))?;
        let mut query = Self::default();
        for (name, value) in pairs {
            let slot = match name.as_str() {
                "from" => &mut query.from,
                "to" => &mut query.to,
                _ => continue,
            };
            if slot.is_some() {
                return Err(AppError::BadQuery(format!("{name}: given more than once")));
            }
            *slot = Some(value);
        }
        Ok(query)
    }

    /// Resolves the period, defaulting to the days ending at `latest`.
    fn period(&self, latest: NaiveDate) -> Result<Period, AppError> {
        Period::from_query(self.from.as_deref(), self.to.as_deref(), latest)
            .map_err(|error| AppError::BadQuery(error.to_string()))
    }
}

/// Serves the list of a user's nights with their trends and averages.
/// An invalid `from` or `to` gets a 400 response that names the field.
pub async fn page(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    viewer: ViewerToken,
    uri: Uri,
) -> Result<Html<String>, PageError> {
    state.authorize_viewer(&user_id, viewer.token(&user_id)).await?;
    let query = PeriodQuery::from_uri(&uri)?;
    let entries = state.store.sessions(&user_id).await?;
    Ok(Html(render(&user_id, &entries, &query, state.stage_model)?))
}

fn render(
    user_id: &str,
    entries: &[SessionEntry],
    query: &PeriodQuery,
    model: StageModel,
) -> Result<String, PageError> {
    let nights = trends::nights(entries.iter().filter_map(|entry| entry.report.as_ref()), model);
    let latest = trends::latest_date(&nights);
    let period = query.period(latest.unwrap_or_else(|| Utc::now().date_naive()))?;
    let page = HistoryPage {
        user_id: user_id.to_string(),
        nights: rows(user_id, entries),
        live_href: live_path(user_id),
        nights_csv_href: nights_csv_path(user_id),
        chart_windows: latest.map(|last| chart_windows(&nights, last)).unwrap_or_default(),
        rolling_nights: ROLLING_NIGHTS,
        averages: PeriodAverages::compute(&nights, period),
        form_action: history_path(user_id),
    };
    Ok(page.render().map_err(render_failed)?)
}

fn chart_windows(nights: &[Night], last: NaiveDate) -> Vec<ChartWindow> {
    CHART_WINDOWS
        .iter()
        .map(|days| {
            let (charts, left_out): (Vec<TrendChart>, Vec<TrendChart>) = Metric::ALL
                .iter()
                .map(|metric| TrendChart::build(*metric, nights, last, *days))
                .partition(|chart| !chart.bars.is_empty() || chart.two_stage_nights == 0);
            ChartWindow {
                days: *days,
                charts,
                two_stage_only: !left_out.is_empty(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::FinalReport;

    use crate::payload::fixtures::final_report as fixture_report;

    fn entry(session_id: &str, first_seen: &str, report: Option<FinalReport>) -> SessionEntry {
        let first_seen_ms = DateTime::parse_from_rfc3339(first_seen).unwrap().timestamp_millis();
        SessionEntry {
            session_id: session_id.to_string(),
            first_seen_ms,
            last_seen_ms: first_seen_ms,
            epochs_so_far: None,
            report,
        }
    }

    #[test]
    fn nights_are_newest_first() {
        let flat = fixture_report("session-flat.json", "user123");
        let mut older = flat.clone();
        older.session_id = "older".into();
        older.start_time = DateTime::parse_from_rfc3339("2024-01-10T22:00:00+00:00").unwrap();
        older.end_time = None;
        let entries = [
            // Listed first by arrival, but its report names an earlier start.
            entry("older", "2024-01-25T00:00:00Z", Some(older)),
            entry("in-progress", "2024-01-22T21:00:00Z", None),
            entry("session123", "2024-01-20T22:01:00Z", Some(flat)),
        ];
        let rows = rows("user123", &entries);
        let order: Vec<&str> = rows.iter().map(|row| row.session_id.as_str()).collect();
        assert_eq!(order, ["in-progress", "session123", "older"]);
        assert_eq!(rows[0].start, "first results at 21:00 UTC");
        assert_eq!(rows[0].duration, None);

        let html = render("user123", &entries, &PeriodQuery::default(), StageModel::Automatic).unwrap();
        let positions: Vec<usize> = order
            .iter()
            .map(|id| html.find(&format!(r#"data-session-id="{id}""#)).unwrap())
            .collect();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{positions:?}");
    }

    #[test]
    fn night_row_shows_date_duration_and_efficiency() {
        let report = fixture_report("session-enveloped.json", "G-20261101-demo-user-0001");
        let entries = [entry(&report.session_id.clone(), "2026-11-20T14:48:00Z", Some(report))];
        let row = &rows("G-20261101-demo-user-0001", &entries)[0];
        assert_eq!(row.date, "Fri 20 Nov 2026");
        assert_eq!(row.start, "23:47 KST");
        assert_eq!(row.duration.as_deref(), Some("7 h 30 min"));
        assert_eq!(row.efficiency.as_deref(), Some("92%"));
        assert_eq!(
            row.report_href,
            "/users/G-20261101-demo-user-0001/sessions/20261120872578_72109"
        );
    }

    #[test]
    fn night_in_progress_shows_length_so_far() {
        let mut in_progress = entry("tonight", "2026-11-20T22:00:00Z", None);
        in_progress.epochs_so_far = Some(120);
        let row = &rows("u", &[in_progress])[0];
        assert_eq!(row.duration.as_deref(), Some("1 h so far"));
    }

    #[test]
    fn empty_history_is_friendly() {
        let html = render("nobody", &[], &PeriodQuery::default(), StageModel::Automatic).unwrap();
        assert!(html.contains(r#"id="no-nights""#));
        assert!(!html.contains(r#"id="nights""#));
    }

    #[test]
    fn user_id_is_escaped() {
        let html = render(
            "<script>alert(1)</script>",
            &[],
            &PeriodQuery::default(),
            StageModel::Automatic,
        )
        .unwrap();
        assert!(!html.contains("<script>alert(1)</script>"));
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    }
}
