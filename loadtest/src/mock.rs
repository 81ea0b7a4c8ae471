//! The mock provider: an in-process HTTP/1.1 server (hyper) that answers like the providers a
//! load test points toolgate at, after a latency drawn from a configurable distribution.
//!
//! | route | answers like |
//! |---|---|
//! | `POST /emails` | Resend: `200 {"id": "..."}` |
//! | `GET /domains` | Resend's validation: `200 {"data": []}` |
//! | `GET /healthz` | a webhook receiver's health check: `200` |
//! | any other `POST` (`/hook`) | a Standard Webhooks receiver: `200 {"ok":true}` |
//!
//! `--mock-error-rate` answers that share of actions with `503` instead. Signatures are not
//! checked, but webhook requests without a `webhook-signature` header are counted.
//!
//! Each action request is timed from the moment hyper hands it over (headers read) to the
//! moment its response body is handed back for writing, and filed under the tool call whose
//! token (see [`crate::calls`]) its body carries.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::RngExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::calls::{CallTable, Phase, find_token, now_ns};
use crate::latency::Latency;

/// How the mock behaves.
#[derive(Debug, Clone)]
pub struct MockSettings {
    /// How long an action takes.
    pub latency: Latency,
    /// The share of actions answered with 503.
    pub error_rate: f64,
}

/// Where the mock files what it measured.
#[derive(Default, Clone)]
pub struct Routes {
    /// Calls through the sidecar (`ltc-` tokens).
    pub sidecar: Option<Arc<CallTable>>,
    /// Baseline requests (`ltb-` tokens).
    pub baseline: Option<Arc<CallTable>>,
}

/// Counters of everything the mock answered.
#[derive(Debug, Default)]
pub struct MockStats {
    requests: AtomicU64,
    webhooks: AtomicU64,
    emails: AtomicU64,
    validations: AtomicU64,
    not_found: AtomicU64,
    errors: AtomicU64,
    unmatched: AtomicU64,
    unsigned: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// A snapshot of [`MockStats`].
#[derive(Debug, Clone, Serialize)]
pub struct MockReport {
    /// Where it listened.
    pub listen: String,
    /// Its latency distribution.
    pub latency: String,
    /// Its error rate.
    pub error_rate: f64,
    /// Requests of any kind.
    pub requests: u64,
    /// Webhook deliveries.
    pub webhooks: u64,
    /// Resend-like `POST /emails`.
    pub emails: u64,
    /// Validation and health checks (`GET /domains`, `GET /healthz`).
    pub validations: u64,
    /// Requests for routes the mock does not serve.
    pub not_found: u64,
    /// Actions answered 503 on purpose.
    pub errors_503: u64,
    /// Actions whose body carried no token of this run.
    pub unmatched: u64,
    /// Webhook deliveries without a `webhook-signature` header.
    pub unsigned: u64,
    /// The most requests it held at once.
    pub max_in_flight: u64,
}

impl MockStats {
    /// Requests of any kind so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A running mock provider.
pub struct Mock {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it answered.
    pub stats: Arc<MockStats>,
    settings: MockSettings,
    stop: watch::Sender<bool>,
}

impl Mock {
    /// What it answered so far.
    pub fn report(&self) -> MockReport {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MockReport {
            listen: self.addr.to_string(),
            latency: self.settings.latency.to_string(),
            error_rate: self.settings.error_rate,
            requests: get(&s.requests),
            webhooks: get(&s.webhooks),
            emails: get(&s.emails),
            validations: get(&s.validations),
            not_found: get(&s.not_found),
            errors_503: get(&s.errors),
            unmatched: get(&s.unmatched),
            unsigned: get(&s.unsigned),
            max_in_flight: get(&s.max_in_flight),
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Ctx {
    settings: MockSettings,
    routes: Routes,
    stats: Arc<MockStats>,
    ids: AtomicU64,
}

/// Bind `listen` and serve until the returned [`Mock`] is dropped.
pub async fn start(listen: &str, settings: MockSettings, routes: Routes) -> Result<Mock, String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("the mock provider cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("the mock provider's address: {e}"))?;
    let stats = Arc::new(MockStats::default());
    let ctx = Arc::new(Ctx {
        settings: settings.clone(),
        routes,
        stats: stats.clone(),
        ids: AtomicU64::new(0),
    });
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopped.changed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    eprintln!("mock provider: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, ctx.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Mock {
        addr,
        stats,
        settings,
        stop,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Webhook,
    Email,
    Validation,
    NotFound,
}

/// Counts a request in flight for as long as it lives.
struct InFlight(Arc<MockStats>);

impl InFlight {
    fn new(stats: &Arc<MockStats>) -> InFlight {
        let now = stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Result<Response<TimedBody>, Infallible> {
    let arrival = now_ns();
    let stats = &ctx.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight::new(stats);
    let route = match (req.method(), req.uri().path()) {
        (&Method::POST, "/emails") => Route::Email,
        (&Method::GET, "/domains" | "/healthz") => Route::Validation,
        (&Method::POST, _) => Route::Webhook,
        _ => Route::NotFound,
    };
    match route {
        Route::Webhook => {
            stats.webhooks.fetch_add(1, Ordering::Relaxed);
            if !req.headers().contains_key("webhook-signature") {
                stats.unsigned.fetch_add(1, Ordering::Relaxed);
            }
        }
        Route::Email => {
            stats.emails.fetch_add(1, Ordering::Relaxed);
        }
        Route::Validation => {
            stats.validations.fetch_add(1, Ordering::Relaxed);
            let body = if req.uri().path() == "/domains" {
                r#"{"object":"list","data":[]}"#
            } else {
                r#"{"ok":true}"#
            };
            return Ok(respond(
                StatusCode::OK,
                Bytes::from_static(body.as_bytes()),
                None,
            ));
        }
        Route::NotFound => {
            stats.not_found.fetch_add(1, Ordering::Relaxed);
            return Ok(respond(
                StatusCode::NOT_FOUND,
                Bytes::from_static(br#"{"error":"not_found"}"#),
                None,
            ));
        }
    }
    let body = match req.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let timing = match find_token(&body) {
        Some((phase, n)) => {
            let table = match phase {
                Phase::Sidecar => ctx.routes.sidecar.as_ref(),
                Phase::Baseline => ctx.routes.baseline.as_ref(),
            };
            table.filter(|t| (n as usize) < t.len()).map(|t| Timing {
                table: t.clone(),
                n,
                arrival,
            })
        }
        None => None,
    };
    if timing.is_none() {
        stats.unmatched.fetch_add(1, Ordering::Relaxed);
    }
    let (delay, fail) = {
        let mut rng = rand::rng();
        let delay = ctx.settings.latency.sample(&mut rng);
        let fail = ctx.settings.error_rate > 0.0 && rng.random_bool(ctx.settings.error_rate);
        (delay, fail)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if fail {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        return Ok(respond(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(br#"{"error":"unavailable","message":"mock provider error"}"#),
            timing,
        ));
    }
    let body = match route {
        Route::Email => {
            let id = ctx.ids.fetch_add(1, Ordering::Relaxed);
            Bytes::from(format!(r#"{{"id":"4ef9a417-02e9-4d39-ad75-{id:012x}"}}"#))
        }
        _ => Bytes::from_static(br#"{"ok":true}"#),
    };
    Ok(respond(StatusCode::OK, body, timing))
}

fn respond(status: StatusCode, body: Bytes, timing: Option<Timing>) -> Response<TimedBody> {
    let mut resp = Response::new(TimedBody {
        data: Some(body),
        timing,
    });
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Which call a response answers, and when its request arrived.
struct Timing {
    table: Arc<CallTable>,
    n: u32,
    arrival: u64,
}

impl Timing {
    fn file(self) {
        self.table
            .mark_provider(self.n, self.arrival, now_ns().saturating_sub(self.arrival));
    }
}

/// A one-chunk body that files the provider's own time when hyper takes the chunk to write
/// it (or, failing that, when it is dropped).
struct TimedBody {
    data: Option<Bytes>,
    timing: Option<Timing>,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(t) = this.timing.take() {
            t.file();
        }
        Poll::Ready(this.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        if let Some(t) = self.timing.take() {
            t.file();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Arrivals, Schedule};
    use std::time::Duration;

    async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn actions_are_timed_and_filed_under_their_call() {
        let schedule =
            Arc::new(Schedule::build(10.0, Duration::from_secs(1), Arrivals::Fixed, 0).unwrap());
        let table = Arc::new(CallTable::new(Phase::Sidecar, schedule));
        let mock = start(
            "127.0.0.1:0",
            MockSettings {
                latency: "fixed:20ms".parse().unwrap(),
                error_rate: 0.0,
            },
            Routes {
                sidecar: Some(table.clone()),
                baseline: None,
            },
        )
        .await
        .unwrap();
        let (status, body) = post(
            mock.addr,
            "/hook",
            r#"{"data":{"inputs":{"reason":"load ltc-3"}}}"#,
        )
        .await;
        assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
        let v = table.view(3);
        assert_eq!(v.provider_requests, 1);
        assert!(v.provider_own >= 20_000_000, "own {} ns", v.provider_own);
        assert!(v.provider_own < 200_000_000, "own {} ns", v.provider_own);

        let (status, body) = post(mock.addr, "/emails", r#"{"subject":"ltc-4"}"#).await;
        assert_eq!(status, 200);
        assert!(body.starts_with(r#"{"id":""#), "{body}");
        assert_eq!(table.view(4).provider_requests, 1);

        // No token, or a token of a phase that is not running: answered, not filed.
        let (status, _) = post(mock.addr, "/hook", r#"{"x":1}"#).await;
        assert_eq!(status, 200);
        let (status, _) = post(mock.addr, "/hook", r#"{"x":"ltb-1"}"#).await;
        assert_eq!(status, 200);
        let r = mock.report();
        assert_eq!((r.requests, r.webhooks, r.emails), (4, 3, 1));
        assert_eq!((r.unmatched, r.unsigned), (2, 3));
    }

    #[tokio::test]
    async fn errors_are_503() {
        let mock = start(
            "127.0.0.1:0",
            MockSettings {
                latency: "0".parse().unwrap(),
                error_rate: 1.0,
            },
            Routes::default(),
        )
        .await
        .unwrap();
        let (status, _) = post(mock.addr, "/hook", "{}").await;
        assert_eq!(status, 503);
        assert_eq!(mock.report().errors_503, 1);
    }
}
