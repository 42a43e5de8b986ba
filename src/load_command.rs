//! `roomlab load`: confirmed mutations per second from many connections and the fan-out latency of
//! one write to many subscribers, against a target file or the embedded server (docs: BENCHMARKS.md).

use crate::embedded::Embedded;
use anyhow::{Context, Result};
use roomlab_conformance::{LoadPlan, LoadReport, Target};
use std::path::PathBuf;

/// Arguments of `roomlab load`.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// A target file (as `roomlab conform` takes); the embedded roomlab server (file-backed rooms,
    /// default quotas) when absent.
    #[arg(long)]
    target: Option<PathBuf>,
    /// Connections sending mutations at once, all in one room.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Confirmed mutations in all (creates, spread evenly over the connections).
    #[arg(long, default_value_t = 100_000)]
    mutations: usize,
    /// Unanswered mutations each connection keeps in flight.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Subscribers of one document for the fan-out latency (0 skips it).
    #[arg(long, default_value_t = 1_000)]
    fanout: usize,
    /// Writes the fan-out measurement times.
    #[arg(long, default_value_t = 20)]
    fanout_writes: usize,
    /// The room (a fresh one per run by default, so the sequence accounting starts clean).
    #[arg(long)]
    room: Option<String>,
    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// This process's peak resident set (VmHWM), in MiB, where /proc tells it.
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The report as a table whose values all start in one column, whatever the labels hold.
fn print(report: &LoadReport, plan: &LoadPlan, rss: Option<f64>, embedded: bool) {
    let mut rows = vec![
        ("connections".to_string(), plan.connections.to_string()),
        ("mutations sent / acked".to_string(), format!("{} / {}", report.sent, report.acked)),
        ("refused".to_string(), report.refused.to_string()),
        ("lost".to_string(), report.lost.to_string()),
        ("applied twice".to_string(), report.duplicated.to_string()),
        (
            "confirmed mutations / s".to_string(),
            format!(
                "{:.0} ({:.1} s wall, window {})",
                report.mutations_per_s,
                report.wall_ms as f64 / 1e3,
                plan.window
            ),
        ),
    ];
    if report.fanout_samples > 0 {
        rows.push((
            format!("fan-out to {}", crate::plural(plan.fanout_subscribers, "subscriber")),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms ({})",
                report.fanout_p50_ms,
                report.fanout_p99_ms,
                crate::plural(report.fanout_samples as usize, "sample")
            ),
        ));
    }
    if let Some(rss) = rss {
        let whose = if embedded { "this process: server and load generator" } else { "the load generator" };
        rows.push(("peak RSS".to_string(), format!("{rss:.0} MiB ({whose})")));
    }
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 2;
    for (label, value) in rows {
        println!("{label:<width$}{value}");
    }
    for refusal in &report.refusals {
        println!("  refused: {refusal}");
    }
}

/// Runs `roomlab load`; false when a mutation was lost or applied twice.
pub fn run_load(args: LoadArgs) -> Result<bool> {
    if args.connections == 0 || args.mutations < args.connections {
        return Err(crate::usage(format!(
            "--connections must be at least 1 and at most --mutations (got {} connections for {} mutations)",
            args.connections, args.mutations
        )));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (target, embedded): (Target, Option<Embedded>) = match &args.target {
            Some(path) => (crate::conform_command::load_target(path)?, None),
            None => {
                let quotas = roomlab_engine::Quotas::default();
                let embedded = Embedded::start_with(quotas, None).await?;
                (embedded.target.clone(), Some(embedded))
            }
        };
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
        let plan = LoadPlan {
            room: args.room.clone().unwrap_or_else(|| format!("load-{stamp}")),
            connections: args.connections,
            mutations: args.mutations,
            window: args.window,
            fanout_subscribers: args.fanout,
            fanout_writes: args.fanout_writes,
        };
        eprintln!(
            "roomlab load: {} connections, {} confirmed mutations (window {}), then fan-out to {} subscribers, against {}",
            plan.connections, plan.mutations, plan.window, plan.fanout_subscribers, target.name
        );
        let report = roomlab_conformance::load(&target, &plan).await.map_err(anyhow::Error::msg)?;
        print(&report, &plan, peak_rss_mib(None), embedded.is_some());
        if let Some(path) = &args.json {
            let text = serde_json::to_string_pretty(&report)?;
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(embedded) = embedded {
            embedded.stop().await;
        }
        Ok(report.lost == 0 && report.duplicated == 0)
    })
}
