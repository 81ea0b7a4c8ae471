//! End to end on the NATS backend: a sidecar queues workflow jobs in JetStream, two separate
//! `toolgate worker --config FILE` processes share the queue, and each job reaches the provider
//! exactly once. Skipped without nats-server unless `TOOLGATE_REQUIRE_NATS=1`.

mod common;
mod nats_support;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nats_support::NatsServer;
use serde_json::json;

fn spawn_worker(config: &std::path::Path, log: &std::path::Path) -> Child {
    toolgate_cmd("worker", config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "the worker exits cleanly: {status}");
            return;
        }
        #[allow(
            clippy::disallowed_methods,
            reason = "a test waiting for a child process"
        )]
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the worker did not stop on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_nats_queue_and_send_each_job_once() {
    let Some(nats) = NatsServer::shared() else {
        return;
    };
    let prefix = nats_support::unique_prefix("E2E");
    let url = nats.url();
    let sidecar_dir = tempfile::tempdir().unwrap();
    let env =
        Env::start_with(|t| on_nats(&t, &url, &prefix, sidecar_dir.path(), Some(false))).await;
    assert_eq!(env.server.runtime().jobs.backend(), "nats");

    // Six workflow calls over three calls: queued at once, held until each call ends.
    let mut jobs = Vec::new();
    for c in 0..3 {
        let call_id = format!("c-nats-{c}");
        let mut s = env.session(&call_id, json!({})).await;
        for i in 0..2 {
            let a = s
                .call(
                    &format!("call_{i}"),
                    "log_after_call",
                    json!({"note": format!("note {c}.{i}")}),
                )
                .await;
            assert_eq!(a.status(), "deferred", "{:?}", a.result.frame);
            jobs.push(
                a.result.frame["data"]["job_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        s.client
            .send(&json!({"type": "session.end", "reason": "hangup"}))
            .await
            .unwrap();
        let ended = s.client.recv(WAIT).await.unwrap();
        assert_eq!(ended.frame["type"], "session.ended");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        env.webhook.requests().is_empty(),
        "no worker runs yet: the sidecar's own worker is off"
    );

    // Two worker processes, each with its own config file and local files.
    let text = env.config_text();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut workers = Vec::new();
    for d in &dirs {
        let file = d.path().join("toolgate.toml");
        std::fs::write(&file, on_nats(&text, &url, &prefix, d.path(), Some(true))).unwrap();
        workers.push(spawn_worker(&file, &d.path().join("worker.log")));
    }

    let reqs = env
        .webhook
        .wait_for_requests(jobs.len(), Duration::from_secs(30))
        .await;
    assert_eq!(reqs.len(), jobs.len(), "every job ran");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reqs = env.webhook.requests();
    assert_eq!(reqs.len(), jobs.len(), "and none twice");
    let ids: HashSet<String> = reqs
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids.len(), jobs.len(), "one webhook id per job");
    let notes: HashSet<String> = reqs
        .iter()
        .map(|r| {
            r.json()["data"]["inputs"]["note"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(notes.len(), jobs.len());

    // The sidecar's admin API reads the shared queue.
    for id in &jobs {
        let job = env.job_settled(id, Duration::from_secs(10)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
    }
    let (status, body) = env
        .admin("GET", "/v1/jobs?state=succeeded", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["jobs"].as_array().unwrap().len(), jobs.len());

    let mut logs = String::new();
    for (w, d) in workers.into_iter().zip(&dirs) {
        stop(w);
        logs.push_str(&std::fs::read_to_string(d.path().join("worker.log")).unwrap());
    }
    for secret in SECRETS {
        assert!(!logs.contains(secret), "a secret in the worker logs");
    }
    assert!(logs.contains("job store open on NATS JetStream"), "{logs}");

    // The workers published their attempts' evidence, which the sidecar reads; they serve
    // no reads, so they keep no copy of the stream.
    assert!(
        logs.contains("evidence store on NATS JetStream: publishing only"),
        "{logs}"
    );
    env.server.runtime().evidence.flush().await;
    let (status, body) = env
        .admin("GET", "/v1/calls/c-nats-0", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    let workflow = body["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["source_type"] == "workflow")
        .count();
    assert_eq!(workflow, 2, "both attempts of c-nats-0 recorded: {body}");
    for d in &dirs {
        let file = d.path().join("toolgate-evidence.db");
        let db = rusqlite::Connection::open(&file).unwrap();
        let rows: i64 = db
            .query_row(
                "SELECT (SELECT count(*) FROM invocations) + (SELECT count(*) FROM calls)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            rows,
            0,
            "a worker applied the evidence stream to {}",
            file.display()
        );
    }
    drop(nats);
}
