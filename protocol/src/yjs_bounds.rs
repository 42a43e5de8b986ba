//! Bounds on Yjs v1 encodings, checked before a Yjs library decodes them. A Yjs decoder reserves
//! memory for as many entries as a count claims and recurses as deep as values nest, so ten bytes
//! claiming four billion clients cost gigabytes, and a deeply nested value overflows the stack.
//! These walks read the lib0 v1 layout (updates, state vectors) without allocating and refuse
//! any count larger than the bytes left could hold and any nesting past [`YJS_NESTING_MAX`], so
//! what a decoder reserves is bounded by the frame's length (docs/PROTOCOL.md limits.decode-work).

use crate::codec::Cursor;
use crate::error::DecodeError;

/// How deep `Any` values may nest inside a Yjs update.
pub const YJS_NESTING_MAX: usize = 64;

fn bad(why: &'static str) -> DecodeError {
    DecodeError::MalformedBinary(why)
}

/// Reads a count, refused when each counted entry, at `bytes_each` bytes or more, could not fit
/// in what is left.
fn count(cursor: &mut Cursor<'_>, bytes_each: u64) -> Result<u64, DecodeError> {
    let count = cursor.var_uint()?;
    if count > u64::from(u32::MAX) || count.saturating_mul(bytes_each) > cursor.rest().len() as u64 {
        return Err(bad("a count claims more entries than the bytes left can hold"));
    }
    Ok(count)
}

/// The largest Yjs client id: Yjs numbers clients below 2^53, and yrs asserts it (it panics on
/// a larger one), so a peer's larger id is refused before yrs reads it.
pub const YJS_CLIENT_MAX: u64 = (1 << 53) - 1;

/// Reads a client id, refused past [`YJS_CLIENT_MAX`].
fn client(cursor: &mut Cursor<'_>) -> Result<u64, DecodeError> {
    let client = cursor.var_uint()?;
    if client > YJS_CLIENT_MAX {
        return Err(bad("a client id is 2^53 or more"));
    }
    Ok(client)
}

/// Checks a v1 state vector (sync step 1): each entry is a client and a clock.
pub fn check_yjs_state_vector(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut cursor = Cursor::new(bytes);
    for _ in 0..count(&mut cursor, 2)? {
        client(&mut cursor)?;
        cursor.var_uint()?;
    }
    Ok(())
}

/// One client's entry of an awareness update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry {
    /// The Yjs client id the state belongs to.
    pub client: u64,
    /// Its clock; the newest wins.
    pub clock: u32,
    /// Whether the state is `null`: the client's awareness is removed.
    pub removed: bool,
}

/// Reads the entries of a y-protocols awareness message (var-uint 1, then the awareness update as
/// var-bytes: a count, then per client its id, clock and JSON state as a var-string), refusing any
/// count the bytes left could not hold, so reading allocates no more than the message's length.
pub fn awareness_entries(message: &[u8]) -> Result<Vec<AwarenessEntry>, DecodeError> {
    let mut cursor = Cursor::new(message);
    if cursor.var_uint()? != 1 {
        return Err(bad("not an awareness message"));
    }
    let mut update = Cursor::new(cursor.var_bytes()?);
    let mut entries = Vec::new();
    // Each entry takes a client id, a clock and a string length: three bytes at least.
    for _ in 0..count(&mut update, 3)? {
        let client = update.var_uint()?;
        let clock = u32::try_from(update.var_uint()?).map_err(|_| bad("an awareness clock past 2^32"))?;
        let removed = update.var_bytes()? == b"null";
        entries.push(AwarenessEntry { client, clock, removed });
    }
    Ok(entries)
}

/// Checks a v1 update (sync step 2 or an update): its blocks, then its delete set.
pub fn check_yjs_update(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut cursor = Cursor::new(bytes);
    for _ in 0..count(&mut cursor, 3)? {
        let blocks = count(&mut cursor, 1)?;
        client(&mut cursor)?;
        cursor.var_uint()?; // clock
        for _ in 0..blocks {
            block(&mut cursor)?;
        }
    }
    for _ in 0..count(&mut cursor, 2)? {
        client(&mut cursor)?;
        for _ in 0..count(&mut cursor, 2)? {
            cursor.var_uint()?; // clock
            cursor.var_uint()?; // length
        }
    }
    Ok(())
}

const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;
const BLOCK_GC: u8 = 0;
const BLOCK_SKIP: u8 = 10;

fn block(cursor: &mut Cursor<'_>) -> Result<(), DecodeError> {
    let info = cursor.byte()?;
    if info & 0b1_1111 == BLOCK_GC || info & 0b1_1111 == BLOCK_SKIP {
        cursor.var_uint()?;
        return Ok(());
    }
    if info & HAS_ORIGIN != 0 {
        client(cursor)?;
        cursor.var_uint()?;
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        client(cursor)?;
        cursor.var_uint()?;
    }
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        if cursor.var_uint()? == 1 {
            cursor.var_bytes()?; // a root type's name
        } else {
            client(cursor)?; // a parent item's id
            cursor.var_uint()?;
        }
        if info & HAS_PARENT_SUB != 0 {
            cursor.var_bytes()?;
        }
    }
    content(cursor, info & 0b1111)
}

fn content(cursor: &mut Cursor<'_>, kind: u8) -> Result<(), DecodeError> {
    match kind {
        1 => {
            cursor.var_uint()?; // deleted length
        }
        2 => {
            // yrs reads one string more than the count says.
            for _ in 0..=count(cursor, 1)? {
                cursor.var_bytes()?;
            }
        }
        3..=5 => {
            cursor.var_bytes()?; // binary, string, embed (JSON text)
        }
        6 => {
            cursor.var_bytes()?; // format key
            cursor.var_bytes()?; // and its JSON value
        }
        7 => {
            if matches!(cursor.byte()?, 3 | 5) {
                cursor.var_bytes()?; // an XML element's or hook's name
            }
        }
        8 => {
            for _ in 0..count(cursor, 1)? {
                any(cursor, 0)?;
            }
        }
        9 => {
            cursor.var_bytes()?; // a subdocument's guid
            any(cursor, 0)?;
        }
        _ => return Err(bad("unknown Yjs content kind")),
    }
    Ok(())
}

/// A lib0 `Any` value.
fn any(cursor: &mut Cursor<'_>, depth: usize) -> Result<(), DecodeError> {
    if depth > YJS_NESTING_MAX {
        return Err(bad("Yjs values nest too deeply"));
    }
    match cursor.byte()? {
        127 | 126 | 121 | 120 => {}
        125 => {
            cursor.var_uint()?;
        }
        124 => skip(cursor, 4)?,
        123 | 122 => skip(cursor, 8)?,
        119 | 116 => {
            cursor.var_bytes()?;
        }
        118 => {
            for _ in 0..count(cursor, 2)? {
                cursor.var_bytes()?;
                any(cursor, depth + 1)?;
            }
        }
        117 => {
            for _ in 0..count(cursor, 1)? {
                any(cursor, depth + 1)?;
            }
        }
        _ => return Err(bad("unknown Yjs value tag")),
    }
    Ok(())
}

fn skip(cursor: &mut Cursor<'_>, bytes: usize) -> Result<(), DecodeError> {
    for _ in 0..bytes {
        cursor.byte()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::encoder::Encode;
    use yrs::{Array, Map, ReadTxn, Text, Transact};

    #[test]
    fn real_updates_pass_and_bombs_are_refused() {
        let doc = yrs::Doc::with_client_id(7);
        let text = doc.get_or_insert_text("body");
        let map = doc.get_or_insert_map("m");
        let array = doc.get_or_insert_array("a");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "héllo wörld");
            text.remove_range(&mut txn, 1, 3);
            map.insert(&mut txn, "n", 1.5);
            map.insert(&mut txn, "nested", yrs::Any::from(vec![yrs::Any::from("x"), yrs::Any::Null]));
            array.insert(&mut txn, 0, true);
        }
        let update = doc.transact().encode_state_as_update_v1(&yrs::StateVector::default());
        assert_eq!(check_yjs_update(&update), Ok(()));
        assert_eq!(check_yjs_state_vector(&doc.transact().state_vector().encode_v1()), Ok(()));
        assert_eq!(check_yjs_update(&[0, 0]), Ok(()));
        // Four billion clients claimed in ten bytes (a frame that once cost 8 GB to decode).
        let bomb = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(check_yjs_update(&bomb).is_err());
        assert!(check_yjs_state_vector(&bomb).is_err());
        // One client claiming a billion blocks.
        assert!(check_yjs_update(&[1, 0xff, 0xff, 0xff, 0xff, 0x03, 7, 0]).is_err());
        // An Any array nested past the limit.
        let mut nested = vec![1, 1, 7, 0, 8 | HAS_PARENT_SUB, 1, 1, b'a', 1, b'k', 1];
        nested.extend(std::iter::repeat_n([117u8, 1], YJS_NESTING_MAX + 2).flatten());
        nested.extend([126, 0]);
        assert_eq!(check_yjs_update(&nested), Err(bad("Yjs values nest too deeply")));
    }
}
