//! Vapi: `{"message": {...}}` with `message.type` `tool-calls` (run them) or
//! `end-of-call-report` (the call is over); other message types sent to the same URL are
//! acknowledged and ignored.

use hyper::StatusCode;
use serde_json::{Value, json};

use super::{Outcome, Parsed, arguments, bad, variables};
use crate::net::HttpResponse;
use crate::protocol::Role;

/// Read a Vapi server message.
pub(super) fn parse(body: &[u8]) -> Result<Parsed, HttpResponse> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let m = v
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| bad("a Vapi server message is {\"message\": {...}}"))?;
    let ty = m["type"]
        .as_str()
        .ok_or_else(|| bad("message.type is missing"))?;
    let call = &m["call"];
    let call_id = call["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("message.call.id is missing"))?
        .to_owned();
    let mut p = Parsed {
        call_id,
        ..Parsed::default()
    };
    match ty {
        "tool-calls" => {}
        "end-of-call-report" => {
            p.ended = true;
            return Ok(p);
        }
        other => {
            return Err(crate::net::json(
                StatusCode::OK,
                &json!({"ignored": format!("message type {other:?} needs no answer from toolgate")}),
            ));
        }
    }
    p.caller = m["customer"]["number"]
        .as_str()
        .or_else(|| call["customer"]["number"].as_str())
        .map(str::to_owned);
    p.variables = variables(call["assistantOverrides"].get("variableValues"));
    if let Some(messages) = m["artifact"]["messages"].as_array() {
        for msg in messages {
            let role = match msg["role"].as_str() {
                Some("user") => Role::Caller,
                Some("bot" | "assistant") => Role::Agent,
                _ => continue,
            };
            if let Some(text) = msg["message"].as_str().filter(|t| !t.trim().is_empty()) {
                p.transcript.push((role, text.to_owned()));
            }
        }
    }
    let list = m["toolCallList"]
        .as_array()
        .or_else(|| m["toolCalls"].as_array())
        .ok_or_else(|| bad("message.toolCallList is missing"))?;
    for c in list {
        let id = c["id"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .ok_or_else(|| bad("a toolCallList entry has no id"))?;
        let f = &c["function"];
        let name = f["name"]
            .as_str()
            .ok_or_else(|| bad("a toolCallList entry has no function.name"))?;
        p.calls.push((
            Some(id.to_owned()),
            name.to_owned(),
            arguments(f.get("arguments")),
        ));
    }
    if p.calls.is_empty() {
        return Err(bad("message.toolCallList is empty"));
    }
    Ok(p)
}

/// `{"results": [{"toolCallId", "name", "result"}]}`, one per call in request order, always
/// HTTP 200 (Vapi ignores any other status). `result` is the output string, one line; `error`
/// only for toolgate's own faults.
pub(super) fn answer(outcomes: &[(String, String, Outcome)]) -> HttpResponse {
    let results: Vec<Value> = outcomes
        .iter()
        .map(|(id, name, o)| {
            let line = o.output.replace(['\n', '\r'], " ");
            let internal = serde_json::from_str::<Value>(&o.output)
                .is_ok_and(|v| v["error"] == "internal");
            if internal {
                json!({"toolCallId": id, "name": name, "result": line, "error": "toolgate failed while running this call"})
            } else {
                json!({"toolCallId": id, "name": name, "result": line})
            }
        })
        .collect();
    crate::net::json(StatusCode::OK, &json!({ "results": results }))
}
