//! The wall clock: milliseconds since the Unix epoch, the one time base that stores, evidence,
//! connections and sessions share. Everything that keeps a time takes it from here (clippy
//! refuses `SystemTime::now` elsewhere), so a test can pass its own time where a function takes
//! [`Millis`].

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the store's clock, passed in explicitly so tests can
/// drive time.
pub type Millis = i64;

/// The wall clock in [`Millis`].
pub fn now_ms() -> Millis {
    now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// The wall clock, for what needs a [`SystemTime`] (a provider's HTTP date, a signature's
/// timestamp). The one place that reads it.
#[allow(clippy::disallowed_methods, reason = "the clock itself")]
pub fn now() -> SystemTime {
    SystemTime::now()
}
