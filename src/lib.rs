//! toolgate: a tool-call sidecar for live voice-AI calls.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod answer;
pub mod bindings;
pub mod catalog;
pub mod client;
pub mod config;
pub mod connections;
pub mod demo;
pub mod dispatch;
pub mod guards;
pub mod mock;
pub mod net;
pub mod protocol;
pub mod providers;
pub mod runtime;
pub mod server;
pub mod session;
pub mod telemetry;
