//! `GET /users/{user_id}/live`: the live page. The server renders an empty
//! frame; `static/live.js` opens the WebSocket and draws the night.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;
use serde::Serialize;

use super::{PageError, ViewerToken, error::render_failed};
use crate::app::AppState;
use crate::hypnogram::{Hypnogram, Svg};
use crate::report::{history_path, query_value};

/// Settings of `static/live.js`, read from the page's
/// `<script type="application/json" id="live-config">`.
#[derive(Debug, Serialize)]
struct LiveConfig<'a> {
    user_id: &'a str,
    /// Path and query of the viewer socket; the script adds the scheme and
    /// host of the page. It carries no token: the browser sends the viewer
    /// cookie with the upgrade, as the socket is on the page's own origin.
    ws_path: String,
}

/// JSON that is safe inside a `<script>` element: `<`, `>` and `&` are
/// written as `\u003c`, `\u003e` and `\u0026`, so no value can close the
/// element or open a comment, and the HTML parser leaves the text alone.
/// The line and paragraph separators U+2028 and U+2029 are written as
/// `\u2028` and `\u2029`, because JavaScript before ES2019 ends a string
/// literal at them. The text then stays valid even if a script reads it as
/// code rather than through `JSON.parse`.
struct ScriptJson(String);

impl ScriptJson {
    fn new(value: &impl Serialize) -> Result<Self, serde_json::Error> {
        let json = serde_json::to_string(value)?;
        // JSON contains these characters only inside strings, where the
        // escapes decode to the same characters.
        Ok(Self(
            json.replace('<', "\\u003c")
                .replace('>', "\\u003e")
                .replace('&', "\\u0026")
                .replace('\u{2028}', "\\u2028")
                .replace('\u{2029}', "\\u2029"),
        ))
    }
}

impl std::fmt::Display for ScriptJson {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl askama::filters::HtmlSafe for ScriptJson {}

#[derive(Template)]
#[template(path = "live.html")]
struct LivePage {
    user_id: String,
    config: ScriptJson,
    hypnogram: Svg,
    history_href: String,
}

/// Serves the live page of one user.
pub async fn page(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    viewer: ViewerToken,
) -> Result<Html<String>, PageError> {
    state.authorize_viewer(&user_id, viewer.token(&user_id)).await?;
    Ok(Html(render(&user_id)?))
}

fn render(user_id: &str) -> Result<String, PageError> {
    let config = LiveConfig {
        user_id,
        ws_path: format!("/ws?user={}", query_value(user_id)),
    };
    let config = ScriptJson::new(&config)
        .map_err(|error| crate::error::AppError::Internal(format!("serializing the live config failed: {error}")))?;
    let page = LivePage {
        user_id: user_id.to_string(),
        config,
        hypnogram: Hypnogram {
            sleep_stages: &[],
            snoring_stages: &[],
            clock: None,
            start_estimated: true,
            title: format!("Live hypnogram of user {user_id}"),
        }
        .render(),
        history_href: history_path(user_id),
    };
    Ok(page.render().map_err(render_failed)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_json(html: &str) -> &str {
        let start = html
            .find(r#"<script type="application/json" id="live-config">"#)
            .unwrap()
            + 49;
        &html[start..start + html[start..].find("</script>").unwrap()]
    }

    #[test]
    fn live_page_carries_config_as_json() {
        let html = render("G-2026/x y").unwrap();
        let config: serde_json::Value = serde_json::from_str(config_json(&html)).unwrap();
        assert_eq!(config["user_id"], "G-2026/x y");
        assert_eq!(config.get("token"), None, "the token stays in its HttpOnly cookie");
        assert_eq!(config["ws_path"], "/ws?user=G-2026%2Fx%20y");
        assert!(html.contains(r#"href="/users/G-2026%2Fx%20y""#));
        assert!(html.contains(r#"<svg id="hypnogram""#));
        assert!(html.contains(r#"id="connection" class="connection" data-state="connecting""#));
        assert!(html.contains(r#"<script src="/static/live.js" defer></script>"#));
    }

    #[test]
    fn live_page_has_labelled_figures() {
        let html = render("u").unwrap();
        assert!(html.contains(r#"<h2 id="so-far-heading">"#));
        assert!(html.contains(r#"<dl id="figures" class="figures" aria-labelledby="so-far-heading">"#));
        for id in [
            "current-stage",
            "figure-time-in-sleep",
            "figure-sleep-efficiency",
            "figure-time-in-wake",
            "figure-time-in-light",
            "figure-time-in-deep",
            "figure-time-in-rem",
        ] {
            assert!(html.contains(&format!(r#"<dd id="{id}">"#)), "{id}");
        }
        assert!(!html.contains("style=\""), "the page's CSP allows no inline style");
    }

    #[test]
    fn config_cannot_close_the_script_element() {
        let user_id = "</script><script>alert(1)</script><!--";
        let html = render(user_id).unwrap();
        let json = config_json(&html);
        assert!(!json.contains('<'), "{json}");
        let config: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(config["user_id"], user_id);
        assert!(!html.contains("<script>alert(1)"));
        assert!(
            html.contains("&#60;/script&#62;&#60;script&#62;alert(1)"),
            "the heading shows the id escaped"
        );
    }

    #[test]
    fn config_escapes_line_separators() {
        let user_id = "line\u{2028}paragraph\u{2029}end";
        let html = render(user_id).unwrap();
        let json = config_json(&html);
        assert!(!json.contains('\u{2028}'), "{json}");
        assert!(!json.contains('\u{2029}'), "{json}");
        assert!(json.contains(r"line\u2028paragraph\u2029end"), "{json}");
        let config: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(config["user_id"], user_id);
    }
}
