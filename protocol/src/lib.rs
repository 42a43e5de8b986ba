//! The roomlab wire protocol, version 1: messages, codec, error codes and fractional keys.
//!
//! This crate does no I/O. See docs/PROTOCOL.md for the rules behind every type.

pub mod fracdex;
