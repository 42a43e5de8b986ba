//! `roomlab mutants`: plants each bug in turn and runs the conformance suite and a simulation sweep
//! against it, then prints the kill matrix.

use crate::embedded::Embedded;
use anyhow::{bail, Context, Result};
use roomlab_protocol::Mutant;
use roomlab_sim::{repro_line, run, RunConfig, Scenario};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `roomlab mutants`.
#[derive(clap::Args)]
pub struct MutantsArgs {
    /// Only these mutants (by name); all when absent.
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Seeds the simulation tries per mutant before the mutant counts as surviving it.
    #[arg(long, default_value_t = 200)]
    seeds: u64,
    /// Simulation runs at once.
    #[arg(long, default_value_t = crate::sim_command::default_jobs())]
    jobs: usize,
    /// Write the kill matrix as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// List the mutants and exit.
    #[arg(long)]
    list: bool,
    /// Leave out the simulation column.
    #[arg(long)]
    no_sim: bool,
    /// Leave out the conformance column.
    #[arg(long)]
    no_conform: bool,
    /// Runs the shrink of each simulation kill may take (0: do not shrink).
    #[arg(long, default_value_t = 300)]
    shrink_runs: usize,
    /// Where the shrunk scenarios go.
    #[arg(long, value_name = "DIR", default_value = "target/mutants")]
    shrink_dir: PathBuf,
}

/// The scenario whose workload reaches the code a mutant breaks.
pub fn scenario_for(mutant: Mutant) -> &'static str {
    match mutant {
        Mutant::SkipResubscribe | Mutant::ReplayAppliedTwice => "reconnect-storm",
        Mutant::NoDocDeletedPush | Mutant::RestoreBumpsSeq | Mutant::SysDocRemovable => "delete-restore-race",
        Mutant::PurgeKeepsUsage | Mutant::QuotaCheckedBeforeWrite => "quota-pressure",
        Mutant::QuotaEdgeRefused => "quota-pressure",
        Mutant::AckBeforeCommit | Mutant::CommitErrorIgnored => "crash-recovery",
        Mutant::InternalKeepsConnection => "crash-recovery",
        Mutant::AckBeforeSync => "power-loss",
        Mutant::CreateDeletedAnswersExists => "quota-pressure",
        Mutant::ListTiesByArrival => "fracdex-contention",
        Mutant::BucketGuardIgnored => "bucket-contracts",
        Mutant::OwnerReadByAdmin | Mutant::ViewerCanWrite => "swarm",
        Mutant::ViewerYjsApplied => "yjs-typing",
    }
}

/// What the conformance suite did to one mutant.
#[derive(Debug, Clone, Serialize)]
pub struct ConformKill {
    /// Whether a case failed.
    pub killed: bool,
    /// The cases that failed (at most five).
    pub cases: Vec<String>,
    /// Cases that failed in all.
    pub failed: usize,
    /// Wall time of the run.
    pub wall_ms: u64,
}

/// What the simulation did to one mutant.
#[derive(Debug, Clone, Serialize)]
pub struct SimKill {
    /// The scenario swept.
    pub scenario: String,
    /// Whether a seed failed.
    pub killed: bool,
    /// Seeds run (up to and including the first failure).
    pub seeds_run: u64,
    /// The first failing seed.
    pub seed: Option<u64>,
    /// The first invariant it broke.
    pub failure: Option<String>,
    /// The line that reproduces the kill.
    pub repro: Option<String>,
    /// Wall time of the sweep.
    pub wall_ms: u64,
    /// The kill shrunk: the smallest failing run found.
    pub shrunk: Option<ShrunkKill>,
}

/// A simulation kill, shrunk.
#[derive(Debug, Clone, Serialize)]
pub struct ShrunkKill {
    /// Client operations of the smallest failing run.
    pub operations: u64,
    /// Its clients.
    pub clients: usize,
    /// Its seconds of faults.
    pub safety_s: u64,
    /// The line that reproduces it (with the scenario file written by the shrink).
    pub repro: String,
    /// Runs the shrink took.
    pub runs: usize,
    /// Wall time of the shrink.
    pub wall_ms: u64,
}

/// One row of the kill matrix.
#[derive(Debug, Clone, Serialize)]
pub struct KillRow {
    /// The mutant's name.
    pub mutant: String,
    /// The source document whose rule it breaks.
    pub source: char,
    /// The conformance suite's verdict; `None` for client mutants, which a server suite cannot see.
    pub conformance: Option<ConformKill>,
    /// The simulation's verdict; `None` when left out.
    pub simulation: Option<SimKill>,
}

impl KillRow {
    /// Whether every column that should kill the mutant did.
    pub fn killed(&self) -> bool {
        self.conformance.as_ref().is_none_or(|c| c.killed)
            && self.simulation.as_ref().is_none_or(|s| s.killed)
    }
}

/// Runs the conformance suite against the embedded server with `mutant` planted.
pub fn conform_against(mutant: Mutant) -> Result<ConformKill> {
    let cases = roomlab_conformance::cases().context("the built-in cases")?;
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    let report = runtime.block_on(async {
        let embedded = Embedded::start(Some(mutant)).await?;
        let report = roomlab_conformance::run(&embedded.target, &cases, 8, &|_| {}).await;
        embedded.stop().await;
        anyhow::Ok(report)
    })?;
    let failed: Vec<String> =
        report.cases.iter().filter(|c| c.result.is_bad()).map(|c| c.id.clone()).collect();
    Ok(ConformKill {
        killed: !failed.is_empty(),
        failed: failed.len(),
        cases: failed.into_iter().take(5).collect(),
        wall_ms: started.elapsed().as_millis() as u64,
    })
}

/// Sweeps seeds `0..seeds` of the mutant's scenario, `jobs` at a time, until one fails.
pub fn simulate_against(mutant: Mutant, seeds: u64, jobs: usize) -> Result<SimKill> {
    let scenario = Scenario::load(scenario_for(mutant))?;
    let started = Instant::now();
    let mut seeds_run = 0;
    for batch in (0..seeds).collect::<Vec<u64>>().chunks(jobs.max(1)) {
        let reports: Vec<roomlab_sim::Report> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&seed| {
                    // The engine's self-checks stay off: the kill matrix measures the oracle.
                    let config = RunConfig {
                        mutant: Some(mutant),
                        engine_checks: false,
                        ..RunConfig::new(scenario.clone(), seed)
                    };
                    scope.spawn(move || run(&config))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a simulation thread")).collect()
        });
        seeds_run += batch.len() as u64;
        if let Some(report) = reports.iter().find(|r| !r.passed()) {
            return Ok(SimKill {
                scenario: scenario.name.clone(),
                killed: true,
                seeds_run,
                seed: Some(report.seed),
                failure: report.failures.first().cloned(),
                repro: Some(repro_line(&scenario.name, report.seed, Some(mutant))),
                wall_ms: started.elapsed().as_millis() as u64,
                shrunk: None,
            });
        }
    }
    Ok(SimKill {
        scenario: scenario.name.clone(),
        killed: false,
        seeds_run,
        seed: None,
        failure: None,
        repro: None,
        wall_ms: started.elapsed().as_millis() as u64,
        shrunk: None,
    })
}

/// Shrinks a simulation kill and writes the smallest failing scenario into `dir`.
pub fn shrink_kill(
    mutant: Mutant,
    kill: &SimKill,
    runs_max: usize,
    dir: &std::path::Path,
) -> Result<Option<ShrunkKill>> {
    let Some(seed) = kill.seed else { return Ok(None) };
    let scenario = Scenario::load(&kill.scenario)?;
    let started = Instant::now();
    let Some(shrunk) = roomlab_sim::shrink(&scenario, seed, Some(mutant), runs_max, &mut |_, _| {}) else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{mutant}.toml"));
    std::fs::write(&path, toml::to_string(&shrunk.scenario)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(ShrunkKill {
        operations: shrunk.report.operations,
        clients: shrunk.scenario.clients,
        safety_s: shrunk.scenario.safety_s,
        repro: repro_line(&path.display().to_string(), shrunk.seed, Some(mutant)),
        runs: shrunk.runs,
        wall_ms: started.elapsed().as_millis() as u64,
    }))
}

fn selected(only: &[String]) -> Result<Vec<Mutant>> {
    if only.is_empty() {
        return Ok(Mutant::ALL.to_vec());
    }
    only.iter()
        .map(|name| crate::conform_command::mutant(Some(name))?.with_context(|| format!("no mutant {name}")))
        .collect()
}

fn print_row(row: &KillRow) {
    let mutant = Mutant::from_name(&row.mutant);
    let conformance = match &row.conformance {
        None if mutant.is_some_and(Mutant::wire_visible) => "not run".to_string(),
        None => "n/a (a client bug; the suite grades servers)".to_string(),
        Some(c) if c.killed => format!(
            "killed by {}, e.g. {} ({:.1} s)",
            crate::plural(c.failed, "case"),
            c.cases[0],
            c.wall_ms as f64 / 1000.0
        ),
        Some(c) => format!("SURVIVED ({:.1} s)", c.wall_ms as f64 / 1000.0),
    };
    let simulation = match &row.simulation {
        None => "not run".to_string(),
        Some(s) if s.killed => format!(
            "killed: seed {} of {} failed ({} run, {:.1} s)",
            s.seed.unwrap_or(0),
            s.scenario,
            crate::plural(s.seeds_run as usize, "seed"),
            s.wall_ms as f64 / 1000.0
        ),
        Some(s) => {
            format!(
                "SURVIVED {} of {} ({:.1} s)",
                crate::plural(s.seeds_run as usize, "seed"),
                s.scenario,
                s.wall_ms as f64 / 1000.0
            )
        }
    };
    println!("{:<30} {}  conformance: {conformance}", row.mutant, row.source);
    println!("{:<32} simulation:  {simulation}", "");
    if let Some(s) = &row.simulation {
        if let (Some(failure), Some(repro)) = (&s.failure, &s.repro) {
            let short: String = failure.lines().next().unwrap_or_default().chars().take(160).collect();
            println!("{:<32} first failure: {short}", "");
            println!("{:<32} repro: {repro}", "");
        }
        if let Some(shrunk) = &s.shrunk {
            println!(
                "{:<32} shrunk: {} ({}, {} s of faults; {}, {:.1} s)",
                "",
                crate::plural(shrunk.operations as usize, "client operation"),
                crate::plural(shrunk.clients, "client"),
                shrunk.safety_s,
                crate::plural(shrunk.runs, "run"),
                shrunk.wall_ms as f64 / 1000.0
            );
            println!("{:<32} repro: {}", "", shrunk.repro);
        }
    }
}

/// Runs the kill matrix; returns whether every mutant was killed by every column that should.
pub fn run_mutants(args: MutantsArgs) -> Result<bool> {
    if args.list {
        for mutant in Mutant::ALL {
            let layer = if mutant.in_server() { "server" } else { "client" };
            println!(
                "{:<30} {}  {layer:<6}  sim scenario {}",
                mutant.name(),
                mutant.source(),
                scenario_for(mutant)
            );
        }
        return Ok(true);
    }
    if !Mutant::COMPILED {
        bail!("this build has no mutants; run `cargo run --release --features mutants -- mutants`");
    }
    let mut rows = Vec::new();
    for mutant in selected(&args.only)? {
        eprintln!("mutant {mutant}: planting it and running the checks");
        let conformance = match (mutant.wire_visible(), args.no_conform) {
            (true, false) => Some(conform_against(mutant)?),
            _ => None,
        };
        let mut simulation = match args.no_sim {
            false => Some(simulate_against(mutant, args.seeds, args.jobs)?),
            true => None,
        };
        if let Some(kill) = simulation.as_mut().filter(|k| k.killed && args.shrink_runs > 0) {
            kill.shrunk = shrink_kill(mutant, kill, args.shrink_runs, &args.shrink_dir)?;
        }
        let row = KillRow { mutant: mutant.name().into(), source: mutant.source(), conformance, simulation };
        print_row(&row);
        rows.push(row);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let survivors: Vec<&str> = rows.iter().filter(|r| !r.killed()).map(|r| r.mutant.as_str()).collect();
    println!(
        "\n{} mutants, {} killed by every check that should kill them",
        rows.len(),
        rows.len() - survivors.len()
    );
    if !survivors.is_empty() {
        println!("SURVIVED: {}", survivors.join(", "));
    }
    Ok(survivors.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kill matrix as `cargo test` can afford it: the conformance suite against every server
    /// mutant, and the simulation against every mutant within ten seeds (where `roomlab mutants`
    /// allows 200) of its scenario at full length.
    #[test]
    fn every_mutant_is_killed() {
        let mut survivors = Vec::new();
        for mutant in Mutant::ALL.into_iter().filter(|m| m.wire_visible()) {
            let kill = conform_against(mutant).unwrap();
            if !kill.killed {
                survivors.push(format!("{mutant} survived the conformance suite"));
            }
        }
        for mutant in Mutant::ALL {
            let kill = simulate_against(mutant, 10, 2).unwrap();
            if !kill.killed {
                survivors.push(format!("{mutant} survived 10 seeds of {}", kill.scenario));
            }
        }
        assert!(survivors.is_empty(), "{}", survivors.join("\n"));
    }
}
