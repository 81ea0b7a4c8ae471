//! The realtime relays (SPEC §13.2) end to end: a real WebSocket client through a ticket URL,
//! toolgate, and a fake upstream that speaks the published OpenAI Realtime and Deepgram Voice
//! Agent event shapes (a real WebSocket server in the test), with the loopback provider mocks
//! behind the owned functions.

// tungstenite's handshake callbacks return an HTTP response as their error.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use toolgate::tooling::mock::Reply;

/// The model provider's key, which must never be stored, logged or recorded by toolgate.
const OPENAI_KEY: &str = "sk-test-relay-key-9d81f0";
const DEEPGRAM_KEY: &str = "dg-test-relay-key-5c2e77";

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One connection the fake upstream accepted: the request it saw, and its socket.
struct UpstreamConn {
    path: String,
    headers: Vec<(String, String)>,
    ws: WebSocketStream<TcpStream>,
}

impl UpstreamConn {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next text frame toolgate sent upstream, as JSON.
    async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame from toolgate in time")
                .unwrap()
                .unwrap();
            match m {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// Nothing arrives within `d`.
    async fn silent(&mut self, d: Duration) {
        if let Ok(Some(Ok(m))) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("expected nothing upstream, got {m:?}");
        }
    }
}

/// A fake upstream: accepts WebSockets, answering the subprotocol the client offered first.
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
                    let callback = move |req: &Request, mut resp: Response| {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect::<Vec<_>>();
                        if let Some(p) = req.headers().get("sec-websocket-protocol") {
                            let first = p.to_str().unwrap().split(',').next().unwrap().trim();
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", first.parse().unwrap());
                        }
                        *s.lock().unwrap() = (req.uri().to_string(), headers);
                        Ok(resp)
                    };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                        let (path, headers) = seen.lock().unwrap().clone();
                        let _ = tx.send(UpstreamConn { path, headers, ws });
                    }
                });
            }
        });
        FakeUpstream { addr, conns }
    }

    async fn accept(&mut self) -> UpstreamConn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("toolgate connects upstream")
            .unwrap()
    }
}

/// Logs of this test process, to look for the key.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Buf {
    let buf = Buf::default();
    let writer = buf.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(toolgate::telemetry::log_filter("trace"))
        .with_writer(move || writer.clone())
        .try_init();
    buf
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

/// `POST /v1/relay/tickets`: (status, body).
async fn ticket(env: &Env, token: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/relay/tickets", env.server.ws_addr))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn new_ticket(env: &Env, call_id: &str) -> Value {
    let (status, body) = ticket(
        env,
        ACME_TOKEN,
        json!({"agent": "support-bot", "call_id": call_id,
               "caller": {"number": CALLER, "name": "Ana"}, "variables": order_vars()}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// Connect like an SDK: `url` plus its suffix and query, with the client's own key.
async fn connect(url: &str, auth: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", auth.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

async fn client_recv(c: &mut Client) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, c.next())
            .await
            .expect("a frame for the client in time")
            .unwrap()
            .unwrap();
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

async fn client_json(c: &mut Client) -> Value {
    match client_recv(c).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn owned_call(response: &str, item: &str, call_id: &str, name: &str, args: Value) -> Vec<Value> {
    let added = json!({"id": item, "object": "realtime.item", "type": "function_call",
        "status": "in_progress", "name": name, "call_id": call_id, "arguments": ""});
    let mut done = added.clone();
    done["status"] = json!("completed");
    done["arguments"] = json!(args.to_string());
    vec![
        json!({"type": "response.created", "event_id": "evt_1", "response": {"id": response, "object": "realtime.response", "status": "in_progress", "output": []}}),
        json!({"type": "conversation.item.added", "event_id": "evt_2", "item": added}),
        json!({"type": "response.output_item.added", "event_id": "evt_3", "response_id": response, "output_index": 0, "item": added}),
        json!({"type": "response.function_call_arguments.delta", "event_id": "evt_4", "response_id": response, "item_id": item, "output_index": 0, "call_id": call_id, "delta": args.to_string()}),
        json!({"type": "response.function_call_arguments.done", "event_id": "evt_5", "response_id": response, "item_id": item, "output_index": 0, "call_id": call_id, "name": name, "arguments": args.to_string()}),
        json!({"type": "response.output_item.done", "event_id": "evt_6", "response_id": response, "output_index": 0, "item": done}),
        json!({"type": "conversation.item.done", "event_id": "evt_7", "item": done}),
        json!({"type": "response.done", "event_id": "evt_8", "response": {"id": response, "object": "realtime.response", "status": "completed", "output": [done]}}),
    ]
}

fn caller_said(text: &str) -> Value {
    json!({"type": "conversation.item.input_audio_transcription.completed", "event_id": "evt_t",
        "item_id": "item_u", "content_index": 0, "transcript": text,
        "usage": {"type": "duration", "seconds": 1.2}})
}

fn agent_said(text: &str) -> Value {
    json!({"type": "response.output_audio_transcript.done", "event_id": "evt_a", "response_id": "resp_0",
        "item_id": "item_a", "output_index": 0, "content_index": 0, "transcript": text})
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

/// A relayed OpenAI call, set up to the point where both sides see each other.
async fn openai_call(env: &Env, up: &mut FakeUpstream, call_id: &str) -> (Client, UpstreamConn) {
    let t = new_ticket(env, call_id).await;
    let url = format!(
        "{}/realtime?model=gpt-realtime",
        t["openai_url"].as_str().unwrap()
    );
    let mut client = connect(&url, &format!("Bearer {OPENAI_KEY}"))
        .await
        .unwrap();
    let mut conn = up.accept().await;
    assert_eq!(conn.path, "/v1/realtime?model=gpt-realtime");
    assert_eq!(
        conn.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    conn.send(json!({"type": "session.created", "event_id": "evt_0", "session": {"type": "realtime", "id": "sess_1"}}))
        .await;
    assert_eq!(client_json(&mut client).await["type"], "session.created");
    // Before the client configures the session, toolgate offers the agent's functions.
    let offer = conn.recv().await;
    assert_eq!(offer["type"], "session.update");
    assert_eq!(offer["session"]["type"], "realtime");
    client
        .send(Message::text(
            json!({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief.",
                "tools": [{"type": "function", "name": "lookup_order", "description": "Look up an order",
                           "parameters": {"type": "object", "properties": {}}}]}})
            .to_string(),
        ))
        .await
        .unwrap();
    let update = conn.recv().await;
    assert_eq!(update["type"], "session.update");
    let names: Vec<&str> = update["session"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[0], "lookup_order",
        "the client's own tool stays first"
    );
    assert!(names.contains(&"send_email_summary"), "{names:?}");
    assert!(names.contains(&"send_whatsapp_confirmation"), "{names:?}");
    assert_eq!(update["session"]["instructions"], "Be brief.");
    (client, conn)
}

#[tokio::test]
async fn an_owned_openai_call_runs_through_toolgate_hidden_from_the_client_and_is_answered_upstream()
 {
    let logs = capture_logs();
    let mut up = FakeUpstream::start().await;
    let env = env_with(&up).await;
    let (mut client, mut conn) = openai_call(&env, &mut up, "c-relay-1").await;

    conn.send(agent_said("Would you like a summary by email?"))
        .await;
    conn.send(caller_said("Yes please, email me the summary."))
        .await;
    assert_eq!(
        client_json(&mut client).await["type"],
        "response.output_audio_transcript.done"
    );
    assert_eq!(
        client_json(&mut client).await["type"],
        "conversation.item.input_audio_transcription.completed"
    );
    for ev in owned_call(
        "resp_1",
        "item_1",
        "call_1",
        "send_email_summary",
        json!({"summary": "Order A-1042 ships Friday."}),
    ) {
        conn.send(ev).await;
    }
    // The client hears the response start and end, and nothing of the call in between.
    assert_eq!(client_json(&mut client).await["type"], "response.created");
    let done = client_json(&mut client).await;
    assert_eq!(done["type"], "response.done");
    assert_eq!(done["response"]["output"], json!([]));

    let out = conn.recv().await;
    assert_eq!(out["type"], "conversation.item.create", "{out}");
    assert_eq!(out["item"]["type"], "function_call_output");
    assert_eq!(out["item"]["call_id"], "call_1");
    let output: Value = serde_json::from_str(out["item"]["output"].as_str().unwrap()).unwrap();
    assert_eq!(output["ok"], true, "{output}");
    let next = conn.recv().await;
    assert_eq!(
        next["type"], "response.create",
        "one response once answered"
    );
    assert!(
        next.get("response")
            .is_none_or(|r| r.get("conversation").is_none())
    );
    let sent = env.resend.wait_for_requests(1, WAIT).await;
    assert_eq!(sent[0].json()["to"], "ana@example.com");
    // The output item echoed back upstream is toolgate's too.
    conn.send(json!({"type": "conversation.item.added", "event_id": "evt_9",
        "item": {"id": "item_2", "type": "function_call_output", "call_id": "call_1", "output": "{}"}}))
        .await;
    conn.send(agent_said("Done, it is in your inbox.")).await;
    assert_eq!(
        client_json(&mut client).await["type"],
        "response.output_audio_transcript.done",
        "the echo of toolgate's output item is not shown"
    );

    // Evidence: one record, on the openai_realtime channel, with the transcript around it.
    let call = call_when(&env, "c-relay-1", |c| c["invocations"][0]["final"] == true).await;
    assert_eq!(call["channel"], "openai_realtime");
    let inv = &call["invocations"][0];
    assert_eq!(inv["channel"], "openai_realtime");
    assert_eq!(inv["status"], "succeeded");
    assert_eq!(inv["function"], "send_email_summary");
    assert!(
        inv["transcript_context"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["role"] == "caller"),
        "{inv}"
    );

    // Closing the client closes the upstream with the same code, and ends the session.
    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, conn.ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(f.code, CloseCode::Normal);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    let call = call_when(&env, "c-relay-1", |c| c["ended_at"].is_i64()).await;

    // The key went upstream and nowhere else: not in the logs, not in the evidence.
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!logged.contains(OPENAI_KEY), "the key is in the logs");
    assert!(!call.to_string().contains(OPENAI_KEY));
    let db = std::fs::read(env.dir.path().join("toolgate-evidence.db")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&db).contains(OPENAI_KEY));
}

#[tokio::test]
async fn a_spoken_no_refuses_consent_and_the_model_is_told_why() {
    let mut up = FakeUpstream::start().await;
    let env = env_with(&up).await;
    let (mut client, mut conn) = openai_call(&env, &mut up, "c-relay-no").await;
    conn.send(agent_said("Shall I send the confirmation on WhatsApp?"))
        .await;
    conn.send(caller_said("No, don't send me anything.")).await;
    client_json(&mut client).await;
    client_json(&mut client).await;
    for ev in owned_call(
        "resp_1",
        "item_1",
        "call_1",
        "send_whatsapp_confirmation",
        json!({"order_id": "A-1042"}),
    ) {
        conn.send(ev).await;
    }
    let out = conn.recv().await;
    let output: Value = serde_json::from_str(out["item"]["output"].as_str().unwrap()).unwrap();
    assert_eq!(output["ok"], false);
    assert_eq!(output["error"], "consent_required", "{output}");
    assert_eq!(conn.recv().await["type"], "response.create");
    assert!(env.wati.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_slow_provider_gets_an_out_of_band_filler_while_no_response_is_active() {
    let mut up = FakeUpstream::start().await;
    let env = env_with(&up).await;
    env.resend.push(Reply::slow(900));
    let (mut client, mut conn) = openai_call(&env, &mut up, "c-relay-slow").await;
    conn.send(caller_said("Yes, email me a summary please."))
        .await;
    client_json(&mut client).await;
    for ev in owned_call(
        "resp_1",
        "item_1",
        "call_1",
        "send_email_summary",
        json!({"summary": "x"}),
    ) {
        conn.send(ev).await;
    }
    // filler_after_ms = 200: the response is done by then, so the filler may go.
    let filler = conn.recv().await;
    assert_eq!(filler["type"], "response.create", "{filler}");
    assert_eq!(filler["response"]["conversation"], "none");
    assert!(
        filler["response"]["instructions"]
            .as_str()
            .unwrap()
            .contains("Sending that email now."),
        "{filler}"
    );
    // The filler's response plays; while it is active no repeat (every 300 ms) is asked for.
    conn.send(json!({"type": "response.created", "event_id": "evt_f1", "response": {"id": "resp_f", "status": "in_progress", "conversation_id": null}}))
        .await;
    conn.silent(Duration::from_millis(400)).await;
    conn.send(json!({"type": "response.done", "event_id": "evt_f2", "response": {"id": "resp_f", "status": "completed", "conversation_id": null, "output": []}}))
        .await;
    let out = loop {
        let v = conn.recv().await;
        if v["type"] == "response.create" {
            assert_eq!(
                v["response"]["conversation"], "none",
                "only fillers before the answer"
            );
            conn.send(json!({"type": "response.created", "response": {"id": "resp_g"}}))
                .await;
            conn.send(json!({"type": "response.done", "response": {"id": "resp_g", "status": "completed", "output": []}})).await;
            continue;
        }
        break v;
    };
    assert_eq!(out["type"], "conversation.item.create", "{out}");
    assert_eq!(conn.recv().await["type"], "response.create");
}

#[tokio::test]
async fn a_function_the_client_owns_is_never_answered_by_toolgate() {
    let mut up = FakeUpstream::start().await;
    let env = env_with(&up).await;
    let (mut client, mut conn) = openai_call(&env, &mut up, "c-relay-client-fn").await;
    let events = owned_call(
        "resp_1",
        "item_1",
        "call_1",
        "lookup_order",
        json!({"id": "A-1"}),
    );
    for ev in &events {
        conn.send(ev.clone()).await;
    }
    for ev in &events {
        assert_eq!(
            &client_json(&mut client).await,
            ev,
            "passed through unchanged"
        );
    }
    conn.silent(Duration::from_millis(300)).await;
    let call = call_when(&env, "c-relay-client-fn", |_| true).await;
    assert_eq!(call["invocations"], json!([]));
}

#[tokio::test]
async fn audio_and_large_frames_pass_byte_for_byte_both_ways() {
    let mut up = FakeUpstream::start().await;
    let env = env_with(&up).await;
    let (mut client, mut conn) = openai_call(&env, &mut up, "c-relay-audio").await;
    let audio: Vec<u8> = (0..48_000u32).map(|i| (i * 7 % 251) as u8).collect();
    client.send(Message::binary(audio.clone())).await.unwrap();
    let big = json!({"audio": "A".repeat(400_000), "type": "input_audio_buffer.append", "event_id": "e1"})
        .to_string();
    client.send(Message::text(big.clone())).await.unwrap();
    match tokio::time::timeout(WAIT, conn.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Message::Binary(b) => assert_eq!(&b[..], &audio[..]),
        other => panic!("{other:?}"),
    }
    match tokio::time::timeout(WAIT, conn.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Message::Text(t) => assert_eq!(t.as_str(), big),
        other => panic!("{other:?}"),
    }
    let delta = json!({"type": "response.output_audio.delta", "event_id": "e2", "response_id": "r", "item_id": "i",
        "output_index": 0, "content_index": 0, "delta": "UklGRg==".repeat(1000)})
    .to_string();
    conn.ws.send(Message::text(delta.clone())).await.unwrap();
    conn.ws.send(Message::binary(audio.clone())).await.unwrap();
    match client_recv(&mut client).await {
        Message::Text(t) => assert_eq!(t.as_str(), delta),
        other => panic!("{other:?}"),
    }
    match client_recv(&mut client).await {
        Message::Binary(b) => assert_eq!(&b[..], &audio[..]),
        other => panic!("{other:?}"),
    }
    // The upstream closes: the client is closed with the same code.
    conn.ws
        .close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: "session expired".into(),
        }))
        .await
        .unwrap();
    match client_recv(&mut client).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Policy),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tickets_are_single_use_and_checked_before_any_upgrade() {
    let mut up = FakeUpstream::start().await;
    let env = env_with(&up).await;
    let (status, _) = ticket(
        &env,
        "not-a-token",
        json!({"agent": "support-bot", "call_id": "c"}),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = ticket(
        &env,
        BETA_TOKEN,
        json!({"agent": "support-bot", "call_id": "c"}),
    )
    .await;
    assert_eq!(status, 403, "another org's agent: {body}");
    let (status, body) = ticket(&env, ACME_TOKEN, json!({"agent": "nobody", "call_id": "c"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_agent"))
    );
    let (status, body) = ticket(&env, ACME_TOKEN, json!({"agent": "support-bot"})).await;
    assert_eq!(status, 400, "{body}");

    let t = new_ticket(&env, "c-once").await;
    let url = t["openai_url"].as_str().unwrap().to_owned();
    assert!(t["expires_at"].as_i64().unwrap() > 0);
    let _first = connect(&url, &format!("Bearer {OPENAI_KEY}"))
        .await
        .unwrap();
    let _conn = up.accept().await;
    match connect(&url, &format!("Bearer {OPENAI_KEY}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a used ticket must be refused: {other:?}"),
    }
    let unknown =
        url.rsplit_once('/').unwrap().0.to_owned() + "/tkt_00000000000000000000000000000000";
    match connect(&unknown, &format!("Bearer {OPENAI_KEY}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("an unknown ticket must be refused: {other:?}"),
    }
}

#[tokio::test]
async fn an_upstream_that_refuses_or_is_unreachable_answers_the_client_before_the_upgrade() {
    // Unreachable: a port nobody listens on.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let logs = capture_logs();
    let env = Env::start_with(move |t| {
        t.replacen(
            "[workflow]",
            &format!("[relay]\nopenai_upstream = \"ws://{dead_addr}/v1/realtime\"\n\n[workflow]"),
            1,
        )
    })
    .await;
    let t = new_ticket(&env, "c-dead").await;
    match connect(
        t["openai_url"].as_str().unwrap(),
        &format!("Bearer {OPENAI_KEY}"),
    )
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 502),
        other => panic!("expected 502, got {other:?}"),
    }
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains(&dead_addr.to_string()),
        "the log names the upstream"
    );
    assert!(!logged.contains(OPENAI_KEY));

    // Refusing: the upstream's own status reaches the client.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let callback = |_: &Request, _: Response| {
                Err(tokio_tungstenite::tungstenite::http::Response::builder()
                    .status(401)
                    .body(Some(
                        r#"{"error":{"type":"invalid_request_error","code":"invalid_api_key"}}"#
                            .to_owned(),
                    ))
                    .unwrap())
            };
            let _ = tokio_tungstenite::accept_hdr_async(s, callback).await;
        }
    });
    let env = Env::start_with(move |t| {
        t.replacen(
            "[workflow]",
            &format!("[relay]\nopenai_upstream = \"ws://{addr}/v1/realtime\"\n\n[workflow]"),
            1,
        )
    })
    .await;
    let t = new_ticket(&env, "c-refused").await;
    match connect(t["openai_url"].as_str().unwrap(), "Bearer sk-wrong").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn deepgram_settings_function_calls_fillers_and_cancellations() {
    let mut up = FakeUpstream::start().await;
    let env = env_with(&up).await;
    env.resend.push(Reply::slow(700));
    let t = new_ticket(&env, "c-dg").await;
    let url = format!("{}/v1/agent/converse", t["deepgram_url"].as_str().unwrap());
    let mut client = connect(&url, &format!("Token {DEEPGRAM_KEY}"))
        .await
        .unwrap();
    let mut conn = up.accept().await;
    assert_eq!(conn.path, "/v1/agent/converse");
    assert_eq!(
        conn.header("authorization"),
        Some(format!("Token {DEEPGRAM_KEY}").as_str())
    );
    conn.send(json!({"type": "Welcome", "request_id": "req_1"}))
        .await;
    assert_eq!(client_json(&mut client).await["type"], "Welcome");
    client
        .send(Message::text(
            json!({"type": "Settings", "audio": {"input": {"encoding": "linear16", "sample_rate": 24000}},
                "agent": {"listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
                    "think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini"}, "prompt": "Be brief.",
                        "functions": [{"name": "lookup_order", "description": "Look up", "parameters": {"type": "object", "properties": {}}}]},
                    "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}}}})
            .to_string(),
        ))
        .await
        .unwrap();
    let settings = conn.recv().await;
    let functions = settings["agent"]["think"]["functions"].as_array().unwrap();
    assert_eq!(functions[0]["name"], "lookup_order");
    let owned = functions
        .iter()
        .find(|f| f["name"] == "send_email_summary")
        .unwrap();
    assert_eq!(owned["defer_until_eot"], true);
    assert!(owned.get("endpoint").is_none(), "client side: {owned}");

    conn.send(json!({"type": "ConversationText", "role": "user", "content": "Yes, email me the summary."}))
        .await;
    assert_eq!(client_json(&mut client).await["type"], "ConversationText");
    // Audio passes both ways.
    conn.ws.send(Message::binary(vec![1u8; 960])).await.unwrap();
    assert!(matches!(client_recv(&mut client).await, Message::Binary(b) if b.len() == 960));

    conn.send(json!({"type": "FunctionCallRequest", "functions": [
        {"id": "fc_1", "name": "send_email_summary", "arguments": "{\"summary\":\"Ships Friday.\"}", "client_side": true}]}))
        .await;
    // Slow provider: fillers are injected (one refused: not shown), then the answer.
    let filler = conn.recv().await;
    assert_eq!(filler["type"], "InjectAgentMessage", "{filler}");
    assert_eq!(filler["message"], "Sending that email now.");
    conn.send(json!({"type": "InjectionRefused", "message": "Agent is currently speaking"}))
        .await;
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
    assert_eq!(content["ok"], true);

    // A cancelled call is not sent and gets no response.
    conn.send(json!({"type": "FunctionCallRequest", "functions": [
        {"id": "fc_2", "name": "notify_team", "arguments": "{\"reason\":\"billing\"}", "client_side": true}]}))
        .await;
    conn.send(json!({"type": "FunctionCallCancelled", "functions": [{"id": "fc_2", "name": "notify_team"}]}))
        .await;
    conn.silent(Duration::from_millis(400)).await;
    // Nothing of the owned calls reached the client: the next frame it sees is this one.
    conn.send(json!({"type": "AgentAudioDone"})).await;
    assert_eq!(client_json(&mut client).await["type"], "AgentAudioDone");
    let call = call_when(&env, "c-dg", |c| {
        c["invocations"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    assert_eq!(call["channel"], "deepgram");
    assert_eq!(call["invocations"][1]["status"], "cancelled", "{call}");
}
