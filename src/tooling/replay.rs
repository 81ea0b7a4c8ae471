//! `toolgate replay INVOCATION_ID`: run one recorded tool call again against the current config,
//! to see which guards would pass now: the loop an agent builder runs after fixing a mapping, a
//! description or a consent rule.
//!
//! The record keeps the model's arguments, the session values and the turns before the call,
//! all redacted; the real values were never stored. They are replayed as stand-ins of the same
//! shape ([`crate::redact::stand_in`]): `a***@example.com` as `annn@example.com`,
//! `+1********00` as `+15555555500`, a body kept as length and hash as that many `x`. The
//! request goes to a simulated provider (a loopback mock that behaves like the real API), never
//! the real one unless `live` is asked for.

use serde_json::{Value, json};

use crate::call_state::{Entry, History, Ledger};
use crate::config::{Config, Connection, ConnectionSettings, Secret, SecretBytes};
use crate::connections::Registry;
use crate::evidence::{self, GuardRecord, Invocation, RequestRecord, SourceType};
use crate::guards::{self, CallView, Decision};
use crate::protocol::{self, Inbound, Role};
use crate::providers::{self, ActionContext};
use crate::redact;
use crate::tooling::mock::MockProvider;

/// What the replay found.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The invocation replayed.
    pub invocation_id: String,
    /// Its function.
    pub function: String,
    /// Its agent.
    pub agent: String,
    /// Its call.
    pub call_id: String,
    /// How it ended then.
    pub then: String,
    /// The guard verdicts then.
    pub then_guards: Vec<GuardRecord>,
    /// The guard verdicts now.
    pub now_guards: Vec<GuardRecord>,
    /// What would happen now.
    pub now: String,
    /// The request that went out now (redacted), when the guards let it.
    pub request: Option<RequestRecord>,
    /// The provider's answer now.
    pub answer: Option<String>,
    /// Whether the real provider was called.
    pub live: bool,
}

/// The credential a simulated provider accepts.
const SIM_RESEND_KEY: &str = "re_replay_key";
const SIM_WATI_TOKEN: &str = "replay-wati-token";
const SIM_WEBHOOK_SECRET: &str = "whsec_cmVwbGF5LXNpZ25pbmcta2V5LTAxMjM0NTY3ODk=";

/// The turns before the call, back as history entries.
fn history(record: &Invocation) -> History {
    let mut h = History::default();
    for t in &record.transcript_context {
        let at_ms = u32::try_from(t.at_ms).unwrap_or(u32::MAX);
        let entry = match t.role.as_str() {
            "caller" | "agent" => Entry::Turn {
                role: if t.role == "caller" {
                    Role::Caller
                } else {
                    Role::Agent
                },
                text: t.text.as_str().into(),
                is_final: t.is_final,
                at_ms,
            },
            // "scope: granted (source)"
            _ => {
                let (scope, rest) = t.text.split_once(": ").unwrap_or((&t.text, ""));
                let source = rest
                    .split_once(" (")
                    .map(|(_, s)| s.trim_end_matches(')').into());
                Entry::Consent {
                    scope: scope.into(),
                    granted: rest.starts_with("granted"),
                    source,
                    at_ms,
                }
            }
        };
        h.push(entry);
    }
    h
}

/// A copy of `conn` pointed at a simulated provider.
async fn simulated(conn: &Connection) -> Result<(Connection, MockProvider), String> {
    let io = |e: std::io::Error| format!("cannot start a simulated provider: {e}");
    let parse = |u: String| reqwest::Url::parse(&u).map_err(|e| e.to_string());
    let (settings, mock) = match &conn.settings {
        ConnectionSettings::Resend { from, .. } => {
            let m = MockProvider::resend(SIM_RESEND_KEY).await.map_err(io)?;
            let s = ConnectionSettings::Resend {
                api_key: Secret::new(SIM_RESEND_KEY),
                from: from.clone(),
                base_url: parse(m.url())?,
            };
            (s, m)
        }
        ConnectionSettings::Wati { .. } => {
            let m = MockProvider::wati(SIM_WATI_TOKEN).await.map_err(io)?;
            let s = ConnectionSettings::Wati {
                endpoint: parse(m.url())?,
                token: Secret::new(SIM_WATI_TOKEN),
            };
            (s, m)
        }
        ConnectionSettings::Webhook { health_url, .. } => {
            use base64::Engine;
            let m = MockProvider::webhook(SIM_WEBHOOK_SECRET)
                .await
                .map_err(io)?;
            let key = base64::engine::general_purpose::STANDARD
                .decode(SIM_WEBHOOK_SECRET.trim_start_matches("whsec_"))
                .map_err(|e| e.to_string())?;
            let s = ConnectionSettings::Webhook {
                url: parse(m.url())?,
                key: SecretBytes::new(key),
                health_url: health_url
                    .as_ref()
                    .map(|_| parse(m.health_url()))
                    .transpose()?,
            };
            (s, m)
        }
    };
    Ok((
        Connection {
            id: conn.id.clone(),
            org: conn.org.clone(),
            enabled: true,
            rate: None,
            circuit: conn.circuit,
            settings,
        },
        mock,
    ))
}

fn records(verdicts: &[guards::Verdict]) -> Vec<GuardRecord> {
    evidence::guards(verdicts)
}

/// Replay `record` against `config`; with `live`, send to the configured (real) provider.
pub async fn replay(config: &Config, record: &Invocation, live: bool) -> Result<Replayed, String> {
    if record.source_type == SourceType::Workflow {
        return Err(format!(
            "{} is a workflow attempt; replay the tool call it ran for: {}",
            record.invocation_id,
            record
                .parent_invocation_id
                .as_deref()
                .unwrap_or("(unknown)")
        ));
    }
    let agent = config
        .agent(&record.agent_id)
        .cloned()
        .ok_or_else(|| format!("agent {:?} is no longer in the config", record.agent_id))?;
    let session = record
        .session_redacted
        .as_deref()
        .cloned()
        .unwrap_or_default();
    let variables = redact::stand_in(&Value::Object(session.variables.into_iter().collect()));
    let start = json!({
        "type": "session.start", "call_id": record.call_id, "agent": record.agent_id,
        "caller": {
            "number": session.caller_number.map(|n| redact::stand_in(&Value::String(n))),
            "name": session.caller_name.map(|n| n.replace('*', "n")),
        },
        "variables": variables,
    });
    let Ok(Inbound::SessionStart(start)) = protocol::decode(&start.to_string()) else {
        return Err("the recorded session values do not make a session.start".into());
    };
    let ctx = crate::bindings::CallContext {
        call_id: start.call_id,
        agent_id: agent.id.clone(),
        caller: start.caller,
        variables: start.variables,
    };
    let arguments = redact::stand_in(record.arguments_redacted.as_ref().unwrap_or(&json!({})));
    let frame = json!({"type": "tool.call", "id": "replay", "name": record.function,
                       "arguments": arguments});
    let Ok(Inbound::ToolCall(call)) = protocol::decode(&frame.to_string()) else {
        return Err("the recorded arguments do not make a tool.call".into());
    };
    let registry = Registry::new(config);
    let history = history(record);
    let ledger = Ledger::default();
    let checked = guards::check(
        &agent,
        &call,
        &CallView {
            ctx: &ctx,
            history: &history,
            ledger: &ledger,
            connections: &registry,
        },
    );
    let then = match &record.error_code {
        Some(code) => format!("{} ({code})", record.status),
        None => record.status.clone(),
    };
    let mut out = Replayed {
        invocation_id: record.invocation_id.clone(),
        function: record.function.clone(),
        agent: agent.id.clone(),
        call_id: record.call_id.clone(),
        then,
        then_guards: record.guards.clone(),
        now_guards: records(&checked.verdicts),
        now: String::new(),
        request: None,
        answer: None,
        live,
    };
    let (function, key) = match (&checked.decision, checked.function, &checked.key) {
        (Decision::Rejected(r), _, _) => {
            out.now = format!("rejected ({}): {}", r.code(), r.message);
            return Ok(out);
        }
        (Decision::Duplicate { .. }, _, _) => {
            out.now = "duplicate".into();
            return Ok(out);
        }
        (Decision::Proceed, Some(i), Some(key)) => (&agent.functions[i], key.clone()),
        _ => return Err("the guards passed without a function".into()),
    };
    let configured = registry
        .connection(&function.connection.id)
        .cloned()
        .ok_or_else(|| format!("connection {:?} is not configured", function.connection.id))?;
    let (conn, mock) = if live {
        (configured, None)
    } else {
        let (c, m) = simulated(&configured).await?;
        (std::sync::Arc::new(c), Some(m))
    };
    let ctx = ActionContext {
        call_id: &record.call_id,
        function: &function.name,
        idempotency_key: &key,
        now: crate::clock::now(),
    };
    let req = providers::prepare(&conn, function.action, &checked.resolution, &ctx)
        .map_err(|e| format!("the request cannot be built: {}", e.message))?;
    let secrets = conn.secret_texts();
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    out.request = Some(evidence::request(&req, false, &secrets));
    let client = providers::Client::new().map_err(|e| e.to_string())?;
    let result = match tokio::time::timeout(function.timing.hard_timeout, async {
        let raw = providers::send(&client, &req).await?;
        providers::interpret(function.action, raw)
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(providers::ProviderError::timeout(
            function.timing.hard_timeout,
        )),
    };
    if let Some(m) = mock {
        m.stop();
    }
    let provider = if live {
        "the provider"
    } else {
        "a simulated provider"
    };
    out.now = "passes every guard".into();
    out.answer = Some(match result {
        Ok(a) => format!("{provider} accepted it (HTTP {})", a.http_status),
        Err(mut e) => {
            e.redact_for(&conn);
            format!("{provider} refused it: {}: {}", e.kind.code(), e.message)
        }
    });
    Ok(out)
}

/// A replay as people read it.
pub fn render(r: &Replayed) -> String {
    let mut out = format!(
        "replay {} {} (agent {}, call {})\n\n",
        r.invocation_id, r.function, r.agent, r.call_id
    );
    let mut names: Vec<&str> = r.then_guards.iter().map(|g| g.name.as_str()).collect();
    for g in &r.now_guards {
        if !names.contains(&g.name.as_str()) {
            names.push(&g.name);
        }
    }
    let width = names.iter().map(|n| n.len()).max().unwrap_or(5);
    out.push_str(&format!("  {:<width$}  {:<8} now\n", "guard", "then"));
    let mark = |g: Option<&GuardRecord>| match g {
        Some(g) if g.passed => "✓".to_owned(),
        Some(g) => format!("✗ {}", g.detail),
        None => "-".to_owned(),
    };
    for n in names {
        let then = r.then_guards.iter().find(|g| g.name == n);
        let now = r.now_guards.iter().find(|g| g.name == n);
        let then_mark = match then {
            Some(g) if g.passed => "✓",
            Some(_) => "✗",
            None => "-",
        };
        out.push_str(&format!("  {n:<width$}  {then_mark:<8} {}\n", mark(now)));
    }
    out.push_str(&format!("\nthen: {}\nnow:  {}\n", r.then, r.now));
    if let Some(req) = &r.request {
        out.push_str(&format!(
            "  request: {} {} {}\n",
            req.method,
            req.url,
            req.body
                .as_ref()
                .map(|b| b.get().to_owned())
                .unwrap_or_default()
        ));
    }
    if let Some(a) = &r.answer {
        out.push_str(&format!("  answer:  {a}\n"));
    }
    out.push_str(
        "\nRedacted values were replayed as stand-ins of the same shape (a***@example.com as annn@example.com, +1********00 as +15555555500).\n",
    );
    if !r.live {
        out.push_str("Nothing was sent to the real provider (--live sends it).\n");
    }
    out
}
