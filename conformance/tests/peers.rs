//! The suite grades Yjs servers no one here wrote, and servers broken on purpose, truthfully:
//! the stock y-websocket servers from npm (`y-websocket@1.5.4`'s `bin/server.js`,
//! `@y/websocket-server@0.1.1`'s `src/server.js`) pass every y-websocket case they can run and
//! every other case is UNIMPLEMENTED; `@hocuspocus/server`, a Yjs server of another protocol,
//! fails with a message that says so; and three small y-websocket servers broken in one way each
//! (interop/peers/broken.mjs) fail the cases that should catch them, and only those.
//!
//! Needs Node and npm: the test runs `npm ci` in interop/peers when its packages are missing.

use roomlab_conformance::{cases, run, RunReport, Target, Verdict};
use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../interop/peers")
}

/// Installs the pinned npm packages once (package-lock.json), as CI's fresh machine needs. No
/// install scripts run: the servers need no native module unless told to persist.
fn install_packages() {
    let dir = peers_dir();
    if dir.join("node_modules/@y/websocket-server").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm runs (Node and npm must be installed)");
    assert!(status.success(), "npm ci in {} failed: {status}", dir.display());
}

/// A server process killed when the test ends, passing or not.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `node ARGS` in interop/peers with PORT (and HOST) set, and waits for it to listen.
fn start(args: &[&str]) -> (Guard, u16) {
    let port = free_port();
    let child = Command::new("node")
        .args(args)
        .current_dir(peers_dir())
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    let guard = Guard(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "node {args:?} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (guard, port)
}

/// Grades the server `node ARGS` as a target declaring only `y-websocket`.
fn grade(args: &[&str]) -> RunReport {
    let (_server, port) = start(args);
    let file = format!(
        "name = {:?}\nyjs_url = \"ws://127.0.0.1:{port}/{{room}}/{{doc}}/{{field}}\"\ncapabilities = [\"y-websocket\"]\n",
        args.join(" ")
    );
    let target = Target::parse(&file).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(&target, &cases().unwrap(), 8, &|_| {}))
}

fn ids(report: &RunReport, verdict: Verdict) -> BTreeSet<String> {
    report.cases.iter().filter(|c| c.result == verdict).map(|c| c.id.clone()).collect()
}

/// The y-websocket cases a server without a restart command can run.
fn runnable() -> BTreeSet<String> {
    let all = cases().unwrap();
    all.iter().filter(|c| c.needs.iter().all(|need| need == "y-websocket")).map(|c| c.id.clone()).collect()
}

/// Everything outside the y-websocket group is UNIMPLEMENTED, and nothing errs or times out.
fn check_nothing_else_ran(report: &RunReport) {
    let runnable = runnable();
    for case in &report.cases {
        if !runnable.contains(&case.id) {
            assert_eq!(case.result, Verdict::Unimplemented, "{} ran: {}", case.id, case.detail);
        }
        assert!(
            !matches!(case.result, Verdict::Error | Verdict::Timeout),
            "{}: {:?} {}",
            case.id,
            case.result,
            case.detail
        );
    }
}

/// A stock server passes every case it can run; the run exits 0.
fn check_stock(args: &[&str]) {
    let report = grade(args);
    check_nothing_else_ran(&report);
    let failed: Vec<String> = report
        .cases
        .iter()
        .filter(|c| c.result.is_bad())
        .map(|c| format!("{}: {}", c.id, c.detail))
        .collect();
    assert!(failed.is_empty(), "{args:?} failed {failed:#?}");
    assert_eq!(ids(&report, Verdict::Ok), runnable(), "{args:?}");
    assert_eq!(report.exit_code(None), 0);
}

/// A broken server fails exactly the cases in `caught` (each a case that must catch it), passes
/// the others it can run, and the run exits 1.
fn check_broken(mode: &str, caught: &[&str]) {
    let report = grade(&["broken.mjs", mode]);
    check_nothing_else_ran(&report);
    let caught: BTreeSet<String> = caught.iter().map(|id| id.to_string()).collect();
    assert_eq!(ids(&report, Verdict::Failed), caught, "{mode}");
    let passed: BTreeSet<String> = runnable().difference(&caught).cloned().collect();
    assert_eq!(ids(&report, Verdict::Ok), passed, "{mode}");
    assert_eq!(report.exit_code(None), 1);
}

#[test]
fn real_and_broken_yjs_servers_are_graded_truthfully() {
    install_packages();
    check_stock(&["node_modules/y-websocket/bin/server.js"]);
    check_stock(&["node_modules/@y/websocket-server/src/server.js"]);

    let report = grade(&["hocuspocus.mjs"]);
    check_nothing_else_ran(&report);
    assert_eq!(ids(&report, Verdict::Failed), runnable(), "Hocuspocus fails every y-websocket case");
    for case in report.cases.iter().filter(|c| c.result == Verdict::Failed) {
        assert!(case.detail.contains("not y-websocket compatible"), "{}: {}", case.id, case.detail);
    }

    check_broken("last-update", &["yws.late-join#1", "yws.drop#1"]);
    check_broken("no-step2", &["yws.offline-upload#1"]);
    check_broken("no-awareness", &["yws.awareness#1", "yws.awareness#2"]);
}
