//! Dispatch (SPEC §4): runs one accepted tool call against its provider under a timing budget,
//! asking for filler lines while the caller would otherwise hear silence.
//!
//! The budget is data ([`Budget`]) that travels with the call; [`drive`] is the one place that
//! turns it into timers, so the rules (first filler at `filler_after`, repeats every
//! `filler_repeat`, at most [`MAX_FILLERS`], never a filler once the result is ready, abandon at
//! `hard_timeout`) are tested on tokio's paused clock without any HTTP.
//!
//! The handoff to a post-call workflow at `defer_after` arrives with the workflow store; until
//! then `auto` functions behave like `live` ones.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};

use crate::bindings::{CallContext, Resolution};
use crate::config::{Agent, Timing};
use crate::connections::Status;
use crate::providers::{self, Accepted, ActionContext, ProviderError};
use crate::runtime::Runtime;

/// Most filler lines per tool call.
pub const MAX_FILLERS: u32 = 3;

/// The timing budget of one tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// First filler after this long without a result.
    pub filler_after: Duration,
    /// Repeat fillers this often (zero: no repeats).
    pub filler_repeat: Duration,
    /// Hand off to a workflow after this long (`auto` mode, with the workflow store).
    pub defer_after: Duration,
    /// Abandon the live request after this long.
    pub hard_timeout: Duration,
}

impl From<&Timing> for Budget {
    fn from(t: &Timing) -> Self {
        Budget {
            filler_after: t.filler_after,
            filler_repeat: t.filler_repeat,
            defer_after: t.defer_after,
            hard_timeout: t.hard_timeout,
        }
    }
}

/// How a budgeted wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Driven<T> {
    /// The work finished in time.
    Done(T),
    /// `hard_timeout` passed first; the work was dropped.
    TimedOut,
}

/// Await `work`, calling `on_filler(seq, elapsed)` at each filler time, until it finishes or the
/// hard timeout passes. When the result and a filler fall due together, the result wins.
pub async fn drive<F: Future>(
    start: Instant,
    budget: &Budget,
    work: F,
    mut on_filler: impl FnMut(u32, Duration),
) -> Driven<F::Output> {
    tokio::pin!(work);
    let deadline = start + budget.hard_timeout;
    let mut seq = 0u32;
    let mut next_filler = Some(start + budget.filler_after).filter(|t| *t < deadline);
    loop {
        let filler_at = next_filler.unwrap_or(deadline);
        tokio::select! {
            biased;
            out = &mut work => return Driven::Done(out),
            _ = sleep_until(deadline) => return Driven::TimedOut,
            _ = sleep_until(filler_at), if next_filler.is_some() => {
                seq += 1;
                on_filler(seq, Instant::now() - start);
                next_filler = (seq < MAX_FILLERS && !budget.filler_repeat.is_zero())
                    .then(|| filler_at + budget.filler_repeat)
                    .filter(|t| *t < deadline);
            }
        }
    }
}

/// What happened at the provider.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Accepted.
    Accepted(Accepted),
    /// Refused, errored or timed out.
    Failed(ProviderError),
    /// Cancelled before it was sent.
    NotSent,
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

/// Messages from a running call to its session.
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
    /// The call is finished.
    Done {
        /// The `tool.call` id.
        id: String,
        /// What happened.
        outcome: Outcome,
        /// Provider request timing.
        timing: ProviderTiming,
    },
}

/// A tool call that passed its guards.
#[derive(Debug)]
pub struct LiveCall {
    /// The `tool.call` id.
    pub id: String,
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
    /// Set by `tool.cancel`: not sent if not sent yet, and no more fillers.
    pub cancelled: Arc<AtomicBool>,
}

/// Run one call to completion, reporting fillers and the outcome to the session. Whatever
/// happens inside, including a panic, the session gets exactly one `Done` for the call.
pub async fn run(call: LiveCall, rt: Arc<Runtime>, events: mpsc::UnboundedSender<Event>) {
    use futures_util::FutureExt;
    let id = call.id.clone();
    let done = events.clone();
    let work = std::panic::AssertUnwindSafe(run_inner(call, rt, events)).catch_unwind();
    if let Err(panic) = work.await {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned());
        tracing::error!(id = %id, panic = %what, "tool call task failed; answering it as an internal error");
        let _ = done.send(Event::Done {
            id,
            outcome: Outcome::Internal(what),
            timing: ProviderTiming::default(),
        });
    }
}

async fn run_inner(call: LiveCall, rt: Arc<Runtime>, events: mpsc::UnboundedSender<Event>) {
    let function = &call.agent.functions[call.function];
    let budget = Budget::from(&function.timing);
    let mut timing = ProviderTiming::default();

    if call.cancelled.load(Ordering::Acquire) {
        let _ = events.send(Event::Done {
            id: call.id,
            outcome: Outcome::NotSent,
            timing,
        });
        return;
    }
    let ctx = ActionContext {
        call_id: &call.ctx.call_id,
        function: &function.name,
        idempotency_key: &call.key,
        now: SystemTime::now(),
    };
    let request = providers::prepare(&function.connection, function.action, &call.inputs, &ctx);
    let outcome = match request {
        Err(e) => Outcome::Failed(e),
        Ok(req) => {
            timing.sent = Some(call.received.elapsed());
            let work = async {
                let raw = providers::send(&rt.providers, &req).await?;
                providers::interpret(function.action, raw)
            };
            let driven = drive(call.received, &budget, work, |seq, elapsed| {
                if !call.cancelled.load(Ordering::Acquire) {
                    let _ = events.send(Event::Filler {
                        id: call.id.clone(),
                        seq,
                        elapsed,
                    });
                }
            })
            .await;
            timing.done = Some(call.received.elapsed());
            match driven {
                Driven::Done(Ok(accepted)) => Outcome::Accepted(accepted),
                Driven::Done(Err(e)) => Outcome::Failed(e),
                Driven::TimedOut => Outcome::Failed(ProviderError::timeout(budget.hard_timeout)),
            }
        }
    };
    let mut outcome = outcome;
    if let Outcome::Failed(e) = &mut outcome {
        // Providers echo inputs and, when misbehaving, headers: nothing they say reaches the
        // model, the logs or the evidence unredacted.
        let secrets = function.connection.secret_texts();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        if let std::borrow::Cow::Owned(clean) = crate::redact::text(&e.message, &secrets) {
            e.message = clean;
        }
    }
    if let Outcome::Failed(e) = &outcome {
        debug!(
            function = %function.name,
            connection = %function.connection.id,
            kind = e.kind.code(),
            delivery = ?e.delivery,
            "provider request failed"
        );
        if e.is_auth()
            && let Some(h) = rt.connections.health(&function.connection.id)
        {
            {
                if h.status() != Status::Error {
                    warn!(connection = %function.connection.id, status = ?e.http_status, "provider refused the credentials; connection marked error");
                }
                h.set(
                    Status::Error,
                    Some(format!(
                        "the provider refused the credentials (HTTP {}) during an action",
                        e.http_status.unwrap_or(0)
                    )),
                );
            }
        }
    }
    let _ = events.send(Event::Done {
        id: call.id,
        outcome,
        timing,
    });
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
        }
    }

    async fn run_for(work_ms: u64, b: Budget) -> (Driven<u8>, Vec<(u32, u128)>) {
        let start = Instant::now();
        let mut fillers = Vec::new();
        let out = drive(
            start,
            &b,
            async {
                sleep(Duration::from_millis(work_ms)).await;
                7u8
            },
            |seq, elapsed| fillers.push((seq, elapsed.as_millis())),
        )
        .await;
        (out, fillers)
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_result_gets_no_filler() {
        let (out, fillers) = run_for(499, budget(500, 0, 10_000)).await;
        assert_eq!(out, Driven::Done(7));
        assert!(fillers.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn result_and_filler_due_together_means_no_filler() {
        let (out, fillers) = run_for(500, budget(500, 0, 10_000)).await;
        assert_eq!(out, Driven::Done(7));
        assert!(fillers.is_empty(), "{fillers:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_filler_at_filler_after_without_repeats() {
        let (out, fillers) = run_for(2_000, budget(500, 0, 10_000)).await;
        assert_eq!(out, Driven::Done(7));
        assert_eq!(fillers, vec![(1, 500)]);
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_stop_at_three_fillers() {
        let (_, fillers) = run_for(5_000, budget(500, 700, 10_000)).await;
        assert_eq!(fillers, vec![(1, 500), (2, 1200), (3, 1900)]);
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_stop_with_the_result() {
        let (_, fillers) = run_for(1_300, budget(500, 700, 10_000)).await;
        assert_eq!(fillers, vec![(1, 500), (2, 1200)]);
    }

    #[tokio::test(start_paused = true)]
    async fn hard_timeout_abandons_the_work() {
        let start = Instant::now();
        let (out, fillers) = run_for(60_000, budget(500, 0, 3_000)).await;
        assert_eq!(out, Driven::TimedOut);
        assert_eq!(fillers, vec![(1, 500)]);
        assert_eq!(start.elapsed(), Duration::from_millis(3_000));
    }

    #[tokio::test(start_paused = true)]
    async fn no_filler_scheduled_at_or_after_the_deadline() {
        let (out, fillers) = run_for(60_000, budget(3_000, 0, 3_000)).await;
        assert_eq!(out, Driven::TimedOut);
        assert!(fillers.is_empty());
    }
}
