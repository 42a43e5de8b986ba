//! The oracle against docs/PROTOCOL.md: small scripts of (connection, input, expected outputs),
//! with messages written as the spec writes them.

use roomlab_oracle::{Conn, Identity, Oracle, Output, PlanLimits, Settings};
use roomlab_protocol::{
    ClientMessage, DocId, FieldName, Limits, Mutation, Plan, Role, RoomId, ServerMessage, SubId, Target,
    UserId, YjsFrame,
};
use serde_json::{json, Value};
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

/// Every input of these scripts happens at this server time (ms).
const NOW: u64 = 1_700_000_000_000;

/// The connection id under which an HTTP answer is listed.
const HTTP: Conn = 0;

/// One step: who sends what, and everything every connection must receive, in order.
type Step = (Conn, Value, Vec<(Conn, Value)>);

fn settings() -> Settings {
    Settings {
        room: RoomId::new("canvas-9").unwrap(),
        limits: Limits::default(),
        plans: PlanLimits::default(),
    }
}

fn room() -> Oracle {
    Oracle::new(settings())
}

/// Runs a script and compares each step's outputs with the expected ones. Errors are compared
/// without their free-form `message`; an input is a client message, or one of `{"connect": user,
/// "role", "plan", "addons"}`, `{"http": mutation, "user", ...}`, `{"fail": message}` (its commit
/// fails), `{"disconnect": true}`, `{"restart": true}`.
fn check(oracle: &mut Oracle, script: Vec<Step>) {
    for (index, (conn, input, expected)) in script.into_iter().enumerate() {
        let actual = run(oracle, conn, &input);
        let expected: Vec<(Conn, Value)> =
            expected.into_iter().map(|(conn, message)| (conn, expected_wire(message))).collect();
        assert_eq!(actual, expected, "step {index}: {input}");
    }
}

fn run(oracle: &mut Oracle, conn: Conn, input: &Value) -> Vec<(Conn, Value)> {
    if input.get("connect").is_some() {
        return outputs(oracle.connect(conn, identity_of(input, "connect"), NOW));
    }
    if input.get("disconnect").is_some() {
        return outputs(oracle.disconnect(conn));
    }
    if input.get("restart").is_some() {
        oracle.restart();
        return Vec::new();
    }
    if let Some(mutation) = input.get("http") {
        let mutation: Mutation = serde_json::from_value(mutation.clone()).unwrap();
        let (answer, pushes) = oracle.http_mutation(identity_of(input, "user"), mutation, NOW);
        let mut all = vec![(HTTP, wire(&answer))];
        all.extend(outputs(pushes));
        return all;
    }
    let (message, fails) = match input.get("fail") {
        Some(message) => (message.clone(), true),
        None => (input.clone(), false),
    };
    let message: ClientMessage = serde_json::from_value(message).unwrap();
    outputs(oracle.receive(conn, message, NOW, fails))
}

/// `{"<key>": user, "role": .., "plan": .., "addons": ..}`; member, pro and 0 by default.
fn identity_of(input: &Value, key: &str) -> Identity {
    let text =
        |name: &str, default: &str| input.get(name).and_then(Value::as_str).unwrap_or(default).to_string();
    Identity {
        user: UserId::new(input[key].as_str().unwrap()).unwrap(),
        role: serde_json::from_value(json!(text("role", "member"))).unwrap(),
        plan: serde_json::from_value(json!(text("plan", "pro"))).unwrap(),
        addons: input.get("addons").and_then(Value::as_u64).unwrap_or(0) as u32,
    }
}

fn outputs(list: Vec<Output>) -> Vec<(Conn, Value)> {
    list.into_iter()
        .map(|output| match output {
            Output::Send { conn, message, .. } => (conn, wire(&message)),
            Output::Close { conn, code, .. } => (conn, json!({ "close": code })),
            Output::Yjs { conn, frame, .. } => (conn, json!({ "yjs": frame.payload })),
        })
        .collect()
}

/// A message as JSON, errors without their free-form text.
fn wire(message: &ServerMessage) -> Value {
    let mut value = serde_json::to_value(message).unwrap();
    if value["type"] == "error" {
        value.as_object_mut().unwrap().remove("message");
    }
    value
}

/// An expected message: read as a ServerMessage (so it has the spec's shape), then as JSON.
fn expected_wire(mut value: Value) -> Value {
    if value.get("close").is_some() || value.get("yjs").is_some() {
        return value;
    }
    if value["type"] == "error" && value.get("message").is_none() {
        value["message"] = json!("");
    }
    let message: ServerMessage =
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"));
    wire(&message)
}

/// Connects `user` with `role` on `conn` and says hello; the welcome is checked elsewhere.
fn join(oracle: &mut Oracle, conn: Conn, user: &str, role: &str) {
    run(oracle, conn, &json!({"connect": user, "role": role}));
    let welcome = run(oracle, conn, &json!({"type": "hello", "protocol": 1, "client": format!("c-{conn}")}));
    assert_eq!(welcome[0].1["type"], "welcome");
}

fn error(code: &str, ids: Value) -> Value {
    let mut value = json!({"type": "error", "code": code});
    for (key, id) in ids.as_object().unwrap() {
        value[key] = id.clone();
    }
    value
}

fn ack(mid: u64, seq: u64) -> Value {
    json!({"type": "ack", "mid": mid, "seq": seq})
}

fn mutate(mid: u64, op: Value) -> Value {
    let mut message = op;
    message["type"] = json!("mutate");
    message["mid"] = json!(mid);
    message
}

#[test]
fn handshake_welcome_hello_required_ping_and_unsupported_protocol() {
    let mut oracle = room();
    let limits = json!({"frame_bytes_max":1048576,"subscriptions_max":256,"outbound_queue_max":1024,"doc_bytes_max":262144,"list_items_max":10000,"replay_window_max":128,"asset_bytes_max":524288,"staged_docs_max":64});
    check(
        &mut oracle,
        vec![
            // users.recorded: a new user takes a sequence.
            (1, json!({"connect": "u-1", "role": "member"}), vec![]),
            (1, json!({"type":"ping","nonce":1}), vec![(1, error("hello_required", json!({})))]),
            (
                1,
                mutate(7, json!({"op":"create","doc":"t1","doc_type":"tasks","data":{}})),
                vec![(1, error("hello_required", json!({"mid": 7})))],
            ),
            (
                1,
                json!({"type":"subscribe","sub":"d1","doc":"t1"}),
                vec![(1, error("hello_required", json!({"sub": "d1"})))],
            ),
            (
                1,
                json!({"type":"bucket_get","req":3,"bucket":"notes"}),
                vec![(1, error("hello_required", json!({"req": 3})))],
            ),
            (
                1,
                json!({"type":"hello","protocol":1,"client":"c-3f9a"}),
                vec![(
                    1,
                    json!({"type":"welcome","protocol":1,"room":"canvas-9","user":"u-1","role":"member","seq":1,"limits":limits}),
                )],
            ),
            (
                1,
                json!({"type":"hello","protocol":1,"client":"c-3f9a"}),
                vec![(1, error("hello_required", json!({})))],
            ),
            (1, json!({"type":"ping","nonce":42}), vec![(1, json!({"type":"pong","nonce":42}))]),
            (2, json!({"connect": "u-2", "role": "viewer"}), vec![]),
            (
                2,
                json!({"type":"hello","protocol":2,"client":"c-2"}),
                vec![(2, error("unsupported_protocol", json!({}))), (2, json!({"close": 4002}))],
            ),
            (2, json!({"type":"ping","nonce":1}), vec![]),
            // The same user again changes nothing of sys:users: no sequence.
            (3, json!({"connect": "u-1", "role": "member"}), vec![]),
            (
                3,
                json!({"type":"hello","protocol":1,"client":"c-3"}),
                vec![(
                    3,
                    json!({"type":"welcome","protocol":1,"room":"canvas-9","user":"u-1","role":"member","seq":2,"limits":limits}),
                )],
            ),
        ],
    );
    assert_eq!(oracle.seq(), 2);
}

#[test]
fn documents_create_put_patch_delete_restore_purge() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-1", "member");
    let create = |mid, doc: &str, data: Value| {
        mutate(mid, json!({"op":"create","doc":doc,"doc_type":"tasks","data":data}))
    };
    check(
        &mut oracle,
        vec![
            (1, create(7, "t1", json!({"title":"Write the spec"})), vec![(1, ack(7, 2))]),
            (1, create(8, "t1", json!({})), vec![(1, error("exists", json!({"mid": 8})))]),
            (
                1,
                mutate(9, json!({"op":"put","doc":"t1","data":{"title":"Ship it"},"if_seq":12})),
                vec![(1, error("conflict", json!({"mid": 9, "seq": 2})))],
            ),
            (
                1,
                mutate(10, json!({"op":"put","doc":"t1","data":{"title":"Ship it"},"if_seq":2})),
                vec![(1, ack(10, 3))],
            ),
            (
                1,
                mutate(11, json!({"op":"patch","doc":"t1","data":{"done":true,"note":null}})),
                vec![(1, ack(11, 4))],
            ),
            (
                1,
                json!({"type":"subscribe","sub":"d0","doc":"t1"}),
                vec![(
                    1,
                    json!({"type":"doc:snapshot","sub":"d0","doc":{"id":"t1","doc_type":"tasks","seq":4,"owner":"u-1","data":{"title":"Ship it","done":true}}}),
                )],
            ),
            (
                1,
                json!({"type":"unsubscribe","sub":"d0"}),
                vec![(1, json!({"type":"unsubscribed","sub":"d0"}))],
            ),
            (
                1,
                mutate(12, json!({"op":"patch","doc":"t1","data":[1]})),
                vec![(1, error("invalid", json!({"mid": 12})))],
            ),
            (1, create(13, "t9", json!("text")), vec![(1, error("invalid", json!({"mid": 13})))]),
            (
                1,
                mutate(14, json!({"op":"put","doc":"nope","data":{}})),
                vec![(1, error("not_found", json!({"mid": 14})))],
            ),
            (
                1,
                mutate(15, json!({"op":"restore","doc":"t1"})),
                vec![(1, error("not_deleted", json!({"mid": 15})))],
            ),
            (
                1,
                mutate(16, json!({"op":"purge","doc":"t1"})),
                vec![(1, error("not_deleted", json!({"mid": 16})))],
            ),
            (
                1,
                mutate(17, json!({"op":"remove","doc":"t1","if_seq":3})),
                vec![(1, error("conflict", json!({"mid": 17, "seq": 4})))],
            ),
            (1, mutate(18, json!({"op":"remove","doc":"t1"})), vec![(1, ack(18, 5))]),
            // docs.create.deleted-id and docs.missing: `deleted` with the document's own seq.
            (1, create(19, "t1", json!({})), vec![(1, error("deleted", json!({"mid": 19, "seq": 4})))]),
            (
                1,
                mutate(20, json!({"op":"put","doc":"t1","data":{}})),
                vec![(1, error("deleted", json!({"mid": 20, "seq": 4})))],
            ),
            (
                1,
                mutate(21, json!({"op":"stage_put","doc":"t1","doc_type":"tasks","data":{}})),
                vec![(1, error("deleted", json!({"mid": 21, "seq": 4})))],
            ),
            (
                1,
                mutate(22, json!({"op":"remove","doc":"t1"})),
                vec![(1, error("deleted", json!({"mid": 22, "seq": 4})))],
            ),
            (1, mutate(23, json!({"op":"restore","doc":"t1"})), vec![(1, ack(23, 6))]),
            (1, mutate(24, json!({"op":"remove","doc":"t1"})), vec![(1, ack(24, 7))]),
            (1, mutate(25, json!({"op":"purge","doc":"t1"})), vec![(1, ack(25, 8))]),
            (
                1,
                mutate(26, json!({"op":"restore","doc":"t1"})),
                vec![(1, error("not_found", json!({"mid": 26})))],
            ),
            (1, create(27, "t1", json!({"title":"again"})), vec![(1, ack(27, 9))]),
            (1, create(28, "sys:index", json!({})), vec![(1, error("protected", json!({"mid": 28})))]),
            (1, create(29, "sys:whatever", json!({})), vec![(1, error("protected", json!({"mid": 29})))]),
            (
                1,
                mutate(30, json!({"op":"remove","doc":"sys:schema:tasks"})),
                vec![(1, error("protected", json!({"mid": 30})))],
            ),
            (
                1,
                mutate(
                    31,
                    json!({"op":"list_insert","doc":"sys:users","list":"l","item":"i","key":"a0","value":1}),
                ),
                vec![(1, error("protected", json!({"mid": 31})))],
            ),
        ],
    );
    join(&mut oracle, 2, "u-2", "viewer");
    check(
        &mut oracle,
        vec![
            (2, create(1, "t2", json!({})), vec![(2, error("forbidden", json!({"mid": 1})))]),
            (
                2,
                mutate(2, json!({"op":"remove","doc":"t1"})),
                vec![(2, error("forbidden", json!({"mid": 2})))],
            ),
            (
                2,
                json!({"type":"subscribe","sub":"d1","doc":"t1"}),
                vec![(
                    2,
                    json!({"type":"doc:snapshot","sub":"d1","doc":{"id":"t1","doc_type":"tasks","seq":9,"owner":"u-1","data":{"title":"again"}}}),
                )],
            ),
        ],
    );
}

#[test]
fn query_subscription_result_and_diffs() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-1", "member");
    join(&mut oracle, 2, "u-2", "member");
    let doc = |id: &str, seq: u64, data: Value| json!({"id":id,"doc_type":"tasks","seq":seq,"owner":"u-1","data":data});
    let diff = |sub: &str, seq: u64, parts: Value| {
        let mut message = json!({"type":"query:diff","sub":sub,"seq":seq});
        for (key, part) in parts.as_object().unwrap() {
            message[key] = part.clone();
        }
        message
    };
    check(
        &mut oracle,
        vec![
            (
                2,
                json!({"type":"subscribe","sub":"q1","query":{"collection":"tasks","where":{"field":"status","op":"eq","value":"active"},"order_by":[{"field":"priority","dir":"desc"}],"limit":50}}),
                vec![(2, json!({"type":"query:result","sub":"q1","seq":2,"docs":[]}))],
            ),
            (
                1,
                mutate(
                    1,
                    json!({"op":"create","doc":"t1","doc_type":"tasks","data":{"title":"Write the spec","status":"active","priority":1}}),
                ),
                vec![
                    (1, ack(1, 3)),
                    (
                        2,
                        diff(
                            "q1",
                            3,
                            json!({"added":[doc("t1", 3, json!({"title":"Write the spec","status":"active","priority":1}))]}),
                        ),
                    ),
                ],
            ),
            // query.no-empty-diffs: a non-matching document and another collection send nothing.
            (
                1,
                mutate(2, json!({"op":"create","doc":"t2","doc_type":"tasks","data":{"status":"done"}})),
                vec![(1, ack(2, 4))],
            ),
            (
                1,
                mutate(3, json!({"op":"create","doc":"n1","doc_type":"notes","data":{"status":"active"}})),
                vec![(1, ack(3, 5))],
            ),
            (
                1,
                mutate(
                    4,
                    json!({"op":"put","doc":"t1","data":{"title":"Ship it","status":"active","priority":1}}),
                ),
                vec![
                    (1, ack(4, 6)),
                    (
                        2,
                        diff(
                            "q1",
                            6,
                            json!({"changed":[doc("t1", 6, json!({"title":"Ship it","status":"active","priority":1}))]}),
                        ),
                    ),
                ],
            ),
            (
                1,
                mutate(5, json!({"op":"patch","doc":"t2","data":{"status":"active","priority":5}})),
                vec![
                    (1, ack(5, 7)),
                    (
                        2,
                        diff(
                            "q1",
                            7,
                            json!({"added":[doc("t2", 7, json!({"status":"active","priority":5}))]}),
                        ),
                    ),
                ],
            ),
            (
                1,
                mutate(6, json!({"op":"patch","doc":"t1","data":{"status":"done"}})),
                vec![(1, ack(6, 8)), (2, diff("q1", 8, json!({"removed":["t1"]})))],
            ),
            (
                1,
                mutate(7, json!({"op":"remove","doc":"t2"})),
                vec![(1, ack(7, 9)), (2, diff("q1", 9, json!({"removed":["t2"]})))],
            ),
            (
                1,
                mutate(8, json!({"op":"restore","doc":"t2"})),
                vec![
                    (1, ack(8, 10)),
                    (
                        2,
                        diff(
                            "q1",
                            10,
                            json!({"added":[doc("t2", 7, json!({"status":"active","priority":5}))]}),
                        ),
                    ),
                ],
            ),
            // A limit window: the lowest priority only.
            (
                2,
                json!({"type":"subscribe","sub":"q2","query":{"collection":"tasks","order_by":[{"field":"priority"}],"limit":1}}),
                vec![(
                    2,
                    json!({"type":"query:result","sub":"q2","seq":10,"docs":[doc("t1", 8, json!({"title":"Ship it","status":"done","priority":1}))]}),
                )],
            ),
            (
                1,
                mutate(9, json!({"op":"patch","doc":"t2","data":{"priority":0}})),
                vec![
                    (1, ack(9, 11)),
                    (
                        2,
                        diff(
                            "q1",
                            11,
                            json!({"changed":[doc("t2", 11, json!({"status":"active","priority":0}))]}),
                        ),
                    ),
                    (
                        2,
                        diff(
                            "q2",
                            11,
                            json!({"added":[doc("t2", 11, json!({"status":"active","priority":0}))],"removed":["t1"]}),
                        ),
                    ),
                ],
            ),
            // query.refused, subs.limit, subs.unsubscribe.
            (
                2,
                json!({"type":"subscribe","sub":"q3","query":{"collection":"tasks","limit":0}}),
                vec![(2, error("invalid", json!({"sub": "q3"})))],
            ),
            (
                2,
                json!({"type":"subscribe","sub":"q3","query":{"collection":"tasks","where":{"field":"$created","op":"eq","value":1}}}),
                vec![(2, error("invalid", json!({"sub": "q3"})))],
            ),
            (
                2,
                json!({"type":"subscribe","sub":"q1","query":{"collection":"tasks"}}),
                vec![(2, error("subscription_exists", json!({"sub": "q1"})))],
            ),
            (
                2,
                json!({"type":"unsubscribe","sub":"q1"}),
                vec![(2, json!({"type":"unsubscribed","sub":"q1"}))],
            ),
            (
                2,
                json!({"type":"unsubscribe","sub":"q1"}),
                vec![(2, error("subscription_unknown", json!({"sub": "q1"})))],
            ),
            (
                1,
                mutate(10, json!({"op":"patch","doc":"t2","data":{"priority":-1}})),
                vec![
                    (1, ack(10, 12)),
                    (
                        2,
                        diff(
                            "q2",
                            12,
                            json!({"changed":[doc("t2", 12, json!({"status":"active","priority":-1}))]}),
                        ),
                    ),
                ],
            ),
            // `$owner`, `$seq` and `in`, with numbers compared by value.
            (
                2,
                json!({"type":"subscribe","sub":"q4","query":{"collection":"tasks","where":{"and":[{"field":"$owner","op":"eq","value":"u-1"},{"field":"priority","op":"in","value":[1.0,-1]}]},"order_by":[{"field":"$seq","dir":"desc"}]}}),
                vec![(
                    2,
                    json!({"type":"query:result","sub":"q4","seq":12,"docs":[
                        doc("t2", 12, json!({"status":"active","priority":-1})),
                        doc("t1", 8, json!({"title":"Ship it","status":"done","priority":1})),
                    ]}),
                )],
            ),
        ],
    );
}

#[test]
fn document_subscription_lists_delete_restore_purge() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-1", "member");
    join(&mut oracle, 2, "u-2", "member");
    let insert = |mid, item: &str, key: &str, text: &str| {
        mutate(
            mid,
            json!({"op":"list_insert","doc":"board","list":"cards","item":item,"key":key,"value":{"text":text}}),
        )
    };
    let list_diff = |sub: &str, base: u64, seq: u64, lists: Value| json!({"type":"doc:diff","sub":sub,"doc":"board","base":base,"seq":seq,"lists":lists});
    let board = |sub: &str, seq: u64, title: &str| {
        json!({"type":"doc:snapshot","sub":sub,"doc":{"id":"board","doc_type":"boards","seq":seq,"owner":"u-1","data":{"title":title},
            "lists":{"cards":[{"id":"c9","key":"a0G","value":{"text":"new"}},{"id":"c7","key":"a0V","value":{"text":"hi"}}]}}})
    };
    check(
        &mut oracle,
        vec![
            (
                2,
                json!({"type":"subscribe","sub":"d1","doc":"board"}),
                vec![(2, json!({"type":"doc:missing","sub":"d1","doc":"board","seq":2}))],
            ),
            (
                1,
                mutate(1, json!({"op":"create","doc":"board","doc_type":"boards","data":{"title":"Sprint"}})),
                vec![
                    (1, ack(1, 3)),
                    (
                        2,
                        json!({"type":"doc:snapshot","sub":"d1","doc":{"id":"board","doc_type":"boards","seq":3,"owner":"u-1","data":{"title":"Sprint"}}}),
                    ),
                ],
            ),
            (
                1,
                insert(2, "c1", "a0", "first"),
                vec![
                    (1, ack(2, 4)),
                    (
                        2,
                        list_diff(
                            "d1",
                            3,
                            4,
                            json!({"cards":{"put":[{"id":"c1","key":"a0","value":{"text":"first"}}]}}),
                        ),
                    ),
                ],
            ),
            (
                1,
                insert(3, "c7", "a0V", "hi"),
                vec![
                    (1, ack(3, 5)),
                    (
                        2,
                        list_diff(
                            "d1",
                            4,
                            5,
                            json!({"cards":{"put":[{"id":"c7","key":"a0V","value":{"text":"hi"}}]}}),
                        ),
                    ),
                ],
            ),
            (1, insert(4, "c1", "a1", "again"), vec![(1, error("exists", json!({"mid": 4})))]),
            (
                1,
                mutate(5, json!({"op":"list_move","doc":"board","list":"cards","item":"c9","key":"a2"})),
                vec![(1, error("not_found", json!({"mid": 5})))],
            ),
            (
                1,
                insert(6, "c9", "a0G", "new"),
                vec![
                    (1, ack(6, 6)),
                    (
                        2,
                        list_diff(
                            "d1",
                            5,
                            6,
                            json!({"cards":{"put":[{"id":"c9","key":"a0G","value":{"text":"new"}}]}}),
                        ),
                    ),
                ],
            ),
            (
                1,
                mutate(7, json!({"op":"list_remove","doc":"board","list":"cards","item":"c1"})),
                vec![(1, ack(7, 7)), (2, list_diff("d1", 6, 7, json!({"cards":{"removed":["c1"]}})))],
            ),
            // A list op that alters nothing still takes a sequence, and sends `"lists":{}`.
            (
                1,
                mutate(
                    8,
                    json!({"op":"list_update","doc":"board","list":"cards","item":"c7","value":{"text":"hi"}}),
                ),
                vec![(1, ack(8, 8)), (2, list_diff("d1", 7, 8, json!({})))],
            ),
            // list.order: by (key, id) bytewise.
            (2, json!({"type":"subscribe","sub":"d2","doc":"board"}), vec![(2, board("d2", 8, "Sprint"))]),
            (
                1,
                mutate(9, json!({"op":"put","doc":"board","data":{"title":"Done"}})),
                vec![(1, ack(9, 9)), (2, board("d1", 9, "Done")), (2, board("d2", 9, "Done"))],
            ),
            (
                1,
                mutate(10, json!({"op":"remove","doc":"board"})),
                vec![
                    (1, ack(10, 10)),
                    (2, json!({"type":"doc:deleted","sub":"d1","doc":"board","seq":10})),
                    (2, json!({"type":"doc:deleted","sub":"d2","doc":"board","seq":10})),
                ],
            ),
            (
                2,
                json!({"type":"subscribe","sub":"d3","doc":"board"}),
                vec![(2, json!({"type":"doc:deleted","sub":"d3","doc":"board","seq":10}))],
            ),
            // docsub.survives-delete and docs.restore.same-seq.
            (
                1,
                mutate(11, json!({"op":"restore","doc":"board"})),
                vec![
                    (1, ack(11, 11)),
                    (2, board("d1", 9, "Done")),
                    (2, board("d2", 9, "Done")),
                    (2, board("d3", 9, "Done")),
                ],
            ),
            (
                1,
                mutate(12, json!({"op":"remove","doc":"board"})),
                vec![
                    (1, ack(12, 12)),
                    (2, json!({"type":"doc:deleted","sub":"d1","doc":"board","seq":12})),
                    (2, json!({"type":"doc:deleted","sub":"d2","doc":"board","seq":12})),
                    (2, json!({"type":"doc:deleted","sub":"d3","doc":"board","seq":12})),
                ],
            ),
            (
                1,
                mutate(13, json!({"op":"purge","doc":"board"})),
                vec![
                    (1, ack(13, 13)),
                    (2, json!({"type":"doc:missing","sub":"d1","doc":"board","seq":13})),
                    (2, json!({"type":"doc:missing","sub":"d2","doc":"board","seq":13})),
                    (2, json!({"type":"doc:missing","sub":"d3","doc":"board","seq":13})),
                ],
            ),
        ],
    );
}

#[test]
fn system_index_and_trash_are_live() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-1", "member");
    let view = |sub: &str, id: &str, seq: u64, data: Value| json!({"type":"doc:snapshot","sub":sub,"doc":{"id":id,"doc_type":"sys","seq":seq,"owner":"system","data":data}});
    check(
        &mut oracle,
        vec![
            (
                1,
                json!({"type":"subscribe","sub":"i","doc":"sys:index"}),
                vec![(1, view("i", "sys:index", 0, json!({"docs":[]})))],
            ),
            (
                1,
                json!({"type":"subscribe","sub":"t","doc":"sys:trash"}),
                vec![(1, view("t", "sys:trash", 0, json!({"docs":[]})))],
            ),
            (
                1,
                json!({"type":"subscribe","sub":"x","doc":"sys:nothing"}),
                vec![(1, json!({"type":"doc:missing","sub":"x","doc":"sys:nothing","seq":1}))],
            ),
            (
                1,
                mutate(1, json!({"op":"create","doc":"a1","doc_type":"notes","data":{}})),
                vec![
                    (1, ack(1, 2)),
                    (1, view("i", "sys:index", 2, json!({"docs":[{"id":"a1","doc_type":"notes"}]}))),
                ],
            ),
            (
                1,
                mutate(2, json!({"op":"remove","doc":"a1"})),
                vec![
                    (1, ack(2, 3)),
                    (1, view("i", "sys:index", 3, json!({"docs":[]}))),
                    (
                        1,
                        view(
                            "t",
                            "sys:trash",
                            3,
                            json!({"docs":[{"id":"a1","doc_type":"notes","deleted_at":NOW,"seq":3}]}),
                        ),
                    ),
                ],
            ),
            (
                1,
                mutate(3, json!({"op":"put","doc":"sys:trash","data":{}})),
                vec![(1, error("protected", json!({"mid": 3})))],
            ),
            // A purged document leaves sys:trash; it had already left sys:index, which stays.
            (
                1,
                mutate(4, json!({"op":"purge","doc":"a1"})),
                vec![(1, ack(4, 4)), (1, view("t", "sys:trash", 4, json!({"docs":[]})))],
            ),
        ],
    );
}

#[test]
fn schemas_validate_fill_and_gate_access() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-0", "admin");
    join(&mut oracle, 2, "u-1", "member");
    join(&mut oracle, 3, "u-2", "member");
    let schema = json!({"fields":{"title":{"type":"string","required":true},"completed":{"type":"boolean","default":false},"body":{"type":"richtext"}},
        "access":{"read":"viewer","write":"member"},"autoFields":{"userId":true,"createdAt":true,"updatedAt":true}});
    let create = |mid, doc: &str, doc_type: &str, data: Value| {
        mutate(mid, json!({"op":"create","doc":doc,"doc_type":doc_type,"data":data}))
    };
    check(
        &mut oracle,
        vec![
            (
                2,
                create(1, "sys:schema:tasks", "schema", schema.clone()),
                vec![(2, error("forbidden", json!({"mid": 1})))],
            ),
            (
                1,
                create(1, "sys:schema:tasks", "schema", json!({"fields":{"title":{"type":"strin"}}})),
                vec![(1, error("invalid", json!({"mid": 1})))],
            ),
            (1, create(2, "sys:schema:tasks", "schema", schema.clone()), vec![(1, ack(2, 4))]),
            (
                2,
                create(2, "t1", "tasks", json!({"completed":true})),
                vec![(2, error("invalid", json!({"mid": 2, "field": "title"})))],
            ),
            (
                2,
                create(3, "t1", "tasks", json!({"title":"x","extra":1})),
                vec![(2, error("invalid", json!({"mid": 3, "field": "extra"})))],
            ),
            (
                2,
                create(4, "t1", "tasks", json!({"title":5})),
                vec![(2, error("invalid", json!({"mid": 4, "field": "title"})))],
            ),
            (2, create(5, "t1", "tasks", json!({"title":"Write","userId":"forged"})), vec![(2, ack(5, 5))]),
            (
                3,
                json!({"type":"subscribe","sub":"d1","doc":"t1"}),
                vec![(
                    3,
                    json!({"type":"doc:snapshot","sub":"d1","doc":{"id":"t1","doc_type":"tasks","seq":5,"owner":"u-1",
                    "data":{"title":"Write","completed":false,"body":{"yjs":"body"},"userId":"u-1","createdAt":NOW,"updatedAt":NOW}}}),
                )],
            ),
            (
                3,
                json!({"type":"subscribe","sub":"s","doc":"sys:schema:tasks"}),
                vec![(
                    3,
                    json!({"type":"doc:snapshot","sub":"s","doc":{"id":"sys:schema:tasks","doc_type":"schema","seq":4,"owner":"u-0","data":schema}}),
                )],
            ),
            // access.owner: only the creator, admins included.
            (
                1,
                create(3, "sys:schema:diary", "schema", json!({"access":{"read":"owner","write":"owner"}})),
                vec![(1, ack(3, 6))],
            ),
            (2, create(6, "d-1", "diary", json!({"text":"secret"})), vec![(2, ack(6, 7))]),
            (
                3,
                json!({"type":"subscribe","sub":"x","doc":"d-1"}),
                vec![(3, error("forbidden", json!({"sub": "x"})))],
            ),
            (
                1,
                json!({"type":"subscribe","sub":"y","doc":"d-1"}),
                vec![(1, error("forbidden", json!({"sub": "y"})))],
            ),
            (
                3,
                mutate(1, json!({"op":"put","doc":"d-1","data":{}})),
                vec![(3, error("forbidden", json!({"mid": 1})))],
            ),
            (
                3,
                json!({"type":"subscribe","sub":"q","query":{"collection":"diary"}}),
                vec![(3, json!({"type":"query:result","sub":"q","seq":7,"docs":[]}))],
            ),
            (
                2,
                json!({"type":"subscribe","sub":"q","query":{"collection":"diary"}}),
                vec![(
                    2,
                    json!({"type":"query:result","sub":"q","seq":7,"docs":[{"id":"d-1","doc_type":"diary","seq":7,"owner":"u-1","data":{"text":"secret"}}]}),
                )],
            ),
            // A schema change that closes reading pushes the removal (query.read-access).
            (
                1,
                mutate(4, json!({"op":"patch","doc":"sys:schema:diary","data":{"access":{"read":"admin"}}})),
                vec![(1, ack(4, 8)), (2, json!({"type":"query:diff","sub":"q","seq":8,"removed":["d-1"]}))],
            ),
        ],
    );
}

#[test]
fn staged_sessions_commit_conflict_and_discard() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-1", "member");
    join(&mut oracle, 2, "u-2", "member");
    let session = |seq: u64, staged: Value| json!({"type":"doc:snapshot","sub":"s","doc":{"id":"sys:session","doc_type":"sys","seq":seq,"owner":"system","data":{"staged":staged}}});
    let stage = |seq: u64, data: Value| json!({"type":"doc:snapshot","sub":"st","doc":{"id":"sys:stage:t2","doc_type":"sys","seq":seq,"owner":"system","data":data}});
    let t2 = |seq: u64, owner: &str, title: &str| json!({"id":"t2","doc_type":"tasks","seq":seq,"owner":owner,"data":{"title":title}});
    check(
        &mut oracle,
        vec![
            (1, json!({"type":"subscribe","sub":"s","doc":"sys:session"}), vec![(1, session(2, json!([])))]),
            (
                1,
                json!({"type":"subscribe","sub":"st","doc":"sys:stage:t2"}),
                vec![(1, json!({"type":"doc:missing","sub":"st","doc":"sys:stage:t2","seq":2}))],
            ),
            (
                1,
                mutate(1, json!({"op":"stage_put","doc":"t2","doc_type":"tasks","data":{"title":"draft"}})),
                vec![
                    (1, ack(1, 2)),
                    (1, session(2, json!([{"doc":"t2","doc_type":"tasks","base_seq":0}]))),
                    (1, stage(2, json!({"title":"draft"}))),
                ],
            ),
            (
                2,
                json!({"type":"subscribe","sub":"q","query":{"collection":"tasks"}}),
                vec![(2, json!({"type":"query:result","sub":"q","seq":2,"docs":[]}))],
            ),
            (
                1,
                mutate(2, json!({"op":"stage_commit"})),
                vec![
                    (1, ack(2, 3)),
                    (1, session(3, json!([]))),
                    (1, json!({"type":"doc:missing","sub":"st","doc":"sys:stage:t2","seq":3})),
                    (2, json!({"type":"query:diff","sub":"q","seq":3,"added":[t2(3, "u-1", "draft")]})),
                ],
            ),
            (1, mutate(3, json!({"op":"stage_commit"})), vec![(1, ack(3, 3))]),
            (
                1,
                mutate(4, json!({"op":"stage_put","doc":"t2","doc_type":"tasks","data":{"title":"v2"}})),
                vec![
                    (1, ack(4, 3)),
                    (1, session(3, json!([{"doc":"t2","doc_type":"tasks","base_seq":3}]))),
                    (1, stage(3, json!({"title":"v2"}))),
                ],
            ),
            (
                2,
                mutate(1, json!({"op":"put","doc":"t2","data":{"title":"theirs"}})),
                vec![
                    (2, ack(1, 4)),
                    (2, json!({"type":"query:diff","sub":"q","seq":4,"changed":[t2(4, "u-1", "theirs")]})),
                ],
            ),
            (
                1,
                mutate(5, json!({"op":"stage_commit"})),
                vec![(1, error("conflict", json!({"mid": 5, "doc": "t2", "seq": 4})))],
            ),
            (
                1,
                mutate(6, json!({"op":"stage_discard"})),
                vec![
                    (1, ack(6, 4)),
                    (1, session(4, json!([]))),
                    (1, json!({"type":"doc:missing","sub":"st","doc":"sys:stage:t2","seq":4})),
                ],
            ),
        ],
    );
}

#[test]
fn json_buckets_bind_set_get_subscribe_delete() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-1", "member");
    run(&mut oracle, 2, &json!({"connect": "u-2", "role": "member", "plan": "free"}));
    run(&mut oracle, 2, &json!({"type":"hello","protocol":1,"client":"c-2"}));
    join(&mut oracle, 3, "u-3", "viewer");
    let notes = json!({"backend":"d1-json","schemaId":"notes.plaintext","schemaVersion":1});
    let bind = |mid, bucket: &str, contract: &Value| {
        mutate(mid, json!({"op":"bucket_bind","bucket":bucket,"contract":contract}))
    };
    let value = |version: u64, value: Value| json!({"type":"bucket:value","sub":"b1","bucket":"notes","version":version,"value":value});
    check(
        &mut oracle,
        vec![
            (
                1,
                mutate(1, json!({"op":"bucket_set","bucket":"notes","value":1})),
                vec![(1, error("not_found", json!({"mid": 1})))],
            ),
            (1, bind(2, "notes", &notes), vec![(1, json!({"type":"ack","mid":2,"seq":4,"version":0}))]),
            (2, json!({"type":"subscribe","sub":"b1","bucket":"notes"}), vec![(2, value(0, Value::Null))]),
            (
                1,
                mutate(
                    3,
                    json!({"op":"bucket_set","bucket":"notes","value":{"text":"Hello world"},"if_version":0}),
                ),
                vec![
                    (1, json!({"type":"ack","mid":3,"seq":5,"version":1})),
                    (2, value(1, json!({"text":"Hello world"}))),
                ],
            ),
            (
                1,
                mutate(4, json!({"op":"bucket_set","bucket":"notes","value":{},"if_version":0})),
                vec![(1, error("conflict", json!({"mid": 4, "version": 1})))],
            ),
            (
                2,
                mutate(1, json!({"op":"bucket_set","bucket":"notes","value":{}})),
                vec![(2, error("storage_disabled", json!({"mid": 1})))],
            ),
            (
                3,
                mutate(1, json!({"op":"bucket_set","bucket":"notes","value":{}})),
                vec![(3, error("forbidden", json!({"mid": 1})))],
            ),
            (
                1,
                bind(
                    5,
                    "notes",
                    &json!({"backend":"d1-json","schemaId":"notes.plaintext","schemaVersion":2}),
                ),
                vec![(1, error("incompatible", json!({"mid": 5, "contract": notes.clone()})))],
            ),
            (1, bind(6, "notes", &notes), vec![(1, json!({"type":"ack","mid":6,"seq":5,"version":1}))]),
            (
                2,
                json!({"type":"bucket_get","req":3,"bucket":"notes","if_version":1}),
                vec![(2, json!({"type":"bucket:not_modified","req":3,"bucket":"notes","version":1}))],
            ),
            (
                2,
                json!({"type":"bucket_get","req":4,"bucket":"notes"}),
                vec![(
                    2,
                    json!({"type":"bucket:value","req":4,"bucket":"notes","version":1,"value":{"text":"Hello world"}}),
                )],
            ),
            (
                2,
                json!({"type":"asset_list","req":5,"bucket":"notes"}),
                vec![(2, error("incompatible", json!({"req": 5, "contract": notes.clone()})))],
            ),
            (1, bind(7, "user:u-1", &notes), vec![(1, json!({"type":"ack","mid":7,"seq":6,"version":0}))]),
            (
                2,
                json!({"type":"subscribe","sub":"b2","bucket":"user:u-1"}),
                vec![(2, error("forbidden", json!({"sub": "b2"})))],
            ),
            (
                2,
                json!({"type":"subscribe","sub":"b3","bucket":"never"}),
                vec![(2, error("not_found", json!({"sub": "b3"})))],
            ),
        ],
    );
    assert_eq!(oracle.usage(&UserId::new("u-1").unwrap()), r#"{"text":"Hello world"}"#.len() as u64);
    let gallery = json!({"backend":"r2-assets","schemaId":"gallery","schemaVersion":1});
    check(
        &mut oracle,
        vec![
            (
                1,
                mutate(8, json!({"op":"bucket_delete","bucket":"notes"})),
                vec![
                    (1, ack(8, 7)),
                    (2, json!({"type":"bucket:deleted","sub":"b1","bucket":"notes","seq":7})),
                ],
            ),
            (
                2,
                json!({"type":"bucket_get","req":6,"bucket":"notes"}),
                vec![(2, error("not_found", json!({"req": 6})))],
            ),
            // bucket.subscribe.kind: bound again for assets, the JSON subscription sees nothing.
            (1, bind(9, "notes", &gallery), vec![(1, json!({"type":"ack","mid":9,"seq":8,"version":0}))]),
            (1, mutate(10, json!({"op":"bucket_delete","bucket":"notes"})), vec![(1, ack(10, 9))]),
            (
                1,
                bind(11, "notes", &notes),
                vec![(1, json!({"type":"ack","mid":11,"seq":10,"version":0})), (2, value(0, Value::Null))],
            ),
        ],
    );
    assert_eq!(oracle.usage(&UserId::new("u-1").unwrap()), 0);
}

#[test]
fn assets_upload_list_delete_over_both_paths() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-1", "member");
    let gallery = json!({"backend":"r2-assets","schemaId":"gallery","schemaVersion":1});
    let cat = json!({"object_key":"a3","name":"cat.png","content_type":"image/png","size":8,"uploaded_by":"u-1","seq":3});
    let note = json!({"object_key":"a4","name":"b.txt","content_type":"text/plain","size":2,"uploaded_by":"u-2","seq":4});
    let list = |assets: Value| json!({"type":"assets:list","sub":"a1","bucket":"gallery","assets":assets});
    check(
        &mut oracle,
        vec![
            (
                1,
                mutate(1, json!({"op":"bucket_bind","bucket":"gallery","contract":gallery})),
                vec![(1, json!({"type":"ack","mid":1,"seq":2,"version":0}))],
            ),
            (1, json!({"type":"subscribe","sub":"a1","assets":"gallery"}), vec![(1, list(json!([])))]),
            (
                1,
                mutate(
                    2,
                    json!({"op":"asset_upload","bucket":"gallery","name":"cat.png","content_type":"image/png","data_b64":"iVBORw0KGgo="}),
                ),
                vec![
                    (1, json!({"type":"ack","mid":2,"seq":3,"object_key":"a3"})),
                    (1, list(json!([cat.clone()]))),
                ],
            ),
            (
                1,
                mutate(
                    3,
                    json!({"op":"asset_upload","bucket":"gallery","name":"x","content_type":"text/plain","data_b64":"!!!!"}),
                ),
                vec![(1, error("invalid", json!({"mid": 3, "field": "data_b64"})))],
            ),
            (
                1,
                json!({"type":"asset_list","req":4,"bucket":"gallery"}),
                vec![(1, json!({"type":"assets:list","req":4,"bucket":"gallery","assets":[cat.clone()]}))],
            ),
            (
                1,
                mutate(4, json!({"op":"asset_delete","bucket":"gallery","object_key":"a99"})),
                vec![(1, error("not_found", json!({"mid": 4})))],
            ),
            (
                1,
                json!({"type":"subscribe","sub":"b","bucket":"gallery"}),
                vec![(1, error("incompatible", json!({"sub": "b", "contract": gallery.clone()})))],
            ),
            (
                0,
                json!({"http": {"op":"asset_upload","bucket":"gallery","name":"b.txt","content_type":"text/plain","data_b64":"aGk="}, "user": "u-2"}),
                vec![
                    (HTTP, json!({"type":"ack","mid":0,"seq":4,"object_key":"a4"})),
                    (1, list(json!([cat.clone(), note.clone()]))),
                ],
            ),
        ],
    );
    assert_eq!(oracle.usage(&UserId::new("u-1").unwrap()), 8);
    assert_eq!(oracle.usage(&UserId::new("u-2").unwrap()), 2);
    check(
        &mut oracle,
        vec![
            (
                1,
                mutate(5, json!({"op":"asset_delete","bucket":"gallery","object_key":"a3"})),
                vec![(1, ack(5, 5)), (1, list(json!([note])))],
            ),
            (
                1,
                mutate(6, json!({"op":"bucket_set","bucket":"gallery","value":{}})),
                vec![(1, error("incompatible", json!({"mid": 6, "contract": gallery})))],
            ),
            (
                0,
                json!({"http": {"op":"asset_upload","bucket":"gallery","name":"c","content_type":"text/plain","data_b64":"aGk="}, "user": "u-3", "plan": "free"}),
                vec![(HTTP, error("storage_disabled", json!({})))],
            ),
            // assets.delete over HTTP: no mid, anyone who may write the bucket; the uploader is refunded.
            (
                0,
                json!({"http": {"op":"asset_delete","bucket":"gallery","object_key":"a4"}, "user": "u-1"}),
                vec![(HTTP, ack(0, 6)), (1, list(json!([])))],
            ),
        ],
    );
    assert_eq!(oracle.usage(&UserId::new("u-1").unwrap()), 0);
    assert_eq!(oracle.usage(&UserId::new("u-2").unwrap()), 0);
}

#[test]
fn quotas_are_exact_at_the_limit_and_count_soft_deleted_documents() {
    let mut oracle = Oracle::new(Settings {
        plans: PlanLimits { free_bytes: 20, pro_bytes: 30, addon_bytes: 10 },
        ..settings()
    });
    join(&mut oracle, 1, "u-1", "member");
    // `{"a":""}` is 8 canonical bytes; each character of the value adds one.
    let create = |mid, doc: &str, chars: usize| {
        mutate(mid, json!({"op":"create","doc":doc,"doc_type":"notes","data":{"a":"x".repeat(chars)}}))
    };
    check(
        &mut oracle,
        vec![
            (1, create(1, "d1", 12), vec![(1, ack(1, 2))]),
            (1, create(2, "d2", 2), vec![(1, ack(2, 3))]),
            (
                1,
                mutate(3, json!({"op":"create","doc":"d3","doc_type":"notes","data":{}})),
                vec![(1, error("quota_exceeded", json!({"mid": 3, "used": 30, "limit": 30})))],
            ),
            (1, mutate(4, json!({"op":"put","doc":"d1","data":{"a":""}})), vec![(1, ack(4, 4))]),
            (1, mutate(5, json!({"op":"remove","doc":"d2"})), vec![(1, ack(5, 5))]),
            (
                1,
                create(6, "d3", 6),
                vec![(1, error("quota_exceeded", json!({"mid": 6, "used": 18, "limit": 30})))],
            ),
            (1, mutate(7, json!({"op":"purge","doc":"d2"})), vec![(1, ack(7, 6))]),
            (1, create(8, "d3", 6), vec![(1, ack(8, 7))]),
        ],
    );
    assert_eq!(oracle.usage(&UserId::new("u-1").unwrap()), 22);
    run(&mut oracle, 2, &json!({"connect": "u-2", "role": "member", "plan": "free"}));
    run(&mut oracle, 2, &json!({"type":"hello","protocol":1,"client":"c-2"}));
    run(&mut oracle, 3, &json!({"connect": "u-3", "role": "member", "addons": 1}));
    run(&mut oracle, 3, &json!({"type":"hello","protocol":1,"client":"c-3"}));
    check(
        &mut oracle,
        vec![
            (
                2,
                create(1, "f1", 13),
                vec![(2, error("quota_exceeded", json!({"mid": 1, "used": 0, "limit": 20})))],
            ),
            (2, create(2, "f1", 12), vec![(2, ack(2, 10))]),
            (3, create(1, "p1", 32), vec![(3, ack(1, 11))]),
        ],
    );
}

#[test]
fn replay_window_same_answer_expired_and_internal() {
    let mut oracle =
        Oracle::new(Settings { limits: Limits { replay_window_max: 2, ..Limits::default() }, ..settings() });
    join(&mut oracle, 1, "u-1", "member");
    let create = |mid, doc: &str| mutate(mid, json!({"op":"create","doc":doc,"doc_type":"notes","data":{}}));
    check(
        &mut oracle,
        vec![
            (1, create(1, "a"), vec![(1, ack(1, 2))]),
            (1, create(2, "a"), vec![(1, error("exists", json!({"mid": 2})))]),
            // mutation.replay.same-answer: not applied again, whatever it says now.
            (1, create(1, "zz"), vec![(1, ack(1, 2))]),
            (1, create(2, "b"), vec![(1, error("exists", json!({"mid": 2})))]),
            (1, create(3, "b"), vec![(1, ack(3, 3))]),
            (1, create(1, "a"), vec![(1, error("replay_expired", json!({"mid": 1})))]),
            (1, create(2, "a"), vec![(1, error("exists", json!({"mid": 2})))]),
            (
                1,
                json!({"fail": create(4, "c")}),
                vec![(1, error("internal", json!({"mid": 4}))), (1, json!({"close": 1011}))],
            ),
            (1, json!({"type":"ping","nonce":1}), vec![]),
            (1, json!({"disconnect": true}), vec![]),
            (2, json!({"connect": "u-1"}), vec![]),
            (2, json!({"type":"hello","protocol":1,"client":"c-1"}), vec![(2, expected_welcome(3))]),
            (2, create(4, "c"), vec![(2, ack(4, 4))]),
            (2, create(3, "b"), vec![(2, ack(3, 3))]),
        ],
    );
    assert!(!oracle.coverage().contains_key("mutation.replay.same-answer:internal"));
}

fn expected_welcome(seq: u64) -> Value {
    json!({"type":"welcome","protocol":1,"room":"canvas-9","user":"u-1","role":"member","seq":seq,"limits":{"frame_bytes_max":1048576,"subscriptions_max":256,"outbound_queue_max":1024,"doc_bytes_max":262144,"list_items_max":10000,"replay_window_max":2,"asset_bytes_max":524288,"staged_docs_max":64}})
}

#[test]
fn users_roles_and_teams() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-0", "admin");
    join(&mut oracle, 2, "u-1", "member");
    let teams = |seq: u64, data: Value| json!({"type":"doc:snapshot","sub":"t","doc":{"id":"sys:teams","doc_type":"sys","seq":seq,"owner":"system","data":{"teams":data}}});
    let users = |seq: u64, data: Value| json!({"type":"doc:snapshot","sub":"u","doc":{"id":"sys:users","doc_type":"sys","seq":seq,"owner":"system","data":{"users":data}}});
    let design = |members: Value| json!([{"id":"design","name":"Design","members":members}]);
    check(
        &mut oracle,
        vec![
            (1, json!({"type":"subscribe","sub":"t","doc":"sys:teams"}), vec![(1, teams(0, json!([])))]),
            (
                1,
                json!({"type":"subscribe","sub":"u","doc":"sys:users"}),
                vec![(1, users(2, json!([{"id":"u-0","role":"admin"},{"id":"u-1","role":"member"}])))],
            ),
            (
                2,
                mutate(1, json!({"op":"team_create","team":"design","name":"Design"})),
                vec![(2, error("forbidden", json!({"mid": 1})))],
            ),
            (
                1,
                mutate(1, json!({"op":"team_create","team":"design","name":"Design"})),
                vec![(1, ack(1, 3)), (1, teams(3, design(json!([]))))],
            ),
            (
                1,
                mutate(2, json!({"op":"team_create","team":"design","name":"Again"})),
                vec![(1, error("exists", json!({"mid": 2})))],
            ),
            (
                1,
                mutate(3, json!({"op":"team_invite","team":"design","user":"u-1"})),
                vec![(1, ack(3, 4)), (1, teams(4, design(json!([{"user":"u-1","status":"pending"}]))))],
            ),
            (
                1,
                mutate(4, json!({"op":"team_invite","team":"design","user":"u-1"})),
                vec![(1, error("exists", json!({"mid": 4})))],
            ),
            (
                2,
                mutate(2, json!({"op":"team_accept","team":"design"})),
                vec![(2, ack(2, 5)), (1, teams(5, design(json!([{"user":"u-1","status":"active"}]))))],
            ),
            (
                2,
                mutate(3, json!({"op":"team_accept","team":"design"})),
                vec![(2, error("not_found", json!({"mid": 3})))],
            ),
            (
                1,
                mutate(5, json!({"op":"team_remove","team":"design","user":"u-9"})),
                vec![(1, error("not_found", json!({"mid": 5})))],
            ),
            (
                1,
                mutate(6, json!({"op":"user_set_role","user":"u-9","role":"admin"})),
                vec![(1, error("not_found", json!({"mid": 6})))],
            ),
            (
                1,
                mutate(7, json!({"op":"user_set_role","user":"u-1","role":"viewer"})),
                vec![
                    (1, ack(7, 6)),
                    (1, users(6, json!([{"id":"u-0","role":"admin"},{"id":"u-1","role":"viewer"}]))),
                ],
            ),
            (
                2,
                mutate(4, json!({"op":"create","doc":"x","doc_type":"notes","data":{}})),
                vec![(2, error("forbidden", json!({"mid": 4})))],
            ),
            (
                3,
                json!({"connect": "u-2", "role": "member"}),
                vec![(
                    1,
                    users(
                        7,
                        json!([{"id":"u-0","role":"admin"},{"id":"u-1","role":"viewer"},{"id":"u-2","role":"member"}]),
                    ),
                )],
            ),
            (
                1,
                mutate(8, json!({"op":"team_delete","team":"design"})),
                vec![(1, ack(8, 8)), (1, teams(8, json!([])))],
            ),
            (
                1,
                mutate(9, json!({"op":"team_delete","team":"design"})),
                vec![(1, error("not_found", json!({"mid": 9})))],
            ),
        ],
    );
}

#[test]
fn limits_refuse_with_their_codes() {
    let limits = Limits {
        doc_bytes_max: 20,
        list_items_max: 2,
        subscriptions_max: 2,
        staged_docs_max: 1,
        asset_bytes_max: 4,
        ..Limits::default()
    };
    let mut oracle = Oracle::new(Settings { limits, ..settings() });
    join(&mut oracle, 1, "u-1", "member");
    let insert = |mid, item: &str| {
        mutate(mid, json!({"op":"list_insert","doc":"l","list":"items","item":item,"key":"a0","value":1}))
    };
    let stage =
        |mid, doc: &str| mutate(mid, json!({"op":"stage_put","doc":doc,"doc_type":"notes","data":{}}));
    let subscribe = |sub: &str| json!({"type":"subscribe","sub":sub,"doc":"nothing"});
    let missing = |sub: &str| json!({"type":"doc:missing","sub":sub,"doc":"nothing","seq":5});
    check(
        &mut oracle,
        vec![
            (
                1,
                mutate(1, json!({"op":"create","doc":"d","doc_type":"notes","data":{"a":"x".repeat(13)}})),
                vec![(1, error("limit_exceeded", json!({"mid": 1})))],
            ),
            (
                1,
                mutate(2, json!({"op":"create","doc":"d","doc_type":"notes","data":{"a":"x".repeat(12)}})),
                vec![(1, ack(2, 2))],
            ),
            (
                1,
                mutate(3, json!({"op":"create","doc":"l","doc_type":"notes","data":{}})),
                vec![(1, ack(3, 3))],
            ),
            (1, insert(4, "i1"), vec![(1, ack(4, 4))]),
            (1, insert(5, "i2"), vec![(1, ack(5, 5))]),
            (1, insert(6, "i3"), vec![(1, error("limit_exceeded", json!({"mid": 6})))]),
            (1, subscribe("s1"), vec![(1, missing("s1"))]),
            (1, subscribe("s2"), vec![(1, missing("s2"))]),
            (1, subscribe("s3"), vec![(1, error("subscription_limit", json!({"sub": "s3"})))]),
            (1, stage(7, "a"), vec![(1, ack(7, 5))]),
            (1, stage(8, "b"), vec![(1, error("limit_exceeded", json!({"mid": 8})))]),
            (1, stage(9, "a"), vec![(1, ack(9, 5))]),
            (
                1,
                mutate(
                    10,
                    json!({"op":"bucket_bind","bucket":"g","contract":{"backend":"r2-assets","schemaId":"g","schemaVersion":1}}),
                ),
                vec![(1, json!({"type":"ack","mid":10,"seq":6,"version":0}))],
            ),
            (
                1,
                mutate(
                    11,
                    json!({"op":"asset_upload","bucket":"g","name":"x","content_type":"image/png","data_b64":"iVBORw0KGgo="}),
                ),
                vec![(1, error("limit_exceeded", json!({"mid": 11})))],
            ),
        ],
    );
}

#[test]
fn restart_keeps_committed_state_and_drops_connections() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-1", "member");
    check(
        &mut oracle,
        vec![
            (
                1,
                mutate(1, json!({"op":"stage_put","doc":"t","doc_type":"notes","data":{"x":1}})),
                vec![(1, ack(1, 1))],
            ),
            (
                1,
                mutate(2, json!({"op":"create","doc":"n","doc_type":"notes","data":{}})),
                vec![(1, ack(2, 2))],
            ),
            (1, json!({"restart": true}), vec![]),
            (1, json!({"type":"ping","nonce":1}), vec![]),
            (2, json!({"connect": "u-1"}), vec![]),
            (
                2,
                json!({"type":"hello","protocol":1,"client":"c-1"}),
                vec![(
                    2,
                    json!({"type":"welcome","protocol":1,"room":"canvas-9","user":"u-1","role":"member","seq":2,"limits":Limits::default()}),
                )],
            ),
            (
                2,
                mutate(2, json!({"op":"create","doc":"other","doc_type":"notes","data":{}})),
                vec![(2, ack(2, 2))],
            ),
            (
                2,
                json!({"type":"subscribe","sub":"s","doc":"sys:session"}),
                vec![(
                    2,
                    json!({"type":"doc:snapshot","sub":"s","doc":{"id":"sys:session","doc_type":"sys","seq":2,"owner":"system","data":{"staged":[{"doc":"t","doc_type":"notes","base_seq":0}]}}}),
                )],
            ),
        ],
    );
}

/// A client's Yjs update typing `text` into the root text `field`, with its own client id.
fn client_update(client_id: u64, field: &str, text: &str) -> Vec<u8> {
    let doc = Doc::with_client_id(client_id);
    let root = doc.get_or_insert_text(field);
    root.insert(&mut doc.transact_mut(), 0, text);
    let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
    update
}

fn sync(step: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128, "one-byte length in these tests");
    let mut payload = vec![0, step, bytes.len() as u8];
    payload.extend_from_slice(bytes);
    payload
}

fn yjs(oracle: &mut Oracle, conn: Conn, doc: &str, payload: Vec<u8>, fails: bool) -> Vec<(Conn, Value)> {
    let frame = YjsFrame { doc: DocId::new(doc).unwrap(), field: FieldName::new("body").unwrap(), payload };
    outputs(oracle.receive_yjs(conn, frame, NOW, fails))
}

/// An awareness message announcing (client id, clock, JSON state) entries; one-byte lengths.
fn awareness_message(entries: &[(u8, u8, &str)]) -> Vec<u8> {
    let mut update = vec![entries.len() as u8];
    for (client, clock, state) in entries {
        update.extend_from_slice(&[*client, *clock, state.len() as u8]);
        update.extend_from_slice(state.as_bytes());
    }
    let mut message = vec![1, update.len() as u8];
    message.extend_from_slice(&update);
    message
}

/// yjs.awareness: what a connection announced is removed for the field's other connections when
/// it closes the field or goes; malformed or past 16 ids, it is refused and not relayed.
#[test]
fn yjs_awareness_is_removed_when_its_connection_goes() {
    let mut oracle = room();
    for (conn, user) in [(1, "u-1"), (2, "u-2"), (3, "u-3")] {
        join(&mut oracle, conn, user, "member");
    }
    let create = mutate(1, json!({"op":"create","doc":"t1","doc_type":"notes","data":{}}));
    check(&mut oracle, vec![(1, create, vec![(1, ack(1, 4))])]);
    let state = StateVector::default().encode_v1();
    for conn in [1, 2, 3] {
        yjs(&mut oracle, conn, "t1", sync(0, &state), false);
    }
    let announce = awareness_message(&[(90, 3, "{}"), (7, 1, "{}")]);
    assert_eq!(
        yjs(&mut oracle, 1, "t1", announce.clone(), false),
        vec![(2, json!({"yjs": announce.clone()})), (3, json!({"yjs": announce}))]
    );
    let removal = awareness_message(&[(7, 2, "null"), (90, 4, "null")]);
    check(
        &mut oracle,
        vec![(
            1,
            json!({"type":"yjs_close","doc":"t1","field":"body"}),
            vec![(2, json!({"yjs": removal.clone()})), (3, json!({"yjs": removal}))],
        )],
    );
    yjs(&mut oracle, 2, "t1", awareness_message(&[(5, 9, "{}"), (6, 1, "{}"), (6, 2, "null")]), false);
    assert_eq!(
        outputs(oracle.disconnect(2)),
        vec![(3, json!({"yjs": awareness_message(&[(5, 10, "null")])}))]
    );
    assert_eq!(outputs(oracle.disconnect(3)), vec![]);

    let refused = |code: &str| vec![(1, expected_wire(error(code, json!({"doc": "t1", "field": "body"}))))];
    join(&mut oracle, 1, "u-1", "member");
    yjs(&mut oracle, 1, "t1", sync(0, &state), false);
    let many: Vec<(u8, u8, &str)> = (1..=17).map(|id| (id, 1, "{}")).collect();
    assert_eq!(yjs(&mut oracle, 1, "t1", awareness_message(&many), false), refused("limit_exceeded"));
    assert_eq!(yjs(&mut oracle, 1, "t1", awareness_message(&many[..16]), false), vec![]);
    assert_eq!(yjs(&mut oracle, 1, "t1", vec![1, 9, 1], false), refused("bad_frame"));
}

#[test]
fn yjs_sync_relay_access_and_persistence() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-1", "member");
    join(&mut oracle, 2, "u-2", "member");
    join(&mut oracle, 3, "u-3", "viewer");
    check(
        &mut oracle,
        vec![(
            1,
            mutate(1, json!({"op":"create","doc":"t1","doc_type":"notes","data":{}})),
            vec![(1, ack(1, 4))],
        )],
    );
    let empty_state = StateVector::default().encode_v1();
    let empty_update = Doc::new().transact().encode_state_as_update_v1(&StateVector::default());
    let answer = |conn: Conn, update: &[u8], state: &[u8]| {
        vec![(conn, json!({"yjs": sync(1, update)})), (conn, json!({"yjs": sync(0, state)}))]
    };
    assert_eq!(
        yjs(&mut oracle, 1, "t1", sync(0, &empty_state), false),
        answer(1, &empty_update, &empty_state)
    );
    assert_eq!(
        yjs(&mut oracle, 2, "t1", sync(0, &empty_state), false),
        answer(2, &empty_update, &empty_state)
    );
    let hello = client_update(7, "body", "hello");
    let update_payload = sync(2, &hello);
    assert_eq!(
        yjs(&mut oracle, 1, "t1", update_payload.clone(), false),
        vec![(2, json!({"yjs": update_payload}))]
    );
    let doc_id = DocId::new("t1").unwrap();
    let body = FieldName::new("body").unwrap();
    assert_eq!(oracle.yjs_text(&doc_id, &body).as_deref(), Some("hello"));
    // yjs.access: a viewer's update is refused before it is applied; syncing is a read.
    let intruder = sync(2, &client_update(9, "body", "spam"));
    assert_eq!(
        yjs(&mut oracle, 3, "t1", intruder, false),
        vec![(3, expected_wire(error("forbidden", json!({"doc": "t1", "field": "body"}))))]
    );
    let synced = yjs(&mut oracle, 3, "t1", sync(0, &empty_state), false);
    assert_eq!(synced.len(), 2);
    let step_2 = synced[0].1["yjs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|byte| byte.as_u64().unwrap() as u8)
        .collect::<Vec<u8>>();
    let replica = Doc::new();
    {
        use yrs::updates::decoder::Decode;
        let bytes = &step_2[3..];
        replica.transact_mut().apply_update(yrs::Update::decode_v1(bytes).unwrap()).unwrap();
    }
    let replica_text = replica.get_or_insert_text("body");
    assert_eq!(replica_text.get_string(&replica.transact()), "hello");
    // yjs.access: a reader's step 2 is no write only when it is the empty update; any other is
    // refused, even one whose content the room already has.
    assert_eq!(yjs(&mut oracle, 3, "t1", sync(1, &[0, 0]), false), vec![]);
    assert_eq!(
        yjs(&mut oracle, 3, "t1", sync(1, &hello), false),
        vec![(3, expected_wire(error("forbidden", json!({"doc": "t1", "field": "body"}))))]
    );
    assert_eq!(
        yjs(&mut oracle, 3, "t1", sync(1, &client_update(12, "body", "spam")), false),
        vec![(3, expected_wire(error("forbidden", json!({"doc": "t1", "field": "body"}))))]
    );
    assert_eq!(
        yjs(&mut oracle, 3, "t1", vec![9], false),
        vec![(3, expected_wire(error("bad_frame", json!({"doc": "t1", "field": "body"}))))]
    );
    // Awareness is relayed to the others with the field open, never stored.
    let awareness = awareness_message(&[(33, 2, "{}")]);
    assert_eq!(
        yjs(&mut oracle, 1, "t1", awareness.clone(), false),
        vec![(2, json!({"yjs": awareness.clone()})), (3, json!({"yjs": awareness}))]
    );
    check(&mut oracle, vec![(2, json!({"type":"yjs_close","doc":"t1","field":"body"}), vec![])]);
    let more = sync(2, &client_update(8, "other", "x"));
    assert_eq!(yjs(&mut oracle, 1, "t1", more.clone(), false), vec![(3, json!({"yjs": more}))]);
    assert_eq!(
        yjs(&mut oracle, 1, "nope", sync(0, &empty_state), false),
        vec![(1, expected_wire(error("not_found", json!({"doc": "nope", "field": "body"}))))]
    );
    // A snapshot keeps its own Yjs state.
    let snapshot = oracle.clone();
    let late = sync(2, &client_update(10, "body", "!"));
    yjs(&mut oracle, 1, "t1", late, false);
    assert_eq!(snapshot.yjs_text(&doc_id, &body).as_deref(), Some("hello"));
    assert_eq!(oracle.yjs_text(&doc_id, &body).map(|text| text.len()), Some(6));
    // yjs.doc-live and yjs.richtext-field.
    check(&mut oracle, vec![(1, mutate(2, json!({"op":"remove","doc":"t1"})), vec![(1, ack(2, 5))])]);
    assert_eq!(
        yjs(&mut oracle, 1, "t1", sync(0, &empty_state), false),
        vec![(1, expected_wire(error("deleted", json!({"doc": "t1", "field": "body", "seq": 4}))))]
    );
    join(&mut oracle, 4, "u-0", "admin");
    check(
        &mut oracle,
        vec![
            (
                4,
                mutate(
                    1,
                    json!({"op":"create","doc":"sys:schema:typed","doc_type":"schema","data":{"fields":{"title":{"type":"string"}}}}),
                ),
                vec![(4, ack(1, 7))],
            ),
            (
                4,
                mutate(2, json!({"op":"create","doc":"t2","doc_type":"typed","data":{}})),
                vec![(4, ack(2, 8))],
            ),
        ],
    );
    assert_eq!(
        yjs(&mut oracle, 4, "t2", sync(0, &empty_state), false),
        vec![(4, expected_wire(error("invalid", json!({"doc": "t2", "field": "body"}))))]
    );
    // A storage fault on an update: internal, then close 1011.
    check(
        &mut oracle,
        vec![(
            4,
            mutate(3, json!({"op":"create","doc":"t3","doc_type":"notes","data":{}})),
            vec![(4, ack(3, 9))],
        )],
    );
    assert_eq!(
        yjs(&mut oracle, 4, "t3", sync(2, &client_update(11, "body", "x")), true),
        vec![
            (4, expected_wire(error("internal", json!({"doc": "t3", "field": "body"})))),
            (4, json!({"close": 1011}))
        ]
    );
    assert_eq!(oracle.yjs_text(&DocId::new("t3").unwrap(), &body), None);
}

#[test]
fn answer_gives_a_fresh_subscription_and_coverage_counts_branches() {
    let mut oracle = room();
    join(&mut oracle, 1, "u-1", "member");
    check(
        &mut oracle,
        vec![
            (
                1,
                mutate(1, json!({"op":"create","doc":"t1","doc_type":"tasks","data":{"title":"x"}})),
                vec![(1, ack(1, 2))],
            ),
            (
                1,
                mutate(2, json!({"op":"create","doc":"t1","doc_type":"tasks","data":{}})),
                vec![(1, error("exists", json!({"mid": 2})))],
            ),
        ],
    );
    let identity =
        Identity { user: UserId::new("u-2").unwrap(), role: Role::Viewer, plan: Plan::Pro, addons: 0 };
    let answer = oracle.answer(&identity, &SubId::new("a").unwrap(), &Target::Doc(DocId::new("t1").unwrap()));
    assert_eq!(
        answer.map(|message| wire(&message)),
        Some(
            json!({"type":"doc:snapshot","sub":"a","doc":{"id":"t1","doc_type":"tasks","seq":2,"owner":"u-1","data":{"title":"x"}}})
        )
    );
    let coverage = oracle.coverage();
    assert_eq!(coverage.get("docs.create"), Some(&1));
    assert_eq!(coverage.get("docs.create:exists"), Some(&1));
    assert_eq!(coverage.get("conn.hello.first"), Some(&1));
}

/// Each output as (connection, type, and the error code or `sub` it names), for scripts whose
/// frames are too long to write out.
fn kinds(outputs: &[(Conn, Value)]) -> Vec<(Conn, String)> {
    let text = |value: &Value| value.as_str().unwrap_or("").to_string();
    outputs
        .iter()
        .map(|(conn, message)| {
            let what = match text(&message["type"]).as_str() {
                "error" => format!("error {} {}", text(&message["code"]), text(&message["sub"])),
                kind => kind.to_string(),
            };
            (*conn, what.trim_end().to_string())
        })
        .collect()
}

/// limits.frame-size: an answer or a push whose frame would be over `frame_bytes_max` is never
/// sent; `limit_exceeded` goes in its place, and a push's subscription ends.
#[test]
fn frames_over_the_frame_limit_are_refused_in_their_place() {
    let limits = Limits { frame_bytes_max: 700, ..Limits::default() };
    let mut oracle = Oracle::new(Settings { limits, ..settings() });
    join(&mut oracle, 1, "u-1", "member");
    join(&mut oracle, 2, "u-2", "member");
    let watch = json!({"type":"subscribe","sub":"w","query":{"collection":"wide"}});
    assert_eq!(kinds(&run(&mut oracle, 2, &watch)), [(2, "query:result".to_string())]);
    let pad = "x".repeat(300);
    let create = |mid: u64, doc: &str| {
        mutate(mid, json!({"op":"create","doc":doc,"doc_type":"wide","data":{"pad":pad}}))
    };
    let stage = |mid: u64, doc: &str| {
        mutate(mid, json!({"op":"stage_put","doc":doc,"doc_type":"wide","data":{"pad":pad}}))
    };
    // One document fits in a push.
    assert_eq!(kinds(&run(&mut oracle, 1, &create(1, "a"))), [(1, "ack".into()), (2, "query:diff".into())]);
    // Two at once (one staged commit) do not: the subscription ends with the refusal.
    run(&mut oracle, 1, &stage(2, "b"));
    run(&mut oracle, 1, &stage(3, "c"));
    let commit = run(&mut oracle, 1, &mutate(4, json!({"op":"stage_commit"})));
    assert_eq!(kinds(&commit), [(1, "ack".into()), (2, "error limit_exceeded w".into())]);
    assert_eq!(kinds(&run(&mut oracle, 1, &create(5, "d"))), [(1, "ack".to_string())]);
    // A first answer over the limit is refused and makes no subscription; a narrower one fits.
    assert_eq!(kinds(&run(&mut oracle, 2, &watch)), [(2, "error limit_exceeded w".to_string())]);
    let unsubscribe = json!({"type":"unsubscribe","sub":"w"});
    assert_eq!(kinds(&run(&mut oracle, 2, &unsubscribe)), [(2, "error subscription_unknown w".to_string())]);
    let narrow = json!({"type":"subscribe","sub":"n","query":{"collection":"wide","limit":1}});
    assert_eq!(kinds(&run(&mut oracle, 2, &narrow)), [(2, "query:result".to_string())]);
}
