//! The ingest scenarios: distinct `INFERENCE_COMPLETE` deliveries from a
//! fixed number of kept-alive connections, either as fast as the server
//! responds or at a fixed rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;

use crate::http::{DeliveryWriter, WebhookConnection};
use crate::report::Figures;
use crate::target::{CpuMeter, Running};

/// Users the deliveries rotate over, as in the peers' load script.
pub const USERS: usize = 100;

/// Returns the user of a delivery, shared with the scenarios that subscribe to
/// these users.
pub fn user_id(index: usize) -> String {
    format!("bench-user-{}", index % USERS)
}

/// The shape of an ingest run's load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub connections: usize,
    pub duration: Duration,
    /// Deliveries per second over all connections; `None` sends each as
    /// soon as the previous response arrived.
    pub rate: Option<f64>,
}

/// The counts of one connection.
struct Tally {
    accepted: u64,
    rejected: u64,
    failed: u64,
    latency_us: Histogram<u64>,
}

/// Sends deliveries to `port` for `load.duration` and returns accepted
/// deliveries per second and the latency distribution.
///
/// With a rate, each delivery has a scheduled time and its latency counts
/// from then, so a server that stalls is charged for the deliveries it
/// delayed, not only for the one it held.
pub async fn run(running: &Running, load: Load) -> Result<Figures> {
    let port = running.port;
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = CpuMeter::start(running);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(load.connections);
    for index in 0..load.connections {
        let connection = WebhookConnection::open(port).await?;
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(send_from(connection, index, load, started, stop)));
    }
    tokio::time::sleep(load.duration).await;
    stop.store(true, Ordering::Relaxed);

    let mut accepted = 0;
    let mut rejected = 0;
    let mut failed = 0;
    let mut latency_us = new_histogram();
    for task in tasks {
        let tally = task.await?;
        accepted += tally.accepted;
        rejected += tally.rejected;
        failed += tally.failed;
        latency_us.add(&tally.latency_us)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (server_cpu, own_cpu) = cpu.used(running);
    let responded = (accepted + rejected).max(1) as f64;
    let mut figures = Figures::default();
    figures.push("accepted/s", accepted as f64 / seconds, true);
    figures.push_latency("latency", &latency_us);
    figures.push("non-2xx", rejected as f64, false);
    figures.push("errors", failed as f64, false);
    figures.push("server CPU µs per request", server_cpu * 1e6 / responded, false);
    figures.push("load generator CPU µs per request", own_cpu * 1e6 / responded, false);
    Ok(figures)
}

async fn send_from(
    mut connection: WebhookConnection,
    index: usize,
    load: Load,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut writer = DeliveryWriter::new(format!("ingest-{index}-{}", rand::random::<u32>()), index as u64);
    let mut tally = Tally {
        accepted: 0,
        rejected: 0,
        failed: 0,
        latency_us: new_histogram(),
    };
    // Connections start spread over one interval, so a rated run does not
    // send in bursts of `connections`.
    let interval = load
        .rate
        .map(|rate| Duration::from_secs_f64(load.connections as f64 / rate));
    let mut scheduled = started
        + interval.map_or(Duration::ZERO, |interval| {
            interval.mul_f64(index as f64 / load.connections as f64)
        });
    let mut sent = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if interval.is_some() {
            tokio::time::sleep_until(scheduled.into()).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
        } else {
            scheduled = Instant::now();
        }
        let user = user_id(index * 7 + sent);
        sent += 1;
        let body = writer.next(&user);
        match connection.post(&user, body).await {
            Ok(status) if status.is_success() => tally.accepted += 1,
            Ok(_) => tally.rejected += 1,
            Err(_) => {
                tally.failed += 1;
                // The connection may be gone; the next delivery needs a new one.
                match WebhookConnection::open(connection.port()).await {
                    Ok(fresh) => connection = fresh,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        let _ = tally.latency_us.record(scheduled.elapsed().as_micros() as u64);
        if let Some(interval) = interval {
            scheduled += interval;
        }
    }
    tally
}

/// Returns a histogram of microseconds up to an hour, at three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}
