//! The fractional-key vectors of the public `fractional-indexing` package (tests/data/fracdex.json),
//! and the length targets of the short and jittered allocators.

use rand_chacha::rand_core::SeedableRng;
use roomlab_protocol::fracdex::{
    key_between, key_between_jittered, key_between_short, n_keys_between, validate,
};
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("data/fracdex.json")).expect("vectors parse")
}

fn optional(value: &Value) -> Option<&str> {
    value.as_str()
}

/// One way of placing `n` keys, one after another, as the vector file's sequences label them.
type Allocate<'f> = &'f mut dyn FnMut(Option<&str>, Option<&str>) -> String;

/// Runs a labelled sequence and returns the `n` keys it inserts, in insertion order.
///
/// `append` and `prepend` start from an empty list; `after-first` starts from the list `[a0, a1]`
/// and inserts each new key right after the first item (so just before the previous insert).
fn sequence(label: &str, n: usize, allocate: Allocate<'_>) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(n);
    for _ in 0..n {
        let newest = keys.last().map(String::as_str);
        let key = match label {
            "append" => allocate(newest, None),
            "prepend" => allocate(None, newest),
            "after-first" => allocate(Some("a0"), Some(newest.unwrap_or("a1"))),
            other => panic!("unknown sequence label {other}"),
        };
        validate(&key).unwrap_or_else(|e| panic!("{label}: made invalid key {key}: {e}"));
        keys.push(key);
    }
    keys
}

fn midpoint(a: Option<&str>, b: Option<&str>) -> String {
    key_between(a, b).expect("midpoint key")
}

fn short(a: Option<&str>, b: Option<&str>) -> String {
    key_between_short(a, b).expect("short key")
}

#[test]
fn between_matches_every_vector() {
    let vectors = vectors();
    let cases = vectors["between"].as_array().unwrap();
    assert!(cases.len() > 1000, "the vector file has {} cases", cases.len());
    for case in cases {
        let (a, b) = (optional(&case["a"]), optional(&case["b"]));
        let key = key_between(a, b).unwrap_or_else(|e| panic!("({a:?}, {b:?}): {e}"));
        assert_eq!(key, case["key"].as_str().unwrap(), "key_between({a:?}, {b:?})");
    }
}

#[test]
fn n_keys_matches_every_vector() {
    for case in vectors()["n_keys"].as_array().unwrap() {
        let (a, b) = (optional(&case["a"]), optional(&case["b"]));
        let n = case["n"].as_u64().unwrap() as usize;
        let expected: Vec<&str> =
            case["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
        assert_eq!(n_keys_between(a, b, n).unwrap(), expected, "n_keys_between({a:?}, {b:?}, {n})");
    }
}

#[test]
fn sequences_match_last_key_and_lengths() {
    for case in vectors()["sequences"].as_array().unwrap() {
        let label = case["label"].as_str().unwrap();
        let n = case["n"].as_u64().unwrap() as usize;
        let keys = sequence(label, n, &mut midpoint);
        assert_eq!(keys.last().unwrap(), case["last"].as_str().unwrap(), "{label}: last key");
        for (count, length) in case["lengths"].as_object().unwrap() {
            let count: usize = count.parse().unwrap();
            let length = length.as_u64().unwrap() as usize;
            assert_eq!(keys[count - 1].len(), length, "{label}: length of key {count}");
        }
    }
}

#[test]
fn invalid_keys_are_rejected() {
    for key in vectors()["invalid_keys"].as_array().unwrap() {
        let key = key.as_str().unwrap();
        assert!(validate(key).is_err(), "{key:?} was accepted");
        assert!(key_between(Some(key), None).is_err(), "{key:?} accepted as a lower bound");
        assert!(key_between(None, Some(key)).is_err(), "{key:?} accepted as an upper bound");
    }
    assert!(key_between(Some("a1"), Some("a0")).is_err(), "reversed bounds accepted");
    assert!(key_between(Some("a1"), Some("a1")).is_err(), "equal bounds accepted");
}

/// The midpoint rule's vectors give 169 characters after 1,000 inserts right after the first item;
/// the short allocator must stay at 12 or below on the same sequence, and on the others.
#[test]
fn short_allocator_meets_the_length_target() {
    for (label, n) in [("after-first", 1000), ("append", 10_000), ("prepend", 10_000)] {
        let keys = sequence(label, n, &mut short);
        let longest = keys.iter().map(String::len).max().unwrap();
        assert!(longest <= 12, "{label}: longest key {longest} characters");
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len(), "{label}: keys are not distinct");
    }
}

/// Typing forward between two items, each insert right after the previous one.
#[test]
fn short_allocator_keeps_typing_in_a_gap_short() {
    let (first, last) = ("a0".to_string(), "a1".to_string());
    let mut previous = first.clone();
    for _ in 0..1000 {
        let key = key_between_short(Some(&previous), Some(&last)).unwrap();
        assert!(previous < key && key < last);
        previous = key;
    }
    assert!(previous.len() <= 12, "typing forward reached {} characters", previous.len());
}

#[test]
fn jittered_keys_differ_and_stay_between() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (a, b) = ("a0".to_string(), "a0V".to_string());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        let key = key_between_jittered(Some(&a), Some(&b), &mut rng).unwrap();
        validate(&key).unwrap();
        assert!(a < key && key < b, "{key} not between {a} and {b}");
        seen.insert(key);
    }
    assert_eq!(seen.len(), 1000, "jittered keys collided");
    // Every insertion pattern stays short with jitter too.
    for (label, n) in [("after-first", 1000), ("append", 10_000), ("prepend", 10_000)] {
        let mut allocate = |a: Option<&str>, b: Option<&str>| key_between_jittered(a, b, &mut rng).unwrap();
        let keys = sequence(label, n, &mut allocate);
        let longest = keys.iter().map(String::len).max().unwrap();
        assert!(longest <= 12, "jittered {label} reached {longest} characters");
    }
}
