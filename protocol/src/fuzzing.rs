//! The properties the `protocol_decode` fuzz target checks, shared with the test that replays its
//! corpus under `cargo test`, so the two can never drift apart.

use crate::{decode, decode_server, encode, encode_server, YjsFrame};

/// One fuzz input: a frame and the frame-size limit to decode it with.
#[derive(Debug, arbitrary::Arbitrary)]
pub struct DecodeInput {
    /// The limit, in bytes.
    pub frame_bytes_max: u16,
    /// The frame.
    pub frame: Vec<u8>,
}

/// Decodes the frame every way a peer could send it. Nothing may panic, and whatever decodes must
/// survive encode → decode unchanged.
pub fn check_decode(input: &DecodeInput) {
    let max = usize::from(input.frame_bytes_max);
    if let Ok(message) = decode(&input.frame, max) {
        let again = decode(encode(&message).as_bytes(), usize::MAX).expect("re-encoded frame decodes");
        assert_eq!(again, message, "client message changed across a round trip");
    }
    if let Ok(message) = decode_server(&input.frame, max) {
        let again =
            decode_server(encode_server(&message).as_bytes(), usize::MAX).expect("re-encoded frame decodes");
        assert_eq!(again, message, "server message changed across a round trip");
    }
    if let Ok(frame) = YjsFrame::decode(&input.frame, max) {
        assert_eq!(YjsFrame::decode(&frame.encode(), usize::MAX).expect("re-encoded"), frame);
    }
}
