//! Integration connections: validation against providers that behave like the real ones (valid
//! key, sending-only key, revoked key, provider down, slow provider), the circuit breaker and
//! rate limits seen at the mock, reload, and no secret in anything the sidecar shows.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use toolgate::tooling::mock::Reply;

async fn validate(env: &Env, id: &str, token: &str) -> (u16, serde_json::Value) {
    env.admin(
        "POST",
        &format!("/v1/connections/{id}/validate"),
        Some(token),
    )
    .await
}

#[tokio::test]
async fn connections_are_validated_at_start_up_in_the_background() {
    let env = Env::start().await;
    let resend = env.validated("acme-resend").await;
    assert_eq!(resend["status"], "connected", "{resend}");
    assert_eq!(
        resend["reason"],
        "the API key is valid (it can list domains)"
    );
    assert!(resend["validated_at"].as_i64().unwrap() > 0);
    let wati = env.validated("acme-wati").await;
    assert_eq!(wati["status"], "connected", "{wati}");
    assert_eq!(
        wati["checks"],
        json!(["template \"order_confirmed\" is approved"])
    );
    let hooks = env.validated("acme-hooks").await;
    assert_eq!(hooks["status"], "connected", "{hooks}");
    assert_eq!(hooks["reason"], "the health check answered HTTP 200");
    // The checks really reached the providers.
    assert!(
        env.resend
            .all_requests()
            .iter()
            .any(|r| r.method == "GET" && r.path == "/domains")
    );
    let wati_check = env
        .wati
        .all_requests()
        .into_iter()
        .find(|r| r.path.ends_with("/api/v1/getMessageTemplates"))
        .unwrap();
    assert_eq!(wati_check.query_param("pageNumber").as_deref(), Some("1"));
    assert_eq!(
        wati_check.header("authorization"),
        Some(format!("Bearer {WATI_TOKEN}").as_str())
    );
}

#[tokio::test]
async fn a_sending_only_resend_key_is_connected() {
    let env = Env::start().await;
    env.resend.set_restricted(true);
    let (status, body) = validate(&env, "acme-resend", ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    let c = &body["connection"];
    assert_eq!(c["status"], "connected", "{c}");
    assert!(c["reason"].as_str().unwrap().contains("sending-only"));
}

#[tokio::test]
async fn a_revoked_key_is_an_error_until_validation_succeeds_again() {
    let env = Env::start().await;
    env.validated("acme-resend").await;
    env.resend.set_revoked(true);
    let (_, body) = validate(&env, "acme-resend", ADMIN_TOKEN).await;
    let c = &body["connection"];
    assert_eq!(c["status"], "error", "{c}");
    assert_eq!(c["reason"], "Resend refused the API key (invalid_api_key)");

    let mut s = env.session("c-revoked", order_vars()).await;
    s.say("Send it to bo at example dot org please.").await;
    let a = s
        .call(
            "call_1",
            "email_someone",
            json!({"email": "bo@example.org", "note": "x"}),
        )
        .await;
    assert_eq!(a.error().as_deref(), Some("connection_unavailable"));
    assert!(env.resend.requests().is_empty(), "fails fast, nothing sent");

    // The key is fixed: validation says so, and calls go through again.
    env.resend.set_revoked(false);
    let (_, body) = validate(&env, "acme-resend", ACME_ADMIN).await;
    assert_eq!(body["connection"]["status"], "connected");
    let a = s
        .call(
            "call_2",
            "email_someone",
            json!({"email": "bo@example.org", "note": "x"}),
        )
        .await;
    assert_eq!(a.status(), "succeeded", "{:?}", a.output());
}

#[tokio::test]
async fn a_provider_that_is_down_defers_auto_calls_and_refuses_live_ones() {
    let env = Env::start().await;
    env.validated("acme-resend").await;
    env.resend.stop();
    let (_, body) = validate(&env, "acme-resend", ADMIN_TOKEN).await;
    let c = &body["connection"];
    assert_eq!(c["status"], "error", "{c}");
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .starts_with("cannot reach the provider"),
        "{c}"
    );

    let mut s = env.session("c-down", order_vars()).await;
    let a = s
        .call("call_1", "email_later", json!({"summary": "x"}))
        .await;
    assert_eq!(a.status(), "deferred", "{:?}", a.output());
    assert_eq!(a.result.frame["data"]["reason"], "circuit_open");
    s.say("Send it to bo at example dot org.").await;
    let a = s
        .call(
            "call_2",
            "email_someone",
            json!({"email": "bo@example.org", "note": "x"}),
        )
        .await;
    assert_eq!(a.error().as_deref(), Some("connection_unavailable"));
}

#[tokio::test]
async fn a_slow_provider_fails_validation_after_its_timeout() {
    let env = Env::start_with(|t| {
        t.replace(
            "[storage]",
            "[defaults]\nvalidate_timeout_ms = 1000\n\n[storage]",
        )
    })
    .await;
    env.validated("acme-hooks").await;
    // The health check is too slow; the connection is unreachable, not misconfigured.
    env.webhook.set_check_delay(Duration::from_secs(3));
    let (_, body) = validate(&env, "acme-hooks", ADMIN_TOKEN).await;
    let c = &body["connection"];
    assert_eq!(c["status"], "error", "{c}");
    assert_eq!(
        c["reason"],
        "cannot reach the provider: no answer within 1000 ms"
    );
}

#[tokio::test]
async fn wati_validation_reports_templates_that_are_missing_or_not_approved() {
    let env = Env::start().await;
    env.wati
        .set_templates(&[("order_shipped", "APPROVED"), ("promo", "REJECTED")]);
    let (_, body) = validate(&env, "acme-wati", ADMIN_TOKEN).await;
    let c = &body["connection"];
    assert_eq!(c["status"], "connected", "the token works: {c}");
    assert_eq!(
        c["checks"],
        json!(["template \"order_confirmed\" was not found"])
    );
    assert_eq!(
        c["reason"],
        "the token is valid, but template \"order_confirmed\" was not found"
    );
}

#[tokio::test]
async fn a_disabled_connection_is_disconnected_and_never_called() {
    let env = Env::start_with(|t| {
        t.replace(
            "provider = \"webhook\"",
            "provider = \"webhook\"\nenabled = false",
        )
    })
    .await;
    let c = env.connection("acme-hooks").await;
    assert_eq!(c["status"], "disconnected");
    let mut s = env.session("c-disabled", json!({})).await;
    let a = s
        .call("call_1", "notify_team", json!({"reason": "billing"}))
        .await;
    assert_eq!(a.error().as_deref(), Some("connection_unavailable"));
    // The validator's first pass checks every enabled connection together: once the others
    // have been checked, a check of this one would have been made too.
    for id in ["acme-resend", "acme-wati", "beta-wati"] {
        wait_until(&format!("{id} to be validated"), EVENT_WAIT, || async {
            (!env.connection(id).await["validated_at"].is_null()).then_some(())
        })
        .await;
    }
    assert!(env.webhook.all_requests().is_empty());
}

#[tokio::test]
async fn the_connections_api_is_org_scoped_and_never_shows_a_secret() {
    let env = Env::start().await;
    env.validated("acme-resend").await;
    let (status, body) = env.admin("GET", "/v1/connections", Some(BETA_ADMIN)).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["beta-wati"]);
    let (status, _) = validate(&env, "acme-resend", BETA_ADMIN).await;
    assert_eq!(
        status, 404,
        "another org's connection does not exist for beta"
    );
    let (status, _) = env.admin("GET", "/v1/connections", None).await;
    assert_eq!(status, 401);

    let (_, all) = env.admin("GET", "/v1/connections", Some(ADMIN_TOKEN)).await;
    let c = &all["connections"][0];
    for key in [
        "id",
        "org",
        "provider",
        "status",
        "reason",
        "validated_at",
        "circuit",
    ] {
        assert!(c.get(key).is_some(), "missing {key} in {c}");
    }
    let text = all.to_string();
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test]
async fn the_circuit_opens_after_consecutive_failures_then_lets_one_probe_through() {
    let env = Env::start_with(|t| {
                t.replace(
            "secret = { env = \"ACME_WEBHOOK_SECRET\" }",
            "secret = { env = \"ACME_WEBHOOK_SECRET\" }\ncircuit = { failures = 3, penalty_ms = 400, max_penalty_ms = 400 }",
        )
    })
    .await;
    env.validated("acme-hooks").await;
    env.webhook.set_default(Reply::Raw {
        status: 503,
        headers: vec![],
        body: String::new(),
    });
    let mut s = env.session("c-circuit", json!({})).await;
    let call = |n: u32| json!({"reason": "billing", "priority": n});
    for n in 0..3 {
        let a = s.call(&format!("c{n}"), "escalate_now", call(n)).await;
        assert_eq!(a.error().as_deref(), Some("provider_unavailable"));
    }
    assert_eq!(env.webhook.requests().len(), 3);
    assert_eq!(env.connection("acme-hooks").await["circuit"], "open");
    // While open: live calls fail fast and the provider sees nothing.
    for n in 3..8 {
        let a = s.call(&format!("c{n}"), "escalate_now", call(n)).await;
        assert_eq!(a.error().as_deref(), Some("connection_unavailable"));
    }
    assert_eq!(env.webhook.requests().len(), 3);
    // After the penalty: exactly one probe. It fails: open again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let a = s.call("c8", "escalate_now", call(8)).await;
    assert_eq!(a.error().as_deref(), Some("provider_unavailable"));
    let a = s.call("c9", "escalate_now", call(9)).await;
    assert_eq!(a.error().as_deref(), Some("connection_unavailable"));
    assert_eq!(env.webhook.requests().len(), 4);
    // The provider recovers; the next probe closes the circuit.
    // Several callers at once when the penalty ends: exactly one probe reaches the provider.
    env.webhook.set_default(Reply::slow(300));
    tokio::time::sleep(Duration::from_millis(850)).await;
    let ids: Vec<String> = (20..25).map(|n| format!("c{n}")).collect();
    for (n, id) in (20..25).zip(&ids) {
        s.send_call(id, "escalate_now", call(n)).await;
    }
    let results = s.results_of(&ids).await;
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r.frame["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "succeeded").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(env.webhook.requests().len(), 5, "one probe, no more");
    assert_eq!(env.connection("acme-hooks").await["circuit"], "closed");
    let a = s.call("c30", "escalate_now", call(30)).await;
    assert_eq!(a.status(), "succeeded");
}

#[tokio::test]
async fn a_worker_holds_jobs_for_a_refused_connection_without_spending_their_attempts() {
    let env = Env::start_with(|t| {
        t.replace("[workflow]", "[defaults]\nrevalidate_error_ms = 1000\n\n[workflow]")
            .replacen(
                "[[agents]]\nid = \"beta-bot\"",
                "[[agents.functions]]\nname = \"wati_after_call\"\naction = \"wati.send_session_message\"\nconnection = \"acme-wati\"\ndescription = \"WhatsApp the caller after the call.\"\nrecipient = { input = \"whatsapp_number\", policy = \"caller\" }\ntiming = { mode = \"workflow\" }\n\n[agents.functions.inputs]\nwhatsapp_number = { from = \"caller.number\" }\nmessage_text = { arg = \"text\", required = true }\n\n[[agents]]\nid = \"beta-bot\"",
                1,
            )
    })
    .await;
    env.validated("acme-wati").await;
    let mut s = env.session("c-held", json!({})).await;
    let a = s
        .call("call_1", "wati_after_call", json!({"text": "thanks"}))
        .await;
    assert_eq!(a.status(), "deferred");
    let job = a.result.frame["data"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The token is revoked before the call ends.
    env.wati.set_revoked(true);
    let (_, body) = validate(&env, "acme-wati", ADMIN_TOKEN).await;
    assert_eq!(body["connection"]["status"], "error");
    s.client
        .send(&json!({"type": "session.end"}))
        .await
        .unwrap();
    // The worker looks at it (at the end of the call, then every second) but never sends or
    // counts an attempt: each look hands it back, held until a later time.
    let held_until = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let (held_until, job_id, env_ref) = (&held_until, &job, &env);
    let j = wait_until(
        "the worker to look at the held job three times",
        EVENT_WAIT,
        || async move {
            let j = env_ref.job(job_id).await;
            let held = j["state"] == "queued"
                && j["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("acme-wati is error"));
            if held {
                held_until.borrow_mut().insert(j["runnable_at"].to_string());
            }
            (held_until.borrow().len() >= 3).then_some(j)
        },
    )
    .await;
    assert_eq!(j["state"], "queued", "{j}");
    assert_eq!(j["attempts"], 0, "{j}");
    assert!(
        j["last_error"]
            .as_str()
            .unwrap()
            .contains("acme-wati is error"),
        "{j}"
    );
    assert!(env.wati.requests().is_empty());
    // Fixed and validated: it goes out, as its first attempt.
    env.wati.set_revoked(false);
    let (_, body) = validate(&env, "acme-wati", ADMIN_TOKEN).await;
    assert_eq!(body["connection"]["status"], "connected");
    let j = env.job_settled(&job, Duration::from_secs(10)).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["attempts"], 1, "{j}");
    assert_eq!(env.wati.requests().len(), 1);
}

#[tokio::test]
async fn over_the_rate_a_live_call_is_refused_and_a_deferrable_one_queued() {
    // A slow refill (one token per 2.5 s), so the machine's own pace cannot refill the
    // bucket between the calls.
    let env = Env::start_with(|t| {
        t.replace(
            "token = { env = \"ACME_WATI_TOKEN\" }",
            "token = { env = \"ACME_WATI_TOKEN\" }\nrate = \"2/5s\"",
        )
    })
    .await;
    let mut s = env.session("c-rate", json!({})).await;
    for n in 0..2 {
        let a = s
            .call(
                &format!("c{n}"),
                "whatsapp_note",
                json!({"text": format!("n{n}")}),
            )
            .await;
        assert_eq!(a.status(), "succeeded");
    }
    let a = s.call("c2", "whatsapp_note", json!({"text": "n2"})).await;
    assert_eq!(a.status(), "rejected");
    assert_eq!(a.error().as_deref(), Some("rate_limited"));
    let a = s.call("c3", "wati_later", json!({"text": "later"})).await;
    assert_eq!(a.status(), "deferred");
    assert_eq!(a.result.frame["data"]["reason"], "rate_limited");
    let id = a.result.frame["data"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        env.job_settled(&id, Duration::from_secs(10)).await["state"],
        "succeeded",
        "the queued call went out once a token was free"
    );
    assert_eq!(env.wati.requests().len(), 3);
}

#[tokio::test]
async fn a_provider_429_pauses_the_connection_for_its_retry_after() {
    let env = Env::start().await;
    env.resend.push(Reply::ResendError {
        status: 429,
        name: "rate_limit_exceeded".into(),
        message: "Too many requests.".into(),
        retry_after: Some(1),
    });
    let mut s = env.session("c-pause", order_vars()).await;
    s.say("Send it to bo at example dot org.").await;
    let args = |n: u32| json!({"email": "bo@example.org", "note": format!("n{n}")});
    let a = s.call("c0", "email_someone", args(0)).await;
    assert_eq!(a.error().as_deref(), Some("provider_unavailable"));
    let a = s.call("c1", "email_someone", args(1)).await;
    assert_eq!(
        a.error().as_deref(),
        Some("rate_limited"),
        "paused by the provider"
    );
    assert_eq!(env.resend.requests().len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = s.call("c2", "email_someone", args(2)).await;
    assert_eq!(a.status(), "succeeded");
}

#[tokio::test]
async fn a_rate_limited_validation_keeps_the_status_and_pauses_the_connection() {
    let env = Env::start().await;
    let before = env.validated("acme-resend").await;
    assert_eq!(before["status"], "connected");
    env.resend.push_check(Reply::Raw {
        status: 429,
        headers: vec![("retry-after".into(), "3".into())],
        body: r#"{"statusCode":429,"name":"rate_limit_exceeded","message":"Too many requests."}"#
            .into(),
    });
    let (_, body) = validate(&env, "acme-resend", ADMIN_TOKEN).await;
    let c = &body["connection"];
    assert_eq!(
        c["status"], "connected",
        "a 429 says nothing of the key: {c}"
    );
    assert_eq!(c["reason"], before["reason"]);
    assert!(c["paused_ms"].as_u64().unwrap() > 2_000, "{c}");
    assert_eq!(c["circuit"], "closed");
}

/// A provider's `Retry-After` as an HTTP date that never comes.
const YEAR_9999: &str = "Fri, 31 Dec 9999 23:59:59 GMT";

fn bounded(t: String) -> String {
    t.replacen(
        "[workflow]",
        "[defaults]\nmax_retry_after_ms = 60000\n\n[workflow]",
        1,
    )
}

#[tokio::test]
async fn a_retry_after_in_year_9999_pauses_only_for_the_bound_and_validation_lifts_it() {
    let env = Env::start_with(bounded).await;
    env.validated("acme-resend").await;
    env.resend.push(Reply::Raw {
        status: 429,
        headers: vec![("retry-after".into(), YEAR_9999.into())],
        body: r#"{"statusCode":429,"name":"rate_limit_exceeded","message":"Too many requests."}"#
            .into(),
    });
    let mut s = env.session("c-9999", order_vars()).await;
    s.say("Send it to bo at example dot org.").await;
    let args = |n: u32| json!({"email": "bo@example.org", "note": format!("n{n}")});
    let a = s.call("c0", "email_someone", args(0)).await;
    assert_eq!(a.error().as_deref(), Some("provider_unavailable"));
    let c = env.connection("acme-resend").await;
    let paused = c["paused_ms"].as_u64().unwrap();
    assert!(
        (50_000..=60_000).contains(&paused),
        "paused for the bound, not for 8,000 years: {c}"
    );
    let a = s.call("c1", "email_someone", args(1)).await;
    assert_eq!(a.error().as_deref(), Some("rate_limited"));
    // The provider answers a validation and takes the key: the pause is over.
    let (status, body) = validate(&env, "acme-resend", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connection"]["status"], "connected", "{body}");
    assert!(body["connection"]["paused_ms"].is_null(), "{body}");
    let a = s.call("c2", "email_someone", args(2)).await;
    assert_eq!(a.status(), "succeeded");
    assert_eq!(env.resend.requests().len(), 2);
}

#[tokio::test]
async fn a_503_with_a_retry_after_in_year_9999_is_deferred_to_within_the_bound() {
    let env = Env::start_with(bounded).await;
    env.resend.push(Reply::Raw {
        status: 503,
        headers: vec![("retry-after".into(), YEAR_9999.into())],
        body: r#"{"statusCode":503,"name":"internal_server_error","message":"Unavailable."}"#
            .into(),
    });
    let mut s = env.session("c-9999-auto", order_vars()).await;
    let before = toolgate::clock::now_ms();
    let a = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    assert_eq!(a.status(), "deferred");
    assert_eq!(a.result.frame["data"]["reason"], "retryable_failure");
    let id = a.result.frame["data"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = env.job(&id).await;
    let runnable_at = job["runnable_at"].as_i64().unwrap();
    assert!(
        runnable_at >= before + 59_000 && runnable_at <= before + 61_000 + 5_000,
        "runnable within the bound, not in year 9999: {job}"
    );
    // No other call on the connection is held for 8,000 years either.
    let c = env.connection("acme-resend").await;
    assert!(c["paused_ms"].as_u64().unwrap_or(0) <= 60_000, "{c}");
}

#[tokio::test]
async fn readiness_says_whether_an_action_can_be_made_durable() {
    let env = Env::start().await;
    let (status, body) = env.admin("GET", "/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    // A disk with less room than the store needs: not ready, and why.
    let env =
        Env::start_with(|t| t.replacen("[storage]\n", "[storage]\nmin_free_mb = 1000000000\n", 1))
            .await;
    let (status, body) = env.admin("GET", "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "not_ready");
    assert!(
        body["message"].as_str().unwrap().contains("min_free_mb"),
        "{body}"
    );
    // The store gone (closed for writes): not ready either.
    let env = Env::start().await;
    env.server.runtime().jobs.close().await;
    let (status, body) = env.admin("GET", "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cannot make an action durable"),
        "{body}"
    );
}
