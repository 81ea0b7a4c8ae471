//! The implicit sessions of webhook calls, as the runtime keeps them: one per (hook, platform
//! call id), with each tool call's outcome once it is known (or the requests waiting for it).

use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::session::socket::ToSession;

/// One tool call's answer.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The `tool.result` status.
    pub status: String,
    /// The §2 output string.
    pub output: String,
}

pub(super) enum Slot {
    Pending(Vec<oneshot::Sender<Outcome>>),
    Done(Outcome),
}

/// One platform call's implicit session.
pub(super) struct HookCall {
    pub(super) to_session: ToSession,
    pub(super) state: Mutex<CallState>,
}

pub(super) struct CallState {
    pub(super) results: foldhash::HashMap<String, Slot>,
    /// How many transcript turns of the platform's list were merged already.
    pub(super) turns_seen: usize,
    pub(super) last_request: Instant,
}

/// The implicit sessions of webhook calls, by (hook id, platform call id).
#[derive(Default)]
pub struct Calls {
    pub(super) by_key: DashMap<(String, String), Arc<HookCall>>,
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls")
            .field("live", &self.by_key.len())
            .finish()
    }
}
