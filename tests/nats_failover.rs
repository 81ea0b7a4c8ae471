//! Issue 8, on a real nats-server: a `toolgate worker` killed with SIGKILL mid-job is replaced
//! by another that finishes the job with the same idempotency key. The first worker's request
//! reaches the webhook receiver and hangs; the worker is killed; a second worker takes the job
//! over once its lease has lapsed and JetStream redelivers the notice (one ack wait after the
//! claim: the longest hard timeout in the config + 6 s, 16 s here), and sends it again with the
//! same `webhook-id`.
//! Skipped without nats-server unless `TOOLGATE_REQUIRE_NATS=1`.

mod common;
mod nats_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use nats_support::NatsServer;
use serde_json::json;
use toolgate::tooling::mock::Reply;

/// The job's function: a workflow action with a short hard timeout, so its lease
/// (hard timeout + 5 s) lapses well before JetStream redelivers the notice.
const FUNCTION: &str = "timing = { mode = \"workflow\" }";
const FUNCTION_SHORT: &str = "timing = { mode = \"workflow\", hard_timeout_ms = 4000 }";

/// The test config on NATS with the short timeout, for a sidecar or a worker whose local
/// files live in `dir`.
fn nats_config(text: &str, url: &str, prefix: &str, dir: &Path, worker_in_sidecar: bool) -> String {
    assert!(text.contains(FUNCTION), "test.toml changed: no {FUNCTION}");
    on_nats(
        &text.replacen(FUNCTION, FUNCTION_SHORT, 1),
        url,
        prefix,
        dir,
        Some(worker_in_sidecar),
    )
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves none
/// behind.
struct Proc(Option<Child>);

impl Proc {
    /// Kill it now without warning, as a crash would.
    fn sigkill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop it with SIGTERM and expect a clean exit (SIGKILL after 15 s).
    fn terminate(&mut self) {
        let Some(mut c) = self.0.take() else { return };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                assert!(status.success(), "the worker exits cleanly: {status}");
                return;
            }
            #[allow(
                clippy::disallowed_methods,
                reason = "a test waiting for a child process"
            )]
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        panic!("the worker did not stop on SIGTERM");
    }

    fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

fn spawn_worker(config: &Path, log: &Path) -> Proc {
    let child = toolgate_cmd("worker", config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc(Some(child))
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_is_replaced_and_the_job_resent_with_the_same_key() {
    let Some(nats) = NatsServer::shared() else {
        return;
    };
    let prefix = nats_support::unique_prefix("FAILOVER");
    let url = nats.url();
    let sidecar_dir = tempfile::tempdir().unwrap();
    let env = Env::start_with(|t| nats_config(&t, &url, &prefix, sidecar_dir.path(), false)).await;
    assert_eq!(env.server.runtime().jobs.backend(), "nats");

    // The first send hangs at the receiver (it has the request, the worker never gets an
    // answer); the next is answered normally.
    env.webhook.push(Reply::Hang);

    // One workflow job, held until the call ends, then released to the queue.
    let mut s = env.session("c-failover", json!({})).await;
    let a = s
        .call("call_0", "log_after_call", json!({"note": "failover"}))
        .await;
    assert_eq!(a.status(), "deferred", "{:?}", a.result.frame);
    let job_id = a.result.frame["data"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.client
        .send(&json!({"type": "session.end", "reason": "hangup"}))
        .await
        .unwrap();
    let ended = s.client.recv(WAIT).await.unwrap();
    assert_eq!(ended.frame["type"], "session.ended");

    let text = env.config_text();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let files: Vec<_> = dirs
        .iter()
        .map(|d| {
            let file = d.path().join("toolgate.toml");
            std::fs::write(&file, nats_config(&text, &url, &prefix, d.path(), true)).unwrap();
            file
        })
        .collect();

    // W1 claims the job; its request reaches the receiver and hangs there.
    let mut w1 = spawn_worker(&files[0], &dirs[0].path().join("worker.log"));
    let first = env
        .webhook
        .wait_for_requests(1, Duration::from_secs(20))
        .await;
    assert_eq!(
        first.len(),
        1,
        "W1 sent the job; W1 log: {}",
        log_of(dirs[0].path())
    );
    let job = env.job(&job_id).await;
    assert_eq!(job["state"], "in_flight", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    let w1_owner = job["lease_owner"].clone();
    assert!(w1_owner.is_string(), "{job}");

    // Mid-attempt (its hard timeout has not passed): SIGKILL, and a replacement.
    assert!(w1.running(), "W1 is still running when it is killed");
    w1.sigkill();
    let mut w2 = spawn_worker(&files[1], &dirs[1].path().join("worker.log"));

    // W2 takes the job over after the lease lapses and the notice is redelivered.
    let reqs = env
        .webhook
        .wait_for_requests(2, Duration::from_secs(60))
        .await;
    assert_eq!(
        reqs.len(),
        2,
        "W2 sent the job again; W2 log: {}",
        log_of(dirs[1].path())
    );
    let job = env.job_settled(&job_id, Duration::from_secs(15)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "one attempt each: {job}");
    assert_eq!(
        job["at_least_once"], false,
        "the webhook is idempotent: {job}"
    );
    let (status, body) = env
        .admin("GET", "/v1/jobs?state=succeeded", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<_> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(job_id)], "{body}");

    // Both sends carried the same idempotency key; the receiver acted once (the hung one
    // never answered, so it was never acted on).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reqs = env.webhook.requests();
    assert_eq!(reqs.len(), 2, "exactly two sends: {reqs:?}");
    let keys: Vec<&str> = reqs
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or_default())
        .collect();
    assert!(keys[0].starts_with("msg_"), "{keys:?}");
    assert_eq!(keys[0], keys[1], "the same webhook-id on both sends");
    for r in &reqs {
        assert_eq!(r.json()["data"]["inputs"]["note"], "failover");
    }
    assert!(!reqs[0].delivered, "the hung send was never answered");
    assert!(reqs[1].delivered, "the second send was delivered");
    assert_eq!(reqs[1].signature_valid, Some(true));
    assert_eq!(env.webhook.delivered(), 1);
    let by_key = env.webhook.deliveries_by_key();
    assert_eq!(by_key.len(), 1, "{by_key:?}");
    assert_eq!(by_key.values().copied().collect::<Vec<_>>(), vec![1]);

    // Nothing else was sent anywhere.
    for (name, mock) in [
        ("resend", &env.resend),
        ("wati", &env.wati),
        ("beta wati", &env.beta_wati),
    ] {
        assert!(mock.requests().is_empty(), "{name} got an action");
    }

    w2.terminate();
    let logs = log_of(dirs[0].path()) + &log_of(dirs[1].path());
    for secret in SECRETS {
        assert!(!logs.contains(secret), "a secret in the worker logs");
    }
    drop(env);
    drop(nats);
}
