//! `toolgate-loadtest`: an open-loop load generator for toolgate, with its own mock provider.
//!
//! It opens many concurrent calls (WebSocket sessions) against a running toolgate, plays a
//! short conversation in each, then sends tool calls on a schedule fixed in advance
//! ([`schedule`]): a stall in the sidecar cannot slow the arrivals down, and every latency is
//! measured from the scheduled time. The in-process mock provider ([`mock`]) answers the
//! sidecar's requests after a configurable latency and times itself per request; a token in
//! each tool call's arguments ties the provider request to its call ([`calls`]), so the
//! latency the sidecar *adds* is measured per request, not guessed from averages. The
//! optional baseline ([`baseline`]) sends the same requests straight to the mock on the same
//! schedule, in the same run. [`report`] turns the ledgers into HDR percentiles, counts lost
//! and doubled results (which fail the run) and adds the sidecar's CPU and memory ([`proc`]).
//!
//! `--relay` measures the realtime relays instead ([`relay`]): audio-sized frames through
//! toolgate to the generator's own echoing upstream ([`upstream`]), timed per frame and per
//! pass-through leg ([`frames`], [`relay_report`]), against the same frames sent straight to
//! the upstream.
//!
//! `--webhook` sends the tool calls as a hosted voice platform does instead ([`webhook`]):
//! open-loop Vapi `tool-calls` POSTs to toolgate's tool webhook, spread over many platform
//! calls, measured and reported as the WebSocket calls are.
//!
//! Exit codes: 0 the run passed, 1 it found lost, doubled or out-of-order results or protocol
//! errors, 2 it could not run (bad flags, cannot connect, token refused, unknown agent).

mod baseline;
mod calls;
mod cli;
mod frames;
mod latency;
mod mock;
mod proc;
mod relay;
mod relay_report;
mod report;
mod run;
mod schedule;
mod script;
mod upstream;
mod webhook;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    if let Err(e) = args.check() {
        eprintln!("toolgate-loadtest: {e}");
        return ExitCode::from(2);
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("toolgate-loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = if args.relay {
        runtime.block_on(relay::run(args, threads))
    } else if args.webhook {
        runtime.block_on(webhook::run(args, threads))
    } else {
        runtime.block_on(run::run(args, threads))
    };
    // Sockets of calls that failed to set up may still be open; do not wait for them.
    runtime.shutdown_background();
    match outcome {
        Ok(run::Outcome::Finished { passed: true }) | Ok(run::Outcome::MockStopped) => {
            ExitCode::SUCCESS
        }
        Ok(run::Outcome::Finished { passed: false }) => ExitCode::from(1),
        Err(e) => {
            eprintln!("toolgate-loadtest: {e}");
            ExitCode::from(2)
        }
    }
}
