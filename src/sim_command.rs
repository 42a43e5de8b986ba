//! `roomlab sim`: sweeps seeds of a scenario (or the regression seeds) over worker threads, one
//! simulation per thread at a time, shows progress, prints each failure with the line that
//! reproduces it, then a summary table. Shard reports written with `--json` merge with `--merge`.

use crate::{plural, usage};
use anyhow::{Context, Result};
use roomlab_protocol::Mutant;
use roomlab_sim::{
    check_determinism, perfetto_json, repro_line, run, Report, RunConfig, Scenario, ScenarioError,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The help of `--scenario`, naming every embedded scenario (one per file of scenarios/).
fn scenario_help() -> String {
    format!("An embedded scenario ({}) or the path of a scenario file", roomlab_sim::NAMES.join(", "))
}

/// The options of `roomlab sim`.
#[derive(clap::Args)]
pub struct SimArgs {
    #[arg(long, default_value = "swarm", help = scenario_help())]
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
    /// Write every run's report as JSON to this file (all failures, whole).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Merge the JSON reports of several shards into one summary instead of running anything.
    #[arg(long, num_args = 1.., conflicts_with_all = ["seed", "json", "regressions"])]
    merge: Vec<PathBuf>,
    /// Replay the seeds that once failed (scenarios/regressions.toml, embedded in the binary).
    #[arg(long, conflicts_with_all = ["scenario", "seed", "seeds", "shard", "shrink", "trace", "clients", "safety_s"])]
    regressions: bool,
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

/// Worker threads by default: one per core.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Failures printed per seed; the `--json` report has every one (the simulation keeps up to 20).
const FAILURES_SHOWN: usize = 5;

/// Characters of one failure printed; a view of a whole query can run to many kilobytes.
const FAILURE_CHARS_SHOWN: usize = 2_000;

/// How often a progress line is printed when standard error is no terminal (a CI log), where the
/// progress bar is hidden.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The regression seeds, embedded so `--regressions` runs from any directory.
const REGRESSIONS: &str = include_str!("../scenarios/regressions.toml");

/// The scenario files that `scenarios/regressions.toml` names, by their path under scenarios/.
const REGRESSION_FILES: &[(&str, &str)] = &[(
    "regressions/setup-storage-fault.toml",
    include_str!("../scenarios/regressions/setup-storage-fault.toml"),
)];

fn parse_seed(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not a seed: give a whole number, decimal or 0x-hex"))
}

fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let shape = || format!("{text:?} is not a shard: give K/N with 1 <= K <= N, like 2/8");
    let (k, n) = text.split_once('/').ok_or_else(shape)?;
    let (k, n): (usize, usize) = (k.parse().map_err(|_| shape())?, n.parse().map_err(|_| shape())?);
    if n == 0 || k == 0 || k > n {
        return Err(shape());
    }
    Ok((k, n))
}

/// The seeds `--seed` or `--seeds` name, before sharding.
fn sweep_seeds(args: &SimArgs) -> Result<Vec<u64>> {
    if let Some(seed) = args.seed {
        return Ok(vec![seed]);
    }
    seeds_named(&args.seeds)
}

/// The seeds `--seeds` names: a count N (seeds 0 to N-1) or a range A..B (B not run).
pub fn seeds_named(text: &str) -> Result<Vec<u64>> {
    let seed = |text: &str| parse_seed(text.trim()).map_err(usage);
    match text.split_once("..") {
        Some((a, b)) => {
            let (a, b) = (seed(a)?, seed(b)?);
            if a >= b {
                return Err(usage(format!(
                    "the seed range {a}..{b} is empty: give A..B with A below B (B is not run)"
                )));
            }
            Ok((a..b).collect())
        }
        None => match seed(text)? {
            0 => Err(usage("--seeds must be at least 1 (it is how many seeds to run, from 0)")),
            count => Ok((0..count).collect()),
        },
    }
}

/// The seeds of shard K of N: every N-th seed of the sweep, from the K-th.
fn shard_of(seeds: &[u64], (k, n): (usize, usize)) -> Vec<u64> {
    seeds.iter().enumerate().filter(|(i, _)| i % n == k - 1).map(|(_, seed)| *seed).collect()
}

/// Loads `--scenario`; every way it can be wrong is a usage error that says what to give instead.
fn load_scenario(name_or_path: &str) -> Result<Scenario> {
    if name_or_path == "regressions" || name_or_path.ends_with("regressions.toml") {
        return Err(usage(
            "regressions is a list of seeds, not a scenario: run it with `roomlab sim --regressions`",
        ));
    }
    Scenario::load(name_or_path).map_err(|error| match error {
        ScenarioError::Unknown(_) if looks_like_path(name_or_path) => usage(format!(
            "file not found: {name_or_path} (give the path of a scenario file, or an embedded scenario: {})",
            roomlab_sim::NAMES.join(", ")
        )),
        ScenarioError::Unknown(_) => usage(format!(
            "no scenario named {name_or_path:?}; the embedded scenarios are {}, or give the path of a .toml file",
            roomlab_sim::NAMES.join(", ")
        )),
        other => usage(other.to_string()),
    })
}

fn looks_like_path(text: &str) -> bool {
    text.contains('/') || text.contains('\\') || text.ends_with(".toml")
}

/// The scenario with the size options applied.
fn sized_scenario(args: &SimArgs) -> Result<Scenario> {
    let mut scenario = load_scenario(&args.scenario)?;
    if let Some(clients) = args.clients {
        if clients == 0 {
            return Err(usage("--clients must be at least 1"));
        }
        scenario.clients = clients;
        scenario.client_hosts = scenario.client_hosts.min(clients);
    }
    if let Some(safety_s) = args.safety_s {
        scenario.safety_s = safety_s;
    }
    Ok(scenario)
}

/// One simulation to run, and the command line that runs it again.
struct Job {
    scenario: Scenario,
    seed: u64,
    repro: String,
    /// What this seed once found (regression seeds).
    found: Option<String>,
}

/// One finished run as `--json` writes it: the simulation's report and the line that replays it.
#[derive(Serialize, Deserialize)]
struct Run {
    #[serde(flatten)]
    report: Report,
    /// The command line that replays this run (absent in reports of older builds).
    #[serde(default)]
    repro: String,
    /// What this seed once found, for a regression seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    found: Option<String>,
}

/// What a sweep does besides running each job.
struct SweepOptions {
    workers: usize,
    keep_trace: bool,
    check_determinism: bool,
    mutant: Option<Mutant>,
}

/// Runs `roomlab sim`; returns whether every run passed.
pub fn run_sim(args: SimArgs) -> Result<bool> {
    let mutant = crate::conform_command::mutant(args.mutant.as_deref())?;
    if !args.merge.is_empty() {
        return merge(&args.merge);
    }
    if args.regressions {
        return run_regressions(&args, mutant);
    }
    let scenario = sized_scenario(&args)?;
    if args.shrink {
        let seed = args.seed.expect("clap requires --seed with --shrink");
        return run_shrink(&scenario, seed, mutant, &args);
    }
    let all = sweep_seeds(&args)?;
    let seeds = match args.shard {
        Some(shard) => shard_of(&all, shard),
        None => all.clone(),
    };
    if let (Some((k, n)), true) = (args.shard, seeds.is_empty()) {
        println!(
            "shard {k}/{n} has no seeds: the sweep has {}, so only shards 1 to {} of {n} run any; nothing to run",
            plural(all.len(), "seed"),
            all.len()
        );
        write_runs(args.json.as_deref(), &[])?;
        return Ok(true);
    }
    eprintln!(
        "roomlab sim: scenario {} ({} on {}, {} s of faults), {}, {}{}",
        scenario.name,
        plural(scenario.clients, "client"),
        plural(scenario.client_hosts, "host"),
        scenario.safety_s,
        plural(seeds.len(), "seed"),
        plural(args.jobs.max(1), "job"),
        if args.check_determinism { ", each run twice" } else { "" }
    );
    let jobs: Vec<Job> = seeds
        .iter()
        .map(|&seed| Job { scenario: scenario.clone(), seed, repro: repro(&args, seed, mutant), found: None })
        .collect();
    let options = SweepOptions {
        workers: args.jobs,
        keep_trace: args.trace.is_some(),
        check_determinism: args.check_determinism,
        mutant,
    };
    let started = Instant::now();
    let runs = sweep(jobs, &options);
    let wall_ms = started.elapsed().as_millis() as u64;
    if let (Some(path), Some(run)) = (&args.trace, runs.first()) {
        std::fs::write(path, perfetto_json(&run.report.events))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "trace of {} events written to {} (open it in ui.perfetto.dev)",
            run.report.events.len(),
            path.display()
        );
    }
    write_runs(args.json.as_deref(), &runs)?;
    Ok(summarize(&runs, wall_ms, args.json.as_deref()))
}

/// The line that replays `seed` as this command ran it: the scenario as `--scenario` named it (a
/// file's path replays, a shrunk scenario's name does not), and every option that changes the run.
fn repro(args: &SimArgs, seed: u64, mutant: Option<Mutant>) -> String {
    let mut line = repro_line(&args.scenario, seed, mutant);
    if let Some(clients) = args.clients {
        let _ = write!(line, " --clients {clients}");
    }
    if let Some(safety_s) = args.safety_s {
        let _ = write!(line, " --safety-s {safety_s}");
    }
    if args.check_determinism {
        line.push_str(" --check-determinism");
    }
    line
}

fn write_runs(path: Option<&Path>, runs: &[Run]) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(runs)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("reports written to {}", path.display());
    }
    Ok(())
}

/// Reads shard reports and prints them as one sweep. The same file twice, or two files that both
/// ran a seed, would count seeds twice: both are refused.
fn merge(paths: &[PathBuf]) -> Result<bool> {
    let mut seen_files: BTreeMap<PathBuf, &Path> = BTreeMap::new();
    let mut seen_seeds: BTreeMap<(String, u64), &Path> = BTreeMap::new();
    let mut runs = Vec::new();
    for path in paths {
        let canonical = std::fs::canonicalize(path).map_err(|_| {
            usage(format!("file not found: {} (give the --json files of the shards)", path.display()))
        })?;
        if let Some(earlier) = seen_files.insert(canonical, path) {
            return Err(usage(format!(
                "{} and {} are the same file: give each shard's report once",
                earlier.display(),
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let part: Vec<Run> = serde_json::from_str(&text).map_err(|error| {
            usage(format!(
                "{} is not a report of `roomlab sim --json`: {}",
                path.display(),
                crate::frame_command::plain_json_error(&error)
            ))
        })?;
        for run in &part {
            let key = (run.report.scenario.clone(), run.report.seed);
            if let Some(earlier) = seen_seeds.insert(key, path) {
                return Err(usage(format!(
                    "{} and {} both ran {} seed {:#x}: each seed must be in one part only (were both made with the same --shard?)",
                    earlier.display(),
                    path.display(),
                    run.report.scenario,
                    run.report.seed
                )));
            }
        }
        runs.extend(part);
    }
    runs.sort_by(|a, b| (&a.report.scenario, a.report.seed).cmp(&(&b.report.scenario, b.report.seed)));
    eprintln!("merged {} from {}", plural(runs.len(), "run"), plural(paths.len(), "file"));
    Ok(summarize(&runs, 0, None))
}

#[derive(Deserialize)]
struct Regressions {
    regression: Vec<Regression>,
}

/// One entry of scenarios/regressions.toml.
#[derive(Deserialize)]
struct Regression {
    scenario: String,
    seed: u64,
    clients: Option<usize>,
    safety_s: Option<u64>,
    found: String,
}

/// The regression seeds as jobs: each entry's scenario (embedded, or a file under scenarios/) at
/// its size, and a repro line that runs it at that size from the repository's root.
fn regression_jobs(mutant: Option<Mutant>) -> Result<Vec<Job>> {
    let regressions: Regressions = toml::from_str(REGRESSIONS).context("scenarios/regressions.toml")?;
    let mut jobs = Vec::new();
    for regression in regressions.regression {
        let (mut scenario, name) =
            match REGRESSION_FILES.iter().find(|(path, _)| *path == regression.scenario) {
                Some((path, text)) => {
                    let name = format!("scenarios/{path}");
                    (Scenario::parse(text, &name)?, name)
                }
                None => (Scenario::load(&regression.scenario)?, regression.scenario.clone()),
            };
        let mut repro = repro_line(&name, regression.seed, mutant);
        if let Some(clients) = regression.clients {
            scenario.clients = clients;
            scenario.client_hosts = scenario.client_hosts.min(clients);
            let _ = write!(repro, " --clients {clients}");
        }
        if let Some(safety_s) = regression.safety_s {
            scenario.safety_s = safety_s;
            let _ = write!(repro, " --safety-s {safety_s}");
        }
        jobs.push(Job { scenario, seed: regression.seed, repro, found: Some(regression.found) });
    }
    Ok(jobs)
}

fn run_regressions(args: &SimArgs, mutant: Option<Mutant>) -> Result<bool> {
    let jobs = regression_jobs(mutant)?;
    eprintln!(
        "roomlab sim: {} from scenarios/regressions.toml, {}",
        plural(jobs.len(), "regression seed"),
        plural(args.jobs.max(1), "job")
    );
    let options = SweepOptions {
        workers: args.jobs,
        keep_trace: false,
        check_determinism: args.check_determinism,
        mutant,
    };
    let started = Instant::now();
    let runs = sweep(jobs, &options);
    let wall_ms = started.elapsed().as_millis() as u64;
    write_runs(args.json.as_deref(), &runs)?;
    Ok(summarize(&runs, wall_ms, args.json.as_deref()))
}

/// Shrinks a failing seed and writes the smallest failing scenario; false when it failed (the
/// expected case), true when the seed passed and there was nothing to shrink.
fn run_shrink(scenario: &Scenario, seed: u64, mutant: Option<Mutant>, args: &SimArgs) -> Result<bool> {
    eprintln!("shrinking {} seed {seed:#018x} (at most {})", scenario.name, plural(args.shrink_runs, "run"));
    let mut progress = |what: &str, report: &Report| {
        eprintln!(
            "  kept: {what:<28} -> seed {:#018x} fails with {}",
            report.seed,
            plural(report.operations as usize, "client operation")
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
        "shrunk in {} to {}, {} s of faults, {}",
        plural(shrunk.runs, "run"),
        plural(s.clients, "client"),
        s.safety_s,
        plural(shrunk.report.operations as usize, "client operation")
    );
    for failure in &shrunk.report.failures {
        println!("  - {}", failure.lines().next().unwrap_or_default());
    }
    println!("scenario written to {}", path.display());
    let repro = repro_line(&path.display().to_string(), shrunk.seed, mutant);
    println!("  repro: {repro} (commit {})", commit());
    Ok(false)
}

/// Runs one job (twice with `check_determinism`) and times it.
fn run_job(job: &Job, options: &SweepOptions) -> Run {
    let started = Instant::now();
    let mut report = if options.check_determinism {
        check_determinism(&job.scenario, job.seed).unwrap_or_else(|divergence| {
            let mut report =
                Report { scenario: job.scenario.name.clone(), seed: job.seed, ..Report::default() };
            report.failures.push(divergence);
            report
        })
    } else {
        let config = RunConfig {
            keep_trace: options.keep_trace,
            mutant: options.mutant,
            ..RunConfig::new(job.scenario.clone(), job.seed)
        };
        run(&config)
    };
    report.wall_ms = started.elapsed().as_millis() as u64;
    Run { report, repro: job.repro.clone(), found: job.found.clone() }
}

/// Runs the jobs on `options.workers` threads with a progress bar (or, where the bar is hidden, a
/// progress line every few seconds); each failure is announced as it happens, in one line.
fn sweep(jobs: Vec<Job>, options: &SweepOptions) -> Vec<Run> {
    let bar = indicatif::ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} seeds, {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let total = jobs.len();
    let queue = Mutex::new(jobs.into_iter());
    let runs = Mutex::new(Vec::new());
    let (done, failed, finished) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicBool::new(false));
    let say = |line: String| if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) };
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..options.workers.max(1))
            .map(|_| {
                scope.spawn(|| loop {
                    let Some(job) = queue.lock().expect("queue").next() else { break };
                    let run = run_job(&job, options);
                    if !run.report.passed() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        say(format!(
                            "FAILED seed {:#018x}: {}",
                            job.seed,
                            first_line(&run.report.failures[0])
                        ));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    bar.set_message(format!("{} failed", failed.load(Ordering::Relaxed)));
                    bar.inc(1);
                    runs.lock().expect("runs").push(run);
                })
            })
            .collect();
        if bar.is_hidden() {
            scope.spawn(|| {
                let mut next = started + PROGRESS_EVERY;
                while !finished.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if Instant::now() >= next {
                        next += PROGRESS_EVERY;
                        eprintln!(
                            "progress: {}/{total} seeds done, {} failed, {:.0} s elapsed",
                            done.load(Ordering::Relaxed),
                            failed.load(Ordering::Relaxed),
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            });
        }
        for worker in workers {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        finished.store(true, Ordering::Relaxed);
    });
    bar.finish_and_clear();
    let mut runs = runs.into_inner().expect("runs");
    runs.sort_by(|a, b| (&a.report.scenario, a.report.seed).cmp(&(&b.report.scenario, b.report.seed)));
    runs
}

/// A failure's first line, cut to what fits a progress line.
fn first_line(failure: &str) -> String {
    let line = failure.lines().next().unwrap_or_default();
    match line.char_indices().nth(160) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    }
}

/// Prints every failing seed (its failures, then its repro line), then the summary table; returns
/// whether every run passed.
fn summarize(runs: &[Run], wall_ms: u64, json: Option<&Path>) -> bool {
    let failed: Vec<&Run> = runs.iter().filter(|r| !r.report.passed()).collect();
    for run in &failed {
        print!("{}", failure_report(run, json));
    }
    let reports: Vec<&Report> = runs.iter().map(|r| &r.report).collect();
    print!("{}", summary_table(&reports, failed.len(), wall_ms));
    failed.is_empty()
}

/// One failing seed as plain text: what broke (at most [`FAILURES_SHOWN`] failures, each cut at
/// [`FAILURE_CHARS_SHOWN`] characters, saying what was cut and where it is whole) and its repro line.
fn failure_report(run: &Run, json: Option<&Path>) -> String {
    let report = &run.report;
    let whole = match json {
        Some(path) => format!("{} has them whole", path.display()),
        None => "`--json FILE` writes them whole".to_string(),
    };
    let mut text = format!("FAILED {} seed {:#018x}\n", report.scenario, report.seed);
    if let Some(found) = &run.found {
        let _ = writeln!(text, "  (this seed once found: {found})");
    }
    for failure in report.failures.iter().take(FAILURES_SHOWN) {
        let shown: String = failure.chars().take(FAILURE_CHARS_SHOWN).collect();
        let cut = failure.chars().count() - shown.chars().count();
        let mut lines = shown.lines();
        let _ = writeln!(text, "  - {}", lines.next().unwrap_or_default());
        for line in lines {
            let _ = writeln!(text, "    {line}");
        }
        if cut > 0 {
            let _ = writeln!(text, "    ... {cut} more characters cut; {whole}");
        }
    }
    let hidden = report.failures.len().saturating_sub(FAILURES_SHOWN);
    if hidden > 0 {
        let _ =
            writeln!(text, "  ... and {} of this seed not shown; {whole}", plural(hidden, "more failure"));
    }
    let repro = if run.repro.is_empty() {
        repro_line(&report.scenario, report.seed, None)
    } else {
        run.repro.clone()
    };
    let _ = writeln!(text, "  repro: {repro} (commit {})\n", commit());
    text
}

/// The summary table: seeds, time, speed, operations, frames and faults.
fn summary_table(reports: &[&Report], failed: usize, wall_ms: u64) -> String {
    let sim_ms: u64 = reports.iter().map(|r| r.sim_ms).sum();
    let run_ms: u64 = reports.iter().map(|r| r.wall_ms).sum();
    let operations: u64 = reports.iter().map(|r| r.operations).sum();
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    for report in reports {
        for (kind, count) in &report.faults {
            *faults.entry(kind.as_str()).or_default() += count;
        }
    }
    let per_s = |count: u64, ms: u64| if ms == 0 { 0.0 } else { count as f64 * 1000.0 / ms as f64 };
    let ratio = |count: u64, of: u64| if of == 0 { 0.0 } else { count as f64 / of as f64 };
    let frames: roomlab_sim::FrameCounts = reports.iter().map(|r| r.frames).sum();
    let mut rows = vec![
        ("seeds", reports.len().to_string()),
        ("failed", failed.to_string()),
        ("simulated time", format!("{:.1} s", sim_ms as f64 / 1000.0)),
        ("wall time", format!("{:.1} s (runs: {:.1} s)", wall_ms as f64 / 1000.0, run_ms as f64 / 1000.0)),
        ("simulation speed (per run)", format!("{:.1}x real time", per_s(sim_ms, run_ms) / 1000.0)),
        (
            "client operations",
            format!("{operations} ({:.0} per wall second of run)", per_s(operations, run_ms)),
        ),
        (
            "text frames",
            format!(
                "{:.1} sent and {:.1} received per operation (received frames: {:.0} bytes on average)",
                ratio(frames.sent, operations),
                ratio(frames.received, operations),
                ratio(frames.received_bytes, frames.received)
            ),
        ),
    ];
    let fired: Vec<String> = faults.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
    rows.push(("faults fired", if fired.is_empty() { "none".to_string() } else { fired.join(", ") }));
    let never: Vec<&str> = faults.iter().filter(|(_, count)| **count == 0).map(|(kind, _)| *kind).collect();
    if !never.is_empty() {
        rows.push(("enabled but never fired", never.join(", ")));
    }
    rows.extend(rule_rows(reports));
    rows.iter().map(|(name, value)| format!("{name:<28} {value}\n")).collect()
}

/// Rule coverage over the sweep: how many server-binding MUST rules the oracle exercised, the
/// frames it checked, and the rules no run exercised (those sim/unexercised.toml excuses apart).
fn rule_rows(reports: &[&Report]) -> Vec<(&'static str, String)> {
    let mut rules: BTreeMap<String, roomlab_sim::RuleCount> = BTreeMap::new();
    for report in reports {
        for (rule, count) in &report.rules {
            let total = rules.entry(rule.clone()).or_default();
            total.exercised += count.exercised;
            total.checked += count.checked;
        }
    }
    if rules.is_empty() {
        return Vec::new();
    }
    let server_must: Vec<String> = roomlab_oracle::spec_rules()
        .into_iter()
        .filter(|rule| rule.must && !rule.binds_clients)
        .map(|rule| rule.id)
        .collect();
    let exercised = server_must.iter().filter(|id| rules.get(*id).is_some_and(|c| c.exercised > 0)).count();
    let checked: u64 = rules.values().map(|count| count.checked).sum();
    let mut rows = vec![(
        "rules exercised",
        format!(
            "{exercised} of {} server MUST rules; {checked} checks of received frames by rule",
            server_must.len()
        ),
    )];
    let missing = roomlab_sim::unexercised_rules(&rules);
    if !missing.is_empty() {
        rows.push(("MUST rules never exercised", missing.join(", ")));
    }
    rows
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

    /// `--regressions` replays every entry of scenarios/regressions.toml, and each scenario file
    /// there is embedded: a file added to scenarios/regressions/ but not to `REGRESSION_FILES`
    /// would leave its seed out.
    #[test]
    fn every_regression_seed_and_file_is_replayed() {
        let jobs = regression_jobs(None).unwrap();
        let listed: Regressions = toml::from_str(REGRESSIONS).unwrap();
        assert_eq!(jobs.len(), listed.regression.len());
        let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/regressions");
        for entry in std::fs::read_dir(directory).unwrap() {
            let name = format!("regressions/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(REGRESSION_FILES.iter().any(|(path, _)| *path == name), "{name} is not embedded");
        }
        let with_file = jobs.iter().find(|job| job.repro.contains("scenarios/regressions/")).unwrap();
        assert!(with_file.found.is_some());
        let sized = jobs.iter().find(|job| job.repro.contains("--clients 20 --safety-s 10")).unwrap();
        assert_eq!((sized.scenario.clients, sized.scenario.safety_s), (20, 10));
    }

    /// Runs one failing seed's report through the failure printer.
    fn check(failures: usize, failure_chars: usize, json: Option<&str>, expected: &[&str], absent: &[&str]) {
        let report = Report {
            scenario: "swarm".into(),
            seed: 5,
            failures: (0..failures).map(|i| format!("failure {i}: {}", "x".repeat(failure_chars))).collect(),
            ..Report::default()
        };
        let run = Run { report, repro: "cargo run --release -- sim --seed 0x5".into(), found: None };
        let text = failure_report(&run, json.map(Path::new));
        for fragment in expected {
            assert!(text.contains(fragment), "{fragment:?} missing from:\n{text}");
        }
        for fragment in absent {
            assert!(!text.contains(fragment), "{fragment:?} in:\n{text}");
        }
    }

    #[test]
    fn failure_reports_say_what_they_cut() {
        check(
            2,
            10,
            None,
            &["FAILED swarm seed 0x0000000000000005", "  - failure 1:", "repro: cargo run"],
            &["not shown", "cut"],
        );
        check(
            7,
            10,
            None,
            &["  - failure 4:", "and 2 more failures of this seed not shown; `--json FILE`"],
            &["failure 5:"],
        );
        check(
            6,
            10,
            Some("all.json"),
            &["and 1 more failure of this seed not shown; all.json has them"],
            &[],
        );
        check(1, 5_000, None, &["more characters cut; `--json FILE` writes them whole"], &[]);
    }
}
