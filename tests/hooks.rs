//! Tool webhooks of hosted platforms (SPEC §13.1) end to end: real-shaped Vapi, Retell and
//! ElevenLabs requests over HTTP, signatures computed here independently of toolgate, the
//! loopback provider mocks behind the functions, and the evidence of each call.

mod common;

use std::time::Duration;

use common::*;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use toolgate::tooling::mock::Reply;

const VAPI_SECRET: &str = "vapi-tool-secret-3e91";
const RETELL_KEY: &str = "key_retell_webhook_77c1";
const ELEVEN_SECRET: &str = "eleven-tool-secret-5a0d";

async fn env() -> Env {
    Env::start_with(|t| {
        t.replacen(
            "[workflow]",
            &format!(
                "[[webhooks]]\nid = \"vapi-support\"\norg = \"acme\"\nplatform = \"vapi\"\nagent = \"support-bot\"\nsecret = \"{VAPI_SECRET}\"\n\n\
                 [[webhooks]]\nid = \"retell-support\"\norg = \"acme\"\nplatform = \"retell\"\nagent = \"support-bot\"\nsecret = \"{RETELL_KEY}\"\n\n\
                 [[webhooks]]\nid = \"eleven-support\"\norg = \"acme\"\nplatform = \"elevenlabs\"\nagent = \"support-bot\"\nsecret = \"{ELEVEN_SECRET}\"\n\n[workflow]"
            ),
            1,
        )
    })
    .await
}

/// POST a body to a hook with extra headers: (status, JSON body).
async fn post(env: &Env, path: &str, body: &str, headers: &[(&str, String)]) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}{path}", env.server.ws_addr))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (n, v) in headers {
        req = req.header(*n, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A Vapi `tool-calls` message as the platform sends it (arguments as objects, the legacy
/// `toolCalls` beside `toolCallList`, the transcript in `artifact.messages`).
fn vapi_tool_calls(call_id: &str, said: &[(&str, &str)], calls: &[(&str, &str, Value)]) -> String {
    let list: Vec<Value> = calls
        .iter()
        .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
        .collect();
    let messages: Vec<Value> = said
        .iter()
        .enumerate()
        .map(|(i, (role, text))| json!({"role": role, "message": text, "time": 1722032450000u64 + i as u64 * 1000, "secondsFromStart": i}))
        .collect();
    json!({"message": {
        "timestamp": 1722032457931u64,
        "type": "tool-calls",
        "toolCalls": list,
        "toolCallList": list,
        "toolWithToolCallList": [],
        "artifact": {"messages": messages},
        "customer": {"number": CALLER},
        "call": {"id": call_id, "orgId": "org_1", "type": "inboundPhoneCall", "status": "in-progress",
                 "customer": {"number": CALLER},
                 "assistantOverrides": {"variableValues": {"email": "ana@example.com", "order_id": "A-1042"}}},
    }})
    .to_string()
}

fn vapi_auth() -> Vec<(&'static str, String)> {
    vec![("x-vapi-secret", VAPI_SECRET.to_owned())]
}

fn result_of(body: &Value, i: usize) -> Value {
    serde_json::from_str(body["results"][i]["result"].as_str().unwrap()).unwrap()
}

/// Retell's signature, computed here as its SDK does.
fn retell_signature(body: &str, key: &str, ms: i64) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    mac.update(ms.to_string().as_bytes());
    let d: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v={ms},d={d}")
}

fn now_ms() -> i64 {
    toolgate::clock::now_ms()
}

fn retell_call(call_id: &str, name: &str, args: Value, said: &[(&str, &str)]) -> String {
    let turns: Vec<Value> = said
        .iter()
        .map(|(role, text)| json!({"role": role, "content": text, "words": []}))
        .collect();
    json!({"name": name, "args": args, "call": {
        "call_type": "phone_call", "call_id": call_id, "agent_id": "agent_1", "agent_version": 1,
        "call_status": "ongoing", "direction": "inbound", "from_number": CALLER, "to_number": "+15559870000",
        "retell_llm_dynamic_variables": {"email": "ana@example.com", "order_id": "A-1042"},
        "transcript_object": turns}})
    .to_string()
}

#[tokio::test]
async fn refusals_run_nothing() {
    let env = env().await;
    let body = vapi_tool_calls(
        "vc-auth",
        &[("user", "Yes, email me the summary.")],
        &[("call_1", "send_email_summary", json!({"summary": "x"}))],
    );
    let (s, b) = post(&env, "/v1/hooks/vapi-support", &body, &[]).await;
    assert_eq!(s, 401, "{b}");
    let wrong = vec![("x-vapi-secret", "nope".to_owned())];
    assert_eq!(
        post(&env, "/v1/hooks/vapi-support", &body, &wrong).await.0,
        401
    );
    let bearer = vec![("authorization", "Bearer nope".to_owned())];
    assert_eq!(
        post(&env, "/v1/hooks/vapi-support", &body, &bearer).await.0,
        401
    );
    let (s, b) = post(&env, "/v1/hooks/nobody", &body, &vapi_auth()).await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = post(
        &env,
        "/v1/hooks/vapi-support",
        "{\"message\": 3",
        &vapi_auth(),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"], "bad_request");
    assert!(b["message"].is_string());
    let (s, _) = post(
        &env,
        "/v1/hooks/vapi-support",
        r#"{"message":{"type":"tool-calls","call":{"id":"x"}}}"#,
        &vapi_auth(),
    )
    .await;
    assert_eq!(s, 400, "no toolCallList");
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(1_100_000));
    assert_eq!(
        post(&env, "/v1/hooks/vapi-support", &huge, &vapi_auth())
            .await
            .0,
        413
    );
    // Retell: a good signature that is too old, and a signature of another body.
    let rbody = retell_call("rc-auth", "notify_team", json!({"reason": "billing"}), &[]);
    let old = retell_signature(&rbody, RETELL_KEY, now_ms() - 301_000);
    let (s, _) = post(
        &env,
        "/v1/hooks/retell-support",
        &rbody,
        &[("x-retell-signature", old)],
    )
    .await;
    assert_eq!(s, 401);
    let other = retell_signature("{}", RETELL_KEY, now_ms());
    let (s, _) = post(
        &env,
        "/v1/hooks/retell-support",
        &rbody,
        &[("x-retell-signature", other)],
    )
    .await;
    assert_eq!(s, 401);
    // Refused before anything ran; no event marks that nothing started in the background.
    quiet_for(Duration::from_millis(200)).await;
    assert!(env.resend.requests().is_empty());
    assert!(env.webhook.requests().is_empty());
    let (_, calls) = env.admin("GET", "/v1/invocations", Some(ADMIN_TOKEN)).await;
    assert_eq!(calls["invocations"], json!([]), "nothing on record either");
}

#[tokio::test]
async fn a_vapi_request_runs_with_the_payloads_transcript_and_variables() {
    let env = env().await;
    let said = [
        (
            "bot",
            "Your order A-1042 ships Friday. Want a summary by email?",
        ),
        ("user", "Yes please, email me the summary."),
    ];
    let body = vapi_tool_calls(
        "vc-direct",
        &said,
        &[(
            "call_1",
            "send_email_summary",
            json!({"summary": "Ships Friday."}),
        )],
    );
    let (s, b) = post(&env, "/v1/hooks/vapi-support", &body, &vapi_auth()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["results"][0]["toolCallId"], "call_1");
    assert_eq!(b["results"][0]["name"], "send_email_summary");
    let result = b["results"][0]["result"].as_str().unwrap();
    assert!(!result.contains('\n'), "one line");
    assert_eq!(result_of(&b, 0)["ok"], true, "{b}");
    let sent = env.resend.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].json()["to"],
        "ana@example.com",
        "from the call's variables"
    );

    // Evidence: channel vapi, the payload's turns in the history, each once.
    let deadline = tokio::time::Instant::now() + WAIT;
    let call = loop {
        let (_, c) = env
            .admin("GET", "/v1/calls/vc-direct", Some(ADMIN_TOKEN))
            .await;
        if c["invocations"][0]["final"] == true || tokio::time::Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    assert_eq!(call["channel"], "vapi", "{call}");
    assert_eq!(call["invocations"][0]["channel"], "vapi");

    // A second request of the same call carries the whole transcript again: no turn twice.
    let mut said2 = said.to_vec();
    said2.push(("bot", "Done. Anything else?"));
    said2.push((
        "user",
        "Also tell the team I want a callback about billing.",
    ));
    let body = vapi_tool_calls(
        "vc-direct",
        &said2,
        &[("call_2", "notify_team", json!({"reason": "billing"}))],
    );
    let (s, b) = post(&env, "/v1/hooks/vapi-support", &body, &vapi_auth()).await;
    assert_eq!(s, 200);
    assert_eq!(result_of(&b, 0)["ok"], true, "{b}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let turns = loop {
        let (_, c) = env
            .admin("GET", "/v1/calls/vc-direct", Some(ADMIN_TOKEN))
            .await;
        let turns: Vec<Value> = c["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "turn")
            .cloned()
            .collect();
        if turns.len() >= 4 || tokio::time::Instant::now() > deadline {
            break turns;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    assert_eq!(turns.len(), 4, "{turns:?}");
}

#[tokio::test]
async fn a_vapi_no_in_the_transcript_refuses_consent_and_a_missing_value_is_named() {
    let env = env().await;
    let said = [
        ("bot", "Shall I send the confirmation on WhatsApp?"),
        ("user", "No, don't send me anything."),
    ];
    let body = vapi_tool_calls(
        "vc-no",
        &said,
        &[(
            "call_1",
            "send_whatsapp_confirmation",
            json!({"order_id": "A-1042"}),
        )],
    );
    let (_, b) = post(&env, "/v1/hooks/vapi-support", &body, &vapi_auth()).await;
    assert_eq!(result_of(&b, 0)["error"], "consent_required", "{b}");
    assert!(env.wati.requests().is_empty());

    let body = vapi_tool_calls(
        "vc-missing",
        &[("user", "Yes, email me the summary.")],
        &[("call_1", "send_email_summary", json!({}))],
    );
    let (_, b) = post(&env, "/v1/hooks/vapi-support", &body, &vapi_auth()).await;
    let r = result_of(&b, 0);
    assert_eq!(r["error"], "missing_fields", "{b}");
    assert_eq!(r["missing"], json!(["summary"]));
}

#[tokio::test]
async fn two_vapi_calls_in_one_request_run_together_and_a_retry_sends_nothing_twice() {
    let env = env().await;
    env.resend.push(Reply::slow(600));
    let said = [(
        "user",
        "Yes, email me the summary, and tell the team I want a callback.",
    )];
    let body = vapi_tool_calls(
        "vc-two",
        &said,
        &[
            ("call_a", "send_email_summary", json!({"summary": "x"})),
            ("call_b", "notify_team", json!({"reason": "billing"})),
        ],
    );
    let (s, b) = post(&env, "/v1/hooks/vapi-support", &body, &vapi_auth()).await;
    assert_eq!(s, 200);
    // Concurrent: the team was notified while Resend was still taking its 600 ms.
    let (email, team) = (&env.resend.requests()[0], &env.webhook.requests()[0]);
    assert!(
        team.at < email.at + Duration::from_millis(600),
        "the second call waited for the first"
    );
    assert_eq!(b["results"][0]["toolCallId"], "call_a");
    assert_eq!(b["results"][1]["toolCallId"], "call_b");
    assert_eq!(result_of(&b, 0)["ok"], true);
    assert_eq!(result_of(&b, 1)["ok"], true);
    // The platform retries the very same request: the first outcomes, nothing sent again.
    let (s, again) = post(&env, "/v1/hooks/vapi-support", &body, &vapi_auth()).await;
    assert_eq!(s, 200);
    assert_eq!(again["results"], b["results"]);
    assert_eq!(env.resend.requests().len(), 1);
    assert_eq!(env.webhook.requests().len(), 1);
}

#[tokio::test]
async fn a_slow_provider_is_answered_at_the_budget_and_sent_once_after() {
    let env = env().await;
    env.resend.push(Reply::slow(1000));
    // email_later: defer_after_ms = 400, hard_timeout_ms = 1500.
    let body = vapi_tool_calls(
        "vc-slow",
        &[("user", "Send it whenever.")],
        &[("call_1", "email_later", json!({"summary": "x"}))],
    );
    let (_, b) = post(&env, "/v1/hooks/vapi-support", &body, &vapi_auth()).await;
    // Handed off at the budget (the provider answers only after 1 s).
    let r = result_of(&b, 0);
    assert_eq!(r["status"], "queued", "{b}");
    let sent = env.resend.wait_for_requests(1, WAIT).await;
    assert_eq!(sent.len(), 1);
    // Once the record is final the live request has closed the job: nothing is left to send.
    env.invocations_when("vc-slow", "the call's records to be final", |l| {
        !l.is_empty() && l.iter().all(|i| i["final"] == true)
    })
    .await;
    assert_eq!(env.resend.requests().len(), 1, "sent once");
}

#[tokio::test]
async fn retell_signed_requests_run_and_a_retry_gets_the_first_outcome() {
    let env = env().await;
    let body = retell_call(
        "rc-1",
        "notify_team",
        json!({"reason": "billing"}),
        &[
            ("agent", "How can I help?"),
            ("user", "Please have someone call me back about billing."),
        ],
    );
    let sig = retell_signature(&body, RETELL_KEY, now_ms());
    let (s, b) = post(
        &env,
        "/v1/hooks/retell-support",
        &body,
        &[("x-retell-signature", sig.clone())],
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["ok"], true, "the §2 output is the body: {b}");
    let (s, again) = post(
        &env,
        "/v1/hooks/retell-support",
        &body,
        &[("x-retell-signature", sig)],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(again, b);
    assert_eq!(env.webhook.requests().len(), 1, "never sent twice");
    // The call ends with Retell's call_ended event on the same route.
    let ended = json!({"event": "call_ended", "call": {"call_id": "rc-1", "call_status": "ended"}})
        .to_string();
    let sig = retell_signature(&ended, RETELL_KEY, now_ms());
    let (s, _) = post(
        &env,
        "/v1/hooks/retell-support",
        &ended,
        &[("x-retell-signature", sig)],
    )
    .await;
    assert_eq!(s, 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, c) = env.admin("GET", "/v1/calls/rc-1", Some(ADMIN_TOKEN)).await;
        if c["ended_at"].is_i64() {
            assert_eq!(c["channel"], "retell");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{c}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test]
async fn an_elevenlabs_tool_call_runs_from_its_body() {
    let env = env().await;
    let body = json!({"reason": "delivery", "system__conversation_id": "conv_01jx", "system__caller_id": CALLER}).to_string();
    let auth = vec![("authorization", format!("Bearer {ELEVEN_SECRET}"))];
    let (s, b) = post(&env, "/v1/hooks/eleven-support/notify_team", &body, &auth).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["ok"], true, "{b}");
    let sent = env.webhook.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].json()["data"]["inputs"]["reason"], "delivery");
    let (s, b) = post(
        &env,
        "/v1/hooks/eleven-support/notify_team",
        "{\"reason\":\"x\"}",
        &auth,
    )
    .await;
    assert_eq!(s, 400, "no conversation id: {b}");
    let (s, _) = post(&env, "/v1/hooks/eleven-support", &body, &auth).await;
    assert_eq!(s, 404, "the function is in the path");
}

#[tokio::test]
async fn a_request_is_never_held_past_max_hold_and_an_idle_call_ends() {
    let env = Env::start_with(|t| {
        t.replacen(
            "[workflow]",
            &format!(
                "[[webhooks]]\nid = \"vapi-short\"\norg = \"acme\"\nplatform = \"vapi\"\nagent = \"support-bot\"\nsecret = \"{VAPI_SECRET}\"\nmax_hold_ms = 300\nidle_end_ms = 1000\n\n[workflow]"
            ),
            1,
        )
    })
    .await;
    // escalate_now is live with hard_timeout_ms = 2000; the provider takes 1 s.
    env.webhook.push(Reply::slow(1000));
    let body = vapi_tool_calls(
        "vc-hold",
        &[("user", "Get me a supervisor.")],
        &[("call_1", "escalate_now", json!({"reason": "angry"}))],
    );
    let (s, b) = post(&env, "/v1/hooks/vapi-short", &body, &vapi_auth()).await;
    assert_eq!(s, 200);
    let r = result_of(&b, 0);
    assert_eq!(r["error"], "timeout", "answered at max_hold_ms: {b}");
    assert!(
        r["next"]
            .as_str()
            .unwrap()
            .contains("still being processed")
    );
    // The call still runs to its end, once; then, with no request for idle_end_ms, it ends.
    assert_eq!(env.webhook.wait_for_requests(1, WAIT).await.len(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let (_, c) = env
            .admin("GET", "/v1/calls/vc-hold", Some(ADMIN_TOKEN))
            .await;
        if c["ended_at"].is_i64() && c["invocations"][0]["final"] == true {
            assert_eq!(c["end_reason"], "idle");
            assert_eq!(c["invocations"][0]["status"], "succeeded", "{c}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The call page and the metrics show it like any call.
    let page = reqwest::Client::new()
        .get(format!("http://{}/calls/vc-hold", env.server.admin_addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("via vapi"), "{page}");
    let metrics = reqwest::get(format!("http://{}/metrics", env.server.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"toolgate_tool_calls_total{function="escalate_now",status="succeeded"} 1"#),
        "{metrics}"
    );
}
