//! Authentication: Asleep's API key on the webhook, signed viewer tokens on
//! the pages, the API and the WebSocket, and the origins a browser request
//! may come from.
//!
//! A viewer token is `v2.<version>.<expiry>.<mac>`: the user's token version
//! when it was issued, the expiry in Unix seconds, and an HMAC-SHA256 keyed by
//! `DASHBOARD_SECRET` over the user id, the version and the expiry. It grants
//! read access to one user's nights until it expires or until
//! `sleep-dashboard revoke` raises the user's version, which the database
//! stores (see [`crate::storage::Store::viewer_version`]).
//!
//! Tokens of the earlier format, `v1.<expiry>.<mac>`, carry no version and so
//! could not be revoked. They are rejected with a message asking for a new
//! link.
//!
//! A browser presents the token once in a link's `?token=`, and the pages
//! exchange it for a cookie named by [`cookie_name`], so later requests carry
//! it in the `Cookie` header instead of the address.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::payload::check_id;
use crate::report::{live_path, query_value};
pub use crate::storage::FIRST_TOKEN_VERSION;
use crate::storage::{StorageError, Store};

type HmacSha256 = Hmac<Sha256>;

/// Prefix of the current token format.
const TOKEN_FORMAT: &str = "v2";

/// Prefix of the first token format, which had no version.
const UNVERSIONED_TOKEN_FORMAT: &str = "v1";

/// Maximum validity of a viewer link, so a leaked link cannot outlive a year.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Prefix of viewer cookie names; see [`cookie_name`].
const COOKIE_PREFIX: &str = "viewer_";

/// Reason a viewer token was rejected. The messages never repeat the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a viewer token is required: open the link printed by `sleep-dashboard link`")]
    Missing,
    #[error("the viewer token is malformed")]
    Malformed,
    #[error("the viewer link has an old format that cannot be revoked and is no longer accepted; ask for a new link")]
    Unversioned,
    #[error("the viewer token expired; ask for a new link")]
    Expired,
    #[error("the viewer token is not valid for this user")]
    BadSignature,
    #[error("the viewer link was revoked; ask for a new link")]
    Revoked,
}

/// Claims of a correctly signed, unexpired token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaims {
    /// The user's token version when the token was issued.
    pub version: u64,
    /// End of access in Unix seconds.
    pub expires_at: i64,
}

impl TokenClaims {
    /// Checks the token's version against the user's current one and returns
    /// the expiry. Any other version is rejected: a lower one was revoked,
    /// and a higher one was issued against another database.
    pub fn check_version(self, current: u64) -> Result<i64, TokenError> {
        if self.version == current {
            Ok(self.expires_at)
        } else {
            Err(TokenError::Revoked)
        }
    }
}

/// Signs and checks viewer tokens.
#[derive(Clone)]
pub struct ViewerKeys {
    secret: Vec<u8>,
}

impl ViewerKeys {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
        }
    }

    /// Issues a token for `user_id` at [`FIRST_TOKEN_VERSION`] that expires
    /// at `expires_at` (Unix seconds). It works only while the user was never
    /// revoked, as on a new database; [`ViewerKeys::issue_at`] takes the
    /// version read from the database.
    pub fn issue(&self, user_id: &str, expires_at: i64) -> String {
        self.issue_at(user_id, FIRST_TOKEN_VERSION, expires_at)
    }

    /// Issues a token for `user_id` at token version `version` that expires
    /// at `expires_at` (Unix seconds).
    pub fn issue_at(&self, user_id: &str, version: u64, expires_at: i64) -> String {
        let mac = self.mac(user_id, version, expires_at).finalize().into_bytes();
        format!("{TOKEN_FORMAT}.{version}.{expires_at}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// Checks that `token` is signed for `user_id` and unexpired at `now`
    /// (Unix seconds). The caller still compares the returned version with
    /// the user's current one, through [`TokenClaims::check_version`].
    pub fn verify(&self, token: &str, user_id: &str, now: i64) -> Result<TokenClaims, TokenError> {
        let parts: Vec<&str> = token.split('.').collect();
        let [format, version, expiry, signature] = parts[..] else {
            return Err(match parts.first() {
                Some(&UNVERSIONED_TOKEN_FORMAT) if parts.len() == 3 => TokenError::Unversioned,
                _ => TokenError::Malformed,
            });
        };
        if format != TOKEN_FORMAT {
            return Err(TokenError::Malformed);
        }
        let version: u64 = canonical_number(version)?;
        let expires_at: i64 = canonical_number(expiry)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;

        // The signature is checked before the expiry, so a forged token learns
        // nothing from which error it gets.
        self.mac(user_id, version, expires_at)
            .verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        if expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(TokenClaims { version, expires_at })
    }

    fn mac(&self, user_id: &str, version: u64, expires_at: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        // The length prefix keeps "ab" + "1" and "a" + "b1" apart.
        mac.update(TOKEN_FORMAT.as_bytes());
        mac.update(&(user_id.len() as u64).to_be_bytes());
        mac.update(user_id.as_bytes());
        mac.update(&version.to_be_bytes());
        mac.update(&expires_at.to_be_bytes());
        mac
    }
}

/// Parses a number of a token exactly as [`ViewerKeys::issue`] writes it,
/// so each token has one spelling: `00`, `+0` and `01` are malformed.
fn canonical_number<T: std::str::FromStr + ToString>(text: &str) -> Result<T, TokenError> {
    let number: T = text.parse().map_err(|_| TokenError::Malformed)?;
    if number.to_string() == text {
        Ok(number)
    } else {
        Err(TokenError::Malformed)
    }
}

/// A viewer link with its token and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerLink {
    /// The live page's address with `?token=`.
    pub url: String,
    pub token: String,
    /// End of access in Unix seconds.
    pub expires_at: i64,
}

/// Mints a link to `user_id`'s live page that is valid for `ttl`, at the
/// user's current token version in `store`. `base_url` is the server's
/// address as viewers reach it, such as `https://sleep.example.org`.
/// Errors name the field: `user` or `ttl`, or the database.
pub async fn mint_link(
    store: &Store,
    keys: &ViewerKeys,
    user_id: &str,
    ttl: Duration,
    base_url: &str,
) -> Result<ViewerLink, MintError> {
    check_id(user_id, "user").map_err(|error| MintError::Invalid(error.to_string()))?;
    let expires_at = link_expiry(ttl, chrono::Utc::now().timestamp(), "ttl").map_err(MintError::Invalid)?;
    let version = store.viewer_version(user_id).await?;
    let token = keys.issue_at(user_id, version, expires_at);
    let url = format!(
        "{}{}?token={}",
        base_url.trim_end_matches('/'),
        live_path(user_id),
        query_value(&token)
    );
    Ok(ViewerLink { url, token, expires_at })
}

/// Reason a link could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The user id or the TTL is unusable; the message names which.
    #[error("{0}")]
    Invalid(String),
    #[error("reading the user's token version failed: {0}")]
    Storage(#[from] StorageError),
}

/// Returns the expiry, in Unix seconds, of a link minted at `now` that is
/// valid for `ttl`, which must lie between 1 second and [`MAX_LINK_TTL`].
/// An error names the TTL as `field`.
pub fn link_expiry(ttl: Duration, now: i64, field: &str) -> Result<i64, String> {
    if ttl.is_zero() || ttl > MAX_LINK_TTL {
        return Err(format!(
            "{field} {} is out of range: give a duration from 1s to 366d",
            humantime::format_duration(ttl)
        ));
    }
    Ok(now + ttl.as_secs().max(1) as i64)
}

/// Returns the name of the cookie that holds `user_id`'s viewer token:
/// `viewer_` and the first 16 hex digits of the id's SHA-256. Each user
/// gets a cookie of their own, so one browser can view several users, and
/// the name is made of characters every cookie parser accepts whatever the
/// id contains.
pub fn cookie_name(user_id: &str) -> String {
    let digest = Sha256::digest(user_id.as_bytes());
    let hex: String = digest[..8].iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{COOKIE_PREFIX}{hex}")
}

/// Returns the value of the cookie `name` from the request's `Cookie`
/// headers, the first when it appears more than once.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// Returns the `Set-Cookie` value that stores `token` for `user_id` until
/// `expires_at` (Unix seconds). The cookie is `HttpOnly`, so scripts cannot
/// read it, and `SameSite=Strict`, so no other site's page can make a
/// browser send it. `secure` adds `Secure` for servers reached over HTTPS.
pub fn viewer_cookie(user_id: &str, token: &str, expires_at: i64, now: i64, secure: bool) -> String {
    let max_age = (expires_at - now).max(0);
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}",
        cookie_name(user_id)
    )
}

/// Source of a viewer token: browsers present a cookie, while links and
/// scripts present the query's `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Query,
    Cookie,
}

/// An origin as browsers send it in `Origin`: scheme, host and port, with
/// the scheme and host in lower case and the default port left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(String);

impl Origin {
    /// Parses an origin, or the origin of a URL such as
    /// `https://sleep.example.org/base`. Only `http` and `https` are accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |problem: &str| format!("{text:?} is not an http or https origin: {problem}");
        let (scheme, rest) = text.split_once("://").ok_or_else(|| invalid("missing scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => "80",
            "https" => "443",
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }
        if authority.contains('@') {
            return Err(invalid("user information is not allowed"));
        }
        Ok(Self::from_parts(&scheme, authority, default_port))
    }

    /// Returns the origin of a request that reached this server with `Host:
    /// host` over `scheme`.
    pub fn of_request(scheme: &str, host: &str) -> Self {
        let default_port = if scheme == "https" { "443" } else { "80" };
        Self::from_parts(scheme, host, default_port)
    }

    fn from_parts(scheme: &str, authority: &str, default_port: &str) -> Self {
        let authority = authority.to_ascii_lowercase();
        // An IPv6 host such as `[::1]` has colons of its own, but none of
        // its pieces equals a port number once the bracket is attached.
        let authority = match authority.rsplit_once(':') {
            Some((host, port)) if port == default_port => host.to_string(),
            _ => authority,
        };
        Self(format!("{scheme}://{authority}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Returns whether a request arrived over HTTPS, by `X-Forwarded-Proto:
/// https` from the reverse proxy that terminates TLS. The header only ever adds
/// `Secure` to a cookie or makes the expected origin `https`, so a client
/// that sets it itself gains nothing.
pub fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// The viewer side's and the operator view's settings: where the server is
/// reached, which other origins may open the WebSocket, and the admin secret.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// The origin of `--public-url`, whose scheme also decides whether
    /// cookies are `Secure`.
    pub public_origin: Option<Origin>,
    /// Further origins allowed to open the WebSocket and post to `/admin`.
    pub allowed_origins: Vec<Origin>,
    /// Password of `/admin`; without one `/admin` does not exist.
    pub admin_secret: Option<String>,
}

impl AccessConfig {
    /// Returns whether cookies set in response to a request with `headers`
    /// get `Secure`: when `--public-url` is `https`, or the proxy forwards
    /// an HTTPS request.
    pub fn secure_cookies(&self, headers: &HeaderMap) -> bool {
        self.public_origin
            .as_ref()
            .is_some_and(|origin| origin.as_str().starts_with("https://"))
            || forwarded_https(headers)
    }

    /// Checks the request's `Origin` header, which browsers send with
    /// WebSocket upgrades and form posts. It must name this server, as
    /// the request reached it (`Host`, and the scheme from
    /// [`forwarded_https`]), as `--public-url` names it, or an origin of
    /// `--allowed-origins`. Returns `Ok(None)` when there is no `Origin`
    /// header, which only clients other than browsers omit.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<Option<Origin>, OriginError> {
        let Some(value) = headers.get(header::ORIGIN) else {
            return Ok(None);
        };
        let text = value.to_str().map_err(|_| OriginError::Unreadable)?;
        let origin = Origin::parse(text).map_err(|_| OriginError::NotAllowed(text.to_string()))?;
        let scheme = if forwarded_https(headers) { "https" } else { "http" };
        let own = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .map(|host| Origin::of_request(scheme, host));
        let allowed = own.as_ref() == Some(&origin)
            || self.public_origin.as_ref() == Some(&origin)
            || self.allowed_origins.contains(&origin);
        if allowed {
            Ok(Some(origin))
        } else {
            Err(OriginError::NotAllowed(text.to_string()))
        }
    }
}

/// A request whose `Origin` names another site.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("the Origin header is not readable text")]
    Unreadable,
    #[error(
        "origin {0:?} is not allowed: only pages of this server, or origins given with --allowed-origins, may make this request"
    )]
    NotAllowed(String),
}

/// Compares a presented API key with the configured ones in constant time.
/// Every configured key is compared, and as SHA-256 digests, so the time
/// taken reveals neither which key nearly matched nor any key's length.
pub fn api_key_matches(presented: &[u8], configured: &[String]) -> bool {
    let presented = Sha256::digest(presented);
    configured
        .iter()
        .fold(subtle::Choice::from(0), |found, key| {
            found | Sha256::digest(key.as_bytes()).ct_eq(&presented)
        })
        .into()
}

/// Compares a presented password with the configured secret in constant
/// time. Both are hashed first, so the comparison takes the same time
/// whatever the presented length.
pub fn secret_matches(presented: &[u8], secret: &str) -> bool {
    let presented = Sha256::digest(presented);
    let secret = Sha256::digest(secret.as_bytes());
    presented.ct_eq(&secret).into()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn token_roundtrip_and_scope() {
        let keys = ViewerKeys::new("secret");
        let token = keys.issue_at("alice", 3, 2_000);
        let claims = keys.verify(&token, "alice", 1_000).unwrap();
        assert_eq!(
            claims,
            TokenClaims {
                version: 3,
                expires_at: 2_000
            }
        );
        assert_eq!(keys.verify(&token, "bob", 1_000), Err(TokenError::BadSignature));
        assert_eq!(keys.verify(&token, "alice", 2_000), Err(TokenError::Expired));
        assert_eq!(
            ViewerKeys::new("other").verify(&token, "alice", 1_000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn version_must_be_current() {
        let claims = TokenClaims {
            version: 3,
            expires_at: 2_000,
        };
        assert_eq!(claims.check_version(3), Ok(2_000));
        assert_eq!(claims.check_version(4), Err(TokenError::Revoked));
        assert_eq!(claims.check_version(2), Err(TokenError::Revoked));
    }

    #[test]
    fn tampered_tokens_are_rejected() {
        let keys = ViewerKeys::new("secret");
        let token = keys.issue_at("alice", 1, 2_000);
        let extended = token.replace("2000", "9000");
        assert_eq!(keys.verify(&extended, "alice", 1_000), Err(TokenError::BadSignature));
        let older = token.replacen(".1.", ".0.", 1);
        assert_eq!(keys.verify(&older, "alice", 1_000), Err(TokenError::BadSignature));
        assert_eq!(keys.verify("v2.1.2000", "alice", 1_000), Err(TokenError::Malformed));
        assert_eq!(keys.verify("v2.x.2000.abc", "alice", 1_000), Err(TokenError::Malformed));
        assert_eq!(keys.verify("v3.1.2000.abc", "alice", 1_000), Err(TokenError::Malformed));
        assert_eq!(keys.verify("", "alice", 1_000), Err(TokenError::Malformed));
        // Other spellings of the same numbers are malformed, so a token has
        // exactly one text.
        for respelled in [
            token.replacen(".1.", ".01.", 1),
            token.replacen(".1.", ".+1.", 1),
            token.replace("2000", "02000"),
        ] {
            assert_eq!(
                keys.verify(&respelled, "alice", 1_000),
                Err(TokenError::Malformed),
                "{respelled}"
            );
        }
        assert!(keys.verify(&token, "alice", 1_000).is_ok());
    }

    #[test]
    fn first_format_is_rejected_as_unversioned() {
        let keys = ViewerKeys::new("secret");
        let error = keys.verify("v1.2000.c2lnbmF0dXJl", "alice", 1_000).unwrap_err();
        assert_eq!(error, TokenError::Unversioned);
        assert!(error.to_string().contains("ask for a new link"));
    }

    #[test]
    fn link_expiry_bounds_ttl() {
        assert_eq!(link_expiry(Duration::from_secs(60), 1_000, "ttl"), Ok(1_060));
        assert!(
            link_expiry(Duration::ZERO, 1_000, "--ttl")
                .unwrap_err()
                .starts_with("--ttl 0s")
        );
        assert!(link_expiry(MAX_LINK_TTL + Duration::from_secs(1), 0, "ttl").is_err());
        assert!(link_expiry(MAX_LINK_TTL, 0, "ttl").is_ok());
    }

    #[test]
    fn cookie_names_differ_per_user() {
        let alice = cookie_name("alice");
        assert!(alice.starts_with("viewer_"));
        assert_eq!(alice.len(), "viewer_".len() + 16);
        assert_ne!(alice, cookie_name("bob"));
        assert_eq!(alice, cookie_name("alice"));
        assert!(
            cookie_name("a;b=c d")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        );
    }

    #[test]
    fn cookie_attributes() {
        let cookie = viewer_cookie("alice", "v2.0.9.mac", 1_600, 1_000, false);
        assert!(cookie.starts_with(&format!("{}=v2.0.9.mac;", cookie_name("alice"))));
        for attribute in ["Path=/", "Max-Age=600", "HttpOnly", "SameSite=Strict"] {
            assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
        }
        assert!(!cookie.contains("Secure"));
        assert!(viewer_cookie("alice", "t", 1_600, 1_000, true).ends_with("; Secure"));
    }

    #[test]
    fn cookie_value_reads_every_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; viewer_x=tok"));
        headers.append(header::COOKIE, HeaderValue::from_static("viewer_y=other"));
        assert_eq!(cookie_value(&headers, "viewer_x"), Some("tok"));
        assert_eq!(cookie_value(&headers, "viewer_y"), Some("other"));
        assert_eq!(cookie_value(&headers, "viewer_z"), None);
    }

    #[test]
    fn origins_normalize() {
        assert_eq!(
            Origin::parse("HTTPS://Sleep.Example.org:443/base/").unwrap().as_str(),
            "https://sleep.example.org"
        );
        assert_eq!(
            Origin::parse("http://127.0.0.1:8080").unwrap().as_str(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(Origin::parse("http://[::1]:80").unwrap().as_str(), "http://[::1]");
        assert_eq!(Origin::parse("http://[::1]").unwrap().as_str(), "http://[::1]");
        assert!(Origin::parse("ftp://example.org").is_err());
        assert!(Origin::parse("example.org").is_err());
        assert!(Origin::parse("https://").is_err());
        assert!(Origin::parse("https://user@example.org").is_err());
    }

    #[test]
    fn origin_check_accepts_own_public_and_listed() {
        let config = AccessConfig {
            public_origin: Some(Origin::parse("https://sleep.example.org").unwrap()),
            allowed_origins: vec![Origin::parse("https://other.example.org").unwrap()],
            admin_secret: None,
        };
        let check = |origin: &str, forwarded: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            if let Some(proto) = forwarded {
                headers.insert("x-forwarded-proto", HeaderValue::from_str(proto).unwrap());
            }
            config.check_origin(&headers)
        };
        assert!(check("http://127.0.0.1:8080", None).is_ok());
        assert!(check("https://127.0.0.1:8080", Some("https")).is_ok());
        assert!(check("https://127.0.0.1:8080", None).is_err());
        assert!(check("https://sleep.example.org", None).is_ok());
        assert!(check("https://other.example.org", None).is_ok());
        assert!(check("https://evil.example", None).is_err());
        assert!(check("null", None).is_err());
        assert_eq!(config.check_origin(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn api_key_comparison() {
        let keys = vec!["first".to_string(), "second".to_string()];
        assert!(api_key_matches(b"second", &keys));
        assert!(!api_key_matches(b"secon", &keys));
        assert!(!api_key_matches(b"", &keys));
    }

    #[test]
    fn secret_comparison() {
        assert!(secret_matches(b"admin-secret", "admin-secret"));
        assert!(!secret_matches(b"admin-secre", "admin-secret"));
        assert!(!secret_matches(b"", "admin-secret"));
    }
}
