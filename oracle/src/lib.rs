//! The executable specification of the roomlab protocol, written from docs/PROTOCOL.md alone.
//!
//! The oracle is a room as the spec describes it: fed a room's inputs in the order the room
//! claims to have taken them, it says what every connection must receive ([`Output`]). It shares
//! no logic with what it judges: from `roomlab-protocol` it takes types, constructors and serde,
//! never an evaluation (clippy.toml and tests/independence.rs enforce that), and every rule is
//! re-implemented here plainly, labelled with its rule id.
//!
//! Where the spec leaves a choice open, the oracle makes the plainest one and lists it in
//! [`SILENT_CHOICES`]; the order of several pushes to one connection is described in
//! [`ORDER_NOTE`].

#![warn(missing_docs)]

mod access;
mod buckets;
mod connection;
mod coverage;
mod documents;
mod json;
mod query;
mod rules;
mod staging;
mod state;
mod teams;
mod views;
mod yjs;
mod yjs_walk;

use roomlab_protocol::{
    BucketName, ClientId, ClientMessage, DocId, DocType, FieldName, Limits, Mutation, Plan, Role, RoomId,
    ServerMessage, SubId, Target, TeamId, UserId, YjsFrame,
};
use std::collections::BTreeMap;

use access::Schema;
use state::{Bucket, Connection, Document, ReplayWindow, Staged, Team, UserRecord};
use yjs::YjsField;

pub use rules::{spec_rules, Rule};

/// A connection, as the host numbers it.
pub type Conn = u64;

/// Who is on a connection (the host verified the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's subject.
    pub user: UserId,
    /// The token's role (an admin's `user_set_role` outranks it, access.effective-role).
    pub role: Role,
    /// The token's plan (quota.plans).
    pub plan: Plan,
    /// The token's add-on count (quota.plans).
    pub addons: u32,
}

/// Quota limits of the plans, in bytes (servers may be configured smaller; §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// The free plan's logical limit.
    pub free_bytes: u64,
    /// The pro plan's base limit.
    pub pro_bytes: u64,
    /// What each add-on adds to a pro plan.
    pub addon_bytes: u64,
}

impl Default for PlanLimits {
    /// The limits of quota.plans: 10^8 free, 5·10^9 pro, 5·10^9 per add-on.
    fn default() -> Self {
        PlanLimits { free_bytes: 100_000_000, pro_bytes: 5_000_000_000, addon_bytes: 5_000_000_000 }
    }
}

/// How the judged room is configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The room's id, announced in `welcome`.
    pub room: RoomId,
    /// The room's limits, announced in `welcome` (limits.announced) and enforced.
    pub limits: Limits,
    /// The plans' quota limits.
    pub plans: PlanLimits,
}

/// What the room must do, as the spec says. `rule` is the id of the rule that decided it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A text message to a connection.
    Send {
        /// The connection.
        conn: Conn,
        /// The message.
        message: ServerMessage,
        /// The rule that decided it.
        rule: &'static str,
    },
    /// A Yjs binary frame to a connection.
    Yjs {
        /// The connection.
        conn: Conn,
        /// The frame.
        frame: YjsFrame,
        /// The rule that decided it.
        rule: &'static str,
    },
    /// The room closes a connection with this WebSocket close code.
    Close {
        /// The connection.
        conn: Conn,
        /// The close code (4002, 1011).
        code: u16,
        /// The rule that decided it.
        rule: &'static str,
    },
}

/// How the oracle orders what one input makes the room send, where the spec leaves it open.
pub const ORDER_NOTE: &str = "\
The answer to an input (ack, error, welcome, result, pong, ...) goes to its sender first; then come \
the pushes of the change it made, connection by connection in ascending connection id, and within \
one connection in ascending subscription id (byte order), one push per subscription at most. \
A query:diff lists `added` and `changed` in the order of the query's new result (for a query \
without a limit, the order of the query among the changed documents) and `removed` in id byte \
order. The answer to a Yjs sync step 1 is the step 2 first, then the room's own step 1. A relayed \
Yjs frame goes to the other connections with the field open in ascending connection id. After a \
mutation answered `internal`, the `error` comes before the close 1011.";

/// Where docs/PROTOCOL.md is silent, what the oracle decided: (rule id, choice).
pub const SILENT_CHOICES: &[(&str, &str)] = &[
    ("errors.typed", "Refusal precedence: protected (a sys: id) > the admin gate of admin-only ops (schema writes, teams, user_set_role) > existence and state of the target (not_found, deleted, exists, not_deleted, incompatible) > access to it (forbidden) > storage_disabled > guard (conflict) > data (invalid) > limits (limit_exceeded) > quota_exceeded. Access comes after existence because document access depends on the document's owner and type."),
    ("list.insert", "For list ops: document not_found/deleted > forbidden > item exists/not_found > list_items_max > doc_bytes_max > quota."),
    ("assets.delete", "asset_delete: bucket not_found/incompatible > forbidden > object not_found."),
    ("subs.limit", "subscribe: subscription_exists > subscription_limit > the target's own checks (invalid query, forbidden, not_found, incompatible)."),
    ("stage.commit.atomic", "Commit checks: conflict first (the first staged document in id order whose state moved, carrying `doc` and its current `seq`, 0 when missing); then per staged document in id order: forbidden > invalid > limit_exceeded; then quota per charged user (user id order) on the commit's totals, `used` before the commit. Only conflict carries `doc`. A staged document still counts as unmoved when it is live at its base seq, even if it was deleted and restored meanwhile."),
    ("stage.put", "stage_put: any sys: id > protected; deleted > forbidden > invalid (data not an object) > limit_exceeded (data over doc_bytes_max) > limit_exceeded (staged_docs_max). Re-staging a document replaces its data, type and base and takes no new slot. Schemas are checked at commit only. sys:session lists the doc_type given to stage_put."),
    ("stage.put", "A staging change pushes sys:session and sys:stage:<doc> to the user's subscriptions when their data changes, carrying the room's current sequence; other room changes do not push them."),
    ("docs.system-ids", "Schema documents are stored documents: their doc_type is the one given to create and their owner the admin who created them; they count toward that admin's quota and doc_bytes_max, are readable by every role, and list ops, stage_put and Yjs frames on them answer protected. Every other sys: id answers protected to every write."),
    ("schema.shape", "A schema document may hold only `fields`, `access`, `autoFields`; anything else, or a malformed part, is invalid with `field` naming the top-level key at fault. Defaults are not type-checked when the schema is written."),
    ("schema.fields", "Validation reports the first field at fault in byte order of the union of declared and present names. Only enabled auto fields are excepted from unknown-field refusals."),
    ("schema.auto-fields", "put/patch keep userId and createdAt from the stored data when present (client values are dropped either way); list ops do not touch auto fields. richtext fields are set to {\"yjs\":<field>} on create, put, patch and staged commits."),
    ("access.viewer-read-only", "A viewer writes nothing: not even their own user:<id> bucket or an owner-access document they own. team_accept is not a write: any role may accept."),
    ("access.effective-role", "A connection acts with the role an admin set for its user, else its own token's role; sys:users lists the role set by an admin, else the role of the user's latest token."),
    ("quota.plans", "A user's plan (quota limit and storage_disabled) is the one recorded from their latest connection's token; an HTTP request by a user the room has not recorded uses its own token's plan."),
    ("bucket.bind.contract", "bucket_bind needs write access (it may create). Its ack carries the JSON bucket's version, 0 for an asset bucket. subscribe/bucket_get/asset_list on a name never bound answer not_found; on a bucket of the other backend incompatible."),
    ("bucket.value", "A JSON bucket set to a value charges its setter the value's canonical bytes, `null` included (4 bytes); a bound bucket never set charges nobody."),
    ("assets.upload", "data_b64 must be standard padded base64 (no whitespace, zero trailing bits); otherwise invalid with field \"data_b64\"."),
    ("teams.invite-pending", "team_accept of a team the caller is already an active member of answers not_found (there is no invitation). Inviting needs no recorded user. Memberships are listed as {\"user\",\"status\"} with status \"pending\" or \"active\", by user id; teams by id."),
    ("sys.views.seq", "sys:index/sys:trash hold only documents the subscriber may read, but their seq is the room sequence of the last create/remove/restore/purge (trash: remove/restore/purge) of any user document; every such change pushes them to every subscriber. sys:trash entries are ordered by id and their `seq` is the document's own seq. Subscribing to an unknown sys: id answers doc:missing; sys:users and sys:teams are readable by every role."),
    ("docsub.read-access", "A watched document the subscriber can no longer read (or a deleted one they may not read) is shown as doc:missing; subscribing to a soft-deleted document one may not read answers forbidden. doc:deleted carries the delete's sequence, in first answers too."),
    ("list.order", "A list exists while it has items: removing the last item drops it from `lists`."),
    ("yjs.access", "Yjs checks: unparseable y-protocols message > bad_frame; sys: id > protected; not_found/deleted > forbidden (read) > invalid (not a richtext field; a schema without `fields` declares none) > bad_frame (undecodable update or state vector) > forbidden (write: any update, or a step 2 that would change the state). Errors carry `doc` and `field`."),
    ("yjs.broadcast", "Accepted step 2 and update frames are relayed unchanged (same payload) to the other connections with the field open, even when they change nothing; awareness frames pass the read checks and are relayed the same way (yjs.awareness adds what the room remembers of them). Only a sync step 1 opens a field. A Yjs frame before hello answers hello_required. A step 2 or update whose commit fails answers internal (with doc and field), then close 1011."),
    ("query.initial", "Values order (§8) beyond type ranks: numbers by value (integers exactly, otherwise as f64), strings by bytes, arrays element by element then by length, objects by their (key, value) pairs in key byte order then by size. The `where` root is at depth 1; every and/or/condition node counts. An `in` whose value is not an array is invalid."),
    ("quota.plans", "Another user charged by a write (a document's owner, a bucket's previous setter) is limited by their recorded plan; a user never recorded by pro without add-ons (the token defaults). A new token's plan or add-ons change no sequence: sys:users does not show them."),
    ("docs.purge", "Purging removes the document's Yjs state; connections that had a field of it open keep it open (only yjs_close or disconnect closes a field)."),
    ("docsub.list-diff", "A list op is a doc:diff only to a subscription that shows the document at the op's base seq; a list op that changes nothing (same key or value) still takes a sequence and sends `\"lists\":{}`."),
    ("mutation.replay.internal-not-remembered", "Replays (same answer or replay_expired) commit nothing, so a storage fault does not touch them; every other mutation whose commit fails answers internal."),
];

/// The room as the spec describes it, fed a room's inputs in order.
#[derive(Clone)] // the caller snapshots it to roll back a failed group commit
pub struct Oracle {
    settings: Settings,
    /// The room's sequence (seq.room-wide).
    seq: u64,
    /// Every stored document, user and schema documents alike, live or soft-deleted.
    docs: BTreeMap<DocId, Document>,
    /// The parsed schema of each type whose `sys:schema:<type>` exists.
    schemas: BTreeMap<DocType, Schema>,
    /// Users who have connected (users.recorded).
    users: BTreeMap<UserId, UserRecord>,
    teams: BTreeMap<TeamId, Team>,
    buckets: BTreeMap<BucketName, Bucket>,
    /// Staged sessions, per user (stage.put).
    sessions: BTreeMap<UserId, BTreeMap<DocId, Staged>>,
    /// Replay windows, per (user, client id) (mutation.replay.window).
    replay: BTreeMap<(UserId, ClientId), ReplayWindow>,
    yjs: BTreeMap<(DocId, FieldName), YjsField>,
    /// The sequences of the synthesized documents (sys.views.seq).
    index_seq: u64,
    trash_seq: u64,
    users_seq: u64,
    teams_seq: u64,
    connections: BTreeMap<Conn, Connection>,
    coverage: BTreeMap<&'static str, u64>,
}

impl Oracle {
    /// A fresh room: sequence 0, nothing stored, nobody connected.
    pub fn new(settings: Settings) -> Oracle {
        Oracle {
            settings,
            seq: 0,
            docs: BTreeMap::new(),
            schemas: BTreeMap::new(),
            users: BTreeMap::new(),
            teams: BTreeMap::new(),
            buckets: BTreeMap::new(),
            sessions: BTreeMap::new(),
            replay: BTreeMap::new(),
            yjs: BTreeMap::new(),
            index_seq: 0,
            trash_seq: 0,
            users_seq: 0,
            teams_seq: 0,
            connections: BTreeMap::new(),
            coverage: BTreeMap::new(),
        }
    }

    /// How the room is configured.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A connection opened with a verified token (users.recorded happens here: sys:users may change
    /// and be pushed).
    pub fn connect(&mut self, conn: Conn, identity: Identity, now_ms: u64) -> Vec<Output> {
        // Only first and last seen would use the time, and no message shows them.
        let _ = now_ms;
        let outputs = self.open_connection(conn, identity);
        self.counted(outputs)
    }

    /// A text message from a connection, in the room's order. `commit_fails`: the host's database
    /// refused this input's commit (storage fault): for a mutation that means `internal` (not
    /// remembered, nothing changed), then Close 1011, and the connection's later inputs are ignored
    /// (mutation.replay.internal-not-remembered).
    pub fn receive(
        &mut self,
        conn: Conn,
        message: ClientMessage,
        now_ms: u64,
        commit_fails: bool,
    ) -> Vec<Output> {
        let outputs = self.handle_message(conn, message, now_ms, commit_fails);
        self.counted(outputs)
    }

    /// A Yjs frame (main-socket envelope) from a connection.
    pub fn receive_yjs(
        &mut self,
        conn: Conn,
        frame: YjsFrame,
        now_ms: u64,
        commit_fails: bool,
    ) -> Vec<Output> {
        let outputs = self.handle_yjs(conn, frame, now_ms, commit_fails);
        self.counted(outputs)
    }

    /// An HTTP mutation (asset upload/delete: no mid, not remembered). Returns the answer (an
    /// `ack`-shaped ServerMessage::Ack with mid 0, or an Error) and the pushes.
    pub fn http_mutation(
        &mut self,
        identity: Identity,
        mutation: Mutation,
        now_ms: u64,
    ) -> (ServerMessage, Vec<Output>) {
        let (answer, outputs) = self.handle_http(identity, mutation, now_ms);
        (answer, self.counted(outputs))
    }

    /// The connection closed (either side); the outputs remove the awareness it announced
    /// (yjs.awareness).
    pub fn disconnect(&mut self, conn: Conn) -> Vec<Output> {
        let outputs = self.remove_all_awareness(conn);
        self.connections.remove(&conn);
        self.counted(outputs)
    }

    /// The room restarted (crash or reopen): every connection is gone; committed state stays
    /// (ack.durable).
    pub fn restart(&mut self) {
        self.connections.clear();
    }

    /// What a fresh subscription of `target` by `identity` would be answered now (for final-view
    /// checks), with `sub` as its id; `None` when it would be refused.
    pub fn answer(&self, identity: &Identity, sub: &SubId, target: &Target) -> Option<ServerMessage> {
        let viewer = self.actor(identity);
        self.first_answer(&viewer, sub, target).ok().map(|(message, _)| message)
    }

    /// The room's sequence (seq.room-wide).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A user's usage in bytes (quota.exact).
    pub fn usage(&self, user: &UserId) -> u64 {
        self.usage_of(user)
    }

    /// The merged text of a Yjs field; `None` when the field has no Yjs state.
    pub fn yjs_text(&self, doc: &DocId, field: &FieldName) -> Option<String> {
        self.yjs.get(&(doc.clone(), field.clone())).map(|state| state.text(field))
    }

    /// How often each rule branch was exercised so far, e.g. "docs.create", "docs.create:exists",
    /// "quota.check:quota_exceeded" (rule id, then `:` and the refusal code or branch).
    pub fn coverage(&self) -> &BTreeMap<&'static str, u64> {
        &self.coverage
    }
}
