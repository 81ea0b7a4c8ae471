//! Reading a platform's payload as typed fields, borrowed from the body where possible, without
//! building a tree of the whole body first (a Vapi request carries the call, the assistant and
//! the conversation so far: most of it is skipped, not parsed into maps).
//!
//! A field of the wrong kind reads as absent, as it did when the body was a
//! `serde_json::Value` looked into with `v["a"]["b"].as_str()`: the check that needs it then
//! says what is missing. Only a body that is not JSON, or that repeats a field, is refused as
//! such.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A string field; anything else reads as absent.
#[derive(Debug, Default)]
pub(super) struct Text<'a>(pub Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    /// The string, when the field was one.
    pub fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// An object field read as `T`; anything else reads as absent.
#[derive(Debug)]
pub(super) struct Obj<T>(pub Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

/// An array field read as a list of `T`; anything else reads as absent.
#[derive(Debug)]
pub(super) struct List<T>(pub Option<Vec<T>>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(None)
    }
}

/// Skip the rest of a map.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Skip the rest of a sequence.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// What every loose visitor does with the kinds of value it does not want: nothing, absent.
macro_rules! absent_for_scalars {
    () => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Owned(s.to_owned()))))
            }
            fn visit_string<E>(self, s: String) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Owned(s))))
            }
            absent_for_scalars!();
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text<'a>, A::Error> {
                drain_map(map).map(|()| Text(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text<'a>, A::Error> {
                drain_seq(seq).map(|()| Text(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, _: &str) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            absent_for_scalars!();
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|t| Obj(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Obj<T>, A::Error> {
                drain_seq(seq).map(|()| Obj(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, _: &str) -> Result<List<T>, E> {
                Ok(List(None))
            }
            absent_for_scalars!();
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<List<T>, A::Error> {
                drain_map(map).map(|()| List(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element()? {
                    out.push(item);
                }
                Ok(List(Some(out)))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An element of a list whose elements are objects; any other element reads as absent (and is
/// skipped by whoever walks the list), as `v[i]["field"]` read nothing from it before.
pub(super) type Item<T> = Obj<T>;

/// A body read as `T`: a body that is not JSON gets "not JSON", one that is JSON but repeats a
/// field gets `shape` and serde's account of where.
pub(super) fn read<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    shape: &str,
) -> Result<T, crate::net::HttpResponse> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => super::bad(format!("{shape}: {e}")),
        _ => super::bad(format!("not JSON: {e}")),
    })
}

/// A refusal's status and message (for tests).
#[cfg(test)]
pub(super) async fn refusal(r: Result<super::Parsed, crate::net::HttpResponse>) -> (u16, String) {
    let r = r.expect_err("a refusal");
    let status = r.status().as_u16();
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
    let text = v["message"]
        .as_str()
        .or(v["ignored"].as_str())
        .unwrap_or_default();
    (status, text.to_owned())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize, Debug)]
    struct Inner<'a> {
        #[serde(borrow, default)]
        name: Text<'a>,
    }

    #[derive(Deserialize, Debug)]
    struct Outer<'a> {
        #[serde(borrow, default)]
        inner: Obj<Inner<'a>>,
        #[serde(borrow, default)]
        items: List<Item<Inner<'a>>>,
        #[serde(borrow, default)]
        text: Text<'a>,
    }

    fn outer(json: &str) -> Outer<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn fields_of_the_wrong_kind_read_as_absent_and_the_rest_is_read() {
        for wrong in [
            "1",
            "-1",
            "1.5",
            "true",
            "null",
            r#""s""#,
            "[1, [2], {}]",
            r#"{"a": {"b": [1]}}"#,
        ] {
            let json =
                format!(r#"{{"inner": {wrong}, "items": {wrong}, "text": {wrong}, "after": 1}}"#);
            let o = outer(&json);
            let is_object = wrong.starts_with('{');
            let is_array = wrong.starts_with('[');
            let is_string = wrong.starts_with('"');
            assert_eq!(o.inner.0.is_some(), is_object, "{json}");
            assert_eq!(o.items.0.is_some(), is_array, "{json}");
            assert_eq!(o.text.get(), is_string.then_some("s"), "{json}");
        }
        let o = outer(r#"{"items": [{"name": "a"}, 7, "x", {"name": 3}, {"name": "b"}]}"#);
        let items = o.items.0.unwrap();
        let names: Vec<Option<&str>> = items
            .iter()
            .map(|i| i.0.as_ref().and_then(|i| i.name.get()))
            .collect();
        assert_eq!(names, [Some("a"), None, None, None, Some("b")]);
    }

    #[test]
    fn strings_are_borrowed_unless_they_hold_escapes() {
        let o = outer(r#"{"text": "plain", "inner": {"name": "say \"hi\"\n"}}"#);
        assert!(matches!(o.text.0, Some(Cow::Borrowed("plain"))));
        let inner = o.inner.0.unwrap();
        assert!(matches!(inner.name.0, Some(Cow::Owned(_))));
        assert_eq!(inner.name.get(), Some("say \"hi\"\n"));
    }

    #[tokio::test]
    async fn bodies_that_are_not_json_or_repeat_a_field_are_refused_with_what_is_wrong() {
        for (body, says) in [
            (&b"{\"inner\": "[..], "not JSON"),
            (b"[1,", "not JSON"),
            (
                b"{\"text\": \"a\", \"text\": \"b\"}",
                "a test body: duplicate field `text`",
            ),
        ] {
            let r = read::<Outer>(body, "a test body").map(|_| super::super::Parsed::default());
            let (status, text) = refusal(r).await;
            assert_eq!(status, 400);
            assert!(text.starts_with(says), "{text}");
        }
    }
}
