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
use std::time::Duration;

use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

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
"#;

/// A storage failure. The webhook turns it into 503 so Asleep delivers again.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored event {id} holds invalid JSON: {source}")]
    Corrupt { id: i64, source: serde_json::Error },
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
}

impl Store {
    /// Opens the database at `path`, creating the file, its folder and the
    /// schema on first start.
    pub async fn open(path: &Path, durability: Durability) -> Result<Self, StorageError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|error| StorageError::Database(sqlx::Error::Io(error)))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, reader })
    }

    /// Commits one delivery, or reports it as a duplicate of one already
    /// stored under the same idempotency key.
    pub async fn record(&self, event: NewEvent<'_>) -> Result<Recorded, StorageError> {
        let mut transaction = self.writer.begin().await?;

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

fn decode<T: DeserializeOwned>(id: i64, normalized: &str) -> Result<T, StorageError> {
    serde_json::from_str(normalized).map_err(|source| StorageError::Corrupt { id, source })
}
