//! Report figures in plain units, and the paths of a user's pages.
//!
//! A report shows the statistics this server computes from the hypnogram
//! ([`crate::statistics`]) and beside them Asleep's own where the final
//! report carries them, pointing out where the two disagree.

mod asleep_stat;
mod comparison;
mod format;
mod peculiarities;
mod share_bar;
mod summary;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

use crate::payload::FinalReport;

pub use asleep_stat::AsleepStat;
pub use comparison::{Kind, StatisticRow, format_duration_exact};
pub use format::{
    NightClock, format_clock, format_date, format_date_time, format_duration, format_percent, format_ratio, parse_zone,
};
pub use peculiarities::{Peculiarity, explain_peculiarity};
pub use summary::{CycleRow, Figure, PeriodRow, ReportSummary, Source, StageRow, TimeLabel, UnknownShare, WasoRow};

use crate::statistics::{SleepStatistics, StageModel, Staging};

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
    /// Computes the headline of a final report. The figures are the same
    /// under every stage model, because none of them separates sleep stages.
    pub fn from_report(report: &FinalReport) -> Self {
        match SleepStatistics::from_report(report, StageModel::FourStage) {
            Ok(statistics) => Self::from_statistics(&statistics),
            // A report whose end equals its start has no time in bed of its
            // own, so the hypnogram's length replaces it, as for a live night.
            Err(_) => Self::from_stages(&report.sleep_stages, None),
        }
    }

    /// Computes the headline of a hypnogram. Without `time_in_bed_seconds`
    /// the time in bed is the length of the hypnogram.
    pub fn from_stages(sleep_stages: &[i8], time_in_bed_seconds: Option<i64>) -> Self {
        let start = chrono::DateTime::UNIX_EPOCH.fixed_offset();
        let end = time_in_bed_seconds
            .filter(|seconds| *seconds > 0)
            .map(|seconds| start + chrono::Duration::seconds(seconds));
        match SleepStatistics::compute(sleep_stages, &[], start, end, Staging::FourStage) {
            Ok(statistics) => Self::from_statistics(&statistics),
            Err(_) => Self {
                total_sleep_seconds: 0,
                sleep_efficiency_percent: None,
                sleep_latency_seconds: None,
                time_in_bed_seconds: None,
            },
        }
    }

    /// Takes the headline from a night's statistics. Sleep efficiency is
    /// Asleep's fraction with two decimals, as a percentage.
    pub fn from_statistics(statistics: &SleepStatistics) -> Self {
        Self {
            total_sleep_seconds: statistics.time_in_sleep,
            sleep_efficiency_percent: (statistics.time_in_bed > 0)
                .then(|| (statistics.sleep_efficiency * 100.0 * 1e6).round() / 1e6),
            sleep_latency_seconds: statistics.slept().then_some(statistics.sleep_latency),
            time_in_bed_seconds: (statistics.time_in_bed > 0).then_some(statistics.time_in_bed),
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
    fn headline_of_report_uses_its_times() {
        let report = crate::payload::fixtures::final_report("session-flat.json", "user123");
        let headline = Headline::from_report(&report);
        assert_eq!(headline.total_sleep_seconds, 15_000);
        assert_eq!(headline.time_in_bed_seconds, Some(16_620));
        // 15000 / 16620 is 0.9025; Asleep's calculator keeps two decimals.
        assert_eq!(headline.sleep_efficiency_percent, Some(90.0));
        assert_eq!(headline.sleep_latency_seconds, Some(900));
    }

    #[test]
    fn headline_of_night_without_sleep() {
        let headline = Headline::from_stages(&[0, 0, -1], None);
        assert_eq!(headline.sleep_latency_seconds, None);
        assert_eq!(headline.sleep_efficiency_percent, Some(0.0));
        assert_eq!(Headline::from_stages(&[], None).time_in_bed_seconds, None);
    }
}
