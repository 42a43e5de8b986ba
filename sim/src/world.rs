//! One simulated run: the world (a server host and client hosts on turmoil), its phases, the fault
//! driver, and the checks at checkpoints and at the end.

use crate::check::{self, Failures};
use crate::disk::Disk;
use crate::faults::FaultDriver;
use crate::history::{Frame, JournalLog, Observed};
use crate::hostile::Hostile;
use crate::scenario::{Scenario, Workload};
use crate::trace::{SharedTrace, Trace};
use crate::workload::{role_of, Actor, QuotaEdge, PHASE_LIVENESS, PHASE_SAFETY, PHASE_SETUP};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use roomlab_client::{Client, ClientConfig, TapEvent};
use roomlab_engine::Identity;
use roomlab_protocol::{ClientId, Plan, RoomId, UserId};
use roomlab_server::{mint, Claims, Server, ServerConfig};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// The room every virtual client works in.
pub(crate) const ROOM: &str = "sim-room";
const SECRET: &[u8] = b"roomlab-sim-secret";
const PORT: u16 = 8787;
/// Unix seconds at the simulation's start: fixed, so that tokens and timestamps never depend on
/// the machine's clock.
const EPOCH_S: u64 = 1_767_225_600;
/// How often the world looks at liveness and takes checkpoints, in simulated milliseconds.
const POLL_MS: u64 = 100;
/// What the simulated sockets read at a time: most frames are a few hundred bytes, and a
/// simulated read costs no system call, so small reads zero-fill less (see `read_buffer_bytes`).
const READ_BUFFER_BYTES: usize = 1024;
/// Decoded frames the run's clients share: a change's pushes reach its subscribers within a few
/// simulated milliseconds, so a few hundred recent frames hold nearly every repeat.
const DECODE_CACHE_ENTRIES: usize = 512;
/// The longest frame the shared cache holds (a query's first answer can be long; it is rarely
/// received byte for byte the same by many clients).
const DECODE_CACHE_FRAME_BYTES_MAX: usize = 16 * 1024;
const CHECKPOINT_MS: u64 = 5_000;
/// How long everything must stay settled before the final checks.
const QUIET_MS: u64 = 2_000;

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The scenario.
    pub scenario: Scenario,
    /// The seed.
    pub seed: u64,
    /// Keep every trace event (for `--trace` and the determinism check).
    pub keep_trace: bool,
    /// A planted bug for the server and clients (builds with the `mutants` feature); the oracles the
    /// checks compare against never get it.
    pub mutant: Option<roomlab_protocol::Mutant>,
    /// Also run the engine's self-checks (its own invariants, read from inside the room) at every
    /// checkpoint. The kill matrix turns them off, so that what it reports is the oracle's power.
    pub engine_checks: bool,
}

impl RunConfig {
    /// A run of `scenario` at `seed` with every check on, no trace kept and no mutant.
    pub fn new(scenario: Scenario, seed: u64) -> RunConfig {
        RunConfig { scenario, seed, keep_trace: false, mutant: None, engine_checks: true }
    }
}

/// What one run did and found.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Every invariant that broke, each a sentence.
    pub failures: Vec<String>,
    /// Simulated milliseconds.
    pub sim_ms: u64,
    /// Wall-clock milliseconds (measured by the caller; zero inside the run).
    pub wall_ms: u64,
    /// Mutations, subscriptions and rich-text edits the clients made.
    pub operations: u64,
    /// Mutations acknowledged.
    pub acks: u64,
    /// Mutations refused, by error code.
    pub refusals: BTreeMap<String, u64>,
    /// Faults injected, by kind; every kind the scenario enables is listed, fired or not.
    pub faults: BTreeMap<String, u64>,
    /// The room's final sequence.
    pub final_seq: u64,
    /// Live documents at the end.
    pub live_docs: u64,
    /// The trace's hash.
    pub trace_hash: u64,
    /// Trace events recorded.
    pub trace_events: u64,
    /// The protocol's text frames the clients sent and received.
    #[serde(default)]
    pub frames: crate::trace::FrameCounts,
    /// Per rule id of docs/PROTOCOL.md: how often the oracle exercised it and how many received
    /// frames it decided were checked.
    #[serde(default)]
    pub rules: BTreeMap<String, crate::history::RuleCount>,
    /// The kept trace, when asked for.
    #[serde(skip)]
    pub events: Vec<crate::trace::Event>,
}

impl Report {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// One virtual client as the world sees it.
pub(crate) struct Virtual {
    pub index: usize,
    pub identity: Identity,
    pub client: Arc<Client>,
}

pub(crate) type Clients = Arc<Mutex<Vec<Virtual>>>;

thread_local! {
    /// Panics inside the run on this thread; `None` outside a run, where panics print as usual.
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = format!("{info}");
            let recorded = PANICS
                .try_with(|p| {
                    p.try_borrow_mut().ok().and_then(|mut p| p.as_mut().map(|p| p.push(text))).is_some()
                })
                .unwrap_or(false);
            if !recorded || std::env::var_os("ROOMLAB_SIM_PANIC_TRACE").is_some() {
                default(info);
            }
        }));
    });
}

pub(crate) fn identity_of(scenario: &Scenario, index: usize) -> Identity {
    let user = index % scenario.users;
    let mut identity =
        Identity::new(UserId::new(format!("u{user}")).expect("valid"), role_of(user, scenario.viewer_every));
    if scenario.free_every > 0 && user > 0 && user.is_multiple_of(scenario.free_every) {
        identity.plan = Plan::Free;
    }
    identity.addons = (user % 3) as u32;
    identity
}

pub(crate) fn engine_config(scenario: &Scenario) -> roomlab_engine::Config {
    let mut config = roomlab_engine::Config::default();
    config.quotas.free_bytes = scenario.quotas.free_bytes;
    config.quotas.pro_bytes = scenario.quotas.pro_bytes;
    config.quotas.addon_bytes = scenario.quotas.addon_bytes;
    config.limits.outbound_queue_max = 256;
    config
}

/// The fault points this seed turns on (each with even odds, at least one) when the scenario
/// enables BUGGIFY.
fn buggify_for(config: &RunConfig) -> Option<Arc<roomlab_server::Buggify>> {
    use rand_chacha::rand_core::RngCore;
    let percent = config.scenario.faults.buggify;
    if percent <= 0.0 {
        return None;
    }
    if let Some(names) = &config.scenario.faults.buggify_points {
        let enabled =
            names.iter().map(|name| crate::scenario::fault_point(name).expect("checked on load")).collect();
        return Some(Arc::new(roomlab_server::Buggify::new(config.seed, enabled, percent)));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0xb0b0_b0b0_b0b0_b0b0);
    let points = roomlab_server::FaultPoint::ALL;
    let mut enabled: std::collections::BTreeSet<_> =
        points.into_iter().filter(|_| rng.next_u64().is_multiple_of(2)).collect();
    if enabled.is_empty() {
        enabled.insert(points[(rng.next_u64() % points.len() as u64) as usize]);
    }
    Some(Arc::new(roomlab_server::Buggify::new(config.seed, enabled, percent)))
}

/// Whether this seed turns on the workload's BUGGIFY point, a write landing exactly at the quota
/// limit (even odds, when the scenario enables BUGGIFY and the seed's mix writes to quotas).
fn quota_edge_on(config: &RunConfig) -> bool {
    use rand_chacha::rand_core::RngCore;
    config.scenario.faults.buggify > 0.0
        && workload_mix(config).quota > 0
        && ChaCha8Rng::seed_from_u64(config.seed ^ 0x0e06_0e06_0e06_0e06).next_u64().is_multiple_of(2)
}

/// The seed's workload mix: in swarm mode every seed draws its own (as the fault driver draws
/// its rates).
fn workload_mix(config: &RunConfig) -> Workload {
    let scenario = &config.scenario;
    match scenario.swarm {
        true => {
            scenario.workload.swarm_draw(&mut ChaCha8Rng::seed_from_u64(config.seed ^ 0x3017_3017_3017_3017))
        }
        false => scenario.workload,
    }
}

/// The user's usage in the server's room now, if the server and the room are up.
fn usage_reader(slot: &ServerSlot, user: UserId) -> Rc<dyn Fn() -> Option<u64>> {
    let slot = slot.clone();
    Rc::new(move || {
        let server = slot.borrow().clone()?;
        let room = RoomId::new(ROOM).expect("valid");
        let (_, room) = server.open_rooms().into_iter().find(|(id, _)| *id == room)?;
        let room = room.lock().ok()?;
        Some(room.usage(&user))
    })
}

fn server_config(
    config: &RunConfig,
    data: &std::path::Path,
    buggify: Option<Arc<roomlab_server::Buggify>>,
) -> ServerConfig {
    let (scenario, seed) = (&config.scenario, config.seed);
    let mutant = config.mutant;
    let mut config = ServerConfig::new(SECRET);
    config.data = Some(data.to_path_buf());
    config.engine = engine_config(scenario);
    config.engine.mutant = mutant;
    config.engine.vfs = Some(crate::disk::VFS_NAME.to_string());
    config.epoch_ms = EPOCH_S * 1000;
    config.seed = seed;
    config.idle_close_ms = 3_600_000;
    config.local_tasks = true;
    config.read_buffer_bytes = READ_BUFFER_BYTES;
    config.buggify = buggify;
    config
}

fn tap(trace: &SharedTrace, observed: &Arc<Observed>, index: usize, user: UserId) -> roomlab_client::Tap {
    let trace = trace.clone();
    let observed = observed.clone();
    let actor = format!("c{index}");
    let after_internal = check::AfterInternal::default();
    Arc::new(move |event: TapEvent<'_>| {
        let time_ms = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
        // Frames, nearly every event, are recorded without a copy.
        let frame = |prefix: &str, text: &str| {
            trace.lock().expect("trace lock").record_prefixed(time_ms, &actor, prefix, text);
        };
        let text = match event {
            TapEvent::Sent(text) => {
                observed.sent(index, Frame::Text(text.to_string()));
                return frame("> ", text);
            }
            TapEvent::Received(text) => {
                observed.received(index, Frame::Text(text.to_string()));
                check::private_leak(&user, text, &trace, &actor);
                after_internal.received(Some(text), &trace, &actor);
                return frame("< ", text);
            }
            TapEvent::Connecting { attempt } => format!("connecting (attempt {attempt})"),
            TapEvent::Connected => {
                after_internal.connection_ended();
                "connected".to_string()
            }
            TapEvent::SentYjs(frame) => {
                observed.sent(index, Frame::Yjs(frame.clone()));
                format!("> {}", yjs_line(frame))
            }
            TapEvent::ReceivedYjs(frame) => {
                observed.received(index, Frame::Yjs(frame.clone()));
                after_internal.received(None, &trace, &actor);
                format!("< {}", yjs_line(frame))
            }
            TapEvent::Disconnected { reason } => {
                observed.ended(index);
                after_internal.connection_ended();
                format!("disconnected: {reason}")
            }
        };
        trace.lock().expect("trace lock").record(time_ms, &actor, &text);
    })
}

/// A Yjs frame in the trace: its field, kind, size and a hash of its bytes (the bytes themselves
/// are opaque and long; the hash keeps the trace's determinism check exact).
fn yjs_line(frame: &roomlab_protocol::YjsFrame) -> String {
    let kind = match roomlab_protocol::YSync::parse(&frame.payload) {
        Ok(roomlab_protocol::YSync::Step1(_)) => "step1",
        Ok(roomlab_protocol::YSync::Step2(_)) => "step2",
        Ok(roomlab_protocol::YSync::Update(_)) => "update",
        Ok(roomlab_protocol::YSync::Awareness(_)) => "awareness",
        Err(_) => "malformed",
    };
    let hash = frame.payload.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("Y {}/{} {kind} {} bytes #{hash:016x}", frame.doc, frame.field, frame.payload.len())
}

fn client_config(
    mutant: Option<roomlab_protocol::Mutant>,
    seed: u64,
    index: usize,
    identity: &Identity,
    (trace, observed): (&SharedTrace, &Arc<Observed>),
    decode_cache: &Arc<roomlab_client::DecodeCache>,
) -> ClientConfig {
    let path = socket_path(identity);
    let id = ClientId::new(format!("sim-{index}")).expect("valid");
    let mut config = ClientConfig::new("server", PORT, path, id);
    config.seed = seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    config.tap = Some(tap(trace, observed, index, identity.user.clone()));
    config.decode_cache = Some(decode_cache.clone());
    config.local_tasks = true;
    config.read_buffer_bytes = READ_BUFFER_BYTES;
    config.mutant = mutant;
    config
}

/// The room's WebSocket path with a valid token for `identity`.
fn socket_path(identity: &Identity) -> String {
    let claims = Claims {
        sub: identity.user.to_string(),
        room: ROOM.into(),
        role: identity.role,
        exp: EPOCH_S + 86_400 * 365,
        plan: Some(identity.plan),
        addons: Some(identity.addons),
    };
    format!("/ws/{ROOM}?token={}", mint(SECRET, &claims))
}

struct SimListener(turmoil::net::TcpListener);

impl roomlab_server::Listener for SimListener {
    type Stream = turmoil::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<(Self::Stream, Option<std::net::SocketAddr>)> {
        self.0.accept().await.map(|(stream, peer)| (stream, Some(peer)))
    }
}

/// One client's way to the server; it tells the history checker which address each of the
/// client's connections comes from, which is how the room's journal names it.
struct SimConnector {
    index: usize,
    observed: Arc<Observed>,
}

impl roomlab_client::Connector for SimConnector {
    type Stream = turmoil::net::TcpStream;
    async fn connect(&self, host: &str, port: u16) -> std::io::Result<Self::Stream> {
        let stream = turmoil::net::TcpStream::connect((host, port)).await?;
        let now_ms = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
        self.observed.opened(self.index, stream.local_addr()?, now_ms);
        Ok(stream)
    }
}

pub(crate) type ServerSlot = Rc<RefCell<Option<Server>>>;

fn build(
    config: &RunConfig,
    data: &std::path::Path,
    (trace, recording): (&SharedTrace, &Recording),
    buggify: Option<Arc<roomlab_server::Buggify>>,
    quota_edges: Option<Rc<std::cell::Cell<u64>>>,
) -> (turmoil::Sim<'static>, ServerSlot, Clients, Arc<AtomicU8>, Option<Hostile>) {
    let scenario = &config.scenario;
    let total_s = scenario.setup_s * 10 + scenario.safety_s + scenario.liveness_s + 60;
    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_S))
        .simulation_duration(Duration::from_secs(total_s))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        // The accept backlog and socket buffers must hold a reconnect storm of every client.
        .tcp_capacity(16_384)
        .build();
    let slot: ServerSlot = Rc::default();
    let mut server_config = server_config(config, data, buggify);
    let journal = recording.journal.clone();
    server_config.journal =
        Some(roomlab_server::Journal::new(move |entry| journal.lock().expect("journal lock").push(entry)));
    let hostile = (scenario.faults.hostile > 0.0).then(|| {
        let context = crate::hostile::Context {
            server: ("server", PORT),
            observed: recording.observed.clone(),
            trace: trace.clone(),
            hello_ms_max: server_config.hello_ms_max,
            note: (crate::workload::note(0), crate::workload::body()),
        };
        let (hostile, host) = Hostile::new(context);
        sim.client("hostile", host);
        hostile
    });
    let host_slot = slot.clone();
    sim.host("server", move || {
        let (config, slot) = (server_config.clone(), host_slot.clone());
        async move {
            let server = Server::new(config)?;
            *slot.borrow_mut() = Some(server.clone());
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
            server.serve(SimListener(listener), 0).await;
            Ok(())
        }
    });
    let clients: Clients = Arc::default();
    let phase = Arc::new(AtomicU8::new(PHASE_SETUP));
    let setup_done = Rc::new(std::cell::Cell::new(false));
    let mix = workload_mix(config);
    // Every client of the run decodes a frame they all receive once (see DecodeCache).
    let decode_cache =
        Arc::new(roomlab_client::DecodeCache::new(DECODE_CACHE_ENTRIES, DECODE_CACHE_FRAME_BYTES_MAX));
    for host in 0..scenario.client_hosts {
        let members: Vec<usize> =
            (0..scenario.clients).filter(|i| i % scenario.client_hosts == host).collect();
        let (scenario, seed, trace, clients, phase) =
            (scenario.clone(), config.seed, trace.clone(), clients.clone(), phase.clone());
        let mutant = config.mutant;
        let (slot, quota_edges, setup_done) = (slot.clone(), quota_edges.clone(), setup_done.clone());
        let decode_cache = decode_cache.clone();
        let observed = recording.observed.clone();
        let quotas = engine_config(&scenario).quotas;
        sim.client(format!("clients-{host}"), async move {
            for index in members {
                let identity = identity_of(&scenario, index);
                let quota_edge = quota_edges.as_ref().map(|fired| QuotaEdge {
                    usage: usage_reader(&slot, identity.user.clone()),
                    limit: quotas.limit(identity.plan, identity.addons),
                    fired: fired.clone(),
                });
                let config =
                    client_config(mutant, seed, index, &identity, (&trace, &observed), &decode_cache);
                let connector = SimConnector { index, observed: observed.clone() };
                let client = Arc::new(Client::start(config, connector));
                clients.lock().expect("clients lock").push(Virtual {
                    index,
                    identity: identity.clone(),
                    client: client.clone(),
                });
                let actor = Actor {
                    index,
                    client,
                    rng: ChaCha8Rng::seed_from_u64(seed.wrapping_add(1 + index as u64)),
                    mix,
                    rate_per_s: scenario.ops_per_client_per_s,
                    steps_max: scenario.steps_per_client_max,
                    shared_docs: scenario.shared_docs,
                    users: scenario.users,
                    viewer_every: scenario.viewer_every,
                    phase: phase.clone(),
                    setup_done: setup_done.clone(),
                    subscriptions: Vec::new(),
                    made: 0,
                    viewer: identity.role == roomlab_protocol::Role::Viewer,
                    texts: Vec::new(),
                    quota_edge,
                };
                tokio::task::spawn_local(actor.run());
            }
            std::future::pending::<()>().await;
            Ok(())
        });
    }
    (sim, slot, clients, phase, hostile)
}

/// Runs one seed of a scenario and checks every invariant.
pub fn run(config: &RunConfig) -> Report {
    install_panic_hook();
    PANICS.with(|p| *p.borrow_mut() = Some(Vec::new()));
    let scenario = &config.scenario;
    let data = tempfile::tempdir().expect("a temporary directory for the room database");
    let disk = Disk::mount(data.path());
    let trace: SharedTrace = Arc::new(Mutex::new(Trace::new(config.keep_trace)));
    let buggify = buggify_for(config);
    let quota_edges = quota_edge_on(config).then(|| Rc::new(std::cell::Cell::new(0)));
    let recording = Recording::default();
    let (mut sim, slot, clients, phase, hostile) =
        build(config, data.path(), (&trace, &recording), buggify.clone(), quota_edges.clone());
    let mut waiting = Waiting::default();
    let mut failures = Failures::default();
    let mut faults = FaultDriver::new(scenario, config.seed);
    let world = World {
        slot: &slot,
        clients: &clients,
        trace: &trace,
        scenario,
        recording: &recording,
        engine_checks: config.engine_checks,
        hostile: hostile.as_ref(),
        disk: &disk,
    };

    let setup_deadline_ms = scenario.setup_s * 10_000;
    let mut safety_end_ms = u64::MAX;
    let mut liveness_deadline_ms = u64::MAX;
    let mut quiet_since: Option<u64> = None;
    let mut next_poll = 0;
    let mut next_checkpoint = CHECKPOINT_MS;
    let mut quota_edges_noted = 0;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        note_firings(&world, now, buggify.as_deref(), quota_edges.as_deref(), &mut quota_edges_noted);
        if now >= next_poll {
            next_poll = now + POLL_MS;
            match phase.load(Ordering::Relaxed) {
                PHASE_SETUP if now >= scenario.setup_s * 1000 && world.all_settled(scenario.clients) => {
                    world.note(now, "setup done: every client connected; workload and faults start");
                    phase.store(PHASE_SAFETY, Ordering::Relaxed);
                    safety_end_ms = now + scenario.safety_s * 1000;
                }
                PHASE_SETUP if now >= setup_deadline_ms => {
                    failures
                        .push(format!("setup: not every client connected within {} ms", setup_deadline_ms));
                    break;
                }
                PHASE_SAFETY if now >= safety_end_ms => {
                    faults.heal(&mut sim, &slot, &world, now);
                    world.note(now, "safety phase over: faults healed, workload stopped");
                    phase.store(PHASE_LIVENESS, Ordering::Relaxed);
                    liveness_deadline_ms = now + scenario.liveness_s * 1000;
                }
                PHASE_SAFETY => {
                    faults.step(&mut sim, &slot, &world, now, POLL_MS);
                    failures.extend(waiting.check(&world, now));
                }
                PHASE_LIVENESS => {
                    if world.all_settled(scenario.clients) {
                        let since = *quiet_since.get_or_insert(now);
                        if now - since >= QUIET_MS {
                            break;
                        }
                    } else {
                        quiet_since = None;
                    }
                    if now >= liveness_deadline_ms {
                        failures.extend(world.unsettled_reasons(scenario.liveness_s));
                        break;
                    }
                }
                _ => {}
            }
        }
        if phase.load(Ordering::Relaxed) == PHASE_SAFETY {
            faults.watch_power(&mut sim, &slot, &world, now);
        }
        if now >= next_checkpoint {
            next_checkpoint = now + CHECKPOINT_MS;
            check::noted(&world, now, "checkpoint", check::checkpoint(&world, now), &mut failures);
            if !failures.is_empty() {
                break;
            }
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.step())) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                failures.push(format!("a host failed: {e}"));
                break;
            }
            Err(_) => {
                // The panic hook recorded the message; it is reported below.
                failures.push(format!("the simulated network panicked at {now} ms"));
            }
        }
        if let Some(hostile) = &hostile {
            failures.extend(std::mem::take(&mut *hostile.findings.borrow_mut()));
        }
        let panics: Vec<String> =
            PANICS.with(|p| p.borrow_mut().as_mut().map(std::mem::take).unwrap_or_default());
        if !panics.is_empty() || !failures.is_empty() {
            failures.extend(panics.into_iter().map(|p| format!("panic inside the simulation: {p}")));
            break;
        }
    }
    let sim_ms = sim.elapsed().as_millis() as u64;
    let mut rules = BTreeMap::new();
    if failures.is_empty() {
        let (found, covered) = check::final_checks(&world, sim_ms);
        failures.extend(found);
        rules = covered;
    }
    let mut fired = faults.fired();
    fired.extend(buggify.map(|b| b.fired()).unwrap_or_default());
    if let Some(count) = quota_edges {
        fired.insert("buggify:quota-exact".into(), count.get());
    }
    let mut report = world.report(config, sim_ms, fired);
    report.failures = failures.into_vec();
    for (rule, count) in hostile.iter().flat_map(|hostile| hostile.checked.take()) {
        let total = rules.entry(rule.to_string()).or_default();
        total.checked += count;
        total.exercised = total.exercised.max(total.checked);
    }
    report.rules = rules;
    for failure in &report.failures {
        trace.lock().expect("trace lock").record(sim_ms, "world", &format!("FAILED {failure}"));
    }
    let mut trace = trace.lock().expect("trace lock");
    (report.trace_hash, report.trace_events) = (trace.hash(), trace.count());
    report.frames = trace.frames();
    report.events = trace.take_events();
    drop(trace);
    // The simulation owns the server; drop it (and the room database) before the directory goes.
    slot.borrow_mut().take();
    drop(sim);
    PANICS.with(|p| *p.borrow_mut() = None);
    report
}

/// Puts the BUGGIFY points that fired during the last step on the trace, at the time the step
/// ended: the server's points as they fired, and the workload's quota-exact writes by count.
fn note_firings(
    world: &World<'_>,
    now_ms: u64,
    buggify: Option<&roomlab_server::Buggify>,
    quota_edges: Option<&std::cell::Cell<u64>>,
    quota_edges_noted: &mut u64,
) {
    for point in buggify.map(|b| b.take_firings()).unwrap_or_default() {
        world.note(now_ms, &format!("{} fired", point.name()));
    }
    let quota_edges = quota_edges.map_or(0, |count| count.get());
    for _ in *quota_edges_noted..quota_edges {
        world.note(now_ms, "buggify:quota-exact fired: a write sized to land exactly at its user's limit");
    }
    *quota_edges_noted = quota_edges;
}

/// What the checks and the fault driver may look at.
pub(crate) struct World<'a> {
    pub slot: &'a ServerSlot,
    pub clients: &'a Clients,
    pub trace: &'a SharedTrace,
    pub scenario: &'a Scenario,
    pub recording: &'a Recording,
    /// Whether the engine's self-checks run at checkpoints ([`RunConfig::engine_checks`]).
    pub engine_checks: bool,
    /// Where hostile connections are ordered, if the scenario has them.
    pub hostile: Option<&'a Hostile>,
    /// The disk the room databases live on.
    pub disk: &'a Disk,
}

/// Since when each well-behaved client's unanswered mutation has waited, for
/// [`Scenario::op_ms_max`].
#[derive(Default)]
struct Waiting {
    since_ms: BTreeMap<(usize, u64), u64>,
}

impl Waiting {
    /// Failures for mutations that have waited longer than the scenario allows.
    fn check(&mut self, world: &World<'_>, now_ms: u64) -> Vec<String> {
        let Some(op_ms_max) = world.scenario.op_ms_max else { return Vec::new() };
        let mut pending = BTreeMap::new();
        for v in world.clients.lock().expect("clients lock").iter() {
            v.client.with_core(|core| {
                for (mid, _) in core.pending() {
                    let since = self.since_ms.get(&(v.index, mid)).copied().unwrap_or(now_ms);
                    pending.insert((v.index, mid), since);
                }
            });
        }
        self.since_ms = pending;
        self.since_ms
            .iter()
            .filter(|(_, since)| now_ms - **since > op_ms_max)
            .take(1)
            .map(|((index, mid), since)| {
                format!(
                    "liveness.op-bound: c{index}'s mutation {mid} has waited {} ms for its answer, over op_ms_max ({op_ms_max} ms)",
                    now_ms - since
                )
            })
            .collect()
    }
}

/// What the history checker reads: the room's journal and every client's frames.
#[derive(Default)]
pub(crate) struct Recording {
    pub journal: JournalLog,
    pub observed: Arc<Observed>,
}

impl World<'_> {
    pub fn note(&self, now_ms: u64, text: &str) {
        self.trace.lock().expect("trace lock").record(now_ms, "world", text);
    }

    pub fn room(&self) -> Option<roomlab_server::SharedRoom> {
        let server = self.slot.borrow().clone()?;
        let room = RoomId::new(ROOM).expect("valid");
        server.open_rooms().into_iter().find(|(id, _)| *id == room).map(|(_, room)| room)
    }

    /// Every client started, connected, resynced, and without unanswered mutations, and every
    /// hostile attack over.
    pub fn all_settled(&self, expected: usize) -> bool {
        if self.hostile.is_some_and(|hostile| hostile.running.get() > 0) {
            return false;
        }
        let clients = self.clients.lock().expect("clients lock");
        clients.len() == expected
            && clients
                .iter()
                .all(|v| v.client.with_core(|core| core.is_resynced() && core.pending().next().is_none()))
    }

    fn unsettled_reasons(&self, liveness_s: u64) -> Vec<String> {
        let clients = self.clients.lock().expect("clients lock");
        let mut reasons: Vec<String> = clients
            .iter()
            .filter_map(|v| {
                let (resynced, pending) = v.client.with_core(|core| (core.is_resynced(), core.pending().count()));
                (!resynced || pending > 0).then(|| {
                    format!("liveness: c{} not settled {liveness_s} s after faults stopped (resynced: {resynced}, unanswered mutations: {pending})", v.index)
                })
            })
            .collect();
        if let Some(running) = self.hostile.map(|hostile| hostile.running.get()).filter(|n| *n > 0) {
            reasons.push(format!(
                "liveness: {running} hostile attacks still running {liveness_s} s after faults stopped"
            ));
        }
        let total = reasons.len();
        reasons.truncate(5);
        if total > 5 {
            reasons.push(format!("liveness: and {} more clients", total - 5));
        }
        reasons
    }

    fn report(&self, config: &RunConfig, sim_ms: u64, faults: BTreeMap<String, u64>) -> Report {
        let mut report = Report {
            scenario: config.scenario.name.clone(),
            seed: config.seed,
            sim_ms,
            faults,
            ..Report::default()
        };
        for v in self.clients.lock().expect("clients lock").iter() {
            v.client.with_core(|core| {
                report.operations +=
                    core.outcomes().len() as u64 + core.subscriptions_made() + core.yjs().edits_made();
                for outcome in core.outcomes().values() {
                    match outcome {
                        roomlab_client::Outcome::Ack(_) => report.acks += 1,
                        roomlab_client::Outcome::Refused(body) => {
                            *report.refusals.entry(body.code.to_string()).or_default() += 1;
                        }
                    }
                }
            });
        }
        if let Some(Ok(room)) = self.room().as_ref().map(|room| room.lock()) {
            let export = room.export();
            report.final_seq = export.seq;
            report.live_docs = export.docs.iter().filter(|(_, deleted)| deleted.is_none()).count() as u64;
        }
        report
    }
}

impl World<'_> {
    /// The WebSocket path with a valid token for client `index`'s user.
    pub fn socket_path(&self, index: usize) -> String {
        socket_path(&identity_of(self.scenario, index))
    }

    /// Runs `act` on virtual client `index`.
    pub fn with_client(&self, index: usize, act: impl FnOnce(&roomlab_client::Client)) {
        let clients = self.clients.lock().expect("clients lock");
        if let Some(v) = clients.iter().find(|v| v.index == index) {
            act(&v.client);
        }
    }

    /// Kills the connection of every virtual client on client host `host`.
    pub fn reset_host(&self, host: usize) {
        let hosts = self.scenario.client_hosts;
        for v in self.clients.lock().expect("clients lock").iter().filter(|v| v.index % hosts == host) {
            v.client.kill_connection();
        }
    }

    /// Runs `act` on every virtual client.
    pub fn for_each_client(&self, mut act: impl FnMut(&roomlab_client::Client)) {
        for v in self.clients.lock().expect("clients lock").iter() {
            act(&v.client);
        }
    }
}
