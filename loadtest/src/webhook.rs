//! Webhook mode (`--webhook`): what toolgate adds to a tool call that a hosted voice platform
//! POSTs to its tool webhook (SPEC §13.1), measured the way the WebSocket mode measures it.
//!
//! The generator plays Vapi: every tool call is a `tool-calls` server message, as Vapi sends
//! it (the call with the caller and its variables, the conversation so far in
//! `artifact.messages`, `toolCallList` and its legacy twin `toolCalls`, `toolWithToolCallList`),
//! posted to `POST /v1/hooks/{id}` with the hook's secret in `X-Vapi-Secret` (or
//! `Authorization: Bearer`). Tool calls are spread round-robin over `--sessions` platform call
//! ids, so the sidecar reuses each call's implicit session; each tool call has its own id
//! (`tc<n>`) and the `{token}` of its arguments, which the sidecar forwards to the mock
//! provider, so added latency is end-to-end minus the provider's own time for the same
//! request, as in the WebSocket mode.
//!
//! Before the clock starts, one set-up request per platform call opens its session (the
//! function under test with no arguments: refused for its missing values, nothing sent) and
//! proves the route, the secret and the function. Then requests go out on the open-loop
//! schedule ([`crate::schedule`]) whatever is outstanding, each on its own task, over a pool of
//! keep-alive HTTP/1.1 connections that grows to what is in flight. An answer counts when it
//! is HTTP 200 and its `results[]` lists the request's `toolCallId`; the `result` string gives
//! the status. At the end every platform call gets Vapi's `end-of-call-report`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::calls::{CallTable, Phase, Status, now_ns, parse_call_id};
use crate::cli::{Args, HookAuth};
use crate::report::{Mode, SessionsInfo, WebhookInfo};
use crate::run::{Bench, Outcome, json_object, turns};
use crate::script::Template;

/// How long a pooled connection may sit idle before it is dropped rather than reused.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// How long a set-up or end-of-call request may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The `error` codes of SPEC §3's guards: a result with one of these is `rejected`.
const GUARD_CODES: [&str; 8] = [
    "unknown_function",
    "invalid_arguments",
    "missing_fields",
    "connection_unavailable",
    "consent_required",
    "recipient_not_allowed",
    "limit_reached",
    "rate_limited",
];

/// An [`HttpConnector`] that counts the connections it opens.
#[derive(Clone)]
struct Counted {
    inner: HttpConnector,
    opened: Arc<AtomicU64>,
}

impl tower_service::Service<Uri> for Counted {
    type Response = <HttpConnector as tower_service::Service<Uri>>::Response;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = <HttpConnector as tower_service::Service<Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.inner.call(uri)
    }
}

/// What came back for one request: HTTP status and body, and when the body was read
/// ([`now_ns`]); or why nothing came.
type Answer = Result<(u16, Bytes, u64), String>;

/// Posts to the hook over a pool of keep-alive connections.
#[derive(Clone)]
struct HookClient {
    client: Client<Counted, Full<Bytes>>,
    uri: Uri,
    auth: (HeaderName, HeaderValue),
    opened: Arc<AtomicU64>,
}

impl HookClient {
    fn new(url: &str, auth: HookAuth, secret: &str) -> Result<HookClient, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("--hook-url {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "--hook-url {url}: only http:// is supported (run against a loopback sidecar)"
            ));
        }
        let auth = match auth {
            HookAuth::XVapiSecret => (HeaderName::from_static("x-vapi-secret"), secret.to_owned()),
            HookAuth::Bearer => (hyper::header::AUTHORIZATION, format!("Bearer {secret}")),
        };
        let value = HeaderValue::from_str(&auth.1)
            .map_err(|_| "the hook secret is not a valid header value".to_owned())?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let opened = Arc::new(AtomicU64::new(0));
        let counted = Counted {
            inner: connector,
            opened: opened.clone(),
        };
        // A connection idle this long is not used again: the sidecar closes one idle for its
        // `handshake_timeout_ms` (5 s by default), and a request sent on it just then would
        // meet the close. Shorter than the server's, as HTTP clients keep it (Node's: 4 s).
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(counted);
        Ok(HookClient {
            client,
            uri,
            auth: (auth.0, value),
            opened,
        })
    }

    /// POST `body`; the answer once its body is read.
    async fn post(&self, body: String) -> Answer {
        let req = hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(self.auth.0.clone(), self.auth.1.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let resp = self.client.request(req).await.map_err(|e| {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            why
        })?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?
            .to_bytes();
        Ok((status, bytes, now_ns()))
    }

    fn connections(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

/// What each platform call's requests say about the call.
struct Platform {
    /// The caller's number.
    caller: String,
    /// `call.assistantOverrides.variableValues`.
    variables: Value,
    /// The function the tool calls name.
    function: String,
    /// The URL the platform posts to (its tool's `server.url`).
    url: String,
    /// Platform call ids are this prefix, a dash and the call's index.
    call_id_prefix: String,
}

impl Platform {
    fn call_id(&self, index: usize) -> String {
        format!("{}-{index}", self.call_id_prefix)
    }

    /// The `call` object of a server message.
    fn call(&self, index: usize) -> Value {
        json!({
            "id": self.call_id(index),
            "orgId": "org_loadtest",
            "type": "inboundPhoneCall",
            "status": "in-progress",
            "phoneCallProvider": "twilio",
            "customer": {"number": self.caller},
            "assistantOverrides": {"variableValues": self.variables},
        })
    }

    /// The conversation so far, as Vapi carries it in `artifact.messages`.
    fn messages() -> Value {
        let mut out = vec![json!({
            "role": "system",
            "message": "You are Sam, Acme's support agent. Be brief.",
            "time": 1767225600000u64,
            "secondsFromStart": 0,
        })];
        for (i, (role, text)) in turns().into_iter().enumerate() {
            out.push(json!({
                "role": if role == "agent" { "bot" } else { "user" },
                "message": text,
                "time": 1767225601000u64 + i as u64 * 2000,
                "endTime": 1767225602500u64 + i as u64 * 2000,
                "secondsFromStart": 1 + i * 2,
                "duration": 1500,
            }));
        }
        Value::Array(out)
    }

    /// A `tool-calls` message of call `index` with one tool call.
    fn tool_calls(&self, index: usize, tool_call_id: &str, arguments: &Value) -> Value {
        let call = json!({
            "id": tool_call_id,
            "type": "function",
            "function": {"name": self.function, "arguments": arguments},
        });
        json!({"message": {
            "timestamp": 1767225609000u64,
            "type": "tool-calls",
            "toolCalls": [call],
            "toolCallList": [call],
            "toolWithToolCallList": [{
                "type": "function",
                "function": {"name": self.function, "parameters": {"type": "object", "properties": {}}},
                "server": {"url": self.url},
                "messages": [],
                "toolCall": call,
            }],
            "artifact": {"messages": Platform::messages()},
            "customer": {"number": self.caller},
            "call": self.call(index),
        }})
    }

    /// Call `index`'s tool-call requests, with holes for the tool call's number and token.
    fn template(&self, index: usize, arguments: &Value) -> Template {
        let body = self.tool_calls(index, "tc{seq}", arguments);
        Template::new(&body.to_string(), Phase::Sidecar.prefix())
    }

    /// The request that opens call `index`: the function with no arguments.
    fn opening(&self, index: usize) -> (String, String) {
        let id = format!("ltopen-{index}");
        let body = self.tool_calls(index, &id, &json!({})).to_string();
        (id, body)
    }

    /// Vapi's `end-of-call-report` for call `index`.
    fn end_of_call(&self, index: usize) -> String {
        json!({"message": {
            "timestamp": 1767225700000u64,
            "type": "end-of-call-report",
            "endedReason": "customer-ended-call",
            "artifact": {"messages": Platform::messages()},
            "call": self.call(index),
        }})
        .to_string()
    }
}

/// A Vapi answer, read without what is not needed.
#[derive(Deserialize)]
struct VapiAnswer {
    results: Vec<VapiResult>,
}

#[derive(Deserialize)]
struct VapiResult {
    #[serde(rename = "toolCallId")]
    tool_call_id: Option<String>,
    #[serde(default)]
    result: Option<String>,
}

/// The status of a §2 output string, as the `result` of a Vapi answer carries it.
fn status_of(output: &str) -> Status {
    #[derive(Deserialize)]
    struct Output {
        ok: Option<bool>,
        error: Option<String>,
        status: Option<String>,
        duplicate_of: Option<Value>,
    }
    let Ok(o) = serde_json::from_str::<Output>(output) else {
        return Status::Other;
    };
    if o.duplicate_of.is_some() {
        return Status::Duplicate;
    }
    match (o.ok, o.error.as_deref()) {
        (_, Some("cancelled")) => Status::Cancelled,
        (_, Some(code)) if GUARD_CODES.contains(&code) => Status::Rejected,
        (_, Some(_)) => Status::Failed,
        (Some(true), None) if o.status.as_deref() == Some("queued") => Status::Deferred,
        (Some(true), None) => Status::Succeeded,
        _ => Status::Other,
    }
}

fn cut(text: &[u8]) -> String {
    String::from_utf8_lossy(text).chars().take(300).collect()
}

fn note_error(table: &CallTable, code: String, message: String) {
    let mut notes = table.notes();
    notes.errors.entry(code).or_insert((0, message)).0 += 1;
}

/// File the answer to tool call `n`: its status when the answer lists its id, or the HTTP
/// error, the transport failure, or the unreadable body.
fn file_answer(table: &CallTable, n: u32, answer: Answer) {
    let (status, body, at) = match answer {
        Ok(a) => a,
        Err(why) => {
            table.mark_result(n, now_ns(), Status::Transport);
            note_error(table, "transport".into(), why);
            return;
        }
    };
    if status != 200 {
        table.mark_result(n, at, Status::HttpError);
        note_error(table, format!("http {status}"), cut(&body));
        return;
    }
    let answer: VapiAnswer = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(_) => {
            let mut notes = table.notes();
            notes.unreadable += 1;
            if notes.first_unreadable.is_none() {
                notes.first_unreadable = Some(cut(&body));
            }
            return;
        }
    };
    let mut listed = false;
    for r in answer.results {
        match r.tool_call_id.as_deref().and_then(parse_call_id) {
            Some(id) if id == n => {
                listed = true;
                let output = r.result.unwrap_or_default();
                let status = status_of(&output);
                if table.mark_result(n, at, status) && status != Status::Succeeded {
                    let mut notes = table.notes();
                    if !notes.examples.contains_key(status.name()) {
                        notes.examples.insert(status.name(), output);
                    }
                }
            }
            _ => table.notes().unknown_ids += 1,
        }
    }
    if !listed {
        // Answered, but not for this tool call: it stays unanswered (lost) and says why.
        note_error(table, "no result for its toolCallId".into(), cut(&body));
    }
}

/// Sends the run's tool calls.
#[derive(Clone)]
struct Sender {
    client: HookClient,
    templates: Arc<Vec<Template>>,
    table: Arc<CallTable>,
}

impl Sender {
    /// Post tool call `n` on its own task (open loop: nothing waits for earlier answers).
    fn fire(&self, handle: &tokio::runtime::Handle, n: u32) {
        let this = self.clone();
        handle.spawn(async move {
            this.table.mark_sent(n, now_ns());
            let body = this.templates[n as usize % this.templates.len()].render(n);
            let answer = this.client.post(body).await;
            file_answer(&this.table, n, answer);
        });
    }
}

/// The hook's URL: `--hook-url`, or `http://<host of --url>/v1/hooks/<--hook-id>`.
fn hook_url(args: &Args) -> Result<String, String> {
    if let Some(u) = &args.hook_url {
        return Ok(u.clone());
    }
    let uri: Uri = args
        .url
        .parse()
        .map_err(|e| format!("--url {:?}: {e}", args.url))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("--url {:?} has no host", args.url))?;
    Ok(format!("http://{authority}/v1/hooks/{}", args.hook_id))
}

/// Open platform call `index`: its first request starts the sidecar's implicit session.
async fn open(client: &HookClient, platform: &Platform, index: usize) -> Result<(), String> {
    let (id, body) = platform.opening(index);
    let url = &client.uri;
    let (status, bytes, _) = tokio::time::timeout(SETUP_TIMEOUT, client.post(body))
        .await
        .map_err(|_| format!("{url} did not answer within {} s", SETUP_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot reach {url}: {e} (is toolgate running there?)"))?;
    let text = cut(&bytes);
    match status {
        200 => {}
        401 => {
            return Err(format!(
                "{url} answered 401: the hook secret was not accepted (check --hook-secret or LOADTEST_HOOK_SECRET against the secret of the sidecar's [[webhooks]] entry): {text}"
            ));
        }
        404 => {
            return Err(format!(
                "{url} answered 404: {text} (is there a [[webhooks]] entry with this id, platform \"vapi\"? see --hook-id)"
            ));
        }
        _ => return Err(format!("{url} answered {status}: {text}")),
    }
    let answer: VapiAnswer = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{url} answered 200 without Vapi's results: {e}: {text}"))?;
    let result = answer
        .results
        .into_iter()
        .find(|r| r.tool_call_id.as_deref() == Some(id.as_str()))
        .ok_or_else(|| format!("{url} answered 200 without a result for {id}: {text}"))?;
    let output = result.result.unwrap_or_default();
    if output.contains("\"unknown_function\"") {
        return Err(format!(
            "the hook's agent has no function {:?}: {output}",
            platform.function
        ));
    }
    Ok(())
}

/// Run a webhook-mode load test. `Err` is a setup problem (exit code 2).
pub async fn run(args: Args, threads: usize) -> Result<Outcome, String> {
    let secret = args.hook_secret.clone().unwrap_or_default();
    let variables = json_object("--variables", &args.variables)?;
    let url = hook_url(&args)?;
    let client = HookClient::new(&url, args.hook_auth, &secret)?;
    let what = format!("{} platform calls (Vapi)", args.sessions);
    let mut bench = Bench::start(args, threads, &what, &format!("POST {url}")).await?;
    bench.run_baseline().await?;
    let args = &bench.args;
    let platform = Arc::new(Platform {
        caller: args.caller.clone(),
        variables,
        function: args.function.clone(),
        url: url.clone(),
        call_id_prefix: bench.call_id_prefix.clone(),
    });
    let templates: Vec<Template> = (0..args.sessions)
        .map(|i| platform.template(i, &bench.arguments))
        .collect();
    let body_bytes = templates[0].render(0).len();

    // Open every platform call before the clock starts.
    let rss_before = bench.sampler.sidecar_rss_mib();
    let opening = Instant::now();
    {
        let mut opened = futures_util::stream::iter(0..args.sessions)
            .map(|i| {
                let (client, platform) = (client.clone(), platform.clone());
                async move { (i, open(&client, &platform, i).await) }
            })
            .buffer_unordered(args.connect_concurrency);
        let mut done = 0;
        while let Some((i, result)) = opened.next().await {
            if let Err(e) = result {
                return Err(format!(
                    "platform call {i} of {} could not be set up ({done} were): {e}",
                    args.sessions
                ));
            }
            done += 1;
            if done % 1000 == 0 {
                eprintln!("  {done} platform calls open");
            }
        }
    }
    let open_ms = opening.elapsed().as_millis() as u64;
    eprintln!(
        "  {} platform calls open in {open_ms} ms over {} connections",
        args.sessions,
        client.connections()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = bench.sampler.sidecar_rss_mib();

    // The run.
    let sender = Sender {
        client: client.clone(),
        templates: Arc::new(templates),
        table: bench.table.clone(),
    };
    let handle = tokio::runtime::Handle::current();
    let window = bench
        .run_sidecar(move |n| {
            sender.fire(&handle, n);
            true
        })
        .await;

    // End every platform call.
    let mut sessions = SessionsInfo {
        opened: args.sessions,
        open_ms,
        ..Default::default()
    };
    let ends = futures_util::stream::iter(0..args.sessions)
        .map(|i| {
            let (client, platform) = (client.clone(), platform.clone());
            async move {
                let body = platform.end_of_call(i);
                match tokio::time::timeout(SETUP_TIMEOUT, client.post(body)).await {
                    Ok(Ok((200, _, _))) => Ok(()),
                    Ok(Ok((status, body, _))) => Err(format!(
                        "end-of-call-report of {} answered {status}: {}",
                        platform.call_id(i),
                        cut(&body)
                    )),
                    Ok(Err(e)) => Err(format!(
                        "end-of-call-report of {} failed: {e}",
                        platform.call_id(i)
                    )),
                    Err(_) => Err(format!(
                        "end-of-call-report of {} was not answered within {} s",
                        platform.call_id(i),
                        SETUP_TIMEOUT.as_secs()
                    )),
                }
            }
        })
        .buffer_unordered(args.connect_concurrency)
        .collect::<Vec<_>>()
        .await;
    for end in ends {
        match end {
            Ok(()) => sessions.ended += 1,
            Err(e) if sessions.problems.len() < 5 => sessions.problems.push(e),
            Err(_) => {}
        }
    }
    let info = WebhookInfo {
        platform: "vapi",
        auth: args.hook_auth.header(),
        body_bytes,
        connections: client.connections(),
    };
    bench.finish(
        Mode::Webhook,
        url,
        sessions,
        (rss_before, rss_idle),
        window,
        Some(info),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Arrivals, Schedule};
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["toolgate-loadtest", "--webhook", "--hook-secret", "s"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    fn platform() -> Platform {
        Platform {
            caller: "+14155550100".into(),
            variables: json!({"email": "ana@example.com", "order_id": "A-1042"}),
            function: "request_callback".into(),
            url: "http://127.0.0.1:8787/v1/hooks/loadtest-vapi".into(),
            call_id_prefix: "lt-1-2".into(),
        }
    }

    fn table(calls: u64) -> CallTable {
        let s = Schedule::build(1000.0, Duration::from_millis(calls), Arrivals::Fixed, 0).unwrap();
        let t = CallTable::new(Phase::Sidecar, Arc::new(s));
        t.start_clock(1_000_000_000);
        t
    }

    fn ok(body: &str) -> Answer {
        Ok((200, Bytes::from(body.to_owned()), 7))
    }

    #[test]
    fn the_hook_url_follows_the_session_url() {
        assert_eq!(
            hook_url(&args(&[])).unwrap(),
            "http://127.0.0.1:8787/v1/hooks/loadtest-vapi"
        );
        assert_eq!(
            hook_url(&args(&[
                "--url",
                "ws://10.0.0.2:9000/v1/session",
                "--hook-id",
                "v2"
            ]))
            .unwrap(),
            "http://10.0.0.2:9000/v1/hooks/v2"
        );
        assert_eq!(
            hook_url(&args(&["--hook-url", "http://h:1/x"])).unwrap(),
            "http://h:1/x"
        );
        assert!(HookClient::new("https://h/x", HookAuth::Bearer, "s").is_err());
        assert!(HookClient::new("http://h/x", HookAuth::XVapiSecret, "a\nb").is_err());
    }

    #[test]
    fn webhook_flags_are_checked() {
        assert!(args(&[]).check().is_ok(), "no session token needed");
        let no_secret = Args::parse_from(["toolgate-loadtest", "--webhook", "--hook-secret", ""]);
        assert!(
            no_secret
                .check()
                .unwrap_err()
                .contains("LOADTEST_HOOK_SECRET")
        );
        assert!(
            Args::try_parse_from(["toolgate-loadtest", "--webhook", "--relay", "--token", "t"])
                .is_err()
        );
        assert_eq!(args(&["--hook-auth", "bearer"]).hook_auth, HookAuth::Bearer);
    }

    #[test]
    fn requests_are_vapi_tool_calls_with_the_id_and_token() {
        let p = platform();
        let t = p.template(3, &json!({"reason": "load {token}"}));
        let body: Value = serde_json::from_str(&t.render(42)).unwrap();
        let m = &body["message"];
        assert_eq!(m["type"], "tool-calls");
        assert_eq!(m["call"]["id"], "lt-1-2-3");
        assert_eq!(m["customer"]["number"], "+14155550100");
        assert_eq!(
            m["call"]["assistantOverrides"]["variableValues"]["order_id"],
            "A-1042"
        );
        let call = &m["toolCallList"][0];
        assert_eq!(call["id"], "tc42");
        assert_eq!(call["function"]["name"], "request_callback");
        assert_eq!(
            call["function"]["arguments"]["reason"], "load ltc-42",
            "arguments as an object, as Vapi sends them"
        );
        assert_eq!(m["toolCalls"], m["toolCallList"]);
        let said = m["artifact"]["messages"].as_array().unwrap();
        assert_eq!(said.len(), 5);
        assert_eq!(said[0]["role"], "system");
        assert_eq!(said[4]["role"], "user");
        assert_eq!(said[4]["message"], "Yes please, go ahead.");

        let (id, opening) = p.opening(3);
        let opening: Value = serde_json::from_str(&opening).unwrap();
        assert_eq!(opening["message"]["toolCallList"][0]["id"], id);
        assert_eq!(
            opening["message"]["toolCallList"][0]["function"]["arguments"],
            json!({})
        );
        let end: Value = serde_json::from_str(&p.end_of_call(3)).unwrap();
        assert_eq!(end["message"]["type"], "end-of-call-report");
        assert_eq!(end["message"]["call"]["id"], "lt-1-2-3");
    }

    #[test]
    fn the_sidecar_reads_the_requests_as_vapi_messages() {
        use toolgate::config::Platform as P;
        use toolgate::hooks::parse_body;
        let p = platform();
        let t = p.template(0, &json!({"reason": "load {token}"}));
        assert_eq!(parse_body(P::Vapi, t.render(1).as_bytes(), ""), Ok(1));
        assert_eq!(parse_body(P::Vapi, p.opening(0).1.as_bytes(), ""), Ok(1));
        // The end of a call is a message the route takes, with no tool call in it.
        assert_eq!(parse_body(P::Vapi, p.end_of_call(0).as_bytes(), ""), Ok(0));
    }

    #[test]
    fn results_map_to_statuses() {
        assert_eq!(
            status_of(r#"{"ok":true,"message":"Webhook delivered"}"#),
            Status::Succeeded
        );
        assert_eq!(
            status_of(r#"{"ok":true,"status":"queued","next":"..."}"#),
            Status::Deferred
        );
        assert_eq!(
            status_of(r#"{"ok":true,"status":"already_done","duplicate_of":"tc1"}"#),
            Status::Duplicate
        );
        assert_eq!(
            status_of(r#"{"ok":false,"error":"consent_required","next":"..."}"#),
            Status::Rejected
        );
        assert_eq!(
            status_of(r#"{"ok":false,"error":"provider_unavailable"}"#),
            Status::Failed
        );
        assert_eq!(
            status_of(r#"{"ok":false,"error":"timeout","next":"still being processed"}"#),
            Status::Failed
        );
        assert_eq!(
            status_of(r#"{"ok":false,"error":"cancelled","provider_outcome":"not_sent"}"#),
            Status::Cancelled
        );
        assert_eq!(status_of("not json"), Status::Other);
    }

    #[test]
    fn answers_are_filed_under_their_tool_call() {
        let t = table(8);
        // 0: answered; 1: rejected, its output kept as the example.
        file_answer(
            &t,
            0,
            ok(r#"{"results":[{"toolCallId":"tc0","name":"f","result":"{\"ok\":true}"}]}"#),
        );
        file_answer(
            &t,
            1,
            ok(
                r#"{"results":[{"toolCallId":"tc1","name":"f","result":"{\"ok\":false,\"error\":\"consent_required\"}"}]}"#,
            ),
        );
        // 2: listed twice (doubled).
        file_answer(
            &t,
            2,
            ok(
                r#"{"results":[{"toolCallId":"tc2","result":"{\"ok\":true}"},{"toolCallId":"tc2","result":"{\"ok\":true}"}]}"#,
            ),
        );
        // 3: answered for another id only (lost, an unknown id, an error answer).
        file_answer(
            &t,
            3,
            ok(r#"{"results":[{"toolCallId":"call_x","result":"{}"}]}"#),
        );
        // 4: HTTP 401; 5: the connection failed; 6: not Vapi's shape.
        file_answer(
            &t,
            4,
            Ok((401, Bytes::from_static(br#"{"error":"unauthorized"}"#), 9)),
        );
        file_answer(&t, 5, Err("connection reset".into()));
        file_answer(&t, 6, ok("<html>"));

        let v = |n| t.view(n);
        assert_eq!(
            (v(0).status, v(0).results, v(0).result),
            (Status::Succeeded, 1, 7)
        );
        assert_eq!(v(1).status, Status::Rejected);
        assert_eq!((v(2).status, v(2).results), (Status::Succeeded, 2));
        assert_eq!(v(3).status, Status::None);
        assert_eq!(v(4).status, Status::HttpError);
        assert_eq!(v(5).status, Status::Transport);
        assert_eq!(v(6).status, Status::None);
        let notes = t.notes();
        assert_eq!(
            notes.examples.get("rejected").map(String::as_str),
            Some(r#"{"ok":false,"error":"consent_required"}"#)
        );
        assert_eq!(notes.unknown_ids, 1);
        assert_eq!(notes.unreadable, 1);
        assert_eq!(notes.first_unreadable.as_deref(), Some("<html>"));
        assert_eq!(notes.errors.get("http 401").map(|e| e.0), Some(1));
        assert_eq!(notes.errors.get("transport").map(|e| e.0), Some(1));
        assert_eq!(
            notes
                .errors
                .get("no result for its toolCallId")
                .map(|e| e.0),
            Some(1)
        );
    }

    #[test]
    fn a_bad_webhook_run_fails_its_verdict() {
        use crate::report::{Expect, analyze, verdict};
        let t = table(4);
        let answer = |n: u32, body: &'static str, status: u16| {
            let at = t.scheduled(n) + 3_000_000;
            file_answer(&t, n, Ok((status, Bytes::from_static(body.as_bytes()), at)));
        };
        for n in 0..4 {
            let s = t.scheduled(n);
            t.mark_sent(n, s);
            t.mark_provider(n, s + 1_000_000, 1_000_000);
        }
        // Call 0's provider request came twice.
        t.mark_provider(0, t.scheduled(0) + 1_500_000, 1_000_000);
        answer(
            0,
            r#"{"results":[{"toolCallId":"tc0","result":"{\"ok\":true}"}]}"#,
            200,
        );
        answer(
            1,
            r#"{"results":[{"toolCallId":"tc1","result":"{\"ok\":true}"}]}"#,
            200,
        );
        answer(2, "oops", 500);
        // Call 3's connection was closed under its request: no answer at all.
        file_answer(
            &t,
            3,
            Err("connection closed before message completed".into()),
        );
        let expect = Expect {
            filler_after: Duration::from_millis(500),
            defer_after: Duration::from_millis(2500),
            result_timeout: Duration::from_secs(15),
            warmup: Duration::ZERO,
            sessions: 2,
        };
        let r = analyze(&t, &expect);
        assert_eq!((r.answered, r.lost, r.provider_repeated), (3, 1, 1));
        assert_eq!(r.lost_examples[0].id, "tc3");
        assert_eq!(r.lost_examples[0].answer_after_ms, None);
        let sessions = SessionsInfo {
            opened: 2,
            ended: 1,
            ..Default::default()
        };
        let v = verdict(&r, None, &sessions, Mode::Webhook, true);
        assert!(!v.passed);
        let all = v.problems.join("\n");
        assert!(all.contains("reached the provider more than once"), "{all}");
        assert!(all.contains("1 tool calls lost (no 200 answer"), "{all}");
        assert!(
            all.contains("2 error answers: http 500 x1 (oops); transport x1"),
            "{all}"
        );
        assert!(
            all.contains("1 of 2 platform calls did not end cleanly"),
            "{all}"
        );
        // A mock that fails on purpose may see retries.
        let v = verdict(&r, None, &sessions, Mode::Webhook, false);
        assert!(!v.problems.join("\n").contains("more than once"));
    }
}
