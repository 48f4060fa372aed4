//! Report figures in plain units, and the paths of a user's pages.
//!
//! A report shows Asleep's own statistics where the final report carries
//! them and figures computed here from the hypnogram where it does not.
//! Every figure is marked with its source.

mod format;
mod statistics;
mod summary;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

use crate::payload::{EPOCH_SECONDS, FinalReport};

pub use format::{
    format_clock, format_date, format_date_time, format_duration, format_percent, format_ratio, parse_zone,
};
pub use statistics::{HypnogramFigures, Stage};
pub use summary::{CycleRow, Figure, Peculiarity, ReportSummary, Source, StageRow, explain_peculiarity};

use statistics::is_sleep;

/// Characters left as they are in a path segment; everything else, `/`
/// included, is percent-encoded so any valid id makes one segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Encodes an id as one URL path segment.
pub fn path_segment(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// Encodes a value for a URL query string. The set is the path segment's,
/// which also escapes `&`, `=`, `+` and `#`.
pub fn query_value(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

/// Returns the path of a user's live page.
pub fn live_path(user_id: &str) -> String {
    format!("/users/{}/live", path_segment(user_id))
}

/// Returns the path of a session's report page.
pub fn report_path(user_id: &str, session_id: &str) -> String {
    format!("/users/{}/sessions/{}", path_segment(user_id), path_segment(session_id))
}

/// Returns the path of a user's history page.
pub fn history_path(user_id: &str) -> String {
    format!("/users/{}", path_segment(user_id))
}

/// Returns the path of a session's JSON document.
pub fn api_session_path(user_id: &str, session_id: &str) -> String {
    format!("/api{}", report_path(user_id, session_id))
}

/// The numbers a viewer sees first when a night completes, computed from the
/// final hypnogram so they exist even when Asleep sent `stat: null`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Headline {
    /// Seconds spent in light, deep or REM sleep.
    pub total_sleep_seconds: i64,
    /// Total sleep as a percentage of the time in bed.
    pub sleep_efficiency_percent: Option<f64>,
    /// Seconds from the start of the session to the first sleep epoch.
    pub sleep_latency_seconds: Option<i64>,
    /// Seconds from the session's start to its end.
    pub time_in_bed_seconds: Option<i64>,
}

impl Headline {
    pub fn from_report(report: &FinalReport) -> Self {
        let time_in_bed_seconds = report.end_time.map(|end| (end - report.start_time).num_seconds());
        Self::from_stages(&report.sleep_stages, time_in_bed_seconds)
    }

    /// Computes the headline of a hypnogram. Without `time_in_bed_seconds`
    /// the time in bed is the length of the hypnogram.
    pub fn from_stages(sleep_stages: &[i8], time_in_bed_seconds: Option<i64>) -> Self {
        let sleep_epochs = sleep_stages.iter().filter(|stage| is_sleep(**stage)).count() as i64;
        let total_sleep_seconds = sleep_epochs * EPOCH_SECONDS;
        let time_in_bed_seconds = time_in_bed_seconds
            .or(Some(sleep_stages.len() as i64 * EPOCH_SECONDS))
            .filter(|seconds| *seconds > 0);
        let sleep_efficiency_percent =
            time_in_bed_seconds.map(|bed| (total_sleep_seconds as f64 / bed as f64 * 10_000.0).round() / 100.0);
        let sleep_latency_seconds = sleep_stages
            .iter()
            .position(|stage| is_sleep(*stage))
            .map(|epoch| epoch as i64 * EPOCH_SECONDS);
        Self {
            total_sleep_seconds,
            sleep_efficiency_percent,
            sleep_latency_seconds,
            time_in_bed_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(report_path("a/b", "s 1"), "/users/a%2Fb/sessions/s%201");
        assert_eq!(live_path("G-2026_x.y~z"), "/users/G-2026_x.y~z/live");
        assert_eq!(api_session_path("u", "s"), "/api/users/u/sessions/s");
        assert_eq!(query_value("a&b=c+d#e"), "a%26b%3Dc%2Bd%23e");
    }

    #[test]
    fn headline_without_end_uses_hypnogram_length() {
        let headline = Headline::from_stages(&[0, 0, 1, 2, 3, 0, -1, 1], None);
        assert_eq!(headline.total_sleep_seconds, 4 * 30);
        assert_eq!(headline.time_in_bed_seconds, Some(8 * 30));
        assert_eq!(headline.sleep_efficiency_percent, Some(50.0));
        assert_eq!(headline.sleep_latency_seconds, Some(60));
    }

    #[test]
    fn headline_of_night_without_sleep() {
        let headline = Headline::from_stages(&[0, 0, -1], None);
        assert_eq!(headline.sleep_latency_seconds, None);
        assert_eq!(headline.sleep_efficiency_percent, Some(0.0));
        assert_eq!(Headline::from_stages(&[], None).time_in_bed_seconds, None);
    }
}
