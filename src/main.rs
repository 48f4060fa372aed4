use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use sleep_dashboard::app::{RunningServer, ServerConfig};
use sleep_dashboard::auth::ViewerKeys;
use sleep_dashboard::config::{Cli, Command, LinkArgs, ServeArgs, require};
use sleep_dashboard::payload::check_id;
use sleep_dashboard::report::live_path;
use sleep_dashboard::signal::shutdown_signal;
use sleep_dashboard::ws::Heartbeat;
use sleep_dashboard::{demo, send};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Link(args) => link(&args).map(|url| println!("{url}")),
        Command::Send(args) => send::run(args).await,
        Command::Demo(args) => demo::run(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let api_key = require("ASLEEP_API_KEY", "--api-key", args.api_key.as_deref())?;
    let secret = args.secret.require()?;
    if secret.len() < MIN_SECRET_BYTES {
        tracing::warn!(
            minimum = MIN_SECRET_BYTES,
            "DASHBOARD_SECRET is short; viewer links are only as hard to forge as it is to guess"
        );
    }
    if args.ws_ping_interval.is_zero() || args.ws_dead_after <= args.ws_ping_interval {
        return Err("--ws-dead-after must be longer than --ws-ping-interval, and both above zero".to_string());
    }
    let limits = args.limits.limits()?;
    if !args.static_dir.join("live.js").is_file() {
        return Err(format!(
            "static assets not found in {}: pass --static-dir with the static/ folder of this repository",
            args.static_dir.display()
        ));
    }
    let config = ServerConfig {
        database: args.database.clone(),
        durability: args.durability,
        api_keys: vec![api_key.to_string()],
        dashboard_secret: secret.to_string(),
        static_dir: args.static_dir.clone(),
        heartbeat: Heartbeat {
            ping_interval: args.ws_ping_interval,
            dead_after: args.ws_dead_after,
        },
        stage_model: args.stage_model,
        limits,
    };

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let mut server = RunningServer::start(config, listener)
        .await
        .map_err(|error| format!("cannot open the database {}: {error}", args.database.display()))?;
    tracing::info!(
        address = %server.addr,
        database = %args.database.display(),
        "listening; POST deliveries to /asleep-webhook, print viewer links with `sleep-dashboard link --user USER`"
    );

    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!(
                grace_seconds = limits.shutdown_grace.as_secs_f64(),
                "shutting down: finishing in-flight requests and closing viewer sockets"
            );
            server.shutdown().await;
            Ok(())
        }
        result = server.wait() => result.map_err(|error| format!("server stopped: {error}")),
    }
}

/// Length below which `serve` warns that `DASHBOARD_SECRET` is weak: 32
/// bytes, the size of the HMAC-SHA256 output it keys.
const MIN_SECRET_BYTES: usize = 32;

/// Maximum validity of a link from `link`, so a leaked link cannot outlive a year.
const MAX_LINK_TTL: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

fn link(args: &LinkArgs) -> Result<String, String> {
    let secret = args.secret.require()?;
    check_id(&args.user, "--user").map_err(|error| error.to_string())?;
    if args.ttl.is_zero() || args.ttl > MAX_LINK_TTL {
        return Err(format!(
            "--ttl {} is out of range: give a duration from 1s to 366d",
            humantime::format_duration(args.ttl)
        ));
    }
    let ttl = chrono::Duration::from_std(args.ttl).map_err(|_| format!("--ttl {:?} is too long", args.ttl))?;
    let expires_at = (chrono::Utc::now() + ttl).timestamp();
    let token = ViewerKeys::new(secret).issue(&args.user, expires_at);
    Ok(format!(
        "{}{}?token={token}",
        args.public_url.trim_end_matches('/'),
        live_path(&args.user)
    ))
}
