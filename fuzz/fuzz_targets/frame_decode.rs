//! Protocol v1 frames from a media server: any text decodes to a frame or a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(toolgate::protocol::Inbound::ToolCall(call)) = toolgate::protocol::decode(text) {
            let _ = call.arguments.parse();
        }
    }
});
