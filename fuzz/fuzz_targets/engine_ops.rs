//! Arbitrary operation scripts into a room and the oracle (the spec as plain code): they must agree on every reply,
//! every push and the final state, and the room's invariants must hold throughout.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../engine/tests/twin/mod.rs"]
mod twin;
use roomlab_engine::{Config, Quotas};
use roomlab_protocol::Limits;
use twin::check_script;

fuzz_target!(|input: &[u8]| {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let limits =
        Limits { list_items_max: 2, replay_window_max: 4, subscriptions_max: 3, ..Limits::default() };
    let config = Config {
        limits,
        quotas: Quotas { free_bytes: 300, pro_bytes: 600, addon_bytes: 0 },
        ..Config::default()
    };
    check_script(&directory.path().join("room.sqlite"), config, input);
});
