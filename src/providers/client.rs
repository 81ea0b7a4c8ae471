//! The pooled HTTP client every provider request goes through: hyper's connection pool over
//! rustls (the ring provider, the platform's certificate verifier), HTTP/1.1 keep-alive, no
//! redirects, connects bounded at 3 s. Time overall is the caller's: it drops the future.
//!
//! hyper directly, not a higher-level client: a tool call pays for exactly one request, the
//! URL as [`Prepared`] already holds it and the headers it lists. (A general client parsed the
//! URL twice per request for its redirect layer even with redirects off: about 3 % of a tool
//! call's instructions, docs/performance.md.)

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{HeaderName, HeaderValue};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as Pool;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{Delivery, FailureKind, MAX_RESPONSE_BYTES, Prepared, ProviderError, RawResponse};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an idle keep-alive connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per provider host.
const IDLE_PER_HOST: usize = 256;

/// The pooled HTTP client every provider request goes through.
#[derive(Debug, Clone)]
pub struct Client {
    http: Pool<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// The client could not be built (the platform's certificate store could not be read).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

impl Client {
    /// Build the pooled client.
    pub fn new() -> Result<Client, ClientError> {
        use rustls_platform_verifier::ConfigVerifierExt;
        // Installing twice is harmless: the first provider stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = rustls::ClientConfig::with_platform_verifier()
            .map_err(|e| ClientError(format!("cannot set up TLS: {e}")))?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Pool::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Client { http })
    }
}

/// Send a prepared request and read its answer (at most [`MAX_RESPONSE_BYTES`] of body). The
/// caller bounds the time by dropping the future.
pub async fn send(client: &Client, req: &Prepared) -> Result<RawResponse, ProviderError> {
    let request = request(req)?;
    let resp = client
        .http
        .request(request)
        .await
        .map_err(transport_error)?;
    let (parts, mut body) = resp.into_parts();
    let status = parts.status.as_u16();
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                let Ok(chunk) = frame.into_data() else {
                    continue; // trailers
                };
                let room = MAX_RESPONSE_BYTES.saturating_sub(read.len());
                read.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if room <= chunk.len() {
                    break;
                }
            }
            Err(e) => {
                // The status line arrived, so the provider has the request: whatever it did,
                // it did. Reading the rest failed, so treat the answer as unknown.
                let mut err = ProviderError::new(
                    FailureKind::BadResponse,
                    Delivery::PossiblySent,
                    format!("the response body broke off: {}", describe(&e)),
                );
                err.http_status = Some(status);
                // Unknown, but safe to send again when the request carries the provider's
                // idempotency key (Resend's `Idempotency-Key`, a webhook's `webhook-id`): the
                // repeat gets the first one's outcome. Without one (Wati), only a 5xx is.
                let keyed = req
                    .headers
                    .iter()
                    .any(|h| h.name == "idempotency-key" || h.name == "webhook-id");
                err.retryable = status >= 500 || (keyed && (200..300).contains(&status));
                return Err(err);
            }
        }
    }
    Ok(RawResponse {
        status,
        headers: parts.headers,
        body: Bytes::from(read),
    })
}

/// The HTTP request for `req`. Nothing is sent when it cannot be built (a header value a
/// provider adapter made from an input that no HTTP header can carry).
fn request(req: &Prepared) -> Result<Request<Full<Bytes>>, ProviderError> {
    let uri = hyper::Uri::try_from(req.url.as_str())
        .map_err(|_| ProviderError::unsendable("the provider URL is not a valid HTTP target"))?;
    let body = req.body.clone().unwrap_or_default();
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = req.method.clone();
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.reserve(req.headers.len());
    for h in &req.headers {
        let value = HeaderValue::try_from(h.value.as_str()).map_err(|_| {
            ProviderError::unsendable(format!("the {} header cannot carry its value", h.name))
        })?;
        headers.append(HeaderName::from_static(h.name), value);
    }
    Ok(request)
}

fn transport_error(e: hyper_util::client::legacy::Error) -> ProviderError {
    let text = describe(&e);
    if e.is_connect() {
        ProviderError::new(
            FailureKind::Unavailable,
            Delivery::NotSent,
            format!("cannot connect: {text}"),
        )
    } else {
        ProviderError::new(
            FailureKind::Unavailable,
            Delivery::PossiblySent,
            format!("the connection failed: {text}"),
        )
    }
}

/// The error's causes, innermost last. Never the URL (which may carry a phone number in its
/// query): neither hyper nor its connectors put it in their errors.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Header;

    fn prepared(headers: Vec<Header>) -> Prepared {
        Prepared {
            method: hyper::Method::POST,
            url: "http://127.0.0.1:9/hook?x=1".parse().unwrap(),
            headers,
            body: Some(Bytes::from_static(b"{}")),
        }
    }

    #[test]
    fn a_request_carries_the_url_headers_and_body_as_prepared() {
        let req = prepared(vec![
            Header {
                name: "content-type",
                value: "application/json".into(),
                secret: false,
            },
            Header {
                name: "authorization",
                value: "Bearer k".into(),
                secret: true,
            },
        ]);
        let r = request(&req).unwrap();
        assert_eq!(r.method(), hyper::Method::POST);
        assert_eq!(r.uri(), "http://127.0.0.1:9/hook?x=1");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["authorization"], "Bearer k");
    }

    #[test]
    fn a_header_value_no_header_can_carry_is_not_sent_and_not_quoted() {
        let req = prepared(vec![Header {
            name: "authorization",
            value: "Bearer k\r\nx-injected: 1".into(),
            secret: true,
        }]);
        let e = request(&req).unwrap_err();
        assert_eq!(e.delivery, Delivery::NotSent);
        assert!(!e.message.contains("Bearer"), "{}", e.message);
    }
}
