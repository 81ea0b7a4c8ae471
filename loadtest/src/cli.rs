//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::frames::{Api, FrameKind};
use crate::latency::{Latency, parse_seconds_or_duration};
use crate::schedule::Arrivals;

/// Open-loop load generator for toolgate, with its own mock provider.
///
/// Opens --sessions WebSocket calls against a running toolgate, plays a short conversation in
/// each, then sends tool calls at --rate per second across all of them on a schedule fixed in
/// advance, and reports latency (end-to-end, added by the sidecar, first signal, filler and
/// deferral lateness), lost and doubled results, and the sidecar's CPU and memory.
///
/// With --relay it measures the realtime relays instead: --sessions relayed calls stream
/// audio-sized frames at --frame-rate each through toolgate to the generator's own echoing
/// upstream, and the report gives the round trip and each pass-through leg, against the same
/// frames sent straight to the upstream (--baseline).
///
/// With --webhook it plays a hosted voice platform instead: open-loop Vapi `tool-calls` POSTs
/// at --rate per second to the sidecar's `POST /v1/hooks/{id}`, spread over --sessions platform
/// calls, over a pool of keep-alive HTTP connections, with the same report.
#[derive(Parser, Debug, Clone)]
#[command(name = "toolgate-loadtest", version)]
pub struct Args {
    /// The sidecar's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8787/v1/session")]
    pub url: String,

    /// The org's session token (not used by --webhook).
    #[arg(long, env = "LOADTEST_SESSION_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// The agent each call starts a session with.
    #[arg(long, default_value = "support-bot")]
    pub agent: String,

    /// The function the tool calls name.
    #[arg(long, default_value = "request_callback")]
    pub function: String,

    /// The tool calls' arguments (a JSON object; see the long help).
    #[arg(
        long,
        default_value = r#"{"reason":"load {token}"}"#,
        long_help = "The tool calls' arguments: a JSON object whose string values may hold \
                     {token} (the call's correlation token, which the provider request must \
                     carry for added latency to be measured) and {seq} (the call number). Every \
                     call's arguments differ, so the duplicate guard lets each through."
    )]
    pub args: String,

    /// `session.start.variables` (a JSON object).
    #[arg(
        long,
        default_value = r#"{"email":"ana@example.com","order_id":"A-1042"}"#
    )]
    pub variables: String,

    /// The caller's number.
    #[arg(long, default_value = "+14155550100")]
    pub caller: String,

    /// The caller's name.
    #[arg(long, default_value = "Ana")]
    pub caller_name: String,

    /// The scope of the granted `consent` event each call sends before the run.
    #[arg(long, default_value = "callback")]
    pub consent: String,

    /// Send no `consent` event.
    #[arg(long)]
    pub no_consent: bool,

    /// Concurrent calls (WebSocket sessions), all opened before the clock starts.
    #[arg(long, visible_alias = "calls", default_value_t = 50)]
    pub sessions: usize,

    /// Tool calls per second, across all calls.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,

    /// How long tool calls are sent (`30s`, `2m`; a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_seconds_or_duration)]
    pub duration: Duration,

    /// How arrivals are spaced.
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    pub arrivals: Arrivals,

    /// Seed of the Poisson schedule (random when not given; the report shows it).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Calls scheduled in this first stretch are sent and checked but left out of latencies.
    #[arg(long, default_value = "0", value_parser = parse_seconds_or_duration)]
    pub warmup: Duration,

    /// A tool call with no result this long after its scheduled time is lost.
    #[arg(long, default_value = "15s", value_parser = parse_seconds_or_duration)]
    pub result_timeout: Duration,

    /// The function's `filler_after_ms` in the sidecar's config (filler lateness is measured
    /// against it).
    #[arg(long, default_value_t = 500)]
    pub filler_after_ms: u64,

    /// The function's `defer_after_ms` in the sidecar's config (deferral lateness is measured
    /// against it).
    #[arg(long, default_value_t = 2500)]
    pub defer_after_ms: u64,

    /// Where the mock provider listens (the sidecar's connections must point here).
    #[arg(long, default_value = "127.0.0.1:9999")]
    pub mock_listen: String,

    /// The mock provider's latency: `fixed:50ms`, `uniform:20ms..80ms`,
    /// `lognormal:median=50ms,sigma=0.5[,max=2s]`, or a mixture such as
    /// `fixed:50ms@98+fixed:700ms@2`.
    #[arg(long, default_value = "fixed:50ms", value_parser = clap::value_parser!(Latency))]
    pub mock_latency: Latency,

    /// The share of actions the mock answers with 503 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub mock_error_rate: f64,

    /// Run no mock provider (the sidecar points elsewhere; added latency is not measured).
    #[arg(long, conflicts_with = "mock_only")]
    pub no_mock: bool,

    /// Only run the mock provider, until Ctrl-C.
    #[arg(long)]
    pub mock_only: bool,

    /// Before the sidecar phase, send the same requests on the same schedule straight to the
    /// mock, and report the sidecar's figures as ratios to these.
    #[arg(long)]
    pub baseline: bool,

    /// The URL baseline requests are posted to (default: the mock's `/hook`).
    #[arg(long)]
    pub baseline_url: Option<String>,

    /// The sidecar's process id: its CPU and memory are sampled from /proc during the run.
    #[arg(long)]
    pub sidecar_pid: Option<u32>,

    /// Also write the whole report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Worker threads of the generator's runtime (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,

    /// How many calls are being set up at once before the run.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,

    /// Relay mode: stream audio-sized frames through toolgate's realtime relay
    /// (`POST /v1/relay/tickets`, then the ticket URL) to the generator's own echoing upstream.
    #[arg(long, help_heading = "Relay mode")]
    pub relay: bool,

    /// Which relay (and which upstream dialect the fake speaks).
    #[arg(long, value_enum, default_value_t = Api::Openai, help_heading = "Relay mode")]
    pub relay_api: Api,

    /// Frames per second each relayed call sends (a media server's audio clock).
    #[arg(long, default_value_t = 50.0, help_heading = "Relay mode")]
    pub frame_rate: f64,

    /// Frame kind: `text` (an OpenAI `input_audio_buffer.append` event with base64 PCM16) or
    /// `binary` (raw PCM16, as Deepgram takes it). Default: text for openai, binary for
    /// deepgram.
    #[arg(long, value_enum, help_heading = "Relay mode")]
    pub frames: Option<FrameKind>,

    /// Milliseconds of audio per frame (PCM16 mono at --sample-rate).
    #[arg(long, default_value_t = 20, help_heading = "Relay mode")]
    pub audio_ms: u32,

    /// The audio's sample rate.
    #[arg(long, default_value_t = 24_000, help_heading = "Relay mode")]
    pub sample_rate: u32,

    /// Where the fake upstream listens; the sidecar's `[relay] openai_upstream` (or
    /// `deepgram_upstream`) must point here.
    #[arg(long, default_value = "127.0.0.1:9998", help_heading = "Relay mode")]
    pub upstream_listen: String,

    /// Where tickets are asked for (default: `http://<host of --url>/v1/relay/tickets`).
    #[arg(long, help_heading = "Relay mode")]
    pub tickets_url: Option<String>,

    /// The model key the client sends (forwarded upstream by the relay; the fake ignores it).
    #[arg(long, default_value = "sk-loadtest", help_heading = "Relay mode")]
    pub upstream_key: String,

    /// Webhook mode: POST Vapi `tool-calls` messages to the sidecar's tool webhook
    /// (`POST /v1/hooks/{id}`, SPEC §13.1) instead of opening WebSocket sessions.
    #[arg(long, conflicts_with_all = ["relay", "mock_only"], help_heading = "Webhook mode")]
    pub webhook: bool,

    /// The id of the sidecar's `[[webhooks]]` entry (a `vapi` hook).
    #[arg(long, default_value = "loadtest-vapi", help_heading = "Webhook mode")]
    pub hook_id: String,

    /// Where requests go (default: `http://<host of --url>/v1/hooks/<--hook-id>`).
    #[arg(long, help_heading = "Webhook mode")]
    pub hook_url: Option<String>,

    /// The hook's secret (Vapi's "server secret").
    #[arg(
        long,
        env = "LOADTEST_HOOK_SECRET",
        hide_env_values = true,
        help_heading = "Webhook mode"
    )]
    pub hook_secret: Option<String>,

    /// How requests carry the secret: `x-vapi-secret` (Vapi's header) or `bearer`
    /// (`Authorization: Bearer`).
    #[arg(long, value_enum, default_value_t = HookAuth::XVapiSecret, help_heading = "Webhook mode")]
    pub hook_auth: HookAuth,
}

/// How webhook requests carry the hook's secret.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAuth {
    /// `X-Vapi-Secret: <secret>`.
    XVapiSecret,
    /// `Authorization: Bearer <secret>`.
    Bearer,
}

impl HookAuth {
    /// The header as the report shows it.
    pub fn header(self) -> &'static str {
        match self {
            HookAuth::XVapiSecret => "X-Vapi-Secret",
            HookAuth::Bearer => "Authorization: Bearer",
        }
    }
}

impl Args {
    /// Checks clap cannot express.
    pub fn check(&self) -> Result<(), String> {
        if self.sessions == 0 && !self.mock_only {
            return Err("--sessions must be at least 1".into());
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err("--rate must be above zero".into());
        }
        if !(0.0..=1.0).contains(&self.mock_error_rate) {
            return Err("--mock-error-rate must be between 0 and 1".into());
        }
        if self.connect_concurrency == 0 {
            return Err("--connect-concurrency must be at least 1".into());
        }
        if self.threads == Some(0) {
            return Err("--threads must be at least 1".into());
        }
        if self.token.is_none() && !self.mock_only && !self.webhook {
            return Err("no session token: pass --token or set LOADTEST_SESSION_TOKEN".into());
        }
        if self.webhook && self.hook_secret.as_deref().is_none_or(str::is_empty) {
            return Err(
                "no hook secret: pass --hook-secret or set LOADTEST_HOOK_SECRET (the secret of the sidecar's [[webhooks]] entry)"
                    .into(),
            );
        }
        if self.no_mock && self.baseline && !self.relay {
            return Err(
                "--no-mock and --baseline do not go together: the baseline posts to the mock"
                    .into(),
            );
        }
        if self.relay {
            if self.mock_only {
                return Err("--relay and --mock-only do not go together".into());
            }
            if !(self.frame_rate.is_finite() && self.frame_rate > 0.0 && self.frame_rate <= 1000.0)
            {
                return Err("--frame-rate must be above zero and at most 1000".into());
            }
            if !(1..=1000).contains(&self.audio_ms) {
                return Err("--audio-ms must be between 1 and 1000".into());
            }
            if !(8_000..=48_000).contains(&self.sample_rate) {
                return Err("--sample-rate must be between 8000 and 48000".into());
            }
        }
        Ok(())
    }
}
