//! `[workflow]` (SPEC §4): the post-call queue's worker, its attempts and retry timing.

use std::time::Duration;

use toml::Table;

use crate::config::WorkflowSettings;
use crate::config::check::{Ck, at};

pub(super) fn parse_workflow(ck: &mut Ck<'_>, t: &Table) -> WorkflowSettings {
    const P: &str = "workflow";
    ck.keys(
        t,
        P,
        &[
            "max_attempts",
            "concurrency",
            "backoff_base_ms",
            "backoff_cap_ms",
            "worker",
            "retain_days",
            "retry_window_ms",
        ],
    );
    let base = ck
        .uint(t, P, "backoff_base_ms", 1, 3_600_000)
        .unwrap_or(1000);
    let cap = ck
        .uint(t, P, "backoff_cap_ms", 1, 86_400_000)
        .unwrap_or(300_000);
    if cap < base {
        ck.err(
            at(P, "backoff_cap_ms"),
            format!("{cap} is below backoff_base_ms ({base})"),
        );
    }
    WorkflowSettings {
        max_attempts: ck.uint(t, P, "max_attempts", 1, 100).unwrap_or(8) as u32,
        concurrency: ck.uint(t, P, "concurrency", 1, 1024).unwrap_or(8) as usize,
        backoff: crate::backoff::Backoff {
            base: Duration::from_millis(base),
            cap: Duration::from_millis(cap),
            // Set from `defaults.max_retry_after_ms` once `[defaults]` is read.
            max_retry_after: crate::backoff::Backoff::default().max_retry_after,
        },
        worker: ck.boolean(t, P, "worker").unwrap_or(true),
        retain_days: ck.uint(t, P, "retain_days", 1, 3650).unwrap_or(30) as u32,
        retry_window: Duration::from_millis(
            ck.uint(t, P, "retry_window_ms", 0, 30 * 86_400_000)
                .unwrap_or(0),
        ),
    }
}
