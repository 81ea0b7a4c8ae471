//! Tool calls end to end: guards, provider requests and their answers, fillers and cancels,
//! checked from what the media server receives and what the mock provider received.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use toolgate::tooling::mock::Reply;

#[tokio::test]
async fn a_direct_request_with_consent_sends_one_correct_wati_request() {
    let env = Env::start().await;
    let mut s = env.session("c-8f2e", order_vars()).await;
    s.agent_says("Would you like a WhatsApp confirmation?")
        .await;
    s.say("Yes please, send it on WhatsApp.").await;
    let a = s
        .call(
            "call_01",
            "send_whatsapp_confirmation",
            json!({"order_id": "A-1042"}),
        )
        .await;
    assert_eq!(a.status(), "succeeded");
    assert_eq!(
        a.output(),
        json!({"ok": true, "message": "WhatsApp message sent."})
    );
    assert!(
        a.result.frame["invocation_id"]
            .as_str()
            .unwrap()
            .starts_with("inv_")
    );

    let reqs = env.wati.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/123456/api/v1/sendTemplateMessage");
    assert_eq!(
        r.query_param("whatsappNumber").as_deref(),
        Some("14155550100")
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {WATI_TOKEN}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"template_name": "order_confirmed", "broadcast_name": "call_c-8f2e",
               "parameters": [{"name": "order_id", "value": "A-1042"}, {"name": "name", "value": "Ana"}]})
    );
    assert!(r.delivered);
}

#[tokio::test]
async fn a_vague_request_without_the_value_gets_missing_fields_and_sends_nothing() {
    let env = Env::start().await;
    let mut s = env.session("c-vague", order_vars()).await;
    s.say("Yes, send me the confirmation.").await;
    let a = s
        .call("call_01", "send_whatsapp_confirmation", json!({}))
        .await;
    assert_eq!(a.status(), "rejected");
    let out = a.output();
    assert_eq!(out["error"], "missing_fields");
    assert_eq!(out["missing"], json!(["order_id"]));
    assert_eq!(
        out["next"],
        "Ask the caller for their order id, confirm it, then call send_whatsapp_confirmation again."
    );
    // The email summary with neither an argument nor a variable names the parameter `email`.
    let mut s = env.session("c-vague-2", json!({"order_id": "A-1"})).await;
    s.say("Can you email me that?").await;
    let a = s
        .call("call_01", "send_email_summary", json!({"summary": "x"}))
        .await;
    assert_eq!(a.output()["missing"], json!(["email"]));
    assert!(env.wati.requests().is_empty() && env.resend.requests().is_empty());
}

#[tokio::test]
async fn an_unresolved_template_is_missing_never_sent_literally() {
    let env = Env::start().await;
    // `subject = "Your order {{var.order_id}}"` and this call has no order_id.
    let mut s = env
        .session("c-tpl", json!({"email": "ana@example.com"}))
        .await;
    s.say("yes please").await;
    let a = s
        .call("call_01", "send_email_summary", json!({"summary": "x"}))
        .await;
    assert_eq!(a.status(), "rejected");
    assert_eq!(a.output()["missing"], json!(["subject"]));
    assert!(env.resend.requests().is_empty());
}

#[tokio::test]
async fn without_consent_nothing_is_sent() {
    let env = Env::start().await;
    let mut s = env.session("c-noconsent", order_vars()).await;
    s.agent_says("Shall I send it on WhatsApp?").await;
    s.say("No thanks, don't send anything.").await;
    let a = s
        .call(
            "call_01",
            "send_whatsapp_confirmation",
            json!({"order_id": "A-1042"}),
        )
        .await;
    assert_eq!(a.status(), "rejected");
    assert_eq!(a.error().as_deref(), Some("consent_required"));

    // Silence is not consent either.
    let mut s2 = env.session("c-silent", order_vars()).await;
    let a = s2
        .call(
            "call_01",
            "send_whatsapp_confirmation",
            json!({"order_id": "A-1042"}),
        )
        .await;
    assert_eq!(a.error().as_deref(), Some("consent_required"));
    assert!(env.wati.requests().is_empty());
}

#[tokio::test]
async fn consent_events_grant_and_revoke() {
    let env = Env::start().await;
    let mut s = env.session("c-dtmf", order_vars()).await;
    s.consent("whatsapp", true).await;
    s.consent("whatsapp", false).await;
    let a = s
        .call(
            "call_01",
            "send_whatsapp_confirmation",
            json!({"order_id": "A-1042"}),
        )
        .await;
    assert_eq!(a.error().as_deref(), Some("consent_required"));
    s.consent("whatsapp", true).await;
    let a = s
        .call(
            "call_02",
            "send_whatsapp_confirmation",
            json!({"order_id": "A-1042"}),
        )
        .await;
    assert_eq!(a.status(), "succeeded");
    assert_eq!(env.wati.requests().len(), 1);
}

#[tokio::test]
async fn duplicates_return_the_earlier_outcome_and_send_nothing() {
    let env = Env::start().await;
    let mut s = env.session("c-dup", order_vars()).await;
    s.say("Yes, email me.").await;
    let first = s
        .call(
            "call_01",
            "send_email_summary",
            json!({"summary": "Ships Friday."}),
        )
        .await;
    assert_eq!(first.status(), "succeeded");
    let again = s
        .call(
            "call_02",
            "send_email_summary",
            json!({"summary": "Ships Friday."}),
        )
        .await;
    assert_eq!(again.status(), "duplicate");
    assert_eq!(again.output()["status"], "already_done");
    assert_eq!(again.output()["duplicate_of"], "call_01");
    assert_eq!(env.resend.requests().len(), 1);

    // While the first is still in flight, a barge-in retry is a duplicate too.
    env.webhook.push(Reply::slow(400));
    s.send_call("call_03", "notify_team", json!({"reason": "billing"}))
        .await;
    s.send_call("call_04", "notify_team", json!({"reason": "billing"}))
        .await;
    let dup = s.result_of("call_04").await;
    assert_eq!(dup.status(), "duplicate");
    assert_eq!(dup.output()["status"], "in_progress");
    let done = s.result_of("call_03").await;
    assert_eq!(done.status(), "succeeded");
    assert_eq!(env.webhook.requests().len(), 1);
}

#[tokio::test]
async fn max_per_call_limits_different_actions_of_one_function() {
    let env = Env::start().await;
    let mut s = env.session("c-limit", order_vars()).await;
    s.say("yes please").await;
    let a = s
        .call("call_01", "send_email_summary", json!({"summary": "one"}))
        .await;
    assert_eq!(a.status(), "succeeded");
    let b = s
        .call("call_02", "send_email_summary", json!({"summary": "two"}))
        .await;
    assert_eq!(b.status(), "rejected");
    assert_eq!(b.error().as_deref(), Some("limit_reached"));
    assert_eq!(env.resend.requests().len(), 1);
}

#[tokio::test]
async fn a_failed_action_does_not_count_as_done() {
    let env = Env::start().await;
    env.resend.push(Reply::ResendError {
        status: 500,
        name: "application_error".into(),
        message: "Something went wrong".into(),
        retry_after: None,
    });
    let mut s = env.session("c-retry", order_vars()).await;
    s.say("Please send it to bo at example dot org.").await;
    let args = json!({"email": "bo@example.org", "note": "x"});
    // A live function: the 500 is its answer.
    let a = s.call("call_01", "email_someone", args.clone()).await;
    assert_eq!(a.status(), "failed");
    // Resend retries carry the same Idempotency-Key, so a retry is safe and allowed.
    let b = s.call("call_02", "email_someone", args).await;
    assert_eq!(b.status(), "succeeded", "{:?}", b.output());
    assert_eq!(env.resend.delivered(), 1);
    let reqs = env.resend.requests();
    assert_eq!(
        reqs[0].header("idempotency-key"),
        reqs[1].header("idempotency-key")
    );
}

#[tokio::test]
async fn recipient_policies_are_enforced() {
    let env = Env::start().await;
    let mut s = env.session("c-recipient", order_vars()).await;
    s.say("yes").await;
    // `known`: an address that is neither a variable nor the caller's.
    let a = s
        .call(
            "call_01",
            "send_email_summary",
            json!({"email": "eve@evil.test", "summary": "x"}),
        )
        .await;
    assert_eq!(a.error().as_deref(), Some("recipient_not_allowed"));
    // `spoken`: only what the caller said.
    let a = s
        .call(
            "call_02",
            "email_someone",
            json!({"email": "bo@example.org", "note": "hi"}),
        )
        .await;
    assert_eq!(a.error().as_deref(), Some("recipient_not_allowed"));
    s.say("Please send it to bo at example dot org.").await;
    let a = s
        .call(
            "call_03",
            "email_someone",
            json!({"email": "bo@example.org", "note": "hi"}),
        )
        .await;
    assert_eq!(a.status(), "succeeded", "{:?}", a.output());
    assert_eq!(env.resend.requests().len(), 1);
    assert_eq!(env.resend.requests()[0].json()["to"], "bo@example.org");
}

#[tokio::test]
async fn invalid_and_unknown_calls_are_rejected_with_instructions() {
    let env = Env::start().await;
    let mut s = env.session("c-invalid", order_vars()).await;
    s.say("yes").await;
    let a = s
        .call(
            "call_01",
            "send_email_summary",
            json!({"email": "ana-at-example", "summary": "x"}),
        )
        .await;
    assert_eq!(a.error().as_deref(), Some("invalid_arguments"));
    assert!(
        a.output()["invalid"]["email"]
            .as_str()
            .unwrap()
            .contains("not an email address")
    );
    let a = s
        .call(
            "call_02",
            "send_email_summary",
            json!({"summary": "x".repeat(201)}),
        )
        .await;
    assert_eq!(a.error().as_deref(), Some("invalid_arguments"));
    let a = s
        .call("call_03", "notify_team", json!({"reason": "gossip"}))
        .await;
    assert_eq!(a.error().as_deref(), Some("invalid_arguments"));
    let a = s
        .call(
            "call_04",
            "notify_team",
            json!({"reason": "billing", "priority": "high"}),
        )
        .await;
    assert_eq!(a.error().as_deref(), Some("invalid_arguments"));
    s.client
        .send(&json!({"type": "tool.call", "id": "call_05", "name": "notify_team", "arguments": "[1]"}))
        .await
        .unwrap();
    let a = s.result_of("call_05").await;
    assert_eq!(a.error().as_deref(), Some("invalid_arguments"));
    let a = s.call("call_06", "send_sms", json!({})).await;
    assert_eq!(a.error().as_deref(), Some("unknown_function"));
    assert!(env.resend.requests().is_empty() && env.webhook.requests().is_empty());
}

#[tokio::test]
async fn resend_field_errors_reach_the_model_as_its_own_parameter_names() {
    let env = Env::start().await;
    env.resend.push(Reply::ResendError {
        status: 422,
        name: "invalid_parameter".into(),
        message: "Invalid `to` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format.".into(),
        retry_after: None,
    });
    let mut s = env.session("c-422", order_vars()).await;
    s.say("Please email bo at example dot org").await;
    let a = s
        .call(
            "call_01",
            "email_someone",
            json!({"email": "bo@example.org", "note": "hi"}),
        )
        .await;
    assert_eq!(a.status(), "failed");
    let out = a.output();
    assert_eq!(out["error"], "provider_rejected");
    assert_eq!(out["fields"], json!(["email"]));
    assert!(
        out["provider_message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid `to` field.")
    );
    assert_eq!(out["next"], "Custom: tell the caller the email bounced.");
}

#[tokio::test]
async fn resend_gets_idempotency_key_and_user_agent() {
    let env = Env::start().await;
    let mut s = env.session("c-idem", order_vars()).await;
    s.say("yes").await;
    let a = s
        .call("call_01", "send_email_summary", json!({"summary": "x"}))
        .await;
    assert_eq!(a.status(), "succeeded");
    let r = &env.resend.requests()[0];
    assert_eq!(r.path, "/emails");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {RESEND_KEY}").as_str())
    );
    assert!(r.header("user-agent").unwrap().starts_with("toolgate/"));
    let key = r.header("idempotency-key").unwrap();
    assert!(key.starts_with("tg_") && key.len() <= 256);
    assert_eq!(
        r.json(),
        json!({"from": "Acme Support <support@acme.test>", "to": "ana@example.com",
               "subject": "Your order A-1042", "text": "x"})
    );
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_unavailable_not_refusals() {
    let env = Env::start().await;
    env.resend.push(Reply::ResendError {
        status: 429,
        name: "rate_limit_exceeded".into(),
        message: "Too many requests. You can only make 2 requests per second.".into(),
        retry_after: Some(1),
    });
    let mut s = env.session("c-429", order_vars()).await;
    s.say("Send it to bo at example dot org.").await;
    let a = s
        .call(
            "call_01",
            "email_someone",
            json!({"email": "bo@example.org", "note": "x"}),
        )
        .await;
    assert_eq!(a.status(), "failed", "a live function fails");
    assert_eq!(a.error().as_deref(), Some("provider_unavailable"));

    env.wati.push(Reply::Raw {
        status: 502,
        headers: vec![],
        body: "<html>Bad Gateway</html>".into(),
    });
    let a = s
        .call("call_02", "whatsapp_note", json!({"text": "hi"}))
        .await;
    assert_eq!(a.error().as_deref(), Some("provider_unavailable"));
}

#[tokio::test]
async fn wati_failures_inside_http_200_are_failures_with_their_info() {
    let env = Env::start().await;
    env.wati.push(Reply::WatiResultFalse {
        info: "Template is not approved.".into(),
    });
    let mut s = env.session("c-wati-false", order_vars()).await;
    s.say("yes please").await;
    let a = s
        .call(
            "call_01",
            "send_whatsapp_confirmation",
            json!({"order_id": "A-1"}),
        )
        .await;
    assert_eq!(a.status(), "failed");
    assert_eq!(a.error().as_deref(), Some("provider_rejected"));
    assert_eq!(a.output()["provider_message"], "Template is not approved.");

    env.wati.push(Reply::WatiInvalidNumber);
    let a = s
        .call("call_02", "whatsapp_note", json!({"text": "hi"}))
        .await;
    assert_eq!(a.error().as_deref(), Some("provider_rejected"));
    assert_eq!(a.output()["fields"], json!(["whatsapp_number"]));

    env.wati.push(Reply::Raw {
        status: 200,
        headers: vec![],
        body: "<html>maintenance</html>".into(),
    });
    let a = s
        .call("call_03", "whatsapp_note", json!({"text": "hello"}))
        .await;
    assert_eq!(a.error().as_deref(), Some("bad_response"));
}

#[tokio::test]
async fn wati_session_messages_put_the_text_in_the_query() {
    let env = Env::start().await;
    let mut s = env.session("c-note", json!({})).await;
    let a = s
        .call(
            "call_01",
            "whatsapp_note",
            json!({"text": "Your order ships Friday & arrives Monday."}),
        )
        .await;
    assert_eq!(a.status(), "succeeded");
    let r = &env.wati.requests()[0];
    assert_eq!(r.path, "/123456/api/v1/sendSessionMessage/14155550100");
    assert_eq!(
        r.query_param("messageText").as_deref(),
        Some("Your order ships Friday & arrives Monday.")
    );
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn an_auth_failure_marks_the_connection_and_later_calls_fail_fast() {
    let env = Env::start().await;
    env.wati.push(Reply::Raw {
        status: 401,
        headers: vec![],
        body: String::new(),
    });
    let mut s = env.session("c-auth", json!({})).await;
    let a = s
        .call("call_01", "whatsapp_note", json!({"text": "one"}))
        .await;
    assert_eq!(a.error().as_deref(), Some("provider_auth_failed"));
    assert_eq!(env.connection("acme-wati").await["status"], "error");
    let a = s
        .call("call_02", "whatsapp_note", json!({"text": "two"}))
        .await;
    assert_eq!(a.status(), "rejected");
    assert_eq!(a.error().as_deref(), Some("connection_unavailable"));
    assert_eq!(
        env.wati.requests().len(),
        1,
        "no request after the connection failed"
    );
    // Other connections are unaffected.
    let a = s
        .call("call_03", "notify_team", json!({"reason": "other"}))
        .await;
    assert_eq!(a.status(), "succeeded");
}

#[tokio::test]
async fn webhooks_are_signed_per_standard_webhooks() {
    let env = Env::start().await;
    let mut s = env.session("c-hook", json!({})).await;
    let a = s
        .call(
            "call_01",
            "notify_team",
            json!({"reason": "billing", "priority": 2}),
        )
        .await;
    assert_eq!(a.status(), "succeeded");
    let r = &env.webhook.requests()[0];
    assert_eq!(r.signature_valid, Some(true));
    assert!(r.header("webhook-id").unwrap().starts_with("msg_tg_"));
    let body = r.json();
    assert_eq!(body["type"], "toolgate.action");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        body["data"],
        json!({"call_id": "c-hook", "function": "notify_team",
               "inputs": {"reason": "billing", "phone": CALLER, "priority": "2"}})
    );

    env.webhook.push(Reply::Raw {
        status: 410,
        headers: vec![],
        body: String::new(),
    });
    let a = s
        .call("call_02", "notify_team", json!({"reason": "delivery"}))
        .await;
    assert_eq!(a.error().as_deref(), Some("provider_rejected"));
}

#[tokio::test]
async fn a_slow_provider_gets_exactly_one_filler_before_the_result() {
    let env = Env::start().await;
    env.wati.push(Reply::slow(600));
    let mut s = env.session("c-slow", order_vars()).await;
    s.say("yes please").await;
    let a = s
        .call(
            "call_01",
            "send_whatsapp_confirmation",
            json!({"order_id": "A-1042"}),
        )
        .await;
    assert_eq!(a.status(), "succeeded");
    let fillers = a.fillers();
    assert_eq!(fillers.len(), 1, "{:?}", a.before);
    let f = &fillers[0].frame;
    assert_eq!(f["id"], "call_01");
    assert_eq!(f["seq"], 1);
    assert_eq!(f["text"], "One moment while I send that to your WhatsApp.");
    assert!(f["elapsed_ms"].as_u64().unwrap() >= 200);
    assert!(a.result.frame["elapsed_ms"].as_u64().unwrap() >= 600);
    // Nothing follows the result.
    s.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn repeated_fillers_rotate_lines() {
    let env = Env::start().await;
    env.resend.push(Reply::slow(1100));
    let mut s = env.session("c-repeat", order_vars()).await;
    s.say("yes please").await;
    let a = s
        .call("call_01", "send_email_summary", json!({"summary": "x"}))
        .await;
    assert_eq!(a.status(), "succeeded");
    let texts: Vec<&str> = a
        .fillers()
        .iter()
        .map(|f| f.frame["text"].as_str().unwrap())
        .collect();
    let seqs: Vec<u64> = a
        .fillers()
        .iter()
        .map(|f| f.frame["seq"].as_u64().unwrap())
        .collect();
    // filler_after 200 ms, then every 300 ms: 200, 500, 800.
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(
        texts,
        vec![
            "Sending that email now.",
            "Still sending, one moment.",
            "Sending that email now."
        ]
    );
}

#[tokio::test]
async fn a_live_function_fails_with_timeout_when_the_budget_ends() {
    let env = Env::start().await;
    env.resend.push(Reply::Hang);
    let mut s = env.session("c-timeout", json!({})).await;
    s.say("Send it to bo at example dot org.").await;
    let a = s
        .call(
            "call_01",
            "email_someone",
            json!({"email": "bo@example.org", "note": "hi"}),
        )
        .await;
    assert_eq!(a.status(), "failed");
    assert_eq!(a.error().as_deref(), Some("timeout"));
    let elapsed = a.result.frame["elapsed_ms"].as_u64().unwrap();
    assert!(
        elapsed >= 600,
        "hard_timeout_ms = 600, answered after {elapsed} ms"
    );
}

#[tokio::test]
async fn a_connection_reset_is_an_unknown_outcome() {
    let env = Env::start().await;
    env.wati.push(Reply::Reset);
    let mut s = env.session("c-reset", json!({})).await;
    let a = s
        .call("call_01", "whatsapp_note", json!({"text": "hi"}))
        .await;
    assert_eq!(a.status(), "failed");
    assert_eq!(a.error().as_deref(), Some("provider_unavailable"));
    assert!(
        a.output()["next"]
            .as_str()
            .unwrap()
            .contains("do not call it again"),
        "{:?}",
        a.output()
    );
}

#[tokio::test]
async fn a_cancelled_call_in_flight_completes_and_reports_the_true_outcome() {
    let env = Env::start().await;
    // The receiver takes the request at once and answers after 500 ms.
    env.webhook
        .push(Reply::AnswerLate(Duration::from_millis(500)));
    let mut s = env.session("c-cancel", json!({})).await;
    s.send_call("call_01", "notify_team", json!({"reason": "billing"}))
        .await;
    requests_reach(&env.webhook, 1, "the call to be in flight at the receiver").await;
    s.client
        .send(&json!({"type": "tool.cancel", "id": "call_01", "reason": "barge_in"}))
        .await
        .unwrap();
    let a = s.result_of("call_01").await;
    assert_eq!(a.status(), "cancelled");
    assert!(
        a.fillers().is_empty(),
        "no filler after a barge-in: {:?}",
        a.before
    );
    assert_eq!(
        a.result.frame["data"],
        json!({"provider_outcome": "succeeded", "reason": "barge_in"})
    );
    assert_eq!(env.webhook.delivered(), 1);

    // Cancelling an answered call sends nothing back.
    s.client
        .send(&json!({"type": "tool.cancel", "id": "call_01"}))
        .await
        .unwrap();
    s.expect_pong_next().await;
}

#[tokio::test]
async fn an_unknown_wati_outcome_blocks_a_repeat_so_nothing_is_sent_twice() {
    let env = Env::start().await;
    env.wati.push(Reply::Raw {
        status: 502,
        headers: vec![],
        body: String::new(),
    });
    let mut s = env.session("c-unknown", json!({})).await;
    let a = s
        .call("call_01", "whatsapp_note", json!({"text": "hi"}))
        .await;
    assert_eq!(a.error().as_deref(), Some("provider_unavailable"));
    // Wati has no idempotency key: the 502 may have been sent, so a repeat is not.
    let b = s
        .call("call_02", "whatsapp_note", json!({"text": "hi"}))
        .await;
    assert_eq!(b.status(), "duplicate");
    assert_eq!(b.output()["status"], "unconfirmed");
    assert_eq!(b.output()["ok"], false);
    assert_eq!(env.wati.requests().len(), 1);
    // A different message is a different action.
    let c = s
        .call("call_03", "whatsapp_note", json!({"text": "hello"}))
        .await;
    assert_eq!(c.status(), "succeeded");
}

#[tokio::test]
async fn a_cancelled_call_with_an_unknown_outcome_says_so() {
    let env = Env::start().await;
    env.resend.push(Reply::Hang);
    let mut s = env.session("c-cancel-unknown", json!({})).await;
    s.say("Send it to bo at example dot org.").await;
    s.send_call(
        "call_01",
        "email_someone",
        json!({"email": "bo@example.org", "note": "hi"}),
    )
    .await;
    env.resend.wait_for_requests(1, WAIT).await;
    s.client
        .send(&json!({"type": "tool.cancel", "id": "call_01", "reason": "barge_in"}))
        .await
        .unwrap();
    let a = s.result_of("call_01").await;
    assert_eq!(a.status(), "cancelled");
    assert_eq!(a.result.frame["data"]["provider_outcome"], "unknown");
}

#[tokio::test]
async fn resend_credential_refusals_mark_the_connection() {
    let env = Env::start().await;
    env.resend.push(Reply::ResendError {
        status: 403,
        name: "invalid_api_key".into(),
        message: "API key is invalid".into(),
        retry_after: None,
    });
    let mut s = env.session("c-resend-auth", order_vars()).await;
    s.say("yes please").await;
    let a = s
        .call("call_01", "send_email_summary", json!({"summary": "x"}))
        .await;
    assert_eq!(a.error().as_deref(), Some("provider_auth_failed"));
    assert_eq!(env.connection("acme-resend").await["status"], "error");
    let b = s
        .call(
            "call_02",
            "email_someone",
            json!({"email": "ana@example.com", "note": "x"}),
        )
        .await;
    assert_eq!(b.error().as_deref(), Some("connection_unavailable"));
    assert_eq!(env.resend.requests().len(), 1);
}

#[tokio::test]
async fn a_cancel_after_the_first_filler_stops_the_repeats() {
    let env = Env::start().await;
    env.resend.push(Reply::slow(1100));
    let mut s = env.session("c-cancel-fillers", order_vars()).await;
    s.say("yes please").await;
    s.send_call("call_01", "send_email_summary", json!({"summary": "x"}))
        .await;
    let first = s.client.recv(WAIT).await.unwrap();
    assert_eq!(first.ty(), "tool.filler");
    s.client
        .send(&json!({"type": "tool.cancel", "id": "call_01"}))
        .await
        .unwrap();
    let a = s.result_of("call_01").await;
    assert!(
        a.fillers().is_empty(),
        "no filler after the cancel: {:?}",
        a.before
    );
    assert_eq!(a.status(), "cancelled");
    assert_eq!(a.result.frame["data"]["provider_outcome"], "succeeded");
}

#[tokio::test]
async fn a_resend_missing_field_reaches_the_model_as_missing() {
    let env = Env::start().await;
    env.resend.push(Reply::ResendError {
        status: 422,
        name: "missing_required_field".into(),
        message: "Missing `to` field.".into(),
        retry_after: None,
    });
    let mut s = env.session("c-missing-422", order_vars()).await;
    s.say("Please email bo at example dot org").await;
    let a = s
        .call(
            "call_01",
            "email_someone",
            json!({"email": "bo@example.org", "note": "hi"}),
        )
        .await;
    assert_eq!(a.error().as_deref(), Some("provider_rejected"));
    assert_eq!(a.output()["missing"], json!(["email"]));
    assert_eq!(a.output()["provider_message"], "Missing `to` field.");
}
