//! One suite of job-queue scenarios run against both storage backends: the embedded SQLite
//! file and NATS JetStream (SPEC §4 and §10). Every scenario in `both!` runs twice, as
//! `<scenario>::sqlite` and `<scenario>::nats`; the `nats_only` module covers what only the
//! NATS backend has (a server that goes away, start-up errors, credentials).
//!
//! The NATS cases start their own `nats-server -js` on a free loopback port with a temporary
//! store directory, and kill it at the end. Without `nats-server` installed they are skipped
//! with a note, unless `TOOLGATE_REQUIRE_NATS=1` (CI), which makes them fail instead.
//! `NATS_SERVER_BIN` names the binary when it is not on the PATH or in /usr/sbin.
//!
//! "Hosts" are separate store instances: for NATS, separate connections, as two sidecars or
//! workers would have; for SQLite, separate stores on one file. The harness ([`Hosts`],
//! `both!`) is shared with the evidence suite (`nats_support`).

mod nats_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use toolgate::backoff::Backoff;
use toolgate::bindings::{Resolved, ResolvedInput, ValueSource};
use toolgate::catalog::Action;
use toolgate::clock::{Millis, now_ms};
use toolgate::config::NatsAuth;
use toolgate::providers::{Delivery, FailureKind, ProviderError};
use toolgate::storage::nats::NatsOptions;
use toolgate::workflow::store::JobStore;
use toolgate::workflow::transitions::LEASE_MARGIN;
use toolgate::workflow::transitions::{self, Lifecycle, Verdict};
use toolgate::workflow::{DeferReason, Finish, Job, JobState, NewJob, RetryRefused, Start};

use nats_support::{Hosts, Kind, NatsServer, both, free_port, open_until_up};

const PREFIX: &str = "TGTEST";
/// The ack wait the NATS stores of this suite use: short, so a crashed holder's notice comes
/// back soon after its lease.
const ACK_WAIT: Duration = Duration::from_secs(1);
const CLAIM_WAIT: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------
// the two backends behind one harness

/// The job store on the hosts of the shared harness.
trait JobHosts {
    fn options(&self) -> NatsOptions;
    /// A new store: another host.
    async fn open(&self) -> JobStore;
}

impl JobHosts for Hosts {
    fn options(&self) -> NatsOptions {
        NatsOptions {
            ack_wait: ACK_WAIT,
            claim_wait: CLAIM_WAIT,
            ..self.nats_options()
        }
    }

    async fn open(&self) -> JobStore {
        match self.kind {
            Kind::Sqlite => JobStore::open(&self.dir.path().join("jobs.db")).unwrap(),
            Kind::Nats => open_until_up("store", || JobStore::open_nats(self.options())).await,
        }
    }
}

// ---------------------------------------------------------------------------------------
// helpers

fn inputs() -> Vec<ResolvedInput> {
    vec![ResolvedInput {
        name: "to".into(),
        value: Resolved::Text("ana@example.com".into()),
        source: ValueSource::Arg("email".into()),
    }]
}

fn job(key: &str, start: Start) -> NewJob {
    NewJob {
        org: "acme".into(),
        agent: "support-bot".into(),
        function: "send_email_summary".into(),
        call_id: "c-1".into(),
        tool_call_id: format!("call_{key}"),
        invocation_id: format!("inv_{key}"),
        action: Action::ResendSendEmail,
        connection: "acme-resend".into(),
        inputs: inputs(),
        idempotency_key: format!("tg_{key}"),
        idempotent: false,
        reason: DeferReason::Budget,
        max_attempts: 3,
        hard_timeout: Duration::from_millis(1000),
        retry_window: Duration::ZERO,
        start,
    }
}

fn now() -> Millis {
    now_ms()
}

/// Claim until a job comes or `within` passes.
async fn claim_within(store: &JobStore, owner: &str, within: Duration) -> Option<Job> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(j) = store.claim(owner, now()).await.unwrap() {
            return Some(j);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn get(store: &JobStore, id: &str) -> Job {
    store
        .get(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("job {id} is gone"))
}

async fn nothing_claimable(store: &JobStore, what: &str) {
    assert!(
        store.claim("nobody", now()).await.unwrap().is_none(),
        "{what}"
    );
}

// ---------------------------------------------------------------------------------------
// scenarios

both!(enqueue_claim_finish, enqueue_claim_finish_scenario);
async fn enqueue_claim_finish_scenario(h: Hosts) {
    let s = h.open().await;
    let t = now();
    let j = s.enqueue(job("k1", Start::RunnableAt(t)), t).await.unwrap();
    assert_eq!(
        (j.state, j.attempts, j.runnable_at),
        (JobState::Queued, 0, Some(t))
    );
    assert_eq!(get(&s, &j.id).await.inputs, inputs(), "inputs are kept");
    let again = s.enqueue(job("k1", Start::RunnableAt(t)), t).await.unwrap();
    assert_eq!(again.id, j.id, "one job per action key");
    assert_eq!(s.counts().await.unwrap(), vec![(JobState::Queued, 1)]);

    let c = claim_within(&s, "w1", Duration::from_secs(5))
        .await
        .expect("a runnable job is claimed");
    assert_eq!(c.id, j.id);
    assert_eq!((c.state, c.attempts), (JobState::InFlight, 1));
    assert_eq!(c.lease_owner.as_deref(), Some("w1"));
    let lease = c.lease_until.unwrap() - now();
    let expected = 1000 + LEASE_MARGIN.as_millis() as i64;
    assert!(
        (expected - 2000..=expected).contains(&lease),
        "the lease lasts the hard timeout plus the margin: {lease}"
    );
    assert_eq!(c.inputs, inputs());
    nothing_claimable(&s, "a leased job is not claimed twice").await;

    let ok = Finish::Succeeded {
        message_id: Some("m-1".into()),
    };
    assert!(s.finish(&c.id, "w1", 1, ok.clone(), now()).await.unwrap());
    let done = get(&s, &j.id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.provider_message_id.as_deref(), Some("m-1"));
    assert!(done.inputs.is_empty(), "a sent job keeps no inputs");
    assert!(done.finished_at.is_some() && done.lease_owner.is_none());
    assert!(
        s.finish(&c.id, "w1", 1, ok, now()).await.unwrap(),
        "the same report again counts as the one recorded"
    );
    let other = Finish::Failed {
        error: "HTTP 400".into(),
    };
    assert!(
        !s.finish(&c.id, "w1", 1, other, now()).await.unwrap(),
        "a finished job takes no other report"
    );
    let done = get(&s, &j.id).await;
    assert_eq!(done.state, JobState::Succeeded);
    nothing_claimable(&s, "a finished job is not claimed").await;

    let same = s
        .enqueue(job("k1", Start::RunnableAt(now())), now())
        .await
        .unwrap();
    assert_eq!(
        (same.id.as_str(), same.state),
        (j.id.as_str(), JobState::Succeeded),
        "an action already done is answered by its job"
    );
    assert_eq!(
        s.list(None, Some("acme".into()), 10).await.unwrap().len(),
        1
    );
    assert!(
        s.list(None, Some("other".into()), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.list(Some(JobState::Succeeded), None, 10).await.unwrap()[0].id,
        j.id
    );
    assert!(
        s.list(Some(JobState::Queued), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.counts().await.unwrap(), vec![(JobState::Succeeded, 1)]);
    s.ping().await.unwrap();

    // Newest first, and limited.
    let t2 = now() + 5;
    let k2 = s.enqueue(job("k2", Start::AfterCall), t2).await.unwrap();
    let listed = s.list(None, None, 1).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, k2.id);

    // Pruning finished jobs frees their action key.
    assert_eq!(s.prune(now() + 1_000).await.unwrap(), 1);
    assert!(s.get(&j.id).await.unwrap().is_none());
    assert!(s.get(&k2.id).await.unwrap().is_some(), "pending jobs stay");
    let fresh = s
        .enqueue(job("k1", Start::RunnableAt(now())), now())
        .await
        .unwrap();
    assert_ne!(fresh.id, j.id);
    assert!(s.get("job_does_not_exist").await.unwrap().is_none());
    assert!(s.get("../../etc").await.unwrap().is_none());
    s.close().await;
}

both!(one_claimer_wins, one_claimer_wins_scenario);
async fn one_claimer_wins_scenario(h: Hosts) {
    let a = Arc::new(h.open().await);
    let b = Arc::new(h.open().await);
    let first = a
        .enqueue(job("k0", Start::RunnableAt(now())), now())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store.claim(&format!("w{i}"), now()).await.unwrap()
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        if let Some(j) = t.await.unwrap() {
            won.push(j);
        }
    }
    assert_eq!(won.len(), 1, "exactly one of eight claimers wins: {won:?}");
    assert_eq!(won[0].id, first.id);

    // Many jobs, many claimers on two hosts: each job is claimed exactly once.
    let mut ids = Vec::new();
    for k in 1..=6 {
        let j = b
            .enqueue(job(&format!("k{k}"), Start::RunnableAt(now())), now())
            .await
            .unwrap();
        ids.push(j.id);
    }
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(4);
            while Instant::now() < deadline {
                match store.claim(&format!("x{i}"), now()).await.unwrap() {
                    Some(j) => mine.push(j.id),
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    claimed.sort();
    ids.sort();
    assert_eq!(claimed, ids, "every job once, none twice");
}

both!(lease_expiry, lease_expiry_scenario);
async fn lease_expiry_scenario(h: Hosts) {
    let a = h.open().await;
    let b = h.open().await;
    let short = |key: &str, at: Millis, max_attempts: u32| {
        let mut j = job(key, Start::RunnableAt(at));
        j.hard_timeout = Duration::from_millis(100);
        j.max_attempts = max_attempts;
        j
    };
    let t = now();
    // Claimed in this order: k1, k2, k3.
    let sent = a.enqueue(short("k1", t, 3), t).await.unwrap();
    let unsent = a.enqueue(short("k2", t + 30, 3), t).await.unwrap();
    let last = a.enqueue(short("k3", t + 60, 1), t).await.unwrap();
    let mut leases = std::collections::HashMap::new();
    for _ in 0..3 {
        let c = claim_within(&a, "wa", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c.attempts, 1);
        leases.insert(c.id.clone(), c.lease_until.unwrap());
    }
    assert_eq!(leases.len(), 3);
    // Host a begins sending k1 (a provider without idempotency), never k2, then dies.
    assert!(a.mark_sending(&sent.id, "wa", 1, now()).await.unwrap());
    assert!(
        !a.mark_sending(&sent.id, "wa", 2, now()).await.unwrap(),
        "only the current attempt's holder may send"
    );
    drop(a);
    nothing_claimable(&b, "a live lease blocks other claimers").await;

    let lease_until = *leases.values().max().unwrap();
    let within = Duration::from_millis((lease_until - now()).max(0) as u64)
        + ACK_WAIT
        + Duration::from_secs(5);
    let deadline = Instant::now() + within;
    let mut taken = std::collections::HashMap::new();
    while taken.len() < 2 && Instant::now() < deadline {
        if let Some(j) = b.claim("wb", now()).await.unwrap() {
            assert!(now() > leases[&j.id], "not before its lease lapsed");
            taken.insert(j.id.clone(), j);
        }
    }
    assert_eq!(taken.len(), 2, "lapsed leases are claimable again");
    assert!(
        !taken.contains_key(&last.id),
        "the job out of attempts is not run again"
    );
    let k1 = &taken[&sent.id];
    assert_eq!((k1.attempts, k1.lease_owner.as_deref()), (2, Some("wb")));
    assert!(
        k1.at_least_once,
        "the dead holder had begun sending it, and this provider cannot tell a repeat"
    );
    let k2 = &taken[&unsent.id];
    assert_eq!(k2.attempts, 2);
    assert!(
        !k2.at_least_once,
        "the dead holder never sent it: no duplicate is possible"
    );
    // The job with no attempts left ends dead when its lease lapses.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let j = get(&b, &last.id).await;
        if j.state == JobState::Dead {
            assert!(j.last_error.unwrap().contains("lease lapsed"));
            break;
        }
        assert!(Instant::now() < deadline, "k3 did not end dead: {j:?}");
        let _ = b.claim("wb", now()).await.unwrap();
    }
    let late = Finish::Succeeded { message_id: None };
    assert!(
        !b.finish(&sent.id, "wa", 1, late.clone(), now())
            .await
            .unwrap(),
        "the old holder's late report is fenced off"
    );
    assert!(b.finish(&sent.id, "wb", 2, late, now()).await.unwrap());
    assert_eq!(get(&b, &sent.id).await.state, JobState::Succeeded);
}

both!(backoff_and_not_before, backoff_scenario);
async fn backoff_scenario(h: Hosts) {
    let s = h.open().await;
    let t = now();
    let j = s
        .enqueue(job("k1", Start::RunnableAt(t + 1000)), t)
        .await
        .unwrap();
    nothing_claimable(&s, "not before runnable_at").await;
    let c = claim_within(&s, "w", Duration::from_secs(5)).await.unwrap();
    assert!(now() >= t + 1000, "claimed {} ms early", t + 1000 - now());
    assert_eq!(c.id, j.id);

    let nb = now() + 1000;
    let retry = Finish::Retry {
        not_before: nb,
        error: "HTTP 503".into(),
        possibly_sent: false,
    };
    assert!(s.finish(&j.id, "w", 1, retry, now()).await.unwrap());
    let q = get(&s, &j.id).await;
    assert_eq!(
        (q.state, q.attempts, q.runnable_at),
        (JobState::Queued, 1, Some(nb))
    );
    assert!(!q.at_least_once, "never sent: no duplicate possible");
    assert_eq!(q.last_error.as_deref(), Some("HTTP 503"));
    nothing_claimable(&s, "not before the backoff").await;
    let c = claim_within(&s, "w", Duration::from_secs(5)).await.unwrap();
    assert!(now() >= nb);
    assert_eq!(c.attempts, 2);

    // Handed back unsent (circuit open): the claim does not count.
    let nb2 = now() + 1000;
    assert!(
        s.put_back(&j.id, "w", 2, nb2, "the circuit is open", now())
            .await
            .unwrap()
    );
    assert!(
        !s.put_back(&j.id, "w", 2, nb2, "twice", now())
            .await
            .unwrap(),
        "only the holder hands it back"
    );
    let q = get(&s, &j.id).await;
    assert_eq!((q.state, q.attempts), (JobState::Queued, 1));
    assert_eq!(q.last_error.as_deref(), Some("the circuit is open"));
    nothing_claimable(&s, "not before the put-back time").await;
    let c = claim_within(&s, "w", Duration::from_secs(5)).await.unwrap();
    assert!(now() >= nb2);
    assert_eq!(c.attempts, 2);

    // An attempt that may have reached a provider without idempotency: at least once.
    let retry = Finish::Retry {
        not_before: now() + 100,
        error: "timeout".into(),
        possibly_sent: true,
    };
    assert!(s.finish(&j.id, "w", 2, retry, now()).await.unwrap());
    let q = get(&s, &j.id).await;
    assert!(q.at_least_once);
    assert!(
        !s.cancel_unsent(&j.id, "barge_in", now()).await.unwrap(),
        "what may have been sent cannot be cancelled"
    );
}

both!(retry_after_is_honoured, retry_after_scenario);
async fn retry_after_scenario(h: Hosts) {
    let s = h.open().await;
    let j = s
        .enqueue(job("k1", Start::RunnableAt(now())), now())
        .await
        .unwrap();
    let c = claim_within(&s, "w", Duration::from_secs(5)).await.unwrap();
    // The provider said 429 with Retry-After: 2 s; backoff alone would retry at once.
    let backoff = Backoff {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(1),
        ..Backoff::default()
    };
    let refused = ProviderError {
        kind: FailureKind::Unavailable,
        delivery: Delivery::Answered,
        retryable: true,
        retry_after: Some(Duration::from_millis(2000)),
        http_status: Some(429),
        provider_code: None,
        message: "rate limited".into(),
        fields: Vec::new(),
        body: None,
    };
    let at = now();
    let finish = Finish::from_result(&Err(refused), &backoff, c.attempts, at);
    let Finish::Retry { not_before, .. } = &finish else {
        panic!("a 429 is retried: {finish:?}");
    };
    assert!(*not_before >= at + 2000);
    assert!(s.finish(&j.id, "w", 1, finish, at).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    nothing_claimable(&s, "not before Retry-After").await;
    let c = claim_within(&s, "w", Duration::from_secs(5)).await.unwrap();
    assert!(now() >= at + 2000, "retried {} ms early", at + 2000 - now());
    assert_eq!(c.attempts, 2);
}

both!(max_attempts_then_dead_and_retry, dead_scenario);
async fn dead_scenario(h: Hosts) {
    let s = h.open().await;
    // Kept for an operator's retry (workflow.retry_window_ms); see inputs_scenario.
    let mut two = job("k1", Start::RunnableAt(now()));
    two.max_attempts = 2;
    two.retry_window = Duration::from_secs(3600);
    let j = s.enqueue(two, now()).await.unwrap();
    for attempt in 1..=2 {
        let c = claim_within(&s, "w", Duration::from_secs(5)).await.unwrap();
        assert_eq!(c.attempts, attempt);
        let retry = Finish::Retry {
            not_before: now(),
            error: "HTTP 503".into(),
            possibly_sent: false,
        };
        assert!(s.finish(&j.id, "w", attempt, retry, now()).await.unwrap());
    }
    let dead = get(&s, &j.id).await;
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.last_error.as_deref(), Some("HTTP 503"));
    assert!(dead.finished_at.is_some() && dead.runnable_at.is_none());
    nothing_claimable(&s, "a dead job does not run").await;
    let listed = s.list(Some(JobState::Dead), None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, j.id);
    assert!(s.counts().await.unwrap().contains(&(JobState::Dead, 1)));
    if h.kind == Kind::Nats {
        assert_eq!(
            dead_letters(&h, &j.id).await,
            1,
            "a dead job is on the dead-letter subject"
        );
    }

    let back = s.retry(&j.id, now()).await.unwrap().unwrap().unwrap();
    assert_eq!((back.state, back.attempts), (JobState::Queued, 0));
    assert!(matches!(
        s.retry(&j.id, now()).await.unwrap(),
        Some(Err(RetryRefused::State(JobState::Queued)))
    ));
    assert!(s.retry("job_nope", now()).await.unwrap().is_none());
    let c = claim_within(&s, "w", Duration::from_secs(5))
        .await
        .expect("a retried job runs again");
    assert_eq!((c.id.as_str(), c.attempts), (j.id.as_str(), 1));
    if h.kind == Kind::Nats {
        assert_eq!(dead_letters(&h, &j.id).await, 0, "its dead letter is gone");
    }

    // A live attempt that failed when no attempt is left starts dead.
    let mut spent = job(
        "k2",
        Start::Retry {
            not_before: now(),
            possibly_sent: false,
            error: "HTTP 500".into(),
        },
    );
    spent.max_attempts = 1;
    spent.retry_window = Duration::from_secs(3600);
    let d = s.enqueue(spent, now()).await.unwrap();
    assert_eq!(d.state, JobState::Dead);
    assert!(matches!(
        s.retry(&d.id, now()).await.unwrap(),
        Some(Ok(Job {
            state: JobState::Queued,
            ..
        }))
    ));
}

both!(raw_inputs_cleared_at_every_end, inputs_scenario);
async fn inputs_scenario(h: Hosts) {
    let s = h.open().await;
    let cleared = |j: &Job| j.inputs.is_empty() && j.inputs_cleared;
    let refused =
        |r: Option<Result<Job, RetryRefused>>| matches!(r, Some(Err(RetryRefused::InputsCleared)));
    let end = |attempt: u32, finish: Finish| {
        let s = &s;
        async move {
            let c = claim_within(s, "w", Duration::from_secs(5)).await.unwrap();
            assert_eq!(c.attempts, attempt);
            assert_eq!(c.inputs, inputs(), "a running job has its inputs");
            assert!(s.finish(&c.id, "w", attempt, finish, now()).await.unwrap());
            get(s, &c.id).await
        }
    };

    // Succeeded, failed, dead: no retry window, nothing kept.
    let ok = s
        .enqueue(job("i1", Start::RunnableAt(now())), now())
        .await
        .unwrap();
    assert!(!ok.inputs_cleared && ok.inputs == inputs());
    let ok = end(1, Finish::Succeeded { message_id: None }).await;
    assert_eq!(ok.state, JobState::Succeeded);
    assert!(cleared(&ok), "{ok:?}");

    let failed = s
        .enqueue(job("i2", Start::RunnableAt(now())), now())
        .await
        .unwrap();
    let failed_now = end(
        1,
        Finish::Failed {
            error: "HTTP 422".into(),
        },
    )
    .await;
    assert_eq!(
        (failed_now.id.as_str(), failed_now.state),
        (failed.id.as_str(), JobState::Failed)
    );
    assert!(cleared(&failed_now), "{failed_now:?}");
    assert!(
        refused(s.retry(&failed.id, now()).await.unwrap()),
        "nothing left to send"
    );

    let mut one = job("i3", Start::RunnableAt(now()));
    one.max_attempts = 1;
    s.enqueue(one, now()).await.unwrap();
    let retry = Finish::Retry {
        not_before: now(),
        error: "HTTP 503".into(),
        possibly_sent: false,
    };
    let dead = end(1, retry).await;
    assert_eq!(dead.state, JobState::Dead);
    assert!(cleared(&dead), "{dead:?}");

    // Cancelled before it was sent; and dead from the start (the live attempt was the last).
    let held = s.enqueue(job("i4", Start::AfterCall), now()).await.unwrap();
    assert!(s.cancel_unsent(&held.id, "cancelled", now()).await.unwrap());
    assert!(cleared(&get(&s, &held.id).await));
    let mut spent = job(
        "i5",
        Start::Retry {
            not_before: now(),
            possibly_sent: false,
            error: "HTTP 500".into(),
        },
    );
    spent.max_attempts = 1;
    let spent = s.enqueue(spent, now()).await.unwrap();
    assert_eq!(spent.state, JobState::Dead);
    assert!(cleared(&spent), "{spent:?}");
    assert!(refused(s.retry(&spent.id, now()).await.unwrap()));

    // With a retry window: kept until it passes, then cleared by the housekeeping pass.
    let mut kept = job("i6", Start::RunnableAt(now()));
    kept.retry_window = Duration::from_millis(400);
    let kept = s.enqueue(kept, now()).await.unwrap();
    let failed_kept = end(
        1,
        Finish::Failed {
            error: "HTTP 422".into(),
        },
    )
    .await;
    assert_eq!(failed_kept.id, kept.id);
    assert!(!failed_kept.inputs_cleared && failed_kept.inputs == inputs());
    let finished = failed_kept.finished_at.unwrap();
    assert_eq!(
        s.clear_expired_inputs(finished + 399).await.unwrap(),
        0,
        "within its window"
    );
    assert_eq!(get(&s, &kept.id).await.inputs, inputs());
    assert_eq!(s.clear_expired_inputs(finished + 400).await.unwrap(), 1);
    assert!(cleared(&get(&s, &kept.id).await));
    assert_eq!(
        s.clear_expired_inputs(finished + 400).await.unwrap(),
        0,
        "once"
    );
    assert!(refused(s.retry(&kept.id, now()).await.unwrap()));
}

/// Messages on a job's dead-letter subject, read straight from JetStream.
async fn dead_letters(h: &Hosts, id: &str) -> u64 {
    let client = async_nats::connect(h.nats.as_ref().unwrap().url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let prefix = &h.prefix;
    let stream = js.get_stream(format!("{prefix}_JOBS_DEAD")).await.unwrap();
    match stream
        .get_last_raw_message_by_subject(&format!("{prefix}.jobs.dead.{id}"))
        .await
    {
        Ok(m) => {
            let job: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(job["id"], id);
            assert_eq!(job["state"], "dead");
            assert!(job.get("inputs").is_none(), "no inputs in a dead letter");
            1
        }
        Err(_) => 0,
    }
}

both!(held_jobs_run_after_their_call, held_scenario);
async fn held_scenario(h: Hosts) {
    let s = h.open().await;
    let one = s.enqueue(job("k1", Start::AfterCall), now()).await.unwrap();
    let mut other = job("k2", Start::AfterCall);
    other.call_id = "c-2".into();
    let two = s.enqueue(other, now()).await.unwrap();
    assert_eq!((one.state, one.runnable_at), (JobState::Queued, None));
    nothing_claimable(&s, "a held job waits for its call to end").await;
    assert_eq!(s.release_call("acme", "c-9", now()).await.unwrap(), 0);
    assert_eq!(s.release_call("beta", "c-1", now()).await.unwrap(), 0);
    assert_eq!(s.release_call("acme", "c-1", now()).await.unwrap(), 1);
    let c = claim_within(&s, "w", Duration::from_secs(5)).await.unwrap();
    assert_eq!((c.id.as_str(), c.attempts), (one.id.as_str(), 1));
    assert_eq!(s.release_call("acme", "c-1", now()).await.unwrap(), 0);
    nothing_claimable(&s, "the other call still runs").await;
    assert_eq!(s.release_call("acme", "c-2", now()).await.unwrap(), 1);
    let c = claim_within(&s, "w", Duration::from_secs(5)).await.unwrap();
    assert_eq!(c.id, two.id);
}

both!(held_jobs_of_a_stopped_host_are_released, orphan_scenario);
async fn orphan_scenario(h: Hosts) {
    let a = h.open().await;
    let held = a.enqueue(job("k1", Start::AfterCall), now()).await.unwrap();
    let b = h.open().await;
    if h.kind == Kind::Nats {
        assert_eq!(
            b.release_all_held(now()).await.unwrap(),
            0,
            "the holder is alive: its call may still be running"
        );
    }
    a.close().await;
    drop(a);
    assert_eq!(b.release_all_held(now()).await.unwrap(), 1);
    let c = claim_within(&b, "w", Duration::from_secs(5)).await.unwrap();
    assert_eq!(c.id, held.id);
}

both!(cancel_before_send, cancel_scenario);
async fn cancel_scenario(h: Hosts) {
    let s = h.open().await;
    let held = s.enqueue(job("k1", Start::AfterCall), now()).await.unwrap();
    assert!(s.cancel_unsent(&held.id, "barge_in", now()).await.unwrap());
    let f = get(&s, &held.id).await;
    assert_eq!(
        (f.state, f.last_error.as_deref()),
        (JobState::Failed, Some("barge_in"))
    );
    assert!(f.finished_at.is_some());
    assert_eq!(
        s.release_call("acme", "c-1", now()).await.unwrap(),
        0,
        "a cancelled job is not released"
    );
    assert!(!s.cancel_unsent(&held.id, "again", now()).await.unwrap());

    let runnable = s
        .enqueue(job("k2", Start::RunnableAt(now() + 300)), now())
        .await
        .unwrap();
    assert!(
        s.cancel_unsent(&runnable.id, "barge_in", now())
            .await
            .unwrap()
    );
    let start = |sent| Start::Retry {
        not_before: now() + 60_000,
        possibly_sent: sent,
        error: "x".into(),
    };
    let unsent = s.enqueue(job("k3", start(false)), now()).await.unwrap();
    let sent = s.enqueue(job("k4", start(true)), now()).await.unwrap();
    assert!(
        s.cancel_unsent(&unsent.id, "barge_in", now())
            .await
            .unwrap()
    );
    assert!(!s.cancel_unsent(&sent.id, "barge_in", now()).await.unwrap());
    let live = Start::Live {
        owner: "live:a".into(),
        until: now() + 60_000,
    };
    let live = s.enqueue(job("k5", live), now()).await.unwrap();
    assert_eq!(
        (live.state, live.attempts, live.lease_owner.as_deref()),
        (JobState::InFlight, 1, Some("live:a"))
    );
    assert!(!s.cancel_unsent(&live.id, "barge_in", now()).await.unwrap());
    assert!(
        !s.cancel_unsent("job_nope", "barge_in", now())
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    nothing_claimable(&s, "cancelled jobs never run, a live lease blocks").await;
    // The live request ends: its report closes the job.
    assert!(
        s.finish(
            &live.id,
            "live:a",
            1,
            Finish::Succeeded { message_id: None },
            now()
        )
        .await
        .unwrap()
    );
}

both!(one_action_one_job_across_hosts, idempotency_scenario);
async fn idempotency_scenario(h: Hosts) {
    let a = Arc::new(h.open().await);
    let b = Arc::new(h.open().await);
    let (x, y) = tokio::join!(
        a.enqueue(job("k1", Start::RunnableAt(now())), now()),
        b.enqueue(job("k1", Start::RunnableAt(now())), now()),
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(
        x.id, y.id,
        "the same action deferred by two hosts is one job"
    );
    assert_eq!(a.counts().await.unwrap(), vec![(JobState::Queued, 1)]);
    assert_eq!(b.list(None, None, 10).await.unwrap().len(), 1);

    // Refused definitively; asked again from the other host: queued afresh, same key at the
    // provider, the old job's history kept.
    let c = claim_within(&a, "wa", Duration::from_secs(5))
        .await
        .unwrap();
    let refused = Finish::Failed {
        error: "HTTP 422".into(),
    };
    assert!(a.finish(&c.id, "wa", 1, refused, now()).await.unwrap());
    let fresh = b
        .enqueue(job("k1", Start::RunnableAt(now())), now())
        .await
        .unwrap();
    assert_ne!(fresh.id, x.id);
    assert_eq!(fresh.state, JobState::Queued);
    assert_eq!(
        fresh.idempotency_key, "tg_k1",
        "the provider sees the same key"
    );
    let old = get(&a, &x.id).await;
    assert_eq!(old.state, JobState::Failed);
    assert_eq!(old.idempotency_key, format!("tg_k1#{}", x.id));
    let again = a
        .enqueue(job("k1", Start::RunnableAt(now())), now())
        .await
        .unwrap();
    assert_eq!(again.id, fresh.id);

    // A live request on host a holds the action; host b asking for it gets that job.
    let live = Start::Live {
        owner: "live:a".into(),
        until: now() + 60_000,
    };
    let held = a.enqueue(job("k2", live), now()).await.unwrap();
    let seen = b
        .enqueue(job("k2", Start::RunnableAt(now())), now())
        .await
        .unwrap();
    assert_eq!(seen.id, held.id);
    assert_eq!(seen.lease_owner.as_deref(), Some("live:a"));
    assert_eq!(a.list(None, None, 10).await.unwrap().len(), 3);
}

// A worker whose finish was stored but never answered (NATS went away) sends it again: the
// same end counts as recorded, once; another end, or another attempt's, does not.
both!(a_finish_sent_again_counts_once, finish_again_scenario);
async fn finish_again_scenario(h: Hosts) {
    let s = h.open().await;
    s.enqueue(job("f1", Start::RunnableAt(now())), now())
        .await
        .unwrap();
    let j = claim_within(&s, "w", Duration::from_secs(5)).await.unwrap();
    let retry = Finish::Retry {
        not_before: now(),
        error: "HTTP 503".into(),
        possibly_sent: false,
    };
    assert!(s.finish(&j.id, "w", 1, retry.clone(), now()).await.unwrap());
    assert!(
        s.finish(&j.id, "w", 1, retry.clone(), now()).await.unwrap(),
        "the same end again is the one recorded"
    );
    let failed = Finish::Failed {
        error: "HTTP 400".into(),
    };
    assert!(
        !s.finish(&j.id, "w", 1, failed, now()).await.unwrap(),
        "another end of that attempt is not"
    );
    // The retry runs once more, attempt 2; attempt 1's end no longer matches.
    let again = claim_within(&s, "w2", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((again.id.as_str(), again.attempts), (j.id.as_str(), 2));
    nothing_claimable(&s, "one notice for the retry, not two").await;
    let done = Finish::Succeeded {
        message_id: Some("m-1".into()),
    };
    assert!(!s.finish(&j.id, "w", 1, retry, now()).await.unwrap());
    assert!(s.finish(&j.id, "w2", 2, done.clone(), now()).await.unwrap());
    assert!(s.finish(&j.id, "w2", 2, done, now()).await.unwrap());
    let j = get(&s, &j.id).await;
    assert_eq!((j.state, j.attempts), (JobState::Succeeded, 2));
}

both!(a_restart_loses_nothing_acknowledged, restart_scenario, own);
async fn restart_scenario(mut h: Hosts) {
    let s = h.open().await;
    let mut runnable = Vec::new();
    for k in 0..5 {
        let j = s
            .enqueue(job(&format!("r{k}"), Start::RunnableAt(now())), now())
            .await
            .unwrap();
        runnable.push(j.id);
    }
    let mut held = Vec::new();
    for k in 0..2 {
        let j = s
            .enqueue(job(&format!("h{k}"), Start::AfterCall), now())
            .await
            .unwrap();
        held.push(j.id);
    }
    let retried = claim_within(&s, "w", Duration::from_secs(5)).await.unwrap();
    let retry = Finish::Retry {
        not_before: now() + 300,
        error: "HTTP 503".into(),
        possibly_sent: false,
    };
    assert!(s.finish(&retried.id, "w", 1, retry, now()).await.unwrap());
    let mut all: Vec<String> = runnable.iter().chain(&held).cloned().collect();
    all.sort();
    let mut before = Vec::new();
    for id in &all {
        let j = get(&s, id).await;
        before.push((j.id, j.state, j.attempts, j.runnable_at));
    }

    let s = match h.kind {
        Kind::Sqlite => {
            s.close().await;
            drop(s);
            h.open().await
        }
        Kind::Nats => {
            // The server crashes and comes back on the same store; the store reconnects.
            h.server().kill();
            let down = s.enqueue(job("x1", Start::RunnableAt(now())), now()).await;
            assert!(down.is_err(), "no deferral while NATS is away: {down:?}");
            h.server().spawn();
            let deadline = Instant::now() + Duration::from_secs(20);
            while s.ping().await.is_err() {
                assert!(Instant::now() < deadline, "the store did not reconnect");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            s
        }
    };
    let mut after = Vec::new();
    for id in &all {
        let j = get(&s, id).await;
        after.push((j.id, j.state, j.attempts, j.runnable_at));
    }
    assert_eq!(after, before, "every acknowledged job is back as it was");
    let released = s.release_call("acme", "c-1", now()).await.unwrap()
        + s.release_all_held(now()).await.unwrap();
    assert_eq!(released, 2, "both held jobs are released");
    let mut claimed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while claimed.len() < all.len() && Instant::now() < deadline {
        if let Some(j) = s.claim("w2", now()).await.unwrap() {
            claimed.push(j.id);
        }
    }
    claimed.sort();
    assert_eq!(claimed, all, "every job runs after the restart, once");
}

// ---------------------------------------------------------------------------------------
// the state machine: both backends move a job as the pure transitions say

/// Whether a stored job is where the transitions put it (what a [`Job`] shows of its
/// lifecycle; the flags only the queue reads are taken as said).
fn agrees(job: &Job, l: &Lifecycle, step: &str) {
    let stored = Lifecycle {
        state: job.state,
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        runnable_at: job.runnable_at,
        lease_owner: job.lease_owner.clone(),
        lease_until: job.lease_until,
        hard_timeout_ms: job.hard_timeout_ms,
        last_error: job.last_error.clone(),
        provider_message_id: job.provider_message_id.clone(),
        idempotent: job.idempotent,
        at_least_once: job.at_least_once,
        inputs_cleared: job.inputs_cleared,
        updated_at: job.updated_at,
        finished_at: job.finished_at,
        ..l.clone()
    };
    assert_eq!(
        &stored, l,
        "{step}: stored (left) and the transitions (right) disagree"
    );
}

/// Claim `model`'s job and check it is leased as [`transitions::claim`] says, at the time the
/// backend decided (a NATS claim waits for its notice first).
async fn claim_as_said(
    s: &JobStore,
    model: &Lifecycle,
    owner: &str,
    step: &str,
) -> (Job, Lifecycle) {
    let c = claim_within(s, owner, Duration::from_secs(5))
        .await
        .unwrap();
    let Verdict::Claim(next) = transitions::claim(model, owner, c.updated_at) else {
        panic!("{step}: claimed, but the transitions do not claim it");
    };
    agrees(&c, &next, step);
    (c, next)
}

both!(backends_keep_the_transitions, transitions_scenario);
async fn transitions_scenario(h: Hosts) {
    let s = h.open().await;
    // Runs, is retried, put back, refused, retried by an operator, then succeeds.
    let mut new = job("t1", Start::RunnableAt(now()));
    new.retry_window = Duration::from_secs(60);
    let t = now();
    let j = s.enqueue(new.clone(), t).await.unwrap();
    let mut m = transitions::enqueue(&new, t);
    agrees(&j, &m, "enqueue");
    let (_, next) = claim_as_said(&s, &m, "w", "claim").await;
    m = next;
    let t = now();
    assert!(s.mark_sending(&j.id, "w", 1, t).await.unwrap());
    m = transitions::mark_sending(&m, "w", 1, t).unwrap();
    agrees(&get(&s, &j.id).await, &m, "mark_sending");
    let t = now();
    let retry = Finish::Retry {
        not_before: t,
        error: "HTTP 503".into(),
        possibly_sent: true,
    };
    let late = Finish::Succeeded { message_id: None };
    assert!(
        !s.finish(&j.id, "intruder", 1, late.clone(), t)
            .await
            .unwrap()
    );
    assert!(transitions::finish(&m, "intruder", 1, &late, t).is_none());
    assert!(!transitions::recorded(&m, 1, &late));
    assert!(s.finish(&j.id, "w", 1, retry.clone(), t).await.unwrap());
    m = transitions::finish(&m, "w", 1, &retry, t).unwrap();
    agrees(&get(&s, &j.id).await, &m, "finish (retry)");
    let (_, next) = claim_as_said(&s, &m, "w", "claim after a retry").await;
    m = next;
    let t = now();
    assert!(
        s.put_back(&j.id, "w", 2, t, "circuit open", t)
            .await
            .unwrap()
    );
    m = transitions::put_back(&m, "w", 2, t, "circuit open", t).unwrap();
    agrees(&get(&s, &j.id).await, &m, "put_back");
    let (_, next) = claim_as_said(&s, &m, "w", "claim after a put back").await;
    m = next;
    let t = now();
    let refused = Finish::Failed {
        error: "HTTP 422".into(),
    };
    assert!(s.finish(&j.id, "w", 2, refused.clone(), t).await.unwrap());
    m = transitions::finish(&m, "w", 2, &refused, t).unwrap();
    agrees(&get(&s, &j.id).await, &m, "finish (failed)");
    assert!(s.finish(&j.id, "w", 2, refused.clone(), t).await.unwrap());
    assert!(
        transitions::recorded(&m, 2, &refused),
        "the same end again counts"
    );
    let t = now();
    let back = s.retry(&j.id, t).await.unwrap().unwrap().unwrap();
    m = transitions::retry(&m, t).unwrap();
    agrees(&back, &m, "retry");
    let (_, next) = claim_as_said(&s, &m, "w", "claim after an operator's retry").await;
    m = next;
    let t = now();
    let done = Finish::Succeeded {
        message_id: Some("msg-1".into()),
    };
    assert!(s.finish(&j.id, "w", 1, done.clone(), t).await.unwrap());
    m = transitions::finish(&m, "w", 1, &done, t).unwrap();
    agrees(&get(&s, &j.id).await, &m, "finish (succeeded)");
    assert_eq!(
        s.retry(&j.id, now()).await.unwrap().unwrap().unwrap_err(),
        transitions::retry(&m, now()).unwrap_err()
    );

    // Held for its call, released when the call ends.
    let new = job("t2", Start::AfterCall);
    let t = now();
    let j = s.enqueue(new.clone(), t).await.unwrap();
    let mut m = transitions::enqueue(&new, t);
    agrees(&j, &m, "enqueue (held)");
    let t = now();
    assert_eq!(s.release_call("acme", "c-1", t).await.unwrap(), 1);
    m = transitions::release(&m, t).unwrap();
    agrees(&get(&s, &j.id).await, &m, "release");
    let (_, next) = claim_as_said(&s, &m, "w", "claim after the call").await;
    m = next;
    let t = now();
    assert!(s.finish(&j.id, "w", 1, done.clone(), t).await.unwrap());
    m = transitions::finish(&m, "w", 1, &done, t).unwrap();
    agrees(&get(&s, &j.id).await, &m, "finish (held job)");

    // Retried after a live attempt that never reached the provider: cancelled unsent.
    let new = job(
        "t3",
        Start::Retry {
            not_before: now() + 60_000,
            possibly_sent: false,
            error: "unreachable".into(),
        },
    );
    let t = now();
    let j = s.enqueue(new.clone(), t).await.unwrap();
    let m = transitions::enqueue(&new, t);
    agrees(&j, &m, "enqueue (retry)");
    let t = now();
    assert!(s.cancel_unsent(&j.id, "barge_in", t).await.unwrap());
    let m = transitions::cancel_unsent(&m, "barge_in", t).unwrap();
    agrees(&get(&s, &j.id).await, &m, "cancel_unsent");

    // Leased by a live request, which reports the end itself.
    let new = job(
        "t4",
        Start::Live {
            owner: "live:a".into(),
            until: now() + 60_000,
        },
    );
    let t = now();
    let j = s.enqueue(new.clone(), t).await.unwrap();
    let m = transitions::enqueue(&new, t);
    agrees(&j, &m, "enqueue (live)");
    assert!(!s.cancel_unsent(&j.id, "barge_in", now()).await.unwrap());
    assert!(transitions::cancel_unsent(&m, "barge_in", now()).is_none());
    let t = now();
    assert!(s.finish(&j.id, "live:a", 1, done.clone(), t).await.unwrap());
    let m = transitions::finish(&m, "live:a", 1, &done, t).unwrap();
    agrees(&get(&s, &j.id).await, &m, "finish (live)");
    s.close().await;
}

// ---------------------------------------------------------------------------------------
// NATS only

mod nats_only {
    use super::*;
    use toolgate::config::Secret;
    use toolgate::storage::StoreError;

    #[tokio::test]
    async fn nats_unreachable_at_start_is_a_clear_error_without_secrets() {
        let url = format!("nats://127.0.0.1:{}", free_port());
        let mut options = NatsOptions::new(vec![url.clone()], PREFIX);
        options.auth = NatsAuth::Token(Secret::new("tok-s3cr3t-value"));
        options.connect_timeout = Duration::from_secs(2);
        let started = Instant::now();
        let err = match JobStore::open_nats(options).await {
            Ok(_) => panic!("nothing listens on {url}"),
            Err(e) => e,
        };
        assert!(started.elapsed() < Duration::from_secs(10));
        let msg = err.to_string();
        assert!(msg.contains(&url), "the error names the server: {msg}");
        assert!(msg.contains("cannot reach NATS"), "{msg}");
        assert!(
            !msg.contains("tok-s3cr3t-value"),
            "no secret in errors: {msg}"
        );
    }

    #[tokio::test]
    async fn fallback_to_sqlite_when_nats_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let storage = toolgate::config::StorageSettings {
            backend: "nats".into(),
            path: dir.path().join("jobs.db"),
            min_free_bytes: 0,
            nats: Some(toolgate::config::NatsSettings {
                urls: vec![format!("nats://127.0.0.1:{}", free_port())],
                stream_prefix: PREFIX.into(),
                replicas: 1,
                auth: NatsAuth::None,
                fallback_sqlite: true,
            }),
        };
        let store = JobStore::open_configured(&storage, ACK_WAIT).await.unwrap();
        assert_eq!(store.backend(), "sqlite");
        store
            .enqueue(job("k1", Start::RunnableAt(now())), now())
            .await
            .unwrap();
        let mut strict = storage.clone();
        strict.nats.as_mut().unwrap().fallback_sqlite = false;
        let err = match JobStore::open_configured(&strict, ACK_WAIT).await {
            Ok(_) => panic!("no fallback was configured"),
            Err(e) => e,
        };
        assert!(matches!(err, StoreError::Nats(_)), "{err}");
    }

    #[tokio::test]
    async fn credentials_are_used_and_a_wrong_token_is_refused_without_showing_it() {
        let Some(server) = NatsServer::start(&["--auth", "right-token-123"]) else {
            return;
        };
        let mut options = NatsOptions::new(vec![server.url()], PREFIX);
        options.connect_timeout = Duration::from_secs(2);
        options.auth = NatsAuth::Token(Secret::new("wrong-token-456"));
        let err = match JobStore::open_nats(options.clone()).await {
            Ok(_) => panic!("a wrong token is refused"),
            Err(e) => e.to_string(),
        };
        assert!(!err.contains("wrong-token-456"), "{err}");
        options.auth = NatsAuth::Token(Secret::new("right-token-123"));
        let deadline = Instant::now() + Duration::from_secs(10);
        let store = loop {
            match JobStore::open_nats(options.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert_eq!(store.backend(), "nats");
        store.ping().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_away_fails_new_deferrals_and_reconnects() {
        let Some(mut h) = Hosts::new_own(Kind::Nats, PREFIX) else {
            return;
        };
        let s = h.open().await;
        let kept = s
            .enqueue(job("k1", Start::RunnableAt(now())), now())
            .await
            .unwrap();
        h.server().terminate();
        let started = Instant::now();
        let down = s.enqueue(job("k2", Start::RunnableAt(now())), now()).await;
        assert!(
            matches!(down, Err(StoreError::Nats(_))),
            "an enqueue while NATS is away fails: {down:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "and fails promptly: {:?}",
            started.elapsed()
        );
        assert!(s.ping().await.is_err(), "readiness reports it");
        h.server().spawn();
        let deadline = Instant::now() + Duration::from_secs(20);
        let back = loop {
            match s.enqueue(job("k3", Start::RunnableAt(now())), now()).await {
                Ok(j) => break j,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no reconnect: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        // The refused enqueue left nothing that runs; the acknowledged ones run once.
        let mut claimed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(j) = s.claim("w", now()).await.unwrap() {
                claimed.push(j.id);
            }
        }
        claimed.sort();
        let mut want = vec![kept.id, back.id];
        want.sort();
        assert_eq!(claimed, want);
    }

    /// Counts per state (each `/metrics` scrape) come from an index that follows the bucket,
    /// read their own writes and another host's, and stay right when records are removed
    /// without a tombstone (pruning).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_come_from_the_state_index_and_follow_every_change() {
        /// Counts equal `want` every time they are asked, until the index has answered one
        /// (within `within`: the first count starts it, a disagreement rebuilds it at most
        /// every 10 s; meanwhile counts read every job).
        async fn counts_are(s: &JobStore, want: &[(JobState, u64)], within: Duration) {
            let from_index = s.counts_from_index();
            let deadline = Instant::now() + within;
            loop {
                assert_eq!(s.counts().await.unwrap(), want);
                if s.counts_from_index() > from_index {
                    return;
                }
                assert!(Instant::now() < deadline, "the index never answered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let Some(h) = Hosts::new(Kind::Nats, PREFIX) else {
            return;
        };
        let a = h.open().await;
        let b = h.open().await;
        for k in 0..30 {
            a.enqueue(job(&format!("c{k}"), Start::RunnableAt(now())), now())
                .await
                .unwrap();
        }
        let soon = Duration::from_secs(5);
        counts_are(&a, &[(JobState::Queued, 30)], soon).await;
        for _ in 0..10 {
            let j = claim_within(&b, "w", Duration::from_secs(5)).await.unwrap();
            let ok = Finish::Succeeded { message_id: None };
            assert!(b.finish(&j.id, "w", 1, ok, now()).await.unwrap());
            // Host a counts host b's writes at once.
        }
        assert_eq!(
            a.counts().await.unwrap(),
            vec![(JobState::Queued, 20), (JobState::Succeeded, 10)],
        );
        counts_are(
            &a,
            &[(JobState::Queued, 20), (JobState::Succeeded, 10)],
            soon,
        )
        .await;
        // Pruning purges records without a tombstone: the counts drop them at once, and the
        // index is rebuilt.
        assert_eq!(b.prune(now() + 1_000).await.unwrap(), 10);
        counts_are(&a, &[(JobState::Queued, 20)], Duration::from_secs(30)).await;
        assert_eq!(b.counts_from_index(), 0, "b never counted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sweep_republishes_a_lost_notice() {
        let Some(h) = Hosts::new(Kind::Nats, PREFIX) else {
            return;
        };
        let s = h.open().await;
        let j = s
            .enqueue(job("k1", Start::RunnableAt(now())), now())
            .await
            .unwrap();
        // Lose the notice, as a host dying between two writes would.
        let client = async_nats::connect(h.nats.as_ref().unwrap().url())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_stream(format!("{}_JOBS", h.prefix))
            .await
            .unwrap()
            .purge()
            .await
            .unwrap();
        nothing_claimable(&s, "no notice, no claim").await;
        assert_eq!(s.sweep(now()).await.unwrap(), 0, "too young to be lost");
        assert_eq!(s.sweep(now() + 60_000).await.unwrap(), 1);
        let c = claim_within(&s, "w", Duration::from_secs(5)).await.unwrap();
        assert_eq!(c.id, j.id);
    }
}
