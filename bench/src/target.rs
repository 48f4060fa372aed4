//! The servers under test: our release binary and the peers, each started
//! fresh for every run with its own database, and stopped by its process
//! group, which holds only what the harness started.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sleep_dashboard::auth::ViewerKeys;

/// The key every target expects in `x-api-key`.
pub const API_KEY: &str = "bench-api-key";

/// Maximum time a started server may take to respond to its first request.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Sockets a room may hold in our server during a run: the biggest room of
/// any scenario, with room for the old sockets of a reconnect storm that the
/// server has not yet seen close.
const OURS_MAX_PER_USER: usize = 20_000;
const OURS_MAX_TOTAL: usize = 40_000;

/// The kind of a target: our server or a peer.
#[derive(Debug, Clone)]
pub enum Kind {
    /// sleep-dashboard's release binary at the given durability.
    Ours { binary: PathBuf, durability: &'static str },
    /// A peer started by a shell command, which reads `PORT`, `HOST`,
    /// `DB_PATH` and `ASLEEP_API_KEY`.
    Peer { command: String, websockets: bool },
}

/// A server to measure.
#[derive(Debug, Clone)]
pub struct Target {
    /// The name in the results table, such as `ours` or `express`.
    pub name: String,
    pub kind: Kind,
}

impl Target {
    pub fn is_ours(&self) -> bool {
        matches!(self.kind, Kind::Ours { .. })
    }

    /// Returns whether the target serves the WebSocket feed; the bare server does not.
    pub fn has_websockets(&self) -> bool {
        match self.kind {
            Kind::Ours { .. } => true,
            Kind::Peer { websockets, .. } => websockets,
        }
    }

    /// Starts the target on `port` with a fresh database in `folder`, and
    /// waits until it responds. `sockets` is the number of WebSocket clients
    /// the run will open, which sizes a thread-per-socket peer.
    pub async fn start(&self, port: u16, folder: &Path, sockets: usize) -> Result<Running> {
        std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
        let log_path = folder.join("server.log");
        let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let secret = format!("{:032x}", rand::random::<u128>());
        let mut command = match &self.kind {
            Kind::Ours { binary, durability } => {
                let mut command = Command::new(binary);
                command
                    .arg("serve")
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .arg("--database")
                    .arg(folder.join("ours.db"))
                    .args(["--durability", durability])
                    .args(["--ws-max-per-user", &OURS_MAX_PER_USER.to_string()])
                    .args(["--ws-max-total", &OURS_MAX_TOTAL.to_string()])
                    .env("ASLEEP_API_KEY", API_KEY)
                    .env("DASHBOARD_SECRET", &secret);
                command
            }
            Kind::Peer { command: line, .. } => {
                let mut command = Command::new("bash");
                command
                    .args(["-c", line])
                    .env("PORT", port.to_string())
                    .env("HOST", "127.0.0.1")
                    .env("DB_PATH", folder.join("peer.db"))
                    .env("ASLEEP_API_KEY", API_KEY);
                // gunicorn's gthread worker keeps one thread per open socket;
                // size it to the run so the peer can hold every client.
                if sockets > 0 {
                    command.env("GUNICORN_THREADS", (sockets + 200).to_string());
                }
                command
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = command.spawn().with_context(|| format!("starting {}", self.name))?;
        let mut running = Running {
            name: self.name.clone(),
            port,
            child: Some(child),
            viewer_keys: self.is_ours().then(|| ViewerKeys::new(&secret)),
            log_path,
        };
        running.wait_until_responding().await?;
        Ok(running)
    }
}

/// A started target. Dropping it stops the process group.
pub struct Running {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
    /// Signs viewer tokens for our server; `None` for peers, whose feed
    /// needs none.
    viewer_keys: Option<ViewerKeys>,
    log_path: PathBuf,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Returns the WebSocket address of `user_id`'s feed.
    pub fn feed_url(&self, user_id: &str) -> String {
        match &self.viewer_keys {
            Some(keys) => {
                let expires_at = chrono::Utc::now().timestamp() + 24 * 3600;
                let token = keys.issue(user_id, expires_at);
                format!("ws://127.0.0.1:{}/ws?user={user_id}&token={token}", self.port)
            }
            None => format!("ws://127.0.0.1:{}/ws?user_id={user_id}", self.port),
        }
    }

    /// Returns whether a new subscriber's first message is a snapshot of the night
    /// (our server) rather than the first update (peers).
    pub fn sends_snapshot_first(&self) -> bool {
        self.viewer_keys.is_some()
    }

    /// Resident memory of the server and every process below it, in bytes.
    pub fn resident_bytes(&self) -> Result<u64> {
        let mut total = 0;
        let mut pending = vec![self.pid()];
        while let Some(pid) = pending.pop() {
            total += resident_bytes_of(pid)?;
            pending.extend(children_of(pid));
        }
        Ok(total)
    }

    /// CPU time the server and every process below it have used so far,
    /// in seconds of user plus system time.
    pub fn cpu_seconds(&self) -> f64 {
        let mut total = 0.0;
        let mut pending = vec![self.pid()];
        while let Some(pid) = pending.pop() {
            total += cpu_seconds_of(pid);
            pending.extend(children_of(pid));
        }
        total
    }

    async fn wait_until_responding(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited with {status} before responding; see {}",
                    self.name,
                    self.log_path.display()
                );
            }
            if crate::http::responds(self.port).await {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "{} did not respond within {START_TIMEOUT:?}; see {}",
                    self.name,
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the process group: SIGTERM, then SIGKILL if it is still there
    /// after [`STOP_TIMEOUT`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = Pid::from_raw(child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Children of the peer's shell may outlive it, and the group contains them.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

fn resident_bytes_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok(kib * 1024)
}

/// CPU time this harness has used so far, in seconds: the load generator's
/// own share of the machine.
fn own_cpu_seconds() -> f64 {
    cpu_seconds_of(std::process::id())
}

/// CPU readings of the server and of the load generator at the start of a
/// measured interval.
pub struct CpuMeter {
    server: f64,
    generator: f64,
}

impl CpuMeter {
    /// Starts measuring the CPU time `running` and this harness use.
    pub fn start(running: &Running) -> Self {
        Self {
            server: running.cpu_seconds(),
            generator: own_cpu_seconds(),
        }
    }

    /// Returns the seconds of CPU the server and the load generator used
    /// since [`CpuMeter::start`], in that order.
    pub fn used(&self, running: &Running) -> (f64, f64) {
        (running.cpu_seconds() - self.server, own_cpu_seconds() - self.generator)
    }
}

/// User plus system time of one process from `/proc/PID/stat`, in seconds.
fn cpu_seconds_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name in parentheses may hold spaces; fields follow it.
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&index| fields.get(index).and_then(|value| value.parse::<u64>().ok()))
        .sum();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / per_second
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
