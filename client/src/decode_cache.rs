//! Frames decoded once for many clients in one process.
//!
//! A server fans each change out to every subscriber, so clients that run side by side in one
//! process (a simulation, a load generator) receive the same bytes many times over: in roomlab's
//! swarm simulation nine frames in ten equal a frame another client also received. Decoding JSON
//! costs several times what copying the decoded message costs, so clients that share a cache decode
//! each distinct frame once and clone the message for the others.

use roomlab_protocol::{decode_server, DecodeError, ServerMessage};
use std::hash::BuildHasher;
use std::sync::Mutex;

/// A bounded cache of decoded server frames, keyed by their bytes, shared by the clients that name
/// it in [`crate::ClientConfig::decode_cache`].
///
/// It is direct-mapped: a frame may live only in the slot its hash picks, and a new frame there
/// replaces the old one. It keeps its own copy of each frame it holds, and holds only frames up to
/// its `frame_bytes_max`, so its memory stays under `entries_max` times that (plus the decoded
/// messages); longer frames are decoded every time. What a client receives never depends on the
/// cache: a hit is a frame byte for byte equal to one decoded before, and decoding is a pure
/// function of the bytes, so the cache changes only how often the decoder runs.
pub struct DecodeCache {
    slots: Mutex<Slots>,
    frame_bytes_max: usize,
}

struct Slots {
    entries: Vec<Option<(Box<[u8]>, ServerMessage)>>,
    hits: u64,
    misses: u64,
}

impl DecodeCache {
    /// A cache of `entries_max` frames (at least one) of at most `frame_bytes_max` bytes each.
    pub fn new(entries_max: usize, frame_bytes_max: usize) -> DecodeCache {
        let entries = (0..entries_max.max(1)).map(|_| None).collect();
        DecodeCache { slots: Mutex::new(Slots { entries, hits: 0, misses: 0 }), frame_bytes_max }
    }

    /// Frames answered from the cache, and frames decoded, so far.
    pub fn counts(&self) -> (u64, u64) {
        let slots = self.slots.lock().expect("decode cache lock");
        (slots.hits, slots.misses)
    }

    /// The frame decoded as [`decode_server`] decodes it, from the cache when an equal frame was
    /// decoded before. Frames over `frame_bytes_max` and frames that do not decode are refused as
    /// `decode_server` refuses them, and are not kept; frames longer than the cache holds are
    /// decoded and not kept.
    pub(crate) fn decode(&self, frame: &[u8], frame_bytes_max: usize) -> Result<ServerMessage, DecodeError> {
        if frame.len() > frame_bytes_max.min(self.frame_bytes_max) {
            return decode_server(frame, frame_bytes_max);
        }
        // Any hash would do for what a client receives; a fixed one keeps the hit counts the same
        // from run to run.
        let hash = foldhash::fast::FixedState::default().hash_one(frame);
        let mut slots = self.slots.lock().expect("decode cache lock");
        let at = (hash % slots.entries.len() as u64) as usize;
        if let Some((text, message)) = &slots.entries[at] {
            if **text == *frame {
                let message = message.clone();
                slots.hits += 1;
                return Ok(message);
            }
        }
        slots.misses += 1;
        let message = decode_server(frame, frame_bytes_max)?;
        slots.entries[at] = Some((frame.into(), message.clone()));
        Ok(message)
    }
}

impl std::fmt::Debug for DecodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (hits, misses) = self.counts();
        f.debug_struct("DecodeCache").field("hits", &hits).field("misses", &misses).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case: frames decoded through one small cache, in order; every answer must equal what
    /// `decode_server` answers, and the counts say how many were decoded.
    fn check(cache_entries: usize, frames: &[&str], limit: usize, hits_expected: u64) {
        let cache = DecodeCache::new(cache_entries, 1 << 10);
        for frame in frames {
            let cached = cache.decode(frame.as_bytes(), limit);
            let direct = decode_server(frame.as_bytes(), limit);
            assert_eq!(cached.is_ok(), direct.is_ok(), "{frame}");
            if let (Ok(cached), Ok(direct)) = (cached, direct) {
                assert_eq!(cached, direct, "{frame}");
            }
        }
        assert_eq!(cache.counts().0, hits_expected, "hits for {frames:?}");
    }

    #[test]
    fn cached_frames_decode_as_the_decoder_decodes_them() {
        let diff = r#"{"type":"query:diff","sub":"q1","seq":7,"changed":[{"id":"t1","doc_type":"tasks","seq":7,"owner":"u1","data":{"title":"a"}}]}"#;
        let other = r#"{"type":"query:diff","sub":"q2","seq":7,"changed":[{"id":"t1","doc_type":"tasks","seq":7,"owner":"u1","data":{"title":"a"}}]}"#;
        let pong = r#"{"type":"pong","nonce":3}"#;
        // The same frame three times: decoded once.
        check(8, &[diff, diff, diff], 1 << 20, 2);
        // Frames that differ in one byte are different frames.
        check(8, &[diff, other, diff, other], 1 << 20, 2);
        // One slot: each new frame replaces the last, and answers stay right.
        check(1, &[diff, pong, diff, diff], 1 << 20, 1);
        // Frames over the limit and frames that do not decode are refused every time, never kept.
        check(8, &[pong, pong], 4, 0);
        // Frames longer than the cache holds decode every time.
        let long = format!(r#"{{"type":"error","code":"internal","message":"{}"}}"#, "x".repeat(2_000));
        assert!(decode_server(long.as_bytes(), 1 << 20).is_ok(), "the long frame must decode");
        check(8, &[&long, &long], 1 << 20, 0);
        check(8, &[r#"{"type":"nope"}"#, r#"{"type":"nope"}"#], 1 << 20, 0);
    }

    /// A client with a smaller frame limit than the one that filled the cache still has its limit.
    #[test]
    fn a_kept_frame_is_refused_over_a_smaller_limit() {
        let cache = DecodeCache::new(8, 1 << 10);
        let pong = br#"{"type":"pong","nonce":3}"#;
        assert!(cache.decode(pong, 1 << 20).is_ok());
        assert!(matches!(cache.decode(pong, 4), Err(DecodeError::TooLarge { .. })));
        assert_eq!(cache.decode(pong, 1 << 20), decode_server(pong, 1 << 20));
        assert_eq!(cache.counts(), (1, 1));
    }
}
