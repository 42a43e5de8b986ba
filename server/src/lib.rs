//! The roomlab server: many rooms behind a WebSocket and HTTP endpoint, generic over its listener so
//! that the same code runs on tokio TCP and on turmoil's simulated TCP.
//!
//! Each room is one engine [`roomlab_engine::Room`] owned by one task (its single writer), opened on
//! first use from `<data>/<room>.sqlite` and closed when idle. Connections authenticate with an HS256
//! token ([`mint`]), then speak docs/PROTOCOL.md: JSON text frames and Yjs binary frames on
//! `/ws/{room}`, bare y-protocols on `/yjs/{room}/{doc}/{field}` for stock y-websocket clients, asset
//! uploads, downloads, lists and deletes on `/v1/rooms/{room}/buckets/{bucket}/assets/...`, and `/v1/health`.
//!
//! The server reads time only through tokio's clock (which turmoil drives) plus a configured epoch,
//! and randomness only from its configured seed, so a simulated server is deterministic.

mod buggify;
mod connection;
mod http;
mod journal;
mod rooms;
mod token;

pub use buggify::{Buggify, FaultPoint};
pub use journal::{Journal, JournalEntry, JournalInput, JournalKind};
pub use rooms::SharedRoom;
pub use token::{mint, verify, Claims, TokenError};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use roomlab_engine::ConnId;
use roomlab_protocol::RoomId;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// The server's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The HS256 secret that signs room tokens.
    pub secret: Vec<u8>,
    /// Where room databases live (`<data>/<room>.sqlite`); in memory when `None`.
    pub data: Option<PathBuf>,
    /// The engine's limits and quotas.
    pub engine: roomlab_engine::Config,
    /// Unix milliseconds at the moment the server starts; the server's clock runs on from there by
    /// tokio's clock, so a simulation fixes it and a real server reads the system clock once.
    pub epoch_ms: u64,
    /// Seeds every room's randomness (Yjs client ids).
    pub seed: u64,
    /// Inputs queued to one room before connections wait for it.
    pub room_queue_max: usize,
    /// Queued inputs a room handles in one commit group (one SQLite transaction, every answer
    /// and push held until it commits; docs/PROTOCOL.md ack.group-commit). 1 commits every
    /// change on its own.
    pub group_commit_max: usize,
    /// A room with no connections for this long is closed.
    pub idle_close_ms: u64,
    /// WebSocket pings go out this often (conn.heartbeat).
    pub ping_interval_ms: u64,
    /// A connection silent for this long is closed.
    pub silence_close_ms: u64,
    /// A protocol connection that has not said `hello` this long after its upgrade is closed
    /// with 1008 (docs/PROTOCOL.md conn.hello.deadline), even if it answers pings.
    pub hello_ms_max: u64,
    /// Open connections at once; further upgrades are answered 503.
    pub connections_max: usize,
    /// Bytes the WebSocket reader asks of the socket at a time. tungstenite zero-fills this much
    /// before every read, so a simulated socket, where a read costs no system call, reads best in
    /// small pieces; a real one in large pieces.
    pub read_buffer_bytes: usize,
    /// Spawn the server's tasks on the current `LocalSet` instead of the runtime. A simulation
    /// needs this: tokio files runtime tasks in shards by a process-wide task id, so the order in
    /// which a crash drops connections would depend on other threads; a `LocalSet` keeps one list.
    pub local_tasks: bool,
    /// Fault points a simulation turned on (none in a real server).
    pub buggify: Option<Arc<Buggify>>,
    /// Where rooms write their journals (a simulation's history checker reads them); none by
    /// default.
    pub journal: Option<Journal>,
}

impl ServerConfig {
    /// Settings with the protocol's default limits and the given secret.
    pub fn new(secret: impl Into<Vec<u8>>) -> ServerConfig {
        ServerConfig {
            secret: secret.into(),
            data: None,
            engine: roomlab_engine::Config::default(),
            epoch_ms: 0,
            seed: 0,
            room_queue_max: 4096,
            group_commit_max: 64,
            idle_close_ms: 60_000,
            ping_interval_ms: 15_000,
            silence_close_ms: 30_000,
            hello_ms_max: 10_000,
            connections_max: 100_000,
            read_buffer_bytes: 8 * 1024,
            local_tasks: false,
            buggify: None,
            journal: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

/// A listener the server accepts connections from: tokio's TCP listener, or turmoil's.
pub trait Listener: Send + 'static {
    /// The accepted stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection; gives its stream and, when the transport knows it, the
    /// peer's address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, Option<SocketAddr>)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&mut self) -> io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        stream.set_nodelay(true)?;
        Ok((stream, Some(peer)))
    }
}

pub(crate) fn spawn(local: bool, task: impl Future<Output = ()> + Send + 'static) {
    if local {
        tokio::task::spawn_local(task);
    } else {
        tokio::spawn(task);
    }
}

/// The server's clock: a fixed epoch plus tokio's monotonic time since start.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    epoch_ms: u64,
    start: tokio::time::Instant,
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        self.epoch_ms + self.start.elapsed().as_millis() as u64
    }

    pub fn now_s(&self) -> u64 {
        self.now_ms() / 1000
    }
}

struct Inner {
    config: ServerConfig,
    clock: Clock,
    rooms: Arc<rooms::Registry>,
    next_conn: AtomicU64,
    connections: AtomicUsize,
    shutdown: watch::Sender<bool>,
}

/// A running server; cheap to clone.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl Server {
    /// Prepares a server. Call inside the tokio runtime (or turmoil host) that will run it, because
    /// its clock starts now.
    pub fn new(config: ServerConfig) -> Result<Server, ServerError> {
        if let Some(path) = &config.data {
            std::fs::create_dir_all(path)
                .map_err(|source| ServerError::DataDir { path: path.clone(), source })?;
        }
        let clock = Clock { epoch_ms: config.epoch_ms, start: tokio::time::Instant::now() };
        let inner = Inner {
            config,
            clock,
            rooms: Arc::default(),
            next_conn: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            shutdown: watch::channel(false).0,
        };
        Ok(Server { inner: Arc::new(inner) })
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub(crate) fn next_conn(&self) -> ConnId {
        ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn room(
        &self,
        id: &RoomId,
    ) -> Result<(tokio::sync::mpsc::Sender<rooms::Input>, SharedRoom), roomlab_engine::EngineError> {
        self.inner.rooms.open(id, &self.inner.config, &self.inner.clock, self.shutdown_signal())
    }

    /// The rooms open now, by id: what the simulation snapshots and checks.
    pub fn open_rooms(&self) -> Vec<(RoomId, SharedRoom)> {
        self.inner.rooms.snapshot()
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Asks every connection to close with 1001 and the accept loop to stop (conn.shutdown).
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Accepts connections until [`Server::shutdown`], then waits (at most `drain_ms`) for open
    /// connections to close.
    pub async fn serve<L: Listener>(self, mut listener: L, drain_ms: u64) {
        let mut stopping = self.inner.shutdown.subscribe();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stopping.wait_for(|stop| *stop) => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let server = self.clone();
            self.spawn(async move {
                let service = service_fn(move |request| http::handle(server.clone(), request, peer));
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                if let Err(e) = connection.await {
                    tracing::debug!("http connection ended: {e}");
                }
            });
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(drain_ms);
        while self.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Spawns a task on the runtime, or on the current `LocalSet` when `local_tasks` is set.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        spawn(self.inner.config.local_tasks, task);
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    pub(crate) fn connection_opened(&self) -> bool {
        let before = self.inner.connections.fetch_add(1, Ordering::Relaxed);
        if before >= self.inner.config.connections_max {
            self.inner.connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn connection_closed(&self) {
        self.inner.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
