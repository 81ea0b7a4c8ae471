//! `[[agents]]` and their `[[agents.functions]]` (SPEC §3, §8): what the model may call, the
//! connection that runs it, its consent and recipient rules, timing and `next` texts.

use std::collections::HashMap;
use std::sync::Arc;

use regex::RegexSetBuilder;
use toml::{Table, Value};

use super::bindings::{check_required_inputs, collect_params, parse_inputs};
use super::orgs::check_org;
use crate::catalog::{Action, InputKind};
use crate::codes::Code;
use crate::config::check::{Ck, at, suggestion, type_name};
use crate::config::{
    Agent, Connection, ConsentRule, DEFAULT_ALLOW, DEFAULT_DENY, Defaults, Function,
    RecipientPolicy, RecipientRule, render_tools,
};

pub(super) fn compile_patterns(
    ck: &mut Ck<'_>,
    t: &Table,
    path: &str,
    key: &str,
    default: &[&str],
) -> regex::RegexSet {
    let patterns = ck
        .strings(t, path, key)
        .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
    match RegexSetBuilder::new(&patterns)
        .case_insensitive(true)
        .build()
    {
        Ok(set) => set,
        Err(e) => {
            ck.err(at(path, key), format!("bad regular expression: {e}"));
            regex::RegexSet::empty()
        }
    }
}

pub(super) fn parse_agents(
    ck: &mut Ck<'_>,
    root: &Table,
    org_ids: &[&str],
    connections: &[Arc<Connection>],
    declared: &[String],
    defaults: &Defaults,
) -> Vec<Arc<Agent>> {
    let mut out: Vec<Arc<Agent>> = Vec::new();
    for (p, t) in ck.tables(root, "", "agents") {
        ck.keys(t, &p, &["id", "org", "functions"]);
        let id = ck.ident(t, &p, "id");
        let org = check_org(ck, t, &p, org_ids);
        let mut functions: Vec<Function> = Vec::new();
        for (fp, ft) in ck.tables(t, &p, "functions") {
            let known = Known {
                org: org.as_deref(),
                connections,
                declared,
            };
            if let Some(f) = parse_function(ck, &fp, ft, &known, defaults) {
                if functions.iter().any(|g| g.name == f.name) {
                    ck.err(
                        at(&fp, "name"),
                        format!("function {:?} is defined twice in this agent", f.name),
                    );
                    continue;
                }
                functions.push(f);
            }
        }
        let (Some(id), Some(org)) = (id, org) else {
            continue;
        };
        if out.iter().any(|a| a.id == id) {
            ck.err(at(&p, "id"), format!("agent {id:?} is defined twice"));
            continue;
        }
        if functions.is_empty() && !t.contains_key("functions") {
            ck.warn(&p, format!("agent {id:?} has no functions"));
        }
        let tools = render_tools(&functions, None);
        out.push(Arc::new(Agent {
            id,
            org,
            functions,
            tools,
        }));
    }
    out
}

pub(super) const FUNCTION_KEYS: &[&str] = &[
    "name",
    "action",
    "connection",
    "description",
    "consent",
    "recipient",
    "max_per_call",
    "filler",
    "timing",
    "inputs",
    "next",
];

/// What a function may refer to.
pub(super) struct Known<'k> {
    /// The agent's org, when valid.
    org: Option<&'k str>,
    /// Valid connections.
    connections: &'k [Arc<Connection>],
    /// Every declared connection id, valid or not (an invalid one has its own problems
    /// reported; naming it is not another problem).
    declared: &'k [String],
}

pub(super) fn parse_function(
    ck: &mut Ck<'_>,
    p: &str,
    t: &Table,
    known: &Known<'_>,
    defaults: &Defaults,
) -> Option<Function> {
    let (agent_org, connections) = (known.org, known.connections);
    ck.keys(t, p, FUNCTION_KEYS);
    let name = ck.ident(t, p, "name");
    let description = ck.string(t, p, "description", true);
    let action = ck.string(t, p, "action", true).and_then(|a| {
        let found = Action::parse(&a);
        if found.is_none() {
            let hint = suggestion(&a, Action::ALL.iter().map(|a| a.as_str()));
            ck.err(at(p, "action"), format!("no action {a:?}{hint}"));
        }
        found
    });
    let connection = ck.string(t, p, "connection", true).and_then(|c| {
        match connections.iter().find(|x| x.id == c) {
            Some(conn) => Some(conn.clone()),
            None if known.declared.contains(&c) => None,
            None => {
                let hint = suggestion(&c, known.declared.iter().map(String::as_str));
                ck.err(at(p, "connection"), format!("no connection {c:?}{hint}"));
                None
            }
        }
    });
    if let (Some(conn), Some(org)) = (&connection, agent_org)
        && conn.org != org
    {
        ck.err(
            at(p, "connection"),
            format!(
                "connection {:?} belongs to org {:?}, not to this agent's org {org:?}",
                conn.id, conn.org
            ),
        );
    }
    if let (Some(conn), Some(action)) = (&connection, action)
        && conn.provider() != action.provider()
    {
        ck.err(
            at(p, "connection"),
            format!(
                "{action} needs a {} connection; {:?} is {}",
                action.provider(),
                conn.id,
                conn.provider()
            ),
        );
    }

    let timing = match ck.table(t, p, "timing") {
        Some(tt) => ck.timing(tt, &at(p, "timing"), defaults.timing),
        None => defaults.timing,
    };
    ck.check_timing(&timing, &at(p, "timing"));

    let filler = ck
        .strings(t, p, "filler")
        .unwrap_or_else(|| defaults.filler.clone());
    let max_per_call = ck.uint(t, p, "max_per_call", 1, 1000).map(|n| n as u32);

    let consent = ck.table(t, p, "consent").and_then(|ct| {
        let cp = at(p, "consent");
        ck.keys(ct, &cp, &["scope", "within_turns", "allow", "deny"]);
        let scope = ck.string(ct, &cp, "scope", true);
        let within_turns = ck.uint(ct, &cp, "within_turns", 1, 100).unwrap_or(3) as usize;
        let allow = compile_patterns(ck, ct, &cp, "allow", DEFAULT_ALLOW);
        let deny = compile_patterns(ck, ct, &cp, "deny", DEFAULT_DENY);
        Some(ConsentRule {
            scope: scope?,
            within_turns,
            allow,
            deny,
        })
    });

    let declared_inputs: Vec<String> = match t.get("inputs") {
        Some(Value::Table(it)) => it.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let inputs = match (action, ck.table(t, p, "inputs")) {
        (Some(action), Some(it)) => parse_inputs(ck, &at(p, "inputs"), it, action),
        (Some(action), None) => {
            check_required_inputs(ck, &at(p, "inputs"), action, &[]);
            Vec::new()
        }
        (None, _) => Vec::new(),
    };

    let recipient = ck.table(t, p, "recipient").and_then(|rt| {
        let rp = at(p, "recipient");
        ck.keys(rt, &rp, &["input", "policy"]);
        let input = ck.string(rt, &rp, "input", true);
        if let (Some(i), Some(_)) = (&input, action)
            && !declared_inputs.contains(i)
        {
            let hint = suggestion(i, declared_inputs.iter().map(String::as_str));
            ck.err(
                at(&rp, "input"),
                format!("{i:?} is not one of this function's inputs{hint}"),
            );
        }
        let policy = ck
            .string(rt, &rp, "policy", true)
            .and_then(|s| match s.as_str() {
                "caller" => Some(RecipientPolicy::Caller),
                "known" => Some(RecipientPolicy::Known),
                "spoken" => Some(RecipientPolicy::Spoken),
                "any" => Some(RecipientPolicy::Any),
                other => {
                    let hint = suggestion(other, RecipientPolicy::NAMES);
                    ck.err(
                        at(&rp, "policy"),
                        format!("{other:?} is not caller, known, spoken or any{hint}"),
                    );
                    None
                }
            });
        Some(RecipientRule {
            input: input?,
            policy: policy?,
        })
    });
    if let (None, Some(action)) = (&recipient, action)
        && let Some(r) = action
            .inputs()
            .iter()
            .find(|i| matches!(i.kind, InputKind::Email | InputKind::E164) && i.required)
    {
        ck.warn(
                p,
                format!(
                    "no recipient policy: the model may send to any {}; set recipient = {{ input = \"{}\", policy = \"caller\" }} or policy = \"any\" to say so",
                    if r.kind == InputKind::Email { "address" } else { "number" },
                    r.name
                ),
            );
    }

    let mut next = HashMap::new();
    if let Some(nt) = ck.table(t, p, "next") {
        let np = at(p, "next");
        for (code, v) in nt {
            if !Code::parse(code).is_some_and(Code::overridable) {
                let overridable = Code::ALL.into_iter().filter(|c| c.overridable());
                let hint = suggestion(code, overridable.map(Code::as_str));
                ck.err(at(&np, code), format!("not an error code{hint}"));
                continue;
            }
            match v {
                Value::String(s) => {
                    next.insert(code.clone(), s.clone());
                }
                other => ck.err(
                    at(&np, code),
                    format!("expected a string, got {}", type_name(other)),
                ),
            }
        }
    }

    let params = collect_params(ck, p, &inputs);
    Some(Function {
        name: name?,
        description: description?,
        action: action?,
        connection: connection?,
        consent,
        recipient,
        max_per_call,
        filler,
        timing,
        inputs,
        params,
        next,
    })
}
