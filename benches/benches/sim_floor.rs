//! The simulation's speed beside its bare floor, measured in the same run: turmoil and
//! tokio-tungstenite with 100 clients, one SQLite insert and one reply per message and no engine,
//! against the full simulation (the real server and clients, faults, every invariant checked).
//!
//! `cargo bench -p roomlab-benches --bench sim_floor` prints, for each, client operations per wall
//! second and simulated seconds per wall second, in rounds (`ROOMLAB_FLOOR_ROUNDS`, default 3), each
//! scenario beside the floor of its own round, then the medians. Not a criterion bench: one run of
//! each is a whole simulated world, and the figures are the ones BENCHMARKS.md compares.

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

/// One round's figures for one world: client operations, simulated seconds and wall seconds.
#[derive(Clone, Copy)]
struct Figures {
    operations: u64,
    simulated_s: f64,
    wall_s: f64,
}

impl Figures {
    fn per_wall_second(self) -> f64 {
        self.operations as f64 / self.wall_s
    }

    fn speed(self) -> f64 {
        self.simulated_s / self.wall_s
    }
}

/// Three seeds of an embedded scenario through the whole simulation.
fn simulation(name: &str) -> Figures {
    let scenario = Scenario::load(name).expect("an embedded scenario");
    let mut figures = Figures { operations: 0, simulated_s: 0.0, wall_s: 0.0 };
    for seed in 0..3 {
        let started = Instant::now();
        let report = run(&RunConfig { scenario: scenario.clone(), seed, keep_trace: false, mutant: None });
        figures.wall_s += started.elapsed().as_secs_f64();
        figures.operations += report.operations;
        figures.simulated_s += report.sim_ms as f64 / 1_000.0;
        assert!(report.passed(), "{name} seed {seed}: {:?}", report.failures);
    }
    figures
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Rounds of the floor and both scenarios, one after another (`ROOMLAB_FLOOR_ROUNDS`, default 3).
/// This machine's speed can swing by a third within minutes, so each scenario is compared with the
/// floor of its own round, and the summary gives the medians over rounds.
fn rounds() -> usize {
    std::env::var("ROOMLAB_FLOOR_ROUNDS").ok().and_then(|r| r.parse().ok()).filter(|r| *r > 0).unwrap_or(3)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (cargo test's harness flags) runs nothing.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    const NAMES: [&str; 2] = ["swarm", "crash-recovery"];
    // Per round: the floor, then each scenario.
    let mut measured: Vec<[Figures; 3]> = Vec::new();
    for round in 1..=rounds() {
        let (operations, wall) = floor(1);
        let floor = Figures { operations, simulated_s: SIMULATED_S as f64, wall_s: wall.as_secs_f64() };
        println!(
            "round {round}: floor (turmoil + tungstenite + one SQLite insert, {CLIENTS} clients, {SIMULATED_S} \
             simulated s): {operations} operations in {:.2} s wall: {:.0} operations per wall second, {:.1}x real time",
            floor.wall_s,
            floor.per_wall_second(),
            floor.speed()
        );
        let scenarios = NAMES.map(|name| {
            let figures = simulation(name);
            println!(
                "round {round}: simulation {name} (3 seeds, every invariant checked): {} operations in {:.2} s \
                 wall: {:.0} operations per wall second ({:.1} % of this round's floor), {:.1}x real time",
                figures.operations,
                figures.wall_s,
                figures.per_wall_second(),
                100.0 * figures.per_wall_second() / floor.per_wall_second(),
                figures.speed()
            );
            figures
        });
        measured.push([floor, scenarios[0], scenarios[1]]);
    }
    let over_rounds = |figure: &dyn Fn(&[Figures; 3]) -> f64| median(measured.iter().map(figure).collect());
    println!(
        "medians over {} rounds: floor {:.0} operations per wall second, {:.1}x real time",
        measured.len(),
        over_rounds(&|round| round[0].per_wall_second()),
        over_rounds(&|round| round[0].speed())
    );
    for (index, name) in NAMES.into_iter().enumerate() {
        let at = index + 1;
        println!(
            "medians over {} rounds: {name} {:.0} operations per wall second, {:.1} % of its round's floor, \
             {:.1}x real time",
            measured.len(),
            over_rounds(&|round| round[at].per_wall_second()),
            over_rounds(&|round| 100.0 * round[at].per_wall_second() / round[0].per_wall_second()),
            over_rounds(&|round| round[at].speed())
        );
    }
}
