//! Schemas and access (§14): what a schema document may hold, how it shapes and validates the data
//! of a write, and who may read or write what.

use crate::state::{Actor, Document, Refusal};
use crate::Oracle;
use roomlab_protocol::{DocId, DocType, ErrorCode, Role, UserId};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Who may read or write a collection (access.roles, access.owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// This role and those above it.
    Role(Role),
    /// Only the document's creator (access.owner).
    Owner,
}

/// A field's declared type (schema.shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Number,
    Boolean,
    Object,
    Array,
    Richtext,
    Any,
}

/// One declared field.
#[derive(Debug, Clone, PartialEq)]
struct FieldSpec {
    kind: Kind,
    required: bool,
    default: Option<Value>,
}

/// A parsed `sys:schema:<type>` document (schema.shape).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schema {
    /// `None` when the schema has no `fields`: any object is accepted (schema.fields).
    fields: Option<BTreeMap<String, FieldSpec>>,
    pub(crate) read: Level,
    pub(crate) write: Level,
    user_id: bool,
    created_at: bool,
    updated_at: bool,
}

/// How a write came about, for auto fields and defaults.
pub(crate) enum WriteKind<'a> {
    /// A create: defaults fill absent fields, auto fields are set for `creator`.
    Create { creator: &'a UserId },
    /// A put, patch or staged overwrite of a document whose data was `old`.
    Update { old: &'a Value },
}

const AUTO_USER_ID: &str = "userId";
const AUTO_CREATED_AT: &str = "createdAt";
const AUTO_UPDATED_AT: &str = "updatedAt";

impl Schema {
    /// Parses a schema document's data; the error names the top-level key at fault (schema.shape).
    pub(crate) fn parse(data: &Value) -> Result<Schema, (String, String)> {
        let Value::Object(members) = data else {
            return Err((String::new(), "a schema is a JSON object".into()));
        };
        let mut schema = Schema {
            fields: None,
            read: Level::Role(Role::Viewer),
            write: Level::Role(Role::Member),
            user_id: false,
            created_at: false,
            updated_at: false,
        };
        for (key, value) in members {
            let fault = |message: &str| (key.clone(), format!("schema {key}: {message}"));
            match key.as_str() {
                "fields" => schema.fields = Some(parse_fields(value).map_err(|m| fault(&m))?),
                "access" => parse_access(value, &mut schema).map_err(|m| fault(&m))?,
                "autoFields" => parse_auto_fields(value, &mut schema).map_err(|m| fault(&m))?,
                _ => return Err(fault("is not a schema key (fields, access, autoFields)")),
            }
        }
        Ok(schema)
    }

    /// Whether `field` is declared `richtext` (yjs.richtext-field).
    pub(crate) fn declares_richtext(&self, field: &str) -> bool {
        self.fields
            .as_ref()
            .and_then(|fields| fields.get(field))
            .is_some_and(|spec| spec.kind == Kind::Richtext)
    }

    /// Whether `name` is an auto field this schema sets (schema.auto-fields).
    fn is_auto(&self, name: &str) -> bool {
        (self.user_id && name == AUTO_USER_ID)
            || (self.created_at && name == AUTO_CREATED_AT)
            || (self.updated_at && name == AUTO_UPDATED_AT)
    }
}

fn parse_fields(value: &Value) -> Result<BTreeMap<String, FieldSpec>, String> {
    let Value::Object(members) = value else { return Err("must be an object".into()) };
    let mut fields = BTreeMap::new();
    for (name, spec) in members {
        let Value::Object(spec) = spec else { return Err(format!("{name} must be an object")) };
        let mut parsed = FieldSpec { kind: Kind::Any, required: false, default: None };
        let mut typed = false;
        for (key, value) in spec {
            match (key.as_str(), value) {
                ("type", Value::String(kind)) => {
                    parsed.kind = parse_kind(kind).ok_or(format!("{name} has an unknown type {kind}"))?;
                    typed = true;
                }
                ("required", Value::Bool(required)) => parsed.required = *required,
                ("default", default) => parsed.default = Some(default.clone()),
                _ => return Err(format!("{name}.{key} is not a field property (type, required, default)")),
            }
        }
        if !typed {
            return Err(format!("{name} has no type"));
        }
        fields.insert(name.clone(), parsed);
    }
    Ok(fields)
}

fn parse_kind(kind: &str) -> Option<Kind> {
    Some(match kind {
        "string" => Kind::String,
        "number" => Kind::Number,
        "boolean" => Kind::Boolean,
        "object" => Kind::Object,
        "array" => Kind::Array,
        "richtext" => Kind::Richtext,
        "any" => Kind::Any,
        _ => return None,
    })
}

fn parse_access(value: &Value, schema: &mut Schema) -> Result<(), String> {
    let Value::Object(members) = value else { return Err("must be an object".into()) };
    for (key, value) in members {
        let level = match value.as_str() {
            Some("viewer") => Level::Role(Role::Viewer),
            Some("member") => Level::Role(Role::Member),
            Some("admin") => Level::Role(Role::Admin),
            Some("owner") => Level::Owner,
            _ => return Err(format!("{key} must be viewer, member, admin or owner")),
        };
        match key.as_str() {
            "read" => schema.read = level,
            "write" => schema.write = level,
            _ => return Err(format!("{key} is not read or write")),
        }
    }
    Ok(())
}

fn parse_auto_fields(value: &Value, schema: &mut Schema) -> Result<(), String> {
    let Value::Object(members) = value else { return Err("must be an object".into()) };
    for (key, value) in members {
        let Value::Bool(enabled) = value else { return Err(format!("{key} must be a boolean")) };
        match key.as_str() {
            AUTO_USER_ID => schema.user_id = *enabled,
            AUTO_CREATED_AT => schema.created_at = *enabled,
            AUTO_UPDATED_AT => schema.updated_at = *enabled,
            _ => return Err(format!("{key} is not userId, createdAt or updatedAt")),
        }
    }
    Ok(())
}

/// The data a write stores: defaults (schema.default), auto fields (schema.auto-fields) and
/// rich-text references (yjs.richtext-field) applied, then validated (schema.fields). The error
/// names the field at fault.
pub(crate) fn shape_data(
    schema: Option<&Schema>,
    kind: WriteKind<'_>,
    mut data: Map<String, Value>,
    now_ms: u64,
) -> Result<Value, (String, String)> {
    let Some(schema) = schema else { return Ok(Value::Object(data)) };
    if let (WriteKind::Create { .. }, Some(fields)) = (&kind, &schema.fields) {
        for (name, spec) in fields {
            if let (None, Some(default)) = (data.get(name), &spec.default) {
                data.insert(name.clone(), default.clone());
            }
        }
    }
    set_auto_fields(schema, &kind, &mut data, now_ms);
    if let Some(fields) = &schema.fields {
        for (name, spec) in fields {
            if spec.kind == Kind::Richtext {
                data.insert(name.clone(), json!({ "yjs": name }));
            }
        }
    }
    validate(schema, &data)?;
    Ok(Value::Object(data))
}

/// schema.auto-fields: the server's values replace the client's.
fn set_auto_fields(schema: &Schema, kind: &WriteKind<'_>, data: &mut Map<String, Value>, now_ms: u64) {
    let kept = |name: &str| match kind {
        WriteKind::Create { .. } => None,
        WriteKind::Update { old } => old.get(name).cloned(),
    };
    if schema.user_id {
        let value = match kind {
            WriteKind::Create { creator } => Some(Value::String(creator.to_string())),
            WriteKind::Update { .. } => kept(AUTO_USER_ID),
        };
        set_or_remove(data, AUTO_USER_ID, value);
    }
    if schema.created_at {
        let value = match kind {
            WriteKind::Create { .. } => Some(Value::from(now_ms)),
            WriteKind::Update { .. } => kept(AUTO_CREATED_AT),
        };
        set_or_remove(data, AUTO_CREATED_AT, value);
    }
    if schema.updated_at {
        data.insert(AUTO_UPDATED_AT.into(), Value::from(now_ms));
    }
}

fn set_or_remove(data: &mut Map<String, Value>, name: &str, value: Option<Value>) {
    match value {
        Some(value) => data.insert(name.into(), value),
        None => data.remove(name),
    };
}

/// schema.fields: required fields present and non-null, present fields of their type, no field
/// outside `fields` but the enabled auto fields. The first fault in name byte order is reported.
fn validate(schema: &Schema, data: &Map<String, Value>) -> Result<(), (String, String)> {
    let Some(fields) = &schema.fields else { return Ok(()) };
    let names: BTreeSet<&String> = fields.keys().chain(data.keys()).collect();
    for name in names {
        let value = data.get(name.as_str()).filter(|value| !value.is_null());
        let fault = |message: String| Err((name.to_string(), message));
        match (fields.get(name.as_str()), value) {
            (None, _) if schema.is_auto(name) => {}
            (None, _) => return fault(format!("{name} is not a field of the schema")),
            (Some(spec), None) if spec.required => return fault(format!("{name} is required")),
            (Some(_), None) => {}
            (Some(spec), Some(value)) if !has_kind(spec.kind, value) => {
                return fault(format!("{name} must be of type {:?}", spec.kind).to_lowercase())
            }
            (Some(_), Some(_)) => {}
        }
    }
    Ok(())
}

fn has_kind(kind: Kind, value: &Value) -> bool {
    match kind {
        Kind::String => value.is_string(),
        Kind::Number => value.is_number(),
        Kind::Boolean => value.is_boolean(),
        Kind::Object => value.is_object(),
        Kind::Array => value.is_array(),
        // The server sets the reference itself (yjs.richtext-field), so it is always right.
        Kind::Richtext | Kind::Any => true,
    }
}

/// Whether `user` with `role` passes `level` for a document owned by `owner`.
fn passes(level: Level, user: &UserId, role: Role, owner: &UserId) -> bool {
    match level {
        Level::Role(needed) => role >= needed,
        Level::Owner => user == owner,
    }
}

impl Oracle {
    /// The read level of a type: its schema's, else viewer (access.roles).
    fn read_level(&self, doc_type: &DocType) -> Level {
        self.schemas.get(doc_type).map_or(Level::Role(Role::Viewer), |schema| schema.read)
    }

    /// The write level of a type: its schema's, else member (access.roles).
    fn write_level(&self, doc_type: &DocType) -> Level {
        self.schemas.get(doc_type).map_or(Level::Role(Role::Member), |schema| schema.write)
    }

    /// Whether `viewer` may read a stored document (access.roles, access.owner); schema documents
    /// are readable by every role.
    pub(crate) fn can_read(&self, viewer: &Actor, id: &DocId, doc: &Document) -> bool {
        crate::views::system_id(id).is_some()
            || passes(self.read_level(&doc.doc_type), &viewer.user, viewer.role, &doc.owner)
    }

    /// Refuses a write to a stored user document `actor` may not make (access.viewer-read-only,
    /// access.owner, access.roles).
    pub(crate) fn check_write(&self, actor: &Actor, doc: &Document) -> Result<(), Refusal> {
        let level = self.write_level(&doc.doc_type);
        if actor.role == Role::Viewer {
            return Err(viewer_refusal());
        }
        if !passes(level, &actor.user, actor.role, &doc.owner) {
            return Err(level_refusal(level, &doc.doc_type));
        }
        Ok(())
    }

    /// Refuses creating a document of `doc_type` that `actor` may not create: an owner-write
    /// collection needs at least member (access.owner).
    pub(crate) fn check_create(&self, actor: &Actor, doc_type: &DocType) -> Result<(), Refusal> {
        let level = match self.write_level(doc_type) {
            Level::Owner => Level::Role(Role::Member),
            level => level,
        };
        if actor.role == Role::Viewer {
            return Err(viewer_refusal());
        }
        if !passes(level, &actor.user, actor.role, &actor.user) {
            return Err(level_refusal(level, doc_type));
        }
        Ok(())
    }

    /// Refuses a schema write by anyone but an admin (schema.admin-only).
    pub(crate) fn check_admin(actor: &Actor, rule: &'static str, what: &str) -> Result<(), Refusal> {
        if actor.role == Role::Admin {
            return Ok(());
        }
        Err(Refusal::new(rule, ErrorCode::Forbidden, format!("only admins may {what}")))
    }
}

fn viewer_refusal() -> Refusal {
    Refusal::new("access.viewer-read-only", ErrorCode::Forbidden, "a viewer can view but not modify")
}

fn level_refusal(level: Level, doc_type: &DocType) -> Refusal {
    match level {
        Level::Owner => Refusal::new(
            "access.owner",
            ErrorCode::Forbidden,
            format!("only the owner may write this {doc_type}"),
        ),
        Level::Role(role) => Refusal::new(
            "access.roles",
            ErrorCode::Forbidden,
            format!("writing {doc_type} needs the {role:?} role").to_lowercase(),
        ),
    }
}
