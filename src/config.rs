//! Command line: flags with environment-variable fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::app::Limits;
use crate::statistics::StageModel;
use crate::storage::Durability;

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Print a signed viewer link for one user's pages.
    Link(LinkArgs),
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

    /// Asleep API key expected in `x-api-key`.
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

    #[command(flatten)]
    pub secret: SecretArgs,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// A delivery file, or a folder of `NNN.json` deliveries sent in name order.
    pub path: PathBuf,

    /// Webhook URL to post to.
    #[arg(long, default_value = "http://127.0.0.1:8080/asleep-webhook")]
    pub url: String,

    /// API key sent in `x-api-key`.
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
