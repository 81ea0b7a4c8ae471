//! `[[connections]]` (SPEC §5, §8): an org's credentials for one provider, its rate and its
//! circuit breaker.

use std::sync::Arc;
use std::time::Duration;

use toml::{Table, Value};

use super::orgs::check_org;
use crate::bindings::is_email;
use crate::catalog::Provider;
use crate::config::check::{Ck, at, suggestion};
use crate::config::{BreakerSettings, Connection, ConnectionSettings, Rate};
use crate::providers::{self, resend, wati, webhook};

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

/// The valid connections, and every declared connection id (valid or not).
pub(super) fn parse_connections(
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
        let specific: &[&str] = provider.map_or(&[], providers::keys);
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
            // Each provider's documented limit.
            None => provider
                .and_then(providers::default_rate)
                .map(|(count, per)| Rate { count, per }),
        };
        let circuit = parse_circuit(ck, t, &p);
        let settings = match provider {
            Some(Provider::Resend) => {
                let api_key = ck.secret(t, &p, "api_key", true);
                let from = ck.string(t, &p, "from", true);
                if let Some(f) = &from
                    && !is_email(resend::sender_address(f))
                {
                    ck.err(
                        at(&p, "from"),
                        format!("{f:?} is not \"Name <address@domain>\" or an address"),
                    );
                }
                let base_url = if t.contains_key("base_url") {
                    ck.url(t, &p, "base_url", false)
                } else {
                    Some(resend::default_base_url())
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
                let endpoint = ck
                    .url(t, &p, "endpoint", true)
                    .map(wati::normalize_endpoint);
                let token = ck.secret(t, &p, "token", true).map(wati::normalize_token);
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
                        match webhook::decode_secret(s.expose()) {
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

pub(super) fn parse_circuit(ck: &mut Ck<'_>, t: &Table, p: &str) -> BreakerSettings {
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
