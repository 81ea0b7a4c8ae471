//! The `toolgate` command line: thin verbs over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use toolgate::out;

use clap::{Parser, Subcommand};
use toolgate::config::Config;
use toolgate::server::Server;
use tracing::Instrument;

#[derive(Parser)]
#[command(
    name = "toolgate",
    version,
    about = "Tool-call sidecar for live voice-AI calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: the WebSocket listener for media servers and the admin API.
    Serve {
        /// Config file.
        #[arg(long, short, default_value = "toolgate.toml")]
        config: PathBuf,
    },
    /// Check a config file: every problem with its key path, then each agent's tools.
    CheckConfig {
        /// Config file.
        file: PathBuf,
        /// Do not read `{ env }` / `{ file }` secret references (check the shape only).
        #[arg(long)]
        skip_secrets: bool,
    },
    /// Validate connections against their providers: one line each; exit 1 if any fails.
    Validate {
        /// Config file.
        #[arg(long, short, default_value = "toolgate.toml")]
        config: PathBuf,
        /// Only this connection.
        #[arg(long)]
        connection: Option<String>,
    },
    /// Run only the post-call workflow worker (no listeners) against the configured store.
    Worker {
        /// Config file.
        #[arg(long, short, default_value = "toolgate.toml")]
        config: PathBuf,
    },
    /// Run scenario files (scripted calls with simulated providers) through the real sidecar;
    /// exit 1 if an expectation fails.
    Test {
        /// Scenario files, or directories of them.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Also write the results as JUnit XML here.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Read recent evidence and report, per function, what keeps going wrong and how to fix it.
    Doctor {
        /// Config file (its storage holds the evidence).
        #[arg(long, short, default_value = "toolgate.toml")]
        config: PathBuf,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// How far back: a span (`7d`, `24h`), an RFC 3339 time, or ms since the epoch.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Fewest calls a finding rests on.
        #[arg(long, default_value_t = toolgate::diagnostics::MIN_SAMPLE)]
        min_sample: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one recorded tool call again against the current config, with a simulated provider:
    /// which guards pass now.
    Replay {
        /// The invocation id (`inv_...`), from the call page or the API.
        invocation: String,
        /// Config file (its storage holds the evidence).
        #[arg(long, short, default_value = "toolgate.toml")]
        config: PathBuf,
        /// Send it to the real provider instead (it will really happen).
        #[arg(long)]
        live: bool,
    },
    /// Print an agent's tool definitions in a platform's own JSON (names, descriptions,
    /// parameters, server URL, filler messages), from the same source as `session.ready`.
    Tools {
        /// Config file.
        #[arg(long, short, default_value = "toolgate.toml")]
        config: PathBuf,
        /// The agent.
        #[arg(long)]
        agent: String,
        /// openai, vapi, retell, elevenlabs or deepgram.
        #[arg(long, value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<toolgate::export::Format>()))]
        format: toolgate::export::Format,
        /// The base URL the platform reaches toolgate at (default: http://<server.listen>).
        #[arg(long)]
        url: Option<String>,
    },
    /// Run the sidecar with mock providers on loopback and play a few scripted calls.
    Demo {
        /// Keep the sidecar and mocks running after the scripted calls (Ctrl-C stops).
        #[arg(long)]
        keep_running: bool,
    },
}

/// jemalloc instead of glibc malloc: a tool call allocates and frees a few hundred small
/// blocks across threads (a record built on a runtime worker is freed by the evidence writer),
/// which jemalloc's thread caches serve for about a tenth less CPU per call, at the same memory
/// per idle call (docs/performance.md, "Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("toolgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { config } => {
            toolgate::telemetry::init_tracing("info");
            runtime.block_on(serve(config))
        }
        Command::CheckConfig { file, skip_secrets } => check_config(&file, skip_secrets),
        Command::Validate { config, connection } => {
            toolgate::telemetry::init_tracing("warn");
            runtime.block_on(validate(config, connection))
        }
        Command::Worker { config } => {
            toolgate::telemetry::init_tracing("info");
            runtime.block_on(worker(config))
        }
        Command::Test { scenarios, junit } => {
            toolgate::telemetry::init_tracing("error");
            runtime.block_on(test(scenarios, junit))
        }
        Command::Doctor {
            config,
            agent,
            since,
            min_sample,
            json,
        } => {
            toolgate::telemetry::init_tracing("error");
            runtime.block_on(doctor(config, agent, since, min_sample, json))
        }
        Command::Replay {
            invocation,
            config,
            live,
        } => {
            toolgate::telemetry::init_tracing("error");
            runtime.block_on(replay(config, invocation, live))
        }
        Command::Tools {
            config,
            agent,
            format,
            url,
        } => tools(&config, &agent, format, url),
        Command::Demo { keep_running } => {
            toolgate::telemetry::init_tracing("warn");
            match runtime.block_on(toolgate::tooling::demo::run(keep_running)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("toolgate demo: a call did not end as scripted");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("toolgate demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check_config(file: &std::path::Path, skip_secrets: bool) -> ExitCode {
    let loaded = if skip_secrets {
        Config::load_with(file, |o| o.without_secrets())
    } else {
        Config::load(file)
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            let secret_refs = e
                .problems
                .iter()
                .any(|p| p.path.ends_with(".env") || p.path.ends_with(".file"));
            if secret_refs && !skip_secrets {
                eprintln!(
                    "(secrets are read as serve would; --skip-secrets checks everything else)"
                );
            }
            return ExitCode::FAILURE;
        }
    };
    out!(
        "{}: OK ({} org{}, {} connection{}, {} agent{})",
        file.display(),
        config.orgs.len(),
        plural(config.orgs.len()),
        config.connections.len(),
        plural(config.connections.len()),
        config.agents.len(),
        plural(config.agents.len()),
    );
    for w in &config.warnings {
        out!("warning: {w}");
    }
    for agent in &config.agents {
        out!(
            "\nagent {} (org {}) exposes {} tool{}:",
            agent.id,
            agent.org,
            agent.functions.len(),
            plural(agent.functions.len())
        );
        let tools: serde_json::Value =
            serde_json::from_str(agent.tools().get()).expect("tools are JSON");
        out!(
            "{}",
            serde_json::to_string_pretty(&tools).expect("JSON prints")
        );
    }
    ExitCode::SUCCESS
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

async fn serve(path: PathBuf) -> ExitCode {
    let signals = Signals::install();
    let Some(config) = load(&path) else {
        return ExitCode::FAILURE;
    };
    let drain = drain_time(&config);
    let server = match Server::start_from(config, Some(path.clone())).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    signals.serve(server.runtime()).await;
    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        "shutting down: no new sessions; waiting for live ones"
    );
    server.shutdown(drain).await;
    ExitCode::SUCCESS
}

/// How long shutdown may wait: the longest live request plus the time to record it.
fn drain_time(config: &Config) -> Duration {
    config
        .agents
        .iter()
        .flat_map(|a| a.functions.iter().map(|f| f.timing.hard_timeout))
        .max()
        .unwrap_or(Duration::from_secs(10))
        + toolgate::workflow::transitions::LEASE_MARGIN
}

fn tools(
    path: &std::path::Path,
    agent: &str,
    format: toolgate::export::Format,
    url: Option<String>,
) -> ExitCode {
    let config = match Config::load_with(path, |o| o.without_secrets()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(a) = config.agents.iter().find(|a| a.id == agent) else {
        let hint =
            toolgate::config::did_you_mean(agent, config.agents.iter().map(|a| a.id.as_str()))
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
        eprintln!("toolgate tools: no agent {agent:?}{hint}");
        return ExitCode::from(2);
    };
    let base = url.unwrap_or_else(|| format!("http://{}", config.server.listen));
    let (defs, notes) = toolgate::export::tools(&config, a, format, &base);
    for n in notes {
        eprintln!("note: {n}");
    }
    out!(
        "{}",
        serde_json::to_string_pretty(&defs).expect("JSON serializes")
    );
    ExitCode::SUCCESS
}

fn load(path: &std::path::Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            eprint!("{e}");
            eprintln!("toolgate: not starting with a bad config");
            None
        }
    }
}

async fn validate(path: PathBuf, only: Option<String>) -> ExitCode {
    let Some(config) = load(&path) else {
        return ExitCode::FAILURE;
    };
    if let Some(id) = &only
        && !config.connections.iter().any(|c| &c.id == id)
    {
        let hint =
            toolgate::config::did_you_mean(id, config.connections.iter().map(|c| c.id.as_str()))
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
        eprintln!("toolgate validate: no connection {id:?}{hint}");
        return ExitCode::FAILURE;
    }
    let client = match toolgate::providers::Client::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("toolgate validate: cannot build the HTTP client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let targets: Vec<_> = config
        .connections
        .iter()
        .filter(|c| only.as_ref().is_none_or(|id| &c.id == id))
        .collect();
    let results =
        futures_util::future::join_all(targets.iter().map(|c| {
            let templates = toolgate::connections::validate::templates_for(&config, &c.id);
            let client = &client;
            let timeout = config.defaults.validate_timeout;
            async move {
                toolgate::connections::validate::validate(client, c, &templates, timeout).await
            }
        }))
        .await;
    let width = targets.iter().map(|c| c.id.len()).max().unwrap_or(0);
    let mut failed = 0;
    for (c, v) in targets.iter().zip(&results) {
        // A template that is missing or not approved fails the check too: sends using it
        // would be refused.
        if v.status == toolgate::connections::Status::Error || v.problems > 0 {
            failed += 1;
        }
        // One line per connection; what was confirmed rides along when all is well (the
        // reason already names any problem).
        let confirmed = if v.problems == 0 && !v.checks.is_empty() {
            format!(" ({})", v.checks.join("; "))
        } else {
            String::new()
        };
        out!(
            "{:<width$}  {:<8} {:<12} {}{confirmed}",
            c.id,
            c.provider().as_str(),
            v.status.as_str(),
            v.reason
        );
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn test(paths: Vec<PathBuf>, junit: Option<PathBuf>) -> ExitCode {
    let files = match toolgate::tooling::scenario::expand(&paths) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("toolgate test: no scenario files in {paths:?}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("toolgate test: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("toolgate test: running {} scenario(s)", files.len());
    let reports = toolgate::tooling::scenario::run_all(&files).await;
    out!(
        "{}",
        toolgate::tooling::scenario::render(&reports).trim_end()
    );
    if let Some(path) = junit
        && let Err(e) = std::fs::write(&path, toolgate::tooling::scenario::junit(&reports))
    {
        eprintln!("toolgate test: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if reports
        .iter()
        .all(toolgate::tooling::scenario::Report::passed)
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn doctor(
    path: PathBuf,
    only: Option<String>,
    since: String,
    min_sample: usize,
    as_json: bool,
) -> ExitCode {
    // The evidence needs no secrets: check the config's shape only.
    let config = match Config::load_with(&path, |o| o.without_secrets()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(since) = toolgate::admin::parse_since(&since) else {
        eprintln!(
            "toolgate doctor: --since {since:?} is not a span (7d, 24h), an RFC 3339 time or ms since the epoch"
        );
        return ExitCode::FAILURE;
    };
    let agents: Vec<_> = config
        .agents
        .iter()
        .filter(|a| only.as_ref().is_none_or(|o| &a.id == o))
        .cloned()
        .collect();
    if let (Some(o), true) = (&only, agents.is_empty()) {
        let hint = toolgate::config::did_you_mean(o, config.agents.iter().map(|a| a.id.as_str()))
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default();
        eprintln!("toolgate doctor: no agent {o:?}{hint}");
        return ExitCode::FAILURE;
    }
    let file = config.storage.evidence_path();
    if !file.exists() {
        eprintln!(
            "toolgate doctor: no evidence yet at {} (it is written by `toolgate serve`)",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    let store = match toolgate::evidence::store::EvidenceStore::open(&file, Duration::ZERO) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("toolgate doctor: cannot open {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let mut reports = Vec::new();
    for agent in &agents {
        match toolgate::diagnostics::diagnose(&store, agent, None, since, min_sample).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("toolgate doctor: cannot read the evidence: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    store.close().await;
    if as_json {
        out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "agents": reports }))
                .unwrap_or_default()
        );
    } else {
        for (i, r) in reports.iter().enumerate() {
            if i > 0 {
                out!("");
            }
            out!("{}", toolgate::diagnostics::render(r).trim_end());
        }
    }
    ExitCode::SUCCESS
}

async fn replay(path: PathBuf, id: String, live: bool) -> ExitCode {
    // Simulated, the secrets are not needed; live, they are.
    let loaded = if live {
        Config::load(&path)
    } else {
        Config::load_with(&path, |o| o.without_secrets())
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let file = config.storage.evidence_path();
    if !file.exists() {
        eprintln!("toolgate replay: no evidence at {}", file.display());
        return ExitCode::FAILURE;
    }
    let store = match toolgate::evidence::store::EvidenceStore::open(&file, Duration::ZERO) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("toolgate replay: cannot open {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let record = store.invocation(&id).await;
    store.close().await;
    let record = match record {
        Ok(Some(r)) => r,
        Ok(None) => {
            eprintln!(
                "toolgate replay: no invocation {id:?} in {}",
                file.display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("toolgate replay: cannot read the evidence: {e}");
            return ExitCode::FAILURE;
        }
    };
    match toolgate::tooling::replay::replay(&config, &record, live).await {
        Ok(r) => {
            out!("{}", toolgate::tooling::replay::render(&r).trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("toolgate replay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn worker(path: PathBuf) -> ExitCode {
    let signals = Signals::install();
    let Some(config) = load(&path) else {
        return ExitCode::FAILURE;
    };
    let drain = drain_time(&config);
    toolgate::net::raise_open_files_limit();
    toolgate::net::private_files();
    let rt = match toolgate::runtime::Runtime::open_worker(config, Some(path)).await {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(
        toolgate::worker::run(rt.clone(), stop.clone()).instrument(tracing::info_span!("worker")),
    );
    // The worker keeps its own view of the connections: validated at start and periodically,
    // so a connection that refused credentials recovers here too once it is fixed.
    let validator = tokio::spawn(
        rt.clone()
            .validate_periodically(stop.clone())
            .instrument(tracing::info_span!("validator")),
    );
    let housekeeping = tokio::spawn(
        toolgate::worker::housekeeping::run(rt.clone(), stop.clone(), true)
            .instrument(tracing::info_span!("housekeeping")),
    );
    signals.serve(&rt).await;
    tracing::info!("shutting down: no new claims; waiting for running attempts");
    stop.cancel();
    let _ = tokio::time::timeout(drain, task).await;
    let _ = validator.await;
    let _ = housekeeping.await;
    rt.jobs.close().await;
    rt.evidence.close().await;
    ExitCode::SUCCESS
}

/// SIGTERM, SIGINT (Ctrl-C) and SIGHUP, listened for from the start of `serve` and `worker`:
/// a signal that arrives while the process starts is then a clean stop (or a reload), not
/// the default action, which kills it.
struct Signals {
    #[cfg(unix)]
    streams: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(term), Ok(int), Ok(hup)) => Some([term, int, hup]),
                _ => None,
            };
            Signals { streams }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Until SIGTERM or Ctrl-C: reload the config on every SIGHUP. The listeners are made
    /// once, so a signal that arrives while a reload runs is not lost.
    async fn serve(self, rt: &toolgate::runtime::Runtime) {
        #[cfg(unix)]
        {
            let Some([mut term, mut int, mut hup]) = self.streams else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => return,
                    _ = term.recv() => return,
                    _ = hup.recv() => match rt.reload().await {
                        Ok(r) => tracing::info!(changed = ?r.changed_connections, warnings = r.warnings.len(), "SIGHUP: config reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: reload refused; the old config keeps serving"),
                    },
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (self, rt);
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
