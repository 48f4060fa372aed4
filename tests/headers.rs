//! Security headers on every kind of response, the content types of static
//! assets, and requests that try to read files outside the static folder.

mod common;

use std::path::{Path, PathBuf};

use common::{API_KEY, TestServer, inference_body, raw_exchange, viewer_token};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// Checks the headers every response must carry, naming `what` on failure.
fn assert_security_headers(what: &str, headers: &HeaderMap) {
    let policy = headers
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no Content-Security-Policy"))
        .to_str()
        .unwrap();
    assert!(policy.contains("frame-ancestors 'none'"), "{what}: {policy}");
    assert!(policy.contains("default-src 'none'"), "{what}: {policy}");
    assert!(!policy.contains("unsafe-inline"), "{what}: {policy}");
    assert!(!policy.contains("unsafe-eval"), "{what}: {policy}");
    // Every source is a keyword such as 'self' or 'none': no host, scheme,
    // wildcard, nonce or hash lets anything else in.
    for directive in policy.split(';') {
        for source in directive.split_whitespace().skip(1) {
            assert!(
                ["'self'", "'none'"].contains(&source),
                "{what}: {source} in {directive:?} admits another origin"
            );
        }
    }
    assert_eq!(
        headers
            .get("x-content-type-options")
            .map(|value| value.to_str().unwrap()),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(
        headers.get("referrer-policy").map(|value| value.to_str().unwrap()),
        Some("no-referrer"),
        "{what}"
    );
}

fn cache_control(headers: &HeaderMap) -> Option<&str> {
    headers.get("cache-control").map(|value| value.to_str().unwrap())
}

#[tokio::test]
async fn every_route_kind_has_security_headers() {
    let server = TestServer::start().await;
    let user = "alice";
    let token = viewer_token(user);
    let body = inference_body(user, "night-1", 9, &[1; 10], &[0; 10]).to_string();
    let answer = server.deliver(user, &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);

    // Path, expected status, and whether the response must not be cached.
    // A page opened with a token may answer by setting a cookie and
    // redirecting to the same address without the token.
    let opened = StatusCode::SEE_OTHER;
    let gets = [
        ("/".to_string(), StatusCode::OK, true),
        (format!("/users/{user}/live?token={token}"), opened, true),
        (format!("/users/{user}?token={token}"), opened, true),
        (format!("/users/{user}/live"), StatusCode::UNAUTHORIZED, true),
        (
            format!("/api/users/{user}/sessions/night-1?token={token}"),
            StatusCode::OK,
            true,
        ),
        (
            format!("/api/users/{user}/sessions/missing?token={token}"),
            StatusCode::NOT_FOUND,
            true,
        ),
        (format!("/users/{user}/nights.csv?token={token}"), opened, true),
        ("/healthz".to_string(), StatusCode::OK, false),
        ("/readyz".to_string(), StatusCode::OK, false),
        ("/metrics".to_string(), StatusCode::OK, false),
        ("/nowhere".to_string(), StatusCode::NOT_FOUND, false),
        ("/static/live.js".to_string(), StatusCode::OK, false),
        ("/static/style.css".to_string(), StatusCode::OK, false),
        ("/static/missing.js".to_string(), StatusCode::NOT_FOUND, false),
        (format!("/ws?user={user}"), StatusCode::UNAUTHORIZED, false),
        ("/asleep-webhook".to_string(), StatusCode::METHOD_NOT_ALLOWED, false),
    ];
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (path, status, no_store) in gets {
        let response = client.get(server.url(&path)).send().await.unwrap();
        if status == opened {
            assert!(
                [StatusCode::OK, opened].contains(&response.status()),
                "GET {path}: {}",
                response.status()
            );
        } else {
            assert_eq!(response.status(), status, "GET {path}");
        }
        assert_security_headers(&format!("GET {path}"), response.headers());
        if no_store {
            assert_eq!(cache_control(response.headers()), Some("no-store"), "GET {path}");
        }
    }

    // The webhook's answers: accepted, duplicate, invalid, unauthorized.
    let posts = [
        (API_KEY, body.clone(), StatusCode::OK),
        (API_KEY, "{".to_string(), StatusCode::BAD_REQUEST),
        ("wrong", body.clone(), StatusCode::UNAUTHORIZED),
    ];
    for (key, body, status) in posts {
        let response = server
            .client
            .post(server.url("/asleep-webhook"))
            .header("x-api-key", key)
            .header("x-user-id", user)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "POST /asleep-webhook");
        assert_security_headers(&format!("POST /asleep-webhook ({status})"), response.headers());
    }
    server.stop().await;
}

#[tokio::test]
async fn static_files_may_be_cached() {
    let server = TestServer::start().await;
    let response = server.get("/static/live.js").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_ne!(cache_control(response.headers()), Some("no-store"));
    server.stop().await;
}

/// A temporary folder with `static/` holding one asset of each type, and a
/// file beside `static/` that must never be served.
struct StaticFolder {
    root: tempfile::TempDir,
}

/// Content of the file outside `static/`.
const OUTSIDE: &str = "outside-the-static-folder";

impl StaticFolder {
    fn create() -> Self {
        let root = tempfile::tempdir().unwrap();
        let assets = root.path().join("static");
        std::fs::create_dir(&assets).unwrap();
        std::fs::write(assets.join("app.js"), "document.title = 'x';\n").unwrap();
        std::fs::write(assets.join("style.css"), "body { margin: 0 }\n").unwrap();
        std::fs::write(
            assets.join("icon.svg"),
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1\" height=\"1\"/>\n",
        )
        .unwrap();
        std::fs::write(assets.join("data.json"), "{}\n").unwrap();
        std::fs::write(root.path().join("secret.txt"), OUTSIDE).unwrap();
        Self { root }
    }

    fn assets(&self) -> PathBuf {
        self.root.path().join("static")
    }

    fn secret(&self) -> PathBuf {
        self.root.path().join("secret.txt")
    }
}

async fn start_serving(folder: &Path) -> TestServer {
    let folder = folder.to_path_buf();
    TestServer::start_configured(move |config| config.static_dir = folder).await
}

#[tokio::test]
async fn assets_have_correct_types() {
    let folder = StaticFolder::create();
    let server = start_serving(&folder.assets()).await;
    for (file, expected) in [
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
        ("data.json", "application/json"),
    ] {
        let response = server.get(&format!("/static/{file}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{file}");
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        let essence = content_type.split(';').next().unwrap().trim();
        assert_eq!(essence, expected, "{file}: {content_type}");
        assert_security_headers(file, response.headers());
    }
    server.stop().await;
}

#[tokio::test]
async fn bundled_assets_have_correct_types() {
    let server = TestServer::start().await;
    for (file, expected) in [
        ("live.js", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let response = server.get(&format!("/static/{file}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{file}");
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(content_type.split(';').next().unwrap().trim(), expected, "{file}");
    }
    server.stop().await;
}

#[tokio::test]
async fn static_paths_cannot_escape() {
    let folder = StaticFolder::create();
    let server = start_serving(&folder.assets()).await;
    let secret = folder.secret();
    let absolute = secret.to_str().unwrap();

    let paths = [
        "/static/../secret.txt".to_string(),
        "/static/./../secret.txt".to_string(),
        "/static/%2e%2e/secret.txt".to_string(),
        "/static/%2E%2E/secret.txt".to_string(),
        "/static/.%2e/secret.txt".to_string(),
        "/static/..%2fsecret.txt".to_string(),
        "/static/..%2Fsecret.txt".to_string(),
        "/static/%2e%2e%2fsecret.txt".to_string(),
        "/static/..%5csecret.txt".to_string(),
        "/static/..\\secret.txt".to_string(),
        "/static/app.js/../../secret.txt".to_string(),
        "/static/%252e%252e/secret.txt".to_string(),
        format!("/static/{absolute}"),
        format!("/static//{absolute}"),
        format!("/static/{}", absolute.replace('/', "%2f")),
        "/static//etc/passwd".to_string(),
        "/static/%2fetc%2fpasswd".to_string(),
        "/static/..%00/secret.txt".to_string(),
    ];
    for path in &paths {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let (status, response) = raw_exchange(server.server.addr, &request).await;
        assert_ne!(status, 200, "GET {path} was served:\n{response}");
        assert!(!response.contains(OUTSIDE), "GET {path} leaked the file:\n{response}");
        assert!(
            !response.contains("root:"),
            "GET {path} leaked /etc/passwd:\n{response}"
        );
    }

    // The same assets stay reachable.
    let (status, _) = raw_exchange(
        server.server.addr,
        "GET /static/app.js HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    server.stop().await;
}

/// A symbolic link inside the static folder is followed, because tower-http's
/// `ServeDir` opens files with the operating system's default, which follows
/// links. A request path cannot create a link or name a file outside the
/// folder, so only whoever can write to the folder can publish a file
/// through a link, and packagers use links for shared assets. This test
/// pins that behaviour so that a change to it is noticed and documented.
#[cfg(unix)]
#[tokio::test]
async fn operator_symlink_is_followed() {
    let folder = StaticFolder::create();
    std::os::unix::fs::symlink(folder.secret(), folder.assets().join("linked.txt")).unwrap();
    let server = start_serving(&folder.assets()).await;

    let response = server.get("/static/linked.txt").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_security_headers("a linked file", response.headers());
    assert_eq!(response.text().await.unwrap(), OUTSIDE);
    server.stop().await;
}
