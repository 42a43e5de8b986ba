//! Identifiers that arrive from peers, parsed once at the edge so later code never re-checks them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("{kind} is empty")]
    Empty {
        /// What kind of identifier it was.
        kind: &'static str,
    },
    /// The identifier is longer than its limit.
    #[error("{kind} is {length} bytes, more than {max}")]
    TooLong {
        /// What kind of identifier it was.
        kind: &'static str,
        /// Its length in bytes.
        length: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The identifier contains a control character or whitespace.
    #[error("{kind} contains a control or whitespace character")]
    BadCharacter {
        /// What kind of identifier it was.
        kind: &'static str,
    },
}

fn check(kind: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong { kind, length: value.len(), max });
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(IdError::BadCharacter { kind });
    }
    Ok(())
}

/// A string newtype parsed by `$parse`, serialized as the plain string.
macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $error:ty, $parse:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Parses a ", $kind, ".")]
            pub fn new(value: impl Into<String>) -> Result<Self, $error> {
                let value = value.into();
                let parse: fn(&str) -> Result<(), $error> = $parse;
                parse(&value)?;
                Ok(Self(value))
            }

            #[doc = concat!("The ", $kind, " as text.")]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $error;
            fn try_from(value: String) -> Result<Self, $error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// An identifier: non-empty, at most `BYTES_MAX` bytes, no whitespace or control characters.
macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal, BYTES_MAX = $max_value:expr) => {
        text_newtype!($(#[$doc])* $name, $kind, IdError, |value| check($kind, value, $name::BYTES_MAX));

        impl $name {
            #[doc = concat!("The longest ", $kind, " accepted, in bytes.")]
            pub const BYTES_MAX: usize = $max_value;
        }
    };
}

identifier!(
    /// A document id, unique within its room (`docId` in the sources). Ids starting with `sys:` name
    /// system documents.
    DocId, "document id", BYTES_MAX = 256
);
identifier!(
    /// A document type (`type`, or a collection name in the records vocabulary).
    DocType, "document type", BYTES_MAX = 128
);
identifier!(
    /// A subscription id chosen by the client, unique among its connection's live subscriptions.
    SubId, "subscription id", BYTES_MAX = 64
);
identifier!(
    /// A client id: one per client instance, stable across its reconnects; scopes mutation ids.
    ClientId, "client id", BYTES_MAX = 64
);
identifier!(
    /// A user id, as the token's subject names it.
    UserId, "user id", BYTES_MAX = 128
);
identifier!(
    /// A room id (`roomId`): one room, one SQLite database, one ordering authority.
    RoomId, "room id", BYTES_MAX = 128
);
identifier!(
    /// A bucket name: a JSON document bucket or an asset bucket.
    BucketName, "bucket name", BYTES_MAX = 200
);
identifier!(
    /// A name inside a document: an ordered list's name or a rich-text field's name.
    FieldName, "field name", BYTES_MAX = 128
);
identifier!(
    /// An item id inside an ordered list.
    ItemId, "list item id", BYTES_MAX = 128
);
identifier!(
    /// A team id.
    TeamId, "team id", BYTES_MAX = 128
);
identifier!(
    /// An asset's object key inside its bucket, assigned by the server.
    ObjectKey, "object key", BYTES_MAX = 256
);

impl DocId {
    /// The prefix of system documents, which cannot be deleted.
    pub const SYSTEM_PREFIX: &'static str = "sys:";
    /// The prefix of schema documents: `sys:schema:<type>`.
    pub const SCHEMA_PREFIX: &'static str = "sys:schema:";
    /// The prefix of staged views: `sys:stage:<docId>`.
    pub const STAGE_PREFIX: &'static str = "sys:stage:";

    /// Whether this is a system document (`sys:` prefix).
    pub fn is_system(&self) -> bool {
        self.0.starts_with(Self::SYSTEM_PREFIX)
    }

    /// The type a `sys:schema:<type>` document is the schema for.
    pub fn schema_for(&self) -> Option<DocType> {
        self.0.strip_prefix(Self::SCHEMA_PREFIX).and_then(|t| DocType::new(t).ok())
    }
}

text_newtype!(
    /// A fractional index key, validated against the format of [`crate::fracdex`].
    ListKey, "list key", crate::fracdex::FracdexError, crate::fracdex::validate
);
