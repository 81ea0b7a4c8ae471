//! Config reload without dropping calls: a session started before a reload keeps its agent,
//! new sessions see the new one, changed credentials are re-read and validated again, and a
//! broken config is refused while the old one keeps serving.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use toolgate::config::Config;
use toolgate::server::Server;
use toolgate::tooling::client::CallClient;
use toolgate::tooling::mock::MockProvider;

const SECRET_FILES: [(&str, &str); 9] = [
    ("ACME_SESSION_TOKEN", ACME_TOKEN),
    ("BETA_SESSION_TOKEN", BETA_TOKEN),
    ("ACME_RESEND_KEY", RESEND_KEY),
    ("ACME_WATI_TOKEN", WATI_TOKEN),
    ("BETA_WATI_TOKEN", BETA_WATI_TOKEN),
    ("ACME_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ("ADMIN_TOKEN", ADMIN_TOKEN),
    ("ACME_ADMIN_TOKEN", ACME_ADMIN),
    ("BETA_ADMIN_TOKEN", BETA_ADMIN),
];

struct Setup {
    dir: tempfile::TempDir,
    path: PathBuf,
    base: String,
    server: Server,
    wati: MockProvider,
    _others: Vec<MockProvider>,
}

/// The test config on disk, its secrets in files beside it (`{ file = ... }`).
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in SECRET_FILES {
        std::fs::write(dir.path().join(name), value).unwrap();
    }
    let resend = MockProvider::resend(RESEND_KEY).await.unwrap();
    let wati = MockProvider::wati(WATI_TOKEN).await.unwrap();
    let webhook = MockProvider::webhook(WEBHOOK_SECRET).await.unwrap();
    let beta_wati = MockProvider::wati(BETA_WATI_TOKEN).await.unwrap();
    let base = include_str!("common/test.toml")
        .replace("{ env = \"", "{ file = \"")
        .replace(
            "{db}",
            &dir.path().join("toolgate.db").display().to_string(),
        )
        .replace("{resend}", &resend.url())
        .replace("{wati}", &wati.url())
        .replace("{webhook_health}", &webhook.health_url())
        .replace("{webhook}", &webhook.url())
        .replace("{beta_wati}", &beta_wati.url());
    let path = dir.path().join("toolgate.toml");
    std::fs::write(&path, &base).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start_from(config, Some(path.clone()))
        .await
        .unwrap();
    Setup {
        dir,
        path,
        base,
        server,
        wati,
        _others: vec![resend, webhook, beta_wati],
    }
}

impl Setup {
    async fn admin(&self, method: &str, path: &str, token: &str) -> (u16, Value) {
        let client = reqwest::Client::new();
        let url = format!("http://{}{path}", self.server.admin_addr);
        let req = match method {
            "POST" => client.post(url),
            _ => client.get(url),
        };
        let resp = req.bearer_auth(token).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn reload(&self) -> (u16, Value) {
        self.admin("POST", "/v1/reload", ADMIN_TOKEN).await
    }

    async fn session(&self, call_id: &str) -> (CallClient, Value) {
        let mut c = CallClient::connect(&self.server.session_url(), Some(ACME_TOKEN))
            .await
            .unwrap();
        let ready = start(&mut c, call_id, "support-bot", json!({})).await;
        assert_eq!(ready.ty(), "session.ready", "{:?}", ready.frame);
        (c, ready.frame)
    }

    async fn connection(&self, id: &str) -> Value {
        let (_, body) = self.admin("GET", "/v1/connections", ADMIN_TOKEN).await;
        body["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap()
    }

    /// Wait until a connection was validated after `after` (ms since the epoch).
    async fn validated_after(&self, id: &str, after: i64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.connection(id).await;
            if c["validated_at"].as_i64().is_some_and(|t| t >= after)
                || tokio::time::Instant::now() > deadline
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn with_new_function(base: &str) -> String {
    base.replacen(
        "[[agents]]\nid = \"beta-bot\"",
        "[[agents.functions]]\nname = \"log_complaint\"\naction = \"webhook.post\"\nconnection = \"acme-hooks\"\ndescription = \"Record a complaint.\"\n\n[agents.functions.inputs]\ntext = { arg = \"text\", required = true }\n\n[[agents]]\nid = \"beta-bot\"",
        1,
    )
}

fn tool_names(ready: &Value) -> Vec<String> {
    ready["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn call(c: &mut CallClient, id: &str, name: &str, args: Value) -> Value {
    c.send(&json!({"type": "tool.call", "id": id, "name": name, "arguments": args}))
        .await
        .unwrap();
    c.until_result(id, WAIT).await.unwrap().pop().unwrap().frame
}

fn error_of(result: &Value) -> Option<String> {
    serde_json::from_str::<Value>(result["output"].as_str().unwrap())
        .unwrap()
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[tokio::test]
async fn a_live_session_keeps_its_agent_and_new_sessions_get_the_new_one() {
    let s = setup().await;
    let (mut before, ready) = s.session("c-before").await;
    assert!(!tool_names(&ready).contains(&"log_complaint".to_owned()));

    std::fs::write(&s.path, with_new_function(&s.base)).unwrap();
    let (status, body) = s.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"], true);

    let (mut after, ready) = s.session("c-after").await;
    assert!(tool_names(&ready).contains(&"log_complaint".to_owned()));
    let r = call(
        &mut after,
        "1",
        "log_complaint",
        json!({"text": "late delivery"}),
    )
    .await;
    assert_eq!(r["status"], "succeeded", "{r}");

    // The session from before keeps working with the agent it started with.
    let r = call(&mut before, "1", "log_complaint", json!({"text": "x"})).await;
    assert_eq!(error_of(&r).as_deref(), Some("unknown_function"));
    let r = call(
        &mut before,
        "2",
        "notify_team",
        json!({"reason": "billing"}),
    )
    .await;
    assert_eq!(r["status"], "succeeded", "{r}");
}

#[tokio::test]
async fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    let s = setup().await;
    let (mut live, _) = s.session("c-live").await;
    std::fs::write(
        &s.path,
        s.base
            .replace("connection = \"acme-hooks\"", "connection = \"acme-hook\""),
    )
    .unwrap();
    let (status, body) = s.reload().await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "bad_config");
    let problems = body["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p
            .as_str()
            .unwrap()
            .ends_with("no connection \"acme-hook\" (did you mean \"acme-hooks\"?)")),
        "{body}"
    );
    let r = call(&mut live, "1", "notify_team", json!({"reason": "billing"})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let (_, ready) = s.session("c-new").await;
    assert!(tool_names(&ready).contains(&"notify_team".to_owned()));

    // What needs a restart is refused too, and only an all-orgs admin may reload.
    std::fs::write(
        &s.path,
        s.base.replace(
            "admin_listen = \"127.0.0.1:0\"",
            "admin_listen = \"127.0.0.1:1\"",
        ),
    )
    .unwrap();
    let (status, body) = s.reload().await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "needs_restart");
    let (status, _) = s.admin("POST", "/v1/reload", ACME_ADMIN).await;
    assert_eq!(status, 403);

    // A setting read once at start may change, and the answer says when it applies.
    std::fs::write(
        &s.path,
        s.base
            .replace("disconnect_grace_ms = 2000", "disconnect_grace_ms = 3000")
            .replace(
                "backoff_base_ms = 50",
                "backoff_base_ms = 50\nconcurrency = 2",
            ),
    )
    .unwrap();
    let (status, body) = s.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["at_restart"],
        json!([
            "[server] settings (other than the listeners)",
            "workflow.concurrency and workflow.worker"
        ])
    );
}

#[tokio::test]
async fn secrets_are_read_again_on_reload_and_changed_connections_revalidated() {
    let s = setup().await;
    let first = s.validated_after("acme-wati", 0).await;
    assert_eq!(first["status"], "connected");

    // Someone rotates the token file to a wrong value and reloads.
    std::fs::write(s.dir.path().join("ACME_WATI_TOKEN"), "not-the-token").unwrap();
    let t0 = toolgate::clock::now_ms();
    let (status, body) = s.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed_connections"], json!(["acme-wati"]));
    let c = s.validated_after("acme-wati", t0).await;
    assert_eq!(c["status"], "error", "{c}");
    let last = s.wati.all_requests().pop().unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer not-the-token"));

    // The right token is back: validated again, connected.
    std::fs::write(s.dir.path().join("ACME_WATI_TOKEN"), WATI_TOKEN).unwrap();
    let t1 = toolgate::clock::now_ms();
    let (status, _) = s.reload().await;
    assert_eq!(status, 200);
    let c = s.validated_after("acme-wati", t1).await;
    assert_eq!(c["status"], "connected", "{c}");
    // Unchanged connections kept their state: not validated again.
    let resend = s.connection("acme-resend").await;
    assert!(resend["validated_at"].as_i64().unwrap() < t0, "{resend}");
}

#[tokio::test]
async fn a_call_in_flight_across_a_reload_finishes_and_rotated_credentials_are_scrubbed() {
    let s = setup().await;
    let (mut live, _) = s.session("c-inflight").await;
    // A call still waiting on the provider while the config is reloaded (Wati takes it at
    // once and answers after 600 ms).
    s.wati.push(toolgate::tooling::mock::Reply::AnswerLate(
        Duration::from_millis(600),
    ));
    let before = s.wati.requests().len();
    live.send(
        &json!({"type": "tool.call", "id": "slow", "name": "whatsapp_note",
                      "arguments": {"text": "on its way"}}),
    )
    .await
    .unwrap();
    requests_reach(&s.wati, before + 1, "the call to be in flight at Wati").await;
    std::fs::write(&s.path, with_new_function(&s.base)).unwrap();
    let (status, body) = s.reload().await;
    assert_eq!(status, 200, "{body}");
    let r = live
        .until_result("slow", WAIT)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(r.frame["status"], "succeeded", "{:?}", r.frame);

    // The token is rotated at Wati and in the file; the live session's next call goes out with
    // the new one, and a provider that echoes it back has it scrubbed from what the model,
    // the logs and the evidence see, though the session's agent predates the rotation.
    let rotated = "wati-rotated-secret-5150";
    s.wati.set_credential(rotated);
    std::fs::write(s.dir.path().join("ACME_WATI_TOKEN"), rotated).unwrap();
    let (status, body) = s.reload().await;
    assert_eq!(status, 200, "{body}");
    s.wati
        .push(toolgate::tooling::mock::Reply::WatiResultFalse {
            info: format!("token {rotated} may not send to this number"),
        });
    let r = call(&mut live, "echo", "whatsapp_note", json!({"text": "hi"})).await;
    assert_eq!(r["status"], "failed", "{r}");
    let sent = s.wati.requests().pop().unwrap();
    assert_eq!(
        sent.header("authorization").map(str::to_owned),
        Some(format!("Bearer {rotated}"))
    );
    assert!(!r.to_string().contains(rotated), "{r}");
    assert!(r["output"].as_str().unwrap().contains("[redacted]"), "{r}");
    let id = r["invocation_id"].as_str().unwrap();
    s.server.runtime().evidence.flush().await;
    let (_, record) = s
        .admin("GET", &format!("/v1/invocations/{id}"), ADMIN_TOKEN)
        .await;
    assert_eq!(record["invocation"]["status"], "failed", "{record}");
    assert!(!record.to_string().contains(rotated), "{record}");
}

#[tokio::test]
async fn a_reload_lifts_a_providers_pause() {
    let s = setup().await;
    s.validated_after("acme-wati", 0).await;
    s.wati.push(toolgate::tooling::mock::Reply::Raw {
        status: 429,
        headers: vec![("retry-after".into(), "Fri, 31 Dec 9999 23:59:59 GMT".into())],
        body: "Too many requests".into(),
    });
    let (mut c, _) = s.session("c-paused").await;
    let r = call(&mut c, "1", "whatsapp_note", json!({"text": "hi"})).await;
    assert_eq!(error_of(&r).as_deref(), Some("provider_unavailable"), "{r}");
    let paused = s.connection("acme-wati").await["paused_ms"].as_u64();
    assert!(
        paused.is_some_and(|p| p <= 300_000),
        "bounded by the default of 5 minutes: {paused:?}"
    );
    let r = call(&mut c, "2", "whatsapp_note", json!({"text": "hi"})).await;
    assert_eq!(error_of(&r).as_deref(), Some("rate_limited"), "{r}");
    let (status, body) = s.reload().await;
    assert_eq!(status, 200, "{body}");
    assert!(s.connection("acme-wati").await["paused_ms"].is_null());
    let r = call(&mut c, "3", "whatsapp_note", json!({"text": "hi"})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
}
