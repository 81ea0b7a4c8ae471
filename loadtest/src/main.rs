//! `toolgate-loadtest`: opens many concurrent calls against a running toolgate and sends tool
//! calls at an open-loop rate: each call's send time is fixed in advance, and latency is
//! measured from that scheduled time, so a stall in the sidecar cannot hide itself by slowing
//! the generator down. All calls are opened before the clock starts, so connection setup is
//! never counted as tool-call latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "toolgate-loadtest",
    about = "Open-loop load generator for toolgate"
)]
struct Args {
    /// WebSocket URL of the sidecar.
    #[arg(long, default_value = "ws://127.0.0.1:8787/v1/session")]
    url: String,
    /// Org session token.
    #[arg(long, env = "TOOLGATE_SESSION_TOKEN")]
    token: String,
    /// Agent id for `session.start`.
    #[arg(long, default_value = "support-bot")]
    agent: String,
    /// Function to call.
    #[arg(long)]
    function: String,
    /// Arguments (JSON object); `{n}` in string values becomes a unique number per call, so
    /// the duplicate guard lets every call through.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Session variables (JSON object).
    #[arg(long, default_value = "{}")]
    variables: String,
    /// Caller number.
    #[arg(long, default_value = "+14155550100")]
    caller: String,
    /// Send a granted `consent` event of this scope at the start of each call.
    #[arg(long)]
    consent: Option<String>,
    /// Concurrent calls (WebSocket sessions).
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Tool calls per second across all sessions.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Default)]
struct Stats {
    sent: u64,
    results: u64,
    doubled: u64,
    errors: u64,
    statuses: HashMap<String, u64>,
    latency_us: Vec<u64>,
    first_signal_us: Vec<u64>,
}

/// Sessions report in, then all start sending at one `t0`.
struct Phase {
    connected: AtomicUsize,
    failed: AtomicUsize,
    start: watch::Receiver<Option<Instant>>,
}

fn with_n(v: &Value, n: u64) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace("{n}", &n.to_string())),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), with_n(v, n))).collect())
        }
        other => other.clone(),
    }
}

fn pct(sorted: &[u64], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    format!("{:.2} ms", sorted[i] as f64 / 1000.0)
}

/// Connect, start the session and wait for `session.ready`.
async fn open_session(
    args: &Args,
    index: usize,
) -> Result<(SplitSink<Ws, Message>, SplitStream<Ws>), String> {
    let mut req = args
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let auth = format!("Bearer {}", args.token)
        .parse()
        .map_err(|_| "the token is not a valid header value".to_string())?;
    req.headers_mut().insert("authorization", auth);
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| e.to_string())?;
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        let _ = s.set_nodelay(true);
    }
    let (mut tx, mut rx) = ws.split();
    let variables: Value =
        serde_json::from_str(&args.variables).map_err(|e| format!("--variables: {e}"))?;
    let start = json!({"type": "session.start", "call_id": format!("load-{index}-{}", std::process::id()),
                       "agent": args.agent, "caller": {"number": args.caller}, "variables": variables});
    tx.send(Message::text(start.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match rx.next().await {
            Some(Ok(Message::Text(t))) => {
                let frame: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                match frame["type"].as_str() {
                    Some("session.ready") => break,
                    Some("error") => {
                        return Err(format!("session.start refused: {}", frame["message"]));
                    }
                    _ => continue,
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the socket closed before session.ready".into()),
        }
    }
    if let Some(scope) = &args.consent {
        let c = json!({"type": "consent", "scope": scope, "granted": true, "source": "loadtest"});
        tx.send(Message::text(c.to_string()))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok((tx, rx))
}

async fn run_session(
    args: Arc<Args>,
    index: usize,
    phase: Arc<Phase>,
    stats: Arc<Mutex<Stats>>,
) -> Result<(), String> {
    let (mut tx, mut rx) = match open_session(&args, index).await {
        Ok(halves) => {
            phase.connected.fetch_add(1, Ordering::AcqRel);
            halves
        }
        Err(e) => {
            phase.failed.fetch_add(1, Ordering::AcqRel);
            return Err(e);
        }
    };
    let mut start = phase.start.clone();
    let t0 = match start.wait_for(Option::is_some).await {
        Ok(t) => t.expect("waited for Some"),
        Err(_) => return Err("the run was abandoned".into()),
    };
    let template: Value = serde_json::from_str(&args.args).map_err(|e| format!("--args: {e}"))?;
    // Scheduled send time per call id, shared with the reader.
    let scheduled: Arc<Mutex<HashMap<String, (Instant, bool)>>> = Arc::default();
    let reader_sched = scheduled.clone();
    let reader_stats = stats.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            let Message::Text(text) = msg else { continue };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let now = Instant::now();
            let ty = frame["type"].as_str().unwrap_or("");
            let id = frame["id"].as_str().unwrap_or("").to_owned();
            let mut sched = reader_sched.lock().unwrap();
            let mut st = reader_stats.lock().unwrap();
            match ty {
                "tool.filler" | "tool.result" => {
                    let Some((at, signalled)) = sched.get_mut(&id) else {
                        if ty == "tool.result" {
                            st.doubled += 1;
                        }
                        continue;
                    };
                    let us = now.saturating_duration_since(*at).as_micros() as u64;
                    if !*signalled {
                        *signalled = true;
                        st.first_signal_us.push(us);
                    }
                    if ty == "tool.result" {
                        st.results += 1;
                        st.latency_us.push(us);
                        *st.statuses
                            .entry(frame["status"].as_str().unwrap_or("?").to_owned())
                            .or_default() += 1;
                        sched.remove(&id);
                    }
                }
                "error" => st.errors += 1,
                _ => {}
            }
        }
    });
    let per_session_rate = args.rate / args.sessions as f64;
    let end = t0 + Duration::from_secs(args.duration);
    let mut k = 0u64;
    loop {
        // Calls of this session are spread evenly and offset so sessions do not fire together.
        let offset = (k as f64 + index as f64 / args.sessions as f64) / per_session_rate;
        let at = t0 + Duration::from_secs_f64(offset);
        if at >= end {
            break;
        }
        sleep_until(at).await;
        let n = (k * args.sessions as u64) + index as u64;
        let id = format!("call_{n}");
        scheduled.lock().unwrap().insert(id.clone(), (at, false));
        let call = json!({"type": "tool.call", "id": id, "name": args.function,
                          "arguments": with_n(&template, n).to_string()});
        if tx.send(Message::text(call.to_string())).await.is_err() {
            break;
        }
        stats.lock().unwrap().sent += 1;
        k += 1;
    }
    // Give the last calls time to answer, then end the session.
    let grace = Instant::now() + Duration::from_secs(15);
    while !scheduled.lock().unwrap().is_empty() && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = json!({"type": "session.end", "reason": "loadtest"});
    let _ = tx.send(Message::text(end.to_string())).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    reader.abort();
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    if args.sessions == 0 || args.rate <= 0.0 {
        eprintln!("toolgate-loadtest: --sessions and --rate must be above zero");
        std::process::exit(2);
    }
    let stats: Arc<Mutex<Stats>> = Arc::default();
    eprintln!(
        "toolgate-loadtest: {} sessions, {} tool calls/s for {} s against {}",
        args.sessions, args.rate, args.duration, args.url
    );
    let (start_tx, start_rx) = watch::channel(None);
    let phase = Arc::new(Phase {
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        start: start_rx,
    });
    let mut tasks = Vec::new();
    for i in 0..args.sessions {
        tasks.push(tokio::spawn(run_session(
            args.clone(),
            i,
            phase.clone(),
            stats.clone(),
        )));
    }
    let opening = Instant::now();
    loop {
        let ok = phase.connected.load(Ordering::Acquire);
        let bad = phase.failed.load(Ordering::Acquire);
        if ok + bad == args.sessions {
            eprintln!(
                "  {ok} sessions ready, {bad} failed, in {} ms",
                opening.elapsed().as_millis()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = Instant::now() + Duration::from_millis(200);
    let _ = start_tx.send(Some(t0));

    let progress_stats = stats.clone();
    let progress = tokio::spawn(async move {
        let mut tick =
            tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
        loop {
            tick.tick().await;
            let st = progress_stats.lock().unwrap();
            eprintln!(
                "  t={:>3}s  sent {:>7}  answered {:>7}  in flight {:>5}  errors {}",
                t0.elapsed().as_secs(),
                st.sent,
                st.results,
                st.sent.saturating_sub(st.results),
                st.errors
            );
        }
    });
    let mut failed = 0;
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            failed += 1;
            if failed <= 3 {
                eprintln!("session failed: {e}");
            }
        }
    }
    progress.abort();
    let mut st = stats.lock().unwrap();
    st.latency_us.sort_unstable();
    st.first_signal_us.sort_unstable();
    let lost = st.sent.saturating_sub(st.results);
    println!("tool calls sent      {}", st.sent);
    println!("results              {}", st.results);
    println!("lost (no result)     {lost}");
    println!("doubled results      {}", st.doubled);
    println!("error frames         {}", st.errors);
    println!("failed sessions      {failed}");
    let mut statuses: Vec<_> = st.statuses.iter().collect();
    statuses.sort();
    for (s, n) in statuses {
        println!("  {s:<18} {n}");
    }
    for (name, v) in [
        ("tool call (scheduled send to result)", &st.latency_us),
        ("first signal (filler or result)", &st.first_signal_us),
    ] {
        println!(
            "{name}: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 0.999),
            pct(v, 1.0)
        );
    }
    if lost > 0 || st.doubled > 0 || failed > 0 {
        std::process::exit(1);
    }
}
