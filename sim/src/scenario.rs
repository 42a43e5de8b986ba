//! Scenarios: the world's size, the workload mix, the fault profile and the phase lengths, read from
//! TOML. The embedded ones live in `scenarios/*.toml`.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// A simulation scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The scenario's name, as `--scenario` takes it.
    pub name: String,
    /// What it exercises.
    #[serde(default)]
    pub description: String,
    /// Virtual clients.
    #[serde(default = "default_clients")]
    pub clients: usize,
    /// Hosts the clients are spread over (turmoil's cost grows with the square of the hosts).
    #[serde(default = "default_client_hosts")]
    pub client_hosts: usize,
    /// Distinct users; client `i` is user `u{i % users}`. User `u0` is the admin.
    #[serde(default = "default_users")]
    pub users: usize,
    /// Every `viewer_every`-th user (from u1) is a viewer; 0 for none.
    #[serde(default)]
    pub viewer_every: usize,
    /// Every `free_every`-th user (from u1) is on the free plan; 0 for none.
    #[serde(default)]
    pub free_every: usize,
    /// Simulated seconds before the workload starts (every client connects; no faults).
    #[serde(default = "default_setup_s")]
    pub setup_s: u64,
    /// Simulated seconds of workload with faults on (the safety phase).
    #[serde(default = "default_safety_s")]
    pub safety_s: u64,
    /// Simulated seconds the liveness phase may take to converge once faults stop.
    #[serde(default = "default_liveness_s")]
    pub liveness_s: u64,
    /// Operations each client starts per simulated second, on average.
    #[serde(default = "default_rate")]
    pub ops_per_client_per_s: f64,
    /// The most workload steps a client takes in the safety phase, if bounded (a shrunk run
    /// sets it: a prefix of the same steps is the smallest run that still fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_per_client_max: Option<u64>,
    /// Shared task documents (`t0`, `t1`, ...) that records, guards, deletes and staging pick
    /// from; fewer make races on one document likelier.
    #[serde(default = "default_shared_docs")]
    pub shared_docs: u64,
    /// If set, the longest a well-behaved client's mutation may wait for its answer while the
    /// network is healthy (a scenario whose only faults are hostile clients sets it: what they send
    /// must not hold anyone else up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_ms_max: Option<u64>,
    /// Whether every seed draws its own mix: each weight and fault rate is scaled by a random factor
    /// in [0, 2), and about a third are turned off, so that rare combinations get their turn.
    #[serde(default)]
    pub swarm: bool,
    /// Quota limits in bytes.
    #[serde(default)]
    pub quotas: QuotaLimits,
    /// The workload mix.
    #[serde(default)]
    pub workload: Workload,
    /// The fault profile.
    #[serde(default)]
    pub faults: Faults,
}

fn default_clients() -> usize {
    100
}
fn default_client_hosts() -> usize {
    4
}
fn default_users() -> usize {
    20
}
fn default_setup_s() -> u64 {
    3
}
fn default_safety_s() -> u64 {
    30
}
fn default_liveness_s() -> u64 {
    120
}
fn default_shared_docs() -> u64 {
    40
}
fn default_rate() -> f64 {
    1.0
}

/// Quota limits in bytes, per plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaLimits {
    /// The free plan's limit.
    pub free_bytes: u64,
    /// The pro plan's base limit.
    pub pro_bytes: u64,
    /// Each add-on's addition.
    pub addon_bytes: u64,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        QuotaLimits { free_bytes: 20_000, pro_bytes: 60_000, addon_bytes: 20_000 }
    }
}

/// Relative weights of the kinds of operation a client picks from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Create, put and patch documents of a small shared id space.
    pub records: u32,
    /// Subscribe to and drop live queries and document subscriptions.
    pub queries: u32,
    /// Writes guarded by the sequence the client last saw (`if_seq`).
    pub guards: u32,
    /// Insert, move and remove list items at contended spots of one board.
    pub lists: u32,
    /// Remove, restore and purge, racing with everything else.
    pub deletes: u32,
    /// Large writes near the writer's quota.
    pub quota: u32,
    /// Bind, set and delete JSON buckets with two contract versions.
    pub buckets: u32,
    /// Documents only their owner may read.
    pub private: u32,
    /// Staged sessions committed atomically.
    pub staging: u32,
    /// Typing into shared rich-text fields (Yjs); viewers type too, and must be refused.
    pub yjs: u32,
    /// Asset uploads, deletes and subscriptions, and now and then a whole asset bucket deleted.
    pub assets: u32,
}

impl Workload {
    /// The weights in the order [`Workload::KINDS`] names them.
    pub fn weights(&self) -> [u32; 11] {
        [
            self.records,
            self.queries,
            self.guards,
            self.lists,
            self.deletes,
            self.quota,
            self.buckets,
            self.private,
            self.staging,
            self.yjs,
            self.assets,
        ]
    }

    fn weights_mut(&mut self) -> [&mut u32; 11] {
        [
            &mut self.records,
            &mut self.queries,
            &mut self.guards,
            &mut self.lists,
            &mut self.deletes,
            &mut self.quota,
            &mut self.buckets,
            &mut self.private,
            &mut self.staging,
            &mut self.yjs,
            &mut self.assets,
        ]
    }

    /// Turns off the kind at `index` of [`Workload::KINDS`].
    pub fn turn_off(&mut self, index: usize) {
        *self.weights_mut()[index] = 0;
    }

    /// One seed's mix in swarm mode: about a third of the kinds off, the rest weighted 0x to 2x
    /// (in tenths, so small weights survive), and never nothing at all.
    pub fn swarm_draw(&self, rng: &mut dyn rand_chacha::rand_core::RngCore) -> Workload {
        let mut drawn = *self;
        for weight in drawn.weights_mut() {
            let draw = rng.next_u64() % 300;
            *weight = if draw < 100 { 0 } else { (*weight * 10 * (draw - 100) as u32).div_ceil(100) };
        }
        if drawn.weights().iter().all(|w| *w == 0) {
            drawn = self.scaled(10);
        }
        drawn
    }

    fn scaled(&self, factor: u32) -> Workload {
        let mut scaled = *self;
        for weight in scaled.weights_mut() {
            *weight *= factor;
        }
        scaled
    }

    /// The kinds of operation, as the TOML names them.
    pub const KINDS: [&'static str; 11] = [
        "records", "queries", "guards", "lists", "deletes", "quota", "buckets", "private", "staging", "yjs",
        "assets",
    ];
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            records: 4,
            queries: 2,
            guards: 1,
            lists: 2,
            deletes: 2,
            quota: 1,
            buckets: 1,
            private: 1,
            staging: 1,
            yjs: 1,
            assets: 1,
        }
    }
}

/// Fault rates: expected occurrences per simulated minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Both-way partitions between the server and one client host.
    pub partitions: f64,
    /// One-way partitions.
    pub oneway_partitions: f64,
    /// Links held (messages queued, not lost), then released.
    pub clogs: f64,
    /// Changes of the network's latency range.
    pub latency: f64,
    /// Single connections dropped abruptly.
    pub kills: f64,
    /// Server crashes, each followed by a restart.
    pub crashes: f64,
    /// Power losses: the server dies with its disk, which keeps what was synced and a seeded part
    /// of what was not (sim/src/disk.rs), then restarts. Each loss strikes at a write a few writes
    /// ahead (tearing it) or, one time in four, between writes.
    pub power_losses: f64,
    /// Clients that stop reading for a while (slow consumers).
    pub stalls: f64,
    /// Reconnect storms: every client's connection dropped at once.
    pub storms: f64,
    /// BUGGIFY fault points inside the server (a room stalling before it commits, a broadcast
    /// batch reordered, a silence timeout firing early): the percent of opportunities at which each
    /// point a seed turns on fires; 0 turns them all off.
    pub buggify: f64,
    /// Hostile connections (malformed, oversized, deeply nested and invalid UTF-8 frames, Yjs
    /// bombs, boundary mutation ids, unread floods, silence), each one attack.
    pub hostile: f64,
    /// The BUGGIFY points every seed turns on, by name without the `buggify:` prefix (`room-stall`,
    /// `broadcast-reorder`, `silence-early`, `storage-fails`, `ack-lost`); absent, each seed draws
    /// its own. A shrink pins the points that fired in the failing run, so that its later, smaller
    /// runs keep them whatever the seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buggify_points: Option<Vec<String>>,
}

/// The server's fault point named `name` (without the `buggify:` prefix).
pub fn fault_point(name: &str) -> Option<roomlab_server::FaultPoint> {
    roomlab_server::FaultPoint::ALL
        .into_iter()
        .find(|point| point.name().strip_prefix("buggify:") == Some(name))
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            partitions: 2.0,
            oneway_partitions: 1.0,
            clogs: 2.0,
            latency: 2.0,
            kills: 10.0,
            crashes: 1.0,
            power_losses: 0.0,
            stalls: 2.0,
            storms: 0.5,
            buggify: 0.0,
            hostile: 0.0,
            buggify_points: None,
        }
    }
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// No embedded scenario has this name and no file has this path.
    #[error("no scenario named {0:?} (embedded: {names}); give a name or a path to a .toml file", names = NAMES.join(", "))]
    Unknown(String),
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The TOML is not a scenario.
    #[error("scenario {path}: {source}")]
    Parse {
        /// Where it came from.
        path: String,
        /// What is wrong.
        source: toml::de::Error,
    },
    /// The values are out of range.
    #[error("scenario {0}: {1}")]
    Invalid(String, String),
}

// EMBEDDED and NAMES: every scenarios/NAME.toml (sim/build.rs).
include!(concat!(env!("OUT_DIR"), "/scenarios.rs"));

impl Scenario {
    /// An embedded scenario by name, or a scenario file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        if let Some((name, text)) = EMBEDDED.iter().find(|(name, _)| *name == name_or_path) {
            return Scenario::parse(text, name);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(ScenarioError::Unknown(name_or_path.to_string()));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Read { path: name_or_path.to_string(), source })?;
        Scenario::parse(&text, name_or_path)
    }

    /// Parses and checks a scenario's TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text)
            .map_err(|source| ScenarioError::Parse { path: origin.to_string(), source })?;
        let invalid = |why: &str| Err(ScenarioError::Invalid(origin.to_string(), why.to_string()));
        if scenario.clients == 0 || scenario.client_hosts == 0 || scenario.users == 0 {
            return invalid("clients, client_hosts and users must be at least 1");
        }
        if scenario.client_hosts > scenario.clients {
            return invalid("more client hosts than clients");
        }
        if scenario.shared_docs == 0 {
            return invalid("shared_docs must be at least 1");
        }
        if !(scenario.ops_per_client_per_s > 0.0 && scenario.ops_per_client_per_s <= 100.0) {
            return invalid("ops_per_client_per_s must be in (0, 100]");
        }
        let points = scenario.faults.buggify_points.iter().flatten();
        if let Some(unknown) = points.clone().find(|name| fault_point(name).is_none()) {
            return invalid(&format!("unknown BUGGIFY point {unknown:?}"));
        }
        if scenario.faults.buggify_points.as_ref().is_some_and(|points| points.is_empty()) {
            return invalid(
                "buggify_points is empty (leave it out to let each seed draw, or set buggify = 0)",
            );
        }
        let total: u64 = scenario.workload.weights().iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return invalid("the workload has no weight");
        }
        Ok(scenario)
    }

    /// The scenario as TOML, as `--shrink` writes it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("scenarios serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_scenario_parses_and_bad_ones_are_explained() {
        for name in NAMES {
            let scenario = Scenario::load(name).unwrap();
            assert_eq!(&scenario.name, name);
            assert_eq!(Scenario::parse(&scenario.to_toml(), name).unwrap(), scenario, "round trip of {name}");
        }
        let check = |text: &str, expected: &str| {
            let error = Scenario::parse(text, "x.toml").unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        };
        check("name = \"a\"\nclients = 0", "at least 1");
        check("name = \"a\"\ncolour = 1", "unknown field");
        check(
            "name = \"a\"\n[faults]\nbuggify_points = [\"ack-lots\"]",
            "unknown BUGGIFY point \"ack-lots\"",
        );
        check("name = \"a\"\n[workload]\nrecords = 0\nqueries = 0\nguards = 0\nlists = 0\ndeletes = 0\nquota = 0\nbuckets = 0\nprivate = 0\nstaging = 0\nyjs = 0\nassets = 0", "no weight");
        assert!(Scenario::load("nope").unwrap_err().to_string().contains("swarm, yjs-typing"));
    }
}
