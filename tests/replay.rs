//! `toolgate replay`: a recorded tool call run again against a fixed config shows which guards
//! pass now, with a simulated provider; the real provider is never called.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

fn replay(config: &Path, id: &str) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .arg("replay")
        .arg(id)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_field_fixed_by_binding_a_variable_passes_on_replay() {
    let mut text = String::new();
    let env = Env::start_with(|t| {
        text = t.clone();
        t
    })
    .await;
    // The media server sends the address as `customer_email`; the config reads `var.email`.
    let mut s = env
        .session(
            "c-replay",
            json!({"customer_email": "ana@example.com", "order_id": "A-1042"}),
        )
        .await;
    s.say("Yes, email me the summary please.").await;
    s.consent("email", true).await;
    let a = s
        .call(
            "call_1",
            "send_email_summary",
            json!({"summary": "Ships Friday"}),
        )
        .await;
    assert_eq!(a.error().as_deref(), Some("missing_fields"));
    let id = a.result.frame["invocation_id"].as_str().unwrap().to_owned();
    env.server.runtime().evidence.flush().await;

    let config = env.dir.path().join("toolgate.toml");
    std::fs::write(&config, &text).unwrap();
    let (code, out, err) = tokio::task::block_in_place(|| replay(&config, &id));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("then: rejected (missing_fields)"), "{out}");
    assert!(
        out.contains("now:  rejected (missing_fields)"),
        "not fixed yet: {out}"
    );

    // The fix: bind `to` to the variable the media server really sends.
    let fixed = text.replacen(
        "to = { arg = \"email\", from = \"var.email\"",
        "to = { arg = \"email\", from = \"var.customer_email\"",
        1,
    );
    assert_ne!(fixed, text);
    std::fs::write(&config, &fixed).unwrap();
    let (code, out, err) = tokio::task::block_in_place(|| replay(&config, &id));
    assert_eq!(code, Some(0), "{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in {out}"))
            .to_owned()
    };
    let required = line("required_values");
    assert!(
        required.contains("✗") && required.trim_end().ends_with("✓"),
        "{required}"
    );
    assert!(line("consent").trim_end().ends_with("✓"), "{out}");
    assert!(out.contains("now:  passes every guard"), "{out}");
    assert!(
        out.contains("a simulated provider accepted it (HTTP 200)"),
        "{out}"
    );
    assert!(
        out.contains("\"to\":\"a***@example.com\""),
        "the request is shown redacted: {out}"
    );
    assert!(!out.contains("ana@example.com"), "{out}");
    assert!(
        env.resend.requests().is_empty(),
        "the real provider was never called"
    );
    end(&mut s).await;
}

async fn end(s: &mut Session) {
    s.client
        .send(&json!({"type": "session.end"}))
        .await
        .unwrap();
    s.client.recv(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_explains_what_it_cannot_replay() {
    let mut text = String::new();
    let env = Env::start_with(|t| {
        text = t.clone();
        t
    })
    .await;
    let mut s = env.session("c-replay-2", json!({})).await;
    // A live failure handed to the worker: its attempt is a workflow record.
    env.webhook.push(toolgate::tooling::mock::Reply::Raw {
        status: 503,
        headers: vec![],
        body: String::new(),
    });
    let a = s
        .call("call_1", "notify_team", json!({"reason": "billing"}))
        .await;
    assert_eq!(a.status(), "deferred");
    let job = a.result.frame["data"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.job_settled(&job, std::time::Duration::from_secs(10))
        .await;
    end(&mut s).await;
    env.server.runtime().evidence.flush().await;
    let (_, list) = env
        .admin(
            "GET",
            "/v1/invocations?call_id=c-replay-2",
            Some(ADMIN_TOKEN),
        )
        .await;
    let attempt = list["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["source_type"] == "workflow")
        .unwrap()["invocation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = env.dir.path().join("toolgate.toml");
    std::fs::write(&config, &text).unwrap();
    let (code, _, err) = tokio::task::block_in_place(|| replay(&config, &attempt));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("is a workflow attempt; replay the tool call it ran for: inv_"),
        "{err}"
    );
    let (code, _, err) = tokio::task::block_in_place(|| replay(&config, "inv_nope"));
    assert_eq!(code, Some(1));
    assert!(err.contains("no invocation \"inv_nope\""), "{err}");
    // The replayed webhook call goes to a simulated receiver, not the real one.
    let live = a.result.frame["invocation_id"].as_str().unwrap().to_owned();
    let before = env.webhook.requests().len();
    let (code, out, err) = tokio::task::block_in_place(|| replay(&config, &live));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("a simulated provider accepted it"), "{out}");
    assert_eq!(env.webhook.requests().len(), before);
}
