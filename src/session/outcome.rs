//! What a finished live call leaves behind (SPEC §3, §4): the ledger state that later guards
//! read (a possibly-sent message without an idempotency key blocks a repeat), and which answer
//! the model is told. A pure table, so every row is tested without a socket or a provider.

use crate::answer::ProviderOutcome;
use crate::call_state::ActionState;
use crate::dispatch::Outcome;
use crate::providers::{Delivery, ProviderError};

/// Which answer the model gets for a finished call (the words come from [`crate::answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Told<'a> {
    /// toolgate itself failed, or the call ended up in the queue after all (it was not told
    /// `deferred` in time): whether anything was sent is unknown to the model.
    Internal,
    /// The provider accepted it.
    Succeeded,
    /// The provider refused it, or it failed on the way.
    Failed(&'a ProviderError),
    /// The model cancelled it (`tool.cancel`); what the provider did, as far as is known.
    Cancelled(ProviderOutcome),
}

/// The ledger state and the answer for a live call that finished with `outcome`. `cancelled`:
/// the model cancelled the call while it ran; `idempotent`: the provider takes an idempotency
/// key, so a possibly-sent message may safely be sent again.
pub(super) fn settle(
    outcome: &Outcome,
    cancelled: bool,
    idempotent: bool,
) -> (ActionState, Told<'_>) {
    let state = match outcome {
        Outcome::Accepted(a) => ActionState::Succeeded {
            message_id: a.message_id.clone(),
        },
        Outcome::Queued => ActionState::Deferred,
        Outcome::Internal(_) => ActionState::Unknown,
        Outcome::Failed(e) if e.delivery == Delivery::PossiblySent && !idempotent => {
            ActionState::Unknown
        }
        Outcome::Failed(_) | Outcome::NotSent => ActionState::Closed,
    };
    let told = match (outcome, cancelled) {
        (Outcome::Internal(_), _) | (Outcome::Queued, _) => Told::Internal,
        (Outcome::Accepted(_), false) => Told::Succeeded,
        (Outcome::Failed(e), false) => Told::Failed(e),
        (Outcome::Accepted(_), true) => Told::Cancelled(ProviderOutcome::Succeeded),
        (Outcome::Failed(e), true) => Told::Cancelled(match e.delivery {
            Delivery::NotSent => ProviderOutcome::NotSent,
            Delivery::PossiblySent => ProviderOutcome::Unknown,
            Delivery::Answered => ProviderOutcome::Failed,
        }),
        (Outcome::NotSent, _) => Told::Cancelled(ProviderOutcome::NotSent),
    };
    (state, told)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::providers::Accepted;

    fn failed(delivery: Delivery) -> ProviderError {
        ProviderError {
            delivery,
            ..ProviderError::timeout(Duration::from_secs(1))
        }
    }

    fn accepted() -> Outcome {
        Outcome::Accepted(Accepted {
            message_id: Some("m1".into()),
            http_status: 200,
            body: Default::default(),
        })
    }

    /// One row: the outcome, cancelled, idempotent → the ledger state and the answer.
    #[derive(Debug)]
    struct Row {
        outcome: Outcome,
        cancelled: bool,
        idempotent: bool,
        state: ActionState,
        told: &'static str,
    }

    fn row(outcome: Outcome, cancelled: bool, idempotent: bool) -> (Outcome, bool, bool) {
        (outcome, cancelled, idempotent)
    }

    fn told_name(t: &Told<'_>) -> &'static str {
        match t {
            Told::Internal => "internal",
            Told::Succeeded => "succeeded",
            Told::Failed(_) => "failed",
            Told::Cancelled(po) => match po {
                ProviderOutcome::Succeeded => "cancelled/succeeded",
                ProviderOutcome::NotSent => "cancelled/not_sent",
                ProviderOutcome::Unknown => "cancelled/unknown",
                ProviderOutcome::Failed => "cancelled/failed",
            },
        }
    }

    #[test]
    fn every_outcome_has_its_ledger_state_and_answer() {
        let sent_id = ActionState::Succeeded {
            message_id: Some("m1".into()),
        };
        let rows = [
            (row(accepted(), false, false), sent_id.clone(), "succeeded"),
            (
                row(accepted(), true, false),
                sent_id.clone(),
                "cancelled/succeeded",
            ),
            (row(accepted(), false, true), sent_id, "succeeded"),
            (
                row(Outcome::Failed(failed(Delivery::Answered)), false, false),
                ActionState::Closed,
                "failed",
            ),
            (
                row(Outcome::Failed(failed(Delivery::Answered)), true, false),
                ActionState::Closed,
                "cancelled/failed",
            ),
            (
                row(Outcome::Failed(failed(Delivery::NotSent)), false, false),
                ActionState::Closed,
                "failed",
            ),
            (
                row(Outcome::Failed(failed(Delivery::NotSent)), true, false),
                ActionState::Closed,
                "cancelled/not_sent",
            ),
            // Possibly sent without an idempotency key: a repeat could act twice.
            (
                row(
                    Outcome::Failed(failed(Delivery::PossiblySent)),
                    false,
                    false,
                ),
                ActionState::Unknown,
                "failed",
            ),
            (
                row(Outcome::Failed(failed(Delivery::PossiblySent)), true, false),
                ActionState::Unknown,
                "cancelled/unknown",
            ),
            // With one, the provider drops the repeat: it does not block.
            (
                row(Outcome::Failed(failed(Delivery::PossiblySent)), false, true),
                ActionState::Closed,
                "failed",
            ),
            (
                row(Outcome::NotSent, true, false),
                ActionState::Closed,
                "cancelled/not_sent",
            ),
            (
                row(Outcome::NotSent, false, false),
                ActionState::Closed,
                "cancelled/not_sent",
            ),
            (
                row(Outcome::Queued, false, false),
                ActionState::Deferred,
                "internal",
            ),
            (
                row(Outcome::Queued, true, true),
                ActionState::Deferred,
                "internal",
            ),
            (
                row(Outcome::Internal("bug".into()), false, true),
                ActionState::Unknown,
                "internal",
            ),
            (
                row(Outcome::Internal("bug".into()), true, false),
                ActionState::Unknown,
                "internal",
            ),
        ];
        for ((outcome, cancelled, idempotent), state, told) in rows {
            let want = Row {
                outcome,
                cancelled,
                idempotent,
                state,
                told,
            };
            let (got_state, got_told) = settle(&want.outcome, want.cancelled, want.idempotent);
            assert_eq!(
                (&got_state, told_name(&got_told)),
                (&want.state, want.told),
                "{want:?}"
            );
        }
    }

    #[test]
    fn a_failure_told_carries_the_providers_error() {
        let e = failed(Delivery::Answered);
        let outcome = Outcome::Failed(e.clone());
        let (_, told) = settle(&outcome, false, false);
        assert_eq!(told, Told::Failed(&e));
    }
}
