//! Input bindings: how each action input gets its value (SPEC §8), and the value rules
//! (`string`, `integer`, `boolean`, `email`, `e164`, `enum`, `max_length`) checked on it.
//!
//! Resolution never invents a value: a template naming an unknown session value, an empty model
//! argument or a session value that fails its rule leaves the input *missing*, and a missing
//! input is reported, never sent literally.

use std::borrow::Cow;
use std::fmt;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::protocol::{Caller, VarValue};

/// The session values a binding can read: fixed for the life of a call.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The media server's call id.
    pub call_id: String,
    /// The agent id.
    pub agent_id: String,
    /// The caller block of `session.start`.
    pub caller: Caller,
    /// The call's dynamic variables.
    pub variables: IndexMap<String, VarValue>,
}

/// A reference to one session value: `var.NAME`, `caller.number`, `caller.name`, `call_id`,
/// `agent_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SessionRef {
    /// `var.NAME`: a dynamic variable of the call.
    Var(String),
    /// `caller.number`
    CallerNumber,
    /// `caller.name`
    CallerName,
    /// `call_id`
    CallId,
    /// `agent_id`
    AgentId,
}

/// The names a [`SessionRef`] can take, for error messages and did-you-mean.
pub const SESSION_REF_NAMES: [&str; 5] = [
    "var.NAME",
    "caller.number",
    "caller.name",
    "call_id",
    "agent_id",
];

impl SessionRef {
    /// Parse `var.NAME`, `caller.number`, `caller.name`, `call_id` or `agent_id`.
    pub fn parse(s: &str) -> Result<SessionRef, String> {
        match s {
            "caller.number" => Ok(SessionRef::CallerNumber),
            "caller.name" => Ok(SessionRef::CallerName),
            "call_id" => Ok(SessionRef::CallId),
            "agent_id" => Ok(SessionRef::AgentId),
            _ => match s.strip_prefix("var.") {
                Some(name) if is_identifier(name) => Ok(SessionRef::Var(name.to_owned())),
                Some(_) => Err(format!(
                    "{s:?}: a variable name is letters, digits, `_` and `-`"
                )),
                None => Err(format!(
                    "unknown session value {s:?}; use one of {}",
                    SESSION_REF_NAMES.join(", ")
                )),
            },
        }
    }

    /// Look the value up in a call.
    pub fn get<'a>(&self, ctx: &'a CallContext) -> Option<Cow<'a, str>> {
        let v: Option<Cow<'a, str>> = match self {
            SessionRef::Var(name) => ctx.variables.get(name).map(VarValue::as_text),
            SessionRef::CallerNumber => ctx.caller.number.as_deref().map(Cow::Borrowed),
            SessionRef::CallerName => ctx.caller.name.as_deref().map(Cow::Borrowed),
            SessionRef::CallId => Some(Cow::Borrowed(ctx.call_id.as_str())),
            SessionRef::AgentId => Some(Cow::Borrowed(ctx.agent_id.as_str())),
        };
        v.filter(|s| !s.trim().is_empty())
    }
}

impl fmt::Display for SessionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionRef::Var(name) => write!(f, "var.{name}"),
            SessionRef::CallerNumber => f.write_str("caller.number"),
            SessionRef::CallerName => f.write_str("caller.name"),
            SessionRef::CallId => f.write_str("call_id"),
            SessionRef::AgentId => f.write_str("agent_id"),
        }
    }
}

/// Letters, digits, `_` and `-`, 1..64 characters (OpenAI's rule for function and parameter
/// names, used for every name the model sees).
pub fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A constant with optional `{{session value}}` insertions.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq)]
enum TemplatePart {
    Lit(String),
    Ref(SessionRef),
}

impl Template {
    /// Parse `call_{{call_id}}`-style text.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(TemplatePart::Lit(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("unclosed `{{{{` in {s:?}"))?;
            let name = after[..close].trim();
            parts.push(TemplatePart::Ref(SessionRef::parse(name)?));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Lit(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Render against a call; `Err` names the first session value that is not set.
    pub fn render(&self, ctx: &CallContext) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Lit(s) => out.push_str(s),
                TemplatePart::Ref(r) => out.push_str(&r.get(ctx).ok_or_else(|| r.to_string())?),
            }
        }
        Ok(out)
    }

    /// The text of a template that inserts nothing.
    pub fn as_constant(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [TemplatePart::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Whether the template inserts any session value.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, TemplatePart::Lit(_)))
    }

    /// The session values the template reads.
    pub fn refs(&self) -> impl Iterator<Item = &SessionRef> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Ref(r) => Some(r),
            TemplatePart::Lit(_) => None,
        })
    }
}

/// The type of a value, as configured by `type` (and `enum`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueType {
    /// Any text.
    String,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// An email address.
    Email,
    /// An E.164 phone number (`+` and 8 to 15 digits).
    E164,
    /// One of a fixed list.
    Enum(Vec<String>),
}

impl ValueType {
    /// The `type` names accepted in config.
    pub const NAMES: [&'static str; 6] = ["string", "integer", "boolean", "email", "e164", "enum"];

    /// The config name.
    pub fn name(&self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Integer => "integer",
            ValueType::Boolean => "boolean",
            ValueType::Email => "email",
            ValueType::E164 => "e164",
            ValueType::Enum(_) => "enum",
        }
    }
}

/// A type plus an optional length bound: what a value must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRule {
    /// The value type.
    pub ty: ValueType,
    /// Longest accepted text, in characters.
    pub max_length: Option<usize>,
}

impl ValueRule {
    /// A rule of this type with no length bound.
    pub fn of(ty: ValueType) -> Self {
        ValueRule {
            ty,
            max_length: None,
        }
    }

    /// Check a model argument and return its normalised text.
    pub fn check_json(&self, v: &Value) -> Result<String, String> {
        let text: Cow<'_, str> = match (&self.ty, v) {
            (_, Value::String(s)) => Cow::Borrowed(s.as_str()),
            (ValueType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => {
                Cow::Owned(n.to_string())
            }
            (ValueType::Integer, Value::Number(_)) => {
                return Err("must be a whole number".into());
            }
            (ValueType::Boolean, Value::Bool(b)) => Cow::Owned(b.to_string()),
            (ValueType::String | ValueType::Enum(_), Value::Number(n)) => Cow::Owned(n.to_string()),
            (ValueType::String | ValueType::Enum(_), Value::Bool(b)) => Cow::Owned(b.to_string()),
            (ty, other) => {
                return Err(format!(
                    "must be {}, got {}",
                    describe(ty),
                    match other {
                        Value::Array(_) => "an array",
                        Value::Object(_) => "an object",
                        Value::Bool(_) => "a boolean",
                        Value::Number(_) => "a number",
                        _ => "null",
                    }
                ));
            }
        };
        self.check_text(&text)
    }

    /// Check text (from a model argument, a session value or a constant) and return it
    /// normalised: trimmed, e164 without formatting, enum in its configured spelling.
    pub fn check_text(&self, raw: &str) -> Result<String, String> {
        let s = raw.trim();
        let out = match &self.ty {
            ValueType::String => s.to_owned(),
            ValueType::Integer => {
                s.parse::<i64>()
                    .map_err(|_| format!("{s:?} is not a whole number"))?;
                s.to_owned()
            }
            ValueType::Boolean => match s.to_ascii_lowercase().as_str() {
                "true" => "true".to_owned(),
                "false" => "false".to_owned(),
                _ => return Err(format!("{s:?} is not true or false")),
            },
            ValueType::Email => {
                if !is_email(s) {
                    return Err(format!("{s:?} is not an email address"));
                }
                s.to_owned()
            }
            ValueType::E164 => normalize_e164(s).ok_or_else(|| {
                format!("{s:?} is not a phone number in international format (e.g. +14155550100)")
            })?,
            ValueType::Enum(options) => options
                .iter()
                .find(|o| o.eq_ignore_ascii_case(s))
                .cloned()
                .ok_or_else(|| format!("{s:?} is not one of {}", options.join(", ")))?,
        };
        if let Some(max) = self.max_length {
            let n = out.chars().count();
            if n > max {
                return Err(format!("is {n} characters long; at most {max} are allowed"));
            }
        }
        Ok(out)
    }

    /// The JSON Schema of a parameter with this rule.
    pub fn schema(&self, description: Option<&str>) -> Value {
        let mut s = Map::new();
        match &self.ty {
            ValueType::String => {
                s.insert("type".into(), json!("string"));
            }
            ValueType::Integer => {
                s.insert("type".into(), json!("integer"));
            }
            ValueType::Boolean => {
                s.insert("type".into(), json!("boolean"));
            }
            ValueType::Email => {
                s.insert("type".into(), json!("string"));
                s.insert("format".into(), json!("email"));
            }
            ValueType::E164 => {
                s.insert("type".into(), json!("string"));
                s.insert("pattern".into(), json!(E164_PATTERN));
            }
            ValueType::Enum(options) => {
                s.insert("type".into(), json!("string"));
                s.insert("enum".into(), json!(options));
            }
        }
        if let Some(max) = self.max_length {
            s.insert("maxLength".into(), json!(max));
        }
        if let Some(d) = description {
            s.insert("description".into(), json!(d));
        }
        Value::Object(s)
    }
}

/// The JSON Schema pattern for E.164 numbers.
pub const E164_PATTERN: &str = "^\\+[1-9][0-9]{7,14}$";

fn describe(ty: &ValueType) -> &'static str {
    match ty {
        ValueType::String => "text",
        ValueType::Integer => "a whole number",
        ValueType::Boolean => "true or false",
        ValueType::Email => "an email address",
        ValueType::E164 => "a phone number",
        ValueType::Enum(_) => "one of the listed values",
    }
}

/// A pragmatic email check: one `@`, a non-empty local part, a dotted domain, no spaces.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && domain.len() <= 253
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Normalise a phone number written with spaces, dashes, dots or parentheses to E.164
/// (`+` and 8 to 15 digits, no leading zero). A leading `00` is read as `+`. Numbers without a
/// country code are refused rather than guessed.
pub fn normalize_e164(s: &str) -> Option<String> {
    let s = s.trim();
    let rest = if let Some(r) = s.strip_prefix('+') {
        r
    } else {
        s.strip_prefix("00")?
    };
    let mut digits = String::with_capacity(16);
    digits.push('+');
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    let n = digits.len() - 1;
    ((8..=15).contains(&n) && !digits[1..].starts_with('0')).then_some(digits)
}

/// Where a binding takes its value from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A model argument, with an optional session fallback (`{ arg, from }`).
    Arg {
        /// The parameter name the model sees.
        param: String,
        /// The session value used when the model gives none.
        fallback: Option<SessionRef>,
    },
    /// A session value (`{ from }`).
    Session(SessionRef),
    /// A constant or template (`{ value }`).
    Value(Template),
    /// An object built from bindings (`{ map }`), in order.
    Map(Vec<(String, Binding)>),
}

/// How one action input (or map entry) is bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Where the value comes from.
    pub source: Source,
    /// What the value must satisfy.
    pub rule: ValueRule,
    /// Whether the value must resolve for the action to run.
    pub required: bool,
    /// What the model is told about the parameter (`{ arg }` bindings only).
    pub description: Option<String>,
}

/// Where a resolved value came from, for the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum ValueSource {
    /// The model's argument of this name.
    Arg(String),
    /// A session value.
    Session(String),
    /// A constant.
    Constant,
    /// A template over session values.
    Template,
    /// An object built from bindings.
    Map,
}

/// A resolved input value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Resolved {
    /// Text.
    Text(String),
    /// Name/value pairs in configured order.
    Map(Vec<(String, String)>),
}

impl Resolved {
    /// The text value, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Resolved::Text(s) => Some(s),
            Resolved::Map(_) => None,
        }
    }
}

/// One action input after resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedInput {
    /// The action input name.
    pub name: String,
    /// Its value.
    pub value: Resolved,
    /// Where the value came from.
    pub source: ValueSource,
}

/// A value that failed its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The model parameter (or input) name.
    pub field: String,
    /// What is wrong, written for the model.
    pub reason: String,
}

/// The outcome of resolving all of a function's bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Inputs that resolved, in binding order.
    pub inputs: Vec<ResolvedInput>,
    /// Required values that did not resolve: model parameter names where the model can supply
    /// them, else input names (`parameters.order_id` for a map entry).
    pub missing: Vec<String>,
    /// Why each missing value is missing, in the same order (for the evidence).
    pub missing_detail: Vec<String>,
    /// Model arguments that failed their rule.
    pub invalid: Vec<Invalid>,
}

impl Resolution {
    /// The resolved input of this name.
    pub fn get(&self, name: &str) -> Option<&ResolvedInput> {
        self.inputs.iter().find(|i| i.name == name)
    }
}

enum One {
    Value(Resolved, ValueSource),
    Missing { ask: String, why: String },
    Invalid(Invalid),
    Absent,
}

/// Resolve every binding of a function against the model's arguments and the call.
pub fn resolve(
    bindings: &[(String, Binding)],
    args: &Map<String, Value>,
    ctx: &CallContext,
) -> Resolution {
    let mut out = Resolution::default();
    for (name, binding) in bindings {
        match resolve_one(name, binding, args, ctx, &mut out) {
            One::Value(value, source) => out.inputs.push(ResolvedInput {
                name: name.clone(),
                value,
                source,
            }),
            One::Missing { ask, why } => {
                out.missing.push(ask);
                out.missing_detail.push(why);
            }
            One::Invalid(i) => out.invalid.push(i),
            One::Absent => {}
        }
    }
    out
}

fn resolve_one(
    name: &str,
    binding: &Binding,
    args: &Map<String, Value>,
    ctx: &CallContext,
    out: &mut Resolution,
) -> One {
    let not_found = |ask: &str, why: String| {
        if binding.required {
            One::Missing {
                ask: ask.to_owned(),
                why,
            }
        } else {
            One::Absent
        }
    };
    let from_session = |r: &SessionRef, ask: &str| match r.get(ctx) {
        None => not_found(ask, format!("{r} is not set in this call")),
        Some(v) => match binding.rule.check_text(&v) {
            Ok(v) => One::Value(Resolved::Text(v), ValueSource::Session(r.to_string())),
            Err(reason) => not_found(ask, format!("{r} is not usable: {reason}")),
        },
    };
    match &binding.source {
        Source::Arg { param, fallback } => match args.get(param).filter(|v| !is_blank(v)) {
            Some(v) => match binding.rule.check_json(v) {
                Ok(text) => One::Value(Resolved::Text(text), ValueSource::Arg(param.clone())),
                Err(reason) => One::Invalid(Invalid {
                    field: param.clone(),
                    reason,
                }),
            },
            None => match fallback {
                Some(r) => from_session(r, param),
                None => not_found(param, format!("the model did not give `{param}`")),
            },
        },
        Source::Session(r) => from_session(r, name),
        Source::Value(t) => match t.render(ctx) {
            Err(unset) => not_found(name, format!("template needs {unset}, which is not set")),
            Ok(text) => match binding.rule.check_text(&text) {
                Ok(v) => {
                    let source = if t.is_constant() {
                        ValueSource::Constant
                    } else {
                        ValueSource::Template
                    };
                    One::Value(Resolved::Text(v), source)
                }
                Err(reason) => not_found(name, format!("template value is not usable: {reason}")),
            },
        },
        Source::Map(entries) => {
            let mut pairs = Vec::with_capacity(entries.len());
            for (key, entry) in entries {
                let qualified = format!("{name}.{key}");
                match resolve_one(&qualified, entry, args, ctx, out) {
                    One::Value(Resolved::Text(v), _) => pairs.push((key.clone(), v)),
                    One::Value(Resolved::Map(_), _) | One::Absent => {}
                    One::Missing { ask, why } => {
                        out.missing.push(ask);
                        out.missing_detail.push(why);
                    }
                    One::Invalid(i) => out.invalid.push(i),
                }
            }
            if pairs.is_empty() && !binding.required {
                One::Absent
            } else {
                One::Value(Resolved::Map(pairs), ValueSource::Map)
            }
        }
    }
}

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CallContext {
        let mut variables = IndexMap::new();
        variables.insert("email".into(), VarValue::Str("ana@example.com".into()));
        variables.insert("order_id".into(), VarValue::Str("A-1042".into()));
        CallContext {
            call_id: "c-8f2e".into(),
            agent_id: "support-bot".into(),
            caller: Caller {
                number: Some("+14155550100".into()),
                name: Some("Ana".into()),
            },
            variables,
        }
    }

    fn text(ty: ValueType) -> ValueRule {
        ValueRule::of(ty)
    }

    fn arg(param: &str, fallback: Option<&str>, ty: ValueType, required: bool) -> Binding {
        Binding {
            source: Source::Arg {
                param: param.into(),
                fallback: fallback.map(|f| SessionRef::parse(f).unwrap()),
            },
            rule: text(ty),
            required,
            description: None,
        }
    }

    #[test]
    fn e164_normalises_formatting_and_refuses_guesses() {
        assert_eq!(
            normalize_e164("+1 (415) 555-0100").as_deref(),
            Some("+14155550100")
        );
        assert_eq!(
            normalize_e164("0044 20 7946 0958").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(normalize_e164("4155550100"), None);
        assert_eq!(normalize_e164("+0155550100"), None);
        assert_eq!(normalize_e164("+1415555010x"), None);
        assert_eq!(normalize_e164("+1234567"), None);
        assert_eq!(normalize_e164("+1234567890123456"), None);
    }

    #[test]
    fn email_check_is_pragmatic() {
        for ok in ["ana@example.com", "a.b+c@sub.example.co"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "a b@x.com",
            "a@@x.com",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn templates_render_session_values_and_report_unset_ones() {
        let t = Template::parse("call_{{call_id}} for {{ caller.name }}").unwrap();
        assert_eq!(t.render(&ctx()).unwrap(), "call_c-8f2e for Ana");
        let t = Template::parse("order {{var.missing}}").unwrap();
        assert_eq!(t.render(&ctx()).unwrap_err(), "var.missing");
        assert!(Template::parse("oops {{call_id").is_err());
        assert!(
            Template::parse("{{callid}}")
                .unwrap_err()
                .contains("unknown")
        );
        assert!(Template::parse("plain").unwrap().is_constant());
    }

    #[test]
    fn rules_check_and_normalise_model_arguments() {
        let r = text(ValueType::Integer);
        assert_eq!(r.check_json(&json!(42)).unwrap(), "42");
        assert_eq!(r.check_json(&json!("42")).unwrap(), "42");
        assert!(r.check_json(&json!(4.2)).is_err());
        let r = text(ValueType::Enum(vec!["Email".into(), "SMS".into()]));
        assert_eq!(r.check_json(&json!("sms")).unwrap(), "SMS");
        assert!(
            r.check_json(&json!("fax"))
                .unwrap_err()
                .contains("not one of")
        );
        let r = ValueRule {
            ty: ValueType::String,
            max_length: Some(3),
        };
        assert!(
            r.check_json(&json!("abcd"))
                .unwrap_err()
                .contains("at most 3")
        );
        assert!(
            text(ValueType::String)
                .check_json(&json!({"a":1}))
                .unwrap_err()
                .contains("an object")
        );
        assert_eq!(
            text(ValueType::Boolean).check_json(&json!(true)).unwrap(),
            "true"
        );
    }

    #[test]
    fn resolution_prefers_arguments_then_session_fallbacks() {
        let bindings = vec![
            (
                "to".to_string(),
                arg("email", Some("var.email"), ValueType::Email, true),
            ),
            (
                "whatsapp_number".to_string(),
                Binding {
                    source: Source::Session(SessionRef::CallerNumber),
                    rule: text(ValueType::E164),
                    required: true,
                    description: None,
                },
            ),
            (
                "broadcast_name".to_string(),
                Binding {
                    source: Source::Value(Template::parse("call_{{call_id}}").unwrap()),
                    rule: text(ValueType::String),
                    required: true,
                    description: None,
                },
            ),
        ];
        let r = resolve(&bindings, &Map::new(), &ctx());
        assert!(r.missing.is_empty() && r.invalid.is_empty(), "{r:?}");
        assert_eq!(
            r.get("to").unwrap().source,
            ValueSource::Session("var.email".into())
        );
        assert_eq!(
            r.get("broadcast_name").unwrap().value,
            Resolved::Text("call_c-8f2e".into())
        );

        let args = json!({"email": "bo@example.org"});
        let r = resolve(&bindings, args.as_object().unwrap(), &ctx());
        assert_eq!(
            r.get("to").unwrap().value,
            Resolved::Text("bo@example.org".into())
        );
        assert_eq!(
            r.get("to").unwrap().source,
            ValueSource::Arg("email".into())
        );
    }

    #[test]
    fn missing_values_name_the_parameter_the_model_can_supply() {
        let bindings = vec![
            ("to".to_string(), arg("email", None, ValueType::Email, true)),
            (
                "broadcast_name".to_string(),
                Binding {
                    source: Source::Value(Template::parse("order_{{var.nope}}").unwrap()),
                    rule: text(ValueType::String),
                    required: true,
                    description: None,
                },
            ),
            (
                "parameters".to_string(),
                Binding {
                    source: Source::Map(vec![
                        (
                            "order_id".to_string(),
                            arg("order_id", None, ValueType::String, true),
                        ),
                        (
                            "note".to_string(),
                            arg("note", None, ValueType::String, false),
                        ),
                    ]),
                    rule: text(ValueType::String),
                    required: false,
                    description: None,
                },
            ),
        ];
        let args = json!({"email": "  ", "note": null});
        let r = resolve(&bindings, args.as_object().unwrap(), &ctx());
        assert_eq!(r.missing, vec!["email", "broadcast_name", "order_id"]);
        assert!(r.missing_detail[1].contains("var.nope"));

        let args = json!({"email": "not-an-email", "order_id": "A-1"});
        let r = resolve(&bindings, args.as_object().unwrap(), &ctx());
        assert_eq!(r.invalid.len(), 1);
        assert_eq!(r.invalid[0].field, "email");
        assert_eq!(
            r.get("parameters").unwrap().value,
            Resolved::Map(vec![("order_id".into(), "A-1".into())])
        );
    }

    #[test]
    fn an_unusable_session_value_is_missing_not_sent() {
        let mut c = ctx();
        c.caller.number = Some("anonymous".into());
        let bindings = vec![(
            "whatsapp_number".to_string(),
            arg("phone", Some("caller.number"), ValueType::E164, true),
        )];
        let r = resolve(&bindings, &Map::new(), &c);
        assert_eq!(r.missing, vec!["phone"]);
        assert!(r.missing_detail[0].contains("caller.number is not usable"));
    }
}
