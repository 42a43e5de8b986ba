//! The engine's hot paths, each beside its baseline measured in the same run:
//! - `mutations`: confirmed creates in one file-backed WAL room, against raw rusqlite doing the same
//!   inserts one transaction each (target: at least 50 % of the raw rate), with SQLite's default
//!   page size and, for comparison, with the room's 1 KiB pages; then the same creates in commit
//!   groups of 8 (as a busy server commits them), beside raw rusqlite with 8 inserts per
//!   transaction;
//! - `fanout`: one write with 1,000 and 10,000 live query subscriptions, 100 of which match (target:
//!   the cost follows the 100, not the total);
//! - `lists`: moving one item of a 9,000-item list, against the same move in a 10-item list (target:
//!   the cost of a list op does not follow the list's length);
//! - `yjs`: a 6,000-insert typing trace applied through the room, against a bare yrs document.
//!
//! Run: `cargo bench -p roomlab-benches --bench engine`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use roomlab_engine::{Config, ConnId, Identity, Room};
use roomlab_protocol::{
    decode, write_var_uint, ClientMessage, DocId, FieldName, Limits, Role, RoomId, UserId, YjsFrame,
};
use std::time::Duration;
use yrs::updates::decoder::Decode;
use yrs::{Text, Transact, Update};

fn message(json: &str) -> ClientMessage {
    decode(json.as_bytes(), 1 << 20).expect("a valid frame")
}

fn join(room: &mut Room, conn: u64, user: &str) {
    room.connect(ConnId(conn), Identity::new(UserId::new(user).unwrap(), Role::Member), 0);
    room.handle(ConnId(conn), message(&format!(r#"{{"type":"hello","protocol":1,"client":"c{conn}"}}"#)), 0);
}

/// Creates per commit group in the grouped arms of `mutations`.
const GROUP: u64 = 8;

fn create_frame(mid: u64) -> ClientMessage {
    message(&format!(
        r#"{{"type":"mutate","mid":{mid},"op":"create","doc":"d{mid}","doc_type":"t","data":{{"title":"task {mid}","n":{mid}}}}}"#
    ))
}

fn mutations(c: &mut Criterion) {
    let mut group = c.benchmark_group("mutations");
    group.throughput(Throughput::Elements(1)).measurement_time(Duration::from_secs(5));
    let directory = tempfile::tempdir().unwrap();
    let mut room = Room::open(
        RoomId::new("bench").unwrap(),
        Some(&directory.path().join("room.sqlite")),
        Config::default(),
    )
    .unwrap();
    join(&mut room, 1, "alice");
    let mut mid = 0u64;
    group.bench_function("room confirmed create", |b| {
        b.iter(|| {
            mid += 1;
            let effects = room.handle(ConnId(1), create_frame(mid), mid);
            assert_eq!(effects.len(), 1);
        })
    });
    let raw = |name: &str| directory.path().join(name);
    raw_inserts(&mut group, &raw("raw.sqlite"), (None, "NORMAL"), 1, "raw rusqlite insert (baseline)");
    raw_inserts(
        &mut group,
        &raw("raw-1k.sqlite"),
        (Some(1024), "NORMAL"),
        1,
        "raw rusqlite insert, 1 KiB pages like the room",
    );
    raw_inserts(
        &mut group,
        &raw("raw-1k-full.sqlite"),
        (Some(1024), "FULL"),
        1,
        "raw rusqlite insert, 1 KiB pages, synchronous=FULL like the room",
    );
    group.throughput(Throughput::Elements(GROUP));
    group.bench_function("room confirmed creates, commit groups of 8", |b| {
        b.iter(|| {
            room.begin_group().unwrap();
            for _ in 0..GROUP {
                mid += 1;
                let effects = room.handle(ConnId(1), create_frame(mid), mid);
                assert_eq!(effects.len(), 1);
            }
            room.commit_group().unwrap();
        })
    });
    raw_inserts(
        &mut group,
        &raw("raw-1k-8.sqlite"),
        (Some(1024), "NORMAL"),
        GROUP,
        "raw rusqlite, 8 inserts per transaction, 1 KiB pages",
    );
    raw_inserts(
        &mut group,
        &raw("raw-1k-8-full.sqlite"),
        (Some(1024), "FULL"),
        GROUP,
        "raw rusqlite, 8 inserts per transaction, 1 KiB pages, synchronous=FULL",
    );
    group.finish();
}

/// Raw rusqlite inserting the same rows, `per_transaction` to a transaction, in WAL mode with
/// exclusive locking, SQLite's default page size unless one is given, and the given `synchronous`
/// (the room runs FULL: ack.durable; NORMAL is the baseline the first figures were measured on).
fn raw_inserts(
    group: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    path: &std::path::Path,
    (page_bytes, synchronous): (Option<i64>, &str),
    per_transaction: u64,
    name: &str,
) {
    let raw = rusqlite::Connection::open(path).unwrap();
    if let Some(page_bytes) = page_bytes {
        raw.pragma_update(None, "page_size", page_bytes).unwrap();
    }
    raw.pragma_update(None, "journal_mode", "WAL").unwrap();
    raw.pragma_update(None, "synchronous", synchronous).unwrap();
    raw.pragma_update(None, "locking_mode", "EXCLUSIVE").unwrap();
    raw.execute_batch(
        "CREATE TABLE documents (id TEXT PRIMARY KEY, doc_type TEXT, seq INTEGER, owner TEXT, data TEXT)",
    )
    .unwrap();
    let mut n = 0u64;
    group.bench_function(name, |b| {
        b.iter(|| {
            let transaction = raw.unchecked_transaction().unwrap();
            for _ in 0..per_transaction {
                n += 1;
                transaction
                    .prepare_cached(
                        "INSERT INTO documents (id, doc_type, seq, owner, data) VALUES (?1, 't', ?2, 'alice', ?3)",
                    )
                    .unwrap()
                    .execute(rusqlite::params![
                        format!("d{n}"),
                        n as i64,
                        format!(r#"{{"title":"task {n}","n":{n}}}"#)
                    ])
                    .unwrap();
            }
            transaction.commit().unwrap();
        })
    });
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(1)).sample_size(20);
    for total in [1_000usize, 10_000] {
        let limits = Limits { subscriptions_max: 1_000, ..Limits::default() };
        let mut room =
            Room::open(RoomId::new("bench").unwrap(), None, Config { limits, ..Config::default() }).unwrap();
        join(&mut room, 0, "writer");
        room.handle(
            ConnId(0),
            message(r#"{"type":"mutate","mid":1,"op":"create","doc":"hot","doc_type":"t","data":{"k":"hot","n":0}}"#),
            0,
        );
        for i in 0..total {
            let conn = 1 + (i / 1_000) as u64;
            if i % 1_000 == 0 {
                join(&mut room, conn, &format!("reader{conn}"));
            }
            // Every tenth subscription of the first thousand matches the hot document.
            let key = if i < 1_000 && i % 10 == 0 { "hot".to_string() } else { format!("cold{i}") };
            let query = format!(
                r#"{{"type":"subscribe","sub":"s{i}","query":{{"collection":"t","where":{{"field":"k","op":"eq","value":"{key}"}}}}}}"#
            );
            room.handle(ConnId(conn), message(&query), 0);
        }
        let mut mid = 1u64;
        group.bench_with_input(BenchmarkId::new("one write, 100 matching", total), &total, |b, _| {
            b.iter(|| {
                mid += 1;
                let frame = format!(
                    r#"{{"type":"mutate","mid":{mid},"op":"patch","doc":"hot","data":{{"n":{mid}}}}}"#
                );
                let effects = room.handle(ConnId(0), message(&frame), mid);
                assert_eq!(effects.len(), 101, "the ack and 100 diffs");
            })
        });
    }
    group.finish();
}

/// A typing trace: 6,000 single-character inserts at seeded positions, as yrs updates.
fn typing_trace() -> Vec<Vec<u8>> {
    let doc = yrs::Doc::with_client_id(1);
    let text = doc.get_or_insert_text("body");
    let mut rng = ChaCha8Rng::seed_from_u64(6_000);
    let mut length = 0u32;
    (0..6_000)
        .map(|_| {
            let mut transaction = doc.transact_mut();
            let at = if length == 0 { 0 } else { (rng.next_u32() % (length + 1)).min(length) };
            text.insert(&mut transaction, at, "x");
            length += 1;
            transaction.encode_update_v1()
        })
        .collect()
}

fn sync_update(update: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(update.len() + 4);
    write_var_uint(&mut out, 0);
    write_var_uint(&mut out, 2);
    write_var_uint(&mut out, update.len() as u64);
    out.extend_from_slice(update);
    out
}

fn yjs(c: &mut Criterion) {
    let trace = typing_trace();
    let mut group = c.benchmark_group("yjs");
    group.throughput(Throughput::Elements(trace.len() as u64)).sample_size(10);
    group.bench_function("room applies 6000-insert trace", |b| {
        b.iter(|| {
            let directory = tempfile::tempdir().unwrap();
            let path = directory.path().join("room.sqlite");
            let mut room = Room::open(RoomId::new("bench").unwrap(), Some(&path), Config::default()).unwrap();
            join(&mut room, 1, "alice");
            room.handle(
                ConnId(1),
                message(r#"{"type":"mutate","mid":1,"op":"create","doc":"t","doc_type":"t","data":{}}"#),
                0,
            );
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let (doc, field) = (DocId::new("t").unwrap(), FieldName::new("body").unwrap());
            for update in &trace {
                let frame = YjsFrame { doc: doc.clone(), field: field.clone(), payload: sync_update(update) };
                let effects = room.handle_yjs(ConnId(1), frame, &mut rng);
                assert!(effects.is_empty(), "{effects:?}");
            }
        })
    });
    group.bench_function("bare yrs applies the trace (baseline)", |b| {
        b.iter(|| {
            let doc = yrs::Doc::with_client_id(2);
            for update in &trace {
                doc.transact_mut().apply_update(Update::decode_v1(update).unwrap()).unwrap();
            }
        })
    });
    group.finish();
}

/// A room with one board whose list `cards` holds `items` items, and the next free mutation id.
fn board(directory: &std::path::Path, items: u64) -> (Room, u64) {
    let path = directory.join(format!("board-{items}.sqlite"));
    let mut room = Room::open(RoomId::new("lists").unwrap(), Some(&path), Config::default()).unwrap();
    join(&mut room, 1, "alice");
    let create = r#"{"type":"mutate","mid":1,"op":"create","doc":"b","doc_type":"boards","data":{}}"#;
    room.handle(ConnId(1), message(create), 0);
    for item in 1..=items {
        let frame = format!(
            r#"{{"type":"mutate","mid":{},"op":"list_insert","doc":"b","list":"cards","item":"c{item}","key":"a0","value":{{"n":{item}}}}}"#,
            item + 1
        );
        room.handle(ConnId(1), message(&frame), 0);
    }
    (room, items + 2)
}

fn lists(c: &mut Criterion) {
    let mut group = c.benchmark_group("lists");
    group.throughput(Throughput::Elements(1)).measurement_time(Duration::from_secs(5));
    let directory = tempfile::tempdir().unwrap();
    for items in [10u64, 9_000] {
        let (mut room, mut mid) = board(directory.path(), items);
        group.bench_with_input(BenchmarkId::new("move one item", items), &items, |b, _| {
            b.iter(|| {
                mid += 1;
                // Alternate between two keys so that every move changes the item.
                let key = if mid % 2 == 0 { "a1" } else { "a2" };
                let frame = format!(
                    r#"{{"type":"mutate","mid":{mid},"op":"list_move","doc":"b","list":"cards","item":"c1","key":"{key}"}}"#
                );
                let effects = room.handle(ConnId(1), message(&frame), mid);
                assert_eq!(effects.len(), 1);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, mutations, fanout, lists, yjs);
criterion_main!(benches);
