//! The simulation's speed beside its bare floors, measured in the same run: turmoil and
//! tokio-tungstenite with 100 clients, one SQLite insert and one reply per message and no engine,
//! against the full simulation (the real server and clients, faults, every invariant checked), and
//! the same floor at swarm's fan-out (each operation also pushes as many frames to other clients,
//! of the same mean size, as swarm's clients received per operation in the round), the least any
//! implementation of swarm's workload costs on this transport.
//!
//! `cargo bench -p roomlab-benches --bench sim_floor` prints, for each, client operations per wall
//! second and simulated seconds per wall second, in rounds (`ROOMLAB_FLOOR_ROUNDS`, default 3), each
//! scenario beside the floors of its own round, then the medians. Not a criterion bench: one run of
//! each is a whole simulated world, and the figures are the ones BENCHMARKS.md compares.

use futures_util::{SinkExt, StreamExt};
use roomlab_sim::{run, FrameCounts, RunConfig, Scenario};
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

/// The floors' WebSocket configuration: the simulation's read buffer (tungstenite zero-fills its
/// whole read buffer on every read, 128 KiB by default, which would make the floor pay for what
/// the simulation does not).
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(1024)
}

/// The floors' world: turmoil configured as the simulation configures it.
fn floor_world(seed: u64) -> turmoil::Sim<'static> {
    turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
        .simulation_duration(Duration::from_secs(SIMULATED_S + 60))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .tcp_capacity(16_384)
        .build()
}

/// The floor: each client sends one message a second on average (as the simulation's clients do)
/// and waits for its reply; the server inserts each into SQLite and replies. Returns operations.
fn floor(seed: u64) -> (u64, Duration) {
    let mut sim = floor_world(seed);
    sim.host("server", || async {
        let db = Rc::new(rusqlite::Connection::open_in_memory()?);
        db.execute_batch("CREATE TABLE ops (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")?;
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let db = db.clone();
            tokio::task::spawn_local(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
                else {
                    return;
                };
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
    let operations = spawn_clients(&mut sim, floor_client);
    timed(sim, &operations)
}

/// What the simulation's clients receive per operation, measured in its run: the fan-out floor
/// sends as many frames of the same mean size.
#[derive(Clone, Copy)]
struct Fanout {
    /// Pushes to other clients per operation, besides the reply to its sender.
    pushes_per_operation: f64,
    /// Bytes of each push.
    push_bytes: usize,
}

/// The fan-out floor's server state: the SQLite table, every connection's outbox and where the
/// next push goes (round robin over the connections, so every client receives its share).
struct Hub {
    db: rusqlite::Connection,
    outboxes: Vec<tokio::sync::mpsc::UnboundedSender<Message>>,
    credit: f64,
    next: usize,
    fanout: Fanout,
    push: tokio_tungstenite::tungstenite::Utf8Bytes,
}

impl Hub {
    /// One operation: an insert, the reply to its sender, and its share of pushes, each push one
    /// shared encoding as the real server shares equal frames.
    fn handle(&mut self, text: &str, sender: &tokio::sync::mpsc::UnboundedSender<Message>) {
        self.db.execute("INSERT INTO ops (body) VALUES (?1)", [text]).expect("insert");
        let _ = sender.send(Message::text(format!("{{\"ok\":{}}}", self.db.last_insert_rowid())));
        self.credit += self.fanout.pushes_per_operation;
        while self.credit >= 1.0 && !self.outboxes.is_empty() {
            let outbox = &self.outboxes[self.next % self.outboxes.len()];
            let _ = outbox.send(Message::Text(self.push.clone()));
            self.next += 1;
            self.credit -= 1.0;
        }
    }
}

/// A fan-out floor connection: frames in go to the hub; its outbox drains into the socket, every
/// queued frame in one write (as the real server writes them).
async fn hub_connection(
    stream: turmoil::net::TcpStream,
    hub: Rc<std::cell::RefCell<Hub>>,
    own: tokio::sync::mpsc::UnboundedSender<Message>,
    mut outbox: tokio::sync::mpsc::UnboundedReceiver<Message>,
) {
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await else { return };
    let (mut sink, mut frames) = ws.split();
    loop {
        // Branches in a fixed order: tokio would otherwise pick among ready ones from its own
        // unseeded RNG, and the floor's count would move from run to run.
        tokio::select! {
            biased;
            frame = frames.next() => {
                let Some(Ok(Message::Text(text))) = frame else { return };
                hub.borrow_mut().handle(text.as_str(), &own);
            }
            Some(message) = outbox.recv() => {
                let mut batch = vec![message];
                while let Ok(message) = outbox.try_recv() {
                    batch.push(message);
                }
                for message in batch {
                    if sink.feed(message).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A fan-out floor client: one operation a second on average, as in the floor, while it reads
/// (and parses into an untyped JSON value, the least a client does with a frame) every push.
async fn hub_client(index: usize, operations: Rc<Cell<u64>>) {
    let mut ws = connect().await;
    let mut delay = delays(index);
    let sleep = tokio::time::sleep(delay());
    tokio::pin!(sleep);
    let mut awaiting = false;
    loop {
        tokio::select! {
            biased;
            () = &mut sleep, if !awaiting => {
                ws.send(Message::text(format!("{{\"op\":\"create\",\"by\":{index}}}"))).await.expect("send");
                awaiting = true;
            }
            frame = ws.next() => {
                let Some(Ok(Message::Text(text))) = frame else { return };
                let value: serde_json::Value = serde_json::from_str(text.as_str()).expect("a JSON frame");
                if value.get("ok").is_some() {
                    operations.set(operations.get() + 1);
                    awaiting = false;
                    sleep.as_mut().reset(tokio::time::Instant::now() + delay());
                }
            }
        }
    }
}

/// The floor at the simulation's fan-out: the same world, clients and rate as the floor, but each
/// operation also pushes `fanout` frames to other clients, which read every one. Returns
/// operations and wall time.
fn fanout_floor(seed: u64, fanout: Fanout) -> (u64, Duration) {
    let mut sim = floor_world(seed);
    sim.host("server", move || async move {
        let db = rusqlite::Connection::open_in_memory()?;
        db.execute_batch("CREATE TABLE ops (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")?;
        let body = "x".repeat(fanout.push_bytes.saturating_sub(40));
        let push = format!("{{\"type\":\"push\",\"doc\":{{\"data\":{{\"text\":\"{body}\"}}}}}}").into();
        let hub = Rc::new(std::cell::RefCell::new(Hub {
            db,
            outboxes: Vec::new(),
            credit: 0.0,
            next: 0,
            fanout,
            push,
        }));
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let (own, outbox) = tokio::sync::mpsc::unbounded_channel();
            hub.borrow_mut().outboxes.push(own.clone());
            tokio::task::spawn_local(hub_connection(stream, hub.clone(), own, outbox));
        }
    });
    let operations = spawn_clients(&mut sim, hub_client);
    timed(sim, &operations)
}

/// The floors' clients, `CLIENTS` of them on `CLIENT_HOSTS` hosts, each running `client`; returns
/// the operations they count.
fn spawn_clients<F, C>(sim: &mut turmoil::Sim<'static>, client: F) -> Rc<Cell<u64>>
where
    F: Fn(usize, Rc<Cell<u64>>) -> C + Copy + 'static,
    C: std::future::Future<Output = ()> + 'static,
{
    let operations = Rc::new(Cell::new(0u64));
    for host in 0..CLIENT_HOSTS {
        let operations = operations.clone();
        sim.client(format!("clients-{host}"), async move {
            for index in (0..CLIENTS).filter(|i| i % CLIENT_HOSTS == host) {
                tokio::task::spawn_local(client(index, operations.clone()));
            }
            std::future::pending::<()>().await;
            Ok(())
        });
    }
    operations
}

/// A floor client's WebSocket to the server.
async fn connect() -> tokio_tungstenite::WebSocketStream<turmoil::net::TcpStream> {
    let stream = turmoil::net::TcpStream::connect(("server", PORT)).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async_with_config("ws://server/", stream, Some(ws_config()))
        .await
        .expect("handshake");
    ws
}

/// Client `index`'s waits between operations: uniform over 0 to 2 s (one operation a second on
/// average), from its own xorshift state.
fn delays(index: usize) -> impl FnMut() -> Duration {
    let mut state = index as u64 * 0x9e37_79b9_7f4a_7c15 + 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        Duration::from_millis(state % 2_001)
    }
}

/// A floor client: waits, sends one message, waits for its reply, and counts the operation.
async fn floor_client(index: usize, operations: Rc<Cell<u64>>) {
    let mut ws = connect().await;
    let mut delay = delays(index);
    loop {
        tokio::time::sleep(delay()).await;
        ws.send(Message::text(format!("{{\"op\":\"create\",\"by\":{index}}}"))).await.expect("send");
        let _ = ws.next().await;
        operations.set(operations.get() + 1);
    }
}

/// Runs a floor's world for SIMULATED_S simulated seconds: the operations done and the wall time.
fn timed(mut sim: turmoil::Sim<'static>, operations: &Cell<u64>) -> (u64, Duration) {
    let started = Instant::now();
    while sim.elapsed() < Duration::from_secs(SIMULATED_S) {
        sim.step().expect("a floor's world steps");
    }
    (operations.get(), started.elapsed())
}

/// One round's figures for one world: client operations, simulated seconds and wall seconds.
#[derive(Clone, Copy, Default)]
struct Figures {
    operations: u64,
    simulated_s: f64,
    wall_s: f64,
    /// The text frames the clients sent and received (the simulation's runs only).
    frames: FrameCounts,
}

impl Figures {
    fn per_wall_second(self) -> f64 {
        self.operations as f64 / self.wall_s
    }

    fn speed(self) -> f64 {
        self.simulated_s / self.wall_s
    }

    /// A floor's figures: its operations in SIMULATED_S simulated seconds.
    fn floor((operations, wall): (u64, Duration)) -> Figures {
        Figures {
            operations,
            simulated_s: SIMULATED_S as f64,
            wall_s: wall.as_secs_f64(),
            ..Figures::default()
        }
    }

    /// The simulation's fan-out: what its clients received per operation, less the reply.
    fn fanout(self) -> Fanout {
        Fanout {
            pushes_per_operation: (self.received_per_operation() - 1.0).max(0.0),
            push_bytes: (self.frames.received_bytes / self.frames.received.max(1)) as usize,
        }
    }

    fn received_per_operation(self) -> f64 {
        self.frames.received as f64 / self.operations.max(1) as f64
    }
}

/// Three seeds of an embedded scenario through the whole simulation.
fn simulation(name: &str) -> Figures {
    let scenario = Scenario::load(name).expect("an embedded scenario");
    let mut figures = Figures::default();
    for seed in 0..3 {
        let started = Instant::now();
        let report = run(&RunConfig::new(scenario.clone(), seed));
        figures.wall_s += started.elapsed().as_secs_f64();
        figures.operations += report.operations;
        figures.simulated_s += report.sim_ms as f64 / 1_000.0;
        figures.frames += report.frames;
        assert!(report.passed(), "{name} seed {seed}: {:?}", report.failures);
    }
    figures
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The scenarios each round runs.
const NAMES: [&str; 2] = ["swarm", "crash-recovery"];

/// Rounds of the floor, both scenarios and the fan-out floor, one after another
/// (`ROOMLAB_FLOOR_ROUNDS`, default 3). This machine's speed can swing by half within the hour, so
/// each scenario is compared with the floors of its own round, and the summary gives the medians
/// over rounds.
fn rounds() -> usize {
    std::env::var("ROOMLAB_FLOOR_ROUNDS").ok().and_then(|r| r.parse().ok()).filter(|r| *r > 0).unwrap_or(3)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (cargo test's harness flags) runs nothing.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    // Per round: the floor, each scenario, then the floor at swarm's fan-out.
    let mut measured: Vec<[Figures; 4]> = Vec::new();
    for round in 1..=rounds() {
        let floor = Figures::floor(floor(1));
        println!(
            "round {round}: floor (turmoil + tungstenite + one SQLite insert, {CLIENTS} clients, {SIMULATED_S} \
             simulated s): {} operations in {:.2} s wall: {:.0} operations per wall second, {:.1}x real time",
            floor.operations,
            floor.wall_s,
            floor.per_wall_second(),
            floor.speed()
        );
        let scenarios = NAMES.map(|name| {
            let figures = simulation(name);
            println!(
                "round {round}: simulation {name} (3 seeds, every invariant checked): {} operations in {:.2} s \
                 wall: {:.0} operations per wall second ({:.1} % of this round's floor), {:.1}x real time; \
                 {:.1} frames received per operation",
                figures.operations,
                figures.wall_s,
                figures.per_wall_second(),
                100.0 * figures.per_wall_second() / floor.per_wall_second(),
                figures.speed(),
                figures.received_per_operation()
            );
            figures
        });
        let fanout = scenarios[0].fanout();
        let fanned = Figures::floor(fanout_floor(1, fanout));
        println!(
            "round {round}: floor at swarm's fan-out (the floor, plus {:.1} pushes of {} bytes per operation, \
             every frame parsed): {} operations in {:.2} s wall: {:.0} operations per wall second, {:.1}x real \
             time; swarm at {:.1} % of it",
            fanout.pushes_per_operation,
            fanout.push_bytes,
            fanned.operations,
            fanned.wall_s,
            fanned.per_wall_second(),
            fanned.speed(),
            100.0 * scenarios[0].per_wall_second() / fanned.per_wall_second()
        );
        measured.push([floor, scenarios[0], scenarios[1], fanned]);
    }
    summarize(&measured);
}

/// The medians over rounds of every figure, each scenario beside its own round's floors.
fn summarize(measured: &[[Figures; 4]]) {
    let over_rounds = |figure: &dyn Fn(&[Figures; 4]) -> f64| median(measured.iter().map(figure).collect());
    let rounds = measured.len();
    for (at, name) in [(0, "floor"), (3, "floor at swarm's fan-out")] {
        println!(
            "medians over {rounds} rounds: {name} {:.0} operations per wall second, {:.1}x real time",
            over_rounds(&|round| round[at].per_wall_second()),
            over_rounds(&|round| round[at].speed())
        );
    }
    for (index, name) in NAMES.into_iter().enumerate() {
        let at = index + 1;
        println!(
            "medians over {rounds} rounds: {name} {:.0} operations per wall second, {:.1} % of its round's floor, \
             {:.1}x real time",
            over_rounds(&|round| round[at].per_wall_second()),
            over_rounds(&|round| 100.0 * round[at].per_wall_second() / round[0].per_wall_second()),
            over_rounds(&|round| round[at].speed())
        );
    }
    println!(
        "medians over {rounds} rounds: swarm at {:.1} % of its round's floor at swarm's fan-out",
        over_rounds(&|round| 100.0 * round[1].per_wall_second() / round[3].per_wall_second())
    );
}
