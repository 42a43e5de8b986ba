//! Load over the wire, against any target: many connections sending confirmed mutations with a
//! window of unanswered ones each (how many are acknowledged per second, and whether any was lost
//! or applied twice), and the fan-out latency of one write to many subscribers.
//!
//! "None applied twice" is read from the room's sequence: every mutation here is a create that
//! takes exactly one sequence, so the room must advance by exactly the number acknowledged.

use crate::target::Target;
use crate::wire::{self, Connection, Incoming, TokenRequest, Upgrade};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Users the load connections are spread over (each first connection of a user takes a sequence,
/// so they all connect once before the run).
const LOAD_USERS: usize = 10;
/// No frame for this long ends a connection's run as stuck.
const SILENCE_MS_MAX: u64 = 30_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// The room (fresh rooms give exact sequence accounting).
    pub room: String,
    /// Connections sending mutations at once.
    pub connections: usize,
    /// Confirmed mutations in all, spread evenly over the connections.
    pub mutations: usize,
    /// Unanswered mutations each connection keeps in flight.
    pub window: usize,
    /// Subscribers of the fan-out measurement (0: skip it).
    pub fanout_subscribers: usize,
    /// Writes of the fan-out measurement.
    pub fanout_writes: usize,
}

/// What a load run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Mutations sent.
    pub sent: u64,
    /// Mutations acknowledged.
    pub acked: u64,
    /// Mutations refused.
    pub refused: u64,
    /// The first few refusals, each with its reason.
    pub refusals: Vec<String>,
    /// Sent and never answered.
    pub lost: u64,
    /// Sequences the room took beyond one per acknowledged mutation (applied twice), or acks for
    /// one sequence given twice.
    pub duplicated: u64,
    /// Wall time of the mutation phase, in milliseconds.
    pub wall_ms: u64,
    /// Acknowledged mutations per second.
    pub mutations_per_s: f64,
    /// Fan-out: milliseconds from a write's send to each subscriber's push, median.
    pub fanout_p50_ms: f64,
    /// Fan-out: the 99th percentile.
    pub fanout_p99_ms: f64,
    /// Fan-out samples (subscribers × writes).
    pub fanout_samples: u64,
}

async fn open(target: &Target, room: &str, user: &str) -> Result<Connection, String> {
    let request = TokenRequest { room, user, role: "member", plan: "pro", addons: 0 };
    let token = wire::token(target, &request, 3_600).await?;
    let url = target.ws_url.replace("{room}", room).replace("{token}", &token);
    match Connection::open(&url).await? {
        Upgrade::Open(connection) => Ok(connection),
        Upgrade::Status(status) => Err(format!("the upgrade for {user} was refused with HTTP {status}")),
    }
}

/// The next text frame as JSON; an error when the connection ends or stays silent.
async fn next_json(connection: &mut Connection) -> Result<Value, String> {
    loop {
        if let Some(incoming) = connection.inbox.pop_front() {
            match incoming {
                Incoming::Text(text) => {
                    return serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
                }
                Incoming::Binary(_) => continue,
                Incoming::Closed(code, reason) => return Err(format!("closed ({code:?}): {reason}")),
            }
        }
        let deadline = Instant::now() + Duration::from_millis(SILENCE_MS_MAX);
        if !connection.receive_until(deadline).await && connection.inbox.is_empty() {
            return Err("no frame for 30 s".into());
        }
    }
}

async fn send(connection: &mut Connection, message: Value) -> Result<(), String> {
    connection.send(Message::text(message.to_string())).await
}

/// Connects and greets; returns the welcome's room sequence.
async fn greet(connection: &mut Connection, client: &str) -> Result<u64, String> {
    send(connection, serde_json::json!({"type": "hello", "protocol": 1, "client": client})).await?;
    loop {
        let message = next_json(connection).await?;
        if message["type"] == "welcome" {
            return message["seq"].as_u64().ok_or_else(|| format!("a welcome without seq: {message}"));
        }
    }
}

/// The room's sequence now, from a fresh connection's welcome.
async fn room_seq(target: &Target, room: &str, client: &str) -> Result<u64, String> {
    let mut connection = open(target, room, "u0").await?;
    let seq = greet(&mut connection, client).await;
    connection.close().await;
    seq
}

/// One connection's share: `count` creates, `window` in flight.
struct Share {
    index: usize,
    count: usize,
    window: usize,
}

#[derive(Default)]
struct ShareResult {
    sent: u64,
    acked: BTreeSet<u64>,
    seqs: Vec<u64>,
    refused: Vec<String>,
    failure: Option<String>,
}

async fn drive(target: &Target, room: &str, share: Share) -> ShareResult {
    let mut result = ShareResult::default();
    if let Err(e) = drive_inner(target, room, &share, &mut result).await {
        result.failure = Some(format!("connection {}: {e}", share.index));
    }
    result
}

async fn drive_inner(
    target: &Target,
    room: &str,
    share: &Share,
    result: &mut ShareResult,
) -> Result<(), String> {
    let user = format!("u{}", share.index % LOAD_USERS);
    let mut connection = open(target, room, &user).await?;
    greet(&mut connection, &format!("load-{}", share.index)).await?;
    let mut next_mid = 1;
    let mut answered = 0;
    while answered < share.count {
        while next_mid <= share.count && next_mid - 1 - answered < share.window {
            let create = serde_json::json!({"type": "mutate", "mid": next_mid, "op": "create",
                "doc": format!("ld-{}-{next_mid}", share.index), "doc_type": "load", "data": {"n": next_mid}});
            send(&mut connection, create).await?;
            result.sent += 1;
            next_mid += 1;
        }
        let message = next_json(&mut connection).await?;
        let Some(mid) = message["mid"].as_u64() else { continue };
        match message["type"].as_str() {
            Some("ack") => {
                if !result.acked.insert(mid) {
                    return Err(format!("mutation {mid} was acknowledged twice"));
                }
                result.seqs.push(message["seq"].as_u64().unwrap_or(0));
            }
            Some("error") => result.refused.push(format!("mutation {mid}: {}", message["code"])),
            _ => continue,
        }
        answered += 1;
    }
    connection.close().await;
    Ok(())
}

/// Runs the mutation phase and, when asked, the fan-out phase.
pub async fn load(target: &Target, plan: &LoadPlan) -> Result<LoadReport, String> {
    // Every user's first connection takes a sequence; take them all before the count starts.
    for user in 0..LOAD_USERS.min(plan.connections.max(1)) {
        let mut connection = open(target, &plan.room, &format!("u{user}")).await?;
        greet(&mut connection, &format!("load-warm-{user}")).await?;
        connection.close().await;
    }
    let start_seq = room_seq(target, &plan.room, "load-start").await?;
    let per = plan.mutations / plan.connections.max(1);
    let extra = plan.mutations % plan.connections.max(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..plan.connections {
        let (target, room) = (target.clone(), plan.room.clone());
        let share = Share { index, count: per + usize::from(index < extra), window: plan.window.max(1) };
        tasks.spawn(async move { drive(&target, &room, share).await });
    }
    let mut report = LoadReport::default();
    let mut seqs = Vec::with_capacity(plan.mutations);
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| format!("a load task failed: {e}"))?;
        report.sent += result.sent;
        report.acked += result.acked.len() as u64;
        seqs.extend(result.seqs);
        report.refused += result.refused.len() as u64;
        let room_left = 5usize.saturating_sub(report.refusals.len());
        report.refusals.extend(result.refused.into_iter().take(room_left));
        failures.extend(result.failure);
    }
    report.wall_ms = started.elapsed().as_millis() as u64;
    report.mutations_per_s = report.acked as f64 / started.elapsed().as_secs_f64().max(1e-9);
    if let Some(failure) = failures.first() {
        return Err(format!("{} connection(s) failed; the first: {failure}", failures.len()));
    }
    let end_seq = room_seq(target, &plan.room, "load-end").await?;
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    report.lost = report.sent - report.acked - report.refused;
    let extra_seqs = (end_seq - start_seq).saturating_sub(report.acked);
    report.duplicated = extra_seqs + (seqs.len() - distinct.len()) as u64;
    if plan.fanout_subscribers > 0 {
        fanout(target, plan, &mut report).await?;
    }
    Ok(report)
}

/// One write to `fanout_subscribers` document subscribers, `fanout_writes` times, one after
/// another: the time from each write's send to each subscriber's push.
async fn fanout(target: &Target, plan: &LoadPlan, report: &mut LoadReport) -> Result<(), String> {
    let room = format!("{}-fanout", plan.room);
    let mut writer = open(target, &room, "u0").await?;
    greet(&mut writer, "fanout-writer").await?;
    let create = serde_json::json!({"type": "mutate", "mid": 1, "op": "create", "doc": "hot",
        "doc_type": "load", "data": {"n": 0}});
    send(&mut writer, create).await?;
    let mut subscribers = Vec::with_capacity(plan.fanout_subscribers);
    for index in 0..plan.fanout_subscribers {
        let mut connection = open(target, &room, &format!("u{}", index % LOAD_USERS)).await?;
        greet(&mut connection, &format!("fanout-{index}")).await?;
        send(&mut connection, serde_json::json!({"type": "subscribe", "sub": "h", "doc": "hot"})).await?;
        wait_for_n(&mut connection, 0).await?;
        subscribers.push(connection);
    }
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<(u64, Instant)>(plan.fanout_subscribers.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    let writes = plan.fanout_writes as u64;
    for mut connection in subscribers {
        let sender = sender.clone();
        tasks.spawn(async move {
            for n in 1..=writes {
                wait_for_n(&mut connection, n).await?;
                let _ = sender.send((n, Instant::now())).await;
            }
            connection.close().await;
            Ok::<(), String>(())
        });
    }
    drop(sender);
    let mut latencies_ms = Vec::with_capacity(plan.fanout_subscribers * plan.fanout_writes);
    for n in 1..=writes {
        let sent = Instant::now();
        let patch = serde_json::json!({"type": "mutate", "mid": n + 1, "op": "patch", "doc": "hot", "data": {"n": n}});
        send(&mut writer, patch).await?;
        for _ in 0..plan.fanout_subscribers {
            let (got, at) = receiver.recv().await.ok_or("a fan-out subscriber ended early")?;
            assert_eq!(got, n, "subscribers report writes in order, each waited for");
            latencies_ms.push(at.duration_since(sent).as_secs_f64() * 1_000.0);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("a fan-out task failed: {e}"))??;
    }
    writer.close().await;
    latencies_ms.sort_by(f64::total_cmp);
    let at = |q: f64| latencies_ms[((latencies_ms.len() - 1) as f64 * q).round() as usize];
    if !latencies_ms.is_empty() {
        (report.fanout_p50_ms, report.fanout_p99_ms) = (at(0.50), at(0.99));
    }
    report.fanout_samples = latencies_ms.len() as u64;
    Ok(())
}

/// Waits for the subscription's document at `data.n == n`.
async fn wait_for_n(connection: &mut Connection, n: u64) -> Result<(), String> {
    loop {
        let message = next_json(connection).await?;
        if message["type"] == "doc:snapshot" && message["doc"]["data"]["n"].as_u64() == Some(n) {
            return Ok(());
        }
    }
}
