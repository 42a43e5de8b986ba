//! limits.decode-work for Yjs: a peer's update or state vector is walked, byte by byte, before a
//! Yjs library decodes it. Every entry a count announces is read from the bytes that follow, so a
//! count larger than the bytes can hold runs out of bytes after at most as many steps as there are
//! bytes; values may nest at most [`NESTING_MAX`] levels, and client ids stay below 2^53. Once a
//! walk passes, every count a decoder reserves for is backed by real entries.

/// How deep lib0 `Any` values may nest (limits.decode-work).
const NESTING_MAX: usize = 64;

/// Yjs numbers its clients below 2^53 (JavaScript's exact integers).
const CLIENT_ID_END: u64 = 1 << 53;

/// A v1 state vector (sync step 1): pairs of client id and clock.
pub(crate) fn state_vector_fits(bytes: &[u8]) -> bool {
    let mut reader = Reader { bytes, at: 0 };
    let walked = (|| {
        let clients = reader.number()?;
        for _ in 0..clients {
            reader.client()?;
            reader.number()?;
        }
        Some(())
    })();
    walked.is_some()
}

/// A v1 update (sync step 2 or update): per client its blocks, then the delete set.
pub(crate) fn update_fits(bytes: &[u8]) -> bool {
    let mut reader = Reader { bytes, at: 0 };
    let walked = (|| {
        let clients = reader.number()?;
        for _ in 0..clients {
            let blocks = reader.number()?;
            reader.client()?;
            reader.number()?; // the first block's clock
            for _ in 0..blocks {
                reader.block()?;
            }
        }
        let deleted_clients = reader.number()?;
        for _ in 0..deleted_clients {
            reader.client()?;
            let ranges = reader.number()?;
            for _ in 0..ranges {
                reader.number()?; // clock
                reader.number()?; // length
            }
        }
        Some(())
    })();
    walked.is_some()
}

/// Reads lib0 v1 encodings; every read takes at least one byte, so every loop over a count ends
/// within the input's length.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// A variable-length unsigned integer (seven bits a byte, low first).
    fn number(&mut self) -> Option<u64> {
        let mut value: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = self.byte()?;
            if shift >= 64 {
                return None;
            }
            value |= u64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
            shift += 7;
        }
    }

    fn client(&mut self) -> Option<u64> {
        self.number().filter(|client| *client < CLIENT_ID_END)
    }

    /// A length, then that many bytes.
    fn skip_bytes(&mut self) -> Option<()> {
        let length = usize::try_from(self.number()?).ok()?;
        let end = self.at.checked_add(length)?;
        if end > self.bytes.len() {
            return None;
        }
        self.at = end;
        Some(())
    }

    fn skip_fixed(&mut self, length: usize) -> Option<()> {
        for _ in 0..length {
            self.byte()?;
        }
        Some(())
    }

    /// One block: a GC or skip range, or an item with its origins, parent and content.
    fn block(&mut self) -> Option<()> {
        let info = self.byte()?;
        let kind = info & 0b1_1111;
        if kind == 0 || kind == 10 {
            self.number()?; // the range's length
            return Some(());
        }
        let has_origin = info & 0b1000_0000 != 0;
        let has_right_origin = info & 0b0100_0000 != 0;
        if has_origin {
            self.client()?;
            self.number()?;
        }
        if has_right_origin {
            self.client()?;
            self.number()?;
        }
        if !has_origin && !has_right_origin {
            let parent_is_root = self.number()? == 1;
            if parent_is_root {
                self.skip_bytes()?; // the root type's name
            } else {
                self.client()?; // the parent item's id
                self.number()?;
            }
            if info & 0b0010_0000 != 0 {
                self.skip_bytes()?; // the key in a map parent
            }
        }
        self.content(info & 0b1111)
    }

    fn content(&mut self, kind: u8) -> Option<()> {
        match kind {
            1 => {
                self.number()?; // a deleted run's length
            }
            2 => {
                // JSON content: a count of strings, and the decoder reads one more than it says.
                let strings = self.number()?;
                for _ in 0..=strings {
                    self.skip_bytes()?;
                }
            }
            3..=5 => self.skip_bytes()?, // binary, string, embed
            6 => {
                self.skip_bytes()?; // a format's key
                self.skip_bytes()?; // and its value
            }
            7 => {
                let type_ref = self.byte()?;
                if type_ref == 3 || type_ref == 5 {
                    self.skip_bytes()?; // an XML element's or hook's name
                }
            }
            8 => {
                let values = self.number()?;
                for _ in 0..values {
                    self.any(0)?;
                }
            }
            9 => {
                self.skip_bytes()?; // a subdocument's guid
                self.any(0)?;
            }
            _ => return None,
        }
        Some(())
    }

    /// A lib0 `Any` value, at most [`NESTING_MAX`] levels deep.
    fn any(&mut self, depth: usize) -> Option<()> {
        if depth > NESTING_MAX {
            return None;
        }
        match self.byte()? {
            // undefined, null, false, true
            127 | 126 | 121 | 120 => Some(()),
            125 => self.number().map(drop),  // integer
            124 => self.skip_fixed(4),       // float32
            123 | 122 => self.skip_fixed(8), // float64, bigint
            119 | 116 => self.skip_bytes(),  // string, buffer
            118 => {
                let entries = self.number()?;
                for _ in 0..entries {
                    self.skip_bytes()?;
                    self.any(depth + 1)?;
                }
                Some(())
            }
            117 => {
                let items = self.number()?;
                for _ in 0..items {
                    self.any(depth + 1)?;
                }
                Some(())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_count_must_be_backed_by_bytes() {
        // Four billion clients claimed in ten bytes.
        let bomb = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(!update_fits(&bomb));
        assert!(!state_vector_fits(&bomb));
        assert!(update_fits(&[0, 0]));
        assert!(state_vector_fits(&[0]));
        assert!(state_vector_fits(&[1, 7, 3]));
        // A client id of 2^53.
        assert!(!state_vector_fits(&[1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 0]));
    }

    #[test]
    fn what_yrs_encodes_fits() {
        use yrs::updates::encoder::Encode;
        use yrs::{Array, Map, ReadTxn, Text, Transact};
        let doc = yrs::Doc::with_client_id((1 << 53) - 1);
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
        assert!(update_fits(&update));
        assert!(state_vector_fits(&doc.transact().state_vector().encode_v1()));
        // Cut short anywhere, it no longer fits.
        for end in 0..update.len() {
            assert!(!update_fits(&update[..end]), "{end} of {} bytes", update.len());
        }
    }
}
