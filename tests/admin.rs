//! The operator view: disabled without a secret, HTTP Basic with the admin
//! secret, the list of live nights, minting links, and cross-site posts.

mod common;

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{TestServer, browser_like_client, inference_body, session_body};
use reqwest::StatusCode;

/// The admin secret of the test servers: 32 characters, the minimum.
const ADMIN_SECRET: &str = "test-admin-secret-of-32-chars-00";

async fn admin_server() -> TestServer {
    TestServer::start_configured(|config| config.access.admin_secret = Some(ADMIN_SECRET.to_string())).await
}

/// Returns an `Authorization` value for HTTP Basic with `password`.
fn basic(password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("operator:{password}")))
}

async fn get_admin(server: &TestServer, authorization: Option<&str>) -> reqwest::Response {
    let mut request = browser_like_client().get(server.url("/admin"));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.expect("GET /admin failed")
}

/// Posts the minting form with the admin secret and the extra `headers`.
async fn post_mint(server: &TestServer, form: &[(&str, &str)], headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = browser_like_client()
        .post(server.url("/admin/links"))
        .header("authorization", basic(ADMIN_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(form));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("POST /admin/links failed")
}

/// Encodes form fields as `application/x-www-form-urlencoded`.
fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| format!("{name}={}", common::query_value(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Returns the `Origin` of the server's own pages.
fn own_origin(server: &TestServer) -> String {
    format!("http://{}", server.server.addr)
}

/// Reverses the HTML escaping of an attribute value.
fn unescape(text: &str) -> String {
    text.replace("&#38;", "&")
        .replace("&amp;", "&")
        .replace("&#47;", "/")
        .replace("&#x2f;", "/")
        .replace("&#61;", "=")
}

/// Returns the `href` of the minted link in an admin page.
fn minted_href(html: &str) -> String {
    let start = html
        .find(r#"id="minted-link" href=""#)
        .unwrap_or_else(|| panic!("no minted link in {html}"))
        + r#"id="minted-link" href=""#.len();
    let end = start + html[start..].find('"').unwrap();
    unescape(&html[start..end])
}

#[tokio::test]
async fn admin_is_absent_without_secret() {
    let server = TestServer::start().await;
    assert_eq!(get_admin(&server, None).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        get_admin(&server, Some(&basic("anything"))).await.status(),
        StatusCode::NOT_FOUND
    );
    let post = post_mint(
        &server,
        &[("user", "alice"), ("ttl", "1h")],
        &[("origin", &own_origin(&server))],
    )
    .await;
    assert_eq!(post.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn admin_needs_the_secret() {
    let server = admin_server().await;
    let wrong_secrets = [
        None,
        Some(basic("wrong")),
        Some(basic(&ADMIN_SECRET[..31])),
        Some(basic(&format!("{ADMIN_SECRET}x"))),
        Some("Basic not-base64!".to_string()),
        Some(format!("Bearer {ADMIN_SECRET}")),
    ];
    for authorization in &wrong_secrets {
        let response = get_admin(&server, authorization.as_deref()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{authorization:?}");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
        let body = response.text().await.unwrap();
        assert!(!body.contains(ADMIN_SECRET), "{body}");
    }
    // The minting post is guarded the same way.
    let unauthenticated = browser_like_client()
        .post(server.url("/admin/links"))
        .header("origin", own_origin(&server))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("user", "alice"), ("ttl", "1h")]))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);

    let response = get_admin(&server, Some(&basic(ADMIN_SECRET))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(
        !csp.contains("script-src 'self'"),
        "the operator view runs no script: {csp}"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let html = response.text().await.unwrap();
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("style=\""), "{html}");
    server.stop().await;
}

#[tokio::test]
async fn admin_lists_live_nights() {
    let server = admin_server().await;
    let live = inference_body("night-owl", "owl-tonight", 3, &[0, 1, 2, 3], &[0, 0, 0, 0]);
    assert_eq!(
        server.deliver("night-owl", &live.to_string()).await.status,
        StatusCode::OK
    );
    let done = session_body("early-bird", "bird-done", &[0, 1, 1, 2], &[0, 0, 0, 0]);
    assert_eq!(
        server.deliver("early-bird", &done.to_string()).await.status,
        StatusCode::OK
    );
    let hostile = inference_body("<b>x</b>", "s", 3, &[0, 1, 2, 3], &[0, 0, 0, 0]);
    assert_eq!(
        server.deliver("<b>x</b>", &hostile.to_string()).await.status,
        StatusCode::OK
    );

    let html = get_admin(&server, Some(&basic(ADMIN_SECRET)))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains(r#"data-user-id="night-owl" data-session-id="owl-tonight""#),
        "{html}"
    );
    assert!(!html.contains("early-bird"), "a completed night is not live: {html}");
    assert!(!html.contains("<b>x</b>"), "ids are escaped: {html}");
    assert!(html.contains("&#60;b&#62;x&#60;/b&#62;"), "{html}");
    server.stop().await;
}

#[tokio::test]
async fn admin_mints_working_link() {
    let server = admin_server().await;
    let response = post_mint(
        &server,
        &[("user", "alice/b"), ("ttl", "2h")],
        &[("origin", &own_origin(&server))],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let html = response.text().await.unwrap();
    let link = minted_href(&html);
    let path = link
        .strip_prefix(&own_origin(&server))
        .unwrap_or_else(|| panic!("{link} is not on this server"));
    assert!(path.starts_with("/users/alice%2Fb/live?token=v2.0."), "{path}");
    let page = server.get(path).await;
    assert_eq!(page.status(), StatusCode::OK, "the minted link opens the live page");

    // `Sec-Fetch-Site: same-origin` stands in for a missing Origin.
    let response = post_mint(
        &server,
        &[("user", "bob"), ("ttl", "1d")],
        &[("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    // Unusable input is named and the form keeps it.
    for (user, ttl, expected) in [
        ("", "1h", "user: must not be empty"),
        ("..", "1h", "user"),
        ("alice", "5y", "ttl"),
        ("alice", "soon", "ttl"),
    ] {
        let response = post_mint(
            &server,
            &[("user", user), ("ttl", ttl)],
            &[("origin", &own_origin(&server))],
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{user:?} {ttl:?}");
        let html = response.text().await.unwrap();
        assert!(html.contains(r#"id="admin-error""#), "{html}");
        assert!(html.contains(expected), "{expected}: {html}");
        assert!(!html.contains(r#"id="minted-link""#), "{html}");
    }
    server.stop().await;
}

#[tokio::test]
async fn cross_site_mint_is_refused() {
    let server = admin_server().await;
    let form = [("user", "alice"), ("ttl", "1h")];
    for headers in [
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![],
    ] {
        let response = post_mint(&server, &form, &headers).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{headers:?}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("token="), "{headers:?}: {body}");
    }
    server.stop().await;
}

#[test]
fn short_admin_secret_stops_serve() {
    let output = Command::new(env!("CARGO_BIN_EXE_sleep-dashboard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-secret", "too-short"])
        .env("ASLEEP_API_KEY", "k")
        .env("DASHBOARD_SECRET", "s")
        .env_remove("SLEEP_DASHBOARD_ADMIN_SECRET")
        .output()
        .expect("running the sleep-dashboard binary failed");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--admin-secret"), "{stderr}");
    assert!(stderr.contains("too short"), "{stderr}");
    assert!(!stderr.contains("too-short"), "the secret is not repeated: {stderr}");
}
