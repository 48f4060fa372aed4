//! Statistics computed from a hypnogram, for nights whose final report
//! carries no `stat` and for nights still in progress.

use serde::Serialize;

use crate::payload::EPOCH_SECONDS;

/// A sleep stage of the stage arrays. Unknown epochs (-1) have no stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Wake,
    Rem,
    Light,
    Deep,
}

impl Stage {
    /// Hypnogram lanes from top to bottom: wake on top, deep sleep at the
    /// bottom, REM between wake and light as clinical hypnograms draw it.
    pub const LANES: [Stage; 4] = [Stage::Wake, Stage::Rem, Stage::Light, Stage::Deep];

    /// Reads a `sleep_stages` value: 0 wake, 1 light, 2 deep, 3 REM.
    pub fn from_code(code: i8) -> Option<Stage> {
        match code {
            0 => Some(Stage::Wake),
            1 => Some(Stage::Light),
            2 => Some(Stage::Deep),
            3 => Some(Stage::Rem),
            _ => None,
        }
    }

    /// Returns the stage's name in ids, CSS classes and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Wake => "wake",
            Stage::Rem => "rem",
            Stage::Light => "light",
            Stage::Deep => "deep",
        }
    }

    /// Returns the stage's name for readers.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Wake => "Wake",
            Stage::Rem => "REM",
            Stage::Light => "Light",
            Stage::Deep => "Deep",
        }
    }
}

/// Returns whether a `sleep_stages` value is light, deep or REM sleep.
pub(crate) fn is_sleep(code: i8) -> bool {
    matches!(Stage::from_code(code), Some(Stage::Light | Stage::Deep | Stage::Rem))
}

/// REM epochs at most this many epochs apart belong to one REM cluster, as
/// in Asleep's calculator pysleep (`THRESHOLD_REM_CLUSTER_DISTANCE`).
const MAX_REM_CLUSTER_GAP_EPOCHS: usize = 20;

/// A REM cluster ends a sleep cycle when it contains at least this many REM
/// epochs (pysleep's `THRESHOLD_REM_COUNT`).
const MIN_CYCLE_REM_EPOCHS: usize = 20;

/// Statistics computed from a hypnogram with the definitions of Asleep's
/// calculator pysleep (github.com/asleep-ai/pysleep, `calculator.py`).
/// pysleep rejects unknown epochs. Here they count as neither sleep nor
/// wake, so they shorten the stage times and split a run of wake in two.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HypnogramFigures {
    pub epochs: usize,
    /// Seconds of unknown epochs (-1).
    pub unknown_seconds: i64,
    /// Seconds before the first sleep epoch; `None` when the sleeper never slept.
    pub sleep_latency_seconds: Option<i64>,
    /// Seconds after the last sleep epoch; `None` when the sleeper never slept.
    pub wakeup_latency_seconds: Option<i64>,
    pub time_in_light_seconds: i64,
    pub time_in_deep_seconds: i64,
    pub time_in_rem_seconds: i64,
    /// Light, deep and REM together.
    pub time_in_sleep_seconds: i64,
    /// Wake between the first and the last sleep epoch.
    pub time_in_wake_seconds: i64,
    /// From the first to the last sleep epoch: sleep plus wake after sleep onset.
    pub time_in_sleep_period_seconds: i64,
    /// Runs of wake after sleep onset (WASO) before the last sleep epoch.
    pub waso_count: usize,
    pub longest_waso_seconds: i64,
    pub time_in_snoring_seconds: i64,
    /// Runs of snoring epochs.
    pub snoring_count: usize,
    pub sleep_cycle_count: usize,
    /// Mean seconds from sleep onset to the end of each cycle's REM cluster,
    /// as pysleep's `sleep_cycle`; `None` without a cycle.
    pub sleep_cycle_seconds: Option<f64>,
}

impl HypnogramFigures {
    pub fn from_stages(sleep_stages: &[i8], snoring_stages: &[i8]) -> Self {
        let epoch_seconds = |count: usize| count as i64 * EPOCH_SECONDS;
        let count = |stage: Stage| {
            sleep_stages
                .iter()
                .filter(|code| Stage::from_code(**code) == Some(stage))
                .count()
        };
        let time_in_light_seconds = epoch_seconds(count(Stage::Light));
        let time_in_deep_seconds = epoch_seconds(count(Stage::Deep));
        let time_in_rem_seconds = epoch_seconds(count(Stage::Rem));
        let mut figures = HypnogramFigures {
            epochs: sleep_stages.len(),
            unknown_seconds: epoch_seconds(
                sleep_stages
                    .iter()
                    .filter(|code| Stage::from_code(**code).is_none())
                    .count(),
            ),
            time_in_light_seconds,
            time_in_deep_seconds,
            time_in_rem_seconds,
            time_in_sleep_seconds: time_in_light_seconds + time_in_deep_seconds + time_in_rem_seconds,
            ..HypnogramFigures::default()
        };

        let mut snoring_run = false;
        for value in snoring_stages {
            if *value == 1 {
                figures.time_in_snoring_seconds += EPOCH_SECONDS;
                if !snoring_run {
                    figures.snoring_count += 1;
                }
            }
            snoring_run = *value == 1;
        }

        let first = sleep_stages.iter().position(|code| is_sleep(*code));
        let last = sleep_stages.iter().rposition(|code| is_sleep(*code));
        let (Some(first), Some(last)) = (first, last) else {
            return figures;
        };
        figures.sleep_latency_seconds = Some(epoch_seconds(first));
        figures.wakeup_latency_seconds = Some(epoch_seconds(sleep_stages.len() - 1 - last));

        let period = &sleep_stages[first..=last];
        let mut wake_run = 0;
        for code in period {
            if Stage::from_code(*code) == Some(Stage::Wake) {
                wake_run += 1;
                figures.time_in_wake_seconds += EPOCH_SECONDS;
                continue;
            }
            if wake_run > 0 {
                figures.waso_count += 1;
                figures.longest_waso_seconds = figures.longest_waso_seconds.max(epoch_seconds(wake_run));
            }
            wake_run = 0;
        }
        figures.time_in_sleep_period_seconds = figures.time_in_sleep_seconds + figures.time_in_wake_seconds;
        let cycle_ends = sleep_cycle_ends(period);
        figures.sleep_cycle_count = cycle_ends.len();
        figures.sleep_cycle_seconds = cycle_ends
            .last()
            .map(|last| (*last as i64 * EPOCH_SECONDS) as f64 / cycle_ends.len() as f64);
        figures
    }

    /// Returns a stage's share of the sleep period, 0..1, or `None` for an
    /// empty sleep period.
    pub fn stage_share(&self, stage: Stage) -> Option<f64> {
        (self.time_in_sleep_period_seconds > 0)
            .then(|| self.stage_seconds(stage) as f64 / self.time_in_sleep_period_seconds as f64)
    }

    /// Returns the seconds of a stage; wake counts only after sleep onset.
    pub fn stage_seconds(&self, stage: Stage) -> i64 {
        match stage {
            Stage::Wake => self.time_in_wake_seconds,
            Stage::Rem => self.time_in_rem_seconds,
            Stage::Light => self.time_in_light_seconds,
            Stage::Deep => self.time_in_deep_seconds,
        }
    }
}

/// Returns the last REM epoch of every REM cluster in the sleep period
/// that counts as a sleep cycle, as offsets from sleep onset. A cluster
/// joins REM epochs at most [`MAX_REM_CLUSTER_GAP_EPOCHS`] non-REM epochs
/// apart and counts with at least [`MIN_CYCLE_REM_EPOCHS`] REM epochs.
fn sleep_cycle_ends(period: &[i8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut cluster_rem_epochs = 0;
    let mut cluster_end = 0;
    let mut gap = 0;
    for (offset, code) in period.iter().enumerate() {
        if Stage::from_code(*code) != Some(Stage::Rem) {
            gap += 1;
            continue;
        }
        if cluster_rem_epochs > 0 && gap > MAX_REM_CLUSTER_GAP_EPOCHS {
            if cluster_rem_epochs >= MIN_CYCLE_REM_EPOCHS {
                ends.push(cluster_end);
            }
            cluster_rem_epochs = 0;
        }
        cluster_rem_epochs += 1;
        cluster_end = offset;
        gap = 0;
    }
    if cluster_rem_epochs >= MIN_CYCLE_REM_EPOCHS {
        ends.push(cluster_end);
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::FinalReport;

    fn enveloped_report() -> FinalReport {
        crate::payload::fixtures::final_report("session-enveloped.json", "G-20261101-demo-user-0001")
    }

    #[test]
    fn computed_figures_match_asleep_statistics() {
        let report = enveloped_report();
        let stat = report.stat.clone().unwrap();
        let computed = HypnogramFigures::from_stages(&report.sleep_stages, &report.snoring_stages);

        let seconds = |value: i64| Some(value as f64);
        let cases = [
            (
                "time_in_sleep",
                seconds(computed.time_in_sleep_seconds),
                stat.time_in_sleep,
            ),
            (
                "time_in_light",
                seconds(computed.time_in_light_seconds),
                stat.time_in_light,
            ),
            (
                "time_in_deep",
                seconds(computed.time_in_deep_seconds),
                stat.time_in_deep,
            ),
            ("time_in_rem", seconds(computed.time_in_rem_seconds), stat.time_in_rem),
            (
                "time_in_wake",
                seconds(computed.time_in_wake_seconds),
                stat.time_in_wake,
            ),
            (
                "sleep_latency",
                computed.sleep_latency_seconds.and_then(seconds),
                stat.sleep_latency,
            ),
            (
                "wakeup_latency",
                computed.wakeup_latency_seconds.and_then(seconds),
                stat.wakeup_latency,
            ),
            ("waso_count", Some(computed.waso_count as f64), stat.waso_count),
            (
                "longest_waso",
                seconds(computed.longest_waso_seconds),
                stat.longest_waso,
            ),
            (
                "sleep_cycle_count",
                Some(computed.sleep_cycle_count as f64),
                stat.sleep_cycle_count,
            ),
            // Asleep sends the mean in whole seconds, truncated: 21990 s over
            // 4 cycles gives 5497.
            (
                "sleep_cycle",
                computed.sleep_cycle_seconds.map(f64::trunc),
                stat.sleep_cycle,
            ),
        ];
        for (name, computed_value, asleep_value) in cases {
            assert_eq!(computed_value, asleep_value, "{name}");
        }
        assert_eq!(computed.unknown_seconds, 0);
    }

    #[test]
    fn unknown_epochs_count_as_neither_sleep_nor_wake() {
        let computed = HypnogramFigures::from_stages(&[0, 1, 0, -1, 0, 2, -1, 0], &[-1, 1, 1, 0, 1, -1, -1, -1]);
        assert_eq!(computed.time_in_sleep_seconds, 60);
        assert_eq!(computed.unknown_seconds, 60);
        assert_eq!(computed.sleep_latency_seconds, Some(30));
        assert_eq!(computed.wakeup_latency_seconds, Some(60));
        assert_eq!(computed.waso_count, 2, "the unknown epoch splits the wake run");
        assert_eq!(computed.time_in_wake_seconds, 60);
        assert_eq!(computed.time_in_snoring_seconds, 90);
        assert_eq!(computed.snoring_count, 2);
    }

    #[test]
    fn night_without_sleep_has_no_latency() {
        let computed = HypnogramFigures::from_stages(&[0, 0, -1], &[0, 0, 0]);
        assert_eq!(computed.sleep_latency_seconds, None);
        assert_eq!(computed.stage_share(Stage::Light), None);
        assert_eq!(computed.waso_count, 0);
    }

    #[test]
    fn short_rem_clusters_are_not_cycles() {
        let mut stages = vec![1; 10];
        stages.extend([3; 19]);
        stages.extend([1; 25]);
        stages.extend([3; 10]);
        stages.extend([2; 20]);
        stages.extend([3; 10]);
        stages.push(1);
        let computed = HypnogramFigures::from_stages(&stages, &[]);
        // 19 REM epochs alone make no cycle, but 10 + 10 joined across a gap of 20 do.
        assert_eq!(computed.sleep_cycle_count, 1);
        // The cycle's REM cluster ends 93 epochs after sleep onset.
        assert_eq!(computed.sleep_cycle_seconds, Some(93.0 * 30.0));
    }
}
