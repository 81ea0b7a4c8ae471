//! The Deepgram Voice Agent dialect.
//!
//! - The client's `Settings` gets the owned functions added to `agent.think.functions` (to each
//!   think provider when it lists fallbacks): no `endpoint`, so Deepgram asks the client side to
//!   run them, and `defer_until_eot: true`, so a call is held until the caller's turn is
//!   confirmed. The agent's definition wins a name clash.
//! - A `FunctionCallRequest` entry with `client_side: true` and an owned name is a tool call,
//!   answered upstream with `FunctionCallResponse`; the client sees only the other entries (or
//!   nothing). `FunctionCallCancelled` cancels owned calls and sends no response for them.
//! - A filler is `InjectAgentMessage`; an `InjectionRefused` for it drops that filler and is not
//!   shown to the client.
//! - `ConversationText` feeds the call history (`user`: the caller, `assistant`: the agent).

use std::collections::{HashMap, VecDeque};

use serde_json::{Value, json};

use super::{Dialect, Effects, Pass, frame_type};
use crate::protocol::{Arguments, Inbound, Role, ToolCall, ToolCancel, Transcript};

/// One relayed Deepgram Voice Agent session.
#[derive(Debug, Default)]
pub(super) struct Deepgram {
    /// The owned functions in Deepgram's shape.
    functions: Vec<Value>,
    owned: std::collections::HashSet<String>,
    /// Owned calls not answered yet: id -> name.
    calls: HashMap<String, String>,
    /// Filler lines injected and not yet spoken or refused, oldest first.
    injected: VecDeque<String>,
}

impl Deepgram {
    fn merge_functions(&self, think: &mut Value) {
        let Some(think) = think.as_object_mut() else {
            return;
        };
        let mut functions: Vec<Value> = think
            .get("functions")
            .and_then(Value::as_array)
            .map(|f| {
                f.iter()
                    .filter(|f| {
                        f.get("name")
                            .and_then(Value::as_str)
                            .is_none_or(|n| !self.owned.contains(n))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        functions.extend(self.functions.iter().cloned());
        think.insert("functions".into(), Value::Array(functions));
    }

    fn split_functions(&self, v: &Value) -> (Vec<Value>, Vec<Value>) {
        v.get("functions")
            .and_then(Value::as_array)
            .map(|fs| {
                fs.iter().cloned().partition(|f| {
                    f.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| self.owned.contains(n))
                        && f.get("client_side").and_then(Value::as_bool) != Some(false)
                })
            })
            .unwrap_or_default()
    }
}

fn rewritten(mut v: Value, others: Vec<Value>) -> Pass {
    if others.is_empty() {
        return Pass::Hide;
    }
    v["functions"] = Value::Array(others);
    Pass::Replace(v.to_string())
}

impl Dialect for Deepgram {
    fn ready(&mut self, tools: Vec<Value>) {
        self.functions = tools
            .iter()
            .map(|t| {
                json!({
                    "name": t["name"],
                    "description": t["description"],
                    "parameters": t["parameters"],
                    "defer_until_eot": true,
                })
            })
            .collect();
        self.owned = tools
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
    }

    fn on_client(&mut self, text: &str, _fx: &mut Effects) -> Pass {
        if frame_type(text).as_deref() != Some("Settings") {
            return Pass::Forward;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(text) else {
            return Pass::Forward;
        };
        let Some(agent) = v.get_mut("agent").and_then(Value::as_object_mut) else {
            return Pass::Forward;
        };
        let think = agent.entry("think").or_insert_with(|| json!({}));
        match think {
            Value::Array(providers) => {
                for p in providers {
                    self.merge_functions(p);
                }
            }
            other => self.merge_functions(other),
        }
        Pass::Replace(v.to_string())
    }

    fn on_upstream(&mut self, text: &str, fx: &mut Effects) -> Pass {
        let Some(ty) = frame_type(text) else {
            return Pass::Forward;
        };
        match ty.as_ref() {
            "FunctionCallRequest" => {
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    return Pass::Forward;
                };
                let (owned, others) = self.split_functions(&v);
                if owned.is_empty() {
                    return Pass::Forward;
                }
                for f in owned {
                    let (Some(id), Some(name)) = (f["id"].as_str(), f["name"].as_str()) else {
                        continue;
                    };
                    if self.calls.contains_key(id) {
                        continue;
                    }
                    self.calls.insert(id.to_owned(), name.to_owned());
                    let arguments = match &f["arguments"] {
                        Value::String(s) => Arguments::Text(s.clone()),
                        Value::Null => Arguments::Absent,
                        other => Arguments::Json(other.to_string()),
                    };
                    fx.session.push(Inbound::ToolCall(ToolCall {
                        id: id.to_owned(),
                        name: name.to_owned(),
                        arguments,
                    }));
                }
                rewritten(v, others)
            }
            "FunctionCallCancelled" => {
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    return Pass::Forward;
                };
                let (owned, others): (Vec<Value>, Vec<Value>) = v
                    .get("functions")
                    .and_then(Value::as_array)
                    .map(|fs| {
                        fs.iter().cloned().partition(|f| {
                            f["id"]
                                .as_str()
                                .is_some_and(|id| self.calls.contains_key(id))
                        })
                    })
                    .unwrap_or_default();
                if owned.is_empty() {
                    return Pass::Forward;
                }
                for f in owned {
                    if let Some(id) = f["id"].as_str() {
                        fx.session.push(Inbound::ToolCancel(ToolCancel {
                            id: id.to_owned(),
                            reason: Some("function_call_cancelled".into()),
                        }));
                    }
                }
                rewritten(v, others)
            }
            "ConversationText" => {
                if let Ok(v) = serde_json::from_str::<Value>(text)
                    && let Some(content) = v["content"].as_str()
                {
                    let role = match v["role"].as_str() {
                        Some("user") => Some(Role::Caller),
                        Some("assistant") => Some(Role::Agent),
                        _ => None,
                    };
                    if role == Some(Role::Agent)
                        && self
                            .injected
                            .front()
                            .is_some_and(|l| l.trim() == content.trim())
                    {
                        self.injected.pop_front();
                    }
                    if let Some(role) = role.filter(|_| !content.trim().is_empty()) {
                        fx.session.push(Inbound::Transcript(Transcript {
                            role,
                            text: content.to_owned(),
                            is_final: true,
                        }));
                    }
                }
                Pass::Forward
            }
            "InjectionRefused" if !self.injected.is_empty() => {
                // A filler toolgate injected met a turn in progress: dropped, as if never sent.
                self.injected.pop_front();
                Pass::Hide
            }
            _ => Pass::Forward,
        }
    }

    fn on_filler(&mut self, id: String, text: String, fx: &mut Effects) {
        if !self.calls.contains_key(&id) {
            return;
        }
        fx.upstream
            .push(json!({"type": "InjectAgentMessage", "message": text}).to_string());
        self.injected.push_back(text);
    }

    fn on_result(&mut self, id: String, status: Option<String>, output: String, fx: &mut Effects) {
        let Some(name) = self.calls.remove(&id) else {
            return;
        };
        if status.as_deref() == Some("cancelled") {
            // Deepgram cancelled it: it expects no response.
            return;
        }
        fx.upstream.push(
            json!({"type": "FunctionCallResponse", "id": id, "name": name, "content": output})
                .to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> Deepgram {
        let mut r = Deepgram::default();
        r.ready(vec![json!({"type": "function", "name": "send_email",
            "description": "Email it", "parameters": {"type": "object", "properties": {}}})]);
        r
    }

    #[test]
    fn owned_functions_join_the_settings_client_side_and_deferred_to_the_end_of_turn() {
        let mut r = relay();
        let mut fx = Effects::default();
        let settings = json!({"type": "Settings", "agent": {"think": {"provider": {"type": "open_ai"},
            "functions": [{"name": "lookup", "description": "x", "parameters": {}}]}}});
        let Pass::Replace(out) = r.on_client(&settings.to_string(), &mut fx) else {
            panic!("not rewritten");
        };
        let v: Value = serde_json::from_str(&out).unwrap();
        let f = &v["agent"]["think"]["functions"];
        assert_eq!(f[0]["name"], "lookup");
        assert_eq!(f[1]["name"], "send_email");
        assert_eq!(f[1]["defer_until_eot"], true);
        assert!(f[1].get("endpoint").is_none());
    }

    #[test]
    fn a_mixed_request_keeps_the_clients_entries_and_takes_the_owned_ones() {
        let mut r = relay();
        let mut fx = Effects::default();
        let req = json!({"type": "FunctionCallRequest", "functions": [
            {"id": "fc_1", "name": "send_email", "arguments": "{}", "client_side": true},
            {"id": "fc_2", "name": "lookup", "arguments": "{}", "client_side": true}]});
        let Pass::Replace(out) = r.on_upstream(&req.to_string(), &mut fx) else {
            panic!("not rewritten");
        };
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["functions"].as_array().unwrap().len(), 1);
        assert_eq!(v["functions"][0]["id"], "fc_2");
        assert!(matches!(&fx.session[..], [Inbound::ToolCall(c)] if c.id == "fc_1"));
        // Cancelled: no response is sent for it.
        let cancel = json!({"type": "FunctionCallCancelled", "functions": [{"id": "fc_1", "name": "send_email"}]});
        assert_eq!(r.on_upstream(&cancel.to_string(), &mut fx), Pass::Hide);
    }
}
