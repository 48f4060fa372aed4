//! A session's report page and the document behind it, which the JSON API
//! serves as it is. `docs/api.md` describes the document field by field.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;
use chrono::{DateTime, FixedOffset, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::{PageError, ViewerToken, epochs_csv_path, error::render_failed, night_json_path};
use crate::app::AppState;
use crate::error::AppError;
use crate::hypnogram::{Hypnogram, Svg};
use crate::payload::{EPOCH_SECONDS, FinalReport, check_id};
use crate::report::{
    AsleepStat, Headline, NightClock, ReportSummary, api_session_path, format_clock, format_date, format_date_time,
    history_path, live_path, parse_zone,
};
use crate::rooms::LiveNight;
use crate::statistics::{SleepStatistics, StageModel, Staging, StatisticsError};
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
    /// How the night's stage codes are read, as the deployment's stage
    /// model decides for this night.
    pub staging: Staging,
    pub sleep_stages: Vec<i8>,
    pub snoring_stages: Vec<i8>,
    pub peculiarities: Vec<String>,
    pub missing_data_ratio: Option<f64>,
    /// This server's statistics of the night, with clock times in the
    /// session's zone; `None` when the night has no epochs.
    pub statistics: Option<SleepStatistics>,
    /// Asleep's statistics in Asleep's units; `None` when Asleep sent none
    /// or the night is still in progress.
    pub stat: Option<AsleepStat>,
    pub headline: Headline,
    /// The final report, kept for the page; the fields above carry its data.
    #[serde(skip)]
    report: Option<FinalReport>,
}

impl SessionDocument {
    /// Builds the document of one session from its stored events, reading
    /// its stages as `stage_model` decides.
    pub fn from_events(user_id: &str, session_id: &str, events: &SessionEvents, stage_model: StageModel) -> Self {
        if let Some(report) = &events.report {
            let zone = parse_zone(&report.timezone);
            let staging = stage_model.staging(&report.sleep_stages);
            let statistics = report_statistics(report, staging).map(|statistics| localize(statistics, zone));
            return Self {
                user_id: user_id.to_string(),
                session_id: session_id.to_string(),
                complete: true,
                timezone: Some(report.timezone.clone()),
                start_time: Some(report.start_time),
                start_time_estimated: false,
                end_time: report.end_time,
                epoch_seconds: EPOCH_SECONDS,
                staging,
                sleep_stages: report.sleep_stages.clone(),
                snoring_stages: report.snoring_stages.clone(),
                peculiarities: report.peculiarities.clone(),
                missing_data_ratio: report.missing_data_ratio,
                headline: statistics
                    .as_ref()
                    .map_or_else(|| Headline::from_report(report), Headline::from_statistics),
                statistics,
                stat: report.stat.as_ref().map(AsleepStat::from),
                report: Some(report.clone()),
            };
        }

        let night = LiveNight::rebuild(user_id, session_id, events);
        let start_time = night
            .start_estimate_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .map(|start| start.fixed_offset());
        let stages = &night.timeline.sleep_stages;
        let staging = stage_model.staging(stages);
        // Without an estimated start the statistics count from the Unix
        // epoch; the page then shows times since the start, not clock times.
        let statistics = SleepStatistics::compute(
            stages,
            &night.timeline.snoring_stages,
            start_time.unwrap_or(DateTime::UNIX_EPOCH.fixed_offset()),
            None,
            staging,
        )
        .ok();
        Self {
            user_id: user_id.to_string(),
            session_id: session_id.to_string(),
            complete: false,
            timezone: None,
            start_time,
            start_time_estimated: true,
            end_time: None,
            epoch_seconds: EPOCH_SECONDS,
            staging,
            headline: statistics
                .as_ref()
                .map_or_else(|| Headline::from_stages(stages, None), Headline::from_statistics),
            statistics,
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

/// Computes a final report's statistics. A report whose end equals its
/// start, which intake lets through, is measured by its hypnogram's length
/// instead, as pysleep does without an end.
fn report_statistics(report: &FinalReport, staging: Staging) -> Option<SleepStatistics> {
    let compute = |end| {
        SleepStatistics::compute(
            &report.sleep_stages,
            &report.snoring_stages,
            report.start_time,
            end,
            staging,
        )
    };
    match compute(report.end_time) {
        Ok(statistics) => Some(statistics),
        Err(StatisticsError::EndBeforeStart) => compute(None).ok(),
        Err(StatisticsError::NoEpochs) => None,
    }
}

/// Gives every time of the statistics the session zone's offset at that
/// instant. The calculator adds durations to the start, which keeps the
/// start's offset: after New York's clocks fall back, a time would still
/// read `-04:00` where the session's clock read `-05:00`.
fn localize(mut statistics: SleepStatistics, zone: Tz) -> SleepStatistics {
    let clock = NightClock::new(zone, statistics.start_time, statistics.end_time);
    statistics.start_time = clock.localize(statistics.start_time);
    statistics.end_time = clock.localize(statistics.end_time);
    statistics.sleep_time = clock.localize(statistics.sleep_time);
    statistics.wake_time = clock.localize(statistics.wake_time);
    for time in &mut statistics.sleep_cycle_time {
        *time = clock.localize(*time);
    }
    statistics
}

/// Loads a session after checking the ids and the viewer's token, so a
/// request without a valid token cannot probe which sessions exist. The
/// lookup is keyed by the user and the session together, so pairing one's
/// own user id with another user's session id finds nothing.
pub async fn load(
    state: &AppState,
    user_id: &str,
    session_id: &str,
    token: Option<&str>,
) -> Result<SessionDocument, AppError> {
    check_id(session_id, "session_id")?;
    state.authorize_viewer(user_id, token).await?;
    let events = state
        .store
        .session_events(user_id, session_id)
        .await?
        .ok_or_else(|| AppError::NotFound("session".to_string()))?;
    Ok(SessionDocument::from_events(
        user_id,
        session_id,
        &events,
        state.stage_model,
    ))
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
    /// Downloads of the night's epochs and of the night as JSON, which
    /// exist once the final report has arrived.
    downloads: Option<(String, String)>,
}

/// Serves `/users/{user_id}/sessions/{session_id}`: the report of one night,
/// or its partial timeline while it is in progress.
pub async fn page(
    State(state): State<AppState>,
    Path((user_id, session_id)): Path<(String, String)>,
    viewer: ViewerToken,
) -> Result<Html<String>, PageError> {
    let document = load(&state, &user_id, &session_id, viewer.token(&user_id)).await?;
    Ok(Html(render_report_page(&document).map_err(render_failed)?))
}

/// Renders the HTML of a session's report page, hypnogram included: the
/// body [`page`] serves. Public so that `benches/report_page.rs` can time
/// the render without a server or a database.
pub fn render_report_page(document: &SessionDocument) -> askama::Result<String> {
    ReportPage::new(document).render()
}

impl ReportPage {
    fn new(document: &SessionDocument) -> Self {
        let zone = document.zone();
        let start = document.start_time.map(|start| start.with_timezone(&Utc));
        let clock = document
            .statistics
            .as_ref()
            .filter(|_| start.is_some())
            .map(|statistics| NightClock::new(zone, statistics.start_time, statistics.end_time));
        let summary = ReportSummary::new(
            document.statistics.as_ref(),
            document.report.as_ref(),
            &document.sleep_stages,
            document.staging,
            clock,
        );
        let estimated = if document.start_time_estimated {
            " (estimated)"
        } else {
            ""
        };
        let zone_note = if document.complete {
            format!("Times are in the session's time zone, {}.", zone.name())
        } else if start.is_some() {
            "Times are in UTC and estimated from when results arrived; the session's time zone is known only \
             once the night completes."
                .to_string()
        } else {
            "The start of this night is not known yet, so times count from its first epoch.".to_string()
        };
        let title = match document.staging {
            Staging::TwoStage => format!("Hypnogram of session {}: wake and sleep", document.session_id),
            Staging::FourStage => format!("Hypnogram of session {}: sleep stages", document.session_id),
        };
        let hypnogram = Hypnogram {
            sleep_stages: &document.sleep_stages,
            snoring_stages: &document.snoring_stages,
            clock: start.map(|start| (start, zone)),
            start_estimated: document.start_time_estimated,
            title,
        }
        .render_report(document.staging, document.statistics.as_ref());

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
            history_href: history_path(&document.user_id),
            live_href: live_path(&document.user_id),
            api_href: api_session_path(&document.user_id, &document.session_id),
            downloads: document.complete.then(|| {
                (
                    epochs_csv_path(&document.user_id, &document.session_id),
                    night_json_path(&document.user_id, &document.session_id),
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::InferenceResult;

    use crate::payload::fixtures::final_report as fixture_report;

    fn document(report: &FinalReport, stage_model: StageModel) -> SessionDocument {
        let events = SessionEvents {
            first_seen_ms: 0,
            results: Vec::new(),
            report: Some(report.clone()),
        };
        SessionDocument::from_events(&report.user_id, &report.session_id, &events, stage_model)
    }

    fn render(report: FinalReport) -> String {
        ReportPage::new(&document(&report, StageModel::Automatic))
            .render()
            .unwrap()
    }

    /// Returns the text of the `<dd>` of the figure named `key`.
    fn figure_value<'a>(html: &'a str, key: &str) -> &'a str {
        let marker = format!(r#"data-figure="{key}""#);
        let figure = &html[html.find(&marker).unwrap_or_else(|| panic!("no figure {key}"))..];
        let value = &figure[figure.find("<dd").unwrap()..];
        let value = &value[value.find('>').unwrap() + 1..];
        value[..value.find('<').unwrap()].trim()
    }

    /// Returns the `<tr>` of the statistic named `name`.
    fn statistic_row<'a>(html: &'a str, name: &str) -> &'a str {
        let marker = format!(r#"<tr data-statistic="{name}""#);
        let row = &html[html.find(&marker).unwrap_or_else(|| panic!("no statistic {name}"))..];
        &row[..row.find("</tr>").unwrap()]
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
        let cycle = statistic_row(&html, "sleep_cycle");
        assert!(cycle.contains(">1 h 31 min 37.5 s<"), "{cycle}");
        assert!(cycle.contains(">1 h 31 min 37 s<"), "{cycle}");
        assert!(cycle.contains(">agrees<"), "truncation is not a disagreement: {cycle}");
        assert!(
            !html.contains(r#"id="disagreements""#),
            "every figure agrees with Asleep's"
        );
        assert!(html.contains(r#"data-code="NO_BREATHING_STABILITY""#));
        assert!(!html.contains(r#"id="stat-missing""#));
        assert!(!html.contains(r#"id="in-progress""#));
        assert!(!html.contains(r#"id="unreliable""#));
        assert!(html.contains(r#"href="/users/G-20261101-demo-user-0001""#));
        assert!(html.contains(
            r#"id="epochs-csv-link" href="/users/G-20261101-demo-user-0001/sessions/20261120872578_72109/epochs.csv""#
        ));
        assert!(html.contains(r#"id="night-json-link""#));
        assert!(html.contains(">00:00</text>"), "hour ticks in Asia/Seoul");
        assert_eq!(html.matches(r#"<tr class="cycle">"#).count(), 4);
        assert_eq!(html.matches(r#"<tr class="waso-episode">"#).count(), 7);
    }

    #[test]
    fn report_renders_guide_stat_style() {
        let html = render(fixture_report("session-flat.json", "user123"));
        assert!(html.contains("Sat 20 Jan 2024, 22:00 UTC"));
        let efficiency = statistic_row(&html, "sleep_efficiency");
        assert!(
            efficiency.contains(r#"<td class="asleep-value">90.3%</td>"#),
            "{efficiency}"
        );
        let duration = &html[html.find("Sleep time, sent as a duration").expect("the duration row")..];
        assert!(duration.contains(r#"<td class="asleep-value">4 h 10 min</td>"#));
        assert!(statistic_row(&html, "sleep_cycle_count").contains(r#"<td class="asleep-value">2</td>"#));
    }

    #[test]
    fn altered_stat_shows_disagreement() {
        let mut report = fixture_report("session-enveloped.json", "G-20261101-demo-user-0001");
        let stat = report.stat.as_mut().unwrap();
        stat.waso_count = Some(8.0);
        stat.sleep_efficiency = Some(85.0);
        let html = render(report);
        let notice = &html[html.find(r#"id="disagreements""#).expect("a disagreement notice")..];
        let notice = &notice[..notice.find("</p>").unwrap()];
        assert!(notice.contains("on 2 figures"), "{notice}");
        assert!(notice.contains("Sleep efficiency"), "{notice}");
        assert!(notice.contains("Awakenings after sleep onset (WASO)"), "{notice}");
        let waso = statistic_row(&html, "waso_count");
        assert!(waso.contains(r#"class="disagree""#), "{waso}");
        assert!(waso.contains("Disagrees: differs by 1"), "{waso}");
        assert!(statistic_row(&html, "sleep_efficiency").contains("differs by 7 percentage points"));
        assert!(!statistic_row(&html, "time_in_sleep").contains("disagree"));
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
        assert!(statistic_row(&html, "time_in_sleep").contains(r#"<td class="asleep-value">—</td>"#));
        assert!(
            html.contains("&#60;b&#62;NEW&#60;/b&#62;"),
            "unknown codes are shown escaped"
        );
        assert!(!html.contains("<b>NEW</b>"));
    }

    #[test]
    fn charts_have_text_alternatives() {
        let html = render(fixture_report("session-enveloped.json", "G-20261101-demo-user-0001"));
        for chart in ["hypnogram", "stage-share"] {
            assert!(
                html.contains(&format!(r#"role="img" aria-labelledby="{chart}-title {chart}-desc""#)),
                "{chart}"
            );
            assert!(html.contains(&format!(r#"<title id="{chart}-title">"#)), "{chart}");
            assert!(html.contains(&format!(r#"<desc id="{chart}-desc">"#)), "{chart}");
        }
        assert!(html.contains(r#"<table id="stage-periods""#));
        assert!(html.contains(r#"<table id="stages""#));
        assert!(!html.contains("style="), "no inline styles under the CSP");
        assert!(!html.contains("<script"), "no inline scripts under the CSP");
    }

    #[test]
    fn two_stage_report_says_sleep() {
        let report = fixture_report("session-enveloped.json", "G-20261101-demo-user-0001");
        let document = document(&report, StageModel::TwoStage);
        let statistics = document.statistics.as_ref().unwrap();
        assert_eq!(statistics.time_in_light, None);
        let html = ReportPage::new(&document).render().unwrap();
        for word in ["Light", "Deep", "REM"] {
            assert!(!html.contains(word), "a two-stage page never says {word}");
        }
        assert!(html.contains(r#"<tr data-stage="sleep">"#));
        assert!(html.contains(r#"data-staging="two_stage""#));
        assert!(!html.contains(r#"id="cycles-section""#));
    }

    #[test]
    fn document_localizes_statistics() {
        let mut report = fixture_report("session-enveloped.json", "G-20261101-demo-user-0001");
        // The same night stored with a UTC start still reads in Seoul time.
        report.start_time = report.start_time.with_timezone(&Utc).fixed_offset();
        let document = document(&report, StageModel::Automatic);
        let statistics = document.statistics.unwrap();
        assert_eq!(statistics.sleep_time.to_rfc3339(), "2026-11-21T00:05:07+09:00");
        assert_eq!(statistics.sleep_cycle_time[4].to_rfc3339(), "2026-11-21T06:11:37+09:00");
        assert_eq!(document.staging, Staging::FourStage);
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
        let document = SessionDocument::from_events("u", "s", &events, StageModel::Automatic);
        assert!(!document.complete);
        assert!(document.start_time_estimated);
        assert_eq!(document.start_time.unwrap().to_rfc3339(), "2026-11-20T14:47:07+00:00");
        assert_eq!(document.sleep_stages.len(), 40);
        let statistics = document.statistics.as_ref().unwrap();
        assert_eq!(statistics.start_time, document.start_time.unwrap());
        assert_eq!(statistics.time_in_bed, 40 * 30);
        assert_eq!(statistics.unknown_epochs, 5);
        assert_eq!(document.staging, Staging::TwoStage, "no deep or REM yet");

        let html = ReportPage::new(&document).render().unwrap();
        assert!(html.contains(r#"id="in-progress""#));
        assert!(html.contains(r#"href="/users/u/live""#));
        assert!(!html.contains("epochs-csv-link"), "no download before the final report");
        assert!(html.contains(r#"class="gap" data-start="20" data-epochs="5""#));
        assert!(html.contains("14:47 UTC (estimated)"));
        assert!(html.contains(r#"id="unreliable""#), "5 of 40 epochs without data");
        assert!(html.contains("still in progress: Asleep sends its statistics"));
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
        assert!(html.contains(r#"href="/users/%3Cscript%3Ealert%281%29%3C%2Fscript%3E""#));
    }
}
