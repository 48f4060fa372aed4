//! Command line: flags with environment-variable fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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
