//! Storage: the raw event log and the session index in an embedded SQLite
//! database.
//!
//! Every delivery is committed before the webhook responds. SQLite runs in
//! WAL mode. With `synchronous=FULL` (the default) a commit also survives
//! power loss. With `NORMAL` it survives a crash of this process, but the last
//! commits may be lost if the machine loses power.
//!
//! Idempotency rests on two partial unique indexes rather than a
//! read-then-write check, so concurrent repeats of one delivery cannot both be
//! stored.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};

use crate::payload::{FinalReport, INFERENCE_COMPLETE, InferenceResult, SESSION_COMPLETE};

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
/// because they share one connection.
pub const WRITE_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a write waits for the one writer connection. With
/// [`WRITE_BUSY_TIMEOUT`] it bounds a delivery's time in the database to
/// 3 seconds, within the 5 seconds Asleep advises for a response.
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
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored event {id} holds invalid JSON: {source}")]
    Corrupt { id: i64, source: serde_json::Error },
}

impl StorageError {
    /// Returns a short, stable name of the failure, such as `SQLITE_BUSY` or
    /// `pool timed out`, that groups repeats of one problem in logs.
    pub fn kind(&self) -> String {
        match self {
            StorageError::Database(sqlx::Error::Database(error)) => match error.code() {
                Some(code) => sqlite_code_name(&code),
                None => "database error".to_string(),
            },
            StorageError::Database(sqlx::Error::PoolTimedOut) => "pool timed out".to_string(),
            StorageError::Database(sqlx::Error::PoolClosed) => "pool closed".to_string(),
            StorageError::Database(sqlx::Error::Io(error)) => format!("I/O error {:?}", error.kind()),
            StorageError::Database(_) => "database error".to_string(),
            StorageError::Corrupt { .. } => "corrupt event".to_string(),
        }
    }
}

/// Names a SQLite result code, extended or primary, by its primary code's
/// constant from the SQLite documentation.
fn sqlite_code_name(code: &str) -> String {
    let primary = code.parse::<i64>().map(|code| code & 0xff);
    let name = match primary {
        Ok(5) => "SQLITE_BUSY",
        Ok(6) => "SQLITE_LOCKED",
        Ok(8) => "SQLITE_READONLY",
        Ok(10) => "SQLITE_IOERR",
        Ok(11) => "SQLITE_CORRUPT",
        Ok(13) => "SQLITE_FULL",
        Ok(14) => "SQLITE_CANTOPEN",
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

/// The database: one writer connection, because SQLite serializes writers
/// anyway and a single connection avoids `SQLITE_BUSY` between them, and a
/// pool of readers that WAL mode lets run beside it.
#[derive(Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The cap set with [`Store::set_max_page_count`], zero when there is
    /// none. `max_page_count` is a setting of the connection, not of the
    /// file, so every new writer connection applies it again.
    max_page_count: Arc<AtomicU32>,
    /// SQLite's own limit, restored when the cap is lifted.
    default_max_page_count: u32,
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
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|error| StorageError::Database(sqlx::Error::Io(error)))?;
        }
        create_private(path).map_err(|error| StorageError::Database(sqlx::Error::Io(error)))?;
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            // A statement slowed by a lock is reported by the 503 it causes,
            // logged once per interval; sqlx would warn on every one.
            .log_slow_statements(log::LevelFilter::Debug, std::time::Duration::from_secs(1));

        let max_page_count = Arc::new(AtomicU32::new(0));
        let cap = Arc::clone(&max_page_count);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(WRITE_QUEUE_TIMEOUT)
            .after_connect(move |connection, _| {
                let pages = cap.load(Ordering::SeqCst);
                Box::pin(async move {
                    if pages > 0 {
                        sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
                            .execute(connection)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone().busy_timeout(WRITE_BUSY_TIMEOUT))
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&writer).await?;
        let default_max_page_count: i64 = sqlx::query_scalar("PRAGMA max_page_count").fetch_one(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.busy_timeout(READ_BUSY_TIMEOUT).read_only(true))
            .await?;
        Ok(Self {
            writer,
            reader,
            max_page_count,
            default_max_page_count: u32::try_from(default_max_page_count).unwrap_or(u32::MAX),
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
        let outcome = self.probe_write().await.map_err(Arc::new);
        *last = Some((Instant::now(), outcome.clone()));
        outcome
    }

    async fn probe_write(&self) -> Result<(), StorageError> {
        let mut connection = self.writer.acquire().await?;
        let outcome = probe_write_on(&mut connection).await;
        if outcome.is_err() {
            discard_after_failure(&mut connection);
        }
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
    /// the process exits.
    pub async fn set_max_page_count(&self, pages: Option<u32>) -> Result<u32, StorageError> {
        let requested = pages.unwrap_or(self.default_max_page_count);
        // Holding the only writer connection keeps a reconnect from applying
        // an outdated cap between the two steps.
        let mut connection = self.writer.acquire().await?;
        let in_effect: i64 = sqlx::query_scalar(&format!("PRAGMA max_page_count = {requested}"))
            .fetch_one(&mut *connection)
            .await?;
        let in_effect = u32::try_from(in_effect).unwrap_or(u32::MAX);
        self.max_page_count
            .store(if pages.is_some() { in_effect } else { 0 }, Ordering::SeqCst);
        Ok(in_effect)
    }

    /// Commits one delivery, or reports it as a duplicate of one already
    /// stored under the same idempotency key.
    pub async fn record(&self, event: NewEvent<'_>) -> Result<Recorded, StorageError> {
        let mut connection = self.writer.acquire().await?;
        let outcome = record_on(&mut connection, event).await;
        if outcome.is_err() {
            discard_after_failure(&mut connection);
        }
        outcome
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
        let mut connection = self.writer.acquire().await?;
        let outcome = sqlx::query_scalar::<_, i64>(
            "INSERT INTO viewer_versions (user_id, version, revoked_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id) DO UPDATE SET
                 version = version + 1, revoked_at_ms = excluded.revoked_at_ms
             RETURNING version",
        )
        .bind(user_id)
        .bind(FIRST_TOKEN_VERSION as i64 + 1)
        .bind(chrono::Utc::now().timestamp_millis())
        .fetch_one(&mut *connection)
        .await;
        if outcome.is_err() {
            discard_after_failure(&mut connection);
        }
        Ok(outcome?.max(0) as u64)
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

    /// Closes both pools, waiting for the writer to finish its transaction.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// Runs [`Store::check_writable`]'s probe on the writer connection.
async fn probe_write_on(connection: &mut SqliteConnection) -> Result<(), StorageError> {
    let mut transaction = connection.begin_with("BEGIN IMMEDIATE").await?;

    // Growing the row inside a savepoint allocates pages, which fails at
    // the page cap, and rolling back to it leaves the file as it was.
    sqlx::query("SAVEPOINT reserve").execute(&mut *transaction).await?;
    sqlx::query(
        "INSERT INTO readiness (id, checked_at_ms, reserve) VALUES (1, 0, zeroblob(?))
         ON CONFLICT (id) DO UPDATE SET reserve = excluded.reserve",
    )
    .bind(READINESS_RESERVE_BYTES)
    .execute(&mut *transaction)
    .await?;
    sqlx::query("ROLLBACK TO reserve").execute(&mut *transaction).await?;
    sqlx::query("RELEASE reserve").execute(&mut *transaction).await?;

    sqlx::query(
        "INSERT INTO readiness (id, checked_at_ms) VALUES (1, ?)
         ON CONFLICT (id) DO UPDATE SET checked_at_ms = excluded.checked_at_ms",
    )
    .bind(chrono::Utc::now().timestamp_millis())
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// Runs [`Store::record`]'s transaction on the writer connection.
async fn record_on(connection: &mut SqliteConnection, event: NewEvent<'_>) -> Result<Recorded, StorageError> {
    let mut transaction = connection.begin().await?;

    let inserted = sqlx::query(
        "INSERT INTO events (received_at_ms, event, user_id, session_id, seq_num, body, normalized)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(event.received_at_ms)
    .bind(event.event)
    .bind(event.user_id)
    .bind(event.session_id)
    .bind(event.seq_num.map(i64::from))
    .bind(event.body)
    .bind(event.normalized)
    .execute(&mut *transaction)
    .await?
    .rows_affected();

    if inserted == 0 {
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT normalized FROM events
             WHERE user_id = ? AND session_id = ? AND event = ? AND seq_num IS ?",
        )
        .bind(event.user_id)
        .bind(event.session_id)
        .bind(event.event)
        .bind(if event.event == SESSION_COMPLETE {
            None
        } else {
            event.seq_num.map(i64::from)
        })
        .fetch_optional(&mut *transaction)
        .await?
        .flatten();
        transaction.rollback().await?;
        return Ok(Recorded::Duplicate { existing });
    }

    let mut session_first_seen_ms = None;
    if let Some(session_id) = event.session_id {
        let first_seen: i64 = sqlx::query_scalar(
            "INSERT INTO sessions (user_id, session_id, first_seen_ms, last_seen_ms, complete)
             VALUES (?1, ?2, ?3, ?3, ?4)
             ON CONFLICT (user_id, session_id) DO UPDATE SET
                 last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
                 complete = max(complete, excluded.complete)
             RETURNING first_seen_ms",
        )
        .bind(event.user_id)
        .bind(session_id)
        .bind(event.received_at_ms)
        .bind(event.event == SESSION_COMPLETE)
        .fetch_one(&mut *transaction)
        .await?;
        session_first_seen_ms = Some(first_seen);
    }

    transaction.commit().await?;
    Ok(Recorded::Stored { session_first_seen_ms })
}

/// Closes a writer connection whose transaction failed instead of returning
/// it to the pool, which opens a fresh one for the next write.
///
/// Creates a new database file readable and writable by its owner only.
/// SQLite gives the WAL and shared-memory files the same permissions, so
/// sleep data is not readable by other users of the machine. An existing
/// file keeps the permissions the operator gave it.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// SQLite rolls a transaction back by itself after some errors, among them
/// `SQLITE_FULL` and `SQLITE_IOERR`. sqlx 0.8's own `ROLLBACK` then fails and
/// it keeps counting the transaction as open, so its next `begin` would
/// issue a `SAVEPOINT` that a later rollback leaves open, and every write
/// after that would stay uncommitted.
fn discard_after_failure(connection: &mut PoolConnection<Sqlite>) {
    connection.close_on_drop();
}

fn decode<T: DeserializeOwned>(id: i64, normalized: &str) -> Result<T, StorageError> {
    serde_json::from_str(normalized).map_err(|source| StorageError::Corrupt { id, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_codes_are_named_by_primary_code() {
        assert_eq!(sqlite_code_name("5"), "SQLITE_BUSY");
        // SQLITE_BUSY_SNAPSHOT is 5 | (2 << 8).
        assert_eq!(sqlite_code_name("517"), "SQLITE_BUSY");
        assert_eq!(sqlite_code_name("13"), "SQLITE_FULL");
        assert_eq!(sqlite_code_name("99"), "SQLite code 99");
        assert_eq!(sqlite_code_name("not a number"), "SQLite code not a number");
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
}
