//! Sessions: one live call over one WebSocket (SPEC §2).
//!
//! One task owns a session: its socket, its history, its ledger of actions and its running tool
//! calls, which it polls itself (a call costs no task, and its result wakes no other). Frames
//! from the media server and events from running tool calls ([`dispatch::Event`]) meet in a
//! single `select!` loop, so session state needs no locks and, because each call's fillers and its
//! result travel through the same FIFO channel, a filler can never follow its result.
//!
//! When the socket drops without `session.end`, the session lives on for
//! `server.disconnect_grace_ms`: calls keep running, results are kept, and a `session.start`
//! with the same `call_id` on a new socket resumes it and receives them.

mod evidence;
mod handshake;
mod outcome;
pub(crate) mod socket;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::value::RawValue;
use sync_wrapper::SyncWrapper;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{Instrument, debug, info};

use crate::answer::{self, Answer, ProviderOutcome};
use crate::bindings::CallContext;
use crate::call_state::{ActionState, Entry, History, Ledger, LedgerEntry};
use crate::clock::{Millis, now_ms};
use crate::config::{Agent, DEFAULT_FILLER};
use crate::dispatch::{self, Event, LiveCall, Outcome, Plan};
use crate::evidence::{CallEnd, CallStart};
use crate::guards::{self, CallView, Decision};
use crate::protocol::{Channel, ErrorCode, Inbound, Outbound, PROTOCOL_VERSION, ToolCall};
use crate::runtime::{Runtime, SessionKey};
pub use handshake::{Attached, attach, serve_connection};
use outcome::Told;
pub use socket::{FromSession, LocalOut, SessionHandle, ToSession, Ws};
use socket::{Incoming, Socket, error_frame};

/// The next resuming socket, once there is a channel for them (never, while there is not).
async fn recv_some(rx: &mut Option<mpsc::Receiver<Box<Socket>>>) -> Option<Box<Socket>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next event of the session's calls, once it has had one (never, before).
async fn recv_event(rx: &mut Option<mpsc::UnboundedReceiver<Box<Event>>>) -> Option<Box<Event>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The tool calls running on their session's task ([`dispatch::run`]). Only ever reached
/// through `&mut`, so the session stays `Sync` without the calls' futures being so.
type Running = SyncWrapper<FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>>>;

/// Drive the session's running calls until one finishes (never, while none runs). Each
/// reports through the session's events; the finished future has nothing more to say.
async fn next_finished(running: &mut Option<Running>) {
    match running.as_mut().map(SyncWrapper::get_mut) {
        Some(calls) if !calls.is_empty() => {
            calls.next().await;
        }
        _ => std::future::pending().await,
    }
}

/// The end of the disconnect grace, once the socket is gone (never, while it is live).
async fn grace_over(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn next_opt(sock: &mut Option<Box<Socket>>) -> Incoming {
    match sock {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// One tool call of this session.
struct Slot {
    function: Option<usize>,
    invocation_id: String,
    received: Instant,
    /// What the model has been told so far.
    reply: Reply,
    cancelled: Arc<AtomicBool>,
    cancel_reason: Option<String>,
    /// Evidence gathered until the call's record is written.
    notes: Option<Box<evidence::Notes>>,
    /// The caller has heard something about this call (a filler or its result).
    signalled: bool,
}

/// What the model has been told of a tool call.
enum Reply {
    /// Nothing yet: the call is running.
    Pending,
    /// Its result, or `deferred`; then `job` is the workflow job it was handed to.
    Given { job: Option<Handoff> },
}

impl Reply {
    fn given(&self) -> bool {
        matches!(self, Reply::Given { .. })
    }

    /// The workflow job the call was handed to, if it was deferred.
    fn job_id(&self) -> Option<&str> {
        match self {
            Reply::Given { job: Some(job) } => Some(&job.id),
            _ => None,
        }
    }
}

/// A deferred call's workflow job.
struct Handoff {
    id: String,
    /// Cancelled before it was sent: nothing later changes that.
    cancelled: bool,
}

/// Where a session stands with its media server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its socket is attached (or has just gone: the loop then starts the grace).
    Live,
    /// The socket went without `session.end`: a resume may come until the disconnect grace
    /// is over.
    Detached,
    /// Ended: nothing more is read; calls in flight finish and are recorded.
    Ended,
}

/// Whether a frame must survive a disconnect (results) or is only useful live (fillers).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Always,
    LiveOnly,
}

enum Flow {
    Continue,
    End,
}

struct Session {
    rt: Arc<Runtime>,
    /// How the call reaches toolgate.
    channel: Channel,
    key: SessionKey,
    agent: Arc<Agent>,
    ctx: Arc<CallContext>,
    /// `ctx` redacted for the evidence: made with the first record, shared by every record.
    ctx_redacted: std::sync::OnceLock<Arc<crate::evidence::SessionRecord>>,
    started: Instant,
    /// When the session started, ms since the epoch.
    started_at: Millis,
    history: History,
    ledger: Ledger,
    /// By tool call id; foldhash, not SipHash: looked up several times per tool call.
    calls: foldhash::HashMap<String, Slot>,
    inflight: usize,
    invocations: u32,
    deferred: u32,
    filler_rotation: Vec<usize>,
    /// Results, fillers and deferrals from the session's calls: made at its first tool call
    /// (an idle session does not pay for a channel).
    events_tx: Option<dispatch::Events>,
    events_rx: Option<mpsc::UnboundedReceiver<Box<Event>>>,
    /// The session's tool calls in flight, polled by its own task: a call costs no task of its
    /// own, and its result wakes no other (made at the first tool call).
    running: Option<Running>,
    /// Resuming sockets, while the socket is gone ([`SessionHandle::reattach`]).
    reattach_rx: Option<mpsc::Receiver<Box<Socket>>>,
    attached: Arc<AtomicBool>,
    /// Results produced while detached, sent on resume.
    outbox: Vec<String>,
    /// Frames produced by the current handler, written after it returns.
    pending: Vec<(String, Keep)>,
    registered: bool,
    /// The sidecar is shutting down: no new tool calls; close once nothing is in flight.
    draining: bool,
    /// Tool calls whose evidence record is due once the current frames are written (and
    /// whether it is their last).
    due: Vec<(String, bool)>,
    /// Why the session ended (`session.end`'s reason, `disconnected`, `shutdown`).
    end_reason: Option<String>,
    /// How it ended, as a metric label: `ended`, `disconnected`, `shutdown`, `closed`.
    end_kind: &'static str,
}

impl Drop for Session {
    /// A session that ends any way at all, a panic included, leaves the registry.
    fn drop(&mut self) {
        self.deregister();
    }
}

impl Session {
    /// The session's task. The socket comes boxed: the task's future holds it (and, for its
    /// argument, a second slot) for the whole call, and is the bulk of an idle call's memory.
    async fn run(mut self: Box<Self>, sock: Box<Socket>) {
        info!("session started");
        self.rt
            .evidence
            .submit(crate::evidence::Event::CallStarted(CallStart {
                org: self.key.0.clone(),
                call_id: self.ctx.call_id.clone(),
                agent: self.agent.id.clone(),
                caller: self.ctx.caller.number.as_deref().map(crate::redact::phone),
                channel: self.channel.as_str().to_owned(),
                at: self.started_at,
            }));
        let mut sock = Some(sock);
        self.push(self.ready_frame(false), Keep::LiveOnly);
        self.flush(&mut sock).await;
        let mut phase = Phase::Live;
        // Made once and kept, boxed, beside the loop rather than in each wait: a call's task
        // (its future) is what an idle call costs, and a future made anew at every wake would
        // also take the shared shutdown token's lock each time.
        let mut shutdown = Box::pin(self.rt.shutdown.clone().cancelled_owned());
        let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            if phase == Phase::Ended && self.inflight == 0 {
                break;
            }
            if self.draining && phase != Phase::Ended && self.inflight == 0 {
                // Shutting down and nothing is in flight: let the media server move on.
                info!("sidecar shutting down; closing the session");
                self.end_reason = Some("shutdown".into());
                self.end_kind = "shutdown";
                if let Some(s) = sock.as_mut() {
                    s.close(CloseCode::Away, "toolgate is shutting down").await;
                }
                sock = None;
                phase = Phase::Ended;
                self.deregister();
                continue;
            }
            if sock.is_none() && phase == Phase::Live {
                // The socket is gone (a read said so, or a write failed): wait for a resume.
                let (tx, rx) = mpsc::channel(1);
                self.reattach_rx = Some(rx);
                if let Some(mut h) = self.rt.sessions.get_mut(&self.key) {
                    h.reattach = Some(tx);
                    self.attached.store(false, Ordering::Release);
                }
                let wait = self.rt.server.disconnect_grace;
                info!(
                    grace_ms = wait.as_millis() as u64,
                    "socket gone without session.end; waiting for a reconnect"
                );
                phase = Phase::Detached;
                grace = Some(Box::pin(sleep_until(Instant::now() + wait)));
            }
            tokio::select! {
                incoming = next_opt(&mut sock) => match incoming {
                    Incoming::Frame(frame, received) => {
                        if let Flow::End = self.on_frame(frame, received).await {
                            self.flush(&mut sock).await;
                            if let Some(s) = sock.as_mut() {
                                s.close(CloseCode::Normal, "session ended").await;
                            }
                            sock = None;
                            phase = Phase::Ended;
                            self.deregister();
                        }
                    }
                    Incoming::Refused(frame) => self.push(frame, Keep::LiveOnly),
                    Incoming::Gone => sock = None,
                    Incoming::Violated => {
                        // Closed with 1007/1002 already; a peer that breaks the protocol is
                        // not waited for: the session ends (calls in flight finish, recorded).
                        info!(inflight = self.inflight, "WebSocket protocol violation; session ended");
                        sock = None;
                        self.end_reason = Some("protocol_error".into());
                        self.end_kind = "closed";
                        phase = Phase::Ended;
                        self.outbox.clear();
                        self.deregister();
                    }
                },
                Some(event) = recv_event(&mut self.events_rx) => self.on_event(event, phase == Phase::Ended).await,
                () = next_finished(&mut self.running) => {}
                Some(resumed) = recv_some(&mut self.reattach_rx), if matches!(phase, Phase::Detached) => {
                    info!(kept = self.outbox.len(), "session resumed");
                    sock = Some(resumed);
                    phase = Phase::Live;
                    grace = None;
                    if let Some(mut h) = self.rt.sessions.get_mut(&self.key) {
                        h.reattach = None;
                        self.attached.store(true, Ordering::Release);
                    }
                    self.refuse_resumes(
                        ErrorCode::SessionExists,
                        "the session is being resumed by another connection",
                    );
                    self.push(self.ready_frame(true), Keep::LiveOnly);
                    for frame in std::mem::take(&mut self.outbox) {
                        self.push(frame, Keep::Always);
                    }
                }
                _ = &mut shutdown, if !self.draining => self.draining = true,
                () = grace_over(&mut grace), if matches!(phase, Phase::Detached) => {
                    grace = None;
                    info!(inflight = self.inflight, "disconnect grace over; session ended");
                    self.end_reason = Some("disconnected".into());
                    self.end_kind = "disconnected";
                    phase = Phase::Ended;
                    self.outbox.clear();
                    self.deregister();
                }
            }
            self.flush(&mut sock).await;
        }
        self.deregister();
        info!(
            invocations = self.invocations,
            deferred = self.deferred,
            "session closed"
        );
    }

    /// A moment of this session as ms since the epoch, on the session's monotonic clock.
    fn clock(&self, at: Instant) -> Millis {
        self.started_at + at.saturating_duration_since(self.started).as_millis() as Millis
    }

    /// Make the call's held workflow jobs runnable (in the background, tracked for shutdown).
    fn release_held(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (jobs, (org, call_id)) = (self.rt.jobs.clone(), self.key.clone());
        self.rt.tasks.spawn_on(
            async move {
                                if let Err(e) = jobs.release_call(&org, &call_id, now_ms()).await {
                    tracing::error!(call_id = %call_id, error = %e, "cannot release the call's workflow jobs now; they are released once NATS answers again (or, on SQLite, at the next start)");
                }
            }
            .in_current_span(),
            &handle,
        );
    }

    fn deregister(&mut self) {
        if !self.registered {
            return;
        }
        self.registered = false;
        crate::telemetry::session_ended(self.end_kind);
        self.rt
            .evidence
            .submit(crate::evidence::Event::CallEnded(CallEnd {
                org: self.key.0.clone(),
                call_id: self.ctx.call_id.clone(),
                reason: self.end_reason.take().unwrap_or_else(|| "closed".into()),
                at: self.clock(Instant::now()),
            }));
        self.rt.sessions.remove(&self.key);
        self.rt.active_sessions.fetch_sub(1, Ordering::AcqRel);
        if let Some(mut n) = self.rt.org_sessions.get_mut(&self.key.0) {
            *n = n.saturating_sub(1);
        }
        // The call is over: its workflow jobs run now.
        if self.deferred > 0 {
            self.release_held();
        }
        // From now on a resume attempt fails at once and starts a fresh session instead.
        self.refuse_resumes(ErrorCode::NoSession, "the session has ended");
    }

    /// The sender the session's calls report on (the channel is made at the first call).
    fn events(&mut self) -> dispatch::Events {
        if let Some(tx) = &self.events_tx {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.events_rx = Some(rx);
        self.events_tx = Some(tx.clone());
        tx
    }

    /// Close the resume channel: later resume attempts fail at once (and start afresh), and
    /// sockets that raced in before the close get told, not left hanging (when a runtime is
    /// still there to tell them; at shutdown they are simply dropped).
    fn refuse_resumes(&mut self, code: ErrorCode, why: &'static str) {
        let Some(mut rx) = self.reattach_rx.take() else {
            return;
        };
        rx.close();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        while let Ok(mut late) = rx.try_recv() {
            handle.spawn(async move {
                late.send(error_frame(code, why, None)).await;
                late.close(CloseCode::Normal, "session ended").await;
            });
        }
    }

    /// Cancel a workflow job that has not reached the provider; `true` when it will never be
    /// sent. A short write to the store: it happens only on a barge-in of a deferred call.
    async fn cancel_job(&self, job_id: &str, why: &str) -> bool {
        match self.rt.jobs.cancel_unsent(job_id, why, now_ms()).await {
            Ok(true) => {
                info!(job = %job_id, "deferred call cancelled before it was sent");
                true
            }
            Ok(false) => {
                debug!(job = %job_id, "cancel of a deferred call came after it was sent");
                false
            }
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "cannot cancel a deferred call");
                false
            }
        }
    }

    fn ready_frame(&self, resumed: bool) -> String {
        let tools = self.agent.tools_for(&self.ctx);
        let tools: &RawValue = &tools;
        Outbound::SessionReady {
            protocol: PROTOCOL_VERSION,
            call_id: &self.ctx.call_id,
            tools,
            resumed,
        }
        .encode()
    }

    fn push(&mut self, frame: String, keep: Keep) {
        self.pending.push((frame, keep));
    }

    /// Write pending frames; while detached keep results for a resume and drop the rest.
    async fn flush(&mut self, sock: &mut Option<Box<Socket>>) {
        for (frame, keep) in std::mem::take(&mut self.pending) {
            let written = match sock.as_mut() {
                Some(s) => {
                    // A media server slow to read holds this write for up to
                    // `write_timeout_ms`: the calls keep running meanwhile (their timers, their
                    // handoffs), and what they report waits in the channel behind this frame.
                    let send = s.send(frame.clone());
                    tokio::pin!(send);
                    loop {
                        tokio::select! {
                            biased;
                            written = &mut send => break written,
                            () = next_finished(&mut self.running) => {}
                        }
                    }
                }
                None => false,
            };
            if !written {
                *sock = None;
                if keep == Keep::Always && self.registered {
                    self.outbox.push(frame);
                }
            }
        }
        // The answers are out: now the evidence of the calls they settled.
        self.write_evidence();
    }

    async fn on_frame(&mut self, frame: Inbound, received: Instant) -> Flow {
        let at = received.duration_since(self.started);
        match frame {
            Inbound::SessionStart(s) => {
                let message = if s.call_id == self.ctx.call_id {
                    "this connection already runs this session".to_owned()
                } else {
                    format!(
                        "this connection already runs session {:?}; open a new connection for another call",
                        self.ctx.call_id
                    )
                };
                self.push(
                    error_frame(ErrorCode::SessionExists, &message, None),
                    Keep::LiveOnly,
                );
            }
            Inbound::Transcript(t) => {
                let mut text = t.text;
                let max = self.rt.server.max_turn_bytes;
                if text.len() > max {
                    let cut = (0..=max)
                        .rev()
                        .find(|i| text.is_char_boundary(*i))
                        .unwrap_or(0);
                    debug!(
                        bytes = text.len(),
                        kept = cut,
                        "transcript turn cut to max_turn_bytes"
                    );
                    text.truncate(cut);
                }
                // Which consent rules this turn denies, worked out once, here.
                let denies = (t.is_final && t.role == crate::protocol::Role::Caller).then(|| {
                    self.agent
                        .functions
                        .iter()
                        .take(64)
                        .enumerate()
                        .filter(|(_, f)| f.consent.as_ref().is_some_and(|c| c.deny.is_match(&text)))
                        .fold(0u64, |bits, (i, _)| bits | (1 << i))
                });
                let entry = Entry::Turn {
                    role: t.role,
                    text: text.into_boxed_str(),
                    is_final: t.is_final,
                    at_ms: crate::call_state::since_start_ms(at),
                };
                self.record_history(&entry);
                self.history.push_with_denies(entry, denies);
            }
            Inbound::Consent(c) => {
                let entry = Entry::Consent {
                    scope: c.scope.into_boxed_str(),
                    granted: c.granted,
                    source: c.source.map(String::into_boxed_str),
                    at_ms: crate::call_state::since_start_ms(at),
                };
                self.record_history(&entry);
                self.history.push(entry);
            }
            Inbound::ToolCall(call) => self.on_tool_call(call, received),
            Inbound::ToolCancel(c) => match self.calls.get_mut(&c.id) {
                None => self.push(
                    error_frame(
                        ErrorCode::UnknownCallId,
                        &format!("no tool call {:?} in this session", c.id),
                        Some(&c.id),
                    ),
                    Keep::LiveOnly,
                ),
                Some(slot) if slot.reply.given() => {
                    // Answered calls get nothing back; a deferred one that has not been sent
                    // yet is not sent at all, and no longer counts as done or pending.
                    if let Reply::Given { job: Some(job) } = &slot.reply
                        && !job.cancelled
                    {
                        let job_id = job.id.clone();
                        let why = format!(
                            "cancelled before it was sent ({})",
                            c.reason.as_deref().unwrap_or("tool.cancel")
                        );
                        // Boxed: a rare path, kept out of the session task's future.
                        if Box::pin(self.cancel_job(&job_id, &why)).await {
                            let mut invocation = None;
                            if let Some(slot) = self.calls.get_mut(&c.id) {
                                if let Reply::Given { job: Some(job) } = &mut slot.reply {
                                    job.cancelled = true;
                                }
                                invocation = Some(slot.invocation_id.clone());
                            }
                            self.ledger.set_state(&c.id, ActionState::Closed);
                            if let Some(inv) = invocation {
                                self.record_cancelled_job(&job_id, &inv, c.reason.clone());
                            }
                        }
                    }
                }
                Some(slot) => {
                    debug!(id = %c.id, "tool call cancelled by the media server");
                    slot.cancelled.store(true, Ordering::Release);
                    slot.cancel_reason = c.reason;
                }
            },
            Inbound::SessionEnd { reason } => {
                info!(
                    reason = reason.as_deref().unwrap_or(""),
                    inflight = self.inflight,
                    "session.end"
                );
                self.end_reason = Some(reason.unwrap_or_else(|| "session.end".into()));
                self.end_kind = "ended";
                let frame = Outbound::SessionEnded {
                    call_id: &self.ctx.call_id,
                    invocations: self.invocations,
                    deferred: self.deferred,
                }
                .encode();
                self.push(frame, Keep::LiveOnly);
                return Flow::End;
            }
            Inbound::Ping => self.push(Outbound::Pong.encode(), Keep::LiveOnly),
        }
        Flow::Continue
    }

    fn on_tool_call(&mut self, call: ToolCall, received: Instant) {
        let max = self.rt.server.max_inflight_per_session;
        // A refusal, and why it sheds the call (`None`: a duplicate id, which gets no result).
        let refused = if self.draining {
            Some((
                ErrorCode::Overloaded,
                "this sidecar is shutting down; the call was not accepted".to_owned(),
                Some("draining"),
            ))
        } else if self.calls.contains_key(&call.id) {
            Some((
                ErrorCode::DuplicateCallId,
                format!(
                    "tool call id {:?} was already used in this session",
                    call.id
                ),
                None,
            ))
        } else if self.inflight >= max {
            Some((
                ErrorCode::Overloaded,
                format!("{max} tool calls are already running in this session"),
                Some("session_inflight"),
            ))
        } else {
            self.rt.overload.shedding().map(|delay| {
                (
                    ErrorCode::Overloaded,
                    format!(
                        "this sidecar is overloaded (its tasks wait {} ms for a CPU); the call was not accepted",
                        delay.as_millis()
                    ),
                    Some("scheduling_delay"),
                )
            })
        };
        if let Some((code, message, shed)) = refused {
            self.push(error_frame(code, &message, Some(&call.id)), Keep::LiveOnly);
            let invocation_id = self.record_refused(&call, received, code, &message);
            if let Some(reason) = shed {
                crate::telemetry::tool_call_shed(reason);
                // The model still gets its one result, so it never waits for nothing (SPEC §2);
                // a duplicate id gets none: the id belongs to another call.
                let function = self.agent.functions.iter().find(|f| f.name == call.name);
                let a = answer::overloaded(function);
                crate::telemetry::tool_call_answered(
                    function.map_or("unknown", |f| f.name.as_str()),
                    a.status.as_str(),
                    received.elapsed(),
                    true,
                );
                let frame = Outbound::ToolResult {
                    id: &call.id,
                    status: a.status,
                    invocation_id: &invocation_id,
                    output: &a.output,
                    elapsed_ms: received.elapsed().as_millis() as u64,
                    data: None,
                }
                .encode();
                self.push(frame, Keep::Always);
            }
            return;
        }
        let invocation_id = crate::evidence::invocation_id();
        self.invocations += 1;
        // On the session's own clock, like its transcript turns, so the call's timeline orders
        // them exactly however the wall clock is slewed.
        let received_at = self.clock(received);
        let history_len = self.history.entries().len();
        let snap = self.rt.snap();
        let mut checked = {
            let view = CallView {
                ctx: &self.ctx,
                history: &self.history,
                ledger: &self.ledger,
                connections: &snap.connections,
            };
            guards::check(&self.agent, &call, &view)
        };
        let function = checked.function.map(|i| &self.agent.functions[i]);
        // How the call goes out: decided here, in memory, only for a call the guards let pass.
        let plan = match (&checked.decision, function) {
            (Decision::Proceed, Some(f)) => {
                let (plan, verdicts) = dispatch::plan(&snap, f, Instant::now());
                checked.verdicts.extend(verdicts);
                if let Plan::Reject(r) = &plan {
                    checked.decision = Decision::Rejected(r.clone());
                }
                Some(plan)
            }
            _ => None,
        };
        let immediate = match (&checked.decision, function) {
            (Decision::Rejected(r), f) => Some(answer::rejected(f, &call.name, r)),
            (
                Decision::Duplicate {
                    tool_call_id,
                    state,
                    ..
                },
                Some(f),
            ) => Some(answer::duplicate(f, tool_call_id, state)),
            (Decision::Duplicate { .. }, None) => unreachable!("duplicates have a function"),
            (Decision::Proceed, _) => None,
        };
        debug!(
            id = %call.id,
            function = %call.name,
            verdicts = ?checked.verdicts.iter().filter(|v| !v.passed).map(|v| v.guard.as_str()).collect::<Vec<_>>(),
            "guards checked"
        );
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut notes = Box::new(evidence::Notes {
            name: call.name.clone(),
            arguments: Some(call.arguments.clone()),
            received_at,
            verdicts: checked.verdicts,
            history_len,
            ..Default::default()
        });
        if let Decision::Rejected(r) = &checked.decision {
            notes.rejection = Some(r.message.clone());
            crate::telemetry::guard_rejection(r.guard.as_str());
        }
        let answered = immediate.is_some();
        if answered {
            notes.inputs = Some(std::mem::take(&mut checked.resolution));
        }
        self.calls.insert(
            call.id.clone(),
            Slot {
                function: checked.function,
                invocation_id: invocation_id.clone(),
                received,
                reply: if answered {
                    Reply::Given { job: None }
                } else {
                    Reply::Pending
                },
                cancelled: cancelled.clone(),
                cancel_reason: None,
                notes: Some(notes),
                signalled: false,
            },
        );
        if let Some(a) = immediate {
            self.settle(&call.id, a, true);
            self.record_due(&call.id, true);
            return;
        }
        let (Some(index), Some(key)) = (checked.function, checked.key) else {
            unreachable!("a call that proceeds has a function and a key");
        };
        let call_id_for_live = call.id.clone();
        self.ledger.push(LedgerEntry {
            function: call.name.clone(),
            key: key.clone(),
            tool_call_id: call.id.clone(),
            invocation_id,
            state: ActionState::InFlight,
        });
        self.inflight += 1;
        let live = LiveCall {
            id: call.id,
            org: self.key.0.clone(),
            invocation_id: self.calls[&call_id_for_live].invocation_id.clone(),
            agent: self.agent.clone(),
            function: index,
            ctx: self.ctx.clone(),
            inputs: checked.resolution,
            key,
            received,
            cancelled,
            plan: plan.expect("a call that proceeds was planned"),
            snap,
        };
        // The call runs on this session's task, inside its span (every line it logs names the
        // tool call it is about).
        let events = self.events();
        self.running
            .get_or_insert_with(|| SyncWrapper::new(FuturesUnordered::new()))
            .get_mut()
            .push(Box::pin(dispatch::run(live, self.rt.clone(), events)));
    }

    /// The call's answer is decided: write it to the media server when `deliver` (the session
    /// is still there to hear it), and note it for the evidence either way.
    fn settle(&mut self, id: &str, a: Answer, deliver: bool) {
        let Some(slot) = self.calls.get_mut(id) else {
            return;
        };
        let elapsed = slot.received.elapsed();
        let elapsed_ms = elapsed.as_millis() as u64;
        let function = slot
            .function
            .map_or("unknown", |i| self.agent.functions[i].name.as_str());
        crate::telemetry::tool_call_answered(function, a.status.as_str(), elapsed, deliver);
        if deliver {
            if !std::mem::replace(&mut slot.signalled, true) {
                crate::telemetry::first_signal(elapsed);
            }
            let waited = slot
                .notes
                .as_ref()
                .map_or(Duration::ZERO, |n| n.provider_wait);
            crate::telemetry::overhead(elapsed.saturating_sub(waited));
        }
        let frame = deliver.then(|| {
            Outbound::ToolResult {
                id,
                status: a.status,
                invocation_id: &slot.invocation_id,
                output: &a.output,
                elapsed_ms,
                data: a.data.as_ref(),
            }
            .encode()
        });
        if let Some(notes) = slot.notes.as_mut() {
            notes.answered_ms = deliver.then_some(elapsed_ms);
            notes.answer = Some(a);
        }
        if let Some(frame) = frame {
            self.push(frame, Keep::Always);
        }
    }

    async fn on_event(&mut self, event: Box<Event>, ended: bool) {
        match *event {
            Event::Filler { id, seq, elapsed } => {
                if ended {
                    return;
                }
                let Some(slot) = self.calls.get(&id) else {
                    return;
                };
                if slot.reply.given() || slot.cancelled.load(Ordering::Acquire) {
                    return;
                }
                let Some(index) = slot.function else {
                    return;
                };
                let lines = &self.agent.functions[index].filler;
                let text = if lines.is_empty() {
                    DEFAULT_FILLER
                } else {
                    let i = self.filler_rotation[index];
                    self.filler_rotation[index] = i.wrapping_add(1);
                    lines[i % lines.len()].as_str()
                };
                let frame = Outbound::ToolFiller {
                    id: &id,
                    text,
                    elapsed_ms: elapsed.as_millis() as u64,
                    seq,
                }
                .encode();
                if let Some(slot) = self.calls.get_mut(&id) {
                    if !std::mem::replace(&mut slot.signalled, true) {
                        crate::telemetry::first_signal(slot.received.elapsed());
                    }
                    if let Some(notes) = slot.notes.as_mut() {
                        notes.fillers.push(elapsed.as_millis() as u64);
                    }
                }
                crate::telemetry::filler();
                self.push(frame, Keep::LiveOnly);
            }
            Event::Deferred {
                id,
                job_id,
                reason,
                provider_wait,
            } => {
                if !self.registered {
                    // The call ended while the job was being written: its end already ran,
                    // so release this job here.
                    self.release_held();
                }
                let Some(slot) = self.calls.get_mut(&id) else {
                    return;
                };
                if let Some(notes) = slot.notes.as_mut() {
                    notes.provider_wait = provider_wait;
                }
                let function_index = slot.function.expect("live calls have a function");
                if slot.cancelled.load(Ordering::Acquire) {
                    // The caller barged in while the job was written: if it has not been sent,
                    // it never will be, and the call is answered `cancelled`.
                    let reason = slot.cancel_reason.clone();
                    if self
                        .cancel_job(&job_id, "cancelled before it was sent (tool.cancel)")
                        .await
                    {
                        let function = &self.agent.functions[function_index];
                        let a = answer::cancelled(
                            function,
                            ProviderOutcome::NotSent,
                            reason.as_deref(),
                        );
                        if let Some(slot) = self.calls.get_mut(&id) {
                            slot.reply = Reply::Given {
                                job: Some(Handoff {
                                    id: job_id.clone(),
                                    cancelled: true,
                                }),
                            };
                            if let Some(notes) = slot.notes.as_mut() {
                                notes.cancel = Some(ProviderOutcome::NotSent);
                            }
                        }
                        self.ledger.set_state(&id, ActionState::Closed);
                        self.settle(&id, a, !ended);
                        return;
                    }
                }
                if let Some(slot) = self.calls.get_mut(&id) {
                    slot.reply = Reply::Given {
                        job: Some(Handoff {
                            id: job_id.clone(),
                            cancelled: false,
                        }),
                    };
                }
                let function = &self.agent.functions[function_index];
                let a = answer::deferred(function, &job_id, reason);
                self.deferred += 1;
                self.ledger.set_state(&id, ActionState::Deferred);
                self.settle(&id, a, !ended);
                // On record as deferred now; completed when the live request ends.
                self.record_due(&id, false);
            }
            Event::Done(dispatch::Done {
                id,
                outcome,
                timing,
                inputs,
                request,
            }) => {
                let Some(slot) = self.calls.get_mut(&id) else {
                    return;
                };
                self.inflight -= 1;
                let was_answered = slot.reply.given();
                if !was_answered {
                    slot.reply = Reply::Given { job: None };
                }
                let job_cancelled = matches!(
                    slot.reply,
                    Reply::Given {
                        job: Some(Handoff {
                            cancelled: true,
                            ..
                        })
                    }
                );
                let cancelled = slot.cancelled.load(Ordering::Acquire);
                let reason = slot.cancel_reason.clone();
                let function =
                    &self.agent.functions[slot.function.expect("live calls have a function")];
                let (state, told) =
                    outcome::settle(&outcome, cancelled, function.action.provider().idempotent());
                debug!(
                    id = %id,
                    outcome = ?std::mem::discriminant(&outcome),
                    provider_ms = timing.done.zip(timing.sent).map(|(d, s)| (d - s).as_millis() as u64),
                    "tool call finished"
                );
                // What the model is told, unless it was told already (`deferred`: what the
                // live request learned closed the job).
                let answer = (!was_answered).then(|| match told {
                    Told::Internal => (answer::internal(function), None),
                    Told::Succeeded => (answer::succeeded(function), None),
                    Told::Failed(e) => (answer::failed(function, e), None),
                    Told::Cancelled(po) => {
                        (answer::cancelled(function, po, reason.as_deref()), Some(po))
                    }
                });
                let internal = matches!(outcome, Outcome::Internal(_));
                if let Some(notes) = slot.notes.as_mut() {
                    notes.inputs = Some(inputs);
                    notes.request = request;
                    notes.timing = timing;
                    if !was_answered {
                        notes.provider_wait = timing
                            .done
                            .zip(timing.sent)
                            .map(|(d, s)| d.saturating_sub(s))
                            .unwrap_or_default();
                    }
                    if let Some((_, po)) = &answer {
                        notes.cancel = notes.cancel.or(*po);
                    }
                    notes.outcome = Some(outcome);
                }
                if !job_cancelled {
                    self.ledger.set_state(&id, state);
                }
                if let Some((a, _)) = answer {
                    if internal && !ended {
                        self.pending.push((
                            error_frame(
                                ErrorCode::Internal,
                                "toolgate failed while running this call; see its logs",
                                Some(&id),
                            ),
                            Keep::LiveOnly,
                        ));
                    }
                    self.settle(&id, a, !ended);
                }
                self.record_due(&id, true);
            }
        }
    }
}
