//! `[storage]` (SPEC §8, §10): the SQLite file, or the NATS servers of the `nats` backend and
//! how toolgate authenticates to them.

use reqwest::Url;
use toml::{Table, Value};

use crate::config::check::{Ck, at, idx, suggestion};
use crate::config::{NatsAuth, NatsSettings, StorageSettings};

pub(super) fn parse_storage(ck: &mut Ck<'_>, t: &Table) -> StorageSettings {
    const P: &str = "storage";
    const NATS_KEYS: &[&str] = &[
        "nats_url",
        "stream_prefix",
        "replicas",
        "fallback",
        "token",
        "user",
        "password",
    ];
    let mut allowed = vec!["backend", "path", "min_free_mb"];
    allowed.extend_from_slice(NATS_KEYS);
    ck.keys(t, P, &allowed);
    let backend = ck
        .string(t, P, "backend", false)
        .unwrap_or_else(|| "sqlite".into());
    let nats = match backend.as_str() {
        "sqlite" => {
            for key in NATS_KEYS.iter().filter(|k| t.contains_key(**k)) {
                ck.warn(at(P, key), "ignored: storage.backend is \"sqlite\"");
            }
            None
        }
        "nats" => parse_nats(ck, t),
        other => {
            let hint = suggestion(other, ["sqlite", "nats"]);
            ck.err(
                at(P, "backend"),
                format!("{other:?} is not a storage backend{hint}"),
            );
            None
        }
    };
    let path = ck
        .string(t, P, "path", false)
        .unwrap_or_else(|| "toolgate-data/toolgate.db".into());
    StorageSettings {
        backend,
        path: ck.opts.base_dir.join(path),
        min_free_bytes: ck
            .uint(t, P, "min_free_mb", 0, 1 << 40)
            .unwrap_or(64)
            .saturating_mul(1 << 20),
        nats,
    }
}

/// `[storage]` keys of the `nats` backend.
pub(super) fn parse_nats(ck: &mut Ck<'_>, t: &Table) -> Option<NatsSettings> {
    const P: &str = "storage";
    let mut ok = true;
    let urls = match ck.strings(t, P, "nats_url") {
        None if !t.contains_key("nats_url") => {
            ck.err(
                at(P, "nats_url"),
                "is required with backend = \"nats\" (e.g. \"nats://127.0.0.1:4222\")",
            );
            None
        }
        None => None,
        Some(urls) if urls.is_empty() => {
            ck.err(at(P, "nats_url"), "give at least one server");
            None
        }
        Some(_) => {
            // Walk the value itself: the paths keep the positions of the entries that are
            // not strings (already reported).
            let given: Vec<(String, &str)> = match t.get("nats_url") {
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.as_str().map(|s| (idx(&at(P, "nats_url"), i), s)))
                    .collect(),
                Some(Value::String(s)) => vec![(at(P, "nats_url"), s.as_str())],
                _ => Vec::new(),
            };
            let all_strings = match t.get("nats_url") {
                Some(Value::Array(items)) => items.len() == given.len(),
                _ => true,
            };
            let mut good = Vec::with_capacity(given.len());
            for (path, url) in &given {
                match check_nats_url(url) {
                    Ok(()) => good.push(url.trim().to_owned()),
                    Err(why) => ck.err(path.clone(), why),
                }
            }
            (all_strings && good.len() == given.len()).then_some(good)
        }
    };
    ok &= urls.is_some();
    let stream_prefix = match ck.string(t, P, "stream_prefix", false) {
        None => "TOOLGATE".to_owned(),
        Some(p) if valid_stream_prefix(&p) => p,
        Some(p) => {
            ck.err(
                at(P, "stream_prefix"),
                format!(
                    "{p:?}: use 1..32 letters, digits, `_` or `-` (it names streams, buckets \
                     and subjects)"
                ),
            );
            ok = false;
            String::new()
        }
    };
    let replicas = ck.uint(t, P, "replicas", 1, 5).unwrap_or(1) as usize;
    let fallback_sqlite = match ck.string(t, P, "fallback", false) {
        None => false,
        Some(f) if f == "sqlite" => true,
        Some(f) => {
            let hint = suggestion(&f, ["sqlite"]);
            ck.err(
                at(P, "fallback"),
                format!("{f:?} is not a fallback{hint}; the only one is \"sqlite\""),
            );
            false
        }
    };
    let token = ck.secret(t, P, "token", false);
    let user = ck.string(t, P, "user", false);
    let password = ck.secret(t, P, "password", false);
    let auth = match (token, user, password) {
        (None, None, None) => NatsAuth::None,
        (Some(token), None, None) => NatsAuth::Token(token),
        (None, Some(user), Some(password)) if !user.trim().is_empty() => {
            NatsAuth::UserPassword { user, password }
        }
        (None, Some(_), Some(_)) => {
            ck.err(at(P, "user"), "must not be empty");
            NatsAuth::None
        }
        (None, Some(_), None) => {
            ck.err(at(P, "password"), "is required with storage.user");
            NatsAuth::None
        }
        (None, None, Some(_)) => {
            ck.err(at(P, "user"), "is required with storage.password");
            NatsAuth::None
        }
        (Some(_), _, _) => {
            ck.err(
                at(P, "token"),
                "give either `token` or `user` with `password`, not both",
            );
            NatsAuth::None
        }
    };
    ok.then(|| NatsSettings {
        urls: urls.unwrap_or_default(),
        stream_prefix,
        replicas,
        auth,
        fallback_sqlite,
    })
}

/// A NATS server address as the client takes it: `nats://`, `tls://` or a bare `host:port`,
/// with a host, and without credentials (they would be printed wherever the URL is).
pub(super) fn check_nats_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("must not be empty".into());
    }
    if url.contains('@') {
        // Not echoed: what comes before `@` is a credential.
        return Err(
            "credentials in the URL would show in logs and errors; give them as \
             `token = { env = \"...\" }` or `user` with `password = { env = \"...\" }`"
                .into(),
        );
    }
    let full = if url.contains("://") {
        url.to_owned()
    } else {
        format!("nats://{url}")
    };
    let parsed = Url::parse(&full).map_err(|e| format!("{url:?} is not a NATS URL: {e}"))?;
    if !matches!(parsed.scheme(), "nats" | "tls") {
        return Err(format!(
            "{:?}: the scheme must be nats:// or tls://",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if parsed.path() != "" && parsed.path() != "/" || parsed.query().is_some() {
        return Err(format!("{url:?}: a NATS URL is only scheme, host and port"));
    }
    Ok(())
}

pub(super) fn valid_stream_prefix(p: &str) -> bool {
    (1..=32).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
