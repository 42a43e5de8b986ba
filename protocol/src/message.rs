//! Every message of protocol version 1, both ways (docs/PROTOCOL.md, "Messages").

use crate::error::ErrorCode;
use crate::ids::{
    BucketName, ClientId, DocId, DocType, FieldName, ItemId, ListKey, ObjectKey, RoomId, SubId, TeamId,
    UserId,
};
use crate::query::Query;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A role in the room's hierarchy, lowest first: each includes the permissions of those below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Can read collections with viewer access, and write nothing.
    Viewer,
    /// Can read and write collections with member access.
    Member,
    /// Can do everything, manage users and teams, and write schemas.
    Admin,
}

/// A user's storage plan, which sets their quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// A logical limit, with bucket and asset storage gated off.
    Free,
    /// A base limit, raised by add-ons.
    Pro,
}

/// The storage backend a bucket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Backend {
    /// One JSON value per bucket, with a version.
    #[serde(rename = "d1-json")]
    D1Json,
    /// A set of files.
    #[serde(rename = "r2-assets")]
    R2Assets,
}

impl Backend {
    /// The backend as the protocol spells it: `d1-json` or `r2-assets`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::D1Json => "d1-json",
            Backend::R2Assets => "r2-assets",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A storage contract, as a widget manifest declares it; two parties are compatible only when
/// backend, schemaId and schemaVersion all match.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contract {
    /// The storage backend.
    pub backend: Backend,
    /// The logical schema identifier.
    pub schema_id: String,
    /// The schema's integer version.
    pub schema_version: u32,
}

/// One item of an ordered list inside a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListItem {
    /// The item's id, unique in its list.
    pub id: ItemId,
    /// Its fractional key; the list is ordered by (key, id).
    pub key: ListKey,
    /// Its value.
    pub value: Value,
}

/// The change to one list in a `doc:diff`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListDiff {
    /// Items that are new or whose key or value changed, whole, in list order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub put: Vec<ListItem>,
    /// Ids of items that left the list, in byte order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<ItemId>,
}

impl ListDiff {
    /// The diff that turns `before` into `after` (both in list order); `None` when they are equal.
    pub fn between(before: &[ListItem], after: &[ListItem]) -> Option<ListDiff> {
        let old: BTreeMap<&ItemId, &ListItem> = before.iter().map(|item| (&item.id, item)).collect();
        let new: BTreeMap<&ItemId, &ListItem> = after.iter().map(|item| (&item.id, item)).collect();
        let put: Vec<ListItem> =
            after.iter().filter(|item| old.get(&item.id) != Some(item)).cloned().collect();
        let removed: Vec<ItemId> =
            old.keys().filter(|id| !new.contains_key(**id)).map(|id| (*id).clone()).collect();
        (!put.is_empty() || !removed.is_empty()).then_some(ListDiff { put, removed })
    }

    /// Applies the diff to a list in list order, keeping that order.
    pub fn apply(&self, items: &mut Vec<ListItem>) {
        // A diff names a few items of a list that may hold thousands: find each one instead of
        // re-sorting the list.
        for id in self.removed.iter().chain(self.put.iter().map(|item| &item.id)) {
            if let Some(at) = items.iter().position(|item| &item.id == id) {
                items.remove(at);
            }
        }
        for item in &self.put {
            let at = items.partition_point(|old| old.place() < item.place());
            items.insert(at, item.clone());
        }
    }
}

impl ListItem {
    /// Sorts a list into its one order, by (key, item id), both byte-wise (docs/PROTOCOL.md
    /// list.order).
    pub fn sort(items: &mut [ListItem]) {
        items.sort_by(|a, b| a.place().cmp(&b.place()));
    }

    /// Where the item stands in its list: (key, item id), compared byte-wise.
    fn place(&self) -> (&str, &str) {
        (self.key.as_str(), self.id.as_str())
    }
}

/// Applies a JSON merge patch (RFC 7386, docs/PROTOCOL.md docs.patch) to `target`: objects merge,
/// `null` removes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
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

/// A document as readers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocSnapshot {
    /// The document id.
    pub id: DocId,
    /// The document type (collection).
    pub doc_type: DocType,
    /// The sequence of the last change to the document.
    pub seq: u64,
    /// The user who created it.
    pub owner: UserId,
    /// The JSON payload.
    pub data: Value,
    /// The ordered lists, each sorted by (key, id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lists: BTreeMap<FieldName, Vec<ListItem>>,
}

/// One asset in an asset bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetInfo {
    /// Its key in the bucket.
    pub object_key: ObjectKey,
    /// The name given at upload.
    pub name: String,
    /// Its MIME type.
    pub content_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Who uploaded it (and is charged for it).
    pub uploaded_by: UserId,
    /// The sequence of the upload.
    pub seq: u64,
}

/// A change a client asks for: each is one step of the room's sequence when accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Mutation {
    /// Creates a document; `exists` if live, `deleted` if soft-deleted.
    Create {
        /// The new document's id.
        doc: DocId,
        /// Its type.
        doc_type: DocType,
        /// Its data.
        data: Value,
    },
    /// Replaces a document's data.
    Put {
        /// The document.
        doc: DocId,
        /// The new data.
        data: Value,
        /// Applies only if the document's sequence is still this one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_seq: Option<u64>,
    },
    /// Merges a JSON merge patch (RFC 7386) into a document's data.
    Patch {
        /// The document.
        doc: DocId,
        /// The merge patch.
        data: Value,
        /// Applies only if the document's sequence is still this one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_seq: Option<u64>,
    },
    /// Soft-deletes a document.
    Remove {
        /// The document.
        doc: DocId,
        /// Applies only if the document's sequence is still this one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_seq: Option<u64>,
    },
    /// Restores a soft-deleted document at the sequence it left.
    Restore {
        /// The document.
        doc: DocId,
    },
    /// Hard-deletes a soft-deleted document and refunds its quota.
    Purge {
        /// The document.
        doc: DocId,
    },
    /// Inserts an item into an ordered list.
    ListInsert {
        /// The document.
        doc: DocId,
        /// The list's name.
        list: FieldName,
        /// The new item's id.
        item: ItemId,
        /// Its fractional key.
        key: ListKey,
        /// Its value.
        value: Value,
    },
    /// Moves an item to a new key.
    ListMove {
        /// The document.
        doc: DocId,
        /// The list's name.
        list: FieldName,
        /// The item.
        item: ItemId,
        /// Its new key.
        key: ListKey,
    },
    /// Replaces an item's value.
    ListUpdate {
        /// The document.
        doc: DocId,
        /// The list's name.
        list: FieldName,
        /// The item.
        item: ItemId,
        /// Its new value.
        value: Value,
    },
    /// Removes an item.
    ListRemove {
        /// The document.
        doc: DocId,
        /// The list's name.
        list: FieldName,
        /// The item.
        item: ItemId,
    },
    /// Stages new data for a document (created on commit if missing) in the user's session.
    StagePut {
        /// The document.
        doc: DocId,
        /// Its type, used when the commit creates it.
        doc_type: DocType,
        /// The staged data.
        data: Value,
    },
    /// Applies every staged write atomically, or none (`conflict`).
    StageCommit,
    /// Drops every staged write.
    StageDiscard,
    /// Binds to a bucket with a storage contract, creating the bucket if missing.
    BucketBind {
        /// The resolved bucket name.
        bucket: BucketName,
        /// The binder's contract.
        contract: Contract,
    },
    /// Sets a JSON bucket's value.
    BucketSet {
        /// The bucket.
        bucket: BucketName,
        /// The new value.
        value: Value,
        /// Applies only if the bucket's version is still this one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_version: Option<u64>,
    },
    /// Deletes a bucket: its value or all its assets, refunding quota.
    BucketDelete {
        /// The bucket.
        bucket: BucketName,
    },
    /// Uploads an asset (base64 bytes; large files go over HTTP).
    AssetUpload {
        /// The asset bucket.
        bucket: BucketName,
        /// The file name.
        name: String,
        /// Its MIME type.
        content_type: String,
        /// The bytes, base64 (standard alphabet, padded).
        data_b64: String,
    },
    /// Deletes one asset.
    AssetDelete {
        /// The asset bucket.
        bucket: BucketName,
        /// The asset.
        object_key: ObjectKey,
    },
    /// Creates a team (admins).
    TeamCreate {
        /// The team id.
        team: TeamId,
        /// Its display name.
        name: String,
    },
    /// Deletes a team and its memberships (admins).
    TeamDelete {
        /// The team.
        team: TeamId,
    },
    /// Invites a user to a team; the membership is pending until they accept (admins).
    TeamInvite {
        /// The team.
        team: TeamId,
        /// The invited user.
        user: UserId,
    },
    /// Accepts the caller's pending invitation.
    TeamAccept {
        /// The team.
        team: TeamId,
    },
    /// Removes a member or a pending invitation (admins).
    TeamRemove {
        /// The team.
        team: TeamId,
        /// The user.
        user: UserId,
    },
    /// Sets a user's role in this room, overriding their token's role from then on (admins).
    UserSetRole {
        /// The user.
        user: UserId,
        /// The new role.
        role: Role,
    },
}

/// What a client may subscribe to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A live query.
    Query(Query),
    /// One document (including the system documents).
    Doc(DocId),
    /// A JSON bucket's value.
    Bucket(BucketName),
    /// An asset bucket's list.
    Assets(BucketName),
}

/// The largest mutation id: 2^53 − 1, the largest integer every JSON peer reads exactly
/// (docs/PROTOCOL.md mutation.mid.range).
pub const MID_MAX: u64 = (1 << 53) - 1;

fn mid_in_range<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let mid = u64::deserialize(deserializer)?;
    if mid > MID_MAX {
        return Err(serde::de::Error::custom(format!("mid {mid} is above {MID_MAX}")));
    }
    Ok(mid)
}

/// A message from a client to a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The first message on a connection.
    Hello {
        /// The protocol version the client speaks.
        protocol: u32,
        /// The client's id, stable across reconnects; scopes mutation ids.
        client: ClientId,
    },
    /// Starts a subscription.
    Subscribe {
        /// The client's id for it.
        sub: SubId,
        /// What to subscribe to.
        #[serde(flatten)]
        target: Target,
    },
    /// Ends a subscription.
    Unsubscribe {
        /// The subscription.
        sub: SubId,
    },
    /// Asks for a change.
    Mutate {
        /// The mutation id: strictly increasing per client id, at most [`MID_MAX`].
        #[serde(deserialize_with = "mid_in_range")]
        mid: u64,
        /// The change.
        #[serde(flatten)]
        mutation: Mutation,
    },
    /// Reads a JSON bucket once; `bucket:not_modified` when `if_version` is current.
    BucketGet {
        /// The client's request id, echoed in the answer.
        req: u64,
        /// The bucket.
        bucket: BucketName,
        /// The version the client already has.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_version: Option<u64>,
    },
    /// Lists an asset bucket once.
    AssetList {
        /// The client's request id, echoed in the answer.
        req: u64,
        /// The bucket.
        bucket: BucketName,
    },
    /// Stops receiving a Yjs document's updates on this connection.
    YjsClose {
        /// The document.
        doc: DocId,
        /// The rich-text field.
        field: FieldName,
    },
    /// Asks for a `pong`.
    Ping {
        /// Echoed in the `pong`.
        nonce: u64,
    },
}

/// The limits a server enforces, announced in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The largest frame accepted, in bytes; larger frames close the connection with 1009.
    pub frame_bytes_max: usize,
    /// Live subscriptions per connection.
    pub subscriptions_max: usize,
    /// Messages queued to one connection before it is closed as a slow consumer (4008).
    pub outbound_queue_max: usize,
    /// A document's data plus lists, in bytes of canonical JSON.
    pub doc_bytes_max: usize,
    /// Items in one ordered list.
    pub list_items_max: usize,
    /// Mutation results remembered per client id for replay.
    pub replay_window_max: usize,
    /// One asset's size in bytes.
    pub asset_bytes_max: usize,
    /// Staged writes in one session.
    pub staged_docs_max: usize,
    /// Bytes of frames queued to one connection before it is closed as a slow consumer (4008).
    /// Servers that predate it announce nothing; readers take the default.
    #[serde(default = "outbound_bytes_max_default")]
    pub outbound_bytes_max: usize,
}

fn outbound_bytes_max_default() -> usize {
    8 << 20
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 1 << 20,
            subscriptions_max: 256,
            outbound_queue_max: 1024,
            doc_bytes_max: 256 << 10,
            list_items_max: 10_000,
            replay_window_max: 128,
            asset_bytes_max: 512 << 10,
            staged_docs_max: 64,
            outbound_bytes_max: outbound_bytes_max_default(),
        }
    }
}

/// A message from a server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerMessage {
    /// The answer to `hello`.
    #[serde(rename = "welcome")]
    Welcome {
        /// The protocol version of the session.
        protocol: u32,
        /// The room.
        room: RoomId,
        /// The authenticated user.
        user: UserId,
        /// Their effective role.
        role: Role,
        /// The room's current sequence.
        seq: u64,
        /// The server's limits.
        limits: Limits,
    },
    /// A mutation was committed.
    #[serde(rename = "ack")]
    Ack {
        /// The mutation id.
        mid: u64,
        /// The room sequence of the change.
        seq: u64,
        /// The bucket's new version (bucket_set, bucket_bind).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
        /// The new asset's key (asset_upload).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object_key: Option<ObjectKey>,
    },
    /// A request failed.
    #[serde(rename = "error")]
    Error(ErrorBody),
    /// The first answer of a query subscription.
    #[serde(rename = "query:result")]
    QueryResult {
        /// The subscription.
        sub: SubId,
        /// The room sequence the result reflects.
        seq: u64,
        /// The matching documents, in query order.
        docs: Vec<DocSnapshot>,
    },
    /// A change to a query's result.
    #[serde(rename = "query:diff")]
    QueryDiff {
        /// The subscription.
        sub: SubId,
        /// The room sequence of the change.
        seq: u64,
        /// Documents that entered the result.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        added: Vec<DocSnapshot>,
        /// Documents of the result that changed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        changed: Vec<DocSnapshot>,
        /// Ids of documents that left the result.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed: Vec<DocId>,
    },
    /// A document's current state (first answer and every change).
    #[serde(rename = "doc:snapshot")]
    DocSnapshot {
        /// The subscription.
        sub: SubId,
        /// The document.
        doc: DocSnapshot,
    },
    /// A change to the lists of a document the subscription shows, and to nothing else: the
    /// document at `base` with these list changes is the document at `seq` (docs/PROTOCOL.md
    /// docs.subscribe.list-diff).
    #[serde(rename = "doc:diff")]
    DocDiff {
        /// The subscription.
        sub: SubId,
        /// The document.
        doc: DocId,
        /// The document's sequence the diff applies to: the one the subscription last showed.
        base: u64,
        /// The document's new sequence.
        seq: u64,
        /// The changed lists; a list absent here did not change.
        lists: BTreeMap<FieldName, ListDiff>,
    },
    /// The document is soft-deleted (first answer, or pushed when a delete commits).
    #[serde(rename = "doc:deleted")]
    DocDeleted {
        /// The subscription.
        sub: SubId,
        /// The document.
        doc: DocId,
        /// The room sequence of the delete.
        seq: u64,
    },
    /// The document does not exist (never existed, or was purged).
    #[serde(rename = "doc:missing")]
    DocMissing {
        /// The subscription.
        sub: SubId,
        /// The document.
        doc: DocId,
        /// The room sequence the answer reflects.
        seq: u64,
    },
    /// A JSON bucket's value (a `bucket_get` answer or a subscription push).
    #[serde(rename = "bucket:value")]
    BucketValue {
        /// The subscription, for pushes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<SubId>,
        /// The request, for `bucket_get` answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// The bucket.
        bucket: BucketName,
        /// Its version (0 before the first set).
        version: u64,
        /// Its value (`null` before the first set).
        value: Value,
    },
    /// The client's `if_version` is current.
    #[serde(rename = "bucket:not_modified")]
    BucketNotModified {
        /// The request.
        req: u64,
        /// The bucket.
        bucket: BucketName,
        /// Its version.
        version: u64,
    },
    /// The bucket was deleted; a binding falls back to its isolated bucket.
    #[serde(rename = "bucket:deleted")]
    BucketDeleted {
        /// The subscription.
        sub: SubId,
        /// The bucket.
        bucket: BucketName,
        /// The room sequence of the delete.
        seq: u64,
    },
    /// An asset bucket's list (an `asset_list` answer or a subscription push).
    #[serde(rename = "assets:list")]
    AssetsList {
        /// The subscription, for pushes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<SubId>,
        /// The request, for `asset_list` answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// The bucket.
        bucket: BucketName,
        /// Its assets, by object key.
        assets: Vec<AssetInfo>,
    },
    /// A subscription ended at the client's request.
    #[serde(rename = "unsubscribed")]
    Unsubscribed {
        /// The subscription.
        sub: SubId,
    },
    /// The answer to `ping`.
    #[serde(rename = "pong")]
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
}

/// The body of an `error` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// The mutation that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<u64>,
    /// The request that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<u64>,
    /// The subscription that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<SubId>,
    /// `conflict`/`deleted`: the document's current sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `conflict` on a bucket: its current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// `quota_exceeded`: the owner's usage in bytes before the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    /// `quota_exceeded`: the owner's limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `invalid`: the field at fault; a refused Yjs frame: its rich-text field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A refused Yjs frame: its document (with `field`, which Yjs document was refused); a staged
    /// commit's `conflict`: the document that moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<DocId>,
    /// `incompatible`: the bucket's contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<Contract>,
}

impl ErrorBody {
    /// An error with only a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            mid: None,
            req: None,
            sub: None,
            seq: None,
            version: None,
            used: None,
            limit: None,
            field: None,
            doc: None,
            contract: None,
        }
    }

    /// The same error, naming the mutation it answers.
    pub fn with_mid(self, mid: u64) -> Self {
        ErrorBody { mid: Some(mid), ..self }
    }

    /// The same error, naming the request it answers.
    pub fn with_req(self, req: u64) -> Self {
        ErrorBody { req: Some(req), ..self }
    }

    /// The same error, naming the subscription it answers.
    pub fn with_sub(self, sub: SubId) -> Self {
        ErrorBody { sub: Some(sub), ..self }
    }

    /// The same error, carrying a document's current sequence.
    pub fn with_seq(self, seq: u64) -> Self {
        ErrorBody { seq: Some(seq), ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backends print as the wire spells them, so messages name them as clients read them.
    #[test]
    fn backend_names_match_serde() {
        for backend in [Backend::D1Json, Backend::R2Assets] {
            assert_eq!(serde_json::to_value(backend).unwrap().as_str(), Some(backend.as_str()));
            assert_eq!(backend.to_string(), backend.as_str());
        }
    }
}
