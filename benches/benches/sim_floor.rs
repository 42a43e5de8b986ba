//! The simulation's speed beside its bare floor, measured in the same run: turmoil and
//! tokio-tungstenite with 100 clients, one SQLite insert and one reply per message and no engine,
//! against the full simulation (the real server and clients, faults, every invariant checked).
//!
//! `cargo bench -p roomlab-benches --bench sim_floor` prints, for each, client operations per wall
//! second and simulated seconds per wall second. Not a criterion bench: one run of each is a whole
//! simulated world, and the figures are the ones BENCHMARKS.md compares.

use futures_util::{SinkExt, StreamExt};
use roomlab_sim::{run, RunConfig, Scenario};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

/// The allocator `roomlab sim` runs with (see src/main.rs), for the floor and the simulation alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: usize = 100;
const CLIENT_HOSTS: usize = 4;
const SIMULATED_S: u64 = 60;
const PORT: u16 = 8787;

/// The floor: each client sends one message a second on average (as the simulation's clients do)
/// and waits for its reply; the server inserts each into SQLite and replies. Returns operations.
fn floor(seed: u64) -> (u64, Duration) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
        .simulation_duration(Duration::from_secs(SIMULATED_S + 60))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .tcp_capacity(16_384)
        .build();
    sim.host("server", || async {
        let db = Rc::new(rusqlite::Connection::open_in_memory()?);
        db.execute_batch("CREATE TABLE ops (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")?;
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let db = db.clone();
            tokio::task::spawn_local(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    db.execute("INSERT INTO ops (body) VALUES (?1)", [text.as_str()]).expect("insert");
                    if ws.send(Message::text(format!("{{\"ok\":{}}}", db.last_insert_rowid()))).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let operations = Rc::new(Cell::new(0u64));
    for host in 0..CLIENT_HOSTS {
        let operations = operations.clone();
        sim.client(format!("clients-{host}"), async move {
            for index in (0..CLIENTS).filter(|i| i % CLIENT_HOSTS == host) {
                let operations = operations.clone();
                tokio::task::spawn_local(async move {
                    let stream = turmoil::net::TcpStream::connect(("server", PORT)).await.expect("connect");
                    let (mut ws, _) =
                        tokio_tungstenite::client_async("ws://server/", stream).await.expect("handshake");
                    let mut state = index as u64 * 0x9e37_79b9_7f4a_7c15 + 1;
                    loop {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        tokio::time::sleep(Duration::from_millis(state % 2_001)).await;
                        ws.send(Message::text(format!("{{\"op\":\"create\",\"by\":{index}}}")))
                            .await
                            .expect("send");
                        let _ = ws.next().await;
                        operations.set(operations.get() + 1);
                    }
                });
            }
            std::future::pending::<()>().await;
            Ok(())
        });
    }
    let started = Instant::now();
    while sim.elapsed() < Duration::from_secs(SIMULATED_S) {
        sim.step().expect("the floor's world steps");
    }
    (operations.get(), started.elapsed())
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (cargo test's harness flags) runs nothing.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let (operations, wall) = floor(1);
    println!(
        "floor (turmoil + tungstenite + one SQLite insert, {CLIENTS} clients, {SIMULATED_S} simulated s): \
         {operations} operations in {:.2} s wall: {:.0} operations per wall second, {:.1}x real time",
        wall.as_secs_f64(),
        operations as f64 / wall.as_secs_f64(),
        SIMULATED_S as f64 / wall.as_secs_f64()
    );
    for name in ["swarm", "crash-recovery"] {
        let scenario = Scenario::load(name).expect("an embedded scenario");
        let (mut operations, mut simulated_ms, mut wall_s) = (0, 0, 0.0);
        for seed in 0..3 {
            let started = Instant::now();
            let report =
                run(&RunConfig { scenario: scenario.clone(), seed, keep_trace: false, mutant: None });
            wall_s += started.elapsed().as_secs_f64();
            operations += report.operations;
            simulated_ms += report.sim_ms;
            assert!(report.passed(), "{name} seed {seed}: {:?}", report.failures);
        }
        println!(
            "simulation {name} ({} clients, 3 seeds, every invariant checked): {operations} operations in \
             {wall_s:.2} s wall: {:.0} operations per wall second, {:.1}x real time",
            scenario.clients,
            operations as f64 / wall_s,
            simulated_ms as f64 / 1_000.0 / wall_s
        );
    }
}
