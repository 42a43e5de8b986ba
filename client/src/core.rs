//! The client's state machine, without I/O: subscriptions and their cached views, pending
//! mutations and their outcomes, and what to send on (re)connect. The driver feeds it frames.

use crate::yjs::{FieldKey, Received, YjsFields};
use roomlab_protocol::{
    merge_patch, AssetInfo, BucketName, ClientId, ClientMessage, DocId, DocSnapshot, ErrorBody, ErrorCode,
    ListDiff, Mutation, Query, ServerMessage, SubId, Target, PROTOCOL_VERSION,
};
use roomlab_protocol::{FieldName, YjsFrame};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

/// Rich-text fields a client may hold open at once.
pub(crate) const YJS_FIELDS_MAX: usize = 256;

/// What a subscription shows, as the server last told it.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    /// Not answered yet (or not since the last reconnect).
    Waiting,
    /// A live query's documents, in the query's order.
    Query {
        /// The room sequence of the last answer or diff.
        seq: u64,
        /// The documents.
        docs: Vec<DocSnapshot>,
    },
    /// A document.
    Doc(DocSnapshot),
    /// A deleted document, with the sequence of its deletion.
    Deleted(u64),
    /// A document that does not exist, as of a sequence.
    Missing(u64),
    /// A JSON bucket's value.
    Bucket {
        /// Its version.
        version: u64,
        /// Its value.
        value: Value,
    },
    /// A bucket that was deleted.
    BucketDeleted(u64),
    /// An asset bucket's list.
    Assets(Vec<AssetInfo>),
    /// The subscription was refused.
    Refused(ErrorBody),
}

/// How a mutation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Acknowledged at a sequence.
    Ack(Ack),
    /// Refused; definite unless the code says otherwise.
    Refused(ErrorBody),
}

/// A mutation's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The mutation id.
    pub mid: u64,
    /// The room sequence it was committed at.
    pub seq: u64,
    /// The bucket version, for bucket writes.
    pub version: Option<u64>,
    /// The new asset's key, for uploads.
    pub object_key: Option<roomlab_protocol::ObjectKey>,
}

/// Something the application may want to react to, in the order it happened. Bucket callbacks may
/// fire more than once for one write (optimistic, confirmed, revalidated): each is its own event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A mutation was applied to the local view before the server answered.
    Optimistic { mid: u64 },
    /// The server acknowledged a mutation.
    Confirmed { mid: u64, seq: u64 },
    /// The server refused a mutation; its optimistic effect is gone.
    RolledBack { mid: u64, code: ErrorCode },
    /// A subscription's view changed.
    Changed { sub: SubId },
    /// A bucket read found the cached value still current.
    Revalidated { bucket: BucketName, version: u64 },
    /// The connection is up and every subscription has its fresh answer.
    Resynced,
    /// A rich-text field changed from the server's side (an update, or the sync's step 2).
    YjsChanged { doc: DocId, field: FieldName },
    /// The server refused a Yjs frame (an update from a reader, a deleted document).
    YjsRefused { doc: DocId, field: FieldName, code: ErrorCode },
}

pub(crate) struct Subscription {
    pub id: SubId,
    pub target: Target,
    pub refs: usize,
    pub view: View,
}

pub(crate) struct Pending {
    pub mutation: Mutation,
}

/// Connection state as the core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    Down,
    /// `hello` sent, `welcome` not yet seen.
    Greeting,
    /// Welcomed; `announced` once every subscription had its fresh answer (and `Resynced` fired).
    Live {
        announced: bool,
    },
}

/// The client's state.
pub struct Core {
    pub(crate) client: ClientId,
    /// A planted bug (builds with the `mutants` feature only).
    pub(crate) mutant: Option<roomlab_protocol::Mutant>,
    pub(crate) link: Link,
    next_mid: u64,
    next_sub: u64,
    next_req: u64,
    pub(crate) subscriptions: BTreeMap<String, Subscription>,
    sub_keys: BTreeMap<SubId, String>,
    pub(crate) pending: BTreeMap<u64, Pending>,
    outcomes: BTreeMap<u64, Outcome>,
    /// The mutation behind each remembered outcome, for checkers that replay what was acknowledged.
    answered: BTreeMap<u64, Mutation>,
    outcomes_max: usize,
    /// Frames waiting for the driver to send, while the link is live.
    pub(crate) outbox: VecDeque<Outgoing>,
    events: VecDeque<Event>,
    events_max: usize,
    /// The highest sequence seen for each document, to catch pushes that go back in time.
    doc_seq_seen: BTreeMap<DocId, u64>,
    violations: Vec<String>,
    pub(crate) room_seq: u64,
    pub(crate) answers: BTreeMap<u64, ServerMessage>,
    buckets: BTreeMap<BucketName, (u64, Value)>,
    subscriptions_made: u64,
    pub(crate) yjs: YjsFields,
}

/// A frame waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outgoing {
    /// A JSON message.
    Text(ClientMessage),
    /// A Yjs envelope.
    Yjs(YjsFrame),
}

/// The stable key of a subscription target: identical targets share one server subscription.
pub fn target_key(target: &Target) -> String {
    serde_json::to_string(target).expect("targets serialize")
}

impl Core {
    pub(crate) fn new(client: ClientId, outcomes_max: usize, events_max: usize, seed: u64) -> Core {
        Core {
            mutant: None,
            yjs: YjsFields::new(&client, seed, YJS_FIELDS_MAX),
            client,
            link: Link::Down,
            next_mid: 1,
            next_sub: 1,
            next_req: 1,
            subscriptions: BTreeMap::new(),
            sub_keys: BTreeMap::new(),
            pending: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            answered: BTreeMap::new(),
            outcomes_max,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            events_max,
            doc_seq_seen: BTreeMap::new(),
            violations: Vec::new(),
            room_seq: 0,
            answers: BTreeMap::new(),
            buckets: BTreeMap::new(),
            subscriptions_made: 0,
        }
    }

    fn is_live(&self) -> bool {
        matches!(self.link, Link::Live { .. })
    }

    fn event(&mut self, event: Event) {
        if self.events.len() == self.events_max {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub(crate) fn drain_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Registers a mutation and, when live, queues it; returns its id.
    pub(crate) fn mutate(&mut self, mutation: Mutation) -> u64 {
        let mid = self.next_mid;
        self.next_mid += 1;
        if self.is_live() {
            self.send(ClientMessage::Mutate { mid, mutation: mutation.clone() });
        }
        self.pending.insert(mid, Pending { mutation });
        self.event(Event::Optimistic { mid });
        mid
    }

    pub(crate) fn outcome(&self, mid: u64) -> Option<&Outcome> {
        self.outcomes.get(&mid)
    }

    /// A subscription id this client has not used before.
    fn next_sub_id(&mut self) -> SubId {
        let id = SubId::new(format!("s{}", self.next_sub)).expect("valid sub id");
        self.next_sub += 1;
        id
    }

    /// Adds a reference to a subscription, starting it when it is the first; returns its id.
    pub(crate) fn subscribe(&mut self, target: Target) -> SubId {
        let key = target_key(&target);
        if let Some(existing) = self.subscriptions.get_mut(&key) {
            existing.refs += 1;
            return existing.id.clone();
        }
        let id = self.next_sub_id();
        self.subscriptions_made += 1;
        if self.is_live() {
            self.send(ClientMessage::Subscribe { sub: id.clone(), target: target.clone() });
        }
        self.sub_keys.insert(id.clone(), key.clone());
        self.subscriptions.insert(key, Subscription { id: id.clone(), target, refs: 1, view: View::Waiting });
        id
    }

    /// Drops a reference; the last one unsubscribes.
    pub(crate) fn unsubscribe(&mut self, target: &Target) {
        let key = target_key(target);
        let Some(subscription) = self.subscriptions.get_mut(&key) else { return };
        subscription.refs -= 1;
        if subscription.refs > 0 {
            return;
        }
        let subscription = self.subscriptions.remove(&key).expect("present");
        self.sub_keys.remove(&subscription.id);
        if self.is_live() {
            self.send(ClientMessage::Unsubscribe { sub: subscription.id });
        }
        self.announce_resync();
    }

    pub(crate) fn request(&mut self, make: impl FnOnce(u64) -> ClientMessage) -> Option<u64> {
        if !self.is_live() {
            return None;
        }
        let req = self.next_req;
        self.next_req += 1;
        self.send(make(req));
        Some(req)
    }

    /// The connection is open: greet.
    pub(crate) fn connected(&mut self) -> ClientMessage {
        self.link = Link::Greeting;
        self.outbox.clear();
        ClientMessage::Hello { protocol: PROTOCOL_VERSION, client: self.client.clone() }
    }

    /// The connection dropped: nothing queued for it will be sent; everything is re-derived on the
    /// next connection.
    pub(crate) fn disconnected(&mut self) {
        self.link = Link::Down;
        self.outbox.clear();
        self.answers.clear();
        self.yjs.disconnected();
    }

    fn send(&mut self, message: ClientMessage) {
        self.outbox.push_back(Outgoing::Text(message));
    }

    fn send_yjs(&mut self, frame: YjsFrame) {
        if self.is_live() {
            self.outbox.push_back(Outgoing::Yjs(frame));
        }
    }

    /// Opens a rich-text field (reference-counted); fails when `fields_max` are open.
    pub(crate) fn yjs_open(&mut self, key: &FieldKey) -> Result<(), usize> {
        if let Some(step1) = self.yjs.open(key)? {
            self.send_yjs(step1);
        }
        Ok(())
    }

    /// Drops a reference to a field; the last one closes it on the server too.
    pub(crate) fn yjs_close(&mut self, key: &FieldKey) {
        if self.yjs.close(key) && self.is_live() {
            self.send(ClientMessage::YjsClose { doc: key.0.clone(), field: key.1.clone() });
            self.announce_resync();
        }
    }

    /// Edits a field's text locally and sends the update when live; edits made while down reach
    /// the server through the sync on the next connection.
    pub(crate) fn yjs_edit(
        &mut self,
        key: &FieldKey,
        edit: impl FnOnce(&yrs::TextRef, &mut yrs::TransactionMut),
    ) {
        if let Some(update) = self.yjs.edit(key, edit) {
            self.send_yjs(update);
        }
    }

    /// Applies a Yjs frame from the server.
    pub(crate) fn receive_yjs(&mut self, frame: &YjsFrame) {
        match self.yjs.receive(frame) {
            Ok(Received::Nothing) => {}
            Ok(Received::Answer(step2)) => self.send_yjs(step2),
            Ok(Received::Changed) => {
                self.event(Event::YjsChanged { doc: frame.doc.clone(), field: frame.field.clone() });
                self.announce_resync();
            }
            Err(e) => self.violations.push(format!("yjs {}/{}: {e}", frame.doc, frame.field)),
        }
    }

    /// The open Yjs fields: their text, whole state and whether they are synced.
    pub fn yjs(&self) -> &YjsFields {
        &self.yjs
    }

    /// Welcomed: resubscribe everything, then replay every unanswered mutation in id order
    /// (client.reconnect.resubscribe, client.reconnect.replay).
    fn welcomed(&mut self, seq: u64) {
        self.room_seq = self.room_seq.max(seq);
        let skip_answered = roomlab_protocol::Mutant::SkipResubscribe.planted(self.mutant);
        for subscription in self.subscriptions.values_mut() {
            if skip_answered && subscription.view != View::Waiting {
                continue;
            }
            subscription.view = View::Waiting;
            let message = ClientMessage::Subscribe {
                sub: subscription.id.clone(),
                target: subscription.target.clone(),
            };
            self.outbox.push_back(Outgoing::Text(message));
        }
        for (mid, pending) in &self.pending {
            let message = ClientMessage::Mutate { mid: *mid, mutation: pending.mutation.clone() };
            self.outbox.push_back(Outgoing::Text(message));
        }
        self.outbox.extend(self.yjs.resync().into_iter().map(Outgoing::Yjs));
        self.link = Link::Live { announced: false };
        self.announce_resync();
    }

    /// Whether the link is live, every subscription has been answered and every rich-text field
    /// synced (or refused) since it came up.
    /// A subscription added, dropped or answered meanwhile counts as it is now, so a drop of one
    /// still waiting for its answer cannot leave the client waiting forever.
    pub(crate) fn resynced(&self) -> bool {
        self.is_live() && self.subscriptions.values().all(|s| s.view != View::Waiting) && self.yjs.settled()
    }

    fn announce_resync(&mut self) {
        if self.link == (Link::Live { announced: false }) && self.resynced() {
            self.link = Link::Live { announced: true };
            self.event(Event::Resynced);
        }
    }

    /// Whether the client is connected, welcomed, and has a fresh answer for every subscription.
    pub fn is_resynced(&self) -> bool {
        self.resynced()
    }

    /// Server subscriptions started since the client began (reference-counted repeats excluded).
    pub fn subscriptions_made(&self) -> u64 {
        self.subscriptions_made
    }

    fn answered(&mut self, sub: &SubId) {
        self.announce_resync();
        self.event(Event::Changed { sub: sub.clone() });
    }

    fn seen(&mut self, doc: &DocId, seq: u64, context: &str) {
        // Looked up before inserting: nearly every push names a document already seen, and an
        // entry would copy its id every time.
        let previous = match self.doc_seq_seen.get_mut(doc) {
            Some(previous) => previous,
            None => self.doc_seq_seen.entry(doc.clone()).or_insert(0),
        };
        if seq < *previous {
            let violation = format!("{context}: {doc} went back from seq {previous} to {seq}");
            self.violations.push(violation);
        }
        *previous = (*previous).max(seq);
    }

    /// Pushes that went back in time (client.cache.ordering): each a sentence.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Applies one message from the server.
    pub(crate) fn receive(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::Welcome { seq, .. } => self.welcomed(seq),
            ServerMessage::Ack { mid, seq, version, object_key } => {
                self.room_seq = self.room_seq.max(seq);
                self.finish(mid, Outcome::Ack(Ack { mid, seq, version, object_key }));
                self.event(Event::Confirmed { mid, seq });
            }
            ServerMessage::Error(body) => self.error(body),
            ServerMessage::Pong { .. } | ServerMessage::Unsubscribed { .. } => {}
            ServerMessage::BucketValue { req: Some(req), bucket, version, value, .. } => {
                self.buckets.insert(bucket.clone(), (version, value.clone()));
                let message =
                    ServerMessage::BucketValue { sub: None, req: Some(req), bucket, version, value };
                self.answers.insert(req, message);
            }
            ServerMessage::BucketNotModified { req, bucket, version } => {
                self.event(Event::Revalidated { bucket: bucket.clone(), version });
                self.answers.insert(req, ServerMessage::BucketNotModified { req, bucket, version });
            }
            ServerMessage::AssetsList { sub: None, req: Some(req), bucket, assets } => {
                self.answers
                    .insert(req, ServerMessage::AssetsList { sub: None, req: Some(req), bucket, assets });
            }
            push => self.push(push),
        }
    }

    fn finish(&mut self, mid: u64, outcome: Outcome) {
        let Some(pending) = self.pending.remove(&mid) else {
            // An answer to nothing pending: a late duplicate, or a mid this client never sent.
            return;
        };
        if self.outcomes.len() == self.outcomes_max {
            if let Some((oldest, _)) = self.outcomes.pop_first() {
                self.answered.remove(&oldest);
            }
        }
        self.outcomes.insert(mid, outcome);
        self.answered.insert(mid, pending.mutation);
    }

    fn error(&mut self, body: ErrorBody) {
        if let Some(mid) = body.mid {
            // An `internal` error ends the mutation too, as indefinite: the application decides
            // whether to send it again (under a new id), and a checker sees the failure.
            let code = body.code;
            self.finish(mid, Outcome::Refused(body));
            self.event(Event::RolledBack { mid, code });
        } else if let Some(req) = body.req {
            self.answers.insert(req, ServerMessage::Error(body));
        } else if let Some(sub) = body.sub.clone() {
            self.set_view(&sub, |view, _| *view = View::Refused(body));
        } else if let (Some(doc), Some(field)) = (body.doc.clone(), body.field.as_deref()) {
            // docs/PROTOCOL.md §19: a refused Yjs frame is answered with its doc and field.
            if let Ok(field) = FieldName::new(field) {
                self.yjs.refused_frame(&(doc.clone(), field.clone()), body.code);
                self.event(Event::YjsRefused { doc, field, code: body.code });
                self.announce_resync();
            }
        }
    }

    /// Changes the view of the subscription `sub` names (given its target, which a query diff
    /// needs for the order), and announces the change.
    fn set_view(&mut self, sub: &SubId, change: impl FnOnce(&mut View, &Target)) {
        let Some(key) = self.sub_keys.get(sub) else { return };
        let subscription = self.subscriptions.get_mut(key).expect("sub keys follow subscriptions");
        change(&mut subscription.view, &subscription.target);
        self.answered(sub);
    }

    fn push(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::QueryResult { sub, seq, docs } => {
                for doc in &docs {
                    self.seen(&doc.id, doc.seq, "query:result");
                }
                self.set_view(&sub, |view, _| *view = View::Query { seq, docs });
            }
            ServerMessage::QueryDiff { sub, seq, added, changed, removed } => {
                for doc in added.iter().chain(&changed) {
                    self.seen(&doc.id, doc.seq, "query:diff");
                }
                self.set_view(&sub, |view, target| {
                    let query = match target {
                        Target::Query(query) => Some(query),
                        _ => None,
                    };
                    apply_diff(view, query, seq, added, changed, &removed);
                });
            }
            ServerMessage::DocSnapshot { sub, doc } => {
                self.seen(&doc.id, doc.seq, "doc:snapshot");
                self.set_view(&sub, |view, _| *view = View::Doc(doc));
            }
            ServerMessage::DocDiff { sub, doc, base, seq, lists } => {
                self.doc_diff(&sub, &doc, base, seq, &lists)
            }
            ServerMessage::DocDeleted { sub, seq, .. } => {
                self.set_view(&sub, |view, _| *view = View::Deleted(seq))
            }
            ServerMessage::DocMissing { sub, seq, .. } => {
                self.set_view(&sub, |view, _| *view = View::Missing(seq))
            }
            ServerMessage::BucketValue { sub: Some(sub), bucket, version, value, .. } => {
                self.buckets.insert(bucket, (version, value.clone()));
                self.set_view(&sub, |view, _| *view = View::Bucket { version, value });
            }
            ServerMessage::BucketDeleted { sub, seq, bucket } => {
                self.buckets.remove(&bucket);
                self.set_view(&sub, |view, _| *view = View::BucketDeleted(seq));
            }
            ServerMessage::AssetsList { sub: Some(sub), assets, .. } => {
                self.set_view(&sub, |view, _| *view = View::Assets(assets));
            }
            _ => {}
        }
    }

    /// Applies a `doc:diff` to the document the subscription shows. A diff whose base is not that
    /// document cannot be placed: it is a violation, and the subscription starts over to get a
    /// whole snapshot.
    fn doc_diff(
        &mut self,
        sub: &SubId,
        doc: &DocId,
        base: u64,
        seq: u64,
        lists: &BTreeMap<FieldName, ListDiff>,
    ) {
        let Some(key) = self.sub_keys.get(sub).cloned() else { return };
        self.seen(doc, seq, "doc:diff");
        let view = &mut self.subscriptions.get_mut(&key).expect("sub keys follow subscriptions").view;
        match view {
            View::Doc(shown) if shown.id == *doc && shown.seq == base => {
                for (name, diff) in lists {
                    let items = shown.lists.entry(name.clone()).or_default();
                    diff.apply(items);
                    if items.is_empty() {
                        shown.lists.remove(name);
                    }
                }
                shown.seq = seq;
                self.answered(sub);
            }
            _ => {
                let shown = match view {
                    View::Doc(shown) => format!("{} at seq {}", shown.id, shown.seq),
                    _ => "no document".to_string(),
                };
                self.violations
                    .push(format!("doc:diff for {doc} from seq {base} reached a view showing {shown}"));
                self.restart_subscription(&key);
            }
        }
    }

    /// Ends a subscription on the server and starts it again under a new id, for a fresh answer.
    fn restart_subscription(&mut self, key: &str) {
        let id = self.next_sub_id();
        let subscription = self.subscriptions.get_mut(key).expect("restarted subscriptions exist");
        let old = std::mem::replace(&mut subscription.id, id.clone());
        subscription.view = View::Waiting;
        let target = subscription.target.clone();
        self.sub_keys.remove(&old);
        self.sub_keys.insert(id.clone(), key.to_string());
        if self.is_live() {
            self.send(ClientMessage::Unsubscribe { sub: old });
            self.send(ClientMessage::Subscribe { sub: id, target });
        }
    }

    /// A subscription's view as the server last told it.
    pub fn view(&self, target: &Target) -> Option<&View> {
        self.subscriptions.get(&target_key(target)).map(|s| &s.view)
    }

    /// Every active subscription with its view.
    pub fn views(&self) -> impl Iterator<Item = (&Target, &View)> {
        self.subscriptions.values().map(|s| (&s.target, &s.view))
    }

    /// A document subscription's view with unanswered mutations applied on top (client.optimistic);
    /// a refusal removes the mutation, so its effect rolls back by itself.
    pub fn optimistic_doc(&self, doc: &DocId) -> Option<Value> {
        let mut data = match self.view(&Target::Doc(doc.clone())) {
            Some(View::Doc(snapshot)) => Some(snapshot.data.clone()),
            _ => None,
        };
        for pending in self.pending.values() {
            data = match &pending.mutation {
                Mutation::Create { doc: d, data: new, .. } if d == doc => Some(new.clone()),
                Mutation::Put { doc: d, data: new, .. } if d == doc => Some(new.clone()),
                Mutation::Patch { doc: d, data: patch, .. } if d == doc => data.map(|mut v| {
                    merge_patch(&mut v, patch);
                    v
                }),
                Mutation::Remove { doc: d, .. } | Mutation::Purge { doc: d } if d == doc => None,
                _ => data,
            };
        }
        data
    }

    /// Mutations sent or waiting to be sent, not yet answered.
    pub fn pending(&self) -> impl Iterator<Item = (u64, &Mutation)> {
        self.pending.iter().map(|(mid, p)| (*mid, &p.mutation))
    }

    /// Every answered mutation still remembered (at most `outcomes_max`), by id.
    pub fn outcomes(&self) -> &BTreeMap<u64, Outcome> {
        &self.outcomes
    }

    /// The mutation behind a remembered outcome.
    pub fn answered_mutation(&self, mid: u64) -> Option<&Mutation> {
        self.answered.get(&mid)
    }

    /// The last value and version seen for a bucket, what the validation cache checks against.
    pub fn cached_bucket(&self, bucket: &BucketName) -> Option<&(u64, Value)> {
        self.buckets.get(bucket)
    }
}

fn apply_diff(
    view: &mut View,
    query: Option<&Query>,
    seq: u64,
    added: Vec<DocSnapshot>,
    changed: Vec<DocSnapshot>,
    removed: &[DocId],
) {
    // A diff before the first answer cannot be placed; the next answer replaces the view.
    let View::Query { seq: view_seq, docs } = view else { return };
    *view_seq = seq;
    docs.retain(|doc| !removed.contains(&doc.id));
    let order = |a: &DocSnapshot, b: &DocSnapshot| match query {
        Some(query) => query.compare(a, b),
        None => a.id.cmp(&b.id),
    };
    // The view is in query order; each new document is placed by a binary search instead of
    // sorting the whole result again (query.converges: the client recomputes the order).
    for doc in added.into_iter().chain(changed) {
        if let Some(at) = docs.iter().position(|old| old.id == doc.id) {
            // client.cache.ordering: never replace a document with an older one.
            if docs[at].seq > doc.seq {
                continue;
            }
            docs.remove(at);
        }
        let at = docs.partition_point(|old| order(old, &doc) == std::cmp::Ordering::Less);
        docs.insert(at, doc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomlab_protocol::{decode_server, encode, DocType, Limits, RoomId, UserId};
    use serde_json::json;

    fn core() -> Core {
        Core::new(ClientId::new("c1").unwrap(), 100, 100, 0)
    }

    fn welcome(seq: u64) -> ServerMessage {
        ServerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            room: RoomId::new("r").unwrap(),
            user: UserId::new("u").unwrap(),
            role: roomlab_protocol::Role::Member,
            seq,
            limits: Limits::default(),
        }
    }

    fn sent(core: &mut Core) -> Vec<String> {
        core.outbox
            .drain(..)
            .filter_map(|m| match m {
                Outgoing::Text(m) => Some(encode(&m)),
                Outgoing::Yjs(_) => None,
            })
            .collect()
    }

    fn receive(core: &mut Core, frame: &str) {
        core.receive(decode_server(frame.as_bytes(), 1 << 20).unwrap());
    }

    fn doc(id: &str) -> Target {
        Target::Doc(DocId::new(id).unwrap())
    }

    #[test]
    fn identical_subscriptions_share_one_and_the_last_drop_unsubscribes() {
        let mut core = core();
        core.connected();
        core.receive(welcome(0));
        core.subscribe(doc("a"));
        core.subscribe(doc("a"));
        assert_eq!(sent(&mut core), [r#"{"type":"subscribe","sub":"s1","doc":"a"}"#]);
        core.unsubscribe(&doc("a"));
        assert!(sent(&mut core).is_empty());
        core.unsubscribe(&doc("a"));
        assert_eq!(sent(&mut core), [r#"{"type":"unsubscribe","sub":"s1"}"#]);
    }

    #[test]
    fn reconnect_resubscribes_then_replays_unanswered_mutations_in_order() {
        let mut core = core();
        core.subscribe(doc("a"));
        let create = Mutation::Create {
            doc: DocId::new("a").unwrap(),
            doc_type: DocType::new("t").unwrap(),
            data: json!({}),
        };
        core.mutate(create.clone());
        core.mutate(Mutation::Remove { doc: DocId::new("a").unwrap(), if_seq: None });
        assert!(core.outbox.is_empty(), "nothing is queued while down");
        core.connected();
        core.receive(welcome(4));
        assert_eq!(
            sent(&mut core),
            [
                r#"{"type":"subscribe","sub":"s1","doc":"a"}"#,
                r#"{"type":"mutate","mid":1,"op":"create","doc":"a","doc_type":"t","data":{}}"#,
                r#"{"type":"mutate","mid":2,"op":"remove","doc":"a"}"#,
            ]
        );
        receive(&mut core, r#"{"type":"ack","mid":1,"seq":5}"#);
        core.disconnected();
        core.connected();
        core.receive(welcome(5));
        assert_eq!(sent(&mut core)[1], r#"{"type":"mutate","mid":2,"op":"remove","doc":"a"}"#);
        assert_eq!(core.answered_mutation(1), Some(&create));
    }

    #[test]
    fn dropping_a_subscription_still_waiting_for_its_answer_does_not_block_the_resync() {
        let mut core = core();
        core.subscribe(doc("a"));
        core.subscribe(doc("b"));
        core.connected();
        core.receive(welcome(0));
        assert!(!core.resynced());
        receive(&mut core, r#"{"type":"doc:missing","sub":"s1","doc":"a","seq":0}"#);
        core.unsubscribe(&doc("b"));
        assert!(core.resynced());
        assert!(core.drain_events().contains(&Event::Resynced));
    }

    #[test]
    fn pushes_never_replace_a_document_with_an_older_one() {
        let mut core = core();
        core.connected();
        core.receive(welcome(0));
        let query = r#"{"collection":"t","order_by":[{"field":"n","dir":"asc"}]}"#;
        let target: Target = serde_json::from_str(&format!(r#"{{"query":{query}}}"#)).unwrap();
        core.subscribe(target.clone());
        let d = |id: &str, seq: u64, n: u64| {
            format!(r#"{{"id":"{id}","doc_type":"t","seq":{seq},"owner":"u","data":{{"n":{n}}}}}"#)
        };
        receive(
            &mut core,
            &format!(
                r#"{{"type":"query:result","sub":"s1","seq":3,"docs":[{},{}]}}"#,
                d("a", 2, 1),
                d("b", 3, 2)
            ),
        );
        receive(
            &mut core,
            &format!(
                r#"{{"type":"query:diff","sub":"s1","seq":4,"changed":[{}],"added":[{}]}}"#,
                d("b", 1, 0),
                d("c", 4, 0)
            ),
        );
        let View::Query { seq, docs } = core.view(&target).unwrap().clone() else { panic!("a query view") };
        let order: Vec<(String, u64)> = docs.iter().map(|d| (d.id.to_string(), d.seq)).collect();
        assert_eq!((seq, order), (4, vec![("c".into(), 4), ("a".into(), 2), ("b".into(), 3)]));
        assert_eq!(core.violations(), ["query:diff: b went back from seq 3 to 1"]);
    }

    /// Sends `frames` to a fresh core watching document `a`, then answers what the view shows
    /// (the list `l` as `id@key=value`, or the view's kind), the violations, and what was sent.
    fn check_doc_diffs(frames: &[&str]) -> (String, Vec<String>, Vec<String>) {
        let mut core = core();
        core.connected();
        core.receive(welcome(0));
        core.subscribe(doc("a"));
        sent(&mut core);
        for frame in frames {
            receive(&mut core, frame);
        }
        let shown = match core.view(&doc("a")).unwrap() {
            View::Doc(shown) => {
                let items = shown.lists.get(&FieldName::new("l").unwrap()).cloned().unwrap_or_default();
                let items: Vec<String> =
                    items.iter().map(|item| format!("{}@{}={}", item.id, item.key, item.value)).collect();
                format!("seq {}: {}", shown.seq, items.join(" "))
            }
            other => format!("{other:?}"),
        };
        (shown, core.violations().to_vec(), sent(&mut core))
    }

    #[test]
    fn doc_diffs_apply_to_the_shown_document_or_restart_the_subscription() {
        let snapshot = r#"{"type":"doc:snapshot","sub":"s1","doc":{"id":"a","doc_type":"t","seq":3,"owner":"u","data":{},"lists":{"l":[{"id":"x","key":"a0","value":1},{"id":"y","key":"a1","value":2}]}}}"#;
        // An insert between, a move to the front (ties broken by id), an update, a removal.
        let (shown, violations, _) = check_doc_diffs(&[
            snapshot,
            r#"{"type":"doc:diff","sub":"s1","doc":"a","base":3,"seq":5,"lists":{"l":{"put":[{"id":"m","key":"a0V","value":3}]}}}"#,
            r#"{"type":"doc:diff","sub":"s1","doc":"a","base":5,"seq":6,"lists":{"l":{"put":[{"id":"b","key":"a0","value":4},{"id":"y","key":"a0","value":5}],"removed":["x"]}}}"#,
        ]);
        assert_eq!(shown, "seq 6: b@a0=4 y@a0=5 m@a0V=3");
        assert!(violations.is_empty(), "{violations:?}");
        // The last item removed: the list goes, as in a snapshot.
        let (shown, _, _) = check_doc_diffs(&[
            snapshot,
            r#"{"type":"doc:diff","sub":"s1","doc":"a","base":3,"seq":4,"lists":{"l":{"removed":["x","y"]}}}"#,
        ]);
        assert_eq!(shown, "seq 4: ");
        // A diff from a sequence the view does not show cannot be placed.
        let (shown, violations, sent) = check_doc_diffs(&[
            snapshot,
            r#"{"type":"doc:diff","sub":"s1","doc":"a","base":2,"seq":4,"lists":{"l":{"removed":["x"]}}}"#,
        ]);
        assert_eq!(shown, "Waiting");
        assert_eq!(violations, ["doc:diff for a from seq 2 reached a view showing a at seq 3"]);
        assert_eq!(
            sent,
            [r#"{"type":"unsubscribe","sub":"s1"}"#, r#"{"type":"subscribe","sub":"s2","doc":"a"}"#]
        );
    }
}
