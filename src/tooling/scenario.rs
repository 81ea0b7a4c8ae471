//! `toolgate test SCENARIO...` (SPEC §9): scripted conversations through the real sidecar.
//!
//! A scenario file (TOML) names a config and an agent and scripts a call: caller and agent
//! turns, consent events, tool calls with their arguments, what the provider does with each
//! (accept, refuse, fail, time out, answer late) and what is expected of each tool call (status,
//! error code, missing fields, a filler or not, how many requests reached the provider and what
//! they carried, and a deferred call's job outcome). Each scenario runs against its own
//! in-process sidecar, over a real WebSocket, with loopback mock providers in place of the real
//! ones, so what is tested is exactly what runs in production. Scenarios run concurrently.
//!
//! ```toml
//! name = "direct request"
//! config = "../toolgate.toml"      # relative to this file
//! agent = "support-bot"
//! caller = { number = "+14155550100", name = "Ana" }
//! variables = { email = "ana@example.com" }
//!
//! [[steps]]
//! agent = "Would you like the confirmation on WhatsApp?"
//! [[steps]]
//! caller = "Yes please."
//! [[steps]]
//! call = "send_whatsapp_confirmation"
//! args = { order_id = "A-1042" }
//! provider = { reply = "accept", delay_ms = 100 }
//! expect = { status = "succeeded", filler = false, provider_requests = 1, request = { "/template_name" = "order_confirmed" } }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::config::{Config, LoadOptions};
use crate::server::Server;
use crate::tooling::client::{CallClient, Received};
use crate::tooling::mock::{MockProvider, Reply};

/// The signing secret every webhook connection gets in a scenario.
const WEBHOOK_SECRET: &str = "whsec_c2NlbmFyaW8tc2lnbmluZy1rZXktMDEyMzQ1Njc4OSE=";
const RESEND_KEY: &str = "re_scenario_key";
const WATI_TOKEN: &str = "scenario-wati-token";

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Shown in reports (default: the file name).
    pub name: Option<String>,
    /// The toolgate config, relative to the scenario file.
    pub config: PathBuf,
    /// The agent the call talks to.
    pub agent: String,
    /// The call id (default: `scn-` and the file name).
    pub call_id: Option<String>,
    /// The caller.
    #[serde(default)]
    pub caller: CallerSpec,
    /// Session variables.
    #[serde(default)]
    pub variables: toml::Table,
    /// The conversation, in order.
    pub steps: Vec<Step>,
}

/// Who calls.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerSpec {
    /// Phone number, E.164.
    pub number: Option<String>,
    /// Name.
    pub name: Option<String>,
}

/// One step: exactly one of `caller`, `agent`, `consent`, `call`, `wait_ms`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A final caller turn.
    pub caller: Option<String>,
    /// A final agent turn.
    pub agent: Option<String>,
    /// A consent event.
    pub consent: Option<ConsentStep>,
    /// A tool call of this function.
    pub call: Option<String>,
    /// Its id (default `call_N`).
    pub id: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: toml::Table,
    /// What the provider does with the request this call makes.
    pub provider: Option<ProviderSpec>,
    /// What is expected of the call.
    pub expect: Option<Expect>,
    /// Pause this long.
    pub wait_ms: Option<u64>,
}

/// A consent event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentStep {
    /// Scope.
    pub scope: String,
    /// Granted or refused.
    pub granted: bool,
}

/// How the provider answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// `accept`, `refuse`, `fail` (a 5xx) or `timeout` (never answers).
    pub reply: ReplyKind,
    /// Wait this long before answering.
    pub delay_ms: Option<u64>,
    /// A refusal's message (Resend `message`, Wati `info`, the webhook's body).
    pub message: Option<String>,
    /// The HTTP status of a refusal or failure.
    pub status: Option<u16>,
    /// A Resend refusal's `name` (default `validation_error`).
    pub name: Option<String>,
}

/// The provider's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    /// Do it.
    Accept,
    /// Refuse it definitively (a 4xx, or Wati's `result: false`).
    Refuse,
    /// Fail (503 unless `status` says otherwise): a retryable error.
    Fail,
    /// Never answer.
    Timeout,
}

/// Expectations of one tool call. Anything left out is not checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `tool.result` status.
    pub status: Option<String>,
    /// The output's `error` code (`""`: no error).
    pub error: Option<String>,
    /// The output's `missing` fields.
    pub missing: Option<Vec<String>>,
    /// Whether a filler line came before the result.
    pub filler: Option<bool>,
    /// How many requests reached the provider during the call (after its job, when `job` is
    /// expected too).
    pub provider_requests: Option<usize>,
    /// Fields of the last provider request: `/json/pointer` into the body, `query.NAME`,
    /// `header.NAME`.
    pub request: Option<BTreeMap<String, toml::Value>>,
    /// A deferred call's job state once it settles (`succeeded`, `failed`, `dead`).
    pub job: Option<String>,
}

/// One checked expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked, e.g. `call_1 send_email_summary: status`.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// What was expected.
    pub expected: String,
    /// What happened.
    pub actual: String,
}

impl Check {
    /// `expected X, got Y`.
    pub fn detail(&self) -> String {
        format!("expected {}, got {}", self.expected, self.actual)
    }
}

/// How one scenario went.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario's name.
    pub name: String,
    /// Its file.
    pub file: PathBuf,
    /// Every expectation, in order.
    pub checks: Vec<Check>,
    /// Why it could not run, or stopped early.
    pub error: Option<String>,
    /// How long it took.
    pub took: Duration,
}

impl Report {
    /// Whether everything held.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.checks.iter().all(|c| c.passed)
    }
}

/// Scenario files: each path as given, or a directory's `*.toml` files in name order.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Run every scenario, concurrently.
pub async fn run_all(files: &[PathBuf]) -> Vec<Report> {
    futures_util::future::join_all(files.iter().map(|f| run(f))).await
}

/// Run one scenario file.
pub async fn run(file: &Path) -> Report {
    let started = Instant::now();
    let fallback = file
        .file_stem()
        .map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned());
    let mut report = Report {
        name: fallback.clone(),
        file: file.to_owned(),
        checks: Vec::new(),
        error: None,
        took: Duration::ZERO,
    };
    let scenario = match std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|text| {
            toml::from_str::<Scenario>(&text)
                .map_err(|e| format!("{}: {}", file.display(), e.message()))
        }) {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    if let Some(n) = &scenario.name {
        report.name = n.clone();
    }
    let call_id = scenario
        .call_id
        .clone()
        .unwrap_or_else(|| format!("scn-{fallback}"));
    let dir = file.parent().unwrap_or(Path::new("."));
    if let Err(e) = Runner::play(&scenario, dir, &call_id, &mut report.checks).await {
        report.error = Some(e);
    }
    report.took = started.elapsed();
    report
}

/// The mocks standing in for the config's connections, by connection id.
struct Mocks {
    by_connection: BTreeMap<String, MockProvider>,
    _store: tempfile::TempDir,
}

impl Drop for Mocks {
    fn drop(&mut self) {
        for m in self.by_connection.values() {
            m.stop();
        }
    }
}

/// Replace every `{ env = ... }` / `{ file = ... }` secret reference with a placeholder: a
/// scenario needs no real secret.
fn placeholders(v: &mut toml::Value) {
    match v {
        toml::Value::Table(t) => {
            if t.len() == 1 && (t.contains_key("env") || t.contains_key("file")) {
                *v = toml::Value::String("scenario-placeholder-secret".into());
                return;
            }
            for (_, x) in t.iter_mut() {
                placeholders(x);
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(placeholders),
        _ => {}
    }
}

/// The scenario's config: the named file with its connections pointed at loopback mocks,
/// placeholder secrets, ephemeral ports and a scratch store.
async fn sandbox(config_path: &Path) -> Result<(Config, Mocks, String), String> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| format!("cannot read the config {}: {e}", config_path.display()))?;
    let mut root: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{}: {}", config_path.display(), e.message()))?;
    let mut v = toml::Value::Table(root.clone());
    placeholders(&mut v);
    if let toml::Value::Table(t) = v {
        root = t;
    }
    let store = tempfile::tempdir().map_err(|e| format!("cannot make a scratch dir: {e}"))?;
    let server = root
        .entry("server")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(s) = server.as_table_mut() {
        s.insert("listen".into(), "127.0.0.1:0".into());
        s.insert("admin_listen".into(), "127.0.0.1:0".into());
    }
    let mut storage = toml::Table::new();
    storage.insert(
        "path".into(),
        store
            .path()
            .join("toolgate.db")
            .display()
            .to_string()
            .into(),
    );
    root.insert("storage".into(), toml::Value::Table(storage));
    let mut token = None;
    if let Some(orgs) = root.get_mut("orgs").and_then(|o| o.as_array_mut()) {
        for org in orgs.iter_mut().filter_map(|o| o.as_table_mut()) {
            let id = org
                .get("id")
                .and_then(|i| i.as_str())
                .unwrap_or("org")
                .to_owned();
            let t = format!("scenario-session-token-{id}");
            org.insert(
                "session_tokens".into(),
                toml::Value::Array(vec![t.clone().into()]),
            );
            token.get_or_insert(Vec::new()).push((id, t));
        }
    }
    let mut by_connection = BTreeMap::new();
    if let Some(conns) = root.get_mut("connections").and_then(|c| c.as_array_mut()) {
        for c in conns.iter_mut().filter_map(|c| c.as_table_mut()) {
            let id = c
                .get("id")
                .and_then(|i| i.as_str())
                .unwrap_or("")
                .to_owned();
            let provider = c.get("provider").and_then(|p| p.as_str()).unwrap_or("");
            let io = |e: std::io::Error| format!("cannot start a mock provider: {e}");
            let mock = match provider {
                "resend" => {
                    let m = MockProvider::resend(RESEND_KEY).await.map_err(io)?;
                    c.insert("api_key".into(), RESEND_KEY.into());
                    c.insert("base_url".into(), m.url().into());
                    m
                }
                "wati" => {
                    let m = MockProvider::wati(WATI_TOKEN).await.map_err(io)?;
                    c.insert("token".into(), WATI_TOKEN.into());
                    c.insert("endpoint".into(), m.url().into());
                    m
                }
                "webhook" => {
                    let m = MockProvider::webhook(WEBHOOK_SECRET).await.map_err(io)?;
                    c.insert("secret".into(), WEBHOOK_SECRET.into());
                    c.insert("url".into(), m.url().into());
                    if c.contains_key("health_url") {
                        c.insert("health_url".into(), m.health_url().into());
                    }
                    m
                }
                // Left for the config checker to name.
                _ => continue,
            };
            by_connection.insert(id, mock);
        }
    }
    let text = toml::to_string(&root).map_err(|e| format!("cannot rewrite the config: {e}"))?;
    let base = config_path.parent().unwrap_or(Path::new("."));
    let mut config = Config::from_toml(&text, &LoadOptions::new(base))
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    // A scenario's outcome is its script's, not the machine's: a slow moment of a busy
    // machine must not shed its calls.
    config.server.shed_after_delay = None;
    let tokens = token.unwrap_or_default();
    let mocks = Mocks {
        by_connection,
        _store: store,
    };
    // Templates the config sends exist and are approved at the mock Wati.
    for conn in &config.connections {
        let names = crate::connections::validate::templates_for(&config, &conn.id);
        if let Some(m) = mocks.by_connection.get(&conn.id) {
            let approved: Vec<(&str, &str)> =
                names.iter().map(|n| (n.as_str(), "APPROVED")).collect();
            m.set_templates(&approved);
        }
    }
    Ok((
        config,
        mocks,
        tokens
            .into_iter()
            .map(|(_, t)| t)
            .next()
            .unwrap_or_default(),
    ))
}

fn reply_for(provider: &str, spec: &ProviderSpec) -> Reply {
    let message = spec
        .message
        .clone()
        .unwrap_or_else(|| "refused by the scenario".into());
    let inner = match (spec.reply, provider) {
        (ReplyKind::Accept, _) => Reply::Normal,
        (ReplyKind::Refuse, "resend") => Reply::ResendError {
            status: spec.status.unwrap_or(422),
            name: spec
                .name
                .clone()
                .unwrap_or_else(|| "validation_error".into()),
            message,
            retry_after: None,
        },
        (ReplyKind::Refuse, "wati") => Reply::WatiResultFalse { info: message },
        (ReplyKind::Refuse, _) => Reply::Raw {
            status: spec.status.unwrap_or(400),
            headers: Vec::new(),
            body: message,
        },
        (ReplyKind::Fail, _) => Reply::Raw {
            status: spec.status.unwrap_or(503),
            headers: Vec::new(),
            body: String::new(),
        },
        (ReplyKind::Timeout, _) => Reply::Hang,
    };
    match spec.delay_ms {
        Some(ms) => Reply::Delay(Duration::from_millis(ms), Box::new(inner)),
        None => inner,
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

struct Runner;

impl Runner {
    async fn play(
        scenario: &Scenario,
        dir: &Path,
        call_id: &str,
        checks: &mut Vec<Check>,
    ) -> Result<(), String> {
        let config_path = dir.join(&scenario.config);
        let (config, mocks, _) = sandbox(&config_path).await?;
        let agent = config
            .agent(&scenario.agent)
            .cloned()
            .ok_or_else(|| format!("the config has no agent {:?}", scenario.agent))?;
        let token = format!("scenario-session-token-{}", agent.org);
        let server = Server::start(config)
            .await
            .map_err(|e| format!("cannot start the sidecar: {e}"))?;
        let result = Self::steps(scenario, call_id, &server, &mocks, &agent, &token, checks).await;
        server.shutdown(Duration::from_secs(5)).await;
        result
    }

    async fn steps(
        scenario: &Scenario,
        call_id: &str,
        server: &Server,
        mocks: &Mocks,
        agent: &crate::config::Agent,
        token: &str,
        checks: &mut Vec<Check>,
    ) -> Result<(), String> {
        let mut client = CallClient::connect(&server.session_url(), Some(token))
            .await
            .map_err(|e| format!("cannot connect to the sidecar: {e}"))?;
        let variables = serde_json::to_value(&scenario.variables).unwrap_or(json!({}));
        client
            .send(&json!({"type": "session.start", "call_id": call_id, "agent": scenario.agent,
                          "caller": {"number": scenario.caller.number, "name": scenario.caller.name},
                          "variables": variables}))
            .await
            .map_err(|e| e.to_string())?;
        let ready = client
            .recv(Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        if ready.ty() != "session.ready" {
            return Err(format!("session.start was refused: {}", ready.frame));
        }
        let mut n = 0;
        for (i, step) in scenario.steps.iter().enumerate() {
            let kinds = [
                step.caller.is_some(),
                step.agent.is_some(),
                step.consent.is_some(),
                step.call.is_some(),
                step.wait_ms.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(format!(
                    "step {}: give exactly one of caller, agent, consent, call, wait_ms",
                    i + 1
                ));
            }
            if let Some(text) = &step.caller {
                send(
                    &mut client,
                    json!({"type": "transcript", "role": "caller", "text": text, "final": true}),
                )
                .await?;
            } else if let Some(text) = &step.agent {
                send(
                    &mut client,
                    json!({"type": "transcript", "role": "agent", "text": text, "final": true}),
                )
                .await?;
            } else if let Some(c) = &step.consent {
                send(&mut client, json!({"type": "consent", "scope": c.scope, "granted": c.granted, "source": "scenario"})).await?;
            } else if let Some(ms) = step.wait_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            } else if let Some(name) = &step.call {
                n += 1;
                let id = step.id.clone().unwrap_or_else(|| format!("call_{n}"));
                Self::call(&mut client, server, mocks, agent, name, &id, step, checks).await?;
            }
        }
        send(
            &mut client,
            json!({"type": "session.end", "reason": "scenario over"}),
        )
        .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        client: &mut CallClient,
        server: &Server,
        mocks: &Mocks,
        agent: &crate::config::Agent,
        name: &str,
        id: &str,
        step: &Step,
        checks: &mut Vec<Check>,
    ) -> Result<(), String> {
        let function = agent.functions.iter().find(|f| f.name == name);
        let connection = function.map(|f| f.connection.id.clone());
        let provider = function.map(|f| f.action.provider().as_str()).unwrap_or("");
        let mock = connection.as_ref().and_then(|c| mocks.by_connection.get(c));
        if let (Some(spec), Some(m)) = (&step.provider, mock) {
            m.push(reply_for(provider, spec));
        }
        let before = mock.map_or(0, |m| m.requests().len());
        let args = serde_json::to_value(&step.args).unwrap_or(json!({}));
        client
            .send(&json!({"type": "tool.call", "id": id, "name": name, "arguments": args.to_string()}))
            .await
            .map_err(|e| e.to_string())?;
        let wait = function.map_or(Duration::from_secs(10), |f| {
            f.timing.hard_timeout + Duration::from_secs(5)
        });
        let frames = client
            .until_result(id, wait)
            .await
            .map_err(|e| format!("{id} {name}: no tool.result: {e}"))?;
        let result: &Received = frames.last().expect("until_result ends with the result");
        let output: Value = result.frame["output"]
            .as_str()
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or(Value::Null);
        let status = result.frame["status"].as_str().unwrap_or("").to_owned();
        let Some(expect) = &step.expect else {
            return Ok(());
        };
        let label = format!("{id} {name}");
        let mut check = |what: &str, expected: String, actual: String| {
            checks.push(Check {
                name: format!("{label}: {what}"),
                passed: expected == actual,
                expected,
                actual,
            });
        };
        let quoted = |s: &str| {
            if s.is_empty() {
                "no error".to_owned()
            } else {
                format!("{s:?}")
            }
        };
        if let Some(want) = &expect.status {
            check("status", format!("{want:?}"), format!("{status:?}"));
        }
        if let Some(want) = &expect.error {
            check(
                "error",
                quoted(want),
                quoted(output["error"].as_str().unwrap_or("")),
            );
        }
        if let Some(want) = &expect.missing {
            let got: Vec<String> = output["missing"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            check("missing", format!("{want:?}"), format!("{got:?}"));
        }
        if let Some(want) = expect.filler {
            let got = frames.iter().any(|f| f.ty() == "tool.filler");
            let said = |b: bool| if b { "a filler" } else { "no filler" }.to_owned();
            check("filler", said(want), said(got));
        }
        if let Some(want) = &expect.job {
            let got = match result.frame["data"]["job_id"].as_str() {
                Some(job) => settle(server, job).await,
                None => "no job".to_owned(),
            };
            check("job", format!("{want:?}"), format!("{got:?}"));
        }
        let sent = mock
            .map(|m| m.requests()[before..].to_vec())
            .unwrap_or_default();
        if let Some(want) = expect.provider_requests {
            let to = connection.as_deref().unwrap_or("the provider");
            check(
                "provider requests",
                format!("{want} to {to}"),
                format!("{} to {to}", sent.len()),
            );
        }
        if let Some(fields) = &expect.request {
            let last = sent.last();
            for (path, want) in fields {
                let want = serde_json::to_value(want).unwrap_or(Value::Null);
                let got = last.map_or(Value::Null, |r| {
                    if let Some(q) = path.strip_prefix("query.") {
                        r.query_param(q).map_or(Value::Null, Value::String)
                    } else if let Some(h) = path.strip_prefix("header.") {
                        r.header(h)
                            .map_or(Value::Null, |v| Value::String(v.to_owned()))
                    } else {
                        r.json().pointer(path).cloned().unwrap_or(Value::Null)
                    }
                });
                check(&format!("request {path}"), text_of(&want), text_of(&got));
            }
        }
        Ok(())
    }
}

async fn send(client: &mut CallClient, frame: Value) -> Result<(), String> {
    client.send(&frame).await.map_err(|e| e.to_string())
}

/// A job's state once it is final (or where it stands after 30 s).
async fn settle(server: &Server, job: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = match server.runtime().jobs.get(job).await {
            Ok(Some(j)) => j.state.as_str().to_owned(),
            Ok(None) => return "no such job".into(),
            Err(e) => return format!("unreadable ({e})"),
        };
        if matches!(state.as_str(), "succeeded" | "failed" | "dead") || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The reports as JUnit XML: a test suite per scenario, a test case per expectation.
pub fn junit(reports: &[Report]) -> String {
    use quick_xml::escape::escape;
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let tests: usize = reports.iter().map(|r| r.checks.len().max(1)).sum();
    let failures: usize = reports
        .iter()
        .map(|r| r.checks.iter().filter(|c| !c.passed).count() + usize::from(r.error.is_some()))
        .sum();
    out.push_str(&format!(
        "<testsuites name=\"toolgate\" tests=\"{tests}\" failures=\"{failures}\">\n"
    ));
    for r in reports {
        let failed = r.checks.iter().filter(|c| !c.passed).count() + usize::from(r.error.is_some());
        out.push_str(&format!(
            "  <testsuite name=\"{}\" file=\"{}\" tests=\"{}\" failures=\"{failed}\" time=\"{:.3}\">\n",
            escape(&r.name),
            escape(r.file.display().to_string()),
            r.checks.len().max(1),
            r.took.as_secs_f64()
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!(
                "    <testcase name=\"setup\" classname=\"{}\"><failure message=\"{}\"/></testcase>\n",
                escape(&r.name),
                escape(e)
            ));
        }
        for c in &r.checks {
            out.push_str(&format!(
                "    <testcase name=\"{}\" classname=\"{}\"",
                escape(&c.name),
                escape(&r.name)
            ));
            if c.passed {
                out.push_str("/>\n");
            } else {
                out.push_str(&format!(
                    "><failure message=\"{}\"/></testcase>\n",
                    escape(c.detail())
                ));
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// The reports as people read them.
pub fn render(reports: &[Report]) -> String {
    let mut out = String::new();
    for r in reports {
        out.push_str(&format!(
            "{} {} ({}, {} ms)\n",
            if r.passed() { "PASS" } else { "FAIL" },
            r.name,
            r.file.display(),
            r.took.as_millis()
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!("  ✗ {e}\n"));
        }
        for c in &r.checks {
            if c.passed {
                out.push_str(&format!("  ✓ {}: {}\n", c.name, c.actual));
            } else {
                out.push_str(&format!("  ✗ {}: {}\n", c.name, c.detail()));
            }
        }
    }
    let checks: usize = reports.iter().map(|r| r.checks.len()).sum();
    let failed: usize = reports
        .iter()
        .map(|r| r.checks.iter().filter(|c| !c.passed).count())
        .sum();
    let broken = reports.iter().filter(|r| r.error.is_some()).count();
    out.push_str(&format!(
        "\n{} scenario(s), {checks} expectation(s): {} passed, {failed} failed{}\n",
        reports.len(),
        checks - failed,
        if broken > 0 {
            format!(", {broken} scenario(s) could not run")
        } else {
            String::new()
        }
    ));
    out
}
