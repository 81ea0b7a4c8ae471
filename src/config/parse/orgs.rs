//! `[[orgs]]` (SPEC §8): tenants, their session and admin tokens; and the `org` key every
//! connection, agent and webhook names.

use std::collections::HashMap;

use toml::Table;

use crate::config::Org;
use crate::config::check::{Ck, at, idx, suggestion};

pub(super) fn parse_orgs(ck: &mut Ck<'_>, root: &Table) -> Vec<Org> {
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

pub(super) fn check_org(
    ck: &mut Ck<'_>,
    t: &Table,
    path: &str,
    org_ids: &[&str],
) -> Option<String> {
    let org = ck.string(t, path, "org", true)?;
    if !org_ids.contains(&org.as_str()) {
        let hint = suggestion(&org, org_ids.iter().copied());
        ck.err(at(path, "org"), format!("no org {org:?}{hint}"));
        return None;
    }
    Some(org)
}
