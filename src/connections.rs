//! Integration connections at run time: each connection's status (SPEC §1, §5).
//!
//! Status is `pending` until validated, `connected`, `error` (the provider refused the
//! credentials) or `disconnected` (disabled). A 401/403 during an action flips a connection to
//! `error`, and later calls fail fast with `connection_unavailable` instead of hammering a
//! provider that will refuse them. Until validation exists, `error` lasts until a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use crate::config::{Config, Connection};
use crate::providers::ProviderError;
use crate::workflow::DeferReason;

/// A connection's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Not validated yet. Actions are allowed: this version has no validation yet (it
    /// arrives with the connections work, where it runs in the background and must not hold
    /// up the first calls after start-up), so refusing `pending` would refuse everything.
    Pending,
    /// Validated.
    Connected,
    /// The provider refused the credentials, or validation failed.
    Error,
    /// Removed or disabled.
    Disconnected,
}

impl Status {
    /// The status as the admin API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Connected => "connected",
            Status::Error => "error",
            Status::Disconnected => "disconnected",
        }
    }

    fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Pending,
            1 => Status::Connected,
            2 => Status::Error,
            _ => Status::Disconnected,
        }
    }

    /// Whether actions may run on a connection in this status.
    pub fn usable(self) -> bool {
        matches!(self, Status::Pending | Status::Connected)
    }
}

/// Consecutive provider-trouble failures after which a connection's circuit counts as open
/// (until the circuit breaker of the connections work replaces this streak).
pub const OPEN_AFTER_FAILURES: u32 = 5;

/// How many recent request latencies feed the p90.
const LATENCY_WINDOW: usize = 50;

/// Fewest samples before a p90 is trusted.
const MIN_SAMPLES: usize = 10;

/// Recent request outcomes of one connection.
#[derive(Debug, Default)]
struct Recent {
    latencies_ms: std::collections::VecDeque<u32>,
    failure_streak: u32,
}

/// One connection's live state.
#[derive(Debug)]
pub struct Health {
    status: AtomicU8,
    reason: Mutex<Option<String>>,
    recent: Mutex<Recent>,
}

impl Health {
    fn new(status: Status) -> Self {
        Health {
            status: AtomicU8::new(status as u8),
            reason: Mutex::new(None),
            recent: Mutex::new(Recent::default()),
        }
    }

    /// Record one request: its latency, and whether it failed because of provider trouble.
    pub fn record(&self, latency: Duration, trouble: bool) {
        let mut r = self.recent.lock().expect("health lock");
        if r.latencies_ms.len() == LATENCY_WINDOW {
            r.latencies_ms.pop_front();
        }
        r.latencies_ms
            .push_back(latency.as_millis().min(u32::MAX as u128) as u32);
        r.failure_streak = if trouble { r.failure_streak + 1 } else { 0 };
    }

    /// Whether the recent failure streak says the provider is down.
    pub fn circuit_open(&self) -> bool {
        self.recent.lock().expect("health lock").failure_streak >= OPEN_AFTER_FAILURES
    }

    /// The p90 of recent request latencies, once there are enough of them.
    pub fn p90(&self) -> Option<Duration> {
        let r = self.recent.lock().expect("health lock");
        if r.latencies_ms.len() < MIN_SAMPLES {
            return None;
        }
        let mut v: Vec<u32> = r.latencies_ms.iter().copied().collect();
        v.sort_unstable();
        let i = (v.len() * 9).div_ceil(10) - 1;
        Some(Duration::from_millis(v[i] as u64))
    }

    /// The current status (lock-free: read on every tool call).
    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Acquire))
    }

    /// Why the connection is in `error`, when it is.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().expect("health lock").clone()
    }

    /// Set the status and its reason.
    pub fn set(&self, status: Status, reason: Option<String>) {
        *self.reason.lock().expect("health lock") = reason;
        self.status.store(status as u8, Ordering::Release);
    }
}

/// The connections of a running sidecar, by id.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: HashMap<String, (Arc<Connection>, Arc<Health>)>,
}

impl Registry {
    /// One entry per configured connection: `pending`, or `disconnected` when disabled.
    pub fn new(config: &Config) -> Registry {
        let by_id = config
            .connections
            .iter()
            .map(|c| {
                let status = if c.enabled {
                    Status::Pending
                } else {
                    Status::Disconnected
                };
                (c.id.clone(), (c.clone(), Arc::new(Health::new(status))))
            })
            .collect();
        Registry { by_id }
    }

    /// The health of a connection.
    pub fn health(&self, id: &str) -> Option<&Arc<Health>> {
        self.by_id.get(id).map(|(_, h)| h)
    }

    /// Every connection with its health.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<Connection>, &Arc<Health>)> {
        self.by_id.values().map(|(c, h)| (c, h))
    }

    /// A configured connection by id.
    pub fn connection(&self, id: &str) -> Option<&Arc<Connection>> {
        self.by_id.get(id).map(|(c, _)| c)
    }

    /// Record a provider request's outcome (live or from the worker): latency and failure
    /// streak for predictive deferral, and a credential refusal marks the connection `error`.
    pub fn record(&self, id: &str, latency: Duration, failure: Option<&ProviderError>) {
        let Some(h) = self.health(id) else { return };
        h.record(
            latency,
            failure.is_some_and(ProviderError::is_provider_trouble),
        );
        if let Some(e) = failure.filter(|e| e.is_auth()) {
            if h.status() != Status::Error {
                warn!(connection = %id, status = ?e.http_status, "provider refused the credentials; connection marked error");
            }
            h.set(
                Status::Error,
                Some(format!(
                    "the provider refused the credentials (HTTP {}) during an action",
                    e.http_status.unwrap_or(0)
                )),
            );
        }
    }

    /// Why an `auto` call on this connection should be queued at once instead of waiting
    /// for a budget it will not meet: an open circuit, or a recent p90 above the budget.
    pub fn predict_deferral(&self, id: &str, defer_after: Duration) -> Option<DeferReason> {
        let h = self.health(id)?;
        if h.circuit_open() {
            return Some(DeferReason::CircuitOpen);
        }
        h.p90()
            .filter(|p90| *p90 > defer_after)
            .map(|_| DeferReason::PredictedSlow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_streak_opens_the_circuit_and_a_success_closes_it() {
        let h = Health::new(Status::Pending);
        for _ in 0..OPEN_AFTER_FAILURES - 1 {
            h.record(Duration::from_millis(10), true);
        }
        assert!(!h.circuit_open());
        h.record(Duration::from_millis(10), true);
        assert!(h.circuit_open());
        h.record(Duration::from_millis(10), false);
        assert!(!h.circuit_open());
    }

    #[test]
    fn p90_needs_enough_samples_and_tracks_the_slow_tail() {
        let h = Health::new(Status::Pending);
        for _ in 0..MIN_SAMPLES - 1 {
            h.record(Duration::from_millis(3000), false);
        }
        assert_eq!(h.p90(), None);
        for _ in 0..LATENCY_WINDOW {
            h.record(Duration::from_millis(100), false);
        }
        assert_eq!(
            h.p90(),
            Some(Duration::from_millis(100)),
            "old samples roll out"
        );
        for _ in 0..10 {
            h.record(Duration::from_millis(3000), false);
        }
        assert_eq!(h.p90(), Some(Duration::from_millis(3000)));
    }
}
