//! What a virtual client does: a weighted mix of operations chosen by its own seeded RNG.

use crate::scenario::Workload;
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha8Rng;
use roomlab_client::{Client, ClientError, Subscription, View, YjsText};
use roomlab_protocol::{
    fracdex, Backend, BucketName, Contract, Direction, DocId, DocType, Field, FieldName, ItemId, ListItem,
    ListKey, Mutation, Op, Order, Query, Role, Target, TeamId, UserId, Where,
};
use serde_json::json;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Times the first client sends a setup mutation before the run fails.
const SETUP_TRIES_MAX: usize = 50;
/// Buckets the bucket workload shares.
pub(crate) const BUCKETS: u64 = 4;
/// Items the shared board holds before the list workload only removes.
const BOARD_ITEMS_MAX: usize = 16;
/// Subscriptions a virtual client holds at most.
const SUBSCRIPTIONS_MAX: usize = 6;
/// Shared notes whose `body` field the clients type into.
pub(crate) const NOTES: u64 = 3;
/// Rich-text fields a virtual client holds open at most.
const TEXTS_MAX: usize = 2;
/// Asset buckets the asset workload shares.
pub(crate) const GALLERIES: u64 = 2;
/// The one character only viewers type: the server's text must never contain it.
pub(crate) const VIEWER_MARK: char = '!';

/// Which phase the world is in, as the clients read it.
pub(crate) const PHASE_SETUP: u8 = 0;
pub(crate) const PHASE_SAFETY: u8 = 1;
pub(crate) const PHASE_LIVENESS: u8 = 2;

/// A virtual client's program.
pub(crate) struct Actor {
    pub index: usize,
    pub client: Arc<Client>,
    pub rng: ChaCha8Rng,
    pub mix: Workload,
    pub rate_per_s: f64,
    /// The most steps this client takes in the safety phase, if bounded.
    pub steps_max: Option<u64>,
    /// How many shared task documents there are.
    pub shared_docs: u64,
    pub users: usize,
    /// Every how many users one is a viewer (the scenario's `viewer_every`).
    pub viewer_every: usize,
    pub phase: Arc<AtomicU8>,
    /// Set by the first client once its setup is done; the others start their workload after it.
    pub setup_done: Rc<Cell<bool>>,
    pub subscriptions: Vec<(Target, Subscription)>,
    pub made: u64,
    pub viewer: bool,
    pub texts: Vec<(DocId, YjsText)>,
    /// The BUGGIFY point "a write landing exactly at the quota limit", when the seed turned it on:
    /// this client's room usage as the server holds it now, and the user's limit.
    pub quota_edge: Option<QuotaEdge>,
}

/// What the quota-edge point needs: the user's usage on the server now, its limit, and where to
/// count the writes it sized.
pub(crate) struct QuotaEdge {
    pub usage: Rc<dyn Fn() -> Option<u64>>,
    pub limit: u64,
    pub fired: Rc<Cell<u64>>,
}

fn doc(id: impl Into<String>) -> DocId {
    DocId::new(id).expect("workload ids are valid")
}

fn doc_type(name: &str) -> DocType {
    DocType::new(name).expect("workload types are valid")
}

pub(crate) fn board() -> DocId {
    doc("board")
}

pub(crate) fn cards() -> FieldName {
    FieldName::new("cards").expect("valid field")
}

/// The rich-text field of the shared notes.
pub(crate) fn body() -> FieldName {
    FieldName::new("body").expect("valid field")
}

pub(crate) fn note(k: u64) -> DocId {
    doc(format!("n{k}"))
}

fn gallery(k: u64) -> BucketName {
    BucketName::new(format!("g{k}")).expect("valid")
}

fn gallery_contract() -> Contract {
    Contract { backend: Backend::R2Assets, schema_id: "images".into(), schema_version: 1 }
}

pub(crate) fn active_tasks(limit: Option<u32>) -> Query {
    Query {
        collection: doc_type("tasks"),
        filter: Some(Where::Condition { field: Field("status".into()), op: Op::Eq, value: json!("active") }),
        order_by: vec![Order { field: Field("priority".into()), dir: Direction::Desc }],
        limit,
    }
}

fn all_of(collection: &str) -> Query {
    Query { collection: doc_type(collection), filter: None, order_by: Vec::new(), limit: None }
}

impl Actor {
    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// The admin's setup, once every user has connected: the private collection's schema and the
    /// shared board.
    /// The first client creates what the seed's mix will use, and nothing else, so that a shrunk
    /// run keeps only the operations its failure needs: the owner-only schema where private
    /// documents are written or schema removals tried, the board always (every client watches
    /// it), the shared notes where there is Yjs typing, the galleries where there are assets.
    async fn setup(&mut self) {
        if self.index != 0 {
            return;
        }
        let mix = self.mix;
        let mut creates = Vec::new();
        if mix.private > 0 || mix.deletes > 0 {
            let schema = json!({"access": {"read": "owner", "write": "owner"}});
            creates.push(Mutation::Create {
                doc: doc("sys:schema:private"),
                doc_type: doc_type("sys"),
                data: schema,
            });
        }
        if mix.records > 0 {
            let schema = json!({
                "fields": {
                    "title": {"type": "string", "required": true},
                    "done": {"type": "boolean", "default": false},
                    "body": {"type": "richtext"}
                },
                "access": {"read": "viewer", "write": "member"},
                "autoFields": {"userId": true, "createdAt": true, "updatedAt": true}
            });
            creates.push(Mutation::Create {
                doc: doc("sys:schema:forms"),
                doc_type: doc_type("sys"),
                data: schema,
            });
        }
        creates.push(Mutation::Create {
            doc: board(),
            doc_type: doc_type("boards"),
            data: json!({"title": "board"}),
        });
        if mix.yjs > 0 {
            creates.extend((0..NOTES).map(|k| Mutation::Create {
                doc: note(k),
                doc_type: doc_type("notes"),
                data: json!({}),
            }));
        }
        if mix.assets > 0 {
            creates.extend(
                (0..GALLERIES)
                    .map(|k| Mutation::BucketBind { bucket: gallery(k), contract: gallery_contract() }),
            );
        }
        for create in creates {
            self.until_settled(create).await;
        }
    }

    /// Sends a setup mutation until it is acknowledged or definitely refused (`exists` after a
    /// crash lost the answer): every check assumes the setup happened, and a storage fault or a
    /// crash may refuse it with `internal` or leave it unanswered.
    async fn until_settled(&mut self, mutation: Mutation) {
        use roomlab_client::ClientError;
        for _ in 0..SETUP_TRIES_MAX {
            match self.client.mutate_confirmed(mutation.clone()).await {
                Ok(_) => return,
                Err(ClientError::Refused(body)) if body.code != roomlab_protocol::ErrorCode::Internal => {
                    return
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("setup: {mutation:?} was not settled in {SETUP_TRIES_MAX} tries");
    }

    fn subscribe(&mut self, target: Target) {
        if self.subscriptions.iter().any(|(t, _)| *t == target) {
            return;
        }
        let subscription = self.client.subscribe(target.clone());
        self.subscriptions.push((target, subscription));
    }

    /// Runs operations until the safety phase ends.
    pub async fn run(mut self) {
        self.subscribe(Target::Doc(board()));
        self.subscribe(Target::Query(active_tasks(None)));
        while self.phase.load(Ordering::Relaxed) == PHASE_SETUP {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.setup().await;
        // Every check assumes the setup came first: a private document written before the
        // owner-only schema exists is readable by everyone (swarm seed 130 once wrote one while
        // a storage fault made the admin reconnect and send the schema again).
        if self.index == 0 {
            self.setup_done.set(true);
        }
        while !self.setup_done.get() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mean_ms = (1000.0 / self.rate_per_s) as u64;
        let mut steps = 0;
        while self.phase.load(Ordering::Relaxed) == PHASE_SAFETY && Some(steps) != self.steps_max {
            let wait = self.below(2 * mean_ms + 1);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if self.phase.load(Ordering::Relaxed) != PHASE_SAFETY {
                break;
            }
            self.step().await;
            steps += 1;
        }
        // Hold the subscriptions through the liveness phase, so that convergence can be checked.
        std::future::pending::<()>().await;
    }

    async fn step(&mut self) {
        let weights = self.mix.weights();
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut pick = self.below(total);
        let mut kind = 0;
        for (i, weight) in weights.iter().enumerate() {
            if pick < u64::from(*weight) {
                kind = i;
                break;
            }
            pick -= u64::from(*weight);
        }
        let mutation = match kind {
            0 => Some(self.record()),
            1 => {
                self.churn_subscriptions();
                None
            }
            2 => Some(self.guarded()),
            3 => self.list_op(),
            4 => Some(self.delete_op()),
            5 => Some(self.quota_op()),
            6 => self.bucket_op().await,
            7 => Some(self.private_op()),
            8 => self.staging_op().await,
            9 => {
                self.yjs_op();
                None
            }
            _ => self.asset_op(),
        };
        if let Some(mutation) = mutation {
            self.send(mutation).await;
        }
    }

    async fn send(&mut self, mutation: Mutation) {
        if self.chance(50) {
            self.client.mutate(mutation);
        } else {
            match self.client.mutate_confirmed(mutation).await {
                Ok(_) | Err(ClientError::Refused(_)) | Err(ClientError::Timeout) => {}
                Err(other) => tracing::debug!("client {}: {other}", self.index),
            }
        }
    }

    fn shared_doc(&mut self) -> DocId {
        let k = self.below(self.shared_docs);
        doc(format!("t{k}"))
    }

    fn task_data(&mut self) -> serde_json::Value {
        let status = if self.chance(60) { "active" } else { "done" };
        json!({"status": status, "priority": self.below(10), "by": self.index})
    }

    fn record(&mut self) -> Mutation {
        let id = self.shared_doc();
        let data = self.task_data();
        match self.below(20) {
            0..6 => Mutation::Create { doc: id, doc_type: doc_type("tasks"), data },
            6..12 => Mutation::Put { doc: id, data, if_seq: None },
            12..17 => Mutation::Patch {
                doc: id,
                data: json!({"priority": self.below(10), "note": null}),
                if_seq: None,
            },
            17 => self.form_op(),
            18 => self.odd_write(id),
            _ => self.admin_op(),
        }
    }

    /// Writes to `forms`, whose schema (made at setup) declares fields, a default, a rich-text
    /// field and every auto field: valid data, data missing a required field, a field of the
    /// wrong type, an unknown field, and patches.
    fn form_op(&mut self) -> Mutation {
        let id = doc(format!("f{}", self.below(4)));
        let data = match self.below(6) {
            0 => json!({"done": true}),
            1 => json!({"title": 7}),
            2 => json!({"title": "x", "colour": "red"}),
            3 => json!({"title": "x", "userId": "forged", "createdAt": 1}),
            _ => json!({"title": format!("form by {}", self.index)}),
        };
        match self.below(3) {
            0 => Mutation::Create { doc: id, doc_type: doc_type("forms"), data },
            1 => Mutation::Put { doc: id, data, if_seq: None },
            _ => Mutation::Patch { doc: id, data, if_seq: None },
        }
    }

    /// Writes a server must refuse whoever sends them: a forged system document, data that is not
    /// an object, a schema written by a non-admin, a document over `doc_bytes_max`.
    fn odd_write(&mut self, id: DocId) -> Mutation {
        match self.below(5) {
            0 => Mutation::Create { doc: self.system_doc(), doc_type: doc_type("sys"), data: json!({}) },
            1 => Mutation::Put { doc: id, data: json!([1, 2]), if_seq: None },
            2 => Mutation::Create {
                doc: doc("sys:schema:tasks"),
                doc_type: doc_type("sys"),
                data: json!({"fields": 3}),
            },
            3 => Mutation::Patch {
                doc: doc("sys:schema:forms"),
                data: json!({"access": {"read": "viewer"}}),
                if_seq: None,
            },
            _ => Mutation::Create {
                doc: id,
                doc_type: doc_type("tasks"),
                data: json!({"pad": "x".repeat(270_000)}),
            },
        }
    }

    /// Users and teams (§15): the admin manages teams and roles; everyone else accepts
    /// invitations, and tries an admin's op now and then (which must be `forbidden`).
    fn admin_op(&mut self) -> Mutation {
        let team = TeamId::new(format!("team{}", self.below(2))).expect("valid");
        let user = UserId::new(format!("u{}", self.below(self.users as u64))).expect("valid");
        match self.below(8) {
            0 => Mutation::TeamCreate { team, name: format!("Team of {}", self.index) },
            1 => Mutation::TeamInvite { team, user },
            2 => Mutation::TeamRemove { team, user },
            3 => Mutation::TeamDelete { team },
            // Roles move only between member and admin: viewers stay viewers, so the checks that
            // a viewer's write is never acknowledged keep their meaning.
            4 if user_number(&user) != 0
                && role_of(user_number(&user), self.viewer_every) != Role::Viewer =>
            {
                let role = if self.chance(50) { Role::Admin } else { Role::Member };
                Mutation::UserSetRole { user, role }
            }
            _ => Mutation::TeamAccept { team },
        }
    }

    fn cached_seq(&self, id: &DocId) -> Option<u64> {
        let view = self.client.with_core(|core| core.view(&Target::Doc(id.clone())).cloned());
        match view {
            Some(View::Doc(snapshot)) => Some(snapshot.seq),
            _ => None,
        }
    }

    fn guarded(&mut self) -> Mutation {
        let id = self.shared_doc();
        self.subscribe(Target::Doc(id.clone()));
        let if_seq = self.cached_seq(&id).or(Some(self.below(50)));
        let data = self.task_data();
        if self.chance(80) {
            Mutation::Put { doc: id, data, if_seq }
        } else {
            Mutation::Remove { doc: id, if_seq }
        }
    }

    fn churn_subscriptions(&mut self) {
        if self.subscriptions.len() >= SUBSCRIPTIONS_MAX || (self.subscriptions.len() > 2 && self.chance(30))
        {
            // Keep the first two (board and tasks) so the lists and queries always have watchers.
            let victim = 2 + self.below(self.subscriptions.len() as u64 - 2) as usize;
            self.subscriptions.remove(victim);
            return;
        }
        let target = match self.below(9) {
            0 => Target::Query(active_tasks(Some(5))),
            1 => Target::Query(all_of("private")),
            2 => Target::Query(all_of("blobs")),
            3 => Target::Bucket(BucketName::new(format!("b{}", self.below(BUCKETS))).expect("valid")),
            4 => Target::Doc(self.system_doc()),
            5 => Target::Query(self.mixed_query()),
            6 => Target::Query(all_of("forms")),
            _ => Target::Doc(self.shared_doc()),
        };
        self.subscribe(target);
    }

    /// One of the documents the room keeps itself (docs/PROTOCOL.md §11).
    fn system_doc(&mut self) -> DocId {
        match self.below(7) {
            0 => doc("sys:index"),
            1 => doc("sys:trash"),
            2 => doc("sys:users"),
            3 => doc("sys:teams"),
            4 => doc("sys:session"),
            5 => doc("sys:schema:forms"),
            _ => doc(format!("sys:stage:t{}", self.below(self.shared_docs))),
        }
    }

    /// A query over more of §8: `or`, `in`, orderings across types, the `$` attributes, limit
    /// windows; now and then one a server must refuse (`invalid`).
    fn mixed_query(&mut self) -> Query {
        let condition = |field: &str, op: Op, value: serde_json::Value| Where::Condition {
            field: Field(field.into()),
            op,
            value,
        };
        let me = format!("u{}", self.index % self.users.max(1));
        let filter = match self.below(6) {
            0 => Where::Or {
                or: vec![condition("priority", Op::Gte, json!(7)), condition("$owner", Op::Eq, json!(me))],
            },
            1 => Where::And {
                and: vec![
                    condition("status", Op::Ne, json!("done")),
                    condition("priority", Op::Lt, json!("5")),
                ],
            },
            2 => condition("priority", Op::In, json!([1, 3, 5.0, "7"])),
            3 => condition("$seq", Op::Gt, json!(self.below(200))),
            4 => condition("$id", Op::Lte, json!(format!("t{}", self.below(self.shared_docs)))),
            _ => condition("$bogus", Op::Eq, json!(1)),
        };
        let field = ["priority", "$seq", "$id", "status", "note"][self.below(5) as usize];
        let dir = if self.chance(50) { Direction::Asc } else { Direction::Desc };
        let limit = match self.below(6) {
            0 => Some(5000),
            1 | 2 => Some(1 + self.below(4) as u32),
            _ => None,
        };
        Query {
            collection: doc_type("tasks"),
            filter: Some(filter),
            order_by: vec![Order { field: Field(field.into()), dir }],
            limit,
        }
    }

    fn board_items(&self) -> Vec<ListItem> {
        let view = self.client.with_core(|core| core.view(&Target::Doc(board())).cloned());
        match view {
            Some(View::Doc(snapshot)) => snapshot.lists.get(&cards()).cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// A key in one of the first gaps of the list as this client sees it; many clients pick the
    /// same gap at once, so equal keys happen and the (key, item id) order decides.
    fn contended_key(&mut self, items: &[ListItem]) -> Option<ListKey> {
        let gap = self.below(items.len().min(3) as u64 + 1) as usize;
        let before = gap.checked_sub(1).map(|i| items[i].key.as_str());
        let after = items.get(gap).map(|item| item.key.as_str());
        let key = fracdex::key_between(before, after).ok()?;
        ListKey::new(key).ok()
    }

    fn list_op(&mut self) -> Option<Mutation> {
        let items = self.board_items();
        // Past BOARD_ITEMS_MAX items, removes win: a list change reaches the board's watchers as a
        // small doc:diff, but every first answer, resubscription and query push carries the whole
        // board, so an ever-growing board would make the run measure JSON, not races.
        let choice = if items.len() > BOARD_ITEMS_MAX { 99 } else { self.below(100) };
        if choice < 60 || items.is_empty() {
            self.made += 1;
            let item = ItemId::new(format!("c{}-{}", self.index, self.made)).expect("valid");
            let key = self.contended_key(&items)?;
            return Some(Mutation::ListInsert {
                doc: board(),
                list: cards(),
                item,
                key,
                value: json!({"by": self.index}),
            });
        }
        let item = items[self.below(items.len() as u64) as usize].id.clone();
        if choice < 85 {
            let key = self.contended_key(&items)?;
            Some(Mutation::ListMove { doc: board(), list: cards(), item, key })
        } else {
            Some(Mutation::ListRemove { doc: board(), list: cards(), item })
        }
    }

    /// Removes, restores and purges shared documents; now and then tries to remove a schema
    /// document, which must always answer `protected`.
    fn delete_op(&mut self) -> Mutation {
        let id = self.shared_doc();
        match self.below(21) {
            0..8 => Mutation::Remove { doc: id, if_seq: None },
            8..16 => Mutation::Restore { doc: id },
            16..20 => Mutation::Purge { doc: id },
            _ => Mutation::Remove { doc: doc("sys:schema:private"), if_seq: None },
        }
    }

    /// A create sized to land exactly at the user's limit (BUGGIFY: the write must be accepted,
    /// unless another write of the user's got there first). It fires mostly when the gap is
    /// at most a third of the limit, so the edge is usually reached the way users reach it:
    /// filling a quota in one stroke starves the user's other writes until purges refund, so a
    /// wider gap is filled one time in ten.
    fn quota_edge_op(&mut self) -> Option<Mutation> {
        let edge = self.quota_edge.as_ref()?;
        let (limit, fired) = (edge.limit, edge.fired.clone());
        let remaining = limit.checked_sub((edge.usage)()?)?;
        // `{"pad":""}` is 10 bytes of canonical JSON; the pad fills the rest.
        let pad = usize::try_from(remaining.checked_sub(10)?).ok()?;
        if pad as u64 > limit / 3 && !self.chance(10) {
            return None;
        }
        fired.set(fired.get() + 1);
        self.made += 1;
        Some(Mutation::Create {
            doc: doc(format!("q{}-{}", self.index, self.made)),
            doc_type: doc_type("blobs"),
            data: json!({"pad": "x".repeat(pad)}),
        })
    }

    fn quota_op(&mut self) -> Mutation {
        if self.quota_edge.is_some() && self.chance(30) {
            if let Some(mutation) = self.quota_edge_op() {
                return mutation;
            }
        }
        let own = self.made.saturating_sub(self.below(3));
        let id = doc(format!("q{}-{}", self.index, own.max(1)));
        match self.below(5) {
            0 | 1 => {
                self.made += 1;
                let size = 500 + self.below(2500) as usize;
                let data = json!({"pad": "x".repeat(size)});
                Mutation::Create {
                    doc: doc(format!("q{}-{}", self.index, self.made)),
                    doc_type: doc_type("blobs"),
                    data,
                }
            }
            2 => Mutation::Remove { doc: id, if_seq: None },
            3 => Mutation::Purge { doc: id },
            // Creating one of its own ids again: `exists` while live, `deleted` once removed.
            _ => Mutation::Create { doc: id, doc_type: doc_type("blobs"), data: json!({"again": true}) },
        }
    }

    async fn bucket_op(&mut self) -> Option<Mutation> {
        let bucket = BucketName::new(format!("b{}", self.below(BUCKETS))).expect("valid");
        Some(match self.below(10) {
            0 | 1 => {
                let version = 1 + self.below(2) as u32;
                let contract =
                    Contract { backend: Backend::D1Json, schema_id: "notes".into(), schema_version: version };
                Mutation::BucketBind { bucket, contract }
            }
            2 => Mutation::BucketDelete { bucket },
            3 => {
                let _ = self.client.bucket_get(bucket).await;
                return None;
            }
            _ => {
                let if_version =
                    match self.client.with_core(|core| core.cached_bucket(&bucket).map(|(v, _)| *v)) {
                        Some(version) if self.chance(50) => Some(version),
                        _ => None,
                    };
                let value = json!({"by": self.index, "n": self.below(1000)});
                Mutation::BucketSet { bucket, value, if_version }
            }
        })
    }

    fn private_op(&mut self) -> Mutation {
        if self.chance(10) {
            return self.admin_op();
        }
        self.made += 1;
        let id = doc(format!("p{}-{}", self.index, self.made));
        Mutation::Create {
            doc: id,
            doc_type: doc_type("private"),
            data: json!({"secret": self.below(1_000_000)}),
        }
    }

    async fn staging_op(&mut self) -> Option<Mutation> {
        // A staged session belongs to a user, not a connection; only the first client of each user
        // stages, so that no two clients interleave puts, commits and discards of one session
        // without taking a sequence, which no checker could put back in order.
        if self.index >= self.users {
            return Some(self.record());
        }
        for _ in 0..1 + self.below(2) {
            let id = self.shared_doc();
            let data = self.task_data();
            let _ = self
                .client
                .mutate_confirmed(Mutation::StagePut { doc: id, doc_type: doc_type("tasks"), data })
                .await;
        }
        Some(if self.chance(80) { Mutation::StageCommit } else { Mutation::StageDiscard })
    }
}

impl Actor {
    /// Types into a shared note: opens its field (closing another now and then), then inserts a
    /// few characters or removes a few at a random place. Writers type their own letter; viewers
    /// only insert [`VIEWER_MARK`], which the server must refuse.
    fn yjs_op(&mut self) {
        if self.texts.len() >= TEXTS_MAX || (!self.texts.is_empty() && self.chance(10)) {
            let victim = self.below(self.texts.len() as u64) as usize;
            self.texts.remove(victim);
            return;
        }
        let id = note(self.below(NOTES));
        let position = match self.texts.iter().position(|(open, _)| *open == id) {
            Some(position) => position,
            None if self.chance(15) => {
                let (id, field) = self.stray_field();
                match self.client.yjs_text(id.clone(), field) {
                    Ok(text) => self.texts.push((id, text)),
                    Err(_) => return,
                }
                self.texts.len() - 1
            }
            None => match self.client.yjs_text(id.clone(), body()) {
                Ok(text) => {
                    self.texts.push((id, text));
                    self.texts.len() - 1
                }
                Err(_) => return,
            },
        };
        let length = self.texts[position].1.text().encode_utf16().count() as u64;
        let at = self.below(length + 1) as u32;
        if self.viewer {
            let count = 1 + self.below(3) as usize;
            self.texts[position].1.insert(at, &VIEWER_MARK.to_string().repeat(count));
        } else if self.chance(70) || length == 0 {
            let letter = char::from(b'a' + (self.index % 26) as u8);
            let count = 1 + self.below(4) as usize;
            self.texts[position].1.insert(at, &letter.to_string().repeat(count));
        } else {
            let count = 1 + self.below(3) as u32;
            self.texts[position].1.remove(at, count);
        }
    }

    /// A rich-text field other than a shared note's, for yjs.doc-live, yjs.access and
    /// yjs.richtext-field: a task's body (the task may be live, deleted, purged or never made), a
    /// form's declared rich-text field, a form's string field, a system document, a note that was
    /// never created. The room refuses the field or syncs it; typing goes on either way.
    fn stray_field(&mut self) -> (DocId, FieldName) {
        let form = doc(format!("f{}", self.below(4)));
        match self.below(5) {
            0 => (self.shared_doc(), body()),
            1 => (form, body()),
            2 => (form, FieldName::new("title").expect("valid field")),
            3 => (doc("sys:schema:forms"), body()),
            _ => (note(NOTES + self.below(2)), body()),
        }
    }

    /// Uploads small files to a shared gallery, deletes one it sees, watches a gallery, or now and
    /// then deletes a whole gallery (refunding every uploader) and binds it again.
    fn asset_op(&mut self) -> Option<Mutation> {
        let bucket = gallery(self.below(GALLERIES));
        match self.below(20) {
            0..10 => {
                use base64::Engine as _;
                self.made += 1;
                let size = 1 + self.below(1500) as usize;
                let bytes: Vec<u8> =
                    (0..size).map(|i| (i as u8).wrapping_mul(self.index as u8 | 1)).collect();
                Some(Mutation::AssetUpload {
                    bucket,
                    name: format!("f{}-{}.bin", self.index, self.made),
                    content_type: "application/octet-stream".into(),
                    data_b64: base64::engine::general_purpose::STANDARD.encode(bytes),
                })
            }
            10..14 => {
                self.subscribe(Target::Assets(bucket));
                None
            }
            14..18 => {
                let view = self.client.with_core(|core| core.view(&Target::Assets(bucket.clone())).cloned());
                let Some(View::Assets(assets)) = view else { return None };
                let asset = assets.get(self.below(assets.len() as u64) as usize)?;
                Some(Mutation::AssetDelete { bucket, object_key: asset.object_key.clone() })
            }
            18 => Some(Mutation::BucketDelete { bucket }),
            _ => Some(Mutation::BucketBind { bucket, contract: gallery_contract() }),
        }
    }
}

/// The number of user `u{n}`.
fn user_number(user: &UserId) -> usize {
    user.as_str().trim_start_matches('u').parse().unwrap_or(0)
}

/// The role of user `u{n}` in a scenario: u0 is the admin.
pub(crate) fn role_of(user: usize, viewer_every: usize) -> Role {
    match user {
        0 => Role::Admin,
        n if viewer_every > 0 && n.is_multiple_of(viewer_every) => Role::Viewer,
        _ => Role::Member,
    }
}
