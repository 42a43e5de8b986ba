//! The deterministic simulation: the real server and many virtual clients inside turmoil, faults,
//! workloads, invariants on snapshots of the world, and one-line repros from a seed.
//!
//! A run depends only on (scenario, seed, commit): turmoil's RNG and epoch are fixed by the seed,
//! every client and the fault driver draw from their own seeded RNG, the server's Yjs ids come from
//! the seed, nothing iterates a hash map, and each run has a fresh data directory.
//!
//! ```no_run
//! use roomlab_sim::{run, RunConfig, Scenario};
//! let report = run(&RunConfig::new(Scenario::load("swarm").unwrap(), 7));
//! assert!(report.passed(), "{:?}", report.failures);
//! ```

mod check;
mod disk;
mod faults;
mod history;
mod hostile;
mod scenario;
mod shrink;
mod trace;
mod workload;
mod world;

pub use faults::FaultKind;
pub use history::RuleCount;
pub use scenario::{Faults, QuotaLimits, Scenario, ScenarioError, Workload, NAMES};
pub use shrink::{shrink, Shrunk, SHRINK_SEEDS_PER_CANDIDATE, SHRINK_STEP_SEEDS_PER_CANDIDATE};
pub use trace::{first_divergence, perfetto_json, Event, FrameCounts};
pub use world::{run, Report, RunConfig};

/// Rules the simulation does not exercise, each with the reason (sim/unexercised.toml).
pub const UNEXERCISED: &str = include_str!("../unexercised.toml");

/// The server-binding MUST rules of docs/PROTOCOL.md that `rules` (a sweep's counts, summed over
/// its runs) never exercised and sim/unexercised.toml does not excuse.
pub fn unexercised_rules(rules: &std::collections::BTreeMap<String, RuleCount>) -> Vec<String> {
    let excused = excused_rules();
    roomlab_oracle::spec_rules()
        .into_iter()
        .filter(|rule| rule.must && !rule.binds_clients)
        .filter(|rule| rules.get(&rule.id).is_none_or(|count| count.exercised == 0))
        .filter(|rule| !excused.contains_key(&rule.id))
        .map(|rule| rule.id)
        .collect()
}

/// The rules sim/unexercised.toml excuses, with the reasons.
pub fn excused_rules() -> std::collections::BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Excused {
        rules: std::collections::BTreeMap<String, String>,
    }
    toml::from_str::<Excused>(UNEXERCISED).expect("sim/unexercised.toml parses").rules
}

/// The line that reproduces a run (of a build with `mutant` planted, if one is named).
pub fn repro_line(scenario: &str, seed: u64, mutant: Option<roomlab_protocol::Mutant>) -> String {
    match mutant {
        Some(mutant) => format!(
            "cargo run --release --features mutants -- sim --scenario {scenario} --seed {seed:#018x} --mutant {mutant}"
        ),
        None => format!("cargo run --release -- sim --scenario {scenario} --seed {seed:#018x}"),
    }
}

/// Runs a seed twice and compares the traces; `Err` names the first diverging event.
pub fn check_determinism(scenario: &Scenario, seed: u64) -> Result<Report, String> {
    let config = RunConfig { keep_trace: true, ..RunConfig::new(scenario.clone(), seed) };
    let (first, second) = (run(&config), run(&config));
    if first.trace_hash == second.trace_hash && first.trace_events == second.trace_events {
        return Ok(first);
    }
    let divergence = match first_divergence(&first.events, &second.events) {
        Some((index, a, b)) => {
            let event = |e: Option<Event>| match e {
                Some(e) => format!("\"{} ms {} {}\"", e.time_ms, e.actor, e.text),
                None => "nothing (its trace ended)".to_string(),
            };
            format!("event {index} differs: first run {}, second run {}", event(a), event(b))
        }
        None => "the traces agree event by event but their hashes differ".to_string(),
    };
    Err(format!(
        "nondeterminism in {} seed {seed:#018x}: traces {:016x} ({} events) and {:016x} ({} events); {divergence}",
        scenario.name, first.trace_hash, first.trace_events, second.trace_hash, second.trace_events
    ))
}
