//! Tooling around the product path, for the people who build and check agents: loopback
//! provider mocks that behave like the real APIs ([`mock`]), scripted conversations
//! (`toolgate test`, [`scenario`], SPEC §9), the demo (`toolgate demo`, [`demo`]), replaying a
//! recorded invocation against a mock (`toolgate replay`, [`replay`]) and a media-server-side
//! client ([`client`]). Nothing on a live call's path imports it.

pub mod client;
pub mod demo;
pub mod mock;
pub mod replay;
pub mod scenario;
