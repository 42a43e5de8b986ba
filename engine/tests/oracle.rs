//! The engine against the oracle (`roomlab_oracle`, the spec as plain code): random operation
//! sequences from several users and roles, with crashes and commit groups, must get the same replies,
//! the same pushes and leave the same state.

mod twin;

use proptest::prelude::*;
use roomlab_engine::{Config, Quotas};
use roomlab_protocol::{
    Backend, BucketName, ClientMessage, Contract, DocId, DocType, FieldName, ItemId, Limits, ListKey,
    Mutation, Query, SubId, Target,
};
use serde_json::{json, Value};
use twin::{Twin, PEOPLE};

fn config() -> Config {
    let limits = Limits {
        list_items_max: 2,
        replay_window_max: 4,
        subscriptions_max: 3,
        doc_bytes_max: 200,
        ..Limits::default()
    };
    Config { limits, quotas: Quotas { free_bytes: 120, pro_bytes: 200, addon_bytes: 0 }, ..Config::default() }
}

#[derive(Debug, Clone)]
enum Op {
    Mutate {
        conn: usize,
        mutation: Mutation,
        replay_back: Option<u64>,
    },
    Subscribe {
        conn: usize,
        sub: usize,
        target: Target,
    },
    Unsubscribe {
        conn: usize,
        sub: usize,
    },
    BucketGet {
        conn: usize,
        if_version: Option<u64>,
    },
    Reconnect {
        conn: usize,
    },
    Crash,
    /// Opens a commit group, or commits the open one.
    Group,
}

fn doc_id() -> impl Strategy<Value = DocId> {
    prop::sample::select(vec!["d0", "d1", "d2", "sys:index"]).prop_map(|id| DocId::new(id).unwrap())
}

fn data() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => (0..5u8, prop_oneof![0..3usize, 0..90usize]).prop_map(|(n, len)| json!({"n": n, "s": "x".repeat(len)})),
        1 => Just(json!([1])),
    ]
}

fn patch() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0..5u8).prop_map(|n| json!({"n": n})),
        (0..3usize).prop_map(|len| json!({"s": "x".repeat(len)})),
        Just(json!({"n": null})),
        Just(json!({"s": null})),
    ]
}

fn key() -> impl Strategy<Value = ListKey> {
    prop::sample::select(vec!["a0", "a1", "a0V", "a2", "Zz"]).prop_map(|k| ListKey::new(k).unwrap())
}

fn item() -> impl Strategy<Value = ItemId> {
    prop::sample::select(vec!["i0", "i1", "i2"]).prop_map(|i| ItemId::new(i).unwrap())
}

fn bucket() -> impl Strategy<Value = BucketName> {
    prop::sample::select(vec!["b0", "user:alice", "user:bob"]).prop_map(|b| BucketName::new(b).unwrap())
}

fn contract() -> impl Strategy<Value = Contract> {
    prop::sample::select(vec![(Backend::D1Json, 1), (Backend::D1Json, 2), (Backend::R2Assets, 1)])
        .prop_map(|(backend, version)| Contract { backend, schema_id: "s".into(), schema_version: version })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let list = || Just(FieldName::new("l").unwrap());
    let if_seq = || prop::option::weighted(0.3, 0..30u64);
    let doc_type = prop::sample::select(vec!["t", "u"]).prop_map(|t| DocType::new(t).unwrap());
    prop_oneof![
        4 => (doc_id(), doc_type, data()).prop_map(|(doc, doc_type, data)| Mutation::Create { doc, doc_type, data }),
        2 => (doc_id(), data(), if_seq()).prop_map(|(doc, data, if_seq)| Mutation::Put { doc, data, if_seq }),
        3 => (doc_id(), patch(), if_seq()).prop_map(|(doc, data, if_seq)| Mutation::Patch { doc, data, if_seq }),
        2 => (doc_id(), if_seq()).prop_map(|(doc, if_seq)| Mutation::Remove { doc, if_seq }),
        2 => doc_id().prop_map(|doc| Mutation::Restore { doc }),
        1 => doc_id().prop_map(|doc| Mutation::Purge { doc }),
        2 => (doc_id(), list(), item(), key(), 0..60usize).prop_map(|(doc, list, item, key, len)| {
            Mutation::ListInsert { doc, list, item, key, value: json!("v".repeat(len)) }
        }),
        1 => (doc_id(), list(), item(), key()).prop_map(|(doc, list, item, key)| Mutation::ListMove { doc, list, item, key }),
        1 => (doc_id(), list(), item()).prop_map(|(doc, list, item)| Mutation::ListUpdate { doc, list, item, value: json!(1) }),
        1 => (doc_id(), list(), item()).prop_map(|(doc, list, item)| Mutation::ListRemove { doc, list, item }),
        2 => (bucket(), contract()).prop_map(|(bucket, contract)| Mutation::BucketBind { bucket, contract }),
        2 => (bucket(), 0..120usize, prop::option::of(0..3u64)).prop_map(|(bucket, len, if_version)| {
            Mutation::BucketSet { bucket, value: json!("b".repeat(len)), if_version }
        }),
        1 => bucket().prop_map(|bucket| Mutation::BucketDelete { bucket }),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    let docs = prop::sample::select(vec!["d0", "d1", "d2", "sys:index", "sys:trash", "sys:users"]);
    // `s eq` filters take the engine's index; `n gt` filters its scan.
    let filter = prop_oneof![
        Just(None),
        (0..4u8).prop_map(|above| Some(json!({"field": "n", "op": "gt", "value": above}))),
        (0..3usize).prop_map(|len| Some(json!({"field": "s", "op": "eq", "value": "x".repeat(len)}))),
        (0..3usize, 0..4u8).prop_map(|(len, above)| {
            let eq = json!({"field": "s", "op": "eq", "value": "x".repeat(len)});
            Some(json!({"and": [eq, {"field": "n", "op": "gt", "value": above}]}))
        }),
    ];
    let query = (filter, any::<bool>(), prop::option::of(1..3u32)).prop_map(|(filter, desc, limit)| {
        let mut query = json!({"collection": "t"});
        if let Some(filter) = filter {
            query["where"] = filter;
        }
        if desc {
            query["order_by"] = json!([{"field": "n", "dir": "desc"}]);
        }
        if let Some(limit) = limit {
            query["limit"] = json!(limit);
        }
        serde_json::from_value::<Query>(query).unwrap()
    });
    prop_oneof![
        3 => docs.prop_map(|doc| Target::Doc(DocId::new(doc).unwrap())),
        3 => query.prop_map(Target::Query),
        1 => Just(Target::Bucket(BucketName::new("b0").unwrap())),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let conn = || 0..PEOPLE.len();
    prop_oneof![
        12 => (conn(), mutation(), prop::option::weighted(0.1, 0..5u64))
            .prop_map(|(conn, mutation, replay_back)| Op::Mutate { conn, mutation, replay_back }),
        3 => (conn(), 0..4usize, target()).prop_map(|(conn, sub, target)| Op::Subscribe { conn, sub, target }),
        1 => (conn(), 0..4usize).prop_map(|(conn, sub)| Op::Unsubscribe { conn, sub }),
        1 => (conn(), prop::option::of(0..3u64)).prop_map(|(conn, if_version)| Op::BucketGet { conn, if_version }),
        1 => conn().prop_map(|conn| Op::Reconnect { conn }),
        1 => Just(Op::Crash),
        1 => Just(Op::Group),
    ]
}

/// Turns an operation into what the twin does.
fn step(twin: &mut Twin, next_mid: &mut [u64], op: Op) {
    let (conn, message) = match op {
        Op::Crash => return twin.crash(),
        Op::Group => return twin.toggle_group(),
        Op::Reconnect { conn } => return twin.reconnect(conn),
        Op::Mutate { conn, mutation, replay_back } => {
            let mid = match replay_back {
                Some(back) if next_mid[conn] > back + 1 => next_mid[conn] - 1 - back,
                _ => {
                    next_mid[conn] += 1;
                    next_mid[conn] - 1
                }
            };
            (conn, ClientMessage::Mutate { mid, mutation })
        }
        Op::Subscribe { conn, sub, target } => (conn, ClientMessage::Subscribe { sub: sub_id(sub), target }),
        Op::Unsubscribe { conn, sub } => (conn, ClientMessage::Unsubscribe { sub: sub_id(sub) }),
        Op::BucketGet { conn, if_version } => {
            (conn, ClientMessage::BucketGet { req: 1, bucket: BucketName::new("b0").unwrap(), if_version })
        }
    };
    twin.handle(conn, message);
}

/// Runs `ops` on the engine and the oracle side by side; the twin asserts that every reply, every
/// push and the final state agree.
fn check(ops: Vec<Op>) {
    let directory = tempfile::tempdir().unwrap();
    let mut twin = Twin::new(&directory.path().join("room.sqlite"), config());
    let mut next_mid = vec![1; PEOPLE.len()];
    for op in ops {
        step(&mut twin, &mut next_mid, op);
    }
    twin.finish();
}

fn sub_id(sub: usize) -> SubId {
    SubId::new(format!("s{sub}")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_oracle(ops in prop::collection::vec(op(), 1..80)) {
        check(ops);
    }
}

/// Operations on one shared document's lists, with document subscriptions watching it: the
/// `doc:diff` pushes (docs/PROTOCOL.md docs.subscribe.list-diff) are rare in the broad mix above, so
/// this mix makes them the common case, interleaved with data writes, deletes and restores that
/// must send the whole document instead.
fn list_op() -> impl Strategy<Value = Op> {
    let conn = || 0..PEOPLE.len();
    let doc = || Just(DocId::new("d0").unwrap());
    let list = || prop::sample::select(vec!["l", "m"]).prop_map(|l| FieldName::new(l).unwrap());
    let mutation = prop_oneof![
        1 => Just(Mutation::Create { doc: DocId::new("d0").unwrap(), doc_type: DocType::new("t").unwrap(), data: json!({}) }),
        4 => (doc(), list(), item(), key(), 0..3usize).prop_map(|(doc, list, item, key, len)| {
            Mutation::ListInsert { doc, list, item, key, value: json!("v".repeat(len)) }
        }),
        3 => (doc(), list(), item(), key()).prop_map(|(doc, list, item, key)| Mutation::ListMove { doc, list, item, key }),
        2 => (doc(), list(), item(), 0..2u8).prop_map(|(doc, list, item, value)| Mutation::ListUpdate { doc, list, item, value: json!(value) }),
        3 => (doc(), list(), item()).prop_map(|(doc, list, item)| Mutation::ListRemove { doc, list, item }),
        1 => (doc(), patch()).prop_map(|(doc, data)| Mutation::Patch { doc, data, if_seq: None }),
        1 => doc().prop_map(|doc| Mutation::Remove { doc, if_seq: None }),
        1 => doc().prop_map(|doc| Mutation::Restore { doc }),
    ];
    let watch = || Target::Doc(DocId::new("d0").unwrap());
    prop_oneof![
        12 => (conn(), mutation).prop_map(|(conn, mutation)| Op::Mutate { conn, mutation, replay_back: None }),
        3 => (conn(), 0..2usize).prop_map(move |(conn, sub)| Op::Subscribe { conn, sub, target: watch() }),
        1 => (conn(), 0..2usize).prop_map(|(conn, sub)| Op::Unsubscribe { conn, sub }),
        1 => conn().prop_map(|conn| Op::Reconnect { conn }),
        1 => Just(Op::Crash),
        1 => Just(Op::Group),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn list_diffs_agree_with_the_oracle(ops in prop::collection::vec(list_op(), 1..60)) {
        check(ops);
    }
}
