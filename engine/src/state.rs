//! What a room holds in memory, mirroring its committed SQLite rows, and what each thing costs its
//! owner in quota (docs/PROTOCOL.md §18).

use roomlab_protocol::{
    AssetInfo, Contract, DocId, DocSnapshot, DocType, FieldName, ItemId, ListItem, ListKey, ObjectKey, Plan,
    Role, TeamId, UserId,
};
use serde_json::Value;
use std::collections::BTreeMap;

/// The length of a value's canonical JSON: compact, object keys sorted (serde_json's map is a
/// BTreeMap, so `to_vec` writes keys in order).
pub(crate) fn canonical_len(value: &Value) -> u64 {
    serde_json::to_vec(value).map(|bytes| bytes.len() as u64).expect("JSON values serialize")
}

/// One list item as stored: its key and value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub key: ListKey,
    pub value: Value,
    /// The sequence that inserted the item; only the `list-ties-by-arrival` mutant sets it, so
    /// that it orders equal keys by arrival. Always 0 otherwise.
    pub inserted: u64,
}

/// A document as the room holds it. The data and lists are private so that the cached sizes cannot
/// drift from what they measure.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Document {
    pub doc_type: DocType,
    pub seq: u64,
    pub owner: UserId,
    data: Value,
    /// Persistent maps: cloning a document (every write works on a copy, which replaces the
    /// original only after the commit) shares the items instead of copying them, so a list op on
    /// a list of 10,000 items copies a path of the tree, not the list.
    lists: BTreeMap<FieldName, imbl::OrdMap<ItemId, Item>>,
    /// When soft-deleted: the room sequence and the time (ms) of the delete.
    pub deleted: Option<(u64, u64)>,
    data_bytes: u64,
    list_bytes: u64,
}

/// A stored document as a query reads it, borrowed: queries filter and order these and only the
/// documents of the result become snapshots.
pub(crate) struct Stored<'d> {
    pub id: &'d DocId,
    pub document: &'d Document,
}

impl roomlab_protocol::Record for Stored<'_> {
    fn id(&self) -> &DocId {
        self.id
    }

    fn doc_type(&self) -> &DocType {
        &self.document.doc_type
    }

    fn seq(&self) -> u64 {
        self.document.seq
    }

    fn owner(&self) -> &UserId {
        &self.document.owner
    }

    fn data(&self) -> &Value {
        &self.document.data
    }
}

impl Document {
    pub fn new(doc_type: DocType, seq: u64, owner: UserId, data: Value) -> Document {
        let data_bytes = canonical_len(&data);
        let lists = BTreeMap::new();
        Document { doc_type, seq, owner, data, lists, deleted: None, data_bytes, list_bytes: 0 }
    }

    pub fn data(&self) -> &Value {
        &self.data
    }

    pub fn set_data(&mut self, data: Value) {
        self.data_bytes = canonical_len(&data);
        self.data = data;
    }

    pub fn list(&self, list: &FieldName) -> Option<&imbl::OrdMap<ItemId, Item>> {
        self.lists.get(list)
    }

    pub fn list_item_count(&self, list: &FieldName) -> usize {
        self.lists.get(list).map_or(0, imbl::OrdMap::len)
    }

    /// Puts (inserts or replaces) an item.
    pub fn put_item(&mut self, list: &FieldName, item: ItemId, value: Item) {
        self.list_bytes += canonical_len(&value.value);
        let previous = self.lists.entry(list.clone()).or_default().insert(item, value);
        if let Some(previous) = previous {
            self.list_bytes -= canonical_len(&previous.value);
        }
    }

    /// Removes an item; an emptied list disappears.
    pub fn remove_item(&mut self, list: &FieldName, item: &ItemId) -> Option<Item> {
        let items = self.lists.get_mut(list)?;
        let removed = items.remove(item)?;
        if items.is_empty() {
            self.lists.remove(list);
        }
        self.list_bytes -= canonical_len(&removed.value);
        Some(removed)
    }

    /// The bytes this document occupies: its data plus its list values, in canonical JSON.
    pub fn bytes(&self) -> u64 {
        self.data_bytes + self.list_bytes
    }

    pub fn snapshot(&self, id: &DocId) -> DocSnapshot {
        let lists = self
            .lists
            .iter()
            .map(|(name, items)| {
                // ListItem::sort's (key, item id) order (list.order), taken on references so each
                // item is copied once; `inserted` is 0 unless a mutant plants arrival order.
                let mut sorted: Vec<(&ItemId, &Item)> = items.iter().collect();
                sorted.sort_by(|(a_id, a), (b_id, b)| {
                    (a.key.as_str(), a.inserted, a_id.as_str()).cmp(&(
                        b.key.as_str(),
                        b.inserted,
                        b_id.as_str(),
                    ))
                });
                let items = sorted
                    .into_iter()
                    .map(|(id, item)| ListItem {
                        id: id.clone(),
                        key: item.key.clone(),
                        value: item.value.clone(),
                    })
                    .collect();
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

/// A bucket: its contract, and either a JSON value or a set of assets, by its backend.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bucket {
    pub contract: Contract,
    pub version: u64,
    pub value: Value,
    /// Who last set the value, and so is charged for it.
    pub setter: Option<UserId>,
    pub assets: BTreeMap<ObjectKey, AssetInfo>,
}

impl Bucket {
    pub fn new(contract: Contract) -> Bucket {
        Bucket { contract, version: 0, value: Value::Null, setter: None, assets: BTreeMap::new() }
    }

    /// What the bucket costs, per user: the value to its setter, each asset to its uploader.
    pub fn charges(&self) -> impl Iterator<Item = (&UserId, u64)> {
        let value = self.setter.as_ref().map(|setter| (setter, canonical_len(&self.value)));
        value.into_iter().chain(self.assets.values().map(|asset| (&asset.uploaded_by, asset.size)))
    }
}

/// A user the room has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserRecord {
    /// The role an admin set in the room, overriding the token's.
    pub role: Option<Role>,
    /// The role of the user's latest token.
    pub token_role: Role,
    pub plan: Plan,
    pub addons: u32,
    /// Bytes charged to the user.
    pub usage: u64,
}

/// A team membership's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Membership {
    Pending,
    Active,
}

impl Membership {
    pub fn as_str(self) -> &'static str {
        match self {
            Membership::Pending => "pending",
            Membership::Active => "active",
        }
    }

    pub fn parse(text: &str) -> Option<Membership> {
        match text {
            "pending" => Some(Membership::Pending),
            "active" => Some(Membership::Active),
            _ => None,
        }
    }
}

/// A team and its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Team {
    pub name: String,
    pub members: BTreeMap<UserId, Membership>,
}

/// One staged write of a session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Staged {
    pub doc_type: DocType,
    /// The document's sequence when staged; 0 when it did not exist.
    pub base_seq: u64,
    pub data: Value,
}

/// A user's staged session.
pub(crate) type Session = BTreeMap<DocId, Staged>;

/// The quota limits of the plans (docs/PROTOCOL.md quota.plans); a server may configure smaller ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// The logical limit of the free plan, in bytes.
    pub free_bytes: u64,
    /// The base limit of the pro plan, in bytes.
    pub pro_bytes: u64,
    /// What each add-on adds to a pro plan, in bytes.
    pub addon_bytes: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas { free_bytes: 100_000_000, pro_bytes: 5_000_000_000, addon_bytes: 5_000_000_000 }
    }
}

impl Quotas {
    /// A user's limit in bytes.
    pub fn limit(&self, plan: Plan, addons: u32) -> u64 {
        match plan {
            Plan::Free => self.free_bytes,
            Plan::Pro => self.pro_bytes.saturating_add(self.addon_bytes.saturating_mul(u64::from(addons))),
        }
    }
}

/// The teams, by id, as `sys:teams` shows them.
pub(crate) type Teams = BTreeMap<TeamId, Team>;
