//! Hostile peers against the real server over loopback, at the wire: every frame here is one a
//! malicious or broken client can send. Each case says what the server must answer (or how it must
//! close), and the room, and every other room, must go on serving.

use futures_util::{SinkExt, StreamExt};
use roomlab_protocol::Role;
use roomlab_server::{mint, Claims, Server, ServerConfig};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &[u8] = b"hostile-secret";
const EPOCH_S: u64 = 1_700_000_000;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct World {
    port: u16,
    _data: tempfile::TempDir,
}

async fn world() -> World {
    world_with(|_| {}).await
}

async fn world_with(adjust: impl FnOnce(&mut ServerConfig)) -> World {
    let data = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(SECRET);
    config.data = Some(data.path().to_path_buf());
    config.epoch_ms = EPOCH_S * 1000;
    adjust(&mut config);
    let server = Server::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server.serve(listener, 1_000));
    World { port, _data: data }
}

fn token(room: &str, user: &str, role: Role) -> String {
    let claims =
        Claims { sub: user.into(), room: room.into(), role, exp: EPOCH_S + 3600, plan: None, addons: None };
    mint(SECRET, &claims)
}

/// A greeted connection to `room`'s protocol socket.
async fn connect(world: &World, room: &str, user: &str, role: Role) -> Socket {
    // Every byte of the room id percent-encoded, so no URL normalisation touches it.
    let path: String = room.bytes().map(|b| format!("%{b:02X}")).collect();
    let url = format!("ws://127.0.0.1:{}/ws/{path}?token={}", world.port, token(room, user, role));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send(&mut socket, &format!(r#"{{"type":"hello","protocol":1,"client":"{user}"}}"#)).await;
    let welcome = next_text(&mut socket).await.expect("welcome");
    assert!(welcome.contains(r#""type":"welcome""#), "{welcome}");
    socket
}

async fn send(socket: &mut Socket, text: &str) {
    socket.send(Message::text(text)).await.unwrap();
}

/// The next text frame, or `Err` with the close code when the server closed instead. Waits at
/// most 5 s: a server that takes longer to answer one frame is stalled.
async fn next_text(socket: &mut Socket) -> Result<String, Option<u16>> {
    loop {
        let frame =
            tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("an answer within 5 s");
        match frame {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// A create of `doc` by a member, acknowledged.
async fn create(socket: &mut Socket, mid: u64, doc: &str) {
    let create = format!(
        r#"{{"type":"mutate","mid":{mid},"op":"create","doc":"{doc}","doc_type":"notes","data":{{}}}}"#
    );
    send(socket, &create).await;
    let ack = next_text(socket).await.unwrap();
    assert!(ack.contains(r#""type":"ack""#), "{ack}");
}

/// What a hostile frame must get: an error with this code, or a close with this code.
#[derive(Debug)]
enum Answer {
    Error(&'static str),
    Close(u16),
}

/// Sends `frame` on a fresh connection of `role` to a room where document `y` exists, checks the
/// answer, then checks that the same connection (if still open) and another room still answer.
async fn check(name: &str, role: Role, frame: Message, expected: Answer) {
    let world = world().await;
    let mut writer = connect(&world, "hostile", "writer", Role::Member).await;
    create(&mut writer, 1, "y").await;
    let mut socket = connect(&world, "hostile", "peer", role).await;
    socket.send(frame).await.unwrap();
    let answer = next_text(&mut socket).await;
    match (&expected, &answer) {
        (Answer::Error(code), Ok(text)) => {
            assert!(text.contains(&format!(r#""code":"{code}""#)), "{name}: expected {code}, got {text}");
            send(&mut socket, r#"{"type":"ping","nonce":5}"#).await;
            assert_eq!(next_text(&mut socket).await.as_deref(), Ok(r#"{"type":"pong","nonce":5}"#), "{name}");
        }
        (Answer::Close(code), Err(closed)) => assert_eq!(*closed, Some(*code), "{name}"),
        _ => panic!("{name}: expected {expected:?}, got {answer:?}"),
    }
    let mut other = connect(&world, "elsewhere", "bystander", Role::Member).await;
    send(&mut other, r#"{"type":"ping","nonce":6}"#).await;
    assert_eq!(next_text(&mut other).await.as_deref(), Ok(r#"{"type":"pong","nonce":6}"#), "{name}");
}

/// A Yjs envelope on the protocol socket: `Y`, the document and field, then the payload.
fn yjs(doc: &str, field: &str, payload: &[u8]) -> Message {
    let mut frame = vec![b'Y'];
    for name in [doc, field] {
        frame.push(name.len() as u8);
        frame.extend_from_slice(name.as_bytes());
    }
    frame.extend_from_slice(payload);
    Message::binary(frame)
}

/// An update claiming 2^63 clients in ten bytes: yrs reserves for every one it is told of.
const BOMB: [u8; 13] = [0x00, 0x02, 0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];

#[tokio::test]
async fn yjs_decode_bombs_are_refused_before_decoding() {
    check("viewer's bomb", Role::Viewer, yjs("y", "body", &BOMB), Answer::Error("forbidden")).await;
    check("member's bomb", Role::Member, yjs("y", "body", &BOMB), Answer::Error("invalid")).await;
    // A state vector claiming as many entries.
    let step1 = [0x00, 0x00, 0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    check("step 1 bomb", Role::Viewer, yjs("y", "body", &step1), Answer::Error("bad_frame")).await;
    // Client ids of 2^53 and more, which yrs asserts against (it would panic the room): in an
    // update's structs and in a state vector.
    let big_client = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
    let mut update = vec![0x01, 0x01];
    update.extend(big_client);
    update.extend([0x00, 0x00, 0x01, 0x00]);
    let mut payload = vec![0x00, 0x02, update.len() as u8];
    payload.extend(&update);
    check("client id 2^53", Role::Member, yjs("y", "body", &payload), Answer::Error("invalid")).await;
    let mut step1 = vec![0x00, 0x00, 10, 0x01];
    step1.extend(big_client);
    step1.push(0x00);
    check("step 1 client 2^53", Role::Member, yjs("y", "body", &step1), Answer::Error("bad_frame")).await;
}

#[tokio::test]
async fn malformed_text_frames_are_answered_or_closed_as_the_spec_says() {
    let mid = |mid: &str| Message::text(format!(r#"{{"type":"mutate","mid":{mid},"op":"stage_commit"}}"#));
    check("mid 2^53", Role::Member, mid("9007199254740992"), Answer::Error("bad_frame")).await;
    check("mid 2^63", Role::Member, mid("9223372036854775808"), Answer::Error("bad_frame")).await;
    check("mid 2^64", Role::Member, mid("18446744073709551616"), Answer::Error("bad_frame")).await;
    let deep = format!(
        r#"{{"type":"mutate","mid":2,"op":"create","doc":"d","doc_type":"t","data":{{"a":{}{}}}}}"#,
        "[".repeat(124),
        "]".repeat(124)
    );
    check("nested 124 levels", Role::Member, Message::text(deep), Answer::Error("bad_frame")).await;
    let invalid_utf8 = Message::Frame(tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    ));
    check("invalid UTF-8", Role::Member, invalid_utf8, Answer::Close(1007)).await;
}

/// A valid room id whose escaped file name would pass 255 bytes opens like any other.
#[tokio::test]
async fn long_room_ids_open() {
    let world = world().await;
    for room in [".".repeat(84) + &"é".repeat(22), "é".repeat(64)] {
        let mut socket = connect(&world, &room, "u1", Role::Member).await;
        create(&mut socket, 1, "d").await;
    }
}

/// A reader that subscribes many times to large documents and reads nothing is closed as a slow
/// consumer once its queue passes `outbound_bytes_max`, long before the server's memory grows.
#[tokio::test]
async fn a_reader_that_reads_nothing_is_closed_within_its_byte_budget() {
    let world = world_with(|config| config.engine.limits.outbound_bytes_max = 1 << 20).await;
    let mut writer = connect(&world, "big", "writer", Role::Member).await;
    let text = "x".repeat(200_000);
    for mid in 1..=5 {
        let create = format!(
            r#"{{"type":"mutate","mid":{mid},"op":"create","doc":"d{mid}","doc_type":"notes","data":{{"t":"{text}"}}}}"#
        );
        send(&mut writer, &create).await;
        assert!(next_text(&mut writer).await.unwrap().contains("ack"));
    }
    let mut reader = connect(&world, "big", "reader", Role::Viewer).await;
    for sub in 0..100 {
        let doc = 1 + sub % 5;
        send(&mut reader, &format!(r#"{{"type":"subscribe","sub":"s{sub}","doc":"d{doc}"}}"#)).await;
    }
    // Now read: whatever got through the socket buffers arrives, then the close.
    let mut frames = 0;
    let closed = loop {
        match next_text(&mut reader).await {
            Ok(_) => frames += 1,
            Err(code) => break code,
        }
    };
    assert_eq!(closed, Some(4008), "closed after {frames} frames");
    assert!(frames < 100, "every answer was queued ({frames} frames): the budget did not hold");
}

/// A socket that never says `hello` is closed with 1008 once `hello_ms_max` has passed, though it
/// answers every ping (tungstenite answers them for it while it reads); one that greets in time
/// stays open past that deadline.
#[tokio::test]
async fn a_connection_that_never_says_hello_is_closed() {
    let world = world_with(|config| {
        config.hello_ms_max = 300;
        config.ping_interval_ms = 100;
    })
    .await;
    let url =
        format!("ws://127.0.0.1:{}/ws/quiet?token={}", world.port, token("quiet", "mute", Role::Member));
    let started = tokio::time::Instant::now();
    let (mut mute, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut greeted = connect(&world, "quiet", "talker", Role::Member).await;
    assert_eq!(next_text(&mut mute).await, Err(Some(1008)));
    assert!(started.elapsed() >= Duration::from_millis(250), "closed before its deadline");
    send(&mut greeted, r#"{"type":"ping","nonce":7}"#).await;
    assert_eq!(next_text(&mut greeted).await.as_deref(), Ok(r#"{"type":"pong","nonce":7}"#));
}
