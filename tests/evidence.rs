//! Invocation evidence and call history, read back through the admin API after real calls:
//! one record per tool call with the right status, verdicts, inputs, timing and payloads; the
//! merged call timeline; paging and filters; org scoping; and no secret, phone number, email
//! address or message body anywhere in storage or in any response.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};
use toolgate::tooling::mock::Reply;

const SETTLE: Duration = Duration::from_secs(15);

fn inv_id(a: &Answer) -> String {
    a.result.frame["invocation_id"].as_str().unwrap().to_owned()
}

/// The invocation record once `ready` holds (the writer is asynchronous).
async fn record_when(env: &Env, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (code, body) = env
            .admin("GET", &format!("/v1/invocations/{id}"), Some(ADMIN_TOKEN))
            .await;
        if code == 200 && ready(&body["invocation"]) {
            return body["invocation"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "record {id} never got there: {code} {body}"
        );
        sleep(Duration::from_millis(40)).await;
    }
}

async fn record(env: &Env, id: &str) -> Value {
    record_when(env, id, |r| r["final"] == true).await
}

fn guard<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["guards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no {name} verdict in {}", r["guards"]))
}

async fn end(s: &mut Session) {
    s.client
        .send(&json!({"type": "session.end", "reason": "hangup"}))
        .await
        .unwrap();
    let ended = s.client.recv(WAIT).await.unwrap();
    assert_eq!(ended.ty(), "session.ended");
}

#[tokio::test]
async fn a_succeeded_call_has_a_complete_redacted_record() {
    let env = Env::start().await;
    let mut s = env.session("c-ev-ok", order_vars()).await;
    s.say("Could you email me a summary? It's ana@example.com or call +14155550100.")
        .await;
    s.consent("email", true).await;
    let a = s
        .call(
            "call_01",
            "send_email_summary",
            json!({"summary": "Ships Friday with tracking"}),
        )
        .await;
    assert_eq!(a.status(), "succeeded", "{:?}", a.result.frame);
    let r = record(&env, &inv_id(&a)).await;

    assert_eq!(r["invocation_id"], inv_id(&a));
    assert_eq!(r["source_type"], "agent");
    assert_eq!(r["org_id"], "acme");
    assert_eq!(r["call_id"], "c-ev-ok");
    assert_eq!(r["agent_id"], "support-bot");
    assert_eq!(r["function"], "send_email_summary");
    assert_eq!(r["action"], "resend.send_email");
    assert_eq!(r["connection_id"], "acme-resend");
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["answered_status"], "succeeded");
    assert!(r["error_code"].is_null());
    assert_eq!(r["missing_fields"], json!([]));
    assert!(r["received_at"].as_i64().unwrap() > 1_700_000_000_000);

    // Every guard ran and passed, in SPEC order, then the connection's rate.
    let names: Vec<&str> = r["guards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "function_exposed",
            "arguments",
            "required_values",
            "connection",
            "consent",
            "recipient",
            "duplicate",
            "per_call_limit",
            "rate"
        ]
    );
    assert!(
        r["guards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["passed"] == true)
    );

    // Inputs: the address masked, the body as length and hash, the template as resolved.
    let inputs = &r["inputs_redacted"];
    assert_eq!(inputs["to"]["value"], "a***@example.com");
    assert_eq!(inputs["to"]["source"], "session:var.email");
    assert_eq!(inputs["text"]["value"]["length"], 26);
    assert_eq!(
        inputs["text"]["value"]["sha256"].as_str().unwrap().len(),
        16
    );
    assert_eq!(inputs["text"]["source"], "arg:summary");
    // A subject can be as private as the body: kept the same way.
    assert_eq!(inputs["subject"]["value"]["length"], 17);
    assert_eq!(inputs["subject"]["source"], "template");

    // The request as sent, without its credential; the provider's answer.
    let req = &r["request_payload_redacted"];
    assert_eq!(req["method"], "POST");
    assert!(req["url"].as_str().unwrap().ends_with("/emails"), "{req}");
    assert_eq!(req["headers"]["authorization"], "[redacted]");
    assert!(req["headers"]["idempotency-key"].is_string());
    assert_eq!(req["body"]["to"], "a***@example.com");
    assert_eq!(req["body"]["text"]["length"], 26);
    let resp = &r["response_payload_redacted"];
    assert_eq!(resp["status"], 200);
    let sent_id = resp["body"]["id"].as_str().unwrap();
    assert_eq!(r["provider_message_id"], sent_id);

    // Timing: sent before done, answered after the provider, no filler for a fast provider.
    let t = &r["timeline"];
    let sent = t["provider_sent_ms"].as_u64().unwrap();
    let done = t["provider_done_ms"].as_u64().unwrap();
    assert!(
        sent <= done && done <= t["answered_ms"].as_u64().unwrap(),
        "{t}"
    );
    assert_eq!(r["latency_ms"].as_u64().unwrap(), done - sent);
    assert_eq!(t["filler_ms"], json!([]));

    // The conversation before the call, masked.
    let ctx = r["transcript_context"].as_array().unwrap();
    assert_eq!(ctx.len(), 2, "{r:#}");
    assert_eq!(ctx[0]["role"], "caller");
    let said = ctx[0]["text"].as_str().unwrap();
    assert!(
        said.contains("a***@example.com") && said.contains("+1********00"),
        "{said}"
    );
    assert_eq!(ctx[1]["role"], "consent");
    assert_eq!(ctx[1]["text"], "email: granted (dtmf)");
    end(&mut s).await;
}

#[tokio::test]
async fn a_webhook_record_keeps_the_id_and_time_the_receiver_got_and_hides_the_signature() {
    let env = Env::start().await;
    let mut s = env.session("c-ev-hook", json!({})).await;
    let a = s
        .call("call_01", "notify_team", json!({"reason": "billing"}))
        .await;
    assert_eq!(a.status(), "succeeded");
    let sent = &env.webhook.requests()[0];
    let r = record(&env, &inv_id(&a)).await;
    let headers = &r["request_payload_redacted"]["headers"];
    assert_eq!(headers["webhook-id"], sent.header("webhook-id").unwrap());
    assert_eq!(
        headers["webhook-timestamp"],
        sent.header("webhook-timestamp").unwrap()
    );
    assert_eq!(headers["webhook-signature"], "v1,[signature]");
    // The body is still masked: the caller's number it carries is not on record.
    let body = r["request_payload_redacted"]["body"].to_string();
    assert!(!body.contains(&CALLER[2..]), "{body}");
    end(&mut s).await;
}

#[tokio::test]
async fn a_call_missing_a_value_records_every_verdict_and_the_missing_field() {
    let env = Env::start().await;
    let mut s = env.session("c-ev-missing", order_vars()).await;
    s.say("Email me the summary please").await;
    s.consent("email", true).await;
    let a = s.call("call_01", "send_email_summary", json!({})).await;
    assert_eq!(a.status(), "rejected");
    let r = record(&env, &inv_id(&a)).await;
    assert_eq!(r["status"], "rejected");
    assert_eq!(r["error_code"], "missing_fields");
    assert_eq!(r["missing_fields"], json!(["summary"]));
    assert_eq!(guard(&r, "required_values")["passed"], false);
    // The guards after the failing one still ran and are on record.
    assert_eq!(guard(&r, "consent")["passed"], true);
    assert_eq!(guard(&r, "recipient")["passed"], true);
    assert!(r["request_payload_redacted"].is_null(), "nothing was sent");
    assert!(r["response_payload_redacted"].is_null());
    assert!(env.resend.requests().is_empty());
    assert!(r["timeline"]["answered_ms"].is_u64());
}

#[tokio::test]
async fn a_call_without_consent_is_on_record_as_consent_rejected() {
    let env = Env::start().await;
    let mut s = env.session("c-ev-consent", order_vars()).await;
    s.say("What's the status of my order A-1042?").await;
    let a = s
        .call(
            "call_01",
            "send_whatsapp_confirmation",
            json!({"order_id": "A-1042"}),
        )
        .await;
    assert_eq!(a.status(), "rejected");
    let r = record(&env, &inv_id(&a)).await;
    assert_eq!(r["status"], "rejected");
    assert_eq!(r["error_code"], "consent_required");
    let consent = guard(&r, "consent");
    assert_eq!(consent["passed"], false);
    assert!(!consent["detail"].as_str().unwrap().is_empty());
    assert_eq!(guard(&r, "required_values")["passed"], true);
    assert_eq!(
        r["inputs_redacted"]["whatsapp_number"]["value"],
        "+1********00"
    );
    assert_eq!(
        r["transcript_context"][0]["text"],
        "What's the status of my order A-1042?"
    );
    assert!(env.wati.requests().is_empty());
}

#[tokio::test]
async fn a_deferred_call_becomes_final_when_its_job_succeeds_with_the_attempts_linked() {
    let env = Env::start().await;
    // The live request outlives the hard timeout; the worker's retry succeeds.
    env.resend.push(Reply::Hang);
    let mut s = env.session("c-ev-defer", order_vars()).await;
    let a = s
        .call("call_01", "email_later", json!({"summary": "Ships Friday"}))
        .await;
    assert_eq!(a.status(), "deferred");
    let job = a.result.frame["data"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = inv_id(&a);

    // Before the job ends, the record says deferred and is not final.
    let early = record_when(&env, &id, |r| r["status"] == "deferred").await;
    assert_eq!(early["final"], false);
    assert_eq!(early["answered_status"], "deferred");
    assert_eq!(early["workflow_job_id"], job);
    let fillers = early["timeline"]["filler_ms"].as_array().unwrap();
    assert_eq!(fillers.len(), 1, "{fillers:?}");
    assert!(
        (200..400).contains(&fillers[0].as_u64().unwrap()),
        "{fillers:?}"
    );
    assert!(early["timeline"]["answered_ms"].as_u64().unwrap() >= 400);

    let r = record(&env, &id).await;
    assert_eq!(r["status"], "succeeded");
    assert_eq!(
        r["answered_status"], "deferred",
        "what the model was told stays"
    );
    assert!(r["final_at"].as_i64().unwrap() >= r["received_at"].as_i64().unwrap());
    assert!(r["provider_message_id"].is_string());
    assert_eq!(
        r["request_payload_redacted"]["headers"]["authorization"],
        "[redacted]"
    );
    assert_eq!(
        r["error_code"],
        json!(null),
        "a success clears the live failure"
    );

    // The worker's attempt is its own record, linked to the call's.
    let (_, list) = env
        .admin(
            "GET",
            "/v1/invocations?call_id=c-ev-defer",
            Some(ADMIN_TOKEN),
        )
        .await;
    let all = list["invocations"].as_array().unwrap();
    let attempts: Vec<&Value> = all
        .iter()
        .filter(|i| i["source_type"] == "workflow")
        .collect();
    assert_eq!(attempts.len(), 1, "{list}");
    let w = attempts[0];
    assert_eq!(w["parent_invocation_id"], id);
    assert_eq!(w["workflow_job_id"], job);
    assert_eq!(w["status"], "succeeded");
    assert_eq!(w["function"], "email_later");
    assert_eq!(w["inputs_redacted"]["to"]["value"], "a***@example.com");
    assert_eq!(
        w["request_payload_redacted"]["headers"]["idempotency-key"],
        r["request_payload_redacted"]["headers"]["idempotency-key"],
        "the retry carried the same key"
    );
    assert_eq!(w["provider_message_id"], r["provider_message_id"]);

    // The record stays final: nothing later changes it (no event says nothing will).
    quiet_for(Duration::from_millis(300)).await;
    assert_eq!(record(&env, &id).await, r);
    end(&mut s).await;
}

#[tokio::test]
async fn cancelled_calls_record_who_cancelled_and_whether_anything_was_sent() {
    let env = Env::start().await;
    let mut s = env.session("c-ev-cancel", json!({})).await;
    // A live call whose request is already out when the caller barges in (the receiver
    // takes it at once and answers after 500 ms).
    env.webhook
        .push(Reply::AnswerLate(Duration::from_millis(500)));
    s.send_call("call_01", "escalate_now", json!({"reason": "angry"}))
        .await;
    requests_reach(&env.webhook, 1, "the call to be in flight at the receiver").await;
    s.client
        .send(&json!({"type": "tool.cancel", "id": "call_01", "reason": "barge_in"}))
        .await
        .unwrap();
    let a = s.result_of("call_01").await;
    assert_eq!(a.status(), "cancelled");
    let r = record(&env, &inv_id(&a)).await;
    assert_eq!(r["status"], "cancelled");
    assert_eq!(r["cancelled"]["by"], "media_server");
    assert_eq!(r["cancelled"]["reason"], "barge_in");
    assert_eq!(r["cancelled"]["provider_outcome"], "succeeded");
    assert!(
        r["response_payload_redacted"]["status"].as_u64().unwrap() < 300,
        "{r}"
    );

    // A workflow call cancelled before it ever went out.
    let b = s
        .call("call_02", "log_after_call", json!({"note": "call back"}))
        .await;
    assert_eq!(b.status(), "deferred");
    s.client
        .send(&json!({"type": "tool.cancel", "id": "call_02", "reason": "barge_in"}))
        .await
        .unwrap();
    let r = record_when(&env, &inv_id(&b), |r| r["status"] == "cancelled").await;
    assert_eq!(r["final"], true);
    assert_eq!(r["answered_status"], "deferred");
    assert_eq!(r["cancelled"]["provider_outcome"], "not_sent");
    assert_eq!(r["cancelled"]["reason"], "barge_in");
    end(&mut s).await;
    // Its job is closed; nothing marks that the worker will never send it after the call.
    quiet_for(Duration::from_millis(300)).await;
    assert_eq!(
        env.webhook.requests().len(),
        1,
        "only the live call went out"
    );
}

#[tokio::test]
async fn the_call_timeline_merges_turns_fillers_results_and_job_outcomes_in_order() {
    let env = Env::start().await;
    env.resend.push(Reply::slow(900));
    let mut s = env.session("c-ev-timeline", order_vars()).await;
    s.agent_says("Hi, this is Acme. How can I help?").await;
    s.say("Send me the summary by email later, that's fine.")
        .await;
    s.consent("email", true).await;
    let a = s
        .call("call_01", "email_later", json!({"summary": "Ships Friday"}))
        .await;
    assert_eq!(a.status(), "deferred");
    s.say("Thanks, bye").await;
    end(&mut s).await;
    record(&env, &inv_id(&a)).await;

    let (code, call) = env
        .admin("GET", "/v1/calls/c-ev-timeline", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(code, 200, "{call}");
    assert_eq!(call["agent"], "support-bot");
    assert_eq!(call["caller"], "+1********00");
    assert_eq!(call["end_reason"], "hangup");
    let timeline = call["timeline"].as_array().unwrap();
    let kinds: Vec<String> = timeline
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "turn" => format!("turn:{}", e["role"].as_str().unwrap()),
            t => t.to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "session.start",
            "turn:agent",
            "turn:caller",
            "consent",
            "tool.call",
            "tool.filler",
            "tool.result",
            "turn:caller",
            "session.end",
            "job.outcome",
        ],
        "{timeline:#?}"
    );
    let times: Vec<i64> = timeline.iter().map(|e| e["at"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(timeline[6]["status"], "deferred");
    assert_eq!(timeline[9]["status"], "succeeded");
    assert_eq!(call["invocations"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn invocations_page_by_cursor_and_filter_by_call_function_status_and_time() {
    let env = Env::start().await;
    let mut s = env.session("c-ev-pages", order_vars()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        // Rejected at once (no consent): cheap records.
        let a = s
            .call(
                &format!("call_{i}"),
                "send_email_summary",
                json!({"summary": "x"}),
            )
            .await;
        ids.push(inv_id(&a));
    }
    let ok = s
        .call("call_ok", "notify_team", json!({"reason": "billing"}))
        .await;
    assert_eq!(ok.status(), "succeeded");
    record(&env, &inv_id(&ok)).await;
    for id in &ids {
        record(&env, id).await;
    }

    let mut seen = Vec::new();
    let mut path =
        "/v1/invocations?call_id=c-ev-pages&function=send_email_summary&limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (code, page) = env.admin("GET", &path, Some(ADMIN_TOKEN)).await;
        assert_eq!(code, 200, "{page}");
        pages += 1;
        for inv in page["invocations"].as_array().unwrap() {
            assert_eq!(inv["function"], "send_email_summary");
            seen.push(inv["invocation_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                path = format!(
                    "/v1/invocations?call_id=c-ev-pages&function=send_email_summary&limit=2&cursor={c}"
                )
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");

    let (_, ok_only) = env
        .admin(
            "GET",
            "/v1/invocations?call_id=c-ev-pages&status=succeeded",
            Some(ADMIN_TOKEN),
        )
        .await;
    let list = ok_only["invocations"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["function"], "notify_team");

    let (_, future) = env
        .admin(
            "GET",
            "/v1/invocations?since=2999-01-01T00:00:00Z",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(future["invocations"], json!([]));

    for (bad, word) in [
        ("status=maybe", "status"),
        ("limit=0", "limit"),
        ("since=yesterday", "since"),
        ("cursor=!!", "cursor"),
    ] {
        let (code, body) = env
            .admin("GET", &format!("/v1/invocations?{bad}"), Some(ADMIN_TOKEN))
            .await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request");
        assert!(body["message"].as_str().unwrap().contains(word), "{body}");
    }
    let (code, body) = env
        .admin("GET", "/v1/invocations/inv_nope", Some(ADMIN_TOKEN))
        .await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let (code, _) = env.admin("GET", "/v1/invocations", None).await;
    assert_eq!(code, 401);
    let (code, body) = env
        .admin("POST", "/v1/invocations", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

#[tokio::test]
async fn one_org_cannot_read_another_orgs_calls() {
    let env = Env::start().await;
    let mut s = env.session("c-ev-acme", order_vars()).await;
    let a = s
        .call("call_01", "notify_team", json!({"reason": "billing"}))
        .await;
    let id = inv_id(&a);
    end(&mut s).await;
    record(&env, &id).await;

    // Acme's own admin token and the global one see it.
    for token in [ADMIN_TOKEN, ACME_ADMIN] {
        let (code, _) = env.admin("GET", "/v1/calls/c-ev-acme", Some(token)).await;
        assert_eq!(code, 200);
        let (code, _) = env
            .admin("GET", &format!("/v1/invocations/{id}"), Some(token))
            .await;
        assert_eq!(code, 200);
    }
    // Beta's sees nothing, and cannot tell it exists.
    let (code, body) = env
        .admin("GET", "/v1/calls/c-ev-acme", Some(BETA_ADMIN))
        .await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let (code, _) = env
        .admin("GET", &format!("/v1/invocations/{id}"), Some(BETA_ADMIN))
        .await;
    assert_eq!(code, 404);
    let (_, list) = env.admin("GET", "/v1/invocations", Some(BETA_ADMIN)).await;
    assert_eq!(list["invocations"], json!([]));
    let (_, list) = env
        .admin("GET", "/v1/invocations?call_id=c-ev-acme", Some(BETA_ADMIN))
        .await;
    assert_eq!(list["invocations"], json!([]));
    let page = page(&env, "c-ev-acme", BETA_ADMIN).await;
    assert_eq!(page.0, 404);
    assert!(!page.1.contains("notify_team"));
    // No token at all.
    let (code, _) = env.admin("GET", "/v1/calls/c-ev-acme", None).await;
    assert_eq!(code, 401);
    let resp = reqwest::get(format!("http://{}/calls/c-ev-acme", env.server.admin_addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains("access_token"));
}

/// The call page with the token as a query parameter, as a browser would open it.
async fn page(env: &Env, call_id: &str, token: &str) -> (u16, String) {
    let resp = reqwest::get(format!(
        "http://{}/calls/{call_id}?access_token={token}",
        env.server.admin_addr
    ))
    .await
    .unwrap();
    let code = resp.status().as_u16();
    if code == 200 {
        assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(resp.headers()["cache-control"], "no-store");
    }
    (code, resp.text().await.unwrap())
}

#[tokio::test]
async fn no_secret_number_address_or_body_is_stored_or_served() {
    let env = Env::start().await;
    let body_text = "Your refund of 42 dollars goes out Friday";
    let mut s = env.session("c-ev-leak", order_vars()).await;
    s.say("My email is ana@example.com and my number is +14155550100, please send everything")
        .await;
    s.consent("email", true).await;
    s.consent("whatsapp", true).await;
    // A success, a refusal that echoes the address and the key, a Wati failure inside HTTP 200
    // that echoes the number, a deferral that the worker finishes, a webhook with the number.
    let ok = s
        .call(
            "call_01",
            "send_email_summary",
            json!({"summary": body_text}),
        )
        .await;
    assert_eq!(ok.status(), "succeeded");
    env.resend.push(Reply::ResendError {
        status: 422,
        name: "validation_error".into(),
        message: format!("Invalid `to` field: ana@example.com (key {RESEND_KEY})"),
        retry_after: None,
    });
    let refused = s
        .call(
            "call_02",
            "email_someone",
            json!({"email": "ana@example.com", "note": body_text}),
        )
        .await;
    assert_eq!(refused.status(), "failed");
    env.wati.push(Reply::WatiResultFalse {
        info: format!("number 14155550100 is not on WhatsApp (token {WATI_TOKEN})"),
    });
    let wati = s
        .call(
            "call_03",
            "send_whatsapp_confirmation",
            json!({"order_id": "A-1042"}),
        )
        .await;
    assert_eq!(wati.status(), "failed");
    env.resend.push(Reply::slow(700));
    let later = s
        .call("call_04", "email_later", json!({"summary": body_text}))
        .await;
    assert_eq!(later.status(), "deferred");
    let hook = s
        .call("call_05", "notify_team", json!({"reason": "billing"}))
        .await;
    assert_eq!(hook.status(), "succeeded");
    // An argument the guards refuse, quoting the number the model put in it.
    let invalid = s
        .call(
            "call_06",
            "notify_team",
            json!({"reason": "billing", "priority": "call 4155550100"}),
        )
        .await;
    assert_eq!(invalid.error().as_deref(), Some("invalid_arguments"));
    end(&mut s).await;
    let ids: Vec<String> = [&ok, &refused, &wati, &later, &hook, &invalid]
        .iter()
        .map(|a| inv_id(a))
        .collect();
    for id in &ids {
        record(&env, id).await;
    }

    let forbidden: Vec<String> = SECRETS
        .iter()
        .map(|s| s.to_string())
        .chain([
            "ana@example.com".into(),
            "4155550100".into(),
            "14155550100".into(),
            body_text.into(),
        ])
        .collect();
    let check = |what: &str, text: &str| {
        for f in &forbidden {
            assert!(!text.contains(f.as_str()), "{what} contains {f:?}: {text}");
        }
    };

    // Every API response about the call.
    let mut served = Vec::new();
    for path in [
        "/v1/calls/c-ev-leak".to_owned(),
        "/v1/invocations?call_id=c-ev-leak&limit=100".to_owned(),
        "/v1/invocations".to_owned(),
        "/v1/jobs".to_owned(),
        "/v1/connections".to_owned(),
    ]
    .into_iter()
    .chain(ids.iter().map(|id| format!("/v1/invocations/{id}")))
    {
        let (code, body) = env.admin("GET", &path, Some(ADMIN_TOKEN)).await;
        assert_eq!(code, 200, "{path}");
        check(&path, &body.to_string());
        served.push(body);
    }
    // The records are really there (a leak check over nothing proves nothing).
    let call = &served[0];
    assert_eq!(
        call["invocations"].as_array().unwrap().len(),
        6,
        "one record per tool call: {call}"
    );
    let invalid_rec = record(&env, &ids[5]).await;
    assert!(
        invalid_rec["error_message"]
            .as_str()
            .unwrap()
            .contains("********00"),
        "{invalid_rec}"
    );
    let refused_rec = record(&env, &ids[1]).await;
    assert!(
        refused_rec["error_message"]
            .as_str()
            .unwrap()
            .contains("a***@example.com"),
        "{refused_rec}"
    );
    let (code, html) = page(&env, "c-ev-leak", ADMIN_TOKEN).await;
    assert_eq!(code, 200);
    // The page's own URL carries the admin token; the page itself must not.
    check("the call page", &html);
    let metrics = reqwest::get(format!("http://{}/metrics", env.server.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    check("/metrics", &metrics);

    // Every evidence row in the evidence file.
    env.server.runtime().evidence.flush().await;
    let db = rusqlite::Connection::open(env.dir.path().join("toolgate-evidence.db")).unwrap();
    let mut rows = 0;
    for table in ["calls", "call_events", "invocations", "finals"] {
        let mut stmt = db.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let n = stmt.column_count();
        let mut q = stmt.query([]).unwrap();
        while let Some(row) = q.next().unwrap() {
            rows += 1;
            for i in 0..n {
                let v: rusqlite::types::Value = row.get(i).unwrap();
                if let rusqlite::types::Value::Text(t) = v {
                    check(&format!("table {table}"), &t);
                }
            }
        }
    }
    // 1 call, 3 history events, 6 invocations, 1 final.
    assert_eq!(rows, 11, "evidence rows");
    // The job queue must keep a pending job's recipient to send it; secrets never, and a
    // finished job's inputs are dropped.
    let db = rusqlite::Connection::open(env.dir.path().join("toolgate.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT state, inputs, last_error FROM jobs")
        .unwrap();
    let jobs: Vec<(String, String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!jobs.is_empty());
    for (state, inputs, err) in jobs {
        for secret in SECRETS {
            assert!(!inputs.contains(secret) && !err.as_deref().unwrap_or("").contains(secret));
        }
        if state == "succeeded" {
            assert_eq!(inputs, "[]");
        }
    }
}

#[tokio::test]
async fn keep_bodies_keeps_message_text_but_still_masks_numbers_and_addresses() {
    let env = Env::start_with(|t| {
        t.replace("[workflow]", "[evidence]\nkeep_bodies = true\n\n[workflow]")
    })
    .await;
    let mut s = env.session("c-ev-bodies", order_vars()).await;
    s.say("Email me please").await;
    s.consent("email", true).await;
    let a = s
        .call(
            "call_01",
            "send_email_summary",
            json!({"summary": "Call Ana back on +14155550100 about the refund"}),
        )
        .await;
    let r = record(&env, &inv_id(&a)).await;
    assert_eq!(
        r["inputs_redacted"]["text"]["value"],
        "Call Ana back on +1********00 about the refund"
    );
    assert_eq!(
        r["request_payload_redacted"]["body"]["text"],
        "Call Ana back on +1********00 about the refund"
    );
    assert_eq!(r["inputs_redacted"]["to"]["value"], "a***@example.com");
}

#[tokio::test]
async fn the_call_page_shows_the_conversation_and_every_action() {
    let env = Env::start().await;
    let mut s = env.session("c-ev-page", order_vars()).await;
    s.agent_says("Hello from Acme").await;
    s.say("Please email me a summary <b>now</b>").await;
    s.consent("email", true).await;
    let ok = s
        .call(
            "call_01",
            "send_email_summary",
            json!({"summary": "Ships Friday"}),
        )
        .await;
    let rejected = s
        .call("call_02", "send_whatsapp_confirmation", json!({}))
        .await;
    end(&mut s).await;
    record(&env, &inv_id(&ok)).await;
    record(&env, &inv_id(&rejected)).await;
    let (code, html) = page(&env, "c-ev-page", ACME_ADMIN).await;
    assert_eq!(code, 200);
    assert!(html.contains("Hello from Acme"));
    assert!(
        html.contains("Please email me a summary &#60;b&#62;now&#60;/b&#62;")
            || html.contains("&lt;b&gt;now"),
        "turn text is escaped"
    );
    assert!(html.contains("send_email_summary") && html.contains("send_whatsapp_confirmation"));
    assert!(html.contains(">succeeded<") && html.contains(">rejected<"));
    assert!(html.contains("Missing: <code>order_id</code>"), "{html}");
    assert!(html.contains("Request (redacted)"));
    let (code, _) = page(&env, "c-nope", ACME_ADMIN).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn duplicates_and_calls_refused_before_their_guards_are_on_record() {
    let env = Env::start().await;
    let mut s = env.session("c-ev-dup", json!({})).await;
    let first = s
        .call("call_1", "notify_team", json!({"reason": "billing"}))
        .await;
    assert_eq!(first.status(), "succeeded");
    let again = s
        .call("call_2", "notify_team", json!({"reason": "billing"}))
        .await;
    assert_eq!(again.status(), "duplicate");
    let r = record(&env, &inv_id(&again)).await;
    assert_eq!(r["status"], "duplicate");
    assert_eq!(guard(&r, "duplicate")["passed"], false);
    assert!(r["request_payload_redacted"].is_null());
    // The same tool call id twice: an error frame, and a record of the refusal.
    s.send_call("call_1", "notify_team", json!({"reason": "delivery"}))
        .await;
    s.expect_error("duplicate_call_id").await;
    end(&mut s).await;
    env.server.runtime().evidence.flush().await;
    let (_, list) = env
        .admin(
            "GET",
            "/v1/invocations?call_id=c-ev-dup&status=rejected",
            Some(ADMIN_TOKEN),
        )
        .await;
    let refused = list["invocations"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{list}");
    assert_eq!(refused[0]["error_code"], "duplicate_call_id");
    assert_eq!(refused[0]["function"], "notify_team");
    assert_eq!(env.webhook.requests().len(), 1);
}

#[tokio::test]
async fn a_call_still_running_when_the_session_ends_is_recorded_unanswered() {
    let env = Env::start().await;
    // The receiver takes the request at once and answers after 400 ms.
    env.webhook
        .push(Reply::AnswerLate(Duration::from_millis(400)));
    let mut s = env.session("c-ev-gone", json!({})).await;
    s.send_call("call_1", "escalate_now", json!({"reason": "angry"}))
        .await;
    requests_reach(&env.webhook, 1, "the call to be in flight at the receiver").await;
    end(&mut s).await;
    // The tool.call's id is known only from the request; find the record through the call.
    let deadline = Instant::now() + SETTLE;
    let r = loop {
        let (_, list) = env
            .admin(
                "GET",
                "/v1/invocations?call_id=c-ev-gone",
                Some(ADMIN_TOKEN),
            )
            .await;
        if let Some(r) = list["invocations"].as_array().and_then(|l| l.first()) {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no record");
        sleep(Duration::from_millis(40)).await;
    };
    assert_eq!(r["status"], "succeeded", "the provider did it: {r}");
    assert!(
        r["timeline"]["answered_ms"].is_null(),
        "nobody was told: {r}"
    );
    assert!(r["latency_ms"].as_u64().unwrap() >= 350);
    assert_eq!(env.webhook.requests().len(), 1);
}

#[tokio::test]
async fn a_deferred_call_whose_job_runs_out_of_attempts_ends_dead() {
    let env = Env::start_with(|t| {
        t.replace(
            "health_url = \"{webhook_health}\"",
            "health_url = \"{webhook_health}\"\ncircuit = { failures = 100, penalty_ms = 1000, max_penalty_ms = 1000 }",
        )
        .replace("backoff_base_ms = 50", "backoff_base_ms = 50\nmax_attempts = 3")
    })
    .await;
    env.webhook.set_default(Reply::Raw {
        status: 503,
        headers: vec![],
        body: String::new(),
    });
    let mut s = env.session("c-ev-dead", json!({})).await;
    let a = s
        .call("call_1", "notify_team", json!({"reason": "billing"}))
        .await;
    assert_eq!(a.status(), "deferred");
    let r = record_when(&env, &inv_id(&a), |r| r["final"] == true).await;
    assert_eq!(r["status"], "dead", "{r}");
    assert_eq!(r["error_code"], "max_attempts");
    assert_eq!(r["answered_status"], "deferred");
    let (_, list) = env
        .admin(
            "GET",
            "/v1/invocations?call_id=c-ev-dead",
            Some(ADMIN_TOKEN),
        )
        .await;
    let attempts: Vec<&Value> = list["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["source_type"] == "workflow")
        .collect();
    assert_eq!(
        attempts.len(),
        2,
        "the live request was the first of 3: {list}"
    );
    assert!(attempts.iter().all(|w| w["status"] == "failed"
        && w["error_code"] == "provider_unavailable"
        && w["response_payload_redacted"]["status"] == 503));
    end(&mut s).await;
}

#[tokio::test]
async fn call_ids_with_any_characters_reach_their_page_and_record() {
    let env = Env::start().await;
    let id = "call/with space#and%percent";
    let mut s = env.session(id, json!({})).await;
    s.call("call_1", "notify_team", json!({"reason": "billing"}))
        .await;
    end(&mut s).await;
    env.server.runtime().evidence.flush().await;
    let enc: String = id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (code, call) = env
        .admin(
            "GET",
            &format!("/v1/calls/{enc}?org=acme"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(code, 200, "{call}");
    assert_eq!(call["call_id"], id);
    let (code, html) = page(&env, &enc, ACME_ADMIN).await;
    assert_eq!(code, 200);
    assert!(html.contains("notify_team"));
    let (code, _) = env
        .admin(
            "GET",
            &format!("/v1/calls/{enc}?org=beta"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(code, 404, "the org filter applies to all-orgs tokens");
}
