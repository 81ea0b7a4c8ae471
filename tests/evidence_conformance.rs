//! One suite of evidence scenarios run against both storage backends (SPEC §6 and §10): the
//! embedded SQLite file, and NATS JetStream (the evidence stream, materialized into each
//! host's SQLite file). Every scenario in `both!` runs twice, as `<scenario>::sqlite` and
//! `<scenario>::nats`; the `nats_only` module covers what only NATS has: several hosts
//! sharing one stream (and one file), a server killed and restarted, a server that is gone,
//! an idle host, throughput and lag (printed), and two real `toolgate serve` processes where a
//! call served by one is read through the other's admin API.
//!
//! The NATS cases start their own `nats-server -js` on a free loopback port with a temporary
//! store directory. Without `nats-server` they are skipped with a note, unless
//! `TOOLGATE_REQUIRE_NATS=1` (CI), which makes them fail instead.

mod common;
mod nats_support;

use std::time::{Duration, Instant};

use toolgate::call_state::Entry;
use toolgate::clock::Millis;
use toolgate::evidence::store::{EvidenceStore, Query};
use toolgate::evidence::{
    CallEnd, CallStart, CallTurn, Event, Final, Invocation, SourceType, Timeline,
};
use toolgate::protocol::Role;
use toolgate::storage::nats::NatsOptions;

use nats_support::{Hosts, Kind, NatsServer, both, open_until_up, unique_prefix};

const PREFIX: &str = "TGEVID";
const RETAIN: Duration = Duration::from_secs(30 * 86_400);

/// The evidence store on the hosts of the shared harness.
trait EvidenceHosts {
    fn options(&self) -> NatsOptions;
    /// The store of host `name` (its own evidence file). SQLite has one host.
    async fn open(&self, name: &str) -> EvidenceStore;
}

impl EvidenceHosts for Hosts {
    fn options(&self) -> NatsOptions {
        NatsOptions {
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            ..self.nats_options()
        }
    }

    async fn open(&self, name: &str) -> EvidenceStore {
        let path = self.dir.path().join(format!("{name}-evidence.db"));
        match self.kind {
            Kind::Sqlite => EvidenceStore::open(&path, Duration::ZERO).unwrap(),
            Kind::Nats => {
                let options = self.options();
                let s = open_until_up("evidence store", || {
                    EvidenceStore::open_nats(&path, Duration::ZERO, &options, RETAIN)
                })
                .await;
                assert_eq!(s.backend(), "nats");
                s
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// events

fn inv(org: &str, id: &str, call: &str, at: Millis, function: &str, status: &str) -> Invocation {
    Invocation {
        invocation_id: id.into(),
        source_type: SourceType::Agent,
        parent_invocation_id: None,
        org_id: org.into(),
        call_id: call.into(),
        agent_id: "bot".into(),
        function: function.into(),
        action: Some("resend.send_email".into()),
        connection_id: Some("resend".into()),
        channel: None,
        received_at: at,
        status: status.into(),
        answered_status: status.into(),
        is_final: status != "deferred",
        final_at: None,
        error_code: None,
        error_message: None,
        missing_fields: Vec::new(),
        guards: Vec::new(),
        inputs_redacted: Default::default(),
        request_payload_redacted: None,
        response_payload_redacted: None,
        provider_message_id: None,
        latency_ms: Some(12),
        timeline: Timeline {
            answered_ms: Some(40),
            ..Timeline::default()
        },
        workflow_job_id: (status == "deferred").then(|| format!("job_{id}")),
        deferral_reason: (status == "deferred").then(|| "budget".into()),
        at_least_once: false,
        cancelled: None,
        transcript_context: Vec::new(),
        arguments_redacted: None,
        session_redacted: None,
    }
}

fn fin(id: &str, status: &str, at: Millis) -> Final {
    Final {
        job_id: format!("job_{id}"),
        invocation_id: id.into(),
        status: status.into(),
        error_code: None,
        error_message: None,
        provider_message_id: Some("msg-1".into()),
        at_least_once: false,
        cancelled: None,
        at,
    }
}

fn started(org: &str, call: &str, at: Millis) -> Event {
    Event::CallStarted(CallStart {
        org: org.into(),
        call_id: call.into(),
        agent: "bot".into(),
        caller: Some("+4915*******89".into()),
        channel: "v1".into(),
        at,
    })
}

fn turn(org: &str, call: &str, started_at: Millis, ms: u64, text: &str) -> Event {
    Event::History(CallTurn {
        org: org.into(),
        call_id: call.into(),
        turn: Entry::Turn {
            role: Role::Caller,
            text: text.into(),
            is_final: true,
            at_ms: ms as u32,
        },
        started_at,
    })
}

fn ended(org: &str, call: &str, at: Millis) -> Event {
    Event::CallEnded(CallEnd {
        org: org.into(),
        call_id: call.into(),
        reason: "hangup".into(),
        at,
    })
}

/// One complete call: start, two turns, three tool calls (one deferred and finished later by
/// its job), end. Call ids with dots and spaces prove the subject encoding.
fn a_call(store: &EvidenceStore, org: &str, call: &str, t0: Millis) {
    store.submit(started(org, call, t0));
    store.submit(turn(org, call, t0, 100, "send me the summary please"));
    store.submit(Event::Invocation(Box::new(inv(
        org,
        &format!("inv_{org}_{call}_1"),
        call,
        t0 + 200,
        "lookup",
        "succeeded",
    ))));
    store.submit(Event::Invocation(Box::new(inv(
        org,
        &format!("inv_{org}_{call}_2"),
        call,
        t0 + 300,
        "send_summary",
        "deferred",
    ))));
    store.submit(turn(org, call, t0, 400, "thanks"));
    store.submit(Event::Invocation(Box::new(inv(
        org,
        &format!("inv_{org}_{call}_3"),
        call,
        t0 + 500,
        "lookup",
        "failed",
    ))));
    store.submit(ended(org, call, t0 + 600));
    store.submit(Event::Final(Box::new(fin(
        &format!("inv_{org}_{call}_2"),
        "succeeded",
        t0 + 900,
    ))));
}

// ---------------------------------------------------------------------------------------
// scenarios on both backends

async fn records_are_read_back(h: Hosts) {
    let store = h.open("a").await;
    let t0 = 1_800_000_000_000;
    a_call(&store, "acme", "call.1 x", t0);
    a_call(&store, "acme", "call-2", t0 + 10_000);
    a_call(&store, "other", "call-2", t0 + 20_000);
    store.flush().await;
    assert_eq!(store.dropped(), 0);

    // By id, the deferred one with its job's end merged in.
    let one = store
        .invocation("inv_acme_call.1 x_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (one.function.as_str(), one.status.as_str()),
        ("lookup", "succeeded")
    );
    let deferred = store
        .invocation("inv_acme_call.1 x_2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deferred.answered_status, "deferred");
    assert_eq!(
        (
            deferred.status.as_str(),
            deferred.is_final,
            deferred.final_at
        ),
        ("succeeded", true, Some(t0 + 900))
    );
    assert_eq!(deferred.provider_message_id.as_deref(), Some("msg-1"));
    assert!(store.invocation("inv_nope").await.unwrap().is_none());

    // Filters.
    let q = |f: &dyn Fn(&mut Query)| {
        let mut q = Query {
            limit: 100,
            ..Query::default()
        };
        f(&mut q);
        q
    };
    let count = |p: toolgate::evidence::store::Page| p.invocations.len();
    assert_eq!(count(store.invocations(q(&|_| {})).await.unwrap()), 9);
    assert_eq!(
        count(
            store
                .invocations(q(&|q| q.org = Some("acme".into())))
                .await
                .unwrap()
        ),
        6
    );
    assert_eq!(
        count(
            store
                .invocations(q(&|q| {
                    q.org = Some("acme".into());
                    q.call_id = Some("call-2".into());
                }))
                .await
                .unwrap()
        ),
        3
    );
    assert_eq!(
        count(
            store
                .invocations(q(&|q| q.function = Some("lookup".into())))
                .await
                .unwrap()
        ),
        6
    );
    // The status filter reads the final status: nothing is still `deferred`.
    assert_eq!(
        count(
            store
                .invocations(q(&|q| q.status = Some("deferred".into())))
                .await
                .unwrap()
        ),
        0
    );
    assert_eq!(
        count(
            store
                .invocations(q(&|q| q.status = Some("succeeded".into())))
                .await
                .unwrap()
        ),
        6
    );
    assert_eq!(
        count(
            store
                .invocations(q(&|q| q.since = Some(t0 + 10_000)))
                .await
                .unwrap()
        ),
        6
    );

    // Paging: newest first, nothing skipped or repeated.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .invocations(Query {
                limit: 2,
                cursor: cursor.take(),
                ..Query::default()
            })
            .await
            .unwrap();
        seen.extend(page.invocations.into_iter().map(|i| i.received_at));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 9);
    assert!(seen.windows(2).all(|w| w[0] >= w[1]), "{seen:?}");

    // A call's history: one timeline, in order.
    let call = store.call(None, "call.1 x").await.unwrap().unwrap();
    assert_eq!(
        (call.org.as_str(), call.started_at, call.ended_at),
        ("acme", t0, Some(t0 + 600))
    );
    let kinds: Vec<&str> = call
        .timeline
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "session.start",
            "turn",
            "tool.call",
            "tool.result",
            "tool.call",
            "tool.result",
            "turn",
            "tool.call",
            "tool.result",
            "session.end",
            "job.outcome"
        ]
    );
    assert_eq!(call.invocations.len(), 3);
    // The same call id in two orgs: an org-scoped read sees its own.
    let other = store
        .call(Some("other".into()), "call-2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.org, "other");
    assert!(
        store
            .call(Some("nobody".into()), "call-2")
            .await
            .unwrap()
            .is_none()
    );
    store.close().await;
}
both!(records_are_read_back, records_are_read_back);

async fn a_later_record_replaces_an_earlier_one(h: Hosts) {
    let store = h.open("a").await;
    // The live request ended after `deferred` was answered: its record is written again.
    let mut first = inv("acme", "inv_r", "c1", 1_000, "send", "deferred");
    store.submit(Event::Invocation(Box::new(first.clone())));
    first.latency_ms = Some(2_500);
    first.error_message = Some("slow".into());
    store.submit(Event::Invocation(Box::new(first)));
    store.flush().await;
    let r = store.invocation("inv_r").await.unwrap().unwrap();
    assert_eq!(r.latency_ms, Some(2_500));
    assert_eq!(r.status, "deferred");
    // Its job ends: every call answered with that job gets the end.
    store.submit(Event::Final(Box::new(fin("inv_r", "failed", 5_000))));
    store.flush().await;
    let r = store.invocation("inv_r").await.unwrap().unwrap();
    assert_eq!((r.status.as_str(), r.is_final), ("failed", true));
    store.close().await;
}
both!(
    a_later_record_replaces_an_earlier_one,
    a_later_record_replaces_an_earlier_one
);

async fn prune_removes_what_is_older_than_the_cut(h: Hosts) {
    let store = h.open("a").await;
    a_call(&store, "acme", "old", 1_000);
    a_call(&store, "acme", "new", 100_000);
    store.flush().await;
    assert!(store.prune(50_000).await.unwrap() >= 4);
    assert!(store.call(None, "old").await.unwrap().is_none());
    assert!(store.invocation("inv_acme_old_1").await.unwrap().is_none());
    assert_eq!(
        store
            .call(None, "new")
            .await
            .unwrap()
            .unwrap()
            .invocations
            .len(),
        3
    );
    store.close().await;
}
both!(
    prune_removes_what_is_older_than_the_cut,
    prune_removes_what_is_older_than_the_cut
);

async fn a_reopened_store_has_everything_once(h: Hosts) {
    let store = h.open("a").await;
    a_call(&store, "acme", "c1", 1_000);
    store.flush().await;
    store.close().await;
    drop(store);
    let again = h.open("a").await;
    a_call(&again, "acme", "c2", 2_000);
    again.flush().await;
    for call in ["c1", "c2"] {
        let c = again.call(None, call).await.unwrap().unwrap();
        assert_eq!(c.timeline.len(), 11, "{call}: {:?}", c.timeline);
        assert_eq!(c.invocations.len(), 3);
    }
    again.close().await;
}
both!(
    a_reopened_store_has_everything_once,
    a_reopened_store_has_everything_once
);

// ---------------------------------------------------------------------------------------
// NATS only

mod nats_only {
    use super::*;

    fn hosts() -> Option<Hosts> {
        Hosts::new(Kind::Nats, PREFIX)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn written_on_one_host_read_on_another() {
        let Some(h) = hosts() else { return };
        let a = h.open("a").await;
        let b = h.open("b").await;
        a_call(&a, "acme", "served-by-a", 1_000);
        a.flush().await;
        b.flush().await;
        let call = b.call(None, "served-by-a").await.unwrap().unwrap();
        assert_eq!(call.invocations.len(), 3);
        assert_eq!(
            b.invocation("inv_acme_served-by-a_2")
                .await
                .unwrap()
                .unwrap()
                .status,
            "succeeded"
        );
        // The other way round, and a job finished on B for a call served by A.
        a.submit(Event::Invocation(Box::new(inv(
            "acme", "inv_x", "c9", 5_000, "send", "deferred",
        ))));
        a.flush().await;
        b.submit(Event::Final(Box::new(fin("inv_x", "succeeded", 6_000))));
        b.flush().await;
        a.flush().await;
        assert_eq!(
            a.invocation("inv_x").await.unwrap().unwrap().status,
            "succeeded"
        );
        // A host that joins later reads the whole stream.
        let c = h.open("c").await;
        c.flush().await;
        assert!(c.call(None, "served-by-a").await.unwrap().is_some());
        assert_eq!(
            c.invocation("inv_x").await.unwrap().unwrap().status,
            "succeeded"
        );
        assert_eq!(c.applied_sequence(), a.applied_sequence());
        for s in [a, b, c] {
            assert_eq!(s.dropped(), 0);
            s.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_sharing_one_file_apply_each_event_once() {
        // A sidecar and a `toolgate worker` started with one config share the evidence file:
        // both follow the stream into it.
        let Some(h) = hosts() else { return };
        let sidecar = h.open("shared").await;
        let worker = h.open("shared").await;
        a_call(&sidecar, "acme", "c1", 1_000);
        a_call(&worker, "acme", "c2", 2_000);
        sidecar.flush().await;
        worker.flush().await;
        sidecar.flush().await;
        for s in [&sidecar, &worker] {
            for call in ["c1", "c2"] {
                let c = s.call(None, call).await.unwrap().unwrap();
                assert_eq!(c.timeline.len(), 11, "{call}: {:?}", c.timeline);
            }
        }
        sidecar.close().await;
        worker.close().await;
    }

    /// Evidence on NATS is published from a thread of its own: with the runtime that submits
    /// the events (the one serving tool calls) blocked solid, they still reach the stream.
    #[tokio::test(flavor = "current_thread")]
    async fn publishing_needs_no_time_on_the_callers_runtime() {
        let Some(h) = hosts() else { return };
        let a = h.open("a").await;
        a_call(&a, "acme", "c1", 1_000);
        let url = h.nats.as_ref().unwrap().url();
        let stream = format!("{}_EVIDENCE", h.prefix);
        // This thread, the only one of the test's runtime, now waits without yielding.
        let seen = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let mut s = js.get_stream(&stream).await.unwrap();
                    let n = s.info().await.unwrap().state.messages;
                    if n >= 8 || Instant::now() > deadline {
                        return n;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .join()
        .unwrap();
        assert!(
            seen >= 8,
            "only {seen} events reached the stream while the caller's runtime was blocked"
        );
        a.flush().await;
        a.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_follows_a_stream_created_again_from_its_start() {
        let Some(h) = hosts() else { return };
        let a = h.open("a").await;
        a_call(&a, "acme", "c1", 1_000);
        a.flush().await;
        let was = a.applied_sequence();
        assert!(was >= 8, "{was}");
        a.close().await;
        drop(a);
        // An operator deletes the stream; the next start creates it afresh.
        let client = async_nats::connect(h.nats.as_ref().unwrap().url())
            .await
            .unwrap();
        async_nats::jetstream::new(client)
            .delete_stream(format!("{}_EVIDENCE", h.prefix))
            .await
            .unwrap();
        let a = h.open("a").await;
        assert_eq!(a.applied_sequence(), 0, "the position starts over");
        a.submit(Event::Invocation(Box::new(inv(
            "acme",
            "inv_new",
            "c2",
            5_000,
            "f",
            "succeeded",
        ))));
        a.flush().await;
        assert!(a.invocation("inv_new").await.unwrap().is_some());
        // What the file held stays.
        assert!(a.call(None, "c1").await.unwrap().is_some());
        a.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_server_loses_nothing_acknowledged() {
        let Some(mut h) = Hosts::new_own(Kind::Nats, PREFIX) else {
            return;
        };
        let a = h.open("a").await;
        for i in 0..200u32 {
            a.submit(Event::Invocation(Box::new(inv(
                "acme",
                &format!("inv_k{i:04}"),
                "killed",
                1_000 + Millis::from(i),
                "f",
                "succeeded",
            ))));
        }
        a.flush().await;
        assert_eq!(a.dropped(), 0, "every event acknowledged before the kill");
        h.server().kill();
        h.server().spawn();
        // A new host reads all of it from the restarted server.
        let b = h.open("b").await;
        b.flush().await;
        let page = b
            .invocations(Query {
                call_id: Some("killed".into()),
                limit: 1_000,
                ..Query::default()
            })
            .await
            .unwrap();
        assert_eq!(page.invocations.len(), 200);
        // The first host carries on once its connection is back: what it writes now reaches
        // both, and its own copy resumes where it was.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        loop {
            n += 1;
            a.submit(Event::Invocation(Box::new(inv(
                "acme",
                &format!("inv_after{n}"),
                "after",
                9_000 + n,
                "f",
                "succeeded",
            ))));
            a.flush().await;
            b.flush().await;
            let id = format!("inv_after{n}");
            if a.invocation(&id).await.unwrap().is_some()
                && b.invocation(&id).await.unwrap().is_some()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the first host did not recover after the restart"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mine = a
            .invocations(Query {
                call_id: Some("killed".into()),
                limit: 1_000,
                ..Query::default()
            })
            .await
            .unwrap();
        assert_eq!(mine.invocations.len(), 200);
        a.close().await;
        b.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_gone_never_blocks_submit_and_loss_is_counted() {
        let Some(mut h) = Hosts::new_own(Kind::Nats, PREFIX) else {
            return;
        };
        let a = h.open("a").await;
        a_call(&a, "acme", "before", 1_000);
        a.flush().await;
        h.server().kill();
        let t = Instant::now();
        let n = 70_000u32;
        for i in 0..n {
            a.submit(turn("acme", "during", 2_000, u64::from(i), "hello"));
        }
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "submitting {n} events took {took:?}"
        );
        // More than the queue holds: the rest is counted at once.
        assert!(a.dropped() > 0, "a full queue counts what it drops");
        // flush and close are bounded too.
        let t = Instant::now();
        a.flush().await;
        a.close().await;
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(40),
            "flush and close took {took:?}"
        );
        // What was read before stays readable.
        assert!(a.call(None, "before").await.unwrap().is_some());
        assert!(a.dropped() > u64::from(n) / 2, "dropped {}", a.dropped());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_unreachable_at_open_is_a_clear_error() {
        let port = nats_support::free_port();
        let dir = tempfile::tempdir().unwrap();
        let options = NatsOptions {
            connect_timeout: Duration::from_millis(500),
            ..NatsOptions::new(vec![format!("nats://127.0.0.1:{port}")], PREFIX)
        };
        let t = Instant::now();
        let err = match EvidenceStore::open_nats(
            &dir.path().join("e.db"),
            Duration::ZERO,
            &options,
            RETAIN,
        )
        .await
        {
            Ok(_) => panic!("opened without a server"),
            Err(e) => e.to_string(),
        };
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(
            err.contains(&format!("cannot reach NATS at nats://127.0.0.1:{port}")),
            "{err}"
        );
    }

    /// A host that has read nothing for longer than a pull's expiry (30 s) still follows the
    /// stream (nats-server 2.9 can leave an expired pull unanswered), and one event's way from
    /// one host to another is measured.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_host_still_follows_the_stream() {
        let Some(h) = hosts() else { return };
        let a = h.open("a").await;
        let b = h.open("b").await;
        tokio::time::sleep(Duration::from_secs(35)).await;
        let mut lags = Vec::new();
        for i in 0..20 {
            let id = format!("inv_idle{i}");
            let t = Instant::now();
            a.submit(Event::Invocation(Box::new(inv(
                "acme",
                &id,
                "idle",
                1_000,
                "f",
                "succeeded",
            ))));
            while b.invocation(&id).await.unwrap().is_none() {
                assert!(
                    t.elapsed() < Duration::from_secs(15),
                    "B stopped following the stream"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            lags.push(t.elapsed());
        }
        lags.sort();
        eprintln!(
            "evidence from one host to another: median {:?}, max {:?}",
            lags[lags.len() / 2],
            lags[lags.len() - 1]
        );
        a.close().await;
        b.close().await;
    }

    /// Throughput through JetStream with a host reading it back: printed, not asserted (a
    /// shared CI machine).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throughput_is_reported() {
        let Some(h) = hosts() else { return };
        let a = h.open("a").await;
        let b = h.open("b").await;
        let n = 20_000u32;
        let t = Instant::now();
        for i in 0..n {
            a.submit(Event::Invocation(Box::new(inv(
                "acme",
                &format!("inv_t{i:06}"),
                &format!("call{}", i / 10),
                1_000 + Millis::from(i),
                "f",
                "succeeded",
            ))));
        }
        a.flush().await;
        let published = t.elapsed();
        b.flush().await;
        let applied = t.elapsed();
        assert_eq!(a.dropped(), 0);
        let page = b
            .invocations(Query {
                limit: 1,
                cursor: None,
                ..Query::default()
            })
            .await
            .unwrap();
        assert_eq!(page.invocations.len(), 1);
        eprintln!(
            "evidence through JetStream: {n} events published and acknowledged in {published:?} ({:.0}/s), applied on another host after {applied:?} ({:.0}/s)",
            f64::from(n) / published.as_secs_f64(),
            f64::from(n) / applied.as_secs_f64()
        );
        a.close().await;
        b.close().await;
    }

    /// A running `toolgate serve` process and the addresses it logged.
    struct Sidecar {
        child: std::process::Child,
        ws: String,
        admin: String,
    }

    impl Drop for Sidecar {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A running `toolgate worker` process (the workflow worker alone), killed when dropped.
    struct Worker(std::process::Child);

    impl Drop for Worker {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn serve(config: &std::path::Path) -> Sidecar {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let mut child = common::toolgate_cmd("serve", config)
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
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
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

    /// Two `toolgate serve` processes (their own workflow workers off) and one `toolgate
    /// worker` share one NATS: a call served by A defers two actions, a live request past its
    /// budget (finished by A) and a workflow action (run once at the receiver by the worker);
    /// the whole call, both outcomes included, is read through B's admin API.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_served_by_one_sidecar_is_read_through_another() {
        use common::*;
        use serde_json::{Value, json};
        use toolgate::tooling::mock::{MockProvider, Reply};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let Some(nats) = NatsServer::shared() else {
            return;
        };
        let prefix = unique_prefix("E2EV");
        let resend = MockProvider::resend(RESEND_KEY).await.unwrap();
        let wati = MockProvider::wati(WATI_TOKEN).await.unwrap();
        let webhook = MockProvider::webhook(WEBHOOK_SECRET).await.unwrap();
        let beta_wati = MockProvider::wati(BETA_WATI_TOKEN).await.unwrap();
        let text = config_text(&resend, &wati, &webhook, &beta_wati);
        let dirs = [
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        ];
        let configs: Vec<_> = dirs
            .iter()
            .map(|d| {
                let file = d.path().join("toolgate.toml");
                std::fs::write(
                    &file,
                    on_nats(&text, &nats.url(), &prefix, d.path(), Some(false)),
                )
                .unwrap();
                file
            })
            .collect();
        let a = serve(&configs[0]);
        let b = serve(&configs[1]);
        let worker_log = dirs[2].path().join("worker.log");
        let worker = Worker(
            toolgate_cmd("worker", &configs[2])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&worker_log).unwrap())
                .spawn()
                .unwrap(),
        );

        // Slower than the budget: answered `deferred`, the live request finished by A.
        resend.push(Reply::slow(900));
        let mut client = toolgate::tooling::client::CallClient::connect(
            &format!("ws://{}/v1/session", a.ws),
            Some(ACME_TOKEN),
        )
        .await
        .unwrap();
        let ready = start(&mut client, "c-ev-nats", "support-bot", order_vars()).await;
        let mut s = Session { client, ready };
        s.agent_says("Hi, this is Acme. How can I help?").await;
        s.say("Send me the summary by email later, that's fine.")
            .await;
        s.consent("email", true).await;
        let answer = s
            .call("call_01", "email_later", json!({"summary": "Ships Friday"}))
            .await;
        assert_eq!(answer.status(), "deferred");
        let note = s
            .call(
                "call_02",
                "log_after_call",
                json!({"note": "two sidecars, one worker"}),
            )
            .await;
        assert_eq!(note.status(), "deferred", "{:?}", note.result.frame);
        s.client
            .send(&json!({"type": "session.end", "reason": "hangup"}))
            .await
            .unwrap();
        let ended = s.client.recv(WAIT).await.unwrap();
        assert_eq!(ended.frame["type"], "session.ended");

        let get = |path: String| {
            let url = format!("http://{}{path}", b.admin);
            async move {
                let resp = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .unwrap();
                let code = resp.status().as_u16();
                let body: Value =
                    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or_default();
                (code, body)
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let call = loop {
            let (code, call) = get("/v1/calls/c-ev-nats".into()).await;
            let done = code == 200
                && call["timeline"]
                    .as_array()
                    .is_some_and(|t| t.iter().filter(|e| e["type"] == "job.outcome").count() == 2);
            if done {
                break call;
            }
            assert!(
                Instant::now() < deadline,
                "B never showed A's call with its job's outcome: {code} {call}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(call["end_reason"], "hangup");
        let kinds: Vec<String> = call["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect();
        for k in [
            "session.start",
            "turn",
            "consent",
            "tool.call",
            "tool.result",
            "session.end",
        ] {
            assert!(kinds.iter().any(|x| x == k), "{k} missing: {kinds:?}");
        }
        let inv = answer.result.frame["invocation_id"].as_str().unwrap();
        let (code, record) = get(format!("/v1/invocations/{inv}")).await;
        assert_eq!(code, 200, "{record}");
        assert_eq!(
            record["invocation"]["answered_status"], "deferred",
            "{record}"
        );
        assert_eq!(record["invocation"]["status"], "succeeded", "{record}");
        let inv = note.result.frame["invocation_id"].as_str().unwrap();
        let (code, record) = get(format!("/v1/invocations/{inv}")).await;
        assert_eq!(code, 200, "{record}");
        assert_eq!(record["invocation"]["status"], "succeeded", "{record}");
        // The workflow action reached the receiver once, sent by the worker.
        let reqs = webhook.requests();
        assert_eq!(
            reqs.len(),
            1,
            "{reqs:?}; worker log: {}",
            std::fs::read_to_string(&worker_log).unwrap_or_default()
        );
        assert_eq!(
            reqs[0].json()["data"]["inputs"]["note"],
            "two sidecars, one worker"
        );
        assert_eq!(reqs[0].signature_valid, Some(true));
        drop((a, b, worker));
        drop(nats);
    }
}
