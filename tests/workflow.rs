//! The post-call workflow end to end: handoff at the budget, retries by the worker with the same
//! idempotency key, Retry-After, max_attempts, workflow-mode functions, predictive deferral, and
//! the jobs API, all checked at the mock provider and through the admin API.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use toolgate::tooling::mock::Reply;

const SETTLE: Duration = Duration::from_secs(15);

fn job_id(a: &Answer) -> String {
    a.result.frame["data"]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id in {:?}", a.result.frame))
        .to_owned()
}

#[tokio::test]
async fn a_provider_slower_than_the_budget_is_deferred_and_sent_exactly_once() {
    let env = Env::start().await;
    // defer_after 400 ms < 900 ms < hard_timeout 1500 ms
    env.resend.push(Reply::slow(900));
    let mut s = env.session("c-defer", order_vars()).await;
    let a = s
        .call(
            "call_01",
            "email_later",
            json!({"summary": "Ships Friday."}),
        )
        .await;
    assert_eq!(a.status(), "deferred", "{:?}", a.result.frame);
    assert!(
        env.resend.requests().is_empty(),
        "deferred was answered while the provider was still working"
    );
    assert_eq!(
        a.fillers().len(),
        1,
        "the filler came first: {:?}",
        a.before
    );
    let out = a.output();
    assert_eq!(out["ok"], true);
    assert_eq!(out["status"], "queued");
    assert_eq!(
        out["next"],
        "Tell the caller: The email will arrive shortly after the call. Do not call this again."
    );
    assert_eq!(a.result.frame["data"]["reason"], "budget");

    let job = env.job_settled(&job_id(&a), SETTLE).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "the live request finished it");
    assert_eq!(env.resend.requests().len(), 1, "nothing was re-sent");
    assert_eq!(env.resend.delivered(), 1);

    // The call remembers: a repeat is answered from the ledger, nothing sent.
    let again = s
        .call(
            "call_02",
            "email_later",
            json!({"summary": "Ships Friday."}),
        )
        .await;
    assert_eq!(again.status(), "duplicate");
    assert_eq!(env.resend.requests().len(), 1);

    s.client
        .send(&json!({"type": "session.end"}))
        .await
        .unwrap();
    let ended = s.client.recv(WAIT).await.unwrap();
    assert_eq!(ended.frame["deferred"], 1);
}

#[tokio::test]
async fn a_live_request_that_times_out_is_retried_by_the_worker_with_the_same_key() {
    let env = Env::start().await;
    env.resend.push(Reply::Hang);
    let mut s = env.session("c-timeout-retry", order_vars()).await;
    let a = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    assert_eq!(a.status(), "deferred");
    let job = env.job_settled(&job_id(&a), SETTLE).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2);
    let reqs = env.resend.requests();
    assert_eq!(reqs.len(), 2);
    let key = reqs[0].header("idempotency-key").unwrap();
    assert_eq!(reqs[1].header("idempotency-key"), Some(key));
    assert_eq!(
        env.resend.deliveries_by_key().get(key),
        Some(&1),
        "sent once"
    );
}

#[tokio::test]
async fn a_429_before_the_budget_is_queued_and_its_retry_after_respected() {
    let env = Env::start().await;
    env.resend.push(Reply::ResendError {
        status: 429,
        name: "rate_limit_exceeded".into(),
        message: "Too many requests.".into(),
        retry_after: Some(1),
    });
    let mut s = env.session("c-429-defer", order_vars()).await;
    let a = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    assert_eq!(a.status(), "deferred");
    assert_eq!(a.result.frame["data"]["reason"], "retryable_failure");
    let job = env.job_settled(&job_id(&a), SETTLE).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let reqs = env.resend.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, before Retry-After"
    );
}

#[tokio::test]
async fn a_job_that_keeps_failing_ends_dead_and_can_be_retried() {
    let env = Env::start_with(|t| {
        t.replace(
            "backoff_base_ms = 50",
            "backoff_base_ms = 50\nmax_attempts = 3\nretry_window_ms = 600000",
        )
    })
    .await;
    env.resend.set_default(Reply::Raw {
        status: 503,
        headers: vec![],
        body: "down".into(),
    });
    let mut s = env.session("c-dead", order_vars()).await;
    let a = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    assert_eq!(a.status(), "deferred");
    let id = job_id(&a);
    let job = env.job_settled(&id, SETTLE).await;
    assert_eq!(job["state"], "dead", "{job}");
    assert_eq!(job["attempts"], 3);
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .starts_with("provider_unavailable")
    );
    assert_eq!(env.resend.requests().len(), 3);

    // An operator fixes the provider and retries the job.
    env.resend.set_default(Reply::Normal);
    let (status, body) = env
        .admin("POST", &format!("/v1/jobs/{id}/retry"), Some(ACME_ADMIN))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["job"]["state"], "queued");
    let job = env.job_settled(&id, SETTLE).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(env.resend.delivered(), 1);
}

/// Every byte under the data folder that contains `needle`, by file.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            found.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    found
}

#[tokio::test]
async fn a_failed_or_dead_job_keeps_no_recipient_in_any_data_file_and_cannot_be_retried() {
    let env = Env::start_with(|t| {
        t.replace(
            "backoff_base_ms = 50",
            "backoff_base_ms = 50\nmax_attempts = 2",
        )
    })
    .await;
    // The recipient comes from the session's variables; the evidence keeps it masked.
    let canary = "pii-canary-7f3a";
    let vars = json!({"email": format!("{canary}@example.com"), "order_id": "A-1042"});

    // One refused after the handoff (failed), one out of attempts (dead).
    env.resend.push(Reply::Delay(
        Duration::from_millis(800),
        Box::new(Reply::ResendError {
            status: 422,
            name: "validation_error".into(),
            message: "The `to` address is on the suppression list.".into(),
            retry_after: None,
        }),
    ));
    let mut s = env.session("c-pii-failed", vars.clone()).await;
    let failed = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    assert_eq!(failed.status(), "deferred");
    let job = env.job_settled(&job_id(&failed), SETTLE).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["inputs_cleared"], true, "{job}");

    env.resend.set_default(Reply::Raw {
        status: 503,
        headers: vec![],
        body: "down".into(),
    });
    let mut s2 = env.session("c-pii-dead", vars).await;
    let dead = s2
        .call("call_01", "email_later", json!({"summary": "y"}))
        .await;
    let id = job_id(&dead);
    let job = env.job_settled(&id, SETTLE).await;
    assert_eq!(job["state"], "dead", "{job}");
    assert_eq!(env.resend.requests().len(), 3, "sent while it ran");

    // The WAL is emptied into the database file shortly after (secure delete overwrote the
    // old row there): no data file holds the recipient. (Without the writer's checkpoint, a
    // WAL frame can hold it until SQLite happens to write over it.)
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let holding = files_holding(env.dir.path(), canary);
        if holding.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the recipient is still in {holding:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing left to send: the retry is refused and nothing is sent.
    env.resend.set_default(Reply::Normal);
    let (status, body) = env
        .admin("POST", &format!("/v1/jobs/{id}/retry"), Some(ACME_ADMIN))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "inputs_cleared");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.resend.requests().len(), 3);
}

#[tokio::test]
async fn a_refusal_after_the_handoff_fails_the_job_without_a_retry() {
    let env = Env::start().await;
    env.resend.push(Reply::Delay(
        Duration::from_millis(800),
        Box::new(Reply::ResendError {
            status: 422,
            name: "validation_error".into(),
            message: "The `to` address is on the suppression list.".into(),
            retry_after: None,
        }),
    ));
    let mut s = env.session("c-refused-late", order_vars()).await;
    let a = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    assert_eq!(a.status(), "deferred");
    let job = env.job_settled(&job_id(&a), SETTLE).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.resend.requests().len(), 1);
}

#[tokio::test]
async fn wati_jobs_retried_after_an_unknown_outcome_are_marked_at_least_once() {
    let env = Env::start().await;
    env.wati.push(Reply::Raw {
        status: 502,
        headers: vec![],
        body: String::new(),
    });
    let mut s = env.session("c-wati-later", json!({})).await;
    let a = s
        .call(
            "call_01",
            "wati_later",
            json!({"text": "Your order ships Friday."}),
        )
        .await;
    assert_eq!(a.status(), "deferred");
    let job = env.job_settled(&job_id(&a), SETTLE).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["at_least_once"], true,
        "Wati may have acted on the 502 attempt"
    );
    assert_eq!(env.wati.requests().len(), 2);

    // A Resend job retried after a timeout is not: its Idempotency-Key prevents a double.
    env.resend.push(Reply::Hang);
    let mut s = env.session("c-resend-later", order_vars()).await;
    let a = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    let job = env.job_settled(&job_id(&a), SETTLE).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["at_least_once"], false);
}

#[tokio::test]
async fn workflow_functions_are_queued_at_once_and_run_after_the_call_ends() {
    let env = Env::start().await;
    let mut s = env.session("c-workflow", json!({})).await;
    let a = s
        .call(
            "call_01",
            "log_after_call",
            json!({"note": "wants a refund"}),
        )
        .await;
    assert_eq!(a.status(), "deferred");
    assert_eq!(a.result.frame["data"]["reason"], "workflow");
    assert!(a.fillers().is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        env.webhook.requests().is_empty(),
        "nothing runs while the call goes on"
    );
    s.client
        .send(&json!({"type": "session.end", "reason": "hangup"}))
        .await
        .unwrap();
    let ended = s.client.recv(WAIT).await.unwrap();
    assert_eq!(
        ended.frame,
        json!({"type": "session.ended", "call_id": "c-workflow", "invocations": 1, "deferred": 1})
    );
    let reqs = env.webhook.wait_for_requests(1, SETTLE).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].signature_valid, Some(true));
    assert_eq!(reqs[0].json()["data"]["inputs"]["note"], "wants a refund");
    let job = env.job_settled(&job_id(&a), SETTLE).await;
    assert_eq!(job["state"], "succeeded");
}

#[tokio::test]
async fn workflow_jobs_of_a_dropped_call_run_after_the_disconnect_grace() {
    let env =
        Env::start_with(|t| t.replace("disconnect_grace_ms = 2000", "disconnect_grace_ms = 1000"))
            .await;
    let mut s = env.session("c-workflow-drop", json!({})).await;
    let a = s
        .call("call_01", "log_after_call", json!({"note": "n"}))
        .await;
    assert_eq!(a.status(), "deferred");
    s.client.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        env.webhook.requests().is_empty(),
        "the call may still resume: nothing runs during the grace"
    );
    let reqs = env.webhook.wait_for_requests(1, SETTLE).await;
    assert_eq!(reqs.len(), 1);
}

#[tokio::test]
async fn a_cancelled_workflow_call_is_never_sent() {
    let env = Env::start().await;
    let mut s = env.session("c-workflow-cancel", json!({})).await;
    let a = s
        .call("call_01", "log_after_call", json!({"note": "n"}))
        .await;
    let id = job_id(&a);
    s.client
        .send(&json!({"type": "tool.cancel", "id": "call_01", "reason": "barge_in"}))
        .await
        .unwrap();
    s.expect_silence(Duration::from_millis(200)).await;
    s.client
        .send(&json!({"type": "session.end"}))
        .await
        .unwrap();
    let job = env.job_settled(&id, SETTLE).await;
    assert_eq!(job["state"], "failed");
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .contains("cancelled before it was sent (barge_in)")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.webhook.requests().is_empty());
}

#[tokio::test]
async fn an_open_circuit_queues_auto_calls_at_once() {
    let env = Env::start().await;
    env.webhook.set_default(Reply::Raw {
        status: 503,
        headers: vec![],
        body: String::new(),
    });
    let mut s = env.session("c-circuit", json!({})).await;
    // Each live 503 is queued; the worker's retries of those jobs fail too, so the circuit
    // opens after five failures in all, possibly before the fifth live call.
    let mut reasons = Vec::new();
    for i in 0..5 {
        let a = s
            .call(
                &format!("call_{i}"),
                "notify_team",
                json!({"reason": "billing", "priority": i}),
            )
            .await;
        assert_eq!(a.status(), "deferred");
        let reason = a.result.frame["data"]["reason"]
            .as_str()
            .unwrap()
            .to_owned();
        reasons.push(reason.clone());
        if reason == "circuit_open" {
            break;
        }
    }
    assert_eq!(reasons[0], "retryable_failure", "{reasons:?}");
    assert!(
        reasons[..reasons.len() - 1]
            .iter()
            .all(|r| r == "retryable_failure"),
        "{reasons:?}"
    );
    let a = s
        .call(
            "call_9",
            "notify_team",
            json!({"reason": "billing", "priority": 9}),
        )
        .await;
    assert_eq!(a.status(), "deferred");
    assert_eq!(a.result.frame["data"]["reason"], "circuit_open");
    assert!(a.fillers().is_empty(), "queued at once, no waiting");
}

#[tokio::test]
async fn a_slow_connection_queues_auto_calls_at_once() {
    let env = Env::start().await;
    env.resend.set_default(Reply::slow(700));
    let mut s = env.session("c-slow-p90", order_vars()).await;
    for i in 0..10 {
        s.send_call(
            &format!("call_{i}"),
            "email_later",
            json!({"summary": format!("note {i}")}),
        )
        .await;
    }
    let ids: Vec<String> = (0..10).map(|i| format!("call_{i}")).collect();
    for r in s.results_of(&ids).await {
        assert_eq!(r.frame["status"], "deferred");
        assert_eq!(r.frame["data"]["reason"], "budget");
    }
    // Let the live requests finish: their 700 ms latencies are the connection's p90.
    while env.resend.delivered() < 10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = s
        .call("call_x", "email_later", json!({"summary": "one more"}))
        .await;
    assert_eq!(a.status(), "deferred");
    assert_eq!(a.result.frame["data"]["reason"], "predicted_slow");
    assert!(a.fillers().is_empty(), "queued at once, no waiting");
}

#[tokio::test]
async fn the_jobs_api_needs_an_admin_token_and_keeps_orgs_apart() {
    let env = Env::start_with(|t| {
        t.replace(
            "backoff_base_ms = 50",
            "backoff_base_ms = 50\nmax_attempts = 2\nretry_window_ms = 600000",
        )
    })
    .await;
    env.resend.set_default(Reply::Raw {
        status: 503,
        headers: vec![],
        body: String::new(),
    });
    let mut s = env.session("c-api", order_vars()).await;
    let a = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    let id = job_id(&a);
    assert_eq!(env.job_settled(&id, SETTLE).await["state"], "dead");

    let (status, body) = env.admin("GET", "/v1/jobs", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = env.admin("GET", "/v1/jobs", Some(ACME_TOKEN)).await;
    assert_eq!(status, 401, "a session token is not an admin token");

    let (status, body) = env
        .admin("GET", "/v1/jobs?state=dead", Some(ACME_ADMIN))
        .await;
    assert_eq!(status, 200);
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], id.as_str());
    assert_eq!(jobs[0]["function"], "email_later");
    assert_eq!(jobs[0]["call_id"], "c-api");
    let text = body.to_string();
    assert!(!text.contains("ana@example.com"), "inputs are not shown");
    assert!(!text.contains("idempotency"), "{text}");

    let (status, body) = env.admin("GET", "/v1/jobs", Some(BETA_ADMIN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["jobs"], json!([]), "another org's jobs are invisible");
    let (status, _) = env
        .admin("POST", &format!("/v1/jobs/{id}/retry"), Some(BETA_ADMIN))
        .await;
    assert_eq!(status, 404);

    let (status, body) = env
        .admin("GET", "/v1/jobs?state=finished", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = env
        .admin("POST", "/v1/jobs/job_nope/retry", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 404);

    env.resend.set_default(Reply::slow(2000));
    let (status, _) = env
        .admin("POST", &format!("/v1/jobs/{id}/retry"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200);
    // Not failed or dead any more: a second retry conflicts.
    let (status, body) = env
        .admin("POST", &format!("/v1/jobs/{id}/retry"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn metrics_count_deferrals_and_jobs_by_state() {
    let env = Env::start().await;
    // The recorder is global to the process: other tests may count too, so compare deltas.
    let before = scrape(&env).await;
    let budget_before = metric_or_zero(&before, "toolgate_deferrals_total{reason=\"budget\"}");
    env.resend.push(Reply::slow(900));
    let mut s = env.session("c-metrics", order_vars()).await;
    let a = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    env.job_settled(&job_id(&a), SETTLE).await;
    let resp = reqwest::get(format!("http://{}/metrics", env.server.admin_addr))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("# HELP toolgate_deferrals_total"), "{text}");
    let deferrals = metric(&text, "toolgate_deferrals_total{reason=\"budget\"}");
    assert!(deferrals >= budget_before + 1.0, "{text}");
    assert!(metric(&text, "toolgate_jobs{state=\"succeeded\"}") >= 1.0);
    assert!(text.contains("toolgate_jobs{state=\"dead\"}"));
    for secret in SECRETS {
        assert!(!text.contains(secret));
    }
    assert!(!text.contains("c-metrics"), "no call ids in labels");
}

async fn scrape(env: &Env) -> String {
    reqwest::get(format!("http://{}/metrics", env.server.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric_or_zero(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn a_cancel_racing_the_deferral_never_lets_the_action_out() {
    let env = Env::start().await;
    let mut answers = Vec::new();
    for i in 0..20 {
        let mut s = env.session(&format!("c-race-{i}"), json!({})).await;
        s.client
            .send(
                &json!({"type": "tool.call", "id": "call_1", "name": "log_after_call",
                          "arguments": {"note": format!("n{i}")}}),
            )
            .await
            .unwrap();
        s.client
            .send(&json!({"type": "tool.cancel", "id": "call_1", "reason": "barge_in"}))
            .await
            .unwrap();
        let a = s.result_of("call_1").await;
        answers.push(a.status().to_owned());
        if a.status() == "cancelled" {
            assert_eq!(a.result.frame["data"]["provider_outcome"], "not_sent");
        }
        s.client
            .send(&json!({"type": "session.end"}))
            .await
            .unwrap();
        s.client.recv(WAIT).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        env.webhook.requests().is_empty(),
        "a barged-in call was sent after the call ({answers:?})"
    );
    assert!(answers.iter().all(|a| a == "cancelled" || a == "deferred"));
}

#[tokio::test]
async fn a_deferral_landing_after_session_end_still_runs() {
    let env = Env::start().await;
    for i in 0..5 {
        let mut s = env.session(&format!("c-late-{i}"), json!({})).await;
        s.client
            .send(
                &json!({"type": "tool.call", "id": "call_1", "name": "log_after_call",
                          "arguments": {"note": format!("late {i}")}}),
            )
            .await
            .unwrap();
        s.client
            .send(&json!({"type": "session.end"}))
            .await
            .unwrap();
    }
    let reqs = env.webhook.wait_for_requests(5, SETTLE).await;
    assert_eq!(reqs.len(), 5, "every held job ran once its call ended");
}

#[tokio::test]
async fn a_job_out_of_attempts_at_once_is_answered_failed_not_deferred() {
    let env = Env::start_with(|t| {
        t.replace(
            "backoff_base_ms = 50",
            "backoff_base_ms = 50\nmax_attempts = 1",
        )
    })
    .await;
    env.resend.push(Reply::Raw {
        status: 503,
        headers: vec![],
        body: String::new(),
    });
    let mut s = env.session("c-one-attempt", order_vars()).await;
    let a = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    assert_eq!(a.status(), "failed", "no promise the queue cannot keep");
    assert_eq!(a.error().as_deref(), Some("provider_unavailable"));
}

#[tokio::test]
async fn an_action_asked_again_after_its_job_failed_is_queued_afresh() {
    let env = Env::start().await;
    env.resend.push(Reply::Delay(
        Duration::from_millis(800),
        Box::new(Reply::ResendError {
            status: 422,
            name: "validation_error".into(),
            message: "Temporarily suppressed.".into(),
            retry_after: None,
        }),
    ));
    let mut s = env.session("c-again", order_vars()).await;
    let first = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    let first_job = job_id(&first);
    assert_eq!(env.job_settled(&first_job, SETTLE).await["state"], "failed");
    env.resend.push(Reply::slow(800));
    let again = s
        .call("call_02", "email_later", json!({"summary": "x"}))
        .await;
    assert_eq!(again.status(), "deferred");
    let second_job = job_id(&again);
    assert_ne!(first_job, second_job);
    assert_eq!(
        env.job_settled(&second_job, SETTLE).await["state"],
        "succeeded"
    );
    assert_eq!(env.job(&first_job).await["state"], "failed", "history kept");
    assert_eq!(env.resend.delivered(), 1);
}

#[tokio::test]
async fn a_cancelled_deferred_call_can_be_asked_again() {
    let env = Env::start().await;
    let mut s = env.session("c-cancel-again", json!({})).await;
    let a = s
        .call("call_01", "log_after_call", json!({"note": "refund"}))
        .await;
    assert_eq!(a.status(), "deferred");
    s.client
        .send(&json!({"type": "tool.cancel", "id": "call_01"}))
        .await
        .unwrap();
    s.expect_silence(Duration::from_millis(200)).await;
    let b = s
        .call("call_02", "log_after_call", json!({"note": "refund"}))
        .await;
    assert_eq!(b.status(), "deferred", "the cancelled job no longer counts");
    assert_ne!(job_id(&a), job_id(&b));
    s.client
        .send(&json!({"type": "session.end"}))
        .await
        .unwrap();
    let reqs = env.webhook.wait_for_requests(1, SETTLE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(env.webhook.requests().len(), 1, "sent once");
}

#[tokio::test]
async fn a_body_broken_after_a_200_is_retried_with_the_same_idempotency_key() {
    let env = Env::start().await;
    env.resend.push(Reply::BreakBody);
    let mut s = env.session("c-break-body", order_vars()).await;
    let a = s
        .call("call_01", "email_later", json!({"summary": "x"}))
        .await;
    // Unknown but safe to send again with the same key: deferred, not failed.
    assert_eq!(a.status(), "deferred", "{:?}", a.result.frame);
    assert_eq!(a.result.frame["data"]["reason"], "retryable_failure");
    let job = env.job_settled(&job_id(&a), SETTLE).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let reqs = env.resend.requests();
    assert_eq!(reqs.len(), 2, "the retry");
    let key = reqs[0].header("idempotency-key").unwrap();
    assert_eq!(reqs[1].header("idempotency-key"), Some(key));
    assert_eq!(
        env.resend.deliveries_by_key().get(key),
        Some(&1),
        "one email: the provider answered the retry from its idempotency record"
    );
}

/// A media server that stops reading holds the session's writes (up to `write_timeout_ms`),
/// not its tool calls: a call slower than its budget is still handed off on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_server_that_stops_reading_does_not_hold_up_a_handoff() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    // A budget long enough for the socket to fill first.
    let env = Env::start_with(|t| {
        t.replace("[server]\n", "[server]\nwrite_timeout_ms = 60000\n")
            .replace(
                "timing = { filler_after_ms = 200, defer_after_ms = 400, hard_timeout_ms = 1500 }",
                "timing = { filler_after_ms = 200, defer_after_ms = 2000, hard_timeout_ms = 8000 }",
            )
    })
    .await;
    env.resend.push(Reply::slow(6000));
    // A socket whose receive buffer is as small as the kernel allows: the session's writes
    // block once it stops reading.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(1024).unwrap();
    sock.connect(&env.server.ws_addr.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let stream = tokio::net::TcpStream::from_std(sock.into()).unwrap();
    let mut request = env.url().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {ACME_TOKEN}").parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    let frame = |v: serde_json::Value| Message::text(v.to_string());
    tx.send(frame(
        json!({"type": "session.start", "call_id": "c-stuck", "agent": "support-bot",
                          "caller": {"number": CALLER}, "variables": order_vars()}),
    ))
    .await
    .unwrap();
    let ready = rx.next().await.unwrap().unwrap();
    assert!(
        ready.to_text().unwrap().contains("session.ready"),
        "{ready:?}"
    );
    tx.send(frame(
        json!({"type": "tool.call", "id": "call_01", "name": "email_later",
                          "arguments": json!({"summary": "Ships Friday."}).to_string()}),
    ))
    .await
    .unwrap();
    // Each of these is answered with an error frame the client never reads, until the
    // session's write waits on the full socket.
    let flood = tokio::spawn(async move {
        let again =
            frame(json!({"type": "session.start", "call_id": "c-stuck", "agent": "support-bot"}));
        for _ in 0..100_000 {
            if tx.send(again.clone()).await.is_err() {
                break;
            }
        }
        tx
    });
    let job = wait_until(
        "the call handed off while its socket is full",
        Duration::from_secs(10),
        || async {
            let (_, body) = env
                .admin("GET", "/v1/jobs?limit=10", Some(ADMIN_TOKEN))
                .await;
            body["jobs"].as_array()?.first().cloned()
        },
    )
    .await;
    assert_eq!(job["reason"], "budget", "{job}");
    assert!(
        !flood.is_finished(),
        "the session kept reading: its writes never waited, so this proves nothing"
    );
    flood.abort();
    drop(rx);
}
