//! The room state machine: messages in, effects out; one SQLite transaction per accepted change.

use crate::storage::{self, DocumentRow};
use crate::EngineError;
use roomlab_protocol::{
    ClientId, ClientMessage, DocId, DocSnapshot, DocType, ErrorBody, ErrorCode, Limits, Mutation, Query,
    Role, RoomId, ServerMessage, SubId, Target, UserId, PROTOCOL_VERSION,
};
use rusqlite::Connection;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// A connection's id, chosen by the host (server or simulation), unique within the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Who is on a connection, as the host authenticated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: UserId,
    /// The role their token grants.
    pub role: Role,
}

/// What the host must do after the room handled an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a message to a connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        message: ServerMessage,
    },
    /// Close a connection with a WebSocket close code.
    Close {
        /// The connection.
        conn: ConnId,
        /// The close code (docs/PROTOCOL.md §2).
        code: u16,
        /// The reason, for humans.
        reason: String,
    },
}

/// The room's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// The limits the room enforces and announces.
    pub limits: Limits,
}

/// A document as the room holds it in memory; SQLite holds the same, committed.
#[derive(Debug, Clone, PartialEq)]
struct Document {
    doc_type: DocType,
    seq: u64,
    owner: UserId,
    data: Value,
    /// When soft-deleted: the room sequence and the time (ms) of the delete.
    deleted: Option<(u64, u64)>,
}

#[derive(Debug)]
enum Subscription {
    /// A live query and the ids (with their sequences) of its current result.
    Query { query: Query, result: BTreeMap<DocId, u64> },
    /// One document.
    Doc(DocId),
}

#[derive(Debug)]
/// One connected peer: who it is, its client id once greeted, and its subscriptions.
struct Peer {
    identity: Identity,
    client: Option<ClientId>,
    subscriptions: BTreeMap<SubId, Subscription>,
}

/// One room: its database, its documents, its connections.
pub struct Room {
    id: RoomId,
    config: Config,
    db: Connection,
    seq: u64,
    docs: BTreeMap<DocId, Document>,
    connections: BTreeMap<ConnId, Peer>,
    /// The room sequence of the last change to `sys:index`.
    index_seq: u64,
    /// The room sequence of the last change to `sys:trash`.
    trash_seq: u64,
}

/// The outcome of a mutation that passed every check: the change to write and push.
struct Change {
    doc: DocId,
    /// The document after the change; `None` when purged.
    document: Option<Document>,
    /// The lifecycle event, recorded in the membership log; `None` for a content change.
    lifecycle: Option<Lifecycle>,
}

/// A change of a document's membership in the room, as the membership log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Create,
    Delete,
    Restore,
    Purge,
}

impl Lifecycle {
    const ALL: [Lifecycle; 4] = [Lifecycle::Create, Lifecycle::Delete, Lifecycle::Restore, Lifecycle::Purge];

    fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Create => "create",
            Lifecycle::Delete => "delete",
            Lifecycle::Restore => "restore",
            Lifecycle::Purge => "purge",
        }
    }

    /// Whether the event alters `sys:index` (live documents) or `sys:trash` (deleted ones).
    fn alters(self, view: SystemView) -> bool {
        match view {
            SystemView::Index => matches!(self, Lifecycle::Create | Lifecycle::Delete | Lifecycle::Restore),
            SystemView::Trash => matches!(self, Lifecycle::Delete | Lifecycle::Restore | Lifecycle::Purge),
        }
    }
}

/// The system documents the engine synthesizes from the membership of documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SystemView {
    Index,
    Trash,
}

impl SystemView {
    fn of(doc: &DocId) -> Option<SystemView> {
        match doc.as_str() {
            "sys:index" => Some(SystemView::Index),
            "sys:trash" => Some(SystemView::Trash),
            _ => None,
        }
    }
}

type Refusal = Box<ErrorBody>;

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Box::new(ErrorBody::new(code, message))
}

impl Room {
    /// Opens the room's database (in memory when `path` is `None`) and loads its committed state.
    pub fn open(id: RoomId, path: Option<&Path>, config: Config) -> Result<Room, EngineError> {
        let db = storage::open(path)?;
        let seq = storage::sequence(&db)?;
        let mut docs = BTreeMap::new();
        let corrupt = |e: &dyn std::fmt::Display| EngineError::Corrupt(e.to_string());
        for row in storage::documents(&db)? {
            let id = DocId::new(row.id).map_err(|e| corrupt(&e))?;
            let document = Document {
                doc_type: DocType::new(row.doc_type).map_err(|e| corrupt(&e))?,
                seq: row.seq,
                owner: UserId::new(row.owner).map_err(|e| corrupt(&e))?,
                data: serde_json::from_str(&row.data).map_err(|e| corrupt(&e))?,
                deleted: row.deleted,
            };
            docs.insert(id, document);
        }
        let view_seq = |view| {
            let actions: Vec<&str> =
                Lifecycle::ALL.iter().filter(|l| l.alters(view)).map(|l| l.as_str()).collect();
            storage::last_membership_seq(&db, &actions)
        };
        let (index_seq, trash_seq) = (view_seq(SystemView::Index)?, view_seq(SystemView::Trash)?);
        let connections = BTreeMap::new();
        Ok(Room { id, config, db, seq, docs, connections, index_seq, trash_seq })
    }

    /// The room's committed sequence.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A connection was authenticated by the host.
    pub fn connect(&mut self, conn: ConnId, identity: Identity) {
        let connection = Peer { identity, client: None, subscriptions: BTreeMap::new() };
        let previous = self.connections.insert(conn, connection);
        assert!(previous.is_none(), "connection {conn:?} connected twice");
    }

    /// A connection closed; its subscriptions end.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.connections.remove(&conn);
    }

    /// Handles one message from a connection at time `now_ms`, returning the effects to carry out.
    pub fn handle(&mut self, conn: ConnId, message: ClientMessage, now_ms: u64) -> Vec<Effect> {
        let Some(connection) = self.connections.get(&conn) else {
            return Vec::new();
        };
        let greeted = connection.client.is_some();
        let reply = |message| vec![Effect::Send { conn, message }];
        match message {
            ClientMessage::Hello { protocol, client } => self.hello(conn, protocol, client),
            _ if !greeted => reply(error(ErrorCode::HelloRequired, "send hello first")),
            ClientMessage::Ping { nonce } => reply(ServerMessage::Pong { nonce }),
            ClientMessage::Subscribe { sub, target } => self.subscribe(conn, sub, target),
            ClientMessage::Unsubscribe { sub } => self.unsubscribe(conn, sub),
            ClientMessage::Mutate { mid, mutation } => self.mutate(conn, mid, mutation, now_ms),
            ClientMessage::BucketGet { req, .. } | ClientMessage::AssetList { req, .. } => {
                let body = ErrorBody::new(ErrorCode::NotFound, "this room has no buckets").with_req(req);
                reply(ServerMessage::Error(body))
            }
            ClientMessage::YjsClose { .. } => Vec::new(),
        }
    }

    fn hello(&mut self, conn: ConnId, protocol: u32, client: ClientId) -> Vec<Effect> {
        let connection = self.connections.get_mut(&conn).expect("connected");
        if connection.client.is_some() {
            return vec![Effect::Send {
                conn,
                message: error(ErrorCode::HelloRequired, "hello was already sent"),
            }];
        }
        if protocol != PROTOCOL_VERSION {
            let message = error(
                ErrorCode::UnsupportedProtocol,
                format!("this server speaks protocol {PROTOCOL_VERSION}"),
            );
            return vec![
                Effect::Send { conn, message },
                Effect::Close { conn, code: 4002, reason: "unsupported protocol version".into() },
            ];
        }
        connection.client = Some(client);
        let welcome = ServerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            room: self.id.clone(),
            user: connection.identity.user.clone(),
            role: connection.identity.role,
            seq: self.seq,
            limits: self.config.limits.clone(),
        };
        vec![Effect::Send { conn, message: welcome }]
    }

    fn subscribe(&mut self, conn: ConnId, sub: SubId, target: Target) -> Vec<Effect> {
        let connection = self.connections.get(&conn).expect("connected");
        let refusal = if connection.subscriptions.contains_key(&sub) {
            Some(refuse(ErrorCode::SubscriptionExists, format!("subscription {sub} is live")))
        } else if connection.subscriptions.len() >= self.config.limits.subscriptions_max {
            Some(refuse(ErrorCode::SubscriptionLimit, "too many subscriptions on this connection"))
        } else {
            None
        };
        let outcome = match refusal {
            Some(refusal) => Err(refusal),
            None => self.start_subscription(conn, &sub, target),
        };
        let message = outcome.unwrap_or_else(|body| ServerMessage::Error(body.with_sub(sub)));
        vec![Effect::Send { conn, message }]
    }

    fn start_subscription(
        &mut self,
        conn: ConnId,
        sub: &SubId,
        target: Target,
    ) -> Result<ServerMessage, Refusal> {
        let reader = self.connections[&conn].identity.clone();
        let (subscription, first) = match target {
            Target::Query(query) => {
                query.check().map_err(|e| refuse(ErrorCode::Invalid, e.to_string()))?;
                let docs: Vec<DocSnapshot> = self.query_result(&query, &reader);
                let result = docs.iter().map(|d| (d.id.clone(), d.seq)).collect();
                let first = ServerMessage::QueryResult { sub: sub.clone(), seq: self.seq, docs };
                (Subscription::Query { query, result }, first)
            }
            Target::Doc(doc) => {
                if self.docs.get(&doc).is_some_and(|d| !can_read(&reader, d)) {
                    return Err(refuse(ErrorCode::Forbidden, format!("you may not read {doc}")));
                }
                let first = self.doc_view(sub, &doc, &reader);
                (Subscription::Doc(doc), first)
            }
            Target::Bucket(_) | Target::Assets(_) => {
                return Err(refuse(ErrorCode::NotFound, "this room has no buckets"));
            }
        };
        let connection = self.connections.get_mut(&conn).expect("connected");
        connection.subscriptions.insert(sub.clone(), subscription);
        Ok(first)
    }

    fn unsubscribe(&mut self, conn: ConnId, sub: SubId) -> Vec<Effect> {
        let connection = self.connections.get_mut(&conn).expect("connected");
        let message = match connection.subscriptions.remove(&sub) {
            Some(_) => ServerMessage::Unsubscribed { sub },
            None => {
                let message = format!("no subscription {sub}");
                ServerMessage::Error(ErrorBody::new(ErrorCode::SubscriptionUnknown, message).with_sub(sub))
            }
        };
        vec![Effect::Send { conn, message }]
    }

    /// The documents a reader sees for `query`, in order.
    fn query_result(&self, query: &Query, reader: &Identity) -> Vec<DocSnapshot> {
        // Only documents of the query's collection are copied into snapshots for the filter.
        let candidates: Vec<DocSnapshot> = self
            .docs
            .iter()
            .filter(|(id, d)| d.doc_type == query.collection && d.deleted.is_none() && !id.is_system())
            .filter(|(_, d)| can_read(reader, d))
            .map(|(id, d)| snapshot(id, d))
            .collect();
        query.evaluate(&candidates).into_iter().cloned().collect()
    }

    /// What a document subscription shows a reader now.
    fn doc_view(&self, sub: &SubId, doc: &DocId, reader: &Identity) -> ServerMessage {
        let sub = sub.clone();
        if let Some(view) = SystemView::of(doc) {
            return ServerMessage::DocSnapshot { sub, doc: self.system_view(doc, view, reader) };
        }
        match self.docs.get(doc) {
            Some(d) if !can_read(reader, d) => {
                ServerMessage::DocMissing { sub, doc: doc.clone(), seq: self.seq }
            }
            Some(Document { deleted: Some((seq, _)), .. }) => {
                ServerMessage::DocDeleted { sub, doc: doc.clone(), seq: *seq }
            }
            Some(d) => ServerMessage::DocSnapshot { sub, doc: snapshot(doc, d) },
            None => ServerMessage::DocMissing { sub, doc: doc.clone(), seq: self.seq },
        }
    }

    /// `sys:index` (live documents) or `sys:trash` (soft-deleted ones), as `reader` may see them.
    fn system_view(&self, doc: &DocId, view: SystemView, reader: &Identity) -> DocSnapshot {
        let trash = view == SystemView::Trash;
        let entries: Vec<Value> = self
            .docs
            .iter()
            .filter(|(id, d)| !id.is_system() && d.deleted.is_some() == trash && can_read(reader, d))
            .map(|(id, d)| match d.deleted {
                Some((seq, at)) => json!({"id": id, "doc_type": d.doc_type, "deleted_at": at, "seq": seq}),
                None => json!({"id": id, "doc_type": d.doc_type}),
            })
            .collect();
        DocSnapshot {
            id: doc.clone(),
            doc_type: DocType::new("sys").expect("valid type"),
            seq: if trash { self.trash_seq } else { self.index_seq },
            owner: UserId::new("system").expect("valid user"),
            data: json!({ "docs": entries }),
            lists: BTreeMap::new(),
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error(ErrorBody::new(code, message))
}

fn snapshot(id: &DocId, document: &Document) -> DocSnapshot {
    DocSnapshot {
        id: id.clone(),
        doc_type: document.doc_type.clone(),
        seq: document.seq,
        owner: document.owner.clone(),
        data: document.data.clone(),
        lists: BTreeMap::new(),
    }
}

/// Whether `reader` may read `document`. Without schemas (not built yet) reading needs `viewer`,
/// the lowest role, so every reader may; owner-scoped and admin-only reads come with schemas.
fn can_read(_reader: &Identity, _document: &Document) -> bool {
    true
}

/// Whether `writer` may write `document` (`None`: create). Without schemas writing needs `member`.
fn can_write(writer: &Identity, _document: Option<&Document>) -> bool {
    writer.role >= Role::Member
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let object = target.as_object_mut().expect("just made an object");
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else {
            merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

impl Room {
    fn mutate(&mut self, conn: ConnId, mid: u64, mutation: Mutation, now_ms: u64) -> Vec<Effect> {
        let connection = &self.connections[&conn];
        let writer = connection.identity.clone();
        let client = connection.client.clone().expect("greeted");
        let key = (writer.user.as_str().to_string(), client.as_str().to_string());
        match storage::replay_lookup(&self.db, (&key.0, &key.1), mid) {
            Ok((Some(newest), answer)) if mid <= newest => {
                let message = match answer.and_then(|a| serde_json::from_str(&a).ok()) {
                    Some(original) => original,
                    None => {
                        let body = ErrorBody::new(ErrorCode::ReplayExpired, "mutation id already processed");
                        ServerMessage::Error(body.with_mid(mid))
                    }
                };
                return vec![Effect::Send { conn, message }];
            }
            Ok(_) => {}
            Err(e) => return vec![Effect::Send { conn, message: internal(mid, &e) }],
        }
        let seq = self.seq + 1;
        let planned = self.plan(&writer, mutation, seq, now_ms);
        self.commit(conn, (mid, seq), (&key.0, &key.1), planned, now_ms)
    }

    /// Checks a mutation against the in-memory state and returns the change it makes at `seq`.
    fn plan(&self, writer: &Identity, mutation: Mutation, seq: u64, now_ms: u64) -> Result<Change, Refusal> {
        match mutation {
            Mutation::Create { doc, doc_type, data } => self.plan_create(writer, doc, doc_type, data, seq),
            Mutation::Put { doc, data, if_seq } => self.plan_write(writer, doc, if_seq, seq, |_| data),
            Mutation::Patch { doc, data, if_seq } => self.plan_write(writer, doc, if_seq, seq, |old| {
                let mut merged = old.clone();
                merge_patch(&mut merged, &data);
                merged
            }),
            Mutation::Remove { doc, if_seq } => self.plan_remove(writer, doc, if_seq, seq, now_ms),
            Mutation::Restore { doc } => self.plan_restore(writer, doc, false),
            Mutation::Purge { doc } => self.plan_restore(writer, doc, true),
            _ => Err(refuse(ErrorCode::Invalid, "this operation is not supported by this room")),
        }
    }

    fn plan_create(
        &self,
        writer: &Identity,
        doc: DocId,
        doc_type: DocType,
        data: Value,
        seq: u64,
    ) -> Result<Change, Refusal> {
        if doc.is_system() {
            return Err(refuse(ErrorCode::Protected, format!("{doc} is a system document")));
        }
        if !can_write(writer, None) {
            return Err(refuse(ErrorCode::Forbidden, "your role cannot write"));
        }
        match self.docs.get(&doc) {
            Some(Document { deleted: Some((_, _)), seq: doc_seq, .. }) => {
                let message = format!("{doc} is deleted: restore it or pick a new id");
                return Err(Box::new(ErrorBody::new(ErrorCode::Deleted, message).with_seq(*doc_seq)));
            }
            Some(_) => return Err(refuse(ErrorCode::Exists, format!("{doc} exists"))),
            None => {}
        }
        check_data(&data, self.config.limits.doc_bytes_max)?;
        let document = Document { doc_type, seq, owner: writer.user.clone(), data, deleted: None };
        Ok(Change { doc, document: Some(document), lifecycle: Some(Lifecycle::Create) })
    }

    /// The live document `doc` that `writer` may write, with its guard checked.
    fn writable(&self, writer: &Identity, doc: &DocId, if_seq: Option<u64>) -> Result<&Document, Refusal> {
        if doc.is_system() {
            return Err(refuse(ErrorCode::Protected, format!("{doc} is a system document")));
        }
        let document =
            self.docs.get(doc).ok_or_else(|| refuse(ErrorCode::NotFound, format!("no document {doc}")))?;
        if document.deleted.is_some() {
            let body = ErrorBody::new(ErrorCode::Deleted, format!("{doc} is deleted"));
            return Err(Box::new(body.with_seq(document.seq)));
        }
        if !can_write(writer, Some(document)) {
            return Err(refuse(ErrorCode::Forbidden, "you may not write this document"));
        }
        match if_seq {
            Some(expected) if expected != document.seq => {
                let message = format!("{doc} is at seq {}, not {expected}", document.seq);
                Err(Box::new(ErrorBody::new(ErrorCode::Conflict, message).with_seq(document.seq)))
            }
            _ => Ok(document),
        }
    }

    fn plan_write(
        &self,
        writer: &Identity,
        doc: DocId,
        if_seq: Option<u64>,
        seq: u64,
        new_data: impl FnOnce(&Value) -> Value,
    ) -> Result<Change, Refusal> {
        let document = self.writable(writer, &doc, if_seq)?;
        let data = new_data(&document.data);
        check_data(&data, self.config.limits.doc_bytes_max)?;
        let document = Document { data, seq, ..document.clone() };
        Ok(Change { doc, document: Some(document), lifecycle: None })
    }

    fn plan_remove(
        &self,
        writer: &Identity,
        doc: DocId,
        if_seq: Option<u64>,
        seq: u64,
        now_ms: u64,
    ) -> Result<Change, Refusal> {
        let document = self.writable(writer, &doc, if_seq)?;
        let document = Document { deleted: Some((seq, now_ms)), ..document.clone() };
        Ok(Change { doc, document: Some(document), lifecycle: Some(Lifecycle::Delete) })
    }

    fn plan_restore(&self, writer: &Identity, doc: DocId, purge: bool) -> Result<Change, Refusal> {
        if doc.is_system() {
            return Err(refuse(ErrorCode::Protected, format!("{doc} is a system document")));
        }
        let document =
            self.docs.get(&doc).ok_or_else(|| refuse(ErrorCode::NotFound, format!("no document {doc}")))?;
        if document.deleted.is_none() {
            return Err(refuse(ErrorCode::NotDeleted, format!("{doc} is not deleted")));
        }
        if !can_write(writer, Some(document)) {
            return Err(refuse(ErrorCode::Forbidden, "you may not write this document"));
        }
        if purge {
            return Ok(Change { doc, document: None, lifecycle: Some(Lifecycle::Purge) });
        }
        let document = Document { deleted: None, ..document.clone() };
        Ok(Change { doc, document: Some(document), lifecycle: Some(Lifecycle::Restore) })
    }
}

fn internal(mid: u64, error: &dyn std::fmt::Display) -> ServerMessage {
    ServerMessage::Error(
        ErrorBody::new(ErrorCode::Internal, format!("storage failed: {error}")).with_mid(mid),
    )
}

fn check_data(data: &Value, doc_bytes_max: usize) -> Result<(), Refusal> {
    if !data.is_object() {
        return Err(refuse(ErrorCode::Invalid, "data must be a JSON object"));
    }
    let size = serde_json::to_vec(data).map(|b| b.len()).unwrap_or(usize::MAX);
    if size > doc_bytes_max {
        return Err(refuse(
            ErrorCode::LimitExceeded,
            format!("document is {size} bytes, more than {doc_bytes_max}"),
        ));
    }
    Ok(())
}

impl Room {
    /// Writes a planned change at `seq` (or remembers a refusal) in one transaction, then answers
    /// and pushes.
    fn commit(
        &mut self,
        conn: ConnId,
        (mid, seq): (u64, u64),
        key: (&str, &str),
        planned: Result<Change, Refusal>,
        now_ms: u64,
    ) -> Vec<Effect> {
        let (answer, change) = match planned {
            Ok(change) => (ServerMessage::Ack { mid, seq, version: None, object_key: None }, Some(change)),
            Err(body) => (ServerMessage::Error(body.with_mid(mid)), None),
        };
        if let Err(e) = self.write(&answer, change.as_ref(), key, (mid, seq), now_ms) {
            return vec![Effect::Send { conn, message: internal(mid, &e) }];
        }
        let mut effects = vec![Effect::Send { conn, message: answer }];
        if let Some(change) = change {
            self.seq = seq;
            effects.extend(self.apply(change));
        }
        effects
    }

    fn write(
        &mut self,
        answer: &ServerMessage,
        change: Option<&Change>,
        key: (&str, &str),
        (mid, seq): (u64, u64),
        now_ms: u64,
    ) -> rusqlite::Result<()> {
        let window = self.config.limits.replay_window_max;
        let transaction = self.db.transaction()?;
        if let Some(change) = change {
            storage::set_sequence(&transaction, seq)?;
            match &change.document {
                Some(document) => storage::write_document(&transaction, &row(&change.doc, document))?,
                None => storage::delete_document(&transaction, change.doc.as_str())?,
            }
            if let Some(lifecycle) = change.lifecycle {
                storage::log_membership(&transaction, seq, change.doc.as_str(), lifecycle.as_str(), now_ms)?;
            }
        }
        let text = serde_json::to_string(answer).expect("answers serialize");
        storage::remember_answer(&transaction, key, mid, &text, window)?;
        transaction.commit()
    }

    /// Applies a committed change to memory and returns the pushes it causes.
    fn apply(&mut self, change: Change) -> Vec<Effect> {
        let Change { doc, document, lifecycle } = change;
        match document {
            Some(document) => self.docs.insert(doc.clone(), document),
            None => self.docs.remove(&doc),
        };
        if let Some(lifecycle) = lifecycle {
            if lifecycle.alters(SystemView::Index) {
                self.index_seq = self.seq;
            }
            if lifecycle.alters(SystemView::Trash) {
                self.trash_seq = self.seq;
            }
        }
        self.push(&doc, lifecycle)
    }

    /// Pushes a change of `doc` to every subscription it affects.
    fn push(&mut self, doc: &DocId, lifecycle: Option<Lifecycle>) -> Vec<Effect> {
        // A purged document is gone; no query result holds it, since its delete already left them.
        let changed_type = self.docs.get(doc).map(|d| d.doc_type.clone());
        let mut connections = std::mem::take(&mut self.connections);
        let mut effects = Vec::new();
        for (conn, peer) in &mut connections {
            for (sub, subscription) in &mut peer.subscriptions {
                let pushed =
                    self.push_one(sub, subscription, doc, changed_type.as_ref(), lifecycle, &peer.identity);
                effects.extend(pushed.map(|message| Effect::Send { conn: *conn, message }));
            }
        }
        self.connections = connections;
        effects
    }

    fn push_one(
        &self,
        sub: &SubId,
        subscription: &mut Subscription,
        doc: &DocId,
        changed_type: Option<&DocType>,
        lifecycle: Option<Lifecycle>,
        reader: &Identity,
    ) -> Option<ServerMessage> {
        match subscription {
            Subscription::Doc(watched) if watched == doc => Some(self.doc_view(sub, doc, reader)),
            Subscription::Doc(watched)
                if SystemView::of(watched).zip(lifecycle).is_some_and(|(view, l)| l.alters(view)) =>
            {
                Some(self.doc_view(sub, watched, reader))
            }
            Subscription::Doc(_) => None,
            // A document never changes type, so only its own collection's queries can change.
            Subscription::Query { query, result } if changed_type == Some(&query.collection) => {
                let fresh = self.query_result(query, reader);
                diff(sub, self.seq, result, fresh)
            }
            Subscription::Query { .. } => None,
        }
    }
}

/// The `query:diff` that turns `result` into `fresh`, updating `result`; `None` when nothing changed.
fn diff(
    sub: &SubId,
    seq: u64,
    result: &mut BTreeMap<DocId, u64>,
    fresh: Vec<DocSnapshot>,
) -> Option<ServerMessage> {
    let mut added = Vec::new();
    let mut changed = Vec::new();
    let mut next = BTreeMap::new();
    for doc in fresh {
        match result.get(&doc.id) {
            None => added.push(doc.clone()),
            Some(old) if *old != doc.seq => changed.push(doc.clone()),
            Some(_) => {}
        }
        next.insert(doc.id.clone(), doc.seq);
    }
    let removed: Vec<DocId> = result.keys().filter(|id| !next.contains_key(*id)).cloned().collect();
    *result = next;
    if added.is_empty() && changed.is_empty() && removed.is_empty() {
        return None;
    }
    Some(ServerMessage::QueryDiff { sub: sub.clone(), seq, added, changed, removed })
}

fn row(id: &DocId, document: &Document) -> DocumentRow {
    DocumentRow {
        id: id.to_string(),
        doc_type: document.doc_type.to_string(),
        seq: document.seq,
        owner: document.owner.to_string(),
        data: document.data.to_string(),
        deleted: document.deleted,
    }
}
