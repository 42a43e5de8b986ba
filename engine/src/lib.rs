//! The room engine: one room, one SQLite database, the rules of docs/PROTOCOL.md, as a sans-I/O state
//! machine that takes messages and time as arguments and returns effects.
//!
//! Built so far: connections (hello, ping), documents (create, put, patch, soft delete, restore at the
//! same sequence, purge), the room-wide sequence, guards (`if_seq`), idempotent replay of mutation ids,
//! document and query subscriptions with diffs, `sys:index` and `sys:trash`. Every accepted change is one
//! SQLite transaction and its ack and pushes are produced only after the commit.

mod room;
mod storage;

pub use room::{Config, ConnId, Effect, Identity, Room};

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
