//! Fractional index keys in the base-62 format of the public `fractional-indexing` package (v4).
//!
//! A key is an *integer part* (a head letter that encodes its length, then that many base-62 digits)
//! followed by an optional *fraction* of base-62 digits that never ends in `0`. Keys compare by their
//! bytes, so any store can order them with a plain string comparison.
//!
//! Three ways to make a key between two others:
//! - [`key_between`] is byte-for-byte the package's `generateKeyBetween` (the midpoint rule), so keys
//!   agree with every other implementation of the format;
//! - [`key_between_short`] keeps keys short when many inserts land in the same gap (typing a list
//!   in order, or inserting again and again right after one item), where the midpoint rule grows a key
//!   by about one character for every six inserts;
//! - [`key_between_jittered`] adds at least 31 bits from the caller's random number generator, so that
//!   two clients inserting at the same spot at the same time almost never produce equal keys.

use rand_core::RngCore;

/// The 62 digits of the format, in byte order.
const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BASE: u32 = 62;
/// The one key of the format that is excluded: the smallest integer part with no fraction.
const SMALLEST_INTEGER: &str = "A00000000000000000000000000";
/// Keys longer than this are refused by [`validate`]; the allocators never come near it in practice.
pub const KEY_BYTES_MAX: usize = 1024;
/// How many candidate keys the jittered variant chooses among, at least: 2^31 (31 bits of entropy).
const JITTER_CHOICES_MIN: u64 = 1 << 31;
/// How many keys [`n_keys_between`] makes in one call, at most.
pub const N_KEYS_MAX: usize = 100_000;

/// Why a key, or a pair of keys, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FracdexError {
    /// The key is empty.
    #[error("empty key")]
    Empty,
    /// The key is longer than [`KEY_BYTES_MAX`].
    #[error("key is {0} bytes, more than {KEY_BYTES_MAX}")]
    TooLong(usize),
    /// The first byte is not a letter `a`-`z` or `A`-`Z`.
    #[error("invalid key head {0:?}")]
    InvalidHead(String),
    /// The key is shorter than its head says its integer part is.
    #[error("key {0:?} is shorter than its integer part")]
    ShortInteger(String),
    /// A byte of the key is not a base-62 digit.
    #[error("key {0:?} has a byte that is not a base-62 digit")]
    InvalidDigit(String),
    /// The fraction ends in `0`, or the key is the excluded smallest integer.
    #[error("key {0:?} is not canonical (trailing zero or the excluded smallest key)")]
    NotCanonical(String),
    /// The lower bound is not below the upper bound.
    #[error("lower key {0:?} is not below upper key {1:?}")]
    NotOrdered(String, String),
    /// There is no key left below the smallest or above the largest integer part.
    #[error("no key exists beyond the end of the key space")]
    Exhausted,
    /// More keys were asked of [`n_keys_between`] than [`N_KEYS_MAX`].
    #[error("{0} keys asked for, more than {N_KEYS_MAX}")]
    TooMany(usize),
}

fn digit_value(byte: u8) -> Option<u32> {
    match byte {
        b'0'..=b'9' => Some(u32::from(byte - b'0')),
        b'A'..=b'Z' => Some(u32::from(byte - b'A') + 10),
        b'a'..=b'z' => Some(u32::from(byte - b'a') + 36),
        _ => None,
    }
}

fn digit(value: u32) -> char {
    char::from(DIGITS[value as usize])
}

fn integer_length(head: u8) -> Option<usize> {
    match head {
        b'a'..=b'z' => Some(usize::from(head - b'a') + 2),
        b'A'..=b'Z' => Some(usize::from(b'Z' - head) + 2),
        _ => None,
    }
}

/// Checks that `key` is a valid key of the format.
pub fn validate(key: &str) -> Result<(), FracdexError> {
    split(key).map(|_| ())
}

/// Splits a valid key into its integer part and its fraction.
fn split(key: &str) -> Result<(&str, &str), FracdexError> {
    let bytes = key.as_bytes();
    let head = *bytes.first().ok_or(FracdexError::Empty)?;
    if bytes.len() > KEY_BYTES_MAX {
        return Err(FracdexError::TooLong(bytes.len()));
    }
    let length = integer_length(head).ok_or_else(|| FracdexError::InvalidHead(key.into()))?;
    if bytes.len() < length {
        return Err(FracdexError::ShortInteger(key.into()));
    }
    if bytes[1..].iter().any(|&b| digit_value(b).is_none()) {
        return Err(FracdexError::InvalidDigit(key.into()));
    }
    if key == SMALLEST_INTEGER || (bytes.len() > length && bytes[bytes.len() - 1] == b'0') {
        return Err(FracdexError::NotCanonical(key.into()));
    }
    Ok(key.split_at(length))
}

/// The midpoint of two fractions, as the package computes it. `b` is `None` for the open end.
fn midpoint(a: &str, b: Option<&str>) -> String {
    if let Some(b) = b {
        // Strip the common prefix, padding `a` with zeros; `b` cannot end inside the prefix.
        let (ab, bb) = (a.as_bytes(), b.as_bytes());
        let mut n = 0;
        while n < bb.len() && ab.get(n).copied().unwrap_or(b'0') == bb[n] {
            n += 1;
        }
        if n > 0 {
            let rest_a = if n < a.len() { &a[n..] } else { "" };
            return format!("{}{}", &b[..n], midpoint(rest_a, Some(&b[n..])));
        }
    }
    let digit_a = a.bytes().next().map_or(0, |d| digit_value(d).expect("validated digit"));
    let digit_b = b.map_or(BASE, |b| digit_value(b.as_bytes()[0]).expect("validated digit"));
    if digit_b - digit_a > 1 {
        // JavaScript's Math.round(0.5 * (a + b)) rounds halves up.
        return digit((digit_a + digit_b).div_ceil(2)).to_string();
    }
    match b {
        Some(b) if b.len() > 1 => b[..1].to_string(),
        _ => {
            let rest_a = if a.is_empty() { "" } else { &a[1..] };
            format!("{}{}", digit(digit_a), midpoint(rest_a, None))
        }
    }
}

fn increment_integer(integer: &str) -> Option<String> {
    let (head, digits) = (integer.as_bytes()[0], &integer[1..]);
    let mut values: Vec<u32> = digits.bytes().map(|d| digit_value(d).expect("digit")).collect();
    let mut carry = true;
    for value in values.iter_mut().rev() {
        *value += 1;
        if *value == BASE {
            *value = 0;
        } else {
            carry = false;
            break;
        }
    }
    let body = |values: &[u32]| values.iter().map(|&v| digit(v)).collect::<String>();
    if !carry {
        return Some(format!("{}{}", char::from(head), body(&values)));
    }
    match head {
        b'Z' => Some("a0".into()),
        b'z' => None,
        _ => {
            let next = head + 1;
            if next > b'a' {
                values.push(0);
            } else {
                values.pop();
            }
            Some(format!("{}{}", char::from(next), body(&values)))
        }
    }
}

fn decrement_integer(integer: &str) -> Option<String> {
    let (head, digits) = (integer.as_bytes()[0], &integer[1..]);
    let mut values: Vec<u32> = digits.bytes().map(|d| digit_value(d).expect("digit")).collect();
    let mut borrow = true;
    for value in values.iter_mut().rev() {
        if *value == 0 {
            *value = BASE - 1;
        } else {
            *value -= 1;
            borrow = false;
            break;
        }
    }
    let body = |values: &[u32]| values.iter().map(|&v| digit(v)).collect::<String>();
    if !borrow {
        return Some(format!("{}{}", char::from(head), body(&values)));
    }
    match head {
        b'a' => Some("Zz".into()),
        b'A' => None,
        _ => {
            let previous = head - 1;
            if previous < b'Z' {
                values.push(BASE - 1);
            } else {
                values.pop();
            }
            Some(format!("{}{}", char::from(previous), body(&values)))
        }
    }
}

/// A valid key split into its integer part and its fraction.
type Parts<'k> = (&'k str, &'k str);

fn check_pair<'k>(
    a: Option<&'k str>,
    b: Option<&'k str>,
) -> Result<(Option<Parts<'k>>, Option<Parts<'k>>), FracdexError> {
    let split_a = a.map(split).transpose()?;
    let split_b = b.map(split).transpose()?;
    if let (Some(a), Some(b)) = (a, b) {
        if a >= b {
            return Err(FracdexError::NotOrdered(a.into(), b.into()));
        }
    }
    Ok((split_a, split_b))
}

/// A key strictly between `a` and `b` (`None` is the open end), byte-equal to the package's
/// `generateKeyBetween`.
pub fn key_between(a: Option<&str>, b: Option<&str>) -> Result<String, FracdexError> {
    let (split_a, split_b) = check_pair(a, b)?;
    match (split_a, split_b) {
        (None, None) => Ok("a0".into()),
        (None, Some((integer_b, fraction_b))) => {
            if integer_b == SMALLEST_INTEGER {
                return Ok(format!("{integer_b}{}", midpoint("", Some(fraction_b))));
            }
            if !fraction_b.is_empty() {
                return Ok(integer_b.into());
            }
            decrement_integer(integer_b).ok_or(FracdexError::Exhausted)
        }
        (Some((integer_a, fraction_a)), None) => Ok(increment_integer(integer_a)
            .unwrap_or_else(|| format!("{integer_a}{}", midpoint(fraction_a, None)))),
        (Some((integer_a, fraction_a)), Some((integer_b, fraction_b))) => {
            if integer_a == integer_b {
                return Ok(format!("{integer_a}{}", midpoint(fraction_a, Some(fraction_b))));
            }
            let next = increment_integer(integer_a).ok_or(FracdexError::Exhausted)?;
            if Some(next.as_str()) < b {
                return Ok(next);
            }
            Ok(format!("{integer_a}{}", midpoint(fraction_a, None)))
        }
    }
}

/// `n` keys in increasing order strictly between `a` and `b`, byte-equal to the package's
/// `generateNKeysBetween`.
pub fn n_keys_between(a: Option<&str>, b: Option<&str>, n: usize) -> Result<Vec<String>, FracdexError> {
    if n > N_KEYS_MAX {
        return Err(FracdexError::TooMany(n));
    }
    check_pair(a, b)?;
    let mut keys = Vec::with_capacity(n);
    n_keys_into(a, b, n, &mut keys)?;
    Ok(keys)
}

fn n_keys_into(
    a: Option<&str>,
    b: Option<&str>,
    n: usize,
    out: &mut Vec<String>,
) -> Result<(), FracdexError> {
    match n {
        0 => return Ok(()),
        1 => {
            out.push(key_between(a, b)?);
            return Ok(());
        }
        _ => {}
    }
    if b.is_none() {
        let mut key = key_between(a, None)?;
        for _ in 1..n {
            let next = key_between(Some(&key), None)?;
            out.push(std::mem::replace(&mut key, next));
        }
        out.push(key);
        return Ok(());
    }
    if a.is_none() {
        let start = out.len();
        let mut key = key_between(None, b)?;
        for _ in 1..n {
            let next = key_between(None, Some(&key))?;
            out.push(std::mem::replace(&mut key, next));
        }
        out.push(key);
        out[start..].reverse();
        return Ok(());
    }
    let middle = n / 2;
    let key = key_between(a, b)?;
    n_keys_into(a, Some(&key), middle, out)?;
    out.push(key.clone());
    n_keys_into(Some(&key), b, n - middle - 1, out)
}

/// A fraction as a fixed-precision base-62 number: `digits[0]` is the units place (0 or 1, for the
/// exclusive upper bound 1.0), then `precision` fractional digits.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Fixed {
    digits: Vec<u32>,
}

impl Fixed {
    /// `fraction` at `precision` digits, rounded up (`ceil`) or down.
    fn from_fraction(fraction: &str, precision: usize, ceil: bool) -> Fixed {
        let mut digits = vec![0; precision + 1];
        for (place, byte) in fraction.bytes().take(precision).enumerate() {
            digits[place + 1] = digit_value(byte).expect("validated digit");
        }
        let mut fixed = Fixed { digits };
        if ceil && fraction.len() > precision && fraction.bytes().skip(precision).any(|b| b != b'0') {
            fixed.add(1);
        }
        fixed
    }

    fn one(precision: usize) -> Fixed {
        let mut digits = vec![0; precision + 1];
        digits[0] = 1;
        Fixed { digits }
    }

    fn add(&mut self, amount: u64) {
        let mut carry = amount;
        for place in self.digits.iter_mut().rev() {
            if carry == 0 {
                break;
            }
            let sum = u64::from(*place) + carry;
            *place = (sum % u64::from(BASE)) as u32;
            carry = sum / u64::from(BASE);
        }
        assert_eq!(carry, 0, "fixed-point overflow in fractional key arithmetic");
    }

    fn subtract_one(&mut self) {
        for place in self.digits.iter_mut().rev() {
            if *place == 0 {
                *place = BASE - 1;
            } else {
                *place -= 1;
                return;
            }
        }
        panic!("fixed-point underflow in fractional key arithmetic");
    }

    /// `self - other`, saturated at `u64::MAX`.
    fn distance_to(&self, other: &Fixed) -> u64 {
        let mut difference: u128 = 0;
        let mut borrow = 0i64;
        let mut scale: u128 = 1;
        for (x, y) in self.digits.iter().rev().zip(other.digits.iter().rev()) {
            let mut d = i64::from(*y) - i64::from(*x) - borrow;
            borrow = i64::from(d < 0);
            if d < 0 {
                d += i64::from(BASE);
            }
            difference = difference.saturating_add(scale.saturating_mul(d as u128));
            scale = scale.saturating_mul(u128::from(BASE));
        }
        assert_eq!(borrow, 0, "distance_to called with other < self");
        u64::try_from(difference).unwrap_or(u64::MAX)
    }

    /// The fraction's digits without trailing zeros; the units place must be 0.
    fn fraction(&self) -> String {
        assert_eq!(self.digits[0], 0, "a key fraction must stay below 1");
        let end = self.digits.iter().rposition(|&d| d != 0).map_or(1, |p| p + 1);
        self.digits[1..end].iter().map(|&d| digit(d)).collect()
    }
}

/// The open interval of fractions, behind one integer part, in which a new key may fall.
struct Gap<'k> {
    integer: String,
    low: &'k str,
    /// `None` means the exclusive upper bound 1.0 (the next integer part).
    high: Option<&'k str>,
}

impl Gap<'_> {
    fn bounds(&self, precision: usize) -> (Fixed, Fixed) {
        let low = Fixed::from_fraction(self.low, precision, false);
        let high = match self.high {
            Some(high) => Fixed::from_fraction(high, precision, true),
            None => Fixed::one(precision),
        };
        (low, high)
    }

    /// How many fractions of `precision` digits lie strictly inside the gap.
    fn count(&self, precision: usize) -> u64 {
        let (low, high) = self.bounds(precision);
        low.distance_to(&high).saturating_sub(1)
    }

    /// The smallest precision at which at least `wanted` fractions lie strictly inside the gap.
    fn precision_for(&self, wanted: u64) -> usize {
        let mut precision = 1;
        while self.count(precision) < wanted {
            precision += 1;
            assert!(precision <= KEY_BYTES_MAX, "a non-empty key gap must hold fractions");
        }
        precision
    }

    fn key(&self, fixed: &Fixed) -> String {
        format!("{}{}", self.integer, fixed.fraction())
    }
}

impl<'k> Gap<'k> {
    /// The gap behind `integer` between `a` and `b`: a bound behind another integer part is open
    /// (0 below, 1.0 above), since every fraction behind `integer` already lies beyond it.
    fn behind(integer: &str, a: Option<&'k str>, b: Option<&'k str>) -> Gap<'k> {
        let fraction_behind = |key: Option<&'k str>| {
            key.and_then(|key| split(key).ok()).filter(|(i, _)| *i == integer).map(|(_, f)| f)
        };
        Gap { integer: integer.to_string(), low: fraction_behind(a).unwrap_or(""), high: fraction_behind(b) }
    }
}

/// What the short allocator decided for one gap.
enum Plan {
    /// The midpoint rule's key is already the right one.
    Keep(String),
    /// Step one unit away from the bound that the last insert made: `near` is the new key's
    /// fraction and `fresh` is the next unit beyond it, on the side away from that bound.
    Step { integer: String, near: Fixed, fresh: Fixed },
}

fn plan(a: Option<&str>, b: Option<&str>) -> Result<Plan, FracdexError> {
    let midpoint_key = key_between(a, b)?;
    let (integer, fraction) = split(&midpoint_key)?;
    let gap = Gap::behind(integer, a, b);
    let low_length = gap.low.len();
    let high_length = gap.high.map_or(0, str::len);
    if fraction.is_empty() || low_length == high_length {
        return Ok(Plan::Keep(midpoint_key));
    }
    // One digit more than the shortest key needs leaves at least 61 free units to step through.
    let precision = gap.precision_for(1) + 1;
    let (mut near, mut fresh) = gap.bounds(precision);
    if low_length > high_length {
        near.add(1);
        fresh = near.clone();
        fresh.add(1);
    } else {
        fresh.subtract_one();
        near = fresh.clone();
        fresh.subtract_one();
    }
    Ok(Plan::Step { integer: gap.integer, near, fresh })
}

/// A key strictly between `a` and `b` that stays short when many inserts land in the same gap.
///
/// It agrees with [`key_between`] when that key needs no fraction or when the gap looks fresh (both
/// bounds have fractions of the same length). When one bound is longer than the other, the longer one
/// is taken for the key that the last insert made, and the new key steps one unit away from it at one
/// digit more than the shortest key in the gap needs: thousands of inserts in a row fit before a key
/// grows by one more character (1,000 reach 4 characters, 10,000 reach 7), where the midpoint rule
/// grows one every six inserts.
pub fn key_between_short(a: Option<&str>, b: Option<&str>) -> Result<String, FracdexError> {
    Ok(match plan(a, b)? {
        Plan::Keep(key) => key,
        Plan::Step { integer, near, .. } => format!("{integer}{}", near.fraction()),
    })
}

/// Where to jitter around a key the midpoint rule chose. A bare integer part that `b` also starts
/// with (prepending before `b`) leaves room only below `b`'s fraction, which would shrink with every
/// prepend; the whole integer slot just below is free, so the jitter goes there instead.
fn jitter_gap<'k>(key: &str, a: Option<&'k str>, b: Option<&'k str>) -> Gap<'k> {
    let (integer, fraction) = split(key).expect("an allocated key is valid");
    let gap = Gap::behind(integer, a, b);
    match decrement_integer(integer) {
        Some(below) if fraction.is_empty() && gap.high.is_some() => Gap::behind(&below, a, b),
        _ => gap,
    }
}

/// A key strictly between `a` and `b`, drawn from at least 2^31 candidates with `rng`.
///
/// The candidates lie in the unit next to [`key_between_short`]'s key, on the side away from the
/// bound the last insert made; in a fresh gap, anywhere in it; when prepending before a key with a
/// fraction, in the free integer slot below it. So the keys stay about as short as that allocator's
/// plus six characters. Two clients inserting at the same spot concurrently produce equal
/// keys with a probability below 2^-31, and readers order equal keys by item id anyway.
pub fn key_between_jittered<R: RngCore + ?Sized>(
    a: Option<&str>,
    b: Option<&str>,
    rng: &mut R,
) -> Result<String, FracdexError> {
    let (integer, low, high) = match plan(a, b)? {
        Plan::Keep(key) => {
            let gap = jitter_gap(&key, a, b);
            (gap.integer, gap.low.to_string(), gap.high.map(str::to_string))
        }
        Plan::Step { integer, near, fresh } => {
            let (low, high) = if near < fresh { (near, fresh) } else { (fresh, near) };
            (integer, low.fraction(), Some(high.fraction()))
        }
    };
    let gap = Gap { integer, low: &low, high: high.as_deref() };
    let precision = gap.precision_for(JITTER_CHOICES_MIN);
    let choices = gap.count(precision).min(1 << 40);
    let (mut key, _) = gap.bounds(precision);
    key.add(1 + rng.next_u64() % choices);
    Ok(gap.key(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_stay_ordered_in_both_directions() {
        let mut keys = vec!["a0".to_string(), "a1".to_string()];
        for round in 0..300 {
            // Alternate typing forward after the newest key and inserting right after the first.
            let position = if round % 2 == 0 { keys.len() - 2 } else { 0 };
            let key = key_between_short(Some(&keys[position]), Some(&keys[position + 1])).unwrap();
            assert!(keys[position] < key && key < keys[position + 1], "{key}");
            validate(&key).unwrap();
            keys.insert(position + 1, key);
        }
    }

    #[test]
    fn fixed_point_rounds_toward_the_gap() {
        let gap = Gap { integer: "a0".into(), low: "V", high: Some("V1") };
        assert_eq!(gap.count(1), 0);
        assert_eq!(gap.count(2), 0);
        assert_eq!(gap.count(3), 61);
    }
}
