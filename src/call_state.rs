//! One call's remembered state: the conversation so far and the actions already taken.
//! Owned by the session task alone, so nothing here is locked.

use std::time::Duration;

use crate::protocol::Role;

/// One entry of the call history.
///
/// Kept small (40 bytes): every live call holds its history for the whole call, so boxed
/// strings (no spare capacity) and milliseconds in a `u32` (49 days) rather than a `Duration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A transcript turn.
    Turn {
        /// Who spoke.
        role: Role,
        /// What was said.
        text: Box<str>,
        /// Whether the speech-to-text result is final.
        is_final: bool,
        /// Time since the session started, in milliseconds.
        at_ms: u32,
    },
    /// An explicit consent decision.
    Consent {
        /// The scope.
        scope: Box<str>,
        /// Granted or refused.
        granted: bool,
        /// Where it came from.
        source: Option<Box<str>>,
        /// Time since the session started, in milliseconds.
        at_ms: u32,
    },
}

/// Milliseconds since the session started, as history entries keep them.
pub fn since_start_ms(at: Duration) -> u32 {
    u32::try_from(at.as_millis()).unwrap_or(u32::MAX)
}

/// The call history: transcript turns and consent events in arrival order.
///
/// Bounded ([`HistoryLimits`]): past its turns or bytes the oldest transcript turns are dropped
/// and counted (consent events are kept: they are small and decide consent). Each entry may
/// carry which consent rules of the agent its text denies, worked out once when it arrived, so
/// the consent guard never runs a regex over the whole history again.
#[derive(Debug, Default, Clone)]
pub struct History {
    entries: Vec<Entry>,
    /// Parallel to `entries`: bit `i` set when function `i`'s consent rule denies the turn;
    /// `None` when not worked out (the guard then runs the rule).
    denies: Vec<Option<u64>>,
    bytes: usize,
    limits: HistoryLimits,
    dropped_turns: u64,
    dropped_bytes: u64,
}

/// How much call history a session keeps.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Most entries.
    pub max_entries: usize,
    /// Most bytes of turn text.
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_entries: usize::MAX,
            max_bytes: usize::MAX,
        }
    }
}

fn text_len(e: &Entry) -> usize {
    match e {
        Entry::Turn { text, .. } => text.len(),
        Entry::Consent { scope, .. } => scope.len(),
    }
}

impl History {
    /// An empty history with these limits.
    pub fn bounded(limits: HistoryLimits) -> History {
        History {
            limits,
            ..History::default()
        }
    }

    /// Append an entry.
    pub fn push(&mut self, entry: Entry) {
        self.push_with_denies(entry, None);
    }

    /// Append an entry with the consent rules its text denies (bit per function index).
    pub fn push_with_denies(&mut self, entry: Entry, denies: Option<u64>) {
        self.bytes += text_len(&entry);
        self.entries.push(entry);
        self.denies.push(denies);
        if self.entries.len() > self.limits.max_entries || self.bytes > self.limits.max_bytes {
            self.trim();
        }
    }

    /// Drop the oldest turns until a tenth below the limits (so trimming is rare), keeping
    /// consent events.
    fn trim(&mut self) {
        let want_entries = self.limits.max_entries - self.limits.max_entries / 10;
        let want_bytes = self.limits.max_bytes - self.limits.max_bytes / 10;
        let mut excess_entries = self.entries.len().saturating_sub(want_entries);
        let mut excess_bytes = self.bytes.saturating_sub(want_bytes);
        let mut keep = Vec::with_capacity(self.entries.len());
        for (e, d) in self.entries.drain(..).zip(self.denies.drain(..)) {
            let droppable = matches!(e, Entry::Turn { .. });
            if droppable && (excess_entries > 0 || excess_bytes > 0) {
                let n = text_len(&e);
                excess_entries = excess_entries.saturating_sub(1);
                excess_bytes = excess_bytes.saturating_sub(n);
                self.bytes -= n;
                self.dropped_turns += 1;
                self.dropped_bytes += n as u64;
                continue;
            }
            keep.push((e, d));
        }
        (self.entries, self.denies) = keep.into_iter().unzip();
    }

    /// Whether function `function`'s consent rule denies entry `i`, when that was worked out.
    pub fn denied(&self, i: usize, function: Option<usize>) -> Option<bool> {
        let f = function.filter(|f| *f < 64)?;
        self.denies
            .get(i)
            .copied()
            .flatten()
            .map(|bits| bits & (1 << f) != 0)
    }

    /// Turns dropped to keep within the limits, and their bytes.
    pub fn dropped(&self) -> (u64, u64) {
        (self.dropped_turns, self.dropped_bytes)
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
            } => Some(&**text),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(text: &str) -> Entry {
        Entry::Turn {
            role: Role::Caller,
            text: text.into(),
            is_final: true,
            at_ms: 0,
        }
    }

    /// Every live call keeps its history for the whole call (docs/performance.md, "Memory").
    #[test]
    fn an_entry_stays_at_40_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 40);
    }

    #[test]
    fn a_bounded_history_drops_the_oldest_turns_and_keeps_consent_events() {
        let mut h = History::bounded(HistoryLimits {
            max_entries: 100,
            max_bytes: 1 << 20,
        });
        h.push(Entry::Consent {
            scope: "email".into(),
            granted: true,
            source: None,
            at_ms: 0,
        });
        for i in 0..1000 {
            h.push_with_denies(turn(&format!("turn {i}")), Some(i % 2));
        }
        assert!(h.entries().len() <= 100, "{}", h.entries().len());
        assert!(
            matches!(h.entries()[0], Entry::Consent { .. }),
            "the event stays"
        );
        assert!(
            matches!(&h.entries()[h.entries().len() - 1], Entry::Turn { text, .. } if &**text == "turn 999")
        );
        let (turns, bytes) = h.dropped();
        assert_eq!(turns as usize + h.entries().len() - 1, 1000);
        assert!(bytes > 0);
        // The cached verdicts stay with their turns.
        let last = h.entries().len() - 1;
        assert_eq!(
            h.denied(last, Some(0)),
            Some(true),
            "turn 999: 999 % 2 == 1"
        );
        assert_eq!(h.denied(last - 1, Some(0)), Some(false));
        assert_eq!(h.denied(last, None), None);
    }

    #[test]
    fn a_bounded_history_keeps_its_bytes_under_the_limit() {
        let mut h = History::bounded(HistoryLimits {
            max_entries: 10_000,
            max_bytes: 64 << 10,
        });
        let big = "x".repeat(8 << 10);
        for _ in 0..100 {
            h.push(turn(&big));
        }
        let kept: usize = h.entries().iter().map(text_len).sum();
        assert!(kept <= 64 << 10, "{kept}");
        assert_eq!(h.dropped().0 as usize + h.entries().len(), 100);
    }
}
