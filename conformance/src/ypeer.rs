//! A stock y-websocket client, as the y-websocket group's cases drive it: one yrs document per
//! connection name, the sync and awareness protocols of y-protocols, and nothing of roomlab's.
//!
//! It behaves as `WebsocketProvider` does: on open it sends sync step 1 (its state vector), it
//! answers the server's step 1 with step 2 (what the server lacks, so offline edits upload), it
//! applies every step 2 and update it receives, and it sends each local edit as an update. The
//! checks read the document's text, so content is compared between clients, never bytes of a frame.

use std::collections::BTreeMap;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Text, Transact, Update};

/// What one received y-protocols message did to the peer.
pub enum Received {
    /// A sync message or awareness update was applied; nothing to answer.
    Applied(String),
    /// The server sent its step 1; the peer answers with this step 2 message.
    Answer(String, Vec<u8>),
    /// The server refused the peer (y-protocols `auth` permission denied).
    Denied(String),
    /// The bytes are not a y-protocols message the peer could apply.
    Malformed(String),
}

/// One awareness state as a peer last saw it: the clock and the JSON (None: removed).
type AwarenessState = (u32, Option<serde_json::Value>);

/// A stock client's document and what it knows of others' awareness.
pub struct YPeer {
    doc: yrs::Doc,
    /// The document's shared text: the field's name, as roomlab's spec and stock editors use.
    field: String,
    /// The document it edits, for as long as the case runs.
    doc_name: String,
    /// This peer's awareness clock.
    clock: u32,
    /// Awareness states received, by client id.
    seen: BTreeMap<u64, AwarenessState>,
    /// A sync step 2 arrived since the peer last opened.
    synced: bool,
    /// Sync messages received in all, over every socket the peer opened.
    sync_messages: u64,
}

impl YPeer {
    /// A peer with `client_id` editing the text named `field` of document `doc`.
    pub fn new(client_id: u64, doc: &str, field: &str) -> YPeer {
        let options = yrs::Options::with_client_id(yrs::block::ClientID::new(client_id));
        YPeer {
            doc: yrs::Doc::with_options(options),
            field: field.to_string(),
            doc_name: doc.to_string(),
            clock: 0,
            seen: BTreeMap::new(),
            synced: false,
            sync_messages: 0,
        }
    }

    /// The document it edits.
    pub fn doc(&self) -> &str {
        &self.doc_name
    }

    /// The client id its edits and awareness carry.
    pub fn client_id(&self) -> u64 {
        self.doc.client_id().get()
    }

    /// The document's text.
    pub fn text(&self) -> String {
        let text = self.doc.get_or_insert_text(self.field.as_str());
        text.get_string(&self.doc.transact())
    }

    /// Whether the peer ever received a y-protocols sync message it could apply or answer.
    pub fn heard_sync(&self) -> bool {
        self.sync_messages > 0
    }

    /// Whether a sync step 2 arrived since the peer last opened.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The peer's socket opened: it is not synced, and sends this step 1.
    pub fn opened(&mut self) -> Vec<u8> {
        self.synced = false;
        self.step1()
    }

    /// Sync step 1 with the peer's state vector: what a stock client sends on open.
    pub fn step1(&self) -> Vec<u8> {
        let state_vector = self.doc.transact().state_vector();
        Message::Sync(SyncMessage::SyncStep1(state_vector)).encode_v1()
    }

    /// Inserts `text` at `index` (clamped to the text's length) and returns the update message.
    pub fn insert(&mut self, index: u32, text: &str) -> Vec<u8> {
        let shared = self.doc.get_or_insert_text(self.field.as_str());
        let before = self.doc.transact().state_vector();
        {
            let mut transaction = self.doc.transact_mut();
            let at = index.min(shared.len(&transaction));
            shared.insert(&mut transaction, at, text);
        }
        let update = self.doc.transact().encode_diff_v1(&before);
        Message::Sync(SyncMessage::Update(update)).encode_v1()
    }

    /// Sets the peer's awareness state and returns the awareness message announcing it.
    pub fn set_awareness(&mut self, state: &serde_json::Value) -> Vec<u8> {
        self.clock += 1;
        let entry = AwarenessUpdateEntry { clock: self.clock, json: state.to_string().into() };
        let update = AwarenessUpdate { clients: [(self.doc.client_id(), entry)].into_iter().collect() };
        Message::Awareness(update).encode_v1()
    }

    /// The awareness state this peer holds for `client_id`: None if it never heard of it,
    /// Some(None) if it was removed.
    pub fn awareness_of(&self, client_id: u64) -> Option<Option<&serde_json::Value>> {
        self.seen.get(&client_id).map(|(_, state)| state.as_ref())
    }

    /// Applies one received binary message.
    pub fn receive(&mut self, bytes: &[u8]) -> Received {
        let message = match Message::decode_v1(bytes) {
            Ok(message) => message,
            Err(e) => return Received::Malformed(format!("not a y-protocols message ({e})")),
        };
        match message {
            Message::Sync(SyncMessage::SyncStep1(state_vector)) => {
                self.sync_messages += 1;
                let missing = self.doc.transact().encode_diff_v1(&state_vector);
                let answer = Message::Sync(SyncMessage::SyncStep2(missing)).encode_v1();
                Received::Answer("sync step 1".into(), answer)
            }
            Message::Sync(SyncMessage::SyncStep2(update)) => {
                self.synced = true;
                self.apply("sync step 2", &update)
            }
            Message::Sync(SyncMessage::Update(update)) => self.apply("update", &update),
            Message::Awareness(update) => self.apply_awareness(update),
            Message::Auth(Some(reason)) => Received::Denied(reason),
            Message::Auth(None) => Received::Applied("auth granted".into()),
            Message::AwarenessQuery => Received::Applied("awareness query".into()),
            Message::Custom(tag, data) => {
                Received::Applied(format!("message of kind {tag} ({} bytes)", data.len()))
            }
        }
    }

    fn apply(&mut self, what: &str, bytes: &[u8]) -> Received {
        let update = match Update::decode_v1(bytes) {
            Ok(update) => update,
            Err(e) => return Received::Malformed(format!("{what} whose update does not decode ({e})")),
        };
        if let Err(e) = self.doc.transact_mut().apply_update(update) {
            return Received::Malformed(format!("{what} whose update does not apply ({e})"));
        }
        self.sync_messages += 1;
        Received::Applied(format!("{what} ({} bytes)", bytes.len()))
    }

    fn apply_awareness(&mut self, update: AwarenessUpdate) -> Received {
        let mut ids: Vec<u64> = Vec::new();
        for (client_id, entry) in update.clients {
            let client_id = client_id.get();
            ids.push(client_id);
            let state = match &*entry.json {
                "null" => None,
                json => serde_json::from_str(json).ok(),
            };
            // y-protocols keeps the newest clock; a removal at the same clock wins.
            let newer = self
                .seen
                .get(&client_id)
                .is_none_or(|(clock, _)| entry.clock > *clock || (entry.clock == *clock && state.is_none()));
            if newer {
                self.seen.insert(client_id, (entry.clock, state));
            }
        }
        ids.sort_unstable();
        Received::Applied(format!("awareness of {ids:?}"))
    }

    /// The state vector, for tests.
    #[cfg(test)]
    fn state_vector(&self) -> yrs::StateVector {
        self.doc.transact().state_vector()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delivers every message of `from` to `to` as a server relaying it would.
    fn relay(to: &mut YPeer, message: &[u8]) {
        match to.receive(message) {
            Received::Applied(_) => {}
            _ => panic!("a relayed message applies"),
        }
    }

    #[test]
    fn peers_converge_through_updates_and_step2() {
        let (mut a, mut b) = (YPeer::new(1, "d", "body"), YPeer::new(2, "d", "body"));
        let update = a.insert(0, "hello");
        relay(&mut b, &update);
        // b edits while a cannot hear it, then a's step 1 is answered with what a lacks.
        let _unsent = b.insert(5, " world");
        let Received::Answer(_, step2) = b.receive(&a.step1()) else { panic!("step 1 is answered") };
        relay(&mut a, &step2);
        assert_eq!((a.text(), b.text()), ("hello world".into(), "hello world".into()));
        assert_eq!(a.state_vector(), b.state_vector());
    }

    #[test]
    fn awareness_is_set_and_removed() {
        let (mut a, mut b) = (YPeer::new(1, "d", "body"), YPeer::new(2, "d", "body"));
        relay(&mut b, &a.set_awareness(&serde_json::json!({"name": "a"})));
        assert_eq!(b.awareness_of(1), Some(Some(&serde_json::json!({"name": "a"}))));
        let entry = AwarenessUpdateEntry { clock: 2, json: "null".into() };
        let removal =
            AwarenessUpdate { clients: [(yrs::block::ClientID::new(1), entry)].into_iter().collect() };
        relay(&mut b, &Message::Awareness(removal).encode_v1());
        assert_eq!(b.awareness_of(1), Some(None));
        assert_eq!(b.awareness_of(7), None);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut a = YPeer::new(1, "d", "body");
        for bytes in [&[0u8, 2, 5, 1][..], &[0, 1, 3, 0xff, 0xff, 0xff], &[9]] {
            assert!(matches!(a.receive(bytes), Received::Malformed(_) | Received::Applied(_)));
        }
    }
}
