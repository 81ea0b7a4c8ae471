//! `toolgate-floor`: the floor, the least a sidecar must do per tool call: a frame in, an HTTP
//! request out and back, a frame out.
//!
//! It speaks just enough of protocol v1 for `toolgate-loadtest` to drive it exactly as it
//! drives toolgate with `loadtest/loadtest.toml`, so the CPU and latency the generator reports
//! for it are what this machine, this runtime and these libraries (tokio, tungstenite, hyper,
//! serde_json) cost at the least; toolgate's own figures read against it. Per connection:
//!
//! - the upgrade on `GET /v1/session` needs a non-empty `Authorization: Bearer` token (any);
//! - `session.start` is answered with `session.ready` listing `loadtest.toml`'s functions;
//! - each `tool.call` becomes one `POST` to `--provider` whose JSON body carries the call's
//!   arguments as they came (so the generator's token reaches its mock), over a pool of
//!   keep-alive connections; the answer, once read, becomes a `tool.result`: `succeeded` for
//!   a 2xx, `failed` otherwise;
//! - `session.end` is answered with `session.ended` and the socket is closed.
//!
//! Nothing else: no guards, no evidence, no metrics, no logging, no fillers, no deferral.

use bytes::Bytes;
use clap::Parser;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The least protocol-v1 sidecar: one HTTP request per tool call, nothing else.
#[derive(Parser, Debug)]
#[command(name = "toolgate-floor", version)]
struct Args {
    /// Where to listen for WebSocket sessions (loadtest.toml's `[server] listen`).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: String,

    /// Where every tool call is posted (loadtest.toml's webhook connection: the generator's
    /// mock provider).
    #[arg(long, default_value = "http://127.0.0.1:9999/hook")]
    provider: Uri,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The functions of loadtest.toml's `support-bot`, by name: the generator checks that the one
/// it calls is listed.
const TOOLS: &str = r#"[{"type":"function","name":"request_callback","parameters":{"type":"object"}},{"type":"function","name":"request_callback_live","parameters":{"type":"object"}},{"type":"function","name":"send_email_summary","parameters":{"type":"object"}}]"#;

/// A frame from the media server; only the fields the floor reads.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default, borrow)]
    name: Option<&'a RawValue>,
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
}

/// The provider request's body.
#[derive(Serialize)]
struct Action<'a> {
    call_id: &'a str,
    id: &'a str,
    function: Option<&'a RawValue>,
    arguments: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ToolResult<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    id: &'a str,
    status: &'static str,
    output: &'static str,
}

#[derive(Serialize)]
struct Ended<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    call_id: &'a str,
    invocations: u64,
    deferred: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    let listener = TcpListener::bind(&args.listen).await?;
    println!(
        "toolgate-floor listening on {}, posting tool calls to {}",
        listener.local_addr()?,
        args.provider
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(session(stream, client.clone(), args.provider.clone()));
    }
}

/// Refuses an upgrade elsewhere than `/v1/session` or without a bearer token.
fn check_upgrade(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let status = if req.uri().path() != "/v1/session" {
        StatusCode::NOT_FOUND
    } else if token.is_empty() {
        StatusCode::UNAUTHORIZED
    } else {
        return Ok(resp);
    };
    let mut refusal = ErrorResponse::new(None);
    *refusal.status_mut() = status;
    Err(refusal)
}

/// One call. Its tool calls run concurrently as futures of this one task (a
/// `FuturesUnordered`, polled beside the socket): no task, channel or lock per tool call.
async fn session(stream: TcpStream, client: HttpClient, provider: Uri) {
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, check_upgrade).await else {
        return;
    };
    let mut call_id = String::new();
    let mut invocations = 0u64;
    let mut inflight = FuturesUnordered::new();
    loop {
        let out = tokio::select! {
            Some((id, ok)) = inflight.next(), if !inflight.is_empty() => result_frame(id, ok),
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
                        if ws.send(error_frame("bad_json")).await.is_err() {
                            break;
                        }
                        continue;
                    };
                    match frame.ty {
                        "tool.call" => {
                            let id = frame.id.unwrap_or_default();
                            let body = serde_json::to_vec(&Action {
                                call_id: &call_id,
                                id: &id,
                                function: frame.name,
                                arguments: frame.arguments,
                            })
                            .unwrap_or_default();
                            invocations += 1;
                            inflight.push(act(client.clone(), provider.clone(), body, id));
                            continue;
                        }
                        "session.start" => {
                            call_id = frame.call_id.unwrap_or_default();
                            let ready = format!(
                                r#"{{"type":"session.ready","protocol":1,"call_id":{},"tools":{TOOLS}}}"#,
                                serde_json::to_string(&call_id).unwrap_or_default()
                            );
                            Message::text(ready)
                        }
                        "session.end" => {
                            let ended = serde_json::to_string(&Ended {
                                ty: "session.ended",
                                call_id: &call_id,
                                invocations,
                                deferred: 0,
                            })
                            .unwrap_or_default();
                            let _ = ws.send(Message::text(ended)).await;
                            let _ = ws
                                .send(Message::Close(Some(CloseFrame {
                                    code: CloseCode::Normal,
                                    reason: "".into(),
                                })))
                                .await;
                            break;
                        }
                        "ping" => Message::text(r#"{"type":"pong"}"#),
                        "transcript" | "consent" | "tool.cancel" => continue,
                        _ => error_frame("unknown_type"),
                    }
                }
                Some(Ok(Message::Binary(_))) => error_frame("bad_frame"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break,
            },
        };
        if ws.send(out).await.is_err() {
            break;
        }
    }
    // Tool calls still in flight finish in the background; nobody is left to hear them.
    if !inflight.is_empty() {
        tokio::spawn(async move { while inflight.next().await.is_some() {} });
    }
}

/// The provider request of one tool call: its id back, and whether it succeeded.
async fn act(client: HttpClient, provider: Uri, body: Vec<u8>, id: String) -> (String, bool) {
    let req = hyper::Request::post(provider)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)));
    let Ok(req) = req else {
        return (id, false);
    };
    let ok = match client.request(req).await {
        // The body is read to the end so the connection goes back to the pool.
        Ok(resp) => {
            let success = resp.status().is_success();
            resp.into_body().collect().await.is_ok() && success
        }
        Err(_) => false,
    };
    (id, ok)
}

fn result_frame(id: String, ok: bool) -> Message {
    let (status, output) = if ok {
        ("succeeded", r#"{"ok":true}"#)
    } else {
        (
            "failed",
            r#"{"ok":false,"error":"provider_unavailable","next":"Apologise and offer to try again shortly."}"#,
        )
    };
    let frame = serde_json::to_string(&ToolResult {
        ty: "tool.result",
        id: &id,
        status,
        output,
    })
    .unwrap_or_default();
    Message::text(frame)
}

fn error_frame(code: &str) -> Message {
    Message::text(format!(
        r#"{{"type":"error","code":"{code}","message":"{code}","ref":null}}"#
    ))
}
