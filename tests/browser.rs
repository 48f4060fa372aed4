//! The live page in a real browser: headless Chromium driven through
//! chromedriver watches a night arrive and draws it.
//!
//! The page's contract with this test: `#connection` carries
//! `data-state="live"` while the WebSocket is open, `#hypnogram` carries
//! `data-epochs`, the number of epochs drawn, and `data-staging`, and each
//! figure's `<dd>` carries `data-value`, the number the server sent.

mod common;

use std::net::TcpListener as StdTcpListener;
use std::panic::AssertUnwindSafe;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Night, TestServer, Viewer, path_segment, query_value, viewer_token};
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The Chromium binary Debian's `chromium` package installs.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Maximum wait for chromedriver to start and for the page to catch up.
const BROWSER_WAIT: Duration = Duration::from_secs(30);

/// A chromedriver process, killed by its PID when dropped so a failing test
/// leaves no process behind.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> Self {
        // Chromedriver cannot take an already bound socket, so the port is
        // found by binding port 0 and released just before the start.
        let port = StdTcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("finding a free loopback port failed")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("starting chromedriver failed ({error}); install chromium and chromium-driver")
            });
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Polls chromedriver's status endpoint until it reports ready.
    async fn wait_until_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("checking chromedriver failed") {
                panic!("chromedriver exited early with {status}");
            }
            if let Ok(response) = client.get(format!("{}/status", self.url())).send().await {
                let ready = response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|status| status["value"]["ready"].as_bool());
                if ready == Some(true) {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver on port {} was not ready within {BROWSER_WAIT:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // `Child::kill` signals exactly this process by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a headless Chromium session with a fresh profile in `profile`.
async fn open_browser(driver: &ChromeDriver, profile: &std::path::Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_string(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::rustls()
        .expect("building the WebDriver client failed")
        .capabilities(capabilities)
        .connect(&driver.url())
        .await
        .unwrap_or_else(|error| panic!("opening a Chromium session at {CHROMIUM} failed: {error}"))
}

/// Polls the attribute `name` of the element matching `selector` until it
/// equals `expected`, and fails with the last value seen otherwise.
async fn wait_for_attribute(browser: &Client, selector: &str, name: &str, expected: &str) {
    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Ok(element) = browser.find(Locator::Css(selector)).await {
            last = element.attr(name).await.ok().flatten();
            if last.as_deref() == Some(expected) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = browser.source().await.unwrap_or_default();
    let start: String = page.chars().take(600).collect();
    panic!(
        "{selector} has {name}={last:?} after {BROWSER_WAIT:?}, expected {expected:?}; the page starts with: {start}"
    );
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver; run by .ci/run"]
async fn live_page_draws_growing_hypnogram() {
    let night = Night::load("night-enveloped");
    let server = TestServer::start().await;
    let profile = tempfile::tempdir().expect("creating a browser profile folder failed");
    let mut driver = ChromeDriver::start();
    driver.wait_until_ready().await;
    let browser = open_browser(&driver, profile.path()).await;

    // The browser session is closed even when a check fails, because
    // chromedriver leaves its Chromium running otherwise.
    let outcome = AssertUnwindSafe(watch_night(&server, &browser, &night))
        .catch_unwind()
        .await;
    let closed = browser.close().await;
    drop(driver);
    server.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    closed.expect("closing the browser failed");
}

/// Polls the text of the element matching `selector` until it equals
/// `expected`, and fails with the last text seen otherwise.
async fn wait_for_text(browser: &Client, selector: &str, expected: &str) {
    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Ok(element) = browser.find(Locator::Css(selector)).await {
            last = element.text().await.ok();
            if last.as_deref() == Some(expected) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{selector} shows {last:?} after {BROWSER_WAIT:?}, expected {expected:?}");
}

/// Returns the visible text of the element matching `selector`.
async fn text_of(browser: &Client, selector: &str) -> String {
    browser
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|error| panic!("{selector} not found: {error}"))
        .text()
        .await
        .unwrap_or_else(|error| panic!("reading the text of {selector} failed: {error}"))
}

/// Waits until the page shows the staging and figures of `message`, as a
/// WebSocket viewer of the same night received it.
async fn wait_for_figures(browser: &Client, message: &Value) {
    let staging = message["staging"].as_str().expect("messages carry staging");
    wait_for_attribute(browser, "#hypnogram", "data-staging", staging).await;
    let figures = &message["figures"];
    for (id, field) in [
        ("figure-time-in-sleep", "time_in_sleep"),
        ("figure-sleep-efficiency", "sleep_efficiency"),
        ("figure-time-in-wake", "time_in_wake"),
    ] {
        let value = figures[field].to_string();
        wait_for_attribute(browser, &format!("#{id}"), "data-value", &value).await;
    }
    let seconds = figures["current_stage"]["seconds"].to_string();
    wait_for_attribute(browser, "#current-stage", "data-seconds", &seconds).await;

    let lanes = browser
        .find_all(Locator::Css("#hypnogram .lanes rect.lane[data-stage]"))
        .await
        .expect("finding the lanes failed");
    let expected_lanes = if staging == "two_stage" { 2 } else { 4 };
    assert_eq!(lanes.len(), expected_lanes, "lanes of a {staging} night");
}

/// Opens the live page of the night's user, delivers the night and checks
/// that the drawing and the figures follow.
async fn watch_night(server: &TestServer, browser: &Client, night: &Night) {
    let user = night.user_id();
    let live_url = server.url(&format!(
        "/users/{}/live?token={}",
        path_segment(user),
        query_value(&viewer_token(user))
    ));
    browser.goto(&live_url).await.expect("opening the live page failed");
    wait_for_attribute(browser, "#connection", "data-state", "live").await;
    wait_for_attribute(browser, "#hypnogram", "data-epochs", "0").await;
    assert_eq!(
        text_of(browser, "#figure-time-in-sleep").await,
        "—",
        "no figures before any result"
    );

    // A WebSocket viewer of the same night receives the figures the page
    // must show.
    let mut viewer: Viewer = server.viewer(user).await;

    // Each of the first results extends the night by 10 epochs. The first
    // three hold wake and light only, which automatic staging reads as a
    // two-stage night; the fourth brings the first deep epochs.
    let (partials, rest): (Vec<_>, Vec<_>) = night.deliveries.iter().partition(|delivery| delivery.is_inference());
    let mut shown_sleep = Vec::new();
    for delivery in partials.iter().take(4) {
        let response = server.deliver(user, &delivery.body).await;
        assert_eq!(response.status, StatusCode::OK, "{}: {}", delivery.file, response.body);
        let epochs = delivery.seq_num().unwrap() + 1;
        wait_for_attribute(browser, "#hypnogram", "data-epochs", &epochs.to_string()).await;
        let message = viewer.receive().await;
        wait_for_figures(browser, &message).await;
        shown_sleep.push(text_of(browser, "#figure-time-in-sleep").await);
        if message["staging"] == "two_stage" {
            assert_eq!(
                text_of(browser, "#hypnogram rect.lane-sleep + text").await,
                "Sleep",
                "{}: a two-stage night's sleep lane",
                delivery.file
            );
            assert!(
                text_of(browser, "#current-stage").await.starts_with("Asleep for "),
                "{}: current stage of a two-stage night",
                delivery.file
            );
            assert!(
                !is_displayed(browser, "#figure-time-in-rem").await,
                "{}: a two-stage night has no REM figure",
                delivery.file
            );
        }
    }
    assert_ne!(shown_sleep[0], "—", "time asleep appears with the first result");
    assert_ne!(
        shown_sleep[0], shown_sleep[1],
        "time asleep changes with the next result"
    );

    // The fourth result ends with 10 deep epochs and makes the night four-stage.
    wait_for_attribute(browser, "#hypnogram", "data-staging", "four_stage").await;
    wait_for_text(browser, "#current-stage", "Deep sleep for 5 min").await;
    assert_eq!(text_of(browser, "#hypnogram rect.lane-deep + text").await, "Deep");
    assert!(
        is_displayed(browser, "#figure-time-in-rem").await,
        "a four-stage night shows its REM figure"
    );

    // The rest of the night, then the final report. In order, each delivery
    // sends the viewer one message.
    let mut last_message = Value::Null;
    for delivery in partials.iter().skip(4).chain(rest.iter()) {
        let response = server.deliver(user, &delivery.body).await;
        assert_eq!(response.status, StatusCode::OK, "{}: {}", delivery.file, response.body);
        last_message = viewer.receive().await;
    }
    assert_eq!(last_message["type"], "session_complete");
    let final_epochs = night.sleep_stages().len();
    wait_for_attribute(browser, "#hypnogram", "data-epochs", &final_epochs.to_string()).await;
    wait_for_figures(browser, &last_message).await;
    assert!(
        !is_displayed(browser, "#so-far").await,
        "a completed night shows its headline instead of the figures so far"
    );
    assert!(
        is_displayed(browser, "#complete").await,
        "the completed night's headline"
    );
    wait_for_attribute(browser, "#connection", "data-state", "live").await;
    viewer.close().await;
}

/// Returns whether the element matching `selector` is displayed.
async fn is_displayed(browser: &Client, selector: &str) -> bool {
    browser
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|error| panic!("{selector} not found: {error}"))
        .is_displayed()
        .await
        .unwrap_or_else(|error| panic!("reading whether {selector} is displayed failed: {error}"))
}
