//! The real `toolgate` binary killed and stopped: after SIGKILL with deferred actions in flight
//! and workflow actions held, a restart runs every accepted job and Resend receives none twice;
//! SIGTERM refuses new connections, lets in-flight tool calls finish, persists the outcome and
//! exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use toolgate::tooling::client::CallClient;
use toolgate::tooling::mock::{MockProvider, Reply};

struct Mocks {
    resend: MockProvider,
    wati: MockProvider,
    webhook: MockProvider,
    beta_wati: MockProvider,
}

async fn mocks() -> Mocks {
    Mocks {
        resend: MockProvider::resend(RESEND_KEY).await.unwrap(),
        wati: MockProvider::wati(WATI_TOKEN).await.unwrap(),
        webhook: MockProvider::webhook(WEBHOOK_SECRET).await.unwrap(),
        beta_wati: MockProvider::wati(BETA_WATI_TOKEN).await.unwrap(),
    }
}

fn write_config(dir: &Path, m: &Mocks) -> std::path::PathBuf {
    write_config_with(dir, m, |t| t)
}

fn write_config_with(
    dir: &Path,
    m: &Mocks,
    edit: impl FnOnce(String) -> String,
) -> std::path::PathBuf {
    let text = edit(include_str!("common/test.toml").to_owned())
        .replace("{db}", &dir.join("toolgate.db").display().to_string())
        .replace("{resend}", &m.resend.url())
        .replace("{wati}", &m.wati.url())
        .replace("{webhook_health}", &m.webhook.health_url())
        .replace("{webhook}", &m.webhook.url())
        .replace("{beta_wati}", &m.beta_wati.url());
    let path = dir.join("toolgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `toolgate serve` and the addresses it logged.
struct Sidecar {
    child: Child,
    ws: String,
    admin: String,
}

fn start(config: &Path) -> Sidecar {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_toolgate"));
    cmd.args(["serve", "--config"]).arg(config);
    start_cmd(cmd)
}

/// `toolgate serve` under an open-files limit set by the shell's `ulimit` (`-Sn 256`: the soft
/// limit only; `-n 700`: soft and hard).
fn start_limited(config: &Path, ulimit: &str) -> Sidecar {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "ulimit {ulimit} && exec \"$0\" serve --config \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_toolgate"))
        .arg(config);
    start_cmd(cmd)
}

fn start_cmd(mut cmd: Command) -> Sidecar {
    let mut child = cmd
        .envs(SECRETS_ENV)
        .env("TOOLGATE_LOG", "info")
        .env("TOOLGATE_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "toolgate serving" {
            let ws = v["listen"].as_str().unwrap().to_owned();
            let admin = v["admin"].as_str().unwrap().to_owned();
            // Keep draining the log so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Sidecar { child, ws, admin };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("toolgate serve did not start");
}

impl Sidecar {
    fn url(&self) -> String {
        format!("ws://{}/v1/session", self.ws)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "toolgate did not exit");
            #[allow(
                clippy::disallowed_methods,
                reason = "a test waiting for a child process"
            )]
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn jobs(&self) -> Vec<Value> {
        let resp = reqwest::Client::new()
            .get(format!("http://{}/v1/jobs?limit=1000", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        body["jobs"].as_array().unwrap().clone()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn open_call(url: &str, call_id: &str) -> CallClient {
    let mut c = CallClient::connect(url, Some(ACME_TOKEN)).await.unwrap();
    c.send(
        &json!({"type": "session.start", "call_id": call_id, "agent": "support-bot",
                   "caller": {"number": CALLER}, "variables": order_vars()}),
    )
    .await
    .unwrap();
    assert_eq!(c.recv(WAIT).await.unwrap().ty(), "session.ready");
    c
}

async fn tool_call(c: &mut CallClient, id: &str, name: &str, args: Value) -> Value {
    c.send(&json!({"type": "tool.call", "id": id, "name": name, "arguments": args}))
        .await
        .unwrap();
    c.until_result(id, WAIT).await.unwrap().pop().unwrap().frame
}

#[tokio::test]
async fn after_sigkill_a_restart_runs_every_accepted_job_and_resend_gets_none_twice() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let m = mocks().await;
    // Resend acts on each request at once but answers only after 3 s: the live requests are
    // still waiting when the sidecar dies.
    m.resend
        .set_default(Reply::AnswerLate(Duration::from_secs(3)));
    m.wati
        .set_default(Reply::AnswerLate(Duration::from_secs(3)));
    let config = write_config(dir.path(), &m);
    let mut first = start(&config);

    let mut calls = Vec::new();
    for i in 0..4 {
        let mut c = open_call(&first.url(), &format!("c-crash-{i}")).await;
        let r = tool_call(
            &mut c,
            "call_email",
            "email_later",
            json!({"summary": format!("summary {i}")}),
        )
        .await;
        assert_eq!(r["status"], "deferred", "{r}");
        assert_eq!(r["data"]["reason"], "budget");
        let r = tool_call(
            &mut c,
            "call_log",
            "log_after_call",
            json!({"note": format!("note {i}")}),
        )
        .await;
        assert_eq!(r["status"], "deferred", "{r}");
        calls.push(c);
    }
    let mut c = open_call(&first.url(), "c-crash-wati").await;
    let r = tool_call(
        &mut c,
        "call_wati",
        "wati_later",
        json!({"text": "on its way"}),
    )
    .await;
    assert_eq!(r["status"], "deferred", "{r}");
    calls.push(c);
    assert_eq!(
        m.resend.deliveries_by_key().len(),
        4,
        "four live requests out"
    );
    assert!(
        m.webhook.requests().is_empty(),
        "workflow jobs wait for their calls"
    );

    first.signal("-KILL");
    first.wait_exit(Duration::from_secs(10));
    drop(calls);
    let before_restart = m.resend.requests().len();
    m.resend.set_default(Reply::Normal);
    m.wati.set_default(Reply::Normal);

    let second = start(&config);
    let deadline = Instant::now() + Duration::from_secs(30);
    let jobs = loop {
        let jobs = second.jobs().await;
        let settled = jobs
            .iter()
            .all(|j| matches!(j["state"].as_str(), Some("succeeded" | "failed" | "dead")));
        if (jobs.len() == 9 && settled) || Instant::now() > deadline {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(jobs.len(), 9, "{jobs:#?}");
    for j in &jobs {
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    // Every deferred email arrived exactly once: the retries after the crash carried the same
    // Idempotency-Key and Resend replayed its first answer.
    let emails = m.resend.deliveries_by_key();
    assert_eq!(emails.len(), 4, "{emails:?}");
    for (key, delivered) in &emails {
        assert_eq!(*delivered, 1, "email {key} delivered {delivered} times");
    }
    assert!(
        m.resend.requests().len() >= before_restart + 4,
        "every email job was retried by the restarted sidecar"
    );
    // Wati has no idempotency key: the job taken over from the dead process is flagged.
    let wati_job = jobs.iter().find(|j| j["function"] == "wati_later").unwrap();
    assert_eq!(wati_job["at_least_once"], true, "{wati_job}");
    assert!(m.wati.delivered() >= 1);
    // Every held workflow job ran after the restart.
    let notes = m.webhook.deliveries_by_key();
    assert_eq!(notes.len(), 4, "{notes:?}");
    assert!(notes.values().all(|d| *d >= 1));
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_persists_them_and_exits_0() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let m = mocks().await;
    // Resend takes each request at once and answers after 1 s.
    m.resend
        .set_default(Reply::AnswerLate(Duration::from_secs(1)));
    let config = write_config(dir.path(), &m);
    let mut sidecar = start(&config);
    // A call that already ended, leaving a live request that outlives its session.
    let mut ended = open_call(&sidecar.url(), "c-term-ended").await;
    let r = tool_call(
        &mut ended,
        "call_1",
        "email_later",
        json!({"summary": "ended"}),
    )
    .await;
    assert_eq!(r["status"], "deferred");
    ended.send(&json!({"type": "session.end"})).await.unwrap();
    assert_eq!(ended.recv(WAIT).await.unwrap().ty(), "session.ended");
    // A call holding a workflow job for its end.
    let mut holding = open_call(&sidecar.url(), "c-term-held").await;
    let r = tool_call(
        &mut holding,
        "call_1",
        "log_after_call",
        json!({"note": "n"}),
    )
    .await;
    assert_eq!(r["status"], "deferred");
    // A call with a tool call in flight when the signal comes.
    let mut c = open_call(&sidecar.url(), "c-term").await;
    c.send(
        &json!({"type": "tool.call", "id": "call_1", "name": "email_later",
                   "arguments": {"summary": "x"}}),
    )
    .await
    .unwrap();
    requests_reach(&m.resend, 2, "the second live request to be in flight").await;
    sidecar.signal("-TERM");
    // The session with nothing in flight is closed at once, after the listener has stopped.
    assert_eq!(holding.closed(WAIT).await.unwrap(), Some(1001));
    assert!(
        CallClient::connect(&sidecar.url(), Some(ACME_TOKEN))
            .await
            .is_err(),
        "no new connections once shutting down"
    );
    // The call in flight still gets its answer (deferred at its budget), then the session
    // closes with 1001 once the live request has ended.
    let frames = c.until_result("call_1", WAIT).await.unwrap();
    assert_eq!(frames.last().unwrap().frame["status"], "deferred");
    assert_eq!(c.closed(WAIT).await.unwrap(), Some(1001));
    let status = sidecar.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert_eq!(m.resend.delivered(), 2);
    // The outcome was recorded before exit.
    let db = rusqlite::Connection::open(dir.path().join("toolgate.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT function, state, runnable_at IS NOT NULL FROM jobs ORDER BY function")
        .unwrap();
    let rows: Vec<(String, String, bool)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Both live requests closed their jobs before exit; the held job was released.
    assert_eq!(
        rows,
        vec![
            ("email_later".to_owned(), "succeeded".to_owned(), false),
            ("email_later".to_owned(), "succeeded".to_owned(), false),
            ("log_after_call".to_owned(), "queued".to_owned(), true),
        ]
    );
}

#[tokio::test]
async fn toolgate_worker_runs_jobs_without_a_listener() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let m = mocks().await;
    let config = write_config_with(dir.path(), &m, |t| {
        t.replace(
            "backoff_base_ms = 50",
            "backoff_base_ms = 50\nworker = false",
        )
    });
    let sidecar = start(&config);
    let mut c = open_call(&sidecar.url(), "c-worker").await;
    let r = tool_call(&mut c, "call_1", "log_after_call", json!({"note": "n"})).await;
    assert_eq!(r["status"], "deferred");
    c.send(&json!({"type": "session.end"})).await.unwrap();
    assert_eq!(c.recv(WAIT).await.unwrap().ty(), "session.ended");
    // The call's end makes its job runnable; a worker would take it from then on, and no
    // event marks that none will.
    wait_until(
        "the ended call's job to be runnable",
        EVENT_WAIT,
        || async {
            let jobs = sidecar.jobs().await;
            jobs.iter()
                .any(|j| j["state"] == "queued" && j["runnable_at"].is_i64())
                .then_some(())
        },
    )
    .await;
    quiet_for(Duration::from_millis(500)).await;
    assert!(
        m.webhook.requests().is_empty(),
        "serve runs no worker with workflow.worker = false"
    );

    let mut worker = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["worker", "--config"])
        .arg(&config)
        .envs(SECRETS_ENV)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reqs = m
        .webhook
        .wait_for_requests(1, Duration::from_secs(20))
        .await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].signature_valid, Some(true));
    let ok = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "toolgate worker did not exit");
        #[allow(
            clippy::disallowed_methods,
            reason = "a test waiting for a child process"
        )]
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let jobs = sidecar.jobs().await;
    assert_eq!(jobs[0]["state"], "succeeded");
}

#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let m = mocks().await;
    let config = write_config(dir.path(), &m);
    let sidecar = start(&config);
    let connections = || async {
        let resp = reqwest::Client::new()
            .get(format!("http://{}/v1/connections", sidecar.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        body["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(!connections().await.contains(&"acme-hooks-2".to_owned()));
    let text = std::fs::read_to_string(&config).unwrap();
    let extra = format!(
        "[[connections]]\nid = \"acme-hooks-2\"\norg = \"acme\"\nprovider = \"webhook\"\nurl = \"{}\"\nsecret = {{ env = \"ACME_WEBHOOK_SECRET\" }}\n\n[[agents]]\nid = \"support-bot\"",
        m.webhook.url()
    );
    std::fs::write(
        &config,
        text.replacen("[[agents]]\nid = \"support-bot\"", &extra, 1),
    )
    .unwrap();
    sidecar.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connections().await.contains(&"acme-hooks-2".to_owned()) {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A config on NATS at a loopback port nothing listens on, with a token from the environment.
fn unreachable_nats(text: String, fallback: bool) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fallback = if fallback {
        "fallback = \"sqlite\"\n"
    } else {
        ""
    };
    text.replacen(
        "[storage]\n",
        &format!(
            "[storage]\nbackend = \"nats\"\nnats_url = \"nats://127.0.0.1:{port}\"\ntoken = {{ env = \"NATS_TOKEN\" }}\n{fallback}"
        ),
        1,
    )
}

const NATS_TOKEN: &str = "nats-token-3f9a1c";

#[tokio::test]
async fn serve_with_nats_unreachable_exits_1_with_a_clear_error_and_no_secret() {
    let m = mocks().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), &m, |t| unreachable_nats(t, false));
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .envs(SECRETS_ENV)
        .env("NATS_TOKEN", NATS_TOKEN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "{stderr}");
    assert!(stderr.contains("cannot reach NATS"), "{stderr}");
    assert!(
        stderr.contains("nats://127.0.0.1:"),
        "names the server: {stderr}"
    );
    assert!(
        !stderr.contains(NATS_TOKEN),
        "a secret in the error: {stderr}"
    );
    for secret in SECRETS {
        assert!(!stderr.contains(secret), "a secret in the error: {stderr}");
    }
}

#[tokio::test]
async fn serve_with_nats_unreachable_and_the_sqlite_fallback_serves_and_says_so() {
    let m = mocks().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), &m, |t| unreachable_nats(t, true));
    let mut child = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .envs(SECRETS_ENV)
        .env("NATS_TOKEN", NATS_TOKEN)
        .env("TOOLGATE_LOG", "info")
        .env("TOOLGATE_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on a thread, so a child that goes quiet fails the test at the deadline.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let mut serving = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        log.push_str(&line);
        log.push('\n');
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "toolgate serving" {
            serving = Some(v["admin"].as_str().unwrap().to_owned());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let admin = serving.unwrap_or_else(|| panic!("did not serve on the fallback: {log}"));
    assert!(!admin.is_empty());
    assert!(log.contains("fallback"), "the fallback is logged: {log}");
    assert!(
        log.contains("cannot reach NATS"),
        "with NATS's error: {log}"
    );
    assert!(!log.contains(NATS_TOKEN), "a secret in the log: {log}");
}

/// Open `n` TCP connections to `addr` that never send a byte.
async fn silent_sockets(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            v.push(s);
        }
    }
    v
}

async fn healthz(admin: &str) -> Result<u16, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::Client::new()
        .get(format!("http://{admin}/healthz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// The soft open-files limit of a process, from `/proc`.
fn soft_open_files(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let mut cols = line["Max open files".len()..].split_whitespace();
    (
        cols.next().unwrap().to_owned(),
        cols.next().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_open_files_soft_limit_is_raised_so_silent_sockets_cannot_exhaust_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = mocks().await;
    let config = write_config(dir.path(), &m);
    let sidecar = start_limited(&config, "-Sn 256");
    let (soft, hard) = soft_open_files(sidecar.child.id());
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");
    // More silent sockets than the soft limit it started with, on both ports.
    let _flood = silent_sockets(&sidecar.ws, 300).await;
    let _admin_flood = silent_sockets(&sidecar.admin, 100).await;
    assert_eq!(healthz(&sidecar.admin).await, Ok(200));
    let mut c = open_call(&sidecar.url(), "c-after-flood").await;
    let r = tool_call(&mut c, "1", "notify_team", json!({"reason": "billing"})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
}

#[tokio::test]
async fn under_a_low_hard_limit_a_flood_of_silent_sockets_leaves_calls_and_the_admin_api_working() {
    let dir = tempfile::tempdir().unwrap();
    let m = mocks().await;
    let config = write_config(dir.path(), &m);
    let sidecar = start_limited(&config, "-n 700");
    let (soft, _) = soft_open_files(sidecar.child.id());
    assert_eq!(soft, "700");
    // Twice the descriptors the process has, half of them upgraded WebSockets that never send
    // session.start: the listeners' own bounds close the oldest, and no accept hits EMFILE.
    let _flood = silent_sockets(&sidecar.ws, 700).await;
    let mut upgraded = Vec::new();
    let url = sidecar.url();
    for _ in 0..300 {
        let connect = CallClient::connect(&url, Some(ACME_TOKEN));
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            upgraded.push(c);
        }
    }
    let _admin_flood = silent_sockets(&sidecar.admin, 400).await;
    // Well before any silent socket's handshake timeout (5 s): the bounds, not the timeout,
    // keep the sidecar answering.
    let quick = Duration::from_secs(2);
    assert_eq!(
        tokio::time::timeout(quick, healthz(&sidecar.admin)).await,
        Ok(Ok(200))
    );
    let call = async {
        let mut c = open_call(&sidecar.url(), "c-after-flood").await;
        tool_call(&mut c, "1", "notify_team", json!({"reason": "billing"})).await
    };
    let r = tokio::time::timeout(quick, call)
        .await
        .expect("a call during the flood is answered at once");
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(m.webhook.delivered(), 1);
}

#[tokio::test]
async fn a_second_serve_on_the_same_sqlite_store_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = mocks().await;
    let config = write_config(dir.path(), &m);
    let _first = start(&config);
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .envs(SECRETS_ENV)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let db = dir.path().join("toolgate.db").display().to_string();
    assert!(
        stderr.contains("another toolgate serve is already using the store")
            && stderr.contains(&db),
        "{stderr}"
    );
}

#[tokio::test]
async fn data_files_and_folders_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let m = mocks().await;
    let data = dir.path().join("data");
    let config = write_config_with(dir.path(), &m, |t| {
        t.replace("{db}", &data.join("toolgate.db").display().to_string())
    });
    let sidecar = start(&config);
    let mut c = open_call(&sidecar.url(), "c-private").await;
    let r = tool_call(&mut c, "1", "notify_team", json!({"reason": "billing"})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data folder");
    for entry in std::fs::read_dir(&data).unwrap() {
        let p = entry.unwrap().path();
        assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
    }
}
