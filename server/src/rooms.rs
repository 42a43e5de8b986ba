//! The room registry and the room actor: one task per open room owns its engine `Room`, so every
//! change of a room is made by one writer in arrival order (docs/PROTOCOL.md room.one-authority).

use crate::buggify::{reorder_by_connection, Buggify, FaultPoint};
use crate::journal::{Journal, JournalEntry, JournalInput, JournalKind};
use crate::{Clock, ServerConfig};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use roomlab_engine::{ConnId, Effect, Identity, Room};
use roomlab_protocol::{encode_server, ClientMessage, CloseCode, ErrorCode, RoomId, ServerMessage, YjsFrame};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A frame on its way to one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outbound {
    /// A JSON message, shared by every connection that receives the same one.
    Text(Utf8Bytes),
    /// A Yjs envelope.
    Yjs(YjsFrame),
    /// A WebSocket ping (conn.heartbeat).
    Ping,
}

/// Why and how a connection must close: a WebSocket close code and a reason.
pub(crate) type CloseOrder = Option<(CloseCode, String)>;

impl Outbound {
    /// What the frame holds in memory while it waits, in bytes.
    pub fn bytes(&self) -> usize {
        match self {
            Outbound::Text(text) => text.len(),
            Outbound::Yjs(frame) => {
                frame.payload.len() + frame.doc.as_str().len() + frame.field.as_str().len()
            }
            Outbound::Ping => 0,
        }
    }
}

/// The close reason of a slow consumer, whichever of its queue's limits it passed.
const SLOW_CONSUMER: &str = "slow consumer: outbound queue full";

/// The room's way to reach one connection: a queue bounded in frames and in bytes, and a close
/// signal.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    pub messages: mpsc::Sender<Outbound>,
    pub close: watch::Sender<CloseOrder>,
    /// Bytes of frames queued and not yet written; the writer takes back what it wrote.
    pub queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    pub queued_bytes_max: usize,
}

impl Outbox {
    /// Queues a frame; a queue full in frames or in bytes closes the connection as a slow
    /// consumer (conn.slow-consumer), so what one reader holds stays within its budget.
    pub fn deliver(&self, frame: Outbound) {
        if self.close.borrow().is_some() {
            return;
        }
        let bytes = frame.bytes();
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if queued > self.queued_bytes_max {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.order_close(CloseCode::SlowConsumer, SLOW_CONSUMER);
            return;
        }
        if self.messages.try_send(frame).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.order_close(CloseCode::SlowConsumer, SLOW_CONSUMER);
        }
    }

    /// The writer sent `bytes` of queued frames.
    pub fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Asks the connection to close with `code`, unless a close was already asked for.
    pub fn order_close(&self, code: CloseCode, reason: &str) {
        self.close.send_if_modified(|order| {
            let first = order.is_none();
            if first {
                *order = Some((code, reason.to_string()));
            }
            first
        });
    }
}

/// What a connection asks of its room.
pub(crate) enum Input {
    Connect {
        conn: ConnId,
        identity: Identity,
        peer: Option<std::net::SocketAddr>,
        outbox: Outbox,
    },
    Message {
        conn: ConnId,
        message: ClientMessage,
    },
    Yjs {
        conn: ConnId,
        frame: YjsFrame,
    },
    Disconnect {
        conn: ConnId,
    },
    /// A mutation from HTTP (asset upload or delete), answered on `reply`.
    Detached {
        conn: ConnId,
        identity: Identity,
        mutation: roomlab_protocol::Mutation,
        reply: tokio::sync::oneshot::Sender<ServerMessage>,
    },
}

/// Answers to HTTP mutations, each with where it goes, held until their commit group commits.
type Replies = Vec<(tokio::sync::oneshot::Sender<ServerMessage>, ServerMessage)>;

/// A shared view of one open room, for asset downloads and for the simulation's snapshots.
pub type SharedRoom = Arc<Mutex<Room>>;

struct Open {
    inputs: mpsc::Sender<Input>,
    room: SharedRoom,
}

/// Every open room by id. A panic while the lock is held (an engine assertion while a room opens)
/// cannot leave the map half-written, since it is changed only after a room has opened; so a
/// poisoned lock is taken as it is, and one broken room does not take every other room down.
#[derive(Default)]
pub(crate) struct Registry {
    rooms: Mutex<BTreeMap<RoomId, Open>>,
}

impl Registry {
    /// The room's input queue and shared state, opening the room (and starting its actor) on
    /// first use.
    pub fn open(
        self: &Arc<Self>,
        id: &RoomId,
        config: &ServerConfig,
        clock: &Clock,
        stopping: watch::Receiver<bool>,
    ) -> Result<(mpsc::Sender<Input>, SharedRoom), roomlab_engine::EngineError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = rooms.get(id).filter(|open| !open.inputs.is_closed()) {
            return Ok((open.inputs.clone(), open.room.clone()));
        }
        let path = config.data.as_ref().map(|dir| dir.join(format!("{}.sqlite", file_name(id))));
        let mut engine = config.engine.clone();
        let commit_failed = Arc::new(AtomicBool::new(false));
        if let Some(buggify) = config.buggify.clone() {
            let commit_failed = commit_failed.clone();
            engine.storage_faults = roomlab_engine::StorageFaults::new(move |_| {
                let fails = buggify.fire(FaultPoint::StorageFails);
                commit_failed.fetch_or(fails, Ordering::Relaxed);
                fails
            });
        }
        let room = Room::open(id.clone(), path.as_deref(), engine)?;
        let room = Arc::new(Mutex::new(room));
        let (inputs, receiver) = mpsc::channel(config.room_queue_max);
        let rng = ChaCha8Rng::seed_from_u64(config.seed ^ stable_hash(id.as_str()));
        let actor = Actor {
            id: id.clone(),
            room: room.clone(),
            outboxes: BTreeMap::new(),
            rng,
            clock: clock.clone(),
            registry: self.clone(),
            idle_close_ms: config.idle_close_ms,
            group_commit_max: config.group_commit_max.max(1),
            stopping,
            buggify: config.buggify.clone(),
            journal: config.journal.clone(),
            commit_failed,
        };
        if let Some(journal) = &config.journal {
            journal.write(JournalEntry::Opened { room: id.clone() });
        }
        crate::spawn(config.local_tasks, actor.run(receiver));
        rooms.insert(id.clone(), Open { inputs: inputs.clone(), room: room.clone() });
        Ok((inputs, room))
    }

    /// The open rooms.
    pub fn snapshot(&self) -> Vec<(RoomId, SharedRoom)> {
        let rooms = self.rooms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        rooms.iter().map(|(id, open)| (id.clone(), open.room.clone())).collect()
    }

    /// Forgets a room whose actor stopped, unless it was already reopened.
    fn forget(&self, id: &RoomId, room: &SharedRoom) {
        let mut rooms = self.rooms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if rooms.get(id).is_some_and(|open| Arc::ptr_eq(&open.room, room)) {
            rooms.remove(id);
        }
    }
}

/// A file name for a room id: ids may hold any printable character, so everything but
/// `[A-Za-z0-9_-]` is hex-escaped, which keeps names unique and safe on every file system. An
/// escaped id can pass the 255 bytes a file name may have (a 128-byte id of `é`s escapes to 768),
/// so a long one keeps a prefix and adds two independent 64-bit hashes of the whole id after a
/// `~`, which no escaped name contains.
pub(crate) fn file_name(id: &RoomId) -> String {
    let mut name = String::new();
    for byte in id.as_str().bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => name.push(byte as char),
            _ => name.push_str(&format!("%{byte:02x}")),
        }
    }
    if name.len() > FILE_NAME_BYTES_MAX {
        let reversed: String = id.as_str().chars().rev().collect();
        let mut cut = FILE_NAME_PREFIX_BYTES;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name = format!("{}~{:016x}{:016x}", &name[..cut], stable_hash(id.as_str()), stable_hash(&reversed));
    }
    name
}

/// The longest escaped room id used as a file name as it is (the `.sqlite` suffix and SQLite's
/// `-wal` and `-shm` files must still fit in 255 bytes).
const FILE_NAME_BYTES_MAX: usize = 200;
/// What a long name keeps of its escaped id before its hashes.
const FILE_NAME_PREFIX_BYTES: usize = 120;

/// FNV-1a: a hash that is the same in every process, unlike std's randomly keyed one.
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}

struct Actor {
    id: RoomId,
    room: SharedRoom,
    outboxes: BTreeMap<ConnId, Outbox>,
    rng: ChaCha8Rng,
    clock: Clock,
    registry: Arc<Registry>,
    idle_close_ms: u64,
    group_commit_max: usize,
    /// The server's shutdown signal: a room without connections closes at once when it is set.
    stopping: watch::Receiver<bool>,
    /// Fault points a simulation turned on.
    buggify: Option<Arc<Buggify>>,
    /// Where the room writes what it did, if a host asked.
    journal: Option<Journal>,
    /// Set by the storage fault point when it fails a commit, so the journal can say which input's.
    commit_failed: Arc<AtomicBool>,
}

impl Actor {
    async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        let idle = std::time::Duration::from_millis(self.idle_close_ms);
        loop {
            let input = if self.outboxes.is_empty() {
                let mut stopping = self.stopping.clone();
                tokio::select! {
                    biased;
                    received = tokio::time::timeout(idle, inputs.recv()) => match received {
                        Ok(input) => input,
                        Err(_elapsed) if inputs.is_empty() => None,
                        Err(_elapsed) => continue,
                    },
                    _ = stopping.wait_for(|stop| *stop) => None,
                }
            } else {
                inputs.recv().await
            };
            let Some(input) = input else { break };
            if let Some(buggify) = self.buggify.as_ref().filter(|b| b.fire(FaultPoint::RoomStall)) {
                let stall_ms = 1 + buggify.below(300);
                tokio::time::sleep(std::time::Duration::from_millis(stall_ms)).await;
            }
            // Whatever else is already queued joins this input's commit group, so a busy room
            // pays for one SQLite commit per group instead of one per change.
            let mut group = vec![input];
            while group.len() < self.group_commit_max {
                match inputs.try_recv() {
                    Ok(input) => group.push(input),
                    Err(_) => break,
                }
            }
            self.handle_group(group);
        }
        // Closing the queue first makes late senders reopen the room instead of waiting on it.
        inputs.close();
        self.registry.forget(&self.id, &self.room);
        tracing::debug!(room = %self.id, "room closed");
    }

    /// Handles a group of inputs in one commit group and carries out their effects once it has
    /// committed; a failed group commit closes every connection instead (the room reloaded its
    /// committed state and forgot them).
    fn handle_group(&mut self, group: Vec<Input>) {
        let now_ms = self.clock.now_ms();
        let mut held = Vec::new();
        let mut replies = Vec::new();
        let mut journal = Vec::new();
        let committed = {
            let shared = self.room.clone();
            let mut room = shared.lock().expect("room lock");
            let grouped = group.len() > 1;
            let begun = if grouped { room.begin_group() } else { Ok(()) };
            if let Err(e) = begun {
                tracing::warn!(room = %self.id, "cannot open a commit group: {e}");
            }
            for input in group {
                let journaled = self.journal.is_some().then(|| journal_input(&input));
                self.commit_failed.store(false, Ordering::Relaxed);
                let failures = room.storage_failures();
                held.push(self.handle(&mut room, input, now_ms, &mut replies));
                if let Some(mut journaled) = journaled {
                    // The storage fault point fired, or the disk itself refused the write.
                    journaled.commit_failed =
                        self.commit_failed.load(Ordering::Relaxed) || room.storage_failures() > failures;
                    journal.push(journaled);
                }
            }
            let committed = room.commit_group();
            (committed, room.seq())
        };
        let (committed, seq) = committed;
        if let Some(sink) = &self.journal {
            let room = self.id.clone();
            sink.write(JournalEntry::Group {
                room,
                now_ms,
                inputs: journal,
                seq,
                committed: committed.is_ok(),
            });
        }
        if let Err(e) = committed {
            tracing::warn!(room = %self.id, "group commit failed; closing every connection: {e}");
            let reason = format!("storage failed: {e}");
            for outbox in std::mem::take(&mut self.outboxes).values() {
                outbox.order_close(CloseCode::InternalError, &reason);
            }
            for (reply, _) in replies {
                let body = roomlab_protocol::ErrorBody::new(ErrorCode::Internal, reason.clone());
                let _ = reply.send(ServerMessage::Error(body));
            }
            return;
        }
        for (reply, answer) in replies {
            let _ = reply.send(answer);
        }
        for effects in held {
            self.carry_out_all(effects);
        }
    }

    /// Handles one input; answers to HTTP mutations are added to `replies`, to be sent once the
    /// group commits.
    fn handle(&mut self, room: &mut Room, input: Input, now_ms: u64, replies: &mut Replies) -> Vec<Effect> {
        match input {
            Input::Connect { conn, identity, outbox, .. } => {
                self.outboxes.insert(conn, outbox);
                room.connect(conn, identity, now_ms)
            }
            Input::Message { conn, message } => {
                let mutation = matches!(message, ClientMessage::Mutate { .. });
                let mut effects = room.handle(conn, message, now_ms);
                if mutation {
                    self.maybe_lose_ack(conn, &mut effects);
                }
                effects
            }
            Input::Yjs { conn, frame } => room.handle_yjs(conn, frame, &mut self.rng),
            Input::Disconnect { conn } => {
                self.outboxes.remove(&conn);
                room.disconnect(conn)
            }
            Input::Detached { conn, identity, mutation, reply } => {
                let (answer, effects) = room.mutate_detached(conn, identity, mutation, now_ms);
                replies.push((reply, answer));
                effects
            }
        }
    }

    fn carry_out_all(&mut self, effects: Vec<Effect>) {
        let mut encodings = Encodings::default();
        let reorder = self.buggify.as_ref().is_some_and(|b| b.fire(FaultPoint::BroadcastReorder));
        if reorder {
            let keyed: Vec<(ConnId, Effect)> =
                effects.into_iter().map(|effect| (effect.conn(), effect)).collect();
            for (_, effect) in reorder_by_connection(keyed) {
                self.carry_out(effect, &mut encodings);
            }
            return;
        }
        for effect in effects {
            self.carry_out(effect, &mut encodings);
        }
    }

    /// BUGGIFY: the writer's connection drops instead of carrying the ack of a committed
    /// mutation; the pushes to everyone else still go out.
    fn maybe_lose_ack(&self, conn: ConnId, effects: &mut [Effect]) {
        let acked = |effect: &Effect| matches!(effect, Effect::Send { conn: to, message: ServerMessage::Ack { .. } } if *to == conn);
        let Some(position) = effects.iter().position(acked) else { return };
        if self.buggify.as_ref().is_some_and(|b| b.fire(FaultPoint::AckLost)) {
            let reason = "connection lost (BUGGIFY ack-lost)".to_string();
            effects[position] = Effect::Close { conn, code: CloseCode::GoingAway, reason };
        }
    }

    fn carry_out(&mut self, effect: Effect, encodings: &mut Encodings) {
        let (conn, frame) = match effect {
            Effect::Send { conn, message } => (conn, Outbound::Text(encodings.encode(message))),
            Effect::Yjs { conn, frame } => (conn, Outbound::Yjs(frame)),
            Effect::Close { conn, code, reason } => {
                if let Some(outbox) = self.outboxes.get(&conn) {
                    outbox.order_close(code, &reason);
                }
                return;
            }
        };
        if let Some(outbox) = self.outboxes.get(&conn) {
            outbox.deliver(frame);
        }
    }
}

/// How an input reads in the journal.
fn journal_input(input: &Input) -> JournalInput {
    let (conn, kind) = match input {
        Input::Connect { conn, identity, peer, .. } => {
            (*conn, JournalKind::Connect { identity: identity.clone(), peer: *peer })
        }
        Input::Message { conn, message } => (*conn, JournalKind::Message(message.clone())),
        Input::Yjs { conn, frame } => (*conn, JournalKind::Yjs(frame.clone())),
        Input::Disconnect { conn } => (*conn, JournalKind::Disconnect),
        Input::Detached { conn, identity, mutation, .. } => {
            (*conn, JournalKind::Http { identity: identity.clone(), mutation: mutation.clone() })
        }
    };
    JournalInput { conn, kind, commit_failed: false }
}

/// The frames of the messages sent lately. A change reaches every subscriber as its own message,
/// yet most are byte for byte the same (clients number their subscriptions alike, so the `sub`
/// ids agree); each is encoded once and its frame shared.
#[derive(Default)]
struct Encodings {
    recent: std::collections::VecDeque<(ServerMessage, Utf8Bytes)>,
}

impl Encodings {
    /// Distinct messages remembered; a change's pushes alternate among a few.
    const RECENT_MAX: usize = 8;

    fn encode(&mut self, message: ServerMessage) -> Utf8Bytes {
        if let Some((_, frame)) = self.recent.iter().find(|(sent, _)| *sent == message) {
            return frame.clone();
        }
        let frame = Utf8Bytes::from(encode_server(&message));
        if self.recent.len() == Self::RECENT_MAX {
            self.recent.pop_back();
        }
        self.recent.push_front((message, frame.clone()));
        frame
    }
}

/// The error frame a connection answers itself, without its room (bad frames, for example).
pub(crate) fn error_frame(code: ErrorCode, message: &str) -> Outbound {
    let body = roomlab_protocol::ErrorBody::new(code, message);
    Outbound::Text(encode_server(&roomlab_protocol::ServerMessage::Error(body)).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_messages_share_one_encoding_and_others_get_their_own() {
        let pong = |nonce: u64| ServerMessage::Pong { nonce };
        let mut encodings = Encodings::default();
        let mut check = |message: ServerMessage, shared_with: Option<&Utf8Bytes>| {
            let frame = encodings.encode(message.clone());
            assert_eq!(frame.as_str(), encode_server(&message), "the frame is the message's encoding");
            if let Some(earlier) = shared_with {
                assert_eq!(frame.as_str().as_ptr(), earlier.as_str().as_ptr(), "{message:?} was not shared");
            }
            frame
        };
        let first = check(pong(1), None);
        let second = check(pong(2), None);
        assert_ne!(first.as_str().as_ptr(), second.as_str().as_ptr());
        check(pong(1), Some(&first));
        check(pong(2), Some(&second));
        // Past the remembered few, the oldest is encoded afresh (and still correctly).
        for nonce in 3..3 + Encodings::RECENT_MAX as u64 {
            check(pong(nonce), None);
        }
        let again = check(pong(1), None);
        assert_ne!(again.as_str().as_ptr(), first.as_str().as_ptr(), "pong 1 should have been forgotten");
    }

    #[test]
    fn room_file_names_are_unique_and_plain() {
        let check = |id: &str, expected: &str| assert_eq!(file_name(&RoomId::new(id).unwrap()), expected);
        check("canvas-9", "canvas-9");
        check("a/b", "a%2fb");
        check("a%2fb", "a%252fb");
        check("../x", "%2e%2e%2fx");
        // Long escaped ids stay under the file system's 255 bytes and stay apart.
        let long = |id: &str| file_name(&RoomId::new(id).unwrap());
        let dots = ".".repeat(84) + &"é".repeat(22);
        for id in [dots.as_str(), &"é".repeat(64), &"a".repeat(128)] {
            assert!(long(id).len() + ".sqlite-wal".len() <= 255, "{id}: {}", long(id));
        }
        assert_ne!(long(&"é".repeat(64)), long(&("é".repeat(63) + "è")));
    }
}
