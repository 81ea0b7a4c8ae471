//! SQLite, the embedded default (SPEC §10: one host): how every toolgate connection is opened,
//! the reader that keeps queries off the async runtime, and a writer thread's start and stop.
//! The job store and the evidence store each keep a file of their own and one writer thread
//! that owns its writing connection; what they write is theirs.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::StoreError;

/// How long a connection waits for another's lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Open a connection with the durability settings every toolgate connection uses.
pub fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: every commit is fsynced before it returns, so an answered `deferred` survives a
    // power cut, not just a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted rows (a job's inputs, pruned evidence) are overwritten, not left in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    // Each time the WAL starts over (after a complete checkpoint), it is cut to nothing, so
    // the old pages it held (cleared inputs among them) do not linger at its end.
    conn.pragma_update(None, "journal_size_limit", 0)?;
    Ok(conn)
}

/// Create the folder a store's file goes in, when it has one.
pub fn create_parent(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Sqlite(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// A store's reading connection, beside its writer: each read runs on a blocking thread, off
/// the async runtime.
#[derive(Clone)]
pub struct Reader(Arc<Mutex<Connection>>);

impl Reader {
    /// Open the reading connection of the file at `path`.
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        Ok(Reader(Arc::new(Mutex::new(connect(path)?))))
    }

    /// Run `f` on the connection, off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = self.0.clone();
        tokio::task::spawn_blocking(move || f(&reader.lock().expect("reader lock")))
            .await
            .map_err(|e| StoreError::Sqlite(format!("read task failed: {e}")))?
    }
}

/// Start a store's writer thread, named `name`; `what` names it in the error.
pub fn spawn_writer(
    name: &str,
    what: &str,
    run: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .map_err(|e| StoreError::Sqlite(format!("cannot start {what}: {e}")))
}

/// Wait for a writer thread to finish (it drains what is queued once its senders are gone),
/// off the async runtime; `false` when `limit` passed first (the thread goes on by itself).
pub async fn join_writer(thread: JoinHandle<()>, limit: Option<Duration>) -> bool {
    let joined = tokio::task::spawn_blocking(move || thread.join());
    match limit {
        None => {
            let _ = joined.await;
            true
        }
        Some(limit) => tokio::time::timeout(limit, joined).await.is_ok(),
    }
}
