//! What subscriptions show: first answers (query.initial, docsub.initial, bucket.subscribe,
//! assets.subscribe), the system documents (§11), and the pushes after a committed change
//! (query.live, docsub.live, docsub.list-diff, ...).

use crate::query::{query_order, refuse_query};
use crate::state::{
    Actor, AssetsView, BucketContent, BucketView, Change, DocView, Document, Membership, Refusal,
    Subscription,
};
use crate::{Conn, Oracle, Output};
use roomlab_protocol::{
    BucketName, DocId, DocSnapshot, DocType, ErrorCode, FieldName, ItemId, ListDiff, ListItem, Query, Role,
    ServerMessage, SubId, Target, UserId,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The documents with a `sys:` id (§11), by what they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SystemId {
    Index,
    Trash,
    Session,
    Users,
    Teams,
    /// `sys:schema:<type>`, a stored document.
    Schema(DocType),
    /// `sys:stage:<docId>`.
    Stage(DocId),
    /// Any other `sys:` id: nothing is there.
    Other,
}

/// What a `sys:` id names; `None` for a user document.
pub(crate) fn system_id(doc: &DocId) -> Option<SystemId> {
    let rest = doc.as_str().strip_prefix("sys:")?;
    Some(match rest {
        "index" => SystemId::Index,
        "trash" => SystemId::Trash,
        "session" => SystemId::Session,
        "users" => SystemId::Users,
        "teams" => SystemId::Teams,
        _ => {
            if let Some(doc_type) = rest.strip_prefix("schema:").and_then(|name| DocType::new(name).ok()) {
                SystemId::Schema(doc_type)
            } else if let Some(staged) = rest.strip_prefix("stage:").and_then(|name| DocId::new(name).ok()) {
                SystemId::Stage(staged)
            } else {
                SystemId::Other
            }
        }
    })
}

/// Views computed once per committed change and shared by every subscription that shows the same
/// thing to the same (user, role): a hundred subscribers of sys:index cost one index each.
#[derive(Default)]
pub(crate) struct ViewCache {
    docs: BTreeMap<(DocId, UserId, Role), DocView>,
    /// A document's list diff from the sequence a subscriber showed: every subscriber that showed
    /// the same one gets the same diff.
    list_diffs: BTreeMap<(DocId, u64), BTreeMap<FieldName, ListDiff>>,
    queries: Vec<(Query, UserId, Role, Vec<DocId>)>,
}

/// A synthesized document (sys.views.seq): type `sys`, owner `system`.
fn synthesized(id: &DocId, seq: u64, data: Value) -> DocSnapshot {
    DocSnapshot {
        id: id.clone(),
        doc_type: DocType::new("sys").expect("a valid type"),
        seq,
        owner: UserId::new("system").expect("a valid user id"),
        data,
        lists: BTreeMap::new(),
    }
}

impl Oracle {
    /// The first answer to subscribing `target` as `sub`, and the subscription it makes; a refusal
    /// makes none.
    pub(crate) fn first_answer(
        &self,
        viewer: &Actor,
        sub: &SubId,
        target: &Target,
    ) -> Result<(ServerMessage, Subscription), Refusal> {
        match target {
            Target::Query(query) => {
                refuse_query(query)?;
                let result = self.query_result(viewer, query);
                let shown = result.iter().map(|(id, doc)| ((*id).clone(), doc.seq)).collect();
                let docs = result.iter().map(|(id, doc)| doc.snapshot(id)).collect();
                let message = ServerMessage::QueryResult { sub: sub.clone(), seq: self.seq, docs };
                Ok((message, Subscription::Query { query: query.clone(), shown }))
            }
            Target::Doc(doc) => {
                let view = self.first_doc_view(viewer, doc)?;
                let message = doc_message(sub, doc, &view);
                Ok((message, Subscription::Doc { doc: doc.clone(), shown: view }))
            }
            Target::Bucket(bucket) => {
                let (version, value) = self.json_bucket(viewer, bucket, "bucket.subscribe")?;
                let message = ServerMessage::BucketValue {
                    sub: Some(sub.clone()),
                    req: None,
                    bucket: bucket.clone(),
                    version,
                    value: value.clone(),
                };
                Ok((
                    message,
                    Subscription::Bucket { bucket: bucket.clone(), shown: BucketView::Value { version } },
                ))
            }
            Target::Assets(bucket) => {
                let assets = self.asset_bucket(viewer, bucket, "assets.subscribe")?;
                let message = ServerMessage::AssetsList {
                    sub: Some(sub.clone()),
                    req: None,
                    bucket: bucket.clone(),
                    assets: assets.clone(),
                };
                Ok((
                    message,
                    Subscription::Assets { bucket: bucket.clone(), shown: AssetsView::List(assets) },
                ))
            }
        }
    }

    /// docsub.initial and docsub.read-access: an existing user document the viewer may not read is
    /// refused.
    fn first_doc_view(&self, viewer: &Actor, doc: &DocId) -> Result<DocView, Refusal> {
        if system_id(doc).is_none() {
            if let Some(stored) = self.docs.get(doc) {
                if !self.can_read(viewer, doc, stored) {
                    return Err(Refusal::new(
                        "docsub.read-access",
                        ErrorCode::Forbidden,
                        format!("you may not read {doc}"),
                    ));
                }
            }
        }
        Ok(self.doc_view(viewer, doc))
    }

    /// What a document subscription shows now (docsub.initial, §11). A document the viewer may not
    /// read shows as missing (docsub.read-access).
    pub(crate) fn doc_view(&self, viewer: &Actor, doc: &DocId) -> DocView {
        let missing = DocView::Missing { seq: self.seq };
        match system_id(doc) {
            None | Some(SystemId::Schema(_)) => match self.docs.get(doc) {
                Some(stored) if !self.can_read(viewer, doc, stored) => missing,
                Some(stored) => match stored.deleted {
                    Some(deletion) => DocView::Deleted { seq: deletion.seq },
                    None => DocView::Snapshot(Arc::new(stored.snapshot(doc))),
                },
                None => missing,
            },
            Some(SystemId::Index) => {
                DocView::Snapshot(Arc::new(synthesized(doc, self.index_seq, self.index_data(viewer))))
            }
            Some(SystemId::Trash) => {
                DocView::Snapshot(Arc::new(synthesized(doc, self.trash_seq, self.trash_data(viewer))))
            }
            Some(SystemId::Users) => {
                DocView::Snapshot(Arc::new(synthesized(doc, self.users_seq, self.users_data())))
            }
            Some(SystemId::Teams) => {
                DocView::Snapshot(Arc::new(synthesized(doc, self.teams_seq, self.teams_data())))
            }
            Some(SystemId::Session) => {
                DocView::Snapshot(Arc::new(synthesized(doc, self.seq, self.session_data(&viewer.user))))
            }
            Some(SystemId::Stage(staged)) => {
                match self.sessions.get(&viewer.user).and_then(|session| session.get(&staged)) {
                    Some(entry) => {
                        DocView::Snapshot(Arc::new(synthesized(doc, self.seq, entry.data.clone())))
                    }
                    None => missing,
                }
            }
            Some(SystemId::Other) => missing,
        }
    }

    /// sys:index: every live user document the viewer may read, by id.
    fn index_data(&self, viewer: &Actor) -> Value {
        let docs: Vec<Value> = self
            .docs
            .iter()
            .filter(|(id, doc)| system_id(id).is_none() && doc.is_live() && self.can_read(viewer, id, doc))
            .map(|(id, doc)| json!({"id": id, "doc_type": doc.doc_type}))
            .collect();
        json!({ "docs": docs })
    }

    /// sys:trash: every soft-deleted document the viewer may read, by id.
    fn trash_data(&self, viewer: &Actor) -> Value {
        let docs: Vec<Value> = self
            .docs
            .iter()
            .filter(|(id, doc)| system_id(id).is_none() && self.can_read(viewer, id, doc))
            .filter_map(|(id, doc)| {
                let deletion = doc.deleted?;
                Some(
                    json!({"id": id, "doc_type": doc.doc_type, "deleted_at": deletion.at_ms, "seq": deletion.seq}),
                )
            })
            .collect();
        json!({ "docs": docs })
    }

    /// sys:users: users who have connected, with their effective role.
    fn users_data(&self) -> Value {
        let users: Vec<Value> =
            self.users.iter().map(|(id, record)| json!({"id": id, "role": record.listed_role()})).collect();
        json!({ "users": users })
    }

    /// sys:teams: teams by id, with their memberships by user id.
    fn teams_data(&self) -> Value {
        let teams: Vec<Value> = self
            .teams
            .iter()
            .map(|(id, team)| {
                let members: Vec<Value> = team
                    .members
                    .iter()
                    .map(|(user, membership)| {
                        let status = match membership {
                            Membership::Pending => "pending",
                            Membership::Active => "active",
                        };
                        json!({"user": user, "status": status})
                    })
                    .collect();
                json!({"id": id, "name": team.name, "members": members})
            })
            .collect();
        json!({ "teams": teams })
    }

    /// sys:session: the user's own staged writes, by document id.
    fn session_data(&self, user: &UserId) -> Value {
        let staged: Vec<Value> = self
            .sessions
            .get(user)
            .into_iter()
            .flatten()
            .map(|(doc, entry)| json!({"doc": doc, "doc_type": entry.doc_type, "base_seq": entry.base_seq}))
            .collect();
        json!({ "staged": staged })
    }

    /// A JSON bucket's version and value for a reader (bucket.backend-match, bucket.user-scope).
    pub(crate) fn json_bucket(
        &self,
        viewer: &Actor,
        name: &BucketName,
        rule: &'static str,
    ) -> Result<(u64, &Value), Refusal> {
        let bucket = self.bound_bucket(name, rule)?;
        let BucketContent::Json { version, value, .. } = &bucket.content else {
            return Err(self.incompatible(name, "is an asset bucket"));
        };
        self.check_bucket_read(viewer, name)?;
        Ok((*version, value))
    }

    /// An asset bucket's list for a reader, by object key (assets.list).
    pub(crate) fn asset_bucket(
        &self,
        viewer: &Actor,
        name: &BucketName,
        rule: &'static str,
    ) -> Result<Vec<roomlab_protocol::AssetInfo>, Refusal> {
        let bucket = self.bound_bucket(name, rule)?;
        let BucketContent::Assets { assets } = &bucket.content else {
            return Err(self.incompatible(name, "is a JSON bucket"));
        };
        self.check_bucket_read(viewer, name)?;
        Ok(assets.values().cloned().collect())
    }

    /// The pushes of a committed change to every subscription it alters (query.live,
    /// query.no-empty-diffs, docsub.live, bucket.subscribe, assets.subscribe): connection by
    /// connection, then by subscription id (see ORDER_NOTE).
    pub(crate) fn publish(&mut self, change: &Change) -> Vec<Output> {
        let mut outputs = Vec::new();
        let mut cache = ViewCache::default();
        let conns: Vec<Conn> = self.connections.keys().copied().collect();
        for conn in conns {
            let connection = &self.connections[&conn];
            if connection.closed || connection.client.is_none() {
                continue;
            }
            let viewer = self.actor(&connection.identity);
            // Taken out while the room is read, so that each subscription's view is updated in place.
            let mut subscriptions =
                std::mem::take(&mut self.connections.get_mut(&conn).expect("listed").subscriptions);
            let mut ended = Vec::new();
            for (sub, subscription) in subscriptions.iter_mut() {
                let Some((message, rule)) = self.push_for(&viewer, sub, subscription, change, &mut cache)
                else {
                    continue;
                };
                // limits.frame-size: a push too large to send ends its subscription, with the
                // refusal in its place.
                match crate::connection::oversized(&message, self.settings.limits.frame_bytes_max) {
                    None => outputs.push(Output::Send { conn, message, rule }),
                    Some(refusal) => {
                        let message = ServerMessage::Error(refusal.body.with_sub(sub.clone()));
                        outputs.push(Output::Send { conn, message, rule: refusal.rule });
                        ended.push(sub.clone());
                    }
                }
            }
            for sub in ended {
                subscriptions.remove(&sub);
            }
            self.connections.get_mut(&conn).expect("listed").subscriptions = subscriptions;
        }
        outputs
    }

    /// The push one subscription gets for a change; what it shows is updated in place.
    fn push_for(
        &self,
        viewer: &Actor,
        sub: &SubId,
        subscription: &mut Subscription,
        change: &Change,
        cache: &mut ViewCache,
    ) -> Option<(ServerMessage, &'static str)> {
        match subscription {
            Subscription::Query { query, shown } => self.query_push(viewer, sub, query, shown, change, cache),
            Subscription::Doc { doc, shown } => self.doc_push(viewer, sub, doc, shown, change, cache),
            Subscription::Bucket { bucket, shown } if change.buckets.contains(bucket) => {
                self.bucket_push(sub, bucket, shown, change.seq)
            }
            Subscription::Assets { bucket, shown } if change.buckets.contains(bucket) => {
                self.assets_push(sub, bucket, shown, change.seq)
            }
            Subscription::Bucket { .. } | Subscription::Assets { .. } => None,
        }
    }

    /// query.live: one diff with what entered, changed in, or left the result; nothing when the
    /// result did not change (query.no-empty-diffs).
    fn query_push(
        &self,
        viewer: &Actor,
        sub: &SubId,
        query: &Query,
        shown: &mut BTreeMap<DocId, u64>,
        change: &Change,
        cache: &mut ViewCache,
    ) -> Option<(ServerMessage, &'static str)> {
        let touches =
            change.docs.iter().any(|(id, doc_type)| *doc_type == query.collection || shown.contains_key(id));
        if !change.access && !touches {
            return None;
        }
        // Without a limit each document's membership depends on it alone, so only the touched ones
        // are looked at; a limit window (or changed access) needs the whole result.
        let whole = change.access || query.limit.is_some();
        let candidates: Vec<(&DocId, &Document)> = if whole {
            self.cached_result(viewer, query, cache)
        } else {
            let mut touched: Vec<(&DocId, &Document)> = change
                .docs
                .keys()
                .filter_map(|id| self.docs.get_key_value(id))
                .filter(|(id, doc)| self.in_query(viewer, query, id, doc))
                .collect();
            touched.sort_by(|left, right| query_order(query, *left, *right));
            touched
        };
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for (id, doc) in &candidates {
            match shown.get(*id) {
                None => added.push(doc.snapshot(id)),
                Some(seq) if *seq != doc.seq => changed.push(doc.snapshot(id)),
                Some(_) => {}
            }
        }
        let kept: BTreeSet<&DocId> = candidates.iter().map(|(id, _)| *id).collect();
        let stays = |id: &DocId| kept.contains(id);
        let removed: Vec<DocId> = if whole {
            shown.keys().filter(|id| !stays(id)).cloned().collect()
        } else {
            change.docs.keys().filter(|id| shown.contains_key(*id) && !stays(id)).cloned().collect()
        };
        if added.is_empty() && changed.is_empty() && removed.is_empty() {
            return None;
        }
        for id in &removed {
            shown.remove(id);
        }
        for (id, doc) in &candidates {
            shown.insert((*id).clone(), doc.seq);
        }
        let message = ServerMessage::QueryDiff { sub: sub.clone(), seq: change.seq, added, changed, removed };
        Some((message, "query.live"))
    }

    /// docsub.live: the document's new state when it differs from what the subscription showed; a
    /// list-only change to what it showed is a doc:diff (docsub.list-diff).
    fn doc_push(
        &self,
        viewer: &Actor,
        sub: &SubId,
        doc: &DocId,
        shown: &mut DocView,
        change: &Change,
        cache: &mut ViewCache,
    ) -> Option<(ServerMessage, &'static str)> {
        let kind = system_id(doc);
        let relevant = match &kind {
            None => change.access || change.docs.contains_key(doc),
            Some(SystemId::Schema(_)) => change.docs.contains_key(doc),
            Some(SystemId::Index) => change.index || change.access,
            Some(SystemId::Trash) => change.trash || change.access,
            Some(SystemId::Users) => change.users,
            Some(SystemId::Teams) => change.teams,
            Some(SystemId::Session | SystemId::Stage(_)) => change.sessions.contains(&viewer.user),
            Some(SystemId::Other) => false,
        };
        if !relevant {
            return None;
        }
        let view = cache
            .docs
            .entry((doc.clone(), viewer.user.clone(), viewer.role))
            .or_insert_with(|| self.doc_view(viewer, doc));
        let session_view = matches!(kind, Some(SystemId::Session | SystemId::Stage(_)));
        if unchanged(shown, view, session_view) {
            return None;
        }
        let (message, rule) = match (&kind, &*shown, &*view, &change.list_edit) {
            (None, DocView::Snapshot(before), DocView::Snapshot(after), edit)
                if only_lists_differ(before, after)
                    && after.seq == change.seq
                    && edit.as_ref().is_none_or(|edit| edit.doc != *doc || before.seq == edit.base) =>
            {
                // docsub.list-diff: the change left data, type, owner and lifecycle as they were
                // (a list op, or a write that changed nothing), so only the lists it changed go.
                let message = ServerMessage::DocDiff {
                    sub: sub.clone(),
                    doc: doc.clone(),
                    base: before.seq,
                    seq: change.seq,
                    lists: cache
                        .list_diffs
                        .entry((doc.clone(), before.seq))
                        .or_insert_with(|| snapshot_list_diff(before, after))
                        .clone(),
                };
                (message, "docsub.list-diff")
            }
            _ => (doc_message(sub, doc, view), doc_rule(&kind, shown, view)),
        };
        *shown = view.clone();
        Some((message, rule))
    }

    /// A query's whole result for a viewer, computed once per change (see [`ViewCache`]).
    fn cached_result<'s>(
        &'s self,
        viewer: &Actor,
        query: &Query,
        cache: &mut ViewCache,
    ) -> Vec<(&'s DocId, &'s Document)> {
        let known = cache
            .queries
            .iter()
            .find(|(cached, user, role, _)| cached == query && *user == viewer.user && *role == viewer.role);
        if let Some((_, _, _, ids)) = known {
            return ids.iter().filter_map(|id| self.docs.get_key_value(id)).collect();
        }
        let result = self.query_result(viewer, query);
        let ids = result.iter().map(|(id, _)| (*id).clone()).collect();
        cache.queries.push((query.clone(), viewer.user.clone(), viewer.role, ids));
        result
    }

    /// bucket.subscribe, bucket.delete, bucket.subscribe.kind.
    fn bucket_push(
        &self,
        sub: &SubId,
        bucket: &BucketName,
        shown: &mut BucketView,
        seq: u64,
    ) -> Option<(ServerMessage, &'static str)> {
        let (view, message) = match self.buckets.get(bucket).map(|stored| &stored.content) {
            Some(BucketContent::Json { version, value, .. }) => (
                BucketView::Value { version: *version },
                ServerMessage::BucketValue {
                    sub: Some(sub.clone()),
                    req: None,
                    bucket: bucket.clone(),
                    version: *version,
                    value: value.clone(),
                },
            ),
            _ => (
                BucketView::Gone,
                ServerMessage::BucketDeleted { sub: sub.clone(), bucket: bucket.clone(), seq },
            ),
        };
        if view == *shown {
            return None;
        }
        let rule = if view == BucketView::Gone { "bucket.delete" } else { "bucket.subscribe" };
        *shown = view;
        Some((message, rule))
    }

    /// assets.subscribe, bucket.delete, bucket.subscribe.kind.
    fn assets_push(
        &self,
        sub: &SubId,
        bucket: &BucketName,
        shown: &mut AssetsView,
        seq: u64,
    ) -> Option<(ServerMessage, &'static str)> {
        let view = match self.buckets.get(bucket).map(|stored| &stored.content) {
            Some(BucketContent::Assets { assets }) => AssetsView::List(assets.values().cloned().collect()),
            _ => AssetsView::Gone,
        };
        if view == *shown {
            return None;
        }
        let (message, rule) = match &view {
            AssetsView::List(assets) => (
                ServerMessage::AssetsList {
                    sub: Some(sub.clone()),
                    req: None,
                    bucket: bucket.clone(),
                    assets: assets.clone(),
                },
                "assets.subscribe",
            ),
            AssetsView::Gone => (
                ServerMessage::BucketDeleted { sub: sub.clone(), bucket: bucket.clone(), seq },
                "bucket.delete",
            ),
        };
        *shown = view;
        Some((message, rule))
    }
}

/// Whether a document subscription's view did not change: a missing document stays missing
/// whatever the sequence. A user's session views are pushed at every change of their session
/// (sys.views.seq), so for them nothing counts as unchanged.
fn unchanged(shown: &DocView, view: &DocView, session_view: bool) -> bool {
    match (shown, view) {
        _ if session_view => false,
        (DocView::Missing { .. }, DocView::Missing { .. }) => true,
        _ => shown == view,
    }
}

/// The message showing a document view.
fn doc_message(sub: &SubId, doc: &DocId, view: &DocView) -> ServerMessage {
    match view {
        DocView::Snapshot(snapshot) => {
            ServerMessage::DocSnapshot { sub: sub.clone(), doc: (**snapshot).clone() }
        }
        DocView::Deleted { seq } => {
            ServerMessage::DocDeleted { sub: sub.clone(), doc: doc.clone(), seq: *seq }
        }
        DocView::Missing { seq } => {
            ServerMessage::DocMissing { sub: sub.clone(), doc: doc.clone(), seq: *seq }
        }
    }
}

/// The rule behind a whole-document push.
fn doc_rule(kind: &Option<SystemId>, shown: &DocView, view: &DocView) -> &'static str {
    match (kind, shown, view) {
        (Some(SystemId::Index), _, _) => "sys.index.live",
        (Some(SystemId::Trash), _, _) => "sys.trash.live",
        (Some(SystemId::Schema(_)), _, _) => "schema.documents",
        (Some(_), _, _) => "sys.views.seq",
        (None, _, DocView::Deleted { .. }) => "docs.delete.notifies-subscribers",
        (None, DocView::Deleted { .. }, DocView::Snapshot(_)) => "docsub.survives-delete",
        (None, _, _) => "docsub.live",
    }
}

/// Whether two snapshots of one document differ in nothing but their lists and seq.
fn only_lists_differ(before: &DocSnapshot, after: &DocSnapshot) -> bool {
    before.doc_type == after.doc_type
        && before.owner == after.owner
        && before.data == after.data
        && before.seq < after.seq
}

/// docsub.list-diff: per list that changed, the items that are new or whose key or value changed
/// (whole, in list order) and the ids that left (byte order); a list that did not change is absent.
fn snapshot_list_diff(before: &DocSnapshot, after: &DocSnapshot) -> BTreeMap<FieldName, ListDiff> {
    let names: BTreeSet<&FieldName> = before.lists.keys().chain(after.lists.keys()).collect();
    let mut lists = BTreeMap::new();
    for name in names {
        let old: BTreeMap<&ItemId, &ListItem> =
            before.lists.get(name).into_iter().flatten().map(|item| (&item.id, item)).collect();
        let new = after.lists.get(name).map(Vec::as_slice).unwrap_or_default();
        let kept: BTreeSet<&ItemId> = new.iter().map(|item| &item.id).collect();
        let diff = ListDiff {
            put: new.iter().filter(|item| old.get(&item.id) != Some(item)).cloned().collect(),
            removed: old.keys().filter(|id| !kept.contains(*id)).map(|id| (*id).clone()).collect(),
        };
        if !diff.put.is_empty() || !diff.removed.is_empty() {
            lists.insert(name.clone(), diff);
        }
    }
    lists
}
