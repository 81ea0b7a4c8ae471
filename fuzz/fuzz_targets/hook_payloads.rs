//! Tool-webhook bodies of every platform: parsed or refused with a 4xx, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolgate::config::Platform;

fuzz_target!(|data: &[u8]| {
    for p in [Platform::Vapi, Platform::Retell, Platform::Elevenlabs] {
        if let Err(status) = toolgate::hooks::parse_body(p, data, "send_email") {
            assert!((200..500).contains(&status), "{status}");
        }
    }
});
