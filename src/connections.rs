//! Integration connections at run time: each connection's status (SPEC §1, §5).
//!
//! Status is `pending` until validated, `connected`, `error` (the provider refused the
//! credentials) or `disconnected` (disabled). A 401/403 during an action flips a connection to
//! `error`, and later calls fail fast with `connection_unavailable` instead of hammering a
//! provider that will refuse them. Until validation exists, `error` lasts until a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Config, Connection};

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

/// One connection's live state.
#[derive(Debug)]
pub struct Health {
    status: AtomicU8,
    reason: Mutex<Option<String>>,
}

impl Health {
    fn new(status: Status) -> Self {
        Health {
            status: AtomicU8::new(status as u8),
            reason: Mutex::new(None),
        }
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
}
