//! Guards (SPEC §3): in-memory checks before anything is sent.
//!
//! Every guard that can be evaluated is evaluated and its verdict recorded, so the evidence shows
//! the whole picture (a call can lack both a value and consent); the first failure in SPEC order
//! decides the result. Guards that depend on a value that did not resolve (recipient,
//! duplicate) are left out rather than guessed.

use sha2::{Digest, Sha256};

use crate::bindings::{CallContext, Invalid, Resolution, Resolved, normalize_e164, resolve};
use crate::config::{Agent, ConsentRule, Function, RecipientPolicy, RecipientRule};
use crate::connections::Registry;
use crate::protocol::ToolCall;
use crate::session::state::{ActionState, Entry, History, Ledger};

/// One guard's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Guard name: `function_exposed`, `arguments`, `required_values`, `connection`,
    /// `consent`, `recipient`, `duplicate`, `per_call_limit`.
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// Why, for the evidence.
    pub detail: String,
}

/// Why a call was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The `error` code of the output.
    pub code: &'static str,
    /// What is wrong, for the model.
    pub message: String,
    /// Missing values (`missing_fields`).
    pub missing: Vec<String>,
    /// Invalid values (`invalid_arguments`).
    pub invalid: Vec<Invalid>,
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

fn verdict(name: &'static str, passed: bool, detail: impl Into<String>) -> Verdict {
    Verdict {
        name,
        passed,
        detail: detail.into(),
    }
}

/// Run the guard chain for one tool call.
pub fn check(agent: &Agent, call: &ToolCall, view: &CallView<'_>) -> Checked {
    let mut verdicts = Vec::with_capacity(8);
    let Some(index) = agent.functions.iter().position(|f| f.name == call.name) else {
        verdicts.push(verdict(
            "function_exposed",
            false,
            format!("agent {:?} has no function {:?}", agent.id, call.name),
        ));
        return Checked {
            function: None,
            verdicts,
            decision: Decision::Rejected(Rejection {
                code: "unknown_function",
                message: format!("there is no function named {:?}", call.name),
                missing: Vec::new(),
                invalid: Vec::new(),
            }),
            resolution: Resolution::default(),
            key: None,
        };
    };
    let function = &agent.functions[index];
    verdicts.push(verdict("function_exposed", true, ""));
    let mut rejections: Vec<Rejection> = Vec::new();

    // arguments
    let resolution = match call.arguments.parse() {
        Ok(args) => {
            let r = resolve(&function.inputs, &args, view.ctx);
            if r.invalid.is_empty() {
                verdicts.push(verdict("arguments", true, ""));
            } else {
                let detail = r
                    .invalid
                    .iter()
                    .map(|i| format!("{}: {}", i.field, i.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                verdicts.push(verdict("arguments", false, detail.clone()));
                rejections.push(Rejection {
                    code: "invalid_arguments",
                    message: detail,
                    missing: Vec::new(),
                    invalid: r.invalid.clone(),
                });
            }
            Some(r)
        }
        Err(e) => {
            verdicts.push(verdict("arguments", false, e.clone()));
            rejections.push(Rejection {
                code: "invalid_arguments",
                message: e,
                missing: Vec::new(),
                invalid: Vec::new(),
            });
            None
        }
    };

    // required values
    if let Some(r) = &resolution {
        if r.missing.is_empty() {
            verdicts.push(verdict("required_values", true, ""));
        } else {
            let detail = r.missing_detail.join("; ");
            verdicts.push(verdict("required_values", false, detail.clone()));
            rejections.push(Rejection {
                code: "missing_fields",
                message: format!("missing {}", r.missing.join(", ")),
                missing: r.missing.clone(),
                invalid: Vec::new(),
            });
        }
    }

    // connection
    let conn = &function.connection;
    match view.connections.health(&conn.id) {
        Some(h) if h.status().usable() => {
            verdicts.push(verdict("connection", true, h.status().as_str()));
        }
        other => {
            let detail = match other {
                Some(h) => match h.reason() {
                    Some(reason) => format!("{} is {}: {reason}", conn.id, h.status().as_str()),
                    None => format!("{} is {}", conn.id, h.status().as_str()),
                },
                None => format!("{} is not registered", conn.id),
            };
            verdicts.push(verdict("connection", false, detail.clone()));
            rejections.push(Rejection {
                code: "connection_unavailable",
                message: detail,
                missing: Vec::new(),
                invalid: Vec::new(),
            });
        }
    }

    // consent
    if let Some(rule) = &function.consent {
        let (passed, detail) = consent(rule, view.history);
        verdicts.push(verdict("consent", passed, detail.clone()));
        if !passed {
            rejections.push(Rejection {
                code: "consent_required",
                message: detail,
                missing: Vec::new(),
                invalid: Vec::new(),
            });
        }
    } else {
        verdicts.push(verdict("consent", true, "no consent required"));
    }

    let complete = resolution
        .as_ref()
        .is_some_and(|r| r.missing.is_empty() && r.invalid.is_empty());

    // recipient
    if let (Some(rule), Some(r)) = (&function.recipient, &resolution) {
        match r.get(&rule.input).and_then(|i| i.value.as_text()) {
            Some(value) => {
                let (passed, detail) = recipient(rule, value, view);
                verdicts.push(verdict("recipient", passed, detail.clone()));
                if !passed {
                    rejections.push(Rejection {
                        code: "recipient_not_allowed",
                        message: detail,
                        missing: Vec::new(),
                        invalid: Vec::new(),
                    });
                }
            }
            None if complete => verdicts.push(verdict("recipient", true, "no recipient given")),
            None => {}
        }
    } else if function.recipient.is_none() {
        verdicts.push(verdict("recipient", true, "no recipient policy"));
    }

    // duplicate and per-call limit: only for a complete action
    let mut key = None;
    let mut duplicate = None;
    if let (true, Some(r)) = (complete, &resolution) {
        let k = action_key(view.ctx, function, r);
        match view.ledger.live_with_key(&k) {
            Some(earlier) => {
                verdicts.push(verdict(
                    "duplicate",
                    false,
                    format!(
                        "same action as {} ({})",
                        earlier.tool_call_id, earlier.invocation_id
                    ),
                ));
                duplicate = Some(Decision::Duplicate {
                    tool_call_id: earlier.tool_call_id.clone(),
                    invocation_id: earlier.invocation_id.clone(),
                    state: earlier.state.clone(),
                });
            }
            None => verdicts.push(verdict("duplicate", true, "")),
        }
        key = Some(k);
        if let Some(max) = function.max_per_call {
            let n = view.ledger.live_count(&function.name);
            if n >= max as usize {
                let detail = format!("{n} of {max} allowed per call already done or pending");
                verdicts.push(verdict("per_call_limit", false, detail.clone()));
                rejections.push(Rejection {
                    code: "limit_reached",
                    message: detail,
                    missing: Vec::new(),
                    invalid: Vec::new(),
                });
            } else {
                verdicts.push(verdict(
                    "per_call_limit",
                    true,
                    format!("{n} of {max} used"),
                ));
            }
        }
    }

    // The first failure in SPEC order decides: every rejection but the per-call limit comes
    // before the duplicate guard, the limit after it.
    let decision = match rejections.iter().find(|r| r.code != "limit_reached") {
        Some(first) => Decision::Rejected(first.clone()),
        None => match (duplicate, rejections.into_iter().next()) {
            (Some(dup), _) => dup,
            (None, Some(limit)) => Decision::Rejected(limit),
            (None, None) => Decision::Proceed,
        },
    };
    Checked {
        function: Some(index),
        verdicts,
        decision,
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
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The most recent clear yes or no decides: a `consent` event for the scope (any time), or a
/// final caller turn among the last `within_turns` that matches `deny` (no) or `allow` (yes).
fn consent(rule: &ConsentRule, history: &History) -> (bool, String) {
    let mut caller_turns = 0usize;
    for entry in history.entries().iter().rev() {
        match entry {
            Entry::Consent {
                scope,
                granted,
                source,
                ..
            } if *scope == rule.scope => {
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
            } if caller_turns < rule.within_turns => {
                caller_turns += 1;
                if rule.deny.is_match(text) {
                    return (
                        false,
                        format!("the caller declined {caller_turns} turn(s) ago"),
                    );
                }
                if rule.allow.is_match(text) {
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

/// Whether a caller turn contains the recipient: an email written or spelled out ("ana at
/// example dot com"), or a phone number's last nine digits (seven at least) among the turn's
/// digits, so "415 555 0100" matches +14155550100.
fn spoken(value: &str, history: &History) -> bool {
    let value = value.trim();
    if value.contains('@') {
        let want = value.to_ascii_lowercase();
        return history.caller_turns_rev().any(|turn| {
            let t = turn
                .to_ascii_lowercase()
                .replace(" at ", "@")
                .replace(" dot ", ".");
            let compact: String = t.chars().filter(|c| !c.is_whitespace()).collect();
            compact.contains(&want)
        });
    }
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 7 {
        return false;
    }
    let tail = &digits[digits.len().saturating_sub(9)..];
    history.caller_turns_rev().any(|turn| {
        let turn_digits: String = turn.chars().filter(char::is_ascii_digit).collect();
        turn_digits.contains(tail)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_ALLOW, DEFAULT_DENY};
    use crate::protocol::Role;
    use regex::RegexSetBuilder;
    use std::time::Duration;

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
            at: Duration::ZERO,
        });
    }

    fn event(h: &mut History, granted: bool) {
        h.push(Entry::Consent {
            scope: "whatsapp".into(),
            granted,
            source: Some("dtmf".into()),
            at: Duration::ZERO,
        });
    }

    #[test]
    fn consent_follows_the_most_recent_clear_answer() {
        let mut h = History::default();
        assert!(!consent(&rule(3), &h).0);
        turn(&mut h, Role::Agent, "Shall I send it on WhatsApp?");
        turn(&mut h, Role::Caller, "Yes please, send it on WhatsApp.");
        assert!(consent(&rule(3), &h).0);
        turn(&mut h, Role::Caller, "Actually no, don't.");
        assert!(!consent(&rule(3), &h).0);
        turn(&mut h, Role::Caller, "Okay, go ahead then.");
        assert!(consent(&rule(3), &h).0);
    }

    #[test]
    fn consent_window_counts_caller_turns_only() {
        let mut h = History::default();
        turn(&mut h, Role::Caller, "Sure.");
        turn(&mut h, Role::Caller, "My order is A-1042.");
        turn(&mut h, Role::Agent, "Thanks, one second.");
        turn(&mut h, Role::Caller, "It was last Tuesday.");
        assert!(consent(&rule(3), &h).0, "yes three caller turns ago counts");
        turn(&mut h, Role::Caller, "What else do you need?");
        assert!(!consent(&rule(3), &h).0, "four caller turns ago does not");
    }

    #[test]
    fn consent_events_decide_and_revoke() {
        let mut h = History::default();
        event(&mut h, true);
        for _ in 0..5 {
            turn(&mut h, Role::Caller, "My order is A-1042.");
        }
        assert!(
            consent(&rule(3), &h).0,
            "an event is not bound to the window"
        );
        event(&mut h, false);
        assert!(!consent(&rule(3), &h).0);
        turn(&mut h, Role::Caller, "Yes, send it.");
        assert!(consent(&rule(3), &h).0);
    }

    #[test]
    fn partial_turns_never_consent() {
        let mut h = History::default();
        h.push(Entry::Turn {
            role: Role::Caller,
            text: "yes".into(),
            is_final: false,
            at: Duration::ZERO,
        });
        assert!(!consent(&rule(3), &h).0);
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
}
