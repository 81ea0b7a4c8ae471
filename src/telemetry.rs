//! Logging: `TOOLGATE_LOG` picks the filter (default `info`), `TOOLGATE_LOG_FORMAT=json`
//! switches to one JSON object per line; the text format is coloured only on a terminal.
//! Fields first, a short message; no secrets or raw PII in any line (call ids and config names
//! only).

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Dependencies whose verbose levels print raw traffic: WebSocket handshakes (a relay's upstream
/// request carries the client's key) and frames (caller numbers, emails, transcript), HTTP
/// bodies. They stay at `warn` whatever `TOOLGATE_LOG` says.
const QUIET: [&str; 6] = [
    "tungstenite=warn",
    "tokio_tungstenite=warn",
    "hyper=warn",
    "hyper_util=warn",
    "reqwest=warn",
    "rustls=warn",
];

/// The log filter for `spec` (an `EnvFilter` directive list), with `QUIET` applied on top.
pub fn log_filter(spec: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    for q in QUIET {
        filter = filter.add_directive(q.parse().expect("static directive"));
    }
    filter
}

/// Install the global subscriber; `default` is the filter when `TOOLGATE_LOG` is unset.
pub fn init_tracing(default: &str) {
    let spec = std::env::var("TOOLGATE_LOG").unwrap_or_else(|_| default.to_owned());
    let filter = log_filter(&spec);
    let json = std::env::var("TOOLGATE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // Colour only for a terminal: a log written to a file, a pipe or the journal stays plain
    // text (and `NO_COLOR` turns it off on a terminal too).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// `toolgate_sessions_active`
pub const SESSIONS_ACTIVE: &str = "toolgate_sessions_active";
/// `toolgate_sessions_total{end}`
pub const SESSIONS_TOTAL: &str = "toolgate_sessions_total";
/// `toolgate_tool_calls_total{function,status}`
pub const TOOL_CALLS_TOTAL: &str = "toolgate_tool_calls_total";
/// `toolgate_tool_call_duration_seconds{status}`
pub const TOOL_CALL_DURATION: &str = "toolgate_tool_call_duration_seconds";
/// `toolgate_first_signal_seconds`
pub const FIRST_SIGNAL: &str = "toolgate_first_signal_seconds";
/// `toolgate_overhead_seconds`
pub const OVERHEAD: &str = "toolgate_overhead_seconds";
/// `toolgate_provider_request_duration_seconds{provider,action,outcome}`
pub const PROVIDER_REQUEST_DURATION: &str = "toolgate_provider_request_duration_seconds";
/// `toolgate_fillers_total`
pub const FILLERS_TOTAL: &str = "toolgate_fillers_total";
/// `toolgate_guard_rejections_total{guard}`
pub const GUARD_REJECTIONS_TOTAL: &str = "toolgate_guard_rejections_total";
/// `toolgate_protocol_errors_total{code}`
pub const PROTOCOL_ERRORS_TOTAL: &str = "toolgate_protocol_errors_total";
/// `toolgate_deferrals_total{reason}`
pub const DEFERRALS_TOTAL: &str = "toolgate_deferrals_total";
/// `toolgate_jobs{state}`
pub const JOBS: &str = "toolgate_jobs";
/// `toolgate_job_attempts_total{outcome}`
pub const JOB_ATTEMPTS_TOTAL: &str = "toolgate_job_attempts_total";
/// `toolgate_connection_up{connection}`
pub const CONNECTION_UP: &str = "toolgate_connection_up";
/// `toolgate_tool_calls_shed_total{reason}`
pub const TOOL_CALLS_SHED_TOTAL: &str = "toolgate_tool_calls_shed_total";
/// `toolgate_scheduling_delay_seconds`
pub const SCHEDULING_DELAY: &str = "toolgate_scheduling_delay_seconds";
/// Why a tool call was refused before it ran (`toolgate_tool_calls_shed_total{reason}`):
/// the runtime's scheduling delay passed `server.shed_after_delay_ms`, the session had
/// `max_inflight_per_session` calls running, or the sidecar was shutting down.
pub const SHED_REASONS: [&str; 3] = ["scheduling_delay", "session_inflight", "draining"];
/// `toolgate_evidence_dropped_total`
pub const EVIDENCE_DROPPED_TOTAL: &str = "toolgate_evidence_dropped_total";

/// Latency buckets, in seconds: 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for toolgate's own time per call, in seconds: 10 µs to 1 s.
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

fn builder() -> PrometheusBuilder {
    use metrics_exporter_prometheus::Matcher;
    let latency = [TOOL_CALL_DURATION, FIRST_SIGNAL, PROVIDER_REQUEST_DURATION];
    let mut b = PrometheusBuilder::new();
    for name in latency {
        b = b
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), LATENCY_BUCKETS)
            .expect("the buckets are not empty");
    }
    b.set_buckets_for_metric(Matcher::Full(OVERHEAD.to_owned()), OVERHEAD_BUCKETS)
        .expect("the buckets are not empty")
}

/// The Prometheus recorder, installed and described on first use (the server does so at
/// start, so nothing recorded before the first scrape is lost). When another recorder is
/// already global (an embedding program's), metrics go there and this one renders empty.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let handle = match builder().install_recorder() {
            Ok(handle) => handle,
            Err(_) => builder().build_recorder().handle(),
        };
        describe();
        handle
    })
}

fn describe() {
    use metrics::Unit;
    metrics::describe_gauge!(
        SESSIONS_ACTIVE,
        "Live sessions (calls) on this sidecar, attached or within their disconnect grace."
    );
    metrics::describe_counter!(
        SESSIONS_TOTAL,
        "Sessions that ended, by how (ended: session.end; disconnected: the socket dropped and the grace ran out; shutdown; closed)."
    );
    metrics::describe_counter!(
        TOOL_CALLS_TOTAL,
        "Tool calls answered, by function (unknown for a name the agent does not have) and result status."
    );
    metrics::describe_histogram!(
        TOOL_CALL_DURATION,
        Unit::Seconds,
        "From a tool.call arriving to its tool.result going out, by result status."
    );
    metrics::describe_histogram!(
        FIRST_SIGNAL,
        Unit::Seconds,
        "From a tool.call arriving to the first thing the caller hears about it (a filler line or the result): the silence on the line."
    );
    metrics::describe_histogram!(
        OVERHEAD,
        Unit::Seconds,
        "toolgate's own time per tool call: its duration minus the time spent waiting on the provider."
    );
    metrics::describe_histogram!(
        PROVIDER_REQUEST_DURATION,
        Unit::Seconds,
        "Provider HTTP requests (live and from the worker), by provider, action and outcome (succeeded or the failure code)."
    );
    metrics::describe_counter!(FILLERS_TOTAL, "Filler lines sent to media servers.");
    metrics::describe_counter!(
        GUARD_REJECTIONS_TOTAL,
        "Tool calls a guard stopped, by the guard that decided."
    );
    metrics::describe_counter!(
        PROTOCOL_ERRORS_TOTAL,
        "error frames sent to media servers, by code."
    );
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
        TOOL_CALLS_SHED_TOTAL,
        "Tool calls refused before they ran and answered failed/overloaded, by reason (scheduling_delay: the runtime was saturated; session_inflight: the session's in-flight cap; draining: shutting down)."
    );
    metrics::describe_gauge!(
        SCHEDULING_DELAY,
        Unit::Seconds,
        "How long the load probe's last task waited for a worker thread (what shedding watches)."
    );
    metrics::describe_counter!(
        JOB_ATTEMPTS_TOTAL,
        "Worker attempts at workflow jobs, by outcome (succeeded, failed, retry, dead, lease_lost)."
    );
}

/// Count a tool call refused before it ran (one of [`SHED_REASONS`]).
pub fn tool_call_shed(reason: &'static str) {
    metrics::counter!(TOOL_CALLS_SHED_TOTAL, "reason" => reason).increment(1);
}

/// The load probe's last scheduling delay.
pub fn scheduling_delay(waited: std::time::Duration) {
    metrics::gauge!(SCHEDULING_DELAY).set(waited.as_secs_f64());
}

/// Count a deferral.
pub fn deferred(reason: &'static str) {
    metrics::counter!(DEFERRALS_TOTAL, "reason" => reason).increment(1);
}

/// Set a connection's up gauge (the label is the configured connection id: bounded).
pub fn connection_up(connection: &str, up: bool) {
    metrics::gauge!(CONNECTION_UP, "connection" => connection.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// Count evidence events that were lost.
pub fn evidence_dropped(n: u64) {
    metrics::counter!(EVIDENCE_DROPPED_TOTAL).increment(n);
}

/// Count a worker attempt.
/// The outcomes of a worker's job attempt.
pub const JOB_ATTEMPT_OUTCOMES: [&str; 5] = ["succeeded", "failed", "retry", "dead", "lease_lost"];

/// The ways a session ends.
pub const SESSION_ENDS: [&str; 4] = ["ended", "disconnected", "shutdown", "closed"];

/// The label values known before anything happens, each list from its own enum's `ALL`.
pub struct KnownLabels<'a> {
    /// The configured function names.
    pub functions: Vec<&'a str>,
    /// Why calls are deferred.
    pub defer_reasons: &'a [&'static str],
    /// The guards that can reject a call.
    pub guards: &'a [&'static str],
}

/// Every counter series whose labels are known before anything happens, at zero, so dashboards
/// and alerts see them from the first scrape (a `rate()` over an absent series is empty, not 0).
pub fn zero_series(known: &KnownLabels<'_>) {
    for outcome in JOB_ATTEMPT_OUTCOMES {
        metrics::counter!(JOB_ATTEMPTS_TOTAL, "outcome" => outcome).increment(0);
    }
    for end in SESSION_ENDS {
        metrics::counter!(SESSIONS_TOTAL, "end" => end).increment(0);
    }
    for &reason in known.defer_reasons {
        metrics::counter!(DEFERRALS_TOTAL, "reason" => reason).increment(0);
    }
    for &guard in known.guards {
        metrics::counter!(GUARD_REJECTIONS_TOTAL, "guard" => guard).increment(0);
    }
    for code in crate::protocol::ErrorCode::ALL {
        metrics::counter!(PROTOCOL_ERRORS_TOTAL, "code" => code.as_str()).increment(0);
    }
    for reason in SHED_REASONS {
        metrics::counter!(TOOL_CALLS_SHED_TOTAL, "reason" => reason).increment(0);
    }
    metrics::gauge!(SCHEDULING_DELAY).increment(0.0);
    metrics::counter!(FILLERS_TOTAL).increment(0);
    metrics::counter!(EVIDENCE_DROPPED_TOTAL).increment(0);
    metrics::gauge!(SESSIONS_ACTIVE).increment(0.0);
    for &f in &known.functions {
        for status in crate::protocol::ResultStatus::ALL {
            metrics::counter!(TOOL_CALLS_TOTAL, "function" => f.to_owned(), "status" => status.as_str())
                .increment(0);
        }
    }
}

/// A worker's job attempt ended (one of [`JOB_ATTEMPT_OUTCOMES`]).
pub fn job_attempt(outcome: &'static str) {
    metrics::counter!(JOB_ATTEMPTS_TOTAL, "outcome" => outcome).increment(1);
}

/// Set the per-state job gauges: pass every state, an emptied one at 0, so it reads 0.
pub fn job_counts(counts: impl IntoIterator<Item = (&'static str, u64)>) {
    for (state, n) in counts {
        metrics::gauge!(JOBS, "state" => state).set(n as f64);
    }
}

/// A session started.
pub fn session_started() {
    metrics::gauge!(SESSIONS_ACTIVE).increment(1.0);
}

/// A session ended (`end`: `ended`, `disconnected`, `shutdown`, `closed`).
pub fn session_ended(end: &'static str) {
    metrics::gauge!(SESSIONS_ACTIVE).decrement(1.0);
    metrics::counter!(SESSIONS_TOTAL, "end" => end).increment(1);
}

/// A tool call was answered (`function`: a configured name, or `unknown`); its duration
/// counts when the answer was `delivered` (the session was still there to take it).
pub fn tool_call_answered(
    function: &str,
    status: &'static str,
    took: std::time::Duration,
    delivered: bool,
) {
    metrics::counter!(TOOL_CALLS_TOTAL, "function" => function.to_owned(), "status" => status)
        .increment(1);
    if delivered {
        metrics::histogram!(TOOL_CALL_DURATION, "status" => status).record(took.as_secs_f64());
    }
}

/// The first signal (filler or result) of a tool call went out.
pub fn first_signal(after: std::time::Duration) {
    metrics::histogram!(FIRST_SIGNAL).record(after.as_secs_f64());
}

/// toolgate's own time on a tool call.
pub fn overhead(took: std::time::Duration) {
    metrics::histogram!(OVERHEAD).record(took.as_secs_f64());
}

/// A provider request ended (`outcome`: `succeeded` or a failure code).
pub fn provider_request(
    provider: &'static str,
    action: &'static str,
    outcome: &'static str,
    took: std::time::Duration,
) {
    metrics::histogram!(PROVIDER_REQUEST_DURATION, "provider" => provider, "action" => action, "outcome" => outcome)
        .record(took.as_secs_f64());
}

/// A filler line went out.
pub fn filler() {
    metrics::counter!(FILLERS_TOTAL).increment(1);
}

/// A guard stopped a tool call.
pub fn guard_rejection(guard: &'static str) {
    metrics::counter!(GUARD_REJECTIONS_TOTAL, "guard" => guard).increment(1);
}

/// An `error` frame went out.
pub fn protocol_error(code: &'static str) {
    metrics::counter!(PROTOCOL_ERRORS_TOTAL, "code" => code).increment(1);
}
