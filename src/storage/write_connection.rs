//! The write connection: the one rusqlite connection that writes to the
//! database, and the statements it runs.
//!
//! Only the writer thread (see `writer.rs`) owns it. rusqlite calls SQLite
//! on the calling thread, so a statement costs no hand-off to another
//! thread, unlike sqlx, which runs each statement on a worker thread of its
//! own. Every statement is prepared once and kept in rusqlite's statement
//! cache.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{
    Durability, FIRST_TOKEN_VERSION, NewEvent, READINESS_RESERVE_BYTES, Recorded, SCHEMA, StorageError,
    WRITE_BUSY_TIMEOUT,
};
use crate::payload::SESSION_COMPLETE;

/// The writer thread's connection and the settings it is opened with.
pub(super) struct WriteConnection {
    connection: Connection,
    path: PathBuf,
    durability: Durability,
    /// The cap set with [`WriteConnection::set_max_page_count`], `None` when
    /// there is none. `max_page_count` is a setting of the connection, not
    /// of the file, so a reopened connection applies it again.
    max_page_count: Option<u32>,
    /// SQLite's own limit, restored when the cap is lifted.
    default_max_page_count: u32,
}

impl WriteConnection {
    /// Opens the database at `path`, creating the file, its folder and the
    /// schema on first start.
    pub(super) fn open(path: &Path, durability: Durability) -> Result<Self, StorageError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(StorageError::CreateFile)?;
        }
        create_private(path).map_err(StorageError::CreateFile)?;

        let connection = connect(path, durability)?;
        connection.execute_batch(SCHEMA)?;
        let default_max_page_count: i64 = connection.pragma_query_value(None, "max_page_count", |row| row.get(0))?;
        Ok(Self {
            connection,
            path: path.to_path_buf(),
            durability,
            max_page_count: None,
            default_max_page_count: u32::try_from(default_max_page_count).unwrap_or(u32::MAX),
        })
    }

    /// Stores `events` in one transaction, in order, and returns each one's
    /// outcome. A later event sees the earlier ones, so a repeat within
    /// `events` is a duplicate just as it would be in a later transaction.
    pub(super) fn commit_events(&mut self, events: &[NewEvent<'_>]) -> Result<Vec<Recorded>, StorageError> {
        self.write(|connection| {
            let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut outcomes = Vec::with_capacity(events.len());
            for event in events {
                outcomes.push(insert_event(&transaction, event)?);
            }
            transaction.commit()?;
            Ok(outcomes)
        })
    }

    /// Runs [`Store::check_writable`](super::Store::check_writable)'s probe:
    /// takes the write lock, reserves room for a large delivery and gives it
    /// back, then commits one small row.
    pub(super) fn probe_write(&mut self) -> Result<(), StorageError> {
        self.write(|connection| {
            let mut transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;

            // Growing the row inside a savepoint allocates pages, which fails
            // at the page cap, and rolling back to it leaves the file as it
            // was.
            let mut reserve = transaction.savepoint_with_name("reserve")?;
            reserve
                .prepare_cached(
                    "INSERT INTO readiness (id, checked_at_ms, reserve) VALUES (1, 0, zeroblob(?1))
                     ON CONFLICT (id) DO UPDATE SET reserve = excluded.reserve",
                )?
                .execute([READINESS_RESERVE_BYTES])?;
            reserve.rollback()?;
            // Releases the savepoint.
            reserve.commit()?;

            transaction
                .prepare_cached(
                    "INSERT INTO readiness (id, checked_at_ms) VALUES (1, ?1)
                     ON CONFLICT (id) DO UPDATE SET checked_at_ms = excluded.checked_at_ms",
                )?
                .execute([chrono::Utc::now().timestamp_millis()])?;
            transaction.commit()
        })
    }

    /// Caps the database file at `pages` pages, or lifts the cap with
    /// `None`, and returns the cap in effect. See
    /// [`Store::set_max_page_count`](super::Store::set_max_page_count).
    pub(super) fn set_max_page_count(&mut self, pages: Option<u32>) -> Result<u32, StorageError> {
        let requested = pages.unwrap_or(self.default_max_page_count);
        let in_effect = self.write(|connection| {
            connection.pragma_update_and_check(None, "max_page_count", requested, |row| row.get::<_, i64>(0))
        })?;
        let in_effect = u32::try_from(in_effect).unwrap_or(u32::MAX);
        self.max_page_count = pages.map(|_| in_effect);
        Ok(in_effect)
    }

    /// Raises `user_id`'s viewer token version by one and returns the new
    /// version.
    pub(super) fn revoke_viewers(&mut self, user_id: &str) -> Result<u64, StorageError> {
        let version = self.write(|connection| {
            // An explicit transaction, because the implicit commit of a
            // single statement happens when rusqlite resets it, and rusqlite
            // drops an error at that point.
            let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: i64 = transaction
                .prepare_cached(
                    "INSERT INTO viewer_versions (user_id, version, revoked_at_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id) DO UPDATE SET
                         version = version + 1, revoked_at_ms = excluded.revoked_at_ms
                     RETURNING version",
                )?
                .query_row(
                    params![
                        user_id,
                        FIRST_TOKEN_VERSION as i64 + 1,
                        chrono::Utc::now().timestamp_millis()
                    ],
                    |row| row.get(0),
                )?;
            transaction.commit()?;
            Ok(version)
        })?;
        Ok(version.max(0) as u64)
    }

    /// Runs `write` on the connection, and after a failure makes sure the
    /// next write starts outside any transaction.
    fn write<T>(&mut self, write: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StorageError> {
        let outcome = write(&mut self.connection);
        if outcome.is_err() {
            self.recover_after_failure();
        }
        Ok(outcome?)
    }

    /// Returns the connection to autocommit mode after a failed write.
    ///
    /// The failed transaction is normally over already: rusqlite rolls back
    /// a [`Transaction`] dropped without a commit, and SQLite rolls back by
    /// itself after some errors, among them `SQLITE_FULL` and
    /// `SQLITE_IOERR`. Should the connection still be inside a transaction,
    /// it is rolled back here, and if even that fails, the connection is
    /// replaced by a new one.
    fn recover_after_failure(&mut self) {
        if self.connection.is_autocommit() {
            return;
        }
        if self.connection.execute_batch("ROLLBACK").is_ok() && self.connection.is_autocommit() {
            return;
        }
        if let Err(error) = self.reopen() {
            // The next failed write tries again.
            tracing::error!(%error, "reopening the database write connection failed");
        }
    }

    /// Replaces the connection by a new one with the same settings,
    /// including the page cap.
    fn reopen(&mut self) -> Result<(), StorageError> {
        let connection = connect(&self.path, self.durability)?;
        if let Some(pages) = self.max_page_count {
            connection.pragma_update(None, "max_page_count", pages)?;
        }
        self.connection = connection;
        tracing::warn!("reopened the database write connection after a failed transaction");
        Ok(())
    }
}

/// Size the write-ahead log file is cut back to after it restarts.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// Opens a connection to the database file at `path` with the settings that
/// every write relies on.
fn connect(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    // Without SQLITE_OPEN_URI, so that a path starting with `file:` is a
    // file name. NO_MUTEX because one thread uses the connection.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(WRITE_BUSY_TIMEOUT)?;
    // `PRAGMA journal_mode` returns the mode in effect as a row.
    connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
    connection.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        },
    )?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // The checkpoint thread copies the log into the database file, so a
    // commit never waits for a checkpoint (see `checkpointer.rs`).
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Once the log starts again from its beginning, a file that grew past
    // this during a burst is cut back to it.
    connection.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
    Ok(connection)
}

/// Inserts one delivery and updates its session, inside the caller's
/// transaction. A duplicate changes nothing.
fn insert_event(transaction: &Transaction<'_>, event: &NewEvent<'_>) -> rusqlite::Result<Recorded> {
    let inserted = transaction
        .prepare_cached(
            "INSERT INTO events (received_at_ms, event, user_id, session_id, seq_num, body, normalized)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            event.received_at_ms,
            event.event,
            event.user_id,
            event.session_id,
            event.seq_num.map(i64::from),
            event.body,
            event.normalized,
        ])?;

    if inserted == 0 {
        let key_seq_num = if event.event == SESSION_COMPLETE {
            None
        } else {
            event.seq_num.map(i64::from)
        };
        let existing: Option<String> = transaction
            .prepare_cached(
                "SELECT normalized FROM events
                 WHERE user_id = ?1 AND session_id = ?2 AND event = ?3 AND seq_num IS ?4",
            )?
            .query_row(
                params![event.user_id, event.session_id, event.event, key_seq_num],
                |row| row.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten();
        return Ok(Recorded::Duplicate { existing });
    }

    let mut session_first_seen_ms = None;
    if let Some(session_id) = event.session_id {
        let first_seen: i64 = transaction
            .prepare_cached(
                "INSERT INTO sessions (user_id, session_id, first_seen_ms, last_seen_ms, complete)
                 VALUES (?1, ?2, ?3, ?3, ?4)
                 ON CONFLICT (user_id, session_id) DO UPDATE SET
                     last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
                     complete = max(complete, excluded.complete)
                 RETURNING first_seen_ms",
            )?
            .query_row(
                params![
                    event.user_id,
                    session_id,
                    event.received_at_ms,
                    event.event == SESSION_COMPLETE
                ],
                |row| row.get(0),
            )?;
        session_first_seen_ms = Some(first_seen);
    }
    Ok(Recorded::Stored { session_first_seen_ms })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn page_cap(connection: &Connection) -> i64 {
        connection
            .pragma_query_value(None, "max_page_count", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn reopened_connection_keeps_page_cap() {
        let folder = tempfile::tempdir().unwrap();
        let mut writer = WriteConnection::open(&folder.path().join("cap.db"), Durability::Normal).unwrap();
        let cap = writer.set_max_page_count(Some(1000)).unwrap();
        assert_eq!(cap, 1000);

        writer.reopen().unwrap();
        assert_eq!(page_cap(&writer.connection), 1000, "the cap was lost on reopening");

        writer.set_max_page_count(None).unwrap();
        writer.reopen().unwrap();
        assert_eq!(
            page_cap(&writer.connection),
            i64::from(writer.default_max_page_count),
            "a lifted cap came back on reopening"
        );
    }

    #[test]
    fn open_transaction_is_rolled_back_after_failure() {
        let folder = tempfile::tempdir().unwrap();
        let mut writer = WriteConnection::open(&folder.path().join("rollback.db"), Durability::Normal).unwrap();

        // A failure that leaves a transaction open, as a statement that
        // fails without ending its transaction would.
        let failed = writer.write(|connection| {
            connection.execute_batch("BEGIN; INSERT INTO readiness (id, checked_at_ms) VALUES (1, 1)")?;
            connection.execute_batch("INSERT INTO readiness (id, checked_at_ms) VALUES (2, 2)")
        });
        assert!(failed.is_err(), "the CHECK constraint did not fail the insert");
        assert!(
            writer.connection.is_autocommit(),
            "the failed transaction is still open"
        );

        // The probe begins a transaction of its own, which fails inside
        // another one.
        writer.probe_write().unwrap();
    }
}
