//! Replays recorded deliveries to a webhook URL the way Asleep sends them.
//!
//! The replay runs in three steps: [`load`] reads the deliveries and the
//! header values each one needs, [`plan_waits`] turns their timestamps into
//! waits, and [`replay`] posts them in order with retries. The `demo` command
//! plays its bundled night through the same functions.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value};

use crate::config::{SendArgs, require};

/// Gap assumed between two deliveries when either lacks a `timestamp`.
/// Asleep sends a partial result every 5 minutes, or every 40 minutes on
/// some contracts.
pub const DEFAULT_GAP: Duration = Duration::from_secs(5 * 60);

/// Maximum wait for one response. Asleep gives a receiver 30 seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Maximum wait for a TCP connection before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum length of a server's error body quoted in a message, in characters.
const MAX_QUOTED_BODY: usize = 300;

/// Replays the deliveries named on the command line.
pub async fn run(args: SendArgs) -> Result<(), String> {
    let api_keys = require("ASLEEP_API_KEY", "--api-key", args.api_key.as_deref())?;
    // The server's variable may list several keys during a rotation; the
    // first one is as good as any.
    let api_key = api_keys.split(',').map(str::trim).next().unwrap_or_default();
    let speed = check_speed(args.speed)?;
    let target = Target::new(&args.url, api_key)?;
    let deliveries = load(&args.path)?;

    let summary = replay(&target, &deliveries, speed, Progress::Bar).await?;
    println!(
        "Sent {} to {}: {summary}.",
        count_deliveries(deliveries.len()),
        target.shown_url()
    );
    Ok(())
}

/// Returns `1 delivery` or `N deliveries`.
pub fn count_deliveries(count: usize) -> String {
    if count == 1 {
        "1 delivery".to_string()
    } else {
        format!("{count} deliveries")
    }
}

/// One recorded delivery, ready to send.
#[derive(Debug, Clone)]
pub struct RecordedDelivery {
    /// Origin of the delivery, such as a file path, for messages.
    pub source: String,
    /// The body exactly as recorded.
    pub body: String,
    /// Value of the `x-user-id` header.
    pub user_id: String,
    /// `event` or `callback_event`, when the body names one.
    pub event: Option<String>,
    pub session_id: Option<String>,
    pub seq_num: Option<u64>,
    /// Time Asleep sent the delivery. Flat bodies carry it, but enveloped
    /// ones usually do not.
    pub timestamp: Option<DateTime<FixedOffset>>,
}

impl RecordedDelivery {
    /// Returns the event and sequence number, as shown on the progress bar.
    pub fn label(&self) -> String {
        let event = self.event.as_deref().unwrap_or("delivery without an event");
        match self.seq_num {
            Some(seq_num) => format!("{event} seq_num {seq_num}"),
            None => event.to_string(),
        }
    }
}

/// Loads one delivery file, or every `NNN.json` file of a folder in numeric
/// order. Other files in the folder are skipped.
pub fn load(path: &Path) -> Result<Vec<RecordedDelivery>, String> {
    let metadata = std::fs::metadata(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let files = if metadata.is_dir() {
        delivery_files(path)?
    } else {
        vec![path.to_path_buf()]
    };

    files
        .into_iter()
        .map(|file| {
            let body =
                std::fs::read_to_string(&file).map_err(|error| format!("cannot read {}: {error}", file.display()))?;
            parse_delivery(file.display().to_string(), body)
        })
        .collect()
}

/// Lists a folder's `NNN.json` files sorted by their number.
fn delivery_files(folder: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(folder).map_err(|error| format!("cannot read {}: {error}", folder.display()))?;
    let mut numbered = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| format!("cannot read {}: {error}", folder.display()))?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(delivery_number) else {
            continue;
        };
        if entry.path().is_file() {
            numbered.push((number, entry.path()));
        }
    }
    if numbered.is_empty() {
        return Err(format!(
            "{} contains no deliveries: expected files named like 000.json, 001.json, ...",
            folder.display()
        ));
    }

    // Numbers sort first, so `9.json` comes before `10.json`. Names break
    // ties such as `01.json` and `1.json`.
    numbered.sort();
    Ok(numbered.into_iter().map(|(_, path)| path).collect())
}

/// Returns the number of a file named like `007.json`.
fn delivery_number(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json")?;
    if stem.is_empty() || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Parses a recorded body and picks out what sending it needs. `source`
/// names the delivery in errors.
pub fn parse_delivery(source: String, body: String) -> Result<RecordedDelivery, String> {
    let json: Value = serde_json::from_str(&body).map_err(|error| format!("{source}: invalid JSON: {error}"))?;
    let Some(object) = json.as_object() else {
        return Err(format!("{source}: the body must be a JSON object"));
    };
    let data = envelope(object);

    let user_id = header_user_id(object).ok_or_else(|| {
        format!("{source}: no user id: expected a string in data.user_id, callback_data.user_id or user_id")
    })?;
    if !is_header_text(user_id) {
        return Err(format!(
            "{source}: user id {user_id:?} cannot be sent in x-user-id: it must be visible ASCII"
        ));
    }

    let event = ["event", "callback_event"]
        .iter()
        .find_map(|key| object.get(*key).and_then(Value::as_str))
        .map(str::to_string);
    let session_id = [data, Some(object)]
        .into_iter()
        .flatten()
        .find_map(|fields| {
            fields
                .get("session_id")
                .or_else(|| fields.get("session").and_then(|session| session.get("id")))
                .and_then(Value::as_str)
        })
        .map(str::to_string);
    let seq_num = [data, Some(object)]
        .into_iter()
        .flatten()
        .find_map(|fields| fields.get("seq_num").and_then(Value::as_u64));
    let timestamp = delivery_timestamp(object, data).map_err(|message| format!("{source}: {message}"))?;

    Ok(RecordedDelivery {
        user_id: user_id.to_string(),
        source,
        body,
        event,
        session_id,
        seq_num,
        timestamp,
    })
}

/// Returns the `data` or `callback_data` object of an enveloped body.
fn envelope(body: &Map<String, Value>) -> Option<&Map<String, Value>> {
    ["data", "callback_data"]
        .iter()
        .find_map(|key| body.get(*key).and_then(Value::as_object))
}

/// Returns the user id for `x-user-id`: `data.user_id`, then
/// `callback_data.user_id`, then the top-level `user_id` of a flat body.
pub fn header_user_id(body: &Map<String, Value>) -> Option<&str> {
    let enveloped = ["data", "callback_data"]
        .iter()
        .filter_map(|key| body.get(*key).and_then(|data| data.get("user_id")));
    enveloped
        .chain(body.get("user_id"))
        .filter_map(Value::as_str)
        .find(|user_id| !user_id.is_empty())
}

/// Checks what the server accepts in a header: visible ASCII, spaces and tabs.
fn is_header_text(value: &str) -> bool {
    HeaderValue::from_str(value).is_ok_and(|header| header.to_str().is_ok())
}

/// Reads the top-level `timestamp`, or the envelope's. A null counts as absent.
fn delivery_timestamp(
    body: &Map<String, Value>,
    data: Option<&Map<String, Value>>,
) -> Result<Option<DateTime<FixedOffset>>, String> {
    let value = body
        .get("timestamp")
        .or_else(|| data.and_then(|data| data.get("timestamp")))
        .filter(|value| !value.is_null());
    let Some(value) = value else {
        return Ok(None);
    };
    value
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(Some)
        .ok_or_else(|| format!("timestamp {value} is not an ISO 8601 date-time such as 2026-11-20T23:37:32Z"))
}

/// Checks a replay speed: 0 sends without waiting, 1 is real time, larger
/// values play faster.
pub fn check_speed(speed: f64) -> Result<f64, String> {
    if speed.is_finite() && speed >= 0.0 {
        Ok(speed)
    } else {
        Err(format!(
            "--speed {speed} is invalid: use 0 to send without waiting, 1 for real time, or a larger number to play faster"
        ))
    }
}

/// Returns the recorded time between two deliveries: the difference of their
/// timestamps, or [`DEFAULT_GAP`] when either has none. Timestamps that go
/// backwards give no gap.
pub fn recorded_gap(previous: Option<DateTime<FixedOffset>>, next: Option<DateTime<FixedOffset>>) -> Duration {
    match (previous, next) {
        (Some(previous), Some(next)) => (next - previous).to_std().unwrap_or(Duration::ZERO),
        _ => DEFAULT_GAP,
    }
}

/// Divides a recorded gap by the replay speed. Speed 0 means no wait.
pub fn scale_gap(gap: Duration, speed: f64) -> Duration {
    if speed == 0.0 {
        return Duration::ZERO;
    }
    // A tiny speed can push the wait past what `Duration` holds.
    Duration::try_from_secs_f64(gap.as_secs_f64() / speed).unwrap_or(Duration::MAX)
}

/// Returns the wait before each delivery: none before the first, then the
/// scaled recorded gap to the one before.
pub fn plan_waits(deliveries: &[RecordedDelivery], speed: f64) -> Vec<Duration> {
    let mut previous = None;
    deliveries
        .iter()
        .enumerate()
        .map(|(index, delivery)| {
            let wait = if index == 0 {
                Duration::ZERO
            } else {
                scale_gap(recorded_gap(previous, delivery.timestamp), speed)
            };
            previous = delivery.timestamp;
            wait
        })
        .collect()
}

/// When to try a delivery again after a 503 or a connection error.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry when the server sends no `Retry-After`.
    /// It doubles with every further retry.
    pub first_backoff: Duration,
    /// Maximum wait between two attempts, `Retry-After` included, so one
    /// delivery cannot stall the replay for long.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts spread over about 15 seconds without `Retry-After`.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Returns the wait after failed attempt `attempt` (from 1): the server's
    /// `Retry-After` if it sent one, else exponential backoff, capped at
    /// `max_backoff`.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = retry_after.unwrap_or_else(|| {
            let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
            self.first_backoff.saturating_mul(factor)
        });
        backoff.min(self.max_backoff)
    }
}

/// Parses a `Retry-After` value: delay seconds, or an HTTP date relative to `now`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    Some((date.with_timezone(&Utc) - now).to_std().unwrap_or(Duration::ZERO))
}

/// Classification of a delivery the receiver accepted with 2xx, taken from
/// the `status` field of its JSON response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Ignored,
    /// A 2xx response without a known `status`, as other receivers send.
    Other,
}

impl Outcome {
    fn from_response(body: &str) -> Self {
        let status = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|json| json.get("status").and_then(Value::as_str).map(str::to_string));
        match status.as_deref() {
            Some("accepted") => Outcome::Accepted,
            Some("duplicate") => Outcome::Duplicate,
            Some("ignored") => Outcome::Ignored,
            _ => Outcome::Other,
        }
    }
}

/// Counts of the receiver's responses over a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub accepted: usize,
    pub duplicate: usize,
    pub ignored: usize,
    pub other: usize,
}

impl Summary {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Accepted => self.accepted += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Ignored => self.ignored += 1,
            Outcome::Other => self.other += 1,
        }
    }

    fn total(&self) -> usize {
        self.accepted + self.duplicate + self.ignored + self.other
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} accepted, {} duplicate, {} ignored",
            self.accepted, self.duplicate, self.ignored
        )?;
        if self.other > 0 {
            write!(f, ", {} responded without a known status", self.other)?;
        }
        Ok(())
    }
}

/// A webhook URL with the client and API key to post to it.
pub struct Target {
    client: reqwest::Client,
    url: Url,
    api_key: HeaderValue,
    pub retry: RetryPolicy,
}

impl Target {
    /// Checks the URL and the API key and builds the HTTP client.
    pub fn new(url: &str, api_key: &str) -> Result<Self, String> {
        let url = Url::parse(url).map_err(|error| format!("--url {url:?} is invalid: {error}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("--url {url} is invalid: use an http:// or https:// URL"));
        }
        let mut api_key = HeaderValue::from_str(api_key)
            .ok()
            .filter(|value| value.to_str().is_ok())
            .ok_or("the API key cannot be sent in x-api-key: it must be visible ASCII")?;
        api_key.set_sensitive(true);

        // Redirects are not followed: a redirected POST turns into a GET and
        // would lose the delivery. A proxy is skipped for loopback addresses,
        // which it could not reach.
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if is_loopback(&url) {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|error| format!("cannot create the HTTP client: {error}"))?;

        Ok(Self {
            client,
            url,
            api_key,
            retry: RetryPolicy::default(),
        })
    }

    /// Returns the URL without any password it contains, for messages.
    pub fn shown_url(&self) -> Url {
        let mut url = self.url.clone();
        // Only URLs that cannot have a password reject this, and those have none.
        let _ = url.set_password(None);
        url
    }

    /// Posts one delivery, retrying 503 responses and connection errors.
    async fn post(&self, delivery: &RecordedDelivery, progress: &ProgressBar) -> Result<Outcome, String> {
        let source = &delivery.source;
        let user_id = HeaderValue::from_str(&delivery.user_id)
            .map_err(|_| format!("{source}: user id {:?} cannot be sent in x-user-id", delivery.user_id))?;

        let mut attempt = 1;
        loop {
            let sent = self
                .client
                .post(self.url.clone())
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .header("x-api-key", self.api_key.clone())
                .header("x-user-id", user_id.clone())
                .body(delivery.body.clone())
                .send()
                .await;

            let (problem, retry_after) = match sent {
                Ok(response) if response.status().is_success() => {
                    let response_body = response.text().await.unwrap_or_default();
                    return Ok(Outcome::from_response(&response_body));
                }
                Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| parse_retry_after(value, Utc::now()));
                    let response_body = response.text().await.unwrap_or_default();
                    let problem = format!("{}: {}", StatusCode::SERVICE_UNAVAILABLE, server_error(&response_body));
                    (problem, retry_after)
                }
                Ok(response) => {
                    let status = response.status();
                    let response_body = response.text().await.unwrap_or_default();
                    return Err(format!(
                        "{source} was rejected with {status}: {}",
                        server_error(&response_body)
                    ));
                }
                Err(error) if error.is_connect() || error.is_timeout() || error.is_request() => {
                    (describe_error(&error), None)
                }
                Err(error) => return Err(format!("{source}: {}", describe_error(&error))),
            };

            if attempt >= self.retry.max_attempts {
                return Err(format!("{source} failed {attempt} times, the last time with {problem}"));
            }
            let wait = self.retry.wait(attempt, retry_after);
            progress.suspend(|| {
                tracing::warn!(
                    source = %source,
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    problem = %problem,
                    "delivery failed, retrying"
                );
            });
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // IPv6 hosts come bracketed, as in `[::1]`.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Returns the `error` (and `field`) of a JSON error response, or the start
/// of any other response body.
fn server_error(response_body: &str) -> String {
    let json = serde_json::from_str::<Value>(response_body).ok();
    let error = json.as_ref().and_then(|json| json.get("error")).and_then(Value::as_str);
    let field = json.as_ref().and_then(|json| json.get("field")).and_then(Value::as_str);
    match (error, field) {
        (Some(error), Some(field)) => format!("{error} (field {field})"),
        (Some(error), None) => error.to_string(),
        _ if response_body.trim().is_empty() => "the response has no body".to_string(),
        _ => {
            let quoted: String = response_body.trim().chars().take(MAX_QUOTED_BODY).collect();
            format!("the response body is {quoted:?}")
        }
    }
}

/// Returns a reqwest error with its causes, which hold the useful part such
/// as "Connection refused".
fn describe_error(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    message
}

/// Whether a replay draws a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar on stderr, drawn only when stderr is a terminal.
    Bar,
    /// No bar, for callers whose own output shares the terminal, such as a
    /// server in the same process that logs every delivery.
    Hidden,
}

/// Sends `deliveries` in order to `target`, waiting the recorded gaps divided
/// by `speed`. Stops at the first delivery the receiver rejects.
pub async fn replay(
    target: &Target,
    deliveries: &[RecordedDelivery],
    speed: f64,
    display: Progress,
) -> Result<Summary, String> {
    let waits = plan_waits(deliveries, speed);
    let progress = match display {
        Progress::Bar => ProgressBar::new(deliveries.len() as u64),
        Progress::Hidden => ProgressBar::hidden(),
    };
    let progress = progress.with_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} deliveries  {msg}")
            .expect("the progress template is valid")
            .progress_chars("=> "),
    );
    if display == Progress::Bar {
        // Ticks keep the elapsed time moving during long waits.
        progress.enable_steady_tick(Duration::from_millis(500));
    }

    let mut summary = Summary::default();
    for (delivery, wait) in deliveries.iter().zip(waits) {
        if !wait.is_zero() {
            progress.set_message(format!("next: {} in {}", delivery.label(), format_wait(wait)));
            tokio::time::sleep(wait).await;
        }
        progress.set_message(format!("sending {} ({})", delivery.label(), delivery.source));

        match target.post(delivery, &progress).await {
            Ok(outcome) => summary.count(outcome),
            Err(message) => {
                progress.abandon();
                return Err(format!(
                    "{message} (stopped after {} of {} deliveries: {summary})",
                    summary.total(),
                    deliveries.len()
                ));
            }
        }
        progress.inc(1);
    }

    progress.finish_and_clear();
    Ok(summary)
}

/// Formats a wait to the tenth of a second, such as `1m 5s 300ms`.
pub fn format_wait(wait: Duration) -> String {
    let tenths = Duration::from_millis(wait.as_millis().min(u64::MAX as u128) as u64 / 100 * 100);
    humantime::format_duration(tenths).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use serde_json::json;

    use super::*;

    fn delivery(body: Value) -> Result<RecordedDelivery, String> {
        parse_delivery("test.json".to_string(), body.to_string())
    }

    fn at(text: &str) -> Option<DateTime<FixedOffset>> {
        Some(DateTime::parse_from_rfc3339(text).unwrap())
    }

    #[test]
    fn user_id_from_flat_body() {
        let parsed = delivery(json!({"event": "INFERENCE_COMPLETE", "user_id": "flat-user", "seq_num": 39})).unwrap();
        assert_eq!(parsed.user_id, "flat-user");
        assert_eq!(parsed.label(), "INFERENCE_COMPLETE seq_num 39");
    }

    #[test]
    fn user_id_from_envelopes() {
        let data = delivery(json!({"event": "INFERENCE_COMPLETE", "data": {"user_id": "data-user", "seq_num": 49}}));
        assert_eq!(data.unwrap().user_id, "data-user");

        let callback = delivery(json!({
            "callback_event": "SESSION_COMPLETE",
            "callback_data": {"user_id": "callback-user", "session": {"id": "s1"}},
        }))
        .unwrap();
        assert_eq!(callback.user_id, "callback-user");
        assert_eq!(callback.event.as_deref(), Some("SESSION_COMPLETE"));
        assert_eq!(callback.session_id.as_deref(), Some("s1"));

        // The envelope wins over a top-level id.
        let both = delivery(json!({"user_id": "outer", "data": {"user_id": "inner"}})).unwrap();
        assert_eq!(both.user_id, "inner");
    }

    #[test]
    fn missing_user_id_names_file() {
        let error = delivery(json!({"event": "INFERENCE_COMPLETE", "data": {"seq_num": 39}})).unwrap_err();
        assert!(error.starts_with("test.json: no user id"), "{error}");
        let empty = delivery(json!({"user_id": ""})).unwrap_err();
        assert!(empty.contains("no user id"), "{empty}");
        let number = delivery(json!({"user_id": 7})).unwrap_err();
        assert!(number.contains("no user id"), "{number}");
    }

    #[test]
    fn non_ascii_user_id_rejected() {
        let error = delivery(json!({"user_id": "usér"})).unwrap_err();
        assert!(error.contains("x-user-id"), "{error}");
    }

    #[test]
    fn invalid_bodies_name_file() {
        let error = parse_delivery("003.json".to_string(), "{\"user_id\": ".to_string()).unwrap_err();
        assert!(error.starts_with("003.json: invalid JSON"), "{error}");
        let error = parse_delivery("004.json".to_string(), "[1, 2]".to_string()).unwrap_err();
        assert!(error.starts_with("004.json: the body must be a JSON object"), "{error}");
        let error = delivery(json!({"user_id": "u", "timestamp": "yesterday"})).unwrap_err();
        assert!(error.contains("timestamp \"yesterday\""), "{error}");
    }

    #[test]
    fn timestamps_flat_and_enveloped() {
        let flat = delivery(json!({"user_id": "u", "timestamp": "2026-11-20T23:37:32Z"})).unwrap();
        assert_eq!(flat.timestamp, at("2026-11-20T23:37:32Z"));
        let inner = delivery(json!({"data": {"user_id": "u", "timestamp": "2026-11-20T23:37:32+09:00"}})).unwrap();
        assert_eq!(inner.timestamp, at("2026-11-20T14:37:32Z"));
        let none = delivery(json!({"data": {"user_id": "u"}, "timestamp": null})).unwrap();
        assert_eq!(none.timestamp, None);
    }

    #[test]
    fn gap_from_timestamps() {
        let gap = recorded_gap(at("2026-11-20T23:37:32Z"), at("2026-11-20T23:42:33Z"));
        assert_eq!(gap, Duration::from_secs(301));
        let backwards = recorded_gap(at("2026-11-20T23:42:33Z"), at("2026-11-20T23:37:32Z"));
        assert_eq!(backwards, Duration::ZERO);
    }

    #[test]
    fn gap_without_timestamps() {
        assert_eq!(recorded_gap(None, None), DEFAULT_GAP);
        assert_eq!(recorded_gap(at("2026-11-20T23:37:32Z"), None), DEFAULT_GAP);
        assert_eq!(recorded_gap(None, at("2026-11-20T23:37:32Z")), DEFAULT_GAP);
    }

    #[test]
    fn speed_scales_gaps() {
        let gap = Duration::from_secs(300);
        assert_eq!(scale_gap(gap, 1.0), gap);
        assert_eq!(scale_gap(gap, 60.0), Duration::from_secs(5));
        assert_eq!(scale_gap(gap, 0.5), Duration::from_secs(600));
        assert_eq!(scale_gap(gap, 0.0), Duration::ZERO);
        assert_eq!(scale_gap(gap, 1e-300), Duration::MAX);
    }

    #[test]
    fn speed_validation() {
        assert_eq!(check_speed(0.0), Ok(0.0));
        assert_eq!(check_speed(450.0), Ok(450.0));
        for invalid in [-1.0, f64::NAN, f64::INFINITY] {
            let error = check_speed(invalid).unwrap_err();
            assert!(error.starts_with("--speed"), "{error}");
        }
    }

    #[test]
    fn plan_mixes_timestamps_and_default() {
        let deliveries = [
            delivery(json!({"user_id": "u", "timestamp": "2026-11-20T23:37:32Z"})).unwrap(),
            delivery(json!({"user_id": "u", "timestamp": "2026-11-20T23:42:32Z"})).unwrap(),
            delivery(json!({"data": {"user_id": "u"}})).unwrap(),
        ];
        let waits = plan_waits(&deliveries, 10.0);
        assert_eq!(
            waits,
            [Duration::ZERO, Duration::from_secs(30), Duration::from_secs(30)]
        );
        assert!(plan_waits(&deliveries, 0.0).iter().all(Duration::is_zero));
        assert!(plan_waits(&[], 1.0).is_empty());
    }

    #[test]
    fn retry_waits() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.wait(1, None), Duration::from_secs(1));
        assert_eq!(policy.wait(3, None), Duration::from_secs(4));
        assert_eq!(policy.wait(40, None), policy.max_backoff);
        assert_eq!(policy.wait(1, Some(Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(policy.wait(1, Some(Duration::from_secs(3600))), policy.max_backoff);
    }

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn summary_counts_statuses() {
        let mut summary = Summary::default();
        for response_body in [
            r#"{"status":"accepted"}"#,
            r#"{"status":"duplicate"}"#,
            r#"{"status":"ignored"}"#,
            "ok",
        ] {
            summary.count(Outcome::from_response(response_body));
        }
        assert_eq!(summary.accepted, 1);
        assert_eq!(summary.duplicate, 1);
        assert_eq!(summary.ignored, 1);
        assert_eq!(summary.other, 1);
        assert_eq!(
            summary.to_string(),
            "1 accepted, 1 duplicate, 1 ignored, 1 responded without a known status"
        );
    }

    #[test]
    fn folder_loads_numbered_files_in_order() {
        let folder = tempfile::tempdir().unwrap();
        for (name, seq_num) in [("10.json", 10), ("002.json", 2), ("9.json", 9)] {
            let body = json!({"user_id": "u", "seq_num": seq_num}).to_string();
            std::fs::write(folder.path().join(name), body).unwrap();
        }
        for skipped in ["night.json", "notes.txt", "003.json.bak", ".json"] {
            std::fs::write(folder.path().join(skipped), "not a delivery").unwrap();
        }
        std::fs::create_dir(folder.path().join("004.json")).unwrap();

        let deliveries = load(folder.path()).unwrap();
        let order: Vec<_> = deliveries.iter().map(|delivery| delivery.seq_num).collect();
        assert_eq!(order, [Some(2), Some(9), Some(10)]);
        assert!(deliveries[0].source.ends_with("002.json"), "{}", deliveries[0].source);
    }

    #[test]
    fn single_file_loads() {
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("night.json");
        std::fs::write(&file, json!({"user_id": "u"}).to_string()).unwrap();
        assert_eq!(load(&file).unwrap().len(), 1);
    }

    #[test]
    fn folder_errors_name_path() {
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("readme.txt"), "").unwrap();
        let error = load(folder.path()).unwrap_err();
        assert!(error.contains("contains no deliveries"), "{error}");

        std::fs::write(folder.path().join("001.json"), "{oops").unwrap();
        let error = load(folder.path()).unwrap_err();
        assert!(error.contains("001.json: invalid JSON"), "{error}");

        let missing = load(&folder.path().join("absent")).unwrap_err();
        assert!(missing.starts_with("cannot read"), "{missing}");
    }

    #[test]
    fn target_rejects_bad_url() {
        let error = Target::new("ftp://127.0.0.1/hook", "key").err().unwrap();
        assert!(error.starts_with("--url"), "{error}");
        let error = Target::new("not a url", "key").err().unwrap();
        assert!(error.starts_with("--url"), "{error}");
    }

    /// Request count and headers seen by the mock receiver.
    #[derive(Clone, Default)]
    struct Seen {
        requests: Arc<AtomicUsize>,
        headers: Arc<std::sync::Mutex<Vec<HeaderMap>>>,
    }

    /// Starts a receiver on 127.0.0.1 that responds to request `n` (from 0)
    /// with `respond(n)`.
    async fn mock_receiver(
        respond: fn(usize) -> axum::response::Response,
    ) -> (String, Seen, tokio::task::JoinHandle<()>) {
        let seen = Seen::default();
        let state = seen.clone();
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap| {
                let state = state.clone();
                async move {
                    let n = state.requests.fetch_add(1, Ordering::SeqCst);
                    state.headers.lock().unwrap().push(headers);
                    respond(n)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen, server)
    }

    fn flat_night() -> Vec<RecordedDelivery> {
        ["2026-11-20T23:37:32Z", "2026-11-20T23:42:33Z"]
            .iter()
            .enumerate()
            .map(|(index, timestamp)| {
                let body = json!({"event": "INFERENCE_COMPLETE", "user_id": "user123", "timestamp": timestamp});
                parse_delivery(format!("{index:03}.json"), body.to_string()).unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn replay_retries_unavailable() {
        let (url, seen, server) = mock_receiver(|n| match n {
            0 => (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")], "{}").into_response(),
            1 => axum::Json(json!({"status": "accepted"})).into_response(),
            _ => axum::Json(json!({"status": "duplicate"})).into_response(),
        })
        .await;
        let target = Target::new(&url, "secret-key").unwrap();

        let summary = replay(&target, &flat_night(), 0.0, Progress::Hidden).await.unwrap();
        assert_eq!(summary.accepted, 1);
        assert_eq!(summary.duplicate, 1);
        assert_eq!(seen.requests.load(Ordering::SeqCst), 3);

        let headers = seen.headers.lock().unwrap();
        assert_eq!(headers[0]["x-api-key"], "secret-key");
        assert_eq!(headers[0]["x-user-id"], "user123");
        assert_eq!(headers[0]["content-type"], "application/json");
        server.abort();
    }

    #[tokio::test]
    async fn replay_stops_on_rejection() {
        let (url, seen, server) = mock_receiver(|_| {
            let body = json!({"error": "seq_num must be at least 0", "field": "seq_num"});
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        })
        .await;
        let target = Target::new(&url, "key").unwrap();

        let error = replay(&target, &flat_night(), 0.0, Progress::Hidden).await.unwrap_err();
        assert!(
            error.starts_with("000.json was rejected with 400 Bad Request"),
            "{error}"
        );
        assert!(error.contains("seq_num must be at least 0 (field seq_num)"), "{error}");
        assert!(error.contains("stopped after 0 of 2"), "{error}");
        assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
        server.abort();
    }

    #[tokio::test]
    async fn replay_gives_up_after_bounded_attempts() {
        let (url, seen, server) = mock_receiver(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": "the database is unavailable"})),
            )
                .into_response()
        })
        .await;
        let mut target = Target::new(&url, "key").unwrap();
        target.retry = RetryPolicy {
            max_attempts: 3,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        };

        let error = replay(&target, &flat_night(), 0.0, Progress::Hidden).await.unwrap_err();
        assert!(error.starts_with("000.json failed 3 times"), "{error}");
        assert!(error.contains("the database is unavailable"), "{error}");
        assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
        server.abort();
    }

    #[tokio::test]
    async fn replay_retries_refused_connection() {
        // Binding and dropping a listener leaves a port with nothing behind it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        drop(listener);
        let mut target = Target::new(&url, "key").unwrap();
        target.retry = RetryPolicy {
            max_attempts: 2,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        };

        let error = replay(&target, &flat_night(), 0.0, Progress::Hidden).await.unwrap_err();
        assert!(error.starts_with("000.json failed 2 times"), "{error}");
    }
}
