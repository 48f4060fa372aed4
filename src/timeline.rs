//! Timeline assembly: one value per 30-second epoch for one session, built
//! from overlapping partial results and replaced by the final report.
//!
//! An epoch contains the value from the highest `seq_num` that covered it,
//! and once the final report has arrived its arrays are the timeline. These
//! rules make the result independent of arrival order, so a timeline rebuilt
//! from the stored events after a restart equals the live one.

use serde::Serialize;

use crate::payload::{FinalReport, InferenceResult};

/// Marks an epoch no result has covered yet.
const UNWRITTEN: i64 = -1;

/// The assembled hypnogram of one session.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// One value per epoch: -1 unknown, 0 wake, 1 light, 2 deep, 3 REM.
    pub sleep_stages: Vec<i8>,
    /// One value per epoch: -1 unknown, 0 none, 1 snoring.
    pub snoring_stages: Vec<i8>,
    /// Highest `seq_num` received so far, including results that arrived
    /// after the final report and changed no epoch.
    pub last_seq_num: Option<u32>,
    /// Whether the final report's arrays replaced the partial results.
    pub is_final: bool,
    /// For each epoch, the `seq_num` of the result that wrote it, so a late
    /// older result cannot overwrite a newer analysis.
    #[serde(skip)]
    written_by: Vec<i64>,
}

/// The epochs one application changed, as a half-open range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub start: usize,
    pub end: usize,
}

impl Timeline {
    /// Returns the number of epochs on the timeline.
    pub fn len(&self) -> usize {
        self.sleep_stages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sleep_stages.is_empty()
    }

    /// Writes a partial result onto the timeline and returns the epochs that
    /// changed, or `None` when nothing did.
    ///
    /// A result covers epochs `seq_num + 1 - len ..= seq_num`. It overwrites
    /// an epoch only when no newer result wrote it. After the final report,
    /// partial results change nothing.
    pub fn apply_inference(&mut self, result: &InferenceResult) -> Option<Change> {
        // Counted even after the final report, so the value does not depend
        // on whether a late result arrived before or after it.
        self.last_seq_num = self.last_seq_num.max(Some(result.seq_num));
        if self.is_final {
            return None;
        }
        let seq_num = i64::from(result.seq_num);

        let first = result.first_epoch();
        let end = first + result.sleep_stages.len();
        let previous_len = self.len();
        if end > previous_len {
            self.sleep_stages.resize(end, -1);
            self.snoring_stages.resize(end, -1);
            self.written_by.resize(end, UNWRITTEN);
        }

        let mut changed: Option<Change> = (end > previous_len).then_some(Change {
            start: previous_len,
            end,
        });
        for (offset, epoch) in (first..end).enumerate() {
            if self.written_by[epoch] > seq_num {
                continue;
            }
            self.written_by[epoch] = seq_num;
            let sleep = result.sleep_stages[offset];
            let snoring = result.snoring_stages[offset];
            if self.sleep_stages[epoch] != sleep || self.snoring_stages[epoch] != snoring {
                self.sleep_stages[epoch] = sleep;
                self.snoring_stages[epoch] = snoring;
                changed = Some(match changed {
                    None => Change {
                        start: epoch,
                        end: epoch + 1,
                    },
                    Some(change) => Change {
                        start: change.start.min(epoch),
                        end: change.end.max(epoch + 1),
                    },
                });
            }
        }
        changed
    }

    /// Replaces the timeline with the final report's arrays.
    pub fn apply_final(&mut self, report: &FinalReport) -> Change {
        let previous_len = self.len();
        self.sleep_stages = report.sleep_stages.clone();
        self.snoring_stages = report.snoring_stages.clone();
        self.written_by = vec![i64::MAX; self.sleep_stages.len()];
        self.is_final = true;
        Change {
            start: 0,
            end: self.len().max(previous_len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(seq_num: u32, stages: &[i8]) -> InferenceResult {
        InferenceResult {
            user_id: "u".into(),
            session_id: "s".into(),
            seq_num,
            inference_seq_num: None,
            sleep_stages: stages.to_vec(),
            snoring_stages: vec![0; stages.len()],
            breath_stages: None,
            sent_at: None,
        }
    }

    #[test]
    fn newer_result_overwrites_shared_epochs() {
        let mut timeline = Timeline::default();
        timeline.apply_inference(&result(3, &[0, 0, 1, 1]));
        let change = timeline.apply_inference(&result(5, &[2, 2, 3, 3]));
        assert_eq!(timeline.sleep_stages, vec![0, 0, 2, 2, 3, 3]);
        assert_eq!(change, Some(Change { start: 2, end: 6 }));
        assert_eq!(timeline.last_seq_num, Some(5));
    }

    #[test]
    fn late_older_result_fills_only_gaps() {
        let mut timeline = Timeline::default();
        timeline.apply_inference(&result(5, &[2, 2]));
        timeline.apply_inference(&result(3, &[1, 1, 1, 1]));
        assert_eq!(timeline.sleep_stages, vec![1, 1, 1, 1, 2, 2]);
    }

    #[test]
    fn arrival_order_does_not_matter() {
        let results = [
            result(3, &[0, 0, 1, 1]),
            result(5, &[2, 2, 3, 3]),
            result(9, &[1, 0, 0]),
        ];
        let mut forward = Timeline::default();
        for each in &results {
            forward.apply_inference(each);
        }
        let mut backward = Timeline::default();
        for each in results.iter().rev() {
            backward.apply_inference(each);
        }
        assert_eq!(forward.sleep_stages, backward.sleep_stages);
        assert_eq!(forward.sleep_stages, vec![0, 0, 2, 2, 3, 3, -1, 1, 0, 0]);
    }

    #[test]
    fn repeated_result_changes_nothing() {
        let mut timeline = Timeline::default();
        timeline.apply_inference(&result(3, &[0, 1]));
        assert_eq!(timeline.apply_inference(&result(3, &[0, 1])), None);
    }

    #[test]
    fn partial_after_final_is_ignored() {
        let mut timeline = Timeline::default();
        let report = crate::payload::FinalReport {
            user_id: "u".into(),
            session_id: "s".into(),
            timezone: "UTC".into(),
            state: None,
            start_time: chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap(),
            end_time: None,
            unexpected_end_time: None,
            sleep_stages: vec![0, 1, 2],
            snoring_stages: vec![0, 0, 1],
            breath_stages: None,
            peculiarities: vec![],
            missing_data_ratio: None,
            stat: None,
            sent_at: None,
        };
        timeline.apply_final(&report);
        assert_eq!(timeline.apply_inference(&result(5, &[3, 3, 3])), None);
        assert_eq!(timeline.sleep_stages, vec![0, 1, 2]);
        assert_eq!(
            timeline.last_seq_num,
            Some(5),
            "a late result still counts, as it would have before the final report"
        );
    }
}
