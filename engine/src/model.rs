//! The reference model: the rules of docs/PROTOCOL.md for documents, lists, soft delete, system
//! views, guards, replay, subscriptions, JSON buckets and quotas, written the naive way (BTreeMaps,
//! no SQLite, every view recomputed and compared before and after each change). Tests drive it and a
//! [`Room`](crate::Room) with the same inputs and require the same replies, pushes and final state.
//!
//! Not modelled: schemas, staging, teams, assets and Yjs, which have their own transcripts.

use crate::room::{Config, ConnId, Effect, Identity};
use crate::state::canonical_len;
use roomlab_protocol::{
    merge_patch, Backend, BucketName, ClientId, ClientMessage, Contract, DocId, DocSnapshot, DocType,
    ErrorBody, ErrorCode, FieldName, ItemId, ListDiff, ListItem, ListKey, Mutation, Plan, Query, Role,
    RoomId, ServerMessage, SubId, Target, UserId, PROTOCOL_VERSION,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A document in the model.
#[derive(Debug, Clone, PartialEq)]
struct Doc {
    doc_type: DocType,
    seq: u64,
    owner: UserId,
    data: Value,
    lists: BTreeMap<FieldName, BTreeMap<ItemId, (ListKey, Value)>>,
    deleted: Option<(u64, u64)>,
}

impl Doc {
    fn bytes(&self) -> u64 {
        let items = self.lists.values().flat_map(BTreeMap::values).map(|(_, value)| canonical_len(value));
        canonical_len(&self.data) + items.sum::<u64>()
    }

    fn snapshot(&self, id: &DocId) -> DocSnapshot {
        let lists = self
            .lists
            .iter()
            .map(|(name, items)| {
                let mut items: Vec<ListItem> = items
                    .iter()
                    .map(|(id, (key, value))| ListItem {
                        id: id.clone(),
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect();
                ListItem::sort(&mut items);
                (name.clone(), items)
            })
            .collect();
        DocSnapshot {
            id: id.clone(),
            doc_type: self.doc_type.clone(),
            seq: self.seq,
            owner: self.owner.clone(),
            data: self.data.clone(),
            lists,
        }
    }
}

/// A JSON or asset bucket in the model (assets are not modelled).
#[derive(Debug, Clone, PartialEq)]
struct Bucket {
    contract: Contract,
    version: u64,
    value: Value,
    setter: Option<UserId>,
}

/// The committed state: what survives a crash.
#[derive(Debug, Clone, Default, PartialEq)]
struct State {
    seq: u64,
    docs: BTreeMap<DocId, Doc>,
    /// Users with (token role, plan, add-ons).
    users: BTreeMap<UserId, (Role, Plan, u32)>,
    buckets: BTreeMap<BucketName, Bucket>,
    answers: BTreeMap<(UserId, ClientId), BTreeMap<u64, ServerMessage>>,
    index_seq: u64,
    trash_seq: u64,
    users_seq: u64,
}

/// What a subscription last showed.
#[derive(Debug, Clone, PartialEq)]
enum Shown {
    Query(Query, Vec<DocSnapshot>),
    Doc(DocId, ServerMessage),
    Bucket(BucketName, Option<(u64, Value)>),
}

struct Conn {
    identity: Identity,
    client: Option<ClientId>,
    subs: BTreeMap<SubId, Shown>,
}

/// The state a room and the model are compared on at the end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// The room sequence.
    pub seq: u64,
    /// Every stored document with its deletion (sequence, time), if deleted.
    pub docs: Vec<(DocSnapshot, Option<(u64, u64)>)>,
    /// Usage per user.
    pub usage: BTreeMap<UserId, u64>,
    /// Every bucket as (contract, version, value, setter).
    pub buckets: BTreeMap<BucketName, (Contract, u64, Value, Option<UserId>)>,
}

/// The reference model of one room.
pub struct Model {
    room: RoomId,
    config: Config,
    state: State,
    conns: BTreeMap<ConnId, Conn>,
}

type Refusal = Box<ErrorBody>;

fn refuse(code: ErrorCode) -> Refusal {
    // Messages are for humans; comparisons blank them, so the model leaves them empty.
    Box::new(ErrorBody::new(code, ""))
}

impl Model {
    /// An empty room.
    pub fn new(room: RoomId, config: Config) -> Model {
        Model { room, config, state: State::default(), conns: BTreeMap::new() }
    }

    /// A crash: connections go, the committed state stays.
    pub fn reopen(&mut self) {
        self.conns.clear();
    }

    /// As [`Room::connect`](crate::Room::connect).
    pub fn connect(&mut self, conn: ConnId, identity: Identity, _now_ms: u64) -> Vec<Effect> {
        let before = self.state.users.get(&identity.user).map(|(role, _, _)| *role);
        self.state.users.insert(identity.user.clone(), (identity.role, identity.plan, identity.addons));
        self.conns.insert(conn, Conn { identity: identity.clone(), client: None, subs: BTreeMap::new() });
        if before == Some(identity.role) {
            return Vec::new();
        }
        self.state.seq += 1;
        self.state.users_seq = self.state.seq;
        self.pushes()
    }

    /// As [`Room::disconnect`](crate::Room::disconnect).
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// As [`Room::handle`](crate::Room::handle).
    pub fn handle(&mut self, conn: ConnId, message: ClientMessage, now_ms: u64) -> Vec<Effect> {
        let Some(peer) = self.conns.get(&conn) else {
            return Vec::new();
        };
        let send = |message| vec![Effect::Send { conn, message }];
        let error = |code| ServerMessage::Error(*refuse(code));
        match (message, peer.client.is_some()) {
            (ClientMessage::Hello { .. }, true) => send(error(ErrorCode::HelloRequired)),
            (ClientMessage::Hello { protocol, .. }, false) if protocol != PROTOCOL_VERSION => vec![
                Effect::Send { conn, message: error(ErrorCode::UnsupportedProtocol) },
                Effect::Close { conn, code: 4002, reason: String::new() },
            ],
            (ClientMessage::Hello { client, .. }, false) => {
                let peer = self.conns.get_mut(&conn).expect("connected");
                peer.client = Some(client);
                send(ServerMessage::Welcome {
                    protocol: PROTOCOL_VERSION,
                    room: self.room.clone(),
                    user: peer.identity.user.clone(),
                    role: peer.identity.role,
                    seq: self.state.seq,
                    limits: self.config.limits.clone(),
                })
            }
            (_, false) => send(error(ErrorCode::HelloRequired)),
            (ClientMessage::Ping { nonce }, true) => send(ServerMessage::Pong { nonce }),
            (ClientMessage::Subscribe { sub, target }, true) => send(self.subscribe(conn, sub, target)),
            (ClientMessage::Unsubscribe { sub }, true) => {
                let peer = self.conns.get_mut(&conn).expect("connected");
                match peer.subs.remove(&sub) {
                    Some(_) => send(ServerMessage::Unsubscribed { sub }),
                    None => send(ServerMessage::Error(refuse(ErrorCode::SubscriptionUnknown).with_sub(sub))),
                }
            }
            (ClientMessage::Mutate { mid, mutation }, true) => self.mutate(conn, mid, mutation, now_ms),
            (ClientMessage::BucketGet { req, bucket, if_version }, true) => {
                let user = &self.conns[&conn].identity.user;
                send(match self.bucket(user, &bucket, Some(Backend::D1Json)) {
                    Err(body) => ServerMessage::Error(body.with_req(req)),
                    Ok(found) if if_version == Some(found.version) => {
                        ServerMessage::BucketNotModified { req, bucket, version: found.version }
                    }
                    Ok(found) => ServerMessage::BucketValue {
                        sub: None,
                        req: Some(req),
                        bucket,
                        version: found.version,
                        value: found.value.clone(),
                    },
                })
            }
            (ClientMessage::AssetList { .. } | ClientMessage::YjsClose { .. }, true) => {
                panic!("the model does not cover assets or Yjs")
            }
        }
    }

    fn subscribe(&mut self, conn: ConnId, sub: SubId, target: Target) -> ServerMessage {
        let peer = &self.conns[&conn];
        if peer.subs.contains_key(&sub) {
            return ServerMessage::Error(refuse(ErrorCode::SubscriptionExists).with_sub(sub));
        }
        if peer.subs.len() >= self.config.limits.subscriptions_max {
            return ServerMessage::Error(refuse(ErrorCode::SubscriptionLimit).with_sub(sub));
        }
        let shown = match target {
            Target::Query(query) if query.check().is_err() => {
                return ServerMessage::Error(refuse(ErrorCode::Invalid).with_sub(sub));
            }
            Target::Query(query) => Shown::Query(query.clone(), self.query(&query)),
            Target::Doc(doc) => Shown::Doc(doc.clone(), self.doc_view(&sub, &doc)),
            Target::Bucket(name) => match self.bucket(&peer.identity.user, &name, Some(Backend::D1Json)) {
                Ok(bucket) => Shown::Bucket(name, Some((bucket.version, bucket.value.clone()))),
                Err(body) => return ServerMessage::Error(body.with_sub(sub)),
            },
            Target::Assets(_) => panic!("the model does not cover assets"),
        };
        let first = self.first_message(&sub, &shown);
        self.conns.get_mut(&conn).expect("connected").subs.insert(sub, shown);
        first
    }

    fn first_message(&self, sub: &SubId, shown: &Shown) -> ServerMessage {
        match shown {
            Shown::Query(_, docs) => {
                ServerMessage::QueryResult { sub: sub.clone(), seq: self.state.seq, docs: docs.clone() }
            }
            Shown::Doc(_, message) => message.clone(),
            Shown::Bucket(name, value) => {
                let (version, value) = value.clone().expect("subscribed to a bound bucket");
                ServerMessage::BucketValue {
                    sub: Some(sub.clone()),
                    req: None,
                    bucket: name.clone(),
                    version,
                    value,
                }
            }
        }
    }

    fn query(&self, query: &Query) -> Vec<DocSnapshot> {
        let live: Vec<DocSnapshot> = self
            .state
            .docs
            .iter()
            .filter(|(id, d)| d.deleted.is_none() && !id.is_system())
            .map(|(id, d)| d.snapshot(id))
            .collect();
        query.evaluate(&live).into_iter().cloned().collect()
    }

    fn doc_view(&self, sub: &SubId, doc: &DocId) -> ServerMessage {
        let sub = sub.clone();
        let sys = |seq, data| {
            let snapshot = DocSnapshot {
                id: doc.clone(),
                doc_type: DocType::new("sys").expect("valid"),
                seq,
                owner: UserId::new("system").expect("valid"),
                data,
                lists: BTreeMap::new(),
            };
            ServerMessage::DocSnapshot { sub: sub.clone(), doc: snapshot }
        };
        let entries = |trash: bool| {
            let docs =
                self.state.docs.iter().filter(|(id, d)| !id.is_system() && d.deleted.is_some() == trash);
            let docs: Vec<Value> = docs
                .map(|(id, d)| match d.deleted {
                    Some((seq, at)) => {
                        json!({"id": id, "doc_type": d.doc_type, "deleted_at": at, "seq": seq})
                    }
                    None => json!({"id": id, "doc_type": d.doc_type}),
                })
                .collect();
            json!({ "docs": docs })
        };
        match doc.as_str() {
            "sys:index" => sys(self.state.index_seq, entries(false)),
            "sys:trash" => sys(self.state.trash_seq, entries(true)),
            "sys:users" => {
                let users: Vec<Value> = self
                    .state
                    .users
                    .iter()
                    .map(|(id, (role, _, _))| json!({"id": id, "role": role}))
                    .collect();
                sys(self.state.users_seq, json!({ "users": users }))
            }
            _ => match self.state.docs.get(doc) {
                None => ServerMessage::DocMissing { sub, doc: doc.clone(), seq: self.state.seq },
                Some(Doc { deleted: Some((seq, _)), .. }) => {
                    ServerMessage::DocDeleted { sub, doc: doc.clone(), seq: *seq }
                }
                Some(d) => ServerMessage::DocSnapshot { sub, doc: d.snapshot(doc) },
            },
        }
    }

    fn bucket(&self, user: &UserId, name: &BucketName, backend: Option<Backend>) -> Result<&Bucket, Refusal> {
        // errors.precedence: the bucket's existence and backend before the user scope.
        let bucket = self.state.buckets.get(name).ok_or_else(|| refuse(ErrorCode::NotFound))?;
        if backend.is_some_and(|backend| backend != bucket.contract.backend) {
            let body = refuse(ErrorCode::Incompatible);
            return Err(Box::new(ErrorBody { contract: Some(bucket.contract.clone()), ..*body }));
        }
        if name.as_str().strip_prefix("user:").is_some_and(|owner| owner != user.as_str()) {
            return Err(refuse(ErrorCode::Forbidden));
        }
        Ok(bucket)
    }

    fn mutate(&mut self, conn: ConnId, mid: u64, mutation: Mutation, now_ms: u64) -> Vec<Effect> {
        let peer = &self.conns[&conn];
        let identity = peer.identity.clone();
        let key = (identity.user.clone(), peer.client.clone().expect("greeted"));
        let answers = self.state.answers.entry(key.clone()).or_default();
        if answers.keys().next_back().is_some_and(|newest| mid <= *newest) {
            let answer = answers.get(&mid).cloned();
            let answer = answer
                .unwrap_or_else(|| ServerMessage::Error(refuse(ErrorCode::ReplayExpired).with_mid(mid)));
            return vec![Effect::Send { conn, message: answer }];
        }
        let mut next = self.state.clone();
        let outcome = apply(&mut next, &self.config, &identity, mutation, now_ms)
            .and_then(|(advances, version)| self.check_quota(&next).map(|()| (advances, version)));
        let answer = match outcome {
            Ok((advances, version)) => {
                if advances {
                    next.seq += 1;
                }
                self.state = next;
                ServerMessage::Ack { mid, seq: self.state.seq, version, object_key: None }
            }
            Err(body) => ServerMessage::Error(body.with_mid(mid)),
        };
        let answers = self.state.answers.entry(key).or_default();
        answers.insert(mid, answer.clone());
        while answers.len() > self.config.limits.replay_window_max {
            answers.pop_first();
        }
        let mut effects = vec![Effect::Send { conn, message: answer }];
        effects.extend(self.pushes());
        effects
    }

    /// docs/PROTOCOL.md quota.check, by recounting everything before and after.
    fn check_quota(&self, next: &State) -> Result<(), Refusal> {
        let (before, after) = (usage(&self.state), usage(next));
        let users: std::collections::BTreeSet<&UserId> = before.keys().chain(after.keys()).collect();
        for user in users {
            let (used, now) = (before.get(user).copied().unwrap_or(0), after.get(user).copied().unwrap_or(0));
            let (_, plan, addons) = self.state.users[user];
            let limit = self.config.quotas.limit(plan, addons);
            if now > used && now > limit {
                return Err(Box::new(ErrorBody {
                    used: Some(used),
                    limit: Some(limit),
                    ..*refuse(ErrorCode::QuotaExceeded)
                }));
            }
        }
        Ok(())
    }

    /// Every subscription whose view changed gets the change, in connection and subscription order.
    fn pushes(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            let subs: Vec<(SubId, Shown)> =
                self.conns[&conn].subs.iter().map(|(s, v)| (s.clone(), v.clone())).collect();
            for (sub, shown) in subs {
                let Some((message, now)) = self.changed(&sub, &shown) else {
                    continue;
                };
                self.conns.get_mut(&conn).expect("connected").subs.insert(sub, now);
                effects.push(Effect::Send { conn, message });
            }
        }
        effects
    }

    fn changed(&self, sub: &SubId, shown: &Shown) -> Option<(ServerMessage, Shown)> {
        match shown {
            Shown::Query(query, before) => {
                let after = self.query(query);
                let seqs = |docs: &[DocSnapshot]| {
                    docs.iter().map(|d| (d.id.clone(), d.seq)).collect::<BTreeMap<_, _>>()
                };
                let (old, new) = (seqs(before), seqs(&after));
                let added: Vec<DocSnapshot> =
                    after.iter().filter(|d| !old.contains_key(&d.id)).cloned().collect();
                let changed: Vec<DocSnapshot> =
                    after.iter().filter(|d| old.get(&d.id).is_some_and(|s| *s != d.seq)).cloned().collect();
                let removed: Vec<DocId> = old.keys().filter(|id| !new.contains_key(*id)).cloned().collect();
                if added.is_empty() && changed.is_empty() && removed.is_empty() {
                    return None;
                }
                let message = ServerMessage::QueryDiff {
                    sub: sub.clone(),
                    seq: self.state.seq,
                    added,
                    changed,
                    removed,
                };
                Some((message, Shown::Query(query.clone(), after)))
            }
            Shown::Doc(doc, before) => {
                let after = self.doc_view(sub, doc);
                // A missing document's answer carries the room sequence; it is news only if the
                // document itself changed.
                let same = match (before, &after) {
                    (ServerMessage::DocMissing { .. }, ServerMessage::DocMissing { .. }) => true,
                    (before, after) => before == after,
                };
                if same {
                    return None;
                }
                let message = list_diff(before, &after).unwrap_or_else(|| after.clone());
                Some((message, Shown::Doc(doc.clone(), after)))
            }
            Shown::Bucket(name, before) => {
                // A JSON subscription sees a bucket bound for assets as deleted (bucket.subscribe.kind).
                let after = (self.state.buckets.get(name))
                    .filter(|b| b.contract.backend == Backend::D1Json)
                    .map(|b| (b.version, b.value.clone()));
                if *before == after {
                    return None;
                }
                let message = match &after {
                    None => ServerMessage::BucketDeleted {
                        sub: sub.clone(),
                        bucket: name.clone(),
                        seq: self.state.seq,
                    },
                    Some((version, value)) => ServerMessage::BucketValue {
                        sub: Some(sub.clone()),
                        req: None,
                        bucket: name.clone(),
                        version: *version,
                        value: value.clone(),
                    },
                };
                Some((message, Shown::Bucket(name.clone(), after)))
            }
        }
    }

    /// The state to compare with [`Room::export`](crate::Room::export).
    pub fn export(&self) -> Export {
        let docs = self.state.docs.iter().map(|(id, d)| (d.snapshot(id), d.deleted)).collect();
        let mut all_usage = usage(&self.state);
        for user in self.state.users.keys() {
            all_usage.entry(user.clone()).or_insert(0);
        }
        let buckets = self
            .state
            .buckets
            .iter()
            .map(|(name, b)| {
                (name.clone(), (b.contract.clone(), b.version, b.value.clone(), b.setter.clone()))
            })
            .collect();
        Export { seq: self.state.seq, docs, usage: all_usage, buckets }
    }
}

fn usage(state: &State) -> BTreeMap<UserId, u64> {
    let mut usage: BTreeMap<UserId, u64> = BTreeMap::new();
    for doc in state.docs.values() {
        *usage.entry(doc.owner.clone()).or_default() += doc.bytes();
    }
    for bucket in state.buckets.values() {
        if let Some(setter) = &bucket.setter {
            *usage.entry(setter.clone()).or_default() += canonical_len(&bucket.value);
        }
    }
    usage
}

/// Applies a mutation to `state` (the sequence is bumped by the caller): whether it takes a new
/// sequence, and the bucket version for the ack.
fn apply(
    state: &mut State,
    config: &Config,
    writer: &Identity,
    mutation: Mutation,
    now_ms: u64,
) -> Result<(bool, Option<u64>), Refusal> {
    let seq = state.seq + 1;
    let member = writer.role >= Role::Member;
    let doc_bytes_max = config.limits.doc_bytes_max as u64;
    let fits =
        |doc: &Doc| if doc.bytes() > doc_bytes_max { Err(refuse(ErrorCode::LimitExceeded)) } else { Ok(()) };
    match mutation {
        Mutation::Create { doc, doc_type, data } => {
            if doc.is_system() {
                return Err(refuse(ErrorCode::Protected));
            }
            match state.docs.get(&doc) {
                Some(Doc { deleted: Some(_), seq, .. }) => {
                    return Err(refuse(ErrorCode::Deleted).with_seq(*seq).into())
                }
                Some(_) => return Err(refuse(ErrorCode::Exists)),
                None => {}
            }
            if !member {
                return Err(refuse(ErrorCode::Forbidden));
            }
            if !data.is_object() {
                return Err(refuse(ErrorCode::Invalid));
            }
            let new = Doc {
                doc_type,
                seq,
                owner: writer.user.clone(),
                data,
                lists: BTreeMap::new(),
                deleted: None,
            };
            fits(&new)?;
            state.docs.insert(doc, new);
            state.index_seq = seq;
        }
        Mutation::Put { doc, data, if_seq } => write(
            state,
            writer,
            &doc,
            if_seq,
            |d| {
                d.data = data;
                Ok(())
            },
            seq,
            doc_bytes_max,
        )?,
        Mutation::Patch { doc, data, if_seq } => write(
            state,
            writer,
            &doc,
            if_seq,
            |d| {
                merge_patch(&mut d.data, &data);
                Ok(())
            },
            seq,
            doc_bytes_max,
        )?,
        Mutation::Remove { doc, if_seq } => {
            if doc.is_system() {
                return Err(refuse(ErrorCode::Protected));
            }
            live(state, writer, &doc, if_seq)?;
            state.docs.get_mut(&doc).expect("live").deleted = Some((seq, now_ms));
            (state.index_seq, state.trash_seq) = (seq, seq);
        }
        Mutation::Restore { doc } | Mutation::Purge { doc } if doc.is_system() => {
            return Err(refuse(ErrorCode::Protected));
        }
        Mutation::Restore { doc } => {
            trashed(state, writer, &doc)?;
            state.docs.get_mut(&doc).expect("deleted").deleted = None;
            (state.index_seq, state.trash_seq) = (seq, seq);
        }
        Mutation::Purge { doc } => {
            trashed(state, writer, &doc)?;
            state.docs.remove(&doc);
            state.trash_seq = seq;
        }
        Mutation::ListInsert { doc, list, item, key, value } => {
            let items_max = config.limits.list_items_max;
            list_write(state, writer, &doc, seq, doc_bytes_max, |lists| {
                let items = lists.entry(list.clone()).or_default();
                if items.contains_key(&item) {
                    return Err(refuse(ErrorCode::Exists));
                }
                if items.len() >= items_max {
                    return Err(refuse(ErrorCode::LimitExceeded));
                }
                items.insert(item, (key, value));
                Ok(())
            })?
        }
        Mutation::ListMove { doc, list, item, key } => {
            list_write(state, writer, &doc, seq, doc_bytes_max, |lists| {
                let entry = lists
                    .get_mut(&list)
                    .and_then(|items| items.get_mut(&item))
                    .ok_or_else(|| refuse(ErrorCode::NotFound))?;
                entry.0 = key;
                Ok(())
            })?
        }
        Mutation::ListUpdate { doc, list, item, value } => {
            list_write(state, writer, &doc, seq, doc_bytes_max, |lists| {
                let entry = lists
                    .get_mut(&list)
                    .and_then(|items| items.get_mut(&item))
                    .ok_or_else(|| refuse(ErrorCode::NotFound))?;
                entry.1 = value;
                Ok(())
            })?
        }
        Mutation::ListRemove { doc, list, item } => {
            list_write(state, writer, &doc, seq, doc_bytes_max, |lists| {
                let items = lists.get_mut(&list).ok_or_else(|| refuse(ErrorCode::NotFound))?;
                items.remove(&item).ok_or_else(|| refuse(ErrorCode::NotFound))?;
                if items.is_empty() {
                    lists.remove(&list);
                }
                Ok(())
            })?
        }
        Mutation::BucketBind { bucket, contract } => {
            if let Some(found) = state.buckets.get(&bucket).filter(|found| found.contract != contract) {
                return Err(Box::new(ErrorBody {
                    contract: Some(found.contract.clone()),
                    ..*refuse(ErrorCode::Incompatible)
                }));
            }
            if !member {
                return Err(refuse(ErrorCode::Forbidden));
            }
            if bucket.as_str().strip_prefix("user:").is_some_and(|owner| owner != writer.user.as_str()) {
                return Err(refuse(ErrorCode::Forbidden));
            }
            match state.buckets.get(&bucket) {
                Some(found) if found.contract == contract => return Ok((false, Some(found.version))),
                Some(found) => {
                    return Err(Box::new(ErrorBody {
                        contract: Some(found.contract.clone()),
                        ..*refuse(ErrorCode::Incompatible)
                    }));
                }
                None => {
                    state
                        .buckets
                        .insert(bucket, Bucket { contract, version: 0, value: Value::Null, setter: None });
                    return Ok((true, Some(0)));
                }
            }
        }
        Mutation::BucketSet { bucket, value, if_version } => {
            let found = writable_bucket(state, writer, &bucket, Some(Backend::D1Json))?;
            if writer.plan == Plan::Free {
                return Err(refuse(ErrorCode::StorageDisabled));
            }
            if if_version.is_some_and(|expected| expected != found.version) {
                return Err(Box::new(ErrorBody {
                    version: Some(found.version),
                    ..*refuse(ErrorCode::Conflict)
                }));
            }
            let version = found.version + 1;
            let found = state.buckets.get_mut(&bucket).expect("found");
            (found.version, found.value, found.setter) = (version, value, Some(writer.user.clone()));
            return Ok((true, Some(version)));
        }
        Mutation::BucketDelete { bucket } => {
            writable_bucket(state, writer, &bucket, None)?;
            state.buckets.remove(&bucket);
        }
        other => panic!("the model does not cover {other:?}"),
    }
    Ok((true, None))
}

fn writable_bucket<'s>(
    state: &'s State,
    writer: &Identity,
    name: &BucketName,
    backend: Option<Backend>,
) -> Result<&'s Bucket, Refusal> {
    // errors.precedence: the bucket's existence and backend, then access to it.
    let found = state.buckets.get(name).ok_or_else(|| refuse(ErrorCode::NotFound))?;
    if backend.is_some_and(|backend| backend != found.contract.backend) {
        return Err(Box::new(ErrorBody {
            contract: Some(found.contract.clone()),
            ..*refuse(ErrorCode::Incompatible)
        }));
    }
    if writer.role < Role::Member
        || name.as_str().strip_prefix("user:").is_some_and(|o| o != writer.user.as_str())
    {
        return Err(refuse(ErrorCode::Forbidden));
    }
    Ok(found)
}

/// The checks of a write to a live document, in the order the rules list them.
fn live(state: &State, writer: &Identity, doc: &DocId, if_seq: Option<u64>) -> Result<(), Refusal> {
    if doc.is_system() {
        return Err(refuse(ErrorCode::Protected));
    }
    let found = state.docs.get(doc).ok_or_else(|| refuse(ErrorCode::NotFound))?;
    if found.deleted.is_some() {
        return Err(refuse(ErrorCode::Deleted).with_seq(found.seq).into());
    }
    if writer.role < Role::Member {
        return Err(refuse(ErrorCode::Forbidden));
    }
    if if_seq.is_some_and(|expected| expected != found.seq) {
        return Err(refuse(ErrorCode::Conflict).with_seq(found.seq).into());
    }
    Ok(())
}

fn trashed(state: &State, writer: &Identity, doc: &DocId) -> Result<(), Refusal> {
    let found = state.docs.get(doc).ok_or_else(|| refuse(ErrorCode::NotFound))?;
    if found.deleted.is_none() {
        return Err(refuse(ErrorCode::NotDeleted));
    }
    if writer.role < Role::Member {
        return Err(refuse(ErrorCode::Forbidden));
    }
    Ok(())
}

fn write(
    state: &mut State,
    writer: &Identity,
    doc: &DocId,
    if_seq: Option<u64>,
    change: impl FnOnce(&mut Doc) -> Result<(), Refusal>,
    seq: u64,
    doc_bytes_max: u64,
) -> Result<(), Refusal> {
    live(state, writer, doc, if_seq)?;
    let mut new = state.docs[doc].clone();
    change(&mut new)?;
    if !new.data.is_object() {
        return Err(refuse(ErrorCode::Invalid));
    }
    if new.bytes() > doc_bytes_max {
        return Err(refuse(ErrorCode::LimitExceeded));
    }
    new.seq = seq;
    state.docs.insert(doc.clone(), new);
    Ok(())
}

type Lists = BTreeMap<FieldName, BTreeMap<ItemId, (ListKey, Value)>>;

fn list_write(
    state: &mut State,
    writer: &Identity,
    doc: &DocId,
    seq: u64,
    doc_bytes_max: u64,
    change: impl FnOnce(&mut Lists) -> Result<(), Refusal>,
) -> Result<(), Refusal> {
    if doc.is_system() {
        return Err(refuse(ErrorCode::Protected));
    }
    write(state, writer, doc, None, |d| change(&mut d.lists), seq, doc_bytes_max)
}

/// The connections of every twin run: (user, role, plan); connection `i` is `PEOPLE[i]`.
pub const PEOPLE: [(&str, Role, Plan); 4] = [
    ("alice", Role::Member, Plan::Pro),
    ("bob", Role::Member, Plan::Free),
    ("val", Role::Viewer, Plan::Pro),
    ("ada", Role::Admin, Plan::Pro),
];

/// A file-backed room and the model, driven with the same inputs; every step asserts that both gave
/// the same effects (error messages and close reasons aside) and that the room's invariants hold.
pub struct Twin {
    room: Option<crate::Room>,
    model: Model,
    path: std::path::PathBuf,
    config: Config,
    now_ms: u64,
}

/// Effects with human-readable texts blanked: the model does not write messages.
fn normalize(effects: Vec<Effect>) -> Vec<String> {
    let text = |conn: ConnId, message: &ServerMessage| {
        format!("{} < {}", conn.0, roomlab_protocol::encode_server(message))
    };
    effects
        .into_iter()
        .map(|effect| match effect {
            Effect::Send { conn, message: ServerMessage::Error(body) } => {
                text(conn, &ServerMessage::Error(ErrorBody { message: String::new(), ..body }))
            }
            Effect::Send { conn, message } => text(conn, &message),
            Effect::Close { conn, code, .. } => format!("{} closed {code}", conn.0),
            Effect::Yjs { conn, .. } => format!("{} yjs", conn.0),
        })
        .collect()
}

impl Twin {
    /// Opens a room at `path` and the model, and connects and greets every one of [`PEOPLE`].
    pub fn new(path: &std::path::Path, config: Config) -> Twin {
        let room = crate::Room::open(RoomId::new("r").expect("valid"), Some(path), config.clone())
            .expect("room opens");
        let model = Model::new(RoomId::new("r").expect("valid"), config.clone());
        let mut twin = Twin { room: Some(room), model, path: path.to_path_buf(), config, now_ms: 0 };
        for conn in 0..PEOPLE.len() {
            twin.join(conn);
        }
        twin
    }

    /// Whether the model covers a message; the twin skips the others.
    pub fn covers(message: &ClientMessage) -> bool {
        let covered_doc =
            |doc: &DocId| !doc.is_system() || matches!(doc.as_str(), "sys:index" | "sys:trash" | "sys:users");
        match message {
            ClientMessage::Subscribe { target: Target::Doc(doc), .. } => covered_doc(doc),
            ClientMessage::Subscribe { target: Target::Assets(_), .. } => false,
            ClientMessage::AssetList { .. } | ClientMessage::YjsClose { .. } => false,
            ClientMessage::Mutate { mutation, .. } => match mutation {
                Mutation::Create { doc, .. }
                | Mutation::Put { doc, .. }
                | Mutation::Patch { doc, .. }
                | Mutation::Remove { doc, .. }
                | Mutation::ListInsert { doc, .. }
                | Mutation::ListMove { doc, .. }
                | Mutation::ListUpdate { doc, .. }
                | Mutation::ListRemove { doc, .. } => doc.schema_for().is_none(),
                Mutation::Restore { .. } | Mutation::Purge { .. } => true,
                Mutation::BucketBind { .. } | Mutation::BucketSet { .. } | Mutation::BucketDelete { .. } => {
                    true
                }
                _ => false,
            },
            _ => true,
        }
    }

    fn both(&mut self, what: &str, input: impl Fn(&mut dyn Side) -> Vec<Effect>) {
        let room = self.room.as_mut().expect("open");
        let engine = normalize(input(room));
        let model = normalize(input(&mut self.model));
        assert_eq!(engine, model, "engine and model differ on {what}");
        room.check_invariants();
    }

    fn join(&mut self, conn: usize) {
        let (user, role, plan) = PEOPLE[conn];
        let identity = Identity { plan, ..Identity::new(UserId::new(user).expect("valid"), role) };
        let (now_ms, id) = (self.now_ms, ConnId(conn as u64));
        self.both("connect", |side| side.connect(id, identity.clone(), now_ms));
        let hello =
            ClientMessage::Hello { protocol: 1, client: ClientId::new(format!("c{conn}")).expect("valid") };
        self.both("hello", |side| side.handle(id, hello.clone(), now_ms));
    }

    /// Connection `conn` (an index into [`PEOPLE`]) sends `message`, one second after the last step.
    pub fn handle(&mut self, conn: usize, message: ClientMessage) {
        self.now_ms += 1_000;
        let now_ms = self.now_ms;
        let what = format!("{message:?}");
        self.both(&what, |side| side.handle(ConnId(conn as u64), message.clone(), now_ms));
    }

    /// Connection `conn` drops and comes back.
    pub fn reconnect(&mut self, conn: usize) {
        let id = ConnId(conn as u64);
        self.room.as_mut().expect("open").disconnect(id);
        self.model.disconnect(id);
        self.join(conn);
    }

    /// Opens a commit group in the room, or commits the open one. The model has no groups: a
    /// group that commits must change nothing anyone sees.
    pub fn toggle_group(&mut self) {
        let room = self.room.as_mut().expect("open");
        if room.group_open() {
            room.commit_group().expect("the group commits");
        } else {
            room.begin_group().expect("a group opens");
        }
    }

    /// The room crashes and reopens its database; everyone reconnects. A host commits a group
    /// before it takes its next input, so a crash never lands inside one.
    pub fn crash(&mut self) {
        self.room.as_mut().expect("open").commit_group().expect("the group commits");
        self.room = None;
        let room = crate::Room::open(RoomId::new("r").expect("valid"), Some(&self.path), self.config.clone());
        self.room = Some(room.expect("room reopens"));
        self.model.reopen();
        for conn in 0..PEOPLE.len() {
            self.join(conn);
        }
    }

    /// Asserts that the room and the model hold the same state.
    pub fn finish(&mut self) {
        self.room.as_mut().expect("open").commit_group().expect("the group commits");
        let room = self.room.as_ref().expect("open");
        assert_eq!(room.export(), self.model.export(), "engine and model end in different states");
    }
}

/// What the room and the model have in common.
trait Side {
    fn connect(&mut self, conn: ConnId, identity: Identity, now_ms: u64) -> Vec<Effect>;
    fn handle(&mut self, conn: ConnId, message: ClientMessage, now_ms: u64) -> Vec<Effect>;
}

impl Side for crate::Room {
    fn connect(&mut self, conn: ConnId, identity: Identity, now_ms: u64) -> Vec<Effect> {
        crate::Room::connect(self, conn, identity, now_ms)
    }
    fn handle(&mut self, conn: ConnId, message: ClientMessage, now_ms: u64) -> Vec<Effect> {
        crate::Room::handle(self, conn, message, now_ms)
    }
}

impl Side for Model {
    fn connect(&mut self, conn: ConnId, identity: Identity, now_ms: u64) -> Vec<Effect> {
        Model::connect(self, conn, identity, now_ms)
    }
    fn handle(&mut self, conn: ConnId, message: ClientMessage, now_ms: u64) -> Vec<Effect> {
        Model::handle(self, conn, message, now_ms)
    }
}

/// The fuzz target `engine_ops` and its corpus replay: `input` is a script of lines, each
/// `<conn> <frame JSON>` (conn 0 to 3, see [`PEOPLE`]), `reconnect <conn>` or `crash`. Lines that do
/// not parse, or that the model does not cover, are skipped; each other line runs on a room at `path`
/// and on the model, which must agree. Returns how many lines ran.
pub fn check_script(path: &std::path::Path, config: Config, input: &[u8]) -> usize {
    /// Lines run per input, so one input cannot run for ever.
    const LINES_MAX: usize = 200;
    let mut twin = Twin::new(path, config);
    let mut ran = 0;
    for line in input.split(|b| *b == b'\n').take(LINES_MAX) {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let (head, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let conn = |text: &str| text.parse::<usize>().ok().filter(|conn| *conn < PEOPLE.len());
        match (head, conn(rest)) {
            ("crash", _) => twin.crash(),
            ("reconnect", Some(conn)) => twin.reconnect(conn),
            _ => {
                let Some(conn) = conn(head) else {
                    continue;
                };
                let Ok(message) = roomlab_protocol::decode(rest.as_bytes(), 1 << 16) else {
                    continue;
                };
                if !Twin::covers(&message) {
                    continue;
                }
                twin.handle(conn, message);
            }
        }
        ran += 1;
    }
    twin.finish();
    ran
}

/// A `doc:diff` from the document a subscription showed to the one it shows now, when only lists
/// changed (docs/PROTOCOL.md docs.subscribe.list-diff); system documents are always sent whole.
fn list_diff(before: &ServerMessage, after: &ServerMessage) -> Option<ServerMessage> {
    let (ServerMessage::DocSnapshot { doc: old, .. }, ServerMessage::DocSnapshot { sub, doc: new }) =
        (before, after)
    else {
        return None;
    };
    let same = !new.id.is_system()
        && old.id == new.id
        && old.doc_type == new.doc_type
        && old.owner == new.owner
        && old.data == new.data;
    if !same {
        return None;
    }
    let names: BTreeSet<&FieldName> = old.lists.keys().chain(new.lists.keys()).collect();
    let lists = names
        .into_iter()
        .filter_map(|name| {
            let items = |doc: &DocSnapshot| doc.lists.get(name).cloned().unwrap_or_default();
            ListDiff::between(&items(old), &items(new)).map(|diff| (name.clone(), diff))
        })
        .collect();
    Some(ServerMessage::DocDiff { sub: sub.clone(), doc: new.id.clone(), base: old.seq, seq: new.seq, lists })
}
