//! Housekeeping every host runs, whether or not it runs a worker: deleting finished jobs and
//! evidence past their retention, repairing the queue after hosts that died (NATS), and
//! catching up on this host's writes that failed while NATS was away.
//!
//! A sidecar with `workflow.worker = false` still ends calls and defers actions, so it too
//! must release what it held once NATS is back, and keep its evidence copy within retention.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::now_ms;
use crate::runtime::Runtime;

/// How often finished jobs and evidence past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How often the queue repairs what hosts that died left behind (NATS only; see
/// [`super::store::JobStore::sweep`]).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How often this host looks for its own writes to catch up on (a cheap, in-memory check;
/// the store is written only when there is something to repair).
const REPAIR_EVERY: Duration = Duration::from_secs(1);

/// Run until `shutdown`. Pruning runs at once, then hourly; a failed pass is logged and tried
/// again at its next turn.
pub async fn run(rt: Arc<Runtime>, shutdown: CancellationToken) {
    let mut next_prune = Instant::now();
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    loop {
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_EVERY;
            prune(&rt).await;
        }
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + SWEEP_EVERY;
            match rt.jobs.sweep(now_ms()).await {
                Ok(0) => {}
                Ok(n) => info!(jobs = n, "job queue repaired"),
                Err(e) => warn!(error = %e, "cannot sweep the job queue"),
            }
        } else if rt.jobs.has_local_repairs() {
            // Quietly: while NATS is away this fails every second.
            if let Ok(n) = rt.jobs.repair_local(now_ms()).await
                && n > 0
            {
                info!(
                    jobs = n,
                    "job writes that failed while the store was away are done"
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(REPAIR_EVERY) => {}
        }
    }
}

async fn prune(rt: &Runtime) {
    // Read at each pass, so a reload's retention applies.
    let config = rt.config();
    let retain = i64::from(config.workflow.retain_days) * 86_400_000;
    match rt.jobs.prune(now_ms() - retain).await {
        Ok(0) => {}
        Ok(n) => info!(deleted = n, "finished jobs past their retention deleted"),
        Err(e) => warn!(error = %e, "cannot prune finished jobs"),
    }
    let days = i64::from(config.evidence.retain_days);
    match rt.evidence.prune(now_ms() - days * 86_400_000).await {
        Ok(0) => {}
        Ok(n) => info!(deleted = n, "evidence past its retention deleted"),
        Err(e) => warn!(error = %e, "cannot prune evidence"),
    }
}
