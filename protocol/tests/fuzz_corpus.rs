//! Replays the `protocol_decode` fuzz corpus (fuzz/corpus/protocol_decode) under `cargo test`.

use arbitrary::{Arbitrary, Unstructured};
use roomlab_protocol::fuzzing::{check_decode, DecodeInput};
use std::path::Path;

#[test]
fn protocol_decode_corpus_replays_clean() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/protocol_decode");
    let mut replayed = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&directory)
        .unwrap_or_else(|e| panic!("{}: {e}", directory.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let bytes = std::fs::read(&path).unwrap();
        let input = DecodeInput::arbitrary_take_rest(Unstructured::new(&bytes))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check_decode(&input);
        replayed += 1;
    }
    assert!(replayed >= 10, "only {replayed} corpus entries in {}", directory.display());
}
