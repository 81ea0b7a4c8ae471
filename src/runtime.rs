//! The shared state of a running sidecar: checked config, the pooled provider client,
//! connection health and the registry of live sessions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use dashmap::DashMap;

use crate::config::{Agent, Config, token_digest};
use crate::connections::Registry;
use crate::providers;
use crate::session::SessionHandle;

/// Live sessions are keyed by org and call id: two orgs may reuse a call id.
pub type SessionKey = (String, String);

/// Everything the sessions of one sidecar share.
pub struct Runtime {
    /// The checked config.
    pub config: Arc<Config>,
    /// The pooled HTTP client for provider requests.
    pub providers: providers::Client,
    /// Connection health.
    pub connections: Registry,
    /// Live sessions (attached or within their disconnect grace).
    pub sessions: DashMap<SessionKey, SessionHandle>,
    /// How many sessions are live.
    pub active_sessions: AtomicUsize,
    /// Session token digest to org id.
    session_tokens: HashMap<[u8; 32], String>,
    agents: HashMap<String, Arc<Agent>>,
}

impl Runtime {
    /// Build the runtime for a checked config.
    pub fn new(config: Config) -> Result<Arc<Runtime>, reqwest::Error> {
        let session_tokens = config
            .orgs
            .iter()
            .flat_map(|o| o.session_tokens.iter().map(|t| (t.digest(), o.id.clone())))
            .collect();
        let agents = config
            .agents
            .iter()
            .map(|a| (a.id.clone(), a.clone()))
            .collect();
        Ok(Arc::new(Runtime {
            connections: Registry::new(&config),
            providers: providers::Client::new()?,
            sessions: DashMap::new(),
            active_sessions: AtomicUsize::new(0),
            session_tokens,
            agents,
            config: Arc::new(config),
        }))
    }

    /// The org a session bearer token belongs to. Tokens are compared by SHA-256 digest, so
    /// the lookup neither keeps raw tokens as keys nor leaks their prefix through timing.
    pub fn org_for_session_token(&self, token: &str) -> Option<&str> {
        self.session_tokens
            .get(&token_digest(token))
            .map(String::as_str)
    }

    /// The agent of this id.
    pub fn agent(&self, id: &str) -> Option<&Arc<Agent>> {
        self.agents.get(id)
    }

    /// The agent ids of one org, for did-you-mean hints.
    pub fn agents_of<'a>(&'a self, org: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.agents
            .values()
            .filter(move |a| a.org == org)
            .map(|a| a.id.as_str())
    }
}
