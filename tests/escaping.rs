//! Hostile text from deliveries on every page. User ids, session ids and
//! peculiarities that carry HTML, attribute-breaking and script-breaking
//! strings must reach the markup only escaped, and the JSON embedded for
//! scripts, the JSON API and the downloads must give back exactly the
//! delivered strings. A time zone that is not an IANA name is rejected with
//! 400 and never shown.
//!
//! The markup is read with a small HTML tokenizer below, which splits tags,
//! attributes, text and comments the way a browser's parser does for these
//! pages. An escaping bug shows up as an element, attribute or script that
//! the templates never write, or as a value that no longer decodes to the
//! delivered string.

mod common;

use chrono::{Duration, SecondsFormat, Utc};
use common::{JsonResponse, TestServer, final_report_body, inference_body, viewer_token};
use percent_encoding::percent_decode_str;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use sleep_dashboard::report::{api_session_path, history_path, live_path, query_value, report_path};

/// User ids that break out of text, attributes, `<script>` and comments.
/// `x-user-id` must be visible ASCII, so `/` separates the attributes of
/// the injected tag where a space would.
const USERS: [&str; 2] = [
    r#"<script>alert("user")</script>"><img/src=x/onerror=alert('user')>'{{7*7}}"#,
    "</script><script>alert(2)</script><!--]]>&amp;{%raw%}",
];

/// Session ids of two complete nights. Ids in a body may hold any character
/// but control characters, so these add spaces and the line and paragraph
/// separators U+2028 and U+2029, which end a string literal in JavaScript
/// before ES2019.
const COMPLETE_SESSIONS: [&str; 2] = [
    "\"><img src=x onerror=alert('session')>\u{2028}\u{2029}",
    "</script><script>alert(3)</script><!--]]>{{ session_id }}' onmouseover='alert(4)",
];

/// Session id of a night still in progress.
const LIVE_SESSION: &str = "<svg onload=alert('live')>\u{2028}night";

/// Peculiarities of the complete nights: one code Asleep uses and one
/// hostile string of each kind.
const PECULIARITIES: [&str; 10] = [
    "NO_BREATHING_STABILITY",
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
    "'",
    "</script><script>",
    "<!--",
    "]]>",
    "\u{2028}\u{2029}",
    "{{ peculiarities }}{% raw %}",
    "&lt;b&gt; &#60;",
];

/// Tags that appear in the markup only if some hostile string reached it
/// unescaped. The templates themselves write none of them. Injected
/// attributes are found by parsing, because their text, such as
/// `onerror=alert(1)`, may appear harmlessly inside escaped text.
const RAW_INJECTIONS: [&str; 5] = ["<script>alert", "</script><script>", "<img", "<svg onload", "<!--"];

/// Returns the sleep and snoring stages of a four-stage night of 190
/// epochs with some snoring.
fn hypnogram() -> (Vec<i64>, Vec<i64>) {
    let mut sleep = Vec::new();
    for (stage, epochs) in [(0, 10), (1, 60), (2, 40), (3, 30), (1, 40), (0, 10)] {
        sleep.extend(std::iter::repeat_n(stage, epochs));
    }
    let snoring = (0..sleep.len()).map(|epoch| i64::from(epoch % 7 == 0)).collect();
    (sleep, snoring)
}

/// Delivers, for each hostile user, two complete nights that began two and
/// three days ago and the first result of a night in progress.
async fn deliver_hostile_nights(server: &TestServer) {
    let (sleep, snoring) = hypnogram();
    for user in USERS {
        for (index, session) in COMPLETE_SESSIONS.iter().enumerate() {
            let start = (Utc::now() - Duration::days(3 - index as i64)).to_rfc3339_opts(SecondsFormat::Secs, true);
            let body = final_report_body(user, session, "Asia/Seoul", &start, &sleep, &snoring, &PECULIARITIES);
            let response = server.deliver(user, &body.to_string()).await;
            assert_eq!(
                response.status,
                StatusCode::OK,
                "{user:?} {session:?}: {}",
                response.body
            );
        }
        let body = inference_body(user, LIVE_SESSION, 39, &sleep[..40], &snoring[..40]);
        let response = server.deliver(user, &body.to_string()).await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{user:?} {LIVE_SESSION:?}: {}",
            response.body
        );
    }
}

/// Fetches a viewer page of `user` with a valid viewer token and returns
/// the status, the `Content-Type` and the body.
async fn fetch_as_viewer(server: &TestServer, user: &str, path: &str) -> (StatusCode, String, String) {
    let path_and_query = format!("{path}?token={}", query_value(&viewer_token(user)));
    fetch(server, &path_and_query).await
}

/// Fetches `path_and_query` and returns the status, the `Content-Type` and
/// the body.
async fn fetch(server: &TestServer, path_and_query: &str) -> (StatusCode, String, String) {
    let response = server.get(path_and_query).await;
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.text().await.expect("reading the body failed");
    (status, content_type, body)
}

/// Fetches an HTML page of `user` that must return 200, and audits it.
async fn viewer_page(server: &TestServer, user: &str, path: &str) -> Document {
    let (status, content_type, body) = fetch_as_viewer(server, user, path).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    assert!(content_type.starts_with("text/html"), "GET {path}: {content_type}");
    audit(path, &body)
}

/// Splits an href into its path segments, percent-decoded, and drops the query.
fn decoded_segments(href: &str) -> Vec<String> {
    let path = href.split('?').next().unwrap_or_default();
    path.split('/')
        .skip(1)
        .map(|segment| {
            percent_decode_str(segment)
                .decode_utf8()
                .unwrap_or_else(|error| panic!("{href} is not UTF-8 after decoding: {error}"))
                .into_owned()
        })
        .collect()
}

#[tokio::test]
async fn live_page_shows_hostile_user_escaped() {
    let server = TestServer::start().await;
    deliver_hostile_nights(&server).await;

    for user in USERS {
        let page = viewer_page(&server, user, &live_path(user)).await;
        assert_eq!(page.by_id("user-id").text(), user, "the id shown on the live page");
        assert_eq!(
            page.by_id("hypnogram-title").text(),
            format!("Live hypnogram of user {user}"),
            "the title of the empty hypnogram"
        );

        let config = page.json_script("live-config");
        assert_eq!(config["user_id"], user, "live-config parses back to the user id");

        let history = page.by_id("history-link").attribute("href").unwrap();
        assert_eq!(decoded_segments(history), ["users", user], "history link {history}");
    }
    server.stop().await;
}

#[tokio::test]
async fn live_socket_returns_original_session_id() {
    let server = TestServer::start().await;
    deliver_hostile_nights(&server).await;

    for user in USERS {
        let viewer = server.viewer(user).await;
        assert_eq!(
            viewer.hypnogram.session_id.as_deref(),
            Some(LIVE_SESSION),
            "the snapshot names the night in progress"
        );
        viewer.close().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn report_page_shows_hostile_strings_escaped() {
    let server = TestServer::start().await;
    deliver_hostile_nights(&server).await;

    for user in USERS {
        for session in COMPLETE_SESSIONS {
            let path = report_path(user, session);
            let page = viewer_page(&server, user, &path).await;
            assert_eq!(page.by_id("user-id").text(), user, "{path}: user id");
            assert_eq!(page.by_id("session-id").text(), session, "{path}: session id");
            assert_eq!(
                page.by_id("report").attribute("data-session-id"),
                Some(session),
                "{path}: data-session-id"
            );

            let codes: Vec<&str> = page
                .by_id("peculiarities")
                .elements("li")
                .iter()
                .map(|item| item.attribute("data-code").expect("each peculiarity has data-code"))
                .collect();
            assert_eq!(codes, PECULIARITIES, "{path}: data-code of each peculiarity");
            let shown: Vec<String> = page
                .by_id("peculiarities")
                .elements("code")
                .iter()
                .map(|code| code.text())
                .collect();
            assert_eq!(shown, PECULIARITIES, "{path}: text of each peculiarity");

            for (link, expected) in [
                ("history-link", vec!["users", user]),
                ("json-link", vec!["api", "users", user, "sessions", session]),
                (
                    "epochs-csv-link",
                    vec!["users", user, "sessions", session, "epochs.csv"],
                ),
                (
                    "night-json-link",
                    vec!["users", user, "sessions", session, "night.json"],
                ),
            ] {
                let href = page.by_id(link).attribute("href").unwrap();
                assert_eq!(decoded_segments(href), expected, "{path}: #{link} {href}");
            }
        }

        // The night in progress has a report page too.
        let path = report_path(user, LIVE_SESSION);
        let page = viewer_page(&server, user, &path).await;
        assert_eq!(page.by_id("session-id").text(), LIVE_SESSION, "{path}: session id");
        assert!(page.has_id("in-progress"), "{path}: marked in progress");
    }
    server.stop().await;
}

#[tokio::test]
async fn history_page_shows_hostile_ids_escaped() {
    let server = TestServer::start().await;
    deliver_hostile_nights(&server).await;

    for user in USERS {
        let path = history_path(user);
        let page = viewer_page(&server, user, &path).await;
        assert_eq!(page.by_id("user-id").text(), user, "{path}: user id");

        let mut listed: Vec<&str> = page
            .by_id("nights")
            .elements("li")
            .iter()
            .map(|night| {
                night
                    .attribute("data-session-id")
                    .expect("each night has data-session-id")
            })
            .collect();
        listed.sort_unstable();
        let mut expected = vec![COMPLETE_SESSIONS[0], COMPLETE_SESSIONS[1], LIVE_SESSION];
        expected.sort_unstable();
        assert_eq!(listed, expected, "{path}: data-session-id of each night");

        for link in page.by_id("nights").elements("a") {
            let href = link.attribute("href").unwrap();
            let segments = decoded_segments(href);
            assert_eq!(segments[..2], ["users", user], "{path}: {href}");
            assert!(
                expected.contains(&segments[3].as_str()),
                "{path}: {href} links to no delivered session"
            );
        }

        // The 7-day chart's data table names both complete nights.
        let table_ids: Vec<String> = page
            .by_id("trends-7")
            .elements("code")
            .iter()
            .map(|code| code.text())
            .collect();
        for session in COMPLETE_SESSIONS {
            assert!(
                table_ids.iter().any(|shown| shown == session),
                "{path}: the 7-day chart's table lacks {session:?}: {table_ids:?}"
            );
        }
        assert!(
            page.has_id("average-figures"),
            "{path}: averages of the complete nights"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn json_api_and_downloads_return_originals() {
    let server = TestServer::start().await;
    deliver_hostile_nights(&server).await;

    for user in USERS {
        for session in COMPLETE_SESSIONS {
            let document = server.api_document(user, session).await;
            assert_eq!(document["user_id"], user, "API user_id");
            assert_eq!(document["session_id"], session, "API session_id");
            assert_eq!(document["peculiarities"], json!(PECULIARITIES), "API peculiarities");

            let path = format!("{}/night.json", report_path(user, session));
            let (status, content_type, body) = fetch_as_viewer(&server, user, &path).await;
            assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
            assert!(
                content_type.starts_with("application/json"),
                "GET {path}: {content_type}"
            );
            let export: Value = serde_json::from_str(&body).expect("night.json is JSON");
            assert_eq!(export["user_id"], user, "{path}: user_id");
            assert_eq!(export["session_id"], session, "{path}: session_id");
            assert_eq!(export["peculiarities"], json!(PECULIARITIES), "{path}: peculiarities");
        }

        let path = api_session_path(user, LIVE_SESSION);
        let (status, content_type, body) = fetch_as_viewer(&server, user, &path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "GET {path}: {content_type}"
        );
        let document: Value = serde_json::from_str(&body).expect("the API returns JSON");
        assert_eq!(document["session_id"], LIVE_SESSION, "API session_id in progress");
    }
    server.stop().await;
}

#[tokio::test]
async fn error_pages_escape_reflected_ids() {
    let server = TestServer::start().await;
    deliver_hostile_nights(&server).await;

    for user in USERS {
        // A night in progress has no final report to export; the CSV
        // download returns the HTML error page, which names the session.
        let path = format!("{}/epochs.csv", report_path(user, LIVE_SESSION));
        let (status, content_type, body) = fetch_as_viewer(&server, user, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "GET {path}: {body}");
        assert!(content_type.starts_with("text/html"), "GET {path}: {content_type}");
        let page = audit(&path, &body);
        let message = page.by_id("error-message").text();
        assert!(
            message.contains(&format!("{LIVE_SESSION:?}")),
            "{path}: the message names the session: {message:?}"
        );

        let path = report_path(user, "<b>no such session</b>");
        let (status, _, body) = fetch_as_viewer(&server, user, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "GET {path}: {body}");
        audit(&path, &body);

        for path in [
            live_path(user),
            history_path(user),
            report_path(user, COMPLETE_SESSIONS[0]),
        ] {
            let (status, content_type, body) = fetch(&server, &path).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "GET {path} without a token: {body}");
            assert!(content_type.starts_with("text/html"), "GET {path}: {content_type}");
            audit(&path, &body);
        }
    }

    let path = "/%3Cscript%3Ealert(1)%3C%2Fscript%3E/%22%3E%3Cimg%20src=x%20onerror=alert(1)%3E";
    let (status, _, body) = fetch(&server, path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "GET {path}: {body}");
    audit(path, &body);
    server.stop().await;
}

#[tokio::test]
async fn hostile_time_zone_is_rejected() {
    let server = TestServer::start().await;
    let user = "zone-user";
    let (sleep, snoring) = hypnogram();
    let start = (Utc::now() - Duration::days(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let body = final_report_body(user, "valid-night", "Asia/Seoul", &start, &sleep, &snoring, &[]);
    let response = server.deliver(user, &body.to_string()).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);

    // Each zone carries the word "zonemark", which no page writes itself.
    let zones = [
        "<script>alert('zonemark')</script>",
        "Asia/Seoul\"><img src=x onerror=alert('zonemark')>",
        "Europe/Berlin</script><!--zonemark",
        "UTC\u{2028}zonemark",
        "../../zonemark",
    ];
    let mut rejected_sessions = Vec::new();
    for (index, zone) in zones.iter().enumerate() {
        // The zone can arrive in three places; each must be rejected.
        let session = format!("zone-night-{index}");
        let mut in_data = final_report_body(user, &session, "UTC", &start, &sleep, &snoring, &[]);
        in_data["data"]["timezone"] = json!(zone);
        let mut in_session = final_report_body(user, &session, "UTC", &start, &sleep, &snoring, &[]);
        in_session["data"].as_object_mut().unwrap().remove("timezone");
        in_session["data"]["session"]["created_timezone"] = json!(zone);
        let mut flat = final_report_body(user, &session, "UTC", &start, &sleep, &snoring, &[]);
        flat = flat["data"].clone();
        flat["event"] = json!("SESSION_COMPLETE");
        flat["version"] = json!("V3");
        flat["timezone"] = json!(zone);

        for (body, field) in [
            (in_data, "data.timezone"),
            (in_session, "data.session.created_timezone"),
            (flat, "timezone"),
        ] {
            let response = server
                .webhook()
                .header("x-user-id", user)
                .body(body.to_string())
                .send()
                .await
                .expect("sending the webhook request failed");
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let response = JsonResponse::read(response).await;
            assert_eq!(response.status, StatusCode::BAD_REQUEST, "{zone:?} in {field}");
            assert_eq!(response.field(), field, "{zone:?}: the field named");
            assert!(
                content_type.starts_with("application/json"),
                "{zone:?}: the 400 is JSON, not a page: {content_type}"
            );
        }
        rejected_sessions.push(session);
    }

    for session in &rejected_sessions {
        let path = api_session_path(user, session);
        let (status, _, body) = fetch_as_viewer(&server, user, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "a rejected night is not stored: {body}");
    }
    for path in [
        history_path(user),
        report_path(user, "valid-night"),
        live_path(user),
        api_session_path(user, "valid-night"),
    ] {
        let (status, _, body) = fetch_as_viewer(&server, user, &path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        assert!(!body.contains("zonemark"), "GET {path} shows a rejected zone");
    }
    server.stop().await;
}

/// Password of the operator view in [`admin_page_shows_hostile_ids_escaped`].
const ADMIN_SECRET: &str = "escaping-test-admin-secret-0123456789";

#[tokio::test]
async fn admin_page_shows_hostile_ids_escaped() {
    let server =
        TestServer::start_configured(|config| config.access.admin_secret = Some(ADMIN_SECRET.to_string())).await;
    deliver_hostile_nights(&server).await;

    let response = server
        .client
        .get(server.url("/admin"))
        .basic_auth("operator", Some(ADMIN_SECRET))
        .send()
        .await
        .expect("GET /admin failed");
    let status = response.status();
    let body = response.text().await.expect("reading the body failed");
    assert_eq!(status, StatusCode::OK, "GET /admin: {body}");
    let page = audit("/admin", &body);

    // Each user's night in progress is listed with both ids.
    let mut listed: Vec<(&str, &str)> = page
        .by_id("live-night-table")
        .elements("tr")
        .into_iter()
        .filter_map(|row| Some((row.attribute("data-user-id")?, row.attribute("data-session-id")?)))
        .collect();
    listed.sort_unstable();
    let mut expected: Vec<(&str, &str)> = USERS.iter().map(|user| (*user, LIVE_SESSION)).collect();
    expected.sort_unstable();
    assert_eq!(listed, expected, "data-user-id and data-session-id of each live night");

    let shown: Vec<String> = page
        .by_id("live-night-table")
        .elements("code")
        .iter()
        .map(|code| code.text())
        .collect();
    for user in USERS {
        assert!(
            shown.iter().any(|text| text == user),
            "the table shows {user:?} as text: {shown:?}"
        );
    }
    let form_users: Vec<&str> = page
        .by_id("live-night-table")
        .elements("input")
        .into_iter()
        .filter(|input| input.attribute("name") == Some("user"))
        .filter_map(|input| input.attribute("value"))
        .collect();
    for user in USERS {
        assert!(
            form_users.contains(&user),
            "a minting form carries {user:?}: {form_users:?}"
        );
    }
    server.stop().await;
}

// ---- Markup checks ----

/// Elements the templates and the server-drawn SVGs write. Anything else,
/// such as `img`, `iframe` or `object`, was injected.
const KNOWN_ELEMENTS: &[&str] = &[
    "html",
    "head",
    "meta",
    "title",
    "link",
    "script",
    "body",
    "header",
    "nav",
    "main",
    "footer",
    "a",
    "p",
    "h1",
    "h2",
    "h3",
    "code",
    "pre",
    "dl",
    "dt",
    "dd",
    "div",
    "span",
    "section",
    "figure",
    "figcaption",
    "svg",
    "g",
    "rect",
    "line",
    "path",
    "text",
    "polyline",
    "circle",
    "desc",
    "ol",
    "ul",
    "li",
    "table",
    "caption",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "details",
    "summary",
    "form",
];

/// Elements of the forms and notes, kept apart from the list above to keep
/// it readable.
const KNOWN_FORM_ELEMENTS: &[&str] = &["input", "label", "button", "time", "noscript", "strong", "em"];

/// Checks one page's markup for anything a hostile string could have
/// injected, and returns the parsed document for content checks.
fn audit(page: &str, html: &str) -> Document {
    for injection in RAW_INJECTIONS {
        assert!(
            !html.contains(injection),
            "{page}: the markup contains {injection:?} unescaped"
        );
    }

    let document = parse_html(html).unwrap_or_else(|error| panic!("{page}: {error}"));
    assert!(
        document.comments.is_empty(),
        "{page}: the markup contains comments: {:?}",
        document.comments
    );

    for element in document.root.descendants() {
        let name = element.name.as_str();
        assert!(
            KNOWN_ELEMENTS.contains(&name) || KNOWN_FORM_ELEMENTS.contains(&name),
            "{page}: unexpected element <{name}> with {:?}",
            element.attributes
        );
        for (attribute, value) in &element.attributes {
            assert!(
                !attribute.starts_with("on"),
                "{page}: <{name}> has an event handler {attribute}={value:?}"
            );
            assert!(
                !["style", "srcdoc", "formaction"].contains(&attribute.as_str()),
                "{page}: <{name}> has {attribute}={value:?}"
            );
            if ["href", "src", "action", "xlink:href"].contains(&attribute.as_str()) {
                let local = (value.starts_with('/') && !value.starts_with("//")) || value.starts_with('#');
                assert!(local, "{page}: <{name} {attribute}={value:?}> leads off this server");
            }
        }
        if name == "script" {
            audit_script(page, element);
        }
    }
    document
}

/// A page may have only the live page's two scripts: the JSON settings,
/// which must hold no `<` and no line separator, and `/static/live.js`.
fn audit_script(page: &str, script: &Element) {
    match (script.attribute("type"), script.attribute("src")) {
        (Some("application/json"), None) => {
            let text = script.text();
            assert!(!text.contains('<'), "{page}: JSON in <script> contains '<': {text}");
            for separator in ['\u{2028}', '\u{2029}'] {
                assert!(
                    !text.contains(separator),
                    "{page}: JSON in <script> contains U+{:04X} unescaped",
                    separator as u32
                );
            }
        }
        (None, Some("/static/live.js")) => {
            assert!(script.text().is_empty(), "{page}: live.js's <script> has content");
        }
        other => panic!("{page}: unexpected <script> with type and src {other:?}"),
    }
}

/// Elements that never have content or an end tag.
const VOID_ELEMENTS: [&str; 8] = ["meta", "link", "input", "br", "img", "hr", "source", "wbr"];

/// An element with its attributes, values decoded, and its content.
#[derive(Debug, Default)]
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<Node>,
}

#[derive(Debug)]
enum Node {
    Element(Element),
    /// Text with character references decoded; the raw content of a
    /// `<script>` or `<style>`.
    Text(String),
}

impl Element {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(attribute, _)| attribute == name)
            .map(|(_, value)| value.as_str())
    }

    /// Returns every element below this one, in document order.
    fn descendants(&self) -> Vec<&Element> {
        let mut found = Vec::new();
        for child in &self.children {
            if let Node::Element(element) = child {
                found.push(element);
                found.extend(element.descendants());
            }
        }
        found
    }

    /// Returns the descendants named `name`.
    fn elements(&self, name: &str) -> Vec<&Element> {
        self.descendants()
            .into_iter()
            .filter(|element| element.name == name)
            .collect()
    }

    /// Returns the text of every descendant, concatenated.
    fn text(&self) -> String {
        let mut text = String::new();
        for child in &self.children {
            match child {
                Node::Text(part) => text.push_str(part),
                Node::Element(element) => text.push_str(&element.text()),
            }
        }
        text
    }
}

/// A parsed page.
struct Document {
    root: Element,
    comments: Vec<String>,
}

impl Document {
    fn has_id(&self, id: &str) -> bool {
        self.root
            .descendants()
            .iter()
            .any(|element| element.attribute("id") == Some(id))
    }

    /// Returns the one element with `id`, and fails when there is none or
    /// more than one.
    fn by_id(&self, id: &str) -> &Element {
        let matches: Vec<&Element> = self
            .root
            .descendants()
            .into_iter()
            .filter(|element| element.attribute("id") == Some(id))
            .collect();
        assert_eq!(matches.len(), 1, "elements with id {id:?}");
        matches[0]
    }

    /// Parses the content of the `<script type="application/json">` with `id`.
    fn json_script(&self, id: &str) -> Value {
        let script = self.by_id(id);
        assert_eq!(script.name, "script", "#{id}");
        assert_eq!(script.attribute("type"), Some("application/json"), "#{id}");
        let text = script.text();
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("#{id} is not JSON ({error}): {text}"))
    }
}

/// Parses a page into elements, text and comments. It follows the HTML
/// tokenizer for tags, quoted and unquoted attributes, comments and the raw
/// text of `<script>` and `<style>`, and it treats `<title>` as ordinary
/// markup, which is stricter than a browser. It requires every element but
/// the void ones and `/>`-closed SVG ones to be closed explicitly, which the
/// templates do.
fn parse_html(html: &str) -> Result<Document, String> {
    let mut stack = vec![Element {
        name: "#document".to_string(),
        ..Element::default()
    }];
    let mut comments = Vec::new();
    let mut at = 0;

    while at < html.len() {
        let rest = &html[at..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            let end = comment.find("-->").ok_or("a comment is never closed")?;
            comments.push(comment[..end].to_string());
            at += 4 + end + 3;
        } else if rest.starts_with("<!") {
            at += rest.find('>').ok_or("a <! declaration is never closed")? + 1;
        } else if let Some(end_tag) = rest.strip_prefix("</") {
            let end = end_tag.find('>').ok_or("an end tag is never closed")?;
            let name = end_tag[..end].trim().to_ascii_lowercase();
            close(&mut stack, &name)?;
            at += 2 + end + 1;
        } else if rest.starts_with('<') && rest[1..].starts_with(|c: char| c.is_ascii_alphabetic()) {
            let (element, self_closing, length) = start_tag(rest)?;
            at += length;
            if element.name == "script" || element.name == "style" {
                let closing = format!("</{}", element.name);
                let end = html[at..]
                    .to_ascii_lowercase()
                    .find(&closing)
                    .ok_or_else(|| format!("<{}> is never closed", element.name))?;
                let mut element = element;
                let raw = &html[at..at + end];
                if !raw.is_empty() {
                    element.children.push(Node::Text(raw.to_string()));
                }
                at += end + html[at + end..].find('>').ok_or("an end tag is never closed")? + 1;
                append(&mut stack, Node::Element(element));
            } else if self_closing || VOID_ELEMENTS.contains(&element.name.as_str()) {
                append(&mut stack, Node::Element(element));
            } else {
                stack.push(element);
            }
        } else {
            // Text runs to the next `<` that starts markup; a `<` that does
            // not is text, as in the HTML tokenizer.
            let first = rest.chars().next().map_or(1, char::len_utf8);
            let end = rest[first..].find('<').map_or(rest.len(), |index| index + first);
            append(&mut stack, Node::Text(decode(&rest[..end])?));
            at += end;
        }
    }

    if stack.len() != 1 {
        let open: Vec<&str> = stack[1..].iter().map(|element| element.name.as_str()).collect();
        return Err(format!("elements never closed: {open:?}"));
    }
    Ok(Document {
        root: stack.pop().unwrap(),
        comments,
    })
}

fn append(stack: &mut [Element], node: Node) {
    stack
        .last_mut()
        .expect("the document is always open")
        .children
        .push(node);
}

/// Closes the innermost open element named `name` and everything opened
/// inside it.
fn close(stack: &mut Vec<Element>, name: &str) -> Result<(), String> {
    let position = stack
        .iter()
        .rposition(|element| element.name == name)
        .filter(|&position| position > 0)
        .ok_or_else(|| format!("</{name}> closes no open element"))?;
    while stack.len() > position {
        let element = stack.pop().unwrap();
        append(stack, Node::Element(element));
    }
    Ok(())
}

/// Reads a start tag at the start of `markup`. Returns the element, whether
/// it ended with `/>`, and the tag's length in bytes.
fn start_tag(markup: &str) -> Result<(Element, bool, usize), String> {
    let is_name_end = |c: char| c.is_ascii_whitespace() || c == '/' || c == '>';
    let name_end = markup[1..].find(is_name_end).ok_or("a start tag is never closed")? + 1;
    let mut element = Element {
        name: markup[1..name_end].to_ascii_lowercase(),
        ..Element::default()
    };
    let mut at = name_end;
    loop {
        let rest = &markup[at..];
        let skipped = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_whitespace()).len();
        at += skipped;
        let rest = &markup[at..];
        if rest.is_empty() {
            return Err(format!("<{}> is never closed", element.name));
        }
        if rest.starts_with("/>") {
            return Ok((element, true, at + 2));
        }
        if let Some(stripped) = rest.strip_prefix('/') {
            at += rest.len() - stripped.len();
            continue;
        }
        if rest.starts_with('>') {
            return Ok((element, false, at + 1));
        }

        // An attribute name runs to whitespace, `/`, `>` or `=`; its first
        // character may be `=`.
        let first = rest.chars().next().map_or(1, char::len_utf8);
        let name_length = rest[first..]
            .find(|c: char| is_name_end(c) || c == '=')
            .map_or(rest.len(), |index| index + first);
        let attribute = rest[..name_length].to_ascii_lowercase();
        at += name_length;
        let rest = &markup[at..];
        let after_space = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let value = if let Some(value) = after_space.strip_prefix('=') {
            at += rest.len() - value.len();
            let value_start = value.trim_start_matches(|c: char| c.is_ascii_whitespace());
            at += value.len() - value_start.len();
            let (raw, length) = match value_start.chars().next() {
                Some(quote @ ('"' | '\'')) => {
                    let end = value_start[1..]
                        .find(quote)
                        .ok_or_else(|| format!("the value of {attribute} is never closed"))?;
                    (&value_start[1..end + 1], end + 2)
                }
                _ => {
                    let end = value_start
                        .find(|c: char| c.is_ascii_whitespace() || c == '>')
                        .unwrap_or(value_start.len());
                    (&value_start[..end], end)
                }
            };
            at += length;
            decode(raw)?
        } else {
            String::new()
        };
        element.attributes.push((attribute, value));
    }
}

/// Decodes the character references the templates and the SVG writers
/// produce. An unknown named reference is an error, so a test notices
/// markup this decoder would misread.
fn decode(text: &str) -> Result<String, String> {
    let mut decoded = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(position) = rest.find('&') {
        decoded.push_str(&rest[..position]);
        rest = &rest[position..];
        let reference_end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map(|index| index + 1)
            .filter(|&end| rest[end..].starts_with(';') && end > 1);
        let Some(end) = reference_end else {
            // A bare `&` is text.
            decoded.push('&');
            rest = &rest[1..];
            continue;
        };
        let reference = &rest[1..end];
        let character = match reference {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = reference.strip_prefix("#x").or(reference.strip_prefix("#X")) {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(decimal) = reference.strip_prefix('#') {
                    decimal.parse().ok()
                } else {
                    return Err(format!("unknown character reference &{reference};"));
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("invalid character reference &{reference};"))?
            }
        };
        decoded.push(character);
        rest = &rest[end + 1..];
    }
    decoded.push_str(rest);
    Ok(decoded)
}

#[test]
fn parser_finds_injected_markup() {
    let html = r#"<p title="a&#34;b" data-x='c'>x &lt;y&gt; &amp; z<img src=x onerror=alert(1)></p><!--c-->"#;
    let document = parse_html(html).unwrap();
    let paragraph = &document.root.elements("p")[0];
    assert_eq!(paragraph.attribute("title"), Some("a\"b"));
    assert_eq!(paragraph.attribute("data-x"), Some("c"));
    assert_eq!(paragraph.text(), "x <y> & z");
    let image = &document.root.elements("img")[0];
    assert_eq!(image.attribute("onerror"), Some("alert(1)"));
    assert_eq!(document.comments, ["c"]);
}

#[test]
fn parser_reads_script_content_raw() {
    let html = r#"<head><script type="application/json" id="c">{"a":"&amp;</b>"}</script></head>"#;
    let document = parse_html(html).unwrap();
    assert_eq!(document.by_id("c").text(), r#"{"a":"&amp;</b>"}"#);
    assert!(document.root.elements("b").is_empty(), "script content is not markup");
}

#[test]
fn parser_sees_attribute_breakout() {
    // What a template that forgot to escape an attribute would write.
    let html = r#"<li data-session-id=""><img src=x onerror=alert(1)>"></li>"#;
    let document = parse_html(html).unwrap();
    assert_eq!(document.root.elements("li")[0].attribute("data-session-id"), Some(""));
    assert_eq!(document.root.elements("img").len(), 1);
}
