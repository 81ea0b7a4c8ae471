//! toolgate: a tool-call sidecar for live voice-AI calls.
//!
//! A voice media server opens one WebSocket per phone call (`GET /v1/session`). When the
//! model emits a tool call, the media server forwards it here; toolgate decides whether it may
//! run, runs it against the real provider under a timing budget, keeps the caller from hearing
//! silence, and answers the model with something it can act on.
//!
//! # How a tool call travels
//!
//! 1. [`server`] accepts the connection, checks the org's bearer token *before* upgrading
//!    (401, no socket otherwise) and hands the socket to [`session`].
//! 2. [`session`] runs one task per call. It owns the socket, the call history (transcript
//!    turns, consent events) and the ledger of actions taken, so none of that is locked. Frames
//!    are decoded by [`protocol`]; every malformed frame gets an `error` frame and the call
//!    goes on.
//! 3. A `tool.call` goes through [`guards`] synchronously, in memory: function exposed,
//!    arguments ([`bindings`] resolves and type-checks every action input), required values,
//!    connection health ([`connections`]), consent, recipient, duplicate, per-call limit.
//!    A rejection is answered at once; nothing is sent.
//! 4. An accepted call is spawned into [`dispatch`], which builds the provider request
//!    ([`providers`]), sends it through the one pooled HTTP client and drives the timing
//!    [`dispatch::Budget`]: filler events at `filler_after_ms` (and repeats), the handoff at
//!    `defer_after_ms`, the hard timeout.
//! 5. A handoff writes a job to the [`workflow`] store (committed and fsynced) before the model
//!    is told `deferred`; the live request keeps the job's lease, so the worker never sends it
//!    a second time, and takes over only if the outcome stays unknown or the process dies.
//! 6. Fillers, deferrals and the final outcome flow back to the session task over one FIFO
//!    channel, so a filler can never follow its result; [`answer`] writes the `output` the
//!    model reads.
//!
//! Data flows one way: sessions call guards and dispatch; providers know nothing of sessions.
//! Configuration ([`config`]) is checked completely before anything starts, and the
//! [`runtime::Runtime`] shares it, the provider client and connection health among sessions.
//!
//! Tooling stands apart in [`tooling`]: loopback providers that behave like the real APIs
//! (used by the demo, the tests and the load generator), scenarios, replay, the demo and a
//! protocol client. Nothing on a live call's path imports it.
// Lint levels are the workspace's (`[workspace.lints]` in Cargo.toml, bans in clippy.toml).

/// Print a line to stdout, ignoring a closed pipe (`toolgate check-config x | head` must not
/// panic): for the command line's verbs and the demo.
#[macro_export]
macro_rules! out {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// [`out!`] without the newline.
#[macro_export]
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

pub mod admin;
pub mod answer;
pub mod backoff;
pub mod bindings;
pub mod call_state;
pub mod catalog;
pub mod clock;
pub mod codes;
pub mod config;
pub mod connections;
pub mod diagnostics;
pub mod dispatch;
pub mod evidence;
pub mod export;
pub mod guards;
pub mod hooks;
pub mod net;
pub mod overload;
pub mod protocol;
pub mod providers;
pub mod redact;
pub mod relay;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod session;
pub mod storage;
pub mod telemetry;
pub mod timer;
pub mod tooling;
pub mod worker;
pub mod workflow;
