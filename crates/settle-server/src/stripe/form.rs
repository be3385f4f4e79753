//! Stripe's form encoding: `application/x-www-form-urlencoded` pairs whose keys nest with
//! brackets (`metadata[order]=42`, `expand[]=latest_charge`, `expand[0]=customer`,
//! `card[exp_month]=12`), read into a JSON tree of strings. Lists come as `key[]` (appended in
//! order) or `key[<index>]` (ordered by index). Values stay strings: each handler reads the
//! type it expects.

use serde_json::{Map, Value};

use crate::{
    error::ApiError,
    extract::{query_pairs, unstorable_pair},
};

/// Most pairs in one request.
pub const PAIRS_MAX: usize = 1_000;
/// Deepest nesting (`a[b][c][d][e]`).
pub const DEPTH_MAX: usize = 5;

/// Parses a form body or query string.
pub fn parse(text: &str) -> Result<Map<String, Value>, ApiError> {
    if let Some(key) = unstorable_pair(text) {
        return Err(ApiError::invalid(
            &key,
            format!("`{key}` must be UTF-8 text without NUL characters"),
        ));
    }
    let pairs = query_pairs(text);
    if pairs.len() > PAIRS_MAX {
        return Err(ApiError::invalid("body", format!("at most {PAIRS_MAX} parameters")));
    }
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        let path = split_key(&key)?;
        // `metadata[]=x` would become a key `0`: metadata takes named keys only.
        if path.windows(2).any(|w| w[0] == METADATA && w[1].is_empty()) {
            return Err(ApiError::invalid(
                &key,
                format!("`{key}`: metadata takes named keys (`metadata[key]=value`), not a list"),
            ));
        }
        insert(&mut root, &path, value, &key)?;
    }
    let Value::Object(map) = root else {
        return Err(ApiError::Internal("form root is not an object".into()));
    };
    // The top level is parameters by name, never a list (`0=a` is a parameter named `0`).
    Ok(map.into_iter().map(|(k, v)| (k.clone(), child(&k, v))).collect())
}

/// `a[b][]` → `["a", "b", ""]`.
fn split_key(key: &str) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::invalid(key, format!("`{key}` is not a valid parameter name"));
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if head.is_empty() {
        return Err(bad());
    }
    let mut path = vec![head.to_owned()];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(bad)?;
        let end = inner.find(']').ok_or_else(bad)?;
        path.push(inner[..end].to_owned());
        rest = &inner[end + 1..];
    }
    if path.len() > DEPTH_MAX {
        return Err(bad());
    }
    Ok(path)
}

fn insert(node: &mut Value, path: &[String], value: String, key: &str) -> Result<(), ApiError> {
    let conflict = || ApiError::invalid(key, format!("`{key}` is given twice or in conflicting shapes"));
    let Value::Object(map) = node else {
        return Err(conflict());
    };
    let (first, rest) = path.split_first().ok_or_else(conflict)?;
    // `[]` appends: the next index of this list.
    let name = if first.is_empty() {
        map.len().to_string()
    } else {
        first.clone()
    };
    if rest.is_empty() {
        if map.contains_key(&name) {
            return Err(conflict());
        }
        map.insert(name, Value::String(value));
        return Ok(());
    }
    let child = map.entry(name).or_insert_with(|| Value::Object(Map::new()));
    insert(child, rest, value, key)
}

/// Objects whose keys are all indexes become arrays, ordered by index; a `metadata` object (at
/// any depth) never does: its keys are the merchant's own, and `metadata[0]=a` or
/// `metadata[2024]=x` are keys like any other.
fn lists(node: Value) -> Value {
    match node {
        Value::Object(map) => {
            let indexed = !map.is_empty()
                && map
                    .keys()
                    .all(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
            if indexed {
                let mut items: Vec<(u64, Value)> = map
                    .into_iter()
                    .map(|(k, v)| (k.parse().unwrap_or(u64::MAX), lists(v)))
                    .collect();
                items.sort_by_key(|(i, _)| *i);
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(map.into_iter().map(|(k, v)| (k.clone(), child(&k, v))).collect())
            }
        }
        other => other,
    }
}

/// An object's member `key`: metadata is kept as given (checked by the handler), the rest is
/// read for lists.
fn child(key: &str, value: Value) -> Value {
    if key == METADATA {
        value
    } else {
        lists(value)
    }
}

/// The parameter whose object is never a list.
const METADATA: &str = "metadata";

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn brackets_nest_and_lists_keep_their_order() {
        let form = parse(
            "amount=2000&metadata[order]=42&metadata[note]=a+b&expand[]=latest_charge&expand[]=customer\
             &card[exp_month]=12&items[1][x]=b&items[0][x]=a",
        )
        .expect("parse");
        assert_eq!(
            Value::Object(form),
            json!({
                "amount": "2000",
                "metadata": { "order": "42", "note": "a b" },
                "expand": ["latest_charge", "customer"],
                "card": { "exp_month": "12" },
                "items": [{ "x": "a" }, { "x": "b" }],
            })
        );
    }

    #[test]
    fn metadata_with_numeric_keys_stays_an_object() {
        let form = parse("metadata[0]=a&metadata[1]=b&items[0][metadata][2024]=x&items[1][x]=y&expand[0]=customer")
            .expect("parse");
        assert_eq!(
            Value::Object(form),
            json!({
                "metadata": { "0": "a", "1": "b" },
                "items": [{ "metadata": { "2024": "x" } }, { "x": "y" }],
                "expand": ["customer"],
            })
        );
        assert_eq!(
            Value::Object(parse("metadata[2024]=x").expect("parse")),
            json!({ "metadata": { "2024": "x" } })
        );
        // Top-level names are parameters, never a list.
        assert_eq!(
            Value::Object(parse("0=a&1=b").expect("parse")),
            json!({ "0": "a", "1": "b" })
        );
        assert!(parse("metadata[]=x").is_err());
    }

    #[test]
    fn malformed_or_conflicting_keys_are_refused() {
        for bad in [
            "a[b=1",
            "[x]=1",
            "a=1&a=2",
            "a=1&a[b]=2",
            "a[b][c][d][e][f]=1",
            "a]b[=1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("").expect("empty").is_empty());
    }
}
