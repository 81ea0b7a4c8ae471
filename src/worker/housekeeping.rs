//! Housekeeping every process runs, whether or not it runs a worker: catching up on this
//! host's writes that failed while NATS was away, and deleting evidence past its retention.
//! A process that runs a worker also keeps the queue: clearing the raw inputs of failed and
//! dead jobs past their retry window, deleting finished jobs past their retention and
//! repairing what hosts that died left behind (NATS).
//!
//! A sidecar with `workflow.worker = false` still ends calls and defers actions, so it too
//! must release what it held once NATS is back, and keep its evidence copy within retention;
//! the queue-wide passes (each reads every kept job on NATS) are left to the workers.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::runtime::Runtime;

/// How often finished jobs and evidence past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How often the queue repairs what hosts that died left behind (NATS only; see
/// [`crate::workflow::store::JobStore::sweep`]).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How often this host looks for its own writes to catch up on (a cheap, in-memory check;
/// the store is written only when there is something to repair).
const REPAIR_EVERY: Duration = Duration::from_secs(1);

/// Run until `shutdown`; `queue` when this process runs a worker (it also prunes and sweeps
/// the job queue). Pruning runs at once, then hourly; a failed pass is logged and tried again
/// at its next turn; `shutdown` cuts a pass short.
pub async fn run(rt: Arc<Runtime>, shutdown: CancellationToken, queue: bool) {
    let mut next_prune = Instant::now();
    let mut next_clear = Instant::now();
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    let mut repair_failures: u32 = 0;
    loop {
        let pass = async {
            if Instant::now() >= next_prune {
                next_prune = Instant::now() + PRUNE_EVERY;
                prune(&rt, queue).await;
            }
            if queue && Instant::now() >= next_clear {
                // A quarter of the retry window, between 1 s and a minute: inputs outlive
                // their window by at most that. (With no window, every job's inputs are
                // cleared as it ends; the pass only catches records written before.)
                let window = rt.config().workflow.retry_window;
                let every = if window.is_zero() {
                    SWEEP_EVERY
                } else {
                    (window / 4).clamp(REPAIR_EVERY, SWEEP_EVERY)
                };
                next_clear = Instant::now() + every;
                match rt.jobs.clear_expired_inputs(now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => info!(
                        jobs = n,
                        "raw inputs of failed and dead jobs past their retry window cleared"
                    ),
                    Err(e) => warn!(error = %e, "cannot clear the inputs of failed and dead jobs"),
                }
            }
            if queue && Instant::now() >= next_sweep {
                next_sweep = Instant::now() + SWEEP_EVERY;
                match rt.jobs.sweep(now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => info!(jobs = n, "job queue repaired"),
                    Err(e) => warn!(error = %e, "cannot sweep the job queue"),
                }
            } else if rt.jobs.has_local_repairs() {
                repair(&rt, &mut repair_failures).await;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = pass => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(REPAIR_EVERY) => {}
        }
    }
}

/// Catch up on this host's writes that failed while NATS was away. Failures are logged at
/// the 1st, 2nd, 4th, 8th... in a row: while NATS is away this fails every second.
pub async fn repair(rt: &Runtime, failures: &mut u32) {
    match rt.jobs.repair_local(now_ms()).await {
        Ok(n) => {
            *failures = 0;
            if n > 0 {
                info!(
                    jobs = n,
                    "job writes that failed while the store was away are done"
                );
            }
        }
        Err(e) => {
            *failures += 1;
            if failures.is_power_of_two() {
                warn!(error = %e, failures = *failures, "cannot yet release held jobs or cancel unacknowledged ones; trying again every second");
            }
        }
    }
}

async fn prune(rt: &Runtime, queue: bool) {
    // Read at each pass, so a reload's retention applies.
    let config = rt.config();
    if queue {
        let retain = i64::from(config.workflow.retain_days) * 86_400_000;
        match rt.jobs.prune(now_ms() - retain).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "finished jobs past their retention deleted"),
            Err(e) => warn!(error = %e, "cannot prune finished jobs"),
        }
    }
    let days = i64::from(config.evidence.retain_days);
    match rt.evidence.prune(now_ms() - days * 86_400_000).await {
        Ok(0) => {}
        Ok(n) => info!(deleted = n, "evidence past its retention deleted"),
        Err(e) => warn!(error = %e, "cannot prune evidence"),
    }
}
