//! Sleep statistics computed from a hypnogram exactly as Asleep's own
//! calculator computes them: pysleep 0.2.0 (github.com/asleep-ai/pysleep,
//! `pysleep/calculator/calculator.py`), field for field and rounding for
//! rounding. `tests/pysleep.rs` checks every field of every case that
//! `tests/pysleep/generate.sh` wrote with the real pysleep.
//!
//! # Unknown epochs
//!
//! pysleep rejects `-1` (no data). Here an unknown epoch is neither sleep
//! nor wake: every rule of the calculator that asks "is this epoch wake?",
//! "is it sleep?" or "is it REM?" answers no for it. So unknown epochs
//! - count in the latencies, which measure elapsed time;
//! - count in no stage time, so they leave `time_in_sleep_period` and the
//!   stage ratios, and lower `sleep_efficiency`, whose time in bed comes
//!   from the session's timestamps;
//! - end a run of wake, so wake, unknown, wake is two WASO episodes;
//! - widen the gap between REM epochs like any other non-REM epoch.
//!
//! A night whose unknown share exceeds [`UNRELIABLE_UNKNOWN_RATIO`] is
//! flagged as unreliable.
//!
//! # Two-stage nights
//!
//! On Asleep's basic plan, stages are `0` wake and `1` sleep. pysleep reads
//! `1` as light sleep; a two-stage night's statistics leave out everything
//! that needs light, deep and REM apart: per-stage times, ratios and
//! latencies and the sleep cycles, which are found from REM.

use chrono::{DateTime, Duration, FixedOffset};
use serde::Serialize;

use crate::payload::FinalReport;

pub use crate::payload::EPOCH_SECONDS;

/// Stage codes of `sleep_stages`.
pub const UNKNOWN: i8 = -1;
pub const WAKE: i8 = 0;
pub const LIGHT: i8 = 1;
pub const DEEP: i8 = 2;
pub const REM: i8 = 3;

/// REM epochs separated by at most this many other epochs belong to one
/// REM cluster (pysleep's `THRESHOLD_REM_CLUSTER_DISTANCE`).
pub const REM_CLUSTER_MAX_GAP: usize = 20;

/// A REM cluster ends a sleep cycle when it contains at least this many REM
/// epochs (pysleep's `THRESHOLD_REM_COUNT`).
pub const REM_CLUSTER_MIN_EPOCHS: usize = 20;

/// Share of unknown epochs above which a night's statistics are flagged as
/// unreliable. Asleep documents no threshold of its own; a tenth of the
/// night without data can move every ratio by several points.
pub const UNRELIABLE_UNKNOWN_RATIO: f64 = 0.1;

/// The stage model of a deployment, chosen by `--stage-model`: the meaning
/// of its stage codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StageModel {
    /// `0` wake and `1` sleep, as on Asleep's basic plan.
    #[value(name = "two")]
    TwoStage,
    /// `0` wake, `1` light, `2` deep, `3` REM.
    #[value(name = "four")]
    FourStage,
    /// Four-stage when a night contains any deep or REM epoch, otherwise
    /// two-stage.
    #[default]
    #[value(name = "auto")]
    Automatic,
}

impl StageModel {
    /// Decides how one night's stages are read. Under [`StageModel::Automatic`]
    /// a night with no deep or REM epoch so far reads as two-stage, which
    /// is also what the first minutes of a four-stage night look like.
    pub fn staging(self, sleep_stages: &[i8]) -> Staging {
        match self {
            StageModel::TwoStage => Staging::TwoStage,
            StageModel::FourStage => Staging::FourStage,
            StageModel::Automatic if sleep_stages.iter().any(|code| matches!(*code, DEEP | REM)) => Staging::FourStage,
            StageModel::Automatic => Staging::TwoStage,
        }
    }
}

/// The reading of one night's stage codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Staging {
    TwoStage,
    FourStage,
}

impl Staging {
    /// Returns the name readers see for a stage code, such as `Light`, or
    /// `Sleep` for any sleep code in a two-stage night, or `None` for no data.
    pub fn label(self, code: i8) -> Option<&'static str> {
        Some(match (self, code) {
            (_, WAKE) => "Wake",
            (Staging::TwoStage, LIGHT | DEEP | REM) => "Sleep",
            (Staging::FourStage, LIGHT) => "Light",
            (Staging::FourStage, DEEP) => "Deep",
            (Staging::FourStage, REM) => "REM",
            _ => return None,
        })
    }

    /// Returns the stage's name in ids, CSS classes, JSON and CSV, such as
    /// `light`, or `sleep` for any sleep code in a two-stage night, or `None`
    /// for no data.
    pub fn name(self, code: i8) -> Option<&'static str> {
        Some(match (self, code) {
            (_, WAKE) => "wake",
            (Staging::TwoStage, LIGHT | DEEP | REM) => "sleep",
            (Staging::FourStage, LIGHT) => "light",
            (Staging::FourStage, DEEP) => "deep",
            (Staging::FourStage, REM) => "rem",
            _ => return None,
        })
    }

    /// Returns the stage codes this staging draws, top lane first: wake,
    /// REM, light, deep for four stages; wake and sleep for two.
    pub fn lanes(self) -> &'static [i8] {
        match self {
            Staging::TwoStage => &[WAKE, LIGHT],
            Staging::FourStage => &[WAKE, REM, LIGHT, DEEP],
        }
    }
}

/// Returns whether a stage code is sleep: light, deep or REM (or sleep in
/// a two-stage night).
pub fn is_sleep(code: i8) -> bool {
    matches!(code, LIGHT | DEEP | REM)
}

/// A run of consecutive epochs, such as one WASO episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EpochRun {
    /// Index of the run's first epoch.
    pub start_epoch: usize,
    pub epochs: usize,
}

/// A night's statistics, named as Asleep names them. Durations are whole
/// seconds except `sleep_cycle`; ratios are 0..1 with two decimals.
///
/// Fields Asleep's calculator always fills are `Option` here when a
/// two-stage night cannot give them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SleepStatistics {
    pub start_time: DateTime<FixedOffset>,
    pub end_time: DateTime<FixedOffset>,
    /// Sleep onset: start plus `sleep_latency`.
    pub sleep_time: DateTime<FixedOffset>,
    /// Final awakening: end minus `wakeup_latency`.
    pub wake_time: DateTime<FixedOffset>,
    pub sleep_latency: i64,
    pub wakeup_latency: i64,
    pub light_latency: Option<i64>,
    pub deep_latency: Option<i64>,
    pub rem_latency: Option<i64>,
    pub time_in_bed: i64,
    pub time_in_sleep_period: i64,
    pub time_in_sleep: i64,
    pub time_in_wake: i64,
    pub time_in_light: Option<i64>,
    pub time_in_deep: Option<i64>,
    pub time_in_rem: Option<i64>,
    pub sleep_efficiency: f64,
    pub sleep_ratio: f64,
    pub wake_ratio: f64,
    pub light_ratio: Option<f64>,
    pub deep_ratio: Option<f64>,
    pub rem_ratio: Option<f64>,
    pub waso_count: u32,
    pub longest_waso: i64,
    pub sleep_cycle_count: Option<u32>,
    /// Mean sleep-cycle length in seconds, to the microsecond as pysleep's
    /// `timedelta` stores it; `None` without a cycle.
    pub sleep_cycle: Option<f64>,
    /// Sleep onset, then the end of each sleep cycle; empty without a cycle.
    pub sleep_cycle_time: Vec<DateTime<FixedOffset>>,
    /// Snoring epochs in the sleep period × 30; `None` when no snoring data
    /// arrived.
    pub time_in_snoring: Option<i64>,
    /// The rest of the sleep period, as Asleep counts it.
    pub time_in_no_snoring: Option<i64>,
    /// Snoring share of the sleep period, two decimals.
    pub snoring_ratio: Option<f64>,
    pub no_snoring_ratio: Option<f64>,
    /// Runs of snoring epochs in the sleep period.
    pub snoring_count: Option<u32>,

    /// The figures below are this server's, beyond Asleep's statistics.
    pub staging: Staging,
    pub epochs: u32,
    pub unknown_epochs: u32,
    /// Unknown epochs over all epochs, unrounded.
    pub unknown_ratio: f64,
    /// False when `unknown_ratio` exceeds [`UNRELIABLE_UNKNOWN_RATIO`].
    pub reliable: bool,
    /// Index of the first sleep epoch; `None` for a night without sleep.
    pub sleep_onset_epoch: Option<usize>,
    /// Index of the last REM epoch of each sleep cycle.
    pub cycle_end_epochs: Vec<usize>,
    /// Every run of wake between sleep onset and the final awakening.
    pub waso_episodes: Vec<EpochRun>,
}

/// The reason statistics cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatisticsError {
    #[error("the night has no epochs")]
    NoEpochs,
    #[error("the session ends before it starts")]
    EndBeforeStart,
}

impl SleepStatistics {
    /// Computes a night's statistics. `end` defaults to the start plus the
    /// length of the hypnogram, as in pysleep.
    pub fn compute(
        sleep_stages: &[i8],
        snoring_stages: &[i8],
        start: DateTime<FixedOffset>,
        end: Option<DateTime<FixedOffset>>,
        staging: Staging,
    ) -> Result<Self, StatisticsError> {
        if sleep_stages.is_empty() {
            return Err(StatisticsError::NoEpochs);
        }
        let end = end.unwrap_or_else(|| start + epochs_duration(sleep_stages.len()));
        if end <= start {
            return Err(StatisticsError::EndBeforeStart);
        }
        let mut statistics = calculate(sleep_stages, start, end);
        statistics.add_snoring(snoring_stages);
        if staging == Staging::TwoStage {
            statistics.drop_stage_figures();
        }
        Ok(statistics)
    }

    /// Computes the statistics of a final report, with its stages read
    /// by `model`.
    pub fn from_report(report: &FinalReport, model: StageModel) -> Result<Self, StatisticsError> {
        Self::compute(
            &report.sleep_stages,
            &report.snoring_stages,
            report.start_time,
            report.end_time,
            model.staging(&report.sleep_stages),
        )
    }

    /// Adds the snoring figures. Asleep's reports count them over the sleep
    /// period: its `time_in_no_snoring` is `time_in_sleep_period` minus
    /// `time_in_snoring`, and its `snoring_ratio` is snoring time over the
    /// sleep period. Outside the sleep period snoring is not counted.
    fn add_snoring(&mut self, snoring_stages: &[i8]) {
        if !snoring_stages.iter().any(|value| matches!(*value, 0 | 1)) {
            return;
        }
        let period = match self.sleep_onset_epoch {
            Some(onset) => {
                let last = self.epochs as usize - 1 - (self.wakeup_latency / EPOCH_SECONDS) as usize;
                snoring_stages.get(onset..=last.min(snoring_stages.len().saturating_sub(1)))
            }
            None => None,
        };
        let period = period.unwrap_or_default();
        let time_in_snoring = epochs_seconds(period.iter().filter(|value| **value == 1).count());
        let snoring_ratio = if self.time_in_sleep_period > 0 {
            round_second(time_in_snoring as f64 / self.time_in_sleep_period as f64)
        } else {
            0.0
        };
        self.time_in_snoring = Some(time_in_snoring);
        self.time_in_no_snoring = Some(self.time_in_sleep_period - time_in_snoring);
        self.snoring_ratio = Some(snoring_ratio);
        self.no_snoring_ratio = Some(if self.time_in_sleep_period > 0 {
            round_second(1.0 - snoring_ratio)
        } else {
            0.0
        });
        self.snoring_count = Some(runs(period, |value| value == 1).count() as u32);
    }

    fn drop_stage_figures(&mut self) {
        self.staging = Staging::TwoStage;
        self.light_latency = None;
        self.deep_latency = None;
        self.rem_latency = None;
        self.time_in_light = None;
        self.time_in_deep = None;
        self.time_in_rem = None;
        self.light_ratio = None;
        self.deep_ratio = None;
        self.rem_ratio = None;
        self.sleep_cycle_count = None;
        self.sleep_cycle = None;
        self.sleep_cycle_time.clear();
        self.cycle_end_epochs.clear();
    }

    /// Returns the seconds of a stage code: wake counts only after sleep
    /// onset, as in `time_in_wake`; `None` for a figure the night's
    /// staging cannot give.
    pub fn stage_time(&self, code: i8) -> Option<i64> {
        match code {
            WAKE => Some(self.time_in_wake),
            LIGHT if self.staging == Staging::TwoStage => Some(self.time_in_sleep),
            LIGHT => self.time_in_light,
            DEEP => self.time_in_deep,
            REM => self.time_in_rem,
            _ => None,
        }
    }

    /// Returns a stage code's ratio of the sleep period, as [`Self::stage_time`].
    pub fn stage_ratio(&self, code: i8) -> Option<f64> {
        match code {
            WAKE => Some(self.wake_ratio),
            LIGHT if self.staging == Staging::TwoStage => Some(self.sleep_ratio),
            LIGHT => self.light_ratio,
            DEEP => self.deep_ratio,
            REM => self.rem_ratio,
            _ => None,
        }
    }

    /// Returns whether the sleeper slept at all.
    pub fn slept(&self) -> bool {
        self.sleep_onset_epoch.is_some()
    }
}

fn epochs_seconds(epochs: usize) -> i64 {
    epochs as i64 * EPOCH_SECONDS
}

fn epochs_duration(epochs: usize) -> Duration {
    Duration::seconds(epochs_seconds(epochs))
}

/// Rounds to two decimals as Python's `round(value, 2)` does: to the
/// nearest of the exact binary value, ties to even. Rust's formatting
/// rounds the exact value the same way.
pub fn round_second(value: f64) -> f64 {
    format!("{value:.2}")
        .parse()
        .expect("a formatted finite float parses back")
}

/// Returns the runs of consecutive values that match `matches`, in order.
fn runs<'a>(values: &'a [i8], matches: impl Fn(i8) -> bool + 'a) -> impl Iterator<Item = EpochRun> + 'a {
    let mut index = 0;
    std::iter::from_fn(move || {
        let start = index + values[index..].iter().position(|value| matches(*value))?;
        let epochs = values[start..]
            .iter()
            .position(|value| !matches(*value))
            .unwrap_or(values.len() - start);
        index = start + epochs;
        Some(EpochRun {
            start_epoch: start,
            epochs,
        })
    })
}

/// pysleep's `SleepStageCalculator.calculate`, with unknown epochs read as
/// the module documentation describes. Requires a non-empty hypnogram and
/// `end > start`.
fn calculate(stages: &[i8], start: DateTime<FixedOffset>, end: DateTime<FixedOffset>) -> SleepStatistics {
    let count = |code: i8| stages.iter().filter(|stage| **stage == code).count();
    let first_index = |code: i8| stages.iter().position(|stage| *stage == code);
    let unknown_epochs = stages.iter().filter(|stage| !(WAKE..=REM).contains(*stage)).count();
    let unknown_ratio = unknown_epochs as f64 / stages.len() as f64;
    let first = stages.iter().position(|stage| is_sleep(*stage));
    let last = stages.iter().rposition(|stage| is_sleep(*stage));

    let (sleep_latency, wakeup_latency) = match (first, last) {
        (Some(first), Some(last)) => (epochs_seconds(first), epochs_seconds(stages.len() - 1 - last)),
        _ => (epochs_seconds(stages.len()), 0),
    };
    let latency = |code: i8| Some(epochs_seconds(first_index(code)? - first?));
    let sleep_time = start + Duration::seconds(sleep_latency);
    let wake_time = end - Duration::seconds(wakeup_latency);

    let period = match (first, last) {
        (Some(first), Some(last)) => &stages[first..=last],
        _ => &[][..],
    };
    let time_in_light = epochs_seconds(count(LIGHT));
    let time_in_deep = epochs_seconds(count(DEEP));
    let time_in_rem = epochs_seconds(count(REM));
    let time_in_sleep = time_in_light + time_in_deep + time_in_rem;
    let time_in_wake = epochs_seconds(period.iter().filter(|stage| **stage == WAKE).count());
    let time_in_sleep_period = time_in_sleep + time_in_wake;
    // Python's `int(timedelta.total_seconds())` truncates toward zero.
    let time_in_bed = (end - start)
        .num_microseconds()
        .map_or_else(|| (end - start).num_seconds(), |micros| micros / 1_000_000);

    let sleep_efficiency = if time_in_bed > 0 {
        round_second(time_in_sleep as f64 / time_in_bed as f64)
    } else {
        0.0
    };
    let ratios = if time_in_sleep_period > 0 {
        let share = |seconds: i64| seconds as f64 / time_in_sleep_period as f64;
        adjust_ratios(
            share(time_in_wake),
            share(time_in_light),
            share(time_in_deep),
            share(time_in_rem),
        )
    } else {
        Ratios::default()
    };

    let onset = first.unwrap_or(0);
    let waso_episodes: Vec<EpochRun> = runs(period, |stage| stage == WAKE)
        .map(|run| EpochRun {
            start_epoch: onset + run.start_epoch,
            ..run
        })
        .collect();
    let longest_waso = waso_episodes.iter().map(|run| run.epochs).max().unwrap_or(0);
    let cycle_end_epochs: Vec<usize> = rem_cluster_ends(period).into_iter().map(|end| onset + end).collect();
    let sleep_cycle = cycle_end_epochs
        .last()
        .map(|last| mean_cycle_seconds(last - onset, cycle_end_epochs.len()));
    let sleep_cycle_time = if cycle_end_epochs.is_empty() {
        Vec::new()
    } else {
        std::iter::once(sleep_time)
            .chain(
                cycle_end_epochs
                    .iter()
                    .map(|end| sleep_time + epochs_duration(end - onset)),
            )
            .collect()
    };

    SleepStatistics {
        start_time: start,
        end_time: end,
        sleep_time,
        wake_time,
        sleep_latency,
        wakeup_latency,
        light_latency: latency(LIGHT),
        deep_latency: latency(DEEP),
        rem_latency: latency(REM),
        time_in_bed,
        time_in_sleep_period,
        time_in_sleep,
        time_in_wake,
        time_in_light: Some(time_in_light),
        time_in_deep: Some(time_in_deep),
        time_in_rem: Some(time_in_rem),
        sleep_efficiency,
        sleep_ratio: ratios.sleep,
        wake_ratio: ratios.wake,
        light_ratio: Some(ratios.light),
        deep_ratio: Some(ratios.deep),
        rem_ratio: Some(ratios.rem),
        waso_count: waso_episodes.len() as u32,
        longest_waso: epochs_seconds(longest_waso),
        sleep_cycle_count: Some(cycle_end_epochs.len() as u32),
        sleep_cycle,
        sleep_cycle_time,
        time_in_snoring: None,
        time_in_no_snoring: None,
        snoring_ratio: None,
        no_snoring_ratio: None,
        snoring_count: None,
        staging: Staging::FourStage,
        epochs: stages.len() as u32,
        unknown_epochs: unknown_epochs as u32,
        unknown_ratio,
        reliable: unknown_ratio <= UNRELIABLE_UNKNOWN_RATIO,
        sleep_onset_epoch: first,
        cycle_end_epochs,
        waso_episodes,
    }
}

/// pysleep's `sleep_cycle`: the mean distance in epochs from sleep onset
/// through each cycle end, times 30, held by a `timedelta`, which rounds
/// float seconds to whole microseconds, ties to even.
fn mean_cycle_seconds(onset_to_last_end: usize, cycles: usize) -> f64 {
    // The distances from onset to each successive end add up to the
    // distance from onset to the last end.
    let seconds = onset_to_last_end as f64 / cycles as f64 * EPOCH_SECONDS as f64;
    let whole = seconds.trunc();
    let micros = whole as i64 * 1_000_000 + ((seconds - whole) * 1e6).round_ties_even() as i64;
    micros as f64 / 1e6
}

#[derive(Debug, Default)]
struct Ratios {
    wake: f64,
    light: f64,
    deep: f64,
    rem: f64,
    sleep: f64,
}

/// pysleep's `_adjust_ratios_to_second`: rounds each ratio to two decimals,
/// then moves 0.01 at a time from or to the first non-zero ratio among
/// light, REM, deep and wake until they sum to 1.00.
fn adjust_ratios(wake: f64, light: f64, deep: f64, rem: f64) -> Ratios {
    let (mut wake, mut light, mut deep, mut rem) = (
        round_second(wake),
        round_second(light),
        round_second(deep),
        round_second(rem),
    );
    let mut error = round_second(wake + light + deep + rem - 1.0);
    while error != 0.0 {
        let adjustment = if error > 0.0 { 0.01 } else { -0.01 };
        if light != 0.0 {
            light = round_second(light - adjustment);
        } else if rem != 0.0 {
            rem = round_second(rem - adjustment);
        } else if deep != 0.0 {
            deep = round_second(deep - adjustment);
        } else if wake != 0.0 {
            wake = round_second(wake - adjustment);
        }
        error = round_second(error - adjustment);
    }
    Ratios {
        wake,
        light,
        deep,
        rem,
        sleep: round_second((1.0 - wake).max(0.0)),
    }
}

/// pysleep's `_calculate_rem_cluster_indices`: the last REM epoch of each
/// REM cluster with at least [`REM_CLUSTER_MIN_EPOCHS`] epochs, as offsets
/// into the sleep period.
fn rem_cluster_ends(period: &[i8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut cluster_end = None;
    let mut rem_epochs = 0;
    let mut gap = 0;
    for (offset, stage) in period.iter().enumerate() {
        if *stage != REM {
            gap += 1;
            continue;
        }
        if gap > REM_CLUSTER_MAX_GAP {
            if let Some(end) = cluster_end.filter(|_| rem_epochs >= REM_CLUSTER_MIN_EPOCHS) {
                ends.push(end);
            }
            rem_epochs = 0;
        }
        rem_epochs += 1;
        cluster_end = Some(offset);
        gap = 0;
    }
    if let Some(end) = cluster_end.filter(|_| rem_epochs >= REM_CLUSTER_MIN_EPOCHS) {
        ends.push(end);
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(text: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(text).unwrap()
    }

    fn four_stage(stages: &[i8]) -> SleepStatistics {
        SleepStatistics::compute(stages, &[], time("2026-11-20T23:00:00+09:00"), None, Staging::FourStage).unwrap()
    }

    #[test]
    fn rounding_matches_python() {
        // Python: round(0.125, 2) == 0.12, round(0.135, 2) == 0.14 (0.135 is
        // stored a little above), round(0.155, 2) == 0.15 (stored below).
        for (value, rounded) in [
            (0.125, 0.12),
            (0.375, 0.38),
            (0.135, 0.14),
            (0.155, 0.15),
            (-0.004, -0.0),
        ] {
            assert_eq!(round_second(value), rounded, "{value}");
        }
    }

    #[test]
    fn ratios_are_nudged_to_sum_to_one() {
        // Thirds round to 0.33 each: light takes the missing 0.01.
        let ratios = adjust_ratios(0.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0);
        assert_eq!((ratios.light, ratios.deep, ratios.rem), (0.34, 0.33, 0.33));
        // Without light, REM is nudged next.
        let ratios = adjust_ratios(1.0 / 3.0, 0.0, 1.0 / 3.0, 1.0 / 3.0);
        assert_eq!((ratios.wake, ratios.rem, ratios.sleep), (0.33, 0.34, 0.67));
    }

    #[test]
    fn unknown_epochs_are_neither_sleep_nor_wake() {
        let statistics = four_stage(&[0, 1, 0, -1, 0, 2, -1, 0]);
        assert_eq!(statistics.time_in_sleep, 60);
        assert_eq!(statistics.sleep_latency, 30);
        assert_eq!(statistics.wakeup_latency, 60);
        assert_eq!(statistics.time_in_wake, 60);
        assert_eq!(statistics.time_in_sleep_period, 120);
        assert_eq!(statistics.waso_count, 2, "the unknown epoch splits the wake run");
        assert_eq!(statistics.unknown_epochs, 2);
        assert_eq!(statistics.unknown_ratio, 0.25);
        assert!(!statistics.reliable);
        assert_eq!(statistics.time_in_bed, 240);
        assert_eq!(statistics.sleep_efficiency, 0.25);
    }

    #[test]
    fn night_without_sleep() {
        let statistics = four_stage(&[0, 0, -1]);
        assert!(!statistics.slept());
        assert_eq!(statistics.sleep_latency, 90);
        assert_eq!(statistics.sleep_time, statistics.end_time);
        assert_eq!(statistics.light_latency, None);
        assert_eq!(statistics.sleep_efficiency, 0.0);
        assert_eq!(statistics.waso_count, 0);
        assert_eq!(statistics.sleep_cycle_count, Some(0));
    }

    #[test]
    fn rem_clusters_join_across_gaps_of_twenty() {
        let mut stages = vec![1; 10];
        stages.extend([3; 19]);
        stages.extend([1; 25]);
        stages.extend([3; 10]);
        stages.extend([2; 20]);
        stages.extend([3; 10]);
        stages.push(1);
        let statistics = four_stage(&stages);
        // 19 REM epochs alone make no cycle; 10 + 10 joined across 20 do.
        assert_eq!(statistics.sleep_cycle_count, Some(1));
        assert_eq!(statistics.cycle_end_epochs, vec![93]);
        assert_eq!(statistics.sleep_cycle, Some(93.0 * 30.0));
        assert_eq!(statistics.sleep_cycle_time.len(), 2);
    }

    #[test]
    fn snoring_counts_over_sleep_period() {
        let start = time("2026-11-20T23:00:00+09:00");
        let stages = [0, 1, 1, 1, 0, 1, 1, 0];
        let snoring = [1, 1, 1, 0, 1, -1, 1, 1];
        let statistics = SleepStatistics::compute(&stages, &snoring, start, None, Staging::FourStage).unwrap();
        // The sleep period is epochs 1 to 6: snoring in epochs 1, 2, 4 and 6.
        assert_eq!(statistics.time_in_sleep_period, 180);
        assert_eq!(statistics.time_in_snoring, Some(120));
        assert_eq!(statistics.time_in_no_snoring, Some(60));
        assert_eq!(statistics.snoring_ratio, Some(0.67));
        assert_eq!(statistics.no_snoring_ratio, Some(0.33));
        assert_eq!(statistics.snoring_count, Some(3));

        let silent = SleepStatistics::compute(&stages, &[], start, None, Staging::FourStage).unwrap();
        assert_eq!(silent.time_in_snoring, None);
        let awake = SleepStatistics::compute(&[0, 0], &[1, 1], start, None, Staging::FourStage).unwrap();
        assert_eq!(awake.time_in_snoring, Some(0));
        assert_eq!(awake.snoring_ratio, Some(0.0));
    }

    #[test]
    fn two_stage_nights_leave_out_stage_figures() {
        let start = time("2026-11-20T23:00:00+09:00");
        let stages = [0, 1, 1, 0, 1, 1, 1, 0];
        let statistics = SleepStatistics::compute(&stages, &[], start, None, Staging::TwoStage).unwrap();
        assert_eq!(statistics.time_in_sleep, 150);
        assert_eq!(statistics.time_in_light, None);
        assert_eq!(statistics.light_ratio, None);
        assert_eq!(statistics.sleep_cycle_count, None);
        assert_eq!(statistics.stage_time(LIGHT), Some(150));
        assert_eq!(statistics.stage_ratio(LIGHT), Some(statistics.sleep_ratio));
        assert_eq!(Staging::TwoStage.label(LIGHT), Some("Sleep"));
        // A deployment set to two stages reads stray deep or REM codes as sleep.
        assert_eq!(Staging::TwoStage.name(REM), Some("sleep"));
        assert_eq!(Staging::TwoStage.name(UNKNOWN), None);
        assert_eq!(StageModel::Automatic.staging(&stages), Staging::TwoStage);
        assert_eq!(StageModel::Automatic.staging(&[0, 1, 3]), Staging::FourStage);
        assert_eq!(StageModel::TwoStage.staging(&[0, 1, 3]), Staging::TwoStage);
    }

    #[test]
    fn empty_or_reversed_nights_have_no_statistics() {
        let start = time("2026-11-20T23:00:00+09:00");
        assert_eq!(
            SleepStatistics::compute(&[], &[], start, None, Staging::FourStage),
            Err(StatisticsError::NoEpochs)
        );
        assert_eq!(
            SleepStatistics::compute(&[1], &[], start, Some(start), Staging::FourStage),
            Err(StatisticsError::EndBeforeStart)
        );
    }
}
