//! Mutations: each is checked against the in-memory state and planned as a [`Change`], which
//! `commit` writes in one transaction (docs/PROTOCOL.md §6 to §18).

use crate::commit::{BucketWrite, Change, DocWrite};
use crate::room::{check_backend, refuse, ConnId, Effect, Identity, Lifecycle, Refusal, ReplayWindow, Room};
use crate::schema::Schema;
use crate::state::{Bucket, Document, Item, Membership, Staged, Team};
use crate::storage;
use base64::Engine as _;
use roomlab_protocol::{
    merge_patch, AssetInfo, Backend, BucketName, Contract, DocId, DocType, ErrorBody, ErrorCode, FieldName,
    ItemId, ListKey, Mutant, Mutation, ObjectKey, Plan, Role, ServerMessage, TeamId, UserId,
};
use serde_json::Value;

/// The longest asset file name, content type and team name accepted, in bytes.
const NAME_BYTES_MAX: usize = 256;

/// What a list mutation does to its item.
enum ListOp {
    Insert(ListKey, Value),
    Move(ListKey),
    Update(Value),
    Remove,
}

fn forbidden(message: impl Into<String>) -> Refusal {
    refuse(ErrorCode::Forbidden, message)
}

fn protected(doc: &DocId) -> Refusal {
    refuse(ErrorCode::Protected, format!("{doc} is a system document"))
}

fn deleted(doc: &DocId, seq: u64) -> Refusal {
    Box::new(
        ErrorBody::new(ErrorCode::Deleted, format!("{doc} is deleted: restore it or pick a new id"))
            .with_seq(seq),
    )
}

fn require_member(writer: &Identity) -> Result<(), Refusal> {
    match writer.role >= Role::Member {
        true => Ok(()),
        false => Err(forbidden("a viewer cannot write")),
    }
}

fn require_admin(writer: &Identity) -> Result<(), Refusal> {
    match writer.role >= Role::Admin {
        true => Ok(()),
        false => Err(forbidden("only admins may do this")),
    }
}

/// Whether `writer` may write bucket `name`, existing or not (docs/PROTOCOL.md bucket.user-scope).
fn may_write_bucket(writer: &Identity, name: &BucketName) -> Result<(), Refusal> {
    require_member(writer)?;
    if !Room::bucket_scope_admits(&writer.user, name) {
        return Err(forbidden(format!("{name} is another user's bucket")));
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), Refusal> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(refuse(ErrorCode::Invalid, format!("{what} must be 1 to {NAME_BYTES_MAX} bytes")));
    }
    Ok(())
}

impl Room {
    pub(crate) fn mutate(&mut self, conn: ConnId, mid: u64, mutation: Mutation, now_ms: u64) -> Vec<Effect> {
        let connection = &self.connections[&conn];
        let client = connection.client.clone().expect("greeted");
        let writer = self.effective(&connection.identity);
        let key = (writer.user.to_string(), client.to_string());
        match self.replayed(&key, mid) {
            Ok(Some(message)) => return vec![Effect::Send { conn, message }],
            Ok(None) => {}
            Err(e) => {
                self.storage_failures += 1;
                return vec![Effect::Send { conn, message: crate::commit::internal(mid, &e) }];
            }
        }
        let planned = self.plan(&writer, mutation, self.seq + 1, now_ms);
        self.commit(conn, mid, Some((&key.0, &key.1)), planned, now_ms)
    }

    /// The answer to a mutation id the client has already used: the original answer while it is
    /// remembered, else `replay_expired`; `None` for a fresh id.
    fn replayed(&mut self, key: &(String, String), mid: u64) -> rusqlite::Result<Option<ServerMessage>> {
        let window = self.replay_window(key)?;
        if window.newest.is_none_or(|newest| mid > newest) {
            return Ok(None);
        }
        let window_max = self.config.limits.replay_window_max;
        let answer = storage::replay_answer(&self.db, (&key.0, &key.1), mid, window_max)?;
        if Mutant::ReplayAppliedTwice.planted(self.config.mutant) && answer.is_some() {
            return Ok(None);
        }
        Ok(Some(match answer.and_then(|a| serde_json::from_str(&a).ok()) {
            Some(original) => original,
            None => {
                let body = ErrorBody::new(ErrorCode::ReplayExpired, "mutation id already processed");
                ServerMessage::Error(body.with_mid(mid))
            }
        }))
    }

    /// A client's replay window, read from storage the first time the room meets the client.
    pub(crate) fn replay_window(&mut self, key: &(String, String)) -> rusqlite::Result<ReplayWindow> {
        if let Some(window) = self.replays.get(key) {
            return Ok(*window);
        }
        let (count, newest) = storage::replay_window(&self.db, (&key.0, &key.1))?;
        let window = ReplayWindow { count, newest };
        self.replays.insert(key.clone(), window);
        Ok(window)
    }

    /// Runs one mutation for `identity` outside any WebSocket (an HTTP asset upload or delete), as
    /// connection `conn` that lives only for it. The user is recorded as on a connection; there is
    /// no replay window, since an HTTP request carries no mutation id. Returns the answer (an ack
    /// with mid 0, or an error) and the pushes to other connections.
    pub fn mutate_detached(
        &mut self,
        conn: ConnId,
        identity: Identity,
        mutation: Mutation,
        now_ms: u64,
    ) -> (ServerMessage, Vec<Effect>) {
        let mut effects = self.connect(conn, identity, now_ms);
        let writer = match self.connections.get(&conn) {
            Some(connection) => self.effective(&connection.identity),
            None => {
                let body = ErrorBody::new(ErrorCode::Internal, "the room could not record the user");
                return (ServerMessage::Error(body), effects);
            }
        };
        let planned = self.plan(&writer, mutation, self.seq + 1, now_ms);
        // `commit` answers the mutating connection first; the rest are pushes to others, since a
        // connection made for one request subscribes to nothing.
        let mut committed = self.commit(conn, 0, None, planned, now_ms).into_iter();
        // A connection made for one request opened no Yjs field, so closing it says nothing.
        let closed = self.disconnect(conn);
        assert!(closed.is_empty(), "a detached connection announced no awareness");
        let Some(Effect::Send { message: answer, .. }) = committed.next() else {
            unreachable!("commit answers the mutating connection first");
        };
        effects.extend(committed);
        (answer, effects)
    }

    /// Checks a mutation against the in-memory state and returns the change it makes at `seq`.
    fn plan(&self, writer: &Identity, mutation: Mutation, seq: u64, now_ms: u64) -> Result<Change, Refusal> {
        match mutation {
            Mutation::Create { doc, doc_type, data } => {
                let document = self.plan_create(writer, &doc, doc_type, data, seq, now_ms)?;
                Ok(Change::doc(DocWrite::new(doc, Some(document), Some(Lifecycle::Create))))
            }
            Mutation::Put { doc, data, if_seq } => {
                self.plan_write(writer, doc, if_seq, seq, now_ms, |_| data)
            }
            Mutation::Patch { doc, data, if_seq } => {
                self.plan_write(writer, doc, if_seq, seq, now_ms, |old| {
                    let mut merged = old.clone();
                    merge_patch(&mut merged, &data);
                    merged
                })
            }
            Mutation::Remove { doc, if_seq } => self.plan_remove(writer, doc, if_seq, seq, now_ms),
            Mutation::Restore { doc } => self.plan_restore(writer, doc, false),
            Mutation::Purge { doc } => self.plan_restore(writer, doc, true),
            Mutation::ListInsert { doc, list, item, key, value } => {
                self.plan_list(writer, doc, list, item, ListOp::Insert(key, value), seq)
            }
            Mutation::ListMove { doc, list, item, key } => {
                self.plan_list(writer, doc, list, item, ListOp::Move(key), seq)
            }
            Mutation::ListUpdate { doc, list, item, value } => {
                self.plan_list(writer, doc, list, item, ListOp::Update(value), seq)
            }
            Mutation::ListRemove { doc, list, item } => {
                self.plan_list(writer, doc, list, item, ListOp::Remove, seq)
            }
            Mutation::StagePut { doc, doc_type, data } => self.plan_stage_put(writer, doc, doc_type, data),
            Mutation::StageCommit => self.plan_stage_commit(writer, seq, now_ms),
            Mutation::StageDiscard => Ok(Change::session(writer.user.clone(), Default::default())),
            Mutation::BucketBind { bucket, contract } => self.plan_bind(writer, bucket, contract),
            Mutation::BucketSet { bucket, value, if_version } => {
                self.plan_bucket_set(writer, bucket, value, if_version)
            }
            Mutation::BucketDelete { bucket } => {
                self.writable_bucket(writer, &bucket, None)?;
                Ok(Change::bucket(BucketWrite {
                    name: bucket,
                    bucket: None,
                    new_asset: None,
                    removed_asset: None,
                }))
            }
            Mutation::AssetUpload { bucket, name, content_type, data_b64 } => {
                self.plan_upload(writer, bucket, name, content_type, &data_b64, seq)
            }
            Mutation::AssetDelete { bucket, object_key } => {
                self.plan_asset_delete(writer, bucket, object_key)
            }
            Mutation::TeamCreate { team, name } => self.plan_team_create(writer, team, name),
            Mutation::TeamDelete { team } => {
                require_admin(writer)?;
                self.team(&team)?;
                Ok(Change::team(team, None))
            }
            Mutation::TeamInvite { team, user } => self.plan_team_invite(writer, team, user),
            Mutation::TeamAccept { team } => self.plan_team_member(team, writer.user.clone(), true),
            Mutation::TeamRemove { team, user } => {
                require_admin(writer)?;
                self.plan_team_member(team, user, false)
            }
            Mutation::UserSetRole { user, role } => {
                require_admin(writer)?;
                let record = self
                    .users
                    .get(&user)
                    .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no user {user}")))?;
                let record = crate::state::UserRecord { role: Some(role), ..record.clone() };
                Ok(Change { users: vec![(user, record)], ..Change::advancing() })
            }
        }
    }

    /// A new document, completed and checked (docs/PROTOCOL.md docs.create, schema.*).
    fn plan_create(
        &self,
        writer: &Identity,
        doc: &DocId,
        doc_type: DocType,
        data: Value,
        seq: u64,
        now_ms: u64,
    ) -> Result<Document, Refusal> {
        let is_schema = doc.schema_for().is_some();
        if doc.is_system() && !is_schema {
            return Err(protected(doc));
        }
        // errors.precedence: an admin's op (a schema) is gated first; then the id's state, then
        // access to the type.
        if is_schema && writer.role < Role::Admin {
            return Err(forbidden("only admins write schemas"));
        }
        match self.docs.get(doc) {
            Some(Document { deleted: Some(_), seq, .. })
                if !Mutant::CreateDeletedAnswersExists.planted(self.config.mutant) =>
            {
                return Err(deleted(doc, *seq))
            }
            Some(_) => return Err(refuse(ErrorCode::Exists, format!("{doc} exists"))),
            None => {}
        }
        if !is_schema && !self.schema(&doc_type).can_write(writer.role, None) {
            return Err(forbidden(format!("you may not create documents of type {doc_type}")));
        }
        let data = self.prepare(doc, &doc_type, data, None, writer, now_ms)?;
        let document = Document::new(doc_type, seq, writer.user.clone(), data);
        self.check_size(&document)?;
        Ok(document)
    }

    /// Checks a document's new data against its schema (or parses a schema document).
    fn prepare(
        &self,
        doc: &DocId,
        doc_type: &DocType,
        data: Value,
        old: Option<&Value>,
        writer: &Identity,
        now_ms: u64,
    ) -> Result<Value, Refusal> {
        let Value::Object(mut object) = data else {
            return Err(refuse(ErrorCode::Invalid, "data must be a JSON object"));
        };
        if doc.schema_for().is_some() {
            let data = Value::Object(object);
            Schema::parse(&data)?;
            return Ok(data);
        }
        self.schema(doc_type).prepare(&mut object, old, &writer.user, now_ms)?;
        Ok(Value::Object(object))
    }

    fn check_size(&self, document: &Document) -> Result<(), Refusal> {
        let (size, max) = (document.bytes(), self.config.limits.doc_bytes_max as u64);
        if size > max {
            return Err(refuse(
                ErrorCode::LimitExceeded,
                format!("document is {size} bytes, more than {max}"),
            ));
        }
        Ok(())
    }

    /// The live document `doc` that `writer` may write, with its guard checked.
    fn writable(&self, writer: &Identity, doc: &DocId, if_seq: Option<u64>) -> Result<&Document, Refusal> {
        let is_schema = doc.schema_for().is_some();
        if doc.is_system() && !is_schema {
            return Err(protected(doc));
        }
        if is_schema && writer.role < Role::Admin {
            return Err(forbidden("only admins write schemas"));
        }
        let document =
            self.docs.get(doc).ok_or_else(|| refuse(ErrorCode::NotFound, format!("no document {doc}")))?;
        if document.deleted.is_some() {
            return Err(deleted(doc, document.seq));
        }
        let allowed = match is_schema {
            true => writer.role >= Role::Admin,
            false => {
                self.schema(&document.doc_type).can_write(writer.role, Some(writer.user == document.owner))
                    || (Mutant::ViewerCanWrite.planted(self.config.mutant) && writer.role == Role::Viewer)
            }
        };
        if !allowed {
            return Err(forbidden(format!("you may not write {doc}")));
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
        now_ms: u64,
        new_data: impl FnOnce(&Value) -> Value,
    ) -> Result<Change, Refusal> {
        let document = self.written(writer, &doc, if_seq, seq, now_ms, new_data)?;
        Ok(Change::doc(DocWrite::new(doc, Some(document), None)))
    }

    /// The document after a put or patch at `seq`.
    fn written(
        &self,
        writer: &Identity,
        doc: &DocId,
        if_seq: Option<u64>,
        seq: u64,
        now_ms: u64,
        new_data: impl FnOnce(&Value) -> Value,
    ) -> Result<Document, Refusal> {
        let old = self.writable(writer, doc, if_seq)?;
        let data =
            self.prepare(doc, &old.doc_type, new_data(old.data()), Some(old.data()), writer, now_ms)?;
        let mut document = old.clone();
        document.seq = seq;
        document.set_data(data);
        self.check_size(&document)?;
        Ok(document)
    }

    fn plan_remove(
        &self,
        writer: &Identity,
        doc: DocId,
        if_seq: Option<u64>,
        seq: u64,
        now_ms: u64,
    ) -> Result<Change, Refusal> {
        if doc.is_system() && !Mutant::SysDocRemovable.planted(self.config.mutant) {
            return Err(protected(&doc));
        }
        let document = self.writable(writer, &doc, if_seq)?;
        let mut document = document.clone();
        document.deleted = Some((seq, now_ms));
        Ok(Change::doc(DocWrite::new(doc, Some(document), Some(Lifecycle::Delete))))
    }

    fn plan_restore(&self, writer: &Identity, doc: DocId, purge: bool) -> Result<Change, Refusal> {
        if doc.is_system() {
            return Err(protected(&doc));
        }
        let document =
            self.docs.get(&doc).ok_or_else(|| refuse(ErrorCode::NotFound, format!("no document {doc}")))?;
        if document.deleted.is_none() {
            return Err(refuse(ErrorCode::NotDeleted, format!("{doc} is not deleted")));
        }
        if !self.schema(&document.doc_type).can_write(writer.role, Some(writer.user == document.owner)) {
            return Err(forbidden(format!("you may not write {doc}")));
        }
        if purge {
            return Ok(Change::doc(DocWrite::new(doc, None, Some(Lifecycle::Purge))));
        }
        let mut document = document.clone();
        document.deleted = None;
        if Mutant::RestoreBumpsSeq.planted(self.config.mutant) {
            document.seq = self.seq + 1;
        }
        Ok(Change::doc(DocWrite::new(doc, Some(document), Some(Lifecycle::Restore))))
    }

    /// docs/PROTOCOL.md §13: one item of one list, at a new sequence of its document.
    fn plan_list(
        &self,
        writer: &Identity,
        doc: DocId,
        list: FieldName,
        item: ItemId,
        op: ListOp,
        seq: u64,
    ) -> Result<Change, Refusal> {
        if doc.is_system() {
            return Err(protected(&doc));
        }
        let mut document = self.writable(writer, &doc, None)?.clone();
        document.seq = seq;
        let current = document.list(&list).and_then(|items| items.get(&item)).cloned();
        let missing = || refuse(ErrorCode::NotFound, format!("no item {item} in {doc}/{list}"));
        match (op, current) {
            (ListOp::Insert(..), Some(_)) => {
                return Err(refuse(ErrorCode::Exists, format!("item {item} is already in {doc}/{list}")));
            }
            (ListOp::Insert(key, value), None) => {
                let max = self.config.limits.list_items_max;
                if document.list_item_count(&list) >= max {
                    return Err(refuse(ErrorCode::LimitExceeded, format!("{doc}/{list} holds {max} items")));
                }
                let inserted = if Mutant::ListTiesByArrival.planted(self.config.mutant) { seq } else { 0 };
                document.put_item(&list, item.clone(), Item { key, value, inserted });
            }
            (ListOp::Move(key), Some(old)) => document.put_item(&list, item.clone(), Item { key, ..old }),
            (ListOp::Update(value), Some(old)) => {
                document.put_item(&list, item.clone(), Item { value, ..old })
            }
            (ListOp::Remove, Some(_)) => {
                document.remove_item(&list, &item);
            }
            (_, None) => return Err(missing()),
        }
        self.check_size(&document)?;
        let mut write = DocWrite::new(doc, Some(document), None);
        write.items.push((list, item));
        Ok(Change::doc(write))
    }

    /// docs/PROTOCOL.md stage.put: private, sequence-less, bounded.
    fn plan_stage_put(
        &self,
        writer: &Identity,
        doc: DocId,
        doc_type: DocType,
        data: Value,
    ) -> Result<Change, Refusal> {
        if doc.is_system() {
            return Err(protected(&doc));
        }
        // errors.precedence: the target's state, then access, then the data.
        if let Some(Document { deleted: Some(_), seq, .. }) = self.docs.get(&doc) {
            return Err(deleted(&doc, *seq));
        }
        require_member(writer)?;
        let (doc_type, base_seq) = match self.docs.get(&doc) {
            Some(document) => {
                self.writable(writer, &doc, None)?;
                (document.doc_type.clone(), document.seq)
            }
            None if !self.schema(&doc_type).can_write(writer.role, None) => {
                return Err(forbidden(format!("you may not create documents of type {doc_type}")));
            }
            None => (doc_type, 0),
        };
        if !data.is_object() {
            return Err(refuse(ErrorCode::Invalid, "data must be a JSON object"));
        }
        self.check_size(&Document::new(doc_type.clone(), 0, writer.user.clone(), data.clone()))?;
        let mut session = self.sessions.get(&writer.user).cloned().unwrap_or_default();
        let max = self.config.limits.staged_docs_max;
        if session.len() >= max && !session.contains_key(&doc) {
            return Err(refuse(ErrorCode::LimitExceeded, format!("a session holds at most {max} documents")));
        }
        session.insert(doc, Staged { doc_type, base_seq, data });
        Ok(Change::session(writer.user.clone(), session))
    }

    /// docs/PROTOCOL.md stage.commit.atomic: every staged write at one sequence, or none.
    fn plan_stage_commit(&self, writer: &Identity, seq: u64, now_ms: u64) -> Result<Change, Refusal> {
        let Some(session) = self.sessions.get(&writer.user).filter(|s| !s.is_empty()) else {
            return Ok(Change::default());
        };
        let mut change = Change::session(writer.user.clone(), Default::default());
        change.advances = true;
        for (doc, staged) in session {
            let current = self.docs.get(doc);
            let moved = match current {
                None => staged.base_seq != 0,
                Some(document) => document.deleted.is_some() || document.seq != staged.base_seq,
            };
            if moved {
                // stage.commit.atomic: the conflict names the document and its sequence now (0
                // when it no longer exists).
                let message = format!("{doc} changed since it was staged at seq {}", staged.base_seq);
                let body = ErrorBody::new(ErrorCode::Conflict, message);
                let seq = Some(current.map_or(0, |d| d.seq));
                return Err(Box::new(ErrorBody { seq, doc: Some(doc.clone()), ..body }));
            }
            let named =
                |body: Refusal| Box::new(ErrorBody { message: format!("{doc}: {}", body.message), ..*body });
            let write = match current {
                None => {
                    let document = self.plan_create(
                        writer,
                        doc,
                        staged.doc_type.clone(),
                        staged.data.clone(),
                        seq,
                        now_ms,
                    );
                    DocWrite::new(doc.clone(), Some(document.map_err(named)?), Some(Lifecycle::Create))
                }
                Some(_) => {
                    let document = self.written(writer, doc, None, seq, now_ms, |_| staged.data.clone());
                    DocWrite::new(doc.clone(), Some(document.map_err(named)?), None)
                }
            };
            change.docs.push(write);
        }
        Ok(change)
    }

    /// The bucket `name` that `writer` may write, checked against `backend` when given.
    fn writable_bucket(
        &self,
        writer: &Identity,
        name: &BucketName,
        backend: Option<Backend>,
    ) -> Result<&Bucket, Refusal> {
        // errors.precedence: the bucket's existence and backend before access to it.
        let bucket =
            self.buckets.get(name).ok_or_else(|| refuse(ErrorCode::NotFound, format!("no bucket {name}")))?;
        if let Some(backend) = backend {
            check_backend(name, bucket, backend)?;
        }
        may_write_bucket(writer, name)?;
        Ok(bucket)
    }

    /// docs/PROTOCOL.md bucket.bind.contract.
    fn plan_bind(&self, writer: &Identity, name: BucketName, contract: Contract) -> Result<Change, Refusal> {
        // errors.precedence: an incompatible bucket is named before access to it is judged.
        if let Some(bucket) = self.buckets.get(&name).filter(|bucket| bucket.contract != contract) {
            let body =
                ErrorBody::new(ErrorCode::Incompatible, format!("{name} is bound with another contract"));
            return Err(Box::new(ErrorBody { contract: Some(bucket.contract.clone()), ..body }));
        }
        may_write_bucket(writer, &name)?;
        match self.buckets.get(&name) {
            Some(bucket) => Ok(Change { version: Some(bucket.version), ..Change::default() }),
            None => {
                let write = BucketWrite {
                    name,
                    bucket: Some(Bucket::new(contract)),
                    new_asset: None,
                    removed_asset: None,
                };
                Ok(Change { version: Some(0), ..Change::bucket(write) })
            }
        }
    }

    fn plan_bucket_set(
        &self,
        writer: &Identity,
        name: BucketName,
        value: Value,
        if_version: Option<u64>,
    ) -> Result<Change, Refusal> {
        let bucket = self.writable_bucket(writer, &name, Some(Backend::D1Json))?;
        storage_enabled(writer)?;
        let guarded = if_version.filter(|_| !Mutant::BucketGuardIgnored.planted(self.config.mutant));
        if let Some(expected) = guarded.filter(|expected| *expected != bucket.version) {
            let message = format!("{name} is at version {}, not {expected}", bucket.version);
            return Err(Box::new(ErrorBody {
                version: Some(bucket.version),
                ..ErrorBody::new(ErrorCode::Conflict, message)
            }));
        }
        let version = bucket.version + 1;
        let bucket = Bucket { version, value, setter: Some(writer.user.clone()), ..bucket.clone() };
        let write = BucketWrite { name, bucket: Some(bucket), new_asset: None, removed_asset: None };
        Ok(Change { version: Some(version), ..Change::bucket(write) })
    }

    /// docs/PROTOCOL.md assets.upload: the server names the asset `a<seq>`. The payload is
    /// decoded only after the bucket, access and storage checks, because errors.precedence puts
    /// existence and permission before a malformed field.
    pub(crate) fn plan_upload(
        &self,
        writer: &Identity,
        name: BucketName,
        file_name: String,
        content_type: String,
        data_b64: &str,
        seq: u64,
    ) -> Result<Change, Refusal> {
        let bucket = self.writable_bucket(writer, &name, Some(Backend::R2Assets))?;
        storage_enabled(writer)?;
        check_name("the file name", &file_name)?;
        check_name("the content type", &content_type)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(data_b64.as_bytes()).map_err(|e| {
            let mut body = refuse(ErrorCode::Invalid, format!("data_b64 is not base64: {e}"));
            body.field = Some("data_b64".to_owned());
            body
        })?;
        let max = self.config.limits.asset_bytes_max;
        if bytes.len() > max {
            return Err(refuse(
                ErrorCode::LimitExceeded,
                format!("the file is {} bytes, more than {max}", bytes.len()),
            ));
        }
        let object_key = ObjectKey::new(format!("a{seq}")).expect("valid object key");
        let info = AssetInfo {
            object_key: object_key.clone(),
            name: file_name,
            content_type,
            size: bytes.len() as u64,
            uploaded_by: writer.user.clone(),
            seq,
        };
        let mut bucket = bucket.clone();
        bucket.assets.insert(object_key.clone(), info);
        let write = BucketWrite {
            name,
            bucket: Some(bucket),
            new_asset: Some((object_key.clone(), bytes)),
            removed_asset: None,
        };
        Ok(Change { object_key: Some(object_key), ..Change::bucket(write) })
    }

    fn plan_asset_delete(
        &self,
        writer: &Identity,
        name: BucketName,
        key: ObjectKey,
    ) -> Result<Change, Refusal> {
        let mut bucket = self.writable_bucket(writer, &name, Some(Backend::R2Assets))?.clone();
        if bucket.assets.remove(&key).is_none() {
            return Err(refuse(ErrorCode::NotFound, format!("no asset {key} in {name}")));
        }
        Ok(Change::bucket(BucketWrite {
            name,
            bucket: Some(bucket),
            new_asset: None,
            removed_asset: Some(key),
        }))
    }

    fn team(&self, team: &TeamId) -> Result<&Team, Refusal> {
        self.teams.get(team).ok_or_else(|| refuse(ErrorCode::NotFound, format!("no team {team}")))
    }

    fn plan_team_create(&self, writer: &Identity, team: TeamId, name: String) -> Result<Change, Refusal> {
        require_admin(writer)?;
        check_name("the team name", &name)?;
        if self.teams.contains_key(&team) {
            return Err(refuse(ErrorCode::Exists, format!("team {team} exists")));
        }
        Ok(Change::team(team, Some(Team { name, members: Default::default() })))
    }

    fn plan_team_invite(&self, writer: &Identity, id: TeamId, user: UserId) -> Result<Change, Refusal> {
        require_admin(writer)?;
        let mut team = self.team(&id)?.clone();
        if team.members.contains_key(&user) {
            return Err(refuse(ErrorCode::Exists, format!("{user} is already invited to or in {id}")));
        }
        team.members.insert(user, Membership::Pending);
        Ok(Change::team(id, Some(team)))
    }

    /// Accepts the caller's invitation (`accept`), or removes a member or invitation.
    fn plan_team_member(&self, id: TeamId, user: UserId, accept: bool) -> Result<Change, Refusal> {
        let mut team = self.team(&id)?.clone();
        let status = team.members.get(&user).copied();
        match (accept, status) {
            (true, Some(Membership::Pending)) => {
                team.members.insert(user, Membership::Active);
            }
            (true, _) => {
                return Err(refuse(ErrorCode::NotFound, format!("no invitation to {id} for {user}")))
            }
            (false, Some(_)) => {
                team.members.remove(&user);
            }
            (false, None) => return Err(refuse(ErrorCode::NotFound, format!("{user} is not in {id}"))),
        }
        Ok(Change::team(id, Some(team)))
    }
}

fn storage_enabled(writer: &Identity) -> Result<(), Refusal> {
    match writer.plan {
        Plan::Free => {
            Err(refuse(ErrorCode::StorageDisabled, "the free plan has bucket and asset storage gated off"))
        }
        Plan::Pro => Ok(()),
    }
}
