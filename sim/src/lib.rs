//! The deterministic simulation: the real server and many virtual clients inside turmoil, faults,
//! workloads, invariants on snapshots of the world, and one-line repros from a seed.
//!
//! Not built yet: the simulation issue fills this crate.
