//! Issue 8, on a real nats-server restarted mid-run: nothing acknowledged is lost.
//!
//! A sidecar (workflow worker off) takes a steady stream of calls, each deferring one workflow
//! action, while a separate `toolgate worker` process runs the queue. Mid-run the nats-server
//! is killed (SIGKILL) and started again on the same store. Meanwhile:
//! - a job whose request is at the receiver when NATS dies is recorded once NATS is back,
//!   within its lease: sent once, not again after a lapse;
//! - calls deferred before the crash and still open ride through it, and run once they end;
//! - calls deferred before the crash that end while NATS is away have their held jobs released
//!   by the sidecar once NATS answers again;
//! - a call made while NATS is away is refused (`internal`), never answered `deferred`, and its
//!   action never runs;
//! - every call answered `deferred` reaches the webhook receiver, under one `webhook-id`, and
//!   its job ends `succeeded`.
//!
//! Skipped without nats-server unless `TOOLGATE_REQUIRE_NATS=1`.

mod common;
mod nats_support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nats_support::NatsServer;
use serde_json::json;

/// The workflow action's timing in the shared test config, and here: a 30 s hard timeout
/// gives the attempt in flight at the crash a 35 s lease, ample for the outage below (9 s)
/// plus the client's reconnect backoff (up to 4 s) on a slow machine.
const FUNCTION: &str = "timing = { mode = \"workflow\" }";
const FUNCTION_HERE: &str = "timing = { mode = \"workflow\", hard_timeout_ms = 30000 }";

/// The test config on NATS with the long timeout, for a sidecar or a worker whose local files
/// live in `dir`.
fn nats_config(text: &str, url: &str, dir: &Path, worker_in_sidecar: bool) -> String {
    assert!(text.contains(FUNCTION), "test.toml changed: no {FUNCTION}");
    on_nats(
        &text.replacen(FUNCTION, FUNCTION_HERE, 1),
        url,
        "RESTART",
        dir,
        Some(worker_in_sidecar),
    )
}

/// A `toolgate worker` process, killed and reaped when dropped.
struct Worker(Child);

impl Worker {
    fn spawn(config: &Path, log: &Path) -> Worker {
        let child = toolgate_cmd("worker", config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Worker(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One call: open, one workflow action, and the answer (`Some(job id)` when deferred).
async fn defer_one(env: &Env, call_id: &str, note: &str) -> (Session, Option<String>) {
    let mut s = env.session(call_id, json!({})).await;
    let a = s
        .call("call_0", "log_after_call", json!({"note": note}))
        .await;
    let job = match a.status() {
        "deferred" => Some(
            a.result.frame["data"]["job_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        _ => {
            assert_eq!(
                a.error().as_deref(),
                Some("internal"),
                "a call not deferred is refused as internal: {:?}",
                a.result.frame
            );
            None
        }
    };
    (s, job)
}

async fn end(mut s: Session) {
    s.client
        .send(&json!({"type": "session.end", "reason": "hangup"}))
        .await
        .unwrap();
    let ended = s.client.recv(Duration::from_secs(30)).await.unwrap();
    assert_eq!(ended.frame["type"], "session.ended", "{:?}", ended.frame);
}

async fn ready(env: &Env) -> bool {
    env.admin("GET", "/readyz", None).await.0 == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_run_loses_nothing_acknowledged() {
    let Some(mut nats) = NatsServer::start(&[]) else {
        return;
    };
    let url = nats.url();
    let sidecar_dir = tempfile::tempdir().unwrap();
    let env = Env::start_with(|t| nats_config(&t, &url, sidecar_dir.path(), false)).await;
    assert_eq!(env.server.runtime().jobs.backend(), "nats");
    let text = env.config_text();
    let worker_dir = tempfile::tempdir().unwrap();
    let worker_config = worker_dir.path().join("toolgate.toml");
    std::fs::write(
        &worker_config,
        nats_config(&text, &url, worker_dir.path(), true),
    )
    .unwrap();
    let worker_log = worker_dir.path().join("worker.log");
    let _worker = Worker::spawn(&worker_config, &worker_log);

    // note -> job id, for every call answered `deferred`; notes of refused calls.
    let mut deferred: HashMap<String, String> = HashMap::new();
    let mut refused: Vec<String> = Vec::new();
    let mut record = |note: String, job: Option<String>| match job {
        Some(id) => {
            deferred.insert(note, id);
        }
        None => refused.push(note),
    };

    // Before the crash: calls that run at once, and two groups held open.
    for i in 0..10 {
        let note = format!("before {i}");
        let (s, job) = defer_one(&env, &format!("c-before-{i}"), &note).await;
        assert!(job.is_some(), "NATS is up: {note} is deferred");
        record(note, job);
        end(s).await;
    }
    let early = env
        .webhook
        .wait_for_requests(10, Duration::from_secs(30))
        .await;
    assert_eq!(early.len(), 10, "the worker ran the first calls");
    let mut ride_through = Vec::new();
    let mut end_while_away = Vec::new();
    for i in 0..3 {
        let note = format!("ride {i}");
        let (s, job) = defer_one(&env, &format!("c-ride-{i}"), &note).await;
        assert!(job.is_some(), "NATS is up: {note} is deferred");
        record(note, job);
        ride_through.push(s);
        let note = format!("away {i}");
        let (s, job) = defer_one(&env, &format!("c-away-{i}"), &note).await;
        assert!(job.is_some(), "NATS is up: {note} is deferred");
        record(note, job);
        end_while_away.push(s);
    }

    // One job in flight at the crash: the receiver acts at once and answers 3 s later.
    env.webhook.push(toolgate::tooling::mock::Reply::AnswerLate(
        Duration::from_secs(3),
    ));
    let note = "in flight".to_owned();
    let (s, job) = defer_one(&env, "c-in-flight", &note).await;
    let in_flight = job.clone().expect("NATS is up: deferred");
    record(note, job);
    end(s).await;
    let sent = env
        .webhook
        .wait_for_requests(11, Duration::from_secs(30))
        .await;
    assert_eq!(sent.len(), 11, "the in-flight job reached the receiver");

    // The crash. Calls go on: each is refused, never answered `deferred` unstored.
    nats.kill();
    let crashed = Instant::now();
    for s in end_while_away {
        end(s).await;
    }
    let away_started = Instant::now();
    for i in 0..5 {
        let note = format!("during {i}");
        let (s, job) = defer_one(&env, &format!("c-during-{i}"), &note).await;
        assert!(job.is_none(), "NATS is away: {note} must not be deferred");
        record(note, job);
        end(s).await;
    }
    assert!(
        away_started.elapsed() < Duration::from_secs(20),
        "refusals are prompt: {:?}",
        away_started.elapsed()
    );
    assert!(!ready(&env).await, "readiness reports NATS away");
    // Away long enough for the in-flight attempt to end (3 s) and for its record to fail (a
    // NATS request waits up to 5 s for a reconnect), well within its lease (35 s).
    tokio::time::sleep(Duration::from_secs(9).saturating_sub(crashed.elapsed())).await;

    // Back on the same store; the sidecar reconnects by itself.
    nats.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(&env).await {
        assert!(Instant::now() < deadline, "the sidecar did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..10 {
        let note = format!("after {i}");
        let (s, job) = defer_one(&env, &format!("c-after-{i}"), &note).await;
        assert!(job.is_some(), "NATS is back: {note} is deferred");
        record(note, job);
        end(s).await;
    }
    for s in ride_through {
        end(s).await;
    }

    // Every deferred action reaches the receiver; no refused one does.
    let reqs = env
        .webhook
        .wait_for_requests(deferred.len(), Duration::from_secs(90))
        .await;
    let log = std::fs::read_to_string(&worker_log).unwrap_or_default();
    let mut keys_by_note: HashMap<String, HashSet<String>> = HashMap::new();
    for r in &reqs {
        let note = r.json()["data"]["inputs"]["note"]
            .as_str()
            .unwrap()
            .to_owned();
        keys_by_note
            .entry(note)
            .or_default()
            .insert(r.header("webhook-id").unwrap_or_default().to_owned());
    }
    let mut missing: Vec<&String> = deferred
        .keys()
        .filter(|n| !keys_by_note.contains_key(*n))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "acknowledged actions that never ran: {missing:?}; worker log: {log}"
    );
    for note in &refused {
        assert!(
            !keys_by_note.contains_key(note),
            "a refused call's action ran: {note}"
        );
    }
    for (note, keys) in &keys_by_note {
        assert!(deferred.contains_key(note), "an unknown action ran: {note}");
        assert_eq!(keys.len(), 1, "{note} was sent under one webhook-id");
    }
    assert_eq!(refused.len(), 5);
    assert_eq!(deferred.len(), 27);

    // Every deferred job ends `succeeded` in the shared queue.
    for id in deferred.values() {
        let job = env.job_settled(id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    // The attempt in flight at the crash was recorded late, once: no second send.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sends = env
        .webhook
        .requests()
        .iter()
        .filter(|r| r.json()["data"]["inputs"]["note"] == "in flight")
        .count();
    assert_eq!(sends, 1, "the in-flight action was sent once");
    let job = env.job(&in_flight).await;
    assert_eq!(job["attempts"], 1, "{job}");
    let log = std::fs::read_to_string(&worker_log).unwrap_or_default();
    assert!(
        log.contains("job attempt recorded once the job store was back"),
        "{log}"
    );
    for secret in SECRETS {
        assert!(!log.contains(secret), "a secret in the worker log");
    }
    drop(env);
    drop(nats);
}
