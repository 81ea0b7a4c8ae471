//! Diagnostics from evidence made by real calls: each finding is reported with the right count
//! and the fix the product docs recommend, and stays silent below the minimum sample; the same
//! report from `GET /v1/diagnostics` and `toolgate doctor`.

mod common;

use common::*;
use serde_json::{Value, json};
use toolgate::tooling::mock::Reply;

async fn diagnostics(env: &Env, query: &str, token: &str) -> (u16, Value) {
    env.admin("GET", &format!("/v1/diagnostics?{query}"), Some(token))
        .await
}

fn findings<'a>(report: &'a Value, function: &str) -> &'a Vec<Value> {
    report["agents"][0]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == function)
        .unwrap_or_else(|| panic!("no {function} in {report}"))["findings"]
        .as_array()
        .unwrap()
}

fn finding<'a>(report: &'a Value, function: &str, kind: &str) -> Option<&'a Value> {
    findings(report, function)
        .iter()
        .find(|f| f["kind"] == kind)
}

async fn end(s: &mut Session) {
    s.client
        .send(&json!({"type": "session.end"}))
        .await
        .unwrap();
    s.client.recv(WAIT).await.unwrap();
}

/// Evidence for every finding, through real calls.
async fn seed(env: &Env) {
    // 5 missing-field rejections of send_email_summary (no summary), 4 of email_someone.
    let mut s = env.session("c-dx-missing", order_vars()).await;
    s.say("Yes, email me the summary.").await;
    s.consent("email", true).await;
    for i in 0..5 {
        let a = s
            .call(&format!("m{i}"), "send_email_summary", json!({}))
            .await;
        assert_eq!(a.error().as_deref(), Some("missing_fields"));
    }
    for i in 0..4 {
        let a = s
            .call(&format!("e{i}"), "email_someone", json!({"note": "hi"}))
            .await;
        assert_eq!(a.error().as_deref(), Some("missing_fields"));
    }
    // 6 consent rejections of send_whatsapp_confirmation.
    for i in 0..6 {
        let a = s
            .call(
                &format!("w{i}"),
                "send_whatsapp_confirmation",
                json!({"order_id": format!("A-{i}")}),
            )
            .await;
        assert_eq!(a.error().as_deref(), Some("consent_required"));
    }
    end(&mut s).await;
    // 5 calls where the caller asks for a callback that the model never requests.
    for i in 0..5 {
        let mut s = env.session(&format!("c-dx-quiet-{i}"), json!({})).await;
        s.say("Could someone escalate this to a supervisor please?")
            .await;
        end(&mut s).await;
    }
    // Wati refuses the token: one refusal, then calls fail fast: 5 in all.
    env.wati.set_revoked(true);
    let mut s = env.session("c-dx-auth", json!({})).await;
    for i in 0..5 {
        let a = s
            .call(
                &format!("a{i}"),
                "whatsapp_note",
                json!({"text": format!("n{i}")}),
            )
            .await;
        assert!(
            matches!(
                a.error().as_deref(),
                Some("provider_auth_failed" | "connection_unavailable")
            ),
            "{:?}",
            a.output()
        );
    }
    end(&mut s).await;
    // 5 slow emails: each over email_later's 400 ms budget, deferred.
    let mut s = env.session("c-dx-slow", order_vars()).await;
    for i in 0..5 {
        env.resend.push(Reply::slow(600));
        let a = s
            .call(
                &format!("s{i}"),
                "email_later",
                json!({"summary": format!("s{i}")}),
            )
            .await;
        assert_eq!(a.status(), "deferred");
    }
    end(&mut s).await;
    // The evidence is complete once the live requests behind the deferrals have ended.
    env.invocations_when(
        "c-dx-slow",
        "the five deferred calls' records to be final",
        |list| {
            let calls: Vec<&Value> = list
                .iter()
                .filter(|i| i["source_type"] == "agent")
                .collect();
            calls.len() == 5 && calls.iter().all(|i| i["final"] == true)
        },
    )
    .await;
    env.server.runtime().evidence.flush().await;
}

#[tokio::test]
async fn each_finding_is_reported_with_its_count_and_fix_and_silent_below_the_minimum() {
    let env = Env::start().await;
    seed(&env).await;
    let (code, r) = diagnostics(&env, "agent=support-bot", ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["agents"].as_array().unwrap().len(), 1);
    assert_eq!(r["agents"][0]["min_sample"], 5);

    let m = finding(&r, "send_email_summary", "missing_fields").expect("missing fields");
    assert_eq!((m["count"].as_u64(), m["of"].as_u64()), (Some(5), Some(5)));
    assert!(
        m["message"].as_str().unwrap().contains("summary (5)"),
        "{m}"
    );
    assert!(
        m["fix"].as_str().unwrap().contains("dynamic variable"),
        "{m}"
    );
    assert_eq!(m["evidence"].as_array().unwrap().len(), 5);
    // Four are below the minimum sample: nothing said.
    assert!(
        finding(&r, "email_someone", "missing_fields").is_none(),
        "{r}"
    );

    let c = finding(&r, "send_whatsapp_confirmation", "consent").expect("consent");
    assert_eq!((c["count"].as_u64(), c["of"].as_u64()), (Some(6), Some(6)));
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("Tighten the description")
    );

    let q = finding(&r, "escalate_now", "not_called").expect("not called");
    assert_eq!((q["count"].as_u64(), q["of"].as_u64()), (Some(5), Some(5)));
    assert!(q["fix"].as_str().unwrap().contains("trigger clearer"));
    assert!(
        q["evidence"][0]
            .as_str()
            .unwrap()
            .starts_with("c-dx-quiet-")
    );

    let a = finding(&r, "whatsapp_note", "auth_failed").expect("auth");
    assert_eq!(a["count"].as_u64(), Some(5));
    assert!(
        a["fix"]
            .as_str()
            .unwrap()
            .contains("toolgate validate --connection acme-wati")
    );

    let s = finding(&r, "email_later", "slow").expect("slow");
    assert_eq!((s["count"].as_u64(), s["of"].as_u64()), (Some(5), Some(5)));
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("above defer_after_ms (400 ms)"),
        "{s}"
    );
    assert!(s["fix"].as_str().unwrap().contains("mode = \"workflow\""));

    // Nothing is invented for functions that behaved.
    assert!(findings(&r, "notify_team").is_empty(), "{r}");

    // A higher minimum silences findings with fewer calls behind them.
    let (_, r6) = diagnostics(&env, "agent=support-bot&min_sample=6", ADMIN_TOKEN).await;
    assert!(finding(&r6, "send_email_summary", "missing_fields").is_none());
    assert!(finding(&r6, "send_whatsapp_confirmation", "consent").is_some());
    // A window after the calls sees nothing.
    let (_, later) = diagnostics(
        &env,
        "agent=support-bot&since=2999-01-01T00:00:00Z",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(later["agents"][0]["calls"], 0);
    assert!(finding(&later, "send_whatsapp_confirmation", "consent").is_none());

    // Org scoping, and clear errors.
    let (code, beta) = diagnostics(&env, "", BETA_ADMIN).await;
    assert_eq!(code, 200);
    let agents: Vec<&str> = beta["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents, ["beta-bot"]);
    let (code, _) = diagnostics(&env, "agent=support-bot", BETA_ADMIN).await;
    assert_eq!(code, 404);
    let (code, body) = diagnostics(&env, "since=whenever", ADMIN_TOKEN).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("bad_request")));
    let (code, _) = env.admin("GET", "/v1/diagnostics", None).await;
    assert_eq!(code, 401);
}

#[tokio::test]
async fn toolgate_doctor_reads_the_evidence_file() {
    let mut text = String::new();
    let env = Env::start_with(|t| {
        text = t.clone();
        t
    })
    .await;
    let mut s = env.session("c-doctor", order_vars()).await;
    for i in 0..5 {
        s.call(&format!("m{i}"), "send_email_summary", json!({}))
            .await;
    }
    end(&mut s).await;
    env.server.runtime().evidence.flush().await;
    let config = env.dir.path().join("toolgate.toml");
    std::fs::write(&config, &text).unwrap();
    let run = move |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .arg("doctor")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let a = run(&["--agent", "support-bot"]);
        let b = run(&["--agent", "suport-bot"]);
        let c = run(&["--agent", "support-bot", "--json"]);
        (a, b, c)
    })
    .await
    .map(|(a, b, c)| {
        assert_eq!(b.0, Some(1));
        assert!(b.2.contains("did you mean \"support-bot\""), "{}", b.2);
        let json: Value = serde_json::from_str(&c.1).unwrap();
        assert_eq!(
            json["agents"][0]["functions"][1]["findings"][0]["kind"],
            "missing_fields"
        );
        a
    })
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("agent support-bot: 1 call(s) since"),
        "{out}"
    );
    assert!(
        out.contains("send_email_summary (5 tool call(s))\n  ! 5 of 5 calls were rejected for missing values: summary (5) [missing_fields]\n    fix: "),
        "{out}"
    );
    assert!(
        out.contains("send_whatsapp_confirmation (0 tool call(s))\n  no findings"),
        "{out}"
    );
}
