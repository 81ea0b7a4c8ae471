//! From the call ledgers to the report: HDR histograms per measure, counts, the baseline
//! ratios, resources, and the verdict (lost or doubled results fail the run).
//!
//! Every latency is measured from the call's *scheduled* time, so the generator's own
//! lateness (`send lag`) is part of it and shown on its own line. Added latency is split into
//! its three legs: send lag, the request leg (taken up to send -> the provider has the
//! request) and the response leg (the provider answered -> the result arrived).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::calls::{CallTable, CallView, Status, histogram};
use crate::mock::MockReport;
use crate::proc::{MachineUsage, ProcUsage};

/// How the tool calls reached the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `tool.call` frames over WebSocket sessions (the v1 protocol).
    Websocket,
    /// Vapi `tool-calls` POSTs to a tool webhook (`--webhook`, SPEC §13.1).
    Webhook,
}

/// What the sidecar was configured to do, so lateness can be measured against it.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// The function's `filler_after_ms`.
    pub filler_after: Duration,
    /// The function's `defer_after_ms`.
    pub defer_after: Duration,
    /// A result later than this after its scheduled time counts as lost.
    pub result_timeout: Duration,
    /// Calls scheduled before this offset are sent and counted, but left out of latencies.
    pub warmup: Duration,
    /// Sessions the calls were spread over, round-robin (0: none, the baseline).
    pub sessions: usize,
}

/// What is known about a lost call, to find it in the sidecar's evidence.
#[derive(Debug, Clone, Serialize)]
pub struct LostCall {
    /// Its `tool.call` id.
    pub id: String,
    /// The index of the session that sent it (its `call_id` ends in `-<index>`).
    pub session: Option<usize>,
    /// When it was scheduled, in ms after the clock started.
    pub scheduled_ms: f64,
    /// How long after that it was taken up to send.
    pub sent_after_ms: f64,
    /// How many provider requests carried its token.
    pub provider_requests: u32,
    /// When the provider had the first of them, in ms after the scheduled time.
    pub provider_after_ms: Option<f64>,
    /// When its answer came, if it came late, in ms after the scheduled time.
    pub answer_after_ms: Option<f64>,
}

/// Most lost calls described in a report.
const LOST_EXAMPLES: usize = 10;

/// Percentiles of one measure, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: Option<f64>,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// 99.9th percentile.
    pub p99_9_ms: Option<f64>,
    /// Largest.
    pub max_ms: Option<f64>,
}

impl Summary {
    /// Summarise a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| Some(us as f64 / 1000.0);
        Summary {
            count: h.len(),
            mean_ms: Some(h.mean() / 1000.0),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p99_9_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    fn row(&self) -> [Option<f64>; 5] {
        [
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p99_9_ms,
            self.max_ms,
        ]
    }
}

/// Every latency measure of a phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latencies {
    /// Scheduled time to result.
    pub end_to_end: Summary,
    /// End-to-end minus the provider's own time for the same request.
    pub added: Summary,
    /// The same from the moment the call was taken up to send rather than its scheduled
    /// time: added latency without the generator's own lateness.
    pub added_from_send: Summary,
    /// Scheduled time to the call being taken up to send.
    pub send_lag: Summary,
    /// Taken up to send to the provider having the request.
    pub request_leg: Summary,
    /// The provider having answered to the result arriving.
    pub response_leg: Summary,
    /// Scheduled time to the first filler or result.
    pub first_signal: Summary,
    /// The provider's own time (arrival to response written).
    pub provider: Summary,
    /// First filler's arrival minus scheduled time minus `filler_after_ms`.
    pub filler_lateness: Summary,
    /// The first filler's `elapsed_ms` minus `filler_after_ms` (the sidecar's clock, whole ms).
    pub filler_lateness_sidecar_clock: Summary,
    /// A `deferred` result's arrival minus scheduled time minus `defer_after_ms`.
    pub deferral_lateness: Summary,
}

/// An `error` frame code.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    /// How many.
    pub count: u64,
    /// The first one's message.
    pub message: String,
}

/// One phase's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseReport {
    /// `sidecar` or `baseline`.
    pub phase: &'static str,
    /// Calls in the schedule.
    pub scheduled: u64,
    /// Calls taken up to send.
    pub sent: u64,
    /// Calls never sent (their session was gone, or the run was interrupted).
    pub unsent: u64,
    /// Calls answered within the result timeout (by a result, or refused by an error frame).
    pub answered: u64,
    /// Sent calls with no answer within the result timeout (HTTP: or whose request failed in
    /// transport, as the `error_frames` entry `transport` says).
    pub lost: u64,
    /// Of the lost, those whose answer came after the timeout.
    pub late: u64,
    /// The first lost calls, described.
    pub lost_examples: Vec<LostCall>,
    /// Calls with more than one `tool.result`.
    pub doubled: u64,
    /// Fillers that arrived after their call's result.
    pub fillers_after_result: u64,
    /// Results or fillers for ids this run never sent.
    pub unknown_ids: u64,
    /// Frames (webhook mode: answers) that could not be read.
    pub unreadable_frames: u64,
    /// The first of them, cut short.
    pub first_unreadable: Option<String>,
    /// Answers by status.
    pub statuses: BTreeMap<String, u64>,
    /// `error` frames by code.
    pub error_frames: BTreeMap<String, ErrorCount>,
    /// The first `output` per non-success status.
    pub examples: BTreeMap<String, String>,
    /// Calls whose single provider request finished before their result.
    pub provider_matched: u64,
    /// Calls the provider saw more than once (retries).
    pub provider_repeated: u64,
    /// Calls the provider never saw (rejected by a guard, deferred before sending, ...).
    pub provider_unseen: u64,
    /// Calls with at least one filler.
    pub with_filler: u64,
    /// Fillers that came before `filler_after_ms` (none should).
    pub fillers_early: u64,
    /// `deferred` results that came before `defer_after_ms` (predictive deferrals and
    /// retryable failures hand off early by design).
    pub deferred_early: u64,
    /// Calls in the latency figures (after the warm-up).
    pub measured: u64,
    /// Calls sent per second of schedule.
    pub send_rate: f64,
    /// Latency measures.
    pub latency: Latencies,
}

/// Accumulates a phase's histograms.
struct Hists {
    e2e: Histogram<u64>,
    added: Histogram<u64>,
    added_from_send: Histogram<u64>,
    send_lag: Histogram<u64>,
    request_leg: Histogram<u64>,
    response_leg: Histogram<u64>,
    first_signal: Histogram<u64>,
    provider: Histogram<u64>,
    filler: Histogram<u64>,
    filler_sidecar: Histogram<u64>,
    deferral: Histogram<u64>,
}

fn us(ns: u64) -> u64 {
    // Zero would be refused by a histogram starting at 1 µs; sub-microsecond is "1 µs".
    (ns / 1000).max(1)
}

/// The added latency of one call and its legs, when its provider request can be matched:
/// exactly one request, finished before the result arrived.
pub fn added_latency(v: &CallView) -> Option<(u64, u64, u64)> {
    if v.provider_requests != 1 || v.result == 0 || v.sent == 0 {
        return None;
    }
    let provider_done = v.provider_arrival + v.provider_own;
    if provider_done > v.result || v.provider_arrival < v.sent {
        return None;
    }
    let e2e = v.result.saturating_sub(v.scheduled);
    Some((
        e2e - v.provider_own,
        v.provider_arrival - v.sent,
        v.result - provider_done,
    ))
}

fn lost_call(n: u32, v: &CallView, sessions: usize) -> LostCall {
    let ms = |ns: u64| ns as f64 / 1e6;
    let after = |at: u64| (at != 0).then(|| ms(at.saturating_sub(v.scheduled)));
    LostCall {
        id: format!("tc{n}"),
        session: (sessions > 0).then(|| n as usize % sessions),
        scheduled_ms: ms(v.offset),
        sent_after_ms: ms(v.sent.saturating_sub(v.scheduled)),
        provider_requests: v.provider_requests,
        provider_after_ms: after(v.provider_arrival),
        answer_after_ms: (v.status != Status::Transport)
            .then(|| after(v.result))
            .flatten(),
    }
}

/// Analyse a finished phase.
pub fn analyze(table: &CallTable, expect: &Expect) -> PhaseReport {
    let mut r = PhaseReport {
        phase: table.phase.name(),
        scheduled: table.len() as u64,
        ..Default::default()
    };
    let mut h = Hists {
        e2e: histogram(),
        added: histogram(),
        added_from_send: histogram(),
        send_lag: histogram(),
        request_leg: histogram(),
        response_leg: histogram(),
        first_signal: histogram(),
        provider: histogram(),
        filler: histogram(),
        filler_sidecar: histogram(),
        deferral: histogram(),
    };
    let timeout = expect.result_timeout.as_nanos() as u64;
    let warmup = expect.warmup.as_nanos() as u64;
    let filler_after = expect.filler_after.as_nanos() as u64;
    let defer_after = expect.defer_after.as_nanos() as u64;
    let mut statuses: BTreeMap<Status, u64> = BTreeMap::new();
    for (n, v) in table.views().enumerate() {
        if v.sent == 0 {
            r.unsent += 1;
            continue;
        }
        r.sent += 1;
        if v.results > 1 {
            r.doubled += 1;
        }
        if v.filler_after_result {
            r.fillers_after_result += 1;
        }
        if v.fillers > 0 {
            r.with_filler += 1;
        }
        // A request whose connection failed (HTTP: webhook mode, the baseline) got no answer.
        let failed = v.status == Status::Transport;
        let late = !failed && v.status != Status::None && v.result > v.scheduled + timeout;
        if v.status == Status::None || late || failed {
            r.lost += 1;
            if late {
                r.late += 1;
            }
            if r.lost_examples.len() < LOST_EXAMPLES {
                r.lost_examples
                    .push(lost_call(n as u32, &v, expect.sessions));
            }
            continue;
        }
        r.answered += 1;
        *statuses.entry(v.status).or_default() += 1;
        match v.provider_requests {
            0 => r.provider_unseen += 1,
            1 => {}
            _ => r.provider_repeated += 1,
        }
        let added = added_latency(&v);
        if added.is_some() {
            r.provider_matched += 1;
        }
        if v.offset < warmup {
            continue;
        }
        r.measured += 1;
        h.e2e.saturating_record(us(v.result - v.scheduled));
        h.send_lag
            .saturating_record(us(v.sent.saturating_sub(v.scheduled)));
        let first = if v.filler != 0 {
            v.filler.min(v.result)
        } else {
            v.result
        };
        h.first_signal.saturating_record(us(first - v.scheduled));
        if let Some((added, request_leg, response_leg)) = added {
            h.added.saturating_record(us(added));
            h.added_from_send
                .saturating_record(us(request_leg + response_leg));
            h.request_leg.saturating_record(us(request_leg));
            h.response_leg.saturating_record(us(response_leg));
            h.provider.saturating_record(us(v.provider_own));
        }
        if v.fillers > 0 {
            let since = v.filler - v.scheduled;
            if since < filler_after {
                r.fillers_early += 1;
            } else {
                h.filler.saturating_record(us(since - filler_after));
            }
            let sidecar_ms = (v.filler_elapsed_ms as u64).saturating_sub(filler_after / 1_000_000);
            h.filler_sidecar
                .saturating_record((sidecar_ms * 1000).max(1));
        }
        if v.status == Status::Deferred {
            let since = v.result - v.scheduled;
            if since < defer_after {
                r.deferred_early += 1;
            } else {
                h.deferral.saturating_record(us(since - defer_after));
            }
        }
    }
    r.statuses = statuses
        .into_iter()
        .map(|(s, n)| (s.name().to_owned(), n))
        .collect();
    let notes = table.notes();
    r.unknown_ids = notes.unknown_ids;
    r.unreadable_frames = notes.unreadable;
    r.first_unreadable = notes.first_unreadable.clone();
    r.error_frames = notes
        .errors
        .iter()
        .map(|(code, (count, message))| {
            (
                code.clone(),
                ErrorCount {
                    count: *count,
                    message: message.clone(),
                },
            )
        })
        .collect();
    r.examples = notes
        .examples
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let secs = table.schedule().duration.as_secs_f64();
    r.send_rate = if secs > 0.0 {
        r.sent as f64 / secs
    } else {
        0.0
    };
    r.latency = Latencies {
        end_to_end: Summary::of(&h.e2e),
        added: Summary::of(&h.added),
        added_from_send: Summary::of(&h.added_from_send),
        send_lag: Summary::of(&h.send_lag),
        request_leg: Summary::of(&h.request_leg),
        response_leg: Summary::of(&h.response_leg),
        first_signal: Summary::of(&h.first_signal),
        provider: Summary::of(&h.provider),
        filler_lateness: Summary::of(&h.filler),
        filler_lateness_sidecar_clock: Summary::of(&h.filler_sidecar),
        deferral_lateness: Summary::of(&h.deferral),
    };
    r
}

/// Sidecar figures divided by the baseline's, per percentile.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratio {
    /// Of the medians.
    pub p50: Option<f64>,
    /// Of the 90th percentiles.
    pub p90: Option<f64>,
    /// Of the 99th percentiles.
    pub p99: Option<f64>,
    /// Of the 99.9th percentiles.
    pub p99_9: Option<f64>,
    /// Of the maxima.
    pub max: Option<f64>,
}

impl Ratio {
    fn of(a: &Summary, b: &Summary) -> Ratio {
        let div = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
            _ => None,
        };
        Ratio {
            p50: div(a.p50_ms, b.p50_ms),
            p90: div(a.p90_ms, b.p90_ms),
            p99: div(a.p99_ms, b.p99_ms),
            p99_9: div(a.p99_9_ms, b.p99_9_ms),
            max: div(a.max_ms, b.max_ms),
        }
    }

    fn row(&self) -> [Option<f64>; 5] {
        [self.p50, self.p90, self.p99, self.p99_9, self.max]
    }
}

/// Sidecar / baseline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    /// End-to-end latency.
    pub end_to_end: Ratio,
    /// Added latency.
    pub added: Ratio,
    /// Added latency from the send.
    pub added_from_send: Ratio,
}

impl Ratios {
    /// Compare the sidecar phase with the baseline.
    pub fn of(sidecar: &PhaseReport, baseline: &PhaseReport) -> Ratios {
        Ratios {
            end_to_end: Ratio::of(&sidecar.latency.end_to_end, &baseline.latency.end_to_end),
            added: Ratio::of(&sidecar.latency.added, &baseline.latency.added),
            added_from_send: Ratio::of(
                &sidecar.latency.added_from_send,
                &baseline.latency.added_from_send,
            ),
        }
    }
}

/// The run as asked for.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// How the tool calls reached the sidecar.
    pub mode: Mode,
    /// The sidecar's WebSocket URL (webhook mode: the hook's URL).
    pub url: String,
    /// The agent (webhook mode: empty, the hook names it).
    pub agent: String,
    /// The function called.
    pub function: String,
    /// Concurrent calls (webhook mode: platform call ids).
    pub sessions: usize,
    /// Tool calls per second.
    pub rate: f64,
    /// Seconds of sending.
    pub duration_s: f64,
    /// `poisson` or `fixed`.
    pub arrivals: &'static str,
    /// The seed of the Poisson schedule.
    pub seed: u64,
    /// Seconds at the start left out of the latencies.
    pub warmup_s: f64,
    /// A result later than this counts as lost.
    pub result_timeout_s: f64,
    /// `filler_after_ms` fillers are measured against.
    pub filler_after_ms: u64,
    /// `defer_after_ms` deferrals are measured against.
    pub defer_after_ms: u64,
    /// Session `call_id`s (webhook mode: the platform's call ids) are this prefix, a dash and
    /// the session's index.
    pub call_id_prefix: String,
    /// Generator worker threads.
    pub threads: usize,
    /// The run was stopped early (Ctrl-C).
    pub interrupted: bool,
}

/// The calls' sessions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionsInfo {
    /// Opened before the clock started (webhook mode: by one set-up request each).
    pub opened: usize,
    /// How long opening them took.
    pub open_ms: u64,
    /// Answered `session.end` with `session.ended` (webhook mode: answered an
    /// `end-of-call-report` with 200).
    pub ended: usize,
    /// Sessions whose `session.ended.invocations` differs from the tool calls the sidecar
    /// accepted from them (sent and not refused by an `error` frame).
    pub invocations_mismatched: usize,
    /// The first such mismatch: (accepted, invocations).
    pub first_mismatch: Option<(u64, u64)>,
    /// The first problems with ending them.
    pub problems: Vec<String>,
}

/// Webhook mode's side of the run.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookInfo {
    /// The platform whose requests are played (`vapi`).
    pub platform: &'static str,
    /// How the secret is sent.
    pub auth: &'static str,
    /// The size of a request body, in bytes (the first one's; they differ by a few digits).
    pub body_bytes: usize,
    /// Keep-alive HTTP connections the generator opened to the sidecar, set-up included.
    pub connections: u64,
}

/// CPU and memory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    /// The sidecar's pid, when watched.
    pub sidecar_pid: Option<u32>,
    /// The sidecar's CPU while tool calls were sent, divided by the tool calls sent, in µs.
    pub sidecar_cpu_us_per_call: Option<f64>,
    /// The sidecar's resident memory before the calls were opened.
    pub sidecar_rss_before_mib: Option<f64>,
    /// The sidecar's resident memory with every call open, before the clock started.
    pub sidecar_rss_idle_mib: Option<f64>,
    /// Other processes' CPU while tool calls were sent, in % of one core (the machine's busy
    /// time minus the sidecar's and the generator's): a busy neighbour skews the figures.
    pub others_cpu_pct: Option<f64>,
    /// The sidecar while tool calls were sent.
    pub sidecar: Option<ProcUsage>,
    /// This process (generator and mock) while tool calls were sent.
    pub generator: Option<ProcUsage>,
    /// The machine while tool calls were sent.
    pub machine: Option<MachineUsage>,
    /// The baseline phase: this process.
    pub baseline_generator: Option<ProcUsage>,
}

/// One progress line.
#[derive(Debug, Clone, Serialize)]
pub struct ProgressRow {
    /// `sidecar` or `baseline`.
    pub phase: &'static str,
    /// Seconds since the phase's clock started.
    pub t_s: u64,
    /// Calls sent so far.
    pub sent: u64,
    /// Calls answered so far.
    pub answered: u64,
    /// Sent and not yet answered.
    pub in_flight: u64,
    /// End-to-end p99 of the answers of the last second.
    pub p99_ms: Option<f64>,
    /// The sidecar's CPU over the last second, in % of one core.
    pub sidecar_cpu_pct: Option<f64>,
}

/// Pass or fail, and why.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// No problem found.
    pub passed: bool,
    /// What failed the run.
    pub problems: Vec<String>,
}

/// The whole report (`--json` writes it as is).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `toolgate-loadtest`.
    pub tool: &'static str,
    /// This tool's version.
    pub version: &'static str,
    /// The run as asked for.
    pub run: RunInfo,
    /// The calls' sessions.
    pub sessions: SessionsInfo,
    /// Webhook mode's requests and connections.
    pub webhook: Option<WebhookInfo>,
    /// The mock provider, when it ran.
    pub mock: Option<MockReport>,
    /// Tool calls through the sidecar.
    pub sidecar: PhaseReport,
    /// Requests straight to the mock (`--baseline`).
    pub baseline: Option<PhaseReport>,
    /// Sidecar / baseline.
    pub ratios: Option<Ratios>,
    /// CPU and memory.
    pub resources: Resources,
    /// Progress, second by second.
    pub timeline: Vec<ProgressRow>,
    /// Pass or fail.
    pub verdict: Verdict,
}

/// Print a report's text and, with `json`, write the report there as JSON.
pub fn publish<T: Serialize>(text: &str, report: &T, json: Option<&Path>) -> Result<(), String> {
    print!("{text}");
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| format!("cannot encode the JSON report: {e}"))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!(
            "toolgate-loadtest: JSON report written to {}",
            path.display()
        );
    }
    Ok(())
}

/// CPU µs per event: `usage`'s mean over a window of `secs`, spread over `events`.
pub fn cpu_us_per(usage: Option<&ProcUsage>, secs: f64, events: u64) -> Option<f64> {
    let u = usage?;
    (events > 0).then(|| u.cpu_mean_pct / 100.0 * secs * 1e6 / events as f64)
}

/// What fails a run: anything lost, doubled or out of order, and protocol errors. With
/// `no_provider_retries` (webhook mode against a mock that never fails), a tool call that
/// reached the provider more than once fails it too.
pub fn verdict(
    sidecar: &PhaseReport,
    baseline: Option<&PhaseReport>,
    sessions: &SessionsInfo,
    mode: Mode,
    no_provider_retries: bool,
) -> Verdict {
    let mut problems = Vec::new();
    let p = sidecar;
    let webhook = mode == Mode::Webhook;
    if p.lost > 0 {
        problems.push(if webhook {
            format!(
                "{} tool calls lost (no 200 answer listing their toolCallId within the result timeout; {} of them came late)",
                p.lost, p.late
            )
        } else {
            format!(
                "{} tool calls lost (no tool.result within the result timeout; {} of them came late)",
                p.lost, p.late
            )
        });
    }
    if p.doubled > 0 {
        problems.push(if webhook {
            format!(
                "{} tool calls were listed more than once in their answer's results",
                p.doubled
            )
        } else {
            format!("{} tool calls got more than one tool.result", p.doubled)
        });
    }
    if no_provider_retries && p.provider_repeated > 0 {
        problems.push(format!(
            "{} tool calls reached the provider more than once, though it never failed",
            p.provider_repeated
        ));
    }
    if p.fillers_after_result > 0 {
        problems.push(format!(
            "{} fillers arrived after their result",
            p.fillers_after_result
        ));
    }
    if p.unsent > 0 {
        problems.push(format!("{} scheduled tool calls were never sent", p.unsent));
    }
    let (frames, error_frames) = if webhook {
        ("answers", "error answers")
    } else {
        ("frames", "error frames")
    };
    if p.unknown_ids > 0 {
        problems.push(format!(
            "{} {frames} named tool call ids this run never sent",
            p.unknown_ids
        ));
    }
    let errors: u64 = p.error_frames.values().map(|e| e.count).sum();
    if errors > 0 {
        let codes: Vec<String> = p
            .error_frames
            .iter()
            .map(|(c, e)| format!("{c} x{} ({})", e.count, e.message))
            .collect();
        problems.push(format!("{errors} {error_frames}: {}", codes.join("; ")));
    }
    if p.unreadable_frames > 0 {
        problems.push(format!(
            "{} {frames} could not be read{}",
            p.unreadable_frames,
            p.first_unreadable
                .as_deref()
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default()
        ));
    }
    if sessions.ended < sessions.opened {
        problems.push(format!(
            "{} of {} {} did not end cleanly{}",
            sessions.opened - sessions.ended,
            sessions.opened,
            if webhook {
                "platform calls"
            } else {
                "sessions"
            },
            sessions
                .problems
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ));
    }
    if let Some(b) = baseline
        && (b.lost > 0 || b.unsent > 0)
    {
        problems.push(format!(
            "the baseline lost {} requests and could not send {}",
            b.lost, b.unsent
        ));
    }
    Verdict {
        passed: problems.is_empty(),
        problems,
    }
}

pub(crate) fn cell(v: Option<f64>) -> String {
    match v {
        Some(x) => format!("{x:>9.3}"),
        None => format!("{:>9}", "-"),
    }
}

pub(crate) fn latency_row(out: &mut String, name: &str, s: &Summary) {
    let _ = write!(out, "  {name:<36}{:>8}", s.count);
    for v in s.row() {
        out.push_str(&cell(v));
    }
    let _ = writeln!(out, "{}", cell(s.mean_ms));
}

fn phase_text(out: &mut String, p: &PhaseReport, run: &RunInfo) {
    let (filler_after, defer_after) = (run.filler_after_ms, run.defer_after_ms);
    let webhook = run.mode == Mode::Webhook;
    let _ = writeln!(
        out,
        "calls        scheduled {}  sent {}  answered {}  lost {} (late {})  doubled {}  unsent {}",
        p.scheduled, p.sent, p.answered, p.lost, p.late, p.doubled, p.unsent
    );
    for l in &p.lost_examples {
        let _ = writeln!(
            out,
            "  lost {} (session {}): scheduled at {:.3} ms, sent +{:.3} ms, provider requests {}{}{}",
            l.id,
            l.session.map_or("-".into(), |s| s.to_string()),
            l.scheduled_ms,
            l.sent_after_ms,
            l.provider_requests,
            l.provider_after_ms
                .map_or(String::new(), |t| format!(" (first at +{t:.3} ms)")),
            l.answer_after_ms
                .map_or(String::new(), |t| format!(", answered late at +{t:.3} ms")),
        );
    }
    let statuses: Vec<String> = p.statuses.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let _ = writeln!(
        out,
        "statuses     {}",
        if statuses.is_empty() {
            "-".into()
        } else {
            statuses.join("  ")
        }
    );
    for (status, output) in &p.examples {
        let _ = writeln!(out, "  first {status}: {output}");
    }
    let errors: u64 = p.error_frames.values().map(|e| e.count).sum();
    if webhook {
        let _ = writeln!(
            out,
            "protocol     error answers {errors}  unknown ids {}  unreadable answers {}",
            p.unknown_ids, p.unreadable_frames
        );
    } else {
        let _ = writeln!(
            out,
            "protocol     error frames {errors}  fillers after result {}  unknown ids {}  unreadable frames {}",
            p.fillers_after_result, p.unknown_ids, p.unreadable_frames
        );
    }
    for (code, e) in &p.error_frames {
        let _ = writeln!(out, "  {code} x{}: {}", e.count, e.message);
    }
    if let Some(first) = &p.first_unreadable {
        let _ = writeln!(out, "  first unreadable: {first}");
    }
    let _ = writeln!(
        out,
        "provider     matched {}  repeated {}  never reached {}",
        p.provider_matched, p.provider_repeated, p.provider_unseen
    );
    if webhook {
        let _ = writeln!(
            out,
            "timing       deferred early {}  measured {} calls  sent {:.1}/s",
            p.deferred_early, p.measured, p.send_rate
        );
    } else {
        let _ = writeln!(
            out,
            "timing       fillers {} (early {})  deferred early {}  measured {} calls  sent {:.1}/s",
            p.with_filler, p.fillers_early, p.deferred_early, p.measured, p.send_rate
        );
    }
    let _ = writeln!(
        out,
        "  {:<36}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    let l = &p.latency;
    latency_row(out, "end-to-end", &l.end_to_end);
    latency_row(out, "added (end-to-end - provider)", &l.added);
    latency_row(out, "  from the send (no send lag)", &l.added_from_send);
    latency_row(out, "  send lag (generator)", &l.send_lag);
    latency_row(out, "  request leg (sent -> provider)", &l.request_leg);
    latency_row(out, "  response leg (provider -> result)", &l.response_leg);
    latency_row(out, "provider own time", &l.provider);
    if p.phase == "sidecar" {
        // Over HTTP there is no filler: the answer is the first signal.
        if !webhook {
            latency_row(out, "first signal (filler or result)", &l.first_signal);
            latency_row(
                out,
                &format!("filler lateness (vs {filler_after} ms)"),
                &l.filler_lateness,
            );
            latency_row(
                out,
                "  same, sidecar's elapsed_ms",
                &l.filler_lateness_sidecar_clock,
            );
        }
        latency_row(
            out,
            &format!("deferral lateness (vs {defer_after} ms)"),
            &l.deferral_lateness,
        );
    }
}

/// The machine line: busy share, its source, and how long tasks waited for a CPU.
pub(crate) fn machine_text(m: &MachineUsage) -> String {
    let mut s = format!(
        "{:.1}% busy across {} CPUs ({})",
        m.busy_pct, m.cpus, m.busy_source
    );
    if let Some(p) = m.cpu_pressure_pct {
        let _ = write!(s, "; some task waited for a CPU {p:.1}% of the time");
    }
    s
}

pub(crate) fn usage_text(out: &mut String, name: &str, u: &ProcUsage) {
    let _ = writeln!(
        out,
        "  {name:<10} CPU {:.1}% of a core (busiest second {:.1}%)  RSS {:.1} -> max {:.1} MiB (peak {:.1})  threads {}",
        u.cpu_mean_pct, u.cpu_max_pct, u.rss_start_mib, u.rss_max_mib, u.rss_peak_mib, u.threads
    );
}

/// The WebSocket sessions line.
fn sessions_text(out: &mut String, s: &SessionsInfo) {
    let _ = write!(
        out,
        "sessions     {} opened in {} ms, {} ended cleanly",
        s.opened, s.open_ms, s.ended
    );
    match s.first_mismatch {
        Some((accepted, counted)) => {
            let _ = writeln!(
                out,
                "; {} counted other invocations than they sent (first: sent {accepted}, session.ended says {counted})",
                s.invocations_mismatched
            );
        }
        None => {
            let _ = writeln!(out, "; session.ended invocations match what each sent");
        }
    }
}

/// The report as text.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let run = &r.run;
    let _ = writeln!(out, "\n== toolgate-loadtest {} ==", r.version);
    match &r.webhook {
        Some(w) => {
            let _ = writeln!(
                out,
                "target       POST {}  {} tool-calls ({} bytes, {})  function {}",
                run.url, w.platform, w.body_bytes, w.auth, run.function
            );
        }
        None => {
            let _ = writeln!(
                out,
                "target       {}  agent {}  function {}",
                run.url, run.agent, run.function
            );
        }
    }
    let _ = writeln!(
        out,
        "load         {} {}, {} tool calls/s ({} arrivals, seed {}) for {} s, warm-up {} s, result timeout {} s{}",
        run.sessions,
        if r.webhook.is_some() {
            "platform calls"
        } else {
            "calls"
        },
        run.rate,
        run.arrivals,
        run.seed,
        run.duration_s,
        run.warmup_s,
        run.result_timeout_s,
        if run.interrupted { "  INTERRUPTED" } else { "" }
    );
    if let Some(m) = &r.mock {
        let _ = writeln!(
            out,
            "mock         {}  latency {}  error rate {}  requests {} (webhooks {}, emails {}, checks {})  503s {}  unmatched {}  unsigned {}  max in flight {}",
            m.listen,
            m.latency,
            m.error_rate,
            m.requests,
            m.webhooks,
            m.emails,
            m.validations,
            m.errors_503,
            m.unmatched,
            m.unsigned,
            m.max_in_flight
        );
    }
    if let Some(w) = &r.webhook {
        let _ = writeln!(
            out,
            "sessions     {} platform calls opened in {} ms (one set-up request each), {} ended by end-of-call-report; {} keep-alive connections",
            r.sessions.opened, r.sessions.open_ms, r.sessions.ended, w.connections
        );
        for p in &r.sessions.problems {
            let _ = writeln!(out, "  {p}");
        }
    } else {
        sessions_text(&mut out, &r.sessions);
    }
    let _ = writeln!(out, "\n-- sidecar --");
    phase_text(&mut out, &r.sidecar, run);
    if let Some(b) = &r.baseline {
        let _ = writeln!(
            out,
            "\n-- baseline (straight to the mock, same schedule) --"
        );
        phase_text(&mut out, b, run);
    }
    if let Some(ratios) = &r.ratios {
        let _ = writeln!(out, "\n-- sidecar / baseline --");
        let _ = writeln!(
            out,
            "  {:<36}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "ratio", "", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, ratio) in [
            ("end-to-end", &ratios.end_to_end),
            ("added", &ratios.added),
            ("added from the send", &ratios.added_from_send),
        ] {
            let _ = write!(out, "  {name:<36}{:>8}", "");
            for v in ratio.row() {
                out.push_str(&cell(v));
            }
            out.push('\n');
        }
    }
    let res = &r.resources;
    let _ = writeln!(out, "\n-- resources while sending --");
    match (res.sidecar_pid, &res.sidecar) {
        (Some(_), Some(u)) => {
            usage_text(&mut out, "sidecar", u);
            if let Some(us) = res.sidecar_cpu_us_per_call {
                let _ = writeln!(
                    out,
                    "  sidecar    CPU {us:.1} µs per tool call{}",
                    if r.webhook.is_some() {
                        " (per webhook request)"
                    } else {
                        ""
                    }
                );
            }
        }
        (Some(pid), None) => {
            let _ = writeln!(out, "  sidecar    pid {pid}: no readings (did it exit?)");
        }
        (None, _) => {
            let _ = writeln!(out, "  sidecar    not watched (pass --sidecar-pid)");
        }
    }
    if let Some(idle) = res.sidecar_rss_idle_mib {
        let _ = write!(
            out,
            "  sidecar    RSS {idle:.1} MiB with {} calls open before the clock",
            r.sessions.opened
        );
        if let Some(before) = res.sidecar_rss_before_mib
            && r.sessions.opened > 0
        {
            let _ = write!(
                out,
                " ({before:.1} MiB before they opened: {:.1} KiB per call)",
                (idle - before) * 1024.0 / r.sessions.opened as f64
            );
        }
        out.push('\n');
    }
    if let Some(u) = &res.generator {
        usage_text(&mut out, "generator", u);
    }
    if let Some(m) = &res.machine {
        let _ = writeln!(out, "  machine    {}", machine_text(m));
    }
    let _ = writeln!(out, "\n-- verdict --");
    if r.verdict.passed {
        let _ = writeln!(
            out,
            "  PASS: every tool call answered exactly once, no protocol errors{}",
            if r.webhook.is_some() {
                " (each request: 200, its toolCallId in results)"
            } else {
                ""
            }
        );
    } else {
        for p in &r.verdict.problems {
            let _ = writeln!(out, "  FAIL: {p}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::Phase;
    use crate::schedule::{Arrivals, Schedule};
    use std::sync::Arc;

    const MS: u64 = 1_000_000;

    fn expect() -> Expect {
        Expect {
            filler_after: Duration::from_millis(500),
            defer_after: Duration::from_millis(2500),
            result_timeout: Duration::from_secs(15),
            warmup: Duration::ZERO,
            sessions: 2,
        }
    }

    fn table(calls: u64) -> CallTable {
        let s = Schedule::build(1000.0, Duration::from_millis(calls), Arrivals::Fixed, 0).unwrap();
        let t = CallTable::new(Phase::Sidecar, Arc::new(s));
        t.start_clock(1_000 * MS);
        t
    }

    #[test]
    fn added_latency_subtracts_the_providers_own_time_per_request() {
        let t = table(4);
        // Call 0: sent 0.1 ms late, the provider has it 0.2 ms later, takes 50 ms, the result
        // is back 0.3 ms after that: 0.6 ms added.
        let s0 = t.scheduled(0);
        t.mark_sent(0, s0 + MS / 10);
        t.mark_provider(0, s0 + 3 * MS / 10, 50 * MS);
        t.mark_result(0, s0 + 50 * MS + 6 * MS / 10, Status::Succeeded);
        // Call 1: a filler at 501 ms, deferred at 2.502 s before the provider answered.
        let s1 = t.scheduled(1);
        t.mark_sent(1, s1);
        t.mark_provider(1, s1 + MS, 3_000 * MS);
        t.mark_filler(1, s1 + 501 * MS, 501);
        t.mark_result(1, s1 + 2_502 * MS, Status::Deferred);
        // Call 2: answered twice. Call 3: never answered.
        let s2 = t.scheduled(2);
        t.mark_sent(2, s2);
        t.mark_result(2, s2 + MS, Status::Rejected);
        t.mark_result(2, s2 + 2 * MS, Status::Rejected);
        t.mark_sent(3, t.scheduled(3));

        let r = analyze(&t, &expect());
        assert_eq!(
            (r.sent, r.answered, r.lost, r.doubled, r.unsent),
            (4, 3, 1, 1, 0)
        );
        assert_eq!(r.statuses.get("succeeded"), Some(&1));
        assert_eq!(r.statuses.get("deferred"), Some(&1));
        assert_eq!(r.provider_matched, 1);
        assert_eq!(r.provider_unseen, 1);
        let added = &r.latency.added;
        assert_eq!(added.count, 1);
        assert!((added.p50_ms.unwrap() - 0.6).abs() < 0.01, "{added:?}");
        assert!((r.latency.send_lag.max_ms.unwrap() - 0.1).abs() < 0.01);
        assert!((r.latency.added_from_send.p50_ms.unwrap() - 0.5).abs() < 0.01);
        assert!((r.latency.request_leg.p50_ms.unwrap() - 0.2).abs() < 0.01);
        assert!((r.latency.response_leg.p50_ms.unwrap() - 0.3).abs() < 0.01);
        assert!((r.latency.filler_lateness.p50_ms.unwrap() - 1.0).abs() < 0.01);
        assert!((r.latency.filler_lateness_sidecar_clock.p50_ms.unwrap() - 1.0).abs() < 0.01);
        assert!((r.latency.deferral_lateness.p50_ms.unwrap() - 2.0).abs() < 0.01);
        // The deferred call's first signal is its filler.
        assert_eq!(r.latency.first_signal.count, 3);

        let v = verdict(&r, None, &SessionsInfo::default(), Mode::Websocket, false);
        assert!(!v.passed);
        assert!(v.problems.iter().any(|p| p.contains("1 tool calls lost")));
        assert_eq!(r.lost_examples.len(), 1);
        assert_eq!(r.lost_examples[0].id, "tc3");
        assert_eq!(r.lost_examples[0].session, Some(1));
        assert_eq!(r.lost_examples[0].provider_requests, 0);
        assert!(v.problems.iter().any(|p| p.contains("more than one")));
    }

    #[test]
    fn late_results_are_lost_and_warmup_is_left_out() {
        let t = table(2);
        let s0 = t.scheduled(0);
        t.mark_sent(0, s0);
        t.mark_result(0, s0 + 16_000 * MS, Status::Succeeded);
        let s1 = t.scheduled(1);
        t.mark_sent(1, s1);
        t.mark_result(1, s1 + MS, Status::Succeeded);
        let mut e = expect();
        e.warmup = Duration::from_micros(1500);
        let r = analyze(&t, &e);
        assert_eq!((r.lost, r.late, r.answered), (1, 1, 1));
        // Call 1 is at 1 ms, inside the warm-up: counted but not measured.
        assert_eq!(r.measured, 0);
        assert_eq!(r.latency.end_to_end.count, 0);
    }

    #[test]
    fn ratios_divide_percentiles() {
        let mut a = PhaseReport::default();
        let mut b = PhaseReport::default();
        a.latency.added.p50_ms = Some(0.4);
        b.latency.added.p50_ms = Some(0.2);
        a.latency.added.p99_ms = Some(1.0);
        let r = Ratios::of(&a, &b);
        assert_eq!(r.added.p50, Some(2.0));
        assert_eq!(r.added.p99, None);
    }

    #[test]
    fn a_clean_run_passes() {
        let t = table(1);
        let s = t.scheduled(0);
        t.mark_sent(0, s);
        t.mark_result(0, s + MS, Status::Succeeded);
        let r = analyze(&t, &expect());
        let sessions = SessionsInfo {
            opened: 1,
            ended: 1,
            ..Default::default()
        };
        assert!(verdict(&r, None, &sessions, Mode::Websocket, false).passed);
    }
}
