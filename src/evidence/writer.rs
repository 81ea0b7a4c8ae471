//! The evidence writer thread: it drains the queue of events (and, with NATS, of rows from the
//! evidence stream) into batched transactions on the evidence file, each row applied once, and
//! runs pruning between batches. [`super::store::EvidenceStore`] starts it and reads the file;
//! [`super::nats`] feeds it the stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tracing::{error, warn};

use super::priority::Priority;
use super::{CallEnd, CallStart, CallTurn, Event, Final, Invocation, TurnRecord};
use crate::clock::Millis;
use crate::storage::StoreError;

/// Events the queue holds before new ones are dropped.
pub const QUEUE: usize = 65_536;

/// Most events per commit: bounds how long another process sharing the file (a `toolgate
/// worker`) may wait for its write lock.
pub(super) const MAX_BATCH: usize = 512;

/// How long the writer lets events gather after the first one of a batch. Under load it turns
/// a commit (and a thread wake-up) per event into one per few milliseconds, which leaves the
/// CPU to the tool calls; and while the writer sleeps, submitting an event costs no wake-up
/// system call on the tool-call path. Evidence shows up in the API this much later.
const LINGER: Duration = Duration::from_millis(20);

pub(crate) enum Msg {
    Event(Event),
    /// A row from the evidence stream (NATS) at this stream sequence (`None`: a message that
    /// does not parse, skipped but counted as applied).
    Apply(u64, Option<Row>),
    Flush(oneshot::Sender<()>),
    /// Delete what is older than this, in short transactions; answer how many rows went.
    Prune(Millis, oneshot::Sender<Result<usize, String>>),
}

/// Rows one pruning transaction deletes, so the writer never holds the file for long.
const PRUNE_CHUNK: usize = 500;

/// What the writer stores: an [`Event`] with its transcript turn already redacted. It is also
/// what the evidence stream carries (JSON), so every host applies exactly what was written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Row {
    /// A session started.
    CallStarted(CallStart),
    /// A transcript turn or consent event, redacted.
    Turn(CallTurn<TurnRecord>),
    /// A session ended.
    CallEnded(CallEnd),
    /// An invocation record.
    Invocation(Box<Invocation>),
    /// A job's end.
    Final(Box<Final>),
}

impl From<Event> for Row {
    fn from(e: Event) -> Row {
        match e {
            Event::CallStarted(c) => Row::CallStarted(c),
            Event::History(h) => Row::Turn(h.map(|entry| super::turn_record(&entry))),
            Event::CallEnded(c) => Row::CallEnded(c),
            Event::Invocation(i) => Row::Invocation(i),
            Event::Final(f) => Row::Final(f),
        }
    }
}

pub(super) fn writer_loop(
    conn: &mut Connection,
    rx: std_mpsc::Receiver<Msg>,
    delay: Duration,
    dropped: &AtomicU64,
    applied: &watch::Sender<u64>,
) {
    let mut priority = Priority::lower();
    // The last stream sequence handled: redelivered messages at or below it are skipped.
    let mut position = *applied.borrow();
    while let Ok(first) = rx.recv() {
        if matches!(first, Msg::Event(_) | Msg::Apply(..)) {
            #[allow(clippy::disallowed_methods, reason = "the writer's own thread")]
            std::thread::sleep(LINGER);
        }
        // Rows, each with its stream sequence when it came from the stream.
        let mut events: Vec<(Option<u64>, Row)> = Vec::new();
        let mut upto = position;
        let mut flushes = Vec::new();
        let mut prune = None;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => events.push((None, Row::from(e))),
                Msg::Apply(seq, row) if seq > upto => {
                    upto = seq;
                    events.extend(row.map(|r| (Some(seq), r)));
                }
                Msg::Apply(..) => {}
                Msg::Flush(done) => flushes.push(done),
                // Pruning waits for the events before it, then runs on its own.
                Msg::Prune(before, done) => {
                    prune = Some((before, done));
                    break;
                }
            }
            if events.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let moved = (upto > position).then_some(upto);
        if !events.is_empty() || moved.is_some() {
            // One retry for a batch SQLite refused (a transient lock, a full disk that freed
            // up); then it is counted lost.
            let mut result = commit(conn, &events, moved, delay);
            if let Err(e) = &result {
                warn!(error = %e, events = events.len(), "evidence batch refused; retrying once");
                #[allow(clippy::disallowed_methods, reason = "the writer's own thread")]
                std::thread::sleep(Duration::from_millis(50));
                result = commit(conn, &events, moved, delay);
            }
            match result {
                // Another process sharing the file may have taken it further.
                Ok(at) => upto = upto.max(at),
                Err(e) => {
                    let why = format!("evidence batch could not be written ({e}); it is lost");
                    count_drops(dropped, events.len() as u64, &why);
                }
            }
            // Handled either way: a failed batch is counted, not retried forever (the file
            // keeps its old position, so a restart applies it again).
            position = upto;
            applied.send_replace(position);
            priority.after_batch(events.len(), MAX_BATCH);
        }
        for f in flushes {
            let _ = f.send(());
        }
        if let Some((before, done)) = prune {
            let _ = done.send(prune_in_chunks(conn, before).map_err(|e| e.to_string()));
        }
    }
}

/// Count lost events and say so (at powers of two, so a stalled disk does not flood the log).
pub(super) fn count_drops(dropped: &AtomicU64, n: u64, why: &str) {
    let before = dropped.fetch_add(n, Ordering::Relaxed);
    crate::telemetry::evidence_dropped(n);
    let after = before + n;
    if before == 0 || (before + 1..=after).any(u64::is_power_of_two) {
        error!(dropped = after, "{why}");
    }
}

/// Apply `rows` in one transaction, and with them the stream position they bring the file to:
/// a row from the stream is applied exactly once across restarts and redeliveries, and across
/// processes that share the file (a sidecar and a `toolgate worker` with one config): the
/// position is read inside the write transaction, and rows at or below it are skipped.
/// Answers the file's position after the commit.
pub(super) fn commit(
    conn: &mut Connection,
    rows: &[(Option<u64>, Row)],
    position: Option<u64>,
    delay: Duration,
) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if !delay.is_zero() {
        // A disk that stalls mid-commit, holding this file's write lock.
        #[allow(clippy::disallowed_methods, reason = "the writer's own thread")]
        std::thread::sleep(delay);
    }
    let at: u64 = match position {
        None => 0,
        Some(_) => tx
            .prepare_cached("SELECT seq FROM stream_position WHERE id = 1")?
            .query_row([], |r| r.get::<_, i64>(0))
            .optional()?
            .map_or(0, |s| s.max(0) as u64),
    };
    for (seq, r) in rows {
        if seq.is_none_or(|s| s > at) {
            apply(&tx, r)?;
        }
    }
    let after = match position {
        Some(seq) if seq > at => {
            tx.prepare_cached("UPDATE stream_position SET seq = ?1 WHERE id = 1")?
                .execute([seq as i64])?;
            seq
        }
        _ => at,
    };
    tx.commit()?;
    Ok(after)
}

/// The stream position the file is at for the stream `identity` (its name and creation
/// time). A file that followed another stream (a new prefix, a stream deleted and created
/// again) starts over at the stream's beginning: what it holds stays, rows are upserts.
pub(super) fn stream_position(conn: &mut Connection, identity: &str) -> Result<u64, StoreError> {
    let at: Option<(String, i64)> = conn
        .query_row(
            "SELECT stream, seq FROM stream_position WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match at {
        Some((s, seq)) if s == identity => Ok(seq.max(0) as u64),
        other => {
            if let Some((s, _)) = other {
                warn!(was = %s, now = %identity, "the evidence stream is not the one this file followed; applying it from its start");
            }
            conn.execute(
                "INSERT INTO stream_position (id, stream, seq) VALUES (1, ?1, 0) \
                 ON CONFLICT (id) DO UPDATE SET stream = ?1, seq = 0",
                [identity],
            )?;
            Ok(0)
        }
    }
}

/// Delete what is older than `before`, [`PRUNE_CHUNK`] rows per transaction.
fn prune_in_chunks(conn: &mut Connection, before: Millis) -> rusqlite::Result<usize> {
    let statements = [
        "DELETE FROM invocations WHERE rowid IN (SELECT rowid FROM invocations WHERE received_at < ?1 LIMIT ?2)",
        "DELETE FROM finals WHERE rowid IN (SELECT rowid FROM finals WHERE at < ?1 LIMIT ?2)",
        "DELETE FROM call_events WHERE rowid IN (SELECT rowid FROM call_events WHERE at < ?1 LIMIT ?2)",
        "DELETE FROM calls WHERE rowid IN (SELECT rowid FROM calls WHERE started_at < ?1 \
         AND (ended_at IS NULL OR ended_at < ?1) LIMIT ?2)",
    ];
    let mut total = 0;
    for sql in statements {
        loop {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n = tx.execute(sql, params![before, PRUNE_CHUNK as i64])?;
            tx.commit()?;
            total += n;
            if n < PRUNE_CHUNK {
                break;
            }
        }
    }
    Ok(total)
}

fn apply(tx: &rusqlite::Transaction<'_>, r: &Row) -> rusqlite::Result<()> {
    match r {
        Row::CallStarted(c) => {
            tx.prepare_cached(
                "INSERT INTO calls (org, call_id, agent, caller, started_at, channel) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (org, call_id) DO UPDATE SET agent = ?3, ended_at = NULL, end_reason = NULL, channel = ?6",
            )?
            .execute(params![c.org, c.call_id, c.agent, c.caller, c.at, c.channel])?;
        }
        Row::Turn(CallTurn {
            org,
            call_id,
            started_at,
            turn,
        }) => {
            let at = started_at + turn.at_ms as Millis;
            let data = json!({"type": if turn.role == "consent" { "consent" } else { "turn" },
                              "role": turn.role, "text": turn.text, "final": turn.is_final,
                              "at_ms": turn.at_ms});
            tx.prepare_cached(
                "INSERT INTO call_events (org, call_id, at, data) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![org, call_id, at, data.to_string()])?;
        }
        Row::CallEnded(c) => {
            tx.prepare_cached(
                "UPDATE calls SET ended_at = ?3, end_reason = ?4 WHERE org = ?1 AND call_id = ?2",
            )?
            .execute(params![c.org, c.call_id, c.at, c.reason])?;
        }
        Row::Invocation(inv) => {
            let record = serde_json::to_string(inv).expect("records serialize");
            let source = match inv.source_type {
                super::SourceType::Agent => "agent",
                super::SourceType::Workflow => "workflow",
            };
            // Only a live call's record takes its job's final outcome; a workflow attempt is
            // final as written.
            let job = match inv.source_type {
                super::SourceType::Agent => inv.workflow_job_id.as_deref(),
                super::SourceType::Workflow => None,
            };
            tx.prepare_cached(
                                "INSERT INTO invocations (id, org, call_id, function, status, source_type, parent_id, job_id, received_at, record, agent) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                 ON CONFLICT (id) DO UPDATE SET status = ?5, job_id = ?8, record = ?10",
            )?
            .execute(params![
                inv.invocation_id,
                inv.org_id,
                inv.call_id,
                inv.function,
                inv.status,
                source,
                inv.parent_invocation_id,
                job,
                                inv.received_at,
                record,
                inv.agent_id
            ])?;
        }
        Row::Final(f) => {
            let data = serde_json::to_string(f).expect("finals serialize");
            // A job ends once; an operator's retry of a failed or dead job reopens it, and its
            // new end replaces the old.
            tx.prepare_cached(
                "INSERT INTO finals (job_id, status, at, data) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (job_id) DO UPDATE SET status = ?2, at = ?3, data = ?4",
            )?
            .execute(params![f.job_id, f.status, f.at, data])?;
        }
    }
    Ok(())
}
