//! The open-loop schedule: every tool call's send time is fixed before the clock starts, and
//! a dedicated pacer thread hands each call to its sender when it is due, whatever happened to
//! the calls before it. A sidecar that stalls cannot slow the arrivals down; latency is
//! measured from the scheduled time, so a stall shows up in full.
//!
//! The pacer is an OS thread rather than a tokio timer because tokio's timers tick in whole
//! milliseconds: a call would leave up to 1 ms late, which would swamp the sub-millisecond
//! overheads this tool exists to measure. The thread asks the kernel for a 1 µs timer slack
//! (50 µs by default) and sleeps until each call is due.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};

/// How arrivals are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arrivals {
    /// Exponential gaps (a Poisson process): bursts and lulls like independent callers.
    Poisson,
    /// Evenly spaced.
    Fixed,
}

impl Arrivals {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Arrivals::Poisson => "poisson",
            Arrivals::Fixed => "fixed",
        }
    }
}

/// Most calls one run may schedule (memory: about 100 bytes per call and phase).
pub const MAX_CALLS: usize = 50_000_000;

/// Every call's send time, as an offset from the start of the clock.
#[derive(Debug, Clone)]
pub struct Schedule {
    offsets: Vec<u64>,
    /// How long calls are sent.
    pub duration: Duration,
}

impl Schedule {
    /// `rate` calls per second for `duration`; Poisson gaps are drawn from `seed`.
    pub fn build(
        rate: f64,
        duration: Duration,
        arrivals: Arrivals,
        seed: u64,
    ) -> Result<Schedule, String> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err("--rate must be above zero".into());
        }
        let expected = rate * duration.as_secs_f64();
        if expected > MAX_CALLS as f64 {
            return Err(format!(
                "{expected:.0} calls is more than one run can hold ({MAX_CALLS}); shorten --duration or lower --rate"
            ));
        }
        let end = duration.as_nanos() as u64;
        let mut offsets = Vec::with_capacity(expected.ceil() as usize + 16);
        match arrivals {
            Arrivals::Fixed => {
                let gap = 1e9 / rate;
                let mut i = 0u64;
                loop {
                    let at = (i as f64 * gap) as u64;
                    if at >= end {
                        break;
                    }
                    offsets.push(at);
                    i += 1;
                }
            }
            Arrivals::Poisson => {
                let exp = Exp::new(rate).map_err(|e| format!("--rate: {e}"))?;
                let mut rng = StdRng::seed_from_u64(seed);
                let mut at = 0f64;
                loop {
                    at += exp.sample(&mut rng) * 1e9;
                    if at >= end as f64 || offsets.len() >= MAX_CALLS {
                        break;
                    }
                    offsets.push(at as u64);
                }
            }
        }
        Ok(Schedule { offsets, duration })
    }

    /// How many calls.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// `true` when no call fits in the duration.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Call `n`'s offset from the start, in nanoseconds.
    pub fn offset(&self, n: usize) -> u64 {
        self.offsets.get(n).copied().unwrap_or(u64::MAX / 4)
    }

    /// The last call's offset.
    pub fn last_offset(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }
}

/// Run the schedule on the calling thread: `dispatch(n)` for each call when it is due (as soon
/// as possible when the pacer itself was late). Returns how many calls were dispatched;
/// fewer than scheduled only when `stop` was raised.
pub fn pace(
    schedule: &Schedule,
    t0: Instant,
    stop: &AtomicBool,
    mut dispatch: impl FnMut(u32),
) -> usize {
    // Best effort: without it the kernel may wake the thread up to 50 µs late.
    let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1_000));
    for (n, offset) in schedule.offsets.iter().enumerate() {
        let due = t0 + Duration::from_nanos(*offset);
        loop {
            if stop.load(Ordering::Relaxed) {
                return n;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            // Wake up now and then to notice `stop` during long gaps.
            #[allow(clippy::disallowed_methods, reason = "the pacer's own thread")]
            std::thread::sleep((due - now).min(Duration::from_millis(100)));
        }
        dispatch(n as u32);
    }
    schedule.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_schedules_are_evenly_spaced() {
        let s = Schedule::build(1000.0, Duration::from_secs(2), Arrivals::Fixed, 0).unwrap();
        assert_eq!(s.len(), 2000);
        assert_eq!(s.offset(0), 0);
        assert_eq!(s.offset(1), 1_000_000);
        assert_eq!(s.last_offset(), 1_999_000_000);
    }

    #[test]
    fn poisson_schedules_have_the_rate_and_a_seed() {
        let a = Schedule::build(5000.0, Duration::from_secs(4), Arrivals::Poisson, 7).unwrap();
        let b = Schedule::build(5000.0, Duration::from_secs(4), Arrivals::Poisson, 7).unwrap();
        let c = Schedule::build(5000.0, Duration::from_secs(4), Arrivals::Poisson, 8).unwrap();
        assert!((19_400..20_600).contains(&a.len()), "{} calls", a.len());
        assert_eq!(a.offsets, b.offsets);
        assert_ne!(a.offsets, c.offsets);
        assert!(a.offsets.windows(2).all(|w| w[0] <= w[1]));
        assert!(a.last_offset() < 4_000_000_000);
    }

    #[test]
    fn bad_rates_are_refused() {
        assert!(Schedule::build(0.0, Duration::from_secs(1), Arrivals::Fixed, 0).is_err());
        assert!(Schedule::build(f64::NAN, Duration::from_secs(1), Arrivals::Fixed, 0).is_err());
        assert!(Schedule::build(1e9, Duration::from_secs(3600), Arrivals::Fixed, 0).is_err());
    }

    #[test]
    fn the_pacer_dispatches_in_order_and_on_time() {
        let s = Schedule::build(2000.0, Duration::from_millis(50), Arrivals::Fixed, 0).unwrap();
        let t0 = Instant::now() + Duration::from_millis(5);
        let mut seen = Vec::new();
        let stop = AtomicBool::new(false);
        let n = pace(&s, t0, &stop, |i| seen.push((i, Instant::now())));
        assert_eq!(n, s.len());
        for (i, at) in &seen {
            let due = t0 + Duration::from_nanos(s.offset(*i as usize));
            assert!(*at >= due, "call {i} left early");
        }
        assert!(seen.windows(2).all(|w| w[0].0 + 1 == w[1].0));
    }

    #[test]
    fn the_pacer_stops_when_asked() {
        let s = Schedule::build(10.0, Duration::from_secs(100), Arrivals::Fixed, 0).unwrap();
        let stop = AtomicBool::new(true);
        assert_eq!(pace(&s, Instant::now(), &stop, |_| {}), 0);
    }
}
