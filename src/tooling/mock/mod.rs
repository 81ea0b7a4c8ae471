//! Loopback mock providers that behave like the real APIs (`providers/NOTES.md`), awkward
//! parts included: Resend's `{statusCode,name,message}` errors, 429 with `retry-after` and
//! idempotent replays; Wati's failures inside HTTP 200 and plain-text 401s; webhook receivers
//! that verify the Standard Webhooks signature.
//!
//! Used by `toolgate demo`, the integration tests and the load generator. Each mock records
//! every request it receives and counts *deliveries* (requests the real provider would have
//! acted on) separately, so a test can tell a replayed idempotent request from a double send.

pub mod realtime;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::catalog::Provider;
use crate::net::{self, HttpResponse};
use crate::providers::webhook;

/// The tenant path of the mock Wati endpoint (`{url}/123456`).
pub const WATI_TENANT: &str = "123456";

/// How the mock answers the next action request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// What the real provider does with a good request (and its real checks).
    Normal,
    /// Wait, then answer with the inner reply (the provider acts only when it answers).
    Delay(Duration, Box<Reply>),
    /// Act on the request at once, like `Normal`, but answer only after this long (a client
    /// that gives up meanwhile has still sent it).
    AnswerLate(Duration),
    /// A Resend-style error: `{"statusCode","name","message"}`, optional `retry-after`.
    ResendError {
        /// HTTP status.
        status: u16,
        /// Resend error name.
        name: String,
        /// Message.
        message: String,
        /// `retry-after` seconds.
        retry_after: Option<u64>,
    },
    /// Wati's HTTP 200 with `{"result":false,"info":...}`.
    WatiResultFalse {
        /// The `info` text.
        info: String,
    },
    /// Wati's HTTP 200 with `validWhatsAppNumber: false`.
    WatiInvalidNumber,
    /// Any status, headers and body.
    Raw {
        /// HTTP status.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: String,
    },
    /// Act on the request like `Normal`, answer its status and headers, then break the
    /// connection partway through the body (a reset mid-body after a 200).
    BreakBody,
    /// Never answer (until the client gives up).
    Hang,
    /// Close the connection without answering.
    Reset,
}

impl Reply {
    /// `Delay(ms, Normal)`.
    pub fn slow(ms: u64) -> Reply {
        Reply::Delay(Duration::from_millis(ms), Box::new(Reply::Normal))
    }
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query string.
    pub query: Option<String>,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Whether the provider would have acted on it (not a replay, not refused).
    pub delivered: bool,
    /// Whether it asked for an action (a send), not a check (validation, health).
    pub action: bool,
    /// For webhooks: whether the signature verified.
    pub signature_valid: Option<bool>,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A query parameter, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        url_pairs(q).find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

fn url_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
}

struct State {
    /// How long checks (validation, health) take to answer.
    check_delay: Duration,
    /// The credential was revoked: every request is refused.
    revoked: bool,
    /// A rotated bearer credential that replaced the one the mock started with.
    rotated: Option<String>,
    /// Resend: the key is sending-only (`restricted_api_key` on non-sending endpoints).
    restricted: bool,
    /// Wati: the templates `getMessageTemplates` lists, with their status.
    templates: Vec<(String, String)>,
    script: VecDeque<Reply>,
    /// Replies to checks (validation, health), before they answer normally again.
    check_script: VecDeque<Reply>,
    default: Reply,
    requests: Vec<Recorded>,
    /// Resend idempotency: key to (body, status, response body).
    idempotency: HashMap<String, (Bytes, u16, String)>,
    next_id: u64,
}

struct Inner {
    provider: Provider,
    credential: String,
    state: Mutex<State>,
    arrived: Notify,
}

impl Inner {
    /// Whether a bearer token is the accepted one (none accepted while revoked).
    fn accepts(&self, rec: &Recorded) -> Option<bool> {
        let state = self.state.lock().expect("mock state lock");
        let credential = state.rotated.as_deref().unwrap_or(&self.credential);
        bearer_ok(rec, credential).map(|ok| ok && !state.revoked)
    }
}

/// A running mock provider on a loopback port.
#[derive(Clone)]
pub struct MockProvider {
    inner: Arc<Inner>,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl MockProvider {
    /// A mock Resend accepting `api_key`.
    pub async fn resend(api_key: &str) -> std::io::Result<MockProvider> {
        Self::start(Provider::Resend, api_key).await
    }

    /// A mock Wati accepting `token`, at `{url}/123456`.
    pub async fn wati(token: &str) -> std::io::Result<MockProvider> {
        Self::start(Provider::Wati, token).await
    }

    /// A mock webhook receiver verifying signatures made with `secret` (`whsec_...`).
    pub async fn webhook(secret: &str) -> std::io::Result<MockProvider> {
        Self::start(Provider::Webhook, secret).await
    }

    async fn start(provider: Provider, credential: &str) -> std::io::Result<MockProvider> {
        let listener = net::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            provider,
            credential: credential.to_owned(),
            state: Mutex::new(State {
                check_delay: Duration::ZERO,
                revoked: false,
                rotated: None,
                check_script: VecDeque::new(),
                restricted: false,
                templates: vec![("order_confirmed".into(), "APPROVED".into())],
                script: VecDeque::new(),
                default: Reply::Normal,
                requests: Vec::new(),
                idempotency: HashMap::new(),
                next_id: 1,
            }),
            arrived: Notify::new(),
        });
        let shutdown = CancellationToken::new();
        let handler_inner = inner.clone();
        net::spawn_http(
            listener,
            move |req, _| handle(handler_inner.clone(), req),
            shutdown.clone(),
            None,
        );
        Ok(MockProvider {
            inner,
            addr,
            shutdown,
        })
    }

    /// The base URL to configure: Resend `base_url`, Wati `endpoint`, webhook `url`.
    pub fn url(&self) -> String {
        match self.inner.provider {
            Provider::Resend => format!("http://{}", self.addr),
            Provider::Wati => format!("http://{}/{WATI_TENANT}", self.addr),
            Provider::Webhook => format!("http://{}/hooks/toolgate", self.addr),
        }
    }

    /// Answer the next action request with `reply` (replies queue up in order).
    pub fn push(&self, reply: Reply) {
        self.lock().script.push_back(reply);
    }

    /// Answer action requests with `reply` once the queue is empty.
    pub fn set_default(&self, reply: Reply) {
        self.lock().default = reply;
    }

    /// Answer the next check (validation, health request) with `reply` instead of normally.
    pub fn push_check(&self, reply: Reply) {
        self.lock().check_script.push_back(reply);
    }

    /// Rotate the accepted bearer credential (Resend key, Wati token): the old one is refused.
    pub fn set_credential(&self, credential: &str) {
        self.lock().rotated = Some(credential.to_owned());
    }

    /// Revoke the credential (`true`) or restore it (`false`): while revoked, every request
    /// is refused as the real provider refuses a revoked key.
    pub fn set_revoked(&self, revoked: bool) {
        self.lock().revoked = revoked;
    }

    /// Make checks (validation, health) this slow; scripted replies apply to actions only.
    pub fn set_check_delay(&self, delay: Duration) {
        self.lock().check_delay = delay;
    }

    /// Resend: make the key sending-only (`401 restricted_api_key` on `GET /domains`).
    pub fn set_restricted(&self, restricted: bool) {
        self.lock().restricted = restricted;
    }

    /// Wati: the templates the tenant has, as `(elementName, status)`.
    pub fn set_templates(&self, templates: &[(&str, &str)]) {
        self.lock().templates = templates
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
    }

    /// Webhook receivers: a health-check URL that answers 200.
    pub fn health_url(&self) -> String {
        format!("http://{}/health", self.addr)
    }

    /// Every action request (a send) received so far; validation and health checks are left
    /// out (see [`MockProvider::all_requests`]).
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.action)
            .cloned()
            .collect()
    }

    /// Every request received so far, checks included.
    pub fn all_requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// How many requests the real provider would have acted on.
    pub fn delivered(&self) -> usize {
        self.lock().requests.iter().filter(|r| r.delivered).count()
    }

    /// Deliveries per idempotency key (Resend `Idempotency-Key`, webhook `webhook-id`):
    /// every action that arrived, and how many times the provider acted on it.
    pub fn deliveries_by_key(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for r in self.lock().requests.iter().filter(|r| r.action) {
            let key = r
                .header("idempotency-key")
                .or_else(|| r.header("webhook-id"))
                .unwrap_or("")
                .to_owned();
            *out.entry(key).or_insert(0) += usize::from(r.delivered);
        }
        out
    }

    /// Wait until at least `n` requests have arrived, or `timeout` passes.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.arrived.notified();
            let reqs = self.requests();
            if reqs.len() >= n || tokio::time::Instant::now() >= deadline {
                return reqs;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Stop listening.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("mock state lock")
    }
}

fn respond(status: u16, headers: &[(&str, String)], body: String) -> HttpResponse {
    let mut b = Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK));
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Full::new(Bytes::from(body)))
        .expect("mock responses are valid")
}

fn json_reply(status: u16, body: Value) -> HttpResponse {
    respond(
        status,
        &[("content-type", "application/json".to_owned())],
        body.to_string(),
    )
}

fn resend_error(status: u16, name: &str, message: &str) -> HttpResponse {
    json_reply(
        status,
        json!({"statusCode": status, "name": name, "message": message}),
    )
}

/// What the handler decided, before any delay.
struct Decided {
    response: Option<HttpResponse>,
    delivered: bool,
}

/// The mock closes the connection without answering (a reset as the client sees it).
#[derive(Debug, thiserror::Error)]
#[error("mock provider reset the connection")]
pub struct MockReset;

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<HttpResponse, MockReset> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let mut rec = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body,
        delivered: false,
        action: false,
        signature_valid: None,
        at: Instant::now(),
    };
    let is_action = is_action(inner.provider, &rec);
    rec.action = is_action;
    let reply = if is_action {
        let mut st = inner.state.lock().expect("mock state lock");
        st.script.pop_front().unwrap_or_else(|| st.default.clone())
    } else {
        let mut st = inner.state.lock().expect("mock state lock");
        let next = st.check_script.pop_front().unwrap_or(Reply::Normal);
        Reply::Delay(st.check_delay, Box::new(next))
    };
    // Delays happen before the provider "acts", like a slow provider.
    let mut reply = reply;
    while let Reply::Delay(d, next) = reply {
        tokio::time::sleep(d).await;
        reply = *next;
    }
    let decided = match reply {
        Reply::Hang => {
            record(&inner, rec);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Err(MockReset);
        }
        Reply::Reset => {
            record(&inner, rec);
            return Err(MockReset);
        }
        Reply::Raw {
            status,
            headers,
            body,
        } => {
            let hs: Vec<(&str, String)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            Decided {
                response: Some(respond(status, &hs, body)),
                delivered: (200..300).contains(&status),
            }
        }
        Reply::ResendError {
            status,
            name,
            message,
            retry_after,
        } => {
            let mut resp = resend_error(status, &name, &message);
            if let Some(s) = retry_after {
                let h = resp.headers_mut();
                h.insert("retry-after", s.to_string().parse().expect("digits"));
                h.insert("ratelimit-limit", "2".parse().expect("digits"));
                h.insert("ratelimit-remaining", "0".parse().expect("digits"));
                h.insert("ratelimit-reset", s.to_string().parse().expect("digits"));
            }
            Decided {
                response: Some(resp),
                delivered: false,
            }
        }
        Reply::WatiResultFalse { info } => Decided {
            response: Some(json_reply(200, json!({"result": false, "info": info}))),
            delivered: false,
        },
        Reply::WatiInvalidNumber => Decided {
            response: Some(json_reply(
                200,
                json!({"result": true, "validWhatsAppNumber": false, "info": "Invalid WhatsApp number"}),
            )),
            delivered: false,
        },
        Reply::BreakBody => {
            let decided = normal(&inner, &mut rec);
            rec.delivered = decided.delivered;
            record(&inner, rec);
            let mut resp = decided
                .response
                .unwrap_or_else(|| respond(500, &[], String::new()));
            // A length the body never reaches: the server closes the connection after the
            // short body, and the client's read of the rest fails.
            resp.headers_mut()
                .insert("content-length", "4096".parse().expect("digits"));
            return Ok(resp);
        }
        Reply::AnswerLate(wait) => {
            let decided = normal(&inner, &mut rec);
            rec.delivered = decided.delivered;
            record(&inner, rec);
            tokio::time::sleep(wait).await;
            return Ok(decided
                .response
                .unwrap_or_else(|| respond(500, &[], String::new())));
        }
        Reply::Normal | Reply::Delay(..) => normal(&inner, &mut rec),
    };
    rec.delivered = decided.delivered;
    record(&inner, rec);
    Ok(decided
        .response
        .unwrap_or_else(|| respond(500, &[], String::new())))
}

/// What the real provider does with the request.
fn normal(inner: &Inner, rec: &mut Recorded) -> Decided {
    match inner.provider {
        Provider::Resend => resend_normal(inner, rec),
        Provider::Wati => wati_normal(inner, rec),
        Provider::Webhook => {
            let (resp, valid) = webhook_normal(inner, rec);
            rec.signature_valid = Some(valid);
            Decided {
                response: Some(resp),
                delivered: valid,
            }
        }
    }
}

fn record(inner: &Inner, rec: Recorded) {
    inner
        .state
        .lock()
        .expect("mock state lock")
        .requests
        .push(rec);
    inner.arrived.notify_waiters();
}

fn is_action(provider: Provider, rec: &Recorded) -> bool {
    rec.method == "POST"
        && match provider {
            Provider::Resend => rec.path == "/emails",
            Provider::Wati => rec.path.contains("/api/v1/send"),
            Provider::Webhook => true,
        }
}

fn next_id(inner: &Inner) -> u64 {
    let mut st = inner.state.lock().expect("mock state lock");
    st.next_id += 1;
    st.next_id
}

fn bearer_ok(rec: &Recorded, credential: &str) -> Option<bool> {
    let v = rec.header("authorization")?;
    Some(v == format!("Bearer {credential}"))
}

fn resend_normal(inner: &Inner, rec: &Recorded) -> Decided {
    let refuse = |resp| Decided {
        response: Some(resp),
        delivered: false,
    };
    match inner.accepts(rec) {
        None => {
            return refuse(resend_error(
                401,
                "missing_api_key",
                "Missing API key in the authorization header.",
            ));
        }
        Some(false) => return refuse(resend_error(403, "invalid_api_key", "API key is invalid")),
        Some(true) => {}
    }
    if rec.header("user-agent").is_none_or(str::is_empty) {
        return refuse(resend_error(
            403,
            "validation_error",
            "A User-Agent header is required.",
        ));
    }
    match (rec.method.as_str(), rec.path.as_str()) {
        ("GET", "/domains") if inner.state.lock().expect("mock state lock").restricted => {
            return refuse(resend_error(
                401,
                "restricted_api_key",
                "This API key is restricted to only send emails.",
            ));
        }
        ("GET", "/domains") => {
            return refuse(json_reply(
                200,
                json!({"object": "list", "has_more": false, "data": [{"id": "d91cd9bd-1176-453e-8fc1-35364d380206", "name": "acme.test", "status": "verified"}]}),
            ));
        }
        ("POST", "/emails") => {}
        _ => {
            return refuse(resend_error(
                404,
                "not_found",
                "The requested endpoint does not exist.",
            ));
        }
    }
    let body: Value = match serde_json::from_slice(&rec.body) {
        Ok(v) => v,
        Err(_) => return refuse(resend_error(422, "validation_error", "Invalid JSON body.")),
    };
    for field in ["from", "to", "subject"] {
        let present = match body.get(field) {
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            _ => false,
        };
        if !present {
            return refuse(resend_error(
                422,
                "missing_required_field",
                &format!("Missing `{field}` field."),
            ));
        }
    }
    let key = rec.header("idempotency-key").map(str::to_owned);
    let mut st = inner.state.lock().expect("mock state lock");
    if let Some(k) = &key {
        if k.is_empty() || k.len() > 256 {
            return refuse(resend_error(
                400,
                "invalid_idempotency_key",
                "The key must be between 1-256 chars.",
            ));
        }
        if let Some((first_body, status, resp)) = st.idempotency.get(k) {
            if first_body != &rec.body {
                return refuse(resend_error(
                    409,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload. Change your idempotency key or payload.",
                ));
            }
            // A replay: the first response, nothing sent again.
            let (status, resp) = (*status, resp.clone());
            return refuse(respond(
                status,
                &[("content-type", "application/json".into())],
                resp,
            ));
        }
    }
    st.next_id += 1;
    let id = format!("{:08x}-0ce1-4ea6-ab68-{:012x}", st.next_id, st.next_id);
    let resp = json!({"id": id}).to_string();
    if let Some(k) = key {
        st.idempotency
            .insert(k, (rec.body.clone(), 200, resp.clone()));
    }
    Decided {
        response: Some(respond(
            200,
            &[("content-type", "application/json".into())],
            resp,
        )),
        delivered: true,
    }
}

fn wati_normal(inner: &Inner, rec: &Recorded) -> Decided {
    let refuse = |resp| Decided {
        response: Some(resp),
        delivered: false,
    };
    let prefix = format!("/{WATI_TENANT}/api/v1/");
    let Some(route) = rec.path.strip_prefix(&prefix) else {
        return refuse(respond(404, &[], "Not Found".into()));
    };
    if inner.accepts(rec) != Some(true) {
        // Wati's 401s are plain text or empty.
        return refuse(respond(401, &[], String::new()));
    }
    if rec.method == "GET" && route == "getMessageTemplates" {
        let size: usize = rec
            .query_param("pageSize")
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        let all = inner
            .state
            .lock()
            .expect("mock state lock")
            .templates
            .clone();
        let page: Vec<Value> = all
            .iter()
            .take(size)
            .map(|(n, s)| json!({"elementName": n, "status": s}))
            .collect();
        return refuse(json_reply(
            200,
            json!({"result": "success", "messageTemplates": page, "link": {"pageNumber": 1, "pageSize": size, "total": all.len()}}),
        ));
    }
    if rec.method != "POST" {
        return refuse(respond(405, &[], String::new()));
    }
    if route == "sendTemplateMessage" {
        let number = rec.query_param("whatsappNumber").unwrap_or_default();
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return refuse(json_reply(
                400,
                json!({"result": false, "info": "whatsappNumber must be digits in international format"}),
            ));
        }
        let body: Value = serde_json::from_slice(&rec.body).unwrap_or(Value::Null);
        let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let template = text("template_name");
        if template.is_empty() || text("broadcast_name").is_empty() {
            return refuse(json_reply(
                400,
                json!({"result": false, "info": "template_name and broadcast_name are required"}),
            ));
        }
        if let Some(params) = body.get("parameters").and_then(Value::as_array) {
            let bad = params.iter().any(|p| {
                p.get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                    || p.get("value")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
            });
            if bad {
                return refuse(json_reply(
                    400,
                    json!({"result": false, "info": "Every parameter needs a name and a value"}),
                ));
            }
        }
        let id = next_id(inner);
        return Decided {
            response: Some(json_reply(
                200,
                json!({"result": true, "phone_number": number, "template_name": template, "validWhatsAppNumber": true, "model": {"ids": [format!("6643{id:020x}")]}}),
            )),
            delivered: true,
        };
    }
    if let Some(number) = route.strip_prefix("sendSessionMessage/") {
        let text = rec.query_param("messageText").unwrap_or_default();
        if !number.bytes().all(|b| b.is_ascii_digit())
            || text.is_empty()
            || text.chars().count() > 4096
        {
            return refuse(json_reply(
                400,
                json!({"result": false, "info": "Invalid request"}),
            ));
        }
        let id = next_id(inner);
        return Decided {
            response: Some(json_reply(
                200,
                json!({"ok": true, "result": "success", "message": {"whatsappMessageId": format!("wamid.{id:016x}"), "text": text}}),
            )),
            delivered: true,
        };
    }
    refuse(respond(404, &[], "Not Found".into()))
}

fn webhook_normal(inner: &Inner, rec: &Recorded) -> (HttpResponse, bool) {
    if rec.method == "GET" {
        return (json_reply(200, json!({"ok": true})), false);
    }
    let key = inner
        .credential
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default();
    let id = rec.header("webhook-id").unwrap_or("");
    let ts = rec
        .header("webhook-timestamp")
        .and_then(|t| t.parse::<u64>().ok());
    let sig = rec.header("webhook-signature").unwrap_or("");
    let valid = match ts {
        Some(ts) => !id.is_empty() && webhook::verify(&key, id, ts, &rec.body, sig),
        None => false,
    };
    if valid {
        (respond(204, &[], String::new()), true)
    } else {
        (respond(401, &[], "invalid signature".into()), false)
    }
}
