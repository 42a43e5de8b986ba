//! Yjs documents, one per (document, rich-text field): sync, updates, awareness, persistence
//! (docs/PROTOCOL.md §19).

use crate::room::{refuse, ConnId, Effect, Identity, Refusal, Room};
use crate::storage;
use rand_core::RngCore;
use roomlab_protocol::{DocId, ErrorBody, ErrorCode, FieldName, Role, ServerMessage, YSync, YjsFrame};
use std::collections::{BTreeMap, BTreeSet};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact, Update};

/// A v1 update with no blocks and an empty delete set.
const EMPTY_UPDATE: &[u8] = &[0, 0];

/// Updates kept in a field's log before it is compacted into one.
const YJS_UPDATES_MAX: u64 = 64;

/// Client ids one connection may announce awareness for in one field (docs/PROTOCOL.md
/// yjs.awareness); a stock client announces one.
pub const AWARENESS_CLIENTS_MAX: usize = 16;

type Key = (DocId, FieldName);

/// Awareness a connection announced in a field and has not removed: client id → last clock.
/// Never kept empty.
type Announced = BTreeMap<u64, u32>;

/// The Yjs side of a room: the loaded documents, who has each field open, and whose awareness
/// each connection announced.
#[derive(Default)]
pub(crate) struct Yjs {
    docs: BTreeMap<Key, yrs::Doc>,
    open: BTreeMap<Key, BTreeSet<ConnId>>,
    announced: BTreeMap<(ConnId, Key), Announced>,
}

impl Yjs {
    /// Closes a field on a connection; returns the awareness it had announced there.
    fn close(&mut self, conn: ConnId, key: &Key) -> Option<Announced> {
        if let Some(open) = self.open.get_mut(key) {
            open.remove(&conn);
            if open.is_empty() {
                self.open.remove(key);
            }
        }
        self.announced.remove(&(conn, key.clone()))
    }

    /// Closes every field of a connection; returns the awareness it had announced, by field.
    fn close_all(&mut self, conn: ConnId) -> Vec<(Key, Announced)> {
        self.open.retain(|_, open| {
            open.remove(&conn);
            !open.is_empty()
        });
        let keys: Vec<(ConnId, Key)> = self.announced.keys().filter(|(c, _)| *c == conn).cloned().collect();
        keys.into_iter().filter_map(|key| self.announced.remove(&key).map(|ids| (key.1, ids))).collect()
    }

    /// Forgets a purged document's fields (their rows go with the document's).
    pub fn purge(&mut self, doc: &DocId) {
        self.docs.retain(|(d, _), _| d != doc);
        self.open.retain(|(d, _), _| d != doc);
    }
}

impl Room {
    /// Handles one Yjs frame from a connection. `rng` gives the client ids of the yrs documents the
    /// room loads, so a run is reproducible from its seed.
    pub fn handle_yjs(&mut self, conn: ConnId, frame: YjsFrame, rng: &mut dyn RngCore) -> Vec<Effect> {
        if let Some(closed) = self.commit_deferred(conn) {
            return closed;
        }
        let Some(peer) = self.connections.get(&conn) else {
            return Vec::new();
        };
        if peer.client.is_none() {
            let message = ServerMessage::Error(ErrorBody::new(ErrorCode::HelloRequired, "send hello first"));
            return vec![Effect::Send { conn, message }];
        }
        let reader = self.reader(conn);
        match self.yjs_frame(conn, &frame, &reader, rng) {
            Ok(effects) => effects,
            Err(body) => {
                let body =
                    ErrorBody { field: Some(frame.field.to_string()), doc: Some(frame.doc.clone()), ..*body };
                let message = format!("{}/{}: {}", frame.doc, frame.field, body.message);
                vec![Effect::Send { conn, message: ServerMessage::Error(ErrorBody { message, ..body }) }]
            }
        }
    }

    fn yjs_frame(
        &mut self,
        conn: ConnId,
        frame: &YjsFrame,
        reader: &Identity,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<Effect>, Refusal> {
        let message = YSync::parse(&frame.payload)
            .map_err(|e| refuse(ErrorCode::BadFrame, format!("malformed y-protocols message: {e}")))?;
        self.check_yjs_field(&frame.doc, &frame.field, reader)?;
        let key = (frame.doc.clone(), frame.field.clone());
        self.load_yjs(&key, rng)?;
        let reply = |payload: Vec<u8>| Effect::Yjs {
            conn,
            frame: YjsFrame { doc: frame.doc.clone(), field: frame.field.clone(), payload },
        };
        match message {
            YSync::Step1(state_vector) => {
                roomlab_protocol::check_yjs_state_vector(state_vector)
                    .map_err(|e| refuse(ErrorCode::BadFrame, format!("bad state vector: {e}")))?;
                let state_vector = StateVector::decode_v1(state_vector)
                    .map_err(|e| refuse(ErrorCode::BadFrame, format!("bad state vector: {e}")))?;
                self.yjs.open.entry(key.clone()).or_default().insert(conn);
                let transaction = self.yjs.docs[&key].transact();
                let missing = transaction.encode_diff_v1(&state_vector);
                let own = transaction.state_vector().encode_v1();
                Ok(vec![reply(YSync::Step2(&missing).encode()), reply(YSync::Step1(&own).encode())])
            }
            YSync::Step2(update) | YSync::Update(update) => self.yjs_update(conn, &key, update, reader),
            YSync::Awareness(_) => self.awareness(conn, key, &frame.payload),
        }
    }

    /// yjs.awareness: relays an awareness update and remembers whose awareness the connection
    /// announced, so that closing the field can remove it.
    fn awareness(&mut self, conn: ConnId, key: Key, payload: &[u8]) -> Result<Vec<Effect>, Refusal> {
        let entries = roomlab_protocol::awareness_entries(payload)
            .map_err(|e| refuse(ErrorCode::BadFrame, format!("malformed awareness update: {e}")))?;
        let mut announced = self.yjs.announced.get(&(conn, key.clone())).cloned().unwrap_or_default();
        for entry in entries {
            match entry.removed {
                true => announced.remove(&entry.client),
                false => announced.insert(entry.client, entry.clock),
            };
        }
        if announced.len() > AWARENESS_CLIENTS_MAX {
            let message =
                format!("a connection announces at most {AWARENESS_CLIENTS_MAX} awareness client ids");
            return Err(refuse(ErrorCode::LimitExceeded, message));
        }
        let effects = self.relay(conn, &key, payload);
        match announced.is_empty() {
            true => self.yjs.announced.remove(&(conn, key)),
            false => self.yjs.announced.insert((conn, key), announced),
        };
        Ok(effects)
    }

    /// yjs.awareness: a connection closed a field; the field's other connections learn that the
    /// awareness it announced is gone (state `null`, one clock past the last relayed).
    fn remove_awareness(&self, conn: ConnId, key: &Key, announced: Announced) -> Vec<Effect> {
        self.relay(conn, key, &awareness_removal(&announced))
    }

    /// Closes one field of a connection (`yjs_close`).
    pub(crate) fn yjs_close(&mut self, conn: ConnId, doc: &DocId, field: &FieldName) -> Vec<Effect> {
        let key = (doc.clone(), field.clone());
        match self.yjs.close(conn, &key) {
            Some(announced) => self.remove_awareness(conn, &key, announced),
            None => Vec::new(),
        }
    }

    /// Closes every field of a closed connection.
    pub(crate) fn yjs_close_all(&mut self, conn: ConnId) -> Vec<Effect> {
        let closed = self.yjs.close_all(conn);
        closed.into_iter().flat_map(|(key, announced)| self.remove_awareness(conn, &key, announced)).collect()
    }

    /// docs/PROTOCOL.md yjs.doc-live, yjs.access (read), yjs.richtext-field.
    fn check_yjs_field(&self, doc: &DocId, field: &FieldName, reader: &Identity) -> Result<(), Refusal> {
        // errors.precedence: a `sys:` id is `protected` before its existence or its access count.
        if doc.is_system() {
            return Err(refuse(ErrorCode::Protected, format!("{doc} has no Yjs fields")));
        }
        let document =
            self.docs.get(doc).ok_or_else(|| refuse(ErrorCode::NotFound, format!("no document {doc}")))?;
        if document.deleted.is_some() {
            return Err(Box::new(
                ErrorBody::new(ErrorCode::Deleted, format!("{doc} is deleted")).with_seq(document.seq),
            ));
        }
        if !self.can_read(reader, doc, document) {
            return Err(refuse(ErrorCode::Forbidden, format!("you may not read {doc}")));
        }
        let schema = self.schema(&document.doc_type);
        if schema.declares_fields() && !schema.is_richtext(field.as_str()) {
            return Err(refuse(
                ErrorCode::Invalid,
                format!("{field} is not a richtext field of {}", document.doc_type),
            ));
        }
        Ok(())
    }

    /// Loads a field's yrs document from its stored updates, once.
    fn load_yjs(&mut self, key: &Key, rng: &mut dyn RngCore) -> Result<(), Refusal> {
        if self.yjs.docs.contains_key(key) {
            return Ok(());
        }
        let updates = match storage::yjs_field_updates(&self.db, key.0.as_str(), key.1.as_str()) {
            Ok(updates) => updates,
            Err(e) => {
                self.storage_failures += 1;
                return Err(refuse(ErrorCode::Internal, format!("storage failed: {e}")));
            }
        };
        // A 53-bit client id, as Yjs requires; the guid, too, comes from the caller's RNG.
        let client_id = rng.next_u64() & ((1 << 53) - 1);
        let mut options = yrs::Options::with_client_id(yrs::block::ClientID::new(client_id));
        options.guid = yrs::uuid_v4_from(u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()));
        let doc = yrs::Doc::with_options(options);
        {
            let mut transaction = doc.transact_mut();
            for update in updates {
                let update = Update::decode_v1(&update).expect("stored Yjs updates decode");
                transaction.apply_update(update).expect("stored Yjs updates apply");
            }
        }
        self.yjs.docs.insert(key.clone(), doc);
        Ok(())
    }

    /// Applies an update from a writer, persists it, and relays it to the field's other connections.
    fn yjs_update(
        &mut self,
        conn: ConnId,
        key: &Key,
        bytes: &[u8],
        reader: &Identity,
    ) -> Result<Vec<Effect>, Refusal> {
        // docs/PROTOCOL.md yjs.access: refused before it is decoded (decoding costs the sender
        // nothing and the room a great deal) and so before it is applied, since yrs cannot undo a
        // merge. An empty update (a reader's step 2 with nothing to add) is no write.
        let document = &self.docs[&key.0];
        let allowed = reader.role >= Role::Member
            && self.schema(&document.doc_type).can_write(reader.role, Some(reader.user == document.owner));
        if bytes == EMPTY_UPDATE {
            return Ok(Vec::new());
        }
        if !allowed && !roomlab_protocol::Mutant::ViewerYjsApplied.planted(self.config.mutant) {
            return Err(refuse(ErrorCode::Forbidden, format!("you may not write {}", key.0)));
        }
        // limits.decode-work: the update's counts must fit its length before yrs reserves for them.
        roomlab_protocol::check_yjs_update(bytes)
            .map_err(|e| refuse(ErrorCode::Invalid, format!("bad Yjs update: {e}")))?;
        let update = Update::decode_v1(bytes)
            .map_err(|e| refuse(ErrorCode::Invalid, format!("bad Yjs update: {e}")))?;
        if update.is_empty() {
            return Ok(Vec::new());
        }
        let doc = &self.yjs.docs[key];
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| refuse(ErrorCode::Invalid, format!("the update does not apply: {e}")))?;
        let persisted = (|| {
            let transaction = self.db.savepoint()?;
            let count = storage::append_yjs(&transaction, key.0.as_str(), key.1.as_str(), bytes)?;
            if count > YJS_UPDATES_MAX {
                let state = doc.transact().encode_state_as_update_v1(&StateVector::default());
                storage::compact_yjs(&transaction, key.0.as_str(), key.1.as_str(), &state)?;
            }
            transaction.commit()
        })();
        if let Err(e) = persisted {
            // The merge cannot be undone in memory; drop the loaded document so the next access
            // reloads the committed state.
            self.yjs.docs.remove(key);
            self.storage_failures += 1;
            return Err(refuse(ErrorCode::Internal, format!("storage failed: {e}")));
        }
        Ok(self.relay(conn, key, &YSync::Update(bytes).encode()))
    }

    /// Sends a payload to every other connection with the field open.
    fn relay(&self, from: ConnId, key: &Key, payload: &[u8]) -> Vec<Effect> {
        let open = self.yjs.open.get(key).into_iter().flatten();
        open.filter(|conn| **conn != from)
            .map(|conn| Effect::Yjs {
                conn: *conn,
                frame: YjsFrame { doc: key.0.clone(), field: key.1.clone(), payload: payload.to_vec() },
            })
            .collect()
    }

    /// A field's Yjs text as the room holds it (for tests and the simulation's checks).
    pub fn yjs_state(&self, doc: &DocId, field: &FieldName) -> Option<Vec<u8>> {
        let doc = self.yjs.docs.get(&(doc.clone(), field.clone()))?;
        Some(doc.transact().encode_state_as_update_v1(&StateVector::default()))
    }
}

/// The y-protocols awareness message that removes `announced`'s clients, in client id order so
/// that its bytes depend on nothing but the ids.
fn awareness_removal(announced: &Announced) -> Vec<u8> {
    use roomlab_protocol::write_var_uint;
    let mut update = Vec::new();
    write_var_uint(&mut update, announced.len() as u64);
    for (client, clock) in announced {
        write_var_uint(&mut update, *client);
        write_var_uint(&mut update, u64::from(clock.wrapping_add(1)));
        write_var_uint(&mut update, 4);
        update.extend_from_slice(b"null");
    }
    let mut message = Vec::with_capacity(update.len() + 4);
    write_var_uint(&mut message, update.len() as u64);
    message.extend_from_slice(&update);
    YSync::Awareness(&message).encode()
}
