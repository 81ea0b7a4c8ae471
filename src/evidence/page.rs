//! The call detail page (`GET /calls/{call_id}`): one server-rendered HTML page a person reads
//! to see what was said and what was done. The transcript runs down the page; each action sits
//! where the model asked for it, with its status, guard verdicts, missing fields, timing and the
//! redacted request and response. No JavaScript; [`askama`] escapes every value.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use askama::Template;
use serde_json::Value;

use super::store::CallHistory;
use super::{GuardRecord, Invocation, SourceType};
use crate::clock::Millis;

#[derive(Template)]
#[template(path = "call.html")]
struct CallPage<'a> {
    call_id: &'a str,
    agent: &'a str,
    org: &'a str,
    caller: Option<&'a str>,
    channel: &'a str,
    started: String,
    duration: Option<String>,
    end_reason: Option<&'a str>,
    actions: usize,
    summary: Vec<Count>,
    items: Vec<Item>,
    partials: usize,
}

struct Count {
    status: String,
    count: usize,
    class: &'static str,
}

struct Item {
    at: String,
    kind: &'static str,
    role: String,
    text: String,
    action: Option<Box<ActionView>>,
}

struct ActionView {
    invocation_id: String,
    function: String,
    status: String,
    class: &'static str,
    told: Option<String>,
    error: Option<String>,
    missing: Vec<String>,
    cancelled: Option<String>,
    at_least_once: bool,
    timing: Vec<(&'static str, String)>,
    guards: Vec<GuardRecord>,
    inputs: Vec<(String, String, String)>,
    request: Option<String>,
    response: Option<String>,
    attempts: Vec<AttemptView>,
}

struct AttemptView {
    at: String,
    status: String,
    class: &'static str,
    latency: String,
    detail: String,
}

/// A status's badge colour.
fn class(status: &str) -> &'static str {
    match status {
        "succeeded" => "b-ok",
        "deferred" => "b-warn",
        "failed" | "rejected" | "dead" => "b-bad",
        _ => "b-calm",
    }
}

/// Wall-clock time, to the second, in UTC (`2026-11-29 08:18:36 UTC`).
pub fn wall_clock(at: Millis) -> String {
    wall(at)
}

/// Wall-clock time, to the second, in UTC.
fn wall(at: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(at.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", s.trim_end_matches('Z').replace('T', " "))
}

/// Time since the call started: `0:07.4`, `12:03.0`.
fn offset(at: Millis, start: Millis) -> String {
    let ms = (at - start).max(0);
    let tenths = (ms / 100) % 10;
    let s = ms / 1000;
    format!("{}:{:02}.{tenths}", s / 60, s % 60)
}

fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{}.{} s", s, (ms.max(0) % 1000) / 100)
    }
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        // A body kept as length and hash.
        Value::Object(m)
            if m.len() == 2 && m.contains_key("length") && m.contains_key("sha256") =>
        {
            format!(
                "[{} characters, sha256 {}]",
                m["length"],
                m["sha256"].as_str().unwrap_or("")
            )
        }
        other => other.to_string(),
    }
}

fn action_view(inv: &Invocation, attempts: &[&Invocation], start: Millis) -> ActionView {
    let t = &inv.timeline;
    let mut timing = Vec::new();
    timing.push(("Asked", offset(inv.received_at, start)));
    if !t.filler_ms.is_empty() {
        let list: Vec<String> = t.filler_ms.iter().map(|m| format!("{m} ms")).collect();
        timing.push(("Filler spoken at", list.join(", ")));
    }
    match t.answered_ms {
        Some(a) => timing.push((
            "Answered after",
            format!("{a} ms ({})", inv.answered_status),
        )),
        None if inv.answered_status != "none" => timing.push((
            "Answered",
            format!(
                "never: the call had ended (would have been {})",
                inv.answered_status
            ),
        )),
        None => {}
    }
    if let Some(sent) = t.provider_sent_ms {
        timing.push(("Provider request sent at", format!("{sent} ms")));
    }
    if let Some(l) = inv.latency_ms {
        timing.push(("Provider took", format!("{l} ms")));
    }
    if let Some(id) = &inv.provider_message_id {
        timing.push(("Provider message id", id.clone()));
    }
    if let Some(job) = &inv.workflow_job_id {
        timing.push(("Workflow job", job.clone()));
    }
    if let (false, Some(f)) = (inv.answered_status == inv.status, inv.final_at) {
        timing.push(("Settled", format!("{} ({})", offset(f, start), inv.status)));
    }
    let told = (inv.answered_status != inv.status && inv.answered_status != "none")
        .then(|| format!("the model was told: {}", inv.answered_status));
    let error = match (&inv.error_code, &inv.error_message) {
        (Some(c), Some(m)) => Some(format!("{c}: {m}")),
        (Some(c), None) => Some(c.clone()),
        (None, Some(m)) => Some(m.clone()),
        (None, None) => None,
    };
    let cancelled = inv.cancelled.as_ref().map(|c| {
        let outcome = match c.provider_outcome.as_str() {
            "not_sent" => "nothing had been sent",
            "succeeded" => "the provider had already accepted it",
            "failed" => "the provider had refused it",
            _ => "whether the provider got it is unknown",
        };
        format!(
            "Cancelled by the {} ({}); {outcome}.",
            c.by.replace('_', " "),
            c.reason.as_deref().unwrap_or("tool.cancel")
        )
    });
    ActionView {
        invocation_id: inv.invocation_id.clone(),
        function: inv.function.clone(),
        status: inv.status.clone(),
        class: class(&inv.status),
        told,
        error,
        missing: inv.missing_fields.clone(),
        cancelled,
        at_least_once: inv.at_least_once,
        timing,
        guards: inv.guards.clone(),
        inputs: inv
            .inputs_redacted
            .iter()
            .map(|(k, v)| (k.clone(), value_text(&v.value), v.source.clone()))
            .collect(),
        // Through a value, so the body is indented with the rest (it is kept as compact text).
        request: inv
            .request_payload_redacted
            .as_ref()
            .map(|r| pretty(&serde_json::to_value(r).unwrap_or_default())),
        response: inv.response_payload_redacted.as_ref().map(pretty),
        attempts: attempts
            .iter()
            .map(|a| AttemptView {
                at: offset(a.received_at, start),
                status: a.status.clone(),
                class: class(&a.status),
                latency: a
                    .latency_ms
                    .map(|l| format!("{l} ms"))
                    .unwrap_or_else(|| "not sent".into()),
                detail: match (&a.error_code, &a.error_message) {
                    (Some(c), Some(m)) => format!("{c}: {m}"),
                    (Some(c), None) => c.clone(),
                    _ => a.provider_message_id.clone().unwrap_or_default(),
                },
            })
            .collect(),
    }
}

/// Render a call's page.
pub fn render(call: &CallHistory) -> String {
    let start = call.started_at;
    let by_id: HashMap<&str, &Invocation> = call
        .invocations
        .iter()
        .map(|i| (i.invocation_id.as_str(), i))
        .collect();
    let mut attempts: HashMap<&str, Vec<&Invocation>> = HashMap::new();
    for inv in &call.invocations {
        if let (SourceType::Workflow, Some(parent)) = (inv.source_type, &inv.parent_invocation_id) {
            attempts.entry(parent.as_str()).or_default().push(inv);
        }
    }
    let mut items = Vec::new();
    let mut partials = 0;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    for e in &call.timeline {
        let at = e.get("at").and_then(Value::as_i64).unwrap_or(start);
        let marker = |t: String| Item {
            at: offset(at, start),
            kind: "marker",
            role: String::new(),
            text: t,
            action: None,
        };
        match e.get("type").and_then(Value::as_str).unwrap_or("") {
            "turn" => {
                if e.get("final").and_then(Value::as_bool) == Some(false) {
                    partials += 1;
                    continue;
                }
                items.push(Item {
                    at: offset(at, start),
                    kind: "turn",
                    role: text(e, "role"),
                    text: text(e, "text"),
                    action: None,
                });
            }
            "consent" => items.push(marker(format!("Consent {}", text(e, "text")))),
            "tool.call" => {
                let id = text(e, "invocation_id");
                if let Some(inv) = by_id.get(id.as_str()) {
                    let tries = attempts.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
                    items.push(Item {
                        at: offset(at, start),
                        kind: "action",
                        role: String::new(),
                        text: String::new(),
                        action: Some(Box::new(action_view(inv, tries, start))),
                    });
                }
            }
            "job.outcome" => {
                let function = by_id
                    .get(text(e, "invocation_id").as_str())
                    .map(|i| i.function.clone())
                    .unwrap_or_default();
                items.push(marker(format!(
                    "{function}: the deferred action ended {}",
                    text(e, "status")
                )));
            }
            "session.start" => items.push(marker("Call started".into())),
            "session.end" => items.push(marker(format!(
                "Call ended ({})",
                e.get("reason").and_then(Value::as_str).unwrap_or("closed")
            ))),
            // Fillers, results and workflow attempts are shown inside their action.
            _ => {}
        }
    }
    let agent_calls: Vec<&Invocation> = call
        .invocations
        .iter()
        .filter(|i| i.source_type == SourceType::Agent)
        .collect();
    let mut summary: Vec<Count> = Vec::new();
    for inv in &agent_calls {
        match summary.iter_mut().find(|c| c.status == inv.status) {
            Some(c) => c.count += 1,
            None => summary.push(Count {
                status: inv.status.clone(),
                count: 1,
                class: class(&inv.status),
            }),
        }
    }
    CallPage {
        call_id: &call.call_id,
        agent: &call.agent,
        org: &call.org,
        caller: call.caller.as_deref(),
        channel: &call.channel,
        started: wall(start),
        duration: call.ended_at.map(|e| duration(e - start)),
        end_reason: call.end_reason.as_deref(),
        actions: agent_calls.len(),
        summary,
        items,
        partials,
    }
    .render()
    .unwrap_or_else(|e| format!("<!doctype html><p>the page could not be rendered: {e}</p>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_durations_read_naturally() {
        assert_eq!(offset(1_000, 1_000), "0:00.0");
        assert_eq!(offset(8_450, 1_000), "0:07.4");
        assert_eq!(offset(724_000, 1_000), "12:03.0");
        assert_eq!(duration(95_000), "1 min 35 s");
        assert_eq!(duration(4_250), "4.2 s");
        assert_eq!(wall(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn every_value_is_escaped() {
        let call = CallHistory {
            org: "acme".into(),
            call_id: "<script>alert(1)</script>".into(),
            agent: "a&b".into(),
            caller: None,
            channel: "v1".into(),
            started_at: 0,
            ended_at: None,
            end_reason: None,
            timeline: vec![serde_json::json!({"type": "turn", "role": "caller",
                "text": "<img src=x onerror=alert(2)>", "final": true, "at": 5})],
            invocations: Vec::new(),
        };
        let html = render(&call);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(html.contains("&#60;img src=x") || html.contains("&lt;img src=x"));
    }
}
