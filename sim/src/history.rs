//! The history checker: the simulation's oracle. The room's journal is its claim of what it did
//! (every input of every commit group, in the order it handled them); the checker verifies the
//! claim against what each client sent, replays it through `roomlab_oracle` (docs/PROTOCOL.md as
//! plain code, sharing no logic with the engine), and compares every frame each client received
//! with what the spec says that connection must receive, in order. A connection that ended may
//! have lost the tail of its frames; one still open at the end must have received every one.
//! Finally each client's view of each subscription is compared with the oracle's answer.

use roomlab_client::View;
use roomlab_oracle::{Oracle, Output};
use roomlab_protocol::{
    decode, decode_server, encode_server, ClientMessage, ErrorBody, ServerMessage, SubId, YSync, YjsFrame,
};
use roomlab_server::{JournalEntry, JournalKind};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A frame a client sent or received.
#[derive(Debug, Clone)]
pub(crate) enum Frame {
    Text(String),
    Yjs(YjsFrame),
}

/// One connection of one client, as the client saw it.
#[derive(Debug)]
pub(crate) struct Epoch {
    /// The client's end of the TCP connection (what the server sees as the peer).
    pub local: SocketAddr,
    pub opened_ms: u64,
    pub sent: Vec<Frame>,
    pub received: Vec<Frame>,
    pub ended: bool,
    /// A hostile connection (crate::hostile): the server answers its undecodable frames itself,
    /// outside the room, so those answers are in no journal.
    pub hostile: bool,
}

/// What every client sent and received, connection by connection.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    clients: Mutex<BTreeMap<usize, Vec<Epoch>>>,
}

impl Observed {
    /// Client `index` opened a TCP connection from `local`.
    pub fn opened(&self, index: usize, local: SocketAddr, now_ms: u64) {
        let epoch = Epoch {
            local,
            opened_ms: now_ms,
            sent: Vec::new(),
            received: Vec::new(),
            ended: false,
            hostile: false,
        };
        self.clients.lock().expect("observed lock").entry(index).or_default().push(epoch);
    }

    /// Hostile connection `index` opened a TCP connection from `local`.
    pub fn opened_hostile(&self, index: usize, local: SocketAddr, now_ms: u64) {
        self.opened(index, local, now_ms);
        self.with_current(index, |epoch| epoch.hostile = true);
    }

    fn with_current(&self, index: usize, act: impl FnOnce(&mut Epoch)) {
        let mut clients = self.clients.lock().expect("observed lock");
        if let Some(epoch) = clients.get_mut(&index).and_then(|epochs| epochs.last_mut()) {
            act(epoch);
        }
    }

    pub fn sent(&self, index: usize, frame: Frame) {
        self.with_current(index, |epoch| epoch.sent.push(frame));
    }

    pub fn received(&self, index: usize, frame: Frame) {
        self.with_current(index, |epoch| epoch.received.push(frame));
    }

    pub fn ended(&self, index: usize) {
        self.with_current(index, |epoch| epoch.ended = true);
    }
}

/// The room's journal, as the server wrote it.
pub(crate) type JournalLog = Arc<Mutex<Vec<JournalEntry>>>;

/// A frame the spec says a connection receives, and the rule that says so.
#[derive(Debug, Clone)]
struct Expected {
    frame: ExpectedFrame,
    rule: &'static str,
}

#[derive(Debug, Clone)]
enum ExpectedFrame {
    Text(ServerMessage),
    Yjs(YjsFrame),
}

/// One connection as the room's journal tells it, and what the oracle says it must receive.
#[derive(Debug)]
struct Record {
    conn: u64,
    peer: Option<SocketAddr>,
    /// Who the room says is on the connection.
    identity: roomlab_oracle::Identity,
    /// The messages the room says this connection sent, in order.
    claimed: Vec<Frame>,
    claimed_messages: Vec<ClientMessage>,
    expected: Vec<Expected>,
    /// The close the spec orders, once it does.
    closed: Option<(u16, &'static str)>,
}

/// Per rule id: how often the oracle exercised a branch of it, and how many frames it decided were
/// checked against what a client received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleCount {
    /// Times the oracle took a branch of the rule.
    pub exercised: u64,
    /// Received frames compared with a frame the rule decided.
    pub checked: u64,
}

/// What the history check found.
pub(crate) struct Verdict {
    pub failures: Vec<String>,
    pub rules: BTreeMap<String, RuleCount>,
    pub oracle: Oracle,
}

/// Failures kept per check; the first of each tells the story.
const FAILURES_PER_CHECK_MAX: usize = 8;

/// Replays the journal through the oracle and compares it with what the clients saw.
/// `tokens` gives each client's identity as its token states it (user, role, plan, add-ons).
pub(crate) fn check(
    journal: &[JournalEntry],
    observed: &Observed,
    tokens: &BTreeMap<usize, roomlab_oracle::Identity>,
    oracle: Oracle,
) -> Verdict {
    if let Some(path) = std::env::var_os("ROOMLAB_JOURNAL_DUMP") {
        // For debugging a disagreement: the journal, one entry a line.
        let lines: Vec<String> = journal.iter().map(|entry| format!("{entry:?}")).collect();
        let _ = std::fs::write(path, lines.join("\n"));
    }
    let (records, oracle, diverged, mut checked) = replay(journal, oracle);
    let mut failures: Vec<String> = diverged.into_iter().collect();
    let clients = observed.clients.lock().expect("observed lock");
    let matched = match_connections(&records, &clients, &mut failures);
    let mut decoded = Decoded::default();
    for (record, (index, epoch_index)) in records.iter().zip(&matched) {
        let Some(epoch_index) = epoch_index else { continue };
        let epoch = &clients[index][*epoch_index];
        let name = match index.checked_sub(crate::hostile::HOSTILE_INDEX_BASE) {
            Some(hostile) => format!("hostile h{hostile}"),
            None => format!("c{index}"),
        };
        let actor = format!(
            "{name} (its connection {} of {}, opened at {} ms; server conn {})",
            epoch_index + 1,
            clients[index].len(),
            epoch.opened_ms,
            record.conn
        );
        if tokens.get(index).is_some_and(|token| *token != record.identity) {
            failures.push(format!(
                "conn.token.required: the room took {actor} for {:?}, but its token says {:?}",
                record.identity, tokens[index]
            ));
        }
        match check_claim(record, epoch, &actor) {
            // The room's order is a merge of each connection's own order.
            Ok(()) => *checked.entry("room.one-authority").or_default() += 1,
            Err(failure) => failures.push(failure),
        }
        match check_received(record, epoch, &actor, &mut checked, &mut decoded) {
            // A connection still open received exactly what the spec sends: nothing more.
            Ok(()) if !epoch.ended => *checked.entry("query.no-empty-diffs").or_default() += 1,
            Ok(()) => {}
            Err(failure) => failures.push(failure),
        }
    }
    for (index, epochs) in clients.iter() {
        for (epoch_index, epoch) in epochs.iter().enumerate() {
            let claimed = matched.contains(&(*index, Some(epoch_index)));
            if !claimed && epoch.received.iter().any(|f| matches!(f, Frame::Text(_))) {
                failures.push(format!(
                    "journal: c{index}'s connection {} from {} received frames, but the room never journaled it",
                    epoch_index + 1,
                    epoch.local
                ));
            }
        }
    }
    failures.truncate(FAILURES_PER_CHECK_MAX);
    let mut rules: BTreeMap<String, RuleCount> = BTreeMap::new();
    for (branch, count) in oracle.coverage() {
        rules.entry(rule_of(branch).to_string()).or_default().exercised += count;
    }
    for (rule, count) in checked {
        let total = rules.entry(rule_of(rule).to_string()).or_default();
        total.checked += count;
        // A rule checked on the wire was exercised, whether or not the oracle named it.
        total.exercised = total.exercised.max(count);
    }
    Verdict { failures, rules, oracle }
}

/// Rules every frame of a kind holds the server to, besides the one that decided it: a compared
/// ack checks the room-wide sequence it carries, a compared refusal the error shape, a compared
/// push its order and that the connection subscribed to it.
fn implied_rules(message: &ServerMessage) -> &'static [&'static str] {
    match message {
        ServerMessage::Ack { .. } => {
            &["seq.room-wide", "mutation.flavours", "ack.after-commit", "mutation.validated"]
        }
        ServerMessage::Error(body) if body.code == roomlab_protocol::ErrorCode::QuotaExceeded => {
            &["errors.typed", "errors.precedence", "errors.quota-shape", "mutation.validated"]
        }
        ServerMessage::Error(_) => &["errors.typed", "errors.precedence"],
        ServerMessage::Welcome { .. } => &["limits.announced", "conn.token.required", "users.recorded"],
        ServerMessage::Pong { .. } => &["conn.ping"],
        ServerMessage::QueryResult { .. } => {
            &["query.user-documents", "query.read-access", "room.shared-data"]
        }
        ServerMessage::QueryDiff { .. } => {
            &["seq.pushes-ordered", "docsub.only-subscribed", "query.converges", "query.read-access"]
        }
        ServerMessage::DocSnapshot { .. }
        | ServerMessage::DocDiff { .. }
        | ServerMessage::DocDeleted { .. } => {
            &["seq.pushes-ordered", "docsub.only-subscribed", "list.order", "seq.doc"]
        }
        _ => &[],
    }
}

/// The rule id of a branch label (`docs.create:exists` is a branch of `docs.create`).
fn rule_of(branch: &str) -> &str {
    branch.split(':').next().unwrap_or(branch)
}

/// Runs the journal through the oracle: one record per journaled connection.
/// Also gives the rules the journal itself exercised: commit groups (ack.group-commit) and
/// restarts the room came back from (ack.durable), each judged by what follows them.
type Replayed = (Vec<Record>, Oracle, Option<String>, BTreeMap<&'static str, u64>);

fn replay(journal: &[JournalEntry], mut oracle: Oracle) -> Replayed {
    let mut diverged = None;
    let mut exercised: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut opened = 0;
    let mut records: Vec<Record> = Vec::new();
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    for entry in journal {
        match entry {
            JournalEntry::Opened { .. } => {
                opened += 1;
                if opened > 1 {
                    *exercised.entry("ack.durable").or_default() += 1;
                }
                oracle.restart();
                for index in std::mem::take(&mut open).into_values() {
                    records[index].closed.get_or_insert((1001, "ack.durable"));
                }
            }
            JournalEntry::Group { now_ms, inputs, committed, seq, .. } => {
                let before = (!committed).then(|| oracle.clone());
                if inputs.len() > 1 || !committed {
                    *exercised.entry("ack.group-commit").or_default() += 1;
                }
                let mut outputs = Vec::new();
                for input in inputs {
                    let conn = input.conn.0;
                    outputs.extend(replay_input(
                        &mut oracle,
                        &mut records,
                        &mut open,
                        conn,
                        &input.kind,
                        *now_ms,
                        input.commit_failed,
                    ));
                }
                if *committed && *seq != oracle.seq() && diverged.is_none() {
                    let inputs: Vec<String> =
                        inputs.iter().map(|input| format!("{:?}", input.kind)).collect();
                    diverged = Some(format!(
                        "seq.room-wide: after a group of {} inputs the room claims seq {seq}, the spec counts {}; the group: {}",
                        inputs.len(),
                        oracle.seq(),
                        inputs.join("; ")
                    ));
                }
                match before {
                    None => deliver(outputs, &mut records, &open),
                    Some(before) => {
                        // ack.group-commit: nothing of the group was kept or shown, and every
                        // connection of the room was closed with 1011.
                        // The room forgot its connections with its uncommitted memory, so what
                        // they still send is processed by no one.
                        oracle = before;
                        oracle.restart();
                        for index in open.values() {
                            records[*index].closed.get_or_insert((1011, "ack.group-commit"));
                        }
                    }
                }
            }
        }
    }
    (records, oracle, diverged, exercised)
}

fn replay_input(
    oracle: &mut Oracle,
    records: &mut Vec<Record>,
    open: &mut BTreeMap<u64, usize>,
    conn: u64,
    kind: &JournalKind,
    now_ms: u64,
    commit_failed: bool,
) -> Vec<Output> {
    match kind {
        JournalKind::Connect { identity, peer } => {
            open.insert(conn, records.len());
            records.push(Record {
                conn,
                peer: *peer,
                identity: oracle_identity(identity),
                claimed: Vec::new(),
                claimed_messages: Vec::new(),
                expected: Vec::new(),
                closed: None,
            });
            oracle.connect(conn, oracle_identity(identity), now_ms)
        }
        JournalKind::Message(message) => {
            if let Some(index) = open.get(&conn) {
                records[*index].claimed_messages.push(message.clone());
            }
            oracle.receive(conn, message.clone(), now_ms, commit_failed)
        }
        JournalKind::Yjs(frame) => {
            if let Some(index) = open.get(&conn) {
                records[*index].claimed.push(Frame::Yjs(frame.clone()));
            }
            oracle.receive_yjs(conn, frame.clone(), now_ms, commit_failed)
        }
        JournalKind::Disconnect => {
            open.remove(&conn);
            oracle.disconnect(conn)
        }
        JournalKind::Http { identity, mutation } => {
            oracle.http_mutation(oracle_identity(identity), mutation.clone(), now_ms).1
        }
    }
}

pub(crate) fn oracle_identity(identity: &roomlab_engine::Identity) -> roomlab_oracle::Identity {
    roomlab_oracle::Identity {
        user: identity.user.clone(),
        role: identity.role,
        plan: identity.plan,
        addons: identity.addons,
    }
}

/// Hands a committed group's outputs to their connections' records.
fn deliver(outputs: Vec<Output>, records: &mut [Record], open: &BTreeMap<u64, usize>) {
    for output in outputs {
        let (conn, expected) = match output {
            Output::Send { conn, message, rule } => {
                (conn, Expected { frame: ExpectedFrame::Text(message), rule })
            }
            Output::Yjs { conn, frame, rule } => (conn, Expected { frame: ExpectedFrame::Yjs(frame), rule }),
            Output::Close { conn, code, rule } => {
                if let Some(index) = open.get(&conn) {
                    records[*index].closed.get_or_insert((code, rule));
                }
                continue;
            }
        };
        let Some(index) = open.get(&conn) else { continue };
        let record = &mut records[*index];
        if record.closed.is_none() {
            record.expected.push(expected);
        }
    }
}

/// Pairs each journaled connection with the client connection whose address it names (the first
/// not yet paired, in order); unpaired journal entries are failures.
fn match_connections(
    records: &[Record],
    clients: &BTreeMap<usize, Vec<Epoch>>,
    failures: &mut Vec<String>,
) -> Vec<(usize, Option<usize>)> {
    let mut by_address: BTreeMap<SocketAddr, VecDeque<(usize, usize)>> = BTreeMap::new();
    for (index, epochs) in clients {
        for (epoch_index, epoch) in epochs.iter().enumerate() {
            by_address.entry(epoch.local).or_default().push_back((*index, epoch_index));
        }
    }
    let mut matched = Vec::new();
    for record in records {
        let found = record.peer.and_then(|peer| by_address.get_mut(&peer).and_then(VecDeque::pop_front));
        match found {
            Some((index, epoch_index)) => matched.push((index, Some(epoch_index))),
            None => {
                if !record.claimed_messages.is_empty() || !record.expected.is_empty() {
                    failures.push(format!(
                        "journal: the room journaled connection {} from {:?}, which no client opened",
                        record.conn, record.peer
                    ));
                }
                matched.push((usize::MAX, None));
            }
        }
    }
    matched
}

/// The room may only claim inputs the client sent on that connection, in the order it sent them.
fn check_claim(record: &Record, epoch: &Epoch, actor: &str) -> Result<(), String> {
    let sent = epoch.sent.iter().filter_map(|frame| match frame {
        Frame::Text(text) => Some(text),
        Frame::Yjs(_) => None,
    });
    for (position, (claimed, sent)) in record
        .claimed_messages
        .iter()
        .zip(sent.chain(std::iter::repeat_n(&String::new(), usize::MAX)))
        .enumerate()
    {
        let matches = decode(sent.as_bytes(), usize::MAX).is_ok_and(|sent| sent == *claimed);
        if !matches {
            return Err(format!(
                "journal: the room says {actor} sent {} as its message {}, but the client sent {}",
                roomlab_protocol::encode(claimed),
                position + 1,
                if sent.is_empty() { "nothing more" } else { sent }
            ));
        }
    }
    let sent_yjs: Vec<&YjsFrame> =
        epoch.sent.iter().filter_map(|f| if let Frame::Yjs(y) = f { Some(y) } else { None }).collect();
    let claimed_yjs: Vec<&YjsFrame> =
        record.claimed.iter().filter_map(|f| if let Frame::Yjs(y) = f { Some(y) } else { None }).collect();
    if claimed_yjs.len() > sent_yjs.len() || claimed_yjs.iter().zip(&sent_yjs).any(|(a, b)| a != b) {
        return Err(format!(
            "journal: the room claims Yjs frames from {actor} that it did not send in that order"
        ));
    }
    Ok(())
}

/// What the client received on the connection is what the spec says it receives, in order: all of
/// it if the connection is still open, a prefix if it ended.
fn check_received<'a>(
    record: &Record,
    epoch: &'a Epoch,
    actor: &str,
    checked: &mut BTreeMap<&'static str, u64>,
    decoded: &mut Decoded<'a>,
) -> Result<(), String> {
    let expected_text: Vec<(&ServerMessage, &'static str)> = record
        .expected
        .iter()
        .filter_map(|e| if let ExpectedFrame::Text(m) = &e.frame { Some((m, e.rule)) } else { None })
        .collect();
    let received_text =
        epoch.received.iter().filter_map(|f| if let Frame::Text(t) = f { Some(t) } else { None });
    let mut count = 0;
    let mut position = 0;
    for text in received_text {
        let seen = decoded
            .decode(text)
            .map_err(|e| format!("wire: {actor} received a frame it cannot decode ({e}): {text}"))?;
        if epoch.hostile && answered_outside_the_room(seen) {
            *checked.entry("conn.malformed.survives").or_default() += 1;
            continue;
        }
        position += 1;
        count = position;
        let position = position - 1;
        let Some((expected, rule)) = expected_text.get(position) else {
            return Err(format!(
                "{actor} received frame {} {text}, but the spec gives this connection only {} frames (the last: {})",
                position + 1,
                expected_text.len(),
                expected_text.last().map(|(m, _)| encode_server(m)).unwrap_or_else(|| "none".into())
            ));
        };
        if !same_message(seen, expected) {
            // Where the two part: whether the received frame comes later in the spec's order
            // (something the spec sends was skipped) or nowhere (the server sent something extra).
            let later = expected_text[position..].iter().position(|(m, _)| same_message(seen, m));
            let context = match later {
                Some(skip) => format!("; the spec sends it {skip} frames later"),
                None => "; the spec sends it nowhere on this connection".to_string(),
            };
            return Err(format!(
                "{rule}: {actor} frame {}: expected {}, received {text}{context}",
                position + 1,
                encode_server(expected)
            ));
        }
        *checked.entry(rule).or_default() += 1;
        for implied in implied_rules(expected) {
            *checked.entry(implied).or_default() += 1;
        }
    }
    if !epoch.ended {
        let missing: Vec<&(&ServerMessage, &'static str)> = expected_text[count.min(expected_text.len())..]
            .iter()
            .filter(|(m, _)| !matches!(m, ServerMessage::Pong { .. }))
            .collect();
        if let Some((message, rule)) = missing.first() {
            return Err(format!(
                "{rule}: {actor} is still connected but never received frame {} {} ({} missing)",
                count + 1,
                encode_server(message),
                missing.len()
            ));
        }
    }
    check_received_yjs(record, epoch, actor)
}

/// conn.malformed.survives: a frame that does not decode as a message never reaches the room; the
/// server answers it with a `bad_frame` that refers to nothing.
fn answered_outside_the_room(message: &ServerMessage) -> bool {
    matches!(message, ServerMessage::Error(body)
        if body.code == roomlab_protocol::ErrorCode::BadFrame
            && body.mid.is_none()
            && body.req.is_none()
            && body.sub.is_none()
            && body.doc.is_none())
}

/// Received frames decoded once each: a server fans a change out to every subscriber, so most
/// frames a run receives equal a frame another client received, and decoding is a pure function of
/// the bytes.
#[derive(Default)]
struct Decoded<'a> {
    frames: BTreeMap<&'a str, ServerMessage>,
}

impl<'a> Decoded<'a> {
    fn decode(&mut self, text: &'a str) -> Result<&ServerMessage, roomlab_protocol::DecodeError> {
        if !self.frames.contains_key(text) {
            let message = decode_server(text.as_bytes(), usize::MAX)?;
            self.frames.insert(text, message);
        }
        Ok(&self.frames[text])
    }
}

/// Yjs frames: the same kinds for the same fields, in order (their content is judged by the final
/// convergence of every field with the oracle's merged text).
fn check_received_yjs(record: &Record, epoch: &Epoch, actor: &str) -> Result<(), String> {
    let expected: Vec<&YjsFrame> = record
        .expected
        .iter()
        .filter_map(|e| if let ExpectedFrame::Yjs(y) = &e.frame { Some(y) } else { None })
        .collect();
    let received: Vec<&YjsFrame> =
        epoch.received.iter().filter_map(|f| if let Frame::Yjs(y) = f { Some(y) } else { None }).collect();
    for (position, seen) in received.iter().enumerate() {
        let Some(expected) = expected.get(position) else {
            return Err(format!(
                "yjs.broadcast: {actor} received Yjs frame {} ({}) the spec does not send it",
                position + 1,
                yjs_kind(seen)
            ));
        };
        if (&seen.doc, &seen.field, yjs_kind(seen)) != (&expected.doc, &expected.field, yjs_kind(expected)) {
            return Err(format!(
                "yjs.sync: {actor} Yjs frame {}: expected {}/{} {}, received {}/{} {}",
                position + 1,
                expected.doc,
                expected.field,
                yjs_kind(expected),
                seen.doc,
                seen.field,
                yjs_kind(seen)
            ));
        }
    }
    if !epoch.ended && received.len() < expected.len() {
        let next = expected[received.len()];
        return Err(format!(
            "yjs.broadcast: {actor} is still connected but never received {}/{} {}",
            next.doc,
            next.field,
            yjs_kind(next)
        ));
    }
    Ok(())
}

fn yjs_kind(frame: &YjsFrame) -> &'static str {
    match YSync::parse(&frame.payload) {
        Ok(YSync::Step1(_)) => "step1",
        Ok(YSync::Step2(_)) => "step2",
        Ok(YSync::Update(_)) => "update",
        Ok(YSync::Awareness(_)) => "awareness",
        Err(_) => "malformed",
    }
}

/// Two messages agree; an error's `message` is for humans, so errors agree on their code and
/// their structured fields.
fn same_message(seen: &ServerMessage, expected: &ServerMessage) -> bool {
    if seen == expected {
        return true;
    }
    match (seen, expected) {
        (ServerMessage::Error(seen), ServerMessage::Error(expected)) => {
            without_text(seen) == without_text(expected)
        }
        (ServerMessage::QueryDiff { .. }, ServerMessage::QueryDiff { .. }) => by_id(seen) == by_id(expected),
        _ => false,
    }
}

/// query.live: the order of entries within `added`, `changed` and `removed` carries no meaning
/// (clients place documents by the query's order), so diffs compare with each list sorted by id.
fn by_id(diff: &ServerMessage) -> ServerMessage {
    let mut diff = diff.clone();
    if let ServerMessage::QueryDiff { added, changed, removed, .. } = &mut diff {
        added.sort_by(|a, b| a.id.cmp(&b.id));
        changed.sort_by(|a, b| a.id.cmp(&b.id));
        removed.sort();
    }
    diff
}

fn without_text(body: &ErrorBody) -> ErrorBody {
    ErrorBody { message: String::new(), ..body.clone() }
}

/// A client's view of a subscription equals the oracle's answer to the same subscription now.
pub(crate) fn same_answer(view: &View, answer: Option<&ServerMessage>) -> bool {
    // A deleted bucket is not bound any more: the spec refuses a fresh subscription to it.
    let Some(answer) = answer else { return matches!(view, View::Refused(_) | View::BucketDeleted(_)) };
    match (view, answer) {
        (View::Query { docs, .. }, ServerMessage::QueryResult { docs: expected, .. }) => docs == expected,
        // sys.views.seq: session views carry the room's current sequence, which moved on since.
        (View::Doc(doc), ServerMessage::DocSnapshot { doc: expected, .. }) if is_session_view(&doc.id) => {
            doc.data == expected.data
        }
        (View::Doc(doc), ServerMessage::DocSnapshot { doc: expected, .. }) => doc == expected,
        (View::Deleted(_), ServerMessage::DocDeleted { .. }) => true,
        (View::Missing(_), ServerMessage::DocMissing { .. }) => true,
        (View::Bucket { version, value }, ServerMessage::BucketValue { version: v, value: expected, .. }) => {
            version == v && value == expected
        }
        (View::BucketDeleted(_), ServerMessage::Error(body)) => {
            body.code == roomlab_protocol::ErrorCode::NotFound
        }
        (View::Assets(assets), ServerMessage::AssetsList { assets: expected, .. }) => assets == expected,
        (View::Refused(body), ServerMessage::Error(expected)) => body.code == expected.code,
        _ => false,
    }
}

/// The subscription id final-view checks ask the oracle with.
pub(crate) fn check_sub() -> SubId {
    SubId::new("check").expect("valid")
}

/// `sys:session` and `sys:stage:<doc>`: views of a user's staged work.
fn is_session_view(doc: &roomlab_protocol::DocId) -> bool {
    doc.as_str() == "sys:session" || doc.as_str().starts_with("sys:stage:")
}
