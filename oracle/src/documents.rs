//! Documents (§7), soft delete (§10), schema documents (§14) and ordered lists (§13), plus the one
//! place every mutation op is routed from.

use crate::access::{shape_data, Schema, WriteKind};
use crate::json::{canonical_size, json_merged};
use crate::state::{Accepted, Actor, Change, Deletion, Document, ListEdit, Refusal};
use crate::views::{system_id, SystemId};
use crate::Oracle;
use roomlab_protocol::{DocId, DocType, ErrorCode, FieldName, ItemId, ListItem, ListKey, Mutation};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How a put or patch turns the stored data into the new data.
enum Rewrite {
    Put(Value),
    Patch(Value),
}

impl Oracle {
    /// Applies one mutation for `actor`, or refuses it having changed nothing (mutation.validated).
    pub(crate) fn apply_mutation(
        &mut self,
        actor: &Actor,
        mutation: Mutation,
        now_ms: u64,
    ) -> Result<Accepted, Refusal> {
        match mutation {
            Mutation::Create { doc, doc_type, data } => self.create(actor, doc, doc_type, data, now_ms),
            Mutation::Put { doc, data, if_seq } => {
                self.rewrite(actor, doc, Rewrite::Put(data), if_seq, now_ms)
            }
            Mutation::Patch { doc, data, if_seq } => {
                self.rewrite(actor, doc, Rewrite::Patch(data), if_seq, now_ms)
            }
            Mutation::Remove { doc, if_seq } => self.remove(actor, doc, if_seq, now_ms),
            Mutation::Restore { doc } => self.restore(actor, doc),
            Mutation::Purge { doc } => self.purge(actor, doc),
            Mutation::ListInsert { doc, list, item, key, value } => {
                self.list_op(actor, doc, list, item, ListOp::Insert(key, value))
            }
            Mutation::ListMove { doc, list, item, key } => {
                self.list_op(actor, doc, list, item, ListOp::Move(key))
            }
            Mutation::ListUpdate { doc, list, item, value } => {
                self.list_op(actor, doc, list, item, ListOp::Update(value))
            }
            Mutation::ListRemove { doc, list, item } => self.list_op(actor, doc, list, item, ListOp::Remove),
            Mutation::StagePut { doc, doc_type, data } => self.stage_put(actor, doc, doc_type, data),
            Mutation::StageCommit => self.stage_commit(actor, now_ms),
            Mutation::StageDiscard => Ok(self.stage_discard(actor)),
            Mutation::BucketBind { bucket, contract } => self.bucket_bind(actor, bucket, contract),
            Mutation::BucketSet { bucket, value, if_version } => {
                self.bucket_set(actor, bucket, value, if_version)
            }
            Mutation::BucketDelete { bucket } => self.bucket_delete(actor, bucket),
            Mutation::AssetUpload { bucket, name, content_type, data_b64 } => {
                self.asset_upload(actor, bucket, name, content_type, &data_b64)
            }
            Mutation::AssetDelete { bucket, object_key } => self.asset_delete(actor, bucket, object_key),
            Mutation::TeamCreate { team, name } => self.team_create(actor, team, name),
            Mutation::TeamDelete { team } => self.team_delete(actor, team),
            Mutation::TeamInvite { team, user } => self.team_invite(actor, team, user),
            Mutation::TeamAccept { team } => self.team_accept(actor, team),
            Mutation::TeamRemove { team, user } => self.team_remove(actor, team, user),
            Mutation::UserSetRole { user, role } => self.user_set_role(actor, user, role),
        }
    }

    /// docs.create: a live document owned by the caller at a new sequence; `exists` if live,
    /// `deleted` if soft-deleted (docs.create.deleted-id).
    fn create(
        &mut self,
        actor: &Actor,
        doc: DocId,
        doc_type: DocType,
        data: Value,
        now_ms: u64,
    ) -> Result<Accepted, Refusal> {
        if refuse_system_write(&doc)? {
            return self.write_schema(actor, doc, Some(doc_type), Rewrite::Put(data), None);
        }
        if let Some(existing) = self.docs.get(&doc) {
            return Err(match existing.deleted {
                Some(_) => Refusal::new(
                    "docs.create.deleted-id",
                    ErrorCode::Deleted,
                    format!("{doc} is deleted: restore it or pick a new id"),
                )
                .with_seq(existing.seq),
                None => Refusal::new("docs.create", ErrorCode::Exists, format!("{doc} exists")),
            });
        }
        self.check_create(actor, &doc_type)?;
        let data = data_object(data)?;
        let data = self.shaped(&doc_type, WriteKind::Create { creator: &actor.user }, data, now_ms)?;
        let bytes = canonical_size(&data);
        self.check_doc_size(bytes)?;
        self.check_quota(actor, &BTreeMap::from([(actor.user.clone(), bytes as i64)]))?;
        let seq = self.advance();
        self.docs.insert(doc.clone(), Document::new(doc_type.clone(), seq, actor.user.clone(), data));
        let mut change = Change::at(seq).touching(&doc, &doc_type);
        change.index = true;
        Ok(Accepted::of("docs.create", change))
    }

    /// docs.put and docs.patch (with guard.if-seq): the data replaced or merged, lists kept.
    fn rewrite(
        &mut self,
        actor: &Actor,
        doc: DocId,
        rewrite: Rewrite,
        if_seq: Option<u64>,
        now_ms: u64,
    ) -> Result<Accepted, Refusal> {
        if refuse_system_write(&doc)? {
            return self.write_schema(actor, doc, None, rewrite, if_seq);
        }
        let existing = self.live_document(&doc, "docs.missing")?;
        self.check_write(actor, existing)?;
        check_guard(if_seq, existing.seq)?;
        let (data, rule) = match rewrite {
            Rewrite::Put(data) => (data_object(data)?, "docs.put"),
            Rewrite::Patch(patch) => {
                let patch = data_object(patch)?;
                let Value::Object(merged) = json_merged(&existing.data, &Value::Object(patch)) else {
                    unreachable!("merging an object patch gives an object")
                };
                (merged, "docs.patch")
            }
        };
        let kind = WriteKind::Update { old: &existing.data };
        let data = self.shaped(&existing.doc_type, kind, data, now_ms)?;
        let bytes = canonical_size(&data);
        self.check_doc_size(bytes + existing.list_bytes)?;
        let delta = bytes as i64 - existing.data_bytes as i64;
        self.check_quota(actor, &BTreeMap::from([(existing.owner.clone(), delta)]))?;
        let seq = self.advance();
        let stored = self.docs.get_mut(&doc).expect("checked above");
        stored.set_data(data);
        stored.seq = seq;
        let doc_type = stored.doc_type.clone();
        Ok(Accepted::of(rule, Change::at(seq).touching(&doc, &doc_type)))
    }

    /// schema.documents, schema.admin-only, schema.shape: `sys:schema:<type>` written with create,
    /// put or patch. `doc_type` is set for a create.
    fn write_schema(
        &mut self,
        actor: &Actor,
        doc: DocId,
        doc_type: Option<DocType>,
        rewrite: Rewrite,
        if_seq: Option<u64>,
    ) -> Result<Accepted, Refusal> {
        Self::check_admin(actor, "schema.admin-only", "write schemas")?;
        let existing = self.docs.get(&doc);
        match (&doc_type, existing) {
            (Some(_), Some(_)) => {
                return Err(Refusal::new("docs.create", ErrorCode::Exists, format!("{doc} exists")))
            }
            (None, None) => {
                return Err(Refusal::new(
                    "docs.missing",
                    ErrorCode::NotFound,
                    format!("{doc} does not exist"),
                ))
            }
            _ => {}
        }
        if let Some(existing) = existing {
            check_guard(if_seq, existing.seq)?;
        }
        let data = match rewrite {
            Rewrite::Put(data) => Value::Object(data_object(data)?),
            Rewrite::Patch(patch) => {
                let patch = Value::Object(data_object(patch)?);
                json_merged(&existing.expect("checked above").data, &patch)
            }
        };
        // schema.shape: a malformed schema names no data field (it is not a document's data).
        let schema = Schema::parse(&data).map_err(|(field, message)| {
            Refusal::new("schema.shape", ErrorCode::Invalid, format!("{field}: {message}"))
        })?;
        let bytes = canonical_size(&data);
        self.check_doc_size(bytes)?;
        let owner = existing.map_or(actor.user.clone(), |existing| existing.owner.clone());
        let delta = bytes as i64 - existing.map_or(0, |existing| existing.data_bytes as i64);
        self.check_quota(actor, &BTreeMap::from([(owner.clone(), delta)]))?;
        let seq = self.advance();
        let doc_type = match doc_type {
            Some(doc_type) => doc_type,
            None => self.docs[&doc].doc_type.clone(),
        };
        let stored = self
            .docs
            .entry(doc.clone())
            .or_insert_with(|| Document::new(doc_type.clone(), seq, owner, Value::Null));
        stored.set_data(data);
        stored.seq = seq;
        if let Some(SystemId::Schema(described)) = system_id(&doc) {
            self.schemas.insert(described, schema);
        }
        let mut change = Change::at(seq).touching(&doc, &doc_type);
        change.access = true;
        Ok(Accepted::of("schema.documents", change))
    }

    /// docs.delete.soft: the document leaves the index and every read, keeping its seq
    /// (seq.doc, docs.delete.membership-log).
    fn remove(
        &mut self,
        actor: &Actor,
        doc: DocId,
        if_seq: Option<u64>,
        now_ms: u64,
    ) -> Result<Accepted, Refusal> {
        refuse_system_delete(&doc)?;
        let existing = self.live_document(&doc, "docs.missing")?;
        self.check_write(actor, existing)
            .map_err(|refusal| Refusal { rule: "docs.delete.access", ..refusal })?;
        check_guard(if_seq, existing.seq)?;
        let seq = self.advance();
        let stored = self.docs.get_mut(&doc).expect("checked above");
        stored.deleted = Some(Deletion { at_ms: now_ms, seq });
        let doc_type = stored.doc_type.clone();
        let mut change = Change::at(seq).touching(&doc, &doc_type);
        change.index = true;
        change.trash = true;
        Ok(Accepted::of("docs.delete.soft", change))
    }

    /// docs.restore.same-seq: back with the seq, data and lists it had; `not_deleted` when live
    /// (docs.restore.live).
    fn restore(&mut self, actor: &Actor, doc: DocId) -> Result<Accepted, Refusal> {
        refuse_system_delete(&doc)?;
        let existing = self.deleted_document(&doc, "docs.restore.live", "restore")?;
        self.check_write(actor, existing)
            .map_err(|refusal| Refusal { rule: "docs.delete.access", ..refusal })?;
        let seq = self.advance();
        let stored = self.docs.get_mut(&doc).expect("checked above");
        stored.deleted = None;
        let doc_type = stored.doc_type.clone();
        let mut change = Change::at(seq).touching(&doc, &doc_type);
        change.index = true;
        change.trash = true;
        Ok(Accepted::of("docs.restore.same-seq", change))
    }

    /// docs.purge: a soft-deleted document's row, lists and Yjs state go; its owner is refunded
    /// (quota.refund).
    fn purge(&mut self, actor: &Actor, doc: DocId) -> Result<Accepted, Refusal> {
        refuse_system_delete(&doc)?;
        let existing = self.deleted_document(&doc, "docs.purge", "purge")?;
        self.check_write(actor, existing)
            .map_err(|refusal| Refusal { rule: "docs.delete.access", ..refusal })?;
        let seq = self.advance();
        let removed = self.docs.remove(&doc).expect("checked above");
        self.yjs.retain(|(yjs_doc, _), _| *yjs_doc != doc);
        let mut change = Change::at(seq).touching(&doc, &removed.doc_type);
        // sys.index.live: a purged document had already left sys:index; it leaves sys:trash.
        change.trash = true;
        Ok(Accepted::of("docs.purge", change))
    }

    /// A live user document, or `not_found` / `deleted` with its seq (docs.missing).
    pub(crate) fn live_document(&self, doc: &DocId, rule: &'static str) -> Result<&Document, Refusal> {
        match self.docs.get(doc) {
            None => Err(Refusal::new(rule, ErrorCode::NotFound, format!("{doc} does not exist"))),
            Some(existing) if !existing.is_live() => {
                Err(Refusal::new(rule, ErrorCode::Deleted, format!("{doc} is deleted"))
                    .with_seq(existing.seq))
            }
            Some(existing) => Ok(existing),
        }
    }

    /// A soft-deleted document, or `not_found` / `not_deleted` (docs.restore.live, docs.purge).
    fn deleted_document(&self, doc: &DocId, rule: &'static str, verb: &str) -> Result<&Document, Refusal> {
        match self.docs.get(doc) {
            None => Err(Refusal::new(rule, ErrorCode::NotFound, format!("{doc} does not exist"))),
            Some(existing) if existing.is_live() => Err(Refusal::new(
                rule,
                ErrorCode::NotDeleted,
                format!("cannot {verb} {doc}: it is not deleted"),
            )),
            Some(existing) => Ok(existing),
        }
    }

    /// The data a write of a `doc_type` document stores, shaped by its schema (schema.fields).
    pub(crate) fn shaped(
        &self,
        doc_type: &DocType,
        kind: WriteKind<'_>,
        data: Map<String, Value>,
        now_ms: u64,
    ) -> Result<Value, Refusal> {
        shape_data(self.schemas.get(doc_type), kind, data, now_ms).map_err(|(field, message)| {
            Refusal::new("schema.fields", ErrorCode::Invalid, message).with_field(field)
        })
    }

    /// docs.size: data plus list values over doc_bytes_max are refused.
    pub(crate) fn check_doc_size(&self, bytes: u64) -> Result<(), Refusal> {
        let max = self.settings.limits.doc_bytes_max as u64;
        if bytes > max {
            return Err(Refusal::new(
                "docs.size",
                ErrorCode::LimitExceeded,
                format!("the document would be {bytes} bytes, more than {max}"),
            ));
        }
        Ok(())
    }
}

/// docs.system-ids and sys.views.read-only: `Ok(true)` for a schema document (written on the
/// schema path), `protected` for any other `sys:` id, `Ok(false)` for a user document.
fn refuse_system_write(doc: &DocId) -> Result<bool, Refusal> {
    match system_id(doc) {
        None => Ok(false),
        Some(SystemId::Schema(_)) => Ok(true),
        Some(SystemId::Other) => {
            Err(Refusal::new("docs.system-ids", ErrorCode::Protected, format!("{doc} is a system document")))
        }
        Some(_) => Err(Refusal::new(
            "sys.views.read-only",
            ErrorCode::Protected,
            format!("{doc} is synthesized by the room and cannot be written"),
        )),
    }
}

/// docs.delete.sys-protected: `sys:` documents, schemas included, are never deleted, restored or
/// purged.
fn refuse_system_delete(doc: &DocId) -> Result<(), Refusal> {
    match system_id(doc) {
        None => Ok(()),
        Some(_) => Err(Refusal::new(
            "docs.delete.sys-protected",
            ErrorCode::Protected,
            format!("{doc} is a system document and cannot be deleted"),
        )),
    }
}

/// Any `sys:` id refused for an op that writes user documents only (list ops, staging).
pub(crate) fn refuse_system_id(doc: &DocId) -> Result<(), Refusal> {
    match system_id(doc) {
        None => Ok(()),
        Some(_) => Err(Refusal::new(
            "docs.system-ids",
            ErrorCode::Protected,
            format!("{doc} is a system document and cannot be written with this op"),
        )),
    }
}

/// docs.data.object: data is a JSON object.
pub(crate) fn data_object(data: Value) -> Result<Map<String, Value>, Refusal> {
    match data {
        Value::Object(members) => Ok(members),
        other => Err(Refusal::new(
            "docs.data.object",
            ErrorCode::Invalid,
            format!("data must be a JSON object, not {}", crate::json::type_name(&other)),
        )),
    }
}

/// guard.if-seq: applies only when the document's seq equals `if_seq`.
fn check_guard(if_seq: Option<u64>, seq: u64) -> Result<(), Refusal> {
    match if_seq {
        Some(expected) if expected != seq => Err(Refusal::new(
            "guard.if-seq",
            ErrorCode::Conflict,
            format!("the document is at seq {seq}, not {expected}"),
        )
        .with_seq(seq)),
        _ => Ok(()),
    }
}

/// The four list ops (§13).
enum ListOp {
    Insert(ListKey, Value),
    Move(ListKey),
    Update(Value),
    Remove,
}

impl Oracle {
    /// list.insert, list.move, list.limit, list.change-is-doc-change: one item changed, the
    /// document at a new seq.
    fn list_op(
        &mut self,
        actor: &Actor,
        doc: DocId,
        list: FieldName,
        item: ItemId,
        op: ListOp,
    ) -> Result<Accepted, Refusal> {
        refuse_system_id(&doc)?;
        let existing = self.live_document(&doc, "docs.missing")?;
        self.check_write(actor, existing)?;
        let items: &[ListItem] = existing.lists.get(&list).map_or(&[], Vec::as_slice);
        let before = items.iter().find(|candidate| candidate.id == item).cloned();
        let after = self.list_item_after(&doc, &list, &item, before.as_ref(), items.len(), op)?;
        let old_bytes = before.as_ref().map_or(0, |item| canonical_size(&item.value));
        let new_bytes = after.as_ref().map_or(0, |item| canonical_size(&item.value));
        self.check_doc_size(existing.bytes() + new_bytes - old_bytes)?;
        let delta = new_bytes as i64 - old_bytes as i64;
        self.check_quota(actor, &BTreeMap::from([(existing.owner.clone(), delta)]))?;
        let base = existing.seq;
        let seq = self.advance();
        let stored = self.docs.get_mut(&doc).expect("checked above");
        let entries = stored.lists.entry(list.clone()).or_default();
        entries.retain(|candidate| candidate.id != item);
        if let Some(after) = &after {
            let at = entries.partition_point(|candidate| place(candidate) < place(after));
            entries.insert(at, after.clone());
        }
        if entries.is_empty() {
            stored.lists.remove(&list);
        }
        stored.list_bytes = stored.list_bytes + new_bytes - old_bytes;
        stored.seq = seq;
        let doc_type = stored.doc_type.clone();
        let mut change = Change::at(seq).touching(&doc, &doc_type);
        change.list_edit = Some(ListEdit { doc, base });
        Ok(Accepted::of("list.change-is-doc-change", change))
    }

    /// The item after a list op, or the op's refusal: `exists` for an insert of a present id,
    /// `not_found` for any other op on a missing one (list.move), list.limit for a full list.
    fn list_item_after(
        &self,
        doc: &DocId,
        list: &FieldName,
        item: &ItemId,
        before: Option<&ListItem>,
        length: usize,
        op: ListOp,
    ) -> Result<Option<ListItem>, Refusal> {
        let missing =
            || Refusal::new("list.move", ErrorCode::NotFound, format!("{doc} has no item {item} in {list}"));
        match (op, before) {
            (ListOp::Insert(..), Some(_)) => Err(Refusal::new(
                "list.insert",
                ErrorCode::Exists,
                format!("{list} already has an item {item}"),
            )),
            (ListOp::Insert(key, value), None) => {
                let max = self.settings.limits.list_items_max;
                if length >= max {
                    return Err(Refusal::new(
                        "list.limit",
                        ErrorCode::LimitExceeded,
                        format!("{list} already holds {max} items"),
                    ));
                }
                Ok(Some(ListItem { id: item.clone(), key, value }))
            }
            (_, None) => Err(missing()),
            (ListOp::Move(key), Some(before)) => Ok(Some(ListItem { key, ..before.clone() })),
            (ListOp::Update(value), Some(before)) => Ok(Some(ListItem { value, ..before.clone() })),
            (ListOp::Remove, Some(_)) => Ok(None),
        }
    }
}

/// Where an item stands in its list: (key, item id), both byte-wise (list.order).
fn place(item: &ListItem) -> (&[u8], &[u8]) {
    (item.key.as_str().as_bytes(), item.id.as_str().as_bytes())
}
