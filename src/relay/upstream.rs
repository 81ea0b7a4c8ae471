//! Opening the upstream side of a relay with the client's own credentials.

use std::time::Duration;

use hyper::StatusCode;
use hyper::header::{HeaderMap, HeaderValue};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The upstream side of a relay.
pub(super) type Upstream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long the upstream has to answer the upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's headers that go upstream as they are: its key (`Authorization`, or the
/// subprotocol offer that browsers use instead), the protocol version it speaks, its
/// organisation and session ids. Nothing else of the client's request is forwarded.
const FORWARDED: [&str; 7] = [
    "authorization",
    "sec-websocket-protocol",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "x-deepgram-session-id",
    "user-agent",
];

/// Why the upstream could not be reached.
#[derive(Debug)]
pub(super) enum Refused {
    /// It answered the upgrade with this status and body (a bad key: 401).
    Status(StatusCode, Vec<u8>),
    /// It could not be reached or did not speak WebSocket.
    Unreachable(String),
}

/// The upstream URL: the configured one with the client's query string (`?model=...`).
pub(super) fn target(base: &str, query: Option<&str>) -> String {
    match query.filter(|q| !q.is_empty()) {
        None => base.to_owned(),
        Some(q) if base.contains('?') => format!("{base}&{q}"),
        Some(q) => format!("{base}?{q}"),
    }
}

/// The host of a URL, for logs (never its query, which might carry a key).
pub(super) fn host_of(url: &str) -> String {
    url.parse::<hyper::Uri>()
        .ok()
        .and_then(|u| {
            u.authority().map(|a| {
                a.host().to_owned() + &a.port().map(|p| format!(":{p}")).unwrap_or_default()
            })
        })
        .unwrap_or_else(|| "the upstream".to_owned())
}

/// Open the upstream WebSocket; `Ok` carries the subprotocol it chose, to answer the client.
pub(super) async fn connect(
    url: &str,
    client: &HeaderMap,
    config: WebSocketConfig,
) -> Result<(Upstream, Option<HeaderValue>), Refused> {
    let mut req = url
        .into_client_request()
        .map_err(|e| Refused::Unreachable(format!("bad upstream URL: {e}")))?;
    for name in FORWARDED {
        for value in client.get_all(name) {
            req.headers_mut().append(name, value.clone());
        }
    }
    let connecting = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(Refused::Unreachable(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Ok((ws, resp))) => {
            let protocol = resp.headers().get("sec-websocket-protocol").cloned();
            Ok((ws, protocol))
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = resp.body().clone().unwrap_or_default();
            // Only the upstream's error document goes back; anything else becomes ours.
            let body = if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                body
            } else {
                serde_json::to_vec(&serde_json::json!({
                    "error": "upstream_refused",
                    "message": format!("the upstream answered HTTP {}", status.as_u16()),
                }))
                .expect("JSON serializes")
            };
            Err(Refused::Status(status, body))
        }
        Ok(Err(e)) => Err(Refused::Unreachable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_query_goes_upstream() {
        assert_eq!(
            target(
                "wss://api.openai.com/v1/realtime",
                Some("model=gpt-realtime")
            ),
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        );
        assert_eq!(
            target("wss://x.test/a?k=1", Some("m=2")),
            "wss://x.test/a?k=1&m=2"
        );
        assert_eq!(target("wss://x.test/a", None), "wss://x.test/a");
        assert_eq!(
            host_of("wss://api.openai.com/v1/realtime?key=sk"),
            "api.openai.com"
        );
        assert_eq!(host_of("ws://127.0.0.1:9/x"), "127.0.0.1:9");
    }
}
