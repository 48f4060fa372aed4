//! WebSocket protocol: the messages a viewer's browser receives. Each message
//! is a JSON text frame with a `type`; docs/protocol.md describes every field.

use serde::Serialize;

use crate::report::Headline;

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
