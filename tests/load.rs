//! 1,000 concurrent connections on loopback and 100,000 confirmed mutations against `roomlab serve`:
//! none lost, none applied twice, the server's peak RSS reported. Slow (about half a minute on two
//! cores), so it runs only with `ROOMLAB_LOAD=1`:
//!
//! ```text
//! ROOMLAB_LOAD=1 cargo test --release --test load -- --nocapture
//! ```

use roomlab_conformance::{LoadPlan, Target};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const SECRET: &str = "load-secret";

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc tells a process's status");
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_and_a_hundred_thousand_confirmed_mutations_lose_nothing() {
    if std::env::var_os("ROOMLAB_LOAD").is_none() {
        eprintln!("skipped: set ROOMLAB_LOAD=1 to run the load test");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomlab"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env("ROOMLAB_SECRET", SECRET)
        .stdout(Stdio::piped())
        .spawn()
        .expect("roomlab serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    let server = Guard(child);
    let address =
        first.split("ws://").nth(1).and_then(|rest| rest.split('/').next()).expect(&first).to_string();
    let target = Target::roomlab("roomlab serve", &address, SECRET.as_bytes());
    let plan = LoadPlan {
        room: "load".into(),
        connections: 1_000,
        mutations: 100_000,
        window: 4,
        fanout_subscribers: 1_000,
        fanout_writes: 10,
    };
    let report = roomlab_conformance::load(&target, &plan).await.expect("the load runs");
    let rss = peak_rss_mib(server.0.id());
    eprintln!(
        "{} acked of {} sent, {:.0} mutations/s, fan-out p50 {:.1} ms p99 {:.1} ms, server peak RSS {rss:.0} MiB",
        report.acked, report.sent, report.mutations_per_s, report.fanout_p50_ms, report.fanout_p99_ms
    );
    assert_eq!((report.sent, report.acked, report.refused), (100_000, 100_000, 0), "{:?}", report.refusals);
    assert_eq!(report.lost, 0, "mutations lost");
    assert_eq!(report.duplicated, 0, "mutations applied twice");
    assert_eq!(report.fanout_samples, 10_000);
}
