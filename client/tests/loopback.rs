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

#[tokio::test]
async fn writes_are_confirmed_pushed_and_survive_a_reconnect() {
    let world = world().await;
    let alice = client(&world, "alice", Role::Member, "c-alice");
    let bob = client(&world, "bob", Role::Member, "c-bob");
    let watched = bob.subscribe(Target::Doc(doc("t1")));
    let again = bob.subscribe(Target::Doc(doc("t1")));
    bob.wait_resynced(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(watched.view(), View::Missing(_)), "{:?}", watched.view());

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
