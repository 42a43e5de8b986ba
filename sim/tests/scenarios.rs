//! Every embedded scenario over many seeds, a determinism check, the end-state summaries of a fixed
//! seed (insta), and the regression seeds of scenarios/regressions.toml.
//!
//! `ROOMLAB_SIM_SEEDS` sets the seeds per scenario (default 30) and `ROOMLAB_SIM_SAFETY_S` the
//! simulated seconds of faults per seed (default 15, half a scenario's own length), to keep the
//! whole `cargo test --workspace` under half an hour on two cores; `roomlab sim` runs scenarios at
//! full length. Each failure prints its repro line.

use roomlab_sim::{check_determinism, repro_line, run, FaultKind, Report, RunConfig, Scenario, NAMES};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// The allocator `roomlab sim` runs with (see src/main.rs), so these runs cost what the command's do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn seeds() -> u64 {
    std::env::var("ROOMLAB_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30)
}

fn failure_text(report: &Report) -> String {
    let mut text = format!("{} seed {:#018x} failed:\n", report.scenario, report.seed);
    for failure in &report.failures {
        let _ = writeln!(text, "  - {failure}");
    }
    let _ =
        write!(text, "repro: {} --safety-s {}", repro_line(&report.scenario, report.seed, None), safety_s());
    text
}

fn safety_s() -> u64 {
    std::env::var("ROOMLAB_SIM_SAFETY_S").ok().and_then(|s| s.parse().ok()).unwrap_or(15)
}

/// Runs the seeds of a scenario: the repro line of every failing seed, or how often each fault kind
/// (BUGGIFY points included) fired over all the seeds that enabled it.
fn sweep(name: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut scenario = Scenario::load(name).unwrap();
    scenario.safety_s = scenario.safety_s.min(safety_s());
    let mut fired = BTreeMap::new();
    let mut failed = Vec::new();
    for seed in 0..seeds() {
        let report = run(&RunConfig::new(scenario.clone(), seed));
        for (kind, count) in &report.faults {
            *fired.entry(kind.clone()).or_insert(0) += count;
        }
        if !report.passed() {
            failed.push(failure_text(&report));
        }
    }
    match failed.is_empty() {
        true => Ok(fired),
        false => Err(failed.join("\n\n")),
    }
}

/// The fault kinds of `scenario` that a sweep of it can be expected to fire ten times or more (a
/// swarm seed turns each kind off one time in three and runs the rest at half to twice the rate on
/// average 1x), yet never fired: a dead knob. The odds that a live one stays silent are below e^-10.
fn dead_knobs(scenario: &Scenario, fired: &BTreeMap<String, u64>) -> Vec<String> {
    let on = if scenario.swarm { 2.0 / 3.0 } else { 1.0 };
    let minutes = scenario.safety_s.min(safety_s()) as f64 / 60.0 * seeds() as f64 * on;
    let mut dead: Vec<String> = FaultKind::ALL
        .into_iter()
        .filter(|kind| kind.rate(&scenario.faults) * minutes >= 10.0)
        .filter(|kind| fired.get(kind.name()).copied().unwrap_or(0) == 0)
        .map(|kind| kind.name().to_string())
        .collect();
    if scenario.faults.buggify > 0.0
        && !fired.iter().any(|(kind, count)| kind.starts_with("buggify:") && *count > 0)
    {
        dead.push("every BUGGIFY point".to_string());
    }
    dead
}

/// Every embedded scenario (one per file of scenarios/), swept on two threads: every seed passes,
/// and no fault kind the scenario turns on is a dead knob.
#[test]
fn every_scenario() {
    let queue = Mutex::new(NAMES.to_vec());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while let Some(name) = queue.lock().unwrap().pop() {
                    let failure = match sweep(name) {
                        Err(failed) => Some(failed),
                        Ok(fired) => {
                            let dead = dead_knobs(&Scenario::load(name).unwrap(), &fired);
                            (!dead.is_empty()).then(|| format!("{name}: never fired: {dead:?} ({fired:?})"))
                        }
                    };
                    failures.lock().unwrap().extend(failure);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Ten seeds of the swarm (at the sweep's length of faults), each run twice: the traces (every
/// frame, fault and check with its simulated time) must be identical.
/// One seed of the hostile connections and three of the power losses, too.
#[test]
fn runs_are_deterministic() {
    for (name, seeds) in [("swarm", 100..110), ("hostile", 3..4), ("power-loss", 3..6)] {
        let mut scenario = Scenario::load(name).unwrap();
        scenario.safety_s = scenario.safety_s.min(safety_s());
        for seed in seeds {
            if let Err(divergence) = check_determinism(&scenario, seed) {
                panic!("{name} seed {seed}: {divergence}");
            }
        }
    }
}

/// Seeds that once ran differently from one run to the next, each with the fault length it needs;
/// each is run twice and must leave identical traces. Swarm seed 44 at 15 s of faults stalls a
/// client whose stall end was read from the wall clock (the fault injector calls `stall` outside
/// the client's runtime), so the stall ended at a different simulated time in every run.
const ONCE_NONDETERMINISTIC: &[(&str, u64, u64)] = &[("swarm", 44, 15)];

#[test]
fn once_nondeterministic_seeds_stay_deterministic() {
    for &(name, seed, safety_s) in ONCE_NONDETERMINISTIC {
        let mut scenario = Scenario::load(name).unwrap();
        scenario.safety_s = safety_s;
        if let Err(divergence) = check_determinism(&scenario, seed) {
            panic!("{name} seed {seed} at {safety_s} s of faults: {divergence}");
        }
    }
}

/// What one fixed seed of each scenario ends with; any change to the protocol, the engine, the
/// client or the workload shows up here for review.
#[test]
fn end_state_summaries() {
    let mut summary = String::new();
    for name in NAMES {
        let scenario = Scenario::load(name).unwrap();
        let report = run(&RunConfig::new(scenario, 7));
        assert!(report.passed(), "{}", failure_text(&report));
        let _ = writeln!(
            summary,
            "{name}: seq {}, live documents {}, operations {}, acks {}, refused {:?}, faults {:?}, simulated {} ms, trace {:016x} ({} events)",
            report.final_seq,
            report.live_docs,
            report.operations,
            report.acks,
            report.refusals,
            report.faults,
            report.sim_ms,
            report.trace_hash,
            report.trace_events
        );
    }
    insta::assert_snapshot!(summary);
}

#[derive(serde::Deserialize)]
struct Regressions {
    regression: Vec<Regression>,
}

#[derive(serde::Deserialize)]
struct Regression {
    scenario: String,
    seed: u64,
    clients: Option<usize>,
    safety_s: Option<u64>,
    found: String,
}

#[test]
fn regression_seeds_stay_fixed() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/regressions.toml"))
        .unwrap();
    let regressions: Regressions = toml::from_str(&text).unwrap();
    assert!(!regressions.regression.is_empty());
    for regression in regressions.regression {
        // An embedded scenario by name, or a (shrunk) scenario file under scenarios/.
        let name = match regression.scenario.ends_with(".toml") {
            true => format!("{}/../scenarios/{}", env!("CARGO_MANIFEST_DIR"), regression.scenario),
            false => regression.scenario.clone(),
        };
        let mut scenario = Scenario::load(&name).unwrap();
        if let Some(clients) = regression.clients {
            scenario.clients = clients;
        }
        if let Some(safety_s) = regression.safety_s {
            scenario.safety_s = safety_s;
        }
        let report = run(&RunConfig::new(scenario, regression.seed));
        assert!(report.passed(), "regression ({}) is back:\n{}", regression.found, failure_text(&report));
    }
}

/// Every server-binding MUST rule of docs/PROTOCOL.md is exercised by a short sweep of every
/// scenario (the oracle decided frames under it and the clients received them), or
/// sim/unexercised.toml says why not.
#[test]
fn every_server_rule_is_exercised_or_excused() {
    let mut rules = std::collections::BTreeMap::new();
    for name in NAMES {
        let mut scenario = Scenario::load(name).unwrap();
        scenario.safety_s = scenario.safety_s.min(10);
        for seed in 0..3 {
            let report = run(&RunConfig::new(scenario.clone(), seed));
            assert!(report.passed(), "{}", failure_text(&report));
            for (rule, count) in report.rules {
                let total: &mut roomlab_sim::RuleCount = rules.entry(rule).or_default();
                total.exercised += count.exercised;
                total.checked += count.checked;
            }
        }
    }
    let missing = roomlab_sim::unexercised_rules(&rules);
    assert!(
        missing.is_empty(),
        "MUST rules no run exercised, and sim/unexercised.toml does not excuse: {missing:?}"
    );
    let known: std::collections::BTreeSet<String> =
        roomlab_oracle::spec_rules().into_iter().map(|rule| rule.id).collect();
    for excused in roomlab_sim::excused_rules().keys() {
        assert!(
            known.contains(excused),
            "sim/unexercised.toml names {excused}, which docs/PROTOCOL.md does not have"
        );
    }
}
