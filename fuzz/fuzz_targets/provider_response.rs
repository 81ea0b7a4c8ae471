//! Provider answers: any status, headers and body is understood or classified.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolgate::catalog::Action;
use toolgate::providers::{RawResponse, interpret, retry_after};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = 100 + u16::from_le_bytes([data[0], data[1]]) % 500;
    let action = Action::ALL[data[2] as usize % Action::ALL.len()];
    let rest = &data[3..];
    let (head, body) = rest.split_at(rest.len().min(64));
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(head) {
        headers.insert("retry-after", v.clone());
        headers.insert("ratelimit-reset", v);
    }
    let _ = retry_after(&headers);
    let _ = interpret(
        action,
        RawResponse {
            status,
            headers,
            body: bytes::Bytes::copy_from_slice(body),
        },
    );
});
