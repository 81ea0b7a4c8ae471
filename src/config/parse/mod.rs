//! Walks the TOML tree, building the checked [`Config`] and collecting every problem with its
//! key path. Walking a `toml::Table` by hand (rather than deriving `Deserialize`) is what lets
//! one run report all problems, not just the first, and suggest the key that was meant.
//!
//! This is the top-level walk: each section has its own file, checked with the toolkit of
//! [`super::check`], in the order the sections depend on each other (orgs before the
//! connections and agents that name them, connections before the functions that use them,
//! agents before the webhooks that run them).

mod agents;
mod bindings;
mod connections;
mod defaults;
mod orgs;
mod relay;
mod server;
mod storage;
mod webhooks;
mod workflow;

use std::time::Duration;

use toml::Table;

use super::check::Ck;
use super::{AdminSettings, Config, EvidenceSettings, LoadOptions, Problem};

#[cfg(test)]
pub(crate) use connections::parse_rate;

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
    let server = server::parse_server(&mut ck, server_t);
    let storage_t = ck_table(&mut ck, &root, "storage").unwrap_or(&empty);
    let storage = storage::parse_storage(&mut ck, storage_t);
    let admin_t = ck_table(&mut ck, &root, "admin").unwrap_or(&empty);
    ck.keys(admin_t, "admin", &["tokens"]);
    let admin = AdminSettings {
        tokens: ck.secrets(admin_t, "admin", "tokens"),
    };
    let defaults_t = ck_table(&mut ck, &root, "defaults").unwrap_or(&empty);
    let defaults = defaults::parse_defaults(&mut ck, defaults_t);
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
    let mut workflow = workflow::parse_workflow(&mut ck, workflow_t);
    workflow.backoff.max_retry_after = defaults.max_retry_after;

    let relay_t = ck_table(&mut ck, &root, "relay").unwrap_or(&empty);
    let relay = relay::parse_relay(&mut ck, relay_t);

    let orgs = orgs::parse_orgs(&mut ck, &root);
    let org_ids: Vec<&str> = orgs.iter().map(|o| o.id.as_str()).collect();
    let (connections, declared) = connections::parse_connections(&mut ck, &root, &org_ids);
    let agents = agents::parse_agents(&mut ck, &root, &org_ids, &connections, &declared, &defaults);
    let webhooks = webhooks::parse_webhooks(&mut ck, &root, &org_ids, &agents);

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
