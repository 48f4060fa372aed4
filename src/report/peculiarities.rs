//! Asleep's peculiarity codes in plain words, and why a night has no `stat`.

use serde::Serialize;

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

/// Returns the peculiarities of a report with their meanings.
pub fn explain_all(codes: &[String]) -> Vec<Peculiarity> {
    codes
        .iter()
        .map(|code| Peculiarity {
            code: code.clone(),
            explanation: explain_peculiarity(code),
        })
        .collect()
}

/// Explains a missing `stat` by the peculiarities that cause it.
pub fn stat_missing_reason(peculiarities: &[String]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_stat_names_its_cause() {
        let codes = vec![
            "TOO_MANY_DEFECTS_IN_SLEEP_STAGES".to_string(),
            "SOMETHING_NEW".to_string(),
        ];
        let reason = stat_missing_reason(&codes);
        assert!(reason.contains("TOO_MANY_DEFECTS_IN_SLEEP_STAGES"), "{reason}");
        assert!(!reason.contains("SOMETHING_NEW"), "{reason}");
        assert_eq!(stat_missing_reason(&[]), "Asleep sent no statistics for this night.");
        assert_eq!(explain_all(&codes)[1].explanation, None);
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
