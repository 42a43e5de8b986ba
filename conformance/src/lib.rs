//! The conformance suite: cases that grade any implementation of docs/PROTOCOL.md over a real
//! WebSocket, target adapters, reports, and the mutant kill matrix.
//!
//! Not built yet: the conformance issue fills this crate.
