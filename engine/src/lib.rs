//! The room engine: one room, one SQLite database, the rules of docs/PROTOCOL.md, as a sans-I/O state
//! machine that takes messages, time and randomness as arguments and returns effects.
//!
//! A [`Room`] holds documents (with ordered lists, soft delete, restore and purge), schemas and access
//! rules, users and teams, staged sessions, buckets and assets, per-user quotas and Yjs fields. Every
//! accepted change is one SQLite transaction; its ack and pushes are produced only after the commit,
//! and reopening the database restores exactly the committed state.

mod commit;
/// Fuzzing helpers: the `room_frames` fuzz target's check, replayed on its corpus by `cargo test`.
mod mutate;
mod room;
mod schema;
mod state;
mod storage;
mod watch;
mod yjs;

pub use room::{Config, ConnId, Effect, Export, Identity, Room, StorageFaults};
pub use state::Quotas;

/// Why the engine could not open or use its database.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database holds a value the engine cannot read back.
    #[error("corrupt database: {0}")]
    Corrupt(String),
}
