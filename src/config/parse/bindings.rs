//! `[agents.functions.inputs]` (SPEC §8 input bindings): how each action input gets its value
//! (`arg`, `from`, `value`, `map`), its type rule, and the model parameters the bindings make.

use toml::{Table, Value};

use crate::bindings::{Binding, SessionRef, Source, Template, ValueRule, ValueType, is_identifier};
use crate::catalog::{Action, InputKind};
use crate::config::Param;
use crate::config::check::{Ck, at, suggestion, type_name};

pub(super) const BINDING_KEYS: &[&str] = &[
    "arg",
    "from",
    "value",
    "map",
    "description",
    "required",
    "type",
    "enum",
    "max_length",
];

pub(super) fn parse_inputs(
    ck: &mut Ck<'_>,
    p: &str,
    t: &Table,
    action: Action,
) -> Vec<(String, Binding)> {
    let mut out = Vec::new();
    let names: Vec<&str> = action.inputs().iter().map(|i| i.name).collect();
    for (name, v) in t {
        let ip = at(p, name);
        let Some(spec) = action.input(name) else {
            let hint = suggestion(name, names.iter().copied());
            ck.err(
                ip,
                format!(
                    "{action} has no input {name:?}{hint}; its inputs are {}",
                    names.join(", ")
                ),
            );
            continue;
        };
        if action.open_inputs() && !is_identifier(name) {
            ck.err(&ip, "input names are letters, digits, `_` and `-`");
            continue;
        }
        let map_ok = spec.kind == InputKind::Map || action.open_inputs();
        if let Some(b) = parse_binding(ck, &ip, v, spec.kind, spec.required, map_ok) {
            out.push((name.clone(), b));
        }
    }
    check_required_inputs(ck, p, action, &out);
    out
}

pub(super) fn check_required_inputs(
    ck: &mut Ck<'_>,
    p: &str,
    action: Action,
    bound: &[(String, Binding)],
) {
    for spec in action.inputs() {
        if spec.required && !bound.iter().any(|(n, _)| n == spec.name) {
            ck.err(
                p,
                format!(
                    "{action} needs the input {:?}; bind it with {{ arg = ... }}, {{ from = ... }} or {{ value = ... }}",
                    spec.name
                ),
            );
        }
    }
}

pub(super) fn parse_binding(
    ck: &mut Ck<'_>,
    p: &str,
    v: &Value,
    kind: InputKind,
    input_required: bool,
    map_ok: bool,
) -> Option<Binding> {
    let Value::Table(t) = v else {
        ck.err(
            p,
            format!(
                "expected a binding like {{ arg = \"name\" }}, {{ from = \"var.name\" }} or {{ value = \"text\" }}, got {}",
                type_name(v)
            ),
        );
        return None;
    };
    ck.keys(t, p, BINDING_KEYS);
    let has = |k: &str| t.contains_key(k);
    let forms = [has("arg") || has("from"), has("value"), has("map")]
        .iter()
        .filter(|b| **b)
        .count();
    if forms != 1 {
        ck.err(
            p,
            "give exactly one of: arg (optionally with from), from, value, map",
        );
        return None;
    }
    let explicit_required = ck.boolean(t, p, "required");
    let required = explicit_required.unwrap_or(input_required);

    if has("map") {
        if !map_ok {
            ck.err(at(p, "map"), "this input takes a single value, not a map");
            return None;
        }
        let mt = ck.table(t, p, "map")?;
        let mut entries = Vec::new();
        for (key, ev) in mt {
            let ep = at(&at(p, "map"), key);
            if key.trim().is_empty() {
                ck.err(&ep, "map keys must not be empty");
                continue;
            }
            if let Some(b) =
                parse_binding(ck, &ep, ev, InputKind::Text { max_len: None }, false, false)
            {
                entries.push((key.clone(), b));
            }
        }
        return Some(Binding {
            source: Source::Map(entries),
            rule: ValueRule::of(ValueType::String),
            required,
            description: None,
        });
    }
    if kind == InputKind::Map {
        ck.err(
            p,
            "this input is a map: bind it with { map = { name = { arg = ... } } }",
        );
        return None;
    }

    let rule = parse_rule(ck, p, t, kind)?;
    let source = if has("value") {
        let text = match t.get("value") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Integer(n)) => n.to_string(),
            Some(Value::Boolean(b)) => b.to_string(),
            Some(Value::Float(f)) => f.to_string(),
            Some(other) => {
                ck.err(
                    at(p, "value"),
                    format!("expected text, got {}", type_name(other)),
                );
                return None;
            }
            None => unreachable!("checked by has(\"value\")"),
        };
        match Template::parse(&text) {
            Ok(tpl) => {
                if tpl.is_constant()
                    && let Err(reason) = rule.check_text(&text)
                {
                    ck.err(at(p, "value"), reason);
                }
                Source::Value(tpl)
            }
            Err(e) => {
                ck.err(at(p, "value"), e);
                return None;
            }
        }
    } else {
        let from = ck
            .string(t, p, "from", false)
            .and_then(|f| match SessionRef::parse(&f) {
                Ok(r) => Some(r),
                Err(e) => {
                    ck.err(at(p, "from"), e);
                    None
                }
            });
        if has("from") && from.is_none() {
            return None;
        }
        match ck.string(t, p, "arg", false) {
            Some(param) => {
                if !is_identifier(&param) {
                    ck.err(
                        at(p, "arg"),
                        format!("{param:?}: parameter names are 1..64 letters, digits, `_` or `-`"),
                    );
                    return None;
                }
                Source::Arg {
                    param,
                    fallback: from,
                }
            }
            None if has("arg") => return None,
            None => Source::Session(from?),
        }
    };
    let description = ck.string(t, p, "description", false);
    if description.is_some() && !matches!(source, Source::Arg { .. }) {
        ck.warn(
            at(p, "description"),
            "only a model parameter ({ arg = ... }) has a description the model sees",
        );
    }
    Some(Binding {
        source,
        rule,
        required,
        description,
    })
}

pub(super) fn parse_rule(
    ck: &mut Ck<'_>,
    p: &str,
    t: &Table,
    kind: InputKind,
) -> Option<ValueRule> {
    let (kind_ty, kind_max) = match kind {
        InputKind::Email => (ValueType::Email, None),
        InputKind::E164 => (ValueType::E164, None),
        InputKind::Text { max_len } => (ValueType::String, max_len),
        InputKind::Map => (ValueType::String, None),
    };
    let enum_values = ck.strings(t, p, "enum");
    let ty = match ck.string(t, p, "type", false) {
        None => match &enum_values {
            Some(values) => ValueType::Enum(values.clone()),
            None => kind_ty.clone(),
        },
        Some(name) => match name.as_str() {
            "string" => ValueType::String,
            "integer" => ValueType::Integer,
            "boolean" => ValueType::Boolean,
            "email" => ValueType::Email,
            "e164" => ValueType::E164,
            "enum" => match &enum_values {
                Some(values) => ValueType::Enum(values.clone()),
                None => {
                    ck.err(at(p, "enum"), "type \"enum\" needs enum = [\"a\", \"b\"]");
                    return None;
                }
            },
            other => {
                let hint = suggestion(other, ValueType::NAMES);
                ck.err(
                    at(p, "type"),
                    format!(
                        "{other:?} is not one of {}{hint}",
                        ValueType::NAMES.join(", ")
                    ),
                );
                return None;
            }
        },
    };
    if let ValueType::Enum(values) = &ty {
        if values.is_empty() {
            ck.err(at(p, "enum"), "must list at least one value");
            return None;
        }
    } else if enum_values.is_some() {
        ck.err(
            at(p, "enum"),
            format!("enum values need type \"enum\", not {:?}", ty.name()),
        );
        return None;
    }
    if matches!(kind_ty, ValueType::Email | ValueType::E164) && ty != kind_ty {
        ck.err(
            at(p, "type"),
            format!(
                "this input takes {}; leave `type` out or set it to {:?}",
                if kind_ty == ValueType::Email {
                    "an email address"
                } else {
                    "an E.164 phone number"
                },
                kind_ty.name()
            ),
        );
        return None;
    }
    let max_length = ck.uint(t, p, "max_length", 1, 1 << 20).map(|n| n as usize);
    let max_length = match (max_length, kind_max) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Some(ValueRule { ty, max_length })
}

pub(super) fn collect_params(ck: &mut Ck<'_>, p: &str, inputs: &[(String, Binding)]) -> Vec<Param> {
    fn walk<'b>(bindings: &'b [(String, Binding)], out: &mut Vec<&'b Binding>) {
        for (_, b) in bindings {
            match &b.source {
                Source::Map(entries) => walk(entries, out),
                Source::Arg { .. } => out.push(b),
                _ => {}
            }
        }
    }
    let mut found = Vec::new();
    walk(inputs, &mut found);
    let mut params: Vec<Param> = Vec::new();
    for b in found {
        let Source::Arg { param, fallback } = &b.source else {
            continue;
        };
        if let Some(existing) = params.iter_mut().find(|x| &x.name == param) {
            if existing.rule != b.rule {
                ck.err(
                    at(p, "inputs"),
                    format!("parameter {param:?} is bound twice with different types"),
                );
            }
            existing.required |= b.required;
            if existing.fallback.is_none() {
                existing.fallback = fallback.clone();
            }
            if existing.description.is_none() {
                existing.description = b.description.clone();
            }
            continue;
        }
        params.push(Param {
            name: param.clone(),
            rule: b.rule.clone(),
            description: b.description.clone(),
            required: b.required,
            fallback: fallback.clone(),
        });
    }
    params
}
