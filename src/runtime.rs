//! The shared state of a running sidecar: checked config, the pooled provider client,
//! connection health and the registry of live sessions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use dashmap::DashMap;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Agent, Config, token_digest};
use crate::connections::Registry;
use crate::providers;
use crate::session::SessionHandle;
use crate::workflow::store::{JobStore, StoreError};

/// Why a runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The job store could not be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Who an admin bearer token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminScope {
    /// `[admin] tokens`: every org.
    All,
    /// An org's `admin_tokens`: that org only.
    Org(String),
}

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
    /// The durable post-call job queue.
    pub jobs: Arc<JobStore>,
    /// The lease owner of live requests that outlive their budget (`live:<instance>`).
    pub live_owner: String,
    /// Cancelled when the process is shutting down: sessions drain and close.
    pub shutdown: CancellationToken,
    /// Every tool call's task and every job release a session leaves behind: shutdown waits
    /// for them, so a live request that outlived its session is still recorded.
    pub tasks: TaskTracker,
    /// Session token digest to org id.
    session_tokens: HashMap<[u8; 32], String>,
    admin_tokens: HashMap<[u8; 32], AdminScope>,
    agents: HashMap<String, Arc<Agent>>,
}

impl Runtime {
    /// Build the runtime for a checked config.
    pub fn new(config: Config) -> Result<Arc<Runtime>, RuntimeError> {
        let session_tokens = config
            .orgs
            .iter()
            .flat_map(|o| o.session_tokens.iter().map(|t| (t.digest(), o.id.clone())))
            .collect();
        let admin_tokens = config
            .admin
            .tokens
            .iter()
            .map(|t| (t.digest(), AdminScope::All))
            .chain(config.orgs.iter().flat_map(|o| {
                o.admin_tokens
                    .iter()
                    .map(|t| (t.digest(), AdminScope::Org(o.id.clone())))
            }))
            .collect();
        let jobs = Arc::new(JobStore::open(&config.storage.path)?);
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
            jobs,
            live_owner: format!("live:{}", ulid::Ulid::generate()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            session_tokens,
            admin_tokens,
            agents,
            config: Arc::new(config),
        }))
    }

    /// What an admin bearer token may see (compared by digest, like session tokens).
    pub fn admin_scope(&self, token: &str) -> Option<&AdminScope> {
        self.admin_tokens.get(&token_digest(token))
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
