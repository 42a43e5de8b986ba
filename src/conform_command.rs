//! `roomlab conform`: the conformance suite against a target file or the embedded server.

use crate::embedded::Embedded;
use anyhow::{Context, Result};
use roomlab_conformance::{Baseline, Case, CaseReport, RunReport, Target, Verdict};
use std::path::PathBuf;

/// Arguments of `roomlab conform`.
#[derive(clap::Args)]
pub struct ConformArgs {
    /// A target file (TOML: ws_url, http_base, [token], capabilities, ...); the embedded roomlab
    /// server when absent.
    #[arg(long)]
    target: Option<PathBuf>,
    /// Run only cases whose id matches one of these globs (e.g. 'docs.*').
    #[arg(long, value_name = "GLOB")]
    only: Vec<String>,
    /// Skip cases whose id matches one of these globs.
    #[arg(long, value_name = "GLOB")]
    skip: Vec<String>,
    /// Also run the cases of every *.cases file in this directory (the format is in README).
    #[arg(long, value_name = "DIR")]
    cases: Option<PathBuf>,
    /// Expected results from an earlier --json report: only new failures fail the run.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Write the JSON report (per case: id, rule, result, duration, frames) here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write a JUnit XML report here (one testsuite per group).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Cases run at once.
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// Print the transcript of every case that is not OK.
    #[arg(long)]
    verbose: bool,
    /// List the cases (id, level, needs, description) and exit.
    #[arg(long)]
    list: bool,
    /// List the capabilities a target may declare and exit.
    #[arg(long)]
    capabilities: bool,
    /// Plant this bug in the embedded server (builds with --features mutants).
    #[arg(long, value_name = "NAME")]
    mutant: Option<String>,
    /// Explore instead of running the cases: seeded random operations from several users, every
    /// frame checked against the spec's oracle; each deviation is shrunk and written as a case.
    #[arg(long)]
    explore: bool,
    /// Exploration: how many seeds (0..N), or a range A..B.
    #[arg(long, default_value = "20", requires = "explore")]
    seeds: String,
    /// Exploration: operations per seed.
    #[arg(long, default_value_t = 40, requires = "explore", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    ops: u32,
    /// Exploration: start no new seed after this many seconds.
    #[arg(long, value_name = "S", requires = "explore")]
    time: Option<u64>,
    /// Exploration: runs spent shrinking each finding.
    #[arg(long, default_value_t = 150, requires = "explore")]
    shrink_runs: usize,
    /// Exploration: the directory the shrunk cases are written to (one .cases file per finding).
    #[arg(long, value_name = "DIR", default_value = "explore-findings", requires = "explore")]
    explore_out: PathBuf,
}

/// Parses a mutant name, or explains why it cannot be planted.
pub fn mutant(name: Option<&str>) -> Result<Option<roomlab_protocol::Mutant>> {
    let Some(name) = name else { return Ok(None) };
    let Some(mutant) = roomlab_protocol::Mutant::from_name(name) else {
        let names: Vec<&str> = roomlab_protocol::Mutant::ALL.iter().map(|m| m.name()).collect();
        return Err(crate::usage(format!("no mutant {name:?}; the mutants are: {}", names.join(", "))));
    };
    if !roomlab_protocol::Mutant::COMPILED {
        return Err(crate::usage(
            "this build has no mutants; build with `cargo run --release --features mutants -- ...`",
        ));
    }
    Ok(Some(mutant))
}

/// Loads a target file; a missing or malformed one is a usage error that says so.
pub fn load_target(path: &std::path::Path) -> Result<Target> {
    if !path.exists() {
        return Err(crate::usage(format!(
            "file not found: {} (a target file describes the server to test; see README)",
            path.display()
        )));
    }
    Target::load(path).map_err(|error| crate::usage(error.to_string()))
}

fn print_cases(cases: &[Case]) {
    for case in cases {
        let needs =
            if case.needs.is_empty() { String::new() } else { format!(" [{}]", case.needs.join(",")) };
        println!("{:<40} {:<6} {}{needs}", case.id, case.level.to_string(), case.description);
    }
    println!("{}", crate::plural(cases.len(), "case"));
}

/// Runs the suite; returns the exit code (0 pass, 1 regressions, 2 harness error).
pub fn run_conform(args: ConformArgs) -> Result<u8> {
    if args.capabilities {
        for (name, promise) in roomlab_conformance::CAPABILITIES {
            println!("{name:<12} {promise}");
        }
        return Ok(0);
    }
    if args.explore {
        let plan = args.explore_plan()?;
        let (target, mutant) = (args.target.as_deref(), args.mutant.as_deref());
        return crate::explore_command::run_explore(&plan, &args.explore_out, target, mutant);
    }
    let mut cases = roomlab_conformance::cases().context("the built-in cases")?;
    if let Some(dir) = &args.cases {
        let own = roomlab_conformance::cases_in(dir).map_err(|e| crate::usage(e.to_string()))?;
        if own.is_empty() {
            return Err(crate::usage(format!("{}: no *.cases file there", dir.display())));
        }
        cases.extend(own);
        roomlab_conformance::check_unique(&cases).map_err(|e| crate::usage(e.to_string()))?;
    }
    let cases = roomlab_conformance::select(cases, &args.only, &args.skip).map_err(crate::usage)?;
    if args.list {
        print_cases(&cases);
        return Ok(0);
    }
    if cases.is_empty() {
        eprintln!("no case matches --only / --skip: nothing to run");
        return Ok(2);
    }
    let baseline = match &args.baseline {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(Baseline::from_json(&text).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let mutant = mutant(args.mutant.as_deref())?;
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    let report = runtime.block_on(async {
        match &args.target {
            Some(path) => {
                if mutant.is_some() {
                    return Err(crate::usage(
                        "--mutant plants a bug in the embedded server; it cannot change --target (leave one out)",
                    ));
                }
                let target = load_target(path)?;
                let deadline = std::time::Duration::from_secs(5);
                roomlab_conformance::probe(&target, deadline).await.map_err(crate::usage)?;
                Ok(run_with_progress(&target, &cases, args.jobs).await)
            }
            None => {
                let embedded = Embedded::start(mutant).await?;
                let report = run_with_progress(&embedded.target, &cases, args.jobs).await;
                embedded.stop().await;
                Ok(report)
            }
        }
    })?;
    write_reports(&report, &args)?;
    print!("{}", report.table(baseline.as_ref()));
    if args.verbose {
        for case in report.cases.iter().filter(|c| c.result != Verdict::Ok) {
            println!("\n== {} {} ({})\n{}", case.result.name(), case.id, case.detail, case.transcript());
        }
    }
    let code = report.exit_code(baseline.as_ref());
    match code {
        0 => println!("conformance: pass"),
        1 => {
            let regressed = report.regressions(baseline.as_ref()).len();
            println!("conformance: FAIL ({} regressed)", crate::plural(regressed, "case"))
        }
        _ => println!("conformance: no case ran (harness error)"),
    }
    // The report's codes are 0, 1 and 2.
    Ok(u8::try_from(code).unwrap_or(2))
}

impl ConformArgs {
    /// What `--explore` is asked to do.
    fn explore_plan(&self) -> Result<roomlab_conformance::ExplorePlan> {
        Ok(roomlab_conformance::ExplorePlan {
            seeds: crate::sim_command::seeds_named(&self.seeds)?,
            ops: self.ops as usize,
            time_max: self.time.map(std::time::Duration::from_secs),
            shrink_runs_max: self.shrink_runs,
            room_prefix: "explore".into(),
        })
    }
}

fn write_reports(report: &RunReport, args: &ConformArgs) -> Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json()).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, report.to_junit()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs `cases` with a progress bar on standard error.
pub async fn run_with_progress(target: &Target, cases: &[Case], jobs: usize) -> RunReport {
    let bar = indicatif::ProgressBar::new(cases.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} cases {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let progress = |case: &CaseReport| {
        if case.result.is_bad() {
            bar.println(format!("{:<8} {} {}", case.result.name(), case.id, case.detail));
        }
        bar.inc(1);
    };
    let report = roomlab_conformance::run(target, cases, jobs, &progress).await;
    bar.finish_and_clear();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    /// A target runs exactly the cases its capabilities cover: declared `y-websocket` alone, only
    /// the stock-protocol group runs (no case that opens the main socket or calls HTTP); declared
    /// `core` alone, no case needing anything else.
    #[test]
    fn a_target_runs_only_what_it_declares() {
        let cases = roomlab_conformance::cases().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let embedded = Embedded::start(None).await.unwrap();
            for declared in [&["y-websocket"][..], &["core"], &["core", "lists"]] {
                let mut target = embedded.target.clone();
                target.set_restart(None);
                target.set_fail_commit(None);
                target.capabilities = declared.iter().map(|c| c.to_string()).collect();
                let report = roomlab_conformance::run(&target, &cases, 8, &|_| {}).await;
                let ran: Vec<&str> = report
                    .cases
                    .iter()
                    .filter(|c| c.result != Verdict::Unimplemented)
                    .map(|c| c.id.as_str())
                    .collect();
                let expected: Vec<&str> = cases
                    .iter()
                    .filter(|c| c.needs.iter().all(|need| declared.contains(&need.as_str())))
                    .map(|c| c.id.as_str())
                    .collect();
                assert_eq!(ran, expected, "{declared:?}");
                assert!(!ran.is_empty(), "{declared:?}");
                let bad: Vec<String> = report
                    .cases
                    .iter()
                    .filter(|c| c.result.is_bad())
                    .map(|c| format!("{}: {}", c.id, c.detail))
                    .collect();
                // Declared `y-websocket` alone, roomlab's documents are never created (that takes
                // the main socket), so its Yjs endpoint refuses them: what ran is checked, not how.
                if declared == ["y-websocket"] {
                    assert!(ran.iter().all(|id| id.starts_with("yws.")), "{ran:?}");
                } else {
                    assert!(bad.is_empty(), "{declared:?}: {bad:?}");
                }
            }
            embedded.stop().await;
        });
    }

    /// The embedded server passes every case, and the frames of every case are snapshots, so any
    /// change to what the server says is reviewed.
    #[test]
    fn the_embedded_server_passes_every_case() {
        let cases = roomlab_conformance::cases().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let report = runtime.block_on(async {
            let embedded = Embedded::start(None).await.unwrap();
            let report = roomlab_conformance::run(&embedded.target, &cases, 8, &|_| {}).await;
            embedded.stop().await;
            report
        });
        assert_eq!(report.cases.len(), cases.len());
        let bad: Vec<String> = report
            .cases
            .iter()
            .filter(|c| c.result != Verdict::Ok)
            .map(|c| format!("{} {}: {}\n{}", c.result.name(), c.id, c.detail, c.transcript()))
            .collect();
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        for (group, _, _) in roomlab_conformance::CASE_FILES {
            let mut text = String::new();
            for case in report.cases.iter().filter(|c| c.group == *group) {
                let transcript = match case.racy {
                    true => "(its frames depend on timing)\n".to_string(),
                    false => case.transcript(),
                };
                let _ = write!(text, "## {} ({} {})\n{transcript}\n", case.id, case.level, case.description);
            }
            insta::assert_snapshot!(format!("conformance_{group}"), text);
        }
    }
}
