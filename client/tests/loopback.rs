//! The client against the real server over loopback TCP: subscriptions, confirmed writes, pushes,
//! reconnect with replay, tokens refused, limits.

use roomlab_client::{Client, ClientConfig, ClientError, TokioConnector, View};
use roomlab_protocol::{ClientId, DocId, DocType, ErrorCode, Mutation, Role, Target};
use roomlab_server::{mint, Claims, Server, ServerConfig};
use serde_json::json;
use std::time::Duration;

const SECRET: &[u8] = b"loopback-secret";

struct World {
    port: u16,
    server: Server,
    _data: tempfile::TempDir,
}

async fn world() -> World {
    let data = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(SECRET);
    config.data = Some(data.path().to_path_buf());
    config.epoch_ms = 1_700_000_000_000;
    let server = Server::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server.clone().serve(listener, 1_000));
    World { port, server, _data: data }
}

fn token(room: &str, user: &str, role: Role, exp: u64) -> String {
    mint(SECRET, &Claims { sub: user.into(), room: room.into(), role, exp, plan: None, addons: None })
}

fn client(world: &World, user: &str, role: Role, id: &str) -> Client {
    let path = format!("/ws/r1?token={}", token("r1", user, role, 4_000_000_000));
    let mut config = ClientConfig::new("127.0.0.1", world.port, path, ClientId::new(id).unwrap());
    config.confirm_timeout_ms = 5_000;
    Client::start(config, TokioConnector)
}

fn doc(id: &str) -> DocId {
    DocId::new(id).unwrap()
}

fn create(id: &str, data: serde_json::Value) -> Mutation {
    Mutation::Create { doc: doc(id), doc_type: DocType::new("tasks").unwrap(), data }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 5 s");
}

/// A room with two members: alice writes, bob watches `t1` (not yet created) and is resynced.
async fn watching_pair() -> (World, Client, Client, roomlab_client::Subscription) {
    let world = world().await;
    let alice = client(&world, "alice", Role::Member, "c-alice");
    let bob = client(&world, "bob", Role::Member, "c-bob");
    let watched = bob.subscribe(Target::Doc(doc("t1")));
    bob.wait_resynced(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(watched.view(), View::Missing(_)), "{:?}", watched.view());
    (world, alice, bob, watched)
}

#[tokio::test]
async fn writes_are_confirmed_pushed_and_survive_a_reconnect() {
    let (world, alice, bob, watched) = watching_pair().await;
    let again = bob.subscribe(Target::Doc(doc("t1")));

    let ack = alice.mutate_confirmed(create("t1", json!({"title": "one"}))).await.unwrap();
    eventually("bob sees t1", || matches!(watched.view(), View::Doc(ref d) if d.seq == ack.seq)).await;
    drop(again);
    assert!(matches!(watched.view(), View::Doc(_)), "one reference still holds the subscription");

    let refused = alice.mutate_confirmed(create("t1", json!({}))).await;
    assert!(
        matches!(refused, Err(ClientError::Refused(ref body)) if body.code == ErrorCode::Exists),
        "{refused:?}"
    );

    // Queue a write while the connection is down: it is sent on reconnect, after the resubscribe.
    bob.kill_connection();
    let mid = bob.mutate(Mutation::Patch { doc: doc("t1"), data: json!({"done": true}), if_seq: None });
    let patched = bob.wait_outcome(mid).await.unwrap();
    assert!(patched.seq > ack.seq);
    eventually(
        "bob's view has the patch",
        || matches!(watched.view(), View::Doc(ref d) if d.data == json!({"title": "one", "done": true})),
    )
    .await;
    let rooms = world.server.open_rooms();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].1.lock().unwrap().seq(), patched.seq);
}

#[tokio::test]
async fn a_stalled_client_reads_nothing_until_it_resumes() {
    let (_world, alice, bob, watched) = watching_pair().await;
    bob.stall(Duration::from_secs(60));
    let ack = alice.mutate_confirmed(create("t1", json!({"title": "one"}))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(watched.view(), View::Missing(_)), "a stalled client read a push: {:?}", watched.view());
    bob.resume();
    eventually(
        "bob sees t1 after resuming",
        || matches!(watched.view(), View::Doc(ref d) if d.seq == ack.seq),
    )
    .await;
}

#[tokio::test]
async fn viewers_cannot_write_and_bad_tokens_are_refused() {
    let world = world().await;
    let val = client(&world, "val", Role::Viewer, "c-val");
    let refused = val.mutate_confirmed(create("t9", json!({}))).await;
    assert!(
        matches!(refused, Err(ClientError::Refused(ref body)) if body.code == ErrorCode::Forbidden),
        "{refused:?}"
    );

    let expired = token("r1", "eve", Role::Admin, 1);
    let wrong_room = token("r2", "eve", Role::Admin, 4_000_000_000);
    for token in [expired, wrong_room, "forged".to_string()] {
        let path = format!("/ws/r1?token={token}");
        let mut config = ClientConfig::new("127.0.0.1", world.port, path, ClientId::new("c-eve").unwrap());
        config.confirm_timeout_ms = 500;
        config.backoff_initial_ms = 50;
        let eve = Client::start(config, TokioConnector);
        let outcome = eve.mutate_confirmed(create("t9", json!({}))).await;
        assert_eq!(outcome, Err(ClientError::ConnectionRefused(4001)), "{token}");
    }
}

#[tokio::test]
async fn rich_text_converges_survives_reconnects_and_refuses_a_viewer() {
    let world = world().await;
    let alice = client(&world, "alice", Role::Member, "c-alice");
    let bob = client(&world, "bob", Role::Member, "c-bob");
    let vera = client(&world, "vera", Role::Viewer, "c-vera");
    alice.mutate_confirmed(create("note", json!({"title": "shared"}))).await.unwrap();
    let field = || roomlab_protocol::FieldName::new("body").unwrap();
    let a = alice.yjs_text(doc("note"), field()).unwrap();
    let b = bob.yjs_text(doc("note"), field()).unwrap();
    let v = vera.yjs_text(doc("note"), field()).unwrap();
    a.wait_for(Duration::from_secs(5), |_| true).await.unwrap();
    b.wait_for(Duration::from_secs(5), |_| true).await.unwrap();
    v.wait_for(Duration::from_secs(5), |_| true).await.unwrap();

    a.insert(0, "hello");
    b.insert(0, "world ");
    let both = |t: &str| t.contains("hello") && t.contains("world ");
    let text = a.wait_for(Duration::from_secs(5), both).await.unwrap_or_else(|e| {
        panic!("{e}: a={:?} b={:?} events={:?}", a.text(), b.text(), alice.drain_events())
    });
    assert_eq!(b.wait_for(Duration::from_secs(5), both).await.unwrap(), text);
    assert_eq!(v.wait_for(Duration::from_secs(5), both).await.unwrap(), text);

    // A viewer's edit stays local: the server refuses it before merging it.
    v.insert(0, "VIEWER");
    eventually("vera hears the refusal", || {
        vera.drain_events()
            .iter()
            .any(|e| matches!(e, roomlab_client::Event::YjsRefused { code: ErrorCode::Forbidden, .. }))
    })
    .await;

    // Edits made while the connection is down reach the others through the next sync.
    bob.kill_connection();
    eventually("bob's link is down", || !bob.with_core(|core| core.is_resynced())).await;
    b.insert(0, "offline ");
    assert!(!b.is_synced());
    let text = a.wait_for(Duration::from_secs(10), |t| t.starts_with("offline ")).await.unwrap();
    assert_eq!(b.wait_for(Duration::from_secs(10), |t| t == text).await.unwrap(), text);
    assert!(!text.contains("VIEWER"), "{text}");

    // A client that opens the field later receives the merged state.
    let later = client(&world, "carol", Role::Member, "c-carol");
    let c = later.yjs_text(doc("note"), field()).unwrap();
    assert_eq!(c.wait_for(Duration::from_secs(5), |t| t == text).await.unwrap(), text);
    let decoded = roomlab_client::text_of_state(&field(), &c.state()).unwrap();
    assert_eq!(decoded, text);

    // A field the server refuses to sync (no such document) settles as refused, so a resync
    // does not wait for it forever.
    let missing = later.yjs_text(doc("nowhere"), field()).unwrap();
    later.wait_resynced(Duration::from_secs(5)).await.unwrap();
    let refused = later.with_core(|core| core.yjs().refused(&(doc("nowhere"), field())));
    assert_eq!(refused, Some(ErrorCode::NotFound));
    assert!(!missing.is_synced());
    drop(world.server);
}

/// client.heartbeat against a server that accepts the WebSocket and then says nothing: the client
/// pings once a ping interval has passed in silence, and drops and reconnects once the silence
/// reaches its maximum.
#[tokio::test]
async fn a_silent_server_is_pinged_then_dropped_and_reconnected() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            // Keep every socket open and unread: the silence must come from the server, not a close.
            held.push(tokio_tungstenite::accept_async(stream).await.unwrap());
        }
    });
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut config = ClientConfig::new("127.0.0.1", port, "/ws/r1", ClientId::new("c1").unwrap());
    (config.ping_interval_ms, config.silence_ms_max, config.backoff_initial_ms) = (100, 450, 10);
    let log = events.clone();
    config.tap = Some(std::sync::Arc::new(move |event: roomlab_client::TapEvent<'_>| {
        let line = match event {
            roomlab_client::TapEvent::Connecting { attempt } => format!("connecting {attempt}"),
            roomlab_client::TapEvent::Sent(text) => format!("> {text}"),
            roomlab_client::TapEvent::Disconnected { reason } => format!("disconnected: {reason}"),
            _ => return,
        };
        log.lock().unwrap().push(line);
    }));
    let _client = Client::start(config, TokioConnector);
    let reconnected = || events.lock().unwrap().iter().filter(|e| e.starts_with("connecting")).count() >= 2;
    eventually("a reconnect after the silence", reconnected).await;
    let events = events.lock().unwrap().clone();
    let dropped = events.iter().position(|e| e == "disconnected: server silent; reconnecting");
    let dropped = dropped.unwrap_or_else(|| panic!("no drop for silence in {events:?}"));
    let pings = events[..dropped].iter().filter(|e| e.starts_with(r#"> {"type":"ping""#)).count();
    // Pings at 100, 200, 300 and 400 ms of silence, then the drop at 450 ms; a late timer (a busy
    // machine) moves the later pings on, so fewer may fit, never more.
    assert!((1..=4).contains(&pings), "pings before the drop: {events:?}");
    assert!(events[dropped + 1..].iter().any(|e| e.starts_with("connecting")), "{events:?}");
}
