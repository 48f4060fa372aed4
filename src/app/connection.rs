//! The accept loop: one hyper HTTP/1.1 connection per TCP stream, with the
//! header-size, header-timeout and idle-timeout limits, and a tracker that
//! lets shutdown wait for every connection and viewer socket to end.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection
//! waits for its next request, so it would close idle connections after the
//! header timeout. Each connection here therefore watches its own activity
//! and tells a stalled request head (closed after the request timeout) from
//! an idle connection (closed after the idle timeout).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{AppState, Limits};

/// Pause after an accept error such as running out of file descriptors, so
/// the loop neither spins nor floods the log while the cause persists.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Accepts connections until `stop_accepting` is cancelled, then drops the
/// listener so new connections are refused while the open ones drain.
pub(super) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    state: AppState,
    stop_accepting: CancellationToken,
) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Replaced by the per-connection watch below; see the module comment.
        .header_read_timeout(None)
        .max_header_size(state.limits.max_header_bytes);

    loop {
        let (stream, peer) = tokio::select! {
            () = stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // The client gave up between its SYN and our accept.
                Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(error) => {
                    tracing::error!(%error, "accepting a connection failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // Responses are small and written whole, so waiting to coalesce
        // them only adds latency.
        let _ = stream.set_nodelay(true);
        let guard = state.tracker.enter();
        tokio::spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            builder.clone(),
            state.clone(),
            guard,
        ));
    }
    drop(listener);
    tracing::info!("stopped accepting connections");
    Ok(())
}

/// Serves one connection until the client closes it, a limit closes it, or
/// shutdown drains or cuts it off. `_guard` keeps shutdown waiting meanwhile.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: http1::Builder,
    state: AppState,
    _guard: TrackerGuard,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedStream {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service = WatchedService {
        inner: TowerToHyperService::new(router),
        activity: Arc::clone(&activity),
        peer,
    };
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);

    let limits = state.limits;
    let mut draining = false;
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = state.shutdown.cancelled(), if !draining => {
                // Finishes the request in progress, if any, then closes.
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = state.cut_off.cancelled() => {
                tracing::debug!("connection cut off at the end of the shutdown grace");
                return;
            }
            () = activity.changed.notified() => {}
            () = tokio::time::sleep_until(deadline.at) => match deadline.kind {
                DeadlineKind::Recheck => {}
                DeadlineKind::Head => {
                    tracing::debug!(
                        seconds = limits.request_timeout.as_secs_f64(),
                        "request headers did not arrive in time; closing the connection"
                    );
                    return;
                }
                DeadlineKind::Idle if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                DeadlineKind::Idle => {}
            },
        }
    }
}

/// The activity of one connection, shared between its stream, its service and
/// the task that enforces the timeouts. Times are milliseconds since
/// `opened`, so they fit in atomics.
struct Activity {
    opened: Instant,
    /// Requests handed to the router whose response has not been produced.
    in_flight: AtomicUsize,
    /// When the last response was produced, or the connection opened.
    idle_since_ms: AtomicU64,
    /// When the first byte of a request head arrived while no request was
    /// in flight, or [`NO_HEAD`].
    head_started_ms: AtomicU64,
    /// Woken when a head starts or a request finishes, so the connection's
    /// task recomputes its deadline.
    changed: Notify,
}

/// [`Activity::head_started_ms`] when no request head is being read.
const NO_HEAD: u64 = u64::MAX;

/// How often a connection with a request in flight looks at its state
/// again. No timeout applies while the router handles a request, so this
/// only bounds how late a missed wake-up could be noticed.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeadlineKind {
    /// A request head started and must be complete by then.
    Head,
    /// No request is in progress; the connection closes then.
    Idle,
    /// A request is in flight; look again then.
    Recheck,
}

struct Deadline {
    at: Instant,
    kind: DeadlineKind,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(NO_HEAD),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// Records that bytes arrived. Bytes that arrive while no request is in
    /// flight begin a request head.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self
                .head_started_ms
                .compare_exchange(NO_HEAD, self.now_ms(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(NO_HEAD, Ordering::Release);
    }

    fn request_finished(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// Returns the next moment a limit applies to this connection.
    fn deadline(&self, limits: &Limits) -> Deadline {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Deadline {
                at: Instant::now() + RECHECK_INTERVAL,
                kind: DeadlineKind::Recheck,
            };
        }
        match self.head_started_ms.load(Ordering::Acquire) {
            NO_HEAD => Deadline {
                at: self.at(self.idle_since_ms.load(Ordering::Acquire)) + limits.idle_timeout,
                kind: DeadlineKind::Idle,
            },
            started => Deadline {
                at: self.at(started) + limits.request_timeout,
                kind: DeadlineKind::Head,
            },
        }
    }
}

/// The TCP stream of a connection, reporting each read to its [`Activity`].
/// After a WebSocket upgrade the socket keeps using it, which costs one
/// atomic load per read.
struct WatchedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        result
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as a hyper service, marking each request's start and end in
/// the connection's [`Activity`].
struct WatchedService {
    inner: TowerToHyperService<Router>,
    activity: Arc<Activity>,
    /// The TCP peer, handed to handlers as [`ConnectInfo`] so the webhook
    /// can rate-limit failed authentication per client address.
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for WatchedService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(Arc::clone(&self.activity));
        let mut request = Request::from(request.map(axum::body::Body::new));
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    }
}

/// One request in flight; dropping it, also when hyper drops the response
/// future, marks the request finished.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Counts the connections and viewer sockets that are open, so shutdown
/// can wait until all have ended.
#[derive(Default)]
pub struct Tracker {
    active: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    /// Registers one connection or socket until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> TrackerGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        TrackerGuard(Arc::clone(self))
    }

    /// Returns the number of connections and sockets open.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no connection or socket is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registering before the check means a guard dropped in between
            // still wakes this waiter.
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A registered connection or socket; see [`Tracker::enter`].
pub struct TrackerGuard(Arc<Tracker>);

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    /// Asserts that `at` lies between `earliest` and `latest` plus the
    /// millisecond the activity's clock rounds to.
    fn assert_between(at: Instant, earliest: Instant, latest: Instant) {
        assert!(
            at + Duration::from_millis(1) >= earliest,
            "{at:?} is before {earliest:?}"
        );
        assert!(at <= latest, "{at:?} is after {latest:?}");
    }

    #[tokio::test]
    async fn idle_deadline_follows_last_response() {
        let activity = Activity::new();
        let deadline = activity.deadline(&limits());
        assert_eq!(deadline.kind, DeadlineKind::Idle);
        assert_eq!(deadline.at, activity.opened + Duration::from_secs(60));

        tokio::time::sleep(Duration::from_millis(20)).await;
        activity.request_started();
        assert_eq!(activity.deadline(&limits()).kind, DeadlineKind::Recheck);
        let before = Instant::now();
        activity.request_finished();
        let after = Instant::now();
        let deadline = activity.deadline(&limits());
        assert_eq!(deadline.kind, DeadlineKind::Idle);
        let idle = Duration::from_secs(60);
        assert_between(deadline.at, before + idle, after + idle);
    }

    #[tokio::test]
    async fn head_deadline_starts_at_first_byte() {
        let activity = Activity::new();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = Instant::now();
        activity.on_read();
        let after = Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        activity.on_read();
        let deadline = activity.deadline(&limits());
        assert_eq!(deadline.kind, DeadlineKind::Head);
        let timeout = Duration::from_secs(5);
        assert_between(deadline.at, before + timeout, after + timeout);

        activity.request_started();
        activity.on_read();
        assert_eq!(
            activity.deadline(&limits()).kind,
            DeadlineKind::Recheck,
            "body bytes of a request in flight start no head"
        );
    }

    #[tokio::test]
    async fn tracker_waits_for_every_guard() {
        let tracker = Arc::new(Tracker::default());
        let first = tracker.enter();
        let second = tracker.enter();
        assert_eq!(tracker.active(), 2);
        drop(first);
        let waiting = tokio::time::timeout(Duration::from_millis(50), tracker.wait_idle()).await;
        assert!(waiting.is_err(), "one guard is still held");
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), tracker.wait_idle())
            .await
            .expect("the tracker is idle once every guard is dropped");
    }
}
