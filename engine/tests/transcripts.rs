//! Transcripts: a script of client frames in, every effect out, snapshotted with insta.
//!
//! Script lines are `<conn> <frame JSON>`, `connect <conn> <user> <role> [free|pro] [addons]`,
//! `disconnect <conn>`, and `reopen` (drop the room and open its database again, as after a crash,
//! and reconnect the connections that were open).

use roomlab_engine::{Config, ConnId, Effect, Identity, Quotas, Room};
use roomlab_protocol::{decode, encode_server, Plan, Role, RoomId, UserId};
use std::path::Path;

/// Small quotas, so that scripts reach them: 200 bytes free, 300 pro, 100 per add-on.
fn config() -> Config {
    let quotas = Quotas { free_bytes: 200, pro_bytes: 300, addon_bytes: 100 };
    Config { quotas, ..Config::default() }
}

fn open(path: &Path) -> Room {
    Room::open(RoomId::new("r1").unwrap(), Some(path), config()).expect("room opens")
}

/// Parses `<user> <role> [plan] [addons]`.
fn identity(words: &[&str]) -> Identity {
    let mut identity = Identity::new(UserId::new(words[0]).unwrap(), role(words[1]));
    if let Some(plan) = words.get(2) {
        identity.plan = if *plan == "free" { Plan::Free } else { Plan::Pro };
    }
    if let Some(addons) = words.get(3) {
        identity.addons = addons.parse().unwrap();
    }
    identity
}

fn render(transcript: &mut String, effects: Vec<Effect>) {
    for effect in effects {
        let line = match effect {
            Effect::Send { conn, message } => format!("  {} < {}\n", conn.0, encode_server(&message)),
            Effect::Yjs { conn, frame } => {
                let payload: String = frame.payload.iter().map(|b| format!("{b:02x}")).collect();
                format!("  {} < yjs {}/{} {payload}\n", conn.0, frame.doc, frame.field)
            }
            Effect::Close { conn, code, reason } => format!("  {} closed {code} {reason}\n", conn.0),
        };
        transcript.push_str(&line);
    }
}

fn role(name: &str) -> Role {
    match name {
        "viewer" => Role::Viewer,
        "member" => Role::Member,
        "admin" => Role::Admin,
        other => panic!("unknown role {other}"),
    }
}

/// Runs `script` against a fresh file-backed room and returns the transcript.
fn check(script: &str) -> String {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("room.sqlite");
    let mut room = open(&path);
    let mut connections: Vec<(ConnId, Vec<String>)> = Vec::new();
    let mut transcript = String::new();
    for (number, line) in script.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        let now_ms = 1_000 * (number as u64 + 1);
        let words: Vec<&str> = line.splitn(2, ' ').collect();
        let effects = match words.as_slice() {
            ["connect", rest] => {
                let parts: Vec<&str> = rest.split(' ').collect();
                let conn = ConnId(parts[0].parse().unwrap());
                connections.push((conn, parts[1..].iter().map(|p| p.to_string()).collect()));
                room.connect(conn, identity(&parts[1..]), now_ms)
            }
            ["disconnect", conn] => {
                let conn = ConnId(conn.parse().unwrap());
                room.disconnect(conn);
                connections.retain(|(c, _)| *c != conn);
                Vec::new()
            }
            ["reopen"] => {
                drop(room);
                room = open(&path);
                let mut effects = Vec::new();
                for (conn, words) in &connections {
                    let words: Vec<&str> = words.iter().map(String::as_str).collect();
                    effects.extend(room.connect(*conn, identity(&words), now_ms));
                }
                effects
            }
            [conn, frame] => {
                let message = decode(frame.as_bytes(), 1 << 20).unwrap_or_else(|e| panic!("{line}: {e}"));
                room.handle(ConnId(conn.parse().unwrap()), message, now_ms)
            }
            _ => panic!("bad script line {line}"),
        };
        room.check_invariants();
        transcript.push_str(&format!("> {line}\n"));
        render(&mut transcript, effects);
    }
    transcript
}

const HELLO: &str = r#"
connect 1 alice member
connect 2 bob member
1 {"type":"hello","protocol":1,"client":"ca"}
2 {"type":"hello","protocol":1,"client":"cb"}
"#;

#[test]
fn handshake() {
    insta::assert_snapshot!(check(
        r#"
        connect 1 alice member
        1 {"type":"ping","nonce":1}
        1 {"type":"hello","protocol":2,"client":"ca"}
        connect 2 bob viewer
        2 {"type":"hello","protocol":1,"client":"cb"}
        2 {"type":"hello","protocol":1,"client":"cb"}
        2 {"type":"ping","nonce":9}
        "#
    ));
}

#[test]
fn delete_restore_purge() {
    insta::assert_snapshot!(check(&format!(
        "{HELLO}{}",
        r#"
        2 {"type":"subscribe","sub":"d","doc":"t1"}
        2 {"type":"subscribe","sub":"trash","doc":"sys:trash"}
        1 {"type":"mutate","mid":1,"op":"create","doc":"t1","doc_type":"tasks","data":{"title":"a"}}
        1 {"type":"mutate","mid":2,"op":"put","doc":"t1","data":{"title":"b"}}
        1 {"type":"mutate","mid":3,"op":"remove","doc":"t1"}
        1 {"type":"mutate","mid":4,"op":"create","doc":"t1","doc_type":"tasks","data":{}}
        1 {"type":"mutate","mid":5,"op":"put","doc":"t1","data":{}}
        1 {"type":"mutate","mid":6,"op":"restore","doc":"t1"}
        1 {"type":"mutate","mid":7,"op":"purge","doc":"t1"}
        1 {"type":"mutate","mid":8,"op":"remove","doc":"t1"}
        1 {"type":"mutate","mid":9,"op":"purge","doc":"t1"}
        1 {"type":"mutate","mid":10,"op":"create","doc":"t1","doc_type":"tasks","data":{"title":"again"}}
        1 {"type":"mutate","mid":11,"op":"remove","doc":"sys:index"}
        "#
    )));
}

#[test]
fn queries_push_diffs() {
    insta::assert_snapshot!(check(&format!(
        "{HELLO}{}",
        r#"
        2 {"type":"subscribe","sub":"q","query":{"collection":"tasks","where":{"field":"status","op":"eq","value":"active"},"order_by":[{"field":"rank"}],"limit":2}}
        1 {"type":"mutate","mid":1,"op":"create","doc":"a","doc_type":"tasks","data":{"status":"active","rank":3}}
        1 {"type":"mutate","mid":2,"op":"create","doc":"b","doc_type":"tasks","data":{"status":"done","rank":1}}
        1 {"type":"mutate","mid":3,"op":"create","doc":"c","doc_type":"tasks","data":{"status":"active","rank":2}}
        1 {"type":"mutate","mid":4,"op":"create","doc":"d","doc_type":"tasks","data":{"status":"active","rank":1}}
        1 {"type":"mutate","mid":5,"op":"patch","doc":"b","data":{"status":"active","rank":null}}
        1 {"type":"mutate","mid":6,"op":"remove","doc":"d"}
        2 {"type":"unsubscribe","sub":"q"}
        1 {"type":"mutate","mid":7,"op":"restore","doc":"d"}
        2 {"type":"subscribe","sub":"bad","query":{"collection":"tasks","limit":0}}
        "#
    )));
}

#[test]
fn guards_replay_and_crash_recovery() {
    insta::assert_snapshot!(check(&format!(
        "{HELLO}{}",
        r#"
        1 {"type":"mutate","mid":1,"op":"create","doc":"t","doc_type":"notes","data":{"n":1}}
        1 {"type":"mutate","mid":2,"op":"put","doc":"t","data":{"n":2},"if_seq":3}
        2 {"type":"mutate","mid":1,"op":"put","doc":"t","data":{"n":3},"if_seq":3}
        1 {"type":"mutate","mid":2,"op":"put","doc":"t","data":{"n":99},"if_seq":4}
        1 {"type":"mutate","mid":1,"op":"create","doc":"t","doc_type":"notes","data":{}}
        reopen
        1 {"type":"hello","protocol":1,"client":"ca"}
        2 {"type":"hello","protocol":1,"client":"cb"}
        2 {"type":"subscribe","sub":"d","doc":"t"}
        1 {"type":"mutate","mid":2,"op":"put","doc":"t","data":{"n":99}}
        1 {"type":"mutate","mid":3,"op":"patch","doc":"t","data":{"m":true}}
        "#
    )));
}

/// `sys:index` and `sys:trash` each carry the sequence of their own last change, and keep it across a
/// restart (docs/PROTOCOL.md sys.views.seq); a change that alters neither pushes neither.
#[test]
fn system_views_keep_their_sequences() {
    insta::assert_snapshot!(check(&format!(
        "{HELLO}{}",
        r#"
        1 {"type":"mutate","mid":1,"op":"create","doc":"a","doc_type":"notes","data":{}}
        1 {"type":"mutate","mid":2,"op":"remove","doc":"a"}
        1 {"type":"mutate","mid":3,"op":"restore","doc":"a"}
        1 {"type":"mutate","mid":4,"op":"create","doc":"b","doc_type":"notes","data":{}}
        1 {"type":"mutate","mid":5,"op":"put","doc":"b","data":{"x":1}}
        reopen
        2 {"type":"hello","protocol":1,"client":"cb"}
        2 {"type":"subscribe","sub":"i","doc":"sys:index"}
        2 {"type":"subscribe","sub":"t","doc":"sys:trash"}
        1 {"type":"hello","protocol":1,"client":"ca"}
        1 {"type":"mutate","mid":6,"op":"put","doc":"a","data":{"y":2}}
        1 {"type":"mutate","mid":7,"op":"create","doc":"c","doc_type":"notes","data":{}}
        "#
    )));
}

#[test]
fn viewers_cannot_write() {
    insta::assert_snapshot!(check(
        r#"
        connect 1 val viewer
        1 {"type":"hello","protocol":1,"client":"cv"}
        1 {"type":"mutate","mid":1,"op":"create","doc":"t","doc_type":"notes","data":{}}
        1 {"type":"mutate","mid":2,"op":"create","doc":"t","doc_type":"notes","data":[1]}
        "#
    ));
}

/// The replay window keeps the newest `replay_window_max` answers of a client: older ids answer
/// `replay_expired`, ids inside the window their original answer, and nothing is applied twice.
#[test]
fn replay_window_forgets_the_oldest_answers() {
    let limits = roomlab_protocol::Limits { replay_window_max: 2, ..Default::default() };
    let mut room =
        Room::open(RoomId::new("r1").unwrap(), None, Config { limits, ..Config::default() }).unwrap();
    let conn = ConnId(1);
    room.connect(conn, Identity::new(UserId::new("alice").unwrap(), Role::Member), 0);
    // Recording alice, a new user, took the first sequence.
    assert_eq!(room.seq(), 1);
    let send = |room: &mut Room, frame: &str| -> Vec<String> {
        let message = decode(frame.as_bytes(), 1 << 20).unwrap();
        room.handle(conn, message, 1_000)
            .into_iter()
            .map(|effect| match effect {
                Effect::Send { message, .. } => encode_server(&message),
                other => format!("{other:?}"),
            })
            .collect()
    };
    send(&mut room, r#"{"type":"hello","protocol":1,"client":"c"}"#);
    for mid in 1..=4 {
        let frame = format!(
            r#"{{"type":"mutate","mid":{mid},"op":"create","doc":"d{mid}","doc_type":"t","data":{{}}}}"#
        );
        assert_eq!(send(&mut room, &frame), [format!(r#"{{"type":"ack","mid":{mid},"seq":{}}}"#, mid + 1)]);
    }
    let replay = |mid: u64| {
        format!(
            r#"{{"type":"mutate","mid":{mid},"op":"create","doc":"again{mid}","doc_type":"t","data":{{}}}}"#
        )
    };
    let expired = send(&mut room, &replay(2));
    assert_eq!(expired.len(), 1);
    assert!(expired[0].contains(r#""code":"replay_expired""#), "{expired:?}");
    assert_eq!(send(&mut room, &replay(3)), [r#"{"type":"ack","mid":3,"seq":4}"#]);
    assert_eq!(send(&mut room, &replay(4)), [r#"{"type":"ack","mid":4,"seq":5}"#]);
    assert_eq!(room.seq(), 5, "a replay applied something");
}
