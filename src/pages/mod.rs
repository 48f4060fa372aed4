//! Pages and the JSON API: the live page, a session's report, a user's
//! history, and the same session data as JSON.
//!
//! Every route but `/` needs a viewer token for the user in the path. A link
//! passes it as `?token=`; the pages and downloads exchange a valid one for
//! a cookie and redirect to the same address without it (see
//! [`exchange_token`]), so tokens do not stay in history, logs or
//! `Referer` headers. The JSON API takes `?token=` without a redirect, for
//! scripts. The ids in the path and the token are checked before anything is
//! looked up, so a request without a valid token learns nothing, not even
//! whether a user or session exists. Links between pages are plain paths.

mod api;
mod error;
mod export;
mod history;
mod live;
mod session;

use askama::Template;
use axum::Router;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequestParts, Query, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use percent_encoding::percent_decode_str;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::app::AppState;
use crate::auth::{TokenSource, cookie_name, cookie_value, viewer_cookie};
use crate::payload::check_id;

pub use error::PageError;
pub use export::{epochs_csv_path, night_json_path, nights_csv_path};
pub use session::{SessionDocument, render_report_page};

/// Scripts and styles come only from `/static`, never inline, and the
/// socket and the JSON API are same-origin. Browsers that implement CSP
/// level 3 let `connect-src 'self'` cover `ws:` and `wss:` on the same host.
/// Forms may submit only to this server: the history page's period form.
/// The router sets it on every response that does not set its own.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Builds the routes of this module.
pub fn routes(state: &AppState) -> Router<AppState> {
    // The pages and downloads that people open from links, where a token in
    // the address is swapped for a cookie.
    let linked = Router::new()
        .route("/users/{user_id}", get(history::page))
        .route("/users/{user_id}/nights.csv", get(export::nights_csv))
        .route("/users/{user_id}/live", get(live::page))
        .route("/users/{user_id}/sessions/{session_id}", get(session::page))
        .route(
            "/users/{user_id}/sessions/{session_id}/epochs.csv",
            get(export::epochs_csv),
        )
        .route(
            "/users/{user_id}/sessions/{session_id}/night.json",
            get(export::night_json),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), exchange_token));
    Router::new()
        .route("/", get(home))
        .merge(linked)
        .route("/api/users/{user_id}/sessions/{session_id}", get(api::session))
        // Pages and API responses contain health data, so no cache may keep
        // them. The security headers every
        // response carries are set in `app::router`.
        .layer(header_layer(header::CACHE_CONTROL, "no-store"))
}

fn header_layer(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

/// The viewer token a request presents: the query's `token`, or else the
/// cookie of the user it asks for. Extraction never fails: a missing or
/// unreadable query counts as no token, which authorization rejects. When
/// the query names `token` more than once the first one counts.
pub struct ViewerToken {
    query: Option<String>,
    headers: HeaderMap,
}

impl ViewerToken {
    /// Returns the token presented for `user_id` and where it came from.
    /// A token in the query wins over a cookie, so a new link replaces an
    /// older cookie.
    pub fn for_user(&self, user_id: &str) -> Option<(&str, TokenSource)> {
        if let Some(token) = &self.query {
            return Some((token, TokenSource::Query));
        }
        cookie_value(&self.headers, &cookie_name(user_id)).map(|token| (token, TokenSource::Cookie))
    }

    /// Returns the token presented for `user_id`, from the query or a cookie.
    pub fn token(&self, user_id: &str) -> Option<&str> {
        self.for_user(user_id).map(|(token, _)| token)
    }
}

/// Returns the query's first `token` value, if any.
fn query_token(uri: &Uri) -> Option<String> {
    let pairs = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(pairs)| pairs)
        .unwrap_or_default();
    pairs
        .into_iter()
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value)
}

impl<S: Send + Sync> FromRequestParts<S> for ViewerToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut headers = HeaderMap::new();
        for value in parts.headers.get_all(header::COOKIE) {
            headers.append(header::COOKIE, value.clone());
        }
        Ok(ViewerToken {
            query: query_token(&parts.uri),
            headers,
        })
    }
}

/// Exchanges a valid `?token=` for a cookie: responds `303 See Other` to the
/// same address without `token`, other query parameters kept as they were,
/// with a `Set-Cookie` that holds the token until it expires. A request
/// without a token, or with one that is not valid, goes on to the handler,
/// which serves the cookie's viewer or answers the error in its own format.
///
/// A `SameSite=Strict` cookie is not sent with a navigation that another
/// site started, even after the redirect back to this server, so a link
/// opened from a mail or chat program would arrive without the cookie it
/// has just been given. Such a request (`Sec-Fetch-Site: cross-site` on a
/// navigation, without this user's cookie) gets [`same_site_reload`]
/// instead, whose reload this server's own page starts, and that one
/// carries the cookie.
async fn exchange_token(
    State(state): State<AppState>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    // Every id in the path must be valid before a cookie is set for it; the
    // handler rejects an invalid one with 400.
    let Ok(params) = params else {
        return next.run(request).await;
    };
    if params.iter().any(|(name, value)| check_id(value, name).is_err()) {
        return next.run(request).await;
    }
    let Some(user_id) = params
        .iter()
        .find(|(name, _)| *name == "user_id")
        .map(|(_, value)| value.to_string())
    else {
        return next.run(request).await;
    };
    let Some(token) = query_token(request.uri()) else {
        let headers = request.headers();
        if cross_site_navigation(headers) && cookie_value(headers, &cookie_name(&user_id)).is_none() {
            return same_site_reload(request.uri());
        }
        return next.run(request).await;
    };
    let Ok(expires_at) = state.authorize_viewer(&user_id, Some(&token)).await else {
        return next.run(request).await;
    };

    let uri = request.uri();
    let location = match uri.query().map(without_token).filter(|query| !query.is_empty()) {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_string(),
    };
    let now = chrono::Utc::now().timestamp();
    let secure = state.access.secure_cookies(request.headers());
    let cookie = viewer_cookie(&user_id, &token, expires_at, now, secure);
    let mut response = Redirect::to(&location).into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        // Tokens that pass verification contain only ASCII letters, digits,
        // `.`, `-` and `_`, so this cannot happen. Should it, the handler
        // serves the request with the token as it is.
        Err(_) => return next.run(request).await,
    }
    response
}

/// Returns whether the request is a navigation that another site started,
/// directly or through redirects, by the Fetch Metadata headers that
/// browsers send.
fn cross_site_navigation(headers: &HeaderMap) -> bool {
    let header_is = |name: &str, expected: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.eq_ignore_ascii_case(expected))
    };
    header_is("sec-fetch-site", "cross-site") && header_is("sec-fetch-mode", "navigate")
}

#[derive(Template)]
#[template(path = "reload.html")]
struct ReloadPage {
    target: String,
}

/// Returns a page that loads `uri` again at once with a `<meta>` refresh,
/// and a link for browsers that do not follow it. The page shows no data,
/// and its reload counts as this site's own navigation, so the viewer
/// cookie goes with it. When there is still no cookie, the reload is a
/// same-site request and gets the handler's 401.
fn same_site_reload(uri: &Uri) -> Response {
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |target| target.to_string());
    match (ReloadPage { target }).render() {
        Ok(body) => Html(body).into_response(),
        Err(error) => PageError(error::render_failed(error)).into_response(),
    }
}

/// Removes every `token` parameter from a raw query string, keeping the
/// others byte for byte.
fn without_token(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            // The name is compared decoded, as `query_token` reads it, so
            // `to%6Ben` cannot slip through and redirect again forever.
            let name = pair.split('=').next().unwrap_or_default().replace('+', " ");
            !name.is_empty() && percent_decode_str(&name).decode_utf8_lossy() != "token"
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage;

/// Serves `/`: what this server is and how to get a viewer link. It shows
/// no data.
async fn home() -> Result<Html<String>, PageError> {
    Ok(Html(HomePage.render().map_err(error::render_failed)?))
}
