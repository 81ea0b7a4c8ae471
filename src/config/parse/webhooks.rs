//! `[[webhooks]]` (SPEC §13.1): the tool-webhook endpoints of hosted platforms, each bound to
//! an agent of its org.

use std::sync::Arc;
use std::time::Duration;

use toml::Table;

use super::orgs::check_org;
use crate::config::check::{Ck, at, suggestion};
use crate::config::{Agent, Mode};

pub(super) fn parse_webhooks(
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
