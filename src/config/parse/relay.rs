//! `[relay]` (SPEC §13.2): where the realtime relays connect upstream, and their limits.

use std::time::Duration;

use toml::Table;

use crate::config::check::{Ck, at};

pub(super) fn parse_relay(ck: &mut Ck<'_>, t: &Table) -> crate::config::RelaySettings {
    const P: &str = "relay";
    ck.keys(
        t,
        P,
        &[
            "openai_upstream",
            "deepgram_upstream",
            "ticket_ttl_ms",
            "max_frame_bytes",
        ],
    );
    let ws_url = |ck: &mut Ck<'_>, key: &str, default: &str| {
        let s = ck
            .string(t, P, key, false)
            .unwrap_or_else(|| default.to_owned());
        let ok = (s.starts_with("ws://") || s.starts_with("wss://"))
            && s.parse::<hyper::Uri>()
                .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
        if !ok {
            ck.err(
                at(P, key),
                format!("{s:?} is not a WebSocket URL like \"{default}\""),
            );
        }
        s
    };
    crate::config::RelaySettings {
        openai_upstream: ws_url(ck, "openai_upstream", "wss://api.openai.com/v1/realtime"),
        deepgram_upstream: ws_url(
            ck,
            "deepgram_upstream",
            "wss://agent.deepgram.com/v1/agent/converse",
        ),
        ticket_ttl: Duration::from_millis(
            ck.uint(t, P, "ticket_ttl_ms", 1000, 3_600_000)
                .unwrap_or(60_000),
        ),
        max_frame_bytes: ck
            .uint(t, P, "max_frame_bytes", 1024, 256 << 20)
            .unwrap_or(16 << 20) as usize,
    }
}
