//! The invariants, checked on snapshots of the world: the server's room, every client's cache and
//! outcomes, and a replay of every acknowledged mutation into a fresh engine.

use crate::history::{self, RuleCount};
use crate::trace::SharedTrace;
use crate::workload::{body, note, NOTES, VIEWER_MARK};
use crate::world::{engine_config, World, ROOM};
use roomlab_client::{Outcome, View};
use roomlab_engine::{Identity, Room};
use roomlab_oracle::Oracle;
use roomlab_protocol::{DocId, ErrorCode, FieldName, Mutation, Role, RoomId, ServerMessage, UserId};
use std::collections::BTreeMap;

/// Broken invariants, each a sentence; at most a few of each kind are kept.
#[derive(Debug, Default)]
pub(crate) struct Failures(Vec<String>);

const FAILURES_MAX: usize = 20;

impl Failures {
    pub fn push(&mut self, failure: String) {
        if self.0.len() < FAILURES_MAX {
            self.0.push(failure);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

impl Extend<String> for Failures {
    fn extend<I: IntoIterator<Item = String>>(&mut self, failures: I) {
        for failure in failures {
            self.push(failure);
        }
    }
}

/// No client ever receives a document its user may not read: `private` documents are readable by
/// their owner only. A leak is written into the trace as a failure marker that the end checks find.
pub(crate) fn private_leak(user: &UserId, text: &str, trace: &SharedTrace, actor: &str) {
    if !text.contains("\"private\"") {
        return;
    }
    let Ok(message) = roomlab_protocol::decode_server(text.as_bytes(), usize::MAX) else { return };
    let docs: Vec<&roomlab_protocol::DocSnapshot> = match &message {
        ServerMessage::QueryResult { docs, .. } => docs.iter().collect(),
        ServerMessage::QueryDiff { added, changed, .. } => added.iter().chain(changed).collect(),
        ServerMessage::DocSnapshot { doc, .. } => vec![doc],
        _ => Vec::new(),
    };
    for doc in docs {
        if doc.doc_type.as_str() == "private" && doc.owner != *user {
            let text = format!(
                "LEAK {actor} (user {user}) received private document {} owned by {}",
                doc.id, doc.owner
            );
            trace.lock().expect("trace lock").record_wire_failure(format!("access: {text}"));
        }
    }
}

/// What one client's connection has shown of docs/PROTOCOL.md mutation.replay.internal-not-remembered:
/// after answering a mutation `internal` the server closes the connection and processes nothing
/// more it sent, so no frame may follow that answer on the same connection.
#[derive(Default)]
pub(crate) struct AfterInternal {
    /// The mutation answered `internal` on the current connection, if one was.
    failed_mid: std::sync::Mutex<Option<u64>>,
}

impl AfterInternal {
    /// A frame (text, or `None` for a Yjs frame) arrived.
    pub fn received(&self, text: Option<&str>, trace: &SharedTrace, actor: &str) {
        let mut failed_mid = self.failed_mid.lock().expect("after-internal lock");
        if let Some(mid) = *failed_mid {
            let frame = text.map_or_else(|| "a Yjs frame".to_string(), |t| t.chars().take(160).collect());
            let text = format!(
                "close: {actor} received {frame} after mutation {mid} was answered internal on the same \
                 connection (the server must close it: mutation.replay.internal-not-remembered)"
            );
            trace.lock().expect("trace lock").record_wire_failure(text);
            *failed_mid = None;
            return;
        }
        // Cheap test first: nearly no frame is an internal error.
        let Some(text) = text.filter(|t| t.contains("\"internal\"")) else { return };
        if let Ok(ServerMessage::Error(body)) = roomlab_protocol::decode_server(text.as_bytes(), usize::MAX) {
            if body.code == ErrorCode::Internal {
                *failed_mid = body.mid;
            }
        }
    }

    /// The connection ended (or a new one began).
    pub fn connection_ended(&self) {
        *self.failed_mid.lock().expect("after-internal lock") = None;
    }
}

/// Checks that hold at any moment: the room's own invariants (usage equals what is stored) and
/// that no user's usage is past their limit.
pub(crate) fn checkpoint(world: &World<'_>, now_ms: u64) -> Vec<String> {
    let mut failures = world.trace.lock().expect("trace lock").wire_failures().to_vec();
    if !world.engine_checks {
        return failures;
    }
    let Some(room) = world.room() else { return failures };
    // A room that panicked while holding its lock (an engine assertion) is a finding, and its
    // half-updated state cannot be checked further.
    let Ok(room) = room.lock() else {
        failures.push(format!("the room panicked before {now_ms} ms (its lock is poisoned)"));
        return failures;
    };
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| room.check_invariants())) {
        let why = panic.downcast_ref::<String>().cloned().unwrap_or_else(|| "unknown".into());
        failures.push(format!("room invariant broken at {now_ms} ms: {why}"));
    }
    failures.extend(viewer_text_in_server(&room, now_ms));
    failures.extend(membership_keeps_seq(world, &room, now_ms));
    let quotas = engine_config(world.scenario).quotas;
    let clients = world.clients.lock().expect("clients lock");
    let mut identities: BTreeMap<UserId, Identity> = BTreeMap::new();
    for v in clients.iter() {
        identities.entry(v.identity.user.clone()).or_insert_with(|| v.identity.clone());
    }
    for (user, identity) in identities {
        let (usage, limit) = (room.usage(&user), quotas.limit(identity.plan, identity.addons));
        if usage > limit {
            failures.push(format!(
                "quota: {user} uses {usage} bytes, past their limit of {limit} at {now_ms} ms"
            ));
        }
    }
    failures
}

/// Delete and restore leave a document's `seq` as it was (docs.restore.same-seq): no document,
/// in the room or in any client's view, ever carries the sequence that its own acknowledged
/// remove or restore took (both take a sequence of their own, which no content change shares).
fn membership_keeps_seq(world: &World<'_>, room: &Room, now_ms: u64) -> Vec<String> {
    let mut taken: BTreeMap<(DocId, u64), String> = BTreeMap::new();
    let clients = world.clients.lock().expect("clients lock");
    for v in clients.iter() {
        v.client.with_core(|core| {
            for (mid, outcome) in core.outcomes() {
                let Outcome::Ack(ack) = outcome else { continue };
                let (doc, what) = match core.answered_mutation(*mid) {
                    Some(Mutation::Remove { doc, .. }) => (doc, "remove"),
                    Some(Mutation::Restore { doc }) => (doc, "restore"),
                    _ => continue,
                };
                taken.insert((doc.clone(), ack.seq), format!("the {what} of c{} mutation {mid}", v.index));
            }
        });
    }
    if taken.is_empty() {
        return Vec::new();
    }
    let mut failures = Vec::new();
    let mut judge = |where_: &str, doc: &roomlab_protocol::DocSnapshot| {
        if let Some(what) = taken.get(&(doc.id.clone(), doc.seq)) {
            failures.push(format!(
                "restore: {where_} holds {} at seq {}, the sequence {what} took, at {now_ms} ms \
                 (delete and restore must leave a document's seq as it was)",
                doc.id, doc.seq
            ));
        }
    };
    for (doc, _) in room.export().docs {
        judge("the server's room", &doc);
    }
    for v in clients.iter() {
        v.client.with_core(|core| {
            for (_, view) in core.views() {
                let docs = match view {
                    View::Query { docs, .. } => docs.as_slice(),
                    View::Doc(doc) => std::slice::from_ref(doc),
                    _ => continue,
                };
                for doc in docs {
                    judge(&format!("c{}'s view", v.index), doc);
                }
            }
        });
    }
    failures
}

/// The checks after the liveness phase, when every client is settled: the history check (every
/// frame every client received, against the oracle run in the room's claimed order), each client's
/// final views and Yjs texts against the oracle, and the clients' own histories. Also gives the
/// rule coverage of the run.
pub(crate) fn final_checks(world: &World<'_>, now_ms: u64) -> (Vec<String>, BTreeMap<String, RuleCount>) {
    let mut failures = Vec::new();
    let checkpoint_found = checkpoint(world, now_ms);
    noted(world, now_ms, "final checkpoint", checkpoint_found, &mut failures);
    let verdict = {
        let journal = world.recording.journal.lock().expect("journal lock");
        let tokens: BTreeMap<usize, roomlab_oracle::Identity> = world
            .clients
            .lock()
            .expect("clients lock")
            .iter()
            .map(|v| (v.index, history::oracle_identity(&v.identity)))
            .collect();
        history::check(
            &journal,
            &world.recording.observed,
            &tokens,
            Oracle::new(oracle_settings(world.scenario)),
        )
    };
    let checked: u64 = verdict.rules.values().map(|count| count.checked).sum();
    let history_name = format!("history against the oracle ({checked} checks of received frames by rule)");
    noted(world, now_ms, &history_name, verdict.failures, &mut failures);
    noted(
        world,
        now_ms,
        "final views against the oracle",
        final_views(world, &verdict.oracle),
        &mut failures,
    );
    noted(
        world,
        now_ms,
        "Yjs texts against the oracle",
        yjs_convergence(world, &verdict.oracle),
        &mut failures,
    );
    noted(world, now_ms, "client histories", client_histories(world), &mut failures);
    noted(world, now_ms, "own lifecycles", own_lifecycles(world), &mut failures);
    noted(world, now_ms, "quota refusals", quota_refusals(world), &mut failures);
    (failures, verdict.rules)
}

/// Records one check's outcome on the trace (passed, or how many failures it found) and keeps
/// its failures, so a trace shows every check that ran, not only the ones that failed.
pub(crate) fn noted(
    world: &World<'_>,
    now_ms: u64,
    name: &str,
    found: Vec<String>,
    failures: &mut impl Extend<String>,
) {
    let outcome = match found.len() {
        0 => "passed".to_string(),
        1 => "1 failure".to_string(),
        n => format!("{n} failures"),
    };
    world.note(now_ms, &format!("check {name}: {outcome}"));
    failures.extend(found);
}

/// The oracle's settings: the limits and quotas the scenario gives the room, taken from the
/// scenario itself, not from the engine.
fn oracle_settings(scenario: &crate::scenario::Scenario) -> roomlab_oracle::Settings {
    let config = engine_config(scenario);
    roomlab_oracle::Settings {
        room: RoomId::new(ROOM).expect("valid"),
        limits: config.limits,
        plans: roomlab_oracle::PlanLimits {
            free_bytes: scenario.quotas.free_bytes,
            pro_bytes: scenario.quotas.pro_bytes,
            addon_bytes: scenario.quotas.addon_bytes,
        },
    }
}

/// The server's text of a field it has loaded.
fn server_text(room: &Room, doc: &DocId, field: &FieldName) -> Option<String> {
    let state = room.yjs_state(doc, field)?;
    Some(roomlab_client::text_of_state(field, &state).expect("the room's own Yjs state decodes"))
}

/// No viewer's Yjs edit is ever applied (yjs.access): only viewers type [`VIEWER_MARK`].
fn viewer_text_in_server(room: &Room, now_ms: u64) -> Vec<String> {
    let mut failures = Vec::new();
    for k in 0..NOTES {
        let Some(text) = server_text(room, &note(k), &body()) else { continue };
        if text.contains(VIEWER_MARK) {
            failures.push(format!(
                "access: a viewer's Yjs edit reached the server's {}/body at {now_ms} ms: {}",
                note(k),
                json_text(&text)
            ));
        }
    }
    failures
}

/// Every open rich-text field converged with the oracle's merge of every accepted update
/// (yjs.sync, yjs.broadcast, yjs.persist): a writer's text equals it; a viewer's equals it once its
/// own refused marks are taken out, since a refused edit stays in the viewer's local document.
fn yjs_convergence(world: &World<'_>, oracle: &Oracle) -> Vec<String> {
    let mut failures = Vec::new();
    for v in world.clients.lock().expect("clients lock").iter() {
        v.client.with_core(|core| {
            for (doc, field) in core.yjs().keys() {
                let key = (doc.clone(), field.clone());
                // A viewer's refused edits are its marks, taken out below; anyone else's refused
                // edit (the document went away meanwhile) stays local until the next sync.
                let diverged = core.yjs().diverged(&key) && v.identity.role != Role::Viewer;
                if core.yjs().refused(&key).is_some() || diverged {
                    continue;
                }
                let ours = core.yjs().text(&(doc.clone(), field.clone())).unwrap_or_default();
                let ours = if v.identity.role == Role::Viewer { ours.replace(VIEWER_MARK, "") } else { ours };
                match oracle.yjs_text(doc, field) {
                    Some(theirs) if theirs == ours => {}
                    // No state: no accepted update ever reached the field, or its document was
                    // purged (which the spec does not tell the field's open clients). Every frame
                    // of it was still judged by the history check.
                    None => {}
                    Some(theirs) => failures.push(format!(
                        "yjs.broadcast: c{} ({}) has {doc}/{field} as {}, the spec's merge of every accepted update is {}",
                        v.index,
                        v.identity.user,
                        json_text(&ours),
                        json_text(&theirs)
                    )),
                }
            }
        });
    }
    failures
}

/// Each client's view of each subscription equals the oracle's answer to the same subscription
/// (query.converges, client.cache.ordering, docsub.live).
fn final_views(world: &World<'_>, oracle: &Oracle) -> Vec<String> {
    let mut failures = Vec::new();
    let sub = history::check_sub();
    for v in world.clients.lock().expect("clients lock").iter() {
        let identity = history::oracle_identity(&v.identity);
        v.client.with_core(|core| {
            for (target, view) in core.views() {
                // A refused subscription is not live on the server: it keeps the refusal it got,
                // whatever the server would answer now, until the next reconnect sends it again.
                if matches!(view, View::Refused(_)) {
                    continue;
                }
                failures.extend(list_order(v.index, view));
                let answer = oracle.answer(&identity, &sub, target);
                if !history::same_answer(view, answer.as_ref()) {
                    let target = serde_json::to_string(target).unwrap_or_default();
                    let answer = answer
                        .map(|a| roomlab_protocol::encode_server(&a))
                        .unwrap_or_else(|| "a refusal".into());
                    failures.push(format!(
                        "query.converges: c{} ({}) sees {} for {target}, the spec answers {answer}",
                        v.index,
                        v.identity.user,
                        view_json(view),
                    ));
                }
            }
        });
    }
    failures
}

/// A text as a JSON string: quoted, with its control characters escaped.
fn json_text(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// What a client's subscription shows, as JSON with the protocol's field names, for a failure
/// message that people read.
fn view_json(view: &View) -> String {
    let value = match view {
        View::Waiting => serde_json::json!("waiting for the first answer"),
        View::Query { seq, docs } => serde_json::json!({ "seq": seq, "docs": docs }),
        View::Doc(doc) => serde_json::json!({ "doc": doc }),
        View::Deleted(seq) => serde_json::json!({ "deleted_at_seq": seq }),
        View::Missing(seq) => serde_json::json!({ "missing_at_seq": seq }),
        View::Bucket { version, value } => serde_json::json!({ "version": version, "value": value }),
        View::BucketDeleted(seq) => serde_json::json!({ "bucket_deleted_at_seq": seq }),
        View::Assets(assets) => serde_json::json!({ "assets": assets }),
        View::Refused(body) => serde_json::json!({ "refused": body }),
    };
    value.to_string()
}

/// Every list a client shows is in the one list order, (key, item id) (list.order).
fn list_order(index: usize, view: &View) -> Vec<String> {
    let docs: Vec<&roomlab_protocol::DocSnapshot> = match view {
        View::Doc(doc) => vec![doc],
        View::Query { docs, .. } => docs.iter().collect(),
        _ => Vec::new(),
    };
    let mut failures = Vec::new();
    for doc in docs {
        for (list, items) in &doc.lists {
            let sorted = items
                .windows(2)
                .all(|w| (w[0].key.as_str(), w[0].id.as_str()) <= (w[1].key.as_str(), w[1].id.as_str()));
            if !sorted {
                let order: Vec<String> =
                    items.iter().map(|i| format!("{}@{}", i.id, i.key.as_str())).collect();
                failures.push(format!(
                    "list order: c{index} shows {}/{list} as {}, not by (key, item id)",
                    doc.id,
                    serde_json::to_string(&order).unwrap_or_default()
                ));
            }
        }
    }
    failures
}

/// Per client: pushes never went back in time, acknowledgements increase with mutation ids, and no
/// viewer write was ever acknowledged.
fn client_histories(world: &World<'_>) -> Vec<String> {
    let mut failures = Vec::new();
    for v in world.clients.lock().expect("clients lock").iter() {
        v.client.with_core(|core| {
            failures.extend(core.violations().iter().map(|violation| format!("ordering: c{}: {violation}", v.index)));
            let mut last: Option<(u64, u64)> = None;
            for (mid, outcome) in core.outcomes() {
                let Outcome::Ack(ack) = outcome else { continue };
                let mutation = core.answered_mutation(*mid);
                if v.identity.role == Role::Viewer && !is_session_end(mutation) {
                    let mutation = serde_json::to_string(&mutation).unwrap_or_default();
                    failures.push(format!("access: viewer c{} had mutation {mid} {mutation} acknowledged at seq {}", v.index, ack.seq));
                }
                if let Some((previous_mid, previous_seq)) = last {
                    if ack.seq < previous_seq {
                        failures.push(format!(
                            "sequence: c{} mutation {mid} acknowledged at seq {} after mutation {previous_mid} at seq {previous_seq}",
                            v.index, ack.seq
                        ));
                    }
                }
                last = Some((*mid, ack.seq));
            }
        });
    }
    failures
}

/// What a client knows of a document only it writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Life {
    Live,
    Deleted,
}

/// Documents `q<client>-<n>` are written by that client alone, one mutation after another in id
/// order, so its own answers tell their lifecycle: creating one it removed (and did not restore
/// or purge since) must answer `deleted`, never `exists` (docs.create.deleted-id), and creating a
/// live one `exists`. An indefinite answer leaves the state unknown until the next ack.
fn own_lifecycles(world: &World<'_>) -> Vec<String> {
    use roomlab_protocol::ErrorCode;
    let mut failures = Vec::new();
    for v in world.clients.lock().expect("clients lock").iter() {
        let prefix = format!("q{}-", v.index);
        v.client.with_core(|core| {
            let mut lives: BTreeMap<roomlab_protocol::DocId, Life> = BTreeMap::new();
            for (mid, outcome) in core.outcomes() {
                let Some(mutation) = core.answered_mutation(*mid) else { continue };
                let (doc, after_ack) = match mutation {
                    Mutation::Create { doc, .. } | Mutation::Restore { doc } => (doc, Some(Life::Live)),
                    Mutation::Remove { doc, .. } => (doc, Some(Life::Deleted)),
                    Mutation::Purge { doc } => (doc, None),
                    _ => continue,
                };
                if !doc.as_str().starts_with(&prefix) {
                    continue;
                }
                let code = match outcome {
                    Outcome::Ack(_) => {
                        match after_ack {
                            Some(life) => lives.insert(doc.clone(), life),
                            None => lives.remove(doc),
                        };
                        continue;
                    }
                    Outcome::Refused(body) => body.code,
                };
                if !code.is_definite() {
                    lives.remove(doc);
                    continue;
                }
                let wrong = match (mutation, lives.get(doc), code) {
                    (Mutation::Create { .. }, Some(Life::Deleted), ErrorCode::Exists) => Some("deleted"),
                    (Mutation::Create { .. }, Some(Life::Live), ErrorCode::Deleted) => Some("exists"),
                    _ => None,
                };
                if let Some(expected) = wrong {
                    failures.push(format!(
                        "lifecycle: c{} created {doc} (mutation {mid}) and got {code}, but the document was {}: expected {expected}",
                        v.index,
                        if expected == "deleted" { "soft-deleted" } else { "live" },
                    ));
                }
            }
        });
    }
    failures
}

/// A write that fits is never refused for quota (quota.check): a create of a new document
/// charges the canonical JSON bytes of its data, so a `quota_exceeded` answer whose own `used` plus
/// that size is within its own `limit` refused a write landing at or under the limit.
fn quota_refusals(world: &World<'_>) -> Vec<String> {
    let mut failures = Vec::new();
    for v in world.clients.lock().expect("clients lock").iter() {
        v.client.with_core(|core| {
            for (mid, outcome) in core.outcomes() {
                let Outcome::Refused(body) = outcome else { continue };
                if body.code != roomlab_protocol::ErrorCode::QuotaExceeded {
                    continue;
                }
                let Some(Mutation::Create { data, doc_type, .. }) = core.answered_mutation(*mid) else { continue };
                if doc_type.as_str() != "blobs" {
                    continue;
                }
                let size = serde_json::to_string(data).expect("JSON serializes").len() as u64;
                if let (Some(used), Some(limit)) = (body.used, body.limit) {
                    if used + size <= limit {
                        failures.push(format!(
                            "quota: c{} mutation {mid} (a create of {size} bytes) was refused at usage {used} of limit {limit}, though it fits",
                            v.index
                        ));
                    }
                }
            }
        });
    }
    failures
}

/// Ending a staged session writes nothing of a viewer's: a viewer cannot stage, so their session
/// is empty and its commit or discard changes no document.
fn is_session_end(mutation: Option<&Mutation>) -> bool {
    matches!(mutation, Some(Mutation::StageDiscard | Mutation::StageCommit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one connection's events (`< FRAME`, `< yjs`, `closed`) to the after-internal watch and
    /// returns the failures it recorded.
    fn check(events: &[&str]) -> Vec<String> {
        let trace: SharedTrace = std::sync::Arc::new(std::sync::Mutex::new(crate::trace::Trace::new(false)));
        let watch = AfterInternal::default();
        for event in events {
            match *event {
                "closed" => watch.connection_ended(),
                "< yjs" => watch.received(None, &trace, "c1"),
                frame => watch.received(Some(frame.strip_prefix("< ").expect("a frame")), &trace, "c1"),
            }
        }
        let failures = trace.lock().unwrap().wire_failures().to_vec();
        failures
    }

    const INTERNAL: &str = r#"< {"type":"error","code":"internal","message":"storage failed","mid":4}"#;
    const ACK: &str = r#"< {"type":"ack","mid":5,"seq":9}"#;

    #[test]
    fn nothing_may_follow_an_internal_answer_on_its_connection() {
        assert_eq!(check(&[ACK, INTERNAL, "closed", ACK]), Vec::<String>::new());
        let failures = check(&[INTERNAL, ACK]);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].starts_with(r#"close: c1 received {"type":"ack","mid":5"#), "{failures:?}");
        assert!(failures[0].contains("after mutation 4 was answered internal"), "{failures:?}");
        assert_eq!(check(&[INTERNAL, "< yjs"]).len(), 1);
        // A refused Yjs frame answered `internal` names no mutation and keeps the connection.
        let yjs_refused =
            r#"< {"type":"error","code":"internal","message":"storage failed","doc":"d","field":"f"}"#;
        assert_eq!(check(&[yjs_refused, ACK]), Vec::<String>::new());
    }
}
