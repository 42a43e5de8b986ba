//! The roomlab client a widget would use: a record store cache, reference-counted subscriptions,
//! confirmed and fire-and-forget mutations with optimistic views, reconnection with backoff and
//! jitter, and replay of unanswered mutations with their original ids (docs/PROTOCOL.md §21).
//!
//! The client is generic over its transport ([`Connector`]) and reads time only through tokio's
//! clock and randomness only from its seed, so the simulation runs it unchanged on turmoil.
//!
//! ```no_run
//! # async fn demo() -> Result<(), roomlab_client::ClientError> {
//! use roomlab_client::{Client, ClientConfig, TokioConnector};
//! use roomlab_protocol::{ClientId, DocId, DocType, Mutation, Target};
//! let config = ClientConfig::new("127.0.0.1", 8787, "/ws/canvas-9?token=...", ClientId::new("c-1").unwrap());
//! let client = Client::start(config, TokioConnector);
//! let tasks = client.subscribe(Target::Doc(DocId::new("t1").unwrap()));
//! let data = serde_json::json!({"title": "Write the spec"});
//! let create = Mutation::Create { doc: DocId::new("t1").unwrap(), doc_type: DocType::new("tasks").unwrap(), data };
//! let ack = client.mutate_confirmed(create).await?;
//! println!("committed at seq {}", ack.seq);
//! # drop(tasks); Ok(()) }
//! ```

mod core;
mod decode_cache;
mod driver;
mod yjs;

pub use crate::core::{target_key, Ack, Core, Event, Outcome, View};
pub use crate::decode_cache::DecodeCache;
pub use crate::yjs::{text_of_state, YjsError, YjsFields};
pub use driver::{backoff_ms, Connector, TokioConnector};

use roomlab_protocol::{
    BucketName, ClientId, ClientMessage, DocId, ErrorBody, ErrorCode, FieldName, Mutation, ServerMessage,
    Target,
};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use yrs::Text;

/// What the client reports to an observer (the simulation's trace, a debugging log).
#[derive(Debug, Clone, Copy)]
pub enum TapEvent<'a> {
    /// A connection attempt starts.
    Connecting {
        /// Attempts since the last full resync.
        attempt: u32,
    },
    /// The WebSocket is open.
    Connected,
    /// A text frame went out.
    Sent(&'a str),
    /// A text frame came in.
    Received(&'a str),
    /// A Yjs frame went out.
    SentYjs(&'a roomlab_protocol::YjsFrame),
    /// A Yjs frame came in.
    ReceivedYjs(&'a roomlab_protocol::YjsFrame),
    /// The connection ended, and why.
    Disconnected {
        /// Why, for humans.
        reason: &'a str,
    },
}

/// An observer of a client's frames and connection changes.
pub type Tap = Arc<dyn Fn(TapEvent<'_>) + Send + Sync>;

/// The client's settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// The server's host.
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// The request path with its query: `/ws/{room}?token={jwt}`.
    pub path: String,
    /// This client's id, which scopes its mutation ids (keep it across reconnects).
    pub client_id: ClientId,
    /// Seeds the reconnect jitter and, with the client id, the client ids of the client's Yjs
    /// documents. An application that edits rich text before its first sync should give each
    /// process start its own seed, since Yjs requires a client id never to be reused with a
    /// different history.
    pub seed: u64,
    /// A confirmed mutation fails with `timeout` after this long (and stays pending).
    pub confirm_timeout_ms: u64,
    /// A request (`bucket_get`, `asset_list`) fails with `timeout` after this long.
    pub request_timeout_ms: u64,
    /// The first reconnect delay.
    pub backoff_initial_ms: u64,
    /// The largest reconnect delay.
    pub backoff_max_ms: u64,
    /// Connecting (TCP and WebSocket handshake) gives up after this long.
    pub connect_timeout_ms: u64,
    /// A server that does not welcome within this long is dropped.
    pub hello_timeout_ms: u64,
    /// A connection silent this long is pinged (client.heartbeat).
    pub ping_interval_ms: u64,
    /// A connection silent this long is dropped and reconnected (client.heartbeat).
    pub silence_ms_max: u64,
    /// The largest frame accepted from the server.
    pub frame_bytes_max: usize,
    /// Mutation outcomes remembered for [`Client::outcome`].
    pub outcomes_max: usize,
    /// Events kept until drained.
    pub events_max: usize,
    /// Bytes the WebSocket reader asks of the socket at a time. tungstenite zero-fills this much
    /// before every read, so a simulated socket, where a read costs no system call, reads best in
    /// small pieces; a real one in large pieces.
    pub read_buffer_bytes: usize,
    /// An observer of frames and connection changes.
    pub tap: Option<Tap>,
    /// A cache of decoded frames shared with other clients of this process, which then decode a
    /// frame they all receive once (see [`DecodeCache`]); `None` decodes every frame.
    pub decode_cache: Option<Arc<DecodeCache>>,
    /// Spawn the connection task on the current `LocalSet` (as a deterministic simulation needs)
    /// instead of the runtime.
    pub local_tasks: bool,
    /// A planted bug, in builds with the `mutants` feature (see [`roomlab_protocol::Mutant`]).
    pub mutant: Option<roomlab_protocol::Mutant>,
}

impl ClientConfig {
    /// Settings with the protocol's defaults for a server at `host:port` and `path`.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        path: impl Into<String>,
        client_id: ClientId,
    ) -> ClientConfig {
        ClientConfig {
            host: host.into(),
            port,
            path: path.into(),
            client_id,
            seed: 0,
            confirm_timeout_ms: 10_000,
            request_timeout_ms: 10_000,
            backoff_initial_ms: 250,
            backoff_max_ms: 30_000,
            connect_timeout_ms: 10_000,
            hello_timeout_ms: 10_000,
            ping_interval_ms: 10_000,
            silence_ms_max: 25_000,
            frame_bytes_max: 1 << 20,
            outcomes_max: 1 << 20,
            events_max: 4096,
            read_buffer_bytes: 8 * 1024,
            tap: None,
            decode_cache: None,
            local_tasks: false,
            mutant: None,
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server refused it; nothing happened.
    #[error("refused: {0:?}")]
    Refused(Box<ErrorBody>),
    /// The server could not say whether it happened (`replay_expired`, `internal`).
    #[error("indefinite: {0:?}")]
    Indefinite(Box<ErrorBody>),
    /// No answer in time; a mutation stays pending and is replayed on reconnect.
    #[error("no answer in time")]
    Timeout,
    /// The client is not connected (requests are not queued) or was closed.
    #[error("not connected")]
    Disconnected,
    /// The client holds its limit of open rich-text fields.
    #[error("{0} rich-text fields are open already")]
    TooManyFields(usize),
    /// The server refused the connection for good (close 4001 or 4002).
    #[error("connection refused by the server with close code {0}")]
    ConnectionRefused(u16),
}

#[derive(Default)]
pub(crate) struct Control {
    pub stopped: bool,
    pub kill: bool,
    /// A stall ordered but not started: the connection loop turns it into `stalled_until` on its
    /// own clock. `stall` may be called from outside the client's runtime (a simulation's fault
    /// injector), where `Instant::now()` reads the wall clock, not the simulated one.
    pub stall_ordered: Option<Duration>,
    pub stalled_until: Option<Instant>,
    pub refused: Option<u16>,
}

pub(crate) struct Shared {
    pub config: ClientConfig,
    core: Mutex<core::Core>,
    control: Mutex<Control>,
    /// The outbox has new frames.
    pub wake: Notify,
    /// The control flags changed.
    pub control_changed: Notify,
    /// The core took in an answer.
    pub changed: Notify,
}

impl Shared {
    /// Waits until `answer` gives the wait's outcome, looking again after every change the
    /// connection makes; `Timeout` after `timeout`. One timer serves the whole wait, not one per
    /// change seen while waiting.
    async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut answer: impl FnMut() -> Option<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let expired = tokio::time::sleep_until(Instant::now() + timeout);
        tokio::pin!(expired);
        loop {
            // Registered before looking, so a change made between the look and the wait still wakes it.
            let changed = self.changed.notified();
            if let Some(outcome) = answer() {
                return outcome;
            }
            tokio::select! {
                biased;
                _ = changed => {}
                _ = &mut expired => return Err(ClientError::Timeout),
            }
        }
    }

    pub fn core(&self) -> MutexGuard<'_, core::Core> {
        self.core.lock().expect("client core lock")
    }

    pub fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().expect("client control lock")
    }

    pub fn tap(&self, event: TapEvent<'_>) {
        if let Some(tap) = &self.config.tap {
            tap(event);
        }
    }

    pub fn set_refused(&self, code: u16) {
        self.control().refused = Some(code);
        self.changed.notify_waiters();
    }

    fn order(&self, change: impl FnOnce(&mut Control)) {
        change(&mut self.control());
        self.control_changed.notify_waiters();
        self.control_changed.notify_one();
    }
}

/// A connected (or reconnecting) client. Dropping it stops its connection.
pub struct Client {
    shared: Arc<Shared>,
}

/// A reference to a subscription; dropping the last reference to a target unsubscribes it.
pub struct Subscription {
    shared: Arc<Shared>,
    target: Target,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.core().unsubscribe(&self.target);
        self.shared.wake.notify_one();
    }
}

impl Subscription {
    /// The subscription's current view.
    pub fn view(&self) -> View {
        self.shared.core().view(&self.target).cloned().unwrap_or(View::Waiting)
    }
}

impl Client {
    /// Starts the client's connection loop on the current tokio runtime.
    pub fn start<C: Connector>(config: ClientConfig, connector: C) -> Client {
        let mut core =
            core::Core::new(config.client_id.clone(), config.outcomes_max, config.events_max, config.seed);
        core.mutant = config.mutant;
        let shared = Arc::new(Shared {
            config,
            core: Mutex::new(core),
            control: Mutex::default(),
            wake: Notify::new(),
            control_changed: Notify::new(),
            changed: Notify::new(),
        });
        if shared.config.local_tasks {
            tokio::task::spawn_local(driver::drive(shared.clone(), connector));
        } else {
            tokio::spawn(driver::drive(shared.clone(), connector));
        }
        Client { shared }
    }

    /// Reads the client's state (cache, pending mutations, outcomes) under its lock.
    pub fn with_core<R>(&self, read: impl FnOnce(&Core) -> R) -> R {
        read(&self.shared.core())
    }

    /// Sends a mutation without waiting (fire-and-forget); returns its id. Its outcome is kept.
    pub fn mutate(&self, mutation: Mutation) -> u64 {
        let mid = self.shared.core().mutate(mutation);
        self.shared.wake.notify_one();
        mid
    }

    /// Sends a mutation and waits for its answer, at most `confirm_timeout_ms`.
    pub async fn mutate_confirmed(&self, mutation: Mutation) -> Result<Ack, ClientError> {
        let mid = self.mutate(mutation);
        self.wait_outcome(mid).await
    }

    /// Waits for the answer to mutation `mid`, at most `confirm_timeout_ms`.
    pub async fn wait_outcome(&self, mid: u64) -> Result<Ack, ClientError> {
        let timeout = Duration::from_millis(self.shared.config.confirm_timeout_ms);
        let outcome = self.wait(timeout, |core| core.outcome(mid).cloned()).await?;
        match outcome {
            Outcome::Ack(ack) => Ok(ack),
            Outcome::Refused(body) if body.code == ErrorCode::ReplayExpired => {
                Err(ClientError::Indefinite(Box::new(body)))
            }
            Outcome::Refused(body) => Err(ClientError::Refused(Box::new(body))),
        }
    }

    async fn wait<T>(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&Core) -> Option<T>,
    ) -> Result<T, ClientError> {
        let shared = &self.shared;
        shared
            .wait_until(timeout, || match ready(&shared.core()) {
                Some(value) => Some(Ok(value)),
                None => shared.control().refused.map(|code| Err(ClientError::ConnectionRefused(code))),
            })
            .await
    }

    /// Subscribes to `target`; identical subscriptions share one server subscription.
    pub fn subscribe(&self, target: Target) -> Subscription {
        self.shared.core().subscribe(target.clone());
        self.shared.wake.notify_one();
        Subscription { shared: self.shared.clone(), target }
    }

    /// Opens the rich text of a document's field (docs/PROTOCOL.md §19): a local Yjs document
    /// synced with the room's, kept open (and re-synced after every reconnect) while the handle
    /// lives. Handles to the same field share one document. Fails when `fields_max` are open.
    pub fn yjs_text(&self, doc: DocId, field: FieldName) -> Result<YjsText, ClientError> {
        let key = (doc, field);
        self.shared.core().yjs_open(&key).map_err(ClientError::TooManyFields)?;
        self.shared.wake.notify_one();
        Ok(YjsText { shared: self.shared.clone(), key })
    }

    /// Reads a JSON bucket through the validation cache: the server is asked with the cached
    /// version and sends the value only when it is newer.
    pub async fn bucket_get(&self, bucket: BucketName) -> Result<(u64, serde_json::Value), ClientError> {
        let if_version = self.shared.core().cached_bucket(&bucket).map(|(version, _)| *version);
        let message = |req| ClientMessage::BucketGet { req, bucket: bucket.clone(), if_version };
        match self.request(message).await? {
            ServerMessage::BucketValue { version, value, .. } => Ok((version, value)),
            ServerMessage::BucketNotModified { .. } => {
                let cached = self.shared.core().cached_bucket(&bucket).cloned();
                cached.ok_or(ClientError::Disconnected)
            }
            ServerMessage::Error(body) => Err(ClientError::Refused(Box::new(body))),
            other => unreachable!("a bucket_get answered with {other:?}"),
        }
    }

    /// Lists an asset bucket.
    pub async fn asset_list(
        &self,
        bucket: BucketName,
    ) -> Result<Vec<roomlab_protocol::AssetInfo>, ClientError> {
        match self.request(|req| ClientMessage::AssetList { req, bucket: bucket.clone() }).await? {
            ServerMessage::AssetsList { assets, .. } => Ok(assets),
            ServerMessage::Error(body) => Err(ClientError::Refused(Box::new(body))),
            other => unreachable!("an asset_list answered with {other:?}"),
        }
    }

    async fn request(&self, make: impl FnOnce(u64) -> ClientMessage) -> Result<ServerMessage, ClientError> {
        let req = self.shared.core().request(make).ok_or(ClientError::Disconnected)?;
        self.shared.wake.notify_one();
        let timeout = Duration::from_millis(self.shared.config.request_timeout_ms);
        self.wait(timeout, |core| core.answers.get(&req).cloned()).await
    }

    /// Waits until the client is connected and every subscription has its fresh answer.
    pub async fn wait_resynced(&self, timeout: Duration) -> Result<(), ClientError> {
        self.wait(timeout, |core| core.resynced().then_some(())).await
    }

    /// Takes the events that happened since the last call.
    pub fn drain_events(&self) -> Vec<Event> {
        self.shared.core().drain_events()
    }

    /// Drops the connection abruptly, as a network failure would; the client reconnects.
    pub fn kill_connection(&self) {
        self.shared.order(|control| control.kill = true);
    }

    /// Stops reading from the socket for `duration`, as a slow consumer would.
    pub fn stall(&self, duration: Duration) {
        self.shared.order(|control| control.stall_ordered = Some(duration));
    }

    /// Ends a stall early (or cancels one not yet started): the client reads from its socket again.
    pub fn resume(&self) {
        // A client not stalled is left alone: waking its connection loop would only reorder its
        // work. (The loop forgets a stall once it runs out.)
        let stalled = {
            let control = self.shared.control();
            control.stall_ordered.is_some() || control.stalled_until.is_some()
        };
        if stalled {
            self.shared.order(|control| {
                control.stall_ordered = None;
                control.stalled_until = None;
            });
        }
    }

    /// Closes the connection for good.
    pub fn close(&self) {
        self.shared.order(|control| control.stopped = true);
    }
}

/// A document field's rich text, open while this handle lives. Indexes count UTF-16 code units, as
/// Yjs in JavaScript does, so an index means the same on every client.
pub struct YjsText {
    shared: Arc<Shared>,
    key: (DocId, FieldName),
}

impl YjsText {
    /// The text as this client sees it now (local edits included).
    pub fn text(&self) -> String {
        self.shared.core().yjs().text(&self.key).expect("an open handle keeps its field open")
    }

    /// The whole state as one Yjs v1 update.
    pub fn state(&self) -> Vec<u8> {
        self.shared.core().yjs().state(&self.key).expect("an open handle keeps its field open")
    }

    /// Whether the server's state has arrived since the connection came up.
    pub fn is_synced(&self) -> bool {
        self.shared.core().yjs().is_synced(&self.key)
    }

    /// Inserts `chunk` at `index` (clamped to the text's length).
    pub fn insert(&self, index: u32, chunk: &str) {
        self.edit(|text, transaction| {
            let index = index.min(text.len(transaction));
            text.insert(transaction, index, chunk);
        });
    }

    /// Removes up to `length` units from `index` (clamped to the text).
    pub fn remove(&self, index: u32, length: u32) {
        self.edit(|text, transaction| {
            let size = text.len(transaction);
            let index = index.min(size);
            let length = length.min(size - index);
            if length > 0 {
                text.remove_range(transaction, index, length);
            }
        });
    }

    fn edit(&self, edit: impl FnOnce(&yrs::TextRef, &mut yrs::TransactionMut)) {
        self.shared.core().yjs_edit(&self.key, edit);
        self.shared.wake.notify_one();
    }

    /// Waits until the field is synced and `ready` holds for its text, at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&str) -> bool,
    ) -> Result<String, ClientError> {
        let answer = || self.is_synced().then(|| self.text()).filter(|text| ready(text)).map(Ok);
        self.shared.wait_until(timeout, answer).await
    }
}

impl Drop for YjsText {
    fn drop(&mut self) {
        self.shared.core().yjs_close(&self.key);
        self.shared.wake.notify_one();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}
