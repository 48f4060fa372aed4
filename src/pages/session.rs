//! A session's report page and the document behind it, which the JSON API
//! serves as it is.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;
use chrono::{DateTime, FixedOffset, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::{PageError, ViewerToken, error::render_failed, with_token};
use crate::app::AppState;
use crate::error::AppError;
use crate::hypnogram::{Hypnogram, Svg};
use crate::payload::{EPOCH_SECONDS, FinalReport, Stat};
use crate::report::{
    Headline, ReportSummary, api_session_path, format_clock, format_date, format_date_time, history_path, live_path,
    parse_zone,
};
use crate::rooms::LiveNight;
use crate::storage::SessionEvents;

/// Everything stored about one session in plain units: the final report
/// when it arrived, otherwise the timeline assembled from partial results.
#[derive(Debug, Clone, Serialize)]
pub struct SessionDocument {
    pub user_id: String,
    pub session_id: String,
    /// Whether the final report arrived.
    pub complete: bool,
    /// The session's IANA zone; `None` until the final report names it.
    pub timezone: Option<String>,
    /// Start of epoch 0.
    pub start_time: Option<DateTime<FixedOffset>>,
    /// Whether `start_time` is estimated from arrival times, which it is
    /// until the final report arrives.
    pub start_time_estimated: bool,
    pub end_time: Option<DateTime<FixedOffset>>,
    pub epoch_seconds: i64,
    pub sleep_stages: Vec<i8>,
    pub snoring_stages: Vec<i8>,
    pub peculiarities: Vec<String>,
    pub missing_data_ratio: Option<f64>,
    /// Asleep's statistics with efficiency as a percentage; `None` when
    /// Asleep sent none or the night is still in progress.
    pub stat: Option<Stat>,
    pub headline: Headline,
    /// The final report, kept for the page; the fields above carry its data.
    #[serde(skip)]
    report: Option<FinalReport>,
}

impl SessionDocument {
    /// Builds the document of one session from its stored events.
    pub fn from_events(user_id: &str, session_id: &str, events: &SessionEvents) -> Self {
        if let Some(report) = &events.report {
            return Self {
                user_id: user_id.to_string(),
                session_id: session_id.to_string(),
                complete: true,
                timezone: Some(report.timezone.clone()),
                start_time: Some(report.start_time),
                start_time_estimated: false,
                end_time: report.end_time,
                epoch_seconds: EPOCH_SECONDS,
                sleep_stages: report.sleep_stages.clone(),
                snoring_stages: report.snoring_stages.clone(),
                peculiarities: report.peculiarities.clone(),
                missing_data_ratio: report.missing_data_ratio,
                stat: report.stat.clone(),
                headline: Headline::from_report(report),
                report: Some(report.clone()),
            };
        }

        let night = LiveNight::rebuild(user_id, session_id, events);
        Self {
            user_id: user_id.to_string(),
            session_id: session_id.to_string(),
            complete: false,
            timezone: None,
            start_time: night
                .start_estimate_ms
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .map(|start| start.fixed_offset()),
            start_time_estimated: true,
            end_time: None,
            epoch_seconds: EPOCH_SECONDS,
            headline: Headline::from_stages(&night.timeline.sleep_stages, None),
            sleep_stages: night.timeline.sleep_stages,
            snoring_stages: night.timeline.snoring_stages,
            peculiarities: Vec::new(),
            missing_data_ratio: None,
            stat: None,
            report: None,
        }
    }

    /// Returns the zone clock times are shown in: the session's zone, or
    /// UTC while the night is in progress and its zone is unknown.
    fn zone(&self) -> Tz {
        self.timezone.as_deref().map_or(Tz::UTC, parse_zone)
    }
}

/// Loads a session after checking the viewer's token, so a request without
/// a valid token cannot probe which sessions exist.
pub async fn load(
    state: &AppState,
    user_id: &str,
    session_id: &str,
    token: Option<&str>,
) -> Result<SessionDocument, AppError> {
    state.authorize_viewer(user_id, token)?;
    let events = state
        .store
        .session_events(user_id, session_id)
        .await?
        .ok_or_else(|| AppError::NotFound("session".to_string()))?;
    Ok(SessionDocument::from_events(user_id, session_id, &events))
}

#[derive(Template)]
#[template(path = "report.html")]
struct ReportPage {
    user_id: String,
    session_id: String,
    complete: bool,
    /// The night's date, such as `Fri 20 Nov 2026`.
    date: Option<String>,
    start: Option<String>,
    end: Option<String>,
    /// The zone the page's clock times are in, with a note when estimated.
    zone_note: String,
    unexpected_end: Option<String>,
    hypnogram: Svg,
    summary: ReportSummary,
    history_href: String,
    live_href: String,
    api_href: String,
}

/// Serves `/users/{user_id}/sessions/{session_id}`: the report of one night,
/// or its partial timeline while it is in progress.
pub async fn page(
    State(state): State<AppState>,
    Path((user_id, session_id)): Path<(String, String)>,
    ViewerToken(token): ViewerToken,
) -> Result<Html<String>, PageError> {
    let document = load(&state, &user_id, &session_id, token.as_deref()).await?;
    let token = token.unwrap_or_default();
    let page = ReportPage::new(&document, &token);
    Ok(Html(page.render().map_err(render_failed)?))
}

impl ReportPage {
    fn new(document: &SessionDocument, token: &str) -> Self {
        let zone = document.zone();
        let start = document.start_time.map(|start| start.with_timezone(&Utc));
        let summary = match &document.report {
            Some(report) => ReportSummary::from_report(report, zone),
            None => ReportSummary::from_timeline(&document.sleep_stages, &document.snoring_stages, zone),
        };
        let estimated = if document.start_time_estimated {
            " (estimated)"
        } else {
            ""
        };
        let zone_note = if document.complete {
            format!("Times are in the session's time zone, {}.", zone.name())
        } else {
            "Times are in UTC and estimated from when results arrived; the session's time zone is known only \
             once the night completes."
                .to_string()
        };
        let hypnogram = Hypnogram {
            sleep_stages: &document.sleep_stages,
            snoring_stages: &document.snoring_stages,
            clock: start.map(|start| (start, zone)),
            start_estimated: document.start_time_estimated,
            title: format!("Hypnogram of session {}", document.session_id),
        }
        .render();

        Self {
            user_id: document.user_id.clone(),
            session_id: document.session_id.clone(),
            complete: document.complete,
            date: start.map(|start| format_date(&start, zone)),
            start: start.map(|start| format!("{}{estimated}", format_date_time(&start, zone))),
            end: document.end_time.map(|end| format_date_time(&end, zone)),
            zone_note,
            unexpected_end: document
                .report
                .as_ref()
                .and_then(|report| report.unexpected_end_time)
                .map(|end| format_clock(&end, zone)),
            hypnogram,
            summary,
            history_href: with_token(&history_path(&document.user_id), token),
            live_href: with_token(&live_path(&document.user_id), token),
            api_href: with_token(&api_session_path(&document.user_id, &document.session_id), token),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::InferenceResult;

    use crate::payload::fixtures::final_report as fixture_report;

    fn render(report: FinalReport) -> String {
        let events = SessionEvents {
            first_seen_ms: 0,
            results: Vec::new(),
            report: Some(report.clone()),
        };
        let document = SessionDocument::from_events(&report.user_id, &report.session_id, &events);
        ReportPage::new(&document, "v1.9.token").render().unwrap()
    }

    /// Returns the text of the `<dd>` of the figure named `key`.
    fn figure_value<'a>(html: &'a str, key: &str) -> &'a str {
        let marker = format!(r#"data-figure="{key}""#);
        let figure = &html[html.find(&marker).unwrap_or_else(|| panic!("no figure {key}"))..];
        let value = &figure[figure.find("<dd").unwrap()..];
        let value = &value[value.find('>').unwrap() + 1..];
        value[..value.find('<').unwrap()].trim()
    }

    #[test]
    fn report_renders_documented_stat_style() {
        let html = render(fixture_report("session-enveloped.json", "G-20261101-demo-user-0001"));
        assert!(html.contains(r#"<svg id="hypnogram""#));
        assert!(
            html.contains("Fri 20 Nov 2026, 23:47 KST"),
            "start in the session's zone"
        );
        assert!(html.contains("Sat 21 Nov 2026, 07:17 KST"), "end in the session's zone");
        assert_eq!(figure_value(&html, "sleep_efficiency"), "92%");
        assert_eq!(figure_value(&html, "fell_asleep_at"), "00:05");
        assert_eq!(figure_value(&html, "total_sleep"), "6 h 52 min");
        assert_eq!(figure_value(&html, "sleep_cycle_length"), "1 h 32 min");
        assert!(html.contains(r#"data-code="NO_BREATHING_STABILITY""#));
        assert!(!html.contains(r#"id="stat-missing""#));
        assert!(!html.contains(r#"id="in-progress""#));
        assert!(html.contains(r#"href="/users/G-20261101-demo-user-0001?token=v1.9.token""#));
        assert!(html.contains(">00:00</text>"), "hour ticks in Asia/Seoul");
    }

    #[test]
    fn report_renders_guide_stat_style() {
        let html = render(fixture_report("session-flat.json", "user123"));
        assert_eq!(figure_value(&html, "sleep_time"), "4 h 10 min");
        assert_eq!(figure_value(&html, "sleep_efficiency"), "90.3%");
        assert_eq!(figure_value(&html, "sleep_cycle_count"), "2");
        assert!(html.contains("Sat 20 Jan 2024, 22:00 UTC"));
        assert!(html.contains(r#"<li class="cycle""#));
        assert!(
            html.contains(r#"id="hypnogram-footnote""#),
            "stage shares come from the hypnogram"
        );
    }

    #[test]
    fn report_without_stat_says_why() {
        let mut report = fixture_report("session-flat.json", "user123");
        report.stat = None;
        report.peculiarities = vec!["TOO_SHORT_FOR_ANALYSIS".into(), "<b>NEW</b>".into()];
        let html = render(report);
        assert!(html.contains(r#"id="stat-missing""#));
        assert!(html.contains("because of TOO_SHORT_FOR_ANALYSIS"));
        assert_eq!(figure_value(&html, "total_sleep"), "4 h 10 min");
        assert!(html.contains(r#"data-source="hypnogram""#));
        assert!(
            html.contains("&#60;b&#62;NEW&#60;/b&#62;"),
            "unknown codes are shown escaped"
        );
        assert!(!html.contains("<b>NEW</b>"));
    }

    #[test]
    fn partial_night_shows_progress() {
        let result = InferenceResult {
            user_id: "u".into(),
            session_id: "s".into(),
            seq_num: 39,
            inference_seq_num: Some(3),
            sleep_stages: [vec![0; 20], vec![-1; 5], vec![1; 15]].concat(),
            snoring_stages: vec![0; 40],
            breath_stages: None,
            sent_at: None,
        };
        // The start is estimated from the arrival time: 40 epochs before it.
        let received_at_ms = DateTime::parse_from_rfc3339("2026-11-20T15:07:07+00:00")
            .unwrap()
            .timestamp_millis();
        let events = SessionEvents {
            first_seen_ms: 0,
            results: vec![(result, received_at_ms)],
            report: None,
        };
        let document = SessionDocument::from_events("u", "s", &events);
        assert!(!document.complete);
        assert!(document.start_time_estimated);
        assert_eq!(document.start_time.unwrap().to_rfc3339(), "2026-11-20T14:47:07+00:00");
        assert_eq!(document.sleep_stages.len(), 40);

        let html = ReportPage::new(&document, "t").render().unwrap();
        assert!(html.contains(r#"id="in-progress""#));
        assert!(html.contains(r#"href="/users/u/live?token=t""#));
        assert!(html.contains(r#"class="gap" data-start="20" data-epochs="5""#));
        assert!(html.contains("14:47 UTC (estimated)"));
    }

    #[test]
    fn ids_are_escaped() {
        let mut report = fixture_report("session-flat.json", "user123");
        report.user_id = "<script>alert(1)</script>".into();
        report.session_id = "\"><img src=x onerror=alert(1)>".into();
        let html = render(report);
        assert!(!html.contains("<script>alert(1)</script>"));
        assert!(!html.contains("<img src=x"));
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
        assert!(html.contains("/users/%3Cscript%3Ealert%281%29%3C%2Fscript%3E?token="));
    }
}
