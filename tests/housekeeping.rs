//! A sidecar without a workflow worker (`workflow.worker = false`, the workers run elsewhere)
//! still keeps its files within retention: evidence and finished jobs older than
//! `retain_days` are deleted when it starts (and hourly after), newer ones kept.

mod common;

use std::time::{Duration, Instant};

use common::*;
use toolgate::bindings::{Resolved, ResolvedInput, ValueSource};
use toolgate::catalog::Action;
use toolgate::clock::{Millis, now_ms};
use toolgate::evidence::store::EvidenceStore;
use toolgate::evidence::{CallEnd, CallStart, Event};
use toolgate::workflow::store::JobStore;
use toolgate::workflow::{DeferReason, Finish, NewJob, Start};

const DAY: Millis = 86_400_000;

fn job(key: &str) -> NewJob {
    NewJob {
        org: "acme".into(),
        agent: "support-bot".into(),
        function: "log_after_call".into(),
        call_id: format!("c-{key}"),
        tool_call_id: format!("call_{key}"),
        invocation_id: format!("inv_{key}"),
        action: Action::WebhookPost,
        connection: "acme-hooks".into(),
        inputs: vec![ResolvedInput {
            name: "note".into(),
            value: Resolved::Text("kept for the team".into()),
            source: ValueSource::Arg("note".into()),
        }],
        idempotency_key: format!("tg_{key}"),
        idempotent: true,
        reason: DeferReason::Workflow,
        max_attempts: 3,
        hard_timeout: Duration::from_secs(10),
        retry_window: Duration::ZERO,
        start: Start::RunnableAt(0),
    }
}

/// A job queued, run and finished `age` ago. Returns its id.
async fn finished_job(store: &JobStore, key: &str, age: Millis) -> String {
    let at = now_ms() - age;
    let mut new = job(key);
    new.start = Start::RunnableAt(at);
    let queued = store.enqueue(new, at).await.unwrap();
    let claimed = store.claim("w", at).await.unwrap().expect("runnable");
    assert_eq!(claimed.id, queued.id);
    let done = Finish::Succeeded {
        message_id: Some(format!("msg_{key}")),
    };
    assert!(store.finish(&claimed.id, "w", 1, done, at).await.unwrap());
    claimed.id
}

/// A whole call, started `age` ago.
fn call(store: &EvidenceStore, call_id: &str, age: Millis) {
    let at = now_ms() - age;
    store.submit(Event::CallStarted(CallStart {
        org: "acme".into(),
        call_id: call_id.into(),
        agent: "support-bot".into(),
        caller: None,
        channel: "v1".into(),
        at,
    }));
    store.submit(Event::CallEnded(CallEnd {
        org: "acme".into(),
        call_id: call_id.into(),
        reason: "hangup".into(),
        at: at + 60_000,
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_without_a_worker_prunes_what_is_past_retention() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("toolgate.db");

    // Seeded before the sidecar starts: one of each past retention (30 days), one within.
    let jobs = JobStore::open(&db).unwrap();
    let old_job = finished_job(&jobs, "old", 40 * DAY).await;
    let new_job = finished_job(&jobs, "new", DAY).await;
    jobs.close().await;
    let evidence =
        EvidenceStore::open(&dir.path().join("toolgate-evidence.db"), Duration::ZERO).unwrap();
    call(&evidence, "c-old", 40 * DAY);
    call(&evidence, "c-new", DAY);
    evidence.flush().await;
    evidence.close().await;

    let path = db.display().to_string();
    let env = Env::start_with(|t| {
        t.lines()
            .map(|l| {
                if l.starts_with("path = ") {
                    format!("path = \"{path}\"")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            .replacen("[workflow]\n", "[workflow]\nworker = false\n", 1)
    })
    .await;
    assert!(!env.server.runtime().config().workflow.worker);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (old_call, _) = env.admin("GET", "/v1/calls/c-old", Some(ADMIN_TOKEN)).await;
        let (old, _) = env
            .admin("GET", &format!("/v1/jobs/{old_job}"), Some(ADMIN_TOKEN))
            .await;
        if old_call == 404 && old == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not pruned: call {old_call}, job {old}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = env.admin("GET", "/v1/calls/c-new", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "a call within retention is kept: {body}");
    let job = env.job(&new_job).await;
    assert_eq!(job["state"], "succeeded", "{job}");
}
