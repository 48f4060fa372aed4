//! The report below the hypnogram: figures in plain units, stage times and
//! shares, sleep cycles and peculiarities.

use chrono::{DateTime, FixedOffset};
use chrono_tz::Tz;
use serde::Serialize;

use super::Headline;
use super::format::{format_clock, format_duration, format_percent, format_ratio};
use super::statistics::{HypnogramFigures, Stage};
use crate::payload::{FinalReport, SleepTime, Stat};

/// The source of a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Asleep's `stat` object.
    Asleep,
    /// Computed by this server from the hypnogram.
    Hypnogram,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Asleep => "asleep",
            Source::Hypnogram => "hypnogram",
        }
    }

    pub fn is_hypnogram(self) -> bool {
        self == Source::Hypnogram
    }
}

/// One line of a report: a label and its value in plain units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// Stable name of the figure, used as `data-figure` in the page.
    pub key: &'static str,
    pub label: &'static str,
    pub value: String,
    pub source: Source,
}

/// Time and share of one sleep stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageRow {
    pub stage: Stage,
    pub time: Option<(String, Source)>,
    /// Share of the sleep period, as Asleep's ratios define it.
    pub share: Option<(String, Source)>,
}

impl StageRow {
    pub fn name(&self) -> &'static str {
        self.stage.name()
    }

    pub fn label(&self) -> &'static str {
        self.stage.label()
    }
}

/// One sleep cycle with its clock times.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleRow {
    /// Position from 1.
    pub number: usize,
    pub start: Option<String>,
    pub end: Option<String>,
    pub length: Option<String>,
}

/// A peculiarity code with its meaning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peculiarity {
    pub code: String,
    /// Plain-words meaning; `None` for a code this server does not know.
    pub explanation: Option<&'static str>,
}

/// Returns the meaning of a peculiarity code Asleep sends, or `None` for an
/// unknown code.
pub fn explain_peculiarity(code: &str) -> Option<&'static str> {
    Some(match code {
        "IN_PROGRESS" => {
            "The session was still being analysed when this report was sent, so Asleep sent no statistics yet."
        }
        "NEVER_SLEPT" => "No sleep was detected during the session.",
        "TOO_SHORT_FOR_ANALYSIS" => "The recording is shorter than 20 minutes, too short for Asleep to analyse.",
        "TOO_LONG_FOR_ANALYSIS" => "The recording is longer than 24 hours, too long for Asleep to analyse.",
        "TOO_MANY_DEFECTS_IN_SLEEP_STAGES" => {
            "Too many epochs have no usable data, so Asleep could not compute reliable statistics."
        }
        "NO_BREATHING_STABILITY" => {
            "Breathing stability was not analysed for this session, so breathing figures are missing."
        }
        // NOTE: Asleep's documentation lists this code without describing
        // it, so the text restates its name and its one documented effect,
        // `stat: null`.
        "NO_REALTIME_POLLING" => {
            "Results were not polled in real time during this session, and Asleep sends no statistics for such sessions."
        }
        _ => return None,
    })
}

/// Peculiarities after which Asleep sends `stat: null`.
const PECULIARITIES_WITHOUT_STAT: [&str; 4] = [
    "IN_PROGRESS",
    "NO_REALTIME_POLLING",
    "TOO_SHORT_FOR_ANALYSIS",
    "TOO_MANY_DEFECTS_IN_SLEEP_STAGES",
];

/// Everything the report page shows below the hypnogram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportSummary {
    pub figures: Vec<Figure>,
    pub stages: Vec<StageRow>,
    pub cycles: Vec<CycleRow>,
    /// Reason Asleep's statistics are missing; `None` when they arrived.
    pub stat_missing: Option<String>,
    pub peculiarities: Vec<Peculiarity>,
}

impl ReportSummary {
    /// Summarizes a final report, with clock times in `zone`.
    pub fn from_report(report: &FinalReport, zone: Tz) -> Self {
        let computed = HypnogramFigures::from_stages(&report.sleep_stages, &report.snoring_stages);
        let headline = Headline::from_report(report);
        let stat = report.stat.as_ref();
        let mut summary = Self::build(stat, &computed, &headline, zone);
        summary.peculiarities = report
            .peculiarities
            .iter()
            .map(|code| Peculiarity {
                code: code.clone(),
                explanation: explain_peculiarity(code),
            })
            .collect();
        if stat.is_none() {
            summary.stat_missing = Some(stat_missing_reason(&report.peculiarities));
        }
        if let Some(ratio) = report.missing_data_ratio {
            summary.figures.push(Figure {
                key: "missing_data",
                label: "Time without data",
                value: format_ratio(ratio),
                source: Source::Asleep,
            });
        }
        summary
    }

    /// Summarizes a night still in progress from its hypnogram so far.
    pub fn from_timeline(sleep_stages: &[i8], snoring_stages: &[i8], zone: Tz) -> Self {
        let computed = HypnogramFigures::from_stages(sleep_stages, snoring_stages);
        let headline = Headline::from_stages(sleep_stages, None);
        let mut summary = Self::build(None, &computed, &headline, zone);
        summary.stat_missing =
            Some("The night is still in progress: Asleep sends its statistics with the final report.".to_string());
        summary
    }

    fn build(stat: Option<&Stat>, computed: &HypnogramFigures, headline: &Headline, zone: Tz) -> Self {
        let asleep = |field: fn(&Stat) -> Option<f64>| stat.and_then(field);
        let mut figures = Vec::new();
        let mut push = |key: &'static str, label: &'static str, value: Option<(String, Source)>| {
            if let Some((value, source)) = value {
                figures.push(Figure {
                    key,
                    label,
                    value,
                    source,
                });
            }
        };

        push(
            "total_sleep",
            "Total sleep",
            pick(asleep(|s| s.time_in_sleep), Some(headline.total_sleep_seconds)).map(duration),
        );
        push(
            "time_in_bed",
            "Time in bed",
            pick(asleep(|s| s.time_in_bed), headline.time_in_bed_seconds).map(duration),
        );
        let efficiency = match asleep(|s| s.sleep_efficiency) {
            Some(percent) => Some((percent, Source::Asleep)),
            None => headline
                .sleep_efficiency_percent
                .map(|percent| (percent, Source::Hypnogram)),
        };
        push(
            "sleep_efficiency",
            "Sleep efficiency",
            efficiency.map(|(percent, source)| (format_percent(percent), source)),
        );
        push(
            "sleep_latency",
            "Time to fall asleep",
            pick(asleep(|s| s.sleep_latency), computed.sleep_latency_seconds).map(duration),
        );
        match stat.and_then(|stat| stat.sleep_time.as_ref()) {
            Some(SleepTime::Clock(time)) => push(
                "fell_asleep_at",
                "Fell asleep at",
                Some((format_clock(time, zone), Source::Asleep)),
            ),
            Some(SleepTime::Duration(seconds)) => push(
                "sleep_time",
                "Sleep time",
                Some((format_duration(*seconds), Source::Asleep)),
            ),
            None => {}
        }
        if let Some(time) = stat.and_then(|stat| stat.wake_time) {
            push(
                "woke_up_at",
                "Woke up at",
                Some((format_clock(&time, zone), Source::Asleep)),
            );
        }
        push(
            "wakeup_latency",
            "Time in bed after waking up",
            pick(asleep(|s| s.wakeup_latency), computed.wakeup_latency_seconds).map(duration),
        );
        push(
            "waso_count",
            "Awakenings after falling asleep (WASO)",
            pick(asleep(|s| s.waso_count), Some(computed.waso_count as i64)).map(count),
        );
        push(
            "longest_waso",
            "Longest awakening",
            pick(asleep(|s| s.longest_waso), Some(computed.longest_waso_seconds)).map(duration),
        );

        let cycles = stat.map(|stat| cycle_rows(stat, zone)).unwrap_or_default();
        let listed_cycles = stat
            .filter(|stat| !stat.sleep_cycles.is_empty())
            .map(|stat| stat.sleep_cycles.len() as f64);
        push(
            "sleep_cycle_count",
            "Sleep cycles",
            pick(
                asleep(|s| s.sleep_cycle_count).or(listed_cycles),
                Some(computed.sleep_cycle_count as i64),
            )
            .map(count),
        );
        let mean_cycle = asleep(|s| s.sleep_cycle).or_else(|| stat.and_then(mean_listed_cycle_seconds));
        push(
            "sleep_cycle_length",
            "Average sleep-cycle length",
            pick(
                mean_cycle,
                computed.sleep_cycle_seconds.map(|seconds| seconds.round() as i64),
            )
            .map(duration),
        );

        push(
            "snoring_time",
            "Snoring",
            pick(asleep(|s| s.time_in_snoring), Some(computed.time_in_snoring_seconds)).map(duration),
        );
        let computed_snoring_share = (computed.time_in_sleep_period_seconds > 0)
            .then(|| computed.time_in_snoring_seconds as f64 / computed.time_in_sleep_period_seconds as f64);
        push(
            "snoring_share",
            "Snoring, share of the sleep period",
            pick_ratio(asleep(|s| s.snoring_ratio), computed_snoring_share),
        );
        push(
            "snoring_count",
            "Snoring episodes",
            pick(asleep(|s| s.snoring_count), Some(computed.snoring_count as i64)).map(count),
        );
        push(
            "unstable_breathing",
            "Unstable breathing, share of the sleep period",
            pick_ratio(asleep(|s| s.unstable_breath_ratio), None),
        );
        if let Some(pattern) = stat.and_then(|stat| stat.breathing_pattern.clone()) {
            push(
                "breathing_pattern",
                "Breathing pattern",
                Some((pattern, Source::Asleep)),
            );
        }
        if let Some(score) = asleep(|s| s.sleep_index) {
            push(
                "sleep_score",
                "Sleep score",
                Some((format!("{} of 100", score.round()), Source::Asleep)),
            );
        }
        if computed.unknown_seconds > 0 {
            push(
                "unknown_epochs",
                "Epochs without a sleep stage",
                Some((format_duration(computed.unknown_seconds), Source::Hypnogram)),
            );
        }

        let stages = Stage::LANES
            .iter()
            .rev()
            .map(|stage| stage_row(*stage, stat, computed))
            .collect();
        Self {
            figures,
            stages,
            cycles,
            stat_missing: None,
            peculiarities: Vec::new(),
        }
    }

    /// Returns whether any figure was computed from the hypnogram, which the
    /// page then explains in a footnote.
    pub fn uses_hypnogram(&self) -> bool {
        self.figures.iter().any(|figure| figure.source.is_hypnogram())
            || self.stages.iter().any(|row| {
                [&row.time, &row.share]
                    .iter()
                    .any(|value| matches!(value, Some((_, Source::Hypnogram))))
            })
    }
}

/// Explains a missing `stat` by the peculiarities that cause it.
fn stat_missing_reason(peculiarities: &[String]) -> String {
    let causes: Vec<&str> = peculiarities
        .iter()
        .map(String::as_str)
        .filter(|code| PECULIARITIES_WITHOUT_STAT.contains(code))
        .collect();
    if causes.is_empty() {
        "Asleep sent no statistics for this night.".to_string()
    } else {
        format!(
            "Asleep sent no statistics for this night because of {}.",
            causes.join(", ")
        )
    }
}

/// Picks Asleep's value, else the computed one, and returns which it took.
fn pick(asleep: Option<f64>, computed: Option<i64>) -> Option<(f64, Source)> {
    match (asleep, computed) {
        (Some(value), _) => Some((value, Source::Asleep)),
        (None, Some(value)) => Some((value as f64, Source::Hypnogram)),
        (None, None) => None,
    }
}

fn pick_ratio(asleep: Option<f64>, computed: Option<f64>) -> Option<(String, Source)> {
    match (asleep, computed) {
        (Some(ratio), _) => Some((format_ratio(ratio), Source::Asleep)),
        (None, Some(ratio)) => Some((format_ratio(ratio), Source::Hypnogram)),
        (None, None) => None,
    }
}

fn duration((seconds, source): (f64, Source)) -> (String, Source) {
    (format_duration(seconds.round() as i64), source)
}

fn count((value, source): (f64, Source)) -> (String, Source) {
    (format!("{}", value.round() as i64), source)
}

fn stage_row(stage: Stage, stat: Option<&Stat>, computed: &HypnogramFigures) -> StageRow {
    let (time, ratio) = match (stat, stage) {
        (None, _) => (None, None),
        (Some(stat), Stage::Wake) => (stat.time_in_wake, stat.wake_ratio),
        (Some(stat), Stage::Rem) => (stat.time_in_rem, stat.rem_ratio),
        (Some(stat), Stage::Light) => (stat.time_in_light, stat.light_ratio),
        (Some(stat), Stage::Deep) => (stat.time_in_deep, stat.deep_ratio),
    };
    StageRow {
        stage,
        time: pick(time, Some(computed.stage_seconds(stage))).map(duration),
        share: pick_ratio(ratio, computed.stage_share(stage)),
    }
}

/// Lists the sleep cycles in whichever form the statistics carry them: a
/// list of cycles, or the boundaries `sleep_cycle_time` (sleep onset, then
/// the end of each cycle).
fn cycle_rows(stat: &Stat, zone: Tz) -> Vec<CycleRow> {
    let row = |number: usize, start: Option<&DateTime<FixedOffset>>, end: Option<&DateTime<FixedOffset>>| CycleRow {
        number,
        start: start.map(|time| format_clock(time, zone)),
        end: end.map(|time| format_clock(time, zone)),
        length: start
            .zip(end)
            .map(|(start, end)| format_duration((*end - *start).num_seconds())),
    };
    if !stat.sleep_cycles.is_empty() {
        return stat
            .sleep_cycles
            .iter()
            .enumerate()
            .map(|(position, cycle)| row(position + 1, cycle.start_time.as_ref(), cycle.end_time.as_ref()))
            .collect();
    }
    stat.sleep_cycle_time
        .windows(2)
        .enumerate()
        .map(|(position, bounds)| row(position + 1, Some(&bounds[0]), Some(&bounds[1])))
        .collect()
}

fn mean_listed_cycle_seconds(stat: &Stat) -> Option<f64> {
    let lengths: Vec<i64> = stat
        .sleep_cycles
        .iter()
        .filter_map(|cycle| Some((cycle.end_time? - cycle.start_time?).num_seconds()))
        .collect();
    (!lengths.is_empty()).then(|| lengths.iter().sum::<i64>() as f64 / lengths.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::parse_zone;

    use crate::payload::fixtures::final_report as fixture_report;

    fn figure<'a>(summary: &'a ReportSummary, key: &str) -> &'a Figure {
        summary
            .figures
            .iter()
            .find(|figure| figure.key == key)
            .unwrap_or_else(|| panic!("no figure {key} in {:?}", summary.figures))
    }

    #[test]
    fn documented_stat_style_summarizes() {
        let report = fixture_report("session-enveloped.json", "G-20261101-demo-user-0001");
        let summary = ReportSummary::from_report(&report, parse_zone(&report.timezone));
        assert_eq!(summary.stat_missing, None);

        assert_eq!(figure(&summary, "total_sleep").value, "6 h 52 min");
        assert_eq!(figure(&summary, "sleep_efficiency").value, "92%");
        assert_eq!(figure(&summary, "sleep_efficiency").source, Source::Asleep);
        assert_eq!(figure(&summary, "fell_asleep_at").value, "00:05");
        assert_eq!(figure(&summary, "woke_up_at").value, "07:05");
        assert_eq!(figure(&summary, "sleep_cycle_length").value, "1 h 32 min");
        assert_eq!(figure(&summary, "sleep_cycle_count").value, "4");
        assert_eq!(figure(&summary, "waso_count").value, "7");
        assert_eq!(figure(&summary, "snoring_share").value, "19%");
        assert!(summary.figures.iter().all(|figure| figure.key != "sleep_time"));

        assert_eq!(summary.cycles.len(), 4);
        assert_eq!(summary.cycles[0].start.as_deref(), Some("00:05"));
        assert_eq!(summary.cycles[0].end.as_deref(), Some("02:24"));

        let light = summary.stages.iter().find(|row| row.stage == Stage::Light).unwrap();
        assert_eq!(light.time, Some(("4 h 57 min".to_string(), Source::Asleep)));
        assert_eq!(light.share, Some(("71%".to_string(), Source::Asleep)));

        assert_eq!(summary.peculiarities[0].code, "NO_BREATHING_STABILITY");
        assert!(summary.peculiarities[0].explanation.is_some());
    }

    #[test]
    fn guide_stat_style_summarizes() {
        let report = fixture_report("session-flat.json", "user123");
        let summary = ReportSummary::from_report(&report, parse_zone(&report.timezone));
        assert_eq!(figure(&summary, "sleep_time").value, "4 h 10 min");
        assert!(summary.figures.iter().all(|figure| figure.key != "fell_asleep_at"));
        assert_eq!(figure(&summary, "sleep_efficiency").value, "90.3%");
        assert_eq!(figure(&summary, "sleep_cycle_count").value, "2");
        assert_eq!(figure(&summary, "sleep_cycle_count").source, Source::Asleep);
        assert_eq!(figure(&summary, "sleep_cycle_length").value, "1 h 46 min");
        assert_eq!(summary.cycles.len(), 2);
        assert_eq!(summary.cycles[0].start.as_deref(), Some("22:15"));
        assert_eq!(summary.cycles[0].length.as_deref(), Some("1 h 50 min"));
        // The guide's statistics carry stage times but no ratios.
        let deep = summary.stages.iter().find(|row| row.stage == Stage::Deep).unwrap();
        assert_eq!(deep.time, Some(("45 min".to_string(), Source::Asleep)));
        assert!(matches!(deep.share, Some((_, Source::Hypnogram))));
        assert!(summary.uses_hypnogram());
    }

    #[test]
    fn missing_stat_is_explained_and_computed() {
        let mut report = fixture_report("session-flat.json", "user123");
        report.stat = None;
        report.peculiarities = vec!["TOO_MANY_DEFECTS_IN_SLEEP_STAGES".into(), "SOMETHING_NEW".into()];
        let summary = ReportSummary::from_report(&report, Tz::UTC);
        let reason = summary.stat_missing.as_deref().unwrap();
        assert!(reason.contains("TOO_MANY_DEFECTS_IN_SLEEP_STAGES"), "{reason}");
        assert!(!reason.contains("SOMETHING_NEW"), "{reason}");
        assert_eq!(figure(&summary, "total_sleep").source, Source::Hypnogram);
        assert_eq!(figure(&summary, "total_sleep").value, "4 h 10 min");
        assert_eq!(figure(&summary, "sleep_cycle_length").source, Source::Hypnogram);
        assert_eq!(summary.peculiarities[1].explanation, None);

        report.peculiarities.clear();
        let summary = ReportSummary::from_report(&report, Tz::UTC);
        assert_eq!(
            summary.stat_missing.as_deref(),
            Some("Asleep sent no statistics for this night.")
        );
    }

    #[test]
    fn every_documented_peculiarity_is_explained() {
        for code in [
            "IN_PROGRESS",
            "NEVER_SLEPT",
            "TOO_SHORT_FOR_ANALYSIS",
            "TOO_LONG_FOR_ANALYSIS",
            "TOO_MANY_DEFECTS_IN_SLEEP_STAGES",
            "NO_BREATHING_STABILITY",
            "NO_REALTIME_POLLING",
        ] {
            assert!(explain_peculiarity(code).is_some(), "{code}");
        }
    }
}
