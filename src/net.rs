//! Listening sockets and the HTTP/1.1 server loop shared by the WebSocket listener, the admin
//! API and the mock providers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The response type of every toolgate HTTP handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// Bind a listener, with the address in the error.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Files and folders this process creates are its own alone (0600 / 0700): the job store, its
/// WAL and the evidence file hold callers' numbers and addresses until they are pruned.
pub fn private_files() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    });
}

/// Raise this process's open-files soft limit to its hard limit, once: every call, session and
/// provider connection holds a descriptor, and the common soft limit of 1,024 would stop a
/// sidecar long before its `max_sessions`. Returns the soft limit in force afterwards.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    static RAISED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RAISED.get_or_init(|| {
        let before = getrlimit(Resource::Nofile);
        let soft = before.current.unwrap_or(u64::MAX);
        let hard = before.maximum;
        if hard.is_none_or(|h| h > soft) {
            let want = Rlimit {
                current: hard,
                maximum: hard,
            };
            match setrlimit(Resource::Nofile, want) {
                Ok(()) => {
                    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
                    info!(
                        from = soft,
                        to = now,
                        "open-files limit raised to the hard limit"
                    );
                    return now;
                }
                Err(e) => {
                    warn!(soft, hard = ?hard, error = %e, "cannot raise the open-files limit")
                }
            }
        }
        soft
    })
}

/// A bound on one listener's connections and on how long a new one may stay silent. When the
/// bound is reached the *oldest* connection is closed to make room: a peer that means business
/// sends its request at once, so a flood of silent sockets evicts itself and a real call still
/// gets in; the descriptors stay bounded whatever the flood (and the admin API, bounded on its
/// own, keeps answering while the session port is flooded).
#[derive(Debug, Clone)]
pub struct ConnLimit {
    /// Which listener, for logs.
    pub name: &'static str,
    admitted: Arc<Mutex<Admitted>>,
    /// How long a connection may take to send its request headers.
    pub header_timeout: Duration,
}

#[derive(Debug)]
struct Admitted {
    max: usize,
    next: u64,
    /// Oldest first.
    live: std::collections::BTreeMap<u64, CancellationToken>,
    evicted: u64,
    logged_at: Option<tokio::time::Instant>,
}

impl ConnLimit {
    /// At most `max` connections at once, each to send its request within `header_timeout`.
    pub fn new(name: &'static str, max: usize, header_timeout: Duration) -> ConnLimit {
        ConnLimit {
            name,
            admitted: Arc::new(Mutex::new(Admitted {
                max: max.max(1),
                next: 0,
                live: Default::default(),
                evicted: 0,
                logged_at: None,
            })),
            header_timeout,
        }
    }

    /// Count a new connection in, closing the oldest one when the bound is reached.
    pub fn admit(&self) -> Admission {
        let token = CancellationToken::new();
        let mut a = self.admitted.lock().expect("admission lock");
        while a.live.len() >= a.max {
            let Some((_, oldest)) = a.live.pop_first() else {
                break;
            };
            oldest.cancel();
            a.evicted += 1;
        }
        let now = tokio::time::Instant::now();
        if a.evicted > 0
            && a.logged_at
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            warn!(
                listener = self.name,
                closed = a.evicted,
                max = a.max,
                "at the connection limit: the oldest connections were closed to make room"
            );
            a.evicted = 0;
            a.logged_at = Some(now);
        }
        let id = a.next;
        a.next += 1;
        a.live.insert(id, token.clone());
        Admission {
            id,
            token,
            admitted: self.admitted.clone(),
        }
    }
}

/// One admitted connection's place under its listener's [`ConnLimit`]; dropping it frees the
/// place.
#[derive(Debug)]
pub struct Admission {
    id: u64,
    token: CancellationToken,
    admitted: Arc<Mutex<Admitted>>,
}

impl Admission {
    /// Resolves when the connection was closed to make room for a newer one.
    pub async fn evicted(&self) {
        self.token.cancelled().await
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admitted
            .lock()
            .expect("admission lock")
            .live
            .remove(&self.id);
    }
}

/// The admission an accepted connection holds, in its requests' extensions: an upgrade handler
/// takes it to keep the connection counted until its own handshake is over.
#[derive(Debug, Clone, Default)]
pub struct ConnSlot(Arc<Mutex<Option<Admission>>>);

impl ConnSlot {
    /// Take the admission out of the HTTP connection.
    pub fn take(&self) -> Option<Admission> {
        self.0.lock().expect("slot lock").take()
    }
}

/// Serve HTTP/1.1 on `listener` until `shutdown` is cancelled. Each accepted socket gets
/// `TCP_NODELAY` (Nagle plus delayed ACK would add 40 ms to small frames) and upgrades are
/// allowed (the WebSocket listener needs them). With a `limit`, a connection over it is closed
/// at once, and one that does not send its request headers in time is closed.
///
/// A handler that returns `Err` aborts the connection without answering (the mock providers
/// use this to act out a connection reset).
pub fn spawn_http<H, F, E>(
    listener: TcpListener,
    handler: H,
    shutdown: CancellationToken,
    limit: Option<ConnLimit>,
) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<HttpResponse, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let slot = ConnSlot::default();
            let evicted = limit.as_ref().map(|l| {
                let admission = l.admit();
                let token = admission.token.clone();
                *slot.0.lock().expect("slot lock") = Some(admission);
                token
            });
            let header_timeout = limit
                .as_ref()
                .map_or(Duration::from_secs(10), |l| l.header_timeout);
            let _ = stream.set_nodelay(true);
            // Dead peers behind NATs and crashed hosts send no FIN: let the kernel notice too.
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(30))
                .with_interval(Duration::from_secs(10));
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let conn_slot = slot.clone();
                let service = service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(conn_slot.clone());
                    let handler = handler.clone();
                    async move { handler(req, peer).await }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(e) = res {
                            debug!(error = %e, "http connection ended with an error");
                        }
                    }
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                    // Closed to make room; once upgraded, the connection's new owner holds the
                    // admission and watches it instead.
                    _ = async { evicted.as_ref().unwrap().cancelled().await }, if evicted.is_some() => {
                        debug!("connection closed to make room for a newer one");
                    }
                }
                drop(slot);
            });
        }
    })
}

/// Read a request body of at most `limit` bytes; `Err` is the response to send (413 when it
/// is larger, 400 when it breaks off).
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, HttpResponse> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("the body is over {limit} bytes"),
            ))
        }
        Err(_) => Err(json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request body could not be read",
        )),
    }
}

/// A JSON response.
pub fn json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

/// A JSON document that is already text (the §2 output string as a Retell or ElevenLabs answer).
pub fn raw_json(status: StatusCode, body: String) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// The SPEC's error shape: `{"error": code, "message": text}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    json(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}
