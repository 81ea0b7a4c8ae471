//! Evidence on NATS JetStream (`storage.backend = "nats"`, SPEC §10): any sidecar's admin API
//! and call page answer for any call, whichever sidecar served it.
//!
//! - **Stream `P_EVIDENCE`** (`P` = `storage.stream_prefix`; file storage, limits retention,
//!   max age `evidence.retain_days`, replicas `storage.replicas`) holds every evidence event
//!   of every host as JSON (`writer::Row`), by subject:
//!   `P.evidence.call.<org>.<call id>` for what belongs to a call (its start and end, its
//!   transcript turns and consent events, its invocation records) and `P.evidence.job.<job id>`
//!   for a workflow job's end (which knows its job, not its call). Ids are made into subject
//!   tokens by [`token`].
//! - **Its own thread.** The stream's client (with its connection task), the publisher and the
//!   materializer run on a runtime of their own (`lane`, one thread), not on the runtime
//!   that serves tool calls. Each event is serialized, published and acknowledged, then
//!   delivered back, parsed and handed to the writer: in a load test that was about 30 % of
//!   what the tool-call runtime's two threads did, and on a machine short of CPU tool calls
//!   queued behind it. On its own thread it costs the same CPU, but never a place in front
//!   of a tool call.
//! - **Publishing.** `Link::submit` never waits: the event goes to a bounded queue
//!   ([`super::store::QUEUE`]) drained by one publisher task, which publishes in submission
//!   order, keeps up to [`IN_FLIGHT`] acknowledgements outstanding and awaits them in the
//!   background. A full queue, a publish NATS refuses or an acknowledgement that does not come
//!   within the request timeout counts the event in `toolgate_evidence_dropped_total`, with
//!   an error log: evidence never holds up a tool call, and loss is never quiet. (An event
//!   whose acknowledgement timed out while NATS was away may still have been stored; it is
//!   counted all the same, and no event is sent twice.)
//! - **Materializing.** Every host keeps the whole stream in its own evidence file, so the
//!   SQLite readers (admin API, call page, diagnostics, replay) answer for every call
//!   unchanged. An ordered consumer (no server-side state to clean up after a host that is
//!   gone) reads the stream from the position the file records, and the writer applies each
//!   message and the new position in one transaction: exactly once across restarts and
//!   redeliveries. A host that joins later reads the stream from its start (what
//!   `retain_days` keeps). The position is tied to the stream's creation time: a file that
//!   followed a stream since deleted starts over at the new one's beginning.
//! - **Consistency.** A host reads its own writes and others' after the publish round trip,
//!   the consumer's delivery and the writer's batch (20 ms linger): about 25 ms between two
//!   hosts on one machine, plus the network's round trip.
//!   [`super::store::EvidenceStore::flush`] waits for it.
//! - **Retention.** JetStream drops events older than `retain_days` from the stream; each
//!   host prunes its own file as before.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull, stream};
use base64::Engine;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::writer::{Msg, QUEUE, Row, count_drops};
use super::{CallEnd, CallStart, CallTurn, Event};
use crate::storage::StoreError;
use crate::storage::nats::{JetStream, NatsOptions};

/// Most acknowledgements the publisher awaits at once.
pub const IN_FLIGHT: usize = 1024;
/// The longest [`Link::flush`] waits for each of its steps.
const FLUSH_WAIT: Duration = Duration::from_secs(10);
/// The longest closing waits for the queue to be published.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// The longest pause between two attempts to read the stream again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Most stream messages handed to the writer and not yet committed while the stream is applied
/// (events a host catching up holds in memory at once).
const MAX_AHEAD: usize = 4_096;

/// The runtime evidence on NATS runs on (see the module docs): one worker thread,
/// `toolgate-evidence-nats`, created on first use and kept for the life of the process.
/// Futures on either runtime may await the other's: the channels, watches and join handles
/// between them do not care where they are polled.
fn lane() -> &'static tokio::runtime::Runtime {
    static LANE: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    LANE.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("toolgate-evidence-nats")
            .enable_all()
            .build()
            .expect("cannot start the evidence runtime")
    })
}

/// A subject token for an id: the id itself when it is made of letters, digits, `_` and `-`
/// only (and does not start with `~`), else `~` and its URL-safe base64, or for an id longer
/// than 128 bytes `~~` and its SHA-256 in hex. Always non-empty, never `.`, `*`, `>` or
/// white space, and different ids give different tokens (up to SHA-256 collisions).
pub fn token(id: &str) -> String {
    let plain = !id.is_empty()
        && !id.starts_with('~')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        id.to_owned()
    } else if id.len() <= 128 {
        format!(
            "~{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
        )
    } else {
        let digest = Sha256::digest(id.as_bytes());
        format!("~~{}", hex::encode(digest))
    }
}

/// The evidence stream's name for a prefix.
pub fn stream_name(prefix: &str) -> String {
    format!("{prefix}_EVIDENCE")
}

/// The subject a row is published on.
fn subject(prefix: &str, row: &Row) -> String {
    match row {
        Row::CallStarted(CallStart { org, call_id, .. })
        | Row::Turn(CallTurn { org, call_id, .. })
        | Row::CallEnded(CallEnd { org, call_id, .. }) => call_subject(prefix, org, call_id),
        Row::Invocation(i) => call_subject(prefix, &i.org_id, &i.call_id),
        Row::Final(f) => format!("{prefix}.evidence.job.{}", token(&f.job_id)),
    }
}

/// The subject of one call's evidence: `P.evidence.call.<org>.<call id>`.
pub fn call_subject(prefix: &str, org: &str, call_id: &str) -> String {
    format!("{prefix}.evidence.call.{}.{}", token(org), token(call_id))
}

/// The evidence stream, opened (created when missing).
pub(crate) struct Stream {
    client: async_nats::Client,
    js: jetstream::Context,
    handle: stream::Stream,
    prefix: String,
    servers: String,
    request_timeout: Duration,
    /// The stream's name and creation time: what the file's position is a position in.
    pub(crate) identity: String,
}

impl Stream {
    /// Connect and open the stream. This happens on the [`lane`], so the client's connection
    /// task runs there.
    pub(crate) async fn open(
        options: &NatsOptions,
        retain: Duration,
    ) -> Result<Stream, StoreError> {
        let options = options.clone();
        lane()
            .spawn(async move { Stream::open_on_lane(&options, retain).await })
            .await
            .map_err(|e| StoreError::nats("evidence stream: cannot open it", e))?
    }

    async fn open_on_lane(options: &NatsOptions, retain: Duration) -> Result<Stream, StoreError> {
        let in_stream = |e: StoreError| e.context("evidence stream");
        let jet = JetStream::connect(
            options,
            "NATS connection lost; reconnecting (evidence not acknowledged in time is counted lost)",
        )
        .await
        .map_err(in_stream)?;
        let name = stream_name(&options.stream_prefix);
        let setup = |e: &dyn std::fmt::Display| in_stream(jet.setup_failed(&name, e));
        let config = stream::Config {
            name: name.clone(),
            description: Some("toolgate: invocation records and call history".into()),
            subjects: vec![format!("{}.evidence.>", options.stream_prefix)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: options.replicas.max(1),
            max_age: retain,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        };
        let mut handle = jet.stream(config.clone()).await.map_err(in_stream)?;
        let info = handle.info().await.map_err(|e| setup(&e))?.clone();
        if info.config.max_age != retain {
            // evidence.retain_days changed: the stream follows (the last host started wins).
            match jet.js.update_stream(config).await {
                Ok(_) => {
                    info!(stream = %name, days = retain.as_secs() / 86_400, "evidence stream retention updated")
                }
                Err(e) => {
                    warn!(stream = %name, error = %e, "cannot update the evidence stream's retention; keeping its own")
                }
            }
        }
        let identity = format!("{name}@{}", info.created.unix_timestamp_nanos());
        let JetStream {
            client,
            js,
            servers,
        } = jet;
        Ok(Stream {
            client,
            js,
            handle,
            prefix: options.stream_prefix.clone(),
            servers,
            request_timeout: options.request_timeout,
            identity,
        })
    }
}

/// What the publisher task takes.
enum Pub {
    Event(Event),
    /// Answer once everything before it is acknowledged or counted lost.
    Flush(oneshot::Sender<()>),
}

/// The publisher and the materializer of one evidence store.
pub(crate) struct Link {
    queue: Mutex<Option<mpsc::Sender<Pub>>>,
    /// Events submitted and neither acknowledged nor counted lost yet.
    pending: Arc<AtomicU64>,
    publisher: Mutex<Option<JoinHandle<()>>>,
    materializer: Mutex<Option<JoinHandle<()>>>,
    stop: CancellationToken,
    stream: stream::Stream,
    client: async_nats::Client,
    applied: watch::Receiver<u64>,
    dropped: Arc<AtomicU64>,
    request_timeout: Duration,
}

impl Link {
    /// Start publishing to `stream` and, when `follow`, applying it to the file `writer`
    /// writes (a host that serves reads); a `toolgate worker` only publishes.
    pub(crate) fn start(
        stream: Stream,
        writer: std_mpsc::SyncSender<Msg>,
        applied: watch::Receiver<u64>,
        dropped: Arc<AtomicU64>,
        follow: bool,
    ) -> Link {
        let (tx, rx) = mpsc::channel(QUEUE);
        let pending = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let publisher = lane().spawn(publish_loop(
            stream.js.clone(),
            stream.prefix.clone(),
            rx,
            pending.clone(),
            dropped.clone(),
            stream.request_timeout,
        ));
        let materializer = if follow {
            info!(servers = %stream.servers, stream = %stream_name(&stream.prefix), from = *applied.borrow(), "evidence store on NATS JetStream: publishing, and applying the stream to the local file");
            Some(lane().spawn(materialize(
                stream.handle.clone(),
                format!("{}.evidence.>", stream.prefix),
                writer,
                applied.clone(),
                stop.clone(),
            )))
        } else {
            info!(servers = %stream.servers, stream = %stream_name(&stream.prefix), "evidence store on NATS JetStream: publishing only (this process serves no reads)");
            None
        };
        Link {
            queue: Mutex::new(Some(tx)),
            pending,
            publisher: Mutex::new(Some(publisher)),
            materializer: Mutex::new(materializer),
            stop,
            stream: stream.handle,
            client: stream.client,
            applied,
            dropped,
            request_timeout: stream.request_timeout,
        }
    }

    /// Queue an event for publishing; never waits. `Err` says why it is lost.
    pub(crate) fn submit(&self, event: Event) -> Result<(), &'static str> {
        let queue = self.queue.lock().expect("evidence queue lock");
        let Some(queue) = queue.as_ref() else {
            return Err("evidence arrived after the store closed; it is lost");
        };
        self.pending.fetch_add(1, Ordering::Relaxed);
        match queue.try_send(Pub::Event(event)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => {
                        "evidence publish queue full (NATS is not keeping up); evidence is being lost"
                    }
                    mpsc::error::TrySendError::Closed(_) => {
                        "the evidence publisher has stopped; evidence is being lost"
                    }
                })
            }
        }
    }

    /// Wait until what was submitted so far is acknowledged (or counted lost), then until the
    /// file holds everything the stream held at that moment. Each step gives up after
    /// [`FLUSH_WAIT`], with a warning.
    pub(crate) async fn flush(&self) {
        let queue = self.queue.lock().expect("evidence queue lock").clone();
        if let Some(queue) = queue {
            let (done, published) = oneshot::channel();
            let sent = tokio::time::timeout(FLUSH_WAIT, queue.send(Pub::Flush(done))).await;
            if !matches!(sent, Ok(Ok(())))
                || tokio::time::timeout(FLUSH_WAIT, published).await.is_err()
            {
                warn!("evidence flush: the publisher did not catch up in time");
            }
        }
        if self.materializer.lock().expect("evidence lock").is_none() {
            // Publishing only: nothing is applied here.
            return;
        }
        let state = match tokio::time::timeout(self.request_timeout, self.stream.get_info()).await {
            Ok(Ok(info)) => info.state,
            Ok(Err(e)) => {
                warn!(error = %e, "evidence flush: cannot read the evidence stream's state");
                return;
            }
            Err(_) => {
                warn!("evidence flush: the evidence stream's state did not come in time");
                return;
            }
        };
        if state.messages == 0 {
            return;
        }
        let mut applied = self.applied.clone();
        let caught_up = applied.wait_for(|s| *s >= state.last_sequence);
        if tokio::time::timeout(FLUSH_WAIT, caught_up).await.is_err() {
            warn!(
                applied = *self.applied.borrow(),
                last = state.last_sequence,
                "evidence flush: the local file did not catch up with the stream in time"
            );
        }
    }

    /// Publish what is queued (for at most [`CLOSE_WAIT`]; the rest is counted lost) and stop
    /// reading the stream.
    pub(crate) async fn close(&self) {
        self.queue.lock().expect("evidence queue lock").take();
        let publisher = self.publisher.lock().expect("evidence lock").take();
        if let Some(mut task) = publisher
            && tokio::time::timeout(CLOSE_WAIT, &mut task).await.is_err()
        {
            task.abort();
            let left = self.pending.swap(0, Ordering::Relaxed);
            if left > 0 {
                count_drops(
                    &self.dropped,
                    left,
                    "evidence not yet acknowledged by NATS at shutdown is lost",
                );
            }
        }
        self.stop.cancel();
        let materializer = self.materializer.lock().expect("evidence lock").take();
        if let Some(mut task) = materializer
            && tokio::time::timeout(self.request_timeout, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
        let _ = tokio::time::timeout(self.request_timeout, self.client.flush()).await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.publisher.lock().expect("evidence lock").take() {
            t.abort();
        }
        if let Some(t) = self.materializer.lock().expect("evidence lock").take() {
            t.abort();
        }
    }
}

type AckFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
            > + Send,
    >,
>;

/// Publish queued events in order, awaiting their acknowledgements in the background.
async fn publish_loop(
    js: jetstream::Context,
    prefix: String,
    mut rx: mpsc::Receiver<Pub>,
    pending: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    request_timeout: Duration,
) {
    let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
    let settle = |r: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>| {
        pending.fetch_sub(1, Ordering::Relaxed);
        if let Err(e) = r {
            let why = format!("NATS did not acknowledge an evidence event ({e}); it is lost");
            count_drops(&dropped, 1, &why);
        }
    };
    // Whatever is queued is taken at once: one wake-up per burst, not per event.
    let mut batch = Vec::with_capacity(256);
    loop {
        let n = tokio::select! {
            biased;
            Some(r) = acks.next(), if !acks.is_empty() => {
                settle(r);
                continue;
            }
            n = rx.recv_many(&mut batch, 256) => n,
        };
        if n == 0 {
            break;
        }
        for next in batch.drain(..) {
            match next {
                Pub::Flush(done) => {
                    while let Some(r) = acks.next().await {
                        settle(r);
                    }
                    let _ = done.send(());
                }
                Pub::Event(event) => {
                    while acks.len() >= IN_FLIGHT {
                        if let Some(r) = acks.next().await {
                            settle(r);
                        }
                    }
                    let row = Row::from(event);
                    let subject = subject(&prefix, &row);
                    let payload = match serde_json::to_vec(&row) {
                        Ok(p) => p,
                        Err(e) => {
                            pending.fetch_sub(1, Ordering::Relaxed);
                            let why =
                                format!("an evidence event does not serialize ({e}); it is lost");
                            count_drops(&dropped, 1, &why);
                            continue;
                        }
                    };
                    match tokio::time::timeout(request_timeout, js.publish(subject, payload.into()))
                        .await
                    {
                        Ok(Ok(ack)) => acks.push(Box::pin(ack.into_future())),
                        Ok(Err(e)) => {
                            pending.fetch_sub(1, Ordering::Relaxed);
                            let why = format!("cannot publish an evidence event ({e}); it is lost");
                            count_drops(&dropped, 1, &why);
                        }
                        Err(_) => {
                            pending.fetch_sub(1, Ordering::Relaxed);
                            count_drops(
                                &dropped,
                                1,
                                "NATS did not take an evidence event in time; it is lost",
                            );
                        }
                    }
                }
            }
        }
    }
    while let Some(r) = acks.next().await {
        settle(r);
    }
}

/// Read the stream from the position after `from` and hand every message to the writer, for
/// as long as the store is open; start over from the last message handed on after any error
/// (a server restart, a lost connection).
async fn materialize(
    stream: stream::Stream,
    filter: String,
    writer: std_mpsc::SyncSender<Msg>,
    mut applied: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let mut from = *applied.borrow();
    let mut failures: u32 = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        let before = from;
        let failure =
            match read_from(&stream, &filter, &writer, &mut applied, &mut from, &stop).await {
                Ok(()) => return,
                Err(e) => e,
            };
        if from > before {
            // It made progress before failing: a fresh start, quick retries again.
            backoff = Duration::from_millis(100);
        }
        failures += 1;
        if failures.is_power_of_two() {
            warn!(error = %failure, after = from, failures, "cannot read the evidence stream; trying again");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One ordered consumer's run: `Ok` when stopped, `Err` when it must start over.
async fn read_from(
    stream: &stream::Stream,
    filter: &str,
    writer: &std_mpsc::SyncSender<Msg>,
    applied: &mut watch::Receiver<u64>,
    from: &mut u64,
    stop: &CancellationToken,
) -> Result<(), String> {
    // Sequences handed to the writer and not yet committed: at most `MAX_AHEAD`, so a host
    // catching up on a long stream holds a bounded backlog, not the writer's whole queue.
    let mut ahead: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: if *from == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: *from + 1,
                }
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let msg = match next {
            None => return Err("the stream's consumer ended".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(m)) => m,
        };
        let seq = msg.info().map_err(|e| e.to_string())?.stream_sequence;
        if seq <= *from {
            continue;
        }
        let row = match serde_json::from_slice::<Row>(&msg.payload) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(seq, subject = %msg.subject, error = %e, "skipping an evidence event that does not parse (from a newer toolgate?)");
                None
            }
        };
        while ahead.len() >= MAX_AHEAD {
            let done = *applied.borrow_and_update();
            while ahead.front().is_some_and(|s| *s <= done) {
                ahead.pop_front();
            }
            if ahead.len() < MAX_AHEAD {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                changed = applied.changed() => if changed.is_err() {
                    // The writer is gone: the store is closing.
                    return Ok(());
                },
            }
        }
        ahead.push_back(seq);
        let mut item = Msg::Apply(seq, row);
        loop {
            match writer.try_send(item) {
                Ok(()) => break,
                Err(std_mpsc::TrySendError::Full(back)) => {
                    item = back;
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
                Err(std_mpsc::TrySendError::Disconnected(_)) => return Ok(()),
            }
        }
        *from = seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_valid_and_distinct() {
        for id in ["acme", "call-1_A", "~x", "a.b", "a b", "*", ">", "", "ü"] {
            let t = token(id);
            assert!(!t.is_empty(), "{id:?}");
            assert!(
                !t.contains(['.', '*', '>', ' ', '\t', '\n', '\r']),
                "{id:?} -> {t:?}"
            );
        }
        assert_eq!(token("call-1_A"), "call-1_A");
        assert_ne!(token("~x"), "~x");
        assert_ne!(token("a.b"), token("a_b"));
        let long = "x.".repeat(100);
        assert!(token(&long).starts_with("~~"));
        assert_eq!(
            call_subject("TG", "acme", "c.1"),
            format!("TG.evidence.call.acme.{}", token("c.1"))
        );
    }
}
