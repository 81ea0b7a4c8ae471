//! A connection's circuit breaker: opens after consecutive provider failures (timeouts, 5xx,
//! connection errors; never the caller's own 4xx mistakes), stays open for a jittered penalty
//! that doubles with every reopening up to a cap, then lets exactly one probe through. The
//! probe's success closes it; its failure reopens it for a longer penalty.
//!
//! While it is open nobody waits on a dead provider: live calls fail fast, deferrable calls are
//! queued (`circuit_open`) and the worker puts jobs back until the penalty ends.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerSettings;

/// What the breaker lets a request do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go.
    Go,
    /// The penalty is over and this request is the one probe: go, and report back.
    Probe,
    /// Open (or a probe is already out): do not send before this.
    Wait(Instant),
}

/// A breaker's state, as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// Requests are held back.
    Open,
    /// One probe is out.
    HalfOpen,
}

impl CircuitState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out since then.
    Probing {
        since: Instant,
    },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Times it opened since it last closed: sets the next penalty.
    opened: u32,
}

/// One connection's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

/// How long a probe may be out before another request may probe instead (a probe whose
/// caller vanished must not hold the circuit shut forever).
const PROBE_GRACE: Duration = Duration::from_secs(60);

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            inner: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                opened: 0,
            }),
        }
    }

    fn penalty(&self, opened: u32) -> Duration {
        let exp = opened.saturating_sub(1).min(31);
        let full = self
            .settings
            .penalty
            .saturating_mul(1u32 << exp)
            .min(self.settings.max_penalty);
        // Equal jitter: between half and all of the penalty, so connections that failed
        // together do not probe together.
        let ms = full.as_millis() as u64;
        Duration::from_millis(rand::random_range(ms / 2..=ms.max(1)))
    }

    /// May a request go now? At most one caller gets [`Admit::Probe`] per penalty, or per
    /// `PROBE_GRACE` when a probe never reports back.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut inner = self.inner.lock().expect("breaker lock");
        match inner.state {
            State::Closed { .. } => Admit::Go,
            State::Open { until } if now < until => Admit::Wait(until),
            State::Open { .. } => {
                inner.state = State::Probing { since: now };
                Admit::Probe
            }
            State::Probing { since } if now >= since + PROBE_GRACE => {
                inner.state = State::Probing { since: now };
                Admit::Probe
            }
            // Look again soon: a probe usually answers well within the first penalty.
            State::Probing { since } => {
                Admit::Wait((now + self.settings.penalty).min(since + PROBE_GRACE))
            }
        }
    }

    /// Whether a request would be held back now, without taking the probe.
    pub fn state(&self, now: Instant) -> CircuitState {
        match self.inner.lock().expect("breaker lock").state {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { until } if now < until => CircuitState::Open,
            State::Open { .. } | State::Probing { .. } => CircuitState::HalfOpen,
        }
    }

    /// When an open circuit lets its probe through, if it is open.
    pub fn open_until(&self, now: Instant) -> Option<Instant> {
        match self.inner.lock().expect("breaker lock").state {
            State::Open { until } if now < until => Some(until),
            _ => None,
        }
    }

    /// Give back a probe that will not be sent (the call was cancelled, or held back by the
    /// rate limit): the next request probes instead.
    pub fn release_probe(&self, now: Instant) {
        let mut inner = self.inner.lock().expect("breaker lock");
        if matches!(inner.state, State::Probing { .. }) {
            inner.state = State::Open { until: now };
        }
    }

    /// Report a request's outcome: `trouble` for a timeout, 5xx or connection error; `probe`
    /// when the request was the one [`Admit::Probe`] let through. Any success closes the
    /// circuit; while a probe is out, only the probe's failure reopens it.
    pub fn record(&self, trouble: bool, probe: bool, now: Instant) {
        let mut inner = self.inner.lock().expect("breaker lock");
        match (&mut inner.state, trouble) {
            (_, false) => {
                inner.state = State::Closed { failures: 0 };
                inner.opened = 0;
            }
            (State::Closed { failures }, true) => {
                *failures += 1;
                if *failures >= self.settings.failures {
                    inner.opened += 1;
                    let until = now + self.penalty(inner.opened);
                    inner.state = State::Open { until };
                }
            }
            (State::Probing { .. }, true) if probe => {
                inner.opened += 1;
                let until = now + self.penalty(inner.opened);
                inner.state = State::Open { until };
            }
            // Late reports of requests sent before it opened do not extend the penalty.
            (State::Probing { .. } | State::Open { .. }, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::time::{advance, sleep};

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            penalty: Duration::from_millis(1000),
            max_penalty: Duration::from_millis(8000),
        }
    }

    /// A provider that is down, and a caller that asks the breaker before every request.
    async fn call(b: &Breaker, sent: &AtomicU32) -> Admit {
        let admit = b.admit(Instant::now());
        if matches!(admit, Admit::Go | Admit::Probe) {
            sent.fetch_add(1, Ordering::SeqCst);
            sleep(Duration::from_millis(10)).await;
            b.record(true, admit == Admit::Probe, Instant::now());
        }
        admit
    }

    #[tokio::test(start_paused = true)]
    async fn after_n_failures_nothing_is_sent_until_the_penalty_ends_then_one_probe() {
        let b = Breaker::new(settings());
        let sent = AtomicU32::new(0);
        for _ in 0..3 {
            assert_eq!(call(&b, &sent).await, Admit::Go);
        }
        assert_eq!(b.state(Instant::now()), CircuitState::Open);
        // Many callers during the penalty (at least half of 1 s): none reaches the provider.
        for _ in 0..40 {
            assert!(matches!(call(&b, &sent).await, Admit::Wait(_)));
        }
        assert_eq!(sent.load(Ordering::SeqCst), 3);
        advance(Duration::from_millis(1000)).await;
        // Exactly one probe, even when several callers ask at once.
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
        assert!(matches!(b.admit(Instant::now()), Admit::Wait(_)));
        assert!(matches!(b.admit(Instant::now()), Admit::Wait(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_longer_and_a_good_one_closes() {
        let b = Breaker::new(settings());
        for _ in 0..3 {
            b.record(true, false, Instant::now());
        }
        let first = b.open_until(Instant::now()).unwrap() - Instant::now();
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_millis(1000));
        advance(first).await;
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
        b.record(true, true, Instant::now());
        let second = b.open_until(Instant::now()).unwrap() - Instant::now();
        assert!(
            second >= Duration::from_millis(1000) && second <= Duration::from_millis(2000),
            "the penalty doubles: {second:?}"
        );
        advance(second).await;
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
        b.record(false, true, Instant::now());
        assert_eq!(b.state(Instant::now()), CircuitState::Closed);
        assert_eq!(b.admit(Instant::now()), Admit::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn the_penalty_grows_to_its_cap() {
        let b = Breaker::new(settings());
        for _ in 0..3 {
            b.record(true, false, Instant::now());
        }
        for _ in 0..10 {
            let until = b.open_until(Instant::now()).unwrap();
            assert!(until - Instant::now() <= Duration::from_millis(8000));
            advance(until - Instant::now()).await;
            assert_eq!(b.admit(Instant::now()), Admit::Probe);
            b.record(true, true, Instant::now());
        }
        let last = b.open_until(Instant::now()).unwrap() - Instant::now();
        assert!(last >= Duration::from_millis(4000), "{last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn successes_reset_the_count_so_only_consecutive_failures_open_it() {
        let b = Breaker::new(settings());
        for _ in 0..10 {
            b.record(true, false, Instant::now());
            b.record(true, false, Instant::now());
            b.record(false, false, Instant::now());
        }
        assert_eq!(b.state(Instant::now()), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_gives_way_to_another_after_the_grace() {
        let b = Breaker::new(settings());
        for _ in 0..3 {
            b.record(true, false, Instant::now());
        }
        advance(Duration::from_millis(1000)).await;
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
        // Its caller vanished. Others are told to look again soon, not in a minute.
        match b.admit(Instant::now()) {
            Admit::Wait(until) => assert!(until - Instant::now() <= Duration::from_millis(1000)),
            other => panic!("{other:?}"),
        }
        advance(PROBE_GRACE - Duration::from_millis(1)).await;
        assert!(matches!(b.admit(Instant::now()), Admit::Wait(_)));
        advance(Duration::from_millis(1)).await;
        assert_eq!(
            b.admit(Instant::now()),
            Admit::Probe,
            "a new probe after the grace"
        );
        b.record(false, true, Instant::now());
        assert_eq!(b.admit(Instant::now()), Admit::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_probe_can_reopen_a_half_open_circuit() {
        let b = Breaker::new(settings());
        for _ in 0..3 {
            b.record(true, false, Instant::now());
        }
        advance(Duration::from_millis(1000)).await;
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
        // A request sent before the circuit opened times out now: not the probe's verdict.
        b.record(true, false, Instant::now());
        assert_eq!(b.state(Instant::now()), CircuitState::HalfOpen);
        b.record(false, true, Instant::now());
        assert_eq!(b.state(Instant::now()), CircuitState::Closed);
    }
}
