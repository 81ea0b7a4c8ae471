//! Connection validation (SPEC §5): ask each provider the cheapest question that proves the
//! credentials, and turn the answer into a status with a reason a person can act on.

use std::time::Duration;

use super::Status;
use crate::bindings::Source;
use crate::config::{Config, Connection};
use crate::providers::Trouble;
use crate::providers::{self, Client};

/// The result of one validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// `connected`, `error` or `disconnected`.
    pub status: Status,
    /// Why it is in `error`.
    pub trouble: Option<Trouble>,
    /// What was found, for a person.
    pub reason: String,
    /// Individual findings (each Wati template's approval).
    pub checks: Vec<String>,
    /// How many findings are problems (a Wati template missing or not approved).
    pub problems: usize,
    /// The provider answered 429: it asked to be left alone this long. The answer says
    /// nothing about the credentials, so a running sidecar keeps the connection's status.
    pub rate_limited: Option<Duration>,
}

impl Validation {
    /// Whether the connection can be used.
    pub fn ok(&self) -> bool {
        self.status == Status::Connected
    }
}

/// The Wati template names the config sends on this connection (constant `template_name`
/// bindings), so validation can check they exist and are approved.
pub fn templates_for(config: &Config, connection: &str) -> Vec<String> {
    let mut names: Vec<String> = config
        .agents
        .iter()
        .flat_map(|a| a.functions.iter())
        .filter(|f| f.connection.id == connection)
        .flat_map(|f| f.inputs.iter())
        .filter(|(name, _)| name == "template_name")
        .filter_map(|(_, b)| match &b.source {
            Source::Value(t) => t.as_constant().map(str::to_owned),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Validate one connection, waiting at most `timeout` for the provider.
pub async fn validate(
    client: &Client,
    conn: &Connection,
    templates: &[String],
    timeout: Duration,
) -> Validation {
    if !conn.enabled {
        return Validation {
            status: Status::Disconnected,
            trouble: None,
            reason: "disabled in the config".into(),
            checks: Vec::new(),
            problems: 0,
            rate_limited: None,
        };
    }
    let Some(req) = providers::prepare_validation(conn, templates) else {
        return Validation {
            status: Status::Connected,
            trouble: None,
            reason: "configuration checked (URL and signing secret); set health_url to check the endpoint too".into(),
            checks: Vec::new(),
            problems: 0,
            rate_limited: None,
        };
    };
    let answer = match tokio::time::timeout(timeout, providers::send(client, &req)).await {
        Err(_) => {
            return unreachable(format!("no answer within {} ms", timeout.as_millis()));
        }
        Ok(Err(e)) => return unreachable(e.message),
        Ok(Ok(raw)) => raw,
    };
    if answer.status == 429 {
        let wait = providers::retry_after(&answer.headers).unwrap_or(super::DEFAULT_429_PAUSE);
        let mut v = unreachable(format!(
            "the provider is rate-limiting (HTTP 429) for {} ms; the credentials were not checked",
            wait.as_millis()
        ));
        v.rate_limited = Some(wait);
        return v;
    }
    match providers::interpret_validation(conn, &answer, templates) {
        Ok(found) => Validation {
            status: Status::Connected,
            trouble: None,
            reason: found.reason,
            checks: found.checks,
            problems: found.problems,
            rate_limited: None,
        },
        Err((trouble, reason)) => Validation {
            status: Status::Error,
            trouble: Some(trouble),
            reason,
            checks: Vec::new(),
            problems: 0,
            rate_limited: None,
        },
    }
}

fn unreachable(why: String) -> Validation {
    Validation {
        status: Status::Error,
        trouble: Some(Trouble::Unreachable),
        reason: format!("cannot reach the provider: {why}"),
        checks: Vec::new(),
        problems: 0,
        rate_limited: None,
    }
}

/// Validate one connection of the running sidecar and record the result.
pub async fn run_one(
    client: &Client,
    config: &Config,
    connections: &super::Registry,
    conn: &Connection,
    health: &super::Health,
) -> Validation {
    let templates = templates_for(config, &conn.id);
    let started = crate::clock::now_ms();
    let v = validate(client, conn, &templates, config.defaults.validate_timeout).await;
    if let Some(wait) = v.rate_limited {
        // The provider asked for quiet: honour it for actions too (bounded), and keep the
        // status.
        let wait = connections.pause_for(Some(wait));
        health
            .limiter
            .pause_until(tokio::time::Instant::now() + wait);
        health.validation_postponed(crate::clock::now_ms());
        tracing::info!(connection = %conn.id, wait_ms = wait.as_millis() as u64, "validation rate-limited by the provider; status kept");
        return v;
    }
    if v.status == Status::Connected {
        // The provider answered and took the credentials: whatever pause it asked for
        // earlier is over.
        health.limiter.clear_pause();
    }
    if !health.validated(&v, started, crate::clock::now_ms()) {
        tracing::info!(connection = %conn.id, "validation outrun by a credential refusal during an action; status kept");
        return v;
    }
    match v.status {
        Status::Error => {
            tracing::warn!(connection = %conn.id, reason = %v.reason, "connection validation failed")
        }
        _ => {
            tracing::info!(connection = %conn.id, status = v.status.as_str(), "connection validated")
        }
    }
    v
}
