//! Error codes on the wire, and the codec's own errors.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An error code carried by an `error` message (docs/PROTOCOL.md, "Error codes").
///
/// A *definite* error means nothing happened; an *indefinite* one means the request may or may not
/// have taken effect, and the client must find out (by replaying with the same mutation id, or by
/// reading).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON, or not a message of this protocol.
    BadFrame,
    /// The frame is larger than `frame_bytes_max`; the connection closes with 1009.
    FrameTooLarge,
    /// The client's `hello` names a protocol version the server does not speak.
    UnsupportedProtocol,
    /// A message other than `hello` arrived before `hello`, or a second `hello` arrived.
    HelloRequired,
    /// The token is missing, forged, expired, or for another room.
    Unauthorized,
    /// The user's role or ownership does not allow this read or write.
    Forbidden,
    /// The document, bucket, asset, team, member or list item does not exist.
    NotFound,
    /// A document with this id already exists and is live.
    Exists,
    /// The document is soft-deleted: restore it, or pick a new id.
    Deleted,
    /// Restore or purge named a document that is not deleted.
    NotDeleted,
    /// System documents (`sys:`) cannot be deleted, purged or written this way.
    Protected,
    /// A guard (`if_seq`, `if_version`) did not match, or a staged document changed before commit.
    Conflict,
    /// The data does not satisfy the schema, or a value is out of its domain (bad key, bad query).
    Invalid,
    /// The write would take the owner's usage past their limit; carries `used` and `limit`.
    QuotaExceeded,
    /// The user's plan has storage (buckets and assets) gated off.
    StorageDisabled,
    /// The bucket exists with another storage contract (backend, schemaId, schemaVersion).
    Incompatible,
    /// A subscription with this id is already live on the connection.
    SubscriptionExists,
    /// No live subscription has this id.
    SubscriptionUnknown,
    /// The connection already has `subscriptions_max` live subscriptions.
    SubscriptionLimit,
    /// A size or count limit was reached (document bytes, list items, query size, ...).
    LimitExceeded,
    /// The mutation id is older than the replay window: it was processed, its result is forgotten.
    ReplayExpired,
    /// The server failed while processing; the change may or may not have been committed.
    Internal,
    /// No answer arrived in time (raised by clients, never sent by a server).
    Timeout,
    /// The connection closed before an answer arrived (raised by clients, never sent by a server).
    Disconnected,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedProtocol,
        ErrorCode::HelloRequired,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Exists,
        ErrorCode::Deleted,
        ErrorCode::NotDeleted,
        ErrorCode::Protected,
        ErrorCode::Conflict,
        ErrorCode::Invalid,
        ErrorCode::QuotaExceeded,
        ErrorCode::StorageDisabled,
        ErrorCode::Incompatible,
        ErrorCode::SubscriptionExists,
        ErrorCode::SubscriptionUnknown,
        ErrorCode::SubscriptionLimit,
        ErrorCode::LimitExceeded,
        ErrorCode::ReplayExpired,
        ErrorCode::Internal,
        ErrorCode::Timeout,
        ErrorCode::Disconnected,
    ];

    /// Whether the error guarantees that nothing happened.
    pub fn is_definite(self) -> bool {
        !matches!(
            self,
            ErrorCode::ReplayExpired | ErrorCode::Internal | ErrorCode::Timeout | ErrorCode::Disconnected
        )
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        // Kept equal to the serde names by the `wire_names_match_serde` test.
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Exists => "exists",
            ErrorCode::Deleted => "deleted",
            ErrorCode::NotDeleted => "not_deleted",
            ErrorCode::Protected => "protected",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Invalid => "invalid",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::StorageDisabled => "storage_disabled",
            ErrorCode::Incompatible => "incompatible",
            ErrorCode::SubscriptionExists => "subscription_exists",
            ErrorCode::SubscriptionUnknown => "subscription_unknown",
            ErrorCode::SubscriptionLimit => "subscription_limit",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::ReplayExpired => "replay_expired",
            ErrorCode::Internal => "internal",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Disconnected => "disconnected",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why [`crate::decode`] refused a frame. Every variant maps to an [`ErrorCode`] the server answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is longer than the limit it was decoded with.
    #[error("frame is {length} bytes, more than {max}")]
    TooLarge {
        /// The frame's length in bytes.
        length: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The frame is not UTF-8 JSON of a known message shape.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A binary frame is not a valid Yjs envelope.
    #[error("malformed binary frame: {0}")]
    MalformedBinary(&'static str),
}

impl DecodeError {
    /// The error code a server answers this with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::Malformed(_) | DecodeError::MalformedBinary(_) => ErrorCode::BadFrame,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in ErrorCode::ALL {
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire.as_str(), Some(code.as_str()));
            let back: ErrorCode = serde_json::from_value(wire).unwrap();
            assert_eq!(back, code);
        }
    }
}
