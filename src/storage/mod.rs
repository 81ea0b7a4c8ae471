//! The storage floor: what the job queue (`workflow::store`, SPEC §4) and the evidence store
//! (`evidence::store`, SPEC §6) both stand on, and nothing of either.
//!
//! - [`sqlite`]: opening a SQLite file with the durability settings every toolgate connection
//!   uses, a reader that runs queries off the async runtime, and the writer thread's start and
//!   stop (the embedded default, one host).
//! - [`nats`]: reaching NATS JetStream (`storage.backend = "nats"`, SPEC §10): the options
//!   `[storage]` gives, the connection, and opening the streams and key-value buckets both
//!   stores keep there.
//! - [`StoreError`]: the one error both stores answer with. It says what failed underneath
//!   (SQLite, NATS, or a store already closed), never which store: the caller names that
//!   ("the evidence store failed: …", "cannot claim jobs: …").
//!
//! Nothing here knows about jobs, evidence, sessions or the runtime; it may use the settings
//! types of [`crate::config`] and the [`crate::clock`].

pub mod nats;
pub mod sqlite;

use std::fmt;

/// What a store stands on, as [`StoreError::source`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file.
    Sqlite,
    /// NATS JetStream.
    Nats,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Nats => "NATS",
        })
    }
}

/// Why a store operation failed (a job store's or the evidence store's: the caller says
/// which).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (disk full, corrupt file, locked by another process, ...).
    #[error("SQLite: {0}")]
    Sqlite(String),
    /// NATS JetStream refused, timed out or is unreachable. Never carries credentials.
    #[error("NATS: {0}")]
    Nats(String),
    /// The store was closed (its writer is gone, or it was shut down).
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// What failed underneath: SQLite or NATS; `None` when the store was closed.
    pub fn source(&self) -> Option<Backend> {
        match self {
            StoreError::Sqlite(_) => Some(Backend::Sqlite),
            StoreError::Nats(_) => Some(Backend::Nats),
            StoreError::Closed => None,
        }
    }

    /// Whether the same operation may succeed if tried again later: the store is still open
    /// (NATS may come back, a lock be released, a disk be freed). A closed store never
    /// answers again.
    pub fn retryable(&self) -> bool {
        !matches!(self, StoreError::Closed)
    }

    /// A NATS failure: `what` was being done when `e` came back.
    pub fn nats(what: &str, e: impl fmt::Display) -> StoreError {
        StoreError::Nats(format!("{what}: {e}"))
    }

    /// The error told as a failure of `store` ("job store", "evidence store"), the way
    /// start-up errors read: `job store: …` on SQLite, `job store (NATS): …` on NATS.
    pub fn of_store(&self, store: &str) -> String {
        match self {
            StoreError::Sqlite(m) => format!("{store}: {m}"),
            StoreError::Nats(m) => format!("{store} (NATS): {m}"),
            StoreError::Closed => format!("{store} is closed"),
        }
    }

    /// The same error with `context` before its message (what was being opened or done).
    pub fn context(self, context: &str) -> StoreError {
        match self {
            StoreError::Sqlite(m) => StoreError::Sqlite(format!("{context}: {m}")),
            StoreError::Nats(m) => StoreError::Nats(format!("{context}: {m}")),
            StoreError::Closed => StoreError::Closed,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_what_failed_underneath_and_not_which_store() {
        let e = StoreError::nats("cannot read a job", "timed out").context("evidence stream");
        assert_eq!(
            e.to_string(),
            "NATS: evidence stream: cannot read a job: timed out"
        );
        assert_eq!(e.source(), Some(Backend::Nats));
        assert!(e.retryable());
        assert!(!StoreError::Closed.retryable());
        assert_eq!(StoreError::Closed.source(), None);
        assert!(!StoreError::Closed.to_string().contains("job"));
        assert_eq!(
            StoreError::nats("cannot reach NATS at nats://n1:4222", "refused")
                .of_store("job store"),
            "job store (NATS): cannot reach NATS at nats://n1:4222: refused"
        );
        assert_eq!(
            StoreError::Sqlite("disk full".into()).of_store("evidence store"),
            "evidence store: disk full"
        );
    }
}
