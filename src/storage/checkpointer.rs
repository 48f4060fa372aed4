//! Checkpoints on a thread of their own.
//!
//! In WAL mode a commit appends pages to the write-ahead log, and a
//! checkpoint copies them back into the database file and syncs it. By
//! default the connection that commits runs the checkpoint itself whenever
//! the log passes 1,000 pages, so under load every few dozen batches the
//! writer thread stopped to copy and sync, and every delivery queued behind
//! it waited. The write connection turns those automatic checkpoints off,
//! and this thread runs a passive checkpoint on a connection of its own at
//! every [`CHECKPOINT_INTERVAL`].
//!
//! A passive checkpoint never blocks the writer or readers, so it changes
//! nothing about what a commit promises: a delivery is durable once its
//! transaction committed to the log. The log starts again from its
//! beginning at the first commit after a checkpoint that copied all of it.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StorageError;
use crate::warnings;

/// Time between checkpoints. Longer lets one checkpoint copy a page that
/// many commits changed only once; shorter keeps the log, which readers
/// search for recent pages, small.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// How long a checkpoint waits for a lock before giving up until the next
/// interval. A passive checkpoint takes no lock that writers need, so this
/// bounds only waits on recovery or on another process.
const CHECKPOINT_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// The checkpoint thread. Dropping it stops the thread and waits for it.
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a connection to the database at `path`, which must exist in
    /// WAL mode, and starts checkpointing it.
    pub(super) fn start(path: &Path) -> Result<Self, StorageError> {
        // NO_MUTEX because only the checkpoint thread uses the connection.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags)?;
        connection.busy_timeout(CHECKPOINT_BUSY_TIMEOUT)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let handle = std::thread::Builder::new()
            .name("sqlite-checkpoint".to_string())
            .spawn({
                let stop = Arc::clone(&stop);
                move || run(&connection, &stop)
            })
            .map_err(StorageError::StartThread)?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        wake.notify_one();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Runs a checkpoint at every interval until the [`Checkpointer`] is dropped.
fn run(connection: &Connection, stop: &(Mutex<bool>, Condvar)) {
    let (stopped, wake) = stop;
    let mut stopped = stopped.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        stopped = match wake.wait_timeout(stopped, CHECKPOINT_INTERVAL) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
        if *stopped {
            return;
        }
        // The lock only guards the flag; checkpoints run without it.
        drop(stopped);
        checkpoint(connection);
        stopped = stop.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

/// Runs one passive checkpoint. A failure is logged, rate-limited, and the
/// next interval tries again; meanwhile the log only grows.
fn checkpoint(connection: &Connection) {
    let outcome = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(0));
    if let Err(error) = outcome {
        let error = StorageError::from(error);
        if let Some(suppressed) = warnings::admit("checkpoint failed", &error.kind()) {
            tracing::warn!(%error, suppressed, "checkpoint failed; the write-ahead log grows until one succeeds");
        }
    }
}
