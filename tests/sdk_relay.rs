//! The realtime relays (SPEC §13.2) driven by the official client SDKs, not hand-made frames: a
//! Python app on the `openai` SDK (`client.realtime.connect`) and one on `deepgram-sdk`
//! (`client.agent.v1.connect`), each pointed at a ticket URL and changed in nothing else
//! (`tests/sdk/relay_*.py`), talk through toolgate to a fake upstream played by the test.
//!
//! The SDKs are pinned in `tests/sdk/requirements.txt`. The interpreter is `TOOLGATE_SDK_PYTHON`
//! (default `python3`); without the SDKs these tests say so and pass, unless
//! `TOOLGATE_REQUIRE_SDKS=1` makes that a failure.

// tungstenite's handshake callbacks return an HTTP response as their error.

mod common;

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The model provider's keys the apps use; toolgate must pass them upstream unchanged.
const OPENAI_KEY: &str = "sk-test-sdk-relay-3b7e21";
const DEEPGRAM_KEY: &str = "dg-test-sdk-relay-a41f0c";

/// How long a Python app may take for anything: starting and importing its SDK is slow on a busy
/// machine.
const SDK_WAIT: Duration = Duration::from_secs(30);

/// The interpreter to run the apps with, if it can import `modules`; otherwise the test is
/// skipped (`None`), or fails under `TOOLGATE_REQUIRE_SDKS=1`.
fn sdk_python(sdk: &str, modules: &str) -> Option<String> {
    let python = std::env::var("TOOLGATE_SDK_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let why = match std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
    {
        Ok(out) if out.status.success() => return Some(python),
        Ok(out) => String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("the import failed")
            .to_owned(),
        Err(e) => e.to_string(),
    };
    let help = format!(
        "the {sdk} SDK cannot be imported with {python} ({why}); install it with \
         `{python} -m pip install -r tests/sdk/requirements.txt`, or point TOOLGATE_SDK_PYTHON \
         at an interpreter that has it"
    );
    assert!(
        std::env::var("TOOLGATE_REQUIRE_SDKS").as_deref() != Ok("1"),
        "TOOLGATE_REQUIRE_SDKS=1: {help}"
    );
    eprintln!("skipped: {help}");
    None
}

/// A running SDK app: `tests/sdk/<script>` with its output collected as it comes.
struct App {
    script: &'static str,
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// What an app printed and how it ended.
struct Ran {
    status: ExitStatus,
    /// Each message the app received: its type and a few fields (`"type"` lines).
    received: Vec<Value>,
    /// What the app sent (`"sent"` lines).
    sent: Vec<Value>,
}

impl App {
    fn spawn(python: &str, script: &'static str, args: &[&str]) -> App {
        let mut child = tokio::process::Command::new(python)
            .arg(format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR")))
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        App {
            script,
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Wait for the app to end on its own.
    async fn finish(&mut self) -> Ran {
        let status = tokio::time::timeout(SDK_WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not end", self.script))
            .unwrap();
        for r in self.readers.drain(..) {
            let _ = r.await;
        }
        let mut received = Vec::new();
        let mut sent = Vec::new();
        for line in self.stdout.lock().unwrap().lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {line}", self.script));
            if v.get("sent").is_some() {
                sent.push(v);
            } else {
                received.push(v);
            }
        }
        Ran {
            status,
            received,
            sent,
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} stdout ---\n{}--- {} stderr ---\n{}",
                self.script,
                self.stdout.lock().unwrap(),
                self.script,
                self.stderr.lock().unwrap()
            );
        }
    }
}

fn collect(
    from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut s = into.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    })
}

/// One connection the fake upstream accepted: the request it saw, its socket, and the frames it
/// sent that the app must see, in order.
struct UpstreamConn {
    path: String,
    headers: Vec<(String, String)>,
    ws: WebSocketStream<TcpStream>,
    shown: Vec<Value>,
}

impl UpstreamConn {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Send a frame the app must see, as it is.
    async fn show(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
        self.shown.push(v);
    }

    /// Send a frame toolgate must keep from the app.
    async fn hide(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next text frame that came upstream, as JSON.
    async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(SDK_WAIT, self.ws.next())
                .await
                .expect("a frame upstream in time")
                .expect("the upstream socket is open")
                .unwrap();
            match m {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected text upstream, got {other:?}"),
            }
        }
    }

    /// The close frame that ends the call (frames before it are ignored).
    async fn closed(&mut self) -> CloseCode {
        loop {
            match tokio::time::timeout(SDK_WAIT, self.ws.next())
                .await
                .expect("the app closes in time")
            {
                Some(Ok(Message::Close(Some(f)))) => return f.code,
                Some(Ok(Message::Close(None))) => return CloseCode::Status,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame upstream, got {other:?}"),
            }
        }
    }
}

/// A fake upstream: accepts WebSockets and records what each request looked like.
struct FakeUpstream {
    addr: String,
    conns: mpsc::UnboundedReceiver<UpstreamConn>,
}

impl FakeUpstream {
    async fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let seen = Arc::new(Mutex::new((String::new(), Vec::new())));
                    let s = seen.clone();
                    let callback = move |req: &Request, resp: Response| {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect::<Vec<_>>();
                        *s.lock().unwrap() = (req.uri().to_string(), headers);
                        Ok(resp)
                    };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                        let (path, headers) = seen.lock().unwrap().clone();
                        let _ = tx.send(UpstreamConn {
                            path,
                            headers,
                            ws,
                            shown: Vec::new(),
                        });
                    }
                });
            }
        });
        FakeUpstream { addr, conns }
    }

    async fn accept(&mut self) -> UpstreamConn {
        tokio::time::timeout(SDK_WAIT, self.conns.recv())
            .await
            .expect("the app connects and toolgate connects upstream")
            .unwrap()
    }
}

async fn env_with(upstream: &FakeUpstream) -> Env {
    let addr = upstream.addr.clone();
    Env::start_with(move |t| {
        t.replacen(
            "[workflow]",
            &format!(
                "[relay]\nopenai_upstream = \"ws://{addr}/v1/realtime\"\ndeepgram_upstream = \"ws://{addr}/v1/agent/converse\"\n\n[workflow]"
            ),
            1,
        )
    })
    .await
}

/// `POST /v1/relay/tickets` for `support-bot` and the standard caller.
async fn new_ticket(env: &Env, call_id: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/relay/tickets", env.server.ws_addr))
        .bearer_auth(ACME_TOKEN)
        .header("content-type", "application/json")
        .body(
            json!({"agent": "support-bot", "call_id": call_id,
                   "caller": {"number": CALLER, "name": "Ana"}, "variables": order_vars()})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

/// The call's history once `ready` holds for it.
async fn call_when(env: &Env, call_id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = env
            .admin("GET", &format!("/v1/calls/{call_id}"), Some(ADMIN_TOKEN))
            .await;
        if code == 200 && ready(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "call {call_id} never got there: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// One model response that calls a function, as the GA Realtime API streams it (every server
/// event carries an `event_id`; the SDK's types require one).
fn function_call_turn(
    evt: &str,
    response: &str,
    item: &str,
    call_id: &str,
    name: &str,
    args: Value,
) -> Vec<Value> {
    let added = json!({"id": item, "object": "realtime.item", "type": "function_call",
        "status": "in_progress", "name": name, "call_id": call_id, "arguments": ""});
    let mut done = added.clone();
    done["status"] = json!("completed");
    done["arguments"] = json!(args.to_string());
    let e = |n: u32| format!("{evt}_{n}");
    vec![
        json!({"type": "response.created", "event_id": e(1), "response": {"id": response,
            "object": "realtime.response", "status": "in_progress", "output": [], "conversation_id": "conv_1"}}),
        json!({"type": "conversation.item.added", "event_id": e(2), "item": added}),
        json!({"type": "response.output_item.added", "event_id": e(3), "response_id": response,
            "output_index": 0, "item": added}),
        json!({"type": "response.function_call_arguments.delta", "event_id": e(4), "response_id": response,
            "item_id": item, "output_index": 0, "call_id": call_id, "delta": args.to_string()}),
        json!({"type": "response.function_call_arguments.done", "event_id": e(5), "response_id": response,
            "item_id": item, "output_index": 0, "call_id": call_id, "name": name, "arguments": args.to_string()}),
        json!({"type": "response.output_item.done", "event_id": e(6), "response_id": response,
            "output_index": 0, "item": done}),
        json!({"type": "conversation.item.done", "event_id": e(7), "item": done}),
        json!({"type": "response.done", "event_id": e(8), "response": {"id": response,
            "object": "realtime.response", "status": "completed", "output": [done], "conversation_id": "conv_1"}}),
    ]
}

fn agent_said(evt: &str, response: &str, text: &str) -> Value {
    json!({"type": "response.output_audio_transcript.done", "event_id": evt, "response_id": response,
        "item_id": format!("item_{evt}"), "output_index": 0, "content_index": 0, "transcript": text})
}

fn caller_said(evt: &str, text: &str) -> Value {
    json!({"type": "conversation.item.input_audio_transcription.completed", "event_id": evt,
        "item_id": format!("item_{evt}"), "content_index": 0, "transcript": text,
        "usage": {"type": "duration", "seconds": 1.4}})
}

/// The next frame toolgate sends upstream that is not a filler; a filler's out-of-band response
/// is played (created and done, both shown to the app) so toolgate may continue.
async fn past_openai_fillers(conn: &mut UpstreamConn) -> Value {
    let mut n = 0;
    loop {
        let v = conn.recv().await;
        if v["type"] != "response.create" || v["response"]["conversation"] != "none" {
            return v;
        }
        n += 1;
        let id = format!("resp_filler_{n}");
        conn.show(json!({"type": "response.created", "event_id": format!("evt_filler_{n}_1"),
            "response": {"id": id, "object": "realtime.response", "status": "in_progress", "output": [], "conversation_id": null}}))
            .await;
        conn.show(json!({"type": "response.done", "event_id": format!("evt_filler_{n}_2"),
            "response": {"id": id, "object": "realtime.response", "status": "completed", "output": [], "conversation_id": null}}))
            .await;
    }
}

/// Every line the app printed parsed as its SDK's own type, strictly.
fn all_valid(ran: &Ran) {
    for line in &ran.received {
        assert_eq!(
            line["valid"], true,
            "the SDK's type does not accept what it received: {line}"
        );
    }
}

/// No line the app printed mentions `needle`, except in the session's tool list.
fn never_mentioned(ran: &Ran, needles: &[&str]) {
    for line in &ran.received {
        let mut shown = line.clone();
        if let Some(o) = shown.as_object_mut() {
            o.remove("tools");
        }
        let text = shown.to_string();
        for needle in needles {
            assert!(
                !text.contains(needle),
                "the app saw {needle}, which toolgate owns: {line}"
            );
        }
    }
}

#[tokio::test]
async fn the_openai_sdk_talks_through_the_relay_and_never_sees_the_owned_call() {
    let Some(python) = sdk_python("openai", "openai, websockets, pydantic") else {
        return;
    };
    let mut up = FakeUpstream::start().await;
    let env = env_with(&up).await;
    let ticket = new_ticket(&env, "c-sdk-openai").await;
    let mut app = App::spawn(
        &python,
        "relay_openai.py",
        &[ticket["openai_url"].as_str().unwrap(), OPENAI_KEY],
    );

    // The SDK appended `/realtime?model=gpt-realtime` to the ticket URL: toolgate took the
    // ticket from the path and passed the query upstream, with the SDK's key as it came.
    let mut conn = up.accept().await;
    assert_eq!(conn.path, "/v1/realtime?model=gpt-realtime");
    assert_eq!(
        conn.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert!(conn.header("openai-beta").is_none(), "the GA protocol");
    assert!(
        conn.header("user-agent")
            .is_some_and(|u| u.starts_with("AsyncOpenAI/Python")),
        "{:?}",
        conn.headers
    );
    conn.show(json!({"type": "session.created", "event_id": "evt_created",
        "session": {"type": "realtime", "object": "realtime.session", "id": "sess_1", "model": "gpt-realtime"}}))
        .await;

    // The app configures the session as soon as it is connected. When session.created got to
    // toolgate first, toolgate offered the agent's functions itself: that update is its own.
    let update = loop {
        let v = conn.recv().await;
        assert_eq!(v["type"], "session.update", "{v}");
        if !v["event_id"]
            .as_str()
            .is_some_and(|e| e.starts_with("toolgate_"))
        {
            break v;
        }
    };
    let tools = update["session"]["tools"].as_array().unwrap();
    assert_eq!(
        tools[0],
        json!({"type": "function", "name": "lookup_order",
            "description": "Look up the status of one of the caller's orders.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}),
        "the app's own function is kept as it sent it"
    );
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(
        names.contains(&"send_email_summary"),
        "the agent's functions are merged in: {names:?}"
    );
    assert_eq!(update["session"]["type"], "realtime");
    assert_eq!(
        update["session"]["instructions"],
        "You are Acme's order line. Be brief."
    );
    assert_eq!(update["session"]["output_modalities"], json!(["audio"]));
    // The real API echoes the whole session, merged tool list included.
    conn.show(json!({"type": "session.updated", "event_id": "evt_updated",
        "session": {"type": "realtime", "object": "realtime.session", "id": "sess_1", "tools": tools}}))
        .await;

    // The caller agrees to the email; the model calls the owned function.
    conn.show(agent_said(
        "evt_ask",
        "resp_0",
        "Would you like a summary of this call by email?",
    ))
    .await;
    conn.show(caller_said("evt_yes", "Yes please, email me the summary."))
        .await;
    for ev in function_call_turn(
        "evt_r1",
        "resp_1",
        "item_1",
        "call_1",
        "send_email_summary",
        json!({"summary": "Order A-1042 ships Friday."}),
    ) {
        match ev["type"].as_str().unwrap() {
            // The app hears the response start and end, with the call taken out of its output.
            "response.created" => conn.show(ev).await,
            "response.done" => {
                let mut shown = ev.clone();
                shown["response"]["output"] = json!([]);
                conn.hide(ev).await;
                conn.shown.push(shown);
            }
            _ => conn.hide(ev).await,
        }
    }
    let out = past_openai_fillers(&mut conn).await;
    assert_eq!(out["type"], "conversation.item.create", "{out}");
    assert_eq!(out["item"]["type"], "function_call_output");
    assert_eq!(out["item"]["call_id"], "call_1");
    let output: Value = serde_json::from_str(out["item"]["output"].as_str().unwrap()).unwrap();
    assert_eq!(output["ok"], true, "{output}");
    let next = conn.recv().await;
    assert_eq!(next["type"], "response.create", "{next}");
    let sent = env.resend.wait_for_requests(1, WAIT).await;
    assert_eq!(sent[0].json()["to"], "ana@example.com");
    // The upstream echoes toolgate's output item: toolgate's, not shown.
    let echo = json!({"id": "item_2", "object": "realtime.item", "type": "function_call_output",
        "status": "completed", "call_id": "call_1", "output": out["item"]["output"]});
    conn.hide(json!({"type": "conversation.item.added", "event_id": "evt_echo_1", "previous_item_id": "item_1", "item": echo}))
        .await;
    conn.hide(json!({"type": "conversation.item.done", "event_id": "evt_echo_2", "previous_item_id": "item_1", "item": echo}))
        .await;

    // The continued response calls the app's own function: every event of it reaches the app,
    // which answers it like an app does; its answer goes upstream untouched.
    for ev in function_call_turn(
        "evt_r2",
        "resp_2",
        "item_3",
        "call_2",
        "lookup_order",
        json!({"order_id": "A-1042"}),
    ) {
        conn.show(ev).await;
    }
    let answer = conn.recv().await;
    let lookup = r#"{"order_id": "A-1042", "status": "shipped", "eta": "Friday"}"#;
    assert_eq!(
        answer,
        json!({"type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_2", "output": lookup}}),
        "the app's answer, as its SDK sent it"
    );
    assert_eq!(conn.recv().await, json!({"type": "response.create"}));
    conn.show(json!({"type": "conversation.item.added", "event_id": "evt_out2", "previous_item_id": "item_3",
        "item": {"id": "item_4", "object": "realtime.item", "type": "function_call_output",
            "status": "completed", "call_id": "call_2", "output": lookup}}))
        .await;
    conn.show(json!({"type": "response.created", "event_id": "evt_r3_1", "response": {"id": "resp_3",
        "object": "realtime.response", "status": "in_progress", "output": [], "conversation_id": "conv_1"}}))
        .await;
    conn.show(agent_said(
        "evt_r3_2",
        "resp_3",
        "Order A-1042 has shipped and arrives Friday. The summary is in your inbox.",
    ))
    .await;
    // The app stops after this one and closes: the close reaches the upstream.
    conn.show(json!({"type": "response.done", "event_id": "evt_end", "response": {"id": "resp_3",
        "object": "realtime.response", "status": "completed", "output": [], "conversation_id": "conv_1"}}))
        .await;
    assert_eq!(conn.closed().await, CloseCode::Normal);

    let ran = app.finish().await;
    assert!(ran.status.success(), "the app failed: {}", ran.status);
    // Exactly the events it should see, in order, each as its SDK types it.
    let seen: Vec<&Value> = ran.received.iter().map(|l| &l["event_id"]).collect();
    let expected: Vec<&Value> = conn.shown.iter().map(|v| &v["event_id"]).collect();
    assert_eq!(seen, expected);
    all_valid(&ran);
    let done_1 = ran
        .received
        .iter()
        .find(|l| l["event_id"] == "evt_r1_8")
        .unwrap();
    assert_eq!(done_1["response"]["output"], json!([]), "{done_1}");
    never_mentioned(&ran, &["send_email_summary", "call_1", "item_1"]);
    let did: Vec<&str> = ran
        .sent
        .iter()
        .map(|s| s["sent"].as_str().unwrap())
        .collect();
    assert_eq!(
        did,
        [
            "session.update",
            "conversation.item.create",
            "response.create"
        ]
    );

    // toolgate ran one call, the owned one; the app's own function is not its business.
    let call = call_when(&env, "c-sdk-openai", |c| c["ended_at"].is_i64()).await;
    assert_eq!(call["channel"], "openai_realtime");
    let invocations = call["invocations"].as_array().unwrap();
    assert_eq!(invocations.len(), 1, "{call}");
    assert_eq!(invocations[0]["function"], "send_email_summary");
    assert_eq!(invocations[0]["status"], "succeeded");
    assert!(!call.to_string().contains(OPENAI_KEY));
}

/// What identifies a Deepgram message in the app's output: its type, its text, its call ids.
fn dg_key(v: &Value) -> String {
    let ids: Vec<&str> = v["functions"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["id"].as_str()).collect())
        .unwrap_or_default();
    format!(
        "{} {} {}",
        v["type"].as_str().unwrap_or("?"),
        v["content"].as_str().unwrap_or(""),
        ids.join(",")
    )
}

#[tokio::test]
async fn the_deepgram_sdk_talks_through_the_relay_and_never_sees_the_owned_call() {
    let Some(python) = sdk_python("deepgram", "deepgram, websockets, pydantic") else {
        return;
    };
    let mut up = FakeUpstream::start().await;
    let env = env_with(&up).await;
    let ticket = new_ticket(&env, "c-sdk-deepgram").await;
    let mut app = App::spawn(
        &python,
        "relay_deepgram.py",
        &[ticket["deepgram_url"].as_str().unwrap(), DEEPGRAM_KEY],
    );

    // The SDK appended `/v1/agent/converse` to the ticket URL and sent its key as a Token.
    let mut conn = up.accept().await;
    assert_eq!(conn.path, "/v1/agent/converse");
    assert_eq!(
        conn.header("authorization"),
        Some(format!("Token {DEEPGRAM_KEY}").as_str())
    );
    assert!(
        conn.header("x-deepgram-session-id")
            .is_some_and(|s| !s.is_empty()),
        "{:?}",
        conn.headers
    );
    assert!(
        conn.header("user-agent")
            .is_some_and(|u| u.starts_with("deepgram-sdk/")),
        "{:?}",
        conn.headers
    );
    conn.show(json!({"type": "Welcome", "request_id": "req_sdk_1"}))
        .await;

    // The app's Settings, with the agent's functions merged in: client side (no endpoint) and
    // held until the caller's turn ends.
    let settings = conn.recv().await;
    assert_eq!(settings["type"], "Settings", "{settings}");
    let functions = settings["agent"]["think"]["functions"].as_array().unwrap();
    assert_eq!(
        functions[0],
        json!({"name": "lookup_order", "description": "Look up the status of one of the caller's orders.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}),
        "the app's own function is kept as it sent it"
    );
    let owned = functions
        .iter()
        .find(|f| f["name"] == "send_email_summary")
        .unwrap_or_else(|| panic!("the agent's functions are merged in: {settings}"));
    assert_eq!(owned["defer_until_eot"], true);
    assert!(owned.get("endpoint").is_none(), "client side: {owned}");
    assert_eq!(
        settings["agent"]["think"]["prompt"],
        "You are Acme's order line. Be brief."
    );
    assert_eq!(settings["agent"]["greeting"], "Thanks for calling Acme.");
    conn.show(json!({"type": "SettingsApplied"})).await;

    // The caller agrees to the email; Deepgram asks the client side to run the owned function.
    conn.show(json!({"type": "ConversationText", "role": "assistant",
        "content": "Would you like a summary of this call by email?"}))
        .await;
    conn.show(json!({"type": "ConversationText", "role": "user",
        "content": "Yes please, email me the summary."}))
        .await;
    conn.hide(json!({"type": "FunctionCallRequest", "functions": [{"id": "fc_1", "name": "send_email_summary",
        "arguments": "{\"summary\":\"Order A-1042 ships Friday.\"}", "client_side": true}]}))
        .await;
    // A slow provider may get fillers injected first (not shown to the app either).
    let answer = loop {
        let v = conn.recv().await;
        if v["type"] != "InjectAgentMessage" {
            break v;
        }
    };
    assert_eq!(answer["type"], "FunctionCallResponse", "{answer}");
    assert_eq!(answer["id"], "fc_1");
    assert_eq!(answer["name"], "send_email_summary");
    let content: Value = serde_json::from_str(answer["content"].as_str().unwrap()).unwrap();
    assert_eq!(content["ok"], true, "{content}");
    let sent = env.resend.wait_for_requests(1, WAIT).await;
    assert_eq!(sent[0].json()["to"], "ana@example.com");
    conn.show(json!({"type": "ConversationText", "role": "assistant",
        "content": "Done, the summary is in your inbox."}))
        .await;

    // A call of the app's own function reaches the app, which answers it through its SDK; the
    // answer goes upstream untouched.
    conn.show(
        json!({"type": "FunctionCallRequest", "functions": [{"id": "fc_2", "name": "lookup_order",
        "arguments": "{\"order_id\":\"A-1042\"}", "client_side": true}]}),
    )
    .await;
    let answer = conn.recv().await;
    assert_eq!(
        answer,
        json!({"type": "FunctionCallResponse", "id": "fc_2", "name": "lookup_order",
            "content": r#"{"order_id": "A-1042", "status": "shipped", "eta": "Friday"}"#}),
        "the app's answer, as its SDK sent it"
    );
    conn.show(json!({"type": "ConversationText", "role": "assistant",
        "content": "Order A-1042 has shipped and arrives Friday."}))
        .await;
    // The app stops after this one and closes: the close reaches the upstream.
    conn.show(json!({"type": "AgentAudioDone"})).await;
    assert_eq!(conn.closed().await, CloseCode::Normal);

    let ran = app.finish().await;
    assert!(ran.status.success(), "the app failed: {}", ran.status);
    let seen: Vec<String> = ran.received.iter().map(dg_key).collect();
    let expected: Vec<String> = conn.shown.iter().map(dg_key).collect();
    assert_eq!(seen, expected);
    all_valid(&ran);
    never_mentioned(&ran, &["send_email_summary", "fc_1"]);
    let did: Vec<&str> = ran
        .sent
        .iter()
        .map(|s| s["sent"].as_str().unwrap())
        .collect();
    assert_eq!(did, ["Settings", "FunctionCallResponse"]);

    let call = call_when(&env, "c-sdk-deepgram", |c| c["ended_at"].is_i64()).await;
    assert_eq!(call["channel"], "deepgram");
    let invocations = call["invocations"].as_array().unwrap();
    assert_eq!(invocations.len(), 1, "{call}");
    assert_eq!(invocations[0]["function"], "send_email_summary");
    assert_eq!(invocations[0]["status"], "succeeded");
    assert!(!call.to_string().contains(DEEPGRAM_KEY));
}
