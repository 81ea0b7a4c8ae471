//! Provider adapters: real HTTP to Resend, Wati and signed webhooks (SPEC §5).
//!
//! Each adapter is two pure functions, `prepare` (inputs to an HTTP request) and `interpret`
//! (HTTP response to [`Accepted`] or a classified [`ProviderError`]); [`send`] between them is
//! the only I/O, through one pooled [`Client`]. Providers know nothing of sessions or
//! budgets: the caller decides how long to wait by dropping the future.
//!
//! Errors are classified the way the rest of toolgate needs to decide between `failed`, a
//! deferral and a retry without double sends: what failed ([`FailureKind`]), whether a retry
//! may help (`retryable`), and whether the request was *not sent*, *possibly sent* or
//! *answered* ([`Delivery`]).

mod client;
pub mod resend;
pub mod wati;
pub mod webhook;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};

pub use client::{Client, ClientError, send};

use crate::bindings::{Resolution, Resolved};
use crate::catalog::{Action, Provider};
use crate::codes::Code;
use crate::secret::{Secret, SecretBytes};

/// The `User-Agent` toolgate sends (Resend answers 403 without one).
pub const USER_AGENT: &str = concat!("toolgate/", env!("CARGO_PKG_VERSION"));

/// Largest provider response body read; the rest is dropped.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Provider-specific connection settings, secrets resolved.
#[derive(Debug)]
pub enum ConnectionSettings {
    /// Resend.
    Resend {
        /// API key (`re_...`).
        api_key: Secret,
        /// Default sender, `Name <addr@domain>`.
        from: String,
        /// API base, default `https://api.resend.com`.
        base_url: Url,
    },
    /// Wati.
    Wati {
        /// Tenant endpoint as the dashboard shows it, without a trailing slash.
        endpoint: Url,
        /// Bearer token, without any pasted `Bearer ` prefix.
        token: Secret,
    },
    /// Signed webhook.
    Webhook {
        /// Where to POST.
        url: Url,
        /// The decoded signing key of the `whsec_...` secret.
        key: SecretBytes,
        /// Checked with a GET when the connection is validated.
        health_url: Option<Url>,
    },
}

impl ConnectionSettings {
    /// The provider these settings are for.
    pub fn provider(&self) -> Provider {
        match self {
            ConnectionSettings::Resend { .. } => Provider::Resend,
            ConnectionSettings::Wati { .. } => Provider::Wati,
            ConnectionSettings::Webhook { .. } => Provider::Webhook,
        }
    }

    /// The credentials as text, to scrub from anything a provider echoes back.
    pub fn secret_texts(&self) -> Vec<String> {
        use base64::Engine;
        match self {
            ConnectionSettings::Resend { api_key, .. } => vec![api_key.expose().to_owned()],
            ConnectionSettings::Wati { token, .. } => vec![token.expose().to_owned()],
            ConnectionSettings::Webhook { key, .. } => {
                vec![base64::engine::general_purpose::STANDARD.encode(key.expose())]
            }
        }
    }
}

/// A configured connection as the adapters see it: only its provider settings. The config's
/// connection is one (as is a shared one), so the adapters need not know the config.
pub trait Configured {
    /// The provider settings, secrets resolved.
    fn settings(&self) -> &ConnectionSettings;
}

impl Configured for ConnectionSettings {
    fn settings(&self) -> &ConnectionSettings {
        self
    }
}

impl<T: Configured + ?Sized> Configured for Arc<T> {
    fn settings(&self) -> &ConnectionSettings {
        (**self).settings()
    }
}

/// The keys a `[[connections]]` entry of this provider takes besides the common ones (SPEC §8).
pub fn keys(provider: Provider) -> &'static [&'static str] {
    match provider {
        Provider::Resend => resend::KEYS,
        Provider::Wati => wati::KEYS,
        Provider::Webhook => webhook::KEYS,
    }
}

/// The provider's documented rate limit, as (requests, period): a connection's `rate` when
/// it sets none (webhooks have none).
pub fn default_rate(provider: Provider) -> Option<(u32, Duration)> {
    match provider {
        Provider::Resend => Some(resend::DEFAULT_RATE),
        Provider::Wati => Some(wati::DEFAULT_RATE),
        Provider::Webhook => None,
    }
}

/// What failed, in the terms of the model-facing error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// A definitive refusal (4xx, Wati `result:false`).
    Rejected,
    /// The provider refused the credentials (401/403).
    AuthFailed,
    /// 5xx, 429 or unreachable.
    Unavailable,
    /// No answer within the budget.
    Timeout,
    /// An answer that cannot be understood.
    BadResponse,
}

impl FailureKind {
    /// The error code in `tool.result.output`.
    pub fn error_code(self) -> Code {
        match self {
            FailureKind::Rejected => Code::ProviderRejected,
            FailureKind::AuthFailed => Code::ProviderAuthFailed,
            FailureKind::Unavailable => Code::ProviderUnavailable,
            FailureKind::Timeout => Code::Timeout,
            FailureKind::BadResponse => Code::BadResponse,
        }
    }

    /// The error code as the output, the evidence and the metrics spell it.
    pub fn code(self) -> &'static str {
        self.error_code().as_str()
    }
}

/// Whether the provider may have acted on the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// The request never left (connect failure, cancelled first): safe to send again.
    NotSent,
    /// It may or may not have been acted on (timeout, reset, 5xx).
    PossiblySent,
    /// The provider answered definitively.
    Answered,
}

/// A classified provider failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    /// What failed.
    pub kind: FailureKind,
    /// Whether the provider may have acted.
    pub delivery: Delivery,
    /// Whether a later retry may succeed.
    pub retryable: bool,
    /// How long the provider asked us to wait (`Retry-After`, `ratelimit-reset`).
    pub retry_after: Option<Duration>,
    /// The HTTP status, when there was one.
    pub http_status: Option<u16>,
    /// The provider's own error name (Resend `name`), when given.
    pub provider_code: Option<String>,
    /// The provider's message (or ours, for transport errors).
    pub message: String,
    /// Action input names the provider said were wrong or missing.
    pub fields: Vec<String>,
    /// The response body, when there was one (for the evidence).
    pub body: Option<Bytes>,
}

impl ProviderError {
    fn new(kind: FailureKind, delivery: Delivery, message: impl Into<String>) -> Self {
        ProviderError {
            kind,
            delivery,
            retryable: matches!(kind, FailureKind::Unavailable | FailureKind::Timeout),
            retry_after: None,
            http_status: None,
            provider_code: None,
            message: message.into(),
            fields: Vec::new(),
            body: None,
        }
    }

    /// The live request ran out of budget.
    pub fn timeout(after: Duration) -> Self {
        ProviderError::new(
            FailureKind::Timeout,
            Delivery::PossiblySent,
            format!("no answer within {} ms", after.as_millis()),
        )
    }

    /// The request could not be built (a value that is not valid in a URL or header).
    pub fn unsendable(message: impl Into<String>) -> Self {
        let mut e = ProviderError::new(FailureKind::Rejected, Delivery::NotSent, message);
        e.retryable = false;
        e
    }

    /// Classify an HTTP status that the adapter has no more specific reading of.
    pub(crate) fn from_status(raw: &RawResponse, message: String) -> Self {
        let status = raw.status;
        let (kind, delivery) = match status {
            401 | 403 => (FailureKind::AuthFailed, Delivery::Answered),
            408 | 429 => (FailureKind::Unavailable, Delivery::Answered),
            500..=599 => (FailureKind::Unavailable, Delivery::PossiblySent),
            _ => (FailureKind::Rejected, Delivery::Answered),
        };
        let mut e = ProviderError::new(kind, delivery, message);
        e.retryable = kind == FailureKind::Unavailable;
        e.http_status = Some(status);
        e.retry_after = retry_after(&raw.headers);
        e.body = Some(raw.body.clone());
        e
    }

    /// Whether this failure says the credentials are bad (marks the connection `error`).
    pub fn is_auth(&self) -> bool {
        self.kind == FailureKind::AuthFailed
    }

    /// Whether the failure says the provider is in trouble (5xx, 429, unreachable, slow),
    /// rather than that this request was wrong: what feeds a connection's failure streak.
    pub fn is_provider_trouble(&self) -> bool {
        matches!(self.kind, FailureKind::Unavailable | FailureKind::Timeout)
            // "Slow down" and "that key is still running" are about our requests, not its health.
            && !matches!(self.http_status, Some(429 | 409))
    }

    /// `code: message`, as job records keep it.
    pub fn summary(&self) -> String {
        format!("{}: {}", self.kind.code(), self.message)
    }

    /// Scrub the connection's credentials and redact phone numbers and emails from the
    /// provider's message: providers echo inputs and, when misbehaving, headers.
    pub fn redact_for(&mut self, conn: &impl Configured) {
        let secrets = conn.settings().secret_texts();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        if let std::borrow::Cow::Owned(clean) = crate::redact::text(&self.message, &secrets) {
            self.message = clean;
        }
    }
}

/// A provider's acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The provider's id for the message, when it gives one.
    pub message_id: Option<String>,
    /// HTTP status.
    pub http_status: u16,
    /// Response body (for the evidence).
    pub body: Bytes,
}

/// One request header; `secret` ones are never logged or recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name (lowercase).
    pub name: &'static str,
    /// Header value.
    pub value: String,
    /// Whether the value is a credential.
    pub secret: bool,
}

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// HTTP method.
    pub method: Method,
    /// Full URL.
    pub url: Url,
    /// Headers, credentials marked.
    pub headers: Vec<Header>,
    /// JSON body, when there is one.
    pub body: Option<Bytes>,
}

impl Prepared {
    fn new(method: Method, url: Url) -> Self {
        Prepared {
            method,
            url,
            headers: vec![Header {
                name: "user-agent",
                value: USER_AGENT.to_owned(),
                secret: false,
            }],
            body: None,
        }
    }

    fn get(url: Url) -> Self {
        Prepared::new(Method::GET, url)
    }

    fn post(url: Url) -> Self {
        Prepared::new(Method::POST, url)
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push(Header {
            name,
            value: value.into(),
            secret: false,
        });
        self
    }

    fn bearer(mut self, token: &str) -> Self {
        self.headers.push(Header {
            name: "authorization",
            value: format!("Bearer {token}"),
            secret: true,
        });
        self
    }

    fn json(mut self, body: &impl serde::Serialize) -> Self {
        self.body = Some(
            serde_json::to_vec(body)
                .expect("request bodies serialize")
                .into(),
        );
        self.header("content-type", "application/json")
    }
}

/// What an action needs to know about the call it runs for.
#[derive(Debug, Clone)]
pub struct ActionContext<'a> {
    /// The media server's call id.
    pub call_id: &'a str,
    /// The function name.
    pub function: &'a str,
    /// Stable across retries of this action: Resend `Idempotency-Key`, webhook `webhook-id`.
    pub idempotency_key: &'a str,
    /// When the request is built (webhook timestamp).
    pub now: SystemTime,
}

/// A raw HTTP answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body, at most [`MAX_RESPONSE_BYTES`].
    pub body: Bytes,
}

/// Build the request for an action.
pub fn prepare(
    conn: &impl Configured,
    action: Action,
    inputs: &Resolution,
    ctx: &ActionContext<'_>,
) -> Result<Prepared, ProviderError> {
    let settings = conn.settings();
    match (settings, action) {
        (ConnectionSettings::Resend { .. }, Action::ResendSendEmail) => {
            resend::prepare(settings, inputs, ctx)
        }
        (ConnectionSettings::Wati { .. }, Action::WatiSendTemplateMessage) => {
            wati::prepare_template(settings, inputs)
        }
        (ConnectionSettings::Wati { .. }, Action::WatiSendSessionMessage) => {
            wati::prepare_session(settings, inputs)
        }
        (ConnectionSettings::Webhook { .. }, Action::WebhookPost) => {
            webhook::prepare(settings, inputs, ctx)
        }
        _ => Err(ProviderError::unsendable(format!(
            "{action} cannot run on a {} connection",
            settings.provider()
        ))),
    }
}

/// Read an answer for an action.
pub fn interpret(action: Action, raw: RawResponse) -> Result<Accepted, ProviderError> {
    match action.provider() {
        Provider::Resend => resend::interpret(raw),
        Provider::Wati => wati::interpret(raw),
        Provider::Webhook => webhook::interpret(raw),
    }
}

/// `Retry-After` (seconds or HTTP date), else `ratelimit-reset` (seconds).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(v) = text("retry-after") {
        if let Ok(secs) = v.parse::<f64>()
            && secs.is_finite()
            && secs >= 0.0
        {
            return Some(Duration::from_secs_f64(secs.min(86_400.0)));
        }
        if let Ok(when) = httpdate::parse_http_date(v) {
            return Some(
                when.duration_since(crate::clock::now())
                    .unwrap_or(Duration::ZERO),
            );
        }
    }
    text("ratelimit-reset")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(86_400)))
}

/// What a connection check confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// For a person.
    pub reason: String,
    /// Individual findings (each Wati template's approval).
    pub checks: Vec<String>,
    /// How many findings are problems (a template missing or not approved): the credentials
    /// work, but some sends will be refused.
    pub problems: usize,
}

impl Found {
    /// Credentials confirmed, nothing else checked.
    pub fn valid(reason: impl Into<String>) -> Found {
        Found {
            reason: reason.into(),
            checks: Vec::new(),
            problems: 0,
        }
    }
}

/// Why a connection is in `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// The provider refused the credentials (401/403).
    Credentials,
    /// The provider could not be reached, or answered with a server error.
    Unreachable,
    /// The configuration is wrong (a health check said so, an endpoint is not found).
    Config,
}

/// What a connection check found: `Ok` with what was confirmed, or the trouble and why.
pub type Checked = Result<Found, (Trouble, String)>;

/// The request that checks a connection's credentials (SPEC §5), if the provider has one.
pub fn prepare_validation(conn: &impl Configured, templates: &[String]) -> Option<Prepared> {
    let settings = conn.settings();
    match settings {
        ConnectionSettings::Resend { .. } => Some(resend::prepare_validation(settings)),
        ConnectionSettings::Wati { .. } => Some(wati::prepare_validation(settings, templates)),
        ConnectionSettings::Webhook { .. } => webhook::prepare_validation(settings),
    }
}

/// Read the answer to a connection check.
pub fn interpret_validation(
    conn: &impl Configured,
    raw: &RawResponse,
    templates: &[String],
) -> Checked {
    match conn.settings().provider() {
        Provider::Resend => resend::interpret_validation(raw),
        Provider::Wati => wati::interpret_validation(raw, templates),
        Provider::Webhook => webhook::interpret_validation(raw),
    }
}

/// The message for a credential refusal: fixed, because such bodies may echo the credential.
fn auth_message(status: u16) -> String {
    format!("the provider refused the credentials (HTTP {status})")
}

/// `{base}/{path}`, keeping any path prefix of the base (Wati endpoints carry the tenant).
fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}/{path}"));
    url
}

/// The text value of an input.
fn text<'a>(inputs: &'a Resolution, name: &str) -> Option<&'a str> {
    inputs.get(name).and_then(|i| i.value.as_text())
}

/// The text value of a required input (guards make sure it is there).
fn required<'a>(inputs: &'a Resolution, name: &str) -> Result<&'a str, ProviderError> {
    text(inputs, name)
        .ok_or_else(|| ProviderError::unsendable(format!("input {name:?} did not resolve")))
}

/// The map value of an input.
fn map<'a>(inputs: &'a Resolution, name: &str) -> &'a [(String, String)] {
    match inputs.get(name).map(|i| &i.value) {
        Some(Resolved::Map(pairs)) => pairs,
        _ => &[],
    }
}

/// A provider message for the model and the evidence: trimmed and bounded.
fn short(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    /// A provider's answer, as the adapters' tests feed it to `interpret`.
    pub(super) fn raw(status: u16, body: &str) -> RawResponse {
        RawResponse {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_ratelimit_reset() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        let mut h = HeaderMap::new();
        h.insert("ratelimit-reset", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let mut h = HeaderMap::new();
        let later = httpdate::fmt_http_date(crate::clock::now() + Duration::from_secs(120));
        h.insert("retry-after", HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn short_bounds_long_messages() {
        assert_eq!(short("  hi "), "hi");
        assert_eq!(short(&"x".repeat(400)).chars().count(), 301);
    }
}
