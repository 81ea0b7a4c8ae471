//! Invocation evidence and call history (SPEC §6): what happened, why, and what the provider
//! said, for the person who reviews a call later.
//!
//! Evidence is fed by events, never read back on the hot path: sessions, calls and the worker
//! hand [`Event`]s to the [`store::EvidenceStore`], whose own writer thread batches them into
//! SQLite. Handing one over never waits on the disk. Everything in a record is already
//! redacted when it is built ([`crate::redact`]): no credential, no raw phone number or email,
//! no free-text body unless `evidence.keep_bodies`.

pub mod nats;
pub mod page;
mod priority;
pub mod store;
mod writer;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bindings::{Resolution, Resolved, ValueSource};
use crate::call_state::Entry;
use crate::catalog::InputKind;
use crate::clock::Millis;
use crate::config::Function;
use crate::guards::Verdict;
use crate::providers::{Accepted, Prepared, ProviderError};
use crate::redact;
use crate::workflow::{Finish, Job};

/// A new invocation id (`inv_` + ULID): sortable by time, and strictly increasing within this
/// process, so records of the same millisecond still list in the order they were made.
pub fn invocation_id() -> String {
    static IDS: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());
    let id = match IDS.lock().expect("id generator lock").generate() {
        Ok(id) => id,
        Err(overflow) => overflow.commit_overflow_random(),
    };
    format!("inv_{id}")
}

/// How many turns before a tool call its record keeps.
pub const CONTEXT_TURNS: usize = 8;

/// Who ran the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceType {
    /// A tool call in a live call.
    Agent,
    /// A post-call workflow attempt.
    Workflow,
}

/// One guard's verdict as the evidence keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardRecord {
    /// Guard name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why.
    pub detail: String,
}

/// A resolved input, redacted, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRecord {
    /// The redacted value.
    pub value: Value,
    /// `arg:NAME`, `session:var.x`, `constant`, `template`, `map`.
    pub source: String,
}

/// The provider request as sent, redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// URL, path and query redacted.
    pub url: String,
    /// Headers; credentials read `[redacted]`.
    pub headers: IndexMap<String, String>,
    /// JSON body, redacted.
    pub body: Option<RawJson>,
}

/// JSON kept as the text it was written as: a request body is redacted straight from the bytes
/// sent ([`redact::json_text`]) and stored as it comes out, never built into a tree. Reads
/// (the API, the evidence stream) take any JSON value.
#[derive(Debug, Clone)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// A value, as compact JSON.
    pub fn of(v: &Value) -> RawJson {
        RawJson(serde_json::value::to_raw_value(v).expect("JSON values serialize"))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    /// Through a value: a raw value cannot be read from inside an internally tagged enum (the
    /// evidence stream's events), and reads are not on a tool call's path.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawJson, D::Error> {
        Ok(RawJson::of(&Value::deserialize(d)?))
    }
}

/// The provider's answer, redacted and cut to 4 KiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRecord {
    /// HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// Body.
    pub body: Option<Value>,
}

/// When things happened, in ms after the `tool.call` arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// Each filler line sent.
    pub filler_ms: Vec<u64>,
    /// The `tool.result`.
    pub answered_ms: Option<u64>,
    /// The provider request left.
    pub provider_sent_ms: Option<u64>,
    /// The provider answered (or the wait ended).
    pub provider_done_ms: Option<u64>,
}

/// A transcript turn or consent event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRecord {
    /// `caller`, `agent` or `consent`.
    pub role: String,
    /// What was said (numbers and addresses masked), or the consent decision.
    pub text: String,
    /// Whether the speech-to-text result was final.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// ms after the session started.
    pub at_ms: u64,
}

/// Who cancelled a call, and whether anything had been sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRecord {
    /// Who: always the media server (`tool.cancel`, a barge-in).
    pub by: String,
    /// Its reason (`barge_in`, ...).
    pub reason: Option<String>,
    /// `not_sent`, `succeeded`, `failed` or `unknown`.
    pub provider_outcome: String,
}

/// One invocation's evidence (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// The invocation id (`inv_...`).
    pub invocation_id: String,
    /// `agent` (a live tool call) or `workflow` (a worker attempt).
    pub source_type: SourceType,
    /// For a workflow attempt: the live tool call's invocation.
    pub parent_invocation_id: Option<String>,
    /// Org.
    pub org_id: String,
    /// The media server's call id.
    pub call_id: String,
    /// Agent.
    pub agent_id: String,
    /// Function name.
    pub function: String,
    /// Catalog action.
    pub action: Option<String>,
    /// Connection id.
    pub connection_id: Option<String>,
    /// How the call reached toolgate (SPEC §13): `v1`, `openai_realtime`, `deepgram`, `vapi`,
    /// `retell`, `elevenlabs`; none on a workflow attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// When the `tool.call` arrived (or the attempt began), ms since the epoch.
    pub received_at: Millis,
    /// The final status: what in the end happened.
    pub status: String,
    /// What the model was told (`deferred` for a call whose job ends later).
    pub answered_status: String,
    /// Whether `status` is final (a deferred call's record is updated once its job ends).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// When it became final.
    pub final_at: Option<Millis>,
    /// The `error` code of the output, if any.
    pub error_code: Option<String>,
    /// The provider's or guard's message, redacted.
    pub error_message: Option<String>,
    /// Values that were missing.
    pub missing_fields: Vec<String>,
    /// Every guard verdict, in order.
    pub guards: Vec<GuardRecord>,
    /// Resolved inputs, redacted.
    pub inputs_redacted: IndexMap<String, InputRecord>,
    /// The provider request.
    pub request_payload_redacted: Option<RequestRecord>,
    /// The provider's answer.
    pub response_payload_redacted: Option<ResponseRecord>,
    /// The provider's id for the message.
    pub provider_message_id: Option<String>,
    /// Provider request latency.
    pub latency_ms: Option<u64>,
    /// Timing.
    pub timeline: Timeline,
    /// The workflow job, when deferred.
    pub workflow_job_id: Option<String>,
    /// Why it was deferred (`budget`, `predicted_slow`, `circuit_open`, ...).
    #[serde(default)]
    pub deferral_reason: Option<String>,
    /// Sent again after an attempt that may have reached a provider without idempotency.
    pub at_least_once: bool,
    /// A barge-in.
    pub cancelled: Option<CancelRecord>,
    /// The turns before the call.
    pub transcript_context: Vec<TurnRecord>,
    /// The model's arguments, redacted (what `toolgate replay` runs again).
    #[serde(default)]
    pub arguments_redacted: Option<Value>,
    /// The session values the call resolved against, redacted.
    #[serde(default)]
    pub session_redacted: Option<std::sync::Arc<SessionRecord>>,
}

/// A call's session values, redacted: what bindings read (`caller.number`, `caller.name`,
/// `var.*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The caller's number, masked.
    pub caller_number: Option<String>,
    /// The caller's name, its first letter only.
    pub caller_name: Option<String>,
    /// Dynamic variables, numbers and addresses masked.
    pub variables: IndexMap<String, Value>,
}

impl SessionRecord {
    /// The redacted session values of a call.
    pub fn of(ctx: &crate::bindings::CallContext) -> SessionRecord {
        use crate::protocol::VarValue;
        SessionRecord {
            caller_number: ctx.caller.number.as_deref().map(redact::phone),
            caller_name: ctx
                .caller
                .name
                .as_deref()
                .map(|n| format!("{}***", n.chars().next().unwrap_or('*'))),
            variables: ctx
                .variables
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        VarValue::Str(s) => Value::String(redact::text(s, &[]).into_owned()),
                        VarValue::Bool(b) => Value::Bool(*b),
                        VarValue::Num(n) if n.to_string().len() >= 7 => {
                            Value::String(redact::phone(&n.to_string()))
                        }
                        VarValue::Num(n) => Value::Number(n.clone()),
                    };
                    (k.clone(), v)
                })
                .collect(),
        }
    }
}

/// A tool call's arguments, redacted like a request body.
pub fn arguments(args: &crate::protocol::Arguments, keep_bodies: bool) -> Value {
    use crate::protocol::Arguments;
    let text = match args {
        Arguments::Absent => return Value::Object(Default::default()),
        Arguments::Json(t) | Arguments::Text(t) => t,
    };
    match serde_json::from_str::<Value>(text) {
        Ok(v) => redact::json(v, keep_bodies, &[]),
        Err(_) => Value::String(redact::text(text, &[]).into_owned()),
    }
}

/// How a workflow job finally ended: the final outcome of every tool call answered `deferred`
/// with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Final {
    /// The job.
    pub job_id: String,
    /// The invocation that created the job.
    pub invocation_id: String,
    /// `succeeded`, `failed` (a refusal, a cancelled job, or out of attempts).
    pub status: String,
    /// Error code.
    pub error_code: Option<String>,
    /// Message, redacted.
    pub error_message: Option<String>,
    /// The provider's message id.
    pub provider_message_id: Option<String>,
    /// Flagged at least once.
    pub at_least_once: bool,
    /// Who cancelled it, when a barge-in cancelled the job before it was sent.
    pub cancelled: Option<CancelRecord>,
    /// When.
    pub at: Millis,
}

/// A session's start, as the store keeps it and the evidence stream carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallStart {
    /// Org.
    pub org: String,
    /// Call id.
    pub call_id: String,
    /// Agent.
    pub agent: String,
    /// The caller's number, masked.
    pub caller: Option<String>,
    /// How the call reached toolgate (`v1`, `openai_realtime`, `vapi`, ...). Absent in events
    /// of an older version: a v1 call.
    #[serde(default = "v1_channel")]
    pub channel: String,
    /// When.
    pub at: Millis,
}

fn v1_channel() -> String {
    "v1".to_owned()
}

/// A session's end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallEnd {
    /// Org.
    pub org: String,
    /// Call id.
    pub call_id: String,
    /// Why (`hangup`, `disconnected`, `shutdown`).
    pub reason: String,
    /// When.
    pub at: Millis,
}

/// A history entry of a call: as it arrived ([`Entry`]) or as the store keeps it, redacted
/// ([`TurnRecord`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallTurn<T> {
    /// Org.
    pub org: String,
    /// Call id.
    pub call_id: String,
    /// When the session started, ms since the epoch (the entry's time is relative).
    pub started_at: Millis,
    /// The entry.
    pub turn: T,
}

impl<T> CallTurn<T> {
    /// The same turn of the same call, its entry turned into another form.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> CallTurn<U> {
        CallTurn {
            org: self.org,
            call_id: self.call_id,
            started_at: self.started_at,
            turn: f(self.turn),
        }
    }
}

/// What feeds the evidence store.
#[derive(Debug, Clone)]
pub enum Event {
    /// A session started.
    CallStarted(CallStart),
    /// A transcript turn or consent event, as it arrived: the writer redacts it before
    /// storing it, so the session spends no time on it.
    History(CallTurn<Entry>),
    /// A session ended.
    CallEnded(CallEnd),
    /// An invocation record (inserted, or replaced while not final).
    Invocation(Box<Invocation>),
    /// A workflow job reached its end.
    Final(Box<Final>),
}

/// A history entry as the evidence keeps it.
pub fn turn_record(entry: &Entry) -> TurnRecord {
    match entry {
        Entry::Turn {
            role,
            text,
            is_final,
            at_ms,
        } => TurnRecord {
            role: match role {
                crate::protocol::Role::Caller => "caller".into(),
                crate::protocol::Role::Agent => "agent".into(),
            },
            text: redact::text(text, &[]).into_owned(),
            is_final: *is_final,
            at_ms: u64::from(*at_ms),
        },
        Entry::Consent {
            scope,
            granted,
            source,
            at_ms,
        } => TurnRecord {
            role: "consent".into(),
            text: format!(
                "{scope}: {} ({})",
                if *granted { "granted" } else { "refused" },
                source.as_deref().unwrap_or("event")
            ),
            is_final: true,
            at_ms: u64::from(*at_ms),
        },
    }
}

/// The turns before a tool call (at most [`CONTEXT_TURNS`] of `entries`, the history as it
/// was when the call arrived).
pub fn context(entries: &[Entry]) -> Vec<TurnRecord> {
    entries[entries.len().saturating_sub(CONTEXT_TURNS)..]
        .iter()
        .map(turn_record)
        .collect()
}

fn source_name(s: &ValueSource) -> String {
    match s {
        ValueSource::Arg(n) => format!("arg:{n}"),
        ValueSource::Session(n) => format!("session:{n}"),
        ValueSource::Constant => "constant".into(),
        ValueSource::Template => "template".into(),
        ValueSource::Map => "map".into(),
    }
}

/// A function's resolved inputs, redacted by kind: addresses and numbers masked, free-text
/// bodies as length and hash (unless `keep_bodies`), constants from the config as written.
/// Without the function (no longer configured), every value is treated as free text.
pub fn inputs(
    function: Option<&Function>,
    resolution: &Resolution,
    keep_bodies: bool,
) -> IndexMap<String, InputRecord> {
    resolution
        .inputs
        .iter()
        .map(|i| {
            let kind = function
                .and_then(|f| f.action.input(&i.name))
                .map(|s| s.kind);
            let value = match (&i.value, kind, &i.source) {
                (Resolved::Text(t), Some(InputKind::Email), _) => Value::String(redact::email(t)),
                (Resolved::Text(t), Some(InputKind::E164), _) => Value::String(redact::phone(t)),
                (Resolved::Text(t), _, ValueSource::Constant) => Value::String(t.clone()),
                (Resolved::Text(t), _, _) if redact::BODY_KEYS.contains(&i.name.as_str()) => {
                    redact::body(t, keep_bodies, &[])
                }
                (Resolved::Text(t), _, _) => Value::String(redact::text(t, &[]).into_owned()),
                (Resolved::Map(pairs), _, _) => Value::Object(
                    pairs
                        .iter()
                        .map(|(k, v)| {
                            let v = if redact::BODY_KEYS.contains(&k.as_str()) {
                                redact::body(v, keep_bodies, &[])
                            } else {
                                Value::String(redact::text(v, &[]).into_owned())
                            };
                            (k.clone(), v)
                        })
                        .collect(),
                ),
            };
            (
                i.name.clone(),
                InputRecord {
                    value,
                    source: source_name(&i.source),
                },
            )
        })
        .collect()
}

/// A prepared provider request, redacted: credentials gone, path, query and body masked.
pub fn request(req: &Prepared, keep_bodies: bool, secrets: &[&str]) -> RequestRecord {
    RequestRecord {
        method: req.method.to_string(),
        url: redact::url(&req.url, keep_bodies, secrets),
        headers: req
            .headers
            .iter()
            .map(|h| {
                let v = if h.secret {
                    "[redacted]".to_owned()
                } else if h.name == "webhook-signature" {
                    // A signature is not a credential, but it proves nothing to a reader.
                    "v1,[signature]".to_owned()
                } else if matches!(h.name, "webhook-id" | "webhook-timestamp") {
                    // Written by toolgate, never from the call: a digest of the action key and
                    // the send time in seconds. Masked as text, the time reads as a phone
                    // number and the receiver's copy can no longer be matched with it.
                    h.value.clone()
                } else {
                    redact::text(&h.value, secrets).into_owned()
                };
                (h.name.to_owned(), v)
            })
            .collect(),
        body: req
            .body
            .as_ref()
            .map(|b| match redact::json_text(b, keep_bodies, secrets) {
                Some(json) => RawJson(json),
                None => RawJson::of(&redact::body(
                    &String::from_utf8_lossy(b),
                    keep_bodies,
                    secrets,
                )),
            }),
    }
}

/// A provider answer, redacted and cut to 4 KiB.
pub fn response(
    status: Option<u16>,
    body: Option<&[u8]>,
    keep_bodies: bool,
    secrets: &[&str],
) -> ResponseRecord {
    ResponseRecord {
        status,
        body: body
            .filter(|b| !b.is_empty())
            .map(|b| redact::response_body(b, keep_bodies, secrets)),
    }
}

/// The final outcome of a deferred invocation once its job has ended (`None` while the job
/// will run again). `code` is the failure's error code when known.
pub fn job_final(job: &Job, finish: &Finish, code: Option<&str>, now: Millis) -> Option<Final> {
    let (status, error_code, error_message, provider_message_id) = match finish {
        Finish::Succeeded { message_id } => ("succeeded", None, None, message_id.clone()),
        Finish::Failed { error } => (
            "failed",
            Some(code.unwrap_or("provider_rejected")),
            Some(error.clone()),
            None,
        ),
        Finish::Retry { error, .. } if job.attempts >= job.max_attempts => {
            ("dead", Some("max_attempts"), Some(error.clone()), None)
        }
        Finish::Retry { .. } => return None,
    };
    Some(Final {
        job_id: job.id.clone(),
        invocation_id: job.invocation_id.clone(),
        status: status.to_owned(),
        error_code: error_code.map(str::to_owned),
        error_message: error_message.map(|m| redact::text(&m, &[]).into_owned()),
        provider_message_id,
        at_least_once: job.at_least_once,
        cancelled: None,
        at: now,
    })
}

/// Guard verdicts as the evidence keeps them (details masked: they may quote a recipient).
pub fn guards(verdicts: &[Verdict]) -> Vec<GuardRecord> {
    verdicts
        .iter()
        .map(|v| GuardRecord {
            name: v.guard.as_str().to_owned(),
            passed: v.passed,
            detail: redact::text(&v.detail, &[]).into_owned(),
        })
        .collect()
}

/// `error` and `missing` of a `tool.result` output.
pub fn output_fields(output: &str) -> (Option<String>, Vec<String>) {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(output) else {
        return (None, Vec::new());
    };
    let code = m.get("error").and_then(Value::as_str).map(str::to_owned);
    let missing = m
        .get("missing")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    (code, missing)
}

/// The provider's answer of a result, redacted.
pub fn response_of(
    result: &Result<Accepted, ProviderError>,
    keep_bodies: bool,
    secrets: &[&str],
) -> ResponseRecord {
    match result {
        Ok(a) => response(Some(a.http_status), Some(&a.body), keep_bodies, secrets),
        Err(e) => response(e.http_status, e.body.as_deref(), keep_bodies, secrets),
    }
}

/// One worker attempt at a job, as a `workflow` record linked to the live invocation.
#[derive(Debug)]
pub struct Attempt<'a> {
    /// The job as claimed.
    pub job: &'a Job,
    /// The function, when the config still has it (its input kinds guide the redaction).
    pub function: Option<&'a Function>,
    /// When the attempt began.
    pub started_at: Millis,
    /// The request, when one was built.
    pub request: Option<&'a Prepared>,
    /// What came of it (`None`: it was never sent).
    pub result: Option<&'a Result<Accepted, ProviderError>>,
    /// Why it did not go out, when it did not.
    pub not_sent: Option<&'a str>,
    /// Provider latency.
    pub latency_ms: Option<u64>,
    /// The job's lease lapsed before the attempt ended: another claim may send it again.
    pub lease_lost: bool,
    /// `evidence.keep_bodies`.
    pub keep_bodies: bool,
    /// The connection's secrets, scrubbed wherever they might be echoed.
    pub secrets: &'a [&'a str],
}

impl Attempt<'_> {
    /// The record.
    pub fn record(&self) -> Invocation {
        let job = self.job;
        let (status, error_code, error_message, message_id) = match (self.result, self.not_sent) {
            (Some(Ok(a)), _) => ("succeeded", None, None, a.message_id.clone()),
            (Some(Err(e)), _) => (
                "failed",
                Some(e.kind.code().to_owned()),
                Some(redact::text(&e.message, self.secrets).into_owned()),
                None,
            ),
            (None, why) => (
                "failed",
                Some("not_sent".to_owned()),
                why.map(|w| redact::text(w, self.secrets).into_owned()),
                None,
            ),
        };
        let resolution = Resolution {
            inputs: job.inputs.clone(),
            ..Resolution::default()
        };
        let (error_code, error_message) = if self.lease_lost {
            let outlived = "the attempt outlived its lease; another claim may send it again";
            (
                error_code.or_else(|| Some("lease_lost".to_owned())),
                Some(match error_message {
                    Some(m) => format!("{m} ({outlived})"),
                    None => outlived.to_owned(),
                }),
            )
        } else {
            (error_code, error_message)
        };
        Invocation {
            invocation_id: invocation_id(),
            source_type: SourceType::Workflow,
            parent_invocation_id: Some(job.invocation_id.clone()),
            org_id: job.org.clone(),
            call_id: job.call_id.clone(),
            agent_id: job.agent.clone(),
            function: job.function.clone(),
            action: Some(job.action.clone()),
            connection_id: Some(job.connection.clone()),
            channel: None,
            received_at: self.started_at,
            status: status.to_owned(),
            answered_status: "none".to_owned(),
            is_final: true,
            final_at: Some(self.started_at + self.latency_ms.unwrap_or(0) as Millis),
            error_code,
            error_message,
            missing_fields: Vec::new(),
            guards: Vec::new(),
            inputs_redacted: inputs(self.function, &resolution, self.keep_bodies),
            request_payload_redacted: self
                .request
                .map(|r| request(r, self.keep_bodies, self.secrets)),
            response_payload_redacted: self
                .result
                .map(|r| response_of(r, self.keep_bodies, self.secrets)),
            provider_message_id: message_id,
            latency_ms: self.latency_ms,
            timeline: Timeline {
                provider_sent_ms: self.request.map(|_| 0),
                provider_done_ms: self.latency_ms,
                ..Timeline::default()
            },
            workflow_job_id: Some(job.id.clone()),
            deferral_reason: None,
            at_least_once: job.at_least_once || (self.lease_lost && !job.idempotent),
            cancelled: None,
            transcript_context: Vec::new(),
            arguments_redacted: None,
            session_redacted: None,
        }
    }
}
