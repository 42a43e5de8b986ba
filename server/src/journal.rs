//! The room's journal: its claim of what it did, in order. A host that judges the server (the
//! simulation's history checker) reads it as a *claim* and verifies it: every input must be one a
//! client sent on that connection, in the order it sent them, and replaying the journal through an
//! independent oracle must predict every frame the clients received. Off unless a host asks.

use roomlab_engine::{ConnId, Identity};
use roomlab_protocol::{ClientMessage, Mutation, RoomId, YjsFrame};
use std::net::SocketAddr;
use std::sync::Arc;

/// One entry of a room's journal.
#[derive(Debug, Clone)]
pub enum JournalEntry {
    /// The room opened (first use, after an idle close, or after a crash and restart): it holds its
    /// committed state and no connection.
    Opened {
        /// The room.
        room: RoomId,
    },
    /// One commit group, journaled once it committed or failed: its inputs in the order the room
    /// handled them. Nothing of a group is shown before this entry is written.
    Group {
        /// The room.
        room: RoomId,
        /// The room's clock while it handled the group, in Unix milliseconds.
        now_ms: u64,
        /// The inputs, in order.
        inputs: Vec<JournalInput>,
        /// The room's sequence once the group was handled (a claim the checker compares with
        /// its own count of accepted changes, which places a disagreement at its group).
        seq: u64,
        /// Whether the group's transaction committed; when it did not, every connection of the
        /// room was closed with 1011 and nothing of the group was kept or shown.
        committed: bool,
    },
}

/// One input of a commit group.
#[derive(Debug, Clone)]
pub struct JournalInput {
    /// The connection it came from (HTTP requests get a connection id of their own).
    pub conn: ConnId,
    /// What it was.
    pub kind: JournalKind,
    /// The database refused this input's commit (a storage fault): the room answered `internal`.
    pub commit_failed: bool,
}

/// What an input was.
#[derive(Debug, Clone)]
pub enum JournalKind {
    /// A WebSocket connection joined the room.
    Connect {
        /// Who its token names.
        identity: Identity,
        /// The peer's address, as the listener reported it.
        peer: Option<SocketAddr>,
    },
    /// A text message from the connection.
    Message(ClientMessage),
    /// A Yjs frame from the connection.
    Yjs(YjsFrame),
    /// The connection closed.
    Disconnect,
    /// A mutation over HTTP (asset upload or delete).
    Http {
        /// Who its token names.
        identity: Identity,
        /// The mutation.
        mutation: Mutation,
    },
}

/// Where a server writes its rooms' journals.
#[derive(Clone)]
pub struct Journal(Arc<dyn Fn(JournalEntry) + Send + Sync>);

impl Journal {
    /// A journal that hands every entry to `write`, in the order the rooms write them.
    pub fn new(write: impl Fn(JournalEntry) + Send + Sync + 'static) -> Journal {
        Journal(Arc::new(write))
    }

    pub(crate) fn write(&self, entry: JournalEntry) {
        (self.0)(entry)
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}
