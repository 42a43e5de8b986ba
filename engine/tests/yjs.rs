//! Yjs fields (docs/PROTOCOL.md §19) driven by real yrs clients: sync, relay, persistence, and a
//! viewer's update refused before it is applied.

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use roomlab_engine::{Config, ConnId, Effect, Identity, Room};
use roomlab_protocol::{
    decode, write_var_uint, Cursor, DocId, ErrorCode, FieldName, Role, RoomId, ServerMessage, UserId,
    YjsFrame,
};
use std::path::Path;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, StateVector, Text, Transact, Update};

/// A yrs client of one field, as y-websocket would drive it.
struct Client {
    conn: ConnId,
    doc: yrs::Doc,
}

impl Client {
    fn new(conn: u64, client_id: u64) -> Client {
        Client { conn: ConnId(conn), doc: yrs::Doc::with_client_id(client_id) }
    }

    fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("body");
        let transaction = self.doc.transact();
        text.get_string(&transaction)
    }

    /// Types `insert` at the start and returns the update y-websocket would send.
    fn type_text(&self, insert: &str) -> Vec<u8> {
        let text = self.doc.get_or_insert_text("body");
        let mut transaction = self.doc.transact_mut();
        text.insert(&mut transaction, 0, insert);
        transaction.encode_update_v1()
    }

    fn step1(&self) -> Vec<u8> {
        sync(0, &self.doc.transact().state_vector().encode_v1())
    }

    /// Applies what the server sent: step 2 and updates; answers nothing (the tests send step 2s).
    fn receive(&self, payload: &[u8]) {
        let mut cursor = Cursor::new(payload);
        assert_eq!(cursor.var_uint().unwrap(), 0, "a sync message");
        let step = cursor.var_uint().unwrap();
        let bytes = cursor.var_bytes().unwrap();
        if step == 1 || step == 2 {
            self.doc.transact_mut().apply_update(Update::decode_v1(bytes).unwrap()).unwrap();
        }
    }
}

fn sync(step: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_var_uint(&mut out, 0);
    write_var_uint(&mut out, step);
    write_var_uint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

fn frame(doc: &str, payload: Vec<u8>) -> YjsFrame {
    YjsFrame { doc: DocId::new(doc).unwrap(), field: FieldName::new("body").unwrap(), payload }
}

struct World {
    room: Room,
    rng: ChaCha8Rng,
}

impl World {
    fn open(path: &Path) -> World {
        let room = Room::open(RoomId::new("r1").unwrap(), Some(path), Config::default()).unwrap();
        World { room, rng: ChaCha8Rng::seed_from_u64(7) }
    }

    fn join(&mut self, conn: u64, user: &str, role: Role) {
        let identity = Identity::new(UserId::new(user).unwrap(), role);
        self.room.connect(ConnId(conn), identity, 0);
        let hello = format!(r#"{{"type":"hello","protocol":1,"client":"c{conn}"}}"#);
        self.room.handle(ConnId(conn), decode(hello.as_bytes(), 1 << 20).unwrap(), 0);
    }

    fn text(&mut self, conn: u64, frame: &str) -> Vec<Effect> {
        self.room.handle(ConnId(conn), decode(frame.as_bytes(), 1 << 20).unwrap(), 0)
    }

    fn yjs(&mut self, client: &Client, doc: &str, payload: Vec<u8>) -> Vec<Effect> {
        self.room.handle_yjs(client.conn, frame(doc, payload), &mut self.rng)
    }

    /// Syncs a client: step 1 out, the server's step 2 applied, the client's step 2 sent back.
    fn sync(&mut self, client: &Client, doc: &str) {
        for effect in self.yjs(client, doc, client.step1()) {
            match effect {
                Effect::Yjs { conn, frame } if conn == client.conn => {
                    let mut cursor = Cursor::new(&frame.payload);
                    let (_, step) = (cursor.var_uint().unwrap(), cursor.var_uint().unwrap());
                    if step == 0 {
                        let server = StateVector::decode_v1(cursor.var_bytes().unwrap()).unwrap();
                        let missing = client.doc.transact().encode_diff_v1(&server);
                        assert!(self.yjs(client, doc, sync(1, &missing)).iter().all(|e| !is_error(e)));
                    } else {
                        client.receive(&frame.payload);
                    }
                }
                other => panic!("unexpected effect while syncing: {other:?}"),
            }
        }
    }
}

fn is_error(effect: &Effect) -> bool {
    matches!(effect, Effect::Send { message: ServerMessage::Error(_), .. })
}

fn error_code(effects: &[Effect]) -> Option<ErrorCode> {
    effects.iter().find_map(|effect| match effect {
        Effect::Send { message: ServerMessage::Error(body), .. } => Some(body.code),
        _ => None,
    })
}

/// Delivers every relayed frame to its client.
fn deliver(effects: Vec<Effect>, clients: &[&Client]) -> usize {
    let mut delivered = 0;
    for effect in effects {
        if let Effect::Yjs { conn, frame } = effect {
            let client = clients.iter().find(|c| c.conn == conn).expect("a relay to a known client");
            client.receive(&frame.payload);
            delivered += 1;
        }
    }
    delivered
}

/// A room at `path` with members alice and bob and viewer val, each with note t1's field synced.
fn alice_bob_and_val(path: &Path) -> (World, Client, Client, Client) {
    let mut world = World::open(path);
    world.join(1, "alice", Role::Member);
    world.join(2, "bob", Role::Member);
    world.join(3, "val", Role::Viewer);
    world.text(1, r#"{"type":"mutate","mid":1,"op":"create","doc":"t1","doc_type":"notes","data":{}}"#);
    let (alice, bob, val) = (Client::new(1, 11), Client::new(2, 22), Client::new(3, 33));
    for client in [&alice, &bob, &val] {
        world.sync(client, "t1");
    }
    (world, alice, bob, val)
}

#[test]
fn members_converge_and_viewers_cannot_write() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("room.sqlite");
    let (mut world, alice, bob, val) = alice_bob_and_val(&path);
    let typed = alice.type_text("hello");
    let relayed = world.yjs(&alice, "t1", sync(2, &typed));
    assert_eq!(deliver(relayed, &[&bob, &val]), 2, "the update reaches both other clients");
    let typed = bob.type_text("bob says ");
    deliver(world.yjs(&bob, "t1", sync(2, &typed)), &[&alice, &val]);
    assert_eq!(alice.text(), "bob says hello");
    assert_eq!(bob.text(), alice.text());
    assert_eq!(val.text(), alice.text());

    // A viewer's edit is refused before it reaches the state or anyone else.
    let refused = world.yjs(&val, "t1", sync(2, &val.type_text("vandal ")));
    assert_eq!(error_code(&refused), Some(ErrorCode::Forbidden));
    assert!(refused.iter().all(|e| !matches!(e, Effect::Yjs { .. })), "{refused:?}");

    // The merged state survives a restart; a fresh client receives it.
    drop(world);
    let mut world = World::open(&path);
    world.join(4, "carol", Role::Member);
    let carol = Client::new(4, 44);
    world.sync(&carol, "t1");
    assert_eq!(carol.text(), "bob says hello");
}

#[test]
fn frames_that_cannot_be_served_get_typed_errors() {
    // The directory lives as long as the room, which writes into it.
    let directory = tempfile::tempdir().unwrap();
    let mut world = World::open(&directory.path().join("room.sqlite"));
    world.join(1, "ada", Role::Admin);
    let ada = Client::new(1, 1);
    assert_eq!(error_code(&world.yjs(&ada, "missing", ada.step1())), Some(ErrorCode::NotFound));
    assert_eq!(error_code(&world.yjs(&ada, "t1", vec![7, 7])), Some(ErrorCode::BadFrame));
    let schema = r#"{"fields":{"title":{"type":"string"},"body":{"type":"string"}}}"#;
    let create = format!(
        r#"{{"type":"mutate","mid":1,"op":"create","doc":"sys:schema:notes","doc_type":"sys","data":{schema}}}"#
    );
    world.text(1, &create);
    world.text(1, r#"{"type":"mutate","mid":2,"op":"create","doc":"n","doc_type":"notes","data":{}}"#);
    assert_eq!(error_code(&world.yjs(&ada, "n", ada.step1())), Some(ErrorCode::Invalid));
    world.text(1, r#"{"type":"mutate","mid":3,"op":"remove","doc":"n"}"#);
    assert_eq!(error_code(&world.yjs(&ada, "n", ada.step1())), Some(ErrorCode::Deleted));
    assert_eq!(error_code(&world.yjs(&ada, "n", sync(2, &[1, 2, 3]))), Some(ErrorCode::Deleted));
}

#[test]
fn awareness_is_relayed_to_the_fields_other_connections_and_never_stored() {
    let directory = tempfile::tempdir().unwrap();
    let (mut world, alice, bob, val) = alice_bob_and_val(&directory.path().join("room.sqlite"));
    deliver(world.yjs(&alice, "t1", sync(2, &alice.type_text("hi"))), &[&bob, &val]);
    let (doc, field) = (DocId::new("t1").unwrap(), FieldName::new("body").unwrap());
    let state = world.room.yjs_state(&doc, &field).unwrap();

    // Awareness (message type 1) from anyone who may read, a viewer too, goes to every other
    // connection with the field open, byte for byte, and leaves the document's state alone.
    let awareness = vec![1, 5, 1, 33, 2, 0, 0];
    let check = |effects: Vec<Effect>, expected: &[u64]| {
        let mut to: Vec<u64> = effects
            .iter()
            .map(|effect| match effect {
                Effect::Yjs { conn, frame } if frame.payload == awareness => conn.0,
                other => panic!("awareness answered with {other:?}"),
            })
            .collect();
        to.sort();
        assert_eq!(to, expected);
    };
    check(world.yjs(&val, "t1", awareness.clone()), &[1, 2]);
    check(world.yjs(&alice, "t1", awareness.clone()), &[2, 3]);
    assert_eq!(world.room.yjs_state(&doc, &field).unwrap(), state, "awareness is never merged or stored");

    // A connection that closed the field hears no more of it.
    world.text(2, r#"{"type":"yjs_close","doc":"t1","field":"body"}"#);
    check(world.yjs(&alice, "t1", awareness.clone()), &[3]);
}

/// An awareness message announcing `entries` (client id, clock, JSON state).
fn awareness(entries: &[(u64, u64, &str)]) -> Vec<u8> {
    let mut update = Vec::new();
    write_var_uint(&mut update, entries.len() as u64);
    for (client, clock, state) in entries {
        write_var_uint(&mut update, *client);
        write_var_uint(&mut update, *clock);
        write_var_uint(&mut update, state.len() as u64);
        update.extend_from_slice(state.as_bytes());
    }
    let mut message = vec![1];
    write_var_uint(&mut message, update.len() as u64);
    message.extend_from_slice(&update);
    message
}

/// docs/PROTOCOL.md yjs.awareness: what a connection announced is removed for the others when it
/// closes the field, by `yjs_close` or by disconnecting; past 16 ids or malformed, it is refused.
#[test]
fn awareness_is_removed_when_its_connection_closes_the_field() {
    let directory = tempfile::tempdir().unwrap();
    let (mut world, alice, bob, _val) = alice_bob_and_val(&directory.path().join("room.sqlite"));
    let to = |effects: &[Effect]| -> Vec<(u64, Vec<u8>)> {
        let mut sent: Vec<(u64, Vec<u8>)> = effects
            .iter()
            .map(|effect| match effect {
                Effect::Yjs { conn, frame } => (conn.0, frame.payload.clone()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        sent.sort();
        sent
    };
    world.yjs(&alice, "t1", awareness(&[(90, 3, r#"{"n":1}"#), (7, 1, "{}")]));
    world.yjs(&alice, "t1", awareness(&[(91, 1, "{}"), (91, 2, "null")]));
    // Alice closes the field: bob and val learn that 7 and 90 left, in id order, a clock later.
    let removal = awareness(&[(7, 2, "null"), (90, 4, "null")]);
    let closed = world.text(1, r#"{"type":"yjs_close","doc":"t1","field":"body"}"#);
    assert_eq!(to(&closed), vec![(2, removal.clone()), (3, removal)]);

    // Bob's socket drops: val, the one left with the field open, learns it.
    world.yjs(&bob, "t1", awareness(&[(5, 9, "{}")]));
    assert_eq!(to(&world.room.disconnect(ConnId(2))), vec![(3, awareness(&[(5, 10, "null")]))]);
    // A connection that announced nothing says nothing when it goes.
    assert!(world.room.disconnect(ConnId(3)).is_empty());

    let (mut world, alice, _bob, _val) = alice_bob_and_val(&directory.path().join("second.sqlite"));
    let many: Vec<(u64, u64, &str)> = (1..=17).map(|id| (id, 1, "{}")).collect();
    assert_eq!(error_code(&world.yjs(&alice, "t1", awareness(&many))), Some(ErrorCode::LimitExceeded));
    assert_eq!(error_code(&world.yjs(&alice, "t1", awareness(&many[..16]))), None);
    assert_eq!(error_code(&world.yjs(&alice, "t1", vec![1, 9, 1])), Some(ErrorCode::BadFrame));
    // A count the bytes cannot hold is refused before anything is reserved for it.
    assert_eq!(
        error_code(&world.yjs(&alice, "t1", vec![1, 5, 0xff, 0xff, 0xff, 0xff, 0x0f])),
        Some(ErrorCode::BadFrame)
    );
}
