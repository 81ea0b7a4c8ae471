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
