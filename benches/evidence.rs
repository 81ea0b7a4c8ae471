//! The evidence store: how many records per second its one writer thread commits, and proof
//! that the tool-result path never waits on it.
//!
//! 1. `writer`: realistic invocation records (redacted request and response, guards, inputs,
//!    transcript context) and transcript turns submitted back to back; records/s from the first
//!    submit until all are committed.
//! 2. `steady`: the writer's own CPU time per record (its thread's, from the kernel's
//!    scheduler statistics) when records arrive as they do under load: a record of the load
//!    generator's tool call (2.6 KB of JSON) for each of 200 live calls in turn, 20 at a time
//!    (what 1,000 calls/s brings in the writer's 20 ms of gathering), each batch committed
//!    before the next is submitted.
//! 3. `tool_call`: sequential tool calls through an in-process sidecar (real WebSocket), once
//!    with the normal writer and once with a writer that stalls inside every commit, holding its
//!    file's write lock (a disk that stalls). Two kinds of call: a live one (loopback provider
//!    that answers at once) and a deferred one (`mode = "workflow"`: the job is written and
//!    fsynced before `deferred` is answered, in the job store's own file). Latency should be the
//!    same with either writer: the ratios of the two runs' percentiles are printed.
//!
//! Run: `cargo bench --bench evidence` (set `EVIDENCE_BENCH_DIR` to put the file on another
//! disk).

use std::time::{Duration, Instant};

use indexmap::IndexMap;
use serde_json::json;
use toolgate::call_state::Entry;
use toolgate::clock::now_ms;
use toolgate::evidence::store::EvidenceStore;
use toolgate::evidence::{
    CallTurn, Event, GuardRecord, InputRecord, Invocation, RawJson, RequestRecord, ResponseRecord,
    SourceType, Timeline, TurnRecord,
};
use toolgate::protocol::Role;

fn record(n: u64) -> Invocation {
    let guards = [
        "function_exposed",
        "arguments",
        "required_values",
        "connection",
        "consent",
        "recipient",
        "duplicate",
        "per_call_limit",
        "rate",
    ]
    .iter()
    .map(|g| GuardRecord {
        name: (*g).into(),
        passed: true,
        detail: "the caller agreed 1 turn(s) ago".into(),
    })
    .collect();
    let mut inputs = IndexMap::new();
    inputs.insert(
        "to".to_owned(),
        InputRecord {
            value: json!("a***@example.com"),
            source: "session:var.email".into(),
        },
    );
    inputs.insert(
        "text".to_owned(),
        InputRecord {
            value: json!({"length": 44, "sha256": "42a2451514ce2fce"}),
            source: "arg:summary".into(),
        },
    );
    let mut headers = IndexMap::new();
    headers.insert("authorization".to_owned(), "[redacted]".to_owned());
    headers.insert("idempotency-key".to_owned(), format!("tg_{n:032x}"));
    headers.insert("content-type".to_owned(), "application/json".to_owned());
    Invocation {
        invocation_id: format!("inv_bench_{n:012}"),
        source_type: SourceType::Agent,
        parent_invocation_id: None,
        org_id: "acme".into(),
        call_id: format!("c-{}", n / 4),
        agent_id: "support-bot".into(),
        function: "send_email_summary".into(),
        action: Some("resend.send_email".into()),
        connection_id: Some("acme-resend".into()),
        channel: None,
        received_at: now_ms(),
        status: "succeeded".into(),
        answered_status: "succeeded".into(),
        is_final: true,
        final_at: Some(now_ms()),
        error_code: None,
        error_message: None,
        missing_fields: Vec::new(),
        guards,
        inputs_redacted: inputs,
        request_payload_redacted: Some(RequestRecord {
            method: "POST".into(),
            url: "https://api.resend.com/emails".into(),
            headers,
            body: Some(RawJson::of(
                &json!({"from": "Acme <s***@acme.test>", "to": "a***@example.com",
                               "subject": {"length": 17, "sha256": "1a6eab5ceecfc715"},
                               "text": {"length": 44, "sha256": "42a2451514ce2fce"}}),
            )),
        }),
        response_payload_redacted: Some(ResponseRecord {
            status: Some(200),
            body: Some(json!({"id": "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"})),
        }),
        provider_message_id: Some("49a3999c-0ce1-4ea6-ab68-afcd6dc2e794".into()),
        latency_ms: Some(212),
        timeline: Timeline {
            filler_ms: vec![500],
            answered_ms: Some(731),
            provider_sent_ms: Some(1),
            provider_done_ms: Some(213),
        },
        workflow_job_id: None,
        deferral_reason: None,
        at_least_once: false,
        cancelled: None,
        arguments_redacted: None,
        session_redacted: None,
        transcript_context: (0..6)
            .map(|i| TurnRecord {
                role: if i % 2 == 0 { "agent" } else { "caller" }.into(),
                text: "Yes please, send it to a***@example.com when you can.".into(),
                is_final: true,
                at_ms: i * 2_000,
            })
            .collect(),
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn writer(dir: &std::path::Path, n: u64, rt: &tokio::runtime::Runtime) {
    let store = EvidenceStore::open(&dir.join("writer.db"), Duration::ZERO).unwrap();
    let records: Vec<Invocation> = (0..n).map(record).collect();
    let start = Instant::now();
    // Waves well under the queue's capacity: a submitter that outruns the writer by a whole
    // queue would measure dropped events, not committed ones.
    let wave = toolgate::evidence::store::QUEUE / 4;
    for (i, r) in records.into_iter().enumerate() {
        if i > 0 && i % wave == 0 {
            rt.block_on(store.flush());
        }
        store.submit(Event::History(CallTurn {
            org: "acme".into(),
            call_id: format!("c-{}", i / 4),
            turn: Entry::Turn {
                role: Role::Caller,
                text: "Yes please, send it to ana@example.com or +14155550100.".into(),
                is_final: true,
                at_ms: i as u32,
            },
            started_at: now_ms(),
        }));
        store.submit(Event::Invocation(Box::new(r)));
    }
    let submitted = start.elapsed();
    rt.block_on(store.flush());
    let total = start.elapsed();
    println!(
        "writer: {n} invocation records + {n} transcript turns committed in {:.2} s: {:.0} records/s \
         ({:.0} events/s; submitting took {:.1} ms, {:.2} us per event; dropped {})",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        2.0 * n as f64 / total.as_secs_f64(),
        submitted.as_secs_f64() * 1000.0,
        submitted.as_secs_f64() * 1e6 / (2.0 * n as f64),
        store.dropped()
    );
    rt.block_on(store.close());
}

/// A record of the load generator's tool call, as the sidecar writes it.
const LOADTEST_RECORD: &str = include_str!("loadtest-record.json");

/// The writer thread's time on a CPU so far (user and system), from the scheduler. A thread
/// names itself once it runs, so a writer just started may take a moment to be found.
fn writer_cpu() -> Duration {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for task in std::fs::read_dir("/proc/self/task").expect("a /proc to read") {
            let task = task.unwrap().path();
            let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if comm.trim_end() == "toolgate-eviden" {
                let stat = std::fs::read_to_string(task.join("schedstat")).unwrap();
                let ns: u64 = stat.split(' ').next().unwrap().parse().unwrap();
                return Duration::from_nanos(ns);
            }
        }
        assert!(Instant::now() < deadline, "no evidence writer thread");
        #[allow(clippy::disallowed_methods, reason = "a bench's main thread, waiting")]
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn steady(dir: &std::path::Path, n: usize, rt: &tokio::runtime::Runtime) {
    const CALLS: usize = 200;
    const BATCH: usize = 20;
    let store = EvidenceStore::open(&dir.join("steady.db"), Duration::ZERO).unwrap();
    let template: Invocation = serde_json::from_str(LOADTEST_RECORD).unwrap();
    let before = writer_cpu();
    let start = Instant::now();
    for i in 0..n {
        let mut r = template.clone();
        r.invocation_id = toolgate::evidence::invocation_id();
        r.call_id = format!("lt-4711-1796412645-{}", i % CALLS);
        r.received_at = now_ms();
        store.submit(Event::Invocation(Box::new(r)));
        if (i + 1) % BATCH == 0 {
            rt.block_on(store.flush());
        }
    }
    rt.block_on(store.flush());
    let cpu = writer_cpu() - before;
    println!(
        "steady: {n} records of {} bytes over {CALLS} calls, {BATCH} per commit, in {:.1} s: \
         the writer's CPU {:.1} us per record (dropped {})",
        LOADTEST_RECORD.trim_end().len(),
        start.elapsed().as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
        store.dropped()
    );
    rt.block_on(store.close());
}

/// A workflow-mode function beside the demo's: answered `deferred` once its job is stored.
const LOG_NOTE: &str = "[[agents.functions]]
name = \"log_note\"
action = \"webhook.post\"
connection = \"acme-hooks\"
description = \"Record a note for the team after the call.\"
timing = { mode = \"workflow\" }

[agents.functions.inputs]
note = { arg = \"note\", required = true }

";

/// Sequential tool calls through an in-process sidecar whose evidence writer stalls `delay`
/// inside each commit; each call's latency from send to result, live ones and deferred ones.
fn tool_calls(
    calls: u64,
    delay: Duration,
    rt: &tokio::runtime::Runtime,
) -> (Vec<Duration>, Vec<Duration>) {
    rt.block_on(async {
        let mocks = toolgate::tooling::demo::Mocks::start().await.unwrap();
        let mut config = mocks.config_with(|t| {
            let t = t.replace("[server]", "[server]\nmax_frames_per_second = 100000");
            let at = t.find("[[agents.functions]]").expect("the demo has functions");
            format!("{}{LOG_NOTE}{}", &t[..at], &t[at..])
        });
        config.evidence.writer_delay = delay;
        let server = toolgate::server::Server::start(config).await.unwrap();
        let mut client = toolgate::tooling::client::CallClient::connect(
            &server.session_url(),
            Some("demo-session-token"),
        )
        .await
        .unwrap();
        client
            .send(&json!({"type": "session.start", "call_id": "bench", "agent": "support-bot",
                          "caller": {"number": "+14155550100"}}))
            .await
            .unwrap();
        client.recv(Duration::from_secs(5)).await.unwrap();
                let mut live = Vec::with_capacity(calls as usize);
        let mut deferred = Vec::with_capacity(calls as usize);
        for n in 0..calls + 200 {
            client
                .send(&json!({"type": "transcript", "role": "caller",
                              "text": format!("Please have someone call me back, reason {n}"), "final": true}))
                .await
                .unwrap();
            for (name, args, status, out) in [
                ("request_callback", json!({"reason": format!("bench {n}")}), "succeeded", &mut live),
                ("log_note", json!({"note": format!("note {n}")}), "deferred", &mut deferred),
            ] {
                let id = format!("{name}_{n}");
                let t = Instant::now();
                client
                    .send(&json!({"type": "tool.call", "id": id, "name": name, "arguments": args}))
                    .await
                    .unwrap();
                let frames = client.until_result(&id, Duration::from_secs(5)).await.unwrap();
                assert_eq!(frames.last().unwrap().frame["status"], status);
                if n >= 200 {
                    out.push(t.elapsed());
                }
            }
        }
        let lag = server.runtime().evidence.dropped();
        server.shutdown(Duration::from_secs(60)).await;
        mocks.webhook.stop();
        assert_eq!(lag, 0, "the slowed writer dropped evidence");
        (live, deferred)
    })
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run briefly then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let dir = match std::env::var("EVIDENCE_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os("EVIDENCE_BENCH_STEADY_ONLY").is_some() {
        steady(dir.path(), 20_000, &rt);
        return;
    }
    writer(dir.path(), if quick { 2_000 } else { 100_000 }, &rt);
    steady(dir.path(), if quick { 400 } else { 20_000 }, &rt);

    let calls = if quick { 200 } else { 5_000 };
    let stall = Duration::from_millis(250);
    // Alternate, so drift over the run (a warming cache, a neighbour's load) shows up as a
    // difference between the two runs of the same kind rather than as the writer's effect.
    let (mut normal, mut slowed) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for _ in 0..2 {
        let (l, d) = tool_calls(calls, Duration::ZERO, &rt);
        normal.0.extend(l);
        normal.1.extend(d);
        let (l, d) = tool_calls(calls, stall, &rt);
        slowed.0.extend(l);
        slowed.1.extend(d);
    }
    for v in [&mut normal.0, &mut normal.1, &mut slowed.0, &mut slowed.1] {
        v.sort();
    }
    println!("tool_call: 2 x {calls} sequential calls of each kind per writer, alternating runs");
    for (kind, n, s) in [
        ("live (provider answers at once)", &normal.0, &slowed.0),
        ("deferred (job fsynced first)", &normal.1, &slowed.1),
    ] {
        println!("  {kind}");
        for (name, ms) in [("normal writer", n), ("writer stalls 250 ms per commit", s)] {
            println!(
                "    {name:<32} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                pct(ms, 0.50),
                pct(ms, 0.90),
                pct(ms, 0.99),
                pct(ms, 1.0)
            );
        }
        println!(
            "    ratio stalled/normal: p50 {:.2}  p90 {:.2}  p99 {:.2}",
            pct(s, 0.50) / pct(n, 0.50),
            pct(s, 0.90) / pct(n, 0.90),
            pct(s, 0.99) / pct(n, 0.99)
        );
    }
}
