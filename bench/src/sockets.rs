//! The WebSocket scenarios: fan-out to many rooms, one big room, idle
//! memory per socket, a reconnect storm, and intake beside subscribers that
//! never read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{StreamExt, stream};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::http::{DeliveryWriter, WebhookConnection};
use crate::ingest::{self, Load, new_histogram};
use crate::report::Figures;
use crate::target::{CpuMeter, Running};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Maximum wait for a handshake and, on our server, the snapshot after it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Maximum time for all subscribers of a run to join; the rest count as
/// failed, so a server that cannot hold them all does not stall the run.
const JOINING_LIMIT: Duration = Duration::from_secs(60);

/// Handshakes in flight at once while subscribers connect.
const CONNECTING_AT_ONCE: usize = 256;

/// Maximum wait, after the last webhook, for its messages to arrive.
const DELIVERY_GRACE: Duration = Duration::from_secs(5);

/// Initial read buffer of each client socket. tungstenite zero-fills the
/// free part of its read buffer before every read, up to this size, so its
/// 128 KiB default would cost the load generator a 128 KiB memset per
/// message and make it, not the server, the bottleneck.
const CLIENT_READ_BUFFER_BYTES: usize = 4 * 1024;

/// Opens a WebSocket client connection with [`CLIENT_READ_BUFFER_BYTES`].
async fn connect(url: &str) -> Result<Socket> {
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER_BYTES);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
    Ok(socket)
}

/// Connections that post the webhooks of a fan-out run. Each room is served
/// by one of them, so a room's webhooks arrive in the order they were sent.
const SENDERS: usize = 16;

/// Returns the user whose room is `room`, in a scenario's own name space.
fn room_user(scenario: &str, room: usize) -> String {
    format!("{scenario}-user-{room}")
}

/// Opens `user_id`'s feed and, on our server, waits for the snapshot every
/// new subscriber gets first, so the socket is fully joined when this returns.
async fn subscribe(running: &Running, user_id: &str) -> Result<Socket> {
    join(&running.feed_url(user_id), running.sends_snapshot_first()).await
}

/// Opens the feed at `url`, and waits for the first message when
/// `snapshot_first`.
async fn join(url: &str, snapshot_first: bool) -> Result<Socket> {
    let joined = async {
        let mut socket = connect(url).await?;
        if snapshot_first {
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(_))) => break,
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(error.into()),
                    None => anyhow::bail!("closed before the snapshot"),
                }
            }
        }
        anyhow::Ok(socket)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, joined)
        .await
        .context("no handshake and snapshot within 15 s")?
}

/// Subscribes `count` sockets spread evenly over `rooms` rooms; returns each
/// joined socket with its room, and the number that failed.
async fn subscribe_many(
    running: &Running,
    scenario: &str,
    count: usize,
    rooms: usize,
) -> (Vec<(usize, Socket)>, usize) {
    let deadline = Instant::now() + JOINING_LIMIT;
    let outcomes: Vec<(usize, Result<Socket>)> = stream::iter(0..count)
        .map(|index| {
            let room = index % rooms;
            let user = room_user(scenario, room);
            async move {
                if Instant::now() > deadline {
                    return (room, Err(anyhow::anyhow!("joining took over {JOINING_LIMIT:?}")));
                }
                (room, subscribe(running, &user).await)
            }
        })
        .buffer_unordered(CONNECTING_AT_ONCE)
        .collect()
        .await;
    let mut joined = Vec::with_capacity(count);
    let mut failed = 0;
    for (room, outcome) in outcomes {
        match outcome {
            Ok(socket) => joined.push((room, socket)),
            Err(_) => failed += 1,
        }
    }
    (joined, failed)
}

/// Reads a socket until `stop`, noting when each text message arrived.
async fn read_until(mut socket: Socket, mut stop: watch::Receiver<bool>, arrived: Arc<AtomicU64>) -> Vec<Instant> {
    let mut times = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = socket.next() => match message {
                Some(Ok(Message::Text(_))) => {
                    times.push(Instant::now());
                    arrived.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    let _ = socket.close(None).await;
    times
}

/// The shape of a fan-out run.
#[derive(Debug, Clone, Copy)]
pub struct FanOut {
    pub subscribers: usize,
    pub rooms: usize,
    /// Webhooks per second over all rooms.
    pub rate: f64,
    pub duration: Duration,
}

/// Subscribes, then posts webhooks at a fixed rate round the rooms, and
/// measures, for every message, the time from just before its webhook was
/// written to its arrival at each subscriber.
///
/// Messages are matched to webhooks by their order within a room: each
/// room's webhooks go out one after another over one connection.
pub async fn fan_out(running: &Running, scenario: &str, plan: FanOut) -> Result<Figures> {
    let mut figures = Figures::default();
    let connect_started = Instant::now();
    let (sockets, failed) = subscribe_many(running, scenario, plan.subscribers, plan.rooms).await;
    let connect_seconds = connect_started.elapsed().as_secs_f64();

    let (stop, stopped) = watch::channel(false);
    let arrived = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(sockets.len());
    let mut members = vec![0u64; plan.rooms];
    for (room, socket) in sockets {
        members[room] += 1;
        let reader = tokio::spawn(read_until(socket, stopped.clone(), Arc::clone(&arrived)));
        readers.push((room, reader));
    }

    let webhooks = ((plan.rate * plan.duration.as_secs_f64()).round() as usize).max(1);
    let cpu = CpuMeter::start(running);
    let started = Instant::now();
    let mut senders = Vec::new();
    for sender in 0..SENDERS.min(plan.rooms) {
        let connection = WebhookConnection::open(running.port).await?;
        senders.push(tokio::spawn(send_round_rooms(
            connection,
            scenario.to_string(),
            sender,
            plan,
            webhooks,
            started,
        )));
    }
    let mut sent: Vec<Vec<Instant>> = vec![Vec::new(); plan.rooms];
    let mut post_latency = new_histogram();
    let mut rejected = 0;
    for sender in senders {
        let outcome = sender.await??;
        for (room, times) in outcome.sent {
            sent[room] = times;
        }
        post_latency.add(&outcome.latency_us)?;
        rejected += outcome.rejected;
    }

    let expected: u64 = sent
        .iter()
        .zip(&members)
        .map(|(times, members)| times.len() as u64 * members)
        .sum();
    let deadline = Instant::now() + DELIVERY_GRACE;
    while arrived.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (server_cpu, client_cpu) = cpu.used(running);
    let _ = stop.send(true);

    let mut latency = new_histogram();
    let mut whole_room: Vec<Vec<Duration>> = sent.iter().map(|times| vec![Duration::ZERO; times.len()]).collect();
    let mut delivered = 0u64;
    for (room, reader) in readers {
        let arrivals = reader.await?;
        for (index, arrival) in arrivals.iter().enumerate().take(sent[room].len()) {
            let took = arrival.saturating_duration_since(sent[room][index]);
            let _ = latency.record(took.as_micros() as u64);
            whole_room[room][index] = whole_room[room][index].max(took);
            delivered += 1;
        }
    }
    let mut room_latency = new_histogram();
    for took in whole_room.iter().flatten() {
        let _ = room_latency.record(took.as_micros() as u64);
    }

    figures.push_latency("delivery", &latency);
    figures.push_latency("whole room", &room_latency);
    figures.push_latency("POST", &post_latency);
    figures.push("lost", expected.saturating_sub(delivered) as f64, false);
    figures.push("subscribers joined", (plan.subscribers - failed) as f64, true);
    figures.push("connect s", connect_seconds, false);
    figures.push("server CPU s", server_cpu, false);
    figures.push("load generator CPU s", client_cpu, false);
    if failed > 0 {
        figures
            .notes
            .push(format!("{failed} of {} subscribers could not join", plan.subscribers));
    }
    if rejected > 0 {
        figures
            .notes
            .push(format!("{rejected} webhooks got a response other than 2xx"));
    }
    Ok(figures)
}

/// The record of one fan-out sender.
struct Sent {
    /// Per room it served, when each webhook was about to be written.
    sent: Vec<(usize, Vec<Instant>)>,
    latency_us: hdrhistogram::Histogram<u64>,
    rejected: u64,
}

/// Posts webhook `index` to room `index % rooms` at `started + index / rate`,
/// for the rooms this sender serves.
async fn send_round_rooms(
    mut connection: WebhookConnection,
    scenario: String,
    sender: usize,
    plan: FanOut,
    webhooks: usize,
    started: Instant,
) -> Result<Sent> {
    let senders = SENDERS.min(plan.rooms);
    let mut writer = DeliveryWriter::new(String::new(), sender as u64);
    let mut sent: Vec<(usize, Vec<Instant>)> = (0..plan.rooms)
        .filter(|room| room % senders == sender)
        .map(|room| (room, Vec::new()))
        .collect();
    let mut latency_us = new_histogram();
    let mut rejected = 0;
    let session = format!("{scenario}-{}", rand::random::<u32>());
    for index in 0..webhooks {
        let room = index % plan.rooms;
        if room % senders != sender {
            continue;
        }
        let due = started + Duration::from_secs_f64(index as f64 / plan.rate);
        tokio::time::sleep_until(due.into()).await;
        let times = &mut sent[room / senders].1;
        let seq_num = crate::http::EPOCHS_PER_DELIVERY * (times.len() as u32 + 1) - 1;
        let user = room_user(&scenario, room);
        let body = writer.body(&user, &session, seq_num);
        let before = Instant::now();
        times.push(before);
        match connection.post(&user, body).await {
            Ok(status) if status.is_success() => {}
            _ => rejected += 1,
        }
        let _ = latency_us.record(before.elapsed().as_micros() as u64);
    }
    Ok(Sent {
        sent,
        latency_us,
        rejected,
    })
}

/// Opens `count` idle subscribers over `count / 10` rooms and reports the
/// server's resident memory growth per socket.
pub async fn idle_memory(running: &Running, count: usize) -> Result<Figures> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = running.resident_bytes()?;
    let (sockets, failed) = subscribe_many(running, "memory", count, (count / 10).max(1)).await;
    let (stop, stopped) = watch::channel(false);
    let arrived = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(_, socket)| tokio::spawn(read_until(socket, stopped.clone(), Arc::clone(&arrived))))
        .collect();
    // Let the server finish whatever joining left to do.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = running.resident_bytes()?;
    let joined = count - failed;
    let _ = stop.send(true);
    for reader in readers {
        reader.await?;
    }

    let mut figures = Figures::default();
    let growth = after.saturating_sub(before) as f64;
    figures.push("KiB per socket", growth / 1024.0 / joined.max(1) as f64, false);
    figures.push("resident MiB idle", before as f64 / 1024.0 / 1024.0, false);
    figures.push(
        &format!("resident MiB with {joined} sockets"),
        after as f64 / 1024.0 / 1024.0,
        false,
    );
    if failed > 0 {
        figures
            .notes
            .push(format!("{failed} of {count} sockets could not join"));
    }
    Ok(figures)
}

/// Joins `count` subscribers, drops every connection at once, and measures
/// the time until each has reconnected and, on our server, holds a fresh
/// snapshot. A failed reconnect is counted, not retried.
pub async fn reconnect_storm(running: &Running, count: usize) -> Result<Figures> {
    let rooms = (count / 10).max(1);
    let (sockets, failed) = subscribe_many(running, "storm", count, rooms).await;
    let (drop_all, dropped) = watch::channel(None::<Instant>);
    let (stop, stopped) = watch::channel(false);
    let urls: Arc<Vec<String>> = Arc::new(
        (0..rooms)
            .map(|room| running.feed_url(&room_user("storm", room)))
            .collect(),
    );
    let snapshot_first = running.sends_snapshot_first();
    let finished = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(sockets.len());
    for (room, socket) in sockets {
        let mut dropped = dropped.clone();
        let mut stopped = stopped.clone();
        let urls = Arc::clone(&urls);
        let finished = Arc::clone(&finished);
        clients.push(tokio::spawn(async move {
            let _ = dropped.changed().await;
            let since = dropped.borrow().expect("the storm starts with its time");
            drop(socket);
            let outcome = join(&urls[room], snapshot_first)
                .await
                .map(|socket| (since.elapsed(), socket));
            finished.fetch_add(1, Ordering::Relaxed);
            // Hold the new socket until every client is back, so closing
            // ones do not slow the others.
            let _ = stopped.changed().await;
            outcome.map(|(took, _socket)| took)
        }));
    }

    let cpu = CpuMeter::start(running);
    let _ = drop_all.send(Some(Instant::now()));
    // Every client ends its reconnect within the connect timeout.
    let deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(1);
    while finished.load(Ordering::Relaxed) < clients.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (server_cpu, client_cpu) = cpu.used(running);
    let _ = stop.send(true);
    let mut times = new_histogram();
    let mut errors = 0;
    let mut slowest = Duration::ZERO;
    for client in clients {
        match client.await? {
            Ok(took) => {
                slowest = slowest.max(took);
                let _ = times.record(took.as_micros() as u64);
            }
            Err(_) => errors += 1,
        }
    }

    let mut figures = Figures::default();
    figures.push("all back s", slowest.as_secs_f64(), false);
    figures.push_latency("reconnect", &times);
    figures.push("errors", errors as f64, false);
    figures.push("server CPU s", server_cpu, false);
    figures.push("load generator CPU s", client_cpu, false);
    if failed > 0 {
        figures
            .notes
            .push(format!("{failed} of {count} sockets could not join before the storm"));
    }
    Ok(figures)
}

/// Runs rated ingest twice on one server: first alone, then beside
/// `stalled` subscribers of the ingest users that never read a byte.
pub async fn slow_readers(running: &Running, stalled: usize, load: Load) -> Result<Figures> {
    let alone = ingest::run(running, load).await?;
    let mut sockets = Vec::with_capacity(stalled);
    let mut failed = 0;
    for index in 0..stalled {
        let url = running.feed_url(&ingest::user_id(index));
        match tokio::time::timeout(CONNECT_TIMEOUT, connect(&url)).await {
            // Never polled again: the socket reads nothing, not even its snapshot.
            Ok(Ok(socket)) => sockets.push(socket),
            _ => failed += 1,
        }
    }
    let beside = ingest::run(running, load).await?;
    drop(sockets);

    let p99 = |figures: &Figures| figures.get("latency p99 ms").map_or(f64::NAN, |figure| figure.value);
    let mut figures = Figures::default();
    figures.push("p99 alone ms", p99(&alone), false);
    figures.push("p99 beside stalled readers ms", p99(&beside), false);
    figures.push("p99 change %", (p99(&beside) / p99(&alone) - 1.0) * 100.0, false);
    for (label, run) in [("alone", &alone), ("beside stalled readers", &beside)] {
        for figure in &run.values {
            if figure.name == "non-2xx" || figure.name == "errors" {
                figures.push(&format!("{} {label}", figure.name), figure.value, false);
            }
        }
    }
    if failed > 0 {
        figures
            .notes
            .push(format!("{failed} of {stalled} stalled readers could not connect"));
    }
    Ok(figures)
}
