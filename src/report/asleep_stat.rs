//! Asleep's own statistics as the JSON API serves them: Asleep's field
//! names in Asleep's documented units, whichever of the two styles the
//! delivery used.
//!
//! The stored [`Stat`] keeps sleep efficiency as a percentage and the two
//! forms of `sleep_time` in one enum, which suits the report page. Asleep
//! documents efficiency as a fraction 0..1, counts as whole numbers and
//! `sleep_time` as a clock time, so this view converts back.

use chrono::{DateTime, FixedOffset};
use serde::{Serialize, Serializer};

use crate::payload::{CycleSpan, SleepTime, Stat};

/// Asleep's `stat` object in Asleep's units. Durations are seconds, ratios
/// and `sleep_efficiency` fractions 0..1, counts whole numbers; every field
/// is `null` when the delivery did not carry it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AsleepStat {
    /// Clock time of falling asleep, when the delivery sent one, as Asleep's
    /// documentation defines `sleep_time`.
    pub sleep_time: Option<DateTime<FixedOffset>>,
    /// The integration guides' `sleep_time`, a duration `"HH:MM:SS"`, in
    /// seconds; `null` when `sleep_time` arrived as a clock time.
    pub sleep_time_duration: Option<i64>,
    pub wake_time: Option<DateTime<FixedOffset>>,
    #[serde(serialize_with = "number")]
    pub sleep_latency: Option<f64>,
    #[serde(serialize_with = "number")]
    pub wakeup_latency: Option<f64>,
    #[serde(serialize_with = "number")]
    pub light_latency: Option<f64>,
    #[serde(serialize_with = "number")]
    pub deep_latency: Option<f64>,
    #[serde(serialize_with = "number")]
    pub rem_latency: Option<f64>,
    #[serde(serialize_with = "number")]
    pub time_in_bed: Option<f64>,
    #[serde(serialize_with = "number")]
    pub time_in_sleep_period: Option<f64>,
    #[serde(serialize_with = "number")]
    pub time_in_sleep: Option<f64>,
    #[serde(serialize_with = "number")]
    pub time_in_wake: Option<f64>,
    #[serde(serialize_with = "number")]
    pub time_in_light: Option<f64>,
    #[serde(serialize_with = "number")]
    pub time_in_deep: Option<f64>,
    #[serde(serialize_with = "number")]
    pub time_in_rem: Option<f64>,
    #[serde(serialize_with = "number")]
    pub time_in_snoring: Option<f64>,
    #[serde(serialize_with = "number")]
    pub time_in_no_snoring: Option<f64>,
    #[serde(serialize_with = "number")]
    pub time_in_stable_breath: Option<f64>,
    #[serde(serialize_with = "number")]
    pub time_in_unstable_breath: Option<f64>,
    /// Time asleep over time in bed, as a fraction 0..1 whichever style
    /// arrived.
    pub sleep_efficiency: Option<f64>,
    pub sleep_ratio: Option<f64>,
    pub wake_ratio: Option<f64>,
    pub light_ratio: Option<f64>,
    pub deep_ratio: Option<f64>,
    pub rem_ratio: Option<f64>,
    pub snoring_ratio: Option<f64>,
    pub no_snoring_ratio: Option<f64>,
    pub stable_breath_ratio: Option<f64>,
    pub unstable_breath_ratio: Option<f64>,
    pub waso_count: Option<u64>,
    #[serde(serialize_with = "number")]
    pub longest_waso: Option<f64>,
    pub sleep_cycle_count: Option<u64>,
    /// Mean sleep-cycle length in seconds, when the delivery sent it as a
    /// number.
    #[serde(serialize_with = "number")]
    pub sleep_cycle: Option<f64>,
    /// The integration guides' list form of `sleep_cycle`: one entry per
    /// cycle; empty when the delivery sent no list.
    pub sleep_cycles: Vec<CycleSpan>,
    /// Sleep onset, then the end of each sleep cycle.
    pub sleep_cycle_time: Vec<DateTime<FixedOffset>>,
    pub snoring_count: Option<u64>,
    pub unstable_breath_count: Option<u64>,
    /// Asleep's sleep score, 0..100.
    #[serde(serialize_with = "number")]
    pub sleep_index: Option<f64>,
    #[serde(serialize_with = "number")]
    pub breathing_index: Option<f64>,
    pub breathing_pattern: Option<String>,
}

impl From<&Stat> for AsleepStat {
    fn from(stat: &Stat) -> Self {
        let (sleep_time, sleep_time_duration) = match stat.sleep_time {
            Some(SleepTime::Clock(time)) => (Some(time), None),
            Some(SleepTime::Duration(seconds)) => (None, Some(seconds)),
            None => (None, None),
        };
        Self {
            sleep_time,
            sleep_time_duration,
            wake_time: stat.wake_time,
            sleep_latency: stat.sleep_latency,
            wakeup_latency: stat.wakeup_latency,
            light_latency: stat.light_latency,
            deep_latency: stat.deep_latency,
            rem_latency: stat.rem_latency,
            time_in_bed: stat.time_in_bed,
            time_in_sleep_period: stat.time_in_sleep_period,
            time_in_sleep: stat.time_in_sleep,
            time_in_wake: stat.time_in_wake,
            time_in_light: stat.time_in_light,
            time_in_deep: stat.time_in_deep,
            time_in_rem: stat.time_in_rem,
            time_in_snoring: stat.time_in_snoring,
            time_in_no_snoring: stat.time_in_no_snoring,
            time_in_stable_breath: stat.time_in_stable_breath,
            time_in_unstable_breath: stat.time_in_unstable_breath,
            sleep_efficiency: stat.sleep_efficiency.map(percent_to_fraction),
            sleep_ratio: stat.sleep_ratio,
            wake_ratio: stat.wake_ratio,
            light_ratio: stat.light_ratio,
            deep_ratio: stat.deep_ratio,
            rem_ratio: stat.rem_ratio,
            snoring_ratio: stat.snoring_ratio,
            no_snoring_ratio: stat.no_snoring_ratio,
            stable_breath_ratio: stat.stable_breath_ratio,
            unstable_breath_ratio: stat.unstable_breath_ratio,
            waso_count: stat.waso_count.map(whole_count),
            longest_waso: stat.longest_waso,
            sleep_cycle_count: stat.sleep_cycle_count.map(whole_count),
            sleep_cycle: stat.sleep_cycle,
            sleep_cycles: stat.sleep_cycles.clone(),
            sleep_cycle_time: stat.sleep_cycle_time.clone(),
            snoring_count: stat.snoring_count.map(whole_count),
            unstable_breath_count: stat.unstable_breath_count.map(whole_count),
            sleep_index: stat.sleep_index,
            breathing_index: stat.breathing_index,
            breathing_pattern: stat.breathing_pattern.clone(),
        }
    }
}

/// Converts the stored percentage back to a fraction. Rounding to twelve
/// decimals removes the error of the multiplication and division, so a
/// fraction `0.92` that arrived is served as `0.92`, not `0.9200000000000002`.
fn percent_to_fraction(percent: f64) -> f64 {
    (percent / 100.0 * 1e12).round() / 1e12
}

/// Returns a count as a whole number. Intake accepts any number from 0 up,
/// and no Asleep source sends a fractional count, so rounding changes only
/// a malformed one.
fn whole_count(count: f64) -> u64 {
    count.round() as u64
}

/// Writes a number without a fraction as a JSON integer, as Asleep sends
/// durations, and any other number as it is.
fn number<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
    // Integers up to 2^53 are exact in an f64; the stored values are far below.
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Some(number) if number.fract() == 0.0 && number.abs() <= MAX_EXACT => serializer.serialize_i64(*number as i64),
        Some(number) => serializer.serialize_f64(*number),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::fixtures::final_report;

    fn served(name: &str, user_id: &str) -> serde_json::Value {
        let report = final_report(name, user_id);
        serde_json::to_value(AsleepStat::from(report.stat.as_ref().unwrap())).unwrap()
    }

    #[test]
    fn documented_style_keeps_asleep_units() {
        let stat = served("session-enveloped.json", "G-20261101-demo-user-0001");
        assert_eq!(stat["sleep_efficiency"], serde_json::json!(0.92));
        assert!(stat["waso_count"].is_u64(), "{}", stat["waso_count"]);
        assert_eq!(stat["waso_count"], 7);
        assert!(stat["time_in_sleep"].is_i64());
        assert_eq!(stat["time_in_sleep"], 24720);
        assert_eq!(stat["sleep_time"], "2026-11-21T00:05:07+09:00");
        assert!(stat["sleep_time_duration"].is_null());
        assert_eq!(stat["sleep_cycle"], 5497);
        assert_eq!(stat["sleep_cycle_time"].as_array().unwrap().len(), 5);
        assert_eq!(stat["light_ratio"], serde_json::json!(0.71));
        assert!(stat["sleep_index"].is_null());
    }

    #[test]
    fn guide_style_is_converted() {
        let stat = served("session-flat.json", "user123");
        assert_eq!(stat["sleep_efficiency"], serde_json::json!(0.9025));
        assert!(stat["sleep_time"].is_null());
        assert_eq!(stat["sleep_time_duration"], 4 * 3600 + 10 * 60);
        assert_eq!(stat["waso_count"], 1);
        assert!(stat["waso_count"].is_u64());
        assert_eq!(stat["sleep_cycles"].as_array().unwrap().len(), 2);
        assert!(stat["sleep_cycle"].is_null());
    }

    #[test]
    fn fractional_values_stay_fractional() {
        let stat = Stat {
            sleep_cycle: Some(5497.5),
            sleep_efficiency: Some(33.0),
            ..Stat::default()
        };
        let served = serde_json::to_value(AsleepStat::from(&stat)).unwrap();
        assert_eq!(served["sleep_cycle"], serde_json::json!(5497.5));
        assert_eq!(served["sleep_efficiency"], serde_json::json!(0.33));
    }
}
