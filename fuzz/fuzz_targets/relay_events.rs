//! Relay events of both dialects, as client and as upstream frames: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = toolgate::relay::exercise_dialects(text);
    }
});
