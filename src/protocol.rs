//! Wire protocol v1: the JSON text frames exchanged with the media server (SPEC §2).
//!
//! Decoding is a single pass of `serde_json` into one flat, borrowing `RawFrame` whose fields
//! are all optional, followed by a per-type check. This keeps the hot path to one parse and lets
//! every problem map to the precise error code the media server needs: `bad_json` (not JSON),
//! `bad_frame` (JSON of the wrong shape), `unknown_type` and `missing_field`.
//! `benches/tool_call.rs` compares this with simd-json on real frame sizes.

use std::borrow::Cow;
use std::fmt;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The protocol version announced in `session.ready`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest accepted `call_id`, in characters.
pub const MAX_CALL_ID_CHARS: usize = 128;

/// Error codes of `error` frames (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not valid JSON (or not UTF-8 text).
    BadJson,
    /// The frame is JSON but not of the right shape.
    BadFrame,
    /// The `type` is not one this protocol version knows.
    UnknownType,
    /// A field the frame type requires is absent.
    MissingField,
    /// A call frame arrived before `session.start`.
    NoSession,
    /// `session.start` for a session that already exists.
    SessionExists,
    /// `session.start` names an agent that is not configured.
    UnknownAgent,
    /// The session token's org may not use this agent.
    Forbidden,
    /// A `tool.call` reused an id already seen in this session.
    DuplicateCallId,
    /// A `tool.cancel` named an id never seen in this session.
    UnknownCallId,
    /// The media server sends frames faster than allowed.
    RateLimited,
    /// The sidecar or session is at capacity.
    Overloaded,
    /// Something failed inside toolgate.
    Internal,
}

impl ErrorCode {
    /// All codes, in SPEC order.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadJson,
        ErrorCode::BadFrame,
        ErrorCode::UnknownType,
        ErrorCode::MissingField,
        ErrorCode::NoSession,
        ErrorCode::SessionExists,
        ErrorCode::UnknownAgent,
        ErrorCode::Forbidden,
        ErrorCode::DuplicateCallId,
        ErrorCode::UnknownCallId,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::NoSession => "no_session",
            ErrorCode::SessionExists => "session_exists",
            ErrorCode::UnknownAgent => "unknown_agent",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::DuplicateCallId => "duplicate_call_id",
            ErrorCode::UnknownCallId => "unknown_call_id",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why a frame could not be decoded: the code and message of the `error` frame to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// Error code for the `error` frame.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The `id` of the frame, when it could be read (echoed as `ref`).
    pub reference: Option<String>,
}

impl FrameError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
            reference: None,
        }
    }

    fn missing(field: &str, frame_type: &str) -> Self {
        Self::new(
            ErrorCode::MissingField,
            format!("`{frame_type}` needs the field `{field}`"),
        )
    }
}

/// A session variable value: the protocol allows strings, numbers and booleans.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum VarValue {
    /// A string value.
    Str(String),
    /// A boolean value.
    Bool(bool),
    /// A number (integer or float), kept as written.
    Num(serde_json::Number),
}

impl VarValue {
    /// The value as text, as it is inserted into templates and provider requests.
    pub fn as_text(&self) -> Cow<'_, str> {
        match self {
            VarValue::Str(s) => Cow::Borrowed(s),
            VarValue::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            VarValue::Num(n) => Cow::Owned(n.to_string()),
        }
    }
}

/// The caller block of `session.start`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Caller {
    /// The caller's phone number, E.164 when the media server knows it.
    pub number: Option<String>,
    /// The caller's name, when known.
    pub name: Option<String>,
}

/// `session.start`: the first frame of every call.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionStart {
    /// The media server's call id (1..128 chars).
    pub call_id: String,
    /// The configured agent id.
    pub agent: String,
    /// Who is calling.
    pub caller: Caller,
    /// The call's dynamic variables.
    pub variables: IndexMap<String, VarValue>,
}

/// How a call reaches toolgate (SPEC §13): a v1 WebSocket or one of the adapters. Recorded with
/// the call's evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Protocol v1 (`GET /v1/session`).
    V1,
    /// The OpenAI Realtime relay.
    OpenaiRealtime,
    /// The Deepgram Voice Agent relay.
    Deepgram,
    /// Vapi tool webhooks.
    Vapi,
    /// Retell custom-function webhooks.
    Retell,
    /// ElevenLabs server-tool webhooks.
    Elevenlabs,
}

impl Channel {
    /// The name evidence and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::V1 => "v1",
            Channel::OpenaiRealtime => "openai_realtime",
            Channel::Deepgram => "deepgram",
            Channel::Vapi => "vapi",
            Channel::Retell => "retell",
            Channel::Elevenlabs => "elevenlabs",
        }
    }
}

/// Who spoke a transcript turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The person on the phone.
    Caller,
    /// The voice agent.
    Agent,
}

/// `transcript`: one turn of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// Who spoke.
    pub role: Role,
    /// What was said.
    pub text: String,
    /// Whether the speech-to-text result is final (partial turns are kept but never consent).
    pub is_final: bool,
}

/// `consent`: an explicit consent decision (DTMF, a button, an earlier step).
#[derive(Debug, Clone, PartialEq)]
pub struct Consent {
    /// The consent scope, matched against a function's `consent.scope`.
    pub scope: String,
    /// Granted (`true`) or refused/revoked (`false`).
    pub granted: bool,
    /// Where the decision came from (`dtmf`, `ui`, ...), for the evidence.
    pub source: Option<String>,
}

/// `tool.call`: the model wants to run a function.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The model's call id, unique within the session.
    pub id: String,
    /// The function name.
    pub name: String,
    /// The arguments, always as the JSON text of an object-or-string value as received.
    pub arguments: Arguments,
}

/// Tool-call arguments as they arrived: an object, or a string holding one (the OpenAI shape).
#[derive(Debug, Clone, PartialEq)]
pub enum Arguments {
    /// No `arguments` field: treated as an empty object.
    Absent,
    /// The raw JSON text of a non-string `arguments` value (normally an object).
    Json(String),
    /// The contents of a string `arguments` value: JSON text the model wrote.
    Text(String),
}

impl Arguments {
    /// Parse into a JSON object. Errors describe the problem for the model.
    pub fn parse(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let value: serde_json::Value = match self {
            Arguments::Absent => return Ok(serde_json::Map::new()),
            Arguments::Text(inner) if inner.trim().is_empty() => {
                return Ok(serde_json::Map::new());
            }
            Arguments::Text(inner) => serde_json::from_str(inner)
                .map_err(|e| format!("arguments string is not JSON: {e}"))?,
            Arguments::Json(raw) => {
                serde_json::from_str(raw).map_err(|e| format!("arguments are not JSON: {e}"))?
            }
        };
        match value {
            serde_json::Value::Object(map) => Ok(map),
            serde_json::Value::Null => Ok(serde_json::Map::new()),
            other => Err(format!(
                "arguments must be a JSON object, got {}",
                json_kind(&other)
            )),
        }
    }
}

/// `tool.cancel`: the caller barged in.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCancel {
    /// The `tool.call` id to cancel.
    pub id: String,
    /// Why (`barge_in`, ...), for the evidence.
    pub reason: Option<String>,
}

/// A decoded frame from the media server.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// `session.start` (boxed: it is the largest frame and comes once a call, and every frame
    /// is moved through the session's wait for the next one at this enum's size)
    SessionStart(Box<SessionStart>),
    /// `transcript`
    Transcript(Transcript),
    /// `consent`
    Consent(Consent),
    /// `tool.call`
    ToolCall(ToolCall),
    /// `tool.cancel`
    ToolCancel(ToolCancel),
    /// `session.end`
    SessionEnd {
        /// Why the call ended (`hangup`, ...).
        reason: Option<String>,
    },
    /// `ping`
    Ping,
}

/// How a parser hands over the `arguments` value: serde_json keeps the raw text
/// ([`RawValue`]); parsers without raw values hand over a parsed value.
trait RawArguments {
    fn into_arguments(self) -> Result<Arguments, FrameError>;
}

impl RawArguments for &RawValue {
    fn into_arguments(self) -> Result<Arguments, FrameError> {
        let raw = self.get();
        if raw.starts_with('"') {
            let inner: String = serde_json::from_str(raw).map_err(json_error)?;
            Ok(Arguments::Text(inner))
        } else {
            Ok(Arguments::Json(raw.to_owned()))
        }
    }
}

impl RawArguments for serde_json::Value {
    fn into_arguments(self) -> Result<Arguments, FrameError> {
        match self {
            serde_json::Value::String(inner) => Ok(Arguments::Text(inner)),
            other => Ok(Arguments::Json(other.to_string())),
        }
    }
}

/// Every field any inbound frame may carry. What is only compared (the type, the role) is
/// borrowed from the frame text where possible; what a frame keeps is read as its own string.
#[derive(Deserialize)]
struct RawFrame<'a, A> {
    #[serde(rename = "type", borrow)]
    ty: Option<Cow<'a, str>>,
    call_id: Option<String>,
    agent: Option<String>,
    caller: Option<Caller>,
    variables: Option<IndexMap<String, VarValue>>,
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    text: Option<String>,
    #[serde(rename = "final")]
    is_final: Option<bool>,
    scope: Option<String>,
    granted: Option<bool>,
    source: Option<String>,
    id: Option<String>,
    name: Option<String>,
    arguments: Option<A>,
    reason: Option<String>,
}

/// Decode one text frame.
pub fn decode(text: &str) -> Result<Inbound, FrameError> {
    let raw: RawFrame<'_, &RawValue> = serde_json::from_str(text).map_err(json_error)?;
    let reference = raw.id.clone();
    decode_raw(raw).map_err(|mut e| {
        e.reference = reference;
        e
    })
}

/// [`decode`] with simd-json instead of serde_json, for the parser comparison in
/// `benches/tool_call.rs`. simd-json parses in place, so it needs a mutable copy of the frame.
#[cfg(feature = "simd-json")]
#[doc(hidden)]
pub fn decode_simd(buf: &mut [u8]) -> Result<Inbound, FrameError> {
    let raw: RawFrame<'_, serde_json::Value> = simd_json::serde::from_slice(buf)
        .map_err(|e| FrameError::new(ErrorCode::BadJson, e.to_string()))?;
    let reference = raw.id.clone();
    decode_raw(raw).map_err(|mut e| {
        e.reference = reference;
        e
    })
}

/// Ids are printed in logs, evidence and the call page: a control character (a newline, an
/// escape sequence) could forge log lines or terminal output, so an id holding one is refused.
fn plain_id(field: &str, id: &str) -> Result<(), FrameError> {
    match id.chars().find(|c| c.is_control()) {
        None => Ok(()),
        Some(c) => Err(FrameError::new(
            ErrorCode::BadFrame,
            format!(
                "`{field}` must not contain control characters (found U+{:04X})",
                c as u32
            ),
        )),
    }
}

fn decode_raw<A: RawArguments>(raw: RawFrame<'_, A>) -> Result<Inbound, FrameError> {
    let ty = raw
        .ty
        .ok_or_else(|| FrameError::new(ErrorCode::MissingField, "every frame needs a `type`"))?;
    match ty.as_ref() {
        "session.start" => {
            let call_id = raw
                .call_id
                .ok_or_else(|| FrameError::missing("call_id", "session.start"))?;
            let agent = raw
                .agent
                .ok_or_else(|| FrameError::missing("agent", "session.start"))?;
            let chars = call_id.chars().count();
            if chars == 0 || chars > MAX_CALL_ID_CHARS {
                return Err(FrameError::new(
                    ErrorCode::BadFrame,
                    format!("`call_id` must be 1..{MAX_CALL_ID_CHARS} characters, got {chars}"),
                ));
            }
            if agent.is_empty() {
                return Err(FrameError::new(ErrorCode::BadFrame, "`agent` is empty"));
            }
            plain_id("call_id", &call_id)?;
            plain_id("agent", &agent)?;
            Ok(Inbound::SessionStart(Box::new(SessionStart {
                call_id,
                agent,
                caller: raw.caller.unwrap_or_default(),
                variables: raw.variables.unwrap_or_default(),
            })))
        }
        "transcript" => {
            let role = match raw.role.as_deref() {
                Some("caller") | Some("user") => Role::Caller,
                Some("agent") | Some("assistant") => Role::Agent,
                Some(other) => {
                    return Err(FrameError::new(
                        ErrorCode::BadFrame,
                        format!("`role` must be \"caller\" or \"agent\", got {other:?}"),
                    ));
                }
                None => return Err(FrameError::missing("role", "transcript")),
            };
            let text = raw
                .text
                .ok_or_else(|| FrameError::missing("text", "transcript"))?;
            Ok(Inbound::Transcript(Transcript {
                role,
                text,
                is_final: raw.is_final.unwrap_or(true),
            }))
        }
        "consent" => {
            let scope = raw
                .scope
                .ok_or_else(|| FrameError::missing("scope", "consent"))?;
            let granted = raw
                .granted
                .ok_or_else(|| FrameError::missing("granted", "consent"))?;
            Ok(Inbound::Consent(Consent {
                scope,
                granted,
                source: raw.source,
            }))
        }
        "tool.call" => {
            let id = raw
                .id
                .ok_or_else(|| FrameError::missing("id", "tool.call"))?;
            let name = raw
                .name
                .ok_or_else(|| FrameError::missing("name", "tool.call"))?;
            if id.is_empty() {
                return Err(FrameError::new(ErrorCode::BadFrame, "`id` is empty"));
            }
            plain_id("id", &id)?;
            plain_id("name", &name)?;
            let arguments = match raw.arguments {
                None => Arguments::Absent,
                Some(v) => v.into_arguments()?,
            };
            Ok(Inbound::ToolCall(ToolCall {
                id,
                name,
                arguments,
            }))
        }
        "tool.cancel" => {
            let id = raw
                .id
                .ok_or_else(|| FrameError::missing("id", "tool.cancel"))?;
            plain_id("id", &id)?;
            Ok(Inbound::ToolCancel(ToolCancel {
                id,
                reason: raw.reason,
            }))
        }
        "session.end" => Ok(Inbound::SessionEnd { reason: raw.reason }),
        "ping" => Ok(Inbound::Ping),
        other => Err(FrameError::new(
            ErrorCode::UnknownType,
            format!("unknown frame type {other:?}"),
        )),
    }
}

/// Map a serde_json error to `bad_json` (syntax) or `bad_frame` (shape), as
/// `line L column C: message`.
fn json_error(e: serde_json::Error) -> FrameError {
    use serde_json::error::Category;
    let code = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ErrorCode::BadJson,
        Category::Data => ErrorCode::BadFrame,
    };
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let bare = full.strip_suffix(&suffix).unwrap_or(&full);
    let bare = if code == ErrorCode::BadFrame && bare.starts_with("invalid type: map") {
        "a frame must be a JSON object"
    } else {
        bare
    };
    FrameError::new(
        code,
        format!("line {} column {}: {bare}", e.line(), e.column()),
    )
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `tool.result.status` (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    /// The provider accepted the action.
    Succeeded,
    /// A guard stopped it; nothing was sent.
    Rejected,
    /// The provider refused or errored; it will not be retried.
    Failed,
    /// Handed to a durable post-call workflow.
    Deferred,
    /// The same action already ran or is running in this call; nothing new was sent.
    Duplicate,
    /// The caller barged in (see `tool.cancel`).
    Cancelled,
}

impl ResultStatus {
    /// Every status.
    pub const ALL: [ResultStatus; 6] = [
        ResultStatus::Succeeded,
        ResultStatus::Rejected,
        ResultStatus::Failed,
        ResultStatus::Deferred,
        ResultStatus::Duplicate,
        ResultStatus::Cancelled,
    ];

    /// The status as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Succeeded => "succeeded",
            ResultStatus::Rejected => "rejected",
            ResultStatus::Failed => "failed",
            ResultStatus::Deferred => "deferred",
            ResultStatus::Duplicate => "duplicate",
            ResultStatus::Cancelled => "cancelled",
        }
    }
}

/// A frame toolgate sends to the media server.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum Outbound<'a> {
    /// Answer to `session.start`: the tools the LLM may call.
    #[serde(rename = "session.ready")]
    SessionReady {
        /// Always [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Echo of the call id.
        call_id: &'a str,
        /// The function list, pre-rendered JSON.
        tools: &'a RawValue,
        /// `true` when this re-attached to a session within the disconnect grace.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
    },
    /// Speak this while the provider is slow.
    #[serde(rename = "tool.filler")]
    ToolFiller {
        /// The `tool.call` id.
        id: &'a str,
        /// The line to speak.
        text: &'a str,
        /// Milliseconds since the `tool.call` arrived.
        elapsed_ms: u64,
        /// 1 for the first filler of this call, then 2, 3.
        seq: u32,
    },
    /// The one answer to a `tool.call`.
    #[serde(rename = "tool.result")]
    ToolResult {
        /// The `tool.call` id.
        id: &'a str,
        /// The outcome.
        status: ResultStatus,
        /// The evidence record id.
        invocation_id: &'a str,
        /// JSON text written for the model.
        output: &'a str,
        /// Milliseconds since the `tool.call` arrived.
        elapsed_ms: u64,
        /// Extra machine-readable detail (e.g. `provider_outcome` of a cancelled call).
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a serde_json::Value>,
    },
    /// A frame could not be handled.
    #[serde(rename = "error")]
    Error {
        /// The error code.
        code: ErrorCode,
        /// Detail for the media server's logs.
        message: &'a str,
        /// The `id` of the offending frame, when it had one.
        #[serde(rename = "ref")]
        reference: Option<&'a str>,
    },
    /// Answer to `session.end`.
    #[serde(rename = "session.ended")]
    SessionEnded {
        /// Echo of the call id.
        call_id: &'a str,
        /// Tool calls answered in the session.
        invocations: u32,
        /// How many of them were handed to a post-call workflow.
        deferred: u32,
    },
    /// Answer to `ping`.
    #[serde(rename = "pong")]
    Pong,
}

impl Outbound<'_> {
    /// Encode as the text of a WebSocket frame.
    pub fn encode(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no
        // fallible Serialize impls.
        serde_json::to_string(self).expect("outbound frames always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each frame passes through the session's wait at this size: `session.start`, the largest
    /// and once a call, is boxed so the others stay small (docs/performance.md, "Memory").
    #[test]
    fn an_inbound_frame_stays_small() {
        assert!(
            std::mem::size_of::<Inbound>() <= 96,
            "{} bytes",
            std::mem::size_of::<Inbound>()
        );
    }

    #[test]
    fn decodes_every_inbound_example_from_the_spec() {
        let start = decode(
            r#"{"type":"session.start","call_id":"c-8f2e","agent":"support-bot",
 "caller":{"number":"+14155550100","name":"Ana"},
 "variables":{"email":"ana@example.com","order_id":"A-1042","vip":true,"visits":3}}"#,
        )
        .unwrap();
        let Inbound::SessionStart(s) = start else {
            panic!("not a start")
        };
        assert_eq!(s.call_id, "c-8f2e");
        assert_eq!(s.caller.number.as_deref(), Some("+14155550100"));
        assert_eq!(s.variables["vip"].as_text(), "true");
        assert_eq!(s.variables["visits"].as_text(), "3");

        assert_eq!(
            decode(r#"{"type":"transcript","role":"caller","text":"Yes please.","final":true}"#)
                .unwrap(),
            Inbound::Transcript(Transcript {
                role: Role::Caller,
                text: "Yes please.".into(),
                is_final: true
            })
        );
        assert!(matches!(
            decode(r#"{"type":"consent","scope":"whatsapp","granted":true,"source":"dtmf"}"#),
            Ok(Inbound::Consent(Consent { granted: true, .. }))
        ));
        let Inbound::ToolCall(call) = decode(
            r#"{"type":"tool.call","id":"call_01","name":"send","arguments":"{\"order_id\":\"A-1042\"}"}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(call.arguments.parse().unwrap()["order_id"], "A-1042");
        let Inbound::ToolCall(call) =
            decode(r#"{"type":"tool.call","id":"c2","name":"send","arguments":{"a":1}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(call.arguments.parse().unwrap()["a"], 1);
        assert!(matches!(
            decode(r#"{"type":"tool.cancel","id":"call_01","reason":"barge_in"}"#),
            Ok(Inbound::ToolCancel(_))
        ));
        assert!(matches!(
            decode(r#"{"type":"session.end","reason":"hangup"}"#),
            Ok(Inbound::SessionEnd { .. })
        ));
        assert_eq!(decode(r#"{"type":"ping"}"#), Ok(Inbound::Ping));
    }

    #[test]
    fn error_codes_distinguish_syntax_shape_type_and_missing_fields() {
        let e = decode(r#"{"type": }"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadJson);
        assert!(e.message.starts_with("line 1 column 10: "), "{}", e.message);
        assert_eq!(decode("[1,2]").unwrap_err().code, ErrorCode::BadFrame);
        assert_eq!(
            decode(r#"{"type":"transcript","role":"caller","text":5}"#)
                .unwrap_err()
                .code,
            ErrorCode::BadFrame
        );
        assert_eq!(
            decode(r#"{"type":"tool.calls","id":"x"}"#)
                .unwrap_err()
                .code,
            ErrorCode::UnknownType
        );
        let e = decode(r#"{"type":"tool.call","id":"x"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::MissingField);
        assert_eq!(e.reference.as_deref(), Some("x"));
        assert!(e.message.contains("`name`"));
        assert_eq!(
            decode(r#"{"call_id":"x"}"#).unwrap_err().code,
            ErrorCode::MissingField
        );
        let long = "x".repeat(129);
        assert_eq!(
            decode(&format!(
                r#"{{"type":"session.start","call_id":"{long}","agent":"a"}}"#
            ))
            .unwrap_err()
            .code,
            ErrorCode::BadFrame
        );
        assert_eq!(
            decode(r#"{"type":"session.start","call_id":"c","agent":"a","variables":{"x":null}}"#)
                .unwrap_err()
                .code,
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn ids_with_control_characters_are_refused() {
        for frame in [
            r#"{"type":"session.start","call_id":"c-1\n2026-12-03 INFO forged","agent":"a"}"#,
            r#"{"type":"session.start","call_id":"c-1\u001b[2J","agent":"a"}"#,
            r#"{"type":"session.start","call_id":"c","agent":"a\r"}"#,
            r#"{"type":"tool.call","id":"x\ny","name":"f"}"#,
            r#"{"type":"tool.call","id":"x","name":"f\u0007"}"#,
            r#"{"type":"tool.cancel","id":"x\u0000"}"#,
        ] {
            let e = decode(frame).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadFrame, "{frame}");
            assert!(e.message.contains("control characters"), "{}", e.message);
        }
        assert!(decode(r#"{"type":"session.start","call_id":"c-é ✓","agent":"a"}"#).is_ok());
    }

    #[test]
    fn arguments_accept_object_string_and_reject_other_shapes() {
        let parse = |args: &str| {
            let frame = format!(r#"{{"type":"tool.call","id":"c","name":"f","arguments":{args}}}"#);
            match decode(&frame).unwrap() {
                Inbound::ToolCall(call) => call.arguments.parse(),
                other => panic!("{other:?}"),
            }
        };
        assert!(parse("{}").unwrap().is_empty());
        assert!(parse(r#""""#).unwrap().is_empty());
        assert!(parse("null").unwrap().is_empty());
        assert_eq!(parse(r#""{\"a\":\"\u00e9\"}""#).unwrap()["a"], "é");
        assert!(parse("[1]").unwrap_err().contains("an array"));
        assert!(parse(r#""{not json""#).unwrap_err().contains("not JSON"));
        assert!(Arguments::Absent.parse().unwrap().is_empty());
    }

    #[cfg(feature = "simd-json")]
    #[test]
    fn simd_json_decodes_the_same_frames() {
        for frame in [
            r#"{"type":"tool.call","id":"call_01","name":"send","arguments":"{\"order_id\":\"A-1042\"}"}"#,
            r#"{"type":"tool.call","id":"c2","name":"send","arguments":{"a":1}}"#,
            r#"{"type":"session.start","call_id":"c","agent":"a","caller":{"number":"+14155550100"},"variables":{"x":1,"y":"z"}}"#,
            r#"{"type":"transcript","role":"caller","text":"Yes please.","final":true}"#,
        ] {
            let a = decode(frame).unwrap();
            let b = decode_simd(&mut frame.as_bytes().to_vec()).unwrap();
            match (&a, &b) {
                (Inbound::ToolCall(x), Inbound::ToolCall(y)) => {
                    assert_eq!(x.arguments.parse(), y.arguments.parse());
                    assert_eq!((&x.id, &x.name), (&y.id, &y.name));
                }
                _ => assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn outbound_frames_match_the_spec_shapes() {
        let tools = RawValue::from_string("[]".into()).unwrap();
        assert_eq!(
            Outbound::SessionReady {
                protocol: 1,
                call_id: "c",
                tools: &tools,
                resumed: false
            }
            .encode(),
            r#"{"type":"session.ready","protocol":1,"call_id":"c","tools":[]}"#
        );
        assert_eq!(
            Outbound::Error {
                code: ErrorCode::BadJson,
                message: "m",
                reference: None
            }
            .encode(),
            r#"{"type":"error","code":"bad_json","message":"m","ref":null}"#
        );
        assert_eq!(Outbound::Pong.encode(), r#"{"type":"pong"}"#);
        assert_eq!(
            Outbound::ToolFiller {
                id: "call_01",
                text: "One moment.",
                elapsed_ms: 501,
                seq: 1
            }
            .encode(),
            r#"{"type":"tool.filler","id":"call_01","text":"One moment.","elapsed_ms":501,"seq":1}"#
        );
    }
}
