//! Redaction (SPEC §6): what may be kept of a credential, a phone number, an email address or
//! free text once it leaves the request that needed it.
//!
//! - credentials: never; `[redacted]`.
//! - phone numbers: the country code and the last two digits (`+1*******00`).
//! - email addresses: the first letter and the domain (`a***@example.com`).
//!
//! [`text`] applies all three to provider messages before they reach the model, the logs or
//! the evidence: providers echo inputs back ("Invalid `to` field: ana@example.com") and
//! misbehaving endpoints echo headers.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// E.164 country codes of one and two digits; every other code has three.
const CC1: &[&str] = &["1", "7"];
const CC2: &[&str] = &[
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47",
    "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65",
    "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
];

fn country_code_len(digits: &str) -> usize {
    if CC1.iter().any(|c| digits.starts_with(c)) {
        1
    } else if CC2.iter().any(|c| digits.starts_with(c)) {
        2
    } else {
        3
    }
}

/// `+14155550100` becomes `+1********00`; digits without a `+` keep only the last two.
pub fn phone(number: &str) -> String {
    let international = number.trim_start().starts_with('+');
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let keep_head = if international {
        country_code_len(&digits).min(digits.len().saturating_sub(2))
    } else {
        0
    };
    let keep_tail = 2.min(digits.len().saturating_sub(keep_head));
    let mut out = String::with_capacity(digits.len() + 1);
    if international {
        out.push('+');
    }
    out.push_str(&digits[..keep_head]);
    for _ in keep_head..digits.len() - keep_tail {
        out.push('*');
    }
    out.push_str(&digits[digits.len() - keep_tail..]);
    out
}

/// `ana@example.com` becomes `a***@example.com`.
pub fn email(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .expect("static regex")
});

/// Seven or more digits, optionally after `+`, with the separators people write inside one
/// number.
static PHONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\+?\d(?:[\s().-]?\d){6,}").expect("static regex"));

/// Remove `secrets` (exact substrings), then redact email addresses and phone numbers.
pub fn text<'a>(s: &'a str, secrets: &[&str]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(s);
    for secret in secrets.iter().filter(|x| x.len() >= 4) {
        if out.contains(secret) {
            out = Cow::Owned(out.replace(secret, "[redacted]"));
        }
    }
    if EMAIL.is_match(&out) {
        out = Cow::Owned(
            EMAIL
                .replace_all(&out, |c: &regex::Captures<'_>| email(&c[0]))
                .into_owned(),
        );
    }
    if PHONE.is_match(&out) {
        out = Cow::Owned(
            PHONE
                .replace_all(&out, |c: &regex::Captures<'_>| phone(&c[0]))
                .into_owned(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn phones_keep_country_code_and_last_two_digits() {
        assert_eq!(phone("+14155550100"), "+1********00");
        assert_eq!(phone("+442079460958"), "+44********58");
        assert_eq!(phone("+353861234567"), "+353*******67");
        assert_eq!(phone("4155550100"), "********00");
    }

    #[test]
    fn emails_keep_first_letter_and_domain() {
        assert_eq!(email("ana@example.com"), "a***@example.com");
    }

    #[test]
    fn text_redacts_secrets_addresses_and_numbers() {
        let s = "token wati-secret-1 refused for +1 415 555 0100 and ana.b@example.co.uk";
        assert_eq!(
            text(s, &["wati-secret-1"]),
            "token [redacted] refused for +1********00 and a***@example.co.uk"
        );
        assert!(matches!(
            text("Template is not approved.", &[]),
            Cow::Borrowed(_)
        ));
        assert_eq!(text("order A-1042 at 10:30", &[]), "order A-1042 at 10:30");
    }

    proptest! {
        #[test]
        fn no_number_address_or_secret_survives(
            cc in "[1-9][0-9]{0,2}",
            national in "[0-9]{7,11}",
            local in "[a-z][a-z0-9._]{1,15}",
            domain in "[a-z]{2,12}\\.(com|org|co\\.uk|io)",
            secret in "[A-Za-z0-9_]{12,40}",
            filler in "[A-Za-z ,.:]{0,40}",
        ) {
            let number = format!("+{cc}{national}");
            let address = format!("{local}@{domain}");
            let s = format!("{filler} {number} {filler} {address} key={secret} {filler}");
            let out = text(&s, &[&secret]);
            prop_assert!(!out.contains(&number), "{}", out);
            prop_assert!(!out.contains(&national), "{}", out);
            prop_assert!(!out.contains(&address), "{}", out);
            prop_assert!(!out.contains(&format!("{local}@")), "{}", out);
            prop_assert!(!out.contains(&secret), "{}", out);
        }
    }
}
