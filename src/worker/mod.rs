//! The job worker (SPEC §4 and §10): claims runnable jobs of the [`crate::workflow`] queue with
//! a lease, runs them through the same provider adapters as live calls, and records how each
//! attempt ended. It runs inside a sidecar (`workflow.worker = true`) or alone as
//! `toolgate worker`; [`housekeeping`] is the periodic upkeep of the queue and the evidence.
//!
//! It stands on the whole process ([`Runtime`]: config, jobs, evidence, connections,
//! telemetry), which is why it lives here, above the queue it works, and not in it.
//!
//! Retries keep the job's action key, so Resend sees the same `Idempotency-Key` and webhook
//! receivers the same `webhook-id` on every attempt. Wati has no such key: a job retried after
//! an attempt that may have reached Wati is marked `at_least_once`.

pub mod housekeeping;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::bindings::Resolution;
use crate::catalog::Action;
use crate::clock::now_ms;
use crate::connections::Usable;
use crate::connections::breaker::Admit;
use crate::evidence;
use crate::providers::{self, Accepted, ActionContext, Prepared, ProviderError};
use crate::runtime::{Runtime, Snapshot};
use crate::telemetry;
use crate::workflow::{Finish, Job};

/// Longest idle wait between looks at the queue (a safety net behind the wake-ups).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Run the worker until `shutdown`; then stop claiming and let running attempts finish.
pub async fn run(rt: Arc<Runtime>, shutdown: CancellationToken) {
    let owner = format!("worker:{}", ulid::Ulid::generate());
    let concurrency = rt.config().workflow.concurrency;
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut running = JoinSet::new();

    info!(%owner, concurrency, "workflow worker started");
    loop {
        while running.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        // Listen for wake-ups before looking, so an enqueue between the look and the wait
        // is not missed.
        let woken = rt.jobs.runnable.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match rt.jobs.claim(&owner, now_ms()).await {
            Ok(Some(job)) => {
                let span = info_span!("job", job = %job.id, call_id = %job.call_id, function = %job.function);
                let rt = rt.clone();
                let owner = owner.clone();
                running.spawn(
                    async move {
                        attempt(&rt, job, &owner).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Ok(None) => {
                drop(permit);
                let wait = match rt.jobs.next_due().await {
                    Ok(Some(due)) => Duration::from_millis((due - now_ms()).max(0) as u64),
                    _ => IDLE_POLL,
                }
                .min(IDLE_POLL);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => {
                drop(permit);
                warn!(error = %e, "cannot claim jobs; retrying shortly");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
            }
        }
    }
    info!(
        running = running.len(),
        "workflow worker stopping; letting running attempts finish"
    );
    while running.join_next().await.is_some() {}
}

/// Whether a claimed job may go out now.
enum Gate {
    /// Send it; `probe` when it is the open circuit's one probe (its outcome decides).
    Go {
        /// The circuit's probe.
        probe: bool,
    },
    /// Not now: hand it back, unattempted, until then.
    Hold(Instant, String),
}

/// The gates a live call passes, for a job: the connection must be up, its circuit closed (or
/// this the probe), and a rate token free.
fn gate(snap: &Snapshot, job: &Job, now: Instant) -> Gate {
    let Some(h) = snap.connections.health(&job.connection) else {
        return Gate::Go { probe: false };
    };
    match h.usable(now) {
        // Refused credentials or a disabled connection: sending only earns another refusal.
        // Wait for it to be fixed and validated, without spending the job's attempts.
        Usable::No => {
            return Gate::Hold(
                now + snap.config.defaults.revalidate_error,
                format!(
                    "connection {} is {}: {}",
                    job.connection,
                    h.status().as_str(),
                    h.reason().unwrap_or_default()
                ),
            );
        }
        Usable::Later if h.breaker.open_until(now).is_none() => {
            return Gate::Hold(
                now + snap.config.defaults.revalidate_error,
                format!("connection {} is unreachable", job.connection),
            );
        }
        _ => {}
    }
    let probe = match h.breaker.admit(now) {
        Admit::Go => false,
        Admit::Probe => true,
        Admit::Wait(until) => {
            return Gate::Hold(until, format!("the circuit of {} is open", job.connection));
        }
    };
    if let Err(until) = h.limiter.try_acquire(now) {
        if probe {
            h.breaker.release_probe(now);
        }
        return Gate::Hold(until, format!("{} is over its rate limit", job.connection));
    }
    Gate::Go { probe }
}

/// Run one attempt of a claimed job and record how it ended.
async fn attempt(rt: &Runtime, job: Job, owner: &str) {
    let snap = rt.snap();
    let now = Instant::now();
    let probe = match gate(&snap, &job, now) {
        Gate::Go { probe } => probe,
        Gate::Hold(until, why) => {
            let not_before = now_ms() + until.saturating_duration_since(now).as_millis() as i64;
            match rt
                .jobs
                .put_back(&job.id, owner, job.attempts, not_before, &why, now_ms())
                .await
            {
                Ok(_) => debug!(%why, "job held back, not attempted"),
                Err(e) => warn!(error = %e, "cannot hand a job back; its lease will lapse"),
            }
            return;
        }
    };
    let started_at = now_ms();
    let run = execute(rt, &snap, &job, owner, probe).await;
    if run.result.is_none()
        && let Some(h) = snap.connections.health(&job.connection)
    {
        // Never sent: its probe and rate token go back.
        if probe {
            h.breaker.release_probe(Instant::now());
        }
        h.limiter.give_back();
    }
    let finish = run.finish;
    let label = match &finish {
        Finish::Succeeded { .. } => "succeeded",
        Finish::Failed { .. } => "failed",
        Finish::Retry { .. } if job.attempts >= job.max_attempts => "dead",
        Finish::Retry { .. } => "retry",
    };
    let code = match &run.result {
        None => Some("not_sent"),
        Some(r) => r.as_ref().err().map(|e| e.kind.code()),
    };
    let fin = evidence::job_final(&job, &finish, code, now_ms());
    let not_sent = match (&run.result, &finish) {
        (None, Finish::Failed { error } | Finish::Retry { error, .. }) => Some(error.clone()),
        _ => None,
    };
    let recorded = record_finish(rt, &job, owner, finish).await;
    // Every attempt is on record, one whose lease lapsed too: it may have reached the provider
    // while another claim sends it again.
    let lease_lost = matches!(recorded, Ok(false));
    if recorded.is_ok() && (!lease_lost || run.result.is_some()) {
        let function = snap
            .agent(&job.agent)
            .and_then(|a| a.functions.iter().find(|f| f.name == job.function));
        let secrets = snap
            .connections
            .connection(&job.connection)
            .map(|c| c.secret_texts())
            .unwrap_or_default();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let record = evidence::Attempt {
            job: &job,
            function,
            started_at,
            request: run.request.as_ref(),
            result: run.result.as_ref(),
            not_sent: not_sent.as_deref(),
            latency_ms: run.latency.map(|d| d.as_millis() as u64),
            lease_lost,
            keep_bodies: snap.config.evidence.keep_bodies,
            secrets: &secrets,
        }
        .record();
        rt.evidence
            .submit(evidence::Event::Invocation(Box::new(record)));
    }
    match recorded {
        Ok(true) => {
            telemetry::job_attempt(label);
            info!(attempt = job.attempts, outcome = label, "job attempt done");
            if let Some(fin) = fin {
                rt.evidence.submit(evidence::Event::Final(Box::new(fin)));
            }
        }
        Ok(false) => {
            telemetry::job_attempt("lease_lost");
            warn!(
                attempt = job.attempts,
                "job lease lapsed before the attempt finished; another claim owns it"
            );
        }
        Err(e) => {
            warn!(error = %e, "cannot record a job attempt; its lease will lapse and it will run again")
        }
    }
}

/// First and longest pause between tries to record an attempt's end.
const RECORD_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// Record how an attempt ended. When the store is away (NATS restarting), keep trying while
/// the lease holds: the attempt was made, and recording it late beats letting the lease lapse
/// and sending the action a second time.
async fn record_finish(
    rt: &Runtime,
    job: &Job,
    owner: &str,
    finish: Finish,
) -> Result<bool, crate::storage::StoreError> {
    let lease_end = job.lease_until.unwrap_or_else(now_ms);
    let mut pause = RECORD_RETRY.0;
    let mut tries = 1u32;
    loop {
        let e = match rt
            .jobs
            .finish(&job.id, owner, job.attempts, finish.clone(), now_ms())
            .await
        {
            Ok(kept) => {
                if tries > 1 && kept {
                    info!(tries, "job attempt recorded once the job store was back");
                }
                return Ok(kept);
            }
            Err(e) => e,
        };
        if !e.retryable() || now_ms() + pause.as_millis() as i64 >= lease_end {
            return Err(e);
        }
        if tries == 1 {
            warn!(error = %e, "cannot record a job attempt; trying again while its lease holds");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECORD_RETRY.1);
        tries += 1;
    }
}

/// What one attempt did.
struct Ran {
    finish: Finish,
    /// The request, when one was built.
    request: Option<Prepared>,
    /// The provider's answer (`None`: nothing was sent).
    result: Option<Result<Accepted, ProviderError>>,
    /// How long the provider took.
    latency: Option<Duration>,
}

impl Ran {
    fn unsent(finish: Finish) -> Ran {
        Ran {
            finish,
            request: None,
            result: None,
            latency: None,
        }
    }
}

async fn execute(rt: &Runtime, snap: &Snapshot, job: &Job, owner: &str, probe: bool) -> Ran {
    let (Some(conn), Some(action)) = (
        snap.connections.connection(&job.connection),
        Action::parse(&job.action),
    ) else {
        return Ran::unsent(Finish::Failed {
            error: format!(
                "connection {:?} or action {:?} is no longer configured",
                job.connection, job.action
            ),
        });
    };
    let backoff = snap.config.workflow.backoff;
    if let Some(h) = snap.connections.health(&conn.id)
        && h.usable(Instant::now()) == Usable::No
    {
        // The provider refused these credentials before: asking again only earns another
        // refusal. Wait for the connection to be fixed (or the job to run out of attempts).
        return Ran::unsent(Finish::Retry {
            not_before: backoff.not_before(now_ms(), job.attempts, None),
            error: format!("connection {} is {}", conn.id, h.status().as_str()),
            possibly_sent: false,
        });
    }
    let inputs = Resolution {
        inputs: job.inputs.clone(),
        ..Resolution::default()
    };
    let ctx = ActionContext {
        call_id: &job.call_id,
        function: &job.function,
        idempotency_key: &job.idempotency_key,
        now: crate::clock::now(),
    };
    let budget = Duration::from_millis(job.hard_timeout_ms);
    let req = match providers::prepare(conn, action, &inputs, &ctx) {
        Ok(req) => req,
        Err(mut e) => {
            e.redact_for(conn);
            let finish = Finish::from_result(&Err(e), &backoff, job.attempts, now_ms());
            return Ran::unsent(finish);
        }
    };
    if !job.idempotent {
        // No idempotency key at this provider: the key is checked (the lease still ours) and
        // the send recorded before it goes, so a worker that takes over after a crash knows
        // whether the outcome is unknown or the request never left.
        match rt
            .jobs
            .mark_sending(&job.id, owner, job.attempts, now_ms())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return Ran::unsent(Finish::Failed {
                    error:
                        "the lease lapsed before the request was sent; another claim owns the job"
                            .into(),
                });
            }
            Err(e) => {
                return Ran::unsent(Finish::Retry {
                    not_before: backoff.not_before(now_ms(), job.attempts, None),
                    error: format!("not sent: the job store did not record the attempt: {e}"),
                    possibly_sent: false,
                });
            }
        }
    }
    let started = Instant::now();
    let work = async {
        let raw = providers::send(&rt.providers, &req).await?;
        providers::interpret(action, raw)
    };
    let mut result = timeout(budget, work)
        .await
        .unwrap_or_else(|_| Err(ProviderError::timeout(budget)));
    let latency = started.elapsed();
    telemetry::provider_request(
        action.provider().as_str(),
        action.as_str(),
        result
            .as_ref()
            .map_or_else(|e| e.kind.code(), |_| "succeeded"),
        latency,
    );
    if let Err(e) = &mut result {
        e.redact_for(conn);
        debug!(
            kind = e.kind.code(),
            retryable = e.retryable,
            "job attempt failed"
        );
    }
    snap.connections
        .record(&conn.id, latency, result.as_ref().err(), probe);
    Ran {
        finish: Finish::from_result(&result, &backoff, job.attempts, now_ms()),
        request: Some(req),
        result: Some(result),
        latency: Some(latency),
    }
}
