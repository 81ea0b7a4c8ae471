//! The shared state of a running sidecar.
//!
//! What a config reload may change (agents, connections and their credentials, tokens,
//! workflow settings) lives in a [`Snapshot`] that a reload swaps atomically: a tool call reads
//! one consistent snapshot, a live session keeps the agent definition it started with, and a
//! connection whose settings did not change keeps its live state (status, circuit, rate).
//! What a reload cannot change (listeners, storage) is fixed at start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::{Agent, Config, ConfigError, Problem, ServerSettings, token_digest};
use crate::connections::{Registry, Status, validate};
use crate::evidence::store::EvidenceStore;
use crate::providers;
use crate::providers::Trouble;
use crate::session::socket::SessionHandle;
use crate::storage::StoreError;
use crate::workflow::store::JobStore;

/// Live sessions are keyed by org and call id: two orgs may reuse a call id.
pub type SessionKey = (String, String);

/// Why a runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] crate::providers::ClientError),
    /// The job store could not be opened.
    #[error("{}", .0.of_store("job store"))]
    JobStore(StoreError),
    /// The evidence store could not be opened.
    #[error("{}", .0.of_store("evidence store"))]
    EvidenceStore(StoreError),
}

/// Why a reload was refused (the old config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The sidecar was not started from a file.
    #[error("this sidecar was not started from a config file; there is nothing to reload")]
    NoFile,
    /// The new config has problems.
    #[error("{0}")]
    Invalid(ConfigError),
    /// The new config changes what only a restart can change.
    #[error("{0}")]
    NeedsRestart(String),
}

/// The job queue's acknowledgement wait on NATS: just past the longest lease any function's
/// attempt holds (its hard timeout plus the lease margin), so a notice is redelivered only when
/// its holder is gone, and a dead worker's job is taken over about when its lease ends.
/// In-progress acks cover leases that outlive it (a reload lengthened a timeout).
pub fn queue_ack_wait(config: &Config) -> std::time::Duration {
    let longest = config
        .agents
        .iter()
        .flat_map(|a| a.functions.iter().map(|f| f.timing.hard_timeout))
        .chain(std::iter::once(config.defaults.timing.hard_timeout))
        .max()
        .unwrap_or_default();
    (longest + crate::workflow::transitions::LEASE_MARGIN + std::time::Duration::from_secs(1))
        .max(std::time::Duration::from_secs(5))
}

/// Open the evidence store `[storage]` names: on NATS JetStream when the job queue is there
/// (`on_nats`: a job store that fell back to SQLite takes the evidence with it), else the
/// local SQLite file alone. NATS failing here is an error, unless `fallback = "sqlite"`.
/// `follow`: apply the stream to the local file, for a process that serves reads.
async fn open_evidence(
    config: &Config,
    on_nats: bool,
    follow: bool,
) -> Result<EvidenceStore, StoreError> {
    let path = config.storage.evidence_path();
    let delay = config.evidence.writer_delay;
    let Some(nats) = config.storage.nats.as_ref().filter(|_| on_nats) else {
        return EvidenceStore::open(&path, delay);
    };
    let options = crate::storage::nats::NatsOptions::from_settings(nats);
    let retain = std::time::Duration::from_secs(u64::from(config.evidence.retain_days) * 86_400);
    let opened = if follow {
        EvidenceStore::open_nats(&path, delay, &options, retain).await
    } else {
        EvidenceStore::open_nats_publisher(&path, delay, &options, retain).await
    };
    match opened {
        Ok(store) => Ok(store),
        Err(e) if nats.fallback_sqlite => {
            tracing::error!(
                error = %e,
                path = %path.display(),
                "storage.fallback = \"sqlite\": evidence stays in the local file, for this host only, until a restart with NATS up"
            );
            EvidenceStore::open(&path, delay)
        }
        Err(e) => Err(e),
    }
}

/// Who an admin bearer token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminScope {
    /// `[admin] tokens`: every org.
    All,
    /// An org's `admin_tokens`: that org only.
    Org(String),
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("agents", &self.agents.len())
            .finish_non_exhaustive()
    }
}

/// Everything a reload replaces, as one consistent value.
pub struct Snapshot {
    /// The checked config.
    pub config: Arc<Config>,
    /// Connections with their live state.
    pub connections: Registry,
    session_tokens: HashMap<[u8; 32], String>,
    admin_tokens: HashMap<[u8; 32], AdminScope>,
    agents: HashMap<String, Arc<Agent>>,
}

impl Snapshot {
    fn build(config: Config, old: Option<&Snapshot>) -> Snapshot {
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
        let agents = config
            .agents
            .iter()
            .map(|a| (a.id.clone(), a.clone()))
            .collect();
        Snapshot {
            connections: Registry::carried_over(&config, old.map(|o| &o.connections)),
            session_tokens,
            admin_tokens,
            agents,
            config: Arc::new(config),
        }
    }

    /// The org a session bearer token belongs to. Tokens are compared by SHA-256 digest, so
    /// the lookup neither keeps raw tokens as keys nor leaks their prefix through timing.
    pub fn org_for_session_token(&self, token: &str) -> Option<&str> {
        self.session_tokens
            .get(&token_digest(token))
            .map(String::as_str)
    }

    /// What an admin bearer token may see.
    pub fn admin_scope(&self, token: &str) -> Option<&AdminScope> {
        self.admin_tokens.get(&token_digest(token))
    }

    /// The agent of this id.
    pub fn agent(&self, id: &str) -> Option<&Arc<Agent>> {
        self.agents.get(id)
    }

    /// An org's own session limit, if it has one.
    pub fn org_max_sessions(&self, org: &str) -> Option<usize> {
        self.config
            .orgs
            .iter()
            .find(|o| o.id == org)
            .and_then(|o| o.max_sessions)
    }

    /// The agent ids of one org, for did-you-mean hints.
    pub fn agents_of<'a>(&'a self, org: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.agents
            .values()
            .filter(move |a| a.org == org)
            .map(|a| a.id.as_str())
    }
}

/// What a successful reload did.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// Warnings of the new config.
    pub warnings: Vec<Problem>,
    /// Connections that are new or changed (they start over as `pending` and are validated).
    pub changed_connections: Vec<String>,
    /// Settings that changed but only take effect at the next restart.
    pub at_restart: Vec<String>,
}

/// Everything the sessions of one sidecar share.
pub struct Runtime {
    snapshot: ArcSwap<Snapshot>,
    /// Listener and socket settings, fixed at start.
    pub server: ServerSettings,
    /// The pooled HTTP client for provider requests.
    pub providers: providers::Client,
    /// Live sessions (attached or within their disconnect grace).
    pub sessions: DashMap<SessionKey, SessionHandle>,
    /// How many sessions are live.
    pub active_sessions: AtomicUsize,
    /// How many sessions each org has live (for `[[orgs]] max_sessions`).
    pub org_sessions: DashMap<String, usize>,
    /// The durable post-call job queue.
    pub jobs: Arc<JobStore>,
    /// Invocation evidence and call history (its own SQLite file beside the jobs', its own
    /// writer thread).
    pub evidence: Arc<EvidenceStore>,
    /// The lease owner of live requests that outlive their budget (`live:<instance>`).
    pub live_owner: String,
    /// Cancelled when the process is shutting down: sessions drain and close.
    pub shutdown: CancellationToken,
    /// Every tool call's task and every job release a session leaves behind: shutdown waits
    /// for them, so a live request that outlived its session is still recorded.
    pub tasks: TaskTracker,
    /// Woken when connections need validating now (after a reload).
    pub validate_now: Notify,
    /// Relay tickets issued and not yet used (SPEC §13.2).
    pub tickets: crate::relay::tickets::Tickets,
    /// Webhook calls' implicit sessions (SPEC §13.1).
    pub hooks: crate::hooks::calls::Calls,
    /// Whether new tool calls are to be shed (the runtime's scheduling delay).
    pub overload: Arc<crate::overload::Overload>,
    config_path: Option<PathBuf>,
    reloading: tokio::sync::Mutex<()>,
}

impl Runtime {
    /// Build the runtime for a config loaded from `path` (so it can be reloaded), opening the
    /// job store `[storage]` names: the SQLite file, or NATS JetStream (an error naming the
    /// servers when NATS does not answer, unless `fallback = "sqlite"`).
    pub async fn open(config: Config, path: Option<PathBuf>) -> Result<Arc<Runtime>, RuntimeError> {
        Runtime::open_as(config, path, true).await
    }

    /// [`Runtime::open`] for `toolgate worker`, which serves no reads: on NATS it publishes
    /// evidence without keeping a copy of every host's.
    pub async fn open_worker(
        config: Config,
        path: Option<PathBuf>,
    ) -> Result<Arc<Runtime>, RuntimeError> {
        Runtime::open_as(config, path, false).await
    }

    async fn open_as(
        config: Config,
        path: Option<PathBuf>,
        reads: bool,
    ) -> Result<Arc<Runtime>, RuntimeError> {
        let jobs = JobStore::open_configured(&config.storage, queue_ack_wait(&config))
            .await
            .map_err(RuntimeError::JobStore)?;
        let evidence = open_evidence(&config, jobs.backend() == "nats", reads)
            .await
            .map_err(RuntimeError::EvidenceStore)?;
        Runtime::assemble(config, path, jobs, evidence, reads)
    }

    fn assemble(
        config: Config,
        path: Option<PathBuf>,
        jobs: JobStore,
        evidence: EvidenceStore,
        serves_calls: bool,
    ) -> Result<Arc<Runtime>, RuntimeError> {
        let jobs = Arc::new(jobs);
        let evidence = Arc::new(evidence);
        let overload = crate::overload::Overload::new(config.server.shed_after_delay);
        // Only a process that takes tool calls sheds them: `toolgate worker` needs no probe.
        if serves_calls && let Ok(handle) = tokio::runtime::Handle::try_current() {
            overload.start(handle);
        }
        Ok(Arc::new(Runtime {
            server: config.server.clone(),
            providers: providers::Client::new()?,
            sessions: DashMap::new(),
            active_sessions: AtomicUsize::new(0),
            org_sessions: DashMap::new(),
            jobs,
            evidence,
            live_owner: format!("live:{}", ulid::Ulid::generate()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            validate_now: Notify::new(),
            tickets: Default::default(),
            hooks: Default::default(),
            overload,
            config_path: path,
            reloading: tokio::sync::Mutex::new(()),
            snapshot: ArcSwap::from_pointee(Snapshot::build(config, None)),
        }))
    }

    /// The current snapshot (a cheap reference-count increment).
    pub fn snap(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.snapshot.load().config.clone()
    }

    /// Re-read the config file, check it completely, and swap it in. A bad config, or one that
    /// changes what needs a restart, is refused and the old one keeps serving.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let path = self.config_path.clone().ok_or(ReloadError::NoFile)?;
        let config = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| ReloadError::NeedsRestart(format!("the reload task failed: {e}")))?
            .map_err(ReloadError::Invalid)?;
        let old = self.snap();
        let mut fixed = Vec::new();
        if config.server.listen != self.server.listen
            || config.server.admin_listen != self.server.admin_listen
        {
            fixed.push("server.listen / server.admin_listen");
        }
        if config.storage.path != old.config.storage.path
            || config.storage.backend != old.config.storage.backend
            || config.storage.nats != old.config.storage.nats
        {
            fixed.push("storage");
        }
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(format!(
                "{} cannot change without a restart; nothing was reloaded",
                fixed.join(" and ")
            )));
        }
        let warnings = config.warnings.clone();
        // What a running sidecar reads once, at start: changing it is allowed, but says so.
        let mut at_restart = Vec::new();
        if config.server != self.server {
            at_restart.push("[server] settings (other than the listeners)".to_owned());
        }
        let (new_wf, old_wf) = (&config.workflow, &old.config.workflow);
        if new_wf.concurrency != old_wf.concurrency || new_wf.worker != old_wf.worker {
            at_restart.push("workflow.concurrency and workflow.worker".to_owned());
        }
        if !at_restart.is_empty() {
            tracing::warn!(settings = ?at_restart, "these changed settings take effect at the next restart");
        }
        let next = Snapshot::build(config, Some(&old));
        let changed_connections = next
            .connections
            .iter()
            .filter(|(c, _)| !next.connections.kept_from(&c.id, &old.connections))
            .map(|(c, _)| c.id.clone())
            .collect::<Vec<_>>();
        self.snapshot.store(Arc::new(next));
        info!(
            changed = changed_connections.len(),
            "config reloaded; new sessions use it, live ones keep their agent"
        );
        self.validate_now.notify_waiters();
        Ok(Reloaded {
            warnings,
            changed_connections,
            at_restart,
        })
    }

    /// Validate every connection now, then again periodically (sooner for those in `error`),
    /// and at once after a reload, until `stop`.
    pub async fn validate_periodically(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let woken = self.validate_now.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let snap = self.snap();
            let due: Vec<_> = snap
                .connections
                .iter()
                .filter(|(c, h)| {
                    let d = h.detail();
                    // A provider that was down is looked at again soon; refused credentials and
                    // wrong settings do not fix themselves (a person validates after fixing them,
                    // and a reload validates at once), and a send-time refusal of credentials
                    // that validate would otherwise flap.
                    let every =
                        if h.status() == Status::Error && d.trouble == Some(Trouble::Unreachable) {
                            snap.config.defaults.revalidate_error
                        } else {
                            snap.config.defaults.validate_every
                        };
                    c.enabled
                        && d.validated_at.is_none_or(|at| {
                            crate::clock::now_ms() - at >= every.as_millis() as i64
                        })
                })
                .map(|(c, h)| (c.clone(), h.clone()))
                .collect();
            let checks = due.iter().map(|(c, h)| {
                validate::run_one(&self.providers, &snap.config, &snap.connections, c, h)
            });
            futures_util::future::join_all(checks).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut woken => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadOptions;
    use std::time::Duration;

    fn config(timing: &str) -> Config {
        let text = format!(
            r#"
[[orgs]]
id = "acme"
session_tokens = [{{ env = "TOKEN" }}]

[[connections]]
id = "hooks"
org = "acme"
provider = "webhook"
url = "https://hooks.acme.test/toolgate"
secret = {{ env = "HOOK" }}

[[agents]]
id = "bot"
org = "acme"

[[agents.functions]]
name = "log_note"
action = "webhook.post"
connection = "hooks"
description = "Record a note."
{timing}

[agents.functions.inputs]
note = {{ arg = "note", required = true }}
"#
        );
        let env = |name: &str| match name {
            "TOKEN" => Some("tok-acme".to_owned()),
            "HOOK" => Some("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".to_owned()),
            _ => None,
        };
        Config::from_toml(&text, &LoadOptions::new(".").with_env(env))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_queue_ack_wait_is_just_past_the_longest_lease() {
        // The default hard timeout (10 s) + the lease margin (5 s) + 1 s.
        assert_eq!(queue_ack_wait(&config("")), Duration::from_secs(16));
        let long = config("timing = { mode = \"workflow\", hard_timeout_ms = 30000 }");
        assert_eq!(queue_ack_wait(&long), Duration::from_secs(36));
        // A short timeout on one function does not shorten it below the default's lease.
        let short = config("timing = { mode = \"workflow\", hard_timeout_ms = 2000 }");
        assert_eq!(queue_ack_wait(&short), Duration::from_secs(16));
    }
}
