//! Command line: flags with environment-variable fallbacks.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::app::Limits;
use crate::auth::{AccessConfig, Origin};
use crate::payload::check_id;
use crate::statistics::StageModel;
use crate::storage::Durability;
use crate::webhook::{ClientAddressSource, WebhookPolicy};

#[derive(Debug, Parser)]
#[command(
    name = "sleep-dashboard",
    version,
    about = "Live hypnograms and sleep reports from Asleep webhooks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// One `Command` is parsed once per process, so the size of its largest
// variant costs nothing worth a `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Print a signed viewer link for one user's pages.
    Link(LinkArgs),
    /// Revoke every viewer link and cookie issued so far for one user.
    Revoke(RevokeArgs),
    /// Replay recorded deliveries to a webhook URL.
    Send(SendArgs),
    /// Start a server with demo credentials and play a recorded night into it.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "SLEEP_DASHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// SQLite database file; created with its folder on first start.
    #[arg(long, env = "SLEEP_DASHBOARD_DATABASE", default_value = "data/sleep-dashboard.db")]
    pub database: PathBuf,

    /// Commit durability: `full` survives power loss, `normal` survives a
    /// process crash only.
    #[arg(long, env = "SLEEP_DASHBOARD_DURABILITY", value_enum, default_value = "full")]
    pub durability: Durability,

    /// Asleep API keys accepted in `x-api-key`, separated by commas; list
    /// the old and the new key while Asleep's console switches to the new one.
    #[arg(long = "api-key", env = "ASLEEP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    #[command(flatten)]
    pub secret: SecretArgs,

    /// Public base URL used in printed viewer links.
    #[arg(long, env = "SLEEP_DASHBOARD_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Interval between pings on an idle viewer WebSocket, such as `20s`.
    #[arg(long, env = "SLEEP_DASHBOARD_WS_PING_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub ws_ping_interval: Duration,

    /// Silence after which a viewer WebSocket counts as dead and is closed.
    #[arg(long, env = "SLEEP_DASHBOARD_WS_DEAD_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
    pub ws_dead_after: Duration,

    /// Folder of static assets served under /static.
    #[arg(long, env = "SLEEP_DASHBOARD_STATIC_DIR", default_value = default_static_dir())]
    pub static_dir: PathBuf,

    /// How stage codes are read: `four` (wake, light, deep, REM), `two`
    /// (wake and sleep, Asleep's basic plan), or `auto`, which reads a night
    /// without any deep or REM epoch as two-stage.
    #[arg(long, env = "SLEEP_DASHBOARD_STAGE_MODEL", value_enum, default_value = "auto")]
    pub stage_model: StageModel,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub webhook: WebhookArgs,

    #[command(flatten)]
    pub access: AccessArgs,
}

/// The `serve` flags of the viewer side and the operator view.
#[derive(Debug, Args)]
pub struct AccessArgs {
    /// Origins besides this server's own, separated by commas, such as
    /// `https://wall.example.org`, whose pages may open the viewer
    /// WebSocket and post to /admin.
    #[arg(long, env = "SLEEP_DASHBOARD_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,

    /// Password of the operator view at /admin, sent with HTTP Basic and any
    /// user name; at least 32 characters. Without it /admin does not exist.
    #[arg(long, env = "SLEEP_DASHBOARD_ADMIN_SECRET", hide_env_values = true)]
    pub admin_secret: Option<String>,
}

impl AccessArgs {
    /// Returns the access settings, with `public_url` from `--public-url`, or
    /// an error naming the flag with an unusable value.
    pub fn config(&self, public_url: Option<&str>) -> Result<AccessConfig, String> {
        let public_origin = public_url
            .map(|url| Origin::parse(url).map_err(|error| format!("--public-url: {error}")))
            .transpose()?;
        let allowed_origins = match self.allowed_origins.as_deref() {
            Some(list) => parse_list("--allowed-origins (SLEEP_DASHBOARD_ALLOWED_ORIGINS)", list)?
                .iter()
                .map(|origin| Origin::parse(origin).map_err(|error| format!("--allowed-origins: {error}")))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        if let Some(secret) = &self.admin_secret {
            crate::admin::check_secret(secret)?;
        }
        Ok(AccessConfig {
            public_origin,
            allowed_origins,
            admin_secret: self.admin_secret.clone(),
        })
    }
}

impl ServeArgs {
    /// Returns the API keys listed in `--api-key` or `ASLEEP_API_KEY`, or an
    /// error naming the variable when it is missing or lists an unusable
    /// key. The error never contains a key.
    pub fn api_keys(&self) -> Result<Vec<String>, String> {
        let listed = require("ASLEEP_API_KEY", "--api-key", self.api_key.as_deref())?;
        let keys = parse_list("ASLEEP_API_KEY (--api-key)", listed)?;
        for (index, key) in keys.iter().enumerate() {
            // A key outside visible ASCII could never arrive in a header value.
            if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
                return Err(format!(
                    "ASLEEP_API_KEY (--api-key): key {} contains a space or a character outside visible ASCII, \
                     so no request could present it",
                    index + 1
                ));
            }
        }
        Ok(keys)
    }
}

/// The `serve` flags that decide who may deliver to the webhook; their
/// defaults are [`WebhookPolicy::default`].
#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Failed `x-api-key` checks one client address may make per
    /// `--auth-failure-window`; after that its webhook requests get 429 with
    /// Retry-After. The allowance refills evenly over the window.
    #[arg(long, env = "SLEEP_DASHBOARD_AUTH_FAILURE_LIMIT", default_value_t = crate::webhook::DEFAULT_AUTH_FAILURE_LIMIT)]
    pub auth_failure_limit: u32,

    /// Window of `--auth-failure-limit`, such as `1m`.
    #[arg(long, env = "SLEEP_DASHBOARD_AUTH_FAILURE_WINDOW", default_value = "1m", value_parser = humantime::parse_duration)]
    pub auth_failure_window: Duration,

    /// Header whose last address is the client address for the
    /// failed-authentication limit, such as `X-Forwarded-For`. Safe only
    /// behind a reverse proxy that sets or appends it, because any client
    /// can send it; without this flag the TCP peer address counts.
    #[arg(long, env = "SLEEP_DASHBOARD_CLIENT_ADDRESS_HEADER")]
    pub client_address_header: Option<String>,

    /// User ids the webhook accepts deliveries for, separated by commas; a
    /// delivery for another user gets 403. Without this flag every user is
    /// accepted.
    #[arg(long, env = "SLEEP_DASHBOARD_ALLOWED_USERS")]
    pub allowed_users: Option<String>,
}

impl WebhookArgs {
    /// Returns the policy, or an error naming the flag with an unusable value.
    pub fn policy(&self) -> Result<WebhookPolicy, String> {
        let client_address = match &self.client_address_header {
            None => ClientAddressSource::Peer,
            Some(name) => ClientAddressSource::from_header_name(name)?,
        };
        let allowed_users = match &self.allowed_users {
            None => None,
            Some(listed) => {
                let users = parse_list("--allowed-users (SLEEP_DASHBOARD_ALLOWED_USERS)", listed)?;
                for user in &users {
                    check_id(user, "--allowed-users").map_err(|error| error.to_string())?;
                    if !user.bytes().all(|byte| byte.is_ascii_graphic()) {
                        return Err(format!(
                            "--allowed-users: {user:?} can never arrive in x-user-id, which is visible ASCII"
                        ));
                    }
                }
                Some(Arc::new(users.into_iter().collect::<HashSet<_>>()))
            }
        };
        let policy = WebhookPolicy {
            auth_failure_limit: self.auth_failure_limit,
            auth_failure_window: self.auth_failure_window,
            client_address,
            allowed_users,
        };
        policy.quota()?;
        Ok(policy)
    }
}

/// Splits a comma-separated list and trims each item. An empty item, as in
/// `a,,b` or a trailing comma, is an error naming `name`, because it is more
/// likely a typo than a wish.
pub fn parse_list(name: &str, text: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = text.split(',').map(|item| item.trim().to_string()).collect();
    if let Some(position) = items.iter().position(String::is_empty) {
        return Err(format!(
            "{name}: item {} of {} is empty; separate the items with single commas",
            position + 1,
            items.len()
        ));
    }
    Ok(items)
}

/// The `serve` flags behind [`Limits`]; their defaults are [`Limits::default`].
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Largest request body, in bytes or with a KiB or MiB suffix; a larger
    /// one is rejected with 413.
    #[arg(long = "max-body-size", env = "SLEEP_DASHBOARD_MAX_BODY_SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub max_body_bytes: usize,

    /// Largest request line plus headers, in bytes or with a KiB suffix,
    /// from 1KiB to 256KiB; a larger head is rejected with 431.
    #[arg(long = "max-header-size", env = "SLEEP_DASHBOARD_MAX_HEADER_SIZE", default_value = "16KiB", value_parser = parse_size)]
    pub max_header_bytes: usize,

    /// Time a client has to send a request's headers, and then its body,
    /// such as `15s`; a stalled head closes the connection, a stalled
    /// webhook body is rejected with 408.
    #[arg(long, env = "SLEEP_DASHBOARD_REQUEST_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Time a keep-alive HTTP connection may wait for its next request
    /// before it is closed.
    #[arg(long, env = "SLEEP_DASHBOARD_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Live viewer WebSockets one user may have open; a further one is
    /// refused with 503 and Retry-After.
    #[arg(
        long = "ws-max-per-user",
        env = "SLEEP_DASHBOARD_WS_MAX_PER_USER",
        default_value_t = 16
    )]
    pub ws_per_user: usize,

    /// Live viewer WebSockets the server keeps open in total; a further one
    /// is refused with 503 and Retry-After.
    #[arg(long = "ws-max-total", env = "SLEEP_DASHBOARD_WS_MAX_TOTAL", default_value_t = 512)]
    pub ws_total: usize,

    /// Time one message to a viewer may take to send; a viewer that reads
    /// nothing for this long is closed as slow.
    #[arg(long, env = "SLEEP_DASHBOARD_WS_SEND_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ws_send_timeout: Duration,

    /// Time a shutdown on SIGTERM or Ctrl-C waits for in-flight requests
    /// before it cuts them off and exits.
    #[arg(long, env = "SLEEP_DASHBOARD_SHUTDOWN_GRACE", default_value = "8s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl LimitArgs {
    /// Returns the limits, or an error naming the flag with an unusable value.
    pub fn limits(&self) -> Result<Limits, String> {
        let limits = Limits {
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            request_timeout: self.request_timeout,
            idle_timeout: self.idle_timeout,
            ws_per_user: self.ws_per_user,
            ws_total: self.ws_total,
            ws_send_timeout: self.ws_send_timeout,
            shutdown_grace: self.shutdown_grace,
        };
        limits.validate()?;
        Ok(limits)
    }
}

/// Parses a size in bytes: a whole number, optionally followed by `B`,
/// `KiB` or `MiB`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let multiplier: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        other => {
            return Err(format!(
                "unknown unit {other:?}: give bytes, or a number with KiB or MiB"
            ));
        }
    };
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: give bytes, or a number with KiB or MiB"))?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[derive(Debug, Args)]
pub struct SecretArgs {
    /// Secret that signs viewer links; any long random string.
    #[arg(long = "dashboard-secret", env = "DASHBOARD_SECRET", hide_env_values = true)]
    pub dashboard_secret: Option<String>,
}

impl SecretArgs {
    /// Returns the secret, or an error naming the variable to set.
    pub fn require(&self) -> Result<&str, String> {
        require(
            "DASHBOARD_SECRET",
            "--dashboard-secret",
            self.dashboard_secret.as_deref(),
        )
    }
}

#[derive(Debug, Args)]
pub struct LinkArgs {
    /// Asleep user id the link grants access to.
    #[arg(long)]
    pub user: String,

    /// How long the link stays valid, such as `12h`, `7d` or `30d`.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// Base URL of the server as viewers reach it.
    #[arg(long, env = "SLEEP_DASHBOARD_PUBLIC_URL", default_value = "http://127.0.0.1:8080")]
    pub public_url: String,

    /// The server's SQLite database file, which holds the user's token version.
    #[arg(long, env = "SLEEP_DASHBOARD_DATABASE", default_value = "data/sleep-dashboard.db")]
    pub database: PathBuf,

    #[command(flatten)]
    pub secret: SecretArgs,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Asleep user id whose viewer links and cookies stop working.
    #[arg(long)]
    pub user: String,

    /// The server's SQLite database file. The server may keep running: it
    /// reads the token version on every request.
    #[arg(long, env = "SLEEP_DASHBOARD_DATABASE", default_value = "data/sleep-dashboard.db")]
    pub database: PathBuf,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// A delivery file, or a folder of `NNN.json` deliveries sent in name order.
    pub path: PathBuf,

    /// Webhook URL to post to.
    #[arg(long, default_value = "http://127.0.0.1:8080/asleep-webhook")]
    pub url: String,

    /// API key sent in `x-api-key`; from a comma-separated list, the first.
    #[arg(long = "api-key", env = "ASLEEP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Replay speed: 1 is real time, 60 plays an hour in a minute, 0 sends
    /// as fast as the server responds.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub speed: f64,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Replay speed of the demo night; the default plays 7.5 hours in about a minute.
    #[arg(long, default_value_t = 450.0, allow_negative_numbers = true)]
    pub speed: f64,
}

/// Returns the value of a required secret, or a message naming where to set it.
pub fn require<'a>(variable: &str, flag: &str, value: Option<&'a str>) -> Result<&'a str, String> {
    match value {
        Some(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(format!(
            "{variable} is not set: set the environment variable {variable} or pass {flag}"
        )),
    }
}

/// Returns the `static/` folder of the source tree this binary was built from.
pub fn default_static_dir() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/static")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_flag_defaults_match_limits() {
        let cli = Cli::try_parse_from(["sleep-dashboard", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected the serve command");
        };
        assert_eq!(args.limits.limits().unwrap(), Limits::default());
    }

    #[test]
    fn webhook_flag_defaults_match_policy() {
        let cli = Cli::try_parse_from(["sleep-dashboard", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected the serve command");
        };
        assert_eq!(args.webhook.policy().unwrap(), WebhookPolicy::default());
    }

    #[test]
    fn api_key_list_is_trimmed_and_checked() {
        let serve = |keys: &str| {
            let cli = Cli::try_parse_from(["sleep-dashboard", "serve", "--api-key", keys]).unwrap();
            let Command::Serve(args) = cli.command else {
                panic!("expected the serve command");
            };
            args.api_keys()
        };
        assert_eq!(serve("old, new ").unwrap(), ["old", "new"]);
        assert_eq!(serve("only").unwrap(), ["only"]);
        for unusable in ["a,,b", "a,", ",a", " , "] {
            let error = serve(unusable).unwrap_err();
            assert!(error.contains("ASLEEP_API_KEY"), "{unusable:?}: {error}");
            assert!(error.contains("empty"), "{unusable:?}: {error}");
        }
        let error = serve("good,bad key").unwrap_err();
        assert!(error.contains("key 2"), "{error}");
        assert!(!error.contains("bad key"), "the error must not repeat the key: {error}");
    }

    #[test]
    fn allowed_users_are_checked() {
        let policy = |users: &str| {
            let cli = Cli::try_parse_from(["sleep-dashboard", "serve", "--allowed-users", users]).unwrap();
            let Command::Serve(args) = cli.command else {
                panic!("expected the serve command");
            };
            args.webhook.policy()
        };
        let allowed = policy("alice, bob").unwrap();
        assert!(allowed.allows_user("alice"));
        assert!(allowed.allows_user("bob"));
        assert!(!allowed.allows_user("carol"));
        assert!(policy("alice,,bob").unwrap_err().contains("--allowed-users"));
        assert!(policy("..").unwrap_err().contains("--allowed-users"));
        assert!(policy("café").unwrap_err().contains("--allowed-users"));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("2 MiB"), Ok(2 * 1024 * 1024));
        assert!(parse_size("1MB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("KiB").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn unusable_limits_name_their_flag() {
        let cli = Cli::try_parse_from(["sleep-dashboard", "serve", "--max-header-size", "100"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected the serve command");
        };
        assert!(args.limits.limits().unwrap_err().contains("--max-header-size"));

        let cli = Cli::try_parse_from(["sleep-dashboard", "serve", "--shutdown-grace", "0s"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected the serve command");
        };
        assert!(args.limits.limits().unwrap_err().contains("--shutdown-grace"));
    }
}
