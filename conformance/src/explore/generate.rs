//! The operations an exploration sends: drawn from a seed, over a small world of names (a few
//! documents, two collections, a list, a bucket of each backend, a team) so that operations meet
//! each other's state, with values at the limits the target announced.

use super::{Op, PEOPLE};
use roomlab_oracle::Oracle;
use roomlab_protocol::{ClientMessage, Limits};
use serde_json::{json, Value};

const DOCS: [&str; 4] = ["d1", "d2", "n1", "sys:index"];
const TYPES: [&str; 2] = ["tasks", "notes"];
const ITEMS: [&str; 3] = ["i1", "i2", "i3"];
const KEYS: [&str; 6] = ["a0", "a1", "a0V", "a2", "Zz", "a0V"];
const STATUSES: [&str; 4] = ["active", "done", "é漢字", ""];
const BUCKETS: [&str; 3] = ["notes", "gallery", "user:u1"];

/// Draws operations from a seed (splitmix64: small, and the same on every platform).
pub(super) struct Generator {
    state: u64,
    /// What the target declares: operations of capabilities it lacks are never drawn.
    capabilities: std::collections::BTreeSet<String>,
    /// The last `mid` each connection sent.
    mids: [u64; PEOPLE.len()],
    /// Subscription and request numbers.
    counter: u64,
}

impl Generator {
    pub fn new(seed: u64, capabilities: std::collections::BTreeSet<String>) -> Generator {
        Generator { state: seed ^ 0x6578_706c_6f72_6521, capabilities, mids: [0; PEOPLE.len()], counter: 0 }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// The next operation: from an open connection, a message the protocol's types accept.
    pub fn next(&mut self, oracle: &Oracle, open: &[bool], limits: &Limits) -> Op {
        loop {
            let conn = self.below(PEOPLE.len());
            if !open[conn] {
                if open.iter().any(|o| *o) {
                    continue;
                }
                // Every connection is closed: a ping from the first goes nowhere, and ends nothing.
                return Op { conn, frame: json!({"type": "ping", "nonce": 0}) };
            }
            let mids = self.mids;
            let (frame, needs) = self.frame(conn, oracle, limits);
            if !self.capabilities.contains(needs) {
                // Undo the mid it drew, so the next frame of this connection is numbered in turn.
                self.mids = mids;
                continue;
            }
            if serde_json::from_value::<ClientMessage>(frame.clone()).is_ok() {
                return Op { conn, frame };
            }
        }
    }

    /// A frame and the capability it needs.
    fn frame(&mut self, conn: usize, oracle: &Oracle, limits: &Limits) -> (Value, &'static str) {
        self.counter += 1;
        let sub = format!("s{}", self.below(4));
        match self.below(12) {
            0 | 4 => (json!({"type": "subscribe", "sub": sub, "query": self.query()}), "core"),
            1 | 5 => {
                let doc = self.pick(&DOCS);
                (json!({"type": "subscribe", "sub": sub, "doc": doc}), "core")
            }
            2 => {
                let bucket = self.pick(&BUCKETS);
                match self.below(4) {
                    0 => (json!({"type": "subscribe", "sub": sub, "bucket": bucket}), "buckets"),
                    1 => (json!({"type": "subscribe", "sub": sub, "assets": bucket}), "assets"),
                    2 => {
                        let req = self.counter;
                        (
                            json!({"type": "bucket_get", "req": req, "bucket": bucket, "if_version": self.below(3)}),
                            "buckets",
                        )
                    }
                    _ => (json!({"type": "asset_list", "req": self.counter, "bucket": bucket}), "assets"),
                }
            }
            3 if self.chance(70) => (json!({"type": "unsubscribe", "sub": sub}), "core"),
            3 => (json!({"type": "ping", "nonce": self.counter}), "core"),
            _ => {
                let (mutation, needs) = self.mutation(oracle, limits);
                let mid = self.mid(conn);
                let mut frame = json!({"type": "mutate", "mid": mid});
                for (key, value) in mutation.as_object().expect("an object") {
                    frame[key] = value.clone();
                }
                (frame, needs)
            }
        }
    }

    /// A fresh `mid`, or now and then one sent before (a replay, answered from the window).
    fn mid(&mut self, conn: usize) -> u64 {
        let last = self.mids[conn];
        if last > 0 && self.chance(10) {
            return 1 + self.below(last as usize) as u64;
        }
        self.mids[conn] = last + 1;
        last + 1
    }

    fn query(&mut self) -> Value {
        let mut query = json!({"collection": self.pick(&TYPES)});
        if self.chance(60) {
            query["where"] = self.condition();
        }
        if self.chance(50) {
            let field = self.pick(&["n", "status", "$id", "$seq"]);
            query["order_by"] = json!([{"field": field, "dir": self.pick(&["asc", "desc"])}]);
        }
        if self.chance(40) {
            query["limit"] = json!(1 + self.below(3));
        }
        query
    }

    fn condition(&mut self) -> Value {
        let op = self.pick(&["eq", "ne", "lt", "lte", "gt", "gte", "in"]);
        let field = self.pick(&["n", "status", "tags", "$owner"]);
        let value = match op {
            "in" => json!([self.value(), self.value()]),
            _ => self.value(),
        };
        let condition = json!({"field": field, "op": op, "value": value});
        match self.below(4) {
            0 => json!({"and": [condition, {"field": "n", "op": "gte", "value": 0}]}),
            1 => json!({"or": [condition, {"field": "status", "op": "eq", "value": "done"}]}),
            _ => condition,
        }
    }

    /// A JSON value of any type, numbers and strings near the edges.
    fn value(&mut self) -> Value {
        match self.below(9) {
            0 => json!(self.pick(&STATUSES)),
            1 => json!(self.pick(&[-1, 0, 1, 2, 9_007_199_254_740_991_i64])),
            2 => json!(self.pick(&[1.5, -0.5, 1e21])),
            3 => json!(self.pick(&[true, false])),
            4 => Value::Null,
            5 => json!(["x", 1]),
            6 => json!({"k": self.pick(&STATUSES)}),
            7 => json!("1"),
            _ => json!(self.below(4)),
        }
    }

    fn data(&mut self, limits: &Limits) -> Value {
        if self.chance(4) {
            // A document at the size limit, give or take a few bytes (docs.size).
            let pad = (limits.doc_bytes_max as i64 - 12 + self.below(8) as i64).max(0) as usize;
            return json!({"pad": "x".repeat(pad)});
        }
        let mut data = json!({});
        for field in ["n", "status", "tags", "title"] {
            if self.chance(50) {
                data[field] = self.value();
            }
        }
        data
    }

    fn mutation(&mut self, oracle: &Oracle, limits: &Limits) -> (Value, &'static str) {
        let doc = self.pick(&DOCS[..3]);
        let seq = oracle.seq();
        let if_seq = |g: &mut Generator| g.pick(&[seq, seq.saturating_sub(1), 1]);
        let mutation = match self.below(18) {
            0..=2 => {
                json!({"op": "create", "doc": doc, "doc_type": self.pick(&TYPES), "data": self.data(limits)})
            }
            3 if self.chance(50) => {
                json!({"op": "put", "doc": doc, "data": self.data(limits), "if_seq": if_seq(self)})
            }
            3 => json!({"op": "put", "doc": doc, "data": self.data(limits)}),
            4 => {
                let mut patch = self.data(limits);
                patch[self.pick(&["n", "status", "gone"])] = Value::Null;
                json!({"op": "patch", "doc": doc, "data": patch})
            }
            // Deletes, restores and purges, often enough that ids meet each other's lifecycles.
            5 | 16 | 17 => json!({"op": self.pick(&["remove", "remove", "restore", "purge"]), "doc": doc}),
            6 => {
                json!({"op": "list_insert", "doc": doc, "list": "cards", "item": self.pick(&ITEMS), "key": self.pick(&KEYS), "value": self.value()})
            }
            7 => {
                json!({"op": "list_move", "doc": doc, "list": "cards", "item": self.pick(&ITEMS), "key": self.pick(&KEYS)})
            }
            8 => {
                json!({"op": self.pick(&["list_update", "list_remove"]), "doc": doc, "list": "cards", "item": self.pick(&ITEMS), "value": self.value()})
            }
            9 => {
                json!({"op": "stage_put", "doc": doc, "doc_type": self.pick(&TYPES), "data": self.data(limits)})
            }
            10 => json!({"op": self.pick(&["stage_commit", "stage_discard"])}),
            11 => {
                let (bucket, backend) =
                    self.pick(&[("notes", "d1-json"), ("gallery", "r2-assets"), ("user:u1", "d1-json")]);
                let backend = if self.chance(10) { "r2-assets" } else { backend };
                json!({"op": "bucket_bind", "bucket": bucket, "contract": {"backend": backend, "schemaId": "explore", "schemaVersion": 1 + self.below(2)}})
            }
            12 => {
                json!({"op": "bucket_set", "bucket": self.pick(&BUCKETS), "value": self.value(), "if_version": self.below(3)})
            }
            13 => {
                json!({"op": "asset_upload", "bucket": self.pick(&BUCKETS), "name": "a.txt", "content_type": "text/plain", "data_b64": "aGVsbG8="})
            }
            14 => self.team_op(),
            _ => self.schema(),
        };
        let needs = match mutation["op"].as_str().unwrap_or("") {
            op if op.starts_with("list_") => "lists",
            op if op.starts_with("stage_") => "staging",
            op if op.starts_with("bucket_") => "buckets",
            op if op.starts_with("asset_") => "assets",
            op if op.starts_with("team_") || op == "user_set_role" => "teams",
            _ if mutation["doc"].as_str().is_some_and(|doc| doc.starts_with("sys:schema:")) => "schemas",
            _ => "core",
        };
        (mutation, needs)
    }

    fn team_op(&mut self) -> Value {
        let user = self.pick(&["u1", "u2", "u3", "u9"]);
        match self.below(5) {
            0 => json!({"op": "team_create", "team": "t1", "name": "Team"}),
            1 => json!({"op": "team_invite", "team": "t1", "user": user}),
            2 => json!({"op": "team_accept", "team": "t1"}),
            3 => json!({"op": "team_remove", "team": "t1", "user": user}),
            _ => {
                json!({"op": "user_set_role", "user": user, "role": self.pick(&["viewer", "member", "admin"])})
            }
        }
    }

    /// A schema: who reads and writes a collection, and typed fields (never auto fields, whose
    /// values are the server's clock).
    fn schema(&mut self) -> Value {
        let doc_type = self.pick(&TYPES);
        let access = json!({"read": self.pick(&["viewer", "member", "owner"]), "write": self.pick(&["member", "owner", "admin"])});
        let mut fields = json!({"n": {"type": self.pick(&["number", "string"])}});
        if self.chance(50) {
            for field in ["status", "tags", "title", "pad"] {
                fields[field] = json!({"type": "any"});
            }
        }
        let data = json!({"access": access, "fields": fields});
        json!({"op": "create", "doc": format!("sys:schema:{doc_type}"), "doc_type": "sys", "data": data})
    }
}
