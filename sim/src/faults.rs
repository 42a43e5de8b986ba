//! The fault driver: partitions both ways and one way, clogged links, latency changes, connection
//! kills, reconnect storms, slow consumers, server crashes and restarts. In swarm mode each seed
//! draws its own rates, so some runs see a storm of one fault and none of another.

use crate::hostile::{Attack, Order, HOSTILE_INDEX_BASE};
use crate::scenario::{Faults, Scenario};
use crate::world::{ServerSlot, World};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::time::Duration;

/// A fault that is on and when it ends.
#[derive(Debug, Clone, PartialEq)]
enum Active {
    Partition { host: usize, oneway: bool, until_ms: u64 },
    Clog { host: usize, until_ms: u64 },
    Crashed { until_ms: u64 },
}

pub(crate) struct FaultDriver {
    rng: ChaCha8Rng,
    rates: Vec<(FaultKind, f64)>,
    active: Vec<Active>,
    fired: BTreeMap<String, u64>,
    hosts: usize,
    clients: usize,
    /// Hostile connections ordered so far.
    hostile_count: usize,
    /// Where the round of attacks starts, drawn at the first.
    hostile_start: Option<usize>,
    /// When the armed power loss was armed, until the power goes out.
    armed_at_ms: Option<u64>,
}

/// A kind of fault: its name in reports, its rate in a scenario's `[faults]`, how far a shrink may
/// raise it, and its handler (the arm of [`FaultDriver::inject`] that matches it). Adding a kind is
/// a variant here, its arms below, and its field in [`Faults`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// A both-way partition between the server and one client host.
    Partition,
    /// A one-way partition.
    OnewayPartition,
    /// A link held, then released.
    Clog,
    /// A change of the network's latency range.
    Latency,
    /// One client's connection dropped.
    Kill,
    /// The server crashed, then restarted.
    Crash,
    /// A client that stops reading for a while.
    Stall,
    /// Every client's connection dropped at once.
    Storm,
    /// A hostile connection running one attack.
    Hostile,
    /// The server dies with its disk (sim/src/disk.rs), then restarts.
    PowerLoss,
}

impl FaultKind {
    /// Every kind, in the order a swarm seed draws their rates.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Partition,
        FaultKind::OnewayPartition,
        FaultKind::Clog,
        FaultKind::Latency,
        FaultKind::Kill,
        FaultKind::Crash,
        FaultKind::Stall,
        FaultKind::Storm,
        FaultKind::Hostile,
        FaultKind::PowerLoss,
    ];

    /// The kind's name in reports and traces.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::OnewayPartition => "oneway-partition",
            FaultKind::Clog => "clog",
            FaultKind::Latency => "latency",
            FaultKind::Kill => "kill",
            FaultKind::Crash => "crash",
            FaultKind::Stall => "stall",
            FaultKind::Storm => "storm",
            FaultKind::Hostile => "hostile",
            FaultKind::PowerLoss => "power-loss",
        }
    }

    /// Its rate, per simulated minute, in `faults`.
    pub fn rate_mut(self, faults: &mut Faults) -> &mut f64 {
        match self {
            FaultKind::Partition => &mut faults.partitions,
            FaultKind::OnewayPartition => &mut faults.oneway_partitions,
            FaultKind::Clog => &mut faults.clogs,
            FaultKind::Latency => &mut faults.latency,
            FaultKind::Kill => &mut faults.kills,
            FaultKind::Crash => &mut faults.crashes,
            FaultKind::Stall => &mut faults.stalls,
            FaultKind::Storm => &mut faults.storms,
            FaultKind::Hostile => &mut faults.hostile,
            FaultKind::PowerLoss => &mut faults.power_losses,
        }
    }

    /// Its rate, per simulated minute, in `faults`.
    pub fn rate(self, faults: &Faults) -> f64 {
        *self.rate_mut(&mut faults.clone())
    }

    /// The most a shrink makes it per simulated minute, for the kinds a bug may need to strike;
    /// `None`: a shrink only turns it off.
    pub fn shrink_max(self) -> Option<f64> {
        match self {
            FaultKind::Kill => Some(120.0),
            FaultKind::Crash | FaultKind::Storm | FaultKind::PowerLoss => Some(30.0),
            FaultKind::Partition | FaultKind::OnewayPartition | FaultKind::Clog => None,
            FaultKind::Latency | FaultKind::Stall | FaultKind::Hostile => None,
        }
    }

    /// Whether a swarm seed draws its rate from the stream of the kinds that came later, so that
    /// adding them left every other kind's rates (and so every earlier seed's run) as it was.
    fn drawn_later(self) -> bool {
        matches!(self, FaultKind::Hostile | FaultKind::PowerLoss)
    }
}

/// How long an armed power loss waits for its write before the power is cut between writes.
const ARMED_MS_MAX: u64 = 2_000;

impl FaultDriver {
    pub fn new(scenario: &Scenario, seed: u64) -> FaultDriver {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa17_fa17_fa17_fa17);
        let mut rates: Vec<(FaultKind, f64)> =
            FaultKind::ALL.into_iter().map(|kind| (kind, kind.rate(&scenario.faults))).collect();
        if scenario.swarm {
            let mut later = ChaCha8Rng::seed_from_u64(seed ^ 0x4057_11e0_4057_11e0);
            for (kind, rate) in &mut rates {
                // About a third of the faults are off for this seed; the rest run at 0x to 2x.
                let stream = if kind.drawn_later() { &mut later } else { &mut rng };
                let draw = stream.next_u64() % 300;
                *rate = if draw < 100 { 0.0 } else { *rate * (draw - 100) as f64 / 100.0 };
            }
        }
        let fired = rates
            .iter()
            .filter(|(_, rate)| *rate > 0.0)
            .map(|(kind, _)| (kind.name().to_string(), 0))
            .collect();
        FaultDriver {
            rng,
            rates,
            active: Vec::new(),
            fired,
            hosts: scenario.client_hosts,
            clients: scenario.clients,
            hostile_count: 0,
            hostile_start: None,
            armed_at_ms: None,
        }
    }

    /// Faults injected by kind, including enabled kinds that never fired (count 0).
    pub fn fired(&self) -> BTreeMap<String, u64> {
        self.fired.clone()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn host_name(host: usize) -> String {
        format!("clients-{host}")
    }

    /// Ends faults whose time is up and starts new ones at their rates, for one poll interval.
    pub fn step(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        slot: &ServerSlot,
        world: &World<'_>,
        now_ms: u64,
        interval_ms: u64,
    ) {
        self.expire(sim, world, now_ms, false);
        for index in 0..self.rates.len() {
            let (kind, per_minute) = self.rates[index];
            // The chance of one occurrence in this interval, from the rate per simulated minute.
            let chance_per_million = (per_minute * interval_ms as f64 / 60_000.0 * 1e6) as u64;
            if chance_per_million == 0 || self.below(1_000_000) >= chance_per_million {
                continue;
            }
            if self.inject(kind, sim, slot, world, now_ms) {
                *self.fired.entry(kind.name().to_string()).or_default() += 1;
            }
        }
    }

    fn inject(
        &mut self,
        kind: FaultKind,
        sim: &mut turmoil::Sim<'_>,
        slot: &ServerSlot,
        world: &World<'_>,
        now_ms: u64,
    ) -> bool {
        let host = self.below(self.hosts as u64) as usize;
        let duration_ms = 500 + self.below(5_000);
        let until_ms = now_ms + duration_ms;
        let busy = |active: &[Active]| {
            active.iter().any(|a| matches!(a, Active::Partition { host: h, .. } | Active::Clog { host: h, .. } if *h == host))
        };
        // A kind that cannot strike now (its host is busy, the server is already down) skips.
        let blocked = match kind {
            FaultKind::Partition | FaultKind::OnewayPartition | FaultKind::Clog => busy(&self.active),
            FaultKind::Crash => self.crashed(),
            FaultKind::PowerLoss => self.crashed() || self.armed_at_ms.is_some(),
            FaultKind::Hostile => world.hostile.is_none(),
            FaultKind::Latency | FaultKind::Kill | FaultKind::Storm | FaultKind::Stall => false,
        };
        if blocked {
            return false;
        }
        let text = match kind {
            FaultKind::Partition | FaultKind::OnewayPartition => {
                let oneway = kind == FaultKind::OnewayPartition;
                if oneway {
                    sim.partition_oneway("server", Self::host_name(host));
                } else {
                    sim.partition("server", Self::host_name(host));
                }
                self.active.push(Active::Partition { host, oneway, until_ms });
                format!("{} server / clients-{host} for {duration_ms} ms", kind.name())
            }
            FaultKind::Clog => {
                sim.hold("server", Self::host_name(host));
                self.active.push(Active::Clog { host, until_ms });
                format!("clog server / clients-{host} for {duration_ms} ms")
            }
            FaultKind::Latency => {
                let max_ms = 1 + self.below(200);
                sim.set_max_message_latency(Duration::from_millis(max_ms));
                format!("latency up to {max_ms} ms")
            }
            FaultKind::Kill => {
                let index = self.below(self.clients as u64) as usize;
                world.with_client(index, |client| client.kill_connection());
                format!("kill c{index}'s connection")
            }
            FaultKind::Storm => {
                world.for_each_client(|client| client.kill_connection());
                "reconnect storm: every connection killed".to_string()
            }
            FaultKind::Stall => {
                let index = self.below(self.clients as u64) as usize;
                world.with_client(index, |client| client.stall(Duration::from_millis(duration_ms)));
                format!("stall c{index} for {duration_ms} ms")
            }
            FaultKind::PowerLoss => {
                self.armed_at_ms = Some(now_ms);
                if self.below(4) == 0 {
                    world.disk.cut();
                    "power loss between writes".to_string()
                } else {
                    let writes_left = self.below(12);
                    world.disk.arm(writes_left);
                    format!("power loss armed: it strikes {writes_left} writes from now")
                }
            }
            FaultKind::Crash => {
                self.crash_server(sim, slot, now_ms);
                "crash the server".to_string()
            }
            FaultKind::Hostile => {
                let Some(hostile) = world.hostile else { return false };
                // Round the attacks from a seeded start, so that a short run still meets most.
                let start = *self.hostile_start.get_or_insert_with(|| self.rng.next_u64() as usize);
                let attack = Attack::ALL[start.wrapping_add(self.hostile_count) % Attack::ALL.len()];
                let as_client = self.below(self.clients as u64) as usize;
                let index = HOSTILE_INDEX_BASE + self.hostile_count;
                self.hostile_count += 1;
                let path = world.socket_path(as_client);
                hostile.order(Order { attack, index, path, seed: self.rng.next_u64() });
                format!(
                    "hostile connection h{} ({}) as c{as_client}'s user",
                    self.hostile_count - 1,
                    attack.name()
                )
            }
        };
        world.note(now_ms, &format!("fault: {text}"));
        true
    }

    /// Kills the server host; it restarts 0.2 to 3.2 s later (see `expire`).
    fn crash_server(&mut self, sim: &mut turmoil::Sim<'_>, slot: &ServerSlot, now_ms: u64) {
        slot.borrow_mut().take();
        sim.crash("server");
        let until_ms = now_ms + 200 + self.below(3_000);
        self.active.push(Active::Crashed { until_ms });
    }

    fn crashed(&self) -> bool {
        self.active.iter().any(|a| matches!(a, Active::Crashed { .. }))
    }

    /// Once the disk's power is out (an armed loss struck, or it was cut), kills the server at
    /// once, before it can answer from a disk that no longer takes writes, and applies the loss
    /// to the disk; the server restarts like a crashed one. Called at every step of the safety
    /// phase; an armed loss that meets no write within [`ARMED_MS_MAX`] cuts the power between
    /// writes.
    pub fn watch_power(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        slot: &ServerSlot,
        world: &World<'_>,
        now_ms: u64,
    ) {
        let Some(armed_at_ms) = self.armed_at_ms else { return };
        if !world.disk.is_out() {
            if now_ms < armed_at_ms + ARMED_MS_MAX {
                return;
            }
            world.disk.cut();
        }
        self.armed_at_ms = None;
        if !self.crashed() {
            self.crash_server(sim, slot, now_ms);
        }
        let loss = world.disk.restore(self.rng.next_u64());
        let torn = match loss.torn_bytes {
            Some(bytes) => format!(", the interrupted write torn after {bytes} bytes"),
            None => String::new(),
        };
        let text = format!(
            "power lost: the server is down; of its unsynced writes {} reached the disk and {} did not{torn}",
            loss.kept, loss.dropped
        );
        world.note(now_ms, &format!("fault: {text}"));
    }

    fn expire(&mut self, sim: &mut turmoil::Sim<'_>, world: &World<'_>, now_ms: u64, all: bool) {
        let (done, kept): (Vec<Active>, Vec<Active>) =
            std::mem::take(&mut self.active).into_iter().partition(|a| {
                all || match a {
                    Active::Partition { until_ms, .. }
                    | Active::Clog { until_ms, .. }
                    | Active::Crashed { until_ms } => *until_ms <= now_ms,
                }
            });
        self.active = kept;
        for fault in done {
            let text = match fault {
                Active::Partition { host, oneway, .. } => {
                    if oneway {
                        sim.repair_oneway("server", Self::host_name(host));
                    } else {
                        sim.repair("server", Self::host_name(host));
                    }
                    // A real TCP stack either retransmits what a partition dropped or gives up
                    // and resets; it never lets a stream go on with a gap. turmoil drops the
                    // segments and keeps the stream, so the connections that crossed the
                    // partition are reset when it heals, as a stack that gave up would.
                    world.reset_host(host);
                    format!("repair server / clients-{host}, resetting its connections")
                }
                Active::Clog { host, .. } => {
                    sim.release("server", Self::host_name(host));
                    format!("release server / clients-{host}")
                }
                Active::Crashed { .. } => {
                    sim.bounce("server");
                    "restart the server".to_string()
                }
            };
            world.note(now_ms, &format!("fault over: {text}"));
        }
    }

    /// Ends every fault: the liveness phase starts from a healthy network, a running server and
    /// clients that read their sockets (a stall ordered late in the fault phase would otherwise
    /// outlast it).
    pub fn heal(&mut self, sim: &mut turmoil::Sim<'_>, slot: &ServerSlot, world: &World<'_>, now_ms: u64) {
        if world.disk.is_out() {
            self.watch_power(sim, slot, world, now_ms);
        }
        world.disk.disarm();
        self.armed_at_ms = None;
        self.expire(sim, world, now_ms, true);
        world.for_each_client(|client| client.resume());
        sim.set_max_message_latency(Duration::from_millis(5));
    }
}
