//! Frame patterns: JSON with variables.
//!
//! In a pattern, a string starting with `$` is special: `"$_"` matches any value; `"$name"` binds
//! `name` on first use and must equal it afterwards; `"$name+N"` (or `-N`) must equal the bound number
//! plus N; `"$>name"` must be a number greater than the bound one; `"$absent"` as an object member
//! means the key must not be there. Objects match when every key of the pattern matches (other keys
//! are allowed); arrays match element by element with equal lengths. Numbers compare by value.
//! In frames to send, `"$name"` and `"$name+N"` are replaced by values, and `"$fill:name"` (or
//! `"$fill:name+N"`) by a string of that many `x`, to reach size limits; `"$fill64:name"` by base64
//! that decodes to at least that many bytes; `"$text:name"` (or `"$text:name+N"`) by the number as a
//! string (item ids in repeated frames).

use serde_json::Value;
use std::collections::BTreeMap;

/// The longest string `"$fill:..."` makes.
pub const FILL_BYTES_MAX: usize = 16 << 20;

/// Variables bound while a case runs.
#[derive(Debug, Default, Clone)]
pub struct Bindings {
    values: BTreeMap<String, Value>,
}

enum Special<'a> {
    Any,
    Absent,
    Var(&'a str, i64),
    Greater(&'a str),
    Fill(&'a str, i64),
    Fill64(&'a str, i64),
    Text(&'a str, i64),
}

fn special(text: &str) -> Option<Special<'_>> {
    let body = text.strip_prefix('$')?;
    if body.starts_with('$') {
        return None;
    }
    Some(match body {
        "_" => Special::Any,
        "absent" => Special::Absent,
        _ if body.starts_with('>') => Special::Greater(&body[1..]),
        _ if body.starts_with("fill64:") => {
            let (name, delta) = variable(&body["fill64:".len()..]);
            Special::Fill64(name, delta)
        }
        _ if body.starts_with("text:") => {
            let (name, delta) = variable(&body["text:".len()..]);
            Special::Text(name, delta)
        }
        _ if body.starts_with("fill:") => {
            let (name, delta) = variable(&body["fill:".len()..]);
            Special::Fill(name, delta)
        }
        _ => {
            let (name, delta) = variable(body);
            Special::Var(name, delta)
        }
    })
}

/// `name`, `name+N` or `name-N`.
fn variable(text: &str) -> (&str, i64) {
    match text.find(['+', '-']) {
        Some(at) => match text[at..].trim_start_matches('+').parse::<i64>() {
            Ok(offset) => (&text[..at], offset),
            Err(_) => (text, 0),
        },
        None => (text, 0),
    }
}

fn offset(value: &Value, offset: i64) -> Option<Value> {
    if offset == 0 {
        return Some(value.clone());
    }
    value.as_i64().map(|n| Value::from(n + offset))
}

fn numbers_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

impl Bindings {
    /// The value bound to `name`.
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// Binds `name` (the harness pre-binds values such as announced limits).
    pub fn bind(&mut self, name: &str, value: Value) {
        self.values.insert(name.to_string(), value);
    }

    /// Whether `actual` matches `pattern`; on a match the pattern's new variables are bound, on a
    /// mismatch nothing is bound.
    pub fn matches(&mut self, pattern: &Value, actual: &Value) -> bool {
        let mut trial = self.clone();
        if trial.matches_in(pattern, Some(actual)) {
            *self = trial;
            return true;
        }
        false
    }

    fn matches_in(&mut self, pattern: &Value, actual: Option<&Value>) -> bool {
        if let Value::String(text) = pattern {
            if let Some(special) = special(text) {
                return self.matches_special(special, actual);
            }
        }
        let Some(actual) = actual else { return false };
        match (pattern, actual) {
            (Value::Object(expected), Value::Object(got)) => {
                expected.iter().all(|(key, value)| self.matches_in(value, got.get(key)))
            }
            (Value::Array(expected), Value::Array(got)) => {
                expected.len() == got.len()
                    && expected.iter().zip(got).all(|(e, g)| self.matches_in(e, Some(g)))
            }
            (Value::String(expected), Value::String(got)) => {
                expected.strip_prefix('$').filter(|rest| rest.starts_with('$')).unwrap_or(expected) == got
            }
            _ => numbers_equal(pattern, actual),
        }
    }

    fn matches_special(&mut self, special: Special<'_>, actual: Option<&Value>) -> bool {
        match (special, actual) {
            (Special::Absent, actual) => actual.is_none(),
            (_, None) | (Special::Fill(..) | Special::Fill64(..), _) => false,
            (Special::Any, Some(_)) => true,
            (Special::Text(name, delta), Some(actual)) => {
                let want = self.values.get(name).and_then(|bound| offset(bound, delta));
                want.is_some_and(|want| Value::String(want.to_string()) == *actual)
            }
            (Special::Greater(name), Some(actual)) => {
                match (self.values.get(name).and_then(Value::as_f64), actual.as_f64()) {
                    (Some(bound), Some(got)) => got > bound,
                    _ => false,
                }
            }
            (Special::Var(name, delta), Some(actual)) => match self.values.get(name) {
                Some(bound) => offset(bound, delta).is_some_and(|want| numbers_equal(&want, actual)),
                None if delta == 0 => {
                    self.values.insert(name.to_string(), actual.clone());
                    true
                }
                None => actual.as_i64().is_some_and(|n| {
                    self.values.insert(name.to_string(), Value::from(n - delta));
                    true
                }),
            },
        }
    }

    fn length(&self, name: &str, delta: i64) -> Result<usize, String> {
        let bound = self.values.get(name).and_then(Value::as_i64);
        let length = bound.ok_or_else(|| format!("${name} is not a bound number"))? + delta;
        Ok(usize::try_from(length).unwrap_or(0).min(FILL_BYTES_MAX))
    }

    /// `frame` with every variable replaced by its value; an unbound variable is an error.
    pub fn substitute(&self, frame: &Value) -> Result<Value, String> {
        Ok(match frame {
            Value::String(text) => match special(text) {
                Some(Special::Var(name, delta)) => {
                    let bound = self.values.get(name).ok_or_else(|| format!("${name} is not bound"))?;
                    offset(bound, delta).ok_or_else(|| format!("${name} is not a number"))?
                }
                Some(Special::Text(name, delta)) => {
                    let bound = self.values.get(name).ok_or_else(|| format!("${name} is not bound"))?;
                    let number = offset(bound, delta).ok_or_else(|| format!("${name} is not a number"))?;
                    Value::String(number.to_string())
                }
                Some(Special::Fill(name, delta)) => Value::String("x".repeat(self.length(name, delta)?)),
                Some(Special::Fill64(name, delta)) => {
                    // Every four `x` decode to three bytes: at least `length` bytes in all.
                    Value::String("xxxx".repeat(self.length(name, delta)?.div_ceil(3)))
                }
                Some(_) => return Err(format!("{text} cannot be sent")),
                None => match text.strip_prefix("$$") {
                    Some(rest) => Value::String(format!("${rest}")),
                    None => frame.clone(),
                },
            },
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.substitute(v)).collect::<Result<_, _>>()?)
            }
            Value::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.substitute(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(pattern: Value, actual: Value, expected: bool, bound: &[(&str, Value)]) {
        let mut bindings = Bindings::default();
        bindings.bind("n", json!(5));
        assert_eq!(bindings.matches(&pattern, &actual), expected, "{pattern} ~ {actual}");
        for (name, value) in bound {
            assert_eq!(bindings.value(name), Some(value), "{name}");
        }
    }

    #[test]
    fn patterns() {
        check(
            json!({"type": "ack", "seq": "$s"}),
            json!({"type": "ack", "seq": 3, "mid": 1}),
            true,
            &[("s", json!(3))],
        );
        check(json!({"seq": "$n+1"}), json!({"seq": 6}), true, &[]);
        check(json!({"seq": "$n+1"}), json!({"seq": 7}), false, &[]);
        check(json!({"seq": "$>n"}), json!({"seq": 5}), false, &[]);
        check(json!({"seq": "$>n"}), json!({"seq": 5.5}), true, &[]);
        check(json!({"removed": "$absent"}), json!({"added": []}), true, &[]);
        check(json!({"removed": "$absent"}), json!({"removed": []}), false, &[]);
        check(json!({"x": "$_"}), json!({}), false, &[]);
        check(json!([1, 2]), json!([1, 2, 3]), false, &[]);
        check(json!({"a": 1}), json!({"a": 1.0}), true, &[]);
        check(json!({"a": "$$x"}), json!({"a": "$x"}), true, &[]);
        // A failed match binds nothing.
        check(json!({"a": "$a", "b": 2}), json!({"a": 1, "b": 3}), false, &[]);
        check(json!({"a": "$m-1"}), json!({"a": 4}), true, &[("m", json!(5))]);
    }

    #[test]
    fn substitutes() {
        let mut bindings = Bindings::default();
        bindings.bind("s", json!(7));
        assert_eq!(
            bindings.substitute(&json!({"if_seq": "$s", "x": ["$s+1"]})).unwrap(),
            json!({"if_seq": 7, "x": [8]})
        );
        assert_eq!(bindings.substitute(&json!({"a": "$t"})).unwrap_err(), "$t is not bound");
        assert_eq!(bindings.substitute(&json!(["$fill:s-2"])).unwrap(), json!(["xxxxx"]));
        assert_eq!(bindings.substitute(&json!("$fill64:s")).unwrap(), json!("xxxxxxxxxxxx"));
        assert_eq!(bindings.substitute(&json!("$$id")).unwrap(), json!("$id"));
        assert_eq!(bindings.substitute(&json!({"item": "$text:s+1"})).unwrap(), json!({"item": "8"}));
    }
}
