//! The job state machine (SPEC §4), written once: each operation on a job, as a pure function
//! of the job's [`Lifecycle`] and an explicit clock, answering the job after it or a refusal.
//! No I/O.
//!
//! The NATS backend ([`super::nats`]) executes these functions inside its compare-and-set
//! transitions. The SQLite backend ([`super::store::ops`]) says the same in SQL (one statement
//! updates every row it concerns); its tests drive the SQL and these functions through the same
//! sequences and require the same jobs, and `tests/jobs_conformance.rs` does the same with both
//! backends.
//!
//! States: `queued` (runnable from `runnable_at`, or held for the end of its call while
//! `runnable_at` is empty), `in_flight` (leased to `lease_owner` until `lease_until`),
//! `succeeded`, `failed`, `dead`. A lease holder is known by its owner *and* its attempt
//! number: a lease that lapsed and was taken over (even by the same owner) fences off the old
//! holder's reports.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Finish, FirstState, JobState, NewJob, RetryRefused, keeps_inputs};
use crate::clock::Millis;

/// How long past its budget a lease lasts: room for the attempt to report back.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The error a job records when its last attempt's lease lapsed with no attempts left.
pub const LAPSED: &str = "the last attempt never reported back (its lease lapsed)";

/// What the transitions read and write of a job: its state and what moves with it. The rest
/// of a job (who, what, its inputs) never changes after it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// State.
    pub state: JobState,
    /// Attempts made (a live request counts as the first).
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// When it may run (`None` while queued: held until its call ends).
    pub runnable_at: Option<Millis>,
    /// Who holds the lease.
    pub lease_owner: Option<String>,
    /// When the lease lapses.
    pub lease_until: Option<Millis>,
    /// Budget of one attempt, in ms (a lease lasts it plus [`LEASE_MARGIN`]).
    pub hard_timeout_ms: u64,
    /// The last failure, redacted.
    pub last_error: Option<String>,
    /// The provider's id for the sent message.
    pub provider_message_id: Option<String>,
    /// Whether a repeat cannot act twice at the provider.
    pub idempotent: bool,
    /// Sent again after an attempt that may have reached the provider without idempotency.
    pub at_least_once: bool,
    /// Some attempt may have reached the provider: it can no longer be cancelled unsent.
    pub possibly_sent: bool,
    /// The current attempt began sending (or is a live request): if its holder dies, the
    /// outcome is unknown.
    #[serde(default = "yes")]
    pub attempt_sent: bool,
    /// The raw inputs are gone (it ended, and its retry window passed).
    #[serde(default)]
    pub inputs_cleared: bool,
    /// How long the inputs outlive a `failed` or `dead` end (`workflow.retry_window_ms`).
    #[serde(default)]
    pub retry_window_ms: u64,
    /// Last changed.
    pub updated_at: Millis,
    /// Reached a final state.
    pub finished_at: Option<Millis>,
}

fn yes() -> bool {
    true
}

/// What a claim does with a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Lease it (the job after).
    Claim(Lifecycle),
    /// Its holders kept dying and it is out of attempts (the job after).
    Dead(Lifecycle),
    /// Not yet: look again at this time.
    Later(Millis),
    /// Held until its call ends, or finished: nothing to claim.
    Spent,
}

impl Lifecycle {
    /// Held until its call ends.
    pub fn held(&self) -> bool {
        self.state == JobState::Queued && self.runnable_at.is_none()
    }

    /// Waiting for a claim: runnable (now or later), or leased (its lease may lapse).
    pub fn pending(&self) -> bool {
        (self.state == JobState::Queued && self.runnable_at.is_some())
            || self.state == JobState::InFlight
    }

    /// Whether `owner` holds the lease of attempt `attempt`.
    pub fn holds(&self, owner: &str, attempt: u32) -> bool {
        self.state == JobState::InFlight
            && self.lease_owner.as_deref() == Some(owner)
            && self.attempts == attempt
    }

    /// The job with its raw inputs cleared if its state does not keep them
    /// ([`keeps_inputs`]): applied at every transition into a final state.
    fn ended(mut self) -> Lifecycle {
        if !self.inputs_cleared && !keeps_inputs(self.state, self.retry_window_ms) {
            self.inputs_cleared = true;
        }
        self
    }

    /// The job after a change at `now`.
    fn touched(&self, now: Millis) -> Lifecycle {
        let mut n = self.clone();
        n.updated_at = now;
        n
    }
}

/// A new job's first lifecycle, stored at `now`.
pub fn enqueue(job: &NewJob, now: Millis) -> Lifecycle {
    let FirstState {
        state,
        attempts,
        runnable_at,
        lease_owner,
        lease_until,
        last_error,
        at_least_once,
        possibly_sent,
    } = job.first_state();
    Lifecycle {
        state,
        attempts,
        max_attempts: job.max_attempts,
        runnable_at,
        lease_owner,
        lease_until,
        hard_timeout_ms: job.hard_timeout.as_millis() as u64,
        last_error,
        provider_message_id: None,
        idempotent: job.idempotent,
        at_least_once,
        possibly_sent,
        attempt_sent: matches!(job.start, super::Start::Live { .. }),
        inputs_cleared: false,
        retry_window_ms: job.retry_window.as_millis() as u64,
        updated_at: now,
        finished_at: (state == JobState::Dead).then_some(now),
    }
    .ended()
}

/// The claim rule: a queued job whose time has come, or a leased one whose lease lapsed (its
/// holder died; taking it over marks a provider without idempotency `at_least_once` when the
/// holder had begun sending). A lapsed job out of attempts ends `dead`. The lease lasts the
/// attempt's budget plus [`LEASE_MARGIN`], and the claim counts an attempt.
pub fn claim(l: &Lifecycle, owner: &str, now: Millis) -> Verdict {
    match l.state {
        JobState::Queued => match l.runnable_at {
            None => Verdict::Spent,
            Some(t) if t > now => Verdict::Later(t),
            Some(_) => Verdict::Claim(take(l, owner, now)),
        },
        JobState::InFlight => match l.lease_until {
            Some(t) if t >= now => Verdict::Later(t + 1),
            _ if l.attempts >= l.max_attempts => {
                let mut d = l.touched(now);
                d.state = JobState::Dead;
                d.finished_at = Some(now);
                d.lease_owner = None;
                d.lease_until = None;
                d.last_error = Some(LAPSED.into());
                Verdict::Dead(d.ended())
            }
            _ => {
                let mut c = take(l, owner, now);
                if !l.idempotent && l.attempt_sent {
                    c.at_least_once = true;
                }
                Verdict::Claim(c)
            }
        },
        JobState::Succeeded | JobState::Failed | JobState::Dead => Verdict::Spent,
    }
}

fn take(l: &Lifecycle, owner: &str, now: Millis) -> Lifecycle {
    let mut c = l.touched(now);
    c.state = JobState::InFlight;
    c.lease_owner = Some(owner.to_owned());
    c.lease_until = Some(now + l.hard_timeout_ms as i64 + LEASE_MARGIN.as_millis() as i64);
    c.attempts += 1;
    c.attempt_sent = false;
    c
}

/// Whether `l` already holds this end of attempt `attempt` ([`Finish::recorded_in`]): the
/// same end reported again counts as recorded.
pub fn recorded(l: &Lifecycle, attempt: u32, finish: &Finish) -> bool {
    finish.recorded_in(
        attempt,
        l.state,
        l.attempts,
        l.lease_owner.as_deref(),
        l.last_error.as_deref(),
    )
}

/// How attempt `attempt` ended, if `owner` still holds the lease for it: `succeeded`,
/// `failed`, or for a retry `queued` from `not_before` (`dead` when out of attempts).
pub fn finish(
    l: &Lifecycle,
    owner: &str,
    attempt: u32,
    finish: &Finish,
    now: Millis,
) -> Option<Lifecycle> {
    if !l.holds(owner, attempt) {
        return None;
    }
    let mut n = l.touched(now);
    n.lease_owner = None;
    n.lease_until = None;
    match finish {
        Finish::Succeeded { message_id } => {
            n.state = JobState::Succeeded;
            n.provider_message_id = message_id.clone();
            n.last_error = None;
            n.runnable_at = None;
            n.finished_at = Some(now);
        }
        Finish::Failed { error } => {
            n.state = JobState::Failed;
            n.last_error = Some(error.clone());
            n.runnable_at = None;
            n.finished_at = Some(now);
        }
        Finish::Retry {
            not_before,
            error,
            possibly_sent,
        } => {
            let out = l.attempts >= l.max_attempts;
            if *possibly_sent && !l.idempotent && !out {
                n.at_least_once = true;
            }
            n.possibly_sent = *possibly_sent;
            n.last_error = Some(error.clone());
            if out {
                n.state = JobState::Dead;
                n.runnable_at = None;
                n.finished_at = Some(now);
            } else {
                n.state = JobState::Queued;
                n.runnable_at = Some(*not_before);
                n.finished_at = None;
            }
        }
    }
    Some(n.ended())
}

/// The holder of `attempt` is about to send it: from now on its outcome is unknown until it
/// reports back.
pub fn mark_sending(l: &Lifecycle, owner: &str, attempt: u32, now: Millis) -> Option<Lifecycle> {
    if !l.holds(owner, attempt) {
        return None;
    }
    let mut n = l.touched(now);
    n.attempt_sent = true;
    n.possibly_sent = true;
    Some(n)
}

/// A claimed, unsent job back to `queued` from `not_before`, its claim not counted.
pub fn put_back(
    l: &Lifecycle,
    owner: &str,
    attempt: u32,
    not_before: Millis,
    why: &str,
    now: Millis,
) -> Option<Lifecycle> {
    if !l.holds(owner, attempt) {
        return None;
    }
    let mut n = l.touched(now);
    n.state = JobState::Queued;
    n.attempts -= 1;
    n.runnable_at = Some(not_before);
    n.last_error = Some(why.to_owned());
    n.lease_owner = None;
    n.lease_until = None;
    Some(n)
}

/// A held job becomes runnable now (its call ended).
pub fn release(l: &Lifecycle, now: Millis) -> Option<Lifecycle> {
    if !l.held() {
        return None;
    }
    let mut n = l.touched(now);
    n.runnable_at = Some(now);
    Some(n)
}

/// A queued job that never reached the provider ends `failed` without being sent.
pub fn cancel_unsent(l: &Lifecycle, why: &str, now: Millis) -> Option<Lifecycle> {
    if l.state != JobState::Queued || l.possibly_sent {
        return None;
    }
    let mut n = l.touched(now);
    n.state = JobState::Failed;
    n.last_error = Some(why.to_owned());
    n.runnable_at = None;
    n.finished_at = Some(now);
    Some(n.ended())
}

/// A job that must not run whatever it is doing (its enqueue was answered with an error)
/// ends `failed`, its lease released.
pub fn withdraw(l: &Lifecycle, why: &str, now: Millis) -> Lifecycle {
    let mut n = l.touched(now);
    n.state = JobState::Failed;
    n.last_error = Some(why.into());
    n.runnable_at = None;
    n.lease_owner = None;
    n.lease_until = None;
    n.finished_at = Some(now);
    n
}

/// A `failed` or `dead` job whose retry window has passed by `now` loses its raw inputs.
pub fn clear_expired_inputs(l: &Lifecycle, now: Millis) -> Option<Lifecycle> {
    let ended = matches!(l.state, JobState::Failed | JobState::Dead);
    let passed = l
        .finished_at
        .is_some_and(|f| f.saturating_add(l.retry_window_ms as Millis) <= now);
    if !ended || l.inputs_cleared || !passed {
        return None;
    }
    let mut n = l.clone();
    n.inputs_cleared = true;
    Some(n)
}

/// A `failed` or `dead` job (whose inputs are still there) back to `queued`, runnable now,
/// with fresh attempts.
pub fn retry(l: &Lifecycle, now: Millis) -> Result<Lifecycle, RetryRefused> {
    if !matches!(l.state, JobState::Failed | JobState::Dead) {
        return Err(RetryRefused::State(l.state));
    }
    if l.inputs_cleared {
        return Err(RetryRefused::InputsCleared);
    }
    let mut n = l.touched(now);
    n.state = JobState::Queued;
    n.runnable_at = Some(now);
    n.attempts = 0;
    n.lease_owner = None;
    n.lease_until = None;
    n.finished_at = None;
    Ok(n)
}
