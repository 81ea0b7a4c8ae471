//! The OpenAI Realtime dialect (GA event names; the beta names where they differ).
//!
//! - The client's `session.update` gets the agent's functions merged into `session.tools`
//!   (the agent's definition wins a name clash); if the client never sends one, toolgate sends
//!   its own once the upstream says `session.created`.
//! - A `response.output_item.done` whose item is a completed `function_call` of an owned name is
//!   a tool call. Every event about an owned call (`response.output_item.*`,
//!   `response.function_call_arguments.*`, `conversation.item.*`, its output item, its place in
//!   `response.done`) is hidden from the client, which never learns the call happened.
//! - The answer is a `conversation.item.create` (`function_call_output`), then one
//!   `response.create` once the response is done and every owned call in it is answered (none
//!   when the response also asked the client for calls of its own: the client continues it).
//! - A filler is an out-of-band `response.create` (`conversation: "none"`) sent only while no
//!   response is active.
//! - A response that ends `cancelled` (the caller barged in) cancels its owned calls not yet
//!   sent.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::{Dialect, Effects, Pass, frame_type};
use crate::protocol::{Arguments, Inbound, Role, ToolCall, ToolCancel, Transcript};

/// Prefix of the `event_id`s toolgate gives its own client events, so the upstream's errors
/// about them are recognised and kept from the client.
const OWN: &str = "toolgate_";

#[derive(Debug, Default)]
struct Response {
    /// Owned calls in it (their call ids).
    owned: Vec<String>,
    /// It also asked the client to run a function.
    client_calls: bool,
    done: bool,
    cancelled: bool,
    continued: bool,
}

/// One relayed OpenAI Realtime session.
#[derive(Debug, Default)]
pub(super) struct OpenAi {
    beta: bool,
    tools: Vec<Value>,
    owned: HashSet<String>,
    /// The tools the client itself declared last.
    client_tools: Vec<Value>,
    /// The client has configured the session at least once.
    configured: bool,
    /// The response being generated, if any.
    active: Option<String>,
    /// toolgate asked for a response that has not started yet.
    requested: bool,
    responses: HashMap<String, Response>,
    /// Owned calls: call id -> (response id, answered).
    calls: HashMap<String, (String, bool)>,
    /// Item ids of owned function calls.
    items: HashSet<String>,
    next_event: u64,
}

impl OpenAi {
    pub(super) fn new(beta: bool) -> OpenAi {
        OpenAi {
            beta,
            ..OpenAi::default()
        }
    }

    fn event_id(&mut self, what: &str) -> String {
        self.next_event += 1;
        format!("{OWN}{what}_{}", self.next_event)
    }

    fn merged_tools(&self) -> Value {
        let mut tools: Vec<Value> = self
            .client_tools
            .iter()
            .filter(|t| {
                t.get("name")
                    .and_then(Value::as_str)
                    .is_none_or(|n| !self.owned.contains(n))
            })
            .cloned()
            .collect();
        tools.extend(self.tools.iter().cloned());
        Value::Array(tools)
    }

    fn is_owned_item(&self, item: &Value) -> bool {
        match item.get("type").and_then(Value::as_str) {
            Some("function_call") => {
                item.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| self.owned.contains(n))
                    || item
                        .get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|id| self.items.contains(id))
            }
            Some("function_call_output") => item
                .get("call_id")
                .and_then(Value::as_str)
                .is_some_and(|c| self.calls.contains_key(c)),
            _ => false,
        }
    }

    /// Ask for the next response when a finished response's owned calls are all answered.
    fn maybe_continue(&mut self, fx: &mut Effects) {
        if self.active.is_some() || self.requested {
            return;
        }
        let ready = self.responses.iter().find_map(|(id, r)| {
            (r.done
                && !r.continued
                && !r.cancelled
                && !r.client_calls
                && !r.owned.is_empty()
                && r.owned
                    .iter()
                    .all(|c| self.calls.get(c).is_some_and(|(_, answered)| *answered)))
            .then(|| id.clone())
        });
        let Some(id) = ready else { return };
        if let Some(r) = self.responses.get_mut(&id) {
            r.continued = true;
        }
        let event_id = self.event_id("continue");
        fx.upstream
            .push(json!({"type": "response.create", "event_id": event_id}).to_string());
        self.requested = true;
        // Done with it: a long call does not keep every response it ever had.
        self.responses
            .retain(|_, r| !(r.done && (r.continued || r.cancelled)));
    }

    fn on_output_item(&mut self, v: &Value, done: bool, fx: &mut Effects) -> Pass {
        let item = &v["item"];
        if item.get("type").and_then(Value::as_str) != Some("function_call") {
            return Pass::Forward;
        }
        let response_id = v
            .get("response_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
        if !self.owned.contains(name) {
            self.responses.entry(response_id).or_default().client_calls = true;
            return Pass::Forward;
        }
        if let Some(id) = item.get("id").and_then(Value::as_str) {
            self.items.insert(id.to_owned());
        }
        let completed = item.get("status").and_then(Value::as_str) == Some("completed");
        if done && completed {
            let call_id = item
                .get("call_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !call_id.is_empty() && !self.calls.contains_key(&call_id) {
                let arguments = item
                    .get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                self.responses
                    .entry(response_id.clone())
                    .or_default()
                    .owned
                    .push(call_id.clone());
                self.calls.insert(call_id.clone(), (response_id, false));
                fx.session.push(Inbound::ToolCall(ToolCall {
                    id: call_id,
                    name: name.to_owned(),
                    arguments: Arguments::Text(arguments),
                }));
            }
        }
        Pass::Hide
    }

    fn on_response_done(&mut self, mut v: Value, fx: &mut Effects) -> Pass {
        let response = &v["response"];
        let id = response
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let cancelled = response.get("status").and_then(Value::as_str) == Some("cancelled");
        if self.active.as_deref() == Some(id.as_str()) {
            self.active = None;
        }
        let r = self.responses.entry(id.clone()).or_default();
        r.done = true;
        r.cancelled = cancelled;
        if cancelled {
            for call_id in r.owned.clone() {
                if self
                    .calls
                    .get(&call_id)
                    .is_some_and(|(_, answered)| !answered)
                {
                    fx.session.push(Inbound::ToolCancel(ToolCancel {
                        id: call_id,
                        reason: Some("response_cancelled".into()),
                    }));
                }
            }
        }
        self.maybe_continue(fx);
        // The client never sees owned calls, not even in the response's output list.
        let hidden = |item: &Value| self.is_owned_item(item);
        let has_owned = v["response"]["output"]
            .as_array()
            .is_some_and(|out| out.iter().any(hidden));
        if !has_owned {
            return Pass::Forward;
        }
        let owned = self.owned.clone();
        let items = self.items.clone();
        if let Some(out) = v["response"]["output"].as_array_mut() {
            out.retain(|item| {
                let name_owned = item.get("type").and_then(Value::as_str) == Some("function_call")
                    && (item
                        .get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| owned.contains(n))
                        || item
                            .get("id")
                            .and_then(Value::as_str)
                            .is_some_and(|i| items.contains(i)));
                !name_owned
            });
        }
        Pass::Replace(v.to_string())
    }
}

impl Dialect for OpenAi {
    fn ready(&mut self, tools: Vec<Value>) {
        self.owned = tools
            .iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect();
        self.tools = tools;
    }

    fn on_client(&mut self, text: &str, _fx: &mut Effects) -> Pass {
        if frame_type(text).as_deref() != Some("session.update") {
            return Pass::Forward;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(text) else {
            return Pass::Forward;
        };
        self.configured = true;
        let Some(session) = v.get_mut("session").and_then(Value::as_object_mut) else {
            return Pass::Forward;
        };
        if let Some(tools) = session.get("tools").and_then(Value::as_array) {
            self.client_tools = tools.clone();
        }
        session.insert("tools".into(), self.merged_tools());
        Pass::Replace(v.to_string())
    }

    fn on_upstream(&mut self, text: &str, fx: &mut Effects) -> Pass {
        let Some(ty) = frame_type(text) else {
            return Pass::Forward;
        };
        match ty.as_ref() {
            "session.created" => {
                if !self.configured && !self.tools.is_empty() {
                    // The client has not configured the session (yet): offer the agent's
                    // functions now; its own session.update will merge them again.
                    let mut session = json!({"tools": self.merged_tools()});
                    if !self.beta {
                        session["type"] = json!("realtime");
                    }
                    let event_id = self.event_id("tools");
                    fx.upstream.push(
                        json!({"type": "session.update", "event_id": event_id, "session": session})
                            .to_string(),
                    );
                }
                Pass::Forward
            }
            "response.created" => {
                if let Ok(v) = serde_json::from_str::<Value>(text) {
                    self.active = v["response"]["id"].as_str().map(str::to_owned);
                }
                self.requested = false;
                Pass::Forward
            }
            "response.done" => match serde_json::from_str::<Value>(text) {
                Ok(v) => self.on_response_done(v, fx),
                Err(_) => Pass::Forward,
            },
            "response.output_item.added" | "response.output_item.done" => {
                match serde_json::from_str::<Value>(text) {
                    Ok(v) => self.on_output_item(&v, ty == "response.output_item.done", fx),
                    Err(_) => Pass::Forward,
                }
            }
            "response.function_call_arguments.delta" | "response.function_call_arguments.done" => {
                let owned = serde_json::from_str::<Value>(text).is_ok_and(|v| {
                    v.get("item_id")
                        .and_then(Value::as_str)
                        .is_some_and(|i| self.items.contains(i))
                        || v.get("call_id")
                            .and_then(Value::as_str)
                            .is_some_and(|c| self.calls.contains_key(c))
                        || v.get("name")
                            .and_then(Value::as_str)
                            .is_some_and(|n| self.owned.contains(n))
                });
                if owned { Pass::Hide } else { Pass::Forward }
            }
            "conversation.item.added" | "conversation.item.done" | "conversation.item.created" => {
                match serde_json::from_str::<Value>(text) {
                    Ok(v) if self.is_owned_item(&v["item"]) => {
                        if let Some(id) = v["item"]["id"].as_str() {
                            self.items.insert(id.to_owned());
                        }
                        Pass::Hide
                    }
                    _ => Pass::Forward,
                }
            }
            "conversation.item.input_audio_transcription.completed" => {
                if let Ok(v) = serde_json::from_str::<Value>(text)
                    && let Some(t) = v["transcript"].as_str()
                    && !t.trim().is_empty()
                {
                    fx.session.push(turn(Role::Caller, t));
                }
                Pass::Forward
            }
            "response.output_audio_transcript.done"
            | "response.audio_transcript.done"
            | "response.output_text.done"
            | "response.text.done" => {
                if let Ok(v) = serde_json::from_str::<Value>(text) {
                    let said = v["transcript"].as_str().or_else(|| v["text"].as_str());
                    if let Some(t) = said.filter(|t| !t.trim().is_empty()) {
                        fx.session.push(turn(Role::Agent, t));
                    }
                }
                Pass::Forward
            }
            "error" => {
                // An error about toolgate's own event (a filler that met a response starting
                // at the same moment) is toolgate's business, not the client's.
                let own = serde_json::from_str::<Value>(text).is_ok_and(|v| {
                    v["error"]["event_id"]
                        .as_str()
                        .is_some_and(|e| e.starts_with(OWN))
                });
                if own {
                    tracing::debug!("the upstream refused one of toolgate's own events");
                    self.requested = false;
                    Pass::Hide
                } else {
                    Pass::Forward
                }
            }
            _ => Pass::Forward,
        }
    }

    fn on_filler(&mut self, id: String, text: String, fx: &mut Effects) {
        let unanswered = self.calls.get(&id).is_some_and(|(_, a)| !a);
        if !unanswered || self.active.is_some() || self.requested {
            return;
        }
        let event_id = self.event_id("filler");
        fx.upstream.push(
            json!({"type": "response.create", "event_id": event_id, "response": {
                "conversation": "none",
                "input": [],
                "instructions": format!("Say exactly this, and nothing else: {text}"),
                "metadata": {"toolgate": "filler"},
            }})
            .to_string(),
        );
        self.requested = true;
    }

    fn on_result(&mut self, id: String, _status: Option<String>, output: String, fx: &mut Effects) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.1 = true;
        let event_id = self.event_id("output");
        fx.upstream.push(
            json!({"type": "conversation.item.create", "event_id": event_id, "item": {
                "type": "function_call_output",
                "call_id": id,
                "output": output,
            }})
            .to_string(),
        );
        self.maybe_continue(fx);
    }
}

fn turn(role: Role, text: &str) -> Inbound {
    Inbound::Transcript(Transcript {
        role,
        text: text.to_owned(),
        is_final: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::SessionFrame;

    fn relay() -> OpenAi {
        let mut r = OpenAi::new(false);
        r.ready(vec![json!({"type": "function", "name": "send_email",
            "description": "Email it", "parameters": {"type": "object", "properties": {}}})]);
        r
    }

    #[test]
    fn the_agents_functions_are_merged_into_session_update_and_win_a_clash() {
        let mut r = relay();
        let mut fx = Effects::default();
        let update = json!({"type": "session.update", "session": {"type": "realtime", "tools": [
            {"type": "function", "name": "lookup", "parameters": {}},
            {"type": "function", "name": "send_email", "description": "the client's", "parameters": {}}]}});
        let Pass::Replace(out) = r.on_client(&update.to_string(), &mut fx) else {
            panic!("not rewritten");
        };
        let v: Value = serde_json::from_str(&out).unwrap();
        let names: Vec<_> = v["session"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap(), t["description"].as_str()))
            .collect();
        assert_eq!(
            names,
            vec![("lookup", None), ("send_email", Some("Email it"))]
        );
        assert_eq!(v["session"]["type"], "realtime");
    }

    #[test]
    fn an_owned_call_is_hidden_answered_and_continued_once() {
        let mut r = relay();
        let mut fx = Effects::default();
        let ev = |v: Value| v.to_string();
        assert_eq!(
            r.on_upstream(
                &ev(json!({"type": "response.created", "response": {"id": "resp_1"}})),
                &mut fx
            ),
            Pass::Forward
        );
        let item = json!({"id": "item_1", "type": "function_call", "status": "in_progress",
            "name": "send_email", "call_id": "call_1", "arguments": ""});
        assert_eq!(
            r.on_upstream(&ev(json!({"type": "response.output_item.added", "response_id": "resp_1", "item": item})), &mut fx),
            Pass::Hide
        );
        assert_eq!(
            r.on_upstream(&ev(json!({"type": "response.function_call_arguments.delta", "item_id": "item_1", "call_id": "call_1", "delta": "{"})), &mut fx),
            Pass::Hide
        );
        let mut done = item.clone();
        done["status"] = json!("completed");
        done["arguments"] = json!("{\"to\":\"a@b.c\"}");
        assert_eq!(
            r.on_upstream(&ev(json!({"type": "response.output_item.done", "response_id": "resp_1", "item": done})), &mut fx),
            Pass::Hide
        );
        assert!(
            matches!(&fx.session[..], [Inbound::ToolCall(c)] if c.id == "call_1" && c.name == "send_email")
        );
        fx.session.clear();
        let Pass::Replace(out) = r.on_upstream(
            &ev(json!({"type": "response.done", "response": {"id": "resp_1", "status": "completed", "output": [done]}})),
            &mut fx,
        ) else {
            panic!("the output list keeps the owned call");
        };
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap()["response"]["output"],
            json!([])
        );
        assert!(
            fx.upstream.is_empty(),
            "not answered yet: no response.create"
        );
        r.on_session(
            SessionFrame {
                ty: "tool.result".into(),
                id: Some("call_1".into()),
                output: Some("{\"ok\":true}".into()),
                status: Some("succeeded".into()),
                text: None,
                tools: None,
                code: None,
                message: None,
            },
            &mut fx,
        );
        let sent: Vec<Value> = fx
            .upstream
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        assert_eq!(sent[0]["type"], "conversation.item.create");
        assert_eq!(sent[0]["item"]["call_id"], "call_1");
        assert_eq!(sent[0]["item"]["output"], "{\"ok\":true}");
        assert_eq!(sent[1]["type"], "response.create");
        assert_eq!(sent.len(), 2);
        // Its output item echoed back is toolgate's, not the client's.
        assert_eq!(
            r.on_upstream(&ev(json!({"type": "conversation.item.added", "item": {"id": "item_2", "type": "function_call_output", "call_id": "call_1"}})), &mut fx),
            Pass::Hide
        );
    }

    #[test]
    fn a_cancelled_response_cancels_its_owned_calls_not_yet_answered() {
        let mut r = relay();
        let mut fx = Effects::default();
        let done = json!({"id": "item_1", "type": "function_call", "status": "completed",
            "name": "send_email", "call_id": "call_1", "arguments": "{}"});
        r.on_upstream(
            &json!({"type": "response.created", "response": {"id": "resp_1"}}).to_string(),
            &mut fx,
        );
        r.on_upstream(
            &json!({"type": "response.output_item.done", "response_id": "resp_1", "item": done})
                .to_string(),
            &mut fx,
        );
        fx.session.clear();
        r.on_upstream(
            &json!({"type": "response.done", "response": {"id": "resp_1", "status": "cancelled",
                "status_details": {"type": "cancelled", "reason": "turn_detected"}, "output": []}})
            .to_string(),
            &mut fx,
        );
        assert!(
            matches!(&fx.session[..], [Inbound::ToolCancel(c)] if c.id == "call_1"),
            "{:?}",
            fx.session
        );
        // Its answer still goes upstream, but no response.create follows a cancelled response.
        r.on_session(
            SessionFrame {
                ty: "tool.result".into(),
                id: Some("call_1".into()),
                output: Some("{\"ok\":false,\"error\":\"cancelled\"}".into()),
                status: Some("cancelled".into()),
                text: None,
                tools: None,
                code: None,
                message: None,
            },
            &mut fx,
        );
        assert_eq!(fx.upstream.len(), 1, "{:?}", fx.upstream);
        assert!(fx.upstream[0].contains("function_call_output"));
    }

    #[test]
    fn a_client_function_passes_untouched() {
        let mut r = relay();
        let mut fx = Effects::default();
        let added = json!({"type": "response.output_item.added", "response_id": "r", "item": {
            "id": "i", "type": "function_call", "name": "lookup", "call_id": "c", "arguments": ""}});
        assert_eq!(r.on_upstream(&added.to_string(), &mut fx), Pass::Forward);
        let args = json!({"type": "response.function_call_arguments.done", "item_id": "i", "call_id": "c", "name": "lookup", "arguments": "{}"});
        assert_eq!(r.on_upstream(&args.to_string(), &mut fx), Pass::Forward);
        assert!(fx.session.is_empty());
    }
}
