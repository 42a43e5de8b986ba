//! Transcripts: a script of client frames in, every effect out, snapshotted with insta.
//!
//! Script lines are `<conn> <frame JSON>`, `connect <conn> <user> <role> [free|pro] [addons]`,
//! `disconnect <conn>`, `reopen` (drop the room and open its database again, as after a crash,
//! and reconnect the connections that were open), `disk fails` / `disk works` (every commit
//! from then on fails, as the engine's storage fault point makes it, or succeeds again), and
//! `group begin` / `group commit` (a commit group; a failed group commit reloads the room, which
//! forgets its connections, so the script's connections connect again).

use roomlab_engine::{Config, ConnId, Effect, Identity, Quotas, Room, StorageFaults};
use roomlab_protocol::{decode, encode_server, Limits, Plan, Role, RoomId, UserId};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Small limits and quotas, so that scripts reach them: 200 bytes free, 300 pro, 100 per add-on.
fn config() -> Config {
    let quotas = Quotas { free_bytes: 200, pro_bytes: 300, addon_bytes: 100 };
    let limits = Limits { list_items_max: 3, staged_docs_max: 2, asset_bytes_max: 16, ..Limits::default() };
    Config { quotas, limits, ..Config::default() }
}

/// Opens the room; its commits fail while `disk_fails` is set.
fn open(path: &Path, disk_fails: &Arc<AtomicBool>) -> Room {
    let disk_fails = disk_fails.clone();
    let storage_faults = StorageFaults::new(move |_| disk_fails.load(Ordering::Relaxed));
    Room::open(RoomId::new("r1").unwrap(), Some(path), Config { storage_faults, ..config() })
        .expect("room opens")
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
    let disk_fails = Arc::new(AtomicBool::new(false));
    let mut room = open(&path, &disk_fails);
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
            ["usage", user] => {
                let usage = room.usage(&UserId::new(*user).unwrap());
                transcript.push_str(&format!("> usage {user}\n  = {usage} bytes\n"));
                continue;
            }
            ["disconnect", conn] => {
                let conn = ConnId(conn.parse().unwrap());
                connections.retain(|(c, _)| *c != conn);
                room.disconnect(conn)
            }
            ["disk", state] => {
                disk_fails.store(*state == "fails", Ordering::Relaxed);
                transcript.push_str(&format!("> {line}\n"));
                continue;
            }
            ["group", "begin"] => {
                room.begin_group().expect("a commit group opens");
                transcript.push_str(&format!("> {line}\n"));
                continue;
            }
            ["group", "commit"] => match room.commit_group() {
                Ok(()) => {
                    transcript.push_str(&format!("> {line}\n  = committed\n"));
                    continue;
                }
                Err(e) => {
                    transcript.push_str(&format!("> {line}\n  = failed: {e}\n"));
                    let effects = reconnect(&mut room, &connections, now_ms);
                    render(&mut transcript, effects);
                    continue;
                }
            },
            ["reopen"] => {
                drop(room);
                room = open(&path, &disk_fails);
                reconnect(&mut room, &connections, now_ms)
            }
            [conn, frame] => {
                let message = decode(frame.as_bytes(), 1 << 20).unwrap_or_else(|e| panic!("{line}: {e}"));
                room.handle(ConnId(conn.parse().unwrap()), message, now_ms)
            }
            _ => panic!("bad script line {line}"),
        };
        // A closed connection is gone, as the server would report it once its socket closes.
        for effect in &effects {
            if let Effect::Close { conn, .. } = effect {
                room.disconnect(*conn);
                connections.retain(|(c, _)| c != conn);
            }
        }
        room.check_invariants();
        transcript.push_str(&format!("> {line}\n"));
        render(&mut transcript, effects);
    }
    transcript
}

/// Connects the script's connections again, after the room forgot them.
fn reconnect(room: &mut Room, connections: &[(ConnId, Vec<String>)], now_ms: u64) -> Vec<Effect> {
    let mut effects = Vec::new();
    for (conn, words) in connections {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        effects.extend(room.connect(*conn, identity(&words), now_ms));
    }
    effects
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

/// One change re-evaluates a limited query once for every reader who reads alike, and only for
/// them: owners of an owner-read collection each get their own answer, a viewer where members read
/// gets none, and two connections of one user get the same (docs/PROTOCOL.md query.read-access).
#[test]
fn limited_queries_answer_each_reader_by_their_access() {
    insta::assert_snapshot!(check(
        r#"
        connect 1 ada admin
        connect 2 bob member
        connect 3 bob member
        connect 4 cat member
        connect 5 val viewer
        1 {"type":"hello","protocol":1,"client":"ca"}
        2 {"type":"hello","protocol":1,"client":"cb"}
        3 {"type":"hello","protocol":1,"client":"cb2"}
        4 {"type":"hello","protocol":1,"client":"cc"}
        5 {"type":"hello","protocol":1,"client":"cv"}
        1 {"type":"mutate","mid":1,"op":"create","doc":"sys:schema:notes","doc_type":"sys","data":{"access":{"read":"owner","write":"owner"}}}
        1 {"type":"mutate","mid":2,"op":"create","doc":"sys:schema:tasks","doc_type":"sys","data":{"access":{"read":"member","write":"member"}}}
        2 {"type":"subscribe","sub":"n","query":{"collection":"notes","order_by":[{"field":"rank"}],"limit":2}}
        3 {"type":"subscribe","sub":"n","query":{"collection":"notes","order_by":[{"field":"rank"}],"limit":2}}
        4 {"type":"subscribe","sub":"n","query":{"collection":"notes","order_by":[{"field":"rank"}],"limit":2}}
        1 {"type":"subscribe","sub":"t","query":{"collection":"tasks","order_by":[{"field":"rank"}],"limit":2}}
        4 {"type":"subscribe","sub":"t","query":{"collection":"tasks","order_by":[{"field":"rank"}],"limit":2}}
        5 {"type":"subscribe","sub":"t","query":{"collection":"tasks","order_by":[{"field":"rank"}],"limit":2}}
        2 {"type":"mutate","mid":1,"op":"create","doc":"n1","doc_type":"notes","data":{"rank":2}}
        4 {"type":"mutate","mid":1,"op":"create","doc":"n2","doc_type":"notes","data":{"rank":1}}
        2 {"type":"mutate","mid":2,"op":"create","doc":"t1","doc_type":"tasks","data":{"rank":2}}
        4 {"type":"mutate","mid":3,"op":"create","doc":"t2","doc_type":"tasks","data":{"rank":1}}
        1 {"type":"mutate","mid":3,"op":"put","doc":"sys:schema:tasks","data":{"access":{"read":"viewer","write":"member"}}}
        1 {"type":"mutate","mid":4,"op":"put","doc":"sys:schema:notes","data":{"access":{"read":"owner","write":"owner"},"fields":{"rank":{"type":"number"}}}}
        3 {"type":"mutate","mid":1,"op":"patch","doc":"n1","data":{"rank":3}}
        "#
    ));
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

/// A commit the disk refuses (the engine's BUGGIFY storage fault) rolls the change back: the
/// writer is answered `internal`, nobody is pushed anything, usage does not move, and the `mid` is
/// not remembered (docs/PROTOCOL.md mutation.replay.internal-not-remembered). The room closes the
/// writer's connection with 1011 and ignores what it sent after the failed `mid` (here once the
/// disk works again), so on the next connection the failed `mid` executes afresh instead of falling
/// below a newer processed one, and the one after it executes too. After a restart the room holds
/// only what was committed.
#[test]
fn failed_commits_roll_back() {
    insta::assert_snapshot!(check(&format!(
        "{HELLO}{}",
        r#"
        2 {"type":"subscribe","sub":"q","query":{"collection":"notes"}}
        1 {"type":"mutate","mid":1,"op":"create","doc":"a","doc_type":"notes","data":{"n":1}}
        disk fails
        1 {"type":"mutate","mid":2,"op":"create","doc":"b","doc_type":"notes","data":{"n":2}}
        disk works
        1 {"type":"mutate","mid":3,"op":"put","doc":"a","data":{"n":3}}
        usage alice
        connect 3 alice member
        3 {"type":"hello","protocol":1,"client":"ca"}
        3 {"type":"mutate","mid":2,"op":"create","doc":"b","doc_type":"notes","data":{"n":2}}
        3 {"type":"mutate","mid":3,"op":"put","doc":"a","data":{"n":3}}
        usage alice
        reopen
        2 {"type":"hello","protocol":1,"client":"cb"}
        2 {"type":"subscribe","sub":"q","query":{"collection":"notes"}}
        usage alice
        "#
    )));
}

/// A commit group (docs/PROTOCOL.md ack.group-commit): its changes share one transaction, each
/// in its own savepoint, so a quota refusal inside the group takes back only its own change. When
/// the group's commit fails, none of its changes is kept: the room reloads what was committed
/// (the first group's documents and usage), forgets its connections, and remembers none of the
/// group's `mid`s, so sending one again executes it afresh.
#[test]
fn commit_groups_commit_or_roll_back_whole() {
    let big = "x".repeat(300);
    let script = format!(
        r#"
        2 {{"type":"subscribe","sub":"q","query":{{"collection":"notes"}}}}
        group begin
        1 {{"type":"mutate","mid":1,"op":"create","doc":"a","doc_type":"notes","data":{{"n":1}}}}
        1 {{"type":"mutate","mid":2,"op":"create","doc":"big","doc_type":"notes","data":{{"s":"{big}"}}}}
        1 {{"type":"mutate","mid":3,"op":"create","doc":"b","doc_type":"notes","data":{{"n":2}}}}
        group commit
        usage alice
        group begin
        1 {{"type":"mutate","mid":4,"op":"create","doc":"c","doc_type":"notes","data":{{"n":3}}}}
        1 {{"type":"mutate","mid":5,"op":"put","doc":"a","data":{{"n":4}}}}
        disk fails
        group commit
        disk works
        usage alice
        1 {{"type":"hello","protocol":1,"client":"ca"}}
        2 {{"type":"hello","protocol":1,"client":"cb"}}
        2 {{"type":"subscribe","sub":"q","query":{{"collection":"notes"}}}}
        1 {{"type":"mutate","mid":4,"op":"create","doc":"c","doc_type":"notes","data":{{"n":3}}}}
        reopen
        2 {{"type":"hello","protocol":1,"client":"cb"}}
        2 {{"type":"subscribe","sub":"q","query":{{"collection":"notes"}}}}
        usage alice
        "#
    );
    insta::assert_snapshot!(check(&format!("{HELLO}{script}")));
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
    // Storage keeps up to twice the window before it trims: after mid 5 it holds 4 and 5, after
    // mid 6 it holds 4, 5 and 6, of which only 5 and 6 are in the window.
    for mid in 1..=6 {
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
    for forgotten in [2, 4] {
        let expired = send(&mut room, &replay(forgotten));
        assert_eq!(expired.len(), 1);
        assert!(expired[0].contains(r#""code":"replay_expired""#), "mid {forgotten}: {expired:?}");
    }
    assert_eq!(send(&mut room, &replay(5)), [r#"{"type":"ack","mid":5,"seq":6}"#]);
    assert_eq!(send(&mut room, &replay(6)), [r#"{"type":"ack","mid":6,"seq":7}"#]);
    assert_eq!(room.seq(), 7, "a replay applied something");
}

/// docs/PROTOCOL.md §13: items ordered by (key, item id); equal keys are broken by id; every list op
/// is a change of its document; the list limit holds.
#[test]
fn ordered_lists() {
    insta::assert_snapshot!(check(&format!(
        "{HELLO}{}",
        r#"
        2 {"type":"subscribe","sub":"d","doc":"board"}
        1 {"type":"mutate","mid":1,"op":"create","doc":"board","doc_type":"boards","data":{"title":"Sprint"}}
        1 {"type":"mutate","mid":2,"op":"list_insert","doc":"board","list":"cards","item":"c2","key":"a1","value":{"t":"second"}}
        2 {"type":"mutate","mid":1,"op":"list_insert","doc":"board","list":"cards","item":"b9","key":"a0V","value":{"t":"tie b"}}
        1 {"type":"mutate","mid":3,"op":"list_insert","doc":"board","list":"cards","item":"a9","key":"a0V","value":{"t":"tie a"}}
        2 {"type":"subscribe","sub":"ties","doc":"board"}
        1 {"type":"mutate","mid":4,"op":"list_insert","doc":"board","list":"cards","item":"c1","key":"a0","value":{"t":"first"}}
        1 {"type":"mutate","mid":5,"op":"list_insert","doc":"board","list":"cards","item":"c2","key":"a2","value":{}}
        1 {"type":"mutate","mid":6,"op":"list_move","doc":"board","list":"cards","item":"a9","key":"a2"}
        1 {"type":"mutate","mid":7,"op":"list_update","doc":"board","list":"cards","item":"c2","value":{"t":"edited"}}
        1 {"type":"mutate","mid":8,"op":"list_remove","doc":"board","list":"cards","item":"b9"}
        1 {"type":"mutate","mid":9,"op":"list_remove","doc":"board","list":"cards","item":"b9"}
        1 {"type":"mutate","mid":10,"op":"list_move","doc":"nope","list":"cards","item":"c1","key":"a3"}
        2 {"type":"subscribe","sub":"again","doc":"board"}
        reopen
        2 {"type":"hello","protocol":1,"client":"cb"}
        2 {"type":"subscribe","sub":"after","doc":"board"}
        "#
    )));
}

/// docs/PROTOCOL.md §14: schemas are admin-written documents that shape, complete and guard writes.
#[test]
fn schemas_and_access() {
    insta::assert_snapshot!(check(
        r#"
        connect 1 ada admin
        connect 2 bob member
        connect 3 val viewer
        1 {"type":"hello","protocol":1,"client":"ca"}
        2 {"type":"hello","protocol":1,"client":"cb"}
        3 {"type":"hello","protocol":1,"client":"cv"}
        2 {"type":"mutate","mid":1,"op":"create","doc":"sys:schema:tasks","doc_type":"sys","data":{}}
        1 {"type":"mutate","mid":1,"op":"create","doc":"sys:schema:tasks","doc_type":"sys","data":{"fields":{"title":{"type":"text"}}}}
        1 {"type":"mutate","mid":2,"op":"create","doc":"sys:schema:tasks","doc_type":"sys","data":{"fields":{"title":{"type":"string","required":true},"done":{"type":"boolean","default":false},"body":{"type":"richtext"}},"access":{"read":"viewer","write":"member"},"autoFields":{"userId":true,"createdAt":true,"updatedAt":true}}}
        1 {"type":"mutate","mid":3,"op":"create","doc":"sys:schema:notes","doc_type":"sys","data":{"access":{"read":"owner","write":"owner"}}}
        3 {"type":"subscribe","sub":"s","doc":"sys:schema:notes"}
        3 {"type":"subscribe","sub":"t","doc":"t1"}
        2 {"type":"mutate","mid":2,"op":"create","doc":"t1","doc_type":"tasks","data":{"done":true}}
        2 {"type":"mutate","mid":3,"op":"create","doc":"t1","doc_type":"tasks","data":{"title":7}}
        2 {"type":"mutate","mid":4,"op":"create","doc":"t1","doc_type":"tasks","data":{"title":"a","color":"red"}}
        2 {"type":"mutate","mid":5,"op":"create","doc":"t1","doc_type":"tasks","data":{"title":"a","userId":"mallory","createdAt":1}}
        2 {"type":"mutate","mid":6,"op":"patch","doc":"t1","data":{"done":true,"createdAt":99,"body":"plain"}}
        3 {"type":"mutate","mid":1,"op":"patch","doc":"t1","data":{"done":false}}
        2 {"type":"mutate","mid":7,"op":"create","doc":"n1","doc_type":"notes","data":{"text":"bob's"}}
        1 {"type":"mutate","mid":4,"op":"create","doc":"n2","doc_type":"notes","data":{"text":"ada's"}}
        1 {"type":"subscribe","sub":"q","query":{"collection":"notes"}}
        2 {"type":"subscribe","sub":"q","query":{"collection":"notes"}}
        1 {"type":"subscribe","sub":"d","doc":"n1"}
        1 {"type":"mutate","mid":5,"op":"put","doc":"n1","data":{"text":"admin edit"}}
        3 {"type":"mutate","mid":2,"op":"create","doc":"n3","doc_type":"notes","data":{}}
        1 {"type":"mutate","mid":6,"op":"put","doc":"sys:schema:notes","data":{}}
        1 {"type":"mutate","mid":7,"op":"remove","doc":"sys:schema:notes"}
        "#
    ));
}

/// docs/PROTOCOL.md §12: staged writes are private, commit at one sequence or not at all.
#[test]
fn staged_sessions() {
    insta::assert_snapshot!(check(&format!(
        "{HELLO}{}",
        r#"
        1 {"type":"mutate","mid":1,"op":"create","doc":"a","doc_type":"notes","data":{"v":1}}
        1 {"type":"subscribe","sub":"s","doc":"sys:session"}
        2 {"type":"subscribe","sub":"s","doc":"sys:session"}
        2 {"type":"subscribe","sub":"q","query":{"collection":"notes"}}
        1 {"type":"mutate","mid":2,"op":"stage_put","doc":"a","doc_type":"notes","data":{"v":2}}
        1 {"type":"mutate","mid":3,"op":"stage_put","doc":"b","doc_type":"notes","data":{"v":1}}
        1 {"type":"mutate","mid":4,"op":"stage_put","doc":"c","doc_type":"notes","data":{"v":1}}
        1 {"type":"subscribe","sub":"st","doc":"sys:stage:b"}
        2 {"type":"subscribe","sub":"st","doc":"sys:stage:b"}
        2 {"type":"mutate","mid":1,"op":"patch","doc":"a","data":{"w":true}}
        1 {"type":"mutate","mid":5,"op":"stage_commit"}
        1 {"type":"mutate","mid":6,"op":"stage_put","doc":"a","doc_type":"notes","data":{"v":3}}
        reopen
        1 {"type":"hello","protocol":1,"client":"ca"}
        2 {"type":"hello","protocol":1,"client":"cb"}
        2 {"type":"subscribe","sub":"q","query":{"collection":"notes"}}
        1 {"type":"mutate","mid":7,"op":"stage_commit"}
        1 {"type":"mutate","mid":8,"op":"stage_commit"}
        1 {"type":"mutate","mid":9,"op":"stage_put","doc":"sys:index","doc_type":"notes","data":{}}
        1 {"type":"mutate","mid":10,"op":"stage_put","doc":"z","doc_type":"notes","data":{}}
        1 {"type":"mutate","mid":11,"op":"stage_discard"}
        1 {"type":"subscribe","sub":"s2","doc":"sys:session"}
        1 {"type":"mutate","mid":12,"op":"stage_put","doc":"x","doc_type":"notes","data":{}}
        1 {"type":"mutate","mid":13,"op":"stage_put","doc":"y","doc_type":"notes","data":{}}
        1 {"type":"mutate","mid":14,"op":"stage_commit"}
        reopen
        1 {"type":"hello","protocol":1,"client":"ca"}
        1 {"type":"subscribe","sub":"i","doc":"sys:index"}
        "#
    )));
}

/// docs/PROTOCOL.md §15: admins manage roles and teams; invitations are pending until accepted.
#[test]
fn users_and_teams() {
    insta::assert_snapshot!(check(
        r#"
        connect 1 ada admin
        connect 2 bob member
        1 {"type":"hello","protocol":1,"client":"ca"}
        2 {"type":"hello","protocol":1,"client":"cb"}
        1 {"type":"subscribe","sub":"u","doc":"sys:users"}
        1 {"type":"subscribe","sub":"t","doc":"sys:teams"}
        2 {"type":"mutate","mid":1,"op":"team_create","team":"design","name":"Design"}
        1 {"type":"mutate","mid":1,"op":"team_create","team":"design","name":"Design"}
        1 {"type":"mutate","mid":2,"op":"team_create","team":"design","name":"Again"}
        1 {"type":"mutate","mid":3,"op":"team_invite","team":"design","user":"bob"}
        1 {"type":"mutate","mid":4,"op":"team_invite","team":"design","user":"bob"}
        2 {"type":"mutate","mid":2,"op":"team_accept","team":"design"}
        2 {"type":"mutate","mid":3,"op":"team_accept","team":"design"}
        1 {"type":"mutate","mid":5,"op":"team_remove","team":"design","user":"carol"}
        1 {"type":"mutate","mid":6,"op":"user_set_role","user":"carol","role":"admin"}
        2 {"type":"mutate","mid":4,"op":"create","doc":"x","doc_type":"notes","data":{}}
        1 {"type":"mutate","mid":7,"op":"user_set_role","user":"bob","role":"viewer"}
        2 {"type":"mutate","mid":5,"op":"put","doc":"x","data":{"y":1}}
        connect 3 carol member
        disconnect 2
        connect 4 bob member
        4 {"type":"hello","protocol":1,"client":"cb2"}
        1 {"type":"mutate","mid":8,"op":"team_remove","team":"design","user":"bob"}
        1 {"type":"mutate","mid":9,"op":"team_delete","team":"design"}
        1 {"type":"mutate","mid":10,"op":"team_delete","team":"design"}
        "#
    ));
}

/// docs/PROTOCOL.md §16: contracts on bind, versions, not-modified reads, subscriptions, deletion,
/// private user buckets and the free plan's gate.
#[test]
fn buckets() {
    insta::assert_snapshot!(check(
        r#"
        connect 1 alice member
        connect 2 bob member
        connect 3 fred member free
        1 {"type":"hello","protocol":1,"client":"ca"}
        2 {"type":"hello","protocol":1,"client":"cb"}
        3 {"type":"hello","protocol":1,"client":"cf"}
        2 {"type":"subscribe","sub":"b","bucket":"notes"}
        1 {"type":"mutate","mid":1,"op":"bucket_bind","bucket":"notes","contract":{"backend":"d1-json","schemaId":"notes.plaintext","schemaVersion":1}}
        2 {"type":"mutate","mid":1,"op":"bucket_bind","bucket":"notes","contract":{"backend":"d1-json","schemaId":"notes.plaintext","schemaVersion":2}}
        2 {"type":"mutate","mid":2,"op":"bucket_bind","bucket":"notes","contract":{"backend":"d1-json","schemaId":"notes.plaintext","schemaVersion":1}}
        2 {"type":"subscribe","sub":"b","bucket":"notes"}
        1 {"type":"mutate","mid":2,"op":"bucket_set","bucket":"notes","value":{"text":"Hello world"},"if_version":0}
        2 {"type":"mutate","mid":3,"op":"bucket_set","bucket":"notes","value":{"text":"Stale"},"if_version":0}
        2 {"type":"bucket_get","req":1,"bucket":"notes","if_version":1}
        2 {"type":"bucket_get","req":2,"bucket":"notes","if_version":0}
        2 {"type":"asset_list","req":3,"bucket":"notes"}
        3 {"type":"mutate","mid":1,"op":"bucket_set","bucket":"notes","value":{"text":"free"}}
        1 {"type":"mutate","mid":3,"op":"bucket_bind","bucket":"user:bob","contract":{"backend":"d1-json","schemaId":"x","schemaVersion":1}}
        2 {"type":"mutate","mid":4,"op":"bucket_bind","bucket":"user:bob","contract":{"backend":"d1-json","schemaId":"x","schemaVersion":1}}
        1 {"type":"bucket_get","req":4,"bucket":"user:bob"}
        1 {"type":"mutate","mid":4,"op":"bucket_delete","bucket":"notes"}
        2 {"type":"bucket_get","req":5,"bucket":"notes"}
        1 {"type":"mutate","mid":5,"op":"bucket_bind","bucket":"notes","contract":{"backend":"d1-json","schemaId":"notes.plaintext","schemaVersion":2}}
        "#
    ));
}

/// docs/PROTOCOL.md §17: uploads get `a<seq>` keys, lists and subscriptions follow, limits hold.
#[test]
fn assets() {
    insta::assert_snapshot!(check(&format!(
        "{HELLO}{}",
        r#"
        1 {"type":"mutate","mid":1,"op":"bucket_bind","bucket":"gallery","contract":{"backend":"r2-assets","schemaId":"gallery","schemaVersion":1}}
        2 {"type":"subscribe","sub":"a","assets":"gallery"}
        1 {"type":"mutate","mid":2,"op":"asset_upload","bucket":"gallery","name":"hello.txt","content_type":"text/plain","data_b64":"aGVsbG8="}
        1 {"type":"mutate","mid":3,"op":"asset_upload","bucket":"gallery","name":"big.bin","content_type":"application/octet-stream","data_b64":"MDEyMzQ1Njc4OWFiY2RlZmdoaWo="}
        1 {"type":"mutate","mid":4,"op":"asset_upload","bucket":"gallery","name":"bad","content_type":"text/plain","data_b64":"!!"}
        2 {"type":"mutate","mid":1,"op":"bucket_set","bucket":"gallery","value":1}
        2 {"type":"subscribe","sub":"wrong","bucket":"gallery"}
        2 {"type":"asset_list","req":1,"bucket":"gallery"}
        2 {"type":"mutate","mid":2,"op":"asset_delete","bucket":"gallery","object_key":"a4"}
        2 {"type":"mutate","mid":3,"op":"asset_delete","bucket":"gallery","object_key":"a4"}
        "#
    )));
}

/// docs/PROTOCOL.md §18: usage per user across documents and buckets, exact refunds, soft-deleted
/// documents counting until purged, the limit reachable exactly and never passed, the owner charged
/// for another user's edit, add-ons raising the limit.
#[test]
fn quotas() {
    insta::assert_snapshot!(check(
        r#"
        connect 1 alice member
        connect 2 bob member pro 1
        1 {"type":"hello","protocol":1,"client":"ca"}
        2 {"type":"hello","protocol":1,"client":"cb"}
        1 {"type":"mutate","mid":1,"op":"create","doc":"a","doc_type":"t","data":{"text":"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"}}
        1 {"type":"mutate","mid":2,"op":"create","doc":"b","doc_type":"t","data":{"text":"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"}}
        usage alice
        1 {"type":"mutate","mid":3,"op":"create","doc":"c","doc_type":"t","data":{"text":"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"}}
        1 {"type":"mutate","mid":4,"op":"create","doc":"c","doc_type":"t","data":{"text":"0123456789012345678901234567890123456789012345678901234567890123456"}}
        usage alice
        1 {"type":"mutate","mid":5,"op":"create","doc":"d","doc_type":"t","data":{}}
        1 {"type":"mutate","mid":6,"op":"remove","doc":"a"}
        1 {"type":"mutate","mid":7,"op":"create","doc":"d","doc_type":"t","data":{}}
        1 {"type":"mutate","mid":8,"op":"purge","doc":"a"}
        usage alice
        1 {"type":"mutate","mid":9,"op":"create","doc":"d","doc_type":"t","data":{}}
        2 {"type":"mutate","mid":1,"op":"patch","doc":"b","data":{"more":"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"}}
        2 {"type":"mutate","mid":2,"op":"create","doc":"e","doc_type":"t","data":{"text":"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"}}
        usage bob
        1 {"type":"mutate","mid":10,"op":"bucket_bind","bucket":"notes","contract":{"backend":"d1-json","schemaId":"n","schemaVersion":1}}
        2 {"type":"mutate","mid":3,"op":"bucket_set","bucket":"notes","value":"0123456789012345678901234567890123456789012345678901234567890123456"}
        1 {"type":"mutate","mid":11,"op":"bucket_set","bucket":"notes","value":"x"}
        usage alice
        usage bob
        reopen
        1 {"type":"hello","protocol":1,"client":"ca"}
        1 {"type":"mutate","mid":12,"op":"patch","doc":"b","data":{"text":null}}
        1 {"type":"mutate","mid":13,"op":"bucket_delete","bucket":"notes"}
        usage alice
        "#
    ));
}
