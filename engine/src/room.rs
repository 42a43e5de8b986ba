//! The room state machine: messages in, effects out; one SQLite transaction per accepted change.

use crate::schema::Schema;
use crate::state::{
    Bucket, Document, Item, Membership, Quotas, Session, Staged, Stored, Team, Teams, UserRecord,
};
use crate::storage;
use crate::watch::Watchers;
use crate::yjs::Yjs;
use crate::EngineError;
use roomlab_protocol::{
    AssetInfo, Backend, BucketName, ClientId, ClientMessage, DocId, DocSnapshot, DocType, ErrorBody,
    ErrorCode, FieldName, ItemId, Limits, ListKey, Mutant, ObjectKey, Plan, Query, Role, RoomId,
    ServerMessage, SubId, Target, TeamId, UserId, PROTOCOL_VERSION,
};
use rusqlite::Connection;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// A connection's id, chosen by the host (server or simulation), unique within the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Who is on a connection, as the host authenticated them from their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: UserId,
    /// The role their token grants (an admin's choice in the room overrides it).
    pub role: Role,
    /// Their storage plan.
    pub plan: Plan,
    /// Their storage add-ons.
    pub addons: u32,
}

impl Identity {
    /// A user with `role` on the pro plan without add-ons (the token's defaults).
    pub fn new(user: UserId, role: Role) -> Identity {
        Identity { user, role, plan: Plan::Pro, addons: 0 }
    }
}

/// A room's committed state, as [`Room::export`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// The room sequence.
    pub seq: u64,
    /// Every stored document with its deletion (sequence, time), if deleted.
    pub docs: Vec<(roomlab_protocol::DocSnapshot, Option<(u64, u64)>)>,
    /// Usage per user.
    pub usage: std::collections::BTreeMap<UserId, u64>,
    /// Every bucket as (contract, version, value, setter).
    pub buckets: std::collections::BTreeMap<
        roomlab_protocol::BucketName,
        (roomlab_protocol::Contract, u64, serde_json::Value, Option<UserId>),
    >,
}

/// What the host must do after the room handled an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a text message to a connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        message: ServerMessage,
    },
    /// Send a Yjs binary frame to a connection.
    Yjs {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: roomlab_protocol::YjsFrame,
    },
    /// Close a connection with a WebSocket close code.
    Close {
        /// The connection.
        conn: ConnId,
        /// The close code (docs/PROTOCOL.md §2).
        code: roomlab_protocol::CloseCode,
        /// The reason, for humans.
        reason: String,
    },
}

impl Effect {
    /// The connection the effect is for.
    pub fn conn(&self) -> ConnId {
        match self {
            Effect::Send { conn, .. } | Effect::Yjs { conn, .. } | Effect::Close { conn, .. } => *conn,
        }
    }
}

/// The room's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// The limits the room enforces and announces.
    pub limits: Limits,
    /// The quota limits of the plans.
    pub quotas: Quotas,
    /// A planted bug, in builds with the `mutants` feature (see [`roomlab_protocol::Mutant`]).
    pub mutant: Option<roomlab_protocol::Mutant>,
    /// A BUGGIFY fault point of the storage (off unless a host turns it on).
    pub storage_faults: StorageFaults,
    /// The SQLite VFS the room's database is opened with, by its registered name (a simulation's
    /// disk); `None` is the operating system's.
    pub vfs: Option<String>,
}

/// A BUGGIFY-style fault point inside the engine: asked before each mutation's commit (with the
/// room's id), and when it answers true the commit fails as if the disk had refused it (the
/// transaction rolls back and the writer is answered `internal`). A simulation wires it to its
/// seeded fault points, so the rarely taken path of a failed commit runs often; the conformance
/// suite's embedded target fails one commit of one room on request. By default it never fires.
#[derive(Clone, Default)]
pub struct StorageFaults(Option<std::sync::Arc<CommitFails>>);

/// The question a [`StorageFaults`] point asks: does the commit in this room fail?
type CommitFails = dyn Fn(&RoomId) -> bool + Send + Sync;

impl StorageFaults {
    /// A fault point that fails a commit in room `id` whenever `commit_fails(id)` answers true.
    pub fn new(commit_fails: impl Fn(&RoomId) -> bool + Send + Sync + 'static) -> StorageFaults {
        StorageFaults(Some(std::sync::Arc::new(commit_fails)))
    }

    /// Whether the commit about to happen in room `id` fails.
    pub(crate) fn commit_fails(&self, id: &RoomId) -> bool {
        self.0.as_ref().is_some_and(|fails| fails(id))
    }
}

impl std::fmt::Debug for StorageFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "StorageFaults(on)" } else { "StorageFaults(off)" })
    }
}

/// Two settings are equal when both are off or both share one fault point.
impl PartialEq for StorageFaults {
    fn eq(&self, other: &StorageFaults) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for StorageFaults {}

/// What a document subscription last showed, so that a change of access pushes only real changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ViewKey {
    Snapshot(u64),
    /// `sys:index` or `sys:trash`: its `seq` and a hash of what it lists, which access changes
    /// alter without a new `seq`.
    Listed(u64, u64),
    Deleted(u64),
    Missing,
}

#[derive(Debug)]
pub(crate) enum Subscription {
    /// A live query and the ids (with their sequences) of its current result.
    Query { query: Query, result: BTreeMap<DocId, u64> },
    /// One document, and what it last showed.
    Doc { doc: DocId, last: ViewKey },
    /// A JSON bucket's value (`backend` D1Json) or an asset bucket's list (R2Assets), and whether
    /// the subscriber now sees the bucket bound with that backend: a subscription keeps its kind,
    /// so a bucket deleted and bound again with the other backend stays deleted to it.
    Bucket { name: BucketName, backend: Backend, shown: bool },
}

/// A reader's access to one collection (`Room::read_access`): all that read checks look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadAccess<'r> {
    pub role: Role,
    /// The reader, where only owners read; `None` where the role alone decides.
    pub owner: Option<&'r UserId>,
}

/// One connected peer: who it is, its client id once greeted, and its subscriptions.
#[derive(Debug)]
pub(crate) struct Peer {
    pub identity: Identity,
    pub client: Option<ClientId>,
    pub subscriptions: BTreeMap<SubId, Subscription>,
}

/// What a document subscription shows.
pub(crate) enum View {
    Snapshot(DocSnapshot),
    Deleted(u64),
    Missing,
}

/// One room: its database, everything it holds, its connections.
pub struct Room {
    pub(crate) id: RoomId,
    pub(crate) config: Config,
    pub(crate) db: Connection,
    pub(crate) seq: u64,
    pub(crate) docs: BTreeMap<DocId, Document>,
    pub(crate) schemas: BTreeMap<DocType, Schema>,
    pub(crate) users: BTreeMap<UserId, UserRecord>,
    pub(crate) teams: Teams,
    pub(crate) sessions: BTreeMap<UserId, Session>,
    pub(crate) buckets: BTreeMap<BucketName, Bucket>,
    pub(crate) yjs: Yjs,
    pub(crate) connections: BTreeMap<ConnId, Peer>,
    /// Which subscriptions each change may affect.
    pub(crate) watchers: Watchers,
    /// The room sequence of the last change to `sys:index`, `sys:trash`, `sys:users`, `sys:teams`.
    pub(crate) index_seq: u64,
    pub(crate) trash_seq: u64,
    pub(crate) users_seq: u64,
    pub(crate) teams_seq: u64,
    /// A transaction the `ack-before-commit` mutant left open; never set otherwise.
    pub(crate) deferred_commit: bool,
    /// The open commit group: how many changes it holds (see [`Room::begin_group`]).
    pub(crate) group: Option<usize>,
    /// The replay windows of the (user, client id)s that mutated since the room opened, read from
    /// storage on first use and kept in step with every commit, so a fresh mutation needs no
    /// lookup and the window's trim needs no count.
    pub(crate) replays: BTreeMap<(String, String), ReplayWindow>,
    /// How many mutations the database refused (answered `internal`) since the room opened.
    pub(crate) storage_failures: u64,
}

/// What the room knows of one client's replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplayWindow {
    /// How many answers storage holds (up to twice the window; only the newest
    /// `replay_window_max` are served).
    pub count: usize,
    /// The newest processed mutation id, if any.
    pub newest: Option<u64>,
}

pub(crate) type Refusal = Box<ErrorBody>;

pub(crate) fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Box::new(ErrorBody::new(code, message))
}

fn corrupt(error: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt(error.to_string())
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, EngineError> {
    serde_json::from_str(text).map_err(corrupt)
}

fn parse_text<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, EngineError> {
    serde_json::from_value(Value::String(text.to_string())).map_err(corrupt)
}

impl Room {
    /// Opens the room's database (in memory when `path` is `None`) and loads its committed state.
    pub fn open(id: RoomId, path: Option<&Path>, config: Config) -> Result<Room, EngineError> {
        let synchronous = if Mutant::AckBeforeSync.planted(config.mutant) {
            // The planted bug: in WAL mode NORMAL syncs only at checkpoints, so a commit is
            // acknowledged while it is still in the page cache and a power loss takes it.
            storage::Synchronous::Normal
        } else {
            storage::Synchronous::Full
        };
        Room::load(id, storage::open(path, config.vfs.as_deref(), synchronous)?, config)
    }

    /// Loads the committed state of an open database.
    pub(crate) fn load(id: RoomId, db: Connection, config: Config) -> Result<Room, EngineError> {
        let seq = storage::sequence(&db)?;
        let mut room = Room {
            id,
            config,
            seq,
            docs: BTreeMap::new(),
            schemas: BTreeMap::new(),
            users: BTreeMap::new(),
            teams: BTreeMap::new(),
            sessions: BTreeMap::new(),
            buckets: BTreeMap::new(),
            yjs: Yjs::default(),
            connections: BTreeMap::new(),
            watchers: Watchers::default(),
            index_seq: 0,
            trash_seq: 0,
            users_seq: storage::meta(&db, "users_seq")?,
            teams_seq: storage::meta(&db, "teams_seq")?,
            deferred_commit: false,
            group: None,
            replays: BTreeMap::new(),
            storage_failures: 0,
            db,
        };
        room.load_documents()?;
        room.load_rest()?;
        (room.index_seq, room.trash_seq) =
            (storage::meta(&room.db, "index_seq")?, storage::meta(&room.db, "trash_seq")?);
        room.check_invariants();
        Ok(room)
    }

    fn load_documents(&mut self) -> Result<(), EngineError> {
        for row in storage::documents(&self.db)? {
            let id = DocId::new(row.id).map_err(corrupt)?;
            let doc_type = DocType::new(row.doc_type).map_err(corrupt)?;
            let owner = UserId::new(row.owner).map_err(corrupt)?;
            let mut document = Document::new(doc_type, row.seq, owner, parse_json(&row.data)?);
            document.deleted = row.deleted;
            if let Some(doc_type) = id.schema_for() {
                self.schemas
                    .insert(doc_type, Schema::parse(document.data()).map_err(|e| corrupt(e.message))?);
            }
            self.docs.insert(id, document);
        }
        for row in storage::list_items(&self.db)? {
            let id = DocId::new(row.doc).map_err(corrupt)?;
            let document =
                self.docs.get_mut(&id).ok_or_else(|| corrupt(format!("list item of missing {id}")))?;
            let item = Item {
                key: ListKey::new(row.key).map_err(corrupt)?,
                value: parse_json(&row.value)?,
                inserted: 0,
            };
            let list = FieldName::new(row.list).map_err(corrupt)?;
            document.put_item(&list, ItemId::new(row.item).map_err(corrupt)?, item);
        }
        Ok(())
    }

    fn load_rest(&mut self) -> Result<(), EngineError> {
        for row in storage::users(&self.db)? {
            let record = UserRecord {
                role: row.role.as_deref().map(parse_text).transpose()?,
                token_role: parse_text(&row.token_role)?,
                plan: parse_text(&row.plan)?,
                addons: row.addons,
                usage: row.usage,
            };
            self.users.insert(UserId::new(row.id).map_err(corrupt)?, record);
        }
        let (teams, members) = storage::teams(&self.db)?;
        for (id, name) in teams {
            self.teams.insert(TeamId::new(id).map_err(corrupt)?, Team { name, members: BTreeMap::new() });
        }
        for (team, user, status) in members {
            let team =
                self.teams.get_mut(&TeamId::new(team).map_err(corrupt)?).ok_or_else(|| corrupt("member"))?;
            let status = Membership::parse(&status).ok_or_else(|| corrupt(status))?;
            team.members.insert(UserId::new(user).map_err(corrupt)?, status);
        }
        for row in storage::staged(&self.db)? {
            let staged = Staged {
                doc_type: DocType::new(row.doc_type).map_err(corrupt)?,
                base_seq: row.base_seq,
                data: parse_json(&row.data)?,
            };
            let user = UserId::new(row.user).map_err(corrupt)?;
            self.sessions.entry(user).or_default().insert(DocId::new(row.doc).map_err(corrupt)?, staged);
        }
        let (buckets, assets) = storage::buckets(&self.db)?;
        for row in buckets {
            let mut bucket = Bucket::new(parse_json(&row.contract)?);
            bucket.version = row.version;
            bucket.value = parse_json(&row.value)?;
            bucket.setter = row.setter.map(UserId::new).transpose().map_err(corrupt)?;
            self.buckets.insert(BucketName::new(row.name).map_err(corrupt)?, bucket);
        }
        for (bucket, info) in assets {
            let info: AssetInfo = parse_json(&info)?;
            let bucket = self.buckets.get_mut(&BucketName::new(bucket).map_err(corrupt)?);
            bucket
                .ok_or_else(|| corrupt("asset of a missing bucket"))?
                .assets
                .insert(info.object_key.clone(), info);
        }
        Ok(())
    }

    /// The room's committed sequence.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// How many mutations the database refused since the room opened: each was answered
    /// `internal` and kept nothing. A host that journals what the room did reads it around an input.
    pub fn storage_failures(&self) -> u64 {
        self.storage_failures
    }

    /// The bytes charged to `user` (0 for a user the room has not seen).
    pub fn usage(&self, user: &UserId) -> u64 {
        self.users.get(user).map_or(0, |record| record.usage)
    }

    /// The room's committed state, for a host's reports and checks: sequence, documents, usage,
    /// buckets.
    pub fn export(&self) -> Export {
        let docs = self.docs.iter().map(|(id, d)| (d.snapshot(id), d.deleted)).collect();
        let usage = self.users.iter().map(|(user, record)| (user.clone(), record.usage)).collect();
        let buckets = self
            .buckets
            .iter()
            .map(|(name, b)| {
                (name.clone(), (b.contract.clone(), b.version, b.value.clone(), b.setter.clone()))
            })
            .collect();
        Export { seq: self.seq, docs, usage, buckets }
    }

    /// Asserts the room's invariants; panics on a broken one, since that is a bug of the engine:
    /// every user's usage equals the sum of what is stored and charged to them.
    pub fn check_invariants(&self) {
        let mut stored: BTreeMap<&UserId, u64> = BTreeMap::new();
        for document in self.docs.values() {
            *stored.entry(&document.owner).or_default() += document.bytes();
        }
        for bucket in self.buckets.values() {
            for (user, bytes) in bucket.charges() {
                *stored.entry(user).or_default() += bytes;
            }
        }
        for (user, record) in &self.users {
            let expected = stored.remove(user).unwrap_or(0);
            assert_eq!(record.usage, expected, "usage of {user} drifted from what is stored");
        }
        assert!(stored.is_empty(), "storage charged to users the room never recorded: {stored:?}");
    }

    /// A connection was authenticated by the host at `now_ms`. The user is recorded; a new user (or a
    /// new role for them) is a change of `sys:users` and takes a sequence.
    pub fn connect(&mut self, conn: ConnId, identity: Identity, now_ms: u64) -> Vec<Effect> {
        if let Some(closed) = self.commit_deferred(conn) {
            return closed;
        }
        let known = self.users.get(&identity.user);
        let effective_before = known.map(|record| record.role.unwrap_or(record.token_role));
        let mut record = known.cloned().unwrap_or(UserRecord {
            role: None,
            token_role: identity.role,
            plan: identity.plan,
            addons: identity.addons,
            usage: 0,
        });
        (record.token_role, record.plan, record.addons) = (identity.role, identity.plan, identity.addons);
        let changes_view = effective_before != Some(record.role.unwrap_or(record.token_role));
        let seq = self.seq + u64::from(changes_view);
        let written = (|| {
            let transaction = self.db.savepoint()?;
            storage::write_user(&transaction, &user_row(&identity.user, &record), now_ms)?;
            if changes_view {
                storage::set_sequence(&transaction, seq)?;
                storage::set_meta(&transaction, "users_seq", seq)?;
            }
            transaction.commit()
        })();
        if let Err(e) = written {
            return vec![Effect::Close {
                conn,
                code: roomlab_protocol::CloseCode::InternalError,
                reason: format!("storage failed: {e}"),
            }];
        }
        let peer = Peer { identity: identity.clone(), client: None, subscriptions: BTreeMap::new() };
        let previous = self.connections.insert(conn, peer);
        assert!(previous.is_none(), "connection {conn:?} connected twice");
        self.users.insert(identity.user, record);
        if !changes_view {
            return Vec::new();
        }
        (self.seq, self.users_seq) = (seq, seq);
        self.push(&crate::commit::Touched { users: true, ..Default::default() })
    }

    /// A connection closed; its subscriptions and open Yjs fields end. The effects tell the
    /// fields' other connections that the awareness it announced is gone (yjs.awareness).
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Effect> {
        if let Some(peer) = self.connections.remove(&conn) {
            for (sub, subscription) in &peer.subscriptions {
                self.watchers.remove(&Watchers::key(subscription, &peer.identity.user), conn, sub);
            }
        }
        self.yjs_close_all(conn)
    }

    /// Handles one message from a connection at time `now_ms`, returning the effects to carry out.
    pub fn handle(&mut self, conn: ConnId, message: ClientMessage, now_ms: u64) -> Vec<Effect> {
        if let Some(closed) = self.commit_deferred(conn) {
            return closed;
        }
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
            ClientMessage::Mutate { mid, mutation } => {
                let effects = self.mutate(conn, mid, mutation, now_ms);
                self.close_after_internal(conn, effects)
            }
            ClientMessage::BucketGet { req, bucket, if_version } => {
                reply(self.bounded_reply(req, self.bucket_get(conn, req, bucket, if_version)))
            }
            ClientMessage::AssetList { req, bucket } => {
                let reader = self.reader(conn);
                let answer = self.readable_bucket(&reader, &bucket, Backend::R2Assets).map(|b| {
                    let assets = b.assets.values().cloned().collect();
                    ServerMessage::AssetsList { sub: None, req: Some(req), bucket, assets }
                });
                let answer = answer.unwrap_or_else(|body| ServerMessage::Error(body.with_req(req)));
                reply(self.bounded_reply(req, answer))
            }
            ClientMessage::YjsClose { doc, field } => self.yjs_close(conn, &doc, &field),
        }
    }

    /// After a mutation answered `internal`, closes its connection with 1011 and forgets it, so the
    /// room processes nothing more the connection sent (docs/PROTOCOL.md
    /// mutation.replay.internal-not-remembered). The failed `mid` is not remembered; had a later
    /// `mid` of the same connection been processed, the failed one would fall below the client's
    /// newest processed id, and a client whose `internal` answer was lost would get
    /// `replay_expired` for it on its next connection instead of running it afresh.
    fn close_after_internal(&mut self, conn: ConnId, mut effects: Vec<Effect>) -> Vec<Effect> {
        let internal = |effect: &Effect| {
            matches!(effect, Effect::Send { conn: to, message: ServerMessage::Error(body) }
                if *to == conn && body.code == ErrorCode::Internal)
        };
        if effects.iter().any(internal) && !Mutant::InternalKeepsConnection.planted(self.config.mutant) {
            effects.extend(self.disconnect(conn));
            let reason = "the room failed to process a mutation".to_string();
            effects.push(Effect::Close { conn, code: roomlab_protocol::CloseCode::InternalError, reason });
        }
        effects
    }

    fn hello(&mut self, conn: ConnId, protocol: u32, client: ClientId) -> Vec<Effect> {
        let role = self.reader(conn).role;
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
                Effect::Close {
                    conn,
                    code: roomlab_protocol::CloseCode::UnsupportedProtocol,
                    reason: "unsupported protocol version".into(),
                },
            ];
        }
        connection.client = Some(client);
        let welcome = ServerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            room: self.id.clone(),
            user: connection.identity.user.clone(),
            role,
            seq: self.seq,
            limits: self.config.limits.clone(),
        };
        vec![Effect::Send { conn, message: welcome }]
    }

    /// The connection's identity with its effective role (docs/PROTOCOL.md access.effective-role).
    pub(crate) fn reader(&self, conn: ConnId) -> Identity {
        self.effective(&self.connections[&conn].identity)
    }

    pub(crate) fn effective(&self, identity: &Identity) -> Identity {
        let role = self.users.get(&identity.user).and_then(|record| record.role).unwrap_or(identity.role);
        Identity { role, ..identity.clone() }
    }

    /// The schema of a document type; a type without one gets the defaults.
    pub(crate) fn schema(&self, doc_type: &DocType) -> &Schema {
        static DEFAULT: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
        self.schemas.get(doc_type).unwrap_or_else(|| DEFAULT.get_or_init(Schema::default))
    }

    /// Everything of `reader` that decides which stored documents of `doc_type` they may read:
    /// their role, and who they are where only owners read. Every read check goes through it, so
    /// readers with equal access read alike, and an answer worked out for one serves the others.
    pub(crate) fn read_access<'r>(&self, doc_type: &DocType, reader: &'r Identity) -> ReadAccess<'r> {
        let owner = self.schema(doc_type).reads_by_owner().then_some(&reader.user);
        ReadAccess { role: reader.role, owner }
    }

    /// Whether `reader` may read `document` (docs/PROTOCOL.md access.*). Schemas are read by everyone.
    pub(crate) fn can_read(&self, reader: &Identity, id: &DocId, document: &Document) -> bool {
        self.admits_read(self.read_access(&document.doc_type, reader), id, document)
    }

    /// Whether a reader with `access` to the document's type may read it.
    fn admits_read(&self, access: ReadAccess<'_>, id: &DocId, document: &Document) -> bool {
        id.schema_for().is_some()
            || self.schema(&document.doc_type).can_read(access.role, access.owner == Some(&document.owner))
            || (Mutant::OwnerReadByAdmin.planted(self.config.mutant) && access.role == Role::Admin)
    }

    fn subscribe(&mut self, conn: ConnId, sub: SubId, target: Target) -> Vec<Effect> {
        let connection = &self.connections[&conn];
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
        let reader = self.reader(conn);
        let (subscription, first) = self.first_answer(&reader, sub, target)?;
        self.fits_frame(&first, "the first answer")?;
        self.watchers.insert(Watchers::key(&subscription, &reader.user), conn, sub.clone());
        let connection = self.connections.get_mut(&conn).expect("connected");
        connection.subscriptions.insert(sub.clone(), subscription);
        Ok(first)
    }

    /// What a subscription to `target` by `identity` would answer now, without subscribing: the
    /// oracle that the simulation compares every client's view against.
    pub fn answer(&self, identity: &Identity, sub: &SubId, target: &Target) -> ServerMessage {
        let reader = self.effective(identity);
        match self.first_answer(&reader, sub, target.clone()) {
            Ok((_, first)) => first,
            Err(body) => ServerMessage::Error(body.with_sub(sub.clone())),
        }
    }

    fn first_answer(
        &self,
        reader: &Identity,
        sub: &SubId,
        target: Target,
    ) -> Result<(Subscription, ServerMessage), Refusal> {
        Ok(match target {
            Target::Query(query) => {
                query.check().map_err(|e| refuse(ErrorCode::Invalid, e.to_string()))?;
                let docs: Vec<DocSnapshot> =
                    self.query_result(&query, self.read_access(&query.collection, reader));
                let result = docs.iter().map(|d| (d.id.clone(), d.seq)).collect();
                let first = ServerMessage::QueryResult { sub: sub.clone(), seq: self.seq, docs };
                (Subscription::Query { query, result }, first)
            }
            Target::Doc(doc) => {
                if self.docs.get(&doc).is_some_and(|d| !self.can_read(reader, &doc, d)) {
                    return Err(refuse(ErrorCode::Forbidden, format!("you may not read {doc}")));
                }
                let (first, last) = self.doc_message(sub, &doc, reader);
                (Subscription::Doc { doc, last }, first)
            }
            Target::Bucket(name) => {
                let bucket = self.readable_bucket(reader, &name, Backend::D1Json)?;
                let (version, value) = (bucket.version, bucket.value.clone());
                let first = ServerMessage::BucketValue {
                    sub: Some(sub.clone()),
                    req: None,
                    bucket: name.clone(),
                    version,
                    value,
                };
                (Subscription::Bucket { name, backend: Backend::D1Json, shown: true }, first)
            }
            Target::Assets(name) => {
                let bucket = self.readable_bucket(reader, &name, Backend::R2Assets)?;
                let assets = bucket.assets.values().cloned().collect();
                let first = ServerMessage::AssetsList {
                    sub: Some(sub.clone()),
                    req: None,
                    bucket: name.clone(),
                    assets,
                };
                (Subscription::Bucket { name, backend: Backend::R2Assets, shown: true }, first)
            }
        })
    }

    fn unsubscribe(&mut self, conn: ConnId, sub: SubId) -> Vec<Effect> {
        let connection = self.connections.get_mut(&conn).expect("connected");
        let message = match connection.subscriptions.remove(&sub) {
            Some(subscription) => {
                self.watchers.remove(&Watchers::key(&subscription, &connection.identity.user), conn, &sub);
                ServerMessage::Unsubscribed { sub }
            }
            None => {
                let message = format!("no subscription {sub}");
                ServerMessage::Error(ErrorBody::new(ErrorCode::SubscriptionUnknown, message).with_sub(sub))
            }
        };
        vec![Effect::Send { conn, message }]
    }

    fn bucket_get(&self, conn: ConnId, req: u64, name: BucketName, if_version: Option<u64>) -> ServerMessage {
        let reader = self.reader(conn);
        match self.readable_bucket(&reader, &name, Backend::D1Json) {
            Err(body) => ServerMessage::Error(body.with_req(req)),
            Ok(bucket) if if_version == Some(bucket.version) => {
                ServerMessage::BucketNotModified { req, bucket: name, version: bucket.version }
            }
            Ok(bucket) => ServerMessage::BucketValue {
                sub: None,
                req: Some(req),
                bucket: name,
                version: bucket.version,
                value: bucket.value.clone(),
            },
        }
    }

    /// Whether `user` may use bucket `name` at all (docs/PROTOCOL.md bucket.user-scope).
    pub(crate) fn bucket_scope_admits(user: &UserId, name: &BucketName) -> bool {
        name.as_str().strip_prefix("user:").is_none_or(|owner| owner == user.as_str())
    }

    /// The bucket `name` of `backend` that `reader` may read.
    pub(crate) fn readable_bucket(
        &self,
        reader: &Identity,
        name: &BucketName,
        backend: Backend,
    ) -> Result<&Bucket, Refusal> {
        // errors.precedence: the bucket's existence and backend before access to it, as for writes.
        let bucket =
            self.buckets.get(name).ok_or_else(|| refuse(ErrorCode::NotFound, format!("no bucket {name}")))?;
        check_backend(name, bucket, backend)?;
        if !Room::bucket_scope_admits(&reader.user, name) {
            return Err(refuse(ErrorCode::Forbidden, format!("{name} is another user's bucket")));
        }
        Ok(bucket)
    }

    /// The documents a reader sees for `query`, in order.
    pub(crate) fn query_result(&self, query: &Query, access: ReadAccess<'_>) -> Vec<DocSnapshot> {
        // Filtered and ordered in place: only the documents of the result are copied into snapshots.
        let candidates: Vec<Stored<'_>> = self
            .docs
            .iter()
            .filter(|(id, d)| d.doc_type == query.collection && d.deleted.is_none() && !id.is_system())
            .filter(|(id, d)| self.admits_read(access, id, d))
            .map(|(id, document)| Stored { id, document })
            .collect();
        query.evaluate(&candidates).into_iter().map(|s| s.document.snapshot(s.id)).collect()
    }

    /// What a document subscription shows a reader now, as a message and as a key.
    pub(crate) fn doc_message(
        &self,
        sub: &SubId,
        doc: &DocId,
        reader: &Identity,
    ) -> (ServerMessage, ViewKey) {
        let sub = sub.clone();
        match self.view(doc, reader) {
            View::Snapshot(snapshot) => {
                let key = match doc.as_str() {
                    "sys:index" | "sys:trash" => {
                        use std::hash::{Hash, Hasher};
                        // DefaultHasher::new has fixed keys: the same data hashes alike in every run.
                        let mut hasher = std::hash::DefaultHasher::new();
                        snapshot.data.to_string().hash(&mut hasher);
                        ViewKey::Listed(snapshot.seq, hasher.finish())
                    }
                    _ => ViewKey::Snapshot(snapshot.seq),
                };
                (ServerMessage::DocSnapshot { sub, doc: snapshot }, key)
            }
            View::Deleted(seq) => {
                (ServerMessage::DocDeleted { sub, doc: doc.clone(), seq }, ViewKey::Deleted(seq))
            }
            View::Missing => {
                (ServerMessage::DocMissing { sub, doc: doc.clone(), seq: self.seq }, ViewKey::Missing)
            }
        }
    }

    fn view(&self, doc: &DocId, reader: &Identity) -> View {
        if let Some(view) = self.synthesized(doc, reader) {
            return view;
        }
        match self.docs.get(doc) {
            Some(d) if !self.can_read(reader, doc, d) => View::Missing,
            Some(Document { deleted: Some((seq, _)), .. }) => View::Deleted(*seq),
            Some(d) => View::Snapshot(d.snapshot(doc)),
            None => View::Missing,
        }
    }

    /// The documents the engine synthesizes (docs/PROTOCOL.md §11); `None` for stored documents.
    fn synthesized(&self, doc: &DocId, reader: &Identity) -> Option<View> {
        let (seq, data) = match doc.as_str() {
            "sys:index" => (self.index_seq, self.membership_view(false, reader)),
            "sys:trash" => (self.trash_seq, self.membership_view(true, reader)),
            "sys:users" => {
                let users: Vec<Value> = self
                    .users
                    .iter()
                    .map(|(id, record)| json!({"id": id, "role": record.role.unwrap_or(record.token_role)}))
                    .collect();
                (self.users_seq, json!({ "users": users }))
            }
            "sys:teams" => (self.teams_seq, teams_view(&self.teams)),
            "sys:session" => {
                let session = self.sessions.get(&reader.user);
                let staged: Vec<Value> = session
                    .into_iter()
                    .flatten()
                    .map(|(doc, s)| json!({"doc": doc, "doc_type": s.doc_type, "base_seq": s.base_seq}))
                    .collect();
                (self.seq, json!({ "staged": staged }))
            }
            other => {
                let staged = other.strip_prefix(DocId::STAGE_PREFIX)?;
                let staged =
                    DocId::new(staged).ok().and_then(|d| self.sessions.get(&reader.user)?.get(&d).cloned());
                let Some(staged) = staged else {
                    return Some(View::Missing);
                };
                (self.seq, staged.data)
            }
        };
        let doc_type = DocType::new("sys").expect("valid type");
        let owner = UserId::new("system").expect("valid user");
        Some(View::Snapshot(DocSnapshot {
            id: doc.clone(),
            doc_type,
            seq,
            owner,
            data,
            lists: BTreeMap::new(),
        }))
    }

    /// `sys:index` (live documents) or `sys:trash` (soft-deleted ones), as `reader` may see them.
    fn membership_view(&self, trash: bool, reader: &Identity) -> Value {
        let entries: Vec<Value> = self
            .docs
            .iter()
            .filter(|(id, d)| !id.is_system() && d.deleted.is_some() == trash && self.can_read(reader, id, d))
            .map(|(id, d)| match d.deleted {
                Some((seq, at)) => json!({"id": id, "doc_type": d.doc_type, "deleted_at": at, "seq": seq}),
                None => json!({"id": id, "doc_type": d.doc_type}),
            })
            .collect();
        json!({ "docs": entries })
    }

    /// An asset's content type and bytes, for a reader allowed to read its bucket (HTTP downloads).
    pub fn asset(
        &self,
        identity: &Identity,
        bucket: &BucketName,
        key: &ObjectKey,
    ) -> Result<(String, Vec<u8>), Box<ErrorBody>> {
        let reader = self.effective(identity);
        let found = self.readable_bucket(&reader, bucket, Backend::R2Assets)?;
        let missing = || refuse(ErrorCode::NotFound, format!("no asset {key}"));
        let info = found.assets.get(key).ok_or_else(missing)?;
        let bytes = storage::asset_bytes(&self.db, bucket.as_str(), key.as_str())
            .map_err(|e| refuse(ErrorCode::Internal, format!("storage failed: {e}")))?
            .ok_or_else(missing)?;
        Ok((info.content_type.clone(), bytes))
    }
}

pub(crate) fn check_backend(name: &BucketName, bucket: &Bucket, backend: Backend) -> Result<(), Refusal> {
    if bucket.contract.backend == backend {
        return Ok(());
    }
    let body = ErrorBody::new(
        ErrorCode::Incompatible,
        format!("{name} is a bucket of the {} backend", bucket.contract.backend),
    );
    Err(Box::new(ErrorBody { contract: Some(bucket.contract.clone()), ..body }))
}

fn teams_view(teams: &Teams) -> Value {
    let teams: Vec<Value> = teams
        .iter()
        .map(|(id, team)| {
            let members: Vec<Value> = team
                .members
                .iter()
                .map(|(user, status)| json!({"user": user, "status": status.as_str()}))
                .collect();
            json!({"id": id, "name": team.name, "members": members})
        })
        .collect();
    json!({ "teams": teams })
}

pub(crate) fn user_row(id: &UserId, record: &UserRecord) -> storage::UserRow {
    let text = |value: Value| value.as_str().expect("enums serialize as strings").to_string();
    storage::UserRow {
        id: id.to_string(),
        role: record.role.map(|role| text(json!(role))),
        token_role: text(json!(record.token_role)),
        plan: text(json!(record.plan)),
        addons: record.addons,
        usage: record.usage,
    }
}

/// The length of a message's frame: its JSON text, as the codec writes it, counted without
/// keeping the text.
pub(crate) fn frame_len(message: &ServerMessage) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, message).expect("server messages always serialize");
    counter.0
}

impl Room {
    /// Refuses a frame over `frame_bytes_max` (docs/PROTOCOL.md limits.frame-size): the server
    /// never sends what a conforming peer must refuse.
    pub(crate) fn fits_frame(&self, message: &ServerMessage, what: &str) -> Result<(), Refusal> {
        let (bytes, bytes_max) = (frame_len(message), self.config.limits.frame_bytes_max);
        if bytes <= bytes_max {
            return Ok(());
        }
        Err(refuse(
            ErrorCode::LimitExceeded,
            format!("{what} would be a frame of {bytes} bytes, over frame_bytes_max ({bytes_max})"),
        ))
    }

    /// A reply to request `req`, or `limit_exceeded` with `req` in its place when its frame would
    /// be over `frame_bytes_max`.
    fn bounded_reply(&self, req: u64, reply: ServerMessage) -> ServerMessage {
        match self.fits_frame(&reply, "the answer") {
            Ok(()) => reply,
            Err(body) => ServerMessage::Error(body.with_req(req)),
        }
    }
}

pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error(ErrorBody::new(code, message))
}

/// A change of a document's membership in the room, as the membership log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    Create,
    Delete,
    Restore,
    Purge,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Create => "create",
            Lifecycle::Delete => "delete",
            Lifecycle::Restore => "restore",
            Lifecycle::Purge => "purge",
        }
    }

    /// Whether the event alters `sys:index` (live documents) or `sys:trash` (deleted ones).
    pub fn alters(self, view: SystemView) -> bool {
        match view {
            SystemView::Index => matches!(self, Lifecycle::Create | Lifecycle::Delete | Lifecycle::Restore),
            SystemView::Trash => matches!(self, Lifecycle::Delete | Lifecycle::Restore | Lifecycle::Purge),
        }
    }
}

/// The system documents the engine synthesizes from the membership of documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SystemView {
    Index,
    Trash,
}
