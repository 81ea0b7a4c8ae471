//! Realtime relays (SPEC §13.2): toolgate on the live session's own WebSocket.
//!
//! A media server that runs a speech-to-speech client (OpenAI Realtime, directly or through
//! Pipecat; Deepgram Voice Agent) points that client's base URL at a ticket URL. toolgate opens
//! the same WebSocket to the real upstream, relays every frame both ways, and takes over the
//! tool calls of the functions its agent owns: they run through an in-process v1 session
//! ([`crate::session::attach`]), so guards, budget, fillers, deferral, evidence and metrics are
//! exactly those of a v1 call, and their answers go back upstream in the provider's own events.
//!
//! The flow of one relayed call:
//! 1. `POST /v1/relay/tickets` (org session token) stores the call's `session.start` under a
//!    single-use ticket ([`Tickets`]) and answers its URLs.
//! 2. The client connects to the ticket URL. The ticket is taken (401 when unknown, used or
//!    expired) and the upstream WebSocket is opened with the client's own `Authorization` and
//!    `Sec-WebSocket-Protocol`, *before* the client's upgrade is answered, so an upstream that
//!    refuses is answered with its own status (or 502 when unreachable).
//! 3. `pump` moves frames: pass-through frames are forwarded as they came (their bytes are
//!    not copied, and only a text frame's top-level `type` is read); a `Dialect` rewrites the
//!    few frames it must (the tool list in the session settings) and hides the owned calls'
//!    events from the client.
//!
//! The client's key is forwarded and never stored, logged or recorded.

mod deepgram;
mod openai;
pub(crate) mod tickets;
mod upstream;

use std::borrow::Cow;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::{Instrument, debug, info, warn};

use crate::net::{HttpResponse, json_error};
use crate::protocol::{Channel, Inbound};
use crate::runtime::Runtime;
use crate::session::{self, LocalOut};
pub use tickets::Tickets;

/// The two relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OpenAI Realtime (`/v1/relay/openai/{ticket}[/realtime]`).
    OpenAi,
    /// Deepgram Voice Agent (`/v1/relay/deepgram/{ticket}[/v1/agent/converse]`).
    Deepgram,
}

impl Kind {
    fn channel(self) -> Channel {
        match self {
            Kind::OpenAi => Channel::OpenaiRealtime,
            Kind::Deepgram => Channel::Deepgram,
        }
    }

    /// The suffix the official SDKs append to a base URL.
    fn sdk_suffix(self) -> &'static str {
        match self {
            Kind::OpenAi => "/realtime",
            Kind::Deepgram => "/v1/agent/converse",
        }
    }
}

/// A relay route: `/v1/relay/{openai|deepgram}/{ticket}` with the SDK's own suffix or none.
pub fn route(path: &str) -> Option<(Kind, &str)> {
    let rest = path.strip_prefix("/v1/relay/")?;
    let (kind, rest) = if let Some(r) = rest.strip_prefix("openai/") {
        (Kind::OpenAi, r)
    } else if let Some(r) = rest.strip_prefix("deepgram/") {
        (Kind::Deepgram, r)
    } else {
        return None;
    };
    let ticket = rest.strip_suffix(kind.sdk_suffix()).unwrap_or(rest);
    let ticket = ticket.strip_suffix('/').unwrap_or(ticket);
    (ticket.starts_with("tkt_") && !ticket.contains('/')).then_some((kind, ticket))
}

/// What the relay does with one text frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Forward it unchanged.
    Forward,
    /// Do not forward it (an owned call's event, toolgate's own traffic).
    Hide,
    /// Forward this instead.
    Replace(String),
}

/// Side effects of one frame: frames for the upstream, frames for the session.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub upstream: Vec<String>,
    pub session: Vec<Inbound>,
}

/// A v1 frame the session sent, as a relay reads it.
#[derive(Debug, Deserialize)]
pub(crate) struct SessionFrame {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub id: Option<String>,
    /// `tool.filler`'s line.
    #[serde(default)]
    pub text: Option<String>,
    /// `tool.result`'s status.
    #[serde(default)]
    pub status: Option<String>,
    /// `tool.result`'s output for the model.
    #[serde(default)]
    pub output: Option<String>,
    /// `session.ready`'s tools.
    #[serde(default)]
    pub tools: Option<Vec<serde_json::Value>>,
    /// `error`'s code and message.
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// One upstream's event dialect: how its tool calls, transcripts, answers and fillers look.
pub(crate) trait Dialect: Send {
    /// The session is ready; `tools` is its `session.ready` tool list.
    fn ready(&mut self, tools: Vec<serde_json::Value>);
    /// A text frame from the client.
    fn on_client(&mut self, text: &str, fx: &mut Effects) -> Pass;
    /// A text frame from the upstream.
    fn on_upstream(&mut self, text: &str, fx: &mut Effects) -> Pass;
    /// A `tool.filler` from the session: `text` to be spoken for call `id`.
    fn on_filler(&mut self, id: String, text: String, fx: &mut Effects);
    /// A `tool.result` from the session: `output` for the model, with its `status`.
    fn on_result(&mut self, id: String, status: Option<String>, output: String, fx: &mut Effects);
    /// An `error` frame from the session: a relayed frame was refused.
    fn on_error(&mut self, code: Option<String>, message: Option<String>) {
        tracing::debug!(
            code = code.as_deref().unwrap_or(""),
            message = message.as_deref().unwrap_or(""),
            "the session refused a relayed frame"
        );
    }
    /// A frame from the session (a filler, a result, an error), handed to the method for its
    /// type; a frame without the fields its type needs is dropped.
    fn on_session(&mut self, frame: SessionFrame, fx: &mut Effects) {
        match (frame.ty.as_str(), frame.id) {
            ("tool.filler", Some(id)) => {
                if let Some(text) = frame.text {
                    self.on_filler(id, text, fx);
                }
            }
            ("tool.result", Some(id)) => {
                if let Some(output) = frame.output {
                    self.on_result(id, frame.status, output, fx);
                }
            }
            ("error", _) => self.on_error(frame.code, frame.message),
            _ => {}
        }
    }
}

/// The top-level `type` of a JSON object, read without building anything else: pass-through
/// frames (audio deltas, appends) cost one scan.
pub(crate) fn frame_type(text: &str) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        ty: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Typed<'_>>(text).ok()?.ty
}

/// `POST /v1/relay/tickets` for `org` (its session token was checked): a ticket for one call,
/// described like `session.start` (`agent`, `call_id`, `caller`, `variables`).
pub async fn issue(req: Request<Incoming>, org: &str, rt: &Runtime) -> HttpResponse {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
        .map(str::to_owned)
        .unwrap_or_else(|| rt.server.listen.clone());
    let body = match crate::net::read_body(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let mut fields = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "send a JSON object: {\"agent\", \"call_id\", \"caller\", \"variables\"}",
            );
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
    };
    fields.insert("type".into(), "session.start".into());
    let start = match crate::protocol::decode(&serde_json::Value::Object(fields).to_string()) {
        Ok(Inbound::SessionStart(s)) => s,
        Ok(_) => unreachable!("the type is session.start"),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.code.as_str(), &e.message),
    };
    let snap = rt.snap();
    match snap.agent(&start.agent) {
        None => {
            return refuse(
                StatusCode::NOT_FOUND,
                "unknown_agent",
                &format!("no agent {:?}", start.agent),
            );
        }
        Some(a) if a.org != org => {
            return refuse(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("agent {:?} belongs to another org", start.agent),
            );
        }
        Some(_) => {}
    }
    let ttl = snap.config.relay.ticket_ttl;
    let Some(ticket) = rt.tickets.issue(org.to_owned(), *start, ttl) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many unused tickets; try again shortly",
        );
    };
    let expires_at = crate::clock::now_ms() + ttl.as_millis() as crate::clock::Millis;
    crate::net::json(
        StatusCode::CREATED,
        &serde_json::json!({
            "ticket": ticket,
            "openai_url": format!("ws://{host}/v1/relay/openai/{ticket}"),
            "deepgram_url": format!("ws://{host}/v1/relay/deepgram/{ticket}"),
            "expires_at": expires_at,
        }),
    )
}

/// Feed `text` to both dialects as a client frame and as an upstream frame, after a
/// `session.ready` with one owned tool (for the fuzz targets): nothing may panic.
#[doc(hidden)]
pub fn exercise_dialects(text: &str) -> usize {
    let tool = serde_json::json!({"type": "function", "name": "send_email",
        "description": "d", "parameters": {"type": "object", "properties": {}}});
    let mut fx = Effects::default();
    let mut o = openai::OpenAi::new(false);
    o.ready(vec![tool.clone()]);
    let _ = o.on_client(text, &mut fx);
    let _ = o.on_upstream(text, &mut fx);
    let mut d = deepgram::Deepgram::default();
    d.ready(vec![tool]);
    let _ = d.on_client(text, &mut fx);
    let _ = d.on_upstream(text, &mut fx);
    let id = fx.session.iter().find_map(|i| match i {
        Inbound::ToolCall(c) => Some(c.id.clone()),
        _ => None,
    });
    let result = || SessionFrame {
        ty: "tool.result".into(),
        id: id.clone(),
        text: None,
        status: Some("succeeded".into()),
        output: Some(text.to_owned()),
        tools: None,
        code: None,
        message: None,
    };
    o.on_session(result(), &mut fx);
    d.on_session(result(), &mut fx);
    fx.upstream.len() + fx.session.len()
}

/// An `error` body.
fn refuse(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    json_error(status, code, message)
}

/// `GET` a relay route: take the ticket, open the upstream with the client's credentials, then
/// answer the client's upgrade and relay.
pub async fn upgrade(
    mut req: Request<Incoming>,
    kind: Kind,
    ticket: &str,
    rt: Arc<Runtime>,
) -> HttpResponse {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket only",
        );
    };
    let Some(ticket) = rt.tickets.take(ticket) else {
        let mut resp = refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown, used or expired ticket; get a new one from POST /v1/relay/tickets",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    let snap = rt.snap();
    let settings = &snap.config.relay;
    let base = match kind {
        Kind::OpenAi => &settings.openai_upstream,
        Kind::Deepgram => &settings.deepgram_upstream,
    };
    let target = upstream::target(base, req.uri().query());
    let host = upstream::host_of(&target);
    let ws_cfg = ws_config(settings.max_frame_bytes);
    let upstream = match upstream::connect(&target, req.headers(), ws_cfg).await {
        Ok(u) => u,
        Err(upstream::Refused::Status(status, body)) => {
            warn!(upstream = %host, status = status.as_u16(), "the relay's upstream refused the connection");
            return Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(body.into())
                .expect("static response parts are valid");
        }
        Err(upstream::Refused::Unreachable(why)) => {
            warn!(upstream = %host, error = %why, "cannot reach the relay's upstream");
            return refuse(
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                &format!("cannot reach {host}: {why}"),
            );
        }
    };
    let (upstream_ws, protocol) = upstream;
    // The beta protocol (OpenAI-Beta: realtime=v1) names a few events and fields differently.
    let beta = req.headers().contains_key("openai-beta");
    let attached = match session::attach(ticket.start, &ticket.org, kind.channel(), &rt) {
        Ok(a) => a,
        Err((code, message)) => {
            let status = match code {
                crate::protocol::ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
                crate::protocol::ErrorCode::SessionExists => StatusCode::CONFLICT,
                _ => StatusCode::FORBIDDEN,
            };
            return refuse(status, code.as_str(), &message);
        }
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let span = tracing::info_span!("relay", upstream = %host, relay = kind.channel().as_str());
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let client = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(ws_cfg),
                    )
                    .await;
                    match kind {
                        Kind::OpenAi => {
                            pump(client, upstream_ws, attached, openai::OpenAi::new(beta)).await
                        }
                        Kind::Deepgram => {
                            pump(client, upstream_ws, attached, deepgram::Deepgram::default()).await
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, "relay upgrade failed");
                    let _ = attached
                        .to_session
                        .send(Inbound::SessionEnd {
                            reason: Some("relay upgrade failed".into()),
                        })
                        .await;
                }
            }
        }
        .instrument(span),
    );
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = protocol {
        resp = resp.header(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp.body(Default::default())
        .expect("static response parts are valid")
}

fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// Why the relay of a call ended, and what the other side is told.
fn close_frame(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }))
}

/// Relay one call until either side closes: frames both ways, owned tool calls to the session
/// and its answers upstream.
async fn pump<C, U, D>(
    client: WebSocketStream<C>,
    upstream: WebSocketStream<U>,
    attached: session::Attached,
    mut dialect: D,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    D: Dialect,
{
    let (mut c_tx, mut c_rx) = client.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    let session::Attached {
        to_session,
        mut from_session,
        ..
    } = attached;
    let mut fx = Effects::default();
    // The session speaks first (`session.ready` with the agent's tools): the client's first
    // frame is often its settings, which must already be merged with them.
    match from_session.recv().await {
        Some(LocalOut::Frame(text)) => match serde_json::from_str::<SessionFrame>(&text) {
            Ok(frame) if frame.ty == "session.ready" => {
                dialect.ready(frame.tools.unwrap_or_default())
            }
            _ => warn!("the relayed session did not start with session.ready"),
        },
        _ => {
            let _ = c_tx
                .send(close_frame(
                    CloseCode::Error,
                    "toolgate could not start the session",
                ))
                .await;
            let _ = u_tx
                .send(close_frame(
                    CloseCode::Away,
                    "toolgate could not start the session",
                ))
                .await;
            return;
        }
    }
    let ended: String = loop {
        tokio::select! {
            msg = c_rx.next() => {
                let msg = match msg {
                    Some(Ok(Message::Text(t))) => match dialect.on_client(&t, &mut fx) {
                        Pass::Forward => Message::Text(t),
                        Pass::Replace(s) => Message::text(s),
                        Pass::Hide => continue,
                    },
                    Some(Ok(m @ Message::Binary(_))) => m,
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame.map_or((CloseCode::Normal, String::new()), |f| (f.code, f.reason.to_string()));
                        let _ = u_tx.send(close_frame(code, &reason)).await;
                        // tungstenite queued the answer to the client's close: send it, or the
                        // client sees its socket drop without a closing handshake.
                        let _ = c_tx.flush().await;
                        break format!("client closed ({})", u16::from(code));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        debug!(error = %e, "client socket failed");
                        let _ = u_tx.send(close_frame(CloseCode::Away, "client went away")).await;
                        break "client socket failed".to_owned();
                    }
                    None => {
                        let _ = u_tx.send(close_frame(CloseCode::Away, "client went away")).await;
                        break "client went away".to_owned();
                    }
                };
                if u_tx.send(msg).await.is_err() {
                    let _ = c_tx.send(close_frame(CloseCode::Away, "upstream went away")).await;
                    break "upstream went away".to_owned();
                }
            }
            msg = u_rx.next() => {
                let msg = match msg {
                    Some(Ok(Message::Text(t))) => match dialect.on_upstream(&t, &mut fx) {
                        Pass::Forward => Some(Message::Text(t)),
                        Pass::Replace(s) => Some(Message::text(s)),
                        Pass::Hide => None,
                    },
                    Some(Ok(m @ Message::Binary(_))) => Some(m),
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame.map_or((CloseCode::Normal, String::new()), |f| (f.code, f.reason.to_string()));
                        let _ = c_tx.send(close_frame(code, &reason)).await;
                        // The same for the upstream's close.
                        let _ = u_tx.flush().await;
                        break format!("upstream closed ({})", u16::from(code));
                    }
                    Some(Ok(_)) => None,
                    Some(Err(e)) => {
                        debug!(error = %e, "upstream socket failed");
                        let _ = c_tx.send(close_frame(CloseCode::Away, "upstream went away")).await;
                        break "upstream socket failed".to_owned();
                    }
                    None => {
                        let _ = c_tx.send(close_frame(CloseCode::Away, "upstream went away")).await;
                        break "upstream went away".to_owned();
                    }
                };
                if let Some(m) = msg
                    && c_tx.send(m).await.is_err()
                {
                    let _ = u_tx.send(close_frame(CloseCode::Away, "client went away")).await;
                    break "client went away".to_owned();
                }
            }
            out = from_session.recv() => match out {
                Some(LocalOut::Frame(text)) => match serde_json::from_str::<SessionFrame>(&text) {
                    Ok(frame) if frame.ty == "session.ready" => {
                        dialect.ready(frame.tools.unwrap_or_default());
                    }
                    Ok(frame) => dialect.on_session(frame, &mut fx),
                    Err(e) => warn!(error = %e, "unreadable session frame"),
                },
                Some(LocalOut::Closed(_)) | None => {
                    let code = match out {
                        Some(LocalOut::Closed(c)) => c,
                        _ => CloseCode::Away,
                    };
                    let _ = c_tx.send(close_frame(code, "toolgate ended the session")).await;
                    let _ = u_tx.send(close_frame(code, "toolgate ended the session")).await;
                    info!("the session ended; relay closed");
                    return;
                }
            }
        }
        for frame in fx.upstream.drain(..) {
            if u_tx.send(Message::text(frame)).await.is_err() {
                break;
            }
        }
        for inbound in fx.session.drain(..) {
            if to_session.send(inbound).await.is_err() {
                break;
            }
        }
    };
    info!(why = %ended, "relay closed");
    // Calls in flight finish and are recorded; their answers have nowhere to go.
    for inbound in fx.session.drain(..) {
        let _ = to_session.send(inbound).await;
    }
    let _ = to_session
        .send(Inbound::SessionEnd {
            reason: Some(ended),
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_take_the_sdk_suffixes() {
        assert_eq!(
            route("/v1/relay/openai/tkt_abc"),
            Some((Kind::OpenAi, "tkt_abc"))
        );
        assert_eq!(
            route("/v1/relay/openai/tkt_abc/realtime"),
            Some((Kind::OpenAi, "tkt_abc"))
        );
        assert_eq!(
            route("/v1/relay/deepgram/tkt_abc/v1/agent/converse"),
            Some((Kind::Deepgram, "tkt_abc"))
        );
        assert_eq!(
            route("/v1/relay/deepgram/tkt_abc"),
            Some((Kind::Deepgram, "tkt_abc"))
        );
        assert_eq!(route("/v1/relay/openai/tkt_abc/other"), None);
        assert_eq!(route("/v1/relay/other/tkt_abc"), None);
        assert_eq!(route("/v1/relay/openai/abc"), None);
    }

    #[test]
    fn the_type_is_read_wherever_it_stands() {
        assert_eq!(
            frame_type(r#"{"audio":"AAAA","type":"input_audio_buffer.append"}"#).as_deref(),
            Some("input_audio_buffer.append")
        );
        assert_eq!(
            frame_type(r#"{"session":{"type":"realtime"},"type":"session.update"}"#).as_deref(),
            Some("session.update")
        );
        assert_eq!(frame_type("not json"), None);
    }
}
