//! The database under faults and load: a lock held by another process, a
//! full database, concurrent copies of one delivery, and concurrent writers
//! and readers. Deliveries the database cannot take get 503 with
//! `Retry-After` and never a 2xx, and the server recovers by itself.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{DatabaseLock, Night, TestServer, WAIT, inference_body, path_segment, session_body, viewer_token};
use reqwest::StatusCode;
use serde_json::Value;

/// Maximum response time Asleep's documentation advises. A delivery the
/// database cannot take must get its 503 sooner.
const ADVISED_ANSWER: Duration = Duration::from_secs(5);

/// A webhook response with its `Retry-After` header and the time it took.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
    took: Duration,
}

async fn deliver(client: &reqwest::Client, url: &str, user_id: &str, body: String) -> Answer {
    let started = Instant::now();
    let response = client
        .post(url)
        .header("x-api-key", common::API_KEY)
        .header("content-type", "application/json")
        .header("x-user-id", user_id)
        .body(body)
        .send()
        .await
        .expect("sending the webhook request failed");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("Retry-After is not text").to_string());
    let text = response.text().await.expect("reading the response failed");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("the {status} response is not JSON ({error}): {text}"));
    Answer {
        status,
        retry_after,
        body,
        took: started.elapsed(),
    }
}

async fn deliver_to(server: &TestServer, user_id: &str, body: String) -> Answer {
    deliver(&server.client, &server.url("/asleep-webhook"), user_id, body).await
}

/// Asserts that `answer` is a 503 with `Retry-After`, in time for the sender.
fn assert_unavailable(answer: &Answer, what: &str) {
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {answer:?}");
    assert_eq!(answer.retry_after.as_deref(), Some("5"), "{what}: {answer:?}");
    assert!(answer.took < ADVISED_ANSWER, "{what} took {:?}", answer.took);
}

/// Polls `/readyz` until it returns `expected`, and returns the last body.
async fn wait_for_readiness(server: &TestServer, expected: StatusCode) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let response = server.get("/readyz").await;
        let status = response.status();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.expect("/readyz is not JSON");
        if status == expected {
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(
                    retry_after.as_ref().map(|value| value.as_bytes()),
                    Some(&b"5"[..]),
                    "{body}"
                );
            }
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still returns {status} {body} after {WAIT:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Returns the `seq_num`s stored for one session.
async fn stored_seq_nums(server: &TestServer, user_id: &str, session_id: &str) -> BTreeSet<u32> {
    let events = server
        .server
        .state
        .store
        .session_events(user_id, session_id)
        .await
        .expect("reading the session failed")
        .unwrap_or_else(|| panic!("session {user_id}/{session_id} is not stored"));
    events.results.iter().map(|(result, _)| result.seq_num).collect()
}

#[tokio::test]
async fn locked_database_returns_503_then_recovers() {
    let server = TestServer::start().await;
    let (user_id, session_id) = ("locked-user", "locked-session");
    let result = |seq_num| inference_body(user_id, session_id, seq_num, &[1], &[0]).to_string();

    let answer = deliver_to(&server, user_id, result(0)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    wait_for_readiness(&server, StatusCode::OK).await;

    let lock = DatabaseLock::take(&server.database).await;

    let unstored = deliver_to(&server, user_id, result(1)).await;
    assert_unavailable(&unstored, "a result during the lock");
    let report = session_body(user_id, session_id, &[1, 1], &[0, 0]).to_string();
    assert_unavailable(
        &deliver_to(&server, user_id, report.clone()).await,
        "a final report during the lock",
    );

    // Concurrent deliveries queue for the one writer connection and
    // still get their 503 in time.
    let mut tasks = Vec::new();
    for seq_num in 10..14 {
        let (client, url) = (server.client.clone(), server.url("/asleep-webhook"));
        let body = result(seq_num);
        tasks.push(tokio::spawn(async move { deliver(&client, &url, user_id, body).await }));
    }
    for task in tasks {
        assert_unavailable(&task.await.unwrap(), "a concurrent result during the lock");
    }

    let body = wait_for_readiness(&server, StatusCode::SERVICE_UNAVAILABLE).await;
    let error = body["error"].as_str().expect("the 503 names its cause");
    assert!(error.contains("database is locked"), "{error}");
    assert_eq!(server.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(server.event_count().await, 1, "a delivery that got 503 was stored");

    lock.release().await;
    wait_for_readiness(&server, StatusCode::OK).await;

    let answer = deliver_to(&server, user_id, result(2)).await;
    assert_eq!(answer.body["status"], "accepted", "{answer:?}");
    let answer = deliver_to(&server, user_id, result(1)).await;
    assert_eq!(
        answer.body["status"], "accepted",
        "the retry of the result that got 503: {answer:?}"
    );
    let answer = deliver_to(&server, user_id, report).await;
    assert_eq!(
        answer.body["status"], "accepted",
        "the retry of the report that got 503: {answer:?}"
    );
    assert_eq!(
        stored_seq_nums(&server, user_id, session_id).await,
        BTreeSet::from([0, 1, 2])
    );
    assert_eq!(server.event_count().await, 4);

    server.stop().await;
}

#[tokio::test]
async fn full_database_returns_503_then_recovers() {
    let server = TestServer::start().await;
    let store = &server.server.state.store;
    let (user_id, session_id) = ("full-user", "full-session");
    // Ten epochs per result, like a result every five minutes.
    let result = |seq_num: i64| inference_body(user_id, session_id, seq_num, &[2; 10], &[0; 10]).to_string();

    let size = store
        .set_max_page_count(Some(1))
        .await
        .expect("capping the database failed");
    let cap = store
        .set_max_page_count(Some(size + 16))
        .await
        .expect("capping the database failed");
    assert_eq!(cap, size + 16);

    let mut acknowledged = BTreeSet::new();
    let mut unstored = None;
    for seq_num in 9..5000 {
        let answer = deliver_to(&server, user_id, result(seq_num)).await;
        match answer.status {
            StatusCode::OK => {
                assert_eq!(answer.body["status"], "accepted", "{answer:?}");
                acknowledged.insert(seq_num as u32);
            }
            _ => {
                assert_unavailable(&answer, "the first result past the cap");
                unstored = Some(seq_num);
                break;
            }
        }
    }
    let unstored = unstored.expect("16 pages took 5000 results; the cap is not applied");
    assert!(!acknowledged.is_empty(), "the first result after capping got 503");

    // The database stays full: the same delivery gets 503 again, and the
    // readiness check agrees.
    assert_unavailable(
        &deliver_to(&server, user_id, result(unstored)).await,
        "a retry at the cap",
    );
    let body = wait_for_readiness(&server, StatusCode::SERVICE_UNAVAILABLE).await;
    let error = body["error"].as_str().expect("the 503 names its cause");
    assert!(error.contains("full"), "{error}");

    // Nothing acknowledged is missing, and nothing that got 503 was kept.
    assert_eq!(stored_seq_nums(&server, user_id, session_id).await, acknowledged);
    assert_eq!(server.event_count().await, acknowledged.len() as i64);

    store.set_max_page_count(None).await.expect("lifting the cap failed");
    wait_for_readiness(&server, StatusCode::OK).await;

    let answer = deliver_to(&server, user_id, result(unstored)).await;
    assert_eq!(
        answer.body["status"], "accepted",
        "the retry of the result that got 503: {answer:?}"
    );
    let answer = deliver_to(&server, user_id, result(unstored + 1)).await;
    assert_eq!(answer.body["status"], "accepted", "{answer:?}");
    // A duplicate rolls its transaction back; the writes after it must
    // still commit.
    let answer = deliver_to(&server, user_id, result(unstored)).await;
    assert_eq!(answer.body["status"], "duplicate", "{answer:?}");
    let answer = deliver_to(&server, user_id, result(unstored + 2)).await;
    assert_eq!(answer.body["status"], "accepted", "{answer:?}");
    acknowledged.extend([unstored as u32, unstored as u32 + 1, unstored as u32 + 2]);
    assert_eq!(stored_seq_nums(&server, user_id, session_id).await, acknowledged);

    let server = server.restart().await;
    assert_eq!(
        stored_seq_nums(&server, user_id, session_id).await,
        acknowledged,
        "after a restart"
    );
    server.stop().await;
}

#[tokio::test]
async fn concurrent_final_reports_store_one() {
    let server = TestServer::start().await;
    let (user_id, session_id) = ("concurrent-user", "concurrent-session");
    let sleep = [0, 1, 1, 2, 2, 3, 1, 0];
    let snoring = [0; 8];

    let first = inference_body(user_id, session_id, 3, &sleep[..4], &snoring[..4]).to_string();
    assert_eq!(deliver_to(&server, user_id, first).await.status, StatusCode::OK);
    let mut viewers = Vec::new();
    for _ in 0..3 {
        let viewer = server.viewer(user_id).await;
        assert_eq!(viewer.hypnogram.session_id.as_deref(), Some(session_id));
        viewers.push(viewer);
    }

    let report = session_body(user_id, session_id, &sleep, &snoring).to_string();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (client, url, body) = (server.client.clone(), server.url("/asleep-webhook"), report.clone());
        tasks.push(tokio::spawn(async move { deliver(&client, &url, user_id, body).await }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let answer = task.await.unwrap();
        assert!(answer.status.is_success(), "{answer:?}");
        statuses.push(answer.body["status"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(statuses.len(), 100);
    assert_eq!(
        statuses.iter().filter(|status| *status == "accepted").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|status| *status == "duplicate").count(),
        99,
        "{statuses:?}"
    );
    assert_eq!(server.event_count().await, 2);

    for viewer in &mut viewers {
        let message = viewer.receive().await;
        assert_eq!(message["type"], "session_complete", "{message}");
        assert_eq!(viewer.hypnogram.sleep_stages, sleep);
    }
    for viewer in &mut viewers {
        viewer.assert_silent(Duration::from_millis(500)).await;
    }

    for viewer in viewers {
        viewer.close().await;
    }
    server.stop().await;
}

/// Users the load test's writers spread their sessions over.
const LOAD_USERS: usize = 10;

/// Runs 50 writers that deliver distinct results and 50 readers that fetch
/// history pages, a report page and the JSON API, all for `duration`, and
/// checks that every request succeeds and every acknowledged result is
/// stored.
async fn run_load(duration: Duration) {
    let server = Arc::new(TestServer::start().await);
    let night = Night::load("night-flat");
    night.replay(&server).await;
    let deadline = tokio::time::Instant::now() + duration;

    let mut writers = Vec::new();
    for writer in 0..50 {
        let server = Arc::clone(&server);
        writers.push(tokio::spawn(async move {
            let user_id = format!("load-user-{}", writer % LOAD_USERS);
            let url = server.url("/asleep-webhook");
            let mut acknowledged = Vec::new();
            let mut errors = Vec::new();
            let mut delivered: u32 = 0;
            let mut slowest = Duration::ZERO;
            while tokio::time::Instant::now() < deadline {
                // A session contains at most 5760 results, so a writer that
                // gets through one starts the next.
                let session_id = format!("load-{writer}-{}", delivered / 5760);
                let seq_num = delivered % 5760;
                let body = inference_body(&user_id, &session_id, i64::from(seq_num), &[1], &[0]).to_string();
                let answer = deliver(&server.client, &url, &user_id, body).await;
                slowest = slowest.max(answer.took);
                if answer.status == StatusCode::OK && answer.body["status"] == "accepted" {
                    acknowledged.push((user_id.clone(), session_id, seq_num));
                } else {
                    errors.push(format!("delivery {user_id}/{session_id}/{seq_num}: {answer:?}"));
                }
                delivered += 1;
            }
            (acknowledged, errors, slowest)
        }));
    }

    let mut paths = vec![
        format!("{}?token={}", night.report_path(), viewer_token(night.user_id())),
        format!(
            "/api/users/{}/sessions/{}?token={}",
            path_segment(night.user_id()),
            path_segment(night.session_id()),
            viewer_token(night.user_id())
        ),
        format!(
            "/users/{}?token={}",
            path_segment(night.user_id()),
            viewer_token(night.user_id())
        ),
    ];
    for user in 0..LOAD_USERS {
        let user_id = format!("load-user-{user}");
        paths.push(format!("/users/{user_id}?token={}", viewer_token(&user_id)));
    }
    let paths = Arc::new(paths);
    let mut readers = Vec::new();
    for reader in 0..50 {
        let (server, paths) = (Arc::clone(&server), Arc::clone(&paths));
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            let mut errors = Vec::new();
            while tokio::time::Instant::now() < deadline {
                let path = &paths[(reader + reads) % paths.len()];
                let response = server.get(path).await;
                let status = response.status();
                if status != StatusCode::OK {
                    let body = response.text().await.unwrap_or_default();
                    errors.push(format!("GET {}: {status} {body}", path.split('?').next().unwrap()));
                }
                reads += 1;
            }
            (reads, errors)
        }));
    }

    let mut acknowledged = Vec::new();
    let mut errors = Vec::new();
    let mut slowest = Duration::ZERO;
    for writer in writers {
        let (stored, failed, writer_slowest) = writer.await.unwrap();
        acknowledged.extend(stored);
        errors.extend(failed);
        slowest = slowest.max(writer_slowest);
    }
    let mut reads = 0;
    for reader in readers {
        let (count, failed) = reader.await.unwrap();
        reads += count;
        errors.extend(failed);
    }

    println!(
        "{} deliveries (slowest response {slowest:?}) and {reads} page reads in {duration:?}",
        acknowledged.len()
    );
    assert!(
        errors.is_empty(),
        "{} errors, the first: {:#?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        acknowledged.len() >= 50,
        "only {} deliveries in {duration:?}",
        acknowledged.len()
    );
    assert!(reads >= 50, "only {reads} reads in {duration:?}");

    let mut sessions = std::collections::BTreeMap::<(String, String), BTreeSet<u32>>::new();
    for (user_id, session_id, seq_num) in &acknowledged {
        sessions
            .entry((user_id.clone(), session_id.clone()))
            .or_default()
            .insert(*seq_num);
    }
    for ((user_id, session_id), seq_nums) in &sessions {
        assert_eq!(
            &stored_seq_nums(&server, user_id, session_id).await,
            seq_nums,
            "{user_id}/{session_id}"
        );
    }
    assert_eq!(
        server.event_count().await,
        (night.deliveries.len() + acknowledged.len()) as i64,
        "the event log holds more than was delivered"
    );

    let server = Arc::into_inner(server).expect("a task still holds the server");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers_briefly() {
    run_load(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "runs for a minute; run by .ci/run"]
async fn concurrent_writers_and_readers_for_a_minute() {
    run_load(Duration::from_secs(60)).await;
}
