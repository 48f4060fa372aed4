//! Live rooms: one per watched user, holding a broadcast channel and the live
//! state of that user's current night.
//!
//! A room exists only while someone watches. It is created and loaded from
//! the database by the first subscriber and removed when the last one leaves,
//! because the stored events can always rebuild it. Webhooks for users
//! without viewers only touch the database.

use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use dashmap::DashMap;
use tokio::sync::{OnceCell, broadcast};

use crate::payload::{EPOCH_SECONDS, FinalReport, InferenceResult};
use crate::protocol::{Clock, LiveFigures, ServerMessage};
use crate::report::{Headline, report_path};
use crate::statistics::{StageModel, Staging};
use crate::storage::{SessionEvents, StorageError, Store};
use crate::timeline::Timeline;

/// Messages a room keeps for subscribers that have not read them yet. A
/// subscriber further behind gets a fresh snapshot instead, so this bounds
/// the memory one slow browser can hold, not correctness.
const ROOM_CHANNEL_CAPACITY: usize = 64;

/// A committed delivery, as the live view applies it.
#[derive(Debug, Clone)]
pub enum Applied {
    Result {
        result: InferenceResult,
        received_at_ms: i64,
        session_first_seen_ms: i64,
    },
    Final {
        report: Box<FinalReport>,
        session_first_seen_ms: i64,
    },
}

impl Applied {
    fn session_id(&self) -> &str {
        match self {
            Applied::Result { result, .. } => &result.session_id,
            Applied::Final { report, .. } => &report.session_id,
        }
    }

    fn session_first_seen_ms(&self) -> i64 {
        match self {
            Applied::Result {
                session_first_seen_ms, ..
            }
            | Applied::Final {
                session_first_seen_ms, ..
            } => *session_first_seen_ms,
        }
    }
}

/// The live state of a user's current night.
#[derive(Debug, Default, Clone)]
pub struct LiveNight {
    pub user_id: String,
    pub session_id: Option<String>,
    /// When the session's first event arrived; a session first seen later is
    /// a newer night and replaces this one.
    pub first_seen_ms: i64,
    pub timeline: Timeline,
    /// Estimated start of epoch 0 in Unix milliseconds. The result for
    /// `seq_num` N is sent shortly after (N + 1) × 30 s of recording, so each
    /// result bounds the start from above and the smallest bound is kept.
    pub start_estimate_ms: Option<i64>,
    pub report: Option<FinalReport>,
    /// The deployment's stage model, which decides how the night's stages
    /// are read in the figures and lanes sent to viewers.
    pub stage_model: StageModel,
}

impl LiveNight {
    /// Rebuilds a night from its stored events, in any order.
    pub fn rebuild(user_id: &str, session_id: &str, events: &SessionEvents) -> Self {
        let mut night = LiveNight {
            user_id: user_id.to_string(),
            session_id: Some(session_id.to_string()),
            first_seen_ms: events.first_seen_ms,
            ..LiveNight::default()
        };
        for (result, received_at_ms) in &events.results {
            night.apply_result(result, *received_at_ms);
        }
        if let Some(report) = &events.report {
            night.apply_final(report);
        }
        night
    }

    /// Applies a committed delivery and returns the message to broadcast, if
    /// any viewer-visible state changed.
    pub fn apply(&mut self, applied: &Applied) -> Option<String> {
        if self.session_id.as_deref() != Some(applied.session_id()) {
            if self.session_id.is_some() && applied.session_first_seen_ms() < self.first_seen_ms {
                // A late event of an older night: stored, but not live.
                return None;
            }
            *self = LiveNight {
                user_id: std::mem::take(&mut self.user_id),
                session_id: Some(applied.session_id().to_string()),
                first_seen_ms: applied.session_first_seen_ms(),
                stage_model: self.stage_model,
                ..LiveNight::default()
            };
            match applied {
                Applied::Result {
                    result, received_at_ms, ..
                } => {
                    self.apply_result(result, *received_at_ms);
                }
                Applied::Final { report, .. } => self.apply_final(report),
            }
            return Some(self.snapshot_json());
        }

        match applied {
            Applied::Result {
                result, received_at_ms, ..
            } => {
                let change = self.apply_result(result, *received_at_ms)?;
                let (staging, figures) = self.figures();
                Some(
                    ServerMessage::Update {
                        session_id: &result.session_id,
                        seq_num: result.seq_num,
                        start: change.start,
                        sleep_stages: &self.timeline.sleep_stages[change.start..change.end],
                        snoring_stages: &self.timeline.snoring_stages[change.start..change.end],
                        epoch_count: self.timeline.len(),
                        last_seq_num: self.timeline.last_seq_num,
                        clock: self.clock(),
                        staging,
                        figures,
                    }
                    .to_json(),
                )
            }
            Applied::Final { report, .. } => {
                // The room may have loaded this report from the database
                // already; viewers need the message only once.
                if self.timeline.is_final {
                    return None;
                }
                self.apply_final(report);
                Some(self.session_complete_json(report))
            }
        }
    }

    fn apply_result(&mut self, result: &InferenceResult, received_at_ms: i64) -> Option<crate::timeline::Change> {
        // Arrival time, not the body's `timestamp`: replayed deliveries carry
        // the time they were first sent, which would date a live view in the
        // past. For Asleep's own deliveries the two differ by network delay.
        let bound = received_at_ms - (i64::from(result.seq_num) + 1) * EPOCH_SECONDS * 1000;
        self.start_estimate_ms = Some(self.start_estimate_ms.map_or(bound, |known| known.min(bound)));
        self.timeline.apply_inference(result)
    }

    fn apply_final(&mut self, report: &FinalReport) {
        self.timeline.apply_final(report);
        self.report = Some(report.clone());
    }

    fn clock(&self) -> Clock<'_> {
        match &self.report {
            Some(report) => Clock {
                start_time: Some(report.start_time.to_rfc3339_opts(SecondsFormat::Secs, true)),
                start_time_estimated: false,
                timezone: Some(&report.timezone),
            },
            None => Clock {
                start_time: self
                    .start_estimate_ms
                    .and_then(DateTime::<Utc>::from_timestamp_millis)
                    .map(|start| start.to_rfc3339_opts(SecondsFormat::Secs, true)),
                start_time_estimated: true,
                timezone: None,
            },
        }
    }

    /// Computes the night's staging and its figures so far. Until the final
    /// report names the session's start and end, the time in bed is the
    /// recorded length and the start only anchors the computation.
    fn figures(&self) -> (Staging, Option<LiveFigures>) {
        let stages = &self.timeline.sleep_stages;
        let staging = self.stage_model.staging(stages);
        let (start, end) = match &self.report {
            Some(report) => (
                report.start_time,
                report.end_time.filter(|end| *end > report.start_time),
            ),
            None => (
                self.start_estimate_ms
                    .and_then(DateTime::<Utc>::from_timestamp_millis)
                    .unwrap_or_default()
                    .fixed_offset(),
                None,
            ),
        };
        // The only error is an empty night, which has no figures.
        let figures = LiveFigures::compute(stages, &self.timeline.snoring_stages, start, end, staging).ok();
        (staging, figures)
    }

    /// Serializes the whole night as a `snapshot` message.
    pub fn snapshot_json(&self) -> String {
        let (staging, figures) = self.figures();
        ServerMessage::Snapshot {
            user_id: &self.user_id,
            session_id: self.session_id.as_deref(),
            epoch_seconds: EPOCH_SECONDS,
            clock: self.clock(),
            sleep_stages: &self.timeline.sleep_stages,
            snoring_stages: &self.timeline.snoring_stages,
            last_seq_num: self.timeline.last_seq_num,
            complete: self.report.is_some(),
            report_url: self
                .session_id
                .as_deref()
                .filter(|_| self.report.is_some())
                .map(|session_id| report_path(&self.user_id, session_id)),
            staging,
            figures,
        }
        .to_json()
    }

    fn session_complete_json(&self, report: &FinalReport) -> String {
        let (staging, figures) = self.figures();
        ServerMessage::SessionComplete {
            session_id: &report.session_id,
            report_url: report_path(&self.user_id, &report.session_id),
            clock: self.clock(),
            end_time: report
                .end_time
                .map(|end| end.to_rfc3339_opts(SecondsFormat::Secs, true)),
            sleep_stages: &self.timeline.sleep_stages,
            snoring_stages: &self.timeline.snoring_stages,
            headline: Headline::from_report(report),
            staging,
            figures,
        }
        .to_json()
    }
}

/// State guarded by a room's mutex. A `std` mutex is right here: the
/// critical sections never await, and they are short (apply one result,
/// serialize one message, send it on the channel).
struct RoomState {
    /// False until the first subscriber has loaded the night from the
    /// database; deliveries committed meanwhile wait in `pending`.
    loaded: bool,
    pending: Vec<Applied>,
    night: LiveNight,
    /// The night's `snapshot` message, serialized once after each change
    /// and shared by every subscriber until the next change. Joining
    /// viewers therefore cost no statistics or serialization of their own.
    snapshot: Option<Utf8Bytes>,
}

/// One user's room.
pub struct Room {
    sender: broadcast::Sender<Utf8Bytes>,
    state: Mutex<RoomState>,
    /// Completed once the night was loaded from the database.
    ready: OnceCell<()>,
}

impl Room {
    fn new(user_id: &str, stage_model: StageModel) -> Self {
        Self {
            sender: broadcast::channel(ROOM_CHANNEL_CAPACITY).0,
            state: Mutex::new(RoomState {
                loaded: false,
                pending: Vec::new(),
                night: LiveNight {
                    user_id: user_id.to_string(),
                    stage_model,
                    ..LiveNight::default()
                },
                snapshot: None,
            }),
            ready: OnceCell::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RoomState> {
        // A panic while holding the lock leaves a night that is at worst one
        // result behind, and the next snapshot repairs it, so poisoning is
        // not fatal here.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn apply(&self, applied: Applied) {
        let mut state = self.lock();
        if !state.loaded {
            state.pending.push(applied);
            return;
        }
        state.snapshot = None;
        if let Some(message) = state.night.apply(&applied) {
            // An error only means no viewer is subscribed at this instant.
            let _ = self.sender.send(Utf8Bytes::from(message));
        }
    }

    /// Returns the current snapshot together with a receiver positioned
    /// right after it, so no update falls between the two.
    pub fn resubscribe(&self) -> (Utf8Bytes, broadcast::Receiver<Utf8Bytes>) {
        let mut state = self.lock();
        let state = &mut *state;
        let snapshot = state
            .snapshot
            .get_or_insert_with(|| Utf8Bytes::from(state.night.snapshot_json()))
            .clone();
        (snapshot, self.sender.subscribe())
    }
}

/// The map from user id to room.
pub struct Rooms {
    rooms: DashMap<String, Arc<Room>>,
    store: Store,
    stage_model: StageModel,
}

/// A viewer's membership in a room; leaving removes the room when it was the
/// last member.
pub struct Subscription {
    pub room: Arc<Room>,
    pub snapshot: Utf8Bytes,
    pub receiver: broadcast::Receiver<Utf8Bytes>,
}

impl Rooms {
    /// Creates an empty map whose rooms read stages with `stage_model`.
    pub fn new(store: Store, stage_model: StageModel) -> Self {
        Self {
            rooms: DashMap::new(),
            store,
            stage_model,
        }
    }

    /// Returns the number of rooms, which falls back to zero when no viewer is connected.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Applies a committed delivery to the user's room, if anyone watches.
    pub fn apply(&self, user_id: &str, applied: Applied) {
        let room = self.rooms.get(user_id).map(|room| Arc::clone(&room));
        if let Some(room) = room {
            room.apply(applied);
        }
    }

    /// Joins the user's room, creating and loading it if needed.
    pub async fn subscribe(&self, user_id: &str) -> Result<Subscription, StorageError> {
        // If this future is dropped or fails before it subscribes, the room it
        // may have created must not stay behind without subscribers.
        let cleanup = LeaveOnDrop { rooms: self, user_id };
        loop {
            let room = Arc::clone(
                &self
                    .rooms
                    .entry(user_id.to_string())
                    .or_insert_with(|| Arc::new(Room::new(user_id, self.stage_model))),
            );
            room.ready.get_or_try_init(|| self.load(user_id, &room)).await?;

            // Subscribing under the map's shard lock orders this against
            // `leave`, which removes a room only under the same lock. If the
            // room was removed while it loaded, start again with a new one.
            let Some(current) = self.rooms.get(user_id) else {
                continue;
            };
            if !Arc::ptr_eq(&current, &room) {
                continue;
            }
            let (snapshot, receiver) = room.resubscribe();
            drop(current);
            std::mem::forget(cleanup);
            return Ok(Subscription {
                room,
                snapshot,
                receiver,
            });
        }
    }

    /// Leaves a room; the caller must have dropped its receiver first.
    pub fn leave(&self, user_id: &str) {
        self.rooms
            .remove_if(user_id, |_, room| room.sender.receiver_count() == 0);
    }

    async fn load(&self, user_id: &str, room: &Room) -> Result<(), StorageError> {
        let night = match self.store.latest_session(user_id).await? {
            Some(session_id) => match self.store.session_events(user_id, &session_id).await? {
                Some(events) => LiveNight::rebuild(user_id, &session_id, &events),
                None => LiveNight::default(),
            },
            None => LiveNight::default(),
        };

        let mut state = room.lock();
        state.night = LiveNight {
            user_id: user_id.to_string(),
            stage_model: self.stage_model,
            ..night
        };
        state.snapshot = None;
        for applied in std::mem::take(&mut state.pending) {
            state.night.apply(&applied);
        }
        state.loaded = true;
        Ok(())
    }
}

/// Removes an empty room when a subscription attempt ends without joining it.
struct LeaveOnDrop<'a> {
    rooms: &'a Rooms,
    user_id: &'a str,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        self.rooms.leave(self.user_id);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tokio::sync::broadcast::error::RecvError;

    use super::*;
    use crate::storage::Durability;

    fn applied(seq_num: u32) -> Applied {
        Applied::Result {
            result: InferenceResult {
                user_id: "u".into(),
                session_id: "s".into(),
                seq_num,
                inference_seq_num: None,
                sleep_stages: vec![(seq_num % 4) as i8],
                snoring_stages: vec![0],
                breath_stages: None,
                sent_at: None,
            },
            received_at_ms: 1_000_000,
            session_first_seen_ms: 1_000_000,
        }
    }

    async fn empty_rooms(folder: &tempfile::TempDir) -> Rooms {
        let store = Store::open(&folder.path().join("rooms.sqlite3"), Durability::Normal)
            .await
            .unwrap();
        Rooms::new(store, StageModel::Automatic)
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[tokio::test]
    async fn lagging_subscriber_resyncs_from_snapshot() {
        let folder = tempfile::tempdir().unwrap();
        let rooms = empty_rooms(&folder).await;
        let mut subscription = rooms.subscribe("u").await.unwrap();
        assert_eq!(parse(&subscription.snapshot)["session_id"], Value::Null);

        let applied_count = ROOM_CHANNEL_CAPACITY as u32 + 10;
        for seq_num in 0..applied_count {
            rooms.apply("u", applied(seq_num));
        }
        assert!(matches!(subscription.receiver.recv().await, Err(RecvError::Lagged(_))));

        let (snapshot, mut receiver) = subscription.room.resubscribe();
        let snapshot = parse(&snapshot);
        assert_eq!(snapshot["type"], "snapshot");
        assert_eq!(
            snapshot["sleep_stages"].as_array().unwrap().len(),
            applied_count as usize
        );
        assert_eq!(snapshot["last_seq_num"], applied_count - 1);

        rooms.apply("u", applied(applied_count));
        let update = parse(&receiver.recv().await.unwrap());
        assert_eq!(update["type"], "update");
        assert_eq!(update["start"], applied_count);
        assert_eq!(update["epoch_count"], applied_count + 1);

        drop(receiver);
        drop(subscription);
        rooms.leave("u");
        assert!(rooms.is_empty());
    }

    #[tokio::test]
    async fn unwatched_user_gets_no_room() {
        let folder = tempfile::tempdir().unwrap();
        let rooms = empty_rooms(&folder).await;
        rooms.apply("nobody-watches", applied(3));
        assert!(rooms.is_empty());
    }

    fn result(seq_num: u32, sleep_stages: &[i8]) -> Applied {
        Applied::Result {
            result: InferenceResult {
                user_id: "u".into(),
                session_id: "s".into(),
                seq_num,
                inference_seq_num: None,
                sleep_stages: sleep_stages.to_vec(),
                snoring_stages: vec![0; sleep_stages.len()],
                breath_stages: None,
                sent_at: None,
            },
            received_at_ms: 1_000_000,
            session_first_seen_ms: 1_000_000,
        }
    }

    #[tokio::test]
    async fn snapshot_carries_figures_and_staging() {
        let folder = tempfile::tempdir().unwrap();
        let rooms = empty_rooms(&folder).await;
        let subscription = rooms.subscribe("u").await.unwrap();
        let empty = parse(&subscription.snapshot);
        assert_eq!(empty["figures"], Value::Null, "a night without epochs has no figures");
        assert_eq!(
            empty["staging"], "two_stage",
            "automatic staging before any deep or REM epoch"
        );

        rooms.apply("u", result(5, &[0, 0, 1, 1, 0, 1]));
        let (snapshot, _receiver) = subscription.room.resubscribe();
        let snapshot = parse(&snapshot);
        assert_eq!(snapshot["staging"], "two_stage");
        assert_eq!(snapshot["figures"]["time_in_sleep"], 90);
        assert_eq!(snapshot["figures"]["time_in_wake"], 30);
        assert_eq!(snapshot["figures"]["time_in_bed"], 180);
        assert_eq!(snapshot["figures"]["sleep_efficiency"], 0.5);
        assert_eq!(snapshot["figures"]["time_in_light"], Value::Null);
        assert_eq!(snapshot["figures"]["current_stage"]["name"], "sleep");
        assert_eq!(snapshot["figures"]["current_stage"]["epochs"], 1);

        rooms.apply("u", result(7, &[3, 3]));
        let (snapshot, _receiver) = subscription.room.resubscribe();
        let snapshot = parse(&snapshot);
        assert_eq!(
            snapshot["staging"], "four_stage",
            "the first REM epoch makes the night four-stage"
        );
        assert_eq!(snapshot["figures"]["time_in_light"], 90);
        assert_eq!(snapshot["figures"]["time_in_rem"], 60);
        assert_eq!(snapshot["figures"]["current_stage"]["name"], "rem");
        assert_eq!(snapshot["figures"]["current_stage"]["seconds"], 60);
    }

    #[tokio::test]
    async fn update_carries_figures() {
        let folder = tempfile::tempdir().unwrap();
        let rooms = empty_rooms(&folder).await;
        let mut subscription = rooms.subscribe("u").await.unwrap();
        rooms.apply("u", result(1, &[0, 1]));
        assert_eq!(parse(&subscription.receiver.recv().await.unwrap())["type"], "snapshot");

        rooms.apply("u", result(3, &[2, 2]));
        let update = parse(&subscription.receiver.recv().await.unwrap());
        assert_eq!(update["type"], "update");
        assert_eq!(update["staging"], "four_stage");
        assert_eq!(update["figures"]["time_in_deep"], 60);
        assert_eq!(update["figures"]["time_in_sleep"], 90);
        assert_eq!(update["figures"]["current_stage"]["code"], 2);
        assert_eq!(update["figures"]["current_stage"]["epochs"], 2);
    }

    #[tokio::test]
    async fn two_stage_room_counts_sleep_codes() {
        let folder = tempfile::tempdir().unwrap();
        let store = Store::open(&folder.path().join("rooms.sqlite3"), Durability::Normal)
            .await
            .unwrap();
        let rooms = Rooms::new(store, StageModel::TwoStage);
        let subscription = rooms.subscribe("u").await.unwrap();
        rooms.apply("u", result(3, &[0, 1, 3, 2]));
        let (snapshot, _receiver) = subscription.room.resubscribe();
        let snapshot = parse(&snapshot);
        assert_eq!(snapshot["staging"], "two_stage");
        assert_eq!(snapshot["figures"]["time_in_sleep"], 90);
        assert_eq!(snapshot["figures"]["time_in_rem"], Value::Null);
        assert_eq!(snapshot["figures"]["current_stage"]["code"], 1);
        assert_eq!(snapshot["figures"]["current_stage"]["epochs"], 3);
    }

    #[tokio::test]
    async fn subscribers_share_one_serialized_snapshot() {
        let folder = tempfile::tempdir().unwrap();
        let rooms = empty_rooms(&folder).await;
        let first = rooms.subscribe("u").await.unwrap();
        rooms.apply("u", result(1, &[0, 1]));
        let (before, _receiver) = first.room.resubscribe();
        let (again, _receiver) = first.room.resubscribe();
        assert_eq!(
            before.as_str().as_ptr(),
            again.as_str().as_ptr(),
            "an unchanged night is serialized once"
        );

        rooms.apply("u", result(3, &[1, 1]));
        let (after, _receiver) = first.room.resubscribe();
        assert_ne!(before, after, "a change replaces the stored snapshot");
        assert_eq!(parse(&after)["figures"]["time_in_sleep"], 90);
    }
}
