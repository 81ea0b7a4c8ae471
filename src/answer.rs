//! What the model is told: `tool.result.output` for every outcome (SPEC §2).
//!
//! The output is a JSON object as a string, with `ok`, and on anything but success an `error`
//! code and a `next` instruction the model can act on. A function's `next` table overrides the
//! instruction per code; `{missing}` and `{function}` in an override are filled in.

use serde_json::{Map, Value, json};

use crate::bindings::Source;
use crate::call_state::ActionState;
use crate::catalog::Action;
use crate::codes::Code;
use crate::config::Function;
use crate::guards::{Guard, Rejection};
use crate::protocol::ResultStatus;
use crate::providers::{Delivery, FailureKind, ProviderError};
use crate::workflow::DeferReason;

/// A `tool.result` body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Status.
    pub status: ResultStatus,
    /// JSON text for the model.
    pub output: String,
    /// Extra detail for the media server (`provider_outcome` of a cancelled call).
    pub data: Option<Value>,
}

fn humanize(name: &str) -> String {
    let base = name.rsplit('.').next().unwrap_or(name).replace('_', " ");
    if base == "email" || base.ends_with(" email") {
        format!("{base} address")
    } else {
        base
    }
}

fn list(names: &[String]) -> String {
    let h: Vec<String> = names.iter().map(|n| humanize(n)).collect();
    match h.len() {
        0 => String::new(),
        1 => h[0].clone(),
        n => format!("{} and {}", h[..n - 1].join(", "), h[n - 1]),
    }
}

fn next_text(
    function: Option<&Function>,
    code: Code,
    missing: &[String],
    default: String,
) -> String {
    match function.and_then(|f| f.next.get(code.as_str()).map(|t| (f, t))) {
        Some((f, t)) => t
            .replace("{missing}", &list(missing))
            .replace("{function}", &f.name),
        None => default,
    }
}

fn output(fields: Map<String, Value>) -> String {
    Value::Object(fields).to_string()
}

fn failure(
    code: Code,
    next: String,
    extra: impl IntoIterator<Item = (&'static str, Value)>,
) -> String {
    let mut m = Map::new();
    m.insert("ok".into(), json!(false));
    m.insert("error".into(), json!(code.as_str()));
    for (k, v) in extra {
        m.insert(k.into(), v);
    }
    m.insert("next".into(), json!(next));
    output(m)
}

/// A guard stopped the call.
pub fn rejected(function: Option<&Function>, name: &str, r: &Rejection) -> Answer {
    let again = format!("call {name} again");
    let default = match r.guard {
        Guard::FunctionExposed => {
            format!("There is no function named {name}. Use only the functions you were given.")
        }
        Guard::Arguments => match r.invalid.first() {
            Some(i) => format!(
                "The {} given is not valid ({}). Confirm the correct value with the caller, then {again}.",
                humanize(&i.field),
                i.reason
            ),
            None => format!("The arguments could not be read ({}). Send a JSON object and {again}.", r.message),
        },
        Guard::RequiredValues => format!(
            "Ask the caller for their {}, confirm it, then {again}.",
            list(&r.missing)
        ),
        Guard::Connection => "This service is not available right now. Tell the caller you cannot do this at the moment and offer another way; do not call it again in this call.".to_owned(),
        Guard::Consent => format!(
            "Do not do this yet. Ask the caller whether they want it, and {again} only after they clearly agree."
        ),
        Guard::Recipient => "This can only go to the caller's own contact details. Do not send it anywhere else; tell the caller it can only be sent to them.".to_owned(),
        Guard::PerCallLimit => "This has already been done as many times as allowed in this call. Tell the caller it was already taken care of; do not call it again.".to_owned(),
                Guard::Rate => "Too many of these are going out right now. Tell the caller it cannot be done at this moment.".to_owned(),
        Guard::Duplicate => format!("This could not be done ({}).", r.message),
    };
    let next = next_text(function, r.error_code(), &r.missing, default);
    let mut extra: Vec<(&'static str, Value)> = Vec::new();
    if !r.missing.is_empty() {
        extra.push(("missing", json!(r.missing)));
    }
    if !r.invalid.is_empty() {
        extra.push((
            "invalid",
            Value::Object(
                r.invalid
                    .iter()
                    .map(|i| (i.field.clone(), json!(i.reason)))
                    .collect(),
            ),
        ));
    }
    Answer {
        status: ResultStatus::Rejected,
        output: failure(r.error_code(), next, extra),
        data: None,
    }
}

/// The same action already ran or is running.
pub fn duplicate(function: &Function, earlier_call: &str, state: &ActionState) -> Answer {
    let (status, default) = match state {
        ActionState::Succeeded { .. } => (
            "already_done",
            "This was already done earlier in the call; nothing new was sent. Tell the caller it is already taken care of.",
        ),
        ActionState::Unknown => (
            "unconfirmed",
            "An earlier attempt may have gone through and could not be confirmed; nothing new was sent, so the caller does not get it twice. Tell the caller you could not confirm it.",
        ),
        ActionState::Deferred => (
            "queued",
            "This is already queued to happen after the call; nothing new was sent. Tell the caller it will arrive shortly after the call.",
        ),
        _ => (
            "in_progress",
            "This is already in progress; nothing new was sent. Wait for the earlier result.",
        ),
    };
    let next = next_text(Some(function), Code::Duplicate, &[], default.to_owned());
    let mut m = Map::new();
    m.insert("ok".into(), json!(*state != ActionState::Unknown));
    m.insert("status".into(), json!(status));
    m.insert("duplicate_of".into(), json!(earlier_call));
    m.insert("next".into(), json!(next));
    Answer {
        status: ResultStatus::Duplicate,
        output: output(m),
        data: None,
    }
}

/// The action is in the post-call workflow queue.
pub fn deferred(function: &Function, job_id: &str, reason: DeferReason) -> Answer {
    let what = match function.action {
        Action::ResendSendEmail => "The email will arrive shortly after the call.",
        Action::WatiSendTemplateMessage | Action::WatiSendSessionMessage => {
            "The WhatsApp message will arrive shortly after the call."
        }
        Action::WebhookPost => "This will be taken care of right after the call.",
    };
    let next = next_text(
        Some(function),
        Code::Deferred,
        &[],
        format!("Tell the caller: {what} Do not call this again."),
    );
    let mut m = Map::new();
    m.insert("ok".into(), json!(true));
    m.insert("status".into(), json!("queued"));
    m.insert("next".into(), json!(next));
    Answer {
        status: ResultStatus::Deferred,
        output: output(m),
        data: Some(json!({"job_id": job_id, "reason": reason.as_str()})),
    }
}

/// The provider accepted the action.
pub fn succeeded(function: &Function) -> Answer {
    let mut m = Map::new();
    m.insert("ok".into(), json!(true));
    m.insert("message".into(), json!(function.action.label()));
    if let Some(next) = function.next.get(Code::Succeeded.as_str()) {
        m.insert(
            "next".into(),
            json!(next.replace("{function}", &function.name)),
        );
    }
    Answer {
        status: ResultStatus::Succeeded,
        output: output(m),
        data: None,
    }
}

/// The action input names the provider named, as the model knows them.
pub fn model_fields(function: &Function, fields: &[String]) -> Vec<String> {
    fields
        .iter()
        .map(|f| {
            function
                .inputs
                .iter()
                .find(|(name, _)| name == f)
                .and_then(|(_, b)| match &b.source {
                    Source::Arg { param, .. } => Some(param.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| f.clone())
        })
        .collect()
}

/// The provider refused or errored, or the budget ran out.
pub fn failed(function: &Function, e: &ProviderError) -> Answer {
    let code = e.kind.error_code();
    let fields = model_fields(function, &e.fields);
    let default = match e.kind {
        FailureKind::Rejected if !fields.is_empty() => format!(
            "The service refused it because of the {}. Confirm the correct value with the caller, then call {} again.",
            list(&fields),
            function.name
        ),
        FailureKind::Rejected => "The service refused it. Tell the caller it could not be done; do not retry with the same details.".to_owned(),
        FailureKind::AuthFailed => "This service is not set up correctly right now. Tell the caller it could not be done and that someone will follow up; do not call it again in this call.".to_owned(),
        FailureKind::Unavailable if e.delivery == Delivery::NotSent => "The service could not be reached, so nothing was sent. Tell the caller it could not be done right now.".to_owned(),
        FailureKind::Unavailable => "The service is having trouble right now. Tell the caller it could not be done at the moment; do not call it again in this call.".to_owned(),
        FailureKind::Timeout | FailureKind::BadResponse => "The service did not confirm it in time, so it may or may not have gone through. Tell the caller you could not confirm it; do not call it again in this call.".to_owned(),
    };
    let next = next_text(Some(function), code, &fields, default);
    let mut extra: Vec<(&'static str, Value)> = vec![("provider_message", json!(e.message))];
    if !fields.is_empty() {
        // A provider that says a value is missing (Resend `missing_required_field`) is asking
        // for the same thing the required-values guard asks for.
        if e.provider_code.as_deref() == Some("missing_required_field") {
            extra.push(("missing", json!(fields)));
        }
        extra.push(("fields", json!(fields)));
    }
    Answer {
        status: ResultStatus::Failed,
        output: failure(code, next, extra),
        data: None,
    }
}

/// The call was refused before it ran: the sidecar is overloaded or shutting down (SPEC §2).
pub fn overloaded(function: Option<&Function>) -> Answer {
    let next = next_text(
        function,
        Code::Overloaded,
        &[],
        "The system is busy and nothing was done. Apologise to the caller and offer to try again in a moment.".to_owned(),
    );
    Answer {
        status: ResultStatus::Failed,
        output: failure(Code::Overloaded, next, []),
        data: None,
    }
}

/// toolgate itself failed while running the call.
pub fn internal(function: &Function) -> Answer {
    let next = next_text(
        Some(function),
        Code::Internal,
        &[],
        "Something went wrong on our side and it is not known whether this went through. Tell the caller you could not confirm it; do not call it again in this call.".to_owned(),
    );
    Answer {
        status: ResultStatus::Failed,
        output: failure(Code::Internal, next, []),
        data: None,
    }
}

/// The outcome of a cancelled call's provider request, for `data.provider_outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderOutcome {
    /// Cancelled before anything was sent.
    NotSent,
    /// The provider accepted it before or despite the barge-in.
    Succeeded,
    /// The provider refused or errored.
    Failed,
    /// It may or may not have gone through (timeout, reset, 5xx).
    Unknown,
}

impl ProviderOutcome {
    /// As the wire and the evidence spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderOutcome::NotSent => "not_sent",
            ProviderOutcome::Succeeded => "succeeded",
            ProviderOutcome::Failed => "failed",
            ProviderOutcome::Unknown => "unknown",
        }
    }
}

/// The caller barged in; `outcome` is what really happened at the provider.
pub fn cancelled(function: &Function, outcome: ProviderOutcome, reason: Option<&str>) -> Answer {
    let default = match outcome {
        ProviderOutcome::NotSent => {
            "The caller interrupted before this was sent; nothing was sent. Only do it if the caller still wants it."
        }
        ProviderOutcome::Succeeded => {
            "The caller interrupted, but this had already gone through. If it matters, tell the caller it was done."
        }
        ProviderOutcome::Failed => {
            "The caller interrupted, and the attempt did not go through. Only try again if the caller still wants it."
        }
        ProviderOutcome::Unknown => {
            "The caller interrupted, and it could not be confirmed whether this went through. Do not try again in this call; tell the caller if they ask."
        }
    };
    let next = next_text(Some(function), Code::Cancelled, &[], default.to_owned());
    let mut m = Map::new();
    m.insert("ok".into(), json!(outcome == ProviderOutcome::Succeeded));
    m.insert("error".into(), json!(Code::Cancelled.as_str()));
    m.insert("provider_outcome".into(), json!(outcome.as_str()));
    m.insert("next".into(), json!(next));
    let mut data = Map::new();
    data.insert("provider_outcome".into(), json!(outcome.as_str()));
    if let Some(r) = reason {
        data.insert("reason".into(), json!(r));
    }
    Answer {
        status: ResultStatus::Cancelled,
        output: output(m),
        data: Some(Value::Object(data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_read_like_the_spec_example() {
        let r = Rejection {
            guard: Guard::RequiredValues,
            message: String::new(),
            missing: vec!["email".into()],
            invalid: Vec::new(),
        };
        let a = rejected(None, "send_email_summary", &r);
        assert_eq!(a.status, ResultStatus::Rejected);
        let v: Value = serde_json::from_str(&a.output).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "missing_fields");
        assert_eq!(v["missing"], json!(["email"]));
        assert_eq!(
            v["next"],
            "Ask the caller for their email address, confirm it, then call send_email_summary again."
        );
    }

    #[test]
    fn lists_read_naturally() {
        assert_eq!(
            list(&["email".into(), "order_id".into(), "parameters.date".into()]),
            "email address, order id and date"
        );
    }
}
