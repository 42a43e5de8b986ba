//! Whole connection transcripts of raw peer bytes into a room: text frames and Yjs frames on both
//! endpoints (the `Y` envelope of `/ws` and the bare messages of `/yjs`), connects and drops. Run
//! with `-rss_limit_mb` and `-timeout` so that exhaustion (a decode bomb, an answer built past
//! its limit) is a finding too.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../engine/tests/frames/mod.rs"]
mod frames;

fuzz_target!(|input: &[u8]| {
    frames::check_frames(input);
});
