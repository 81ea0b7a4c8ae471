//! `toolgate tools`: an agent's functions as each platform's own tool definitions (SPEC §13.1),
//! from the same source as `session.ready`: names, descriptions, JSON-Schema parameters, the
//! server URL of the agent's `[[webhooks]]` entry for that platform, and the functions' filler
//! lines as the platform's own "request-start" / "delayed" messages.

use serde_json::{Value, json};

use crate::config::{Agent, Config, DEFAULT_FILLER, Function, Platform};

/// The formats `toolgate tools` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenAI Realtime `session.tools` (the same as `session.ready`).
    Openai,
    /// Vapi function tools.
    Vapi,
    /// Retell custom functions.
    Retell,
    /// ElevenLabs webhook tools.
    Elevenlabs,
    /// Deepgram Voice Agent `agent.think.functions`.
    Deepgram,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        Ok(match s {
            "openai" => Format::Openai,
            "vapi" => Format::Vapi,
            "retell" => Format::Retell,
            "elevenlabs" => Format::Elevenlabs,
            "deepgram" => Format::Deepgram,
            other => {
                return Err(format!(
                    "unknown format {other:?}: one of openai, vapi, retell, elevenlabs, deepgram"
                ));
            }
        })
    }
}

/// The definitions, and notes for the person pasting them (a missing `[[webhooks]]` entry).
pub fn tools(config: &Config, agent: &Agent, format: Format, base: &str) -> (Value, Vec<String>) {
    let base = base.trim_end_matches('/');
    let mut notes = Vec::new();
    let platform = match format {
        Format::Vapi => Some(Platform::Vapi),
        Format::Retell => Some(Platform::Retell),
        Format::Elevenlabs => Some(Platform::Elevenlabs),
        Format::Openai | Format::Deepgram => None,
    };
    let hook = platform.and_then(|p| {
        config
            .webhooks
            .iter()
            .find(|h| h.agent == agent.id && h.platform == p)
    });
    let hook_id = match (platform, hook) {
        (Some(_), Some(h)) => h.id.clone(),
        (Some(p), None) => {
            notes.push(format!(
                "no [[webhooks]] entry with platform = \"{}\" and agent = \"{}\": add one; the URLs below name it <hook-id>",
                p.as_str(),
                agent.id
            ));
            "<hook-id>".to_owned()
        }
        (None, _) => String::new(),
    };
    let hold_ms = hook.map_or(15_000, |h| h.max_hold.as_millis() as u64);
    let defs: Vec<Value> = agent
        .functions
        .iter()
        .map(|f| {
            let schema = f.tool_schema(None);
            match format {
                Format::Openai => schema,
                Format::Deepgram => json!({
                    "name": f.name,
                    "description": f.description,
                    "parameters": schema["parameters"],
                }),
                Format::Vapi => vapi(f, &schema, &format!("{base}/v1/hooks/{hook_id}"), hold_ms),
                Format::Retell => {
                    retell(f, &schema, &format!("{base}/v1/hooks/{hook_id}"), hold_ms)
                }
                Format::Elevenlabs => elevenlabs(
                    f,
                    &schema,
                    &format!("{base}/v1/hooks/{hook_id}/{}", f.name),
                    hold_ms,
                ),
            }
        })
        .collect();
    if matches!(format, Format::Vapi | Format::Retell | Format::Elevenlabs) {
        notes.push(
            "the platform authenticates with the hook's secret: paste it into the platform (Vapi credential or X-Vapi-Secret, Retell: the API key that signs webhooks, ElevenLabs: a secret holding \"Bearer <secret>\" for the Authorization header); toolgate never prints it"
                .to_owned(),
        );
    }
    (Value::Array(defs), notes)
}

fn fillers(f: &Function) -> (String, String) {
    let first = f
        .filler
        .first()
        .cloned()
        .unwrap_or_else(|| DEFAULT_FILLER.to_owned());
    let second = f.filler.get(1).cloned().unwrap_or_else(|| first.clone());
    (first, second)
}

fn vapi(f: &Function, schema: &Value, url: &str, hold_ms: u64) -> Value {
    let (start, delayed) = fillers(f);
    json!({
        "type": "function",
        "async": false,
        "function": {
            "name": f.name,
            "description": f.description,
            "parameters": schema["parameters"],
        },
        "server": {"url": url, "timeoutSeconds": hold_ms.div_ceil(1000) + 5},
        "messages": [
            {"type": "request-start", "content": start},
            {"type": "request-response-delayed", "content": delayed,
             "timingMilliseconds": f.timing.filler_after.as_millis() as u64},
        ],
    })
}

fn retell(f: &Function, schema: &Value, url: &str, hold_ms: u64) -> Value {
    let (start, _) = fillers(f);
    json!({
        "type": "custom",
        "name": f.name,
        "description": f.description,
        "url": url,
        "method": "POST",
        "parameters": schema["parameters"],
        "args_at_root": false,
        "speak_during_execution": true,
        "execution_message_type": "static_text",
        "execution_message_description": start,
        "speak_after_execution": true,
        "timeout_ms": hold_ms + 5_000,
    })
}

fn elevenlabs(f: &Function, schema: &Value, url: &str, hold_ms: u64) -> Value {
    let mut properties = serde_json::Map::new();
    if let Some(props) = schema["parameters"]["properties"].as_object() {
        for (name, p) in props {
            let mut p = p.clone();
            // ElevenLabs lets the model fill a property only when it has a description.
            if p.get("description").is_none() {
                p["description"] = json!(name);
            }
            properties.insert(name.clone(), p);
        }
    }
    for var in ["system__conversation_id", "system__caller_id"] {
        properties.insert(
            var.into(),
            json!({"type": "string", "dynamic_variable": var}),
        );
    }
    let mut required = schema["parameters"]["required"].clone();
    if let Some(r) = required.as_array_mut() {
        r.push(json!("system__conversation_id"));
    }
    json!({
        "type": "webhook",
        "name": f.name,
        "description": f.description,
        "response_timeout_secs": hold_ms.div_ceil(1000) + 5,
        "api_schema": {
            "url": url,
            "method": "POST",
            "request_headers": {"Authorization": {"secret_id": "<ElevenLabs secret holding: Bearer <hook secret>>"}},
            "request_body_schema": {"type": "object", "required": required, "properties": properties},
        },
    })
}
