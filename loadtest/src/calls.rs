//! The ledger of one phase's tool calls: one pre-allocated record per scheduled call, written
//! lock-free by whoever sees that call's events (the session that sent it and read its
//! frames, the mock provider that received its request), and read once the phase is over.
//!
//! Correlation works through a token in the tool call's arguments: `ltc-<n>` for call `n` of
//! the sidecar phase, `ltb-<n>` for the baseline. The sidecar forwards the arguments into the
//! provider request, where the mock finds the token again and files its own timing under the
//! same call. Everything shares one monotonic clock (the process's), so "end-to-end minus
//! the provider's own time" is a subtraction of two measurements of the same request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::schedule::Schedule;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the process's monotonic clock (since its first use).
pub fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64
}

/// The [`Instant`] of a [`now_ns`] reading.
pub fn instant_at(ns: u64) -> Instant {
    *EPOCH.get_or_init(Instant::now) + Duration::from_nanos(ns)
}

/// Which requests a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Tool calls through the sidecar.
    Sidecar,
    /// Requests sent straight to the mock provider.
    Baseline,
}

impl Phase {
    /// The token prefix of this phase's calls.
    pub fn prefix(self) -> &'static str {
        match self {
            Phase::Sidecar => "ltc-",
            Phase::Baseline => "ltb-",
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Sidecar => "sidecar",
            Phase::Baseline => "baseline",
        }
    }
}

/// Find the first call token (`ltc-<n>` or `ltb-<n>`) in a provider request body.
pub fn find_token(body: &[u8]) -> Option<(Phase, u32)> {
    let mut from = 0;
    while let Some(i) = body[from..].windows(4).position(|w| {
        w[0] == b'l' && w[1] == b't' && (w[2] == b'c' || w[2] == b'b') && w[3] == b'-'
    }) {
        let at = from + i;
        let digits = &body[at + 4..];
        let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if len > 0 && len <= 10 {
            let n = std::str::from_utf8(&digits[..len])
                .ok()
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(n) = n {
                let phase = if body[at + 2] == b'c' {
                    Phase::Sidecar
                } else {
                    Phase::Baseline
                };
                return Some((phase, n));
            }
        }
        from = at + 4;
    }
    None
}

/// How a call ended, as the generator saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    /// No answer (yet).
    #[default]
    None = 0,
    /// `tool.result` `succeeded`.
    Succeeded,
    /// `tool.result` `rejected`.
    Rejected,
    /// `tool.result` `failed`.
    Failed,
    /// `tool.result` `deferred`.
    Deferred,
    /// `tool.result` `duplicate`.
    Duplicate,
    /// `tool.result` `cancelled`.
    Cancelled,
    /// A `tool.result` status this tool does not know.
    Other,
    /// An `error` frame refused the call (`ref` = its id) instead of a result.
    Refused,
    /// Baseline: the mock answered 2xx.
    HttpOk,
    /// Baseline: the mock answered another status.
    HttpError,
    /// Baseline: the request failed (connection refused or reset).
    Transport,
}

impl Status {
    /// Parse a `tool.result` status.
    pub fn from_result(s: &str) -> Status {
        match s {
            "succeeded" => Status::Succeeded,
            "rejected" => Status::Rejected,
            "failed" => Status::Failed,
            "deferred" => Status::Deferred,
            "duplicate" => Status::Duplicate,
            "cancelled" => Status::Cancelled,
            _ => Status::Other,
        }
    }

    fn from_u8(v: u8) -> Status {
        match v {
            1 => Status::Succeeded,
            2 => Status::Rejected,
            3 => Status::Failed,
            4 => Status::Deferred,
            5 => Status::Duplicate,
            6 => Status::Cancelled,
            7 => Status::Other,
            8 => Status::Refused,
            9 => Status::HttpOk,
            10 => Status::HttpError,
            11 => Status::Transport,
            _ => Status::None,
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Succeeded => "succeeded",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
            Status::Deferred => "deferred",
            Status::Duplicate => "duplicate",
            Status::Cancelled => "cancelled",
            Status::Other => "other",
            Status::Refused => "refused (error frame)",
            Status::HttpOk => "http 2xx",
            Status::HttpError => "http error",
            Status::Transport => "transport error",
        }
    }
}

/// Everything observed about one tool call. Times are [`now_ns`] readings; 0 means "not seen".
#[derive(Debug, Default)]
pub struct CallRecord {
    sent: AtomicU64,
    result: AtomicU64,
    filler: AtomicU64,
    provider_arrival: AtomicU64,
    provider_own: AtomicU64,
    results: AtomicU32,
    fillers: AtomicU32,
    provider_requests: AtomicU32,
    filler_elapsed_ms: AtomicU32,
    status: AtomicU8,
    flags: AtomicU8,
}

const FLAG_FILLER_AFTER_RESULT: u8 = 1;

/// A plain copy of a [`CallRecord`], for analysis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallView {
    /// When the call was scheduled.
    pub scheduled: u64,
    /// Its offset from the start of the clock.
    pub offset: u64,
    /// When the generator took it up to send (0: never).
    pub sent: u64,
    /// When its first answer arrived (0: never).
    pub result: u64,
    /// When its first filler arrived (0: none).
    pub filler: u64,
    /// How many `tool.result` frames arrived for it.
    pub results: u32,
    /// How many `tool.filler` frames arrived for it.
    pub fillers: u32,
    /// The first filler's `elapsed_ms`, as the sidecar measured it.
    pub filler_elapsed_ms: u32,
    /// How it ended.
    pub status: Status,
    /// A filler arrived after its result.
    pub filler_after_result: bool,
    /// How many provider requests carried its token.
    pub provider_requests: u32,
    /// When the first of them reached the mock.
    pub provider_arrival: u64,
    /// How long the mock took with it (arrival to response written).
    pub provider_own: u64,
}

/// Rare findings kept as text: examples of outcomes and protocol errors.
#[derive(Debug, Default)]
pub struct Notes {
    /// The first `output` seen per non-success status.
    pub examples: BTreeMap<&'static str, String>,
    /// `error` frame codes with their count and first message.
    pub errors: BTreeMap<String, (u64, String)>,
    /// Results or fillers for ids this run never sent.
    pub unknown_ids: u64,
    /// Frames that could not be read.
    pub unreadable: u64,
    /// The first unreadable frame.
    pub first_unreadable: Option<String>,
}

/// One phase's calls.
pub struct CallTable {
    /// Which phase.
    pub phase: Phase,
    schedule: Arc<Schedule>,
    t0: OnceLock<u64>,
    records: Box<[CallRecord]>,
    sent: AtomicU64,
    answered: AtomicU64,
    recent: Mutex<Histogram<u64>>,
    notes: Mutex<Notes>,
}

/// Latency histograms count microseconds from 1 µs to one hour, at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl CallTable {
    /// A table for every call of `schedule`.
    pub fn new(phase: Phase, schedule: Arc<Schedule>) -> CallTable {
        let records = (0..schedule.len()).map(|_| CallRecord::default()).collect();
        CallTable {
            phase,
            schedule,
            t0: OnceLock::new(),
            records,
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            recent: Mutex::new(histogram()),
            notes: Mutex::new(Notes::default()),
        }
    }

    /// How many calls are scheduled.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The schedule the calls follow.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Start the clock: call `n` is due at `t0 + offset(n)`.
    pub fn start_clock(&self, t0: u64) {
        let _ = self.t0.set(t0);
    }

    /// When the clock started, if it has.
    pub fn t0(&self) -> Option<u64> {
        self.t0.get().copied()
    }

    /// When call `n` is due.
    pub fn scheduled(&self, n: u32) -> u64 {
        self.t0().unwrap_or(0) + self.schedule.offset(n as usize)
    }

    fn record(&self, n: u32) -> Option<&CallRecord> {
        self.records.get(n as usize)
    }

    /// The generator took call `n` up to send it.
    pub fn mark_sent(&self, n: u32, at: u64) {
        if let Some(r) = self.record(n) {
            r.sent.store(at, Ordering::Relaxed);
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An answer for call `n` arrived. `false` when `n` is not one of this run's calls.
    pub fn mark_result(&self, n: u32, at: u64, status: Status) -> bool {
        let Some(r) = self.record(n) else {
            self.notes().unknown_ids += 1;
            return false;
        };
        // A result after an `error` frame already refused the call keeps the refusal.
        if r.results.fetch_add(1, Ordering::Relaxed) == 0
            && r.status.load(Ordering::Relaxed) == Status::None as u8
        {
            self.settle(r, n, at, status);
        }
        true
    }

    /// An `error` frame refused call `n` instead of answering it.
    pub fn mark_refused(&self, n: u32, at: u64) -> bool {
        let Some(r) = self.record(n) else {
            self.notes().unknown_ids += 1;
            return false;
        };
        if r.status.load(Ordering::Relaxed) == Status::None as u8 {
            self.settle(r, n, at, Status::Refused);
        }
        true
    }

    fn settle(&self, r: &CallRecord, n: u32, at: u64, status: Status) {
        r.result.store(at, Ordering::Relaxed);
        r.status.store(status as u8, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed);
        let e2e_us = at.saturating_sub(self.scheduled(n)) / 1000;
        if let Ok(mut h) = self.recent.lock() {
            h.saturating_record(e2e_us.max(1));
        }
    }

    /// A `tool.filler` for call `n` arrived.
    pub fn mark_filler(&self, n: u32, at: u64, elapsed_ms: u32) -> bool {
        let Some(r) = self.record(n) else {
            self.notes().unknown_ids += 1;
            return false;
        };
        if r.results.load(Ordering::Relaxed) > 0 {
            r.flags
                .fetch_or(FLAG_FILLER_AFTER_RESULT, Ordering::Relaxed);
        }
        if r.fillers.fetch_add(1, Ordering::Relaxed) == 0 {
            r.filler.store(at, Ordering::Relaxed);
            r.filler_elapsed_ms.store(elapsed_ms, Ordering::Relaxed);
        }
        true
    }

    /// The mock received a request for call `n` at `arrival` and spent `own` on it. `false`
    /// when `n` is not one of this run's calls.
    pub fn mark_provider(&self, n: u32, arrival: u64, own: u64) -> bool {
        let Some(r) = self.record(n) else {
            return false;
        };
        if r.provider_requests.fetch_add(1, Ordering::Relaxed) == 0 {
            r.provider_arrival.store(arrival, Ordering::Relaxed);
            r.provider_own.store(own, Ordering::Relaxed);
        }
        true
    }

    /// Calls taken up to send so far.
    pub fn sent_count(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Calls answered so far.
    pub fn answered_count(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The end-to-end latencies recorded since the last call, emptied.
    pub fn take_recent(&self) -> Histogram<u64> {
        let mut fresh = histogram();
        if let Ok(mut h) = self.recent.lock() {
            std::mem::swap(&mut *h, &mut fresh);
        }
        fresh
    }

    /// The notes, for adding to or reading.
    pub fn notes(&self) -> std::sync::MutexGuard<'_, Notes> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of call `n`'s record.
    pub fn view(&self, n: u32) -> CallView {
        let r = &self.records[n as usize];
        CallView {
            scheduled: self.scheduled(n),
            offset: self.schedule.offset(n as usize),
            sent: r.sent.load(Ordering::Relaxed),
            result: r.result.load(Ordering::Relaxed),
            filler: r.filler.load(Ordering::Relaxed),
            results: r.results.load(Ordering::Relaxed),
            fillers: r.fillers.load(Ordering::Relaxed),
            filler_elapsed_ms: r.filler_elapsed_ms.load(Ordering::Relaxed),
            status: Status::from_u8(r.status.load(Ordering::Relaxed)),
            filler_after_result: r.flags.load(Ordering::Relaxed) & FLAG_FILLER_AFTER_RESULT != 0,
            provider_requests: r.provider_requests.load(Ordering::Relaxed),
            provider_arrival: r.provider_arrival.load(Ordering::Relaxed),
            provider_own: r.provider_own.load(Ordering::Relaxed),
        }
    }

    /// Every call's record, in call order.
    pub fn views(&self) -> impl Iterator<Item = CallView> + '_ {
        (0..self.records.len() as u32).map(|n| self.view(n))
    }
}

/// Parse a tool call id this tool sent (`tc<n>`).
pub fn parse_call_id(id: &str) -> Option<u32> {
    id.strip_prefix("tc")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Arrivals, Schedule};

    fn table(calls: usize) -> CallTable {
        let schedule = Schedule::build(
            1000.0,
            Duration::from_millis(calls as u64),
            Arrivals::Fixed,
            1,
        )
        .expect("schedule");
        assert_eq!(schedule.len(), calls);
        let t = CallTable::new(Phase::Sidecar, Arc::new(schedule));
        t.start_clock(1_000_000_000);
        t
    }

    #[test]
    fn tokens_are_found_in_provider_bodies() {
        let body = br#"{"type":"toolgate.action","timestamp":"2026-01-01T00:00:00.000Z","data":{"call_id":"lt-7-3","function":"request_callback","inputs":{"reason":"load ltc-4711","phone":"+14155550100"}}}"#;
        assert_eq!(find_token(body), Some((Phase::Sidecar, 4711)));
        assert_eq!(find_token(b"subject: ltb-0"), Some((Phase::Baseline, 0)));
        // A prefix without digits does not stop the search.
        assert_eq!(find_token(b"ltc- then ltc-12"), Some((Phase::Sidecar, 12)));
        assert_eq!(find_token(b"lt-7-3 alt-5 ltx-9"), None);
        assert_eq!(find_token(b"ltc-99999999999"), None);
        assert_eq!(find_token(b""), None);
        assert_eq!(find_token(b"ltc-"), None);
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(parse_call_id("tc0"), Some(0));
        assert_eq!(parse_call_id("tc123"), Some(123));
        assert_eq!(parse_call_id("call_1"), None);
        assert_eq!(parse_call_id("tc"), None);
    }

    #[test]
    fn mock_requests_are_filed_under_their_call() {
        let t = table(3);
        let due = t.scheduled(1);
        assert_eq!(due, 1_000_000_000 + 1_000_000);
        t.mark_sent(1, due + 20_000);
        // The sidecar forwarded the token; the mock found it and timed itself.
        let body = br#"{"data":{"inputs":{"reason":"load ltc-1"}}}"#;
        let (phase, n) = find_token(body).expect("token");
        assert_eq!(phase, t.phase);
        assert!(t.mark_provider(n, due + 300_000, 50_000_000));
        assert!(t.mark_result(n, due + 50_700_000, Status::Succeeded));

        let v = t.view(1);
        assert_eq!(v.status, Status::Succeeded);
        assert_eq!(v.provider_requests, 1);
        assert_eq!(v.result - v.scheduled, 50_700_000);
        // Added latency: end-to-end minus the provider's own time, for this very request.
        assert_eq!((v.result - v.scheduled) - v.provider_own, 700_000);
        // Other calls saw nothing.
        assert_eq!(t.view(0).provider_requests, 0);
        assert_eq!(t.view(2).status, Status::None);
        // A token beyond the schedule is not filed anywhere.
        assert!(!t.mark_provider(99, 0, 0));
    }

    #[test]
    fn second_results_count_and_keep_the_first() {
        let t = table(1);
        assert!(t.mark_result(0, 5, Status::Succeeded));
        assert!(t.mark_result(0, 9, Status::Failed));
        let v = t.view(0);
        assert_eq!((v.results, v.result, v.status), (2, 5, Status::Succeeded));
        assert_eq!(t.answered_count(), 1);
    }

    #[test]
    fn fillers_after_results_are_flagged() {
        let t = table(2);
        assert!(t.mark_filler(0, 3, 500));
        assert!(t.mark_result(0, 4, Status::Succeeded));
        assert!(!t.view(0).filler_after_result);
        assert!(t.mark_result(1, 4, Status::Succeeded));
        assert!(t.mark_filler(1, 5, 500));
        assert!(t.view(1).filler_after_result);
        assert!(!t.mark_filler(7, 5, 500));
        assert_eq!(t.notes().unknown_ids, 1);
    }

    #[test]
    fn refusals_do_not_count_as_results() {
        let t = table(1);
        assert!(t.mark_refused(0, 7));
        let v = t.view(0);
        assert_eq!((v.status, v.results, v.result), (Status::Refused, 0, 7));
        // A stray result afterwards is counted, but the call is answered once.
        assert!(t.mark_result(0, 9, Status::Succeeded));
        let v = t.view(0);
        assert_eq!((v.status, v.results, v.result), (Status::Refused, 1, 7));
        assert_eq!(t.answered_count(), 1);
    }
}
