//! The roomlab client a widget would use: a record store cache, reference-counted subscriptions,
//! confirmed and fire-and-forget mutations, reconnection with backoff, and replay.
//!
//! Not built yet: the server and client issue fills this crate.
