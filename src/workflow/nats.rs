//! The job queue on NATS JetStream (`storage.backend = "nats"`, SPEC §10): many sidecars and
//! `toolgate worker` processes share one durable queue.
//!
//! What lives where (`P` is `storage.stream_prefix`, `TOOLGATE` by default):
//!
//! - **KV bucket `P_JOBS`** (file storage, history 1): each job's full state as JSON under its
//!   id. Every transition (claim, finish, put back, release, cancel, retry) is a
//!   compare-and-set on the entry's revision, so of two hosts racing for one job exactly one
//!   wins, and a lease holder whose lease lapsed and was taken over cannot record a late result
//!   (it is fenced off by owner and attempt number, as on SQLite).
//! - **Work-queue stream `P_JOBS`** (file storage, subjects `P.jobs.run.<job id>`, at most one
//!   message per job): a *notice* that a job may be runnable. Enqueue publishes it with
//!   `Nats-Msg-Id` = the job id and waits for JetStream's acknowledgement before it returns,
//!   so `deferred` is never answered for a job the queue does not hold.
//! - **Durable pull consumer `P_WORKERS`** on that stream, explicit acks: a claim pulls one
//!   notice, reads the job and decides: claim it (compare-and-set to `in_flight` with a lease),
//!   or *NAK with a delay* until its `not_before` (backoff, `Retry-After`, held back by a circuit
//!   or a rate) or until a lease lapses, or ack the notice of a job that is finished or held
//!   for the end of its call. A claimed job's notice stays unacknowledged while the attempt
//!   runs; the ack wait is just past the longest lease (hard timeout + 5 s margin + 1 s), so
//!   a worker that dies mid-attempt has its job's notice redelivered about when its lease
//!   ends, and the job taken over then (in-progress acks hold the notice for a lease that
//!   outlives the ack wait). The attempt count, backoff and
//!   `max_attempts` live in the job's state, not in the consumer's delivery count.
//! - **Stream `P_JOBS_DEAD`** (subjects `P.jobs.dead.<job id>`, limits retention): a job out
//!   of attempts is also published here (dead-letter subject); `GET /v1/jobs?state=dead`
//!   reads the states, `POST /v1/jobs/{id}/retry` queues it afresh and removes its letter.
//! - **KV bucket `P_KEYS`**: the action key of each job (Resend `Idempotency-Key`, webhook id),
//!   written create-only, so the same action deferred by two sidecars is one job.
//! - **KV bucket `P_HOSTS`**: a heartbeat per running store. Jobs held until their call ends
//!   belong to the sidecar whose session holds them; when that sidecar stops beating, any
//!   other releases them (as SQLite releases every held job at start-up).
//!
//! Reads that cover every job (`list`, `counts`, `prune`, the sweeps) walk the bucket with an
//! ordered consumer, the latest value per key: they cost a pass over the jobs kept
//! (`workflow.retain_days`), not a query on an index.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind, Message,
    consumer::{DeliverPolicy, PullConsumer, pull},
    kv,
    message::Acker,
    stream,
};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::transitions::{self, Lifecycle, Verdict};
use super::{Finish, Head, Job, JobState, Lease, NewJob, RetryRefused, job_id};
use crate::bindings::ResolvedInput;
use crate::clock::{Millis, now_ms};
use crate::storage::StoreError;
use crate::storage::nats::{JetStream, NatsOptions, setup_failed};

/// How often a store writes its heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// A store whose heartbeat is older than this is gone: its held jobs are released.
const HOST_GONE_AFTER: Duration = Duration::from_secs(60);
/// A runnable job without a notice for this long lost it between two writes: the sweep
/// publishes it again. Younger ones may be mid-enqueue.
const ORPHAN_AFTER: Duration = Duration::from_secs(30);
/// Most notices one claim looks at before it answers "nothing" (the rest are not due).
const NOTICES_PER_CLAIM: usize = 64;
/// Most compare-and-set rounds one transition tries against concurrent writers.
const CAS_TRIES: usize = 32;
/// The shortest pull a claim makes.
const MIN_PULL: Duration = Duration::from_millis(50);
/// A scan that receives nothing for this long has everything there is.
const SCAN_IDLE: Duration = Duration::from_secs(2);
/// How long past its expiry a pull waits for the server's answer.
const PULL_GRACE: Duration = Duration::from_millis(250);

/// A job as stored in the bucket: its [`Head`], its [`Lifecycle`] (the same JSON fields as
/// ever, side by side) and what only the queue needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    head: Head,
    #[serde(flatten)]
    life: Lifecycle,
    #[serde(default)]
    inputs: Vec<ResolvedInput>,
    /// The store (host) whose session holds this job until its call ends.
    #[serde(default)]
    held_by: Option<String>,
}

impl Record {
    /// A new job as its first record, stored by `host` at `now`.
    fn new(job: &NewJob, id: &str, now: Millis, host: &str) -> Record {
        let life = transitions::enqueue(job, now);
        Record {
            head: Head::new(job, id.to_owned(), now),
            held_by: life.held().then(|| host.to_owned()),
            inputs: if life.inputs_cleared {
                Vec::new()
            } else {
                job.inputs.clone()
            },
            life,
        }
    }

    fn job(&self) -> Job {
        Job::assemble(self.head.clone(), self.life.clone(), self.inputs.clone())
    }

    /// The record with `life` after a transition: its inputs gone once they are cleared, and
    /// held by nobody once it is no longer held.
    fn with(&self, life: Lifecycle) -> Record {
        let mut n = self.clone();
        if life.inputs_cleared {
            n.inputs = Vec::new();
        }
        if !life.held() {
            n.held_by = None;
        }
        n.life = life;
        n
    }
}

/// Stream, bucket, subject and consumer names for one prefix.
#[derive(Debug, Clone)]
struct Names {
    queue: String,
    dead: String,
    consumer: String,
    jobs: String,
    keys: String,
    hosts: String,
    run: String,
    dead_subject: String,
}

impl Names {
    fn new(p: &str) -> Names {
        Names {
            queue: format!("{p}_JOBS"),
            dead: format!("{p}_JOBS_DEAD"),
            consumer: format!("{p}_WORKERS"),
            jobs: format!("{p}_JOBS"),
            keys: format!("{p}_KEYS"),
            hosts: format!("{p}_HOSTS"),
            run: format!("{p}.jobs.run"),
            dead_subject: format!("{p}.jobs.dead"),
        }
    }

    fn run_subject(&self, id: &str) -> String {
        format!("{}.{id}", self.run)
    }

    fn dead_subject(&self, id: &str) -> String {
        format!("{}.{id}", self.dead_subject)
    }

    fn job_subject(&self, id: &str) -> String {
        format!("$KV.{}.{id}", self.jobs)
    }
}

/// A claimed job's notice, held unacknowledged while its attempt runs.
struct Held {
    attempt: u32,
    acker: Arc<Acker>,
    /// Sends in-progress acks until the lease ends.
    keepalive: JoinHandle<()>,
}

/// A store's heartbeat in `P_HOSTS`.
#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    at: Millis,
}

/// The outcome of one compare-and-set transition.
enum Transition {
    /// No such job.
    Missing,
    /// The rule declined for the job as it is (its record and revision).
    Declined(Record, u64),
    /// Stored: the record after, and its revision.
    Done(Record, u64),
}

/// The JetStream backend of [`super::store::JobStore`].
pub(crate) struct NatsJobs {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    options: NatsOptions,
    /// The servers, for messages.
    servers: String,
    jobs: kv::Store,
    keys: kv::Store,
    hosts: kv::Store,
    /// The stream under the jobs bucket: scans and removals.
    jobs_stream: stream::Stream,
    /// Job counts per state, kept from the bucket's stream; started by the first count.
    state_index: std::sync::OnceLock<super::state_index::StateIndex>,
    /// Counts the index answered (the rest read every job).
    counted_from_index: std::sync::atomic::AtomicU64,
    queue: stream::Stream,
    dead: stream::Stream,
    consumer: PullConsumer,
    /// This store's host id (its heartbeat key and the `held_by` of the jobs it holds).
    host: String,
    held: Mutex<HashMap<String, Held>>,
    /// Held jobs of this host per (org, call id): what `release_call` releases.
    held_calls: Mutex<HashMap<(String, String), HashSet<String>>>,
    /// Calls that ended while their jobs could not be released: released by
    /// [`NatsJobs::repair_local`] once NATS answers again.
    ended_calls: Mutex<HashSet<(String, String)>>,
    /// Jobs whose enqueue answered an error after the job was written: cancelled when NATS
    /// answers again, unless a worker already took them.
    compensate: Mutex<HashSet<String>>,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
    /// Since when every heartbeat has been written (`None`: the last one failed).
    beating_since: Arc<Mutex<Option<Instant>>>,
    closed: AtomicBool,
}

fn encode(r: &Record) -> Result<Bytes, StoreError> {
    serde_json::to_vec(r)
        .map(Bytes::from)
        .map_err(|e| StoreError::nats("a job does not serialize", e))
}

fn decode(b: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::nats("a stored job does not parse", e))
}

/// Job ids are `job_<ulid>`; anything else (an id from a URL) is no job, and never reaches a
/// subject.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The `P_KEYS` key of an action key: its SHA-256 (action keys may hold any character).
fn key_of(idempotency_key: &str) -> String {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    format!("k_{}", hex::encode(digest))
}

fn until(at: Millis, now: Millis) -> Duration {
    Duration::from_millis((at - now).max(0) as u64)
}

impl NatsJobs {
    /// Connect and open (creating what is missing) the streams, buckets and consumer.
    pub(crate) async fn open(options: NatsOptions) -> Result<NatsJobs, StoreError> {
        let jet = JetStream::connect(
            &options,
            "NATS connection lost; reconnecting (new deferrals fail meanwhile)",
        )
        .await?;
        let names = Names::new(&options.stream_prefix);
        let servers = jet.servers.clone();
        let setup = |e: &dyn std::fmt::Display| setup_failed(&servers, "JetStream", e);
        let replicas = options.replicas.max(1);
        let queue = jet
            .stream(stream::Config {
                name: names.queue.clone(),
                description: Some("toolgate: notices of runnable workflow jobs".into()),
                subjects: vec![format!("{}.>", names.run)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                max_messages_per_subject: 1,
                discard: stream::DiscardPolicy::Old,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await?;
        let dead = jet
            .stream(stream::Config {
                name: names.dead.clone(),
                description: Some("toolgate: workflow jobs out of attempts".into()),
                subjects: vec![format!("{}.>", names.dead_subject)],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                max_messages_per_subject: 1,
                ..Default::default()
            })
            .await?;
        let jobs = jet
            .bucket(
                &names.jobs,
                "toolgate: workflow job states",
                Duration::ZERO,
                replicas,
            )
            .await?;
        let keys = jet
            .bucket(
                &names.keys,
                "toolgate: action keys (create-only), one job per action",
                Duration::ZERO,
                replicas,
            )
            .await?;
        let hosts = jet
            .bucket(
                &names.hosts,
                "toolgate: heartbeats of running sidecars and workers",
                Duration::from_secs(86_400),
                replicas,
            )
            .await?;
        let jobs_stream = jet
            .js
            .get_stream(&jobs.stream_name)
            .await
            .map_err(|e| setup(&e))?;
        let consumer_config = pull::Config {
            durable_name: Some(names.consumer.clone()),
            description: Some("toolgate workers: claims of workflow jobs".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            // Attempts are counted in the job's state; a notice NAKed until its time is
            // delivered many times and must never be dropped for it.
            max_deliver: -1,
            // Every notice waiting for its time counts as pending: room for a large backlog.
            max_ack_pending: 1_000_000,
            filter_subject: format!("{}.>", names.run),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        };
        let mut consumer: PullConsumer = match queue.create_consumer(consumer_config).await {
            Ok(c) => c,
            Err(e) => {
                // Another host created it with other settings (an older ack wait): use it.
                warn!(error = %e, consumer = %names.consumer, "cannot create or update the workers' consumer; using it as it is");
                queue
                    .get_consumer(&names.consumer)
                    .await
                    .map_err(|e| setup(&e))?
            }
        };
        // In-progress acks are timed by the ack wait the consumer has (a host with another
        // config may have set it last), not the one asked for.
        let mut options = options;
        if let Ok(info) = consumer.info().await
            && !info.config.ack_wait.is_zero()
        {
            options.ack_wait = info.config.ack_wait;
        }
        let host = format!("host_{}", ulid::Ulid::generate());
        let JetStream { client, js, .. } = jet;
        let store = NatsJobs {
            client,
            js,
            names,
            servers: servers.clone(),
            jobs,
            keys,
            hosts,
            jobs_stream,
            state_index: std::sync::OnceLock::new(),
            counted_from_index: std::sync::atomic::AtomicU64::new(0),
            queue,
            dead,
            consumer,
            host,
            held: Mutex::new(HashMap::new()),
            held_calls: Mutex::new(HashMap::new()),
            ended_calls: Mutex::new(HashSet::new()),
            compensate: Mutex::new(HashSet::new()),
            heartbeat: Mutex::new(None),
            beating_since: Arc::new(Mutex::new(None)),
            closed: AtomicBool::new(false),
            options,
        };
        store.beat().await.map_err(|e| setup(&e))?;
        store.start_heartbeat();
        info!(
            servers = %store.servers,
            prefix = %store.options.stream_prefix,
            host = %store.host,
            "job store open on NATS JetStream"
        );
        Ok(store)
    }

    async fn beat(&self) -> Result<(), StoreError> {
        let beat = serde_json::to_vec(&Beat { at: now_ms() }).unwrap_or_default();
        self.hosts
            .put(&self.host, beat.into())
            .await
            .map_err(|e| StoreError::nats("cannot write the heartbeat", e))?;
        let mut since = self.beating_since.lock().expect("beat lock");
        since.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn start_heartbeat(&self) {
        let (hosts, host, since) = (
            self.hosts.clone(),
            self.host.clone(),
            self.beating_since.clone(),
        );
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let beat = serde_json::to_vec(&Beat { at: now_ms() }).unwrap_or_default();
                let ok = hosts.put(&host, beat.into()).await.is_ok();
                let mut s = since.lock().expect("beat lock");
                if ok {
                    s.get_or_insert_with(Instant::now);
                } else {
                    *s = None;
                }
            }
        });
        *self.heartbeat.lock().expect("heartbeat lock") = Some(task);
    }

    /// Refuse at once when closed or disconnected: a write that waits for a reconnect could
    /// land after its caller was told it failed.
    fn usable(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(StoreError::Nats(format!(
                "not connected to NATS at {} (reconnecting)",
                self.servers
            ))),
        }
    }

    async fn load(&self, id: &str) -> Result<Option<(Record, u64)>, StoreError> {
        if !valid_id(id) {
            return Ok(None);
        }
        match self.jobs.entry(id).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                Ok(Some((decode(&e.value)?, e.revision)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(StoreError::nats("cannot read a job", e)),
        }
    }

    /// Load `id`, apply `rule`, and store the result if nobody changed the job in between;
    /// on a concurrent change, read again and decide again.
    async fn transition(
        &self,
        id: &str,
        rule: impl Fn(&Record) -> Option<Record>,
    ) -> Result<Transition, StoreError> {
        for _ in 0..CAS_TRIES {
            let Some((rec, rev)) = self.load(id).await? else {
                return Ok(Transition::Missing);
            };
            let Some(next) = rule(&rec) else {
                return Ok(Transition::Declined(rec, rev));
            };
            match self.jobs.update(id, encode(&next)?, rev).await {
                Ok(rev) => return Ok(Transition::Done(next, rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(StoreError::nats("cannot update a job", e)),
            }
        }
        Err(StoreError::Nats(format!(
            "job {id} kept changing under {CAS_TRIES} attempts to update it"
        )))
    }

    /// [`NatsJobs::transition`] by a rule of [`transitions`] on the job's lifecycle.
    async fn step(
        &self,
        id: &str,
        rule: impl Fn(&Lifecycle) -> Option<Lifecycle>,
    ) -> Result<Transition, StoreError> {
        self.transition(id, |r| rule(&r.life).map(|l| r.with(l)))
            .await
    }

    /// Publish a job's notice and wait for JetStream to acknowledge it.
    async fn publish_notice(&self, id: &str, msg_id: &str) -> Result<(), StoreError> {
        let publish = jetstream::message::PublishMessage::build()
            .message_id(msg_id)
            .payload(Bytes::copy_from_slice(id.as_bytes()));
        self.js
            .send_publish(self.names.run_subject(id), publish)
            .await
            .map_err(|e| StoreError::nats("cannot queue a job notice", e))?
            .await
            .map_err(|e| StoreError::nats("JetStream did not acknowledge a job notice", e))?;
        Ok(())
    }

    /// A job out of attempts on the dead-letter subject (best effort: its state says `dead`
    /// whatever happens here).
    async fn dead_letter(&self, rec: &Record) {
        let body = serde_json::to_vec(&rec.job()).unwrap_or_default();
        let publish = jetstream::message::PublishMessage::build()
            .message_id(format!("{}.dead.{}", rec.head.id, rec.life.updated_at))
            .payload(body.into());
        let sent = match self
            .js
            .send_publish(self.names.dead_subject(&rec.head.id), publish)
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            warn!(job = %rec.head.id, error = %e, "cannot publish a dead job to the dead-letter subject");
        }
    }

    /// The job is runnable again (a retry, a put back, a release): the notice this host holds
    /// for it comes back when it is due (NAK with delay); without one, a new notice.
    async fn runnable_again(&self, rec: &Record, rev: u64, now: Millis) {
        let held = self.held.lock().expect("held lock").remove(&rec.head.id);
        if let Some(h) = held {
            h.keepalive.abort();
            let delay = until(rec.life.runnable_at.unwrap_or(now), now);
            if h.acker.ack_with(AckKind::Nak(Some(delay))).await.is_ok() {
                return;
            }
        }
        if let Err(e) = self
            .publish_notice(&rec.head.id, &format!("{}.{rev}", rec.head.id))
            .await
        {
            warn!(job = %rec.head.id, error = %e, "a runnable job has no notice; the sweep will publish it");
        }
    }

    /// Acknowledge (spend) the notice this host holds for a job, if it holds one for `attempt`.
    async fn spend_notice(&self, id: &str, attempt: u32) {
        let held = {
            let mut held = self.held.lock().expect("held lock");
            match held.get(id) {
                Some(h) if h.attempt == attempt => held.remove(id),
                _ => None,
            }
        };
        if let Some(h) = held {
            h.keepalive.abort();
            let _ = h.acker.ack().await;
        }
    }

    /// Forget a held notice without acknowledging it: the lease was lost, and the notice now
    /// belongs to whoever took the job over.
    fn forget_notice(&self, id: &str, attempt: u32) {
        let mut held = self.held.lock().expect("held lock");
        if held.get(id).is_some_and(|h| h.attempt == attempt)
            && let Some(h) = held.remove(id)
        {
            h.keepalive.abort();
        }
    }

    /// Remove a job's record entirely (no tombstone).
    async fn remove_record(&self, id: &str) -> Result<(), StoreError> {
        self.jobs_stream
            .purge()
            .filter(self.names.job_subject(id))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::nats("cannot remove a job", e))
    }

    pub(crate) async fn enqueue(&self, job: NewJob, now: Millis) -> Result<Job, StoreError> {
        self.usable()?;
        let id = job_id();
        let rec = Record::new(&job, &id, now, &self.host);
        // The record first, then the action key pointing at it: a key never names a job that
        // does not exist yet, so a key whose job is missing was pruned and may be taken over.
        self.jobs
            .create(&id, encode(&rec)?)
            .await
            .map_err(|e| StoreError::nats("cannot store a job", e))?;
        let key = key_of(&job.idempotency_key);
        let mut bound = false;
        for _ in 0..CAS_TRIES {
            match self
                .keys
                .create(&key, Bytes::copy_from_slice(id.as_bytes()))
                .await
            {
                Ok(_) => {
                    bound = true;
                    break;
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    self.discard(&id).await;
                    return Err(StoreError::nats("cannot store a job's action key", e));
                }
            }
            let entry = match self.keys.entry(&key).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => e,
                Ok(_) => continue, // deleted meanwhile: create again
                Err(e) => {
                    self.discard(&id).await;
                    return Err(StoreError::nats("cannot read a job's action key", e));
                }
            };
            let other = String::from_utf8_lossy(&entry.value).into_owned();
            let existing = match self.load(&other).await {
                Ok(x) => x,
                Err(e) => {
                    self.discard(&id).await;
                    return Err(e);
                }
            };
            if let Some((o, _)) = &existing
                && !matches!(o.life.state, JobState::Failed | JobState::Dead)
            {
                // The action is already queued, running or done: that job is the answer.
                self.discard(&id).await;
                return Ok(o.job());
            }
            match self
                .keys
                .update(&key, Bytes::copy_from_slice(id.as_bytes()), entry.revision)
                .await
            {
                Ok(_) => {
                    if existing.is_some() {
                        // The failed or dead job keeps its history under a changed key.
                        let renamed = format!("{}#{other}", job.idempotency_key);
                        let _ = self
                            .transition(&other, |r| {
                                (r.head.idempotency_key == job.idempotency_key).then(|| {
                                    let mut n = r.clone();
                                    n.head.idempotency_key = renamed.clone();
                                    n
                                })
                            })
                            .await;
                    }
                    bound = true;
                    break;
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => {
                    self.discard(&id).await;
                    return Err(StoreError::nats("cannot store a job's action key", e));
                }
            }
        }
        if !bound {
            self.discard(&id).await;
            return Err(StoreError::Nats(
                "the action key kept changing; the job was not stored".into(),
            ));
        }
        if rec.life.pending() {
            // The commit point: JetStream holds the notice.
            if let Err(e) = self.publish_notice(&id, &id).await {
                return self.unacknowledged(&rec, e).await;
            }
        }
        if rec.life.state == JobState::Dead {
            self.dead_letter(&rec).await;
        }
        if rec.life.held() {
            self.held_calls
                .lock()
                .expect("held calls lock")
                .entry((rec.head.org.clone(), rec.head.call_id.clone()))
                .or_default()
                .insert(id);
        }
        Ok(rec.job())
    }

    /// A job this host stored but whose notice JetStream did not acknowledge: its caller is
    /// told it failed, so it must not run. Cancel it; if NATS does not answer, the sweep
    /// cancels it later. If a worker already claimed it, the notice did arrive: it is queued
    /// after all.
    async fn unacknowledged(&self, rec: &Record, err: StoreError) -> Result<Job, StoreError> {
        let why = "not queued: JetStream did not acknowledge the job";
        match self
            .step(&rec.head.id, |r| {
                (r.state == rec.life.state
                    && r.attempts == rec.life.attempts
                    && r.lease_owner == rec.life.lease_owner)
                    .then(|| transitions::withdraw(r, why, now_ms()))
            })
            .await
        {
            Ok(Transition::Declined(now, _)) if now.life.state != JobState::Failed => Ok(now.job()),
            Ok(_) => Err(err),
            Err(_) => {
                self.compensate
                    .lock()
                    .expect("compensate lock")
                    .insert(rec.head.id.clone());
                Err(err)
            }
        }
    }

    /// Remove a record that lost the race for its action key (best effort: the sweep removes
    /// what is left, as no key points at it).
    async fn discard(&self, id: &str) {
        if let Err(e) = self.remove_record(id).await {
            debug!(job = %id, error = %e, "cannot remove a record that was not kept");
        }
    }

    pub(crate) async fn claim(&self, owner: &str, now: Millis) -> Result<Option<Job>, StoreError> {
        self.usable()?;
        let started = Instant::now();
        let deadline = started + self.options.claim_wait;
        for _ in 0..NOTICES_PER_CLAIM {
            let expires = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_PULL);
            let mut batch = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(expires)
                .messages()
                .await
                .map_err(|e| StoreError::nats("cannot pull from the job queue", e))?;
            // The server answers an expired pull itself; do not wait much longer when that
            // answer is lost (nats-server 2.9 can drop a pull that arrives as the previous
            // one expires).
            let Ok(Some(msg)) = tokio::time::timeout(expires + PULL_GRACE, batch.next()).await
            else {
                return Ok(None);
            };
            let msg: Message =
                msg.map_err(|e| StoreError::nats("cannot pull from the job queue", e))?;
            let id = msg
                .subject
                .as_str()
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned();
            let (_, acker) = msg.split();
            // The caller's clock, moved on by the time this claim has waited.
            let now = now + started.elapsed().as_millis() as Millis;
            match self.claim_one(&id, owner, now, acker).await? {
                Some(job) => return Ok(Some(job)),
                None if Instant::now() >= deadline => return Ok(None),
                None => {}
            }
        }
        Ok(None)
    }

    /// Decide on one pulled notice: the claimed job, or `None` (the notice was put off or
    /// spent).
    async fn claim_one(
        &self,
        id: &str,
        owner: &str,
        now: Millis,
        acker: Acker,
    ) -> Result<Option<Job>, StoreError> {
        for _ in 0..CAS_TRIES {
            let loaded = match self.load(id).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = acker.ack_with(AckKind::Nak(None)).await;
                    return Err(e);
                }
            };
            let Some((rec, rev)) = loaded else {
                let _ = acker.ack().await;
                return Ok(None);
            };
            let next = match transitions::claim(&rec.life, owner, now) {
                Verdict::Spent => {
                    let _ = acker.ack().await;
                    return Ok(None);
                }
                Verdict::Later(at) => {
                    let _ = acker.ack_with(AckKind::Nak(Some(until(at, now)))).await;
                    return Ok(None);
                }
                Verdict::Claim(n) | Verdict::Dead(n) => rec.with(n),
            };
            match self.jobs.update(id, encode(&next)?, rev).await {
                Ok(_) => {}
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => {
                    let _ = acker.ack_with(AckKind::Nak(None)).await;
                    return Err(StoreError::nats("cannot update a job", e));
                }
            }
            if next.life.state == JobState::Dead {
                let _ = acker.ack().await;
                self.dead_letter(&next).await;
                return Ok(None);
            }
            self.hold(&next, acker);
            return Ok(Some(next.job()));
        }
        let _ = acker.ack_with(AckKind::Nak(None)).await;
        Ok(None)
    }

    /// Keep a claimed job's notice unacknowledged while its attempt runs, so that it comes
    /// back about when the lease ends: the ack wait outlasts any lease, and when a lease
    /// outlasts the ack wait (a reload lengthened a timeout) in-progress acks hold the notice
    /// until one ack wait before the lease ends. A notice back early finds the lease alive
    /// and is put off to its end; at the end, a lapsed lease is taken over.
    fn hold(&self, rec: &Record, acker: Acker) {
        let acker = Arc::new(acker);
        let lease_end = Instant::now() + until(rec.life.lease_until.unwrap_or(0), now_ms());
        let ack_wait = self.options.ack_wait;
        let every = (ack_wait / 3).max(Duration::from_millis(100));
        let keep = acker.clone();
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if Instant::now() + ack_wait >= lease_end {
                    break;
                }
                let _ = keep.ack_with(AckKind::Progress).await;
            }
        });
        let old = self.held.lock().expect("held lock").insert(
            rec.head.id.clone(),
            Held {
                attempt: rec.life.attempts,
                acker,
                keepalive,
            },
        );
        if let Some(old) = old {
            old.keepalive.abort();
        }
    }

    pub(crate) async fn finish(
        &self,
        lease: Lease<'_>,
        finish: &Finish,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let Lease { id, owner, attempt } = lease;
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (rec, rev) = match self
            .step(id, |r| transitions::finish(r, owner, attempt, finish, now))
            .await?
        {
            Transition::Done(rec, rev) => (rec, rev),
            // An earlier try whose answer was lost (NATS went away) did store this end: the
            // rest of the work is done now, as if it had been answered.
            Transition::Declined(rec, rev) if transitions::recorded(&rec.life, attempt, finish) => {
                (rec, rev)
            }
            Transition::Missing | Transition::Declined(..) => {
                self.forget_notice(id, attempt);
                return Ok(false);
            }
        };
        match rec.life.state {
            JobState::Queued => self.runnable_again(&rec, rev, now).await,
            JobState::Dead => {
                self.spend_notice(id, attempt).await;
                self.dead_letter(&rec).await;
            }
            _ => self.spend_notice(id, attempt).await,
        }
        Ok(true)
    }

    pub(crate) async fn put_back(
        &self,
        lease: Lease<'_>,
        not_before: Millis,
        why: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let Lease { id, owner, attempt } = lease;
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        match self
            .step(id, |r| {
                transitions::put_back(r, owner, attempt, not_before, why, now)
            })
            .await?
        {
            Transition::Missing | Transition::Declined(..) => {
                self.forget_notice(id, attempt);
                Ok(false)
            }
            Transition::Done(rec, rev) => {
                self.runnable_again(&rec, rev, now).await;
                Ok(true)
            }
        }
    }

    pub(crate) async fn mark_sending(
        &self,
        lease: Lease<'_>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let Lease { id, owner, attempt } = lease;
        self.usable()?;
        Ok(matches!(
            self.step(id, |r| transitions::mark_sending(r, owner, attempt, now))
                .await?,
            Transition::Done(..)
        ))
    }

    /// Release held jobs by id: runnable now, each with a new notice.
    async fn release_ids(&self, ids: &[String], now: Millis) -> Result<usize, StoreError> {
        let mut n = 0;
        for id in ids {
            if let Transition::Done(rec, rev) =
                self.step(id, |r| transitions::release(r, now)).await?
            {
                if let Err(e) = self
                    .publish_notice(&rec.head.id, &format!("{}.{rev}", rec.head.id))
                    .await
                {
                    warn!(job = %rec.head.id, error = %e, "a released job has no notice; the sweep will publish it");
                }
                n += 1;
            }
        }
        Ok(n)
    }

    pub(crate) async fn release_call(
        &self,
        org: &str,
        call_id: &str,
        now: Millis,
    ) -> Result<usize, StoreError> {
        let call = (org.to_owned(), call_id.to_owned());
        let released = self.release_held_call(&call, now).await;
        if released.is_err() {
            // The call is over either way: housekeeping tries again once NATS answers.
            self.ended_calls
                .lock()
                .expect("ended calls lock")
                .insert(call);
        }
        released
    }

    async fn release_held_call(
        &self,
        call: &(String, String),
        now: Millis,
    ) -> Result<usize, StoreError> {
        self.usable()?;
        let ids: Vec<String> = self
            .held_calls
            .lock()
            .expect("held calls lock")
            .get(call)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let n = self.release_ids(&ids, now).await?;
        // Forget them only once they are released: a failure leaves them for another try.
        let mut held = self.held_calls.lock().expect("held calls lock");
        if let Some(set) = held.get_mut(call) {
            set.retain(|id| !ids.contains(id));
            if set.is_empty() {
                held.remove(call);
            }
        }
        Ok(n)
    }

    /// Release held jobs no live session can end: those of hosts that stopped beating. At
    /// start-up (`at_start`) the verdict on other hosts is taken as it stands; a periodic
    /// sweep acts only while this host has itself been beating for longer than
    /// [`HOST_GONE_AFTER`], so a NATS outage that silenced everybody releases nothing.
    pub(crate) async fn release_orphaned(
        &self,
        now: Millis,
        at_start: bool,
    ) -> Result<usize, StoreError> {
        self.usable()?;
        if !at_start {
            let steady = self
                .beating_since
                .lock()
                .expect("beat lock")
                .is_some_and(|t| t.elapsed() > HOST_GONE_AFTER);
            if !steady {
                return Ok(0);
            }
        }
        let held: Vec<Record> = self
            .scan()
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| r.life.held() && r.held_by.as_deref() != Some(self.host.as_str()))
            .collect();
        let mut alive: HashMap<String, bool> = HashMap::new();
        let mut orphans = Vec::new();
        for r in held {
            let holder = r.held_by.clone().unwrap_or_default();
            let live = match alive.get(&holder) {
                Some(l) => *l,
                None => {
                    let l = self.host_alive(&holder, now).await?;
                    alive.insert(holder, l);
                    l
                }
            };
            if !live {
                orphans.push(r.head.id);
            }
        }
        let n = self.release_ids(&orphans, now).await?;
        if n > 0 {
            info!(
                released = n,
                "held jobs of sidecars that stopped are runnable now"
            );
        }
        Ok(n)
    }

    async fn host_alive(&self, host: &str, now: Millis) -> Result<bool, StoreError> {
        if host.is_empty() || !valid_id(host) {
            return Ok(false);
        }
        match self.hosts.entry(host).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                let at = serde_json::from_slice::<Beat>(&e.value).map_or(0, |b| b.at);
                Ok(now - at < HOST_GONE_AFTER.as_millis() as i64)
            }
            Ok(_) => Ok(false),
            Err(e) => Err(StoreError::nats("cannot read a heartbeat", e)),
        }
    }

    pub(crate) async fn sweep(&self, now: Millis) -> Result<usize, StoreError> {
        let mut touched = self.repair_local(now).await?;
        touched += self.release_orphaned(now, false).await?;
        // Runnable jobs whose notice was lost between two writes (a host died in between).
        let stale = now - ORPHAN_AFTER.as_millis() as i64;
        for (rec, rev) in self.scan().await? {
            if !rec.life.pending() || rec.life.updated_at > stale {
                continue;
            }
            if self.has_notice(&rec.head.id).await? {
                continue;
            }
            // A record no action key points at lost the race for its key: never queued.
            let key = key_of(&rec.head.idempotency_key);
            let owned = match self.keys.entry(&key).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => {
                    e.value == rec.head.id.as_bytes()
                }
                Ok(_) => false,
                Err(e) => return Err(StoreError::nats("cannot read a job's action key", e)),
            };
            let renamed = rec
                .head
                .idempotency_key
                .ends_with(&format!("#{}", rec.head.id));
            if !owned && !renamed {
                self.remove_record(&rec.head.id).await?;
                touched += 1;
                continue;
            }
            self.publish_notice(&rec.head.id, &format!("{}.{rev}", rec.head.id))
                .await?;
            warn!(job = %rec.head.id, "a runnable job had no notice; published it again");
            touched += 1;
        }
        Ok(touched)
    }

    /// Whether this host left work for [`NatsJobs::repair_local`] while NATS was away.
    pub(crate) fn has_local_repairs(&self) -> bool {
        !self
            .ended_calls
            .lock()
            .expect("ended calls lock")
            .is_empty()
            || !self.compensate.lock().expect("compensate lock").is_empty()
    }

    /// What this host could not write while NATS was away, written now: held jobs of calls
    /// that ended meanwhile are released, and jobs whose enqueue was answered with an error
    /// are failed unless a worker took them.
    pub(crate) async fn repair_local(&self, now: Millis) -> Result<usize, StoreError> {
        self.usable()?;
        let mut touched = 0;
        // One failing job does not hold up the others; the first error is reported.
        let mut first_error = None;
        // Calls that ended while NATS was away: their held jobs run now.
        let ended: Vec<(String, String)> = self
            .ended_calls
            .lock()
            .expect("ended calls lock")
            .iter()
            .cloned()
            .collect();
        for call in ended {
            match self.release_held_call(&call, now).await {
                Ok(n) => {
                    touched += n;
                    self.ended_calls
                        .lock()
                        .expect("ended calls lock")
                        .remove(&call);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Enqueues answered with an error: cancel what no worker took.
        let pending: Vec<String> = self
            .compensate
            .lock()
            .expect("compensate lock")
            .iter()
            .cloned()
            .collect();
        for id in pending {
            let t = self
                .step(&id, |r| {
                    (r.state == JobState::Queued && !r.possibly_sent).then(|| {
                        transitions::withdraw(
                            r,
                            "not queued: JetStream did not acknowledge the job",
                            now,
                        )
                    })
                })
                .await;
            match t {
                Ok(t) => {
                    if matches!(t, Transition::Done(..)) {
                        touched += 1;
                    }
                    self.compensate.lock().expect("compensate lock").remove(&id);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(touched),
        }
    }

    async fn has_notice(&self, id: &str) -> Result<bool, StoreError> {
        match self
            .queue
            .get_last_raw_message_by_subject(&self.names.run_subject(id))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(StoreError::nats("cannot look up a job notice", e)),
        }
    }

    pub(crate) async fn cancel_unsent(
        &self,
        id: &str,
        why: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.usable()?;
        match self
            .step(id, |r| transitions::cancel_unsent(r, why, now))
            .await?
        {
            Transition::Done(rec, _) => {
                if let Some(ids) = self
                    .held_calls
                    .lock()
                    .expect("held calls lock")
                    .get_mut(&(rec.head.org.clone(), rec.head.call_id.clone()))
                {
                    ids.remove(id);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub(crate) async fn retry(
        &self,
        id: &str,
        now: Millis,
    ) -> Result<Option<Result<Job, RetryRefused>>, StoreError> {
        self.usable()?;
        match self.step(id, |r| transitions::retry(r, now).ok()).await? {
            Transition::Missing => Ok(None),
            Transition::Declined(rec, _) => Ok(Some(Err(transitions::retry(&rec.life, now)
                .err()
                .unwrap_or(RetryRefused::State(rec.life.state))))),
            Transition::Done(rec, rev) => {
                if let Err(e) = self.dead.purge().filter(self.names.dead_subject(id)).await {
                    debug!(job = %id, error = %e, "cannot remove a dead letter");
                }
                if let Err(e) = self
                    .publish_notice(&rec.head.id, &format!("{}.{rev}", rec.head.id))
                    .await
                {
                    warn!(job = %rec.head.id, error = %e, "a retried job has no notice yet; the sweep will publish it");
                }
                Ok(Some(Ok(rec.job())))
            }
        }
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(self.load(id).await?.map(|(r, _)| r.job()))
    }

    /// Every job, the latest state of each, with its revision.
    async fn scan(&self) -> Result<Vec<(Record, u64)>, StoreError> {
        let mut out = Vec::new();
        self.visit(|payload, revision| match decode(payload) {
            Ok(r) => out.push((r, revision)),
            Err(e) => warn!(error = %e, "skipping a job record that does not parse"),
        })
        .await?;
        Ok(out)
    }

    /// Hand every kept job record (its JSON and revision) to `f`, in one ordered read of the
    /// bucket's stream.
    async fn visit(&self, mut f: impl FnMut(&[u8], u64)) -> Result<(), StoreError> {
        let failed = |e: &dyn std::fmt::Display| StoreError::nats("cannot read the jobs", e);
        let consumer = self
            .jobs_stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("$KV.{}.>", self.names.jobs),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(());
        }
        let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
        loop {
            let Ok(next) = tokio::time::timeout(SCAN_IDLE, messages.next()).await else {
                // Nothing more comes: the last record counted was removed meanwhile.
                self.usable()?;
                break;
            };
            let Some(msg) = next else { break };
            let msg = msg.map_err(|e| failed(&e))?;
            let info = msg.info().map_err(|e| failed(&e))?;
            let (left, revision) = (info.pending, info.stream_sequence);
            if crate::storage::nats::is_put(msg.headers.as_ref()) {
                f(&msg.payload, revision);
            }
            if left == 0 {
                break;
            }
        }
        Ok(())
    }

    pub(crate) async fn clear_expired_inputs(&self, now: Millis) -> Result<usize, StoreError> {
        self.usable()?;
        let mut n = 0;
        for (rec, _) in self.scan().await? {
            if transitions::clear_expired_inputs(&rec.life, now).is_none() {
                continue;
            }
            if let Transition::Done(..) = self
                .step(&rec.head.id, |r| transitions::clear_expired_inputs(r, now))
                .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    pub(crate) async fn prune(&self, before: Millis) -> Result<usize, StoreError> {
        self.usable()?;
        let mut n = 0;
        for (rec, _) in self.scan().await? {
            if rec.life.finished_at.is_none_or(|f| f >= before) {
                continue;
            }
            self.remove_record(&rec.head.id).await?;
            // Its action key is free again, unless it already names a newer job.
            let key = key_of(&rec.head.idempotency_key);
            if let Ok(Some(e)) = self.keys.entry(&key).await
                && e.operation == kv::Operation::Put
                && e.value == rec.head.id.as_bytes()
            {
                let _ = self
                    .keys
                    .delete_expect_revision(&key, Some(e.revision))
                    .await;
            }
            if rec.life.state == JobState::Dead {
                let _ = self
                    .dead
                    .purge()
                    .filter(self.names.dead_subject(&rec.head.id))
                    .await;
            }
            n += 1;
        }
        Ok(n)
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.usable()?;
        // A real round trip to JetStream: the queue stream's state.
        self.queue
            .get_info()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::nats("JetStream does not answer", e))
    }

    pub(crate) async fn list(
        &self,
        state: Option<JobState>,
        org: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.usable()?;
        let mut jobs: Vec<Record> = self
            .scan()
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| {
                state.is_none_or(|s| r.life.state == s) && org.is_none_or(|o| r.head.org == o)
            })
            .collect();
        jobs.sort_by(|a, b| (b.head.created_at, &b.head.id).cmp(&(a.head.created_at, &a.head.id)));
        jobs.truncate(limit);
        Ok(jobs.iter().map(Record::job).collect())
    }

    pub(crate) fn counted_from_index(&self) -> u64 {
        self.counted_from_index.load(Ordering::Relaxed)
    }

    pub(crate) async fn counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        self.usable()?;
        let index = self.state_index.get_or_init(|| {
            super::state_index::StateIndex::start(
                self.jobs_stream.clone(),
                format!("$KV.{}.", self.names.jobs),
            )
        });
        let info = self
            .jobs_stream
            .get_info()
            .await
            .map_err(|e| StoreError::nats("cannot read the jobs", e))?;
        if let Some(counts) = index.counts(&info).await {
            self.counted_from_index.fetch_add(1, Ordering::Relaxed);
            return Ok(counts);
        }
        use super::state_index::StateOnly;
        let mut counts: HashMap<JobState, u64> = HashMap::new();
        self.visit(
            |payload, _| match serde_json::from_slice::<StateOnly>(payload) {
                Ok(r) => *counts.entry(r.state).or_default() += 1,
                Err(e) => warn!(error = %e, "skipping a job record that does not parse"),
            },
        )
        .await?;
        let mut out: Vec<(JobState, u64)> = counts.into_iter().collect();
        out.sort();
        Ok(out)
    }

    pub(crate) async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(task) = self.heartbeat.lock().expect("heartbeat lock").take() {
            task.abort();
        }
        if let Some(index) = self.state_index.get() {
            index.stop();
        }
        // Notices still held (attempts that outlived the drain) go back at once: whoever
        // pulls them waits for the lease, then takes the job over.
        let held: Vec<Held> = self
            .held
            .lock()
            .expect("held lock")
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in held {
            h.keepalive.abort();
            let _ = h.acker.ack_with(AckKind::Nak(None)).await;
        }
        let _ =
            tokio::time::timeout(self.options.request_timeout, self.hosts.purge(&self.host)).await;
        if tokio::time::timeout(self.options.request_timeout, self.client.flush())
            .await
            .is_err()
        {
            warn!("NATS did not take the last acknowledgements in time");
        }
        info!(host = %self.host, "job store on NATS closed");
    }
}

impl Drop for NatsJobs {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeat.lock().expect("heartbeat lock").take() {
            task.abort();
        }
        for (_, h) in self.held.lock().expect("held lock").drain() {
            h.keepalive.abort();
        }
    }
}
