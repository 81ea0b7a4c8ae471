//! The codes the model is told (SPEC §2, §3, §5): the `error` of a rejected, failed or
//! cancelled `tool.result.output`, and the keys of a function's `next` table (SPEC §8).
//!
//! Guards, providers, the answers, config checking and diagnostics all name them through
//! [`Code`], so their spelling lives in one place. These are not the codes of `error` frames
//! ([`crate::protocol::ErrorCode`]), which tell the media server that a frame was wrong.

use std::fmt;

/// A model-facing code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The provider accepted the action (a `next` key only; success carries no `error`).
    Succeeded,
    /// The name is not one of the agent's functions (SPEC §3).
    UnknownFunction,
    /// An argument does not parse or does not match its type (SPEC §3).
    InvalidArguments,
    /// A required value did not resolve (SPEC §3).
    MissingFields,
    /// The connection is not connected, or its circuit is open (SPEC §3).
    ConnectionUnavailable,
    /// The function needs the caller's consent, and there is none (SPEC §3).
    ConsentRequired,
    /// The recipient breaks the function's policy (SPEC §3).
    RecipientNotAllowed,
    /// `max_per_call` is reached (SPEC §3).
    LimitReached,
    /// The connection is over its rate (SPEC §3).
    RateLimited,
    /// The same action already ran or is running in this call (SPEC §2, §3).
    Duplicate,
    /// The caller barged in (`tool.cancel`, SPEC §2).
    Cancelled,
    /// The action went to the post-call workflow (a `next` key, SPEC §4).
    Deferred,
    /// The provider refused it definitively (SPEC §5).
    ProviderRejected,
    /// The provider refused the credentials (SPEC §5).
    ProviderAuthFailed,
    /// 5xx, 429 or unreachable (SPEC §5).
    ProviderUnavailable,
    /// No answer within the budget (SPEC §4, §5).
    Timeout,
    /// An answer that cannot be understood (SPEC §5).
    BadResponse,
    /// Refused before it ran: the sidecar is overloaded or shutting down (SPEC §2).
    Overloaded,
    /// toolgate itself failed while running the call.
    Internal,
}

impl Code {
    /// Every code.
    pub const ALL: [Code; 19] = [
        Code::Succeeded,
        Code::UnknownFunction,
        Code::InvalidArguments,
        Code::MissingFields,
        Code::ConnectionUnavailable,
        Code::ConsentRequired,
        Code::RecipientNotAllowed,
        Code::LimitReached,
        Code::RateLimited,
        Code::Duplicate,
        Code::Cancelled,
        Code::Deferred,
        Code::ProviderRejected,
        Code::ProviderAuthFailed,
        Code::ProviderUnavailable,
        Code::Timeout,
        Code::BadResponse,
        Code::Overloaded,
        Code::Internal,
    ];

    /// Whether a function's `next` table may override the instruction of this code: all but
    /// a function that does not exist and the refusals before a call runs.
    pub fn overridable(self) -> bool {
        !matches!(
            self,
            Code::UnknownFunction | Code::Overloaded | Code::Internal
        )
    }

    /// The code as the model, the evidence and the config spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Succeeded => "succeeded",
            Code::UnknownFunction => "unknown_function",
            Code::InvalidArguments => "invalid_arguments",
            Code::MissingFields => "missing_fields",
            Code::ConnectionUnavailable => "connection_unavailable",
            Code::ConsentRequired => "consent_required",
            Code::RecipientNotAllowed => "recipient_not_allowed",
            Code::LimitReached => "limit_reached",
            Code::RateLimited => "rate_limited",
            Code::Duplicate => "duplicate",
            Code::Cancelled => "cancelled",
            Code::Deferred => "deferred",
            Code::ProviderRejected => "provider_rejected",
            Code::ProviderAuthFailed => "provider_auth_failed",
            Code::ProviderUnavailable => "provider_unavailable",
            Code::Timeout => "timeout",
            Code::BadResponse => "bad_response",
            Code::Overloaded => "overloaded",
            Code::Internal => "internal",
        }
    }

    /// The code of this spelling.
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every code and its spelling, written out again: what the model, the evidence and
    /// config files have always used, in the order of `Code::ALL`.
    const PINNED: [(Code, &str); 19] = [
        (Code::Succeeded, "succeeded"),
        (Code::UnknownFunction, "unknown_function"),
        (Code::InvalidArguments, "invalid_arguments"),
        (Code::MissingFields, "missing_fields"),
        (Code::ConnectionUnavailable, "connection_unavailable"),
        (Code::ConsentRequired, "consent_required"),
        (Code::RecipientNotAllowed, "recipient_not_allowed"),
        (Code::LimitReached, "limit_reached"),
        (Code::RateLimited, "rate_limited"),
        (Code::Duplicate, "duplicate"),
        (Code::Cancelled, "cancelled"),
        (Code::Deferred, "deferred"),
        (Code::ProviderRejected, "provider_rejected"),
        (Code::ProviderAuthFailed, "provider_auth_failed"),
        (Code::ProviderUnavailable, "provider_unavailable"),
        (Code::Timeout, "timeout"),
        (Code::BadResponse, "bad_response"),
        (Code::Overloaded, "overloaded"),
        (Code::Internal, "internal"),
    ];

    #[test]
    fn every_code_keeps_its_spelling_and_is_listed_once() {
        let all: Vec<(Code, &str)> = Code::ALL.into_iter().map(|c| (c, c.as_str())).collect();
        assert_eq!(all, PINNED);
        let variants: HashSet<Code> = Code::ALL.into_iter().collect();
        assert_eq!(variants.len(), Code::ALL.len(), "no variant twice");
        let spellings: HashSet<&str> = Code::ALL.into_iter().map(Code::as_str).collect();
        assert_eq!(spellings.len(), Code::ALL.len(), "no spelling twice");
        for (code, text) in PINNED {
            assert_eq!(code.to_string(), text);
            assert_eq!(Code::parse(text), Some(code));
        }
        assert_eq!(Code::parse("no_such_code"), None);
    }

    /// Fails to compile when a variant is added: list it in `Code::ALL` and pin it above.
    #[test]
    fn every_variant_is_pinned() {
        for code in Code::ALL {
            match code {
                Code::Succeeded
                | Code::UnknownFunction
                | Code::InvalidArguments
                | Code::MissingFields
                | Code::ConnectionUnavailable
                | Code::ConsentRequired
                | Code::RecipientNotAllowed
                | Code::LimitReached
                | Code::RateLimited
                | Code::Duplicate
                | Code::Cancelled
                | Code::Deferred
                | Code::ProviderRejected
                | Code::ProviderAuthFailed
                | Code::ProviderUnavailable
                | Code::Timeout
                | Code::BadResponse
                | Code::Overloaded
                | Code::Internal => {}
            }
        }
    }

    #[test]
    fn next_tables_override_the_codes_they_always_could() {
        let fixed: Vec<Code> = Code::ALL.into_iter().filter(|c| !c.overridable()).collect();
        assert_eq!(
            fixed,
            [Code::UnknownFunction, Code::Overloaded, Code::Internal]
        );
    }
}
