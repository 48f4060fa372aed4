use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use sleep_dashboard::app::{RunningServer, ServerConfig};
use sleep_dashboard::auth::{ViewerKeys, link_expiry, mint_link};
use sleep_dashboard::config::{Cli, Command, LinkArgs, RevokeArgs, ServeArgs};
use sleep_dashboard::payload::check_id;
use sleep_dashboard::signal::shutdown_signal;
use sleep_dashboard::storage::{Durability, Store};
use sleep_dashboard::webhook::WebhookGuard;
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
        Command::Link(args) => link(&args).await.map(|url| println!("{url}")),
        Command::Revoke(args) => revoke(&args).await.map(|message| println!("{message}")),
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
    let api_keys = args.api_keys()?;
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
    let webhook_guard = WebhookGuard::new(args.webhook.policy()?)?;
    let access = args.access.config(args.public_url.as_deref())?;
    if !args.static_dir.join("live.js").is_file() {
        return Err(format!(
            "static assets not found in {}: pass --static-dir with the static/ folder of this repository",
            args.static_dir.display()
        ));
    }
    let config = ServerConfig {
        database: args.database.clone(),
        durability: args.durability,
        api_keys,
        dashboard_secret: secret.to_string(),
        static_dir: args.static_dir.clone(),
        heartbeat: Heartbeat {
            ping_interval: args.ws_ping_interval,
            dead_after: args.ws_dead_after,
        },
        stage_model: args.stage_model,
        limits,
        access,
    };

    let listener = sleep_dashboard::app::listen(args.listen)
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let mut server = RunningServer::start_with_webhook_guard(config, webhook_guard, listener)
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

/// Prints a viewer link at the user's current token version, read from the
/// server's database.
async fn link(args: &LinkArgs) -> Result<String, String> {
    let secret = args.secret.require()?;
    check_id(&args.user, "--user").map_err(|error| error.to_string())?;
    link_expiry(args.ttl, chrono::Utc::now().timestamp(), "--ttl")?;
    let store = open_existing(&args.database).await?;
    let minted = mint_link(&store, &ViewerKeys::new(secret), &args.user, args.ttl, &args.public_url).await;
    store.close().await;
    Ok(minted.map_err(|error| error.to_string())?.url)
}

/// Raises the user's token version in the server's database, which the
/// server reads on every request, so every link and cookie issued so far
/// stops working at once.
async fn revoke(args: &RevokeArgs) -> Result<String, String> {
    check_id(&args.user, "--user").map_err(|error| error.to_string())?;
    let store = open_existing(&args.database).await?;
    let revoked = store.revoke_viewers(&args.user).await;
    store.close().await;
    let version = revoked.map_err(|error| format!("revoking in {} failed: {error}", args.database.display()))?;
    tracing::info!(user_id = args.user, version, "viewer links revoked");
    Ok(format!(
        "revoked every viewer link and cookie of user {:?}; links printed from now on work (token version {version})",
        args.user
    ))
}

/// Opens the server's database, which must exist: a link or a revocation
/// written to a new, empty file would not reach the server.
async fn open_existing(path: &Path) -> Result<Store, String> {
    if !path.is_file() {
        return Err(format!(
            "database {} not found: pass --database (or set SLEEP_DASHBOARD_DATABASE) with the server's database file",
            path.display()
        ));
    }
    Store::open(path, Durability::Full)
        .await
        .map_err(|error| format!("cannot open the database {}: {error}", path.display()))
}
