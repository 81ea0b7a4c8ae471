//! `[server]` (SPEC §8): the listeners and the limits every session and connection obeys.

use std::time::Duration;

use toml::Table;

use crate::config::ServerSettings;
use crate::config::check::{Ck, at};

pub(super) fn parse_server(ck: &mut Ck<'_>, t: &Table) -> ServerSettings {
    const P: &str = "server";
    ck.keys(
        t,
        P,
        &[
            "listen",
            "admin_listen",
            "max_frame_bytes",
            "disconnect_grace_ms",
            "max_sessions",
            "max_inflight_per_session",
            "shed_after_delay_ms",
            "max_frames_per_second",
            "ping_interval_ms",
            "idle_timeout_ms",
            "write_timeout_ms",
            "max_pending_connections",
            "handshake_timeout_ms",
            "admin_max_connections",
            "max_turn_bytes",
            "max_history_turns",
            "max_history_bytes",
            "max_bytes_per_second",
        ],
    );
    let addr = |ck: &mut Ck<'_>, key: &str, default: &str| {
        let s = ck
            .string(t, P, key, false)
            .unwrap_or_else(|| default.to_owned());
        if s.parse::<std::net::SocketAddr>().is_err() {
            ck.err(
                at(P, key),
                format!("{s:?} is not an address like \"127.0.0.1:8787\""),
            );
        }
        s
    };
    let ms = |ck: &mut Ck<'_>, key: &str, default: u64| {
        Duration::from_millis(ck.uint(t, P, key, 100, 3_600_000).unwrap_or(default))
    };
    let listen = addr(ck, "listen", "127.0.0.1:8787");
    let admin_listen = addr(ck, "admin_listen", "127.0.0.1:9090");
    ServerSettings {
        listen,
        admin_listen,
        max_frame_bytes: ck
            .uint(t, P, "max_frame_bytes", 1024, 16 << 20)
            .unwrap_or(65536) as usize,
        disconnect_grace: Duration::from_millis(
            ck.uint(t, P, "disconnect_grace_ms", 0, 600_000)
                .unwrap_or(5000),
        ),
        max_sessions: ck
            .uint(t, P, "max_sessions", 1, 1_000_000)
            .unwrap_or(20_000) as usize,
        max_pending: ck
            .uint(t, P, "max_pending_connections", 1, 1_000_000)
            .unwrap_or(1024) as usize,
        handshake_timeout: ms(ck, "handshake_timeout_ms", 5_000),
        admin_max_connections: ck
            .uint(t, P, "admin_max_connections", 1, 100_000)
            .unwrap_or(256) as usize,
        max_turn_bytes: ck.uint(t, P, "max_turn_bytes", 64, 1 << 20).unwrap_or(8192) as usize,
        max_history_turns: ck
            .uint(t, P, "max_history_turns", 10, 1_000_000)
            .unwrap_or(1000) as usize,
        max_history_bytes: ck
            .uint(t, P, "max_history_bytes", 1024, 64 << 20)
            .unwrap_or(256 << 10) as usize,
        max_bytes_per_second: ck
            .uint(t, P, "max_bytes_per_second", 1024, 1 << 30)
            .unwrap_or(256 << 10) as usize,
        max_inflight_per_session: ck
            .uint(t, P, "max_inflight_per_session", 1, 1024)
            .unwrap_or(16) as usize,
        shed_after_delay: match ck.uint(t, P, "shed_after_delay_ms", 0, 60_000).unwrap_or(5) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        },
        max_frames_per_second: ck
            .uint(t, P, "max_frames_per_second", 1, 100_000)
            .unwrap_or(200) as u32,
        ping_interval: ms(ck, "ping_interval_ms", 15_000),
        idle_timeout: ms(ck, "idle_timeout_ms", 45_000),
        write_timeout: ms(ck, "write_timeout_ms", 10_000),
    }
}
