//! NATS JetStream (`storage.backend = "nats"`, SPEC §10): the options `[storage]` gives, the
//! connection (servers, credentials, timeouts; an error naming the servers, never a secret),
//! and opening the streams and key-value buckets the job queue and the evidence stream keep
//! there.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use tracing::{debug, info, warn};

use super::StoreError;
use crate::config::{NatsAuth, NatsSettings};

/// How to reach NATS and how the queue behaves; built from `[storage]` by
/// [`NatsOptions::from_settings`], or directly by tests.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Servers (`nats://host:4222`, `tls://...`, `host:port`).
    pub urls: Vec<String>,
    /// Names the streams, buckets, subjects and the consumer.
    pub stream_prefix: String,
    /// Replicas of every stream and bucket it creates.
    pub replicas: usize,
    /// Credentials.
    pub auth: NatsAuth,
    /// The consumer's ack wait: longer than the longest attempt (hard timeout plus margin).
    pub ack_wait: Duration,
    /// How long one claim waits for a runnable job before it answers "none".
    pub claim_wait: Duration,
    /// How long to wait for a server at start-up.
    pub connect_timeout: Duration,
    /// How long one JetStream request (a write, its acknowledgement, a read) may take.
    pub request_timeout: Duration,
}

impl NatsOptions {
    /// Options for these servers and prefix, with the defaults for the rest.
    pub fn new(urls: Vec<String>, stream_prefix: impl Into<String>) -> NatsOptions {
        NatsOptions {
            urls,
            stream_prefix: stream_prefix.into(),
            replicas: 1,
            auth: NatsAuth::None,
            ack_wait: Duration::from_secs(30),
            claim_wait: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// The options `[storage]` gives.
    pub fn from_settings(s: &NatsSettings) -> NatsOptions {
        NatsOptions {
            replicas: s.replicas,
            auth: s.auth.clone(),
            ..NatsOptions::new(s.urls.clone(), s.stream_prefix.clone())
        }
    }
}

/// A connection to NATS and its JetStream context.
pub struct JetStream {
    /// The client (its connection task runs on the runtime that connected).
    pub client: async_nats::Client,
    /// JetStream requests, each bounded by the request timeout.
    pub js: jetstream::Context,
    /// The servers, for messages.
    pub servers: String,
}

impl JetStream {
    /// Connect to the servers of `options` ([`connect`]) and build the JetStream context.
    pub async fn connect(
        options: &NatsOptions,
        lost: &'static str,
    ) -> Result<JetStream, StoreError> {
        let client = connect(options, lost).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .build(client.clone());
        Ok(JetStream {
            client,
            js,
            servers: options.urls.join(", "),
        })
    }

    /// The error for `what` (a stream, a bucket) that could not be set up once connected.
    pub fn setup_failed(&self, what: &str, e: &dyn std::fmt::Display) -> StoreError {
        setup_failed(&self.servers, what, e)
    }

    /// Open a key-value bucket with history 1 on file storage ([`open_bucket`]).
    pub async fn bucket(
        &self,
        name: &str,
        description: &str,
        max_age: Duration,
        replicas: usize,
    ) -> Result<kv::Store, StoreError> {
        let config = kv::Config {
            bucket: name.to_owned(),
            description: description.to_owned(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: replicas.max(1),
            ..Default::default()
        };
        open_bucket(&self.js, config)
            .await
            .map_err(|e| self.setup_failed(name, &e))
    }

    /// Open a stream, creating it with `config` when it does not exist.
    pub async fn stream(&self, config: stream::Config) -> Result<stream::Stream, StoreError> {
        let name = config.name.clone();
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| self.setup_failed(&name, &e))
    }
}

/// The error for `what` (a stream, a bucket, a consumer) that could not be set up on
/// `servers` once connected.
pub fn setup_failed(servers: &str, what: &str, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Nats(format!(
        "connected to {servers}, but cannot set up {what} (is JetStream enabled, `-js`?): {e}"
    ))
}

/// Whether a key-value message is a value, not a deletion (`KV-Operation: DEL` or `PURGE`).
pub fn is_put(headers: Option<&async_nats::HeaderMap>) -> bool {
    !headers
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"))
}

/// Connect to the servers of `options` with its credentials and timeouts (an error naming the
/// servers, never a secret, when none answers). `lost` is what a disconnection logs.
pub async fn connect(
    options: &NatsOptions,
    lost: &'static str,
) -> Result<async_nats::Client, StoreError> {
    let servers = options.urls.join(", ");
    let unreachable = |e: &dyn std::fmt::Display| {
        StoreError::Nats(format!(
            "cannot reach NATS at {servers}: {e} (is nats-server running with JetStream \
             enabled, `-js`?)"
        ))
    };
    let mut addrs = Vec::with_capacity(options.urls.len());
    for url in &options.urls {
        let addr: async_nats::ServerAddr = url
            .parse()
            .map_err(|e| StoreError::nats(&format!("{url:?} is not a NATS server address"), e))?;
        addrs.push(addr);
    }
    let mut connect = async_nats::ConnectOptions::new()
        .name("toolgate")
        .connection_timeout(options.connect_timeout)
        .request_timeout(Some(options.request_timeout))
        .event_callback(move |event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    warn!("{lost}")
                }
                async_nats::Event::Connected => info!("NATS connection (re)established"),
                other => debug!(event = %other, "NATS event"),
            }
        });
    connect = match &options.auth {
        NatsAuth::None => connect,
        NatsAuth::Token(t) => connect.token(t.expose().to_owned()),
        NatsAuth::UserPassword { user, password } => {
            connect.user_and_password(user.clone(), password.expose().to_owned())
        }
    };
    let budget = options.connect_timeout * (addrs.len() as u32).max(1) + Duration::from_secs(1);
    match tokio::time::timeout(budget, connect.connect(addrs)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(unreachable(&e)),
        Err(_) => Err(unreachable(&format!("no answer within {budget:?}"))),
    }
}

/// Open a bucket, creating it when it does not exist (another host may create it at the same
/// moment: then open that one).
pub async fn open_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, String> {
    let name = config.bucket.clone();
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    let created = match js.create_key_value(config.clone()).await {
        Ok(store) => return Ok(store),
        // The client reads the account's limits first, which fails on servers older than it
        // knows (nats-server 2.9 leaves out fields it expects): create the bucket's stream
        // as the key-value layout defines it.
        Err(e) => js
            .create_stream(stream::Config {
                name: format!("KV_{name}"),
                description: Some(config.description.clone()),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: config.history.max(1),
                max_age: config.max_age,
                storage: config.storage,
                num_replicas: config.num_replicas.max(1),
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e2| format!("cannot create the key-value bucket {name}: {e}; {e2}")),
    };
    match js.get_key_value(&name).await {
        Ok(store) => Ok(store),
        Err(e) => Err(created
            .err()
            .unwrap_or_else(|| format!("cannot open the key-value bucket {name}: {e}"))),
    }
}
