//! Connections (§2), subscriptions (§8), one-shot reads, and mutations with their replay window
//! (§6).

use crate::state::{Actor, Refusal, ReplayWindow};
use crate::{Conn, Identity, Oracle, Output};
use roomlab_protocol::{
    BucketName, ClientId, ClientMessage, DocId, ErrorBody, ErrorCode, FieldName, Mutation, ServerMessage,
    SubId, Target, UserId, PROTOCOL_VERSION,
};

/// The close codes the room itself decides (§2).
const CLOSE_UNSUPPORTED_PROTOCOL: u16 = 4002;
const CLOSE_ROOM_FAILED: u16 = 1011;

/// An error message to a connection.
fn error_to(conn: Conn, rule: &'static str, body: ErrorBody) -> Output {
    Output::Send { conn, message: ServerMessage::Error(body), rule }
}

/// limits.frame-size: `None` when the message's frame (its JSON text) fits in `frame_bytes_max`,
/// else the `limit_exceeded` refusal that goes out in its place.
pub(crate) fn oversized(message: &ServerMessage, frame_bytes_max: usize) -> Option<Refusal> {
    let mut counter = ByteCount(0);
    serde_json::to_writer(&mut counter, message).expect("server messages serialize");
    let bytes = counter.0;
    (bytes > frame_bytes_max).then(|| {
        Refusal::new(
            "limits.frame-size",
            ErrorCode::LimitExceeded,
            format!("the frame would be {bytes} bytes, over frame_bytes_max ({frame_bytes_max})"),
        )
    })
}

/// Counts what is written to it: a frame's length without building the frame.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Oracle {
    /// Routes one text message (conn.hello.first: nothing but `hello` before `hello`).
    pub(crate) fn handle_message(
        &mut self,
        conn: Conn,
        message: ClientMessage,
        now_ms: u64,
        commit_fails: bool,
    ) -> Vec<Output> {
        let Some(connection) = self.connections.get(&conn) else { return Vec::new() };
        if connection.closed {
            // mutation.replay.internal-not-remembered: nothing more the connection sent is processed.
            return Vec::new();
        }
        let greeted = connection.client.is_some();
        match message {
            ClientMessage::Hello { protocol, client } if !greeted => self.hello(conn, protocol, client),
            other @ ClientMessage::Hello { .. } => vec![hello_required(conn, &other)],
            other if !greeted => vec![hello_required(conn, &other)],
            ClientMessage::Subscribe { sub, target } => self.subscribe(conn, sub, &target),
            ClientMessage::Unsubscribe { sub } => self.unsubscribe(conn, sub),
            ClientMessage::Mutate { mid, mutation } => self.mutate(conn, mid, mutation, now_ms, commit_fails),
            ClientMessage::BucketGet { req, bucket, if_version } => {
                self.bucket_get(conn, req, &bucket, if_version)
            }
            ClientMessage::AssetList { req, bucket } => self.asset_list(conn, req, &bucket),
            ClientMessage::YjsClose { doc, field } => self.yjs_close(conn, doc, field),
            ClientMessage::Ping { nonce } => {
                vec![Output::Send { conn, message: ServerMessage::Pong { nonce }, rule: "conn.ping" }]
            }
        }
    }

    /// conn.hello.first and conn.hello.version: `welcome`, or `unsupported_protocol` and close 4002.
    fn hello(&mut self, conn: Conn, protocol: u32, client: ClientId) -> Vec<Output> {
        let connection = self.connections.get_mut(&conn).expect("routed for a known connection");
        if protocol != PROTOCOL_VERSION {
            connection.closed = true;
            let body = ErrorBody::new(
                ErrorCode::UnsupportedProtocol,
                format!("this room speaks protocol {PROTOCOL_VERSION}, not {protocol}"),
            );
            return vec![
                error_to(conn, "conn.hello.version", body),
                Output::Close { conn, code: CLOSE_UNSUPPORTED_PROTOCOL, rule: "conn.hello.version" },
            ];
        }
        connection.client = Some(client);
        let identity = connection.identity.clone();
        let actor = self.actor(&identity);
        let welcome = ServerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            room: self.settings.room.clone(),
            user: actor.user,
            role: actor.role,
            seq: self.seq,
            limits: self.settings.limits.clone(),
        };
        vec![Output::Send { conn, message: welcome, rule: "conn.hello.first" }]
    }

    /// subs.limit, then the target's first answer (query.initial, docsub.initial, ...).
    fn subscribe(&mut self, conn: Conn, sub: SubId, target: &Target) -> Vec<Output> {
        let connection = &self.connections[&conn];
        let refusal = if connection.subscriptions.contains_key(&sub) {
            Some(Refusal::new(
                "subs.limit",
                ErrorCode::SubscriptionExists,
                format!("subscription {sub} is live"),
            ))
        } else if connection.subscriptions.len() >= self.settings.limits.subscriptions_max {
            Some(Refusal::new(
                "subs.limit",
                ErrorCode::SubscriptionLimit,
                format!(
                    "a connection holds at most {} subscriptions",
                    self.settings.limits.subscriptions_max
                ),
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return vec![error_to(conn, refusal.rule, refusal.body.with_sub(sub))];
        }
        let viewer = self.actor(&connection.identity);
        let frame_bytes_max = self.settings.limits.frame_bytes_max;
        let answer = self.first_answer(&viewer, &sub, target).and_then(|(message, subscription)| {
            match oversized(&message, frame_bytes_max) {
                Some(refusal) => Err(refusal),
                None => Ok((message, subscription)),
            }
        });
        match answer {
            Ok((message, subscription)) => {
                let rule = match target {
                    Target::Query(_) => "query.initial",
                    Target::Doc(_) => "docsub.initial",
                    Target::Bucket(_) => "bucket.subscribe",
                    Target::Assets(_) => "assets.subscribe",
                };
                let connection = self.connections.get_mut(&conn).expect("looked up above");
                connection.subscriptions.insert(sub, subscription);
                vec![Output::Send { conn, message, rule }]
            }
            Err(refusal) => vec![error_to(conn, refusal.rule, refusal.body.with_sub(sub))],
        }
    }

    /// subs.unsubscribe: `unsubscribed`, and no push for it follows.
    fn unsubscribe(&mut self, conn: Conn, sub: SubId) -> Vec<Output> {
        let connection = self.connections.get_mut(&conn).expect("routed for a known connection");
        if connection.subscriptions.remove(&sub).is_none() {
            let body = ErrorBody::new(ErrorCode::SubscriptionUnknown, format!("no live subscription {sub}"));
            return vec![error_to(conn, "subs.unsubscribe", body.with_sub(sub))];
        }
        vec![Output::Send { conn, message: ServerMessage::Unsubscribed { sub }, rule: "subs.unsubscribe" }]
    }

    /// bucket.get.not-modified and bucket.value: one read of a JSON bucket.
    fn bucket_get(
        &mut self,
        conn: Conn,
        req: u64,
        bucket: &BucketName,
        if_version: Option<u64>,
    ) -> Vec<Output> {
        let viewer = self.actor(&self.connections[&conn].identity);
        let (message, rule) = match self.json_bucket(&viewer, bucket, "bucket.backend-match") {
            Ok((version, _)) if if_version == Some(version) => (
                ServerMessage::BucketNotModified { req, bucket: bucket.clone(), version },
                "bucket.get.not-modified",
            ),
            Ok((version, value)) => (
                ServerMessage::BucketValue {
                    sub: None,
                    req: Some(req),
                    bucket: bucket.clone(),
                    version,
                    value: value.clone(),
                },
                "bucket.value",
            ),
            Err(refusal) => (ServerMessage::Error(refusal.body.with_req(req)), refusal.rule),
        };
        vec![self.reply_within_frame(conn, req, message, rule)]
    }

    /// A reply to request `req`, or limits.frame-size's refusal in its place.
    fn reply_within_frame(&self, conn: Conn, req: u64, message: ServerMessage, rule: &'static str) -> Output {
        match oversized(&message, self.settings.limits.frame_bytes_max) {
            None => Output::Send { conn, message, rule },
            Some(refusal) => error_to(conn, refusal.rule, refusal.body.with_req(req)),
        }
    }

    /// assets.list: one listing of an asset bucket, by object key.
    fn asset_list(&mut self, conn: Conn, req: u64, bucket: &BucketName) -> Vec<Output> {
        let viewer = self.actor(&self.connections[&conn].identity);
        let (message, rule) = match self.asset_bucket(&viewer, bucket, "bucket.backend-match") {
            Ok(assets) => (
                ServerMessage::AssetsList { sub: None, req: Some(req), bucket: bucket.clone(), assets },
                "assets.list",
            ),
            Err(refusal) => (ServerMessage::Error(refusal.body.with_req(req)), refusal.rule),
        };
        vec![self.reply_within_frame(conn, req, message, rule)]
    }

    /// yjs.sync: `yjs_close` stops the field's updates on this connection; it has no answer.
    fn yjs_close(&mut self, conn: Conn, doc: DocId, field: FieldName) -> Vec<Output> {
        let connection = self.connections.get_mut(&conn).expect("routed for a known connection");
        connection.yjs_open.remove(&(doc.clone(), field.clone()));
        self.cover("yjs.sync:close");
        self.remove_awareness(conn, (doc, field))
    }

    /// A mutation: answered from the replay window when its mid was processed
    /// (mutation.replay.same-answer, mutation.replay.window), else applied and remembered.
    fn mutate(
        &mut self,
        conn: Conn,
        mid: u64,
        mutation: Mutation,
        now_ms: u64,
        commit_fails: bool,
    ) -> Vec<Output> {
        let connection = &self.connections[&conn];
        let client = connection.client.clone().expect("mutations are routed after hello");
        let key = (connection.identity.user.clone(), client);
        if let Some(window) = self.replay.get(&key).filter(|window| mid <= window.newest) {
            return vec![replayed(conn, mid, window)];
        }
        if commit_fails {
            let body =
                ErrorBody::new(ErrorCode::Internal, "the room could not commit this mutation").with_mid(mid);
            return self.fail_connection(conn, body, "mutation.replay.internal-not-remembered");
        }
        let actor = self.actor(&connection.identity.clone());
        let (answer, rule, pushes) = self.run_mutation(&actor, mutation, now_ms, Some(mid));
        self.remember(key, mid, answer.clone());
        let mut outputs = vec![Output::Send { conn, message: answer, rule }];
        outputs.extend(pushes);
        outputs
    }

    /// An HTTP mutation: no mid, not remembered (§17).
    pub(crate) fn handle_http(
        &mut self,
        identity: Identity,
        mutation: Mutation,
        now_ms: u64,
    ) -> (ServerMessage, Vec<Output>) {
        let actor = self.actor(&identity);
        let (answer, rule, pushes) = self.run_mutation(&actor, mutation, now_ms, None);
        self.count_message(rule, &answer);
        (answer, pushes)
    }

    /// Applies a mutation: its answer (ack.after-commit: an ack, or the refusal with the mid),
    /// the rule that decided it, and the pushes of what it changed.
    fn run_mutation(
        &mut self,
        actor: &Actor,
        mutation: Mutation,
        now_ms: u64,
        mid: Option<u64>,
    ) -> (ServerMessage, &'static str, Vec<Output>) {
        match self.apply_mutation(actor, mutation, now_ms) {
            Ok(accepted) => {
                self.stamp_views(&accepted.change);
                let pushes = self.publish(&accepted.change);
                let ack = ServerMessage::Ack {
                    mid: mid.unwrap_or(0),
                    seq: accepted.seq,
                    version: accepted.version,
                    object_key: accepted.object_key,
                };
                (ack, accepted.rule, pushes)
            }
            Err(refusal) => {
                let body = match mid {
                    Some(mid) => refusal.body.with_mid(mid),
                    None => *refusal.body,
                };
                (ServerMessage::Error(body), refusal.rule, Vec::new())
            }
        }
    }

    /// mutation.replay.window: the last replay_window_max answers of a (user, client id).
    fn remember(&mut self, key: (UserId, ClientId), mid: u64, answer: ServerMessage) {
        let max = self.settings.limits.replay_window_max;
        let window = self.replay.entry(key).or_default();
        window.newest = mid;
        window.answers.push_back((mid, answer));
        while window.answers.len() > max {
            window.answers.pop_front();
        }
    }

    /// mutation.replay.internal-not-remembered: `internal`, then close 1011; the connection's later
    /// inputs are ignored and it gets no more pushes.
    pub(crate) fn fail_connection(&mut self, conn: Conn, body: ErrorBody, rule: &'static str) -> Vec<Output> {
        let mut outputs = vec![error_to(conn, rule, body)];
        outputs.extend(self.remove_all_awareness(conn));
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.closed = true;
            connection.subscriptions.clear();
            connection.yjs_open.clear();
        }
        outputs.push(Output::Close { conn, code: CLOSE_ROOM_FAILED, rule });
        outputs
    }
}

/// The answer to a processed mid: the original, byte for byte, or `replay_expired` once it left
/// the window (or was never sent).
fn replayed(conn: Conn, mid: u64, window: &ReplayWindow) -> Output {
    match window.answers.iter().find(|(remembered, _)| *remembered == mid) {
        Some((_, answer)) => {
            Output::Send { conn, message: answer.clone(), rule: "mutation.replay.same-answer" }
        }
        None => {
            let body = ErrorBody::new(
                ErrorCode::ReplayExpired,
                format!("mutation {mid} was processed and its answer has left the replay window"),
            );
            error_to(conn, "mutation.replay.window", body.with_mid(mid))
        }
    }
}

/// conn.hello.first: `hello_required`, carrying the message's mid, req or sub (errors.typed).
fn hello_required(conn: Conn, message: &ClientMessage) -> Output {
    let body = ErrorBody::new(ErrorCode::HelloRequired, "send hello (once) before anything else");
    let body = match message {
        ClientMessage::Subscribe { sub, .. } | ClientMessage::Unsubscribe { sub } => {
            body.with_sub(sub.clone())
        }
        ClientMessage::Mutate { mid, .. } => body.with_mid(*mid),
        ClientMessage::BucketGet { req, .. } | ClientMessage::AssetList { req, .. } => body.with_req(*req),
        ClientMessage::Hello { .. } | ClientMessage::YjsClose { .. } | ClientMessage::Ping { .. } => body,
    };
    error_to(conn, "conn.hello.first", body)
}
