//! JSON text into a `serde_json::Value`, refusing an object that gives a key twice. serde_json
//! keeps the last of duplicate keys, so `{"amount": 100, "amount": 20000}` would be read as
//! 20000 here while a proxy or log in front of Settle may have read 100.

use std::{cell::RefCell, fmt};

use serde::de::{
    self,
    value::{MapAccessDeserializer, MapDeserializer, SeqDeserializer},
    DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Unexpected, Visitor,
};
use serde_json::{Map, Value};

/// Why [`parse`] refused the text.
pub enum Refusal {
    /// The text is not JSON (serde_json's message).
    Invalid(String),
    /// The object at this path (`transfers[1].metadata`, `body` at the top) gives `key` twice;
    /// named as `path.key`.
    Duplicate(String),
}

pub fn parse(bytes: &[u8]) -> Result<Value, Refusal> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Seed {
        at: At::Root,
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match (parsed, duplicate.into_inner()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(path)) => Err(Refusal::Duplicate(path)),
        (Err(e), None) => Err(Refusal::Invalid(e.to_string())),
    }
}

/// Where a value sits in a JSON document, as a chain of borrowed steps: written out as a path
/// (`transfers[1].metadata.k`; `body` for the top) only when an error names it, so that
/// walking a large document costs no copying per element.
#[derive(Clone, Copy)]
pub enum At<'a> {
    Root,
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl At<'_> {
    pub fn path(&self) -> String {
        match self {
            At::Root => "body".to_owned(),
            At::Key(At::Root, key) => (*key).to_owned(),
            At::Key(parent, key) => format!("{}.{key}", parent.path()),
            At::Index(parent, i) => format!("{}[{i}]", parent.path()),
        }
    }
}

struct Seed<'a> {
    at: At<'a>,
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let at = At::Index(&self.at, items.len());
            match seq.next_element_seed(Seed {
                at,
                duplicate: self.duplicate,
            })? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let at = At::Key(&self.at, &key);
            if object.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(at.path());
                return Err(de::Error::custom("a key is given twice"));
            }
            let value = map.next_value_seed(Seed {
                at,
                duplicate: self.duplicate,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A parsed `Value` read by serde as serde_json reads one, except that a struct is read from an
/// object only: serde's derived structs also take an array of their fields in order, so
/// `"card": ["4242…", 12, 2030]` would be read as a card.
#[derive(Clone, Copy)]
pub struct Strict<'a>(pub &'a Value);

impl<'de> IntoDeserializer<'de, serde_json::Error> for Strict<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Strict<'de> {
    fn unexpected(self) -> Unexpected<'de> {
        match self.0 {
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Number(_) => Unexpected::Other("number"),
            Value::String(s) => Unexpected::Str(s),
            Value::Array(_) => Unexpected::Seq,
            Value::Object(_) => Unexpected::Map,
        }
    }

    fn entries(
        map: &'de Map<String, Value>,
    ) -> MapDeserializer<'de, impl Iterator<Item = (&'de str, Strict<'de>)>, serde_json::Error> {
        MapDeserializer::new(map.iter().map(|(k, v)| (k.as_str(), Strict(v))))
    }
}

/// What an enum expects, worded as serde words an unknown variant's error.
struct OneOf(&'static [&'static str]);

impl de::Expected for OneOf {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            [] => f.write_str("nothing"),
            [one] => write!(f, "`{one}`"),
            [a, b] => write!(f, "`{a}` or `{b}`"),
            all => write!(f, "one of `{}`", all.join("`, `")),
        }
    }
}

impl<'de> Deserializer<'de> for Strict<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => n.deserialize_any(visitor),
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(Strict));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Value::Object(map) => {
                let mut entries = Self::entries(map);
                let value = visitor.visit_map(&mut entries)?;
                entries.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            _ => Err(de::Error::invalid_type(self.unexpected(), &"an object")),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Object(map) if map.len() == 1 => visitor.visit_enum(MapAccessDeserializer::new(Self::entries(map))),
            _ => Err(de::Error::invalid_type(self.unexpected(), &OneOf(variants))),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn duplicate(text: &str) -> Option<String> {
        match parse(text.as_bytes()) {
            Err(Refusal::Duplicate(path)) => Some(path),
            _ => None,
        }
    }

    #[test]
    fn reads_what_serde_json_reads() {
        let text = r#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": "\u00e9\u0000"}"#;
        assert_eq!(
            parse(text.as_bytes()).ok(),
            Some(serde_json::from_str::<Value>(text).expect("json"))
        );
        assert_eq!(parse(b"[]").ok(), Some(json!([])));
    }

    #[test]
    fn a_key_given_twice_is_named_by_its_path() {
        assert_eq!(duplicate(r#"{"amount": 1, "amount": 2}"#).as_deref(), Some("amount"));
        assert_eq!(
            duplicate(r#"{"transfers": [{"id": "a"}, {"id": "b", "metadata": {"k": 1, "k": 2}}]}"#).as_deref(),
            Some("transfers[1].metadata.k")
        );
        assert_eq!(duplicate(r#"{"a": 1, "b": {"a": 2}}"#), None, "one key per object");
    }

    #[test]
    fn a_long_path_is_not_copied_per_element() {
        // A 500 KB key over 100,000 elements: linear, not 50 GB of copying.
        let text = format!(r#"{{"{}": [{}0]}}"#, "k".repeat(500_000), "0,".repeat(100_000));
        let started = std::time::Instant::now();
        assert!(parse(text.as_bytes()).is_ok());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn invalid_text_is_told_apart() {
        let deep = "[".repeat(100_000);
        for text in ["{", "[1,]", r#"{"a": 1} x"#, "", &deep] {
            assert!(
                matches!(parse(text.as_bytes()), Err(Refusal::Invalid(_))),
                "{}",
                &text[..text.len().min(20)]
            );
        }
    }
}
