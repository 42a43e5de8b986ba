//! Query subscriptions (§8): which queries are refused, which documents a query holds, and in which
//! order.

use crate::json::{order_values, same_value, type_rank};
use crate::state::{Actor, Document, Refusal};
use crate::views::system_id;
use crate::Oracle;
use roomlab_protocol::{Direction, DocId, ErrorCode, Op, Query, Where};
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;

/// §20: `where` nodes, depth, `in` values, order fields, and the range of `limit`.
const WHERE_NODES_MAX: usize = 64;
const WHERE_DEPTH_MAX: usize = 8;
const IN_VALUES_MAX: usize = 100;
const ORDER_FIELDS_MAX: usize = 4;
const LIMIT_MAX: u32 = 1000;

/// query.refused: a query over the limits of §20, or naming an unknown `$` attribute, is
/// `invalid`.
pub(crate) fn refuse_query(query: &Query) -> Result<(), Refusal> {
    let refuse = |message: String| Err(Refusal::new("query.refused", ErrorCode::Invalid, message));
    if let Some(filter) = &query.filter {
        let mut nodes = 0;
        if let Err(message) = check_where(filter, 1, &mut nodes) {
            return refuse(message);
        }
    }
    if query.order_by.len() > ORDER_FIELDS_MAX {
        return refuse(format!("order_by has more than {ORDER_FIELDS_MAX} fields"));
    }
    for order in &query.order_by {
        if let Err(message) = check_attribute(&order.field.0) {
            return refuse(message);
        }
    }
    match query.limit {
        Some(limit) if limit == 0 || limit > LIMIT_MAX => refuse(format!("limit must be 1 to {LIMIT_MAX}")),
        _ => Ok(()),
    }
}

/// Counts the nodes of a `where` tree and checks its depth (the root is at depth 1) and its
/// conditions.
fn check_where(filter: &Where, depth: usize, nodes: &mut usize) -> Result<(), String> {
    *nodes += 1;
    if *nodes > WHERE_NODES_MAX {
        return Err(format!("where has more than {WHERE_NODES_MAX} nodes"));
    }
    if depth > WHERE_DEPTH_MAX {
        return Err(format!("where is deeper than {WHERE_DEPTH_MAX}"));
    }
    match filter {
        Where::And { and: children } | Where::Or { or: children } => {
            children.iter().try_for_each(|child| check_where(child, depth + 1, nodes))
        }
        Where::Condition { field, op, value } => {
            check_attribute(&field.0)?;
            match (op, value) {
                (Op::In, Value::Array(values)) if values.len() <= IN_VALUES_MAX => Ok(()),
                (Op::In, _) => {
                    Err(format!("an `in` value must be an array of at most {IN_VALUES_MAX} values"))
                }
                _ => Ok(()),
            }
        }
    }
}

fn check_attribute(name: &str) -> Result<(), String> {
    match name {
        "$id" | "$seq" | "$owner" => Ok(()),
        _ if name.starts_with('$') => Err(format!("unknown attribute {name}")),
        _ => Ok(()),
    }
}

/// A field's value in a document: `$id`, `$seq`, `$owner`, or a top-level data field (`null` when
/// missing). Data fields are borrowed: sorting a result compares them many times.
fn field_of<'d>(name: &str, id: &DocId, doc: &'d Document) -> Cow<'d, Value> {
    const NULL: Value = Value::Null;
    match name {
        "$id" => Cow::Owned(Value::String(id.to_string())),
        "$seq" => Cow::Owned(Value::from(doc.seq)),
        "$owner" => Cow::Owned(Value::String(doc.owner.to_string())),
        _ => Cow::Borrowed(doc.data.get(name).unwrap_or(&NULL)),
    }
}

/// Whether a document passes a `where` tree.
fn passes(filter: &Where, id: &DocId, doc: &Document) -> bool {
    match filter {
        Where::And { and } => and.iter().all(|child| passes(child, id, doc)),
        Where::Or { or } => or.iter().any(|child| passes(child, id, doc)),
        Where::Condition { field, op, value } => condition_holds(&field_of(&field.0, id, doc), *op, value),
    }
}

/// One condition (§8): `eq`/`ne`/`in` by JSON equality, the orderings only between values of one
/// JSON type and never on a `null` field.
fn condition_holds(left: &Value, op: Op, right: &Value) -> bool {
    match op {
        Op::Eq => same_value(left, right),
        Op::Ne => !same_value(left, right),
        Op::In => right.as_array().is_some_and(|values| values.iter().any(|value| same_value(left, value))),
        Op::Lt | Op::Lte | Op::Gt | Op::Gte => {
            if left.is_null() || type_rank(left) != type_rank(right) {
                return false;
            }
            let ordering = order_values(left, right);
            match op {
                Op::Lt => ordering == Ordering::Less,
                Op::Lte => ordering != Ordering::Greater,
                Op::Gt => ordering == Ordering::Greater,
                _ => ordering != Ordering::Less,
            }
        }
    }
}

/// The order of two documents in a query's result: the order fields, ties by id ascending.
pub(crate) fn query_order(query: &Query, left: (&DocId, &Document), right: (&DocId, &Document)) -> Ordering {
    for order in &query.order_by {
        let ordering = order_values(
            &field_of(&order.field.0, left.0, left.1),
            &field_of(&order.field.0, right.0, right.1),
        );
        let ordering = match order.dir {
            Direction::Asc => ordering,
            Direction::Desc => ordering.reverse(),
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    left.0.as_str().as_bytes().cmp(right.0.as_str().as_bytes())
}

impl Oracle {
    /// Whether a stored document belongs to a query's result, before the limit: a live user
    /// document of the collection (query.user-documents) the viewer may read (query.read-access)
    /// that passes the filter.
    pub(crate) fn in_query(&self, viewer: &Actor, query: &Query, id: &DocId, doc: &Document) -> bool {
        doc.is_live()
            && system_id(id).is_none()
            && doc.doc_type == query.collection
            && self.can_read(viewer, id, doc)
            && query.filter.as_ref().is_none_or(|filter| passes(filter, id, doc))
    }

    /// A query's result now (query.initial): matching documents in query order, cut at the limit.
    pub(crate) fn query_result(&self, viewer: &Actor, query: &Query) -> Vec<(&DocId, &Document)> {
        let mut result: Vec<(&DocId, &Document)> =
            self.docs.iter().filter(|(id, doc)| self.in_query(viewer, query, id, doc)).collect();
        result.sort_by(|left, right| query_order(query, *left, *right));
        if let Some(limit) = query.limit {
            result.truncate(limit as usize);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn orderings_are_false_across_types_and_on_null() {
        assert!(condition_holds(&json!(1), Op::Lt, &json!(2)));
        assert!(!condition_holds(&json!(1), Op::Lt, &json!("2")));
        assert!(!condition_holds(&Value::Null, Op::Lte, &Value::Null));
        assert!(condition_holds(&Value::Null, Op::Eq, &Value::Null));
        assert!(condition_holds(&json!(2.0), Op::In, &json!([1, 2])));
        assert!(condition_holds(&Value::Null, Op::Ne, &json!("x")));
    }

    #[test]
    fn limits_of_section_20_refuse_queries() {
        let query = |value: Value| serde_json::from_value::<Query>(value).unwrap();
        assert!(refuse_query(&query(json!({"collection": "t", "limit": 1000}))).is_ok());
        assert!(refuse_query(&query(json!({"collection": "t", "limit": 0}))).is_err());
        assert!(refuse_query(&query(json!({"collection": "t", "limit": 1001}))).is_err());
        let deep =
            (0..7).fold(json!({"field": "a", "op": "eq", "value": 1}), |inner, _| json!({"and": [inner]}));
        assert!(refuse_query(&query(json!({"collection": "t", "where": deep.clone()}))).is_ok());
        assert!(refuse_query(&query(json!({"collection": "t", "where": {"or": [deep]}}))).is_err());
        assert!(refuse_query(&query(json!({"collection": "t", "order_by": [{"field": "$x"}]}))).is_err());
        let values: Vec<u32> = (0..101).collect();
        assert!(refuse_query(&query(
            json!({"collection": "t", "where": {"field": "a", "op": "in", "value": values}})
        ))
        .is_err());
        assert!(refuse_query(&query(
            json!({"collection": "t", "where": {"field": "a", "op": "in", "value": 3}})
        ))
        .is_err());
    }
}
