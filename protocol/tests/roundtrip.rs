//! Every message survives encode → decode unchanged, and no input makes decode panic.

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use roomlab_protocol::*;
use serde_json::Value;

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9:_-]{0,11}"
}

macro_rules! id_strategy {
    ($name:ident, $type:ty) => {
        fn $name() -> impl Strategy<Value = $type> {
            ident().prop_map(|s| <$type>::new(s).unwrap())
        }
    };
}
id_strategy!(doc_id, DocId);
id_strategy!(doc_type, DocType);
id_strategy!(sub_id, SubId);
id_strategy!(client_id, ClientId);
id_strategy!(user_id, UserId);
id_strategy!(room_id, RoomId);
id_strategy!(bucket, BucketName);
id_strategy!(field_name, FieldName);
id_strategy!(item_id, ItemId);
id_strategy!(team_id, TeamId);
id_strategy!(object_key, ObjectKey);

fn list_key() -> impl Strategy<Value = ListKey> {
    "a[0-9A-Za-z]{0,4}[1-9A-Za-z]".prop_map(|s| ListKey::new(s).unwrap())
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1000i32..1000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("[a-z]{1,6}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Viewer), Just(Role::Member), Just(Role::Admin)]
}

fn contract() -> impl Strategy<Value = Contract> {
    (prop_oneof![Just(Backend::D1Json), Just(Backend::R2Assets)], ident(), any::<u32>())
        .prop_map(|(backend, schema_id, schema_version)| Contract { backend, schema_id, schema_version })
}

fn filter() -> impl Strategy<Value = Where> {
    let op = prop_oneof![
        Just(Op::Eq),
        Just(Op::Ne),
        Just(Op::Lt),
        Just(Op::Lte),
        Just(Op::Gt),
        Just(Op::Gte),
        Just(Op::In)
    ];
    let leaf = (prop_oneof![ident(), Just("$id".to_string()), Just("$seq".to_string())], op, json())
        .prop_map(|(field, op, value)| Where::Condition { field: Field(field), op, value });
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(|and| Where::And { and }),
            vec(inner, 0..3).prop_map(|or| Where::Or { or }),
        ]
    })
}

fn query() -> impl Strategy<Value = Query> {
    let order = (ident(), any::<bool>()).prop_map(|(f, desc)| Order {
        field: Field(f),
        dir: if desc { Direction::Desc } else { Direction::Asc },
    });
    (doc_type(), option::of(filter()), vec(order, 0..3), option::of(1u32..1000))
        .prop_map(|(collection, filter, order_by, limit)| Query { collection, filter, order_by, limit })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let seq = option::of(any::<u64>());
    prop_oneof![
        (doc_id(), doc_type(), json()).prop_map(|(doc, doc_type, data)| Mutation::Create {
            doc,
            doc_type,
            data
        }),
        (doc_id(), json(), seq.clone()).prop_map(|(doc, data, if_seq)| Mutation::Put { doc, data, if_seq }),
        (doc_id(), json(), seq.clone()).prop_map(|(doc, data, if_seq)| Mutation::Patch { doc, data, if_seq }),
        (doc_id(), seq).prop_map(|(doc, if_seq)| Mutation::Remove { doc, if_seq }),
        doc_id().prop_map(|doc| Mutation::Restore { doc }),
        doc_id().prop_map(|doc| Mutation::Purge { doc }),
        (doc_id(), field_name(), item_id(), list_key(), json())
            .prop_map(|(doc, list, item, key, value)| Mutation::ListInsert { doc, list, item, key, value }),
        (doc_id(), field_name(), item_id(), list_key())
            .prop_map(|(doc, list, item, key)| Mutation::ListMove { doc, list, item, key }),
        (doc_id(), field_name(), item_id(), json())
            .prop_map(|(doc, list, item, value)| Mutation::ListUpdate { doc, list, item, value }),
        (doc_id(), field_name(), item_id()).prop_map(|(doc, list, item)| Mutation::ListRemove {
            doc,
            list,
            item
        }),
        (doc_id(), doc_type(), json()).prop_map(|(doc, doc_type, data)| Mutation::StagePut {
            doc,
            doc_type,
            data
        }),
        Just(Mutation::StageCommit),
        Just(Mutation::StageDiscard),
        (bucket(), contract()).prop_map(|(bucket, contract)| Mutation::BucketBind { bucket, contract }),
        (bucket(), json(), option::of(any::<u64>()))
            .prop_map(|(bucket, value, if_version)| Mutation::BucketSet { bucket, value, if_version }),
        bucket().prop_map(|bucket| Mutation::BucketDelete { bucket }),
        (bucket(), ident(), ident(), "[A-Za-z0-9+/]{0,8}").prop_map(
            |(bucket, name, content_type, data_b64)| Mutation::AssetUpload {
                bucket,
                name,
                content_type,
                data_b64
            }
        ),
        (bucket(), object_key())
            .prop_map(|(bucket, object_key)| Mutation::AssetDelete { bucket, object_key }),
        (team_id(), ident()).prop_map(|(team, name)| Mutation::TeamCreate { team, name }),
        team_id().prop_map(|team| Mutation::TeamDelete { team }),
        (team_id(), user_id()).prop_map(|(team, user)| Mutation::TeamInvite { team, user }),
        team_id().prop_map(|team| Mutation::TeamAccept { team }),
        (team_id(), user_id()).prop_map(|(team, user)| Mutation::TeamRemove { team, user }),
        (user_id(), role()).prop_map(|(user, role)| Mutation::UserSetRole { user, role }),
    ]
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    let target = prop_oneof![
        query().prop_map(Target::Query),
        doc_id().prop_map(Target::Doc),
        bucket().prop_map(Target::Bucket),
        bucket().prop_map(Target::Assets),
    ];
    prop_oneof![
        (any::<u32>(), client_id()).prop_map(|(protocol, client)| ClientMessage::Hello { protocol, client }),
        (sub_id(), target).prop_map(|(sub, target)| ClientMessage::Subscribe { sub, target }),
        sub_id().prop_map(|sub| ClientMessage::Unsubscribe { sub }),
        (0..=roomlab_protocol::MID_MAX, mutation())
            .prop_map(|(mid, mutation)| ClientMessage::Mutate { mid, mutation }),
        (any::<u64>(), bucket(), option::of(any::<u64>()))
            .prop_map(|(req, bucket, if_version)| ClientMessage::BucketGet { req, bucket, if_version }),
        (any::<u64>(), bucket()).prop_map(|(req, bucket)| ClientMessage::AssetList { req, bucket }),
        (doc_id(), field_name()).prop_map(|(doc, field)| ClientMessage::YjsClose { doc, field }),
        any::<u64>().prop_map(|nonce| ClientMessage::Ping { nonce }),
    ]
}

fn snapshot() -> impl Strategy<Value = DocSnapshot> {
    let item = (item_id(), list_key(), json()).prop_map(|(id, key, value)| ListItem { id, key, value });
    (doc_id(), doc_type(), any::<u64>(), user_id(), json(), btree_map(field_name(), vec(item, 0..3), 0..2))
        .prop_map(|(id, doc_type, seq, owner, data, lists)| DocSnapshot {
            id,
            doc_type,
            seq,
            owner,
            data,
            lists,
        })
}

fn error_body() -> impl Strategy<Value = ErrorBody> {
    let u = || option::of(any::<u64>());
    (
        proptest::sample::select(ErrorCode::ALL.to_vec()),
        "[ -~]{0,20}",
        (u(), u(), option::of(sub_id()), u(), u()),
        (u(), u(), option::of(ident()), option::of(doc_id()), option::of(contract())),
    )
        .prop_map(
            |(code, message, (mid, req, sub, seq, version), (used, limit, field, doc, contract))| ErrorBody {
                code,
                message,
                mid,
                req,
                sub,
                seq,
                version,
                used,
                limit,
                field,
                doc,
                contract,
            },
        )
}

fn asset() -> impl Strategy<Value = AssetInfo> {
    (object_key(), ident(), ident(), any::<u64>(), user_id(), any::<u64>()).prop_map(
        |(object_key, name, content_type, size, uploaded_by, seq)| AssetInfo {
            object_key,
            name,
            content_type,
            size,
            uploaded_by,
            seq,
        },
    )
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (room_id(), user_id(), role(), any::<u64>()).prop_map(|(room, user, role, seq)| {
            ServerMessage::Welcome {
                protocol: PROTOCOL_VERSION,
                room,
                user,
                role,
                seq,
                limits: Limits::default(),
            }
        }),
        (any::<u64>(), any::<u64>(), option::of(any::<u64>()), option::of(object_key()))
            .prop_map(|(mid, seq, version, object_key)| ServerMessage::Ack { mid, seq, version, object_key }),
        error_body().prop_map(ServerMessage::Error),
        (sub_id(), any::<u64>(), vec(snapshot(), 0..3))
            .prop_map(|(sub, seq, docs)| ServerMessage::QueryResult { sub, seq, docs }),
        (sub_id(), any::<u64>(), vec(snapshot(), 0..2), vec(snapshot(), 0..2), vec(doc_id(), 0..2)).prop_map(
            |(sub, seq, added, changed, removed)| ServerMessage::QueryDiff {
                sub,
                seq,
                added,
                changed,
                removed
            }
        ),
        (sub_id(), snapshot()).prop_map(|(sub, doc)| ServerMessage::DocSnapshot { sub, doc }),
        (sub_id(), doc_id(), any::<u64>()).prop_map(|(sub, doc, seq)| ServerMessage::DocDeleted {
            sub,
            doc,
            seq
        }),
        (sub_id(), doc_id(), any::<u64>()).prop_map(|(sub, doc, seq)| ServerMessage::DocMissing {
            sub,
            doc,
            seq
        }),
        (option::of(sub_id()), option::of(any::<u64>()), bucket(), any::<u64>(), json()).prop_map(
            |(sub, req, bucket, version, value)| ServerMessage::BucketValue {
                sub,
                req,
                bucket,
                version,
                value
            }
        ),
        (any::<u64>(), bucket(), any::<u64>())
            .prop_map(|(req, bucket, version)| ServerMessage::BucketNotModified { req, bucket, version }),
        (sub_id(), bucket(), any::<u64>()).prop_map(|(sub, bucket, seq)| ServerMessage::BucketDeleted {
            sub,
            bucket,
            seq
        }),
        (option::of(sub_id()), option::of(any::<u64>()), bucket(), vec(asset(), 0..3))
            .prop_map(|(sub, req, bucket, assets)| ServerMessage::AssetsList { sub, req, bucket, assets }),
        sub_id().prop_map(|sub| ServerMessage::Unsubscribed { sub }),
        any::<u64>().prop_map(|nonce| ServerMessage::Pong { nonce }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_messages_round_trip(message in client_message()) {
        let frame = encode(&message);
        prop_assert_eq!(decode(frame.as_bytes(), 1 << 20).unwrap(), message);
    }

    #[test]
    fn server_messages_round_trip(message in server_message()) {
        let frame = encode_server(&message);
        prop_assert_eq!(decode_server(frame.as_bytes(), 1 << 20).unwrap(), message);
    }

    #[test]
    fn yjs_frames_round_trip(doc in doc_id(), field in field_name(), payload in vec(any::<u8>(), 0..64)) {
        let frame = YjsFrame { doc, field, payload };
        prop_assert_eq!(YjsFrame::decode(&frame.encode(), 1 << 20).unwrap(), frame);
    }

    #[test]
    fn decode_never_panics_on_bytes(bytes in vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes, 128);
        let _ = decode_server(&bytes, 128);
        let _ = YjsFrame::decode(&bytes, 128);
    }

    /// Mutating one byte of a valid frame yields either a message or a typed error.
    #[test]
    fn decode_never_panics_near_valid_frames(message in client_message(), at in any::<usize>(), byte in any::<u8>()) {
        let mut frame = encode(&message).into_bytes();
        let position = at % frame.len();
        frame[position] = byte;
        let _ = decode(&frame, 1 << 20);
    }
}

#[test]
fn oversize_frames_are_refused_with_their_length() {
    let frame = encode(&ClientMessage::Ping { nonce: 1 });
    let error = decode(frame.as_bytes(), 4).unwrap_err();
    assert_eq!(error, DecodeError::TooLarge { length: frame.len(), max: 4 });
    assert_eq!(error.code(), ErrorCode::FrameTooLarge);
}

#[test]
fn identifiers_and_keys_are_parsed_at_the_edge() {
    for frame in [
        r#"{"type":"subscribe","sub":"","doc":"a"}"#,
        r#"{"type":"subscribe","sub":"s","doc":"has space"}"#,
        r#"{"type":"mutate","mid":1,"op":"list_move","doc":"d","list":"l","item":"i","key":"a00"}"#,
        r#"{"type":"mutate","mid":1,"op":"nope","doc":"d"}"#,
        r#"{"type":"hello","protocol":1}"#,
        // mutation.mid.range: 2^53 and 2^63 are beyond what every JSON peer reads exactly.
        r#"{"type":"mutate","mid":9007199254740992,"op":"stage_commit"}"#,
        r#"{"type":"mutate","mid":9223372036854775808,"op":"stage_commit"}"#,
        r#"{"type":"mutate","mid":-1,"op":"stage_commit"}"#,
    ] {
        let error = decode(frame.as_bytes(), 1 << 20).unwrap_err();
        assert_eq!(error.code(), ErrorCode::BadFrame, "{frame} was accepted");
    }
}

#[test]
fn frames_have_the_documented_shape() {
    let message = ClientMessage::Mutate {
        mid: 7,
        mutation: Mutation::Create {
            doc: DocId::new("t1").unwrap(),
            doc_type: DocType::new("tasks").unwrap(),
            data: serde_json::json!({"title": "Write the spec"}),
        },
    };
    assert_eq!(
        encode(&message),
        r#"{"type":"mutate","mid":7,"op":"create","doc":"t1","doc_type":"tasks","data":{"title":"Write the spec"}}"#
    );
    let subscribe = r#"{"type":"subscribe","sub":"q1","query":{"collection":"tasks","where":{"field":"status","op":"eq","value":"active"},"order_by":[{"field":"$id","dir":"desc"}],"limit":10}}"#;
    let decoded = decode(subscribe.as_bytes(), 1 << 20).unwrap();
    assert_eq!(encode(&decoded), subscribe);
    let deleted =
        ServerMessage::DocDeleted { sub: SubId::new("d1").unwrap(), doc: DocId::new("t1").unwrap(), seq: 9 };
    assert_eq!(encode_server(&deleted), r#"{"type":"doc:deleted","sub":"d1","doc":"t1","seq":9}"#);
}
