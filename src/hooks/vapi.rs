//! Vapi: `{"message": {...}}` with `message.type` `tool-calls` (run them) or
//! `end-of-call-report` (the call is over); other message types sent to the same URL are
//! acknowledged and ignored.

use std::borrow::Cow;

use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::loose::{Item, List, Obj, Text, read};
use super::{Outcome, Parsed, arguments, bad, variables};
use crate::net::HttpResponse;
use crate::protocol::Role;

/// The parts of a Vapi server message toolgate reads; the rest (the assistant, the call's
/// costs, `toolWithToolCallList`, ...) is skipped.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    message: Obj<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow, default)]
    call: Obj<Call<'a>>,
    #[serde(borrow, default)]
    customer: Obj<Customer<'a>>,
    #[serde(borrow, default)]
    artifact: Obj<Artifact<'a>>,
    #[serde(borrow, default, rename = "toolCallList")]
    tool_call_list: List<Item<ToolCall<'a>>>,
    #[serde(borrow, default, rename = "toolCalls")]
    tool_calls: List<Item<ToolCall<'a>>>,
}

#[derive(Deserialize, Default)]
struct Call<'a> {
    #[serde(borrow, default)]
    id: Text<'a>,
    #[serde(borrow, default)]
    customer: Obj<Customer<'a>>,
    #[serde(default, rename = "assistantOverrides")]
    overrides: Obj<Overrides>,
}

#[derive(Deserialize)]
struct Customer<'a> {
    #[serde(borrow, default)]
    number: Text<'a>,
}

#[derive(Deserialize)]
struct Overrides {
    #[serde(default, rename = "variableValues")]
    variable_values: Option<Value>,
}

#[derive(Deserialize)]
struct Artifact<'a> {
    #[serde(borrow, default)]
    messages: List<Item<Turn<'a>>>,
}

#[derive(Deserialize)]
struct Turn<'a> {
    #[serde(borrow, default)]
    role: Text<'a>,
    #[serde(borrow, default)]
    message: Text<'a>,
}

#[derive(Deserialize, Default)]
struct ToolCall<'a> {
    #[serde(borrow, default)]
    id: Text<'a>,
    #[serde(borrow, default)]
    function: Obj<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow, default)]
    name: Text<'a>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

/// Read a Vapi server message.
pub(super) fn parse(body: &[u8]) -> Result<Parsed, HttpResponse> {
    let body: Body = read(body, "not a Vapi server message")?;
    let m = body
        .message
        .0
        .ok_or_else(|| bad("a Vapi server message is {\"message\": {...}}"))?;
    let ty = m.kind.get().ok_or_else(|| bad("message.type is missing"))?;
    let call = m.call.0.unwrap_or_default();
    let call_id = call
        .id
        .get()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("message.call.id is missing"))?
        .to_owned();
    let mut p = Parsed {
        call_id,
        ..Parsed::default()
    };
    match ty {
        "tool-calls" => {}
        "end-of-call-report" => {
            p.ended = true;
            return Ok(p);
        }
        other => {
            return Err(crate::net::json(
                StatusCode::OK,
                &json!({"ignored": format!("message type {other:?} needs no answer from toolgate")}),
            ));
        }
    }
    let number = |c: &Obj<Customer>| c.0.as_ref().and_then(|c| c.number.get()).map(str::to_owned);
    p.caller = number(&m.customer).or_else(|| number(&call.customer));
    p.variables = variables(
        call.overrides
            .0
            .as_ref()
            .and_then(|o| o.variable_values.as_ref()),
    );
    let turns = m.artifact.0.and_then(|a| a.messages.0).unwrap_or_default();
    for turn in turns.into_iter().filter_map(|t| t.0) {
        let role = match turn.role.get() {
            Some("user") => Role::Caller,
            Some("bot" | "assistant") => Role::Agent,
            _ => continue,
        };
        if let Some(text) = turn.message.0.filter(|t| !t.trim().is_empty()) {
            p.transcript.push((role, text.into_owned()));
        }
    }
    let list = m
        .tool_call_list
        .0
        .or(m.tool_calls.0)
        .ok_or_else(|| bad("message.toolCallList is missing"))?;
    for c in list {
        let c = c.0.unwrap_or_default();
        let id =
            c.id.get()
                .filter(|s| !s.is_empty() && s.len() <= 128)
                .ok_or_else(|| bad("a toolCallList entry has no id"))?;
        let f = c.function.0;
        let name = f
            .as_ref()
            .and_then(|f| f.name.get())
            .ok_or_else(|| bad("a toolCallList entry has no function.name"))?;
        p.calls.push((
            Some(id.to_owned()),
            name.to_owned(),
            arguments(f.as_ref().and_then(|f| f.arguments)),
        ));
    }
    if p.calls.is_empty() {
        return Err(bad("message.toolCallList is empty"));
    }
    Ok(p)
}

/// `{"results": [{"toolCallId", "name", "result"}]}`, one per call in request order, always
/// HTTP 200 (Vapi ignores any other status). `result` is the output string, one line; `error`
/// only for toolgate's own faults.
pub(super) fn answer(outcomes: &[(String, String, Outcome)]) -> HttpResponse {
    #[derive(Serialize)]
    struct Results<'a> {
        results: Vec<Answer<'a>>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer<'a> {
        tool_call_id: &'a str,
        name: &'a str,
        result: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'static str>,
    }
    let results = outcomes
        .iter()
        .map(|(id, name, o)| Answer {
            tool_call_id: id,
            name,
            result: if o.output.contains(['\n', '\r']) {
                Cow::Owned(o.output.replace(['\n', '\r'], " "))
            } else {
                Cow::Borrowed(&o.output)
            },
            // Only toolgate's own faults read `{"error": "internal", ...}`: most outputs are
            // not parsed to find out.
            error: (o.output.contains("\"internal\"")
                && serde_json::from_str::<Value>(&o.output)
                    .is_ok_and(|v| v["error"] == "internal"))
            .then_some("toolgate failed while running this call"),
        })
        .collect();
    let body = serde_json::to_string(&Results { results }).expect("strings always serialize");
    crate::net::raw_json(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::loose::refusal;
    use super::*;
    use crate::protocol::{Arguments, VarValue};

    fn message(m: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({ "message": m })).unwrap()
    }

    #[test]
    fn a_tool_calls_message_reads_its_caller_variables_transcript_and_calls() {
        let body = message(json!({
            "type": "tool-calls",
            "timestamp": 1,
            "call": {"id": "c-1", "customer": {"number": "+14155550100"},
                     "assistantOverrides": {"variableValues": {"order": "A-1", "n": 2, "vip": true, "x": null}}},
            "artifact": {"messages": [
                {"role": "system", "message": "You are Sam."},
                {"role": "bot", "message": "How can I help?"},
                {"role": "user", "message": "Call me \"back\", please.\n"},
                {"role": "tool_calls", "toolCalls": [{"id": "t"}]},
                {"role": "user", "message": "  "},
                7
            ]},
            "toolWithToolCallList": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "toolCallList": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": {"a": [1, {"b": "c"}]}}},
                {"id": "t2", "function": {"name": "g", "arguments": "{\"a\": 1}"}},
                {"id": "t3", "function": {"name": "h", "arguments": null}},
                {"id": "t4", "function": {"name": "k"}}
            ]
        }));
        let p = parse(&body).unwrap();
        assert_eq!(p.call_id, "c-1");
        assert_eq!(p.caller.as_deref(), Some("+14155550100"));
        assert_eq!(p.variables.len(), 3);
        assert_eq!(p.variables["order"], VarValue::Str("A-1".into()));
        assert_eq!(p.variables["vip"], VarValue::Bool(true));
        assert_eq!(
            p.transcript,
            [
                (Role::Agent, "How can I help?".to_owned()),
                (Role::Caller, "Call me \"back\", please.\n".to_owned())
            ]
        );
        let calls: Vec<(Option<&str>, &str, &Arguments)> = p
            .calls
            .iter()
            .map(|(id, name, args)| (id.as_deref(), name.as_str(), args))
            .collect();
        assert_eq!(
            calls,
            [
                (
                    Some("t1"),
                    "f",
                    &Arguments::Json(r#"{"a":[1,{"b":"c"}]}"#.into())
                ),
                (Some("t2"), "g", &Arguments::Text(r#"{"a": 1}"#.into())),
                (Some("t3"), "h", &Arguments::Absent),
                (Some("t4"), "k", &Arguments::Absent),
            ]
        );
        // The message's own customer comes first; `toolCalls` stands in for a missing list.
        let body = message(json!({
            "type": "tool-calls",
            "customer": {"number": "+14155550111"},
            "call": {"id": "c-2", "customer": {"number": "+14155550100"}},
            "toolCalls": [{"id": "t1", "function": {"name": "f", "arguments": {}}}]
        }));
        let p = parse(&body).unwrap();
        assert_eq!(p.caller.as_deref(), Some("+14155550111"));
        assert_eq!(p.calls.len(), 1);
    }

    #[tokio::test]
    async fn what_is_missing_or_of_the_wrong_kind_is_named() {
        let ok_call = json!({"id": "c-1"});
        let cases = [
            (json!(3), "a Vapi server message is"),
            (json!({"call": ok_call}), "message.type is missing"),
            (
                json!({"type": 4, "call": ok_call}),
                "message.type is missing",
            ),
            (json!({"type": "tool-calls"}), "message.call.id is missing"),
            (
                json!({"type": "tool-calls", "call": "c-1"}),
                "message.call.id is missing",
            ),
            (
                json!({"type": "tool-calls", "call": {"id": ""}}),
                "message.call.id is missing",
            ),
            (
                json!({"type": "tool-calls", "call": ok_call}),
                "message.toolCallList is missing",
            ),
            (
                json!({"type": "tool-calls", "call": ok_call, "toolCallList": {"id": "t"}}),
                "message.toolCallList is missing",
            ),
            (
                json!({"type": "tool-calls", "call": ok_call, "toolCallList": []}),
                "message.toolCallList is empty",
            ),
            (
                json!({"type": "tool-calls", "call": ok_call, "toolCallList": ["t"]}),
                "a toolCallList entry has no id",
            ),
            (
                json!({"type": "tool-calls", "call": ok_call, "toolCallList": [{"id": "x".repeat(129)}]}),
                "a toolCallList entry has no id",
            ),
            (
                json!({"type": "tool-calls", "call": ok_call, "toolCallList": [{"id": "t", "function": {"name": 1}}]}),
                "a toolCallList entry has no function.name",
            ),
        ];
        for (m, says) in cases {
            let (status, text) = refusal(parse(&message(m.clone()))).await;
            assert_eq!(status, 400, "{m}");
            assert!(text.starts_with(says), "{m}: {text}");
        }
        let (status, text) = refusal(parse(b"{\"message\": {\"type\": ")).await;
        assert_eq!(
            (status, text.starts_with("not JSON")),
            (400, true),
            "{text}"
        );
        let (status, text) = refusal(parse(&message(
            json!({"type": "status-update", "call": ok_call}),
        )))
        .await;
        assert_eq!(status, 200);
        assert!(text.contains("\"status-update\" needs no answer"), "{text}");
        let ended = parse(&message(
            json!({"type": "end-of-call-report", "call": ok_call}),
        ))
        .unwrap();
        assert!(ended.ended && ended.calls.is_empty());
    }

    #[tokio::test]
    async fn answers_are_one_line_in_request_order_and_only_toolgates_faults_carry_an_error() {
        let outcome = |output: &str| Outcome {
            status: "succeeded".into(),
            output: output.into(),
        };
        let r = answer(&[
            (
                "t1".into(),
                "f".into(),
                outcome("{\"status\":\"succeeded\",\n\"text\":\"sent\"}"),
            ),
            (
                "t2".into(),
                "g".into(),
                outcome(r#"{"status":"failed","error":"internal","message":"x"}"#),
            ),
            (
                "t3".into(),
                "h".into(),
                outcome(r#"{"status":"failed","error":"rate_limited","message":"internal"}"#),
            ),
        ]);
        assert_eq!(r.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body.to_bytes()).unwrap();
        assert_eq!(
            v,
            json!({"results": [
                {"toolCallId": "t1", "name": "f", "result": "{\"status\":\"succeeded\", \"text\":\"sent\"}"},
                {"toolCallId": "t2", "name": "g", "result": r#"{"status":"failed","error":"internal","message":"x"}"#,
                 "error": "toolgate failed while running this call"},
                {"toolCallId": "t3", "name": "h", "result": r#"{"status":"failed","error":"rate_limited","message":"internal"}"#}
            ]})
        );
    }
}
