//! Retell: a custom function's request `{"name", "call", "args"}` signed with
//! `X-Retell-Signature: v=<unix ms>,d=<hex HMAC-SHA256(API key, raw body ++ ms digits)>`, and the
//! `call_ended` call event posted to the same URL.

use hmac::{KeyInit, Mac};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::loose::{Item, List, Obj, Text, read};
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

/// The parts of a Retell request toolgate reads; the rest of the call object (its latency
/// figures, the recording's addresses, ...) is skipped.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    call: Obj<Call<'a>>,
    #[serde(borrow, default)]
    event: Text<'a>,
    #[serde(borrow, default)]
    name: Text<'a>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Call<'a> {
    #[serde(borrow, default)]
    call_id: Text<'a>,
    #[serde(borrow, default)]
    from_number: Text<'a>,
    #[serde(default)]
    retell_llm_dynamic_variables: Option<Value>,
    #[serde(borrow, default)]
    transcript_object: List<Item<Turn<'a>>>,
}

#[derive(Deserialize)]
struct Turn<'a> {
    #[serde(borrow, default)]
    role: Text<'a>,
    #[serde(borrow, default)]
    content: Text<'a>,
}

/// Read a Retell function call (or its `call_ended` event).
pub(super) fn parse(body: &[u8]) -> Result<Parsed, HttpResponse> {
    let v: Body = read(body, "not a Retell request")?;
    let call = v
        .call
        .0
        .ok_or_else(|| bad("a Retell request carries the call object (turn off \"args only\")"))?;
    let call_id = call
        .call_id
        .get()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("call.call_id is missing"))?
        .to_owned();
    let mut p = Parsed {
        call_id,
        ..Parsed::default()
    };
    if let Some(event) = v.event.get() {
        p.ended = event == "call_ended";
        if !p.ended {
            return Err(crate::net::json(
                hyper::StatusCode::OK,
                &serde_json::json!({"ignored": format!("event {event:?} needs no answer from toolgate")}),
            ));
        }
        return Ok(p);
    }
    let name = v
        .name
        .get()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("name (the function) is missing"))?;
    p.caller = call.from_number.0.map(|n| n.into_owned());
    p.variables = variables(call.retell_llm_dynamic_variables.as_ref());
    for t in call.transcript_object.0.unwrap_or_default() {
        let Some(t) = t.0 else { continue };
        let role = match t.role.get() {
            Some("user") => Role::Caller,
            Some("agent") => Role::Agent,
            _ => continue,
        };
        if let Some(text) = t.content.0.filter(|t| !t.trim().is_empty()) {
            p.transcript.push((role, text.into_owned()));
        }
    }
    p.calls.push((None, name.to_owned(), arguments(v.args)));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::loose::refusal;
    use super::*;
    use crate::protocol::Arguments;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[tokio::test]
    async fn a_function_call_reads_its_call_and_arguments_and_names_what_is_missing() {
        let call = json!({
            "call_id": "rc-1", "from_number": "+14155550100", "agent_id": "a", "latency": {"e2e": {"p50": 1.5}},
            "retell_llm_dynamic_variables": {"order": "A-1"},
            "transcript_object": [
                {"role": "agent", "content": "Hello", "words": [{"word": "Hello", "start": 0.1}]},
                {"role": "user", "content": "Call me back"},
                {"role": "tool_call_invocation", "content": "x"},
                "junk"
            ]
        });
        let p = parse(&body(
            json!({"name": "notify", "call": call, "args": {"reason": "billing"}}),
        ))
        .unwrap();
        assert_eq!(
            (p.call_id.as_str(), p.caller.as_deref()),
            ("rc-1", Some("+14155550100"))
        );
        assert_eq!(p.variables.len(), 1);
        assert_eq!(
            p.transcript,
            [
                (Role::Agent, "Hello".to_owned()),
                (Role::Caller, "Call me back".to_owned())
            ]
        );
        assert_eq!(p.calls.len(), 1);
        assert_eq!(p.calls[0].1, "notify");
        assert_eq!(
            p.calls[0].2,
            Arguments::Json(r#"{"reason":"billing"}"#.into())
        );
        let p = parse(&body(
            json!({"name": "notify", "call": {"call_id": "rc-1"}}),
        ))
        .unwrap();
        assert_eq!(p.calls[0].2, Arguments::Absent);
        let ended = parse(&body(
            json!({"event": "call_ended", "call": {"call_id": "rc-1"}}),
        ))
        .unwrap();
        assert!(ended.ended);
        let (status, text) = refusal(parse(&body(
            json!({"event": "call_started", "call": {"call_id": "rc-1"}}),
        )))
        .await;
        assert_eq!(status, 200);
        assert!(text.contains("\"call_started\" needs no answer"), "{text}");
        for (v, says) in [
            (
                json!({"name": "notify", "args": {}}),
                "a Retell request carries the call object",
            ),
            (
                json!({"name": "notify", "call": "rc-1"}),
                "a Retell request carries the call object",
            ),
            (
                json!({"name": "notify", "call": {"call_id": 5}}),
                "call.call_id is missing",
            ),
            (
                json!({"call": {"call_id": "rc-1"}}),
                "name (the function) is missing",
            ),
            (
                json!({"name": "", "call": {"call_id": "rc-1"}}),
                "name (the function) is missing",
            ),
        ] {
            let (status, text) = refusal(parse(&body(v.clone()))).await;
            assert_eq!(status, 400, "{v}");
            assert!(text.starts_with(says), "{v}: {text}");
        }
    }

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
