//! Logging: `TOOLGATE_LOG` picks the filter (default `info`), `TOOLGATE_LOG_FORMAT=json`
//! switches to one JSON object per line. Fields first, a short message; no secrets or raw PII
//! in any line (call ids and config names only).

use tracing_subscriber::EnvFilter;

/// Install the global subscriber; `default` is the filter when `TOOLGATE_LOG` is unset.
pub fn init_tracing(default: &str) {
    let filter =
        EnvFilter::try_from_env("TOOLGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("TOOLGATE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// `toolgate_deferrals_total{reason}`
pub const DEFERRALS_TOTAL: &str = "toolgate_deferrals_total";
/// `toolgate_jobs{state}`
pub const JOBS: &str = "toolgate_jobs";
/// `toolgate_job_attempts_total{outcome}`
pub const JOB_ATTEMPTS_TOTAL: &str = "toolgate_job_attempts_total";
/// `toolgate_connection_up{connection}`
pub const CONNECTION_UP: &str = "toolgate_connection_up";
/// `toolgate_evidence_dropped_total`
pub const EVIDENCE_DROPPED_TOTAL: &str = "toolgate_evidence_dropped_total";

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The Prometheus recorder, installed and described on first use. When another recorder is
/// already global (an embedding program's), metrics go there and this one renders empty.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        };
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(
        DEFERRALS_TOTAL,
        "Tool calls handed to a post-call workflow, by reason (budget, retryable_failure, circuit_open, predicted_slow, workflow)."
    );
    metrics::describe_gauge!(
        JOBS,
        "Workflow jobs in the store, by state (queued, in_flight, succeeded, failed, dead)."
    );
    metrics::describe_gauge!(
        CONNECTION_UP,
        "1 when the connection validated and is connected, else 0 (pending, error, disconnected)."
    );
    metrics::describe_counter!(
        EVIDENCE_DROPPED_TOTAL,
        "Evidence events dropped because the evidence writer fell a whole queue behind (a stalled disk)."
    );
    metrics::describe_counter!(
        JOB_ATTEMPTS_TOTAL,
        "Worker attempts at workflow jobs, by outcome (succeeded, failed, retry, dead, lease_lost)."
    );
}

/// Count a deferral.
pub fn deferred(reason: crate::workflow::DeferReason) {
    metrics::counter!(DEFERRALS_TOTAL, "reason" => reason.as_str()).increment(1);
}

/// Set a connection's up gauge (the label is the configured connection id: bounded).
pub fn connection_up(connection: &str, up: bool) {
    metrics::gauge!(CONNECTION_UP, "connection" => connection.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// Count an evidence event the writer could not take.
pub fn evidence_dropped() {
    metrics::counter!(EVIDENCE_DROPPED_TOTAL).increment(1);
}

/// Count a worker attempt.
pub fn job_attempt(outcome: &'static str) {
    metrics::counter!(JOB_ATTEMPTS_TOTAL, "outcome" => outcome).increment(1);
}

/// Set the per-state job gauges (every state, so an emptied state reads 0).
pub fn job_counts(counts: &[(crate::workflow::JobState, u64)]) {
    for state in crate::workflow::JobState::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!(JOBS, "state" => state.as_str()).set(n as f64);
    }
}
