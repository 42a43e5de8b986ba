//! The room engine: one room, one SQLite database, every rule of docs/PROTOCOL.md, as a sans-I/O
//! state machine that takes messages, time and randomness as arguments and returns effects.
//!
//! Not built yet: the engine issue fills this crate.
