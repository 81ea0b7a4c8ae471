//! `toolgate demo`: the sidecar on loopback with a demo config, mock Resend, Wati and webhook
//! servers (real HTTP), and scripted calls whose timelines are printed.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::config::{Config, LoadOptions};
use crate::server::Server;
use crate::tooling::client::{CallClient, Received};
use crate::tooling::mock::{MockProvider, Recorded, Reply};

const SESSION_TOKEN: &str = "demo-session-token";
const RESEND_KEY: &str = "re_demo_5f2b8c";
const WATI_TOKEN: &str = "wati-demo-token";
const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const VAPI_SECRET: &str = "vapi-demo-secret";

/// The demo config; `{resend}`, `{wati}` and `{webhook}` become the mock URLs.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

/// The demo's secrets, handed to the config loader instead of the process environment.
fn demo_env(name: &str) -> Option<String> {
    match name {
        "ACME_SESSION_TOKEN" => Some(SESSION_TOKEN.into()),
        "ACME_RESEND_KEY" => Some(RESEND_KEY.into()),
        "ACME_WATI_TOKEN" => Some(WATI_TOKEN.into()),
        "ACME_WEBHOOK_SECRET" => Some(WEBHOOK_SECRET.into()),
        "ACME_VAPI_SECRET" => Some(VAPI_SECRET.into()),
        _ => None,
    }
}

/// The three mock providers of the demo, and a scratch directory for its job store.
pub struct Mocks {
    /// Holds the demo's SQLite file; removed when the demo ends.
    pub dir: tempfile::TempDir,
    /// Mock Resend.
    pub resend: MockProvider,
    /// Mock Wati.
    pub wati: MockProvider,
    /// Mock webhook receiver.
    pub webhook: MockProvider,
}

impl Mocks {
    /// Start all three on loopback.
    pub async fn start() -> std::io::Result<Mocks> {
        Ok(Mocks {
            dir: tempfile::tempdir()?,
            resend: MockProvider::resend(RESEND_KEY).await?,
            wati: MockProvider::wati(WATI_TOKEN).await?,
            webhook: MockProvider::webhook(WEBHOOK_SECRET).await?,
        })
    }

    /// The demo config pointing at these mocks.
    pub fn config(&self) -> Config {
        self.config_with(|t| t)
    }

    /// The demo config, edited (benches raise limits this way).
    pub fn config_with(&self, edit: impl FnOnce(String) -> String) -> Config {
        let text = edit(DEMO_CONFIG.to_owned())
            .replace(
                "{db}",
                &self.dir.path().join("toolgate.db").display().to_string(),
            )
            .replace("{resend}", &self.resend.url())
            .replace("{wati}", &self.wati.url())
            .replace("{webhook}", &self.webhook.url());
        let mut config = Config::from_toml(&text, &LoadOptions::new(".").with_env(demo_env))
            .expect("the demo config is valid");
        // The scripted calls show the guards and providers, whatever else the machine runs.
        config.server.shed_after_delay = None;
        config
    }
}

/// A printable timeline of one call.
struct Timeline {
    start: Instant,
    out: String,
}

impl Timeline {
    fn new(start: Instant) -> Self {
        Timeline {
            start,
            out: String::new(),
        }
    }

    fn line(&mut self, at: Instant, arrow: &str, what: &str) {
        let ms = at.saturating_duration_since(self.start).as_millis();
        let _ = writeln!(self.out, "  {ms:>6} ms  {arrow} {what}");
    }

    fn note(&mut self, what: &str) {
        let _ = writeln!(self.out, "             {what}");
    }

    fn sent(&mut self, frame: &Value) {
        self.line(Instant::now(), "→", &describe_sent(frame));
    }

    fn received(&mut self, r: &Received) {
        self.line(r.at, "←", &describe_received(&r.frame));
    }
}

fn describe_sent(f: &Value) -> String {
    let s = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("");
    match s("type") {
        "session.start" => format!(
            "session.start  call_id={} agent={}",
            s("call_id"),
            s("agent")
        ),
        "transcript" => format!("transcript     {}: {:?}", s("role"), s("text")),
        "consent" => format!(
            "consent        scope={} granted={}",
            s("scope"),
            f["granted"]
        ),
        "tool.call" => format!(
            "tool.call      {} {} {}",
            s("id"),
            s("name"),
            f["arguments"]
        ),
        "session.end" => "session.end".to_owned(),
        other => other.to_owned(),
    }
}

fn describe_received(f: &Value) -> String {
    let s = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("");
    match s("type") {
        "session.ready" => {
            let names: Vec<&str> = f["tools"]
                .as_array()
                .map(|t| t.iter().filter_map(|x| x["name"].as_str()).collect())
                .unwrap_or_default();
            format!("session.ready  tools: {}", names.join(", "))
        }
        "tool.filler" => format!("tool.filler    #{} {:?}", f["seq"], s("text")),
        "tool.result" => format!(
            "tool.result    {} after {} ms\n                               output {}",
            s("status").to_uppercase(),
            f["elapsed_ms"],
            s("output")
        ),
        "session.ended" => format!(
            "session.ended  invocations={} deferred={}",
            f["invocations"], f["deferred"]
        ),
        "error" => format!("error          {} {}", s("code"), s("message")),
        other => other.to_owned(),
    }
}

fn describe_request(provider: &str, r: &Recorded) -> String {
    let target = match &r.query {
        Some(q) => format!("{}?{q}", r.path),
        None => r.path.clone(),
    };
    let mut extra = Vec::new();
    if r.header("authorization").is_some() {
        extra.push("authorization: Bearer [redacted]".to_owned());
    }
    if let Some(k) = r.header("idempotency-key") {
        extra.push(format!("idempotency-key: {k}"));
    }
    if let Some(v) = r.signature_valid {
        extra.push(format!("signature {}", if v { "valid" } else { "INVALID" }));
    }
    let body = if r.body.is_empty() {
        String::new()
    } else {
        format!("\n               body {}", String::from_utf8_lossy(&r.body))
    };
    format!(
        "{provider} received {} {target}  [{}]{body}",
        r.method,
        extra.join(", ")
    )
}

/// A scripted call.
struct Script {
    title: &'static str,
    call_id: &'static str,
    variables: Value,
    steps: Vec<Value>,
    /// `(mock name, mock)` whose new requests are printed after the call.
    watch: Vec<(&'static str, MockProvider)>,
    expect: Vec<&'static str>,
}

async fn play(
    url: &str,
    script: &Script,
    rt: &crate::runtime::Runtime,
) -> Result<(String, bool), crate::tooling::client::ClientError> {
    let before: Vec<usize> = script
        .watch
        .iter()
        .map(|(_, m)| m.requests().len())
        .collect();
    let mut client = CallClient::connect(url, Some(SESSION_TOKEN)).await?;
    let mut tl = Timeline::new(Instant::now());
    let start = json!({
        "type": "session.start", "call_id": script.call_id, "agent": "support-bot",
        "caller": {"number": "+14155550100", "name": "Ana"},
        "variables": script.variables,
    });
    client.send(&start).await?;
    tl.sent(&start);
    let ready = client.recv(Duration::from_secs(5)).await?;
    tl.received(&ready);
    let mut statuses = Vec::new();
    let mut jobs = Vec::new();
    for step in &script.steps {
        client.send(step).await?;
        tl.sent(step);
        if step["type"] == "tool.call" {
            let id = step["id"].as_str().unwrap_or_default();
            for r in client.until_result(id, Duration::from_secs(15)).await? {
                if r.ty() == "tool.result" {
                    statuses.push(r.frame["status"].as_str().unwrap_or("").to_owned());
                    if let Some(job) = r.frame["data"]["job_id"].as_str() {
                        jobs.push(job.to_owned());
                    }
                }
                tl.received(&r);
            }
        }
    }
    let end = json!({"type": "session.end", "reason": "hangup"});
    client.send(&end).await?;
    tl.sent(&end);
    let ended = client.recv(Duration::from_secs(5)).await?;
    tl.received(&ended);
    for id in &jobs {
        match settle(rt, id).await {
            Some(j) => tl.note(&format!(
                "workflow job {} {} after {} attempt(s){}",
                j.id,
                j.state,
                j.attempts,
                if j.attempts == 1 && j.reason == "budget" {
                    ": the live request finished it, nothing was sent twice"
                } else {
                    ""
                }
            )),
            None => tl.note(&format!("workflow job {id} did not settle")),
        }
    }
    for ((name, mock), n) in script.watch.iter().zip(before) {
        let reqs = mock.requests();
        if reqs.len() == n {
            tl.note(&format!("{name} received nothing"));
        }
        for r in &reqs[n..] {
            tl.note(&describe_request(name, r));
        }
    }
    let ok = statuses == script.expect;
    Ok((tl.out, ok))
}

/// The relayed call: a stand-in for the media server's OpenAI Realtime client gets a ticket,
/// connects through toolgate to the loopback model, and asks for an email; toolgate runs the
/// model's call of `send_email_summary` itself and the client never sees it.
async fn relayed_call(
    server: &Server,
    model: &crate::tooling::mock::realtime::FakeRealtime,
    resend: &MockProvider,
) -> anyhow::Result<(String, bool)> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let mut tl = Timeline::new(Instant::now());
    let sent_before = resend.requests().len();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/relay/tickets", server.ws_addr))
        .bearer_auth(SESSION_TOKEN)
        .header("content-type", "application/json")
        .body(
            json!({"agent": "support-bot", "call_id": "demo-relayed",
                "caller": {"number": "+14155550100", "name": "Ana"},
                "variables": {"email": "ana@example.com", "order_id": "A-1042"}})
            .to_string(),
        )
        .send()
        .await?;
    let ticket: Value = serde_json::from_slice(&resp.bytes().await?)?;
    let base = ticket["openai_url"].as_str().unwrap_or_default().to_owned();
    tl.line(
        Instant::now(),
        "→",
        &format!("POST /v1/relay/tickets  base URL for the client: {base}"),
    );
    let mut req = format!("{base}/realtime?model=gpt-realtime").into_client_request()?;
    req.headers_mut()
        .insert("authorization", "Bearer sk-demo-not-a-real-key".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true).await?;
    let send = |v: Value| Message::text(v.to_string());
    let update = json!({"type": "session.update", "session": {"type": "realtime",
        "tools": [{"type": "function", "name": "lookup_order", "description": "Look up an order",
                   "parameters": {"type": "object", "properties": {}}}]}});
    ws.send(send(update)).await?;
    tl.line(
        Instant::now(),
        "→",
        "client: session.update with its own tool lookup_order",
    );
    let said = "Yes please, email me the summary of my order.";
    ws.send(send(
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": said}]}}),
    ))
    .await?;
    tl.line(
        Instant::now(),
        "→",
        &format!("client: caller says {said:?}"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut finished = false;
    while !finished && Instant::now() < deadline {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        let Ok(Some(Ok(Message::Text(t)))) = next else {
            break;
        };
        let v: Value = serde_json::from_str(&t).unwrap_or_default();
        let ty = v["type"].as_str().unwrap_or("").to_owned();
        let what = match ty.as_str() {
            "response.output_audio_transcript.done" => {
                let line = v["transcript"].as_str().unwrap_or("");
                finished = line.starts_with("Done");
                format!("client sees {ty}: agent says {line:?}")
            }
            "conversation.item.input_audio_transcription.completed" => {
                format!("client sees {ty}")
            }
            _ => format!("client sees {ty}"),
        };
        tl.line(Instant::now(), "←", &what);
    }
    let _ = ws.close(None).await;
    let upstream = model.received();
    let tools: Vec<&str> = upstream
        .iter()
        .rev()
        .find(|v| v["type"] == "session.update")
        .and_then(|v| v["session"]["tools"].as_array())
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    tl.note(&format!("the model was offered: {}", tools.join(", ")));
    let answered: Vec<String> = upstream
        .iter()
        .filter(|v| v["item"]["type"] == "function_call_output")
        .map(|v| format!("toolgate answered the model: {}", v["item"]["output"]))
        .collect();
    for a in &answered {
        tl.note(a);
    }
    let sent = resend.requests();
    for r in &sent[sent_before..] {
        tl.note(&describe_request("mock Resend", r));
    }
    tl.note("the client saw no function-call event of send_email_summary: toolgate ran it");
    let ok = finished && sent.len() == sent_before + 1 && answered.len() == 1;
    Ok((tl.out, ok))
}

/// A Vapi `tool-calls` request with two calls and the conversation so far, then the same request
/// again, as a platform retry would send it.
async fn vapi_call(server: &Server, mocks: &Mocks) -> anyhow::Result<(String, bool)> {
    let mut tl = Timeline::new(Instant::now());
    let before = (
        mocks.resend.requests().len(),
        mocks.webhook.requests().len(),
    );
    let calls = json!([
        {"id": "call_vapi_1", "type": "function", "function": {"name": "send_email_summary",
            "arguments": {"summary": "Order A-1042 ships Friday."}}},
        {"id": "call_vapi_2", "type": "function", "function": {"name": "request_callback",
            "arguments": "{\"reason\":\"billing question\"}"}},
    ]);
    let body = json!({"message": {"type": "tool-calls", "toolCallList": calls, "toolCalls": calls,
        "artifact": {"messages": [
            {"role": "bot", "message": "Anything else I can do?", "time": 1, "secondsFromStart": 0},
            {"role": "user", "message": "Yes, email me the summary and have someone call me about billing.", "time": 2, "secondsFromStart": 1}]},
        "customer": {"number": "+14155550100"},
        "call": {"id": "demo-vapi", "customer": {"number": "+14155550100"},
                 "assistantOverrides": {"variableValues": {"email": "ana@example.com", "order_id": "A-1042"}}}}})
    .to_string();
    let url = format!("http://{}/v1/hooks/vapi-support", server.ws_addr);
    let mut results = Vec::new();
    for attempt in ["POST", "POST again (a platform retry)"] {
        tl.line(
            Instant::now(),
            "→",
            &format!("{attempt} /v1/hooks/vapi-support  X-Vapi-Secret: [redacted]  2 tool calls"),
        );
        let resp = reqwest::Client::new()
            .post(&url)
            .header("x-vapi-secret", VAPI_SECRET)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let status = resp.status().as_u16();
        let answer: Value = serde_json::from_slice(&resp.bytes().await?)?;
        tl.line(
            Instant::now(),
            "←",
            &format!(
                "HTTP {status} {}",
                serde_json::to_string(&answer["results"])?
            ),
        );
        results.push(answer);
    }
    let resend = mocks.resend.requests();
    let hooks = mocks.webhook.requests();
    for r in &resend[before.0..] {
        tl.note(&describe_request("mock Resend", r));
    }
    for r in &hooks[before.1..] {
        tl.note(&describe_request("mock webhook", r));
    }
    tl.note("the retry got the first answers; nothing was sent twice");
    let ok = resend.len() == before.0 + 1
        && hooks.len() == before.1 + 1
        && results[0] == results[1]
        && results[0]["results"].as_array().is_some_and(|r| {
            r.iter().all(|x| {
                x["result"]
                    .as_str()
                    .is_some_and(|s| s.contains("\"ok\":true"))
            })
        });
    Ok((tl.out, ok))
}

/// Wait for a workflow job to reach a final state.
async fn settle(rt: &crate::runtime::Runtime, id: &str) -> Option<crate::workflow::Job> {
    use crate::workflow::JobState;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(job)) = rt.jobs.get(id).await
            && matches!(
                job.state,
                JobState::Succeeded | JobState::Failed | JobState::Dead
            )
        {
            return Some(job);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn tool_call(id: &str, name: &str, args: Value) -> Value {
    json!({"type": "tool.call", "id": id, "name": name, "arguments": args.to_string()})
}

fn turn(role: &str, text: &str) -> Value {
    json!({"type": "transcript", "role": role, "text": text, "final": true})
}

/// Run the demo; with `keep_running` the sidecar and mocks stay up until Ctrl-C.
pub async fn run(keep_running: bool) -> anyhow::Result<bool> {
    let mocks = Mocks::start().await?;
    let model = crate::tooling::mock::realtime::FakeRealtime::start().await?;
    let model_url = model.url();
    let config =
        mocks.config_with(|t| format!("{t}\n[relay]\nopenai_upstream = \"{model_url}\"\n"));
    let server = Server::start(config).await?;
    let url = server.session_url();
    out!("toolgate demo");
    out!("  sidecar   {url}  (admin http://{})", server.admin_addr);
    out!(
        "  mocks     Resend {}   Wati {}   webhook {}",
        mocks.resend.url(),
        mocks.wati.url(),
        mocks.webhook.url()
    );
    out!("  agent     support-bot (org acme), config in src/tooling/demo.toml\n");

    let order = json!({"email": "ana@example.com", "order_id": "A-1042"});
    let scripts = [
        Script {
            title: "direct request: the caller asks for a WhatsApp confirmation (then the model asks twice)",
            call_id: "demo-direct",
            variables: order.clone(),
            steps: vec![
                turn(
                    "agent",
                    "Your order A-1042 is confirmed. Would you like the confirmation on WhatsApp?",
                ),
                turn("caller", "Yes please, send it on WhatsApp."),
                tool_call(
                    "call_01",
                    "send_whatsapp_confirmation",
                    json!({"order_id": "A-1042"}),
                ),
                tool_call(
                    "call_02",
                    "send_whatsapp_confirmation",
                    json!({"order_id": "A-1042"}),
                ),
            ],
            watch: vec![("mock Wati", mocks.wati.clone())],
            expect: vec!["succeeded", "duplicate"],
        },
        Script {
            title: "no consent: the caller declines, the model calls anyway",
            call_id: "demo-no-consent",
            variables: order.clone(),
            steps: vec![
                turn("agent", "Shall I send you the confirmation on WhatsApp?"),
                turn("caller", "No thanks, I don't need anything on WhatsApp."),
                tool_call(
                    "call_01",
                    "send_whatsapp_confirmation",
                    json!({"order_id": "A-1042"}),
                ),
            ],
            watch: vec![("mock Wati", mocks.wati.clone())],
            expect: vec!["rejected"],
        },
        Script {
            title: "missing field: a vague request and no email address on file",
            call_id: "demo-missing-field",
            variables: json!({"order_id": "A-1042"}),
            steps: vec![
                turn("caller", "Can you just email me all that?"),
                tool_call(
                    "call_01",
                    "send_email_summary",
                    json!({"summary": "Order A-1042 ships Friday."}),
                ),
            ],
            watch: vec![("mock Resend", mocks.resend.clone())],
            expect: vec!["rejected"],
        },
        Script {
            title: "slow provider: Resend takes 1.4 s, the caller hears fillers instead of silence",
            call_id: "demo-slow-provider",
            variables: order.clone(),
            steps: vec![
                turn("caller", "Yes, please email me the summary."),
                tool_call(
                    "call_01",
                    "send_email_summary",
                    json!({"summary": "Order A-1042 ships Friday; refund of $12 approved."}),
                ),
            ],
            watch: vec![("mock Resend", mocks.resend.clone())],
            expect: vec!["succeeded"],
        },
        Script {
            title: "slower than the budget: Resend takes 3.5 s, the caller is told it will arrive after the call",
            call_id: "demo-deferred",
            variables: order.clone(),
            steps: vec![
                turn("caller", "Sure, email me the summary."),
                tool_call(
                    "call_01",
                    "send_email_summary",
                    json!({"summary": "Order A-1042 ships Friday."}),
                ),
            ],
            watch: vec![("mock Resend", mocks.resend.clone())],
            expect: vec!["deferred"],
        },
    ];

    let mut all_ok = true;
    // The scripted calls, then the relayed one and the webhook one.
    let total = scripts.len() + 2;
    for (i, script) in scripts.iter().enumerate() {
        match script.call_id {
            "demo-slow-provider" => mocks.resend.push(Reply::slow(1400)),
            "demo-deferred" => mocks.resend.push(Reply::slow(3500)),
            _ => {}
        }
        out!("Call {} of {total}: {}", i + 1, script.title);
        let (text, ok) = play(&url, script, server.runtime()).await?;
        out_raw!("{text}");
        if !ok {
            out!("  !! expected {:?}", script.expect);
        }
        all_ok &= ok;
        out!();
    }
    out!(
        "Call {} of {total}: relayed OpenAI Realtime session: the media server's Realtime client only changes its base URL",
        scripts.len() + 1,
    );
    let (text, ok) = relayed_call(&server, &model, &mocks.resend).await?;
    out_raw!("{text}");
    if !ok {
        out!("  !! expected the email sent once and the model told it succeeded");
    }
    all_ok &= ok;
    out!();
    out!(
        "Call {total} of {total}: Vapi tool webhook: the hosted platform POSTs two tool calls, then retries the request"
    );
    let (text, ok) = vapi_call(&server, &mocks).await?;
    out_raw!("{text}");
    if !ok {
        out!("  !! expected both calls to succeed once and the retry to send nothing");
    }
    all_ok &= ok;
    out!();

    out!("What to look at next:");
    out!(
        "  examples/toolgate.toml      a config to start from (toolgate check-config examples/toolgate.toml)"
    );
    out!("  toolgate serve --config F   run the sidecar for your media server");
    if keep_running {
        out!(
            "\nStill running. Connect with: Authorization: Bearer {SESSION_TOKEN} to {url}\nCtrl-C to stop."
        );
        tokio::signal::ctrl_c().await?;
    }
    server.shutdown(Duration::from_secs(2)).await;
    Ok(all_ok)
}
