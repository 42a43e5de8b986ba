//! Frames to messages and back. Text frames carry JSON messages; binary frames carry Yjs envelopes.

use crate::error::DecodeError;
use crate::ids::{DocId, FieldName};
use crate::message::{ClientMessage, ServerMessage};
use serde::de::DeserializeOwned;

/// How deep JSON may nest in a client's frame (docs/PROTOCOL.md limits.json-depth). A document's
/// data sits a few levels deeper in the server's pushes than in the client's mutation, so the
/// server's frames may nest [`SERVER_JSON_DEPTH_EXTRA`] levels more; both stay far below the 128
/// levels where common JSON parsers (serde_json among them) give up.
pub const JSON_DEPTH_MAX: usize = 64;
/// How much deeper than [`JSON_DEPTH_MAX`] a server's frame may nest.
pub const SERVER_JSON_DEPTH_EXTRA: usize = 8;

/// Decodes a client's text frame, refusing frames longer than `frame_bytes_max` or nested deeper
/// than [`JSON_DEPTH_MAX`].
pub fn decode(frame: &[u8], frame_bytes_max: usize) -> Result<ClientMessage, DecodeError> {
    check_size(frame, frame_bytes_max)?;
    check_depth(frame, JSON_DEPTH_MAX)?;
    decode_json(frame, frame_bytes_max)
}

/// Decodes a server's text frame, refusing frames longer than `frame_bytes_max` or nested deeper
/// than the server may nest.
pub fn decode_server(frame: &[u8], frame_bytes_max: usize) -> Result<ServerMessage, DecodeError> {
    check_size(frame, frame_bytes_max)?;
    check_depth(frame, JSON_DEPTH_MAX + SERVER_JSON_DEPTH_EXTRA)?;
    if let Some(message) = hot::decode(frame) {
        return Ok(message);
    }
    decode_json(frame, frame_bytes_max)
}

/// The pushes a client receives most (`query:diff` and `doc:diff`, each change fanned out to every
/// subscriber), decoded straight into their fields. serde reads an internally tagged enum by first
/// copying the whole message into an intermediate tree, to find the tag wherever it stands; that
/// copy cost more than the decoding itself. A frame whose tag comes first (as every roomlab server
/// writes it) skips the copy; any other frame, and any frame this path cannot read, takes the
/// general path, which also names the error.
mod hot {
    use crate::ids::{DocId, FieldName, SubId};
    use crate::message::{DocSnapshot, ListDiff, ServerMessage};
    use serde::de::IgnoredAny;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    const QUERY_DIFF: &[u8] = br#"{"type":"query:diff","#;
    const DOC_DIFF: &[u8] = br#"{"type":"doc:diff","#;

    /// `ServerMessage::QueryDiff`'s fields, as its serde attributes read them.
    #[derive(Deserialize)]
    struct QueryDiff {
        /// A second tag: the general path refuses the frame, so this one must not read it.
        #[serde(rename = "type", default)]
        tag: Option<IgnoredAny>,
        sub: SubId,
        seq: u64,
        #[serde(default)]
        added: Vec<DocSnapshot>,
        #[serde(default)]
        changed: Vec<DocSnapshot>,
        #[serde(default)]
        removed: Vec<DocId>,
    }

    /// `ServerMessage::DocDiff`'s fields, as its serde attributes read them.
    #[derive(Deserialize)]
    struct DocDiff {
        #[serde(rename = "type", default)]
        tag: Option<IgnoredAny>,
        sub: SubId,
        doc: DocId,
        base: u64,
        seq: u64,
        lists: BTreeMap<FieldName, ListDiff>,
    }

    pub(super) fn decode(frame: &[u8]) -> Option<ServerMessage> {
        let (rest, query) = match frame {
            _ if frame.starts_with(QUERY_DIFF) => (&frame[QUERY_DIFF.len()..], true),
            _ if frame.starts_with(DOC_DIFF) => (&frame[DOC_DIFF.len()..], false),
            _ => return None,
        };
        // The fields after the tag, as an object of their own.
        let mut object = Vec::with_capacity(rest.len() + 1);
        object.push(b'{');
        object.extend_from_slice(rest);
        if query {
            let QueryDiff { tag, sub, seq, added, changed, removed } =
                serde_json::from_slice(&object).ok()?;
            tag.is_none().then_some(ServerMessage::QueryDiff { sub, seq, added, changed, removed })
        } else {
            let DocDiff { tag, sub, doc, base, seq, lists } = serde_json::from_slice(&object).ok()?;
            tag.is_none().then_some(ServerMessage::DocDiff { sub, doc, base, seq, lists })
        }
    }
}

fn decode_json<T: DeserializeOwned>(frame: &[u8], max: usize) -> Result<T, DecodeError> {
    check_size(frame, max)?;
    serde_json::from_slice(frame).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// The deepest nesting of arrays and objects in a JSON text, counted outside strings. A frame that
/// is not JSON at all is left to the parser to name.
fn check_depth(frame: &[u8], depth_max: usize) -> Result<(), DecodeError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in frame {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > depth_max {
                    return Err(DecodeError::Malformed(format!("JSON nests deeper than {depth_max} levels")));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn check_size(frame: &[u8], max: usize) -> Result<(), DecodeError> {
    match frame.len() {
        length if length > max => Err(DecodeError::TooLarge { length, max }),
        _ => Ok(()),
    }
}

/// Encodes a client message as a text frame.
pub fn encode(message: &ClientMessage) -> String {
    serde_json::to_string(message).expect("client messages always serialize")
}

/// Encodes a server message as a text frame.
pub fn encode_server(message: &ServerMessage) -> String {
    serde_json::to_string(message).expect("server messages always serialize")
}

/// The first byte of every Yjs binary frame on the main socket (`Y`).
pub const YJS_FRAME_TAG: u8 = 0x59;

/// A Yjs binary frame on the main socket: a y-protocols message (sync step 1, sync step 2, update,
/// or awareness) for one rich-text field of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YjsFrame {
    /// The document.
    pub doc: DocId,
    /// The rich-text field.
    pub field: FieldName,
    /// The y-protocols message, exactly as y-websocket would send it.
    pub payload: Vec<u8>,
}

impl YjsFrame {
    /// Encodes the frame: tag, then doc and field as lib0 var-strings, then the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 16);
        out.push(YJS_FRAME_TAG);
        write_var_string(&mut out, self.doc.as_str());
        write_var_string(&mut out, self.field.as_str());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes a binary frame, refusing frames longer than `frame_bytes_max`.
    pub fn decode(frame: &[u8], frame_bytes_max: usize) -> Result<YjsFrame, DecodeError> {
        check_size(frame, frame_bytes_max)?;
        let mut cursor = Cursor::new(frame);
        if cursor.byte()? != YJS_FRAME_TAG {
            return Err(DecodeError::MalformedBinary("binary frame does not start with the Y tag"));
        }
        let doc =
            DocId::new(cursor.var_string()?).map_err(|_| DecodeError::MalformedBinary("bad document id"))?;
        let field = FieldName::new(cursor.var_string()?)
            .map_err(|_| DecodeError::MalformedBinary("bad field name"))?;
        Ok(YjsFrame { doc, field, payload: cursor.rest().to_vec() })
    }
}

/// Appends a lib0 variable-length unsigned integer.
pub fn write_var_uint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_var_string(out: &mut Vec<u8>, value: &str) {
    write_var_uint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

/// A reader over lib0-encoded bytes that fails, never panics, on short or bad input.
pub struct Cursor<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Cursor<'b> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'b [u8]) -> Self {
        Cursor { bytes, at: 0 }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'b [u8] {
        &self.bytes[self.at..]
    }

    /// Reads one byte.
    pub fn byte(&mut self) -> Result<u8, DecodeError> {
        let byte = *self.bytes.get(self.at).ok_or(DecodeError::MalformedBinary("frame too short"))?;
        self.at += 1;
        Ok(byte)
    }

    /// Reads a lib0 variable-length unsigned integer of at most 64 bits.
    pub fn var_uint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedBinary("variable-length integer longer than 64 bits"))
    }

    /// Reads a lib0 var-bytes field (length, then bytes).
    pub fn var_bytes(&mut self) -> Result<&'b [u8], DecodeError> {
        let length = usize::try_from(self.var_uint()?)
            .map_err(|_| DecodeError::MalformedBinary("length does not fit in memory"))?;
        let end = self.at.checked_add(length).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(DecodeError::MalformedBinary("length runs past the frame"))?;
        let bytes = &self.bytes[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    /// Reads a lib0 var-string field.
    pub fn var_string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.var_bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::MalformedBinary("string is not UTF-8"))
    }
}

/// One y-protocols message, the payload of a [`YjsFrame`] and of every frame on the y-websocket
/// endpoint: sync step 1 (a state vector), sync step 2 (an update answering it), an update, or an
/// awareness update. The byte slices are Yjs v1 encodings, which only a Yjs library reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YSync<'b> {
    /// Sync step 1: the sender's state vector; the answer is a step 2 with what it lacks.
    Step1(&'b [u8]),
    /// Sync step 2: an update answering a step 1.
    Step2(&'b [u8]),
    /// An incremental update.
    Update(&'b [u8]),
    /// An awareness update (cursors, presence), relayed but never stored.
    Awareness(&'b [u8]),
}

/// y-protocols message types and sync steps.
const Y_MESSAGE_SYNC: u64 = 0;
const Y_MESSAGE_AWARENESS: u64 = 1;
const Y_SYNC_STEP_1: u64 = 0;
const Y_SYNC_STEP_2: u64 = 1;
const Y_SYNC_UPDATE: u64 = 2;

impl<'b> YSync<'b> {
    /// Parses a y-protocols message.
    pub fn parse(payload: &'b [u8]) -> Result<YSync<'b>, DecodeError> {
        let mut cursor = Cursor::new(payload);
        match cursor.var_uint()? {
            Y_MESSAGE_SYNC => {
                let step = cursor.var_uint()?;
                let bytes = cursor.var_bytes()?;
                match step {
                    Y_SYNC_STEP_1 => Ok(YSync::Step1(bytes)),
                    Y_SYNC_STEP_2 => Ok(YSync::Step2(bytes)),
                    Y_SYNC_UPDATE => Ok(YSync::Update(bytes)),
                    _ => Err(DecodeError::MalformedBinary("unknown sync step")),
                }
            }
            Y_MESSAGE_AWARENESS => Ok(YSync::Awareness(cursor.rest())),
            _ => Err(DecodeError::MalformedBinary("unknown y-protocols message type")),
        }
    }

    /// Encodes the message as y-websocket sends it.
    pub fn encode(&self) -> Vec<u8> {
        let (step, bytes) = match *self {
            YSync::Step1(bytes) => (Y_SYNC_STEP_1, bytes),
            YSync::Step2(bytes) => (Y_SYNC_STEP_2, bytes),
            YSync::Update(bytes) => (Y_SYNC_UPDATE, bytes),
            YSync::Awareness(bytes) => {
                let mut out = Vec::with_capacity(bytes.len() + 1);
                write_var_uint(&mut out, Y_MESSAGE_AWARENESS);
                out.extend_from_slice(bytes);
                return out;
            }
        };
        let mut out = Vec::with_capacity(bytes.len() + 8);
        write_var_uint(&mut out, Y_MESSAGE_SYNC);
        write_var_uint(&mut out, step);
        write_var_uint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
        out
    }
}

#[cfg(test)]
mod y_sync_tests {
    use super::*;

    #[test]
    fn y_protocols_messages_round_trip_and_bad_ones_are_errors() {
        let check = |payload: &[u8], expected: Result<YSync<'_>, DecodeError>| {
            let parsed = YSync::parse(payload);
            assert_eq!(parsed, expected);
            if let Ok(message) = parsed {
                assert_eq!(message.encode(), payload);
            }
        };
        check(&[0, 0, 2, 7, 8], Ok(YSync::Step1(&[7, 8])));
        check(&[0, 1, 0], Ok(YSync::Step2(&[])));
        check(&[0, 2, 1, 9], Ok(YSync::Update(&[9])));
        check(&[1, 5, 6], Ok(YSync::Awareness(&[5, 6])));
        check(&[0, 3, 0], Err(DecodeError::MalformedBinary("unknown sync step")));
        check(&[2], Err(DecodeError::MalformedBinary("unknown y-protocols message type")));
        check(&[0, 0, 5, 1], Err(DecodeError::MalformedBinary("length runs past the frame")));
        check(&[], Err(DecodeError::MalformedBinary("frame too short")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path reads `frame` exactly as the general path does, or leaves it to it; `taken`
    /// says which is expected.
    fn check(frame: &str, taken: bool) {
        let general = serde_json::from_slice::<ServerMessage>(frame.as_bytes()).ok();
        let hot = hot::decode(frame.as_bytes());
        assert_eq!(hot.is_some(), taken, "fast path taken for {frame}");
        if let Some(hot) = hot {
            assert_eq!(Some(hot), general, "fast and general paths disagree on {frame}");
        }
        let decoded = decode_server(frame.as_bytes(), 1 << 20).ok();
        assert_eq!(decoded, general, "decode_server must answer as the general path on {frame}");
    }

    #[test]
    fn frames_nested_past_the_limit_are_refused_on_both_sides() {
        let nested = |depth: usize| {
            let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            format!(
                r#"{{"type":"mutate","mid":1,"op":"create","doc":"d","doc_type":"t","data":{{"a":{data}}}}}"#
            )
        };
        // The frame's own object and `data` take two levels.
        assert!(decode(nested(JSON_DEPTH_MAX - 2).as_bytes(), 1 << 20).is_ok());
        let refused = decode(nested(JSON_DEPTH_MAX - 1).as_bytes(), 1 << 20);
        assert_eq!(
            refused,
            Err(DecodeError::Malformed(format!("JSON nests deeper than {JSON_DEPTH_MAX} levels")))
        );
        // Brackets inside strings do not count.
        let text = format!(r#"{{"type":"ping","nonce":1,"x":"{}\\"}}"#, "[".repeat(200));
        assert!(
            !matches!(decode(text.as_bytes(), 1 << 20), Err(DecodeError::Malformed(m)) if m.contains("nests"))
        );
    }

    #[test]
    fn hot_pushes_decode_as_the_general_path_does() {
        let doc = r#"{"id":"t1","doc_type":"tasks","seq":3,"owner":"u1","data":{"a":[1,"x\"y"]}}"#;
        let cases: &[(String, bool)] = &[
            (format!(r#"{{"type":"query:diff","sub":"s1","seq":4,"added":[{doc}],"removed":["t2"]}}"#), true),
            (r#"{"type":"query:diff","sub":"s1","seq":4}"#.into(), true),
            (format!(r#"{{"type":"query:diff","seq":4,"changed":[{doc}],"sub":"s1","extra":1}}"#), true),
            (r#"{"type":"doc:diff","sub":"s1","doc":"b","base":1,"seq":2,"lists":{"cards":{"removed":["c1"]}}}"#.into(), true),
            (r#"{"type":"doc:diff","sub":"s1","doc":"b","base":1,"seq":2,"lists":{"cards":{"put":[{"id":"c1","key":"a0","value":null}]}}}"#.into(), true),
            // A second tag, a tag not first, spaces, a missing field, a bad id, a truncated frame.
            (r#"{"type":"query:diff","type":"ack","sub":"s1","seq":4}"#.into(), false),
            (r#"{"sub":"s1","type":"query:diff","seq":4}"#.into(), false),
            (r#"{ "type":"query:diff","sub":"s1","seq":4}"#.into(), false),
            (r#"{"type":"doc:diff","sub":"s1","doc":"b","seq":2,"lists":{}}"#.into(), false),
            (r#"{"type":"doc:diff","sub":"","doc":"b","base":1,"seq":2,"lists":{}}"#.into(), false),
            (r#"{"type":"query:diff","sub":"s1","seq":4"#.into(), false),
            (r#"{"type":"ack","mid":"m1","seq":4}"#.into(), false),
        ];
        for (frame, taken) in cases {
            check(frame, *taken);
        }
    }
}
