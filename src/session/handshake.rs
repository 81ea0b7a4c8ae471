//! The handshake (SPEC §2.1): a connection waits for `session.start`, which opens a new
//! session, resumes one within its disconnect grace, or is refused (unknown agent, another
//! org's agent, a call id already live, the sidecar or the org at its session limit). Adapters
//! open sessions the same way, in-process ([`attach`], SPEC §13).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{Instrument, info_span};

use super::socket::{Incoming, LocalPeer, Socket, ToSession};
use super::{FromSession, Session, SessionHandle, Ws, error_frame};
use crate::bindings::CallContext;
use crate::call_state::{self, History, Ledger};
use crate::clock::now_ms;
use crate::config::Agent;
use crate::protocol::{Channel, ErrorCode, Inbound, Outbound, SessionStart};
use crate::runtime::{Runtime, SessionKey};

/// Serve one upgraded connection: wait for `session.start`, then run (or resume) its session.
/// `slot` counts the connection among those waiting for a session
/// (`server.max_pending_connections`) until it has one.
pub async fn serve_connection(
    ws: Ws,
    org: String,
    rt: Arc<Runtime>,
    slot: Option<crate::net::Admission>,
) {
    let mut sock = Socket::new(ws, &rt.server);
    // A connection that never starts a session does not hold a socket for long.
    let start_by = Instant::now() + rt.server.handshake_timeout;
    let shutdown = rt.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            incoming = sock.next() => incoming,
            _ = shutdown.cancelled() => {
                sock.close(CloseCode::Away, "toolgate is shutting down").await;
                return;
            }
            _ = async { slot.as_ref().unwrap().evicted().await }, if slot.is_some() => {
                sock.close(CloseCode::Again, "too many connections without a session").await;
                return;
            }
            _ = sleep_until(start_by) => {
                let _ = sock.send(error_frame(ErrorCode::NoSession, "no session.start in time", None)).await;
                sock.close(CloseCode::Policy, "no session.start").await;
                return;
            }
        };
        let reply = match incoming {
            Incoming::Gone | Incoming::Violated => return,
            Incoming::Refused(frame) => frame,
            Incoming::Frame(Inbound::Ping, _) => Outbound::Pong.encode(),
            Incoming::Frame(Inbound::SessionStart(start), _) => {
                // A session that ends while we hand it the socket is gone for good: then the
                // second attempt starts a fresh one.
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match open((*start).clone(), &org, Channel::V1, &rt) {
                        Open::New(session, call_id) => {
                            // Not held for the whole call (the session has its own copy).
                            drop(start);
                            drop(slot);
                            let span = info_span!("session", call_id = %call_id, org = %org, agent = %session.agent.id);
                            // A task of its own, so the session does not carry this
                            // handshake's state for the whole call.
                            // Tracked: a shutdown waits for the calls it runs.
                            rt.tasks.spawn(session.run(Box::new(sock)).instrument(span));
                            return;
                        }
                        Open::Resume(tx) => match tx.try_send(Box::new(sock)) {
                            Ok(()) => return,
                            Err(mpsc::error::TrySendError::Closed(back)) if attempt == 1 => {
                                sock = *back;
                                continue;
                            }
                            Err(e) => {
                                sock = *e.into_inner();
                                break error_frame(
                                    ErrorCode::SessionExists,
                                    "the session is being resumed by another connection",
                                    None,
                                );
                            }
                        },
                        Open::Refuse {
                            code,
                            message,
                            close_with,
                        } => {
                            if let Some(cc) = close_with {
                                let _ = sock.send(error_frame(code, &message, None)).await;
                                sock.close(cc, code.as_str()).await;
                                return;
                            }
                            break error_frame(code, &message, None);
                        }
                    }
                }
            }
            Incoming::Frame(_, _) => error_frame(
                ErrorCode::NoSession,
                "send session.start before any other frame",
                None,
            ),
        };
        if !sock.send(reply).await {
            return;
        }
    }
}

enum Open {
    New(Box<Session>, String),
    Resume(mpsc::Sender<Box<Socket>>),
    Refuse {
        code: ErrorCode,
        message: String,
        close_with: Option<CloseCode>,
    },
}

/// A session an adapter drives in-process (SPEC §13): it sends what a media server would
/// send and reads the v1 frames a media server would read; the session, its guards, budget,
/// evidence and metrics are exactly those of a v1 call.
pub struct Attached {
    /// Frames to the session. Dropping it detaches (the session then ends after
    /// `server.disconnect_grace_ms`); send `session.end` to end it at once.
    pub to_session: ToSession,
    /// What the session answers: `session.ready`, fillers, results, errors, and how it closed.
    pub from_session: FromSession,
    /// The session's agent.
    pub agent: Arc<Agent>,
}

/// Start a session for an adapter. Refused like a v1 `session.start` would be: unknown agent,
/// another org's agent, a call id already live, the sidecar full.
pub fn attach(
    start: SessionStart,
    org: &str,
    channel: Channel,
    rt: &Arc<Runtime>,
) -> Result<Attached, (ErrorCode, String)> {
    match open(start, org, channel, rt) {
        Open::New(session, call_id) => {
            let (to_session, rx) = mpsc::channel(64);
            let (tx, from_session) = mpsc::unbounded_channel();
            let agent = session.agent.clone();
            let sock = Socket::local(LocalPeer { rx, tx }, &rt.server);
            let span = info_span!("session", call_id = %call_id, org = %org, agent = %agent.id, channel = channel.as_str());
            rt.tasks.spawn(session.run(Box::new(sock)).instrument(span));
            Ok(Attached {
                to_session: ToSession(to_session),
                from_session: FromSession(from_session),
                agent,
            })
        }
        Open::Resume(_) => Err((
            ErrorCode::SessionExists,
            "this call already has a live session".to_owned(),
        )),
        Open::Refuse { code, message, .. } => Err((code, message)),
    }
}

fn open(start: SessionStart, org: &str, channel: Channel, rt: &Arc<Runtime>) -> Open {
    let snap = rt.snap();
    let Some(agent) = snap.agent(&start.agent) else {
        // Suggest only this org's agents: others' names are not this token's business.
        let own = snap.agents_of(org);
        let hint = crate::config::did_you_mean(&start.agent, own)
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default();
        return Open::Refuse {
            code: ErrorCode::UnknownAgent,
            message: format!("no agent {:?}{hint}", start.agent),
            close_with: None,
        };
    };
    if agent.org != org {
        return Open::Refuse {
            code: ErrorCode::Forbidden,
            message: format!("agent {:?} belongs to another org", start.agent),
            close_with: Some(CloseCode::Policy),
        };
    }
    let key: SessionKey = (org.to_owned(), start.call_id.clone());
    match rt.sessions.entry(key.clone()) {
        dashmap::Entry::Occupied(e) => {
            let h = e.get();
            if let Some(reattach) = h
                .reattach
                .as_ref()
                .filter(|_| !h.attached.load(Ordering::Acquire) && h.agent_id == start.agent)
            {
                Open::Resume(reattach.clone())
            } else {
                Open::Refuse {
                    code: ErrorCode::SessionExists,
                    message: format!("call {:?} already has a live session", start.call_id),
                    close_with: None,
                }
            }
        }
        dashmap::Entry::Vacant(v) => {
            let max = rt.server.max_sessions;
            if rt.active_sessions.load(Ordering::Acquire) >= max {
                return Open::Refuse {
                    code: ErrorCode::Overloaded,
                    message: format!("this sidecar is at its limit of {max} sessions"),
                    close_with: Some(CloseCode::Again),
                };
            }
            if let Some(max) = snap.org_max_sessions(org) {
                let mut n = rt.org_sessions.entry(org.to_owned()).or_insert(0);
                if *n >= max {
                    return Open::Refuse {
                        code: ErrorCode::Overloaded,
                        message: format!("org {org:?} is at its limit of {max} sessions"),
                        close_with: Some(CloseCode::Again),
                    };
                }
                *n += 1;
            } else {
                *rt.org_sessions.entry(org.to_owned()).or_insert(0) += 1;
            }
            rt.active_sessions.fetch_add(1, Ordering::AcqRel);
            crate::telemetry::session_started();
            let attached = Arc::new(AtomicBool::new(true));
            v.insert(SessionHandle {
                attached: attached.clone(),
                reattach: None,
                agent_id: agent.id.clone(),
            });
            let ctx = CallContext {
                call_id: start.call_id.clone(),
                agent_id: agent.id.clone(),
                caller: start.caller,
                variables: start.variables,
            };
            let session = Session {
                rt: rt.clone(),
                channel,
                key,
                filler_rotation: vec![0; agent.functions.len()],
                agent: agent.clone(),
                ctx: Arc::new(ctx),
                ctx_redacted: std::sync::OnceLock::new(),
                started: Instant::now(),
                started_at: now_ms(),
                history: History::bounded(call_state::HistoryLimits {
                    max_entries: rt.server.max_history_turns,
                    max_bytes: rt.server.max_history_bytes,
                }),
                ledger: Ledger::default(),
                calls: Default::default(),
                inflight: 0,
                invocations: 0,
                deferred: 0,
                events_tx: None,
                events_rx: None,
                running: None,
                reattach_rx: None,
                attached,
                outbox: Vec::new(),
                pending: Vec::new(),
                registered: true,
                draining: false,
                due: Vec::new(),
                end_reason: None,
                end_kind: "closed",
            };
            Open::New(Box::new(session), start.call_id)
        }
    }
}
