//! Who watches what: an index from the things a change can touch to the subscriptions that may care,
//! so that a write costs in proportion to the subscriptions it can affect, not to all of them.

use crate::room::{ConnId, Subscription};
use crate::state::Document;
use roomlab_protocol::query::{Op, Where};
use roomlab_protocol::{BucketName, DocId, DocType, Query, SubId, UserId};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Something a change can touch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum WatchKey {
    /// A stored document, by id.
    Doc(DocId),
    /// A synthesized system document shared by everyone (`sys:index`, `sys:users`, ...).
    System(DocId),
    /// A user's staged session (`sys:session`, `sys:stage:<docId>`).
    Session(UserId),
    Bucket(BucketName),
    /// Queries over a collection that the index cannot narrow.
    Scan(DocType),
    /// Queries over a collection requiring `field` to equal a value, by the value's JSON text.
    Eq(DocType, String, String),
}

/// The index.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    by_key: BTreeMap<WatchKey, BTreeSet<(ConnId, SubId)>>,
    /// The fields that `Eq` keys use, per collection, with how many subscriptions use each.
    eq_fields: BTreeMap<DocType, BTreeMap<String, usize>>,
}

/// The JSON text that keys a value; only scalars that compare by their text are indexed on the query
/// side (numbers compare by value, so `1` and `1.0` would differ as text).
fn value_key(value: &Value) -> String {
    value.to_string()
}

/// A top-level `field eq scalar` condition of a query (alone or inside its top-level `and`).
fn eq_condition(query: &Query) -> Option<(String, String)> {
    let indexable = |filter: &Where| match filter {
        Where::Condition { field, op: Op::Eq, value }
            if !field.0.starts_with('$')
                && matches!(value, Value::String(_) | Value::Bool(_) | Value::Null) =>
        {
            Some((field.0.clone(), value_key(value)))
        }
        _ => None,
    };
    match query.filter.as_ref()? {
        Where::And { and } => and.iter().find_map(indexable),
        other => indexable(other),
    }
}

impl Watchers {
    /// The key a subscription of `user` is filed under.
    pub fn key(subscription: &Subscription, user: &UserId) -> WatchKey {
        match subscription {
            Subscription::Query { query, .. } => match eq_condition(query) {
                Some((field, value)) => WatchKey::Eq(query.collection.clone(), field, value),
                None => WatchKey::Scan(query.collection.clone()),
            },
            Subscription::Doc { doc, .. } if doc.as_str() == "sys:session" => WatchKey::Session(user.clone()),
            Subscription::Doc { doc, .. } if doc.as_str().starts_with(DocId::STAGE_PREFIX) => {
                WatchKey::Session(user.clone())
            }
            Subscription::Doc { doc, .. } if doc.is_system() && doc.schema_for().is_none() => {
                WatchKey::System(doc.clone())
            }
            Subscription::Doc { doc, .. } => WatchKey::Doc(doc.clone()),
            Subscription::Bucket { name, .. } => WatchKey::Bucket(name.clone()),
        }
    }

    pub fn insert(&mut self, key: WatchKey, conn: ConnId, sub: SubId) {
        if let WatchKey::Eq(doc_type, field, _) = &key {
            *self.eq_fields.entry(doc_type.clone()).or_default().entry(field.clone()).or_default() += 1;
        }
        self.by_key.entry(key).or_default().insert((conn, sub));
    }

    pub fn remove(&mut self, key: &WatchKey, conn: ConnId, sub: &SubId) {
        if let Some(watchers) = self.by_key.get_mut(key) {
            watchers.remove(&(conn, sub.clone()));
            if watchers.is_empty() {
                self.by_key.remove(key);
            }
        }
        if let WatchKey::Eq(doc_type, field, _) = key {
            let fields = self.eq_fields.get_mut(doc_type).expect("indexed");
            let count = fields.get_mut(field).expect("indexed");
            *count -= 1;
            if *count == 0 {
                fields.remove(field);
                if fields.is_empty() {
                    self.eq_fields.remove(doc_type);
                }
            }
        }
    }

    /// The keys a document's version touches: itself, its collection's unindexed queries, and the
    /// indexed queries its field values can satisfy.
    pub fn doc_keys(&self, id: &DocId, document: &Document, keys: &mut BTreeSet<WatchKey>) {
        keys.insert(WatchKey::Doc(id.clone()));
        keys.insert(WatchKey::Scan(document.doc_type.clone()));
        for field in self.eq_fields.get(&document.doc_type).into_iter().flat_map(BTreeMap::keys) {
            let value = document.data().get(field).unwrap_or(&Value::Null);
            keys.insert(WatchKey::Eq(document.doc_type.clone(), field.clone(), value_key(value)));
        }
    }

    /// The subscriptions filed under any of `keys`, in (connection, subscription) order.
    pub fn watching(&self, keys: &BTreeSet<WatchKey>) -> BTreeSet<(ConnId, SubId)> {
        keys.iter().filter_map(|key| self.by_key.get(key)).flatten().cloned().collect()
    }
}
