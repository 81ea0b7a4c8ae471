//! The sidecar process: the WebSocket listener (`GET /v1/session`) and the admin listener.
//!
//! Authentication happens before the upgrade: a missing or unknown session token gets HTTP 401
//! and never a WebSocket, so an unauthenticated peer costs one HTTP exchange.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::admin;
use crate::clock::now_ms;
use crate::config::{Config, ServerSettings};
use crate::net::{self, ConnLimit, ConnSlot, HttpResponse, json_error};
use crate::runtime::{Runtime, RuntimeError};
use crate::session;
use crate::storage::StoreError;
use crate::worker::{self, housekeeping};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("{0}")]
    Bind(#[from] std::io::Error),
    /// The runtime (HTTP client, job store) could not be built.
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    /// The job store refused its start-up work.
    #[error("{}", .0.of_store("job store"))]
    Store(#[from] StoreError),
    /// Another `toolgate serve` owns the SQLite store.
    #[error(
        "another toolgate serve is already using the store {0}; stop it first, or give this one its own [storage] path"
    )]
    StoreInUse(String),
}

/// Take the lock that says "a sidecar serves this SQLite store" (`<path>.lock`, held until the
/// process ends). A second sidecar on the same file would release the first one's held jobs and
/// run workflow actions of calls still live.
fn lock_store(path: &std::path::Path) -> Result<std::fs::File, StartError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let lock_path = path.with_file_name(format!(
        "{}.lock",
        path.file_name()
            .map_or_else(|| "toolgate".into(), |n| n.to_string_lossy())
    ));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StartError::StoreInUse(path.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(StartError::Bind(e)),
    }
}

/// A running sidecar.
pub struct Server {
    /// Where the WebSocket listener is bound.
    pub ws_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    runtime: Arc<Runtime>,
    shutdown: CancellationToken,
    admin_shutdown: CancellationToken,
    ws_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    worker: Option<(CancellationToken, JoinHandle<()>)>,
    validator: (CancellationToken, JoinHandle<()>),
    housekeeping: (CancellationToken, JoinHandle<()>),
    /// Held while this sidecar serves a SQLite store.
    _store_lock: Option<std::fs::File>,
}

impl Server {
    /// Bind both listeners and start serving. Ports of `0` pick free ports (tests, demo).
    pub async fn start(config: Config) -> Result<Server, StartError> {
        Server::start_from(config, None).await
    }

    /// [`Server::start`] for a config loaded from `path`, which `SIGHUP` and `POST /v1/reload`
    /// read again.
    pub async fn start_from(
        mut config: Config,
        path: Option<PathBuf>,
    ) -> Result<Server, StartError> {
        // Before anything can count: metrics recorded earlier would go nowhere.
        crate::telemetry::prometheus();
        for w in &config.warnings {
            warn!(problem = %w, "config warning");
        }
        fit_to_open_files(&mut config.server, net::raise_open_files_limit());
        net::private_files();
        crate::telemetry::zero_series(&crate::telemetry::KnownLabels {
            functions: config
                .agents
                .iter()
                .flat_map(|a| a.functions.iter().map(|f| f.name.as_str()))
                .collect(),
            defer_reasons: &crate::workflow::DeferReason::ALL.map(|r| r.as_str()),
            guards: &crate::guards::Guard::ALL.map(|g| g.as_str()),
        });
        let ws_listener = net::bind(&config.server.listen).await?;
        let admin_listener = net::bind(&config.server.admin_listen).await?;
        let ws_addr = ws_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let store_path = config.storage.path.clone();
        let mut store_lock = if config.storage.backend == "sqlite" {
            Some(lock_store(&store_path)?)
        } else {
            None
        };
        let runtime = Runtime::open(config, path).await?;
        if store_lock.is_none() && runtime.jobs.backend() == "sqlite" {
            // NATS was not there and the config falls back to the local file.
            store_lock = Some(lock_store(&store_path)?);
        }
        // Sessions of an earlier process are gone: jobs they held for their end run now.
        let released = runtime.jobs.release_all_held(now_ms()).await?;
        if released > 0 {
            info!(
                released,
                "jobs held for calls of an earlier run are now runnable"
            );
        }
        let shutdown = CancellationToken::new();
        let admin_shutdown = CancellationToken::new();
        // Validation runs in the background: serving does not wait for providers.
        let validator_stop = CancellationToken::new();
        let validator = tokio::spawn(
            runtime
                .clone()
                .validate_periodically(validator_stop.clone())
                .instrument(tracing::info_span!("validator")),
        );
        // With or without a worker here: it catches up on writes that failed while NATS was
        // away and prunes evidence; the queue-wide passes where a worker runs (and on SQLite,
        // where they are cheap).
        let housekeeping_stop = CancellationToken::new();
        let upkeep = runtime.config().workflow.worker || runtime.jobs.backend() == "sqlite";
        let housekeeping = (
            housekeeping_stop.clone(),
            tokio::spawn(
                housekeeping::run(runtime.clone(), housekeeping_stop, upkeep)
                    .instrument(tracing::info_span!("housekeeping")),
            ),
        );
        let worker = runtime.config().workflow.worker.then(|| {
            let stop = CancellationToken::new();
            let task = tokio::spawn(
                worker::run(runtime.clone(), stop.clone())
                    .instrument(tracing::info_span!("worker")),
            );
            (stop, task)
        });

        let server = &runtime.server;
        let pending = ConnLimit::new("session", server.max_pending, server.handshake_timeout);
        let admin_limit = ConnLimit::new(
            "admin",
            server.admin_max_connections,
            server.handshake_timeout,
        );
        let rt = runtime.clone();
        let ws_task = net::spawn_http(
            ws_listener,
            move |req, peer| {
                let rt = rt.clone();
                async move { Ok::<_, Infallible>(route(req, peer, rt).await) }
            },
            shutdown.clone(),
            Some(pending),
        );
        let rt = runtime.clone();
        let admin_task = net::spawn_http(
            admin_listener,
            move |req, _| {
                let rt = rt.clone();
                async move { Ok::<_, Infallible>(admin::handle(req, rt).await) }
            },
            admin_shutdown.clone(),
            Some(admin_limit),
        );
        info!(listen = %ws_addr, admin = %admin_addr, "toolgate serving");
        Ok(Server {
            ws_addr,
            admin_addr,
            runtime,
            shutdown,
            admin_shutdown,
            ws_task,
            admin_task,
            worker,
            validator: (validator_stop, validator),
            housekeeping,
            _store_lock: store_lock,
        })
    }

    /// The shared runtime (connection health, live sessions).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The WebSocket URL media servers connect to.
    pub fn session_url(&self) -> String {
        format!("ws://{}/v1/session", self.ws_addr)
    }

    /// Shut down without losing anything accepted, within `drain` overall: stop accepting
    /// calls and stop the worker claiming; let every session finish its in-flight tool calls
    /// (an `auto` call is deferred at its budget) and close with 1001; wait for every
    /// session's task (it runs its tool calls), including live requests that outlived their
    /// session's end and must close their jobs, and for the worker's running attempts; flush and close the job store; last, stop
    /// the admin API (which answered health checks until then).
    pub async fn shutdown(self, drain: Duration) {
        let deadline = tokio::time::Instant::now() + drain;
        self.shutdown.cancel();
        let _ = self.ws_task.await;
        if let Some((stop, _)) = &self.worker {
            stop.cancel();
        }
        self.runtime.shutdown.cancel();
        self.validator.0.cancel();
        while self
            .runtime
            .active_sessions
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.runtime.tasks.close();
        if tokio::time::timeout_at(deadline, self.runtime.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = self.runtime.tasks.len(),
                "tool calls still running at the end of the drain; their jobs' leases will lapse and the worker will take them over"
            );
        }
        if let Some((_, task)) = self.worker {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        let _ = self.validator.1.await;
        // Sessions are over: one last try at releasing what calls that ended while NATS was
        // away held (else another host releases it once this one's heartbeat stops).
        self.housekeeping.0.cancel();
        let _ = self.housekeeping.1.await;
        if self.runtime.jobs.has_local_repairs() {
            let mut failures = 0;
            let last = housekeeping::repair(&self.runtime, &mut failures);
            let _ = tokio::time::timeout(Duration::from_secs(5), last).await;
        }
        self.runtime.jobs.close().await;
        self.runtime.evidence.close().await;
        self.admin_shutdown.cancel();
        let _ = self.admin_task.await;
        info!("toolgate stopped");
    }
}

/// Descriptors kept aside for the job store, the evidence file, provider connections and logs.
const FD_RESERVE: usize = 512;

/// Keep the listeners within the open-files limit, so a flood of calls or silent sockets on the
/// session port runs into toolgate's own bounds (refused, counted, logged) and never into
/// `EMFILE`, which would stop the admin API and every provider request too.
fn fit_to_open_files(server: &mut ServerSettings, limit: u64) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let need = server
        .max_sessions
        .saturating_add(server.max_pending)
        .saturating_add(server.admin_max_connections)
        .saturating_add(FD_RESERVE);
    if limit >= need {
        return;
    }
    let admin = server.admin_max_connections.min(64);
    let room = limit.saturating_sub(FD_RESERVE + admin).max(2);
    let pending = server.max_pending.min(room / 4).max(1);
    let sessions = server.max_sessions.min(room - pending).max(1);
    warn!(
        open_files = limit,
        max_sessions = sessions,
        max_pending_connections = pending,
        admin_max_connections = admin,
        "the open-files limit is below what the configured limits need; serving with these lower limits (raise the hard limit, e.g. LimitNOFILE=)"
    );
    server.max_sessions = sessions;
    server.max_pending = pending;
    server.admin_max_connections = admin;
}

fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    // Small frames, many idle calls: a small eager read buffer (tungstenite's default is
    // 128 KiB per connection; a tool call frame is a few hundred bytes, and a bigger frame
    // grows the buffer for as long as it is read) and writes that go out at once.
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn header_has(req: &Request<Incoming>, name: header::HeaderName, want: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(want))
}

/// Routes on `server.listen`: the v1 WebSocket, relay tickets and the relays (SPEC §13.2).
async fn route(req: Request<Incoming>, peer: SocketAddr, rt: Arc<Runtime>) -> HttpResponse {
    let path = req.uri().path();
    if path == "/v1/session" {
        return upgrade(req, peer, rt).await;
    }
    if path == "/v1/relay/tickets" {
        if req.method() != Method::POST {
            return json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            );
        }
        let snap = rt.snap();
        let Some(org) = bearer(&req).and_then(|t| snap.org_for_session_token(t)) else {
            return unauthorized();
        };
        let org = org.to_owned();
        return crate::relay::issue(req, &org, &rt).await;
    }
    if let Some((id, function)) = crate::hooks::route(path) {
        let (id, function) = (id.to_owned(), function.map(str::to_owned));
        return crate::hooks::handle(req, &id, function.as_deref(), rt).await;
    }
    if let Some((kind, ticket)) = crate::relay::route(path) {
        if req.method() != Method::GET {
            return json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
            );
        }
        let ticket = ticket.to_owned();
        return crate::relay::upgrade(req, kind, &ticket, rt).await;
    }
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "the WebSocket endpoint is /v1/session",
    )
}

fn unauthorized() -> HttpResponse {
    let mut resp = json_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: Bearer <org session token>",
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

async fn upgrade(mut req: Request<Incoming>, peer: SocketAddr, rt: Arc<Runtime>) -> HttpResponse {
    if req.method() != Method::GET {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        );
    }
    let snap = rt.snap();
    let Some(org) = bearer(&req).and_then(|t| snap.org_for_session_token(t)) else {
        debug!(%peer, "session upgrade refused: missing or unknown token");
        return unauthorized();
    };
    let org = org.to_owned();
    let is_upgrade = header_has(&req, header::CONNECTION, "upgrade")
        && header_has(&req, header::UPGRADE, "websocket");
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return json_error(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket only",
        );
    };
    if !is_upgrade {
        return json_error(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket only",
        );
    }
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut resp = json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Sec-WebSocket-Version 13 is required",
        );
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    }
    let accept = derive_accept_key(key.as_bytes());
    // The connection stays counted among those waiting for a session until `session.start`.
    let slot = req.extensions().get::<ConnSlot>().and_then(ConnSlot::take);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max_frame = rt.server.max_frame_bytes;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config(max_frame)),
                )
                .await;
                session::serve_connection(ws, org, rt, slot).await;
            }
            Err(e) => debug!(%peer, error = %e, "upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Default::default())
        .expect("static response parts are valid")
}
