//! Pages and the JSON API: the live page, a session's report, a user's
//! history, and the same session data as JSON.
//!
//! Every route but `/` needs a viewer token for the user in the path, passed
//! as `?token=`. The token is checked before anything is looked up, so a
//! request without a valid token learns nothing, not even whether a user or
//! session exists. Links between pages carry the token along.

mod api;
mod error;
mod export;
mod history;
mod live;
mod session;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Html;
use axum::routing::get;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::app::AppState;
use crate::report::query_value;

pub use error::PageError;
pub use export::{epochs_csv_path, night_json_path, nights_csv_path};
pub use session::SessionDocument;

/// Scripts and styles come only from `/static`, never inline, and the
/// socket and the JSON API are same-origin. Browsers that implement CSP
/// level 3 let `connect-src 'self'` cover `ws:` and `wss:` on the same host.
/// Forms may submit only to this server: the history page's period form.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Builds the routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
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
        .route("/api/users/{user_id}/sessions/{session_id}", get(api::session))
        .layer(header_layer(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        // Links carry the viewer token in their query, so no page may pass
        // its address on as a referrer or be kept in a shared cache.
        .layer(header_layer(header::REFERRER_POLICY, "no-referrer"))
        .layer(header_layer(header::CACHE_CONTROL, "no-store"))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::X_FRAME_OPTIONS, "DENY"))
}

fn header_layer(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

/// The `token` query parameter, if any. Extraction never fails: a missing
/// or unreadable query counts as no token, which authorization rejects.
/// When the query names `token` more than once the first one counts.
pub struct ViewerToken(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ViewerToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let pairs = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(pairs)| pairs)
            .unwrap_or_default();
        Ok(ViewerToken(
            pairs
                .into_iter()
                .find(|(name, _)| name == "token")
                .map(|(_, value)| value),
        ))
    }
}

/// Appends the viewer token to a path, percent-encoded.
pub fn with_token(path: &str, token: &str) -> String {
    format!("{path}?token={}", query_value(token))
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage;

/// Serves `/`: what this server is and how to get a viewer link. It shows
/// no data.
async fn home() -> Result<Html<String>, PageError> {
    Ok(Html(HomePage.render().map_err(error::render_failed)?))
}
