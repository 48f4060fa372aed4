//! Everything the report page shows beside the hypnogram, in plain units:
//! the main figures, the statistics table beside Asleep's, the stage shares,
//! the WASO episodes, the sleep cycles, the stage periods and the
//! peculiarities.

use chrono::{DateTime, Duration, FixedOffset};
use serde::Serialize;

use super::comparison::{Kind, StatisticRow, statistic_rows};
use super::format::{NightClock, format_duration, format_percent};
use super::peculiarities::{Peculiarity, explain_all, stat_missing_reason};
use super::share_bar::{self, Share};
use crate::hypnogram::{Svg, stage_periods};
use crate::payload::{EPOCH_SECONDS, FinalReport};
use crate::statistics::{SleepStatistics, Staging, UNRELIABLE_UNKNOWN_RATIO};

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

/// One of the main figures at the top of a report, computed by this server.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// Stable name of the figure, used as `data-figure` in the page.
    pub key: &'static str,
    pub label: &'static str,
    pub value: String,
}

/// Time and share of one sleep stage: a row of the stage table, which is
/// also the stage-share bar's data table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageRow {
    /// The stage's name in classes, such as `light`, or `sleep` in a
    /// two-stage night.
    pub name: &'static str,
    pub label: &'static str,
    pub time: String,
    /// Share of the sleep period; `None` for a night without sleep.
    pub share: Option<String>,
}

/// A clock time with its machine-readable form for `<time datetime>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeLabel {
    /// A clock time in the session's zone, such as `01:30 EST`, or the time
    /// since the start when the start is unknown.
    pub text: String,
    /// RFC 3339 with the zone's offset at that instant; `None` when the
    /// start is unknown.
    pub datetime: Option<String>,
}

/// One WASO episode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WasoRow {
    pub start: TimeLabel,
    pub length: String,
}

/// One sleep cycle, from sleep onset or the end of the previous cycle to
/// the end of its REM cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleRow {
    /// Position from 1.
    pub number: usize,
    pub start: TimeLabel,
    pub end: TimeLabel,
    pub length: String,
}

/// One run of the hypnogram: a row of its data table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodRow {
    pub start: TimeLabel,
    pub end: TimeLabel,
    /// The stage's label, or `No data`.
    pub stage: &'static str,
    pub length: String,
}

/// How many epochs have no data, and whether that leaves the night's
/// statistics reliable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnknownShare {
    pub epochs: u32,
    pub total: u32,
    /// Unknown epochs over all epochs, as a percentage such as `12.5%`.
    pub percent: String,
    pub reliable: bool,
    /// The threshold above which a night is unreliable, such as `10%`.
    pub threshold: String,
}

/// Everything the report page shows below the hypnogram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportSummary {
    pub staging: Staging,
    pub figures: Vec<Figure>,
    pub statistics: Vec<StatisticRow>,
    /// Labels of the statistics where this server and Asleep disagree
    /// beyond rounding.
    pub disagreements: Vec<String>,
    pub stages: Vec<StageRow>,
    /// The stage-share bar; `None` for a night without sleep.
    #[serde(skip)]
    pub share_bar: Option<Svg>,
    pub waso: Vec<WasoRow>,
    pub cycles: Vec<CycleRow>,
    pub periods: Vec<PeriodRow>,
    /// `None` for a night without epochs.
    pub unknown: Option<UnknownShare>,
    /// Reason Asleep's statistics are missing; `None` when they arrived.
    pub stat_missing: Option<String>,
    pub peculiarities: Vec<Peculiarity>,
}

/// Places epochs and instants of one night in time for readers.
struct Timing {
    /// Start of epoch 0.
    start: DateTime<FixedOffset>,
    /// `None` when the start is unknown, so times read as time since start.
    clock: Option<NightClock>,
}

impl Timing {
    fn at(&self, time: DateTime<FixedOffset>) -> TimeLabel {
        match &self.clock {
            Some(clock) => TimeLabel {
                text: clock.format(&time),
                datetime: Some(clock.datetime(&time)),
            },
            None => TimeLabel {
                text: format!("{} after the start", format_duration((time - self.start).num_seconds())),
                datetime: None,
            },
        }
    }

    fn at_epoch(&self, epoch: usize) -> TimeLabel {
        self.at(self.start + Duration::seconds(epoch as i64 * EPOCH_SECONDS))
    }
}

impl ReportSummary {
    /// Summarizes one night. `statistics` are this server's, `None` for a
    /// night without epochs; `report` is the final report, `None` while the
    /// night is in progress. `clock` shows times in the session's zone;
    /// without it times count from the start.
    pub fn new(
        statistics: Option<&SleepStatistics>,
        report: Option<&FinalReport>,
        sleep_stages: &[i8],
        staging: Staging,
        clock: Option<NightClock>,
    ) -> Self {
        let stat = report.and_then(|report| report.stat.as_ref());
        let table_clock = clock.unwrap_or_else(NightClock::utc);
        let statistics_rows = statistic_rows(statistics, stat, staging, &table_clock);
        let disagreements = statistics_rows
            .iter()
            .filter(|row| row.disagreement.is_some())
            .map(|row| row.label.clone())
            .collect();
        let stat_missing = match report {
            None => {
                Some("The night is still in progress: Asleep sends its statistics with the final report.".to_string())
            }
            Some(report) if report.stat.is_none() => Some(stat_missing_reason(&report.peculiarities)),
            Some(_) => None,
        };
        let mut summary = Self {
            staging,
            figures: Vec::new(),
            statistics: statistics_rows,
            disagreements,
            stages: Vec::new(),
            share_bar: None,
            waso: Vec::new(),
            cycles: Vec::new(),
            periods: Vec::new(),
            unknown: None,
            stat_missing,
            peculiarities: report
                .map(|report| explain_all(&report.peculiarities))
                .unwrap_or_default(),
        };
        let Some(statistics) = statistics else {
            return summary;
        };

        let timing = Timing {
            start: statistics.start_time,
            clock,
        };
        summary.figures = figures(statistics, &timing, report);
        summary.stages = stage_rows(statistics, staging);
        if statistics.time_in_sleep_period > 0 {
            let shares: Vec<Share> = staging
                .lanes()
                .iter()
                .filter_map(|code| {
                    Some(Share {
                        code: *code,
                        ratio: statistics.stage_ratio(*code)?,
                    })
                })
                .collect();
            summary.share_bar = Some(share_bar::render(&shares, staging));
        }
        summary.waso = statistics
            .waso_episodes
            .iter()
            .map(|episode| WasoRow {
                start: timing.at_epoch(episode.start_epoch),
                length: format_duration(episode.epochs as i64 * EPOCH_SECONDS),
            })
            .collect();
        summary.cycles = statistics
            .sleep_cycle_time
            .windows(2)
            .enumerate()
            .map(|(index, bounds)| CycleRow {
                number: index + 1,
                start: timing.at(bounds[0]),
                end: timing.at(bounds[1]),
                length: format_duration((bounds[1] - bounds[0]).num_seconds()),
            })
            .collect();
        summary.periods = stage_periods(sleep_stages, staging)
            .into_iter()
            .map(|period| PeriodRow {
                start: timing.at_epoch(period.start_epoch),
                end: timing.at_epoch(period.start_epoch + period.epochs),
                stage: staging.label(period.code).unwrap_or("No data"),
                length: format_duration(period.epochs as i64 * EPOCH_SECONDS),
            })
            .collect();
        summary.unknown = Some(UnknownShare {
            epochs: statistics.unknown_epochs,
            total: statistics.epochs,
            percent: format_percent(statistics.unknown_ratio * 100.0),
            reliable: statistics.reliable,
            threshold: format_percent(UNRELIABLE_UNKNOWN_RATIO * 100.0),
        });
        summary
    }

    /// Returns the tolerance of each kind of statistic in words, for the
    /// sentence that explains the disagreement marker.
    pub fn tolerances(&self) -> String {
        Kind::ALL
            .iter()
            .map(|kind| kind.tolerance())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Returns whether a hypnogram period has no data, for the template.
    pub fn has_unknown(&self) -> bool {
        self.unknown.as_ref().is_some_and(|unknown| unknown.epochs > 0)
    }

    /// Returns whether the night is two-stage, for the template.
    pub fn two_stage(&self) -> bool {
        self.staging == Staging::TwoStage
    }
}

fn figures(statistics: &SleepStatistics, timing: &Timing, report: Option<&FinalReport>) -> Vec<Figure> {
    let mut figures = vec![
        Figure {
            key: "total_sleep",
            label: "Total sleep",
            value: format_duration(statistics.time_in_sleep),
        },
        Figure {
            key: "time_in_bed",
            label: "Time in bed",
            value: format_duration(statistics.time_in_bed),
        },
        Figure {
            key: "sleep_efficiency",
            label: "Sleep efficiency",
            value: format_percent(statistics.sleep_efficiency * 100.0),
        },
    ];
    if statistics.slept() {
        figures.extend([
            Figure {
                key: "sleep_latency",
                label: "Time to fall asleep",
                value: format_duration(statistics.sleep_latency),
            },
            Figure {
                key: "fell_asleep_at",
                label: "Fell asleep at",
                value: timing.at(statistics.sleep_time).text,
            },
            Figure {
                key: "woke_up_at",
                label: "Final awakening at",
                value: timing.at(statistics.wake_time).text,
            },
        ]);
    } else {
        figures.push(Figure {
            key: "sleep_latency",
            label: "Time to fall asleep",
            value: "did not fall asleep".to_string(),
        });
    }
    figures.push(Figure {
        key: "waso_count",
        label: "Awakenings after sleep onset (WASO)",
        value: statistics.waso_count.to_string(),
    });
    figures.push(Figure {
        key: "unknown_epochs",
        label: "Epochs without data",
        value: format!(
            "{} ({} of {})",
            format_percent(statistics.unknown_ratio * 100.0),
            statistics.unknown_epochs,
            statistics.epochs
        ),
    });
    if let Some(ratio) = report.and_then(|report| report.missing_data_ratio) {
        figures.push(Figure {
            key: "missing_data",
            label: "Missing data, as Asleep reports it",
            value: format_percent(ratio * 100.0),
        });
    }
    figures
}

fn stage_rows(statistics: &SleepStatistics, staging: Staging) -> Vec<StageRow> {
    staging
        .lanes()
        .iter()
        .filter_map(|code| {
            Some(StageRow {
                name: staging.name(*code)?,
                label: staging.label(*code)?,
                time: format_duration(statistics.stage_time(*code)?),
                share: statistics
                    .slept()
                    .then(|| statistics.stage_ratio(*code))
                    .flatten()
                    .map(|ratio| format_percent(ratio * 100.0)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::fixtures::final_report;
    use crate::report::parse_zone;
    use crate::statistics::{StageModel, UNKNOWN};

    fn summary(report: &FinalReport, model: StageModel) -> ReportSummary {
        let statistics = SleepStatistics::from_report(report, model).unwrap();
        let zone = parse_zone(&report.timezone);
        let clock = NightClock::new(zone, statistics.start_time, statistics.end_time);
        ReportSummary::new(
            Some(&statistics),
            Some(report),
            &report.sleep_stages,
            statistics.staging,
            Some(clock),
        )
    }

    fn figure<'a>(summary: &'a ReportSummary, key: &str) -> &'a str {
        &summary
            .figures
            .iter()
            .find(|figure| figure.key == key)
            .unwrap_or_else(|| panic!("no figure {key} in {:?}", summary.figures))
            .value
    }

    #[test]
    fn documented_night_summarizes() {
        let report = final_report("session-enveloped.json", "G-20261101-demo-user-0001");
        let summary = summary(&report, StageModel::Automatic);
        assert_eq!(summary.stat_missing, None);
        assert_eq!(figure(&summary, "total_sleep"), "6 h 52 min");
        assert_eq!(figure(&summary, "sleep_efficiency"), "92%");
        assert_eq!(figure(&summary, "fell_asleep_at"), "00:05");
        assert_eq!(figure(&summary, "woke_up_at"), "07:05");
        assert_eq!(figure(&summary, "waso_count"), "7");
        assert_eq!(figure(&summary, "unknown_epochs"), "0% (0 of 900)");
        assert!(summary.disagreements.is_empty(), "{:?}", summary.disagreements);

        assert_eq!(summary.cycles.len(), 4);
        assert_eq!(summary.cycles[0].start.text, "00:05");
        assert_eq!(summary.cycles[0].end.text, "02:24");
        assert_eq!(summary.waso.len(), 7);
        assert!(summary.share_bar.is_some());

        let light = summary.stages.iter().find(|row| row.name == "light").unwrap();
        assert_eq!(light.time, "4 h 57 min");
        assert_eq!(light.share.as_deref(), Some("71%"));
        assert_eq!(summary.peculiarities[0].code, "NO_BREATHING_STABILITY");

        let periods_epochs: usize = summary.periods.len();
        assert!(periods_epochs > 10);
        assert_eq!(summary.periods[0].start.text, "23:47");
        assert_eq!(summary.periods.last().unwrap().end.text, "07:17");
    }

    #[test]
    fn missing_stat_is_explained() {
        let mut report = final_report("session-flat.json", "user123");
        report.stat = None;
        report.peculiarities = vec!["TOO_SHORT_FOR_ANALYSIS".into()];
        let summary = summary(&report, StageModel::Automatic);
        let reason = summary.stat_missing.as_deref().unwrap();
        assert!(reason.contains("TOO_SHORT_FOR_ANALYSIS"), "{reason}");
        assert_eq!(figure(&summary, "total_sleep"), "4 h 10 min");
        assert!(summary.statistics.iter().all(|row| row.asleep.is_none()));
    }

    #[test]
    fn two_stage_night_has_wake_and_sleep() {
        let report = final_report("session-enveloped.json", "G-20261101-demo-user-0001");
        let summary = summary(&report, StageModel::TwoStage);
        let names: Vec<&str> = summary.stages.iter().map(|row| row.name).collect();
        assert_eq!(names, ["wake", "sleep"]);
        assert!(summary.cycles.is_empty());
        assert!(
            summary
                .periods
                .iter()
                .all(|row| matches!(row.stage, "Wake" | "Sleep" | "No data"))
        );
        assert!(!summary.share_bar.unwrap().as_str().contains("Light"));
    }

    #[test]
    fn unknown_share_flags_unreliable_night() {
        let mut report = final_report("session-flat.json", "user123");
        for stage in &mut report.sleep_stages[100..200] {
            *stage = UNKNOWN;
        }
        let summary = summary(&report, StageModel::Automatic);
        let unknown = summary.unknown.as_ref().unwrap();
        assert_eq!((unknown.epochs, unknown.total), (100, 554));
        assert_eq!(unknown.percent, "18.1%");
        assert!(!unknown.reliable);
        assert!(summary.has_unknown());
        assert!(summary.periods.iter().any(|row| row.stage == "No data"));
    }
}
