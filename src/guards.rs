//! Guards (SPEC §3): in-memory checks before anything is sent.
//!
//! Every guard that can be evaluated is evaluated and its verdict recorded, so the evidence shows
//! the whole picture (a call can lack both a value and consent); the first failure in SPEC order
//! decides the result. Guards that depend on a value that did not resolve (recipient,
//! duplicate) are left out rather than guessed.

use sha2::{Digest, Sha256};

use crate::bindings::{CallContext, Invalid, Resolution, Resolved, normalize_e164, resolve};
use tokio::time::Instant;

use crate::call_state::{ActionState, Entry, History, Ledger};
use crate::codes::Code;
use crate::config::{Agent, ConsentRule, Function, Mode, RecipientPolicy, RecipientRule};
use crate::connections::{Registry, Usable};
use crate::protocol::ToolCall;

/// The guards, in the order SPEC §3 evaluates them: the first failing guard decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Guard {
    /// The name is one of the agent's functions.
    FunctionExposed,
    /// The arguments parse and every value matches its type.
    Arguments,
    /// Every required input resolves.
    RequiredValues,
    /// The connection is usable.
    Connection,
    /// The caller consented.
    Consent,
    /// The recipient obeys the function's policy.
    Recipient,
    /// The same action is not already done, running or deferred in this call.
    Duplicate,
    /// `max_per_call` is not reached.
    PerCallLimit,
    /// The connection is within its rate limit (checked when the call goes out).
    Rate,
}

impl Guard {
    /// Every guard, in the order they run.
    pub const ALL: [Guard; 9] = [
        Guard::FunctionExposed,
        Guard::Arguments,
        Guard::RequiredValues,
        Guard::Connection,
        Guard::Consent,
        Guard::Recipient,
        Guard::Duplicate,
        Guard::PerCallLimit,
        Guard::Rate,
    ];

    /// The guard's name in the evidence.
    pub fn as_str(self) -> &'static str {
        match self {
            Guard::FunctionExposed => "function_exposed",
            Guard::Arguments => "arguments",
            Guard::RequiredValues => "required_values",
            Guard::Connection => "connection",
            Guard::Consent => "consent",
            Guard::Recipient => "recipient",
            Guard::Duplicate => "duplicate",
            Guard::PerCallLimit => "per_call_limit",
            Guard::Rate => "rate",
        }
    }

    /// The `error` code of a rejection by this guard (`None` for the duplicate guard, whose
    /// outcome is the `duplicate` status).
    pub fn reject_code(self) -> Option<Code> {
        match self {
            Guard::FunctionExposed => Some(Code::UnknownFunction),
            Guard::Arguments => Some(Code::InvalidArguments),
            Guard::RequiredValues => Some(Code::MissingFields),
            Guard::Connection => Some(Code::ConnectionUnavailable),
            Guard::Consent => Some(Code::ConsentRequired),
            Guard::Recipient => Some(Code::RecipientNotAllowed),
            Guard::Duplicate => None,
            Guard::PerCallLimit => Some(Code::LimitReached),
            Guard::Rate => Some(Code::RateLimited),
        }
    }
}

/// One guard's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Which guard.
    pub guard: Guard,
    /// Whether it passed.
    pub passed: bool,
    /// Why, for the evidence.
    pub detail: String,
}

/// Why a call was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The guard that stopped it.
    pub guard: Guard,
    /// What is wrong.
    pub message: String,
    /// Missing values (`missing_fields`).
    pub missing: Vec<String>,
    /// Invalid values (`invalid_arguments`).
    pub invalid: Vec<Invalid>,
}

impl Rejection {
    /// A rejection by `guard`.
    pub fn new(guard: Guard, message: impl Into<String>) -> Self {
        Rejection {
            guard,
            message: message.into(),
            missing: Vec::new(),
            invalid: Vec::new(),
        }
    }

    /// The `error` code of the output.
    pub fn error_code(&self) -> Code {
        self.guard.reject_code().unwrap_or(Code::Duplicate)
    }

    /// The `error` code as the output and the evidence spell it.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }
}

/// What the guards decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send it.
    Proceed,
    /// Stop it; nothing is sent.
    Rejected(Rejection),
    /// The same action already ran or is running in this call.
    Duplicate {
        /// The earlier `tool.call` id.
        tool_call_id: String,
        /// The earlier invocation id.
        invocation_id: String,
        /// Where the earlier action stands.
        state: ActionState,
    },
}

/// The full guard outcome for one tool call.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Index of the function in the agent, when it exists.
    pub function: Option<usize>,
    /// Every verdict, in guard order.
    pub verdicts: Vec<Verdict>,
    /// The decision.
    pub decision: Decision,
    /// The resolved inputs (partial when values are missing).
    pub resolution: Resolution,
    /// The action's identity (function, call, resolved inputs): the duplicate key and the
    /// provider idempotency key.
    pub key: Option<String>,
}

/// What the guards read about the call.
pub struct CallView<'a> {
    /// Session values.
    pub ctx: &'a CallContext,
    /// Transcript and consent events.
    pub history: &'a History,
    /// Actions already taken in this call.
    pub ledger: &'a Ledger,
    /// Connection health.
    pub connections: &'a Registry,
}

/// Collects verdicts and the failures that may decide.
struct Chain {
    verdicts: Vec<Verdict>,
    stops: Vec<Decision>,
}

impl Chain {
    fn pass(&mut self, guard: Guard, detail: impl Into<String>) {
        self.verdicts.push(Verdict {
            guard,
            passed: true,
            detail: detail.into(),
        });
    }

    fn fail(&mut self, rejection: Rejection) {
        self.verdicts.push(Verdict {
            guard: rejection.guard,
            passed: false,
            detail: rejection.message.clone(),
        });
        self.stops.push(Decision::Rejected(rejection));
    }

    /// The first failing guard in SPEC order decides.
    fn decision(&mut self) -> Decision {
        let rank = |d: &Decision| match d {
            Decision::Rejected(r) => r.guard,
            Decision::Duplicate { .. } => Guard::Duplicate,
            Decision::Proceed => Guard::PerCallLimit,
        };
        self.stops
            .drain(..)
            .min_by_key(rank)
            .unwrap_or(Decision::Proceed)
    }
}

/// Run the guard chain for one tool call.
pub fn check(agent: &Agent, call: &ToolCall, view: &CallView<'_>) -> Checked {
    let mut chain = Chain {
        verdicts: Vec::with_capacity(8),
        stops: Vec::new(),
    };
    let Some(index) = agent.functions.iter().position(|f| f.name == call.name) else {
        chain.fail(Rejection::new(
            Guard::FunctionExposed,
            format!("agent {:?} has no function {:?}", agent.id, call.name),
        ));
        return Checked {
            function: None,
            decision: chain.decision(),
            verdicts: chain.verdicts,
            resolution: Resolution::default(),
            key: None,
        };
    };
    let function = &agent.functions[index];
    chain.pass(Guard::FunctionExposed, "");

    let resolution = match call.arguments.parse() {
        Ok(args) => Some(resolve(&function.inputs, &args, view.ctx)),
        Err(e) => {
            chain.fail(Rejection::new(Guard::Arguments, e));
            None
        }
    };
    if let Some(r) = &resolution {
        if r.invalid.is_empty() {
            chain.pass(Guard::Arguments, "");
        } else {
            let detail = r
                .invalid
                .iter()
                .map(|i| format!("{}: {}", i.field, i.reason))
                .collect::<Vec<_>>()
                .join("; ");
            let mut rej = Rejection::new(Guard::Arguments, detail);
            rej.invalid = r.invalid.clone();
            chain.fail(rej);
        }
        if r.missing.is_empty() {
            chain.pass(Guard::RequiredValues, "");
        } else {
            let mut rej = Rejection::new(Guard::RequiredValues, r.missing_detail.join("; "));
            rej.missing = r.missing.clone();
            chain.fail(rej);
        }
    }

    let conn = &function.connection;
    let deferrable = function.timing.mode != Mode::Live;
    match view.connections.health(&conn.id) {
        Some(h) => match h.usable(Instant::now()) {
            Usable::Yes => chain.pass(Guard::Connection, h.status().as_str()),
            // Down or its circuit open: a deferrable call is queued when it is planned.
            Usable::Later if deferrable => chain.pass(
                Guard::Connection,
                format!("{} is down; the call will be queued", conn.id),
            ),
            Usable::Later | Usable::No => {
                let detail = match h.reason() {
                    Some(reason) => format!("{} is {}: {reason}", conn.id, h.status().as_str()),
                    None => format!("{} is {}", conn.id, h.status().as_str()),
                };
                chain.fail(Rejection::new(Guard::Connection, detail));
            }
        },
        None => chain.fail(Rejection::new(
            Guard::Connection,
            format!("{} is not registered", conn.id),
        )),
    }

    match &function.consent {
        Some(rule) => match consent(rule, view.history, Some(index)) {
            (true, detail) => chain.pass(Guard::Consent, detail),
            (false, detail) => chain.fail(Rejection::new(Guard::Consent, detail)),
        },
        None => chain.pass(Guard::Consent, "no consent required"),
    }

    let complete = resolution
        .as_ref()
        .is_some_and(|r| r.missing.is_empty() && r.invalid.is_empty());
    match (&function.recipient, &resolution) {
        (None, _) => chain.pass(Guard::Recipient, "no recipient policy"),
        (Some(rule), Some(r)) => match r.get(&rule.input).and_then(|i| i.value.as_text()) {
            Some(value) => match recipient(rule, value, view) {
                (true, detail) => chain.pass(Guard::Recipient, detail),
                (false, detail) => chain.fail(Rejection::new(Guard::Recipient, detail)),
            },
            None if complete => chain.pass(Guard::Recipient, "no recipient given"),
            // The recipient did not resolve: nothing to judge yet.
            None => {}
        },
        (Some(_), None) => {}
    }

    // The duplicate and per-call-limit guards judge a complete action only.
    let mut key = None;
    if let (true, Some(r)) = (complete, &resolution) {
        let k = action_key(view.ctx, function, r);
        match view.ledger.live_with_key(&k) {
            Some(earlier) => {
                chain.verdicts.push(Verdict {
                    guard: Guard::Duplicate,
                    passed: false,
                    detail: format!(
                        "same action as {} ({})",
                        earlier.tool_call_id, earlier.invocation_id
                    ),
                });
                chain.stops.push(Decision::Duplicate {
                    tool_call_id: earlier.tool_call_id.clone(),
                    invocation_id: earlier.invocation_id.clone(),
                    state: earlier.state.clone(),
                });
            }
            None => chain.pass(Guard::Duplicate, ""),
        }
        key = Some(k);
        if let Some(max) = function.max_per_call {
            let n = view.ledger.live_count(&function.name);
            if n >= max as usize {
                chain.fail(Rejection::new(
                    Guard::PerCallLimit,
                    format!("{n} of {max} allowed per call already done or pending"),
                ));
            } else {
                chain.pass(Guard::PerCallLimit, format!("{n} of {max} used"));
            }
        }
    }

    Checked {
        function: Some(index),
        decision: chain.decision(),
        verdicts: chain.verdicts,
        resolution: resolution.unwrap_or_default(),
        key,
    }
}

/// The action's identity: the same function with the same resolved inputs in the same call.
fn action_key(ctx: &CallContext, function: &Function, r: &Resolution) -> String {
    let mut h = Sha256::new();
    for part in [ctx.agent_id.as_str(), ctx.call_id.as_str(), &function.name] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let mut inputs: Vec<_> = r.inputs.iter().collect();
    inputs.sort_by(|a, b| a.name.cmp(&b.name));
    for i in inputs {
        h.update(i.name.as_bytes());
        h.update([1]);
        match &i.value {
            Resolved::Text(s) => h.update(s.as_bytes()),
            Resolved::Map(pairs) => {
                for (k, v) in pairs {
                    h.update(k.as_bytes());
                    h.update([2]);
                    h.update(v.as_bytes());
                    h.update([3]);
                }
            }
        }
        h.update([0]);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(35);
    out.push_str("tg_");
    out.push_str(&hex::encode(&digest[..16]));
    out
}

/// Message channels a scope or a turn can name, as bits.
const EMAIL: u8 = 1;
const WHATSAPP: u8 = 2;
const SMS: u8 = 4;

static CHANNEL_WORDS: std::sync::LazyLock<[(u8, regex::Regex); 3]> =
    std::sync::LazyLock::new(|| {
        let re = |p: &str| regex::Regex::new(p).expect("static regex");
        [
            (EMAIL, re(r"(?i)\be-?mail")),
            (WHATSAPP, re(r"(?i)\bwhats\s?app")),
            (SMS, re(r"(?i)\b(sms|text me|texts?\b)")),
        ]
    });

/// The channels a text names.
fn channels(text: &str) -> u8 {
    CHANNEL_WORDS
        .iter()
        .filter(|(_, re)| re.is_match(text))
        .fold(0, |acc, (bit, _)| acc | bit)
}

/// A yes in `turn` (answering `asked`, the agent's turn before it) is about this scope's
/// channel: a caller who asks for an email has not agreed to a WhatsApp message. A turn that
/// names no channel answers the agent's question; when neither names one, or the scope is not
/// a channel, the yes counts.
fn about_scope(scope_channel: u8, turn: &str, asked: Option<&str>) -> bool {
    if scope_channel == 0 {
        return true;
    }
    let named = match channels(turn) {
        0 => asked.map_or(0, channels),
        n => n,
    };
    named == 0 || named & scope_channel != 0
}

/// The most recent clear yes or no decides: a `consent` event for the scope (at any time), or a
/// final caller turn that matches `deny` (a no) or, among the last `within_turns` caller turns,
/// `allow` (a yes) about this scope's channel. A no outside the window still outweighs an older
/// grant; a yes outside it no longer counts.
fn consent(rule: &ConsentRule, history: &History, function: Option<usize>) -> (bool, String) {
    let entries = history.entries();
    let scope_channel = channels(&rule.scope);
    // The agent's turn before entry `i`, if any.
    let asked_before = |i: usize| {
        entries[..i].iter().rev().find_map(|e| match e {
            Entry::Turn {
                role: crate::protocol::Role::Agent,
                text,
                ..
            } => Some(&**text),
            _ => None,
        })
    };
    let last_event = entries
        .iter()
        .rposition(|e| matches!(e, Entry::Consent { scope, .. } if **scope == *rule.scope));
    let mut caller_turns = 0usize;
    for (i, entry) in entries.iter().enumerate().rev() {
        let within = caller_turns < rule.within_turns;
        if !within && last_event.is_none_or(|e| i < e) {
            break;
        }
        match entry {
            Entry::Consent {
                scope,
                granted,
                source,
                ..
            } if **scope == *rule.scope => {
                let via = source.as_deref().unwrap_or("event");
                return if *granted {
                    (true, format!("consent event granted ({via})"))
                } else {
                    (false, format!("consent revoked by a consent event ({via})"))
                };
            }
            Entry::Turn {
                role: crate::protocol::Role::Caller,
                text,
                is_final: true,
                ..
            } => {
                caller_turns += 1;
                let denied = history
                    .denied(i, function)
                    .unwrap_or_else(|| rule.deny.is_match(text));
                if denied {
                    return (
                        false,
                        format!("the caller declined {caller_turns} turn(s) ago"),
                    );
                }
                if within
                    && rule.allow.is_match(text)
                    && about_scope(scope_channel, text, asked_before(i))
                {
                    return (
                        true,
                        format!("the caller agreed {caller_turns} turn(s) ago"),
                    );
                }
            }
            _ => {}
        }
    }
    (
        false,
        format!(
            "no consent for {:?}: no consent event and no clear yes in the last {} caller turns",
            rule.scope, rule.within_turns
        ),
    )
}

fn same_recipient(a: &str, b: &str) -> bool {
    match (normalize_e164(a), normalize_e164(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a.trim().eq_ignore_ascii_case(b.trim()),
    }
}

fn recipient(rule: &RecipientRule, value: &str, view: &CallView<'_>) -> (bool, String) {
    let is_caller = view
        .ctx
        .caller
        .number
        .as_deref()
        .is_some_and(|n| same_recipient(n, value));
    let is_known = is_caller
        || view
            .ctx
            .variables
            .values()
            .any(|v| same_recipient(&v.as_text(), value));
    let (passed, why) = match rule.policy {
        RecipientPolicy::Any => (true, "any recipient allowed"),
        RecipientPolicy::Caller => (is_caller, "must be the caller's own number"),
        RecipientPolicy::Known => (
            is_known,
            "must be the caller's number or a value of the call's variables",
        ),
        RecipientPolicy::Spoken => (
            is_known || spoken(value, view.history),
            "must be the caller's number, a call variable, or something the caller said",
        ),
    };
    let detail = if passed {
        format!("{} allowed ({})", rule.input, policy_name(rule.policy))
    } else {
        format!("{} not allowed: {why}", rule.input)
    };
    (passed, detail)
}

fn policy_name(p: RecipientPolicy) -> &'static str {
    match p {
        RecipientPolicy::Caller => "caller",
        RecipientPolicy::Known => "known",
        RecipientPolicy::Spoken => "spoken",
        RecipientPolicy::Any => "any",
    }
}

/// Whether a caller turn contains the recipient as a whole: an email written or spelled out
/// ("bo at example dot com"), or a phone number spoken as one run of digits (spaces, dashes,
/// dots and parentheses allowed between them), in international or national form
/// ("415 555 0100" and "(415) 555-0100" match +14155550100; a trunk `0` is ignored).
fn spoken(value: &str, history: &History) -> bool {
    let value = value.trim();
    if value.contains('@') {
        let want = value.to_ascii_lowercase();
        return history.caller_turns_rev().any(|turn| {
            let t = format!(" {} ", turn.to_ascii_lowercase())
                .replace(" at ", "@")
                .replace(" dot ", ".");
            t.split(|c: char| {
                c.is_whitespace()
                    || matches!(
                        c,
                        ',' | ';' | '!' | '?' | '"' | '\'' | '(' | ')' | '<' | '>'
                    )
            })
            .map(|tok| tok.trim_end_matches('.'))
            .any(|tok| tok == want)
        });
    }
    let number: String = value.chars().filter(char::is_ascii_digit).collect();
    history
        .caller_turns_rev()
        .any(|turn| digit_runs(turn).any(|run| same_number(&number, &run)))
}

/// Runs of digits in text, joined across the separators people use inside one number.
fn digit_runs(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut runs = Vec::new();
    let mut cur = String::new();
    let mut pending_sep = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            cur.push(c);
            pending_sep = false;
        } else if !cur.is_empty() && matches!(c, ' ' | '-' | '.' | '(' | ')') && !pending_sep {
            pending_sep = true;
        } else if c == '(' && cur.is_empty() {
        } else if !cur.is_empty() {
            runs.push(std::mem::take(&mut cur));
            pending_sep = false;
        }
    }
    if !cur.is_empty() {
        runs.push(cur);
    }
    runs.into_iter()
}

/// The same phone number in international (`14155550100`) or national (`4155550100`,
/// `07911123456`) digits; at least seven digits must agree.
fn same_number(international: &str, spoken: &str) -> bool {
    let spoken = spoken.trim_start_matches('0');
    spoken.len() >= 7 && (international == spoken || international.ends_with(spoken))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_ALLOW, DEFAULT_DENY};
    use crate::protocol::Role;
    use regex::RegexSetBuilder;

    fn rule(within: usize) -> ConsentRule {
        let set = |p: &[&str]| {
            RegexSetBuilder::new(p)
                .case_insensitive(true)
                .build()
                .unwrap()
        };
        ConsentRule {
            scope: "whatsapp".into(),
            within_turns: within,
            allow: set(DEFAULT_ALLOW),
            deny: set(DEFAULT_DENY),
        }
    }

    fn turn(h: &mut History, role: Role, text: &str) {
        h.push(Entry::Turn {
            role,
            text: text.into(),
            is_final: true,
            at_ms: 0,
        });
    }

    fn event(h: &mut History, granted: bool) {
        h.push(Entry::Consent {
            scope: "whatsapp".into(),
            granted,
            source: Some("dtmf".into()),
            at_ms: 0,
        });
    }

    #[test]
    fn a_yes_to_another_channel_is_not_consent_for_this_one() {
        let mut h = History::default();
        turn(
            &mut h,
            Role::Caller,
            "Where is my order? Please email me the details.",
        );
        assert!(
            !consent(&rule(3), &h, None).0,
            "an email request is not a WhatsApp yes"
        );
        turn(&mut h, Role::Agent, "Shall I also send it on WhatsApp?");
        turn(&mut h, Role::Caller, "Yes please.");
        assert!(
            consent(&rule(3), &h, None).0,
            "a yes to the WhatsApp question"
        );
        let mut h = History::default();
        turn(&mut h, Role::Agent, "Would you like the summary by email?");
        turn(&mut h, Role::Caller, "Sure.");
        assert!(
            !consent(&rule(3), &h, None).0,
            "a yes to the email question"
        );
        turn(&mut h, Role::Caller, "And send it on WhatsApp too, please.");
        assert!(consent(&rule(3), &h, None).0);
        // A scope that is no channel takes any clear yes.
        let mut callback = rule(3);
        callback.scope = "callback".into();
        let mut h = History::default();
        turn(&mut h, Role::Caller, "Yes, email me and call me back.");
        assert!(consent(&callback, &h, None).0);
    }

    #[test]
    fn consent_follows_the_most_recent_clear_answer() {
        let mut h = History::default();
        assert!(!consent(&rule(3), &h, None).0);
        turn(&mut h, Role::Agent, "Shall I send it on WhatsApp?");
        turn(&mut h, Role::Caller, "Yes please, send it on WhatsApp.");
        assert!(consent(&rule(3), &h, None).0);
        turn(&mut h, Role::Caller, "Actually no, don't.");
        assert!(!consent(&rule(3), &h, None).0);
        turn(&mut h, Role::Caller, "Okay, go ahead then.");
        assert!(consent(&rule(3), &h, None).0);
    }

    #[test]
    fn consent_reads_the_verdicts_worked_out_when_turns_arrived() {
        let mut h = History::default();
        event(&mut h, true);
        let said = |h: &mut History, text: &str, denied: bool| {
            h.push_with_denies(
                Entry::Turn {
                    role: Role::Caller,
                    text: text.into(),
                    is_final: true,
                    at_ms: 0,
                },
                Some(u64::from(denied) << 2),
            )
        };
        said(&mut h, "Fine.", true);
        for _ in 0..10 {
            said(&mut h, "My order is A-1042.", false);
        }
        // Function 2's rule denied "Fine." when it arrived: no regex runs over it again.
        assert!(!consent(&rule(3), &h, Some(2)).0);
        // Another function's verdict was not worked out as a denial.
        assert!(consent(&rule(3), &h, Some(1)).0);
        // Without a cached verdict the rule itself decides ("Fine." is no denial).
        assert!(consent(&rule(3), &h, Some(70)).0);
    }

    #[test]
    fn consent_window_counts_caller_turns_only() {
        let mut h = History::default();
        turn(&mut h, Role::Caller, "Sure.");
        turn(&mut h, Role::Caller, "My order is A-1042.");
        turn(&mut h, Role::Agent, "Thanks, one second.");
        turn(&mut h, Role::Caller, "It was last Tuesday.");
        assert!(
            consent(&rule(3), &h, None).0,
            "yes three caller turns ago counts"
        );
        turn(&mut h, Role::Caller, "What else do you need?");
        assert!(
            !consent(&rule(3), &h, None).0,
            "four caller turns ago does not"
        );
    }

    #[test]
    fn consent_events_decide_and_revoke() {
        let mut h = History::default();
        event(&mut h, true);
        for _ in 0..5 {
            turn(&mut h, Role::Caller, "My order is A-1042.");
        }
        assert!(
            consent(&rule(3), &h, None).0,
            "an event is not bound to the window"
        );
        event(&mut h, false);
        assert!(!consent(&rule(3), &h, None).0);
        turn(&mut h, Role::Caller, "Yes, send it.");
        assert!(consent(&rule(3), &h, None).0);
    }

    #[test]
    fn partial_turns_never_consent() {
        let mut h = History::default();
        h.push(Entry::Turn {
            role: Role::Caller,
            text: "yes".into(),
            is_final: false,
            at_ms: 0,
        });
        assert!(!consent(&rule(3), &h, None).0);
    }

    #[test]
    fn spoken_matches_spelled_emails_and_national_numbers() {
        let mut h = History::default();
        turn(
            &mut h,
            Role::Caller,
            "Send it to Bo at Example dot org please",
        );
        turn(&mut h, Role::Caller, "my cell is 415 555 0199");
        assert!(spoken("bo@example.org", &h));
        assert!(!spoken("al@example.org", &h));
        assert!(spoken("+14155550199", &h));
        assert!(!spoken("+14155550100", &h));
    }

    #[test]
    fn spoken_accepts_formatted_and_national_numbers() {
        let mut h = History::default();
        turn(
            &mut h,
            Role::Caller,
            "my cell is (415) 555-0199, or my office 020 7946 0958.",
        );
        assert!(spoken("+14155550199", &h));
        assert!(spoken("+442079460958", &h));
        assert!(!spoken("+14155550100", &h));
    }

    #[test]
    fn spoken_needs_the_whole_address_or_number() {
        let mut h = History::default();
        turn(&mut h, Role::Caller, "it's jimbo at example dot org");
        turn(
            &mut h,
            Role::Caller,
            "order 4155 and then 550199 was the code",
        );
        assert!(!spoken("bo@example.org", &h), "a suffix of another address");
        assert!(spoken("jimbo@example.org", &h));
        assert!(!spoken("+14155550199", &h), "digits of two numbers joined");
    }

    #[test]
    fn a_later_no_outside_the_window_outweighs_an_older_grant() {
        let mut h = History::default();
        event(&mut h, true);
        turn(
            &mut h,
            Role::Caller,
            "Actually no, don't send me anything on WhatsApp.",
        );
        for _ in 0..3 {
            turn(&mut h, Role::Caller, "My order is A-1042.");
        }
        let (ok, detail) = consent(&rule(3), &h, None);
        assert!(!ok, "{detail}");
    }

    #[test]
    fn default_patterns_need_a_clear_yes_or_a_direct_request() {
        let r = rule(3);
        for yes in [
            "Yes please, send it on WhatsApp.",
            "Sure.",
            "okay",
            "Ok!",
            "Go ahead.",
            "Can you send me the summary?",
            "Can you whatsapp me the summary?",
            "Please send it.",
        ] {
            let mut h = History::default();
            turn(&mut h, Role::Caller, yes);
            assert!(consent(&r, &h, None).0, "{yes:?} should consent");
        }
        for not_yes in [
            "Please, what is the status of my refund?",
            "OK so when does it ship?",
            "That's correct, it was Tuesday.",
            "No thanks.",
            "Yes, but don't send anything.",
            "I don't know.",
        ] {
            let mut h = History::default();
            turn(&mut h, Role::Caller, not_yes);
            assert!(!consent(&r, &h, None).0, "{not_yes:?} should not consent");
        }
    }
}
