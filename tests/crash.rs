//! Durability of acknowledged deliveries: the release promise is that a 2xx
//! means committed, so a SIGKILL right after the response loses nothing.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sleep_dashboard::storage::{Durability, Store};

const API_KEY: &str = "crash-test-key";

/// Starts the real binary on a free loopback port and waits until it listens.
fn start_binary(database: &Path) -> (Child, String) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_sleep-dashboard"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--durability",
            "normal",
            "--database",
        ])
        .arg(database)
        .env("ASLEEP_API_KEY", API_KEY)
        .env("DASHBOARD_SECRET", "crash-test-secret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the sleep-dashboard binary failed");

    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the server did not start listening within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, format!("http://127.0.0.1:{port}/asleep-webhook"))
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

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> reqwest::Result<(u16, Value)> {
    let response = client
        .post(url)
        .header("x-api-key", API_KEY)
        .header("x-user-id", body["user_id"].as_str().unwrap())
        .json(body)
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
    let (mut child, url) = start_binary(&database);
    let mut acknowledged = 0;
    for event in &events[..30] {
        let (status, _) = post(&client, &url, event).await.unwrap();
        assert_eq!(status, 200);
        acknowledged += 1;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::open(&database, Durability::Normal).await.unwrap();
    assert_eq!(store.event_count().await.unwrap(), acknowledged);
    store.close().await;

    // A restarted server has every acknowledged delivery and takes the rest.
    let (mut child, url) = start_binary(&database);
    for (index, event) in events.iter().enumerate() {
        let (status, answer) = post(&client, &url, event).await.unwrap();
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
