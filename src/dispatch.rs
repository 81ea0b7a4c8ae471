//! Dispatch (SPEC §4): runs one accepted tool call against its provider under a timing budget,
//! asking for filler lines while the caller would otherwise hear silence, and handing the
//! action to a post-call workflow when the caller should not wait any longer.
//!
//! The budget is data ([`Budget`]) that travels with the call; [`drive`] is the one place that
//! turns it into timers, so the rules (first filler at `filler_after`, repeats every
//! `filler_repeat`, at most [`MAX_FILLERS`], never a filler once the result is ready, stop at a
//! deadline without dropping the work) are tested on tokio's paused clock without any HTTP.
//!
//! How an accepted call runs, by mode:
//! - `workflow`: queued at once, held until the call ends. Never sent live.
//! - `auto`: queued at once when the connection predicts failure (circuit open) or slowness
//!   (recent p90 above `defer_after`). Otherwise sent live; at `defer_after` the job is
//!   written (committed, fsynced) and only then is `deferred` answered, while the live request
//!   keeps the job's lease and runs on until `hard_timeout`: its success closes the job with
//!   nothing re-sent, a refusal fails it, an unknown outcome leaves it to the worker. A
//!   retryable failure before the budget is queued too.
//! - `live`: sent live; `hard_timeout` ends it as `failed` with `timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info};

use crate::bindings::{CallContext, Resolution};
use crate::clock::{Millis, now_ms};
use crate::config::{Agent, Function, Mode, Timing};
use crate::connections::Usable;
use crate::connections::breaker::Admit;
use crate::guards::{Guard, Rejection, Verdict};
use crate::providers::{self, Accepted, ActionContext, Delivery, Prepared, ProviderError};
use crate::runtime::{Runtime, Snapshot};
use crate::telemetry;
use crate::workflow::transitions::LEASE_MARGIN;
use crate::workflow::{DeferReason, Finish, Job, JobState, NewJob, Start};

/// Most filler lines per tool call.
pub const MAX_FILLERS: u32 = 3;

/// The timing budget of one tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// First filler after this long without a result.
    pub filler_after: Duration,
    /// Repeat fillers this often (zero: no repeats).
    pub filler_repeat: Duration,
    /// Hand off to a workflow after this long (`auto` mode).
    pub defer_after: Duration,
    /// Abandon the live request after this long.
    pub hard_timeout: Duration,
    /// Keep filler and handoff times to a fraction of a millisecond ([`crate::timer`]); off
    /// only for tests on tokio's paused clock.
    pub precise: bool,
}

impl From<&Timing> for Budget {
    fn from(t: &Timing) -> Self {
        Budget {
            filler_after: t.filler_after,
            filler_repeat: t.filler_repeat,
            defer_after: t.defer_after,
            hard_timeout: t.hard_timeout,
            precise: true,
        }
    }
}

/// Sleep until `at`: precisely ([`crate::timer`]) or on tokio's timer alone.
async fn wait_until(at: Instant, precise: bool) {
    if precise {
        crate::timer::sleep_until(at).await
    } else {
        sleep_until(at).await
    }
}

/// How a budgeted wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Driven<T> {
    /// The work finished in time.
    Done(T),
    /// The deadline came first; the work is still pending and was not dropped.
    Stopped,
}

/// Await `work` until it finishes or `until` passes, calling `on_filler(seq, elapsed)` at each
/// filler time before then. When the result and a filler fall due together, the result wins.
pub async fn drive<F: Future + ?Sized>(
    start: Instant,
    budget: &Budget,
    until: Instant,
    mut work: Pin<&mut F>,
    mut on_filler: impl FnMut(u32, Duration),
) -> Driven<F::Output> {
    let mut seq = 0u32;
    let mut next_filler = Some(start + budget.filler_after).filter(|t| *t < until);
    loop {
        let filler_at = next_filler.unwrap_or(until);
        tokio::select! {
            biased;
            out = work.as_mut() => return Driven::Done(out),
                        _ = wait_until(until, budget.precise) => return Driven::Stopped,
            _ = wait_until(filler_at, budget.precise), if next_filler.is_some() => {
                seq += 1;
                on_filler(seq, Instant::now() - start);
                next_filler = (seq < MAX_FILLERS && !budget.filler_repeat.is_zero())
                    .then(|| filler_at + budget.filler_repeat)
                    .filter(|t| *t < until);
            }
        }
    }
}

/// What happened to the action, as far as this call knows.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Accepted.
    Accepted(Accepted),
    /// Refused, errored or timed out.
    Failed(ProviderError),
    /// Cancelled before it was sent.
    NotSent,
    /// In the workflow queue; the worker will run it.
    Queued,
    /// toolgate itself failed (a bug); whether anything was sent is unknown.
    Internal(String),
}

/// Timestamps of one provider request, relative to the `tool.call`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderTiming {
    /// When the request left.
    pub sent: Option<Duration>,
    /// When the answer (or the timeout) came.
    pub done: Option<Duration>,
}

/// Where a running call tells its session what happened.
///
/// The events are boxed: a tokio channel allocates its first block of 32 slots when it is
/// created, so the slot size is paid by every live call, idle or not (32 inline `Event`s
/// would be 9 KiB per call; 32 boxes are 256 bytes). One small allocation per event (about
/// two per tool call) is the price.
pub type Events = mpsc::UnboundedSender<Box<Event>>;

/// Messages from a running call to its session.
#[allow(clippy::large_enum_variant)] // always boxed, see [`Events`]
#[derive(Debug)]
pub enum Event {
    /// Time for a filler line.
    Filler {
        /// The `tool.call` id.
        id: String,
        /// 1, 2, 3.
        seq: u32,
        /// Since the `tool.call` arrived.
        elapsed: Duration,
    },
    /// The action is durably in the workflow queue: answer `deferred` now. A `Done` follows
    /// (at once, or when a live request that kept running ends).
    Deferred {
        /// The `tool.call` id.
        id: String,
        /// The job id.
        job_id: String,
        /// Why.
        reason: DeferReason,
        /// How long the call waited on the provider before it was handed off.
        provider_wait: Duration,
    },
    /// The call is finished.
    Done(Done),
}

/// A finished call, as its session hears of it.
#[derive(Debug)]
pub struct Done {
    /// The `tool.call` id.
    pub id: String,
    /// What happened.
    pub outcome: Outcome,
    /// Provider request timing.
    pub timing: ProviderTiming,
    /// The resolved inputs, handed back for the evidence.
    pub inputs: Resolution,
    /// The provider request, when one was built (for the evidence; redacted there).
    pub request: Option<Arc<Prepared>>,
}

/// A tool call that passed its guards.
#[derive(Debug)]
pub struct LiveCall {
    /// The `tool.call` id.
    pub id: String,
    /// The org of the session.
    pub org: String,
    /// The invocation id.
    pub invocation_id: String,
    /// The session's agent.
    pub agent: Arc<Agent>,
    /// Index of the function in the agent.
    pub function: usize,
    /// The call's session values.
    pub ctx: Arc<CallContext>,
    /// Resolved inputs.
    pub inputs: Resolution,
    /// The action key (idempotency key).
    pub key: String,
    /// When the `tool.call` arrived.
    pub received: Instant,
    /// Set by `tool.cancel`: not sent if not sent yet, no more fillers, and no handoff (the
    /// caller interrupted; the live request runs out and its true outcome is reported).
    pub cancelled: Arc<AtomicBool>,
    /// How it goes out ([`plan`]): never `Reject`.
    pub plan: Plan,
    /// The snapshot the call was planned in.
    pub snap: Arc<Snapshot>,
}

/// How an accepted call goes out, decided in memory before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Send it now; `probe` when it is the one request an open circuit lets through.
    Live {
        /// The circuit's probe: its outcome closes or reopens the circuit.
        probe: bool,
    },
    /// Queue it without sending.
    Queue {
        /// Why.
        reason: DeferReason,
        /// When it may run.
        start: Start,
    },
    /// Do not do it.
    Reject(Rejection),
}

fn at_millis(until: Instant, now: Instant) -> Millis {
    now_ms() + until.saturating_duration_since(now).as_millis() as Millis
}

/// Decide how an accepted call goes out (SPEC §3 connection and rate guards, §4 predictive
/// deferral): a workflow function is queued for after the call; a connection that cannot take
/// it now (provider down, circuit open, over its rate) queues a deferrable call and refuses a
/// live one; a connection too slow for the budget queues an `auto` call at once. Taking the
/// circuit's probe or a rate token happens here, so it is only done for calls that go out.
pub fn plan(snap: &Snapshot, function: &Function, now: Instant) -> (Plan, Vec<Verdict>) {
    let mode = function.timing.mode;
    let deferrable = mode != Mode::Live;
    let conn = &function.connection.id;
    let mut verdicts = Vec::new();
    let verdict = |guard, passed, detail: String| Verdict {
        guard,
        passed,
        detail,
    };
    if mode == Mode::Workflow {
        return (
            Plan::Queue {
                reason: DeferReason::Workflow,
                start: Start::AfterCall,
            },
            verdicts,
        );
    }
    let Some(health) = snap.connections.health(conn) else {
        let r = Rejection::new(Guard::Connection, format!("{conn} is not configured"));
        return (Plan::Reject(r), verdicts);
    };
    let queue_until = |reason, until: Instant| Plan::Queue {
        reason,
        start: Start::RunnableAt(at_millis(until, now)),
    };
    // A provider that was unreachable at its last validation, or whose circuit is open.
    let down_until = match health.usable(now) {
        Usable::Later => Some(
            health
                .breaker
                .open_until(now)
                .unwrap_or(now + snap.config.defaults.revalidate_error),
        ),
        _ => None,
    };
    let probe = match down_until.map_or_else(|| health.breaker.admit(now), Admit::Wait) {
        Admit::Go => false,
        Admit::Probe => true,
        Admit::Wait(until) => {
            let detail = format!("{conn}: the provider is down or its circuit is open");
            verdicts.push(verdict(Guard::Connection, deferrable, detail.clone()));
            return if deferrable {
                (queue_until(DeferReason::CircuitOpen, until), verdicts)
            } else {
                let r = Rejection::new(Guard::Connection, detail);
                (Plan::Reject(r), verdicts)
            };
        }
    };
    if mode == Mode::Auto
        && !probe
        && snap
            .connections
            .predicted_slow(conn, function.timing.defer_after)
    {
        return (
            Plan::Queue {
                reason: DeferReason::PredictedSlow,
                start: Start::RunnableAt(now_ms()),
            },
            verdicts,
        );
    }
    match health.limiter.try_acquire(now) {
        Ok(()) => {
            verdicts.push(verdict(Guard::Rate, true, String::new()));
            (Plan::Live { probe }, verdicts)
        }
        Err(until) => {
            if probe {
                health.breaker.release_probe(now);
            }
            let detail = format!(
                "{conn} is over its rate limit for {} ms",
                until.saturating_duration_since(now).as_millis()
            );
            verdicts.push(verdict(Guard::Rate, deferrable, detail.clone()));
            if deferrable {
                (queue_until(DeferReason::RateLimited, until), verdicts)
            } else {
                (Plan::Reject(Rejection::new(Guard::Rate, detail)), verdicts)
            }
        }
    }
}

/// Run one call to completion, reporting fillers and the outcome to the session. Whatever
/// happens inside, including a panic, the session gets exactly one `Done` for the call.
pub async fn run(mut call: LiveCall, rt: Arc<Runtime>, events: Events) {
    use futures_util::FutureExt;
    let work = std::panic::AssertUnwindSafe(run_inner(&call, &rt, &events)).catch_unwind();
    let (outcome, timing, request) = match work.await {
        Ok(done) => done,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_owned());
            tracing::error!(id = %call.id, panic = %what, "tool call failed inside toolgate; answering it as an internal error");
            (Outcome::Internal(what), ProviderTiming::default(), None)
        }
    };
    let _ = events.send(Box::new(Event::Done(Done {
        id: std::mem::take(&mut call.id),
        outcome,
        timing,
        inputs: std::mem::take(&mut call.inputs),
        request,
    })));
}

/// How a call ended: the outcome, the provider timing and the request, when one was built.
type Ended = (Outcome, ProviderTiming, Option<Arc<Prepared>>);

struct Run<'a> {
    call: &'a LiveCall,
    rt: &'a Runtime,
    function: &'a Function,
    events: &'a Events,
}

impl Run<'_> {
    fn cancelled(&self) -> bool {
        self.call.cancelled.load(Ordering::Acquire)
    }

    fn new_job(&self, reason: DeferReason, start: Start) -> NewJob {
        NewJob {
            org: self.call.org.clone(),
            agent: self.call.agent.id.clone(),
            function: self.function.name.clone(),
            call_id: self.call.ctx.call_id.clone(),
            tool_call_id: self.call.id.clone(),
            invocation_id: self.call.invocation_id.clone(),
            action: self.function.action,
            connection: self.function.connection.id.clone(),
            inputs: self.call.inputs.inputs.clone(),
            idempotency_key: self.call.key.clone(),
            idempotent: self.function.action.provider().idempotent(),
            reason,
            max_attempts: self.call.snap.config.workflow.max_attempts,
            hard_timeout: self.function.timing.hard_timeout,
            retry_window: self.call.snap.config.workflow.retry_window,
            start,
        }
    }

    /// Write the job (committed before this returns), then tell the session to answer
    /// `deferred`. `Err` says why it was not deferred, and what to answer instead:
    /// - the caller barged in while the job was written and it was never sent: it is
    ///   cancelled, nothing will be sent (`NotSent`);
    /// - the store refused the job (`None`): the caller decides;
    /// - the job is already final (out of attempts, or done before): answered by its state.
    async fn defer(
        &self,
        reason: DeferReason,
        start: Start,
        provider_wait: Duration,
    ) -> Result<Job, Option<Outcome>> {
        let unsent = match &start {
            Start::RunnableAt(_) | Start::AfterCall => true,
            Start::Retry { possibly_sent, .. } => !possibly_sent,
            Start::Live { .. } => false,
        };
        let job = match self
            .rt
            .jobs
            .enqueue(self.new_job(reason, start), now_ms())
            .await
        {
            Ok(job) => job,
            Err(e) => {
                error!(id = %self.call.id, error = %e, "cannot store a workflow job; the call is not deferred");
                return Err(None);
            }
        };
        match job.state {
            JobState::Succeeded => {
                return Err(Some(Outcome::Accepted(Accepted {
                    message_id: job.provider_message_id.clone(),
                    http_status: 200,
                    body: Default::default(),
                })));
            }
            JobState::Failed | JobState::Dead => return Err(None),
            JobState::Queued | JobState::InFlight => {}
        }
        if unsent && self.cancelled() {
            let why = "cancelled before it was sent (tool.cancel)";
            if let Ok(true) = self.rt.jobs.cancel_unsent(&job.id, why, now_ms()).await {
                return Err(Some(Outcome::NotSent));
            }
        }
        telemetry::deferred(reason.as_str());
        info!(id = %self.call.id, job = %job.id, reason = reason.as_str(), "tool call deferred");
        let _ = self.events.send(Box::new(Event::Deferred {
            id: self.call.id.clone(),
            job_id: job.id.clone(),
            reason,
            provider_wait,
        }));
        Ok(job)
    }

    /// A provider failure as the rest of toolgate may see it: redacted against the
    /// credentials the request actually carried (a reload may have rotated them since the
    /// session started), and recorded.
    fn record(
        &self,
        conn: &crate::config::Connection,
        probe: bool,
        started: Instant,
        result: &mut Result<Accepted, ProviderError>,
    ) {
        let took = started.elapsed();
        telemetry::provider_request(
            self.function.action.provider().as_str(),
            self.function.action.as_str(),
            result
                .as_ref()
                .map_or_else(|e| e.kind.code(), |_| "succeeded"),
            took,
        );
        if let Err(e) = result {
            e.redact_for(conn);
            debug!(id = %self.call.id, function = %self.function.name, connection = %conn.id, kind = e.kind.code(), delivery = ?e.delivery, "provider request failed");
        }
        self.call
            .snap
            .connections
            .record(&conn.id, took, result.as_ref().err(), probe);
    }
}

async fn run_inner(call: &LiveCall, rt: &Arc<Runtime>, events: &Events) -> Ended {
    let function = &call.agent.functions[call.function];
    let run = Run {
        call,
        rt,
        function,
        events,
    };
    let budget = Budget::from(&function.timing);
    let mode = function.timing.mode;
    let mut timing = ProviderTiming::default();

    let probe = match &call.plan {
        Plan::Live { probe } => *probe,
        _ => false,
    };
    let health = call.snap.connections.health(&function.connection.id);
    // A live call that will not be sent after all gives back its probe and its rate token.
    let unsent = || {
        if let (Plan::Live { .. }, Some(h)) = (&call.plan, health) {
            if probe {
                h.breaker.release_probe(Instant::now());
            }
            h.limiter.give_back();
        }
    };
    if run.cancelled() {
        unsent();
        return (Outcome::NotSent, timing, None);
    }

    if let Plan::Queue { reason, start } = &call.plan {
        match run.defer(*reason, start.clone(), Duration::ZERO).await {
            Ok(_) => return (Outcome::Queued, timing, None),
            Err(Some(outcome)) => return (outcome, timing, None),
            // Only a call merely predicted slow may still go out live without the store; a
            // workflow function never calls live, and a provider that is down or over its
            // rate must not be sent to.
            Err(None) if *reason == DeferReason::PredictedSlow => {}
            Err(None) => {
                return (
                    Outcome::Internal("the workflow store refused the job".into()),
                    timing,
                    None,
                );
            }
        }
    }

    // The current credentials of the connection: a reload may have replaced them since the
    // session started (its agent definition stays; its credentials do not go stale).
    let Some(conn) = call
        .snap
        .connections
        .connection(&function.connection.id)
        .cloned()
    else {
        unsent();
        return (
            Outcome::Failed(ProviderError::unsendable(
                "the connection is no longer configured",
            )),
            timing,
            None,
        );
    };

    let ctx = ActionContext {
        call_id: &call.ctx.call_id,
        function: &function.name,
        idempotency_key: &call.key,
        now: crate::clock::now(),
    };
    let req = match providers::prepare(&conn, function.action, &call.inputs, &ctx) {
        Ok(req) => Arc::new(req),
        Err(e) => {
            unsent();
            return (Outcome::Failed(e), timing, None);
        }
    };
    let started = Instant::now();
    timing.sent = Some(call.received.elapsed());
    let work = async {
        let raw = providers::send(&rt.providers, &req).await?;
        providers::interpret(function.action, raw)
    };
    tokio::pin!(work);
    let hard_deadline = call.received + budget.hard_timeout;
    let may_defer = mode == Mode::Auto;
    let first_stop = if may_defer {
        call.received + budget.defer_after
    } else {
        hard_deadline
    };
    let filler = |seq, elapsed| {
        if !run.cancelled() {
            let _ = events.send(Box::new(Event::Filler {
                id: call.id.clone(),
                seq,
                elapsed,
            }));
        }
    };
    let mut result = match drive(call.received, &budget, first_stop, work.as_mut(), filler).await {
        Driven::Done(result) => result,
        Driven::Stopped if first_stop == hard_deadline => {
            Err(ProviderError::timeout(budget.hard_timeout))
        }
        Driven::Stopped => {
            // The budget ran out with the request still running.
            let lease_until = now_ms()
                + hard_deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis() as i64
                + LEASE_MARGIN.as_millis() as i64;
            let job = if run.cancelled() {
                None
            } else {
                let start = Start::Live {
                    owner: rt.live_owner.clone(),
                    until: lease_until,
                };
                run.defer(DeferReason::Budget, start, started.elapsed())
                    .await
                    .ok()
            };
            let mut result = tokio::time::timeout_at(hard_deadline, work.as_mut())
                .await
                .unwrap_or_else(|_| Err(ProviderError::timeout(budget.hard_timeout)));
            timing.done = Some(call.received.elapsed());
            run.record(&conn, probe, started, &mut result);
            if let Some(job) = job {
                // Close the job only if this request holds its lease (it always does, unless
                // the same action was already queued under another holder).
                if job.lease_owner.as_deref() == Some(rt.live_owner.as_str()) {
                    close_live_job(rt, &call.snap, &job, &result).await;
                }
                let outcome = match result {
                    Ok(a) => Outcome::Accepted(a),
                    Err(e) if e.retryable => Outcome::Queued,
                    Err(e) => Outcome::Failed(e),
                };
                return (outcome, timing, Some(req.clone()));
            }
            // Not handed off (cancelled, or the store refused): answer the live outcome.
            return (
                match result {
                    Ok(a) => Outcome::Accepted(a),
                    Err(e) => Outcome::Failed(e),
                },
                timing,
                Some(req.clone()),
            );
        }
    };
    timing.done = Some(call.received.elapsed());
    run.record(&conn, probe, started, &mut result);
    match result {
        Ok(a) => (Outcome::Accepted(a), timing, Some(req.clone())),
        Err(e) if may_defer && e.retryable && !run.cancelled() => {
            // A 429, 5xx or unreachable provider before the budget ended: the worker retries
            // it after the call, counting this as the first attempt.
            let start = Start::Retry {
                not_before: call.snap.config.workflow.backoff.not_before(
                    now_ms(),
                    1,
                    e.retry_after,
                ),
                possibly_sent: e.delivery != Delivery::NotSent,
                error: e.summary(),
            };
            let waited = timing
                .done
                .zip(timing.sent)
                .map(|(d, s)| d.saturating_sub(s))
                .unwrap_or_default();
            match run
                .defer(DeferReason::RetryableFailure, start, waited)
                .await
            {
                Ok(_) => (Outcome::Queued, timing, Some(req.clone())),
                Err(Some(outcome)) => (outcome, timing, Some(req.clone())),
                // Not stored, or already out of attempts: the failure is the answer.
                Err(None) => (Outcome::Failed(e), timing, Some(req.clone())),
            }
        }
        Err(e) => (Outcome::Failed(e), timing, Some(req.clone())),
    }
}

/// The live request that held a deferred job's lease has ended: close the job with what it
/// learned, so nothing is sent twice.
async fn close_live_job(
    rt: &Runtime,
    snap: &Snapshot,
    job: &Job,
    result: &Result<Accepted, ProviderError>,
) {
    let finish = Finish::from_result(
        result,
        &snap.config.workflow.backoff,
        job.attempts,
        now_ms(),
    );
    let code = result.as_ref().err().map(|e| e.kind.code());
    let fin = crate::evidence::job_final(job, &finish, code, now_ms());
    match rt
        .jobs
        .finish(&job.id, &rt.live_owner, job.attempts, finish, now_ms())
        .await
    {
        Ok(true) => {
            if let Some(fin) = fin {
                rt.evidence
                    .submit(crate::evidence::Event::Final(Box::new(fin)));
            }
        }
        Ok(false) => {
            info!(job = %job.id, "the live request outlived its lease; the worker owns the job")
        }
        Err(e) => {
            error!(job = %job.id, error = %e, "cannot close a deferred job; its lease will lapse and the worker will run it again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::sleep;

    fn budget(filler_after: u64, repeat: u64, hard: u64) -> Budget {
        Budget {
            filler_after: Duration::from_millis(filler_after),
            filler_repeat: Duration::from_millis(repeat),
            defer_after: Duration::from_millis(hard),
            hard_timeout: Duration::from_millis(hard),
            // These tests run on tokio's paused clock.
            precise: false,
        }
    }

    async fn run_for(work_ms: u64, b: Budget, until_ms: u64) -> (Driven<u8>, Vec<(u32, u128)>) {
        let start = Instant::now();
        let mut fillers = Vec::new();
        let work = async {
            sleep(Duration::from_millis(work_ms)).await;
            7u8
        };
        tokio::pin!(work);
        let until = start + Duration::from_millis(until_ms);
        let out = drive(start, &b, until, work.as_mut(), |seq, elapsed| {
            fillers.push((seq, elapsed.as_millis()))
        })
        .await;
        (out, fillers)
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_result_gets_no_filler() {
        let (out, fillers) = run_for(499, budget(500, 0, 10_000), 10_000).await;
        assert_eq!(out, Driven::Done(7));
        assert!(fillers.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn result_and_filler_due_together_means_no_filler() {
        let (out, fillers) = run_for(500, budget(500, 0, 10_000), 10_000).await;
        assert_eq!(out, Driven::Done(7));
        assert!(fillers.is_empty(), "{fillers:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_filler_at_filler_after_without_repeats() {
        let (out, fillers) = run_for(2_000, budget(500, 0, 10_000), 10_000).await;
        assert_eq!(out, Driven::Done(7));
        assert_eq!(fillers, vec![(1, 500)]);
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_stop_at_three_fillers() {
        let (_, fillers) = run_for(5_000, budget(500, 700, 10_000), 10_000).await;
        assert_eq!(fillers, vec![(1, 500), (2, 1200), (3, 1900)]);
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_stop_with_the_result() {
        let (_, fillers) = run_for(1_300, budget(500, 700, 10_000), 10_000).await;
        assert_eq!(fillers, vec![(1, 500), (2, 1200)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_the_wait_without_dropping_the_work() {
        let start = Instant::now();
        let b = budget(500, 0, 10_000);
        let work = async {
            sleep(Duration::from_millis(4_000)).await;
            9u8
        };
        tokio::pin!(work);
        let mut fillers = Vec::new();
        let out = drive(
            start,
            &b,
            start + Duration::from_millis(2_500),
            work.as_mut(),
            |s, e| fillers.push((s, e.as_millis())),
        )
        .await;
        assert_eq!(out, Driven::Stopped);
        assert_eq!(start.elapsed(), Duration::from_millis(2_500));
        assert_eq!(fillers, vec![(1, 500)]);
        // The same work finishes later: the handoff keeps it running.
        assert_eq!(work.await, 9);
        assert_eq!(start.elapsed(), Duration::from_millis(4_000));
    }

    #[tokio::test(start_paused = true)]
    async fn no_filler_scheduled_at_or_after_the_deadline() {
        let (out, fillers) = run_for(60_000, budget(3_000, 0, 3_000), 3_000).await;
        assert_eq!(out, Driven::Stopped);
        assert!(fillers.is_empty());
    }
}
