//! Committing a planned change: one SQLite transaction (with the quota check inside it), then the
//! in-memory state, then the pushes (docs/PROTOCOL.md ack.after-commit, quota.check).

use crate::room::{
    ConnId, Effect, Identity, Lifecycle, Peer, Refusal, ReplayWindow, Room, Subscription, SystemView, ViewKey,
};
use crate::schema::Schema;
use crate::state::{Bucket, Document, Session, Team, UserRecord};
use crate::storage::{self, DocumentRow, ItemRow, StagedRow};
use crate::watch::{WatchKey, Watchers};
use crate::EngineError;
use roomlab_protocol::{
    BucketName, DocId, DocSnapshot, DocType, ErrorBody, ErrorCode, FieldName, ItemId, ListDiff, ListItem,
    Mutant, ObjectKey, ServerMessage, SubId, TeamId, UserId,
};
use rusqlite::Connection;
use std::collections::{BTreeMap, BTreeSet};

/// A document written by a change.
pub(crate) struct DocWrite {
    pub id: DocId,
    /// The document after the change; `None` when purged.
    pub document: Option<Document>,
    /// The lifecycle event, recorded in the membership log; `None` for a content change.
    pub lifecycle: Option<Lifecycle>,
    /// The list items the change touched.
    pub items: Vec<(FieldName, ItemId)>,
}

impl DocWrite {
    pub fn new(id: DocId, document: Option<Document>, lifecycle: Option<Lifecycle>) -> DocWrite {
        DocWrite { id, document, lifecycle, items: Vec::new() }
    }
}

/// A bucket written by a change.
pub(crate) struct BucketWrite {
    pub name: BucketName,
    /// The bucket after the change; `None` when deleted.
    pub bucket: Option<Bucket>,
    /// The bytes of an uploaded asset.
    pub new_asset: Option<(ObjectKey, Vec<u8>)>,
    /// A deleted asset.
    pub removed_asset: Option<ObjectKey>,
}

/// Everything one mutation changes, written in one transaction.
#[derive(Default)]
pub(crate) struct Change {
    pub docs: Vec<DocWrite>,
    pub buckets: Vec<BucketWrite>,
    pub users: Vec<(UserId, UserRecord)>,
    pub teams: Vec<(TeamId, Option<Team>)>,
    pub sessions: Vec<(UserId, Session)>,
    /// Whether the change takes a new room sequence (staging and no-op answers do not).
    pub advances: bool,
    /// The bucket version to put in the ack.
    pub version: Option<u64>,
    /// The asset key to put in the ack.
    pub object_key: Option<ObjectKey>,
}

impl Change {
    pub fn advancing() -> Change {
        Change { advances: true, ..Change::default() }
    }

    pub fn doc(write: DocWrite) -> Change {
        Change { docs: vec![write], ..Change::advancing() }
    }

    pub fn bucket(write: BucketWrite) -> Change {
        Change { buckets: vec![write], ..Change::advancing() }
    }

    pub fn team(id: TeamId, team: Option<Team>) -> Change {
        Change { teams: vec![(id, team)], ..Change::advancing() }
    }

    pub fn session(user: UserId, session: Session) -> Change {
        Change { sessions: vec![(user, session)], ..Change::default() }
    }
}

/// One change on its way to the subscriptions: what it touched, snapshots of its changed documents
/// (with their types), and the query answers worked out so far.
struct Pushing<'t> {
    touched: &'t Touched,
    changed: &'t [(DocId, Option<DocSnapshot>, Option<DocType>)],
    answers: Answers,
}

/// Query answers worked out while one change is pushed. Subscribers who run the same query with
/// the same read access (`Room::read_access`) see the same answer, so it is worked out once for all
/// of them: in a room whose clients watch alike, a change otherwise re-evaluated one query for
/// every subscriber.
#[derive(Default)]
struct Answers {
    known: Vec<Answer>,
}

struct Answer {
    query: roomlab_protocol::Query,
    role: roomlab_protocol::Role,
    owner: Option<UserId>,
    documents: Vec<DocSnapshot>,
}

impl Answers {
    fn answer(&mut self, room: &Room, query: &roomlab_protocol::Query, reader: &Identity) -> &[DocSnapshot] {
        let access = room.read_access(&query.collection, reader);
        let found = self
            .known
            .iter()
            .position(|a| a.role == access.role && a.owner.as_ref() == access.owner && a.query == *query);
        let index = found.unwrap_or_else(|| {
            let documents = room.query_result(query, access);
            let owner = access.owner.cloned();
            self.known.push(Answer { query: query.clone(), role: access.role, owner, documents });
            self.known.len() - 1
        });
        &self.known[index].documents
    }
}

/// What a committed change touched, to find the subscriptions it may affect.
#[derive(Default)]
pub(crate) struct Touched {
    pub docs: BTreeSet<DocId>,
    /// Collections whose schema changed: every subscription over them is re-evaluated.
    pub schemas: BTreeSet<DocType>,
    pub index: bool,
    pub trash: bool,
    pub users: bool,
    pub teams: bool,
    pub buckets: BTreeSet<BucketName>,
    /// Users whose staged session changed.
    pub sessions: BTreeSet<UserId>,
    /// Users whose role changed: all their subscriptions are re-evaluated.
    pub readers: BTreeSet<UserId>,
    /// What the changed documents touched, before and after the change.
    pub keys: BTreeSet<WatchKey>,
    /// Documents this change altered in their lists and nothing else, each with its sequence
    /// before the change and the diff of every list that changed (docs/PROTOCOL.md
    /// docs.subscribe.list-diff).
    pub lists: BTreeMap<DocId, (u64, BTreeMap<FieldName, ListDiff>)>,
}

impl Touched {
    /// Every key the change touched, the system views' included.
    fn all_keys(&self) -> BTreeSet<WatchKey> {
        let system = |id: &str| WatchKey::System(DocId::new(id).expect("valid id"));
        let mut keys = self.keys.clone();
        let flags = [
            (self.index, "sys:index"),
            (self.trash, "sys:trash"),
            (self.users, "sys:users"),
            (self.teams, "sys:teams"),
        ];
        keys.extend(flags.iter().filter(|(set, _)| *set).map(|(_, id)| system(id)));
        keys.extend(self.sessions.iter().cloned().map(WatchKey::Session));
        keys.extend(self.buckets.iter().cloned().map(WatchKey::Bucket));
        keys
    }
}

/// How a change moves each user's usage, in bytes; users it does not move are absent.
type Deltas = BTreeMap<UserId, i64>;

pub(crate) fn internal(mid: u64, error: &dyn std::fmt::Display) -> ServerMessage {
    ServerMessage::Error(
        ErrorBody::new(ErrorCode::Internal, format!("storage failed: {error}")).with_mid(mid),
    )
}

impl Room {
    /// Writes a planned change (or remembers a refusal) in one transaction, then answers and pushes.
    pub(crate) fn commit(
        &mut self,
        conn: ConnId,
        mid: u64,
        key: Option<(&str, &str)>,
        planned: Result<Change, Refusal>,
        now_ms: u64,
    ) -> Vec<Effect> {
        let seq = match &planned {
            Ok(change) if change.advances => self.seq + 1,
            _ => self.seq,
        };
        // The client's replay window after this answer, and how many old answers storage drops.
        let after = key.map(|key| (key, self.window_after(key, mid)));
        let remembered = after.map(|(key, (_, forget))| (key, forget));
        let written = match planned {
            Ok(change) => self.write(&change, remembered, (mid, seq), now_ms).map(|refused| match refused {
                Ok((answer, deltas)) => (answer, Some((change, deltas))),
                Err(body) => (ServerMessage::Error(body.with_mid(mid)), None),
            }),
            Err(body) => Ok((ServerMessage::Error(body.with_mid(mid)), None)),
        };
        // A refusal found inside the transaction (quota) rolled it back; remember it on its own.
        let written = written.and_then(|(answer, change)| match change {
            Some(_) => Ok((answer, change)),
            None => self.remember(&answer, remembered, mid).map(|()| (answer, None)),
        });
        let (answer, change) = match written {
            Ok(written) => written,
            Err(e) => {
                self.storage_failures += 1;
                return vec![Effect::Send { conn, message: internal(mid, &e) }];
            }
        };
        if let Some((key, (window, _))) = after {
            self.replays.insert((key.0.to_string(), key.1.to_string()), window);
        }
        let mut effects = vec![Effect::Send { conn, message: answer }];
        if let Some((change, deltas)) = change {
            self.seq = seq;
            let touched = self.apply(change, deltas);
            effects.extend(self.push(&touched));
        }
        effects
    }

    /// Opens a commit group: the changes handled until [`Room::commit_group`] share one SQLite
    /// transaction, each in its own savepoint, so each is still all or nothing and a refused or
    /// failed one is rolled back alone. The effects returned meanwhile describe changes that are
    /// not yet durable: the host must hold every one of them (acks, pushes, answers) until
    /// `commit_group` succeeds (docs/PROTOCOL.md ack.group-commit). Without a group, every change
    /// commits on its own.
    pub fn begin_group(&mut self) -> Result<(), EngineError> {
        assert!(self.group.is_none(), "a commit group is already open");
        if Mutant::AckBeforeCommit.planted(self.config.mutant) {
            // The planted bug leaves its own transaction open for the next message to commit;
            // a group around it would commit it first and hide the bug.
            return Ok(());
        }
        self.db.execute_batch("BEGIN")?;
        self.group = Some(0);
        Ok(())
    }

    /// Whether a commit group is open.
    pub fn group_open(&self) -> bool {
        self.group.is_some()
    }

    /// Commits the open commit group (nothing when none is open). On failure nothing of the group
    /// is kept: the transaction rolls back and the room reloads its committed state, which forgets
    /// every connection, so the host must drop the group's effects and close every connection
    /// (its clients reconnect, subscribe again and resend what was never acknowledged).
    pub fn commit_group(&mut self) -> Result<(), EngineError> {
        let Some(changes) = self.group.take() else { return Ok(()) };
        // A group of one change was already asked at its savepoint; asking again would make
        // storage faults twice as likely for a lone write.
        let failed = if changes > 1 && self.config.storage_faults.commit_fails(&self.id) {
            Err(EngineError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                Some("the group's commit failed (BUGGIFY storage fault)".into()),
            )))
        } else {
            self.db.execute_batch("COMMIT").map_err(EngineError::from)
        };
        let Err(error) = failed else { return Ok(()) };
        // The room's memory holds the group's changes; only the database knows what is committed.
        let _ = self.db.execute_batch("ROLLBACK");
        let db = std::mem::replace(&mut self.db, Connection::open_in_memory()?);
        match Room::load(self.id.clone(), db, self.config.clone()) {
            Ok(room) => *self = Room { storage_failures: self.storage_failures + 1, ..room },
            // A room left on the placeholder would answer from memory and write nowhere durable.
            Err(reload) => panic!("room {}: the committed state does not reload after a failed group commit ({error}): {reload}", self.id),
        }
        Err(error)
    }

    /// Commits the transaction the `ack-before-commit` mutant left open, before the room takes its
    /// next input; if that fails, the effects that close `conn`.
    pub(crate) fn commit_deferred(&mut self, conn: ConnId) -> Option<Vec<Effect>> {
        if !std::mem::take(&mut self.deferred_commit) {
            return None;
        }
        let e = self.db.execute_batch("COMMIT").err()?;
        Some(vec![Effect::Close {
            conn,
            code: roomlab_protocol::CloseCode::InternalError,
            reason: format!("storage failed: {e}"),
        }])
    }

    /// Remembers a refusal in its own transaction: `remembered` is the client's key and how many of
    /// its oldest answers storage drops (`None` for a mutation outside any replay window).
    fn remember(
        &mut self,
        answer: &ServerMessage,
        remembered: Option<((&str, &str), usize)>,
        mid: u64,
    ) -> rusqlite::Result<()> {
        let Some((key, forget)) = remembered else { return Ok(()) };
        let transaction = self.db.savepoint()?;
        let text = serde_json::to_string(answer).expect("answers serialize");
        storage::remember_answer(&transaction, key, mid, &text, forget)?;
        transaction.commit()
    }

    /// A client's stored answers after remembering `mid`, and how many of its oldest ones to delete.
    /// Storage keeps up to twice `replay_window_max` answers and then trims back to the window in
    /// one statement, so most commits leave the page of the client's oldest answer alone; answers
    /// past the window are never served (`storage::replay_answer` ranks them out).
    fn window_after(&self, key: (&str, &str), mid: u64) -> (ReplayWindow, usize) {
        let window = self.replays[&(key.0.to_string(), key.1.to_string())];
        let window_max = self.config.limits.replay_window_max;
        let stored = window.count + 1;
        let forget = if stored > 2 * window_max { stored - window_max } else { 0 };
        let newest = Some(window.newest.map_or(mid, |newest| newest.max(mid)));
        (ReplayWindow { count: stored - forget, newest }, forget)
    }

    /// Writes `change` at `seq`, charges quota inside the same transaction, and remembers the ack
    /// (`remembered`: as in [`Room::remember`]). Returns the ack with the usage deltas it charged, or
    /// the quota refusal (with the transaction rolled back).
    fn write(
        &mut self,
        change: &Change,
        remembered: Option<((&str, &str), usize)>,
        (mid, seq): (u64, u64),
        now_ms: u64,
    ) -> rusqlite::Result<Result<(ServerMessage, Deltas), Refusal>> {
        let deltas = self.usage_deltas(change);
        let limits: BTreeMap<&UserId, u64> = deltas
            .keys()
            .map(|user| {
                let record = self.users.get(user).expect("charged users are recorded");
                (user, self.config.quotas.limit(record.plan, record.addons))
            })
            .collect();
        let memory: BTreeMap<&UserId, u64> = deltas.keys().map(|user| (user, self.usage(user))).collect();
        let transaction = self.db.savepoint()?;
        if change.advances {
            storage::set_sequence(&transaction, seq)?;
        }
        write_docs(&transaction, &change.docs, seq, now_ms)?;
        write_rest(&transaction, change, seq)?;
        for (user, delta) in &deltas {
            // The write and the check are one statement and a comparison inside the transaction;
            // a refusal drops the transaction, which takes the write back.
            let used = storage::add_usage(&transaction, user.as_str(), *delta)?;
            assert_eq!(used, memory[user], "stored usage of {user} differs from the room's");
            let limit = limits[user];
            let over = |delta: u64| {
                if Mutant::QuotaCheckedBeforeWrite.planted(self.config.mutant) {
                    used >= limit
                } else if Mutant::QuotaEdgeRefused.planted(self.config.mutant) {
                    used + delta >= limit
                } else {
                    used + delta > limit
                }
            };
            if *delta > 0 && over(*delta as u64) {
                let message = format!("usage {used} + {delta} bytes exceeds the limit of {limit}");
                let body = ErrorBody {
                    used: Some(used),
                    limit: Some(limit),
                    ..ErrorBody::new(ErrorCode::QuotaExceeded, message)
                };
                return Ok(Err(Box::new(body)));
            }
        }
        let answer =
            ServerMessage::Ack { mid, seq, version: change.version, object_key: change.object_key.clone() };
        if let Some((key, forget)) = remembered {
            let text = serde_json::to_string(&answer).expect("answers serialize");
            storage::remember_answer(&transaction, key, mid, &text, forget)?;
        }
        if self.config.storage_faults.commit_fails(&self.id) {
            // BUGGIFY: the disk refuses the commit, and dropping the transaction rolls it back.
            drop(transaction);
            if Mutant::CommitErrorIgnored.planted(self.config.mutant) {
                // The planted bug: the failed commit's error is dropped, so the writer is
                // acknowledged and the room's memory moves on a write the disk never took.
                return Ok(Ok((answer, deltas)));
            }
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                Some("the commit failed (BUGGIFY storage fault)".into()),
            ));
        }
        if Mutant::AckBeforeCommit.planted(self.config.mutant) {
            // The planted bug: the transaction stays open and commits when the next message
            // arrives, so a crash in between loses a write that was already acknowledged.
            let mut transaction = transaction;
            transaction.set_drop_behavior(rusqlite::DropBehavior::Ignore);
            self.deferred_commit = true;
            return Ok(Ok((answer, deltas)));
        }
        transaction.commit()?;
        if let Some(changes) = &mut self.group {
            *changes += 1;
        }
        Ok(Ok((answer, deltas)))
    }

    /// How `change` moves each user's usage (docs/PROTOCOL.md quota.what-counts).
    fn usage_deltas(&self, change: &Change) -> Deltas {
        let mut deltas = Deltas::new();
        let mut charge = |user: &UserId, bytes: u64, sign: i64| {
            *deltas.entry(user.clone()).or_default() += sign * bytes as i64;
        };
        let keep_purged = Mutant::PurgeKeepsUsage.planted(self.config.mutant);
        for write in &change.docs {
            if let Some(old) = self.docs.get(&write.id).filter(|_| !(keep_purged && write.document.is_none()))
            {
                charge(&old.owner, old.bytes(), -1);
            }
            if let Some(new) = &write.document {
                charge(&new.owner, new.bytes(), 1);
            }
        }
        for write in &change.buckets {
            for (user, bytes) in self.buckets.get(&write.name).into_iter().flat_map(Bucket::charges) {
                charge(user, bytes, -1);
            }
            for (user, bytes) in write.bucket.iter().flat_map(Bucket::charges) {
                charge(user, bytes, 1);
            }
        }
        deltas.retain(|_, delta| *delta != 0);
        deltas
    }

    /// Applies a committed change, and the usage it charged, to memory; returns what it touched.
    fn apply(&mut self, change: Change, deltas: Deltas) -> Touched {
        let mut touched = Touched::default();
        for (user, delta) in deltas {
            let record = self.users.get_mut(&user).expect("charged users are recorded");
            record.usage = record.usage.checked_add_signed(delta).expect("usage never goes below zero");
        }
        for write in change.docs {
            self.apply_doc(write, &mut touched);
        }
        for write in change.buckets {
            match write.bucket {
                Some(bucket) => self.buckets.insert(write.name.clone(), bucket),
                None => self.buckets.remove(&write.name),
            };
            touched.buckets.insert(write.name);
        }
        for (user, record) in change.users {
            touched.readers.insert(user.clone());
            self.users.insert(user, record);
            (self.users_seq, touched.users) = (self.seq, true);
        }
        for (id, team) in change.teams {
            match team {
                Some(team) => self.teams.insert(id, team),
                None => self.teams.remove(&id),
            };
            (self.teams_seq, touched.teams) = (self.seq, true);
        }
        for (user, session) in change.sessions {
            touched.sessions.insert(user.clone());
            match session.is_empty() {
                true => self.sessions.remove(&user),
                false => self.sessions.insert(user, session),
            };
        }
        touched
    }

    fn apply_doc(&mut self, write: DocWrite, touched: &mut Touched) {
        let DocWrite { id, document, lifecycle, items } = write;
        // A document written twice in one change (a staged session's commit) is pushed whole.
        let diff = match (self.docs.get(&id), &document) {
            (Some(old), Some(new)) if lifecycle.is_none() && !touched.docs.contains(&id) => {
                list_only_diff(&id, old, new, &items)
            }
            _ => None,
        };
        match diff {
            Some(diff) => touched.lists.insert(id.clone(), diff),
            None => touched.lists.remove(&id),
        };
        if let Some(old) = self.docs.get(&id) {
            self.watchers.doc_keys(&id, old, &mut touched.keys);
        }
        if let Some(new) = &document {
            self.watchers.doc_keys(&id, new, &mut touched.keys);
        }
        if let Some(doc_type) = id.schema_for() {
            let data = document.as_ref().map(Document::data);
            let schema = data.map(|data| Schema::parse(data).expect("schemas are checked before commit"));
            match schema {
                Some(schema) => self.schemas.insert(doc_type.clone(), schema),
                None => self.schemas.remove(&doc_type),
            };
            touched.schemas.insert(doc_type);
        }
        match document {
            Some(document) => self.docs.insert(id.clone(), document),
            None => {
                self.yjs.purge(&id);
                self.docs.remove(&id)
            }
        };
        // sys.index.live: the views list user documents, so a schema document's create or
        // delete changes neither (its access change is pushed as one, touched.schemas).
        if let Some(lifecycle) = lifecycle.filter(|_| !id.is_system()) {
            if lifecycle.alters(SystemView::Index) {
                (self.index_seq, touched.index) = (self.seq, true);
            }
            if lifecycle.alters(SystemView::Trash) {
                (self.trash_seq, touched.trash) = (self.seq, true);
            }
        }
        touched.docs.insert(id);
    }

    /// Pushes a committed change to every subscription it affects.
    pub(crate) fn push(&mut self, touched: &Touched) -> Vec<Effect> {
        // A change of access can affect any subscription; other changes only those watching what
        // they touched.
        let targets: Vec<(ConnId, SubId)> = match touched.readers.is_empty() && touched.schemas.is_empty() {
            true => self.watchers.watching(&touched.all_keys()).into_iter().collect(),
            false => self
                .connections
                .iter()
                .flat_map(|(conn, peer)| peer.subscriptions.keys().map(move |sub| (*conn, sub.clone())))
                .collect(),
        };
        if targets.is_empty() {
            return Vec::new();
        }
        // Snapshots of the changed documents, made once for every query that tests them, and only
        // when a query is among the targets: a list op watched by document subscriptions alone is
        // pushed as a doc:diff and needs no copy of the whole document.
        let queried = targets.iter().any(|(conn, sub)| {
            matches!(self.connections[conn].subscriptions.get(sub), Some(Subscription::Query { .. }))
        });
        let changed: Vec<(DocId, Option<DocSnapshot>, Option<DocType>)> = touched
            .docs
            .iter()
            .map(|id| {
                let document = self.docs.get(id);
                let live = document
                    .filter(|d| queried && d.deleted.is_none() && !id.is_system())
                    .map(|d| d.snapshot(id));
                (id.clone(), live, document.map(|d| d.doc_type.clone()))
            })
            .collect();
        let mut connections = std::mem::take(&mut self.connections);
        let mut effects = Vec::new();
        let mut pushing = Pushing { touched, changed: &changed, answers: Answers::default() };
        for (conn, sub) in targets {
            let peer = connections.get_mut(&conn).expect("watchers name live connections");
            let reader = self.effective(&peer.identity);
            let Peer { subscriptions, identity, .. } = peer;
            let subscription = subscriptions.get_mut(&sub).expect("watchers name live subscriptions");
            let Some(message) = self.push_one(&sub, subscription, &mut pushing, &reader) else { continue };
            let message = match self.fits_frame(&message, "the push") {
                Ok(()) => message,
                // The push cannot be sent and the view behind it would drift: the subscription
                // ends with the refusal in the push's place (limits.frame-size).
                Err(body) => {
                    self.watchers.remove(&Watchers::key(subscription, &identity.user), conn, &sub);
                    subscriptions.remove(&sub);
                    ServerMessage::Error(body.with_sub(sub))
                }
            };
            effects.push(Effect::Send { conn, message });
        }
        self.connections = connections;
        effects
    }

    fn push_one(
        &self,
        sub: &SubId,
        subscription: &mut Subscription,
        pushing: &mut Pushing<'_>,
        reader: &Identity,
    ) -> Option<ServerMessage> {
        let touched = pushing.touched;
        match subscription {
            Subscription::Query { query, result } => self.query_push(sub, query, result, reader, pushing),
            Subscription::Doc { doc, last } => {
                // A change of access can change what a listing shows without a membership change.
                let access = !touched.schemas.is_empty() || touched.readers.contains(&reader.user);
                let affected = match doc.as_str() {
                    "sys:index" => touched.index || access,
                    "sys:trash" => touched.trash || access,
                    "sys:users" => touched.users,
                    "sys:teams" => touched.teams,
                    "sys:session" => touched.sessions.contains(&reader.user),
                    other if other.starts_with(DocId::STAGE_PREFIX) => {
                        touched.sessions.contains(&reader.user)
                    }
                    _ => {
                        let of_type =
                            self.docs.get(doc).is_some_and(|d| touched.schemas.contains(&d.doc_type));
                        touched.docs.contains(doc) || touched.readers.contains(&reader.user) || of_type
                    }
                };
                if !affected {
                    return None;
                }
                if let Some(message) = self.list_push(sub, doc, last, touched, reader) {
                    return Some(message);
                }
                let (message, key) = self.doc_message(sub, doc, reader);
                // Synthesized views are pushed on every change that alters them (sys.index.live);
                // a listing that only access touched, only when what it shows changed.
                let always = match doc.as_str() {
                    "sys:index" => touched.index,
                    "sys:trash" => touched.trash,
                    _ => doc.is_system() && doc.schema_for().is_none(),
                };
                if key == *last && !always {
                    return None;
                }
                *last = key;
                let silenced = Mutant::NoDocDeletedPush.planted(self.config.mutant)
                    && matches!(message, ServerMessage::DocDeleted { .. });
                (!silenced).then_some(message)
            }
            Subscription::Bucket { name, backend, shown } if touched.buckets.contains(name) => {
                self.bucket_push(sub, name, *backend, shown)
            }
            Subscription::Bucket { .. } => None,
        }
    }

    /// A `doc:diff` when the change altered only the document's lists and the subscription shows
    /// the document as it was just before, and the reader may still read it; `None` when the
    /// subscription needs the whole document.
    fn list_push(
        &self,
        sub: &SubId,
        doc: &DocId,
        last: &mut ViewKey,
        touched: &Touched,
        reader: &Identity,
    ) -> Option<ServerMessage> {
        let (base, lists) = touched.lists.get(doc)?;
        let document = self.docs.get(doc)?;
        if *last != ViewKey::Snapshot(*base) || !self.can_read(reader, doc, document) {
            return None;
        }
        *last = ViewKey::Snapshot(document.seq);
        Some(ServerMessage::DocDiff {
            sub: sub.clone(),
            doc: doc.clone(),
            base: *base,
            seq: document.seq,
            lists: lists.clone(),
        })
    }

    /// What a bucket subscription of `backend` shows after a change to the bucket: the value or
    /// the list while the bucket is bound with that backend, `bucket:deleted` once when it stops
    /// being so, and nothing while it is deleted or bound with the other backend.
    fn bucket_push(
        &self,
        sub: &SubId,
        name: &BucketName,
        backend: roomlab_protocol::Backend,
        shown: &mut bool,
    ) -> Option<ServerMessage> {
        let sub = sub.clone();
        let Some(bucket) = self.buckets.get(name).filter(|b| b.contract.backend == backend) else {
            let was_shown = std::mem::replace(shown, false);
            return was_shown.then(|| ServerMessage::BucketDeleted {
                sub,
                bucket: name.clone(),
                seq: self.seq,
            });
        };
        *shown = true;
        Some(match backend {
            roomlab_protocol::Backend::D1Json => ServerMessage::BucketValue {
                sub: Some(sub),
                req: None,
                bucket: name.clone(),
                version: bucket.version,
                value: bucket.value.clone(),
            },
            roomlab_protocol::Backend::R2Assets => ServerMessage::AssetsList {
                sub: Some(sub),
                req: None,
                bucket: name.clone(),
                assets: bucket.assets.values().cloned().collect(),
            },
        })
    }

    /// The diff of a query after some of its collection's documents changed. Without a limit each
    /// changed document is placed on its own; with one, a change that can move the window
    /// re-evaluates the query, so the cost follows the subscriptions a change can affect.
    fn query_push(
        &self,
        sub: &SubId,
        query: &roomlab_protocol::Query,
        result: &mut BTreeMap<DocId, u64>,
        reader: &Identity,
        pushing: &mut Pushing<'_>,
    ) -> Option<ServerMessage> {
        let full = pushing.touched.readers.contains(&reader.user)
            || pushing.touched.schemas.contains(&query.collection);
        let changed: Vec<_> =
            pushing.changed.iter().filter(|(_, _, t)| t.as_ref() == Some(&query.collection)).collect();
        if !full && changed.is_empty() {
            return None;
        }
        let visible = |id, snapshot| self.visible(query, reader, id, snapshot);
        let windowed = query.limit.is_some();
        let needs_full = full
            || (windowed
                && changed
                    .iter()
                    .any(|(id, snapshot, _)| result.contains_key(id) || visible(id, snapshot).is_some()));
        if needs_full {
            return diff(sub, self.seq, result, pushing.answers.answer(self, query, reader));
        }
        let (mut added, mut changed_docs, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        for (id, snapshot) in changed.iter().map(|(id, snapshot, _)| (id, snapshot)) {
            let shown = result.get(id).copied();
            match visible(id, snapshot) {
                Some(s) if shown == Some(s.seq) => {}
                Some(s) => {
                    match shown {
                        None => added.push(s.clone()),
                        Some(_) => changed_docs.push(s.clone()),
                    }
                    result.insert(id.clone(), s.seq);
                }
                None if shown.is_some() => {
                    result.remove(id);
                    removed.push(id.clone());
                }
                None => {}
            }
        }
        if added.is_empty() && changed_docs.is_empty() && removed.is_empty() {
            return None;
        }
        Some(ServerMessage::QueryDiff {
            sub: sub.clone(),
            seq: self.seq,
            added,
            changed: changed_docs,
            removed,
        })
    }
}

impl Room {
    /// The changed document's snapshot if it is in `query`'s result for `reader` (limit aside).
    fn visible<'s>(
        &self,
        query: &roomlab_protocol::Query,
        reader: &Identity,
        id: &DocId,
        snapshot: &'s Option<DocSnapshot>,
    ) -> Option<&'s DocSnapshot> {
        let readable = self.docs.get(id).is_some_and(|d| self.can_read(reader, id, d));
        snapshot.as_ref().filter(|s| readable && query.matches(*s))
    }
}

/// The sequence of `old` and the diff of its lists when `new` differs from it only in its lists
/// (the items named in `items` are all that can have changed); `None` when anything else changed.
fn list_only_diff(
    id: &DocId,
    old: &Document,
    new: &Document,
    items: &[(FieldName, ItemId)],
) -> Option<(u64, BTreeMap<FieldName, ListDiff>)> {
    let same = !id.is_system()
        && old.deleted.is_none()
        && new.deleted.is_none()
        && old.doc_type == new.doc_type
        && old.owner == new.owner
        && old.data() == new.data();
    if !same {
        return None;
    }
    let mut lists: BTreeMap<FieldName, ListDiff> = BTreeMap::new();
    let items: BTreeSet<&(FieldName, ItemId)> = items.iter().collect();
    for (list, id) in items {
        let before = old.list(list).and_then(|items| items.get(id));
        let after = new.list(list).and_then(|items| items.get(id));
        match (before, after) {
            (Some(b), Some(a)) if b.key == a.key && b.value == a.value => {}
            (_, Some(a)) => lists.entry(list.clone()).or_default().put.push(ListItem {
                id: id.clone(),
                key: a.key.clone(),
                value: a.value.clone(),
            }),
            (Some(_), None) => lists.entry(list.clone()).or_default().removed.push(id.clone()),
            (None, None) => {}
        }
    }
    for diff in lists.values_mut() {
        ListItem::sort(&mut diff.put);
    }
    Some((old.seq, lists))
}

/// The `query:diff` that turns `result` into `fresh`, updating `result`; `None` when nothing changed.
fn diff(
    sub: &SubId,
    seq: u64,
    result: &mut BTreeMap<DocId, u64>,
    fresh: &[DocSnapshot],
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

fn write_docs(transaction: &Connection, docs: &[DocWrite], seq: u64, now_ms: u64) -> rusqlite::Result<()> {
    for write in docs {
        let id = write.id.as_str();
        match &write.document {
            Some(document) => {
                storage::write_document(transaction, &row(&write.id, document))?;
                for (list, item) in &write.items {
                    match document.list(list).and_then(|items| items.get(item)) {
                        Some(stored) => storage::write_item(
                            transaction,
                            &ItemRow {
                                doc: id.to_string(),
                                list: list.to_string(),
                                item: item.to_string(),
                                key: stored.key.to_string(),
                                value: stored.value.to_string(),
                            },
                        )?,
                        None => storage::delete_item(transaction, id, list.as_str(), item.as_str())?,
                    }
                }
            }
            None => storage::delete_document(transaction, id)?,
        }
        if let Some(lifecycle) = write.lifecycle {
            if lifecycle.alters(SystemView::Index) {
                storage::set_meta(transaction, "index_seq", seq)?;
            }
            if lifecycle.alters(SystemView::Trash) {
                storage::set_meta(transaction, "trash_seq", seq)?;
            }
            // A create is not a membership change of the log's kind (docs.delete.membership-log).
            if lifecycle != Lifecycle::Create {
                storage::log_membership(transaction, seq, id, lifecycle.as_str(), now_ms)?;
            }
        }
    }
    Ok(())
}

fn write_rest(transaction: &Connection, change: &Change, seq: u64) -> rusqlite::Result<()> {
    for write in &change.buckets {
        let name = write.name.as_str();
        let Some(bucket) = &write.bucket else {
            storage::delete_bucket(transaction, name)?;
            continue;
        };
        let row = storage::BucketRow {
            name: name.to_string(),
            contract: serde_json::to_string(&bucket.contract).expect("contracts serialize"),
            version: bucket.version,
            value: bucket.value.to_string(),
            setter: bucket.setter.as_ref().map(UserId::to_string),
        };
        storage::write_bucket(transaction, &row)?;
        if let Some((key, bytes)) = &write.new_asset {
            let info = serde_json::to_string(&bucket.assets[key]).expect("asset infos serialize");
            storage::insert_asset(transaction, name, key.as_str(), &info, bytes)?;
        }
        if let Some(key) = &write.removed_asset {
            storage::delete_asset(transaction, name, key.as_str())?;
        }
    }
    for (user, record) in &change.users {
        storage::set_role(transaction, user.as_str(), crate::room::user_row(user, record).role.as_deref())?;
        storage::set_meta(transaction, "users_seq", seq)?;
    }
    for (id, team) in &change.teams {
        let members: Vec<(&str, &str)> = team
            .iter()
            .flat_map(|team| team.members.iter().map(|(user, status)| (user.as_str(), status.as_str())))
            .collect();
        storage::write_team(
            transaction,
            id.as_str(),
            team.as_ref().map(|t| (t.name.as_str(), members.as_slice())),
        )?;
        storage::set_meta(transaction, "teams_seq", seq)?;
    }
    for (user, session) in &change.sessions {
        let rows: Vec<StagedRow> = session
            .iter()
            .map(|(doc, staged)| StagedRow {
                user: user.to_string(),
                doc: doc.to_string(),
                doc_type: staged.doc_type.to_string(),
                base_seq: staged.base_seq,
                data: staged.data.to_string(),
            })
            .collect();
        storage::write_session(transaction, user.as_str(), &rows)?;
    }
    Ok(())
}

fn row(id: &DocId, document: &Document) -> DocumentRow {
    DocumentRow {
        id: id.to_string(),
        doc_type: document.doc_type.to_string(),
        seq: document.seq,
        owner: document.owner.to_string(),
        data: document.data().to_string(),
        deleted: document.deleted,
    }
}
