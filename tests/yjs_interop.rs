//! Stock Yjs clients that no one here wrote: `roomlab serve`, two `yjs` + `y-websocket` clients
//! from npm and a viewer among them (interop/yjs/client.mjs, each its own Node process), and a
//! roomlab client edit one rich-text field at once. Every writer must end with the same text, the
//! server must serve that text again after a restart, and the viewer's edits must reach no one.
//!
//! Needs Node and npm: the test runs `npm ci` in interop/yjs when its packages are missing.

use roomlab_client::{Client, ClientConfig, TokioConnector};
use roomlab_protocol::{ClientId, DocId, DocType, FieldName, Mutation, Role};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "interop-secret";
const ROOM: &str = "interop";
const EDITS: usize = 40;

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/yjs")
}

/// Installs the pinned npm packages once (package-lock.json), as CI's fresh machine needs.
fn install_packages() {
    let dir = interop_dir();
    if dir.join("node_modules/y-websocket").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm runs (Node and npm must be installed)");
    assert!(status.success(), "npm ci in {} failed: {status}", dir.display());
}

fn token(user: &str, role: Role) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = roomlab_server::Claims {
        sub: user.into(),
        room: ROOM.into(),
        role,
        exp: now + 3_600,
        plan: None,
        addons: None,
    };
    roomlab_server::mint(SECRET.as_bytes(), &claims)
}

/// A child process killed when the test ends, passing or not, so nothing outlives a failure.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `roomlab serve` on a free loopback port; returns the process and its port.
fn serve(data: &Path, addr: &str) -> (Guard, u16) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_roomlab"))
        .args(["serve", "--addr", addr, "--data"])
        .arg(data)
        .env("ROOMLAB_SECRET", SECRET)
        .stdout(Stdio::piped())
        .spawn()
        .expect("roomlab serve starts");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next().expect("serve prints its address").unwrap();
    let address = first.split("ws://").nth(1).and_then(|rest| rest.split('/').next()).expect(&first);
    let port = address.rsplit(':').next().unwrap().parse().expect(&first);
    // Keep reading so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (Guard(server), port)
}

/// Stops the server as an operator would (SIGINT, a graceful shutdown) and checks it exits cleanly.
fn stop(mut server: Guard) {
    let pid = server.0.id().to_string();
    let interrupted = Command::new("kill").args(["-INT", &pid]).status().expect("kill runs");
    assert!(interrupted.success());
    let status = server.0.wait().unwrap();
    assert!(status.success(), "roomlab serve exited with {status}");
}

/// One Node client: its process and the JSON lines it prints.
struct NodeClient {
    child: Guard,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl NodeClient {
    fn start(port: u16, token: &str, marker: &str, expected_length: usize) -> NodeClient {
        let base = format!("ws://127.0.0.1:{port}/yjs/{ROOM}/note");
        let mut child = Command::new("node")
            .arg(interop_dir().join("client.mjs"))
            .args([&base, "body", token, marker, &EDITS.to_string(), &expected_length.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        NodeClient { child: Guard(child), lines }
    }

    /// The next event line; panics on an error line or an early exit.
    fn expect(&mut self, event: &str) -> serde_json::Value {
        let line = self.lines.next().unwrap_or_else(|| panic!("node exited before {event}")).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(value["event"], event, "{line}");
        value
    }
}

fn inserted_length(marker: &str) -> usize {
    (0..EDITS).map(|i| format!("{marker}{i};").encode_utf16().count()).sum()
}

async fn roomlab_client(port: u16, user: &str, id: &str) -> Client {
    let path = format!("/ws/{ROOM}?token={}", token(user, Role::Member));
    let mut config = ClientConfig::new("127.0.0.1", port, path, ClientId::new(id).unwrap());
    config.seed = 7;
    Client::start(config, TokioConnector)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_yjs_clients_and_a_roomlab_client_converge_and_a_viewer_reaches_no_one() {
    install_packages();
    let data = tempfile::tempdir().unwrap();
    let (server, port) = serve(data.path(), "127.0.0.1:0");
    let rust = roomlab_client(port, "rita", "c-rita").await;
    let note = DocId::new("note").unwrap();
    let create = Mutation::Create {
        doc: note.clone(),
        doc_type: DocType::new("notes").unwrap(),
        data: serde_json::json!({}),
    };
    rust.mutate_confirmed(create).await.expect("the note is created");
    let text = rust.yjs_text(note.clone(), FieldName::new("body").unwrap()).unwrap();
    text.wait_for(Duration::from_secs(10), |_| true).await.expect("the roomlab client syncs");

    let total = inserted_length("A") + inserted_length("B") + inserted_length("R");
    let mut a = NodeClient::start(port, &token("ann", Role::Member), "A", total);
    let mut b = NodeClient::start(port, &token("ben", Role::Member), "B", total);
    let mut viewer =
        NodeClient::start(port, &token("vic", Role::Viewer), "V#", total + inserted_length("V#"));
    for node in [&mut a, &mut b, &mut viewer] {
        node.expect("synced");
    }
    for i in 0..EDITS {
        let length = text.text().encode_utf16().count() as u32;
        text.insert((i as u32 * 7919) % (length + 1), &format!("R{i};"));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let a_text = a.expect("done")["text"].as_str().unwrap().to_string();
    let b_text = b.expect("done")["text"].as_str().unwrap().to_string();
    let viewer_text = viewer.expect("done")["text"].as_str().unwrap().to_string();
    let rust_text =
        text.wait_for(Duration::from_secs(30), |t| t == a_text).await.expect("the roomlab client converges");
    assert_eq!(a_text, b_text, "the two stock clients differ");
    assert_eq!(rust_text, a_text);
    assert!(!a_text.contains('#'), "a viewer's edit reached the writers: {a_text}");
    assert_eq!(viewer_text.matches('#').count(), EDITS, "the viewer keeps its own edits locally");
    for node in [&mut a, &mut b, &mut viewer] {
        assert!(node.child.0.wait().unwrap().success());
    }
    drop(text);
    drop(rust);

    // The server's stored copy: restart it on the same data and read the field afresh.
    stop(server);
    let (server, port) = serve(data.path(), "127.0.0.1:0");
    let reader = roomlab_client(port, "rex", "c-rex").await;
    let stored = reader.yjs_text(note, FieldName::new("body").unwrap()).unwrap();
    let stored_text =
        stored.wait_for(Duration::from_secs(10), |_| true).await.expect("the stored copy syncs");
    assert_eq!(stored_text, a_text, "the server's stored copy differs");
    drop(stored);
    drop(reader);
    stop(server);
}
