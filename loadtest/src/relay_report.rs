//! Relay mode's report: per phase (through the relay, straight to the upstream) HDR percentiles
//! of the round trip and of each pass-through leg; what the relay added (relay minus direct,
//! percentile by percentile); the sidecar's CPU per frame; the verdict (lost, doubled,
//! reordered or unsent frames fail the run).
//!
//! A round trip crosses the relay twice: client -> relay -> upstream (the *up leg*) and
//! upstream -> relay -> client (the *down leg*). The legs are measured on their own (the fake
//! upstream runs in this process, on the same clock), so the cost of one pass-through frame is
//! the added latency of one leg, not a guess from half the round trip; half the round trip is
//! shown beside it.

use std::fmt::Write as _;

use serde::Serialize;

use crate::calls::histogram;
use crate::frames::{FrameTable, FrameView};
use crate::proc::{MachineUsage, ProcUsage};
use crate::report::{ProgressRow, Summary, Verdict, cell, latency_row, machine_text, usage_text};
use crate::upstream::UpstreamReport;

/// Latency measures of one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FrameLatencies {
    /// Scheduled time -> echo arrived.
    pub round_trip: Summary,
    /// Taken up to write -> echo arrived: the round trip without the generator's lateness.
    pub round_trip_from_send: Summary,
    /// Scheduled time -> taken up to write.
    pub send_lag: Summary,
    /// Taken up to write -> the upstream read it (one pass-through through the relay).
    pub up_leg: Summary,
    /// The upstream handed the echo over -> the client read it (one pass-through).
    pub down_leg: Summary,
    /// The upstream's own time: read -> echo handed over.
    pub upstream_own: Summary,
}

/// One phase's frames.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FramePhaseReport {
    /// `relay` or `direct`.
    pub phase: &'static str,
    /// Connections (calls) the frames were spread over.
    pub calls: usize,
    /// Frames in the schedule.
    pub scheduled: u64,
    /// Frames taken up to write.
    pub sent: u64,
    /// Frames never sent (their call's socket failed, or Ctrl-C).
    pub unsent: u64,
    /// Frames echoed within the timeout.
    pub echoed: u64,
    /// Sent frames with no echo within the timeout.
    pub lost: u64,
    /// Of the lost, those whose echo came after the timeout.
    pub late: u64,
    /// Of the lost, those the upstream never read (lost on the way up).
    pub lost_upstream: u64,
    /// Frames echoed more than once.
    pub doubled: u64,
    /// Frames the upstream read more than once.
    pub upstream_repeated: u64,
    /// Echoes that arrived on a call after a later-numbered one.
    pub out_of_order: u64,
    /// Frames the upstream read after a later-numbered one on the same connection.
    pub upstream_out_of_order: u64,
    /// Frames naming numbers outside this phase.
    pub unknown: u64,
    /// Data frames the calls got that were not echoes of theirs.
    pub other_frames: u64,
    /// Calls whose socket failed or closed before the end.
    pub failed_calls: u64,
    /// The first such failure.
    pub first_failure: Option<String>,
    /// Calls whose close was answered with a close frame.
    pub closed_cleanly: u64,
    /// Frames in the latency figures (after the warm-up).
    pub measured: u64,
    /// Frames sent per second of schedule.
    pub send_rate: f64,
    /// Latency measures.
    pub latency: FrameLatencies,
}

/// How the calls of a phase ended, as their tasks saw it.
#[derive(Debug, Clone, Default)]
pub struct Endings {
    /// Echoes that arrived after a later-numbered one.
    pub out_of_order: u64,
    /// Data frames that were not this call's echoes.
    pub other_frames: u64,
    /// Calls whose socket failed before the end.
    pub failed: u64,
    /// The first failure.
    pub first_failure: Option<String>,
    /// Calls whose close was answered with a close frame.
    pub closed_cleanly: u64,
}

fn us(ns: u64) -> u64 {
    (ns / 1000).max(1)
}

/// Analyse a finished phase.
pub fn analyze(
    table: &FrameTable,
    calls: usize,
    warmup_ns: u64,
    timeout_ns: u64,
    endings: &Endings,
    upstream_out_of_order: u64,
) -> FramePhaseReport {
    let mut r = FramePhaseReport {
        phase: table.phase.name(),
        calls,
        scheduled: table.len() as u64,
        out_of_order: endings.out_of_order,
        upstream_out_of_order,
        unknown: table.unknown_count(),
        other_frames: endings.other_frames,
        failed_calls: endings.failed,
        first_failure: endings.first_failure.clone(),
        closed_cleanly: endings.closed_cleanly,
        ..Default::default()
    };
    let mut rtt = histogram();
    let mut from_send = histogram();
    let mut lag = histogram();
    let mut up = histogram();
    let mut down = histogram();
    let mut own = histogram();
    for v in table.views() {
        let FrameView {
            scheduled,
            offset,
            sent,
            upstream_in,
            upstream_out,
            echoed,
            echoes,
            upstream_seen,
        } = v;
        if sent == 0 {
            r.unsent += 1;
            continue;
        }
        r.sent += 1;
        if echoes > 1 {
            r.doubled += 1;
        }
        if upstream_seen > 1 {
            r.upstream_repeated += 1;
        }
        let late = echoes > 0 && echoed > scheduled + timeout_ns;
        if echoes == 0 || late {
            r.lost += 1;
            if late {
                r.late += 1;
            }
            if upstream_seen == 0 {
                r.lost_upstream += 1;
            }
            continue;
        }
        r.echoed += 1;
        if offset < warmup_ns {
            continue;
        }
        r.measured += 1;
        rtt.saturating_record(us(echoed.saturating_sub(scheduled)));
        from_send.saturating_record(us(echoed.saturating_sub(sent)));
        lag.saturating_record(us(sent.saturating_sub(scheduled)));
        if upstream_seen == 1 && upstream_in >= sent && echoed >= upstream_out {
            up.saturating_record(us(upstream_in - sent));
            down.saturating_record(us(echoed - upstream_out));
            own.saturating_record(us(upstream_out.saturating_sub(upstream_in)));
        }
    }
    let secs = table.schedule().duration.as_secs_f64();
    r.send_rate = if secs > 0.0 {
        r.sent as f64 / secs
    } else {
        0.0
    };
    r.latency = FrameLatencies {
        round_trip: Summary::of(&rtt),
        round_trip_from_send: Summary::of(&from_send),
        send_lag: Summary::of(&lag),
        up_leg: Summary::of(&up),
        down_leg: Summary::of(&down),
        upstream_own: Summary::of(&own),
    };
    r
}

/// Relay minus direct, percentile by percentile, in ms (a difference of percentiles, not a
/// percentile of differences: the two phases are different frames).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Diff {
    /// Of the medians.
    pub p50_ms: Option<f64>,
    /// Of the 90th percentiles.
    pub p90_ms: Option<f64>,
    /// Of the 99th percentiles.
    pub p99_ms: Option<f64>,
    /// Of the 99.9th percentiles.
    pub p99_9_ms: Option<f64>,
    /// Of the maxima.
    pub max_ms: Option<f64>,
    /// Of the means.
    pub mean_ms: Option<f64>,
}

impl Diff {
    fn of(a: &Summary, b: &Summary) -> Diff {
        let d = |x: Option<f64>, y: Option<f64>| Some(x? - y?);
        Diff {
            p50_ms: d(a.p50_ms, b.p50_ms),
            p90_ms: d(a.p90_ms, b.p90_ms),
            p99_ms: d(a.p99_ms, b.p99_ms),
            p99_9_ms: d(a.p99_9_ms, b.p99_9_ms),
            max_ms: d(a.max_ms, b.max_ms),
            mean_ms: d(a.mean_ms, b.mean_ms),
        }
    }

    fn halved(&self) -> Diff {
        let h = |x: Option<f64>| x.map(|v| v / 2.0);
        Diff {
            p50_ms: h(self.p50_ms),
            p90_ms: h(self.p90_ms),
            p99_ms: h(self.p99_ms),
            p99_9_ms: h(self.p99_9_ms),
            max_ms: h(self.max_ms),
            mean_ms: h(self.mean_ms),
        }
    }

    fn row(&self) -> [Option<f64>; 6] {
        [
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p99_9_ms,
            self.max_ms,
            self.mean_ms,
        ]
    }
}

/// What the relay added: relay minus direct.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Added {
    /// The round trip from the scheduled time (two pass-throughs).
    pub round_trip: Diff,
    /// The round trip from the write (two pass-throughs, no generator lateness).
    pub round_trip_from_send: Diff,
    /// Half of that: the mean cost of one pass-through, if both legs cost the same.
    pub half_round_trip: Diff,
    /// The up leg (one pass-through, client -> upstream).
    pub up_leg: Diff,
    /// The down leg (one pass-through, upstream -> client).
    pub down_leg: Diff,
    /// Relay / direct round trip from the write, at p50, p99 and p99.9.
    pub round_trip_ratio: [Option<f64>; 3],
}

impl Added {
    /// Compare the relay phase with the direct one.
    pub fn of(relay: &FramePhaseReport, direct: &FramePhaseReport) -> Added {
        let (a, b) = (&relay.latency, &direct.latency);
        let from_send = Diff::of(&a.round_trip_from_send, &b.round_trip_from_send);
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
            _ => None,
        };
        let (ra, rb) = (&a.round_trip_from_send, &b.round_trip_from_send);
        Added {
            round_trip: Diff::of(&a.round_trip, &b.round_trip),
            half_round_trip: from_send.halved(),
            round_trip_from_send: from_send,
            up_leg: Diff::of(&a.up_leg, &b.up_leg),
            down_leg: Diff::of(&a.down_leg, &b.down_leg),
            round_trip_ratio: [
                ratio(ra.p50_ms, rb.p50_ms),
                ratio(ra.p99_ms, rb.p99_ms),
                ratio(ra.p99_9_ms, rb.p99_9_ms),
            ],
        }
    }
}

/// The run as asked for.
#[derive(Debug, Clone, Serialize)]
pub struct RelayRunInfo {
    /// `relay`.
    pub mode: &'static str,
    /// `openai` or `deepgram`.
    pub api: &'static str,
    /// Where tickets were asked for.
    pub tickets_url: String,
    /// The agent of the tickets.
    pub agent: String,
    /// Concurrent calls.
    pub calls: usize,
    /// Frames per second per call.
    pub frame_rate: f64,
    /// `text` or `binary`.
    pub frames: &'static str,
    /// Bytes of payload per frame.
    pub frame_bytes: usize,
    /// Milliseconds of audio per frame.
    pub audio_ms: u32,
    /// Seconds of sending.
    pub duration_s: f64,
    /// Seconds at the start left out of the latencies.
    pub warmup_s: f64,
    /// A frame echoed later than this counts as lost.
    pub timeout_s: f64,
    /// Call ids are this prefix, a dash and the call's index.
    pub call_id_prefix: String,
    /// Generator worker threads.
    pub threads: usize,
    /// The run was stopped early (Ctrl-C).
    pub interrupted: bool,
}

/// CPU and memory, and CPU per frame.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayResources {
    /// The sidecar's pid, when watched.
    pub sidecar_pid: Option<u32>,
    /// The sidecar while relayed frames were sent.
    pub sidecar: Option<ProcUsage>,
    /// The sidecar's CPU per round trip (two pass-through frames), in µs.
    pub sidecar_cpu_us_per_round_trip: Option<f64>,
    /// The same per pass-through frame (half of it).
    pub sidecar_cpu_us_per_frame: Option<f64>,
    /// The sidecar's resident memory with every relayed call open, before the clock.
    pub sidecar_rss_idle_mib: Option<f64>,
    /// The sidecar's resident memory before the relayed calls opened.
    pub sidecar_rss_before_mib: Option<f64>,
    /// This process (calls and fake upstream) while relayed frames were sent.
    pub generator: Option<ProcUsage>,
    /// Its CPU per round trip, in µs, through the relay.
    pub generator_cpu_us_per_round_trip: Option<f64>,
    /// This process in the direct phase.
    pub direct_generator: Option<ProcUsage>,
    /// Its CPU per round trip, in µs, straight to the upstream.
    pub direct_generator_cpu_us_per_round_trip: Option<f64>,
    /// The machine while relayed frames were sent.
    pub machine: Option<MachineUsage>,
    /// Other processes' CPU while relayed frames were sent, in % of one core.
    pub others_cpu_pct: Option<f64>,
    /// The same in the direct phase.
    pub direct_others_cpu_pct: Option<f64>,
    /// The machine in the direct phase.
    pub direct_machine: Option<MachineUsage>,
}

/// The target SPEC §13.2 sets: added p99 per pass-through frame, in ms.
pub const TARGET_P99_MS: f64 = 0.2;

/// The whole relay report (`--json` writes it as is).
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// `toolgate-loadtest`.
    pub tool: &'static str,
    /// This tool's version.
    pub version: &'static str,
    /// The run as asked for.
    pub run: RelayRunInfo,
    /// The fake upstream.
    pub upstream: UpstreamReport,
    /// Relayed calls: how long setting them up took (tickets, upgrades, first echo), in ms.
    pub open_ms: u64,
    /// Frames through the relay.
    pub relay: FramePhaseReport,
    /// Frames straight to the upstream (`--baseline`).
    pub direct: Option<FramePhaseReport>,
    /// Relay minus direct.
    pub added: Option<Added>,
    /// CPU and memory.
    pub resources: RelayResources,
    /// Progress, second by second.
    pub timeline: Vec<ProgressRow>,
    /// Pass or fail.
    pub verdict: Verdict,
}

/// What fails a relay run: frames lost, doubled, reordered or never sent; calls that failed.
pub fn verdict(relay: &FramePhaseReport, direct: Option<&FramePhaseReport>) -> Verdict {
    let mut problems = Vec::new();
    for p in std::iter::once(relay).chain(direct) {
        let name = p.phase;
        if p.lost > 0 {
            problems.push(format!(
                "{name}: {} frames lost (no echo within the timeout; {} came late, {} never reached the upstream)",
                p.lost, p.late, p.lost_upstream
            ));
        }
        if p.doubled > 0 || p.upstream_repeated > 0 {
            problems.push(format!(
                "{name}: {} frames echoed more than once, {} read more than once by the upstream",
                p.doubled, p.upstream_repeated
            ));
        }
        if p.out_of_order > 0 || p.upstream_out_of_order > 0 {
            problems.push(format!(
                "{name}: frames out of order: {} echoes at the client, {} at the upstream",
                p.out_of_order, p.upstream_out_of_order
            ));
        }
        if p.unsent > 0 {
            problems.push(format!("{name}: {} frames were never sent", p.unsent));
        }
        if p.unknown > 0 {
            problems.push(format!(
                "{name}: {} frames named numbers this phase never sent",
                p.unknown
            ));
        }
        if p.failed_calls > 0 {
            problems.push(format!(
                "{name}: {} of {} calls failed before the end (first: {})",
                p.failed_calls,
                p.calls,
                p.first_failure.as_deref().unwrap_or("?")
            ));
        }
    }
    Verdict {
        passed: problems.is_empty(),
        problems,
    }
}

fn phase_text(out: &mut String, p: &FramePhaseReport) {
    let _ = writeln!(
        out,
        "frames       scheduled {}  sent {}  echoed {}  lost {} (late {}, never upstream {})  doubled {}  out of order {} (upstream {})  unsent {}",
        p.scheduled,
        p.sent,
        p.echoed,
        p.lost,
        p.late,
        p.lost_upstream,
        p.doubled,
        p.out_of_order,
        p.upstream_out_of_order,
        p.unsent
    );
    let _ = writeln!(
        out,
        "calls        {}  failed {}  close answered {}  other frames {}  measured {} frames  sent {:.1}/s",
        p.calls, p.failed_calls, p.closed_cleanly, p.other_frames, p.measured, p.send_rate
    );
    if let Some(f) = &p.first_failure {
        let _ = writeln!(out, "  first failure: {f}");
    }
    let _ = writeln!(
        out,
        "  {:<36}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    let l = &p.latency;
    latency_row(out, "round trip (scheduled -> echo)", &l.round_trip);
    latency_row(
        out,
        "  from the write (no send lag)",
        &l.round_trip_from_send,
    );
    latency_row(out, "  send lag (generator)", &l.send_lag);
    latency_row(out, "  up leg (client -> upstream)", &l.up_leg);
    latency_row(out, "  down leg (upstream -> client)", &l.down_leg);
    latency_row(out, "  upstream own (read -> echo)", &l.upstream_own);
}

fn diff_row(out: &mut String, name: &str, d: &Diff) {
    let _ = write!(out, "  {name:<36}{:>8}", "");
    for v in d.row() {
        out.push_str(&cell(v));
    }
    out.push('\n');
}

/// The report as text.
pub fn render(r: &RelayReport) -> String {
    let mut out = String::new();
    let run = &r.run;
    let _ = writeln!(out, "\n== toolgate-loadtest {} (relay) ==", r.version);
    let _ = writeln!(
        out,
        "target       {} relay, tickets from {}  agent {}",
        run.api, run.tickets_url, run.agent
    );
    let _ = writeln!(
        out,
        "load         {} calls x {} frames/s ({} frames of {} bytes, {} ms of audio) for {} s, warm-up {} s, timeout {} s{}",
        run.calls,
        run.frame_rate,
        run.frames,
        run.frame_bytes,
        run.audio_ms,
        run.duration_s,
        run.warmup_s,
        run.timeout_s,
        if run.interrupted { "  INTERRUPTED" } else { "" }
    );
    let u = &r.upstream;
    let _ = writeln!(
        out,
        "upstream     {}  connections {} (with Authorization {})  refused {}  frames echoed {}  other frames {}  first path {}",
        u.listen,
        u.connections,
        u.authorized,
        u.refused,
        u.frames,
        u.foreign,
        u.first_path.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "relayed      {} calls set up in {} ms (ticket, upgrade, first echo)",
        r.relay.calls, r.open_ms
    );
    let _ = writeln!(out, "\n-- through the relay --");
    phase_text(&mut out, &r.relay);
    if let Some(d) = &r.direct {
        let _ = writeln!(
            out,
            "\n-- direct (straight to the upstream, same schedule) --"
        );
        phase_text(&mut out, d);
    }
    if let Some(a) = &r.added {
        let _ = writeln!(
            out,
            "\n-- added by the relay (relay - direct, per percentile) --"
        );
        let _ = writeln!(
            out,
            "  {:<36}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "ms", "", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        diff_row(&mut out, "round trip (2 pass-throughs)", &a.round_trip);
        diff_row(&mut out, "  from the write", &a.round_trip_from_send);
        diff_row(&mut out, "per pass-through: up leg", &a.up_leg);
        diff_row(&mut out, "per pass-through: down leg", &a.down_leg);
        diff_row(
            &mut out,
            "per pass-through: half round trip",
            &a.half_round_trip,
        );
        let [p50, p99, p999] = a.round_trip_ratio;
        let _ = writeln!(
            out,
            "  relay / direct round trip from the write: p50 {}  p99 {}  p99.9 {}",
            cell(p50).trim(),
            cell(p99).trim(),
            cell(p999).trim()
        );
        let worst = [a.up_leg.p99_ms, a.down_leg.p99_ms]
            .into_iter()
            .flatten()
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        if let Some(w) = worst {
            let _ = writeln!(
                out,
                "  target (SPEC 13.2): added p99 per pass-through frame <= {TARGET_P99_MS} ms: worst leg {w:.3} ms: {}",
                if w <= TARGET_P99_MS { "met" } else { "NOT met" }
            );
        }
    }
    let res = &r.resources;
    let _ = writeln!(out, "\n-- resources while relayed frames were sent --");
    match (res.sidecar_pid, &res.sidecar) {
        (Some(_), Some(u)) => {
            usage_text(&mut out, "sidecar", u);
            if let (Some(rt), Some(f)) = (
                res.sidecar_cpu_us_per_round_trip,
                res.sidecar_cpu_us_per_frame,
            ) {
                let _ = writeln!(
                    out,
                    "  sidecar    CPU {rt:.1} µs per round trip, {f:.1} µs per pass-through frame"
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
    if let (Some(idle), Some(before)) = (res.sidecar_rss_idle_mib, res.sidecar_rss_before_mib) {
        let _ = writeln!(
            out,
            "  sidecar    RSS {idle:.1} MiB with {} relayed calls open ({before:.1} MiB before)",
            r.relay.calls
        );
    }
    if let Some(u) = &res.generator {
        usage_text(&mut out, "generator", u);
    }
    if let (Some(relay), Some(direct)) = (
        res.generator_cpu_us_per_round_trip,
        res.direct_generator_cpu_us_per_round_trip,
    ) {
        let _ = writeln!(
            out,
            "  generator  CPU {relay:.1} µs per round trip through the relay, {direct:.1} µs direct"
        );
    }
    if let Some(m) = &res.machine {
        let _ = write!(out, "  machine    {}", machine_text(m));
        if let Some(o) = res.others_cpu_pct {
            let _ = write!(out, "; other processes {o:.1}% of a core");
        }
        out.push('\n');
    }
    if let Some(m) = &res.direct_machine {
        let _ = write!(out, "  direct     {}", machine_text(m));
        if let Some(o) = res.direct_others_cpu_pct {
            let _ = write!(out, "; other processes {o:.1}% of a core");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "\n-- verdict --");
    if r.verdict.passed {
        let _ = writeln!(
            out,
            "  PASS: every frame echoed exactly once, in order, on every call"
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
    use crate::frames::FramePhase;
    use crate::report::cpu_us_per;
    use crate::schedule::{Arrivals, Schedule};
    use std::sync::Arc;
    use std::time::Duration;

    const US: u64 = 1_000;

    fn table(phase: FramePhase, frames: u64) -> FrameTable {
        let s = Schedule::build(1000.0, Duration::from_millis(frames), Arrivals::Fixed, 0).unwrap();
        let t = FrameTable::new(phase, Arc::new(s));
        t.start_clock(1_000_000 * US);
        t
    }

    /// Frame `n`: sent `lag` after its time, up leg `up`, upstream 5 µs, down leg `down`.
    fn frame(t: &FrameTable, n: u32, lag: u64, up: u64, down: u64) {
        let s = t.scheduled(n);
        t.mark_sent(n, s + lag);
        t.mark_upstream(n, s + lag + up, s + lag + up + 5 * US);
        t.mark_echo(n, s + lag + up + 5 * US + down);
    }

    #[test]
    fn legs_and_added_latency() {
        let relay = table(FramePhase::Relay, 3);
        let direct = table(FramePhase::Direct, 3);
        for n in 0..3 {
            frame(&relay, n, 10 * US, 150 * US, 170 * US);
            frame(&direct, n, 10 * US, 50 * US, 60 * US);
        }
        let e = Endings::default();
        let r = analyze(&relay, 1, 0, 15_000_000_000, &e, 0);
        let d = analyze(&direct, 1, 0, 15_000_000_000, &e, 0);
        assert_eq!((r.sent, r.echoed, r.lost, r.measured), (3, 3, 0, 3));
        assert!((r.latency.up_leg.p50_ms.unwrap() - 0.150).abs() < 1e-9);
        assert!((r.latency.down_leg.p50_ms.unwrap() - 0.170).abs() < 1e-9);
        assert!((r.latency.upstream_own.p50_ms.unwrap() - 0.005).abs() < 1e-9);
        assert!((r.latency.round_trip.p50_ms.unwrap() - 0.335).abs() < 1e-9);
        assert!((r.latency.round_trip_from_send.p50_ms.unwrap() - 0.325).abs() < 1e-9);
        let a = Added::of(&r, &d);
        assert!((a.up_leg.p99_ms.unwrap() - 0.100).abs() < 1e-9);
        assert!((a.down_leg.p99_ms.unwrap() - 0.110).abs() < 1e-9);
        assert!((a.round_trip_from_send.p50_ms.unwrap() - 0.210).abs() < 1e-9);
        assert!((a.half_round_trip.p50_ms.unwrap() - 0.105).abs() < 1e-9);
        assert!(verdict(&r, Some(&d)).passed);
        let text = render(&RelayReport {
            tool: "toolgate-loadtest",
            version: "0",
            run: RelayRunInfo {
                mode: "relay",
                api: "openai",
                tickets_url: "http://x/v1/relay/tickets".into(),
                agent: "a".into(),
                calls: 1,
                frame_rate: 50.0,
                frames: "text",
                frame_bytes: 1350,
                audio_ms: 20,
                duration_s: 1.0,
                warmup_s: 0.0,
                timeout_s: 15.0,
                call_id_prefix: "lt".into(),
                threads: 2,
                interrupted: false,
            },
            upstream: UpstreamReport {
                listen: "127.0.0.1:9998".into(),
                connections: 2,
                authorized: 2,
                refused: 0,
                frames: 6,
                foreign: 0,
                out_of_order: 0,
                closed: 2,
                first_path: None,
            },
            open_ms: 3,
            relay: r,
            direct: Some(d),
            added: Some(a),
            resources: RelayResources::default(),
            timeline: Vec::new(),
            verdict: Verdict {
                passed: true,
                problems: Vec::new(),
            },
        });
        assert!(text.contains("worst leg 0.110 ms: met"), "{text}");
    }

    #[test]
    fn lost_doubled_and_reordered_frames_fail() {
        let t = table(FramePhase::Relay, 4);
        frame(&t, 0, 0, 50 * US, 50 * US);
        t.mark_echo(0, t.scheduled(0) + 200 * US);
        // Frame 1 reached the upstream, its echo never came; frame 2 never reached it.
        t.mark_sent(1, t.scheduled(1));
        t.mark_upstream(1, t.scheduled(1) + 10 * US, t.scheduled(1) + 11 * US);
        t.mark_sent(2, t.scheduled(2));
        // Frame 3 was never sent.
        let e = Endings {
            out_of_order: 1,
            ..Endings::default()
        };
        let r = analyze(&t, 1, 0, 15_000_000_000, &e, 0);
        assert_eq!(
            (
                r.sent,
                r.echoed,
                r.lost,
                r.lost_upstream,
                r.doubled,
                r.unsent
            ),
            (3, 1, 2, 1, 1, 1)
        );
        let v = verdict(&r, None);
        assert!(!v.passed);
        assert_eq!(v.problems.len(), 4, "{:?}", v.problems);
    }

    #[test]
    fn cpu_per_frame() {
        let u = ProcUsage {
            cpu_mean_pct: 25.0,
            cpu_max_pct: 30.0,
            rss_start_mib: 1.0,
            rss_max_mib: 1.0,
            rss_peak_mib: 1.0,
            threads: 1,
        };
        // A quarter of a core for 20 s over 50,000 frames: 100 µs each.
        let v = cpu_us_per(Some(&u), 20.0, 50_000).unwrap();
        assert!((v - 100.0).abs() < 1e-9);
        assert_eq!(cpu_us_per(Some(&u), 20.0, 0), None);
        assert_eq!(cpu_us_per(None, 20.0, 1), None);
    }
}
