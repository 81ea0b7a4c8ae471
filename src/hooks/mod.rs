//! Tool webhooks of hosted voice platforms (SPEC §13.1): Vapi, Retell and ElevenLabs POST each
//! tool call to `POST /v1/hooks/{id}` (ElevenLabs: `/v1/hooks/{id}/{function}`) and speak what
//! comes back.
//!
//! Every request is checked in this order, and nothing runs from one that fails a check: the
//! hook exists (404), the body is at most 1 MiB (413), the platform's credential is right (401),
//! the body is the platform's shape (400). Then:
//!
//! - The call's implicit session ([`Calls`]), keyed by (hook, platform call id), is found or
//!   started ([`crate::session::attach`]) with the caller's number and the call's variables from
//!   the payload; the platform's transcript is merged into its history (turns already seen are
//!   not added again) before the tool calls run, so consent and `spoken` recipients work.
//! - Each tool call goes to the session under its id (Vapi's, or one derived from the call id,
//!   the function and the canonical arguments for Retell and ElevenLabs): a platform's retry of
//!   the same request waits for, or gets, the first request's outcome; nothing is sent twice.
//! - The request is held until every result, never past the hook's `max_hold_ms`; the session's
//!   budget (`defer_after_ms` in `auto` mode) answers before that.
//! - The answer is in the platform's shape (`vapi`, `retell`, `elevenlabs`).
//!
//! A session ends after `idle_end_ms` without a request, or at the platform's end-of-call
//! message.

pub(crate) mod calls;
mod elevenlabs;
mod loose;
mod retell;
mod vapi;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use indexmap::IndexMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::config::{Platform, Webhook};
use crate::net::{HttpResponse, json_error};
use crate::protocol::{
    Arguments, Caller, Channel, Inbound, Role, SessionStart, ToolCall, Transcript, VarValue,
};
use crate::runtime::Runtime;
use crate::session::{self, LocalOut};
pub use calls::Calls;
pub(crate) use calls::Outcome;
use calls::{CallState, HookCall, Slot};

/// Largest request body a hook reads.
pub const MAX_BODY: usize = 1 << 20;

/// What a platform's request asks for, in toolgate's terms.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// The platform's call id.
    pub call_id: String,
    /// The caller's number, when the platform knows it.
    pub caller: Option<String>,
    /// The call's variables.
    pub variables: IndexMap<String, VarValue>,
    /// The whole conversation so far, oldest first, as the platform carries it.
    pub transcript: Vec<(Role, String)>,
    /// The tool calls to run: id (when the platform gives one), name, arguments.
    pub calls: Vec<(Option<String>, String, Arguments)>,
    /// The platform says the call is over.
    pub ended: bool,
}

/// The route of a hook: `/v1/hooks/{id}` or `/v1/hooks/{id}/{function}`.
pub fn route(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/v1/hooks/")?;
    match rest.split_once('/') {
        None if !rest.is_empty() => Some((rest, None)),
        Some((id, function))
            if !id.is_empty() && !function.is_empty() && !function.contains('/') =>
        {
            Some((id, Some(function)))
        }
        _ => None,
    }
}

fn channel(p: Platform) -> Channel {
    match p {
        Platform::Vapi => Channel::Vapi,
        Platform::Retell => Channel::Retell,
        Platform::Elevenlabs => Channel::Elevenlabs,
    }
}

/// A bad request: 400 with the SPEC's error shape.
pub(crate) fn bad(message: impl std::fmt::Display) -> HttpResponse {
    json_error(StatusCode::BAD_REQUEST, "bad_request", &message.to_string())
}

fn unauthorized(what: &str) -> HttpResponse {
    json_error(StatusCode::UNAUTHORIZED, "unauthorized", what)
}

/// Whether `given` is the secret, compared by digest so timing says nothing about it.
fn same_secret(given: &str, secret: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(secret.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Vapi's and ElevenLabs' credential: `Authorization: Bearer <secret>` or
/// `X-Vapi-Secret: <secret>`.
fn bearer_or_vapi_secret(req: &hyper::HeaderMap, secret: &str) -> bool {
    let bearer = req
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, t)| same_secret(t.trim(), secret));
    bearer
        || req
            .get("x-vapi-secret")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| same_secret(v.trim(), secret))
}

/// The id of a call the platform gives no id: the same call, function and arguments always get
/// the same id, so a retried request finds the first one's outcome.
fn derived_id(call_id: &str, name: &str, args: &Arguments) -> String {
    let canonical = match args.parse() {
        Ok(map) => canonical_json(&serde_json::Value::Object(map)),
        Err(_) => match args {
            Arguments::Absent => String::new(),
            Arguments::Json(s) | Arguments::Text(s) => s.clone(),
        },
    };
    let mut h = Sha256::new();
    for part in [call_id, name, &canonical] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    format!("hk_{}", hex::encode(&d[..12]))
}

/// JSON with object keys sorted, at every depth.
fn canonical_json(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                serde_json::Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// A JSON object of scalar values as session variables (others are skipped).
pub(crate) fn variables(v: Option<&serde_json::Value>) -> IndexMap<String, VarValue> {
    let mut out = IndexMap::new();
    if let Some(serde_json::Value::Object(m)) = v {
        for (k, v) in m {
            let value = match v {
                serde_json::Value::String(s) => VarValue::Str(s.clone()),
                serde_json::Value::Bool(b) => VarValue::Bool(*b),
                serde_json::Value::Number(n) => VarValue::Num(n.clone()),
                _ => continue,
            };
            out.insert(k.clone(), value);
        }
    }
    out
}

/// Arguments as a platform sends them: an object (kept as the JSON text it came as), or a
/// string holding one.
pub(crate) fn arguments(v: Option<&serde_json::value::RawValue>) -> Arguments {
    match v.map(serde_json::value::RawValue::get) {
        None | Some("null") => Arguments::Absent,
        // A raw value that opens with a quote is a whole JSON string: it reads as one.
        Some(raw) if raw.starts_with('"') => {
            Arguments::Text(serde_json::from_str(raw).unwrap_or_default())
        }
        Some(raw) => Arguments::Json(raw.to_owned()),
    }
}

/// Parse a platform's request body as the route would (for the fuzz targets): `Ok` with the
/// number of tool calls found, or the status a refusal would get.
#[doc(hidden)]
pub fn parse_body(platform: Platform, body: &[u8], function: &str) -> Result<usize, u16> {
    let parsed = match platform {
        Platform::Vapi => vapi::parse(body),
        Platform::Retell => retell::parse(body),
        Platform::Elevenlabs => elevenlabs::parse(body, function),
    };
    match parsed {
        Ok(p) => {
            for (_, _, args) in &p.calls {
                let _ = derived_id(&p.call_id, "f", args);
            }
            Ok(p.calls.len())
        }
        Err(resp) => Err(resp.status().as_u16()),
    }
}

/// `POST /v1/hooks/{id}[/{function}]`.
pub async fn handle(
    req: Request<Incoming>,
    id: &str,
    function: Option<&str>,
    rt: Arc<Runtime>,
) -> HttpResponse {
    let snap = rt.snap();
    let Some(hook) = snap.config.webhooks.iter().find(|h| h.id == id).cloned() else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no webhook {id:?}"),
        );
    };
    if req.method() != hyper::Method::POST {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        );
    }
    if function.is_some() != (hook.platform == Platform::Elevenlabs) {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            if hook.platform == Platform::Elevenlabs {
                "an ElevenLabs hook takes the function in the path: /v1/hooks/{id}/{function}"
            } else {
                "this hook's route is /v1/hooks/{id}"
            },
        );
    }
    let headers = req.headers().clone();
    let body = match crate::net::read_body(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let secret = hook.secret.expose();
    let authorized = match hook.platform {
        Platform::Vapi | Platform::Elevenlabs => bearer_or_vapi_secret(&headers, secret),
        Platform::Retell => retell::verify(&headers, &body, secret, crate::clock::now_ms()),
    };
    if !authorized {
        debug!(hook = %hook.id, "webhook refused: missing or wrong credential");
        return unauthorized(match hook.platform {
            Platform::Vapi | Platform::Elevenlabs => {
                "send Authorization: Bearer <secret> or X-Vapi-Secret: <secret>"
            }
            Platform::Retell => "X-Retell-Signature is missing, wrong, or more than 5 minutes old",
        });
    }
    let parsed = match hook.platform {
        Platform::Vapi => vapi::parse(&body),
        Platform::Retell => retell::parse(&body),
        Platform::Elevenlabs => elevenlabs::parse(&body, function.unwrap_or_default()),
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let key = (hook.id.clone(), parsed.call_id.clone());
    if parsed.ended {
        if let Some((_, call)) = rt.hooks.by_key.remove(&key) {
            info!(hook = %hook.id, call_id = %parsed.call_id, "the platform ended the call");
            let _ = call
                .to_session
                .send(Inbound::SessionEnd {
                    reason: Some("the platform ended the call".into()),
                })
                .await;
        }
        return crate::net::json(StatusCode::OK, &serde_json::json!({}));
    }
    let call = match implicit_session(&rt, &hook, &parsed) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let outcomes = run(&call, &hook, parsed).await;
    match hook.platform {
        Platform::Vapi => vapi::answer(&outcomes),
        Platform::Retell | Platform::Elevenlabs => {
            let (_, _, outcome) = outcomes
                .into_iter()
                .next()
                .expect("one call per Retell or ElevenLabs request");
            crate::net::raw_json(StatusCode::OK, outcome.output)
        }
    }
}

/// The call's session: found, or started with what the payload says of the call.
fn implicit_session(
    rt: &Arc<Runtime>,
    hook: &Arc<Webhook>,
    parsed: &Parsed,
) -> Result<Arc<HookCall>, HttpResponse> {
    let key = (hook.id.clone(), parsed.call_id.clone());
    if let Some(c) = rt.hooks.by_key.get(&key) {
        return Ok(c.clone());
    }
    let start = SessionStart {
        call_id: parsed.call_id.clone(),
        agent: hook.agent.clone(),
        caller: Caller {
            number: parsed.caller.clone(),
            name: None,
        },
        variables: parsed.variables.clone(),
    };
    let entry = rt.hooks.by_key.entry(key.clone());
    let entry = match entry {
        dashmap::Entry::Occupied(e) => return Ok(e.get().clone()),
        dashmap::Entry::Vacant(v) => v,
    };
    let attached = session::attach(start, &hook.org, channel(hook.platform), rt).map_err(
        |(code, message)| {
            let status = match code {
                crate::protocol::ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
                crate::protocol::ErrorCode::SessionExists => StatusCode::CONFLICT,
                _ => StatusCode::FORBIDDEN,
            };
            json_error(status, code.as_str(), &message)
        },
    )?;
    let call = Arc::new(HookCall {
        to_session: attached.to_session,
        state: Mutex::new(CallState {
            results: Default::default(),
            turns_seen: 0,
            last_request: Instant::now(),
        }),
    });
    entry.insert(call.clone());
    let span = tracing::info_span!("webhook", hook = %hook.id, call_id = %parsed.call_id);
    tokio::spawn(
        follow(
            rt.clone(),
            key,
            call.clone(),
            attached.from_session,
            hook.idle_end,
        )
        .instrument(span),
    );
    Ok(call)
}

/// Read the session's answers into the call's results, and end the session when the platform
/// has been quiet for `idle_end`.
async fn follow(
    rt: Arc<Runtime>,
    key: (String, String),
    call: Arc<HookCall>,
    mut from_session: session::FromSession,
    idle_end: Duration,
) {
    #[derive(Deserialize)]
    struct Frame {
        #[serde(rename = "type")]
        ty: String,
        id: Option<String>,
        status: Option<String>,
        output: Option<String>,
    }
    let mut ending = false;
    loop {
        let idle_at = call.state.lock().expect("hook call lock").last_request + idle_end;
        tokio::select! {
            out = from_session.recv() => match out {
                Some(LocalOut::Frame(text)) => {
                    let Ok(f) = serde_json::from_str::<Frame>(&text) else { continue };
                    if f.ty != "tool.result" {
                        continue;
                    }
                    let (Some(id), Some(status), Some(output)) = (f.id, f.status, f.output) else {
                        continue;
                    };
                    let outcome = Outcome { status, output };
                    let mut st = call.state.lock().expect("hook call lock");
                    if let Some(Slot::Pending(waiters)) =
                        st.results.insert(id, Slot::Done(outcome.clone()))
                    {
                        for w in waiters {
                            let _ = w.send(outcome.clone());
                        }
                    }
                }
                Some(LocalOut::Closed(_)) | None => break,
            },
            _ = tokio::time::sleep_until(idle_at), if !ending => {
                if call.state.lock().expect("hook call lock").last_request + idle_end > Instant::now() {
                    continue;
                }
                info!(idle_ms = idle_end.as_millis() as u64, "no request from the platform for idle_end_ms; the call ends");
                rt.hooks.by_key.remove_if(&key, |_, c| Arc::ptr_eq(c, &call));
                ending = true;
                let _ = call.to_session.send(Inbound::SessionEnd { reason: Some("idle".into()) }).await;
            }
        }
    }
    rt.hooks
        .by_key
        .remove_if(&key, |_, c| Arc::ptr_eq(c, &call));
}

/// Merge the transcript, run the calls (or join the ones already running), and wait for every
/// outcome up to the hook's `max_hold_ms`.
async fn run(call: &HookCall, hook: &Webhook, parsed: Parsed) -> Vec<(String, String, Outcome)> {
    let mut to_send: Vec<Inbound> = Vec::new();
    let mut waits = Vec::new();
    {
        let mut st = call.state.lock().expect("hook call lock");
        st.last_request = Instant::now();
        if parsed.transcript.len() > st.turns_seen {
            for (role, text) in &parsed.transcript[st.turns_seen..] {
                to_send.push(Inbound::Transcript(Transcript {
                    role: *role,
                    text: text.clone(),
                    is_final: true,
                }));
            }
            st.turns_seen = parsed.transcript.len();
        }
        for (id, name, args) in parsed.calls {
            let id = id.unwrap_or_else(|| derived_id(&parsed.call_id, &name, &args));
            let (tx, rx) = oneshot::channel();
            match st.results.get_mut(&id) {
                Some(Slot::Done(o)) => {
                    let _ = tx.send(o.clone());
                }
                Some(Slot::Pending(waiters)) => waiters.push(tx),
                None => {
                    st.results.insert(id.clone(), Slot::Pending(vec![tx]));
                    to_send.push(Inbound::ToolCall(ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: args,
                    }));
                }
            }
            waits.push((id, name, rx));
        }
    }
    for inbound in to_send {
        if call.to_session.send(inbound).await.is_err() {
            warn!("the webhook call's session is gone");
            break;
        }
    }
    let deadline = Instant::now() + hook.max_hold;
    let mut out = Vec::with_capacity(waits.len());
    for (id, name, rx) in waits {
        let outcome = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(o)) => o,
            Ok(Err(_)) => Outcome {
                status: "failed".into(),
                output: still_running("internal"),
            },
            Err(_) => Outcome {
                status: "failed".into(),
                output: still_running("timeout"),
            },
        };
        debug!(id = %id, status = %outcome.status, "webhook tool call answered");
        out.push((id, name, outcome));
    }
    out
}

/// The answer for a call that has no result within the hook's hold (or whose session is gone).
fn still_running(code: &str) -> String {
    serde_json::json!({
        "ok": false,
        "error": code,
        "next": "Tell the caller it is still being processed and may complete shortly. Do not call this again.",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v1/hooks/vapi-1"), Some(("vapi-1", None)));
        assert_eq!(
            route("/v1/hooks/el/send_email"),
            Some(("el", Some("send_email")))
        );
        assert_eq!(route("/v1/hooks/"), None);
        assert_eq!(route("/v1/hooks/a/b/c"), None);
    }

    #[test]
    fn a_retry_gets_the_same_id_whatever_the_key_order() {
        let a = derived_id(
            "c1",
            "f",
            &Arguments::Json(r#"{"a":1,"b":{"x":2,"y":3}}"#.into()),
        );
        let b = derived_id(
            "c1",
            "f",
            &Arguments::Text(r#"{"b":{"y":3,"x":2},"a":1}"#.into()),
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            derived_id(
                "c2",
                "f",
                &Arguments::Json(r#"{"a":1,"b":{"x":2,"y":3}}"#.into())
            )
        );
        assert_ne!(
            a,
            derived_id(
                "c1",
                "f",
                &Arguments::Json(r#"{"a":2,"b":{"x":2,"y":3}}"#.into())
            )
        );
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cres", "s3cret"));
        assert!(!same_secret("", "s3cret"));
    }
}
