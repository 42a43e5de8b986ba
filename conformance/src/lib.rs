//! The conformance suite: cases that grade any implementation of docs/PROTOCOL.md over a real
//! WebSocket, a small target adapter, and reports (terminal, JSON, JUnit XML, baselines).
//!
//! Cases are data (`conformance/cases/*.cases`, see [`parse_cases`] for the format), grouped by the
//! source documents: `records`, `documents`, `storage`, `yjs` and `connection`. Each case names the
//! rule id it checks, its level, and the capabilities it needs; each runs in a room of its own, so
//! cases run concurrently. The suite talks to the target only through the wire.

mod case;
mod explore;
mod load;
mod pattern;
mod report;
mod runner;
mod target;
mod wire;
mod ypeer;

pub use case::{parse_cases, Case, CaseError, Level, PeerStep, Step};
pub use explore::{explore, ExplorePlan, ExploreReport, Finding};
pub use load::{load, LoadPlan, LoadReport};
pub use pattern::Bindings;
pub use report::{Baseline, CaseReport, FrameRecord, RunReport, Verdict};
pub use runner::{RESTART_DEADLINE_MS, STEP_DEADLINE_MS};
pub use target::{Target, TargetAction, TargetError, TargetHook, TokenSource, CAPABILITIES};

use futures_util::StreamExt;
use std::collections::BTreeSet;

/// The case files built into the suite: (group, file name, text).
pub const CASE_FILES: &[(&str, &str, &str)] = &[
    ("connection", "connection.cases", include_str!("../cases/connection.cases")),
    ("records", "records.cases", include_str!("../cases/records.cases")),
    ("documents", "documents.cases", include_str!("../cases/documents.cases")),
    ("storage", "storage.cases", include_str!("../cases/storage.cases")),
    ("yjs", "yjs.cases", include_str!("../cases/yjs.cases")),
    ("y-websocket", "y-websocket.cases", include_str!("../cases/y-websocket.cases")),
];

/// Rules of docs/PROTOCOL.md that no case checks, each with the reason (`conformance/uncovered.toml`).
pub const UNCOVERED: &str = include_str!("../uncovered.toml");

/// Concurrent cases at most.
pub const JOBS_MAX: usize = 64;

/// Every built-in case, in file order.
pub fn cases() -> Result<Vec<Case>, CaseError> {
    let mut all = Vec::new();
    for (group, file, text) in CASE_FILES {
        all.extend(parse_cases(file, group, text)?);
    }
    check_unique(&all)?;
    Ok(all)
}

/// Refuses a list of cases in which two share an id.
pub fn check_unique(cases: &[Case]) -> Result<(), CaseError> {
    let mut ids = BTreeSet::new();
    match cases.iter().find(|case| !ids.insert(case.id.as_str())) {
        Some(case) => Err(CaseError {
            file: case.group.clone(),
            line: 0,
            message: format!("duplicate case id {}", case.id),
        }),
        None => Ok(()),
    }
}

/// The cases of every `*.cases` file in `dir` (a user's own), each file its own group named after
/// it, in file-name order.
pub fn cases_in(dir: &std::path::Path) -> Result<Vec<Case>, CaseError> {
    let unreadable = |message: String| CaseError { file: dir.display().to_string(), line: 0, message };
    let entries = std::fs::read_dir(dir).map_err(|e| unreadable(e.to_string()))?;
    let mut paths: Vec<std::path::PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "cases"))
        .collect();
    paths.sort();
    let mut all = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(&path).map_err(|e| unreadable(format!("{}: {e}", path.display())))?;
        let group = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        all.extend(parse_cases(&path.display().to_string(), &group, &text)?);
    }
    Ok(all)
}

/// Checks, before any case runs, that every endpoint the target names accepts TCP connections
/// within `deadline`; the error names the first that does not.
pub async fn probe(target: &Target, deadline: std::time::Duration) -> Result<(), String> {
    let urls = [Some(&target.ws_url), Some(&target.http_base), target.yjs_url.as_ref()];
    for url in urls.into_iter().flatten().filter(|url| !url.is_empty()) {
        let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let shown = url.split('?').next().unwrap_or(url);
        match tokio::time::timeout(deadline, tokio::net::TcpStream::connect(authority)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(format!("the target is unreachable: {shown} ({error})")),
            Err(_) => return Err(format!("the target is unreachable: {shown} (no answer in {deadline:?})")),
        }
    }
    Ok(())
}

/// The cases whose id matches one of `only` (all when empty) and none of `skip`; globs use `*`.
pub fn select(cases: Vec<Case>, only: &[String], skip: &[String]) -> Result<Vec<Case>, String> {
    let compile = |globs: &[String]| -> Result<Vec<glob::Pattern>, String> {
        globs.iter().map(|g| glob::Pattern::new(g).map_err(|e| format!("glob {g:?}: {e}"))).collect()
    };
    let (only, skip) = (compile(only)?, compile(skip)?);
    Ok(cases
        .into_iter()
        .filter(|case| only.is_empty() || only.iter().any(|p| p.matches(&case.id)))
        .filter(|case| !skip.iter().any(|p| p.matches(&case.id)))
        .collect())
}

/// Runs `cases` against `target`, `jobs` at a time (cases that restart the target or are marked
/// `alone` run one by one, after the others), and calls `progress` after each case.
pub async fn run(
    target: &Target,
    cases: &[Case],
    jobs: usize,
    progress: &(dyn Fn(&CaseReport) + Sync),
) -> RunReport {
    let started = tokio::time::Instant::now();
    let prefix = run_prefix();
    let restarts = |case: &Case| case.alone || case.steps.iter().any(|s| matches!(s, Step::Restart { .. }));
    let room = |index: usize| format!("{prefix}-{index}");
    let concurrent = futures_util::stream::iter(cases.iter().enumerate().filter(|(_, c)| !restarts(c)))
        .map(|(index, case)| async move {
            let report = runner::run_case(target, case, room(index)).await;
            progress(&report);
            (index, report)
        })
        .buffer_unordered(jobs.clamp(1, JOBS_MAX));
    let mut reports: Vec<(usize, CaseReport)> = concurrent.collect().await;
    for (index, case) in cases.iter().enumerate().filter(|(_, c)| restarts(c)) {
        let report = runner::run_case(target, case, room(index)).await;
        progress(&report);
        reports.push((index, report));
    }
    reports.sort_by_key(|(index, _)| *index);
    RunReport {
        target: target.name.clone(),
        cases: reports.into_iter().map(|(_, r)| r).collect(),
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

/// A room-name prefix no earlier run used, so that a durable target's old rooms never meet a case.
fn run_prefix() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("conf-{:x}", nanos % (1u128 << 48))
}

/// The rule ids of docs/PROTOCOL.md with their levels, read from its `**rule.id** (MUST)` and
/// `(SHOULD, **rule.id**)` marks.
pub fn protocol_rules(protocol_md: &str) -> Vec<(String, Level)> {
    let mut rules = Vec::new();
    let mut rest = protocol_md;
    while let Some(start) = rest.find("**") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("**") else { break };
        let id = &after[..end];
        let tail = after[end + 2..].trim_start();
        let tail = tail.strip_prefix(':').unwrap_or(tail).trim_start();
        let before = &rest[..start];
        let level = if tail.starts_with("(MUST") || before.ends_with("(MUST, ") {
            Some(Level::Must)
        } else if tail.starts_with("(SHOULD") || before.ends_with("(SHOULD, ") {
            Some(Level::Should)
        } else {
            None
        };
        if let Some(level) = level.filter(|_| id.contains('.') && !id.contains(' ')) {
            rules.push((id.to_string(), level));
        }
        rest = &after[end + 2..];
    }
    rules
}
