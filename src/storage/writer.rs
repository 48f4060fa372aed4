//! The writer thread: one OS thread owns the write connection and runs
//! every write of this process, so writes never contend with each other.
//!
//! [`Writer`] queues a job (a delivery, the readiness probe, a page cap, a
//! revocation) on a bounded channel and waits for its outcome. The thread
//! runs jobs in the order they were queued. For a delivery it takes every
//! delivery queued behind it as well (at most [`MAX_BATCH`], up to the
//! first job of another kind), runs them in one transaction and commits
//! once: group commit. Each delivery's outcome is sent back only after that
//! commit. Under light load a batch is one delivery, because the thread
//! never waits for more to arrive.
//!
//! A job waits at most [`WRITE_QUEUE_TIMEOUT`] before the thread takes it,
//! and its transaction then waits at most the busy timeout for a lock that
//! another process holds. So when the database stays locked or broken,
//! every delivery still gets an error within about 3 seconds.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::checkpointer::Checkpointer;
use super::write_connection::WriteConnection;
use super::{Committed, Durability, NewEvent, StorageError, WRITE_QUEUE_TIMEOUT};

/// Maximum number of deliveries one transaction commits. A larger batch
/// saves little more, because one commit's `fsync` is already shared, and
/// it would hold the write lock longer and keep more bodies in memory.
pub const MAX_BATCH: usize = 256;

/// Jobs that can wait in the queue: two full batches, so the next batch is
/// ready while one commits. A sender beyond it waits for room, within its
/// [`WRITE_QUEUE_TIMEOUT`].
const QUEUE_CAPACITY: usize = 2 * MAX_BATCH;

/// The name of the writer thread, as `top -H` and debuggers show it.
const THREAD_NAME: &str = "sqlite-writer";

/// A delivery copied out of the caller's borrowed [`NewEvent`], so that it
/// can wait in the queue.
struct QueuedEvent {
    received_at_ms: i64,
    event: String,
    user_id: String,
    session_id: Option<String>,
    seq_num: Option<u32>,
    body: String,
    normalized: Option<String>,
}

impl QueuedEvent {
    fn copy_of(event: &NewEvent<'_>) -> Self {
        Self {
            received_at_ms: event.received_at_ms,
            event: event.event.to_string(),
            user_id: event.user_id.to_string(),
            session_id: event.session_id.map(str::to_string),
            seq_num: event.seq_num,
            body: event.body.to_string(),
            normalized: event.normalized.map(str::to_string),
        }
    }

    fn as_new_event(&self) -> NewEvent<'_> {
        NewEvent {
            received_at_ms: self.received_at_ms,
            event: &self.event,
            user_id: &self.user_id,
            session_id: self.session_id.as_deref(),
            seq_num: self.seq_num,
            body: &self.body,
            normalized: self.normalized.as_deref(),
        }
    }
}

/// The channel a job's outcome goes back on.
type Reply<R> = oneshot::Sender<Result<R, StorageError>>;

/// One job in the queue: its input, with the channel its outcome goes back
/// on.
struct Request<T, R> {
    input: T,
    /// When the job was queued plus [`WRITE_QUEUE_TIMEOUT`]. The thread
    /// starts no job after this.
    deadline: Instant,
    /// Set by whichever side acts first: the thread when it takes the job,
    /// or [`Writer::submit`] when it stops waiting at the deadline. So a
    /// delivery that got a timeout error is never stored afterwards.
    claimed: Arc<AtomicBool>,
    reply: Reply<R>,
}

impl<T, R> Request<T, R> {
    /// Claims the job for the thread. Returns `None` when its caller has
    /// stopped waiting, by timing out or by being dropped, and when its
    /// deadline has passed, after sending the caller a timeout error.
    fn claim(self) -> Option<Self> {
        if self.reply.is_closed() || self.claimed.swap(true, Ordering::SeqCst) {
            return None;
        }
        if Instant::now() >= self.deadline {
            send_outcome(self.reply, Err(StorageError::QueueTimedOut));
            return None;
        }
        Some(self)
    }
}

fn send_outcome<R>(reply: Reply<R>, outcome: Result<R, StorageError>) {
    // A caller that was dropped after its job was taken gets no outcome,
    // but a stored delivery stays stored.
    let _ = reply.send(outcome);
}

/// A job for the writer thread.
enum Job {
    Record(Request<QueuedEvent, Committed>),
    ProbeWrite(Request<(), ()>),
    SetMaxPageCount(Request<Option<u32>, u32>),
    RevokeViewers(Request<String, u64>),
    /// Sent by [`Writer::close`]: the thread takes no new jobs, finishes
    /// those already queued and ends.
    Stop,
    /// Blocks the thread until the test drops its [`PausedWriter`].
    #[cfg(test)]
    Pause {
        paused: oneshot::Sender<()>,
        resume: std::sync::mpsc::Receiver<()>,
    },
}

/// The sending side of the job queue and the handle of the writer thread.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
    /// Set by [`Writer::close`], after which new jobs fail at once.
    closing: Arc<AtomicBool>,
    /// Taken by the first [`Writer::close`]. The lock makes a second call
    /// wait until the thread has ended, too.
    thread: Arc<Mutex<Option<WriterThread>>>,
}

/// The writer thread, and a channel that closes when the thread ends, so
/// that [`Writer::close`] can wait for it without blocking the runtime.
struct WriterThread {
    handle: JoinHandle<()>,
    ended: oneshot::Receiver<()>,
}

impl Writer {
    /// Starts the writer thread, which opens the database at `path`, and
    /// returns once it is open.
    pub(super) async fn start(path: PathBuf, durability: Durability) -> Result<Self, StorageError> {
        let (jobs, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let (opened_sender, opened) = oneshot::channel();
        let (ended_sender, ended) = oneshot::channel::<()>();
        let handle = std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || {
                // Dropped when the thread ends, even by a panic.
                let _ended = ended_sender;
                let opened = WriteConnection::open(&path, durability).and_then(|connection| {
                    let checkpointer = Checkpointer::start(&path)?;
                    Ok((connection, checkpointer))
                });
                match opened {
                    Ok((connection, checkpointer)) => {
                        let _ = opened_sender.send(Ok(()));
                        run(connection, receiver);
                        // Stops checkpointing before the write connection
                        // closes, which runs the last checkpoint itself.
                        drop(checkpointer);
                    }
                    Err(error) => {
                        let _ = opened_sender.send(Err(error));
                    }
                }
            })
            .map_err(StorageError::StartThread)?;

        // A thread that panicked while opening drops the sender unanswered.
        let opened = opened.await.unwrap_or(Err(StorageError::WriterStopped));
        let thread = WriterThread { handle, ended };
        if let Err(error) = opened {
            join(thread).await;
            return Err(error);
        }
        Ok(Self {
            jobs,
            closing: Arc::default(),
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Queues one delivery and waits for the commit of the transaction that
    /// contains it, or for its failure.
    pub(super) async fn record(&self, event: NewEvent<'_>) -> Result<Committed, StorageError> {
        self.submit(QueuedEvent::copy_of(&event), Job::Record).await
    }

    pub(super) async fn probe_write(&self) -> Result<(), StorageError> {
        self.submit((), Job::ProbeWrite).await
    }

    pub(super) async fn set_max_page_count(&self, pages: Option<u32>) -> Result<u32, StorageError> {
        self.submit(pages, Job::SetMaxPageCount).await
    }

    pub(super) async fn revoke_viewers(&self, user_id: &str) -> Result<u64, StorageError> {
        self.submit(user_id.to_string(), Job::RevokeViewers).await
    }

    /// Queues a job and waits for its outcome. The job fails with
    /// [`StorageError::QueueTimedOut`] if the thread has not taken it within
    /// [`WRITE_QUEUE_TIMEOUT`], and with [`StorageError::WriterStopped`]
    /// after [`Writer::close`].
    async fn submit<T, R>(&self, input: T, job: fn(Request<T, R>) -> Job) -> Result<R, StorageError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(StorageError::WriterStopped);
        }
        let deadline = Instant::now() + WRITE_QUEUE_TIMEOUT;
        let claimed = Arc::new(AtomicBool::new(false));
        let (reply, mut outcome) = oneshot::channel();
        let request = Request {
            input,
            deadline,
            claimed: Arc::clone(&claimed),
            reply,
        };

        let timer_deadline = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(timer_deadline, self.jobs.send(job(request))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StorageError::WriterStopped),
            Err(_) => return Err(StorageError::QueueTimedOut),
        }

        let answered = match tokio::time::timeout_at(timer_deadline, &mut outcome).await {
            Ok(answered) => answered,
            // Not taken yet, and from now on never taken.
            Err(_) if !claimed.swap(true, Ordering::SeqCst) => return Err(StorageError::QueueTimedOut),
            // Taken just in time. It started before the deadline, and the
            // busy timeout bounds how long it runs.
            Err(_) => outcome.await,
        };
        // The thread drops a claimed job without an outcome only if it
        // panicked.
        answered.unwrap_or(Err(StorageError::WriterStopped))
    }

    /// Stops taking jobs, waits until every queued one has run or failed,
    /// and joins the thread. Later jobs fail with
    /// [`StorageError::WriterStopped`].
    pub(super) async fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // The queue is bounded, so this waits for room, which the thread
        // makes as it runs the queued jobs. It fails at once if the thread
        // has ended.
        let _ = self.jobs.send(Job::Stop).await;
        let mut thread = self.thread.lock().await;
        if let Some(thread) = thread.take() {
            join(thread).await;
        }
    }

    /// Returns the number of jobs waiting in the queue, for tests that
    /// arrange a batch.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Blocks the writer thread until the returned guard is dropped, so
    /// that a test can queue jobs behind it.
    #[cfg(test)]
    pub(super) async fn pause(&self) -> PausedWriter {
        let (paused_sender, paused) = oneshot::channel();
        let (resume_sender, resume) = std::sync::mpsc::channel();
        let job = Job::Pause {
            paused: paused_sender,
            resume,
        };
        assert!(self.jobs.send(job).await.is_ok(), "the writer thread has ended");
        paused.await.expect("the writer thread ended instead of pausing");
        PausedWriter { _resume: resume_sender }
    }
}

/// Keeps the writer thread paused while it lives.
#[cfg(test)]
pub(super) struct PausedWriter {
    _resume: std::sync::mpsc::Sender<()>,
}

/// Waits for `thread` to end and joins it.
async fn join(thread: WriterThread) {
    // An error only means the sender was dropped, which is the signal.
    let _ = thread.ended.await;
    if thread.handle.join().is_err() {
        tracing::error!("the database writer thread panicked");
    }
}

/// Runs jobs until the queue is closed and empty: the writer thread's loop.
fn run(mut connection: WriteConnection, mut jobs: mpsc::Receiver<Job>) {
    // A job that ended the previous batch, to run next.
    let mut held_back = None;
    loop {
        let job = match held_back.take() {
            Some(job) => job,
            None => match jobs.blocking_recv() {
                Some(job) => job,
                None => return,
            },
        };
        match job {
            Job::Record(first) => {
                let mut batch = Vec::new();
                add_to_batch(&mut batch, first);
                // Deliveries queued while the previous job ran join this
                // transaction.
                while batch.len() < MAX_BATCH {
                    match jobs.try_recv() {
                        Ok(Job::Record(request)) => add_to_batch(&mut batch, request),
                        Ok(other) => {
                            held_back = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    commit_batch(&mut connection, batch);
                }
            }
            Job::ProbeWrite(request) => run_alone(request, |()| connection.probe_write()),
            Job::SetMaxPageCount(request) => run_alone(request, |pages| connection.set_max_page_count(pages)),
            Job::RevokeViewers(request) => run_alone(request, |user_id| connection.revoke_viewers(&user_id)),
            Job::Stop => {
                // Senders now fail at once; jobs already queued are still
                // received.
                jobs.close();
            }
            #[cfg(test)]
            Job::Pause { paused, resume } => {
                let _ = paused.send(());
                // Returns an error once the test drops its sender.
                let _ = resume.recv();
            }
        }
    }
}

/// A delivery taken into a batch.
type Batched = Request<QueuedEvent, Committed>;

/// Takes `request` into `batch`, unless its caller stopped waiting or its
/// deadline has passed.
fn add_to_batch(batch: &mut Vec<Batched>, request: Batched) {
    if let Some(request) = request.claim() {
        batch.push(request);
    }
}

/// Runs a job other than a delivery and sends its outcome.
fn run_alone<T, R>(request: Request<T, R>, write: impl FnOnce(T) -> Result<R, StorageError>) {
    if let Some(request) = request.claim() {
        send_outcome(request.reply, write(request.input));
    }
}

/// Commits `batch` in one transaction and sends each delivery its outcome.
/// If the transaction fails, a batch of one gets the error, and the
/// deliveries of a larger batch are retried one by one, so one delivery
/// that cannot be stored does not fail the others.
fn commit_batch(connection: &mut WriteConnection, batch: Vec<Batched>) {
    let events: Vec<NewEvent<'_>> = batch.iter().map(|request| request.input.as_new_event()).collect();
    let outcome = connection.commit_events(&events);
    drop(events);

    let error = match outcome {
        Ok(recorded) => {
            let batch_size = batch.len();
            for (index, (request, recorded)) in batch.into_iter().zip(recorded).enumerate() {
                let committed = Committed {
                    recorded,
                    batch_size: (index == 0).then_some(batch_size),
                };
                send_outcome(request.reply, Ok(committed));
            }
            return;
        }
        Err(error) => error,
    };

    if batch.len() == 1 {
        let request = batch.into_iter().next().expect("a batch of one");
        send_outcome(request.reply, Err(error));
        return;
    }
    if let Some(suppressed) = crate::warnings::admit("write batch failed", &error.kind()) {
        tracing::warn!(
            deliveries = batch.len(),
            error = %error,
            suppressed,
            "a batch of deliveries failed to commit; retrying each delivery in its own transaction"
        );
    }
    let cause = Arc::new(error);
    for request in batch {
        commit_alone(connection, request, &cause);
    }
}

/// Retries one delivery of a failed batch in its own transaction. A
/// delivery whose deadline has passed gets `cause`, the batch's failure,
/// instead, so the retries of a large batch on a database that stays locked
/// cannot add up beyond the bounded wait.
fn commit_alone(connection: &mut WriteConnection, request: Batched, cause: &Arc<StorageError>) {
    if Instant::now() >= request.deadline {
        send_outcome(request.reply, Err(StorageError::Shared(Arc::clone(cause))));
        return;
    }
    let outcome = connection.commit_events(&[request.input.as_new_event()]);
    let outcome = outcome.map(|recorded| Committed {
        recorded: recorded.into_iter().next().expect("one outcome per delivery"),
        batch_size: Some(1),
    });
    send_outcome(request.reply, outcome);
}
