//! The benchmark harness: runs every scenario against sleep-dashboard's
//! release build and, when asked, against the peers (the servers people
//! would run instead, and a bare server that marks the machine's limit), in
//! the same run, and writes a table of medians, ranges and ratios.
//!
//! Every server it measures is one it started, on 127.0.0.1, with a fresh
//! database; every load is bounded in time and stops by itself.

mod http;
mod ingest;
mod report;
mod sockets;
mod target;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use ingest::Load;
use report::{Figures, Series, Setting};
use sockets::FanOut;
use target::{Kind, Running, Target};

/// Measures sleep-dashboard against its peers on this machine.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Our release binary; `bench/run` passes the one it built.
    #[arg(
        long,
        env = "SLEEP_DASHBOARD_BENCH_SERVER",
        default_value = "target/release/sleep-dashboard"
    )]
    server: PathBuf,

    /// Also measure the peers in --peers-dir: flask, express, and limit (the
    /// bare server, ingest only).
    #[arg(long)]
    peers: bool,

    /// The folder holding the peers, each with a run.sh.
    #[arg(long, default_value = "../shared/peers")]
    peers_dir: PathBuf,

    /// Another peer to measure, as NAME=COMMAND. The command must start it
    /// in the foreground on 127.0.0.1:$PORT with its database at $DB_PATH,
    /// expecting $ASLEEP_API_KEY in x-api-key.
    #[arg(long = "peer", value_name = "NAME=COMMAND", value_parser = parse_peer)]
    extra_peers: Vec<(String, String)>,

    /// Scenarios to run, comma-separated; all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,

    /// Runs of each scenario against each target; figures are medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,

    /// Seconds of load in each timed scenario, instead of the default 10
    /// (ingest and each slow-reader phase) and 20 (fan-out and big room).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: Option<u64>,

    /// A run of seconds, not minutes: every scenario at a tiny size, once,
    /// to show the harness still works. Its figures mean nothing.
    #[arg(long)]
    smoke: bool,

    /// Where results.md and results.json are written: target/bench by
    /// default, target/bench/smoke for a smoke run.
    #[arg(long)]
    out: Option<PathBuf>,

    /// First port to start servers on; each start takes the next one.
    #[arg(long, default_value_t = 18400)]
    base_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Ingest,
    FanOut,
    BigRoom,
    IdleMemory,
    ReconnectStorm,
    ReportPage,
    SlowReader,
}

impl Scenario {
    fn title(self) -> &'static str {
        match self {
            Scenario::Ingest => "ingest",
            Scenario::FanOut => "fan-out",
            Scenario::BigRoom => "big room",
            Scenario::IdleMemory => "idle memory",
            Scenario::ReconnectStorm => "reconnect storm",
            Scenario::ReportPage => "report page",
            Scenario::SlowReader => "intake under a slow reader",
        }
    }
}

/// The size of every scenario, full or smoke.
struct Sizes {
    ingest: Load,
    fan_out: FanOut,
    big_room: FanOut,
    idle_sockets: usize,
    storm_sockets: usize,
    stalled_readers: usize,
    slow_reader_load: Load,
}

impl Sizes {
    fn new(smoke: bool, seconds: Option<u64>) -> Self {
        if smoke {
            let second = Duration::from_secs(seconds.unwrap_or(1));
            return Self {
                ingest: Load {
                    connections: 8,
                    duration: second,
                    rate: None,
                },
                fan_out: FanOut {
                    subscribers: 100,
                    rooms: 10,
                    rate: 10.0,
                    duration: second,
                },
                big_room: FanOut {
                    subscribers: 50,
                    rooms: 1,
                    rate: 20.0,
                    duration: second,
                },
                idle_sockets: 200,
                storm_sockets: 200,
                stalled_readers: 5,
                slow_reader_load: Load {
                    connections: 8,
                    duration: second,
                    rate: Some(200.0),
                },
            };
        }
        let ingest_time = Duration::from_secs(seconds.unwrap_or(10));
        let fan_out_time = Duration::from_secs(seconds.unwrap_or(20));
        Self {
            ingest: Load {
                connections: 64,
                duration: ingest_time,
                rate: None,
            },
            // 10 webhooks per second for every 100 rooms.
            fan_out: FanOut {
                subscribers: 10_000,
                rooms: 1_000,
                rate: 100.0,
                duration: fan_out_time,
            },
            big_room: FanOut {
                subscribers: 5_000,
                rooms: 1,
                rate: 20.0,
                duration: fan_out_time,
            },
            idle_sockets: 10_000,
            storm_sockets: 10_000,
            stalled_readers: 100,
            slow_reader_load: Load {
                connections: 64,
                duration: ingest_time,
                rate: Some(2_000.0),
            },
        }
    }
}

fn parse_peer(text: &str) -> Result<(String, String), String> {
    let Some((name, command)) = text.split_once('=') else {
        return Err(format!("expected NAME=COMMAND, got {text:?} without '='"));
    };
    if name.is_empty() {
        return Err(format!("the peer's NAME before '=' is empty in {text:?}"));
    }
    if command.trim().is_empty() {
        return Err(format!("the COMMAND after '=' is empty in {text:?}"));
    }
    Ok((name.to_string(), command.to_string()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    if !args.server.is_file() {
        bail!(
            "--server {} does not exist; build it with `cargo build --release` or use bench/run",
            args.server.display()
        );
    }
    let open_files = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    eprintln!("open-file limit: {open_files}");

    let scenarios = if args.scenarios.is_empty() {
        Scenario::value_variants().to_vec()
    } else {
        args.scenarios.clone()
    };
    let runs = if args.smoke { 1 } else { usize::from(args.runs) };
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.smoke {
            "target/bench/smoke"
        } else {
            "target/bench"
        })
    });
    let sizes = Sizes::new(args.smoke, args.seconds);
    let targets = targets(&args)?;
    let work = std::env::temp_dir().join(format!("sleep-dashboard-bench-{}", std::process::id()));

    let mut bench = Bench {
        port: args.base_port,
        work: work.clone(),
        series: Vec::new(),
        failed_starts: false,
    };
    for scenario in scenarios {
        if scenario == Scenario::ReportPage {
            bench.series.push(report_page(args.smoke)?);
            continue;
        }
        for run in 1..=runs {
            // The durability of commits matters only where every request commits.
            let targets = targets
                .iter()
                .filter(|target| scenario == Scenario::Ingest || !target.is_ours() || target.name == "ours");
            for target in targets {
                eprintln!("{}: run {run} of {runs} against {}", scenario.title(), target.name);
                bench.run(scenario, target, &sizes).await;
            }
        }
    }
    if bench.failed_starts {
        eprintln!(
            "the logs of servers that failed to start are kept in {}",
            work.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }

    let setting = Setting {
        command: command_line,
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        commit: commit(),
        runs,
    };
    let table = report::markdown(&setting, &bench.series);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("results.md"), &table)?;
    let json = serde_json::json!({ "setting": setting, "series": bench.series });
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    println!("{table}");
    eprintln!("written to {}", out.join("results.md").display());
    Ok(())
}

/// Our server at both durabilities for ingest, then the peers asked for.
fn targets(args: &Args) -> Result<Vec<Target>> {
    let binary = std::fs::canonicalize(&args.server)?;
    let mut targets = vec![
        Target {
            name: "ours".to_string(),
            kind: Kind::Ours {
                binary: binary.clone(),
                durability: "normal",
            },
        },
        Target {
            name: "ours, synchronous=FULL".to_string(),
            kind: Kind::Ours {
                binary,
                durability: "full",
            },
        },
    ];
    if args.peers {
        let folder = std::fs::canonicalize(&args.peers_dir)
            .with_context(|| format!("--peers-dir {} does not exist", args.peers_dir.display()))?;
        for (name, websockets) in [("flask", true), ("express", true), ("limit", false)] {
            let script = folder.join(name).join("run.sh");
            install_peer(name, &script)?;
            targets.push(Target {
                name: name.to_string(),
                kind: Kind::Peer {
                    command: format!("exec {}", shell_quote(&script)),
                    websockets,
                },
            });
        }
    }
    for (name, command) in &args.extra_peers {
        targets.push(Target {
            name: name.clone(),
            kind: Kind::Peer {
                command: command.clone(),
                websockets: true,
            },
        });
    }
    Ok(targets)
}

/// Runs a peer's `run.sh --install-only`, which builds or installs it, so
/// that installing does not count against its start.
fn install_peer(name: &str, script: &Path) -> Result<()> {
    eprintln!("installing {name} with {} --install-only", script.display());
    let status = Command::new("bash")
        .arg(script)
        .arg("--install-only")
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} --install-only failed with {status}", script.display());
    }
    Ok(())
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// The state of a whole harness run.
struct Bench {
    port: u16,
    work: PathBuf,
    series: Vec<Series>,
    /// Whether a server failed to start, whose log must then outlive the run.
    failed_starts: bool,
}

impl Bench {
    /// Runs one scenario once against a freshly started target and files
    /// its figures, or the reason it could not run.
    async fn run(&mut self, scenario: Scenario, target: &Target, sizes: &Sizes) {
        let skip = match scenario {
            Scenario::Ingest => None,
            _ if !target.has_websockets() => Some("serves no WebSocket feed".to_string()),
            _ => None,
        };
        let outcome = match skip {
            Some(reason) => Err(reason),
            None => self
                .measure(scenario, target, sizes)
                .await
                .map_err(|error| format!("{error:#}")),
        };
        let title = scenario.title().to_string();
        let index = match self
            .series
            .iter()
            .position(|entry| entry.scenario == title && entry.target == target.name)
        {
            Some(index) => index,
            None => {
                self.series.push(Series {
                    scenario: title,
                    target: target.name.clone(),
                    ours: target.is_ours(),
                    runs: Vec::new(),
                    skipped: None,
                });
                self.series.len() - 1
            }
        };
        let entry = &mut self.series[index];
        match outcome {
            Ok(figures) => entry.runs.push(figures),
            Err(reason) => {
                eprintln!("  not run: {reason}");
                if entry.runs.is_empty() {
                    entry.skipped = Some(reason);
                }
            }
        }
    }

    async fn measure(&mut self, scenario: Scenario, target: &Target, sizes: &Sizes) -> Result<Figures> {
        self.port += 1;
        let sockets = match scenario {
            Scenario::FanOut => sizes.fan_out.subscribers,
            Scenario::BigRoom => sizes.big_room.subscribers,
            Scenario::IdleMemory => sizes.idle_sockets,
            Scenario::ReconnectStorm => sizes.storm_sockets * 2,
            Scenario::SlowReader => sizes.stalled_readers,
            Scenario::Ingest | Scenario::ReportPage => 0,
        };
        let folder = self
            .work
            .join(format!("{}-{}", self.port, target.name.replace([' ', ',', '='], "-")));
        let running: Running = match target.start(self.port, &folder, sockets).await {
            Ok(running) => running,
            Err(error) => {
                self.failed_starts = true;
                return Err(error);
            }
        };
        let figures = match scenario {
            Scenario::Ingest => ingest::run(&running, sizes.ingest).await,
            Scenario::FanOut => sockets::fan_out(&running, "fanout", sizes.fan_out).await,
            Scenario::BigRoom => sockets::fan_out(&running, "bigroom", sizes.big_room).await,
            Scenario::IdleMemory => sockets::idle_memory(&running, sizes.idle_sockets).await,
            Scenario::ReconnectStorm => sockets::reconnect_storm(&running, sizes.storm_sockets).await,
            Scenario::SlowReader => {
                sockets::slow_readers(&running, sizes.stalled_readers, sizes.slow_reader_load).await
            }
            Scenario::ReportPage => unreachable!("the report page is measured by criterion"),
        };
        drop(running);
        let _ = std::fs::remove_dir_all(&folder);
        figures
    }
}

/// Runs the criterion benchmark of the report page and reads each
/// benchmark's median from criterion's own estimates.
fn report_page(smoke: bool) -> Result<Series> {
    let started = SystemTime::now();
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()));
    command.args(["bench", "--package", "sleep-dashboard", "--bench", "report_page", "--"]);
    if smoke {
        command.arg("--test");
    }
    // The results table alone goes to standard output.
    command.stdout(std::io::stderr());
    let begun = Instant::now();
    let status = command.status().context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench --bench report_page failed with {status}");
    }
    let mut figures = Figures::default();
    if smoke {
        figures.push("smoke run s", begun.elapsed().as_secs_f64(), false);
    } else {
        let target_dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_string());
        for (name, median_ns) in criterion_medians(&Path::new(&target_dir).join("criterion"), started)? {
            figures.push(&format!("{name} median ms"), median_ns / 1e6, false);
        }
    }
    Ok(Series {
        scenario: Scenario::ReportPage.title().to_string(),
        target: "ours".to_string(),
        ours: true,
        runs: vec![figures],
        skipped: None,
    })
}

/// Reads `median.point_estimate` (nanoseconds) from every
/// `*/new/estimates.json` under `folder` written since `since`.
fn criterion_medians(folder: &Path, since: SystemTime) -> Result<Vec<(String, f64)>> {
    let mut medians = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let fresh = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .is_ok_and(|modified| modified >= since);
            if !fresh || path.file_name().is_none_or(|name| name != "estimates.json") {
                continue;
            }
            let Some(bench_dir) = path
                .parent()
                .filter(|parent| parent.ends_with("new"))
                .and_then(Path::parent)
            else {
                continue;
            };
            let estimates: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
            if let Some(median) = estimates["median"]["point_estimate"].as_f64() {
                let name = bench_dir
                    .strip_prefix(folder)
                    .unwrap_or(bench_dir)
                    .display()
                    .to_string();
                medians.push((name, median));
            }
        }
    }
    medians.sort_by(|left, right| left.0.cmp(&right.0));
    Ok(medians)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|value| value.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn commit() -> String {
    let output = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let hash = output(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    let dirty = output(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|status| !status.is_empty());
    if dirty {
        format!("{hash} with uncommitted changes")
    } else {
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_argument_needs_name_and_command() {
        assert_eq!(
            parse_peer("mine=./run.sh --port 1"),
            Ok(("mine".to_string(), "./run.sh --port 1".to_string()))
        );
        assert!(parse_peer("noequals").unwrap_err().contains("without '='"));
        assert!(parse_peer("=cmd").unwrap_err().contains("NAME"));
        assert!(parse_peer("name=  ").unwrap_err().contains("COMMAND"));
    }

    #[test]
    fn zero_runs_and_seconds_are_rejected() {
        assert!(Args::try_parse_from(["bench", "--runs", "0"]).is_err());
        assert!(Args::try_parse_from(["bench", "--seconds", "0"]).is_err());
        assert!(Args::try_parse_from(["bench", "--runs", "2", "--seconds", "3"]).is_ok());
    }
}
