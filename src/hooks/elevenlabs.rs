//! ElevenLabs server (webhook) tools: the body is the function's arguments as the tool's
//! `request_body_schema` describes them, with the dynamic variables mapped in:
//! `system__conversation_id` (required: it keys the call) and `system__caller_id`. Every other
//! `system__*` value is dropped; the rest are the model's arguments. The function is the last
//! segment of the route.

use serde_json::Value;

use super::{Parsed, bad};
use crate::protocol::Arguments;

/// Read an ElevenLabs tool call for `function`.
pub(super) fn parse(body: &[u8], function: &str) -> Result<Parsed, crate::net::HttpResponse> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(mut fields) = v else {
        return Err(bad("the body is the tool's arguments: a JSON object"));
    };
    let call_id = match fields.get("system__conversation_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(bad(
                "map the dynamic variable system__conversation_id into the body (request_body_schema property \"system__conversation_id\" with dynamic_variable \"system__conversation_id\")",
            ));
        }
    };
    let caller = fields
        .get("system__caller_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    fields.retain(|k, _| !k.starts_with("system__"));
    Ok(Parsed {
        call_id,
        caller,
        calls: vec![(
            None,
            function.to_owned(),
            Arguments::Json(Value::Object(fields).to_string()),
        )],
        ..Parsed::default()
    })
}
