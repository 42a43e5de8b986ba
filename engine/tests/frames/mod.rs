//! The fuzz target `room_frames` and its corpus replay (fuzz/fuzz_targets/room_frames.rs includes
//! this file by path): whole connection transcripts of raw peer
//! bytes (text frames, enveloped Yjs frames, bare y-websocket payloads, connects and disconnects)
//! against a room, decoded at the edge as the server decodes them. Nothing may panic, the room's
//! invariants hold after every input, and every frame the room sends is one a conforming client
//! reads (docs/PROTOCOL.md limits.frame-size, limits.json-depth).

use roomlab_engine::{Config, ConnId, Effect, Identity, Room};
use roomlab_protocol::{
    decode, decode_server, encode_server, ClientId, ClientMessage, DocId, FieldName, Role, RoomId, UserId,
    YjsFrame, PROTOCOL_VERSION,
};

/// Records run per input, so one input cannot run for ever.
const RECORDS_MAX: usize = 256;

/// The connections of a transcript: who each one is.
const PEOPLE: [(&str, Role); 4] =
    [("ada", Role::Admin), ("bob", Role::Member), ("cat", Role::Member), ("val", Role::Viewer)];

/// A deterministic stream for the yrs client ids the room draws (splitmix64).
struct Stream(u64);

impl rand_core::RngCore for Stream {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// One record of a transcript: a tag byte (connection in the low two bits, kind in the next
/// two), a little-endian u16 length, and that many bytes.
enum Record<'a> {
    /// A text frame on the protocol socket.
    Text(usize, &'a [u8]),
    /// A binary frame on the protocol socket (a `Y` envelope).
    Binary(usize, &'a [u8]),
    /// A bare y-protocols message on the y-websocket socket of document `y`, field `body`.
    Bare(usize, &'a [u8]),
    /// The connection drops (if open) or connects and greets (if not).
    Toggle(usize),
}

fn records(mut input: &[u8]) -> impl Iterator<Item = Record<'_>> {
    std::iter::from_fn(move || {
        let (&tag, rest) = input.split_first()?;
        let length = match rest {
            [low, high, ..] => usize::from(u16::from_le_bytes([*low, *high])),
            _ => 0,
        };
        let body = rest.get(2..).unwrap_or_default();
        let (bytes, after) = body.split_at(length.min(body.len()));
        input = after;
        let conn = usize::from(tag & 0b11);
        Some(match (tag >> 2) & 0b11 {
            0 => Record::Text(conn, bytes),
            1 => Record::Binary(conn, bytes),
            2 => Record::Bare(conn, bytes),
            _ => Record::Toggle(conn),
        })
    })
    .take(RECORDS_MAX)
}

/// The room's limits for transcripts: small, so that a few records reach every one of them (a
/// 4 KiB frame, 1 KiB documents, four subscriptions, a replay window of four).
fn config() -> Config {
    let limits = roomlab_protocol::Limits {
        frame_bytes_max: 4096,
        doc_bytes_max: 1024,
        subscriptions_max: 4,
        replay_window_max: 4,
        list_items_max: 4,
        staged_docs_max: 4,
        ..roomlab_protocol::Limits::default()
    };
    Config { limits, ..Config::default() }
}

/// Runs a transcript against a fresh room (its database in memory: a file's syncs would make each
/// run a hundred times slower and test nothing more of the peer's bytes) and checks it; returns
/// how many records ran.
pub fn check_frames(input: &[u8]) -> usize {
    let config = config();
    let frame_bytes_max = config.limits.frame_bytes_max;
    let mut room = Room::open(RoomId::new("fuzz").expect("valid"), None, config).expect("room opens");
    let mut rng = Stream(0x5eed);
    for conn in 0..PEOPLE.len() {
        sent_readably(join(&mut room, conn), frame_bytes_max);
    }
    let mut open = [true; PEOPLE.len()];
    // A document with a rich-text field for the Yjs records to address.
    let create = r#"{"type":"mutate","mid":1,"op":"create","doc":"y","doc_type":"notes","data":{}}"#;
    let message = decode(create.as_bytes(), frame_bytes_max).expect("the setup frame decodes");
    sent_readably(room.handle(ConnId(1), message, 0), frame_bytes_max);
    let (doc, field) = (DocId::new("y").expect("valid"), FieldName::new("body").expect("valid"));
    let mut ran = 0;
    for (index, record) in records(input).enumerate() {
        let now_ms = 1_000 + index as u64;
        let effects = match record {
            Record::Toggle(conn) if open[conn] => {
                open[conn] = false;
                room.disconnect(ConnId(conn as u64))
            }
            Record::Toggle(conn) => {
                open[conn] = true;
                join(&mut room, conn)
            }
            _ if !open[record_conn(&record)] => continue,
            Record::Text(conn, bytes) => match decode(bytes, frame_bytes_max) {
                Ok(message) => room.handle(ConnId(conn as u64), message, now_ms),
                Err(_) => continue,
            },
            Record::Binary(conn, bytes) => match YjsFrame::decode(bytes, frame_bytes_max) {
                Ok(frame) => room.handle_yjs(ConnId(conn as u64), frame, &mut rng),
                Err(_) => continue,
            },
            Record::Bare(conn, bytes) => {
                let frame = YjsFrame { doc: doc.clone(), field: field.clone(), payload: bytes.to_vec() };
                room.handle_yjs(ConnId(conn as u64), frame, &mut rng)
            }
        };
        for conn in closed(&effects) {
            open[conn] = false;
            room.disconnect(ConnId(conn as u64));
        }
        sent_readably(effects, frame_bytes_max);
        room.check_invariants();
        ran += 1;
    }
    ran
}

fn record_conn(record: &Record<'_>) -> usize {
    match record {
        Record::Text(conn, _) | Record::Binary(conn, _) | Record::Bare(conn, _) | Record::Toggle(conn) => {
            *conn
        }
    }
}

/// Connects connection `conn` as its person and says hello.
fn join(room: &mut Room, conn: usize) -> Vec<Effect> {
    let (user, role) = PEOPLE[conn];
    let id = ConnId(conn as u64);
    let mut effects = room.connect(id, Identity::new(UserId::new(user).expect("valid"), role), 0);
    let client = ClientId::new(format!("c-{user}")).expect("valid");
    effects.extend(room.handle(id, ClientMessage::Hello { protocol: PROTOCOL_VERSION, client }, 0));
    effects
}

/// The connections the effects close.
fn closed(effects: &[Effect]) -> Vec<usize> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Close { conn, .. } => Some(conn.0 as usize),
            _ => None,
        })
        .collect()
}

/// Every text frame the room sends decodes within the frame limit on the client's side, and every
/// Yjs frame fits in it.
fn sent_readably(effects: Vec<Effect>, frame_bytes_max: usize) {
    for effect in effects {
        match effect {
            Effect::Send { message, .. } => {
                let frame = encode_server(&message);
                if let Err(e) = decode_server(frame.as_bytes(), frame_bytes_max) {
                    panic!(
                        "the room sent a frame a client must refuse ({e}): {}",
                        &frame[..frame.len().min(300)]
                    );
                }
            }
            Effect::Yjs { frame, .. } => {
                let bytes = frame.encode().len();
                assert!(bytes <= frame_bytes_max, "the room sent a Yjs frame of {bytes} bytes");
            }
            Effect::Close { .. } => {}
        }
    }
}
