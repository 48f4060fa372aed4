//! Durability of acknowledged deliveries: a 2xx means committed, so a
//! SIGKILL at any moment loses nothing that was acknowledged, stores nothing
//! twice, and the timelines rebuilt after the restarts equal what was
//! acknowledged.
//!
//! The quick test kills the binary once right after an answer. The long ones
//! kill it at random moments under concurrent load; run them on the release
//! build with `cargo test --release --test crash -- --ignored`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sleep_dashboard::auth::ViewerKeys;
use sleep_dashboard::report::api_session_path;
use sleep_dashboard::storage::{Durability, Store};
use sqlx::Row;
use sqlx::sqlite::SqliteConnectOptions;

const API_KEY: &str = "crash-test-key";
const SECRET: &str = "crash-test-dashboard-secret-of-40-characters";

/// Starts the real binary on a free loopback port and waits until it listens.
fn start_binary(database: &Path, durability: &str) -> (Child, String) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sleep-dashboard"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--durability",
            durability,
            "--database",
        ])
        .arg(database)
        .env("ASLEEP_API_KEY", API_KEY)
        .env("DASHBOARD_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the sleep-dashboard binary failed");

    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the server exited with {status} before it listened");
        }
        assert!(
            Instant::now() < deadline,
            "the server did not start listening within 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, format!("http://127.0.0.1:{port}"))
}

fn night_events() -> Vec<Value> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/night-flat/events");
    let mut paths: Vec<_> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
        .collect()
}

async fn post(client: &reqwest::Client, url: &str, user_id: &str, body: &str) -> reqwest::Result<(u16, Value)> {
    let response = client
        .post(format!("{url}/asleep-webhook"))
        .header("x-api-key", API_KEY)
        .header("x-user-id", user_id)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn sigkill_after_answer_loses_nothing() {
    let folder = tempfile::tempdir().unwrap();
    let database = folder.path().join("crash.sqlite3");
    let events = night_events();
    let client = reqwest::Client::new();

    // Deliver part of the night and kill the process right after a 2xx.
    let (mut child, url) = start_binary(&database, "normal");
    let mut acknowledged = 0;
    for event in &events[..30] {
        let (status, _) = post(&client, &url, event["user_id"].as_str().unwrap(), &event.to_string())
            .await
            .unwrap();
        assert_eq!(status, 200);
        acknowledged += 1;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::open(&database, Durability::Normal).await.unwrap();
    assert_eq!(store.event_count().await.unwrap(), acknowledged);
    store.close().await;

    // A restarted server has every acknowledged delivery and takes the rest.
    let (mut child, url) = start_binary(&database, "normal");
    for (index, event) in events.iter().enumerate() {
        let (status, answer) = post(&client, &url, event["user_id"].as_str().unwrap(), &event.to_string())
            .await
            .unwrap();
        assert_eq!(status, 200, "delivery {index}: {answer}");
        let expected = if index < 30 { "duplicate" } else { "accepted" };
        assert_eq!(answer["status"], expected, "delivery {index}");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::open(&database, Durability::Normal).await.unwrap();
    assert_eq!(store.event_count().await.unwrap(), events.len() as i64);
    store.close().await;
}

/// Times the long tests kill the server.
const KILLS: usize = 20;

/// Concurrent webhook senders during each run of the server.
const SENDERS: usize = 4;

/// Users, sessions per user, and partial results per session of the load.
const USERS: usize = 3;
const SESSIONS_PER_USER: usize = 2;
const RESULTS_PER_SESSION: usize = 500;

/// Epochs each partial result covers, and epochs between the ends of two
/// consecutive results, so each result revises three quarters of the
/// previous one. The last of 500 results ends at `seq_num` 5029, inside the
/// 48-hour limit of 5760 epochs.
const WINDOW: usize = 40;
const STEP: usize = 10;

/// Identity of a delivery in the event log: user, session, and `seq_num`
/// for a partial result or `None` for a final report.
type Key = (String, String, Option<i64>);

/// One generated delivery.
struct Load {
    key: Key,
    body: String,
    /// Epochs covered, from `first_epoch`, with their sleep and snoring values.
    first_epoch: usize,
    sleep_stages: Vec<i64>,
    snoring_stages: Vec<i64>,
}

/// Generates the deliveries of [`USERS`] × [`SESSIONS_PER_USER`] nights.
/// Each result revises the values of the epochs it shares with the previous
/// one, so the newest-wins rule is visible in the timeline. The first
/// session of each user gets a final report whose arrays differ from every
/// result, so the replacement rule is visible too; the second has none.
fn generate_load(rng: &mut StdRng) -> Vec<Load> {
    let mut loads = Vec::new();
    for user in 0..USERS {
        let user_id = format!("crash-user-{user}");
        for session in 0..SESSIONS_PER_USER {
            let session_id = format!("night-{session}");
            for result in 0..RESULTS_PER_SESSION {
                let seq_num = WINDOW - 1 + result * STEP;
                let first_epoch = seq_num + 1 - WINDOW;
                let sleep_stages: Vec<i64> = (0..WINDOW).map(|_| rng.random_range(-1..=3)).collect();
                let snoring_stages: Vec<i64> = (0..WINDOW).map(|_| rng.random_range(0..=1)).collect();
                let body = json!({
                    "event": "INFERENCE_COMPLETE",
                    "version": "V3",
                    "data": {
                        "user_id": user_id,
                        "session_id": session_id,
                        "seq_num": seq_num,
                        "sleep_stages": sleep_stages,
                        "snoring_stages": snoring_stages,
                    },
                });
                loads.push(Load {
                    key: (user_id.clone(), session_id.clone(), Some(seq_num as i64)),
                    body: body.to_string(),
                    first_epoch,
                    sleep_stages,
                    snoring_stages,
                });
            }
            if session == 0 {
                let epochs = WINDOW + (RESULTS_PER_SESSION - 1) * STEP;
                let sleep_stages: Vec<i64> = (0..epochs).map(|_| rng.random_range(0..=3)).collect();
                let snoring_stages: Vec<i64> = (0..epochs).map(|_| rng.random_range(0..=1)).collect();
                let start = chrono::DateTime::parse_from_rfc3339("2026-11-20T23:00:00+00:00").unwrap();
                let end = start + chrono::Duration::seconds(30 * epochs as i64);
                let body = json!({
                    "event": "SESSION_COMPLETE",
                    "version": "V3",
                    "data": {
                        "timezone": "UTC",
                        "user_id": user_id,
                        "session": {
                            "id": session_id,
                            "state": "COMPLETE",
                            "start_time": start.to_rfc3339(),
                            "end_time": end.to_rfc3339(),
                            "sleep_stages": sleep_stages,
                            "snoring_stages": snoring_stages,
                        },
                        "stat": null,
                    },
                });
                loads.push(Load {
                    key: (user_id.clone(), session_id.clone(), None),
                    body: body.to_string(),
                    first_epoch: 0,
                    sleep_stages,
                    snoring_stages,
                });
            }
        }
    }
    loads
}

/// What the senders have learned so far, shared between them.
#[derive(Default)]
struct Ledger {
    /// Deliveries not yet answered with a 2xx, in sending order.
    pending: VecDeque<usize>,
    /// Deliveries answered with a 2xx.
    acknowledged: HashSet<usize>,
    /// Deliveries sent without getting any answer, at least once.
    unanswered: HashSet<usize>,
    /// Every answer that breaks the webhook's contract.
    violations: Vec<String>,
    /// Counts of answers, for the summary line.
    answers: BTreeMap<String, usize>,
}

/// Sends deliveries until `stop` is set: mostly pending ones, and one in
/// five a repeat of an acknowledged one, which must be answered
/// `duplicate`. Once nothing is pending, only repeats.
async fn send_until_stopped(
    url: String,
    loads: Arc<Vec<Load>>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let (index, is_repeat) = {
            let mut ledger = ledger.lock().unwrap();
            let repeat_now = !ledger.acknowledged.is_empty() && rng.random_bool(0.2);
            let next = if repeat_now { None } else { ledger.pending.pop_front() };
            match next {
                Some(index) => (index, false),
                None if ledger.acknowledged.is_empty() => (usize::MAX, true),
                None => {
                    let acknowledged: Vec<usize> = ledger.acknowledged.iter().copied().collect();
                    (acknowledged[rng.random_range(0..acknowledged.len())], true)
                }
            }
        };
        if index == usize::MAX {
            // Every delivery is in flight on another sender.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let load = &loads[index];
        let outcome = post(&client, &url, &load.key.0, &load.body).await;

        let mut ledger = ledger.lock().unwrap();
        let was_unanswered = ledger.unanswered.contains(&index);
        match outcome {
            Ok((200, answer)) => {
                let status = answer["status"].as_str().unwrap_or_default().to_string();
                *ledger.answers.entry(format!("200 {status}")).or_default() += 1;
                let expected: &[&str] = if is_repeat {
                    &["duplicate"]
                } else if was_unanswered {
                    &["accepted", "duplicate"]
                } else {
                    &["accepted"]
                };
                if !expected.contains(&status.as_str()) {
                    ledger.violations.push(format!(
                        "{:?} (repeat: {is_repeat}, sent before without an answer: {was_unanswered}) \
                         was answered {status:?}, expected one of {expected:?}",
                        load.key
                    ));
                }
                ledger.acknowledged.insert(index);
            }
            Ok((status, answer)) => {
                *ledger.answers.entry(status.to_string()).or_default() += 1;
                ledger
                    .violations
                    .push(format!("{:?} was answered {status}: {answer}", load.key));
                if !is_repeat {
                    ledger.pending.push_back(index);
                }
            }
            Err(_) => {
                // The server was killed before it answered: the delivery may
                // or may not be stored, and must be sent again.
                *ledger.answers.entry("no answer".to_string()).or_default() += 1;
                if !is_repeat {
                    ledger.unanswered.insert(index);
                    ledger.pending.push_back(index);
                }
            }
        }
    }
}

/// Reads the idempotency key of every row in the event log, through a
/// read-only connection, while no server runs.
async fn stored_keys(database: &Path) -> Vec<Key> {
    let options = SqliteConnectOptions::new().filename(database).read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("opening the database read-only failed");
    let rows = sqlx::query("SELECT event, user_id, session_id, seq_num FROM events")
        .fetch_all(&pool)
        .await
        .expect("reading the event log failed");
    pool.close().await;
    rows.iter()
        .map(|row| {
            let event: String = row.get("event");
            let seq_num: Option<i64> = row.get("seq_num");
            let seq_num = if event == "SESSION_COMPLETE" { None } else { seq_num };
            (row.get("user_id"), row.get("session_id"), seq_num)
        })
        .collect()
}

/// Computes a session's timeline from its deliveries by the placement
/// rules, written here independently of the server's code: each epoch takes
/// the value of the highest `seq_num` that covers it (-1 where none does),
/// and a final report replaces everything.
fn expected_timeline(loads: &[&Load]) -> (Vec<i64>, Vec<i64>) {
    if let Some(report) = loads.iter().find(|load| load.key.2.is_none()) {
        return (report.sleep_stages.clone(), report.snoring_stages.clone());
    }
    let epochs = loads
        .iter()
        .map(|load| load.first_epoch + load.sleep_stages.len())
        .max()
        .unwrap_or(0);
    let mut sleep = vec![-1; epochs];
    let mut snoring = vec![-1; epochs];
    let mut written_by = vec![-1; epochs];
    for load in loads {
        let seq_num = load.key.2.unwrap();
        for offset in 0..load.sleep_stages.len() {
            let epoch = load.first_epoch + offset;
            if seq_num > written_by[epoch] {
                written_by[epoch] = seq_num;
                sleep[epoch] = load.sleep_stages[offset];
                snoring[epoch] = load.snoring_stages[offset];
            }
        }
    }
    (sleep, snoring)
}

/// Runs the load against the binary, kills it [`KILLS`] times at random
/// moments, and checks the event log after every kill and the timelines at
/// the end.
async fn survive_random_kills(durability: &str) {
    let seed: u64 = match std::env::var("CRASH_TEST_SEED") {
        Ok(text) => text.parse().expect("CRASH_TEST_SEED must be an unsigned integer"),
        Err(_) => rand::random(),
    };
    println!("crash test with --durability {durability}: seed {seed} (set CRASH_TEST_SEED={seed} to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let folder = tempfile::tempdir().unwrap();
    let database = folder.path().join("crash.sqlite3");
    let loads = Arc::new(generate_load(&mut rng));
    let ledger = Arc::new(Mutex::new(Ledger {
        pending: (0..loads.len()).collect(),
        ..Ledger::default()
    }));
    let started = Instant::now();

    for kill in 0..=KILLS {
        let (mut child, url) = start_binary(&database, durability);
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..SENDERS)
            .map(|sender| {
                tokio::spawn(send_until_stopped(
                    url.clone(),
                    Arc::clone(&loads),
                    Arc::clone(&ledger),
                    Arc::clone(&stop),
                    seed ^ ((kill * SENDERS + sender) as u64 + 1),
                ))
            })
            .collect();

        if kill < KILLS {
            // Let the load run for a random moment, then SIGKILL mid-flight.
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..400))).await;
            child.kill().unwrap();
        } else {
            // The last run is not killed: it gets every pending delivery in.
            let deadline = Instant::now() + Duration::from_secs(60);
            while ledger.lock().unwrap().acknowledged.len() < loads.len() {
                assert!(
                    Instant::now() < deadline,
                    "the deliveries were not all acknowledged in 60 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for sender in senders {
            sender.await.unwrap();
        }

        if kill < KILLS {
            child.wait().unwrap();
            // Every acknowledged delivery is in the log before any retry.
            let stored: HashSet<Key> = stored_keys(&database).await.into_iter().collect();
            let ledger = ledger.lock().unwrap();
            let lost: Vec<&Key> = ledger
                .acknowledged
                .iter()
                .map(|index| &loads[*index].key)
                .filter(|key| !stored.contains(*key))
                .collect();
            assert!(lost.is_empty(), "kill {kill}: acknowledged deliveries lost: {lost:?}");
        } else {
            check_timelines(&url, &loads).await;
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    println!(
        "{} deliveries, {KILLS} kills, {:.1} s; answers: {:?}; {} sent without an answer",
        loads.len(),
        started.elapsed().as_secs_f64(),
        ledger.answers,
        ledger.unanswered.len()
    );
    assert!(
        ledger.violations.is_empty(),
        "contract violations: {:#?}",
        ledger.violations
    );
    assert_eq!(
        ledger.acknowledged.len(),
        loads.len(),
        "every delivery is acknowledged in the end"
    );

    // Each delivery is stored exactly once.
    let stored = stored_keys(&database).await;
    let mut copies: HashMap<&Key, usize> = HashMap::new();
    for key in &stored {
        *copies.entry(key).or_default() += 1;
    }
    let repeated: Vec<_> = copies.iter().filter(|(_, count)| **count > 1).collect();
    assert!(repeated.is_empty(), "deliveries stored more than once: {repeated:?}");
    let expected: HashSet<&Key> = loads.iter().map(|load| &load.key).collect();
    let stored: HashSet<&Key> = stored.iter().collect();
    assert_eq!(
        stored, expected,
        "the event log holds exactly the acknowledged deliveries"
    );
}

/// Compares every session's `sleep_stages` and `snoring_stages` from the JSON
/// API with the timeline computed from the acknowledged deliveries.
async fn check_timelines(url: &str, loads: &[Load]) {
    let client = reqwest::Client::new();
    let keys = ViewerKeys::new(SECRET);
    let expires_at = chrono::Utc::now().timestamp() + 3600;
    let mut sessions: BTreeMap<(&str, &str), Vec<&Load>> = BTreeMap::new();
    for load in loads {
        sessions.entry((&load.key.0, &load.key.1)).or_default().push(load);
    }
    for ((user_id, session_id), deliveries) in sessions {
        let path = api_session_path(user_id, session_id);
        let token = keys.issue(user_id, expires_at);
        let response = client.get(format!("{url}{path}?token={token}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        let document: Value = response.json().await.unwrap();
        let (sleep, snoring) = expected_timeline(&deliveries);
        let read = |name: &str| -> Vec<i64> {
            document[name]
                .as_array()
                .unwrap_or_else(|| panic!("{path}: {name} is not an array"))
                .iter()
                .map(|value| value.as_i64().unwrap())
                .collect()
        };
        assert_eq!(read("sleep_stages"), sleep, "{user_id}/{session_id}: sleep_stages");
        assert_eq!(
            read("snoring_stages"),
            snoring,
            "{user_id}/{session_id}: snoring_stages"
        );
        assert_eq!(
            document["complete"],
            json!(deliveries.iter().any(|load| load.key.2.is_none()))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kills the release binary 20 times; run by .ci/run"]
async fn random_sigkills_lose_nothing_normal() {
    survive_random_kills("normal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kills the release binary 20 times; run by .ci/run"]
async fn random_sigkills_lose_nothing_full() {
    survive_random_kills("full").await;
}
