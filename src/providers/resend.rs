//! Resend: `POST {base}/emails` (`resend.send_email`).
//!
//! Errors arrive as `{"statusCode":422,"name":"missing_required_field","message":"Missing `to`
//! field."}`; we branch on `name` and status, never on the wording, and lift the backticked
//! field names out of the message so the model can be told which value was wrong.

use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::{
    Accepted, ActionContext, ConnectionSettings, Delivery, FailureKind, Prepared, ProviderError,
    RawResponse, short, text,
};
use crate::bindings::{Resolution, is_identifier};

/// The keys of a Resend connection (SPEC §8): `api_key`, `from`, and `base_url` for a
/// non-default API base.
pub const KEYS: &[&str] = &["api_key", "from", "base_url"];

/// Resend's documented limit: a few requests per second per team.
pub const DEFAULT_RATE: (u32, Duration) = (5, Duration::from_secs(1));

/// The API base when a connection sets no `base_url`.
pub fn default_base_url() -> Url {
    Url::parse("https://api.resend.com").expect("static URL")
}

/// The address part of `Name <addr@domain>` (or the whole string).
pub fn sender_address(from: &str) -> &str {
    match (from.rfind('<'), from.rfind('>')) {
        (Some(l), Some(r)) if l < r => from[l + 1..r].trim(),
        _ => from.trim(),
    }
}

#[derive(Serialize)]
struct Email<'a> {
    from: &'a str,
    to: &'a str,
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
}

/// Build `POST /emails` with `Idempotency-Key`.
pub fn prepare(
    settings: &ConnectionSettings,
    inputs: &Resolution,
    ctx: &ActionContext<'_>,
) -> Result<Prepared, ProviderError> {
    let ConnectionSettings::Resend {
        api_key,
        from,
        base_url,
    } = settings
    else {
        unreachable!("dispatched by connection kind");
    };
    let email = Email {
        from: text(inputs, "from").unwrap_or(from),
        to: super::required(inputs, "to")?,
        subject: super::required(inputs, "subject")?,
        text: text(inputs, "text"),
        html: text(inputs, "html"),
        reply_to: text(inputs, "reply_to"),
    };
    let url = super::join(base_url, "emails");
    Ok(Prepared::post(url)
        .bearer(api_key.expose())
        .header("idempotency-key", ctx.idempotency_key)
        .json(&email))
}

/// `GET {base}/domains`: the cheapest call that needs a valid key.
pub fn prepare_validation(settings: &ConnectionSettings) -> Prepared {
    let ConnectionSettings::Resend {
        api_key, base_url, ..
    } = settings
    else {
        unreachable!("dispatched by connection kind");
    };
    Prepared::get(super::join(base_url, "domains")).bearer(api_key.expose())
}

/// Read the answer to `GET /domains`. A `401 restricted_api_key` is a valid sending-only key:
/// it exists and it can send, it just may not list domains.
pub fn interpret_validation(raw: &RawResponse) -> super::Checked {
    use super::Trouble;
    let parsed: Option<ErrorBody> = serde_json::from_slice(&raw.body).ok();
    let name = parsed.as_ref().and_then(|b| b.name.as_deref());
    match (raw.status, name) {
        (200..=299, _) => Ok(super::Found::valid(
            "the API key is valid (it can list domains)",
        )),
        (401, Some("restricted_api_key")) => Ok(super::Found::valid(
            "a sending-only API key (restricted_api_key): it can send email",
        )),
        (401 | 403, name) => Err((
            Trouble::Credentials,
            format!(
                "Resend refused the API key ({})",
                name.unwrap_or("no reason given")
            ),
        )),
        (429 | 500..=599, _) => Err((
            Trouble::Unreachable,
            format!("Resend answered HTTP {}", raw.status),
        )),
        (status, name) => Err((
            Trouble::Config,
            format!(
                "Resend answered HTTP {status} ({}); is base_url right?",
                name.unwrap_or("no error name")
            ),
        )),
    }
}

#[derive(Deserialize)]
struct Sent {
    id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    name: Option<String>,
    message: Option<String>,
}

/// Read the answer to `POST /emails`.
pub fn interpret(raw: RawResponse) -> Result<Accepted, ProviderError> {
    if (200..300).contains(&raw.status) {
        return match serde_json::from_slice::<Sent>(&raw.body) {
            Ok(sent) if !sent.id.is_empty() => Ok(Accepted {
                message_id: Some(sent.id),
                http_status: raw.status,
                body: raw.body,
            }),
            _ => Err(bad_response(&raw, "a success without an email id")),
        };
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice(&raw.body).ok();
    let name = parsed.as_ref().and_then(|b| b.name.clone());
    let message = parsed
        .as_ref()
        .and_then(|b| b.message.as_deref())
        .map(short)
        .unwrap_or_else(|| format!("HTTP {}", raw.status));
    let mut e = ProviderError::from_status(&raw, message);
    // Resend also answers 403 for what is wrong with the email, not the key (a
    // `validation_error` such as sending to an address the domain may not reach): only its
    // key errors (or a 401/403 without a name) are credential refusals.
    if e.kind == FailureKind::AuthFailed
        && name.as_deref().is_some_and(|n| {
            !matches!(
                n,
                "missing_api_key" | "invalid_api_key" | "restricted_api_key"
            )
        })
    {
        e.kind = FailureKind::Rejected;
    }
    // Same key while the first request is still running: the first one may still send.
    if raw.status == 409 && name.as_deref() == Some("concurrent_idempotent_requests") {
        e.kind = FailureKind::Unavailable;
        e.delivery = Delivery::PossiblySent;
        e.retryable = true;
    }
    if e.kind == FailureKind::Rejected {
        e.fields = backticked_fields(&e.message);
    }
    e.provider_code = name;
    Err(e)
}

fn bad_response(raw: &RawResponse, what: &str) -> ProviderError {
    let mut e = ProviderError::from_status(raw, format!("Resend answered {what}"));
    e.kind = FailureKind::BadResponse;
    e.delivery = Delivery::PossiblySent;
    e.retryable = false;
    e
}

/// Field names Resend quotes in backticks: "Missing `to` field." gives `to`.
fn backticked_fields(message: &str) -> Vec<String> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| is_identifier(s))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::tests::raw;
    use reqwest::header::HeaderValue;

    #[test]
    fn success_carries_the_email_id() {
        let ok = interpret(raw(200, r#"{"id":"49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}"#)).unwrap();
        assert_eq!(
            ok.message_id.as_deref(),
            Some("49a3999c-0ce1-4ea6-ab68-afcd6dc2e794")
        );
        let e = interpret(raw(200, "<html>")).unwrap_err();
        assert_eq!(e.kind, FailureKind::BadResponse);
        assert!(!e.retryable);
    }

    #[test]
    fn errors_are_classified_by_name_and_status() {
        let e = interpret(raw(
            422,
            r#"{"statusCode":422,"name":"missing_required_field","message":"Missing `to` field."}"#,
        ))
        .unwrap_err();
        assert_eq!(e.kind, FailureKind::Rejected);
        assert_eq!(e.fields, vec!["to"]);
        assert_eq!(e.provider_code.as_deref(), Some("missing_required_field"));
        assert!(!e.retryable);

        let e = interpret(raw(
            422,
            r#"{"statusCode":422,"name":"invalid_parameter","message":"Invalid `to` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format."}"#,
        ))
        .unwrap_err();
        assert_eq!(e.fields, vec!["to"]);

        let e = interpret(raw(
            403,
            r#"{"statusCode":403,"name":"invalid_api_key","message":"API key is invalid"}"#,
        ))
        .unwrap_err();
        assert_eq!(e.kind, FailureKind::AuthFailed);
        // A 403 about the email, not the key: the caller's mistake, the connection is fine.
        let e = interpret(raw(
            403,
            r#"{"statusCode":403,"name":"validation_error","message":"You can only send testing emails to your own email address."}"#,
        ))
        .unwrap_err();
        assert_eq!(e.kind, FailureKind::Rejected);
        assert!(!e.is_auth() && !e.is_provider_trouble());

        let mut r = raw(
            429,
            r#"{"statusCode":429,"name":"rate_limit_exceeded","message":"Too many requests."}"#,
        );
        r.headers
            .insert("retry-after", HeaderValue::from_static("2"));
        let e = interpret(r).unwrap_err();
        assert_eq!(e.kind, FailureKind::Unavailable);
        assert!(e.retryable);
        assert!(
            !e.is_provider_trouble(),
            "a 429 is no sign of a dead provider"
        );
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(2)));

        let e = interpret(raw(
            409,
            r#"{"statusCode":409,"name":"concurrent_idempotent_requests","message":"..."}"#,
        ))
        .unwrap_err();
        assert!(e.retryable && e.delivery == Delivery::PossiblySent);

        let e = interpret(raw(
            409,
            r#"{"statusCode":409,"name":"invalid_idempotent_request","message":"..."}"#,
        ))
        .unwrap_err();
        assert_eq!(e.kind, FailureKind::Rejected);

        let e = interpret(raw(503, "upstream down")).unwrap_err();
        assert_eq!(e.kind, FailureKind::Unavailable);
        assert_eq!(e.delivery, Delivery::PossiblySent);

        let e = interpret(raw(400, "not json")).unwrap_err();
        assert_eq!(e.kind, FailureKind::Rejected);
        assert_eq!(e.message, "HTTP 400");
    }
}
