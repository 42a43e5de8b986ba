//! Confirmed mutations per second over real WebSockets on loopback: 100 connections in one room,
//! each keeping 8 confirmed creates in flight, against roomlab's server with file-backed rooms
//! (none lost, none applied twice, or the bench panics). Beside it, measured in the same run, the
//! transport floor: a bare tokio-tungstenite server that answers every frame with one small frame,
//! driven by the same 100 connections and window, with no engine and no storage.
//!
//! `cargo bench -p roomlab-benches --bench server_load`; figures in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::{SinkExt, StreamExt};
use roomlab_conformance::{load, LoadPlan, Target};
use roomlab_server::{Server, ServerConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "roomlab-bench";
const CONNECTIONS: usize = 100;
const WINDOW: usize = 8;
const MUTATIONS: usize = 4_000;

/// roomlab's server on a free loopback port, and the target that reaches it.
async fn start_server(data: &std::path::Path) -> Target {
    let mut config = ServerConfig::new(SECRET);
    config.data = Some(data.to_path_buf());
    let server = Server::new(config).expect("the server starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(server.serve(listener, 0));
    Target::roomlab("bench", addr, SECRET.as_bytes())
}

/// The floor: a WebSocket server that answers each text frame with one small text frame.
async fn start_echo() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(Message::Text(_))) = socket.next().await {
                    if socket.send(Message::text(r#"{"type":"ack","mid":1,"seq":1}"#)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `MUTATIONS` frames over `CONNECTIONS` connections to the floor, `WINDOW` in flight each.
async fn drive_echo(addr: std::net::SocketAddr) -> Duration {
    let per_connection = MUTATIONS / CONNECTIONS;
    let mut sockets = Vec::new();
    for _ in 0..CONNECTIONS {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.expect("connects");
        sockets.push(socket);
    }
    let started = Instant::now();
    let answered = std::sync::Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for socket in sockets {
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = socket.split();
            let (mut sent, mut received) = (0, 0);
            let frame =
                r#"{"type":"mutate","mid":1,"mutation":{"op":"create","doc":"d","type":"t","data":{}}}"#;
            while received < per_connection {
                while sent < per_connection && sent - received < WINDOW {
                    sink.send(Message::text(frame)).await.expect("sends");
                    sent += 1;
                }
                stream.next().await.expect("an answer").expect("a frame");
                received += 1;
            }
            answered.fetch_add(received as u64, Ordering::Relaxed);
        }));
    }
    for task in tasks {
        task.await.expect("the connection's task");
    }
    assert_eq!(answered.load(Ordering::Relaxed), (per_connection * CONNECTIONS) as u64);
    started.elapsed()
}

fn server_load(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let data = tempfile::tempdir().expect("a data directory");
    let target = runtime.block_on(start_server(data.path()));
    let echo = runtime.block_on(start_echo());
    let mut group = c.benchmark_group("server_load");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(MUTATIONS as u64));
    let rooms = AtomicU64::new(0);
    group.bench_function("roomlab: confirmed creates, 100 connections, window 8", |b| {
        b.iter_custom(|iterations| {
            let mut wall = Duration::ZERO;
            for _ in 0..iterations {
                let plan = LoadPlan {
                    room: format!("bench-{}", rooms.fetch_add(1, Ordering::Relaxed)),
                    connections: CONNECTIONS,
                    mutations: MUTATIONS,
                    window: WINDOW,
                    fanout_subscribers: 0,
                    fanout_writes: 0,
                };
                let report = runtime.block_on(load(&target, &plan)).expect("the load runs");
                assert_eq!((report.lost, report.duplicated), (0, 0), "{report:?}");
                assert_eq!(report.acked, MUTATIONS as u64, "{report:?}");
                wall += Duration::from_millis(report.wall_ms);
            }
            wall
        })
    });
    group.bench_function("floor: tungstenite request and reply, 100 connections, window 8", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| runtime.block_on(drive_echo(echo))).sum())
    });
    group.finish();
}

criterion_group!(benches, server_load);
criterion_main!(benches);
