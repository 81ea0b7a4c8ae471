//! Relay mode's fake upstream: a WebSocket server on loopback (tokio-tungstenite, TCP_NODELAY)
//! that stands in for OpenAI Realtime or Deepgram Voice Agent and echoes every data frame back
//! at once, text as text and binary as binary.
//!
//! On connecting it greets like the real thing (`session.created`, or Deepgram's `Welcome`), so
//! the relay sees the start of a real session. For each frame of this tool (see
//! [`crate::frames`]) it files, on the process clock, when it read the frame and when it
//! handed the echo over for writing; the stamps are filed after the echo is written, so filing
//! costs the echo nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::calls::now_ns;
use crate::frames::{FramePhase, FrameTable, frame_id};

/// Where the upstream files what it measured.
#[derive(Default, Clone)]
pub struct Routes {
    /// Frames through the relay (`ltr-`).
    pub relay: Option<Arc<FrameTable>>,
    /// Frames sent straight here (`ltd-`).
    pub direct: Option<Arc<FrameTable>>,
}

/// Counters of what the upstream saw.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    connections: AtomicU64,
    authorized: AtomicU64,
    refused: AtomicU64,
    frames: AtomicU64,
    foreign: AtomicU64,
    out_of_order: AtomicU64,
    closed: AtomicU64,
    first_path: Mutex<Option<String>>,
}

/// A snapshot of [`UpstreamStats`].
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamReport {
    /// Where it listened.
    pub listen: String,
    /// WebSocket connections accepted.
    pub connections: u64,
    /// Of those, with an `Authorization` header (the relay forwards the client's).
    pub authorized: u64,
    /// Upgrades that failed.
    pub refused: u64,
    /// Frames of this tool echoed.
    pub frames: u64,
    /// Other data frames echoed (session configuration, toolgate's own events).
    pub foreign: u64,
    /// Frames that arrived on a connection after a later-numbered one (a relay must keep order).
    pub out_of_order: u64,
    /// Connections that ended.
    pub closed: u64,
    /// The first request path it saw (the relay passes the client's query on).
    pub first_path: Option<String>,
}

/// A running fake upstream.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    stats: Arc<UpstreamStats>,
    stop: watch::Sender<bool>,
}

impl Upstream {
    /// What it saw so far.
    pub fn report(&self) -> UpstreamReport {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UpstreamReport {
            listen: self.addr.to_string(),
            connections: get(&s.connections),
            authorized: get(&s.authorized),
            refused: get(&s.refused),
            frames: get(&s.frames),
            foreign: get(&s.foreign),
            out_of_order: get(&s.out_of_order),
            closed: get(&s.closed),
            first_path: s.first_path.lock().ok().and_then(|p| p.clone()),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The sockets' settings: small buffers, every frame written at once.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8192)
        .write_buffer_size(0)
}

/// Bind `listen` and serve until the returned [`Upstream`] is dropped.
pub async fn start(listen: &str, routes: Routes) -> Result<Upstream, String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("the fake upstream cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("the fake upstream's address: {e}"))?;
    let stats = Arc::new(UpstreamStats::default());
    let (stop, mut stopped) = watch::channel(false);
    let s = stats.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopped.changed() => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream, routes.clone(), s.clone()));
                }
                Err(e) => {
                    eprintln!("fake upstream: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
    Ok(Upstream { addr, stats, stop })
}

/// The greeting the real upstream sends first.
fn greeting(path: &str) -> Option<String> {
    if path.contains("/v1/agent/converse") {
        Some(r#"{"type":"Welcome","request_id":"loadtest"}"#.to_owned())
    } else if path.contains("realtime") {
        Some(
            serde_json::json!({
                "type": "session.created",
                "event_id": "event_loadtest_0",
                "session": {"type": "realtime", "id": "sess_loadtest", "object": "realtime.session",
                            "model": "loadtest", "tools": []},
            })
            .to_string(),
        )
    } else {
        None
    }
}

async fn serve(stream: TcpStream, routes: Routes, stats: Arc<UpstreamStats>) {
    let seen: Arc<Mutex<(String, bool)>> = Arc::default();
    let s = seen.clone();
    #[allow(clippy::result_large_err)] // tungstenite's callback type
    let callback = move |req: &Request, resp: Response| {
        if let Ok(mut seen) = s.lock() {
            *seen = (
                req.uri().to_string(),
                req.headers().contains_key("authorization"),
            );
        }
        Ok(resp)
    };
    let mut ws =
        match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config()))
            .await
        {
            Ok(ws) => ws,
            Err(_) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
    let (path, authorized) = seen.lock().map(|s| s.clone()).unwrap_or_default();
    stats.connections.fetch_add(1, Ordering::Relaxed);
    if authorized {
        stats.authorized.fetch_add(1, Ordering::Relaxed);
    }
    if let Ok(mut first) = stats.first_path.lock() {
        first.get_or_insert_with(|| path.clone());
    }
    if let Some(hello) = greeting(&path)
        && ws.send(Message::text(hello)).await.is_err()
    {
        stats.closed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut last: Option<u32> = None;
    while let Some(msg) = ws.next().await {
        let arrival = now_ns();
        let id = match &msg {
            Ok(Message::Text(t)) => frame_id(t.as_bytes(), false),
            Ok(Message::Binary(b)) => frame_id(b, true),
            // Pings are answered by tungstenite; a close is answered on the next read.
            Ok(_) => continue,
            Err(_) => break,
        };
        let Ok(msg) = msg else { break };
        let echo = now_ns();
        if ws.send(msg).await.is_err() {
            break;
        }
        match id {
            Some((phase, n)) => {
                stats.frames.fetch_add(1, Ordering::Relaxed);
                if last.is_some_and(|l| n <= l) {
                    stats.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                last = Some(n);
                let table = match phase {
                    FramePhase::Relay => &routes.relay,
                    FramePhase::Direct => &routes.direct,
                };
                if let Some(t) = table {
                    t.mark_upstream(n, arrival, echo);
                }
            }
            None => {
                stats.foreign.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stats.closed.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_follow_the_path() {
        assert!(
            greeting("/v1/realtime?model=x")
                .unwrap()
                .contains("session.created")
        );
        assert!(greeting("/v1/agent/converse").unwrap().contains("Welcome"));
        assert_eq!(greeting("/other"), None);
    }
}
