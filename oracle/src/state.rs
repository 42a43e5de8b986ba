//! What the room holds, and the shapes every rule passes around: who acts, what was refused, what
//! an accepted mutation changed.

use crate::json::canonical_size;
use crate::{Identity, Oracle};
use roomlab_protocol::{
    AssetInfo, BucketName, ClientId, Contract, DocId, DocSnapshot, DocType, ErrorBody, ErrorCode, FieldName,
    ListItem, ObjectKey, Plan, Query, Role, ServerMessage, SubId, UserId,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// A stored document (docs.create), live or soft-deleted.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    pub(crate) doc_type: DocType,
    /// The sequence of the last change to its content (seq.doc).
    pub(crate) seq: u64,
    pub(crate) owner: UserId,
    pub(crate) data: Value,
    /// Each list sorted by (key, item id) bytewise (list.order); a list exists while it has items.
    pub(crate) lists: BTreeMap<FieldName, Vec<ListItem>>,
    /// Set while the document is soft-deleted (docs.delete.soft).
    pub(crate) deleted: Option<Deletion>,
    /// Canonical bytes of `data` (quota.what-counts), kept so pushes never re-serialize.
    pub(crate) data_bytes: u64,
    /// Canonical bytes of every list item's value.
    pub(crate) list_bytes: u64,
}

/// When and at which room sequence a document was soft-deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deletion {
    pub(crate) at_ms: u64,
    pub(crate) seq: u64,
}

impl Document {
    /// A new live document with no lists.
    pub(crate) fn new(doc_type: DocType, seq: u64, owner: UserId, data: Value) -> Document {
        let data_bytes = canonical_size(&data);
        Document {
            doc_type,
            seq,
            owner,
            data,
            lists: BTreeMap::new(),
            deleted: None,
            data_bytes,
            list_bytes: 0,
        }
    }

    /// What the document counts toward its owner's usage and doc_bytes_max (docs.size).
    pub(crate) fn bytes(&self) -> u64 {
        self.data_bytes + self.list_bytes
    }

    /// Whether the document is live (not soft-deleted).
    pub(crate) fn is_live(&self) -> bool {
        self.deleted.is_none()
    }

    /// The document as readers see it.
    pub(crate) fn snapshot(&self, id: &DocId) -> DocSnapshot {
        DocSnapshot {
            id: id.clone(),
            doc_type: self.doc_type.clone(),
            seq: self.seq,
            owner: self.owner.clone(),
            data: self.data.clone(),
            lists: self.lists.clone(),
        }
    }

    /// Replaces the data, keeping the byte count right.
    pub(crate) fn set_data(&mut self, data: Value) {
        self.data_bytes = canonical_size(&data);
        self.data = data;
    }
}

/// A user the room has seen (users.recorded). First and last seen are not kept: nothing a client
/// receives shows them.
#[derive(Debug, Clone)]
pub(crate) struct UserRecord {
    /// The role of their latest token.
    pub(crate) token_role: Role,
    /// The role an admin set in the room (users.set-role).
    pub(crate) assigned: Option<Role>,
    pub(crate) plan: Plan,
    pub(crate) addons: u32,
}

impl UserRecord {
    /// The role sys:users lists (access.effective-role).
    pub(crate) fn listed_role(&self) -> Role {
        self.assigned.unwrap_or(self.token_role)
    }
}

/// A team and its memberships (teams.invite-pending).
#[derive(Debug, Clone)]
pub(crate) struct Team {
    pub(crate) name: String,
    pub(crate) members: BTreeMap<UserId, Membership>,
}

/// Whether a membership was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Membership {
    Pending,
    Active,
}

/// A bound bucket (bucket.bind.contract).
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    pub(crate) contract: Contract,
    pub(crate) content: BucketContent,
}

/// What a bucket holds, by backend.
#[derive(Debug, Clone)]
pub(crate) enum BucketContent {
    /// One JSON value with a version (bucket.value); `setter` is charged `bytes`.
    Json { version: u64, value: Value, setter: Option<UserId>, bytes: u64 },
    /// Files by object key (assets.list).
    Assets { assets: BTreeMap<ObjectKey, AssetInfo> },
}

/// One staged write (stage.put); `base_seq` 0 means the document did not exist.
#[derive(Debug, Clone)]
pub(crate) struct Staged {
    pub(crate) doc_type: DocType,
    pub(crate) data: Value,
    pub(crate) base_seq: u64,
}

/// The remembered answers of one (user, client id) (mutation.replay.window).
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplayWindow {
    pub(crate) newest: u64,
    pub(crate) answers: VecDeque<(u64, ServerMessage)>,
}

/// One open connection.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) identity: Identity,
    /// Set by an accepted `hello` (conn.hello.first).
    pub(crate) client: Option<ClientId>,
    /// The room closed it (4002, 1011): its later inputs are ignored.
    pub(crate) closed: bool,
    pub(crate) subscriptions: BTreeMap<SubId, Subscription>,
    /// Yjs fields this connection synced and did not close (yjs.sync).
    pub(crate) yjs_open: BTreeSet<(DocId, FieldName)>,
    /// Per field, the awareness client ids this connection announced and did not remove, with
    /// the last clock of each (yjs.awareness).
    pub(crate) announced: BTreeMap<(DocId, FieldName), BTreeMap<u64, u32>>,
}

/// A live subscription and what it last showed.
#[derive(Debug, Clone)]
pub(crate) enum Subscription {
    /// The query, and the seq of each document of its result as last shown.
    Query { query: Query, shown: BTreeMap<DocId, u64> },
    /// A document subscription (user or system document).
    Doc { doc: DocId, shown: DocView },
    /// A JSON bucket subscription.
    Bucket { bucket: BucketName, shown: BucketView },
    /// An asset bucket subscription.
    Assets { bucket: BucketName, shown: AssetsView },
}

/// What a document subscription shows. Snapshots are shared: a hundred subscribers of one view
/// hold one copy.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DocView {
    Snapshot(Arc<DocSnapshot>),
    Deleted { seq: u64 },
    Missing { seq: u64 },
}

/// What a bucket subscription shows (bucket.subscribe.kind): `Gone` once deleted, or while the
/// name is not bound as a JSON bucket.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BucketView {
    Value { version: u64 },
    Gone,
}

/// What an assets subscription shows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AssetsView {
    List(Vec<AssetInfo>),
    Gone,
}

/// Who acts or reads: a user with their effective role and plan.
#[derive(Debug, Clone)]
pub(crate) struct Actor {
    pub(crate) user: UserId,
    pub(crate) role: Role,
    pub(crate) plan: Plan,
    pub(crate) addons: u32,
}

/// A refused request: the rule that refused it and the error body (without mid/req/sub), boxed
/// so that results stay small.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) rule: &'static str,
    pub(crate) body: Box<ErrorBody>,
}

impl Refusal {
    /// A refusal with a code and a helpful message.
    pub(crate) fn new(rule: &'static str, code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal { rule, body: Box::new(ErrorBody::new(code, message)) }
    }

    /// Carrying a document's sequence (`deleted`, `conflict`).
    pub(crate) fn with_seq(mut self, seq: u64) -> Refusal {
        self.body.seq = Some(seq);
        self
    }

    /// Carrying a bucket's version (`conflict` on a bucket).
    pub(crate) fn with_version(mut self, version: u64) -> Refusal {
        self.body.version = Some(version);
        self
    }

    /// Carrying the field at fault (`invalid`, Yjs refusals).
    pub(crate) fn with_field(mut self, field: impl Into<String>) -> Refusal {
        self.body.field = Some(field.into());
        self
    }

    /// Carrying a document (stage conflicts, Yjs refusals).
    pub(crate) fn with_doc(mut self, doc: DocId) -> Refusal {
        self.body.doc = Some(doc);
        self
    }

    /// Carrying a bucket's contract (`incompatible`).
    pub(crate) fn with_contract(mut self, contract: Contract) -> Refusal {
        self.body.contract = Some(contract);
        self
    }

    /// Carrying usage and limit (`quota_exceeded`, errors.quota-shape).
    pub(crate) fn with_quota(mut self, used: u64, limit: u64) -> Refusal {
        self.body.used = Some(used);
        self.body.limit = Some(limit);
        self
    }
}

/// An accepted mutation: what its ack says and what it changed.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) rule: &'static str,
    pub(crate) seq: u64,
    pub(crate) version: Option<u64>,
    pub(crate) object_key: Option<ObjectKey>,
    pub(crate) change: Change,
}

impl Accepted {
    /// An ack of a change with nothing more than its sequence.
    pub(crate) fn of(rule: &'static str, change: Change) -> Accepted {
        Accepted { rule, seq: change.seq, version: None, object_key: None, change }
    }
}

/// What a committed change touched, so pushes are computed only where they can be.
#[derive(Debug, Clone, Default)]
pub(crate) struct Change {
    /// The room sequence after the change (the current one when it took none).
    pub(crate) seq: u64,
    /// Stored documents whose content or lifecycle changed, with their type.
    pub(crate) docs: BTreeMap<DocId, DocType>,
    /// The one list edit, when the change was a list op (docsub.list-diff).
    pub(crate) list_edit: Option<ListEdit>,
    /// Read access may have changed for anyone (a schema write, a role change).
    pub(crate) access: bool,
    pub(crate) index: bool,
    pub(crate) trash: bool,
    pub(crate) users: bool,
    pub(crate) teams: bool,
    /// Users whose staged session changed.
    pub(crate) sessions: BTreeSet<UserId>,
    pub(crate) buckets: BTreeSet<BucketName>,
}

impl Change {
    /// A change at `seq` that touched nothing yet.
    pub(crate) fn at(seq: u64) -> Change {
        Change { seq, ..Change::default() }
    }

    /// The same change, touching a document.
    pub(crate) fn touching(mut self, doc: &DocId, doc_type: &DocType) -> Change {
        self.docs.insert(doc.clone(), doc_type.clone());
        self
    }
}

/// One list op: its document and the seq the document had before it.
#[derive(Debug, Clone)]
pub(crate) struct ListEdit {
    pub(crate) doc: DocId,
    pub(crate) base: u64,
}

impl Oracle {
    /// Who `identity` acts as now: the role an admin set, else the token's (access.effective-role);
    /// the plan recorded from the user's latest token, else this token's (quota.plans).
    pub(crate) fn actor(&self, identity: &Identity) -> Actor {
        let record = self.users.get(&identity.user);
        let role = record.and_then(|record| record.assigned).unwrap_or(identity.role);
        let (plan, addons) =
            record.map(|record| (record.plan, record.addons)).unwrap_or((identity.plan, identity.addons));
        Actor { user: identity.user.clone(), role, plan, addons }
    }

    /// Advances the room's sequence for an accepted change (seq.room-wide).
    pub(crate) fn advance(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Records the sequences of the synthesized documents a change altered (sys.views.seq).
    pub(crate) fn stamp_views(&mut self, change: &Change) {
        if change.index {
            self.index_seq = change.seq;
        }
        if change.trash {
            self.trash_seq = change.seq;
        }
        if change.users {
            self.users_seq = change.seq;
        }
        if change.teams {
            self.teams_seq = change.seq;
        }
    }
}
