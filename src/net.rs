//! Listening sockets and the HTTP/1.1 server loop shared by the WebSocket listener, the admin
//! API and the mock providers.

use std::future::Future;
use std::net::SocketAddr;
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
use tracing::debug;

/// The response type of every toolgate HTTP handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// Bind a listener, with the address in the error.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Serve HTTP/1.1 on `listener` until `shutdown` is cancelled. Each accepted socket gets
/// `TCP_NODELAY` (Nagle plus delayed ACK would add 40 ms to small frames) and upgrades are
/// allowed (the WebSocket listener needs them).
///
/// A handler that returns `Err` aborts the connection without answering (the mock providers
/// use this to act out a connection reset).
pub fn spawn_http<H, F, E>(
    listener: TcpListener,
    handler: H,
    shutdown: CancellationToken,
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
            let _ = stream.set_nodelay(true);
            // Dead peers behind NATs and crashed hosts send no FIN: let the kernel notice too.
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(30))
                .with_interval(Duration::from_secs(10));
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { handler(req, peer).await }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
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
                }
            });
        }
    })
}

/// A JSON response.
pub fn json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

/// The SPEC's error shape: `{"error": code, "message": text}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    json(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}
