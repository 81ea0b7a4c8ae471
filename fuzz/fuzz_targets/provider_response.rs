//! Provider answers: any status, headers and body is understood or classified.
//!
//! Input layout: status - 100 (u16, little-endian, taken mod 500), the action (index into
//! `Action::ALL`), the length of the header value (mod 65), the `Retry-After` /
//! `ratelimit-reset` value, then the body. The seeds in `fuzz/seeds/provider_response` follow it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolgate::catalog::Action;
use toolgate::providers::{RawResponse, interpret, retry_after};

fuzz_target!(|data: &[u8]| {
    let [s0, s1, action, head_len, rest @ ..] = data else {
        return;
    };
    let status = 100 + u16::from_le_bytes([*s0, *s1]) % 500;
    let action = Action::ALL[*action as usize % Action::ALL.len()];
    let (head, body) = rest.split_at(rest.len().min(*head_len as usize % 65));
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
