//! The roomlab server: many rooms behind a WebSocket and HTTP endpoint, generic over its listener so
//! that the same code runs on tokio TCP and on turmoil's simulated TCP.
//!
//! Not built yet: the server and client issue fills this crate.
