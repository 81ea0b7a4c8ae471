//! Diagnostics (SPEC §9): from recent evidence, per function, what keeps going wrong and the fix
//! the product docs recommend. Served by `GET /v1/diagnostics` and printed by `toolgate doctor`.
//!
//! | finding | from | fix |
//! |---|---|---|
//! | `missing_fields` | rejections for missing values | bind a dynamic variable, or ask the caller first |
//! | `consent` | `consent_required` rejections | tighten the description; require explicit intent |
//! | `not_called` | calls whose caller mentioned the function's subject but that never called it | make the trigger clearer |
//! | `auth_failed` | provider credential refusals (live and in the worker) | validate the connection again |
//! | `slow` | provider p90 above `defer_after_ms`, or many deferrals | move it to a workflow |
//!
//! Each finding says how many calls it rests on and names some of them; below the minimum
//! sample it is not reported at all.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clock::Millis;
use crate::codes::Code;
use crate::config::{Agent, Function, Mode};
use crate::evidence::store::{AgentEvidence, EvidenceStore};
use crate::evidence::{Invocation, SourceType};
use crate::storage::StoreError;

/// Fewest calls a finding rests on, by default.
pub const MIN_SAMPLE: usize = 5;

/// Most recent calls searched for mentions.
const MAX_CALLS: usize = 5_000;

/// How many examples a finding names.
const EXAMPLES: usize = 5;

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// `missing_fields`, `consent`, `not_called`, `auth_failed`, `slow`.
    pub kind: &'static str,
    /// How many calls (or requests) show it.
    pub count: usize,
    /// Out of how many.
    pub of: usize,
    /// What was seen.
    pub message: String,
    /// What to do.
    pub fix: String,
    /// Invocation ids (or call ids, for `not_called`) behind it.
    pub evidence: Vec<String>,
}

/// One function's findings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionReport {
    /// Function name.
    pub function: String,
    /// Tool calls of it in the window.
    pub invocations: usize,
    /// What keeps going wrong.
    pub findings: Vec<Finding>,
}

/// One agent's diagnostics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Agent.
    pub agent: String,
    /// From when, ms since the epoch.
    pub since: Millis,
    /// Calls of the agent in the window (at most the most recent 5,000 are read).
    pub calls: usize,
    /// Fewest calls a finding rests on.
    pub min_sample: usize,
    /// Per function, in the config's order.
    pub functions: Vec<FunctionReport>,
}

/// Diagnose `agent` from the evidence since `since`; `org` limits what is read (an org token).
pub async fn diagnose(
    store: &EvidenceStore,
    agent: &Agent,
    org: Option<String>,
    since: Millis,
    min_sample: usize,
) -> Result<Report, StoreError> {
    let evidence = store
        .agent_evidence(org, &agent.id, since, MAX_CALLS)
        .await?;
    Ok(analyse(agent, &evidence, since, min_sample.max(1)))
}

/// The words a caller uses for what a function does: its channel for a message, else the
/// distinctive words of its name (`request_callback`: "callback").
pub fn subject_words(function: &Function) -> Vec<String> {
    use crate::catalog::Provider;
    match function.action.provider() {
        Provider::Resend => vec!["email".into(), "e-mail".into()],
        Provider::Wati => vec!["whatsapp".into(), "whats app".into()],
        Provider::Webhook => {
            const GENERIC: &[&str] = &[
                "send", "request", "notify", "post", "create", "update", "make", "call", "now",
                "later", "after", "the", "for", "log", "record", "note",
            ];
            function
                .name
                .split(['_', '-'])
                .map(str::to_ascii_lowercase)
                .filter(|w| w.len() >= 4 && !GENERIC.contains(&w.as_str()))
                .collect()
        }
    }
}

fn p90(mut v: Vec<u64>) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[(v.len() * 9).div_ceil(10) - 1])
}

fn examples<'a>(records: impl Iterator<Item = &'a Invocation>) -> Vec<String> {
    records
        .take(EXAMPLES)
        .map(|r| r.invocation_id.clone())
        .collect()
}

fn function_report(
    function: &Function,
    records: &[&Invocation],
    evidence: &AgentEvidence,
    min_sample: usize,
) -> FunctionReport {
    let live: Vec<&Invocation> = records
        .iter()
        .copied()
        .filter(|r| r.source_type == SourceType::Agent)
        .collect();
    let total = live.len();
    let mut findings = Vec::new();

    let missing: Vec<&Invocation> = live
        .iter()
        .copied()
        .filter(|r| r.error_code.as_deref() == Some(Code::MissingFields.as_str()))
        .collect();
    if missing.len() >= min_sample {
        let mut fields: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &missing {
            for f in &r.missing_fields {
                *fields.entry(f.as_str()).or_default() += 1;
            }
        }
        let mut by_count: Vec<(&str, usize)> = fields.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let named = by_count
            .iter()
            .map(|(f, n)| format!("{f} ({n})"))
            .collect::<Vec<_>>()
            .join(", ");
        let first = by_count.first().map_or("the value", |(f, _)| f);
        findings.push(Finding {
            kind: "missing_fields",
            count: missing.len(),
            of: total,
            message: format!(
                "{} of {total} calls were rejected for missing values: {named}",
                missing.len()
            ),
            fix: format!(
                "Bind {first} to a dynamic variable the media server sends (e.g. `{first} = {{ arg = \"{first}\", from = \"var.{first}\" }}`), or have the agent ask the caller for it before calling {}.",
                function.name
            ),
            evidence: examples(missing.iter().copied()),
        });
    }

    let consent: Vec<&Invocation> = live
        .iter()
        .copied()
        .filter(|r| r.error_code.as_deref() == Some(Code::ConsentRequired.as_str()))
        .collect();
    if consent.len() >= min_sample {
        findings.push(Finding {
            kind: "consent",
            count: consent.len(),
            of: total,
            message: format!(
                "{} of {total} calls were made without the caller's consent and rejected",
                consent.len()
            ),
            fix: format!(
                "Tighten the description of {} so the model calls it only after the caller clearly asked for it or agreed (\"Call only after the caller asked for it or agreed to it\"), and have the agent ask first.",
                function.name
            ),
            evidence: examples(consent.iter().copied()),
        });
    }

    let words = subject_words(function);
    if !words.is_empty() {
        let mentioned: Vec<_> = evidence
            .calls
            .iter()
            .filter(|c| {
                let said = c.caller_text.to_lowercase();
                words.iter().any(|w| said.contains(w.as_str()))
            })
            .collect();
        let missed: Vec<_> = mentioned
            .iter()
            .filter(|c| !c.functions.contains(&function.name))
            .collect();
        if missed.len() >= min_sample {
            findings.push(Finding {
                kind: "not_called",
                count: missed.len(),
                of: mentioned.len(),
                message: format!(
                    "the caller mentioned it ({}) in {} calls, and {} of them never called {}",
                    words.join(", "),
                    mentioned.len(),
                    missed.len(),
                    function.name
                ),
                fix: format!(
                    "Make the trigger clearer in the description of {}: say when to call it, in the words callers use.",
                    function.name
                ),
                evidence: missed
                    .iter()
                    .take(EXAMPLES)
                    .map(|c| c.call_id.clone())
                    .collect(),
            });
        }
    }

    // A refusal during a send, and the calls that then failed fast because of it.
    let auth: Vec<&Invocation> = records
        .iter()
        .copied()
        .filter(|r| match r.error_code.as_deref().and_then(Code::parse) {
            Some(Code::ProviderAuthFailed) => true,
            Some(Code::ConnectionUnavailable) => r
                .error_message
                .as_deref()
                .is_some_and(|m| m.contains("credentials")),
            _ => false,
        })
        .collect();
    if auth.len() >= min_sample {
        let conn = &function.connection.id;
        findings.push(Finding {
            kind: "auth_failed",
            count: auth.len(),
            of: records.len(),
                        message: format!(
                "{} calls failed because the provider refused the credentials of {conn}",
                auth.len()
            ),
            fix: format!(
                "Fix the credentials of {conn}, then validate the connection again: `toolgate validate --connection {conn}` or POST /v1/connections/{conn}/validate."
            ),
            evidence: examples(auth.iter().copied()),
        });
    }

    let latencies: Vec<u64> = records.iter().filter_map(|r| r.latency_ms).collect();
    let budget = function.timing.defer_after.as_millis() as u64;
    let deferred: Vec<&Invocation> = live
        .iter()
        .copied()
        .filter(|r| {
            matches!(
                r.deferral_reason.as_deref(),
                Some("budget" | "predicted_slow")
            )
        })
        .collect();
    let slow_p90 = (latencies.len() >= min_sample)
        .then(|| p90(latencies.clone()))
        .flatten()
        .filter(|p| *p > budget);
    let often_deferred = deferred.len() >= min_sample && deferred.len() * 5 >= total;
    if function.timing.mode != Mode::Workflow && (slow_p90.is_some() || often_deferred) {
        let mut seen = Vec::new();
        if let Some(p) = slow_p90 {
            seen.push(format!(
                "the provider's p90 latency is {p} ms over {} requests, above defer_after_ms ({budget} ms)",
                latencies.len()
            ));
        }
        if often_deferred {
            seen.push(format!(
                "{} of {total} calls were deferred for being slow",
                deferred.len()
            ));
        }
        findings.push(Finding {
            kind: "slow",
            count: if often_deferred {
                deferred.len()
            } else {
                latencies.len()
            },
            of: if often_deferred { total } else { latencies.len() },
            message: seen.join("; "),
            fix: format!(
                "Move {} to a post-call workflow (`timing = {{ mode = \"workflow\" }}`): the caller will not wait for it; or raise defer_after_ms if the caller can.",
                function.name
            ),
            evidence: examples(
                deferred
                    .iter()
                    .copied()
                    .chain(records.iter().copied().filter(|r| {
                        r.latency_ms.is_some_and(|l| l > budget)
                    })),
            ),
        });
    }

    FunctionReport {
        function: function.name.clone(),
        invocations: total,
        findings,
    }
}

/// The findings for `agent` in `evidence`.
pub fn analyse(
    agent: &Agent,
    evidence: &AgentEvidence,
    since: Millis,
    min_sample: usize,
) -> Report {
    let functions = agent
        .functions
        .iter()
        .map(|f| {
            let records: Vec<&Invocation> = evidence
                .invocations
                .iter()
                .filter(|r| r.function == f.name)
                .collect();
            function_report(f, &records, evidence, min_sample)
        })
        .collect();
    Report {
        agent: agent.id.clone(),
        since,
        calls: evidence.calls.len(),
        min_sample,
        functions,
    }
}

/// A report as people read it.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "agent {}: {} call(s) since {} (findings need at least {} calls)\n",
        r.agent,
        r.calls,
        crate::evidence::page::wall_clock(r.since),
        r.min_sample
    );
    for f in &r.functions {
        out.push_str(&format!(
            "\n{} ({} tool call(s))\n",
            f.function, f.invocations
        ));
        if f.findings.is_empty() {
            out.push_str("  no findings\n");
        }
        for x in &f.findings {
            out.push_str(&format!("  ! {} [{}]\n", x.message, x.kind));
            out.push_str(&format!("    fix: {}\n", x.fix));
            if !x.evidence.is_empty() {
                out.push_str(&format!("    see: {}\n", x.evidence.join(", ")));
            }
        }
    }
    out
}
