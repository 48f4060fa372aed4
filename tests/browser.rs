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

use common::{Night, TestServer, Viewer, final_report_body, inference_body, path_segment, query_value, viewer_token};
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
    // Chromedriver keeps the browser's console, CSP and network messages for
    // `/se/log` only when asked to. A dialog stays open instead of being
    // dismissed, so a check can find one that an injected script opened.
    capabilities.insert("goog:loggingPrefs".to_string(), json!({ "browser": "ALL" }));
    capabilities.insert("unhandledPromptBehavior".to_string(), json!("ignore"));
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

// ---- Every page under the Content-Security-Policy ----

/// Records the page's `securitypolicyviolation` events in
/// `window.__cspViolations`. Chromedriver has the DevTools protocol run it
/// in each new document before the page's own scripts, so it records
/// violations while the page loads. It changes nothing the page shows.
const RECORD_VIOLATIONS: &str = "window.__cspViolations = []; \
    document.addEventListener('securitypolicyviolation', (event) => window.__cspViolations.push(\
    `${event.violatedDirective} blocked ${event.blockedURI || 'inline code'} at ${event.sourceFile}:${event.lineNumber}`));";

/// Lists what a hostile string could have injected into the DOM: embedding
/// elements, scripts other than the live page's two, and event handler
/// attributes, each as the start of its markup.
const FIND_INJECTED: &str = "const found = []; \
    const describe = (element) => element.outerHTML.slice(0, 160); \
    for (const element of document.querySelectorAll('*')) { \
      const name = element.localName; \
      if (['img', 'iframe', 'object', 'embed', 'frame', 'base', 'audio', 'video'].includes(name)) found.push(describe(element)); \
      if (name === 'script' && element.type !== 'application/json' && element.getAttribute('src') !== '/static/live.js') found.push(describe(element)); \
      for (const attribute of element.attributes) { if (attribute.name.startsWith('on')) found.push(describe(element)); } \
    } \
    return found;";

/// Chromedriver commands that fantoccini does not wrap: the browser log and
/// the DevTools protocol, sent to the session's endpoints directly.
struct Inspector {
    http: reqwest::Client,
    session_url: String,
}

impl Inspector {
    /// Connects to the browser's session and installs [`RECORD_VIOLATIONS`].
    async fn attach(driver: &ChromeDriver, browser: &Client) -> Self {
        let session_id = browser
            .session_id()
            .await
            .expect("reading the WebDriver session id failed")
            .expect("the browser has no WebDriver session");
        let inspector = Self {
            http: reqwest::Client::new(),
            session_url: format!("{}/session/{session_id}", driver.url()),
        };
        inspector
            .command(
                "goog/cdp/execute",
                json!({ "cmd": "Page.addScriptToEvaluateOnNewDocument", "params": { "source": RECORD_VIOLATIONS } }),
            )
            .await;
        inspector
    }

    /// Sends one command and returns its `value`.
    async fn command(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/{path}", self.session_url))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|error| panic!("sending chromedriver {path} failed: {error}"));
        let status = response.status();
        let answer: Value = response
            .json()
            .await
            .unwrap_or_else(|error| panic!("chromedriver {path} returned no JSON: {error}"));
        assert!(
            status.is_success(),
            "chromedriver {path} failed with {status}: {answer}"
        );
        answer["value"].clone()
    }

    /// Returns the browser log entries since the last call; chromedriver
    /// empties the log as it is read.
    async fn take_log(&self) -> Vec<Value> {
        match self.command("se/log", json!({ "type": "browser" })).await {
            Value::Array(entries) => entries,
            other => panic!("chromedriver's log is not a list: {other}"),
        }
    }
}

/// Returns whether a log entry is the failed load of an error page's own
/// document, which Chromium logs for every 4xx page.
fn is_error_page_load(entry: &Value, status: Option<u16>) -> bool {
    let Some(status) = status else {
        return false;
    };
    let message = entry["message"].as_str().unwrap_or_default();
    entry["source"] == "network"
        && message.contains(&format!(
            "Failed to load resource: the server responded with a status of {status} "
        ))
}

/// Fails on any CSP violation the page reported, any browser log entry at
/// level SEVERE (console errors, uncaught exceptions, CSP reports, failed
/// loads), and any open dialog. `document_status` is the status of an error
/// page, whose one failed load of its own document is expected.
async fn assert_page_clean(inspector: &Inspector, browser: &Client, page: &str, document_status: Option<u16>) {
    let violations = browser
        .execute(
            "return window.__cspViolations === undefined ? null : window.__cspViolations;",
            vec![],
        )
        .await
        .unwrap_or_else(|error| panic!("{page}: reading the CSP violations failed: {error}"));
    assert_eq!(
        violations,
        json!([]),
        "{page}: CSP violations (null: the recorder did not run)"
    );

    let entries = inspector.take_log().await;
    let (document_loads, errors): (Vec<&Value>, Vec<&Value>) = entries
        .iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .partition(|entry| is_error_page_load(entry, document_status));
    assert!(errors.is_empty(), "{page}: browser errors: {errors:#?}");
    if document_status.is_some() {
        assert_eq!(
            document_loads.len(),
            1,
            "{page}: the error page's own load: {entries:#?}"
        );
    }

    match browser.get_alert_text().await {
        Err(error) if error.is_no_such_alert() => {}
        Ok(text) => panic!("{page}: a dialog is open with {text:?}"),
        Err(error) => panic!("{page}: checking for a dialog failed: {error}"),
    }
}

/// Polls a script until it returns `true`, and fails with `what` otherwise.
async fn wait_until(browser: &Client, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    loop {
        let result = browser.execute(script, vec![]).await;
        if matches!(result, Ok(Value::Bool(true))) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {BROWSER_WAIT:?}; the last check gave {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Returns `path` with a viewer token for `user`, as a viewer link has it.
fn viewer_link(server: &TestServer, user: &str, path: &str) -> String {
    server.url(&format!("{path}?token={}", query_value(&viewer_token(user))))
}

/// Closes the browser, chromedriver and the server, then fails with the
/// test's panic if it had one. The browser is closed even after a failed
/// check, because chromedriver leaves its Chromium running otherwise.
async fn finish(
    browser: Client,
    driver: ChromeDriver,
    server: TestServer,
    outcome: Result<(), Box<dyn std::any::Any + Send>>,
) {
    let closed = browser.close().await;
    drop(driver);
    server.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    closed.expect("closing the browser failed");
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver; run by .ci/run"]
async fn pages_run_without_csp_violations() {
    let night = Night::load("night-enveloped");
    let server = TestServer::start().await;
    let profile = tempfile::tempdir().expect("creating a browser profile folder failed");
    let mut driver = ChromeDriver::start();
    driver.wait_until_ready().await;
    let browser = open_browser(&driver, profile.path()).await;

    let outcome = AssertUnwindSafe(visit_every_page(&server, &driver, &browser, &night))
        .catch_unwind()
        .await;
    finish(browser, driver, server, outcome).await;
}

/// Opens each kind of page and checks that it runs without errors: home,
/// live during and after a night, report, history with charts and
/// averages, and the 404 and 401 pages.
async fn visit_every_page(server: &TestServer, driver: &ChromeDriver, browser: &Client, night: &Night) {
    let inspector = Inspector::attach(driver, browser).await;
    let user = night.user_id();

    browser.goto(&server.url("/")).await.expect("opening / failed");
    wait_until(
        browser,
        "the home page",
        "return document.getElementById('home') !== null;",
    )
    .await;
    assert_page_clean(&inspector, browser, "home page", None).await;

    // The live page while results arrive.
    let (partials, rest): (Vec<_>, Vec<_>) = night.deliveries.iter().partition(|delivery| delivery.is_inference());
    for delivery in partials.iter().take(3) {
        let response = server.deliver(user, &delivery.body).await;
        assert_eq!(response.status, StatusCode::OK, "{}: {}", delivery.file, response.body);
    }
    let live_path = format!("/users/{}/live", path_segment(user));
    browser
        .goto(&viewer_link(server, user, &live_path))
        .await
        .expect("opening the live page failed");
    wait_for_attribute(browser, "#connection", "data-state", "live").await;
    let epochs = partials[2].seq_num().unwrap() + 1;
    wait_for_attribute(browser, "#hypnogram", "data-epochs", &epochs.to_string()).await;
    assert_page_clean(&inspector, browser, "live page during a night", None).await;

    // The same page as the night completes.
    for delivery in partials.iter().skip(3).chain(rest.iter()) {
        let response = server.deliver(user, &delivery.body).await;
        assert_eq!(response.status, StatusCode::OK, "{}: {}", delivery.file, response.body);
    }
    wait_until(
        browser,
        "the completed night's headline",
        "return !document.getElementById('complete').hidden;",
    )
    .await;
    assert_page_clean(&inspector, browser, "live page as the night completes", None).await;

    // A live page opened after the night loads the headline from the API.
    browser
        .goto(&viewer_link(server, user, &live_path))
        .await
        .expect("opening the live page again failed");
    wait_for_attribute(browser, "#connection", "data-state", "live").await;
    wait_until(
        browser,
        "the headline loaded from the API",
        "return document.getElementById('headline-total-sleep').textContent !== '—';",
    )
    .await;
    assert_page_clean(&inspector, browser, "live page after the night", None).await;

    browser
        .goto(&viewer_link(server, user, &night.report_path()))
        .await
        .expect("opening the report failed");
    wait_until(
        browser,
        "the report",
        "return document.getElementById('hypnogram') !== null;",
    )
    .await;
    assert_page_clean(&inspector, browser, "report page", None).await;

    // Three recent nights give the history page bars in both charts and
    // averages over the default period.
    let (sleep, snoring) = (night.sleep_stages(), night.snoring_stages());
    for days_ago in 1..=3 {
        let start =
            (chrono::Utc::now() - chrono::Duration::days(days_ago)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let session = format!("recent-{days_ago}");
        let body = final_report_body(user, &session, "Europe/Berlin", &start, &sleep, &snoring, &[]);
        let response = server.deliver(user, &body.to_string()).await;
        assert_eq!(response.status, StatusCode::OK, "{session}: {}", response.body);
    }
    let history_path = format!("/users/{}", path_segment(user));
    browser
        .goto(&viewer_link(server, user, &history_path))
        .await
        .expect("opening the history failed");
    wait_until(
        browser,
        "charts and averages",
        "return document.querySelectorAll('#trends-7 rect.bar').length >= 3 \
         && document.getElementById('average-figures') !== null;",
    )
    .await;
    assert_page_clean(&inspector, browser, "history page", None).await;

    // The period form submits to this server, which `form-action 'self'` allows.
    browser
        .find(Locator::Css("#period-form button[type=submit]"))
        .await
        .expect("the history page has no period form")
        .click()
        .await
        .expect("submitting the period form failed");
    wait_until(
        browser,
        "the history page for the chosen period",
        "return location.search.includes('from=') && document.getElementById('period-summary') !== null;",
    )
    .await;
    assert_page_clean(&inspector, browser, "history page after the period form", None).await;

    let missing = format!("/users/{}/sessions/no-such-night", path_segment(user));
    browser
        .goto(&viewer_link(server, user, &missing))
        .await
        .expect("opening a missing report failed");
    wait_until(
        browser,
        "the 404 page",
        "const main = document.getElementById('error'); return main !== null && main.dataset.status === '404';",
    )
    .await;
    assert_page_clean(&inspector, browser, "404 page", Some(404)).await;

    // No link was opened for this user, so the browser has no cookie for it.
    browser
        .goto(&server.url("/users/someone-else/live"))
        .await
        .expect("opening a page without a token failed");
    wait_until(
        browser,
        "the 401 page",
        "const main = document.getElementById('error'); return main !== null && main.dataset.status === '401';",
    )
    .await;
    assert_page_clean(&inspector, browser, "401 page", Some(401)).await;
}

/// A user id that breaks out of text, attributes and `<script>`, within the
/// visible ASCII `x-user-id` allows.
const HOSTILE_USER: &str = r#"<script>alert("user")</script>"><img/src=x/onerror=alert('user')>{{7*7}}"#;

/// Session ids may also hold spaces and the line separators U+2028 and U+2029.
const HOSTILE_SESSION: &str = "\"><img src=x onerror=alert('session')>\u{2028}</script><!--";
const HOSTILE_LIVE_SESSION: &str = "<svg onload=alert('live')>\u{2029}' onmouseover='alert(1)";
const HOSTILE_PECULIARITIES: [&str; 4] = [
    "<script>alert('peculiarity')</script>",
    "\"><img src=x onerror=alert('peculiarity')>",
    "</script><script>alert(5)</script>",
    "]]>{{ peculiarities }}",
];

#[tokio::test]
#[ignore = "needs chromium and chromedriver; run by .ci/run"]
async fn hostile_ids_run_no_script() {
    let server = TestServer::start().await;
    let profile = tempfile::tempdir().expect("creating a browser profile folder failed");
    let mut driver = ChromeDriver::start();
    driver.wait_until_ready().await;
    let browser = open_browser(&driver, profile.path()).await;

    let outcome = AssertUnwindSafe(visit_hostile_pages(&server, &driver, &browser))
        .catch_unwind()
        .await;
    finish(browser, driver, server, outcome).await;
}

/// Opens the live page, a report and the history of a user whose ids and
/// peculiarities are hostile, and checks that no dialog opens, nothing was
/// injected, and the page shows the ids as text.
async fn visit_hostile_pages(server: &TestServer, driver: &ChromeDriver, browser: &Client) {
    let night = Night::load("night-enveloped");
    let (sleep, snoring) = (night.sleep_stages(), night.snoring_stages());
    let start = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = final_report_body(
        HOSTILE_USER,
        HOSTILE_SESSION,
        "Asia/Seoul",
        &start,
        &sleep,
        &snoring,
        &HOSTILE_PECULIARITIES,
    );
    let response = server.deliver(HOSTILE_USER, &body.to_string()).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    let body = inference_body(HOSTILE_USER, HOSTILE_LIVE_SESSION, 39, &sleep[..40], &snoring[..40]);
    let response = server.deliver(HOSTILE_USER, &body.to_string()).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);

    let inspector = Inspector::attach(driver, browser).await;
    let user = path_segment(HOSTILE_USER);
    let pages = [
        ("live page", format!("/users/{user}/live"), HOSTILE_LIVE_SESSION),
        (
            "report page",
            format!("/users/{user}/sessions/{}", path_segment(HOSTILE_SESSION)),
            HOSTILE_SESSION,
        ),
        ("history page", format!("/users/{user}"), HOSTILE_SESSION),
    ];
    for (page, path, session) in pages {
        browser
            .goto(&viewer_link(server, HOSTILE_USER, &path))
            .await
            .unwrap_or_else(|error| panic!("opening the {page} failed: {error}"));
        wait_until(
            browser,
            &format!("the {page}"),
            "return document.getElementById('user-id') !== null;",
        )
        .await;
        let user_id = browser
            .execute("return document.getElementById('user-id').textContent;", vec![])
            .await
            .unwrap_or_else(|error| panic!("{page}: reading the user id failed: {error}"));
        assert_eq!(user_id, HOSTILE_USER, "{page}: the user id as text");
        if page == "live page" {
            // live.js writes the session id it received over the socket.
            wait_for_attribute(browser, "#connection", "data-state", "live").await;
        }
        let shown = browser
            .execute(
                "return Array.from(document.querySelectorAll('#session-id, #nights li'), \
                 (node) => node.dataset.sessionId || node.textContent);",
                vec![],
            )
            .await
            .unwrap_or_else(|error| panic!("{page}: reading the session ids failed: {error}"));
        assert!(
            shown.as_array().is_some_and(|ids| ids.iter().any(|id| id == session)),
            "{page}: the session id {session:?} is not shown as text: {shown}"
        );

        let injected = browser
            .execute(FIND_INJECTED, vec![])
            .await
            .unwrap_or_else(|error| panic!("{page}: searching the DOM failed: {error}"));
        assert_eq!(injected, json!([]), "{page}: injected elements or handlers");
        assert_page_clean(&inspector, browser, page, None).await;
    }
}
