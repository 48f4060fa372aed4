//! Graceful shutdown of the real binary on SIGTERM and SIGINT (Ctrl-C): an
//! in-flight webhook is finished and stored, viewer sockets close with 1001,
//! a stalled webhook is cut off without a 2xx, and the process exits 0
//! within the shutdown grace.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{API_KEY, SECRET, inference_body, viewer_token};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Shutdown grace the tests start the binary with.
const GRACE: Duration = Duration::from_secs(3);

/// Time allowed beyond the grace for closing the database and exiting.
const EXIT_SLACK: Duration = Duration::from_secs(3);

/// The `serve` process, killed if a test fails before it exits.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// Lines the process wrote to stderr, for failure messages.
    log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `serve` on a free loopback port with `database`, and waits for
    /// the log line that names its address.
    fn start(database: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sleep-dashboard"))
            .args(["serve", "--listen", "127.0.0.1:0", "--durability", "normal"])
            .arg("--database")
            .arg(database)
            .arg("--shutdown-grace")
            .arg(format!("{}s", GRACE.as_secs()))
            .env("ASLEEP_API_KEY", API_KEY)
            .env("DASHBOARD_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the sleep-dashboard binary failed");

        let (lines, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let addr = loop {
            let line = log
                .recv_timeout(common::WAIT)
                .expect("the server did not log its address in time");
            if let Some(address) = line.split_whitespace().find_map(|field| field.strip_prefix("address=")) {
                break address.parse().unwrap_or_else(|_| panic!("not an address: {line}"));
            }
        };
        Self { child, addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `signal` (`TERM` or `INT`) with the `kill` command.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill failed");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit within `limit` and returns its status
    /// and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                let log: Vec<String> = self.log.try_iter().collect();
                panic!("the server did not exit within {limit:?}; its log:\n{}", log.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends a webhook's head and the first half of `body` on a new connection.
async fn start_webhook(addr: SocketAddr, user_id: &str, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /asleep-webhook HTTP/1.1\r\nHost: localhost\r\nx-api-key: {API_KEY}\r\nx-user-id: {user_id}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..body.len() / 2]).await.unwrap();
    stream
}

/// Reads a response until the server closes the connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    let read = tokio::time::timeout(GRACE + EXIT_SLACK, stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the server neither answered nor closed the connection");
    String::from_utf8_lossy(&response).into_owned()
}

/// Delivers `body` once more and returns the answer's `status` field, which
/// is `duplicate` when the first delivery was stored.
async fn redeliver(server: &Server, user_id: &str, body: &str) -> String {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(server.url("/asleep-webhook"))
        .header("x-api-key", API_KEY)
        .header("x-user-id", user_id)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["status"].as_str().unwrap_or_default().to_string()
}

/// Starts the binary, opens a viewer socket and a half-sent webhook, sends
/// `signal`, and checks the whole orderly shutdown.
async fn drains_on(signal: &str) {
    let folder = tempfile::tempdir().unwrap();
    let database = folder.path().join("events.sqlite3");
    let mut server = Server::start(&database);
    let user = "sleeper";

    let ws_url = format!("ws://{}/ws?user={user}&token={}", server.addr, viewer_token(user));
    let (mut viewer, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let snapshot = tokio::time::timeout(common::WAIT, viewer.next()).await.unwrap();
    assert!(matches!(snapshot, Some(Ok(Message::Text(_)))), "{snapshot:?}");

    let body = inference_body(user, "night", 9, &[1; 10], &[0; 10]).to_string();
    let mut webhook = start_webhook(server.addr, user, &body).await;
    // Gives the server time to read the head and start the request.
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.signal(signal);
    let close = tokio::time::timeout(common::WAIT, async {
        loop {
            match viewer.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|frame| u16::from(frame.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the viewer socket was not closed");
    assert_eq!(close, Some(1001), "viewers are told the server is going away");

    // New connections are refused while the in-flight webhook finishes.
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "the listener still accepts connections after the signal"
    );
    webhook.write_all(&body.as_bytes()[body.len() / 2..]).await.unwrap();
    let response = read_response(&mut webhook).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""status":"accepted""#), "{response}");

    let (status, took) = server.wait_exit(GRACE + EXIT_SLACK);
    assert!(status.success(), "exit status {status}");
    assert!(took < GRACE + EXIT_SLACK, "exiting took {took:?}");

    // The acknowledged delivery is in the database after a restart.
    let mut restarted = Server::start(&database);
    assert_eq!(redeliver(&restarted, user, &body).await, "duplicate");
    restarted.signal("TERM");
    assert!(restarted.wait_exit(GRACE + EXIT_SLACK).0.success());
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    drains_on("TERM").await;
}

#[tokio::test]
async fn ctrl_c_drains_and_exits_zero() {
    drains_on("INT").await;
}

#[tokio::test]
async fn stalled_webhook_is_cut_off_after_grace() {
    let folder = tempfile::tempdir().unwrap();
    let database = folder.path().join("events.sqlite3");
    let mut server = Server::start(&database);
    let user = "stalled";
    let body = inference_body(user, "night", 9, &[1; 10], &[0; 10]).to_string();
    let mut webhook = start_webhook(server.addr, user, &body).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    server.signal("TERM");
    // The rest of the body never comes.
    let response = read_response(&mut webhook).await;
    assert!(!response.starts_with("HTTP/1.1 2"), "a cut-off webhook got {response}");

    let (status, _) = server.wait_exit(GRACE + EXIT_SLACK);
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= GRACE - Duration::from_millis(500),
        "exited after {took:?}, before the grace"
    );
    assert!(took < GRACE + EXIT_SLACK, "exiting took {took:?}");

    let mut restarted = Server::start(&database);
    assert_eq!(
        redeliver(&restarted, user, &body).await,
        "accepted",
        "the cut-off delivery was not stored"
    );
    restarted.signal("TERM");
    assert!(restarted.wait_exit(GRACE + EXIT_SLACK).0.success());
}
