//! Enqueue throughput and latency of the job store: the SQLite backend (fsync on every commit,
//! WAL, `synchronous = FULL`, one writer thread batching whatever is waiting into one commit),
//! then the NATS JetStream backend against a local `nats-server` (skipped with a note when it
//! is not installed).
//!
//! Each round runs `writers` concurrent tasks that enqueue jobs back to back for a few
//! seconds; an enqueue's latency is from the call until it is durable (the SQLite commit
//! answered; JetStream's acknowledgement of the job's notice received).
//!
//! After each round it times the count of jobs per state (what each `/metrics` scrape asks),
//! three times: on NATS the first builds the state index, the others use it.
//!
//! Run: `cargo bench --bench queue` (set `QUEUE_BENCH_DIR` to put the file on another disk).

#[path = "../tests/nats_support/mod.rs"]
mod nats_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use toolgate::bindings::{Resolved, ResolvedInput, ValueSource};
use toolgate::catalog::Action;
use toolgate::clock::now_ms;
use toolgate::storage::nats::NatsOptions;
use toolgate::workflow::store::JobStore;
use toolgate::workflow::{DeferReason, NewJob, Start};

fn job(n: u64) -> NewJob {
    NewJob {
        org: "acme".into(),
        agent: "support-bot".into(),
        function: "send_email_summary".into(),
        call_id: format!("c-{}", n / 4),
        tool_call_id: format!("call_{n}"),
        invocation_id: format!("inv_{n}"),
        action: Action::ResendSendEmail,
        connection: "acme-resend".into(),
        inputs: vec![
            ResolvedInput {
                name: "to".into(),
                value: Resolved::Text("ana@example.com".into()),
                source: ValueSource::Session("var.email".into()),
            },
            ResolvedInput {
                name: "text".into(),
                value: Resolved::Text("Order A-1042 ships Friday; refund approved.".into()),
                source: ValueSource::Arg("summary".into()),
            },
        ],
        idempotency_key: format!("tg_bench_{n}"),
        idempotent: true,
        reason: DeferReason::Budget,
        max_attempts: 8,
        hard_timeout: Duration::from_secs(10),
        retry_window: Duration::ZERO,
        start: Start::RunnableAt(now_ms()),
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run briefly then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = if quick { 0.2 } else { 3.0 };
    let dir = match std::env::var("QUEUE_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "SQLite: enqueue with fsync per commit, {secs} s per round, file in {}",
        dir.path().display()
    );
    let mut seq = 0u64;
    rounds(&rt, secs, &mut seq, |writers| {
        let path = dir.path().join(format!("queue-{writers}.db"));
        Arc::new(JobStore::open(&path).unwrap())
    });
    let Some(server) = nats_support::NatsServer::start(&[]) else {
        return;
    };
    println!(
        "NATS JetStream: enqueue = job record, action key, notice published and acknowledged; \
         nats-server on loopback, file storage, {secs} s per round"
    );
    let url = server.url();
    rounds(&rt, secs, &mut seq, |writers| {
        let options = NatsOptions::new(vec![url.clone()], format!("BENCH{writers}"));
        Arc::new(rt.block_on(JobStore::open_nats(options)).unwrap())
    });
    drop(server);
}

/// One round per writer count against the store `open` gives, with a table line each.
fn rounds(
    rt: &tokio::runtime::Runtime,
    secs: f64,
    seq: &mut u64,
    mut open: impl FnMut(usize) -> Arc<JobStore>,
) {
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "writers", "jobs/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for writers in [1usize, 8, 64, 256] {
        let store = open(writers);
        let first = *seq;
        let (latencies, elapsed) = rt.block_on(async {
            let start = Instant::now();
            let until = start + Duration::from_secs_f64(secs);
            let mut tasks = Vec::new();
            for w in 0..writers {
                let store = store.clone();
                let base = first + (w as u64) * 10_000_000;
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut n = base;
                    while Instant::now() < until {
                        let t = Instant::now();
                        store.enqueue(job(n), now_ms()).await.unwrap();
                        lat.push(t.elapsed());
                        n += 1;
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            (all, start.elapsed())
        });
        *seq += 1_000_000_000;
        let mut sorted = latencies;
        sorted.sort_unstable();
        println!(
            "{:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            writers,
            sorted.len() as f64 / elapsed.as_secs_f64(),
            pct(&sorted, 0.5),
            pct(&sorted, 0.99),
            pct(&sorted, 0.999),
            pct(&sorted, 1.0),
        );
        // What each `/metrics` scrape asks of the store: the count of jobs per state. On NATS
        // the first count reads every job and starts the state index; later ones use it.
        let mut took = Vec::new();
        let mut held = 0;
        for i in 0..3 {
            if i == 1 {
                // Let the index finish reading the bucket.
                #[allow(
                    clippy::disallowed_methods,
                    reason = "a benchmark's own thread, between rounds"
                )]
                std::thread::sleep(Duration::from_secs(3));
            }
            let t = Instant::now();
            let counts = rt.block_on(store.counts()).unwrap();
            took.push(t.elapsed().as_secs_f64() * 1000.0);
            held = counts.iter().map(|(_, n)| n).sum::<u64>();
        }
        println!(
            "{:>8} state counts (each /metrics scrape) over {held} jobs: first {:.1} ms, then {:.2} / {:.2} ms",
            "", took[0], took[1], took[2]
        );
        rt.block_on(store.close());
    }
}
