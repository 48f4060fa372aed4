//! Payload model: turns a webhook body into a validated [`Delivery`].
//!
//! Asleep sends two body shapes. The enveloped one nests the fields under
//! `data`, or under `callback_data` next to `callback_event` and
//! `callback_version`. The flat one puts them next to `event` and `version`. Both are
//! read here, unknown fields are ignored, and every rejection names the field
//! it is about so the sender can fix its payload.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Length of one epoch, the unit every stage array counts in.
pub const EPOCH_SECONDS: i64 = 30;

/// Epochs a timeline may hold: 48 hours. Asleep flags sessions over 24 hours
/// as `TOO_LONG_FOR_ANALYSIS`, so this leaves room for them while keeping a
/// hostile `seq_num` from allocating an unbounded timeline.
pub const MAX_EPOCHS: usize = 48 * 3600 / EPOCH_SECONDS as usize;

/// Maximum length, in characters, of a user or session id.
pub const MAX_ID_CHARS: usize = 128;

/// The event name of a partial result.
pub const INFERENCE_COMPLETE: &str = "INFERENCE_COMPLETE";

/// The event name of a final report.
pub const SESSION_COMPLETE: &str = "SESSION_COMPLETE";

/// A rejected payload: which field is wrong and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PayloadError {
    /// Path of the offending field as it appears in the body, such as
    /// `data.sleep_stages[3]`.
    pub field: String,
    /// The problem, as a sentence fragment.
    pub problem: String,
}

/// Longest problem text kept. Problems quote the rejected value, which can
/// be as long as the body, and they are both answered and logged.
const MAX_PROBLEM_CHARS: usize = 300;

impl PayloadError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        let mut problem = problem.into();
        if let Some((cut, _)) = problem.char_indices().nth(MAX_PROBLEM_CHARS) {
            problem.truncate(cut);
            problem.push('…');
        }
        Self {
            field: field.into(),
            problem,
        }
    }
}

/// One validated webhook delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Inference(InferenceResult),
    /// Boxed because a final report is large next to the other variants.
    SessionComplete(Box<FinalReport>),
    /// An `event` value this server does not know. It is kept in the raw
    /// event log and otherwise ignored.
    Unknown {
        event: String,
        user_id: String,
    },
}

impl Delivery {
    pub fn user_id(&self) -> &str {
        match self {
            Delivery::Inference(result) => &result.user_id,
            Delivery::SessionComplete(report) => &report.user_id,
            Delivery::Unknown { user_id, .. } => user_id,
        }
    }
}

/// An `INFERENCE_COMPLETE`: the latest stages of a night still in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceResult {
    pub user_id: String,
    pub session_id: String,
    /// Index of the last epoch the arrays cover.
    pub seq_num: u32,
    /// The same position in 5-minute units. Only an ordering hint: the
    /// placement on the timeline uses `seq_num`.
    pub inference_seq_num: Option<i64>,
    /// One value per epoch, -1 unknown, 0 wake, 1 light, 2 deep, 3 REM.
    pub sleep_stages: Vec<i8>,
    /// One value per epoch, 0 none, 1 snoring, -1 where the delivery had none.
    pub snoring_stages: Vec<i8>,
    /// One value per epoch, 0 stable, 1 unstable, when the delivery had them.
    pub breath_stages: Option<Vec<i8>>,
    /// When Asleep sent the result (flat bodies' `timestamp`).
    pub sent_at: Option<DateTime<FixedOffset>>,
}

impl InferenceResult {
    /// Returns the index of the first epoch the arrays cover.
    pub fn first_epoch(&self) -> usize {
        self.seq_num as usize + 1 - self.sleep_stages.len()
    }
}

/// A `SESSION_COMPLETE`: the final report of a night.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalReport {
    pub user_id: String,
    pub session_id: String,
    /// IANA zone the session was recorded in; `UTC` when the delivery named none.
    pub timezone: String,
    pub state: Option<String>,
    pub start_time: DateTime<FixedOffset>,
    pub end_time: Option<DateTime<FixedOffset>>,
    pub unexpected_end_time: Option<DateTime<FixedOffset>>,
    pub sleep_stages: Vec<i8>,
    pub snoring_stages: Vec<i8>,
    pub breath_stages: Option<Vec<i8>>,
    pub peculiarities: Vec<String>,
    pub missing_data_ratio: Option<f64>,
    /// Asleep's statistics, normalized to one set of units; `None` when the
    /// delivery carried `stat: null` or no `stat` at all.
    pub stat: Option<Stat>,
    pub sent_at: Option<DateTime<FixedOffset>>,
}

/// When the sleeper fell asleep, in whichever form the delivery used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum SleepTime {
    /// Asleep's documentation: the clock time of falling asleep.
    Clock(DateTime<FixedOffset>),
    /// Integration guides: a duration `HH:MM:SS`, in seconds.
    Duration(i64),
}

/// One sleep cycle in the list form some deliveries use for `sleep_cycle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleSpan {
    pub index: i64,
    pub start_time: Option<DateTime<FixedOffset>>,
    pub end_time: Option<DateTime<FixedOffset>>,
}

macro_rules! numeric_stat {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Asleep's statistics of a night. Durations and latencies are in
        /// seconds, ratios in 0..1, counts plain; every field may be absent.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct Stat {
            $($(#[$doc])* pub $name: Option<f64>,)*
            pub sleep_time: Option<SleepTime>,
            pub wake_time: Option<DateTime<FixedOffset>>,
            /// Sleep efficiency as a percentage, whichever style arrived.
            pub sleep_efficiency: Option<f64>,
            /// Mean sleep-cycle length in seconds, when sent as a number.
            pub sleep_cycle: Option<f64>,
            /// Sleep cycles, when sent as a list.
            pub sleep_cycles: Vec<CycleSpan>,
            /// Cycle boundaries: sleep onset, then the end of each cycle.
            pub sleep_cycle_time: Vec<DateTime<FixedOffset>>,
            pub breathing_pattern: Option<String>,
        }

        impl Stat {
            fn read_numbers(&mut self, object: &Map<String, Value>, path: &str) -> Result<(), PayloadError> {
                $(self.$name = optional_number(object, stringify!($name), path)?;)*
                $(check_stat_range(stringify!($name), self.$name, path)?;)*
                Ok(())
            }
        }
    };
}

numeric_stat! {
    sleep_latency, wakeup_latency, light_latency, deep_latency, rem_latency,
    time_in_bed, time_in_sleep_period, time_in_sleep, time_in_wake,
    time_in_light, time_in_deep, time_in_rem, time_in_snoring,
    time_in_no_snoring, time_in_stable_breath, time_in_unstable_breath,
    longest_waso,
    sleep_ratio, wake_ratio, light_ratio, deep_ratio, rem_ratio,
    snoring_ratio, no_snoring_ratio, stable_breath_ratio, unstable_breath_ratio,
    waso_count, sleep_cycle_count, snoring_count, unstable_breath_count,
    /// Asleep's sleep score, 0..100.
    sleep_index,
    breathing_index,
}

/// Parses a body as JSON, rejecting an object that repeats a key. Plain
/// `serde_json` keeps the last copy silently, which would let a body give
/// two values for one field and be read as either.
pub fn parse_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<StrictValue>(body).map(|strict| strict.0)
}

/// A JSON value whose objects have unique keys.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut values = Vec::with_capacity(items.size_hint().unwrap_or(0).min(MAX_EPOCHS));
        while let Some(StrictValue(item)) = items.next_element()? {
            values.push(item);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let StrictValue(value) = entries.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Parses and validates a webhook body.
///
/// `header_user_id` is the `x-user-id` header; when the body names a user too,
/// both must agree.
pub fn parse_delivery(body: &Value, header_user_id: &str) -> Result<Delivery, PayloadError> {
    let top = body
        .as_object()
        .ok_or_else(|| PayloadError::new("body", format!("must be a JSON object, got {}", kind_of(body))))?;

    let event_key = if top.contains_key("callback_event") {
        "callback_event"
    } else {
        "event"
    };
    let event = match top.get(event_key) {
        Some(Value::String(event)) => event.clone(),
        Some(other) => {
            return Err(PayloadError::new(
                event_key,
                format!("must be a string, got {}", kind_of(other)),
            ));
        }
        None => return Err(PayloadError::new("event", "is missing")),
    };
    let (data, prefix) = match (top.get("data"), top.get("callback_data")) {
        (Some(Value::Object(data)), _) => (data, "data."),
        (_, Some(Value::Object(data))) => (data, "callback_data."),
        (Some(other), _) => {
            return Err(PayloadError::new(
                "data",
                format!("must be an object, got {}", kind_of(other)),
            ));
        }
        (_, Some(other)) => {
            return Err(PayloadError::new(
                "callback_data",
                format!("must be an object, got {}", kind_of(other)),
            ));
        }
        (None, None) => (top, ""),
    };
    let fields = Fields {
        data,
        top,
        prefix: prefix.to_string(),
    };

    let user_id = fields.user_id(header_user_id)?;
    let sent_at = optional_time(top, "timestamp", "")?;
    match event.as_str() {
        INFERENCE_COMPLETE => parse_inference(&fields, user_id, sent_at).map(Delivery::Inference),
        SESSION_COMPLETE => {
            parse_session_complete(&fields, user_id, sent_at).map(|report| Delivery::SessionComplete(Box::new(report)))
        }
        _ => Ok(Delivery::Unknown { event, user_id }),
    }
}

/// Locations of one body's fields: `data` for enveloped bodies, the top
/// level for flat ones. Flat bodies also repeat ids at the top level.
struct Fields<'a> {
    data: &'a Map<String, Value>,
    top: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Returns a field of `data`, or of the top level when `data` lacks
    /// it, with the path it was found at.
    fn data_or_top(&self, name: &str) -> (Option<&'a Value>, String) {
        match self.data.get(name) {
            Some(value) => (Some(value), self.path(name)),
            None => (self.top.get(name), name.to_string()),
        }
    }

    /// Reads an optional id from `data`, falling back to the top level.
    fn id(&self, name: &str) -> Result<Option<(String, String)>, PayloadError> {
        for (object, path) in [(self.data, self.path(name)), (self.top, name.to_string())] {
            if let Some(value) = object.get(name).filter(|value| !value.is_null()) {
                return validate_id(value, &path).map(|id| Some((id, path)));
            }
        }
        Ok(None)
    }

    fn user_id(&self, header_user_id: &str) -> Result<String, PayloadError> {
        let header = validate_id(&Value::String(header_user_id.to_string()), "x-user-id")?;
        match self.id("user_id")? {
            Some((body, path)) if body != header => Err(PayloadError::new(
                format!("x-user-id, {path}"),
                format!("the header names user {header:?} but the body names user {body:?}"),
            )),
            _ => Ok(header),
        }
    }
}

fn parse_inference(
    fields: &Fields,
    user_id: String,
    sent_at: Option<DateTime<FixedOffset>>,
) -> Result<InferenceResult, PayloadError> {
    let data = fields.data;
    let (session_id, _) = fields
        .id("session_id")?
        .ok_or_else(|| PayloadError::new(fields.path("session_id"), "is missing"))?;

    let seq_path = fields.path("seq_num");
    let seq_num = match data.get("seq_num") {
        None | Some(Value::Null) => return Err(PayloadError::new(seq_path, "is missing")),
        Some(value) => value
            .as_u64()
            .filter(|seq| (*seq as usize) < MAX_EPOCHS)
            .ok_or_else(|| {
                PayloadError::new(
                    &seq_path,
                    format!("must be an integer from 0 to {}, got {value}", MAX_EPOCHS - 1),
                )
            })? as u32,
    };
    let inference_seq_num = match data.get("inference_seq_num") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_i64().ok_or_else(|| {
            PayloadError::new(
                fields.path("inference_seq_num"),
                format!("must be an integer, got {value}"),
            )
        })?),
    };

    let sleep_path = fields.path("sleep_stages");
    let sleep_stages = stage_array(data.get("sleep_stages"), &sleep_path, -1, 3)?
        .ok_or_else(|| PayloadError::new(&sleep_path, "is missing"))?;
    if sleep_stages.is_empty() {
        return Err(PayloadError::new(sleep_path, "must hold at least one epoch"));
    }
    if sleep_stages.len() > seq_num as usize + 1 {
        return Err(PayloadError::new(
            format!("{sleep_path}, {seq_path}"),
            format!(
                "{} epochs ending at seq_num {seq_num} would start before epoch 0; a result covers epochs seq_num + 1 - length ..= seq_num",
                sleep_stages.len()
            ),
        ));
    }
    let (snoring_stages, breath_stages) = side_arrays(fields, sleep_stages.len())?;

    Ok(InferenceResult {
        user_id,
        session_id,
        seq_num,
        inference_seq_num,
        sleep_stages,
        snoring_stages,
        breath_stages,
        sent_at: sent_at.or(optional_time(data, "timestamp", &fields.prefix)?),
    })
}

fn parse_session_complete(
    fields: &Fields,
    user_id: String,
    sent_at: Option<DateTime<FixedOffset>>,
) -> Result<FinalReport, PayloadError> {
    let data = fields.data;
    let session_path = fields.path("session");
    let session = match data.get("session") {
        Some(Value::Object(session)) => session,
        None | Some(Value::Null) => return Err(PayloadError::new(session_path, "is missing")),
        Some(other) => {
            return Err(PayloadError::new(
                session_path,
                format!("must be an object, got {}", kind_of(other)),
            ));
        }
    };
    let session_fields = Fields {
        data: session,
        top: session,
        prefix: format!("{session_path}."),
    };

    let inner_id = match session.get("id").filter(|id| !id.is_null()) {
        Some(id) => Some(validate_id(id, &session_fields.path("id"))?),
        None => None,
    };
    let outer = fields.id("session_id")?;
    let session_id = match (inner_id, outer) {
        (Some(inner), Some((outer, path))) if inner != outer => {
            return Err(PayloadError::new(
                format!("{path}, {}", session_fields.path("id")),
                format!("name different sessions: {outer:?} and {inner:?}"),
            ));
        }
        (Some(inner), _) => inner,
        (None, Some((outer, _))) => outer,
        (None, None) => return Err(PayloadError::new(session_fields.path("id"), "is missing")),
    };

    let sleep_path = session_fields.path("sleep_stages");
    let sleep_stages = stage_array(session.get("sleep_stages"), &sleep_path, -1, 3)?
        .ok_or_else(|| PayloadError::new(&sleep_path, "is missing"))?;
    if sleep_stages.len() > MAX_EPOCHS {
        return Err(PayloadError::new(
            sleep_path,
            format!(
                "holds {} epochs, more than the maximum of {MAX_EPOCHS} (48 hours)",
                sleep_stages.len()
            ),
        ));
    }
    let (snoring_stages, breath_stages) = side_arrays(&session_fields, sleep_stages.len())?;

    // Session times without an offset are read in the session's own zone.
    let timezone = read_timezone(fields, &session_fields)?;
    let zone: chrono_tz::Tz = timezone.parse().unwrap_or(chrono_tz::Tz::UTC);
    let session_time = |name: &str| optional_local_time(session, name, &session_fields.prefix, zone);
    let start_time = session_time("start_time")?
        .ok_or_else(|| PayloadError::new(session_fields.path("start_time"), "is missing"))?;
    let end_time = session_time("end_time")?;
    let unexpected_end_time = session_time("unexpected_end_time")?;
    if let Some(end) = end_time {
        let seconds = (end - start_time).num_seconds();
        if seconds < 0 {
            return Err(PayloadError::new(
                session_fields.path("end_time"),
                format!("{end} is before start_time {start_time}"),
            ));
        }
        if seconds as f64 > MAX_STAT_SECONDS {
            return Err(PayloadError::new(
                session_fields.path("end_time"),
                format!("{end} is more than 48 hours after start_time {start_time}"),
            ));
        }
        // The last epoch may be cut short by the end of the recording, but
        // every other epoch lies inside the session.
        let covered = (sleep_stages.len() as i64 - 1).max(0) * EPOCH_SECONDS;
        if seconds < covered {
            return Err(PayloadError::new(
                session_fields.path("end_time"),
                format!(
                    "{end} is {seconds} s after start_time {start_time}, but sleep_stages holds {} epochs of \
                     {EPOCH_SECONDS} s, which need at least {covered} s",
                    sleep_stages.len()
                ),
            ));
        }
    }
    let state = optional_string(session, "state", &session_fields.prefix)?;
    let (peculiarities, peculiarities_path) = fields.data_or_top("peculiarities");
    let peculiarities = match peculiarities {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| PayloadError::new(format!("{peculiarities_path}[{index}]"), "must be a string"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(PayloadError::new(
                peculiarities_path,
                format!("must be a list of strings, got {}", kind_of(other)),
            ));
        }
    };
    let missing_data_ratio = optional_number(data, "missing_data_ratio", &fields.prefix)?;
    if let Some(ratio) = missing_data_ratio.filter(|ratio| !(0.0..=1.0).contains(ratio)) {
        return Err(PayloadError::new(
            fields.path("missing_data_ratio"),
            format!("must be between 0 and 1, got {ratio}"),
        ));
    }
    let (stat, stat_path) = fields.data_or_top("stat");
    let stat = match stat {
        None | Some(Value::Null) => None,
        Some(Value::Object(stat)) => Some(read_stat(stat, &format!("{stat_path}."))?),
        Some(other) => {
            return Err(PayloadError::new(
                stat_path,
                format!("must be an object or null, got {}", kind_of(other)),
            ));
        }
    };

    Ok(FinalReport {
        user_id,
        session_id,
        timezone,
        state,
        start_time,
        end_time,
        unexpected_end_time,
        sleep_stages,
        snoring_stages,
        breath_stages,
        peculiarities,
        missing_data_ratio,
        stat,
        sent_at,
    })
}

fn read_timezone(fields: &Fields, session: &Fields) -> Result<String, PayloadError> {
    let candidates = [
        (fields.data, "timezone", fields.prefix.as_str()),
        (fields.top, "timezone", ""),
        (session.data, "timezone", session.prefix.as_str()),
        (session.data, "created_timezone", session.prefix.as_str()),
    ];
    for (object, name, prefix) in candidates {
        if let Some(zone) = optional_string(object, name, prefix)? {
            return match zone.parse::<chrono_tz::Tz>() {
                Ok(_) => Ok(zone),
                Err(_) => Err(PayloadError::new(
                    format!("{prefix}{name}"),
                    format!("{zone:?} is not an IANA time zone name such as \"Asia/Seoul\" or \"UTC\""),
                )),
            };
        }
    }
    Ok("UTC".to_string())
}

/// Reads `snoring_stages` and `breath_stages`, which must match the sleep
/// stages in length when present. Missing snoring becomes unknown (-1).
fn side_arrays(fields: &Fields, epochs: usize) -> Result<(Vec<i8>, Option<Vec<i8>>), PayloadError> {
    let snoring_path = fields.path("snoring_stages");
    let snoring = stage_array(fields.data.get("snoring_stages"), &snoring_path, 0, 1)?;
    let breath_path = fields.path("breath_stages");
    let breath = stage_array(fields.data.get("breath_stages"), &breath_path, 0, 1)?;
    for (values, path) in [(&snoring, &snoring_path), (&breath, &breath_path)] {
        if let Some(values) = values.as_ref().filter(|values| values.len() != epochs) {
            return Err(PayloadError::new(
                path.as_str(),
                format!(
                    "holds {} values but sleep_stages holds {epochs}; the arrays must have the same length",
                    values.len()
                ),
            ));
        }
    }
    Ok((snoring.unwrap_or_else(|| vec![-1; epochs]), breath))
}

/// Reads an array of small integers in `min..=max`; `None` when absent or null.
fn stage_array(value: Option<&Value>, path: &str, min: i8, max: i8) -> Result<Option<Vec<i8>>, PayloadError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(PayloadError::new(
                path,
                format!("must be an array, got {}", kind_of(other)),
            ));
        }
    };
    if items.len() > MAX_EPOCHS {
        return Err(PayloadError::new(
            path,
            format!(
                "holds {} values, more than the maximum of {MAX_EPOCHS} epochs (48 hours)",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            item.as_i64()
                .filter(|stage| (min as i64..=max as i64).contains(stage))
                .map(|stage| stage as i8)
                .ok_or_else(|| {
                    PayloadError::new(
                        format!("{path}[{index}]"),
                        format!("must be an integer from {min} to {max}, got {item}"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn validate_id(value: &Value, path: &str) -> Result<String, PayloadError> {
    let id = value
        .as_str()
        .ok_or_else(|| PayloadError::new(path, format!("must be a string, got {}", kind_of(value))))?;
    if id.is_empty() {
        return Err(PayloadError::new(path, "must not be empty"));
    }
    let chars = id.chars().count();
    if chars > MAX_ID_CHARS {
        return Err(PayloadError::new(
            path,
            format!("is {chars} characters long, more than the maximum of {MAX_ID_CHARS}"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(PayloadError::new(path, "must not contain control characters"));
    }
    // Browsers and proxies resolve these path segments, so pages for such an
    // id could never be reached.
    if id == "." || id == ".." {
        return Err(PayloadError::new(path, format!("{id:?} is not a usable id")));
    }
    Ok(id.to_string())
}

/// Checks a user or session id given outside a payload, such as on the
/// command line, by the same rules as ids in deliveries.
pub fn check_id(id: &str, name: &str) -> Result<(), PayloadError> {
    validate_id(&Value::String(id.to_string()), name).map(|_| ())
}

/// Maximum duration a statistic may state, in seconds: the 48 hours a
/// timeline may cover.
const MAX_STAT_SECONDS: f64 = (MAX_EPOCHS as i64 * EPOCH_SECONDS) as f64;

/// Checks a numeric statistic against the range its kind allows: ratios
/// 0..1, scores 0..100, counts up to one per epoch, and durations up to
/// 48 hours. A negative or absurd figure is a broken payload, not a night.
fn check_stat_range(name: &str, value: Option<f64>, prefix: &str) -> Result<(), PayloadError> {
    let Some(value) = value else {
        return Ok(());
    };
    let (max, unit) = if name.ends_with("_ratio") {
        (1.0, "a ratio")
    } else if name == "sleep_index" {
        (100.0, "a score")
    } else if name.ends_with("_count") {
        (MAX_EPOCHS as f64, "a count")
    } else if name == "breathing_index" {
        (f64::MAX, "an index")
    } else {
        (MAX_STAT_SECONDS, "a duration in seconds")
    };
    if value.is_finite() && (0.0..=max).contains(&value) {
        return Ok(());
    }
    let range = if max == f64::MAX {
        "at least 0".to_string()
    } else {
        format!("from 0 to {max}")
    };
    Err(PayloadError::new(
        format!("{prefix}{name}"),
        format!("must be {unit} {range}, got {value}"),
    ))
}

fn optional_number(object: &Map<String, Value>, name: &str, prefix: &str) -> Result<Option<f64>, PayloadError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => Ok(number.as_f64()),
        Some(other) => Err(PayloadError::new(
            format!("{prefix}{name}"),
            format!("must be a number or null, got {}", kind_of(other)),
        )),
    }
}

fn optional_string(object: &Map<String, Value>, name: &str, prefix: &str) -> Result<Option<String>, PayloadError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(PayloadError::new(
            format!("{prefix}{name}"),
            format!("must be a string or null, got {}", kind_of(other)),
        )),
    }
}

fn optional_time(
    object: &Map<String, Value>,
    name: &str,
    prefix: &str,
) -> Result<Option<DateTime<FixedOffset>>, PayloadError> {
    let Some(text) = optional_string(object, name, prefix)? else {
        return Ok(None);
    };
    parse_time(&text).map(Some).map_err(|_| {
        PayloadError::new(
            format!("{prefix}{name}"),
            format!("{text:?} is not an ISO 8601 date and time with an offset, such as \"2026-11-20T23:47:07+09:00\""),
        )
    })
}

/// Reads an optional ISO 8601 time; one without an offset is read as a
/// clock time in `zone` (the earlier reading when the clock repeats an hour).
fn optional_local_time(
    object: &Map<String, Value>,
    name: &str,
    prefix: &str,
    zone: chrono_tz::Tz,
) -> Result<Option<DateTime<FixedOffset>>, PayloadError> {
    let Some(text) = optional_string(object, name, prefix)? else {
        return Ok(None);
    };
    if let Ok(time) = DateTime::parse_from_rfc3339(&text) {
        return Ok(Some(time));
    }
    let local = chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .and_then(|naive| naive.and_local_timezone(zone).earliest());
    local.map(|time| Some(time.fixed_offset())).ok_or_else(|| {
        PayloadError::new(
            format!("{prefix}{name}"),
            format!(
                "{text:?} is not an ISO 8601 date and time such as \"2026-11-20T23:47:07+09:00\", or names a \
                 clock time that {zone} skips"
            ),
        )
    })
}

/// Parses an RFC 3339 time; a time without an offset is read as UTC, the way
/// some integration guides write it.
pub fn parse_time(text: &str) -> Result<DateTime<FixedOffset>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(text).or_else(|error| {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
            .map(|naive| naive.and_utc().fixed_offset())
            .map_err(|_| error)
    })
}

fn read_stat(object: &Map<String, Value>, prefix: &str) -> Result<Stat, PayloadError> {
    let mut stat = Stat::default();
    stat.read_numbers(object, prefix)?;

    stat.sleep_time = match optional_string(object, "sleep_time", prefix)? {
        None => None,
        Some(text) => Some(match parse_time(&text) {
            Ok(clock) => SleepTime::Clock(clock),
            Err(_) => {
                let seconds = parse_hms(&text).ok_or_else(|| {
                    PayloadError::new(
                        format!("{prefix}sleep_time"),
                        format!("{text:?} is neither an ISO 8601 date and time nor a duration HH:MM:SS"),
                    )
                })?;
                if seconds as f64 > MAX_STAT_SECONDS {
                    return Err(PayloadError::new(
                        format!("{prefix}sleep_time"),
                        format!("{text:?} is a duration of more than 48 hours"),
                    ));
                }
                SleepTime::Duration(seconds)
            }
        }),
    };
    stat.wake_time = optional_time(object, "wake_time", prefix)?;

    // A fraction (Asleep's documentation) and a percentage (integration
    // guides) share the field. No real night has an efficiency of 1 % or
    // less, so a value up to 1 is read as a fraction.
    stat.sleep_efficiency = match optional_number(object, "sleep_efficiency", prefix)? {
        None => None,
        Some(fraction) if (0.0..=1.0).contains(&fraction) => Some(fraction * 100.0),
        Some(percent) if (1.0..=100.0).contains(&percent) => Some(percent),
        Some(other) => {
            return Err(PayloadError::new(
                format!("{prefix}sleep_efficiency"),
                format!("must be a fraction 0..1 or a percentage 0..100, got {other}"),
            ));
        }
    };

    match object.get("sleep_cycle") {
        None | Some(Value::Null) => {}
        Some(Value::Number(seconds)) => {
            stat.sleep_cycle = seconds.as_f64();
            check_stat_range("sleep_cycle", stat.sleep_cycle, prefix)?;
        }
        Some(Value::Array(cycles)) => {
            for (position, cycle) in cycles.iter().enumerate() {
                let path = format!("{prefix}sleep_cycle[{position}]");
                let cycle = cycle
                    .as_object()
                    .ok_or_else(|| PayloadError::new(&path, format!("must be an object, got {}", kind_of(cycle))))?;
                let inner_prefix = format!("{path}.");
                let mut index = position as i64;
                for name in ["order", "index"] {
                    match cycle.get(name) {
                        None | Some(Value::Null) => {}
                        Some(value) => {
                            index = value.as_i64().ok_or_else(|| {
                                PayloadError::new(
                                    format!("{inner_prefix}{name}"),
                                    format!("must be an integer, got {value}"),
                                )
                            })?;
                        }
                    }
                }
                stat.sleep_cycles.push(CycleSpan {
                    index,
                    start_time: optional_time(cycle, "start_time", &inner_prefix)?,
                    end_time: optional_time(cycle, "end_time", &inner_prefix)?,
                });
            }
        }
        Some(other) => {
            return Err(PayloadError::new(
                format!("{prefix}sleep_cycle"),
                format!(
                    "must be a number of seconds or a list of cycles, got {}",
                    kind_of(other)
                ),
            ));
        }
    }

    match object.get("sleep_cycle_time") {
        None | Some(Value::Null) => {}
        Some(Value::Array(times)) => {
            for (index, time) in times.iter().enumerate() {
                let path = format!("{prefix}sleep_cycle_time[{index}]");
                let text = time
                    .as_str()
                    .ok_or_else(|| PayloadError::new(&path, format!("must be a string, got {}", kind_of(time))))?;
                stat.sleep_cycle_time.push(
                    parse_time(text)
                        .map_err(|_| PayloadError::new(&path, format!("{text:?} is not an ISO 8601 date and time")))?,
                );
            }
        }
        Some(other) => {
            return Err(PayloadError::new(
                format!("{prefix}sleep_cycle_time"),
                format!("must be a list of times, got {}", kind_of(other)),
            ));
        }
    }
    stat.breathing_pattern = optional_string(object, "breathing_pattern", prefix)?;
    Ok(stat)
}

/// Parses `HH:MM:SS` (hours may exceed 23) into seconds; `None` when the
/// text is not in that form or the seconds overflow an `i64`.
fn parse_hms(text: &str) -> Option<i64> {
    let mut parts = text.split(':');
    let hours: i64 = parts.next()?.parse().ok()?;
    let minutes: i64 = parts.next()?.parse().ok()?;
    let seconds: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || hours < 0 || !(0..60).contains(&minutes) || !(0..60).contains(&seconds) {
        return None;
    }
    hours.checked_mul(3600)?.checked_add(minutes * 60 + seconds)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Loaders for the bundled example payloads, shared by unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Delivery, FinalReport, parse_delivery};

    /// Reads `tests/fixtures/single/{name}` as JSON.
    pub fn single(name: &str) -> serde_json::Value {
        let path = format!("{}/tests/fixtures/single/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Parses the final report in `tests/fixtures/single/{name}`, delivered for `user_id`.
    pub fn final_report(name: &str, user_id: &str) -> FinalReport {
        match parse_delivery(&single(name), user_id).unwrap() {
            Delivery::SessionComplete(report) => *report,
            other => panic!("expected a final report, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use super::fixtures::single as fixture;

    #[test]
    fn enveloped_inference_parses() {
        let body = fixture("inference-enveloped.json");
        let Delivery::Inference(result) = parse_delivery(&body, "G-20261101-demo-user-0001").unwrap() else {
            panic!("expected an inference result");
        };
        assert_eq!(result.seq_num, 39);
        assert_eq!(result.sleep_stages.len(), 40);
        assert_eq!(result.first_epoch(), 0);
        assert_eq!(result.breath_stages, None);
    }

    #[test]
    fn flat_short_inference_parses() {
        let body = fixture("inference-flat-short.json");
        let Delivery::Inference(result) = parse_delivery(&body, "user123").unwrap() else {
            panic!("expected an inference result");
        };
        assert_eq!(result.first_epoch(), 56);
        assert_eq!(result.snoring_stages, vec![0, 0, 1, 1, 0]);
        assert!(result.sent_at.is_some());
    }

    #[test]
    fn both_stat_styles_normalize() {
        let Delivery::SessionComplete(documented) =
            parse_delivery(&fixture("session-enveloped.json"), "G-20261101-demo-user-0001").unwrap()
        else {
            panic!("expected a final report");
        };
        let stat = documented.stat.unwrap();
        assert_eq!(stat.sleep_efficiency, Some(92.0));
        assert!(matches!(stat.sleep_time, Some(SleepTime::Clock(_))));
        assert_eq!(stat.sleep_cycle, Some(5497.0));
        assert_eq!(stat.sleep_cycle_time.len(), 5);
        assert_eq!(documented.timezone, "Asia/Seoul");

        let Delivery::SessionComplete(guide) = parse_delivery(&fixture("session-flat.json"), "user123").unwrap() else {
            panic!("expected a final report");
        };
        let stat = guide.stat.unwrap();
        assert_eq!(stat.sleep_efficiency, Some(90.25));
        assert_eq!(stat.sleep_time, Some(SleepTime::Duration(4 * 3600 + 600)));
        assert_eq!(stat.sleep_cycles.len(), 2);
        assert_eq!(guide.timezone, "UTC");
        assert_eq!(guide.session_id, "session123");
    }

    #[test]
    fn callback_spelling_is_accepted() {
        let body = json!({
            "callback_event": "INFERENCE_COMPLETE",
            "callback_version": "V3",
            "callback_data": {"session_id": "s", "seq_num": 2, "sleep_stages": [0, 1, 2]},
        });
        let Delivery::Inference(result) = parse_delivery(&body, "u").unwrap() else {
            panic!("expected an inference result");
        };
        assert_eq!(result.snoring_stages, vec![-1, -1, -1]);
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (json!([]), "body"),
            (json!({"version": "V3"}), "event"),
            (
                json!({"event": "INFERENCE_COMPLETE", "data": {"user_id": "u", "session_id": "s", "seq_num": 1, "sleep_stages": [0, 4]}}),
                "data.sleep_stages[1]",
            ),
            (
                json!({"event": "INFERENCE_COMPLETE", "session_id": "s", "seq_num": 1, "sleep_stages": [0, 1], "snoring_stages": [0, 2]}),
                "snoring_stages[1]",
            ),
            (
                json!({"event": "INFERENCE_COMPLETE", "session_id": "s", "seq_num": 1, "sleep_stages": [0, 1], "snoring_stages": [0]}),
                "snoring_stages",
            ),
            (
                json!({"event": "INFERENCE_COMPLETE", "session_id": "s", "seq_num": 1, "sleep_stages": [0, 1, 1]}),
                "sleep_stages, seq_num",
            ),
            (
                json!({"event": "INFERENCE_COMPLETE", "session_id": "", "seq_num": 1, "sleep_stages": [0]}),
                "session_id",
            ),
            (
                json!({"event": "INFERENCE_COMPLETE", "session_id": "a\nb", "seq_num": 1, "sleep_stages": [0]}),
                "session_id",
            ),
            (
                json!({"event": "INFERENCE_COMPLETE", "session_id": "x".repeat(129), "seq_num": 1, "sleep_stages": [0]}),
                "session_id",
            ),
            (
                json!({"event": "INFERENCE_COMPLETE", "session_id": "s", "seq_num": -1, "sleep_stages": [0]}),
                "seq_num",
            ),
            (
                json!({"event": "INFERENCE_COMPLETE", "timestamp": "yesterday", "session_id": "s", "seq_num": 1, "sleep_stages": [0]}),
                "timestamp",
            ),
            (
                json!({"event": "INFERENCE_COMPLETE", "user_id": "other", "session_id": "s", "seq_num": 1, "sleep_stages": [0]}),
                "x-user-id, user_id",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "nope", "sleep_stages": [0]}}),
                "session.start_time",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "timezone": "Mars/Base", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}}),
                "session.timezone",
            ),
            (
                json!({"event": "INFERENCE_COMPLETE", "session_id": "..", "seq_num": 1, "sleep_stages": [0]}),
                "session_id",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "end_time": "2036-01-01T00:00:00Z", "sleep_stages": [0]}}),
                "session.end_time",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}, "stat": {"time_in_bed": -5}}),
                "stat.time_in_bed",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}, "stat": {"time_in_bed": 1e300}}),
                "stat.time_in_bed",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}, "stat": {"waso_count": -5}}),
                "stat.waso_count",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}, "stat": {"rem_ratio": 1.5}}),
                "stat.rem_ratio",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}, "stat": {"sleep_efficiency": -5}}),
                "stat.sleep_efficiency",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "data": {"session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}}, "stat": {"waso_count": -1}}),
                "stat.waso_count",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "data": {"session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}}, "peculiarities": [1]}),
                "peculiarities[0]",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "end_time": "2026-01-01T00:01:00Z", "sleep_stages": [0, 1, 1, 1]}}),
                "session.end_time",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "timezone": "America/New_York", "session": {"id": "s", "start_time": "2026-03-08T02:30:00", "sleep_stages": [0]}}),
                "session.start_time",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}, "stat": {"sleep_time": "9223372036854775807:00:00"}}),
                "stat.sleep_time",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}, "stat": {"sleep_time": "49:00:00"}}),
                "stat.sleep_time",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}, "stat": {"sleep_cycle": -1e300}}),
                "stat.sleep_cycle",
            ),
            (
                json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}, "stat": {"sleep_cycle": [{"index": "1"}]}}),
                "stat.sleep_cycle[0].index",
            ),
        ];
        for (body, field) in cases {
            let error = parse_delivery(&body, "u").unwrap_err();
            assert_eq!(error.field, field, "body {body}: {error}");
        }
    }

    #[test]
    fn efficiency_error_shows_sent_value() {
        let body = json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}, "stat": {"sleep_efficiency": -5}});
        let error = parse_delivery(&body, "u").unwrap_err();
        assert!(error.problem.ends_with("got -5"), "{error}");
    }

    #[test]
    fn long_rejected_values_are_cut_short() {
        let zone = "Z".repeat(100_000);
        let body = json!({"event": "SESSION_COMPLETE", "timezone": zone, "session": {
            "id": "s", "start_time": "2026-01-01T00:00:00Z", "sleep_stages": [0]}});
        let error = parse_delivery(&body, "u").unwrap_err();
        assert_eq!(error.field, "timezone");
        assert_eq!(error.problem.chars().count(), MAX_PROBLEM_CHARS + 1);
        assert!(error.problem.ends_with('…'));
    }

    #[test]
    fn session_times_without_offset_use_session_zone() {
        let body = json!({"event": "SESSION_COMPLETE", "timezone": "America/New_York", "session": {
            "id": "s", "start_time": "2026-11-08T23:00:00", "end_time": "2026-11-09T06:00:00-05:00",
            "sleep_stages": vec![0; 840]}});
        let Delivery::SessionComplete(report) = parse_delivery(&body, "u").unwrap() else {
            panic!("a SESSION_COMPLETE parses as a final report");
        };
        assert_eq!(report.start_time.to_rfc3339(), "2026-11-08T23:00:00-05:00");
        assert_eq!((report.end_time.unwrap() - report.start_time).num_seconds(), 7 * 3600);
        // The last epoch may end after the session does.
        let body = json!({"event": "SESSION_COMPLETE", "session": {"id": "s", "start_time": "2026-01-01T00:00:00Z",
            "end_time": "2026-01-01T00:01:10Z", "sleep_stages": [0, 1, 1]}});
        assert!(parse_delivery(&body, "u").is_ok());
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let error =
            parse_json(br#"{"event": "INFERENCE_COMPLETE", "data": {"seq_num": 9, "seq_num": 19}}"#).unwrap_err();
        assert!(error.to_string().contains(r#"duplicate key "seq_num""#), "{error}");
        assert!(error.to_string().contains("line 1 column"), "{error}");
    }

    #[test]
    fn strict_parse_matches_plain_parse() {
        let body = std::fs::read(format!(
            "{}/tests/fixtures/single/session-enveloped.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let plain: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parse_json(&body).unwrap(), plain);
        assert_eq!(
            parse_json(b"[1, -2, 3.5, true, null, \"x\"]").unwrap(),
            serde_json::json!([1, -2, 3.5, true, null, "x"])
        );
    }

    #[test]
    fn unknown_event_is_kept_apart() {
        let body = json!({"event": "SOMETHING_NEW", "data": {}});
        assert_eq!(
            parse_delivery(&body, "u").unwrap(),
            Delivery::Unknown {
                event: "SOMETHING_NEW".into(),
                user_id: "u".into()
            }
        );
    }
}
