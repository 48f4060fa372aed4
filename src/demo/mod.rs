//! Demo: a server with fresh credentials and a recorded night played into it.
//!
//! Nothing needs configuring. The API key and the dashboard secret are
//! random for each run, and the database lives in a new folder under the
//! system's temporary directory that is removed when the demo stops. The
//! night goes through the real webhook, sent by the same code as
//! `sleep-dashboard send`.
//!
//! The night ships inside the binary as `night.jsonl`, one recorded flat
//! delivery per line, made from the test fixtures with:
//!
//! ```text
//! python3 -c 'import glob, json; [print(json.dumps(json.load(open(p)), separators=(",", ":"))) for p in sorted(glob.glob("tests/fixtures/night-flat/events/[0-9]*.json"))]' > src/demo/night.jsonl
//! ```

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tokio::net::TcpListener;

use crate::app::{RunningServer, ServerConfig};
use crate::auth::ViewerKeys;
use crate::config::DemoArgs;
use crate::report::{live_path, report_path};
use crate::send::{
    Progress, RecordedDelivery, Summary, Target, check_speed, count_deliveries, parse_delivery, plan_waits, replay,
};
use crate::signal::shutdown_signal;
use crate::storage::Durability;

/// The recorded night, one delivery body per line.
const NIGHT: &str = include_str!("night.jsonl");

/// Pause between printing the viewer link and the first delivery, so the
/// live page can be opened before the night starts.
const OPEN_PAUSE: Duration = Duration::from_secs(5);

/// How long the printed viewer links stay valid.
const LINK_TTL: TimeDelta = TimeDelta::days(1);

/// Random bytes in each demo credential: 256 bits, printed as hex.
const CREDENTIAL_BYTES: usize = 32;

/// Starts the demo server, plays the night, and serves until Ctrl-C or SIGTERM.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    let speed = check_speed(args.speed)?;
    let night = Night::bundled()?;

    // The port is taken first, so a busy port fails before anything is written.
    let listener = bind(args.listen).await?;
    let folder = ScratchFolder::create()?;
    let credentials = Credentials::generate();
    let config = ServerConfig {
        database: folder.path().join("demo.db"),
        // The database is thrown away at exit, so power-loss safety buys nothing.
        durability: Durability::Normal,
        api_keys: vec![credentials.api_key.clone()],
        dashboard_secret: credentials.dashboard_secret.clone(),
        static_dir: PathBuf::from(crate::config::default_static_dir()),
        heartbeat: Default::default(),
        limits: Default::default(),
        stage_model: Default::default(),
        access: Default::default(),
    };
    let mut server = RunningServer::start(config, listener)
        .await
        .map_err(|error| format!("cannot open the demo database in {}: {error}", folder.path().display()))?;

    // The database closes before its folder is removed.
    let outcome = match present(&mut server, &night, &credentials, speed).await {
        Ending::WhileRunning(outcome) => {
            server.shutdown().await;
            outcome
        }
        Ending::ServerStopped(message) => {
            server.state.store.close().await;
            Err(message)
        }
    };
    drop(folder);
    outcome
}

/// Outcome of [`present`].
enum Ending {
    /// A signal arrived or the playback failed, and the server still runs.
    WhileRunning(Result<(), String>),
    /// The server stopped by itself, so it must not be shut down again.
    ServerStopped(String),
}

/// Prints the links, plays the night, and waits for a signal to stop.
async fn present(server: &mut RunningServer, night: &Night, credentials: &Credentials, speed: f64) -> Ending {
    let addr = server.addr;
    let base_url = format!("http://{}", reachable(addr));
    let token =
        ViewerKeys::new(&credentials.dashboard_secret).issue(&night.user_id, (Utc::now() + LINK_TTL).timestamp());
    let live_url = format!("{base_url}{}?token={token}", live_path(&night.user_id));
    let report_url = format!(
        "{base_url}{}?token={token}",
        report_path(&night.user_id, &night.session_id)
    );
    let playing_time: Duration = plan_waits(&night.deliveries, speed).iter().sum();
    let pace = if speed == 0.0 {
        "without waits between deliveries".to_string()
    } else {
        format!("at speed {speed}, taking about {}", whole_seconds(playing_time))
    };

    println!("Demo server listening on {base_url} with a new database and random credentials.");
    println!();
    println!(
        "Watch the night of user {} live (the link is valid for 1 day):",
        night.user_id
    );
    println!();
    println!("    {live_url}");
    println!();
    println!(
        "The recorded night ({} over {}) starts playing in {} seconds, {pace}.",
        count_deliveries(night.deliveries.len()),
        whole_minutes(night.recorded_length()),
        OPEN_PAUSE.as_secs(),
    );
    println!();

    let signal = shutdown_signal();
    tokio::pin!(signal);
    let playback = async {
        tokio::time::sleep(OPEN_PAUSE).await;
        play(addr, &credentials.api_key, night, speed).await
    };

    let summary = tokio::select! {
        () = &mut signal => {
            println!("Stopping before the night finished.");
            return Ending::WhileRunning(Ok(()));
        }
        result = server.wait() => return Ending::ServerStopped(stopped_by_itself(result)),
        summary = playback => match summary {
            Ok(summary) => summary,
            Err(message) => return Ending::WhileRunning(Err(message)),
        },
    };

    println!("The night is complete: {summary}. Its report:");
    println!();
    println!("    {report_url}");
    println!();
    // The API key is printed on purpose: it is random, dies with this
    // process, and lets the operator send further deliveries to the demo.
    println!("Still serving. Press Ctrl-C to stop. To send more deliveries:");
    println!(
        "    sleep-dashboard send FILE --url {base_url}/asleep-webhook --api-key {}",
        credentials.api_key
    );

    tokio::select! {
        () = &mut signal => {
            println!("Stopping.");
            Ending::WhileRunning(Ok(()))
        }
        result = server.wait() => Ending::ServerStopped(stopped_by_itself(result)),
    }
}

fn stopped_by_itself(result: std::io::Result<()>) -> String {
    match result {
        Ok(()) => "the demo server stopped unexpectedly".to_string(),
        Err(error) => format!("the demo server stopped: {error}"),
    }
}

/// Plays the bundled night into the webhook of the server at `addr`.
pub async fn play(addr: SocketAddr, api_key: &str, night: &Night, speed: f64) -> Result<Summary, String> {
    let target = Target::new(&format!("http://{}/asleep-webhook", reachable(addr)), api_key)?;
    // The server in this process logs each delivery it stores, and those
    // lines would break a progress bar drawn on the same terminal.
    replay(&target, &night.deliveries, speed, Progress::Hidden).await
}

/// The recorded night bundled into the binary.
#[derive(Debug, Clone)]
pub struct Night {
    pub deliveries: Vec<RecordedDelivery>,
    /// The user whose night it is, taken from the first delivery.
    pub user_id: String,
    /// The session the deliveries belong to.
    pub session_id: String,
}

impl Night {
    /// Parses the bundled deliveries.
    pub fn bundled() -> Result<Self, String> {
        let deliveries = NIGHT
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| parse_delivery(format!("bundled night, line {}", index + 1), line.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let first = deliveries.first().ok_or("the bundled night has no deliveries")?;
        let user_id = first.user_id.clone();
        let session_id = first
            .session_id
            .clone()
            .ok_or("the bundled night's first delivery has no session_id")?;
        Ok(Self {
            deliveries,
            user_id,
            session_id,
        })
    }

    /// Returns the time from the first delivery's timestamp to the last one's.
    pub fn recorded_length(&self) -> Duration {
        let first = self.deliveries.first().and_then(|delivery| delivery.timestamp);
        let last = self.deliveries.last().and_then(|delivery| delivery.timestamp);
        match (first, last) {
            (Some(first), Some(last)) => (last - first).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }
}

/// Binds the listener, explaining what to do when the port is taken.
async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    crate::app::listen(listen).map_err(|error| {
        if error.kind() == ErrorKind::AddrInUse {
            let any_port = SocketAddr::new(listen.ip(), 0);
            format!(
                "cannot listen on {listen}: another program uses the port. Pass --listen {any_port} to pick a free port, or --listen with another port"
            )
        } else {
            format!("cannot listen on {listen}: {error}")
        }
    })
}

/// Returns an address a local client can connect to: a listener on every
/// interface (`0.0.0.0` or `::`) is reached through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

/// The API key and dashboard secret of one demo run.
struct Credentials {
    api_key: String,
    dashboard_secret: String,
}

impl Credentials {
    fn generate() -> Self {
        Self {
            api_key: random_hex(),
            dashboard_secret: random_hex(),
        }
    }
}

fn random_hex() -> String {
    let bytes: [u8; CREDENTIAL_BYTES] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A new folder under the system's temporary directory, removed with
/// everything in it when dropped.
struct ScratchFolder {
    path: PathBuf,
}

impl ScratchFolder {
    fn create() -> Result<Self, String> {
        let name = format!(
            "sleep-dashboard-demo-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = std::env::temp_dir().join(name);
        // Mode 0700 keeps other users out. `create` fails rather than reuse
        // a folder that already exists.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|error| format!("cannot create the demo folder {}: {error}", path.display()))?;
        tracing::debug!(path = %path.display(), "demo folder created");
        Ok(Self { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchFolder {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the demo folder");
        }
    }
}

fn whole_minutes(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs() / 60 * 60)).to_string()
}

fn whole_seconds(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs_f64().round() as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::SESSION_COMPLETE;

    #[test]
    fn bundled_night_is_whole() {
        let night = Night::bundled().unwrap();
        assert_eq!(night.deliveries.len(), 88);
        assert!(
            night
                .deliveries
                .iter()
                .all(|delivery| delivery.user_id == night.user_id)
        );
        assert!(night.deliveries.iter().all(|delivery| delivery.timestamp.is_some()));
        let last = night.deliveries.last().unwrap();
        assert_eq!(last.event.as_deref(), Some(SESSION_COMPLETE));
        assert_eq!(last.session_id.as_deref(), Some(night.session_id.as_str()));
    }

    #[test]
    fn default_speed_plays_about_a_minute() {
        let night = Night::bundled().unwrap();
        let recorded = night.recorded_length();
        assert!(recorded > Duration::from_secs(7 * 3600), "{recorded:?}");
        let playing: Duration = plan_waits(&night.deliveries, 450.0).iter().sum();
        assert!(playing > Duration::from_secs(50), "{playing:?}");
        assert!(playing < Duration::from_secs(70), "{playing:?}");
    }

    #[test]
    fn credentials_are_random_hex() {
        let first = Credentials::generate();
        let second = Credentials::generate();
        assert_eq!(first.api_key.len(), 2 * CREDENTIAL_BYTES);
        assert!(first.api_key.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(first.api_key, first.dashboard_secret);
        assert_ne!(first.api_key, second.api_key);
    }

    #[test]
    fn scratch_folder_removed_on_drop() {
        let folder = ScratchFolder::create().unwrap();
        let path = folder.path().to_path_buf();
        std::fs::write(path.join("demo.db"), "data").unwrap();
        assert!(path.is_dir());
        drop(folder);
        assert!(!path.exists(), "{} still exists", path.display());
    }

    #[test]
    fn unspecified_address_reached_through_loopback() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(reachable(any), "127.0.0.1:8080".parse().unwrap());
        let any_v6: SocketAddr = "[::]:8080".parse().unwrap();
        assert_eq!(reachable(any_v6), "[::1]:8080".parse().unwrap());
        let specific: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(reachable(specific), specific);
    }

    #[tokio::test]
    async fn busy_port_suggests_free_one() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let error = bind(addr).await.unwrap_err();
        assert!(error.contains("--listen 127.0.0.1:0"), "{error}");
    }

    #[tokio::test]
    async fn night_plays_into_real_server() {
        let folder = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            database: folder.path().join("demo.db"),
            durability: Durability::Normal,
            api_keys: vec!["demo-key".to_string()],
            dashboard_secret: "demo-secret".to_string(),
            static_dir: folder.path().to_path_buf(),
            heartbeat: Default::default(),
            limits: Default::default(),
            stage_model: Default::default(),
            access: Default::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = RunningServer::start(config, listener).await.unwrap();
        let night = Night::bundled().unwrap();

        // `replay` stops with an error at the first non-2xx response, so a
        // summary means every delivery got 2xx.
        let summary = play(server.addr, "demo-key", &night, 0.0).await.unwrap();
        assert_eq!(summary.accepted, night.deliveries.len());
        assert_eq!(summary.duplicate, 0);
        assert_eq!(summary.ignored, 0);

        let sessions = server.state.store.sessions(&night.user_id).await.unwrap();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].session_id, night.session_id);
        assert!(sessions[0].report.is_some(), "the final report was not stored");

        // A second playback gets duplicate responses, not errors.
        let again = play(server.addr, "demo-key", &night, 0.0).await.unwrap();
        assert_eq!(again.duplicate, night.deliveries.len());
        server.shutdown().await;
    }
}
