//! `[defaults]` (SPEC §4, §8): the timing budget and filler of functions that set none, and
//! how often connections are validated.

use std::time::Duration;

use toml::Table;

use crate::config::check::Ck;
use crate::config::{DEFAULT_FILLER, Defaults, Timing};

pub(super) fn parse_defaults(ck: &mut Ck<'_>, t: &Table) -> Defaults {
    const P: &str = "defaults";
    ck.keys(
        t,
        P,
        &[
            "timing",
            "filler",
            "validate_every_ms",
            "revalidate_error_ms",
            "validate_timeout_ms",
            "max_retry_after_ms",
        ],
    );
    let timing = match ck.table(t, P, "timing") {
        Some(tt) => ck.timing(tt, "defaults.timing", Timing::default()),
        None => Timing::default(),
    };
    ck.check_timing(&timing, "defaults.timing");
    let filler = ck
        .strings(t, P, "filler")
        .unwrap_or_else(|| vec![DEFAULT_FILLER.to_owned()]);
    let every = |ck: &mut Ck<'_>, key: &str, default: u64| {
        Duration::from_millis(ck.uint(t, P, key, 1000, 86_400_000).unwrap_or(default))
    };
    Defaults {
        timing,
        filler,
        validate_every: every(ck, "validate_every_ms", 300_000),
        revalidate_error: every(ck, "revalidate_error_ms", 30_000),
        validate_timeout: every(ck, "validate_timeout_ms", 10_000),
        // Minutes, not days: a provider's date in year 9999 must not stop a connection or
        // promise the caller an action that never comes.
        max_retry_after: Duration::from_millis(
            ck.uint(t, P, "max_retry_after_ms", 1000, 3_600_000)
                .unwrap_or(300_000),
        ),
    }
}
