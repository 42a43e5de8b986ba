//! The roomlab wire protocol, version 1: messages, codec, error codes, queries and fractional keys.
//!
//! This crate does no I/O, reads no clock and keeps no state: servers, clients, the simulation and
//! the conformance suite all speak through these types. docs/PROTOCOL.md gives the rule behind each
//! type, with a stable id that tests cite.
//!
//! ```
//! use roomlab_protocol::{decode, ClientMessage};
//! let frame = br#"{"type":"ping","nonce":7}"#;
//! assert_eq!(decode(frame, 1024).unwrap(), ClientMessage::Ping { nonce: 7 });
//! ```

mod close;
mod codec;
mod error;
pub mod fracdex;
pub mod fuzzing;
mod ids;
mod message;
mod mutant;
pub mod query;
mod yjs_bounds;

pub use close::CloseCode;
pub use codec::{
    decode, decode_server, encode, encode_server, write_var_uint, Cursor, YSync, YjsFrame, JSON_DEPTH_MAX,
    SERVER_JSON_DEPTH_EXTRA, YJS_FRAME_TAG,
};
pub use error::{DecodeError, ErrorCode};
pub use ids::{
    BucketName, ClientId, DocId, DocType, FieldName, IdError, ItemId, ListKey, ObjectKey, RoomId, SubId,
    TeamId, UserId,
};
pub use message::{
    merge_patch, AssetInfo, Backend, ClientMessage, Contract, DocSnapshot, ErrorBody, Limits, ListDiff,
    ListItem, Mutation, Plan, Role, ServerMessage, Target, MID_MAX, PROTOCOL_VERSION,
};
pub use mutant::Mutant;
pub use query::{Direction, Field, Op, Order, Query, QueryError, Record, Where};
pub use yjs_bounds::{
    awareness_entries, check_yjs_state_vector, check_yjs_update, AwarenessEntry, YJS_NESTING_MAX,
};
