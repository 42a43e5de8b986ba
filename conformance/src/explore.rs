//! Exploration (`roomlab conform --explore`): seeded random sequences of operations from several
//! connections (users of every role, every message kind, values at the limits the target
//! announces) run against the target one at a time, and every frame it sends is checked against
//! `roomlab_oracle`, the spec written as plain code. A mismatch is shrunk to the fewest operations
//! that still show one and written out as a ready `.cases` case naming the rule it breaks.
//!
//! Operations run one at a time: the next is sent only once every connection has received what the
//! spec says it receives (or a deadline passed), so the target's order is the order sent and a
//! deterministic target gives the same run for the same seed.

use crate::target::Target;
use crate::wire::{self, Connection, Incoming, TokenRequest, Upgrade};
use roomlab_oracle::{Identity, Oracle, Output, PlanLimits, Settings};
use roomlab_protocol::{ClientId, ClientMessage, Limits, Plan, Role, RoomId, UserId};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

mod generate;

use generate::Generator;

/// The connections of every exploration: (case name, user, role).
const PEOPLE: [(&str, &str, Role); 4] = [
    ("a", "u1", Role::Member),
    ("b", "u2", Role::Member),
    ("v", "u3", Role::Viewer),
    ("ad", "u0", Role::Admin),
];

/// How long extra frames are waited for once every expected frame has arrived (times the
/// target's deadline multiplier).
const GRACE_MS: u64 = 25;

/// What to explore.
#[derive(Debug, Clone)]
pub struct ExplorePlan {
    /// The seeds, one run each.
    pub seeds: Vec<u64>,
    /// Operations per run.
    pub ops: usize,
    /// Stop starting new seeds after this long (`--time`).
    pub time_max: Option<Duration>,
    /// Runs the shrinker may spend on one finding.
    pub shrink_runs_max: usize,
    /// A prefix for the rooms the runs use (each run takes a fresh one).
    pub room_prefix: String,
}

/// A deviation from the spec that exploration found and shrank.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The seed that found it.
    pub seed: u64,
    /// The rule the first mismatching frame belongs to (docs/PROTOCOL.md).
    pub rule: String,
    /// What was expected and what arrived, in a sentence.
    pub detail: String,
    /// Operations of the run up to the mismatch, and after shrinking.
    pub ops_found: usize,
    /// Operations after shrinking.
    pub ops_shrunk: usize,
    /// The shrunk run as a `.cases` case that fails where the spec is broken.
    pub case: String,
}

/// What an exploration did.
#[derive(Debug, Clone, Default)]
pub struct ExploreReport {
    /// Seeds run.
    pub seeds: u64,
    /// Operations sent (shrinking not counted).
    pub ops: u64,
    /// Frames compared with the oracle.
    pub frames: u64,
    /// Deviations found, one per failing seed.
    pub findings: Vec<Finding>,
}

/// One operation: a connection (index into [`PEOPLE`]) sends a frame.
#[derive(Debug, Clone)]
struct Op {
    conn: usize,
    frame: Value,
}

/// The first place a run's frames left the spec.
#[derive(Debug, Clone)]
struct Mismatch {
    /// Index of the operation after which it showed (`None`: while connecting).
    op: Option<usize>,
    rule: String,
    detail: String,
}

/// A run of operations: how far it got, and the mismatch, if one showed.
struct Played {
    ops: Vec<Op>,
    frames: u64,
    mismatch: Option<Mismatch>,
    /// The oracle's settings, from the target's `welcome` (none when connecting failed).
    settings: Option<Settings>,
    /// The first answer text of each `mid`, by connection.
    answers: Vec<BTreeMap<u64, String>>,
}

/// Explores the target, calling `progress` after each seed with the report so far.
pub async fn explore(
    target: &Target,
    plan: &ExplorePlan,
    mut progress: impl FnMut(&ExploreReport),
) -> ExploreReport {
    let started = Instant::now();
    let mut report = ExploreReport::default();
    for seed in &plan.seeds {
        if plan.time_max.is_some_and(|max| started.elapsed() >= max) {
            break;
        }
        let room = format!("{}-{seed:x}", plan.room_prefix);
        let played = play(target, &room, Source::Seed(*seed, plan.ops)).await;
        report.seeds += 1;
        report.ops += played.ops.len() as u64;
        report.frames += played.frames;
        if played.mismatch.is_some() {
            report.findings.push(shrink(target, plan, *seed, played).await);
        }
        progress(&report);
    }
    report
}

/// Where a run's operations come from.
enum Source {
    /// Drawn from a seed, this many.
    Seed(u64, usize),
    /// A fixed list (shrinking).
    Fixed(Vec<Op>),
}

/// The open connections of a run and the oracle beside them.
struct Run<'t> {
    target: &'t Target,
    connections: Vec<Option<Connection>>,
    oracle: Option<Oracle>,
    /// The first answer each connection received for each `mid`, as text (replays must repeat it
    /// byte for byte, mutation.replay.same-answer).
    answers: Vec<BTreeMap<u64, String>>,
    frames: u64,
    deadline: Duration,
}

async fn play(target: &Target, room: &str, source: Source) -> Played {
    let deadline = Duration::from_millis((crate::STEP_DEADLINE_MS as f64 * target.timeout_multiplier) as u64);
    let mut run = Run {
        target,
        connections: Vec::new(),
        oracle: None,
        answers: vec![BTreeMap::new(); PEOPLE.len()],
        frames: 0,
        deadline,
    };
    let mut ops = Vec::new();
    let connected = run.connect_all(room).await;
    if let Err(mismatch) = connected {
        run.close_all().await;
        let settings = run.oracle.as_ref().map(|oracle| oracle.settings().clone());
        return Played { ops, frames: run.frames, mismatch: Some(mismatch), settings, answers: run.answers };
    }
    let (mut generator, fixed, count) = match source {
        Source::Seed(seed, count) => {
            (Some(Generator::new(seed, target.capabilities.clone())), Vec::new(), count)
        }
        Source::Fixed(fixed) => {
            let count = fixed.len();
            (None, fixed, count)
        }
    };
    let mut mismatch = None;
    let mut fixed = fixed.into_iter();
    for index in 0..count {
        let op = match &mut generator {
            Some(generator) => {
                let oracle = run.oracle.as_ref().expect("connected");
                let open: Vec<bool> = run.connections.iter().map(Option::is_some).collect();
                generator.next(oracle, &open, &limits_of(oracle))
            }
            None => fixed.next().expect("count is the list's length"),
        };
        ops.push(op.clone());
        if let Err(found) = run.step(&op).await {
            mismatch = Some(Mismatch { op: Some(index), ..found });
            break;
        }
    }
    run.close_all().await;
    let settings = run.oracle.as_ref().map(|oracle| oracle.settings().clone());
    Played { ops, frames: run.frames, mismatch, settings, answers: run.answers }
}

fn limits_of(oracle: &Oracle) -> Limits {
    oracle.settings().limits.clone()
}

impl Run<'_> {
    /// Opens every connection in turn, each greeted, and checks what each receives.
    async fn connect_all(&mut self, room: &str) -> Result<(), Mismatch> {
        let failed = |detail: String| Mismatch { op: None, rule: "conn.hello.first".into(), detail };
        for (index, (name, user, role)) in PEOPLE.iter().enumerate() {
            let role_name = role_word(*role);
            let request = TokenRequest { room, user, role: role_name, plan: "pro", addons: 0 };
            let token = wire::token(self.target, &request, 3600).await.map_err(failed)?;
            let url = self.target.ws_url.replace("{room}", room).replace("{token}", &token);
            let mut connection = match Connection::open(&url).await.map_err(failed)? {
                Upgrade::Open(connection) => connection,
                Upgrade::Status(status) => {
                    return Err(failed(format!("{name}: upgrade answered HTTP {status}")))
                }
            };
            let hello = json!({"type": "hello", "protocol": 1, "client": format!("explore-{name}")});
            connection.send(Message::Text(hello.to_string().into())).await.map_err(failed)?;
            self.connections.push(Some(connection));
            if self.oracle.is_none() {
                let welcome = self.first_welcome(index).await.map_err(failed)?;
                self.oracle = Some(Oracle::new(settings_of(self.target, room, &welcome).map_err(failed)?));
            }
            let oracle = self.oracle.as_mut().expect("made above");
            let identity = Identity {
                user: UserId::new(*user).expect("valid"),
                role: *role,
                plan: Plan::Pro,
                addons: 0,
            };
            let mut expected = oracle.connect(conn_id(index), identity, 0);
            let client = ClientId::new(format!("explore-{name}")).expect("valid");
            expected.extend(oracle.receive(
                conn_id(index),
                ClientMessage::Hello { protocol: 1, client },
                0,
                false,
            ));
            self.compare(expected).await?;
        }
        Ok(())
    }

    /// Waits for the first connection's `welcome` and leaves it in its inbox, for the limits.
    async fn first_welcome(&mut self, index: usize) -> Result<Value, String> {
        let until = Instant::now() + self.deadline;
        let connection = self.connections[index].as_mut().expect("just opened");
        while connection.inbox.is_empty() && connection.receive_until(until).await {}
        match connection.inbox.front() {
            Some(Incoming::Text(text)) => serde_json::from_str(text).map_err(|e| format!("welcome: {e}")),
            other => Err(format!("expected a welcome, got {other:?}")),
        }
    }

    /// Sends one operation and checks what every connection receives.
    async fn step(&mut self, op: &Op) -> Result<(), Mismatch> {
        let Some(connection) = self.connections[op.conn].as_mut() else { return Ok(()) };
        let message: ClientMessage =
            serde_json::from_value(op.frame.clone()).expect("generated frames are messages");
        let sent = connection.send(Message::Text(op.frame.to_string().into())).await;
        if let Err(detail) = sent {
            return Err(Mismatch { op: None, rule: "conn.malformed.survives".into(), detail });
        }
        let oracle = self.oracle.as_mut().expect("connected");
        let expected = oracle.receive(conn_id(op.conn), message, 0, false);
        self.compare(expected).await
    }

    /// Collects what each connection receives until it holds what the spec sends it (plus a short
    /// grace for extras) and compares frame by frame, in order.
    async fn compare(&mut self, expected: Vec<Output>) -> Result<(), Mismatch> {
        let mut by_conn: Vec<Vec<Output>> = vec![Vec::new(); PEOPLE.len()];
        for output in expected {
            let conn = match &output {
                Output::Send { conn, .. } | Output::Yjs { conn, .. } | Output::Close { conn, .. } => *conn,
            };
            by_conn[(conn - 1) as usize].push(output);
        }
        let until = Instant::now() + self.deadline;
        for (index, wanted) in by_conn.iter().enumerate() {
            let Some(connection) = self.connections.get_mut(index).and_then(Option::as_mut) else { continue };
            while connection.inbox.len() < wanted.len() && connection.receive_until(until).await {}
        }
        tokio::time::sleep(self.deadline.mul_f64(GRACE_MS as f64 / crate::STEP_DEADLINE_MS as f64)).await;
        for (index, wanted) in by_conn.into_iter().enumerate() {
            let Some(connection) = self.connections.get_mut(index).and_then(Option::as_mut) else { continue };
            connection.drain();
            let received: Vec<Incoming> = connection.inbox.drain(..).collect();
            let closed = received.iter().any(|incoming| matches!(incoming, Incoming::Closed(..)));
            self.frames += received.len() as u64;
            let answers = &mut self.answers[index];
            check_connection(PEOPLE[index].0, &wanted, &received, answers)?;
            if closed {
                self.connections[index] = None;
            }
        }
        Ok(())
    }

    async fn close_all(&mut self) {
        for connection in self.connections.iter_mut().flatten() {
            connection.close().await;
        }
    }
}

/// Compares one connection's frames with what the spec sends it.
fn check_connection(
    name: &str,
    wanted: &[Output],
    received: &[Incoming],
    answers: &mut BTreeMap<u64, String>,
) -> Result<(), Mismatch> {
    let mismatch = |rule: &str, detail: String| Err(Mismatch { op: None, rule: rule.into(), detail });
    for (position, output) in wanted.iter().enumerate() {
        let got = received.get(position);
        match (output, got) {
            (Output::Send { message, rule, .. }, Some(Incoming::Text(text))) => {
                let expected = comparable(serde_json::to_value(message).expect("messages serialize"));
                let seen = serde_json::from_str::<Value>(text).map(comparable);
                if seen.as_ref().ok() != Some(&expected) {
                    return mismatch(rule, format!("{name} expected {expected}, received {text}"));
                }
                if let Some(mid) = expected.get("mid").and_then(Value::as_u64) {
                    let first = answers.entry(mid).or_insert_with(|| text.clone());
                    if *rule == "mutation.replay.same-answer" && first != text {
                        let detail =
                            format!("{name} replayed mid {mid} answered {text}, first answered {first}");
                        return mismatch(rule, detail);
                    }
                }
            }
            (Output::Close { code, .. }, Some(Incoming::Closed(seen, _))) if *seen == Some(*code) => {}
            (Output::Yjs { .. }, Some(Incoming::Binary(_))) => {}
            (output, got) => {
                let rule = match output {
                    Output::Send { rule, .. } | Output::Yjs { rule, .. } | Output::Close { rule, .. } => {
                        *rule
                    }
                };
                return mismatch(
                    rule,
                    format!("{name} expected {}, received {}", describe(output), shown(got)),
                );
            }
        }
    }
    if let Some(extra) = received.get(wanted.len()) {
        let rule = wanted.last().map_or("errors.typed", |output| match output {
            Output::Send { rule, .. } | Output::Yjs { rule, .. } | Output::Close { rule, .. } => *rule,
        });
        return mismatch(
            rule,
            format!("{name} received {} where the spec sends nothing more", shown(Some(extra))),
        );
    }
    Ok(())
}

/// A frame as compared: an error's `message` is for humans and is left out.
fn comparable(mut value: Value) -> Value {
    if value.get("type").and_then(Value::as_str) == Some("error") {
        if let Some(object) = value.as_object_mut() {
            object.remove("message");
        }
    }
    value
}

fn describe(output: &Output) -> String {
    match output {
        Output::Send { message, .. } => {
            comparable(serde_json::to_value(message).expect("serializes")).to_string()
        }
        Output::Yjs { .. } => "a Yjs frame".into(),
        Output::Close { code, .. } => format!("a close with {code}"),
    }
}

fn shown(incoming: Option<&Incoming>) -> String {
    match incoming {
        None => "nothing".into(),
        Some(Incoming::Text(text)) => text.clone(),
        Some(Incoming::Binary(bytes)) => format!("a binary frame of {} bytes", bytes.len()),
        Some(Incoming::Closed(code, reason)) => format!("a close ({code:?} {reason})"),
    }
}

fn conn_id(index: usize) -> u64 {
    index as u64 + 1
}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Member => "member",
        Role::Admin => "admin",
    }
}

/// The oracle's settings from the first `welcome`: the room and the limits the target announced,
/// and the quotas its capabilities promise.
fn settings_of(target: &Target, room: &str, welcome: &Value) -> Result<Settings, String> {
    let limits: Limits = serde_json::from_value(welcome.get("limits").cloned().unwrap_or(Value::Null))
        .map_err(|e| format!("welcome.limits: {e}"))?;
    let plans = match target.capabilities.contains("quota-small") {
        true => PlanLimits { free_bytes: 1_000, pro_bytes: 2_000, addon_bytes: 1_000 },
        false => PlanLimits::default(),
    };
    let room = RoomId::new(room).map_err(|e| format!("room id {room}: {e}"))?;
    Ok(Settings { room, limits, plans })
}

/// Shrinks a failing run: drops operations (halves, then quarters, down to one at a time) while a
/// run of what is left still leaves the spec, within `plan.shrink_runs_max` runs.
async fn shrink(target: &Target, plan: &ExplorePlan, seed: u64, found: Played) -> Finding {
    let ops_found = found.ops.len();
    let mut best = found;
    let mut runs = 0;
    let mut chunk = best.ops.len().div_ceil(2).max(1);
    while runs < plan.shrink_runs_max {
        let mut start = 0;
        let mut shrank = false;
        while start < best.ops.len() && runs < plan.shrink_runs_max {
            let mut candidate = best.ops.clone();
            candidate.drain(start..(start + chunk).min(candidate.len()));
            runs += 1;
            let room = format!("{}-{seed:x}-s{runs}", plan.room_prefix);
            let played = play(target, &room, Source::Fixed(candidate)).await;
            match played.mismatch.as_ref().and_then(|m| m.op) {
                Some(op) => {
                    best = Played { ops: played.ops[..=op].to_vec(), ..played };
                    shrank = true;
                }
                None => start += chunk,
            }
        }
        if !shrank {
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
    let mismatch = best.mismatch.clone().expect("a finding has a mismatch");
    let case = match &best.settings {
        Some(settings) => case_text(seed, &best, &mismatch, settings),
        None => format!(
            "// seed {seed}: the target failed before any operation: {}\n",
            one_line(&mismatch.detail)
        ),
    };
    Finding {
        seed,
        rule: mismatch.rule,
        detail: mismatch.detail,
        ops_found,
        ops_shrunk: best.ops.len(),
        case,
    }
}

/// The shrunk run as a case: every connection, every operation, and after each what the spec
/// sends each connection (`<<`: the next frame, in order), then a ping on each open connection,
/// answered next, so that an extra frame fails the case too. Replayed answers carry the text of
/// the first answer, which they must repeat byte for byte.
fn case_text(seed: u64, played: &Played, mismatch: &Mismatch, settings: &Settings) -> String {
    let mut text = format!(
        "case {rule}#explore-{seed:x} {rule} MUST\n  about: found by roomlab conform --explore (seed {seed}): {}\n",
        one_line(&mismatch.detail),
        rule = mismatch.rule,
    );
    let mut oracle = Oracle::new(settings.clone());
    let mut open = [true; PEOPLE.len()];
    for (index, (name, user, role)) in PEOPLE.iter().enumerate() {
        text.push_str(&format!("  connect {name} {user} {} client=explore-{name}\n", role_word(*role)));
        let identity =
            Identity { user: UserId::new(*user).expect("valid"), role: *role, plan: Plan::Pro, addons: 0 };
        let _ = oracle.connect(conn_id(index), identity, 0);
        let client = ClientId::new(format!("explore-{name}")).expect("valid");
        let _ = oracle.receive(conn_id(index), ClientMessage::Hello { protocol: 1, client }, 0, false);
    }
    for op in &played.ops {
        if !open[op.conn] {
            continue;
        }
        text.push_str(&format!("  {}> {}\n", PEOPLE[op.conn].0, escaped(&op.frame)));
        let message: ClientMessage =
            serde_json::from_value(op.frame.clone()).expect("generated frames are messages");
        for output in oracle.receive(conn_id(op.conn), message, 0, false) {
            text.push_str(&expectation(&output, &played.answers, &mut open));
        }
    }
    for (index, (name, _, _)) in PEOPLE.iter().enumerate() {
        if open[index] {
            let nonce = 1_000_000 + index;
            text.push_str(&format!("  {name}> {{\"type\":\"ping\",\"nonce\":{nonce}}}\n"));
            text.push_str(&format!("  {name}<< {{\"type\":\"pong\",\"nonce\":{nonce}}}\n"));
        }
    }
    text
}

/// One expected output as a case step.
fn expectation(output: &Output, answers: &[BTreeMap<u64, String>], open: &mut [bool]) -> String {
    match output {
        Output::Send { conn, message, rule } => {
            let index = (*conn - 1) as usize;
            let mut pattern = comparable(serde_json::to_value(message).expect("messages serialize"));
            let mid = pattern.get("mid").and_then(Value::as_u64);
            let first = mid.and_then(|mid| answers[index].get(&mid));
            if let (true, Some(first)) = (*rule == "mutation.replay.same-answer", first) {
                pattern = serde_json::from_str(first).unwrap_or(pattern);
            }
            format!("  {}<< {}\n", PEOPLE[index].0, escaped(&pattern))
        }
        Output::Close { conn, code, .. } => {
            let index = (*conn - 1) as usize;
            open[index] = false;
            format!("  {} closed {code}\n", PEOPLE[index].0)
        }
        Output::Yjs { .. } => String::new(),
    }
}

/// A frame to send in a case: strings that start with `$` are escaped (`$$`), since the case
/// format reads them as variables.
fn escaped(frame: &Value) -> Value {
    match frame {
        Value::String(text) if text.starts_with('$') => Value::String(format!("${text}")),
        Value::Array(items) => Value::Array(items.iter().map(escaped).collect()),
        Value::Object(members) => {
            Value::Object(members.iter().map(|(k, v)| (k.clone(), escaped(v))).collect())
        }
        other => other.clone(),
    }
}

fn one_line(text: &str) -> String {
    let line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    line.chars().take(300).collect()
}
