//! Wati (WhatsApp): template and session messages.
//!
//! Success is two-level: HTTP 200 *and* `result` true (or `"success"`). Business failures often
//! arrive inside a 200 (`{"result":false,"info":"Template is not approved."}`, or
//! `validWhatsAppNumber: false`), and 401/403 bodies may be plain text or empty. Wati has no
//! idempotency key: after a 5xx, timeout or reset the message may or may not have gone out.

use std::time::Duration;

use reqwest::Url;
use serde::Serialize;
use serde_json::Value;

use super::{
    Accepted, ConnectionSettings, Delivery, FailureKind, Prepared, ProviderError, RawResponse, map,
    required, short,
};
use crate::bindings::Resolution;
use crate::secret::Secret;

/// The keys of a Wati connection (SPEC §8): the tenant `endpoint` and the `token`.
pub const KEYS: &[&str] = &["endpoint", "token"];

/// Wati's documented limit on its smallest plan: 30 template messages per 10 s.
pub const DEFAULT_RATE: (u32, Duration) = (30, Duration::from_secs(10));

/// The tenant endpoint as requests are built on it: without a trailing slash or a query.
pub fn normalize_endpoint(mut endpoint: Url) -> Url {
    let trimmed = endpoint.path().trim_end_matches('/').to_owned();
    endpoint.set_path(&trimmed);
    endpoint.set_query(None);
    endpoint
}

/// Users paste Wati tokens with `Bearer ` already on them.
pub fn normalize_token(s: Secret) -> Secret {
    let raw = s.expose().trim();
    let stripped = raw
        .strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("bearer "))
        .unwrap_or(raw)
        .trim();
    if stripped.len() == s.expose().len() {
        s
    } else {
        Secret::new(stripped)
    }
}

#[derive(Serialize)]
struct TemplateBody<'a> {
    template_name: &'a str,
    broadcast_name: &'a str,
    parameters: Vec<Param<'a>>,
}

#[derive(Serialize)]
struct Param<'a> {
    name: &'a str,
    value: &'a str,
}

fn endpoint(settings: &ConnectionSettings) -> (&reqwest::Url, &str) {
    let ConnectionSettings::Wati { endpoint, token } = settings else {
        unreachable!("dispatched by connection kind");
    };
    (endpoint, token.expose())
}

/// `+14155550100` as Wati wants it: digits only.
fn wati_number(e164: &str) -> &str {
    e164.trim_start_matches('+')
}

/// `POST {endpoint}/api/v1/sendTemplateMessage?whatsappNumber=...`
pub fn prepare_template(
    settings: &ConnectionSettings,
    inputs: &Resolution,
) -> Result<Prepared, ProviderError> {
    let (base, token) = endpoint(settings);
    let number = wati_number(required(inputs, "whatsapp_number")?);
    let mut url = super::join(base, "api/v1/sendTemplateMessage");
    url.query_pairs_mut().append_pair("whatsappNumber", number);
    let body = TemplateBody {
        template_name: required(inputs, "template_name")?,
        broadcast_name: required(inputs, "broadcast_name")?,
        parameters: map(inputs, "parameters")
            .iter()
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .map(|(name, value)| Param { name, value })
            .collect(),
    };
    Ok(Prepared::post(url).bearer(token).json(&body))
}

/// `POST {endpoint}/api/v1/sendSessionMessage/{number}?messageText=...` (no body).
pub fn prepare_session(
    settings: &ConnectionSettings,
    inputs: &Resolution,
) -> Result<Prepared, ProviderError> {
    let (base, token) = endpoint(settings);
    let number = wati_number(required(inputs, "whatsapp_number")?);
    let mut url = super::join(base, &format!("api/v1/sendSessionMessage/{number}"));
    url.query_pairs_mut()
        .append_pair("messageText", required(inputs, "message_text")?);
    Ok(Prepared::post(url).bearer(token))
}

/// `GET {endpoint}/api/v1/getMessageTemplates`: one template proves the token; when the
/// config names templates, a page large enough to find them.
pub fn prepare_validation(settings: &ConnectionSettings, templates: &[String]) -> Prepared {
    let (base, token) = endpoint(settings);
    let mut url = super::join(base, "api/v1/getMessageTemplates");
    let page = if templates.is_empty() { 1 } else { 500 };
    url.query_pairs_mut()
        .append_pair("pageSize", &page.to_string())
        .append_pair("pageNumber", "1");
    Prepared::get(url).bearer(token)
}

/// Read the answer to `getMessageTemplates`, checking each configured template: it must exist
/// and be `APPROVED` (Wati refuses to send the others).
pub fn interpret_validation(raw: &RawResponse, templates: &[String]) -> super::Checked {
    use super::Trouble;
    match raw.status {
        200 => {}
        401 | 403 => {
            return Err((
                Trouble::Credentials,
                format!("Wati refused the token (HTTP {})", raw.status),
            ));
        }
        404 => {
            return Err((
                Trouble::Config,
                "no Wati tenant at this endpoint (HTTP 404); use the API endpoint URL from the Wati dashboard".into(),
            ));
        }
        429 | 500..=599 => {
            return Err((
                Trouble::Unreachable,
                format!("Wati answered HTTP {}", raw.status),
            ));
        }
        status => {
            return Err((Trouble::Config, format!("Wati answered HTTP {status}")));
        }
    }
    let Some(list) = serde_json::from_slice::<Value>(&raw.body)
        .ok()
        .and_then(|v| v.get("messageTemplates").and_then(Value::as_array).cloned())
    else {
        return Err((
            Trouble::Config,
            "Wati answered 200 without a template list; is the endpoint the tenant URL from the dashboard?".into(),
        ));
    };
    let mut checks = Vec::new();
    let mut problems = Vec::new();
    for name in templates {
        let found = list
            .iter()
            .find(|t| t.get("elementName").and_then(Value::as_str) == Some(name));
        let check = match found.and_then(|t| t.get("status").and_then(Value::as_str)) {
            Some(status) if status.eq_ignore_ascii_case("APPROVED") => {
                format!("template {name:?} is approved")
            }
            Some(status) => {
                let c = format!("template {name:?} is not approved ({status})");
                problems.push(c.clone());
                c
            }
            None => {
                let c = format!("template {name:?} was not found");
                problems.push(c.clone());
                c
            }
        };
        checks.push(check);
    }
    let summary = if problems.is_empty() {
        "the token is valid".to_owned()
    } else {
        format!("the token is valid, but {}", problems.join("; "))
    };
    Ok(super::Found {
        reason: summary,
        checks,
        problems: problems.len(),
    })
}

/// Read a Wati send answer.
pub fn interpret(raw: RawResponse) -> Result<Accepted, ProviderError> {
    let json: Option<Value> = serde_json::from_slice(&raw.body).ok();
    let info = json.as_ref().and_then(info_of);
    if raw.status != 200 {
        // Plain-text and HTML bodies are kept for the evidence only; 401/403 bodies may echo
        // the token, so their text is never used.
        let message = match (raw.status, info) {
            (401 | 403, _) => super::auth_message(raw.status),
            (_, Some(info)) => info,
            (status, None) => format!("HTTP {status}"),
        };
        return Err(ProviderError::from_status(&raw, message));
    }
    let Some(json) = json else {
        let mut e = ProviderError::from_status(&raw, "Wati answered 200 without JSON".into());
        e.kind = FailureKind::BadResponse;
        e.delivery = Delivery::PossiblySent;
        e.retryable = false;
        return Err(e);
    };
    let ok = match json.get("result") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("success"),
        _ => false,
    };
    if json.get("validWhatsAppNumber") == Some(&Value::Bool(false)) {
        let mut e = ProviderError::from_status(
            &raw,
            info.unwrap_or_else(|| "not a valid WhatsApp number".into()),
        );
        e.kind = FailureKind::Rejected;
        e.fields = vec!["whatsapp_number".into()];
        return Err(e);
    }
    if !ok {
        let mut e = ProviderError::from_status(
            &raw,
            info.unwrap_or_else(|| "Wati answered result:false".into()),
        );
        e.kind = FailureKind::Rejected;
        return Err(e);
    }
    Ok(Accepted {
        message_id: message_id(&json),
        http_status: raw.status,
        body: raw.body,
    })
}

fn info_of(json: &Value) -> Option<String> {
    ["info", "message", "error", "title"]
        .iter()
        .find_map(|k| json.get(*k).and_then(Value::as_str))
        .filter(|s| !s.trim().is_empty())
        .map(short)
}

fn message_id(json: &Value) -> Option<String> {
    let candidates = [
        json.pointer("/model/ids/0"),
        json.pointer("/message/whatsappMessageId"),
        json.pointer("/message/id"),
        json.get("id"),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|v| v.as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::tests::raw;

    #[test]
    fn success_needs_200_and_result_true() {
        let ok = interpret(raw(
            200,
            r#"{"result":true,"phone_number":"14155550100","template_name":"order_confirmed","validWhatsAppNumber":true,"model":{"ids":["664300afcb326f1388e50697"]}}"#,
        ))
        .unwrap();
        assert_eq!(ok.message_id.as_deref(), Some("664300afcb326f1388e50697"));
        assert!(interpret(raw(200, r#"{"result":"success"}"#)).is_ok());
    }

    #[test]
    fn failures_inside_http_200_are_refusals_with_their_info() {
        let e = interpret(raw(
            200,
            r#"{"result":false,"info":"Template is not approved."}"#,
        ))
        .unwrap_err();
        assert_eq!(e.kind, FailureKind::Rejected);
        assert_eq!(e.message, "Template is not approved.");
        assert!(!e.retryable);

        let e = interpret(raw(200, r#"{"result":true,"validWhatsAppNumber":false}"#)).unwrap_err();
        assert_eq!(e.fields, vec!["whatsapp_number"]);

        let e = interpret(raw(200, "<html>oops</html>")).unwrap_err();
        assert_eq!(e.kind, FailureKind::BadResponse);
        assert_eq!(e.delivery, Delivery::PossiblySent);
    }

    #[test]
    fn http_errors_are_classified() {
        let e = interpret(raw(401, "")).unwrap_err();
        assert_eq!(e.kind, FailureKind::AuthFailed);
        assert_eq!(e.message, "the provider refused the credentials (HTTP 401)");
        let e = interpret(raw(403, "Forbidden: token abc123 lacks scope")).unwrap_err();
        assert!(e.is_auth());
        assert_eq!(e.message, "the provider refused the credentials (HTTP 403)");
        let e = interpret(raw(404, "<html>Not Found</html>")).unwrap_err();
        assert_eq!(e.message, "HTTP 404");
        let e = interpret(raw(400, r#"{"result":false,"info":"Invalid template"}"#)).unwrap_err();
        assert_eq!(e.kind, FailureKind::Rejected);
        assert_eq!(e.message, "Invalid template");
        let e = interpret(raw(429, "")).unwrap_err();
        assert!(e.retryable && e.kind == FailureKind::Unavailable);
        let e = interpret(raw(502, "")).unwrap_err();
        assert_eq!(e.delivery, Delivery::PossiblySent);
    }
}
