//! Integration connections at run time (SPEC §1, §5): status, circuit breaker, rate limit.
//!
//! Status is `pending` until validated, `connected`, `error` or `disconnected` (disabled). An
//! `error` says *why* ([`Trouble`]): refused credentials or a bad configuration make calls
//! fail fast with `connection_unavailable` until validation succeeds again; an unreachable
//! provider is treated like an open circuit (deferrable calls are queued, live ones fail fast),
//! because the credentials are not known to be wrong.
//!
//! Each connection also has a [`breaker::Breaker`] and a [`rate::Limiter`]; every provider
//! request, live or from the worker, is reported through [`Registry::record`].

pub mod breaker;
pub mod rate;
pub mod validate;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::clock::Millis;
use crate::config::{Config, Connection};
use crate::providers::{ProviderError, Trouble};
use breaker::Breaker;
use rate::Limiter;

/// A connection's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Not validated yet. Actions are allowed: validation runs in the background and must not
    /// hold up the first calls after start-up.
    Pending,
    /// Validated.
    Connected,
    /// The provider refused the credentials, or validation failed.
    Error,
    /// Disabled (`enabled = false`).
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
}

/// What an action may do on a connection right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// Yes.
    Yes,
    /// Not now, but deferrable calls may be queued: the provider is down or its circuit open.
    Later,
    /// No: the credentials or the configuration are wrong, or it is disabled.
    No,
}

/// One connection's live state.
#[derive(Debug)]
pub struct Health {
    status: AtomicU8,
    detail: Mutex<Detail>,
    recent: Mutex<std::collections::VecDeque<u32>>,
    /// The circuit breaker.
    pub breaker: Breaker,
    /// The rate limiter.
    pub limiter: Limiter,
}

/// The human side of a status.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    /// Why it is in this status.
    pub reason: Option<String>,
    /// Why it is in `error`.
    pub trouble: Option<Trouble>,
    /// When validation last ran.
    pub validated_at: Option<Millis>,
    /// What validation checked and found (e.g. each Wati template's approval).
    pub checks: Vec<String>,
    /// When the provider last refused the credentials during an action.
    pub refused_at: Option<Millis>,
}

/// How long a 429 without `Retry-After` pauses the connection.
pub const DEFAULT_429_PAUSE: Duration = Duration::from_secs(1);

/// How many recent request latencies feed the p90.
const LATENCY_WINDOW: usize = 50;

/// Fewest samples before a p90 is trusted.
const MIN_SAMPLES: usize = 10;

impl Health {
    fn new(conn: &Connection) -> Self {
        let status = if conn.enabled {
            Status::Pending
        } else {
            Status::Disconnected
        };
        Health {
            status: AtomicU8::new(status as u8),
            detail: Mutex::new(Detail {
                reason: (!conn.enabled).then(|| "disabled in the config".to_owned()),
                ..Detail::default()
            }),
            recent: Mutex::new(std::collections::VecDeque::with_capacity(LATENCY_WINDOW)),
            breaker: Breaker::new(conn.circuit),
            limiter: Limiter::new(conn.rate),
        }
    }

    /// The current status (lock-free: read on every tool call).
    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Acquire))
    }

    /// The reason, trouble, validation time and checks.
    pub fn detail(&self) -> Detail {
        self.detail.lock().expect("health lock").clone()
    }

    /// Why the connection is in its status, when there is a reason.
    pub fn reason(&self) -> Option<String> {
        self.detail.lock().expect("health lock").reason.clone()
    }

    /// Set the status and its reason.
    pub fn set(&self, status: Status, trouble: Option<Trouble>, reason: Option<String>) {
        // The status changes under the same lock as its trouble, so a reader that takes the
        // lock sees the two together.
        let mut d = self.detail.lock().expect("health lock");
        d.reason = reason;
        d.trouble = trouble;
        self.status.store(status as u8, Ordering::Release);
    }

    /// Record the result of a validation that started at `started`; `false` when a credential
    /// refusal during an action came after it started (the older answer does not overrule it).
    pub fn validated(&self, v: &validate::Validation, started: Millis, at: Millis) -> bool {
        {
            let mut d = self.detail.lock().expect("health lock");
            d.validated_at = Some(at);
            if d.refused_at.is_some_and(|r| r >= started) {
                return false;
            }
            d.checks = v.checks.clone();
        }
        self.set(v.status, v.trouble, Some(v.reason.clone()));
        true
    }

    /// A validation could not say anything (the provider asked for quiet): the status stays,
    /// the next one is due on the usual schedule.
    pub fn validation_postponed(&self, at: Millis) {
        self.detail.lock().expect("health lock").validated_at = Some(at);
    }

    /// What an action may do now.
    pub fn usable(&self, now: Instant) -> Usable {
        match self.status() {
            Status::Disconnected => Usable::No,
            Status::Error => {
                let d = self.detail.lock().expect("health lock");
                match (self.status(), d.trouble) {
                    (Status::Error, Some(Trouble::Unreachable)) => Usable::Later,
                    (Status::Error, _) => Usable::No,
                    // It changed while we looked: read it again.
                    _ => {
                        drop(d);
                        self.usable(now)
                    }
                }
            }
            Status::Pending | Status::Connected => {
                if self.breaker.open_until(now).is_some() {
                    Usable::Later
                } else {
                    Usable::Yes
                }
            }
        }
    }

    fn record_latency(&self, latency: Duration) {
        let mut r = self.recent.lock().expect("health lock");
        if r.len() == LATENCY_WINDOW {
            r.pop_front();
        }
        r.push_back(latency.as_millis().min(u32::MAX as u128) as u32);
    }

    /// The p90 of recent request latencies, once there are enough of them.
    pub fn p90(&self) -> Option<Duration> {
        let r = self.recent.lock().expect("health lock");
        if r.len() < MIN_SAMPLES {
            return None;
        }
        let mut v: Vec<u32> = r.iter().copied().collect();
        v.sort_unstable();
        let i = (v.len() * 9).div_ceil(10) - 1;
        Some(Duration::from_millis(v[i] as u64))
    }
}

/// The connections of a running sidecar, by id.
#[derive(Debug)]
pub struct Registry {
    /// foldhash, not SipHash: read several times per tool call.
    by_id: foldhash::HashMap<String, (Arc<Connection>, Arc<Health>)>,
    /// The longest a provider's "slow down" may pause a connection
    /// (`defaults.max_retry_after_ms`).
    max_pause: Duration,
}

impl Registry {
    /// One entry per configured connection: `pending`, or `disconnected` when disabled.
    pub fn new(config: &Config) -> Registry {
        Registry::carried_over(config, None)
    }

    /// The registry for a reloaded config: an unchanged connection (same provider, settings,
    /// credentials, rate and circuit) keeps its live state; a new or changed one starts over.
    /// A provider's pause is lifted either way: a reload is an operator saying "try again".
    pub fn carried_over(config: &Config, old: Option<&Registry>) -> Registry {
        let by_id = config
            .connections
            .iter()
            .map(|c| {
                let kept = old
                    .and_then(|o| o.by_id.get(&c.id))
                    .filter(|(prev, _)| prev.fingerprint() == c.fingerprint())
                    .map(|(_, h)| h.clone());
                if let Some(h) = &kept {
                    h.limiter.clear_pause();
                }
                let health = kept.unwrap_or_else(|| Arc::new(Health::new(c)));
                (c.id.clone(), (c.clone(), health))
            })
            .collect();
        Registry {
            by_id,
            max_pause: config.defaults.max_retry_after,
        }
    }

    /// Whether a connection kept its state from `old` (it did not change).
    pub fn kept_from(&self, id: &str, old: &Registry) -> bool {
        match (self.by_id.get(id), old.by_id.get(id)) {
            (Some((_, a)), Some((_, b))) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The health of a connection.
    pub fn health(&self, id: &str) -> Option<&Arc<Health>> {
        self.by_id.get(id).map(|(_, h)| h)
    }

    /// A configured connection by id.
    pub fn connection(&self, id: &str) -> Option<&Arc<Connection>> {
        self.by_id.get(id).map(|(c, _)| c)
    }

    /// Every connection with its health, sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<Connection>, &Arc<Health>)> {
        let mut v: Vec<_> = self.by_id.values().map(|(c, h)| (c, h)).collect();
        v.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        v.into_iter()
    }

    /// Record a provider request's outcome (live or from the worker): its latency; provider
    /// trouble for the breaker (`probe`: the request was the circuit's probe); a provider's
    /// "slow down" pauses the connection; a credential refusal marks it `error`.
    pub fn record(
        &self,
        id: &str,
        latency: Duration,
        failure: Option<&ProviderError>,
        probe: bool,
    ) {
        let Some(h) = self.health(id) else { return };
        let now = Instant::now();
        h.record_latency(latency);
        let trouble = failure.is_some_and(ProviderError::is_provider_trouble);
        let was_open = h.breaker.open_until(now).is_some();
        // A "slow down" (429) says nothing about the provider's health: it pauses the
        // connection below and leaves the circuit as it is.
        if failure.is_none_or(|e| e.http_status != Some(429)) {
            h.breaker.record(trouble, probe, now);
        } else if probe {
            h.breaker.release_probe(now);
        }
        if !was_open && let Some(until) = h.breaker.open_until(now) {
            warn!(connection = %id, penalty_ms = (until - now).as_millis() as u64, "circuit opened after consecutive provider failures");
        }
        if let Some(e) = failure {
            if e.http_status == Some(429) {
                let wait = self.pause_for(e.retry_after);
                info!(connection = %id, wait_ms = wait.as_millis() as u64, "provider asked to slow down; connection paused");
                h.limiter.pause_until(now + wait);
            }
            if e.is_auth() {
                h.detail.lock().expect("health lock").refused_at = Some(crate::clock::now_ms());
                if h.status() != Status::Error {
                    warn!(connection = %id, status = ?e.http_status, "provider refused the credentials; connection marked error");
                }
                h.set(
                    Status::Error,
                    Some(Trouble::Credentials),
                    Some(format!(
                        "the provider refused the credentials (HTTP {}) during an action; validate the connection again",
                        e.http_status.unwrap_or(0)
                    )),
                );
            }
        }
    }

    /// How long a provider's "slow down" pauses a connection: what it asked for
    /// (`Retry-After`), 1 s when it named nothing, never past `defaults.max_retry_after_ms`.
    pub fn pause_for(&self, asked: Option<Duration>) -> Duration {
        asked.unwrap_or(DEFAULT_429_PAUSE).min(self.max_pause)
    }

    /// Whether an `auto` call should be queued at once because the connection's recent p90
    /// latency exceeds its budget.
    pub fn predicted_slow(&self, id: &str, defer_after: Duration) -> bool {
        self.health(id)
            .and_then(|h| h.p90())
            .is_some_and(|p90| p90 > defer_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConnectionSettings, Secret};
    use reqwest::Url;

    fn conn() -> Connection {
        Connection {
            id: "c".into(),
            org: "o".into(),
            enabled: true,
            rate: None,
            circuit: crate::config::BreakerSettings::default(),
            settings: ConnectionSettings::Wati {
                endpoint: Url::parse("http://127.0.0.1:9/1").unwrap(),
                token: Secret::new("t"),
            },
        }
    }

    #[test]
    fn p90_needs_enough_samples_and_tracks_the_slow_tail() {
        let h = Health::new(&conn());
        for _ in 0..MIN_SAMPLES - 1 {
            h.record_latency(Duration::from_millis(3000));
        }
        assert_eq!(h.p90(), None);
        for _ in 0..LATENCY_WINDOW {
            h.record_latency(Duration::from_millis(100));
        }
        assert_eq!(
            h.p90(),
            Some(Duration::from_millis(100)),
            "old samples roll out"
        );
        for _ in 0..10 {
            h.record_latency(Duration::from_millis(3000));
        }
        assert_eq!(h.p90(), Some(Duration::from_millis(3000)));
    }

    #[tokio::test]
    async fn an_unreachable_provider_is_later_and_refused_credentials_are_no() {
        let h = Health::new(&conn());
        let now = Instant::now();
        assert_eq!(h.usable(now), Usable::Yes);
        h.set(Status::Error, Some(Trouble::Unreachable), None);
        assert_eq!(h.usable(now), Usable::Later);
        h.set(Status::Error, Some(Trouble::Credentials), None);
        assert_eq!(h.usable(now), Usable::No);
        h.set(Status::Connected, None, None);
        assert_eq!(h.usable(now), Usable::Yes);
    }
}
