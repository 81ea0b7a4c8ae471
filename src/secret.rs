//! Secrets: credentials and tokens that must never reach logs, evidence, metrics or errors.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// A secret value. `Debug` and `Display` print `[redacted]`; only [`Secret::expose`] reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: only for building the outgoing request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the secret, for constant-size lookups that do not keep or compare raw tokens.
    pub fn digest(&self) -> [u8; 32] {
        token_digest(&self.0)
    }
}

/// SHA-256 of a presented token (see [`Secret::digest`]).
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Secret key material (raw bytes), e.g. a webhook signing key. Prints `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Arc<[u8]>);

impl SecretBytes {
    /// Wrap key bytes.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        SecretBytes(bytes.into())
    }

    /// The key bytes: only for computing a signature.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("re_live_123456");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "re_live_123456");
    }
}
