//! WebSocket protocol: the messages a viewer's browser receives. Each message
//! is a JSON text frame with a `type`; docs/protocol.md describes every field.

use chrono::{DateTime, FixedOffset};
use serde::Serialize;

use crate::payload::EPOCH_SECONDS;
use crate::report::Headline;
use crate::statistics::{LIGHT, SleepStatistics, Staging, StatisticsError, UNKNOWN, is_sleep};

/// A message to viewers, serialized once per room and shared by every
/// subscriber.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// The whole current night. Sent first on every connection, after a
    /// subscriber fell behind, and when a new night begins.
    Snapshot {
        user_id: &'a str,
        session_id: Option<&'a str>,
        epoch_seconds: i64,
        #[serde(flatten)]
        clock: Clock<'a>,
        sleep_stages: &'a [i8],
        snoring_stages: &'a [i8],
        last_seq_num: Option<u32>,
        complete: bool,
        report_url: Option<String>,
        staging: Staging,
        /// `None` while the night has no epochs.
        figures: Option<LiveFigures>,
    },
    /// Epochs `start .. start + sleep_stages.len()` changed.
    Update {
        session_id: &'a str,
        seq_num: u32,
        start: usize,
        sleep_stages: &'a [i8],
        snoring_stages: &'a [i8],
        epoch_count: usize,
        last_seq_num: Option<u32>,
        #[serde(flatten)]
        clock: Clock<'a>,
        staging: Staging,
        figures: Option<LiveFigures>,
    },
    /// The final report arrived: the timeline is now the final one.
    SessionComplete {
        session_id: &'a str,
        report_url: String,
        #[serde(flatten)]
        clock: Clock<'a>,
        end_time: Option<String>,
        sleep_stages: &'a [i8],
        snoring_stages: &'a [i8],
        headline: Headline,
        staging: Staging,
        figures: Option<LiveFigures>,
    },
}

/// Position of the night in time.
#[derive(Debug, Clone, Serialize)]
pub struct Clock<'a> {
    /// Start of epoch 0, RFC 3339. Estimated from arrival times until the
    /// final report names the real start.
    pub start_time: Option<String>,
    pub start_time_estimated: bool,
    /// The session's IANA zone, known only once the final report arrived.
    pub timezone: Option<&'a str>,
}

impl ServerMessage<'_> {
    /// Serializes the message into a text frame's payload.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages contain only serializable values")
    }
}

/// Running statistics of the night so far, as the live page shows them.
/// Durations are whole seconds and named as in [`SleepStatistics`], from
/// which they are copied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveFigures {
    /// Recorded length so far, or the session's length once the final
    /// report named its end.
    pub time_in_bed: i64,
    pub time_in_sleep: i64,
    /// `time_in_sleep / time_in_bed`, 0..1 with two decimals.
    pub sleep_efficiency: f64,
    /// Wake after sleep onset.
    pub time_in_wake: i64,
    /// `None` in a two-stage night, where `time_in_sleep` is all there is.
    pub time_in_light: Option<i64>,
    pub time_in_deep: Option<i64>,
    pub time_in_rem: Option<i64>,
    pub current_stage: CurrentStage,
}

impl LiveFigures {
    /// Computes the figures of a hypnogram with [`SleepStatistics::compute`].
    /// Without `end`, the time in bed is the length of the hypnogram.
    pub fn compute(
        sleep_stages: &[i8],
        snoring_stages: &[i8],
        start: DateTime<FixedOffset>,
        end: Option<DateTime<FixedOffset>>,
        staging: Staging,
    ) -> Result<Self, StatisticsError> {
        let statistics = SleepStatistics::compute(sleep_stages, snoring_stages, start, end, staging)?;
        let current_stage = CurrentStage::of(sleep_stages, staging).ok_or(StatisticsError::NoEpochs)?;
        Ok(Self {
            time_in_bed: statistics.time_in_bed,
            time_in_sleep: statistics.time_in_sleep,
            sleep_efficiency: statistics.sleep_efficiency,
            time_in_wake: statistics.time_in_wake,
            time_in_light: statistics.time_in_light,
            time_in_deep: statistics.time_in_deep,
            time_in_rem: statistics.time_in_rem,
            current_stage,
        })
    }
}

/// The stage of the latest epoch and how long it has lasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CurrentStage {
    /// Stage code of the latest epoch: `-1` when it has no data. In a
    /// two-stage night every sleep code is reported as `1`.
    pub code: i8,
    /// [`Staging::name`] of `code`, such as `rem` or `sleep`; `None` for no data.
    pub name: Option<&'static str>,
    /// Length of the run of epochs with this code that ends at the latest epoch.
    pub epochs: usize,
    pub seconds: i64,
}

impl CurrentStage {
    /// Finds the run at the end of a hypnogram, or `None` when it is empty.
    pub fn of(sleep_stages: &[i8], staging: Staging) -> Option<Self> {
        let lane = |code: i8| lane_code(code, staging);
        let code = lane(*sleep_stages.last()?);
        let epochs = sleep_stages
            .iter()
            .rev()
            .take_while(|stage| lane(**stage) == code)
            .count();
        Some(Self {
            code,
            name: staging.name(code),
            epochs,
            seconds: epochs as i64 * EPOCH_SECONDS,
        })
    }
}

/// Returns the code a stage is drawn and counted as: in a two-stage night
/// deep and REM are sleep like light, because statistics then count every
/// sleep code in `time_in_sleep`. Codes outside `-1..=3` are no data.
fn lane_code(code: i8, staging: Staging) -> i8 {
    match code {
        code if staging == Staging::TwoStage && is_sleep(code) => LIGHT,
        code if staging.name(code).is_some() => code,
        _ => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-11-20T23:00:00+09:00").unwrap()
    }

    #[test]
    fn current_stage_is_the_final_run() {
        let current = CurrentStage::of(&[0, 1, 3, 3, 3], Staging::FourStage).unwrap();
        assert_eq!(current.code, 3);
        assert_eq!(current.name, Some("rem"));
        assert_eq!(current.epochs, 3);
        assert_eq!(current.seconds, 90);
    }

    #[test]
    fn current_stage_without_data() {
        let current = CurrentStage::of(&[1, 2, -1, -1], Staging::FourStage).unwrap();
        assert_eq!(current.code, -1);
        assert_eq!(current.name, None);
        assert_eq!(current.epochs, 2);
        assert_eq!(CurrentStage::of(&[], Staging::FourStage), None);
    }

    #[test]
    fn two_stage_current_stage_joins_sleep_codes() {
        let current = CurrentStage::of(&[0, 0, 1, 2, 3, 1], Staging::TwoStage).unwrap();
        assert_eq!(current.code, 1);
        assert_eq!(current.name, Some("sleep"));
        assert_eq!(current.epochs, 4);
    }

    #[test]
    fn figures_copy_the_statistics() {
        let stages = [0, 0, 1, 1, 2, 0, 3, 3, -1, 3];
        let figures = LiveFigures::compute(&stages, &[], start(), None, Staging::FourStage).unwrap();
        let statistics = SleepStatistics::compute(&stages, &[], start(), None, Staging::FourStage).unwrap();
        assert_eq!(figures.time_in_bed, 300);
        assert_eq!(figures.time_in_sleep, statistics.time_in_sleep);
        assert_eq!(figures.time_in_sleep, 180);
        assert_eq!(figures.sleep_efficiency, 0.6);
        assert_eq!(figures.time_in_wake, 30);
        assert_eq!(figures.time_in_light, Some(60));
        assert_eq!(figures.time_in_deep, Some(30));
        assert_eq!(figures.time_in_rem, Some(90));
        assert_eq!(figures.current_stage.epochs, 1, "the unknown epoch ends the REM run");
    }

    #[test]
    fn two_stage_figures_leave_out_stages() {
        let figures = LiveFigures::compute(&[0, 1, 1, 0, 1], &[], start(), None, Staging::TwoStage).unwrap();
        assert_eq!(figures.time_in_sleep, 90);
        assert_eq!(figures.time_in_light, None);
        assert_eq!(figures.time_in_rem, None);
        let json = serde_json::to_value(&figures).unwrap();
        assert_eq!(json["time_in_light"], serde_json::Value::Null);
        assert_eq!(json["current_stage"]["name"], "sleep");
    }

    #[test]
    fn empty_night_has_no_figures() {
        assert_eq!(
            LiveFigures::compute(&[], &[], start(), None, Staging::FourStage),
            Err(StatisticsError::NoEpochs)
        );
    }
}
