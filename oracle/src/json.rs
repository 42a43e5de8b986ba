//! The JSON the spec defines: canonical size (quota.what-counts), RFC 7386 merge patches
//! (docs.patch), the order of values (§8), and base64 (assets.upload).

use serde_json::{Map, Value};
use std::cmp::Ordering;

/// The length in bytes of `value` as canonical JSON: compact, object keys sorted
/// (quota.what-counts).
pub(crate) fn canonical_size(value: &Value) -> u64 {
    let mut text = String::new();
    write_canonical(value, &mut text);
    text.len() as u64
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            // Sorted here rather than trusting the map's iteration order, which a serde_json
            // feature elsewhere in the build could change.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (position, key) in keys.into_iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                out.push_str(&scalar_text(&Value::String(key.clone())));
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (position, item) in items.iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar_text(scalar)),
    }
}

/// A scalar in compact JSON (serde_json's escaping and number formatting).
fn scalar_text(value: &Value) -> String {
    serde_json::to_string(value).expect("a JSON scalar always serializes")
}

/// `target` with the RFC 7386 merge patch `patch` applied: objects merge, `null` removes a key,
/// anything else replaces (docs.patch).
pub(crate) fn json_merged(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch_members) = patch else {
        return patch.clone();
    };
    let mut result = match target {
        Value::Object(members) => members.clone(),
        _ => Map::new(),
    };
    for (key, patch_value) in patch_members {
        if patch_value.is_null() {
            result.remove(key);
        } else {
            let merged = json_merged(result.get(key).unwrap_or(&Value::Null), patch_value);
            result.insert(key.clone(), merged);
        }
    }
    Value::Object(result)
}

/// The rank of a value's JSON type in the order null < booleans < numbers < strings < arrays <
/// objects (§8).
pub(crate) fn type_rank(value: &Value) -> u8 {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

/// The name of a value's JSON type, for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The order of two JSON values (§8): by type rank, then numbers by value, strings by bytes,
/// arrays element by element then by length, objects by their sorted (key, value) pairs then by
/// size.
pub(crate) fn order_values(left: &Value, right: &Value) -> Ordering {
    match (left, right) {
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Number(a), Value::Number(b)) => order_numbers(a, b),
        (Value::String(a), Value::String(b)) => a.as_bytes().cmp(b.as_bytes()),
        (Value::Array(a), Value::Array(b)) => order_sequences(a.iter(), b.iter(), a.len(), b.len()),
        (Value::Object(a), Value::Object(b)) => {
            let mut a_keys: Vec<&String> = a.keys().collect();
            let mut b_keys: Vec<&String> = b.keys().collect();
            a_keys.sort();
            b_keys.sort();
            for (a_key, b_key) in a_keys.iter().zip(&b_keys) {
                let ordering = a_key
                    .as_bytes()
                    .cmp(b_key.as_bytes())
                    .then_with(|| order_values(&a[a_key.as_str()], &b[b_key.as_str()]));
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            a.len().cmp(&b.len())
        }
        _ => type_rank(left).cmp(&type_rank(right)),
    }
}

fn order_sequences<'v>(
    left: impl Iterator<Item = &'v Value>,
    right: impl Iterator<Item = &'v Value>,
    left_len: usize,
    right_len: usize,
) -> Ordering {
    for (a, b) in left.zip(right) {
        let ordering = order_values(a, b);
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    left_len.cmp(&right_len)
}

/// Numbers compare by value: `1` equals `1.0` (§8).
fn order_numbers(a: &serde_json::Number, b: &serde_json::Number) -> Ordering {
    let as_integer = |n: &serde_json::Number| n.as_i64().map(i128::from).or(n.as_u64().map(i128::from));
    if let (Some(x), Some(y)) = (as_integer(a), as_integer(b)) {
        return x.cmp(&y);
    }
    let x = a.as_f64().unwrap_or(0.0);
    let y = b.as_f64().unwrap_or(0.0);
    x.partial_cmp(&y).unwrap_or(Ordering::Equal)
}

/// JSON equality with numbers compared by value (§8: `eq`, `ne`, `in`).
pub(crate) fn same_value(left: &Value, right: &Value) -> bool {
    order_values(left, right) == Ordering::Equal
}

/// Decodes standard base64 (RFC 4648 alphabet, `=` padding required, zero trailing bits); `None`
/// when the text is not that.
pub(crate) fn base64_decoded(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, quad) in bytes.chunks(4).enumerate() {
        let last = index + 1 == bytes.len() / 4;
        let padding = quad.iter().rev().take_while(|&&byte| byte == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut bits: u32 = 0;
        for &byte in &quad[..4 - padding] {
            bits = (bits << 6) | u32::from(sextet(byte)?);
        }
        bits <<= 6 * padding as u32;
        let decoded = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
        // Padding must hide only zero bits, as a canonical encoder writes them.
        if decoded[3 - padding..].iter().any(|&byte| byte != 0) {
            return None;
        }
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

fn sextet(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_and_is_compact() {
        assert_eq!(
            canonical_size(&json!({"b": 1, "a": [true, null]})),
            r#"{"a":[true,null],"b":1}"#.len() as u64
        );
        assert_eq!(canonical_size(&json!("é")), 4);
    }

    #[test]
    fn json_merge_follows_rfc_7386() {
        let merged = json_merged(
            &json!({"a": 1, "b": {"c": 2, "d": 3}}),
            &json!({"a": null, "b": {"c": null, "e": 4}}),
        );
        assert_eq!(merged, json!({"b": {"d": 3, "e": 4}}));
        assert_eq!(json_merged(&json!([1]), &json!({"x": 1})), json!({"x": 1}));
    }

    #[test]
    fn values_order_by_type_then_value() {
        let ordered = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1),
            json!(1.5),
            json!(2),
            json!("a"),
            json!([1]),
            json!({}),
        ];
        for pair in ordered.windows(2) {
            assert_eq!(order_values(&pair[0], &pair[1]), Ordering::Less, "{pair:?}");
        }
        assert!(same_value(&json!(1), &json!(1.0)));
    }

    #[test]
    fn base64_is_standard_and_padded() {
        assert_eq!(base64_decoded("iVBORw0KGgo=").map(|bytes| bytes.len()), Some(8));
        assert_eq!(base64_decoded(""), Some(vec![]));
        assert_eq!(base64_decoded("aGk="), Some(b"hi".to_vec()));
        assert_eq!(base64_decoded("aGk"), None);
        assert_eq!(base64_decoded("aGl="), None);
        assert_eq!(base64_decoded("a=Gk"), None);
    }
}
