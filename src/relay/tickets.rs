//! Relay tickets: the call's `session.start`, kept under a single-use, expiring id that travels
//! in the relay URL's path (clients append their own query strings to a base URL, so the path is
//! the one place that survives every SDK).

use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::protocol::SessionStart;

/// Most tickets kept at once: an org token that mints tickets in a loop cannot grow memory
/// without bound (the oldest are not dropped; new ones are refused until some expire or are used).
pub const MAX_TICKETS: usize = 100_000;

/// One ticket.
#[derive(Debug)]
pub struct Ticket {
    /// The org whose session token asked for it.
    pub org: String,
    /// The call as `session.start` describes it.
    pub start: SessionStart,
    expires: Instant,
}

/// The tickets of this process.
#[derive(Debug, Default)]
pub struct Tickets {
    by_id: DashMap<String, Ticket>,
}

impl Tickets {
    /// Keep a call's start under a new ticket valid for `ttl`; `None` when too many are live.
    pub fn issue(&self, org: String, start: SessionStart, ttl: Duration) -> Option<String> {
        let now = Instant::now();
        if self.by_id.len() >= MAX_TICKETS {
            self.by_id.retain(|_, t| t.expires > now);
            if self.by_id.len() >= MAX_TICKETS {
                return None;
            }
        }
        let id = format!("tkt_{:032x}", rand::random::<u128>());
        self.by_id.insert(
            id.clone(),
            Ticket {
                org,
                start,
                expires: now + ttl,
            },
        );
        // Expired tickets are swept now and then, so unused ones do not pile up.
        if self.by_id.len().is_multiple_of(256) {
            self.by_id.retain(|_, t| t.expires > now);
        }
        Some(id)
    }

    /// Take a ticket: it is gone afterwards, used or not; `None` when unknown or expired.
    pub fn take(&self, id: &str) -> Option<Ticket> {
        let (_, t) = self.by_id.remove(id)?;
        (t.expires > Instant::now()).then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> SessionStart {
        SessionStart {
            call_id: "c-1".into(),
            agent: "bot".into(),
            caller: Default::default(),
            variables: Default::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticket_is_single_use_and_expires() {
        let t = Tickets::default();
        let id = t
            .issue("acme".into(), start(), Duration::from_secs(60))
            .unwrap();
        assert!(id.starts_with("tkt_") && id.len() == 36, "{id}");
        assert_eq!(t.take(&id).unwrap().org, "acme");
        assert!(t.take(&id).is_none(), "used");
        let id = t
            .issue("acme".into(), start(), Duration::from_secs(60))
            .unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(t.take(&id).is_none(), "expired");
        assert!(t.take("tkt_unknown").is_none());
    }
}
