//! The count of jobs per state on NATS (`toolgate_jobs{state}`, read at each `/metrics`
//! scrape) without reading every job each time.
//!
//! A task follows the jobs bucket's stream: first the last record of every job, then every
//! change, keeping each job's state in memory (a job id is a ULID: 16 bytes and a state per
//! kept job). A count waits until the index has applied everything the stream held when it
//! was asked, so it reads its own writes. Records removed without a tombstone (a stream purge:
//! pruning, a record that lost the race for its key) are not seen as changes: when the index
//! holds more jobs than the stream can, it reads the bucket afresh. It also does so every
//! [`RESYNC_EVERY`], and after any error; meanwhile counts are taken by reading the bucket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::JobState;

/// How long a count waits for the index to catch up before reading the bucket instead.
const CATCH_UP: Duration = Duration::from_secs(1);

/// The index is rebuilt this often, whatever happens.
const RESYNC_EVERY: Duration = Duration::from_secs(600);

/// Longest pause before following the stream again after an error.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a count needs of a job record.
#[derive(serde::Deserialize)]
pub(super) struct StateOnly {
    pub(super) state: JobState,
}

#[derive(Default)]
struct Tally {
    /// Every kept key: its job's state, or `None` for a deleted one (a tombstone).
    jobs: HashMap<u128, Option<JobState>>,
    counts: HashMap<JobState, u64>,
}

impl Tally {
    fn set(&mut self, id: u128, state: Option<JobState>) {
        if let Some(Some(old)) = self.jobs.insert(id, state)
            && let Some(n) = self.counts.get_mut(&old)
        {
            *n -= 1;
        }
        if let Some(new) = state {
            *self.counts.entry(new).or_default() += 1;
        }
    }
}

struct Inner {
    tally: Mutex<Tally>,
    /// The last stream sequence applied, once the first snapshot is complete (0 before).
    applied: watch::Sender<u64>,
    /// Rebuild now.
    resync: Notify,
}

/// The per-state counts of one jobs bucket, kept by a background task.
pub(crate) struct StateIndex {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl StateIndex {
    /// Start following `stream` (the bucket's), whose subjects are `<subject_prefix><job id>`.
    pub(crate) fn start(stream: stream::Stream, subject_prefix: String) -> StateIndex {
        let inner = Arc::new(Inner {
            tally: Mutex::new(Tally::default()),
            applied: watch::channel(0).0,
            resync: Notify::new(),
        });
        let task = tokio::spawn(follow_forever(stream, subject_prefix, inner.clone()));
        StateIndex { inner, task }
    }

    /// The count per state as of the stream's state `last_sequence` / `messages` (read just
    /// before), or `None` when the index is not caught up (or must be rebuilt): read the
    /// bucket instead.
    pub(crate) async fn counts(
        &self,
        last_sequence: u64,
        messages: u64,
    ) -> Option<Vec<(JobState, u64)>> {
        if messages == 0 {
            return Some(Vec::new());
        }
        let mut applied = self.inner.applied.subscribe();
        let caught_up = applied.wait_for(|s| *s >= last_sequence);
        let applied = match tokio::time::timeout(CATCH_UP, caught_up).await {
            Ok(Ok(s)) => *s,
            _ => {
                // Behind: slow, reconnecting, or waiting for a sequence a purge removed (the
                // stream's last message gone, it never comes). Rebuild.
                self.inner.resync.notify_one();
                return None;
            }
        };
        let tally = self.inner.tally.lock().expect("tally lock");
        // Keys written after the stream's state was read may be new: at most one each.
        let newer = applied.saturating_sub(last_sequence);
        let kept = tally.jobs.len() as u64;
        if kept > messages + newer || kept + newer < messages {
            drop(tally);
            debug!(
                kept,
                messages, "the job state index disagrees with the stream; rebuilding it"
            );
            self.inner.resync.notify_one();
            return None;
        }
        let mut out: Vec<(JobState, u64)> = tally
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (*s, *n))
            .collect();
        out.sort();
        Some(out)
    }
}

impl Drop for StateIndex {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow_forever(stream: stream::Stream, prefix: String, inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    let mut failures: u32 = 0;
    loop {
        *inner.tally.lock().expect("tally lock") = Tally::default();
        inner.applied.send_replace(0);
        let outcome = tokio::select! {
            r = follow(&stream, &prefix, &inner) => r,
            _ = inner.resync.notified() => Ok(()),
            _ = tokio::time::sleep(RESYNC_EVERY) => Ok(()),
        };
        match outcome {
            Ok(()) => {
                failures = 0;
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                failures += 1;
                if failures.is_power_of_two() {
                    warn!(error = %e, failures, "cannot follow the job states; job counts read every job meanwhile");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Read the last record of every job, then every change, into the tally. Returns only on an
/// error.
async fn follow(stream: &stream::Stream, prefix: &str, inner: &Inner) -> Result<(), String> {
    // Everything up to here is in the snapshot, or was removed: once the snapshot is read,
    // the index is caught up with at least this sequence.
    let before = stream
        .get_info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{prefix}>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut snapshot = consumer.cached_info().num_pending > 0;
    if !snapshot {
        inner.applied.send_replace(before.max(1));
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| e.to_string())?;
        let info = msg.info().map_err(|e| e.to_string())?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let id = msg
            .subject
            .as_str()
            .strip_prefix(prefix)
            .and_then(|k| k.strip_prefix("job_"))
            .and_then(|u| ulid::Ulid::from_string(u).ok())
            .map(u128::from);
        if let Some(id) = id {
            let state = if super::nats::is_put(msg.headers.as_ref()) {
                // A record that does not parse is kept, not counted.
                serde_json::from_slice::<StateOnly>(&msg.payload)
                    .ok()
                    .map(|r| r.state)
            } else {
                None
            };
            inner.tally.lock().expect("tally lock").set(id, state);
        }
        if snapshot && pending == 0 {
            snapshot = false;
            inner.applied.send_replace(sequence.max(before));
        } else if !snapshot {
            inner.applied.send_replace(sequence);
        }
    }
    Err("the job state stream ended".into())
}
