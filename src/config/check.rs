//! The checker's toolkit (SPEC §8): [`Ck`] collects every problem and warning with its key
//! path while a section is read, and its typed readers (`string`, `uint`, `secret`, `url`,
//! `timing`, ...) report a wrong type or range in the same words everywhere. [`did_you_mean`]
//! suggests the key or name that was probably meant.

use std::fmt::Display;
use std::time::Duration;

use reqwest::Url;
use toml::{Table, Value};

use super::{LoadOptions, Mode, Problem, Secret, Timing};
use crate::bindings::is_identifier;

/// Stands in for a secret reference that `check-config --skip-secrets` does not read.
pub(crate) const UNRESOLVED_SECRET: &str = "whsec_dW5yZXNvbHZlZA==";

/// The checker: collects problems while building.
pub(super) struct Ck<'a> {
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
    pub(super) opts: &'a LoadOptions,
}

pub(super) fn at(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn idx(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The closest candidate, when it is close enough to be a likely typo.
pub fn did_you_mean<'c>(
    name: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (name.chars().count() / 3).clamp(1, 4);
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub(super) fn suggestion<'c>(name: &str, candidates: impl IntoIterator<Item = &'c str>) -> String {
    match did_you_mean(name, candidates) {
        Some(c) => format!(" (did you mean {c:?}?)"),
        None => String::new(),
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

impl<'a> Ck<'a> {
    pub(super) fn err(&mut self, path: impl Into<String>, message: impl Display) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.to_string(),
        });
    }

    pub(super) fn warn(&mut self, path: impl Into<String>, message: impl Display) {
        self.warnings.push(Problem {
            path: path.into(),
            message: message.to_string(),
        });
    }

    /// Report keys of `t` not in `allowed`.
    pub(super) fn keys(&mut self, t: &Table, path: &str, allowed: &[&str]) {
        for key in t.keys() {
            if !allowed.contains(&key.as_str()) {
                let hint = suggestion(key, allowed.iter().copied());
                self.err(at(path, key), format!("unknown key{hint}"));
            }
        }
    }

    pub(super) fn table<'t>(&mut self, t: &'t Table, path: &str, key: &str) -> Option<&'t Table> {
        match t.get(key)? {
            Value::Table(inner) => Some(inner),
            other => {
                self.err(
                    at(path, key),
                    format!("expected a table, got {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(super) fn string(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<String> {
        match t.get(key) {
            None => {
                if required {
                    self.err(at(path, key), "is required");
                }
                None
            }
            Some(Value::String(s)) if required && s.trim().is_empty() => {
                self.err(at(path, key), "must not be empty");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err(
                    at(path, key),
                    format!("expected a string, got {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(super) fn ident(&mut self, t: &Table, path: &str, key: &str) -> Option<String> {
        let s = self.string(t, path, key, true)?;
        if !is_identifier(&s) {
            self.err(
                at(path, key),
                format!("{s:?}: use 1..64 letters, digits, `_` or `-`"),
            );
            return None;
        }
        Some(s)
    }

    pub(super) fn uint(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        match t.get(key)? {
            Value::Integer(n) if (min as i64..=max as i64).contains(n) => Some(*n as u64),
            Value::Integer(n) => {
                self.err(at(path, key), format!("{n} is out of range {min}..={max}"));
                None
            }
            other => {
                self.err(
                    at(path, key),
                    format!("expected an integer, got {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, t: &Table, path: &str, key: &str) -> Option<bool> {
        match t.get(key)? {
            Value::Boolean(b) => Some(*b),
            other => {
                self.err(
                    at(path, key),
                    format!("expected true or false, got {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(super) fn strings(&mut self, t: &Table, path: &str, key: &str) -> Option<Vec<String>> {
        match t.get(key)? {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => self.err(
                            idx(&at(path, key), i),
                            format!("expected a string, got {}", type_name(other)),
                        ),
                    }
                }
                Some(out)
            }
            Value::String(s) => Some(vec![s.clone()]),
            other => {
                self.err(
                    at(path, key),
                    format!("expected a list of strings, got {}", type_name(other)),
                );
                None
            }
        }
    }

    /// `[[name]]` arrays of tables.
    pub(super) fn tables<'t>(
        &mut self,
        t: &'t Table,
        path: &str,
        key: &str,
    ) -> Vec<(String, &'t Table)> {
        match t.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let p = idx(&at(path, key), i);
                    match item {
                        Value::Table(inner) => out.push((p, inner)),
                        other => self.err(p, format!("expected a table, got {}", type_name(other))),
                    }
                }
                out
            }
            Some(other) => {
                self.err(
                    at(path, key),
                    format!(
                        "expected an array of tables ([[{key}]]), got {}",
                        type_name(other)
                    ),
                );
                Vec::new()
            }
        }
    }

    /// A secret: `{ env = "NAME" }`, `{ file = "PATH" }`, or a literal string (with a warning).
    pub(super) fn secret_value(&mut self, v: &Value, path: &str) -> Option<Secret> {
        match v {
            Value::String(s) => {
                self.warn(
                    path,
                    "literal secret in the config file; prefer { env = \"NAME\" } or { file = \"PATH\" }",
                );
                if s.is_empty() {
                    self.err(path, "must not be empty");
                    return None;
                }
                Some(Secret::new(s.as_str()))
            }
            Value::Table(t) => {
                self.keys(t, path, &["env", "file"]);
                match (t.get("env"), t.get("file")) {
                    (Some(Value::String(_)), None) | (None, Some(Value::String(_)))
                        if !self.opts.resolve_secrets =>
                    {
                        Some(Secret::new(UNRESOLVED_SECRET))
                    }
                    (Some(Value::String(name)), None) => match (self.opts.env)(name) {
                        Some(v) if !v.is_empty() => Some(Secret::new(v)),
                        _ => {
                            self.err(
                                at(path, "env"),
                                format!("environment variable {name} is not set"),
                            );
                            None
                        }
                    },
                    (None, Some(Value::String(file))) => {
                        let full = self.opts.base_dir.join(file);
                        match read_secret_file(&full) {
                            Ok(s) if s.len() as u64 > MAX_SECRET_FILE => {
                                self.err(
                                    at(path, "file"),
                                    format!(
                                        "{file} is larger than {} KiB: a secret file holds one credential",
                                        MAX_SECRET_FILE / 1024
                                    ),
                                );
                                None
                            }
                            Ok(s) => {
                                let s = s.trim_end_matches(['\n', '\r']);
                                if s.is_empty() {
                                    self.err(at(path, "file"), format!("{file} is empty"));
                                    None
                                } else {
                                    Some(Secret::new(s))
                                }
                            }
                            Err(e) => {
                                self.err(at(path, "file"), format!("cannot read {file}: {e}"));
                                None
                            }
                        }
                    }
                    (Some(_), Some(_)) => {
                        self.err(path, "give either `env` or `file`, not both");
                        None
                    }
                    _ => {
                        self.err(
                            path,
                            "expected { env = \"NAME\" } or { file = \"PATH\" } with a string",
                        );
                        None
                    }
                }
            }
            other => {
                self.err(
                    path,
                    format!(
                        "expected {{ env = \"NAME\" }} or {{ file = \"PATH\" }}, got {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    pub(super) fn secret(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<Secret> {
        match t.get(key) {
            None => {
                if required {
                    self.err(at(path, key), "is required");
                }
                None
            }
            Some(v) => self.secret_value(v, &at(path, key)),
        }
    }

    pub(super) fn secrets(&mut self, t: &Table, path: &str, key: &str) -> Vec<Secret> {
        match t.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| self.secret_value(v, &idx(&at(path, key), i)))
                .collect(),
            Some(other) => {
                self.err(
                    at(path, key),
                    format!(
                        "expected a list of secret references, got {}",
                        type_name(other)
                    ),
                );
                Vec::new()
            }
        }
    }

    pub(super) fn url(&mut self, t: &Table, path: &str, key: &str, required: bool) -> Option<Url> {
        let s = self.string(t, path, key, required)?;
        match Url::parse(s.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(_) => {
                self.err(at(path, key), format!("{s:?} is not an http(s) URL"));
                None
            }
            Err(e) => {
                self.err(at(path, key), format!("{s:?} is not a URL: {e}"));
                None
            }
        }
    }

    pub(super) fn timing(&mut self, t: &Table, path: &str, base: Timing) -> Timing {
        self.keys(
            t,
            path,
            &[
                "filler_after_ms",
                "filler_repeat_ms",
                "defer_after_ms",
                "hard_timeout_ms",
                "mode",
            ],
        );
        let ms = |ck: &mut Self, key: &str, min: u64, d: Duration| {
            ck.uint(t, path, key, min, 600_000)
                .map(Duration::from_millis)
                .unwrap_or(d)
        };
        let mut out = Timing {
            filler_after: ms(self, "filler_after_ms", 0, base.filler_after),
            filler_repeat: ms(self, "filler_repeat_ms", 0, base.filler_repeat),
            defer_after: ms(self, "defer_after_ms", 1, base.defer_after),
            hard_timeout: ms(self, "hard_timeout_ms", 1, base.hard_timeout),
            mode: base.mode,
        };
        if let Some(m) = self.string(t, path, "mode", false) {
            match m.as_str() {
                "auto" => out.mode = Mode::Auto,
                "live" => out.mode = Mode::Live,
                "workflow" => out.mode = Mode::Workflow,
                other => {
                    let hint = suggestion(other, ["auto", "live", "workflow"]);
                    self.err(
                        at(path, "mode"),
                        format!("{other:?} is not auto, live or workflow{hint}"),
                    );
                }
            }
        }
        out
    }

    pub(super) fn check_timing(&mut self, timing: &Timing, path: &str) {
        if timing.mode == Mode::Auto && timing.defer_after > timing.hard_timeout {
            self.err(
                path,
                format!(
                    "defer_after_ms ({}) must not exceed hard_timeout_ms ({})",
                    timing.defer_after.as_millis(),
                    timing.hard_timeout.as_millis()
                ),
            );
        }
        if timing.mode == Mode::Auto && timing.filler_after >= timing.defer_after {
            self.warn(
                path,
                "filler_after_ms is not below defer_after_ms: the caller hears no filler before the handoff",
            );
        }
    }
}

/// The largest secret file read (`{ file = "PATH" }`): a credential is far smaller, and a path
/// that names a log, a device or a pipe by mistake must not be read whole into memory.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// A secret file's text, at most one byte past [`MAX_SECRET_FILE`] (enough to tell it is too
/// large).
fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut text)?;
    Ok(text)
}
