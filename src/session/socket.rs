//! One media server's socket, as both phases of a connection (before and after
//! `session.start`) read and write it: frames are screened (rate limit, binary, decode) into
//! [`Incoming`], the server pings an idle peer, and a peer that stops answering or stops
//! reading is declared gone instead of holding its session forever.
//!
//! Beside it, what the rest of the process knows of a session's wire: the `error` frames,
//! the adapters' channels in and out ([`ToSession`], [`FromSession`]), and the session's
//! entry in the runtime's registry ([`SessionHandle`]), kept here so the runtime can hold it
//! without importing the session's run loop.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::debug;

use crate::config::ServerSettings;
use crate::protocol::{self, ErrorCode, FrameError, Inbound, Outbound};

/// The server side of a media server's WebSocket.
pub type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// A live session's entry in the registry: how a reconnecting socket finds it.
#[derive(Debug)]
pub struct SessionHandle {
    pub(super) attached: Arc<AtomicBool>,
    /// Where a resuming socket goes: made when the socket drops, not for every session
    /// (a channel costs ~0.8 KiB). Boxed: the channel's first block holds 32 slots.
    pub(super) reattach: Option<mpsc::Sender<Box<Socket>>>,
    pub(super) agent_id: String,
}

pub(super) fn error_frame(code: ErrorCode, message: &str, reference: Option<&str>) -> String {
    crate::telemetry::protocol_error(code.as_str());
    Outbound::Error {
        code,
        message,
        reference,
    }
    .encode()
}

fn frame_error(e: &FrameError) -> String {
    error_frame(e.code, &e.message, e.reference.as_deref())
}

const BINARY_MESSAGE: &str = "binary frames are not supported; send JSON text frames";

/// How long a socket may be quiet or slow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    /// Ping the peer this often.
    pub ping_every: Duration,
    /// Declare it gone when nothing (not even a pong) arrived for this long.
    pub idle_after: Duration,
    /// Declare it gone when a write does not complete within this.
    pub write_timeout: Duration,
}

impl From<&ServerSettings> for Liveness {
    fn from(s: &ServerSettings) -> Self {
        Liveness {
            ping_every: s.ping_interval,
            idle_after: s.idle_timeout,
            write_timeout: s.write_timeout,
        }
    }
}

/// What reading the socket produced.
pub(crate) enum Incoming {
    /// A decoded frame and when it arrived.
    Frame(Inbound, Instant),
    /// A frame that was refused: answer with this `error` frame and carry on.
    Refused(String),
    /// The peer closed, vanished, went idle or sent an oversized frame (answered with 1009).
    Gone,
    /// The peer broke the WebSocket protocol (invalid UTF-8 in a text frame: 1007; a bad
    /// opcode, a continuation with no start, ...: 1002). The socket was closed with that code,
    /// and the session ends: such a peer is not waited for.
    Violated,
}

/// A fixed one-second window on inbound data frames and their bytes.
struct FrameLimiter {
    max: u32,
    max_bytes: usize,
    window: Instant,
    count: u32,
    bytes: usize,
}

impl FrameLimiter {
    fn allow(&mut self, now: Instant, len: usize) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
            self.bytes = 0;
        }
        self.count += 1;
        self.bytes = self.bytes.saturating_add(len);
        self.count <= self.max && self.bytes <= self.max_bytes
    }
}

/// The `id` of a frame, read cheaply for the `ref` of a rate-limit error.
fn frame_id(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<String>,
    }
    serde_json::from_str::<Id>(text).ok().and_then(|i| i.id)
}

/// What a session says to an adapter that drives it in-process ([`super::attach`]): the same
/// frames a v1 media server would read, and how the session closed.
#[derive(Debug)]
pub enum LocalOut {
    /// A v1 frame (JSON text).
    Frame(String),
    /// The session closed its side with this code (1000 after `session.end`, 1001 at shutdown).
    Closed(CloseCode),
}

/// An adapter's way into its session: decoded frames, each boxed, so the channel's buffer
/// (tokio allocates its slots 32 at a time, up front) is 32 pointers per call rather than 32
/// frames of 80 bytes (2.5 KB for every webhook or relayed call, idle or not).
#[derive(Debug, Clone)]
pub struct ToSession(pub(crate) mpsc::Sender<Box<Inbound>>);

impl ToSession {
    /// Send a frame, waiting while the session has 64 unread; `Err` gives it back when the
    /// session is gone.
    pub async fn send(&self, inbound: Inbound) -> Result<(), mpsc::error::SendError<Inbound>> {
        self.0
            .send(Box::new(inbound))
            .await
            .map_err(|e| mpsc::error::SendError(*e.0))
    }
}

/// What an adapter reads from its session: its frames boxed in the channel, as
/// [`ToSession`]'s are (32 pointers of buffer per call rather than 32 frames).
#[derive(Debug)]
pub struct FromSession(pub(crate) mpsc::UnboundedReceiver<Box<LocalOut>>);

impl FromSession {
    /// The session's next frame, or how it closed; `None` once it is gone. Cancel-safe.
    pub async fn recv(&mut self) -> Option<LocalOut> {
        self.0.recv().await.map(|out| *out)
    }
}

/// An adapter's end of a session: decoded frames in, v1 frames out. No WebSocket framing, no
/// JSON decoding on the way in; liveness is the adapter's business.
pub(crate) struct LocalPeer {
    pub(crate) rx: mpsc::Receiver<Box<Inbound>>,
    pub(crate) tx: mpsc::UnboundedSender<Box<LocalOut>>,
}

// The WebSocket is the common case and the adapter's peer a small one: boxing the socket would
// cost every v1 call an allocation to save nothing.
#[allow(clippy::large_enum_variant)]
enum Wire {
    Ws(Ws),
    Local(LocalPeer),
}

/// A media server's WebSocket with its liveness rules, or an adapter's in-process peer.
pub(crate) struct Socket {
    wire: Wire,
    live: Liveness,
    limiter: FrameLimiter,
    last_seen: Instant,
    next_ping: Instant,
}

impl Socket {
    pub(crate) fn new(ws: Ws, server: &ServerSettings) -> Socket {
        Socket::with_wire(Wire::Ws(ws), server)
    }

    pub(crate) fn local(peer: LocalPeer, server: &ServerSettings) -> Socket {
        Socket::with_wire(Wire::Local(peer), server)
    }

    fn with_wire(wire: Wire, server: &ServerSettings) -> Socket {
        let now = Instant::now();
        let live = Liveness::from(server);
        Socket {
            wire,
            live,
            limiter: FrameLimiter {
                max: server.max_frames_per_second,
                max_bytes: server.max_bytes_per_second,
                window: now,
                count: 0,
                bytes: 0,
            },
            last_seen: now,
            next_ping: now + live.ping_every,
        }
    }

    /// The next screened frame. Cancel-safe: dropping it loses no frame.
    pub(crate) async fn next(&mut self) -> Incoming {
        let ws = match &mut self.wire {
            Wire::Ws(ws) => ws,
            Wire::Local(peer) => {
                return match peer.rx.recv().await {
                    Some(frame) => Incoming::Frame(*frame, Instant::now()),
                    None => Incoming::Gone,
                };
            }
        };
        loop {
            tokio::select! {
                msg = ws.next() => {
                    let now = Instant::now();
                    self.last_seen = now;
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Binary(b))) => {
                            if !self.limiter.allow(now, b.len()) {
                                return Incoming::Refused(error_frame(ErrorCode::RateLimited, "too many frames per second", None));
                            }
                            return Incoming::Refused(error_frame(ErrorCode::BadFrame, BINARY_MESSAGE, None));
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                        Some(Ok(Message::Close(_))) | None => return Incoming::Gone,
                        Some(Err(WsError::Capacity(e))) => {
                            debug!(error = %e, "frame above max_frame_bytes; closing with 1009");
                            Box::pin(close_ws(ws, self.live.write_timeout, CloseCode::Size, "frame too large")).await;
                            return Incoming::Gone;
                        }
                        Some(Err(WsError::Utf8(e))) => {
                            debug!(error = %e, "text frame with invalid UTF-8; closing with 1007");
                            Box::pin(close_ws(ws, self.live.write_timeout, CloseCode::Invalid, "invalid UTF-8 in a text frame")).await;
                            return Incoming::Violated;
                        }
                        // A dropped connection, not a broken peer: it may come back.
                        Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                            debug!("socket dropped without a close frame");
                            return Incoming::Gone;
                        }
                        Some(Err(WsError::Protocol(e))) => {
                            debug!(error = %e, "WebSocket protocol error; closing with 1002");
                            Box::pin(close_ws(ws, self.live.write_timeout, CloseCode::Protocol, "protocol error")).await;
                            return Incoming::Violated;
                        }
                        Some(Err(e)) => {
                            debug!(error = %e, "socket read failed");
                            return Incoming::Gone;
                        }
                    };
                    if !self.limiter.allow(now, text.len()) {
                        return Incoming::Refused(error_frame(
                            ErrorCode::RateLimited,
                            "too many frames or bytes per second",
                            frame_id(&text).as_deref(),
                        ));
                    }
                    return match protocol::decode(&text) {
                        Ok(frame) => Incoming::Frame(frame, now),
                        Err(e) => Incoming::Refused(frame_error(&e)),
                    };
                }
                _ = sleep_until(self.next_ping) => {
                    let now = Instant::now();
                    if now.duration_since(self.last_seen) >= self.live.idle_after {
                        debug!(idle_ms = now.duration_since(self.last_seen).as_millis() as u64, "peer silent past idle_timeout_ms");
                        return Incoming::Gone;
                    }
                    // Boxed: a ping is rare, and its write would otherwise size every wait.
                    if !Box::pin(write_ws(ws, self.live.write_timeout, Message::Ping(Default::default()))).await {
                        return Incoming::Gone;
                    }
                    self.next_ping = now + self.live.ping_every;
                }
            }
        }
    }

    /// Send a text frame; `false` when the peer is gone or too slow to take it.
    pub(crate) async fn send(&mut self, text: String) -> bool {
        match &mut self.wire {
            Wire::Ws(ws) => write_ws(ws, self.live.write_timeout, Message::text(text)).await,
            Wire::Local(peer) => peer.tx.send(Box::new(LocalOut::Frame(text))).is_ok(),
        }
    }

    /// Close with a code (best effort, bounded by the write timeout).
    pub(crate) async fn close(&mut self, code: CloseCode, reason: &str) {
        match &mut self.wire {
            Wire::Ws(ws) => close_ws(ws, self.live.write_timeout, code, reason).await,
            Wire::Local(peer) => {
                let _ = peer.tx.send(Box::new(LocalOut::Closed(code)));
            }
        }
    }
}

async fn write_ws(ws: &mut Ws, within: Duration, msg: Message) -> bool {
    match timeout(within, ws.send(msg)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(error = %e, "socket write failed");
            false
        }
        Err(_) => {
            debug!("socket write timed out");
            false
        }
    }
}

async fn close_ws(ws: &mut Ws, within: Duration, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.to_owned().into(),
    };
    let _ = timeout(within, ws.close(Some(frame))).await;
}
