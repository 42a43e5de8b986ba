//! Yjs (§19): one Yjs document per (document, rich-text field), synced, merged and relayed.

use crate::state::{Actor, Refusal};
use crate::views::system_id;
use crate::{Conn, Oracle, Output};
use roomlab_protocol::{DocId, ErrorCode, FieldName, YSync, YjsFrame};
use std::sync::Arc;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Transact, Update};

/// y-protocols message type and sync steps (§19).
const MESSAGE_SYNC: u64 = 0;
const SYNC_STEP_1: u64 = 0;
const SYNC_STEP_2: u64 = 1;
const SYNC_UPDATE: u64 = 2;
/// A v1 update with no blocks and an empty delete set: what a reader with nothing new sends.
const EMPTY_UPDATE: &[u8] = &[0, 0];

/// The oracle's own Yjs client id: it never edits, so the id never appears in a state.
const ORACLE_CLIENT_ID: u64 = 0;

/// The merged Yjs state of one field (yjs.persist): every accepted update in order, and a document
/// built from them. A snapshot of the oracle shares the updates and rebuilds its own document, so
/// that a rollback never sees updates applied after it was taken.
pub(crate) struct YjsField {
    updates: Vec<Arc<[u8]>>,
    document: Option<Doc>,
}

impl Clone for YjsField {
    fn clone(&self) -> Self {
        YjsField { updates: self.updates.clone(), document: None }
    }
}

impl YjsField {
    fn empty() -> YjsField {
        YjsField { updates: Vec::new(), document: None }
    }

    /// The field's document, built on first use.
    fn document(&mut self) -> &Doc {
        let updates = &self.updates;
        self.document.get_or_insert_with(|| rebuilt(updates))
    }

    /// Merges an update that decoded (checked by the caller) and keeps it.
    fn merge(&mut self, update: &[u8]) {
        apply(self.document(), update);
        self.updates.push(Arc::from(update));
    }

    /// The field's root text (`ydoc.getText(field)`), as merged.
    pub(crate) fn text(&self, field: &FieldName) -> String {
        let built;
        let document = match &self.document {
            Some(document) => document,
            None => {
                built = rebuilt(&self.updates);
                &built
            }
        };
        let transaction = document.transact();
        transaction.get_text(field.as_str()).map(|text| text.get_string(&transaction)).unwrap_or_default()
    }
}

/// A document holding `updates`, applied in order.
fn rebuilt(updates: &[Arc<[u8]>]) -> Doc {
    let document = Doc::with_client_id(ORACLE_CLIENT_ID);
    for update in updates {
        apply(&document, update);
    }
    document
}

/// Applies an update that is known to decode.
fn apply(document: &Doc, update: &[u8]) {
    let update = Update::decode_v1(update).expect("only decodable updates are kept");
    // An update yrs cannot integrate is left out of the state, as a server using Yjs would.
    let _ = document.transact_mut().apply_update(update);
}

/// Appends a lib0 var-uint.
fn push_var_uint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A y-protocols sync message: type sync, the step, then the var-bytes payload.
fn sync_message(step: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    push_var_uint(&mut out, MESSAGE_SYNC);
    push_var_uint(&mut out, step);
    push_var_uint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

/// A refusal of a Yjs frame, carrying its document and field.
fn yjs_refusal(rule: &'static str, code: ErrorCode, frame: &YjsFrame, message: String) -> Refusal {
    Refusal::new(rule, code, message).with_doc(frame.doc.clone()).with_field(frame.field.as_str())
}

/// The parts of a y-protocols message the room acts on, owned.
enum Message {
    Step1(Vec<u8>),
    Step2(Vec<u8>),
    Update(Vec<u8>),
    Awareness(Vec<u8>),
}

impl Oracle {
    /// One Yjs frame (yjs.sync, yjs.broadcast, yjs.access, yjs.doc-live, yjs.richtext-field).
    pub(crate) fn handle_yjs(
        &mut self,
        conn: Conn,
        frame: YjsFrame,
        now_ms: u64,
        commit_fails: bool,
    ) -> Vec<Output> {
        let _ = now_ms; // Yjs state carries no server time.
        let Some(connection) = self.connections.get(&conn) else { return Vec::new() };
        if connection.closed {
            return Vec::new();
        }
        if connection.client.is_none() {
            let refusal =
                yjs_refusal("conn.hello.first", ErrorCode::HelloRequired, &frame, "send hello first".into());
            return vec![refused(conn, refusal)];
        }
        let actor = self.actor(&connection.identity);
        let message = match YSync::parse(&frame.payload) {
            Ok(YSync::Step1(bytes)) => Message::Step1(bytes.to_vec()),
            Ok(YSync::Step2(bytes)) => Message::Step2(bytes.to_vec()),
            Ok(YSync::Update(bytes)) => Message::Update(bytes.to_vec()),
            Ok(YSync::Awareness(_)) => Message::Awareness(frame.payload.clone()),
            Err(error) => {
                let refusal =
                    yjs_refusal("conn.malformed.survives", ErrorCode::BadFrame, &frame, error.to_string());
                return vec![refused(conn, refusal)];
            }
        };
        if let Err(refusal) = self.check_yjs_read(&actor, &frame) {
            return vec![refused(conn, refusal)];
        }
        match message {
            Message::Step1(state_vector) => self.sync_step_1(conn, &frame, &state_vector),
            Message::Awareness(payload) => self.awareness(conn, &frame, &payload),
            Message::Step2(update) | Message::Update(update) => {
                self.merge_update(conn, &actor, frame, &update, commit_fails)
            }
        }
    }

    /// yjs.access (read), yjs.doc-live, yjs.richtext-field: the checks every Yjs frame passes.
    fn check_yjs_read(&self, actor: &Actor, frame: &YjsFrame) -> Result<(), Refusal> {
        let doc = &frame.doc;
        if system_id(doc).is_some() {
            return Err(yjs_refusal(
                "yjs.doc-live",
                ErrorCode::Protected,
                frame,
                format!("{doc} has no Yjs fields"),
            ));
        }
        let existing = self
            .live_document(doc, "yjs.doc-live")
            .map_err(|refusal| refusal.with_doc(doc.clone()).with_field(frame.field.as_str()))?;
        if !self.can_read(actor, doc, existing) {
            return Err(yjs_refusal(
                "yjs.access",
                ErrorCode::Forbidden,
                frame,
                format!("you may not read {doc}"),
            ));
        }
        let field = frame.field.as_str();
        if let Some(schema) = self.schemas.get(&existing.doc_type) {
            if !schema.declares_richtext(field) {
                return Err(yjs_refusal(
                    "yjs.richtext-field",
                    ErrorCode::Invalid,
                    frame,
                    format!("{field} is not a richtext field of {}", existing.doc_type),
                ));
            }
        }
        Ok(())
    }

    /// yjs.sync: sync step 2 with what the client lacks, then the room's own step 1; the field is
    /// open on this connection from then on.
    fn sync_step_1(&mut self, conn: Conn, frame: &YjsFrame, state_vector: &[u8]) -> Vec<Output> {
        // limits.decode-work: the state vector's counts are walked before it is decoded.
        let walked = crate::yjs_walk::state_vector_fits(state_vector);
        let Some(state_vector) = walked.then(|| StateVector::decode_v1(state_vector).ok()).flatten() else {
            let refusal = yjs_refusal(
                if walked { "conn.malformed.survives" } else { "limits.decode-work" },
                ErrorCode::BadFrame,
                frame,
                "bad Yjs state vector".into(),
            );
            return vec![refused(conn, refusal)];
        };
        let key = (frame.doc.clone(), frame.field.clone());
        let mut scratch = YjsField::empty();
        let field = self.yjs.get_mut(&key).unwrap_or(&mut scratch);
        let transaction = field.document().transact();
        let missing = transaction.encode_state_as_update_v1(&state_vector);
        let own = transaction.state_vector().encode_v1();
        drop(transaction);
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.yjs_open.insert(key);
        }
        let answer = |step: u64, bytes: &[u8]| Output::Yjs {
            conn,
            frame: YjsFrame {
                doc: frame.doc.clone(),
                field: frame.field.clone(),
                payload: sync_message(step, bytes),
            },
            rule: "yjs.sync",
        };
        vec![answer(SYNC_STEP_2, &missing), answer(SYNC_STEP_1, &own)]
    }

    /// yjs.broadcast and yjs.access: an update (or a step 2 that changes the state) needs write
    /// access and is refused before it is applied; an accepted one is merged and relayed.
    fn merge_update(
        &mut self,
        conn: Conn,
        actor: &Actor,
        frame: YjsFrame,
        update: &[u8],
        commit_fails: bool,
    ) -> Vec<Output> {
        // yjs.access with limits.decode-work: the empty update (a reader's step 2 with nothing to
        // add) is no write; any other update from a connection that may not write is refused
        // before it is decoded.
        if update == EMPTY_UPDATE {
            return Vec::new();
        }
        if self.check_write(actor, &self.docs[&frame.doc]).is_err() {
            let message = format!("you may not write {}", frame.doc);
            return vec![refused(conn, yjs_refusal("yjs.access", ErrorCode::Forbidden, &frame, message))];
        }
        if !crate::yjs_walk::update_fits(update) || Update::decode_v1(update).is_err() {
            let refusal =
                yjs_refusal("limits.decode-work", ErrorCode::Invalid, &frame, "bad Yjs update".into());
            return vec![refused(conn, refusal)];
        }
        if commit_fails {
            let refusal = yjs_refusal(
                "yjs.broadcast",
                ErrorCode::Internal,
                &frame,
                "the room could not commit this update".into(),
            );
            return self.fail_connection(conn, *refusal.body, refusal.rule);
        }
        let key = (frame.doc.clone(), frame.field.clone());
        self.yjs.entry(key).or_insert_with(YjsField::empty).merge(update);
        // yjs.broadcast: a step 2's content reaches the others as an update, since for them it
        // answers no step 1 of theirs.
        let relayed = YjsFrame { payload: sync_message(SYNC_UPDATE, update), ..frame };
        self.relay(conn, &relayed)
    }

    /// yjs.broadcast: the frame, unchanged, to every other connection with the field open.
    /// yjs.awareness: an awareness update is relayed like an update and never stored; the room
    /// remembers which client ids the connection announced (a `null` state removes one), at most
    /// AWARENESS_CLIENTS_MAX of them.
    fn awareness(&mut self, conn: Conn, frame: &YjsFrame, payload: &[u8]) -> Vec<Output> {
        let Some(entries) = awareness_entries(payload) else {
            let message = "malformed awareness update".to_string();
            return vec![refused(conn, yjs_refusal("yjs.awareness", ErrorCode::BadFrame, frame, message))];
        };
        let key = (frame.doc.clone(), frame.field.clone());
        let connection = self.connections.get(&conn).expect("routed for a known connection");
        let mut announced = connection.announced.get(&key).cloned().unwrap_or_default();
        for (client, clock, removed) in entries {
            if removed {
                announced.remove(&client);
            } else {
                announced.insert(client, clock);
            }
        }
        if announced.len() > AWARENESS_CLIENTS_MAX {
            let message = format!("at most {AWARENESS_CLIENTS_MAX} awareness client ids");
            return vec![refused(
                conn,
                yjs_refusal("yjs.awareness", ErrorCode::LimitExceeded, frame, message),
            )];
        }
        self.cover("yjs.awareness:relay");
        let connection = self.connections.get_mut(&conn).expect("routed for a known connection");
        connection.announced.insert(key, announced);
        self.relay(conn, frame)
    }

    /// yjs.awareness: the connection closed the field (yjs_close, disconnect, or a close by the
    /// room); its announced client ids are removed for the field's other connections, each with
    /// state `null` at one past its last clock, in client id order.
    pub(crate) fn remove_awareness(&mut self, conn: Conn, key: (DocId, FieldName)) -> Vec<Output> {
        let Some(connection) = self.connections.get_mut(&conn) else { return Vec::new() };
        let announced = connection.announced.remove(&key).unwrap_or_default();
        if announced.is_empty() {
            return Vec::new();
        }
        self.cover("yjs.awareness:removed");
        let mut update = Vec::new();
        push_var_uint(&mut update, announced.len() as u64);
        for (client, clock) in &announced {
            push_var_uint(&mut update, *client);
            push_var_uint(&mut update, u64::from(clock.wrapping_add(1)));
            push_var_uint(&mut update, 4);
            update.extend_from_slice(b"null");
        }
        let mut payload = vec![1];
        push_var_uint(&mut payload, update.len() as u64);
        payload.extend_from_slice(&update);
        let frame = YjsFrame { doc: key.0, field: key.1, payload };
        self.relay(conn, &frame)
            .into_iter()
            .map(|output| match output {
                Output::Yjs { conn, frame, .. } => Output::Yjs { conn, frame, rule: "yjs.awareness" },
                other => other,
            })
            .collect()
    }

    /// Every field's awareness removal for a connection that is closing.
    pub(crate) fn remove_all_awareness(&mut self, conn: Conn) -> Vec<Output> {
        let keys: Vec<(DocId, FieldName)> = match self.connections.get(&conn) {
            Some(connection) => connection.announced.keys().cloned().collect(),
            None => return Vec::new(),
        };
        keys.into_iter().flat_map(|key| self.remove_awareness(conn, key)).collect()
    }

    fn relay(&mut self, from: Conn, frame: &YjsFrame) -> Vec<Output> {
        let key = (frame.doc.clone(), frame.field.clone());
        self.connections
            .iter()
            .filter(|(conn, connection)| {
                **conn != from && !connection.closed && connection.yjs_open.contains(&key)
            })
            .map(|(conn, _)| Output::Yjs { conn: *conn, frame: frame.clone(), rule: "yjs.broadcast" })
            .collect()
    }
}

/// A refused Yjs frame's error to its sender.
fn refused(conn: Conn, refusal: Refusal) -> Output {
    Output::Send { conn, message: roomlab_protocol::ServerMessage::Error(*refusal.body), rule: refusal.rule }
}

/// Client ids one connection may announce awareness for in one field (yjs.awareness).
pub const AWARENESS_CLIENTS_MAX: usize = 16;

/// The entries of a y-protocols awareness message (var-uint 1, then the update as var-bytes:
/// a count, then per client its id, clock and JSON state): (client, clock, removed).
fn awareness_entries(message: &[u8]) -> Option<Vec<(u64, u32, bool)>> {
    let mut at = 0;
    if read_var_uint(message, &mut at)? != 1 {
        return None;
    }
    let length = usize::try_from(read_var_uint(message, &mut at)?).ok()?;
    let update = message.get(at..at.checked_add(length)?)?;
    let mut at = 0;
    let count = read_var_uint(update, &mut at)?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let client = read_var_uint(update, &mut at)?;
        let clock = u32::try_from(read_var_uint(update, &mut at)?).ok()?;
        let length = usize::try_from(read_var_uint(update, &mut at)?).ok()?;
        let json = update.get(at..at.checked_add(length)?)?;
        at += length;
        entries.push((client, clock, json == b"null"));
    }
    Some(entries)
}

fn read_var_uint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}
