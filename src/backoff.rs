//! Retry timing for jobs: exponential backoff with full jitter. Set in config (`[workflow]
//! backoff_base_ms`, `backoff_cap_ms`), applied by the workflow when an attempt fails
//! retryably.

use std::time::Duration;

use crate::clock::Millis;

/// Retry timing: exponential backoff with full jitter (base 1 s, cap 5 min by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first ceiling.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
    /// The longest a provider's `Retry-After` may postpone a job
    /// (`defaults.max_retry_after_ms`).
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The ceiling after `attempts` attempts: `min(cap, base * 2^(attempts-1))`.
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(32);
        self.base.saturating_mul(1u32 << exp.min(31)).min(self.cap)
    }

    /// Full jitter: uniform in `[0, ceiling]`, so retries of many jobs that failed together
    /// spread out instead of returning together. Written here rather than taken from a retry
    /// crate because the attempt count lives in the database, not in an in-memory iterator,
    /// and the common crates add jitter *on top of* the exponential delay.
    pub fn delay(&self, attempts: u32) -> Duration {
        let ceiling = self.ceiling(attempts).as_millis() as u64;
        Duration::from_millis(rand::random_range(0..=ceiling))
    }

    /// When to try again: the jittered delay, but never before the provider's `Retry-After`,
    /// itself never honoured past `max_retry_after` (a provider's date in year 9999 must not
    /// park the job for ever).
    pub fn not_before(&self, now: Millis, attempts: u32, retry_after: Option<Duration>) -> Millis {
        let asked = retry_after
            .unwrap_or(Duration::ZERO)
            .min(self.max_retry_after);
        let delay = self.delay(attempts).max(asked);
        now + delay.as_millis() as Millis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_doubles_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(2), Duration::from_secs(2));
        assert_eq!(b.ceiling(9), Duration::from_secs(256));
        assert_eq!(b.ceiling(10), Duration::from_secs(300));
        assert_eq!(b.ceiling(60), Duration::from_secs(300));
        for attempts in 1..12 {
            assert!(b.delay(attempts) <= b.ceiling(attempts));
        }
    }

    #[test]
    fn retry_after_is_bounded() {
        let b = Backoff {
            max_retry_after: Duration::from_secs(60),
            ..Backoff::default()
        };
        let year_9999 = Duration::from_secs(250_000_000_000);
        for attempts in [1, 3, 12] {
            let at = b.not_before(1_000, attempts, Some(year_9999));
            assert!(at >= 61_000, "the bound is still a floor: {at}");
            assert!(
                at <= 1_000 + b.cap.as_millis() as Millis,
                "never past the larger of the cap and the bound: {at}"
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let b = Backoff::default();
        for _ in 0..50 {
            let at = b.not_before(1_000, 1, Some(Duration::from_secs(7)));
            assert!(at >= 8_000, "{at}");
        }
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let b = Backoff::default();
        let samples: Vec<u128> = (0..400).map(|_| b.delay(4).as_millis()).collect();
        // Ceiling 8 s: full jitter puts some retries in the first and some in the last quarter.
        assert!(samples.iter().any(|&d| d < 2_000));
        assert!(samples.iter().any(|&d| d > 6_000));
    }
}
