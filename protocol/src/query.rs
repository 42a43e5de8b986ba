//! Live queries: a collection, a `where` filter, an order and a limit, with the one evaluation that
//! the engine and the client share (the oracle evaluates queries on its own).

use crate::ids::{DocId, DocType, UserId};
use crate::message::DocSnapshot;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;

/// What a query reads of a document. [`DocSnapshot`] is one; a server implements it for the records
/// it holds, so that it can filter and order them without copying each into a snapshot first.
pub trait Record {
    /// The document id.
    fn id(&self) -> &DocId;
    /// The document type (collection).
    fn doc_type(&self) -> &DocType;
    /// The sequence of the document's last change.
    fn seq(&self) -> u64;
    /// The user who created it.
    fn owner(&self) -> &UserId;
    /// The JSON payload.
    fn data(&self) -> &Value;
}

impl Record for DocSnapshot {
    fn id(&self) -> &DocId {
        &self.id
    }

    fn doc_type(&self) -> &DocType {
        &self.doc_type
    }

    fn seq(&self) -> u64 {
        self.seq
    }

    fn owner(&self) -> &UserId {
        &self.owner
    }

    fn data(&self) -> &Value {
        &self.data
    }
}

/// Limits on the size of a query, so that evaluating one is bounded.
pub mod limits {
    /// Nodes in a `where` tree, at most.
    pub const WHERE_NODES_MAX: usize = 64;
    /// Depth of a `where` tree, at most.
    pub const WHERE_DEPTH_MAX: usize = 8;
    /// Values in one `in` list, at most.
    pub const IN_VALUES_MAX: usize = 100;
    /// Fields in `order_by`, at most.
    pub const ORDER_FIELDS_MAX: usize = 4;
    /// The largest `limit` a query may ask for.
    pub const LIMIT_MAX: u32 = 1000;
}

/// A comparison operator of a `where` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal (numbers compare by value: `1` equals `1.0`).
    Eq,
    /// Not equal.
    Ne,
    /// Less than; false when the two values are of different JSON types.
    Lt,
    /// Less than or equal; false across types.
    Lte,
    /// Greater than; false across types.
    Gt,
    /// Greater than or equal; false across types.
    Gte,
    /// Equal to one of the values of an array.
    In,
}

/// A field a query can test or order by: a top-level data field, or one of the document's own
/// attributes `$id`, `$seq`, `$owner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Field(pub String);

impl Field {
    /// The field's value in `doc`; a missing data field is `null`. Data fields are borrowed, so
    /// that ordering a result does not copy the values it compares.
    pub fn value_in<'r>(&self, doc: &'r impl Record) -> Cow<'r, Value> {
        const NULL: Value = Value::Null;
        match self.0.as_str() {
            "$id" => Cow::Owned(Value::String(doc.id().to_string())),
            "$seq" => Cow::Owned(Value::from(doc.seq())),
            "$owner" => Cow::Owned(Value::String(doc.owner().to_string())),
            name => Cow::Borrowed(doc.data().get(name).unwrap_or(&NULL)),
        }
    }
}

/// A `where` filter: a tree of conditions joined by `and` / `or`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Where {
    /// All of the filters hold.
    And {
        /// The filters.
        and: Vec<Where>,
    },
    /// At least one of the filters holds.
    Or {
        /// The filters.
        or: Vec<Where>,
    },
    /// One comparison of a field with a value.
    Condition {
        /// The field tested.
        field: Field,
        /// The operator.
        op: Op,
        /// The value compared with (an array for `in`).
        value: Value,
    },
}

/// The sort direction of an order field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Smallest first.
    #[default]
    Asc,
    /// Largest first.
    Desc,
}

/// One field of a query's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The field ordered by.
    pub field: Field,
    /// The direction; ascending when absent.
    #[serde(default, skip_serializing_if = "is_asc")]
    pub dir: Direction,
}

fn is_asc(direction: &Direction) -> bool {
    *direction == Direction::Asc
}

/// A live query over one collection (document type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// The collection: documents of this type.
    pub collection: DocType,
    /// The filter; every live document of the collection when absent.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<Where>,
    /// The order; documents with equal order values are ordered by id, always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order_by: Vec<Order>,
    /// At most this many documents, the first in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Why a query was refused (answered with the `invalid` or `limit_exceeded` error code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The `where` tree has more than [`limits::WHERE_NODES_MAX`] nodes.
    #[error("where has more than {} nodes", limits::WHERE_NODES_MAX)]
    TooManyNodes,
    /// The `where` tree is deeper than [`limits::WHERE_DEPTH_MAX`].
    #[error("where is deeper than {}", limits::WHERE_DEPTH_MAX)]
    TooDeep,
    /// An `in` condition's value is not an array of at most [`limits::IN_VALUES_MAX`] values.
    #[error("an `in` value must be an array of at most {} values", limits::IN_VALUES_MAX)]
    BadIn,
    /// `order_by` has more than [`limits::ORDER_FIELDS_MAX`] fields.
    #[error("order_by has more than {} fields", limits::ORDER_FIELDS_MAX)]
    TooManyOrderFields,
    /// `limit` is 0 or above [`limits::LIMIT_MAX`].
    #[error("limit must be between 1 and {}", limits::LIMIT_MAX)]
    BadLimit,
    /// A field name starts with `$` but is not `$id`, `$seq` or `$owner`.
    #[error("unknown attribute {0}")]
    UnknownAttribute(String),
}

impl Query {
    /// Checks the query against the limits; a server runs this before accepting a subscription.
    pub fn check(&self) -> Result<(), QueryError> {
        if let Some(filter) = &self.filter {
            let mut nodes = 0;
            filter.check(1, &mut nodes)?;
        }
        if self.order_by.len() > limits::ORDER_FIELDS_MAX {
            return Err(QueryError::TooManyOrderFields);
        }
        for order in &self.order_by {
            check_field(&order.field)?;
        }
        match self.limit {
            Some(limit) if limit == 0 || limit > limits::LIMIT_MAX => Err(QueryError::BadLimit),
            _ => Ok(()),
        }
    }

    /// Whether `doc` belongs to the collection and passes the filter (access is checked elsewhere).
    pub fn matches(&self, doc: &impl Record) -> bool {
        *doc.doc_type() == self.collection && self.filter.as_ref().is_none_or(|w| w.matches(doc))
    }

    /// The order of two documents in this query's result: the order fields, then the id.
    pub fn compare<R: Record>(&self, left: &R, right: &R) -> Ordering {
        for order in &self.order_by {
            let ordering = total_order(&order.field.value_in(left), &order.field.value_in(right));
            let ordering = match order.dir {
                Direction::Asc => ordering,
                Direction::Desc => ordering.reverse(),
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        left.id().cmp(right.id())
    }

    /// The query's answer over `docs`: the matching ones, ordered, cut at the limit.
    pub fn evaluate<'d, R: Record + 'd>(&self, docs: impl IntoIterator<Item = &'d R>) -> Vec<&'d R> {
        let mut result: Vec<&R> = docs.into_iter().filter(|d| self.matches(*d)).collect();
        result.sort_by(|a, b| self.compare(*a, *b));
        if let Some(limit) = self.limit {
            result.truncate(limit as usize);
        }
        result
    }
}

fn check_field(field: &Field) -> Result<(), QueryError> {
    match field.0.as_str() {
        "$id" | "$seq" | "$owner" => Ok(()),
        name if name.starts_with('$') => Err(QueryError::UnknownAttribute(name.into())),
        _ => Ok(()),
    }
}

impl Where {
    fn check(&self, depth: usize, nodes: &mut usize) -> Result<(), QueryError> {
        *nodes += 1;
        if *nodes > limits::WHERE_NODES_MAX {
            return Err(QueryError::TooManyNodes);
        }
        if depth > limits::WHERE_DEPTH_MAX {
            return Err(QueryError::TooDeep);
        }
        match self {
            Where::And { and: children } | Where::Or { or: children } => {
                children.iter().try_for_each(|child| child.check(depth + 1, nodes))
            }
            Where::Condition { field, op, value } => {
                check_field(field)?;
                match (op, value) {
                    (Op::In, Value::Array(values)) if values.len() <= limits::IN_VALUES_MAX => Ok(()),
                    (Op::In, _) => Err(QueryError::BadIn),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Whether `doc` passes this filter.
    pub fn matches(&self, doc: &impl Record) -> bool {
        match self {
            Where::And { and } => and.iter().all(|w| w.matches(doc)),
            Where::Or { or } => or.iter().any(|w| w.matches(doc)),
            Where::Condition { field, op, value } => compare(&field.value_in(doc), *op, value),
        }
    }
}

/// Applies `op` to a document's value (left) and the query's value (right).
pub fn compare(left: &Value, op: Op, right: &Value) -> bool {
    match op {
        Op::Eq => json_equal(left, right),
        Op::Ne => !json_equal(left, right),
        Op::In => right.as_array().is_some_and(|values| values.iter().any(|v| json_equal(left, v))),
        Op::Lt | Op::Lte | Op::Gt | Op::Gte => {
            if type_rank(left) != type_rank(right) || matches!(left, Value::Null) {
                return false;
            }
            let ordering = total_order(left, right);
            match op {
                Op::Lt => ordering == Ordering::Less,
                Op::Lte => ordering != Ordering::Greater,
                Op::Gt => ordering == Ordering::Greater,
                _ => ordering != Ordering::Less,
            }
        }
    }
}

/// JSON equality where numbers compare by value.
pub fn json_equal(left: &Value, right: &Value) -> bool {
    total_order(left, right) == Ordering::Equal
}

fn type_rank(value: &Value) -> u8 {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

/// A total order on JSON values: null < booleans < numbers < strings < arrays < objects; numbers by
/// value, strings by bytes, arrays and objects element by element.
pub fn total_order(left: &Value, right: &Value) -> Ordering {
    match (left, right) {
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Array(a), Value::Array(b)) => {
            for (x, y) in a.iter().zip(b) {
                let ordering = total_order(x, y);
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            a.len().cmp(&b.len())
        }
        (Value::Object(a), Value::Object(b)) => {
            // serde_json's map is a BTreeMap here (no preserve_order), so iteration is sorted.
            for ((ka, va), (kb, vb)) in a.iter().zip(b) {
                let ordering = ka.cmp(kb).then_with(|| total_order(va, vb));
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            a.len().cmp(&b.len())
        }
        _ => type_rank(left).cmp(&type_rank(right)),
    }
}

fn compare_numbers(a: &serde_json::Number, b: &serde_json::Number) -> Ordering {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x.cmp(&y);
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x.cmp(&y);
    }
    let x = a.as_f64().unwrap_or(f64::NAN);
    let y = b.as_f64().unwrap_or(f64::NAN);
    x.total_cmp(&y)
}
