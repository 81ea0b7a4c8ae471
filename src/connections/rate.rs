//! A connection's rate limit: a token bucket (`rate = "30/10s"`: 30 requests, refilled evenly
//! over 10 s), and a pause when the provider itself says "slow down" (429 with `Retry-After` or
//! `ratelimit-reset`).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Rate;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    paused_until: Option<Instant>,
}

/// One connection's limiter.
#[derive(Debug)]
pub struct Limiter {
    rate: Option<Rate>,
    bucket: Mutex<Bucket>,
}

impl Limiter {
    /// A full bucket for `rate` (`None`: unlimited, but the provider can still pause it).
    pub fn new(rate: Option<Rate>) -> Limiter {
        Limiter {
            rate,
            bucket: Mutex::new(Bucket {
                tokens: rate.map_or(0.0, |r| f64::from(r.count)),
                updated: Instant::now(),
                paused_until: None,
            }),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// Take a token, or learn when one will be there.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Instant> {
        let mut b = self.bucket.lock().expect("limiter lock");
        if let Some(until) = b.paused_until {
            if now < until {
                return Err(until);
            }
            b.paused_until = None;
        }
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let per_token = rate.per.as_secs_f64() / f64::from(rate.count);
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed / per_token).min(f64::from(rate.count));
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) * per_token;
            Err(now + Duration::from_secs_f64(wait))
        }
    }

    /// Return a token taken for a request that was never sent.
    pub fn give_back(&self) {
        if let Some(rate) = self.rate {
            let mut b = self.bucket.lock().expect("limiter lock");
            b.tokens = (b.tokens + 1.0).min(f64::from(rate.count));
        }
    }

    /// Hold every request back until `until` (a provider's `Retry-After`).
    pub fn pause_until(&self, until: Instant) {
        let mut b = self.bucket.lock().expect("limiter lock");
        if b.paused_until.is_none_or(|p| p < until) {
            b.paused_until = Some(until);
        }
    }

    /// Lift a provider's pause (a validation that succeeded, a reload): the provider answered
    /// again, or a person decided it should be tried.
    pub fn clear_pause(&self) {
        self.bucket.lock().expect("limiter lock").paused_until = None;
    }

    /// Until when the provider paused the connection, if it did.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.bucket
            .lock()
            .expect("limiter lock")
            .paused_until
            .filter(|u| now < *u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn rate(count: u32, per_ms: u64) -> Option<Rate> {
        Some(Rate {
            count,
            per: Duration::from_millis(per_ms),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_allows_a_burst_then_refills_evenly() {
        let l = Limiter::new(rate(3, 3000));
        for _ in 0..3 {
            assert!(l.try_acquire(Instant::now()).is_ok());
        }
        let next = l.try_acquire(Instant::now()).unwrap_err();
        assert_eq!(next - Instant::now(), Duration::from_millis(1000));
        advance(Duration::from_millis(999)).await;
        assert!(l.try_acquire(Instant::now()).is_err());
        advance(Duration::from_millis(1)).await;
        assert!(l.try_acquire(Instant::now()).is_ok());
        assert!(l.try_acquire(Instant::now()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn over_a_long_run_the_rate_holds() {
        let l = Limiter::new(rate(30, 10_000));
        let mut granted = 0;
        for _ in 0..600 {
            if l.try_acquire(Instant::now()).is_ok() {
                granted += 1;
            }
            advance(Duration::from_millis(50)).await;
        }
        // 30 s: the first burst of 30 plus 3 per second.
        assert!((115..=121).contains(&granted), "{granted}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_pause_holds_everything_back_even_without_a_rate() {
        let l = Limiter::new(None);
        assert!(l.try_acquire(Instant::now()).is_ok());
        l.pause_until(Instant::now() + Duration::from_secs(2));
        assert_eq!(
            l.try_acquire(Instant::now()).unwrap_err() - Instant::now(),
            Duration::from_secs(2)
        );
        advance(Duration::from_secs(2)).await;
        assert!(l.try_acquire(Instant::now()).is_ok());
    }
}
