//! Retell: a custom function's request `{"name", "call", "args"}` signed with
//! `X-Retell-Signature: v=<unix ms>,d=<hex HMAC-SHA256(API key, raw body ++ ms digits)>`, and the
//! `call_ended` call event posted to the same URL.

use hmac::{KeyInit, Mac};
use serde_json::Value;

use super::{Parsed, arguments, bad, variables};
use crate::net::HttpResponse;
use crate::protocol::Role;

/// How far a signature's stamp may be from now.
const WINDOW_MS: i64 = 5 * 60 * 1000;

/// Whether the request carries a valid, fresh signature of its body.
pub(super) fn verify(headers: &hyper::HeaderMap, body: &[u8], key: &str, now_ms: i64) -> bool {
    let Some(sig) = headers
        .get("x-retell-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((stamp, digest)) = sig
        .trim()
        .strip_prefix("v=")
        .and_then(|r| r.split_once(",d="))
    else {
        return false;
    };
    let Ok(ms) = stamp.parse::<i64>() else {
        return false;
    };
    if !stamp.bytes().all(|b| b.is_ascii_digit()) || (now_ms - ms).abs() > WINDOW_MS {
        return false;
    }
    let Some(expected) = hex(digest) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.update(stamp.as_bytes());
    mac.verify_slice(&expected).is_ok()
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Read a Retell function call (or its `call_ended` event).
pub(super) fn parse(body: &[u8]) -> Result<Parsed, HttpResponse> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let call = v
        .get("call")
        .filter(|c| c.is_object())
        .ok_or_else(|| bad("a Retell request carries the call object (turn off \"args only\")"))?;
    let call_id = call["call_id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("call.call_id is missing"))?
        .to_owned();
    let mut p = Parsed {
        call_id,
        ..Parsed::default()
    };
    if let Some(event) = v.get("event").and_then(Value::as_str) {
        p.ended = event == "call_ended";
        if !p.ended {
            return Err(crate::net::json(
                hyper::StatusCode::OK,
                &serde_json::json!({"ignored": format!("event {event:?} needs no answer from toolgate")}),
            ));
        }
        return Ok(p);
    }
    let name = v["name"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("name (the function) is missing"))?;
    p.caller = call["from_number"].as_str().map(str::to_owned);
    p.variables = variables(call.get("retell_llm_dynamic_variables"));
    if let Some(turns) = call["transcript_object"].as_array() {
        for t in turns {
            let role = match t["role"].as_str() {
                Some("user") => Role::Caller,
                Some("agent") => Role::Agent,
                _ => continue,
            };
            if let Some(text) = t["content"].as_str().filter(|t| !t.trim().is_empty()) {
                p.transcript.push((role, text.to_owned()));
            }
        }
    }
    p.calls
        .push((None, name.to_owned(), arguments(v.get("args"))));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed with the official retell-sdk's signing helper.
    #[test]
    fn the_sdks_known_answer_verifies_within_five_minutes() {
        let body = br#"{"name":"x","args":{"a":1},"call":{"call_id":"c1"}}"#;
        let mut h = hyper::HeaderMap::new();
        h.insert(
            "x-retell-signature",
            "v=1700000000000,d=6c1f0bd0ac93441b789800f20418d4f1d7f388dc37cd203f7b39e09736ce50cf"
                .parse()
                .unwrap(),
        );
        assert!(verify(&h, body, "testkey", 1_700_000_000_000 + 299_999));
        assert!(!verify(&h, body, "testkey", 1_700_000_000_000 + 300_001));
        assert!(!verify(&h, body, "otherkey", 1_700_000_000_000));
        assert!(!verify(&h, b"{}", "testkey", 1_700_000_000_000));
    }
}
