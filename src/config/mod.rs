//! Configuration (SPEC §8): the TOML file, checked completely before anything starts.
//!
//! [`Config::load`] parses the file, resolves secret references and checks every key, reporting
//! *all* problems with their key paths (`agents[0].functions[1].connection: ...`) in one
//! [`ConfigError`]. A `Config` value that exists is valid: a bad config never starts a server.

mod check;
mod parse;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::RegexSet;
use serde_json::value::RawValue;
use serde_json::{Value, json};

pub use crate::providers::ConnectionSettings;
pub use crate::secret::{Secret, SecretBytes, token_digest};
pub use check::did_you_mean;

use crate::bindings::{Binding, CallContext, SessionRef, ValueRule};
use crate::catalog::{Action, Provider};

/// A fully checked configuration.
#[derive(Debug)]
pub struct Config {
    /// `[server]`
    pub server: ServerSettings,
    /// `[storage]`
    pub storage: StorageSettings,
    /// `[admin]`
    pub admin: AdminSettings,
    /// `[defaults]`
    pub defaults: Defaults,
    /// `[evidence]`
    pub evidence: EvidenceSettings,
    /// `[workflow]`
    pub workflow: WorkflowSettings,
    /// `[relay]` (SPEC §13.2)
    pub relay: RelaySettings,
    /// `[[webhooks]]` (SPEC §13.1)
    pub webhooks: Vec<Arc<Webhook>>,
    /// `[[orgs]]`
    pub orgs: Vec<Org>,
    /// `[[connections]]`
    pub connections: Vec<Arc<Connection>>,
    /// `[[agents]]`
    pub agents: Vec<Arc<Agent>>,
    /// Problems that do not stop the config from working (literal secrets, ...).
    pub warnings: Vec<Problem>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// WebSocket listener (`listen`).
    pub listen: String,
    /// Admin HTTP listener (`admin_listen`).
    pub admin_listen: String,
    /// Largest accepted frame (`max_frame_bytes`, default 65536).
    pub max_frame_bytes: usize,
    /// How long a dropped socket's session waits for a reconnect (`disconnect_grace_ms`).
    pub disconnect_grace: Duration,
    /// Most concurrent sessions before `overloaded` (`max_sessions`).
    pub max_sessions: usize,
    /// Most connections on `listen` that are not (yet) in a session: reading their request, or
    /// upgraded and waiting for `session.start` (`max_pending_connections`, default 1024).
    pub max_pending: usize,
    /// How long a new connection has to send its request headers, and an upgraded one its
    /// `session.start` (`handshake_timeout_ms`, default 5000).
    pub handshake_timeout: Duration,
    /// Most connections on `admin_listen` at once (`admin_max_connections`, default 256).
    pub admin_max_connections: usize,
    /// Longest transcript turn kept, in bytes (`max_turn_bytes`, default 8192): the rest of a
    /// longer one is cut before it reaches the history, the guards and the evidence.
    pub max_turn_bytes: usize,
    /// Most history entries a session keeps (`max_history_turns`, default 1000).
    pub max_history_turns: usize,
    /// Most bytes of turn text a session keeps (`max_history_bytes`, default 262144).
    pub max_history_bytes: usize,
    /// Most inbound bytes per second per connection (`max_bytes_per_second`, default 262144):
    /// frames beyond it are refused like frames beyond `max_frames_per_second`.
    pub max_bytes_per_second: usize,
    /// Most unanswered tool calls per session before `overloaded` (`max_inflight_per_session`).
    pub max_inflight_per_session: usize,
    /// New tool calls are answered `overloaded` while the runtime's scheduling delay is above
    /// this (`shed_after_delay_ms`, default 5; 0: never), see [`crate::overload`].
    pub shed_after_delay: Option<Duration>,
    /// Frames per second a session may send before `rate_limited` (`max_frames_per_second`).
    pub max_frames_per_second: u32,
    /// Server pings to a media server this often (`ping_interval_ms`).
    pub ping_interval: Duration,
    /// A socket silent this long (not even a pong) is gone (`idle_timeout_ms`).
    pub idle_timeout: Duration,
    /// A write that does not complete within this means the socket is gone
    /// (`write_timeout_ms`).
    pub write_timeout: Duration,
}

/// `[storage]`
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// `backend`: `"sqlite"` (the embedded default) or `"nats"` (SPEC §10).
    pub backend: String,
    /// `path` of the SQLite file: the job store with the `sqlite` backend (and the `sqlite`
    /// fallback), the evidence store with either.
    pub path: PathBuf,
    /// The NATS settings, when `backend = "nats"`.
    pub nats: Option<NatsSettings>,
    /// Below this much free space on the store's disk the sidecar is not ready
    /// (`min_free_mb`, default 64): an accepted action could not be made durable.
    pub min_free_bytes: u64,
}

/// `[storage]` with `backend = "nats"`: where the JetStream job queue lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// `nats_url`: one server or several of one cluster (`nats://host:4222`, `tls://...`).
    /// Never carries credentials (the checker refuses them: they would reach logs).
    pub urls: Vec<String>,
    /// `stream_prefix` (default `TOOLGATE`): names the streams, buckets and subjects.
    pub stream_prefix: String,
    /// `replicas` (default 1): JetStream replicas of every stream and bucket.
    pub replicas: usize,
    /// `token`, or `user` with `password`.
    pub auth: NatsAuth,
    /// `fallback = "sqlite"`: NATS unreachable at start-up opens the SQLite store at `path`
    /// instead of refusing to start.
    pub fallback_sqlite: bool,
}

/// How toolgate authenticates to NATS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// `token = { env = ... }`.
    Token(Secret),
    /// `user = "..."` with `password = { env = ... }`.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
    },
}

impl StorageSettings {
    /// The evidence store's SQLite file: beside `path`, named after it (`toolgate.db` gives
    /// `toolgate-evidence.db`), so its writer never holds the job store's lock.
    pub fn evidence_path(&self) -> PathBuf {
        let stem = self
            .path
            .file_stem()
            .map_or_else(|| "toolgate".into(), |s| s.to_string_lossy().into_owned());
        let name = match self.path.extension() {
            Some(ext) => format!("{stem}-evidence.{}", ext.to_string_lossy()),
            None => format!("{stem}-evidence"),
        };
        self.path.with_file_name(name)
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// Admin bearer tokens that see every org.
    pub tokens: Vec<Secret>,
}

/// `[defaults]`
#[derive(Debug, Clone)]
pub struct Defaults {
    /// `[defaults.timing]`
    pub timing: Timing,
    /// Filler lines for functions that configure none.
    pub filler: Vec<String>,
    /// How often connections are validated again (`validate_every_ms`, default 300000).
    pub validate_every: Duration,
    /// How often a connection in `error` is validated again (`revalidate_error_ms`, default
    /// 30000).
    pub revalidate_error: Duration,
    /// How long one validation request may take (`validate_timeout_ms`, default 10000).
    pub validate_timeout: Duration,
    /// The longest delay a provider may impose (`max_retry_after_ms`, default 300000): a
    /// `Retry-After` or `ratelimit-reset` above it pauses a connection, or postpones a job,
    /// only this long.
    pub max_retry_after: Duration,
}

/// A hosted platform that POSTs tool calls (SPEC §13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Vapi `tool-calls` server messages.
    Vapi,
    /// Retell custom functions.
    Retell,
    /// ElevenLabs server (webhook) tools.
    Elevenlabs,
}

impl Platform {
    /// The config and channel name.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Vapi => "vapi",
            Platform::Retell => "retell",
            Platform::Elevenlabs => "elevenlabs",
        }
    }
}

/// `[[webhooks]]`: one tool-webhook endpoint of a hosted platform (SPEC §13.1).
#[derive(Debug)]
pub struct Webhook {
    /// The route's id: `POST /v1/hooks/{id}` (ElevenLabs: `/v1/hooks/{id}/{function}`).
    pub id: String,
    /// Org.
    pub org: String,
    /// Which platform posts to it.
    pub platform: Platform,
    /// The agent whose functions it runs.
    pub agent: String,
    /// The shared secret (Vapi, ElevenLabs) or the Retell API key that signs requests.
    pub secret: Secret,
    /// A call with no request for this long ends (`idle_end_ms`, default 30 min).
    pub idle_end: Duration,
    /// The longest a request is held for its result (`max_hold_ms`, default 15000).
    pub max_hold: Duration,
}

/// `[relay]`: the realtime relays (SPEC §13.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// Where OpenAI Realtime sessions go (`openai_upstream`); the client's query string is
    /// appended.
    pub openai_upstream: String,
    /// Where Deepgram Voice Agent sessions go (`deepgram_upstream`).
    pub deepgram_upstream: String,
    /// How long a ticket is valid (`ticket_ttl_ms`, default 60000).
    pub ticket_ttl: Duration,
    /// Largest relayed frame, either way (`max_frame_bytes`, default 16 MiB).
    pub max_frame_bytes: usize,
}

/// `[evidence]`
#[derive(Debug, Clone)]
pub struct EvidenceSettings {
    /// Keep free-text bodies instead of length and hash.
    pub keep_bodies: bool,
    /// Days to keep evidence.
    pub retain_days: u32,
    /// Not a config key: a pause before each evidence commit, which benchmarks set to prove
    /// that a slow evidence disk never delays a tool result. Zero in every config file.
    pub writer_delay: Duration,
}

/// `[workflow]`: the post-call queue's worker.
#[derive(Debug, Clone)]
pub struct WorkflowSettings {
    /// Attempts before a job is `dead` (`max_attempts`, default 8).
    pub max_attempts: u32,
    /// Jobs a worker runs at once (`concurrency`, default 8).
    pub concurrency: usize,
    /// Retry timing (`backoff_base_ms`, default 1000; `backoff_cap_ms`, default 300000).
    pub backoff: crate::backoff::Backoff,
    /// Whether `toolgate serve` runs a worker too (`worker`, default true).
    pub worker: bool,
    /// Days to keep finished jobs (`retain_days`, default 30).
    pub retain_days: u32,
    /// How long a `failed` or `dead` job keeps its raw inputs so `POST /v1/jobs/{id}/retry`
    /// can send it again (`retry_window_ms`, default 0: cleared as it ends, like a succeeded
    /// job's).
    pub retry_window: Duration,
}

/// `[[orgs]]`
#[derive(Debug, Clone)]
pub struct Org {
    /// Org id.
    pub id: String,
    /// Bearer tokens media servers of this org present.
    pub session_tokens: Vec<Secret>,
    /// Admin tokens that see only this org.
    pub admin_tokens: Vec<Secret>,
    /// Most concurrent sessions of this org (`max_sessions`; none: only the server's limit),
    /// so one tenant cannot starve the others.
    pub max_sessions: Option<usize>,
}

/// `[[connections]]`: an org's credentials for one provider.
#[derive(Debug)]
pub struct Connection {
    /// Connection id.
    pub id: String,
    /// Owning org.
    pub org: String,
    /// `enabled = false` marks it `disconnected`.
    pub enabled: bool,
    /// `rate = "30/10s"`, defaulting to the provider's documented limit (none for webhooks).
    pub rate: Option<Rate>,
    /// `circuit = { failures, penalty_ms, max_penalty_ms }`.
    pub circuit: BreakerSettings,
    /// Provider-specific settings.
    pub settings: ConnectionSettings,
}

impl Connection {
    /// What identifies this connection's behaviour: provider, settings, credentials (by
    /// digest), rate and circuit. A reload keeps the live state of a connection whose
    /// fingerprint did not change.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(format!(
            "{}|{:?}|{:?}|{}",
            self.org, self.rate, self.circuit, self.enabled
        ));
        match &self.settings {
            ConnectionSettings::Resend {
                api_key,
                from,
                base_url,
            } => {
                h.update(format!("resend|{from}|{base_url}"));
                h.update(api_key.digest());
            }
            ConnectionSettings::Wati { endpoint, token } => {
                h.update(format!("wati|{endpoint}"));
                h.update(token.digest());
            }
            ConnectionSettings::Webhook {
                url,
                key,
                health_url,
            } => {
                h.update(format!("webhook|{url}|{health_url:?}"));
                h.update(Sha256::digest(key.expose()));
            }
        }
        h.finalize().into()
    }

    /// The connection's credentials as text, to scrub from anything a provider echoes back.
    pub fn secret_texts(&self) -> Vec<String> {
        self.settings.secret_texts()
    }

    /// The provider of this connection.
    pub fn provider(&self) -> Provider {
        self.settings.provider()
    }
}

impl crate::providers::Configured for Connection {
    fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }
}

/// A token-bucket rate (`30/10s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

/// `[[agents]]`
#[derive(Debug)]
pub struct Agent {
    /// Agent id, named by `session.start`.
    pub id: String,
    /// Owning org.
    pub org: String,
    /// The functions the model may call.
    pub functions: Vec<Function>,
    /// `session.ready.tools` when every session fallback resolves.
    tools: Box<RawValue>,
}

impl Agent {
    /// The tool list for `session.ready`: a parameter with a session fallback is required
    /// only when that value is absent from this call.
    pub fn tools_for(&self, ctx: &CallContext) -> std::borrow::Cow<'_, RawValue> {
        let needs_own = self.functions.iter().any(|f| {
            f.params
                .iter()
                .any(|p| p.required && p.fallback.as_ref().is_some_and(|r| r.get(ctx).is_none()))
        });
        if needs_own {
            std::borrow::Cow::Owned(render_tools(&self.functions, Some(ctx)))
        } else {
            std::borrow::Cow::Borrowed(&self.tools)
        }
    }

    /// The tool list as check-config prints it (assuming every session fallback resolves).
    pub fn tools(&self) -> &RawValue {
        &self.tools
    }
}

fn render_tools(functions: &[Function], ctx: Option<&CallContext>) -> Box<RawValue> {
    let tools: Vec<Value> = functions.iter().map(|f| f.tool_schema(ctx)).collect();
    serde_json::value::to_raw_value(&tools).expect("tool schemas serialize")
}

/// `[[agents.functions]]`: what the model sees and how it maps to an action.
#[derive(Debug)]
pub struct Function {
    /// Name the model calls.
    pub name: String,
    /// Description (the prompt for when to call it).
    pub description: String,
    /// The catalog action.
    pub action: Action,
    /// The connection that runs it.
    pub connection: Arc<Connection>,
    /// Consent requirement.
    pub consent: Option<ConsentRule>,
    /// Recipient policy.
    pub recipient: Option<RecipientRule>,
    /// Most successful or pending invocations per call.
    pub max_per_call: Option<u32>,
    /// Filler lines, rotating.
    pub filler: Vec<String>,
    /// Timing budget.
    pub timing: Timing,
    /// Action input bindings, in config order.
    pub inputs: Vec<(String, Binding)>,
    /// The model-visible parameters derived from the bindings.
    pub params: Vec<Param>,
    /// `next` text overrides per error code.
    pub next: HashMap<String, String>,
}

impl Function {
    /// The tool entry of `session.ready` for this function.
    pub fn tool_schema(&self, ctx: Option<&CallContext>) -> Value {
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        for p in &self.params {
            properties.insert(p.name.clone(), p.rule.schema(p.description.as_deref()));
            let has_fallback = match (&p.fallback, ctx) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(r), Some(ctx)) => r.get(ctx).is_some(),
            };
            if p.required && !has_fallback {
                required.push(p.name.clone());
            }
        }
        json!({
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        })
    }
}

/// A model-visible parameter.
#[derive(Debug, Clone)]
pub struct Param {
    /// Parameter name.
    pub name: String,
    /// Its value rule.
    pub rule: ValueRule,
    /// Description for the model.
    pub description: Option<String>,
    /// Whether some required input depends on it.
    pub required: bool,
    /// The session value used when the model gives none.
    pub fallback: Option<SessionRef>,
}

/// `consent = { scope, within_turns, allow, deny }`
#[derive(Debug, Clone)]
pub struct ConsentRule {
    /// Scope matched against `consent` events.
    pub scope: String,
    /// How many recent caller turns may carry the consent.
    pub within_turns: usize,
    /// Affirmations (case-insensitive).
    pub allow: RegexSet,
    /// Negations (case-insensitive); a turn matching both is a no.
    pub deny: RegexSet,
}

/// Default consent affirmations: a clear yes, a bare "okay" as the whole answer, or a direct
/// request ("can you email me that", "send it").
pub const DEFAULT_ALLOW: &[&str] = &[
    r"\b(yes|yeah|yep|yup|sure|of course|absolutely|definitely|certainly|go ahead|please do|do it|sounds good|that works)\b",
    r"^\W*(ok|okay|alright|all right|fine)\W*$",
    r"\b(can|could|would|will) you (please |just )?(send|email|text|message|whatsapp|forward)\b",
    r"\b(send|email|text|message|whatsapp|forward) (it|me|that|this|them)\b",
    r"\bi('d| would) like (it|that|one|a copy)\b",
];

/// Default consent negations.
pub const DEFAULT_DENY: &[&str] =
    &[r"\b(no|nope|nah|never|stop|cancel|not now|not yet|rather not|do not|don['’]?t|dont)\b"];

/// `recipient = { input, policy }`
#[derive(Debug, Clone)]
pub struct RecipientRule {
    /// The action input that holds the recipient.
    pub input: String,
    /// The policy.
    pub policy: RecipientPolicy,
}

/// Who an action may be sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientPolicy {
    /// Only the caller's own number.
    Caller,
    /// The caller's number or a value of the call's variables.
    Known,
    /// Also anything the caller said in a transcript turn.
    Spoken,
    /// Anyone.
    Any,
}

impl RecipientPolicy {
    /// Config names.
    pub const NAMES: [&'static str; 4] = ["caller", "known", "spoken", "any"];
}

/// How a function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live, deferring on budget.
    Auto,
    /// Live, never deferring.
    Live,
    /// Queued at once, run after the call.
    Workflow,
}

/// The timing budget of a function (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// First filler after this long.
    pub filler_after: Duration,
    /// Repeat fillers this often (zero: no repeats).
    pub filler_repeat: Duration,
    /// Hand off to a workflow after this long (auto mode).
    pub defer_after: Duration,
    /// Abandon the live request after this long.
    pub hard_timeout: Duration,
    /// How the function runs.
    pub mode: Mode,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            filler_after: Duration::from_millis(500),
            filler_repeat: Duration::ZERO,
            defer_after: Duration::from_millis(2500),
            hard_timeout: Duration::from_millis(10_000),
            mode: Mode::Auto,
        }
    }
}

/// Default filler line when neither the function nor `[defaults]` gives one.
pub const DEFAULT_FILLER: &str = "One moment while I take care of that.";

/// One problem found in a config, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `agents[0].functions[1].connection` (empty for the whole file).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem of a config that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file, when loaded from one.
    pub file: Option<PathBuf>,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        match &self.file {
            Some(file) => writeln!(
                f,
                "{}: {n} problem{}",
                file.display(),
                if n == 1 { "" } else { "s" }
            )?,
            None => writeln!(f, "config: {n} problem{}", if n == 1 { "" } else { "s" })?,
        }
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// An environment lookup for `{ env = ... }` references.
pub type EnvLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How secret references are resolved while loading.
pub struct LoadOptions {
    /// Base directory for relative `{ file = ... }` references and `storage.path`.
    pub base_dir: PathBuf,
    /// Environment lookup for `{ env = ... }` references.
    pub env: EnvLookup,
    /// Read `{ env }` and `{ file }` references (`false`: check the config's shape only,
    /// as `check-config --skip-secrets` does).
    pub resolve_secrets: bool,
}

impl LoadOptions {
    /// Resolve relative paths against `base_dir` and read the process environment.
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        LoadOptions {
            base_dir: base_dir.into(),
            env: Box::new(|name| std::env::var(name).ok()),
            resolve_secrets: true,
        }
    }

    /// Do not read secret references (for checking a config where its secrets are absent).
    pub fn without_secrets(mut self) -> Self {
        self.resolve_secrets = false;
        self
    }

    /// Use this environment lookup instead of the process environment.
    pub fn with_env(
        mut self,
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.env = Box::new(env);
        self
    }
}

impl Config {
    /// Load and check a config file; relative paths resolve against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, |opts| opts)
    }

    /// [`Config::load`] with adjusted options (e.g. [`LoadOptions::without_secrets`]).
    pub fn load_with(
        path: &Path,
        adjust: impl FnOnce(LoadOptions) -> LoadOptions,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Config::from_toml(&text, &adjust(LoadOptions::new(base))).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// Parse and check config text.
    pub fn from_toml(text: &str, opts: &LoadOptions) -> Result<Config, ConfigError> {
        parse::parse(text, opts).map_err(|problems| ConfigError {
            file: None,
            problems,
        })
    }

    /// The agent of this id.
    pub fn agent(&self, id: &str) -> Option<&Arc<Agent>> {
        self.agents.iter().find(|a| a.id == id)
    }
}

/// Breaker settings (`circuit = { failures, penalty_ms, max_penalty_ms }` on a connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// The first penalty.
    pub penalty: Duration,
    /// The largest penalty.
    pub max_penalty: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            penalty: Duration::from_secs(1),
            max_penalty: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests;
