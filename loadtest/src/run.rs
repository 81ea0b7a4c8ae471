//! One load test, start to end: the mock provider, the optional baseline phase, opening every
//! call, the clock, the pacer, progress, draining, ending the sessions, and the report.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::RngExt;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::baseline::Baseline;
use crate::calls::{CallTable, Phase, instant_at, now_ns};
use crate::cli::Args;
use crate::mock::{self, Mock, MockSettings, Routes};
use crate::proc::{ProcUsage, Sampler};
use crate::report::{
    self, Expect, Mode, PhaseReport, ProgressRow, Ratios, Report, Resources, RunInfo, SessionsInfo,
    WebhookInfo,
};
use crate::schedule::{Schedule, pace};
use crate::script::{self, Call, Command, Script, Template};

/// How the run ended.
pub enum Outcome {
    /// The report's verdict.
    Finished {
        /// No problem found.
        passed: bool,
    },
    /// `--mock-only` was stopped.
    MockStopped,
}

/// The conversation each call plays before its tool calls.
pub(crate) fn turns() -> Vec<(&'static str, String)> {
    vec![
        (
            "agent",
            "Thanks for calling Acme support, this is Sam. How can I help?".into(),
        ),
        (
            "caller",
            "Hi, I'd like someone to call me back about my order.".into(),
        ),
        (
            "agent",
            "Of course. Shall I ask a colleague to call you back on this number?".into(),
        ),
        ("caller", "Yes please, go ahead.".into()),
    ]
}

pub(crate) fn json_object(flag: &str, text: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("{flag}: {e}"))?;
    if !v.is_object() {
        return Err(format!("{flag} must be a JSON object"));
    }
    Ok(v)
}

/// Wait for the pacer on its own thread.
pub(crate) async fn run_pacer(
    schedule: Arc<Schedule>,
    t0: Instant,
    stop: Arc<AtomicBool>,
    dispatch: impl FnMut(u32) + Send + 'static,
) -> usize {
    let (done, wait) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            let n = pace(&schedule, t0, &stop, dispatch);
            let _ = done.send(n);
        });
    match spawned {
        Ok(_) => wait.await.unwrap_or(0),
        Err(e) => {
            eprintln!("toolgate-loadtest: cannot start the pacer thread: {e}");
            0
        }
    }
}

/// Print one line a second while a phase runs; the lines are kept for the report.
fn progress(
    table: Arc<CallTable>,
    sampler: Arc<Sampler>,
    rows: Arc<Mutex<Vec<ProgressRow>>>,
    t0: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick =
            tokio::time::interval_at((t0 + Duration::from_secs(1)).into(), Duration::from_secs(1));
        loop {
            tick.tick().await;
            let recent = table.take_recent();
            let (sent, answered) = (table.sent_count(), table.answered_count());
            let p99 = (!recent.is_empty()).then(|| recent.value_at_quantile(0.99) as f64 / 1000.0);
            let (cpu, _) = sampler.latest_cpu();
            let row = ProgressRow {
                phase: table.phase.name(),
                t_s: t0.elapsed().as_secs(),
                sent,
                answered,
                in_flight: sent.saturating_sub(answered),
                p99_ms: p99,
                sidecar_cpu_pct: cpu,
            };
            eprintln!(
                "  {:<8} t={:>4}s  sent {:>8}  answered {:>8}  in flight {:>6}  p99 {:>9}{}",
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

/// Wait until every call handed to a sender is answered, or until the last one's result
/// timeout. Counting what was handed over, not what the senders have taken up so far: a call
/// still waiting in a sender's queue is not finished, and ending its session now would
/// strand its result.
async fn drain(
    table: &CallTable,
    handed_over: &AtomicU64,
    t0: Instant,
    timeout: Duration,
    interrupted: &AtomicBool,
) {
    let deadline = t0 + Duration::from_nanos(table.schedule().last_offset()) + timeout;
    loop {
        let expected = handed_over.load(Ordering::Acquire);
        if table.answered_count() >= expected || Instant::now() >= deadline {
            return;
        }
        if interrupted.load(Ordering::Relaxed) {
            // Ctrl-C: a short grace for what is in flight, then report.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Start the clock a little ahead, so every sender is ready when the first call is due.
fn start_clock(table: &CallTable) -> Instant {
    let t0 = now_ns() + 200_000_000;
    table.start_clock(t0);
    instant_at(t0)
}

/// Run the mock until Ctrl-C.
async fn mock_only(args: &Args) -> Result<Outcome, String> {
    let settings = MockSettings {
        latency: args.mock_latency.clone(),
        error_rate: args.mock_error_rate,
    };
    let m = mock::start(&args.mock_listen, settings, Routes::default()).await?;
    eprintln!(
        "toolgate-loadtest: mock provider on http://{} (latency {}, error rate {}); Ctrl-C stops it",
        m.addr, args.mock_latency, args.mock_error_rate
    );
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let n = m.stats.requests();
                if n != last {
                    eprintln!("  requests {n} (+{})  in flight {}", n - last, m.stats.in_flight());
                    last = n;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&m.report()).unwrap_or_default()
    );
    Ok(Outcome::MockStopped)
}

/// What every tool-call mode (WebSocket sessions, webhook requests) sets up and reports the
/// same way: the schedule, the ledgers, the mock provider, the /proc sampler, Ctrl-C, the
/// optional baseline phase, the sending phase and the report.
pub(crate) struct Bench {
    /// The command line.
    pub args: Args,
    threads: usize,
    /// `--args`, parsed.
    pub arguments: Value,
    seed: u64,
    /// When each tool call is due.
    pub schedule: Arc<Schedule>,
    expect: Expect,
    /// The ledger of the tool calls through the sidecar.
    pub table: Arc<CallTable>,
    baseline_table: Option<Arc<CallTable>>,
    mock: Option<Mock>,
    /// The sidecar's (and this process's) CPU and memory.
    pub sampler: Arc<Sampler>,
    stop: Arc<AtomicBool>,
    interrupted: Arc<AtomicBool>,
    rows: Arc<Mutex<Vec<ProgressRow>>>,
    baseline: Option<PhaseReport>,
    baseline_generator: Option<ProcUsage>,
    /// Call ids are this prefix, a dash and the call's index: unique to this run.
    pub call_id_prefix: String,
}

/// The stretch the schedule ran ([`now_ns`] readings of two [`Sampler::mark`]s).
pub(crate) struct Window {
    from: u64,
    to: u64,
}

impl Bench {
    /// Parse the flags every mode shares, build the schedule, start the mock provider and the
    /// sampler, and say what is about to run (`what`: "N calls", `target`: where they go).
    pub async fn start(
        args: Args,
        threads: usize,
        what: &str,
        target: &str,
    ) -> Result<Bench, String> {
        let arguments = json_object("--args", &args.args)?;
        if !Template::new(&args.args, "").has_token() && !args.no_mock {
            eprintln!(
                "toolgate-loadtest: warning: --args has no {{token}}, so the mock cannot tell which tool call a request belongs to; added latency will not be measured"
            );
        }
        let seed = args.seed.unwrap_or_else(|| rand::rng().random());
        let schedule = Arc::new(Schedule::build(
            args.rate,
            args.duration,
            args.arrivals,
            seed,
        )?);
        if schedule.is_empty() {
            return Err("no tool call fits in --duration at this --rate".into());
        }
        let expect = Expect {
            filler_after: Duration::from_millis(args.filler_after_ms),
            defer_after: Duration::from_millis(args.defer_after_ms),
            result_timeout: args.result_timeout,
            warmup: args.warmup,
            sessions: args.sessions,
        };
        let table = Arc::new(CallTable::new(Phase::Sidecar, schedule.clone()));
        let baseline_table = args
            .baseline
            .then(|| Arc::new(CallTable::new(Phase::Baseline, schedule.clone())));
        let mock: Option<Mock> = if args.no_mock {
            None
        } else {
            let settings = MockSettings {
                latency: args.mock_latency.clone(),
                error_rate: args.mock_error_rate,
            };
            let routes = Routes {
                sidecar: Some(table.clone()),
                baseline: baseline_table.clone(),
            };
            Some(mock::start(&args.mock_listen, settings, routes).await?)
        };
        let sampler = Arc::new(Sampler::start(args.sidecar_pid)?);
        let (stop, interrupted) = stop_on_ctrl_c();
        eprintln!(
            "toolgate-loadtest: {what}, {} tool calls/s ({} arrivals, seed {seed}) for {:?} against {target}; {} tool calls scheduled",
            args.rate,
            args.arrivals.name(),
            args.duration,
            schedule.len()
        );
        if let Some(m) = &mock {
            eprintln!(
                "  mock provider on http://{} (latency {}, error rate {})",
                m.addr, args.mock_latency, args.mock_error_rate
            );
        }
        let call_id_prefix = call_id_prefix("lt");
        Ok(Bench {
            args,
            threads,
            arguments,
            seed,
            schedule,
            expect,
            table,
            baseline_table,
            mock,
            sampler,
            stop,
            interrupted,
            rows: Arc::new(Mutex::new(Vec::new())),
            baseline: None,
            baseline_generator: None,
            call_id_prefix,
        })
    }

    /// With `--baseline`: the same schedule, straight to the mock, before any call is open.
    pub async fn run_baseline(&mut self) -> Result<(), String> {
        let (Some(table), Some(m)) = (&self.baseline_table, &self.mock) else {
            return Ok(());
        };
        let url = self
            .args
            .baseline_url
            .clone()
            .unwrap_or_else(|| format!("http://{}/hook", m.addr));
        let client = Baseline::new(&url, &self.args.function, &self.arguments, table.clone())?;
        eprintln!("  baseline: posting straight to {url}");
        let handle = tokio::runtime::Handle::current();
        let window = self
            .send(table, move |n| {
                client.fire(&handle, n);
                true
            })
            .await;
        self.baseline_generator = self.sampler.usage(window.from, window.to).1;
        self.baseline = Some(report::analyze(
            table,
            &Expect {
                sessions: 0,
                ..self.expect
            },
        ));
        Ok(())
    }

    /// Run the schedule on `table`'s clock: the pacer hands each tool call to `dispatch`
    /// (`false`: it could not be handed over), then wait until every one handed over is
    /// answered or timed out. Progress is printed once a second.
    async fn send(
        &self,
        table: &Arc<CallTable>,
        mut dispatch: impl FnMut(u32) -> bool + Send + 'static,
    ) -> Window {
        let t0 = start_clock(table);
        let ticker = progress(table.clone(), self.sampler.clone(), self.rows.clone(), t0);
        let from = self.sampler.mark();
        let handed_over = Arc::new(AtomicU64::new(0));
        let counter = handed_over.clone();
        run_pacer(self.schedule.clone(), t0, self.stop.clone(), move |n| {
            if dispatch(n) {
                counter.fetch_add(1, Ordering::Release);
            }
        })
        .await;
        let to = self.sampler.mark();
        drain(
            table,
            &handed_over,
            t0,
            self.args.result_timeout,
            &self.interrupted,
        )
        .await;
        ticker.abort();
        Window { from, to }
    }

    /// The sending phase through the sidecar.
    pub async fn run_sidecar(&self, dispatch: impl FnMut(u32) -> bool + Send + 'static) -> Window {
        self.send(&self.table, dispatch).await
    }

    /// Analyse, print the report (and write `--json`), and give the verdict.
    pub fn finish(
        self,
        mode: Mode,
        url: String,
        sessions: SessionsInfo,
        rss: (Option<f64>, Option<f64>),
        window: Window,
        webhook: Option<WebhookInfo>,
    ) -> Result<Outcome, String> {
        let args = &self.args;
        let sidecar = report::analyze(&self.table, &self.expect);
        let (sidecar_usage, generator_usage, machine) = self.sampler.usage(window.from, window.to);
        // Only meaningful when the sidecar is watched; otherwise it would count as "other".
        let others_cpu_pct = match (&machine, &sidecar_usage, &generator_usage) {
            (Some(m), Some(s), Some(g)) => {
                Some((m.busy_pct * m.cpus as f64 - s.cpu_mean_pct - g.cpu_mean_pct).max(0.0))
            }
            _ => None,
        };
        let secs = window.to.saturating_sub(window.from) as f64 / 1e9;
        let sidecar_cpu_us_per_call =
            report::cpu_us_per(sidecar_usage.as_ref(), secs, sidecar.sent);
        let ratios = self.baseline.as_ref().map(|b| Ratios::of(&sidecar, b));
        // Against a mock that never fails, nothing may reach it twice (no retry is due). Only
        // checked in webhook mode, where a platform's request is the unit of delivery.
        let no_provider_retries =
            mode == Mode::Webhook && self.mock.is_some() && args.mock_error_rate == 0.0;
        let verdict = report::verdict(
            &sidecar,
            self.baseline.as_ref(),
            &sessions,
            mode,
            no_provider_retries,
        );
        let report = Report {
            tool: "toolgate-loadtest",
            version: env!("CARGO_PKG_VERSION"),
            run: RunInfo {
                mode,
                url,
                // A tool webhook names its agent itself.
                agent: match mode {
                    Mode::Websocket => args.agent.clone(),
                    Mode::Webhook => String::new(),
                },
                function: args.function.clone(),
                sessions: args.sessions,
                rate: args.rate,
                duration_s: args.duration.as_secs_f64(),
                arrivals: args.arrivals.name(),
                seed: self.seed,
                warmup_s: args.warmup.as_secs_f64(),
                result_timeout_s: args.result_timeout.as_secs_f64(),
                filler_after_ms: args.filler_after_ms,
                defer_after_ms: args.defer_after_ms,
                call_id_prefix: self.call_id_prefix.clone(),
                threads: self.threads,
                interrupted: self.interrupted.load(Ordering::Relaxed),
            },
            sessions,
            webhook,
            mock: self.mock.as_ref().map(Mock::report),
            sidecar,
            baseline: self.baseline,
            ratios,
            resources: Resources {
                sidecar_pid: self.sampler.pid(),
                sidecar_cpu_us_per_call,
                sidecar_rss_before_mib: rss.0,
                sidecar_rss_idle_mib: rss.1,
                others_cpu_pct,
                sidecar: sidecar_usage,
                generator: generator_usage,
                machine,
                baseline_generator: self.baseline_generator,
            },
            timeline: self.rows.lock().map(|r| r.clone()).unwrap_or_default(),
            verdict,
        };
        report::publish(&report::render(&report), &report, args.json.as_deref())?;
        Ok(Outcome::Finished {
            passed: report.verdict.passed,
        })
    }
}

/// Two flags Ctrl-C sets: stop sending, and the run was interrupted.
pub fn stop_on_ctrl_c() -> (Arc<AtomicBool>, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    let (s, i) = (stop.clone(), interrupted.clone());
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("toolgate-loadtest: interrupted; finishing what is in flight");
            i.store(true, Ordering::Relaxed);
            s.store(true, Ordering::Relaxed);
        }
    });
    (stop, interrupted)
}

/// Run a load test as `args` say. `Err` is a setup problem (exit code 2).
pub async fn run(args: Args, threads: usize) -> Result<Outcome, String> {
    if args.mock_only {
        return mock_only(&args).await;
    }
    let token = args.token.clone().unwrap_or_default();
    let variables = json_object("--variables", &args.variables)?;
    let what = format!("{} calls", args.sessions);
    let url = args.url.clone();
    let mut bench = Bench::start(args, threads, &what, &url).await?;
    bench.run_baseline().await?;
    let args = &bench.args;

    // Open every call before the clock starts.
    let script = Arc::new(Script {
        url: args.url.clone(),
        token,
        agent: args.agent.clone(),
        function: args.function.clone(),
        caller: serde_json::json!({"number": args.caller, "name": args.caller_name}),
        variables,
        turns: turns(),
        consent: (!args.no_consent).then(|| args.consent.clone()),
        call: script::call_template(&args.function, &bench.arguments),
        call_id_prefix: bench.call_id_prefix.clone(),
    });
    let rss_before = bench.sampler.sidecar_rss_mib();
    let opening = Instant::now();
    let mut calls: Vec<Option<Call>> = (0..args.sessions).map(|_| None).collect();
    {
        let mut opened = futures_util::stream::iter(0..args.sessions)
            .map(|i| {
                let (script, table) = (script.clone(), bench.table.clone());
                async move { (i, script::open(script, i, table).await) }
            })
            .buffer_unordered(args.connect_concurrency);
        let mut done = 0;
        while let Some((i, result)) = opened.next().await {
            match result {
                Ok(call) => calls[i] = Some(call),
                Err(e) => {
                    return Err(format!(
                        "call {i} of {} could not be set up ({done} were): {e}",
                        args.sessions
                    ));
                }
            }
            done += 1;
            if done % 1000 == 0 {
                eprintln!("  {done} calls open");
            }
        }
    }
    let calls: Vec<Call> = calls.into_iter().flatten().collect();
    let open_ms = opening.elapsed().as_millis() as u64;
    eprintln!("  {} calls open in {open_ms} ms", calls.len());
    // Let the sidecar settle after the burst of set-ups before reading its idle memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = bench.sampler.sidecar_rss_mib();

    // The run.
    let senders: Vec<_> = calls.iter().map(Call::sender).collect();
    let window = bench
        .run_sidecar(move |n| {
            senders[n as usize % senders.len()]
                .send(Command::Call(n))
                .is_ok()
        })
        .await;

    // End every session.
    let mut sessions = SessionsInfo {
        opened: calls.len(),
        open_ms,
        ..Default::default()
    };
    for c in &calls {
        c.send(Command::End);
    }
    let endings = futures_util::future::join_all(calls.into_iter().map(Call::finish)).await;
    for e in endings {
        if let Some(counted) = e.invocations
            && counted != e.accepted
        {
            sessions.invocations_mismatched += 1;
            sessions.first_mismatch.get_or_insert((e.accepted, counted));
        }
        if e.ended {
            sessions.ended += 1;
        } else if let Some(err) = e.error
            && sessions.problems.len() < 5
        {
            sessions.problems.push(err);
        }
    }
    let url = bench.args.url.clone();
    bench.finish(
        Mode::Websocket,
        url,
        sessions,
        (rss_before, rss_idle),
        window,
        None,
    )
}

/// Call ids unique to this run: `tag`, the process id and the start second, so runs against
/// one long-lived sidecar never reuse a call id.
#[allow(
    clippy::disallowed_methods,
    reason = "the load generator keeps its own clock, apart from the sidecar it measures"
)]
pub fn call_id_prefix(tag: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{tag}-{}-{secs}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_flags_must_be_objects() {
        assert!(json_object("--args", r#"{"a":1}"#).is_ok());
        assert!(
            json_object("--args", "[1]")
                .unwrap_err()
                .contains("JSON object")
        );
        assert!(
            json_object("--args", "{")
                .unwrap_err()
                .starts_with("--args")
        );
    }

    #[test]
    fn the_conversation_has_both_roles() {
        let t = turns();
        assert!(t.iter().any(|(r, _)| *r == "agent"));
        assert!(t.iter().any(|(r, _)| *r == "caller"));
    }
}
