//! `roomlab sim`: sweeps seeds of a scenario over worker threads (one simulation per thread at a
//! time), shows progress, prints a summary table and a repro line per failure.

use anyhow::{bail, Context, Result};
use roomlab_protocol::Mutant;
use roomlab_sim::{check_determinism, perfetto_json, repro_line, run, Report, RunConfig, Scenario};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The options of `roomlab sim`.
#[derive(clap::Args)]
pub struct SimArgs {
    /// An embedded scenario (swarm, reconnect-storm, fracdex-contention, delete-restore-race,
    /// quota-pressure, bucket-contracts, yjs-typing, crash-recovery) or the path of a scenario
    /// file.
    #[arg(long, default_value = "swarm")]
    scenario: String,
    /// How many seeds (0..N), or a range A..B.
    #[arg(long, default_value = "100", conflicts_with = "seed")]
    seeds: String,
    /// One seed, decimal or 0x-hex: what a repro line gives.
    #[arg(long, value_parser = parse_seed)]
    seed: Option<u64>,
    /// Virtual clients, instead of the scenario's number.
    #[arg(long)]
    clients: Option<usize>,
    /// Simulated seconds of the faulty phase, instead of the scenario's.
    #[arg(long)]
    safety_s: Option<u64>,
    /// Worker threads (each runs one simulation at a time).
    #[arg(long, default_value_t = default_jobs())]
    jobs: usize,
    /// Run only shard K of N of the seeds (1-based), for CI matrices and indexed jobs.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Write every run's report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Merge the JSON reports of several shards into one summary instead of running anything.
    #[arg(long, num_args = 1.., conflicts_with_all = ["seed", "json"])]
    merge: Vec<PathBuf>,
    /// Run every seed twice and fail on any difference between the two traces.
    #[arg(long)]
    check_determinism: bool,
    /// Write a Chrome / Perfetto trace-event JSON of the run (one seed only).
    #[arg(long, requires = "seed")]
    trace: Option<PathBuf>,
    /// Plant this bug in the server or the clients (builds with --features mutants).
    #[arg(long, value_name = "NAME")]
    mutant: Option<String>,
    /// Shrink the failing run of --seed: fewer clients, a shorter safety phase, fewer operations,
    /// workload and fault kinds turned off; writes the smallest failing scenario to --shrink-out.
    #[arg(long, requires = "seed")]
    shrink: bool,
    /// Runs the shrink may take.
    #[arg(long, default_value_t = 200)]
    shrink_runs: usize,
    /// Where the shrunk scenario goes (default: shrunk-<scenario>-<seed>.toml).
    #[arg(long, value_name = "FILE")]
    shrink_out: Option<PathBuf>,
}

pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn parse_seed(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a seed: {e}"))
}

fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let (k, n) = text.split_once('/').ok_or("a shard is K/N, like 2/8")?;
    let (k, n): (usize, usize) =
        (k.parse().map_err(|_| "K is not a number")?, n.parse().map_err(|_| "N is not a number")?);
    if n == 0 || k == 0 || k > n {
        return Err(format!("shard {k}/{n}: K must be in 1..=N"));
    }
    Ok((k, n))
}

fn seeds_of(args: &SimArgs) -> Result<Vec<u64>> {
    let mut seeds: Vec<u64> = match (args.seed, args.seeds.split_once("..")) {
        (Some(seed), _) => vec![seed],
        (None, Some((a, b))) => {
            let (a, b) =
                (parse_seed(a).map_err(anyhow::Error::msg)?, parse_seed(b).map_err(anyhow::Error::msg)?);
            if a >= b {
                bail!("the seed range {a}..{b} is empty");
            }
            (a..b).collect()
        }
        (None, None) => (0..parse_seed(&args.seeds).map_err(anyhow::Error::msg)?).collect(),
    };
    if let Some((k, n)) = args.shard {
        seeds = seeds.into_iter().enumerate().filter(|(i, _)| i % n == k - 1).map(|(_, seed)| seed).collect();
    }
    Ok(seeds)
}

/// Runs `roomlab sim`; returns whether every run passed.
pub fn run_sim(args: SimArgs) -> Result<bool> {
    let mutant = crate::conform_command::mutant(args.mutant.as_deref())?;
    if !args.merge.is_empty() {
        let mut reports = Vec::new();
        for path in &args.merge {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let mut shard: Vec<Report> =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            reports.append(&mut shard);
        }
        reports.sort_by_key(|r| (r.scenario.clone(), r.seed));
        return Ok(summarize(&reports, 0, mutant, None));
    }
    let mut scenario = Scenario::load(&args.scenario)?;
    if let Some(clients) = args.clients {
        scenario.clients = clients;
        scenario.client_hosts = scenario.client_hosts.min(clients);
    }
    if let Some(safety_s) = args.safety_s {
        scenario.safety_s = safety_s;
    }
    if args.shrink {
        let seed = args.seed.expect("clap requires --seed with --shrink");
        return run_shrink(&scenario, seed, mutant, &args);
    }
    let seeds = seeds_of(&args)?;
    if seeds.is_empty() {
        bail!("no seeds to run (is the shard larger than the sweep?)");
    }
    eprintln!(
        "roomlab sim: scenario {} ({} clients on {} hosts, {} s of faults), {} seed(s), {} job(s){}",
        scenario.name,
        scenario.clients,
        scenario.client_hosts,
        scenario.safety_s,
        seeds.len(),
        args.jobs.max(1),
        if args.check_determinism { ", each run twice" } else { "" }
    );
    let started = Instant::now();
    let reports = sweep(&scenario, &seeds, mutant, &args)?;
    let wall_ms = started.elapsed().as_millis() as u64;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("reports written to {}", path.display());
    }
    Ok(summarize(&reports, wall_ms, mutant, Some(&args.scenario)))
}

/// Shrinks a failing seed and writes the smallest failing scenario; false when it failed (the
/// expected case), true when the seed passed and there was nothing to shrink.
fn run_shrink(scenario: &Scenario, seed: u64, mutant: Option<Mutant>, args: &SimArgs) -> Result<bool> {
    eprintln!("shrinking {} seed {seed:#018x} (at most {} runs)", scenario.name, args.shrink_runs);
    let mut progress = |what: &str, report: &Report| {
        eprintln!(
            "  kept: {what:<28} -> seed {:#018x} fails with {} client operations",
            report.seed, report.operations
        );
    };
    let Some(shrunk) = roomlab_sim::shrink(scenario, seed, mutant, args.shrink_runs, &mut progress) else {
        println!("{} seed {seed:#018x} passes: nothing to shrink", scenario.name);
        return Ok(true);
    };
    let path = args
        .shrink_out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("shrunk-{}-{seed:#x}.toml", scenario.name)));
    let text = toml::to_string(&shrunk.scenario).context("writing the scenario as TOML")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let s = &shrunk.scenario;
    println!(
        "shrunk in {} runs to {}, {} s of faults, {} client operations",
        shrunk.runs,
        clients(s.clients),
        s.safety_s,
        shrunk.report.operations
    );
    for failure in &shrunk.report.failures {
        println!("  - {}", failure.lines().next().unwrap_or_default());
    }
    println!("scenario written to {}", path.display());
    let repro = repro_line(&path.display().to_string(), shrunk.seed, mutant);
    println!("  repro: {repro} (commit {})", commit());
    Ok(false)
}

fn sweep(scenario: &Scenario, seeds: &[u64], mutant: Option<Mutant>, args: &SimArgs) -> Result<Vec<Report>> {
    let bar = indicatif::ProgressBar::new(seeds.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} seeds, {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let queue = Arc::new(Mutex::new(seeds.iter().copied()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(0usize));
    let keep_trace = args.trace.is_some();
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            let (queue, results, failed, bar) = (queue.clone(), results.clone(), failed.clone(), bar.clone());
            scope.spawn(move || loop {
                let Some(seed) = queue.lock().expect("queue").next() else { break };
                let started = Instant::now();
                let mut report = if args.check_determinism {
                    match check_determinism(scenario, seed) {
                        Ok(report) => report,
                        Err(divergence) => {
                            let mut report =
                                Report { scenario: scenario.name.clone(), seed, ..Report::default() };
                            report.failures.push(divergence);
                            report
                        }
                    }
                } else {
                    run(&RunConfig { keep_trace, mutant, ..RunConfig::new(scenario.clone(), seed) })
                };
                report.wall_ms = started.elapsed().as_millis() as u64;
                if !report.passed() {
                    *failed.lock().expect("failed") += 1;
                    bar.println(format!("FAILED seed {seed:#018x}: {}", report.failures[0]));
                    bar.println(format!("  repro: {}", repro_line(&args.scenario, seed, mutant)));
                }
                bar.set_message(format!("{} failed", failed.lock().expect("failed")));
                bar.inc(1);
                results.lock().expect("results").push(report);
            });
        }
    });
    bar.finish_and_clear();
    let mut reports = std::mem::take(&mut *results.lock().expect("results"));
    reports.sort_by_key(|r| r.seed);
    if let (Some(path), Some(report)) = (&args.trace, reports.first()) {
        std::fs::write(path, perfetto_json(&report.events))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "trace of {} events written to {} (open it in ui.perfetto.dev)",
            report.events.len(),
            path.display()
        );
    }
    Ok(reports)
}

/// Prints the summary table and each failure; a repro line names the scenario as `--scenario`
/// was given (a file's path replays, a shrunk scenario's name does not), or, for merged
/// reports, by the name in the report.
fn summarize(reports: &[Report], wall_ms: u64, mutant: Option<Mutant>, scenario_arg: Option<&str>) -> bool {
    let sim_ms: u64 = reports.iter().map(|r| r.sim_ms).sum();
    let run_ms: u64 = reports.iter().map(|r| r.wall_ms).sum();
    let operations: u64 = reports.iter().map(|r| r.operations).sum();
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.passed()).collect();
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    for report in reports {
        for (kind, count) in &report.faults {
            *faults.entry(kind.as_str()).or_default() += count;
        }
    }
    let per_s = |count: u64, ms: u64| if ms == 0 { 0.0 } else { count as f64 * 1000.0 / ms as f64 };
    println!("{:<28} {}", "seeds", reports.len());
    println!("{:<28} {}", "failed", failed.len());
    println!("{:<28} {:.1} s", "simulated time", sim_ms as f64 / 1000.0);
    println!("{:<28} {:.1} s (runs: {:.1} s)", "wall time", wall_ms as f64 / 1000.0, run_ms as f64 / 1000.0);
    println!("{:<28} {:.1}x real time", "simulation speed (per run)", per_s(sim_ms, run_ms) / 1000.0);
    println!(
        "{:<28} {} ({:.0} per wall second of run)",
        "client operations",
        operations,
        per_s(operations, run_ms)
    );
    let frames: roomlab_sim::FrameCounts = reports.iter().map(|r| r.frames).sum();
    let ratio = |count: u64, of: u64| if of == 0 { 0.0 } else { count as f64 / of as f64 };
    println!(
        "{:<28} {:.1} sent and {:.1} received per operation (received frames: {:.0} bytes on average)",
        "text frames",
        ratio(frames.sent, operations),
        ratio(frames.received, operations),
        ratio(frames.received_bytes, frames.received)
    );
    let fired: Vec<String> = faults.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
    println!(
        "{:<28} {}",
        "faults fired",
        if fired.is_empty() { "none".to_string() } else { fired.join(", ") }
    );
    let never: Vec<&str> = faults.iter().filter(|(_, count)| **count == 0).map(|(kind, _)| *kind).collect();
    if !never.is_empty() {
        println!("{:<28} {}", "enabled but never fired", never.join(", "));
    }
    for report in &failed {
        println!("\nFAILED {} seed {:#018x}", report.scenario, report.seed);
        for failure in &report.failures {
            println!("  - {failure}");
        }
        let scenario = scenario_arg.unwrap_or(&report.scenario);
        println!("  repro: {} (commit {})", repro_line(scenario, report.seed, mutant), commit());
    }
    failed.is_empty()
}

/// "1 client", "2 clients".
pub fn clients(count: usize) -> String {
    format!("{count} client{}", if count == 1 { "" } else { "s" })
}

/// The commit this binary was built from (see build.rs).
pub fn commit() -> &'static str {
    env!("ROOMLAB_COMMIT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        sim: SimArgs,
    }

    /// The help of `--scenario` names every embedded scenario, so a new one is not hidden.
    #[test]
    fn the_help_names_every_embedded_scenario() {
        let command = Wrapper::command();
        let argument = command.get_arguments().find(|a| a.get_id() == "scenario").unwrap();
        let help = argument.get_help().unwrap().to_string();
        let missing: Vec<_> = roomlab_sim::NAMES.iter().filter(|name| !help.contains(*name)).collect();
        assert!(missing.is_empty(), "--scenario help misses {missing:?}: {help}");
    }
}
