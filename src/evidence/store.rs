//! The evidence store: invocation records and call history in an embedded SQLite file of its
//! own beside the job store's ([`crate::config::StorageSettings::evidence_path`]), written by
//! one batching writer thread off the hot path. Its own file means its writer never holds the
//! lock the job store needs to answer `deferred`.
//!
//! [`EvidenceStore::submit`] never waits: it puts the event in a bounded queue and returns.
//! The writer drains whatever is queued into one transaction (`synchronous = NORMAL`: evidence
//! is not a promise to a caller, so it does not pay an fsync per batch the way jobs do), so a
//! slow disk slows the writer, never a tool result. If the disk stalls long enough to fill the
//! queue, events are dropped and counted (`toolgate_evidence_dropped_total`), with an error
//! log: data loss an operator must know about. The writer thread itself is in `writer.rs`.
//!
//! A final outcome ([`super::Final`]) is kept by job id beside the records it completes and
//! merged when read, so its order relative to them does not matter (a fast worker may finish a
//! job before the session has written the call's record), and every tool call answered with
//! that job (a repeat in a resumed call shares it) gets the job's end.
//!
//! Nothing is lost quietly: an event dropped because the queue is full or the store is closed,
//! or a batch SQLite refused twice, is counted (`toolgate_evidence_dropped_total`) and logged.
//!
//! With `storage.backend = "nats"` ([`EvidenceStore::open_nats`]) the file is this host's copy
//! of the evidence stream: submitted events are published instead of written, and the writer
//! applies every host's events from the stream, each exactly once (the stream position is
//! kept in the file, in the transaction of the rows it brought). The readers are the same for
//! both backends. See [`super::nats`].

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

pub use super::writer::QUEUE;
use super::writer::{Msg, count_drops, stream_position, writer_loop};
use super::{Event, Final, Invocation};
use crate::clock::Millis;
use crate::storage::StoreError;
use crate::storage::nats::NatsOptions;
use crate::storage::sqlite::{self, Reader};

/// How long the writer waits for the file's write lock when another process sharing the file
/// holds it (the sidecar's and a `toolgate worker`'s writers share it), before a batch counts
/// as refused. Longer than other connections' wait: the other writer may be an evidence
/// writer at idle CPU priority, starved mid-commit on a saturated machine for seconds, and
/// evidence waits better than it gets lost; nothing on a tool call's path waits for it.
const WRITE_LOCK_WAIT: Duration = Duration::from_secs(60);

/// The evidence store.
pub struct EvidenceStore {
    sender: Mutex<Option<std_mpsc::SyncSender<Msg>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    reader: Reader,
    dropped: Arc<AtomicU64>,
    /// The last evidence-stream sequence committed to the file (0 without NATS).
    applied: watch::Receiver<u64>,
    /// With `storage.backend = "nats"`: the publisher and the materializer.
    nats: Option<super::nats::Link>,
}

/// Files written before calls had a channel get the column (every older call was a v1 call).
fn add_channel_column(c: &Connection) -> Result<(), rusqlite::Error> {
    let has: bool = c
        .prepare("SELECT 1 FROM pragma_table_info('calls') WHERE name = 'channel'")?
        .exists([])?;
    if !has {
        c.execute_batch("ALTER TABLE calls ADD COLUMN channel TEXT NOT NULL DEFAULT 'v1'")?;
    }
    Ok(())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
  org TEXT NOT NULL,
  call_id TEXT NOT NULL,
  agent TEXT NOT NULL,
  caller TEXT,
  channel TEXT NOT NULL DEFAULT 'v1',
  started_at INTEGER NOT NULL,
  ended_at INTEGER,
  end_reason TEXT,
  PRIMARY KEY (org, call_id)
);
CREATE INDEX IF NOT EXISTS calls_started ON calls(started_at);
CREATE INDEX IF NOT EXISTS calls_id ON calls(call_id, started_at);
CREATE TABLE IF NOT EXISTS call_events (
  org TEXT NOT NULL,
  call_id TEXT NOT NULL,
  at INTEGER NOT NULL,
  data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS call_events_call ON call_events(org, call_id, at);
CREATE INDEX IF NOT EXISTS call_events_at ON call_events(at);
CREATE TABLE IF NOT EXISTS invocations (
  id TEXT PRIMARY KEY,
  org TEXT NOT NULL,
  call_id TEXT NOT NULL,
    function TEXT NOT NULL,
  agent TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL,
  source_type TEXT NOT NULL,
    parent_id TEXT,
  job_id TEXT,
  received_at INTEGER NOT NULL,
  record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS invocations_any_call ON invocations(call_id, received_at, id);
CREATE INDEX IF NOT EXISTS invocations_org_time ON invocations(org, received_at, id);
CREATE INDEX IF NOT EXISTS invocations_time ON invocations(received_at, id);
CREATE INDEX IF NOT EXISTS invocations_function ON invocations(org, function, received_at, id);
CREATE INDEX IF NOT EXISTS invocations_agent ON invocations(agent, received_at);
CREATE INDEX IF NOT EXISTS calls_agent ON calls(agent, started_at);
CREATE TABLE IF NOT EXISTS finals (
  job_id TEXT PRIMARY KEY,
  status TEXT NOT NULL,
  at INTEGER NOT NULL,
  data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS finals_at ON finals(at);
CREATE TABLE IF NOT EXISTS stream_position (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  stream TEXT NOT NULL,
  seq INTEGER NOT NULL
);
";

/// Indexes older files have and no query needs: every index is paid for by every insert (a
/// call's invocations are found by `call_id` alone, then its org checked; nothing looks an
/// invocation up by its parent or its job).
const DROPPED_INDEXES: &str = "
DROP INDEX IF EXISTS invocations_call;
DROP INDEX IF EXISTS invocations_parent;
DROP INDEX IF EXISTS invocations_job;
";

/// A call's invocations (`?1` org, `?2` call id), oldest first.
const CALL_INVOCATIONS: &str = "SELECT i.record, f.data FROM invocations i \
     LEFT JOIN finals f ON f.job_id = i.job_id \
     WHERE i.call_id = ?2 AND +i.org = ?1 ORDER BY i.received_at, i.id";

/// The functions a call called (`?1` org, `?2` call id).
const CALL_FUNCTIONS: &str =
    "SELECT DISTINCT function FROM invocations WHERE call_id = ?2 AND +org = ?1";

/// Filters of `GET /v1/invocations`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only this org.
    pub org: Option<String>,
    /// Only this call.
    pub call_id: Option<String>,
    /// Only this function.
    pub function: Option<String>,
    /// Only this (final) status.
    pub status: Option<String>,
    /// Only records received at or after this time.
    pub since: Option<Millis>,
    /// At most this many.
    pub limit: usize,
    /// Continue after this cursor (from the previous page).
    pub cursor: Option<String>,
}

/// One page of invocations.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// Newest first.
    pub invocations: Vec<Invocation>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What diagnostics read about one agent.
#[derive(Debug, Clone, Default)]
pub struct AgentEvidence {
    /// Its invocation records, newest first (live calls and workflow attempts).
    pub invocations: Vec<Invocation>,
    /// Its recent calls.
    pub calls: Vec<CallSummary>,
}

/// One call, as diagnostics see it.
#[derive(Debug, Clone, Default)]
pub struct CallSummary {
    /// Org.
    pub org: String,
    /// Call id.
    pub call_id: String,
    /// The caller's final turns (redacted), one per line.
    pub caller_text: String,
    /// The functions the model called.
    pub functions: std::collections::BTreeSet<String>,
}

/// A call's history and actions.
#[derive(Debug, Clone, Serialize)]
pub struct CallHistory {
    /// Org.
    pub org: String,
    /// Call id.
    pub call_id: String,
    /// Agent.
    pub agent: String,
    /// The caller's number, masked.
    pub caller: Option<String>,
    /// How the call reached toolgate (`v1`, `openai_realtime`, `deepgram`, `vapi`, ...).
    pub channel: String,
    /// When the session started.
    pub started_at: Millis,
    /// When it ended.
    pub ended_at: Option<Millis>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Transcript turns and consent events, then every action, on one timeline.
    pub timeline: Vec<Value>,
    /// The call's invocation records (workflow attempts included).
    pub invocations: Vec<Invocation>,
}

/// The query of `GET /v1/invocations` for `q`, and its arguments: only the filters given, so
/// SQLite can pick the index that fits them.
fn list_sql(q: &Query) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as Sql;
    let mut clauses: Vec<&str> = Vec::new();
    let mut args: Vec<Sql> = Vec::new();
    let mut filter = |clause: &'static str, value: Option<Sql>| {
        if let Some(v) = value {
            clauses.push(clause);
            args.push(v);
        }
    };
    // With a call id, its index finds the rows and the org is checked on them (`+` keeps
    // SQLite from walking the whole org's index instead).
    let org = if q.call_id.is_some() {
        "+i.org = ?"
    } else {
        "i.org = ?"
    };
    filter(org, q.org.clone().map(Sql::Text));
    filter("i.call_id = ?", q.call_id.clone().map(Sql::Text));
    filter("i.function = ?", q.function.clone().map(Sql::Text));
    filter(
        "COALESCE(f.status, i.status) = ?",
        q.status.clone().map(Sql::Text),
    );
    filter("i.received_at >= ?", q.since.map(Sql::Integer));
    if let Some((at, id)) = q.cursor.as_deref().and_then(decode_cursor) {
        clauses.push("(i.received_at < ? OR (i.received_at = ? AND i.id < ?))");
        args.extend([Sql::Integer(at), Sql::Integer(at), Sql::Text(id)]);
    }
    let sql = format!(
        "SELECT i.record, f.data, i.received_at, i.id FROM invocations i \
         LEFT JOIN finals f ON f.job_id = i.job_id {} \
         ORDER BY i.received_at DESC, i.id DESC LIMIT {}",
        if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        },
        q.limit + 1
    );
    (sql, args)
}

fn encode_cursor(at: Millis, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{at}:{id}"))
}

/// Whether `c` is a cursor this store gave out.
pub fn cursor_is_valid(c: &str) -> bool {
    decode_cursor(c).is_some()
}

fn decode_cursor(c: &str) -> Option<(Millis, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (at, id) = s.split_once(':')?;
    Some((at.parse().ok()?, id.to_owned()))
}

impl EvidenceStore {
    /// Open (creating) the store in the SQLite file at `path`. `writer_delay` slows every
    /// commit down (for benchmarks that prove the tool-call path does not wait on it).
    pub fn open(path: &Path, writer_delay: Duration) -> Result<EvidenceStore, StoreError> {
        EvidenceStore::open_file(path, writer_delay, None)
    }

    /// Open the store in the SQLite file at `path` as this host's copy of the evidence stream
    /// on NATS JetStream (`storage.backend = "nats"`): events submitted here are published to
    /// the stream, and every event on the stream (from any host) is applied to the file
    /// exactly once, so the readers answer for every call. `retain` is the stream's max age
    /// (`evidence.retain_days`). See [`super::nats`].
    pub async fn open_nats(
        path: &Path,
        writer_delay: Duration,
        options: &NatsOptions,
        retain: Duration,
    ) -> Result<EvidenceStore, StoreError> {
        EvidenceStore::open_nats_as(path, writer_delay, options, retain, true).await
    }

    /// [`EvidenceStore::open_nats`] for a process that serves no reads (`toolgate worker`):
    /// events are published, and the stream is not applied to the file, so its readers see
    /// nothing of it.
    pub async fn open_nats_publisher(
        path: &Path,
        writer_delay: Duration,
        options: &NatsOptions,
        retain: Duration,
    ) -> Result<EvidenceStore, StoreError> {
        EvidenceStore::open_nats_as(path, writer_delay, options, retain, false).await
    }

    async fn open_nats_as(
        path: &Path,
        writer_delay: Duration,
        options: &NatsOptions,
        retain: Duration,
        follow: bool,
    ) -> Result<EvidenceStore, StoreError> {
        let stream = super::nats::Stream::open(options, retain).await?;
        let mut store = EvidenceStore::open_file(path, writer_delay, Some(&stream.identity))?;
        let sender = store
            .sender
            .lock()
            .expect("evidence lock")
            .clone()
            .ok_or(StoreError::Closed)?;
        store.nats = Some(super::nats::Link::start(
            stream,
            sender,
            store.applied.clone(),
            store.dropped.clone(),
            follow,
        ));
        Ok(store)
    }

    /// Open the file; `stream` names the evidence stream this file is a copy of (its position
    /// starts over when the stream is not the one the file last followed).
    fn open_file(
        path: &Path,
        writer_delay: Duration,
        stream: Option<&str>,
    ) -> Result<EvidenceStore, StoreError> {
        sqlite::create_parent(path)?;
        let mut writer = sqlite::connect(path)?;
        writer.busy_timeout(WRITE_LOCK_WAIT)?;
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        writer.execute_batch(SCHEMA)?;
        writer.execute_batch(DROPPED_INDEXES)?;
        add_channel_column(&writer)?;
        let position = match stream {
            None => 0,
            Some(identity) => stream_position(&mut writer, identity)?,
        };
        let reader = Reader::open(path)?;
        let (tx, rx) = std_mpsc::sync_channel::<Msg>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = dropped.clone();
        let (applied_tx, applied) = watch::channel(position);
        let thread = sqlite::spawn_writer("toolgate-evidence", "the evidence writer", move || {
            writer_loop(&mut writer, rx, writer_delay, &writer_dropped, &applied_tx)
        })?;
        Ok(EvidenceStore {
            sender: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            reader,
            dropped,
            applied,
            nats: None,
        })
    }

    /// `"sqlite"` (this host's evidence only) or `"nats"` (every host's, from the stream).
    pub fn backend(&self) -> &'static str {
        if self.nats.is_some() {
            "nats"
        } else {
            "sqlite"
        }
    }

    /// The last evidence-stream sequence applied to this host's file (0 without NATS).
    pub fn applied_sequence(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Hand an event to the writer. Never waits; drops (and counts) it if the queue is full
    /// or the store is closed.
    pub fn submit(&self, event: Event) {
        if let Some(link) = &self.nats {
            if let Err(why) = link.submit(event) {
                count_drops(&self.dropped, 1, why);
            }
            return;
        }
        let sender = self.sender.lock().expect("evidence lock");
        let why = match sender.as_ref().map(|s| s.try_send(Msg::Event(event))) {
            Some(Ok(())) => return,
            Some(Err(std_mpsc::TrySendError::Full(_))) => {
                "evidence queue full (the disk is not keeping up); evidence is being lost"
            }
            Some(Err(std_mpsc::TrySendError::Disconnected(_))) => {
                "the evidence writer has stopped; evidence is being lost"
            }
            None => "evidence arrived after the store closed; it is lost",
        };
        drop(sender);
        count_drops(&self.dropped, 1, why);
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Wait until everything submitted so far is committed. With NATS: until what this host
    /// submitted so far is acknowledged by JetStream (or counted lost), and everything the
    /// stream held at that moment, from every host, is applied to this host's file (bounded:
    /// it gives up, with a warning, when NATS does not answer).
    pub async fn flush(&self) {
        if let Some(link) = &self.nats {
            link.flush().await;
        }
        self.flush_writer().await;
    }

    async fn flush_writer(&self) {
        let (tx, rx) = oneshot::channel();
        let sent = {
            let sender = self.sender.lock().expect("evidence lock");
            sender
                .as_ref()
                .is_some_and(|s| s.send(Msg::Flush(tx)).is_ok())
        };
        if sent {
            let _ = rx.await;
        }
    }

    /// One invocation (its final outcome merged in).
    pub async fn invocation(&self, id: &str) -> Result<Option<Invocation>, StoreError> {
        let id = id.to_owned();
        self.reader.read(move |c| {
            let row: Option<(String, Option<String>)> = c
                .prepare_cached(
                    "SELECT i.record, f.data FROM invocations i LEFT JOIN finals f ON f.job_id = i.job_id \
                     WHERE i.id = ?1",
                )?
                .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(row.and_then(|(record, fin)| merge(&record, fin.as_deref())))
        })
        .await
    }

    /// Invocations, newest first, a page at a time.
    pub async fn invocations(&self, q: Query) -> Result<Page, StoreError> {
        self.reader
            .read(move |c| {
                let (sql, args) = list_sql(&q);
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Millis>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })?;
                let mut out = Vec::new();
                let mut last = None;
                let mut more = false;
                for row in rows {
                    let (record, fin, at, id) = row?;
                    if out.len() == q.limit {
                        more = true;
                        break;
                    }
                    last = Some((at, id));
                    if let Some(inv) = merge(&record, fin.as_deref()) {
                        out.push(inv);
                    }
                }
                Ok(Page {
                    invocations: out,
                    next_cursor: if more {
                        last.map(|(at, id)| encode_cursor(at, &id))
                    } else {
                        None
                    },
                })
            })
            .await
    }

    /// A call's history: its transcript and every action on one timeline. `org` limits it to
    /// one org (an org-scoped token); `None` finds the latest call with this id in any org.
    pub async fn call(
        &self,
        org: Option<String>,
        call_id: &str,
    ) -> Result<Option<CallHistory>, StoreError> {
        let call_id = call_id.to_owned();
        self.reader.read(move |c| {
                        let head = c
                .prepare_cached(
                    "SELECT org, agent, caller, started_at, ended_at, end_reason, channel FROM calls \
                     WHERE call_id = ?1 AND (?2 IS NULL OR org = ?2) ORDER BY started_at DESC LIMIT 1",
                )?
                .query_row(params![call_id, org], |r| {
                    Ok(CallHistory {
                        org: r.get(0)?,
                        call_id: call_id.clone(),
                        agent: r.get(1)?,
                        caller: r.get(2)?,
                        started_at: r.get(3)?,
                        ended_at: r.get(4)?,
                        end_reason: r.get(5)?,
                        channel: r.get(6)?,
                        timeline: Vec::new(),
                        invocations: Vec::new(),
                    })
                })
                .optional()?;
            let Some(mut call) = head else {
                return Ok(None);
            };
            let (org, agent, started_at, ended_at) =
                (call.org.clone(), call.agent.clone(), call.started_at, call.ended_at);
            let mut events: Vec<(Millis, Value)> = Vec::new();
            let mut stmt = c.prepare_cached(
                "SELECT at, data FROM call_events WHERE org = ?1 AND call_id = ?2 ORDER BY at, rowid",
            )?;
            for row in stmt.query_map(params![org, call_id], |r| {
                Ok((r.get::<_, Millis>(0)?, r.get::<_, String>(1)?))
            })? {
                let (at, data) = row?;
                let mut v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                v["at"] = json!(at);
                events.push((at, v));
            }
            let mut stmt = c.prepare_cached(
                CALL_INVOCATIONS,
            )?;
            let invocations: Vec<Invocation> = stmt
                .query_map(params![org, call_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                })?
                .filter_map(|row| row.ok())
                .filter_map(|(record, fin)| merge(&record, fin.as_deref()))
                .collect();
                        events.insert(0, (started_at, json!({"type": "session.start", "at": started_at, "agent": agent})));
            for inv in &invocations {
                for (at, v) in timeline_of(inv) {
                    events.push((at, v));
                }
            }
                        if let Some(end) = ended_at {
                events.push((end, json!({"type": "session.end", "at": end, "reason": call.end_reason})));
            }
            // Stable: equal times keep insertion order (a turn before the call it prompted).
            events.sort_by_key(|(at, _)| *at);
            call.timeline = events.into_iter().map(|(_, v)| v).collect();
            call.invocations = invocations;
            Ok(Some(call))
        })
        .await
    }

    /// What diagnostics read about one agent since `since`: its invocation records (live and
    /// workflow, final outcomes merged), and for its most recent `max_calls` calls, what the
    /// caller said and which functions were called.
    pub async fn agent_evidence(
        &self,
        org: Option<String>,
        agent: &str,
        since: Millis,
        max_calls: usize,
    ) -> Result<AgentEvidence, StoreError> {
        let agent = agent.to_owned();
        self.reader.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT i.record, f.data FROM invocations i LEFT JOIN finals f ON f.job_id = i.job_id \
                 WHERE i.agent = ?1 AND i.received_at >= ?2 AND (?3 IS NULL OR i.org = ?3) \
                 ORDER BY i.received_at DESC LIMIT 100000",
            )?;
            let invocations: Vec<Invocation> = stmt
                .query_map(params![agent, since, org], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                })?
                .filter_map(Result::ok)
                .filter_map(|(record, fin)| merge(&record, fin.as_deref()))
                .collect();
            let mut stmt = c.prepare_cached(
                "SELECT org, call_id FROM calls WHERE agent = ?1 AND started_at >= ?2 \
                 AND (?3 IS NULL OR org = ?3) ORDER BY started_at DESC LIMIT ?4",
            )?;
            let heads: Vec<(String, String)> = stmt
                .query_map(params![agent, since, org, max_calls as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .filter_map(Result::ok)
                .collect();
            let mut calls = Vec::with_capacity(heads.len());
            for (org, call_id) in heads {
                let mut turns = c.prepare_cached(
                    "SELECT data FROM call_events WHERE org = ?1 AND call_id = ?2 ORDER BY at, rowid",
                )?;
                let caller_text = turns
                    .query_map(params![org, call_id], |r| r.get::<_, String>(0))?
                    .filter_map(Result::ok)
                    .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
                    .filter(|v| v["role"] == "caller" && v["final"] != false)
                    .filter_map(|v| v["text"].as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
                    .join("\n");
                let mut called = c.prepare_cached(
                    CALL_FUNCTIONS,
                )?;
                let functions = called
                    .query_map(params![org, call_id], |r| r.get::<_, String>(0))?
                    .filter_map(Result::ok)
                    .collect();
                calls.push(CallSummary {
                    org,
                    call_id,
                    caller_text,
                    functions,
                });
            }
            Ok(AgentEvidence { invocations, calls })
        })
        .await
    }

    /// Delete calls, history, invocations and job outcomes older than `before`. The writer
    /// does it in short transactions between its batches.
    pub async fn prune(&self, before: Millis) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let sender = self.sender.lock().expect("evidence lock");
            let sender = sender.as_ref().ok_or(StoreError::Closed)?;
            sender
                .send(Msg::Prune(before, tx))
                .map_err(|_| StoreError::Closed)?;
        }
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Sqlite)
    }

    /// Stop the writer after it has committed everything queued. With NATS, what is queued
    /// for publishing is published first (bounded by the request timeout), and the
    /// materializer stops.
    pub async fn close(&self) {
        if let Some(link) = &self.nats {
            link.close().await;
        }
        self.sender.lock().expect("evidence lock").take();
        let thread = self.thread.lock().expect("evidence lock").take();
        if let Some(t) = thread {
            sqlite::join_writer(t, None).await;
        }
    }
}

impl Drop for EvidenceStore {
    fn drop(&mut self) {
        self.sender.lock().expect("evidence lock").take();
    }
}

/// A record with its final outcome (if any) merged in.
fn merge(record: &str, fin: Option<&str>) -> Option<Invocation> {
    let mut inv: Invocation = serde_json::from_str(record).ok()?;
    if let Some(f) = fin.and_then(|f| serde_json::from_str::<Final>(f).ok()) {
        inv.status = f.status;
        inv.is_final = true;
        inv.final_at = Some(f.at);
        if f.error_code.is_some() || inv.status != "succeeded" {
            inv.error_code = f.error_code;
            inv.error_message = f.error_message;
        } else {
            inv.error_code = None;
            inv.error_message = None;
        }
        inv.provider_message_id = f.provider_message_id.or(inv.provider_message_id);
        inv.at_least_once |= f.at_least_once;
        if f.cancelled.is_some() {
            inv.cancelled = f.cancelled;
        }
    }
    Some(inv)
}

/// An invocation's entries on a call's timeline.
fn timeline_of(inv: &Invocation) -> Vec<(Millis, Value)> {
    let at = |ms: u64| inv.received_at + ms as Millis;
    let mut out = Vec::new();
    if inv.source_type == super::SourceType::Workflow {
        out.push((
            inv.received_at,
            json!({"type": "workflow.attempt", "at": inv.received_at, "invocation_id": inv.invocation_id,
                   "parent_invocation_id": inv.parent_invocation_id, "function": inv.function,
                   "status": inv.status, "error_code": inv.error_code}),
        ));
        return out;
    }
    out.push((
        inv.received_at,
        json!({"type": "tool.call", "at": inv.received_at, "invocation_id": inv.invocation_id, "function": inv.function}),
    ));
    for f in &inv.timeline.filler_ms {
        out.push((at(*f), json!({"type": "tool.filler", "at": at(*f), "invocation_id": inv.invocation_id, "elapsed_ms": f})));
    }
    if let Some(a) = inv.timeline.answered_ms {
        out.push((
            at(a),
            json!({"type": "tool.result", "at": at(a), "invocation_id": inv.invocation_id,
                   "status": inv.answered_status, "error_code": inv.error_code, "elapsed_ms": a}),
        ));
    }
    if let (true, Some(fin)) = (
        inv.answered_status != inv.status || inv.workflow_job_id.is_some(),
        inv.final_at,
    ) {
        out.push((
            fin,
            json!({"type": "job.outcome", "at": fin, "invocation_id": inv.invocation_id,
                   "job_id": inv.workflow_job_id, "status": inv.status, "error_code": inv.error_code}),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{CallStart, SourceType, Timeline};

    fn inv(id: &str, call: &str, at: Millis, status: &str) -> Invocation {
        Invocation {
            invocation_id: id.into(),
            source_type: SourceType::Agent,
            parent_invocation_id: None,
            org_id: "acme".into(),
            call_id: call.into(),
            agent_id: "bot".into(),
            function: "f".into(),
            action: None,
            connection_id: None,
            channel: None,
            received_at: at,
            status: status.into(),
            answered_status: status.into(),
            is_final: status != "deferred",
            final_at: None,
            error_code: None,
            error_message: None,
            missing_fields: Vec::new(),
            guards: Vec::new(),
            inputs_redacted: Default::default(),
            request_payload_redacted: None,
            response_payload_redacted: None,
            provider_message_id: None,
            latency_ms: None,
            timeline: Timeline::default(),
            workflow_job_id: Some(format!("job_{id}")),
            deferral_reason: None,
            at_least_once: false,
            cancelled: None,
            transcript_context: Vec::new(),
            arguments_redacted: None,
            session_redacted: None,
        }
    }

    fn fin(id: &str, status: &str) -> Final {
        Final {
            job_id: format!("job_{id}"),
            invocation_id: id.into(),
            status: status.into(),
            error_code: None,
            error_message: None,
            provider_message_id: Some("m-1".into()),
            at_least_once: true,
            cancelled: None,
            at: 99,
        }
    }

    /// Every query of invocations walks an index that fits it, and an older file loses the
    /// indexes nothing reads.
    #[test]
    fn queries_use_the_indexes_that_remain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch(
                "CREATE INDEX invocations_call ON invocations(org, call_id, received_at, id);\
                 CREATE INDEX invocations_parent ON invocations(parent_id);\
                 CREATE INDEX invocations_job ON invocations(job_id);",
            )
            .unwrap();
        }
        drop(EvidenceStore::open(&path, Duration::ZERO).unwrap());
        let c = Connection::open(&path).unwrap();
        let indexes: Vec<String> = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'invocations' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            indexes,
            [
                "invocations_agent",
                "invocations_any_call",
                "invocations_function",
                "invocations_org_time",
                "invocations_time"
            ]
        );
        let plan = |sql: &str, args: &[rusqlite::types::Value]| -> String {
            c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .filter(|d| d.contains(" i ") || d.contains("invocations"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let text = |v: &str| rusqlite::types::Value::Text(v.into());
        let org_call = [text("acme"), text("c1")];
        for sql in [CALL_INVOCATIONS, CALL_FUNCTIONS] {
            let p = plan(sql, &org_call);
            assert!(p.contains("USING INDEX invocations_any_call"), "{sql}: {p}");
        }
        let list = |q: Query| {
            let (sql, args) = list_sql(&q);
            plan(&sql, &args)
        };
        let q = |org: Option<&str>, call: Option<&str>, function: Option<&str>| Query {
            org: org.map(str::to_owned),
            call_id: call.map(str::to_owned),
            function: function.map(str::to_owned),
            limit: 10,
            ..Query::default()
        };
        for (query, index) in [
            (q(Some("acme"), Some("c1"), None), "invocations_any_call"),
            (q(None, Some("c1"), None), "invocations_any_call"),
            (q(Some("acme"), None, None), "invocations_org_time"),
            (q(Some("acme"), None, Some("f")), "invocations_function"),
            (q(None, None, None), "invocations_time"),
        ] {
            let p = list(query.clone());
            assert!(p.contains(&format!("INDEX {index}")), "{query:?}: {p}");
        }
    }

    #[tokio::test]
    async fn a_final_outcome_applies_whichever_arrives_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = EvidenceStore::open(&dir.path().join("e.db"), Duration::ZERO).unwrap();
        // The job ended before the session wrote the record, and the other way round.
        store.submit(Event::Final(Box::new(fin("inv_a", "succeeded"))));
        store.submit(Event::Invocation(Box::new(inv(
            "inv_a", "c1", 10, "deferred",
        ))));
        store.submit(Event::Invocation(Box::new(inv(
            "inv_b", "c1", 11, "deferred",
        ))));
        store.submit(Event::Final(Box::new(fin("inv_b", "dead"))));
        // A later rewrite of the record (the live request ended) keeps the final outcome.
        store.submit(Event::Invocation(Box::new(inv(
            "inv_a", "c1", 10, "deferred",
        ))));
        store.flush().await;
        let a = store.invocation("inv_a").await.unwrap().unwrap();
        assert_eq!(
            (a.status.as_str(), a.is_final, a.final_at),
            ("succeeded", true, Some(99))
        );
        assert_eq!(a.answered_status, "deferred");
        assert_eq!(a.provider_message_id.as_deref(), Some("m-1"));
        assert!(a.at_least_once);
        let b = store.invocation("inv_b").await.unwrap().unwrap();
        assert_eq!(b.status, "dead");
        // The status filter reads the final status.
        let q = |status: &str| Query {
            status: Some(status.into()),
            limit: 10,
            ..Query::default()
        };
        assert_eq!(listed(&store, q("succeeded")).await, 1);
        assert_eq!(listed(&store, q("deferred")).await, 0);
        store.close().await;
    }

    /// Another process's writer (a `toolgate worker`'s, or a sidecar's starved at idle CPU
    /// priority) holds the file's write lock for longer than two ordinary lock waits: the
    /// batch waits for it and is written, not counted lost.
    #[tokio::test]
    async fn a_batch_waits_out_another_writer_holding_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let store = EvidenceStore::open(&path, Duration::ZERO).unwrap();
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            let mut c = rusqlite::Connection::open(&path).unwrap();
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            locked_tx.send(()).unwrap();
            // Past a 5 s wait, a 50 ms pause and a second 5 s wait.
            #[allow(clippy::disallowed_methods, reason = "the test's helper thread")]
            std::thread::sleep(sqlite::BUSY_TIMEOUT * 2 + Duration::from_millis(500));
            tx.commit().unwrap();
        });
        locked.recv().unwrap();
        store.submit(Event::Invocation(Box::new(inv(
            "inv_a",
            "c1",
            10,
            "succeeded",
        ))));
        store.flush().await;
        other.join().unwrap();
        assert_eq!(store.dropped(), 0);
        assert!(store.invocation("inv_a").await.unwrap().is_some());
        store.close().await;
    }

    /// How many invocations `q` lists.
    async fn listed(store: &EvidenceStore, q: Query) -> usize {
        store.invocations(q).await.unwrap().invocations.len()
    }

    #[tokio::test]
    async fn prune_deletes_what_is_older_than_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = EvidenceStore::open(&dir.path().join("e.db"), Duration::ZERO).unwrap();
        for (call, at) in [("old", 1_000), ("new", 5_000)] {
            store.submit(Event::CallStarted(CallStart {
                org: "acme".into(),
                call_id: call.into(),
                agent: "bot".into(),
                caller: None,
                channel: "v1".into(),
                at,
            }));
            store.submit(Event::Invocation(Box::new(inv(
                &format!("inv_{call}"),
                call,
                at,
                "deferred",
            ))));
            store.submit(Event::Final(Box::new(fin(
                &format!("inv_{call}"),
                "failed",
            ))));
        }
        store.flush().await;
        assert!(store.prune(3_000).await.unwrap() >= 3);
        assert!(store.call(None, "old").await.unwrap().is_none());
        assert!(store.invocation("inv_old").await.unwrap().is_none());
        let new = store.call(None, "new").await.unwrap().unwrap();
        assert_eq!(new.invocations.len(), 1);
        store.close().await;
    }

    #[tokio::test]
    async fn pages_never_skip_or_repeat_records_of_the_same_millisecond() {
        let dir = tempfile::tempdir().unwrap();
        let store = EvidenceStore::open(&dir.path().join("e.db"), Duration::ZERO).unwrap();
        let mut ids: Vec<String> = (0..7).map(|i| format!("inv_{i:02}")).collect();
        for id in &ids {
            store.submit(Event::Invocation(Box::new(inv(id, "c1", 42, "succeeded"))));
        }
        store.flush().await;
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .invocations(Query {
                    call_id: Some("c1".into()),
                    limit: 3,
                    cursor: cursor.take(),
                    ..Query::default()
                })
                .await
                .unwrap();
            seen.extend(page.invocations.into_iter().map(|i| i.invocation_id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        ids.reverse();
        assert_eq!(seen, ids);
        store.close().await;
    }

    #[tokio::test]
    async fn a_final_reaches_every_call_answered_with_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = EvidenceStore::open(&dir.path().join("e.db"), Duration::ZERO).unwrap();
        // Two tool calls answered `deferred` with one job (the second found it queued).
        store.submit(Event::Invocation(Box::new(inv(
            "inv_a", "c1", 10, "deferred",
        ))));
        let mut b = inv("inv_b", "c1", 20, "deferred");
        b.workflow_job_id = Some("job_inv_a".into());
        store.submit(Event::Invocation(Box::new(b)));
        let mut attempt = inv("inv_w", "c1", 30, "succeeded");
        attempt.source_type = SourceType::Workflow;
        attempt.workflow_job_id = Some("job_inv_a".into());
        store.submit(Event::Invocation(Box::new(attempt)));
        store.submit(Event::Final(Box::new(fin("inv_a", "succeeded"))));
        store.flush().await;
        for id in ["inv_a", "inv_b"] {
            let r = store.invocation(id).await.unwrap().unwrap();
            assert_eq!((r.status.as_str(), r.is_final), ("succeeded", true), "{id}");
        }
        // A workflow attempt is final as written: the job's end does not rewrite it.
        let w = store.invocation("inv_w").await.unwrap().unwrap();
        assert_eq!(w.final_at, None);
        store.close().await;
    }

    #[tokio::test]
    async fn events_after_close_are_counted_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = EvidenceStore::open(&dir.path().join("e.db"), Duration::ZERO).unwrap();
        store.close().await;
        store.submit(Event::Invocation(Box::new(inv(
            "inv_late",
            "c1",
            1,
            "succeeded",
        ))));
        assert_eq!(store.dropped(), 1);
        assert!(matches!(store.prune(0).await, Err(StoreError::Closed)));
    }

    /// The scheduling policy (0 ordinary, 5 `SCHED_IDLE`) and nice value of this process's
    /// evidence writer thread (`None` until the thread has named itself).
    #[cfg(target_os = "linux")]
    fn writer_policy() -> Option<(u32, i32)> {
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if comm.trim_end() != "toolgate-eviden" {
                continue;
            }
            let stat = std::fs::read_to_string(task.join("stat")).unwrap();
            // Fields after the name: state is field 3, nice 19, policy 41.
            let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            return Some((rest[38].parse().unwrap(), rest[16].parse().unwrap()));
        }
        None
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_writer_idles_while_it_keeps_up_and_catches_up_as_an_ordinary_thread() {
        use crate::evidence::priority::WRITER_NICE;
        let dir = tempfile::tempdir().unwrap();
        // Each commit stalls 50 ms, so events pile up behind it.
        let store =
            EvidenceStore::open(&dir.path().join("e.db"), Duration::from_millis(50)).unwrap();
        let event = |n: usize| {
            Event::Invocation(Box::new(inv(
                &format!("inv_{n:06}"),
                "c1",
                n as Millis,
                "succeeded",
            )))
        };
        // The thread names itself, then sets its priority, as it starts.
        let mut started = None;
        for _ in 0..500 {
            started = writer_policy().filter(|p| *p != (0, 0));
            if started.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = started.expect("the writer thread sets its priority");
        // May a thread of this process come back from nice 10 to 0 (what leaving SCHED_IDLE
        // takes)? Asked on a thread of its own.
        let may_come_back = std::thread::spawn(|| {
            let tid = rustix::thread::gettid();
            rustix::process::setpriority_process(Some(tid), 10).is_ok()
                && rustix::process::setpriority_process(Some(tid), 0).is_ok()
        })
        .join()
        .unwrap();
        assert_eq!(
            started.0 == 5,
            may_come_back,
            "idle priority exactly when it can be left"
        );
        if !may_come_back {
            // Without the right to leave SCHED_IDLE again (no CAP_SYS_NICE, RLIMIT_NICE below
            // 20), the writer is an ordinary thread at nice 10 throughout.
            assert_eq!(
                started,
                (0, WRITER_NICE),
                "the writer's policy and nice value"
            );
            eprintln!("this process may not leave SCHED_IDLE: checked the nice-10 fallback only");
            return;
        }
        // 2,000 events fill whole batches (512): the writer is behind, and works as an
        // ordinary thread at nice 10 while it catches up.
        for n in 0..2_000 {
            store.submit(event(n));
        }
        let mut seen = Vec::new();
        for _ in 0..5_000 {
            let now = writer_policy().unwrap();
            if now.0 == 0 {
                seen.push(now);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            seen,
            [(0, WRITER_NICE)],
            "a full batch makes the writer ordinary, at nice 10"
        );
        store.flush().await;
        // A small batch: it has caught up, and is back to idle time only.
        store.submit(event(2_000));
        store.flush().await;
        assert_eq!(
            writer_policy().unwrap().0,
            5,
            "a small batch puts the writer back on SCHED_IDLE"
        );
        assert_eq!(store.dropped(), 0);
        let page = store
            .invocations(Query {
                limit: 10,
                ..Query::default()
            })
            .await
            .unwrap();
        assert_eq!(page.invocations[0].invocation_id, "inv_002000");
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = encode_cursor(1_795_000_000_000, "inv_01ABC");
        assert_eq!(
            decode_cursor(&c),
            Some((1_795_000_000_000, "inv_01ABC".into()))
        );
        assert!(!cursor_is_valid("!!"));
        assert!(!cursor_is_valid("bm9jb2xvbg"));
    }
}
