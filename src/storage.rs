//! Storage: the raw event log and the session index in an embedded SQLite
//! database.
//!
//! Every delivery is committed before the webhook responds. All writes run
//! on one OS thread that owns the only write connection, through rusqlite
//! (see `storage/writer.rs`), and deliveries that arrive together share one
//! transaction and one commit. Reads go through a pool of read-only sqlx
//! connections beside it.
//!
//! SQLite runs in WAL mode. With `synchronous=FULL` (the default) a commit
//! also survives power loss. With `NORMAL` it survives a crash of this
//! process, but the last commits may be lost if the machine loses power.
//!
//! Idempotency rests on two partial unique indexes rather than a
//! read-then-write check, so concurrent repeats of one delivery cannot both be
//! stored.

mod checkpointer;
mod write_connection;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Row};

use crate::payload::{FinalReport, INFERENCE_COMPLETE, InferenceResult, SESSION_COMPLETE};

pub use writer::MAX_BATCH;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    received_at_ms INTEGER NOT NULL,
    event TEXT NOT NULL,
    user_id TEXT NOT NULL,
    session_id TEXT,
    seq_num INTEGER,
    -- The body exactly as received.
    body TEXT NOT NULL,
    -- The validated payload as JSON; null for events this server does not know.
    normalized TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_inference_key
    ON events (user_id, session_id, seq_num) WHERE event = 'INFERENCE_COMPLETE';
CREATE UNIQUE INDEX IF NOT EXISTS events_session_key
    ON events (user_id, session_id) WHERE event = 'SESSION_COMPLETE';
CREATE INDEX IF NOT EXISTS events_by_session ON events (user_id, session_id);

CREATE TABLE IF NOT EXISTS sessions (
    user_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, session_id)
);

-- Viewer token versions. A user without a row is at version 0; `revoke`
-- raises the version, which invalidates every token issued before.
CREATE TABLE IF NOT EXISTS viewer_versions (
    user_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    revoked_at_ms INTEGER NOT NULL
);

-- One row that the readiness check rewrites, so that it commits a real write.
CREATE TABLE IF NOT EXISTS readiness (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at_ms INTEGER NOT NULL,
    reserve BLOB
);
"#;

/// The viewer token version of a user without a row in `viewer_versions`:
/// one whose links were never revoked.
pub const FIRST_TOKEN_VERSION: u64 = 0;

/// How long a write waits for a lock that another process holds (the
/// `sqlite3` shell, a backup tool) before it fails and the webhook responds
/// with 503. Writes of this process never wait for each other here,
/// because one thread runs them all on one connection.
pub const WRITE_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a write waits in the queue of the writer thread before the
/// thread starts it. With [`WRITE_BUSY_TIMEOUT`] it bounds a delivery's time
/// in the database to about 3 seconds, within the 5 seconds Asleep advises
/// for a response.
pub const WRITE_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a read waits for a lock. Readers in WAL mode wait only while
/// SQLite recovers or resets the write-ahead log, which is brief.
const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a readiness check's outcome is reused. Each check commits a
/// write, so without this a burst of `/readyz` requests would compete with
/// deliveries for the writer.
pub const READINESS_REUSE: Duration = Duration::from_secs(1);

/// Room the readiness check reserves and gives back: a 48-hour final report
/// is about 100 KiB and is stored twice, as received and validated.
const READINESS_RESERVE_BYTES: i64 = 256 * 1024;

/// A storage failure. The webhook turns it into 503 so Asleep delivers again.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An error from sqlx, which runs the reads.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A failure of the write connection.
    #[error("database error: {0}")]
    Write(#[from] rusqlite::Error),
    /// A write that the writer thread did not start within
    /// [`WRITE_QUEUE_TIMEOUT`].
    #[error("timed out waiting for the database writer")]
    QueueTimedOut,
    /// A write after [`Store::close`], or after the writer thread ended
    /// unexpectedly.
    #[error("the database writer has stopped")]
    WriterStopped,
    #[error("creating the database file failed: {0}")]
    CreateFile(std::io::Error),
    #[error("starting a database thread (writer or checkpoint) failed: {0}")]
    StartThread(std::io::Error),
    #[error("stored event {id} holds invalid JSON: {source}")]
    Corrupt { id: i64, source: serde_json::Error },
    /// The failure of a transaction that contained several deliveries,
    /// given to each one whose deadline passed before it could be retried
    /// alone.
    #[error("{0}")]
    Shared(Arc<StorageError>),
}

impl StorageError {
    /// Returns a short, stable name of the failure, such as `SQLITE_BUSY` or
    /// `write queue timed out`, that groups repeats of one problem in logs.
    pub fn kind(&self) -> String {
        match self {
            StorageError::Database(sqlx::Error::Database(error)) => match error.code() {
                Some(code) => match code.parse::<i64>() {
                    Ok(code) => sqlite_code_name(code),
                    Err(_) => format!("SQLite code {code}"),
                },
                None => "database error".to_string(),
            },
            StorageError::Database(sqlx::Error::PoolTimedOut) => "pool timed out".to_string(),
            StorageError::Database(sqlx::Error::PoolClosed) => "pool closed".to_string(),
            StorageError::Database(sqlx::Error::Io(error)) => format!("I/O error {:?}", error.kind()),
            StorageError::Database(_) => "database error".to_string(),
            StorageError::Write(rusqlite::Error::SqliteFailure(error, _)) => {
                sqlite_code_name(i64::from(error.extended_code))
            }
            StorageError::Write(_) => "database error".to_string(),
            StorageError::QueueTimedOut => "write queue timed out".to_string(),
            StorageError::WriterStopped => "writer stopped".to_string(),
            StorageError::CreateFile(error) | StorageError::StartThread(error) => {
                format!("I/O error {:?}", error.kind())
            }
            StorageError::Corrupt { .. } => "corrupt event".to_string(),
            StorageError::Shared(cause) => cause.kind(),
        }
    }
}

/// Names a SQLite result code, extended or primary, by its primary code's
/// constant from the SQLite documentation.
fn sqlite_code_name(code: i64) -> String {
    let name = match code & 0xff {
        5 => "SQLITE_BUSY",
        6 => "SQLITE_LOCKED",
        8 => "SQLITE_READONLY",
        10 => "SQLITE_IOERR",
        11 => "SQLITE_CORRUPT",
        13 => "SQLITE_FULL",
        14 => "SQLITE_CANTOPEN",
        _ => return format!("SQLite code {code}"),
    };
    name.to_string()
}

/// Durability level of a SQLite commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives a process crash and power loss.
    Full,
    /// `synchronous=NORMAL`: a commit survives a process crash; the last
    /// commits can be lost on power loss.
    Normal,
}

/// One delivery to be committed.
pub struct NewEvent<'a> {
    pub received_at_ms: i64,
    pub event: &'a str,
    pub user_id: &'a str,
    pub session_id: Option<&'a str>,
    pub seq_num: Option<u32>,
    pub body: &'a str,
    pub normalized: Option<&'a str>,
}

/// Outcome of committing a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// Newly stored. `session_first_seen_ms` is when the session's first
    /// event arrived, which orders a user's nights.
    Stored { session_first_seen_ms: Option<i64> },
    /// Already stored under the same key; the first copy's validated payload.
    Duplicate { existing: Option<String> },
}

/// Outcome of [`Store::record`], with the transaction that committed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub recorded: Recorded,
    /// The number of deliveries the transaction committed, set on its first
    /// delivery only, so that observing it per delivery counts each
    /// transaction once.
    pub batch_size: Option<usize>,
}

/// A session of a user, as listed on the history page.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    pub session_id: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Epochs the partial results cover so far: the highest `seq_num` + 1.
    pub epochs_so_far: Option<i64>,
    pub report: Option<FinalReport>,
}

/// A session with results but no final report yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    pub user_id: String,
    pub session_id: String,
    pub first_seen_ms: i64,
    /// When its latest event arrived, in Unix milliseconds.
    pub last_seen_ms: i64,
}

/// Everything stored for one session, enough to rebuild its timeline.
#[derive(Debug, Clone, Default)]
pub struct SessionEvents {
    pub first_seen_ms: i64,
    /// Partial results with the time each was received.
    pub results: Vec<(InferenceResult, i64)>,
    pub report: Option<FinalReport>,
}

/// The database: one writer thread with the only write connection, because
/// SQLite serializes writers anyway and a single connection avoids
/// `SQLITE_BUSY` between them, and a pool of readers that WAL mode lets run
/// beside it.
#[derive(Clone)]
pub struct Store {
    /// The queue of the writer thread, which runs every write and commits
    /// deliveries in batches.
    writer: writer::Writer,
    reader: SqlitePool,
    /// When the last readiness check ran and its outcome. The lock also makes
    /// concurrent checks wait for one probe instead of each running their own.
    readiness: Arc<tokio::sync::Mutex<Option<WriteCheck>>>,
}

/// A readiness check's time and outcome.
type WriteCheck = (Instant, Result<(), Arc<StorageError>>);

impl Store {
    /// Opens the database at `path`, creating the file, its folder and the
    /// schema on first start.
    pub async fn open(path: &Path, durability: Durability) -> Result<Self, StorageError> {
        // The writer thread creates the file and the schema before the
        // readers open it.
        let writer = writer::Writer::start(path.to_path_buf(), durability).await?;

        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(READ_BUSY_TIMEOUT)
            .read_only(true)
            // A statement slowed by a lock is reported by the 503 it causes,
            // logged once per interval; sqlx would warn on every one.
            .log_slow_statements(log::LevelFilter::Debug, std::time::Duration::from_secs(1));
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await;
        let reader = match reader {
            Ok(reader) => reader,
            Err(error) => {
                writer.close().await;
                return Err(error.into());
            }
        };
        Ok(Self {
            writer,
            reader,
            readiness: Arc::default(),
        })
    }

    /// Checks that a write commits right now, within [`WRITE_QUEUE_TIMEOUT`]
    /// plus [`WRITE_BUSY_TIMEOUT`]. An outcome is reused for
    /// [`READINESS_REUSE`].
    ///
    /// The check takes the write lock, reserves room for a large delivery
    /// and gives it back, then commits one small row. So it fails while
    /// another process holds the lock, when the database is at its page cap,
    /// and when SQLite cannot write the commit, as on an I/O error.
    ///
    /// NOTE: the reserved room is rolled back before it reaches the disk, so
    /// a full disk shows only when the small commit needs new space.
    /// Deliveries still get 503 then, because their own commits fail.
    pub async fn check_writable(&self) -> Result<(), Arc<StorageError>> {
        let mut last = self.readiness.lock().await;
        if let Some((checked_at, outcome)) = last.as_ref()
            && checked_at.elapsed() < READINESS_REUSE
        {
            return outcome.clone();
        }
        let outcome = self.writer.probe_write().await.map_err(Arc::new);
        *last = Some((Instant::now(), outcome.clone()));
        outcome
    }

    /// Caps the database file at `pages` pages (of `PRAGMA page_size` bytes,
    /// 4096 unless the file was created otherwise), or lifts the cap with
    /// `None`. Returns the cap in effect, which SQLite never sets below the
    /// current size.
    ///
    /// Past the cap, a write fails with `SQLITE_FULL` just as on a full
    /// disk, and the webhook responds with 503. Fault tests use it to fill the
    /// database without filling a disk. An operator can use it to stop
    /// intake before the disk runs out. The cap lasts until it is lifted or
    /// the process exits, also when the write connection is reopened after
    /// a failure.
    pub async fn set_max_page_count(&self, pages: Option<u32>) -> Result<u32, StorageError> {
        self.writer.set_max_page_count(pages).await
    }

    /// Commits one delivery, or reports it as a duplicate of one already
    /// stored under the same idempotency key. Returns only after the
    /// transaction that contains the delivery has committed or failed.
    ///
    /// The delivery may share its transaction with others recorded at the
    /// same time. Each one is then stored or found a duplicate just as if
    /// they had been committed one after the other, in the order they were
    /// queued. A delivery whose transaction cannot start within
    /// [`WRITE_QUEUE_TIMEOUT`] fails with [`StorageError::QueueTimedOut`],
    /// or with the error of the failed batch it was in. After
    /// [`Store::close`], `record` fails with [`StorageError::WriterStopped`].
    pub async fn record(&self, event: NewEvent<'_>) -> Result<Committed, StorageError> {
        self.writer.record(event).await
    }

    /// Returns the session whose first event arrived last: the user's current
    /// night.
    pub async fn latest_session(&self, user_id: &str) -> Result<Option<String>, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT session_id FROM sessions WHERE user_id = ?
             ORDER BY first_seen_ms DESC, rowid DESC LIMIT 1",
        )
        .bind(user_id)
        .fetch_optional(&self.reader)
        .await?)
    }

    /// Loads every stored event of one session; `None` when there is none.
    pub async fn session_events(&self, user_id: &str, session_id: &str) -> Result<Option<SessionEvents>, StorageError> {
        let Some(first_seen_ms) =
            sqlx::query_scalar::<_, i64>("SELECT first_seen_ms FROM sessions WHERE user_id = ? AND session_id = ?")
                .bind(user_id)
                .bind(session_id)
                .fetch_optional(&self.reader)
                .await?
        else {
            return Ok(None);
        };

        let rows = sqlx::query(
            "SELECT id, event, received_at_ms, normalized FROM events
             WHERE user_id = ? AND session_id = ? AND normalized IS NOT NULL ORDER BY id",
        )
        .bind(user_id)
        .bind(session_id)
        .fetch_all(&self.reader)
        .await?;

        let mut events = SessionEvents {
            first_seen_ms,
            ..SessionEvents::default()
        };
        for row in rows {
            let id: i64 = row.get("id");
            let normalized: String = row.get("normalized");
            match row.get::<&str, _>("event") {
                INFERENCE_COMPLETE => events
                    .results
                    .push((decode(id, &normalized)?, row.get("received_at_ms"))),
                SESSION_COMPLETE => events.report = Some(decode(id, &normalized)?),
                _ => {}
            }
        }
        Ok(Some(events))
    }

    /// Lists a user's sessions, newest first, with their final reports.
    pub async fn sessions(&self, user_id: &str) -> Result<Vec<SessionEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT s.session_id, s.first_seen_ms, s.last_seen_ms, e.id, e.normalized,
                 (SELECT max(p.seq_num) + 1 FROM events p
                  WHERE p.user_id = s.user_id AND p.session_id = s.session_id
                      AND p.event = 'INFERENCE_COMPLETE') AS epochs_so_far
             FROM sessions s
             LEFT JOIN events e ON e.user_id = s.user_id AND e.session_id = s.session_id
                 AND e.event = 'SESSION_COMPLETE'
             WHERE s.user_id = ?
             ORDER BY s.first_seen_ms DESC, s.rowid DESC",
        )
        .bind(user_id)
        .fetch_all(&self.reader)
        .await?;

        rows.into_iter()
            .map(|row| {
                let report = match row.get::<Option<String>, _>("normalized") {
                    Some(normalized) => Some(decode(row.get("id"), &normalized)?),
                    None => None,
                };
                Ok(SessionEntry {
                    session_id: row.get("session_id"),
                    first_seen_ms: row.get("first_seen_ms"),
                    last_seen_ms: row.get("last_seen_ms"),
                    epochs_so_far: row.get("epochs_so_far"),
                    report,
                })
            })
            .collect()
    }

    /// Loads the final report of one session; `None` when the session has
    /// none yet or does not exist. The `events_session_key` index serves
    /// the lookup.
    pub async fn final_report(&self, user_id: &str, session_id: &str) -> Result<Option<FinalReport>, StorageError> {
        let row = sqlx::query(
            "SELECT id, normalized FROM events
             WHERE user_id = ? AND session_id = ? AND event = 'SESSION_COMPLETE' AND normalized IS NOT NULL",
        )
        .bind(user_id)
        .bind(session_id)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|row| decode(row.get("id"), row.get("normalized"))).transpose()
    }

    /// Loads the final reports of all of a user's sessions, in the order
    /// they arrived. Sessions without a final report are left out.
    pub async fn final_reports(&self, user_id: &str) -> Result<Vec<FinalReport>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, normalized FROM events
             WHERE user_id = ? AND event = 'SESSION_COMPLETE' AND normalized IS NOT NULL ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|row| decode(row.get("id"), row.get("normalized")))
            .collect()
    }

    /// Returns `user_id`'s current viewer token version:
    /// [`FIRST_TOKEN_VERSION`] until the user's links are first revoked.
    ///
    /// It is read from the database on every request, through the reader
    /// pool, so a `revoke` run by another process takes effect on the
    /// running server at once.
    pub async fn viewer_version(&self, user_id: &str) -> Result<u64, StorageError> {
        let version: Option<i64> = sqlx::query_scalar("SELECT version FROM viewer_versions WHERE user_id = ?")
            .bind(user_id)
            .fetch_optional(&self.reader)
            .await?;
        Ok(version.map_or(FIRST_TOKEN_VERSION, |version| version.max(0) as u64))
    }

    /// Returns the sum of every user's token version. Versions only grow, so
    /// any revocation, by this process or another, raises the sum.
    pub async fn revocation_count(&self) -> Result<i64, StorageError> {
        let sum: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(version), 0) FROM viewer_versions")
            .fetch_one(&self.reader)
            .await?;
        Ok(sum)
    }

    /// Raises `user_id`'s viewer token version by one, so every link and
    /// cookie issued for the user so far stops working, and returns the new
    /// version.
    pub async fn revoke_viewers(&self, user_id: &str) -> Result<u64, StorageError> {
        self.writer.revoke_viewers(user_id).await
    }

    /// Lists the sessions that have results but no final report and whose
    /// last event arrived at or after `since_ms` (Unix milliseconds), most
    /// recent first: the nights that are live or were cut short.
    pub async fn open_sessions(&self, since_ms: i64) -> Result<Vec<OpenSession>, StorageError> {
        let rows = sqlx::query(
            "SELECT user_id, session_id, first_seen_ms, last_seen_ms FROM sessions
             WHERE complete = 0 AND last_seen_ms >= ?
             ORDER BY last_seen_ms DESC, rowid DESC",
        )
        .bind(since_ms)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| OpenSession {
                user_id: row.get("user_id"),
                session_id: row.get("session_id"),
                first_seen_ms: row.get("first_seen_ms"),
                last_seen_ms: row.get("last_seen_ms"),
            })
            .collect())
    }

    /// Counts stored events, for tests and operators.
    pub async fn event_count(&self) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.reader)
            .await?)
    }

    /// Stops taking writes, waits until the queued ones are committed or
    /// have failed, ends the writer thread and closes the reader pool.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

fn decode<T: DeserializeOwned>(id: i64, normalized: &str) -> Result<T, StorageError> {
    serde_json::from_str(normalized).map_err(|source| StorageError::Corrupt { id, source })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn sqlite_codes_are_named_by_primary_code() {
        assert_eq!(sqlite_code_name(5), "SQLITE_BUSY");
        // SQLITE_BUSY_SNAPSHOT is 5 | (2 << 8).
        assert_eq!(sqlite_code_name(517), "SQLITE_BUSY");
        assert_eq!(sqlite_code_name(13), "SQLITE_FULL");
        assert_eq!(sqlite_code_name(99), "SQLite code 99");
    }

    #[test]
    fn write_errors_are_named_by_primary_code() {
        let failure = |code| StorageError::Write(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None));
        // SQLITE_IOERR_FSYNC is 10 | (4 << 8).
        assert_eq!(failure(1034).kind(), "SQLITE_IOERR");
        assert_eq!(failure(13).kind(), "SQLITE_FULL");
        assert_eq!(
            StorageError::Shared(Arc::new(failure(5))).kind(),
            "SQLITE_BUSY",
            "a batch's failure keeps its name"
        );
        assert_eq!(
            StorageError::Write(rusqlite::Error::QueryReturnedNoRows).kind(),
            "database error"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn new_database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;

        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("private.db");
        let store = Store::open(&path, Durability::Normal).await.unwrap();
        store.revoke_viewers("u").await.unwrap();
        for file in ["private.db", "private.db-wal", "private.db-shm"] {
            let mode = std::fs::metadata(folder.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file} has mode {:o}", mode & 0o777);
        }
        store.close().await;
    }

    /// The user of every delivery in the batch tests.
    const BATCH_USER: &str = "batch-user";

    /// A delivery for the batch tests, owned so that a spawned task can
    /// record it. Its body doubles as its validated payload.
    #[derive(Debug, Clone)]
    struct Delivery {
        event: &'static str,
        session_id: String,
        seq_num: Option<u32>,
        received_at_ms: i64,
        body: String,
    }

    fn result(session_id: &str, seq_num: u32, body: String) -> Delivery {
        Delivery {
            event: INFERENCE_COMPLETE,
            session_id: session_id.to_string(),
            seq_num: Some(seq_num),
            received_at_ms: 1_000 + i64::from(seq_num),
            body,
        }
    }

    fn final_report(session_id: &str, body: String) -> Delivery {
        Delivery {
            event: SESSION_COMPLETE,
            session_id: session_id.to_string(),
            seq_num: None,
            received_at_ms: 9_000,
            body,
        }
    }

    async fn record(store: &Store, delivery: &Delivery) -> Result<Committed, StorageError> {
        store
            .record(NewEvent {
                received_at_ms: delivery.received_at_ms,
                event: delivery.event,
                user_id: BATCH_USER,
                session_id: Some(&delivery.session_id),
                seq_num: delivery.seq_num,
                body: &delivery.body,
                normalized: Some(&delivery.body),
            })
            .await
    }

    /// Records each delivery in its own task, all at once.
    fn spawn_records(
        store: &Store,
        deliveries: &[Delivery],
    ) -> Vec<tokio::task::JoinHandle<Result<Committed, StorageError>>> {
        deliveries
            .iter()
            .map(|delivery| {
                let (store, delivery) = (store.clone(), delivery.clone());
                tokio::spawn(async move { record(&store, &delivery).await })
            })
            .collect()
    }

    /// Waits until at least `count` deliveries wait in the write queue.
    async fn wait_until_queued(store: &Store, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while store.writer.queued() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} deliveries were queued",
                store.writer.queued()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Records `deliveries` concurrently in one batch, and returns their
    /// outcomes in the same order. The test keeps the writer thread paused
    /// until every delivery waits in the queue, so the thread takes them all
    /// at once.
    async fn record_in_one_batch(store: &Store, deliveries: &[Delivery]) -> Vec<Result<Committed, StorageError>> {
        let paused = store.writer.pause().await;
        let tasks = spawn_records(store, deliveries);
        wait_until_queued(store, deliveries.len()).await;
        drop(paused);

        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    }

    async fn open_store(folder: &tempfile::TempDir) -> Store {
        Store::open(&folder.path().join("batch.db"), Durability::Normal)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn concurrent_records_are_all_stored() {
        let folder = tempfile::tempdir().unwrap();
        let store = open_store(&folder).await;

        let deliveries: Vec<Delivery> = (0..100)
            .map(|seq_num| result("night", seq_num, format!(r#"{{"seq_num":{seq_num}}}"#)))
            .collect();
        let outcomes = record_in_one_batch(&store, &deliveries).await;
        let mut first_seen = BTreeSet::new();
        for (delivery, outcome) in deliveries.iter().zip(&outcomes) {
            match outcome {
                Ok(Committed {
                    recorded: Recorded::Stored { session_first_seen_ms },
                    ..
                }) => first_seen.insert(*session_first_seen_ms),
                other => panic!("{delivery:?} was not stored: {other:?}"),
            };
        }
        assert_eq!(first_seen.len(), 1, "one session, one first arrival: {first_seen:?}");
        let batch_sizes: Vec<usize> = outcomes
            .iter()
            .filter_map(|outcome| outcome.as_ref().unwrap().batch_size)
            .collect();
        assert_eq!(batch_sizes, [100], "the 100 deliveries were not one transaction");
        assert_eq!(store.event_count().await.unwrap(), 100);

        // Without a pause, batches form as deliveries arrive. Every
        // delivery is still stored and counted in exactly one batch.
        let deliveries: Vec<Delivery> = (100..164)
            .map(|seq_num| result("night", seq_num, format!(r#"{{"seq_num":{seq_num}}}"#)))
            .collect();
        let mut committed = 0;
        for task in spawn_records(&store, &deliveries) {
            let outcome = task.await.unwrap().unwrap();
            assert!(matches!(outcome.recorded, Recorded::Stored { .. }), "{outcome:?}");
            committed += outcome.batch_size.unwrap_or(0);
        }
        assert_eq!(committed, 64);
        assert_eq!(store.event_count().await.unwrap(), 164);
        store.close().await;
    }

    /// Asserts that of two deliveries with one idempotency key in one batch,
    /// one was stored and the other is a duplicate of it.
    fn assert_one_stored(deliveries: [&Delivery; 2], outcomes: [&Committed; 2]) {
        let stored: Vec<usize> = (0..2)
            .filter(|&index| matches!(outcomes[index].recorded, Recorded::Stored { .. }))
            .collect();
        assert_eq!(stored.len(), 1, "{outcomes:?}");
        let (stored, repeat) = (stored[0], 1 - stored[0]);
        assert_eq!(
            outcomes[repeat].recorded,
            Recorded::Duplicate {
                existing: Some(deliveries[stored].body.clone())
            },
            "the repeat does not return the stored payload"
        );
    }

    #[tokio::test]
    async fn duplicates_in_one_batch_behave_sequentially() {
        let folder = tempfile::tempdir().unwrap();
        let store = open_store(&folder).await;
        let deliveries = [
            result("night", 0, r#"{"copy":"first"}"#.to_string()),
            result("night", 0, r#"{"copy":"second"}"#.to_string()),
            final_report("night", r#"{"report":"first"}"#.to_string()),
            result("night", 1, r#"{"copy":"only"}"#.to_string()),
            final_report("night", r#"{"report":"second"}"#.to_string()),
        ];

        let outcomes: Vec<Committed> = record_in_one_batch(&store, &deliveries)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let batch_sizes: Vec<usize> = outcomes.iter().filter_map(|outcome| outcome.batch_size).collect();
        assert_eq!(batch_sizes, [5], "the deliveries were not one transaction");
        assert_one_stored([&deliveries[0], &deliveries[1]], [&outcomes[0], &outcomes[1]]);
        assert_one_stored([&deliveries[2], &deliveries[4]], [&outcomes[2], &outcomes[4]]);
        assert!(
            matches!(outcomes[3].recorded, Recorded::Stored { .. }),
            "{:?}",
            outcomes[3]
        );
        assert_eq!(store.event_count().await.unwrap(), 3);
        assert_eq!(
            store.open_sessions(0).await.unwrap(),
            [],
            "the stored final report did not complete the session"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn failing_delivery_does_not_fail_its_batch() {
        let folder = tempfile::tempdir().unwrap();
        let store = open_store(&folder).await;
        // SQLite never sets the cap below the current size, so a cap of one
        // page returns that size. 32 pages more leave 128 KiB of room.
        let size = store.set_max_page_count(Some(1)).await.unwrap();
        store.set_max_page_count(Some(size + 32)).await.unwrap();

        let mut deliveries: Vec<Delivery> = (0..10)
            .map(|seq_num| result("night", seq_num, format!(r#"{{"seq_num":{seq_num}}}"#)))
            .collect();
        let too_large = result("night", 99, format!(r#"{{"padding":"{}"}}"#, "x".repeat(512 * 1024)));
        deliveries.insert(5, too_large.clone());

        let outcomes = record_in_one_batch(&store, &deliveries).await;
        for (delivery, outcome) in deliveries.iter().zip(&outcomes) {
            if delivery.seq_num == Some(99) {
                let error = outcome.as_ref().expect_err("a delivery past the page cap was stored");
                assert_eq!(error.kind(), "SQLITE_FULL", "{error}");
            } else {
                let committed = outcome
                    .as_ref()
                    .unwrap_or_else(|error| panic!("{delivery:?} failed with the batch: {error}"));
                assert!(matches!(committed.recorded, Recorded::Stored { .. }), "{committed:?}");
                assert_eq!(committed.batch_size, Some(1), "not retried in its own transaction");
            }
        }
        assert_eq!(store.event_count().await.unwrap(), 10);

        // The failed transactions left the connection outside any
        // transaction; the next one commits.
        store.set_max_page_count(None).await.unwrap();
        let committed = record(&store, &too_large).await.unwrap();
        assert!(matches!(committed.recorded, Recorded::Stored { .. }), "{committed:?}");
        assert_eq!(store.event_count().await.unwrap(), 11);
        store.close().await;
    }

    #[tokio::test]
    async fn close_finishes_queued_deliveries() {
        let folder = tempfile::tempdir().unwrap();
        let store = open_store(&folder).await;
        let deliveries: Vec<Delivery> = (0..5)
            .map(|seq_num| result("night", seq_num, format!(r#"{{"seq_num":{seq_num}}}"#)))
            .collect();

        let paused = store.writer.pause().await;
        let tasks = spawn_records(&store, &deliveries);
        wait_until_queued(&store, deliveries.len()).await;
        let closing = tokio::spawn({
            let store = store.clone();
            async move { store.close().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(paused);

        tokio::time::timeout(Duration::from_secs(5), closing)
            .await
            .expect("closing the store did not finish")
            .unwrap();
        for task in tasks {
            let outcome = task.await.unwrap().unwrap();
            assert!(matches!(outcome.recorded, Recorded::Stored { .. }), "{outcome:?}");
        }
        let error = record(&store, &result("night", 5, "{}".to_string()))
            .await
            .expect_err("a delivery after closing was accepted");
        assert_eq!(error.kind(), "writer stopped");
    }

    #[tokio::test]
    async fn held_writer_times_out_queued_deliveries() {
        let folder = tempfile::tempdir().unwrap();
        let store = open_store(&folder).await;
        let deliveries: Vec<Delivery> = (0..3)
            .map(|seq_num| result("night", seq_num, format!(r#"{{"seq_num":{seq_num}}}"#)))
            .collect();

        let paused = store.writer.pause().await;
        let started = Instant::now();
        for task in spawn_records(&store, &deliveries) {
            let error = task
                .await
                .unwrap()
                .expect_err("a delivery was stored while the writer was held");
            assert_eq!(error.kind(), "write queue timed out", "{error}");
        }
        let waited = started.elapsed();
        assert!(waited >= WRITE_QUEUE_TIMEOUT, "timed out early, after {waited:?}");
        assert!(
            waited < WRITE_QUEUE_TIMEOUT + Duration::from_millis(500),
            "timed out late, after {waited:?}"
        );
        drop(paused);

        // A delivery that timed out is never stored afterwards.
        let committed = record(&store, &result("night", 3, "{}".to_string())).await.unwrap();
        assert!(matches!(committed.recorded, Recorded::Stored { .. }), "{committed:?}");
        assert_eq!(store.event_count().await.unwrap(), 1);
        store.close().await;
    }

    /// Automatic checkpoints are off on the write connection, so only the
    /// checkpoint thread moves committed pages from the log into the file.
    #[tokio::test]
    async fn checkpoint_thread_copies_the_log() {
        let folder = tempfile::tempdir().unwrap();
        let store = open_store(&folder).await;
        let database = folder.path().join("batch.db");
        let size = || std::fs::metadata(&database).unwrap().len();

        // Large bodies, so the pages they fill outgrow the empty schema.
        let before = size();
        for seq_num in 0..50 {
            let delivery = result("night", seq_num, "x".repeat(4096));
            record(&store, &delivery).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while size() < before + 50 * 4096 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        assert!(
            size() >= before + 50 * 4096,
            "the database file stayed at {} bytes (was {before}): nothing was checkpointed",
            size()
        );
        assert_eq!(store.event_count().await.unwrap(), 50);
        store.close().await;
    }
}
