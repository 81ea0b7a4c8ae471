//! One simulated call: what a media server sends over its WebSocket, and what it hears back.
//!
//! Before the clock starts each call connects (`GET /v1/session` with the org's bearer
//! token), sends `session.start` with a caller and variables, waits for `session.ready`
//! (checking the function under test is among its tools), plays a few transcript turns and a
//! granted `consent` event. During the run one task per call writes the tool calls the pacer
//! hands it and reads fillers and results, stamping each with the process clock; at the end
//! it sends `session.end` and waits for `session.ended`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::calls::{CallTable, Status, now_ns, parse_call_id};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long connecting and the session handshake may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `session.end` may take to be answered.
const END_TIMEOUT: Duration = Duration::from_secs(5);

/// A text with `{seq}` (the call number) and `{token}` (the call's correlation token) holes,
/// split once so that rendering is only copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    token_prefix: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Seq,
    Token,
}

impl Template {
    /// Split `text` at its `{seq}` and `{token}` holes; tokens render as `prefix` + n.
    pub fn new(text: &str, token_prefix: &'static str) -> Template {
        let mut pieces = Vec::new();
        let mut rest = text;
        loop {
            let next_seq = rest.find("{seq}").map(|i| (i, 5, Piece::Seq));
            let next_t = rest.find("{token}").map(|i| (i, 7, Piece::Token));
            let next = match (next_seq, next_t) {
                (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
                (a, b) => a.or(b),
            };
            match next {
                Some((i, len, piece)) => {
                    if i > 0 {
                        pieces.push(Piece::Text(rest[..i].to_owned()));
                    }
                    pieces.push(piece);
                    rest = &rest[i + len..];
                }
                None => {
                    if !rest.is_empty() {
                        pieces.push(Piece::Text(rest.to_owned()));
                    }
                    break;
                }
            }
        }
        Template {
            pieces,
            token_prefix,
        }
    }

    /// Whether the text has a `{token}` hole.
    pub fn has_token(&self) -> bool {
        self.pieces.contains(&Piece::Token)
    }

    /// The text for call `n`.
    pub fn render(&self, n: u32) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(self.len_hint());
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Seq => {
                    let _ = write!(out, "{n}");
                }
                Piece::Token => {
                    out.push_str(self.token_prefix);
                    let _ = write!(out, "{n}");
                }
            }
        }
        out
    }

    fn len_hint(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.len(),
                _ => 16,
            })
            .sum()
    }
}

/// What every simulated call does.
#[derive(Debug)]
pub struct Script {
    /// The sidecar's WebSocket URL.
    pub url: String,
    /// The org's session token.
    pub token: String,
    /// `session.start.agent`.
    pub agent: String,
    /// The function the tool calls name.
    pub function: String,
    /// `session.start.caller`.
    pub caller: Value,
    /// `session.start.variables`.
    pub variables: Value,
    /// Transcript turns played before the run: (role, text).
    pub turns: Vec<(&'static str, String)>,
    /// The scope of the granted `consent` event, if one is sent.
    pub consent: Option<String>,
    /// The `tool.call` frame, with holes for the call number and token.
    pub call: Template,
    /// A prefix for `call_id`s, unique to this run.
    pub call_id_prefix: String,
}

/// Why a call could not be set up.
#[derive(Debug)]
pub enum OpenError {
    /// The TCP or WebSocket connection failed.
    Connect {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// HTTP 401: the token was not accepted.
    Unauthorized,
    /// Another HTTP status instead of the upgrade.
    Http {
        /// The status.
        status: u16,
        /// The body, if any.
        body: String,
    },
    /// `session.start` was answered with an `error` frame.
    Refused {
        /// Its `code`.
        code: String,
        /// Its `message`.
        message: String,
    },
    /// The agent does not expose the function under test.
    NoFunction {
        /// The agent.
        agent: String,
        /// The function asked for.
        function: String,
        /// The tools it does expose.
        tools: Vec<String>,
    },
    /// The socket closed or failed during setup.
    Lost(String),
    /// Setup took longer than it may.
    Timeout,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Connect { url, reason } => {
                write!(f, "cannot connect to {url}: {reason} (is toolgate running there?)")
            }
            OpenError::Unauthorized => f.write_str(
                "the sidecar answered HTTP 401: the session token was not accepted (check --token or LOADTEST_SESSION_TOKEN against the org's session_tokens)",
            ),
            OpenError::Http { status, body } => {
                write!(f, "the sidecar answered HTTP {status} instead of a WebSocket")?;
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                Ok(())
            }
            OpenError::Refused { code, message } => {
                write!(f, "session.start was refused: {code}: {message}")
            }
            OpenError::NoFunction {
                agent,
                function,
                tools,
            } => write!(
                f,
                "agent {agent:?} has no function {function:?}; its tools are: {}",
                if tools.is_empty() {
                    "(none)".to_owned()
                } else {
                    tools.join(", ")
                }
            ),
            OpenError::Lost(why) => write!(f, "the socket failed during setup: {why}"),
            OpenError::Timeout => write!(
                f,
                "no session.ready within {} s",
                SETUP_TIMEOUT.as_secs()
            ),
        }
    }
}

/// A frame from the sidecar, read without copying what is not needed.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    #[serde(default)]
    id: Option<&'a str>,
    #[serde(default)]
    status: Option<&'a str>,
    #[serde(default)]
    elapsed_ms: Option<u64>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    #[serde(default, borrow)]
    output: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tools: Option<&'a RawValue>,
    #[serde(default)]
    invocations: Option<u64>,
}

#[derive(Deserialize)]
struct Tool {
    name: String,
}

/// What a call task is told to do.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Send tool call `n` now.
    Call(u32),
    /// Send `session.end` and finish.
    End,
}

/// How a call's session ended.
#[derive(Debug, Default)]
pub struct Ending {
    /// `session.ended` arrived.
    pub ended: bool,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// Tool calls this session sent and the sidecar did not refuse with an `error` frame.
    pub accepted: u64,
    /// `session.ended.invocations`: the tool calls the sidecar counted.
    pub invocations: Option<u64>,
}

impl Ending {
    fn failed(why: String) -> Ending {
        Ending {
            error: Some(why),
            ..Ending::default()
        }
    }
}

/// An open call, ready for the run.
pub struct Call {
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<Ending>,
}

impl Call {
    /// Hand the call a command; `false` when its task is gone.
    pub fn send(&self, c: Command) -> bool {
        self.commands.send(c).is_ok()
    }

    /// A handle for the pacer thread to hand the call its commands.
    pub fn sender(&self) -> mpsc::UnboundedSender<Command> {
        self.commands.clone()
    }

    /// Wait for the call to finish.
    pub async fn finish(self) -> Ending {
        self.task
            .await
            .unwrap_or_else(|e| Ending::failed(format!("the call's task failed: {e}")))
    }
}

fn ws_config() -> WebSocketConfig {
    // Thousands of sockets with small frames: tungstenite's 128 KiB default read buffer per
    // socket would cost hundreds of MiB here.
    WebSocketConfig::default()
        .read_buffer_size(8192)
        .write_buffer_size(0)
}

async fn connect(script: &Script) -> Result<Ws, OpenError> {
    let mut req = script
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| OpenError::Connect {
            url: script.url.clone(),
            reason: e.to_string(),
        })?;
    let auth = format!("Bearer {}", script.token)
        .parse()
        .map_err(|_| OpenError::Connect {
            url: script.url.clone(),
            reason: "the token is not a valid header value".into(),
        })?;
    req.headers_mut().insert("authorization", auth);
    match tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), true).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            if status == 401 {
                return Err(OpenError::Unauthorized);
            }
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(OpenError::Http { status, body })
        }
        Err(e) => Err(OpenError::Connect {
            url: script.url.clone(),
            reason: e.to_string(),
        }),
    }
}

async fn send_json(ws: &mut Ws, v: &Value) -> Result<(), OpenError> {
    ws.send(Message::text(v.to_string()))
        .await
        .map_err(|e| OpenError::Lost(e.to_string()))
}

async fn setup(script: &Script, index: usize) -> Result<Ws, OpenError> {
    let mut ws = connect(script).await?;
    let start = serde_json::json!({
        "type": "session.start",
        "call_id": format!("{}-{index}", script.call_id_prefix),
        "agent": script.agent,
        "caller": script.caller,
        "variables": script.variables,
    });
    send_json(&mut ws, &start).await?;
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                return Err(OpenError::Lost(match c {
                    Some(c) => format!("closed with {} {}", u16::from(c.code), c.reason),
                    None => "closed".into(),
                }));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(OpenError::Lost(e.to_string())),
            None => return Err(OpenError::Lost("closed".into())),
        };
        let frame: Frame<'_> = serde_json::from_str(text.as_str())
            .map_err(|e| OpenError::Lost(format!("unreadable frame {text:?}: {e}")))?;
        match frame.ty {
            "session.ready" => {
                let tools: Vec<Tool> = frame
                    .tools
                    .and_then(|t| serde_json::from_str(t.get()).ok())
                    .unwrap_or_default();
                if !tools.iter().any(|t| t.name == script.function) {
                    return Err(OpenError::NoFunction {
                        agent: script.agent.clone(),
                        function: script.function.clone(),
                        tools: tools.into_iter().map(|t| t.name).collect(),
                    });
                }
                break;
            }
            "error" => {
                return Err(OpenError::Refused {
                    code: frame.code.unwrap_or_default(),
                    message: frame.message.unwrap_or_default(),
                });
            }
            _ => continue,
        }
    }
    for (role, text) in &script.turns {
        let turn =
            serde_json::json!({"type": "transcript", "role": role, "text": text, "final": true});
        send_json(&mut ws, &turn).await?;
    }
    if let Some(scope) = &script.consent {
        let c = serde_json::json!({"type": "consent", "scope": scope, "granted": true, "source": "dtmf"});
        send_json(&mut ws, &c).await?;
    }
    Ok(ws)
}

/// Set up call `index` and start its task; its frames are filed in `table`.
pub async fn open(
    script: Arc<Script>,
    index: usize,
    table: Arc<CallTable>,
) -> Result<Call, OpenError> {
    let ws = timeout(SETUP_TIMEOUT, setup(&script, index))
        .await
        .map_err(|_| OpenError::Timeout)??;
    let (commands, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(ws, rx, script, table));
    Ok(Call { commands, task })
}

/// What the reading side made of one frame.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Nothing,
    /// An `error` frame refused one of this session's tool calls.
    Refused,
    /// `session.ended`, with its `invocations`.
    Ended(Option<u64>),
}

fn on_text(text: &str, at: u64, table: &CallTable) -> Seen {
    let frame: Frame<'_> = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(_) => {
            let mut notes = table.notes();
            notes.unreadable += 1;
            if notes.first_unreadable.is_none() {
                notes.first_unreadable = Some(text.chars().take(300).collect());
            }
            return Seen::Nothing;
        }
    };
    match frame.ty {
        "tool.result" => {
            let status = Status::from_result(frame.status.unwrap_or(""));
            match frame.id.and_then(parse_call_id) {
                Some(n) => {
                    if table.mark_result(n, at, status) && status != Status::Succeeded {
                        let mut notes = table.notes();
                        if !notes.examples.contains_key(status.name()) {
                            let output = frame.output.map_or("", RawValue::get);
                            let output = serde_json::from_str::<String>(output)
                                .unwrap_or_else(|_| output.to_owned());
                            notes.examples.insert(status.name(), output);
                        }
                    }
                }
                None => table.notes().unknown_ids += 1,
            }
        }
        "tool.filler" => match frame.id.and_then(parse_call_id) {
            Some(n) => {
                let elapsed = frame.elapsed_ms.unwrap_or(0).min(u32::MAX as u64) as u32;
                table.mark_filler(n, at, elapsed);
            }
            None => table.notes().unknown_ids += 1,
        },
        "error" => {
            let code = frame.code.unwrap_or_else(|| "?".into());
            let refused = frame
                .reference
                .as_deref()
                .and_then(parse_call_id)
                .is_some_and(|n| table.mark_refused(n, at));
            let mut notes = table.notes();
            let entry = notes
                .errors
                .entry(code)
                .or_insert_with(|| (0, frame.message.unwrap_or_default()));
            entry.0 += 1;
            if refused {
                return Seen::Refused;
            }
        }
        "session.ended" => return Seen::Ended(frame.invocations),
        _ => {}
    }
    Seen::Nothing
}

async fn run(
    mut ws: Ws,
    mut commands: mpsc::UnboundedReceiver<Command>,
    script: Arc<Script>,
    table: Arc<CallTable>,
) -> Ending {
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut end_by: Option<Instant> = None;
    let mut accepting = true;
    let (mut sent, mut refused) = (0u64, 0u64);
    loop {
        tokio::select! {
            // Writes first: a call that is due goes out before frames waiting to be read.
            biased;
            cmd = commands.recv(), if accepting => match cmd {
                Some(Command::Call(n)) => {
                    table.mark_sent(n, now_ns());
                    sent += 1;
                    let frame = script.call.render(n);
                    if let Err(e) = ws.send(Message::text(frame)).await {
                        return Ending::failed(format!("sending a tool call failed: {e}"));
                    }
                }
                Some(Command::End) | None => {
                    accepting = false;
                    let end = r#"{"type":"session.end","reason":"hangup"}"#;
                    if let Err(e) = ws.send(Message::text(end)).await {
                        return Ending::failed(format!("sending session.end failed: {e}"));
                    }
                    end_by = Some(Instant::now() + END_TIMEOUT);
                }
            },
            msg = ws.next() => {
                let at = now_ns();
                match msg {
                    Some(Ok(Message::Text(t))) => match on_text(t.as_str(), at, &table) {
                        Seen::Nothing => {}
                        Seen::Refused => refused += 1,
                        Seen::Ended(invocations) => {
                            let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                            return Ending {
                                ended: true,
                                error: None,
                                accepted: sent.saturating_sub(refused),
                                invocations,
                            };
                        }
                    },
                    Some(Ok(Message::Close(c))) => {
                        let why = c.map(|c| format!("{} {}", u16::from(c.code), c.reason)).unwrap_or_default();
                        return Ending::failed(format!("the sidecar closed the socket before session.ended ({why})"));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ending::failed(format!("the socket failed: {e}")),
                    None => return Ending::failed("the socket closed before session.ended".into()),
                }
            }
            _ = sleep_until(end_by.unwrap_or(far)), if end_by.is_some() => {
                return Ending::failed(format!("no session.ended within {} s", END_TIMEOUT.as_secs()));
            }
        }
    }
}

/// The `tool.call` frame for `function` with `arguments` (a JSON object whose string values may
/// hold `{seq}` and `{token}`), in the OpenAI shape: arguments as a string.
pub fn call_template(function: &str, arguments: &Value) -> Template {
    let frame = serde_json::json!({
        "type": "tool.call",
        "id": "tc{seq}",
        "name": function,
        "arguments": arguments.to_string(),
    });
    Template::new(&frame.to_string(), crate::calls::Phase::Sidecar.prefix())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::{Phase, find_token};
    use crate::schedule::{Arrivals, Schedule};

    #[test]
    fn templates_fill_their_holes() {
        let t = Template::new("a{seq}b{token}c{seq}", "ltc-");
        assert_eq!(t.render(42), "a42bltc-42c42");
        assert!(t.has_token());
        let plain = Template::new("no holes", "ltc-");
        assert_eq!(plain.render(1), "no holes");
        assert!(!plain.has_token());
        assert_eq!(Template::new("{token}", "ltb-").render(0), "ltb-0");
    }

    #[test]
    fn tool_calls_carry_the_id_and_token() {
        let args = serde_json::json!({"reason": "load {token}"});
        let t = call_template("request_callback", &args);
        let frame: Value = serde_json::from_str(&t.render(7)).unwrap();
        assert_eq!(frame["type"], "tool.call");
        assert_eq!(frame["id"], "tc7");
        assert_eq!(frame["name"], "request_callback");
        let inner: Value = serde_json::from_str(frame["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(inner["reason"], "load ltc-7");
        assert_eq!(
            find_token(inner["reason"].as_str().unwrap().as_bytes()),
            Some((Phase::Sidecar, 7))
        );
    }

    fn table() -> CallTable {
        let s = Schedule::build(10.0, Duration::from_secs(1), Arrivals::Fixed, 0).unwrap();
        let t = CallTable::new(Phase::Sidecar, Arc::new(s));
        t.start_clock(0);
        t
    }

    #[test]
    fn frames_are_filed() {
        let t = table();
        on_text(
            r#"{"type":"tool.filler","id":"tc1","text":"One moment.","elapsed_ms":501,"seq":1}"#,
            10,
            &t,
        );
        on_text(
            r#"{"type":"tool.result","id":"tc1","status":"succeeded","invocation_id":"inv_1","output":"{\"ok\":true}","elapsed_ms":742}"#,
            20,
            &t,
        );
        on_text(
            r#"{"type":"tool.result","id":"tc2","status":"rejected","invocation_id":"inv_2","output":"{\"ok\":false,\"error\":\"consent_required\"}","elapsed_ms":1}"#,
            30,
            &t,
        );
        assert_eq!(
            on_text(
                r#"{"type":"error","code":"overloaded","message":"16 tool calls are already running","ref":"tc3"}"#,
                40,
                &t,
            ),
            Seen::Refused
        );
        on_text(
            r#"{"type":"tool.result","id":"call_9","status":"succeeded"}"#,
            50,
            &t,
        );
        on_text("not json", 60, &t);
        assert_eq!(
            on_text(
                r#"{"type":"session.ended","call_id":"x","invocations":2,"deferred":0}"#,
                70,
                &t
            ),
            Seen::Ended(Some(2))
        );

        let v1 = t.view(1);
        assert_eq!((v1.filler, v1.filler_elapsed_ms, v1.result), (10, 501, 20));
        assert_eq!(v1.status, Status::Succeeded);
        assert_eq!(t.view(2).status, Status::Rejected);
        assert_eq!(t.view(3).status, Status::Refused);
        let notes = t.notes();
        assert_eq!(
            notes.examples.get("rejected").map(String::as_str),
            Some(r#"{"ok":false,"error":"consent_required"}"#)
        );
        assert_eq!(notes.errors.get("overloaded").map(|e| e.0), Some(1));
        assert_eq!(notes.unknown_ids, 1);
        assert_eq!(notes.unreadable, 1);
    }
}
