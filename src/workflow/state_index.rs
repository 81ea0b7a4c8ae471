//! The count of jobs per state on NATS (`toolgate_jobs{state}`, read at each `/metrics`
//! scrape) without reading every job each time.
//!
//! A task follows the jobs bucket's stream: first the last record of every job, then every
//! change, keeping each job's state in memory (about 17 bytes per kept job, plus the map's
//! overhead). A count waits until the index has applied everything the stream held when it
//! was asked, so it reads its own writes, and checks the index against the stream's message
//! count: records removed without a tombstone (a stream purge: pruning, a record that lost
//! the race for its key) are not seen as changes, and a disagreement rebuilds the index. So
//! does a recreated stream, an error, and [`RESYNC_EVERY`]; rebuilds are at least
//! [`MIN_REBUILD_GAP`] apart, and while one runs counts are taken by reading the bucket.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::JobState;

/// How long a count waits for the index to catch up before reading the bucket instead.
const CATCH_UP: Duration = Duration::from_secs(1);

/// The index is rebuilt this often, whatever happens.
const RESYNC_EVERY: Duration = Duration::from_secs(600);

/// Asked-for rebuilds are at least this far apart, so a bucket that takes long to read is
/// read to the end.
const MIN_REBUILD_GAP: Duration = Duration::from_secs(10);

/// Longest pause before following the stream again after an error.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a count needs of a job record.
#[derive(serde::Deserialize)]
pub(super) struct StateOnly {
    pub(super) state: JobState,
}

/// A kept key: a job id's ULID, or (any other key) a hash of the subject, marked apart.
type Key = [u8; 16];

#[derive(Default)]
struct Tally {
    /// Every kept key: its job's state, or `None` for one that is not counted (a tombstone,
    /// a record that does not parse, a key that is no job id).
    jobs: HashMap<Key, Option<JobState>>,
    counts: HashMap<JobState, u64>,
    /// The last stream sequence applied, once the snapshot is read (0 while building).
    applied: u64,
}

impl Tally {
    fn set(&mut self, key: Key, state: Option<JobState>) {
        if let Some(Some(old)) = self.jobs.insert(key, state)
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
    /// `Tally::applied`, for waiting on.
    applied: watch::Sender<u64>,
    /// When the stream being followed was created (a recreated stream is another one).
    created: Mutex<Option<i128>>,
    /// Rebuild now.
    resync: Notify,
}

impl Inner {
    fn applied(&self, tally: &mut Tally, sequence: u64) {
        tally.applied = sequence;
        self.applied.send_replace(sequence);
    }
}

/// The per-state counts of one jobs bucket, kept by a background task.
pub(crate) struct StateIndex {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl StateIndex {
    /// Start following `stream` (the bucket's), whose subjects are `<subject_prefix><key>`.
    pub(crate) fn start(stream: stream::Stream, subject_prefix: String) -> StateIndex {
        let inner = Arc::new(Inner {
            tally: Mutex::new(Tally::default()),
            applied: watch::channel(0).0,
            created: Mutex::new(None),
            resync: Notify::new(),
        });
        let task = tokio::spawn(follow_forever(stream, subject_prefix, inner.clone()));
        StateIndex { inner, task }
    }

    /// Stop following the stream.
    pub(crate) fn stop(&self) {
        self.task.abort();
    }

    /// The count per state as of the stream's state (`info`, read just before), or `None`
    /// when the index is building, behind, or must be rebuilt: read the bucket instead.
    pub(crate) async fn counts(&self, info: &stream::Info) -> Option<Vec<(JobState, u64)>> {
        let (last_sequence, messages) = (info.state.last_sequence, info.state.messages);
        if messages == 0 {
            return Some(Vec::new());
        }
        if *self.inner.applied.borrow() == 0 {
            // Building: it finishes on its own.
            return None;
        }
        if *self.inner.created.lock().expect("created lock")
            != Some(info.created.unix_timestamp_nanos())
        {
            self.rebuild("the jobs stream was created again");
            return None;
        }
        let mut applied = self.inner.applied.subscribe();
        let caught_up = applied.wait_for(|s| *s >= last_sequence);
        if tokio::time::timeout(CATCH_UP, caught_up).await.is_err() {
            // Slow, reconnecting, or waiting for a sequence a purge removed (the stream's last
            // message gone, it never comes).
            self.rebuild("the job state index is behind the stream");
            return None;
        }
        let tally = self.inner.tally.lock().expect("tally lock");
        let kept = tally.jobs.len() as u64;
        // With one message per key, the index holds exactly the stream's keys as of
        // `last_sequence`; keys written since then may be new, at most one per message.
        let newer = tally.applied.saturating_sub(last_sequence);
        let agrees = if newer == 0 {
            kept == messages
        } else {
            kept >= messages && kept <= messages + newer
        };
        if !agrees {
            drop(tally);
            debug!(
                kept,
                messages, newer, "the job state index disagrees with the stream"
            );
            self.rebuild("the job state index disagrees with the stream");
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

    fn rebuild(&self, why: &'static str) {
        debug!(why, "rebuilding the job state index");
        self.inner.resync.notify_one();
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
        let started = Instant::now();
        {
            let mut tally = inner.tally.lock().expect("tally lock");
            *tally = Tally::default();
            inner.applied(&mut tally, 0);
        }
        // A rebuild asked for too soon waits; one asked for meanwhile is kept for then.
        let asked = async {
            tokio::time::sleep_until(started + MIN_REBUILD_GAP).await;
            inner.resync.notified().await;
        };
        let outcome = tokio::select! {
            r = follow(&stream, &prefix, &inner) => r,
            _ = asked => Ok(()),
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

/// The key of a subject `<prefix><key>`.
fn key_of(key: &str) -> Key {
    if let Some(id) = key
        .strip_prefix("job_")
        .and_then(|u| ulid::Ulid::from_string(u).ok())
    {
        return u128::from(id).to_be_bytes();
    }
    // Not a job id: kept apart (a ULID's top bits are a timestamp, never all ones).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let mut out = [0xff; 16];
    out[8..].copy_from_slice(&h.finish().to_be_bytes());
    out
}

/// Read the last record of every job, then every change, into the tally. Returns only on an
/// error.
async fn follow(stream: &stream::Stream, prefix: &str, inner: &Inner) -> Result<(), String> {
    // Everything up to here is in the snapshot, or was removed: once the snapshot is read,
    // the index is caught up with at least this sequence.
    let info = stream.get_info().await.map_err(|e| e.to_string())?;
    let before = info.state.last_sequence;
    *inner.created.lock().expect("created lock") = Some(info.created.unix_timestamp_nanos());
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{prefix}>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pending = consumer.cached_info().num_pending;
    let mut snapshot = pending > 0;
    {
        let mut tally = inner.tally.lock().expect("tally lock");
        tally.jobs.reserve(pending as usize);
        if !snapshot {
            inner.applied(&mut tally, before);
        }
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| e.to_string())?;
        let info = msg.info().map_err(|e| e.to_string())?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let Some(key) = msg.subject.as_str().strip_prefix(prefix) else {
            continue;
        };
        let key = key_of(key);
        let state = if crate::storage::nats::is_put(msg.headers.as_ref()) {
            // A record that does not parse is kept, not counted.
            serde_json::from_slice::<StateOnly>(&msg.payload)
                .ok()
                .map(|r| r.state)
        } else {
            None
        };
        let mut tally = inner.tally.lock().expect("tally lock");
        tally.set(key, state);
        if snapshot && pending == 0 {
            snapshot = false;
            inner.applied(&mut tally, sequence.max(before));
        } else if !snapshot {
            inner.applied(&mut tally, sequence);
        }
    }
    Err("the job state stream ended".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_and_other_keys_never_collide_and_counts_follow_changes() {
        let a = ulid::Ulid::generate();
        let ka = key_of(&format!("job_{a}"));
        assert_eq!(ka, u128::from(a).to_be_bytes());
        let other = key_of("not-a-job");
        assert_eq!(&other[..8], &[0xff; 8]);
        assert_ne!(ka, other);
        let mut t = Tally::default();
        t.set(ka, Some(JobState::Queued));
        t.set(other, None);
        t.set(ka, Some(JobState::Succeeded));
        assert_eq!(t.jobs.len(), 2);
        assert_eq!(t.counts.get(&JobState::Queued), Some(&0));
        assert_eq!(t.counts.get(&JobState::Succeeded), Some(&1));
    }
}
