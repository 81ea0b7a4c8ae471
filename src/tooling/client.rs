//! A media-server-side client of the wire protocol: what the demo, the load generator and the
//! integration tests use to play calls against a real toolgate over a real WebSocket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The upgrade was refused with this HTTP status.
    #[error("the server refused the WebSocket with HTTP {0}")]
    Refused(u16),
    /// A WebSocket or network error.
    #[error("websocket: {0}")]
    Ws(#[from] WsError),
    /// Nothing arrived in time.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// The server closed the socket.
    #[error("the server closed the socket ({0:?})")]
    Closed(Option<u16>),
    /// A frame that is not JSON text.
    #[error("unexpected frame: {0}")]
    Unexpected(String),
}

/// A frame received from toolgate.
#[derive(Debug, Clone)]
pub struct Received {
    /// The parsed frame.
    pub frame: Value,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The frame's `type`.
    pub fn ty(&self) -> &str {
        self.frame.get("type").and_then(Value::as_str).unwrap_or("")
    }
}

/// One call's socket.
pub struct CallClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// When the socket opened.
    pub opened: Instant,
}

impl CallClient {
    /// Open `ws://host:port/v1/session` with an optional bearer token.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<CallClient, ClientError> {
        let mut request = url.into_client_request()?;
        if let Some(t) = token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::Unexpected("token is not a valid header".into()))?,
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => {
                let _ = match ws.get_ref() {
                    MaybeTlsStream::Plain(s) => s.set_nodelay(true),
                    _ => Ok(()),
                };
                Ok(CallClient {
                    ws,
                    opened: Instant::now(),
                })
            }
            Err(WsError::Http(resp)) => Err(ClientError::Refused(resp.status().as_u16())),
            Err(e) => Err(e.into()),
        }
    }

    /// Send a JSON frame.
    pub async fn send(&mut self, frame: &Value) -> Result<(), ClientError> {
        self.send_text(&frame.to_string()).await
    }

    /// Send raw text (for malformed-frame tests).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        Ok(self.ws.send(Message::text(text)).await?)
    }

    /// Send a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        Ok(self.ws.send(Message::binary(bytes)).await?)
    }

    /// The next JSON frame, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Received, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| ClientError::Timeout(timeout))?;
            let at = Instant::now();
            match next {
                Some(Ok(Message::Text(t))) => {
                    let frame = serde_json::from_str(&t)
                        .map_err(|_| ClientError::Unexpected(t.to_string()))?;
                    return Ok(Received { frame, at });
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(ClientError::Closed(
                        frame.map(|f: CloseFrame| f.code.into()),
                    ));
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(ClientError::Unexpected("binary frame".into()));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ClientError::Closed(None)),
            }
        }
    }

    /// Frames until (and including) the `tool.result` for `id`. Other frames are returned too,
    /// in arrival order.
    pub async fn until_result(
        &mut self,
        id: &str,
        timeout: Duration,
    ) -> Result<Vec<Received>, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = self.recv(left).await?;
            let done = r.ty() == "tool.result" && r.frame["id"] == id;
            out.push(r);
            if done {
                return Ok(out);
            }
        }
    }

    /// Wait for the close frame and return its code.
    pub async fn closed(&mut self, timeout: Duration) -> Result<Option<u16>, ClientError> {
        loop {
            match self.recv(timeout).await {
                Err(ClientError::Closed(code)) => return Ok(code),
                Err(ClientError::Ws(_)) => return Ok(None),
                Err(e) => return Err(e),
                Ok(_) => continue,
            }
        }
    }

    /// Drop the TCP connection without a close handshake (a media server crash).
    pub fn abort(self) {
        drop(self.ws);
    }

    /// Close politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
