//! Test harness: a real toolgate on ephemeral ports, real loopback mock providers, and a real
//! WebSocket client. Nothing of toolgate's own internals is mocked.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};
use toolgate::config::{Config, LoadOptions};
use toolgate::server::Server;
use toolgate::tooling::client::{CallClient, Received};
use toolgate::tooling::mock::MockProvider;

pub const ACME_TOKEN: &str = "acme-session-token-7f3a";
pub const BETA_TOKEN: &str = "beta-session-token-91c2";
pub const RESEND_KEY: &str = "re_test_secret_4b1d9e";
pub const WATI_TOKEN: &str = "wati-test-secret-88e1";
pub const BETA_WATI_TOKEN: &str = "wati-beta-secret-0a7c";
pub const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
pub const ADMIN_TOKEN: &str = "admin-token-5e1f";
pub const ACME_ADMIN: &str = "acme-admin-token-77a0";
pub const BETA_ADMIN: &str = "beta-admin-token-c3d9";

/// Every secret of the test config, for leak checks.
pub const SECRETS: [&str; 9] = [
    ACME_TOKEN,
    BETA_TOKEN,
    RESEND_KEY,
    WATI_TOKEN,
    BETA_WATI_TOKEN,
    "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ADMIN_TOKEN,
    ACME_ADMIN,
    BETA_ADMIN,
];

/// The secrets `test.toml` reads, as the environment of a `toolgate` process.
pub const SECRETS_ENV: [(&str, &str); 9] = [
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

/// `test.toml` with these mock providers' addresses (its `{db}` left to fill).
pub fn config_text(
    resend: &MockProvider,
    wati: &MockProvider,
    webhook: &MockProvider,
    beta_wati: &MockProvider,
) -> String {
    include_str!("test.toml")
        .replace("{resend}", &resend.url())
        .replace("{wati}", &wati.url())
        .replace("{webhook_health}", &webhook.health_url())
        .replace("{webhook}", &webhook.url())
        .replace("{beta_wati}", &beta_wati.url())
}

/// A config `text` moved onto NATS (`url`, streams under `prefix`) with its local files in
/// `dir`, and, when given, `workflow.worker` set.
pub fn on_nats(
    text: &str,
    url: &str,
    prefix: &str,
    dir: &std::path::Path,
    worker: Option<bool>,
) -> String {
    let db = dir.join("toolgate.db").display().to_string();
    let mut text = text.replacen(
        "[storage]\n",
        &format!(
            "[storage]\nbackend = \"nats\"\nnats_url = \"{url}\"\nstream_prefix = \"{prefix}\"\n"
        ),
        1,
    );
    if let Some(worker) = worker {
        text = text.replacen(
            "[workflow]\n",
            &format!("[workflow]\nworker = {worker}\n"),
            1,
        );
    }
    text.lines()
        .map(|l| {
            if l.starts_with("path = ") {
                format!("path = \"{db}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `toolgate <verb> --config FILE` with the test secrets in its environment.
pub fn toolgate_cmd(verb: &str, config: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"));
    cmd.args([verb, "--config"]).arg(config).envs(SECRETS_ENV);
    cmd
}

impl Env {
    /// `test.toml` with this environment's mock providers (its `{db}` left to fill).
    pub fn config_text(&self) -> String {
        config_text(&self.resend, &self.wati, &self.webhook, &self.beta_wati)
    }
}

pub const CALLER: &str = "+14155550100";
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to wait for something that will happen: generous, since waiting returns as soon
/// as it does (the tests share a slow machine).
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Poll `check` every 20 ms until it gives `Some`, and return that; fail naming `what` if it
/// has not after `within`.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {within:?} for {what}; it never happened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Let `d` pass while nothing is expected, to show that something does NOT happen when no
/// event marks that it never will (a frame a timer would send, a request a background task
/// would make). A longer `d` proves more; it can only slow a test down, never make it flaky.
/// Where a later event would show it (a pong after the frames before it), wait for that.
pub async fn quiet_for(d: Duration) {
    tokio::time::sleep(d).await;
}

fn env(name: &str) -> Option<String> {
    Some(
        match name {
            "ACME_SESSION_TOKEN" => ACME_TOKEN,
            "BETA_SESSION_TOKEN" => BETA_TOKEN,
            "ACME_RESEND_KEY" => RESEND_KEY,
            "ACME_WATI_TOKEN" => WATI_TOKEN,
            "BETA_WATI_TOKEN" => BETA_WATI_TOKEN,
            "ACME_WEBHOOK_SECRET" => WEBHOOK_SECRET,
            "ADMIN_TOKEN" => ADMIN_TOKEN,
            "ACME_ADMIN_TOKEN" => ACME_ADMIN,
            "BETA_ADMIN_TOKEN" => BETA_ADMIN,
            _ => return None,
        }
        .to_owned(),
    )
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub resend: MockProvider,
    pub wati: MockProvider,
    pub webhook: MockProvider,
    pub beta_wati: MockProvider,
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(|t| t).await
    }

    /// Start with an edited config text.
    pub async fn start_with(edit: impl FnOnce(String) -> String) -> Env {
        let resend = MockProvider::resend(RESEND_KEY).await.unwrap();
        let wati = MockProvider::wati(WATI_TOKEN).await.unwrap();
        let webhook = MockProvider::webhook(WEBHOOK_SECRET).await.unwrap();
        let beta_wati = MockProvider::wati(BETA_WATI_TOKEN).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(&resend, &wati, &webhook, &beta_wati).replace(
            "{db}",
            &dir.path().join("toolgate.db").display().to_string(),
        );
        let config = Config::from_toml(&edit(text), &LoadOptions::new(".").with_env(env))
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let server = Server::start(config).await.unwrap();
        Env {
            dir,
            server,
            resend,
            wati,
            webhook,
            beta_wati,
        }
    }

    pub fn url(&self) -> String {
        self.server.session_url()
    }

    /// An admin API request with an optional bearer token: (status, JSON body).
    pub async fn admin(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let client = reqwest::Client::new();
        let url = format!("http://{}{path}", self.server.admin_addr);
        let mut req = match method {
            "POST" => client.post(url),
            _ => client.get(url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// A connection as the admin API shows it.
    pub async fn connection(&self, id: &str) -> Value {
        let (status, body) = self
            .admin("GET", "/v1/connections", Some(ADMIN_TOKEN))
            .await;
        assert_eq!(status, 200, "{body}");
        body["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no connection {id} in {body}"))
    }

    /// Wait until a connection has been validated at least once.
    pub async fn validated(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.connection(id).await;
            if !c["validated_at"].is_null() || tokio::time::Instant::now() >= deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A job as the admin API shows it.
    pub async fn job(&self, id: &str) -> Value {
        let (status, body) = self
            .admin("GET", "/v1/jobs?limit=1000", Some(ADMIN_TOKEN))
            .await;
        assert_eq!(status, 200, "{body}");
        body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no job {id} in {body}"))
    }

    /// Wait until a job reaches a final state.
    pub async fn job_settled(&self, id: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let job = self.job(id).await;
            let state = job["state"].as_str().unwrap_or("").to_owned();
            if matches!(state.as_str(), "succeeded" | "failed" | "dead")
                || tokio::time::Instant::now() >= deadline
            {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until no session is active any more (each has ended and let go of its call id).
    pub async fn no_active_sessions(&self) {
        let rt = self.server.runtime();
        wait_until("every session to end", EVENT_WAIT, || async {
            (rt.active_sessions
                .load(std::sync::atomic::Ordering::Acquire)
                == 0)
                .then_some(())
        })
        .await
    }

    /// A call's invocation records once `ready` holds for the list (the writer is
    /// asynchronous).
    pub async fn invocations_when(
        &self,
        call_id: &str,
        what: &str,
        ready: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let path = format!("/v1/invocations?call_id={call_id}");
        let path = &path;
        let ready = &ready;
        wait_until(what, EVENT_WAIT, || async move {
            let (status, body) = self.admin("GET", path, Some(ADMIN_TOKEN)).await;
            let list = body["invocations"].as_array()?;
            (status == 200 && ready(list)).then(|| list.clone())
        })
        .await
    }

    pub async fn connect(&self) -> CallClient {
        CallClient::connect(&self.url(), Some(ACME_TOKEN))
            .await
            .unwrap()
    }

    /// A started session of `support-bot` for the standard caller.
    pub async fn session(&self, call_id: &str, variables: Value) -> Session {
        let mut client = self.connect().await;
        let ready = start(&mut client, call_id, "support-bot", variables).await;
        assert_eq!(ready.ty(), "session.ready", "{:?}", ready.frame);
        Session { client, ready }
    }
}

/// Wait until `mock` has received `n` action requests in all; fail naming `what` if not.
pub async fn requests_reach(
    mock: &MockProvider,
    n: usize,
    what: &str,
) -> Vec<toolgate::tooling::mock::Recorded> {
    let reqs = mock.wait_for_requests(n, EVENT_WAIT).await;
    assert!(
        reqs.len() >= n,
        "waited {EVENT_WAIT:?} for {what}: {} of {n} requests arrived",
        reqs.len()
    );
    reqs
}

pub async fn start(
    client: &mut CallClient,
    call_id: &str,
    agent: &str,
    variables: Value,
) -> Received {
    client
        .send(&json!({
            "type": "session.start", "call_id": call_id, "agent": agent,
            "caller": {"number": CALLER, "name": "Ana"},
            "variables": variables,
        }))
        .await
        .unwrap();
    client.recv(WAIT).await.unwrap()
}

pub fn order_vars() -> Value {
    json!({"email": "ana@example.com", "order_id": "A-1042"})
}

pub struct Session {
    pub client: CallClient,
    pub ready: Received,
}

/// The answer to one tool call: frames before the result, and the result.
pub struct Answer {
    pub before: Vec<Received>,
    pub result: Received,
}

impl Answer {
    pub fn status(&self) -> &str {
        self.result.frame["status"].as_str().unwrap()
    }

    pub fn output(&self) -> Value {
        serde_json::from_str(self.result.frame["output"].as_str().unwrap()).unwrap()
    }

    pub fn error(&self) -> Option<String> {
        self.output()["error"].as_str().map(str::to_owned)
    }

    pub fn fillers(&self) -> Vec<&Received> {
        self.before
            .iter()
            .filter(|r| r.ty() == "tool.filler")
            .collect()
    }
}

impl Session {
    pub async fn say(&mut self, text: &str) {
        self.client
            .send(&json!({"type": "transcript", "role": "caller", "text": text, "final": true}))
            .await
            .unwrap();
    }

    pub async fn agent_says(&mut self, text: &str) {
        self.client
            .send(&json!({"type": "transcript", "role": "agent", "text": text, "final": true}))
            .await
            .unwrap();
    }

    pub async fn consent(&mut self, scope: &str, granted: bool) {
        self.client
            .send(&json!({"type": "consent", "scope": scope, "granted": granted, "source": "dtmf"}))
            .await
            .unwrap();
    }

    /// Send a tool call (arguments as the OpenAI-style JSON string).
    pub async fn send_call(&mut self, id: &str, name: &str, args: Value) {
        self.client
            .send(&json!({"type": "tool.call", "id": id, "name": name, "arguments": args.to_string()}))
            .await
            .unwrap();
    }

    pub async fn result_of(&mut self, id: &str) -> Answer {
        let mut frames = self.client.until_result(id, WAIT).await.unwrap();
        let result = frames.pop().unwrap();
        Answer {
            before: frames,
            result,
        }
    }

    /// The results of several tool calls, in whatever order they come.
    pub async fn results_of(&mut self, ids: &[String]) -> Vec<Received> {
        let mut out: Vec<Option<Received>> = vec![None; ids.len()];
        while out.iter().any(Option::is_none) {
            let r = self.client.recv(WAIT).await.unwrap();
            if r.ty() == "tool.result"
                && let Some(i) = ids.iter().position(|id| r.frame["id"] == id.as_str())
            {
                out[i] = Some(r);
            }
        }
        out.into_iter().map(Option::unwrap).collect()
    }

    pub async fn call(&mut self, id: &str, name: &str, args: Value) -> Answer {
        self.send_call(id, name, args).await;
        self.result_of(id).await
    }

    /// The next frame, which must be an `error` with this code.
    pub async fn expect_error(&mut self, code: &str) -> Received {
        let r = self.client.recv(WAIT).await.unwrap();
        assert_eq!(r.ty(), "error", "{:?}", r.frame);
        assert_eq!(r.frame["code"], code, "{:?}", r.frame);
        r
    }

    /// Nothing arrives within `d`: for frames a timer would send (a filler), where no later
    /// frame shows they will not come (see [`quiet_for`]). For what an earlier inbound frame
    /// would have caused, [`Session::expect_pong_next`] proves it without waiting.
    pub async fn expect_silence(&mut self, d: Duration) {
        match self.client.recv(d).await {
            Err(toolgate::tooling::client::ClientError::Timeout(_)) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Send a `ping`; the next frame must be its `pong`. Frames are handled in order, so
    /// anything the frames sent before caused (an answer, an error) would have come first.
    pub async fn expect_pong_next(&mut self) {
        self.client.send(&json!({"type": "ping"})).await.unwrap();
        let r = self.client.recv(WAIT).await.unwrap();
        assert_eq!(
            r.ty(),
            "pong",
            "expected nothing before the pong: {:?}",
            r.frame
        );
    }
}
