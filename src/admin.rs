//! The operator view at `/admin`: the users with a live night, and a form
//! that mints viewer links.
//!
//! It exists only when `--admin-secret` is set; otherwise `/admin` is 404.
//! Requests authenticate with HTTP Basic, any user name and the secret as
//! password. Browsers keep Basic credentials and send them with every
//! request to this server, including form posts that another site's page
//! starts, so the minting post must also come from a page of this server:
//! its `Origin` must be one of the server's own (see
//! [`AccessConfig::check_origin`]), or, without `Origin`, `Sec-Fetch-Site`
//! must be `same-origin`. A post with neither header is rejected.

use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::{AccessConfig, MintError, Origin, ViewerLink, forwarded_https, mint_link, secret_matches};
use crate::error::AppError;
use crate::pages::PageError;

/// Shortest admin secret `serve` accepts: 32 characters, as many as 16
/// random bytes in hex.
pub const MIN_SECRET_CHARS: usize = 32;

/// How far back a night without a final report counts as live: the
/// 48 hours a night may last at most.
const LIVE_WINDOW: Duration = Duration::from_secs(48 * 3600);

/// Validity the form offers by default, the same as `sleep-dashboard link`.
const DEFAULT_TTL: &str = "7d";

/// Path the minting form posts to.
const MINT_PATH: &str = "/admin/links";

/// The operator view's pages allow no script at all, and styles and images
/// only from `/static`; forms post only to this server.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The realm browsers show in their password prompt.
const BASIC_CHALLENGE: &str = r#"Basic realm="sleep-dashboard admin", charset="UTF-8""#;

/// Checks the admin secret's length, and names the flag when it is too short.
pub fn check_secret(secret: &str) -> Result<(), String> {
    let chars = secret.chars().count();
    if chars < MIN_SECRET_CHARS {
        return Err(format!(
            "--admin-secret (SLEEP_DASHBOARD_ADMIN_SECRET) is too short: {chars} characters, at least \
             {MIN_SECRET_CHARS} needed; generate one with `openssl rand -hex 32`"
        ));
    }
    Ok(())
}

/// Builds the routes of the operator view, or none when no admin secret is
/// set, so that `/admin` falls through to 404.
pub fn routes(state: &AppState) -> Router<AppState> {
    if state.access.admin_secret.is_none() {
        return Router::new();
    }
    Router::new().route("/admin", get(page)).route(MINT_PATH, post(mint))
}

/// The minting form's fields.
#[derive(Debug, Deserialize)]
pub struct MintForm {
    user: String,
    ttl: String,
}

/// One live night in the list.
struct LiveNight {
    user_id: String,
    session_id: String,
    first_result: String,
    latest_result: String,
    /// Viewer sockets open for the user now.
    viewers: usize,
}

/// A link minted by the last post.
struct MintedLink {
    user_id: String,
    url: String,
    expires: String,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    nights: Vec<LiveNight>,
    window_hours: u64,
    mint_action: &'static str,
    default_ttl: &'static str,
    minted: Option<MintedLink>,
    error: Option<String>,
    /// The form's values, kept after an error so they can be corrected.
    form_user: String,
    form_ttl: String,
}

/// Serves `GET /admin`: the live nights and the minting form.
async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(rejection) = reject_unauthenticated(&state, &headers) {
        return rejection;
    }
    render(
        &state,
        StatusCode::OK,
        None,
        None,
        (String::new(), DEFAULT_TTL.to_string()),
    )
    .await
}

/// Serves `POST /admin/links`: mints a viewer link for the form's user and
/// TTL and shows it above the list.
async fn mint(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<MintForm>, FormRejection>,
) -> Response {
    if let Some(rejection) = reject_unauthenticated(&state, &headers) {
        return rejection;
    }
    if let Err(message) = check_same_origin(&state.access, &headers) {
        tracing::warn!(error = %message, "admin form post rejected");
        return (StatusCode::FORBIDDEN, message).into_response();
    }
    let Form(form) = match form {
        Ok(form) => form,
        Err(rejection) => {
            let message = format!("the form could not be read: {}", rejection.body_text());
            return render(&state, StatusCode::BAD_REQUEST, None, Some(message), Default::default()).await;
        }
    };
    let values = (form.user.clone(), form.ttl.clone());

    let ttl = match humantime::parse_duration(form.ttl.trim()) {
        Ok(ttl) => ttl,
        Err(error) => {
            let message = format!(
                "ttl: {:?} is not a duration ({error}); give one such as 12h or 7d",
                form.ttl
            );
            return render(&state, StatusCode::BAD_REQUEST, None, Some(message), values).await;
        }
    };
    let base_url = base_url(&state.access, &headers);
    match mint_link(&state.store, &state.viewer_keys, &form.user, ttl, &base_url).await {
        Ok(link) => {
            tracing::info!(
                user_id = form.user,
                expires_at = link.expires_at,
                "viewer link minted in /admin"
            );
            let minted = minted(&form.user, link);
            render(
                &state,
                StatusCode::OK,
                Some(minted),
                None,
                (String::new(), DEFAULT_TTL.to_string()),
            )
            .await
        }
        Err(MintError::Invalid(message)) => render(&state, StatusCode::BAD_REQUEST, None, Some(message), values).await,
        Err(MintError::Storage(error)) => PageError(AppError::Unavailable(error)).into_response(),
    }
}

/// Renders the page with the live nights, or the error page when they
/// cannot be read.
async fn render(
    state: &AppState,
    status: StatusCode,
    minted: Option<MintedLink>,
    error: Option<String>,
    (form_user, form_ttl): (String, String),
) -> Response {
    let since = Utc::now() - chrono::Duration::from_std(LIVE_WINDOW).unwrap_or_default();
    let sessions = match state.store.open_sessions(since.timestamp_millis()).await {
        Ok(sessions) => sessions,
        Err(error) => return PageError(AppError::Unavailable(error)).into_response(),
    };
    let nights = sessions
        .into_iter()
        .map(|session| LiveNight {
            viewers: state.viewer_slots.taken(&session.user_id).1,
            first_result: format_utc(session.first_seen_ms),
            latest_result: format_utc(session.last_seen_ms),
            user_id: session.user_id,
            session_id: session.session_id,
        })
        .collect();
    let page = AdminPage {
        nights,
        window_hours: LIVE_WINDOW.as_secs() / 3600,
        mint_action: MINT_PATH,
        default_ttl: DEFAULT_TTL,
        minted,
        error,
        form_user,
        form_ttl,
    };
    let body = match page.render() {
        Ok(body) => body,
        Err(error) => {
            return PageError(AppError::Internal(format!("rendering the admin page failed: {error}"))).into_response();
        }
    };
    let mut response = (status, Html(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    // The page can contain a fresh viewer link.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn minted(user_id: &str, link: ViewerLink) -> MintedLink {
    MintedLink {
        user_id: user_id.to_string(),
        url: link.url,
        expires: format_utc(link.expires_at * 1000),
    }
}

/// Formats Unix milliseconds as a UTC date and time.
fn format_utc(milliseconds: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(milliseconds)
        .map(|time| time.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Returns the address viewers reach this server at: `--public-url`'s
/// origin, or else the origin the request came to.
fn base_url(access: &AccessConfig, headers: &HeaderMap) -> String {
    if let Some(origin) = &access.public_origin {
        return origin.as_str().to_string();
    }
    let scheme = if forwarded_https(headers) { "https" } else { "http" };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    Origin::of_request(scheme, host).as_str().to_string()
}

/// Checks the request's Basic credentials against the admin secret, and
/// returns the 401 challenge when they are missing or wrong, or `None` when
/// they match. Wrong ones are logged, at most once per interval for each
/// kind of failure.
fn reject_unauthenticated(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(secret) = state.access.admin_secret.as_deref() else {
        return Some(PageError(AppError::NotFound("page".to_string())).into_response());
    };
    let failure = match basic_password(headers) {
        Ok(password) if secret_matches(&password, secret) => return None,
        Ok(_) => Some("wrong password"),
        Err(BasicError::Missing) => None,
        Err(BasicError::Malformed) => Some("malformed Authorization header"),
    };
    if let Some(reason) = failure
        && let Some(suppressed) = crate::warnings::admit("admin login failed", reason)
    {
        tracing::warn!(reason, suppressed, "admin login failed");
    }
    let mut response = (
        StatusCode::UNAUTHORIZED,
        "The operator view needs the admin secret as the password of HTTP Basic authentication, with any user name.",
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(BASIC_CHALLENGE));
    Some(response)
}

/// Reason no Basic password could be read.
enum BasicError {
    /// No `Authorization` header: a browser's first request, before its prompt.
    Missing,
    /// An `Authorization` header that is not valid Basic credentials.
    Malformed,
}

/// Returns the password of the request's Basic credentials: the part after
/// the first `:` of the decoded `user:password`.
fn basic_password(headers: &HeaderMap) -> Result<Vec<u8>, BasicError> {
    let value = headers.get(header::AUTHORIZATION).ok_or(BasicError::Missing)?;
    let value = value.to_str().map_err(|_| BasicError::Malformed)?;
    let (scheme, encoded) = value.trim().split_once(' ').ok_or(BasicError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(BasicError::Malformed);
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| BasicError::Malformed)?;
    let colon = decoded
        .iter()
        .position(|byte| *byte == b':')
        .ok_or(BasicError::Malformed)?;
    Ok(decoded[colon + 1..].to_vec())
}

/// Checks that a form post comes from a page of this server: by `Origin`,
/// or without it by `Sec-Fetch-Site: same-origin`.
fn check_same_origin(access: &AccessConfig, headers: &HeaderMap) -> Result<(), String> {
    match access.check_origin(headers) {
        Ok(Some(_)) => Ok(()),
        Err(error) => Err(error.to_string()),
        Ok(None) => {
            let site = headers.get("sec-fetch-site").and_then(|value| value.to_str().ok());
            match site {
                Some("same-origin") => Ok(()),
                Some(other) => Err(format!(
                    "Sec-Fetch-Site is {other:?}: the form must be posted from a page of this server"
                )),
                None => Err(
                    "the post has no Origin header: send the form from the /admin page, or send Origin \
                             with this server's address"
                        .to_string(),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn short_secret_is_refused() {
        let error = check_secret("short").unwrap_err();
        assert!(error.contains("--admin-secret"), "{error}");
        assert!(error.contains("5 characters"), "{error}");
        assert!(check_secret(&"x".repeat(MIN_SECRET_CHARS)).is_ok());
    }

    #[test]
    fn basic_password_takes_text_after_first_colon() {
        let encoded = STANDARD.encode("operator:pass:word");
        let password = basic_password(&headers(&[("authorization", &format!("Basic {encoded}"))]));
        assert_eq!(password.ok(), Some(b"pass:word".to_vec()));
        assert!(matches!(basic_password(&HeaderMap::new()), Err(BasicError::Missing)));
        for value in [
            "Bearer abc",
            "Basic !!!",
            "Basic",
            &format!("Basic {}", STANDARD.encode("nocolon")),
        ] {
            assert!(
                matches!(
                    basic_password(&headers(&[("authorization", value)])),
                    Err(BasicError::Malformed)
                ),
                "{value}"
            );
        }
    }

    #[test]
    fn form_post_must_be_same_origin() {
        let access = AccessConfig::default();
        let own = [("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")];
        assert!(check_same_origin(&access, &headers(&own)).is_ok());
        let foreign = [("host", "127.0.0.1:8080"), ("origin", "https://evil.example")];
        assert!(check_same_origin(&access, &headers(&foreign)).is_err());
        let fetch_same = [("host", "127.0.0.1:8080"), ("sec-fetch-site", "same-origin")];
        assert!(check_same_origin(&access, &headers(&fetch_same)).is_ok());
        let fetch_cross = [("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")];
        assert!(check_same_origin(&access, &headers(&fetch_cross)).is_err());
        assert!(check_same_origin(&access, &headers(&[("host", "127.0.0.1:8080")])).is_err());
    }
}
