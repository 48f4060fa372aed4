//! A user's completed nights over time: the trend charts of the history
//! page and the averages over a chosen period.
//!
//! A night is a session with a final report. Its date is the calendar date
//! of its start in the session's own time zone, so a night that begins at
//! 23:30 in Seoul belongs to that day even though it began in the UTC
//! morning. Every figure comes from [`SleepStatistics::from_report`], never
//! from the `stat` object Asleep sent, so nights with `stat: null` count
//! like any other.

mod averages;
mod chart;

use chrono::{DateTime, FixedOffset, NaiveDate};
use chrono_tz::Tz;

use crate::payload::FinalReport;
use crate::report::parse_zone;
use crate::statistics::{SleepStatistics, StageModel, StatisticsError};

pub use averages::{
    AverageRow, ClockTime, MAX_PERIOD_DAYS, Period, PeriodAverages, PeriodError, SkippedNight, mean_clock_time,
};
pub use chart::{AxisLabel, Bar, ChartRow, GridLine, Metric, ROLLING_NIGHTS, TrendChart};

/// The peculiarity Asleep reports for a night without sleep.
pub const NEVER_SLEPT: &str = "NEVER_SLEPT";

/// One completed night with its statistics.
#[derive(Debug, Clone)]
pub struct Night {
    pub session_id: String,
    /// The session's zone; UTC when the stored name is unknown to this build.
    pub zone: Tz,
    /// Date of the start in the session's zone.
    pub date: NaiveDate,
    pub start_time: DateTime<FixedOffset>,
    pub end_time: Option<DateTime<FixedOffset>>,
    pub peculiarities: Vec<String>,
    /// The statistics, or why a report without epochs has none.
    pub statistics: Result<SleepStatistics, StatisticsError>,
}

/// The reason a night is left out of the period averages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Asleep marked the night `NEVER_SLEPT`.
    NeverSlept,
    /// The hypnogram contains no sleep epoch.
    NoSleepEpoch,
    /// The report contains no epochs, or its end precedes its start.
    NoStatistics,
}

impl SkipReason {
    /// Returns the reason in words, for the history page.
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::NeverSlept => "Asleep reported that the sleeper never slept",
            SkipReason::NoSleepEpoch => "the hypnogram contains no sleep epoch",
            SkipReason::NoStatistics => "the report contains no epochs to compute statistics from",
        }
    }
}

impl Night {
    /// Builds a night from its final report, reading the stages as `model`
    /// decides.
    pub fn from_report(report: &FinalReport, model: StageModel) -> Self {
        let zone = parse_zone(&report.timezone);
        Self {
            session_id: report.session_id.clone(),
            zone,
            date: report.start_time.with_timezone(&zone).date_naive(),
            start_time: report.start_time,
            end_time: report.end_time,
            peculiarities: report.peculiarities.clone(),
            statistics: SleepStatistics::from_report(report, model),
        }
    }

    /// Returns why the night cannot count in averages, or `None` when it can.
    pub fn skip_reason(&self) -> Option<SkipReason> {
        if self.peculiarities.iter().any(|peculiarity| peculiarity == NEVER_SLEPT) {
            return Some(SkipReason::NeverSlept);
        }
        match &self.statistics {
            Err(_) => Some(SkipReason::NoStatistics),
            Ok(statistics) if !statistics.slept() => Some(SkipReason::NoSleepEpoch),
            Ok(_) => None,
        }
    }

    /// Returns the statistics of a night that slept; `None` for one that
    /// [`Self::skip_reason`] leaves out.
    pub fn slept_statistics(&self) -> Option<&SleepStatistics> {
        match self.skip_reason() {
            None => self.statistics.as_ref().ok(),
            Some(_) => None,
        }
    }
}

/// Builds the nights of a user's final reports, oldest first.
pub fn nights<'a>(reports: impl IntoIterator<Item = &'a FinalReport>, model: StageModel) -> Vec<Night> {
    let mut nights: Vec<Night> = reports
        .into_iter()
        .map(|report| Night::from_report(report, model))
        .collect();
    nights.sort_by_key(|night| night.start_time);
    nights
}

/// Returns the date of the most recent night, which ends the default chart
/// windows and the default period.
pub fn latest_date(nights: &[Night]) -> Option<NaiveDate> {
    nights.iter().map(|night| night.date).max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::fixtures::final_report;

    #[test]
    fn night_date_is_local_start_date() {
        // Starts at 14:47 UTC, which is 23:47 in Seoul on the same day.
        let report = final_report("session-enveloped.json", "G-20261101-demo-user-0001");
        let night = Night::from_report(&report, StageModel::Automatic);
        assert_eq!(night.date, NaiveDate::from_ymd_opt(2026, 11, 20).unwrap());
        assert_eq!(night.zone, chrono_tz::Asia::Seoul);
        assert_eq!(night.skip_reason(), None);
    }

    #[test]
    fn night_without_sleep_is_skipped() {
        let mut report = final_report("session-enveloped.json", "G-20261101-demo-user-0001");
        report.sleep_stages = vec![0; 40];
        report.snoring_stages = vec![0; 40];
        let night = Night::from_report(&report, StageModel::Automatic);
        assert_eq!(night.skip_reason(), Some(SkipReason::NoSleepEpoch));
        assert!(night.slept_statistics().is_none());

        report.sleep_stages = vec![1; 40];
        report.peculiarities = vec![NEVER_SLEPT.to_string()];
        let night = Night::from_report(&report, StageModel::Automatic);
        assert_eq!(night.skip_reason(), Some(SkipReason::NeverSlept));
    }
}
