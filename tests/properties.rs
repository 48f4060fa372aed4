//! Property tests of ordering and of hostile input. Generated nights
//! delivered in any order with any duplicates give the same timeline and
//! report as in-order delivery, and the live hypnogram never loses an epoch
//! it showed. Arbitrary bodies are either accepted or rejected with an error
//! that names the field.
//!
//! Each property runs 64 cases in-process and a few over HTTP by default.
//! Set `PROPTEST_CASES` to run more; the HTTP properties run an eighth of
//! that number because each case starts a server.

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;

use common::{Hypnogram, TestServer, final_report_body, inference_body, viewer_token};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use sleep_dashboard::payload::{Delivery, EPOCH_SECONDS, MAX_EPOCHS, parse_delivery, parse_json};
use sleep_dashboard::rooms::{Applied, LiveNight};
use sleep_dashboard::storage::SessionEvents;

/// Cases of the in-process properties when `PROPTEST_CASES` is not set.
const LOCAL_CASES: u32 = 64;

/// Returns the number of cases: `PROPTEST_CASES` when set, else `local`.
/// Properties over HTTP pass `divisor` 8 because each of their cases starts
/// a server and sends dozens of requests.
fn cases(divisor: u32) -> u32 {
    let total = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(LOCAL_CASES);
    (total / divisor).max(1)
}

fn config(divisor: u32) -> Config {
    Config {
        cases: cases(divisor),
        // Shrinking a failing HTTP case restarts a server per step, so it is
        // bounded to keep a failure report within a few minutes.
        max_shrink_iters: 256,
        ..Config::default()
    }
}

/// Returns the Tokio runtime shared by every HTTP case, because the proptest
/// runner is synchronous.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

// ---------------------------------------------------------------------------
// Nights delivered in any order
// ---------------------------------------------------------------------------

const USER: &str = "property-user";
const SESSION: &str = "property-night";

/// Arrival time of the first epoch's result, in Unix milliseconds.
const NIGHT_START_MS: i64 = 1_795_000_000_000;

/// A generated night: partial results with increasing `seq_num` whose
/// windows overlap and revise each other, and maybe a final report.
#[derive(Debug, Clone)]
struct Night {
    results: Vec<GeneratedResult>,
    /// The final report's sleep and snoring stages.
    report: Option<(Vec<i8>, Vec<i8>)>,
}

#[derive(Debug, Clone)]
struct GeneratedResult {
    seq_num: u32,
    sleep_stages: Vec<i8>,
    snoring_stages: Vec<i8>,
}

/// Generates a stage code, mostly a known one. The code -1 marks an epoch
/// without data.
fn stage() -> impl Strategy<Value = i8> {
    prop_oneof![1 => Just(-1i8), 8 => 0i8..=3]
}

/// Generates a night of 1 to 120 epochs. Epochs the night's truth marks
/// unknown stay unknown in every result and in the report, so the "never
/// loses a shown epoch" property tests the server and not the data: a known
/// epoch may be revised to another known value, never back to unknown.
fn night() -> impl Strategy<Value = Night> {
    (1usize..=120)
        .prop_flat_map(|epochs| {
            (
                prop::collection::vec(stage(), epochs),
                prop::collection::vec(0i8..=1, epochs),
                prop::collection::btree_set(0..epochs, 1..=8),
                any::<bool>(),
            )
        })
        .prop_flat_map(|(truth, snoring, ends, with_report)| {
            let results: Vec<_> = ends
                .into_iter()
                .map(|end| {
                    let truth = truth.clone();
                    (1..=end + 1, prop::collection::vec((0i8..=3, 0i8..=1), end + 1)).prop_map(
                        move |(length, revisions)| {
                            let first = end + 1 - length;
                            let (sleep_stages, snoring_stages) = (first..=end)
                                .map(|epoch| {
                                    let (revised, snoring) = revisions[epoch];
                                    (if truth[epoch] == -1 { -1 } else { revised }, snoring)
                                })
                                .unzip();
                            GeneratedResult {
                                seq_num: end as u32,
                                sleep_stages,
                                snoring_stages,
                            }
                        },
                    )
                })
                .collect();
            let report = with_report.then_some((truth, snoring));
            (results, Just(report)).prop_map(|(results, report)| Night { results, report })
        })
}

/// Generates a night with a delivery order, which is a permutation of its
/// deliveries with repeats inserted anywhere. Index `results.len()` is the
/// final report.
fn night_and_order() -> impl Strategy<Value = (Night, Vec<usize>)> {
    night().prop_flat_map(|night| {
        let deliveries = night.results.len() + usize::from(night.report.is_some());
        let order = Just((0..deliveries).collect::<Vec<_>>()).prop_shuffle();
        let repeats = prop::collection::vec((any::<Index>(), any::<Index>()), 0..6);
        (Just(night), order, repeats).prop_map(move |(night, mut order, repeats)| {
            for (which, position) in repeats {
                let repeated = order[which.index(deliveries)];
                order.insert(position.index(order.len() + 1), repeated);
            }
            (night, order)
        })
    })
}

impl Night {
    fn delivery_count(&self) -> usize {
        self.results.len() + usize::from(self.report.is_some())
    }

    /// Returns delivery `index` as the room applies it once committed. A
    /// result arrives when its last epoch has been recorded, so the start
    /// estimated from it is the same in any order.
    fn applied(&self, index: usize) -> Applied {
        match self.results.get(index) {
            Some(result) => Applied::Result {
                result: sleep_dashboard::payload::InferenceResult {
                    user_id: USER.into(),
                    session_id: SESSION.into(),
                    seq_num: result.seq_num,
                    inference_seq_num: None,
                    sleep_stages: result.sleep_stages.clone(),
                    snoring_stages: result.snoring_stages.clone(),
                    breath_stages: None,
                    sent_at: None,
                },
                received_at_ms: NIGHT_START_MS + (i64::from(result.seq_num) + 1) * EPOCH_SECONDS * 1000,
                session_first_seen_ms: NIGHT_START_MS,
            },
            None => match parse_delivery(&self.body(index), USER).unwrap() {
                Delivery::SessionComplete(report) => Applied::Final {
                    report,
                    session_first_seen_ms: NIGHT_START_MS,
                },
                other => panic!("the generated final report parsed as {other:?}"),
            },
        }
    }

    /// Returns delivery `index` as an enveloped webhook body.
    fn body(&self, index: usize) -> Value {
        let widen = |values: &[i8]| values.iter().map(|value| i64::from(*value)).collect::<Vec<_>>();
        match self.results.get(index) {
            Some(result) => inference_body(
                USER,
                SESSION,
                i64::from(result.seq_num),
                &widen(&result.sleep_stages),
                &widen(&result.snoring_stages),
            ),
            None => {
                let (sleep, snoring) = self.report.as_ref().expect("index past the results is the report");
                final_report_body(
                    USER,
                    SESSION,
                    "Asia/Seoul",
                    "2026-11-20T23:00:00+09:00",
                    &widen(sleep),
                    &widen(snoring),
                    &[],
                )
            }
        }
    }
}

/// Checks that a viewer's hypnogram after a message kept every epoch it
/// showed before: no shorter, and no known epoch back to unknown.
fn assert_nothing_lost(before: &Hypnogram, after: &Hypnogram, message: &Value) -> Result<(), TestCaseError> {
    prop_assert!(
        after.sleep_stages.len() >= before.sleep_stages.len(),
        "the hypnogram shrank from {} to {} epochs on {message}",
        before.sleep_stages.len(),
        after.sleep_stages.len()
    );
    for (epoch, shown) in before.sleep_stages.iter().enumerate() {
        prop_assert!(
            *shown == -1 || after.sleep_stages[epoch] != -1,
            "epoch {epoch} went from {shown} back to unknown on {message}"
        );
    }
    Ok(())
}

/// Applies deliveries to a live night the way the webhook does: a repeat of
/// a stored delivery is answered `duplicate` and never reaches the room.
/// Returns the night and the messages it broadcast.
fn deliver_in_process(night: &Night, order: &[usize]) -> (LiveNight, Vec<Value>, Vec<usize>) {
    let mut live = LiveNight {
        user_id: USER.into(),
        ..LiveNight::default()
    };
    let mut stored = Vec::new();
    let mut messages = Vec::new();
    for index in order {
        if stored.contains(index) {
            continue;
        }
        stored.push(*index);
        if let Some(message) = live.apply(&night.applied(*index)) {
            messages.push(serde_json::from_str(&message).unwrap());
        }
    }
    (live, messages, stored)
}

/// Rebuilds the night from the stored deliveries in the order they were
/// stored, as a room loading from the database does after a restart.
fn rebuild(night: &Night, stored: &[usize]) -> LiveNight {
    let mut events = SessionEvents {
        first_seen_ms: NIGHT_START_MS,
        ..SessionEvents::default()
    };
    for index in stored {
        match night.applied(*index) {
            Applied::Result {
                result, received_at_ms, ..
            } => events.results.push((result, received_at_ms)),
            Applied::Final { report, .. } => events.report = Some(*report),
        }
    }
    LiveNight::rebuild(USER, SESSION, &events)
}

proptest! {
    #![proptest_config(config(1))]

    /// In-process: the room's night after any order equals the night after
    /// in-order delivery, a rebuild from storage equals both, and a viewer
    /// that watched from the start never lost a shown epoch.
    #[test]
    fn any_order_gives_the_same_night((night, order) in night_and_order()) {
        let in_order: Vec<usize> = (0..night.delivery_count()).collect();
        let (expected, _, _) = deliver_in_process(&night, &in_order);
        let (live, messages, stored) = deliver_in_process(&night, &order);

        prop_assert_eq!(&live.timeline, &expected.timeline);
        prop_assert_eq!(&live.report, &expected.report);
        prop_assert_eq!(live.snapshot_json(), expected.snapshot_json());
        if let Some((sleep, snoring)) = &night.report {
            prop_assert_eq!(&live.timeline.sleep_stages, sleep);
            prop_assert_eq!(&live.timeline.snoring_stages, snoring);
        }
        prop_assert_eq!(rebuild(&night, &stored).snapshot_json(), expected.snapshot_json());

        let mut viewer = Hypnogram::default();
        viewer.apply(&serde_json::from_str(&LiveNight { user_id: USER.into(), ..LiveNight::default() }.snapshot_json()).unwrap());
        for message in &messages {
            let before = viewer.clone();
            viewer.apply(message);
            assert_nothing_lost(&before, &viewer, message)?;
        }
        let widen = |values: &[i8]| values.iter().map(|value| i64::from(*value)).collect::<Vec<_>>();
        prop_assert_eq!(viewer.sleep_stages, widen(&expected.timeline.sleep_stages));
        prop_assert_eq!(viewer.snoring_stages, widen(&expected.timeline.snoring_stages));
        prop_assert_eq!(viewer.complete, night.report.is_some());
    }
}

/// Over HTTP: delivers `order` for [`USER`] while a viewer watches, and the
/// same night in order for a second user, then compares what both show.
async fn deliver_over_http(night: Night, order: Vec<usize>) -> Result<(), TestCaseError> {
    let server = TestServer::start().await;
    let mut viewer = server.viewer(USER).await;
    let (_, expected_messages, _) = deliver_in_process(&night, &order);

    let mut seen = HashSet::new();
    for index in &order {
        let answer = server.deliver(USER, &night.body(*index).to_string()).await;
        prop_assert_eq!(answer.status, StatusCode::OK, "delivery {}: {}", index, &answer.body);
        let expected = if seen.insert(*index) { "accepted" } else { "duplicate" };
        prop_assert_eq!(&answer.body["status"], expected, "delivery {}", index);
    }
    prop_assert_eq!(server.event_count().await, night.delivery_count() as i64);

    // The viewer gets one message per change and never loses an epoch.
    for _ in 0..expected_messages.len() {
        let before = viewer.hypnogram.clone();
        let message = viewer.receive().await;
        assert_nothing_lost(&before, &viewer.hypnogram, &message)?;
    }
    viewer.assert_silent(std::time::Duration::from_millis(50)).await;

    // The same night delivered in order, for another user on this server.
    let ordered_user = "property-user-in-order";
    for index in 0..night.delivery_count() {
        let body = night.body(index).to_string().replace(USER, ordered_user);
        let answer = server.deliver(ordered_user, &body).await;
        prop_assert_eq!(
            answer.status,
            StatusCode::OK,
            "in-order delivery {}: {}",
            index,
            &answer.body
        );
    }
    let shuffled = server.api_document(USER, SESSION).await;
    let ordered = server.api_document(ordered_user, SESSION).await;
    for field in ["sleep_stages", "snoring_stages", "complete", "staging", "peculiarities"] {
        prop_assert_eq!(&shuffled[field], &ordered[field], "field {}", field);
    }
    if night.report.is_some() {
        // The final report sets the clock, so everything the report shows
        // must match. Before it, start times are estimated from arrival
        // times, which differ between the two users.
        for field in ["statistics", "headline", "start_time", "end_time", "timezone"] {
            prop_assert_eq!(&shuffled[field], &ordered[field], "field {}", field);
        }
    }
    let shown: Vec<i64> = common::stages(&shuffled, "sleep_stages");
    prop_assert_eq!(&viewer.hypnogram.sleep_stages, &shown);

    // A viewer joining after a restart sees what the live viewer saw.
    viewer.close().await;
    let server = server.restart().await;
    let fresh = server.viewer(USER).await;
    prop_assert_eq!(&fresh.hypnogram.sleep_stages, &shown);
    prop_assert_eq!(
        &fresh.hypnogram.snoring_stages,
        &common::stages(&shuffled, "snoring_stages")
    );
    prop_assert_eq!(fresh.hypnogram.complete, night.report.is_some());
    fresh.close().await;
    server.stop().await;
    Ok(())
}

proptest! {
    #![proptest_config(config(8))]

    /// Over HTTP and WebSocket: any order with repeats gives the answers,
    /// the viewer's hypnogram and the JSON document of in-order delivery.
    #[test]
    fn any_order_over_http_gives_the_same_night((night, order) in night_and_order()) {
        runtime().block_on(deliver_over_http(night, order))?;
    }
}

// ---------------------------------------------------------------------------
// Arbitrary bodies
// ---------------------------------------------------------------------------

/// Field names the parser reads, so generated objects hit its paths often.
const FIELD_NAMES: &[&str] = &[
    "event",
    "callback_event",
    "data",
    "callback_data",
    "user_id",
    "session_id",
    "seq_num",
    "inference_seq_num",
    "sleep_stages",
    "snoring_stages",
    "breath_stages",
    "timestamp",
    "session",
    "id",
    "start_time",
    "end_time",
    "timezone",
    "stat",
    "peculiarities",
    "sleep_cycle",
    "sleep_time",
];

/// Strings the parser treats specially, and hostile ones.
fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("INFERENCE_COMPLETE".to_string()),
        Just("SESSION_COMPLETE".to_string()),
        Just("2026-11-20T23:00:00+09:00".to_string()),
        Just("+262143-12-31T23:59:59".to_string()),
        Just("-262144-01-01T00:00:00".to_string()),
        Just("9999-12-31T23:59:59Z".to_string()),
        Just("9223372036854775807:00:00".to_string()),
        Just("Asia/Seoul".to_string()),
        Just("..".to_string()),
        "\\PC{0,12}",
        "[\\x00-\\x1f\\x7f]{1,4}",
        any::<String>(),
    ]
}

fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-2i64..=6).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(json!(5759)),
        Just(json!(5760)),
        Just(json!(u64::MAX)),
        Just(json!(1e300)),
        Just(json!(-0.0)),
        (-1e6f64..1e6).prop_map(|number| json!(number)),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |number| {
            serde_json::Number::from_f64(number).map(Value::Number)
        }),
    ]
}

/// Arbitrary JSON, biased toward the parser's field names and stage arrays.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        json_string().prop_map(Value::String),
        prop::collection::vec(-2i64..=4, 0..50).prop_map(|stages| json!(stages)),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        let key = prop_oneof![3 => prop::sample::select(FIELD_NAMES).prop_map(str::to_string), 1 => "\\PC{0,8}"];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..8)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Returns the bundled example bodies, both shapes and both events.
fn fixtures() -> &'static [Value] {
    static FIXTURES: OnceLock<Vec<Value>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        [
            "single/inference-enveloped.json",
            "single/inference-flat-short.json",
            "single/session-enveloped.json",
            "single/session-flat.json",
            "night-enveloped/events/010.json",
            "night-enveloped/events/087.json",
            "night-flat/events/087.json",
        ]
        .iter()
        .map(|path| serde_json::from_str(&std::fs::read_to_string(format!("{root}/{path}")).unwrap()).unwrap())
        .collect()
    })
}

/// Returns the path of every value in `value`, such as `data.sleep_stages[3]`.
fn paths(value: &Value, prefix: &str, into: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                into.push(path.clone());
                paths(child, &path, into);
            }
        }
        // Long stage arrays add only their first elements, so mutations
        // spread over every field rather than mostly hitting epochs.
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate().take(4) {
                let path = format!("{prefix}[{index}]");
                into.push(path.clone());
                paths(child, &path, into);
            }
        }
        _ => {}
    }
}

/// Returns the value at a path written as [`paths`] writes it.
fn resolve<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = value;
    for segment in path.split('.') {
        let (name, indices) = match segment.find('[') {
            Some(bracket) => (&segment[..bracket], &segment[bracket..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            current = current.get(name)?;
        }
        for index in indices.split('[').filter(|part| !part.is_empty()) {
            current = current.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(current)
}

/// Returns the value at `path` for writing; `None` when it does not exist.
fn resolve_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let pointer = path.replace(['.', '['], "/").replace(']', "");
    value.pointer_mut(&format!("/{pointer}"))
}

/// One change to one field of a real delivery.
#[derive(Debug, Clone)]
enum Mutation {
    Remove,
    Replace(Value),
    /// Wraps the value in this many arrays.
    Nest(usize),
    /// Keeps the JSON type but picks a hostile value of it: a string for a
    /// string, a number for a number.
    SameType(String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::Remove),
        6 => json_value().prop_map(Mutation::Replace),
        3 => json_number().prop_map(Mutation::Replace),
        1 => prop::sample::select(vec![
            json!(1e308), json!(-1), json!(0.5), json!(-0.5), json!(18446744073709551615u64),
            json!(i64::MIN), json!(""), json!("\u{0}"), json!("a\u{1b}b"), json!([]), json!({}),
        ]).prop_map(Mutation::Replace),
        1 => (1usize..200).prop_map(Mutation::Nest),
        4 => (json_string(), json_number()).prop_map(|(text, number)| Mutation::SameType(text, number)),
    ]
}

/// Mutates one to three fields of one fixture.
fn mutated_fixture() -> impl Strategy<Value = Value> {
    (
        prop::sample::select((0..fixtures().len()).collect::<Vec<_>>()),
        prop::collection::vec((any::<Index>(), mutation()), 1..=3),
    )
        .prop_map(|(which, mutations)| {
            let mut body = fixtures()[which].clone();
            for (index, mutation) in mutations {
                let mut all = Vec::new();
                paths(&body, "", &mut all);
                if all.is_empty() {
                    break;
                }
                let path = &all[index.index(all.len())];
                apply_mutation(&mut body, path, mutation);
            }
            body
        })
}

fn apply_mutation(body: &mut Value, path: &str, mutation: Mutation) {
    match mutation {
        Mutation::Remove => {
            let (parent, last) = match path.rfind(['.', '[']) {
                Some(split) => (&path[..split], &path[split..]),
                None => ("", path),
            };
            let parent_value = if parent.is_empty() {
                Some(&mut *body)
            } else {
                resolve_mut(body, parent)
            };
            match (parent_value, last.strip_prefix('.'), last.strip_prefix('[')) {
                (Some(Value::Object(object)), Some(key), _) => {
                    object.remove(key);
                }
                (Some(Value::Object(object)), None, None) => {
                    object.remove(last);
                }
                (Some(Value::Array(items)), _, Some(index)) => {
                    let index: usize = index.trim_end_matches(']').parse().unwrap();
                    if index < items.len() {
                        items.remove(index);
                    }
                }
                _ => {}
            }
        }
        Mutation::Replace(value) => {
            if let Some(slot) = resolve_mut(body, path) {
                *slot = value;
            }
        }
        Mutation::SameType(text, number) => {
            if let Some(slot) = resolve_mut(body, path) {
                match slot {
                    Value::String(_) => *slot = Value::String(text),
                    Value::Number(_) => *slot = number,
                    _ => {}
                }
            }
        }
        Mutation::Nest(depth) => {
            if let Some(slot) = resolve_mut(body, path) {
                for _ in 0..depth {
                    *slot = Value::Array(vec![slot.take()]);
                }
            }
        }
    }
}

/// Any body: arbitrary bytes, damaged fixture bytes, arbitrary JSON, or a
/// fixture with a few fields mutated.
fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (
            prop::sample::select((0..fixtures().len()).collect::<Vec<_>>()),
            any::<Index>(),
            prop::collection::vec((any::<Index>(), any::<u8>()), 0..4),
        )
            .prop_map(|(which, cut, flips)| {
                let mut bytes = fixtures()[which].to_string().into_bytes();
                for (position, byte) in flips {
                    let position = position.index(bytes.len());
                    bytes[position] = byte;
                }
                bytes.truncate(cut.index(bytes.len() + 1));
                bytes
            }),
        2 => json_value().prop_map(|value| value.to_string().into_bytes()),
        6 => mutated_fixture().prop_map(|value| value.to_string().into_bytes()),
    ]
}

/// Returns the user id a sender would put in `x-user-id` for `body`: the
/// body's own when it has a usable one, so mutated fixtures still pass the
/// header check and reach the later rules.
fn header_user(body: &[u8]) -> String {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    [
        &json["data"]["user_id"],
        &json["callback_data"]["user_id"],
        &json["user_id"],
    ]
    .into_iter()
    .find_map(Value::as_str)
    .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|byte| byte.is_ascii_graphic()))
    .unwrap_or("fuzz-user")
    .to_string()
}

/// Parses, validates and places one body in-process. Checks that a
/// rejection names a field that exists in the body (unless it is missing)
/// and that an accepted delivery respects every limit and can be applied to
/// a live night and rendered.
fn check_body(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(json) = parse_json(bytes) else {
        // The webhook answers 400 with field `body` and serde's message.
        return Ok(());
    };
    let user = header_user(bytes);
    match parse_delivery(&json, &user) {
        Err(error) => {
            prop_assert!(!error.field.is_empty(), "empty field in {error:?}");
            prop_assert!(!error.problem.is_empty(), "empty problem in {error:?}");
            prop_assert_eq!(error.to_string(), format!("{}: {}", error.field, error.problem));
            if !error.problem.contains("is missing") {
                for field in error.field.split(", ") {
                    prop_assert!(
                        field == "body" || field == "x-user-id" || resolve(&json, field).is_some(),
                        "the error names {field:?}, which is not in the body: {error}"
                    );
                }
            }
        }
        Ok(Delivery::Inference(result)) => {
            prop_assert!((result.seq_num as usize) < MAX_EPOCHS);
            prop_assert!(!result.sleep_stages.is_empty());
            prop_assert!(result.sleep_stages.len() <= result.seq_num as usize + 1);
            prop_assert_eq!(result.snoring_stages.len(), result.sleep_stages.len());
            prop_assert!(result.sleep_stages.iter().all(|stage| (-1..=3).contains(stage)));
            let mut live = LiveNight {
                user_id: user,
                ..LiveNight::default()
            };
            let seq_num = result.seq_num;
            live.apply(&Applied::Result {
                result,
                received_at_ms: NIGHT_START_MS,
                session_first_seen_ms: NIGHT_START_MS,
            });
            prop_assert_eq!(live.timeline.len(), seq_num as usize + 1);
        }
        Ok(Delivery::SessionComplete(report)) => {
            prop_assert!(report.sleep_stages.len() <= MAX_EPOCHS);
            prop_assert_eq!(report.snoring_stages.len(), report.sleep_stages.len());
            let epochs = report.sleep_stages.len();
            let mut live = LiveNight {
                user_id: user,
                ..LiveNight::default()
            };
            live.apply(&Applied::Final {
                report,
                session_first_seen_ms: NIGHT_START_MS,
            });
            prop_assert_eq!(live.timeline.len(), epochs);
            live.snapshot_json();
        }
        Ok(Delivery::Unknown { event, .. }) => {
            prop_assert!(event != "INFERENCE_COMPLETE" && event != "SESSION_COMPLETE");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: cases(1) * 8, ..Config::default() })]

    /// Arbitrary bytes and JSON never panic the parser, validator or
    /// placement, and each rejection names an existing field.
    #[test]
    fn any_body_is_accepted_or_named(body in any_body()) {
        check_body(&body)?;
    }
}

/// Sends each body and checks the answer: 2xx, or 4xx with a JSON `error`;
/// never 5xx and never a dropped connection. An accepted final report must
/// also render as a page and a JSON document.
async fn fuzz_over_http(bodies: Vec<Vec<u8>>) -> Result<(), TestCaseError> {
    let server = TestServer::start().await;
    for body in bodies {
        let user = header_user(&body);
        let response = server
            .webhook()
            .header("x-user-id", &user)
            .body(body.clone())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                return Err(TestCaseError::fail(format!(
                    "no answer to {}: {error}",
                    String::from_utf8_lossy(&body)
                )));
            }
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        prop_assert!(
            status.is_success() || status.is_client_error(),
            "{status} {text} for {}",
            String::from_utf8_lossy(&body)
        );
        if status.is_client_error() {
            prop_assert!(answer["error"].is_string(), "{status} without an error message: {text}");
        }
        if status == StatusCode::OK && answer["status"] == "accepted" && answer["event"] == "SESSION_COMPLETE" {
            let session = answer["session_id"].as_str().unwrap();
            server.api_document(&user, session).await;
            server.report_page(&user, session).await;
            let token = viewer_token(&user);
            let path = sleep_dashboard::report::history_path(&user);
            server.get_ok(&format!("{path}?token={token}")).await;
        }
    }
    server.stop().await;
    Ok(())
}

proptest! {
    #![proptest_config(config(8))]

    /// Over HTTP: arbitrary bodies get 2xx or a 4xx with a JSON error.
    #[test]
    fn any_body_over_http_gets_2xx_or_4xx(bodies in prop::collection::vec(any_body(), 1..=24)) {
        runtime().block_on(fuzz_over_http(bodies))?;
    }
}
