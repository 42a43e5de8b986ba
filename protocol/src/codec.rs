//! Frames to messages and back. Text frames carry JSON messages; binary frames carry Yjs envelopes.

use crate::error::DecodeError;
use crate::ids::{DocId, FieldName};
use crate::message::{ClientMessage, ServerMessage};
use serde::de::DeserializeOwned;

/// Decodes a client's text frame, refusing frames longer than `frame_bytes_max`.
pub fn decode(frame: &[u8], frame_bytes_max: usize) -> Result<ClientMessage, DecodeError> {
    decode_json(frame, frame_bytes_max)
}

/// Decodes a server's text frame, refusing frames longer than `frame_bytes_max`.
pub fn decode_server(frame: &[u8], frame_bytes_max: usize) -> Result<ServerMessage, DecodeError> {
    decode_json(frame, frame_bytes_max)
}

fn decode_json<T: DeserializeOwned>(frame: &[u8], max: usize) -> Result<T, DecodeError> {
    check_size(frame, max)?;
    serde_json::from_slice(frame).map_err(|e| DecodeError::Malformed(e.to_string()))
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
