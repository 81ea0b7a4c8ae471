//! Redaction (SPEC §6): what may be kept of a credential, a phone number, an email address or
//! free text once it leaves the request that needed it.
//!
//! - credentials: never; `[redacted]`.
//! - phone numbers: the country code and the last two digits (`+1*******00`).
//! - email addresses: the first letter and the domain (`a***@example.com`).
//!
//! - free-text bodies (email text, WhatsApp messages, summaries): their length and a hash,
//!   unless `evidence.keep_bodies = true` (then with numbers and addresses masked).
//! - provider response bodies: at most [`MAX_BODY`] bytes, then the rules above.
//!
//! [`text`] applies the first three to provider messages before they reach the model, the logs
//! or the evidence: providers echo inputs back ("Invalid `to` field: ana@example.com") and
//! misbehaving endpoints echo headers. [`json`], [`url`] and [`body`] apply them to the
//! structured payloads the evidence keeps. Every path into storage or the API goes through this
//! module.

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
/// number (`+1 (415) 555-0100`: up to two in a row).
static PHONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\+?\d(?:[\s().-]{0,2}\d){6,}").expect("static regex"));

/// Remove `secrets` (exact substrings), then redact email addresses and phone numbers.
pub fn text<'a>(s: &'a str, secrets: &[&str]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(s);
    for secret in secrets.iter().filter(|x| x.len() >= 4) {
        if out.contains(secret) {
            out = Cow::Owned(out.replace(secret, "[redacted]"));
        }
    }
    // Most strings are short and plain: the regexes run only on text that could hold a match
    // (an address needs an `@`, a phone number seven digits), which is most of what redaction
    // costs a tool call otherwise.
    if out.contains('@') && EMAIL.is_match(&out) {
        out = Cow::Owned(
            EMAIL
                .replace_all(&out, |c: &regex::Captures<'_>| email(&c[0]))
                .into_owned(),
        );
    }
    if out.bytes().filter(u8::is_ascii_digit).nth(6).is_some()
        && let Some(masked) = mask_phones(&out)
    {
        out = Cow::Owned(masked);
    }
    out
}

/// Whether the digits at `start..end` of `s` sit inside a long hexadecimal identifier (a
/// message id, a UUID such as `49a3999c-0ce1-4ea6-ab68-000000000002`): a token of at least
/// 16 hex digits and dashes with a letter among them. Anything else that looks like a number
/// is masked, glued to words or not (`order14155550100`).
fn in_hex_id(s: &str, start: usize, end: usize) -> bool {
    let is_id = |c: char| c.is_ascii_hexdigit() || c == '-';
    let from = s[..start]
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_id(*c))
        .last()
        .map_or(start, |(i, _)| i);
    let to = s[end..]
        .char_indices()
        .take_while(|(_, c)| is_id(*c))
        .last()
        .map_or(end, |(i, c)| end + i + c.len_utf8());
    let token = &s[from..to];
    let glued = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    token.len() >= 16
        && token.chars().any(|c| c.is_ascii_alphabetic())
        && !glued(s[..from].chars().next_back())
        && !glued(s[to..].chars().next())
}

/// Whether a match is the date of an RFC 3339 timestamp (`2026-12-03` in
/// `2026-12-03T14:27:46Z`): four digits, two and two, joined by dashes and followed by `T` and
/// a digit. A phone number is never written that way.
fn is_timestamp_date(m: &str, after: &str) -> bool {
    let b = m.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 10
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && after.starts_with('T')
        && after[1..].starts_with(|c: char| c.is_ascii_digit())
}

/// Mask the phone numbers in `s` (`None`: there were none).
fn mask_phones(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut last = 0;
    for m in PHONE.find_iter(s) {
        if !m.as_str().starts_with('+') && in_hex_id(s, m.start(), m.end()) {
            continue;
        }
        if is_timestamp_date(m.as_str(), &s[m.end()..]) {
            continue;
        }
        out.push_str(&s[last..m.start()]);
        out.push_str(&phone(m.as_str()));
        last = m.end();
    }
    if last == 0 {
        return None;
    }
    out.push_str(&s[last..]);
    Some(out)
}

/// Longest provider response body kept, in bytes.
pub const MAX_BODY: usize = 4096;

/// JSON keys (and query parameters) whose string values are free-text bodies.
pub const BODY_KEYS: &[&str] = &[
    "text",
    "html",
    "subject",
    "message_text",
    "messageText",
    "summary",
    "note",
    "body",
    "message",
];

/// A free-text body: `{"length", "sha256"}` (the first 16 hex digits), or with `keep` the text
/// itself with secrets, numbers and addresses masked.
pub fn body(s: &str, keep: bool, secrets: &[&str]) -> serde_json::Value {
    use sha2::{Digest, Sha256};
    if keep {
        return serde_json::Value::String(text(s, secrets).into_owned());
    }
    let digest = Sha256::digest(s.as_bytes());
    serde_json::json!({"length": s.chars().count(), "sha256": hex::encode(&digest[..8])})
}

/// A JSON payload with every string redacted: body keys by [`body`], everything else by
/// [`text`]; numbers long enough to be phone numbers are masked too. In place: only the
/// strings that change are replaced, the maps stay as they are.
pub fn json(
    mut value: serde_json::Value,
    keep_bodies: bool,
    secrets: &[&str],
) -> serde_json::Value {
    use serde_json::Value;
    fn walk(v: &mut Value, key: Option<&str>, keep: bool, secrets: &[&str]) {
        match v {
            Value::String(s) if is_body_key(key) => {
                *v = body(s, keep, secrets);
            }
            Value::String(s) => {
                if let Cow::Owned(redacted) = text(s, secrets) {
                    *s = redacted;
                }
            }
            Value::Number(n) => {
                if let Some(masked) = masked_number(&n.to_string()) {
                    *v = Value::String(masked);
                }
            }
            Value::Array(items) => {
                for item in items {
                    walk(item, key, keep, secrets);
                }
            }
            Value::Object(map) => {
                let named = map.get("name").and_then(Value::as_str).map(str::to_owned);
                for (k, item) in map.iter_mut() {
                    walk(item, Some(key_of(k, named.as_deref())), keep, secrets);
                }
            }
            _ => {}
        }
    }
    walk(&mut value, None, keep_bodies, secrets);
    value
}

/// Whether a string under `key` is a free-text body ([`body`]) rather than text ([`text`]).
fn is_body_key(key: Option<&str>) -> bool {
    key.is_some_and(|k| BODY_KEYS.contains(&k))
}

/// A number (as JSON writes it) long enough to be a phone number, masked; `None` keeps it.
fn masked_number(digits: &str) -> Option<String> {
    (digits.len() >= 7).then(|| phone(digits))
}

/// The key a value is redacted under: Wati template parameters are `{name, value}` pairs, and
/// the name (`named`, when the object has a string `name`) says what the value is.
fn key_of<'a>(k: &'a str, named: Option<&'a str>) -> &'a str {
    if k == "value" { named.unwrap_or(k) } else { k }
}

/// [`json`] for a payload as the bytes that were sent, written straight back as JSON text: one
/// pass, no tree built, no map hashed (a provider request's body is redacted for every tool
/// call). `None` when the bytes are not one JSON value. One pass means a `{name, value}`
/// pair names its value only when `name` comes first, as every provider adapter writes it.
pub fn json_text(
    raw: &[u8],
    keep_bodies: bool,
    secrets: &[&str],
) -> Option<Box<serde_json::value::RawValue>> {
    use serde::de::DeserializeSeed;
    let mut out = Vec::with_capacity(raw.len() + 32);
    let mut de = serde_json::Deserializer::from_slice(raw);
    Transcode {
        key: None,
        keep: keep_bodies,
        secrets,
        out: &mut out,
        seen: None,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    serde_json::value::RawValue::from_string(String::from_utf8(out).ok()?).ok()
}

/// One JSON value of [`json_text`], redacted under its key, written to `out`.
struct Transcode<'a> {
    key: Option<&'a str>,
    keep: bool,
    secrets: &'a [&'a str],
    out: &'a mut Vec<u8>,
    /// Where a `name` entry leaves its text, for the `value` beside it.
    seen: Option<&'a mut Option<String>>,
}

impl Transcode<'_> {
    fn string(&mut self, s: &str) {
        if let Some(seen) = self.seen.as_mut() {
            **seen = Some(s.to_owned());
        }
        if is_body_key(self.key) {
            write_json(self.out, &body(s, self.keep, self.secrets));
        } else {
            write_json(self.out, &text(s, self.secrets));
        }
    }

    fn number(&mut self, n: serde_json::Number) {
        let digits = n.to_string();
        match masked_number(&digits) {
            Some(masked) => write_json(self.out, &masked),
            None => self.out.extend_from_slice(digits.as_bytes()),
        }
    }
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing to a Vec cannot fail, and strings and values always serialize.
    let _ = serde_json::to_writer(out, v);
}

/// A map key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Transcode<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Transcode<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.number(v.into());
        Ok(())
    }
    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        self.number(v.into());
        Ok(())
    }
    fn visit_f64<E>(mut self, v: f64) -> Result<(), E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => self.number(n),
            None => self.out.extend_from_slice(b"null"),
        }
        Ok(())
    }
    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        self.string(v);
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let at = self.out.len();
            if !first {
                self.out.push(b',');
            }
            let item = Transcode {
                key: self.key,
                keep: self.keep,
                secrets: self.secrets,
                out: &mut *self.out,
                seen: None,
            };
            if seq.next_element_seed(item)?.is_none() {
                self.out.truncate(at);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push(b'{');
        // A `name` entry's text, for the `value` after it ([`key_of`]).
        let mut named: Option<String> = None;
        let mut first = true;
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            if !first {
                self.out.push(b',');
            }
            first = false;
            write_json(self.out, k.as_ref());
            self.out.push(b':');
            let mut seen = None;
            map.next_value_seed(Transcode {
                key: Some(key_of(&k, named.as_deref())),
                keep: self.keep,
                secrets: self.secrets,
                out: &mut *self.out,
                seen: (k == "name").then_some(&mut seen),
            })?;
            if let Some(name) = seen {
                named = Some(name);
            }
        }
        self.out.push(b'}');
        Ok(())
    }
}

/// Whether a query parameter's name says its value is a credential (`token`, `api_key`,
/// `sig`, `X-Amz-Signature`, ...).
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "token",
        "key",
        "sig",
        "secret",
        "auth",
        "pass",
        "credential",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// A URL with its path and query redacted (a phone number in a Wati path, a message in a
/// query string).
pub fn url(u: &reqwest::Url, keep_bodies: bool, secrets: &[&str]) -> String {
    let mut out = u.clone();
    // Credentials in the URL itself (`https://user:pass@host`): never.
    if !u.username().is_empty() {
        let _ = out.set_username("[redacted]");
    }
    if u.password().is_some() {
        let _ = out.set_password(Some("[redacted]"));
    }
    out.set_path(&text(u.path(), secrets));
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_key(&k) {
                    "[redacted]".to_owned()
                } else if BODY_KEYS.contains(&k.as_ref()) {
                    match body(&v, keep_bodies, secrets) {
                        serde_json::Value::String(s) => s,
                        hashed => format!(
                            "[length={} sha256={}]",
                            hashed["length"],
                            hashed["sha256"].as_str().unwrap_or("")
                        ),
                    }
                } else if v.chars().all(|c| c.is_ascii_digit()) && v.len() >= 7 {
                    phone(&v)
                } else {
                    text(&v, secrets).into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        out.query_pairs_mut().clear().extend_pairs(pairs);
    }
    out.to_string()
}

/// A provider response body: redacted whole (JSON structurally, anything else as text), then
/// cut to [`MAX_BODY`] bytes. Cutting first would break the JSON (so its body fields would
/// escape the hashing) and could split a secret so that its head escapes the scrubbing.
pub fn response_body(raw: &[u8], keep_bodies: bool, secrets: &[&str]) -> serde_json::Value {
    use serde_json::Value;
    let redacted = match serde_json::from_slice::<Value>(raw) {
        Ok(v) => json(v, keep_bodies, secrets),
        Err(_) => Value::String(text(&String::from_utf8_lossy(raw), secrets).into_owned()),
    };
    let encoded = match &redacted {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if encoded.len() <= MAX_BODY {
        return redacted;
    }
    let mut end = MAX_BODY;
    while !encoded.is_char_boundary(end) {
        end -= 1;
    }
    Value::String(format!("{}… [cut at {MAX_BODY} bytes]", &encoded[..end]))
}

/// A realistic value in place of a redacted one, for replaying a call whose real values were
/// never stored (`toolgate replay`): a masked email's hidden part becomes `nnn`
/// (`a***@example.com` gives `annn@example.com`), other masked digits become 5s
/// (`+1********00` gives `+15555555500`), a body kept as length and hash becomes that many `x`.
/// Shapes survive, so type and format checks see what the real value would have shown them.
pub fn stand_in(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(s.replace("***@", "nnn@").replace('*', "5")),
        Value::Object(m)
            if m.len() == 2 && m.contains_key("length") && m.contains_key("sha256") =>
        {
            let n = m["length"].as_u64().unwrap_or(1).clamp(1, 100_000) as usize;
            Value::String("x".repeat(n))
        }
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), stand_in(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(stand_in).collect()),
        other => other.clone(),
    }
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
    fn timestamps_are_not_phone_numbers() {
        let t = "sent at 2026-12-03T14:27:46.123Z";
        assert_eq!(text(t, &[]), t);
        assert_eq!(
            text("2026-12-03T09:00:00+01:00", &[]),
            "2026-12-03T09:00:00+01:00"
        );
        // The same digits anywhere else are still masked.
        assert_eq!(text("call 2026-12-03 please", &[]), "call ******03 please");
        assert_eq!(text("2026-12-03Tx", &[]), "******03Tx");
    }

    #[test]
    fn stand_ins_keep_the_shape_of_what_was_redacted() {
        use serde_json::json;
        let redacted = json!({"to": email("ana@example.com"), "phone": phone("+14155550100"),
                              "text": body("Ships Friday", false, &[]), "n": 3});
        assert_eq!(
            stand_in(&redacted),
            json!({"to": "annn@example.com", "phone": "+15555555500", "text": "xxxxxxxxxxxx", "n": 3})
        );
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
        // Identifiers keep their digits; a number written next to one does not.
        let id = "49a3999c-0ce1-4ea6-ab68-000000000002 and 00000002-0ce1-4ea6-ab68-afcd6dc2e794";
        assert_eq!(text(id, &[]), id);
        assert_eq!(
            text("id 65f1a2b3c4d5e6f708091011", &[]),
            "id 65f1a2b3c4d5e6f708091011"
        );
        assert_eq!(text("msg-1, +14155550100.", &[]), "msg-1, +1********00.");
        // Numbers however they are written, glued to words or not.
        for (written, masked) in [
            ("confirm+14155550100", "confirm+1********00"),
            ("order14155550100", "order*********00"),
            ("4155550100abc", "********00abc"),
            ("+1 (415) 555-0100", "+1********00"),
            ("call 415.555.0100 now", "call ********00 now"),
        ] {
            assert_eq!(text(written, &[]), masked, "{written}");
        }
    }

    #[test]
    fn structured_payloads_are_redacted_by_key() {
        let body_json = serde_json::json!({
            "from": "Acme <support@acme.test>",
            "to": "ana@example.com",
            "subject": "Your order",
            "text": "Call me on +14155550100",
            "parameters": [{"name": "order_id", "value": "A-1042"}, {"name": "note", "value": "secret plan"}],
            "phone": 14155550100u64
        });
        let r = json(body_json.clone(), false, &[]);
        assert_eq!(r["to"], "a***@example.com");
        assert_eq!(r["from"], "Acme <s***@acme.test>");
        assert_eq!(r["text"]["length"], 23);
        assert_eq!(r["subject"]["length"], 10);
        assert_eq!(r["parameters"][0]["value"], "A-1042");
        assert_eq!(
            r["parameters"][1]["value"]["length"], 11,
            "a parameter named like a body"
        );
        assert_eq!(r["phone"], "*********00");
        let kept = json(body_json.clone(), true, &[]);
        assert_eq!(kept["text"], "Call me on +1********00");

        let u = reqwest::Url::parse(
            "http://x/123/api/v1/sendSessionMessage/14155550100?messageText=Hello%20Ana&token=abc12345",
        )
        .unwrap();
        let r = url(&u, false, &["abc12345"]);
        assert!(
            !r.contains("14155550100") && !r.contains("Hello") && !r.contains("abc12345"),
            "{r}"
        );
        assert!(r.contains("sendSessionMessage/*********00"), "{r}");
        assert!(r.contains("messageText=%5Blength%3D9+sha256%3D"), "{r}");
        // Credentials in the URL itself, and in parameters named like credentials.
        let u = reqwest::Url::parse(
            "https://user:hunter2pass@hooks.example.com/p?token=abcd1234&X-Amz-Signature=ffee&page=2",
        )
        .unwrap();
        let r = url(&u, false, &[]);
        assert!(
            !r.contains("hunter2pass") && !r.contains("abcd1234") && !r.contains("ffee"),
            "{r}"
        );
        assert!(r.contains("page=2"), "{r}");

        let long = format!("{{\"info\": \"{}\"}}", "x".repeat(10_000));
        let r = response_body(long.as_bytes(), false, &[]);
        assert!(
            r.as_str().unwrap().len() <= MAX_BODY + 40,
            "cut to 4 KiB, then not JSON any more"
        );
        // Redacted before it is cut: a body field is hashed and a secret at the cut is gone.
        let secret = "re_SECRETKEY_0123456789";
        let padding = "y".repeat(MAX_BODY - 20);
        let long = format!(
            "{{\"info\": \"{padding}\", \"note\": \"key {secret} for ana@example.com\", \"message\": \"private words\"}}"
        );
        let r = response_body(long.as_bytes(), false, &[secret]).to_string();
        assert!(
            !r.contains("re_SECRET") && !r.contains("private words") && !r.contains("ana@"),
            "{r}"
        );
    }

    proptest! {
        #[test]
        fn no_number_address_or_secret_survives_in_json_or_urls(
            cc in "[1-9][0-9]{0,2}",
            national in "[0-9]{7,11}",
            local in "[a-z][a-z0-9._]{1,15}",
            domain in "[a-z]{2,12}\\.(com|org|io)",
            secret in "[A-Za-z0-9_]{12,40}",
            key in "[a-z_]{1,10}",
            keep in any::<bool>(),
        ) {
            let number = format!("+{cc}{national}");
            let address = format!("{local}@{domain}");
            let payload = serde_json::json!({
                key.clone(): format!("{number} {address} {secret}"),
                "nested": [{"name": key.clone(), "value": format!("{address}/{number}")}],
                "raw": format!("{cc}{national}").parse::<u64>().unwrap_or(0),
            });
            let out = json(payload.clone(), keep, &[&secret]).to_string();
            prop_assert!(!out.contains(&number), "{}", out);
            prop_assert!(!out.contains(&national), "{}", out);
            prop_assert!(!out.contains(&address), "{}", out);
            prop_assert!(!out.contains(&secret), "{}", out);
            let u = reqwest::Url::parse(&format!("http://h/p/{cc}{national}?{key}={address}&k={secret}")).unwrap();
            let out = url(&u, keep, &[&secret]);
            prop_assert!(!out.contains(&national), "{}", out);
            prop_assert!(!out.contains(&address.replace('@', "%40")) && !out.contains(&address), "{}", out);
            prop_assert!(!out.contains(&secret), "{}", out);
        }
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

    /// [`json_text`] writes what [`json`] builds, for every payload whose `{name, value}`
    /// pairs put `name` first.
    fn same_as_the_tree(v: &serde_json::Value, keep: bool, secrets: &[&str]) {
        let bytes = serde_json::to_vec(v).unwrap();
        // The tree as the sidecar built it: from the bytes (floats parse back as serde_json
        // reads them).
        let parsed = serde_json::from_slice(&bytes).unwrap();
        let tree = serde_json::to_string(&json(parsed, keep, secrets)).unwrap();
        let text = json_text(&bytes, keep, secrets).expect("JSON in, JSON out");
        assert_eq!(text.get(), tree);
    }

    #[test]
    fn payloads_redacted_as_text_read_as_the_tree_does() {
        let v = serde_json::json!({
            "from": "Acme <support@acme.test>",
            "to": ["ana@example.com", "bo@example.com"],
            "subject": "Your order",
            "text": "Call me on +14155550100 with key sk_live_abcdef",
            "parameters": [{"name": "order_id", "value": "A-1042"}, {"name": "note", "value": "secret plan"}],
            "phone": 14155550100u64, "short": 42, "neg": -9_876_543, "ratio": 0.5, "big": 12345.678,
            "flags": [true, false, null], "empty": {}, "none": [],
            "esc": "tab\t quote\" slash\\ \u{e9} \u{2028}",
            "nested": {"data": {"message": "hi", "inputs": {"name": "message_text", "value": "call 4155550100"}}}
        });
        for keep in [false, true] {
            same_as_the_tree(&v, keep, &["sk_live_abcdef"]);
        }
        assert!(json_text(b"{\"a\": 1", false, &[]).is_none(), "cut short");
        assert!(json_text(b"{} {}", false, &[]).is_none(), "two values");
        assert!(json_text(b"not json", false, &[]).is_none());
        assert_eq!(json_text(b" [1, 2] ", false, &[]).unwrap().get(), "[1,2]");
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1.0e12f64..1.0e12).prop_map(Value::from),
            "[a-z0-9 @.+_\"\\\n\u{e9}-]{0,24}".prop_map(Value::String),
            Just(Value::String(
                "reach ana@example.com or +14155550100".into()
            )),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop_oneof![
                Just("name".to_owned()),
                Just("value".to_owned()),
                Just("text".to_owned()),
                Just("message".to_owned()),
                "[a-z_]{1,8}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                prop::collection::vec((key, inner), 0..6).prop_map(|entries| {
                    let mut m = serde_json::Map::new();
                    for (k, v) in entries {
                        m.insert(k, v);
                    }
                    // One pass names a value by a `name` written before it.
                    if let Some(name) = m.shift_remove("name") {
                        let mut first = serde_json::Map::new();
                        first.insert("name".into(), name);
                        first.extend(m);
                        m = first;
                    }
                    serde_json::Value::Object(m)
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn redacting_as_text_matches_the_tree(v in any_json(), keep in any::<bool>()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            let parsed = serde_json::from_slice(&bytes).unwrap();
            let tree = serde_json::to_string(&json(parsed, keep, &["hunter2pass"])).unwrap();
            let text = json_text(&bytes, keep, &["hunter2pass"]).unwrap();
            prop_assert_eq!(text.get(), tree);
        }
    }
}
