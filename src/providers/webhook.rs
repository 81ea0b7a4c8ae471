//! Signed webhooks (Standard Webhooks 1.0): `webhook.post`.
//!
//! The body is `{"type":"toolgate.action","timestamp":...,"data":{call_id, function, inputs}}`,
//! signed with HMAC-SHA256 over `{id}.{timestamp}.{body}`. The `webhook-id` is the action's
//! idempotency key, so it stays the same across retries and the receiver can dedupe on it.

use std::time::UNIX_EPOCH;

use base64::Engine;
use hmac::{KeyInit, Mac};
use indexmap::IndexMap;
use serde::Serialize;

use super::{Accepted, ActionContext, ConnectionSettings, Prepared, ProviderError, RawResponse};
use crate::bindings::{Resolution, Resolved};
use crate::secret::SecretBytes;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The keys of a webhook connection (SPEC §8): where to POST, the signing `secret`, and an
/// optional `health_url` the connection check GETs.
pub const KEYS: &[&str] = &["url", "secret", "health_url"];

/// The HMAC key of a `whsec_<base64>` secret.
pub fn decode_secret(s: &str) -> Option<SecretBytes> {
    let b64 = s.trim().strip_prefix("whsec_")?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (!bytes.is_empty()).then(|| SecretBytes::new(bytes))
}

/// The Standard Webhooks signature header value: `v1,<base64 hmac-sha256>`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(sig)
    )
}

/// Check a `webhook-signature` header (space-separated list) against the payload.
pub fn verify(key: &[u8], id: &str, timestamp: u64, body: &[u8], header: &str) -> bool {
    let expected = sign(key, id, timestamp, body);
    header
        .split(' ')
        .any(|candidate| constant_time_eq(candidate.as_bytes(), expected.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    timestamp: String,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    call_id: &'a str,
    function: &'a str,
    inputs: IndexMap<&'a str, InputValue<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum InputValue<'a> {
    Text(&'a str),
    Map(IndexMap<&'a str, &'a str>),
}

/// Build the signed POST.
pub fn prepare(
    settings: &ConnectionSettings,
    inputs: &Resolution,
    ctx: &ActionContext<'_>,
) -> Result<Prepared, ProviderError> {
    let ConnectionSettings::Webhook { url, key, .. } = settings else {
        unreachable!("dispatched by connection kind");
    };
    let unix = ctx
        .now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let data = Data {
        call_id: ctx.call_id,
        function: ctx.function,
        inputs: inputs
            .inputs
            .iter()
            .map(|i| {
                let v = match &i.value {
                    Resolved::Text(s) => InputValue::Text(s),
                    Resolved::Map(pairs) => InputValue::Map(
                        pairs
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                            .collect(),
                    ),
                };
                (i.name.as_str(), v)
            })
            .collect(),
    };
    let envelope = Envelope {
        ty: "toolgate.action",
        timestamp: humantime::format_rfc3339_millis(ctx.now).to_string(),
        data,
    };
    let body = serde_json::to_vec(&envelope).expect("webhook bodies serialize");
    let id = format!("msg_{}", ctx.idempotency_key);
    let signature = sign(key.expose(), &id, unix, &body);
    let mut req = Prepared::post(url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", unix.to_string());
    req.headers.push(super::Header {
        name: "webhook-signature",
        value: signature,
        secret: false,
    });
    req.body = Some(body.into());
    Ok(req)
}

/// A `GET health_url`, when one is configured; without it there is nothing to ask.
pub fn prepare_validation(settings: &ConnectionSettings) -> Option<Prepared> {
    let ConnectionSettings::Webhook { health_url, .. } = settings else {
        unreachable!("dispatched by connection kind");
    };
    health_url.clone().map(Prepared::get)
}

/// Read the health check's answer.
pub fn interpret_validation(raw: &RawResponse) -> super::Checked {
    use super::Trouble;
    match raw.status {
        200..=299 => Ok(super::Found::valid(format!(
            "the health check answered HTTP {}",
            raw.status
        ))),
        429 | 500..=599 => Err((
            Trouble::Unreachable,
            format!("the health check answered HTTP {}", raw.status),
        )),
        status => Err((
            Trouble::Config,
            format!("the health check answered HTTP {status}"),
        )),
    }
}

/// 2xx succeeds; 410 means the endpoint is gone; 429/5xx are retryable; other 4xx refuse.
pub fn interpret(raw: RawResponse) -> Result<Accepted, ProviderError> {
    if (200..300).contains(&raw.status) {
        return Ok(Accepted {
            message_id: None,
            http_status: raw.status,
            body: raw.body,
        });
    }
    // A receiver's body is arbitrary (and may echo what it was sent): the status speaks.
    let message = match raw.status {
        410 => "the webhook endpoint is gone (HTTP 410)".to_owned(),
        401 | 403 => super::auth_message(raw.status),
        status => format!("HTTP {status}"),
    };
    Err(ProviderError::from_status(&raw, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            .unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let sig = sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body);
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        assert!(verify(
            &key,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            body,
            &format!("v1,bogus {sig}")
        ));
        assert!(!verify(
            &key,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367554,
            body,
            &sig
        ));
    }
}
