//! Replays the `engine_ops` fuzz corpus (fuzz/corpus/engine_ops) under `cargo test`: every script
//! runs on a room and on the oracle, which must agree.

mod frames;
mod twin;

use roomlab_engine::{Config, Quotas};
use roomlab_protocol::Limits;
use std::path::Path;
use twin::check_script;

/// The inputs of the fuzz corpus `name`, in file-name order, and where they are.
fn corpus(name: &str) -> (Vec<Vec<u8>>, String) {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(name);
    let mut entries: Vec<_> = std::fs::read_dir(&directory)
        .unwrap_or_else(|e| panic!("{}: {e}", directory.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    (entries.iter().map(|path| std::fs::read(path).unwrap()).collect(), directory.display().to_string())
}

#[test]
fn engine_ops_corpus_replays_clean() {
    let (inputs, directory) = corpus("engine_ops");
    let (mut scripts, mut lines) = (0, 0);
    for input in inputs {
        let scratch = tempfile::tempdir().unwrap();
        // The same limits as the fuzz target, so a crash it found replays here.
        let limits =
            Limits { list_items_max: 2, replay_window_max: 4, subscriptions_max: 3, ..Limits::default() };
        let config = Config {
            limits,
            quotas: Quotas { free_bytes: 300, pro_bytes: 600, addon_bytes: 0 },
            ..Config::default()
        };
        lines += check_script(&scratch.path().join("room.sqlite"), config, &input);
        scripts += 1;
    }
    assert!(scripts >= 10 && lines >= 100, "only {scripts} scripts ({lines} lines) in {directory}");
}

#[test]
fn room_frames_corpus_replays_clean() {
    let (inputs, directory) = corpus("room_frames");
    let (mut transcripts, mut records) = (0, 0);
    for input in inputs {
        records += frames::check_frames(&input);
        transcripts += 1;
    }
    assert!(
        transcripts >= 10 && records >= 100,
        "only {transcripts} transcripts ({records} records) in {directory}"
    );
}
