//! The config checker: any text is a config or a list of problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolgate::config::{Config, LoadOptions};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let opts = LoadOptions::new(".").with_env(|_| Some("fuzz-secret".to_owned()));
        let _ = Config::from_toml(text, &opts);
    }
});
