//! Relay mode (`--relay`): what toolgate's realtime relay (SPEC §13.2) adds to a live call's
//! audio frames.
//!
//! The generator starts its own fake upstream ([`crate::upstream`]), which the sidecar's
//! `[relay] openai_upstream` (or `deepgram_upstream`) must point at. Each of `--sessions` calls
//! asks `POST /v1/relay/tickets` for a ticket (org session token, `--agent`, a unique
//! `call_id`), connects to the ticket URL as the OpenAI (or Deepgram) SDK would, with a model
//! key in `Authorization`, waits for the upstream's greeting, configures the session and waits
//! for that to come back. Then, on an open-loop schedule fixed in advance ([`Schedule`], evenly
//! spaced, calls interleaved), every call streams audio-sized frames at `--frame-rate`, and the
//! fake upstream echoes each one at once. Every frame is timed at the client's write, at the
//! upstream's read and echo, and at the client's read, on one clock ([`crate::frames`]).
//!
//! `--baseline` first sends the same frames on the same schedule over the same number of
//! connections straight to the fake upstream, so what the relay adds is the difference, in the
//! same run, on the same machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::calls::{instant_at, now_ns};
use crate::cli::Args;
use crate::frames::{Api, FrameKind, FrameMaker, FramePhase, FrameTable, frame_id};
use crate::mock::{self, MockSettings};
use crate::proc::Sampler;
use crate::relay_report::{self, Added, Endings, RelayReport, RelayResources, RelayRunInfo};
use crate::report::{self, ProgressRow};
use crate::run::{Outcome, run_pacer, stop_on_ctrl_c};
use crate::schedule::{Arrivals, Schedule};
use crate::upstream::{self, Routes};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a call's set-up (ticket, upgrade, greeting, configuration echo) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the other side has to answer a close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// One streaming call: a writer task fed by the pacer, a reader task filing the echoes.
struct Conn {
    commands: mpsc::UnboundedSender<u32>,
    writer: tokio::task::JoinHandle<Option<String>>,
    reader: tokio::task::JoinHandle<ReaderEnd>,
}

/// What a call's reader saw.
#[derive(Debug, Default)]
struct ReaderEnd {
    out_of_order: u64,
    other_frames: u64,
    /// The close was answered with a close frame.
    closed_cleanly: bool,
    /// The socket failed or closed before the call closed it.
    failure: Option<String>,
}

async fn write(
    mut tx: SplitSink<Ws, Message>,
    mut commands: mpsc::UnboundedReceiver<u32>,
    table: Arc<FrameTable>,
    maker: Arc<FrameMaker>,
    closing: oneshot::Sender<()>,
) -> Option<String> {
    while let Some(n) = commands.recv().await {
        let frame = maker.frame(n);
        table.mark_sent(n, now_ns());
        if let Err(e) = tx.send(frame).await {
            return Some(format!("writing a frame failed: {e}"));
        }
    }
    let _ = closing.send(());
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "load test done".into(),
    }));
    tx.send(close)
        .await
        .err()
        .map(|e| format!("closing failed: {e}"))
}

async fn read(
    mut rx: SplitStream<Ws>,
    table: Arc<FrameTable>,
    mut closing: oneshot::Receiver<()>,
) -> ReaderEnd {
    let mut end = ReaderEnd::default();
    let mut last: Option<u32> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let mut on_data = |payload: &[u8], binary: bool, at: u64, end: &mut ReaderEnd| match frame_id(
        payload, binary,
    ) {
        Some((phase, n)) if phase == table.phase => {
            table.mark_echo(n, at);
            if last.is_some_and(|l| n <= l) {
                end.out_of_order += 1;
            }
            last = Some(n);
        }
        _ => end.other_frames += 1,
    };
    loop {
        tokio::select! {
            msg = rx.next() => {
                let at = now_ns();
                match msg {
                    Some(Ok(Message::Text(t))) => on_data(t.as_bytes(), false, at, &mut end),
                    Some(Ok(Message::Binary(b))) => on_data(&b, true, at, &mut end),
                    Some(Ok(Message::Close(c))) => {
                        // The writer may have closed a moment before this branch was picked.
                        if deadline.is_some() || closing.try_recv().is_ok() {
                            end.closed_cleanly = true;
                        } else {
                            let why = c.map(|c| format!("{} {}", u16::from(c.code), c.reason)).unwrap_or_default();
                            end.failure = Some(format!("closed by the other side before the end ({why})"));
                        }
                        return end;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        if deadline.is_none() && closing.try_recv().is_err() {
                            end.failure = Some(format!("the socket failed: {e}"));
                        }
                        return end;
                    }
                    None => {
                        if deadline.is_none() && closing.try_recv().is_err() {
                            end.failure = Some("the socket closed before the end".into());
                        }
                        return end;
                    }
                }
            }
            _ = &mut closing, if deadline.is_none() => {
                deadline = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
            }
            _ = sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => return end,
        }
    }
}

fn spawn(ws: Ws, table: Arc<FrameTable>, maker: Arc<FrameMaker>) -> Conn {
    let (tx, rx) = ws.split();
    let (commands, queue) = mpsc::unbounded_channel();
    let (closing, closed) = oneshot::channel();
    Conn {
        commands,
        writer: tokio::spawn(write(tx, queue, table.clone(), maker, closing)),
        reader: tokio::spawn(read(rx, table, closed)),
    }
}

/// Connect like the SDK: `url`, the model key in `Authorization`, TCP_NODELAY.
async fn connect(url: &str, authorization: &str, relayed: bool) -> Result<Ws, String> {
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    let auth = authorization
        .parse()
        .map_err(|_| "--upstream-key is not a valid header value".to_owned())?;
    req.headers_mut().insert("authorization", auth);
    match tokio_tungstenite::connect_async_with_config(req, Some(upstream::ws_config()), true).await
    {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let hint = match status {
                502 if relayed => {
                    " (toolgate cannot reach its relay upstream: its [relay] openai_upstream / deepgram_upstream must point at --upstream-listen)"
                }
                401 if relayed => " (the ticket was refused: unknown, used or expired)",
                _ => "",
            };
            Err(format!("{url} answered HTTP {status}{hint}: {body}"))
        }
        Err(e) => Err(format!("cannot connect to {url}: {e}")),
    }
}

/// Wait for the upstream's greeting, send the session configuration, wait for its echo: the
/// path works both ways before the clock starts.
async fn handshake(ws: &mut Ws, api: Api, marker: &str) -> Result<(), String> {
    let mut greeted = false;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if !greeted {
                    greeted = true;
                    ws.send(Message::text(api.configure(marker)))
                        .await
                        .map_err(|e| format!("sending the session configuration failed: {e}"))?;
                } else if t.as_str().contains(marker) {
                    return Ok(());
                }
            }
            Some(Ok(Message::Close(c))) => {
                return Err(format!(
                    "closed during set-up{}",
                    c.map(|c| format!(": {} {}", u16::from(c.code), c.reason))
                        .unwrap_or_default()
                ));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("the socket failed during set-up: {e}")),
            None => return Err("the socket closed during set-up".into()),
        }
    }
}

/// Asks the sidecar for tickets.
struct TicketClient {
    client: Client<HttpConnector, Full<Bytes>>,
    url: hyper::Uri,
    token: String,
}

impl TicketClient {
    fn new(url: &str, token: &str) -> Result<TicketClient, String> {
        let url: hyper::Uri = url
            .parse()
            .map_err(|e| format!("--tickets-url {url:?}: {e}"))?;
        if url.scheme_str() != Some("http") {
            return Err(format!(
                "--tickets-url {url}: only http:// is supported (run against a loopback sidecar)"
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Ok(TicketClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            url,
            token: token.to_owned(),
        })
    }

    /// A ticket for `body`; the URL the SDK would be given as its base URL.
    async fn ticket(&self, body: &Value, api: Api) -> Result<String, String> {
        let req = hyper::Request::post(self.url.clone())
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.token))
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("cannot build the ticket request: {e}"))?;
        let resp = self.client.request(req).await.map_err(|e| {
            format!(
                "cannot reach {}: {e} (is toolgate running there?)",
                self.url
            )
        })?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the ticket answer failed: {e}"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        match status {
            201 | 200 => {}
            401 => {
                return Err(format!(
                    "{} answered 401: the session token was not accepted (check --token or LOADTEST_SESSION_TOKEN): {text}",
                    self.url
                ));
            }
            404 if !text.contains("unknown_agent") => {
                return Err(format!(
                    "{} answered 404: this toolgate has no realtime relays ({text})",
                    self.url
                ));
            }
            _ => return Err(format!("{} answered {status}: {text}", self.url)),
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the ticket answer is not JSON: {e}: {text}"))?;
        let key = match api {
            Api::Openai => "openai_url",
            Api::Deepgram => "deepgram_url",
        };
        v[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("the ticket answer has no {key}: {text}"))
    }
}

/// The tickets URL: `--tickets-url`, or `http://<host of --url>/v1/relay/tickets`.
fn tickets_url(args: &Args) -> Result<String, String> {
    if let Some(u) = &args.tickets_url {
        return Ok(u.clone());
    }
    let uri: hyper::Uri = args
        .url
        .parse()
        .map_err(|e| format!("--url {:?}: {e}", args.url))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("--url {:?} has no host", args.url))?;
    Ok(format!("http://{authority}/v1/relay/tickets"))
}

/// One line a second while a phase runs.
fn progress(
    table: Arc<FrameTable>,
    sampler: Arc<Sampler>,
    rows: Arc<std::sync::Mutex<Vec<ProgressRow>>>,
    t0: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick =
            tokio::time::interval_at((t0 + Duration::from_secs(1)).into(), Duration::from_secs(1));
        loop {
            tick.tick().await;
            let recent = table.take_recent();
            let (sent, echoed) = (table.sent_count(), table.echoed_count());
            let p99 = (!recent.is_empty()).then(|| recent.value_at_quantile(0.99) as f64 / 1000.0);
            let (cpu, _) = sampler.latest_cpu();
            let row = ProgressRow {
                phase: table.phase.name(),
                t_s: t0.elapsed().as_secs(),
                sent,
                answered: echoed,
                in_flight: sent.saturating_sub(echoed),
                p99_ms: p99,
                sidecar_cpu_pct: cpu,
            };
            eprintln!(
                "  {:<8} t={:>4}s  sent {:>8}  echoed {:>8}  in flight {:>6}  round trip p99 {:>9}{}",
                row.phase,
                row.t_s,
                row.sent,
                row.answered,
                row.in_flight,
                p99.map_or("-".into(), |v| format!("{v:.3} ms")),
                cpu.map_or(String::new(), |c| format!("  sidecar cpu {c:.0}%"))
            );
            if let Ok(mut r) = rows.lock() {
                r.push(row);
            }
        }
    })
}

/// The shared pieces of a run.
struct Ctx {
    schedule: Arc<Schedule>,
    sampler: Arc<Sampler>,
    rows: Arc<std::sync::Mutex<Vec<ProgressRow>>>,
    stop: Arc<AtomicBool>,
    interrupted: Arc<AtomicBool>,
    timeout: Duration,
    warmup: Duration,
}

/// What one phase measured.
struct PhaseResult {
    report: relay_report::FramePhaseReport,
    /// The sending window ([`now_ns`] readings) for CPU figures.
    from: u64,
    to: u64,
}

/// Stream the schedule over `conns`, wait for the echoes, close every call, analyse.
async fn stream(
    ctx: &Ctx,
    table: &Arc<FrameTable>,
    conns: Vec<Conn>,
    upstream_out_of_order: impl Fn() -> u64,
) -> PhaseResult {
    let calls = conns.len();
    let ooo_before = upstream_out_of_order();
    let senders: Vec<_> = conns.iter().map(|c| c.commands.clone()).collect();
    let t0_ns = now_ns() + 200_000_000;
    table.start_clock(t0_ns);
    let t0 = instant_at(t0_ns);
    let ticker = progress(table.clone(), ctx.sampler.clone(), ctx.rows.clone(), t0);
    let from = ctx.sampler.mark();
    let handed_over = Arc::new(AtomicU64::new(0));
    let counter = handed_over.clone();
    run_pacer(ctx.schedule.clone(), t0, ctx.stop.clone(), move |n| {
        if senders[n as usize % senders.len()].send(n).is_ok() {
            counter.fetch_add(1, Ordering::Release);
        }
    })
    .await;
    let to = ctx.sampler.mark();
    // Every frame handed over echoed, or the last one's timeout passed.
    let deadline = t0 + Duration::from_nanos(ctx.schedule.last_offset()) + ctx.timeout;
    loop {
        if table.echoed_count() >= handed_over.load(Ordering::Acquire) || Instant::now() >= deadline
        {
            break;
        }
        if ctx.interrupted.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ticker.abort();
    let mut endings = Endings::default();
    let mut waits = Vec::with_capacity(calls);
    for c in conns {
        drop(c.commands);
        waits.push(async move { (c.writer.await, c.reader.await) });
    }
    for (w, r) in futures_util::future::join_all(waits).await {
        let w = w.unwrap_or_else(|e| Some(format!("the writer task failed: {e}")));
        let r = r.unwrap_or_else(|e| ReaderEnd {
            failure: Some(format!("the reader task failed: {e}")),
            ..ReaderEnd::default()
        });
        endings.out_of_order += r.out_of_order;
        endings.other_frames += r.other_frames;
        if r.closed_cleanly {
            endings.closed_cleanly += 1;
        }
        if let Some(f) = r.failure.or(w) {
            endings.failed += 1;
            endings.first_failure.get_or_insert(f);
        }
    }
    let report = relay_report::analyze(
        table,
        calls,
        ctx.warmup.as_nanos() as u64,
        ctx.timeout.as_nanos() as u64,
        &endings,
        upstream_out_of_order().saturating_sub(ooo_before),
    );
    PhaseResult { report, from, to }
}

/// Open `n` calls with `open(i)`, `concurrency` at a time; the first failure stops the run.
async fn open_all<F, Fut>(n: usize, concurrency: usize, open: F) -> Result<Vec<Ws>, String>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Ws, String>>,
{
    let mut out: Vec<Option<Ws>> = (0..n).map(|_| None).collect();
    let mut opened = futures_util::stream::iter(0..n)
        .map(|i| {
            let f = open(i);
            async move {
                (
                    i,
                    timeout(SETUP_TIMEOUT, f).await.unwrap_or_else(|_| {
                        Err(format!("not set up within {} s", SETUP_TIMEOUT.as_secs()))
                    }),
                )
            }
        })
        .buffer_unordered(concurrency);
    let mut done = 0;
    while let Some((i, r)) = opened.next().await {
        match r {
            Ok(ws) => out[i] = Some(ws),
            Err(e) => {
                return Err(format!(
                    "call {i} of {n} could not be set up ({done} were): {e}"
                ));
            }
        }
        done += 1;
    }
    Ok(out.into_iter().flatten().collect())
}

/// Run relay mode as `args` say. `Err` is a setup problem (exit code 2).
pub async fn run(args: Args, threads: usize) -> Result<Outcome, String> {
    let api = args.relay_api;
    let kind = args.frames.unwrap_or(match api {
        Api::Openai => FrameKind::Text,
        Api::Deepgram => FrameKind::Binary,
    });
    let token = args.token.clone().unwrap_or_default();
    let variables: Value =
        serde_json::from_str(&args.variables).map_err(|e| format!("--variables: {e}"))?;
    let tickets_url = tickets_url(&args)?;
    let tickets = TicketClient::new(&tickets_url, &token)?;
    let rate = args.frame_rate * args.sessions as f64;
    let schedule = Arc::new(Schedule::build(rate, args.duration, Arrivals::Fixed, 0)?);
    if schedule.is_empty() {
        return Err("no frame fits in --duration at this --frame-rate".into());
    }
    let relay_table = Arc::new(FrameTable::new(FramePhase::Relay, schedule.clone()));
    let direct_table = args
        .baseline
        .then(|| Arc::new(FrameTable::new(FramePhase::Direct, schedule.clone())));
    let fake = upstream::start(
        &args.upstream_listen,
        Routes {
            relay: Some(relay_table.clone()),
            direct: direct_table.clone(),
        },
    )
    .await?;
    // The mock provider keeps the sidecar's own connections (loadtest.toml's webhook and
    // Resend) healthy, so it is not retrying them while the relay is measured.
    let _mock = if args.no_mock {
        None
    } else {
        let settings = MockSettings {
            latency: args.mock_latency.clone(),
            error_rate: 0.0,
        };
        match mock::start(&args.mock_listen, settings, mock::Routes::default()).await {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("toolgate-loadtest: warning: {e}; going on without the mock provider");
                None
            }
        }
    };
    let sampler = Arc::new(Sampler::start(args.sidecar_pid)?);
    let (stop, interrupted) = stop_on_ctrl_c();
    let ctx = Ctx {
        schedule: schedule.clone(),
        sampler: sampler.clone(),
        rows: Arc::default(),
        stop,
        interrupted: interrupted.clone(),
        timeout: args.result_timeout,
        warmup: args.warmup,
    };
    let relay_maker = Arc::new(FrameMaker::new(
        kind,
        FramePhase::Relay,
        args.audio_ms,
        args.sample_rate,
    ));
    let authorization = api.authorization(&args.upstream_key);
    eprintln!(
        "toolgate-loadtest: relay mode ({}): {} calls x {} frames/s ({} frames of {} bytes) for {:?}; {} frames scheduled",
        api.name(),
        args.sessions,
        args.frame_rate,
        kind.name(),
        relay_maker.size(),
        args.duration,
        schedule.len()
    );
    eprintln!(
        "  fake upstream on ws://{}{} (the sidecar's [relay] {}_upstream must point here); tickets from {tickets_url}",
        fake.addr,
        api.upstream_path().split('?').next().unwrap_or(""),
        api.name()
    );
    let ooo = || fake.report().out_of_order;

    // The baseline: the same frames on the same schedule, straight to the fake upstream.
    let mut direct = None;
    if let Some(table) = &direct_table {
        let url = format!("ws://{}{}", fake.addr, api.upstream_path());
        eprintln!("  direct: {} calls straight to {url}", args.sessions);
        let socks = open_all(args.sessions, args.connect_concurrency, |i| {
            let (url, auth) = (url.clone(), authorization.clone());
            async move {
                let mut ws = connect(&url, &auth, false).await?;
                handshake(&mut ws, api, &format!("ltsetup-d{i}")).await?;
                Ok(ws)
            }
        })
        .await?;
        let maker = Arc::new(FrameMaker::new(
            kind,
            FramePhase::Direct,
            args.audio_ms,
            args.sample_rate,
        ));
        let conns = socks
            .into_iter()
            .map(|ws| spawn(ws, table.clone(), maker.clone()))
            .collect();
        direct = Some(stream(&ctx, table, conns, ooo).await);
    }

    // Through the relay: a ticket per call, then the ticket URL as the SDK would use it.
    let call_id_prefix = crate::run::call_id_prefix("ltr");
    let rss_before = sampler.sidecar_rss_mib();
    let opening = Instant::now();
    let tickets = Arc::new(tickets);
    let socks = open_all(args.sessions, args.connect_concurrency, |i| {
        let body = serde_json::json!({
            "agent": args.agent,
            "call_id": format!("{call_id_prefix}-{i}"),
            "caller": {"number": args.caller, "name": args.caller_name},
            "variables": variables,
        });
        let (tickets, auth) = (tickets.clone(), authorization.clone());
        async move {
            let base = tickets.ticket(&body, api).await?;
            let url = format!("{base}{}", api.suffix());
            let mut ws = connect(&url, &auth, true).await?;
            handshake(&mut ws, api, &format!("ltsetup-r{i}")).await?;
            Ok(ws)
        }
    })
    .await?;
    let open_ms = opening.elapsed().as_millis() as u64;
    eprintln!("  {} relayed calls open in {open_ms} ms", socks.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = sampler.sidecar_rss_mib();
    let conns = socks
        .into_iter()
        .map(|ws| spawn(ws, relay_table.clone(), relay_maker.clone()))
        .collect();
    let relay = stream(&ctx, &relay_table, conns, ooo).await;

    // Resources and CPU per frame.
    let secs = |p: &PhaseResult| p.to.saturating_sub(p.from) as f64 / 1e9;
    let (sidecar_usage, generator_usage, machine) = sampler.usage(relay.from, relay.to);
    let others = |m: &Option<crate::proc::MachineUsage>,
                  s: &Option<crate::proc::ProcUsage>,
                  g: &Option<crate::proc::ProcUsage>| match (m, s, g) {
        (Some(m), Some(s), Some(g)) => {
            Some((m.busy_pct * m.cpus as f64 - s.cpu_mean_pct - g.cpu_mean_pct).max(0.0))
        }
        _ => None,
    };
    let relay_frames = relay.report.sent;
    let sidecar_rt = report::cpu_us_per(sidecar_usage.as_ref(), secs(&relay), relay_frames);
    let (direct_generator, direct_gen_rt, direct_others, direct_machine) = match &direct {
        Some(d) => {
            let (s, g, m) = sampler.usage(d.from, d.to);
            let rt = report::cpu_us_per(g.as_ref(), secs(d), d.report.sent);
            let o = others(&m, &s, &g);
            (g, rt, o, m)
        }
        None => (None, None, None, None),
    };
    let resources = RelayResources {
        sidecar_pid: sampler.pid(),
        sidecar_cpu_us_per_round_trip: sidecar_rt,
        sidecar_cpu_us_per_frame: sidecar_rt.map(|v| v / 2.0),
        sidecar_rss_idle_mib: rss_idle,
        sidecar_rss_before_mib: rss_before,
        generator_cpu_us_per_round_trip: report::cpu_us_per(
            generator_usage.as_ref(),
            secs(&relay),
            relay_frames,
        ),
        direct_generator_cpu_us_per_round_trip: direct_gen_rt,
        direct_generator,
        others_cpu_pct: others(&machine, &sidecar_usage, &generator_usage),
        direct_others_cpu_pct: direct_others,
        direct_machine,
        sidecar: sidecar_usage,
        generator: generator_usage,
        machine,
    };
    let direct_report = direct.map(|d| d.report);
    let added = direct_report.as_ref().map(|d| Added::of(&relay.report, d));
    let verdict = relay_report::verdict(&relay.report, direct_report.as_ref());
    let report = RelayReport {
        tool: "toolgate-loadtest",
        version: env!("CARGO_PKG_VERSION"),
        run: RelayRunInfo {
            mode: "relay",
            api: api.name(),
            tickets_url,
            agent: args.agent.clone(),
            calls: args.sessions,
            frame_rate: args.frame_rate,
            frames: kind.name(),
            frame_bytes: relay_maker.size(),
            audio_ms: args.audio_ms,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            timeout_s: args.result_timeout.as_secs_f64(),
            call_id_prefix,
            threads,
            interrupted: interrupted.load(Ordering::Relaxed),
        },
        upstream: fake.report(),
        open_ms,
        relay: relay.report,
        direct: direct_report,
        added,
        resources,
        timeline: ctx.rows.lock().map(|r| r.clone()).unwrap_or_default(),
        verdict,
    };
    report::publish(
        &relay_report::render(&report),
        &report,
        args.json.as_deref(),
    )?;
    Ok(Outcome::Finished {
        passed: report.verdict.passed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["toolgate-loadtest", "--relay", "--token", "t"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn the_tickets_url_follows_the_session_url() {
        assert_eq!(
            tickets_url(&args(&[])).unwrap(),
            "http://127.0.0.1:8787/v1/relay/tickets"
        );
        assert_eq!(
            tickets_url(&args(&["--url", "ws://10.0.0.2:9000/v1/session"])).unwrap(),
            "http://10.0.0.2:9000/v1/relay/tickets"
        );
        assert_eq!(
            tickets_url(&args(&["--tickets-url", "http://h:1/x"])).unwrap(),
            "http://h:1/x"
        );
        assert!(TicketClient::new("https://h/x", "t").is_err());
    }

    /// The whole path without a sidecar: a direct phase against the fake upstream, in-process.
    async fn direct_phase(api: Api, kind: FrameKind) {
        let schedule = Arc::new(
            Schedule::build(400.0, Duration::from_millis(250), Arrivals::Fixed, 0).unwrap(),
        );
        let table = Arc::new(FrameTable::new(FramePhase::Direct, schedule.clone()));
        let fake = upstream::start(
            "127.0.0.1:0",
            Routes {
                relay: None,
                direct: Some(table.clone()),
            },
        )
        .await
        .unwrap();
        let ctx = Ctx {
            schedule,
            sampler: Arc::new(Sampler::start(None).unwrap()),
            rows: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            interrupted: Arc::new(AtomicBool::new(false)),
            timeout: Duration::from_secs(5),
            warmup: Duration::ZERO,
        };
        let maker = Arc::new(FrameMaker::new(kind, FramePhase::Direct, 20, 24_000));
        let url = format!("ws://{}{}", fake.addr, api.upstream_path());
        let socks = open_all(4, 2, |i| {
            let url = url.clone();
            async move {
                let mut ws = connect(&url, &api.authorization("k"), false).await?;
                handshake(&mut ws, api, &format!("ltsetup-d{i}")).await?;
                Ok(ws)
            }
        })
        .await
        .unwrap();
        let conns = socks
            .into_iter()
            .map(|ws| spawn(ws, table.clone(), maker.clone()))
            .collect();
        let r = stream(&ctx, &table, conns, || fake.report().out_of_order).await;
        let p = &r.report;
        assert_eq!((p.scheduled, p.sent, p.echoed, p.lost), (100, 100, 100, 0));
        assert_eq!((p.doubled, p.out_of_order, p.failed_calls), (0, 0, 0));
        assert_eq!((p.closed_cleanly, p.other_frames), (4, 0));
        assert_eq!(p.latency.up_leg.count, 100);
        assert!(relay_report::verdict(p, None).passed);
        let u = fake.report();
        assert_eq!((u.connections, u.authorized, u.frames), (4, 4, 100));
        // Each call's session configuration came back too.
        assert_eq!(u.foreign, 4);
        assert_eq!(
            u.first_path
                .as_deref()
                .map(|p| p.split('?').next().unwrap_or("")),
            api.upstream_path().split('?').next()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn text_frames_echo_through_the_fake_openai() {
        direct_phase(Api::Openai, FrameKind::Text).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn binary_frames_echo_through_the_fake_deepgram() {
        direct_phase(Api::Deepgram, FrameKind::Binary).await;
    }
}
