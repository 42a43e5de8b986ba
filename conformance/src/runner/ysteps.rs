//! The steps of stock y-websocket clients (`yopen`, `ytype`, `ytext`, `yhas`, `ysame`, `yaware`,
//! `yseen`, `ydrop`): the suite plays `WebsocketProvider` and checks what the documents come to
//! hold, not the bytes of any one frame.

use super::{error, failed, Run, Stop};
use crate::case::{Connect, PeerStep};
use crate::wire::Incoming;
use crate::ypeer::{Received, YPeer};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The field every stock client of a case edits: a document's text named `body`.
pub(super) const FIELD: &str = "body";

/// How often a waiting step looks at what its clients received.
const POLL_MS: u64 = 10;

/// The first client id of a case's stock clients; each next one adds one.
const CLIENT_ID_BASE: u64 = 0x5000;

impl Run<'_> {
    pub(super) async fn ystep(&mut self, step: &PeerStep) -> Result<(), Stop> {
        match step {
            PeerStep::Open { name, doc } => self.yopen(name, doc).await,
            PeerStep::Type { conn, index, text, repeat } => {
                let peer = self.peer(conn)?;
                let message = peer.insert(*index, &text.repeat(*repeat));
                if self.connections.contains_key(conn) {
                    self.ysend(conn, message, format!("update: {} inserted", text.len() * repeat)).await?;
                } else {
                    self.record(conn, true, "(an offline edit, kept until the client reconnects)".into());
                }
                Ok(())
            }
            PeerStep::Text { conn, text } => {
                self.until(|run| {
                    let got = run.peer_ref(conn)?.text();
                    (got == *text).then_some(()).ok_or_else(|| format!("{conn} holds {}", shown(&got)))
                })
                .await
            }
            PeerStep::Has { conn, words } => {
                self.until(|run| {
                    let got = run.peer_ref(conn)?.text();
                    let missing: Vec<&String> = words.iter().filter(|w| !got.contains(w.as_str())).collect();
                    match missing.is_empty() {
                        true => Ok(()),
                        false => Err(format!("{conn} holds {}, without {missing:?}", shown(&got))),
                    }
                })
                .await
            }
            PeerStep::Same { conns } => self.until(|run| run.same(conns)).await,
            PeerStep::Aware { conn, state } => {
                let message = self.peer(conn)?.set_awareness(state);
                self.ysend(conn, message, format!("awareness {state}")).await
            }
            PeerStep::Seen { conn, of, state } => self.yseen(conn, of, state.as_ref()).await,
            PeerStep::Synced { conn } => {
                self.until(|run| match run.peer_ref(conn)?.synced() {
                    true => Ok(()),
                    false => Err(format!("{conn} has received no sync step 2 since it opened")),
                })
                .await
            }
            PeerStep::Drop { conn } => {
                let connection =
                    self.connections.remove(conn).ok_or_else(|| error(format!("{conn} is not open")))?;
                self.fields.remove(conn);
                self.record(conn, true, "(the socket drops without a close frame)".into());
                connection.drop_abruptly();
                Ok(())
            }
        }
    }

    fn peer(&mut self, conn: &str) -> Result<&mut YPeer, Stop> {
        self.peers
            .get_mut(conn)
            .ok_or_else(|| error(format!("{conn} is not a stock client (yopen it first)")))
    }

    fn peer_ref(&self, conn: &str) -> Result<&YPeer, String> {
        self.peers.get(conn).ok_or_else(|| format!("{conn} is not a stock client (yopen it first)"))
    }

    /// Opens a stock client on `doc`, or reopens one, which keeps its document and so uploads its
    /// offline edits when it answers the server's step 1.
    async fn yopen(&mut self, name: &str, doc: &str) -> Result<(), Stop> {
        if let Some(peer) = self.peers.get(name).filter(|peer| peer.doc() != doc) {
            return Err(error(format!("{name} edits {}; a client keeps its document", peer.doc())));
        }
        self.ensure_document(doc).await?;
        self.open_field(name, (doc, FIELD), &format!("y-{name}"), "member").await?;
        let next_id = CLIENT_ID_BASE + self.peers.len() as u64;
        let peer = self.peers.entry(name.to_string()).or_insert_with(|| YPeer::new(next_id, doc, FIELD));
        let step1 = peer.opened();
        self.ysend(name, step1, "sync step 1".into()).await
    }

    /// On a target with the main socket, a Yjs field belongs to a live document
    /// (PROTOCOL yjs.doc-live), so the case's documents are created first, as a member would.
    async fn ensure_document(&mut self, doc: &str) -> Result<(), Stop> {
        if !self.target.capabilities.contains("core") || !self.created.insert(doc.to_string()) {
            return Ok(());
        }
        let name = "setup".to_string();
        let connect = Connect {
            name: name.clone(),
            user: "y-setup".into(),
            role: "member".into(),
            plan: "pro".into(),
            addons: 0,
            client: "c-y-setup".into(),
            room: None,
            hello: true,
        };
        self.connect(&connect).await?;
        let mid = self.created.len();
        let create = serde_json::json!({"type": "mutate", "mid": mid, "op": "create", "doc": doc, "doc_type": "notes", "data": {}});
        self.send_text(&name, create.to_string()).await?;
        self.expect(&name, &serde_json::json!({"type": "ack", "mid": mid}), false).await?;
        if let Some(mut connection) = self.connections.remove(&name) {
            connection.close().await;
        }
        Ok(())
    }

    async fn ysend(&mut self, conn: &str, message: Vec<u8>, what: String) -> Result<(), Stop> {
        self.record(conn, true, format!("y-protocols {what} ({} bytes)", message.len()));
        let connection =
            self.connections.get_mut(conn).ok_or_else(|| error(format!("{conn} is not open")))?;
        connection.send(Message::Binary(message.into())).await.map_err(failed)
    }

    /// Applies what a stock client has received, answering the server's step 1 as a stock client
    /// does. A close, a text frame or a message that does not apply fails the case.
    async fn pump(&mut self, conn: &str) -> Result<(), Stop> {
        let Some(connection) = self.connections.get_mut(conn) else { return Ok(()) };
        connection.drain();
        let incoming: Vec<Incoming> = connection.inbox.drain(..).collect();
        for frame in incoming {
            let bytes = match frame {
                Incoming::Binary(bytes) => bytes,
                Incoming::Text(text) => {
                    self.record(conn, false, text.clone());
                    return Err(failed(format!("{conn} received a text frame on a y-websocket: {text}")));
                }
                Incoming::Closed(code, reason) => {
                    self.record(conn, false, format!("closed {code:?} {reason}"));
                    self.connections.remove(conn);
                    let note = self.no_sync_note();
                    return Err(failed(format!("the server closed {conn}: {code:?} {reason}{note}")));
                }
            };
            match self.peer(conn)?.receive(&bytes) {
                Received::Applied(what) => self.record(conn, false, format!("y-protocols {what}")),
                Received::Answer(what, answer) => {
                    self.record(conn, false, format!("y-protocols {what}"));
                    self.ysend(conn, answer, "sync step 2".into()).await?;
                }
                Received::Denied(reason) => {
                    return Err(failed(format!("the server denied {conn}: {reason}")))
                }
                Received::Malformed(what) => {
                    let head: String = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
                    return Err(failed(format!("{conn} received {what}: {head}...")));
                }
            }
        }
        Ok(())
    }

    /// Waits until `done` holds, or fails with its last reason. Meanwhile every open stock client
    /// handles what it receives, as real ones do whatever a test looks at.
    async fn until(&mut self, done: impl Fn(&Self) -> Result<(), String>) -> Result<(), Stop> {
        let deadline = Instant::now() + self.step_deadline;
        loop {
            let open: Vec<String> =
                self.peers.keys().filter(|name| self.connections.contains_key(*name)).cloned().collect();
            for conn in &open {
                self.pump(conn).await?;
            }
            match done(self) {
                Ok(()) => return Ok(()),
                Err(why) if Instant::now() >= deadline => {
                    return Err(failed(format!("{why}, {:?} on{}", self.step_deadline, self.no_sync_note())))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(POLL_MS)).await,
            }
        }
    }

    /// When no stock client of the case has heard a single sync message, the likeliest cause is
    /// a server that speaks another protocol; the failure says so.
    fn no_sync_note(&self) -> &'static str {
        match self.peers.values().any(YPeer::heard_sync) {
            true => "",
            false => {
                "; no client received any y-protocols sync message, so the target does not speak the \
                 y-websocket protocol (a server that names the document in each message or waits for \
                 authentication first, as Hocuspocus does, is not y-websocket compatible)"
            }
        }
    }

    fn same(&self, conns: &[String]) -> Result<(), String> {
        let texts =
            conns.iter().map(|c| self.peer_ref(c).map(|p| (c, p.text()))).collect::<Result<Vec<_>, _>>()?;
        let (first, text) = &texts[0];
        match texts.iter().find(|(_, other)| other != text) {
            None => Ok(()),
            Some((conn, other)) => {
                Err(format!("{first} holds {} but {conn} holds {}", shown(text), shown(other)))
            }
        }
    }

    async fn yseen(&mut self, conn: &str, of: &str, state: Option<&Value>) -> Result<(), Stop> {
        let id = self.peer(of)?.client_id();
        self.until(|run| {
            let held = run.peer_ref(conn)?.awareness_of(id);
            let wanted = match state {
                Some(state) => held == Some(Some(state)),
                None => held == Some(None),
            };
            let held = match held {
                None => "nothing".to_string(),
                Some(None) => "its removal".to_string(),
                Some(Some(value)) => value.to_string(),
            };
            let expected = state.map_or("its removal".to_string(), Value::to_string);
            wanted
                .then_some(())
                .ok_or_else(|| format!("{conn} holds {held} for {of}'s awareness, not {expected}"))
        })
        .await
    }
}

/// A text for a failure message: whole if short, else its length and ends.
fn shown(text: &str) -> String {
    let count = text.chars().count();
    if count <= 48 {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(20).collect();
    let tail: String = text.chars().skip(count - 20).collect();
    format!("{head:?}...{tail:?} ({count} characters)")
}
