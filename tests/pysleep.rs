//! Conformance with Asleep's calculator: every field of every case in
//! `tests/fixtures/pysleep-cases.json`, which `tests/pysleep/generate.sh`
//! wrote with pysleep 0.2.0, must equal what this server computes.

use chrono::{DateTime, FixedOffset};
use serde::Deserialize;
use serde_json::Value;
use sleep_dashboard::statistics::{SleepStatistics, Staging};

#[derive(Deserialize)]
struct Cases {
    pysleep: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    stages: String,
    start_time: String,
    end_time: Option<String>,
    expected: serde_json::Map<String, Value>,
}

fn time(text: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|error| panic!("bad time {text:?} in the cases: {error}"))
}

/// Returns the value this server computed for one of pysleep's fields, as
/// JSON of the kind the cases hold.
fn computed(statistics: &SleepStatistics, field: &str) -> Value {
    let times = |times: &[DateTime<FixedOffset>]| times.iter().map(|time| time.to_rfc3339()).collect::<Vec<_>>();
    match field {
        "start_time" => statistics.start_time.to_rfc3339().into(),
        "end_time" => statistics.end_time.to_rfc3339().into(),
        "sleep_time" => statistics.sleep_time.to_rfc3339().into(),
        "wake_time" => statistics.wake_time.to_rfc3339().into(),
        "sleep_cycle_time" => times(&statistics.sleep_cycle_time).into(),
        "sleep_latency" => statistics.sleep_latency.into(),
        "wakeup_latency" => statistics.wakeup_latency.into(),
        "light_latency" => statistics.light_latency.into(),
        "deep_latency" => statistics.deep_latency.into(),
        "rem_latency" => statistics.rem_latency.into(),
        "time_in_bed" => statistics.time_in_bed.into(),
        "time_in_sleep_period" => statistics.time_in_sleep_period.into(),
        "time_in_sleep" => statistics.time_in_sleep.into(),
        "time_in_wake" => statistics.time_in_wake.into(),
        "time_in_light" => statistics.time_in_light.into(),
        "time_in_deep" => statistics.time_in_deep.into(),
        "time_in_rem" => statistics.time_in_rem.into(),
        "longest_waso" => statistics.longest_waso.into(),
        "sleep_cycle" => statistics.sleep_cycle.into(),
        "sleep_efficiency" => statistics.sleep_efficiency.into(),
        "sleep_ratio" => statistics.sleep_ratio.into(),
        "wake_ratio" => statistics.wake_ratio.into(),
        "light_ratio" => statistics.light_ratio.into(),
        "deep_ratio" => statistics.deep_ratio.into(),
        "rem_ratio" => statistics.rem_ratio.into(),
        "waso_count" => statistics.waso_count.into(),
        "sleep_cycle_count" => statistics.sleep_cycle_count.into(),
        _ => panic!("the cases hold a field this test does not know: {field}"),
    }
}

/// Compares one field exactly: numbers by value (pysleep's `1800` and this
/// server's `1800.0` are one number) and times by instant and offset.
fn same(field: &str, expected: &Value, computed: &Value) -> bool {
    match (expected, computed) {
        (Value::Number(expected), Value::Number(computed)) => expected.as_f64() == computed.as_f64(),
        (Value::String(expected), Value::String(computed)) if field.ends_with("_time") => {
            let (expected, computed) = (time(expected), time(computed));
            expected == computed && expected.offset() == computed.offset()
        }
        (Value::Array(expected), Value::Array(computed)) => {
            expected.len() == computed.len()
                && expected
                    .iter()
                    .zip(computed)
                    .all(|(expected, computed)| same(field, expected, computed))
        }
        _ => expected == computed,
    }
}

#[test]
fn every_statistic_equals_pysleep() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pysleep-cases.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"));
    let cases: Cases = serde_json::from_str(&text).expect("the cases file is not the JSON generate.sh writes");
    assert_eq!(cases.pysleep, "0.2.0");
    assert!(cases.cases.len() >= 500, "only {} cases", cases.cases.len());

    let mut fields_checked = 0;
    let mut mismatches = Vec::new();
    for case in &cases.cases {
        let stages: Vec<i8> = case.stages.bytes().map(|digit| (digit - b'0') as i8).collect();
        let statistics = SleepStatistics::compute(
            &stages,
            &[],
            time(&case.start_time),
            case.end_time.as_deref().map(time),
            Staging::FourStage,
        )
        .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        for (field, expected) in &case.expected {
            let computed = computed(&statistics, field);
            fields_checked += 1;
            if !same(field, expected, &computed) {
                mismatches.push(format!("{}: {field} is {computed}, pysleep says {expected}", case.name));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {fields_checked} fields differ from pysleep:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(fields_checked, cases.cases.len() * 27, "every case holds all 27 fields");
}
