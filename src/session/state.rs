//! One call's remembered state: the conversation so far and the actions already taken.
//! Owned by the session task alone, so nothing here is locked.

use std::time::Duration;

use crate::protocol::Role;

/// One entry of the call history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A transcript turn.
    Turn {
        /// Who spoke.
        role: Role,
        /// What was said.
        text: String,
        /// Whether the speech-to-text result is final.
        is_final: bool,
        /// Time since the session started.
        at: Duration,
    },
    /// An explicit consent decision.
    Consent {
        /// The scope.
        scope: String,
        /// Granted or refused.
        granted: bool,
        /// Where it came from.
        source: Option<String>,
        /// Time since the session started.
        at: Duration,
    },
}

/// The call history: transcript turns and consent events in arrival order.
#[derive(Debug, Default, Clone)]
pub struct History {
    entries: Vec<Entry>,
}

impl History {
    /// Append an entry.
    pub fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Final caller turns, newest first.
    pub fn caller_turns_rev(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().rev().filter_map(|e| match e {
            Entry::Turn {
                role: Role::Caller,
                text,
                is_final: true,
                ..
            } => Some(text.as_str()),
            _ => None,
        })
    }
}

/// Where an action of this call stands, for the duplicate and per-call-limit guards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionState {
    /// Sent (or being sent) to the provider; no answer yet.
    InFlight,
    /// Handed to a post-call workflow.
    Deferred,
    /// The provider accepted it.
    Succeeded {
        /// The provider's message id.
        message_id: Option<String>,
    },
    /// It may or may not have reached the provider (timeout, reset, 5xx) and the provider has
    /// no idempotency key: a repeat could act twice, so it stays blocked.
    Unknown,
    /// It failed or was cancelled before sending: it does not block a retry.
    Closed,
}

impl ActionState {
    /// Whether the action counts as done or pending.
    pub fn is_live(&self) -> bool {
        !matches!(self, ActionState::Closed)
    }
}

/// One action taken in this call.
#[derive(Debug, Clone)]
pub struct LedgerEntry {
    /// The function name.
    pub function: String,
    /// The action's identity: function plus resolved inputs.
    pub key: String,
    /// The `tool.call` id that started it.
    pub tool_call_id: String,
    /// Its invocation id.
    pub invocation_id: String,
    /// Where it stands.
    pub state: ActionState,
}

/// The actions of this call.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: Vec<LedgerEntry>,
}

impl Ledger {
    /// Record a new action.
    pub fn push(&mut self, entry: LedgerEntry) {
        self.entries.push(entry);
    }

    /// A live action with this key, if any.
    pub fn live_with_key(&self, key: &str) -> Option<&LedgerEntry> {
        self.entries
            .iter()
            .find(|e| e.key == key && e.state.is_live())
    }

    /// How many live actions this function has.
    pub fn live_count(&self, function: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.function == function && e.state.is_live())
            .count()
    }

    /// Update the state of the action started by this tool call.
    pub fn set_state(&mut self, tool_call_id: &str, state: ActionState) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tool_call_id == tool_call_id)
        {
            e.state = state;
        }
    }

    /// Live actions, for the session summary.
    pub fn iter(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.entries.iter()
    }
}
