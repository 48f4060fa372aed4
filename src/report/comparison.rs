//! The report's statistics table: each statistic as this server computed
//! it, beside Asleep's own value where the delivery carried it, in one set
//! of units, with every disagreement beyond rounding pointed out.

use chrono::{DateTime, FixedOffset};
use serde::Serialize;

use super::format::{NightClock, format_percent};
use crate::payload::{SleepTime, Stat};
use crate::statistics::{SleepStatistics, Staging};

/// Seconds of slack for float noise in comparisons of stored numbers.
const EPSILON: f64 = 1e-9;

/// How a statistic is measured, which decides how it is shown and how far
/// two values may lie apart and still agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Seconds. Values agree within a second, which also covers Asleep's
    /// whole seconds for a mean this server keeps to the microsecond.
    Duration,
    /// A share 0..1. Values agree within 0.01, one step of Asleep's
    /// two-decimal rounding.
    Ratio,
    /// Sleep efficiency in percent. Values agree within one percentage point.
    Efficiency,
    /// A number of events. Any difference is a disagreement.
    Count,
    /// A clock time. Values agree within a minute.
    Clock,
}

impl Kind {
    /// Returns the tolerance in words, for the page's explanation.
    pub fn tolerance(self) -> &'static str {
        match self {
            Kind::Duration => "durations by more than a second",
            Kind::Ratio => "shares by more than 1 percentage point (0.01)",
            Kind::Efficiency => "sleep efficiency by more than 1 percentage point",
            Kind::Count => "counts by any number",
            Kind::Clock => "clock times by more than a minute",
        }
    }

    /// Every kind, in the order the page explains them.
    pub const ALL: [Kind; 5] = [Kind::Duration, Kind::Ratio, Kind::Efficiency, Kind::Count, Kind::Clock];
}

/// One value of a statistic, in the table's units.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    /// Seconds, possibly fractional as a mean cycle length is.
    Seconds(f64),
    /// A share 0..1.
    Ratio(f64),
    /// Percent.
    Percent(f64),
    Count(f64),
    Clock(DateTime<FixedOffset>),
    /// Several clock times, such as the sleep-cycle boundaries.
    Clocks(Vec<DateTime<FixedOffset>>),
    /// A value shown as it is, never compared.
    Text(String),
}

impl Value {
    fn format(&self, clock: &NightClock) -> String {
        match self {
            Value::Seconds(seconds) => format_duration_exact(*seconds),
            Value::Ratio(ratio) => format_percent(ratio * 100.0),
            Value::Percent(percent) => format_percent(*percent),
            Value::Count(count) => format!("{}", count.round() as i64),
            Value::Clock(time) => clock.format(time),
            Value::Clocks(times) if times.is_empty() => "none".to_string(),
            Value::Clocks(times) => times
                .iter()
                .map(|time| clock.format(time))
                .collect::<Vec<_>>()
                .join(", "),
            Value::Text(text) => text.clone(),
        }
    }

    /// Returns the disagreement between this server's value and Asleep's in
    /// words, or `None` when they agree within the kind's tolerance.
    fn disagreement(&self, asleep: &Value) -> Option<String> {
        match (self, asleep) {
            (Value::Seconds(computed), Value::Seconds(asleep)) => {
                let difference = (computed - asleep).abs();
                (difference > 1.0 + EPSILON).then(|| format!("differs by {}", format_duration_exact(difference)))
            }
            (Value::Ratio(computed), Value::Ratio(asleep)) => {
                let difference = (computed - asleep).abs();
                (difference > 0.01 + EPSILON).then(|| format!("differs by {}", points(difference * 100.0)))
            }
            (Value::Percent(computed), Value::Percent(asleep)) => {
                let difference = (computed - asleep).abs();
                (difference > 1.0 + EPSILON).then(|| format!("differs by {}", points(difference)))
            }
            (Value::Count(computed), Value::Count(asleep)) => {
                let difference = (computed - asleep).abs();
                (difference > EPSILON).then(|| format!("differs by {}", difference.round() as i64))
            }
            (Value::Clock(computed), Value::Clock(asleep)) => clock_disagreement(computed, asleep),
            (Value::Clocks(computed), Value::Clocks(asleep)) => {
                if computed.len() != asleep.len() {
                    return Some(format!(
                        "Asleep lists {} times, this server {}",
                        asleep.len(),
                        computed.len()
                    ));
                }
                computed
                    .iter()
                    .zip(asleep)
                    .position(|(computed, asleep)| clock_disagreement(computed, asleep).is_some())
                    .map(|index| format!("time {} differs by more than a minute", index + 1))
            }
            _ => None,
        }
    }
}

fn clock_disagreement(computed: &DateTime<FixedOffset>, asleep: &DateTime<FixedOffset>) -> Option<String> {
    let seconds = (*computed - *asleep).num_seconds().abs();
    (seconds > 60).then(|| format!("differs by {}", format_duration_exact(seconds as f64)))
}

fn points(points: f64) -> String {
    let rounded = (points * 10.0).round() / 10.0;
    if rounded == 1.0 {
        "1 percentage point".to_string()
    } else if rounded.fract() == 0.0 {
        format!("{rounded:.0} percentage points")
    } else {
        format!("{rounded:.1} percentage points")
    }
}

/// Formats seconds to the second, such as `1 h 31 min 37 s`, and a
/// fractional second to a tenth, such as `37.5 s`, so two values the table
/// compares never read alike while they differ by more than a second.
pub fn format_duration_exact(seconds: f64) -> String {
    let tenths = (seconds.abs() * 10.0).round() as i64;
    let (whole, tenth) = (tenths / 10, tenths % 10);
    let (hours, minutes, seconds) = (whole / 3600, whole / 60 % 60, whole % 60);
    let mut parts = Vec::new();
    if hours > 0 {
        parts.push(format!("{hours} h"));
    }
    if minutes > 0 {
        parts.push(format!("{minutes} min"));
    }
    if tenth > 0 {
        parts.push(format!("{seconds}.{tenth} s"));
    } else if seconds > 0 || parts.is_empty() {
        parts.push(format!("{seconds} s"));
    }
    parts.join(" ")
}

/// One row of the statistics table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatisticRow {
    /// Asleep's name of the statistic, such as `waso_count`.
    pub name: &'static str,
    pub label: String,
    pub kind: Kind,
    /// This server's value; `None` when it cannot compute the statistic.
    pub computed: Option<String>,
    /// Asleep's value, normalized to the table's units; `None` when the
    /// delivery did not carry it.
    pub asleep: Option<String>,
    /// The difference between the two values in words when it exceeds the
    /// kind's tolerance; `None` when they agree or one is missing.
    pub disagreement: Option<String>,
    /// The reason a value is shown but not compared.
    pub note: Option<&'static str>,
}

/// Builds the statistics table of one night. Two-stage nights leave out the
/// rows of light, deep and REM and of sleep cycles, because their data
/// cannot give them. A row without a value on either side is left out.
pub fn statistic_rows(
    statistics: Option<&SleepStatistics>,
    stat: Option<&Stat>,
    staging: Staging,
    clock: &NightClock,
) -> Vec<StatisticRow> {
    let mut table = Table {
        rows: Vec::new(),
        clock,
    };
    let computed = |field: fn(&SleepStatistics) -> Option<Value>| statistics.and_then(field);
    let asleep = |field: fn(&Stat) -> Option<f64>| stat.and_then(field);
    let seconds = |value: Option<f64>| value.map(Value::Seconds);
    let ratio = |value: Option<f64>| value.map(Value::Ratio);
    let count = |value: Option<f64>| value.map(Value::Count);
    let four_stage = staging == Staging::FourStage;

    // Asleep's `sleep_time` is a clock time in its documentation and a
    // duration in the integration guides; only the clock time compares.
    let onset = computed(|s| s.slept().then_some(Value::Clock(s.sleep_time)));
    match stat.and_then(|stat| stat.sleep_time.as_ref()) {
        Some(SleepTime::Duration(duration)) => {
            table.push("sleep_time", "Fell asleep at", Kind::Clock, onset, None);
            table.push_note(
                "sleep_time",
                "Sleep time, sent as a duration",
                Kind::Duration,
                Value::Seconds(*duration as f64),
                "Asleep sent a duration HH:MM:SS here rather than a clock time; it is shown but not compared.",
            );
        }
        Some(SleepTime::Clock(time)) => table.push(
            "sleep_time",
            "Fell asleep at",
            Kind::Clock,
            onset,
            Some(Value::Clock(*time)),
        ),
        None => table.push("sleep_time", "Fell asleep at", Kind::Clock, onset, None),
    }
    table.push(
        "wake_time",
        "Final awakening at",
        Kind::Clock,
        computed(|s| s.slept().then_some(Value::Clock(s.wake_time))),
        stat.and_then(|stat| stat.wake_time).map(Value::Clock),
    );
    table.push(
        "sleep_latency",
        "Time to fall asleep",
        Kind::Duration,
        computed(|s| Some(Value::Seconds(s.sleep_latency as f64))),
        seconds(asleep(|s| s.sleep_latency)),
    );
    table.push(
        "wakeup_latency",
        "Time in bed after the final awakening",
        Kind::Duration,
        computed(|s| Some(Value::Seconds(s.wakeup_latency as f64))),
        seconds(asleep(|s| s.wakeup_latency)),
    );
    if four_stage {
        table.push(
            "light_latency",
            "Light sleep after sleep onset",
            Kind::Duration,
            computed(|s| s.light_latency.map(|value| Value::Seconds(value as f64))),
            seconds(asleep(|s| s.light_latency)),
        );
        table.push(
            "deep_latency",
            "Deep sleep after sleep onset",
            Kind::Duration,
            computed(|s| s.deep_latency.map(|value| Value::Seconds(value as f64))),
            seconds(asleep(|s| s.deep_latency)),
        );
        table.push(
            "rem_latency",
            "REM sleep after sleep onset",
            Kind::Duration,
            computed(|s| s.rem_latency.map(|value| Value::Seconds(value as f64))),
            seconds(asleep(|s| s.rem_latency)),
        );
    }
    table.push(
        "time_in_bed",
        "Time in bed",
        Kind::Duration,
        computed(|s| Some(Value::Seconds(s.time_in_bed as f64))),
        seconds(asleep(|s| s.time_in_bed)),
    );
    table.push(
        "time_in_sleep_period",
        "Sleep period, from sleep onset to the final awakening",
        Kind::Duration,
        computed(|s| Some(Value::Seconds(s.time_in_sleep_period as f64))),
        seconds(asleep(|s| s.time_in_sleep_period)),
    );
    table.push(
        "time_in_sleep",
        "Total sleep",
        Kind::Duration,
        computed(|s| Some(Value::Seconds(s.time_in_sleep as f64))),
        seconds(asleep(|s| s.time_in_sleep)),
    );
    table.push(
        "time_in_wake",
        "Wake after sleep onset",
        Kind::Duration,
        computed(|s| Some(Value::Seconds(s.time_in_wake as f64))),
        seconds(asleep(|s| s.time_in_wake)),
    );
    if four_stage {
        table.push(
            "time_in_light",
            "Light sleep",
            Kind::Duration,
            computed(|s| s.time_in_light.map(|value| Value::Seconds(value as f64))),
            seconds(asleep(|s| s.time_in_light)),
        );
        table.push(
            "time_in_deep",
            "Deep sleep",
            Kind::Duration,
            computed(|s| s.time_in_deep.map(|value| Value::Seconds(value as f64))),
            seconds(asleep(|s| s.time_in_deep)),
        );
        table.push(
            "time_in_rem",
            "REM sleep",
            Kind::Duration,
            computed(|s| s.time_in_rem.map(|value| Value::Seconds(value as f64))),
            seconds(asleep(|s| s.time_in_rem)),
        );
    }
    table.push(
        "sleep_efficiency",
        "Sleep efficiency",
        Kind::Efficiency,
        computed(|s| Some(Value::Percent(s.sleep_efficiency * 100.0))),
        asleep(|s| s.sleep_efficiency).map(Value::Percent),
    );
    table.push(
        "sleep_ratio",
        "Sleep, share of the sleep period",
        Kind::Ratio,
        computed(|s| Some(Value::Ratio(s.sleep_ratio))),
        ratio(asleep(|s| s.sleep_ratio)),
    );
    table.push(
        "wake_ratio",
        "Wake, share of the sleep period",
        Kind::Ratio,
        computed(|s| Some(Value::Ratio(s.wake_ratio))),
        ratio(asleep(|s| s.wake_ratio)),
    );
    if four_stage {
        table.push(
            "light_ratio",
            "Light sleep, share of the sleep period",
            Kind::Ratio,
            computed(|s| s.light_ratio.map(Value::Ratio)),
            ratio(asleep(|s| s.light_ratio)),
        );
        table.push(
            "deep_ratio",
            "Deep sleep, share of the sleep period",
            Kind::Ratio,
            computed(|s| s.deep_ratio.map(Value::Ratio)),
            ratio(asleep(|s| s.deep_ratio)),
        );
        table.push(
            "rem_ratio",
            "REM sleep, share of the sleep period",
            Kind::Ratio,
            computed(|s| s.rem_ratio.map(Value::Ratio)),
            ratio(asleep(|s| s.rem_ratio)),
        );
    }
    table.push(
        "waso_count",
        "Awakenings after sleep onset (WASO)",
        Kind::Count,
        computed(|s| Some(Value::Count(f64::from(s.waso_count)))),
        count(asleep(|s| s.waso_count)),
    );
    table.push(
        "longest_waso",
        "Longest awakening",
        Kind::Duration,
        computed(|s| Some(Value::Seconds(s.longest_waso as f64))),
        seconds(asleep(|s| s.longest_waso)),
    );
    if four_stage {
        table.push(
            "sleep_cycle_count",
            "Sleep cycles",
            Kind::Count,
            computed(|s| s.sleep_cycle_count.map(|value| Value::Count(f64::from(value)))),
            count(stat.and_then(asleep_cycle_count)),
        );
        table.push(
            "sleep_cycle",
            "Average sleep-cycle length",
            Kind::Duration,
            computed(|s| s.sleep_cycle.map(Value::Seconds)),
            seconds(stat.and_then(asleep_mean_cycle)),
        );
        table.push(
            "sleep_cycle_time",
            "Sleep-cycle boundaries: onset, then each cycle's end",
            Kind::Clock,
            computed(|s| (!s.sleep_cycle_time.is_empty()).then(|| Value::Clocks(s.sleep_cycle_time.clone()))),
            stat.and_then(asleep_cycle_boundaries).map(Value::Clocks),
        );
    }
    table.push(
        "time_in_snoring",
        "Snoring",
        Kind::Duration,
        computed(|s| s.time_in_snoring.map(|value| Value::Seconds(value as f64))),
        seconds(asleep(|s| s.time_in_snoring)),
    );
    table.push(
        "time_in_no_snoring",
        "Time without snoring",
        Kind::Duration,
        computed(|s| s.time_in_no_snoring.map(|value| Value::Seconds(value as f64))),
        seconds(asleep(|s| s.time_in_no_snoring)),
    );
    table.push(
        "snoring_ratio",
        "Snoring, share of the epochs with snoring data",
        Kind::Ratio,
        computed(|s| s.snoring_ratio.map(Value::Ratio)),
        ratio(asleep(|s| s.snoring_ratio)),
    );
    table.push(
        "snoring_count",
        "Snoring episodes",
        Kind::Count,
        computed(|s| s.snoring_count.map(|value| Value::Count(f64::from(value)))),
        count(asleep(|s| s.snoring_count)),
    );

    // Figures only Asleep computes: breathing needs the breath stages'
    // analysis, and the score is Asleep's own.
    let only_asleep: [(&'static str, &str, Option<Value>); 8] = [
        (
            "time_in_stable_breath",
            "Stable breathing",
            seconds(asleep(|s| s.time_in_stable_breath)),
        ),
        (
            "time_in_unstable_breath",
            "Unstable breathing",
            seconds(asleep(|s| s.time_in_unstable_breath)),
        ),
        (
            "stable_breath_ratio",
            "Stable breathing, share of the sleep period",
            ratio(asleep(|s| s.stable_breath_ratio)),
        ),
        (
            "unstable_breath_ratio",
            "Unstable breathing, share of the sleep period",
            ratio(asleep(|s| s.unstable_breath_ratio)),
        ),
        (
            "unstable_breath_count",
            "Unstable-breathing episodes",
            count(asleep(|s| s.unstable_breath_count)),
        ),
        (
            "breathing_index",
            "Breathing index",
            asleep(|s| s.breathing_index).map(|index| Value::Text(index.to_string())),
        ),
        (
            "breathing_pattern",
            "Breathing pattern",
            stat.and_then(|stat| stat.breathing_pattern.clone()).map(Value::Text),
        ),
        (
            "sleep_index",
            "Sleep score",
            asleep(|s| s.sleep_index).map(|score| Value::Text(format!("{} of 100", score.round()))),
        ),
    ];
    for (name, label, value) in only_asleep {
        if let Some(value) = value {
            table.push_note(
                name,
                label,
                Kind::Count,
                value,
                "Asleep's own figure; this server does not compute it.",
            );
        }
    }
    table.rows
}

struct Table<'a> {
    rows: Vec<StatisticRow>,
    clock: &'a NightClock,
}

impl Table<'_> {
    fn push(&mut self, name: &'static str, label: &str, kind: Kind, computed: Option<Value>, asleep: Option<Value>) {
        if computed.is_none() && asleep.is_none() {
            return;
        }
        let disagreement = computed
            .as_ref()
            .zip(asleep.as_ref())
            .and_then(|(computed, asleep)| computed.disagreement(asleep));
        self.rows.push(StatisticRow {
            name,
            label: label.to_string(),
            kind,
            computed: computed.map(|value| value.format(self.clock)),
            asleep: asleep.map(|value| value.format(self.clock)),
            disagreement,
            note: None,
        });
    }

    /// Adds a row of Asleep's that this table shows without comparing.
    fn push_note(&mut self, name: &'static str, label: &str, kind: Kind, asleep: Value, note: &'static str) {
        self.rows.push(StatisticRow {
            name,
            label: label.to_string(),
            kind,
            computed: None,
            asleep: Some(asleep.format(self.clock)),
            disagreement: None,
            note: Some(note),
        });
    }
}

/// Returns Asleep's number of sleep cycles: `sleep_cycle_count`, else the
/// length of the guides' cycle list.
fn asleep_cycle_count(stat: &Stat) -> Option<f64> {
    stat.sleep_cycle_count
        .or_else(|| (!stat.sleep_cycles.is_empty()).then_some(stat.sleep_cycles.len() as f64))
}

/// Returns Asleep's mean cycle length: `sleep_cycle` in seconds, else the
/// mean length of the guides' listed cycles.
fn asleep_mean_cycle(stat: &Stat) -> Option<f64> {
    if stat.sleep_cycle.is_some() {
        return stat.sleep_cycle;
    }
    let lengths: Vec<i64> = stat
        .sleep_cycles
        .iter()
        .filter_map(|cycle| Some((cycle.end_time? - cycle.start_time?).num_seconds()))
        .collect();
    (!lengths.is_empty()).then(|| lengths.iter().sum::<i64>() as f64 / lengths.len() as f64)
}

/// Returns Asleep's cycle boundaries: `sleep_cycle_time`, else the start of
/// the first listed cycle and the end of each.
fn asleep_cycle_boundaries(stat: &Stat) -> Option<Vec<DateTime<FixedOffset>>> {
    if !stat.sleep_cycle_time.is_empty() {
        return Some(stat.sleep_cycle_time.clone());
    }
    let first = stat.sleep_cycles.first()?.start_time?;
    let ends: Option<Vec<_>> = stat.sleep_cycles.iter().map(|cycle| cycle.end_time).collect();
    Some(std::iter::once(first).chain(ends?).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::fixtures::final_report;
    use crate::report::parse_zone;
    use crate::statistics::StageModel;

    fn rows(name: &str, user_id: &str, alter: impl FnOnce(&mut Stat)) -> Vec<StatisticRow> {
        let mut report = final_report(name, user_id);
        alter(report.stat.as_mut().unwrap());
        let statistics = SleepStatistics::from_report(&report, StageModel::FourStage).unwrap();
        let zone = parse_zone(&report.timezone);
        let clock = NightClock::new(zone, statistics.start_time, statistics.end_time);
        statistic_rows(Some(&statistics), report.stat.as_ref(), statistics.staging, &clock)
    }

    fn row<'a>(rows: &'a [StatisticRow], name: &str) -> &'a StatisticRow {
        rows.iter()
            .find(|row| row.name == name)
            .unwrap_or_else(|| panic!("no row {name}"))
    }

    #[test]
    fn documented_night_agrees_with_asleep() {
        let rows = rows("session-enveloped.json", "G-20261101-demo-user-0001", |_| {});
        let disagreements: Vec<_> = rows
            .iter()
            .filter(|row| row.disagreement.is_some())
            .map(|row| row.name)
            .collect();
        assert!(disagreements.is_empty(), "{disagreements:?}");
        let efficiency = row(&rows, "sleep_efficiency");
        assert_eq!(efficiency.computed.as_deref(), Some("92%"));
        assert_eq!(efficiency.asleep.as_deref(), Some("92%"));
        assert_eq!(row(&rows, "sleep_time").asleep.as_deref(), Some("00:05"));
        // Asleep truncates the mean cycle to whole seconds: 5497 against 5497.5.
        let cycle = row(&rows, "sleep_cycle");
        assert_eq!(cycle.computed.as_deref(), Some("1 h 31 min 37.5 s"));
        assert_eq!(cycle.asleep.as_deref(), Some("1 h 31 min 37 s"));
        assert_eq!(
            row(&rows, "sleep_cycle_time").asleep.as_deref(),
            Some("00:05, 02:24, 03:43, 05:00, 06:11")
        );
    }

    #[test]
    fn altered_stat_is_pointed_out() {
        let rows = rows("session-enveloped.json", "G-20261101-demo-user-0001", |stat| {
            stat.waso_count = Some(9.0);
            stat.time_in_sleep = Some(24_720.0 + 1.0);
            stat.time_in_deep = Some(2520.0 + 90.0);
            stat.light_ratio = Some(0.72);
            stat.rem_ratio = Some(0.19);
            stat.sleep_efficiency = Some(93.0);
            stat.longest_waso = Some(150.0);
            stat.wake_time = Some(DateTime::parse_from_rfc3339("2026-11-21T07:07:07+09:00").unwrap());
        });
        let disagreement = |name| row(&rows, name).disagreement.clone();
        assert_eq!(disagreement("waso_count").as_deref(), Some("differs by 2"));
        assert_eq!(disagreement("time_in_sleep"), None, "a second is within rounding");
        assert_eq!(disagreement("time_in_deep").as_deref(), Some("differs by 1 min 30 s"));
        assert_eq!(disagreement("light_ratio"), None, "0.01 is within rounding");
        assert_eq!(
            disagreement("rem_ratio").as_deref(),
            Some("differs by 2 percentage points")
        );
        assert_eq!(disagreement("sleep_efficiency"), None, "one point is within rounding");
        assert_eq!(disagreement("wake_time").as_deref(), Some("differs by 2 min"));
        assert_eq!(disagreement("longest_waso"), None);
    }

    #[test]
    fn guide_night_shows_duration_and_percent() {
        let rows = rows("session-flat.json", "user123", |_| {});
        let durations: Vec<_> = rows.iter().filter(|row| row.name == "sleep_time").collect();
        assert_eq!(durations.len(), 2, "the onset row and the duration row");
        assert_eq!(durations[1].asleep.as_deref(), Some("4 h 10 min"));
        assert!(durations[1].note.is_some());
        assert_eq!(durations[0].asleep, None);
        assert_eq!(row(&rows, "sleep_efficiency").asleep.as_deref(), Some("90.3%"));
        assert_eq!(row(&rows, "sleep_cycle_count").asleep.as_deref(), Some("2"));
        assert_eq!(row(&rows, "sleep_cycle").asleep.as_deref(), Some("1 h 46 min"));
        assert_eq!(
            row(&rows, "sleep_cycle_time").asleep.as_deref(),
            Some("22:15, 00:05, 01:47")
        );
    }

    #[test]
    fn two_stage_table_leaves_out_stage_rows() {
        let report = final_report("session-enveloped.json", "G-20261101-demo-user-0001");
        let statistics = SleepStatistics::from_report(&report, StageModel::TwoStage).unwrap();
        let clock = NightClock::new(parse_zone(&report.timezone), statistics.start_time, statistics.end_time);
        let rows = statistic_rows(Some(&statistics), report.stat.as_ref(), Staging::TwoStage, &clock);
        for name in [
            "light_latency",
            "time_in_rem",
            "deep_ratio",
            "sleep_cycle_count",
            "sleep_cycle_time",
        ] {
            assert!(rows.iter().all(|row| row.name != name), "{name}");
        }
        assert!(
            rows.iter()
                .all(|row| !row.label.contains("Light") && !row.label.contains("REM"))
        );
        assert!(rows.iter().any(|row| row.name == "sleep_ratio"));
    }

    #[test]
    fn tolerances_per_kind() {
        assert_eq!(Value::Seconds(5497.5).disagreement(&Value::Seconds(5497.0)), None);
        assert!(Value::Seconds(100.0).disagreement(&Value::Seconds(102.0)).is_some());
        assert_eq!(Value::Ratio(0.71).disagreement(&Value::Ratio(0.70)), None);
        assert!(Value::Ratio(0.71).disagreement(&Value::Ratio(0.69)).is_some());
        assert_eq!(Value::Percent(92.0).disagreement(&Value::Percent(91.0)), None);
        assert!(Value::Percent(92.0).disagreement(&Value::Percent(90.5)).is_some());
        assert!(Value::Count(3.0).disagreement(&Value::Count(4.0)).is_some());
        let time = |text| Value::Clock(DateTime::parse_from_rfc3339(text).unwrap());
        assert_eq!(
            time("2026-01-01T00:00:00Z").disagreement(&time("2026-01-01T00:01:00Z")),
            None
        );
        assert!(
            time("2026-01-01T00:00:00Z")
                .disagreement(&time("2026-01-01T00:01:01Z"))
                .is_some()
        );
    }

    #[test]
    fn exact_durations_format() {
        assert_eq!(format_duration_exact(0.0), "0 s");
        assert_eq!(format_duration_exact(30.0), "30 s");
        assert_eq!(format_duration_exact(3600.0), "1 h");
        assert_eq!(format_duration_exact(5497.5), "1 h 31 min 37.5 s");
        assert_eq!(format_duration_exact(27_000.0), "7 h 30 min");
    }
}
