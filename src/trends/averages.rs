//! Averages of a user's nights over a period of dates.
//!
//! Nights that never slept are left out, because a night marked
//! `NEVER_SLEPT` or whose hypnogram contains no sleep epoch would pull every
//! duration and ratio towards zero. The page lists them with the reason.
//! NOTE: whether Asleep's average-statistics endpoint skips exactly these
//! nights was not checked against its documentation. Per-stage figures (light, deep, REM, sleep cycles) are
//! averaged over the four-stage nights only, because two-stage nights
//! cannot give them.
//!
//! # Clock times
//!
//! Fall-asleep and wake-up times are clock times in each night's own zone,
//! and their mean must not break at midnight: 23:30 and 00:30 average to
//! 00:00, not 12:00. The mean is taken on the 24-hour circle. First the
//! circular mean (the direction of the sum of the times as unit vectors)
//! fixes a centre, then each time is read as its signed distance from that
//! centre, within ±12 hours, and those distances are averaged. For times
//! that span less than 12 hours this is the ordinary mean of the times
//! unwrapped around midnight. Times spread evenly around the clock have no
//! centre and no mean.

use std::fmt;

use chrono::{Duration, NaiveDate, Timelike};

use super::{Night, SkipReason};
use crate::report::{format_duration, format_ratio};
use crate::statistics::SleepStatistics;

/// Days in the period shown when the query names neither end.
pub const DEFAULT_PERIOD_DAYS: i64 = 30;

/// Maximum length of a period in days: a leap year.
pub const MAX_PERIOD_DAYS: i64 = 366;

const SECONDS_PER_DAY: f64 = 86_400.0;

/// A range of night dates, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// An invalid `from` or `to` query value: the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PeriodError {
    pub field: &'static str,
    pub problem: String,
}

impl Period {
    /// Reads the period from the `from` and `to` query values. An absent or
    /// empty value is not given. Without `to` the period ends at `latest`,
    /// or 29 days after `from` when only `from` is given; without `from` it
    /// starts 29 days before `to`.
    pub fn from_query(from: Option<&str>, to: Option<&str>, latest: NaiveDate) -> Result<Self, PeriodError> {
        let from = parse_date("from", from)?;
        let to = parse_date("to", to)?;
        let span = Duration::days(DEFAULT_PERIOD_DAYS - 1);
        let (from, to) = match (from, to) {
            (Some(from), Some(to)) => (from, to),
            (Some(from), None) => (from, from.checked_add_signed(span).unwrap_or(NaiveDate::MAX)),
            (None, Some(to)) => (to.checked_sub_signed(span).unwrap_or(NaiveDate::MIN), to),
            (None, None) => (latest - span, latest),
        };
        if from > to {
            return Err(PeriodError {
                field: "from",
                problem: format!("{from} is after the end of the period, {to}"),
            });
        }
        let period = Self { from, to };
        if period.days() > MAX_PERIOD_DAYS {
            return Err(PeriodError {
                field: "to",
                problem: format!(
                    "the period from {from} to {to} covers {} days; the maximum is {MAX_PERIOD_DAYS}",
                    period.days()
                ),
            });
        }
        Ok(period)
    }

    /// Returns whether a night's date lies in the period.
    pub fn contains(&self, date: NaiveDate) -> bool {
        (self.from..=self.to).contains(&date)
    }

    /// Returns the number of days, both ends included.
    pub fn days(&self) -> i64 {
        (self.to - self.from).num_days() + 1
    }
}

/// Parses a strict `YYYY-MM-DD` date. chrono alone would also accept a
/// sign, more year digits and one-digit months.
fn parse_date(field: &'static str, text: Option<&str>) -> Result<Option<NaiveDate>, PeriodError> {
    let Some(text) = text.filter(|text| !text.is_empty()) else {
        return Ok(None);
    };
    let invalid = || PeriodError {
        field,
        problem: format!("{text:?} is not a date in the form YYYY-MM-DD, such as 2026-11-01"),
    };
    let shape_ok = text.len() == 10
        && text.bytes().enumerate().all(|(index, byte)| match index {
            4 | 7 => byte == b'-',
            _ => byte.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(invalid());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| PeriodError {
            field,
            problem: format!("{text} is not a day of the calendar"),
        })
}

/// A clock time, to the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockTime {
    /// Minutes since midnight, 0..1440.
    pub minutes: u32,
}

impl fmt::Display for ClockTime {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:02}:{:02}", self.minutes / 60, self.minutes % 60)
    }
}

/// Returns the mean of clock times given in seconds since midnight, as the
/// module documentation describes; `None` without a centre.
pub fn mean_clock_time(seconds: &[f64]) -> Option<ClockTime> {
    if seconds.is_empty() {
        return None;
    }
    let angle = |second: f64| second / SECONDS_PER_DAY * std::f64::consts::TAU;
    let (sine, cosine) = seconds.iter().fold((0.0, 0.0), |(sine, cosine), second| {
        (sine + angle(*second).sin(), cosine + angle(*second).cos())
    });
    if sine.hypot(cosine) / (seconds.len() as f64) < 1e-9 {
        return None;
    }
    let centre = sine.atan2(cosine) / std::f64::consts::TAU * SECONDS_PER_DAY;
    let half_day = SECONDS_PER_DAY / 2.0;
    let offset = seconds
        .iter()
        .map(|second| (second - centre + half_day).rem_euclid(SECONDS_PER_DAY) - half_day)
        .sum::<f64>()
        / seconds.len() as f64;
    let minutes = ((centre + offset) / 60.0).round().rem_euclid(1440.0);
    Some(ClockTime {
        minutes: minutes as u32,
    })
}

/// A night in the period that the averages leave out.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedNight {
    pub session_id: String,
    pub date: NaiveDate,
    pub reason: SkipReason,
}

/// One figure of the averages, ready for the page.
#[derive(Debug, Clone, PartialEq)]
pub struct AverageRow {
    /// The statistic's name as Asleep names it, such as `time_in_sleep`.
    pub key: &'static str,
    pub label: &'static str,
    /// The mean for readers; `None` when no included night gives the figure.
    pub value: Option<String>,
    /// Nights the mean is taken over.
    pub nights: usize,
}

/// The averages of a user's nights over a period.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodAverages {
    pub period: Period,
    /// Nights in the period that count in the averages.
    pub included: usize,
    /// Of those, the four-stage nights, which alone give per-stage figures.
    pub four_stage: usize,
    pub skipped: Vec<SkippedNight>,
    pub rows: Vec<AverageRow>,
}

impl PeriodAverages {
    /// Averages the nights, oldest first, whose date lies in `period`.
    pub fn compute(nights: &[Night], period: Period) -> Self {
        let in_period: Vec<&Night> = nights.iter().filter(|night| period.contains(night.date)).collect();
        let skipped = in_period
            .iter()
            .filter_map(|night| {
                night.skip_reason().map(|reason| SkippedNight {
                    session_id: night.session_id.clone(),
                    date: night.date,
                    reason,
                })
            })
            .collect();
        let slept: Vec<(&Night, &SleepStatistics)> = in_period
            .iter()
            .filter_map(|night| night.slept_statistics().map(|statistics| (*night, statistics)))
            .collect();
        let all: Vec<&SleepStatistics> = slept.iter().map(|(_, statistics)| *statistics).collect();
        let four_stage: Vec<&SleepStatistics> = all
            .iter()
            .copied()
            .filter(|statistics| statistics.time_in_deep.is_some())
            .collect();

        let seconds = |key, label, of: fn(&SleepStatistics) -> Option<i64>, over: &[&SleepStatistics]| {
            mean_row(
                key,
                label,
                over,
                |statistics| of(statistics).map(|value| value as f64),
                |mean| format_duration(mean.round() as i64),
            )
        };
        let ratio = |key, label, of: fn(&SleepStatistics) -> Option<f64>, over: &[&SleepStatistics]| {
            mean_row(key, label, over, of, format_ratio)
        };
        let count = |key, label, of: fn(&SleepStatistics) -> Option<u32>, over: &[&SleepStatistics]| {
            mean_row(
                key,
                label,
                over,
                |statistics| of(statistics).map(f64::from),
                |mean| format!("{mean:.1}"),
            )
        };
        let clock = |key, label, times: Vec<f64>| AverageRow {
            key,
            label,
            nights: times.len(),
            value: mean_clock_time(&times).map(|time| time.to_string()),
        };

        let rows = vec![
            seconds("time_in_bed", "Time in bed", |s| Some(s.time_in_bed), &all),
            seconds("time_in_sleep", "Total sleep", |s| Some(s.time_in_sleep), &all),
            seconds("sleep_latency", "Sleep latency", |s| Some(s.sleep_latency), &all),
            seconds("wakeup_latency", "Wake-up latency", |s| Some(s.wakeup_latency), &all),
            ratio(
                "sleep_efficiency",
                "Sleep efficiency",
                |s| Some(s.sleep_efficiency),
                &all,
            ),
            count("waso_count", "WASO count", |s| Some(s.waso_count), &all),
            seconds("longest_waso", "Longest WASO", |s| Some(s.longest_waso), &all),
            seconds("time_in_wake", "Wake after sleep onset", |s| Some(s.time_in_wake), &all),
            ratio("wake_ratio", "Wake share", |s| Some(s.wake_ratio), &all),
            ratio("sleep_ratio", "Sleep share", |s| Some(s.sleep_ratio), &all),
            seconds("time_in_light", "Light sleep", |s| s.time_in_light, &four_stage),
            ratio("light_ratio", "Light share", |s| s.light_ratio, &four_stage),
            seconds("time_in_deep", "Deep sleep", |s| s.time_in_deep, &four_stage),
            ratio("deep_ratio", "Deep share", |s| s.deep_ratio, &four_stage),
            seconds("time_in_rem", "REM sleep", |s| s.time_in_rem, &four_stage),
            ratio("rem_ratio", "REM share", |s| s.rem_ratio, &four_stage),
            count(
                "sleep_cycle_count",
                "Sleep cycles",
                |s| s.sleep_cycle_count,
                &four_stage,
            ),
            clock(
                "sleep_time",
                "Fall-asleep time",
                slept
                    .iter()
                    .map(|(night, statistics)| local_seconds(night, statistics.sleep_time))
                    .collect(),
            ),
            clock(
                "wake_time",
                "Wake-up time",
                slept
                    .iter()
                    .map(|(night, statistics)| local_seconds(night, statistics.wake_time))
                    .collect(),
            ),
        ];

        Self {
            period,
            included: all.len(),
            four_stage: four_stage.len(),
            skipped,
            rows,
        }
    }

    /// Returns the row of `key`, for tests and the page.
    pub fn row(&self, key: &str) -> Option<&AverageRow> {
        self.rows.iter().find(|row| row.key == key)
    }
}

fn mean_row(
    key: &'static str,
    label: &'static str,
    over: &[&SleepStatistics],
    of: impl Fn(&SleepStatistics) -> Option<f64>,
    format: impl Fn(f64) -> String,
) -> AverageRow {
    let values: Vec<f64> = over.iter().filter_map(|statistics| of(statistics)).collect();
    let value = (!values.is_empty()).then(|| format(values.iter().sum::<f64>() / values.len() as f64));
    AverageRow {
        key,
        label,
        value,
        nights: values.len(),
    }
}

/// Returns seconds since midnight of `time` in the night's zone.
fn local_seconds(night: &Night, time: chrono::DateTime<chrono::FixedOffset>) -> f64 {
    f64::from(time.with_timezone(&night.zone).time().num_seconds_from_midnight())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn clock(text: &str) -> f64 {
        let (hours, minutes) = text.split_once(':').unwrap();
        f64::from(hours.parse::<u32>().unwrap() * 3600 + minutes.parse::<u32>().unwrap() * 60)
    }

    fn mean(times: &[&str]) -> Option<String> {
        let seconds: Vec<f64> = times.iter().map(|time| clock(time)).collect();
        mean_clock_time(&seconds).map(|time| time.to_string())
    }

    #[test]
    fn clock_mean_wraps_at_midnight() {
        assert_eq!(mean(&["23:30", "00:30"]).as_deref(), Some("00:00"));
        assert_eq!(mean(&["22:00", "23:00", "03:00"]).as_deref(), Some("00:00"));
        assert_eq!(mean(&["06:30", "07:30"]).as_deref(), Some("07:00"));
        assert_eq!(mean(&["11:00", "13:00"]).as_deref(), Some("12:00"));
        assert_eq!(mean(&["23:50"]).as_deref(), Some("23:50"));
        assert_eq!(mean(&["00:00", "12:00"]), None);
        assert_eq!(mean(&[]), None);
    }

    #[test]
    fn period_defaults_to_thirty_days() {
        let latest = date("2026-11-30");
        let period = Period::from_query(None, None, latest).unwrap();
        assert_eq!((period.from, period.to), (date("2026-11-01"), latest));
        let period = Period::from_query(Some(""), Some("2026-02-10"), latest).unwrap();
        assert_eq!((period.from, period.to), (date("2026-01-12"), date("2026-02-10")));
        let period = Period::from_query(Some("2026-01-01"), None, latest).unwrap();
        assert_eq!((period.from, period.to), (date("2026-01-01"), date("2026-01-30")));
        assert_eq!(period.days(), 30);
    }

    #[test]
    fn period_rejects_bad_dates() {
        let latest = date("2026-11-30");
        let field = |from, to| Period::from_query(from, to, latest).unwrap_err().field;
        assert_eq!(field(Some("2026-13-01"), None), "from");
        assert_eq!(field(Some("2026-02-30"), None), "from");
        assert_eq!(field(None, Some("26-01-01")), "to");
        assert_eq!(field(None, Some("+2026-01-01")), "to");
        assert_eq!(field(None, Some("2026-1-01x")), "to");
        assert_eq!(field(Some("2026-11-02"), Some("2026-11-01")), "from");
        assert_eq!(field(Some("2025-01-01"), Some("2026-01-02")), "to");
        // A leap year is the longest period.
        assert!(Period::from_query(Some("2024-01-01"), Some("2024-12-31"), latest).is_ok());
        let error = Period::from_query(Some("2026-02-30"), None, latest).unwrap_err();
        assert_eq!(error.to_string(), "from: 2026-02-30 is not a day of the calendar");
    }
}
