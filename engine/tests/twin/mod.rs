//! A file-backed room and the oracle (`roomlab_oracle`, the spec as plain code, which shares no
//! logic with the engine), driven with the same inputs: every step asserts that both send the same
//! messages to every connection (error texts and close reasons aside) and that the room's invariants
//! hold, and the end compares what everyone would be answered, each user's usage and the sequence.
//!
//! Used by the engine's property tests, by the `engine_ops` fuzz corpus replay and (through a
//! `#[path]` include) by the `engine_ops` fuzz target.

// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use roomlab_engine::{Config, ConnId, Effect, Identity, Room};
use roomlab_oracle::{Oracle, Output, PlanLimits, Settings};
use roomlab_protocol::{
    BucketName, ClientId, ClientMessage, DocId, ErrorBody, Plan, Role, RoomId, ServerMessage, SubId, Target,
    UserId,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The connections of every twin run: (user, role, plan); connection `i` is `PEOPLE[i]`.
pub const PEOPLE: [(&str, Role, Plan); 4] = [
    ("alice", Role::Member, Plan::Pro),
    ("bob", Role::Member, Plan::Free),
    ("val", Role::Viewer, Plan::Pro),
    ("ada", Role::Admin, Plan::Pro),
];

/// The documents and buckets every user is asked about when a run ends.
const FINAL_DOCS: [&str; 7] = ["d0", "d1", "d2", "sys:index", "sys:trash", "sys:users", "sys:teams"];
const FINAL_BUCKETS: [&str; 3] = ["b0", "user:alice", "user:bob"];

/// The room, the oracle, and what both need to reopen and time a step.
pub struct Twin {
    room: Option<Room>,
    oracle: Oracle,
    path: PathBuf,
    config: Config,
    now_ms: u64,
}

/// One connection's messages, as text, with human-readable texts blanked (the oracle's wording is
/// its own; codes, fields and every other member are compared).
type Transcript = BTreeMap<u64, Vec<String>>;

fn blank(message: &ServerMessage) -> String {
    match message {
        ServerMessage::Error(body) => roomlab_protocol::encode_server(&ServerMessage::Error(ErrorBody {
            message: String::new(),
            ..body.clone()
        })),
        other => roomlab_protocol::encode_server(other),
    }
}

/// The engine's effects per connection, in the order the room produced them.
fn engine_transcript(effects: &[Effect]) -> Transcript {
    let mut transcript = Transcript::new();
    for effect in effects {
        let line = match effect {
            Effect::Send { message, .. } => blank(message),
            Effect::Close { code, .. } => format!("closed {code}"),
            Effect::Yjs { .. } => "yjs".to_string(),
        };
        transcript.entry(effect.conn().0).or_default().push(line);
    }
    transcript
}

/// The oracle's outputs per connection, in the order the spec gives them.
fn oracle_transcript(outputs: &[Output]) -> Transcript {
    let mut transcript = Transcript::new();
    for output in outputs {
        let (conn, line) = match output {
            Output::Send { conn, message, .. } => (*conn, blank(message)),
            Output::Close { conn, code, .. } => (*conn, format!("closed {code}")),
            Output::Yjs { conn, .. } => (*conn, "yjs".to_string()),
        };
        transcript.entry(conn).or_default().push(line);
    }
    transcript
}

fn engine_identity(conn: usize) -> Identity {
    let (user, role, plan) = PEOPLE[conn];
    Identity { plan, ..Identity::new(UserId::new(user).expect("valid"), role) }
}

fn oracle_identity(conn: usize) -> roomlab_oracle::Identity {
    let (user, role, plan) = PEOPLE[conn];
    roomlab_oracle::Identity { user: UserId::new(user).expect("valid"), role, plan, addons: 0 }
}

fn room_id() -> RoomId {
    RoomId::new("r").expect("valid")
}

impl Twin {
    /// Opens a room at `path` and the oracle, and connects and greets every one of [`PEOPLE`].
    pub fn new(path: &Path, config: Config) -> Twin {
        let room = Room::open(room_id(), Some(path), config.clone()).expect("room opens");
        let plans = PlanLimits {
            free_bytes: config.quotas.free_bytes,
            pro_bytes: config.quotas.pro_bytes,
            addon_bytes: config.quotas.addon_bytes,
        };
        let oracle = Oracle::new(Settings { room: room_id(), limits: config.limits.clone(), plans });
        let mut twin = Twin { room: Some(room), oracle, path: path.to_path_buf(), config, now_ms: 0 };
        for conn in 0..PEOPLE.len() {
            twin.join(conn);
        }
        twin
    }

    fn room(&mut self) -> &mut Room {
        self.room.as_mut().expect("open")
    }

    fn compare(&mut self, what: &str, effects: Vec<Effect>, outputs: Vec<Output>) {
        let (engine, oracle) = (engine_transcript(&effects), oracle_transcript(&outputs));
        assert_eq!(engine, oracle, "the engine (left) and the oracle (right) differ on {what}");
        self.room().check_invariants();
    }

    fn join(&mut self, conn: usize) {
        let (now_ms, id) = (self.now_ms, ConnId(conn as u64));
        let effects = self.room().connect(id, engine_identity(conn), now_ms);
        let outputs = self.oracle.connect(conn as u64, oracle_identity(conn), now_ms);
        self.compare("connect", effects, outputs);
        let hello =
            ClientMessage::Hello { protocol: 1, client: ClientId::new(format!("c{conn}")).expect("valid") };
        self.send(conn, hello, "hello");
    }

    fn send(&mut self, conn: usize, message: ClientMessage, what: &str) {
        let now_ms = self.now_ms;
        let effects = self.room().handle(ConnId(conn as u64), message.clone(), now_ms);
        let outputs = self.oracle.receive(conn as u64, message, now_ms, false);
        self.compare(what, effects, outputs);
    }

    /// Connection `conn` (an index into [`PEOPLE`]) sends `message`, one second after the last step.
    pub fn handle(&mut self, conn: usize, message: ClientMessage) {
        self.now_ms += 1_000;
        let what = format!("{} sends {}", PEOPLE[conn].0, roomlab_protocol::encode(&message));
        self.send(conn, message, &what);
    }

    /// Connection `conn` drops and comes back.
    pub fn reconnect(&mut self, conn: usize) {
        let id = ConnId(conn as u64);
        let effects = self.room().disconnect(id);
        let outputs = self.oracle.disconnect(conn as u64);
        self.compare("disconnect", effects, outputs);
        self.join(conn);
    }

    /// Opens a commit group in the room, or commits the open one. The spec has no groups: a group
    /// that commits must change nothing anyone sees.
    pub fn toggle_group(&mut self) {
        let room = self.room();
        if room.group_open() {
            room.commit_group().expect("the group commits");
        } else {
            room.begin_group().expect("a group opens");
        }
    }

    /// The room crashes and reopens its database; everyone reconnects. A host commits a group
    /// before it takes its next input, so a crash never lands inside one.
    pub fn crash(&mut self) {
        self.room().commit_group().expect("the group commits");
        self.room = None;
        self.room = Some(Room::open(room_id(), Some(&self.path), self.config.clone()).expect("room reopens"));
        self.oracle.restart();
        for conn in 0..PEOPLE.len() {
            self.join(conn);
        }
    }

    /// Asserts that the room and the oracle end in the same state: the same sequence, the same usage
    /// for everyone, and the same first answer to every user for every document and bucket.
    pub fn finish(&mut self) {
        self.room().commit_group().expect("the group commits");
        assert_eq!(
            self.room().seq(),
            self.oracle.seq(),
            "the engine and the oracle end at different sequences"
        );
        let mut targets: Vec<Target> =
            FINAL_DOCS.iter().map(|doc| Target::Doc(DocId::new(*doc).expect("valid"))).collect();
        targets
            .extend(FINAL_BUCKETS.iter().map(|name| Target::Bucket(BucketName::new(*name).expect("valid"))));
        let sub = SubId::new("final").expect("valid");
        for (conn, (name, _, _)) in PEOPLE.iter().enumerate() {
            let user = UserId::new(*name).expect("valid");
            assert_eq!(
                self.room().usage(&user),
                self.oracle.usage(&user),
                "usage of {user} differs at the end"
            );
            for target in &targets {
                let engine = blank(&self.room().answer(&engine_identity(conn), &sub, target));
                let oracle = self.oracle.answer(&oracle_identity(conn), &sub, target);
                let oracle = oracle.map_or_else(|| "refused".to_string(), |message| blank(&message));
                let engine =
                    if engine.contains(r#""type":"error""#) { "refused".to_string() } else { engine };
                assert_eq!(engine, oracle, "{user}'s final answer for {target:?} differs (engine left)");
            }
        }
    }
}

/// The fuzz target `engine_ops` and its corpus replay: `input` is a script of lines, each
/// `<conn> <frame JSON>` (conn 0 to 3, see [`PEOPLE`]), `reconnect <conn>` or `crash`. Lines that do
/// not parse are skipped; each other line runs on a room at `path` and on the oracle, which must
/// agree. Returns how many lines ran.
pub fn check_script(path: &Path, config: Config, input: &[u8]) -> usize {
    /// Lines run per input, so one input cannot run for ever.
    const LINES_MAX: usize = 200;
    let mut twin = Twin::new(path, config);
    let mut ran = 0;
    for line in input.split(|b| *b == b'\n').take(LINES_MAX) {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let (head, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let conn = |text: &str| text.parse::<usize>().ok().filter(|conn| *conn < PEOPLE.len());
        match (head, conn(rest)) {
            ("crash", _) => twin.crash(),
            ("reconnect", Some(conn)) => twin.reconnect(conn),
            _ => {
                let Some(conn) = conn(head) else {
                    continue;
                };
                let Ok(message) = roomlab_protocol::decode(rest.as_bytes(), 1 << 16) else {
                    continue;
                };
                if matches!(message, ClientMessage::Hello { .. }) {
                    // A second hello is a protocol error the twin does not script.
                    continue;
                }
                twin.handle(conn, message);
            }
        }
        ran += 1;
    }
    twin.finish();
    ran
}
