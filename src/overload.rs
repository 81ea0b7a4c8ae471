//! Process-wide load shedding: when the sidecar has more work than CPU, new tool calls are
//! refused at once (each still gets its one `tool.result`, `failed` with `overloaded`, SPEC §2)
//! so the calls already admitted keep their latency, instead of every call getting late.
//!
//! The signal is the runtime's **scheduling delay**: how long a task that is ready to run
//! waits before a worker thread polls it. It is what makes an admitted call late, whatever
//! the cause (more calls than CPU, a neighbour taking the cores, a slow disk blocking a
//! worker), so it predicts lateness better than a count of calls in flight, which depends on
//! how slow the providers are. A probe thread hands the runtime a tiny task every
//! [`TICK`] and measures how long it waited to be polled.
//!
//! What share of new calls to shed follows the delay, as a router's queue management does:
//! each probe that waited longer than `server.shed_after_delay_ms` (default 5 ms, the p99
//! budget of a call's added latency; 0 turns shedding off) right after another that did
//! raises the share by an eighth (`RAISE`; one slow moment of a busy machine sheds
//! nothing), each that waited less than half of it lowers the share by a sixty-fourth
//! (`EASE`), and a probe in between leaves it. Even on a saturated machine most probes
//! are quick (the workers are preempted by other processes rather than queued behind their
//! own tasks), so the share falls slowly: a quick probe amid the slow ones takes back an
//! eighth of one raise, not half of everything, and a share built up in a burst is gone
//! about 0.64 s into calm. Under more load than CPU the share settles where the calls
//! admitted are about what the CPU can serve on time, instead of swinging between admitting
//! everything and refusing everything. A probe still waiting four times the threshold when
//! a call arrives sheds that call outright (the runtime is stuck).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the probe hands the runtime a task (when the last one has run).
pub const TICK: Duration = Duration::from_millis(10);

/// The share of calls shed, in parts of [`FULL`].
const FULL: u32 = 1 << 16;

/// What two slow probes in a row add to the share shed.
const RAISE: u32 = FULL / 8;

/// What a quick probe takes off the share shed.
const EASE: u32 = FULL / 64;

/// The runtime's load, as the probe sees it.
#[derive(Debug)]
pub struct Overload {
    /// Shed above this scheduling delay; `None`: never.
    threshold: Option<Duration>,
    epoch: Instant,
    /// When the probe task still waiting to run was handed over (ns since `epoch`, plus
    /// one); 0: none is waiting.
    pending_since: AtomicU64,
    /// The share of new calls to shed, in parts of [`FULL`].
    share: AtomicU32,
    /// Counts calls asked about, to spread the shed ones evenly.
    asked: AtomicU32,
    /// Whether the last probe waited longer than the threshold.
    was_high: std::sync::atomic::AtomicBool,
    /// The last probe's wait, in µs.
    last_delay_us: AtomicU64,
}

impl Overload {
    /// Shed above `threshold` (`None`: never). Nothing is measured until [`Overload::start`].
    pub fn new(threshold: Option<Duration>) -> Arc<Overload> {
        Arc::new(Overload {
            threshold,
            epoch: Instant::now(),
            pending_since: AtomicU64::new(0),
            share: AtomicU32::new(0),
            asked: AtomicU32::new(0),
            was_high: std::sync::atomic::AtomicBool::new(false),
            last_delay_us: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Start the probe on a thread of its own (`toolgate-load-probe`), handing its tasks to
    /// `runtime`. The thread ends once this `Overload` is dropped. Without a threshold there
    /// is nothing to measure and no thread.
    pub fn start(self: &Arc<Self>, runtime: tokio::runtime::Handle) {
        if self.threshold.is_none() {
            return;
        }
        let weak: Weak<Overload> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("toolgate-load-probe".into())
            .spawn(move || {
                while let Some(me) = weak.upgrade() {
                    if me.pending_since.load(Ordering::Acquire) == 0 {
                        me.pending_since.store(me.now(), Ordering::Release);
                        let probe = me.clone();
                        runtime.spawn(async move { probe.probed() });
                    }
                    drop(me);
                    #[allow(clippy::disallowed_methods, reason = "the probe's own thread")]
                    std::thread::sleep(TICK);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the load probe; tool calls will not be shed");
        }
    }

    /// A probe task is being polled: record how long it waited.
    fn probed(&self) {
        let since = self.pending_since.swap(0, Ordering::AcqRel);
        if since == 0 {
            return;
        }
        let now = self.now();
        let waited = now.saturating_sub(since);
        self.last_delay_us.store(waited / 1_000, Ordering::Relaxed);
        crate::telemetry::scheduling_delay(Duration::from_nanos(waited));
        let Some(threshold) = self.threshold.map(|t| t.as_nanos() as u64) else {
            return;
        };
        let high = waited > threshold;
        let again = self.was_high.swap(high, Ordering::Relaxed);
        let share = self.share.load(Ordering::Relaxed);
        self.share.store(
            next_share(share, waited, again, threshold),
            Ordering::Relaxed,
        );
    }

    /// The share of new calls being shed, from 0 to 1.
    pub fn shed_share(&self) -> f64 {
        f64::from(self.share.load(Ordering::Relaxed)) / f64::from(FULL)
    }

    /// Whether a tool call arriving now is to be shed, and the scheduling delay that says so.
    pub fn shedding(&self) -> Option<Duration> {
        let threshold = self.threshold?.as_nanos() as u64;
        let now = self.now();
        let pending = self.pending_since.load(Ordering::Acquire);
        if pending != 0 && now.saturating_sub(pending) > 4 * threshold {
            return Some(Duration::from_nanos(now - pending));
        }
        let share = self.share.load(Ordering::Relaxed);
        if share == 0 {
            return None;
        }
        // The calls asked about, scattered over 0..FULL (a multiplicative hash of their
        // count): each is shed when it falls below the share, so the shed ones are spread
        // evenly rather than in runs.
        let n = self.asked.fetch_add(1, Ordering::Relaxed);
        let spot = n.wrapping_mul(0x9E37_79B9) >> 16;
        (spot < share).then(|| Duration::from_micros(self.last_delay_us.load(Ordering::Relaxed)))
    }
}

/// The share to shed after a probe that waited `waited` ns, `again` when the probe before it
/// waited longer than `threshold` too.
fn next_share(share: u32, waited: u64, again: bool, threshold: u64) -> u32 {
    if waited > threshold && again {
        (share + RAISE).min(FULL)
    } else if waited < threshold / 2 {
        share.saturating_sub(EASE)
    } else {
        share
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    #[allow(
        clippy::disallowed_methods,
        reason = "blocking the runtime is what is tested"
    )]
    async fn a_busy_runtime_sheds_and_a_free_one_does_not() {
        let load = Overload::new(Some(Duration::from_millis(20)));
        load.start(tokio::runtime::Handle::current());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(load.shedding(), None, "an idle runtime admits every call");
        // The only worker is blocked (this test's own thread is not a worker): the probe
        // waits, and a call arriving now is shed.
        let hog = tokio::spawn(async { std::thread::sleep(Duration::from_millis(250)) });
        std::thread::sleep(Duration::from_millis(150));
        let delay = load.shedding().expect("shedding while the probe waits");
        assert!(delay > Duration::from_millis(80), "{delay:?}");
        // One slow moment, once over, leaves nothing shed.
        hog.await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(load.shed_share(), 0.0, "a single long wait raises no share");
        // The runtime busy for a while: probe after probe waits, and a share of calls is shed.
        let hog = tokio::spawn(async {
            for _ in 0..6 {
                std::thread::sleep(Duration::from_millis(40));
                tokio::task::yield_now().await;
            }
        });
        hog.await.unwrap();
        assert!(load.shed_share() > 0.0, "waits in a row raise the share");
        // With the runtime free the share falls back to nothing.
        let deadline = Instant::now() + Duration::from_secs(5);
        while load.shed_share() > 0.0 {
            assert!(Instant::now() < deadline, "the share never fell back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(load.shedding(), None);
    }

    #[test]
    fn the_share_of_calls_shed_is_spread_evenly() {
        let load = Overload::new(Some(Duration::from_millis(10)));
        for (share, expect) in [(FULL / 4, 250), (FULL / 2, 500), (FULL, 1000), (0, 0)] {
            load.share.store(share, Ordering::Relaxed);
            let shed = (0..1000).filter(|_| load.shedding().is_some()).count();
            assert!(shed.abs_diff(expect) <= 10, "{share}: {shed} of 1000");
            // No long runs: any 20 calls in a row at half see both outcomes.
            if share == FULL / 2 {
                let runs: Vec<bool> = (0..1000).map(|_| load.shedding().is_some()).collect();
                assert!(
                    runs.windows(20)
                        .all(|w| w.contains(&true) && w.contains(&false))
                );
            }
        }
    }

    #[test]
    fn the_share_climbs_on_slow_pairs_amid_quick_probes_and_falls_back_in_calm() {
        const MS: u64 = 1_000_000;
        let t = 5 * MS;
        // Replays probe waits (ns) through the rule, from nothing shed.
        let replay = |share: u32, waits: &[u64]| {
            let (mut share, mut was_high) = (share, false);
            for &w in waits {
                share = next_share(share, w, was_high, t);
                was_high = w > t;
            }
            share
        };
        assert_eq!(replay(0, &[9 * MS]), 0, "one slow probe sheds nothing");
        assert_eq!(replay(0, &[9 * MS, 9 * MS]), RAISE, "two in a row raise");
        assert_eq!(
            replay(RAISE, &[3 * MS; 10]),
            RAISE,
            "between T/2 and T: no change"
        );
        // A saturated machine: most probes quick, a slow pair now and then (three quick
        // probes for each pair here). Halving on each quick one kept the share near nothing;
        // now it climbs.
        let mut saturated = Vec::new();
        for _ in 0..20 {
            saturated.extend([9 * MS, 9 * MS, 50_000, 80_000, 40_000]);
        }
        let share = replay(0, &saturated);
        assert!(share > FULL / 2, "{share} of {FULL}");
        // Calm: all of it is gone within 64 quick probes (0.64 s), and not after one.
        assert!(replay(share, &[50_000]) > share / 2);
        assert_eq!(replay(FULL, &[50_000; 64]), 0);
        assert_eq!(replay(FULL, &[50_000; 200]), 0, "never below nothing");
        assert_eq!(
            replay(FULL - EASE, &[9 * MS; 4]),
            FULL,
            "never above everything"
        );
    }

    #[test]
    fn without_a_threshold_nothing_is_shed() {
        let load = Overload::new(None);
        load.pending_since.store(1, Ordering::Release);
        load.share.store(FULL, Ordering::Relaxed);
        assert_eq!(load.shedding(), None);
    }
}
