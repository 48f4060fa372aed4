//! Server time to render an 8-hour night's report page, after the database
//! read: building the session document from the stored final report, then
//! the page's HTML with its SVG hypnogram. The target is a median of at
//! most 2 ms per page.
//!
//! `cargo bench --bench report_page` measures; `cargo bench --bench
//! report_page -- --test` runs each benchmark once as a smoke test.

use std::hint::black_box;

use chrono::{DateTime, Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use sleep_dashboard::hypnogram::Hypnogram;
use sleep_dashboard::pages::{SessionDocument, render_report_page};
use sleep_dashboard::payload::{Delivery, EPOCH_SECONDS, parse_delivery};
use sleep_dashboard::report::parse_zone;
use sleep_dashboard::statistics::{DEEP, LIGHT, REM, SleepStatistics, StageModel, Staging, UNKNOWN, WAKE};
use sleep_dashboard::storage::SessionEvents;

const USER_ID: &str = "bench-user";
const SESSION_ID: &str = "bench-night";
const TIMEZONE: &str = "America/New_York";
/// 22:40 in New York, so the night crosses midnight.
const START_TIME: &str = "2026-11-20T22:40:00-05:00";
/// 8 hours of 30-second epochs.
const EPOCHS: usize = 960;

/// The night's stage walk as `(stage, epochs)` runs: six sleep cycles whose
/// deep sleep shrinks and whose REM grows towards the morning, awakenings
/// after sleep onset (WASO) between and inside cycles, and 4 minutes without
/// data. Wake fills the last 5.5 minutes.
const STAGE_RUNS: &[(i8, usize)] = &[
    // Falling asleep takes 13 minutes.
    (WAKE, 26),
    (LIGHT, 24),
    (DEEP, 70),
    (LIGHT, 30),
    (REM, 22),
    (WAKE, 4),
    (LIGHT, 36),
    (DEEP, 50),
    (LIGHT, 28),
    (WAKE, 2),
    (LIGHT, 10),
    (REM, 34),
    (WAKE, 6),
    (LIGHT, 40),
    (DEEP, 30),
    (LIGHT, 36),
    (UNKNOWN, 8),
    (LIGHT, 10),
    (REM, 44),
    (WAKE, 3),
    (LIGHT, 50),
    (DEEP, 14),
    (LIGHT, 44),
    (REM, 50),
    (WAKE, 10),
    (LIGHT, 70),
    (REM, 16),
    (WAKE, 2),
    (REM, 40),
    (LIGHT, 80),
    (REM, 60),
];

/// Returns the night's sleep stages and snoring stages, one per epoch.
/// Snoring comes in runs of up to 5 minutes in light and deep sleep.
fn night_stages() -> (Vec<i8>, Vec<i8>) {
    let mut sleep_stages: Vec<i8> = STAGE_RUNS
        .iter()
        .flat_map(|(stage, epochs)| std::iter::repeat_n(*stage, *epochs))
        .collect();
    assert!(sleep_stages.len() < EPOCHS, "the stage runs leave no final awakening");
    sleep_stages.resize(EPOCHS, WAKE);

    let snoring_stages = sleep_stages
        .iter()
        .enumerate()
        .map(|(epoch, stage)| i8::from(matches!(*stage, LIGHT | DEEP) && (epoch / 10) % 4 == 1))
        .collect();
    (sleep_stages, snoring_stages)
}

/// Returns Asleep's `stat` for the night in Asleep's units, as agreeing
/// figures: this server's own statistics of the same stages.
fn asleep_stat(statistics: &SleepStatistics) -> Value {
    json!({
        "sleep_time": statistics.sleep_time.to_rfc3339(),
        "wake_time": statistics.wake_time.to_rfc3339(),
        "sleep_latency": statistics.sleep_latency,
        "wakeup_latency": statistics.wakeup_latency,
        "light_latency": statistics.light_latency,
        "deep_latency": statistics.deep_latency,
        "rem_latency": statistics.rem_latency,
        "time_in_bed": statistics.time_in_bed,
        "time_in_sleep_period": statistics.time_in_sleep_period,
        "time_in_sleep": statistics.time_in_sleep,
        "time_in_wake": statistics.time_in_wake,
        "time_in_light": statistics.time_in_light,
        "time_in_deep": statistics.time_in_deep,
        "time_in_rem": statistics.time_in_rem,
        "time_in_snoring": statistics.time_in_snoring,
        "time_in_no_snoring": statistics.time_in_no_snoring,
        "sleep_efficiency": statistics.sleep_efficiency,
        "sleep_ratio": statistics.sleep_ratio,
        "wake_ratio": statistics.wake_ratio,
        "light_ratio": statistics.light_ratio,
        "deep_ratio": statistics.deep_ratio,
        "rem_ratio": statistics.rem_ratio,
        "snoring_ratio": statistics.snoring_ratio,
        "no_snoring_ratio": statistics.no_snoring_ratio,
        "waso_count": statistics.waso_count,
        "longest_waso": statistics.longest_waso,
        "sleep_cycle_count": statistics.sleep_cycle_count,
        "sleep_cycle": statistics.sleep_cycle.map(f64::round),
        "sleep_cycle_time": statistics
            .sleep_cycle_time
            .iter()
            .map(DateTime::to_rfc3339)
            .collect::<Vec<_>>(),
        "snoring_count": statistics.snoring_count,
    })
}

/// Returns the stored events of the night: one `SESSION_COMPLETE`, parsed
/// and validated as the webhook does.
fn night_events() -> SessionEvents {
    let (sleep_stages, snoring_stages) = night_stages();
    let start_time = DateTime::parse_from_rfc3339(START_TIME).expect("START_TIME is RFC 3339");
    let end_time = start_time + Duration::seconds(EPOCHS as i64 * EPOCH_SECONDS);
    let statistics = SleepStatistics::compute(
        &sleep_stages,
        &snoring_stages,
        start_time,
        Some(end_time),
        Staging::FourStage,
    )
    .expect("the night has epochs and ends after it starts");

    let body = json!({
        "event": "SESSION_COMPLETE",
        "version": "V3",
        "data": {
            "timezone": TIMEZONE,
            "peculiarities": [],
            "missing_data_ratio": 0.01,
            "user_id": USER_ID,
            "session": {
                "id": SESSION_ID,
                "state": "COMPLETE",
                "start_time": START_TIME,
                "end_time": end_time.to_rfc3339(),
                "sleep_stages": sleep_stages,
                "snoring_stages": snoring_stages,
                "breath_stages": null,
            },
            "stat": asleep_stat(&statistics),
        },
    });
    let Delivery::SessionComplete(report) = parse_delivery(&body, USER_ID).expect("a valid SESSION_COMPLETE") else {
        panic!("the body parses as another event than SESSION_COMPLETE");
    };
    SessionEvents {
        first_seen_ms: start_time.timestamp_millis(),
        results: Vec::new(),
        report: Some(*report),
    }
}

/// Builds the session document as the report page's handler does after the
/// database read.
fn document(events: &SessionEvents) -> SessionDocument {
    SessionDocument::from_events(USER_ID, SESSION_ID, events, StageModel::Automatic)
}

/// Returns the night's hypnogram as the report page draws it.
fn hypnogram(document: &SessionDocument) -> Hypnogram<'_> {
    let start = document.start_time.expect("a final report has a start");
    Hypnogram {
        sleep_stages: &document.sleep_stages,
        snoring_stages: &document.snoring_stages,
        clock: Some((start.with_timezone(&Utc), parse_zone(TIMEZONE))),
        start_estimated: false,
        title: format!("Hypnogram of session {SESSION_ID}: sleep stages"),
    }
}

/// Checks that the night is the one the benchmark claims to render, so a
/// change to the stage walk or the parser cannot make it measure less.
fn check_night(document: &SessionDocument, html: &str) {
    let statistics = document.statistics.as_ref().expect("statistics of the night");
    assert_eq!(statistics.epochs as usize, EPOCHS);
    assert_eq!(document.staging, Staging::FourStage);
    assert_eq!(statistics.cycle_end_epochs.len(), 6, "sleep cycles");
    assert_eq!(statistics.waso_episodes.len(), 6, "WASO episodes");
    assert!(statistics.snoring_count.unwrap_or(0) >= 10);
    assert!(html.contains(r#"<svg id="hypnogram""#));
    assert!(html.contains(">00:00</text>"), "an hour tick at midnight in New York");
    assert!(!html.contains(r#"id="disagreements""#), "the stat agrees");
}

fn report_page(criterion: &mut Criterion) {
    let events = night_events();
    let prepared = document(&events);
    let html = render_report_page(&prepared).expect("the report page renders");
    check_night(&prepared, &html);

    let mut group = criterion.benchmark_group("report_page");
    // Everything the handler does after the database read.
    group.bench_function("document_and_html", |bencher| {
        bencher.iter(|| {
            let document = document(black_box(&events));
            render_report_page(&document).expect("the report page renders")
        })
    });
    group.bench_function("html", |bencher| {
        bencher.iter(|| render_report_page(black_box(&prepared)).expect("the report page renders"))
    });
    let drawing = hypnogram(&prepared);
    let statistics = prepared.statistics.as_ref();
    group.bench_function("hypnogram_svg", |bencher| {
        bencher.iter(|| black_box(&drawing).render_report(Staging::FourStage, black_box(statistics)))
    });
    group.finish();
}

criterion_group!(benches, report_page);
criterion_main!(benches);
