//! Schemas (`sys:schema:<type>` documents) and access rules (docs/PROTOCOL.md §14).

use roomlab_protocol::{ErrorBody, ErrorCode, Role, UserId};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Who may read or write a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Access {
    Viewer,
    Member,
    Admin,
    /// Only the document's creator, whatever their role.
    Owner,
}

impl Access {
    fn role(self) -> Option<Role> {
        match self {
            Access::Viewer => Some(Role::Viewer),
            Access::Member => Some(Role::Member),
            Access::Admin => Some(Role::Admin),
            Access::Owner => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FieldKind {
    String,
    Number,
    Boolean,
    Object,
    Array,
    Richtext,
    Any,
}

impl FieldKind {
    fn name(self) -> &'static str {
        match self {
            FieldKind::String => "string",
            FieldKind::Number => "number",
            FieldKind::Boolean => "boolean",
            FieldKind::Object => "object",
            FieldKind::Array => "array",
            FieldKind::Richtext => "richtext reference",
            FieldKind::Any => "value",
        }
    }

    fn admits(self, value: &Value) -> bool {
        match self {
            FieldKind::String => value.is_string(),
            FieldKind::Number => value.is_number(),
            FieldKind::Boolean => value.is_boolean(),
            FieldKind::Object => value.is_object(),
            FieldKind::Array => value.is_array(),
            FieldKind::Richtext => value.get("yjs").is_some_and(Value::is_string),
            FieldKind::Any => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FieldSpec {
    #[serde(rename = "type")]
    kind: FieldKind,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    default: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessSpec {
    #[serde(default = "viewer")]
    read: Access,
    #[serde(default = "member")]
    write: Access,
}

fn viewer() -> Access {
    Access::Viewer
}

fn member() -> Access {
    Access::Member
}

impl Default for AccessSpec {
    fn default() -> Self {
        AccessSpec { read: Access::Viewer, write: Access::Member }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoFields {
    #[serde(default, rename = "userId")]
    user_id: bool,
    #[serde(default, rename = "createdAt")]
    created_at: bool,
    #[serde(default, rename = "updatedAt")]
    updated_at: bool,
}

/// A parsed schema. A collection without one is read by viewers, written by members, any shape.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Schema {
    #[serde(default)]
    fields: Option<BTreeMap<String, FieldSpec>>,
    #[serde(default)]
    access: AccessSpec,
    #[serde(default, rename = "autoFields")]
    auto_fields: AutoFields,
}

fn invalid(field: &str, message: String) -> Box<ErrorBody> {
    Box::new(ErrorBody { field: Some(field.to_string()), ..ErrorBody::new(ErrorCode::Invalid, message) })
}

impl Schema {
    /// Parses a schema document's data (docs/PROTOCOL.md schema.shape).
    pub fn parse(data: &Value) -> Result<Schema, Box<ErrorBody>> {
        let schema: Schema = serde_json::from_value(data.clone())
            .map_err(|e| Box::new(ErrorBody::new(ErrorCode::Invalid, format!("not a schema: {e}"))))?;
        for (name, spec) in schema.fields.iter().flatten() {
            if let Some(default) = &spec.default {
                if !spec.kind.admits(default) || spec.kind == FieldKind::Richtext {
                    return Err(invalid(
                        name,
                        format!("the default of {name} is not a {}", spec.kind.name()),
                    ));
                }
            }
        }
        Ok(schema)
    }

    /// Whether a reader with `role` (effective) who is or is not the owner may read.
    pub fn can_read(&self, role: Role, is_owner: bool) -> bool {
        admits(self.access.read, role, is_owner)
    }

    /// Whether reading depends on who owns the document (owner-read collections), not on the role alone.
    pub fn reads_by_owner(&self) -> bool {
        self.access.read.role().is_none()
    }

    /// Whether a writer may write an existing document (`is_owner` known) or create one (`None`).
    /// A viewer never writes; creating in an owner-write collection needs member.
    pub fn can_write(&self, role: Role, is_owner: Option<bool>) -> bool {
        if role < Role::Member {
            return false;
        }
        match is_owner {
            None => self.access.write.role().is_none_or(|needed| role >= needed),
            Some(is_owner) => admits(self.access.write, role, is_owner),
        }
    }

    /// The rich-text fields, which hold references to Yjs documents.
    pub fn is_richtext(&self, field: &str) -> bool {
        self.fields.as_ref().and_then(|f| f.get(field)).is_some_and(|spec| spec.kind == FieldKind::Richtext)
    }

    /// Whether the schema declares fields at all (without, any field may hold Yjs text).
    pub fn declares_fields(&self) -> bool {
        self.fields.is_some()
    }

    /// Completes `data` for a write (defaults on create, auto fields, rich-text references) and checks
    /// it (docs/PROTOCOL.md schema.fields, schema.default, schema.auto-fields, yjs.richtext-field).
    /// `old` is the data before the write, `None` on create.
    pub fn prepare(
        &self,
        data: &mut Map<String, Value>,
        old: Option<&Value>,
        writer: &UserId,
        now_ms: u64,
    ) -> Result<(), Box<ErrorBody>> {
        if let (Some(fields), None) = (&self.fields, old) {
            for (name, spec) in fields {
                if let (Some(default), false) = (&spec.default, data.contains_key(name)) {
                    data.insert(name.clone(), default.clone());
                }
            }
        }
        self.set_auto_fields(data, old, writer, now_ms);
        let Some(fields) = &self.fields else {
            return Ok(());
        };
        for (name, spec) in fields {
            if spec.kind == FieldKind::Richtext {
                data.insert(name.clone(), json!({ "yjs": name }));
            }
        }
        for (name, value) in data.iter() {
            if self.is_auto_field(name) {
                continue;
            }
            let Some(spec) = fields.get(name) else {
                return Err(invalid(name, format!("{name} is not a field of this collection")));
            };
            if !(value.is_null() || spec.kind.admits(value)) {
                return Err(invalid(name, format!("{name} must be a {}", spec.kind.name())));
            }
        }
        for (name, _) in fields.iter().filter(|(_, spec)| spec.required) {
            if data.get(name).is_none_or(Value::is_null) {
                return Err(invalid(name, format!("{name} is required")));
            }
        }
        Ok(())
    }

    fn is_auto_field(&self, name: &str) -> bool {
        let auto = self.auto_fields;
        (auto.user_id && name == "userId")
            || (auto.created_at && name == "createdAt")
            || (auto.updated_at && name == "updatedAt")
    }

    fn set_auto_fields(
        &self,
        data: &mut Map<String, Value>,
        old: Option<&Value>,
        writer: &UserId,
        now_ms: u64,
    ) {
        let auto = self.auto_fields;
        // On update the creation fields keep their stored values, whatever the client sent.
        let mut keep = |name: &str, fresh: Value| match old {
            None => {
                data.insert(name.to_string(), fresh);
            }
            Some(old) => match old.get(name) {
                Some(value) => {
                    data.insert(name.to_string(), value.clone());
                }
                None => {
                    data.remove(name);
                }
            },
        };
        if auto.user_id {
            keep("userId", json!(writer));
        }
        if auto.created_at {
            keep("createdAt", json!(now_ms));
        }
        if auto.updated_at {
            data.insert("updatedAt".into(), json!(now_ms));
        }
    }
}

fn admits(access: Access, role: Role, is_owner: bool) -> bool {
    match access.role() {
        Some(needed) => role >= needed,
        None => is_owner,
    }
}
