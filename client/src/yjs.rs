//! Yjs text on the client (docs/PROTOCOL.md §19): one yrs document per open (document, field),
//! synced over the main socket with y-protocols messages in `Y` envelopes. The rich text of a field
//! is the document's root `Y.Text` named after the field, as a stock Yjs client would call
//! `ydoc.getText(field)`.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use roomlab_protocol::{ClientId, DocId, ErrorCode, FieldName, YSync, YjsFrame};
use std::collections::BTreeMap;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, StateVector, Transact, Update};

/// A field's key: the document and the rich-text field.
pub(crate) type FieldKey = (DocId, FieldName);

/// One open rich-text field.
struct Field {
    doc: yrs::Doc,
    /// Handles open on it; the last one dropped closes it.
    refs: usize,
    /// Whether the server's step 2 arrived since the link came up.
    synced: bool,
    /// The server refused the field before syncing it (a missing or deleted document, no read
    /// access) on this link: settled, with nothing to wait for until the next connection.
    refused: Option<ErrorCode>,
    /// The server refused an edit of the field after its sync, on this link: the local text holds
    /// edits the server does not have.
    diverged: bool,
}

/// The client's open rich-text fields, each a local Yjs document.
pub struct YjsFields {
    fields: BTreeMap<FieldKey, Field>,
    /// Gives each yrs document its client id and guid, so a seeded client is reproducible.
    rng: ChaCha8Rng,
    fields_max: usize,
    edits_made: u64,
}

/// What applying a frame from the server produced.
pub(crate) enum Received {
    /// Nothing to do (awareness, a field no longer open).
    Nothing,
    /// The server's step 1: answer with this step 2.
    Answer(YjsFrame),
    /// The field's text changed (or the sync completed).
    Changed,
}

/// Why a frame from the server could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YjsError {
    /// The payload is not a y-protocols message.
    #[error("malformed y-protocols message: {0}")]
    Malformed(String),
    /// The update does not decode or apply.
    #[error("bad Yjs update: {0}")]
    BadUpdate(String),
}

fn frame(key: &FieldKey, message: YSync<'_>) -> YjsFrame {
    YjsFrame { doc: key.0.clone(), field: key.1.clone(), payload: message.encode() }
}

impl YjsFields {
    pub(crate) fn new(client: &ClientId, seed: u64, fields_max: usize) -> YjsFields {
        // Two clients with the same Yjs client id corrupt each other's edits, so the stream mixes
        // in the client id (FNV-1a), and differs from the reconnect jitter's, seeded with `seed`.
        let mut hash = 0xcbf2_9ce4_8422_2325_u64;
        for byte in client.as_str().bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        let rng = ChaCha8Rng::seed_from_u64(seed ^ hash ^ 0x59_6a_73);
        YjsFields { fields: BTreeMap::new(), rng, fields_max, edits_made: 0 }
    }

    /// Adds a reference to a field; the first opens it. Returns the sync step 1 to send, or
    /// `None` when it was open already. Fails when `fields_max` fields are open.
    pub(crate) fn open(&mut self, key: &FieldKey) -> Result<Option<YjsFrame>, usize> {
        if let Some(field) = self.fields.get_mut(key) {
            field.refs += 1;
            return Ok(None);
        }
        if self.fields.len() == self.fields_max {
            return Err(self.fields_max);
        }
        // A 53-bit client id, as Yjs requires, and offsets in UTF-16 code units, as Yjs in
        // JavaScript counts them, so an index means the same on every client.
        let client_id = self.rng.next_u64() & ((1 << 53) - 1);
        let mut options = yrs::Options::with_client_id(yrs::block::ClientID::new(client_id));
        options.guid =
            yrs::uuid_v4_from(u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64()));
        options.offset_kind = yrs::OffsetKind::Utf16;
        let doc = yrs::Doc::with_options(options);
        doc.get_or_insert_text(key.1.as_str());
        let step1 = self.step1(key, &doc);
        self.fields
            .insert(key.clone(), Field { doc, refs: 1, synced: false, refused: None, diverged: false });
        Ok(Some(step1))
    }

    fn step1(&self, key: &FieldKey, doc: &yrs::Doc) -> YjsFrame {
        let state_vector = doc.transact().state_vector().encode_v1();
        frame(key, YSync::Step1(&state_vector))
    }

    /// Drops a reference; returns true when it was the last (the field is closed).
    pub(crate) fn close(&mut self, key: &FieldKey) -> bool {
        let Some(field) = self.fields.get_mut(key) else { return false };
        field.refs -= 1;
        if field.refs > 0 {
            return false;
        }
        self.fields.remove(key);
        true
    }

    /// The step 1 of every open field, sent when the link comes up (each starts unsynced).
    pub(crate) fn resync(&mut self) -> Vec<YjsFrame> {
        let mut frames = Vec::with_capacity(self.fields.len());
        for (key, field) in &mut self.fields {
            field.synced = false;
            field.refused = None;
            let state_vector = field.doc.transact().state_vector().encode_v1();
            frames.push(frame(key, YSync::Step1(&state_vector)));
        }
        frames
    }

    /// Edits a field's text; returns the update to send, or `None` when the edit changed nothing.
    pub(crate) fn edit(
        &mut self,
        key: &FieldKey,
        edit: impl FnOnce(&yrs::TextRef, &mut yrs::TransactionMut),
    ) -> Option<YjsFrame> {
        let field = self.fields.get(key)?;
        let text = field.doc.get_or_insert_text(key.1.as_str());
        let mut transaction = field.doc.transact_mut();
        let before = transaction.state_vector();
        edit(&text, &mut transaction);
        let update = transaction.encode_diff_v1(&before);
        drop(transaction);
        let empty = Update::decode_v1(&update).map(|u| u.is_empty()).unwrap_or(true);
        self.edits_made += u64::from(!empty);
        (!empty).then(|| frame(key, YSync::Update(&update)))
    }

    /// Applies a frame from the server.
    pub(crate) fn receive(&mut self, frame_in: &YjsFrame) -> Result<Received, YjsError> {
        let key = (frame_in.doc.clone(), frame_in.field.clone());
        let Some(field) = self.fields.get_mut(&key) else { return Ok(Received::Nothing) };
        let message = YSync::parse(&frame_in.payload).map_err(|e| YjsError::Malformed(e.to_string()))?;
        match message {
            YSync::Step1(state_vector) => {
                // A hostile server's counts must fit their bytes before yrs reserves for them.
                roomlab_protocol::check_yjs_state_vector(state_vector)
                    .map_err(|e| YjsError::Malformed(e.to_string()))?;
                let state_vector =
                    StateVector::decode_v1(state_vector).map_err(|e| YjsError::Malformed(e.to_string()))?;
                let missing = field.doc.transact().encode_diff_v1(&state_vector);
                Ok(Received::Answer(frame(&key, YSync::Step2(&missing))))
            }
            YSync::Step2(bytes) | YSync::Update(bytes) => {
                roomlab_protocol::check_yjs_update(bytes).map_err(|e| YjsError::BadUpdate(e.to_string()))?;
                let update = Update::decode_v1(bytes).map_err(|e| YjsError::BadUpdate(e.to_string()))?;
                field
                    .doc
                    .transact_mut()
                    .apply_update(update)
                    .map_err(|e| YjsError::BadUpdate(e.to_string()))?;
                if matches!(message, YSync::Step2(_)) {
                    field.synced = true;
                    field.refused = None;
                }
                Ok(Received::Changed)
            }
            YSync::Awareness(_) => Ok(Received::Nothing),
        }
    }

    /// The field's text, when it is open.
    pub fn text(&self, key: &FieldKey) -> Option<String> {
        let field = self.fields.get(key)?;
        let text = field.doc.get_or_insert_text(key.1.as_str());
        Some(text.get_string(&field.doc.transact()))
    }

    /// The field's whole state as one Yjs v1 update, when it is open.
    pub fn state(&self, key: &FieldKey) -> Option<Vec<u8>> {
        let field = self.fields.get(key)?;
        Some(field.doc.transact().encode_state_as_update_v1(&StateVector::default()))
    }

    /// Whether the field has had the server's step 2 since the link came up.
    pub fn is_synced(&self, key: &FieldKey) -> bool {
        self.fields.get(key).is_some_and(|field| field.synced)
    }

    /// Why the server refused the field on this connection, if it did before syncing it.
    pub fn refused(&self, key: &FieldKey) -> Option<ErrorCode> {
        self.fields.get(key).and_then(|field| field.refused)
    }

    /// Whether the server refused an edit of the field since its sync on this connection (the
    /// document went away, or the user may no longer write it): until the next sync, the local
    /// text holds edits the server does not.
    pub fn diverged(&self, key: &FieldKey) -> bool {
        self.fields.get(key).is_some_and(|field| field.diverged)
    }

    /// Edits that changed a text, since the client began.
    pub fn edits_made(&self) -> u64 {
        self.edits_made
    }

    /// Every open field.
    pub fn keys(&self) -> impl Iterator<Item = &FieldKey> {
        self.fields.keys()
    }

    /// Whether every open field is synced, or was refused, on this connection.
    pub fn settled(&self) -> bool {
        self.fields.values().all(|field| field.synced || field.refused.is_some())
    }

    /// The server refused a frame of a field. Before the sync that can only be the sync itself;
    /// after it, an update (a reader's, or one to a document gone meanwhile), which leaves the sync
    /// standing and the local text ahead of the server's.
    pub(crate) fn refused_frame(&mut self, key: &FieldKey, code: ErrorCode) {
        if let Some(field) = self.fields.get_mut(key) {
            if !field.synced {
                field.refused = Some(code);
            } else {
                field.diverged = true;
            }
        }
    }

    /// The link went down: no field is synced until its next step 2.
    pub(crate) fn disconnected(&mut self) {
        for field in self.fields.values_mut() {
            field.synced = false;
            field.refused = None;
            field.diverged = false;
        }
    }
}

/// The text of a Yjs v1 update applied to an empty document: how a checker reads a server's or a
/// client's state without holding a document open.
pub fn text_of_state(field: &FieldName, state: &[u8]) -> Result<String, YjsError> {
    let doc = yrs::Doc::with_options(yrs::Options {
        offset_kind: yrs::OffsetKind::Utf16,
        ..yrs::Options::with_client_id(yrs::block::ClientID::new(1))
    });
    let text = doc.get_or_insert_text(field.as_str());
    let update = Update::decode_v1(state).map_err(|e| YjsError::BadUpdate(e.to_string()))?;
    doc.transact_mut().apply_update(update).map_err(|e| YjsError::BadUpdate(e.to_string()))?;
    let result = text.get_string(&doc.transact());
    Ok(result)
}
