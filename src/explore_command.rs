//! `roomlab conform --explore`: seeded random operations against a target, judged by the oracle;
//! each deviation shrunk and written out as a `.cases` file.

use crate::embedded::Embedded;
use anyhow::{Context, Result};
use roomlab_conformance::{ExplorePlan, ExploreReport, Finding, Target};
use std::path::{Path, PathBuf};

/// Explores a target file's server, or the embedded one (with `mutant` planted); returns the exit
/// code: 0 when nothing deviated, 1 when something did, 2 on a harness or target error.
pub fn run_explore(
    plan: &ExplorePlan,
    out: &Path,
    target: Option<&Path>,
    mutant: Option<&str>,
) -> Result<u8> {
    let mutant = crate::conform_command::mutant(mutant)?;
    if target.is_some() && mutant.is_some() {
        return Err(crate::usage(
            "--mutant plants a bug in the embedded server; it cannot change --target (leave one out)",
        ));
    }
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    let report = runtime.block_on(async {
        match target {
            Some(path) => {
                let target = crate::conform_command::load_target(path)?;
                check_core(&target)?;
                let deadline = std::time::Duration::from_secs(5);
                roomlab_conformance::probe(&target, deadline).await.map_err(crate::usage)?;
                Ok::<_, anyhow::Error>(explore_with_progress(&target, plan).await)
            }
            None => {
                let embedded = Embedded::start(mutant).await?;
                let report = explore_with_progress(&embedded.target, plan).await;
                embedded.stop().await;
                Ok(report)
            }
        }
    })?;
    let repro_target = target.map(|path| format!(" --target {}", path.display())).unwrap_or_default();
    let repro_mutant = mutant.map(|m| format!(" --mutant {}", m.name())).unwrap_or_default();
    for finding in &report.findings {
        let path = write_finding(out, finding)?;
        println!("FOUND {} (seed {}): {}", finding.rule, finding.seed, finding.detail);
        println!(
            "  shrunk from {} to {}; the case is {}",
            crate::plural(finding.ops_found, "operation"),
            crate::plural(finding.ops_shrunk, "operation"),
            path.display()
        );
        println!(
            "  repro: roomlab conform --explore --seeds {}..{}{repro_target}{repro_mutant}",
            finding.seed,
            finding.seed + 1
        );
        println!(
            "  run the case: roomlab conform --cases {} --only '*#explore-*'{repro_target}{repro_mutant}",
            out.display()
        );
    }
    println!(
        "explored {} ({} sent, {} received and checked against the spec): {}",
        crate::plural(report.seeds as usize, "seed"),
        crate::plural(report.ops as usize, "operation"),
        crate::plural(report.frames as usize, "frame"),
        match report.findings.len() {
            0 => "no deviation".to_string(),
            n => format!("{} found", crate::plural(n, "deviation")),
        }
    );
    Ok(if report.findings.is_empty() { 0 } else { 1 })
}

/// Exploration sends documents, queries and subscriptions, which every target that declares
/// `core` serves; a target without it has nothing to explore.
fn check_core(target: &Target) -> Result<()> {
    match target.capabilities.contains("core") {
        true => Ok(()),
        false => Err(crate::usage(format!(
            "{} does not declare `core`; --explore sends documents, queries and subscriptions",
            target.name
        ))),
    }
}

async fn explore_with_progress(target: &Target, plan: &ExplorePlan) -> ExploreReport {
    // Rooms of their own, apart from an earlier run's on a server that keeps its data.
    let plan =
        ExplorePlan { room_prefix: format!("{}-{}", plan.room_prefix, unique_suffix()), ..plan.clone() };
    let bar = indicatif::ProgressBar::new(plan.seeds.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} seeds {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let report = roomlab_conformance::explore(target, &plan, |so_far| {
        bar.set_position(so_far.seeds);
        bar.set_message(format!("{} found", so_far.findings.len()));
    })
    .await;
    bar.finish_and_clear();
    report
}

/// A suffix that keeps this run's rooms apart from an earlier run's on a server that keeps data.
fn unique_suffix() -> String {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a finding's case to `dir/explore-<seed>.cases` and returns the path.
fn write_finding(dir: &Path, finding: &Finding) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("explore-{:x}.cases", finding.seed));
    std::fs::write(&path, &finding.case).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomlab_conformance::Verdict;
    use roomlab_protocol::Mutant;

    fn plan(seeds: std::ops::Range<u64>) -> ExplorePlan {
        ExplorePlan {
            seeds: seeds.collect(),
            ops: 60,
            time_max: None,
            shrink_runs_max: 60,
            room_prefix: "explore-test".into(),
        }
    }

    /// Grades `case` on the embedded server, with `mutant` planted or clean.
    async fn grade(case: &roomlab_conformance::Case, mutant: Option<Mutant>) -> (Verdict, String) {
        let embedded = Embedded::start(mutant).await.unwrap();
        let report = roomlab_conformance::run(&embedded.target, std::slice::from_ref(case), 1, &|_| {}).await;
        embedded.stop().await;
        (report.cases[0].result, report.cases[0].detail.clone())
    }

    /// Exploration finds a planted deviation in the embedded server, shrinks it, and writes a
    /// case that fails on the planted bug and passes on the clean server; the clean server shows
    /// no deviation over the same seeds.
    #[test]
    fn exploration_finds_and_shrinks_a_planted_deviation_into_a_case() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mutant = Mutant::NoDocDeletedPush;
            let embedded = Embedded::start(Some(mutant)).await.unwrap();
            let report = roomlab_conformance::explore(&embedded.target, &plan(0..8), |_| {}).await;
            embedded.stop().await;
            let finding = report.findings.first().expect("the planted deviation is found");
            assert!(
                finding.ops_shrunk < finding.ops_found,
                "{} of {}",
                finding.ops_shrunk,
                finding.ops_found
            );
            let cases = roomlab_conformance::parse_cases("explore.cases", "explore", &finding.case)
                .unwrap_or_else(|e| panic!("{e}\n{}", finding.case));
            assert_eq!(cases.len(), 1);
            let (planted, detail) = grade(&cases[0], Some(mutant)).await;
            // A frame that never comes is a TIMEOUT; a wrong one FAILED: both are failures.
            assert!(
                matches!(planted, Verdict::Failed | Verdict::Timeout),
                "{planted:?} {detail}\n{}",
                finding.case
            );
            let (clean, detail) = grade(&cases[0], None).await;
            assert_eq!(clean, Verdict::Ok, "{detail}\n{}", finding.case);

            let embedded = Embedded::start(None).await.unwrap();
            let clean = roomlab_conformance::explore(&embedded.target, &plan(0..8), |_| {}).await;
            embedded.stop().await;
            let found: Vec<&str> = clean.findings.iter().map(|f| f.detail.as_str()).collect();
            assert!(found.is_empty(), "the clean server deviates: {found:?}");
            assert_eq!((clean.seeds, clean.ops), (8, 480));
        });
    }

    /// How many seeds exploration needs to find each server mutant (ROOMLAB_EXPLORE_MATRIX=1;
    /// prints a table for BENCHMARKS.md).
    #[test]
    fn exploration_kill_matrix() {
        if std::env::var_os("ROOMLAB_EXPLORE_MATRIX").is_none() {
            return;
        }
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            for mutant in Mutant::ALL.into_iter().filter(|m| m.wire_visible()) {
                let embedded = Embedded::start(Some(mutant)).await.unwrap();
                let mut plan = plan(0..30);
                plan.shrink_runs_max = 60;
                let report = roomlab_conformance::explore(&embedded.target, &plan, |_| {}).await;
                embedded.stop().await;
                let first = report.findings.first();
                println!(
                    "| `{}` | {} of {} seeds | {} | {} |",
                    mutant.name(),
                    report.findings.len(),
                    report.seeds,
                    first.map_or("-".to_string(), |f| format!(
                        "{} ({} -> {} ops)",
                        f.seed, f.ops_found, f.ops_shrunk
                    )),
                    first.map_or("-", |f| f.rule.as_str()),
                );
            }
        });
    }
}
