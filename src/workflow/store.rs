//! The job queue: one interface ([`JobStore`]) over two backends.
//!
//! - **SQLite** (the embedded default, one host): below. One writer thread owns the writing
//!   connection. Callers hand it operations over a channel; it runs every operation that is
//!   waiting in one transaction (each in its own savepoint, so one failure does not undo the
//!   others), commits once (WAL with `synchronous = FULL`: the commit is fsynced) and only then
//!   answers each caller. Under load this is group commit: one fsync carries many enqueues.
//!   Reads use a second connection off the async runtime. The operations in [`ops`] take the
//!   clock as an argument, so they are tested against an in-memory model with any sequence of
//!   time (see the property test below).
//! - **NATS JetStream** (`storage.backend = "nats"`, many hosts): [`super::nats`].
//!
//! Both keep the same semantics; `tests/jobs_conformance.rs` runs one suite against both.

use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::{Notify, oneshot};
use tracing::{error, info, warn};

use super::nats::NatsJobs;
use super::transitions::LEASE_MARGIN;
use super::transitions::{self, Lifecycle};
use super::{Finish, Head, Job, JobState, Lease, NewJob, RetryRefused, Start, job_id};
use crate::clock::Millis;
use crate::config::StorageSettings;
use crate::storage::StoreError;
use crate::storage::nats::NatsOptions;
use crate::storage::sqlite::{self, BUSY_TIMEOUT, Reader, connect};

/// Most operations per commit.
const MAX_BATCH: usize = 512;

type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// One queued write: runs in the batch's transaction (or learns why there is none) and hands
/// back how to answer its caller once the commit is known.
type Op = Box<dyn FnOnce(Result<&Transaction<'_>, &StoreError>) -> Reply + Send>;

/// The durable job queue, on SQLite or on NATS JetStream. Every method means the same on
/// both: a write is durable when it returns `Ok` (committed and fsynced, or acknowledged by
/// JetStream).
///
/// The NATS futures are boxed: they are kilobytes (several JetStream round trips each), and a
/// caller's future holds the largest of its awaits inline. A session's task awaits
/// `cancel_unsent`, so unboxed they would add their size to every live call, idle or not.
pub struct JobStore {
    backend: Backend,
    /// Woken when a job becomes runnable (enqueue, release, retry) in this process.
    pub runnable: Notify,
}

enum Backend {
    Sqlite(SqliteJobs),
    Nats(Box<NatsJobs>),
}

/// The SQLite backend.
struct SqliteJobs {
    writer: Mutex<Option<std_mpsc::Sender<Op>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    reader: Reader,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  org TEXT NOT NULL,
  agent TEXT NOT NULL,
  function TEXT NOT NULL,
  call_id TEXT NOT NULL,
  tool_call_id TEXT NOT NULL,
  invocation_id TEXT NOT NULL,
  action TEXT NOT NULL,
  connection TEXT NOT NULL,
  inputs TEXT NOT NULL,
  idempotency_key TEXT NOT NULL,
  idempotent INTEGER NOT NULL,
  reason TEXT NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  max_attempts INTEGER NOT NULL,
  runnable_at INTEGER,
  lease_owner TEXT,
  lease_until INTEGER,
  hard_timeout_ms INTEGER NOT NULL,
  last_error TEXT,
  provider_message_id TEXT,
  at_least_once INTEGER NOT NULL DEFAULT 0,
  possibly_sent INTEGER NOT NULL DEFAULT 0,
  attempt_sent INTEGER NOT NULL DEFAULT 0,
  inputs_cleared INTEGER NOT NULL DEFAULT 0,
  retry_window_ms INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  finished_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs(idempotency_key);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(state, runnable_at);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs(state, lease_until);
CREATE INDEX IF NOT EXISTS jobs_call ON jobs(org, call_id);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at);
";

/// Create the schema on a connection (and bring an older file's up to date).
pub fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA)?;
    // `attempt_sent` came later: on an older file, whatever is in flight may have been sent.
    let has = |c: &Connection| c.prepare("SELECT attempt_sent FROM jobs LIMIT 0").is_ok();
    if !has(conn)
        && let Err(e) = conn
            .execute_batch("ALTER TABLE jobs ADD COLUMN attempt_sent INTEGER NOT NULL DEFAULT 1")
        && !has(conn)
    {
        // (Another process opening the same file may have added it first.)
        return Err(e.into());
    }
    // `inputs_cleared` and `retry_window_ms` came later: an older file cleared the inputs of
    // succeeded jobs only, and kept the others' (a retry window of forever, cleared below).
    let has = |c: &Connection| c.prepare("SELECT inputs_cleared FROM jobs LIMIT 0").is_ok();
    if !has(conn) {
        let added = conn.execute_batch(
            "BEGIN IMMEDIATE;
             ALTER TABLE jobs ADD COLUMN inputs_cleared INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE jobs ADD COLUMN retry_window_ms INTEGER NOT NULL DEFAULT 0;
             UPDATE jobs SET inputs_cleared = 1, inputs = '[]' WHERE state IN ('succeeded', 'failed', 'dead');
             COMMIT;",
        );
        if let Err(e) = added {
            let _ = conn.execute_batch("ROLLBACK");
            if !has(conn) {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// The SET clause that clears a job's raw inputs when `ends` (an SQL condition on the row
/// before the update) holds and its retry window is zero: [`super::keeps_inputs`] in SQL.
fn clear_inputs_if(ends: &str) -> String {
    format!(
        "inputs = CASE WHEN ({ends}) AND retry_window_ms = 0 THEN '[]' ELSE inputs END, \
         inputs_cleared = CASE WHEN ({ends}) AND retry_window_ms = 0 THEN 1 ELSE inputs_cleared END"
    )
}

impl SqliteJobs {
    fn open(path: &Path) -> Result<SqliteJobs, StoreError> {
        sqlite::create_parent(path)?;
        let mut write_conn = connect(path)?;
        migrate(&write_conn)?;
        let reader = Reader::open(path)?;
        let (tx, rx) = std_mpsc::channel::<Op>();
        let thread = sqlite::spawn_writer("toolgate-store", "the writer thread", move || {
            writer_loop(&mut write_conn, rx)
        })?;
        info!(path = %path.display(), "job store open");
        Ok(SqliteJobs {
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            reader,
        })
    }

    /// Run `f` in the writer's next transaction; resolves after the commit.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel::<Result<T, StoreError>>();
        let op: Op = Box::new(move |tx: Result<&Transaction<'_>, &StoreError>| {
            let result = match tx {
                Ok(tx) => in_savepoint(tx, f),
                Err(e) => Err(e.clone()),
            };
            Box::new(move |committed: Result<(), StoreError>| {
                let _ = done_tx.send(committed.and(result));
            })
        });
        {
            // No clone of the sender may live across the await below: the writer thread ends
            // only when every sender is gone, and `close` waits for it.
            let writer = self.writer.lock().expect("writer lock");
            let sender = writer.as_ref().ok_or(StoreError::Closed)?;
            sender.send(op).map_err(|_| StoreError::Closed)?;
        }
        done_rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn prune(&self, before: Millis) -> Result<usize, StoreError> {
        self.write(move |tx| {
            Ok(tx
                .prepare_cached(
                    "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?1",
                )?
                .execute([before])?)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.reader
            .read(|c| {
                Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                    .map(|_| ())?)
            })
            .await
    }

    /// A committed write through the writer, as a job's enqueue is: the proof that an accepted
    /// action can be made durable right now (a full disk or a broken file fails it).
    async fn probe_write(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL)",
            )?;
            tx.prepare_cached("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?1)")?
                .execute([crate::clock::now_ms()])?;
            Ok(())
        })
        .await
    }

    /// Stop taking writes, let the writer finish what it has (every queued write is still
    /// committed and answered), and wait for it, off the async runtime.
    async fn close(&self) {
        self.writer.lock().expect("writer lock").take();
        let thread = self.writer_thread.lock().expect("thread lock").take();
        if let Some(t) = thread
            && !sqlite::join_writer(t, Some(Duration::from_secs(30))).await
        {
            error!("the job store writer did not finish within 30 s");
        }
    }
}

impl Drop for SqliteJobs {
    /// Dropping never blocks: the writer thread drains what is queued and exits by itself.
    fn drop(&mut self) {
        self.writer.lock().expect("writer lock").take();
    }
}

/// One operation of [`JobStore`] on the backend that serves: `$sqlite` with the SQLite backend
/// bound to `$s`, or the future `$nats` with the NATS backend bound to `$n`, boxed (see
/// [`JobStore`]) and awaited.
macro_rules! on_backend {
    ($store:expr, $s:pat => $sqlite:expr, $n:pat => $nats:expr $(,)?) => {
        match &$store.backend {
            Backend::Sqlite($s) => $sqlite,
            Backend::Nats($n) => Box::pin($nats).await,
        }
    };
}

impl JobStore {
    /// Open (creating) the SQLite store at `path`.
    pub fn open(path: &Path) -> Result<JobStore, StoreError> {
        Ok(JobStore::with_backend(Backend::Sqlite(SqliteJobs::open(
            path,
        )?)))
    }

    /// Connect to NATS and open (creating what is missing) the JetStream queue. Fails with a
    /// message naming the servers when none answers within the connect timeout.
    pub async fn open_nats(options: NatsOptions) -> Result<JobStore, StoreError> {
        Ok(JobStore::with_backend(Backend::Nats(Box::new(
            NatsJobs::open(options).await?,
        ))))
    }

    /// Open the store `[storage]` configures. With `backend = "nats"`, `ack_wait` is the
    /// queue's acknowledgement wait (longer than the longest attempt); NATS unreachable is an
    /// error, or, with `fallback = "sqlite"`, a logged fallback to the SQLite file at `path`.
    pub async fn open_configured(
        storage: &StorageSettings,
        ack_wait: Duration,
    ) -> Result<JobStore, StoreError> {
        let Some(nats) = storage.nats.as_ref().filter(|_| storage.backend == "nats") else {
            return JobStore::open(&storage.path);
        };
        let mut options = NatsOptions::from_settings(nats);
        options.ack_wait = ack_wait;
        match JobStore::open_nats(options).await {
            Ok(store) => Ok(store),
            Err(e) if nats.fallback_sqlite => {
                error!(
                    error = %e,
                    path = %storage.path.display(),
                    "NATS is unreachable; storage.fallback = \"sqlite\": the job queue runs on the local SQLite file, for this host only, until a restart with NATS up"
                );
                JobStore::open(&storage.path)
            }
            Err(e) => Err(e),
        }
    }

    fn with_backend(backend: Backend) -> JobStore {
        JobStore {
            backend,
            runnable: Notify::new(),
        }
    }

    /// Which backend serves: `"sqlite"` or `"nats"`.
    pub fn backend(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Nats(_) => "nats",
        }
    }

    /// Wake the claimers waiting in this process ([`JobStore::runnable`]) when `runnable`: the
    /// write just made a job runnable.
    fn wake_if(&self, runnable: bool) {
        if runnable {
            self.runnable.notify_waiters();
        }
    }

    /// Store a job durably and return it (the existing one when its key is already queued).
    pub async fn enqueue(&self, job: NewJob, now: Millis) -> Result<Job, StoreError> {
        let runnable = matches!(job.start, Start::RunnableAt(_));
        let stored = on_backend!(self,
            s => s.write(move |tx| ops::enqueue(tx, &job, now)).await,
            n => n.enqueue(job, now),
        )?;
        self.wake_if(runnable);
        Ok(stored)
    }

    /// Lease the next runnable job to `owner`, if any. On NATS this waits up to the claim wait
    /// ([`NatsOptions::claim_wait`]) for a job to become runnable.
    pub async fn claim(&self, owner: &str, now: Millis) -> Result<Option<Job>, StoreError> {
        on_backend!(self,
            s => {
                let owner = owner.to_owned();
                s.write(move |tx| ops::claim(tx, &owner, now)).await
            },
            n => n.claim(owner, now),
        )
    }

    /// Record how attempt number `attempt` ended; `false` when `owner` no longer holds the
    /// lease for that attempt (it lapsed and the job was claimed again).
    pub async fn finish(
        &self,
        id: &str,
        owner: &str,
        attempt: u32,
        finish: Finish,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let retried = matches!(finish, Finish::Retry { .. });
        let done = on_backend!(self,
            s => {
                let (id, owner) = (id.to_owned(), owner.to_owned());
                s.write(move |tx| ops::finish(tx, &id, &owner, attempt, &finish, now)).await
            },
            n => n.finish(Lease { id, owner, attempt }, &finish, now),
        )?;
        self.wake_if(retried);
        Ok(done)
    }

    /// Hand a claimed job back without having sent it (its connection is down, its circuit
    /// open or over its rate): the claim does not count as an attempt.
    pub async fn put_back(
        &self,
        id: &str,
        owner: &str,
        attempt: u32,
        not_before: Millis,
        why: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let done = on_backend!(self,
            s => {
                let (id, owner, why) = (id.to_owned(), owner.to_owned(), why.to_owned());
                s.write(move |tx| ops::put_back(tx, &id, &owner, attempt, not_before, &why, now))
                    .await
            },
            n => n.put_back(Lease { id, owner, attempt }, not_before, why, now),
        )?;
        self.wake_if(done);
        Ok(done)
    }

    /// The holder of attempt `attempt` is about to send a job to a provider that has no
    /// idempotency key (Wati): recorded first, so that if the holder dies, whoever takes the
    /// job over knows the outcome is unknown (`at_least_once`) rather than assuming it.
    /// `false`: the lease is no longer this holder's, and it must not send.
    pub async fn mark_sending(
        &self,
        id: &str,
        owner: &str,
        attempt: u32,
        now: Millis,
    ) -> Result<bool, StoreError> {
        on_backend!(self,
            s => {
                let (id, owner) = (id.to_owned(), owner.to_owned());
                s.write(move |tx| ops::mark_sending(tx, &id, &owner, attempt, now)).await
            },
            n => n.mark_sending(Lease { id, owner, attempt }, now),
        )
    }

    /// Make the held jobs of a call runnable (its session ended).
    pub async fn release_call(
        &self,
        org: &str,
        call_id: &str,
        now: Millis,
    ) -> Result<usize, StoreError> {
        let n = on_backend!(self,
            s => {
                let (org, call_id) = (org.to_owned(), call_id.to_owned());
                s.write(move |tx| ops::release(tx, Some((&org, &call_id)), now)).await
            },
            n => n.release_call(org, call_id, now),
        )?;
        self.wake_if(n > 0);
        Ok(n)
    }

    /// Make every held job runnable that no live session can end any more: at start-up. On
    /// SQLite that is every held job (no session of a previous process survives); on NATS,
    /// the held jobs of sidecars that stopped beating (their sessions died with them).
    pub async fn release_all_held(&self, now: Millis) -> Result<usize, StoreError> {
        let n = on_backend!(self,
            s => s.write(move |tx| ops::release(tx, None, now)).await,
            n => n.release_orphaned(now, true),
        )?;
        self.wake_if(n > 0);
        Ok(n)
    }

    /// Periodic repair of the shared queue, run every minute by each process that runs a
    /// worker (its housekeeping). Nothing to do on SQLite. On NATS: what
    /// [`JobStore::repair_local`] does, then releases the held jobs of sidecars that died and
    /// republishes the notice of a runnable job whose notice was lost between two writes. Returns how many jobs it
    /// touched.
    pub async fn sweep(&self, now: Millis) -> Result<usize, StoreError> {
        let n = on_backend!(self, _ => Ok(0), n => n.sweep(now))?;
        self.wake_if(n > 0);
        Ok(n)
    }

    /// Whether this host has writes to catch up on once the store is back: held jobs of calls
    /// that ended, or enqueues answered with an error, while NATS was away (never on SQLite).
    pub fn has_local_repairs(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => false,
            Backend::Nats(n) => n.has_local_repairs(),
        }
    }

    /// Catch up on this host's writes that failed while NATS was away (the first part of
    /// [`JobStore::sweep`], cheap enough to run as soon as the store answers again).
    pub async fn repair_local(&self, now: Millis) -> Result<usize, StoreError> {
        let n = on_backend!(self, _ => Ok(0), n => n.repair_local(now))?;
        self.wake_if(n > 0);
        Ok(n)
    }

    /// Cancel a job that has not been sent yet (`tool.cancel` of a queued call).
    pub async fn cancel_unsent(
        &self,
        id: &str,
        why: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        on_backend!(self,
            s => {
                let (id, why) = (id.to_owned(), why.to_owned());
                s.write(move |tx| ops::cancel_unsent(tx, &id, &why, now)).await
            },
            n => n.cancel_unsent(id, why, now),
        )
    }

    /// Put a `failed` or `dead` job back in the queue; `None` when there is no such job,
    /// `Some(Err(why))` when it is in another state or its inputs are gone.
    pub async fn retry(
        &self,
        id: &str,
        now: Millis,
    ) -> Result<Option<Result<Job, RetryRefused>>, StoreError> {
        let r = on_backend!(self,
            s => {
                let id = id.to_owned();
                s.write(move |tx| ops::retry(tx, &id, now)).await
            },
            n => n.retry(id, now),
        )?;
        self.wake_if(matches!(r, Some(Ok(_))));
        Ok(r)
    }

    /// One job.
    pub async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        on_backend!(self,
            s => {
                let id = id.to_owned();
                s.reader.read(move |c| ops::get(c, &id)).await
            },
            n => n.get(id),
        )
    }

    /// Clear the raw inputs of `failed` and `dead` jobs whose retry window
    /// (`workflow.retry_window_ms`) has passed; how many.
    pub async fn clear_expired_inputs(&self, now: Millis) -> Result<usize, StoreError> {
        on_backend!(self,
            s => s.write(move |tx| ops::clear_expired_inputs(tx, now)).await,
            n => n.clear_expired_inputs(now),
        )
    }

    /// Delete jobs that reached a final state before `before`.
    pub async fn prune(&self, before: Millis) -> Result<usize, StoreError> {
        on_backend!(self, s => s.prune(before).await, n => n.prune(before))
    }

    /// How many counts the NATS backend's state index answered without reading every job
    /// (always 0 on SQLite). For tests.
    #[doc(hidden)]
    pub fn counts_from_index(&self) -> u64 {
        match &self.backend {
            Backend::Sqlite(_) => 0,
            Backend::Nats(n) => n.counted_from_index(),
        }
    }

    /// Whether the store answers a trivial read.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_backend!(self, s => s.ping().await, n => n.ping())
    }

    /// Whether an accepted action can be made durable now: on SQLite a write committed through
    /// the writer (on NATS, JetStream answering: its own disk is the server's business).
    pub async fn writable(&self) -> Result<(), StoreError> {
        on_backend!(self, s => s.probe_write().await, n => n.ping())
    }

    /// Jobs, newest first, optionally of one state and one org.
    pub async fn list(
        &self,
        state: Option<JobState>,
        org: Option<String>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        on_backend!(self,
            s => {
                s.reader
                    .read(move |c| ops::list(c, state, org.as_deref(), limit))
                    .await
            },
            n => n.list(state, org.as_deref(), limit),
        )
    }

    /// How many jobs are in each state.
    pub async fn counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        on_backend!(self, s => s.reader.read(ops::counts).await, n => n.counts())
    }

    /// When the next job becomes claimable (a runnable time or a lease lapsing). On NATS the
    /// queue wakes claimers itself (a claim waits for the next runnable notice), so this is
    /// always "now": claim again.
    pub async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.reader.read(ops::next_due).await,
            Backend::Nats(_) => Ok(Some(crate::clock::now_ms())),
        }
    }

    /// Stop taking writes and finish what was accepted: on SQLite the writer commits and
    /// answers every queued write; on NATS pending acknowledgements are flushed and this
    /// sidecar's heartbeat is withdrawn.
    pub async fn close(&self) {
        on_backend!(self, s => s.close().await, n => n.close())
    }
}

fn in_savepoint<T>(
    tx: &Transaction<'_>,
    f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    tx.prepare_cached("SAVEPOINT op")?.execute([])?;
    match f(tx) {
        Ok(v) => {
            tx.prepare_cached("RELEASE op")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            tx.prepare_cached("ROLLBACK TO op")?.execute([])?;
            tx.prepare_cached("RELEASE op")?.execute([])?;
            Err(e)
        }
    }
}

/// A commit leaves the pages as they were before it in the WAL: the raw inputs of a job
/// whose inputs it just cleared, say. The writer runs a TRUNCATE checkpoint, which copies the
/// WAL into the database file (where `secure_delete` overwrote them) and empties it, once it
/// has been idle this long after a commit...
const CHECKPOINT_IDLE: Duration = Duration::from_millis(200);

/// ... and at least this often while commits keep coming.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// How long a checkpoint waits for readers and the evidence writer before it gives up until
/// the next turn (the writer's own writes wait meanwhile).
const CHECKPOINT_WAIT: Duration = Duration::from_millis(50);

fn writer_loop(conn: &mut Connection, rx: std_mpsc::Receiver<Op>) {
    // Since when the WAL holds commits no checkpoint has emptied.
    let mut dirty: Option<std::time::Instant> = None;
    loop {
        let first = match dirty {
            None => match rx.recv() {
                Ok(op) => op,
                Err(_) => break,
            },
            Some(_) => match rx.recv_timeout(CHECKPOINT_IDLE) {
                Ok(op) => op,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    checkpoint(conn, &mut dirty);
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // IMMEDIATE: take the write lock at the start. A deferred transaction that reads and
        // then writes fails at once (SQLITE_BUSY, no busy wait) if the evidence writer
        // committed in between.
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                error!(error = %e, "job store cannot begin a transaction; this batch of writes fails");
                let err = StoreError::from(e);
                for op in batch {
                    op(Err(&err))(Err(err.clone()));
                }
                continue;
            }
        };
        let replies: Vec<Reply> = batch.into_iter().map(|op| op(Ok(&tx))).collect();
        let committed = tx.commit().map_err(|e| {
            error!(error = %e, "job store commit failed; the operations of this batch are lost");
            StoreError::from(e)
        });
        let ok = committed.is_ok();
        for reply in replies {
            reply(committed.clone());
        }
        if ok {
            let since = *dirty.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= CHECKPOINT_EVERY {
                checkpoint(conn, &mut dirty);
            }
        }
    }
    if dirty.is_some() {
        checkpoint(conn, &mut dirty);
    }
}

/// Empty the WAL into the database file (`PRAGMA wal_checkpoint(TRUNCATE)`), waiting at most
/// [`CHECKPOINT_WAIT`] for others; when they are busy, the next try is a full turn later.
fn checkpoint(conn: &Connection, dirty: &mut Option<std::time::Instant>) {
    let _ = conn.busy_timeout(CHECKPOINT_WAIT);
    let done = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
    match done {
        Ok(0) => *dirty = None,
        Ok(_) => *dirty = Some(std::time::Instant::now()),
        Err(e) => {
            warn!(error = %e, "cannot checkpoint the job store's WAL");
            *dirty = Some(std::time::Instant::now());
        }
    }
}

/// The queue's SQL, one function per operation, each on a transaction and an explicit clock.
pub mod ops {
    use super::*;
    use crate::bindings::ResolvedInput;

    /// What never changes of a job ([`Head`]), in its order.
    macro_rules! head_columns {
        () => {
            "id, org, agent, function, call_id, tool_call_id, invocation_id, action, connection, \
             idempotency_key, reason, created_at"
        };
    }
    /// A job's [`Lifecycle`], in its order.
    macro_rules! life_columns {
        () => {
            "state, attempts, max_attempts, runnable_at, lease_owner, lease_until, hard_timeout_ms, \
             last_error, provider_message_id, idempotent, at_least_once, possibly_sent, \
             attempt_sent, inputs_cleared, retry_window_ms, updated_at, finished_at"
        };
    }
    const LIFE: &str = life_columns!();
    /// A whole job: its head, its lifecycle, then its inputs.
    const COLUMNS: &str = concat!(head_columns!(), ", ", life_columns!(), ", inputs");
    /// Where the lifecycle and the inputs start in a row of [`COLUMNS`].
    const LIFE_AT: usize = 12;
    const INPUTS_AT: usize = LIFE_AT + 17;

    fn head_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Head> {
        Ok(Head {
            id: r.get(0)?,
            org: r.get(1)?,
            agent: r.get(2)?,
            function: r.get(3)?,
            call_id: r.get(4)?,
            tool_call_id: r.get(5)?,
            invocation_id: r.get(6)?,
            action: r.get(7)?,
            connection: r.get(8)?,
            idempotency_key: r.get(9)?,
            reason: r.get(10)?,
            created_at: r.get(11)?,
        })
    }

    /// The [`LIFE`] columns of a row, from column `at`.
    fn life_of(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Lifecycle> {
        let state: String = r.get(at)?;
        Ok(Lifecycle {
            state: JobState::parse(&state).unwrap_or(JobState::Failed),
            attempts: r.get(at + 1)?,
            max_attempts: r.get(at + 2)?,
            runnable_at: r.get(at + 3)?,
            lease_owner: r.get(at + 4)?,
            lease_until: r.get(at + 5)?,
            hard_timeout_ms: r.get::<_, i64>(at + 6)? as u64,
            last_error: r.get(at + 7)?,
            provider_message_id: r.get(at + 8)?,
            idempotent: r.get::<_, i64>(at + 9)? != 0,
            at_least_once: r.get::<_, i64>(at + 10)? != 0,
            possibly_sent: r.get::<_, i64>(at + 11)? != 0,
            attempt_sent: r.get::<_, i64>(at + 12)? != 0,
            inputs_cleared: r.get::<_, i64>(at + 13)? != 0,
            retry_window_ms: r.get::<_, i64>(at + 14)? as u64,
            updated_at: r.get(at + 15)?,
            finished_at: r.get(at + 16)?,
        })
    }

    fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
        let inputs: String = r.get(INPUTS_AT)?;
        Ok(Job::assemble(
            head_of(r)?,
            life_of(r, LIFE_AT)?,
            serde_json::from_str::<Vec<ResolvedInput>>(&inputs).unwrap_or_default(),
        ))
    }

    /// Insert a job. A pending or succeeded job with the same action key is returned instead
    /// of a second one (the caller checks it is what it asked for); a failed or dead one keeps
    /// its history under a changed key, and the action is queued afresh. The new job starts
    /// where [`transitions::enqueue`] says.
    pub fn enqueue(tx: &Connection, job: &NewJob, now: Millis) -> Result<Job, StoreError> {
        if let Some(existing) = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE idempotency_key = ?1"
            ))?
            .query_row([&job.idempotency_key], row_to_job)
            .optional()?
        {
            if !matches!(existing.state, JobState::Failed | JobState::Dead) {
                return Ok(existing);
            }
            tx.prepare_cached(
                "UPDATE jobs SET idempotency_key = idempotency_key || '#' || id WHERE id = ?1",
            )?
            .execute([&existing.id])?;
        }
        let life = transitions::enqueue(job, now);
        let inputs = if life.inputs_cleared {
            "[]".to_owned()
        } else {
            serde_json::to_string(&job.inputs)
                .map_err(|e| StoreError::Sqlite(format!("inputs do not serialize: {e}")))?
        };
        let h = Head::new(job, job_id(), now);
        let l = &life;
        tx.prepare_cached(&format!(
            "INSERT INTO jobs ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
             ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, \
             ?29, ?30)"
        ))?
        .execute(params![
            h.id,
            h.org,
            h.agent,
            h.function,
            h.call_id,
            h.tool_call_id,
            h.invocation_id,
            h.action,
            h.connection,
            h.idempotency_key,
            h.reason,
            h.created_at,
            l.state.as_str(),
            l.attempts,
            l.max_attempts,
            l.runnable_at,
            l.lease_owner,
            l.lease_until,
            l.hard_timeout_ms as i64,
            l.last_error,
            l.provider_message_id,
            l.idempotent as i64,
            l.at_least_once as i64,
            l.possibly_sent as i64,
            l.attempt_sent as i64,
            l.inputs_cleared as i64,
            l.retry_window_ms as i64,
            l.updated_at,
            l.finished_at,
            inputs,
        ])?;
        get(tx, &h.id)?.ok_or_else(|| StoreError::Sqlite("inserted job vanished".into()))
    }

    /// One job's lifecycle (what [`super::transitions`] reads and writes).
    pub fn lifecycle(c: &Connection, id: &str) -> Result<Option<Lifecycle>, StoreError> {
        Ok(
            c.prepare_cached(&format!("SELECT {LIFE} FROM jobs WHERE id = ?1"))?
                .query_row([id], |r| life_of(r, 0))
                .optional()?,
        )
    }

    /// Lease the most overdue runnable job: a queued job whose time has come, or an in-flight
    /// one whose lease lapsed (its holder died). The lease lasts the attempt's budget plus
    /// [`LEASE_MARGIN`]. Taking over a lapsed lease of a provider without idempotency marks
    /// the job `at_least_once` if the dead holder had begun sending it ([`mark_sending`]):
    /// only then is the outcome genuinely unknown.
    pub fn claim(tx: &Connection, owner: &str, now: Millis) -> Result<Option<Job>, StoreError> {
        let margin = LEASE_MARGIN.as_millis() as i64;
        // A lapsed attempt counts: a job whose holders keep dying ends `dead`, not retried
        // forever.
        tx.prepare_cached(&format!(
            "UPDATE jobs SET state = 'dead', finished_at = ?1, updated_at = ?1, lease_owner = NULL, \
             lease_until = NULL, last_error = ?2, {} \
             WHERE state = 'in_flight' AND lease_until < ?1 AND attempts >= max_attempts",
            clear_inputs_if("1")
        ))?
        .execute(params![now, transitions::LAPSED])?;
        // Two lookups that each walk an index in order, rather than one OR that sorts.
        let due: Option<(String, Millis)> = tx
            .prepare_cached(
                "SELECT id, runnable_at FROM jobs WHERE state = 'queued' AND runnable_at <= ?1 \
                 ORDER BY runnable_at LIMIT 1",
            )?
            .query_row([now], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let lapsed: Option<(String, Millis)> = tx
            .prepare_cached(
                "SELECT id, lease_until FROM jobs WHERE state = 'in_flight' AND lease_until < ?1 \
                 ORDER BY lease_until LIMIT 1",
            )?
            .query_row([now], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let id = match (due, lapsed) {
            (Some(a), Some(b)) => {
                if a.1 <= b.1 {
                    a.0
                } else {
                    b.0
                }
            }
            (Some(a), None) => a.0,
            (None, Some(b)) => b.0,
            (None, None) => return Ok(None),
        };
        tx.execute(
            "UPDATE jobs SET \
               at_least_once = CASE WHEN state = 'in_flight' AND idempotent = 0 AND attempt_sent = 1 \
                 THEN 1 ELSE at_least_once END, \
               attempt_sent = 0, \
               state = 'in_flight', lease_owner = ?2, lease_until = ?3 + hard_timeout_ms + ?4, \
               attempts = attempts + 1, updated_at = ?3 \
             WHERE id = ?1",
            params![id, owner, now, margin],
        )?;
        get(tx, &id)
    }

    /// Record how attempt `attempt` ended, if `owner` still holds the lease for it: a lease
    /// that lapsed and was claimed again (even by the same owner) is fenced off by the attempt
    /// number.
    pub fn finish(
        tx: &Connection,
        id: &str,
        owner: &str,
        attempt: u32,
        finish: &Finish,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let held = format!(
            "id = ?1 AND state = 'in_flight' AND lease_owner = ?2 AND attempts = {attempt}"
        );
        let n = match finish {
            Finish::Succeeded { message_id } => tx.execute(
                &format!(
                    "UPDATE jobs SET state = 'succeeded', provider_message_id = ?3, last_error = NULL, \
                     inputs = '[]', inputs_cleared = 1, \
                     lease_owner = NULL, lease_until = NULL, runnable_at = NULL, updated_at = ?4, finished_at = ?4 \
                     WHERE {held}"
                ),
                params![id, owner, message_id, now],
            )?,
            Finish::Failed { error } => tx.execute(
                &format!(
                    "UPDATE jobs SET state = 'failed', last_error = ?3, lease_owner = NULL, lease_until = NULL, \
                     runnable_at = NULL, updated_at = ?4, finished_at = ?4, {} WHERE {held}",
                    clear_inputs_if("1")
                ),
                params![id, owner, error, now],
            )?,
            Finish::Retry {
                not_before,
                error,
                possibly_sent,
            } => tx.execute(
                &format!(
                    "UPDATE jobs SET \
                       state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
                       runnable_at = CASE WHEN attempts >= max_attempts THEN NULL ELSE ?3 END, \
                       finished_at = CASE WHEN attempts >= max_attempts THEN ?6 ELSE NULL END, \
                       at_least_once = CASE WHEN ?5 AND idempotent = 0 AND attempts < max_attempts THEN 1 ELSE at_least_once END, \
                       possibly_sent = ?5, \
                       last_error = ?4, lease_owner = NULL, lease_until = NULL, updated_at = ?6, {} \
                     WHERE {held}",
                    clear_inputs_if("attempts >= max_attempts")
                ),
                                params![id, owner, not_before, error, *possibly_sent, now],
            )?,
        };
        if n == 1 {
            return Ok(true);
        }
        // The same end reported again counts as recorded (as on NATS, where an answer can be
        // lost on the way).
        let row = tx
            .query_row(
                "SELECT state, attempts, lease_owner, last_error FROM jobs WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?;
        Ok(row.is_some_and(|(state, attempts, owner, error)| {
            JobState::parse(&state).is_some_and(|state| {
                finish.recorded_in(attempt, state, attempts, owner.as_deref(), error.as_deref())
            })
        }))
    }

    /// A claimed, unsent job back to `queued` from `not_before`, its claim not counted.
    pub fn put_back(
        tx: &Connection,
        id: &str,
        owner: &str,
        attempt: u32,
        not_before: Millis,
        why: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let n = tx.execute(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, runnable_at = ?4, \
             last_error = ?5, lease_owner = NULL, lease_until = NULL, updated_at = ?6 \
             WHERE id = ?1 AND state = 'in_flight' AND lease_owner = ?2 AND attempts = ?3",
            params![id, owner, attempt, not_before, why, now],
        )?;
        Ok(n == 1)
    }

    /// The lease holder of attempt `attempt` is about to send it: from now on its outcome is
    /// unknown until it reports back. `false` when it no longer holds the lease (it must not
    /// send).
    pub fn mark_sending(
        tx: &Connection,
        id: &str,
        owner: &str,
        attempt: u32,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let n = tx.execute(
            "UPDATE jobs SET attempt_sent = 1, possibly_sent = 1, updated_at = ?4 \
             WHERE id = ?1 AND state = 'in_flight' AND lease_owner = ?2 AND attempts = ?3",
            params![id, owner, attempt, now],
        )?;
        Ok(n == 1)
    }

    /// Held jobs (of one call, or all) become runnable now.
    pub fn release(
        tx: &Connection,
        call: Option<(&str, &str)>,
        now: Millis,
    ) -> Result<usize, StoreError> {
        let n = match call {
            Some((org, call_id)) => tx.execute(
                "UPDATE jobs SET runnable_at = ?3, updated_at = ?3 \
                 WHERE org = ?1 AND call_id = ?2 AND state = 'queued' AND runnable_at IS NULL",
                params![org, call_id, now],
            )?,
            None => tx.execute(
                "UPDATE jobs SET runnable_at = ?1, updated_at = ?1 WHERE state = 'queued' AND runnable_at IS NULL",
                params![now],
            )?,
        };
        Ok(n)
    }

    /// A queued job that has never reached the provider (never attempted, or its attempts
    /// were never sent) ends `failed` without being sent.
    pub fn cancel_unsent(
        tx: &Connection,
        id: &str,
        why: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let n = tx.execute(
            &format!(
                "UPDATE jobs SET state = 'failed', last_error = ?2, runnable_at = NULL, updated_at = ?3, \
                 finished_at = ?3, {} WHERE id = ?1 AND state = 'queued' AND possibly_sent = 0",
                clear_inputs_if("1")
            ),
            params![id, why, now],
        )?;
        Ok(n == 1)
    }

    /// A `failed` or `dead` job back to `queued`, runnable now, with fresh attempts.
    pub fn retry(
        tx: &Connection,
        id: &str,
        now: Millis,
    ) -> Result<Option<Result<Job, RetryRefused>>, StoreError> {
        let Some(job) = get(tx, id)? else {
            return Ok(None);
        };
        if !matches!(job.state, JobState::Failed | JobState::Dead) {
            return Ok(Some(Err(RetryRefused::State(job.state))));
        }
        if job.inputs_cleared {
            return Ok(Some(Err(RetryRefused::InputsCleared)));
        }
        tx.execute(
            "UPDATE jobs SET state = 'queued', runnable_at = ?2, attempts = 0, lease_owner = NULL, \
             lease_until = NULL, finished_at = NULL, updated_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        Ok(get(tx, id)?.map(Ok))
    }

    /// Clear the raw inputs of `failed` and `dead` jobs whose retry window has passed by
    /// `now`; how many.
    pub fn clear_expired_inputs(tx: &Connection, now: Millis) -> Result<usize, StoreError> {
        Ok(tx
            .prepare_cached(
                "UPDATE jobs SET inputs = '[]', inputs_cleared = 1 \
                 WHERE state IN ('failed', 'dead') AND inputs_cleared = 0 \
                 AND finished_at + retry_window_ms <= ?1",
            )?
            .execute([now])?)
    }

    /// One job.
    pub fn get(c: &Connection, id: &str) -> Result<Option<Job>, StoreError> {
        Ok(
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))?
                .query_row([id], row_to_job)
                .optional()?,
        )
    }

    /// Jobs newest first.
    pub fn list(
        c: &Connection,
        state: Option<JobState>,
        org: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let mut stmt = c.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR org = ?2) \
             ORDER BY created_at DESC, id DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![state.map(JobState::as_str), org, limit as i64],
            row_to_job,
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Jobs per state.
    pub fn counts(c: &Connection) -> Result<Vec<(JobState, u64)>, StoreError> {
        let mut stmt = c.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (state, n) = row?;
            if let Some(s) = JobState::parse(&state) {
                out.push((s, n as u64));
            }
        }
        Ok(out)
    }

    /// The earliest time a job becomes claimable.
    pub fn next_due(c: &Connection) -> Result<Option<Millis>, StoreError> {
        Ok(c.query_row(
            "SELECT MIN(t) FROM ( \
               SELECT MIN(runnable_at) AS t FROM jobs WHERE state = 'queued' AND runnable_at IS NOT NULL \
               UNION ALL SELECT MIN(lease_until) FROM jobs WHERE state = 'in_flight')",
            [],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::{Resolved, ResolvedInput, ValueSource};
    use crate::catalog::Action;
    use crate::workflow::DeferReason;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn new_job(key: &str, start: Start, max_attempts: u32) -> NewJob {
        NewJob {
            org: "acme".into(),
            agent: "support-bot".into(),
            function: "send_email_summary".into(),
            call_id: "c-1".into(),
            tool_call_id: format!("call_{key}"),
            invocation_id: format!("inv_{key}"),
            action: Action::ResendSendEmail,
            connection: "acme-resend".into(),
            inputs: vec![ResolvedInput {
                name: "to".into(),
                value: Resolved::Text("ana@example.com".into()),
                source: ValueSource::Arg("email".into()),
            }],
            idempotency_key: format!("tg_{key}"),
            idempotent: false,
            reason: DeferReason::Budget,
            max_attempts,
            hard_timeout: Duration::from_millis(1000),
            retry_window: Duration::ZERO,
            start,
        }
    }

    fn memory() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        migrate(&c).unwrap();
        c
    }

    #[test]
    fn an_older_file_gains_attempt_sent_and_treats_its_leases_as_possibly_sent() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(&SCHEMA.replace("  attempt_sent INTEGER NOT NULL DEFAULT 0,\n", ""))
            .unwrap();
        assert!(c.prepare("SELECT attempt_sent FROM jobs").is_err());
        migrate(&c).unwrap();
        migrate(&c).unwrap();
        let j = ops::enqueue(&c, &new_job("k1", Start::RunnableAt(0), 3), 0).unwrap();
        ops::claim(&c, "w", 0).unwrap().unwrap();
        // A job claimed by an older version: whether it was sent is unknown.
        c.execute("UPDATE jobs SET attempt_sent = 1", []).unwrap();
        let taken = ops::claim(&c, "w2", 1_000_000).unwrap().unwrap();
        assert_eq!(taken.id, j.id);
        assert!(taken.at_least_once);
    }

    #[test]
    fn an_older_file_loses_the_inputs_of_its_ended_jobs_and_keeps_those_still_to_run() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            &SCHEMA
                .replace("  inputs_cleared INTEGER NOT NULL DEFAULT 0,\n", "")
                .replace("  retry_window_ms INTEGER NOT NULL DEFAULT 0,\n", ""),
        )
        .unwrap();
        assert!(c.prepare("SELECT inputs_cleared FROM jobs").is_err());
        let row = |id: &str, state: &str| {
            c.execute(
                "INSERT INTO jobs (id, org, agent, function, call_id, tool_call_id, invocation_id, \
                 action, connection, inputs, idempotency_key, idempotent, reason, state, attempts, \
                 max_attempts, hard_timeout_ms, created_at, updated_at) VALUES (?1, 'acme', 'a', \
                 'f', 'c', ?1, ?1, 'resend.send_email', 'x', \
                 '[{\"name\":\"to\",\"value\":\"ana@example.com\",\"source\":\"arg:email\"}]', \
                 ?1, 1, 'budget', ?2, 1, 3, 1000, 0, 0)",
                params![id, state],
            )
            .unwrap();
        };
        row("job_failed", "failed");
        row("job_dead", "dead");
        row("job_queued", "queued");
        migrate(&c).unwrap();
        migrate(&c).unwrap();
        let raw = |id: &str| -> String {
            c.query_row("SELECT inputs FROM jobs WHERE id = ?1", [id], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(raw("job_failed"), "[]");
        assert_eq!(raw("job_dead"), "[]");
        assert!(raw("job_queued").contains("ana@example.com"));
        assert!(ops::get(&c, "job_dead").unwrap().unwrap().inputs_cleared);
        assert!(!ops::get(&c, "job_queued").unwrap().unwrap().inputs_cleared);
    }

    #[test]
    fn enqueue_is_idempotent_per_action_key() {
        let c = memory();
        let a = ops::enqueue(&c, &new_job("k1", Start::RunnableAt(0), 3), 0).unwrap();
        let b = ops::enqueue(&c, &new_job("k1", Start::RunnableAt(0), 3), 5).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(ops::counts(&c).unwrap(), vec![(JobState::Queued, 1)]);
        assert_eq!(a.inputs[0].value, Resolved::Text("ana@example.com".into()));
    }

    #[test]
    fn held_jobs_wait_for_their_call_to_end() {
        let c = memory();
        ops::enqueue(&c, &new_job("k1", Start::AfterCall, 3), 0).unwrap();
        assert!(ops::claim(&c, "w", 10).unwrap().is_none());
        assert_eq!(
            ops::release(&c, Some(("acme", "other-call")), 10).unwrap(),
            0
        );
        assert_eq!(ops::release(&c, Some(("acme", "c-1")), 10).unwrap(), 1);
        let j = ops::claim(&c, "w", 10).unwrap().unwrap();
        assert_eq!(j.attempts, 1);
    }

    #[test]
    fn a_live_lease_blocks_the_worker_until_it_lapses() {
        let c = memory();
        let live = Start::Live {
            owner: "live:a".into(),
            until: 5_000,
        };
        let j = ops::enqueue(&c, &new_job("k1", live, 3), 0).unwrap();
        assert_eq!((j.state, j.attempts), (JobState::InFlight, 1));
        assert!(ops::claim(&c, "worker", 4_999).unwrap().is_none());
        let taken = ops::claim(&c, "worker", 5_001).unwrap().unwrap();
        assert_eq!(taken.attempts, 2);
        assert!(
            taken.at_least_once,
            "the dead live request may have sent it"
        );
        // The old holder's late report is ignored.
        let late = Finish::Succeeded { message_id: None };
        assert!(!ops::finish(&c, &j.id, "live:a", 1, &late, 5_100).unwrap());
        // The same owner reporting for an attempt that is no longer current is fenced off.
        assert!(!ops::finish(&c, &j.id, "worker", 1, &late, 5_100).unwrap());
        assert!(ops::finish(&c, &j.id, "worker", 2, &late, 5_100).unwrap());
    }

    #[test]
    fn retries_end_dead_after_max_attempts() {
        let c = memory();
        let mut job = new_job("k1", Start::RunnableAt(0), 2);
        job.retry_window = Duration::from_secs(60);
        let j = ops::enqueue(&c, &job, 0).unwrap();
        let retry = |at| Finish::Retry {
            not_before: at,
            error: "HTTP 503".into(),
            possibly_sent: false,
        };
        ops::claim(&c, "w", 0).unwrap().unwrap();
        assert!(ops::finish(&c, &j.id, "w", 1, &retry(100), 10).unwrap());
        assert!(
            ops::claim(&c, "w", 99).unwrap().is_none(),
            "not before its time"
        );
        ops::claim(&c, "w", 100).unwrap().unwrap();
        assert!(ops::finish(&c, &j.id, "w", 2, &retry(200), 110).unwrap());
        let dead = ops::get(&c, &j.id).unwrap().unwrap();
        assert_eq!(dead.state, JobState::Dead);
        assert_eq!(dead.last_error.as_deref(), Some("HTTP 503"));
        let back = ops::retry(&c, &j.id, 300).unwrap().unwrap().unwrap();
        assert_eq!((back.state, back.attempts), (JobState::Queued, 0));
    }

    #[test]
    fn a_failed_action_asked_again_is_queued_afresh_keeping_its_history() {
        let c = memory();
        let a = ops::enqueue(&c, &new_job("k1", Start::RunnableAt(0), 3), 0).unwrap();
        ops::claim(&c, "w", 0).unwrap().unwrap();
        let refused = Finish::Failed {
            error: "422".into(),
        };
        assert!(ops::finish(&c, &a.id, "w", 1, &refused, 5).unwrap());
        let b = ops::enqueue(&c, &new_job("k1", Start::RunnableAt(10), 3), 10).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(b.state, JobState::Queued);
        assert_eq!(b.idempotency_key, "tg_k1", "the provider sees the same key");
        let old = ops::get(&c, &a.id).unwrap().unwrap();
        assert_eq!(old.state, JobState::Failed);
        assert_eq!(old.idempotency_key, format!("tg_k1#{}", a.id));
    }

    #[test]
    fn a_retry_whose_attempt_never_reached_the_provider_can_be_cancelled() {
        let c = memory();
        let start = |sent| Start::Retry {
            not_before: 1_000,
            possibly_sent: sent,
            error: "x".into(),
        };
        let unsent = ops::enqueue(&c, &new_job("k1", start(false), 3), 0).unwrap();
        let sent = ops::enqueue(&c, &new_job("k2", start(true), 3), 0).unwrap();
        assert!(ops::cancel_unsent(&c, &unsent.id, "barge_in", 1).unwrap());
        assert!(!ops::cancel_unsent(&c, &sent.id, "barge_in", 1).unwrap());
    }

    #[test]
    fn only_unsent_jobs_can_be_cancelled() {
        let c = memory();
        let a = ops::enqueue(&c, &new_job("k1", Start::AfterCall, 3), 0).unwrap();
        assert!(ops::cancel_unsent(&c, &a.id, "barge_in", 1).unwrap());
        assert_eq!(
            ops::get(&c, &a.id).unwrap().unwrap().state,
            JobState::Failed
        );
        let live = Start::Live {
            owner: "live:a".into(),
            until: 5_000,
        };
        let b = ops::enqueue(&c, &new_job("k2", live, 3), 0).unwrap();
        assert!(!ops::cancel_unsent(&c, &b.id, "barge_in", 1).unwrap());
    }

    #[tokio::test]
    async fn the_writer_commits_before_answering_and_batches_concurrent_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let store = Arc::new(JobStore::open(&path).unwrap());
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .enqueue(new_job(&i.to_string(), Start::RunnableAt(0), 3), 0)
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // A separate connection sees every answered enqueue: they were committed.
        let other = connect(&path).unwrap();
        assert_eq!(ops::counts(&other).unwrap(), vec![(JobState::Queued, 64)]);
        store.close().await;
        assert!(matches!(
            store
                .enqueue(new_job("late", Start::RunnableAt(0), 3), 0)
                .await,
            Err(StoreError::Closed)
        ));
    }

    /// The queue's SQL against [`transitions`], the state machine the NATS backend executes:
    /// any sequence of enqueues, claims, reports, releases, cancellations and time leaves every
    /// job exactly as the transitions say (state, attempts, lease, times, flags). Claims respect
    /// time and leases, nothing is lost, and a lease holder's report counts only while it holds
    /// the lease.
    #[derive(Debug, Clone)]
    enum Step {
        Enqueue(u8),
        Advance(u16),
        Claim(u8),
        Finish { worker: u8, how: u8 },
        Release,
        Cancel(u8),
        MarkSending(u8),
        PutBack(u8),
        Retry(u8),
        ClearInputs,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..8).prop_map(Step::Enqueue),
            (0u16..3000).prop_map(Step::Advance),
            (0u8..3).prop_map(Step::Claim),
            (0u8..3, 0u8..3).prop_map(|(worker, how)| Step::Finish { worker, how }),
            Just(Step::Release),
            (0u8..8).prop_map(Step::Cancel),
            (0u8..3).prop_map(Step::MarkSending),
            (0u8..3).prop_map(Step::PutBack),
            (0u8..8).prop_map(Step::Retry),
            Just(Step::ClearInputs),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn queue_keeps_the_transitions(steps in prop::collection::vec(step(), 1..60)) {
            use transitions::Verdict;
            let c = memory();
            let max_attempts = 3;
            let lease = 1000 + LEASE_MARGIN.as_millis() as i64;
            let mut now: Millis = 0;
            let mut model: HashMap<String, Lifecycle> = HashMap::new();
            let mut ids: HashMap<u8, String> = HashMap::new();
            let mut held: HashMap<String, (String, u32)> = HashMap::new(); // worker -> (job, attempt)
            for s in steps {
                match s {
                    Step::Enqueue(k) => {
                        let start = match k % 4 {
                            0 => Start::RunnableAt(now),
                            1 => Start::AfterCall,
                            2 => Start::Live { owner: "live".into(), until: now + lease },
                            _ => Start::Retry { not_before: now + 50, possibly_sent: k % 8 == 7, error: "503".into() },
                        };
                        let mut new = new_job(&k.to_string(), start.clone(), max_attempts);
                        new.idempotent = k % 3 == 0;
                        if k % 2 == 0 {
                            new.retry_window = Duration::from_millis(500);
                        }
                        let j = ops::enqueue(&c, &new, now).unwrap();
                        if let Some(prev) = ids.get(&k) {
                            let revived = matches!(model[prev].state, JobState::Failed | JobState::Dead);
                            prop_assert!(prev == &j.id || revived, "one pending job per key");
                            if !revived {
                                continue;
                            }
                            // A finished failure is queued afresh under the key.
                        }
                        ids.insert(k, j.id.clone());
                        if let Start::Live { owner, .. } = &start {
                            held.insert(owner.clone(), (j.id.clone(), 1));
                        }
                        model.insert(j.id.clone(), transitions::enqueue(&new, now));
                    }
                    Step::Advance(ms) => now += ms as Millis,
                    Step::Cancel(k) => {
                        let Some(id) = ids.get(&k).cloned() else { continue };
                        let ok = ops::cancel_unsent(&c, &id, "barge_in", now).unwrap();
                        let next = transitions::cancel_unsent(&model[&id], "barge_in", now);
                        prop_assert_eq!(ok, next.is_some(), "only a queued job never sent can be cancelled");
                        if let Some(n) = next {
                            model.insert(id, n);
                        }
                    }
                    Step::Release => {
                        ops::release(&c, Some(("acme", "c-1")), now).unwrap();
                        for m in model.values_mut() {
                            if let Some(n) = transitions::release(m, now) {
                                *m = n;
                            }
                        }
                    }
                    Step::Claim(w) => {
                        let owner = format!("w{w}");
                        let got = ops::claim(&c, &owner, now).unwrap();
                        // A claim ends every lapsed job out of attempts, and leases one of the
                        // claimable ones.
                        let mut claimable = Vec::new();
                        for (id, m) in model.iter_mut() {
                            match transitions::claim(m, &owner, now) {
                                Verdict::Dead(d) => *m = d,
                                Verdict::Claim(n) => claimable.push((id.clone(), n)),
                                Verdict::Later(_) | Verdict::Spent => {}
                            }
                        }
                        match got {
                            None => prop_assert!(claimable.is_empty(), "a claimable job was not claimed: {:?}", claimable),
                            Some(j) => {
                                let Some((_, n)) = claimable.into_iter().find(|(id, _)| *id == j.id) else {
                                    return Err(TestCaseError::fail("claimed a job that was not claimable"));
                                };
                                prop_assert_eq!(j.attempts, n.attempts);
                                model.insert(j.id.clone(), n);
                                held.insert(owner, (j.id, j.attempts));
                            }
                        }
                    }
                    Step::MarkSending(w) => {
                        let owner = format!("w{w}");
                        let Some((id, attempt)) = held.get(&owner).cloned() else { continue };
                        let ok = ops::mark_sending(&c, &id, &owner, attempt, now).unwrap();
                        let next = transitions::mark_sending(&model[&id], &owner, attempt, now);
                        prop_assert_eq!(ok, next.is_some(), "only the lease holder may send");
                        if let Some(n) = next {
                            model.insert(id, n);
                        }
                    }
                    Step::PutBack(w) => {
                        let owner = format!("w{w}");
                        let Some((id, attempt)) = held.remove(&owner) else { continue };
                        let ok = ops::put_back(&c, &id, &owner, attempt, now + 20, "circuit open", now).unwrap();
                        let next = transitions::put_back(&model[&id], &owner, attempt, now + 20, "circuit open", now);
                        prop_assert_eq!(ok, next.is_some(), "only the lease holder may put a job back");
                        if let Some(n) = next {
                            model.insert(id, n);
                        }
                    }
                    Step::Retry(k) => {
                        let Some(id) = ids.get(&k).cloned() else { continue };
                        let got = ops::retry(&c, &id, now).unwrap().unwrap();
                        let next = transitions::retry(&model[&id], now);
                        prop_assert_eq!(got.as_ref().err(), next.as_ref().err());
                        if let Ok(n) = next {
                            model.insert(id, n);
                        }
                    }
                    Step::ClearInputs => {
                        let n = ops::clear_expired_inputs(&c, now).unwrap();
                        let mut cleared = 0;
                        for m in model.values_mut() {
                            if let Some(next) = transitions::clear_expired_inputs(m, now) {
                                *m = next;
                                cleared += 1;
                            }
                        }
                        prop_assert_eq!(n, cleared);
                    }
                    Step::Finish { worker, how } => {
                        let owner = format!("w{worker}");
                        let Some((id, attempt)) = held.get(&owner).cloned() else { continue };
                        let finish = match how {
                            0 => Finish::Succeeded { message_id: Some("m".into()) },
                            1 => Finish::Failed { error: "refused".into() },
                            _ => Finish::Retry { not_before: now + 10, error: "503".into(), possibly_sent: true },
                        };
                        let ok = ops::finish(&c, &id, &owner, attempt, &finish, now).unwrap();
                        let before = &model[&id];
                        let next = transitions::finish(before, &owner, attempt, &finish, now);
                        let again = transitions::recorded(before, attempt, &finish);
                        prop_assert_eq!(ok, next.is_some() || again, "a report counts only from the lease holder");
                        if let Some(n) = next {
                            model.insert(id, n);
                        }
                        held.remove(&owner);
                    }
                }
                // Every job the model knows is stored, as the transitions say: nothing is lost.
                for (id, m) in &model {
                    let stored = ops::lifecycle(&c, id).unwrap().unwrap();
                    prop_assert_eq!(&stored, m, "job {}", id);
                    prop_assert!(stored.attempts <= max_attempts);
                }
            }
        }
    }
}
