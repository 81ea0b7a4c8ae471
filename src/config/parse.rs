//! Walks the TOML tree, building the checked [`Config`] and collecting every problem with its
//! key path. Walking a `toml::Table` by hand (rather than deriving `Deserialize`) is what lets
//! one run report all problems, not just the first, and suggest the key that was meant.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use regex::RegexSetBuilder;
use reqwest::Url;
use toml::{Table, Value};

use super::{
    AdminSettings, Agent, BreakerSettings, Config, Connection, ConnectionSettings, ConsentRule,
    DEFAULT_ALLOW, DEFAULT_DENY, DEFAULT_FILLER, Defaults, EvidenceSettings, Function, LoadOptions,
    Mode, NatsAuth, NatsSettings, Org, Param, Problem, Rate, RecipientPolicy, RecipientRule,
    Secret, SecretBytes, ServerSettings, StorageSettings, Timing, WorkflowSettings, render_tools,
};
use crate::bindings::{
    Binding, SessionRef, Source, Template, ValueRule, ValueType, is_email, is_identifier,
};
use crate::catalog::{Action, InputKind, Provider};

use super::check::{Ck, at, idx, suggestion, type_name};

/// Error codes a function's `next` table may override.
pub(crate) const NEXT_CODES: &[&str] = &[
    "succeeded",
    "invalid_arguments",
    "missing_fields",
    "connection_unavailable",
    "consent_required",
    "recipient_not_allowed",
    "limit_reached",
    "rate_limited",
    "duplicate",
    "cancelled",
    "deferred",
    "provider_rejected",
    "provider_auth_failed",
    "provider_unavailable",
    "timeout",
    "bad_response",
];

const TOP_KEYS: &[&str] = &[
    "server",
    "storage",
    "admin",
    "defaults",
    "evidence",
    "workflow",
    "relay",
    "webhooks",
    "orgs",
    "connections",
    "agents",
];

/// Parse `30/10s`, `5/s`, `100/1m`.
pub(crate) fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("{s:?} is not a rate like \"30/10s\" (count per period: ms, s, m or h)");
    let (count, period) = s.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let period = period.trim();
    let split = period.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = period.split_at(split);
    let n: u64 = if n.is_empty() {
        1
    } else {
        n.parse().map_err(|_| bad())?
    };
    let per = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(bad()),
    };
    if count == 0 || per.is_zero() {
        return Err(format!("{s:?}: count and period must be above zero"));
    }
    Ok(Rate { count, per })
}

fn compile_patterns(
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

pub(super) fn parse(text: &str, opts: &LoadOptions) -> Result<Config, Vec<Problem>> {
    let root: Table = match text.parse::<Table>() {
        Ok(t) => t,
        Err(e) => {
            // Position and message only: the parser's own report quotes the offending line,
            // which may hold a pasted secret, and this message reaches logs and the reload API.
            let at = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!(" at line {line}, column {column}")
                })
                .unwrap_or_default();
            return Err(vec![Problem {
                path: String::new(),
                message: format!("not valid TOML{at}: {}", e.message().trim_end()),
            }]);
        }
    };
    let mut ck = Ck {
        problems: Vec::new(),
        warnings: Vec::new(),
        opts,
    };
    ck.keys(&root, "", TOP_KEYS);

    let empty = Table::new();
    let server_t = ck_table(&mut ck, &root, "server").unwrap_or(&empty);
    let server = parse_server(&mut ck, server_t);
    let storage_t = ck_table(&mut ck, &root, "storage").unwrap_or(&empty);
    let storage = parse_storage(&mut ck, storage_t);
    let admin_t = ck_table(&mut ck, &root, "admin").unwrap_or(&empty);
    ck.keys(admin_t, "admin", &["tokens"]);
    let admin = AdminSettings {
        tokens: ck.secrets(admin_t, "admin", "tokens"),
    };
    let defaults_t = ck_table(&mut ck, &root, "defaults").unwrap_or(&empty);
    let defaults = parse_defaults(&mut ck, defaults_t);
    let evidence_t = ck_table(&mut ck, &root, "evidence").unwrap_or(&empty);
    ck.keys(evidence_t, "evidence", &["keep_bodies", "retain_days"]);
    let evidence = EvidenceSettings {
        keep_bodies: ck
            .boolean(evidence_t, "evidence", "keep_bodies")
            .unwrap_or(false),
        retain_days: ck
            .uint(evidence_t, "evidence", "retain_days", 1, 3650)
            .unwrap_or(30) as u32,
        writer_delay: Duration::ZERO,
    };
    let workflow_t = ck_table(&mut ck, &root, "workflow").unwrap_or(&empty);
    let mut workflow = parse_workflow(&mut ck, workflow_t);
    workflow.backoff.max_retry_after = defaults.max_retry_after;

    let relay_t = ck_table(&mut ck, &root, "relay").unwrap_or(&empty);
    let relay = parse_relay(&mut ck, relay_t);

    let orgs = parse_orgs(&mut ck, &root);
    let org_ids: Vec<&str> = orgs.iter().map(|o| o.id.as_str()).collect();
    let (connections, declared) = parse_connections(&mut ck, &root, &org_ids);
    let agents = parse_agents(&mut ck, &root, &org_ids, &connections, &declared, &defaults);
    let webhooks = parse_webhooks(&mut ck, &root, &org_ids, &agents);

    if ck.problems.is_empty() {
        Ok(Config {
            server,
            storage,
            admin,
            defaults,
            evidence,
            workflow,
            relay,
            webhooks,
            orgs,
            connections,
            agents,
            warnings: ck.warnings,
        })
    } else {
        Err(ck.problems)
    }
}

fn ck_table<'t>(ck: &mut Ck<'_>, root: &'t Table, key: &str) -> Option<&'t Table> {
    ck.table(root, "", key)
}

fn parse_server(ck: &mut Ck<'_>, t: &Table) -> ServerSettings {
    const P: &str = "server";
    ck.keys(
        t,
        P,
        &[
            "listen",
            "admin_listen",
            "max_frame_bytes",
            "disconnect_grace_ms",
            "max_sessions",
            "max_inflight_per_session",
            "shed_after_delay_ms",
            "max_frames_per_second",
            "ping_interval_ms",
            "idle_timeout_ms",
            "write_timeout_ms",
            "max_pending_connections",
            "handshake_timeout_ms",
            "admin_max_connections",
            "max_turn_bytes",
            "max_history_turns",
            "max_history_bytes",
            "max_bytes_per_second",
        ],
    );
    let addr = |ck: &mut Ck<'_>, key: &str, default: &str| {
        let s = ck
            .string(t, P, key, false)
            .unwrap_or_else(|| default.to_owned());
        if s.parse::<std::net::SocketAddr>().is_err() {
            ck.err(
                at(P, key),
                format!("{s:?} is not an address like \"127.0.0.1:8787\""),
            );
        }
        s
    };
    let ms = |ck: &mut Ck<'_>, key: &str, default: u64| {
        Duration::from_millis(ck.uint(t, P, key, 100, 3_600_000).unwrap_or(default))
    };
    let listen = addr(ck, "listen", "127.0.0.1:8787");
    let admin_listen = addr(ck, "admin_listen", "127.0.0.1:9090");
    ServerSettings {
        listen,
        admin_listen,
        max_frame_bytes: ck
            .uint(t, P, "max_frame_bytes", 1024, 16 << 20)
            .unwrap_or(65536) as usize,
        disconnect_grace: Duration::from_millis(
            ck.uint(t, P, "disconnect_grace_ms", 0, 600_000)
                .unwrap_or(5000),
        ),
        max_sessions: ck
            .uint(t, P, "max_sessions", 1, 1_000_000)
            .unwrap_or(20_000) as usize,
        max_pending: ck
            .uint(t, P, "max_pending_connections", 1, 1_000_000)
            .unwrap_or(1024) as usize,
        handshake_timeout: ms(ck, "handshake_timeout_ms", 5_000),
        admin_max_connections: ck
            .uint(t, P, "admin_max_connections", 1, 100_000)
            .unwrap_or(256) as usize,
        max_turn_bytes: ck.uint(t, P, "max_turn_bytes", 64, 1 << 20).unwrap_or(8192) as usize,
        max_history_turns: ck
            .uint(t, P, "max_history_turns", 10, 1_000_000)
            .unwrap_or(1000) as usize,
        max_history_bytes: ck
            .uint(t, P, "max_history_bytes", 1024, 64 << 20)
            .unwrap_or(256 << 10) as usize,
        max_bytes_per_second: ck
            .uint(t, P, "max_bytes_per_second", 1024, 1 << 30)
            .unwrap_or(256 << 10) as usize,
        max_inflight_per_session: ck
            .uint(t, P, "max_inflight_per_session", 1, 1024)
            .unwrap_or(16) as usize,
        shed_after_delay: match ck
            .uint(t, P, "shed_after_delay_ms", 0, 60_000)
            .unwrap_or(20)
        {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        },
        max_frames_per_second: ck
            .uint(t, P, "max_frames_per_second", 1, 100_000)
            .unwrap_or(200) as u32,
        ping_interval: ms(ck, "ping_interval_ms", 15_000),
        idle_timeout: ms(ck, "idle_timeout_ms", 45_000),
        write_timeout: ms(ck, "write_timeout_ms", 10_000),
    }
}

fn parse_storage(ck: &mut Ck<'_>, t: &Table) -> StorageSettings {
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
fn parse_nats(ck: &mut Ck<'_>, t: &Table) -> Option<NatsSettings> {
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
fn check_nats_url(url: &str) -> Result<(), String> {
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

fn valid_stream_prefix(p: &str) -> bool {
    (1..=32).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_workflow(ck: &mut Ck<'_>, t: &Table) -> WorkflowSettings {
    const P: &str = "workflow";
    ck.keys(
        t,
        P,
        &[
            "max_attempts",
            "concurrency",
            "backoff_base_ms",
            "backoff_cap_ms",
            "worker",
            "retain_days",
            "retry_window_ms",
        ],
    );
    let base = ck
        .uint(t, P, "backoff_base_ms", 1, 3_600_000)
        .unwrap_or(1000);
    let cap = ck
        .uint(t, P, "backoff_cap_ms", 1, 86_400_000)
        .unwrap_or(300_000);
    if cap < base {
        ck.err(
            at(P, "backoff_cap_ms"),
            format!("{cap} is below backoff_base_ms ({base})"),
        );
    }
    WorkflowSettings {
        max_attempts: ck.uint(t, P, "max_attempts", 1, 100).unwrap_or(8) as u32,
        concurrency: ck.uint(t, P, "concurrency", 1, 1024).unwrap_or(8) as usize,
        backoff: crate::backoff::Backoff {
            base: Duration::from_millis(base),
            cap: Duration::from_millis(cap),
            // Set from `defaults.max_retry_after_ms` once `[defaults]` is read.
            max_retry_after: crate::backoff::Backoff::default().max_retry_after,
        },
        worker: ck.boolean(t, P, "worker").unwrap_or(true),
        retain_days: ck.uint(t, P, "retain_days", 1, 3650).unwrap_or(30) as u32,
        retry_window: Duration::from_millis(
            ck.uint(t, P, "retry_window_ms", 0, 30 * 86_400_000)
                .unwrap_or(0),
        ),
    }
}

fn parse_relay(ck: &mut Ck<'_>, t: &Table) -> crate::config::RelaySettings {
    const P: &str = "relay";
    ck.keys(
        t,
        P,
        &[
            "openai_upstream",
            "deepgram_upstream",
            "ticket_ttl_ms",
            "max_frame_bytes",
        ],
    );
    let ws_url = |ck: &mut Ck<'_>, key: &str, default: &str| {
        let s = ck
            .string(t, P, key, false)
            .unwrap_or_else(|| default.to_owned());
        let ok = (s.starts_with("ws://") || s.starts_with("wss://"))
            && s.parse::<hyper::Uri>()
                .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
        if !ok {
            ck.err(
                at(P, key),
                format!("{s:?} is not a WebSocket URL like \"{default}\""),
            );
        }
        s
    };
    crate::config::RelaySettings {
        openai_upstream: ws_url(ck, "openai_upstream", "wss://api.openai.com/v1/realtime"),
        deepgram_upstream: ws_url(
            ck,
            "deepgram_upstream",
            "wss://agent.deepgram.com/v1/agent/converse",
        ),
        ticket_ttl: Duration::from_millis(
            ck.uint(t, P, "ticket_ttl_ms", 1000, 3_600_000)
                .unwrap_or(60_000),
        ),
        max_frame_bytes: ck
            .uint(t, P, "max_frame_bytes", 1024, 256 << 20)
            .unwrap_or(16 << 20) as usize,
    }
}

fn parse_defaults(ck: &mut Ck<'_>, t: &Table) -> Defaults {
    const P: &str = "defaults";
    ck.keys(
        t,
        P,
        &[
            "timing",
            "filler",
            "validate_every_ms",
            "revalidate_error_ms",
            "validate_timeout_ms",
            "max_retry_after_ms",
        ],
    );
    let timing = match ck.table(t, P, "timing") {
        Some(tt) => ck.timing(tt, "defaults.timing", Timing::default()),
        None => Timing::default(),
    };
    ck.check_timing(&timing, "defaults.timing");
    let filler = ck
        .strings(t, P, "filler")
        .unwrap_or_else(|| vec![DEFAULT_FILLER.to_owned()]);
    let every = |ck: &mut Ck<'_>, key: &str, default: u64| {
        Duration::from_millis(ck.uint(t, P, key, 1000, 86_400_000).unwrap_or(default))
    };
    Defaults {
        timing,
        filler,
        validate_every: every(ck, "validate_every_ms", 300_000),
        revalidate_error: every(ck, "revalidate_error_ms", 30_000),
        validate_timeout: every(ck, "validate_timeout_ms", 10_000),
        // Minutes, not days: a provider's date in year 9999 must not stop a connection or
        // promise the caller an action that never comes.
        max_retry_after: Duration::from_millis(
            ck.uint(t, P, "max_retry_after_ms", 1000, 3_600_000)
                .unwrap_or(300_000),
        ),
    }
}

fn parse_orgs(ck: &mut Ck<'_>, root: &Table) -> Vec<Org> {
    let mut orgs: Vec<Org> = Vec::new();
    let mut token_owner: HashMap<[u8; 32], String> = HashMap::new();
    for (p, t) in ck.tables(root, "", "orgs") {
        ck.keys(
            t,
            &p,
            &["id", "session_tokens", "admin_tokens", "max_sessions"],
        );
        let Some(id) = ck.ident(t, &p, "id") else {
            continue;
        };
        if orgs.iter().any(|o| o.id == id) {
            ck.err(at(&p, "id"), format!("org {id:?} is defined twice"));
            continue;
        }
        let session_tokens = ck.secrets(t, &p, "session_tokens");
        if session_tokens.is_empty() && !t.contains_key("session_tokens") {
            ck.warn(
                &p,
                format!("org {id:?} has no session_tokens: no media server can connect for it"),
            );
        }
        for (i, tok) in session_tokens
            .iter()
            .enumerate()
            .filter(|_| ck.opts.resolve_secrets)
        {
            if let Some(other) = token_owner.insert(tok.digest(), id.clone()) {
                ck.err(
                    idx(&at(&p, "session_tokens"), i),
                    format!("the same token is already a session token of org {other:?}"),
                );
            }
        }
        let admin_tokens = ck.secrets(t, &p, "admin_tokens");
        let max_sessions = ck
            .uint(t, &p, "max_sessions", 1, 1_000_000)
            .map(|n| n as usize);
        orgs.push(Org {
            id,
            session_tokens,
            admin_tokens,
            max_sessions,
        });
    }
    if orgs.is_empty() && !root.contains_key("orgs") {
        ck.warn("orgs", "no [[orgs]]: no media server can connect");
    }
    orgs
}

fn parse_webhooks(
    ck: &mut Ck<'_>,
    root: &Table,
    org_ids: &[&str],
    agents: &[Arc<Agent>],
) -> Vec<Arc<crate::config::Webhook>> {
    use crate::config::{Platform, Webhook};
    let mut out: Vec<Arc<Webhook>> = Vec::new();
    for (p, t) in ck.tables(root, "", "webhooks") {
        ck.keys(
            t,
            &p,
            &[
                "id",
                "org",
                "platform",
                "agent",
                "secret",
                "idle_end_ms",
                "max_hold_ms",
            ],
        );
        let id = ck.ident(t, &p, "id");
        let org = check_org(ck, t, &p, org_ids);
        let platform = match ck.string(t, &p, "platform", true).as_deref() {
            Some("vapi") => Some(Platform::Vapi),
            Some("retell") => Some(Platform::Retell),
            Some("elevenlabs") => Some(Platform::Elevenlabs),
            Some(other) => {
                let hint = suggestion(other, ["vapi", "retell", "elevenlabs"]);
                ck.err(
                    at(&p, "platform"),
                    format!("{other:?} is not one of vapi, retell, elevenlabs{hint}"),
                );
                None
            }
            None => None,
        };
        let agent =
            ck.string(t, &p, "agent", true)
                .and_then(|a| match agents.iter().find(|x| x.id == a) {
                    None => {
                        let hint = suggestion(&a, agents.iter().map(|x| x.id.as_str()));
                        ck.err(at(&p, "agent"), format!("no agent {a:?}{hint}"));
                        None
                    }
                    Some(x) if org.as_deref().is_some_and(|o| o != x.org) => {
                        ck.err(
                            at(&p, "agent"),
                            format!("agent {a:?} belongs to org {:?}, not this hook's", x.org),
                        );
                        None
                    }
                    Some(x) => Some(x.clone()),
                });
        let secret = ck.secret(t, &p, "secret", true);
        let idle_end = Duration::from_millis(
            ck.uint(t, &p, "idle_end_ms", 1000, 86_400_000)
                .unwrap_or(1_800_000),
        );
        let max_hold = Duration::from_millis(
            ck.uint(t, &p, "max_hold_ms", 100, 300_000)
                .unwrap_or(15_000),
        );
        if let Some(id) = &id
            && out.iter().any(|w| &w.id == id)
        {
            ck.err(at(&p, "id"), format!("webhook {id:?} is defined twice"));
            continue;
        }
        if let Some(a) = &agent {
            // A platform speaks what comes back; toolgate holds a request at most max_hold_ms.
            for f in &a.functions {
                let waits = match f.timing.mode {
                    Mode::Auto => f.timing.defer_after,
                    Mode::Live => f.timing.hard_timeout,
                    Mode::Workflow => Duration::ZERO,
                };
                if waits > max_hold {
                    ck.warn(
                        at(&p, "max_hold_ms"),
                        format!(
                            "function {:?} may wait {} ms for its provider, longer than this hook holds a request ({} ms): such a call is answered as still running",
                            f.name,
                            waits.as_millis(),
                            max_hold.as_millis()
                        ),
                    );
                }
            }
        }
        if let (Some(id), Some(org), Some(platform), Some(agent), Some(secret)) =
            (id, org, platform, agent, secret)
        {
            out.push(Arc::new(Webhook {
                id,
                org,
                platform,
                agent: agent.id.clone(),
                secret,
                idle_end,
                max_hold,
            }));
        }
    }
    out
}

fn check_org(ck: &mut Ck<'_>, t: &Table, path: &str, org_ids: &[&str]) -> Option<String> {
    let org = ck.string(t, path, "org", true)?;
    if !org_ids.contains(&org.as_str()) {
        let hint = suggestion(&org, org_ids.iter().copied());
        ck.err(at(path, "org"), format!("no org {org:?}{hint}"));
        return None;
    }
    Some(org)
}

/// The valid connections, and every declared connection id (valid or not).
fn parse_connections(
    ck: &mut Ck<'_>,
    root: &Table,
    org_ids: &[&str],
) -> (Vec<Arc<Connection>>, Vec<String>) {
    let mut out: Vec<Arc<Connection>> = Vec::new();
    let mut declared = Vec::new();
    for (p, t) in ck.tables(root, "", "connections") {
        if let Some(Value::String(id)) = t.get("id") {
            declared.push(id.clone());
        }
        let provider_name = ck.string(t, &p, "provider", true);
        let provider = provider_name.as_deref().and_then(|name| {
            let found = Provider::parse(name);
            if found.is_none() {
                let hint = suggestion(name, Provider::ALL.iter().map(|p| p.as_str()));
                ck.err(
                    at(&p, "provider"),
                    format!("unknown provider {name:?}{hint}; known: resend, wati, webhook"),
                );
            }
            found
        });
        let common = ["id", "org", "provider", "enabled", "rate", "circuit"];
        let specific: &[&str] = match provider {
            Some(Provider::Resend) => &["api_key", "from", "base_url"],
            Some(Provider::Wati) => &["endpoint", "token"],
            Some(Provider::Webhook) => &["url", "secret", "health_url"],
            None => &[],
        };
        if provider.is_some() {
            let allowed: Vec<&str> = common.iter().chain(specific).copied().collect();
            ck.keys(t, &p, &allowed);
        }
        let id = ck.ident(t, &p, "id");
        let org = check_org(ck, t, &p, org_ids);
        let enabled = ck.boolean(t, &p, "enabled").unwrap_or(true);
        let rate = match ck.string(t, &p, "rate", false) {
            Some(s) => match parse_rate(&s) {
                Ok(r) => Some(r),
                Err(e) => {
                    ck.err(at(&p, "rate"), e);
                    None
                }
            },
            // Each provider's documented limit: Resend allows a few requests per second per
            // team, Wati's smallest plan 30 template messages per 10 s.
            None => match provider {
                Some(Provider::Resend) => Some(Rate {
                    count: 5,
                    per: Duration::from_secs(1),
                }),
                Some(Provider::Wati) => Some(Rate {
                    count: 30,
                    per: Duration::from_secs(10),
                }),
                _ => None,
            },
        };
        let circuit = parse_circuit(ck, t, &p);
        let settings = match provider {
            Some(Provider::Resend) => {
                let api_key = ck.secret(t, &p, "api_key", true);
                let from = ck.string(t, &p, "from", true);
                if let Some(f) = &from
                    && !is_email(sender_address(f))
                {
                    ck.err(
                        at(&p, "from"),
                        format!("{f:?} is not \"Name <address@domain>\" or an address"),
                    );
                }
                let base_url = if t.contains_key("base_url") {
                    ck.url(t, &p, "base_url", false)
                } else {
                    Some(Url::parse("https://api.resend.com").expect("static URL"))
                };
                match (api_key, from, base_url) {
                    (Some(api_key), Some(from), Some(base_url)) => {
                        Some(ConnectionSettings::Resend {
                            api_key,
                            from,
                            base_url,
                        })
                    }
                    _ => None,
                }
            }
            Some(Provider::Wati) => {
                let endpoint = ck.url(t, &p, "endpoint", true).map(|mut u| {
                    let trimmed = u.path().trim_end_matches('/').to_owned();
                    u.set_path(&trimmed);
                    u.set_query(None);
                    u
                });
                let token = ck.secret(t, &p, "token", true).map(normalize_wati_token);
                match (endpoint, token) {
                    (Some(endpoint), Some(token)) => {
                        Some(ConnectionSettings::Wati { endpoint, token })
                    }
                    _ => None,
                }
            }
            Some(Provider::Webhook) => {
                let url = ck.url(t, &p, "url", true);
                let health_url = if t.contains_key("health_url") {
                    ck.url(t, &p, "health_url", false)
                } else {
                    None
                };
                let key =
                    ck.secret(t, &p, "secret", true).and_then(|s| {
                        match decode_webhook_secret(s.expose()) {
                            Some(key) => Some(key),
                            None => {
                                ck.err(
                                at(&p, "secret"),
                                "must be a Standard Webhooks secret: \"whsec_\" followed by base64",
                            );
                                None
                            }
                        }
                    });
                match (url, key) {
                    (Some(url), Some(key)) => Some(ConnectionSettings::Webhook {
                        url,
                        key,
                        health_url,
                    }),
                    _ => None,
                }
            }
            None => None,
        };
        let (Some(id), Some(org), Some(settings)) = (id, org, settings) else {
            continue;
        };
        if out.iter().any(|c| c.id == id) {
            ck.err(at(&p, "id"), format!("connection {id:?} is defined twice"));
            continue;
        }
        out.push(Arc::new(Connection {
            id,
            org,
            enabled,
            rate,
            circuit,
            settings,
        }));
    }
    (out, declared)
}

fn parse_circuit(ck: &mut Ck<'_>, t: &Table, p: &str) -> BreakerSettings {
    let mut out = BreakerSettings::default();
    let Some(ct) = ck.table(t, p, "circuit") else {
        return out;
    };
    let cp = at(p, "circuit");
    ck.keys(ct, &cp, &["failures", "penalty_ms", "max_penalty_ms"]);
    if let Some(n) = ck.uint(ct, &cp, "failures", 1, 1000) {
        out.failures = n as u32;
    }
    if let Some(ms) = ck.uint(ct, &cp, "penalty_ms", 1, 3_600_000) {
        out.penalty = Duration::from_millis(ms);
    }
    if let Some(ms) = ck.uint(ct, &cp, "max_penalty_ms", 1, 86_400_000) {
        out.max_penalty = Duration::from_millis(ms);
    }
    if out.max_penalty < out.penalty {
        ck.err(at(&cp, "max_penalty_ms"), "must not be below penalty_ms");
    }
    out
}

/// The address part of `Name <addr@domain>` (or the whole string).
pub(crate) fn sender_address(from: &str) -> &str {
    match (from.rfind('<'), from.rfind('>')) {
        (Some(l), Some(r)) if l < r => from[l + 1..r].trim(),
        _ => from.trim(),
    }
}

/// Users paste Wati tokens with `Bearer ` already on them.
fn normalize_wati_token(s: Secret) -> Secret {
    let raw = s.expose().trim();
    let stripped = raw
        .strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("bearer "))
        .unwrap_or(raw)
        .trim();
    if stripped.len() == s.expose().len() {
        s
    } else {
        Secret::new(stripped)
    }
}

/// The HMAC key of a `whsec_<base64>` secret.
pub(crate) fn decode_webhook_secret(s: &str) -> Option<SecretBytes> {
    let b64 = s.trim().strip_prefix("whsec_")?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (!bytes.is_empty()).then(|| SecretBytes::new(bytes))
}

fn parse_agents(
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

const FUNCTION_KEYS: &[&str] = &[
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
struct Known<'k> {
    /// The agent's org, when valid.
    org: Option<&'k str>,
    /// Valid connections.
    connections: &'k [Arc<Connection>],
    /// Every declared connection id, valid or not (an invalid one has its own problems
    /// reported; naming it is not another problem).
    declared: &'k [String],
}

fn parse_function(
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
            if !NEXT_CODES.contains(&code.as_str()) {
                let hint = suggestion(code, NEXT_CODES.iter().copied());
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

const BINDING_KEYS: &[&str] = &[
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

fn parse_inputs(ck: &mut Ck<'_>, p: &str, t: &Table, action: Action) -> Vec<(String, Binding)> {
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

fn check_required_inputs(ck: &mut Ck<'_>, p: &str, action: Action, bound: &[(String, Binding)]) {
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

fn parse_binding(
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

fn parse_rule(ck: &mut Ck<'_>, p: &str, t: &Table, kind: InputKind) -> Option<ValueRule> {
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

fn collect_params(ck: &mut Ck<'_>, p: &str, inputs: &[(String, Binding)]) -> Vec<Param> {
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
