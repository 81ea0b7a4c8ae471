//! The post-call workflow (SPEC §4): actions handed off when the caller should not wait.
//!
//! A job is written durably (SQLite WAL, fsync at commit; or acknowledged by NATS JetStream,
//! see [`nats`]) *before* the model is told `deferred`, so a promise the model makes is never
//! lost: [`store::JobStore`] answers an enqueue only after its commit. A live request that is
//! still running when the budget ends holds the job's lease, so the worker cannot send it a
//! second time; if the sidecar dies, the lease expires and the worker takes over.
//!
//! Job states: `queued` (waiting to run, or held for the end of its call), `in_flight` (leased
//! by a live request or a worker), `succeeded`, `failed` (definitive), `dead` (out of
//! attempts). How a job moves between them is written once, in [`transitions`]; the two
//! backends of [`store::JobStore`] keep it.
//!
//! The worker that runs the jobs stands on the whole process and lives above this module
//! (`crate::worker`); this one stands on [`crate::storage`] only.

pub mod nats;
mod state_index;
pub mod store;
pub mod transitions;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::bindings::ResolvedInput;
use crate::catalog::Action;
use crate::clock::Millis;
use crate::providers::{Accepted, Delivery, ProviderError};
use transitions::Lifecycle;

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to run (or held until its call ends).
    Queued,
    /// Leased by a live request or a worker.
    InFlight,
    /// The provider accepted it.
    Succeeded,
    /// The provider refused it definitively, or it was cancelled before it was sent.
    Failed,
    /// Out of attempts.
    Dead,
}

impl JobState {
    /// All states.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::InFlight,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
    ];

    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::InFlight => "in_flight",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
        }
    }

    /// Parse a stored or queried state.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `POST /v1/jobs/{id}/retry` cannot put a job back in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryRefused {
    /// Only `failed` and `dead` jobs are retried; this one is in another state.
    State(JobState),
    /// The job's raw inputs were cleared when it ended (or when its retry window passed):
    /// there is nothing left to send.
    InputsCleared,
}

/// Whether a job in `state` with `retry_window_ms` keeps its raw inputs: until it ends, and
/// after a `failed` or `dead` end for its retry window. Both backends apply this at every
/// transition into a final state.
pub fn keeps_inputs(state: JobState, retry_window_ms: u64) -> bool {
    match state {
        JobState::Queued | JobState::InFlight => true,
        JobState::Succeeded => false,
        JobState::Failed | JobState::Dead => retry_window_ms > 0,
    }
}

/// Why a tool call was handed to a workflow (`toolgate_deferrals_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeferReason {
    /// `defer_after_ms` passed with the live request still running.
    Budget,
    /// A retryable failure (429, 5xx, unreachable) came back before the budget ended.
    RetryableFailure,
    /// The connection's circuit is open: queued at once.
    CircuitOpen,
    /// The connection's recent p90 latency exceeds the budget: queued at once.
    PredictedSlow,
    /// `mode = "workflow"`: queued at once, run after the call.
    Workflow,
    /// The connection is over its rate limit (or the provider asked to slow down): queued
    /// until a request may go.
    RateLimited,
}

impl DeferReason {
    /// All reasons.
    pub const ALL: [DeferReason; 6] = [
        DeferReason::Budget,
        DeferReason::RetryableFailure,
        DeferReason::CircuitOpen,
        DeferReason::PredictedSlow,
        DeferReason::Workflow,
        DeferReason::RateLimited,
    ];

    /// The reason as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeferReason::Budget => "budget",
            DeferReason::RetryableFailure => "retryable_failure",
            DeferReason::CircuitOpen => "circuit_open",
            DeferReason::PredictedSlow => "predicted_slow",
            DeferReason::Workflow => "workflow",
            DeferReason::RateLimited => "rate_limited",
        }
    }
}

/// Where a new job starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Runnable from this time.
    RunnableAt(Millis),
    /// Held until its call ends (`mode = "workflow"`).
    AfterCall,
    /// A live first attempt failed retryably: runnable from `not_before`, one attempt made.
    Retry {
        /// Earliest next attempt.
        not_before: Millis,
        /// Whether the live attempt may have reached the provider.
        possibly_sent: bool,
        /// What went wrong (redacted).
        error: String,
    },
    /// A live request is still running it: leased by `owner` until `until`, first attempt.
    Live {
        /// The lease owner (`live:<instance>`).
        owner: String,
        /// When the lease lapses if the owner never finishes it.
        until: Millis,
    },
}

/// Everything needed to run an action later, without the session.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Owning org.
    pub org: String,
    /// Agent id.
    pub agent: String,
    /// Function name.
    pub function: String,
    /// The media server's call id.
    pub call_id: String,
    /// The `tool.call` id.
    pub tool_call_id: String,
    /// The invocation (evidence) id.
    pub invocation_id: String,
    /// The catalog action.
    pub action: Action,
    /// The connection id.
    pub connection: String,
    /// Resolved inputs.
    pub inputs: Vec<ResolvedInput>,
    /// The action key: Resend `Idempotency-Key`, webhook `webhook-id`; one job per key.
    pub idempotency_key: String,
    /// Whether a repeat cannot act twice at the provider.
    pub idempotent: bool,
    /// Why it was deferred.
    pub reason: DeferReason,
    /// Attempts before `dead`.
    pub max_attempts: u32,
    /// Budget of one attempt.
    pub hard_timeout: Duration,
    /// How long the raw inputs outlive a `failed` or `dead` end, so an operator can retry the
    /// job (`workflow.retry_window_ms`); zero: cleared as the job ends, as on success.
    pub retry_window: Duration,
    /// How it starts.
    pub start: Start,
}

/// A new job's first state: the same on every backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstState {
    /// `queued`, `in_flight` (a live request holds it) or `dead` (out of attempts already).
    pub state: JobState,
    /// Attempts made so far (a live one counts).
    pub attempts: u32,
    /// When it may run; `None` while held for its call (or leased, or dead).
    pub runnable_at: Option<Millis>,
    /// The live request's lease owner.
    pub lease_owner: Option<String>,
    /// When that lease lapses.
    pub lease_until: Option<Millis>,
    /// The live attempt's error.
    pub last_error: Option<String>,
    /// A non-idempotent action whose live attempt may have reached the provider.
    pub at_least_once: bool,
    /// Whether an attempt may already have reached the provider.
    pub possibly_sent: bool,
}

impl NewJob {
    /// Where this job starts, from [`NewJob::start`] and its attempts.
    pub fn first_state(&self) -> FirstState {
        let mut first = FirstState {
            state: JobState::Queued,
            attempts: 0,
            runnable_at: None,
            lease_owner: None,
            lease_until: None,
            last_error: None,
            at_least_once: false,
            possibly_sent: false,
        };
        match &self.start {
            Start::RunnableAt(at) => first.runnable_at = Some(*at),
            Start::AfterCall => {}
            Start::Retry {
                not_before,
                possibly_sent,
                error,
            } => {
                first.attempts = 1;
                first.runnable_at = Some(*not_before);
                first.last_error = Some(error.clone());
                first.at_least_once = *possibly_sent && !self.idempotent;
                first.possibly_sent = *possibly_sent;
            }
            Start::Live { owner, until } => {
                first.state = JobState::InFlight;
                first.attempts = 1;
                first.lease_owner = Some(owner.clone());
                first.lease_until = Some(*until);
                first.possibly_sent = true;
            }
        }
        if first.state == JobState::Queued && first.attempts >= self.max_attempts {
            first.state = JobState::Dead;
            first.runnable_at = None;
            first.at_least_once = false;
        }
        first
    }
}

/// A stored job.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Job id (`job_<ulid>`).
    pub id: String,
    /// Owning org.
    pub org: String,
    /// Agent id.
    pub agent: String,
    /// Function name.
    pub function: String,
    /// Call id.
    pub call_id: String,
    /// `tool.call` id.
    pub tool_call_id: String,
    /// Invocation id.
    pub invocation_id: String,
    /// Catalog action name.
    pub action: String,
    /// Connection id.
    pub connection: String,
    /// Resolved inputs (never shown by the API).
    #[serde(skip)]
    pub inputs: Vec<ResolvedInput>,
    /// The action key.
    #[serde(skip)]
    pub idempotency_key: String,
    /// Whether repeats are safe at the provider.
    #[serde(skip)]
    pub idempotent: bool,
    /// Why it was deferred.
    pub reason: String,
    /// State.
    pub state: JobState,
    /// Attempts made (a live request counts as the first).
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// When it may run (`None`: held until its call ends).
    pub runnable_at: Option<Millis>,
    /// Who holds the lease.
    pub lease_owner: Option<String>,
    /// When the lease lapses.
    pub lease_until: Option<Millis>,
    /// Budget of one attempt, in ms.
    pub hard_timeout_ms: u64,
    /// The last failure, redacted.
    pub last_error: Option<String>,
    /// The provider's id for the sent message.
    pub provider_message_id: Option<String>,
    /// Sent again after an attempt that may have reached a provider without idempotency:
    /// the action may have happened more than once.
    pub at_least_once: bool,
    /// The raw inputs (recipient, body) are gone: it ended, and its retry window (if any)
    /// passed. It can no longer be retried.
    pub inputs_cleared: bool,
    /// Created.
    pub created_at: Millis,
    /// Last changed.
    pub updated_at: Millis,
    /// Reached a final state.
    pub finished_at: Option<Millis>,
}

/// What never changes of a stored job (who, what, under which key: the [`Job`] fields of the
/// same names), beside its [`Lifecycle`] and its inputs: how each backend keeps a job, put
/// together by [`Job::assemble`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Head {
    pub(crate) id: String,
    pub(crate) org: String,
    pub(crate) agent: String,
    pub(crate) function: String,
    pub(crate) call_id: String,
    pub(crate) tool_call_id: String,
    pub(crate) invocation_id: String,
    pub(crate) action: String,
    pub(crate) connection: String,
    /// A failed or dead job's is renamed when its action is queued afresh.
    pub(crate) idempotency_key: String,
    pub(crate) reason: String,
    pub(crate) created_at: Millis,
}

impl Head {
    /// The head of `job`, stored as `id` at `now`.
    pub(crate) fn new(job: &NewJob, id: String, now: Millis) -> Head {
        Head {
            id,
            org: job.org.clone(),
            agent: job.agent.clone(),
            function: job.function.clone(),
            call_id: job.call_id.clone(),
            tool_call_id: job.tool_call_id.clone(),
            invocation_id: job.invocation_id.clone(),
            action: job.action.as_str().to_owned(),
            connection: job.connection.clone(),
            idempotency_key: job.idempotency_key.clone(),
            reason: job.reason.as_str().to_owned(),
            created_at: now,
        }
    }
}

impl Job {
    /// A stored job from its parts.
    pub(crate) fn assemble(head: Head, life: Lifecycle, inputs: Vec<ResolvedInput>) -> Job {
        Job {
            id: head.id,
            org: head.org,
            agent: head.agent,
            function: head.function,
            call_id: head.call_id,
            tool_call_id: head.tool_call_id,
            invocation_id: head.invocation_id,
            action: head.action,
            connection: head.connection,
            inputs,
            idempotency_key: head.idempotency_key,
            idempotent: life.idempotent,
            reason: head.reason,
            state: life.state,
            attempts: life.attempts,
            max_attempts: life.max_attempts,
            runnable_at: life.runnable_at,
            lease_owner: life.lease_owner,
            lease_until: life.lease_until,
            hard_timeout_ms: life.hard_timeout_ms,
            last_error: life.last_error,
            provider_message_id: life.provider_message_id,
            at_least_once: life.at_least_once,
            inputs_cleared: life.inputs_cleared,
            created_at: head.created_at,
            updated_at: life.updated_at,
            finished_at: life.finished_at,
        }
    }
}

/// The lease of one attempt at a job, as its holder names it when it reports: the job, the
/// owner, and the attempt it was taken for. A lease that lapsed and was taken over (even by the
/// same owner) is another attempt's, so a report naming the old one is fenced off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease<'a> {
    pub(crate) id: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) attempt: u32,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Accepted by the provider.
    Succeeded {
        /// The provider's message id.
        message_id: Option<String>,
    },
    /// A definitive refusal: no retry.
    Failed {
        /// Why (redacted).
        error: String,
    },
    /// A retryable failure: run again from `not_before`, unless out of attempts (`dead`).
    Retry {
        /// Earliest next attempt (backoff, or the provider's `Retry-After`).
        not_before: Millis,
        /// Why (redacted).
        error: String,
        /// Whether the attempt may have reached the provider.
        possibly_sent: bool,
    },
}

impl Finish {
    /// Whether a job as stored (`state`, `attempts`, `lease_owner`, `last_error`) already
    /// holds this end of attempt `attempt`: no claim came after it (a takeover counts another
    /// attempt), the lease is released, and the state and error are this end's. A worker
    /// whose report was stored but never answered (NATS went away) reports again, and that
    /// counts as recorded, once.
    pub fn recorded_in(
        &self,
        attempt: u32,
        state: JobState,
        attempts: u32,
        lease_owner: Option<&str>,
        last_error: Option<&str>,
    ) -> bool {
        if attempts != attempt || lease_owner.is_some() {
            return false;
        }
        match self {
            Finish::Succeeded { .. } => state == JobState::Succeeded,
            Finish::Failed { error } => {
                state == JobState::Failed && last_error == Some(error.as_str())
            }
            Finish::Retry { error, .. } => {
                matches!(state, JobState::Queued | JobState::Dead)
                    && last_error == Some(error.as_str())
            }
        }
    }

    /// How an attempt that ended with `result` is recorded: a success, a definitive refusal,
    /// or a retry no sooner than the backoff for attempt `attempts` and the provider's
    /// `Retry-After`. Provider messages are expected redacted already.
    pub fn from_result(
        result: &Result<Accepted, ProviderError>,
        backoff: &Backoff,
        attempts: u32,
        now: Millis,
    ) -> Finish {
        match result {
            Ok(a) => Finish::Succeeded {
                message_id: a.message_id.clone(),
            },
            Err(e) if e.retryable => Finish::Retry {
                not_before: backoff.not_before(now, attempts, e.retry_after),
                error: e.summary(),
                possibly_sent: e.delivery != Delivery::NotSent,
            },
            Err(e) => Finish::Failed { error: e.summary() },
        }
    }
}

/// A new job id.
pub fn job_id() -> String {
    format!("job_{}", ulid::Ulid::generate())
}
